"""The registry and kernel contract, the auto rules, the thread knob and the workspace budget."""

import dataclasses

import numpy as np
import pytest

import fastconv
from fastconv import contract, registry, rules, threads
from fastconv.params import ConvParams, PoolParams

SUITE = {  # seed-network layers → the algorithm auto must pick (locks the measured heuristic)
    "lenet.conv1": (ConvParams.from_layer(64, 1, 28, 10, 5), "direct"),
    "lenet.conv2": (ConvParams.from_layer(64, 10, 12, 20, 5), "winograd"),
    "gate.5x5 (8 channels)": (ConvParams.from_layer(2, 8, 12, 16, 5, padding=2), "direct"),
    "alexnet.conv1": (ConvParams.from_layer(8, 1, 224, 96, 11, stride=4, padding=1), "direct"),
    "alexnet.conv2": (ConvParams.from_layer(8, 96, 26, 256, 5, padding=2), "winograd"),
    "alexnet.conv3": (ConvParams.from_layer(8, 256, 12, 384, 3, padding=1), "winograd"),
    "vgg16.conv3_2": (ConvParams.from_layer(1, 256, 56, 256, 3, padding=1), "winograd"),
    "resnet50.stem": (ConvParams.from_layer(1, 3, 224, 64, 7, stride=2, padding=3), "direct"),
    "resnet50.1x1_reduce": (ConvParams.from_layer(1, 256, 56, 64, 1), "pointwise"),
    "resnet50.1x1_expand": (ConvParams.from_layer(1, 64, 56, 256, 1), "pointwise"),
    "resnet50.1x1_expand.f64": (ConvParams.from_layer(1, 64, 56, 256, 1, dtype="float64"), "pointwise"),
    "resnet50.3x3_last": (ConvParams.from_layer(1, 512, 7, 512, 3, padding=1), "winograd"),
    "nin.1x1": (ConvParams.from_layer(8, 96, 54, 96, 1), "pointwise"),
    "seed003.1gflop": (ConvParams.from_layer(1, 100, 64, 100, 5, padding=2), "winograd"),
    "mobilenet.dw3x3": (ConvParams.from_layer(1, 256, 56, 256, 3, padding=1, groups=256), "direct"),
    "mobilenet.dw3x3.f64": (
        ConvParams.from_layer(1, 256, 56, 256, 3, padding=1, groups=256, dtype="float64"),
        "depthwise",
    ),
    "mobilenetv2.dw3x3 on 14x14": (ConvParams.from_layer(1, 576, 14, 576, 3, padding=1, groups=576), "depthwise"),
    "mobilenetv2.dw3x3 s2": (ConvParams.from_layer(1, 144, 56, 144, 3, stride=2, padding=1, groups=144), "depthwise"),
    "efficientnet.dw5x5": (ConvParams.from_layer(1, 672, 14, 672, 5, padding=2, groups=672), "depthwise"),
    "depthwise x2 (2 outputs a group)": (ConvParams.from_layer(1, 8, 14, 16, 3, padding=1, groups=8), "direct"),
}


@pytest.mark.parametrize("name", SUITE)
def test_auto_table(name):
    p, expected = SUITE[name]
    assert rules.choose(p) == expected
    assert rules.select(p).supports(p) is None


ONE_SHOT = {  # fastconv.conv2d prepares the weights for one call: 3x3 Winograd from 400 outputs,
    #          F(2x2) where F(4x4)'s U would exceed 24 MB
    "resnet50.3x3_last (49 outputs)": (SUITE["resnet50.3x3_last"][0], "direct"),
    "vgg16.conv5_2 (196)": (ConvParams.from_layer(1, 512, 14, 512, 3, padding=1), "direct"),
    "vgg16.conv5_2 x 4 (784, U 37.7 MB)": (ConvParams.from_layer(4, 512, 14, 512, 3, padding=1), "winograd_f2"),
    "vgg16.conv4_2 (784, U 37.7 MB)": (ConvParams.from_layer(1, 512, 28, 512, 3, padding=1), "winograd_f2"),
    "256 on 28x28 (784, U 9.4 MB)": (ConvParams.from_layer(1, 256, 28, 256, 3, padding=1), "winograd"),
    "399 outputs": (ConvParams.from_layer(1, 64, 19, 64, 3, padding=1, w=21), "direct"),
    "400 outputs": (ConvParams.from_layer(1, 64, 20, 64, 3, padding=1), "winograd"),
    "U 24.9 MB (< 24 MiB)": (ConvParams.from_layer(1, 416, 28, 416, 3, padding=1), "winograd"),
    "U 25.9 MB (> 24 MiB)": (ConvParams.from_layer(1, 424, 28, 424, 3, padding=1), "winograd_f2"),
    "float64, U 18.9 MB": (ConvParams.from_layer(1, 256, 28, 256, 3, padding=1, dtype="float64"), "winograd"),
    "float64, U 42.5 MB": (ConvParams.from_layer(1, 384, 28, 384, 3, padding=1, dtype="float64"), "winograd_f2"),
    "2 groups of 512, U 75.5 MB": (ConvParams.from_layer(1, 1024, 28, 1024, 3, padding=1, groups=2), "winograd_f2"),
    "2 groups of 128, U 4.7 MB": (ConvParams.from_layer(1, 256, 28, 256, 3, padding=1, groups=2), "winograd"),
    "alexnet.conv3": SUITE["alexnet.conv3"],
    "5x5 on 13x13 (169)": (ConvParams.from_layer(1, 48, 13, 128, 5, padding=2), "winograd"),
    "lenet.conv2": SUITE["lenet.conv2"],
    "nin.1x1": SUITE["nin.1x1"],
}


