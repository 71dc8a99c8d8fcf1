"""Interleaved timing: every candidate of a layer is measured in the same process, round by
round, so a slow spell of the machine (another process, a frequency drop) hits all of them
alike instead of whichever happened to run then.

* warm-up: each candidate runs once untimed (lazily imported modules, page faults, first
  touch), then once timed to size its sample: a sample repeats the call until it lasts
  ``min_sample_s``;
* rounds: in round ``r`` the candidates run in an order rotated by ``r`` (no fixed neighbour);
  a candidate stops after ``repeats`` samples, or earlier (never under 3) once it has used
  ``max_time_s``, so one slow algorithm does not dominate the suite's run time;
* cool-down: ``cooldown_s`` of sleep before each sample whose candidate belongs to another
  thread pool than the previous one (OpenBLAS workers spin ~0.1 s after a call and would
  steal the cores of the next one — DESIGN.md). Measured (2 threads, 1x1 1x256x56x56, after
  3 NumPy matmuls): pointwise took 8.1 ms a call 0.05 s later and 0.76 ms 0.2 s later, so the
  runner rests 0.25 s, then makes one untimed call: on this VM the first parallel call after
  a rest took 5-15 ms (sleeping vCPUs waking up), which swamped samples of a few calls;
* clock: wall time (`time.perf_counter`) by default; ``clock=time.thread_time`` counts the
  calling thread's CPU time instead, which other processes on a shared machine disturb much less
  — meaningful only when every candidate runs on the calling thread (one thread);
* the result keeps every sample: median, spread (interquartile range / median) and min.
  When a calibration candidate is given, each sample is also divided by the calibration
  sample of the same round (`Timing.ratios`), the number the regression gate compares.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Candidate:
    name: str
    fn: Callable[[], object]
    pool: str = "fastconv"  # thread pool family, for the cool-down rule
    inner: int = 1  # calls per sample (set by warm-up)
    est: float = 0.0  # seconds per call measured at warm-up
    samples: list[float] = field(default_factory=list)  # seconds per call
    rounds: list[int] = field(default_factory=list)  # round of each sample


@dataclass(frozen=True)
class Timing:
    samples: tuple[float, ...]
    ratios: tuple[float, ...] = ()

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def min(self) -> float:
        return float(np.min(self.samples))

    @property
    def spread(self) -> float:
        """Interquartile range over median: the run-to-run noise of this number."""
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float((q3 - q1) / self.median)

    @property
    def norm(self) -> float | None:
        """Median of the per-round ratios to the calibration (None without calibration)."""
        return float(np.median(self.ratios)) if self.ratios else None


def _sample(c: Candidate, burst: bool = False, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call: the mean over ``inner`` calls, or with ``burst`` the fastest of them
    (each timed alone: back-to-back calls find warm caches and seldom straddle a preemption)."""
    if burst:
        best = float("inf")
        for _ in range(c.inner):
            t0 = clock()
            c.fn()
            best = min(best, clock() - t0)
        return best
    t0 = clock()
    for _ in range(c.inner):
        c.fn()
    return (clock() - t0) / c.inner


def measure(
    cands: list[Candidate],
    repeats: int = 5,
    min_sample_s: float = 0.02,
    max_time_s: float = 3.0,
    cooldown_s: float = 0.1,
    calibration: Candidate | None = None,
    tick: Callable[[], None] | None = None,
    warmed: bool = False,
    burst: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time ``cands`` interleaved; returns ``{name: Timing}`` (the calibration under its name).
    ``warmed``: the caller already ran each candidate once (skip the untimed warm-up call).
    ``burst``: each sample is the fastest of at least ``burst`` back-to-back calls (the gate).
    ``clock``: what a sample reads (see the module doc)."""
    everyone = cands + ([calibration] if calibration else [])
    for c in everyone:
        if not warmed:
            c.fn()  # warm-up (lazy imports, first touch)
        # the fastest of 3: one slow call (a core still waking up) would size every sample too small
        c.est = max(min(_sample(c, clock=clock) for _ in range(3)), 1e-7)
        c.inner = max(1, burst, math.ceil(min_sample_s / c.est))
        c.samples, c.rounds = [], []
    # calls allowed per candidate: `repeats`, fewer (>= 3) when one call is slow
    quota = {c.name: max(min(3, repeats), min(repeats, int(max_time_s / (c.inner * c.est)))) for c in cands}
    prev_pool = None
    for r in range(repeats):
        todo = [c for c in cands if len(c.samples) < quota[c.name]]
        if not todo:
            break
        k = r % len(todo)
        order = ([calibration] if calibration else []) + todo[k:] + todo[:k]
        for c in order:
            if cooldown_s and prev_pool is not None and c.pool != prev_pool:
                time.sleep(cooldown_s)
                c.fn()  # untimed: the first call after a rest also pays for waking the cores
            c.samples.append(_sample(c, burst > 0, clock))
            c.rounds.append(r)
            prev_pool = c.pool
            if tick and c is not calibration:
                tick()
    out: dict[str, Timing] = {}
    for c in cands:
        ratios = tuple(s / calibration.samples[r] for s, r in zip(c.samples, c.rounds)) if calibration else ()
        out[c.name] = Timing(tuple(c.samples), ratios)
    if calibration:
        out[calibration.name] = Timing(tuple(calibration.samples))
    return out
