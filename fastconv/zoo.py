"""The seed networks as torch models (random weights), and whole-model timing: torch vs converted.

Architectures, from the seed notes:

* ``lenet``     — seed 001's MNIST net: conv 1→10 k5, max pool 2, ReLU, conv 10→20 k5, Dropout2d,
                  max pool 2, ReLU, fc 320→10, log-softmax (input 1x28x28).
* ``alexnet``   — seed 002's simplified AlexNet (one conv 384 fewer, one fc 4096 fewer; 1 channel).
* ``nin``       — seed 002's Network in Network: four NiN blocks (conv + two 1x1), global average pool.
* ``vgg11``     — seed 003's table, configuration A (8 conv3 layers, 5 max pools, FC-4096, FC-4096).
* ``resnet18``  — basic residual blocks (two 3x3 conv + BatchNorm, 1x1 projection when the shape
                  changes), 2 per stage over 64/128/256/512 channels (seed 002 §7.6).
* ``inception`` — a small GoogLeNet-style net around two Inception blocks (seed 002 §7.4).
* ``densenet``  — a small DenseNet: two dense blocks (BN-ReLU-conv3, concatenated) and a
                  transition layer (BN-ReLU-conv1x1-avg pool 2) (seed 002 §7.7).

Builders take the input size so tests can run the nets small; the classifier adapts to it.
This module imports torch (only `fastconv.torch` users and the benchmark need it).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


# --- the seed networks -----------------------------------------------------------------------
class LeNet(nn.Module):
    """Seed 001's ``Net`` (its ``F.max_pool2d(x, 2)`` calls written as ``nn.MaxPool2d(2)`` modules)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(320, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.pool1(self.conv1(x)))                 # N x 10 x 12 x 12
        x = F.relu(self.pool2(self.conv2_drop(self.conv2(x))))  # N x 20 x 4 x 4
        return F.log_softmax(self.fc(x.flatten(1)), dim=1)


def _with_classifier(features: nn.Sequential, in_shape: tuple[int, int, int],
                     head: Callable[[int], list[nn.Module]]) -> nn.Sequential:
    """``features`` followed by ``head(flattened size)``: the fc input adapts to the image size."""
    with torch.no_grad():
        flat = features(torch.zeros(1, *in_shape)).numel()
    return nn.Sequential(*features, nn.Flatten(), *head(flat))


def lenet(image_size: int = 28, num_classes: int = 10) -> nn.Module:
    if image_size != 28:
        raise ValueError(f"lenet is defined for 28x28 inputs (fc 320→10), got image_size={image_size}")
    return LeNet(num_classes)


def alexnet(image_size: int = 224, num_classes: int = 10, hidden: int = 4096) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(1, 96, 11, stride=4, padding=1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    return _with_classifier(features, (1, image_size, image_size), lambda flat: [
        nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, num_classes)])


def nin_block(in_channels: int, out_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 1), nn.ReLU())


def nin(image_size: int = 224, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nin_block(1, 96, 11, 4, 0), nn.MaxPool2d(3, 2),
        nin_block(96, 256, 5, 1, 2), nn.MaxPool2d(3, 2),
        nin_block(256, 384, 3, 1, 1), nn.MaxPool2d(3, 2),
        nn.Dropout(),
        nin_block(384, num_classes, 3, 1, 1),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())


VGG11_CONFIG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]  # seed 003, column A


def vgg11(image_size: int = 224, num_classes: int = 1000, hidden: int = 4096) -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for v in VGG11_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return _with_classifier(nn.Sequential(*layers), (3, image_size, image_size), lambda flat: [
        nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(),
        nn.Linear(hidden, num_classes)])


