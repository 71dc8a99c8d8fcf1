"""No kernel kills the process when memory runs out: a small version of benchmarks/memsweep.py.

Each run is a child process that sets RLIMIT_AS to the address space it uses + a headroom
(from none to more than the call needs) and runs one op; it must end in a result or a
MemoryError, never die (libgomp's "Thread creation failed", OpenBLAS's "Memory allocation still
failed", a segfault in a kernel's unchecked malloc). Warm: after one small call of the same op;
cold: the kernel module imported, nothing run (its OpenMP team is created under the limit).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("memsweep", os.path.join(HERE, "..", "benchmarks", "memsweep.py"))
memsweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memsweep)

MiB = 1 << 20
HEADROOMS = (0, 3 * MiB, 9 * MiB, 24 * MiB)  # none, under / over one thread's stack, plenty
WARM = ("direct", "im2col", "pointwise", "winograd", "max", "max_indices", "avg", "global_avg")
COLD = ("direct", "pointwise", "max")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")


def _args(via: str, cold: bool) -> argparse.Namespace:
    return argparse.Namespace(via=via, small=True, cold=cold, threads=2, timeout=120.0, dtype="float32")


@pytest.mark.parametrize("via,cold,ops", [("api", False, WARM), ("kernel", True, COLD)], ids=["warm", "cold"])
def test_no_child_dies_under_an_address_space_limit(via, cold, ops):
    args = _args(via, cold)
    runs = [(op, h) for op in ops for h in HEADROOMS]
    with ThreadPoolExecutor(max_workers=2) as pool:  # the children are processes
        results = list(pool.map(lambda r: memsweep._run_child(r[0], args, r[1]), runs))
    dead = [f"{op} at {h // MiB} MiB: {detail}" for (op, h), (what, _, detail) in zip(runs, results) if what == "dead"]
    assert not dead, "\n".join(dead)
    # enough headroom: every op runs (the sweep would otherwise prove nothing)
    assert all(what == "ok" for (op, h), (what, _, _) in zip(runs, results) if h == HEADROOMS[-1]), results


GUARDED_WORKSPACE = r"""
import ctypes, mmap
import numpy as np
from fastconv import registry, reference
from fastconv.params import ConvParams, PoolParams

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
KEEP = []


def guarded_workspace(nbytes, where):
    # a uint8 array whose last byte ends at (or first byte starts at) a PROT_NONE page
    body = -(-max(nbytes, 1) // PAGE) * PAGE
    m = mmap.mmap(-1, body + 2 * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for off in (0, body + PAGE):
        assert libc.mprotect(ctypes.c_void_p(base + off), PAGE, 0) == 0
    start = PAGE + (body - nbytes if where == "tail" else 0)
    KEEP.append(m)
    return np.frombuffer(m, dtype=np.uint8, count=nbytes, offset=start)


CONV = [  # (algorithm, ConvParams): every workspace layout of every kernel
    ("direct", ConvParams.from_layer(1, 3, 30, 16, 7, stride=2, padding=3)),          # shared pack, flat tiles
    ("direct", ConvParams.from_layer(1, 8, 32, 16, 3, padding=1)),                    # shared pack, row tiles
    ("direct", ConvParams.from_layer(16, 3, 13, 6, 5, dtype="float64")),              # local pack
    ("direct", ConvParams.from_layer(2, 16, 13, 16, 3, padding=1, groups=16)),        # depthwise
    ("im2col", ConvParams.from_layer(2, 5, 11, 7, 3, padding=1)),
    ("im2col", ConvParams.from_layer(2, 5, 11, 7, 3, stride=2, padding=1, dtype="float64")),
    ("pointwise", ConvParams.from_layer(2, 6, 9, 5, 1, stride=2)),
    ("winograd", ConvParams.from_layer(2, 8, 13, 9, 3, padding=1)),
    ("winograd_f2", ConvParams.from_layer(1, 4, 10, 6, 5, padding=2, dtype="float64")),
    ("winograd_f4", ConvParams.from_layer(1, 256, 7, 256, 3, padding=1)),             # threads share blocks
]
POOL = [PoolParams("max", 2, 3, 11, 9, (3, 3), (2, 2), (1, 1)),
        PoolParams("avg", 2, 3, 11, 9, (3, 3), (1, 1), (1, 1), dtype="float64"),
        PoolParams("avg", 1, 2, 7, 40, (2, 3), (2, 2), (1, 0), count_include_pad=False)]
rng = np.random.default_rng(0)
for nt in (1, 2):
    for name, p in CONV:
        k = registry.get(name)
        x = rng.standard_normal(p.input_shape).astype(p.dtype)
        w = rng.standard_normal(p.weight_shape).astype(p.dtype)
        b = rng.standard_normal(p.c_out).astype(p.dtype)
        packed = k.prepare(w, b, p)
        want = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), p)
        for where in ("tail", "head"):
            print("CONV", name, nt, where, p.describe(), flush=True)
            out = np.full(p.out_shape, np.nan, p.dtype)
            k.run(x, packed, p, out, guarded_workspace(k.workspace_bytes(p, nt), where), nt)
            np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    for p in POOL:
        k = registry.POOLS[p.kind]
        x = rng.standard_normal(p.input_shape).astype(p.dtype)
        want = getattr(reference, p.kind + "_pool2d")(x, p)
        for where in ("tail", "head"):
            print("POOL", p.describe(), nt, where, flush=True)
            out = np.full(p.out_shape, np.nan, p.dtype)
            k.run(x, None, p, out, guarded_workspace(k.workspace_bytes(p, nt), where), nt)
            np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
print("DONE", flush=True)
"""


def test_kernels_stay_inside_their_workspace():
    """A workspace of exactly workspace_bytes, ending at (or starting after) a PROT_NONE page and
    so never 64-byte aligned at both ends: every kernel layout runs inside it, and correctly."""
    import subprocess
    import tempfile

    proc = subprocess.run(
        [sys.executable, "-c", GUARDED_WORKSPACE],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tempfile.gettempdir(),
    )
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith(("CONV", "POOL"))][-1:] or ["(none)"]
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("DONE"), (
        f"rc {proc.returncode} during {last[0]}:\n{proc.stderr[-3000:]}"
    )
