"""torch interop: torch models whose convolutions and pools run on fastconv, for inference and
for training.

    >>> import torch, fastconv.torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 2))
    >>> fast = fastconv.torch.convert(model)      # a converted deep copy; model is untouched
    >>> opt = torch.optim.SGD(fast.parameters(), lr=0.1)
    >>> x, target = torch.randn(8, 1, 8, 8), torch.randint(0, 2, (8,))
    >>> nn.functional.cross_entropy(fast(x), target).backward()
    >>> opt.step()                                # trains as the original would
    >>> with torch.no_grad():
    ...     y = fast(x)                           # inference: NumPy views, no autograd work
    >>> y.shape
    torch.Size([8, 2])

`convert` replaces every ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d`` and
``nn.AdaptiveAvgPool2d`` (exactly those types: a subclass may change ``forward``) by a module
that runs the matching `fastconv.layers` object; every other module is kept as it was. A
converted conv holds the original's ``weight`` and ``bias`` ``nn.Parameter`` objects, so
``parameters()``, optimizers, ``state_dict``, ``.to(dtype)``, ``requires_grad_`` and
``DistributedDataParallel`` see the same tensors as on the original. A module fastconv cannot run
(``padding_mode`` other than zeros, float16/bfloat16 weights, a non-CPU device, forward hooks,
a weight that is not a parameter) stays on torch, trains on torch, and is named in one warning.

Each call takes one of four routes:

* **fastconv, directly** — when autograd needs nothing from the call (``torch.no_grad()``,
  ``torch.inference_mode()``, or no input or parameter requires grad), nothing is tracing, and no
  dispatch mode is active: the tensor is read in place as a NumPy view, the layer's prepared
  weights run, and the result is ``torch.from_numpy`` of the array fastconv wrote. This is the
  inference path of earlier versions, with no dispatcher or autograd cost (~1 us of routing).
* **autograd, eagerly** — when gradients are needed in plain eager mode: a
  ``torch.autograd.Function`` runs the same forward and records the backward, computed by
  `fastconv.grad`.
* **the custom ops** — ``torch.ops.fastconv.conv2d``, ``max_pool2d``, ``avg_pool2d`` and
  ``adaptive_avg_pool2d`` (registered with `torch.library`, with fake implementations and the
  same autograd formulas, whose backward passes are the custom ops ``conv2d_input``,
  ``conv2d_weight``, ``max_pool2d_backward``, ``avg_pool2d_backward`` and
  ``adaptive_avg_pool2d_backward``): under ``torch.compile``, ``torch.jit.trace``,
  ``torch.export``, ``torch.func`` transforms and dispatch modes, so those tools see, record and
  differentiate fastconv's ops. (Eager code does not call them: the dispatcher and the custom-op
  autograd wrapper cost 20-90 us a call, an autograd.Function ~10 us.)
* **torch** — while ``torch.onnx.export`` runs (so the ONNX file holds standard ``Conv`` /
  ``MaxPool`` / ``AveragePool`` nodes, not a constant), and for a dtype or device fastconv does
  not run (a model moved with ``.half()`` or ``.to("cuda")`` after conversion): the module calls
  ``torch.nn.functional`` with its own configuration.

A converted conv keeps its weights prepared (packed or transformed per algorithm) between
calls, and re-prepares them when, and only when, its ``weight`` or ``bias`` changes: new
storage (``.to(dtype)``, ``.double()``, assigning ``.data``) or a new ``Tensor._version`` (every
in-place change through torch bumps it: optimizer steps, ``mul_``, ``copy_``,
``load_state_dict``). An in-place change made through ``.data`` or a NumPy view bypasses the
version counter and is not seen, as autograd does not see it either.

Tensors go in and come out without copies where the layout allows: a contiguous NCHW CPU tensor
is read in place, other layouts (channels_last, slices) are first copied to contiguous NCHW, and
results are always contiguous NCHW.

This module imports torch; ``import fastconv`` never does.
"""

from __future__ import annotations

import copy
import itertools
import threading
import warnings
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional, layers, registry, validate
from .params import pool_output_size

_DTYPES = (torch.float32, torch.float64)


# --- routing ------------------------------------------------------------------------------------
_DIRECT, _AUTOGRAD, _OP, _TORCH = 0, 1, 2, 3  # fastconv directly, an autograd.Function, the custom op, torch

try:  # the flags torch.onnx.is_in_onnx_export reads, read directly: ~1 us less per call, and under
    # dynamo (which folds that function to False) the torch.export-based exporter's flag is seen
    from torch.onnx._internal.exporter import _flags as _onnx_flags
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _onnx_globals

    def _onnx_exporting() -> bool:
        return _onnx_flags._is_onnx_exporting or _onnx_globals.in_onnx_export

    def _onnx_exporting_compiled() -> bool:
        return _onnx_flags._is_onnx_exporting  # (dynamo may not call GLOBALS' property; only eager
        # TorchScript export sets it)
