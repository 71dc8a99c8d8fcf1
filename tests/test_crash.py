"""Crash fuzz: hostile inputs run in a child process, which must never die from a signal.

Each batch of cases runs in ``sys.executable -c CHILD``: the child prints ``START i`` before
case ``i`` and a ``RESULT i`` line after it, so a segfault/abort names the case that caused it.
Every case must either return arrays of the stated shape or raise ValueError, TypeError or
MemoryError (the documented errors), and must leave its input arrays byte-for-byte intact.

`test_guarded_buffers` proves that the compiled kernels (bounds checks off) stay inside their
arrays: inputs and outputs are placed flush against PROT_NONE guard pages (after the last
byte, then before the first), so a read or write just outside an array is a segfault here
instead of silent corruption. Outputs are pre-filled with NaN, so an element the kernel
forgot to write is caught too. Generic over `registry.REGISTRY`.

Every allocation stays under ~1 GiB (a shared machine): the child caps fastconv's workspace
and output budgets at 1 GiB, so sizes whose index arithmetic would pass 2**31 elements must be
refused with MemoryError by the budget check, before anything is allocated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from fastconv import registry

ERRORS = {"ValueError", "TypeError", "MemoryError"}
HARNESS = textwrap.dedent(r'''
    import json, sys, zlib
    import numpy as np
    import fastconv as F
    from fastconv import memory
    memory.set_workspace_limit(1 << 30)
    memory.set_output_limit(1 << 30)

    def A(shape, dtype=np.float32, fill=None):
        """A test input: random normal (small arrays) or a constant fill."""
        if fill is not None:
            return np.full(shape, fill, dtype=dtype)
        a = np.zeros(shape, dtype=dtype)
        if a.dtype.kind == "f" and 0 < a.size <= 10 ** 6:
            a[...] = np.random.default_rng(a.size).standard_normal(a.shape)
        return a

    def crc(a):
        return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1))

    for i, (setup, call) in enumerate(json.loads(sys.stdin.read())):
        print("START", i, flush=True)
        env = dict(np=np, F=F, A=A, nan=np.nan, inf=np.inf)
        exec(setup, env)
        inputs = {k: v for k, v in env.items() if isinstance(v, np.ndarray) and v.dtype != object}
        before = {k: crc(v) for k, v in inputs.items()}
        try:
            r = eval(call, env)
            outcome = ["OK", [list(np.shape(t)) for t in (r if isinstance(r, tuple) else (r,))]]
        except (ValueError, TypeError, MemoryError) as e:
            outcome = [type(e).__name__, str(e)[:200]]
        except BaseException as e:  # anything else is a bug, but must not kill the batch
            outcome = ["UNEXPECTED " + type(e).__name__, str(e)[:200]]
        r = None
        changed = [k for k, v in inputs.items() if crc(v) != before[k]]
        print("RESULT", i, json.dumps(outcome + [changed]), flush=True)
''')


def run_batch(cases, timeout=300):
    """Run ``[(setup, call, expect)]`` in one child; return {i: (kind, detail, changed)}.
    Fails if the child died from a signal (or did not finish)."""
    payload = json.dumps([(s, c) for s, c, _ in cases])
    env = dict(os.environ, FASTCONV_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS],
        input=payload,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    started, results = None, {}
    for line in proc.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "START":
            started = int(rest)
        elif tag == "RESULT":
            i, _, js = rest.partition(" ")
            results[int(i)] = json.loads(js)
    if proc.returncode != 0:
        where = f"case {started}: {cases[started][:2]}" if started is not None else "before the first case"
        kind = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        pytest.fail(f"child died ({kind}) in {where}\nstderr:\n{proc.stderr[-3000:]}")
    return results


def check(cases):
    results = run_batch(cases)
    problems = []
    for i, (setup, call, expect) in enumerate(cases):
        kind, detail, changed = results[i]
        label = f"#{i} {setup} ; {call}"
        if changed:
            problems.append(f"{label}: modified its input(s) {changed}")
        if isinstance(expect, list):  # the shapes of the returned arrays
            if kind != "OK" or detail != expect:
                problems.append(f"{label}: expected result shapes {expect}, got {kind} {detail}")
        elif kind not in (ERRORS if expect == "error" else {expect}):
            problems.append(f"{label}: expected {expect}, got {kind}: {detail}")
    assert not problems, "\n".join(problems)


def _conv_cases():
    x, call = "x = A((1, 3, 7, 7)); w = A((4, 3, 3, 3))", "F.conv2d(x, w, **kw)"
    small = [  # bad geometry arguments: negative, zero, huge (past int32 / int64), wrong types
        (f"{x}; kw = dict({k}={v!r})", call, "error")
        for k, vals in dict(
            stride=[0, -1, (1, 0), 2**31, 2**63, 2**64, -(2**63), 1.5, "2", None, (1, 2, 3)],
            padding=[-1, (0, -3), 2**63, 2**64, "bogus", 1.0, (1, 2, 3)],
            dilation=[0, -2, 2**31, 2**63, 2**64, 2.0],
            groups=[0, -1, 2, 2**63, 2**64, 1.0, True],
        ).items()
        for v in vals
    ]
    return (
        small
        + [
            # documented range: integer arguments up to 2**31 - 1 (a 1-pixel output must run, not overflow)
            (x, "F.conv2d(x, w, stride=2 ** 31 - 1)", [[1, 4, 1, 1]]),
            (x, "F.conv2d(x, w, stride=(2 ** 40, 1))", "ValueError"),
            (x, "F.conv2d(x, w, stride=2 ** 31 - 1, padding=2 ** 20, dilation=2 ** 31 - 1)", "ValueError"),
            # zero and negative sizes, mismatched arrays
            ("x = A((0, 3, 7, 7)); w = A((4, 3, 3, 3))", "F.conv2d(x, w)", [[0, 4, 5, 5]]),
            ("x = A((1, 0, 7, 7)); w = A((4, 0, 3, 3))", "F.conv2d(x, w)", "error"),
            ("x = A((1, 3, 0, 7)); w = A((4, 3, 1, 1))", "F.conv2d(x, w)", "error"),
            ("x = A((1, 3, 0, 7)); w = A((4, 3, 1, 1))", "F.conv2d(x, w, padding=1)", "error"),
            ("x = A((1, 3, 7, 0)); w = A((4, 3, 3, 3))", "F.conv2d(x, w, padding=2)", "error"),
            ("x = A((1, 3, 7, 7)); w = A((0, 3, 3, 3))", "F.conv2d(x, w)", "error"),
            ("x = A((1, 3, 7, 7)); w = A((4, 3, 0, 3))", "F.conv2d(x, w)", "error"),
            ("x = A((1, 3, 2, 2)); w = A((4, 3, 3, 3))", "F.conv2d(x, w)", "error"),
            ("x = A((1, 3, 7, 7)); w = A((4, 2, 3, 3))", "F.conv2d(x, w)", "error"),
            ("x = A((1, 4, 7, 7)); w = A((3, 2, 3, 3))", "F.conv2d(x, w, groups=2)", "error"),
            ("x = A((1, 3, 7, 7)); w = A((4, 3, 3))", "F.conv2d(x, w)", "error"),
            ("x = A((3, 7, 7)); w = A((4, 3, 3, 3, 1))", "F.conv2d(x, w)", "error"),
            ("x = A((1, 1, 3, 7, 7)); w = A((4, 3, 3, 3))", "F.conv2d(x, w)", "error"),
            ("x = A((7, 7)); w = A((4, 3, 3, 3))", "F.conv2d(x, w)", "error"),
            ("x = A(()); w = A((4, 3, 3, 3))", "F.conv2d(x, w)", "error"),
            (f"{x}; b = A((5,))", "F.conv2d(x, w, b)", "error"),
            (f"{x}; b = A((4, 1))", "F.conv2d(x, w, b)", "error"),
            (f"{x}; b = A((4,), np.float64)", "F.conv2d(x, w, b)", "error"),
            ("x = A((1, 3, 7, 7), np.float64); w = A((4, 3, 3, 3))", "F.conv2d(x, w)", "error"),
            ("x = A((1, 3, 7, 7), np.int32); w = A((4, 3, 3, 3), np.int32)", "F.conv2d(x, w)", "error"),
            ("x = A((1, 3, 7, 7), np.float16); w = A((4, 3, 3, 3), np.float16)", "F.conv2d(x, w)", "error"),
            ("x = A((1, 3, 7, 7), np.complex64); w = A((4, 3, 3, 3), np.complex64)", "F.conv2d(x, w)", "error"),
            ("x = np.empty((1, 3, 7, 7), dtype=object); w = A((4, 3, 3, 3))", "F.conv2d(x, w)", "error"),
            ("w = A((4, 3, 3, 3))", "F.conv2d(None, w)", "error"),
            ("w = A((4, 3, 3, 3))", "F.conv2d('abc', w)", "error"),
            ("w = A((4, 3, 3, 3))", "F.conv2d([[[1.0], [2.0, 3.0]]], w)", "error"),
            (x, "F.conv2d(x, w, algo='nope')", "error"),
            (x, "F.conv2d(x, w, algo=None)", "error"),
            (x, "F.conv2d(x, w, padding='same', stride=2)", "error"),
            # extreme values: overflow, NaN, Inf, subnormals must compute, not crash
            ("x = A((1, 3, 7, 7), fill=3e38); w = A((4, 3, 3, 3), fill=3e38)", "F.conv2d(x, w)", [[1, 4, 5, 5]]),
            ("x = A((1, 3, 7, 7), fill=nan); w = A((4, 3, 3, 3))", "F.conv2d(x, w, padding=1)", [[1, 4, 7, 7]]),
            ("x = A((1, 3, 7, 7), fill=-inf); w = A((4, 3, 3, 3), fill=inf)", "F.conv2d(x, w)", [[1, 4, 5, 5]]),
            ("x = A((1, 3, 7, 7), fill=1e-45); w = A((4, 3, 3, 3), fill=1e-45)", "F.conv2d(x, w)", [[1, 4, 5, 5]]),
            # outputs whose element count passes 2**31 (and bytes pass any budget): MemoryError up front
            ("x = A((1, 1, 1, 1)); w = A((1, 1, 1, 1))", "F.conv2d(x, w, padding=40000)", "MemoryError"),
            ("x = A((1, 1, 1, 1)); w = A((1, 1, 1, 1))", "F.conv2d(x, w, padding=2 ** 31 - 1)", "MemoryError"),
            ("x = A((1, 1, 1, 1)); w = A((1, 1, 1, 1))", "F.conv2d(x, w, padding=(2 ** 31 - 1, 0))", "MemoryError"),
            ("x = A((1, 1, 4, 4)); w = A((70000, 1, 1, 1))", "F.conv2d(x, w, padding=30)", "MemoryError"),
            # large H*W with one channel (~144 MB each way): offsets near 2**31 bytes must not wrap
            (
                "x = A((1, 1, 6000, 6000)); w = A((1, 1, 3, 3), fill=1.0)",
                "F.conv2d(x, w, padding=1)",
                [[1, 1, 6000, 6000]],
            ),
            (
                "x = A((1, 1, 2, 2 ** 26)); w = A((2, 1, 1, 3), fill=1.0)",
                "F.conv2d(x, w, stride=(1, 4096))",
                [[1, 2, 2, 16384]],
            ),
        ]
        + [
            (
                "x = A((1, 1, 2000, 3000)); w = A((1, 1, 3, 3), fill=1.0)",
                f"F.conv2d(x, w, padding=1, algo='{a.name}')",
                [[1, 1, 2000, 3000]],
            )
            for a in registry.REGISTRY
            if a.supports(_params(1, 1, 2000, 3000, 1, 3, 3, 1)) is None
        ]
    )


def _params(n, c, h, w, co, kh, kw, pad):
    from fastconv.params import ConvParams

    return ConvParams(n, c, h, w, co, kh, kw, (1, 1), (pad,) * 4)


def _pool_cases():
    x = "x = A((1, 2, 9, 9))"
    bad = [
        (x, f"F.max_pool2d(x, {a})", "error")
        for a in (
            "0",
            "-1",
            "2 ** 31",
            "2 ** 63",
            "2 ** 64",
            "(2, 0)",
            "3, stride=0",
            "3, stride=-1",
            "3, stride=2 ** 63",
            "3, padding=2",
            "3, padding=-1",
            "3, dilation=0",
            "3, dilation=2 ** 31",
            "2.5",
            "None",
            "'2'",
            "3, ceil_mode=None",
            "(1, 2, 3)",
            "20",
        )
    ]
    bad += [
        (x, f"F.avg_pool2d(x, {a})", "error")
        for a in (
            "0",
            "-1",
            "2 ** 63",
            "3, stride=0",
            "3, padding=2",
            "3, divisor_override=0",
            "3, divisor_override=2 ** 64",
            "3, divisor_override=1.5",
            "3, count_include_pad=None",
            "20",
        )
    ]
    bad += [
        (x, f"F.adaptive_avg_pool2d(x, {a})", "error")
        for a in ("0", "-1", "(0, 2)", "None", "'a'", "(1, 2, 3)", "2.5", "2 ** 64")
    ]
    return bad + [
        # documented range: every integer argument fits a C int (the Cython kernels take C ints)
        (x, "F.max_pool2d(x, 3, stride=2 ** 31 - 1)", [[1, 2, 1, 1]]),
        (x, "F.avg_pool2d(x, 3, stride=2 ** 31 - 1, padding=1)", [[1, 2, 1, 1]]),
        (x, "F.avg_pool2d(x, 3, divisor_override=-2 ** 31 + 1)", [[1, 2, 3, 3]]),
        (x, "F.max_pool2d(x, 3, stride=2 ** 31)", "ValueError"),
        (x, "F.avg_pool2d(x, 3, stride=2 ** 40)", "ValueError"),
        (x, "F.avg_pool2d(x, 3, divisor_override=2 ** 40)", "ValueError"),
        (x, "F.max_pool2d(x, 3, stride=1, ceil_mode=True, return_indices=True)", [[1, 2, 7, 7], [1, 2, 7, 7]]),
        ("x = A((0, 2, 9, 9))", "F.max_pool2d(x, 3)", [[0, 2, 3, 3]]),
        ("x = A((1, 0, 9, 9))", "F.max_pool2d(x, 3)", "error"),
        ("x = A((1, 2, 0, 9))", "F.avg_pool2d(x, 1)", "error"),
        ("x = A((1, 2, 9, 0))", "F.adaptive_avg_pool2d(x, 2)", "error"),
        ("x = A((9, 9))", "F.max_pool2d(x, 3)", "error"),
        ("x = A((1, 1, 2, 9, 9))", "F.avg_pool2d(x, 3)", "error"),
        ("x = A((1, 2, 9, 9), np.int64)", "F.max_pool2d(x, 3)", "error"),
        ("x = A((1, 2, 9, 9), np.float16)", "F.avg_pool2d(x, 3)", "error"),
        ("", "F.max_pool2d(None, 3)", "error"),
        ("", "F.adaptive_avg_pool2d([[1.0, 2.0], [3.0]], 1)", "error"),
        # adaptive outputs far larger than the input: the budget refuses, nothing is allocated
        (x, "F.adaptive_avg_pool2d(x, (2 ** 20, 2 ** 20))", "MemoryError"),
        (x, "F.adaptive_avg_pool2d(x, (2 ** 31 - 1, 2))", "MemoryError"),
        (x, "F.adaptive_avg_pool2d(x, 2 ** 62)", "ValueError"),
        # NaN / Inf / overflow
        ("x = A((1, 2, 9, 9), fill=nan)", "F.max_pool2d(x, 3, return_indices=True)", [[1, 2, 3, 3], [1, 2, 3, 3]]),
        ("x = A((1, 2, 9, 9), fill=-inf)", "F.max_pool2d(x, 3, padding=1)", [[1, 2, 3, 3]]),
        ("x = A((1, 2, 9, 9), fill=3e38)", "F.avg_pool2d(x, 3, divisor_override=-1)", [[1, 2, 3, 3]]),
        ("x = A((1, 2, 9, 9), fill=inf)", "F.adaptive_avg_pool2d(x, 4)", [[1, 2, 4, 4]]),
        # large planes with one channel; windows as big as the plane
        (
            "x = A((1, 1, 6000, 6000))",
            "F.max_pool2d(x, 3, stride=1, padding=1, return_indices=True)",
            [[1, 1, 6000, 6000], [1, 1, 6000, 6000]],
        ),
        ("x = A((1, 1, 6000, 6000))", "F.avg_pool2d(x, (6000, 6000))", [[1, 1, 1, 1]]),
        ("x = A((1, 1, 6000, 6000))", "F.adaptive_avg_pool2d(x, 7)", [[1, 1, 7, 7]]),
        (
            "x = A((1, 1, 1, 2 ** 27))",
            "F.max_pool2d(x, (1, 2 ** 26), dilation=(1, 2), ceil_mode=True)",
            [[1, 1, 1, 2]],
        ),  # ceil_mode: the second window starts inside and hangs past the edge
    ]


def test_conv2d_hostile_inputs():
    check(_conv_cases())


def test_pool_hostile_inputs():
    check(_pool_cases())


# --- guard pages --------------------------------------------------------------------------------
GUARD = textwrap.dedent(r'''
    import ctypes, mmap, sys
    import numpy as np
    from fastconv import plan, reference, registry, rules, validate
    from fastconv.testing import assert_algorithm_close

    PAGE = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    KEEP = []

    def guarded(shape, dtype, where):
        """A C-contiguous array whose last byte ends at (or first byte starts at) a PROT_NONE page."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        body = -(-max(nbytes, 1) // PAGE) * PAGE
        m = mmap.mmap(-1, body + 2 * PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        for off in (0, body + PAGE):  # guard page before and after the body
            assert libc.mprotect(ctypes.c_void_p(base + off), PAGE, 0) == 0, ctypes.get_errno()
        start = PAGE + (body - nbytes if where == "tail" else 0)
        KEEP.append(m)
        return np.frombuffer(m, dtype=dtype, count=int(np.prod(shape)), offset=start).reshape(shape)

    def place(a, where):
        g = guarded(a.shape, a.dtype, where)
        g[...] = a
        return g

    # (n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups)
    CASES = [
        (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1), (1, 1, 1, 1, 1, 3, 3, 1, 1, 1, 1), (2, 3, 5, 7, 4, 3, 3, 1, 1, 1, 1),
        (1, 2, 7, 5, 3, 3, 3, 1, 0, 1, 1), (1, 4, 9, 10, 4, 3, 3, 1, 2, 1, 2), (1, 3, 11, 13, 2, 5, 5, 2, 2, 1, 1),
        (2, 3, 10, 9, 5, 1, 1, 1, 0, 1, 1), (1, 6, 8, 11, 6, 1, 1, 2, 0, 1, 3), (1, 4, 6, 6, 8, 3, 3, 1, 1, 1, 4),
        (1, 2, 13, 12, 3, 3, 2, 3, (3, 1), (2, 3), 1), (1, 1, 3, 17, 2, 3, 3, 1, 1, 1, 1),
        (1, 17, 9, 9, 19, 3, 3, 1, 1, 1, 1), (1, 17, 10, 10, 19, 3, 3, 1, 0, 1, 1),
        (3, 2, 2, 3, 2, 3, 3, 1, 1, 1, 1), (1, 1, 4096, 3, 1, 3, 3, 1, 1, 1, 1),
        (1, 1, 3, 4099, 2, 3, 3, 1, 1, 1, 1), (1, 3, 31, 29, 4, 11, 11, 4, 2, 1, 1),
        (1, 1, 1500, 1500, 1, 3, 3, 1, 1, 1, 1),
    ]
    rng = np.random.default_rng(0)
    for i, (n, ci, h, w, co, kh, kw, s, pad, d, g) in enumerate(CASES):
        for dtype in (np.float32, np.float64):
            x0 = rng.standard_normal((n, ci, h, w)).astype(dtype)
            w0 = rng.standard_normal((co, ci // g, kh, kw)).astype(dtype)
            b0 = rng.standard_normal(co).astype(dtype)
            x4, wc, bc, p, _ = validate.conv2d_args(x0, w0, b0, s, pad, d, g)
            for alg in registry.REGISTRY:
                if alg.supports(p) is not None:
                    continue
                for where in ("tail", "head"):
                    print("CASE", i, dtype.__name__, alg.name, where, p.describe(), flush=True)
                    x, wt, b = place(x4, where), place(wc, where), place(bc, where)
                    out = guarded(p.out_shape, dtype, where)
                    out[...] = np.nan
                    plan.Plan(alg, wt, b, p).run(x, out)
                    if p.n * p.out_h * p.out_w <= 200_000:
                        assert_algorithm_close(alg, out, x0, w0, b0, p)
                    else:
                        assert not np.isnan(out).any(), f"{alg.name}: output elements left unwritten"
                    KEEP.clear()
    # pools: the Cython kernels, called the way functional.py calls them
    from fastconv.params import PoolParams
    POOLS = [((2, 3, 9, 11), dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True)),
             ((1, 2, 7, 8), dict(kernel=(2, 2), stride=(2, 2), padding=(1, 1), ceil_mode=True)),
             ((1, 2, 11, 10), dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(2, 2))),
             ((1, 1, 5, 7), dict(kernel=(5, 7), stride=(5, 7))), ((1, 1, 1, 1), dict(kernel=(1, 1)))]
    for i, (shape, kw) in enumerate(POOLS):
        for where in ("tail", "head"):
            x = place(rng.standard_normal(shape).astype(np.float32), where)
            for kind in ("max", "avg", "adaptive_avg"):
                print("POOL", i, kind, where, flush=True)
                if kind == "adaptive_avg":
                    p = PoolParams(kind, *shape, output_size=(3, 4), dtype="float32")
                else:
                    p = PoolParams(kind, *shape, **({k: v for k, v in kw.items() if kind == "max" or k != "dilation"}),
                                   dtype="float32")
                out = guarded(p.out_shape, np.float32, where)
                out[...] = np.nan
                idx = guarded(p.out_shape, np.int64, where) if kind == "max" else None
                plan.run_pool(x, p, out, idx if kind == "max" else None)
                ref = getattr(reference, kind + "_pool2d")(x, p)
                np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6, err_msg=f"{kind} {p.describe()}")
    print("DONE", flush=True)
''')


def test_guarded_buffers():
    """Kernels never touch a byte outside their arrays (guard pages turn that into a segfault)."""
    env = dict(os.environ, FASTCONV_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", GUARD], capture_output=True, text=True, timeout=600, env=env, cwd=tempfile.gettempdir()
    )
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith(("CASE", "POOL"))][-1:] or ["(none)"]
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode} during {last[0]}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("DONE"), (
        f"failed during {last[0]}:\n{proc.stderr[-3000:]}"
    )


def test_guard_pages_do_catch_an_overread():
    """The proof above is only as good as its guards: one element past a guarded array faults."""
    probe = GUARD.split("# (n, c_in")[0] + textwrap.dedent("""
        a = guarded((5, 7), np.float32, "tail")
        ctypes.c_float.from_address(a.ctypes.data + a.nbytes).value
        print("NOT CAUGHT", flush=True)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir()
    )
    assert proc.returncode < 0 and "NOT CAUGHT" not in proc.stdout, (proc.returncode, proc.stderr[-500:])
