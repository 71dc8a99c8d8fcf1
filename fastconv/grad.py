"""Gradients of conv2d and the pools, with the signatures of ``torch.nn.grad`` (and the pools'
backward functions torch keeps internal).

    conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1)
    conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1)
    conv2d_bias(grad_output)
    max_pool2d_input(input, grad_output, indices, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode=False)
    avg_pool2d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, divisor_override=None)
    adaptive_avg_pool2d_input(input_size, grad_output)

Arguments are those of the forward op, plus ``grad_output`` (dL/dy, the shape of the forward
output) and the size of the array whose gradient is asked for. Like the forward ops they take
NumPy arrays or torch CPU tensors (a tensor in → a tensor out), float32 or float64, 3-D
(unbatched) or 4-D, and an empty batch; ``padding`` may be an int, a pair, ``"valid"`` or
``"same"`` (which ``torch.nn.grad`` itself does not take). Validation is as strict as the forward
ops': a ValueError/TypeError names the argument; in particular ``grad_output`` must have exactly
the forward output's shape for the given sizes. Inputs are never modified.

This first version computes with NumPy (per-tap GEMMs and strided scatters); see the module
``_impl`` notes below for what runs compiled.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import validate
from .params import ConvParams, PoolParams, adaptive_bounds
from .validate import IntOrPair

__all__ = ["conv2d_input", "conv2d_weight", "conv2d_bias", "max_pool2d_input", "avg_pool2d_input",
           "adaptive_avg_pool2d_input"]


# --- helpers ------------------------------------------------------------------------------
def _is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def _like(result: np.ndarray, *originals: Any):
    """``result`` as a torch tensor when any of ``originals`` is one, else as it is."""
    if any(_is_torch(o) for o in originals):
        import torch
        return torch.from_numpy(result)
    return result


def _size(value: Any, name: str, lengths: tuple[int, ...]) -> tuple[int, ...]:
    """A shape argument (tuple, list, torch.Size, ndarray of ints) → tuple of non-negative ints."""
    if value is None or isinstance(value, (str, bytes)) or not (
            isinstance(value, Sequence) or isinstance(value, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of {' or '.join(map(str, lengths))} ints, got {value!r}")
    items = list(value)
    if len(items) not in lengths:
        raise ValueError(f"{name} must have {' or '.join(map(str, lengths))} entries, got {len(items)}: {tuple(items)!r}")
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name} must hold ints, got bool in {tuple(items)!r}")
        try:
            iv = operator.index(v)
        except TypeError:
            raise TypeError(f"{name} must hold ints, got {type(v).__name__} {v!r}") from None
        if iv < 0 or iv > validate.INT_MAX:
            raise ValueError(f"{name} entries must be in [0, 2**31 - 1], got {tuple(items)!r}")
        out.append(iv)
    return tuple(out)


def _check_alloc(op: str, shape: tuple[int, ...], dtype: Any) -> None:
    from . import get_output_limit
    need = math.prod(shape) * np.dtype(dtype).itemsize
    if need > get_output_limit():
        raise MemoryError(f"{op}: the result {tuple(shape)} needs {need:,} bytes, over the limit of "
                          f"{get_output_limit():,} bytes (fastconv.set_output_limit)")


def _grad_output(grad_output: Any, dtype: np.dtype | None, ndim: int | None) -> np.ndarray:
    dy = validate.as_array(grad_output, "grad_output")
    if dtype is not None and dy.dtype != dtype:
        raise TypeError(f"grad_output dtype {dy.dtype} does not match the other arguments' dtype {dtype}")
    if ndim is not None and dy.ndim != ndim:
        raise ValueError(f"grad_output must be {ndim}-D like the {'input' if ndim else ''} it is the gradient "
                         f"of, got {dy.ndim}-D array of shape {dy.shape}")
    if dy.ndim not in (3, 4):
        raise ValueError(f"grad_output must be 3-D (C, H, W) or 4-D (N, C, H, W), got {dy.ndim}-D array "
                         f"of shape {dy.shape}")
    return dy


def _expect_shape(dy: np.ndarray, want4: tuple[int, ...], unbatched: bool, name: str = "grad_output") -> np.ndarray:
    want = want4[1:] if unbatched else want4
    if dy.shape != tuple(want):
        raise ValueError(f"{name} must have the forward output's shape {tuple(want)}, got {dy.shape}")
    return np.ascontiguousarray(dy if not unbatched else dy[None])


# --- convolution: arguments ------------------------------------------------------------------
def _conv_params(n: int, c_in: int, h: int, w: int, wshape: tuple[int, ...], stride: Any, padding: Any,
                 dilation: Any, groups: Any, dtype: np.dtype, input_name: str, weight_name: str) -> ConvParams:
    """The checks of `validate.conv2d_args`, on shapes."""
    g = validate._as_int(groups, "groups")
    if g < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if h < 1 or w < 1:
        raise ValueError(f"{input_name} must have non-zero height and width, got {(n, c_in, h, w)}")
    c_out, c_in_g, kh, kw = wshape
    if min(c_out, c_in_g, kh, kw) < 1:
        raise ValueError(f"{weight_name} must have positive sizes (C_out, C_in/groups, kH, kW), got {tuple(wshape)}")
    if c_in % g:
        raise ValueError(f"input channels C_in={c_in} must be divisible by groups={g}")
    if c_out % g:
        raise ValueError(f"{weight_name}[0] (C_out={c_out}) must be divisible by groups={g}")
    if c_in != c_in_g * g:
        raise ValueError(f"{input_name} has C_in={c_in} channels but {weight_name} expects "
                         f"{weight_name}[1] * groups = {c_in_g} * {g} = {c_in_g * g}")
    s = validate.positive_pair(stride, "stride")
    d = validate.positive_pair(dilation, "dilation")
    pad = validate.conv_padding(padding, s, d, (kh, kw))
    for axis, size, k, dil, before, after in (("height", h, kh, d[0], pad[0], pad[1]),
                                               ("width", w, kw, d[1], pad[2], pad[3])):
        effective = dil * (k - 1) + 1
        if effective > size + before + after:
            raise ValueError(f"kernel {axis} (dilation·(K−1)+1 = {effective}) is larger than the padded "
                             f"input {axis} ({size} + {before} + {after} = {size + before + after})")
    return ConvParams(n, c_in, h, w, c_out, kh, kw, s, pad, d, g, validate._dtype_name(dtype), False)


def conv_input_args(input_size: Any, weight: Any, grad_output: Any, stride: Any, padding: Any,
                    dilation: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, ConvParams, bool]:
    """Validate a `conv2d_input` call → ``(dy, w, p, unbatched)``; ``p.pass_ == "input_grad"``."""
    w = validate.as_array(weight, "weight")
    dy = _grad_output(grad_output, w.dtype, None)
    size = _size(input_size, "input_size", (dy.ndim,))
    unbatched = dy.ndim == 3
    n, c_in, h, wd = (1,) + size if unbatched else size
    if w.ndim != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in/groups, kH, kW), got {w.ndim}-D array of shape {w.shape}")
    p = _conv_params(n, c_in, h, wd, w.shape, stride, padding, dilation, groups, w.dtype, "input_size", "weight.shape")
    dy4 = _expect_shape(dy, p.out_shape, unbatched)
    return dy4, np.ascontiguousarray(w), p.with_pass("input_grad"), unbatched


def conv_weight_args(input: Any, weight_size: Any, grad_output: Any, stride: Any, padding: Any,
                     dilation: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, ConvParams]:
    """Validate a `conv2d_weight` call → ``(x, dy, p)`` (4-D); ``p.pass_ == "weight_grad"``."""
    x = validate.as_array(input, "input")
    x4, unbatched = validate._batched(x, "input")
    dy = _grad_output(grad_output, x.dtype, x.ndim)
    wshape = _size(weight_size, "weight_size", (4,))
    p = _conv_params(*x4.shape, wshape, stride, padding, dilation, groups, x.dtype, "input", "weight_size")
    dy4 = _expect_shape(dy, p.out_shape, unbatched)
    return np.ascontiguousarray(x4), dy4, p.with_pass("weight_grad")


# --- convolution: public ops -------------------------------------------------------------------
def conv2d_input(input_size: Any, weight: Any, grad_output: Any, stride: IntOrPair = 1,
                 padding: IntOrPair | str = 0, dilation: IntOrPair = 1, groups: int = 1):
    """dL/dinput of ``conv2d(input, weight, stride=..., ...)`` given dL/doutput, as
    ``torch.nn.grad.conv2d_input``. ``input_size`` is the input's shape (3 or 4 ints, like
    ``grad_output``'s number of dimensions). Returns an array of that shape."""
    dy, w, p, unbatched = conv_input_args(input_size, weight, grad_output, stride, padding, dilation, groups)
    _check_alloc("conv2d_input", p.input_shape, p.dtype)
    dx = _input_grad(dy, w, p)
    return _like(dx[0] if unbatched else dx, grad_output, weight)


