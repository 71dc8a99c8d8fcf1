"""Memory budgets, thread safety and leaks.

* Budgets: a workspace or an output over its limit raises MemoryError naming the size, before
  anything large is allocated (checked with tracemalloc, which sees every NumPy allocation).
* Threads: 8 Python threads calling conv2d (every algorithm) and the pools at once, on a shared
  `plan.Plan` and on separate ones, get results bit-identical to serial calls.
* Leaks: 10,000 calls of each op (plus 10,000 refused calls) in a fresh child process leave its
  resident memory flat.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc

import numpy as np
import pytest

import fastconv
from fastconv import memory, plan, registry, validate
from fastconv.params import ConvParams
from fastconv.testing import run_concurrently


@pytest.fixture
def limits():
    old = memory.get_workspace_limit(), memory.get_output_limit()
    yield
    memory.set_workspace_limit(old[0])
    memory.set_output_limit(old[1])


def _peak_during(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# --- budgets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("alg", registry.REGISTRY, ids=registry.names())
def test_workspace_over_budget_raises_before_allocating(alg, limits):
    # a layer every algorithm runs, with a non-trivial workspace where the algorithm has one
    g = 32 if alg.name == "depthwise" else 1  # the depthwise kernel runs one channel per group
    k = 3 if alg.supports(ConvParams.from_layer(1, 8, 8, 8, 3, groups=min(g, 8))) is None else 1
    p = ConvParams.from_layer(1, 32, 40, 32, k, padding=0, groups=g)
    if alg.supports(p) is not None:
        p = ConvParams.from_layer(1, 32, 40, 32, 1)
    if g > 1:  # the depthwise workspace is a zero row and the row masks: a wide map makes it large
        p = ConvParams.from_layer(1, 32, 8, 32, 3, stride=2, groups=g, w=8192)
    assert alg.supports(p) is None
    x = np.ones(p.input_shape, np.float32)
    w = np.ones(p.weight_shape, np.float32)
    conv2d = functools.partial(fastconv.conv2d, groups=g, stride=p.stride)
    need = alg.workspace_bytes(p, fastconv.get_num_threads())
    out_bytes = int(np.prod(p.out_shape)) * 4
    if need > 0:
        memory.set_workspace_limit(need - 1)
        peak = _peak_during(lambda: pytest.raises(MemoryError, conv2d, x, w, algo=alg.name))
        with pytest.raises(MemoryError, match=rf"{alg.name} .*the workspace needs {need:,} bytes, over the limit"):
            conv2d(x, w, algo=alg.name)
        assert peak < min(need, out_bytes) // 2, f"{peak} bytes allocated before the MemoryError"
        memory.set_workspace_limit(need)
        conv2d(x, w, algo=alg.name)  # exactly at the limit runs
    memory.set_output_limit(out_bytes - 1)
    peak = _peak_during(lambda: pytest.raises(MemoryError, conv2d, x, w, algo=alg.name))
    assert peak < out_bytes // 2, f"{peak} bytes allocated before the MemoryError"
    with pytest.raises(MemoryError, match=f"needs {out_bytes:,} bytes"):
        conv2d(x, w, algo=alg.name)
    memory.set_output_limit(out_bytes)
    assert conv2d(x, w, algo=alg.name).shape == p.out_shape


def test_pool_outputs_over_budget_raise_before_allocating(limits):
    x = np.ones((1, 4, 64, 64), np.float32)
    memory.set_output_limit(4 * 64 * 64 * 4 - 1)
    for call in (
        lambda: fastconv.max_pool2d(x, 1),
        lambda: fastconv.avg_pool2d(x, 1),
        lambda: fastconv.adaptive_avg_pool2d(x, 64),
    ):
        peak = _peak_during(lambda: pytest.raises(MemoryError, call))
        assert peak < 4 * 64 * 64 * 4 // 2
        with pytest.raises(MemoryError, match=r"needs 65,536 bytes, over the limit of 65,535"):
            call()
    memory.set_output_limit(4 * 32 * 32 * 8 - 1)  # int64 indices: twice the bytes of the values
    with pytest.raises(MemoryError, match="max_pool2d"):
        fastconv.max_pool2d(x, 2, return_indices=True)
    assert fastconv.max_pool2d(x, 2).shape == (1, 4, 32, 32)


def test_huge_outputs_raise_memoryerror_with_default_limits():
    """A 100 GB output is refused up front (with the default budgets), not handed to the OS."""
    one = np.ones((1, 1, 1, 1), np.float32)
    with pytest.raises(MemoryError, match=r"needs 102,\d{3},\d{3},\d{3} bytes"):
        fastconv.conv2d(one, one, padding=80_000)  # 160,001² float32 outputs ≈ 102 GB
    with pytest.raises(MemoryError, match="adaptive_avg_pool2d"):
        fastconv.adaptive_avg_pool2d(one, 160_001)
    assert memory.get_output_limit() > 0


def test_budgets_are_settable_and_checked(limits):
    memory.set_workspace_limit(123)
    memory.set_output_limit(456)
    assert (fastconv.get_workspace_limit(), memory.get_output_limit()) == (123, 456)
    for setter in (memory.set_workspace_limit, memory.set_output_limit):
        with pytest.raises(ValueError):
            setter(-1)


# --- threads ------------------------------------------------------------------------------------
N_THREADS = 8


def _workload(seed: int):
    """A thread's calls: conv2d with every algorithm that runs the layer, and each pool."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 16, 19, 17)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((24, 16, 1, 1)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    calls = [
        (f"conv2d[{a}]", lambda a=a: fastconv.conv2d(x, w, b, padding=1, algo=a))
        for a in registry.names()
        if registry.get(a).supports(validate.conv2d_args(x, w, b, 1, 1, 1, 1)[3]) is None
    ]
    calls += [
        (f"conv2d_1x1[{a}]", lambda a=a: fastconv.conv2d(x, w1, stride=2, algo=a))
        for a in registry.names()
        if registry.get(a).supports(validate.conv2d_args(x, w1, None, 2, 0, 1, 1)[3]) is None
    ]
    calls += [
        ("conv2d_dw", lambda: fastconv.conv2d(x, w[:, :1], padding=2, dilation=2, groups=16)),
        ("max_pool2d", lambda: fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)),
        ("avg_pool2d", lambda: fastconv.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
        ("adaptive_avg_pool2d", lambda: fastconv.adaptive_avg_pool2d(x, (5, 3))),
    ]
    return calls


