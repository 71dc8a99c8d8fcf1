# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""im2col + GEMM (Cython + OpenMP + BLAS), tiled so the unfolded matrix never exists whole.

DESIGN NOTE (filled in from measurements below).
"""
from cython.parallel cimport prange, threadid
from cython cimport floating
from libc.string cimport memset

import numpy as np

include "gemm_blas.pxi"
TILE_BYTES = 2 * 1024 * 1024   # unfolded tile per thread (K × cols); see module docstring
MIN_COLS = 128                  # narrower GEMMs spend their time re-packing the weights


def supports(p, **opts) -> str | None:
    return None


def tile_cols(p, nthreads: int, tile_bytes: int = TILE_BYTES) -> int:
    """Output pixels per tile (always within one image): ``K·cols·itemsize ≤ tile_bytes`` but at
    least MIN_COLS, equal tiles, and at least 2 tasks per thread where the map allows."""
    P = p.out_h * p.out_w
    K = p.c_in_per_group * p.kh * p.kw
    budget = max(MIN_COLS, tile_bytes // (K * p.itemsize))
    ntile = -(-P // min(budget, P))
    want = 2 * nthreads
    if p.n * p.groups * ntile < want:
        ntile = min(-(-want // (p.n * p.groups)), max(1, P // 16))
    cols = -(-P // ntile)
    return int(min(P, -(-cols // 16) * 16))


def workspace_bytes(p, tile_bytes: int = TILE_BYTES, **opts) -> int:
    nt = threads.get_num_threads()
    return nt * p.c_in_per_group * p.kh * p.kw * tile_cols(p, nt, tile_bytes) * p.itemsize


def prepare(w, b, p, **opts):
    # Row-major W[g] (C_out_g × C_in_g·kh·kw) is what BLAS reads in place (gemm_blas.pxi); the
    # unfolded rows follow the same (ci, u, v) order.
    wm = np.ascontiguousarray(w.reshape(p.groups, p.c_out_per_group, -1))
    bias = None if b is None else np.ascontiguousarray(b)
    return wm, bias


def run(x, packed, p, out, tile_bytes: int = TILE_BYTES, **opts) -> None:
    wm, bias = packed
    nt = threads.get_num_threads()
    cols = tile_cols(p, nt, tile_bytes)
    ws = np.empty((nt, wm.shape[2] * cols), dtype=x.dtype)
    b = bias if bias is not None else wm[0, 0, :1]  # placeholder, never read
    with _single_blas():
        _im2col(x, wm, b, out, ws, bias is not None, p.kh, p.kw, p.stride[0], p.stride[1], p.pad[0], p.pad[2],
                p.dilation[0], p.dilation[1], cols, nt)


cdef void _unfold(const floating* x, int cin, int H, int W, floating* buf, Py_ssize_t ld, int p0, int m, int ow,
                  int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw) noexcept nogil:
    """buf[k·ld + t] = x[ci, i·sh + u·dh − pt, j·sw + v·dw − pl] (0 outside), k = (ci, u, v), for
    the output pixels t = 0 … m−1 ↔ p0 + t = i·ow + j of one image."""
    cdef int ci, u, v, i, j, ja, jb, lo, hi, r, c0, t
    cdef Py_ssize_t k = 0
    cdef floating* dst
    cdef const floating* src
    for ci in range(cin):
        for u in range(kh):
            for v in range(kw):
                dst = buf + k * ld
                k += 1
                # the columns j whose input column j·sw + v·dw − pl lies in [0, W)
                c0 = v * dw - pl
                lo = 0 if c0 >= 0 else (-c0 + sw - 1) // sw
                hi = (W - 1 - c0) // sw + 1 if W - 1 - c0 >= 0 else 0  # exclusive
                i = p0 // ow
                ja = p0 - i * ow
                t = 0
                while t < m:
                    jb = min(ow, ja + m - t)
                    r = i * sh + u * dh - pt
                    if r < 0 or r >= H:
                        memset(dst + t, 0, (jb - ja) * sizeof(floating))
                    else:
                        src = x + (<Py_ssize_t>ci * H + r) * W
                        for j in range(ja, min(jb, lo)):
                            dst[t + j - ja] = 0
                        if sw == 1:
                            for j in range(max(ja, lo), min(jb, hi)):
                                dst[t + j - ja] = src[j + c0]
                        else:
                            for j in range(max(ja, lo), min(jb, hi)):
                                dst[t + j - ja] = src[j * sw + c0]
                        for j in range(max(ja, hi), jb):
                            dst[t + j - ja] = 0
                    t += jb - ja
                    ja = 0
                    i += 1


def _im2col(const floating[:, :, :, ::1] x, const floating[:, :, ::1] wm, const floating[::1] b,
            floating[:, :, :, ::1] out, floating[:, ::1] ws, bint has_bias, int kh, int kw, int sh, int sw,
            int pt, int pl, int dh, int dw, int cols, int nt):
    """prange over (image, group, tile): unfold the tile into this thread's buffer, one
    single-threaded GEMM straight into out (a tile is a contiguous run of the output plane, so its
    C_out_g × cols block has row stride H_out·W_out), then the bias while the block is cached."""
    cdef int n = x.shape[0], oh = out.shape[2], ow = out.shape[3]
    cdef int groups = wm.shape[0], cog = wm.shape[1], K = wm.shape[2]
    cdef int cig = x.shape[1] // groups, H = x.shape[2], W = x.shape[3]
    cdef int P = oh * ow
    cdef int ntile = (P + cols - 1) // cols
    cdef Py_ssize_t ntasks = <Py_ssize_t>n * groups * ntile
    cdef Py_ssize_t t
    cdef int img, g, tile, p0, m
    cdef floating* buf
    cdef int old = blas_threads_begin(1)
    for t in prange(ntasks, nogil=True, schedule="static", num_threads=nt):
        tile = t % ntile
        g = (t // ntile) % groups
        img = t // (ntile * groups)
        p0 = tile * cols
        m = min(cols, P - p0)
        buf = &ws[threadid(), 0]
        _unfold(&x[img, g * cig, 0, 0], cig, H, W, buf, m, p0, m, ow, kh, kw, sh, sw, pt, pl, dh, dw)
        gemm_rowmajor(cog, m, K, &wm[g, 0, 0], buf, m, &out[img, g * cog, 0, 0] + p0, P)
        if has_bias:
            add_bias(cog, m, &b[g * cog], &out[img, g * cog, 0, 0] + p0, P)
    blas_threads_end(old, 1)
