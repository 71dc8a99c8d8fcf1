# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""1x1 (pointwise) convolution (Cython + OpenMP + BLAS): a GEMM straight on NCHW memory.

Design. With a 1x1 kernel, stride 1 and no padding, ``out[n, g] = W[g] @ x[n, g]`` where each
image's channels are already a row-major ``C_in_g × H·W`` matrix, and ``out[n, g]`` a row-major
``C_out_g × H·W`` one: read as column-major that is ``outᵀ = xᵀ Wᵀ``, one ``sgemm('N', 'N')`` on
the arrays as they lie (gemm_blas.pxi) — no copy, no packing of our own, **no extra memory**.
Threads: the n·groups·H·W output columns are cut into ``nt`` equal contiguous chunks, one per
OpenMP thread, each a single-threaded GEMM per (image, group) piece it covers, with the bias
added right after on the same piece. A stride > 1 gathers each tile's strided pixels into the
thread's workspace buffer (``C_in_g × cols``, at most 512 KiB unless a tile of 128 pixels needs
more) and runs the same GEMM on it, so its workspace is bounded like im2col's. Before a call's
first region the OpenMP team and OpenBLAS's buffers are made ready (`ensure_blas` in
gemm_blas.pxi): a call short of memory raises MemoryError instead of OpenBLAS exiting the process.

Measured (this 2-core Zen 4, shared with other jobs; interleaved medians, see the helper report):
* BLAS: numpy's OpenBLAS 0.3.31 (found by `gemm_lib`) runs these shapes 10–20% faster than
  scipy's 0.3.30 behind ``cython_blas``; with it, 1 thread: 0.95–1.0× numpy's own
  ``W @ x[n]`` (the same SGEMM, no bias), vs 0.75–0.9× through scipy's.
* Chunks vs one multi-threaded BLAS call per image: chunks need no synchronisation inside the
  GEMM and leave no OpenBLAS workers spinning after the call (DESIGN.md); they are as fast or
  faster on every 1x1 layer measured.
* Our own AVX-512 micro-kernel (im2col's) on these shapes: 0.73–0.78× the BLAS path (K = 64–256
  is too shallow to amortise packing x), so 1x1 stays on BLAS.