def _as_tuple(r):
    return tuple(np.array(t) for t in (r if isinstance(r, tuple) else (r,)))


def test_threads_functional_ops_match_serial():
    serial = {seed: {name: _as_tuple(f()) for name, f in _workload(seed)} for seed in range(N_THREADS)}
    got = {}

    def work(i):
        out = {}
        for _ in range(3):  # several rounds, so calls of different ops overlap
            for name, f in _workload(i):
                out[name] = _as_tuple(f())
                for a, b in zip(out[name], serial[i][name]):
                    assert np.array_equal(a, b, equal_nan=True), f"thread {i}: {name} differs from serial"
        got[i] = out

    run_concurrently(work, N_THREADS)
    assert set(got) == set(range(N_THREADS))


@pytest.mark.parametrize("shared", [True, False], ids=["shared_plan", "separate_plans"])
def test_threads_plans_match_serial(shared):
    """A shared Plan (= a shared layer) and one Plan per thread both give the serial results."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    xs = [rng.standard_normal((2, 8, 15, 14)).astype(np.float32) for _ in range(N_THREADS)]
    for alg in registry.REGISTRY:
        _, wc, bc, p, _ = validate.conv2d_args(xs[0], w, b, 1, 1, 1, 1)
        if alg.supports(p) is not None:
            continue
        pl = plan.Plan(alg, wc, bc, p)
        serial = [pl.run(x) for x in xs]
        results = [None] * N_THREADS

        def work(i):
            mine = pl if shared else plan.Plan(alg, wc, bc, p)
            for _ in range(5):
                y = mine.run(xs[i])
                assert np.array_equal(y, serial[i]), f"{alg.name}: thread {i} differs from serial"
            results[i] = y

        run_concurrently(work, N_THREADS)
        assert all(r is not None for r in results)


# --- leaks --------------------------------------------------------------------------------------
LEAK_MARGIN_MB = 20
LEAKS = textwrap.dedent(r"""
    import os, sys
    import numpy as np
    import fastconv
    from fastconv import registry

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2 ** 20

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    w3 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    algos = registry.names()

    wdw = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)

    def conv(i):  # every algorithm in turn (1x1 or depthwise weights for the ones that need them)
        a = algos[i % len(algos)]
        if a == "depthwise":
            return fastconv.conv2d(x, wdw, b, padding=1, groups=8, algo=a)
        try:
            return fastconv.conv2d(x, w3, b, padding=1, algo=a)
        except ValueError:
            return fastconv.conv2d(x, w1, b, algo=a)

    def refused(i):
        try:
            fastconv.conv2d(x, w3, b, stride=0)
        except ValueError:
            pass

    OPS = {
        "conv2d": conv,
        "conv2d_torch": None,
        "max_pool2d": lambda i: fastconv.max_pool2d(x, 3, 2, 1, return_indices=True),
        "avg_pool2d": lambda i: fastconv.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
        "adaptive_avg_pool2d": lambda i: fastconv.adaptive_avg_pool2d(x, (5, 3)),
        "refused_calls": refused,
    }
    try:
        import torch
        xt, wt = torch.from_numpy(x), torch.from_numpy(w3)
        OPS["conv2d_torch"] = lambda i: fastconv.conv2d(xt, wt, padding=1)
    except ImportError:
        del OPS["conv2d_torch"]
    calls = int(sys.argv[1])
    for name, op in OPS.items():
        for i in range(300):  # warm-up: thread pools, allocator arenas
            op(i)
        before = rss_mb()
        for i in range(calls):
            op(i)
        print(name, f"{before:.1f}", f"{rss_mb():.1f}", flush=True)
