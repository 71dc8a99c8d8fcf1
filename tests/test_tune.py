"""fastconv.tune: the accuracy policies, the choice rule, the cache file and its key; one real
measurement of a tiny layer. Every test uses its own cache directory."""

from __future__ import annotations

import json

import pytest

import fastconv
from fastconv import registry, rules, tune
from fastconv.params import ConvParams

TINY = ConvParams.from_layer(1, 8, 12, 8, 3, padding=1)  # auto: direct (too few channels)
WINO = ConvParams.from_layer(1, 32, 14, 32, 3, padding=1)  # auto: winograd
LAYERS = [
    TINY,
    WINO,
    ConvParams.from_layer(2, 16, 12, 24, 5, padding=2),
    ConvParams.from_layer(1, 64, 14, 128, 1),
    ConvParams.from_layer(1, 3, 32, 16, 7, 2, 3),
    ConvParams.from_layer(1, 32, 14, 32, 3, 1, 1, groups=32),
    ConvParams.from_layer(1, 32, 14, 32, 3, 1, 1, dtype="float64"),
]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    tune._memory.clear()
    return tmp_path


def names(algos):
    return {a.name for a in algos}


def test_cache_path(tmp_path, monkeypatch):
    path = tune.cache_path()
    assert path.parent == tmp_path
    assert path.name.startswith("tune-") and path.name.endswith(f"-t{fastconv.get_num_threads()}.json")
    slug_hash = path.name[len("tune-") : -len(f"-t{fastconv.get_num_threads()}.json")]
    from fastconv.bench import machine

    assert slug_hash.endswith(machine.cpu()["flags_hash"]) and slug_hash == slug_hash.lower()
    assert tune.cache_path(3).name.endswith("-t3.json")
    monkeypatch.delenv("FASTCONV_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tune.cache_path().parent == tmp_path / "xdg" / "fastconv"


def test_contract_policy_excludes_winograd_where_auto_runs_direct():
    assert rules.select(TINY).name == "direct"
    assert names(tune.candidates(TINY)) == {"direct", "im2col"}
    assert {"winograd", "winograd_f2", "winograd_f4"} <= names(tune.candidates(TINY, "any"))
    assert rules.select(WINO).name == "winograd"
    assert {"direct", "im2col", "winograd", "winograd_f2", "winograd_f4"} == names(tune.candidates(WINO))
    assert names(tune.candidates(WINO, "strict")) == {"direct", "im2col"}


@pytest.mark.parametrize("p", LAYERS, ids=lambda p: p.describe())
def test_policies_are_defined_by_the_contract(p):
    """contract: no candidate's bound is looser than auto's (error tile and tolerance both at
    most auto's); strict: than direct's; any: everything that runs the layer."""
    auto = rules.select(p)
    runs = {a.name for a in registry.REGISTRY if a.supports(p) is None}
    for accuracy, ref in (("contract", auto), ("strict", registry.get("direct"))):
        got = tune.candidates(p, accuracy)
        assert names(got) == {
            a.name
            for a in registry.REGISTRY
            if a.name in runs and a.error_tile <= ref.error_tile and a.tolerance_for(p) <= ref.tolerance_for(p)
        }
    assert auto.name in names(tune.candidates(p))
    assert names(tune.candidates(p, "any")) == runs
    with pytest.raises(ValueError, match="accuracy must be one of"):
        tune.candidates(p, "loose")


def fake_measure(times):
    calls = []

    def measure(p, algos, repeats=7, min_sample_s=0.01, seed=0):
        calls.append([a.name for a in algos])
        return {a.name: times[a.name] for a in algos}

    return measure, calls


def test_choice_rule_and_cache(monkeypatch):
    times = {"direct": 1.0, "im2col": 0.99, "winograd": 2.0, "winograd_f2": 2.0, "winograd_f4": 0.5}
    measure, calls = fake_measure(times)
    monkeypatch.setattr(tune, "measure", measure)
    assert tune.lookup(TINY) is None
    assert tune.tune_layer(TINY) == "direct"  # im2col 1% faster: within MARGIN, auto's stays
    assert calls == [["direct", "im2col"]]
    assert tune.lookup(TINY) == "direct"
    assert tune.tune_layer(TINY) == "direct" and len(calls) == 1  # answered by the cache
    assert tune.lookup(TINY, "any") is None  # F(4x4) was never timed: not an answer for "any"
    assert tune.tune_layer(TINY, "any") == "winograd_f4"
    assert tune.lookup(TINY) == "direct"  # the looser winner is still not "contract"'s
    times["im2col"] = 0.9
    assert tune.tune_layer(TINY, force=True) == "im2col" and tune.lookup(TINY) == "im2col"
    data = json.loads(tune.cache_path().read_text())
    assert data["schema"] == tune.SCHEMA and data["threads"] == fastconv.get_num_threads()
    assert set(data["entries"][tune.layer_key(TINY)]["times"]) == {
        "direct",
        "im2col",
        "winograd",
        "winograd_f2",
        "winograd_f4",
    }


def test_key_distinguishes_batch_threads_and_dtype(monkeypatch):
    measure, _ = fake_measure({"direct": 1.0, "im2col": 0.5})
    monkeypatch.setattr(tune, "measure", measure)
    tune.tune_layer(TINY)
    assert tune.lookup(TINY) == "im2col"
    assert tune.lookup(TINY.with_batch(2)) is None
    from dataclasses import replace

    assert tune.lookup(replace(TINY, dtype="float64")) is None
    old = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(old + 1)
        assert tune.lookup(TINY) is None  # another thread count: another file
    finally:
        fastconv.set_num_threads(old)
    assert tune.lookup(TINY) == "im2col"


def test_damaged_or_foreign_cache_is_ignored(monkeypatch):
    measure, _ = fake_measure({"direct": 1.0, "im2col": 0.5})
    monkeypatch.setattr(tune, "measure", measure)
    path = tune.cache_path()
    path.write_text("{not json")
    assert tune.lookup(TINY) is None
    assert tune.tune_layer(TINY) == "im2col"
    data = json.loads(path.read_text())
    data["fastconv"] = "0.0.0-other"  # measured with other kernels
    path.write_text(json.dumps(data))
    assert tune.lookup(TINY) is None


def test_empty_batch_needs_no_timing(monkeypatch):
    monkeypatch.setattr(tune, "measure", lambda *a, **k: pytest.fail("timed an empty batch"))
    assert tune.tune_layer(TINY.with_batch(0)) == "direct"


def test_real_measurement_of_a_tiny_layer():
    choice = tune.tune_layer(TINY, repeats=2, min_sample_s=0.001)
    assert choice in {"direct", "im2col"}
    assert tune.lookup(TINY) == choice
    e = tune.entry(TINY)
    assert set(e["times"]) == {"direct", "im2col"} and all(t > 0 for t in e["times"].values())
