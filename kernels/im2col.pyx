# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""im2col + GEMM (Cython + OpenMP + the shared micro-kernel / BLAS), tiled: the unfolded matrix
never exists whole.

Design. Work is split into tasks (image, group, tile), a tile being ``cols`` consecutive pixels
of one output plane (whole rows or not). Because ``out[n, g·C_out_g:…]`` is row-major with row
stride H_out·W_out, a tile's ``C_out_g × cols`` result is a strided block *of out itself*: the
GEMM writes it in place, no copy. OpenMP ``prange`` runs the tasks (static schedule, at least 2
tasks per thread where the map allows); each thread owns one slice of the caller's workspace:

* float32 (AVX-512 builds): the tile is unfolded straight into the micro-kernel's panel layout
  ([⌈cols/48⌉][K][48], a segment table per tile keeps the copy loops free of divisions), and
  the micro-kernel of `gemm_ukernel.h` (the one Winograd and pointwise use) multiplies it by W
  packed once in `prepare` ([⌈C_out_g/8⌉][K][8]); 8×48 register blocks, K in equal blocks of
  ≤ 192, bias as the accumulators' initial value, a partial last panel on the 8×16 or 8×32 tile.
  No BLAS call, so no BLAS threads at all.
* float64, and every dtype on builds without AVX-512: the tile is unfolded row-major (K × cols)
  and one single-threaded BLAS GEMM (numpy's OpenBLAS, gemm_lib) accumulates it onto the bias,
  written into out first (beta = 1, which costs OpenBLAS nothing: see ``fill_bias``). Before the
  first such call of n threads, OpenBLAS's buffers are made ready (``ensure_blas``,
  gemm_blas.pxi), so a call short of memory raises MemoryError instead of exiting the process.

Memory bound (``workspace_bytes``), with K = C_in_g·kh·kw, nt threads, P = H_out·W_out and
``cols = min(P, roundup(max(128, TILE_BYTES / (K·itemsize)), 48))`` (at most; fewer when the
tiles are split for balance):
    micro-kernel:  nt · (⌈cols/48⌉·48·K + 8·cols + 8) · 4 bytes
    BLAS:          nt · K · cols · itemsize bytes
i.e. about nt · max(TILE_BYTES, 128·K·itemsize) — independent of N and (for large maps) of
H·W; the whole unfolded matrix (N·K·P·itemsize) is never held.

