# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Max, average and adaptive-average pooling (Cython + OpenMP).

Pooling is pure data movement, so it is written ahead of time (no JIT warm-up) and
parallelised over (image, channel) planes with OpenMP ``prange``, releasing the GIL. The
rules are torch's, so results match ``torch.nn.functional`` exactly:

* max: padding never wins; a NaN in the window wins (``val > max or isnan(val)``), and the
  index reported is the flat ``h*W + w`` position in the input plane;
* avg: the divisor counts padding (``count_include_pad``) but not the ``ceil_mode`` overhang
  past ``size + padding``; ``divisor_override`` replaces it; sums are accumulated in double;
* adaptive: window ``[⌊i·H/Hₒ⌋, ⌈(i+1)·H/Hₒ⌉)``.
"""
from cython.parallel cimport prange
from libc.math cimport isnan, INFINITY
cimport numpy as cnp

ctypedef fused floating:
    float
    double


def max_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, cnp.int64_t[:, :, :, ::1] idx,
               bint want_idx, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
               int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t plane, n, c, i, j, r, q, hstart, wstart, best_i
    cdef int u, v
    cdef double best, val
    for plane in prange(N * C, nogil=True, schedule="static", num_threads=nthreads):
        n = plane // C
        c = plane % C
        for i in range(OH):
            hstart = i * sh - ph
            for j in range(OW):
                wstart = j * sw - pw
                best = -INFINITY
                best_i = -1
                for u in range(kh):
                    r = hstart + u * dh
                    if r < 0 or r >= H:
                        continue
                    for v in range(kw):
                        q = wstart + v * dw
                        if q < 0 or q >= W:
                            continue
                        val = x[n, c, r, q]
                        if val > best or isnan(val) or best_i < 0:
                            best = val
                            best_i = r * W + q
                out[n, c, i, j] = <floating>best
                if want_idx:
                    idx[n, c, i, j] = best_i


def avg_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int kh, int kw, int sh, int sw,
               int ph, int pw, bint count_include_pad, long divisor_override, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t plane, n, c, i, j, r, q, h0, h1, w0, w1, pool, h0c, h1c, w0c, w1c
    cdef double s, div
    for plane in prange(N * C, nogil=True, schedule="static", num_threads=nthreads):
        n = plane // C
        c = plane % C
        for i in range(OH):
            h0 = i * sh - ph
            h1 = min(h0 + kh, H + ph)
            for j in range(OW):
                w0 = j * sw - pw
                w1 = min(w0 + kw, W + pw)
                pool = (h1 - h0) * (w1 - w0)
                h0c = max(h0, 0)
                h1c = min(h1, H)
                w0c = max(w0, 0)
                w1c = min(w1, W)
                if h0c >= h1c or w0c >= w1c:
                    out[n, c, i, j] = 0
                    continue
                s = 0
                for r in range(h0c, h1c):
                    for q in range(w0c, w1c):
                        s = s + x[n, c, r, q]
                if divisor_override != 0:
                    div = divisor_override
                elif count_include_pad:
                    div = pool
                else:
                    div = (h1c - h0c) * (w1c - w0c)
                out[n, c, i, j] = <floating>(s / div)


def adaptive_avg_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t plane, n, c, i, j, r, q, h0, h1, w0, w1
    cdef double s
    for plane in prange(N * C, nogil=True, schedule="static", num_threads=nthreads):
        n = plane // C
        c = plane % C
        for i in range(OH):
            h0 = (i * H) // OH
            h1 = ((i + 1) * H + OH - 1) // OH
            for j in range(OW):
                w0 = (j * W) // OW
                w1 = ((j + 1) * W + OW - 1) // OW
                s = 0
                for r in range(h0, h1):
                    for q in range(w0, w1):
                        s = s + x[n, c, r, q]
                out[n, c, i, j] = <floating>(s / ((h1 - h0) * (w1 - w0)))
