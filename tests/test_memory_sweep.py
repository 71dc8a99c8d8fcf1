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
