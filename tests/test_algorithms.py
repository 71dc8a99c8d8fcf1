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


# The pointwise kernel runs a 1x1 layer on its packed micro-kernel GEMM or on BLAS, picking one
# per shape ("auto"); each path is checked on its own here, on every case it supports plus
# shapes that reach its edges: row and column remainders of the 8 x NR tile, a batch whose
# small maps share a column panel (also 1x1 maps), chunks split over threads, strides, groups.
POINTWISE_EXTRA = [
    # n, c_in, h, w, c_out, stride, groups
    (1, 2048, 7, 7, 52, 1, 1),
    (3, 40, 7, 7, 21, 1, 1),
    (5, 64, 1, 1, 10, 1, 1),
    (1, 33, 1, 1, 9, 1, 1),
    (2, 300, 30, 31, 17, 1, 1),
    (4, 24, 9, 11, 36, 2, 2),
    (1, 6, 5, 7, 70, 3, 1),
    (0, 8, 4, 4, 8, 1, 1),
    (8, 64, 7, 7, 128, 1, 1),
    (16, 48, 1, 1, 96, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("impl", ["auto", "packed", "transposed", "blas"])
def test_pointwise_paths_match_reference(impl, dtype):
    base = registry.get("pointwise")
    alg = registry.Kernel(f"pointwise_{impl}", base.module, base.summary, options={"impl": impl})
    cases = [
        (c.arrays(dtype), c.kwargs())
        for c in CONV_CASES
        if alg.supports(describe(*c.arrays(dtype), **c.kwargs())) is None
    ]
    assert len(cases) >= 3
    for n, cin, h, w, cout, s, g in POINTWISE_EXTRA:
        rng = np.random.default_rng(cin + cout)
        x = rng.standard_normal((n, cin, h, w)).astype(dtype)
        wt = rng.standard_normal((cout, cin // g, 1, 1)).astype(dtype)
        b = rng.standard_normal(cout).astype(dtype)
        cases.append(((x, wt, b), {"stride": s, "groups": g}))
        cases.append(((x, wt, None), {"stride": s, "groups": g}))
    for (x, w, b), kw in cases:
        p = describe(x, w, b, **kw)
        assert alg.supports(p) is None, p.describe()
        # weights prepared for this batch and for batch 1 (a layer's plan runs every batch size,
        # and the batch decides between the packed and the transposed GEMM on small maps)
        for prep in (p, p.with_batch(1)):
            packed = alg.prepare(w, b, prep)
            for nt in (1, 2, 3):  # (the Kernel API itself: the thread count splits the work)
                out = np.full(p.out_shape, np.nan, dtype=dtype)
                if p.n > 0:
                    alg.run(x, packed, p, out, plan.workspace(alg, p, nt), nt)
                assert_algorithm_close(alg, out, x, w, b, p, f"{alg.name}/{p.describe()}/{nt} threads")
