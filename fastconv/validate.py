"""Argument checking and array normalisation — the only place that raises for bad input.

Every public op calls one function here, which returns C-contiguous float32/float64 NCHW
arrays and a frozen `ConvParams`/`PoolParams`. Kernels may then assume everything is valid.
Messages name the argument, what was given and what was expected. Inputs are never
modified: a non-contiguous, Fortran-ordered, negative-stride or read-only input is copied
(only if needed) into a fresh contiguous array.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence  # (typing.Sequence's isinstance is ~3x slower)
from typing import Any

import numpy as np

from . import memory
from .params import ConvParams, PoolParams

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Every integer argument (sizes, strides, padding, dilation, groups, divisor) must fit a C int:
# the Cython kernels take C ints, and it keeps all index arithmetic far from int64 overflow.
INT_MAX = 2**31 - 1
IntOrPair = int | Sequence[int]
_DTYPE_NAMES = {d: d.name for d in SUPPORTED_DTYPES}


def _dtype_name(dt: np.dtype) -> str:
    return _DTYPE_NAMES.get(dt) or dt.name  # (dtype.name alone costs ~2 us a call)


# --- arrays -----------------------------------------------------------------------------
def as_array(x: Any, name: str) -> np.ndarray:
    """Any array-like (NumPy array, torch CPU tensor, nested lists) → ndarray, dtype checked."""
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # torch tensor, without importing torch
        if getattr(x, "device", None) is not None and str(x.device) != "cpu":
            raise ValueError(f"{name} must be a CPU tensor, got one on device {x.device}")
        x = x.detach().resolve_conj().resolve_neg().numpy() if hasattr(x, "resolve_conj") else x.detach().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of float32 or float64, got {type(x).__name__}: {exc}") from None
    if arr.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got dtype {arr.dtype}")
    return arr


def _contiguous(arr: np.ndarray) -> np.ndarray:
    # ascontiguousarray returns the same object when it already is C-contiguous; kernels only
    # read their inputs, so a read-only array is fine as it is.
    return np.ascontiguousarray(arr)


def _copy_bytes(arr: np.ndarray | None) -> int:
    """Bytes `_contiguous` will allocate for ``arr`` (0 when it is used in place)."""
    return 0 if arr is None or arr.flags.c_contiguous else arr.nbytes


# --- scalar arguments --------------------------------------------------------------------
def _as_int(value: Any, name: str) -> int:
    if type(value) is int and -INT_MAX <= value <= INT_MAX:  # the common case, checked quickly
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(value).__name__} {value!r}") from None
    if abs(v) > INT_MAX:
        raise ValueError(f"{name} must be at most 2**31 - 1 in magnitude, got {v}")
    return v


def pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a sequence of 1 or 2 ints → (height, width), as torch's ``_pair``."""
    if type(value) is int:  # the common cases first: validation is most of a small pool's call
        v = _as_int(value, name)
        return v, v
    if type(value) is tuple and len(value) == 2:
        return _as_int(value[0], name), _as_int(value[1], name)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, Sequence) or isinstance(value, np.ndarray):
        items = list(value)
        if len(items) == 1:
            items = items * 2
        if len(items) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {len(items)} values {tuple(value)!r}")
        return _as_int(items[0], name), _as_int(items[1], name)
    v = _as_int(value, name)
    return v, v


def positive_pair(value: Any, name: str) -> tuple[int, int]:
    a, b = pair(value, name)
    if a < 1 or b < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return a, b


def nonnegative_pair(value: Any, name: str) -> tuple[int, int]:
    a, b = pair(value, name)
    if a < 0 or b < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return a, b


