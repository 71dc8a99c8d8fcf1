"""Networks two ways: well-known architectures as *layer shapes* (no torch), and the seed
networks as torch models with whole-model timing (torch vs converted).

Layer shapes (`NETS`; `net_layers`, `distinct_layers`, `net_macs`) — every conv, pool and fully
connected layer of a network, traced from its paper on a symbolic feature map, so the benchmark
(``fastconv bench --suite nets``) and the tuner (``fastconv tune``) cover real networks without
torchvision. Convs carry a bias: at inference BatchNorm folds into the preceding conv's weights
and bias, so that is the layer a deployed network runs. Auxiliary classifiers (training only)
are left out, and so are element-wise ops (ReLU, BatchNorm, additions, concatenation, channel
shuffle), which are not convolutions or pools.

* ``resnet18``, ``resnet50`` — He et al. 2015 (arXiv:1512.03385), Table 1; ResNet-50 with the
  stride on the 3x3 conv of each bottleneck ("v1.5", torchvision's and the usual 4.1 GMAC figure).
* ``vgg16``          — Simonyan & Zisserman 2014 (arXiv:1409.1556), configuration D.
* ``mobilenetv2``    — Sandler et al. 2018 (arXiv:1801.04381), Table 2, width 1.0.
* ``densenet121``    — Huang et al. 2016 (arXiv:1608.06993), Table 1 (growth 32, 4k bottlenecks).
* ``googlenet``      — Szegedy et al. 2014 (arXiv:1409.4842), Table 1 (5x5 branches, 3x3/2 max
  pools rounding up as in the original Caffe model, 7x7 average pool).
* ``inceptionv3``    — Szegedy et al. 2015 (arXiv:1512.00567), as torchvision's ``inception_v3``
  (299x299 input; the factorised 1x7/7x1 and 1x3/3x1 convs).
* ``squeezenet``     — Iandola et al. 2016 (arXiv:1602.07360), SqueezeNet 1.0, Table 1.
* ``shufflenetv2``   — Ma et al. 2018 (arXiv:1807.11164), Table 5, 1.0x.
* ``efficientnetb0`` — Tan & Le 2019 (arXiv:1905.11946), Table 1, with squeeze-and-excitation
  (ratio 0.25 of the block input) and symmetric padding (k // 2) as torchvision's.

Seed networks (`MODELS`; `build`, `time_model`), from the seed notes — torch models with random
weights:

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
torch is optional: the layer shapes never need it, the seed models do (`build` says so when it
is missing).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple

from .params import ConvParams, PoolParams

if TYPE_CHECKING:  # the type checker sees torch's types; at run time torch is optional
    import torch
    import torch.nn.functional as F
    from torch import nn

    _Module = nn.Module
else:
    try:
        import torch
        import torch.nn.functional as F
        from torch import nn

        _Module = nn.Module
    except ImportError:  # plain `pip install fastconv`: the layer shapes still work
        torch = F = nn = None
        _Module = object


# --- architectures as layer shapes --------------------------------------------------------------
@dataclass(frozen=True)
class FC:
    """A fully connected layer: counted in a network's MACs, but neither conv nor pool."""

    n: int
    in_features: int
    out_features: int

    @property
    def macs(self) -> int:
        return self.n * self.in_features * self.out_features

    def describe(self) -> str:
        return f"fc {self.n}x{self.in_features} -> {self.out_features}"


@dataclass(frozen=True)
class NetLayer:
    """One layer of a traced network: ``name`` is ``<net>.<path>`` (e.g. ``resnet50.layer1.0.conv2``)."""

    name: str
    params: ConvParams | PoolParams | FC

    @property
    def kind(self) -> str:
        """``"conv"``, ``"fc"`` or the pool kind (``"max"``, ``"avg"``, ``"adaptive_avg"``)."""
        if isinstance(self.params, ConvParams):
            return "conv"
        return "fc" if isinstance(self.params, FC) else self.params.kind

    @property
    def macs(self) -> int:
        return self.params.macs if isinstance(self.params, (ConvParams, FC)) else 0


