"""fastconv.zoo's networks as layer shapes: known layers of each paper, layer counts, and total
multiply-accumulates against the published figures (no torch needed, except the cross-check with
the seed ResNet-18 torch model)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from fastconv import zoo
from fastconv.params import ConvParams, PoolParams


def conv(n, c, h, co, k, s=1, p=0, g=1, w=None):
    return ConvParams.from_layer(n, c, h, co, k, s, p, groups=g, w=w)


def layers(name, batch=1):
    return {L.name.split(".", 1)[1]: L.params for L in zoo.net_layers(name, batch)}


def params_of(name, batch=1):
    return [L.params for L in zoo.net_layers(name, batch)]


def kinds(name):
    return Counter(L.kind for L in zoo.net_layers(name))


def test_at_least_eight_networks_from_papers():
    assert len(zoo.NETS) >= 8
    assert {"resnet18", "resnet50", "vgg16", "mobilenetv2", "densenet121", "squeezenet"} <= set(zoo.NETS)
    assert {"googlenet", "inceptionv3"} & set(zoo.NETS)
    assert {"shufflenetv2", "efficientnetb0"} & set(zoo.NETS)
    for net in zoo.NETS.values():
        assert "arXiv:" in net.paper and net.gmacs > 0


# published multiply-accumulates per 224x224 image (299 for Inception-v3), in billions; the
# brief's figures where it gives one, otherwise each Net's own source
PUBLISHED = {
    "resnet18": 1.8,
    "resnet50": 4.1,
    "vgg16": 15.5,
    "mobilenetv2": 0.30,
    "densenet121": 2.83,
    "googlenet": 1.586,
    "inceptionv3": 5.71,
    "squeezenet": 0.82,
    "shufflenetv2": 0.146,
    "efficientnetb0": 0.39,
}


@pytest.mark.parametrize("name", zoo.net_names())
def test_total_macs_match_the_published_figure(name):
    macs = zoo.net_macs(name) / 1e9
    assert macs == pytest.approx(PUBLISHED[name], rel=0.03)
    assert macs == pytest.approx(zoo.NETS[name].gmacs, rel=0.02)
    assert zoo.net_macs(name, batch=8) == 8 * zoo.net_macs(name)


def test_resnet50():
    L = layers("resnet50")
    assert L["conv1"] == conv(1, 3, 224, 64, 7, 2, 3)
    assert L["maxpool"] == PoolParams("max", 1, 64, 112, 112, (3, 3), (2, 2), (1, 1))
    assert L["layer4.0.conv1"] == conv(1, 1024, 14, 512, 1)
    assert L["layer4.1.conv1"] == conv(1, 2048, 7, 512, 1)  # 1x1 2048 -> 512
    assert L["layer4.0.conv2"] == conv(1, 512, 14, 512, 3, 2, 1)  # v1.5: stride on the 3x3
    assert L["layer2.0.downsample"] == conv(1, 256, 56, 512, 1, 2)
    assert L["avgpool"].kind == "adaptive_avg" and L["avgpool"].input_shape == (1, 2048, 7, 7)
    assert kinds("resnet50")["conv"] == 53 and kinds("resnet50")["fc"] == 1  # 49 + 4 projections


def test_resnet18():
    L = layers("resnet18", batch=8)
    assert L["conv1"] == conv(8, 3, 224, 64, 7, 2, 3)
    assert L["layer1.0.conv1"] == conv(8, 64, 56, 64, 3, 1, 1) and "layer1.0.downsample" not in L
    assert L["layer3.0.downsample"] == conv(8, 128, 28, 256, 1, 2)
    assert L["layer4.1.conv2"] == conv(8, 512, 7, 512, 3, 1, 1)
    assert kinds("resnet18")["conv"] == 20


def test_vgg16():
    L = layers("vgg16")
    assert L["conv1_1"] == conv(1, 3, 224, 64, 3, 1, 1)
    assert L["conv4_2"] == conv(1, 512, 28, 512, 3, 1, 1) and L["conv5_3"] == conv(1, 512, 14, 512, 3, 1, 1)
    assert L["pool5"] == PoolParams("max", 1, 512, 14, 14, (2, 2), (2, 2))
    assert L["fc6"].in_features == 25088
    assert kinds("vgg16") == Counter(conv=13, max=5, fc=3)


def test_mobilenetv2():
    L = layers("mobilenetv2")
    assert L["features.0"] == conv(1, 3, 224, 32, 3, 2, 1)
    assert L["features.1.dw"] == conv(1, 32, 112, 32, 3, 1, 1, g=32) and "features.1.expand" not in L
    assert L["features.2.dw"] == conv(1, 96, 112, 96, 3, 2, 1, g=96)
    dw = [p for p in params_of("mobilenetv2") if isinstance(p, ConvParams) and p.is_depthwise]
    assert conv(1, 960, 7, 960, 3, 1, 1, g=960) in dw  # depthwise 960 on 7x7
    assert len(dw) == 17 and L["features.18"] == conv(1, 320, 7, 1280, 1)
    assert kinds("mobilenetv2")["conv"] == 52


def test_densenet121():
    L = layers("densenet121")
    assert L["denseblock1.denselayer6.conv1"] == conv(1, 64 + 5 * 32, 56, 128, 1)
    assert L["denseblock4.denselayer16.conv2"] == conv(1, 128, 7, 32, 3, 1, 1)
    assert L["transition3.conv"] == conv(1, 1024, 14, 512, 1)
    assert L["transition1.pool"] == PoolParams("avg", 1, 128, 56, 56, (2, 2), (2, 2))
    assert L["classifier"].in_features == 1024
    assert kinds("densenet121")["conv"] + kinds("densenet121")["fc"] == 121


def test_googlenet():
    L = layers("googlenet")
    assert L["maxpool1"].ceil_mode and L["maxpool1"].out_shape == (1, 64, 56, 56)
    assert L["inception3a.5x5"] == conv(1, 16, 28, 32, 5, 1, 2)
    assert L["inception5b.1x1"] == conv(1, 832, 7, 384, 1)
    assert L["avgpool"] == PoolParams("avg", 1, 1024, 7, 7, (7, 7), (1, 1))
    assert kinds("googlenet")["conv"] == 57


def test_inceptionv3_at_299():
    L = layers("inceptionv3")
    assert L["Conv2d_1a_3x3"] == conv(1, 3, 299, 32, 3, 2)
    assert L["Conv2d_2a_3x3"].out_shape == (1, 32, 147, 147)
    assert L["Mixed_5b.branch1x1"].input_shape == (1, 192, 35, 35)
    p = L["Mixed_6b.branch7x7_2"]  # factorised 1x7
    assert (p.kh, p.kw, p.pad, p.h) == (1, 7, (0, 0, 3, 3), 17)
    assert L["Mixed_7c.branch1x1"] == conv(1, 2048, 8, 320, 1)
    assert L["Mixed_5b.avg_pool"] == PoolParams("avg", 1, 192, 35, 35, (3, 3), (1, 1), (1, 1))
    assert kinds("inceptionv3")["conv"] == 94


def test_squeezenet_shufflenet_efficientnet():
    L = layers("squeezenet")
    assert L["conv1"] == conv(1, 3, 224, 96, 7, 2) and L["conv1"].out_h == 109
    assert L["fire9.expand3x3"] == conv(1, 64, 13, 256, 3, 1, 1) and L["conv10"] == conv(1, 512, 13, 1000, 1)
    assert kinds("squeezenet")["conv"] == 26
    S = layers("shufflenetv2")
    assert S["stage2.0.branch1.dw"] == conv(1, 24, 56, 24, 3, 2, 1, g=24)
    assert S["stage4.3.branch2.dw"] == conv(1, 232, 7, 232, 3, 1, 1, g=232)
    assert S["conv5"] == conv(1, 464, 7, 1024, 1)
    E = layers("efficientnetb0")
    assert E["blocks.1.dw"] == conv(1, 96, 112, 96, 3, 2, 1, g=96)
    assert E["blocks.3.dw"] == conv(1, 144, 56, 144, 5, 2, 2, g=144)
    assert E["blocks.1.se.reduce"] == conv(1, 96, 1, 4, 1)
    assert E["head"] == conv(1, 320, 7, 1280, 1)


@pytest.mark.parametrize("name", zoo.net_names())
def test_distinct_layers_count_every_use(name):
    uses = zoo.distinct_layers(name, batch=8)
    every = [L for L in zoo.net_layers(name, batch=8) if L.kind != "fc"]
    assert sum(n for _, n in uses) == len(every)
    assert len({L.params for L, _ in uses}) == len(uses)
    assert all(L.params.n == 8 for L, _ in uses)
    pools = {L.params.kind for L, _ in uses if isinstance(L.params, PoolParams)}
    assert pools  # every network pools somewhere
    from fastconv.bench.runner import make_layer

    for L, _ in uses:  # every shape is one the layer objects can express
        if isinstance(L.params, PoolParams):
            make_layer(L.params)
        else:
            assert L.params.symmetric_padding


def test_coverage_of_the_suite():
    every = [L.params for n in zoo.net_names() for L, _ in zoo.distinct_layers(n)]
    convs = [p for p in every if isinstance(p, ConvParams)]
    assert {p.kh for p in convs} >= {1, 3, 5, 7} and any(p.kh != p.kw for p in convs)
    assert {p.stride for p in convs} == {(1, 1), (2, 2)}
    assert any(p.is_depthwise for p in convs) and any(p.groups == 1 for p in convs)
    assert {p.kind for p in every if isinstance(p, PoolParams)} == {"max", "avg", "adaptive_avg"}
    assert any(p.ceil_mode for p in every if isinstance(p, PoolParams))


def test_unknown_network():
    with pytest.raises(ValueError, match="network must be one of"):
        zoo.net_layers("resnet1000")


def test_trace_refuses_what_does_not_fit():
    t = zoo.Trace("x", 1)
    with pytest.raises(ValueError, match="does not fit"):
        t.conv("c", zoo.FMap(3, 4, 4), 8, 7)
    with pytest.raises(ValueError, match="groups"):
        t.conv("c", zoo.FMap(3, 8, 8), 8, 3, g=2)
    with pytest.raises(ValueError, match="concatenate"):
        t.cat(zoo.FMap(3, 8, 8), zoo.FMap(3, 4, 4))


def test_layer_shapes_need_no_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from fastconv import zoo\n"
        "print(zoo.net_macs('resnet50'))\n"
        "try:\n    zoo.build('lenet')\nexcept ImportError as e:\n    print('ImportError', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    macs, err = r.stdout.strip().splitlines()
    assert int(macs) == zoo.net_macs("resnet50") and "torch" in err


def test_resnet18_matches_the_seed_torch_model():
    """The traced ResNet-18 and the seed torch model (built independently) have the same convs."""
    torch = pytest.importorskip("torch")
    model = zoo.build("resnet18")
    seen = []
    hooks = [
        m.register_forward_hook(
            lambda m, i, o: seen.append(
                ConvParams.from_layer(
                    1, m.in_channels, i[0].shape[2], m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]
                )
            )
        )
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    traced = [p for p in params_of("resnet18") if isinstance(p, ConvParams)]
    assert Counter(seen) == Counter(traced)
