"""Training without torch: the layers' backward passes (against `fastconv.grad` and torch autograd),
`fastconv.nn`'s pieces, a NumPy LeNet following a torch twin step for step, and a real dataset.

Tolerances: the layers run `fastconv.grad`'s kernels on what the forward call saved, so their
gradients equal the functions' bit for bit; against torch autograd they are compared in float64
(the conv kernels' accuracy contract; pools equal exactly). Seed 001's LeNet trajectory is float32 on
both sides with differently ordered sums, so the losses agree to a relative 1e-4 over the steps
(float32 rounding grown through 10 momentum steps; tests/test_seed_training.py measures how far
that rounding carries a trajectory).
"""

from __future__ import annotations

import copy
import doctest
import pickle
import time

import numpy as np
import pytest

import fastconv
from fastconv import grad, registry
from fastconv import nn as fnn

RNG = np.random.default_rng(11)
TRAJECTORY_RTOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """The layers here are tiny: one thread for fastconv (and BLAS) and torch keeps the tests fast
    and steady on a loaded machine, where idle pools spinning against each other cost more than
    the arithmetic."""
    try:
        import torch
    except ImportError:
        torch = None
    old = fastconv.get_num_threads(), (torch.get_num_threads() if torch else 0)
    fastconv.set_num_threads(1)
    if torch:
        torch.set_num_threads(1)
    yield
    fastconv.set_num_threads(old[0])
    if torch:
        torch.set_num_threads(old[1])


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# --- Conv2d.backward ------------------------------------------------------------------------------
CONV_CASES = [  # (args, kwargs, input shape)
    ((1, 6, 5), dict(padding=2), (4, 1, 12, 12)),  # LeNet conv1
    ((6, 16, 5), dict(), (4, 6, 14, 14)),  # LeNet conv2
    ((3, 8, 3), dict(padding=1), (2, 3, 20, 20)),  # stride-1 "forward" route
    ((4, 6, (3, 5)), dict(stride=(2, 1), padding=(1, 2), bias=False), (2, 4, 11, 9)),
    ((6, 9, 3), dict(groups=3, dilation=2, padding="same"), (2, 6, 10, 12)),
    ((5, 7, 1), dict(stride=2), (3, 5, 7, 6)),
]


def conv_step(layer, x, dy):
    layer.train()
    y = layer(x)
    assert y.shape == dy.shape
    return layer.backward(dy)


@pytest.mark.parametrize("args,kwargs,shape", CONV_CASES)
def test_conv_backward_equals_fastconv_grad(args, kwargs, shape):
    layer = fastconv.Conv2d(*args, **kwargs, seed=1)
    x = rand(*shape)
    dy = rand(*layer(x).shape)
    dx = conv_step(layer, x, dy)
    cfg = (layer.stride, layer.padding, layer.dilation, layer.groups)
    np.testing.assert_array_equal(dx, grad.conv2d_input(x.shape, layer.weight, dy, *cfg))
    np.testing.assert_array_equal(layer.weight_grad, grad.conv2d_weight(x, layer.weight.shape, dy, *cfg))
    if layer.bias is None:
        assert layer.bias_grad is None and "bias" not in layer.gradients()
    else:
        np.testing.assert_array_equal(layer.bias_grad, grad.conv2d_bias(dy))


@pytest.mark.parametrize("args,kwargs,shape", CONV_CASES)
def test_conv_backward_matches_torch_autograd(args, kwargs, shape):
    torch = pytest.importorskip("torch")
    layer = fastconv.Conv2d(*args, **kwargs, dtype=np.float64, seed=2)
    ref = torch.nn.Conv2d(*args, **kwargs, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight.copy()))
        if ref.bias is not None:
            ref.bias.copy_(torch.from_numpy(layer.bias.copy()))
    x = rand(*shape, dtype=np.float64)
    xt = torch.from_numpy(x).requires_grad_()
    yt = ref(xt)
    dy = rand(*yt.shape, dtype=np.float64)
    yt.backward(torch.from_numpy(dy))
    dx = conv_step(layer, x, dy)
    close = dict(rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **close)
    np.testing.assert_allclose(layer.weight_grad, ref.weight.grad.numpy(), **close)
    if ref.bias is not None:
        np.testing.assert_allclose(layer.bias_grad, ref.bias.grad.numpy(), **close)


