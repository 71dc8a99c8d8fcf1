"""Shared GEMM pieces of the pointwise and im2col kernels (included, so every module has its own copy).

Every GEMM here computes a block of a row-major ``C[M × cols] = W[M × K] @ B[K × cols]`` whose
rows are ``ldc`` apart. Read as column-major, that is ``Cᵀ = Bᵀ Wᵀ`` with no transposes at all:
``gemm('N', 'N', m=cols, n=M, k=K, A=B, lda=ldb_rows, B=W, ldb=K, C, ldc)``. So BLAS writes
straight into a slice of the NCHW output and reads the NCHW input (or an unfolded tile) and the
row-major weights in place.

The BLAS is numpy's OpenBLAS when `gemm_lib` finds it (measured faster), else scipy's.
"""
from libc.stdint cimport int64_t, uintptr_t
from cython cimport floating

import contextlib

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


def _bind_blas():
    """Point the kernels at numpy's OpenBLAS (see gemm_lib); returns its name or 'scipy'."""
    global _sgemm64, _dgemm64, _sgemm32, _dgemm32, _blas_set_threads, _blas_get_threads
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
    nothing; adding it after the GEMM (as this file did before) is one more read-write pass over the output (measured on
    nin.1x1, 9 MiB of output: ~1 ms of 5)."""
    cdef Py_ssize_t i, j
    cdef floating bv
    cdef floating* row
    for i in range(M):
        bv = bias[i]
        row = c + i * <Py_ssize_t>ldc
        for j in range(cols):
            row[j] = bv
