"""Each op against torch.nn.functional on random cases (torch is a test peer, never a dependency)."""

import numpy as np
import pytest

import fastconv
from fastconv import registry
from fastconv.testing import ADAPTIVE_CASES, AVG_POOL_CASES, CONV_CASES, MAX_POOL_CASES, describe

torch = pytest.importorskip("torch", reason="torch not installed: pip install '.[peers]' to compare with torch")
F = torch.nn.functional


@pytest.mark.parametrize("case", CONV_CASES, ids=[c.name for c in CONV_CASES])
def test_conv2d_matches_torch(case):
    x, w, b = case.arrays(np.float64, seed=7)
    expected = F.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b), **case.kwargs()
    ).numpy()
    for alg in registry.REGISTRY:
        if alg.supports(describe(x, w, b, **case.kwargs())) is not None:
            continue
        y = fastconv.conv2d(x, w, b, **case.kwargs(), algo=alg.name)
        assert y.shape == expected.shape
        np.testing.assert_allclose(
            y, expected, rtol=1e-9, atol=1e-9 * max(1, np.abs(expected).max(initial=0)), err_msg=alg.name
        )


@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=[c.name for c in MAX_POOL_CASES])
def test_max_pool_matches_torch(case):
    x = np.random.default_rng(1).standard_normal(case.shape).astype(np.float32)
    y, i = fastconv.max_pool2d(x, **case.kwargs, return_indices=True)
    ty, ti = F.max_pool2d(torch.from_numpy(x), **case.kwargs, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(i, ti.numpy())


@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=[c.name for c in AVG_POOL_CASES])
def test_avg_pool_matches_torch(case):
    x = np.random.default_rng(2).standard_normal(case.shape).astype(np.float64)
    np.testing.assert_allclose(
        fastconv.avg_pool2d(x, **case.kwargs),
        F.avg_pool2d(torch.from_numpy(x), **case.kwargs).numpy(),
        rtol=1e-13,
        atol=1e-14,
    )


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[c.name for c in ADAPTIVE_CASES])
def test_adaptive_matches_torch(case):
    x = np.random.default_rng(3).standard_normal(case.shape).astype(np.float64)
    np.testing.assert_allclose(
        fastconv.adaptive_avg_pool2d(x, **case.kwargs),
        F.adaptive_avg_pool2d(torch.from_numpy(x), **case.kwargs).numpy(),
        rtol=1e-13,
        atol=1e-14,
    )


def test_random_conv_cases_match_torch():
    rng = np.random.default_rng(11)
    for _ in range(60):
        g = int(rng.choice([1, 2, 3]))
        cin, cout = g * int(rng.integers(1, 5)), g * int(rng.integers(1, 5))
        k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        s, d = (int(rng.integers(1, 4)), int(rng.integers(1, 4))), (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pad = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        h = max(1, d[0] * (k[0] - 1) + 1 - 2 * pad[0]) + int(rng.integers(0, 9))
        wd = max(1, d[1] * (k[1] - 1) + 1 - 2 * pad[1]) + int(rng.integers(0, 9))
        x = rng.standard_normal((int(rng.integers(0, 3)), cin, h, wd)).astype(np.float32)
        w = rng.standard_normal((cout, cin // g, *k)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), s, pad, d, g).numpy()
        y = fastconv.conv2d(x, w, b, s, pad, d, g)
        np.testing.assert_allclose(
            y, expected, rtol=1e-4, atol=1e-4, err_msg=f"{x.shape} {w.shape} s{s} p{pad} d{d} g{g}"
        )


def test_torch_tensors_in_torch_tensors_out():
    x = torch.randn(1, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    y = fastconv.conv2d(x, w, padding=1)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    y, i = fastconv.max_pool2d(x, 2, return_indices=True)
    assert isinstance(y, torch.Tensor) and isinstance(i, torch.Tensor) and i.dtype == torch.int64


def test_nan_inf_like_torch():
    x = np.random.default_rng(5).standard_normal((1, 2, 8, 8)).astype(np.float32)
    x[0, 0, 3, 3], x[0, 1, 5, 1], x[0, 1, 0, 0] = np.nan, np.inf, -np.inf
    tx = torch.from_numpy(x)
    w = np.random.default_rng(6).standard_normal((3, 2, 3, 3)).astype(np.float32)
    for algo in fastconv.algorithms():
        try:
            y = fastconv.conv2d(x, w, padding=1, algo=algo)
        except ValueError:
            continue
        t = F.conv2d(tx, torch.from_numpy(w), padding=1).numpy()
        np.testing.assert_array_equal(np.isnan(y), np.isnan(t), err_msg=algo)
        np.testing.assert_array_equal(np.isinf(y), np.isinf(t), err_msg=algo)
    np.testing.assert_array_equal(fastconv.max_pool2d(x, 3, 2, 1), F.max_pool2d(tx, 3, 2, 1).numpy())
    # avg: same NaN/Inf positions; finite values within float32 rounding (we sum in float64)
    y, t = fastconv.avg_pool2d(x, 2), F.avg_pool2d(tx, 2).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(t))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(t))
    np.testing.assert_allclose(y, t, rtol=1e-6, atol=1e-7)
