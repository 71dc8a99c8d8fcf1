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

What runs (all deterministic: bit-identical results for any `fastconv.set_num_threads`):

* weight gradient: the compiled ``conv_grad`` kernel (``pass_="weight_grad"``), bias gradient its
  ``bias_grad`` (double sums per channel);
* input gradient: for stride 1 on maps of at least ``conv_grad.IG_ROWS_MAX_P`` (256) output
  pixels (or dense layers with at least `FORWARD_MIN_BATCH_PIXELS` in the batch), a forward
  convolution of ``grad_output`` with the flipped, in/out-transposed weights and
  padding ``d·(k−1) − p`` through `fastconv.conv2d` (so the forward kernels' algorithms, Winograd
  included, and their accuracy contract apply); for strided layers and small maps the compiled
  ``conv_grad`` kernel (``pass_="input_grad"``); `input_grad_route` says which;
* pools: the compiled ``pool_grad`` kernels.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import plan, registry, threads, validate
from .params import ConvParams, PoolParams
from .validate import IntOrPair

__all__ = [
    "conv2d_input",
    "conv2d_weight",
    "conv2d_bias",
    "max_pool2d_input",
    "avg_pool2d_input",
    "adaptive_avg_pool2d_input",
]


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
    if (
        value is None
        or isinstance(value, (str, bytes))
        or not (isinstance(value, Sequence) or isinstance(value, np.ndarray))
    ):
        raise TypeError(f"{name} must be a sequence of {' or '.join(map(str, lengths))} ints, got {value!r}")
    items = list(value)
    if len(items) not in lengths:
        raise ValueError(
            f"{name} must have {' or '.join(map(str, lengths))} entries, got {len(items)}: {tuple(items)!r}"
        )
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
        raise MemoryError(
            f"{op}: the result {tuple(shape)} needs {need:,} bytes, over the limit of "
            f"{get_output_limit():,} bytes (fastconv.set_output_limit)"
        )


def _grad_output(grad_output: Any, dtype: np.dtype | None, ndim: int | None) -> np.ndarray:
    dy = validate.as_array(grad_output, "grad_output")
    if dtype is not None and dy.dtype != dtype:
        raise TypeError(f"grad_output dtype {dy.dtype} does not match the other arguments' dtype {dtype}")
    if ndim is not None and dy.ndim != ndim:
        raise ValueError(
            f"grad_output must be {ndim}-D like the {'input' if ndim else ''} it is the gradient "
            f"of, got {dy.ndim}-D array of shape {dy.shape}"
        )
    if dy.ndim not in (3, 4):
        raise ValueError(
            f"grad_output must be 3-D (C, H, W) or 4-D (N, C, H, W), got {dy.ndim}-D array of shape {dy.shape}"
        )
    return dy


def _expect_shape(dy: np.ndarray, want4: tuple[int, ...], unbatched: bool, name: str = "grad_output") -> np.ndarray:
    want = want4[1:] if unbatched else want4
    if dy.shape != tuple(want):
        raise ValueError(f"{name} must have the forward output's shape {tuple(want)}, got {dy.shape}")
    return np.ascontiguousarray(dy if not unbatched else dy[None])


# --- convolution: arguments ------------------------------------------------------------------
def _conv_params(
    n: int,
    c_in: int,
    h: int,
    w: int,
    wshape: tuple[int, ...],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    dtype: np.dtype,
    input_name: str,
    weight_name: str,
) -> ConvParams:
    """The forward call's checks (`validate.conv_shape`), on shapes."""
    return validate.conv_shape(
        (n, c_in, h, w), wshape, stride, padding, dilation, groups, dtype, input_name, weight_name
    )


def conv_input_args(
    input_size: Any, weight: Any, grad_output: Any, stride: Any, padding: Any, dilation: Any, groups: Any
) -> tuple[np.ndarray, np.ndarray, ConvParams, bool]:
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