@pytest.mark.parametrize("name", ONE_SHOT)
def test_auto_table_one_shot(name):
    p, expected = ONE_SHOT[name]
    assert rules.choose(p, one_shot=True) == expected
    assert rules.select(p, one_shot=True).name == expected


def test_functional_conv2d_chooses_one_shot(monkeypatch):
    """fastconv.conv2d prepares its weights per call, so on a small map it skips Winograd (whose
    weight transform would cost more than the run) while a layer object keeps it."""
    wino = registry.get("winograd").kernel
    calls = []
    real = wino.prepare
    monkeypatch.setattr(wino, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 32, 7, 7)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    fastconv.conv2d(x, w, padding=1)
    assert calls == []
    fastconv.Conv2d(32, 32, 3, padding=1)(x)
    assert calls == [1]
    fastconv.conv2d(np.ones((1, 32, 20, 20), np.float32), w, padding=1)  # 400 outputs
    assert calls == [1, 1]


def test_registry_names_unique_and_contract_complete():
    assert len(set(registry.names())) == len(registry.REGISTRY)
    for alg in ALL_KERNELS:
        for fn in ("supports", "workspace_bytes", "prepare", "run"):
            assert callable(getattr(alg.kernel, fn)), f"{alg.name} lacks {fn}"
        assert alg.kernel.__doc__ and len(alg.kernel.__doc__) > 200, f"{alg.name}: document the design"
        assert set(alg.tolerance) == {"float32", "float64"}
    assert fastconv.algorithms() == registry.names()


CONV = ConvParams.from_layer(1, 16, 9, 16, 3, padding=1)
POOL_OF = {
    "max": PoolParams("max", 1, 4, 8, 8, (2, 2), (2, 2)),
    "avg": PoolParams("avg", 1, 4, 8, 8, (2, 2), (2, 2)),
    "adaptive_avg": PoolParams("adaptive_avg", 1, 4, 8, 8, output_size=(1, 1)),
}


ALL_KERNELS = registry.REGISTRY + registry.POOL_REGISTRY + registry.GRAD_REGISTRY


@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=[k.op + "." + k.name for k in ALL_KERNELS])
def test_every_kernel_answers_for_every_contract_field(kernel):
    """A pass, layout or epilogue a kernel does not run is refused with its name, never run."""
    base = CONV if kernel.op == "conv2d" else POOL_OF.get(kernel.name, POOL_OF["max"])
    if kernel.op == "conv2d" and kernel.name == "pointwise":
        base = ConvParams.from_layer(1, 16, 9, 16, 1)
    if kernel.op == "conv2d" and kernel.name == "depthwise":
        base = ConvParams.from_layer(1, 16, 9, 16, 3, padding=1, groups=16)
    base = dataclasses.replace(base, pass_=kernel.passes[0])
    assert kernel.supports(base) is None
    for pass_ in contract.PASSES:
        if pass_ not in kernel.passes:
            reason = kernel.supports(dataclasses.replace(base, pass_=pass_))
            assert reason and pass_ in reason, (pass_, reason)
    if kernel.op == "conv2d":
        reason = kernel.supports(dataclasses.replace(base, post_ops=("relu",)))
        assert reason and "relu" in reason
    fake = dataclasses.replace(base)
    object.__setattr__(fake, "layout", "NHWC")  # a layout the contract may learn later
    reason = kernel.supports(fake)
    assert reason and "NHWC" in reason


def test_contract_refuses_unknown_names():
    for bad, word in (
        ({"pass_": "backward"}, "backward"),
        ({"layout": "NHWC"}, "NHWC"),
        ({"post_ops": ("gelu",)}, "gelu"),
    ):
        with pytest.raises(ValueError, match=word):
            dataclasses.replace(CONV, **bad)


def test_direct_supports_every_forward_case():
    assert registry.get("direct").supports(ConvParams.from_layer(1, 6, 9, 6, 4, stride=3, groups=3)) is None
    assert registry.get("direct").supports(ConvParams.from_layer(1, 6, 9, 6, 4, dtype="float64")) is None


def test_workspace_budget_raises_before_allocating():
    p = ConvParams.from_layer(1, 64, 64, 64, 3, padding=1)
    need = registry.get("im2col").workspace_bytes(p, threads.get_num_threads())
    assert need > 0
    old = fastconv.get_workspace_limit()
    try:
        fastconv.set_workspace_limit(need - 1)
        x = np.ones(p.input_shape, np.float32)
        w = np.ones(p.weight_shape, np.float32)
        with pytest.raises(MemoryError, match=rf"im2col .*the workspace needs {need:,} bytes, over the limit"):
            fastconv.conv2d(x, w, padding=1, algo="im2col")
        fastconv.set_workspace_limit(need)
        fastconv.conv2d(x, w, padding=1, algo="im2col")
    finally:
        fastconv.set_workspace_limit(old)
    with pytest.raises(ValueError):
        fastconv.set_workspace_limit(-1)


def test_one_thread_knob():
    from threadpoolctl import threadpool_info

    old = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        for algo in fastconv.algorithms():  # every kernel, so every BLAS/OpenMP library is loaded
            k = 1 if algo == "pointwise" else 3
            g = 2 if algo == "depthwise" else 1
            x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((2, 2 // g, k, k), np.float32)
            fastconv.conv2d(x, w, groups=g, algo=algo)
        pools = [p for p in threadpool_info() if p["user_api"] in ("blas", "openmp")]
        assert {p["user_api"] for p in pools} == {"blas", "openmp"}, pools
        for pool in pools:
            assert pool["num_threads"] == 1, pool
    finally:
        fastconv.set_num_threads(old)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError):
            fastconv.set_num_threads(bad)
    assert threads.get_num_threads() == old


def test_import_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, fastconv; print('torch' in sys.modules, 'fastconv.kernels.direct' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
