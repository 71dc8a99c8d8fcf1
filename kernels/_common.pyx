# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Pieces the kernel modules share (no kernel imports another kernel's module; they all use this).

* `ensure_team` (and the C entry point behind `team_ensure_address`, which each kernel binds at
  import, see ``_shared.pxi``): makes the calling thread's OpenMP pool hold the threads of an
  ``n``-thread region before a kernel starts, raising `MemoryError` where they cannot be created —
  libgomp exits the process instead ("Thread creation failed"). ``_common.h`` explains why every
  kernel region then runs on 1 or ``n`` threads, never in between.
* `overlapped_address`: the C helper that runs a function on n threads at once and says whether
  the calls overlapped (the GEMM kernels warm OpenBLAS's per-call buffers with it).
* `all_finite`: whether an array holds only finite values — the registry runs a call on ``direct``
  instead of a kernel that declares ``needs_finite`` (Winograd) when its input or weights do not.
"""
from cython.parallel cimport prange
from libc.stdint cimport uintptr_t

cdef extern from "_common.h" nogil:
    void fc_common_init()
    int fc_team_ensure(int n)
    ctypedef void (*fc_work_fn)(int size) noexcept nogil
    int fc_overlapped(int n, fc_work_fn fn, int size)

ctypedef fused floating:
    float
    double

fc_common_init()


def ensure_team(int n) -> None:
    """Make the calling thread's OpenMP pool ready for ``n``-thread regions (MemoryError if its
    threads cannot be created)."""
    if fc_team_ensure(n) < 0:
        raise MemoryError(f"cannot start {n} threads (address space or thread limit reached)")


def team_ensure_address() -> int:
    """The address of ``int fc_team_ensure(int n)`` (0, or -1 when the threads cannot be created)."""
    return <uintptr_t>fc_team_ensure


def overlapped_address() -> int:
    """The address of ``int fc_overlapped(int n, void (*fn)(int), int size)`` (_common.h)."""
    return <uintptr_t>fc_overlapped


def all_finite(const floating[::1] x, int nthreads) -> bool:
    """Whether every element is finite: ``x - x`` is 0 for finite x and NaN (``!= 0``) for ±Inf
    and NaN; one parallel, vectorised pass (an integer OR, which gcc vectorises where it would
    not vectorise a float sum)."""
    cdef Py_ssize_t n = x.shape[0], c, i, i0, i1
    cdef Py_ssize_t nchunk = max(1, min(<Py_ssize_t>nthreads * 4, n // 65536))
    cdef int bad = 0, f
    cdef int nt = nthreads if nchunk > 1 else 1
    ensure_team(nt)
    for c in prange(nchunk, nogil=True, schedule="static", num_threads=nt):
        i0 = n * c // nchunk
        i1 = n * (c + 1) // nchunk
        f = 0
        for i in range(i0, i1):
            f = f | ((x[i] - x[i]) != 0)
        bad += f
    return bad == 0