def conv_weight_args(
    input: Any, weight_size: Any, grad_output: Any, stride: Any, padding: Any, dilation: Any, groups: Any
) -> tuple[np.ndarray, np.ndarray, ConvParams]:
    """Validate a `conv2d_weight` call → ``(x, dy, p)`` (4-D); ``p.pass_ == "weight_grad"``."""
    x = validate.as_array(input, "input")
    x4, unbatched = validate._batched(x, "input")
    dy = _grad_output(grad_output, x.dtype, x.ndim)
    wshape = _size(weight_size, "weight_size", (4,))
    n, c_in, h, w = x4.shape
    p = _conv_params(n, c_in, h, w, wshape, stride, padding, dilation, groups, x.dtype, "input", "weight_size")
    dy4 = _expect_shape(dy, p.out_shape, unbatched)
    return np.ascontiguousarray(x4), dy4, p.with_pass("weight_grad")


# --- convolution: public ops -------------------------------------------------------------------
def conv2d_input(
    input_size: Any,
    weight: Any,
    grad_output: Any,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
):
    """dL/dinput of ``conv2d(input, weight, stride=..., ...)`` given dL/doutput, as
    ``torch.nn.grad.conv2d_input``. ``input_size`` is the input's shape (3 or 4 ints, like
    ``grad_output``'s number of dimensions). Returns an array of that shape."""
    dy, w, p, unbatched = conv_input_args(input_size, weight, grad_output, stride, padding, dilation, groups)
    _check_alloc("conv2d_input", p.input_shape, p.dtype)
    dx = _input_grad(dy, w, p)
    return _like(dx[0] if unbatched else dx, grad_output, weight)


def conv2d_weight(
    input: Any,
    weight_size: Any,
    grad_output: Any,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
):
    """dL/dweight of ``conv2d(input, weight, ...)`` given dL/doutput, as
    ``torch.nn.grad.conv2d_weight``; ``weight_size`` is (C_out, C_in/groups, kH, kW)."""
    x, dy, p = conv_weight_args(input, weight_size, grad_output, stride, padding, dilation, groups)
    dw = _weight_grad(x, dy, p)
    return _like(dw, grad_output, input)


def conv2d_bias(grad_output: Any):
    """dL/dbias of a conv2d: ``grad_output`` summed over batch, height and width → (C_out,).
    Summed in float64 and rounded once (so float32 results are as exact as float32 allows)."""
    dy = _grad_output(grad_output, None, None)
    dy4 = np.ascontiguousarray(dy if dy.ndim == 4 else dy[None])
    db = np.empty(dy4.shape[1], dtype=dy4.dtype)
    if dy4.shape[0] == 0 or dy4.shape[2] * dy4.shape[3] == 0:
        db[...] = 0
    else:
        _conv_kernel().bias_grad(dy4, db, threads.get_num_threads())
    return _like(db, grad_output)


# --- convolution: implementations ---------------------------------------------------------------
def _conv_kernel() -> Any:
    """The compiled module both convolution passes share (for its blocking constants)."""
    return registry.GRADS["conv2d_input"].kernel


# Dense stride-1 layers whose batch holds at least this many output pixels take the forward route
# even on maps under IG_ROWS_MAX_P pixels: the forward kernels (Winograd) then have rows enough to
# win. 1 thread, thread time: 256ch 14x14 batch 8 24.8 ms conv_grad vs 12.1 forward, batch 16 48.1
# vs 20.2; 512ch 7x7 batch 16 44.9 vs 38.6, batch 8 24.3 vs 27.5 (below the threshold); batch 1
# 256ch 14x14 4.1 vs 4.1, 512ch 7x7 7.1 vs 9.3.
FORWARD_MIN_BATCH_PIXELS = 768


def input_grad_route(p: ConvParams) -> str:
    """How `conv2d_input` computes layer ``p``: ``"forward"`` (stride 1 on maps of at least
    ``conv_grad.IG_ROWS_MAX_P`` output pixels, or dense layers whose batch has at least
    `FORWARD_MIN_BATCH_PIXELS` output pixels: a forward convolution of grad_output through
    `fastconv.conv2d`, see `_forward_input_grad`) or ``"conv_grad"`` (the compiled kernel: strided
    layers and small maps, where the forward kernels run below their speed — measured on ResNet-18's
    7x7 and 14x14 layers, 2 threads: 512ch 7x7 3.4 ms forward vs 1.1 conv_grad). A function of the
    layer alone, so the result does not depend on the thread count."""
    if p.stride != (1, 1):
        return "conv_grad"
    pixels = p.out_h * p.out_w
    if pixels >= _conv_kernel().IG_ROWS_MAX_P or (p.groups == 1 and p.n * pixels >= FORWARD_MIN_BATCH_PIXELS):
        return "forward"
    return "conv_grad"


