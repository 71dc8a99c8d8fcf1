"""Bad input gets a clear ValueError/TypeError naming the argument; odd layouts just work;
inputs are never modified."""

import numpy as np
import pytest

import fastconv

f32 = np.float32
X = np.ones((2, 4, 8, 8), f32)
W = np.ones((6, 4, 3, 3), f32)
B = np.ones(6, f32)


def conv(**kw):
    args = dict(input=X, weight=W, bias=None)
    args.update(kw)
    return fastconv.conv2d(**args)


CONV_ERRORS = [
    # (description, kwargs, exception, message pattern: argument name + what was given/expected)
    ("input 2-D", dict(input=np.ones((4, 8), f32)), ValueError, r"input must be 3-D .* or 4-D .* got 2-D .*\(4, 8\)"),
    ("input 5-D", dict(input=np.ones((1, 2, 4, 8, 8), f32)), ValueError, r"input must be 3-D"),
    ("weight 3-D", dict(weight=np.ones((6, 4, 3), f32)), ValueError, r"weight must be 4-D .*\(6, 4, 3\)"),
    (
        "channel mismatch",
        dict(weight=np.ones((6, 3, 3, 3), f32)),
        ValueError,
        r"input has C_in=4 channels .* weight.shape\[1\] \* groups = 3 \* 1 = 3",
    ),
    (
        "groups not dividing C_in",
        dict(weight=np.ones((6, 1, 3, 3), f32), groups=3),
        ValueError,
        r"C_in=4 must be divisible by groups=3",
    ),
    (
        "groups not dividing C_out",
        dict(weight=np.ones((5, 2, 3, 3), f32), groups=2),
        ValueError,
        r"C_out=5\) must be divisible by groups=2",
    ),
    ("groups zero", dict(groups=0), ValueError, r"groups must be a positive int, got 0"),
    ("groups float", dict(groups=1.5), TypeError, r"groups must be an int"),
    ("stride zero", dict(stride=0), ValueError, r"stride must be positive, got 0"),
    ("stride negative pair", dict(stride=(1, -2)), ValueError, r"stride must be positive"),
    ("stride triple", dict(stride=(1, 1, 1)), ValueError, r"stride must be an int or a pair of ints, got 3 values"),
    ("stride bool", dict(stride=True), TypeError, r"stride must be an int, got bool"),
    ("dilation zero", dict(dilation=0), ValueError, r"dilation must be positive"),
    ("padding negative", dict(padding=-1), ValueError, r"padding must be non-negative, got -1"),
    ("padding bad string", dict(padding="full"), ValueError, r"padding must be .*'valid' or 'same', got 'full'"),
    (
        "same with stride 2",
        dict(padding="same", stride=2),
        ValueError,
        r"padding='same' is only supported with stride 1",
    ),
    (
        "kernel larger than padded input",
        dict(weight=np.ones((6, 4, 11, 3), f32)),
        ValueError,
        r"kernel height .* = 11\) is larger than the padded input height \(8 \+ 0 \+ 0 = 8\)",
    ),
    (
        "dilated kernel too large",
        dict(dilation=(1, 5), padding=1),
        ValueError,
        r"kernel width .* = 11\) is larger .*\(8 \+ 1 \+ 1 = 10\)",
    ),
    ("zero-size kernel", dict(weight=np.ones((6, 4, 0, 3), f32)), ValueError, r"weight must have positive sizes"),
    (
        "bias wrong length",
        dict(bias=np.ones(5, f32)),
        ValueError,
        r"bias must be 1-D of length C_out=6, got shape \(5,\)",
    ),
    ("bias 2-D", dict(bias=np.ones((6, 1), f32)), ValueError, r"bias must be 1-D"),
    (
        "int input",
        dict(input=np.ones((2, 4, 8, 8), np.int32)),
        TypeError,
        r"input must have dtype float32 or float64, got dtype int32",
    ),
    (
        "complex weight",
        dict(weight=np.ones((6, 4, 3, 3), np.complex64)),
        TypeError,
        r"weight must have dtype .* complex64",
    ),
    ("bool input", dict(input=np.ones((2, 4, 8, 8), bool)), TypeError, r"got dtype bool"),
    ("object input", dict(input=np.empty((2, 4, 8, 8), object)), TypeError, r"got dtype object"),
    ("float16 input", dict(input=np.ones((2, 4, 8, 8), np.float16)), TypeError, r"got dtype float16"),
    ("None input", dict(input=None), TypeError, r"input must be an array, got None"),
    (
        "mixed dtypes",
        dict(weight=W.astype(np.float64)),
        TypeError,
        r"weight dtype float64 does not match input dtype float32",
    ),
    (
        "bias dtype",
        dict(bias=B.astype(np.float64)),
        TypeError,
        r"bias dtype float64 does not match input dtype float32",
    ),
    ("unknown algo", dict(algo="fft"), ValueError, r"algo must be 'auto' or one of 'direct'.*got 'fft'"),
    ("algo cannot run", dict(algo="winograd", stride=2), ValueError, r"algo='winograd' cannot run .*needs stride 1"),
    (
        "pointwise on 3x3",
        dict(algo="pointwise"),
        ValueError,
        r"algo='pointwise' cannot run .*needs a 1x1 kernel, got 3x3",
    ),
]