def test_conv_backward_unbatched_and_torch_tensors():
    torch = pytest.importorskip("torch")
    layer = fastconv.Conv2d(3, 4, 3, padding=1, seed=3).train()
    x = rand(3, 9, 9)
    dy = rand(4, 9, 9)
    layer(x)
    dx = layer.backward(dy)
    assert dx.shape == (3, 9, 9)
    np.testing.assert_array_equal(dx, grad.conv2d_input(x.shape, layer.weight, dy, 1, 1))
    layer.zero_grad()
    y = layer(torch.from_numpy(x[None]))
    assert isinstance(y, torch.Tensor)
    dxt = layer.backward(torch.from_numpy(dy[None]))
    assert isinstance(dxt, torch.Tensor)
    np.testing.assert_array_equal(dxt.numpy()[0], dx)
    assert isinstance(layer.weight_grad, np.ndarray)  # parameters and their gradients stay NumPy


def test_conv_gradients_accumulate_until_zero_grad():
    layer = fastconv.Conv2d(2, 3, 3, seed=4).train()
    x1, x2 = rand(2, 2, 6, 6), rand(1, 2, 6, 6)
    dy1, dy2 = rand(2, 3, 4, 4), rand(1, 3, 4, 4)
    layer(x1)
    assert layer.backward(dy1, input_grad=False) is None
    first = layer.weight_grad.copy()
    layer(x2)
    layer.backward(dy2, input_grad=False)
    np.testing.assert_allclose(layer.weight_grad, first + grad.conv2d_weight(x2, (3, 2, 3, 3), dy2), rtol=1e-6)
    np.testing.assert_allclose(layer.bias_grad, dy1.sum((0, 2, 3)) + dy2.sum((0, 2, 3)), rtol=1e-5)
    layer.zero_grad()
    assert layer.weight_grad is None and layer.bias_grad is None


def test_backward_needs_a_training_forward_once():
    layer = fastconv.Conv2d(2, 3, 3, seed=5)
    assert not layer.training  # layers start in eval mode: nothing saved
    x, dy = rand(1, 2, 6, 6), rand(1, 3, 4, 4)
    layer(x)
    with pytest.raises(RuntimeError, match=r"layer\.train\(\)"):
        layer.backward(dy)
    assert layer.train() is layer and layer.training
    layer(x)
    layer.backward(dy)
    with pytest.raises(RuntimeError, match="once per forward"):
        layer.backward(dy)  # the saved input was released
    layer(x)
    layer.eval()  # eval drops what training saved
    with pytest.raises(RuntimeError):
        layer.backward(dy)


def test_backward_checks_grad_output():
    layer = fastconv.Conv2d(2, 3, 3, seed=6).train()
    layer(rand(1, 2, 6, 6))
    with pytest.raises(ValueError, match="shape"):
        layer.backward(rand(1, 3, 5, 5))
    layer(rand(1, 2, 6, 6))
    with pytest.raises(TypeError, match="dtype"):
        layer.backward(rand(1, 3, 4, 4, dtype=np.float64))


def test_backward_uses_the_weights_of_its_forward_call():
    layer = fastconv.Conv2d(2, 3, 3, seed=7).train()
    x, dy = rand(1, 2, 6, 6), rand(1, 3, 4, 4)
    w0 = layer.weight.copy()
    layer(x)
    layer.weight = w0 * 3  # an update between forward and backward
    np.testing.assert_array_equal(layer.backward(dy), grad.conv2d_input(x.shape, w0, dy))


def test_copies_start_without_a_pending_backward():
    layer = fastconv.Conv2d(2, 3, 3, seed=8).train()
    pool = fastconv.MaxPool2d(2).train()
    x = rand(1, 2, 6, 6)
    pool(layer(x))
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), pickle.loads(pickle.dumps(pool))):
        assert clone.training
        with pytest.raises(RuntimeError):
            clone.backward(rand(1, 3, 4, 4))  # raises before it looks at grad_output
    np.testing.assert_array_equal(copy.deepcopy(layer)(x), layer(x))


# --- parameter updates ------------------------------------------------------------------------------
@pytest.fixture
def count_prepare(monkeypatch):
    calls = []
    original = registry.Kernel.prepare

    def prepare(self, w, b, p):
        calls.append(p)
        return original(self, w, b, p)

    monkeypatch.setattr(registry.Kernel, "prepare", prepare)
    return calls