class FMap(NamedTuple):
    """A feature map's shape (batch excluded): what the trace passes from layer to layer."""

    c: int
    h: int
    w: int


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (h, w)


class Trace:
    """Records the layers of a network walked on symbolic feature maps (`FMap`).

    Each method takes the input map, records the layer at batch ``batch`` and returns the output
    map; `cat` concatenates maps on channels (checking that their sizes agree), as a network's
    forward pass would. A size that does not fit raises, so a wrong transcription of a paper
    fails at trace time rather than producing odd shapes.
    """

    def __init__(self, net: str, batch: int, dtype: str = "float32"):
        self.net, self.batch, self.dtype = net, batch, dtype
        self.layers: list[NetLayer] = []

    def _add(self, name: str, params) -> None:
        self.layers.append(NetLayer(f"{self.net}.{name}", params))

    def conv(
        self,
        name: str,
        x: FMap,
        c_out: int,
        k: int | tuple[int, int],
        s: int = 1,
        p: int | tuple[int, int] = 0,
        g: int = 1,
    ) -> FMap:
        """A convolution (``k``, ``p`` an int or a (height, width) pair; ``g`` groups)."""
        (kh, kw), (ph, pw) = _pair(k), _pair(p)
        if x.c % g or c_out % g:
            raise ValueError(f"{self.net}.{name}: groups {g} must divide {x.c} and {c_out}")
        cp = ConvParams(self.batch, x.c, x.h, x.w, c_out, kh, kw, (s, s), (ph, ph, pw, pw), (1, 1), g, self.dtype)
        if cp.out_h < 1 or cp.out_w < 1:
            raise ValueError(f"{self.net}.{name}: kernel {kh}x{kw} does not fit {x.h}x{x.w}")
        self._add(name, cp)
        return FMap(c_out, cp.out_h, cp.out_w)

    def _pool(self, kind: str, name: str, x: FMap, k: int, s: int, p: int, ceil: bool, **kw) -> FMap:
        pp = PoolParams(kind, self.batch, x.c, x.h, x.w, (k, k), (s, s), (p, p), ceil_mode=ceil, dtype=self.dtype, **kw)
        if pp.out_h < 1 or pp.out_w < 1:
            raise ValueError(f"{self.net}.{name}: window {k} does not fit {x.h}x{x.w}")
        self._add(name, pp)
        return FMap(x.c, pp.out_h, pp.out_w)

    def max(self, name: str, x: FMap, k: int, s: int, p: int = 0, ceil: bool = False) -> FMap:
        return self._pool("max", name, x, k, s, p, ceil)

    def avg(
        self, name: str, x: FMap, k: int, s: int, p: int = 0, ceil: bool = False, count_include_pad: bool = True
    ) -> FMap:
        return self._pool("avg", name, x, k, s, p, ceil, count_include_pad=count_include_pad)

    def gap(self, name: str, x: FMap) -> FMap:
        """Global average pooling (``AdaptiveAvgPool2d(1)``)."""
        self._add(name, PoolParams("adaptive_avg", self.batch, x.c, x.h, x.w, output_size=(1, 1), dtype=self.dtype))
        return FMap(x.c, 1, 1)

    def fc(self, name: str, x: FMap, out: int) -> FMap:
        """A fully connected layer on the flattened map."""
        self._add(name, FC(self.batch, x.c * x.h * x.w, out))
        return FMap(out, 1, 1)

    @staticmethod
    def cat(*xs: FMap) -> FMap:
        if len({(x.h, x.w) for x in xs}) != 1:
            raise ValueError(f"cannot concatenate maps of different sizes: {xs}")
        return FMap(sum(x.c for x in xs), xs[0].h, xs[0].w)


