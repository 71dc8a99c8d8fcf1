"""Suites, the interleaved timer and the gate's comparison logic (fast, no kernels timed)."""
from __future__ import annotations

import numpy as np
import pytest

from fastconv import reference, validate
from fastconv.bench import compare, peers, suites, timer
from fastconv.testing import AVG_POOL_CASES, MAX_POOL_CASES
from fastconv.params import ConvParams, PoolParams

SEED_TABLE = {  # the conv table of the kernels issue: N, C_in, H, C_out, k, s, p
    "lenet.conv1": (64, 1, 28, 10, 5, 1, 0), "alexnet.conv1": (8, 1, 224, 96, 11, 4, 1),
    "vgg16.conv4_2": (1, 512, 28, 512, 3, 1, 1), "resnet50.stem": (1, 3, 224, 64, 7, 2, 3),
    "seed003.1gflop": (1, 100, 64, 100, 5, 1, 2), "nin.1x1": (8, 96, 54, 96, 1, 1, 0),
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
    timed = log[16:]                    # after 4 warm-up calls per candidate (1 + 3 to size samples)
    rounds = [timed[i:i + 4] for i in range(0, 12, 4)]
    assert rounds == [["cal", "a", "b", "c"], ["cal", "b", "c", "a"], ["cal", "c", "a", "b"]]
    assert all(len(res[n].samples) == 3 and len(res[n].ratios) == 3 for n in "abc")


def test_timer_rests_then_wakes_up_when_the_pool_changes():
    log: list[str] = []
    cands = [timer.Candidate(n, (lambda n=n: log.append(n)), pool=n) for n in "ab"]
    timer.measure(cands, repeats=2, min_sample_s=0, cooldown_s=1e-4)
    # every switch of pool: a rest, one untimed call, then the timed one (1 call per sample here)
    assert log[8:] == ["a", "b", "b", "b", "a", "a"]      # rounds: a | rest b b ; b | rest a a


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


POOL_DEFAULTS = {"max": dict(stride=None, padding=0, dilation=1, ceil_mode=False),
                 "avg": dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None)}


@pytest.mark.parametrize("kind,case", [("max", c) for c in MAX_POOL_CASES] + [("avg", c) for c in AVG_POOL_CASES],
                         ids=[f"max-{c.name}" for c in MAX_POOL_CASES] + [f"avg-{c.name}" for c in AVG_POOL_CASES])
def test_numpy_pool_baseline_follows_torch_rules(kind, case):
    """The NumPy pool is the gate's second reference for pools: it must compute the same pool."""
    x = np.random.default_rng(1).standard_normal(case.shape).astype(np.float32)
    args = validate.max_pool2d_args if kind == "max" else validate.avg_pool2d_args
    x4, p, _ = args(x, **{**POOL_DEFAULTS[kind], **case.kwargs})
    if x4.size:
        x4 = x4.copy()
        x4.flat[::7] = np.nan if kind == "max" else x4.flat[::7]      # NaN propagates like torch's
    y = peers.make("numpy", p, x4, None, None, 1)()
    ref = reference.max_pool2d(x4, p) if kind == "max" else reference.avg_pool2d(x4, p)
    assert y.shape == ref.shape and y.dtype == x4.dtype
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


def test_numpy_global_average_baseline():
    x = np.random.default_rng(2).standard_normal((2, 5, 7, 7)).astype(np.float32)
    p = PoolParams("adaptive_avg", 2, 5, 7, 7, output_size=(1, 1))
    np.testing.assert_allclose(peers.make("numpy", p, x, None, None, 1)(), x.mean(axis=(2, 3), keepdims=True),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(peers.Skip, match="more than 1x1"):
        peers.make("numpy", PoolParams("adaptive_avg", 2, 5, 7, 7, output_size=(2, 3)), x, None, None, 1)
