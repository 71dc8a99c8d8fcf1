"""What machine the numbers come from, and how fast it can go.

* `info()`: CPU model and flags, cores, threads, library versions, BLAS, OpenMP runtime —
  recorded in the benchmark JSON and printed by ``fastconv info``;
* `peaks(threads)`: the FMA peak (a register-only FMA loop, ``fastconv.kernels._peak``) and
  the SGEMM rate (NumPy's BLAS on 2048² float32) at ``threads`` threads. Measuring takes
  about a second, so the result is cached per machine and thread count in
  ``~/.cache/fastconv/machine-<hash>.json`` (``FASTCONV_CACHE_DIR`` moves it);
* `calibration(threads)`: the fixed workload the regression gate divides every kernel's time
  by (see `fastconv.bench.compare`).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from .. import threads as _threads

SGEMM_N = 2048


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    fields.setdefault(k, v)
    except OSError:
        pass
    return fields


def cpu() -> dict:
    ci = _cpuinfo()
    flags = ci.get("flags", "").split()
    simd = [f for f in flags if f.startswith(("avx", "fma", "sse4", "amx"))]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {"model": ci.get("model name", platform.processor() or platform.machine()),
            "machine": platform.machine(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "simd_flags": simd, "flags_hash": hashlib.sha1(" ".join(flags).encode()).hexdigest()[:12]}


def machine_key() -> str:
    """Stable id of this machine (CPU model, flags, CPU count, host name)."""
    c = cpu()
    raw = f"{c['model']}|{c['flags_hash']}|{c['logical_cpus']}|{platform.node()}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def blas() -> list[dict]:
    from threadpoolctl import threadpool_info
    return [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer",
                                   "architecture", "filepath")}
            for d in threadpool_info() if d.get("user_api") == "blas"]


def openmp() -> list[dict]:
    """The OpenMP runtimes loaded (our Cython kernels' prange), with their thread counts."""
    from threadpoolctl import threadpool_info
    import fastconv.kernels.pool  # noqa: F401  (loads the OpenMP runtime our kernels use)
    return [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
            for d in threadpool_info() if d.get("user_api") == "openmp"]


def extensions() -> dict[str, str]:
    """Import status of each compiled (Cython) extension of fastconv.kernels."""
    import importlib
    import pkgutil

    import fastconv.kernels as k
    status = {}
    for m in pkgutil.iter_modules(k.__path__):
        spec = importlib.util.find_spec(f"fastconv.kernels.{m.name}")
        if spec is None or not (spec.origin or "").endswith((".so", ".pyd")):
            continue
        try:
            importlib.import_module(f"fastconv.kernels.{m.name}")
            status[m.name] = "ok"
        except ImportError as e:
            status[m.name] = f"failed: {e}"
    return status


def info() -> dict:
    import fastconv
    libs = {d: _version(d) for d in ("numpy", "Cython", "scipy", "threadpoolctl", "torch",
                                     "onnxruntime", "onnx", "rich", "matplotlib")}
    return {"fastconv": fastconv.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "host": platform.node(), "machine_key": machine_key(),
            "cpu": cpu(), "threads": _threads.get_num_threads(), "libraries": libs, "blas": blas(),
            "openmp": openmp()}


# --- peaks -----------------------------------------------------------------------------------
def _cache_path() -> Path:
    root = Path(os.environ.get("FASTCONV_CACHE_DIR") or Path.home() / ".cache" / "fastconv")
    return root / f"machine-{machine_key()}.json"


def measure_fma_peak(threads: int, seconds: float = 0.05, tries: int = 7) -> float:
    """GFLOP/s of independent register FMAs on ``threads`` threads: the best of ``tries``."""
    from fastconv.kernels import _peak
    iters = 100_000
    t0 = time.perf_counter()
    _peak.run(iters, threads)
    iters = max(iters, int(iters * seconds / max(time.perf_counter() - t0, 1e-6)))
    best = 0.0
    for _ in range(tries):
        t0 = time.perf_counter()
        _peak.run(iters, threads)
        best = max(best, iters * threads * _peak.flops_per_iter() / (time.perf_counter() - t0))
    return best / 1e9


def measure_sgemm(threads: int, n: int = SGEMM_N, tries: int = 5) -> float:
    """GFLOP/s of NumPy's BLAS on an ``n``² float32 matrix product: the best of ``tries``."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=c)
        for _ in range(tries):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def peaks(threads: int, refresh: bool = False) -> dict:
    """``{"fma_gflops", "sgemm_gflops", "measured_at", "cached"}`` for ``threads`` threads."""
    path = _cache_path()
    cache: dict = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    key = str(threads)
    if not refresh and key in cache.get("peaks", {}):
        return {**cache["peaks"][key], "cached": str(path)}
    entry = {"fma_gflops": round(measure_fma_peak(threads), 1),
             "sgemm_gflops": round(measure_sgemm(threads), 1),
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    cache.setdefault("peaks", {})[key] = entry
    cache["cpu"] = cpu()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return {**entry, "cached": None}


# --- calibration for the regression gate --------------------------------------------------------
CALIBRATION_N = 256
CALIBRATIONS = ("sgemm", "fma")


def calibration(kind: str = "sgemm", threads: int | None = None) -> Callable[[], None]:
    """The fixed workload the regression gate divides kernel times by.

    ``sgemm``: NumPy's BLAS on ``CALIBRATION_N``³ float32 (~34 MFLOP). It shares the kernels'
    cores, caches and memory bus but no fastconv code, so a change to fastconv never moves it.
    ``fma``: the register-only FMA loop of `measure_fma_peak` (compute only, no memory).
    Both run at the thread count set by the one knob (``fastconv.set_num_threads``).
    """
    nt = threads or _threads.get_num_threads()
    if kind == "fma":
        from fastconv.kernels import _peak
        return lambda: _peak.run(20_000, nt)
    if kind != "sgemm":
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {kind!r}")
    rng = np.random.default_rng(1)
    a = rng.random((CALIBRATION_N, CALIBRATION_N), dtype=np.float32)
    b = rng.random((CALIBRATION_N, CALIBRATION_N), dtype=np.float32)
    c = np.empty_like(a)
    return lambda: np.matmul(a, b, out=c)