class Residual(nn.Module):
    """Basic residual block: ``relu(bn(conv3(relu(bn(conv3(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()  # identity, or a 1x1 projection when the shape changes
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet18(image_size: int = 224, num_classes: int = 1000) -> nn.Module:
    stages, c = [], 64
    for i, width in enumerate((64, 128, 256, 512)):
        stages += [Residual(c, width, 1 if i == 0 else 2), Residual(width, width)]
        c = width
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        *stages, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, num_classes))


class Inception(nn.Module):
    """Four parallel paths (1x1; 1x1→3x3; 1x1→5x5; 3x3 max pool→1x1), concatenated on channels."""

    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int):
        super().__init__()
        self.p1_1 = nn.Conv2d(in_channels, c1, 1)
        self.p2_1, self.p2_2 = nn.Conv2d(in_channels, c2[0], 1), nn.Conv2d(c2[0], c2[1], 3, padding=1)
        self.p3_1, self.p3_2 = nn.Conv2d(in_channels, c3[0], 1), nn.Conv2d(c3[0], c3[1], 5, padding=2)
        self.p4_1, self.p4_2 = nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(in_channels, c4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def inception(image_size: int = 224, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        Inception(64, 64, (96, 128), (16, 32), 32),      # GoogLeNet's 3a/3b widths
        Inception(256, 128, (128, 192), (32, 96), 64),
        nn.MaxPool2d(3, 2, 1), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(480, num_classes))


def _bn_relu_conv(in_channels: int, out_channels: int, k: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, out_channels, k, padding=k // 2)]


class DenseBlock(nn.Module):
    """Each BN-ReLU-conv3 sees the concatenation of the block input and every earlier output."""

    def __init__(self, num_convs: int, in_channels: int, growth: int):
        super().__init__()
        self.net = nn.ModuleList(nn.Sequential(*_bn_relu_conv(in_channels + i * growth, growth, 3))
                                 for i in range(num_convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            x = torch.cat((x, blk(x)), dim=1)
        return x


def densenet(image_size: int = 224, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        DenseBlock(4, 64, 32),                                      # 64 + 4·32 = 192 channels
        *_bn_relu_conv(192, 96, 1), nn.AvgPool2d(2, stride=2),      # transition: halve C, H, W
        DenseBlock(4, 96, 32),                                      # 96 + 4·32 = 224 channels
        nn.BatchNorm2d(224), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(224, num_classes))


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[..., nn.Module]
    channels: int
    image_size: int        # the network's own input size (benchmarks)
    test_size: int         # a small size the network still runs at (tests)
    test_kwargs: dict = field(default_factory=dict)  # e.g. a narrower classifier for tests


MODELS: dict[str, ZooEntry] = {
    "lenet": ZooEntry(lenet, 1, 28, 28),
    "alexnet": ZooEntry(alexnet, 1, 224, 75, {"hidden": 64}),
    "nin": ZooEntry(nin, 1, 224, 75),
    "vgg11": ZooEntry(vgg11, 3, 224, 32, {"hidden": 64, "num_classes": 10}),
    "resnet18": ZooEntry(resnet18, 3, 224, 48, {"num_classes": 10}),
    "inception": ZooEntry(inception, 3, 224, 32),
    "densenet": ZooEntry(densenet, 3, 224, 32),
}


def model_names() -> list[str]:
    return list(MODELS)


def build(name: str, *, image_size: int | None = None, seed: int = 0, small: bool = False) -> nn.Module:
    """Seed network ``name`` in eval mode, with random weights and random BatchNorm statistics
    (so BatchNorm is not the identity). ``small=True`` uses the test size and classifier.

    Weights are He-initialised (as trained ReLU nets are scaled), not torch's default
    ±1/√fan_in: with that, activations shrink ~2.5x per layer and a deep net's output would be
    its last biases, hiding any error in the convolutions.
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}; got {name!r}")
    e = MODELS[name]
    torch.manual_seed(seed)
    size = image_size or (e.test_size if small else e.image_size)
    model = e.build(image_size=size, **(e.test_kwargs if small else {}))
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1, generator=g)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            nn.init.uniform_(m.weight, 0.5, 1.5, generator=g)
            nn.init.uniform_(m.bias, -0.1, 0.1, generator=g)
    return model.eval()


def input_shape(name: str, batch: int, *, image_size: int | None = None, small: bool = False) -> tuple[int, ...]:
    e = MODELS[name]
    size = image_size or (e.test_size if small else e.image_size)
    return (batch, e.channels, size, size)


# --- whole-model timing -------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelTiming:
    """Medians of interleaved runs: torch's original model vs the `fastconv.torch.convert`-ed one."""

    model: str
    batch: int
    threads: int
    input_shape: tuple[int, ...]
    torch_s: float          # median seconds per forward pass, original model
    fastconv_s: float       # median seconds per forward pass, converted model
    speedup: float          # torch_s / fastconv_s (> 1: the converted model is faster)
    max_rel_err: float      # max|y_fastconv − y_torch| / max|y_torch| on the timed input
    torch_times: list[float]
    fastconv_times: list[float]

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line: ``resnet18 batch 1 (1x3x224x224), 2 threads: torch 41.2 ms, fastconv 35.0 ms, 1.18x``."""
        shape = "x".join(map(str, self.input_shape))
        return (f"{self.model} batch {self.batch} ({shape}), {self.threads} threads: torch {self.torch_s * 1e3:.1f} ms, "
                f"fastconv {self.fastconv_s * 1e3:.1f} ms, {self.speedup:.2f}x (max rel err {self.max_rel_err:.1e})")


def time_model(name: str, batch: int = 1, threads: int = 2, repeats: int = 5, *,
               image_size: int | None = None, seed: int = 0, cooldown: float = 0.1) -> ModelTiming:
    """Time one forward pass of seed network ``name``, original vs converted, interleaved.

    Both run under ``torch.no_grad()`` with ``threads`` threads (``torch.set_num_threads`` and
    ``fastconv.set_num_threads``, restored afterwards). One untimed warm-up each (JIT, plans);
    then ``repeats`` rounds alternate original/converted with ``cooldown`` seconds between them,
    so spinning thread pools of one do not steal the cores of the other (DESIGN.md).
    """
    import fastconv
    from . import torch as fctorch

    if batch < 0 or repeats < 1 or threads < 1:
        raise ValueError(f"need batch >= 0, repeats >= 1, threads >= 1; got {batch}, {repeats}, {threads}")
    model = build(name, image_size=image_size, seed=seed)
    fast = fctorch.convert(model)
    x = torch.randn(*input_shape(name, batch, image_size=image_size),
                    generator=torch.Generator().manual_seed(seed + 2))
    old = (torch.get_num_threads(), fastconv.get_num_threads())
    torch.set_num_threads(threads)
    fastconv.set_num_threads(threads)
    try:
        with torch.no_grad():
            ref, got = model(x), fast(x)
            times: dict[str, list[float]] = {"torch": [], "fastconv": []}
            for _ in range(repeats):
                for key, m in (("torch", model), ("fastconv", fast)):
                    time.sleep(cooldown)
                    t0 = time.perf_counter()
                    m(x)
                    times[key].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old[0])
        fastconv.set_num_threads(old[1])
    scale = float(ref.abs().max()) or 1.0
    err = float((got - ref).abs().max()) / scale if ref.numel() else 0.0
    t_torch, t_fast = statistics.median(times["torch"]), statistics.median(times["fastconv"])
    return ModelTiming(name, batch, threads, tuple(x.shape), t_torch, t_fast, t_torch / t_fast, err,
                       times["torch"], times["fastconv"])


__all__ = ["MODELS", "ModelTiming", "build", "input_shape", "model_names", "time_model",
           "lenet", "alexnet", "nin", "vgg11", "resnet18", "inception", "densenet"]
