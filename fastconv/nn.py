"""The NumPy pieces around fastconv's layers that train a small CNN end to end, without torch.

fastconv owns the convolutions and pools (`fastconv.Conv2d`, `MaxPool2d`, `AvgPool2d`,
`AdaptiveAvgPool2d`, each with ``backward``); this module adds what a LeNet or a small VGG needs
besides them — `Linear`, `ReLU`, `Flatten`, `Dropout2d`, `Sequential`, `cross_entropy` and `SGD`
— and no more: it is a training loop's worth of NumPy, not a framework (no autograd graph, no
batch norm, no other optimizers). `lenet` builds seed 001's MNIST net from these pieces.

Every layer follows one protocol, so `Sequential` and `SGD` treat fastconv's layers and these
alike:

* ``layer(x)`` — forward; in training mode (``layer.train()``; layers start in eval mode, where
  nothing is saved) it keeps what ``backward`` needs;
* ``layer.backward(grad_output, input_grad=True)`` — dL/dinput of the last training-mode call,
  once per call; parameter gradients are *added* to the layer's ``*_grad`` attributes, as
  torch's ``.grad`` accumulates; ``input_grad=False`` skips dL/dinput (a first layer);
* trainable layers also have ``parameters()`` and ``gradients()`` (dicts by name: ``"weight"``,
  ``"bias"``; `Sequential` prefixes the layer's index, ``"0.weight"``, as a torch
  ``state_dict`` names them), ``set_parameters(mapping)`` and ``zero_grad()``.

A step of training is then::

    logits = model(x)
    loss, dlogits = cross_entropy(logits, y)
    optimizer.zero_grad()
    model.backward(dlogits, input_grad=False)
    optimizer.step()

Arrays are float32 or float64 NumPy arrays; a layer's output has its input's dtype.

Examples
--------
>>> import numpy as np, fastconv
>>> from fastconv.nn import Sequential, Linear, ReLU, Flatten, SGD, cross_entropy
>>> model = Sequential(fastconv.Conv2d(1, 4, 3, padding=1, seed=0), ReLU(), fastconv.MaxPool2d(2),
...                    Flatten(), Linear(4 * 4 * 4, 3, seed=0)).train()
>>> x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
>>> y = np.arange(8) % 3
>>> opt = SGD(model, lr=0.1, momentum=0.9)
>>> losses = []
>>> for _ in range(20):
...     loss, dlogits = cross_entropy(model(x), y)
...     opt.zero_grad()
...     _ = model.backward(dlogits, input_grad=False)
...     opt.step()
...     losses.append(loss)
>>> losses[-1] < 0.5 * losses[0]
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import threads, validate
from .layers import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d, _Trainable

__all__ = ["Linear", "ReLU", "Flatten", "Dropout2d", "Sequential", "cross_entropy", "SGD", "lenet"]


def _param(value: Any, name: str, shape: tuple[int, ...], dtype: np.dtype | None = None) -> np.ndarray:
    arr = validate.layer_param(value, name, shape)  # float32/float64 of this shape, a private copy
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} like the layer's other parameters, got {arr.dtype}")
    return arr


class Linear(_Trainable):
    """Fully connected layer ``y = x @ weight.T + bias``, as ``torch.nn.Linear``.

    Its GEMMs run on one BLAS thread: a multi-threaded BLAS pool keeps its threads spinning for a
    while after each call, on the cores the next convolution's OpenMP threads need (the two pools
    fight, `fastconv.threads`); the classifier GEMMs of the small CNNs this module trains are
    small next to their convolutions.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    dtype : numpy dtype
        float32 or float64.
    seed : int, optional
        Seed of the initial weights, uniform in ±1/√in_features like torch's.

    Examples
    --------
    >>> fc = Linear(3, 2, seed=0).train()
    >>> y = fc(np.ones((4, 3), np.float32))
    >>> fc.backward(np.ones_like(y)).shape, fc.weight_grad.tolist()
    ((4, 3), [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: Any = np.float32,
        seed: int | None = None,
    ):
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        dt = np.dtype(dtype)
        self.weight = _param(
            rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(dt),
            "weight",
            (self.out_features, self.in_features),
        )
        self.bias = (
            _param(rng.uniform(-bound, bound, self.out_features).astype(dt), "bias", (self.out_features,))
            if bias
            else None
        )
        self.weight_grad: np.ndarray | None = None
        self.bias_grad: np.ndarray | None = None

    @classmethod
    def from_torch(cls, module: Any) -> "Linear":
        """A copy of a ``torch.nn.Linear``'s configuration and weights."""
        layer = cls(
            module.in_features,
            module.out_features,
            module.bias is not None,
            dtype=validate.as_array(module.weight, "weight").dtype,
        )
        layer.set_parameters({"weight": module.weight, **({"bias": module.bias} if module.bias is not None else {})})
        return layer

    def __call__(self, input: Any) -> np.ndarray:
        x = validate.as_array(input, "input")
        if x.shape[-1:] != (self.in_features,) or x.dtype != self.weight.dtype:
            raise ValueError(
                f"Linear({self.in_features}, {self.out_features}) takes (..., {self.in_features}) "
                f"{self.weight.dtype} input, got {x.shape} {x.dtype}"
            )
        with threads.blas_limit(1):
            y = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        if self.training:
            self._saved = x
        return y

    forward = __call__

    def backward(self, grad_output: Any, *, input_grad: bool = True) -> np.ndarray | None:
        """dL/dinput of the last training-mode call; adds dL/dweight and dL/dbias to the ``*_grad``."""
        x = self._take_saved()
        dy = validate.as_array(grad_output, "grad_output")
        if dy.shape != x.shape[:-1] + (self.out_features,):
            raise ValueError(
                f"grad_output must have the output's shape {x.shape[:-1] + (self.out_features,)}, got {dy.shape}"
            )
        x2, dy2 = x.reshape(-1, self.in_features), dy.reshape(-1, self.out_features)
        with threads.blas_limit(1):
            dw = dy2.T @ x2
            dx = dy @ self.weight if input_grad else None
        self.weight_grad = dw if self.weight_grad is None else self.weight_grad + dw
        if self.bias is not None:
            db = dy2.sum(axis=0)
            self.bias_grad = db if self.bias_grad is None else self.bias_grad + db
        return dx

    def parameters(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight} if self.bias is None else {"weight": self.weight, "bias": self.bias}

    def gradients(self) -> dict[str, np.ndarray | None]:
        return (
            {"weight": self.weight_grad} if self.bias is None else {"weight": self.weight_grad, "bias": self.bias_grad}
        )

    def set_parameters(self, values: Mapping[str, Any]) -> None:
        """Assign ``"weight"`` and/or ``"bias"`` (arrays or tensors; validated and copied)."""
        unknown = set(values) - set(self.parameters())
        if unknown:
            raise KeyError(f"Linear has parameters {sorted(self.parameters())}, got {sorted(unknown)}")
        dt = self.weight.dtype
        if "weight" in values:
            self.weight = _param(values["weight"], "weight", (self.out_features, self.in_features), dt)
        if "bias" in values:
            self.bias = _param(values["bias"], "bias", (self.out_features,), dt)

    def zero_grad(self) -> None:
        self.weight_grad = self.bias_grad = None

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class ReLU(_Trainable):
    """``max(x, 0)``; the gradient passes where the output is positive (torch's rule at 0: none).

    Examples
    --------
    >>> relu = ReLU().train()
    >>> relu(np.array([-1.0, 0.0, 2.0])), relu.backward(np.ones(3))
    (array([0., 0., 2.]), array([0., 0., 1.]))
    """

    def __call__(self, input: Any) -> np.ndarray:
        x = validate.as_array(input, "input")
        y = np.maximum(x, 0)
        if self.training:
            self._saved = y > 0
        return y

    forward = __call__

    def backward(self, grad_output: Any, *, input_grad: bool = True) -> np.ndarray | None:
        mask = self._take_saved()
        return np.where(mask, np.asarray(grad_output), 0) if input_grad else None

    def __repr__(self) -> str:
        return "ReLU()"


class Flatten(_Trainable):
    """``(N, ...) → (N, prod(...))``, as ``torch.nn.Flatten()``; backward restores the shape.

    Examples
    --------
    >>> f = Flatten().train()
    >>> f(np.zeros((2, 3, 4, 5))).shape, f.backward(np.zeros((2, 60))).shape
    ((2, 60), (2, 3, 4, 5))
    """

    def __call__(self, input: Any) -> np.ndarray:
        x = validate.as_array(input, "input")
        if self.training:
            self._saved = x.shape
        return x.reshape(x.shape[0], -1)

    forward = __call__

    def backward(self, grad_output: Any, *, input_grad: bool = True) -> np.ndarray | None:
        shape = self._take_saved()
        return np.asarray(grad_output).reshape(shape) if input_grad else None

    def __repr__(self) -> str:
        return "Flatten()"


class Dropout2d(_Trainable):
    """Channel dropout, as ``torch.nn.Dropout2d`` on (N, C, H, W) input: in training mode each
    (sample, channel) plane is zeroed with probability ``p`` and the others are scaled by
    1/(1 − p); in eval mode the identity. Backward applies the same mask and scale (in eval
    mode, the identity: a model in training may switch its dropout off, as in torch).

    The masks come from this layer's own NumPy generator (``seed``), not torch's: a NumPy model
    and its torch twin draw different masks, so their training runs agree only in distribution.

    Examples
    --------
    >>> drop = Dropout2d(0.5, seed=0).train()
    >>> y = drop(np.ones((2, 4, 3, 3), np.float32))
    >>> sorted(set(y.ravel().tolist())), bool((drop.backward(np.ones_like(y)) == y).all())
    ([0.0, 2.0], True)
    >>> drop.eval()(np.ones((1, 2, 1, 1), np.float32)).ravel().tolist()
    [1.0, 1.0]
    """

    def __init__(self, p: float = 0.5, *, seed: int | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_torch(cls, module: Any, seed: int | None = None) -> "Dropout2d":
        return cls(module.p, seed=seed)

    def __call__(self, input: Any) -> np.ndarray:
        x = validate.as_array(input, "input")
        if x.ndim not in (3, 4):
            raise ValueError(f"Dropout2d takes (N, C, H, W) or (C, H, W) input, got {x.shape}")
        if not self.training or self.p == 0.0:
            self._saved = 1.0  # the identity, in eval mode too: an eval-mode dropout inside a training model
            return x
        keep = self.rng.random(x.shape[:-2] + (1, 1)) >= self.p
        scale = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p) if self.p < 1.0 else 0.0)
        self._saved = scale
        return x * scale

    forward = __call__

    def backward(self, grad_output: Any, *, input_grad: bool = True) -> np.ndarray | None:
        scale = self._take_saved()
        return np.asarray(grad_output) * scale if input_grad else None

    def __repr__(self) -> str:
        return f"Dropout2d(p={self.p})"


