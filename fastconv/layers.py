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

Training (NumPy, no torch needed). Layers start in eval mode, where a call saves nothing, so
inference costs what it always did. After ``layer.train()`` each call keeps what the backward
pass needs (a conv its input and weights, a max pool its argmax indices, the others only the
shape), and ``layer.backward(grad_output)`` returns dL/dinput through `fastconv.grad`'s kernels,
once per forward call (the saved state is released by it). ``Conv2d`` adds dL/dweight and
dL/dbias to ``weight_grad`` / ``bias_grad`` (None until the first backward, like torch's
``.grad``; ``zero_grad()`` resets them) and takes an update through ``set_parameters`` (or the
``weight``/``bias`` setters): the plans are prepared again at the next call. The input must not
change between a forward call and its backward (it is kept by reference, not copied), and one
layer object trains one call at a time (the saved state is per layer, not per thread).
`fastconv.nn` has the remaining pieces of a small CNN (``Linear``, ``ReLU``, ``Sequential``,
``cross_entropy``, ``SGD``).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, overload

import numpy as np

from . import functional, grad, memory, registry, rules, validate
from .params import ConvParams
from .plan import Plan, run_pool
from .validate import IntOrPair


@overload
def _readonly(arr: np.ndarray) -> np.ndarray: ...
@overload
def _readonly(arr: None) -> None: ...
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
            return arr, p, False  # only 4-D inputs are remembered
        x, p, unbatched = check(arr)
        self.remember(arr, x, p)
        return x, p, unbatched


def _pool_forward(kind: str, x: np.ndarray, p: Any, indices: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Run pooling kernel ``kind`` on validated ``x`` → 4-D ``(out, indices or None)``."""
    if indices:
        memory.check_call(f"{kind}_pool2d", p, np.int64)
    out = np.empty(p.out_shape, dtype=x.dtype)
    idx = np.empty(p.out_shape, dtype=np.int64) if indices else None
    run_pool(x, p, out, idx)
    return out, idx


def _result(a: np.ndarray, unbatched: bool, original: Any):
    """A 4-D result as the caller passed its input: 3-D for an unbatched input, a tensor for a tensor."""
    return functional._like(a[0] if unbatched else a, original)


def _grad_output(grad_output: Any, out_shape: tuple[int, ...], unbatched: bool, dtype: str) -> np.ndarray:
    """``grad_output`` checked against the forward output (shape, dtype) → contiguous 4-D."""
    dy = grad._grad_output(grad_output, np.dtype(dtype), 3 if unbatched else 4)
    return grad._expect_shape(dy, out_shape, unbatched)


class _Trainable:
    """Train/eval mode and the state one forward call saves for its backward."""

    training = False  # eval mode: a call saves nothing
    _saved: Any = None

    def train(self, mode: bool = True):
        """Training mode on (or off with ``mode=False``); returns the layer, as torch's does."""
        self.training = bool(mode)
        if not self.training:
            self._saved = None
        return self

    def eval(self):
        """Eval mode (the initial one): calls save nothing. Returns the layer."""
        return self.train(False)

    def _take_saved(self) -> Any:
        saved = self._saved
        if saved is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward needs a forward call in training mode first "
                "(layer.train(), then call the layer), and runs once per forward call"
            )
        self._saved = None  # released: backward runs once per forward, as torch's graph does
        return saved

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_saved", None)  # a copy starts with no pending backward
        return state


