"""What machine the numbers come from, and how fast it can go.

* `info()`: CPU model and flags, cores, caches, FMA width, threads, library versions, BLAS,
  OpenMP runtime — recorded in the benchmark JSON and printed by ``fastconv info``;
* `cache_sizes()`: L1d/L1i/L2/L3 sizes and line size, read at run time (for kernels' blocking);
* `fma()`: vector width of the CPU and of our compiled kernels, clock, and — given a measured
  FMA peak — an estimate of FMA instructions per cycle per core;
* `peaks(threads)`: the FMA peak (a register-only FMA loop, ``fastconv.kernels._peak``) and
  the SGEMM rate (NumPy's BLAS on 2048² float32) at ``threads`` threads. Measuring takes
  about a second, so the result is cached per machine and thread count in
  ``<cache_dir()>/machine-<hash>.json``;
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
    return {
        "model": ci.get("model name", platform.processor() or platform.machine()),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": physical_cores(),
        "simd_flags": simd,
        "flags_hash": hashlib.sha1(" ".join(flags).encode()).hexdigest()[:12],
    }


def physical_cores() -> int | None:
    """Distinct (package, core) pairs among the CPUs this process may run on (None if unknown)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    seen = set()
    for c in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            seen.add(((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(seen) or None


def _size(text: str) -> int:
    """``"48K"`` → 49152 (sysfs cache sizes: a number and a K/M/G suffix)."""
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


def _cpu_count(cpu_list: str) -> int:
    """``"0-3,8"`` → 5."""
    n = 0
    for part in cpu_list.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
    return n


_SYSCONF = {
    "L1d": "SC_LEVEL1_DCACHE_SIZE",
    "L1i": "SC_LEVEL1_ICACHE_SIZE",
    "L2": "SC_LEVEL2_CACHE_SIZE",
    "L3": "SC_LEVEL3_CACHE_SIZE",
    "line_bytes": "SC_LEVEL1_DCACHE_LINESIZE",
}


def cache_sizes(cpu: int = 0, sysfs: str | Path = "/sys/devices/system/cpu") -> dict[str, int | None]:
    """The CPU's caches as this process sees them, for blocking decisions.

    Parameters
    ----------
    cpu : int
        Which CPU's view to read (caches are per core up to L2 on current x86 parts).
    sysfs : str or Path
        The CPU directory of sysfs (tests point it at a fake tree).

    Returns
    -------
    dict
        ``L1d``, ``L1i``, ``L2``, ``L3`` (bytes), ``line_bytes``, and ``L2_shared_cpus`` /
        ``L3_shared_cpus`` (how many logical CPUs share that cache); None where neither
        ``/sys/devices/system/cpu/cpu<N>/cache`` nor ``sysconf`` says. On a virtual machine these
        are what the hypervisor reports (an L3 may be the host's whole socket).

    Examples
    --------
    >>> c = cache_sizes()
    >>> c["L1d"] is None or c["L1d"] >= 4096
    True
    """
    out: dict[str, int | None] = {
        k: None for k in ("L1d", "L1i", "L2", "L3", "line_bytes", "L2_shared_cpus", "L3_shared_cpus")
    }
    root = Path(sysfs) / f"cpu{cpu}" / "cache"
    from_sysfs = root.is_dir()
    for idx in sorted(root.glob("index*")) if from_sysfs else []:
        try:
            level = int((idx / "level").read_text())
            kind = (idx / "type").read_text().strip()
            size = _size((idx / "size").read_text())
        except (OSError, ValueError):
            continue
        key = f"L{level}" + ({"Data": "d", "Instruction": "i"}.get(kind, "") if level == 1 else "")
        if kind == "Instruction" and level > 1:
            continue
        out[key] = size
        try:
            out["line_bytes"] = out["line_bytes"] or int((idx / "coherency_line_size").read_text())
            if level >= 2:
                out[f"L{level}_shared_cpus"] = _cpu_count((idx / "shared_cpu_list").read_text())
        except (OSError, ValueError):
            pass
    for key, name in _SYSCONF.items():  # glibc's view where sysfs has none (containers, non-Linux)
        if out[key] is None and not from_sysfs:
            try:
                v = os.sysconf(name)
                out[key] = v if v and v > 0 else None
            except (ValueError, OSError, AttributeError):
                pass
    return out


def _clock_ghz() -> float | None:
    """The CPU's clock: cpufreq's maximum where the kernel exposes it, else /proc/cpuinfo's current
    value (on a VM the nominal clock; turbo may run faster)."""
    try:
        return round(int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6, 2)
    except (OSError, ValueError):
        pass
    try:
        return round(float(_cpuinfo().get("cpu MHz", "")) / 1e3, 2)
    except ValueError:
        return None


def fma(peak_gflops: float | None = None, threads: int | None = None) -> dict:
    """Vector FMA facts: the CPU's widest float32 FMA, our compiled kernels' and, given a measured
    FMA peak, an estimate of how many such FMAs a core issues per cycle.

    Parameters
    ----------
    peak_gflops : float, optional
        An FMA peak measured on ``threads`` threads (`peaks`), one thread per core.
    threads : int, optional
        The thread count of ``peak_gflops``.

    Returns
    -------
    dict
        ``cpu_lanes`` and ``cpu_bits`` (from the CPU flags: 16/512 with AVX-512, 8/256 with
        FMA3, else 4/128), ``kernel_lanes`` (what ``fastconv.kernels`` was compiled for, None if
        not built), ``ghz`` and ``per_cycle`` (peak per core / (2 FLOPs x kernel lanes x clock);
        None without a peak). An estimate: where the reported clock is the nominal one and the
        core runs faster (turbo), ``per_cycle`` comes out high (2 units can read as 2.9).
    """
    flags = set(_cpuinfo().get("flags", "").split())
    lanes = 16 if "avx512f" in flags else 8 if "fma" in flags else 4
    try:
        from fastconv.kernels import _peak

        kl = int(_peak.lanes())
    except ImportError:
        kl = None
    ghz = _clock_ghz()
    per_cycle = None
    if peak_gflops and threads and ghz and kl:
        per_cycle = round(peak_gflops / threads / (2 * kl * ghz), 1)
    return {"cpu_lanes": lanes, "cpu_bits": 32 * lanes, "kernel_lanes": kl, "ghz": ghz, "per_cycle": per_cycle}


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

    return [
        {k: d.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer", "architecture", "filepath")}
        for d in threadpool_info()
        if d.get("user_api") == "blas"
    ]


def openmp() -> list[dict]:
    """The OpenMP runtimes loaded (our Cython kernels' prange), with their thread counts."""
    from threadpoolctl import threadpool_info

    import fastconv.kernels.pool  # noqa: F401  (loads the OpenMP runtime our kernels use)

    return [
        {k: d.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
        for d in threadpool_info()
        if d.get("user_api") == "openmp"
    ]


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

    libs = {
        d: _version(d)
        for d in ("numpy", "Cython", "scipy", "threadpoolctl", "torch", "onnxruntime", "onnx", "rich", "matplotlib")
    }
    return {
        "fastconv": fastconv.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "machine_key": machine_key(),
        "cpu": cpu(),
        "caches": cache_sizes(),
        "fma": fma(),
        "threads": _threads.get_num_threads(),
        "libraries": libs,
        "blas": blas(),
        "openmp": openmp(),
    }


# --- peaks -----------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where fastconv keeps measurements: ``FASTCONV_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/fastconv``, else ``~/.cache/fastconv`` (not created here)."""
    if os.environ.get("FASTCONV_CACHE_DIR"):
        return Path(os.environ["FASTCONV_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastconv"


def _cache_path() -> Path:
    return cache_dir() / f"machine-{machine_key()}.json"


def cached_peaks() -> dict[str, dict]:
    """Peaks measured before on this machine, by thread count (``{"2": {...}}``); nothing is measured."""
    try:
        return json.loads(_cache_path().read_text()).get("peaks", {})
    except (OSError, ValueError, AttributeError):
        return {}


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
    return 2 * n**3 / best / 1e9


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
    entry = {
        "fma_gflops": round(measure_fma_peak(threads), 1),
        "sgemm_gflops": round(measure_sgemm(threads), 1),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
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


def calibration(kind: str = "sgemm", threads: int | None = None) -> Callable[[], object]:
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