def conv2d_weight(input: Any, weight_size: Any, grad_output: Any, stride: IntOrPair = 1,
                  padding: IntOrPair | str = 0, dilation: IntOrPair = 1, groups: int = 1):
    """dL/dweight of ``conv2d(input, weight, ...)`` given dL/doutput, as
    ``torch.nn.grad.conv2d_weight``; ``weight_size`` is (C_out, C_in/groups, kH, kW)."""
    x, dy, p = conv_weight_args(input, weight_size, grad_output, stride, padding, dilation, groups)
    dw = _weight_grad(x, dy, p)
    return _like(dw, grad_output, input)


def conv2d_bias(grad_output: Any):
    """dL/dbias of a conv2d: ``grad_output`` summed over batch, height and width → (C_out,).
    Summed in float64 and rounded once (so float32 results are as exact as float32 allows)."""
    dy = _grad_output(grad_output, None, None)
    axes = (1, 2) if dy.ndim == 3 else (0, 2, 3)
    db = dy.sum(axis=axes, dtype=np.float64).astype(dy.dtype)
    return _like(db, grad_output)


# --- convolution: implementations ---------------------------------------------------------------
def _input_grad(dy: np.ndarray, w: np.ndarray, p: ConvParams) -> np.ndarray:
    """dX: per group and tap, Wᵀ·dY scattered into the padded input at the tap's strided offsets."""
    (pt, pb, pl, pr), (sh, sw), (dh, dw) = p.pad, p.stride, p.dilation
    dxp = np.zeros((p.n, p.c_in, p.h + pt + pb, p.w + pl + pr), dtype=p.dtype)
    if p.n == 0:
        return dxp[:, :, pt:pt + p.h, pl:pl + p.w].copy()
    cig, cog, oh, ow = p.c_in_per_group, p.c_out_per_group, p.out_h, p.out_w
    for g in range(p.groups):
        dyg = dy[:, g * cog:(g + 1) * cog].reshape(p.n, cog, oh * ow)
        for u in range(p.kh):
            for v in range(p.kw):
                wt = np.ascontiguousarray(w[g * cog:(g + 1) * cog, :, u, v].T)  # [cig, cog]
                contrib = np.matmul(wt, dyg).reshape(p.n, cig, oh, ow)
                dxp[:, g * cig:(g + 1) * cig, u * dh:u * dh + sh * (oh - 1) + 1:sh,
                    v * dw:v * dw + sw * (ow - 1) + 1:sw] += contrib
    return np.ascontiguousarray(dxp[:, :, pt:pt + p.h, pl:pl + p.w])


