"""One knob for every thread pool fastconv touches: our OpenMP regions (Cython ``prange``) and BLAS.

Measured before fastconv existed (DESIGN.md): parallel loops calling a 2-thread OpenBLAS ran
2–2.6x slower than either alone, because the pools fight over 2 cores. So:

* `set_num_threads(n)` sets our OpenMP regions and every loaded BLAS to ``n`` at once; kernels
  read `get_num_threads()` on every call and pass it to ``prange(num_threads=...)``, so the knob
  holds in every Python thread (OpenMP's own setting is per calling thread);
* kernels that call BLAS from inside their own parallel loops wrap the call in `blas_limit(1)` —
  BLAS and our threads never nest.

The default is the number of cores this process may run on, or ``FASTCONV_NUM_THREADS``.
"""
from __future__ import annotations

import contextlib
import os
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
    """Set our OpenMP regions and BLAS to ``n`` threads at once (the one knob)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _state["n"] = n
    apply()


def _controller():
    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController
        _state["controller"] = ThreadpoolController()
    return _state["controller"]


def apply() -> None:
    """Push the knob into every BLAS/OpenMP library loaded so far (called again when a kernel
    loads a new one)."""
    n = _state["n"]
    with _lock:
        # BLAS libraries may have been loaded since the last call (numpy's and scipy's OpenBLAS
        # are two different libraries), so re-scan whenever asked.
        from threadpoolctl import ThreadpoolController
        _state["controller"] = ThreadpoolController()
        _state["controller"].limit(limits=n, user_api="blas")
        _state["controller"].limit(limits=n, user_api="openmp")
        _state["blas_applied"] = n


_ran: set[str] = set()


def after_first_run(name: str) -> None:
    """A kernel's first call may load a BLAS library lazily; re-apply the knob once so that
    library obeys it too."""
    if name not in _ran:
        _ran.add(name)
        apply()


@contextlib.contextmanager
def blas_limit(blas_threads: int):
    """Temporarily run BLAS with ``blas_threads`` threads (1 inside our own parallel loops)."""
    if blas_threads == _state["blas_applied"]:
        yield
        return
    with _controller().limit(limits=blas_threads, user_api="blas"):
        yield
