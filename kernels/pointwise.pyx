# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""1x1 (pointwise) convolution (Cython + OpenMP): a GEMM on NCHW memory, on the shared micro-kernel
(gemm_ukernel.h) or BLAS, whichever `path` picks for the shape.

Design. With a 1x1 kernel and no padding, ``out[n, g] = W[g] @ x[n, g]`` where each image's
channels are a row-major ``C_in_g × H·W`` matrix (strided layers read every sh-th row and sw-th
column of it). Three GEMMs compute it (gemm_pw_impl.h for the first two):

* ``packed``: output channels × pixels. W is packed once in `prepare` as [⌈C_out_g/8⌉][C_in_g][8]
  panels; the n·H_out·W_out output pixels of all images form one column space (a batch of small
  maps fills whole panels), cut into chunks whose packed input (C_in_g × nc, ≤ PACK_BYTES) stays
  in L2 while W's panels stream past once; 8×48 tiles (8×24 float64) over the whole K, bias as
  the accumulators' initial value, written straight into out (a panel across images through a
  tile buffer). Tasks are (group, chunk, row block): with fewer than 2 chunks per thread the
  output channels are split too, so both threads work, each on its half of W, even at batch 1.
* ``transposed``: pixels × output channels, for few pixels over the batch (SE and
  classifier-like 1x1 maps, 7x7 maps at batch 1: `path`). Wᵀ
  packed as [⌈C_out_g/32⌉][C_in_g][32] panels split over the threads, the pixels broadcast from
  8-row tiles, the rows left over on a 1-, 4- or 8-row tile (49 pixels: 6 × 8 + 1; a single
  pixel is a GEMV on the 1×32 tile instead of 1 useful column in 16), K in blocks of 256, the
  tiles stored transposed (+ bias) into out. Where the batch decides between the two (small
  maps), `prepare` packs both W and Wᵀ: a layer's plan runs every batch size.
* ``blas``: numpy's OpenBLAS (gemm_blas.pxi) straight on the arrays as they lie: the
  n·groups·H·W output columns cut into one contiguous chunk per thread, one single-threaded
  GEMM per (image, group) piece, bias written first (beta = 1); strided layers gather each
  tile's pixels into the workspace first. Builds without 64-byte vector registers use it for
  every shape (the 8×48 tile needs 32 of them).

A call below SERIAL_FLOPS runs on one thread (waking the team costs more than it saves).

Measured (this 2-core Zen 4, shared with other jobs, so 1 thread and thread CPU time, medians of
3 alternating rounds; the 1x1 layers of resnet50, mobilenetv2 and efficientnetb0 at batch 1 and
8, see the helper report): the packed GEMM takes 0.9-1.1× the time of numpy's own SGEMM of the
same M, N, K (no bias; strided layers up to 1.2×, the gather) and of the BLAS path on large maps,
and beats the BLAS path by up to 1.4×
on deep layers on small maps (8×512×7×7→2048: 7.8 vs 10.9 ms, 1×1024×14×14→512: 2.0 vs 2.2 ms);
the transposed one wins on 1x1 maps (1×2048×1×1→1000: 0.10 vs 0.64 ms packed, 0.44 ms BLAS;
8×2048×1×1→1000: 0.32 vs 3.9 ms BLAS). A few shallow-output layers on large maps run 5-15%
slower than BLAS (8×32×112×112→16), within the noise of the others; `path` keeps one rule.
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
                           long ys, float* buf)
    void fc_pwt_thread_f64(int c, int nt, int groups, int n, int M, int K, const double* x, long xs, long HW,
                           int W, int OW, long P, int sh, int sw, const double* wt, long wts, const double* bias,
                           double* y, long ys, double* buf)

import numpy as np

from fastconv import contract

include "_shared.pxi"
include "gemm_blas.pxi"

PACK_BYTES = 512 * 1024  # packed columns per thread (C_in_g x nc), in L2 beside W's panels
IMPLS = ("auto", "packed", "transposed", "blas")
TRANSPOSED_MAX_PIXELS = 64  # measured, see `path`
# Deep layers on few pixels (too many for the transposed GEMM) run on BLAS: 2 threads, interleaved
# medians, 14x14 maps at batch 1, packed / BLAS time: 1024->256 1.16, 1024->512 1.13, 672->112
# 1.08, 576->96 1.11; from 28x28 maps (784 pixels) no layer from 512 channels lost to BLAS by
# more than 1%, and below 512 channels the packed GEMM won or tied on 14x14 maps too.
BLAS_MIN_K = 512
BLAS_MAX_PIXELS = 256
SERIAL_FLOPS = 1 << 20  # below this a call runs on one thread
TILE_BYTES = 512 * 1024  # strided: gathered pixels per thread (C_in_g x cols), like im2col's tiles
MIN_COLS = 128


def supports(p, **options) -> str | None:
    why = contract.refuse(p, epilogue=("bias",), options=options, takes=("impl",))
    if why is not None:
        return why
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


