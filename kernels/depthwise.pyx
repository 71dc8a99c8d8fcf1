# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Depthwise convolution (one input and one output channel per group: MobileNet, EfficientNet,
ShuffleNet) read in place from NCHW, for any kernel size, stride, padding and dilation.

The design (details in ``depthwise_body.h``): each (image, channel) plane is computed row by row,
a vector of output columns at a time, 4 rows together (independent FMA chains); each tap of a
row is a masked load straight from the input row (stride 1), two masked loads and an even-lane
permute (stride 2) or a masked gather (larger strides). The masks drop the columns in the
padding, and rows in the padding read a row of zeros, so there is no packed or padded copy of
the input. That copy is what the direct kernel's general path pays per plane, and on small maps
and strided layers it costs more than the arithmetic (mobilenetv2's 576-channel stride-2 layer on
14x14: 207 us against ONNX Runtime's 34, 1 thread); ``benchmarks/NOTES.md`` has the numbers.

Stride-1 layers whose output is the input's size ("same" padding: every stride-1 depthwise layer
of MobileNetV2 and EfficientNet) run each plane flat instead: output position ``o`` of the
flattened plane reads input ``o + offset(tap)``, so whole vectors run across row ends and a 7x7
plane is 4 vectors instead of 7 part-filled rows; the per-vector, per-tap lane masks that keep
the taps inside the plane depend on the layer shape only and are built once by ``prepare``
(1x960x7x7 3x3: 75-86 us row by row, 48 flat; 8x576x14x14: 1008 and 565; 1 thread).

Planes are shared out over the threads in contiguous runs (a static schedule: every plane costs
the same). The workspace holds one row of zeros and the load masks of every column chunk (they depend
on the chunk and the tap column only, so one table serves every plane and row).
Builds without AVX-512 run a scalar loop of the same contract (``vector`` is then False and
``auto`` keeps depthwise layers on ``direct``).
"""
from cython cimport floating
from libc.stddef cimport size_t
import functools

import numpy as np

from fastconv import contract

include "_shared.pxi"

cdef extern from "depthwise_impl.h" nogil:
    int FC_DW_VECTOR
    size_t fc_depthwise_tap_bytes(Py_ssize_t OW, int kw)
    void fc_depthwise_f32(const float *x, const float *w, const float *b, float *y, const float *zrow,
                          void *tapbuf, const Py_ssize_t *flat_off, const void *flat_mask, Py_ssize_t NP,
                          Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int kh, int kw,
                          int sh, int sw, int ph, int pw, int dh, int dw, int nthreads)
    void fc_depthwise_f64(const double *x, const double *w, const double *b, double *y, const double *zrow,
                          void *tapbuf, const Py_ssize_t *flat_off, const void *flat_mask, Py_ssize_t NP,
                          Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, int kh, int kw,
                          int sh, int sw, int ph, int pw, int dh, int dw, int nthreads)

vector = bool(FC_DW_VECTOR)

cdef enum:
    _INT_MAX = 2147483647
    # below this many multiply-adds a call runs on one thread: waking the second costs more than
    # it saves (see benchmarks/NOTES.md)
    _MIN_PARALLEL_MACS = 32768


def supports(p, **options) -> str | None:
    why = contract.refuse(p, epilogue=("bias",), options=options, dtypes=("float32", "float64"))
    if why is not None:
        return why
    if not (p.groups == p.c_in == p.c_out):
        return f"runs depthwise layers only (groups == in == out channels), got groups={p.groups}, " \
               f"{p.c_in} -> {p.c_out} channels"
    if min(p.kh, p.kw, *p.stride, *p.dilation) < 1 or min(p.pad) < 0:
        return "kernel, stride and dilation must be >= 1 and padding >= 0"
    if max(p.kh, p.kw, *p.stride, *p.dilation, *p.pad, p.w) > _INT_MAX // 64:
        return "kernel, stride, dilation, padding and width must fit a C int with room for tap offsets"
    if p.out_h < 1 or p.out_w < 1:
        return f"output size {p.out_h}x{p.out_w} is empty"
    return None


def _threads(p, int nthreads) -> int:
    return nthreads if p.macs >= _MIN_PARALLEL_MACS and p.n * p.c_in > 1 else 1


def _parts(p):
    """(bytes of the zero row, bytes of the tap table), each a whole number of cache lines."""
    return ws_round(p.w * p.itemsize), ws_round(<Py_ssize_t>fc_depthwise_tap_bytes(p.out_w, p.kw))


def workspace_bytes(p, nthreads, **options) -> int:
    zrow, taps = _parts(p)
    return zrow + taps + WS_ALIGN - 1


def _flat(p) -> bool:
    """Stride 1 with the output the input's size ("same" padding): planes run flat
    (fc_dw_flat_plane), whole vectors across row ends."""
    return vector and p.stride == (1, 1) and (p.out_h, p.out_w) == (p.h, p.w)


def _flat_tables(p):
    """(offsets, masks) of the flat planes: input offset of each tap from an output position, and
    for each output vector and tap the bit mask of lanes whose tap falls inside the plane."""
    return _tables(p.h, p.w, p.kh, p.kw, p.dilation, (p.pad[0], p.pad[2]), 64 // p.itemsize)


@functools.lru_cache(maxsize=64)
def _tables(h, w, kh, kw, dilation, pad, vl):
    # remembered per shape: `fastconv.conv2d` prepares on every call, and a 28x28 5x5 layer's
    # table is ~20,000 lane tests (read-only arrays, so sharing them is safe)
    ky, kx = np.divmod(np.arange(kh * kw), kw)
    dy, dx = ky * dilation[0] - pad[0], kx * dilation[1] - pad[1]
    nv = -(-h * w // vl)
    o = np.arange(nv * vl).reshape(nv, 1, vl)
    oy, ox = np.divmod(o, w)
    iy, ix = oy + dy[None, :, None], ox + dx[None, :, None]
    inside = (o < h * w) & (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    bits = (inside.astype(np.uint64) << np.arange(vl, dtype=np.uint64)).sum(axis=2)
    off = np.ascontiguousarray(dy * w + dx, dtype=np.intp)
    masks = np.ascontiguousarray(bits.astype(np.uint16 if vl == 16 else np.uint8).reshape(-1))
    off.flags.writeable = masks.flags.writeable = False
    return off, masks


def prepare(w, b, p, **options):
    """Weights → ``[channel][kh*kw]`` (contiguous), the bias as given (or None), and the flat
    planes' tap offsets and masks (`_flat_tables`; None when the layer runs row by row)."""
    wp = np.ascontiguousarray(w).reshape(p.c_out, p.kh * p.kw)
    bp = None if b is None else np.ascontiguousarray(b)
    off, masks = _flat_tables(p) if _flat(p) else (None, None)
    return wp, bp, off, masks