class Sequential(_Trainable):
    """Layers called in order; ``backward`` runs their backward passes in reverse.

    ``train``/``eval`` switch every layer; ``parameters``/``gradients``/``set_parameters`` name a
    layer's parameter ``"<index>.<name>"`` (nested: ``"1.0.weight"``), as a torch ``state_dict``
    of the same ``nn.Sequential`` does, so ``set_parameters(torch_model.state_dict())`` copies a
    torch twin's weights.

    Examples
    --------
    >>> model = Sequential(Flatten(), Linear(4, 2, seed=0))
    >>> sorted(model.parameters())
    ['1.bias', '1.weight']
    >>> model(np.zeros((3, 2, 2), np.float32)).shape
    (3, 2)
    """

    def __init__(self, *layers: Any):
        self.layers = list(layers)

    @classmethod
    def from_torch(cls, module: Any) -> "Sequential":
        """A copy of a ``torch.nn.Sequential`` of Conv2d, Linear, ReLU, Flatten, Dropout2d, the
        pools and nested Sequentials (anything else raises TypeError, naming it)."""
        import torch.nn as tnn

        kinds: dict[type, Any] = {
            tnn.Conv2d: Conv2d,
            tnn.Linear: Linear,
            tnn.MaxPool2d: MaxPool2d,
            tnn.AvgPool2d: AvgPool2d,
            tnn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
            tnn.Sequential: Sequential,
            tnn.Dropout2d: Dropout2d,
        }
        layers: list[Any] = []
        for name, m in module.named_children():
            if type(m) in kinds:
                layers.append(kinds[type(m)].from_torch(m))
            elif type(m) is tnn.ReLU:
                layers.append(ReLU())
            elif type(m) is tnn.Flatten and (m.start_dim, m.end_dim) == (1, -1):
                layers.append(Flatten())
            else:
                raise TypeError(f"Sequential.from_torch: no NumPy layer for {name!r}: {m!r}")
        return cls(*layers).train(module.training)

    def __getitem__(self, i: int) -> Any:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __call__(self, input: Any) -> Any:
        for layer in self.layers:
            input = layer(input)
        return input

    forward = __call__

    def backward(self, grad_output: Any, *, input_grad: bool = True) -> Any:
        """Backward through every layer, last first; ``input_grad=False`` spares the first layer's
        dL/dinput (returns None)."""
        g = grad_output
        for i in range(len(self.layers) - 1, -1, -1):
            g = self.layers[i].backward(g, input_grad=input_grad or i > 0)
        return g

    def train(self, mode: bool = True) -> "Sequential":
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def _named(self, method: str) -> dict[str, Any]:
        out = {}
        for i, layer in enumerate(self.layers):
            if hasattr(layer, method):
                out.update({f"{i}.{k}": v for k, v in getattr(layer, method)().items()})
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        return self._named("parameters")

    def gradients(self) -> dict[str, np.ndarray | None]:
        return self._named("gradients")

    def set_parameters(self, values: Mapping[str, Any]) -> None:
        """Assign parameters by ``"<index>.<name>"``; unknown names raise KeyError before any change."""
        unknown = set(values) - set(self.parameters())
        if unknown:
            raise KeyError(f"no parameters named {sorted(unknown)} (this model has {sorted(self.parameters())})")
        per_layer: dict[int, dict[str, Any]] = {}
        for key, v in values.items():
            index, name = key.split(".", 1)
            per_layer.setdefault(int(index), {})[name] = v
        for i, vals in per_layer.items():
            self.layers[i].set_parameters(vals)  # one update (one plan drop) per layer

    def zero_grad(self) -> None:
        for layer in self.layers:
            if hasattr(layer, "zero_grad"):
                layer.zero_grad()

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