def _resnet(t: Trace, x: FMap, blocks: tuple[int, ...], bottleneck: bool) -> None:
    x = t.conv("conv1", x, 64, 7, 2, 3)
    x = t.max("maxpool", x, 3, 2, 1)
    for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for j in range(n):
            s, pre = (2 if i and not j else 1), f"layer{i + 1}.{j}."
            if bottleneck:
                out = 4 * width
                y = t.conv(pre + "conv1", x, width, 1)
                y = t.conv(pre + "conv2", y, width, 3, s, 1)  # v1.5: the stride sits on the 3x3
                y = t.conv(pre + "conv3", y, out, 1)
            else:
                out = width
                y = t.conv(pre + "conv1", x, width, 3, s, 1)
                y = t.conv(pre + "conv2", y, width, 3, 1, 1)
            if s != 1 or x.c != out:  # projection shortcut
                t.conv(pre + "downsample", x, out, 1, s)
            x = y
    t.fc("fc", t.gap("avgpool", x), 1000)


def _vgg16(t: Trace, x: FMap) -> None:
    for block, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), 1):
        for i in range(1, convs + 1):
            x = t.conv(f"conv{block}_{i}", x, width, 3, 1, 1)
        x = t.max(f"pool{block}", x, 2, 2)
    x = t.fc("fc6", x, 4096)
    t.fc("fc8", t.fc("fc7", x, 4096), 1000)


def _mobilenetv2(t: Trace, x: FMap) -> None:
    x = t.conv("features.0", x, 32, 3, 2, 1)
    idx = 1
    for expand, c_out, n, s in (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ):
        for j in range(n):
            pre, hidden = f"features.{idx}.", x.c * expand
            y = t.conv(pre + "expand", x, hidden, 1) if expand != 1 else x
            y = t.conv(pre + "dw", y, hidden, 3, s if j == 0 else 1, 1, g=hidden)
            x = t.conv(pre + "project", y, c_out, 1)
            idx += 1
    x = t.conv(f"features.{idx}", x, 1280, 1)
    t.fc("classifier", t.gap("avgpool", x), 1000)