def _weight_grad(x: np.ndarray, dy: np.ndarray, p: ConvParams) -> np.ndarray:
    """dW[p, d, u, v] = Σ_{n,i,j} dY[n, p, i, j] · X_pad[n, d, i·S + u·D, j·S + v·D]."""
    (pt, pb, pl, pr), (sh, sw), (dh, dw) = p.pad, p.stride, p.dilation
    dw_ = np.zeros(p.weight_shape, dtype=p.dtype)
    if p.n == 0:
        return dw_
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    cig, cog, oh, ow = p.c_in_per_group, p.c_out_per_group, p.out_h, p.out_w
    for g in range(p.groups):
        dyg = dy[:, g * cog:(g + 1) * cog].transpose(1, 0, 2, 3).reshape(cog, -1)  # [cog, N·P]
        for u in range(p.kh):
            for v in range(p.kw):
                tap = xp[:, g * cig:(g + 1) * cig, u * dh:u * dh + sh * (oh - 1) + 1:sh,
                         v * dw:v * dw + sw * (ow - 1) + 1:sw]
                tap = tap.transpose(1, 0, 2, 3).reshape(cig, -1)  # [cig, N·P]
                dw_[g * cog:(g + 1) * cog, :, u, v] = dyg @ tap.T
    return dw_


# --- pools: arguments ----------------------------------------------------------------------------
def _pool_size(input_size: Any, ndim: int) -> tuple[tuple[int, int, int, int], bool]:
    size = _size(input_size, "input_size", (ndim,))
    unbatched = ndim == 3
    n, c, h, w = (1,) + size if unbatched else size
    if min(c, h, w) < 1:
        raise ValueError(f"input_size must have non-zero channels, height and width, got {size}")
    return (n, c, h, w), unbatched


def _check_pool_output(p: PoolParams) -> None:
    if p.out_h < 1 or p.out_w < 1:
        raise ValueError(f"output size {p.out_h}x{p.out_w} is too small: kernel {p.kernel}, stride {p.stride}, "
                         f"padding {p.padding}, dilation {p.dilation} over input {p.h}x{p.w}")


