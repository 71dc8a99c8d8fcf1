"""Hypothesis sweep over the whole parameter space of conv2d and the pools.

Every call either matches the float64 reference (`fastconv.reference`) within the algorithm's
stated tolerance, or raises the documented ValueError — and the test decides which *on its
own* (from the definition of the output size and each algorithm's `supports`), so a
validation hole or an over-eager rejection both fail. Every case also checks that the inputs
are left untouched (byte for byte, including the memory around strided views) and that the
output has the input's dtype and array type.

The conv sweep is parametrized over `registry.REGISTRY` (plus ``auto``), so every algorithm
that lands is fuzzed with no edit here. Shapes are small on purpose: the oracle is O(taps).

Profiles (tests/conftest.py): ``ci`` (default, >= 500 examples per test), ``long``
(>= 10,000 per algorithm): ``pytest tests/test_fuzz.py --hypothesis-profile=long``.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import assume, event, given, note, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference, registry, rules
from fastconv.params import ConvParams, PoolParams, adaptive_bounds, pool_output_size
from fastconv.testing import assert_algorithm_close, conv_error_bound

try:
    import torch
except ImportError:  # torch is a test peer; the layouts that need it are simply not drawn
    torch = None

DTYPES = (np.float32, np.float64)
LAYOUTS = ["C", "F", "strided", "negative", "readonly", "channels_last"] + (["torch"] if torch else [])


# --- array layouts --------------------------------------------------------------------------
def lay_out(arr: np.ndarray, kind: str):
    """``arr``'s values in the memory layout ``kind`` → (what to pass, the array owning the memory).

    Gaps of strided views are filled with NaN: a kernel reading outside the view shows up."""
    if kind == "F":
        out = np.asfortranarray(arr)
        return out, out
    if kind == "strided":
        owner = np.full(arr.shape[:-1] + (2 * arr.shape[-1] + 1,), np.nan, dtype=arr.dtype)
        view = owner[..., 1::2]
        view[...] = arr
        return view, owner
    if kind == "negative":
        owner = np.ascontiguousarray(arr[..., ::-1])
        return owner[..., ::-1], owner
    if kind == "readonly":
        owner = arr.copy()
        owner.flags.writeable = False
        return owner, owner
    if kind == "channels_last" and arr.ndim >= 3:
        owner = np.ascontiguousarray(np.moveaxis(arr, -3, -1))
        return np.moveaxis(owner, -1, -3), owner
    if kind == "torch":
        t = torch.from_numpy(arr.copy())
        return t, t.numpy()
    out = arr.copy()
    return out, out


def check_result(y, x_passed, dtype, shape) -> np.ndarray:
    """The output's array type, dtype and shape; returns it as an ndarray."""
    if torch is not None and isinstance(x_passed, torch.Tensor):
        assert isinstance(y, torch.Tensor), f"torch in must give torch out, got {type(y)}"
        y = y.numpy()
    assert isinstance(y, np.ndarray), type(y)
    assert y.dtype == dtype, (y.dtype, dtype)
    assert y.shape == tuple(shape), (y.shape, shape)
    return y