def test_set_parameters_prepares_once_per_step_and_keeps_validation(count_prepare, monkeypatch):
    layer = fastconv.Conv2d(3, 4, 3, padding=1, seed=9)
    x = rand(2, 3, 8, 8)
    layer(x)
    from fastconv import validate

    validations = []
    original = validate.conv2d_args
    monkeypatch.setattr(validate, "conv2d_args", lambda *a: validations.append(1) or original(*a))
    for _ in range(3):
        w, b = layer.weight * 0.5, layer.bias + 1
        expected = fastconv.conv2d(x, w, b, padding=1)
        before, validated = len(count_prepare), len(validations)
        layer.set_parameters({"weight": w, "bias": b})
        np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
        layer(x)
        assert len(count_prepare) == before + 1  # one preparation per update, at the next call
        assert len(validations) == validated  # same dtypes and bias: the shape stays validated
    with pytest.raises(KeyError, match="weights"):
        layer.set_parameters({"weights": w})
    layer.set_parameters({"bias": None})
    assert "bias" not in layer.parameters()
    np.testing.assert_allclose(layer(x), fastconv.conv2d(x, w, None, padding=1), rtol=1e-5, atol=1e-6)


def test_a_dtype_change_revalidates():
    layer = fastconv.Conv2d(3, 4, 3, bias=False, seed=10)
    layer(rand(1, 3, 6, 6))
    layer.set_parameters({"weight": layer.weight.astype(np.float64)})
    with pytest.raises(TypeError, match="dtype"):
        layer(rand(1, 3, 6, 6))  # a float32 input no longer fits the layer
    assert layer(rand(1, 3, 6, 6, dtype=np.float64)).dtype == np.float64


# --- pools ------------------------------------------------------------------------------------------
POOL_CASES = [  # (layer, grad function of (x, dy, layer))
    (lambda: fastconv.MaxPool2d(2), lambda x, dy, m: grad.max_pool2d_input(x, dy, None, 2)),
    (
        lambda: fastconv.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True),
        lambda x, dy, m: grad.max_pool2d_input(x, dy, None, 3, 2, 1, 1, True),
    ),
    (
        lambda: fastconv.MaxPool2d((2, 3), stride=1, dilation=(2, 1), return_indices=True),
        lambda x, dy, m: grad.max_pool2d_input(x, dy, None, (2, 3), 1, 0, (2, 1)),
    ),
    (lambda: fastconv.AvgPool2d(2), lambda x, dy, m: grad.avg_pool2d_input(x.shape, dy, 2)),
    (
        lambda: fastconv.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        lambda x, dy, m: grad.avg_pool2d_input(x.shape, dy, 3, 2, 1, True, False),
    ),
    (
        lambda: fastconv.AvgPool2d(2, stride=1, divisor_override=3),
        lambda x, dy, m: grad.avg_pool2d_input(x.shape, dy, 2, 1, 0, False, True, 3),
    ),
    (lambda: fastconv.AdaptiveAvgPool2d((3, None)), lambda x, dy, m: grad.adaptive_avg_pool2d_input(x.shape, dy)),
    (lambda: fastconv.AdaptiveAvgPool2d(1), lambda x, dy, m: grad.adaptive_avg_pool2d_input(x.shape, dy)),
]


def torch_pool(layer):
    import torch

    if isinstance(layer, fastconv.MaxPool2d):
        return torch.nn.MaxPool2d(
            layer.kernel_size, layer.stride, layer.padding, layer.dilation, ceil_mode=layer.ceil_mode
        )
    if isinstance(layer, fastconv.AvgPool2d):
        return torch.nn.AvgPool2d(
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.ceil_mode,
            layer.count_include_pad,
            layer.divisor_override,
        )
    return torch.nn.AdaptiveAvgPool2d(layer.output_size)


@pytest.mark.parametrize("make,reference", POOL_CASES)
@pytest.mark.parametrize("unbatched", [False, True])
def test_pool_backward_equals_fastconv_grad_and_torch(make, reference, unbatched):
    torch = pytest.importorskip("torch")
    layer = make().train()
    x = rand(2, 3, 9, 11, dtype=np.float64)
    x[0, 0, :2, :2] = 1.0  # ties: the first maximum takes the gradient
    x = x[0] if unbatched else x
    y = layer(x)
    y = y[0] if isinstance(y, tuple) else y
    dy = rand(*y.shape, dtype=np.float64)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx, reference(x, dy, layer))
    xt = torch.from_numpy(x).requires_grad_()
    torch_pool(layer)(xt).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-13, atol=1e-15)