"""
from cython.parallel cimport prange, threadid
from cython cimport floating

cdef extern from "gemm_pointwise.h" nogil:
    int FC_PW_MR, FC_PW_NR_F32, FC_PW_NR_F64, FC_WIDE_VECTORS
    void fc_pw_pack_w_f32(const float* w, int M, int K, float* wp)
    void fc_pw_pack_w_f64(const double* w, int M, int K, double* wp)
    void fc_pw_thread_f32(int c, int nt, int groups, int n, int M, int K, const float* x, long xs, long HW, int W,
                          int OW, long P, int sh, int sw, const float* wp, long wps, const float* bias, float* y,
                          long ys, long nc, int mstep, float* buf)
    void fc_pw_thread_f64(int c, int nt, int groups, int n, int M, int K, const double* x, long xs, long HW, int W,
                          int OW, long P, int sh, int sw, const double* wp, long wps, const double* bias, double* y,
                          long ys, long nc, int mstep, double* buf)
    int FC_PWT_NR_F32, FC_PWT_NR_F64
    void fc_pwt_pack_w_f32(const float* w, int M, int K, float* wt)
    void fc_pwt_pack_w_f64(const double* w, int M, int K, double* wt)
    void fc_pwt_thread_f32(int c, int nt, int groups, int n, int M, int K, const float* x, long xs, long HW, int W,
                           int OW, long P, int sh, int sw, const float* wt, long wts, const float* bias, float* y,
                           long ys, int mrt, float* buf)
    void fc_pwt_thread_f64(int c, int nt, int groups, int n, int M, int K, const double* x, long xs, long HW,
                           int W, int OW, long P, int sh, int sw, const double* wt, long wts, const double* bias,
                           double* y, long ys, int mrt, double* buf)

import numpy as np

from fastconv import contract

include "_shared.pxi"
include "gemm_blas.pxi"

PACK_BYTES = 512 * 1024  # packed columns per thread (C_in_g x nc), in L2 beside W's panels
IMPLS = ("auto", "packed", "transposed", "blas")
TRANSPOSED_MAX_PIXELS = 32  # measured, see the module docstring
SERIAL_FLOPS = 1 << 20  # below this a call runs on one thread
TILE_BYTES = 512 * 1024  # strided: gathered pixels per thread (C_in_g x cols), like im2col's tiles
MIN_COLS = 128


def supports(p, **options) -> str | None:
    why = contract.refuse(p, passes=("forward",), layouts=("NCHW",), epilogue=("bias",))
    if why is not None:
        return why
    unknown = sorted(set(options) - {"impl"})
    if unknown:
        return f"takes only the option impl, got {unknown}"
    impl = options.get("impl", "auto")
    if impl not in IMPLS:
        return f"impl must be one of {IMPLS}, got {impl!r}"
    if p.dtype not in ("float32", "float64"):
        return f"dtype must be float32 or float64, got {p.dtype}"
    if (p.kh, p.kw) != (1, 1):
        return f"needs a 1x1 kernel, got {p.kh}x{p.kw}"
    if p.pad != (0, 0, 0, 0):
        return f"needs padding 0, got {p.pad}"
    if min(p.stride) < 1:
        return f"stride must be >= 1, got {p.stride}"
    if p.groups < 1 or p.c_in % p.groups or p.c_out % p.groups:
        return f"groups ({p.groups}) must divide both channel counts ({p.c_in}, {p.c_out})"
    if max(p.n * p.c_in, p.n * p.c_out) * p.h * p.w > 2 ** 31 - 1 or max(p.stride) > 2 ** 31 - 1:
        return "BLAS leading dimensions and offsets must fit a C int"
    return None


def tile_cols(p, nthreads: int) -> int:
    """Strided: output pixels per gathered tile (within one image): ``C_in_g·cols·itemsize ≤
    TILE_BYTES`` but at least MIN_COLS, equal tiles, at least 2 tasks per thread where the map
    allows, a multiple of 16."""
    P = p.out_h * p.out_w
    budget = max(MIN_COLS, TILE_BYTES // (p.c_in_per_group * p.itemsize))
    ntile = -(-P // min(budget, P))
    want, images = 2 * nthreads, max(1, p.n * p.groups)
    if images * ntile < want:
        ntile = min(-(-want // images), max(1, P // 16))
    cols = -(-P // ntile)
    return int(min(P, -(-cols // 16) * 16))


def _nr(itemsize) -> int:
    return FC_PW_NR_F32 if itemsize == 4 else FC_PW_NR_F64


def path(p, impl="auto") -> str:
    """Which GEMM runs ``p``: 'packed' (micro-kernel, output channels x pixels), 'transposed'
    (micro-kernel, pixels x output channels: few pixels) or 'blas'. ``impl`` other than 'auto'
    forces one (the tests run each); 'auto' takes the micro-kernel where the wide vectors were
    compiled in (gemm_ukernel.h), transposed while all n·H_out·W_out pixels' packed input fits
    PACK_BYTES and they are at most TRANSPOSED_MAX_PIXELS."""
    if impl != "auto":
        return impl
    if not FC_WIDE_VECTORS:
        return "blas"
    J = max(1, p.n) * p.out_h * p.out_w
    if J <= TRANSPOSED_MAX_PIXELS and (J + 7) * p.c_in_per_group * p.itemsize <= PACK_BYTES:
        return "transposed"
    return "packed"


def _threads(p, nthreads: int) -> int:
    """Threads a call runs on: one below SERIAL_FLOPS (waking the team costs more than it saves)."""
    flops = 2 * p.n * p.out_h * p.out_w * p.c_in_per_group * p.c_out
    return 1 if flops < SERIAL_FLOPS else nthreads


def _mrt(p) -> int:
    """Rows (pixels) of the transposed GEMM's tile: 1 for one pixel (a GEMV), 4 for up to 4."""
    J = p.n * p.out_h * p.out_w
    return 1 if J <= 1 else 4 if J <= 4 else 8