class Untouched:
    """Snapshot of arrays' memory; `check()` fails if any byte changed."""

    def __init__(self, *owners):
        self.owners = [o for o in owners if o is not None]
        self.before = [o.tobytes() for o in self.owners]

    def check(self):
        for i, (o, b) in enumerate(zip(self.owners, self.before)):
            assert o.tobytes() == b, f"input #{i} was modified"

    def call(self, valid: bool, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, which must raise ValueError unless ``valid``; either way the inputs
        must come out unchanged. Returns the result, or None for a (correctly) refused call."""
        if not valid:
            event("refused (ValueError)")
            with pytest.raises(ValueError):
                fn(*args, **kwargs)
            self.check()
            return None
        event("ran")
        result = fn(*args, **kwargs)
        self.check()
        return result


# --- values ---------------------------------------------------------------------------------
@st.composite
def values(draw, shape, dtype, nonfinite: bool = False):
    """Random values of several kinds. Finite draws keep products in the normal range of the
    dtype (the accuracy contract is relative, and subnormal products have no relative accuracy)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "normal", "scaled", "integers", "ties", "zeros", "mixed"]))
    if kind == "scaled":
        a = rng.standard_normal(shape) * 2.0 ** draw(st.integers(-30, 30))
    elif kind == "integers":
        a = rng.integers(-8, 9, shape).astype(np.float64)
    elif kind == "ties":
        a = rng.integers(0, 2, shape).astype(np.float64)
    elif kind == "zeros":
        a = np.zeros(shape)
    elif kind == "mixed":  # wide dynamic range inside one array
        a = rng.standard_normal(shape) * 2.0 ** rng.integers(-12, 13, shape)
    else:
        a = rng.standard_normal(shape)
    a = a.astype(dtype)
    if nonfinite and a.size:
        k = draw(st.integers(1, max(1, a.size // 3)))
        where = rng.choice(a.size, size=k, replace=False)
        a.flat[where] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=dtype), size=k)
    return a


# --- arguments: drawn in every spelling torch accepts ------------------------------------------
def spelled(pair: tuple[int, int]):
    """An (h, w) pair as torch accepts it: int when square, else tuple / list."""
    options = [pair, list(pair)]
    if pair[0] == pair[1]:
        options += [pair[0], (pair[0],)]
    return st.sampled_from(options)


def pairs(lo, hi):
    return st.tuples(st.integers(lo, hi), st.integers(lo, hi)) | st.integers(lo, hi).map(lambda v: (v, v))


# --- conv2d -----------------------------------------------------------------------------------
# Structural templates: each algorithm is mostly fuzzed on the cases it supports (a specialised
# kernel would otherwise only ever be asked to refuse). Generic over the registry: a template
# is used for an algorithm iff its `supports` accepts the template's representative layer.
TEMPLATES = {
    "general": {},
    "3x3_s1_d1": dict(k=(3, 3), stride=(1, 1), dilation=(1, 1)),
    "1x1_p0": dict(k=(1, 1), padding=(0, 0)),
    "depthwise": dict(depthwise=True),
    "depthwise_3x3_s1": dict(depthwise=True, k=(3, 3), stride=(1, 1), dilation=(1, 1)),
    "5x5_s2": dict(k=(5, 5), stride=(2, 2)),
    "5x5_s1_d1": dict(k=(5, 5), stride=(1, 1), dilation=(1, 1)),
}


@functools.lru_cache(maxsize=None)
def templates_for(name: str) -> list[str]:
    if name == "auto":
        return list(TEMPLATES)
    alg = registry.get(name)
    ok = []
    for t, spec in TEMPLATES.items():
        # fields a template leaves free get deliberately unspecial values in the representative
        c = 8
        p = ConvParams(
            1,
            c,
            12,
            12,
            c,
            *spec.get("k", (5, 4)),
            spec.get("stride", (2, 1)),
            (0, 0, 0, 0) if "padding" in spec else (1, 1, 1, 1),
            spec.get("dilation", (1, 2)),
            c if spec.get("depthwise") else 1,
        )
        if alg.supports(p) is None:
            ok.append(t)
    return ok or ["general"]


def same_padding(k, d):
    total = d * (k - 1)
    return total // 2, total - total // 2


@st.composite
def conv_cases(draw, algo: str, nonfinite: str | None = None, min_n: int = 0):
    """A conv2d call (maybe invalid) and what must happen: ``expect`` is a ConvParams or "ValueError".
    ``nonfinite`` ("input" or "weight") sprinkles NaN/±Inf into that array."""
    supported = templates_for(algo)
    spec = TEMPLATES[draw(st.sampled_from(supported * 9 + ["general"]))]  # mostly what algo supports
    dtype = draw(st.sampled_from(DTYPES))
    if spec.get("depthwise"):
        groups = draw(st.integers(1, 5))
        cig, cog = 1, draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
        cig, cog = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = spec.get("k") or draw(pairs(1, 5))
    stride = spec.get("stride") or draw(pairs(1, 3))
    dilation = spec.get("dilation") or draw(pairs(1, 3))
    if "padding" in spec:
        padding = draw(st.sampled_from([0, (0, 0), [0], "valid"]))
        pads = (0, 0)
    else:
        padding = draw(st.sampled_from(["int", "int", "pair", "same", "valid"]))
        if padding in ("int", "pair"):
            pads = draw(st.integers(0, 3).map(lambda v: (v, v)) if padding == "int" else pairs(0, 3))
            padding = draw(spelled(pads))
    n = draw(st.integers(min_n, 3))
    c_in, c_out = cig * groups, cog * groups
    bias = draw(st.booleans())
    unbatched = n == 1 and draw(st.booleans())

    # what must happen, from the definitions (not from fastconv.validate)
    if padding == "same":
        pad4 = (*same_padding(kh, dilation[0]), *same_padding(kw, dilation[1]))
        valid = stride == (1, 1)
    elif padding == "valid":
        pad4, valid = (0, 0, 0, 0), True
    else:
        pad4, valid = (pads[0], pads[0], pads[1], pads[1]), True
    # sizes around the smallest that fits the kernel: both sides of the boundary get hit
    eff_h, eff_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    # (sampled_from, not integers(-2, 9): hypothesis favours an integer range's lower end)
    h = max(1, eff_h - pad4[0] - pad4[1] + draw(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 9, -1, -2])))
    w = max(1, eff_w - pad4[2] - pad4[3] + draw(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 9, -1, -2])))
    valid = valid and eff_h <= h + pad4[0] + pad4[1] and eff_w <= w + pad4[2] + pad4[3]
    expect = "ValueError"
    if valid:
        p = ConvParams(n, c_in, h, w, c_out, kh, kw, stride, pad4, dilation, groups, np.dtype(dtype).name, bias)
        why = None if algo == "auto" else registry.get(algo).supports(p)
        if why is None:
            expect = p
        else:
            event(f"refused: {why.split(',')[0]}")
    else:
        event("refused: invalid geometry")

    x = draw(values((n, c_in, h, w), dtype, nonfinite == "input"))
    wt = draw(values((c_out, cig, kh, kw), dtype, nonfinite == "weight"))
    b = draw(values((c_out,), dtype)) if bias else None
    kwargs = dict(
        stride=draw(spelled(stride)), padding=padding, dilation=draw(spelled(dilation)), groups=groups, algo=algo
    )
    layouts = [draw(st.sampled_from(LAYOUTS)) for _ in range(3)]
    return x, wt, b, kwargs, layouts, unbatched, expect


