"""Layer objects with torch's constructor arguments: ``Conv2d`` holds its weights and prepared
plans; the pools hold their configuration.

A ``Conv2d`` call is validate → look up the plan for this input shape → run. A plan (the
algorithm ``auto`` picked, plus its packed/transformed weights, see `Plan`) is built
on the first call with a new shape and reused afterwards; packed weights do not depend on the
batch size, so a new batch size reuses them (only the algorithm choice is re-checked).
Assigning ``weight``, ``bias`` or ``algo`` drops every plan. The stored weights are private
copies exposed read-only, and the configuration (``stride``, ``padding``, …) is read-only, so
nothing changes under a plan behind the layer's back. A layer also remembers the validated
description of each contiguous input shape it has seen, so a repeated call skips validation.

Plans are built under a per-layer lock: concurrent first calls prepare each plan once.
Nothing here imports torch at module level (``import fastconv`` stays light);
arrays in → arrays out, torch tensors in → torch tensors out, as in `fastconv.functional`.
"""
from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np

from . import functional, memory, registry, rules, validate
from .plan import Plan, run_pool
from .params import ConvParams
from .validate import IntOrPair


def _readonly(arr: np.ndarray | None) -> np.ndarray | None:
    if arr is None:
        return None
    view = arr.view()
    view.flags.writeable = False
    return view


def _fixed(name: str) -> property:
    """A configuration attribute, fixed at construction (plans and memos depend on it)."""
    return property(lambda self: self._cfg[name], doc=f"``{name}``, as given to the constructor (read-only)")


