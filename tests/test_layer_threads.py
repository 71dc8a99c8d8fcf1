"""Thread safety of the layer objects (fastconv.Conv2d and the pool layers).

8 Python threads call layers at once — one shared layer, and one layer per thread — and
get results bit-identical to serial calls; a shared layer builds each plan exactly once even
when every thread's first call races for it. (Needs the layers branch: fastconv.Conv2d.)
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastconv
from fastconv import plan, registry
from fastconv.testing import run_concurrently

N_THREADS = 8


@pytest.fixture
def plan_count(monkeypatch):
    """Counts plan.Plan constructions (= weight preparations)."""
    count = [0]
    lock = threading.Lock()

    class Counting(plan.Plan):
        def __init__(self, *a, **k):
            with lock:
                count[0] += 1
            super().__init__(*a, **k)

    monkeypatch.setattr(fastconv.layers, "Plan", Counting)  # the name the layers call
    return count


def _geometry(algo: str) -> tuple[int, int, int, int]:
    """(kernel, padding, output channels, groups) of a 16-channel layer ``algo`` runs: 3x3 pad 1
    to 24 channels, else 1x1 pad 0 (e.g. pointwise), else depthwise 3x3 pad 1."""
    from fastconv.params import ConvParams

    for k, pad, c_out, groups in ((3, 1, 24, 1), (1, 0, 24, 1), (3, 1, 16, 16)):
        p = ConvParams.from_layer(2, 16, 17, c_out, k, padding=pad, w=15, groups=groups)
        if algo == "auto" or registry.get(algo).supports(p) is None:
            return k, pad, c_out, groups
    raise AssertionError(f"{algo} runs neither a 3x3, a 1x1 nor a depthwise layer")


def _layer(algo="auto", seed=0):
    k, pad, c_out, groups = _geometry(algo)
    return fastconv.Conv2d(16, c_out, k, padding=pad, groups=groups, algo=algo, seed=seed)


def _inputs():
    rng = np.random.default_rng(1)
    return [rng.standard_normal((2, 16, 17, 15)).astype(np.float32) for _ in range(N_THREADS)]


@pytest.mark.parametrize("algo", ["auto"] + registry.names())
def test_shared_layer_matches_serial_and_plans_once(algo, plan_count):
    xs = _inputs()
    serial = [_layer(algo)(x) for x in xs]
    layer = _layer(algo)
    before = plan_count[0]
    results = [None] * N_THREADS

    def work(i):
        for _ in range(4):
            y = layer(xs[i])
            assert np.array_equal(y, serial[i]), f"thread {i} differs from serial"
        results[i] = y

    run_concurrently(work, N_THREADS)
    assert plan_count[0] - before == 1, f"{plan_count[0] - before} plans built for one shape under a race"
    assert all(r is not None for r in results)


def test_separate_layers_match_serial():
    xs = _inputs()
    serial = [_layer(seed=i)(xs[i]) for i in range(N_THREADS)]

    def work(i):
        layer = _layer(seed=i)
        for _ in range(4):
            assert np.array_equal(layer(xs[i]), serial[i]), f"thread {i} differs from serial"

    run_concurrently(work, N_THREADS)


def test_shared_layer_new_shapes_race(plan_count):
    """Threads with different input shapes on one layer: one plan per distinct shape."""
    layer = _layer()
    rng = np.random.default_rng(2)
    shapes = [(1, 16, 9 + i % 4, 11) for i in range(N_THREADS)]  # 4 distinct shapes
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    serial = [_layer()(x) for x in xs]
    before = plan_count[0]

    def work(i):
        assert np.array_equal(layer(xs[i]), serial[i])

    run_concurrently(work, N_THREADS)
    assert plan_count[0] - before == len(set(shapes))


def test_pool_layers_match_serial():
    xs = _inputs()
    layers = [
        fastconv.MaxPool2d(3, 2, 1),
        fastconv.AvgPool2d(3, 2, 1, ceil_mode=True),
        fastconv.AdaptiveAvgPool2d((5, 4)),
    ]
    serial = [[np.array(layer(x)) for layer in layers] for x in xs]

    def work(i):
        for _ in range(4):
            for layer, expected in zip(layers, serial[i]):
                assert np.array_equal(layer(xs[i]), expected)

    run_concurrently(work, N_THREADS)