CONV_ALGOS = ["auto"] + registry.names()


@pytest.mark.parametrize("algo", CONV_ALGOS)
@given(data=st.data())
def test_conv2d_fuzz(algo, data):
    x, w, b, kwargs, layouts, unbatched, expect = data.draw(conv_cases(algo))
    xs = x[0] if unbatched else x
    (xp, xo), (wp, wo) = lay_out(xs, layouts[0]), lay_out(w, layouts[1])
    bp, bo = lay_out(b, layouts[2]) if b is not None else (None, None)
    note(f"x {x.shape} {x.dtype} {layouts} unbatched={unbatched} w {w.shape} bias={b is not None} {kwargs}")
    untouched = Untouched(xo, wo, bo)
    y = untouched.call(expect != "ValueError", fastconv.conv2d, xp, wp, bp, **kwargs)
    if y is None:
        return
    p: ConvParams = expect
    y = check_result(y, xp, x.dtype, p.out_shape[1:] if unbatched else p.out_shape)
    alg = rules.select(p, algo)
    assert_algorithm_close(alg, y, x, w, b, p, label=f"{alg.name} {p.describe()}")


def weight_meets_padding(w: np.ndarray, p: ConvParams) -> np.ndarray:
    """Outputs where some NaN/Inf weight tap falls on a padded (not a real) input pixel."""
    t, b, l, r = p.pad
    padded = np.pad(np.zeros((1, p.c_in, p.h, p.w)), ((0, 0), (0, 0), (t, b), (l, r)), constant_values=1)
    p0 = dataclasses.replace(p, n=1, h=p.h + t + b, w=p.w + l + r, pad=(0, 0, 0, 0))
    return reference.conv2d(padded, (~np.isfinite(w)).astype(np.float64), None, p0) > 0


