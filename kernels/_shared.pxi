# Included by every kernel module: the caller-owned workspace and the OpenMP team (see
# fastconv/contract.py and kernels/_common.h).
#
# A kernel's ``run`` gets ``workspace``, a 1-D uint8 array of at least ``workspace_bytes(p,
# nthreads)`` bytes with no alignment promised; `ws_base` checks its size and returns its first
# 64-byte-aligned address (``workspace_bytes`` counts the WS_ALIGN - 1 bytes of slack), and the
# kernel carves its buffers from there, each starting on a cache line (`ws_round`). Before its
# first parallel region, ``run`` calls `team`: the calling thread's OpenMP pool then holds the
# threads an ``nthreads`` region needs, or MemoryError is raised (libgomp would exit instead).
from libc.stdint cimport uintptr_t

from . import _common

cdef enum:
    WS_ALIGN = 64

ctypedef int (*_team_ensure_t)(int n) noexcept nogil
cdef _team_ensure_t _team_ensure = <_team_ensure_t><uintptr_t>_common.team_ensure_address()


cdef inline Py_ssize_t ws_round(Py_ssize_t nbytes) noexcept nogil:
    """nbytes rounded up to whole cache lines (each carved buffer starts on one)."""
    return (nbytes + WS_ALIGN - 1) // WS_ALIGN * WS_ALIGN


cdef inline int team(int n) except -1:
    """Make the calling thread's OpenMP pool ready for n-thread regions (MemoryError if not)."""
    if _team_ensure(n) < 0:
        raise MemoryError(f"cannot start {n} threads (address space or thread limit reached)")
    return 0


cdef inline char *ws_base(const unsigned char[::1] workspace, Py_ssize_t need) except NULL:
    """The first 64-byte-aligned byte of ``workspace``, which must hold ``need`` bytes from there
    (need = the kernel's workspace_bytes less the alignment slack)."""
    cdef Py_ssize_t size = workspace.shape[0]
    cdef uintptr_t start, aligned
    if need <= 0:
        return <char *>1  # nothing to carve (never dereferenced)
    if size < need:
        raise ValueError(f"workspace of {size} bytes, need {need + WS_ALIGN - 1}")
    start = <uintptr_t>&workspace[0]
    aligned = (start + WS_ALIGN - 1) & ~(<uintptr_t>WS_ALIGN - 1)
    if <Py_ssize_t>(aligned - start) + need > size:
        raise ValueError(f"workspace of {size} bytes, need {need + WS_ALIGN - 1}")
    return <char *>aligned
