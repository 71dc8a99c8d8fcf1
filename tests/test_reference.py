"""The oracle itself, against values computed by hand — and the seeds' worked examples."""

import numpy as np
import pytest

import fastconv
from fastconv import params, reference
from fastconv.params import ConvParams
from fastconv.testing import describe

ALGOS = fastconv.algorithms()


def conv_all(x, w, b=None, **kw):
    """Reference plus every algorithm able to run the case; all must agree."""
    p = describe(x, w, b, **kw)
    ref = reference.conv2d(x if x.ndim == 4 else x[None], w, b, p)
    for algo in ALGOS:
        try:
            y = fastconv.conv2d(x, w, b, **kw, algo=algo)
        except ValueError as exc:
            assert "cannot run" in str(exc)
            continue
        np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-10, atol=1e-10, err_msg=algo)
    return ref


def test_seed003_4x4_input_3x3_kernel_bias1_pad1():
    """Seed 003's review example: 4x4 input, 3x3 kernel, bias b=1, P=1, S=1 → 4x4 output."""
    x = np.array([[1, 2, 0, 3], [0, 1, 2, 3], [1, 2, 1, 0], [5, 2, 3, 1]], dtype=np.float64)
    w = np.array([[1, 2, 1], [0, 1, 0], [2, 1, 0]], dtype=np.float64)
    y = conv_all(x[None, None], w[None, None], np.array([1.0]), padding=1)
    # worked by hand (entries checked one by one): top-left sees x[0:2, 0:2] under w[1:, 1:]:
    # 1·1 + 2·0 + 0·1 + 1·0 ... = 1, plus the bias → 2; top-right = (3·1) + (2·2 + 3·1) + 1 = 11
    expected = np.array([[2, 4, 5, 11], [6, 11, 13, 12], [8, 19, 17, 16], [10, 9, 8, 3]], dtype=np.float64)
    np.testing.assert_array_equal(y[0, 0], expected)