@pytest.mark.skipif(
    torch is None, reason="torch not installed: NaN/Inf semantics are defined as torch's (pip install '.[peers]')"
)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN arithmetic is the point here
@pytest.mark.parametrize("where", ["input", "weight"])
@pytest.mark.parametrize("algo", CONV_ALGOS)
@settings(max_examples=max(50, settings.default.max_examples // 10))
@given(data=st.data())
def test_conv2d_nonfinite_matches_torch(algo, where, data):
    """NaN and ±Inf in the input or the weights come out exactly where torch puts them."""
    x, w, b, kwargs, _, _, expect = data.draw(conv_cases(algo, nonfinite=where, min_n=1))
    assume(expect != "ValueError")  # validity is test_conv2d_fuzz's job
    p: ConvParams = expect
    untouched = Untouched(x, w, b)
    with np.errstate(all="ignore"):
        y = fastconv.conv2d(x, w, b, **kwargs)
    untouched.check()
    tkw = {k: v for k, v in kwargs.items() if k != "algo"}
    t = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b), **tkw
    ).numpy()
    alg = rules.select(p, algo)
    # A non-finite weight on a zero-padded tap has no single torch answer: its im2col path
    # multiplies the padding (0·Inf = NaN), its oneDNN path (float32, batch > 1) skips it.
    # fastconv's rule (README, "NaN and Inf") is the definition's: padding is a zero that is
    # multiplied, so those outputs are NaN. Every other output must match torch exactly.
    ok = np.broadcast_to(~weight_meets_padding(w, p), y.shape)
    assert np.isnan(y[~ok]).all(), "a non-finite weight on a padded tap gives NaN"
    same_nonfinite(y[ok], t[ok], f"{alg.name} {p.describe()} vs torch")
    # the finite outputs still meet the accuracy contract
    with np.errstate(all="ignore"):
        ref = reference.conv2d(x, w, b, p)
        scale = conv_error_bound(
            np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(w, posinf=0, neginf=0), b, p, alg.error_tile
        )
    fin = np.isfinite(ref)
    err = np.abs(y.astype(np.float64) - ref)[fin]
    assert np.all(err <= alg.tolerance_for(p) * scale[fin] + np.finfo(np.float64).tiny), "finite outputs"


# --- pools ------------------------------------------------------------------------------------
def pool_input(data, nonfinite):
    dtype = data.draw(st.sampled_from(DTYPES))
    n, c = data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(1, 10)), data.draw(st.integers(1, 10))
    unbatched = n == 1 and data.draw(st.booleans())
    x = data.draw(values((n, c, h, w), dtype, nonfinite))
    layout = data.draw(st.sampled_from(LAYOUTS))
    xp, xo = lay_out(x[0] if unbatched else x, layout)
    note(f"x {x.shape} {x.dtype} {layout} unbatched={unbatched}")
    return x, xp, xo, unbatched


