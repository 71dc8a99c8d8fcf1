"""Pooling kernels against the float64 reference (and torch's exact semantics)."""

import numpy as np
import pytest

import fastconv
from fastconv import reference, validate
from fastconv.testing import ADAPTIVE_CASES, AVG_POOL_CASES, MAX_POOL_CASES

DTYPES = [np.float32, np.float64]


def _x(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _batched(x):
    return x if x.ndim == 4 else x[None]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=[c.name for c in MAX_POOL_CASES])
def test_max_pool(case, dtype):
    x = _x(case.shape, dtype)
    y, idx = fastconv.max_pool2d(x, **case.kwargs, return_indices=True)
    args = {
        k: case.kwargs.get(k, d)
        for k, d in (("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1), ("ceil_mode", False))
    }
    _, p, _ = validate.max_pool2d_args(x, **args)
    ref, ref_idx = reference.max_pool2d(_batched(x), p, return_indices=True)
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(_batched(y), ref.astype(dtype))  # max is exact
    np.testing.assert_array_equal(_batched(idx), ref_idx)
    # the indices point at the values they claim
    xb, yb, ib = _batched(x), _batched(y), _batched(idx)
    flat = xb.reshape(*xb.shape[:2], xb.shape[2] * xb.shape[3])
    np.testing.assert_array_equal(
        np.take_along_axis(flat, ib.reshape(*ib.shape[:2], ib.shape[2] * ib.shape[3]), 2),
        yb.reshape(*yb.shape[:2], yb.shape[2] * yb.shape[3]),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=[c.name for c in AVG_POOL_CASES])
def test_avg_pool(case, dtype):
    x = _x(case.shape, dtype)
    y = fastconv.avg_pool2d(x, **case.kwargs)
    args = {
        k: case.kwargs.get(k, d)
        for k, d in (
            ("kernel_size", None),
            ("stride", None),
            ("padding", 0),
            ("ceil_mode", False),
            ("count_include_pad", True),
            ("divisor_override", None),
        )
    }
    _, p, _ = validate.avg_pool2d_args(x, **args)
    ref = reference.avg_pool2d(_batched(x), p)
    assert y.dtype == dtype
    # sums are accumulated in float64, so the only error is the final rounding to dtype
    np.testing.assert_allclose(_batched(y), ref, rtol=2 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[c.name for c in ADAPTIVE_CASES])
def test_adaptive_avg_pool(case, dtype):
    x = _x(case.shape, dtype)
    y = fastconv.adaptive_avg_pool2d(x, **case.kwargs)
    _, p, _ = validate.adaptive_avg_pool2d_args(x, **case.kwargs)
    ref = reference.adaptive_avg_pool2d(_batched(x), p)
    assert y.dtype == dtype
    np.testing.assert_allclose(_batched(y), ref, rtol=2 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


def test_global_average_pool_is_mean():
    x = _x((3, 4, 7, 7), np.float64)
    np.testing.assert_allclose(fastconv.adaptive_avg_pool2d(x, 1)[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=1e-12)


def test_max_pool_nan_and_inf_propagate():
    x = np.array(
        [[[[np.nan, 1.0, -np.inf, -np.inf], [np.nan, 2.0, -np.inf, -np.inf], [np.inf, 0.0, 3.0, np.nan]]]],
        dtype=np.float32,
    )
    y, idx = fastconv.max_pool2d(x, (2, 2), return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 4  # last NaN in the window
    assert y[0, 0, 0, 1] == -np.inf and idx[0, 0, 0, 1] == 2  # all -inf: first pixel
    y = fastconv.avg_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == -np.inf


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=2),
        dict(kernel_size=3, stride=2),
        dict(kernel_size=3, stride=1, padding=1),
        dict(kernel_size=(2, 3), stride=(1, 2), dilation=2),
    ],
    ids=["resnet", "vgg", "alexnet", "inception", "generic"],
)
def test_max_pool_nan_in_some_planes_only(kwargs, dtype):
    """Planes without NaN take a plain-max path, planes with one the NaN-propagating path
    (kernels/pool_impl.h): a batch mixing both must match the reference exactly, plane by plane."""
    x = _x((2, 5, 23, 31), dtype)
    x[0, 1, 7, 10] = np.nan  # one NaN in one plane (an even column: every window set reads it)
    x[1, 3, :, 30] = np.nan  # a NaN column at the right border
    x[1, 4] = np.nan  # a plane of NaN
    x[0, 2, 0, 0] = np.inf
    # the NaN scan reads 704 of a plane's 713 values as vectors, the last 9 one by one:
    x[1, 0, 22, 29] = np.nan  # a NaN among the last 9 only
    x[1, 1, 22, 21] = np.nan  # a NaN in the last vector's last lane (flat index 703)
    x[0, 3, 5, 0] = np.nan  # column 0 only (3x3/s2 kernel: the first vector's left taps)
    y = fastconv.max_pool2d(x, **kwargs)
    args = {
        k: kwargs.get(k, d)
        for k, d in (("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1), ("ceil_mode", False))
    }
    _, p, _ = validate.max_pool2d_args(x, **args)
    np.testing.assert_array_equal(y, reference.max_pool2d(x, p).astype(dtype))
    assert np.isnan(y[0, 1]).any() and not np.isnan(y[0, 0]).any() and np.isnan(y[1, 4]).all()
    assert np.isnan(y[0, 3]).any()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=2),
        dict(kernel_size=3, stride=2),
        dict(kernel_size=(2, 3), stride=(1, 2), dilation=2),
    ],
)
def test_max_pool_zero_ties_keep_the_first_tap_like_torch(kwargs):
    torch = pytest.importorskip("torch")
    x = np.where(np.random.default_rng(3).random((1, 3, 12, 14)) < 0.5, 0.0, -0.0).astype(np.float32)
    x[0, 1, ::3] = np.nan  # one plane on the NaN path too
    y = fastconv.max_pool2d(x, **kwargs)
    t = torch.nn.functional.max_pool2d(torch.from_numpy(x), **kwargs).numpy()
    np.testing.assert_array_equal(np.signbit(y), np.signbit(t))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(t))
