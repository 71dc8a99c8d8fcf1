"""fastconv.grad (conv2d and pool gradients) against the float64 reference, torch autograd and
torch.nn.grad; the compiled kernels' paths, determinism across thread counts, and validation.

Tolerances (the forward ops' accuracy contract, `fastconv.testing`): an error is measured against
the scale of the sum it comes from — |W|ᵀ ⊛ |dY| for dL/dx, the correlation of |X| and |dY| for dL/dw,
Σ|dY| for dL/db — and must stay within:

* dL/dw: float32 1e-5, float64 1e-13 (measured worst over the table: 2.2e-7, 6.8e-16; the dot
  kernel's lane sums are float within a chunk of ≤ 1024 pixels and double across chunks);
* dL/db: float32 1e-6, float64 1e-14 (double sums, rounded once);
* dL/dx, strided layers (conv_grad kernel): float32 1e-5, float64 1e-13 (measured 3.2e-8, 5.4e-17);
* dL/dx, stride 1 (a forward convolution through fastconv.conv2d): the forward contract — for 3x3
  and 5x5 kernels (which ``auto`` may run with Winograd) 1e-4 / 1e-12 against Winograd's tile
  scale (Σ|W| · max|dY| over the tile, `fastconv.testing.conv_error_bound` with tile 4), else
  2e-5 / 1e-12 against the plain scale.

Pools are compared with torch's CPU backward **bit for bit** (same accumulation order and
divisions), and with the float64 reference within 1e-6 / 1e-14 of Σ|dY| per pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import grad, reference, testing
from fastconv.kernels import conv_grad, pool_grad
from fastconv.params import ConvParams, PoolParams
from fastconv.testing import ADAPTIVE_CASES, AVG_POOL_CASES, CONV_CASES, MAX_POOL_CASES, describe

DTYPES = [np.float32, np.float64]
TOL_W = {"float32": 1e-5, "float64": 1e-13}
TOL_B = {"float32": 1e-6, "float64": 1e-14}
TOL_X_KERNEL = {"float32": 1e-5, "float64": 1e-13}
TOL_X_WINO = {"float32": 1e-4, "float64": 1e-12}
TOL_X_FWD = {"float32": 2e-5, "float64": 1e-12}
TOL_POOL = {"float32": 1e-6, "float64": 1e-14}


# --- helpers -----------------------------------------------------------------------------------
def _scaled_error(y, ref, scale) -> float:
    y = np.asarray(y, dtype=np.float64)
    err = np.abs(y - ref)
    if err.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(scale > 0, err / np.where(scale > 0, scale, 1), np.where(err > 0, np.inf, 0))
    return float(scaled.max())


def _dy(p: ConvParams | PoolParams, dtype, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(p.out_shape).astype(dtype)


def input_grad_error(dx, dy, w, p: ConvParams) -> tuple[float, float]:
    """(scaled error, tolerance) of an input gradient under the contract in the module docstring."""
    ref = reference.conv2d_input_grad(dy, w, p)
    if grad.input_grad_route(p) == "conv_grad":
        scale = reference.conv2d_input_grad(np.abs(dy), np.abs(w), p)
        return _scaled_error(dx, ref, scale), TOL_X_KERNEL[p.dtype]
    dyf, wt, kw = grad.forward_equivalent(dy, w, p)
    pf = describe(dyf, wt, None, **kw)
    wino = p.kh == p.kw and p.kh in (3, 5) and p.dilation == (1, 1)
    scale = testing.conv_error_bound(dyf, wt, None, pf, tile=4 if wino else 0)
    return _scaled_error(dx, ref, scale), (TOL_X_WINO if wino else TOL_X_FWD)[p.dtype]


def check_conv_grads(x, w, b, dy, p: ConvParams, label: str, kwargs: dict) -> None:
    """conv2d_input / conv2d_weight / conv2d_bias of one layer against the reference."""
    dx = grad.conv2d_input(x.shape, w, dy, **kwargs)
    dw = grad.conv2d_weight(x, w.shape, dy, **kwargs)
    db = grad.conv2d_bias(dy)
    assert dx.shape == x.shape and dx.dtype == x.dtype, label
    assert dw.shape == w.shape and dw.dtype == w.dtype, label
    assert db.shape == (w.shape[0],) and db.dtype == x.dtype, label
    x4, dy4 = (x, dy) if x.ndim == 4 else (x[None], dy[None])
    e, tol = input_grad_error(dx if dx.ndim == 4 else dx[None], dy4, w, p)
    assert e <= tol, f"{label}: dL/dx error {e:.3g} x scale > {tol:g}"
    e = _scaled_error(
        dw, reference.conv2d_weight_grad(x4, dy4, p), reference.conv2d_weight_grad(np.abs(x4), np.abs(dy4), p)
    )
    assert e <= TOL_W[p.dtype], f"{label}: dL/dw error {e:.3g} x scale > {TOL_W[p.dtype]:g}"
    e = _scaled_error(db, reference.conv2d_bias_grad(dy4), reference.conv2d_bias_grad(np.abs(dy4)))
    assert e <= TOL_B[p.dtype], f"{label}: dL/db error {e:.3g} x scale > {TOL_B[p.dtype]:g}"


@pytest.fixture
def nthreads():
    """Restore the thread count a test changes."""
    old = fastconv.get_num_threads()
    yield
    fastconv.set_num_threads(old)


# --- convolution: the case table against the reference --------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[c.name for c in CONV_CASES])
def test_conv_grads_match_reference(case, dtype):
    x, w, b = case.arrays(dtype)
    p = describe(x, w, b, **case.kwargs())
    check_conv_grads(x, w, b, _dy(p, dtype), p, case.name, case.kwargs())


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c.n == 2][:6], ids=lambda c: c.name)
def test_unbatched(case):
    x, w, b = case.arrays(np.float64)
    p = describe(x, w, b, **case.kwargs())
    dy = _dy(p, np.float64)
    kw = case.kwargs()
    np.testing.assert_array_equal(
        grad.conv2d_input(x.shape[1:], w, dy[0], **kw), grad.conv2d_input((1,) + x.shape[1:], w, dy[:1], **kw)[0]
    )
    np.testing.assert_array_equal(
        grad.conv2d_weight(x[0], w.shape, dy[0], **kw), grad.conv2d_weight(x[:1], w.shape, dy[:1], **kw)
    )
    np.testing.assert_array_equal(grad.conv2d_bias(dy[0]), grad.conv2d_bias(dy[:1]))


def test_asymmetric_padding_via_params():
    """conv2d's signature only pads symmetrically ("same" with an even kernel excepted); the kernels
    take any (top, bottom, left, right) in the params."""
    rng = np.random.default_rng(3)
    for pad, stride in (((2, 0, 1, 3), (1, 1)), ((0, 2, 3, 1), (2, 1)), ((3, 1, 0, 2), (2, 3))):
        p = ConvParams(2, 4, 9, 10, 6, 3, 3, stride, pad, (1, 1), 2, "float64", False)
        x = rng.standard_normal(p.input_shape)
        w = rng.standard_normal(p.weight_shape)
        dy = rng.standard_normal(p.out_shape)
        dx = grad._input_grad(dy, w, p.with_pass("input_grad"))
        e, tol = input_grad_error(dx, dy, w, p)
        assert e <= tol, (pad, stride, e)
        dw = grad._weight_grad(x, dy, p.with_pass("weight_grad"))
        e = _scaled_error(
            dw, reference.conv2d_weight_grad(x, dy, p), reference.conv2d_weight_grad(np.abs(x), np.abs(dy), p)
        )
        assert e <= TOL_W["float64"], (pad, stride, e)


# --- convolution: torch ------------------------------------------------------------------------------
TORCH_LAYERS = [  # (n, c_in, h, w, c_out, k, stride, padding, dilation, groups)
    (2, 4, 9, 11, 6, 3, 1, 1, 1, 1),
    (1, 6, 13, 12, 6, 3, 2, 1, 1, 6),
    (2, 4, 17, 16, 6, 5, 3, 2, 2, 2),
    (3, 8, 7, 7, 16, 1, 1, 0, 1, 1),
    (1, 3, 23, 21, 8, 7, 2, 3, 1, 1),
    (2, 16, 6, 6, 32, 3, 1, 1, 1, 1),
    (1, 12, 15, 9, 9, 2, (2, 1), (0, 1), (1, 2), 3),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layer", TORCH_LAYERS, ids=str)
def test_matches_torch_nn_grad_and_autograd(layer, dtype):
    n, ci, h, wd, co, k, s, pad, d, g = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, ci, h, wd)).astype(dtype)
    w = rng.standard_normal((co, ci // g, k, k)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(tx, tw, tb, s, pad, d, g)
    dy = rng.standard_normal(tuple(y.shape)).astype(dtype)
    y.backward(torch.from_numpy(dy))
    p = describe(x, w, b, stride=s, padding=pad, dilation=d, groups=g)
    kw = dict(stride=s, padding=pad, dilation=d, groups=g)
    tdy = torch.from_numpy(dy)
    # torch.nn.grad agrees with autograd; ours agree with both within the contract's scale
    nn_dx = torch.nn.grad.conv2d_input(tx.shape, tw.detach(), tdy, s, pad, d, g)
    nn_dw = torch.nn.grad.conv2d_weight(tx.detach(), tw.shape, tdy, s, pad, d, g)
    dx = grad.conv2d_input(tx.shape, tw.detach(), tdy, **kw)
    dw = grad.conv2d_weight(tx.detach(), tw.shape, tdy, **kw)
    db = grad.conv2d_bias(tdy)
    assert isinstance(dx, torch.Tensor) and isinstance(dw, torch.Tensor) and isinstance(db, torch.Tensor)
    sx = reference.conv2d_input_grad(np.abs(dy), np.abs(w), p)
    sw = reference.conv2d_weight_grad(np.abs(x), np.abs(dy), p)
    tol = 2e-4 if dtype == np.float32 else 1e-11  # two float computations, each within its contract
    for ours, theirs, scale in (
        (dx, tx.grad, sx),
        (dx, nn_dx, sx),
        (dw, tw.grad, sw),
        (dw, nn_dw, sw),
        (db, tb.grad, np.abs(dy).sum(axis=(0, 2, 3))),
    ):
        assert _scaled_error(ours.numpy(), theirs.numpy().astype(np.float64), scale) <= tol


@st.composite
def conv_layers(draw):
    g = draw(st.integers(1, 3))
    ci, co = g * draw(st.integers(1, 4)), g * draw(st.integers(1, 4))
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    same = draw(st.booleans()) and s == (1, 1)
    pad = "same" if same else (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h, w = draw(st.integers(1, 14)), draw(st.integers(1, 14))
    n = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(DTYPES))
    return n, ci, h, w, co, k, s, pad, d, g, dtype


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(conv_layers(), st.integers(0, 2**16))
def test_fuzz_against_torch_autograd(layer, seed):
    n, ci, h, wd, co, k, s, pad, d, g, dtype = layer
    eh, ew = d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1
    ph, pw = (0, 0) if pad == "same" else pad
    if pad != "same" and (eh > h + 2 * ph or ew > wd + 2 * pw):
        with pytest.raises(ValueError, match="larger than the padded"):
            grad.conv2d_weight(
                np.zeros((n, ci, h, wd), dtype), (co, ci // g) + k, np.zeros((n, co, 1, 1), dtype), s, pad, d, g
            )
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, ci, h, wd)).astype(dtype)
    w = rng.standard_normal((co, ci // g) + k).astype(dtype)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    y = F.conv2d(tx, tw, None, s, pad, d, g)
    dy = rng.standard_normal(tuple(y.shape)).astype(dtype)
    if y.numel():
        y.backward(torch.from_numpy(dy))
    p = describe(x, w, None, stride=s, padding=pad, dilation=d, groups=g)
    dx = grad.conv2d_input(x.shape, w, dy, s, pad, d, g)
    dw = grad.conv2d_weight(x, w.shape, dy, s, pad, d, g)
    tdx = np.zeros_like(x) if tx.grad is None else tx.grad.numpy()
    tdw = np.zeros_like(w) if tw.grad is None else tw.grad.numpy()
    tol = 2e-4 if dtype == np.float32 else 1e-11
    assert _scaled_error(dx, tdx.astype(np.float64), reference.conv2d_input_grad(np.abs(dy), np.abs(w), p)) <= tol
    assert _scaled_error(dw, tdw.astype(np.float64), reference.conv2d_weight_grad(np.abs(x), np.abs(dy), p)) <= tol
    e, t = input_grad_error(dx, dy, w, p)
    assert e <= t


# --- convolution: the compiled kernel's paths and determinism -------------------------------------------
WG_PATHS = {  # module settings that force each weight-gradient path
    "direct": dict(WG_BCAST_MAX_P=0),
    "direct_small_chunks": dict(WG_BCAST_MAX_P=0, WG_CHUNK=64, WG_SUPER_BYTES=1),
    "bcast": dict(WG_BCAST_MAX_P=10**9),
    "bcast_rounds": dict(WG_BCAST_MAX_P=10**9, WG_CHUNK=64),
}
PATH_CASES = [c for c in CONV_CASES if c.n > 0][::3]


@pytest.mark.parametrize("nonfinite", [False, True], ids=["finite", "inf_nan"])
@pytest.mark.parametrize("path", list(WG_PATHS), ids=list(WG_PATHS))
def test_weight_grad_paths(path, nonfinite, monkeypatch):
    """Each path against the reference, NaN/Inf where the definition puts them (an input holding
    them takes the unfold path unless the map is small), and bit-identical for 1, 2 and 3 threads."""
    for k, v in WG_PATHS[path].items():
        monkeypatch.setattr(conv_grad, k, v)
    for case in PATH_CASES:
        for dtype in DTYPES:
            x, w, b = case.arrays(dtype)
            p = describe(x, w, b, **case.kwargs()).with_pass("weight_grad")
            if nonfinite:
                x = x.copy()
                x.flat[x.size // 2] = np.inf
                x.flat[0] = np.nan
            dy = _dy(p, dtype)
            runs = []
            for nt in (1, 2, 3):
                ws = np.empty(conv_grad.workspace_bytes(p, nt), np.uint8)
                dw = np.full(p.weight_shape, np.nan, dtype)
                db = np.full(p.c_out, np.nan, dtype)
                conv_grad.run(x, None, p, dw, ws, nt, grad_output=dy, grad_bias=db if b is not None else None)
                runs.append((dw, db))
            for dw, db in runs[1:]:
                np.testing.assert_array_equal(dw, runs[0][0], err_msg=case.name)
                np.testing.assert_array_equal(db, runs[0][1], err_msg=case.name)
            dw = runs[0][0]
            with np.errstate(invalid="ignore"):
                ref = reference.conv2d_weight_grad(x, dy, p)
                scale = reference.conv2d_weight_grad(np.abs(x), np.abs(dy), p)
            fin = np.isfinite(ref)
            np.testing.assert_array_equal(dw[~fin], ref[~fin], err_msg=case.name)
            assert _scaled_error(dw[fin], ref[fin], scale[fin]) <= TOL_W[p.dtype], case.name


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c.n > 0], ids=lambda c: c.name)
def test_gradients_bit_identical_for_any_thread_count(case, nthreads):
    """The public functions (every route: conv_grad kernel, forward kernels, pools) give the same
    bits on 1, 2 and 3 threads."""
    x, w, b = case.arrays(np.float32)
    p = describe(x, w, b, **case.kwargs())
    dy = _dy(p, np.float32)
    results = []
    for nt in (1, 2, 3):
        fastconv.set_num_threads(nt)
        results.append(
            (
                grad.conv2d_input(x.shape, w, dy, **case.kwargs()),
                grad.conv2d_weight(x, w.shape, dy, **case.kwargs()),
                grad.conv2d_bias(dy),
            )
        )
    for r in results[1:]:
        for a, b_ in zip(r, results[0]):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("path", ["col2im", "direct", "rows"])
def test_input_grad_kernel_matches_reference_on_every_case(path, monkeypatch):
    """The compiled input-gradient kernel, each of its paths (GEMM + col2im; phase planes; pixel
    rows), on every table case, bit-identical for 1, 2 and 3 threads."""
    monkeypatch.setattr(conv_grad, "IG_ROWS_MAX_P", 10**9 if path == "rows" else 0)
    monkeypatch.setattr(conv_grad, "IG_DIRECT", path == "direct")
    for case in CONV_CASES:
        for dtype in DTYPES:
            x, w, b = case.arrays(dtype)
            p = describe(x, w, b, **case.kwargs()).with_pass("input_grad")
            dy = _dy(p, dtype)
            packed = conv_grad.prepare(w, None, p)
            runs = []
            for nt in (1, 2, 3):
                dx = np.full(p.input_shape, np.nan, dtype)
                conv_grad.run(dy, packed, p, dx, np.empty(conv_grad.workspace_bytes(p, nt), np.uint8), nt)
                runs.append(dx)
            for dx in runs[1:]:
                np.testing.assert_array_equal(dx, runs[0], err_msg=case.name)
            e = _scaled_error(
                runs[0], reference.conv2d_input_grad(dy, w, p), reference.conv2d_input_grad(np.abs(dy), np.abs(w), p)
            )
            assert e <= TOL_X_KERNEL[p.dtype], (case.name, e)


def test_contract():
    p = ConvParams.from_layer(1, 4, 8, 6, 3, padding=1)
    assert "pass 'forward'" in conv_grad.supports(p)
    assert conv_grad.supports(p.with_pass("input_grad")) is None
    assert conv_grad.supports(p.with_pass("weight_grad")) is None
    assert conv_grad.supports(p.with_pass("weight_grad"), pass_="input_grad") is not None
    assert conv_grad.supports(p.with_pass("input_grad"), pass_="input_grad") is None
    pw = p.with_pass("weight_grad")
    x = np.zeros(p.input_shape, np.float32)
    dy = np.zeros(p.out_shape, np.float32)
    dw = np.empty(p.weight_shape, np.float32)
    assert conv_grad.workspace_bytes(pw, 2) > 0
    with pytest.raises(ValueError, match="workspace"):
        conv_grad.run(x, None, pw, dw, np.empty(10, np.uint8), 2, grad_output=dy, grad_bias=np.empty(6, np.float32))
    with pytest.raises(ValueError, match="grad_bias"):
        conv_grad.run(x, None, pw, dw, np.empty(conv_grad.workspace_bytes(pw, 1), np.uint8), 1, grad_output=dy)
    pp = PoolParams("max", 1, 2, 5, 5, kernel=(2, 2), stride=(2, 2))
    assert "pass 'forward'" in pool_grad.supports(pp)
    assert pool_grad.supports(PoolParams("avg", 1, 2, 5, 5, kernel=(2, 2), stride=(2, 2), pass_="input_grad")) is None
    assert pool_grad.workspace_bytes(pp, 2) == 0


# --- convolution: arguments ----------------------------------------------------------------------------
def test_validation_errors():
    x = np.zeros((2, 4, 8, 8), np.float32)
    w = np.zeros((6, 4, 3, 3), np.float32)
    dy = np.zeros((2, 6, 6, 6), np.float32)
    with pytest.raises(ValueError, match="grad_output must have the forward output's shape"):
        grad.conv2d_input(x.shape, w, np.zeros((2, 6, 7, 6), np.float32))
    with pytest.raises(ValueError, match="grad_output must have the forward output's shape"):
        grad.conv2d_weight(x, w.shape, np.zeros((2, 6, 8, 8), np.float32))
    with pytest.raises(TypeError, match="grad_output dtype"):
        grad.conv2d_input(x.shape, w, dy.astype(np.float64))
    with pytest.raises(TypeError, match="grad_output dtype"):
        grad.conv2d_weight(x, w.shape, dy.astype(np.float64))
    with pytest.raises(TypeError, match="grad_output must have dtype"):
        grad.conv2d_bias(dy.astype(np.int32))
    with pytest.raises(ValueError, match="input_size must have 4 entries"):
        grad.conv2d_input((4, 8, 8), w, dy)
    with pytest.raises(TypeError, match="input_size"):
        grad.conv2d_input("2488", w, dy)
    with pytest.raises(TypeError, match="input_size must hold ints"):
        grad.conv2d_input((2, 4, 8.0, 8), w, dy)
    with pytest.raises(ValueError, match="weight_size must have 4 entries"):
        grad.conv2d_weight(x, (6, 4, 3), dy)
    with pytest.raises(ValueError, match="weight_size"):
        grad.conv2d_weight(x, (6, 3, 3, 3), dy)
    with pytest.raises(ValueError, match="groups"):
        grad.conv2d_weight(x, (6, 4, 3, 3), dy, groups=0)
    with pytest.raises(ValueError, match="stride"):
        grad.conv2d_input(x.shape, w, dy, stride=0)
    with pytest.raises(ValueError, match="padding='same'"):
        grad.conv2d_input(x.shape, w, dy, stride=2, padding="same")
    with pytest.raises(ValueError, match="weight must be 4-D"):
        grad.conv2d_input(x.shape, w[0], dy)
    with pytest.raises(ValueError, match="grad_output must be 4-D"):
        grad.conv2d_weight(x, w.shape, dy[0])
    with pytest.raises(ValueError, match="grad_output must be 3-D"):
        grad.conv2d_bias(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="larger than the padded"):
        grad.conv2d_weight(np.zeros((1, 4, 2, 2), np.float32), w.shape, np.zeros((1, 6, 1, 1), np.float32))


def test_inputs_never_modified_and_read_only_ok():
    case = CONV_CASES[2]
    x, w, b = case.arrays(np.float32)
    p = describe(x, w, b, **case.kwargs())
    dy = _dy(p, np.float32)
    arrs = [x, w, dy]
    copies = [a.copy() for a in arrs]
    for a in arrs:
        a.flags.writeable = False
    grad.conv2d_input(x.shape, w, dy, **case.kwargs())
    grad.conv2d_weight(x, w.shape, dy, **case.kwargs())
    grad.conv2d_bias(dy)
    # non-contiguous views are accepted (copied)
    grad.conv2d_weight(np.asfortranarray(x), w.shape, dy[:, :, :, :], **case.kwargs())
    for a, c in zip(arrs, copies):
        np.testing.assert_array_equal(a, c)


def test_batch_zero_and_types():
    x = np.zeros((0, 3, 5, 5), np.float64)
    w = np.ones((4, 3, 3, 3), np.float64)
    dy = np.zeros((0, 4, 3, 3), np.float64)
    assert grad.conv2d_input(x.shape, w, dy).shape == (0, 3, 5, 5)
    dw = grad.conv2d_weight(x, w.shape, dy)
    assert dw.shape == w.shape and not dw.any()
    db = grad.conv2d_bias(dy)
    assert db.shape == (4,) and not db.any()
    assert isinstance(grad.conv2d_input(x.shape, w, dy), np.ndarray)
    assert isinstance(grad.conv2d_input(torch.Size(x.shape), torch.from_numpy(w), torch.from_numpy(dy)), torch.Tensor)


# --- pools -------------------------------------------------------------------------------------------------
def _torch_pool_backward(fn, x: np.ndarray, dy: np.ndarray, **kw):
    tx = torch.tensor(x, requires_grad=True)
    y = fn(tx, **kw)
    y.backward(torch.from_numpy(dy))
    assert tx.grad is not None
    return tx.grad.numpy()


def _pool_params(kind, x, kw) -> PoolParams:
    from fastconv import validate

    if kind == "max":
        p = validate.max_pool2d_args(
            x,
            kw["kernel_size"],
            kw.get("stride"),
            kw.get("padding", 0),
            kw.get("dilation", 1),
            kw.get("ceil_mode", False),
        )[1]
    elif kind == "avg":
        p = validate.avg_pool2d_args(
            x,
            kw["kernel_size"],
            kw.get("stride"),
            kw.get("padding", 0),
            kw.get("ceil_mode", False),
            kw.get("count_include_pad", True),
            kw.get("divisor_override"),
        )[1]
    else:
        p = validate.adaptive_avg_pool2d_args(x, kw["output_size"])[1]
    return p


def _pool_x(shape, dtype, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many tied maxima
        return rng.integers(0, 3, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=[c.name for c in MAX_POOL_CASES])
def test_max_pool_grad(case, dtype, ties):
    x = _pool_x(case.shape, dtype, ties=ties)
    p = _pool_params("max", x, case.kwargs)
    y, idx = fastconv.max_pool2d(x, **case.kwargs, return_indices=True)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    want = _torch_pool_backward(F.max_pool2d, x, dy, **case.kwargs)
    kw = case.kwargs
    for indices in (idx, None, torch.from_numpy(idx)):
        dx = grad.max_pool2d_input(x, dy, indices, **kw)
        np.testing.assert_array_equal(dx, want)  # torch's order and choice of argmax, bit for bit
    if x.size:
        x4, dy4, idx4 = (x, dy, idx) if x.ndim == 4 else (x[None], dy[None], idx[None])
        ref = reference.max_pool2d_input_grad(dy4, idx4, p)
        scale = reference.max_pool2d_input_grad(np.abs(dy4), idx4, p)
        assert _scaled_error(dx.reshape(ref.shape), ref, scale) <= TOL_POOL[p.dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_max_pool_grad_nan_and_inf(dtype):
    """NaN wins the argmax as in torch (its gradient goes to the NaN pixel); -inf windows pick their
    first real pixel."""
    x = _pool_x((2, 3, 11, 10), dtype, seed=4)
    x[0, 0, 2, 3] = np.nan
    x[0, 1, 5:8, 5:8] = np.nan
    x[1, 2, :4, :4] = -np.inf
    x[1, 0, 6, 6] = np.inf
    for kw in (
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=3, stride=1, ceil_mode=True),
        dict(kernel_size=2, dilation=2, stride=1),
    ):
        y = fastconv.max_pool2d(x, **kw)
        dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
        np.testing.assert_array_equal(
            grad.max_pool2d_input(x, dy, None, **kw), _torch_pool_backward(F.max_pool2d, x, dy, **kw)
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "case",
    AVG_POOL_CASES
    + [
        testing.PoolCase(
            "negative_divisor", (1, 2, 7, 8), dict(kernel_size=3, stride=2, padding=1, divisor_override=-2)
        ),
        testing.PoolCase(
            "ceil_overhang_include", (2, 2, 8, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        ),
        testing.PoolCase(
            "ceil_overhang_override",
            (1, 2, 9, 6),
            dict(kernel_size=4, stride=3, padding=2, ceil_mode=True, divisor_override=5),
        ),
    ],
    ids=lambda c: c.name,
)
def test_avg_pool_grad(case, dtype):
    x = _pool_x(case.shape, dtype)
    p = _pool_params("avg", x, case.kwargs)
    dy = np.random.default_rng(1).standard_normal(p.out_shape[1:] if x.ndim == 3 else p.out_shape).astype(dtype)
    dx = grad.avg_pool2d_input(x.shape, dy, **case.kwargs)
    np.testing.assert_array_equal(dx, _torch_pool_backward(F.avg_pool2d, x, dy, **case.kwargs))
    if x.size:
        dy4 = dy if dy.ndim == 4 else dy[None]
        ref = reference.avg_pool2d_input_grad(dy4, p)
        scale = reference.avg_pool2d_input_grad(np.abs(dy4), p)
        assert _scaled_error(dx.reshape(ref.shape), ref, np.abs(scale)) <= TOL_POOL[p.dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[c.name for c in ADAPTIVE_CASES])
def test_adaptive_avg_pool_grad(case, dtype):
    x = _pool_x(case.shape, dtype)
    p = _pool_params("adaptive", x, case.kwargs)
    dy = np.random.default_rng(1).standard_normal(p.out_shape[1:] if x.ndim == 3 else p.out_shape).astype(dtype)
    dx = grad.adaptive_avg_pool2d_input(x.shape, dy)
    np.testing.assert_array_equal(dx, _torch_pool_backward(F.adaptive_avg_pool2d, x, dy, **case.kwargs))
    if x.size:
        dy4 = dy if dy.ndim == 4 else dy[None]
        ref = reference.adaptive_avg_pool2d_input_grad(dy4, p)
        scale = reference.adaptive_avg_pool2d_input_grad(np.abs(dy4), p)
        assert _scaled_error(dx.reshape(ref.shape), ref, scale) <= TOL_POOL[p.dtype]


def test_pool_grads_bit_identical_for_any_thread_count(nthreads):
    x = _pool_x((3, 40, 23, 21), np.float32, ties=True)
    out = []
    for nt in (1, 2, 3):
        fastconv.set_num_threads(nt)
        dy = np.random.default_rng(1).standard_normal(fastconv.max_pool2d(x, 3, 1).shape).astype(np.float32)
        dya = np.random.default_rng(1).standard_normal(fastconv.avg_pool2d(x, 3, 2, 1).shape).astype(np.float32)
        out.append(
            (
                grad.max_pool2d_input(x, dy, None, 3, 1),
                grad.avg_pool2d_input(x.shape, dya, 3, 2, 1),
                grad.adaptive_avg_pool2d_input(x.shape, dya),
            )
        )
    for r in out[1:]:
        for a, b in zip(r, out[0]):
            np.testing.assert_array_equal(a, b)


def test_pool_validation_errors():
    x = np.zeros((1, 2, 6, 6), np.float32)
    dy = np.zeros((1, 2, 3, 3), np.float32)
    idx = np.zeros((1, 2, 3, 3), np.int64)
    with pytest.raises(ValueError, match="grad_output must have the forward output's shape"):
        grad.max_pool2d_input(x, dy[:, :, :2], idx, 2)
    with pytest.raises(ValueError, match="indices must have the forward output's shape"):
        grad.max_pool2d_input(x, dy, idx[:, :1], 2)
    with pytest.raises(ValueError, match="indices must be flat positions"):
        grad.max_pool2d_input(x, dy, idx + 36, 2)
    with pytest.raises(ValueError, match="indices must be flat positions"):
        grad.max_pool2d_input(x, dy, idx - 1, 2)
    with pytest.raises(TypeError, match="indices must be an integer array"):
        grad.max_pool2d_input(x, dy, idx.astype(np.float32), 2)
    with pytest.raises(TypeError, match="grad_output dtype"):
        grad.max_pool2d_input(x, dy.astype(np.float64), idx, 2)
    with pytest.raises(ValueError, match="padding must be at most half"):
        grad.avg_pool2d_input(x.shape, dy, 2, padding=2)
    with pytest.raises(ValueError, match="divisor_override"):
        grad.avg_pool2d_input(x.shape, dy, 2, divisor_override=0)
    with pytest.raises(TypeError, match="count_include_pad"):
        grad.avg_pool2d_input(x.shape, dy, 2, count_include_pad=1)
    with pytest.raises(ValueError, match="input_size must have 4 entries"):
        grad.avg_pool2d_input((2, 6, 6), dy, 2)
    with pytest.raises(ValueError, match="channels"):
        grad.adaptive_avg_pool2d_input((1, 3, 6, 6), dy)
    with pytest.raises(ValueError, match="non-zero channels"):
        grad.adaptive_avg_pool2d_input((1, 0, 6, 6), dy[:, :0])


def test_pool_grads_types_and_immutability():
    x = _pool_x((2, 3, 8, 9), np.float32)
    x.flags.writeable = False
    tx = torch.from_numpy(x.copy())
    y, idx = fastconv.max_pool2d(tx, 2, return_indices=True)
    dy = torch.randn(y.shape)
    assert isinstance(grad.max_pool2d_input(tx, dy, idx, 2), torch.Tensor)
    assert isinstance(grad.avg_pool2d_input(tx.shape, dy, 2), torch.Tensor)
    assert isinstance(grad.adaptive_avg_pool2d_input(x.shape, dy.numpy()), np.ndarray)
    dyn = dy.numpy().copy()
    grad.max_pool2d_input(x, dyn, None, 2)
    np.testing.assert_array_equal(dyn, dy.numpy())


@st.composite
def pool_configs(draw):
    kind = draw(st.sampled_from(["max", "avg", "adaptive"]))
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    if kind == "adaptive":
        return kind, (n, c, h, w), dict(output_size=(draw(st.integers(1, 8)), draw(st.integers(1, 8))))
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    kw = dict(
        kernel_size=k,
        stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        padding=(draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))),
        ceil_mode=draw(st.booleans()),
    )
    if kind == "max":
        kw["dilation"] = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    else:
        kw["count_include_pad"] = draw(st.booleans())
        kw["divisor_override"] = draw(st.sampled_from([None, None, 1, 3, -2]))
    return kind, (n, c, h, w), kw


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(pool_configs(), st.sampled_from(DTYPES), st.booleans(), st.integers(0, 2**16))
def test_fuzz_pools_against_torch_autograd(config, dtype, ties, seed):
    """Random pools, every option: the input gradient equals torch's bit for bit (max: indices
    recomputed, ties and NaN included)."""
    kind, shape, kw = config
    x = _pool_x(shape, dtype, seed=seed, ties=ties)
    if ties and x.size:
        x.flat[seed % x.size] = np.nan
    try:
        p = _pool_params(kind, x, kw)
    except ValueError:
        return  # an invalid window (as torch, which raises too)
    fn = {"max": F.max_pool2d, "avg": F.avg_pool2d, "adaptive": F.adaptive_avg_pool2d}[kind]
    dy = np.random.default_rng(seed + 1).standard_normal(p.out_shape).astype(dtype)
    want = _torch_pool_backward(fn, x, dy, **kw)
    if kind == "max":
        got = grad.max_pool2d_input(x, dy, None, **kw)
    elif kind == "avg":
        got = grad.avg_pool2d_input(x.shape, dy, **kw)
    else:
        got = grad.adaptive_avg_pool2d_input(x.shape, dy)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("rows_max_p", [0, 10**9], ids=["large_map_paths", "rows_path"])
def test_input_grad_nonfinite_weights(rows_max_p, monkeypatch):
    """Weights holding Inf/NaN: NaN and Inf land where the definition puts them (the phase-plane
    path would spread them through its junk columns, so such weights take GEMM + col2im)."""
    monkeypatch.setattr(conv_grad, "IG_ROWS_MAX_P", rows_max_p)
    for case in [c for c in CONV_CASES if c.n > 0][::4]:
        x, w, b = case.arrays(np.float64)
        p = describe(x, w, b, **case.kwargs()).with_pass("input_grad")
        w = w.copy()
        w.flat[0] = np.inf
        w.flat[w.size // 2] = np.nan
        dy = _dy(p, np.float64)
        dx = np.full(p.input_shape, 7.0)
        conv_grad.run(dy, conv_grad.prepare(w, None, p), p, dx, np.empty(conv_grad.workspace_bytes(p, 2), np.uint8), 2)
        with np.errstate(invalid="ignore"):
            ref = reference.conv2d_input_grad(dy, w, p)
        fin = np.isfinite(ref)
        np.testing.assert_array_equal(dx[~fin], ref[~fin], err_msg=case.name)
        np.testing.assert_allclose(dx[fin], ref[fin], rtol=1e-12, atol=1e-12, err_msg=case.name)