def packed_geometry(p, nthreads: int) -> tuple[int, int]:
    """(nc, mstep): columns per chunk (of the n·H_out·W_out output columns of a group, a multiple
    of NR) and output-channel rows per task (a multiple of MR). A chunk's packed columns
    (C_in_g × nc) fit PACK_BYTES, so they stay in L2 while W's row panels stream past; the rows
    are split when there are fewer than 2 tasks per thread (a batch of one small map: the threads
    share the columns and each reads its half of W)."""
    nr, mr = _nr(p.itemsize), FC_PW_MR
    J = max(1, p.n) * p.out_h * p.out_w
    K = p.c_in_per_group
    budget = max(nr, PACK_BYTES // (K * p.itemsize) // nr * nr)
    nch = -(-J // budget)
    nc = -(-J // nch)
    nc = -(-nc // nr) * nr
    nch = -(-J // nc)
    mpanels = -(-p.c_out_per_group // mr)
    chunks, want = p.groups * nch, 2 * nthreads
    nmb = 1
    if chunks < want:
        nmb = min(mpanels, -(-want // chunks))
        while nmb < mpanels and (chunks * nmb) % nthreads:
            nmb += 1
    mstep = -(-mpanels // nmb) * mr
    return int(nc), int(mstep)


def _buf_bytes(p, nthreads: int, kind: str) -> int:
    """One thread's workspace buffer. packed: a chunk's packed columns plus one MR × NR tile;
    transposed: all pixels' packed input plus one tile; blas: the gathered strided pixels."""
    if kind == "packed":
        nr = _nr(p.itemsize)
        return ws_round((p.c_in_per_group * packed_geometry(p, nthreads)[0] + FC_PW_MR * nr) * p.itemsize)
    if kind == "transposed":
        J = max(1, p.n) * p.out_h * p.out_w
        rows = (J + 7) // 8 * 8
        return ws_round(rows * 8) + ws_round((rows * p.c_in_per_group + 8 * FC_PWT_NR_F32) * p.itemsize)
    if p.stride == (1, 1):
        return 0  # the GEMMs read x and write out in place
    return ws_round(p.c_in_per_group * tile_cols(p, nthreads) * p.itemsize)


def workspace_bytes(p, nthreads, impl="auto", **options) -> int:
    bb = _buf_bytes(p, nthreads, path(p, impl))
    return nthreads * bb + WS_ALIGN - 1 if bb else 0


def prepare(w, b, p, impl="auto", **options):
    # W[g] (C_out_g × C_in_g, row-major) is already the layout BLAS reads (see gemm_blas.pxi);
    # the micro-kernel paths get it in panels (W, or Wᵀ for the transposed GEMM).
    wm = np.ascontiguousarray(w.reshape(p.groups, p.c_out_per_group, p.c_in_per_group))
    bias = None if b is None else np.ascontiguousarray(b)
    kind = path(p, impl)
    if kind == "blas":
        return kind, wm, bias
    return kind, _pack_w(wm, kind == "transposed"), bias


def run(x, packed, p, out, workspace, nthreads, **options) -> None:
    kind, wm, bias = packed
    if kind != "blas":
        nt = _threads(p, nthreads)
        team(nt)
        b = bias if bias is not None else wm[0, :1]  # placeholder, never read
        nc, mstep = packed_geometry(p, nt) if kind == "packed" else (0, 0)
        _pointwise_packed(x, wm, b, out, workspace, _buf_bytes(p, nt, kind), bias is not None, p.c_out_per_group,
                          p.stride[0], p.stride[1], kind == "transposed", _mrt(p), nc, mstep, nt)
        return
    ensure_blas(nthreads)
    b = bias if bias is not None else wm[0, 0, :1]  # placeholder, never read
    if p.stride != (1, 1):
        cols = tile_cols(p, nthreads)
        with _single_blas():
            _pointwise_strided(x, wm, b, out, workspace, _buf_bytes(p, nthreads, kind), bias is not None,
                               p.stride[0], p.stride[1], cols, nthreads)
        return
    hw = p.out_h * p.out_w
    x3 = x.reshape(p.n, p.c_in, hw)
    o3 = out.reshape(p.n, p.c_out, hw)
    with _single_blas():
        _pointwise_chunks(x3, wm, b, o3, nthreads, bias is not None)


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


def _pointwise_strided(const floating[:, :, :, ::1] x, const floating[:, :, ::1] wm, const floating[::1] b,
                       floating[:, :, :, ::1] out, const unsigned char[::1] workspace, Py_ssize_t buf_bytes,
                       bint has_bias, int sh, int sw, int cols, int nt):
    """Stride > 1: prange over (image, group, tile of cols output pixels); each thread gathers its
    tile's strided pixels into its workspace buffer (C_in_g x m, row-major), then one GEMM writes
    the tile's C_out_g x m block of out in place (row stride H_out·W_out), the bias first."""
    cdef int n = x.shape[0], W = x.shape[3], oh = out.shape[2], ow = out.shape[3]
    cdef int groups = wm.shape[0], cog = wm.shape[1], cig = wm.shape[2]
    cdef int P = oh * ow
    cdef int ntile = (P + cols - 1) // cols
    cdef Py_ssize_t ntasks = <Py_ssize_t>n * groups * ntile
    cdef Py_ssize_t t
    cdef int img, g, tile, p0, m, ci, q, i, j
    cdef const floating *src
    cdef floating *buf
    cdef char *ws = ws_base(workspace, nt * buf_bytes)
    cdef int old = blas_threads_begin(1)
    for t in prange(ntasks, nogil=True, schedule="static", num_threads=nt):
        tile = t % ntile
        g = (t // ntile) % groups
        img = t // (ntile * groups)
        p0 = tile * cols
        m = min(cols, P - p0)
        buf = <floating *>(ws + threadid() * buf_bytes)
        for ci in range(cig):
            src = &x[img, g * cig + ci, 0, 0]
            i = p0 // ow
            j = p0 - i * ow
            for q in range(m):  # output pixel p0 + q = (i, j) reads x[i·sh, j·sw]
                buf[ci * m + q] = src[<Py_ssize_t>i * sh * W + <Py_ssize_t>j * sw]
                j = j + 1
                if j == ow:
                    j = 0
                    i = i + 1
        if has_bias:
            fill_bias(cog, m, &b[g * cog], &out[img, g * cog, 0, 0] + p0, P)
        gemm_rowmajor(cog, m, cig, &wm[g, 0, 0], buf, m, &out[img, g * cog, 0, 0] + p0, P, has_bias)
    blas_threads_end(old, 1)


def _pack_w(const floating[:, :, ::1] wm, bint transposed):
    """Per group, W (C_out_g × C_in_g) in the micro-kernel's [⌈C_out_g/MR⌉][C_in_g][MR] panels, or
    for the transposed GEMM Wᵀ in [⌈C_out_g/NRT⌉][C_in_g][NRT] panels."""
    cdef int groups = wm.shape[0], M = wm.shape[1], K = wm.shape[2], g
    cdef int r = (FC_PWT_NR_F32 if floating is float else FC_PWT_NR_F64) if transposed else FC_PW_MR
    cdef Py_ssize_t size = <Py_ssize_t>((M + r - 1) // r) * r * K
    wp = np.empty((groups, size), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] wpv = wp
    for g in range(groups):
        if floating is float:
            if transposed:
                fc_pwt_pack_w_f32(&wm[g, 0, 0], M, K, &wpv[g, 0])
            else:
                fc_pw_pack_w_f32(&wm[g, 0, 0], M, K, &wpv[g, 0])
        else:
            if transposed:
                fc_pwt_pack_w_f64(&wm[g, 0, 0], M, K, &wpv[g, 0])
            else:
                fc_pw_pack_w_f64(&wm[g, 0, 0], M, K, &wpv[g, 0])
    return wp


def _pointwise_packed(const floating[:, :, :, ::1] x, const floating[:, ::1] wp, const floating[::1] b,
                      floating[:, :, :, ::1] out, const unsigned char[::1] workspace, Py_ssize_t buf_bytes,
                      bint has_bias, int cog, int sh, int sw, bint transposed, int mrt, long nc, int mstep, int nt):
    """One parallel region of nt threads (or none for one), each running its share of the tasks on
    its workspace buffer (gemm_pw_impl.h): (group, column chunk, row block) tasks for the packed
    GEMM, (group, channel panel) tasks for the transposed one."""
    cdef int n = x.shape[0], H = x.shape[2], W = x.shape[3], oh = out.shape[2], ow = out.shape[3]
    cdef int groups = wp.shape[0], cig = x.shape[1] // groups
    cdef long HW = <long>H * W, P = <long>oh * ow
    cdef long xs = <long>x.shape[1] * HW, ys = <long>out.shape[1] * P
    cdef int c
    cdef char *ws = ws_base(workspace, nt * buf_bytes)
    cdef const floating* bp = &b[0] if has_bias else NULL
    if n == 0:
        return
    for c in prange(nt, nogil=True, schedule="static", num_threads=nt):
        if floating is float:
            if transposed:
                fc_pwt_thread_f32(c, nt, groups, n, cog, cig, &x[0, 0, 0, 0], xs, HW, W, ow, P, sh, sw, &wp[0, 0],
                                  wp.shape[1], bp, &out[0, 0, 0, 0], ys, mrt, <float*>(ws + c * buf_bytes))
            else:
                fc_pw_thread_f32(c, nt, groups, n, cog, cig, &x[0, 0, 0, 0], xs, HW, W, ow, P, sh, sw, &wp[0, 0],
                                 wp.shape[1], bp, &out[0, 0, 0, 0], ys, nc, mstep, <float*>(ws + c * buf_bytes))
        else:
            if transposed:
                fc_pwt_thread_f64(c, nt, groups, n, cog, cig, &x[0, 0, 0, 0], xs, HW, W, ow, P, sh, sw, &wp[0, 0],
                                  wp.shape[1], bp, &out[0, 0, 0, 0], ys, mrt, <double*>(ws + c * buf_bytes))
            else:
                fc_pw_thread_f64(c, nt, groups, n, cog, cig, &x[0, 0, 0, 0], xs, HW, W, ow, P, sh, sw, &wp[0, 0],
                                 wp.shape[1], bp, &out[0, 0, 0, 0], ys, nc, mstep, <double*>(ws + c * buf_bytes))


_warm_at_import()