class Conv2d(_Trainable):
    """2-D convolution layer, as ``torch.nn.Conv2d`` (``padding_mode="zeros"`` only).

    Weights start as torch initialises them (uniform in ±1/√fan_in) and are set by assigning
    ``layer.weight = array`` (or a torch tensor, e.g. from a ``state_dict``); ``bias`` may be
    assigned an array of length ``out_channels`` or None. Each new input shape builds a plan
    (the algorithm and its prepared weights) once; assigning ``weight``, ``bias`` or ``algo``
    drops the plans.

    Training: after ``train()``, ``backward(grad_output)`` returns dL/dinput and adds dL/dweight,
    dL/dbias to ``weight_grad``, ``bias_grad``; ``set_parameters`` applies an update (see the
    module notes and `fastconv.nn`).

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

    One training step by hand (`fastconv.nn.SGD` does the update for a whole model):

    >>> conv = Conv2d(3, 8, 3, padding=1, seed=0).train()
    >>> y = conv(np.ones((2, 3, 8, 8), np.float32))
    >>> dx = conv.backward(np.ones_like(y))          # dL/dinput for L = y.sum()
    >>> dx.shape, conv.weight_grad.shape, conv.bias_grad.tolist() == [128.0] * 8
    ((2, 3, 8, 8), (8, 3, 3, 3), True)
    >>> conv.set_parameters({"weight": conv.weight - 0.1 * conv.weight_grad})
    >>> conv.zero_grad()
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair | str = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        algo: str = "auto",
        dtype: Any = np.float32,
        seed: int | None = None,
    ):
        a = validate.conv_layer_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode
        )
        self._cfg = a
        self._lock = threading.Lock()
        self._plans: dict[ConvParams, Plan] = {}  # full shape → plan
        self._prepared: dict[tuple[ConvParams, str], Plan] = {}  # (batch-1 shape, algo) → plan
        self._memo = _Memo()
        self._algo = validate.algo_name(algo, registry.names() + ["tune"])
        # torch's default init (kaiming_uniform with a=√5): U(−1/√fan_in, 1/√fan_in), bias alike
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1])
        dt = np.dtype(dtype)
        self._weight = validate.layer_param(
            rng.uniform(-bound, bound, self.weight_shape).astype(dt), "weight", self.weight_shape
        )
        self._bias = (
            validate.layer_param(rng.uniform(-bound, bound, self.out_channels).astype(dt), "bias", (self.out_channels,))
            if a["bias"]
            else None
        )
        self.weight_grad: np.ndarray | None = None  # dL/dweight summed over backward calls
        self.bias_grad: np.ndarray | None = None

    in_channels, out_channels, kernel_size = _fixed("in_channels"), _fixed("out_channels"), _fixed("kernel_size")
    stride, padding, dilation, groups = _fixed("stride"), _fixed("padding"), _fixed("dilation"), _fixed("groups")

    @classmethod
    def from_torch(cls, module: Any, *, algo: str = "auto") -> "Conv2d":
        """A copy of a ``torch.nn.Conv2d``'s configuration and weights."""
        layer = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            module.padding_mode,
            algo=algo,
        )
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
        self.set_parameters({"weight": value})

    @property
    def bias(self) -> np.ndarray | None:
        return _readonly(self._bias)

    @bias.setter
    def bias(self, value: Any) -> None:
        self.set_parameters({"bias": value})

    def parameters(self) -> dict[str, np.ndarray]:
        """``{"weight": ..., "bias": ...}`` (no ``"bias"`` without one), read-only, as `set_parameters` takes them."""
        params, b = {"weight": self.weight}, self._bias
        if b is not None:
            params["bias"] = _readonly(b)
        return params

    def gradients(self) -> dict[str, np.ndarray | None]:
        """The accumulated gradients under `parameters`' names (None before any backward)."""
        grads = {"weight": self.weight_grad}
        if self._bias is not None:
            grads["bias"] = self.bias_grad
        return grads

    def zero_grad(self) -> None:
        """Forget the accumulated gradients (``weight_grad``/``bias_grad`` back to None)."""
        self.weight_grad = self.bias_grad = None

    def set_parameters(self, values: Mapping[str, Any]) -> None:
        """Assign ``"weight"`` and/or ``"bias"`` (arrays or tensors, validated and copied as the
        setters do; ``"bias": None`` removes the bias). The plans are dropped once and prepared
        again at the next call; the validated input shapes are kept while the dtypes and the
        presence of a bias stay the same, so an optimizer step costs one preparation per shape."""
        unknown = set(values) - {"weight", "bias"}
        if unknown:
            raise KeyError(f"Conv2d has parameters 'weight' and 'bias', got {sorted(unknown)}")
        w = validate.layer_param(values["weight"], "weight", self.weight_shape) if "weight" in values else None
        b = self._bias
        if "bias" in values:
            b = None if values["bias"] is None else validate.layer_param(values["bias"], "bias", (self.out_channels,))
        with self._lock:
            w = self._weight if w is None else w
            same_kind = w.dtype == self._weight.dtype and (
                (b is None and self._bias is None)
                or (b is not None and self._bias is not None and b.dtype == self._bias.dtype)
            )
            self._weight, self._bias = w, b
            self._invalidate(keep_memo=same_kind)

    @property
    def algo(self) -> str:
        return self._algo

    @algo.setter
    def algo(self, value: str) -> None:
        name = validate.algo_name(value, registry.names() + ["tune"])
        with self._lock:
            self._algo = name
            self._invalidate()

    def _invalidate(self, keep_memo: bool = False) -> None:
        self._plans, self._prepared = {}, {}
        if not keep_memo:
            self._memo = _Memo()  # bias presence and dtype are part of each shape's ConvParams

    # pickling / deepcopy: the weights travel, the lock and the plans are rebuilt
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_lock", "_plans", "_prepared", "_memo"):
            del state[k]
        state.pop("_saved", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._invalidate()

    # --- running -------------------------------------------------------------------------
    def _params(self, input: Any):
        return validate.conv2d_args(
            input, self._weight, self._bias, self.stride, self.padding, self.dilation, self.groups
        )

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
        if self.training:
            self._saved = (x, self._weight, p, unbatched)  # the weights this call used
        return _result(out, unbatched, input)

    forward = __call__

    def backward(self, grad_output: Any, *, input_grad: bool = True):
        """dL/dinput of the last training-mode call, given dL/doutput; adds dL/dweight and
        dL/dbias to ``weight_grad`` and ``bias_grad``.

        The kernels are `fastconv.grad`'s (results equal ``conv2d_input``/``conv2d_weight``/
        ``conv2d_bias`` on the saved input). ``input_grad=False`` skips dL/dinput and returns None
        (a first layer, whose input is data). ``grad_output`` must have the output's shape and dtype.
        """
        x, w, p, unbatched = self._take_saved()
        dy = _grad_output(grad_output, p.out_shape, unbatched, p.dtype)
        gp = replace(p, has_bias=False)  # the gradient passes take no bias (as fastconv.grad builds them)
        dw = grad._weight_grad(x, dy, gp.with_pass("weight_grad"))
        self.weight_grad = dw if self.weight_grad is None else self.weight_grad + dw
        if p.has_bias:
            db = grad.conv2d_bias(dy)
            self.bias_grad = db if self.bias_grad is None else self.bias_grad + db
        if not input_grad:
            return None
        grad._check_alloc("conv2d_input", p.input_shape, p.dtype)
        return _result(grad._input_grad(dy, w, gp.with_pass("input_grad")), unbatched, grad_output)

    def __repr__(self) -> str:
        s = (
            f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
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


class MaxPool2d(_Trainable):
    """Max pooling layer, as ``torch.nn.MaxPool2d`` (``stride`` defaults to ``kernel_size``).

    In training mode a call also finds the argmax indices (whatever ``return_indices`` says) and
    ``backward(grad_output)`` sends each output's gradient to the input pixel it took
    (`fastconv.grad.max_pool2d_input`).
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ):
        a = validate.max_pool_layer_args(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self._cfg, self._memo = a, _Memo()

    kernel_size, stride, padding = _fixed("kernel_size"), _fixed("stride"), _fixed("padding")
    dilation, return_indices, ceil_mode = _fixed("dilation"), _fixed("return_indices"), _fixed("ceil_mode")

    @classmethod
    def from_torch(cls, module: Any) -> "MaxPool2d":
        return cls(
            module.kernel_size, module.stride, module.padding, module.dilation, module.return_indices, module.ceil_mode
        )

    def __call__(self, input: Any):
        x, p, unbatched = self._memo.validated(
            input,
            lambda a: validate.max_pool2d_args(
                a, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
            ),
        )
        out, idx = _pool_forward("max", x, p, self.return_indices or self.training)
        if self.training:
            self._saved = (idx, p, unbatched)
        if self.return_indices:
            assert idx is not None
            return _result(out, unbatched, input), _result(idx, unbatched, input)
        return _result(out, unbatched, input)

    forward = __call__

    def backward(self, grad_output: Any, *, input_grad: bool = True):
        """dL/dinput of the last training-mode call, given dL/doutput (None if not ``input_grad``)."""
        idx, p, unbatched = self._take_saved()
        if not input_grad:
            return None
        dy = _grad_output(grad_output, p.out_shape, unbatched, p.dtype)
        grad._check_alloc("max_pool2d_input", p.input_shape, p.dtype)
        return _result(grad._max_input_grad(dy, idx, replace(p, pass_="input_grad")), unbatched, grad_output)

    def __repr__(self) -> str:
        return (
            f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode})"
        )


class AvgPool2d(_Trainable):
    """Average pooling layer, as ``torch.nn.AvgPool2d``; ``backward`` as `fastconv.grad.avg_pool2d_input`."""

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ):
        a = validate.avg_pool_layer_args(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self._cfg, self._memo = a, _Memo()

    kernel_size, stride, padding = _fixed("kernel_size"), _fixed("stride"), _fixed("padding")
    ceil_mode, count_include_pad = _fixed("ceil_mode"), _fixed("count_include_pad")
    divisor_override = _fixed("divisor_override")

    @classmethod
    def from_torch(cls, module: Any) -> "AvgPool2d":
        return cls(
            module.kernel_size,
            module.stride,
            module.padding,
            module.ceil_mode,
            module.count_include_pad,
            module.divisor_override,
        )

    def __call__(self, input: Any):
        x, p, unbatched = self._memo.validated(
            input,
            lambda a: validate.avg_pool2d_args(
                a,
                self.kernel_size,
                self.stride,
                self.padding,
                self.ceil_mode,
                self.count_include_pad,
                self.divisor_override,
            ),
        )
        out, _ = _pool_forward("avg", x, p, False)
        if self.training:
            self._saved = (p, unbatched)
        return _result(out, unbatched, input)

    forward = __call__

    def backward(self, grad_output: Any, *, input_grad: bool = True):
        """dL/dinput of the last training-mode call, given dL/doutput (None if not ``input_grad``)."""
        p, unbatched = self._take_saved()
        if not input_grad:
            return None
        dy = _grad_output(grad_output, p.out_shape, unbatched, p.dtype)
        grad._check_alloc("avg_pool2d_input", p.input_shape, p.dtype)
        return _result(grad._avg_input_grad(dy, replace(p, pass_="input_grad")), unbatched, grad_output)

    def __repr__(self) -> str:
        return (
            f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad})"
        )


class AdaptiveAvgPool2d(_Trainable):
    """Adaptive average pooling layer, as ``torch.nn.AdaptiveAvgPool2d`` (None keeps that size);
    ``backward`` as `fastconv.grad.adaptive_avg_pool2d_input`."""

    def __init__(self, output_size: IntOrPair | tuple[int | None, int | None]):
        self._cfg = {"output_size": validate.adaptive_output_size(output_size)}
        self._memo = _Memo()

    output_size = _fixed("output_size")

    @classmethod
    def from_torch(cls, module: Any) -> "AdaptiveAvgPool2d":
        return cls(module.output_size)

    def __call__(self, input: Any):
        x, p, unbatched = self._memo.validated(input, lambda a: validate.adaptive_avg_pool2d_args(a, self.output_size))
        out, _ = _pool_forward("adaptive_avg", x, p, False)
        if self.training:
            self._saved = (p, unbatched)
        return _result(out, unbatched, input)

    forward = __call__

    def backward(self, grad_output: Any, *, input_grad: bool = True):
        """dL/dinput of the last training-mode call, given dL/doutput (None if not ``input_grad``)."""
        p, unbatched = self._take_saved()
        if not input_grad:
            return None
        dy = _grad_output(grad_output, p.out_shape, unbatched, p.dtype)
        grad._check_alloc("adaptive_avg_pool2d_input", p.input_shape, p.dtype)
        return _result(grad._adaptive_input_grad(dy, replace(p, pass_="input_grad")), unbatched, grad_output)

    def __repr__(self) -> str:
        return f"AdaptiveAvgPool2d(output_size={self.output_size})"


__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]
