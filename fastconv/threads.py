"""One knob for every thread pool fastconv touches: our OpenMP regions (Cython ``prange``) and BLAS.

Measured before fastconv existed (DESIGN.md): parallel loops calling a 2-thread OpenBLAS ran
2–2.6x slower than either alone, because the pools fight over 2 cores. So:

* `set_num_threads(n)` sets our OpenMP regions and every loaded BLAS to ``n`` at once; kernels
  read `get_num_threads()` on every call and pass it to ``prange(num_threads=...)``, so the knob
  holds in every Python thread (OpenMP's own setting is per calling thread);
* kernels that call BLAS from inside their own parallel loops wrap the call in `blas_limit(1)` —
  BLAS and our threads never nest.

Where the count comes from, first match wins (README "Threads and processes"):

1. `set_num_threads(n)` (``set_num_threads(None)`` returns to 2–5);
2. a limit the caller put on the OpenMP runtime — ``threadpoolctl.threadpool_limits(k)`` or
   ``omp_set_num_threads(k)`` in the calling thread — caps 3–5;
3. ``FASTCONV_NUM_THREADS``;
4. ``OMP_NUM_THREADS`` (its first entry; joblib's loky workers and dask's nanny-started workers
   get it set for them);
5. the cores this process may run on — but 1 in a `multiprocessing` worker or a forked child,
   where sibling processes share those cores (2 spawned workers x 2 threads on 2 cores ran an
   8x64x56x56 3x3 conv 4x slower per call than 2 x 1 thread, benchmarks/workers.py).

After ``fork`` our OpenMP regions run on 1 thread in the child whenever the parent had run them on
more: libgomp's thread pool belongs to the thread that forked, its threads do not exist in the
child, and a region of more than 1 thread waits for them forever. A 1-thread region never touches
the pool (libgomp ``gomp_team_start`` returns before the pool's dock for ``nthreads == 1``), so
the child runs every op, single-threaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import warnings
from typing import Any

_lock = threading.Lock()


def _env_threads(name: str, strict: bool) -> int | None:
    """A positive thread count from environment variable ``name`` (OpenMP's list form "4,2" gives
    4), or None when unset. ``strict``: a malformed value raises instead of being ignored."""
    env = os.environ.get(name, "").strip()
    if not env:
        return None
    first = env.split(",")[0].strip()
    try:
        n = int(first)
    except ValueError:
        n = 0
    if n < 1 or (strict and first != env):
        if strict:
            raise ValueError(f"{name} must be a positive int, got {env!r}")
        return None  # libgomp ignores a malformed OMP_NUM_THREADS too
    return n


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _in_mp_worker() -> bool:
    """Whether this process is a `multiprocessing` child (spawn, forkserver or fork). While a
    spawned child imports the parent's main module, ``parent_process()`` is still None but
    ``_inheriting`` is set."""
    mp = sys.modules.get("multiprocessing.process")
    if mp is None:  # never imported: not a worker (no need to pay for importing it)
        return False
    return mp.parent_process() is not None or bool(getattr(mp.current_process(), "_inheriting", False))


def _load_omp():
    """``omp_get_max_threads`` of the libgomp our kernels link, and its value now (before any
    caller could change it). Loaded at import so that a ``threadpool_limits`` entered before the
    first fastconv call finds the runtime and limits it; ctypes costs ~0.2 µs a call, cheap
    enough for every kernel call (a threadpoolctl scan costs milliseconds)."""
    if not sys.platform.startswith("linux"):
        return None, None, None
    try:
        lib = ctypes.CDLL("libgomp.so.1")  # the soname the extensions link: one runtime, shared
        get, put = lib.omp_get_max_threads, lib.omp_set_num_threads
    except (OSError, AttributeError):
        return None, None, None
    get.restype, get.argtypes = ctypes.c_int, []
    put.restype, put.argtypes = None, [ctypes.c_int]
    return get, put, int(get())


_omp_max, _omp_set, _omp_base = _load_omp()
_env_threads("FASTCONV_NUM_THREADS", strict=True)  # a malformed value fails at import, not mid-call

_state: dict[str, Any] = {
    "explicit": None,  # set_num_threads(n)
    "default": None,  # levels 3-5, computed on first use (a spawned child knows it is one late)
    "forked": False,  # this process is a forked child (of any generation)
    "stale_pool": False,  # ... whose forking thread ran our regions on > 1 thread: cap at 1
    "omp_used": False,  # get_num_threads() has returned > 1 here (so a fork child inherits a pool)
    "warned": False,
    "blas_applied": None,
    "controller": None,
}


def _default() -> int:
    n = _env_threads("FASTCONV_NUM_THREADS", strict=True)
    if n is None:
        n = _env_threads("OMP_NUM_THREADS", strict=False)
    if n is None:
        n = 1 if _state["forked"] or _in_mp_worker() else _cores()
    return n


def _effective() -> int:
    """The thread count by the precedence in the module docstring, for the calling thread."""
    n = _state["explicit"]
    if n is None:
        n = _state["default"]
        if n is None:
            n = _state["default"] = _default()
        if _omp_max is not None:
            # omp_get_max_threads() differs from its start value only when someone set it in this
            # thread: threadpoolctl and omp_set_num_threads both do; a limit only ever lowers.
            lim = _omp_max()
            if lim != _omp_base and 0 < lim < n:
                n = lim
    if n > 1 and _state["stale_pool"]:
        n = 1
    return n


def get_num_threads() -> int:
    """Threads that fastconv's kernels (and the BLAS they call) use for a call from this thread.

    Kernels read it on every call, so it follows `set_num_threads`, a caller's
    ``threadpoolctl.threadpool_limits`` and fork as they happen.

    Returns
    -------
    int
        The count, by this precedence (first match wins): `set_num_threads`; a caller's limit on
        the OpenMP runtime (``threadpool_limits``, ``omp_set_num_threads``; it only lowers);
        ``FASTCONV_NUM_THREADS``; ``OMP_NUM_THREADS``; the cores this process may use, or 1 in
        a `multiprocessing` worker or forked child. Always 1 in a child forked after the parent
        ran fastconv on more than one thread.

    Examples
    --------
    >>> import fastconv
    >>> from threadpoolctl import threadpool_limits
    >>> fastconv.set_num_threads(None)  # automatic: no set_num_threads in force
    >>> with threadpool_limits(1):
    ...     fastconv.get_num_threads()
    1
    """
    n = _effective()
    if n > 1:
        _state["omp_used"] = True  # this process now has libgomp threads a fork would lose
    return n


def set_num_threads(n: int | None) -> None:
    """Set our OpenMP regions and every loaded BLAS to ``n`` threads at once (the one knob).

    The setting is process-wide, overrides the environment and a caller's threadpoolctl limits,
    and is inherited by forked children (where it is capped at 1 if the parent had run fastconv
    on more than one thread: see `get_num_threads`).

    Parameters
    ----------
    n : int or None
        Threads, at least 1; None returns to the automatic count (see `get_num_threads`).

    Raises
    ------
    ValueError
        If ``n`` is neither None nor a positive int (``bool`` is refused too).

    Warns
    -----
    RuntimeWarning
        Once, if ``n > 1`` in a child forked after the parent ran fastconv on more than one
        thread: the child keeps running 1 thread (more would hang in libgomp).

    Examples
    --------
    >>> import fastconv
    >>> fastconv.set_num_threads(1)
    >>> fastconv.get_num_threads()
    1
    >>> fastconv.set_num_threads(None)  # back to the automatic count
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if n is not None and n > 1 and _state["stale_pool"] and not _state["warned"]:
        _state["warned"] = True
        warnings.warn(
            "fastconv runs 1 thread in a child forked after the parent used more: libgomp's "
            "thread pool does not survive fork (use the 'spawn' or 'forkserver' start method "
            "for multi-threaded workers)",
            RuntimeWarning,
            stacklevel=2,
        )
    if n is None and _state["explicit"] is not None and _omp_set is not None:
        # apply() wrote the old n into this thread's OpenMP setting; left there, _effective()
        # would read it back as a caller's limit
        _omp_set(_omp_base)
    _state["explicit"] = n
    apply()