@pytest.mark.parametrize("desc,kw,exc,pattern", CONV_ERRORS, ids=[c[0] for c in CONV_ERRORS])
def test_conv2d_bad_input(desc, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        conv(**kw)


P = np.ones((2, 3, 8, 8), f32)
POOL_ERRORS = [
    ("max kernel zero", fastconv.max_pool2d, dict(kernel_size=0), ValueError, r"kernel_size must be positive"),
    ("max stride zero", fastconv.max_pool2d, dict(kernel_size=2, stride=0), ValueError, r"stride must be positive"),
    (
        "max pad over half",
        fastconv.max_pool2d,
        dict(kernel_size=3, padding=2),
        ValueError,
        r"padding must be at most half of kernel_size along height \(3 // 2 = 1\)",
    ),
    (
        "max pad over half dilated",
        fastconv.max_pool2d,
        dict(kernel_size=3, padding=2, dilation=2),
        ValueError,
        r"at most half",
    ),
    (
        "max negative pad",
        fastconv.max_pool2d,
        dict(kernel_size=3, padding=-1),
        ValueError,
        r"padding must be non-negative",
    ),
    ("max kernel too large", fastconv.max_pool2d, dict(kernel_size=9), ValueError, r"output size .* is too small"),
    (
        "max dilation zero",
        fastconv.max_pool2d,
        dict(kernel_size=2, dilation=0),
        ValueError,
        r"dilation must be positive",
    ),
    (
        "max ceil_mode not bool",
        fastconv.max_pool2d,
        dict(kernel_size=2, ceil_mode="yes"),
        TypeError,
        r"ceil_mode must be a bool",
    ),
    (
        "avg pad over half",
        fastconv.avg_pool2d,
        dict(kernel_size=2, padding=2),
        ValueError,
        r"at most half of kernel_size",
    ),
    (
        "avg divisor zero",
        fastconv.avg_pool2d,
        dict(kernel_size=2, divisor_override=0),
        ValueError,
        r"divisor_override must be a non-zero int",
    ),
    (
        "avg count_include_pad",
        fastconv.avg_pool2d,
        dict(kernel_size=2, count_include_pad=None),
        TypeError,
        r"count_include_pad must be a bool",
    ),
    (
        "adaptive zero",
        fastconv.adaptive_avg_pool2d,
        dict(output_size=0),
        ValueError,
        r"output_size must be a positive int, got 0",
    ),
    ("adaptive None", fastconv.adaptive_avg_pool2d, dict(output_size=None), TypeError, r"output_size must be an int"),
    (
        "adaptive triple",
        fastconv.adaptive_avg_pool2d,
        dict(output_size=(1, 2, 3)),
        ValueError,
        r"output_size must be an int or a pair",
    ),
]


@pytest.mark.parametrize("desc,op,kw,exc,pattern", POOL_ERRORS, ids=[c[0] for c in POOL_ERRORS])
def test_pool_bad_input(desc, op, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        op(P, **kw)


@pytest.mark.parametrize(
    "op,kw",
    [
        (fastconv.max_pool2d, dict(kernel_size=2)),
        (fastconv.avg_pool2d, dict(kernel_size=2)),
        (fastconv.adaptive_avg_pool2d, dict(output_size=2)),
    ],
)
def test_pool_bad_arrays(op, kw):
    with pytest.raises(ValueError, match=r"input must be 3-D .* got 2-D"):
        op(np.ones((8, 8), f32), **kw)
    with pytest.raises(TypeError, match=r"input must have dtype float32 or float64, got dtype int64"):
        op(np.ones((1, 1, 8, 8), np.int64), **kw)
    with pytest.raises(ValueError, match=r"non-zero channels, height and width"):
        op(np.ones((1, 0, 8, 8), f32), **kw)


# --- odd layouts work and inputs are never modified -------------------------------------
def _layouts(a):
    """The same values as a C array, Fortran array, strided view, negative-stride view, read-only."""
    f = np.asfortranarray(a)
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    rev = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    ro = a.copy()
    ro.flags.writeable = False
    return {"fortran": f, "strided": big[..., ::2], "negative_stride": rev, "readonly": ro}


@pytest.mark.parametrize("algo", fastconv.algorithms() + ["auto"])
def test_conv2d_layouts_and_no_mutation(algo):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9, 9)).astype(f32)
    groups = 4 if algo == "depthwise" else 1
    k = 1 if algo == "pointwise" else 3
    w = rng.standard_normal((4, 4 // groups, k, k)).astype(f32)
    b = rng.standard_normal(4).astype(f32)
    expected = fastconv.conv2d(x, w, b, algo=algo, groups=groups)
    for name, xl in _layouts(x).items():
        for wname, wl in _layouts(w).items():
            before_x, before_w = xl.copy(), wl.copy()
            y = fastconv.conv2d(xl, wl, b, algo=algo, groups=groups)
            np.testing.assert_array_equal(y, expected, err_msg=f"input {name}, weight {wname}")
            np.testing.assert_array_equal(xl, before_x)
            np.testing.assert_array_equal(wl, before_w)


@pytest.mark.parametrize(
    "op,kw",
    [
        (fastconv.max_pool2d, dict(kernel_size=3, stride=2, padding=1)),
        (fastconv.avg_pool2d, dict(kernel_size=3, stride=2, padding=1)),
        (fastconv.adaptive_avg_pool2d, dict(output_size=(3, 2))),
    ],
)
def test_pool_layouts_and_no_mutation(op, kw):
    x = np.random.default_rng(4).standard_normal((2, 3, 9, 10)).astype(f32)
    expected = op(x, **kw)
    for name, xl in _layouts(x).items():
        before = xl.copy()
        np.testing.assert_array_equal(op(xl, **kw), expected, err_msg=name)
        np.testing.assert_array_equal(xl, before)


def test_batch_zero_returns_empty_of_right_shape():
    y = fastconv.conv2d(np.ones((0, 4, 8, 8), f32), W, B, padding=1)
    assert y.shape == (0, 6, 8, 8) and y.dtype == f32
    assert fastconv.max_pool2d(np.ones((0, 3, 8, 8), f32), 2).shape == (0, 3, 4, 4)
    assert fastconv.avg_pool2d(np.ones((0, 3, 8, 8), f32), 2).shape == (0, 3, 4, 4)
    assert fastconv.adaptive_avg_pool2d(np.ones((0, 3, 8, 8), f32), 1).shape == (0, 3, 1, 1)


def test_unbatched_input_gives_unbatched_output():
    y = fastconv.conv2d(X[0], W, B, padding=1)
    assert y.shape == (6, 8, 8)
    np.testing.assert_array_equal(y, fastconv.conv2d(X, W, B, padding=1)[0])


def test_nan_and_inf_propagate_in_conv():
    x = np.zeros((1, 1, 5, 5), f32)
    x[0, 0, 2, 2] = np.nan
    x[0, 0, 0, 4] = np.inf
    w = np.ones((1, 1, 3, 3), f32)
    for algo in fastconv.algorithms():
        try:
            y = fastconv.conv2d(x, w if algo != "pointwise" else w[:, :, :1, :1], algo=algo)
        except ValueError:
            continue
        if algo != "pointwise":
            assert np.isnan(y[0, 0, 1, 1]), algo  # a window holding the NaN
            assert np.isnan(y[0, 0, 0, 2]) or np.isinf(y[0, 0, 0, 2]), algo
        else:
            assert np.isnan(y[0, 0, 2, 2]) and y[0, 0, 0, 4] == np.inf


def test_lists_are_accepted_like_arrays():
    y = fastconv.conv2d([[[[1.0, 2.0], [3.0, 4.0]]]], [[[[1.0]]]])
    assert y.dtype == np.float64 and y.tolist() == [[[[1.0, 2.0], [3.0, 4.0]]]]