def run(x, packed, p, out, workspace, nthreads, **options) -> None:
    wp, bp, off, masks = packed
    cdef int nt = _threads(p, nthreads)
    zrow_bytes, tap_bytes = _parts(p)
    team(nt)
    _run(x, wp, bp, off, masks, out, workspace, zrow_bytes, zrow_bytes + tap_bytes, p.kh, p.kw, p.stride[0],
         p.stride[1], p.pad[0], p.pad[2], p.dilation[0], p.dilation[1], nt)


def _run(const floating[:, :, :, ::1] x, const floating[:, ::1] wp, const floating[::1] bp,
         const Py_ssize_t[::1] off, masks, floating[:, :, :, ::1] out, const unsigned char[::1] workspace,
         Py_ssize_t zrow_bytes, Py_ssize_t need, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
         int nt):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3], i
    if N == 0 or C == 0:
        return
    cdef char *ws = ws_base(workspace, need)
    cdef floating *zrow = <floating *>ws
    for i in range(W):
        zrow[i] = 0
    cdef const floating *b = NULL
    cdef const Py_ssize_t *flat_off = NULL
    cdef const void *flat_mask = NULL
    cdef const unsigned char[::1] mask_bytes
    if bp is not None:
        b = &bp[0]
    if off is not None:
        flat_off = &off[0]
        mask_bytes = masks.view(np.uint8)
        flat_mask = &mask_bytes[0]
    with nogil:
        if floating is float:
            fc_depthwise_f32(&x[0, 0, 0, 0], &wp[0, 0], b, &out[0, 0, 0, 0], zrow, ws + zrow_bytes,
                             flat_off, flat_mask, N * C, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, nt)
        else:
            fc_depthwise_f64(&x[0, 0, 0, 0], &wp[0, 0], b, &out[0, 0, 0, 0], zrow, ws + zrow_bytes,
                             flat_off, flat_mask, N * C, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, nt)