def window(data, max_k=4, max_pad=2):
    k = data.draw(pairs(1, max_k))
    stride = data.draw(st.none() | pairs(1, 3))
    pad = data.draw(pairs(0, max_pad))
    if data.draw(st.sampled_from([True, True, True, False])):  # mostly legal: padding ≤ kernel // 2
        pad = (min(pad[0], k[0] // 2), min(pad[1], k[1] // 2))
    return k, stride, pad


def pool_valid(h, w, k, stride, pad, dil, ceil):
    """torch's rules: padding at most half the kernel, and a non-empty output."""
    if pad[0] > k[0] // 2 or pad[1] > k[1] // 2:
        return None
    s = stride or k
    oh = pool_output_size(h, k[0], s[0], pad[0], dil[0], ceil)
    ow = pool_output_size(w, k[1], s[1], pad[1], dil[1], ceil)
    return (oh, ow) if min(oh, ow) >= 1 else None


def same_nonfinite(y, ref, label):
    """NaN exactly where ref has NaN, ±Inf exactly where ref has it."""
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref), err_msg=f"{label}: NaN positions")
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(ref), err_msg=f"{label}: +Inf positions")
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ref), err_msg=f"{label}: -Inf positions")


def assert_pool_close(y, ref, scale, dtype, label):
    """|y − ref| ≤ tol·(the same pool over |x|) where both are finite; non-finite positions equal.
    tol covers the final rounding to ``dtype`` (sums are accumulated in double)."""
    same_nonfinite(y, ref, label)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    fin = np.isfinite(ref)
    err = np.abs(y.astype(np.float64)[fin] - ref[fin])
    bound = tol * scale[fin] + np.finfo(np.float64).tiny
    assert np.all(err <= bound), f"{label}: max error {err.max():.3g} over bound"


def torch_result(fn, x, **kw):
    """torch's answer for the same call, or the exception type it raised."""
    try:
        return getattr(torch.nn.functional, fn)(torch.from_numpy(x), **kw)
    except RuntimeError:
        return RuntimeError


@given(data=st.data())
def test_max_pool2d_fuzz(data):
    nonfinite = data.draw(st.booleans())
    x, xp, xo, unbatched = pool_input(data, nonfinite)
    k, stride, pad = window(data)
    dil = data.draw(pairs(1, 3))
    ceil, want_idx = data.draw(st.booleans()), data.draw(st.booleans())
    kwargs = dict(
        kernel_size=data.draw(spelled(k)),
        stride=None if stride is None else data.draw(spelled(stride)),
        padding=data.draw(spelled(pad)),
        dilation=data.draw(spelled(dil)),
        ceil_mode=ceil,
        return_indices=want_idx,
    )
    note(repr(kwargs))
    untouched = Untouched(xo)
    out = pool_valid(x.shape[2], x.shape[3], k, stride, pad, dil, ceil)
    if torch is not None and x.shape[0] > 0:  # the validity rules are torch's
        assert (torch_result("max_pool2d", x, **kwargs) is RuntimeError) == (out is None), "torch disagrees"
    res = untouched.call(out is not None, fastconv.max_pool2d, xp, **kwargs)
    if res is None:
        return
    y, idx = res if want_idx else (res, None)
    shape = (*x.shape[:2], *out)
    y = check_result(y, xp, x.dtype, shape[1:] if unbatched else shape).reshape(shape)
    p = PoolParams(
        "max", *x.shape, kernel=k, stride=stride or k, padding=pad, dilation=dil, ceil_mode=ceil, dtype=x.dtype.name
    )
    ref, ref_idx = reference.max_pool2d(x, p, return_indices=True)
    # max is exact: equal values (NaN where the reference has NaN) and the same argmax
    np.testing.assert_array_equal(y.astype(np.float64), ref)
    if want_idx:
        idx = check_result(idx, xp, np.int64, shape[1:] if unbatched else shape).reshape(shape)
        np.testing.assert_array_equal(idx, ref_idx)
    if torch is not None and x.size:
        t = torch.nn.functional.max_pool2d(torch.from_numpy(x), **kwargs)
        ty, ti = t if want_idx else (t, None)
        np.testing.assert_array_equal(y, ty.numpy(), err_msg="vs torch")
        if want_idx:
            # A window whose dilated taps all miss the input (e.g. 1x1 input, kernel 2, dilation 2,
            # padding 1) holds no pixel: both give -inf, fastconv the index -1, torch an index
            # outside the plane (found by the long profile). Elsewhere the indices are torch's.
            real = ref_idx >= 0
            np.testing.assert_array_equal(idx[real], ti.numpy()[real], err_msg="indices vs torch")
            assert np.all(np.isneginf(y[~real])) and np.all(idx[~real] == -1)


