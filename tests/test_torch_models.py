"""torch interop: tensors in/out of the functional ops, `fastconv.torch.convert`, and the seed
networks (random weights) converted and compared with the original torch model.

Model tolerance (float32): max|y_fastconv − y_torch| ≤ 1e-4 · max|y_torch| over the whole output
(measured ~1e-7–6e-7 with F(2x2) Winograd; the bound leaves room for F(4x4) in every 3x3 layer).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402
from fastconv import validate, zoo  # noqa: E402

MODEL_RTOL = 1e-4


def assert_close_model(got: torch.Tensor, ref: torch.Tensor, rtol: float = MODEL_RTOL) -> None:
    assert isinstance(got, torch.Tensor) and got.shape == ref.shape and got.dtype == ref.dtype
    if ref.numel():
        err = float((got - ref).abs().max())
        assert err <= rtol * float(ref.abs().max()), f"max error {err:.3g} vs scale {float(ref.abs().max()):.3g}"


def count(model: nn.Module, types) -> int:
    return sum(isinstance(m, types) for m in model.modules())


TORCH_TYPES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


# --- the seed networks ----------------------------------------------------------------------
@pytest.mark.parametrize("name", zoo.model_names())
def test_seed_network_converted_matches_torch(name):
    model = zoo.build(name, small=True)
    x = torch.randn(*zoo.input_shape(name, 2, small=True), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every conv and pool of the seed nets runs on fastconv
        fast = fct.convert(model)
    assert count(fast, TORCH_TYPES) == 0
    assert count(fast, fct._FastModule) == count(model, TORCH_TYPES) > 0
    assert count(model, fct._FastModule) == 0  # the original is untouched
    with torch.no_grad():
        ref, got = model(x), fast(x)
    assert float(ref.abs().max()) > 0.1  # the output carries the convolutions, not just biases
    assert_close_model(got, ref)


@pytest.mark.parametrize("batch", [1, 64, 0])
def test_lenet_batches(batch):
    model = zoo.build("lenet")
    fast = fct.convert(model)
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref, got = model(x), fast(x)
    assert got.shape == (batch, 10)
    assert_close_model(got, ref)


def test_lenet_float64():
    model = zoo.build("lenet").double()
    fast = fct.convert(model)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        assert_close_model(fast(x), model(x), rtol=1e-10)


def test_time_model_reports_both_times():
    t = zoo.time_model("lenet", batch=1, threads=2, repeats=2, cooldown=0)
    assert t.model == "lenet" and t.input_shape == (1, 1, 28, 28) and t.threads == 2
    assert len(t.torch_times) == len(t.fastconv_times) == 2
    assert t.torch_s > 0 and t.fastconv_s > 0 and t.speedup == pytest.approx(t.torch_s / t.fastconv_s)
    assert t.max_rel_err < MODEL_RTOL
    assert set(t.as_dict()) >= {"torch_s", "fastconv_s", "speedup"}
    assert t.describe().startswith("lenet batch 1 (1x1x28x28), 2 threads: torch ")
    with pytest.raises(ValueError, match="model must be one of"):
        zoo.time_model("resnet50")


# --- convert -----------------------------------------------------------------------------------
def test_unsupported_modules_stay_on_torch_with_a_warning():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2)
    ).eval()
    with pytest.warns(UserWarning, match=r"1 module\(s\) on torch: 0 \(Conv2d\): padding_mode"):
        fast = fct.convert(model)
    assert type(fast[0]) is nn.Conv2d and isinstance(fast[2], fct.FastConv2d)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert_close_model(fast(x), model(x))


def test_convert_a_bare_module_shared_modules_and_algo():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    assert isinstance(fct.convert(conv), fct.FastConv2d)
    model = nn.Sequential(conv, nn.ReLU(), conv)  # one module used twice stays one module
    fast = fct.convert(model, algo="im2col")
    assert fast[0] is fast[2] and fast[0].layer.algo == "im2col"
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        assert_close_model(fast(x), model(x))
    with pytest.raises(ValueError, match="algo"):
        fct.convert(model, algo="fft")


def test_inplace_convert_and_torch_attributes():
    model = nn.Sequential(nn.Conv2d(2, 6, (3, 5), stride=2, padding=(1, 2), groups=2))
    same = fct.convert(model, inplace=True)
    assert same is model and isinstance(model[0], fct.FastConv2d)
    c = model[0]
    assert (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.groups) == (
        2,
        6,
        (3, 5),
        (2, 2),
        (1, 2),
        2,
    )
    assert c.weight.shape == (6, 1, 3, 5) and c.bias.shape == (6,) and c.padding_mode == "zeros"
    pool = fct.convert(nn.MaxPool2d(3, 2, ceil_mode=True))
    assert (pool.kernel_size, pool.stride, pool.ceil_mode) == ((3, 3), (2, 2), True)
    with pytest.raises(AttributeError):
        pool.no_such_attribute  # noqa: B018 (the attribute read is the test)


def test_state_dict_round_trip():
    model = zoo.build("resnet18", small=True)
    other = zoo.build("resnet18", small=True, seed=7)
    fast = fct.convert(model)
    assert list(fast.state_dict()) == list(model.state_dict())
    fast.load_state_dict(other.state_dict())  # weights of another model, through the converted one
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert_close_model(fast(x), other(x))
    bad = other.state_dict()
    bad["0.weight"] = bad["0.weight"][:, :2]
    with pytest.raises(RuntimeError, match="0.weight"):
        fast.load_state_dict(bad)
    del bad["0.weight"]
    with pytest.raises(RuntimeError, match="Missing key"):
        fast.load_state_dict(bad)


def test_converted_modules_compute_gradients_and_skip_autograd_in_inference():
    # (the inference-only version refused an input that required grad; training is in test_torch_train.py)
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    fast = fct.convert(model)
    x = torch.randn(1, 1, 5, 5, requires_grad=True)
    y = fast(x)
    assert y.grad_fn.name() == "_Conv2dFunctionBackward"  # fastconv's autograd node
    y.sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    model(x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert fast(x).grad_fn is None and fast(x).shape == (1, 2, 3, 3)
    fast.requires_grad_(False)
    assert fast(x.detach()).grad_fn is None  # grad mode on, but nothing asks for a gradient


def test_float16_and_non_float_models_stay_on_torch():
    model = nn.Sequential(nn.Conv2d(1, 2, 3)).half()
    with pytest.warns(UserWarning, match="float32 or float64"):
        fast = fct.convert(model)
    assert type(fast[0]) is nn.Conv2d


# --- functional ops on tensors -------------------------------------------------------------------
def _layouts():
    base = torch.randn(2, 6, 12, 10, generator=torch.Generator().manual_seed(3))
    return {
        "contiguous": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "sliced": base[:, ::2, 1:, :],
        "transposed": base.transpose(2, 3),
        "requires_grad": base.clone().requires_grad_(True),
    }


@pytest.mark.parametrize("layout", list(_layouts()))
def test_functional_ops_on_tensors(layout):
    x = _layouts()[layout]
    c = x.shape[1]
    w = torch.randn(4, c, 3, 3)
    b = torch.randn(4)
    with torch.no_grad():
        pairs = [
            (fastconv.conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1)),
            (fastconv.max_pool2d(x, 2), F.max_pool2d(x, 2)),
            (fastconv.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1)),
            (fastconv.adaptive_avg_pool2d(x, (3, 2)), F.adaptive_avg_pool2d(x, (3, 2))),
        ]
    for got, ref in pairs:
        assert isinstance(got, torch.Tensor) and not got.requires_grad and got.is_contiguous()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_tensors_are_read_and_returned_without_copies():
    x = torch.randn(1, 3, 8, 8)
    assert np.shares_memory(validate.as_array(x, "input"), x.numpy())  # read in place
    layer = fastconv.Conv2d(3, 4, 3)
    y = layer(x)
    assert isinstance(y, torch.Tensor)
    y_np = y.numpy()  # a tensor made by torch.from_numpy: same memory both ways
    y_np[0, 0, 0, 0] = 123.0
    assert float(y[0, 0, 0, 0]) == 123.0


def test_from_torch_copies_configuration_and_weights():
    m = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)
    layer = fastconv.Conv2d.from_torch(m)
    np.testing.assert_array_equal(layer.weight, m.weight.detach().numpy())
    assert layer.bias is None and layer.groups == 2 and layer.stride == (2, 2)
    for tm, cls in (
        (nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True), fastconv.MaxPool2d),
        (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), fastconv.AvgPool2d),
        (nn.AdaptiveAvgPool2d((None, 2)), fastconv.AdaptiveAvgPool2d),
    ):
        x = torch.randn(1, 2, 9, 8)
        torch.testing.assert_close(cls.from_torch(tm)(x), tm(x))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_convert_same_padding_even_kernel_and_dilation():
    # torch pads the odd pixel after; the converted layer must do the same
    model = nn.Sequential(
        nn.Conv2d(3, 5, 4, padding="same", dilation=(1, 2)),
        nn.ReLU(),
        nn.Conv2d(5, 4, (2, 3), padding="same", bias=False),
    )
    fast = fct.convert(model)
    x = torch.randn(2, 3, 9, 10)
    with torch.no_grad():
        assert_close_model(fast(x), model(x))