class _Memo:
    """The validated description (`ConvParams`/`PoolParams`) of each input shape a layer has seen.

    Validation costs 30-60 µs a call — as much as the kernel of a small layer (LeNet) — so a
    C-contiguous 4-D array of a shape and dtype seen before skips it; anything else (3-D input,
    other layouts, a new shape) goes through `fastconv.validate` every time.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._memo: dict = {}

    def lookup(self, input: Any):
        """``(array, params or None)``: the input as an array, and its params if already validated."""
        arr = input if isinstance(input, np.ndarray) else validate.as_array(input, "input")
        if arr.ndim == 4 and arr.flags.c_contiguous:
            return arr, self._memo.get((arr.shape, arr.dtype))
        return arr, None

    def remember(self, arr: np.ndarray, x: np.ndarray, p: Any) -> None:
        if x is arr:  # validation kept the very array: it was contiguous 4-D already
            self._memo[(arr.shape, arr.dtype)] = p

    def validated(self, input: Any, check: Any):
        """``(x, params, unbatched)`` for ``input``: the remembered params of a seen shape, else
        ``check(array) -> (x, params, unbatched)`` (a `fastconv.validate` call), remembered."""
        arr, p = self.lookup(input)
        if p is not None:
            return arr, p, False          # only 4-D inputs are remembered
        x, p, unbatched = check(arr)
        self.remember(arr, x, p)
        return x, p, unbatched


def _run_pool(kind: str, x: np.ndarray, p: Any, unbatched: bool, original: Any, return_indices: bool = False):
    """Run pooling kernel ``kind`` on validated ``x`` (as `fastconv.functional` does)."""
    if return_indices:
        memory.check_call(f"{kind}_pool2d", p, np.int64)
    out = np.empty(p.out_shape, dtype=x.dtype)
    idx = np.empty(p.out_shape, dtype=np.int64) if return_indices else None
    run_pool(x, p, out, idx)
    if unbatched:
        out, idx = out[0], (None if idx is None else idx[0])
    out = functional._like(out, original)
    return (out, functional._like(idx, original)) if return_indices else out


class Conv2d:
    """2-D convolution layer, as ``torch.nn.Conv2d`` (``padding_mode="zeros"`` only).

    Weights start as torch initialises them (uniform in ±1/√fan_in) and are set by assigning
    ``layer.weight = array`` (or a torch tensor, e.g. from a ``state_dict``); ``bias`` may be
    assigned an array of length ``out_channels`` or None. Each new input shape builds a plan
    (the algorithm and its prepared weights) once; assigning ``weight``, ``bias`` or ``algo``
    drops the plans.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int), ``"valid"`` or ``"same"``
    groups : int
    bias : bool
    padding_mode : str
        ``"zeros"``, the only mode fastconv runs.
    algo : str
        ``"auto"``, ``"tune"`` (measured on this machine, `fastconv.tune`) or a registered name.
    dtype : numpy dtype
        float32 or float64.
    seed : int, optional
        Seed of the initial weights.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it. Calls raise as `fastconv.conv2d` does.

    Examples
    --------
    >>> conv = Conv2d(3, 8, 3, padding=1)
    >>> conv(np.zeros((2, 3, 32, 32), np.float32)).shape
    (2, 8, 32, 32)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: IntOrPair | str = 0, dilation: IntOrPair = 1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 algo: str = "auto", dtype: Any = np.float32, seed: int | None = None):
        a = validate.conv_layer_args(in_channels, out_channels, kernel_size, stride, padding,
                                     dilation, groups, bias, padding_mode)
        self._cfg = a
        self._lock = threading.Lock()
        self._plans: dict[ConvParams, Plan] = {}           # full shape → plan
        self._prepared: dict[tuple[ConvParams, str], Plan] = {}  # (batch-1 shape, algo) → plan
        self._memo = _Memo()
        self._algo = validate.algo_name(algo, registry.names() + ["tune"])
        # torch's default init (kaiming_uniform with a=√5): U(−1/√fan_in, 1/√fan_in), bias alike
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1])
        dt = np.dtype(dtype)
        self._weight = validate.layer_param(
            rng.uniform(-bound, bound, self.weight_shape).astype(dt), "weight", self.weight_shape)
        self._bias = (validate.layer_param(rng.uniform(-bound, bound, self.out_channels).astype(dt),
                                           "bias", (self.out_channels,)) if a["bias"] else None)

    in_channels, out_channels, kernel_size = _fixed("in_channels"), _fixed("out_channels"), _fixed("kernel_size")
    stride, padding, dilation, groups = _fixed("stride"), _fixed("padding"), _fixed("dilation"), _fixed("groups")

    @classmethod
    def from_torch(cls, module: Any, *, algo: str = "auto") -> "Conv2d":
        """A copy of a ``torch.nn.Conv2d``'s configuration and weights."""
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                    module.padding, module.dilation, module.groups, module.bias is not None,
                    module.padding_mode, algo=algo)
        layer.weight = module.weight
        layer.bias = module.bias
        return layer

    # --- parameters (assigning one drops the plans) ---------------------------------------
    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def weight(self) -> np.ndarray:
        """The weights ``(C_out, C_in/groups, kH, kW)``, read-only (assign a new array to change them)."""
        return _readonly(self._weight)

    @weight.setter
    def weight(self, value: Any) -> None:
        w = validate.layer_param(value, "weight", self.weight_shape)
        with self._lock:
            self._weight = w
            self._invalidate()

    @property
    def bias(self) -> np.ndarray | None:
        return _readonly(self._bias)

    @bias.setter
    def bias(self, value: Any) -> None:
        b = None if value is None else validate.layer_param(value, "bias", (self.out_channels,))
        with self._lock:
            self._bias = b
            self._invalidate()

    @property
    def algo(self) -> str:
        return self._algo

    @algo.setter
    def algo(self, value: str) -> None:
        name = validate.algo_name(value, registry.names() + ["tune"])
        with self._lock:
            self._algo = name
            self._invalidate()

    def _invalidate(self) -> None:
        self._plans, self._prepared = {}, {}
        self._memo = _Memo()  # bias presence and dtype are part of each shape's ConvParams

    # pickling / deepcopy: the weights travel, the lock and the plans are rebuilt
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_lock", "_plans", "_prepared", "_memo"):
            del state[k]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._invalidate()

    # --- running -------------------------------------------------------------------------
    def _params(self, input: Any):
        return validate.conv2d_args(input, self._weight, self._bias, self.stride, self.padding,
                                    self.dilation, self.groups)

    def _plan(self, p: ConvParams) -> Plan:
        plan = self._plans.get(p)
        if plan is not None:
            return plan
        with self._lock:  # built once, even when several threads ask at the same time
            plan = self._plans.get(p)
            if plan is None:
                alg = self._select(p)
                key = (p.with_batch(1), alg.name)
                plan = self._prepared.get(key)
                if plan is None:
                    plan = Plan(alg, self._weight, self._bias, key[0])
                    self._prepared[key] = plan
                self._plans[p] = plan
            return plan

    def _select(self, p: ConvParams) -> registry.Kernel:
        """``algo="tune"`` (or ``"auto"`` with ``FASTCONV_TUNE=1``) asks the measured tuner, which
        times the candidates once per machine, thread count and layer and keeps the choice in
        the user's cache (`fastconv.tune`); anything else is `rules.select`."""
        if self._algo == "tune" or (self._algo == "auto" and os.environ.get("FASTCONV_TUNE") == "1"):
            from . import tune
            return registry.get(tune.tune_layer(p))
        return rules.select(p, self._algo)

    def plan(self, input_shape: tuple[int, ...]) -> Plan:
        """The plan (algorithm + prepared weights) this layer runs for inputs of ``input_shape``."""
        _, _, _, p, _ = self._params(np.empty(input_shape, dtype=self._weight.dtype))
        return self._plan(p)

    def __call__(self, input: Any):
        def check(arr):
            x, _, _, p, unbatched = self._params(arr)
            return x, p, unbatched
        x, p, unbatched = self._memo.validated(input, check)
        out = self._plan(p).run(x, p=p)
        return functional._like(out[0] if unbatched else out, input)

    forward = __call__

    def __repr__(self) -> str:
        s = (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self._bias is None:
            s += ", bias=False"
        if self._algo != "auto":
            s += f", algo={self._algo!r}"
        return s + ")"


class MaxPool2d:
    """Max pooling layer, as ``torch.nn.MaxPool2d`` (``stride`` defaults to ``kernel_size``)."""

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0,
                 dilation: IntOrPair = 1, return_indices: bool = False, ceil_mode: bool = False):
        a = validate.max_pool_layer_args(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self._cfg, self._memo = a, _Memo()

    kernel_size, stride, padding = _fixed("kernel_size"), _fixed("stride"), _fixed("padding")
    dilation, return_indices, ceil_mode = _fixed("dilation"), _fixed("return_indices"), _fixed("ceil_mode")

    @classmethod
    def from_torch(cls, module: Any) -> "MaxPool2d":
        return cls(module.kernel_size, module.stride, module.padding, module.dilation,
                   module.return_indices, module.ceil_mode)

    def __call__(self, input: Any):
        x, p, unbatched = self._memo.validated(input, lambda a: validate.max_pool2d_args(
            a, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode))
        return _run_pool("max", x, p, unbatched, input, self.return_indices)

    forward = __call__

    def __repr__(self) -> str:
        return (f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode})")