Measured (this 2-core Zen 4, 1 thread, CPU time, interleaved medians; shared machine, noisy):
* the micro-kernel alone runs at 100–115 GFLOP/s (≈ the FMA loop's measured 105–113) against
  OpenBLAS's 72–94 on the same tile shapes; whole layers: alexnet.conv2 84 vs 66 GFLOP/s
  (BLAS), seed003 74 vs 50, stem 58 vs 51, alexnet.conv1 55 vs 46.
* TILE_BYTES: 256 KiB–512 KiB tiles (in L2 with W's K-block) beat 1–2 MiB by 2–8%.
* Tiles of several small images (one bigger GEMM through a C buffer) were slower than one
  image per tile (lenet.conv2), so tiles never cross images.
"""
from cython.parallel cimport prange, threadid
from cython cimport floating
from libc.string cimport memset

cdef extern from "gemm_ukernel.h" nogil:
    int FC_MR, FC_NR, FC_KC, FC_WIDE_VECTORS
    void fc_pack_w(const float* w, int M, int K, float* wp)
    size_t fc_packed_w_floats(int M, int K)
    size_t fc_packed_b_floats(int N, int K)
    void fc_gemm_packed(int M, int N, int K, const float* wp, const float* bp, const float* bias,
                        float* c, Py_ssize_t ldc)

import numpy as np

from fastconv import contract

include "_shared.pxi"
include "gemm_blas.pxi"

TILE_BYTES = 512 * 1024  # unfolded tile per thread (K × cols); measured, see above
MIN_COLS = 128           # narrower tiles re-read all of W (from L3) for too little work


def supports(p, **options) -> str | None:
    why = contract.refuse(p, epilogue=("bias",), options=options, dtypes=("float32", "float64"))
    if why is not None:
        return why
    if p.groups < 1 or p.c_in % p.groups or p.c_out % p.groups:
        return f"groups ({p.groups}) must divide both channel counts ({p.c_in}, {p.c_out})"
    if min(p.kh, p.kw, *p.stride, *p.dilation) < 1 or min(p.pad) < 0:
        return "kernel, stride and dilation must be >= 1 and padding >= 0"
    if p.out_h < 1 or p.out_w < 1:
        return f"output size {p.out_h}x{p.out_w} is empty"
    if max(p.c_in * p.h * p.w, p.c_out * p.out_h * p.out_w, p.c_in_per_group * p.kh * p.kw * MIN_COLS,
           *p.stride, *p.pad, *p.dilation) > 2 ** 31 - 1:
        return "sizes, strides and offsets must fit a C int"
    return None


def tile_cols(p, nthreads: int, align: int = 16) -> int:
    """Output pixels per tile (always within one image): ``K·cols·itemsize ≤ TILE_BYTES`` but at
    least MIN_COLS, equal tiles, and at least 2 tasks per thread where the map allows."""
    P = p.out_h * p.out_w
    K = p.c_in_per_group * p.kh * p.kw
    budget = max(MIN_COLS, TILE_BYTES // (K * p.itemsize))
    ntile = -(-P // min(budget, P))
    want, images = 2 * nthreads, max(1, p.n * p.groups)  # n = 0: sized as for one image
    if images * ntile < want:
        ntile = min(-(-want // images), max(1, P // 16))
    cols = -(-P // ntile)
    return int(min(P, -(-cols // align) * align))


def _use_ukernel(dtype) -> bool:
    """float32 runs on the micro-kernel where AVX-512 was compiled in; float64 (and every dtype
    elsewhere) on BLAS."""
    return np.dtype(dtype) == np.float32 and bool(FC_WIDE_VECTORS)


def _buf_bytes(p, nthreads: int) -> int:
    """One thread's tile buffer: the packed tile + its segment table (4 ints per segment, at most
    2 per column + 2) for the micro-kernel, the row-major K × cols tile for BLAS."""
    K = p.c_in_per_group * p.kh * p.kw
    if _use_ukernel(p.dtype):
        cols = tile_cols(p, nthreads, FC_NR)
        return ws_round((fc_packed_b_floats(cols, K) + 8 * cols + 8) * 4)
    return ws_round(K * tile_cols(p, nthreads) * p.itemsize)


def workspace_bytes(p, nthreads, **options) -> int:
    return nthreads * _buf_bytes(p, nthreads) + WS_ALIGN - 1


def prepare(w, b, p, **options):
    # Row-major W[g] (C_out_g × C_in_g·kh·kw) is what BLAS reads in place (gemm_blas.pxi); the
    # unfolded rows follow the same (ci, u, v) order. The micro-kernel gets W in panels (wp).
    wm = np.ascontiguousarray(w.reshape(p.groups, p.c_out_per_group, -1))
    bias = None if b is None else np.ascontiguousarray(b)
    wp = _pack_w(wm) if _use_ukernel(wm.dtype) else None
    return wm, bias, wp


def run(x, packed, p, out, workspace, nthreads, **options) -> None:
    wm, bias, wp = packed
    bb = _buf_bytes(p, nthreads)
    b = bias if bias is not None else wm[0, 0, :1]  # placeholder, never read
    if wp is not None:
        team(nthreads)
        _im2col_uk(x, wp, b, out, workspace, bb, bias is not None, p.c_out_per_group, p.kh, p.kw, p.stride[0],
                   p.stride[1], p.pad[0], p.pad[2], p.dilation[0], p.dilation[1], tile_cols(p, nthreads, FC_NR),
                   nthreads)
        return
    ensure_blas(nthreads)
    with _single_blas():
        _im2col(x, wm, b, out, workspace, bb, bias is not None, p.kh, p.kw, p.stride[0], p.stride[1], p.pad[0],
                p.pad[2], p.dilation[0], p.dilation[1], tile_cols(p, nthreads), nthreads)


cdef void _unfold_row(const floating* plane, int H, int W, floating* dst, int p0, int m, int ow,
                      int sh, int sw, int r0, int c0) noexcept nogil:
    """dst[t] = plane[i·sh + r0, j·sw + c0] (0 outside the plane) for the output pixels
    t = 0 … m−1 ↔ p0 + t = i·ow + j: one row of the unfolded matrix, k = (ci, u, v) fixed."""
    cdef int i, j, ja, jb, lo, hi, r, t = 0
    cdef const floating* src
    # the columns j whose input column j·sw + c0 lies in [0, W)
    lo = 0 if c0 >= 0 else (-c0 + sw - 1) // sw
    hi = (W - 1 - c0) // sw + 1 if W - 1 - c0 >= 0 else 0  # exclusive
    i = p0 // ow
    ja = p0 - i * ow
    while t < m:
        jb = min(ow, ja + m - t)
        r = i * sh + r0
        if r < 0 or r >= H:
            memset(dst + t, 0, (jb - ja) * sizeof(floating))
        else:
            src = plane + <Py_ssize_t>r * W
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


cdef void _unfold(const floating* x, int cin, int H, int W, floating* buf, Py_ssize_t ld, int p0, int m, int ow,
                  int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw) noexcept nogil:
    """Row layout for BLAS: buf[k·ld + t], k = (ci, u, v), for the tile's m output pixels."""
    cdef int ci, u, v
    cdef Py_ssize_t k = 0
    for ci in range(cin):
        for u in range(kh):
            for v in range(kw):
                _unfold_row(x + <Py_ssize_t>ci * H * W, H, W, buf + k * ld, p0, m, ow, sh, sw,
                            u * dh - pt, v * dw - pl)
                k += 1


cdef void _unfold_packed(const float* x, int cin, int H, int W, float* buf, int* seg, int p0, int m, int ow,
                         int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw) noexcept nogil:
    """Panel layout for the micro-kernel: element (k, t) at buf[(t/NR)·K·NR + k·NR + t%NR], the
    last panel zero-padded. The tile's pixels are first cut into segments that stay within one
    output row and one panel (seg: i, ja, jb, offset — computed once, shared by all K rows)."""
    cdef int ci, u, v, i, j, ja, jb, e, lo, hi, r, r0, c0, s, nseg = 0, t = 0, K = cin * kh * kw
    cdef Py_ssize_t k = 0
    cdef float* dst
    cdef const float* src
    i = p0 // ow
    ja = p0 - i * ow
    while t < m:
        jb = min(ow, ja + m - t)
        while ja < jb:
            e = min(jb, ja + FC_NR - t % FC_NR)
            seg[4 * nseg] = i
            seg[4 * nseg + 1] = ja
            seg[4 * nseg + 2] = e
            seg[4 * nseg + 3] = (t // FC_NR) * K * FC_NR + t % FC_NR
            nseg += 1
            t += e - ja
            ja = e
        ja = 0
        i += 1
    if m % FC_NR:  # zero the padding columns of the last panel
        for k in range(K):
            memset(buf + ((m // FC_NR) * <Py_ssize_t>K + k) * FC_NR + m % FC_NR, 0, (FC_NR - m % FC_NR) * sizeof(float))
    k = 0
    for ci in range(cin):
        for u in range(kh):
            r0 = u * dh - pt
            for v in range(kw):
                c0 = v * dw - pl
                # the output columns j whose input column j·sw + c0 lies in [0, W)
                lo = 0 if c0 >= 0 else (-c0 + sw - 1) // sw
                hi = (W - 1 - c0) // sw + 1 if W - 1 - c0 >= 0 else 0  # exclusive
                for s in range(nseg):
                    i = seg[4 * s]
                    ja = seg[4 * s + 1]
                    jb = seg[4 * s + 2]
                    dst = buf + seg[4 * s + 3] + k * FC_NR - ja  # dst[j] for j in [ja, jb)
                    r = i * sh + r0
                    if r < 0 or r >= H:
                        memset(dst + ja, 0, (jb - ja) * sizeof(float))
                        continue
                    src = x + (<Py_ssize_t>ci * H + r) * W + c0
                    for j in range(ja, min(jb, lo)):
                        dst[j] = 0
                    if sw == 1:
                        for j in range(max(ja, lo), min(jb, hi)):
                            dst[j] = src[j]
                    else:
                        for j in range(max(ja, lo), min(jb, hi)):
                            dst[j] = src[j * sw]
                    for j in range(max(ja, hi), jb):
                        dst[j] = 0
                k += 1


def _im2col(const floating[:, :, :, ::1] x, const floating[:, :, ::1] wm, const floating[::1] b,
            floating[:, :, :, ::1] out, const unsigned char[::1] workspace, Py_ssize_t buf_bytes, bint has_bias,
            int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw, int cols, int nt):
    """prange over (image, group, tile): unfold the tile into this thread's buffer, write the bias
    into the tile's block of out, and accumulate one single-threaded GEMM onto it (a tile is a
    contiguous run of the output plane, so its C_out_g × cols block has row stride H_out·W_out)."""
    cdef int n = x.shape[0], oh = out.shape[2], ow = out.shape[3]
    cdef int groups = wm.shape[0], cog = wm.shape[1], K = wm.shape[2]
    cdef int cig = x.shape[1] // groups, H = x.shape[2], W = x.shape[3]
    cdef int P = oh * ow
    cdef int ntile = (P + cols - 1) // cols
    cdef Py_ssize_t ntasks = <Py_ssize_t>n * groups * ntile
    cdef Py_ssize_t t
    cdef int img, g, tile, p0, m
    cdef floating* buf
    cdef char *ws = ws_base(workspace, nt * buf_bytes)
    cdef int old = blas_threads_begin(1)
    for t in prange(ntasks, nogil=True, schedule="static", num_threads=nt):
        tile = t % ntile
        g = (t // ntile) % groups
        img = t // (ntile * groups)
        p0 = tile * cols
        m = min(cols, P - p0)
        buf = <floating *>(ws + threadid() * buf_bytes)
        _unfold(&x[img, g * cig, 0, 0], cig, H, W, buf, m, p0, m, ow, kh, kw, sh, sw, pt, pl, dh, dw)
        if has_bias:
            fill_bias(cog, m, &b[g * cog], &out[img, g * cog, 0, 0] + p0, P)
        gemm_rowmajor(cog, m, K, &wm[g, 0, 0], buf, m, &out[img, g * cog, 0, 0] + p0, P, has_bias)
    blas_threads_end(old, 1)


def _pack_w(const float[:, :, ::1] wm):
    """Per group, W (C_out_g × K) in the micro-kernel's [⌈C_out_g/MR⌉][K][MR] panels."""
    cdef int groups = wm.shape[0], M = wm.shape[1], K = wm.shape[2], g
    wp = np.empty((groups, fc_packed_w_floats(M, K)), dtype=np.float32)
    cdef float[:, ::1] wpv = wp
    for g in range(groups):
        fc_pack_w(&wm[g, 0, 0], M, K, &wpv[g, 0])
    return wp


def _im2col_uk(const float[:, :, :, ::1] x, const float[:, ::1] wp, const float[::1] b,
               float[:, :, :, ::1] out, const unsigned char[::1] workspace, Py_ssize_t buf_bytes, bint has_bias,
               int cog, int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw, int cols, int nt):
    """Same tiles as _im2col, but the tile is unfolded straight into panels and multiplied by the
    micro-kernel against W packed in prepare (bias fused into the accumulators)."""
    cdef int n = x.shape[0], oh = out.shape[2], ow = out.shape[3]
    cdef int groups = wp.shape[0]
    cdef int cig = x.shape[1] // groups, H = x.shape[2], W = x.shape[3]
    cdef int K = cig * kh * kw
    cdef int P = oh * ow
    cdef int ntile = (P + cols - 1) // cols
    cdef Py_ssize_t ntasks = <Py_ssize_t>n * groups * ntile
    cdef Py_ssize_t t, bsize = fc_packed_b_floats(cols, K)
    cdef int img, g, tile, p0, m
    cdef float* buf
    cdef char *ws = ws_base(workspace, nt * buf_bytes)
    for t in prange(ntasks, nogil=True, schedule="static", num_threads=nt):
        tile = t % ntile
        g = (t // ntile) % groups
        img = t // (ntile * groups)
        p0 = tile * cols
        m = min(cols, P - p0)
        buf = <float *>(ws + threadid() * buf_bytes)
        _unfold_packed(&x[img, g * cig, 0, 0], cig, H, W, buf, <int*>(buf + bsize), p0, m, ow, kh, kw, sh, sw,
                       pt, pl, dh, dw)
        fc_gemm_packed(cog, m, K, &wp[g, 0], buf, &b[g * cog] if has_bias else NULL,
                       &out[img, g * cog, 0, 0] + p0, P)


_warm_at_import()