def max_pool_input_args(input: Any, grad_output: Any, indices: Any, kernel_size: Any, stride: Any,
                        padding: Any, dilation: Any, ceil_mode: Any):
    """Validate a `max_pool2d_input` call → ``(x or None, dy, idx or None, p, unbatched)``."""
    x = validate.as_array(input, "input")
    x4, unbatched = validate._batched(x, "input")
    if min(x4.shape[1:]) < 1:
        raise ValueError(f"input must have non-zero channels, height and width, got shape {x4.shape[1:]}")
    k, s, pad, d, ceil = validate._pool_window(kernel_size, stride, padding, dilation, ceil_mode)
    p = PoolParams("max", *x4.shape, kernel=k, stride=s, padding=pad, dilation=d, ceil_mode=ceil,
                   dtype=validate._dtype_name(x4.dtype), pass_="input_grad")
    _check_pool_output(p)
    dy = _expect_shape(_grad_output(grad_output, x.dtype, x.ndim), p.out_shape, unbatched)
    idx = None
    if indices is not None:
        if hasattr(indices, "detach") and hasattr(indices, "numpy"):
            if str(getattr(indices, "device", "cpu")) != "cpu":
                raise ValueError(f"indices must be a CPU tensor, got one on device {indices.device}")
            indices = indices.detach().numpy()
        ia = np.asarray(indices)
        if ia.dtype.kind not in "iu":
            raise TypeError(f"indices must be an integer array (int64, as max_pool2d returns), got dtype {ia.dtype}")
        idx = _expect_shape(ia, p.out_shape, unbatched, "indices").astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= p.h * p.w):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise ValueError(f"indices must be flat positions h*W + w in [0, {p.h * p.w}) of the input plane, "
                             f"got {int(bad)}")
    return np.ascontiguousarray(x4), dy, idx, p, unbatched


def avg_pool_input_args(input_size: Any, grad_output: Any, kernel_size: Any, stride: Any, padding: Any,
                        ceil_mode: Any, count_include_pad: Any, divisor_override: Any):
    dy = _grad_output(grad_output, None, None)
    shape, unbatched = _pool_size(input_size, dy.ndim)
    k, s, pad, _, ceil = validate._pool_window(kernel_size, stride, padding, 1, ceil_mode)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"count_include_pad must be a bool, got {count_include_pad!r}")
    div = None
    if divisor_override is not None:
        div = validate._as_int(divisor_override, "divisor_override")
        if div == 0:
            raise ValueError("divisor_override must be a non-zero int, got 0")
    p = PoolParams("avg", *shape, kernel=k, stride=s, padding=pad, ceil_mode=ceil,
                   count_include_pad=bool(count_include_pad), divisor_override=div,
                   dtype=validate._dtype_name(dy.dtype), pass_="input_grad")
    _check_pool_output(p)
    return _expect_shape(dy, p.out_shape, unbatched), p, unbatched


def adaptive_avg_pool_input_args(input_size: Any, grad_output: Any):
    dy = _grad_output(grad_output, None, None)
    shape, unbatched = _pool_size(input_size, dy.ndim)
    oh, ow = dy.shape[-2:]
    if oh < 1 or ow < 1:
        raise ValueError(f"grad_output must have a non-zero output height and width, got shape {dy.shape}")
    if dy.shape[-3] != shape[1]:
        raise ValueError(f"grad_output has {dy.shape[-3]} channels but input_size has {shape[1]}")
    p = PoolParams("adaptive_avg", *shape, output_size=(oh, ow), dtype=validate._dtype_name(dy.dtype),
                   pass_="input_grad")
    return _expect_shape(dy, p.out_shape, unbatched), p, unbatched


# --- pools: public ops ------------------------------------------------------------------------------
def max_pool2d_input(input: Any, grad_output: Any, indices: Any, kernel_size: IntOrPair,
                     stride: IntOrPair | None = None, padding: IntOrPair = 0, dilation: IntOrPair = 1,
                     ceil_mode: bool = False):
    """dL/dinput of ``max_pool2d``: each output's gradient goes to the input pixel it took.

    ``indices`` are those of ``fastconv.max_pool2d(..., return_indices=True)`` (or torch's):
    flat ``h*W + w`` per plane. ``indices=None`` recomputes them from ``input`` exactly as torch
    picks the argmax (first maximum in row-major window order; a NaN wins). Where windows overlap
    a pixel's gradients are summed in output order (row-major), as torch does."""
    x, dy, idx, p, unbatched = max_pool_input_args(input, grad_output, indices, kernel_size, stride, padding,
                                                   dilation, ceil_mode)
    _check_alloc("max_pool2d_input", p.input_shape, p.dtype)
    if idx is None:
        from .functional import max_pool2d
        idx = np.ascontiguousarray(max_pool2d(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode,
                                              return_indices=True)[1])
    dx = _max_input_grad(dy, idx, p)
    return _like(dx[0] if unbatched else dx, grad_output, input)