def _batched(arr: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """3-D (C, H, W) or 4-D (N, C, H, W) → 4-D, and whether a batch axis was added."""
    if arr.ndim == 4:
        return arr, False
    if arr.ndim == 3:
        return arr[None], True
    raise ValueError(f"{name} must be 3-D (C, H, W) or 4-D (N, C, H, W), got {arr.ndim}-D array of shape {arr.shape}")


# --- conv2d ------------------------------------------------------------------------------
def conv2d_args(
    input: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, ConvParams, bool]:
    """Validate a ``conv2d`` call → ``(x, w, b, params, unbatched)`` with contiguous arrays."""
    x = as_array(input, "input")
    w = as_array(weight, "weight")
    x4, unbatched = _batched(x, "input")
    if w.ndim != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in/groups, kH, kW), got {w.ndim}-D array of shape {w.shape}")
    if w.dtype != x.dtype:
        raise TypeError(f"weight dtype {w.dtype} does not match input dtype {x.dtype}; cast one of them")
    p = conv_shape(
        x4.shape, w.shape, stride, padding, dilation, groups, x.dtype, shape=x.shape, has_bias=bias is not None
    )
    b = None
    if bias is not None:
        b = as_array(bias, "bias")
        if b.dtype != x.dtype:
            raise TypeError(f"bias dtype {b.dtype} does not match input dtype {x.dtype}")
        if b.shape != (p.c_out,):
            raise ValueError(f"bias must be 1-D of length C_out={p.c_out}, got shape {b.shape}")
        b = _contiguous(b)

    memory.check_call("conv2d", p, x.dtype, (("input", _copy_bytes(x4)), ("weight", _copy_bytes(w))))
    return _contiguous(x4), _contiguous(w), b, p, unbatched


def conv_shape(
    xshape: tuple[int, ...],
    wshape: tuple[int, ...],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    dtype: np.dtype,
    input_name: str = "input",
    weight_name: str = "weight",
    shape: tuple[int, ...] | None = None,
    has_bias: bool = False,
) -> ConvParams:
    """The checks of a convolution's shapes and arguments (every pass) → its `ConvParams`.
    ``xshape`` is 4-D; ``shape`` is the shape to name in messages."""
    g = _as_int(groups, "groups")
    if g < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    n, c_in, h, wd = xshape
    if h < 1 or wd < 1:  # as torch: only the batch may be empty
        raise ValueError(f"{input_name} must have non-zero height and width, got shape {shape or tuple(xshape)}")
    c_out, c_in_g, kh, kw = wshape
    if min(c_out, c_in_g, kh, kw) < 1:
        raise ValueError(
            f"{weight_name} must have positive sizes (C_out, C_in/groups, kH, kW), got shape {tuple(wshape)}"
        )
    if c_in % g:
        raise ValueError(f"input channels C_in={c_in} must be divisible by groups={g}")
    if c_out % g:
        raise ValueError(f"{weight_name}.shape[0] (C_out={c_out}) must be divisible by groups={g}")
    if c_in != c_in_g * g:
        raise ValueError(
            f"{input_name} has C_in={c_in} channels (shape {shape or tuple(xshape)}) but {weight_name} expects "
            f"{weight_name}.shape[1] * groups = {c_in_g} * {g} = {c_in_g * g}"
        )
    s = positive_pair(stride, "stride")
    d = positive_pair(dilation, "dilation")
    pad = conv_padding(padding, s, d, (kh, kw))
    for axis, size, k, dil, before, after in (
        ("height", h, kh, d[0], pad[0], pad[1]),
        ("width", wd, kw, d[1], pad[2], pad[3]),
    ):
        effective = dil * (k - 1) + 1
        if effective > size + before + after:
            raise ValueError(
                f"kernel {axis} (dilation·(K−1)+1 = {effective}) is larger than the padded "
                f"input {axis} ({size} + {before} + {after} = {size + before + after})"
            )
    return ConvParams(n, c_in, h, wd, c_out, kh, kw, s, pad, d, g, _dtype_name(dtype), has_bias)


