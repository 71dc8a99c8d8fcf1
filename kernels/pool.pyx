# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Max, average and adaptive-average pooling (Cython + OpenMP around C row kernels).

The kernel contract (fastconv/contract.py) with ``p`` a PoolParams: ``run(x, None, p, out,
workspace, nthreads, indices=None)`` runs ``p.kind`` (max, with the argmax into ``indices`` when
given; avg; adaptive_avg); its scratch (each thread's ring of lines, the avg divisors) is carved
from the caller's ``workspace`` (``workspace_bytes``), so nothing is allocated in a call.

Pooling is pure data movement: parallel over (image, channel) planes with OpenMP ``prange``
(static schedule: planes are equal work; one thread when there are under ~16k elements per
thread, else all of them), releasing the GIL. The per-plane work is in ``pool_impl.h``: separable
windows as two row-wise passes, horizontal first (each input row reduced once into a ring of
lines, interior columns straight from ``x``, border columns with their taps clipped), then
vertical over the ring; the hot loops have no per-element bounds branch and vectorise (gcc, -O3
-march=native). Register kernels for the common float32 windows on AVX-512 builds store only the
outputs: max 3x3/s2 with padding 0 or 1 (``fc_maxpool_3x3s2_f``) and avg 3x3/s1/p1 planes up to
32 wide (``fc_avg3s1p1_f``: rows converted once and kept, lane shifts for the neighbours, bitwise
the flat kernel's results); other avg 3x3/s1/p1 planes take a vertical-first plane kernel. The
global mean sums each plane in 8 double lanes, 8 planes at a time, and reduces the 8 planes'
lanes together (``fc_means_*``).

Measured (this machine, 1 thread, C loop over the planes, random input, best of 50–300 repeats):
max 3x3/s2/p1 1x64x112x112 91-113 us in registers (140-176 through the ring, whose stored row
maxima alias the input rows mod 4 KiB at some placements); max 2x2/s2 1x64x224x224 420–550 us
(23–30 GB/s); max 3x3/s2 8x96x54x54 520–600 us (15–17 GB/s); avg 3x3/s1/p1 256x28x28 65-87 us
in registers where the vertical-first kernel took 115-139 in the same runs (the ring: 182-232
in other runs); global average
8x2048x7x7 92-106 us (converting float to double is the bound: float32 sums would be 1.5x faster
but break the double-sum contract below). From Python, 2 threads: max 3x3/s2/p1 1x64x112x112
0.071 ms (ONNX Runtime 0.118), avg 3x3/s1/p1 1x256x28x28 0.043 ms (ONNX Runtime 0.079), global
average 8x2048x7x7 0.058 ms (torch 0.111); torch 2.13 runs the four windowed pools at 0.3–1 GB/s.
Slower variants, measured: vertical-first max (reduce rows into a line, then re-load it at
shifted offsets) 2287 us on the 54-wide AlexNet planes — the shifted loads of just-stored vectors
stall store forwarding on short rows; avg through a staged double line buffer 284 us (same
stall); a plain-C global-mean loop stays scalar (237 us); a one-line NaN-max select with `||`
compiles to branches that mispredict on random data (max pools 3x slower than on sorted data).

The rules are torch's, so results match ``torch.nn.functional`` exactly:

* max: padding never wins; a NaN in the window wins (``val > max or isnan(val)``). Values come
  from the separable row kernels (a window's max does not depend on scan order). Indices do:
  torch reports the *first* maximum / *last* NaN in row-major scan order, and an all ``-inf``
  window reports its first real pixel; so ``return_indices`` keeps a row-major scan (interior
  windows without bounds checks), index = flat ``h*W + w`` in the input plane;
* avg: the divisor counts padding (``count_include_pad``) but not the ``ceil_mode`` overhang
  past ``size + padding``; ``divisor_override`` replaces it; sums are accumulated in double.
  The divisor is separable (row count × column count), precomputed per row and column;
* adaptive: window ``[⌊i·H/Hₒ⌋, ⌈(i+1)·H/Hₒ⌉)``; global (output 1x1) is a contiguous
  mean per plane.
"""
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport isnan, INFINITY
cimport numpy as cnp

from fastconv import contract

include "_shared.pxi"

cdef extern from "pool_impl.h" nogil:
    void fc_maxpool_plane_f(const float *x, float *y, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                            Py_ssize_t OW, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                            int dw, float *buf)
    void fc_maxpool_plane_d(const double *x, double *y, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                            Py_ssize_t OW, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                            int dw, double *buf)
    void fc_avgpool_plane_f(const float *x, float *y, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                            Py_ssize_t OW, int kh, int kw, int sh, int sw, int ph, int pw,
                            const double *hdiv, const double *wdiv, const double *winv,
                            double *buf, double *ring)
    void fc_avgpool_plane_d(const double *x, double *y, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                            Py_ssize_t OW, int kh, int kw, int sh, int sw, int ph, int pw,
                            const double *hdiv, const double *wdiv, const double *winv,
                            double *buf, double *ring)
    Py_ssize_t fc_avg_ring_len(int kh, Py_ssize_t W, Py_ssize_t OW)
    void fc_means_f(const float *x, float *y, Py_ssize_t planes, Py_ssize_t n)
    void fc_means_d(const double *x, double *y, Py_ssize_t planes, Py_ssize_t n)

ctypedef fused floating:
    float
    double


cdef inline int _threads(Py_ssize_t planes, Py_ssize_t plane_elems, int nthreads) noexcept nogil:
    """1 thread when there is too little work to pay for waking another (~16k elements each),
    else all of them (a region runs on 1 or nthreads threads, never in between: _common.h)."""
    cdef Py_ssize_t useful = (planes * plane_elems) // 16384
    return nthreads if min(useful, planes) >= 2 else 1


KINDS = ("max", "avg", "adaptive_avg")
_INT_MAX = 2 ** 31 - 1


def supports(p, **options) -> str | None:
    why = contract.refuse(p, epilogue=(), options=options)
    if why is not None:
        return why
    if p.kind not in KINDS:
        return f"kind must be one of {KINDS}, got {p.kind!r}"
    if p.dtype not in ("float32", "float64"):
        return f"dtype must be float32 or float64, got {p.dtype}"
    if p.kind != "adaptive_avg":
        if min(*p.kernel, *p.stride, *p.dilation) < 1 or min(p.padding) < 0:
            return "kernel, stride and dilation must be >= 1 and padding >= 0"
        if max(*p.kernel, *p.stride, *p.padding, *p.dilation) > _INT_MAX:
            return "kernel, stride, padding and dilation must fit a C int"
        if p.kind == "avg" and p.dilation != (1, 1):
            return f"average pooling has no dilation, got {p.dilation}"
        if p.kind == "avg" and p.divisor_override is not None and not 0 < p.divisor_override <= _INT_MAX:
            return f"divisor_override must be a positive C int, got {p.divisor_override}"
    return None


cdef inline Py_ssize_t _max_ring_bytes(int kh, int dh, Py_ssize_t OW, Py_ssize_t itemsize) noexcept nogil:
    """One thread's ring of horizontal-max lines, plus a page of room to place it (`_skewed`)."""
    return ws_round(((kh - 1) * dh + 1) * OW * itemsize) + 4096


cdef inline char *_skewed(char *room, const void *x) noexcept nogil:
    """The ring's start in its room: half a page away from the input modulo 4 KiB. The ring is
    stored to while the input rows are loaded, and a store whose address equals a later load's
    modulo 4 KiB makes that load wait (4K aliasing); where the ring lands by chance that costs
    up to 30% of the pool."""
    cdef uintptr_t want = (<uintptr_t>x + 2048) & 4095
    cdef uintptr_t have = <uintptr_t>room & 4095
    return room + ((want - have) & 4095)


def workspace_bytes(p, nthreads, **options) -> int:
    """max: a ring of horizontal-max lines per thread (also counted for ``indices``, whose
    row-major scan needs none); avg: the row and column divisors, and per thread an accumulator
    line and a ring of row sums (doubles); adaptive: nothing. Each part starts on a cache line."""
    if p.kind == "max":
        itemsize = 4 if p.dtype == "float32" else 8
        return nthreads * _max_ring_bytes(p.kernel[0], p.dilation[0], p.out_w, itemsize) + WS_ALIGN - 1
    if p.kind == "avg":
        return (ws_round((p.out_h + 2 * p.out_w) * 8) + nthreads * (
            ws_round(p.out_w * 8) + ws_round(fc_avg_ring_len(p.kernel[0], p.w, p.out_w) * 8)) + WS_ALIGN - 1)
    return 0


def prepare(w, b, p, **options):
    """Pools have no weights."""
    return None


def run(x, packed, p, out, workspace, nthreads, indices=None, **options) -> None:
    """Pool ``x`` into ``out`` (and the argmax into ``indices``, max only) by ``p.kind``."""
    team(nthreads)
    kind = p.kind
    if kind == "max":
        if indices is not None:
            _max_pool_indices(x, out, indices, *p.kernel, *p.stride, *p.padding, *p.dilation, nthreads)
        else:
            _max_pool(x, out, workspace, *p.kernel, *p.stride, *p.padding, *p.dilation, nthreads)
    elif kind == "avg":
        _avg_pool(x, out, workspace, *p.kernel, *p.stride, *p.padding, p.count_include_pad,
                  p.divisor_override or 0, nthreads)
    elif kind == "adaptive_avg":
        _adaptive_avg_pool(x, out, nthreads)
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _max_pool(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, const unsigned char[::1] workspace,
              int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t plane
    cdef int nt = _threads(N * C, H * W, nthreads)
    cdef Py_ssize_t ring_bytes = _max_ring_bytes(kh, dh, OW, sizeof(floating))
    if N * C == 0 or OH * OW == 0:
        return
    cdef char *ws = ws_base(workspace, nthreads * ring_bytes)
    cdef floating *buf
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &out[0, 0, 0, 0]
    buf = NULL  # (Cython makes it firstprivate: start it defined)
    with nogil, parallel(num_threads=nt):
        buf = <floating *>_skewed(ws + threadid() * ring_bytes, xp)   # this thread's ring of lines
        for plane in prange(N * C, schedule="static"):
            if floating is float:
                fc_maxpool_plane_f(xp + plane * H * W, yp + plane * OH * OW, H, W, OH, OW,
                                   kh, kw, sh, sw, ph, pw, dh, dw, buf)
            else:
                fc_maxpool_plane_d(xp + plane * H * W, yp + plane * OH * OW, H, W, OH, OW,
                                   kh, kw, sh, sw, ph, pw, dh, dw, buf)


def _max_pool_indices(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                      cnp.int64_t[:, :, :, ::1] idx, int kh, int kw, int sh, int sw, int ph,
                      int pw, int dh, int dw, int nthreads):
    """Row-major window scan (torch's order decides ties and NaN indices)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t plane, i, j, r, q, hstart, wstart, best_i
    cdef int u, v, u0, u1, v0, v1
    cdef floating best, val
    cdef const floating *xp
    cdef int nt = _threads(N * C, H * W, nthreads)
    for plane in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        xp = &x[0, 0, 0, 0] + plane * H * W
        for i in range(OH):
            hstart = i * sh - ph
            # taps u in [u0, u1) are the rows inside the input: no test in the loop
            u0 = 0
            while u0 < kh and hstart + u0 * dh < 0:
                u0 = u0 + 1
            u1 = kh
            while u1 > u0 and hstart + (u1 - 1) * dh >= H:
                u1 = u1 - 1
            for j in range(OW):
                wstart = j * sw - pw
                v0 = 0
                while v0 < kw and wstart + v0 * dw < 0:
                    v0 = v0 + 1
                v1 = kw
                while v1 > v0 and wstart + (v1 - 1) * dw >= W:
                    v1 = v1 - 1
                best = -INFINITY
                best_i = -1
                for u in range(u0, u1):
                    r = hstart + u * dh
                    for v in range(v0, v1):
                        q = wstart + v * dw
                        val = xp[r * W + q]
                        if val > best or isnan(val) or best_i < 0:
                            best = val
                            best_i = r * W + q
                out[plane // C, plane % C, i, j] = best
                idx[plane // C, plane % C, i, j] = best_i


cdef void _avg_divisors(double *d, Py_ssize_t size, Py_ssize_t nout, int k, int s, int pad,
                        bint include_pad) noexcept nogil:
    """Per output index along one axis: the count torch divides by (padding counted if asked,
    never the ceil_mode overhang past size + pad); 1 where a window holds nothing (sum is 0)."""
    cdef Py_ssize_t i, a, b
    for i in range(nout):
        a = i * s - pad
        b = min(a + k, size + pad)
        if not include_pad:
            a = max(a, 0)
            b = min(b, size)
        d[i] = <double>(b - a) if b > a else 1.0


def _avg_pool(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, const unsigned char[::1] workspace,
              int kh, int kw, int sh, int sw, int ph, int pw, bint count_include_pad, long divisor_override,
              int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3], i
    # workspace (workspace_bytes): the divisors, then each thread's accumulator line and ring
    cdef Py_ssize_t div_bytes = ws_round((OH + 2 * OW) * sizeof(double))
    cdef Py_ssize_t buf_bytes = ws_round(OW * sizeof(double))
    cdef Py_ssize_t ring_bytes = ws_round(fc_avg_ring_len(kh, W, OW) * sizeof(double))
    if N * C == 0 or OH * OW == 0:
        return
    cdef char *ws = ws_base(workspace, div_bytes + nthreads * (buf_bytes + ring_bytes))
    # divisor = row factor x column factor
    cdef double *hd = <double *>ws
    cdef double *wd = hd + OH
    cdef double *wi = wd + OW
    if divisor_override != 0:
        for i in range(OH):
            hd[i] = <double>divisor_override
        for i in range(OW):
            wd[i] = 1.0
    else:
        _avg_divisors(hd, H, OH, kh, sh, ph, count_include_pad)
        _avg_divisors(wd, W, OW, kw, sw, pw, count_include_pad)
    for i in range(OW):
        wi[i] = 1.0 / wd[i]
    cdef Py_ssize_t plane
    cdef int nt = _threads(N * C, H * W, nthreads)
    cdef double *buf
    cdef double *ring
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &out[0, 0, 0, 0]
    buf, ring = NULL, NULL  # (Cython makes them firstprivate: start them defined)
    with nogil, parallel(num_threads=nt):
        # per thread: an accumulator line and a ring of kh horizontal-sum lines (or, for 3x3/s1/p1,
        # a block of input rows converted to double)
        buf = <double *>(ws + div_bytes + threadid() * (buf_bytes + ring_bytes))
        ring = <double *>(ws + div_bytes + threadid() * (buf_bytes + ring_bytes) + buf_bytes)
        for plane in prange(N * C, schedule="static"):
            if floating is float:
                fc_avgpool_plane_f(xp + plane * H * W, yp + plane * OH * OW, H, W, OH, OW,
                                   kh, kw, sh, sw, ph, pw, hd, wd, wi, buf, ring)
            else:
                fc_avgpool_plane_d(xp + plane * H * W, yp + plane * OH * OW, H, W, OH, OW,
                                   kh, kw, sh, sw, ph, pw, hd, wd, wi, buf, ring)


def _adaptive_avg_pool(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t plane, i, j, r, q, h0, h1, w0, w1, HW = H * W
    cdef double s
    cdef const floating *xp
    if N * C == 0 or OH * OW == 0:
        return
    cdef int nt = _threads(N * C, HW, nthreads)
    cdef floating *yp = &out[0, 0, 0, 0]
    cdef Py_ssize_t g, P = N * C, cnt
    if OH == 1 and OW == 1:  # global average: one contiguous mean per plane, out is flat
        xp = &x[0, 0, 0, 0]
        for g in prange((P + 7) // 8, nogil=True, schedule="static", num_threads=nt):
            cnt = min(8, P - 8 * g)  # planes go 8 at a time (fc_means_*)
            if floating is float:
                fc_means_f(xp + 8 * g * HW, yp + 8 * g, cnt, HW)
            else:
                fc_means_d(xp + 8 * g * HW, yp + 8 * g, cnt, HW)
        return
    for plane in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        xp = &x[0, 0, 0, 0] + plane * HW
        for i in range(OH):
            h0 = (i * H) // OH
            h1 = ((i + 1) * H + OH - 1) // OH
            for j in range(OW):
                w0 = (j * W) // OW
                w1 = ((j + 1) * W + OW - 1) // OW
                s = 0
                for r in range(h0, h1):
                    for q in range(w0, w1):
                        s = s + xp[r * W + q]
                out[plane // C, plane % C, i, j] = <floating>(s / ((h1 - h0) * (w1 - w0)))
