"""Every registered algorithm against the float64 reference, on every case of the table.

Parametrized from the registry, so a new algorithm is tested by adding its registry line.
A case an algorithm does not support must be refused with its reason (never silently run
or skipped). Outputs are pre-filled with NaN so an unwritten pixel fails the comparison.
"""

import numpy as np
import pytest

import fastconv
from fastconv import plan, registry, rules
from fastconv.testing import CONV_CASES, assert_algorithm_close, describe

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[c.name for c in CONV_CASES])
@pytest.mark.parametrize("alg", registry.REGISTRY, ids=[a.name for a in registry.REGISTRY])
def test_algorithm_matches_reference(alg, case, dtype):
    x, w, b = case.arrays(dtype)
    p = describe(x, w, b, **case.kwargs())
    reason = alg.supports(p)
    if reason is not None:
        with pytest.raises(ValueError, match="cannot run"):
            fastconv.conv2d(x, w, b, **case.kwargs(), algo=alg.name)
        return
    pl = plan.Plan(alg, w, b, p)
    out = np.full(p.out_shape, np.nan, dtype=dtype)
    pl.run(x, out)
    assert_algorithm_close(alg, out, x, w, b, p, f"{alg.name}/{case.name}")
    # the public op agrees with the plan, and returns the input's dtype
    y = fastconv.conv2d(x, w, b, **case.kwargs(), algo=alg.name)
    assert y.dtype == dtype and y.shape == p.out_shape
    np.testing.assert_array_equal(y, out)


@pytest.mark.parametrize("alg", registry.REGISTRY, ids=[a.name for a in registry.REGISTRY])
def test_every_algorithm_runs_some_case(alg):
    """Guards the table itself: no algorithm may be refused on every case."""
    runnable = [c for c in CONV_CASES if alg.supports(describe(*c.arrays(), **c.kwargs())) is None]
    assert len(runnable) >= 5, f"{alg.name} runs only {len(runnable)} cases of the table"


@pytest.mark.parametrize("alg", registry.REGISTRY, ids=[a.name for a in registry.REGISTRY])
def test_plan_reused_across_inputs(alg):
    """prepare once, run many: a second input through the same plan is still correct."""
    case = next(c for c in CONV_CASES if c.n > 0 and alg.supports(describe(*c.arrays(), **c.kwargs())) is None)
    x, w, b = case.arrays(np.float32)
    p = describe(x, w, b, **case.kwargs())
    pl = plan.Plan(alg, w, b, p)
    for seed in (1, 2):
        x2 = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
        assert_algorithm_close(alg, pl.run(x2), x2, w, b, p)


def test_auto_is_correct_on_every_case():
    for case in CONV_CASES:
        x, w, b = case.arrays(np.float32)
        p = describe(x, w, b, **case.kwargs())
        alg = rules.select(p, "auto")
        assert_algorithm_close(
            alg, fastconv.conv2d(x, w, b, **case.kwargs()), x, w, b, p, f"auto({alg.name})/{case.name}"
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "k,m,cin,cout,groups", [(3, 4, 5, 20, 1), (3, 2, 3, 70, 2), (5, 2, 4, 33, 1), (3, 4, 40, 64, 1)]
)
def test_winograd_weight_transform_is_g_w_gt(dtype, k, m, cin, cout, groups):
    """The packed U (compiled, kernels/wino_impl.h) is G w Gᵀ in float64 rounded once, at
    [group][point][panel][ci][lane], with zero lanes past each group's last output channel."""
    from fastconv.kernels import winograd
    from fastconv.params import ConvParams

    p = ConvParams.from_layer(
        1, cin * groups, 9, cout * groups, k, padding=1, groups=groups, dtype=np.dtype(dtype).name
    )
    w = np.random.default_rng(k + cin).standard_normal(p.weight_shape).astype(dtype)
    nr = winograd._mr_nr(p.itemsize)[1]
    G, ncp = winograd._G[m, k], -(-cout // nr)
    u = winograd._pack_u(w, p, m).reshape(groups, len(G), len(G), ncp, cin, nr)
    want = np.zeros_like(u, dtype=np.float64)
    for g in range(groups):
        full = G @ w[g * cout : (g + 1) * cout].astype(np.float64) @ G.T  # [co, ci, a, b]
        padded = np.zeros((ncp * nr,) + full.shape[1:])
        padded[:cout] = full
        want[g] = padded.reshape(ncp, nr, cin, len(G), len(G)).transpose(3, 4, 0, 2, 1)
    np.testing.assert_allclose(u, want, rtol=0, atol=np.finfo(dtype).eps * np.abs(want).max())
    if cout % nr:
        assert not u[:, :, :, -1, :, cout % nr :].any()  # exactly zero past the last channel