def conv_padding(
    padding: Any, stride: tuple[int, int], dilation: tuple[int, int], kernel: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``padding`` (int, pair, ``"valid"`` or ``"same"``) → (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' is only supported with stride 1 (as in torch), got stride={stride}")
            th, tw = (dil * (k - 1) for k, dil in zip(kernel, dilation))
            # torch puts the odd pixel after
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    ph, pw = nonnegative_pair(padding, "padding")
    return (ph, ph, pw, pw)


# --- pools -------------------------------------------------------------------------------
def _pool_input(input: Any) -> tuple[np.ndarray, bool]:
    x4, unbatched = _batched(as_array(input, "input"), "input")
    if min(x4.shape[1:]) < 1:
        raise ValueError(f"input must have non-zero channels, height and width, got shape {x4.shape[1:]}")
    return x4, unbatched


def _pool_window(
    kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: Any
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], bool]:
    k = positive_pair(kernel_size, "kernel_size")
    s = k if stride is None or (isinstance(stride, Sequence) and len(stride) == 0) else positive_pair(stride, "stride")
    pad = nonnegative_pair(padding, "padding")
    d = positive_pair(dilation, "dilation")
    for axis, kk, pp in (("height", k[0], pad[0]), ("width", k[1], pad[1])):
        if pp > kk // 2:  # torch's rule, for every pool (the undilated kernel size counts)
            raise ValueError(
                f"padding must be at most half of kernel_size along {axis} "
                f"({kk} // 2 = {kk // 2}), got padding={padding!r}, kernel_size={kernel_size!r}"
            )
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    return k, s, pad, d, bool(ceil_mode)


def _check_pool_output(p: PoolParams, x4: np.ndarray) -> None:
    if p.out_h < 1 or p.out_w < 1:
        raise ValueError(
            f"output size {p.out_h}x{p.out_w} is too small: kernel {p.kernel}, stride {p.stride}, "
            f"padding {p.padding}, dilation {p.dilation} over input {x4.shape[2]}x{x4.shape[3]}"
        )


def max_pool2d_args(
    input: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: Any
) -> tuple[np.ndarray, PoolParams, bool]:
    x4, unbatched = _pool_input(input)
    k, s, pad, d, ceil = _pool_window(kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = x4.shape
    p = PoolParams(
        "max", n, c, h, w, kernel=k, stride=s, padding=pad, dilation=d, ceil_mode=ceil, dtype=_dtype_name(x4.dtype)
    )
    _check_pool_output(p, x4)
    memory.check_call("max_pool2d", p, x4.dtype, (("input", _copy_bytes(x4)),))
    return _contiguous(x4), p, unbatched


def avg_pool2d_args(
    input: Any,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    ceil_mode: Any,
    count_include_pad: Any,
    divisor_override: Any,
) -> tuple[np.ndarray, PoolParams, bool]:
    x4, unbatched = _pool_input(input)
    k, s, pad, d, ceil = _pool_window(kernel_size, stride, padding, 1, ceil_mode)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"count_include_pad must be a bool, got {count_include_pad!r}")
    div = None
    if divisor_override is not None:
        div = _as_int(divisor_override, "divisor_override")
        if div == 0:
            raise ValueError("divisor_override must be a non-zero int, got 0")
    n, c, h, w = x4.shape
    p = PoolParams(
        "avg",
        n,
        c,
        h,
        w,
        kernel=k,
        stride=s,
        padding=pad,
        ceil_mode=ceil,
        count_include_pad=bool(count_include_pad),
        divisor_override=div,
        dtype=_dtype_name(x4.dtype),
    )
    _check_pool_output(p, x4)
    memory.check_call("avg_pool2d", p, x4.dtype, (("input", _copy_bytes(x4)),))
    return _contiguous(x4), p, unbatched


def adaptive_avg_pool2d_args(input: Any, output_size: Any) -> tuple[np.ndarray, PoolParams, bool]:
    x4, unbatched = _pool_input(input)
    n, c, h, w = x4.shape
    oh, ow = adaptive_output_size(output_size)
    size = (h if oh is None else oh, w if ow is None else ow)
    p = PoolParams("adaptive_avg", n, c, h, w, output_size=size, dtype=_dtype_name(x4.dtype))
    memory.check_call("adaptive_avg_pool2d", p, x4.dtype, (("input", _copy_bytes(x4)),))
    return _contiguous(x4), p, unbatched


def algo_name(algo: Any, known: Sequence[str]) -> str:
    if not isinstance(algo, str) or (algo != "auto" and algo not in known):
        raise ValueError(f"algo must be 'auto' or one of {', '.join(repr(k) for k in known)}; got {algo!r}")
    return algo


# --- layer objects (fastconv.layers) ------------------------------------------------------
def positive_int(value: Any, name: str) -> int:
    v = _as_int(value, name)
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return v


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def conv_layer_args(
    in_channels: Any,
    out_channels: Any,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    bias: Any,
    padding_mode: Any = "zeros",
) -> dict:
    """Check a ``Conv2d(...)`` constructor as torch does → normalised attributes.

    ``padding`` stays a string (``"same"``/``"valid"``) or becomes a pair, as on torch's module.
    """
    if padding_mode != "zeros":
        raise ValueError(f"padding_mode must be 'zeros' (the only mode fastconv runs), got {padding_mode!r}")
    c_in = positive_int(in_channels, "in_channels")
    c_out = positive_int(out_channels, "out_channels")
    g = positive_int(groups, "groups")
    if c_in % g:
        raise ValueError(f"in_channels={c_in} must be divisible by groups={g}")
    if c_out % g:
        raise ValueError(f"out_channels={c_out} must be divisible by groups={g}")
    k = positive_pair(kernel_size, "kernel_size")
    s = positive_pair(stride, "stride")
    d = positive_pair(dilation, "dilation")
    conv_padding(padding, s, d, k)  # raises for a bad padding
    pad = padding if isinstance(padding, str) else nonnegative_pair(padding, "padding")
    return dict(
        in_channels=c_in,
        out_channels=c_out,
        kernel_size=k,
        stride=s,
        padding=pad,
        dilation=d,
        groups=g,
        bias=flag(bias, "bias"),
    )


def layer_param(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A weight or bias assigned to a layer: float32/float64 of exactly ``shape`` → a private
    C-contiguous copy (so later changes to the caller's array or tensor cannot go stale)."""
    arr = as_array(value, name)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {arr.shape}")
    return np.array(arr, order="C", copy=True)


def max_pool_layer_args(
    kernel_size: Any, stride: Any, padding: Any, dilation: Any, return_indices: Any, ceil_mode: Any
) -> dict:
    k, s, pad, d, ceil = _pool_window(kernel_size, stride, padding, dilation, ceil_mode)
    return dict(
        kernel_size=k,
        stride=s,
        padding=pad,
        dilation=d,
        return_indices=flag(return_indices, "return_indices"),
        ceil_mode=ceil,
    )


def avg_pool_layer_args(
    kernel_size: Any, stride: Any, padding: Any, ceil_mode: Any, count_include_pad: Any, divisor_override: Any
) -> dict:
    k, s, pad, _, ceil = _pool_window(kernel_size, stride, padding, 1, ceil_mode)
    div = None
    if divisor_override is not None:
        div = _as_int(divisor_override, "divisor_override")
        if div == 0:
            raise ValueError("divisor_override must be a non-zero int, got 0")
    return dict(
        kernel_size=k,
        stride=s,
        padding=pad,
        ceil_mode=ceil,
        count_include_pad=flag(count_include_pad, "count_include_pad"),
        divisor_override=div,
    )


def adaptive_output_size(output_size: Any) -> tuple[int | None, int | None]:
    """``AdaptiveAvgPool2d(output_size)``: an int or a pair whose entries may be None (keep that size)."""
    if output_size is None or isinstance(output_size, (str, bytes)):
        raise TypeError(f"output_size must be an int or a pair of ints/None, got {output_size!r}")
    items = list(output_size) if isinstance(output_size, Sequence) else [output_size, output_size]
    if len(items) == 1:
        items = items * 2
    if len(items) != 2:
        raise ValueError(f"output_size must be an int or a pair, got {output_size!r}")
    oh, ow = (None if v is None else positive_int(v, "output_size") for v in items)
    return (oh, ow)


def inference_only(requires_grad: bool, grad_enabled: bool, name: str) -> None:
    """fastconv computes no gradients: refuse a call whose result autograd would need."""
    if requires_grad and grad_enabled:
        raise RuntimeError(
            f"{name} runs on fastconv, which computes no gradients, but its input requires "
            "grad; call the model under torch.no_grad() or torch.inference_mode()"
        )
