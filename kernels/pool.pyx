# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Max, average and adaptive-average pooling (Cython + OpenMP around C row kernels).

Pooling is pure data movement, so it is compiled ahead of time (no JIT warm-up) and
parallelised over (image, channel) planes with OpenMP ``prange`` (static schedule: planes are
equal work; fewer threads when there are under ~16k elements per thread), releasing the GIL.
The per-plane work is in ``pool_impl.h``: separable windows as two row-wise passes, horizontal
first (each input row reduced once into a ring of lines, interior columns straight from ``x``,
border columns with their taps clipped), then vertical over the ring; the hot loops have no
per-element bounds branch and vectorise (gcc, -O3 -march=native), the global mean sums each plane
in 8 double lanes, 8 planes at a time, and reduces the 8 planes' lanes together (``fc_means_*``).

Measured (this machine, 1 thread, C loop over the planes, random input, best of 50–300 repeats):
max 3x3/s2/p1 1x64x112x112 210 us (15 GB/s), max 2x2/s2 1x64x224x224 420–550 us (23–30 GB/s), max
3x3/s2 8x96x54x54 520–600 us (15–17 GB/s), avg 3x3/s1/p1 1x256x28x28 147 us (5.4 GB/s; since
session 4 a vertical-first plane kernel for 3x3/s1/p1, 90-98 us with the shapes unknown at compile
time where the ring kernel took 182-232; from Python, 1 thread, 121 -> 91 us), global average
8x2048x7x7 122 us (26 GB/s); since session 6 the 8-plane groups, C harness 1 thread 92-106 us where
one plane at a time took 164-191, from Python 2 threads 0.058 ms against torch's 0.111 (it was
1.11x torch): converting float to double is now the bound, and keeping the sums in float32
(measured 1.5x faster again, L2-resident 2x) would break the double-sum contract below. Since
session 5 float32 max 3x3/s2 planes (padding 0 or 1) take a register kernel instead
(``fc_maxpool_3x3s2_f``, AVX-512: only the outputs are stored): 1x64x112x112 from Python, 1 thread,
94-96 us wherever the arrays lie, where the ring path took 181-256 us by placement (its stored row
maxima aliased the input rows mod 4 KiB); 2 threads 0.071 ms against ONNX Runtime's 0.118. torch
2.13 runs the four windowed pools at 0.3–1 GB/s. Variants measured and dropped: vertical-first max
(reduce rows into a line, then re-load it at shifted offsets) 2287 us on the 54-wide AlexNet planes
— the shifted loads of just-stored vectors stall store forwarding on short rows; avg through a
staged double line buffer 284 us (same stall); the plain-C global-mean loop stayed scalar (237 us);
a one-line NaN-max select with `||` compiled to branches that mispredict on random data (max pools
3x slower than on sorted data). Since session 6 float32 avg 3x3/s1/p1 planes up to 32 wide run in
registers (``fc_avg3s1p1_f``, AVX-512: rows converted once and kept, lane shifts for the
neighbours, only the outputs stored; bitwise the flat kernel's results): C harness 1 thread
256x28x28 65-87 us where the flat kernel took 115-139 in the same runs, 256x14x14 18 against 41;
from Python (interleaved with an ONNX Runtime session, medians of 15) 1x256x28x28 75 us at 1
thread, 43 at 2, against ONNX Runtime's 131 and 79.

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
from cython.parallel cimport prange, parallel
from libc.math cimport isnan, INFINITY
from libc.stdlib cimport malloc, free
cimport numpy as cnp
import numpy as np

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
    """Fewer threads when there is too little work to pay for waking one (~16k elements each)."""
    cdef Py_ssize_t useful = (planes * plane_elems) // 16384
    if useful < 1:
        useful = 1
    return <int>min(<Py_ssize_t>nthreads, min(useful, planes))


def max_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, cnp.int64_t[:, :, :, ::1] idx,
               bint want_idx, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
               int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    if N * C == 0 or OH * OW == 0:
        return
    if want_idx:
        _max_pool_indices(x, out, idx, kh, kw, sh, sw, ph, pw, dh, dw, nthreads)
        return
    cdef Py_ssize_t plane, L = ((kh - 1) * dh + 1) * OW  # ring of horizontal-max lines
    cdef int nt = _threads(N * C, H * W, nthreads)
    cdef floating *buf
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &out[0, 0, 0, 0]
    with nogil, parallel(num_threads=nt):
        buf = <floating *> malloc(L * sizeof(floating))
        for plane in prange(N * C, schedule="static"):
            if floating is float:
                fc_maxpool_plane_f(xp + plane * H * W, yp + plane * OH * OW, H, W, OH, OW,
                                   kh, kw, sh, sw, ph, pw, dh, dw, buf)
            else:
                fc_maxpool_plane_d(xp + plane * H * W, yp + plane * OH * OW, H, W, OH, OW,
                                   kh, kw, sh, sw, ph, pw, dh, dw, buf)
        free(buf)


cdef void _max_pool_indices(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                            cnp.int64_t[:, :, :, ::1] idx, int kh, int kw, int sh, int sw, int ph,
                            int pw, int dh, int dw, int nthreads) noexcept:
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


def avg_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int kh, int kw, int sh, int sw,
               int ph, int pw, bint count_include_pad, long divisor_override, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3], i
    if N * C == 0 or OH * OW == 0:
        return
    # divisor = row factor x column factor; plain C arrays (numpy temporaries cost ~8 us a call)
    cdef double *hd = <double *> malloc((OH + 2 * OW) * sizeof(double))
    cdef double *wd = hd + OH
    cdef double *wi = wd + OW
    if hd == NULL:
        raise MemoryError()
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
    with nogil, parallel(num_threads=nt):
        # per thread: an accumulator line and a ring of kh horizontal-sum lines (or, for 3x3/s1/p1,
        # a block of input rows converted to double)
        buf = <double *> malloc(OW * sizeof(double))
        ring = <double *> malloc(fc_avg_ring_len(kh, W, OW) * sizeof(double))
        for plane in prange(N * C, schedule="static"):
            if floating is float:
                fc_avgpool_plane_f(xp + plane * H * W, yp + plane * OH * OW, H, W, OH, OW,
                                   kh, kw, sh, sw, ph, pw, hd, wd, wi, buf, ring)
            else:
                fc_avgpool_plane_d(xp + plane * H * W, yp + plane * OH * OW, H, W, OH, OW,
                                   kh, kw, sh, sw, ph, pw, hd, wd, wi, buf, ring)
        free(buf)
        free(ring)
    free(hd)


def adaptive_avg_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int nthreads):
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