def _densenet121(t: Trace, x: FMap, growth: int = 32, bn_size: int = 4) -> None:
    x = t.conv("conv0", x, 64, 7, 2, 3)
    x = t.max("pool0", x, 3, 2, 1)
    for b, n in enumerate((6, 12, 24, 16), 1):
        for i in range(1, n + 1):
            pre = f"denseblock{b}.denselayer{i}."
            y = t.conv(pre + "conv1", x, bn_size * growth, 1)
            x = t.cat(x, t.conv(pre + "conv2", y, growth, 3, 1, 1))
        if b < 4:
            x = t.conv(f"transition{b}.conv", x, x.c // 2, 1)
            x = t.avg(f"transition{b}.pool", x, 2, 2)
    t.fc("classifier", t.gap("avgpool", x), 1000)


# GoogLeNet Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
_GOOGLENET = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _googlenet(t: Trace, x: FMap) -> None:
    x = t.conv("conv1", x, 64, 7, 2, 3)
    x = t.max("maxpool1", x, 3, 2, ceil=True)
    x = t.conv("conv2", x, 64, 1)
    x = t.conv("conv3", x, 192, 3, 1, 1)
    x = t.max("maxpool2", x, 3, 2, ceil=True)
    for name, (c1, r3, c3, r5, c5, pp) in _GOOGLENET.items():
        if name in ("4a", "5a"):
            x = t.max(f"maxpool{name[0]}", x, 3, 2, ceil=True)
        pre = f"inception{name}."
        a = t.conv(pre + "1x1", x, c1, 1)
        b = t.conv(pre + "3x3", t.conv(pre + "3x3_reduce", x, r3, 1), c3, 3, 1, 1)
        c = t.conv(pre + "5x5", t.conv(pre + "5x5_reduce", x, r5, 1), c5, 5, 1, 2)
        d = t.conv(pre + "pool_proj", t.max(pre + "pool", x, 3, 1, 1, ceil=True), pp, 1)
        x = t.cat(a, b, c, d)
    t.fc("loss3.classifier", t.avg("avgpool", x, 7, 1), 1000)


def _inceptionv3(t: Trace, x: FMap) -> None:
    x = t.conv("Conv2d_1a_3x3", x, 32, 3, 2)
    x = t.conv("Conv2d_2a_3x3", x, 32, 3)
    x = t.conv("Conv2d_2b_3x3", x, 64, 3, 1, 1)
    x = t.max("maxpool1", x, 3, 2)
    x = t.conv("Conv2d_3b_1x1", x, 80, 1)
    x = t.conv("Conv2d_4a_3x3", x, 192, 3)
    x = t.max("maxpool2", x, 3, 2)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):  # InceptionA
        pre, c = name + ".", t.conv
        a = c(pre + "branch1x1", x, 64, 1)
        b = c(pre + "branch5x5_2", c(pre + "branch5x5_1", x, 48, 1), 64, 5, 1, 2)
        d = c(pre + "branch3x3dbl_1", x, 64, 1)
        d = c(pre + "branch3x3dbl_3", c(pre + "branch3x3dbl_2", d, 96, 3, 1, 1), 96, 3, 1, 1)
        e = c(pre + "branch_pool", t.avg(pre + "avg_pool", x, 3, 1, 1), pool_features, 1)
        x = t.cat(a, b, d, e)
    pre, c = "Mixed_6a.", t.conv  # InceptionB
    a = c(pre + "branch3x3", x, 384, 3, 2)
    d = c(pre + "branch3x3dbl_2", c(pre + "branch3x3dbl_1", x, 64, 1), 96, 3, 1, 1)
    d = c(pre + "branch3x3dbl_3", d, 96, 3, 2)
    x = t.cat(a, d, t.max(pre + "max_pool", x, 3, 2))
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):  # InceptionC
        pre = name + "."
        a = c(pre + "branch1x1", x, 192, 1)
        b = c(pre + "branch7x7_1", x, c7, 1)
        b = c(pre + "branch7x7_3", c(pre + "branch7x7_2", b, c7, (1, 7), 1, (0, 3)), 192, (7, 1), 1, (3, 0))
        d = c(pre + "branch7x7dbl_1", x, c7, 1)
        d = c(pre + "branch7x7dbl_3", c(pre + "branch7x7dbl_2", d, c7, (7, 1), 1, (3, 0)), c7, (1, 7), 1, (0, 3))
        d = c(pre + "branch7x7dbl_5", c(pre + "branch7x7dbl_4", d, c7, (7, 1), 1, (3, 0)), 192, (1, 7), 1, (0, 3))
        e = c(pre + "branch_pool", t.avg(pre + "avg_pool", x, 3, 1, 1), 192, 1)
        x = t.cat(a, b, d, e)
    pre = "Mixed_7a."  # InceptionD
    a = c(pre + "branch3x3_2", c(pre + "branch3x3_1", x, 192, 1), 320, 3, 2)
    b = c(pre + "branch7x7x3_1", x, 192, 1)
    b = c(pre + "branch7x7x3_3", c(pre + "branch7x7x3_2", b, 192, (1, 7), 1, (0, 3)), 192, (7, 1), 1, (3, 0))
    b = c(pre + "branch7x7x3_4", b, 192, 3, 2)
    x = t.cat(a, b, t.max(pre + "max_pool", x, 3, 2))
    for name in ("Mixed_7b", "Mixed_7c"):  # InceptionE
        pre = name + "."
        a = c(pre + "branch1x1", x, 320, 1)
        b = c(pre + "branch3x3_1", x, 384, 1)
        b = t.cat(
            c(pre + "branch3x3_2a", b, 384, (1, 3), 1, (0, 1)), c(pre + "branch3x3_2b", b, 384, (3, 1), 1, (1, 0))
        )
        d = c(pre + "branch3x3dbl_2", c(pre + "branch3x3dbl_1", x, 448, 1), 384, 3, 1, 1)
        d = t.cat(
            c(pre + "branch3x3dbl_3a", d, 384, (1, 3), 1, (0, 1)), c(pre + "branch3x3dbl_3b", d, 384, (3, 1), 1, (1, 0))
        )
        e = c(pre + "branch_pool", t.avg(pre + "avg_pool", x, 3, 1, 1), 192, 1)
        x = t.cat(a, b, d, e)
    t.fc("fc", t.gap("avgpool", x), 1000)


