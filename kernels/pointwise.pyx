# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""1x1 (pointwise) convolution (Cython + OpenMP + BLAS): a GEMM straight on NCHW memory.

Design. With a 1x1 kernel, stride 1 and no padding, ``out[n, g] = W[g] @ x[n, g]`` where each
image's channels are already a row-major ``C_in_g × H·W`` matrix, and ``out[n, g]`` a row-major
``C_out_g × H·W`` one: read as column-major that is ``outᵀ = xᵀ Wᵀ``, one ``sgemm('N', 'N')`` on
the arrays as they lie (gemm_blas.pxi) — no copy, no packing of our own, **no extra memory**.
Threads: the n·groups·H·W output columns are cut into ``nt`` equal contiguous chunks, one per
OpenMP thread, each a single-threaded GEMM per (image, group) piece it covers, with the bias
added right after on the same piece. A stride > 1 gathers the strided pixels tile by tile:
that is exactly im2col with K = C_in_g, so it runs `im2col` (and its bounded workspace).

Measured (this 2-core Zen 4, shared with other jobs; interleaved medians, see the helper report):
* BLAS: numpy's OpenBLAS 0.3.31 (found by `gemm_lib`) runs these shapes 10–20% faster than
  scipy's 0.3.30 behind ``cython_blas``; with it, 1 thread: 0.95–1.0× numpy's own
  ``W @ x[n]`` (the same SGEMM, no bias), vs 0.75–0.9× through scipy's.
* Chunks vs one multi-threaded BLAS call per image (``mode="blas"``, kept for the comparison):
  chunks need no synchronisation inside the GEMM and leave no OpenBLAS workers spinning after
  the call (DESIGN.md); they were as fast or faster on every 1x1 layer measured, so they are
  the default.
* Our own AVX-512 micro-kernel (im2col's) on these shapes: 0.73–0.78× the BLAS path (K = 64–256
  is too shallow to amortise packing x), so 1x1 stays on BLAS.
* Cython over the previous Numba version (np.dot per image, bias in a second pass): 1.12–1.25×.
"""
from cython.parallel cimport prange
from cython cimport floating

import numpy as np

include "gemm_blas.pxi"


def supports(p, **opts) -> str | None:
    if (p.kh, p.kw) != (1, 1):
        return f"needs a 1x1 kernel, got {p.kh}x{p.kw}"
    if p.pad != (0, 0, 0, 0):
        return f"needs padding 0, got {p.pad}"
    return None


def workspace_bytes(p, **opts) -> int:
    if p.stride == (1, 1):
        return 0  # GEMM reads x and writes out in place
    from . import im2col  # strided: gather bounded tiles of pixels, exactly im2col with K = C_in_g
    return im2col.workspace_bytes(p, **opts)


def prepare(w, b, p, **opts):
    if p.stride != (1, 1):
        from . import im2col
        return im2col.prepare(w, b, p)
    # W[g] (C_out_g × C_in_g, row-major) is already the layout BLAS reads (see gemm_blas.pxi).
    wm = np.ascontiguousarray(w.reshape(p.groups, p.c_out_per_group, p.c_in_per_group))
    bias = None if b is None else np.ascontiguousarray(b)
    return wm, bias, None


def run(x, packed, p, out, mode: str = "chunks", **opts) -> None:
    if p.stride != (1, 1):
        from . import im2col
        im2col.run(x, packed, p, out, **opts)
        return
    wm, bias = packed[:2]
    nt = threads.get_num_threads()
    hw = p.out_h * p.out_w
    x3 = x.reshape(p.n, p.c_in, hw)
    o3 = out.reshape(p.n, p.c_out, hw)
    b = bias if bias is not None else wm[0, 0, :1]  # placeholder, never read
    if mode == "blas":  # one multi-threaded BLAS call per (image, group), outside any parallel region
        _pointwise_serial(x3, wm, b, o3, bias is not None, nt)
        return
    with _single_blas():
        _pointwise_chunks(x3, wm, b, o3, nt, bias is not None)


def _pointwise_chunks(const floating[:, :, ::1] x, const floating[:, :, ::1] wm, const floating[::1] b,
                      floating[:, :, ::1] out, int nt, bint has_bias):
    """Split the n·groups·HW output columns into nt equal contiguous chunks, one per thread; each
    chunk is one single-threaded GEMM per (image, group) piece it covers, bias added right after."""
    cdef int n = x.shape[0], hw = x.shape[2]
    cdef int groups = wm.shape[0], cog = wm.shape[1], cig = wm.shape[2]
    cdef Py_ssize_t total = <Py_ssize_t>n * groups * hw
    cdef Py_ssize_t c, s, e, ig
    cdef int img, g, j0, m
    cdef int old = blas_threads_begin(1)
    for c in prange(nt, nogil=True, schedule="static", num_threads=nt):
        s = total * c // nt
        e = total * (c + 1) // nt
        while s < e:
            ig = s // hw
            j0 = s - ig * hw
            m = min(hw - j0, e - s)
            img = ig // groups
            g = ig - img * groups
            if has_bias:
                fill_bias(cog, m, &b[g * cog], &out[img, g * cog, j0], hw)
            gemm_rowmajor(cog, m, cig, &wm[g, 0, 0], &x[img, g * cig, j0], hw, &out[img, g * cog, j0], hw,
                          has_bias)
            s = s + m
    blas_threads_end(old, 1)


def _pointwise_serial(const floating[:, :, ::1] x, const floating[:, :, ::1] wm, const floating[::1] b,
                      floating[:, :, ::1] out, bint has_bias, int nt):
    cdef int n = x.shape[0], hw = x.shape[2]
    cdef int groups = wm.shape[0], cog = wm.shape[1], cig = wm.shape[2]
    cdef int img, g
    cdef int old
    with nogil:
        old = blas_threads_begin(nt)
        for img in range(n):
            for g in range(groups):
                if has_bias:
                    fill_bias(cog, hw, &b[g * cog], &out[img, g * cog, 0], hw)
                gemm_rowmajor(cog, hw, cig, &wm[g, 0, 0], &x[img, g * cig, 0], hw, &out[img, g * cog, 0], hw,
                              has_bias)
        blas_threads_end(old, nt)
