"""``torch.nn.functional``-compatible ops on NumPy arrays (and torch CPU tensors).

Each op is the same four steps: validate and describe (`fastconv.validate`, which also checks
the memory budget before copying anything, `fastconv.memory`) → choose the kernel
(`fastconv.rules`, `fastconv.registry`) → run it into a freshly allocated output
(`fastconv.plan`). The output has the input's dtype and array type: NumPy in → NumPy
out, torch tensor in → torch tensor out (sharing the result's memory, no copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import memory, plan, rules, validate
from .validate import IntOrPair


def _like(result: np.ndarray, original: Any):
    """Return ``result`` in the array type of ``original`` (torch tensors stay torch tensors)."""
    if type(original).__module__.startswith("torch"):
        import torch

        return torch.from_numpy(result)
    return result


def conv2d(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    algo: str = "auto",
):
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    input : array_like or torch.Tensor
        ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``, float32 or float64, any strides.
    weight : array_like or torch.Tensor
        ``(C_out, C_in / groups, kH, kW)``, the input's dtype.
    bias : array_like or torch.Tensor, optional
        ``(C_out,)``.
    stride, dilation : int or (int, int)
    padding : int, (int, int), ``"valid"`` or ``"same"``
        Zeros on each side; ``"same"`` (stride 1 only) puts the odd pixel after, as torch does.
    groups : int
        ``C_in`` and ``C_out`` must both be divisible by it.
    algo : str
        ``"auto"`` (a pure function of the layer, `fastconv.rules.choose`) or a name in
        `fastconv.algorithms()`; each has its accuracy contract (README).

    Returns
    -------
    ndarray or torch.Tensor
        ``(N, C_out, H_out, W_out)`` (3-D for a 3-D input), the input's dtype and array type.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it, the value given and what was expected; ``ValueError``
        also when ``algo`` cannot run this layer (with the reason).
    MemoryError
        Before allocating, when input copies + output exceed `fastconv.set_output_limit` or the
        kernel's scratch exceeds `fastconv.set_workspace_limit`.

    Examples
    --------
    >>> x = np.ones((1, 2, 5, 5), np.float32)
    >>> w = np.ones((3, 2, 3, 3), np.float32)
    >>> y = conv2d(x, w, padding=1)
    >>> y.shape, float(y[0, 0, 2, 2]), float(y[0, 0, 0, 0])
    ((1, 3, 5, 5), 18.0, 8.0)
    """
    x, w, b, p, unbatched = validate.conv2d_args(input, weight, bias, stride, padding, dilation, groups)
    # the weights are prepared for this call alone: auto weighs that (fastconv.Conv2d keeps them)
    out = plan.Plan(rules.select(p, algo, one_shot=True), w, b, p).run(x)
    return _like(out[0] if unbatched else out, input)


def max_pool2d(
    input: Any,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """Max pooling, as ``torch.nn.functional.max_pool2d``.

    Parameters
    ----------
    input : array_like or torch.Tensor
        ``(N, C, H, W)`` or ``(C, H, W)``, float32 or float64.
    kernel_size, stride, padding, dilation : int or (int, int)
        ``stride`` defaults to ``kernel_size``; ``padding`` at most half the kernel.
    ceil_mode : bool
        Round the output size up (a window may not start inside the right padding).
    return_indices : bool
        Also return the argmax of each window as a flat ``h * W + w`` int64 index (torch's
        choice: the first maximum in row-major order; NaN counts as the maximum).

    Returns
    -------
    ndarray or torch.Tensor, or a pair of them with ``return_indices``

    Raises
    ------
    TypeError, ValueError, MemoryError
        As `conv2d`.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> y, i = max_pool2d(x, 2, return_indices=True)
    >>> y[0, 0].tolist(), i[0, 0].tolist()
    ([[5.0, 7.0], [13.0, 15.0]], [[5, 7], [13, 15]])
    """
    x, p, unbatched = validate.max_pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode)
    if return_indices:
        memory.check_call("max_pool2d", p, np.int64)
    out = np.empty(p.out_shape, dtype=x.dtype)
    idx = np.empty(p.out_shape, dtype=np.int64) if return_indices else None
    plan.run_pool(x, p, out, idx)
    if unbatched:
        out, idx = out[0], (idx[0] if idx is not None else None)
    if idx is None:  # return_indices is false
        return _like(out, input)
    return _like(out, input), _like(idx, input)


def avg_pool2d(
    input: Any,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
):
    """Average pooling, as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    input : array_like or torch.Tensor
        ``(N, C, H, W)`` or ``(C, H, W)``, float32 or float64.
    kernel_size, stride, padding : int or (int, int)
        ``stride`` defaults to ``kernel_size``.
    ceil_mode : bool
    count_include_pad : bool
        Divide by the whole window, padding included (torch's default), or by its valid part.
    divisor_override : int, optional
        Divide every window's sum by this instead.

    Returns
    -------
    ndarray or torch.Tensor

    Raises
    ------
    TypeError, ValueError, MemoryError
        As `conv2d`.

    Examples
    --------
    >>> avg_pool2d(np.ones((1, 1, 4, 4), np.float32), 3, stride=1, padding=1)[0, 0, 0].tolist()
    [0.4444444477558136, 0.6666666865348816, 0.6666666865348816, 0.4444444477558136]
    """
    x, p, unbatched = validate.avg_pool2d_args(
        input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    out = np.empty(p.out_shape, dtype=x.dtype)
    plan.run_pool(x, p, out)
    return _like(out[0] if unbatched else out, input)


def adaptive_avg_pool2d(input: Any, output_size: IntOrPair):
    """Adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Parameters
    ----------
    input : array_like or torch.Tensor
        ``(N, C, H, W)`` or ``(C, H, W)``, float32 or float64.
    output_size : int or (int or None, int or None)
        ``1`` is global average pooling; ``None`` keeps that input size.

    Returns
    -------
    ndarray or torch.Tensor

    Raises
    ------
    TypeError, ValueError, MemoryError
        As `conv2d`.

    Examples
    --------
    >>> adaptive_avg_pool2d(np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2), 1).ravel().tolist()
    [1.5, 5.5]
    """
    x, p, unbatched = validate.adaptive_avg_pool2d_args(input, output_size)
    out = np.empty(p.out_shape, dtype=x.dtype)
    plan.run_pool(x, p, out)
    return _like(out[0] if unbatched else out, input)
