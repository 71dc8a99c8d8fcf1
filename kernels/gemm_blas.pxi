"""Shared GEMM pieces of the pointwise and im2col kernels (included, so every module has its own copy).

Every GEMM here computes a block of a row-major ``C[M × cols] = W[M × K] @ B[K × cols]`` whose
rows are ``ldc`` apart. Read as column-major, that is ``Cᵀ = Bᵀ Wᵀ`` with no transposes at all:
``gemm('N', 'N', m=cols, n=M, k=K, A=B, lda=ldb_rows, B=W, ldb=K, C, ldc)``. So BLAS writes
straight into a slice of the NCHW output and reads the NCHW input (or an unfolded tile) and the
row-major weights in place.

The BLAS is numpy's OpenBLAS when `gemm_lib` finds it (measured faster), else scipy's.

OpenBLAS takes a buffer (32 MiB of address space here) from a process-wide table on every GEMM
call, allocates a table entry the first time that many calls run at once, keeps it for good, and
exits the process when that allocation fails ("Memory allocation still failed after 10 retries,
giving up"). So before a kernel's first parallel region of n threads calls BLAS, `ensure_blas`
makes n + 2 free entries exist: it takes that many buffers at once through OpenBLAS's own
``blas_memory_alloc`` and gives them back (or, where the library does not export it, runs one
GEMM on each of n threads until the calls provably overlapped: _common.h, fc_overlapped), after
checking that as much address space is free (MemoryError if not). It runs at import for the
thread count in use and again when a call asks for more threads; a later call allocates nothing.
Measured with benchmarks/memsweep.py: with n entries warmed by overlapping GEMMs, 1 run in 32 of
the pointwise layer still died in OpenBLAS (2 threads, 30-33 MiB of headroom, not reproducible
under a debugger); with n + 2 held at once, none.

Include after _shared.pxi (it uses `team` and the `_common` module).
"""
from libc.stdint cimport int64_t, uintptr_t
from cython cimport floating
cimport openmp
from posix.mman cimport mmap, munmap, PROT_NONE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED

import contextlib

import numpy as np

from .. import threads

ctypedef void (*sgemm64_t)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*,
                           const float*, const float*, const int64_t*, const float*, const int64_t*,
                           const float*, float*, const int64_t*) noexcept nogil
ctypedef void (*dgemm64_t)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*,
                           const double*, const double*, const int64_t*, const double*, const int64_t*,
                           const double*, double*, const int64_t*) noexcept nogil
# scipy.linalg.cython_blas's LP64 Fortran BLAS (the fallback), taken from its capsules at run time
# so that importing scipy.linalg (~0.3 s) is only paid when numpy's BLAS is not usable.
ctypedef void (*sgemm32_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                           float*, float*, int*) noexcept nogil
ctypedef void (*dgemm32_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                           double*, double*, int*) noexcept nogil
ctypedef void (*set_threads_t)(int) noexcept nogil
ctypedef int (*get_threads_t)() noexcept nogil

cdef sgemm64_t _sgemm64 = NULL
cdef dgemm64_t _dgemm64 = NULL
cdef sgemm32_t _sgemm32 = NULL
cdef dgemm32_t _dgemm32 = NULL
cdef set_threads_t _blas_set_threads = NULL
cdef get_threads_t _blas_get_threads = NULL
ctypedef void *(*mem_alloc_t)(int procpos) noexcept nogil
ctypedef void (*mem_free_t)(void *buf) noexcept nogil
cdef mem_alloc_t _blas_mem_alloc = NULL   # OpenBLAS's buffer table (see ensure_blas)
cdef mem_free_t _blas_mem_free = NULL