""")


def test_no_leaks_10000_calls_each():
    # One thread: this measures memory, and on a shared 2-core machine waking an OpenMP team
    # for each tiny call costs milliseconds (60k calls: ~14 s with 1 thread, ~55 s with 2).
    proc = subprocess.run(
        [sys.executable, "-c", LEAKS, "10000"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tempfile.gettempdir(),
        env=dict(os.environ, FASTCONV_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert len(rows) >= 5, proc.stdout
    report = "\n".join(f"{n}: {float(a):.1f} MB -> {float(b):.1f} MB" for n, a, b in rows)
    print(report)
    for name, before, after in rows:
        assert float(after) - float(before) < LEAK_MARGIN_MB, f"{name} grew resident memory:\n{report}"


def test_input_copy_is_sized_before_it_is_made(limits):
    """A non-contiguous input is copied to contiguous memory: that copy counts against the limit
    and is refused, naming it, before a byte of it is allocated."""
    big = np.ones((2, 8, 64, 128), np.float32)
    view = big[:, :, :, ::2]  # not contiguous: the op must copy it (2 * 8 * 64 * 64 * 4 bytes)
    copy_bytes = view.size * 4
    memory.set_output_limit(copy_bytes)  # the copy alone fits, copy + output do not
    for call in (
        lambda: fastconv.max_pool2d(view, 2),
        lambda: fastconv.conv2d(view, np.ones((8, 8, 1, 1), np.float32)),
    ):
        peak = _peak_during(lambda call=call: pytest.raises(MemoryError, call))
        assert peak < copy_bytes // 2, f"{peak} bytes allocated before the MemoryError"
        with pytest.raises(MemoryError, match=rf"the copy of input {copy_bytes:,} \+ the output"):
            call()
    memory.set_output_limit(10 * copy_bytes)
    assert fastconv.max_pool2d(view, 2).shape == (2, 8, 32, 32)


def test_default_limit_leaves_room_for_the_rest_of_the_process():
    assert 0 < memory.get_output_limit() <= memory.available_memory() // 2
