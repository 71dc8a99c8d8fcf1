"""pytest-benchmark over the same suites as ``fastconv bench`` (for ``--benchmark-compare``).

    pytest benchmarks/bench_suites.py                              # the smoke suite
    FASTCONV_BENCH_SUITES=default,pools pytest benchmarks/bench_suites.py --benchmark-autosave
    pytest benchmarks/bench_suites.py --benchmark-compare          # against the last saved run

One benchmark per (layer, algorithm): every registered algorithm that supports the layer, ``auto``,
and torch when installed; pools per pooling kernel. Only the run is timed (the plan is prepared in
setup); ``extra_info`` carries FLOPs (2·MACs of direct conv) or input bytes, so GFLOP/s can be
derived. ``fastconv bench`` is the tool for interleaved, peer-relative numbers; this file is for
people whose workflow is pytest-benchmark. Not part of the test suite (benchmarks/ is outside
``testpaths``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastconv import plan as plans
from fastconv import rules, threads
from fastconv.bench import runner, suites
from fastconv.params import PoolParams
from fastconv.registry import REGISTRY

SUITES = [s for s in os.environ.get("FASTCONV_BENCH_SUITES", "smoke").split(",") if s]
LAYERS = [L for s in SUITES for L in suites.load(s)]


def _cases():
    for L in LAYERS:
        if L.is_pool:
            yield pytest.param(L, L.params.kind, id=f"{L.name}-{L.params.kind}")
            continue
        for a in REGISTRY:
            if a.supports(L.params) is None:
                yield pytest.param(L, a.name, id=f"{L.name}-{a.name}")
        yield pytest.param(L, "auto", id=f"{L.name}-auto")
        yield pytest.param(L, "torch", id=f"{L.name}-torch")


@pytest.mark.parametrize("layer, algo", list(_cases()))
def test_layer(benchmark, layer, algo):
    p = layer.params
    x, w, b = runner._data(p, 0)
    benchmark.group = layer.name
    benchmark.extra_info.update(describe=p.describe(), algorithm=algo)
    if isinstance(p, PoolParams):
        benchmark.extra_info["input_bytes"] = p.input_bytes
        out = np.empty(p.out_shape, dtype=p.dtype)
        benchmark(plans.run_pool, x, p, out)
        return
    benchmark.extra_info["flops"] = p.flops
    if algo == "torch":
        from fastconv.bench import peers

        try:
            peers.load("torch")
            fn = peers.make("torch", p, x, w, b, threads.get_num_threads())
        except peers.Skip as e:
            pytest.skip(str(e))
        benchmark(fn)
        return
    alg = rules.select(p, algo)
    benchmark.extra_info["chosen"] = alg.name
    plan, out = plans.Plan(alg, w, b, p), np.empty(p.out_shape, dtype=p.dtype)
    plan.run(x, out)  # first-touch of the packed weights and output outside the timing
    benchmark(plan.run, x, out)
