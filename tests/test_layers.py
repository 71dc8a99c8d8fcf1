"""Layer objects: torch's constructor arguments, results against the float64 oracle, plans built
once per shape (and once under concurrent first calls), weights that invalidate the plans."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastconv
from fastconv import memory, registry, testing, validate

RNG = np.random.default_rng(5)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def check_conv(layer: fastconv.Conv2d, x: np.ndarray, y: np.ndarray) -> None:
    """The registry's accuracy contract for the algorithm the layer's plan uses."""
    _, w, b, p, _ = validate.conv2d_args(
        x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
    )
    x4 = x if x.ndim == 4 else x[None]
    assert y.shape == (p.out_shape if x.ndim == 4 else p.out_shape[1:])
    assert y.dtype == x.dtype
    testing.assert_algorithm_close(layer.plan(x4.shape).algorithm, y, x, w, b, p)


# --- Conv2d ---------------------------------------------------------------------------------
CASES = [  # (args, kwargs, input shape)
    ((3, 8, 3), dict(padding=1), (2, 3, 13, 11)),
    ((4, 6, (3, 5)), dict(stride=(2, 1), padding=(1, 2), bias=False), (1, 4, 17, 9)),
    ((6, 9, 3), dict(groups=3, dilation=2, padding="same"), (2, 6, 10, 12)),
    ((8, 8, 3), dict(groups=8, padding=1), (1, 8, 7, 7)),
    ((16, 24, 1), dict(), (3, 16, 5, 6)),
    ((20, 32, 3), dict(padding="valid"), (1, 20, 9, 9)),
]


@pytest.mark.parametrize("args,kwargs,shape", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_matches_reference(args, kwargs, shape, dtype):
    layer = fastconv.Conv2d(*args, **kwargs, dtype=dtype, seed=1)
    x = rand(*shape, dtype=dtype)
    check_conv(layer, x, layer(x))
    check_conv(layer, x[0], layer(x[0]))  # unbatched (C, H, W) input


def test_conv2d_attributes_and_init_follow_torch():
    layer = fastconv.Conv2d(4, 6, 3, stride=2, groups=2)
    assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == ((3, 3), (2, 2), (0, 0), (1, 1))
    assert layer.weight.shape == (6, 2, 3, 3) and layer.bias.shape == (6,)
    assert layer.weight.dtype == np.float32
    bound = 1 / np.sqrt(2 * 3 * 3)  # torch: U(±1/√fan_in), fan_in = C_in/groups · kH · kW
    assert np.abs(layer.weight).max() <= bound and np.abs(layer.bias).max() <= bound
    assert layer.weight.std() > bound / 4  # really random, not zeros
    assert fastconv.Conv2d(1, 1, 2, bias=False).bias is None
    assert repr(layer) == "Conv2d(4, 6, kernel_size=(3, 3), stride=(2, 2), groups=2)"


@pytest.mark.parametrize(
    "args,kwargs,exc",
    [
        ((0, 4, 3), {}, ValueError),
        ((3, 4, 0), {}, ValueError),
        ((3, 4, 3), dict(groups=2), ValueError),
        ((4, 6, 3), dict(groups=4), ValueError),
        ((3, 4, 3), dict(padding="same", stride=2), ValueError),
        ((3, 4, 3), dict(padding=-1), ValueError),
        ((3, 4, 3), dict(padding="full"), ValueError),
        ((3, 4, 3), dict(padding_mode="reflect"), ValueError),
        ((3, 4, 3), dict(bias="yes"), TypeError),
        ((3, 4, 2.5), {}, TypeError),
        ((3, 4, 3), dict(algo="fft"), ValueError),
    ],
)
def test_conv2d_constructor_validation(args, kwargs, exc):
    with pytest.raises(exc):
        fastconv.Conv2d(*args, **kwargs)


def test_weight_assignment_validates_copies_and_is_read_only():
    layer = fastconv.Conv2d(2, 3, 3)
    w = rand(3, 2, 3, 3)
    layer.weight = w
    w[...] = 0  # the layer holds its own copy
    assert np.abs(layer.weight).max() > 0
    with pytest.raises(ValueError):
        layer.weight[0, 0, 0, 0] = 1.0  # in-place edits would bypass plan invalidation
    with pytest.raises(ValueError, match="weight must have shape"):
        layer.weight = rand(3, 2, 5, 5)
    with pytest.raises(TypeError, match="float32 or float64"):
        layer.weight = np.ones((3, 2, 3, 3), dtype=np.int32)
    with pytest.raises(ValueError, match="bias must have shape"):
        layer.bias = rand(4)
    layer.bias = None
    x = rand(1, 2, 6, 6)
    check_conv(layer, x, layer(x))


@pytest.fixture
def count_prepare(monkeypatch):
    """Counts (and slows down) every weight preparation, so races would show as extra counts."""
    calls = []
    original = registry.Kernel.prepare

    def prepare(self, w, b, p):
        calls.append((self.name, p))
        time.sleep(0.02)
        return original(self, w, b, p)

    monkeypatch.setattr(registry.Kernel, "prepare", prepare)
    return calls


def test_plan_prepared_once_per_shape_for_every_batch(count_prepare):
    layer = fastconv.Conv2d(16, 16, 3, padding=1, seed=2)
    for n in (1, 3, 0, 1, 3):
        y = layer(rand(n, 16, 8, 8))
        assert y.shape == (n, 16, 8, 8)
    assert len(count_prepare) == 1
    layer(rand(2, 16, 9, 8))  # a new spatial shape needs its own plan
    assert len(count_prepare) == 2


def test_assigning_weights_bias_or_algo_invalidates_plans(count_prepare):
    layer = fastconv.Conv2d(3, 4, 3, seed=3)
    x = rand(2, 3, 8, 8)
    y0 = layer(x)
    layer.weight = layer.weight * 2
    y1 = layer(x)
    check_conv(layer, x, y1)
    assert not np.allclose(y0, y1)
    layer.bias = np.zeros(4, np.float32)
    check_conv(layer, x, layer(x))
    layer.algo = "im2col"
    assert layer.plan(x.shape).algorithm.name == "im2col"
    check_conv(layer, x, layer(x))
    assert len(count_prepare) == 4


def test_explicit_algo_that_cannot_run_the_shape_raises():
    layer = fastconv.Conv2d(3, 4, 7, algo="winograd")  # Winograd is built for 3x3 and 5x5 only
    with pytest.raises(ValueError, match="winograd"):
        layer(rand(1, 3, 8, 8))


def test_concurrent_first_calls_build_the_plan_once(count_prepare):
    layer = fastconv.Conv2d(8, 8, 3, padding=1, seed=4)
    x = rand(2, 8, 10, 10)
    outs, barrier = [None] * 6, threading.Barrier(6)

    def work(i):
        barrier.wait()
        outs[i] = layer(x)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(count_prepare) == 1
    for y in outs:
        np.testing.assert_array_equal(y, outs[0])


def test_conv2d_pickles_and_deepcopies():
    layer = fastconv.Conv2d(3, 5, 3, padding=1, seed=6)
    x = rand(1, 3, 7, 7)
    y = layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        np.testing.assert_array_equal(clone(x), y)
        np.testing.assert_array_equal(clone.weight, layer.weight)


def test_input_dtype_must_match_weights():
    layer = fastconv.Conv2d(3, 4, 3)
    with pytest.raises(TypeError, match="dtype"):
        layer(rand(1, 3, 8, 8, dtype=np.float64))


# --- pools ----------------------------------------------------------------------------------
def test_pool_layers_match_functional_and_torch_defaults():
    x = rand(2, 3, 11, 9)
    mp = fastconv.MaxPool2d(3)
    assert mp.stride == (3, 3) and mp.padding == (0, 0) and not mp.ceil_mode  # stride defaults to kernel
    np.testing.assert_array_equal(mp(x), fastconv.max_pool2d(x, 3))
    mp = fastconv.MaxPool2d((3, 2), stride=2, padding=1, ceil_mode=True, return_indices=True)
    y, idx = mp(x)
    y2, idx2 = fastconv.max_pool2d(x, (3, 2), 2, 1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(idx, idx2)
    ap = fastconv.AvgPool2d(2, stride=1, padding=1, count_include_pad=False, divisor_override=3)
    np.testing.assert_array_equal(ap(x), fastconv.avg_pool2d(x, 2, 1, 1, False, False, 3))
    aap = fastconv.AdaptiveAvgPool2d((None, 4))
    assert aap.output_size == (None, 4)
    assert aap(x).shape == (2, 3, 11, 4)
    np.testing.assert_array_equal(aap(x), fastconv.adaptive_avg_pool2d(x, (11, 4)))
    assert fastconv.AdaptiveAvgPool2d(1)(x[:0]).shape == (0, 3, 1, 1)


@pytest.mark.parametrize(
    "make,exc",
    [
        (lambda: fastconv.MaxPool2d(2, padding=2), ValueError),
        (lambda: fastconv.MaxPool2d(0), ValueError),
        (lambda: fastconv.MaxPool2d(2, ceil_mode=1), TypeError),
        (lambda: fastconv.AvgPool2d(2, divisor_override=0), ValueError),
        (lambda: fastconv.AvgPool2d(3, count_include_pad="no"), TypeError),
        (lambda: fastconv.AdaptiveAvgPool2d(0), ValueError),
        (lambda: fastconv.AdaptiveAvgPool2d("1"), TypeError),
        (lambda: fastconv.AdaptiveAvgPool2d((1, 2, 3)), ValueError),
    ],
)
def test_pool_constructor_validation(make, exc):
    with pytest.raises(exc):
        make()


def test_import_fastconv_does_not_import_torch():
    code = "import sys, fastconv; fastconv.Conv2d(1, 1, 3); print(sorted(m for m in ('torch',) if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_configuration_is_read_only_and_repeated_shapes_skip_validation(monkeypatch):
    layer, pool = fastconv.Conv2d(2, 3, 3, padding=1), fastconv.MaxPool2d(2)
    with pytest.raises(AttributeError):
        layer.stride = (2, 2)  # plans depend on it
    with pytest.raises(AttributeError):
        pool.kernel_size = 3
    x = rand(2, 2, 6, 6)
    y, z = layer(x), pool(x)
    calls = []
    for name in ("conv2d_args", "max_pool2d_args"):
        original = getattr(validate, name)
        monkeypatch.setattr(validate, name, lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
    np.testing.assert_array_equal(layer(x), y)
    np.testing.assert_array_equal(pool(x), z)
    assert calls == []  # same contiguous shape: remembered
    layer(x[:, :, ::2])  # a strided view is validated (and copied) every time
    pool(x[0])  # so is an unbatched input
    assert len(calls) == 2
    layer.bias = None  # the remembered ConvParams said has_bias=True: forgotten
    y = layer(x)
    assert len(calls) == 3
    check_conv(layer, x, y)


def test_layers_respect_the_output_budget(monkeypatch):
    x = rand(1, 2, 16, 16)
    monkeypatch.setitem(memory._limits, "call", 100)
    for layer in (fastconv.Conv2d(2, 2, 3), fastconv.MaxPool2d(2), fastconv.AvgPool2d(2)):
        with pytest.raises(MemoryError, match="over the limit"):
            layer(x)


def test_algo_tune_asks_the_tuner(monkeypatch, tmp_path):
    """``algo="tune"`` and ``FASTCONV_TUNE=1`` take the tuner's choice; plain auto never asks it."""
    from fastconv import tune

    asked = []
    monkeypatch.setattr(tune, "tune_layer", lambda p, *a, **k: asked.append(p) or "im2col")
    x = rand(1, 8, 12, 12)
    layer = fastconv.Conv2d(8, 8, 3, padding=1, algo="tune")
    assert layer.plan(x.shape).algorithm.name == "im2col" and len(asked) == 1
    check_conv(layer, x, layer(x))
    auto = fastconv.Conv2d(8, 8, 3, padding=1)
    assert auto.plan(x.shape).algorithm.name == "direct" and len(asked) == 1
    monkeypatch.setenv("FASTCONV_TUNE", "1")
    assert fastconv.Conv2d(8, 8, 3, padding=1).plan(x.shape).algorithm.name == "im2col"
    assert len(asked) == 2
