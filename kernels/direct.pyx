# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Direct convolution (Cython + OpenMP around a C micro-kernel): every valid conv2d case.

Runs any stride, padding (incl. asymmetric), dilation and groups, in float32 and float64, so it
is also ``auto``'s fallback. The design (details in ``direct_impl.h``):

* **pack** each input channel once per call into *phase planes* (stride ``s`` splits the padded
  plane into ``s_h*s_w`` sub-sampled planes; only the ones some tap reads are packed, at most
  ``min(s,k)`` per axis, so a huge stride costs nothing), so that every kernel tap of every stride
  and dilation is a contiguous, stride-1 read at a constant offset from the output's flat position
  ``i*Wq + j`` — one branch-free loop shape for all cases (the ``Wq - OW`` extra columns per
  row are computed and dropped). A shared pack shares out one (channel, phase plane) per unit, so
  the stem's 3 channels x 4 phases keep 2 threads busy, and stride 2's column split is a
  constant-stride loop that gcc vectorises (together: 3.1% of the stem's samples at 2 threads,
  perf);
* **compute** with a register-blocked micro-kernel: ``CB`` output channels × ``NV`` vectors of
  positions stay in registers across all ``C_in/groups × k_h × k_w`` taps, so each input vector
  loaded is reused ``CB`` times and accumulators never go to memory (gcc keeps them in registers
  from portable vector extensions). ``prepare`` repacks the weights ``[group][block][tap][CB]``
  and picks ``CB`` ≤ 8 so a group's channels split into equal blocks (lenet 10 = 2×5, 20 = 3×7
  (one pad), stem 64 = 8×8, depthwise 1);