def _bind_blas():
    """Point the kernels at numpy's OpenBLAS (see gemm_lib); returns its name or 'scipy'."""
    global _sgemm64, _dgemm64, _sgemm32, _dgemm32, _blas_set_threads, _blas_get_threads
    global _blas_mem_alloc, _blas_mem_free
    from .gemm_lib import numpy_openblas, scipy_cython_blas
    f = numpy_openblas()
    if f is None:
        g = scipy_cython_blas()
        _sgemm32 = <sgemm32_t><uintptr_t>g["sgemm"]
        _dgemm32 = <dgemm32_t><uintptr_t>g["dgemm"]
        _sgemm64, _dgemm64, _blas_set_threads, _blas_get_threads = NULL, NULL, NULL, NULL
        return "scipy"
    _sgemm64 = <sgemm64_t><uintptr_t>f["sgemm"]
    _dgemm64 = <dgemm64_t><uintptr_t>f["dgemm"]
    _blas_set_threads = <set_threads_t><uintptr_t>f["set_threads"]
    _blas_get_threads = <get_threads_t><uintptr_t>f["get_threads"]
    if "memory_alloc" in f and "memory_free" in f:
        _blas_mem_alloc = <mem_alloc_t><uintptr_t>f["memory_alloc"]
        _blas_mem_free = <mem_free_t><uintptr_t>f["memory_free"]
    return "numpy"


BLAS = _bind_blas()


def _single_blas():
    """Context for our parallel loops: numpy's OpenBLAS is set to 1 thread by the kernel itself
    (blas_threads_begin, a C call); the scipy fallback is limited through threadpoolctl."""
    return threads.blas_limit(1) if BLAS == "scipy" else contextlib.nullcontext()


cdef inline int blas_threads_begin(int n) noexcept nogil:
    """Set numpy-BLAS threads to n (1 inside our own parallel loops); returns the old count, or -1
    when the scipy fallback is in use (its threads are limited with fastconv.threads.blas_limit)."""
    cdef int old
    if _blas_get_threads == NULL:
        return -1
    old = _blas_get_threads()
    if old != n:
        _blas_set_threads(n)
    return old


cdef inline void blas_threads_end(int old, int n) noexcept nogil:
    if old > 0 and old != n:
        _blas_set_threads(old)


cdef inline void gemm_rowmajor(int M, int cols, int K, const floating* w, const floating* b, int ldb,
                               floating* c, int ldc, bint accumulate=False) noexcept nogil:
    """c[M × cols] (row stride ldc) = w[M × K] (row-major) @ b[K × cols] (row stride ldb),
    or ``+=`` with ``accumulate`` (beta = 1: how `fill_bias` makes the bias free, see there)."""
    cdef char tr = b'N'
    cdef floating one = 1, zero = 1 if accumulate else 0
    cdef int ldw = K if K > 0 else 1
    cdef int64_t m64 = cols, n64 = M, k64 = K, lda64 = ldb, ldb64 = ldw, ldc64 = ldc
    if floating is float:
        if _sgemm64 != NULL:
            _sgemm64(&tr, &tr, &m64, &n64, &k64, &one, b, &lda64, w, &ldb64, &zero, c, &ldc64)
        else:
            _sgemm32(&tr, &tr, &cols, &M, &K, &one, <float*>b, &ldb, <float*>w, &ldw, &zero, c, &ldc)
    else:
        if _dgemm64 != NULL:
            _dgemm64(&tr, &tr, &m64, &n64, &k64, &one, b, &lda64, w, &ldb64, &zero, c, &ldc64)
        else:
            _dgemm32(&tr, &tr, &cols, &M, &K, &one, <double*>b, &ldb, <double*>w, &ldw, &zero, c, &ldc)


cdef inline void fill_bias(int M, int cols, const floating* bias, floating* c, int ldc) noexcept nogil:
    """c[i, :cols] = bias[i], before a GEMM with ``accumulate``. OpenBLAS starts every GEMM with a
    pass that scales C by beta (zeroes it for beta = 0), so writing the bias there instead costs
    nothing, where adding it after the GEMM is one more read-write pass over the output (measured
    on nin.1x1, 9 MiB of output: ~1 ms of 5)."""
    cdef Py_ssize_t i, j
    cdef floating bv
    cdef floating* row
    for i in range(M):
        bv = bias[i]
        row = c + i * <Py_ssize_t>ldc
        for j in range(cols):
            row[j] = bv