def forward_equivalent(dy: np.ndarray, w: np.ndarray, p: ConvParams):
    """The stride-1 input gradient as a forward convolution: ``(dy', w', kwargs)`` with
    ``conv2d(dy', w', **kwargs) == dL/dx``. w' is w flipped in both taps and transposed per group
    ([C_in, C_out/groups, kH, kW]); the padding is ``d·(k−1) − p`` per side — where that is negative
    or differs between the two sides, dy is cropped/padded explicitly (dy' is then a copy) so that
    the rest is a symmetric padding `conv2d` takes."""
    g, cig, cog = p.groups, p.c_in_per_group, p.c_out_per_group
    wt = np.ascontiguousarray(
        w.reshape(g, cog, cig, p.kh, p.kw)[:, :, :, ::-1, ::-1]
        .transpose(0, 2, 1, 3, 4)
        .reshape(p.c_in, cog, p.kh, p.kw)
    )
    eh, ew = p.dilation[0] * (p.kh - 1), p.dilation[1] * (p.kw - 1)
    want = (eh - p.pad[0], eh - p.pad[1], ew - p.pad[2], ew - p.pad[3])
    bh, bw = max(0, min(want[0], want[1])), max(0, min(want[2], want[3]))
    extra = (want[0] - bh, want[1] - bh, want[2] - bw, want[3] - bw)
    if any(extra):
        t, b_, l_, r = extra
        dy = dy[:, :, max(0, -t) : dy.shape[2] - max(0, -b_), max(0, -l_) : dy.shape[3] - max(0, -r)]
        dy = np.pad(dy, ((0, 0), (0, 0), (max(0, t), max(0, b_)), (max(0, l_), max(0, r))))
    return dy, wt, dict(stride=1, padding=(bh, bw), dilation=p.dilation, groups=g)


def _forward_input_grad(dy: np.ndarray, w: np.ndarray, p: ConvParams) -> np.ndarray:
    from .functional import conv2d

    dyf, wt, kw = forward_equivalent(dy, w, p)
    return np.asarray(conv2d(dyf, wt, None, **kw))


def _input_grad(dy: np.ndarray, w: np.ndarray, p: ConvParams) -> np.ndarray:
    if p.n == 0:
        return np.zeros(p.input_shape, dtype=p.dtype)
    if input_grad_route(p) == "forward":
        return _forward_input_grad(dy, w, p)
    k = registry.GRADS["conv2d_input"]
    nt = threads.get_num_threads()
    ws = plan.workspace(k, p, nt)
    dx = np.empty(p.input_shape, dtype=p.dtype)
    k.run(dy, k.prepare(w, None, p), p, dx, ws, nt)
    return dx


def _weight_grad(x: np.ndarray, dy: np.ndarray, p: ConvParams) -> np.ndarray:
    dw = np.empty(p.weight_shape, dtype=p.dtype)
    if p.n == 0:
        dw[...] = 0
        return dw
    k = registry.GRADS["conv2d_weight"]
    nt = threads.get_num_threads()
    k.run(x, None, p, dw, plan.workspace(k, p, nt), nt, grad_output=dy)
    return dw


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
        raise ValueError(
            f"output size {p.out_h}x{p.out_w} is too small: kernel {p.kernel}, stride {p.stride}, "
            f"padding {p.padding}, dilation {p.dilation} over input {p.h}x{p.w}"
        )