def _squeezenet(t: Trace, x: FMap) -> None:
    x = t.conv("conv1", x, 96, 7, 2)
    x = t.max("maxpool1", x, 3, 2, ceil=True)
    fires = {
        2: (16, 64),
        3: (16, 64),
        4: (32, 128),
        5: (32, 128),
        6: (48, 192),
        7: (48, 192),
        8: (64, 256),
        9: (64, 256),
    }  # squeeze 1x1, expand 1x1 = expand 3x3
    for i, (s, e) in fires.items():
        if i in (5, 9):
            x = t.max(f"maxpool{i - 1}", x, 3, 2, ceil=True)
        y = t.conv(f"fire{i}.squeeze", x, s, 1)
        x = t.cat(t.conv(f"fire{i}.expand1x1", y, e, 1), t.conv(f"fire{i}.expand3x3", y, e, 3, 1, 1))
    t.gap("avgpool", t.conv("conv10", x, 1000, 1))


def _shufflenetv2(t: Trace, x: FMap) -> None:
    x = t.conv("conv1", x, 24, 3, 2, 1)
    x = t.max("maxpool", x, 3, 2, 1)
    for stage, (n, c_out) in enumerate(((4, 116), (8, 232), (4, 464)), 2):
        half = c_out // 2
        for j in range(n):
            pre = f"stage{stage}.{j}."
            if j == 0:  # stride 2: both branches see the whole input
                a = t.conv(pre + "branch1.pw", t.conv(pre + "branch1.dw", x, x.c, 3, 2, 1, g=x.c), half, 1)
                src = x
            else:  # stride 1: the channel split feeds half the input to branch 2
                a = src = FMap(half, x.h, x.w)
            y = t.conv(pre + "branch2.pw1", src, half, 1)
            y = t.conv(pre + "branch2.dw", y, half, 3, 2 if j == 0 else 1, 1, g=half)
            x = t.cat(a, t.conv(pre + "branch2.pw2", y, half, 1))
    x = t.conv("conv5", x, 1024, 1)
    t.fc("fc", t.gap("globalpool", x), 1000)