def cross_entropy(logits: Any, target: Any) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of ``logits`` (N, classes) against class indices ``target`` (N,),
    as ``torch.nn.functional.cross_entropy``, and its gradient dL/dlogits (logits' dtype).

    Examples
    --------
    >>> loss, dlogits = cross_entropy(np.zeros((2, 4), np.float32), np.array([0, 3]))
    >>> round(loss, 6) == round(math.log(4), 6), dlogits[0].tolist()
    (True, [-0.375, 0.125, 0.125, 0.125])
    """
    z = validate.as_array(logits, "logits")
    t = np.asarray(target)
    if z.ndim != 2 or t.shape != (z.shape[0],) or t.dtype.kind not in "iu":
        raise ValueError(
            f"cross_entropy takes logits (N, classes) and integer targets (N,), got {z.shape}, {t.shape} {t.dtype}"
        )
    if t.size and (t.min() < 0 or t.max() >= z.shape[1]):
        raise ValueError(f"targets must be class indices in [0, {z.shape[1]}), got {t.min()}..{t.max()}")
    n = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)  # the max subtracted: exp cannot overflow
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(s[:, 0], dtype=np.float64) - shifted[rows, t]))
    g = e / s
    g[rows, t] -= 1
    g /= n
    return loss, g


class SGD:
    """Stochastic gradient descent with momentum, torch's ``optim.SGD`` update for every parameter
    ``p`` with gradient ``g`` (a parameter whose gradient is None is left alone)::

        g = g + weight_decay * p
        buf = g (first step), else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
        p = p - lr * g

    ``model`` is anything with ``parameters()``/``gradients()``/``set_parameters()``/``zero_grad()``
    (a `Sequential`, a `fastconv.Conv2d`, a `Linear`); ``step`` hands all new values to one
    ``set_parameters`` call, so each conv prepares its weights once per step.

    Examples
    --------
    >>> fc = Linear(2, 1, bias=False, seed=0).train()
    >>> fc.set_parameters({"weight": np.array([[1.0, 1.0]], np.float32)})
    >>> opt = SGD(fc, lr=0.5, momentum=0.9)
    >>> _ = fc.backward(fc(np.ones((1, 2), np.float32)))   # L = y²/2 → dL/dw = y·x = 2
    >>> opt.step(); fc.weight.tolist()
    [[0.0, 0.0]]
    """

    def __init__(
        self,
        model: Any,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"lr, momentum and weight_decay must be non-negative, got {lr}, {momentum}, {weight_decay}"
            )
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs a momentum and zero dampening")
        self.model, self.lr, self.momentum, self.dampening = model, lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov
        self.buffers: dict[str, np.ndarray] = {}

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def step(self) -> None:
        params, new = self.model.parameters(), {}
        for name, g in self.model.gradients().items():
            if g is None:
                continue
            p = params[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                buf = self.buffers.get(name)
                buf = g.copy() if buf is None else self.momentum * buf + (1 - self.dampening) * g
                self.buffers[name] = buf
                g = g + self.momentum * buf if self.nesterov else buf
            new[name] = p - self.lr * g
        self.model.set_parameters(new)


_LENET_INDEX = {"conv1": 0, "conv2": 3, "fc": 8}  # seed 001's layer names → `lenet`'s positions


def lenet(num_classes: int = 10, *, dtype: Any = np.float32, seed: int | None = None, like: Any = None) -> Sequential:
    """Seed 001's MNIST net in NumPy, layer for layer as its torch ``Net`` (``fastconv.zoo.LeNet``):
    conv 1→10 5x5, max pool 2, ReLU, conv 10→20 5x5, Dropout2d(0.5), max pool 2, ReLU, flatten,
    fc 320→``num_classes``, on 1x28x28 inputs. It returns the fc's logits: the seed's final
    ``log_softmax`` is left to `cross_entropy` (the cross-entropy of log-softmaxed logits is that
    of the logits).

    ``like``: a torch module with the seed's parameter names (``conv1.weight`` … ``fc.bias``,
    e.g. ``fastconv.zoo.lenet()``) whose weights the NumPy net copies; otherwise the weights are
    drawn from ``seed`` as torch's default initialisation draws them (uniform in ±1/√fan_in).

    Examples
    --------
    >>> net = lenet(seed=0).train()
    >>> net(np.zeros((2, 1, 28, 28), np.float32)).shape
    (2, 10)
    >>> sorted(net.parameters())
    ['0.bias', '0.weight', '3.bias', '3.weight', '8.bias', '8.weight']
    """
    s = [None] * 4 if seed is None else [4 * seed + i for i in range(4)]
    model = Sequential(
        Conv2d(1, 10, 5, dtype=dtype, seed=s[0]),
        MaxPool2d(2),
        ReLU(),
        Conv2d(10, 20, 5, dtype=dtype, seed=s[1]),
        Dropout2d(0.5, seed=s[2]),
        MaxPool2d(2),
        ReLU(),
        Flatten(),
        Linear(320, num_classes, dtype=dtype, seed=s[3]),
    )
    if like is not None:
        state = like.state_dict()
        unknown = {k.split(".")[0] for k in state} - set(_LENET_INDEX)
        if unknown:
            raise KeyError(f"like must have seed 001's layers conv1, conv2, fc; it also has {sorted(unknown)}")
        model.set_parameters({f"{_LENET_INDEX[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in state.items()})
    return model