def _column_fill(J: int, nr: int) -> float:
    """The packed GEMM's useful share of the columns it computes for J columns: whole NR-column
    panels, then the last panel's vectors (16 floats / 8 doubles each)."""
    vl = nr // 3
    return J / (J // nr * nr + -(-(J % nr) // vl) * vl)


def path(p, impl="auto") -> str:
    """Which GEMM runs ``p``: 'packed' (micro-kernel, output channels x pixels), 'transposed'
    (micro-kernel, pixels x output channels: few pixels) or 'blas'. ``impl`` other than 'auto'
    forces one (the tests run each); 'auto' takes the micro-kernel where the wide vectors were
    compiled in (gemm_ukernel.h): transposed for at most TRANSPOSED_MAX_PIXELS pixels over the
    batch (their packed input within PACK_BYTES) that would leave more than a tenth of the packed
    GEMM's columns empty; BLAS for deep layers (BLAS_MIN_K input channels) on at most
    BLAS_MAX_PIXELS pixels; else packed. Measured, 1 thread: 7x7 maps at batch 1 (49 of 64 columns)
    2048→512 0.88×, 512→2048 0.88×, 320→1280 0.91× the packed GEMM's time, 1152→192 0.95×; 4x4
    maps (16 of 16) 1.07×; 1x1 and 2x2 maps 0.17-0.5×."""
    if impl != "auto":
        return impl
    if not FC_WIDE_VECTORS:
        return "blas"
    J = max(1, p.n) * p.out_h * p.out_w
    if _transposed_pays(p, J):
        return "transposed"
    if p.c_in_per_group >= BLAS_MIN_K and J <= BLAS_MAX_PIXELS:
        return "blas"
    return "packed"


def _transposed_pays(p, J: int) -> bool:
    """`path`'s choice for ``J`` pixels over the batch of layer ``p`` (True: transposed)."""
    return (
        J <= TRANSPOSED_MAX_PIXELS
        and (J + 7) * p.c_in_per_group * p.itemsize <= PACK_BYTES
        and _column_fill(J, _nr(p.itemsize)) < 0.9
    )


def _threads(p, nthreads: int) -> int:
    """Threads a call runs on: one below SERIAL_FLOPS (waking the team costs more than it saves)."""
    flops = 2 * p.n * p.out_h * p.out_w * p.c_in_per_group * p.c_out
    return 1 if flops < SERIAL_FLOPS else nthreads


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
        return ws_round(rows * 8) + ws_round(rows * (p.c_in_per_group + FC_PWT_NR_F32) * p.itemsize)
    if p.stride == (1, 1):
        return 0  # the GEMMs read x and write out in place
    return ws_round(p.c_in_per_group * tile_cols(p, nthreads) * p.itemsize)


def workspace_bytes(p, nthreads, impl="auto", **options) -> int:
    bb = _buf_bytes(p, nthreads, path(p, impl))
    return nthreads * bb + WS_ALIGN - 1 if bb else 0


def _maybe_transposed(p, impl) -> bool:
    """Whether `path` can pick the transposed GEMM for ``p`` at some batch size (prepared weights
    run every batch: `fastconv.plan`)."""
    if impl != "auto":
        return impl == "transposed"
    if not FC_WIDE_VECTORS:
        return False
    # (the pixel count alone decides, so this asks for each batch that keeps it in range; building
    # a params object per batch size cost 0.3 ms of every one-shot fastconv.conv2d)
    hw = p.out_h * p.out_w
    return any(_transposed_pays(p, n * hw) for n in range(1, TRANSPOSED_MAX_PIXELS // max(1, hw) + 1))


def prepare(w, b, p, impl="auto", **options):
    # W[g] (C_out_g × C_in_g, row-major) is already the layout BLAS reads (see gemm_blas.pxi);
    # the micro-kernel GEMMs get it in panels: W for the packed one, Wᵀ for the transposed one
    # (both where the batch decides between them: small maps).
    wm = np.ascontiguousarray(w.reshape(p.groups, p.c_out_per_group, p.c_in_per_group))
    bias = None if b is None else np.ascontiguousarray(b)
    packs = {"blas": wm}  # BLAS reads W as it lies (a batch may pick it: `path`)
    if impl in ("auto", "packed") and FC_WIDE_VECTORS:
        packs["packed"] = _pack_w(wm, False)
    if _maybe_transposed(p, impl):
        packs["transposed"] = _pack_w(wm, True)
    return packs, bias


def run(x, packed, p, out, workspace, nthreads, impl="auto", **options) -> None:
    packs, bias = packed
    kind = path(p, impl)
    if kind != "blas":
        nt = _threads(p, nthreads)
        team(nt)
        wp = packs[kind]
        b = bias if bias is not None else wp[0, :1]  # placeholder, never read
        nc, mstep = packed_geometry(p, nt) if kind == "packed" else (0, 0)
        _pointwise_packed(x, wp, b, out, workspace, _buf_bytes(p, nt, kind), bias is not None, p.c_out_per_group,
                          p.stride[0], p.stride[1], kind == "transposed", nc, mstep, nt)
        return
    wm = packs["blas"]
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
                      bint has_bias, int cog, int sh, int sw, bint transposed, long nc, int mstep, int nt):
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
                                  wp.shape[1], bp, &out[0, 0, 0, 0], ys, <float*>(ws + c * buf_bytes))
            else:
                fc_pw_thread_f32(c, nt, groups, n, cog, cig, &x[0, 0, 0, 0], xs, HW, W, ow, P, sh, sw, &wp[0, 0],
                                 wp.shape[1], bp, &out[0, 0, 0, 0], ys, nc, mstep, <float*>(ws + c * buf_bytes))
        else:
            if transposed:
                fc_pwt_thread_f64(c, nt, groups, n, cog, cig, &x[0, 0, 0, 0], xs, HW, W, ow, P, sh, sw, &wp[0, 0],
                                  wp.shape[1], bp, &out[0, 0, 0, 0], ys, <double*>(ws + c * buf_bytes))
            else:
                fc_pw_thread_f64(c, nt, groups, n, cog, cig, &x[0, 0, 0, 0], xs, HW, W, ow, P, sh, sw, &wp[0, 0],
                                 wp.shape[1], bp, &out[0, 0, 0, 0], ys, nc, mstep, <double*>(ws + c * buf_bytes))


_warm_at_import()
