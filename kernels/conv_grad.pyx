# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""conv2d's gradients, compiled (Cython + OpenMP around the C cores of ``conv_grad_impl.h``):
the weight gradient (and the bias's) and, for any stride, the input gradient.

Contract (`fastconv.contract`), one module for two passes; the ``pass_`` option names the one an
entry runs (``supports`` refuses every other pass), without it the module runs both:

* ``input_grad``: ``prepare(w, None, p)`` packs Wᵀ; ``run(dy, packed, p, dx, workspace, nthreads)``
  writes dL/dx (``p.input_shape``) from ``dy`` = dL/dy (``p.out_shape``);
* ``weight_grad``: ``prepare(None, None, p)`` is None; ``run(x, None, p, dw, workspace, nthreads,
  grad_output=dy, grad_bias=db)`` writes dL/dw (``p.weight_shape``) from the forward input ``x``
  and ``dy``, and dL/db (``(C_out,)``) into ``grad_bias`` when ``"bias"`` is in ``p.epilogue``.

Every array is C-contiguous NCHW/OIHW of one dtype (float32 or float64), as `fastconv.grad`
validates. Both passes are **deterministic**: every output element is computed by one task in an
order fixed by the problem's shape (chunks and blocks never depend on the number of threads), so
results are bit-identical for any ``nthreads``.

Weight gradient. Per group, dW_g [C_out_g × K] (K = C_in_g·kH·kW, rows r = (ci, u, v)) is
dY_g [C_out_g × N·P] times the unfolded input [K × N·P]ᵀ: a reduction over every output pixel of
the batch. Three paths:

* **direct** (maps of at least WG_BCAST_MAX_P output pixels, finite input): image by image, two
  parallel regions. (1) pack each input channel into *phase planes* (the padded plane split by the
  stride, as the forward ``direct`` kernel does), so that tap (u, v)'s unfolded row is one
  contiguous run of a plane at a constant offset over the "extended" output pixels ``i·Wq + j``
  (``Wq`` ≥ W_out is the phase plane's width; the extra columns are junk), and each grad_output
  plane into the same extended layout with zeros in the junk columns, so they add nothing;
  (2) tasks (group, block of ≤ 64 output channels, block of ≤ 96 rows; at least MIN_TASKS where
  the layer allows, so one image fills the cores) run the "dot" micro-kernel (4 output channels × 6
  rows of vector accumulators along the pixels; 10 vector loads for 24 FMAs per step; lane sums in
  a fixed tree, added in double) over chunks of ≤ WG_CHUNK extended pixels, the threads sweeping
  one WG_SUPER_BYTES slice of grad_output together, into their own block of a double accumulator
  the size of dW. No unfolded matrix is ever written.
* **unfold** (the same maps when the input holds Inf or NaN: the junk columns would multiply zeros
  by them): each task owns its block for the whole batch and unfolds its rows chunk by chunk (real
  pixels only, chunks may span images) into thread buffers, then the same dot kernel.
* **output-stationary** (maps under WG_BCAST_MAX_P pixels, where the dot kernel's chunks are too
  short): grad_output transposed into panels of 8 channels and the unfolded input into column
  panels of 3 vectors, then the "bcast" micro-kernel holds 8 × 48 blocks of dW in registers over
  a round of ≤ WG_CHUNK pixels (images per round fixed by the map); one round writes dW directly,
  several add their blocks into a double accumulator in round order.

Float32 sums are float within a chunk or round (≤ WG_CHUNK pixels) and double across them, so the
error does not grow with the batch.

Input gradient (per group dX_cols [K × P] = W_gᵀ · dY_g, folded back into the input planes).
Three paths, all with tasks that own their input planes (no atomics, fixed order):

* **direct** (maps of at least IG_ROWS_MAX_P output pixels, finite weights): per image, grad_output
  in the extended phase layout (as above); tasks (group, block of input channels) run the "bcast"
  kernel (8 unfolded rows × 3 vectors, Wᵀ packed in ``prepare``) over chunks of extended pixels
  and add each tile row, as whole vectors, into its tap's phase plane at the tap's offset (junk
  columns add zeros), then write the phase planes out into dx;
* **col2im** (the same maps when the weights hold Inf/NaN): tasks (image, group, channel block)
  multiply chunks of copied grad_output rows and fold each unfolded row pixel by pixel;
* **pixel rows** (maps under IG_ROWS_MAX_P pixels): C = dYᵀ · W with rows = the batch's output
  pixels (panels of 8) and columns = a task's channels' (ci, u, v) (blocks of 3 vectors, W packed
  in ``prepare``), each 8 × 48 tile scattered into the task's input planes.

``fastconv.grad`` sends stride-1 layers on maps of at least IG_ROWS_MAX_P pixels to the forward
kernels instead (Winograd etc., fewer multiplies); this kernel runs every layer.

Workspace (``workspace_bytes``): weight gradient — the double accumulator (2× dW in float32), one
image's phase planes and extended grad_output, per-thread row-pointer tables; or the
output-stationary path's packed panels (one round); or the unfold path's per-thread buffers (the
largest of the three is asked for). Input gradient — the extended grad_output of one image and per
thread a tile and the task's phase planes; or per thread a chunk's rows, tile and segment table; or
the transposed grad_output panels of the batch and per-thread tiles and column tables.
"""
from cython.parallel cimport prange, threadid
from cython cimport floating
from libc.string cimport memset, memcpy
from libc.stdint cimport uintptr_t

import numpy as np

from fastconv import contract

cdef extern from "conv_grad_impl.h" nogil:
    int FCG_VL_F, FCG_VL_D, FCG_BR, FCG_BV
    void fcg_dot_block_f(int np_, int nr, long nv, const float *dy, long ldy, const float *const *xs,
                         double *c, long ldc)
    void fcg_dot_block_d(int np_, int nr, long nv, const double *dy, long ldy, const double *const *xs,
                         double *c, long ldc)
    void fcg_bcast_f(long K, const float *a, const float *b, long ldb, float *c, long ldc)
    void fcg_bcast_d(long K, const double *a, const double *b, long ldb, double *c, long ldc)
    void fcg_bcast_acc_f(long K, const float *a, const float *b, long ldb, float *c, long ldc, int add)
    void fcg_bcast_acc_d(long K, const double *a, const double *b, long ldb, double *c, long ldc, int add)

WG_CHUNK = 1024    # most pixels per weight-gradient chunk (chunks are equal, whole vectors)
WG_BCAST_MAX_P = 256  # maps of fewer output pixels take the output-stationary GEMM
WG_SUPER_BYTES = 1 << 20  # grad_output bytes the threads sweep together (an L2's share)
WG_MAX_COUT = 64   # output channels per weight-gradient task (at most)
WG_MAX_ROWS = 96   # unfolded rows per weight-gradient task (at most; a multiple of 6)
MIN_TASKS = 16     # tasks the blocks aim for (a property of the layer, not of the threads)
IG_CHUNK = 480     # pixels per input-gradient chunk (a multiple of 48)
IG_ROWS = 64       # unfolded rows an input-gradient task aims for (whole input channels)
IG_ROWS_MAX_P = 256  # maps of fewer output pixels take the input gradient's pixel-rows GEMM
IG_DIRECT = True   # larger maps: phase planes and vectorised folds (False: GEMM + col2im per pixel)
cdef enum:
    ALIGN = 64     # workspace buffers start on cache lines
    IG_KC = 128    # grad_output channels per block of the pixel-rows GEMM (its W block stays in L1)
    PAR_MIN_MACS = 1 << 20  # per-image paths: lighter images run on one thread (_per_image_threads)
PASSES = ("input_grad", "weight_grad")


def supports(p, pass_=None, **opts):
    """None for every valid layer of the passes this entry runs (``pass_``, or both)."""
    return contract.refuse(p, passes=PASSES if pass_ is None else (pass_,), epilogue=("bias",))


# --- blocking: functions of the layer only ------------------------------------------------------
cdef inline Py_ssize_t _rup(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b * b


def _vl(p) -> int:
    return 16 if p.itemsize == 4 else 8


def _pitch(n: int, itemsize: int) -> int:
    """Row pitch (elements) for rows of n elements: whole cache lines, and not a multiple of 4 KiB
    (rows 4 KiB apart would all fall in the same L1 sets)."""
    per_line = ALIGN // itemsize
    pitch = -(-n // per_line) * per_line
    if (pitch * itemsize) % 4096 == 0:
        pitch += per_line
    return pitch


def _equal_chunks(total: int, most: int, unit: int) -> int:
    """The chunk length that splits ``total`` into equal chunks of at most ``most``, in whole units."""
    n = max(1, -(-total // most))
    chunk = -(-total // n)
    return -(-chunk // unit) * unit


def wg_blocks(p):
    """(channels per block, rows per block, unfold-path chunk pixels) of the weight gradient."""
    cog, K = p.c_out_per_group, p.c_in_per_group * p.kh * p.kw
    ncb = -(-cog // WG_MAX_COUT)
    cb = -(-cog // ncb)
    kb = min(K, WG_MAX_ROWS)
    while p.groups * ncb * (-(-K // kb)) < MIN_TASKS and kb > 6:
        kb = max(6, (kb // 2) // 6 * 6)
    if kb < K:
        kb = -(-K // (-(-K // kb)))  # equal blocks
        kb = min(K, -(-kb // 6) * 6)
    npix = max(1, p.n * p.out_h * p.out_w)
    return cb, kb, _equal_chunks(npix, WG_CHUNK, _vl(p))


def wg_phases(p):
    """The phase-plane geometry of the direct path: (Hq, Wq, plane size, row phases, column phases,
    extended length padded, its pitch, its chunk)."""
    (pt, pb, pl, pr), (sh, sw), (dh, dw) = p.pad, p.stride, p.dilation
    Hq, Wq = -(-(p.h + pt + pb) // sh), -(-(p.w + pl + pr) // sw)
    vl = _vl(p)
    ps = _pitch(Hq * Wq + Wq + vl, p.itemsize)
    rph = sorted({(u * dh) % sh for u in range(p.kh)})
    cph = sorted({(v * dw) % sw for v in range(p.kw)})
    L = -(-(p.out_h * Wq) // vl) * vl
    chunk = _equal_chunks(L, WG_CHUNK, vl)
    sup = max(1, WG_SUPER_BYTES // (p.c_out * chunk * p.itemsize)) * chunk
    return Hq, Wq, ps, rph, cph, L, _pitch(L, p.itemsize), chunk, sup


def _wg_direct_bytes(p, nthreads) -> int:
    _, _, ps, rph, cph, _, lp, _, _ = wg_phases(p)
    kb = wg_blocks(p)[1]
    K = p.c_in_per_group * p.kh * p.kw
    return (_rup(p.c_out * K * 8, ALIGN) + _rup(p.c_in * len(rph) * len(cph) * ps * p.itemsize, ALIGN)
            + _rup(p.c_out * lp * p.itemsize, ALIGN) + nthreads * _rup(kb * 8, ALIGN))


def wg_small(p):
    """The output-stationary path's geometry, or None for maps of WG_BCAST_MAX_P pixels or more:
    (panels of 8 output channels per group, column panels of unfolded rows per group, images per
    round)."""
    P = p.out_h * p.out_w
    if P >= WG_BCAST_MAX_P:
        return None
    K = p.c_in_per_group * p.kh * p.kw
    return -(-p.c_out_per_group // FCG_BR), -(-K // (FCG_BV * _vl(p))), max(1, WG_CHUNK // P)


def _wg_small_bytes(p, nthreads) -> int:
    npan, ncol, per_round = wg_small(p)
    npk = max(1, min(p.n, per_round) * p.out_h * p.out_w)
    colw = FCG_BV * _vl(p)
    acc = 0 if p.n <= per_round else p.c_out * p.c_in_per_group * p.kh * p.kw * 8
    return (_rup(p.groups * npan * npk * FCG_BR * p.itemsize, ALIGN)
            + _rup(p.groups * ncol * npk * colw * p.itemsize, ALIGN)
            + nthreads * _rup(FCG_BR * colw * p.itemsize, ALIGN) + acc)


def _wg_thread_bytes(p) -> int:
    """Per thread, unfold path: grad_output rows, unfolded rows, the double block, segments, pointers."""
    cb, kb, chunk = wg_blocks(p)
    pitch = _pitch(chunk, p.itemsize)
    return (_rup(cb * pitch * p.itemsize, ALIGN) + _rup(kb * pitch * p.itemsize, ALIGN)
            + _rup(cb * kb * 8, ALIGN) + _rup(4 * (chunk + 4) * 4, ALIGN) + _rup(kb * 8, ALIGN))


def ig_blocks(p):
    """(input channels per block, chunk pixels) of the input gradient (independent of the batch)."""
    kk = p.kh * p.kw
    cig = p.c_in_per_group
    cib = max(1, min(cig, -(-IG_ROWS // kk)))
    cib = min(cib, max(1, -(-cig // 8)))
    cib = -(-cig // (-(-cig // cib)))  # equal blocks
    P = p.out_h * p.out_w
    per_col = FCG_BV * _vl(p)
    chunk = min(_rup(P, per_col), IG_CHUNK)
    return cib, chunk


def ig_rows(p):
    """The input gradient's pixel-rows path (maps under IG_ROWS_MAX_P pixels), or None: (channels
    per task, column blocks per task). A task's columns are its channels' (ci, u, v), padded to
    whole blocks: the channel count is chosen for the least padding among those leaving at least 4
    tasks and at most 8 blocks."""
    if p.out_h * p.out_w >= IG_ROWS_MAX_P:
        return None
    kk, cig, colw = p.kh * p.kw, p.c_in_per_group, FCG_BV * _vl(p)
    cmax = max(1, min(cig, (8 * colw) // kk))
    if p.groups < 4:
        cmax = max(1, min(cmax, cig // -(-4 // p.groups)))

    def waste(c):
        cols = -(-c * kk // colw) * colw
        return (cols - c * kk) / cols, -c
    best = min(range(1, cmax + 1), key=waste)
    return best, -(-best * kk // colw)


def _igr_bytes(p, nthreads) -> int:
    ncolb = ig_rows(p)[1]
    colw = FCG_BV * _vl(p)
    npan = -(-max(1, p.n * p.out_h * p.out_w) // FCG_BR)
    return (_rup(p.groups * npan * p.c_out_per_group * FCG_BR * p.itemsize, ALIGN)
            + nthreads * (_rup(npan * FCG_BR * colw * p.itemsize, ALIGN) + _rup(3 * ncolb * colw * 4, ALIGN)))


def ig_phases(p):
    """The input gradient's direct path geometry (phase planes, as the weight gradient's):
    (Hq, Wq, plane size, row phases, column phases, extended length padded to column blocks, its pitch,
    chunk)."""
    (pt, pb, pl, pr), (sh, sw), (dh, dw) = p.pad, p.stride, p.dilation
    Hq, Wq = -(-(p.h + pt + pb) // sh), -(-(p.w + pl + pr) // sw)
    colw = FCG_BV * _vl(p)
    ps = _pitch(Hq * Wq + Wq + colw, p.itemsize)
    rph = sorted({(u * dh) % sh for u in range(p.kh)})
    cph = sorted({(v * dw) % sw for v in range(p.kw)})
    L = -(-(p.out_h * Wq) // colw) * colw
    return Hq, Wq, ps, rph, cph, L, _pitch(L, p.itemsize), _equal_chunks(L, IG_CHUNK, colw)


def _igd_bytes(p, nthreads) -> int:
    _, _, ps, rph, cph, _, lp, _ = ig_phases(p)
    cib = ig_blocks(p)[0]
    colw = FCG_BV * _vl(p)
    return (_rup(p.c_out * lp * p.itemsize, ALIGN)
            + nthreads * (_rup(FCG_BR * colw * p.itemsize, ALIGN)
                          + _rup(cib * len(rph) * len(cph) * ps * p.itemsize, ALIGN)))


def _ig_thread_bytes(p) -> int:
    cib, chunk = ig_blocks(p)
    pitch = _pitch(chunk, p.itemsize)
    rows = _rup(cib * p.kh * p.kw, FCG_BR)
    return (_rup(p.c_out_per_group * pitch * p.itemsize, ALIGN) + _rup(rows * pitch * p.itemsize, ALIGN)
            + _rup(4 * (chunk + 4) * 4, ALIGN))


def workspace_bytes(p, nthreads, pass_=None, **opts) -> int:
    """Every byte `run` needs on ``nthreads`` threads, alignment slack included (see the module
    docstring for what they hold)."""
    which = p.pass_ if pass_ is None else pass_
    nthreads = max(1, int(nthreads))
    if which == "weight_grad":
        need = max(_wg_direct_bytes(p, nthreads), nthreads * _wg_thread_bytes(p))
        if wg_small(p) is not None:
            need = max(need, _wg_small_bytes(p, nthreads))
        return need + ALIGN
    if ig_rows(p) is not None:
        return _igr_bytes(p, nthreads) + ALIGN
    return max(nthreads * _ig_thread_bytes(p), _igd_bytes(p, nthreads) + ALIGN) + ALIGN


def prepare(w, b, p, pass_=None, **opts):
    """input_grad: Wᵀ per (group, channel block) in panels [rows/8][C_out_g][8], rows (ci, u, v)
    of the block zero-padded to whole panels. weight_grad: nothing (None)."""
    which = p.pass_ if pass_ is None else pass_
    if which != "input_grad":
        return None
    rows = ig_rows(p)
    if rows is not None:  # W per (group, channel block) in column blocks [block][C_out_g][colw]
        cib, ncolb = rows
        colw, kk, cig, cog = FCG_BV * _vl(p), p.kh * p.kw, p.c_in_per_group, p.c_out_per_group
        ncb = -(-cig // cib)
        w5 = np.asarray(w).reshape(p.groups, cog, cig * kk)
        wq = np.zeros((p.groups, ncb, cog, ncolb * colw), dtype=w.dtype)
        for c in range(ncb):
            lo, hi = c * cib * kk, min(cig, (c + 1) * cib) * kk
            wq[:, c, :, :hi - lo] = w5[:, :, lo:hi]
        return np.ascontiguousarray(wq.reshape(p.groups, ncb, cog, ncolb, colw).transpose(0, 1, 3, 2, 4))
    cib, _ = ig_blocks(p)
    cig, cog, kk = p.c_in_per_group, p.c_out_per_group, p.kh * p.kw
    ncib = -(-cig // cib)
    rows = _rup(cib * kk, FCG_BR)
    wt = np.zeros((p.groups, ncib, rows, cog), dtype=w.dtype)
    w5 = np.asarray(w).reshape(p.groups, cog, cig * kk)  # [g][p][ci·kk + tap]
    for c in range(ncib):
        lo, hi = c * cib * kk, min(cig, (c + 1) * cib) * kk
        wt[:, c, :hi - lo, :] = w5[:, :, lo:hi].transpose(0, 2, 1)
    # [g][c][panel][k][8]
    return np.ascontiguousarray(wt.reshape(p.groups, ncib, rows // FCG_BR, FCG_BR, cog).transpose(0, 1, 2, 4, 3))


def run(x, packed, p, out, workspace, nthreads, grad_output=None, grad_bias=None, pass_=None, **opts):
    which = p.pass_ if pass_ is None else pass_
    nthreads = max(1, int(nthreads))
    need = workspace_bytes(p, nthreads, which)
    ws = np.asarray(workspace)
    if ws.dtype != np.uint8 or ws.ndim != 1 or ws.shape[0] < need:
        raise ValueError(f"workspace must be a 1-D uint8 array of at least {need} bytes")
    if which == "weight_grad":
        if grad_output is None:
            raise ValueError("the weight_grad pass needs grad_output=")
        if "bias" in p.epilogue and grad_bias is None:
            raise ValueError("a layer with a bias needs grad_bias= for its gradient")
        if p.n == 0:
            out[...] = 0
            if grad_bias is not None:
                grad_bias[...] = 0
            return
        dw2 = out.reshape(p.c_out, -1)
        cb, kb, chunk = wg_blocks(p)
        geo = (p.groups, p.kh, p.kw, p.stride[0], p.stride[1], p.pad[0], p.pad[2], p.dilation[0], p.dilation[1])
        small = wg_small(p)
        if small is not None:
            _weight_grad_small(x, grad_output, dw2, ws, *geo, p.out_h, p.out_w, *small, nthreads)
        elif _all_finite(x, nthreads):
            Hq, Wq, ps, rph, cph, L, lp, ch, sup = wg_phases(p)
            rslot = np.full(p.stride[0], -1, dtype=np.intc)
            cslot = np.full(p.stride[1], -1, dtype=np.intc)
            rslot[rph] = np.arange(len(rph))
            cslot[cph] = np.arange(len(cph))
            _weight_grad_direct(x, grad_output, dw2, ws, *geo, cb, kb, Hq, Wq, ps, rslot, cslot, len(rph), len(cph),
                                L, lp, ch, sup, nthreads)
        else:
            _weight_grad_unfold(x, grad_output, dw2, ws, *geo, p.out_h, p.out_w, cb, kb, chunk,
                                _pitch(chunk, p.itemsize), _wg_thread_bytes(p), nthreads)
        if "bias" in p.epilogue:
            bias_grad(grad_output, grad_bias, nthreads)
        return
    if p.n == 0:
        return
    rows = ig_rows(p)
    if rows is not None:
        _input_grad_rows(x, packed, out, ws, p.groups, p.kh, p.kw, p.stride[0], p.stride[1], p.pad[0], p.pad[2],
                         p.dilation[0], p.dilation[1], rows[0], nthreads)
        return
    cib, chunk = ig_blocks(p)
    if IG_DIRECT and _all_finite(packed, nthreads):
        Hq, Wq, ps, rph, cph, L, lp, ch = ig_phases(p)
        rslot = np.full(p.stride[0], -1, dtype=np.intc)
        cslot = np.full(p.stride[1], -1, dtype=np.intc)
        rslot[rph] = np.arange(len(rph))
        cslot[cph] = np.arange(len(cph))
        _input_grad_direct(x, packed, out, ws, p.groups, p.kh, p.kw, p.stride[0], p.stride[1], p.pad[0], p.pad[2],
                           p.dilation[0], p.dilation[1], cib, Hq, Wq, ps, rslot, cslot, len(rph), len(cph), L, lp, ch,
                           nthreads)
        return
    _input_grad(x, packed, out, ws, p.groups, p.kh, p.kw, p.stride[0], p.stride[1], p.pad[0], p.pad[2],
                p.dilation[0], p.dilation[1], cib, chunk, _pitch(chunk, p.itemsize), _ig_thread_bytes(p),
                nthreads)


ctypedef fused ubits:
    unsigned int
    unsigned long long


def _all_finite(x, int nthreads) -> bool:
    """Whether every element of the float32/float64 array ``x`` is finite: no exponent field all
    ones (integer tests on the bit patterns, which vectorise)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    if flat.dtype == np.float32:
        return _no_all_ones(flat.view(np.uint32), <unsigned int>0x7f800000, nthreads)
    return _no_all_ones(flat.view(np.uint64), <unsigned long long>0x7ff0000000000000, nthreads)


