# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Input gradients of the three pools (Cython + OpenMP): max (scatter by the argmax indices), average
and adaptive average.

Contract (`fastconv.contract`): ``supports(p)`` runs ``pass_ == "input_grad"`` only;
``workspace_bytes`` is 0; ``prepare`` returns None; ``run(dy, None, p, dx, workspace, nthreads,
indices=idx)`` writes dL/dx (``p.input_shape``) from ``dy`` = dL/dy (``p.out_shape``), with
``indices`` (int64, ``p.out_shape``, flat ``h*W + w`` per plane) for ``p.kind == "max"``, or
instead ``input=x`` and ``pooled=y`` (the forward's input and values): the argmax is then
recomputed window by window, by torch's rule, in the same pass that scatters the gradient. That
costs a read of the input and saves the forward from writing indices (a row-major index scan costs
~15x a max pool's values-only kernel), so a training step that does not ask for the indices never
makes them.

Each (image, channel) plane is one task (planes in parallel, static schedule, fewer threads for
small inputs as the forward pools do); inside a plane the outputs are visited in row-major order
and each adds its share to the input pixels it came from — torch's own loop — so pixels that several
windows share (overlapping windows, ties, several indices naming one pixel) sum their gradients in
one fixed order: the results are bit-identical for any thread count, and equal to torch's CPU
backward for contiguous NCHW tensors (same order, same divisions: ``dy / divisor`` for avg,
``dy / window height / window width`` for adaptive, ``dy / (H·W)`` for a global one). Indices are
not checked here (`fastconv.grad` checks they lie in the plane).
"""
from cython.parallel cimport prange
from libc.string cimport memset
cimport numpy as cnp


from fastconv import contract

cdef extern from "pool_grad_impl.h" nogil:
    void fpg_max_recompute_plane_f(const float *x, const float *y, const float *g, float *d, Py_ssize_t H,
                                   Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int kh, int kw, int sh, int sw, int ph,
                                   int pw, int dh, int dw)
    void fpg_max_recompute_plane_d(const double *x, const double *y, const double *g, double *d, Py_ssize_t H,
                                   Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int kh, int kw, int sh, int sw, int ph,
                                   int pw, int dh, int dw)

ctypedef fused floating:
    float
    double

KINDS = ("max", "avg", "adaptive_avg")


def supports(p, **opts):
    r = contract.refuse(p, passes=("input_grad",), epilogue=())
    if r is None and p.kind not in KINDS:
        return f"pool kind {p.kind!r} is not one it runs ({', '.join(KINDS)})"
    return r


def workspace_bytes(p, nthreads, **opts) -> int:
    return 0


def prepare(w, b, p, **opts):
    return None


def run(x, packed, p, out, workspace, nthreads, indices=None, input=None, pooled=None, **opts):
    """``x`` is grad_output, ``out`` the input gradient (see the module docstring)."""
    nthreads = max(1, int(nthreads))
    if p.kind == "max":
        if indices is not None:
            max_pool2d_input(x, indices, out, nthreads)
        elif input is not None:
            max_pool2d_input_recompute(input, pooled, x, out, *p.kernel, *p.stride, *p.padding, *p.dilation, nthreads)
        else:
            raise ValueError("the max pool's input gradient needs indices= or input=")
    elif p.kind == "avg":
        avg_pool2d_input(x, out, p.kernel[0], p.kernel[1], p.stride[0], p.stride[1], p.padding[0], p.padding[1],
                         p.count_include_pad, p.divisor_override or 0, nthreads)
    else:
        adaptive_avg_pool2d_input(x, out, nthreads)


cdef inline int _threads(Py_ssize_t planes, Py_ssize_t plane_elems, int nthreads) noexcept nogil:
    """Fewer threads when there is too little work to pay for waking one (~16k elements each)."""
    cdef Py_ssize_t useful = (planes * plane_elems) // 16384
    if useful < 1:
        useful = 1
    return <int>min(<Py_ssize_t>nthreads, min(useful, planes))


def max_pool2d_input(const floating[:, :, :, ::1] dy, const cnp.int64_t[:, :, :, ::1] idx,
                     floating[:, :, :, ::1] dx, int nthreads):
    """dx[plane][idx[o]] += dy[o] for each output o of the plane, in row-major order."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], HW = dx.shape[2] * dx.shape[3]
    cdef Py_ssize_t OHW = dy.shape[2] * dy.shape[3], plane, o
    cdef floating *d
    cdef const floating *g
    cdef const cnp.int64_t *ix
    if N * C == 0:
        return
    cdef int nt = _threads(N * C, HW + OHW, nthreads)
    for plane in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        d = &dx[0, 0, 0, 0] + plane * HW
        g = &dy[0, 0, 0, 0] + plane * OHW
        ix = &idx[0, 0, 0, 0] + plane * OHW
        memset(d, 0, HW * sizeof(floating))
        for o in range(OHW):
            d[ix[o]] += g[o]


def max_pool2d_input_recompute(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] y,
                               const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx, int kh, int kw, int sh,
                               int sw, int ph, int pw, int dh, int dw, int nthreads):
    """dx[plane][argmax(o)] += dy[o] for each output o of the plane, in row-major order, the argmax
    found by torch's rule from the input ``x`` and the pooled ``y`` (pool_grad_impl.h)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3], plane
    if N * C == 0:
        return
    cdef int nt = _threads(N * C, 2 * H * W + OH * OW, nthreads)
    for plane in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        if floating is float:
            fpg_max_recompute_plane_f(&x[0, 0, 0, 0] + plane * H * W, &y[0, 0, 0, 0] + plane * OH * OW,
                                      &dy[0, 0, 0, 0] + plane * OH * OW,
                                      &dx[0, 0, 0, 0] + plane * H * W, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw)
        else:
            fpg_max_recompute_plane_d(&x[0, 0, 0, 0] + plane * H * W, &y[0, 0, 0, 0] + plane * OH * OW,
                                      &dy[0, 0, 0, 0] + plane * OH * OW,
                                      &dx[0, 0, 0, 0] + plane * H * W, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw)


def avg_pool2d_input(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx, int kh, int kw, int sh, int sw,
                     int ph, int pw, bint count_include_pad, long divisor_override, int nthreads):
    """Each output's dy / divisor added over its window's real pixels (torch's divisor: padding
    counted with count_include_pad, never the ceil_mode overhang past size + padding)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3], plane, i, j, r, q, a0, a1, b0, b1, c0, c1, e0, e1, div
    cdef floating *d
    cdef const floating *g
    cdef floating delta
    if N * C == 0:
        return
    cdef int nt = _threads(N * C, H * W + OH * OW, nthreads)
    for plane in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        d = &dx[0, 0, 0, 0] + plane * H * W
        g = &dy[0, 0, 0, 0] + plane * OH * OW
        memset(d, 0, H * W * sizeof(floating))
        for i in range(OH):
            a0 = i * sh - ph                # window rows with padding, without the ceil overhang
            a1 = min(a0 + kh, H + ph)
            c0 = max(a0, 0)                 # ... and its real rows
            c1 = min(a1, H)
            if c0 >= c1:
                continue
            for j in range(OW):
                b0 = j * sw - pw
                b1 = min(b0 + kw, W + pw)
                e0 = max(b0, 0)
                e1 = min(b1, W)
                if e0 >= e1:
                    continue
                if divisor_override != 0:
                    div = divisor_override
                elif count_include_pad:
                    div = (a1 - a0) * (b1 - b0)
                else:
                    div = (c1 - c0) * (e1 - e0)
                delta = g[i * OW + j] / <floating>div
                for r in range(c0, c1):
                    for q in range(e0, e1):
                        d[r * W + q] += delta