def _efficientnetb0(t: Trace, x: FMap) -> None:
    x = t.conv("stem", x, 32, 3, 2, 1)
    idx = 0
    for expand, k, s, c_out, n in (
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    ):
        for j in range(n):
            pre, hidden = f"blocks.{idx}.", x.c * expand
            y = t.conv(pre + "expand", x, hidden, 1) if expand != 1 else x
            y = t.conv(pre + "dw", y, hidden, k, s if j == 0 else 1, k // 2, g=hidden)
            z = t.conv(pre + "se.reduce", t.gap(pre + "se.pool", y), max(1, x.c // 4), 1)
            t.conv(pre + "se.expand", z, hidden, 1)
            x = t.conv(pre + "project", y, c_out, 1)
            idx += 1
    x = t.conv("head", x, 1280, 1)
    t.fc("classifier", t.gap("avgpool", x), 1000)


@dataclass(frozen=True)
class Net:
    """A network as layer shapes: ``trace(t, x)`` walks it on a `Trace` from the input map."""

    name: str
    title: str
    paper: str
    image_size: int
    gmacs: float  # the published multiply-accumulates per image, in billions
    gmacs_source: str
    trace: Callable[[Trace, FMap], None]


NETS: dict[str, Net] = {
    n.name: n
    for n in (
        Net(
            "resnet18",
            "ResNet-18",
            "He et al. 2015, arXiv:1512.03385",
            224,
            1.81,
            "torchvision weights table (1.81 GFLOPS, counted as MACs)",
            lambda t, x: _resnet(t, x, (2, 2, 2, 2), False),
        ),
        Net(
            "resnet50",
            "ResNet-50 (v1.5)",
            "He et al. 2015, arXiv:1512.03385",
            224,
            4.09,
            "torchvision weights table (4.09); the paper's 3.8 is v1, stride on the first 1x1",
            lambda t, x: _resnet(t, x, (3, 4, 6, 3), True),
        ),
        Net(
            "vgg16",
            "VGG-16",
            "Simonyan & Zisserman 2014, arXiv:1409.1556",
            224,
            15.47,
            "torchvision weights table (15.47)",
            _vgg16,
        ),
        Net(
            "mobilenetv2",
            "MobileNetV2 1.0",
            "Sandler et al. 2018, arXiv:1801.04381",
            224,
            0.300,
            "the paper, Table 4 (300M multiply-adds)",
            _mobilenetv2,
        ),
        Net(
            "densenet121",
            "DenseNet-121",
            "Huang et al. 2016, arXiv:1608.06993",
            224,
            2.83,
            "torchvision weights table (2.83)",
            _densenet121,
        ),
        Net(
            "googlenet",
            "GoogLeNet",
            "Szegedy et al. 2014, arXiv:1409.4842",
            224,
            1.586,
            "the paper, Table 1 (sum of the ops column: 1586M)",
            _googlenet,
        ),
        Net(
            "inceptionv3",
            "Inception-v3",
            "Szegedy et al. 2015, arXiv:1512.00567",
            299,
            5.71,
            "torchvision weights table (5.71)",
            _inceptionv3,
        ),
        Net(
            "squeezenet",
            "SqueezeNet 1.0",
            "Iandola et al. 2016, arXiv:1602.07360",
            224,
            0.82,
            "torchvision weights table (squeezenet1_0: 0.82)",
            _squeezenet,
        ),
        Net(
            "shufflenetv2",
            "ShuffleNetV2 1.0x",
            "Ma et al. 2018, arXiv:1807.11164",
            224,
            0.146,
            "the paper, Table 5 (146 MFLOPs, counted as multiply-adds)",
            _shufflenetv2,
        ),
        Net(
            "efficientnetb0",
            "EfficientNet-B0",
            "Tan & Le 2019, arXiv:1905.11946",
            224,
            0.39,
            "the paper, Table 2 (0.39B FLOPs, counted as multiply-adds)",
            _efficientnetb0,
        ),
    )
}


def net_names() -> list[str]:
    """Names of the networks in `NETS`, in a fixed order."""
    return list(NETS)


def _net(name: str) -> Net:
    if name not in NETS:
        raise ValueError(f"network must be one of {', '.join(NETS)}; got {name!r}")
    return NETS[name]


def net_layers(name: str, batch: int = 1, image_size: int | None = None, dtype: str = "float32") -> list[NetLayer]:
    """Every conv, pool and fully connected layer of network ``name``, in forward order.

    Parameters
    ----------
    name : str
        A key of `NETS` (e.g. ``"resnet50"``).
    batch : int
        The batch size every layer's description carries.
    image_size : int, optional
        Square input size; default the network's own (224, or 299 for Inception-v3).
    dtype : str
        Element type of every layer.

    Returns
    -------
    list of NetLayer
        Repeated shapes appear once per use (a ResNet-50 stage repeats its blocks).

    Examples
    --------
    >>> net_layers("resnet50")[0].params.describe()
    '1x3x224x224 -> 64 k7x7 s2x2 p3,3,3,3 float32'
    """
    net = _net(name)
    size = image_size or net.image_size
    t = Trace(name, batch, dtype)
    net.trace(t, FMap(3, size, size))
    return t.layers


def net_macs(name: str, batch: int = 1, image_size: int | None = None) -> int:
    """Multiply-accumulates of one forward pass: every conv and fully connected layer."""
    return sum(L.macs for L in net_layers(name, batch, image_size))


def distinct_layers(
    name: str, batch: int = 1, image_size: int | None = None, dtype: str = "float32"
) -> list[tuple[NetLayer, int]]:
    """Each distinct conv and pool of network ``name`` once, with how often the network runs it.

    Returns
    -------
    list of (NetLayer, int)
        The first layer of each shape (its name) and its number of uses, in forward order.
    """
    seen: dict = {}
    for L in net_layers(name, batch, image_size, dtype):
        if isinstance(L.params, FC):
            continue
        if L.params in seen:
            seen[L.params][1] += 1
        else:
            seen[L.params] = [L, 1]
    return [(L, n) for L, n in seen.values()]


# --- the seed networks (torch models) -----------------------------------------------------------
def _need_torch() -> None:
    if torch is None:
        raise ImportError("the seed networks are torch models: pip install 'fastconv[peers]' (torch)")


class LeNet(_Module):
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
        x = F.relu(self.pool1(self.conv1(x)))  # N x 10 x 12 x 12
        x = F.relu(self.pool2(self.conv2_drop(self.conv2(x))))  # N x 20 x 4 x 4
        return F.log_softmax(self.fc(x.flatten(1)), dim=1)


def _with_classifier(
    features: nn.Sequential, in_shape: tuple[int, int, int], head: Callable[[int], list[nn.Module]]
) -> nn.Sequential:
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
        nn.Conv2d(1, 96, 11, stride=4, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )
    return _with_classifier(
        features,
        (1, image_size, image_size),
        lambda flat: [nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, num_classes)],
    )


def nin_block(in_channels: int, out_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 1),
        nn.ReLU(),
    )


def nin(image_size: int = 224, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nin_block(1, 96, 11, 4, 0),
        nn.MaxPool2d(3, 2),
        nin_block(96, 256, 5, 1, 2),
        nn.MaxPool2d(3, 2),
        nin_block(256, 384, 3, 1, 1),
        nn.MaxPool2d(3, 2),
        nn.Dropout(),
        nin_block(384, num_classes, 3, 1, 1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    )


VGG11_CONFIG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]  # seed 003, column A


def vgg11(image_size: int = 224, num_classes: int = 1000, hidden: int = 4096) -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for v in VGG11_CONFIG:
        if isinstance(v, int):
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
        else:  # "M"
            layers.append(nn.MaxPool2d(2, 2))
    return _with_classifier(
        nn.Sequential(*layers),
        (3, image_size, image_size),
        lambda flat: [
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        ],
    )


class Residual(_Module):
    """Basic residual block: ``relu(bn(conv3(relu(bn(conv3(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()  # identity, or a 1x1 projection when the shape changes
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet18(image_size: int = 224, num_classes: int = 1000) -> nn.Module:
    stages, c = [], 64
    for i, width in enumerate((64, 128, 256, 512)):
        stages += [Residual(c, width, 1 if i == 0 else 2), Residual(width, width)]
        c = width
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        *stages,
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )


class Inception(_Module):
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
        nn.Conv2d(3, 64, 7, 2, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        Inception(64, 64, (96, 128), (16, 32), 32),  # GoogLeNet's 3a/3b widths
        Inception(256, 128, (128, 192), (32, 96), 64),
        nn.MaxPool2d(3, 2, 1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(480, num_classes),
    )


def _bn_relu_conv(in_channels: int, out_channels: int, k: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, out_channels, k, padding=k // 2)]


class DenseBlock(_Module):
    """Each BN-ReLU-conv3 sees the concatenation of the block input and every earlier output."""

    def __init__(self, num_convs: int, in_channels: int, growth: int):
        super().__init__()
        self.net = nn.ModuleList(
            nn.Sequential(*_bn_relu_conv(in_channels + i * growth, growth, 3)) for i in range(num_convs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            x = torch.cat((x, blk(x)), dim=1)
        return x


def densenet(image_size: int = 224, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        DenseBlock(4, 64, 32),  # 64 + 4·32 = 192 channels
        *_bn_relu_conv(192, 96, 1),
        nn.AvgPool2d(2, stride=2),  # transition: halve C, H, W
        DenseBlock(4, 96, 32),  # 96 + 4·32 = 224 channels
        nn.BatchNorm2d(224),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(224, num_classes),
    )


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[..., nn.Module]
    channels: int
    image_size: int  # the network's own input size (benchmarks)
    test_size: int  # a small size the network still runs at (tests)
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
    _need_torch()
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
            # the zoo's BatchNorms track running statistics (torch's default)
            assert m.running_mean is not None and m.running_var is not None
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
    torch_s: float  # median seconds per forward pass, original model
    fastconv_s: float  # median seconds per forward pass, converted model
    speedup: float  # torch_s / fastconv_s (> 1: the converted model is faster)
    max_rel_err: float  # max|y_fastconv − y_torch| / max|y_torch| on the timed input
    torch_times: list[float]
    fastconv_times: list[float]

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line: ``resnet18 batch 1 (1x3x224x224), 2 threads: torch 41.2 ms, fastconv 35.0 ms, 1.18x``."""
        shape = "x".join(map(str, self.input_shape))
        return (
            f"{self.model} batch {self.batch} ({shape}), {self.threads} threads: torch {self.torch_s * 1e3:.1f} ms, "
            f"fastconv {self.fastconv_s * 1e3:.1f} ms, {self.speedup:.2f}x (max rel err {self.max_rel_err:.1e})"
        )


def time_model(
    name: str,
    batch: int = 1,
    threads: int = 2,
    repeats: int = 5,
    *,
    image_size: int | None = None,
    seed: int = 0,
    cooldown: float = 0.1,
) -> ModelTiming:
    """Time one forward pass of seed network ``name``, original vs converted, interleaved.

    Both run under ``torch.no_grad()`` with ``threads`` threads (``torch.set_num_threads`` and
    ``fastconv.set_num_threads``, restored afterwards). One untimed warm-up each (the converted
    model prepares its plans on its first call); then ``repeats`` rounds alternate
    original/converted with ``cooldown`` seconds between them, so spinning thread pools of one
    do not steal the cores of the other (DESIGN.md).
    """
    import fastconv

    from . import torch as fctorch

    if batch < 0 or repeats < 1 or threads < 1:
        raise ValueError(f"need batch >= 0, repeats >= 1, threads >= 1; got {batch}, {repeats}, {threads}")
    model = build(name, image_size=image_size, seed=seed)
    fast = fctorch.convert(model)
    x = torch.randn(*input_shape(name, batch, image_size=image_size), generator=torch.Generator().manual_seed(seed + 2))
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
    return ModelTiming(
        name, batch, threads, tuple(x.shape), t_torch, t_fast, t_torch / t_fast, err, times["torch"], times["fastconv"]
    )


__all__ = [
    "NETS",
    "Net",
    "NetLayer",
    "FC",
    "FMap",
    "Trace",
    "net_names",
    "net_layers",
    "net_macs",
    "distinct_layers",
    "MODELS",
    "ModelTiming",
    "build",
    "input_shape",
    "model_names",
    "time_model",
    "lenet",
    "alexnet",
    "nin",
    "vgg11",
    "resnet18",
    "inception",
    "densenet",
]