# --- warming OpenBLAS's buffer table (module docstring) --------------------------------------
ctypedef void (*_work_fn)(int size) noexcept nogil
ctypedef int (*_overlapped_t)(int n, _work_fn fn, int size) noexcept nogil
cdef _overlapped_t _overlapped = <_overlapped_t><uintptr_t>_common.overlapped_address()
cdef float *_warm_buf = NULL      # per thread: A, B and C of one size x size GEMM
cdef int _blas_ready = 0          # BLAS calls from our threads that may run at once, allocating nothing
_BLAS_BUFFER_BYTES = 64 << 20     # address space checked per buffer (OpenBLAS's are 32 MiB here)
# entries warmed beyond the calls of one region (another thread's numpy call may hold one meanwhile)
_BLAS_SPARE = 2


cdef void _warm_gemm(int size) noexcept nogil:
    cdef float *a = _warm_buf + <Py_ssize_t>openmp.omp_get_thread_num() * 3 * size * size
    gemm_rowmajor(size, size, size, a, a + size * size, size, a + 2 * size * size, size)


def _address_space_free(Py_ssize_t nbytes) -> bool:
    """Whether nbytes of address space can be mapped right now (mapped, then unmapped)."""
    cdef void *p = mmap(NULL, nbytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return False
    munmap(p, nbytes)
    return True


def _hold_buffers(int k) -> bool:
    """Take k of OpenBLAS's buffers at once, then give them back: afterwards the table holds at
    least k entries that are allocated and free. False where the library does not export its
    allocator (then the overlapping GEMMs of ensure_blas do it)."""
    cdef int i, got = 0
    cdef void *held[512]
    if _blas_mem_alloc == NULL or _blas_mem_free == NULL or k > 512:
        return False
    for i in range(k):
        held[i] = _blas_mem_alloc(0)
        if held[i] == NULL:  # (OpenBLAS exits instead; the address-space check comes first)
            break
        got += 1
    for i in range(got):
        _blas_mem_free(held[i])
    if got < k:
        raise MemoryError(f"OpenBLAS could not allocate {k} buffers")
    return True


def ensure_blas(int n) -> None:
    """Make n concurrent BLAS calls from our threads allocate nothing (module docstring);
    MemoryError where the threads or the buffers' address space are not available."""
    global _warm_buf, _blas_ready
    cdef int size = 128, tries, old
    cdef int k = n + _BLAS_SPARE
    if n <= _blas_ready:
        return
    team(n)
    if not _address_space_free(k * _BLAS_BUFFER_BYTES):
        raise MemoryError(f"no address space for {k} BLAS buffers ({_BLAS_BUFFER_BYTES >> 20} MiB each)")
    if not _hold_buffers(k):
        # without the allocator: one GEMM on each of n threads at once, until they overlapped
        for tries in range(8):
            # (a size x size GEMM skips OpenBLAS's small-matrix path, which takes no buffer)
            buf = np.zeros(n * 3 * size * size, dtype=np.float32)
            _warm_buf = <float *><uintptr_t>buf.ctypes.data
            with _single_blas():
                old = blas_threads_begin(1)
                ok = _overlapped(n, _warm_gemm, size)
                blas_threads_end(old, 1)
            _warm_buf = NULL
            if ok:
                break
            size = min(2 * size, 512)  # longer calls overlap more easily on a busy machine
        # (after 8 tries without an overlap, on a machine with far more threads than free cores,
        # the entries the calls did allocate have to do: retrying on every call would cost more)
    _blas_ready = n


def _warm_at_import():
    try:
        ensure_blas(threads.get_num_threads())
    except MemoryError:
        pass  # a later call raises it where it needs the buffers