def avg_pool2d_input(input_size: Any, grad_output: Any, kernel_size: IntOrPair, stride: IntOrPair | None = None,
                     padding: IntOrPair = 0, ceil_mode: bool = False, count_include_pad: bool = True,
                     divisor_override: int | None = None):
    """dL/dinput of ``avg_pool2d``: each output's gradient divided by its divisor (torch's rule:
    padding counted if ``count_include_pad``, never the ``ceil_mode`` overhang; or
    ``divisor_override``) and spread over the window's real input pixels."""
    dy, p, unbatched = avg_pool_input_args(input_size, grad_output, kernel_size, stride, padding, ceil_mode,
                                           count_include_pad, divisor_override)
    _check_alloc("avg_pool2d_input", p.input_shape, p.dtype)
    dx = _avg_input_grad(dy, p)
    return _like(dx[0] if unbatched else dx, grad_output)


def adaptive_avg_pool2d_input(input_size: Any, grad_output: Any):
    """dL/dinput of ``adaptive_avg_pool2d``; the output size is ``grad_output``'s."""
    dy, p, unbatched = adaptive_avg_pool_input_args(input_size, grad_output)
    _check_alloc("adaptive_avg_pool2d_input", p.input_shape, p.dtype)
    dx = _adaptive_input_grad(dy, p)
    return _like(dx[0] if unbatched else dx, grad_output)


# --- pools: implementations ---------------------------------------------------------------------
def _max_input_grad(dy: np.ndarray, idx: np.ndarray, p: PoolParams) -> np.ndarray:
    dx = np.zeros(p.input_shape, dtype=p.dtype)
    planes = p.n * p.c
    if planes == 0:
        return dx
    off = (np.arange(planes, dtype=np.int64) * (p.h * p.w))[:, None] + idx.reshape(planes, -1)
    np.add.at(dx.reshape(-1), off.reshape(-1), dy.reshape(-1))  # sequential: output order
    return dx


def _avg_window(size: int, out: int, k: int, s: int, pad: int, include_pad: bool):
    start = np.arange(out, dtype=np.int64) * s - pad
    end = np.minimum(start + k, size + pad)
    pool = end - start
    start_c, end_c = np.maximum(start, 0), np.minimum(end, size)
    return start_c, end_c, (pool if include_pad else end_c - start_c)


def _avg_input_grad(dy: np.ndarray, p: PoolParams) -> np.ndarray:
    dx = np.zeros(p.input_shape, dtype=p.dtype)
    if dx.size == 0:
        return dx
    hs, he, hd = _avg_window(p.h, p.out_h, p.kernel[0], p.stride[0], p.padding[0], p.count_include_pad)
    ws, we, wd = _avg_window(p.w, p.out_w, p.kernel[1], p.stride[1], p.padding[1], p.count_include_pad)
    div = (np.full((p.out_h, p.out_w), p.divisor_override, dtype=np.float64) if p.divisor_override is not None
           else np.outer(hd, wd).astype(np.float64))
    div[div == 0] = 1  # an empty window (never read below)
    g = (dy / div.astype(p.dtype)).astype(p.dtype, copy=False)
    for i in range(p.out_h):
        if hs[i] >= he[i]:
            continue
        for j in range(p.out_w):
            if ws[j] >= we[j]:
                continue
            dx[:, :, hs[i]:he[i], ws[j]:we[j]] += g[:, :, i, j][:, :, None, None]
    return dx


def _adaptive_input_grad(dy: np.ndarray, p: PoolParams) -> np.ndarray:
    dx = np.zeros(p.input_shape, dtype=p.dtype)
    if dx.size == 0:
        return dx
    hs, he = adaptive_bounds(p.h, p.out_h)
    ws, we = adaptive_bounds(p.w, p.out_w)
    for i in range(p.out_h):
        for j in range(p.out_w):
            # torch divides by the window's height, then its width
            g = dy[:, :, i, j] / dy.dtype.type(he[i] - hs[i]) / dy.dtype.type(we[j] - ws[j])
            dx[:, :, hs[i]:he[i], ws[j]:we[j]] += g[:, :, None, None]
    return dx