def test_pool_training_mode_keeps_its_outputs():
    x = rand(2, 3, 8, 8)
    for layer in (
        fastconv.MaxPool2d(2),
        fastconv.MaxPool2d(2, return_indices=True),
        fastconv.AvgPool2d(2),
        fastconv.AdaptiveAvgPool2d(3),
    ):
        out_eval = layer(x)
        out_train = layer.train()(x)
        for a, b in zip(
            out_eval if isinstance(out_eval, tuple) else [out_eval],
            out_train if isinstance(out_train, tuple) else [out_train],
        ):
            np.testing.assert_array_equal(a, b)
        assert (
            layer.backward(np.ones_like(out_train[0] if isinstance(out_train, tuple) else out_train), input_grad=False)
            is None
        )


# --- fastconv.nn --------------------------------------------------------------------------------
def test_nn_docstring_examples():
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(fnn, optionflags=flags, extraglobs={"np": np}, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_linear_relu_flatten_cross_entropy_match_torch_autograd():
    torch = pytest.importorskip("torch")
    x = rand(5, 2, 3, 2, dtype=np.float64)
    target = np.array([0, 3, 1, 3, 2])
    ref = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(12, 7, dtype=torch.float64),
        torch.nn.ReLU(),
        torch.nn.Linear(7, 4, dtype=torch.float64),
    )
    model = fnn.Sequential.from_torch(ref).train()
    assert [type(m).__name__ for m in model] == ["Flatten", "Linear", "ReLU", "Linear"]
    xt = torch.from_numpy(x).requires_grad_()
    lt = torch.nn.functional.cross_entropy(ref(xt), torch.from_numpy(target))
    lt.backward()
    loss, dlogits = fnn.cross_entropy(model(x), target)
    dx = model.backward(dlogits)
    assert loss == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-14)
    for name, g in model.gradients().items():
        np.testing.assert_allclose(g, dict(ref.named_parameters())[name].grad.numpy(), rtol=1e-10, atol=1e-14)


def test_cross_entropy_is_stable_and_checks_targets():
    loss, g = fnn.cross_entropy(np.array([[1000.0, 0.0], [0.0, -1000.0]], np.float32), np.array([0, 1]))
    assert np.isfinite(loss) and loss == pytest.approx(500.0) and g.dtype == np.float32
    with pytest.raises(ValueError, match="class indices"):
        fnn.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 3]))


@pytest.mark.parametrize(
    "kw",
    [
        dict(momentum=0.9),
        dict(momentum=0.9, weight_decay=1e-2, nesterov=True),
        dict(momentum=0.5, dampening=0.3),
        dict(),
    ],
)
def test_sgd_matches_torch_optim(kw):
    torch = pytest.importorskip("torch")
    ref = torch.nn.Linear(4, 3, dtype=torch.float64)
    fc = fnn.Linear.from_torch(ref).train()
    opt_t, opt = torch.optim.SGD(ref.parameters(), lr=0.1, **kw), fnn.SGD(fc, lr=0.1, **kw)
    for _ in range(4):
        x = rand(6, 4, dtype=np.float64)
        opt_t.zero_grad()
        (ref(torch.from_numpy(x)) ** 2).sum().backward()
        opt_t.step()
        opt.zero_grad()
        y = fc(x)
        fc.backward(2 * y)
        opt.step()
    np.testing.assert_allclose(fc.weight, ref.weight.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(fc.bias, ref.bias.detach().numpy(), rtol=1e-12)


def test_sequential_names_parameters_as_a_state_dict():
    torch = pytest.importorskip("torch")
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    )
    model = fnn.Sequential(fastconv.Conv2d(1, 2, 3), fnn.Sequential(fnn.ReLU(), fnn.Flatten(), fnn.Linear(8, 2)))
    assert sorted(model.parameters()) == sorted(ref.state_dict())
    model.set_parameters(ref.state_dict())
    x = rand(3, 1, 4, 4)
    np.testing.assert_allclose(model(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError):
        model.set_parameters({"2.weight": np.zeros(1)})
    with pytest.raises(TypeError, match="Dropout"):
        fnn.Sequential.from_torch(torch.nn.Sequential(torch.nn.Dropout()))


def test_dropout2d_zeroes_whole_channels_and_scales_the_rest():
    drop = fnn.Dropout2d(0.25, seed=0).train()
    x = rand(64, 16, 3, 3) + 5.0  # no zeros of its own
    y = drop(x)
    kept = (y != 0).all(axis=(2, 3))
    assert ((y == 0).all(axis=(2, 3)) | kept).all()  # a plane is dropped whole or kept whole
    assert 0.2 < 1 - kept.mean() < 0.3  # about p of the planes dropped (1024 planes)
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    dy = rand(*y.shape)
    np.testing.assert_allclose(drop.backward(dy), np.where(kept[..., None, None], dy / 0.75, 0), rtol=1e-6)
    assert drop(x[0]).shape == x[0].shape  # unbatched (C, H, W): the mask is per channel
    drop.backward(dy[0], input_grad=False)
    np.testing.assert_array_equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="probability"):
        fnn.Dropout2d(1.5)
    torch = pytest.importorskip("torch")
    assert fnn.Dropout2d.from_torch(torch.nn.Dropout2d(0.3)).p == 0.3
    model = fnn.Sequential.from_torch(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Dropout2d(0.1)))
    assert isinstance(model[1], fnn.Dropout2d) and model[1].p == 0.1