except ImportError:  # pragma: no cover - another torch layout
    _onnx_exporting = _onnx_exporting_compiled = torch.onnx.is_in_onnx_export


def _route(input: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> int:
    """Which route (module docstring) a call takes.

    ``is_compiling`` comes first: under dynamo it is a constant, so the eager checks after it
    (which dynamo cannot trace) are never reached. In eager mode the cheap, decisive checks come
    first: deciding costs ~0.4 us of an inference call.
    """
    if torch.compiler.is_compiling():
        if input.dtype not in _DTYPES or input.device.type != "cpu" or _onnx_exporting_compiled():
            return _TORCH
        return _OP
    if input.dtype not in _DTYPES or not input.is_cpu:
        return _TORCH  # a dtype or device fastconv does not run: torch runs (or refuses) it
    if (
        torch.jit.is_tracing()
        or type(input) is not torch.Tensor
        or torch._C._len_torch_dispatch_stack()
        or torch._C._are_functorch_transforms_active()
    ):
        # a tracer records the call, or a FakeTensor, a tensor subclass, a dispatch mode
        # (FlopCounterMode, ...) or a torch.func transform must see it; ONNX export traces too,
        # and gets torch's op
        return _TORCH if _onnx_exporting() else _OP
    if torch.is_grad_enabled() and (
        input.requires_grad
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
    ):
        return _AUTOGRAD
    return _DIRECT


# --- prepared weights of converted convs --------------------------------------------------------
_PREPARED: weakref.WeakValueDictionary[int, _PreparedConv] = weakref.WeakValueDictionary()
_HANDLES = itertools.count()


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor has no version counter (and cannot change outside
        return -1  # inference mode, so its data pointer is its identity)


class _PreparedConv:
    """The `fastconv.layers.Conv2d` of one converted conv, kept in step with its parameters.

    The custom op ``fastconv::conv2d`` receives tensors, not modules, so each converted conv
    registers this object under an integer handle that the module passes to the op: the op finds
    the layer (and its prepared plans) by handle, whether it runs eagerly, from a compiled graph
    or from a ``torch.jit.trace``. An unknown handle (-1, or a graph loaded in another process)
    makes the op prepare the weights for that one call instead.

    The layer holds a copy of the parameters; the copy is refreshed (dropping the plans) when the
    key of the parameters differs from the one it was made from. The key is the data pointer and
    version of weight and bias; the synced tensors stay referenced (``_held``),
    so their memory cannot be freed and reused by a new tensor at the same address and version.
    """

    def __init__(self, layer: layers.Conv2d, config: tuple, weight: Tensor, bias: Tensor | None):
        self.layer = layer
        self.config = config  # (stride, padding (top, bottom, left, right), dilation, groups)
        self._lock = threading.Lock()
        self.prepares = 0  # how many times the parameters were copied in since conversion
        self._register()
        self._remember(weight, bias)  # the layer was made from these very parameters

    def _register(self) -> None:
        self.handle = next(_HANDLES)
        _PREPARED[self.handle] = self

    def _remember(self, weight: Tensor, bias: Tensor | None) -> None:
        self._key: tuple | None = _key(weight, bias)
        self._held: tuple | None = (weight.detach(), None if bias is None else bias.detach())

    def layer_for(self, weight: Tensor, bias: Tensor | None) -> layers.Conv2d:
        """The layer, with its weights re-copied first if ``weight``/``bias`` changed since the last call."""
        try:  # (inlined: this runs on every inference call)
            key = (
                (weight.data_ptr(), weight._version)
                if bias is None
                else (weight.data_ptr(), weight._version, bias.data_ptr(), bias._version)
            )
        except RuntimeError:  # an inference tensor: no version counter
            key = _key(weight, bias)
        if key != self._key:
            with self._lock:
                if key != self._key:
                    self.layer.weight = weight
                    self.layer.bias = bias
                    self._remember(weight, bias)
                    self.prepares += 1
        return self.layer

    # deepcopy / pickle: the layer travels; the copy gets its own handle and re-syncs on first use
    def __getstate__(self) -> dict:
        return {"layer": self.layer, "config": self.config, "prepares": self.prepares}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._key, self._held = None, None
        self._register()


def _key(weight: Tensor, bias: Tensor | None) -> tuple:
    # a dtype or device move (.double(), .to()) gives new storage, hence a new data pointer
    if bias is None:
        return weight.data_ptr(), _version(weight)
    return weight.data_ptr(), _version(weight), bias.data_ptr(), _version(bias)


# --- argument helpers -----------------------------------------------------------------------------
def _padding_arg(pad: list[int], kernel: tuple[int, ...], dilation: list[int], stride: list[int]):
    """The op's per-side padding ``(top, bottom, left, right)`` as fastconv's functions take it:
    a pair when symmetric, else ``"same"`` (the only source of uneven padding, torch's rule)."""
    if pad[0] == pad[1] and pad[2] == pad[3]:
        return (pad[0], pad[2])
    if tuple(stride) == (1, 1) and tuple(pad) == validate.conv_padding(
        "same", (1, 1), (dilation[0], dilation[1]), (kernel[0], kernel[1])
    ):
        return "same"
    raise ValueError(
        f"padding {tuple(pad)} (top, bottom, left, right) is uneven and is not 'same' "
        f"padding for kernel {kernel}, dilation {tuple(dilation)}, stride {tuple(stride)}"
    )


def _conv_config(stride: Any, padding: Any, dilation: Any, groups: Any, kernel: tuple[int, ...]):
    """torch's conv arguments → the op's ``(stride, padding (4), dilation, groups)`` lists."""
    s = validate.positive_pair(stride, "stride")
    d = validate.positive_pair(dilation, "dilation")
    return [*s], [*validate.conv_padding(padding, s, d, (kernel[0], kernel[1]))], [*d], int(groups)


def _pool_stride(kernel_size: Any, stride: Any):
    return kernel_size if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else stride


def _batched(input: Tensor):
    """4-D input for the ops (which take NCHW only) and whether a batch axis was added."""
    if input.dim() == 3:
        return input.unsqueeze(0), True
    return input, False


# --- custom ops: forward --------------------------------------------------------------------------
def _conv2d_impl(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    prepared: int,
) -> Tensor:
    """2-D convolution of NCHW ``input``; ``padding`` is (top, bottom, left, right); ``prepared``
    is a converted conv's handle (its prepared weights) or -1 (prepare for this call)."""
    cache = _PREPARED.get(prepared) if prepared >= 0 else None
    if cache is not None and cache.config == (tuple(stride), tuple(padding), tuple(dilation), groups):
        return cache.layer_for(weight, bias)(input)
    pad = _padding_arg(padding, tuple(weight.shape[2:]), dilation, stride)
    return functional.conv2d(input, weight, bias, stride, pad, dilation, groups)


_conv2d_op = torch.library.custom_op("fastconv::conv2d", _conv2d_impl, mutates_args=())


@_conv2d_op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, prepared):
    n, _, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    oh = (h + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return input.new_empty((n, c_out, oh, ow))


_POOL_LAYERS: dict[tuple, Any] = {}


def _pool_layer(cls: type, *config: Any) -> Any:
    """A shared `fastconv.layers` pool object per configuration: it remembers validated shapes
    (a pool's validation costs as much as its kernel on small maps), which the ops cannot keep."""
    key = (cls, *config)
    layer = _POOL_LAYERS.get(key)
    if layer is None:
        layer = _POOL_LAYERS.setdefault(key, cls(*config))
    return layer


def _max_pool2d_impl(
    input: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int], ceil_mode: bool
) -> tuple[Tensor, Tensor]:
    """Max pooling of NCHW ``input`` → (values, flat ``h*W + w`` int64 indices), as torch's
    ``max_pool2d_with_indices``."""
    layer = _pool_layer(
        layers.MaxPool2d, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), True, ceil_mode
    )
    return layer(input)