def _no_all_ones(const ubits[::1] b, ubits mask, int nthreads) -> bool:
    cdef Py_ssize_t n = b.shape[0], c, i, i0, i1
    cdef Py_ssize_t nchunk = max(1, min(<Py_ssize_t>nthreads * 4, n // 65536))
    cdef int bad = 0, f
    cdef int nt = nthreads if nchunk > 1 else 1
    for c in prange(nchunk, nogil=True, schedule="static", num_threads=nt):
        i0 = n * c // nchunk
        i1 = n * (c + 1) // nchunk
        f = 0
        for i in range(i0, i1):
            f = f | ((b[i] & mask) == mask)
        if f:
            bad += 1
    return bad == 0


cdef inline void _copy(floating *dst, const floating *src, Py_ssize_t n) noexcept nogil:
    """dst[:n] = src[:n] as a plain loop (gcc vectorises it): rows here are short (a plane's width),
    where a libc memcpy call per row cost more than the copy (25% of a depthwise layer's weight
    gradient, perf)."""
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = src[i]


cdef inline int _per_image_threads(int nthreads, Py_ssize_t macs) noexcept nogil:
    """Threads for the paths that open parallel regions image by image: one when an image holds
    under PAR_MIN_MACS multiply-adds (LeNet's first layer: 0.17M), where the regions' wake-ups and
    joins cost more than the work they share (and a join waits out a whole time slice when the
    machine is oversubscribed). Only the thread count changes, never the blocking: results are
    the same."""
    return nthreads if macs >= PAR_MIN_MACS else 1


cdef inline char *_aligned(const unsigned char[::1] ws) noexcept nogil:
    return <char *>((<uintptr_t>&ws[0] + ALIGN - 1) & ~(<uintptr_t>ALIGN - 1))


# --- segments: a run of output pixels cut into pieces that stay in one output row ------------------
cdef int _segments(int *seg, Py_ssize_t t0, Py_ssize_t t1, int P, int ow) noexcept nogil:
    """Global output pixels [t0, t1) (t = n·P + i·ow + j) → segments (n, i, ja, jb); returns their
    count. Segment s covers chunk columns from the running sum of the previous lengths."""
    cdef int nseg = 0, n, i, ja, jb, rest
    cdef Py_ssize_t t = t0
    while t < t1:
        n = <int>(t // P)
        rest = <int>(t - <Py_ssize_t>n * P)
        i = rest // ow
        ja = rest - i * ow
        jb = <int>min(<Py_ssize_t>ow, ja + (t1 - t))
        seg[4 * nseg] = n
        seg[4 * nseg + 1] = i
        seg[4 * nseg + 2] = ja
        seg[4 * nseg + 3] = jb
        nseg += 1
        t += jb - ja
    return nseg


cdef inline void _col_range(int c0, int sw, int W, int *lo, int *hi) noexcept nogil:
    """The output columns j with 0 <= j·sw + c0 < W: [lo, hi)."""
    lo[0] = 0 if c0 >= 0 else (-c0 + sw - 1) // sw
    hi[0] = (W - 1 - c0) // sw + 1 if W - 1 - c0 >= 0 else 0


# --- weight gradient ------------------------------------------------------------------------------
cdef void _unfold_rows(const floating *x, floating *xr, int pitch, int r0, int nr, const int *seg, int nseg,
                       int m, int mv, int C, int H, int W, int g, int cig, int kh, int kw, int sh, int sw,
                       int pt, int pl, int dh, int dw_) noexcept nogil:
    """xr[r, col] = the input pixel unfolded row r0 + r = (ci, u, v) meets at the chunk's col-th output
    pixel (0 in the padding), zeros from m to mv."""
    cdef int kk = kh * kw, r, ci, u, v, c0, lo, hi, col, s, n, i, ja, jb, h, j, a, e
    cdef const floating *src
    cdef floating *d
    for r in range(nr):
        ci = (r0 + r) // kk
        u = ((r0 + r) % kk) // kw
        v = (r0 + r) % kw
        c0 = v * dw_ - pl
        _col_range(c0, sw, W, &lo, &hi)
        d = xr + <Py_ssize_t>r * pitch
        col = 0
        for s in range(nseg):
            n = seg[4 * s]
            i = seg[4 * s + 1]
            ja = seg[4 * s + 2]
            jb = seg[4 * s + 3]
            h = i * sh + u * dh - pt
            if h < 0 or h >= H:
                memset(d + col, 0, (jb - ja) * sizeof(floating))
            else:
                src = x + ((<Py_ssize_t>n * C + g * cig + ci) * H + h) * W + c0
                a = max(ja, lo)
                e = min(jb, hi)
                if a > ja:
                    memset(d + col, 0, (min(a, jb) - ja) * sizeof(floating))
                if e > a:
                    if sw == 1:
                        _copy(d + col + a - ja, src + a, e - a)
                    else:
                        for j in range(a, e):
                            d[col - ja + j] = src[j * sw]
                if jb > max(e, a):
                    memset(d + col + max(e, a) - ja, 0, (jb - max(e, a)) * sizeof(floating))
            col += jb - ja
        memset(d + m, 0, (mv - m) * sizeof(floating))


# --- weight gradient, direct path (finite input) ---------------------------------------------------
cdef void _wg_pack(const floating *x, const floating *dy, floating *xq, floating *dye, int unit, int n,
                   int C, int H, int W, int CO, int OH, int OW, int sh, int sw, int pt, int pl, int Hq, int Wq,
                   Py_ssize_t ps, Py_ssize_t lp, const int *rslot, const int *cslot, int nrs, int ncs) noexcept nogil:
    """unit < C: input channel ``unit`` of image n into its used phase planes (zeros in the padding
    and past the plane); else grad_output channel ``unit - C`` into the extended layout."""
    cdef int c, a, b, qi, qj, h, lo, hi, i
    cdef floating *plane
    cdef floating *row
    cdef const floating *src
    if unit < C:
        c = unit
        for a in range(sh):
            if rslot[a] < 0:
                continue
            for b in range(sw):
                if cslot[b] < 0:
                    continue
                plane = xq + ((<Py_ssize_t>c * nrs + rslot[a]) * ncs + cslot[b]) * ps
                _col_range(b - pl, sw, W, &lo, &hi)
                hi = min(hi, Wq)
                lo = min(lo, hi)
                for qi in range(Hq):
                    row = plane + <Py_ssize_t>qi * Wq
                    h = qi * sh + a - pt
                    if h < 0 or h >= H:
                        memset(row, 0, Wq * sizeof(floating))
                        continue
                    src = x + ((<Py_ssize_t>n * C + c) * H + h) * W + b - pl
                    memset(row, 0, lo * sizeof(floating))
                    if sw == 1:
                        _copy(row + lo, src + lo, hi - lo)
                    else:
                        for qj in range(lo, hi):
                            row[qj] = src[qj * sw]
                    memset(row + hi, 0, (Wq - hi) * sizeof(floating))
                memset(plane + <Py_ssize_t>Hq * Wq, 0, (ps - <Py_ssize_t>Hq * Wq) * sizeof(floating))
    else:
        c = unit - C
        row = dye + <Py_ssize_t>c * lp
        src = dy + (<Py_ssize_t>n * CO + c) * OH * OW
        for i in range(OH):
            _copy(row + <Py_ssize_t>i * Wq, src + <Py_ssize_t>i * OW, OW)
            memset(row + <Py_ssize_t>i * Wq + OW, 0, (Wq - OW) * sizeof(floating))
        memset(row + <Py_ssize_t>OH * Wq, 0, (lp - <Py_ssize_t>OH * Wq) * sizeof(floating))


cdef void _wg_direct_task(const floating *xq, const floating *dye, double *acc, const floating **xs, int task,
                          int C, int CO, int groups, int kh, int kw, int sh, int sw, int dh, int dw_, int Wq,
                          Py_ssize_t ps, Py_ssize_t lp, const int *rslot, const int *cslot, int nrs, int ncs,
                          int cb, int kb, int ncb, int nkb, int s0, int s1, int chunk) noexcept nogil:
    cdef int cig = C // groups, cog = CO // groups, kk = kh * kw, K = cig * kk
    cdef int g = task // (ncb * nkb), rest = task % (ncb * nkb)
    cdef int p0 = (rest // nkb) * cb, r0 = (rest % nkb) * kb
    cdef int np_ = min(cb, cog - p0), nr = min(kb, K - r0)
    cdef int VL = 16 if floating is float else 8
    cdef int t0, t1, r, R, ci, u, v
    cdef Py_ssize_t off
    t0 = s0
    while t0 < s1:
        t1 = min(s1, t0 + chunk)
        for r in range(nr):
            R = r0 + r
            ci = R // kk
            u = (R % kk) // kw
            v = R % kw
            off = ((<Py_ssize_t>(g * cig + ci) * nrs + rslot[(u * dh) % sh]) * ncs + cslot[(v * dw_) % sw]) * ps
            xs[r] = xq + off + ((u * dh) // sh) * Wq + (v * dw_) // sw + t0
        if floating is float:
            fcg_dot_block_f(np_, nr, (t1 - t0) // VL, dye + (<Py_ssize_t>g * cog + p0) * lp + t0, lp, xs,
                            acc + (<Py_ssize_t>g * cog + p0) * K + r0, K)
        else:
            fcg_dot_block_d(np_, nr, (t1 - t0) // VL, dye + (<Py_ssize_t>g * cog + p0) * lp + t0, lp, xs,
                            acc + (<Py_ssize_t>g * cog + p0) * K + r0, K)
        t0 = t1


def _weight_grad_direct(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy, floating[:, ::1] dw,
                        const unsigned char[::1] ws, int groups, int kh, int kw, int sh, int sw, int pt, int pl,
                        int dh, int dw_, int cb, int kb, int Hq, int Wq, Py_ssize_t ps, const int[::1] rslot,
                        const int[::1] cslot, int nrs, int ncs, int L, Py_ssize_t lp, int chunk, int sup,
                        int nthreads):
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int CO = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef int cog = CO // groups, K = (C // groups) * kh * kw
    cdef int ncb = (cog + cb - 1) // cb, nkb = (K + kb - 1) // kb
    cdef int ntasks = groups * ncb * nkb, task, unit, n, s0, s1
    cdef Py_ssize_t i, total = <Py_ssize_t>CO * K
    cdef char *base = _aligned(ws)
    cdef double *acc = <double *>base
    cdef floating *xq = <floating *>(base + _rup(total * 8, ALIGN))
    cdef floating *dye = <floating *>(<char *>xq + _rup(<Py_ssize_t>C * nrs * ncs * ps * sizeof(floating), ALIGN))
    cdef char *ptrs = <char *>dye + _rup(<Py_ssize_t>CO * lp * sizeof(floating), ALIGN)
    cdef Py_ssize_t ptr_bytes = _rup(kb * 8, ALIGN)
    cdef int nt = _per_image_threads(nthreads, <Py_ssize_t>CO * K * L)
    cdef int ntp = min(nt, C + CO)
    nt = min(nt, ntasks)
    memset(acc, 0, total * sizeof(double))
    for n in range(N):
        for unit in prange(C + CO, nogil=True, schedule="dynamic", num_threads=ntp):
            _wg_pack(&x[0, 0, 0, 0], &dy[0, 0, 0, 0], xq, dye, unit, n, C, H, W, CO, OH, OW, sh, sw, pt, pl,
                     Hq, Wq, ps, lp, &rslot[0], &cslot[0], nrs, ncs)
        s0 = 0
        while s0 < L:  # super-chunks: the threads sweep one L2-sized slice of grad_output together
            s1 = min(L, s0 + sup)
            for task in prange(ntasks, nogil=True, schedule="dynamic", num_threads=nt):
                _wg_direct_task(xq, dye, acc, <const floating **>(ptrs + threadid() * ptr_bytes), task, C, CO,
                                groups, kh, kw, sh, sw, dh, dw_, Wq, ps, lp, &rslot[0], &cslot[0], nrs, ncs, cb, kb,
                                ncb, nkb, s0, s1, chunk)
            s0 = s1
    cdef floating *o = &dw[0, 0]
    for i in range(total):
        o[i] = <floating>acc[i]


# --- weight gradient, output-stationary path (maps under WG_BCAST_MAX_P pixels) -------------------
cdef void _wg_small_pack(const floating *x, const floating *dy, floating *A, floating *B, int unit, int n0,
                         int nimg, int C, int H, int W, int CO, int OH, int OW, int groups, int kh, int kw, int sh,
                         int sw, int pt, int pl, int dh, int dw_, int npan, int ncol, int colw) noexcept nogil:
    """Units (group g, image n0 + li of the round, column panel q) first: rows q·colw … of the
    unfolded input as [column panel][pixel][colw] (rows past K zero); then units (g, li): grad_output
    as [panel][pixel][8 channels]. Every unit writes its own part."""
    cdef int cig = C // groups, cog = CO // groups, kk = kh * kw, K = cig * kk
    cdef int P = OH * OW, RP = nimg * P, pan, r, t, ch, j, ci, i, jj, h, w, g, li, n, q, c, nc, h0, w0
    cdef Py_ssize_t off[64]  # per column of the panel (colw <= 48): tap offset in the image, tap row/col
    cdef int uo[64]
    cdef int vo[64]
    cdef bint inside
    cdef floating *a
    cdef floating *b
    cdef const floating *src
    if unit < groups * nimg * ncol:
        q = unit % ncol
        li = (unit // ncol) % nimg
        g = unit // (ncol * nimg)
        n = n0 + li
        nc = min(colw, K - q * colw)
        for c in range(nc):
            j = q * colw + c
            ci = j // kk
            uo[c] = ((j % kk) // kw) * dh
            vo[c] = (j % kw) * dw_
            off[c] = (<Py_ssize_t>ci * H + uo[c]) * W + vo[c]
        src = x + (<Py_ssize_t>n * C + g * cig) * H * W
        b = B + ((<Py_ssize_t>g * ncol + q) * RP + <Py_ssize_t>li * P) * colw
        # pixel by pixel, the panel's columns contiguous (a row of the panel is one pixel's taps)
        for i in range(OH):
            h0 = i * sh - pt
            for jj in range(OW):
                w0 = jj * sw - pl
                inside = h0 >= 0 and h0 + (kh - 1) * dh < H and w0 >= 0 and w0 + (kw - 1) * dw_ < W
                if inside:
                    for c in range(nc):
                        b[c] = src[off[c] + <Py_ssize_t>h0 * W + w0]
                else:
                    for c in range(nc):
                        h = h0 + uo[c]
                        w = w0 + vo[c]
                        if h >= 0 and h < H and w >= 0 and w < W:
                            b[c] = src[off[c] + <Py_ssize_t>h0 * W + w0]
                        else:
                            b[c] = 0
                for c in range(nc, colw):  # zero columns past K in the last panel
                    b[c] = 0
                b += colw
        return
    unit -= groups * nimg * ncol
    li = unit % nimg
    g = unit // nimg
    n = n0 + li
    for pan in range(npan):
        a = A + ((<Py_ssize_t>g * npan + pan) * RP + <Py_ssize_t>li * P) * FCG_BR
        for r in range(FCG_BR):
            ch = pan * FCG_BR + r
            if ch < cog:
                src = dy + (<Py_ssize_t>n * CO + g * cog + ch) * P
                for t in range(P):
                    a[<Py_ssize_t>t * FCG_BR + r] = src[t]
            else:
                for t in range(P):
                    a[<Py_ssize_t>t * FCG_BR + r] = 0


def _weight_grad_small(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy, floating[:, ::1] dw,
                       const unsigned char[::1] ws, int groups, int kh, int kw, int sh, int sw, int pt, int pl,
                       int dh, int dw_, int OH, int OW, int npan, int ncol, int per_round, int nthreads):
    """dW_g [C_out_g × K] = dY_g [C_out_g × N·P] · unfolded [N·P × K] with 8 × 3-vector blocks of dW
    held in registers over a round's pixels (no lane sums). Rounds of ``per_round`` images: one
    round writes dW straight from the registers; several add each round's block into a double
    accumulator, in round order."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], CO = dy.shape[1]
    cdef int cog = CO // groups, K = (C // groups) * kh * kw, P = OH * OW
    cdef int VL = 16 if floating is float else 8, colw = FCG_BV * VL
    cdef int ntasks = groups * ncol, task, unit, g, q, pan, r, j, nr, nc, n0, nimg, RP
    cdef bint one = N <= per_round
    cdef char *base = _aligned(ws)
    cdef Py_ssize_t RPmax = <Py_ssize_t>min(N, per_round) * P, total = <Py_ssize_t>CO * K, i
    cdef floating *A = <floating *>base
    cdef floating *B = <floating *>(base + _rup(<Py_ssize_t>groups * npan * RPmax * FCG_BR * sizeof(floating), ALIGN))
    cdef char *tiles = <char *>B + _rup(<Py_ssize_t>groups * ncol * RPmax * colw * sizeof(floating), ALIGN)
    cdef Py_ssize_t tile_bytes = _rup(FCG_BR * colw * sizeof(floating), ALIGN)
    cdef double *acc = <double *>(tiles + nthreads * tile_bytes)
    cdef floating *tile
    cdef floating *o = &dw[0, 0]
    cdef floating *c
    cdef Py_ssize_t at
    if not one:
        memset(acc, 0, total * sizeof(double))
    n0 = 0
    while n0 < N:
        nimg = min(per_round, N - n0)
        RP = nimg * P
        for unit in prange(groups * nimg * (ncol + 1), nogil=True, schedule="dynamic",
                           num_threads=min(nthreads, groups * nimg * (ncol + 1))):
            _wg_small_pack(&x[0, 0, 0, 0], &dy[0, 0, 0, 0], A, B, unit, n0, nimg, C, H, W, CO, OH, OW, groups, kh,
                           kw, sh, sw, pt, pl, dh, dw_, npan, ncol, colw)
        for task in prange(ntasks, nogil=True, schedule="dynamic", num_threads=min(nthreads, ntasks)):
            q = task % ncol
            g = task // ncol
            tile = <floating *>(tiles + threadid() * tile_bytes)
            nc = min(colw, K - q * colw)
            for pan in range(npan):
                nr = min(FCG_BR, cog - pan * FCG_BR)
                c = o + (<Py_ssize_t>g * cog + pan * FCG_BR) * K + q * colw
                if nr < FCG_BR or nc < colw or not one:
                    c = tile
                if floating is float:
                    fcg_bcast_f(RP, A + (<Py_ssize_t>g * npan + pan) * RP * FCG_BR,
                                B + (<Py_ssize_t>g * ncol + q) * RP * colw, colw, c, colw if c == tile else K)
                else:
                    fcg_bcast_d(RP, A + (<Py_ssize_t>g * npan + pan) * RP * FCG_BR,
                                B + (<Py_ssize_t>g * ncol + q) * RP * colw, colw, c, colw if c == tile else K)
                if c == tile:
                    for r in range(nr):
                        at = (<Py_ssize_t>g * cog + pan * FCG_BR + r) * K + q * colw
                        if one:
                            for j in range(nc):
                                o[at + j] = tile[r * colw + j]
                        else:
                            for j in range(nc):
                                acc[at + j] += tile[r * colw + j]
        n0 += nimg
    if not one:
        for i in range(total):
            o[i] = <floating>acc[i]


# --- weight gradient, unfold path (an input holding Inf or NaN) ---------------------------------------
cdef void _wg_task(const floating *x, const floating *dy, floating *dw, char *buf, int task,
                   int N, int C, int H, int W, int CO, int OH, int OW, int groups, int kh, int kw,
                   int sh, int sw, int pt, int pl, int dh, int dw_, int cb, int kb, int chunk,
                   int pitch, int ncb, int nkb) noexcept nogil:
    """One (group, channel block, row block) over every chunk of the batch's output pixels in
    order (chunks may span images): grad_output rows copied and input rows unfolded (real pixels
    only, zero-padded to whole vectors) into this thread's buffers, then the dot kernel."""
    cdef int cig = C // groups, cog = CO // groups, kk = kh * kw, K = cig * kk
    cdef int g = task // (ncb * nkb), rest = task % (ncb * nkb)
    cdef int p0 = (rest // nkb) * cb, r0 = (rest % nkb) * kb
    cdef int np_ = min(cb, cog - p0), nr = min(kb, K - r0)
    cdef int P = OH * OW, VL = 16 if floating is float else 8
    cdef Py_ssize_t NP = <Py_ssize_t>N * P, t0, t1, off
    cdef floating *dyr = <floating *>buf
    cdef floating *xr = <floating *>(buf + _rup(cb * pitch * sizeof(floating), ALIGN))
    cdef double *acc = <double *>(<char *>xr + _rup(kb * pitch * sizeof(floating), ALIGN))
    cdef int *seg = <int *>(<char *>acc + _rup(cb * kb * 8, ALIGN))
    cdef const floating **xs = <const floating **>(<char *>seg + _rup(4 * (chunk + 4) * 4, ALIGN))
    cdef int nseg, s, q, r, n, ja, jb, m, nv, col
    memset(acc, 0, np_ * nr * sizeof(double))
    for r in range(nr):
        xs[r] = xr + <Py_ssize_t>r * pitch
    t0 = 0
    while t0 < NP:
        t1 = min(NP, t0 + chunk)
        m = <int>(t1 - t0)
        nv = (m + VL - 1) // VL
        nseg = _segments(seg, t0, t1, P, OW)
        _unfold_rows(x, xr, pitch, r0, nr, seg, nseg, m, nv * VL, C, H, W, g, cig, kh, kw, sh, sw, pt, pl,
                     dh, dw_)
        for q in range(np_):
            col = 0
            for s in range(nseg):
                n = seg[4 * s]
                ja = seg[4 * s + 2]
                jb = seg[4 * s + 3]
                off = ((<Py_ssize_t>n * CO + g * cog + p0 + q) * OH + seg[4 * s + 1]) * OW
                memcpy(dyr + <Py_ssize_t>q * pitch + col, dy + off + ja, (jb - ja) * sizeof(floating))
                col += jb - ja
            memset(dyr + <Py_ssize_t>q * pitch + m, 0, (nv * VL - m) * sizeof(floating))
        if floating is float:
            fcg_dot_block_f(np_, nr, nv, dyr, pitch, xs, acc, nr)
        else:
            fcg_dot_block_d(np_, nr, nv, dyr, pitch, xs, acc, nr)
        t0 = t1
    for q in range(np_):
        for r in range(nr):
            dw[(<Py_ssize_t>g * cog + p0 + q) * K + r0 + r] = <floating>acc[q * nr + r]


def _weight_grad_unfold(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy, floating[:, ::1] dw,
                        const unsigned char[::1] ws, int groups, int kh, int kw, int sh, int sw, int pt, int pl,
                        int dh, int dw_, int OH, int OW, int cb, int kb, int chunk, int pitch,
                        Py_ssize_t per_thread, int nthreads):
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], CO = dy.shape[1]
    cdef int cog = CO // groups, K = (C // groups) * kh * kw
    cdef int ncb = (cog + cb - 1) // cb, nkb = (K + kb - 1) // kb
    cdef int ntasks = groups * ncb * nkb, task
    cdef char *base = _aligned(ws)
    cdef int nt = min(nthreads, ntasks)
    for task in prange(ntasks, nogil=True, schedule="dynamic", num_threads=nt):
        _wg_task(&x[0, 0, 0, 0], &dy[0, 0, 0, 0], &dw[0, 0], base + threadid() * per_thread, task,
                 N, C, H, W, CO, OH, OW, groups, kh, kw, sh, sw, pt, pl, dh, dw_, cb, kb, chunk, pitch,
                 ncb, nkb)


def bias_grad(const floating[:, :, :, ::1] dy, floating[::1] db, int nthreads):
    """db[c] = Σ_n Σ_hw dy[n, c] in double, one channel per task (fixed order), rounded once."""
    cdef Py_ssize_t N = dy.shape[0], CO = dy.shape[1], P = dy.shape[2] * dy.shape[3], c, n, t
    cdef double s, s0, s1, s2, s3
    cdef const floating *row
    cdef int nt = max(1, min(nthreads, <int>((N * CO * P) // 32768)))
    for c in prange(CO, nogil=True, schedule="static", num_threads=nt):
        s = 0
        for n in range(N):
            row = &dy[n, c, 0, 0]
            s0 = 0
            s1 = 0
            s2 = 0
            s3 = 0
            t = 0
            while t + 4 <= P:
                s0 = s0 + row[t]
                s1 = s1 + row[t + 1]
                s2 = s2 + row[t + 2]
                s3 = s3 + row[t + 3]
                t = t + 4
            while t < P:
                s0 = s0 + row[t]
                t = t + 1
            s = s + ((s0 + s1) + (s2 + s3))
        db[c] = <floating>s


# --- input gradient -------------------------------------------------------------------------------
cdef void _ig_task(const floating *dy, const floating *wt, floating *dx, char *buf, int task,
                   int N, int C, int H, int W, int CO, int OH, int OW, int groups, int kh, int kw,
                   int sh, int sw, int pt, int pl, int dh, int dw_, int cib, int chunk, int pitch,
                   int ncib, int rows) noexcept nogil:
    cdef int cig = C // groups, cog = CO // groups, kk = kh * kw
    cdef int n = task // (groups * ncib), rest = task % (groups * ncib)
    cdef int g = rest // ncib, cblk = rest % ncib
    cdef int ci0 = cblk * cib, nci = min(cib, cig - ci0), nr = nci * kk
    cdef int P = OH * OW, VL = 16 if floating is float else 8, per_col = FCG_BV * VL
    cdef floating *brow = <floating *>buf
    cdef floating *ct = <floating *>(buf + _rup(cog * pitch * sizeof(floating), ALIGN))
    cdef int *seg = <int *>(<char *>ct + _rup(rows * pitch * sizeof(floating), ALIGN))
    cdef const floating *panels = wt + (<Py_ssize_t>g * ncib + cblk) * rows * cog
    cdef floating *plane
    cdef const floating *crow
    cdef Py_ssize_t t0, t1
    cdef int m, mc, k, q, pn, r, ci, u, v, s, i, ja, jb, h, c0, lo, hi, j, col, nseg
    cdef floating *xrow
    plane = dx + (<Py_ssize_t>n * C + g * cig + ci0) * H * W
    memset(plane, 0, <Py_ssize_t>nci * H * W * sizeof(floating))
    t0 = 0
    while t0 < P:
        t1 = min(<Py_ssize_t>P, t0 + chunk)
        m = <int>(t1 - t0)
        mc = (m + per_col - 1) // per_col * per_col
        for k in range(cog):
            memcpy(brow + <Py_ssize_t>k * pitch,
                   dy + (<Py_ssize_t>n * CO + g * cog + k) * P + t0, m * sizeof(floating))
            memset(brow + <Py_ssize_t>k * pitch + m, 0, (mc - m) * sizeof(floating))
        q = 0
        while q < mc:
            for pn in range((nr + FCG_BR - 1) // FCG_BR):
                if floating is float:
                    fcg_bcast_f(cog, panels + <Py_ssize_t>pn * cog * FCG_BR, brow + q, pitch,
                                ct + <Py_ssize_t>pn * FCG_BR * pitch + q, pitch)
                else:
                    fcg_bcast_d(cog, panels + <Py_ssize_t>pn * cog * FCG_BR, brow + q, pitch,
                                ct + <Py_ssize_t>pn * FCG_BR * pitch + q, pitch)
            q += per_col
        # fold: unfolded row r = (ci, u, v) adds into plane ci at the tap's strided offsets
        nseg = _segments(seg, t0, t1, P, OW)
        for r in range(nr):
            ci = r // kk
            u = (r % kk) // kw
            v = r % kw
            c0 = v * dw_ - pl
            _col_range(c0, sw, W, &lo, &hi)
            crow = ct + <Py_ssize_t>r * pitch
            col = 0
            for s in range(nseg):
                i = seg[4 * s + 1]
                ja = seg[4 * s + 2]
                jb = seg[4 * s + 3]
                h = i * sh + u * dh - pt
                if h >= 0 and h < H:
                    xrow = plane + (<Py_ssize_t>ci * H + h) * W + c0
                    if sw == 1:
                        for j in range(max(ja, lo), min(jb, hi)):
                            xrow[j] += crow[col - ja + j]
                    else:
                        for j in range(max(ja, lo), min(jb, hi)):
                            xrow[j * sw] += crow[col - ja + j]
                col += jb - ja
        t0 = t1


def _input_grad(const floating[:, :, :, ::1] dy, const floating[:, :, :, :, ::1] wt, floating[:, :, :, ::1] dx,
                const unsigned char[::1] ws, int groups, int kh, int kw, int sh, int sw, int pt, int pl,
                int dh, int dw_, int cib, int chunk, int pitch, Py_ssize_t per_thread, int nthreads):
    cdef int N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef int CO = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef int ncib = wt.shape[1], rows = wt.shape[2] * wt.shape[4]
    cdef int ntasks = N * groups * ncib, task
    cdef char *base = _aligned(ws)
    cdef int nt = min(nthreads, ntasks)
    for task in prange(ntasks, nogil=True, schedule="dynamic", num_threads=nt):
        _ig_task(&dy[0, 0, 0, 0], &wt[0, 0, 0, 0, 0], &dx[0, 0, 0, 0], base + threadid() * per_thread, task,
                 N, C, H, W, CO, OH, OW, groups, kh, kw, sh, sw, pt, pl, dh, dw_, cib, chunk, pitch, ncib, rows)


# --- input gradient, pixel-rows path (maps under IG_ROWS_MAX_P pixels) -------------------------------
cdef void _igr_pack(const floating *dy, floating *A, int unit, int NPk, int CO, int P, int groups,
                    int npan) noexcept nogil:
    """Unit (group g, panel of 8 output pixels of the batch): grad_output as [C_out_g][8], zeros past
    the last pixel."""
    cdef int g = unit // npan, pan = unit % npan, cog = CO // groups, r, k, pix, n, t
    cdef floating *a = A + (<Py_ssize_t>g * npan + pan) * cog * FCG_BR
    cdef const floating *src
    for r in range(FCG_BR):
        pix = pan * FCG_BR + r
        if pix >= NPk:
            for k in range(cog):
                a[k * FCG_BR + r] = 0
            continue
        n = pix // P
        t = pix - n * P
        src = dy + (<Py_ssize_t>n * CO + g * cog) * P + t
        for k in range(cog):
            a[k * FCG_BR + r] = src[<Py_ssize_t>k * P]


cdef void _igr_task(const floating *A, const floating *wq, floating *dx, char *buf, int task, int N, int C,
                    int H, int W, int CO, int OH, int OW, int groups, int kh, int kw, int sh, int sw, int pt,
                    int pl, int dh, int dw_, int cib, int ncb, int ncolb, int npan) noexcept nogil:
    """One (group, block of input channels) over every pixel panel of the batch: the 8 × colw tile
    (pixels × the block's unfolded columns) = dYᵀ · W by the bcast kernel, then scattered into the
    block's input planes (pixel order, then column order: fixed)."""
    cdef int cig = C // groups, cog = CO // groups, kk = kh * kw
    cdef int g = task // ncb, cb = task % ncb, ci0 = cb * cib, nci = min(cib, cig - ci0), ncols = nci * kk
    cdef int VL = 16 if floating is float else 8, colw = FCG_BV * VL, P = OH * OW, NPk = N * P
    cdef floating *tiles = <floating *>buf
    cdef floating *tile
    cdef int *tci = <int *>(buf + _rup(<Py_ssize_t>npan * FCG_BR * colw * sizeof(floating), ALIGN))
    cdef int *th = tci + ncolb * colw
    cdef int *tw = th + ncolb * colw
    cdef int n, c, cc, pan, q, r, pix, t, i, j, h, w, hb, m, k, klo, khi, k0, kc
    cdef floating *base
    cdef floating *row
    cdef const floating *src
    cdef const floating *a
    for n in range(N):
        memset(dx + (<Py_ssize_t>n * C + g * cig + ci0) * H * W, 0, <Py_ssize_t>nci * H * W * sizeof(floating))
    for cc in range(ncols):
        tci[cc] = cc // kk
        th[cc] = ((cc % kk) // kw) * dh - pt
        tw[cc] = (cc % kw) * dw_ - pl
    for q in range(ncolb):
        # the tiles of every pixel panel for column block q, K in blocks of IG_KC (the block of W
        # stays in L1 while the panels pass), then scattered
        k0 = 0
        while k0 < cog:
            kc = min(IG_KC, cog - k0)
            for pan in range(npan):
                a = A + ((<Py_ssize_t>g * npan + pan) * cog + k0) * FCG_BR
                if floating is float:
                    fcg_bcast_acc_f(kc, a, wq + (((<Py_ssize_t>g * ncb + cb) * ncolb + q) * cog + k0) * colw, colw,
                                    tiles + <Py_ssize_t>pan * FCG_BR * colw, colw, k0 > 0)
                else:
                    fcg_bcast_acc_d(kc, a, wq + (((<Py_ssize_t>g * ncb + cb) * ncolb + q) * cog + k0) * colw, colw,
                                    tiles + <Py_ssize_t>pan * FCG_BR * colw, colw, k0 > 0)
            k0 += kc
        for pan in range(npan):
            tile = tiles + <Py_ssize_t>pan * FCG_BR * colw
            # scatter by runs of the panel's pixels that share an output row: per column, one
            # bounds check and a strided run of adds
            r = 0
            while r < FCG_BR:
                pix = pan * FCG_BR + r
                if pix >= NPk:
                    break
                n = pix // P
                t = pix - n * P
                i = t // OW
                j = t - i * OW
                m = min(FCG_BR - r, OW - j, NPk - pix)  # pixels r .. r + m - 1: row i, columns j ..
                hb = i * sh
                base = dx + (<Py_ssize_t>n * C + g * cig + ci0) * H * W
                for c in range(min(colw, ncols - q * colw)):
                    cc = q * colw + c
                    h = hb + th[cc]
                    if h < 0 or h >= H:
                        continue
                    w = j * sw + tw[cc]  # input column of the run's first pixel
                    _col_range(w, sw, W, &klo, &khi)  # run positions k with 0 <= w + k*sw < W
                    khi = min(khi, m)
                    row = base + (<Py_ssize_t>tci[cc] * H + h) * W + w
                    src = tile + r * colw + c
                    for k in range(klo, khi):
                        row[k * sw] += src[k * colw]
                r += m


def _input_grad_rows(const floating[:, :, :, ::1] dy, const floating[:, :, :, :, ::1] wq, floating[:, :, :, ::1] dx,
                     const unsigned char[::1] ws, int groups, int kh, int kw, int sh, int sw, int pt, int pl,
                     int dh, int dw_, int cib, int nthreads):
    cdef int N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef int CO = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3], P = OH * OW, NPk = N * P
    cdef int ncb = wq.shape[1], ncolb = wq.shape[2], colw = wq.shape[4], cog = CO // groups
    cdef int npan = (NPk + FCG_BR - 1) // FCG_BR, ntasks = groups * ncb, unit, task
    cdef char *base = _aligned(ws)
    cdef floating *A = <floating *>base
    cdef char *bufs = base + _rup(<Py_ssize_t>groups * npan * cog * FCG_BR * sizeof(floating), ALIGN)
    cdef Py_ssize_t per = (_rup(<Py_ssize_t>npan * FCG_BR * colw * sizeof(floating), ALIGN)
                           + _rup(3 * ncolb * colw * 4, ALIGN))
    for unit in prange(groups * npan, nogil=True, schedule="static", num_threads=min(nthreads, groups * npan)):
        _igr_pack(&dy[0, 0, 0, 0], A, unit, NPk, CO, P, groups, npan)
    for task in prange(ntasks, nogil=True, schedule="dynamic", num_threads=min(nthreads, ntasks)):
        _igr_task(A, &wq[0, 0, 0, 0, 0], &dx[0, 0, 0, 0], bufs + threadid() * per, task, N, C, H, W, CO, OH, OW,
                  groups, kh, kw, sh, sw, pt, pl, dh, dw_, cib, ncb, ncolb, npan)


# --- input gradient, direct path (phase planes; weights finite) --------------------------------------
cdef void _igd_pack(const floating *dy, floating *dye, int c, int n, int CO, int OH, int OW, int Wq,
                    Py_ssize_t lp) noexcept nogil:
    """grad_output channel c of image n in the extended layout (rows of Wq, junk columns 0)."""
    cdef floating *row = dye + <Py_ssize_t>c * lp
    cdef const floating *src = dy + (<Py_ssize_t>n * CO + c) * OH * OW
    cdef int i
    for i in range(OH):
        _copy(row + <Py_ssize_t>i * Wq, src + <Py_ssize_t>i * OW, OW)
        memset(row + <Py_ssize_t>i * Wq + OW, 0, (Wq - OW) * sizeof(floating))
    memset(row + <Py_ssize_t>OH * Wq, 0, (lp - <Py_ssize_t>OH * Wq) * sizeof(floating))


cdef void _igd_task(const floating *dye, const floating *wt, floating *dx, char *buf, int task, int n, int C,
                    int H, int W, int CO, int groups, int kh, int kw, int sh, int sw, int pt, int pl, int dh,
                    int dw_, int cib, int ncib, int rows, int Hq, int Wq, Py_ssize_t ps, const int *rslot,
                    const int *cslot, int nrs, int ncs, int L, Py_ssize_t lp, int chunk) noexcept nogil:
    """One (group, block of input channels) of image n: the block's unfolded rows over the extended
    pixels, 8 rows × 3 vectors at a time (bcast), each tile row added as whole vectors into its
    tap's phase plane at the tap's offset (the junk columns add zeros); then the phase planes are
    written out into dx."""
    cdef int cig = C // groups, cog = CO // groups, kk = kh * kw
    cdef int g = task // ncib, cblk = task % ncib, ci0 = cblk * cib, nci = min(cib, cig - ci0), nr = nci * kk
    cdef int VL = 16 if floating is float else 8, colw = FCG_BV * VL
    cdef floating *tile = <floating *>buf
    cdef floating *xq = <floating *>(buf + _rup(FCG_BR * colw * sizeof(floating), ALIGN))
    cdef const floating *panels = wt + (<Py_ssize_t>g * ncib + cblk) * rows * cog
    cdef const floating *bsrc = dye + <Py_ssize_t>g * cog * lp
    cdef int t0, t1, q, pn, r, R, ci, u, v, e, a, b, qi, h, j
    cdef floating *dst
    cdef const floating *tr
    cdef floating *xrow
    cdef const floating *qrow
    memset(xq, 0, <Py_ssize_t>nci * nrs * ncs * ps * sizeof(floating))
    t0 = 0
    while t0 < L:
        t1 = min(L, t0 + chunk)
        q = t0
        while q < t1:
            for pn in range((nr + FCG_BR - 1) // FCG_BR):
                if floating is float:
                    fcg_bcast_f(cog, panels + <Py_ssize_t>pn * cog * FCG_BR, bsrc + q, lp, tile, colw)
                else:
                    fcg_bcast_d(cog, panels + <Py_ssize_t>pn * cog * FCG_BR, bsrc + q, lp, tile, colw)
                for r in range(min(FCG_BR, nr - pn * FCG_BR)):
                    R = pn * FCG_BR + r
                    ci = R // kk
                    u = (R % kk) // kw
                    v = R % kw
                    dst = (xq + ((<Py_ssize_t>ci * nrs + rslot[(u * dh) % sh]) * ncs + cslot[(v * dw_) % sw]) * ps
                           + ((u * dh) // sh) * Wq + (v * dw_) // sw + q)
                    tr = tile + r * colw
                    for e in range(colw):
                        dst[e] += tr[e]
            q += colw
        t0 = t1
    # phase planes -> dx: pixel (h, w) of the padded plane is (h // sh, w // sw) of phase (h % sh, w % sw)
    for ci in range(nci):
        for h in range(H):
            a = (h + pt) % sh
            qi = (h + pt) // sh
            xrow = dx + ((<Py_ssize_t>n * C + g * cig + ci0 + ci) * H + h) * W
            if rslot[a] < 0:
                memset(xrow, 0, W * sizeof(floating))
                continue
            for j in range(W):
                b = (j + pl) % sw
                if cslot[b] < 0:
                    xrow[j] = 0
                else:
                    qrow = xq + ((<Py_ssize_t>ci * nrs + rslot[a]) * ncs + cslot[b]) * ps + <Py_ssize_t>qi * Wq
                    xrow[j] = qrow[(j + pl) // sw]


def _input_grad_direct(const floating[:, :, :, ::1] dy, const floating[:, :, :, :, ::1] wt,
                       floating[:, :, :, ::1] dx, const unsigned char[::1] ws, int groups, int kh, int kw, int sh,
                       int sw, int pt, int pl, int dh, int dw_, int cib, int Hq, int Wq, Py_ssize_t ps,
                       const int[::1] rslot, const int[::1] cslot, int nrs, int ncs, int L, Py_ssize_t lp, int chunk,
                       int nthreads):
    cdef int N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef int CO = dy.shape[1], OH = dy.shape[2], OW = dy.shape[3]
    cdef int ncib = wt.shape[1], rows = wt.shape[2] * wt.shape[4], ntasks = groups * ncib, task, c, n
    cdef int VL = 16 if floating is float else 8, colw = FCG_BV * VL
    cdef char *base = _aligned(ws)
    cdef floating *dye = <floating *>base
    cdef char *bufs = base + _rup(<Py_ssize_t>CO * lp * sizeof(floating), ALIGN)
    cdef Py_ssize_t per = (_rup(FCG_BR * colw * sizeof(floating), ALIGN)
                           + _rup(<Py_ssize_t>cib * nrs * ncs * ps * sizeof(floating), ALIGN))
    nthreads = _per_image_threads(nthreads, <Py_ssize_t>C * kh * kw * (CO // groups) * L)
    for n in range(N):
        for c in prange(CO, nogil=True, schedule="static", num_threads=min(nthreads, CO)):
            _igd_pack(&dy[0, 0, 0, 0], dye, c, n, CO, OH, OW, Wq, lp)
        for task in prange(ntasks, nogil=True, schedule="dynamic", num_threads=min(nthreads, ntasks)):
            _igd_task(dye, &wt[0, 0, 0, 0, 0], &dx[0, 0, 0, 0], bufs + threadid() * per, task, n, C, H, W, CO, groups,
                      kh, kw, sh, sw, pt, pl, dh, dw_, cib, ncib, rows, Hq, Wq, ps, &rslot[0], &cslot[0], nrs, ncs,
                      L, lp, chunk)