# --- seed 001's LeNet: the NumPy path follows torch, and learns a real dataset ------------------------
def digits():
    """scikit-learn's handwritten digits at MNIST's size, as benchmarks/train_digits.py prepares
    them (in the wheel: nothing is downloaded): (x_train, x_test, y_train, y_test)."""
    pytest.importorskip("sklearn")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.load_data()


def test_lenet_is_seed_001s_net_and_copies_its_weights():
    torch = pytest.importorskip("torch")
    from fastconv import zoo

    torch.manual_seed(0)
    ref = zoo.lenet().eval()
    model = fnn.lenet(like=ref)
    x = rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()  # log-probabilities
    logits = model(x)
    np.testing.assert_allclose(logits - np.log(np.exp(logits).sum(1, keepdims=True)), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="conv1"):
        fnn.lenet(like=torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_lenet_follows_its_torch_twin_step_for_step():
    torch = pytest.importorskip("torch")
    from fastconv import zoo

    torch.manual_seed(0)
    ref = zoo.lenet().train()
    model = fnn.lenet(like=ref).train()
    ref.conv2_drop.eval()  # dropout off in both: the two draw their masks from different generators
    model[4].eval()
    xtr, _, ytr, _ = digits()
    opt_t = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    opt = fnn.SGD(model, lr=0.05, momentum=0.9)
    ours, theirs = [], []
    for step in range(10):
        xb, yb = xtr[step * 32 : (step + 1) * 32], ytr[step * 32 : (step + 1) * 32]
        loss_t = torch.nn.functional.cross_entropy(ref(torch.from_numpy(xb)), torch.from_numpy(yb))
        opt_t.zero_grad()
        loss_t.backward()
        opt_t.step()
        theirs.append(loss_t.item())
        loss, dlogits = fnn.cross_entropy(model(xb), yb)
        opt.zero_grad()
        model.backward(dlogits, input_grad=False)
        opt.step()
        ours.append(loss)
    np.testing.assert_allclose(ours, theirs, rtol=TRAJECTORY_RTOL)
    assert theirs[-1] < theirs[0]  # the trajectory is a real descent, not a flat line
    index = {"conv1": 0, "conv2": 3, "fc": 8}
    for name, p in ref.state_dict().items():
        layer, kind = name.split(".")
        got = model.parameters()[f"{index[layer]}.{kind}"]
        np.testing.assert_allclose(got, p.numpy(), rtol=0, atol=1e-4 * float(p.abs().max()))


def test_lenet_learns_digits_in_seconds():
    xtr, xte, ytr, yte = digits()
    model = fnn.lenet(seed=0).train()
    opt = fnn.SGD(model, lr=0.01, momentum=0.9)
    order = np.random.default_rng(0).permutation
    t0 = time.perf_counter()
    for _ in range(3):
        idx = order(len(xtr))
        for i in range(0, len(idx), 32):
            b = idx[i : i + 32]
            _, dlogits = fnn.cross_entropy(model(xtr[b]), ytr[b])
            opt.zero_grad()
            model.backward(dlogits, input_grad=False)
            opt.step()
    seconds = time.perf_counter() - t0
    accuracy = float(np.mean(model.eval()(xte).argmax(1) == yte))
    assert accuracy > 0.85, f"test accuracy {accuracy:.3f} after 3 epochs ({seconds:.1f} s)"  # chance: 0.1
