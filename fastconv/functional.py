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


def conv2d(input: Any, weight: Any, bias: Any = None, stride: IntOrPair = 1,
           padding: IntOrPair | str = 0, dilation: IntOrPair = 1, groups: int = 1, *,
           algo: str = "auto"):
    """2-D convolution (cross-correlation) of NCHW ``input`` with OIHW ``weight``, as
    ``torch.nn.functional.conv2d``; ``algo`` is ``"auto"`` or a name in `fastconv.algorithms()`."""
    x, w, b, p, unbatched = validate.conv2d_args(input, weight, bias, stride, padding, dilation, groups)
    # the weights are prepared for this call alone: auto weighs that (fastconv.Conv2d keeps them)
    out = plan.Plan(rules.select(p, algo, one_shot=True), w, b, p).run(x)
    return _like(out[0] if unbatched else out, input)


def max_pool2d(input: Any, kernel_size: IntOrPair, stride: IntOrPair | None = None,
               padding: IntOrPair = 0, dilation: IntOrPair = 1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Max pooling, as ``torch.nn.functional.max_pool2d`` (indices are flat ``h*W + w``)."""
    x, p, unbatched = validate.max_pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode)
    if return_indices:
        memory.check_call("max_pool2d", p, np.int64)
    out = np.empty(p.out_shape, dtype=x.dtype)
    idx = np.empty(p.out_shape, dtype=np.int64) if return_indices else None
    plan.run_pool(x, p, out, idx)
    if unbatched:
        out, idx = out[0], (idx[0] if idx is not None else None)
    return (_like(out, input), _like(idx, input)) if return_indices else _like(out, input)


def avg_pool2d(input: Any, kernel_size: IntOrPair, stride: IntOrPair | None = None,
               padding: IntOrPair = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None):
    """Average pooling, as ``torch.nn.functional.avg_pool2d``."""
    x, p, unbatched = validate.avg_pool2d_args(input, kernel_size, stride, padding, ceil_mode,
                                               count_include_pad, divisor_override)
    out = np.empty(p.out_shape, dtype=x.dtype)
    plan.run_pool(x, p, out)
    return _like(out[0] if unbatched else out, input)


def adaptive_avg_pool2d(input: Any, output_size: IntOrPair):
    """Adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``
    (``output_size=1`` is global average pooling)."""
    x, p, unbatched = validate.adaptive_avg_pool2d_args(input, output_size)
    out = np.empty(p.out_shape, dtype=x.dtype)
    plan.run_pool(x, p, out)
    return _like(out[0] if unbatched else out, input)