@given(data=st.data())
def test_avg_pool2d_fuzz(data):
    nonfinite = data.draw(st.booleans())
    x, xp, xo, unbatched = pool_input(data, nonfinite)
    k, stride, pad = window(data)
    ceil, include = data.draw(st.booleans()), data.draw(st.booleans())
    div = data.draw(st.none() | st.integers(-3, 6))
    kwargs = dict(
        kernel_size=data.draw(spelled(k)),
        stride=None if stride is None else data.draw(spelled(stride)),
        padding=data.draw(spelled(pad)),
        ceil_mode=ceil,
        count_include_pad=include,
        divisor_override=div,
    )
    note(repr(kwargs))
    untouched = Untouched(xo)
    out = pool_valid(x.shape[2], x.shape[3], k, stride, pad, (1, 1), ceil)
    y = untouched.call(out is not None and div != 0, fastconv.avg_pool2d, xp, **kwargs)
    if y is None:
        return
    shape = (*x.shape[:2], *out)
    y = check_result(y, xp, x.dtype, shape[1:] if unbatched else shape).reshape(shape)
    p = PoolParams(
        "avg",
        *x.shape,
        kernel=k,
        stride=stride or k,
        padding=pad,
        ceil_mode=ceil,
        count_include_pad=include,
        divisor_override=div,
        dtype=x.dtype.name,
    )
    with np.errstate(invalid="ignore", over="ignore"):
        ref = reference.avg_pool2d(x, p)
        scale = np.abs(reference.avg_pool2d(np.abs(x), p))
    assert_pool_close(y, ref, scale, x.dtype, "avg_pool2d")
    if torch is not None and x.size:
        ty = torch.nn.functional.avg_pool2d(torch.from_numpy(x), **kwargs).numpy()
        assert_pool_close(y, ty.astype(np.float64), scale, x.dtype, "avg_pool2d vs torch")


@given(data=st.data())
def test_adaptive_avg_pool2d_fuzz(data):
    nonfinite = data.draw(st.booleans())
    x, xp, xo, unbatched = pool_input(data, nonfinite)
    oh, ow = data.draw(pairs(-1, 12))
    spelling = data.draw(st.sampled_from(["pair", "int", "none_h", "none_w"]))
    size = {"pair": (oh, ow), "int": oh, "none_h": (None, ow), "none_w": (oh, None)}[spelling]
    oh, ow = {"pair": (oh, ow), "int": (oh, oh), "none_h": (x.shape[2], ow), "none_w": (oh, x.shape[3])}[spelling]
    note(f"output_size={size!r}")
    untouched = Untouched(xo)
    y = untouched.call(min(oh, ow) >= 1, fastconv.adaptive_avg_pool2d, xp, size)
    if y is None:
        return
    shape = (*x.shape[:2], oh, ow)
    y = check_result(y, xp, x.dtype, shape[1:] if unbatched else shape).reshape(shape)
    # the oracle, written here from torch's window formula (reference.py uses the same one)
    hs, he = adaptive_bounds(x.shape[2], oh)
    ws, we = adaptive_bounds(x.shape[3], ow)
    assert np.all(he > hs) and np.all(we > ws)
    p = PoolParams("adaptive_avg", *x.shape, output_size=(oh, ow), dtype=x.dtype.name)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = reference.adaptive_avg_pool2d(x, p)
        scale = np.abs(reference.adaptive_avg_pool2d(np.abs(x), p))
    assert_pool_close(y, ref, scale, x.dtype, "adaptive_avg_pool2d")
    if torch is not None and x.size:
        ty = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), size).numpy()
        assert_pool_close(y, ty.astype(np.float64), scale, x.dtype, "adaptive_avg_pool2d vs torch")