def _pool_out(input: Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> tuple:
    n, c, h, w = input.shape
    return (
        n,
        c,
        pool_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode),
        pool_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode),
    )


_max_pool2d_op = torch.library.custom_op("fastconv::max_pool2d", _max_pool2d_impl, mutates_args=())


@_max_pool2d_op.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pool_out(input, kernel_size, stride, padding, dilation, ceil_mode)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


def _avg_pool2d_impl(
    input: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """Average pooling of NCHW ``input``, as ``torch.nn.functional.avg_pool2d``."""
    layer = _pool_layer(
        layers.AvgPool2d,
        tuple(kernel_size),
        tuple(stride),
        tuple(padding),
        ceil_mode,
        count_include_pad,
        divisor_override,
    )
    return layer(input)


_avg_pool2d_op = torch.library.custom_op("fastconv::avg_pool2d", _avg_pool2d_impl, mutates_args=())


@_avg_pool2d_op.register_fake
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return input.new_empty(_pool_out(input, kernel_size, stride, padding, (1, 1), ceil_mode))


def _adaptive_avg_pool2d_impl(input: Tensor, output_size: list[int]) -> Tensor:
    """Adaptive average pooling of NCHW ``input`` to ``output_size`` (both sizes given)."""
    return _pool_layer(layers.AdaptiveAvgPool2d, tuple(output_size))(input)


_adaptive_avg_pool2d_op = torch.library.custom_op(
    "fastconv::adaptive_avg_pool2d", _adaptive_avg_pool2d_impl, mutates_args=()
)


@_adaptive_avg_pool2d_op.register_fake
def _(input, output_size):
    return input.new_empty((*input.shape[:2], *output_size))


# --- custom ops: backward (fastconv.grad) ---------------------------------------------------------
def _grad():
    from . import grad  # on first backward: inference never imports it

    return grad


def _conv2d_input_impl(
    grad_output: Tensor,
    weight: Tensor,
    input_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """dL/dinput of ``fastconv::conv2d`` (`fastconv.grad.conv2d_input`)."""
    pad = _padding_arg(padding, tuple(weight.shape[2:]), dilation, stride)
    return _grad().conv2d_input(tuple(input_size), weight, grad_output, stride, pad, dilation, groups)


_conv2d_input_op = torch.library.custom_op("fastconv::conv2d_input", _conv2d_input_impl, mutates_args=())


@_conv2d_input_op.register_fake
def _(grad_output, weight, input_size, stride, padding, dilation, groups):
    return grad_output.new_empty(input_size)


def _conv2d_weight_impl(
    grad_output: Tensor,
    input: Tensor,
    weight_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """dL/dweight of ``fastconv::conv2d`` (`fastconv.grad.conv2d_weight`)."""
    pad = _padding_arg(padding, tuple(weight_size[2:]), dilation, stride)
    return _grad().conv2d_weight(input, tuple(weight_size), grad_output, stride, pad, dilation, groups)


_conv2d_weight_op = torch.library.custom_op("fastconv::conv2d_weight", _conv2d_weight_impl, mutates_args=())


@_conv2d_weight_op.register_fake
def _(grad_output, input, weight_size, stride, padding, dilation, groups):
    return grad_output.new_empty(weight_size)


def _max_pool2d_backward_impl(
    grad_output: Tensor,
    input: Tensor,
    indices: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
) -> Tensor:
    """dL/dinput of ``fastconv::max_pool2d`` (`fastconv.grad.max_pool2d_input`)."""
    return _grad().max_pool2d_input(input, grad_output, indices, kernel_size, stride, padding, dilation, ceil_mode)


_max_pool2d_backward_op = torch.library.custom_op(
    "fastconv::max_pool2d_backward", _max_pool2d_backward_impl, mutates_args=()
)


@_max_pool2d_backward_op.register_fake
def _(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _avg_pool2d_backward_impl(
    grad_output: Tensor,
    input_size: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """dL/dinput of ``fastconv::avg_pool2d`` (`fastconv.grad.avg_pool2d_input`)."""
    return _grad().avg_pool2d_input(
        tuple(input_size), grad_output, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


_avg_pool2d_backward_op = torch.library.custom_op(
    "fastconv::avg_pool2d_backward", _avg_pool2d_backward_impl, mutates_args=()
)


@_avg_pool2d_backward_op.register_fake
def _(grad_output, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return grad_output.new_empty(input_size)


def _adaptive_avg_pool2d_backward_impl(grad_output: Tensor, input_size: list[int]) -> Tensor:
    """dL/dinput of ``fastconv::adaptive_avg_pool2d`` (`fastconv.grad.adaptive_avg_pool2d_input`)."""
    return _grad().adaptive_avg_pool2d_input(tuple(input_size), grad_output)


_adaptive_avg_pool2d_backward_op = torch.library.custom_op(
    "fastconv::adaptive_avg_pool2d_backward", _adaptive_avg_pool2d_backward_impl, mutates_args=()
)


@_adaptive_avg_pool2d_backward_op.register_fake
def _(grad_output, input_size):
    return grad_output.new_empty(input_size)


# --- autograd formulas ----------------------------------------------------------------------------
# One formula per op, run two ways: registered on the custom ops (their backward passes are the
# backward custom ops, so torch.compile and torch.export trace them), and as the eager
# autograd.Functions below (the same impls called directly: a custom op costs ~20 us a call in
# the dispatcher and ~50-90 us with its autograd wrapper, an autograd.Function ~10 us).
def _bias_traced(grad: Tensor) -> Tensor:
    # summed in float64 and rounded once, as fastconv.grad.conv2d_bias (a torch op: traceable)
    return grad.sum((0, 2, 3), dtype=torch.float64).to(grad.dtype)


def _bias_eager(grad: Tensor) -> Tensor:
    # the compiled sum (double accumulators over float rows): torch's dtype=float64 sum first
    # converts the whole of grad to float64 (2 ms of a LeNet batch-64 step)
    return _grad().conv2d_bias(grad)


_TRACED = {
    "conv_input": _conv2d_input_op,
    "conv_weight": _conv2d_weight_op,
    "bias": _bias_traced,
    "max": _max_pool2d_backward_op,
    "avg": _avg_pool2d_backward_op,
    "adaptive": _adaptive_avg_pool2d_backward_op,
}
_EAGER = {
    "conv_input": _conv2d_input_impl,
    "conv_weight": _conv2d_weight_impl,
    "bias": _bias_eager,
    "max": _max_pool2d_backward_impl,
    "avg": _avg_pool2d_backward_impl,
    "adaptive": _adaptive_avg_pool2d_backward_impl,
}


def _conv2d_setup(ctx, inputs, output) -> None:
    input, weight, _, stride, padding, dilation, groups, _ = inputs
    ctx.config = (stride, padding, dilation, groups)
    ctx.input_size, ctx.weight_size = list(input.shape), list(weight.shape)
    # each gradient needs the other operand only: keep no more alive than backward will read
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    ctx.save_for_backward(input if need_w else None, weight if need_x else None)


def _conv2d_grads(ctx, grad, ops: dict) -> tuple:
    input, weight = ctx.saved_tensors
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = ops["conv_input"](grad, weight, ctx.input_size, *ctx.config)
    if ctx.needs_input_grad[1]:
        gw = ops["conv_weight"](grad, input, ctx.weight_size, *ctx.config)
    if ctx.needs_input_grad[2]:
        gb = ops["bias"](grad)
    return gx, gw, gb, None, None, None, None, None


def _max_pool2d_setup(ctx, inputs, output) -> None:
    """``output`` is (values, indices) from the op, or the values alone from the eager
    values-only function, whose backward recomputes the argmax from the input."""
    input, *config = inputs
    ctx.config = config
    indices = None
    if isinstance(output, tuple):
        indices = output[1]
        ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(input, indices)


def _max_pool2d_grads(ctx, grad, ops: dict) -> tuple:
    input, indices = ctx.saved_tensors
    return (ops["max"](grad, input, indices, *ctx.config),) + (None,) * 5


def _avg_pool2d_setup(ctx, inputs, output) -> None:
    input, *config = inputs
    ctx.input_size, ctx.config = list(input.shape), config


def _avg_pool2d_grads(ctx, grad, ops: dict) -> tuple:
    return (ops["avg"](grad, ctx.input_size, *ctx.config),) + (None,) * 6


def _adaptive_setup(ctx, inputs, output) -> None:
    ctx.input_size = list(inputs[0].shape)


def _adaptive_grads(ctx, grad, ops: dict) -> tuple:
    return ops["adaptive"](grad, ctx.input_size), None


_conv2d_op.register_autograd(lambda ctx, g: _conv2d_grads(ctx, g, _TRACED), setup_context=_conv2d_setup)
_max_pool2d_op.register_autograd(lambda ctx, g, _: _max_pool2d_grads(ctx, g, _TRACED), setup_context=_max_pool2d_setup)
_avg_pool2d_op.register_autograd(lambda ctx, g: _avg_pool2d_grads(ctx, g, _TRACED), setup_context=_avg_pool2d_setup)
_adaptive_avg_pool2d_op.register_autograd(
    lambda ctx, g: _adaptive_grads(ctx, g, _TRACED), setup_context=_adaptive_setup
)


def _max_pool2d_values_impl(
    input: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int], ceil_mode: bool
) -> Tensor:
    """Max pooling of NCHW ``input``, values only (the eager route when no indices are asked for)."""
    layer = _pool_layer(
        layers.MaxPool2d, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), False, ceil_mode
    )
    return layer(input)


def _eager_function(name: str, impl: Any, setup: Any, grads: Any) -> type[torch.autograd.Function]:
    """The eager autograd.Function of an op: its impl, then its setup_context and formula (the
    ones registered on the custom op), with no dispatcher."""

    def forward(ctx, *inputs):
        out = impl(*inputs)
        setup(ctx, inputs, out)
        return out

    def backward(ctx, grad, *_grads_of_indices):
        return grads(ctx, grad, _EAGER)

    doc = f"Eager autograd of ``{impl.__name__}`` (same arguments, same formula as its custom op)."
    members = {"__doc__": doc, "forward": staticmethod(forward), "backward": staticmethod(backward)}
    return type(name, (torch.autograd.Function,), members)


_Conv2dFunction = _eager_function("_Conv2dFunction", _conv2d_impl, _conv2d_setup, _conv2d_grads)
_MaxPool2dFunction = _eager_function("_MaxPool2dFunction", _max_pool2d_impl, _max_pool2d_setup, _max_pool2d_grads)
_MaxPool2dValuesFunction = _eager_function(
    "_MaxPool2dValuesFunction", _max_pool2d_values_impl, _max_pool2d_setup, _max_pool2d_grads
)
_AvgPool2dFunction = _eager_function("_AvgPool2dFunction", _avg_pool2d_impl, _avg_pool2d_setup, _avg_pool2d_grads)
_AdaptiveAvgPool2dFunction = _eager_function(
    "_AdaptiveAvgPool2dFunction", _adaptive_avg_pool2d_impl, _adaptive_setup, _adaptive_grads
)


# --- differentiable functions (torch.nn.functional's signatures) ---------------------------------
def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution on fastconv, as ``torch.nn.functional.conv2d``, differentiable.

    Parameters
    ----------
    input : torch.Tensor
        ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
    weight : torch.Tensor
        ``(C_out, C_in / groups, kH, kW)``.
    bias : torch.Tensor, optional
        ``(C_out,)``.
    stride, dilation : int or (int, int)
    padding : int, (int, int), ``"valid"`` or ``"same"``
    groups : int

    Returns
    -------
    torch.Tensor
        ``(N, C_out, H_out, W_out)``. Gradients flow to ``input``, ``weight`` and ``bias``
        (`fastconv.grad`); float16, bfloat16 and non-CPU tensors run on torch.

    Notes
    -----
    The weights are prepared for this call alone (as `fastconv.conv2d`); a converted
    ``nn.Conv2d`` keeps them prepared between calls.
    """
    route = _route(input, weight, bias)
    if route == _TORCH:
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if route == _DIRECT:
        return functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
    x, unbatched = _batched(input)
    y = (_Conv2dFunction.apply if route == _AUTOGRAD else _conv2d_op)(
        x, weight, bias, *_conv_config(stride, padding, dilation, groups, tuple(weight.shape[2:])), -1
    )
    return y.squeeze(0) if unbatched else y


def max_pool2d(
    input: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """Max pooling on fastconv, as ``torch.nn.functional.max_pool2d``, differentiable.

    Returns
    -------
    torch.Tensor, or (torch.Tensor, torch.Tensor) with ``return_indices``
        The pooled values (and flat ``h * W + w`` int64 argmax indices, as torch's).
    """
    stride = _pool_stride(kernel_size, stride)
    route = _route(input)
    if route == _TORCH:
        # (torch's stubs type return_indices as a Literal: one call per value)
        if return_indices:
            return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
        return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)
    if route == _DIRECT:
        return functional.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    args = (
        [*validate.pair(kernel_size, "kernel_size")],
        [*validate.pair(stride, "stride")],
        [*validate.pair(padding, "padding")],
        [*validate.pair(dilation, "dilation")],
        bool(ceil_mode),
    )
    return _max_pool2d_graph(input, route, args, return_indices)


def _max_pool2d_graph(input: Tensor, route: int, args: tuple, return_indices: bool):
    """A max pool recorded for autograd (route _AUTOGRAD) or traced (_OP). Eagerly without
    ``return_indices`` no indices are made (the backward recomputes the argmax from the input)."""
    x, unbatched = _batched(input)
    if route == _AUTOGRAD and not return_indices:
        y = _MaxPool2dValuesFunction.apply(x, *args)
        return y.squeeze(0) if unbatched else y
    y, i = (_MaxPool2dFunction.apply if route == _AUTOGRAD else _max_pool2d_op)(x, *args)
    if unbatched:
        y, i = y.squeeze(0), i.squeeze(0)
    return (y, i) if return_indices else y


def avg_pool2d(
    input: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """Average pooling on fastconv, as ``torch.nn.functional.avg_pool2d``, differentiable."""
    stride = _pool_stride(kernel_size, stride)
    route = _route(input)
    if route == _TORCH:
        return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    if route == _DIRECT:
        return functional.avg_pool2d(
            input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )
    x, unbatched = _batched(input)
    y = (_AvgPool2dFunction.apply if route == _AUTOGRAD else _avg_pool2d_op)(
        x,
        [*validate.pair(kernel_size, "kernel_size")],
        [*validate.pair(stride, "stride")],
        [*validate.pair(padding, "padding")],
        bool(ceil_mode),
        bool(count_include_pad),
        divisor_override,
    )
    return y.squeeze(0) if unbatched else y


def adaptive_avg_pool2d(input: Tensor, output_size: Any) -> Tensor:
    """Adaptive average pooling on fastconv, as ``torch.nn.functional.adaptive_avg_pool2d``,
    differentiable (``output_size`` entries may be None: keep that size)."""
    route = _route(input)
    if route == _TORCH:
        return F.adaptive_avg_pool2d(input, output_size)
    if route == _DIRECT:
        return functional.adaptive_avg_pool2d(input, output_size)
    x, unbatched = _batched(input)
    size = [x.shape[2 + i] if v is None else v for i, v in enumerate(validate.adaptive_output_size(output_size))]
    y = (_AdaptiveAvgPool2dFunction.apply if route == _AUTOGRAD else _adaptive_avg_pool2d_op)(x, size)
    return y.squeeze(0) if unbatched else y


# --- converted modules ----------------------------------------------------------------------------
class _FastModule(nn.Module):
    """Base of the converted modules: one `fastconv.layers` object, torch's attributes."""

    layer: Any

    @classmethod
    def from_torch(cls, module: Any, algo: str = "auto") -> _FastModule:
        """The converted ``module`` (``algo`` is used by convolutions only)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"fastconv {self.layer!r}"


class FastConv2d(_FastModule):
    """``nn.Conv2d`` running on `fastconv.Conv2d`, for inference and training.

    Parameters
    ----------
    layer : fastconv.Conv2d
        The configuration (and, for inference, the prepared weights).
    weight : torch.nn.Parameter
        ``(C_out, C_in / groups, kH, kW)``; registered as ``weight``, as on ``nn.Conv2d``.
    bias : torch.nn.Parameter or None
        Registered as ``bias``.

    Attributes
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        As on ``nn.Conv2d`` (pairs normalised; ``padding`` may be ``"same"``/``"valid"``).
    layer : fastconv.Conv2d
        The fastconv layer; its weights are a copy of the parameters, refreshed when they change.
    prepares : int
        How many times changed parameters were copied into the layer (its plans are re-made
        on the next call after each).
    """

    padding_mode = "zeros"
    transposed = False

    def __init__(self, layer: layers.Conv2d, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups
        self.output_padding = (0, 0)
        weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
        if bias is not None and not isinstance(bias, nn.Parameter):
            bias = nn.Parameter(bias)
        self.register_parameter("weight", weight)
        self.register_parameter("bias", bias)
        config = _conv_config(layer.stride, layer.padding, layer.dilation, layer.groups, layer.kernel_size)
        self._op_args = config
        self._prepared = _PreparedConv(layer, (*map(tuple, config[:3]), config[3]), weight, bias)

    @classmethod
    def from_torch(cls, module: nn.Conv2d, algo: str = "auto") -> "FastConv2d":
        """A converted ``module``: its configuration, and its very ``weight``/``bias`` parameters."""
        if module.padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' (the only mode fastconv runs), got {module.padding_mode!r}")
        if not isinstance(module.weight, nn.Parameter):
            raise TypeError("its weight is not a parameter (a parametrization or weight norm computes it)")
        layer = layers.Conv2d.from_torch(module, algo=algo)
        new = cls(layer, module.weight, module.bias)
        new.train(module.training)
        return new

    @property
    def layer(self) -> layers.Conv2d:
        return self._prepared.layer

    @property
    def prepares(self) -> int:
        return self._prepared.prepares

    reset_parameters = nn.Conv2d.reset_parameters

    def forward(self, input: Tensor) -> Tensor:
        params = self._parameters  # (self.weight goes through nn.Module.__getattr__: 0.4 us each)
        weight, bias = params["weight"], params["bias"]
        assert weight is not None
        route = _route(input, weight, bias)
        if route == _DIRECT:
            return self._prepared.layer_for(weight, bias)(input)
        if route == _TORCH:
            return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        x, unbatched = _batched(input)
        y = (_Conv2dFunction.apply if route == _AUTOGRAD else _conv2d_op)(
            x, weight, bias, *self._op_args, self._prepared.handle
        )
        return y.squeeze(0) if unbatched else y


class FastMaxPool2d(_FastModule):
    """``nn.MaxPool2d`` running on `fastconv.MaxPool2d`, for inference and training."""

    def __init__(self, layer: layers.MaxPool2d):
        super().__init__()
        self.layer = layer  # a plain object, not a submodule
        self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding
        self.dilation, self.return_indices, self.ceil_mode = layer.dilation, layer.return_indices, layer.ceil_mode
        self._op_args = ([*layer.kernel_size], [*layer.stride], [*layer.padding], [*layer.dilation], layer.ceil_mode)

    @classmethod
    def from_torch(cls, module: nn.MaxPool2d, algo: str = "auto") -> "FastMaxPool2d":
        new = cls(layers.MaxPool2d.from_torch(module))
        new.train(module.training)
        return new

    def forward(self, input: Tensor):
        route = _route(input)
        if route == _DIRECT:
            return self.layer(input)
        if route == _TORCH:
            return F.max_pool2d(
                input,
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                ceil_mode=self.ceil_mode,
                return_indices=self.return_indices,
            )
        return _max_pool2d_graph(input, route, self._op_args, self.return_indices)


class FastAvgPool2d(_FastModule):
    """``nn.AvgPool2d`` running on `fastconv.AvgPool2d`, for inference and training."""

    def __init__(self, layer: layers.AvgPool2d):
        super().__init__()
        self.layer = layer
        self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding
        self.ceil_mode, self.count_include_pad = layer.ceil_mode, layer.count_include_pad
        self.divisor_override = layer.divisor_override
        self._op_args = (
            [*layer.kernel_size],
            [*layer.stride],
            [*layer.padding],
            layer.ceil_mode,
            layer.count_include_pad,
            layer.divisor_override,
        )

    @classmethod
    def from_torch(cls, module: nn.AvgPool2d, algo: str = "auto") -> "FastAvgPool2d":
        new = cls(layers.AvgPool2d.from_torch(module))
        new.train(module.training)
        return new

    def forward(self, input: Tensor) -> Tensor:
        route = _route(input)
        if route == _DIRECT:
            return self.layer(input)
        if route == _TORCH:
            return F.avg_pool2d(
                input,
                self.kernel_size,
                self.stride,
                self.padding,
                self.ceil_mode,
                self.count_include_pad,
                self.divisor_override,
            )
        x, unbatched = _batched(input)
        y = (_AvgPool2dFunction.apply if route == _AUTOGRAD else _avg_pool2d_op)(x, *self._op_args)
        return y.squeeze(0) if unbatched else y


class FastAdaptiveAvgPool2d(_FastModule):
    """``nn.AdaptiveAvgPool2d`` running on `fastconv.AdaptiveAvgPool2d`, for inference and training."""

    def __init__(self, layer: layers.AdaptiveAvgPool2d):
        super().__init__()
        self.layer = layer
        self.output_size = layer.output_size

    @classmethod
    def from_torch(cls, module: nn.AdaptiveAvgPool2d, algo: str = "auto") -> "FastAdaptiveAvgPool2d":
        new = cls(layers.AdaptiveAvgPool2d.from_torch(module))
        new.train(module.training)
        return new

    def forward(self, input: Tensor) -> Tensor:
        route = _route(input)
        if route == _DIRECT:
            return self.layer(input)
        if route == _TORCH:
            return F.adaptive_avg_pool2d(input, self.output_size)
        x, unbatched = _batched(input)
        oh, ow = self.output_size
        y = (_AdaptiveAvgPool2dFunction.apply if route == _AUTOGRAD else _adaptive_avg_pool2d_op)(
            x, [x.shape[2] if oh is None else oh, x.shape[3] if ow is None else ow]
        )
        return y.squeeze(0) if unbatched else y


CONVERTERS: dict[type, type[_FastModule]] = {
    nn.Conv2d: FastConv2d,
    nn.MaxPool2d: FastMaxPool2d,
    nn.AvgPool2d: FastAvgPool2d,
    nn.AdaptiveAvgPool2d: FastAdaptiveAvgPool2d,
}


def _hooks(module: nn.Module) -> str | None:
    names = [
        n
        for n in ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks")
        if getattr(module, n, None)
    ]
    return (
        f"it has hooks ({', '.join(n.strip('_') for n in names)}), which the converted module would drop"
        if names
        else None
    )


def convert(model: nn.Module, *, algo: str = "auto", inplace: bool = False) -> nn.Module:
    """``model`` with its convolutions and pools running on fastconv.

    Parameters
    ----------
    model : torch.nn.Module
        Any model; ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d`` and ``nn.AdaptiveAvgPool2d``
        modules (exactly those types) are replaced, wherever they are.
    algo : str
        ``"auto"`` or a name in `fastconv.algorithms()`, for every converted conv.
    inplace : bool
        Replace the modules in ``model`` itself instead of in a deep copy.

    Returns
    -------
    torch.nn.Module
        The converted model (``model`` itself with ``inplace=True``). Converted convs hold the
        (copied, or with ``inplace`` the very) ``weight``/``bias`` parameters of the modules they
        replace, so the model trains with any optimizer, and its ``state_dict`` has the original's
        keys. Each module keeps its ``training`` flag.

    Warns
    -----
    UserWarning
        Naming each module left on torch and why (``padding_mode`` other than zeros,
        float16/bfloat16, a non-CPU device, hooks, a computed weight).
    """
    algo = validate.algo_name(algo, registry.names())
    if not inplace:
        model = copy.deepcopy(model)
    skipped: list[str] = []
    done: dict[int, nn.Module] = {}  # a module registered twice stays one shared module

    def replace(module: nn.Module, name: str) -> nn.Module:
        converter = CONVERTERS.get(type(module))
        if converter is None:
            visit(module, name + "." if name else "")
            return module
        if id(module) not in done:
            try:
                reason = _hooks(module)
                if reason:
                    raise ValueError(reason)
                done[id(module)] = converter.from_torch(module, algo)
            except (ValueError, TypeError) as exc:
                skipped.append(f"{name or '<model>'} ({type(module).__name__}): {exc}")
                done[id(module)] = module
        return done[id(module)]

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent._modules.items()):
            if child is not None:
                new = replace(child, prefix + name)
                if new is not child:
                    setattr(parent, name, new)

    model = replace(model, "")
    if skipped:
        warnings.warn(
            f"fastconv.torch.convert left {len(skipped)} module(s) on torch: " + "; ".join(skipped),
            UserWarning,
            stacklevel=2,
        )
    return model


__all__ = [
    "convert",
    "CONVERTERS",
    "FastConv2d",
    "FastMaxPool2d",
    "FastAvgPool2d",
    "FastAdaptiveAvgPool2d",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
]
