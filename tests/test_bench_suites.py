"""Suites, the interleaved timer and the gate's comparison logic (fast, no kernels timed)."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import reference, validate
from fastconv.bench import compare, peers, suites, timer
from fastconv.params import ConvParams, PoolParams
from fastconv.testing import AVG_POOL_CASES, MAX_POOL_CASES

SEED_TABLE = {  # the conv table of the kernels issue: N, C_in, H, C_out, k, s, p
    "lenet.conv1": (64, 1, 28, 10, 5, 1, 0),
    "alexnet.conv1": (8, 1, 224, 96, 11, 4, 1),
    "vgg16.conv4_2": (1, 512, 28, 512, 3, 1, 1),
    "resnet50.stem": (1, 3, 224, 64, 7, 2, 3),
    "seed003.1gflop": (1, 100, 64, 100, 5, 1, 2),
    "nin.1x1": (8, 96, 54, 96, 1, 1, 0),
}


@pytest.mark.parametrize("name", suites.available())
def test_every_shipped_suite_loads(name):
    layers = suites.load(name)
    assert layers and len({L.name for L in layers}) == len(layers)


def test_seed_suite_is_the_whole_conv_table():
    layers = {L.name: L.params for L in suites.load("seed")}
    assert len(layers) == 18 and all(isinstance(p, ConvParams) for p in layers.values())
    for name, (n, c, h, co, k, s, p) in SEED_TABLE.items():
        assert layers[name] == ConvParams.from_layer(n, c, h, co, k, s, p)
    assert layers["mobilenet.dw3x3"].is_depthwise
    pools = [L for L in suites.load("all") if L.is_pool]
    assert len(pools) == 5 and {L.params.kind for L in pools} == {"max", "avg", "adaptive_avg"}


@pytest.mark.parametrize("name", suites.net_suites())
def test_every_network_suite_loads(name):
    layers = suites.load(name)
    assert layers and len({L.name for L in layers}) == len(layers)
    assert {L.params.n for L in layers} == set(suites.NET_BATCHES)
    assert all(L.name.endswith(f"@b{L.params.n}") and L.uses for L in layers)
    assert suites.is_net_suite(name)


def test_file_suites_keep_their_names():
    """resnet50 and vgg16 stay the hand-picked files (seed/all include them); their whole networks
    are nets:resnet50 and nets:vgg16; a network without a file answers to its bare name."""
    assert [L.name for L in suites.load("resnet50")][0] == "resnet50.stem" and len(suites.load("resnet50")) == 5
    assert not suites.is_net_suite("resnet50") and not suites.is_net_suite("smoke")
    whole = {L.params for L in suites.load("nets:resnet50", batches=(1,))}
    assert {L.params for L in suites.load("resnet50")} <= whole  # the hand-picked rows are in the net
    assert {L.params for L in suites.load("vgg16")} <= {L.params for L in suites.load("nets:vgg16")}
    assert suites.load("resnet18", batches=(1,)) == suites.load("nets:resnet18", batches=(1,))


def test_nets_suite_shares_layers_across_networks():
    from fastconv import zoo

    layers = suites.load("nets", batches=(1,))
    stem = next(L for L in layers if L.params == ConvParams.from_layer(1, 3, 224, 64, 7, 2, 3))
    assert stem.name == "resnet18.conv1@b1"
    assert {n for n, _, _ in stem.uses} >= {"resnet18", "resnet50"}
    assert len({L.params for L in layers}) == len(layers)
    for net in zoo.net_names():  # every use of every network is counted once
        assert sum(c for L in layers for n, _, c in L.uses if n == net) == sum(
            1 for L in zoo.net_layers(net) if L.kind != "fc"
        )
    two = suites.load("nets:resnet18,squeezenet", batches=(8, 1, 8))
    assert {L.params.n for L in two} == {1, 8} and {n for L in two for n, _, _ in L.uses} == {"resnet18", "squeezenet"}


def test_batches_rebatch_file_suites():
    layers = suites.load("lenet", batches=(1, 8))
    assert [L.name for L in layers] == ["lenet.conv1@b1", "lenet.conv2@b1", "lenet.conv1@b8", "lenet.conv2@b8"]
    assert [L.params.n for L in layers] == [1, 1, 8, 8]
    assert [L.params.n for L in suites.load("lenet", batches=(2,))] == [2, 2]
    assert [L.name for L in suites.load("lenet", batches=(2,))] == ["lenet.conv1", "lenet.conv2"]
    with pytest.raises(suites.SuiteError, match="positive"):
        suites.load("lenet", batches=(0,))
    with pytest.raises(suites.SuiteError, match="unknown network"):
        suites.load("nets:resnet18,nope")


def test_plain_table_matches_the_rich_one():
    from fastconv.bench import report

    rep = {
        "suite": "s",
        "threads": 1,
        "peaks": {"sgemm_gflops": 100.0, "fma_gflops": 200.0},
        "layers": [
            {
                "name": "l1",
                "params": {"dtype": "float32"},
                "entries": [
                    {
                        "name": "auto",
                        "role": "auto",
                        "chosen": "direct",
                        "median_s": 1e-3,
                        "spread": 0.01,
                        "gflops": 10.0,
                        "pct_sgemm": 10.0,
                        "pct_peak": 5.0,
                        "vs": {"torch": 1.5},
                        "max_rel_err": 1e-7,
                        "workspace_bytes": 2048,
                        "prepare_s": 1e-4,
                    },
                    {
                        "name": "torch",
                        "role": "peer",
                        "median_s": 1.5e-3,
                        "spread": 0.02,
                        "gflops": 6.7,
                        "pct_sgemm": 6.7,
                        "pct_peak": 3.3,
                        "prepare_s": 0.0,
                    },
                ],
            }
        ],
    }
    text = report.plain_table(rep)
    title, columns, rows, ends = report.cells(rep)
    assert text.splitlines()[0] == title and ends == [1]
    assert "auto → direct" in text and "1.50x" in text and "2.0 KiB" in text
    pytest.importorskip("rich")
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(report.table(rep))
    rich_text = console.export_text()
    for row in rows:
        for cell, _ in row:
            assert cell in rich_text


def _backward_report() -> dict:
    from fastconv.bench import backward

    def side(ms: float, rate: float, err: float) -> dict:
        return {"median_s": ms / 1e3, "spread": 0.02, "gflops": rate, "pct_peak": rate / 2, "max_rel_err": err}

    conv_rows = [
        {
            "kind": "input",
            "route": "forward",
            "algorithm": "winograd",
            "ours": {**side(1.0, 20, 1e-7), "effective": True},
            "torch": side(2.0, 10, 2e-7),
            "ratio": 2.0,
        },
        {"kind": "weight", "ours": side(1.0, 20, 1e-7), "torch": side(0.5, 40, 2e-7), "ratio": 0.5},
        {"kind": "backward", "ours": side(2.0, 20, 1e-7), "torch": side(4.0, 10, 2e-7), "ratio": 2.0},
    ]
    pool = {"median_s": 1e-4, "spread": 0.1, "gbps": 3.0, "max_rel_err": 0.0}
    pool_rows = [{"kind": "pool", "ours": pool, "torch": {**pool, "median_s": 4e-4, "gbps": 0.75}, "ratio": 4.0}]
    return {
        "schema": backward.SCHEMA,
        "suite": "s",
        "threads": 1,
        "peaks": {"sgemm_gflops": 100.0, "fma_gflops": 40.0},
        "layers": [
            {"name": "c1", "params": {"dtype": "float32"}, "rows": conv_rows, "skipped": []},
            {"name": "p1", "params": {"dtype": "float32"}, "rows": pool_rows, "skipped": []},
        ],
    }


def test_backward_table_and_summary():
    from fastconv.bench import backward, report

    rep = _backward_report()
    title, columns, rows, ends = report.backward_cells(rep)
    assert ends == [2, 3] and [c for c, _ in columns][:3] == ["layer", "gradient", "ms"]
    text = report.plain_table(rep)
    assert text.splitlines()[0] == title and "--pass backward" in title
    for needle in ("input → forward/winograd", "20.0*", "input+weight+bias", "pool input", "0.50x", "3.0 GB/s"):
        assert needle in text
    s = backward.summarize(rep["layers"])
    assert s["rows"] == 4 and s["below_1"] == 1 and s["geomean"] == pytest.approx((2 * 0.5 * 2 * 4) ** 0.25)
    assert s["weight"] == {"rows": 1, "geomean": 0.5, "min": 0.5, "below_1": 1}
    assert s["worst"] == {"layer": "c1", "kind": "weight", "ratio": 0.5}
    line = backward.summary_line(s)
    assert "input 2.00x (1)" in line and "pool input 4.00x (1)" in line and "1 of 4 rows below 1.0x" in line
    assert "worst c1 weight 0.50x" in line
    assert "no row" in backward.summary_line(backward.summarize([]))
    pytest.importorskip("rich")
    from rich.console import Console

    console = Console(width=220, record=True)
    console.print(report.table(rep))
    rich_text = console.export_text()
    for row in rows:
        for cell, _ in row:
            assert cell in rich_text


def test_backward_rows_are_checked_against_the_reference():
    """The error column compares with the float64 definitions: a wrong gradient shows."""
    from fastconv.bench import backward, runner

    layer = suites.parse_layer_arg("1,3,6,6,4,3,2,1")
    opts = runner.Options(repeats=1, min_sample_s=0, cooldown_s=0, peers=())
    rows = backward._conv_rows(layer.params, opts, None)
    for r in rows:
        assert backward._rel_err(r.ours(), r.refs()) < 1e-5
        wrong = tuple(2 * g for g in r.ours())
        assert backward._rel_err(wrong, r.refs()) > 0.5
    asym = ConvParams(1, 4, 9, 9, 4, 3, 3, (1, 1), (1, 0, 2, 1), (1, 1), 1, "float32")
    with pytest.raises(backward.Skip, match="asymmetric"):
        backward._conv_rows(asym, opts, None)


def test_layer_strings():
    assert suites.parse_layer_arg("2,3,10,12,4,3,2,1").params == ConvParams(2, 3, 10, 12, 4, 3, 3, (2, 2), (1,) * 4)
    assert suites.parse_layer_arg("1,8,9,8,3,1,1:g=8").params.groups == 8
    p = suites.parse_layer_arg("max:1,64,112,112,3,2,1").params
    assert isinstance(p, PoolParams) and p.out_shape == (1, 64, 56, 56)
    assert suites.parse_layer_arg("gap:8,2048,7,7").params.out_shape == (8, 2048, 1, 1)


def test_suite_file_errors_name_file_and_line(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("# ok\nfine conv 1,3,8,4,3,1,1\nbroken conv 1,3,8\n")
    with pytest.raises(suites.SuiteError, match=r"mine.txt:3: expected"):
        suites.load(str(f))
    f.write_text("a conv 1,3,8,4,3,1,1\ninclude mine\n")
    g = tmp_path / "loop.txt"
    g.write_text(f"include {g}\n")
    with pytest.raises(suites.SuiteError, match="includes itself"):
        suites.load(str(g))
    with pytest.raises(suites.SuiteError, match="kind must be"):
        suites.parse_line("x deconv 1,2,3,4,5,6,7", "here")


def test_timer_interleaves_and_rotates():
    log: list[str] = []
    cands = [timer.Candidate(n, (lambda n=n: log.append(n))) for n in "abc"]
    calib = timer.Candidate("cal", lambda: log.append("cal"), pool="other")
    res = timer.measure(cands, repeats=3, min_sample_s=0, cooldown_s=0, calibration=calib)
    timed = log[16:]  # after 4 warm-up calls per candidate (1 + 3 to size samples)
    rounds = [timed[i : i + 4] for i in range(0, 12, 4)]
    assert rounds == [["cal", "a", "b", "c"], ["cal", "b", "c", "a"], ["cal", "c", "a", "b"]]
    assert all(len(res[n].samples) == 3 and len(res[n].ratios) == 3 for n in "abc")


def test_timer_rests_then_wakes_up_when_the_pool_changes():
    log: list[str] = []
    cands = [timer.Candidate(n, (lambda n=n: log.append(n)), pool=n) for n in "ab"]
    timer.measure(cands, repeats=2, min_sample_s=0, cooldown_s=1e-4)
    # every switch of pool: a rest, one untimed call, then the timed one (1 call per sample here)
    assert log[8:] == ["a", "b", "b", "b", "a", "a"]  # rounds: a | rest b b ; b | rest a a


def test_timer_reads_the_given_clock():
    ticks = iter(range(1000))
    cands = [timer.Candidate("a", lambda: None)]
    res = timer.measure(cands, repeats=3, min_sample_s=0, cooldown_s=0, clock=lambda: float(next(ticks)))
    assert res["a"].samples == (1.0, 1.0, 1.0)  # one tick per call: the fake clock, not the wall


def test_timing_statistics():
    t = timer.Timing((1.0, 2.0, 3.0, 4.0, 100.0), (0.5, 1.0, 1.5, 2.0, 50.0))
    assert t.median == 3.0 and t.min == 1.0 and t.norm == 1.5
    assert t.spread == pytest.approx((4.0 - 2.0) / 3.0)


def _report(values: dict[tuple[str, str], float]) -> dict:
    layers: dict[str, list] = {}
    for (layer, name), v in values.items():
        layers.setdefault(layer, []).append({"name": name, "role": "algorithm", compare.GATE_KEY: v})
    return {"schema": "fastconv-bench/1", "layers": [{"name": k, "entries": e} for k, e in layers.items()]}


def test_compare_flags_only_what_regressed():
    base = _report({("l1", "direct"): 1.0, ("l1", "im2col"): 2.0, ("l2", "auto"): 1.0, ("l3", "old"): 1.0})
    now = _report({("l1", "direct"): 1.19, ("l1", "im2col"): 2.5, ("l2", "auto"): 0.5, ("l3", "new"): 1.0})
    regs, changes, notes = compare.compare(base, now, 0.2)
    assert [(c.layer, c.name) for c in regs] == [("l1", "im2col")]
    assert len(changes) == 3 and len(notes) == 2
    compare.merge_best(now, _report({("l1", "im2col"): 2.1}))
    assert compare.compare(base, now, 0.2)[0] == []


@pytest.mark.parametrize("text, value", [("20%", 0.2), ("20", 0.2), ("0.2", 0.2), ("5.5%", 0.055)])
def test_parse_percent(text, value):
    assert compare.parse_percent(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "-5%", "0", "2000%"])
def test_parse_percent_rejects(text):
    with pytest.raises(ValueError, match="max-regression"):
        compare.parse_percent(text)


POOL_DEFAULTS = {
    "max": dict(stride=None, padding=0, dilation=1, ceil_mode=False),
    "avg": dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None),
}


@pytest.mark.parametrize(
    "kind,case",
    [("max", c) for c in MAX_POOL_CASES] + [("avg", c) for c in AVG_POOL_CASES],
    ids=[f"max-{c.name}" for c in MAX_POOL_CASES] + [f"avg-{c.name}" for c in AVG_POOL_CASES],
)
def test_numpy_pool_baseline_follows_torch_rules(kind, case):
    """The NumPy pool is the gate's second reference for pools: it must compute the same pool."""
    x = np.random.default_rng(1).standard_normal(case.shape).astype(np.float32)
    args = validate.max_pool2d_args if kind == "max" else validate.avg_pool2d_args
    x4, p, _ = args(x, **{**POOL_DEFAULTS[kind], **case.kwargs})
    if x4.size:
        x4 = x4.copy()
        x4.flat[::7] = np.nan if kind == "max" else x4.flat[::7]  # NaN propagates like torch's
    y = peers.make("numpy", p, x4, None, None, 1)()
    ref = reference.max_pool2d(x4, p) if kind == "max" else reference.avg_pool2d(x4, p)
    assert y.shape == ref.shape and y.dtype == x4.dtype
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


def test_numpy_global_average_baseline():
    x = np.random.default_rng(2).standard_normal((2, 5, 7, 7)).astype(np.float32)
    p = PoolParams("adaptive_avg", 2, 5, 7, 7, output_size=(1, 1))
    np.testing.assert_allclose(
        peers.make("numpy", p, x, None, None, 1)(), x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-7
    )
    with pytest.raises(peers.Skip, match="more than 1x1"):
        peers.make("numpy", PoolParams("adaptive_avg", 2, 5, 7, 7, output_size=(2, 3)), x, None, None, 1)
