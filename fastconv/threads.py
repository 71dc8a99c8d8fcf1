"""One knob for every thread pool fastconv touches: numba's, OpenMP's (Cython ``prange``) and BLAS's.

Measured before fastconv existed (DESIGN.md): a numba ``prange`` calling a 2-thread OpenBLAS
ran 2–2.6x slower than either alone, because the pools fight over 2 cores. So:

* `set_num_threads(n)` sets numba, our OpenMP regions and BLAS to ``n`` at once;
* `kernel_region()` wraps every kernel call: it makes numba's thread-local count match the knob
  in the calling thread (numba's count is per Python thread);
* kernels that call BLAS from inside their own parallel loops pass ``blas_threads=1`` to
  `blas_limit` — BLAS and our threads never nest.

The default is the number of cores this process may run on, or ``FASTCONV_NUM_THREADS``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading

_lock = threading.Lock()


def _default() -> int:
    env = os.environ.get("FASTCONV_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"FASTCONV_NUM_THREADS must be a positive int, got {env!r}") from None
        if n < 1:
            raise ValueError(f"FASTCONV_NUM_THREADS must be a positive int, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_state = {"n": _default(), "blas_applied": None, "controller": None}


def get_num_threads() -> int:
    """Threads fastconv's kernels (and the BLAS they call) use."""
    return _state["n"]


def set_num_threads(n: int) -> None:
    """Set numba, OpenMP and BLAS to ``n`` threads at once (the one knob)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _state["n"] = n
    apply()


def max_threads() -> int:
    """Most threads numba can run (its pool is sized once, at first use)."""
    if "numba" in sys.modules:
        import numba
        return numba.config.NUMBA_NUM_THREADS
    return _state["n"]


def _controller():
    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController
        _state["controller"] = ThreadpoolController()
    return _state["controller"]


def apply() -> None:
    """Push the knob into every pool loaded so far (called again when a kernel loads a new one)."""
    n = _state["n"]
    with _lock:
        if "numba" in sys.modules:
            import numba
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        # BLAS libraries may have been loaded since the last call (numpy's and scipy's OpenBLAS
        # are two different libraries), so re-scan whenever asked.
        from threadpoolctl import ThreadpoolController
        _state["controller"] = ThreadpoolController()
        _state["controller"].limit(limits=n, user_api="blas")
        _state["controller"].limit(limits=n, user_api="openmp")
        _state["blas_applied"] = n


_ran: set[str] = set()


def after_first_run(name: str) -> None:
    """A kernel's first call may load a BLAS library lazily (numba's np.dot loads scipy's
    OpenBLAS then); re-apply the knob once so that library obeys it too."""
    if name not in _ran:
        _ran.add(name)
        apply()


@contextlib.contextmanager
def kernel_region():
    """Enter a kernel call: numba's per-thread count follows the knob in this Python thread."""
    if "numba" in sys.modules:
        import numba
        n = min(_state["n"], numba.config.NUMBA_NUM_THREADS)
        if numba.get_num_threads() != n:
            numba.set_num_threads(n)
    yield


@contextlib.contextmanager
def blas_limit(blas_threads: int):
    """Temporarily run BLAS with ``blas_threads`` threads (1 inside our own parallel loops)."""
    if blas_threads == _state["blas_applied"]:
        yield
        return
    with _controller().limit(limits=blas_threads, user_api="blas"):
        yield