class AvgPool2d:
    """Average pooling layer, as ``torch.nn.AvgPool2d``."""

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None):
        a = validate.avg_pool_layer_args(kernel_size, stride, padding, ceil_mode, count_include_pad,
                                         divisor_override)
        self._cfg, self._memo = a, _Memo()

    kernel_size, stride, padding = _fixed("kernel_size"), _fixed("stride"), _fixed("padding")
    ceil_mode, count_include_pad = _fixed("ceil_mode"), _fixed("count_include_pad")
    divisor_override = _fixed("divisor_override")

    @classmethod
    def from_torch(cls, module: Any) -> "AvgPool2d":
        return cls(module.kernel_size, module.stride, module.padding, module.ceil_mode,
                   module.count_include_pad, module.divisor_override)

    def __call__(self, input: Any):
        x, p, unbatched = self._memo.validated(input, lambda a: validate.avg_pool2d_args(
            a, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
            self.divisor_override))
        return _run_pool("avg", x, p, unbatched, input)

    forward = __call__

    def __repr__(self) -> str:
        return (f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad})")


class AdaptiveAvgPool2d:
    """Adaptive average pooling layer, as ``torch.nn.AdaptiveAvgPool2d`` (None keeps that size)."""

    def __init__(self, output_size: IntOrPair | tuple[int | None, int | None]):
        self._cfg = {"output_size": validate.adaptive_output_size(output_size)}
        self._memo = _Memo()

    output_size = _fixed("output_size")

    @classmethod
    def from_torch(cls, module: Any) -> "AdaptiveAvgPool2d":
        return cls(module.output_size)

    def __call__(self, input: Any):
        x, p, unbatched = self._memo.validated(
            input, lambda a: validate.adaptive_avg_pool2d_args(a, self.output_size))
        return _run_pool("adaptive_avg", x, p, unbatched, input)

    forward = __call__

    def __repr__(self) -> str:
        return f"AdaptiveAvgPool2d(output_size={self.output_size})"


__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]