def test_seed003_two_channel_sum_is_56():
    """Two input channels, one output: (1·1+2·2+4·3+5·4) + (0·0+1·1+3·2+4·3) = 56."""
    x = np.array([[[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]], dtype=np.float64)
    k = np.array([[[0, 1], [2, 3]], [[1, 2], [3, 4]]], dtype=np.float64)
    y = conv_all(x[None], k[None])
    np.testing.assert_array_equal(y[0, 0], [[56, 72], [104, 120]])


def test_seed003_edge_detector_1x2():
    """The [1, −1] kernel finds the vertical edge between the 1s and the 0s."""
    x = np.array([[1, 1, 0, 0, 0]] * 4, dtype=np.float64)
    y = conv_all(x[None, None], np.array([[[[1.0, -1.0]]]]))
    np.testing.assert_array_equal(y[0, 0], [[0, 1, 0, 0]] * 4)
    # and it is blind to a horizontal edge: transposed input gives all zeros
    y_t = conv_all(x.T.copy()[None, None], np.array([[[[1.0, -1.0]]]]))
    np.testing.assert_array_equal(y_t, 0)


def test_seed003_max_pool_2x2():
    x = np.array([[1, 1, 2, 0], [0, 1, 1, 2], [0, 0, 1, 3], [0, 0, 1, 1]], dtype=np.float32)
    np.testing.assert_array_equal(fastconv.max_pool2d(x[None, None], 2)[0, 0], [[1, 2], [0, 3]])
    p = params.PoolParams("max", 1, 1, 4, 4, (2, 2), (2, 2))
    np.testing.assert_array_equal(reference.max_pool2d(x[None, None], p)[0, 0], [[1, 2], [0, 3]])


def test_seed003_max_of_window():
    """max(0, 1, 3, 4) = 4 — a 2x2 max pool over one window."""
    x = np.array([[0, 1], [3, 4]], dtype=np.float64)[None, None]
    assert fastconv.max_pool2d(x, 2)[0, 0, 0, 0] == 4


@pytest.mark.parametrize(
    "m,k,p,s,expected",
    [
        (10, 5, 1, 2, 4),  # seed 003 exercise: ⌊(10 + 2 − 5)/2⌋ + 1 = 4
        (32, 3, 1, 2, 16),  # seed 003: 32x32 input, 3x3 kernel, P=1, S=2
        (32, 5, 2, 1, 32),  # seed 004: (32 + 2·2 − 5)/1 + 1 = 32
        (6, 3, 0, 1, 4),  # seed 001: a 6x6 image under a 3x3 filter gives a 4x4 map
        (4, 3, 0, 1, 2),  # seed 001: then 4x4 → 2x2
        (28, 5, 0, 1, 24),  # seed 001 LeNet conv1
        (12, 5, 0, 1, 8),  # seed 001 LeNet conv2
        (227, 11, 0, 4, 55),  # AlexNet conv1 on 227x227
    ],
)
def test_output_size_exercises(m, k, p, s, expected):
    assert params.conv_output_size(m, k, s, p) == expected


def test_seed003_param_and_flop_exercise():
    """32x32 input, one 3x3 kernel, no bias, P=1, S=2: 9 parameters; 16·16·9 MACs."""
    assert params.conv_param_count(1, 1, 3, bias=False) == 9
    p = ConvParams(1, 1, 32, 32, 1, 3, 3, (2, 2), (1, 1, 1, 1), has_bias=False)
    assert p.out_shape == (1, 1, 16, 16)
    assert p.macs == 16 * 16 * 9 and p.flops == 2 * 16 * 16 * 9
    assert p.param_count == 9


def test_seed004_760_parameters():
    """CS231n: 32x32x3 input, ten 5x5 filters, pad 2: each filter 3·5·5 + 1 = 76, total 760."""
    assert params.conv_param_count(3, 10, 5) == 760
    p = ConvParams.from_layer(1, 3, 32, 10, 5, padding=2)
    assert p.out_shape == (1, 10, 32, 32) and p.param_count == 760


def test_seed003_one_gflop_layer():
    """c_i = c_o = 100, 5x5 kernels, 64x64 output: c_i·c_o·k_h·k_w·m_h·m_w ≈ 1 G multiply-adds
    (the notes' "1GFLOP"); fastconv counts 2 FLOPs per multiply-add."""
    p = ConvParams.from_layer(1, 100, 64, 100, 5, padding=2)
    assert (p.out_h, p.out_w) == (64, 64)
    assert p.macs == 100 * 100 * 5 * 5 * 64 * 64 == 1_024_000_000
    assert p.flops == 2_048_000_000 == params.conv_flops(1, 100, 100, 64, 64, 5)


def test_seed001_lenet_shapes():
    """64x1x28x28 → conv1 → 64x10x24x24 → pool 2 → 12x12 → conv2 → 64x20x8x8 → pool → 4x4 (320)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    h = fastconv.conv2d(x, rng.standard_normal((10, 1, 5, 5)).astype(np.float32))
    assert h.shape == (64, 10, 24, 24)
    h = fastconv.max_pool2d(h, 2)
    assert h.shape == (64, 10, 12, 12)
    h = fastconv.max_pool2d(fastconv.conv2d(h, rng.standard_normal((20, 10, 5, 5)).astype(np.float32)), 2)
    assert h.shape == (64, 20, 4, 4) and h[0].size == 320


def test_reference_avg_and_adaptive_by_hand():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    p = params.PoolParams("avg", 1, 1, 4, 4, (2, 2), (2, 2))
    np.testing.assert_array_equal(reference.avg_pool2d(x, p)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    # padding counted: the corner window [pad, pad; pad, 0] averages 0/4
    p = params.PoolParams("avg", 1, 1, 4, 4, (2, 2), (2, 2), (1, 1))
    assert reference.avg_pool2d(x, p)[0, 0, 0, 0] == 0.0
    assert reference.avg_pool2d(x, p)[0, 0, 2, 2] == 15 / 4
    p = params.PoolParams("adaptive_avg", 1, 1, 4, 4, output_size=(1, 1))
    assert reference.adaptive_avg_pool2d(x, p)[0, 0, 0, 0] == 7.5