* **extract** the valid columns of each tile into ``y`` with the bias; or, where the output width
  is a whole number of vectors (16 float32, 8 float64: the stem's 112), tiles are whole output
  rows and the micro-kernel writes them straight into ``y`` from accumulators that start at the
  bias (``fc_direct_rows``; the vectors left at the rows' ends go NV at a time across rows).
  Measured against flat tiles, interleaved from Python: 1.01-1.02x on the stem at 1 and 2
  threads, 1.12x on a 5x5 layer 32 wide (8x32x32x32 -> 64), 1.00x on a 3x3 one 112 wide. Other
  widths keep flat tiles: row chunks stored straight into ``y`` with a partial vector per row were
  5–60% slower than flat positions + extraction on the five layers of the seed table;
* **depthwise** (one input and one output channel per group, packed per thread): a plane kernel
  writes output rows straight into ``y`` instead (``fc_direct_dw`` in direct_impl.h): 4 rows per
  step as independent FMA chains, for 3x3 stride 1 each loaded input vector shared by the rows
  it feeds and the 9 weights held in registers; no accumulator tile, no extraction pass
  (mobilenet.dw3x3, 256x56x56, 2 threads: 0.30-0.35 ms against 0.37-0.62 through the general
  CB = 1 task). float32 3x3/s1/p1 planes at least 16 wide skip the pack altogether
  (``fc_dw3x3s1p1_f``, AVX-512 builds): flat over the plane with lane shifts and masks for the
  padding, 0.69-0.74 us a plane in a C harness (1 thread) against 0.52-0.60 us of pack + 1.0-1.2
  of compute; mobilenet.dw3x3 0.17 ms (ONNX Runtime 0.32, torch 0.48). Such a call needs no
  workspace at all.

Parallel over (image, group, position tile, channel block) tasks with the channel block
innermost, so consecutive tasks reuse the same input tile from cache (dynamic schedule: a thread
that starts late does not hold back a fixed share). When there are many (image, group) pairs
(``n·groups >= 4·threads``: depthwise, LeNet's batch of 64) each thread instead packs one pair
into its own buffer and runs all its tiles while that input is hot in L1/L2. Unfolding each
image's taps instead (valid positions only, no wasted columns) makes lenet.conv2 1.5× slower
(1.02 vs 0.69 ms): its 8-element row copies cost more than the 4 dropped columns of 12.

Workspace (``workspace_bytes``, carved by ``run`` from the caller's array; the kernel allocates
nothing): the packed input (about the padded input's size; one (image, group) per thread in the
local mode) plus, for flat tiles, one ``CB × tile`` accumulator (32 KiB) per thread.
"""
from cython.parallel cimport prange, parallel, threadid
import numpy as np

from fastconv import contract, threads

include "_shared.pxi"

cdef extern from "direct_impl.h" nogil:
    void fc_direct_pack_f(const float *x, float *dst, Py_ssize_t H, Py_ssize_t W, Py_ssize_t Hq,
                          Py_ssize_t Wq, int sh, int sw, int pt, int pl, const Py_ssize_t *aph, int na,
                          const Py_ssize_t *bph, int nb)
    void fc_direct_pack_d(const double *x, double *dst, Py_ssize_t H, Py_ssize_t W, Py_ssize_t Hq,
                          Py_ssize_t Wq, int sh, int sw, int pt, int pl, const Py_ssize_t *aph, int na,
                          const Py_ssize_t *bph, int nb)
    void fc_direct_task_f(const float *xin, const Py_ssize_t *toff, Py_ssize_t ntap, const float *wb,
                          const float *bias, int cb, int cvalid, float *y, Py_ssize_t OH, Py_ssize_t OW,
                          Py_ssize_t Wq, Py_ssize_t p0, Py_ssize_t p1, float *acc, Py_ssize_t lda)
    void fc_direct_task_d(const double *xin, const Py_ssize_t *toff, Py_ssize_t ntap, const double *wb,
                          const double *bias, int cb, int cvalid, double *y, Py_ssize_t OH,
                          Py_ssize_t OW, Py_ssize_t Wq, Py_ssize_t p0, Py_ssize_t p1, double *acc,
                          Py_ssize_t lda)

    void fc_direct_dw_f(const float *xin, const Py_ssize_t *toff, Py_ssize_t ntap, const float *wt,
                        float bias, float *y, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t Wq, int s1k3)
    void fc_direct_dw_d(const double *xin, const Py_ssize_t *toff, Py_ssize_t ntap, const double *wt,
                        double bias, double *y, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t Wq, int s1k3)
    void fc_dw3x3s1p1_f(const float *x, const float *w, float bias, float *y, Py_ssize_t H, Py_ssize_t W)
    int FC_HAS_DW3X3

ctypedef fused floating:
    float
    double

MAX_CB = 8
TILE_ELEMS = 8192  # accumulator elements per thread (CB × tile): 32 KiB in float32, L1/L2-resident
_INT_MAX = 2 ** 31 - 1


def supports(p, **options) -> str | None:
    why = contract.refuse(p, epilogue=("bias",), options=options, dtypes=("float32", "float64"))
    if why is not None:
        return why
    if p.groups < 1 or p.c_in % p.groups or p.c_out % p.groups:
        return f"groups ({p.groups}) must divide both channel counts ({p.c_in}, {p.c_out})"
    if min(p.kh, p.kw, *p.stride, *p.dilation) < 1 or min(p.pad) < 0:
        return "kernel, stride and dilation must be >= 1 and padding >= 0"
    if max(*p.stride, *p.pad, p.groups) > _INT_MAX:
        return "stride, padding and groups must fit a C int"
    if p.out_h < 1 or p.out_w < 1:
        return f"output size {p.out_h}x{p.out_w} is empty"
    return None


def _phases(k: int, d: int, s: int) -> list:
    """The phases (tap offset mod stride) some tap reads along one axis: at most min(s, k)."""
    return sorted({(u * d) % s for u in range(k)})


def _geometry(p):
    """Phase-plane sizes: Hq, Wq (rows/cols of one phase plane) and the number of phase planes
    per input channel (the used row phases × used column phases, at most s_h*s_w)."""
    sh, sw = p.stride
    dh, dw = p.dilation
    hq = p.out_h + ((p.kh - 1) * dh) // sh
    wq = p.out_w + ((p.kw - 1) * dw) // sw
    return hq, wq, len(_phases(p.kh, dh, sh)) * len(_phases(p.kw, dw, sw))


def _row_tiles(p) -> bool:
    """Whole rows of whole vectors: tiles of whole output rows, which the micro-kernel writes
    straight into the output (fc_direct_rows_*: no accumulator tile, no extraction)."""
    return p.out_w % (64 // p.itemsize) == 0


def _blocking(p):
    """(channel blocks per group, channels per block, positions per tile, micro-kernel chunk)."""
    cog = p.c_out_per_group
    nblk = -(-cog // MAX_CB)
    cb = -(-cog // nblk)
    vl = 64 // p.itemsize
    chunk = vl * (4 if cb <= 3 else 3 if cb <= 5 else 2)  # NV vectors: direct_body.h
    _, wq, _ = _geometry(p)
    total = p.out_h * wq
    if _row_tiles(p):
        return nblk, cb, max(1, (TILE_ELEMS // cb) // wq) * wq, chunk
    tile = max(chunk, (TILE_ELEMS // cb) // chunk * chunk)
    tile = min(tile, -(-total // chunk) * chunk)
    return nblk, cb, tile, chunk


def _tail(p) -> int:
    """Slack after packed input: reads run past the last plane by < one row + one chunk (into
    dropped columns / the chunk rounding only)."""
    _, wq, _ = _geometry(p)
    return wq + 2 * _blocking(p)[3]


def _local_pack(p, nthreads: int) -> bool:
    """Pack per (image, group) inside each thread when there are enough pairs to share out."""
    return p.n * p.groups >= 4 * nthreads


cdef class _Config:
    """What run() derives from the layer and the thread count, computed once per (p, nthreads)
    (ConvParams is frozen, so hashable): saves ~10 us of Python per call on LeNet-sized calls.

    The workspace holds, each part starting on a cache line: the packed input (shared: all
    images; local: one (image, group) per thread) and, for flat tiles, one CB x (tile + chunk)
    accumulator per thread. Depthwise 3x3/s1/p1 float32 planes (dw3) need none of it."""
    cdef readonly Py_ssize_t hq, wq, tile, chunk, tail
    cdef readonly int nblk, cb
    cdef readonly bint local, dw3, rows
    cdef readonly Py_ssize_t pack_bytes   # packed input: all of it (shared) or per thread (local)
    cdef readonly Py_ssize_t acc_bytes    # accumulator per thread (0 for row tiles)
    cdef readonly Py_ssize_t need         # bytes carved from the aligned workspace
    cdef readonly Py_ssize_t workspace    # workspace_bytes: need + alignment slack

    def __init__(self, p, int nt):
        nblk, cb, tile, chunk = _blocking(p)
        hq, wq, ph = _geometry(p)
        self.hq, self.wq, self.nblk, self.cb, self.tile, self.chunk = hq, wq, nblk, cb, tile, chunk
        self.tail = _tail(p)
        self.local = _local_pack(p, nt)
        self.rows = _row_tiles(p)
        # depthwise 3x3/s1/p1 "same" float32 planes >= 16 wide, packed per thread: no pack at all
        self.dw3 = bool(FC_HAS_DW3X3 and self.local and p.itemsize == 4 and p.c_in_per_group == 1
                        and p.c_out_per_group == 1 and (p.kh, p.kw) == (3, 3) and p.stride == (1, 1)
                        and p.dilation == (1, 1) and p.pad == (1, 1, 1, 1) and p.w >= 16)
        cdef Py_ssize_t plane_q = ph * hq * wq
        if self.dw3:
            self.pack_bytes = self.acc_bytes = self.need = self.workspace = 0
            return
        if self.local:
            self.pack_bytes = ws_round((p.c_in_per_group * plane_q + self.tail) * p.itemsize)
        else:
            self.pack_bytes = ws_round((p.n * p.c_in * plane_q + self.tail) * p.itemsize)
        self.acc_bytes = 0 if self.rows else ws_round(cb * (tile + chunk) * p.itemsize)
        self.need = (nt if self.local else 1) * self.pack_bytes + nt * self.acc_bytes
        self.workspace = self.need + WS_ALIGN - 1


_CONFIGS = {}


def _config(p, nt) -> _Config:
    key = (p, nt)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 256:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = _Config(p, nt)
    return cfg


def workspace_bytes(p, nthreads, **options) -> int:
    return _config(p, nthreads).workspace


def prepare(w, b, p, **options):
    """Weights → ``[group][block][tap][CB]`` (zero-padded channels), bias → ``[group][block][CB]``,
    tap offsets into the packed input (they depend on H, W, never on the batch size)."""
    g, cog, cig = p.groups, p.c_out_per_group, p.c_in_per_group
    nblk, cb, _, _ = _blocking(p)
    ntap = cig * p.kh * p.kw
    wp = np.empty((g, nblk, ntap, cb), dtype=w.dtype)
    _pack_weights(np.ascontiguousarray(w).reshape(g * cog, ntap), wp, cog, threads.get_num_threads())
    bp = np.zeros((g, nblk * cb), dtype=w.dtype)
    if b is not None:
        bp[:, :cog] = b.reshape(g, cog)
    hq, wq, ph = _geometry(p)
    sh, sw = p.stride
    dh, dw = p.dilation
    aph, bph = _phases(p.kh, dh, sh), _phases(p.kw, dw, sw)
    ia = np.zeros(sh, dtype=np.intp)  # phase -> its index among the packed row / column phases
    ia[aph] = np.arange(len(aph))
    ib = np.zeros(sw, dtype=np.intp)
    ib[bph] = np.arange(len(bph))
    # (plain array arithmetic: np.vectorize and meshgrid made this function 100-280 us of every
    # F.conv2d)
    uu = (np.arange(p.kh) * dh)[:, None]
    vv = (np.arange(p.kw) * dw)[None, :]
    tap = (ia[uu % sh] * len(bph) + ib[vv % sw]) * (hq * wq) + (uu // sh) * wq + vv // sw
    toff = (np.arange(cig, dtype=np.intp) * (ph * hq * wq))[:, None, None] + tap[None]
    return (wp, bp.reshape(g, nblk, cb), np.ascontiguousarray(toff.ravel(), dtype=np.intp),
            np.array(aph, dtype=np.intp), np.array(bph, dtype=np.intp))


def _pack_weights(const floating[:, ::1] w, floating[:, :, :, ::1] wp, Py_ssize_t cog, int nthreads):
    """wp[g, blk, tap, c] = w[g·cog + blk·CB + c, tap], zero past the group's last channel; one
    (group, block) per task. (NumPy's zero-fill, copy and transposing copy took 3.6-3.9 ms of
    every ``fastconv.conv2d`` on a 512x512 3x3 layer, as long as the run itself on a 7x7 map.)"""
    cdef Py_ssize_t nblk = wp.shape[1], ntap = wp.shape[2], cb = wp.shape[3]
    cdef Py_ssize_t task, g, blk, t, c, co
    cdef int nt = nthreads if wp.shape[0] * nblk > 1 else 1  # 1 or all (kernels/_common.h)
    team(nt)
    for task in prange(wp.shape[0] * nblk, nogil=True, schedule="static", num_threads=nt):
        g = task // nblk
        blk = task % nblk
        for t in range(ntap):
            for c in range(cb):
                co = blk * cb + c
                wp[g, blk, t, c] = w[g * cog + co, t] if co < cog else 0


def run(x, packed, p, out, workspace, nthreads, **options) -> None:
    wp, bp, toff, aph, bph = packed
    cfg = _config(p, nthreads)
    team(nthreads)
    _run(x, workspace, wp, bp, toff, aph, bph, out, cfg, p.stride[0], p.stride[1], p.pad[0], p.pad[2],
         p.groups, nthreads)


def _run(const floating[:, :, :, ::1] x, const unsigned char[::1] workspace, const floating[:, :, :, ::1] wp,
         const floating[:, :, ::1] bp, const Py_ssize_t[::1] toff, const Py_ssize_t[::1] aph,
         const Py_ssize_t[::1] bph, floating[:, :, :, ::1] out, _Config cfg,
         int sh, int sw, int pt, int pl, int groups, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t CO = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t ntap = toff.shape[0], cog = CO // groups, cig = C // groups
    cdef Py_ssize_t Hq = cfg.hq, Wq = cfg.wq, tile = cfg.tile, chunk = cfg.chunk, tail = cfg.tail
    cdef int nblk = cfg.nblk, cb = cfg.cb
    cdef bint dw3 = cfg.dw3, rows = cfg.rows
    cdef int na = <int>aph.shape[0], nb = <int>bph.shape[0]
    cdef Py_ssize_t plane_q = na * nb * Hq * Wq            # one packed input channel
    cdef const Py_ssize_t *ap = &aph[0]
    cdef const Py_ssize_t *bpp_ = &bph[0]
    cdef Py_ssize_t total = OH * Wq                       # flat positions per output channel
    cdef Py_ssize_t ntile = (total + tile - 1) // tile
    cdef Py_ssize_t ntask = N * groups * ntile * nblk
    # rows (_Config): the tiles are whole output rows, which the task writes straight into y
    # when it gets no accumulator (lda 0)
    cdef Py_ssize_t lda = 0 if rows else tile + chunk
    cdef Py_ssize_t q, qq, c, task, img, g, blk, t, p0, p1
    cdef int cvalid, ia, ib
    if N == 0 or CO == 0 or OH * OW == 0:
        return
    # the workspace (_Config): packed input (one buffer, or one per thread), then the threads'
    # accumulators
    cdef char *ws = ws_base(workspace, cfg.need)
    cdef Py_ssize_t pack_bytes = cfg.pack_bytes, acc_bytes = cfg.acc_bytes
    cdef char *accs = ws + (nthreads if cfg.local else 1) * pack_bytes
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *xsp = <floating *>ws
    cdef const floating *wpp = &wp[0, 0, 0, 0]
    cdef const floating *bpp = &bp[0, 0, 0]
    cdef const Py_ssize_t *top = &toff[0]
    cdef floating *yp = &out[0, 0, 0, 0]
    cdef floating *acc
    # a region runs on 1 or nthreads threads, never in between (kernels/_common.h)
    cdef int nt = nthreads if ntask > 1 else 1
    cdef floating *local
    cdef Py_ssize_t gsize = cig * plane_q                  # one group's packed input
    cdef int s1k3 = ntap == 9          # taps at u*Wq + v, u, v < 3: 3x3 at stride 1 (dilation 1)
    for q in range(ntap):
        if toff[q] != (q // 3) * Wq + q % 3:
            s1k3 = 0
    # dw3 (_Config): depthwise 3x3/s1/p1 float32 planes straight from x (fc_dw3x3s1p1_f), with no
    # pack buffers
    if cfg.local:
        # many (image, group) pairs (N * groups >= 4 * nthreads): each thread packs one pair into
        # its own buffer and runs all of its tiles and blocks while that input is hot in L1/L2
        # (depthwise, LeNet's batch of 64)
        acc, local, qq = NULL, NULL, 0  # (Cython makes them firstprivate: start them defined)
        with nogil, parallel(num_threads=nthreads):
            acc = NULL
            local = NULL
            if not dw3:
                if not rows:
                    acc = <floating *>(accs + threadid() * acc_bytes)
                local = <floating *>(ws + threadid() * pack_bytes)
                for qq in range(tail):
                    local[gsize + qq] = 0
            for task in prange(N * groups, schedule="dynamic"):
                img = task // groups
                g = task % groups
                if floating is float:
                    if dw3:
                        fc_dw3x3s1p1_f(xp + (img * C + g) * H * W, wpp + g * ntap, bpp[g],
                                       yp + (img * CO + g) * OH * OW, H, W)
                        continue
                for c in range(cig):
                    if floating is float:
                        fc_direct_pack_f(xp + ((img * C + g * cig + c) * H * W), local + c * plane_q,
                                         H, W, Hq, Wq, sh, sw, pt, pl, ap, na, bpp_, nb)
                    else:
                        fc_direct_pack_d(xp + ((img * C + g * cig + c) * H * W), local + c * plane_q,
                                         H, W, Hq, Wq, sh, sw, pt, pl, ap, na, bpp_, nb)
                if cig == 1 and cog == 1:   # depthwise: rows straight into y (direct_impl.h)
                    if floating is float:
                        fc_direct_dw_f(local, top, ntap, wpp + g * ntap, bpp[g], yp + (img * CO + g) * OH * OW,
                                       OH, OW, Wq, s1k3)
                    else:
                        fc_direct_dw_d(local, top, ntap, wpp + g * ntap, bpp[g], yp + (img * CO + g) * OH * OW,
                                       OH, OW, Wq, s1k3)
                    continue
                for t in range(ntile):
                    p0 = t * tile
                    p1 = min(p0 + tile, total)
                    for blk in range(nblk):
                        cvalid = <int>min(<Py_ssize_t>cb, cog - blk * cb)
                        if floating is float:
                            fc_direct_task_f(local, top, ntap, wpp + (g * nblk + blk) * ntap * cb,
                                             bpp + (g * nblk + blk) * cb, cb, cvalid,
                                             yp + (img * CO + g * cog + blk * cb) * OH * OW,
                                             OH, OW, Wq, p0, p1, acc, lda)
                        else:
                            fc_direct_task_d(local, top, ntap, wpp + (g * nblk + blk) * ntap * cb,
                                             bpp + (g * nblk + blk) * cb, cb, cvalid,
                                             yp + (img * CO + g * cog + blk * cb) * OH * OW,
                                             OH, OW, Wq, p0, p1, acc, lda)
        return
    for q in range(tail):  # read (into dropped lanes only) by the last chunks: keep it finite
        xsp[N * C * plane_q + q] = 0
    acc = NULL
    with nogil, parallel(num_threads=nt):
        acc = NULL
        if not rows:
            acc = <floating *>(accs + threadid() * acc_bytes)
        # one phase plane of one channel a unit: the stem's 3 channels x 4 phases share out
        # evenly where 3 channels on 2 threads left one thread waiting at the barrier
        for q in prange(N * C * na * nb, schedule="static"):
            c = q // (na * nb)
            ia = <int>((q // nb) % na)
            ib = <int>(q % nb)
            if floating is float:
                fc_direct_pack_f(xp + c * H * W, xsp + c * plane_q + (ia * nb + ib) * Hq * Wq, H, W, Hq, Wq,
                                 sh, sw, pt, pl, ap + ia, 1, bpp_ + ib, 1)
            else:
                fc_direct_pack_d(xp + c * H * W, xsp + c * plane_q + (ia * nb + ib) * Hq * Wq, H, W, Hq, Wq,
                                 sh, sw, pt, pl, ap + ia, 1, bpp_ + ib, 1)
        # tasks ordered (image, group, tile, block): neighbours share their input tile
        for task in prange(ntask, schedule="dynamic"):
            blk = task % nblk
            t = (task // nblk) % ntile
            g = (task // (nblk * ntile)) % groups
            img = task // (nblk * ntile * groups)
            p0 = t * tile
            p1 = min(p0 + tile, total)
            cvalid = <int>min(<Py_ssize_t>cb, cog - blk * cb)
            if floating is float:
                fc_direct_task_f(xsp + (img * C + g * cig) * plane_q, top, ntap,
                                 wpp + (g * nblk + blk) * ntap * cb, bpp + (g * nblk + blk) * cb,
                                 cb, cvalid, yp + (img * CO + g * cog + blk * cb) * OH * OW,
                                 OH, OW, Wq, p0, p1, acc, lda)
            else:
                fc_direct_task_d(xsp + (img * C + g * cig) * plane_q, top, ntap,
                                 wpp + (g * nblk + blk) * ntap * cb, bpp + (g * nblk + blk) * cb,
                                 cb, cvalid, yp + (img * CO + g * cog + blk * cb) * OH * OW,
                                 OH, OW, Wq, p0, p1, acc, lda)