def adaptive_avg_pool2d_input(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx, int nthreads):
    """Each output's dy / window height / window width added over its window
    ``[⌊i·H/Hₒ⌋, ⌈(i+1)·H/Hₒ⌉)``; a global pool (1x1 output) fills the plane with dy / (H·W), as
    torch (which runs it as a mean) does."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3], plane, i, j, r, q, h0, h1, w0, w1
    cdef floating *d
    cdef const floating *g
    cdef floating delta
    if N * C == 0:
        return
    cdef int nt = _threads(N * C, H * W + OH * OW, nthreads)
    for plane in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        d = &dx[0, 0, 0, 0] + plane * H * W
        g = &dy[0, 0, 0, 0] + plane * OH * OW
        if OH == 1 and OW == 1:  # torch runs a global pool as a mean: its gradient is dy / (H·W)
            delta = g[0] / <floating>(H * W)
            for r in range(H * W):
                d[r] = delta
            continue
        memset(d, 0, H * W * sizeof(floating))
        for i in range(OH):
            h0 = (i * H) // OH
            h1 = ((i + 1) * H + OH - 1) // OH
            for j in range(OW):
                w0 = (j * W) // OW
                w1 = ((j + 1) * W + OW - 1) // OW
                delta = g[i * OW + j] / <floating>(h1 - h0) / <floating>(w1 - w0)
                for r in range(h0, h1):
                    for q in range(w0, w1):
                        d[r * W + q] += delta
