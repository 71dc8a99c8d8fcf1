# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""im2col + GEMM (Cython + OpenMP + BLAS), tiled so the unfolded matrix never exists whole.

DESIGN NOTE (filled in from measurements below).
"""
from cython.parallel cimport prange, threadid
from cython cimport floating
from libc.string cimport memset

import contextlib

import numpy as np

include "gemm_blas.pxi"


def _single_blas():
    """BLAS runs single-threaded inside our prange: numpy's OpenBLAS is switched by the kernel
    itself (a C call); the scipy fallback goes through threadpoolctl."""
    return threads.blas_limit(1) if BLAS == "scipy" else contextlib.nullcontext()
from .. import threads

TILE_BYTES = 2 * 1024 * 1024   # unfolded tile per thread (K × cols); see module docstring
MIN_COLS = 128                  # narrower GEMMs spend their time re-packing the weights


def supports(p, **opts) -> str | None:
    return None


def tiling(p, nthreads: int, tile_bytes: int = TILE_BYTES) -> tuple[int, int]:
    """(cols, images): a tile is ``cols`` output pixels of one image, or — when one image's whole
    map is smaller than the budget — ``images`` whole images (their GEMM goes through a small
    C buffer, since different images' outputs are not one strided block). Tiles hold
    ``K·cols·images·itemsize ≤ tile_bytes`` (at least MIN_COLS columns), are equal, and there are
    at least 2 per thread where the layer allows."""
    P = p.out_h * p.out_w
    K = p.c_in_per_group * p.kh * p.kw
    budget = max(MIN_COLS, tile_bytes // (K * p.itemsize))  # columns
    want = 2 * nthreads  # tasks, for balance
    if P < budget and p.n > 1:
        images = max(1, min(p.n, budget // P, -(-p.n * p.groups // want) if p.n * p.groups >= want else 1))
        if images > 1:
            return P, images
    ntile = -(-P // min(budget, P))
    if p.n * p.groups * ntile < want:
        ntile = min(-(-want // (p.n * p.groups)), max(1, P // 16))
    cols = -(-P // ntile)
    return int(min(P, -(-cols // 16) * 16)), 1


def workspace_bytes(p, tile_bytes: int = TILE_BYTES, **opts) -> int:
    nt = threads.get_num_threads()
    cols, images = tiling(p, nt, tile_bytes)
    c_buf = p.c_out_per_group if images > 1 else 0
    return nt * (p.c_in_per_group * p.kh * p.kw + c_buf) * cols * images * p.itemsize


def prepare(w, b, p, **opts):
    # Row-major W[g] (C_out_g × C_in_g·kh·kw) is what BLAS reads in place (gemm_blas.pxi); the
    # unfolded rows follow the same (ci, u, v) order.
    wm = np.ascontiguousarray(w.reshape(p.groups, p.c_out_per_group, -1))
    bias = None if b is None else np.ascontiguousarray(b)
    return wm, bias


def run(x, packed, p, out, tile_bytes: int = TILE_BYTES, **opts) -> None:
    wm, bias = packed
    nt = threads.get_num_threads()
    cols, images = tiling(p, nt, tile_bytes)
    c_buf = p.c_out_per_group if images > 1 else 0
    ws = np.empty((nt, (wm.shape[2] + c_buf) * cols * images), dtype=x.dtype)
    b = bias if bias is not None else wm[0, 0, :1]  # placeholder, never read
    with _single_blas():
        _im2col(x, wm, b, out, ws, bias is not None, p.kh, p.kw, p.stride[0], p.stride[1], p.pad[0], p.pad[2],
                p.dilation[0], p.dilation[1], cols, images, nt)


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
            int pt, int pl, int dh, int dw, int cols, int images, int nt):
    cdef int n = x.shape[0], oh = out.shape[2], ow = out.shape[3]
    cdef int groups = wm.shape[0], cog = wm.shape[1], K = wm.shape[2]
    cdef int cig = x.shape[1] // groups, H = x.shape[2], W = x.shape[3]
    cdef int P = oh * ow
    cdef int ntile = (P + cols - 1) // cols           # tiles per image (images == 1)
    cdef int nit = (n + images - 1) // images          # image groups (images > 1, then ntile == 1)
    cdef Py_ssize_t ntasks = <Py_ssize_t>nit * groups * ntile
    cdef Py_ssize_t t, ld, cstride = <Py_ssize_t>out.shape[1] * P
    cdef int img, i0, i1, g, tile, p0, m, co
    cdef floating* buf
    cdef floating* cbuf
    cdef floating* dst
    cdef floating bv
    cdef int old = blas_threads_begin(1)
    for t in prange(ntasks, nogil=True, schedule="static", num_threads=nt):
        tile = t % ntile
        g = (t // ntile) % groups
        i0 = (t // (ntile * groups)) * images
        buf = &ws[threadid(), 0]
        if images == 1:
            p0 = tile * cols
            m = min(cols, P - p0)
            _unfold(&x[i0, g * cig, 0, 0], cig, H, W, buf, m, p0, m, ow, kh, kw, sh, sw, pt, pl, dh, dw)
            gemm_rowmajor(cog, m, K, &wm[g, 0, 0], buf, m, &out[i0, g * cog, 0, 0] + p0, P)
            if has_bias:
                add_bias(cog, m, &b[g * cog], &out[i0, g * cog, 0, 0] + p0, P)
        else:
            # several whole images side by side: [K × (i1−i0)·P] tile, C into a buffer, then scatter
            i1 = min(n, i0 + images)
            ld = <Py_ssize_t>(i1 - i0) * P
            for img in range(i0, i1):
                _unfold(&x[img, g * cig, 0, 0], cig, H, W, buf + (img - i0) * P, ld, 0, P, ow,
                        kh, kw, sh, sw, pt, pl, dh, dw)
            cbuf = buf + K * ld
            gemm_rowmajor(cog, <int>ld, K, &wm[g, 0, 0], buf, <int>ld, cbuf, <int>ld)
            for img in range(i0, i1):
                for co in range(cog):
                    bv = b[g * cog + co] if has_bias else 0
                    dst = &out[img, g * cog + co, 0, 0]
                    for p0 in range(P):
                        dst[p0] = cbuf[co * ld + (img - i0) * P + p0] + bv
    blas_threads_end(old, 1)