def max_pool_input_args(
    input: Any,
    grad_output: Any,
    indices: Any,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: Any,
):
    """Validate a `max_pool2d_input` call → ``(x or None, dy, idx or None, p, unbatched)``."""
    x = validate.as_array(input, "input")
    x4, unbatched = validate._batched(x, "input")
    if min(x4.shape[1:]) < 1:
        raise ValueError(f"input must have non-zero channels, height and width, got shape {x4.shape[1:]}")
    k, s, pad, d, ceil = validate._pool_window(kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = x4.shape
    p = PoolParams(
        "max",
        n,
        c,
        h,
        w,
        kernel=k,
        stride=s,
        padding=pad,
        dilation=d,
        ceil_mode=ceil,
        dtype=validate._dtype_name(x4.dtype),
        pass_="input_grad",
    )
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
            raise ValueError(
                f"indices must be flat positions h*W + w in [0, {p.h * p.w}) of the input plane, got {int(bad)}"
            )
    return np.ascontiguousarray(x4), dy, idx, p, unbatched


def avg_pool_input_args(
    input_size: Any,
    grad_output: Any,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    ceil_mode: Any,
    count_include_pad: Any,
    divisor_override: Any,
):
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
    p = PoolParams(
        "avg",
        *shape,
        kernel=k,
        stride=s,
        padding=pad,
        ceil_mode=ceil,
        count_include_pad=bool(count_include_pad),
        divisor_override=div,
        dtype=validate._dtype_name(dy.dtype),
        pass_="input_grad",
    )
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
    p = PoolParams(
        "adaptive_avg", *shape, output_size=(oh, ow), dtype=validate._dtype_name(dy.dtype), pass_="input_grad"
    )
    return _expect_shape(dy, p.out_shape, unbatched), p, unbatched


# --- pools: public ops ------------------------------------------------------------------------------
def max_pool2d_input(
    input: Any,
    grad_output: Any,
    indices: Any,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
):
    """dL/dinput of ``max_pool2d``: each output's gradient goes to the input pixel it took.

    ``indices`` are those of ``fastconv.max_pool2d(..., return_indices=True)`` (or torch's):
    flat ``h*W + w`` per plane. ``indices=None`` recomputes them from ``input`` exactly as torch
    picks the argmax (first maximum in row-major window order; a NaN wins). Where windows overlap
    a pixel's gradients are summed in output order (row-major), as torch does."""
    x, dy, idx, p, unbatched = max_pool_input_args(
        input, grad_output, indices, kernel_size, stride, padding, dilation, ceil_mode
    )
    _check_alloc("max_pool2d_input", p.input_shape, p.dtype)
    if idx is None:  # the kernel recomputes the argmax from the input and the pooled values
        from .functional import max_pool2d

        dx = _pool_run(dy, p, input=x, pooled=max_pool2d(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode))
    else:
        dx = _pool_run(dy, p, idx)
    return _like(dx[0] if unbatched else dx, grad_output, input)


def avg_pool2d_input(
    input_size: Any,
    grad_output: Any,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
):
    """dL/dinput of ``avg_pool2d``: each output's gradient divided by its divisor (torch's rule:
    padding counted if ``count_include_pad``, never the ``ceil_mode`` overhang; or
    ``divisor_override``) and spread over the window's real input pixels."""
    dy, p, unbatched = avg_pool_input_args(
        input_size, grad_output, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    _check_alloc("avg_pool2d_input", p.input_shape, p.dtype)
    dx = _pool_run(dy, p)
    return _like(dx[0] if unbatched else dx, grad_output)


def adaptive_avg_pool2d_input(input_size: Any, grad_output: Any):
    """dL/dinput of ``adaptive_avg_pool2d``; the output size is ``grad_output``'s."""
    dy, p, unbatched = adaptive_avg_pool_input_args(input_size, grad_output)
    _check_alloc("adaptive_avg_pool2d_input", p.input_shape, p.dtype)
    dx = _pool_run(dy, p)
    return _like(dx[0] if unbatched else dx, grad_output)


# --- pools: implementations (kernels/pool_grad.pyx) -------------------------------------------------
def _pool_run(dy: np.ndarray, p: PoolParams, indices: np.ndarray | None = None, **recompute: Any) -> np.ndarray:
    """The pool's input gradient; a max pool's argmax comes from ``indices``, or is recomputed in
    the kernel from ``input=`` and ``pooled=`` (the forward's input and values)."""
    dx = np.empty(p.input_shape, dtype=p.dtype)
    if dx.size:
        k, nt = registry.GRADS["pool_input"], threads.get_num_threads()
        k.run(dy, None, p, dx, plan.workspace(k, p, nt), nt, indices=indices, **recompute)
    return dx


def _max_input_grad(dy: np.ndarray, idx: np.ndarray, p: PoolParams) -> np.ndarray:
    return _pool_run(dy, p, idx)


def _avg_input_grad(dy: np.ndarray, p: PoolParams) -> np.ndarray:
    return _pool_run(dy, p)


_adaptive_input_grad = _avg_input_grad  # (layers.py names both; the kernel reads p.kind)