def _controller():
    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController

        _state["controller"] = ThreadpoolController()
    return _state["controller"]


def apply() -> None:
    """Push the knob into every BLAS/OpenMP library loaded so far (called again when a kernel
    loads a new one)."""
    n = _effective()
    with _lock:
        # BLAS libraries may have been loaded since the last call (numpy's and scipy's OpenBLAS
        # are two different libraries), so re-scan whenever asked.
        from threadpoolctl import ThreadpoolController

        _state["controller"] = ThreadpoolController()
        _state["controller"].limit(limits=n, user_api="blas")
        if _state["explicit"] is not None:
            # only an explicit count goes into the OpenMP runtimes' own setting (so that
            # threadpool_info() shows it): without one, that setting is the caller's to limit
            # and _effective() reads it back as such
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


# --- fork ------------------------------------------------------------------------------------
_pool_at_fork = [False]


def _before_fork() -> None:
    # runs in the parent, in the forking thread: remember whether libgomp has pool threads that
    # the child will not have (a grandchild inherits the stale pool from its parent)
    _pool_at_fork[0] = _state["omp_used"] or _state["stale_pool"]


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another parent thread may have held it at the fork
    _state.update(forked=True, stale_pool=_pool_at_fork[0], default=None, warned=False)
    _state["omp_used"] = _state["stale_pool"]
    n = _effective()
    # BLAS (OpenBLAS restarts its own threads after fork) follows the knob: the libraries the
    # parent scanned are set directly, no rescan (milliseconds in every forked worker); a child
    # whose parent never scanned loads the kernels, and so runs apply(), before its first call.
    ctl = _state["controller"]
    if ctl is not None and _state["blas_applied"] != n:
        for lib in ctl.lib_controllers:
            if lib.user_api == "blas":
                lib.set_num_threads(n)
        _state["blas_applied"] = n


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
