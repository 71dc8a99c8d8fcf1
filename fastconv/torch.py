"""torch interop: run a torch model's convolutions and pools on fastconv, for inference.

    >>> import fastconv.torch
    >>> fast = fastconv.torch.convert(model)      # a converted deep copy; model is untouched
    >>> with torch.no_grad():
    ...     y = fast(x)

`convert` replaces every ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d`` and
``nn.AdaptiveAvgPool2d`` (exactly those types: a subclass may change ``forward``) by a thin
``nn.Module`` that calls the matching `fastconv.layers` object; every other module is kept as
it was. A module fastconv cannot run (``padding_mode`` other than zeros, float16 weights, a
non-CPU device, …) stays on torch and is named in one warning.

Tensors go in and come out without copies where the layout allows: a contiguous NCHW CPU
tensor is read in place (``Tensor.numpy()``), and the result is ``torch.from_numpy`` of the
array fastconv wrote. Other layouts (channels_last, slices) are first copied to contiguous
NCHW; results are always contiguous NCHW. fastconv computes no gradients, so a converted
module refuses an input that requires grad while grad mode is on.

This module imports torch; ``import fastconv`` never does.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from . import dispatch, layers, validate
from .functional import adaptive_avg_pool2d, avg_pool2d, conv2d, max_pool2d


class _FastModule(nn.Module):
    """Base of the converted modules: holds one fastconv layer object and calls it."""

    def __init__(self, layer: Any):
        super().__init__()
        self.layer = layer  # a plain object, not a submodule

    def forward(self, input: torch.Tensor):
        validate.inference_only(input.requires_grad, torch.is_grad_enabled(), type(self).__name__)
        return self.layer(input)

    def extra_repr(self) -> str:
        return f"fastconv {self.layer!r}"

    def __getattr__(self, name: str):
        # torch code reads in_channels, kernel_size, stride, ... from these modules
        layer = self.__dict__.get("layer")
        if layer is not None and name in layer._cfg:
            return getattr(layer, name)
        return super().__getattr__(name)


class FastConv2d(_FastModule):
    """``nn.Conv2d`` running on `fastconv.Conv2d`. Its ``state_dict`` has the same ``weight`` /
    ``bias`` entries as the original, so ``load_state_dict`` works on converted models."""

    padding_mode = "zeros"

    @classmethod
    def from_torch(cls, module: nn.Conv2d, algo: str = "auto") -> "FastConv2d":
        return cls(layers.Conv2d.from_torch(module, algo=algo))

    @property
    def weight(self) -> torch.Tensor:
        return torch.from_numpy(self.layer.weight.copy())

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.layer.bias
        return None if b is None else torch.from_numpy(b.copy())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        if self.layer.bias is not None:
            destination[prefix + "bias"] = self.bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = ("weight", "bias") if self.layer.bias is not None else ("weight",)
        for name in names:
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            try:
                setattr(self.layer, name, state_dict[key])
            except (ValueError, TypeError) as exc:
                error_msgs.append(f"while copying {key}: {exc}")
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix)
                                   and "." not in k[len(prefix):] and k[len(prefix):] not in names)


class FastMaxPool2d(_FastModule):
    @classmethod
    def from_torch(cls, module: nn.MaxPool2d, algo: str = "auto") -> "FastMaxPool2d":
        return cls(layers.MaxPool2d.from_torch(module))


class FastAvgPool2d(_FastModule):
    @classmethod
    def from_torch(cls, module: nn.AvgPool2d, algo: str = "auto") -> "FastAvgPool2d":
        return cls(layers.AvgPool2d.from_torch(module))


class FastAdaptiveAvgPool2d(_FastModule):
    @classmethod
    def from_torch(cls, module: nn.AdaptiveAvgPool2d, algo: str = "auto") -> "FastAdaptiveAvgPool2d":
        return cls(layers.AdaptiveAvgPool2d.from_torch(module))


CONVERTERS: dict[type, type[_FastModule]] = {
    nn.Conv2d: FastConv2d,
    nn.MaxPool2d: FastMaxPool2d,
    nn.AvgPool2d: FastAvgPool2d,
    nn.AdaptiveAvgPool2d: FastAdaptiveAvgPool2d,
}


def convert(model: nn.Module, *, algo: str = "auto", inplace: bool = False) -> nn.Module:
    """``model`` with its convolutions and pools running on fastconv (a deep copy unless ``inplace``).

    Weights are copied at conversion time; the result is for inference (use it under
    ``torch.no_grad()``, and in ``eval()`` mode as you would the original). ``algo`` is passed
    to every `fastconv.Conv2d`. Modules that stay on torch are listed in a `UserWarning`.
    """
    algo = validate.algo_name(algo, dispatch.names())
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
        warnings.warn(f"fastconv.torch.convert left {len(skipped)} module(s) on torch: " + "; ".join(skipped),
                      UserWarning, stacklevel=2)
    return model


__all__ = ["convert", "CONVERTERS", "FastConv2d", "FastMaxPool2d", "FastAvgPool2d", "FastAdaptiveAvgPool2d",
           "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]
