"""The performance-regression gate: compare a fresh run with a saved baseline.

Absolute times differ between machines and between runs on a shared machine, so the gate
compares *normalized* times: each kernel's fastest sample (a sample is the fastest of 3
back-to-back calls) divided by the fastest sample of a fixed calibration workload timed in
the same interleaved rounds (``norm_min`` in the report).
The calibration is the register-only FMA loop of ``fastconv.kernels._peak``: no fastconv kernel
code, no memory traffic, so it moves only with the machine's speed (clock, turbo, VM steal).

Why these choices — measured with ``benchmarks/noise.py`` (8 fresh processes, smoke suite, this
2-core VM while five other jobs kept the load average at 5-11; numbers in benchmarks/README.md):
medians vary by a cv of 15-20% (false alarms on a quarter of the kernels at 20%); 2-thread
minima by 70%; the fastest of 40 short one-thread samples, divided by the FMA calibration, by
2.6-3.1% (an SGEMM calibration made it 7.7%: its own minimum moves with cache state).

Two references must agree. Besides ``norm_min``, conv layers are also normalized by the NumPy
im2col/tensordot conv of the *same layer* (``norm_peer``; fixed code with the same memory
footprint, so it shares cache and bandwidth contention that the register-only FMA loop does not
see). They fail in different ways under load (measured at load average ~10: false alarms 20%
and 12% per kernel pair), but a real slowdown moves the kernel against both, so a kernel is
flagged only when both ratios are over the threshold. Pools have the same pair: their NumPy
reference is a strided-slice pool of the same layer (measured: a machine-wide shift moved our
max pool 35 -> 26 us and the NumPy pool 58 -> 46 us together, the ratio stayed 0.57-0.62, while
the FMA-only gate read it as a +30% regression of an unchanged tree).

A kernel over the threshold is re-measured (``retries``): load can make a run slower, never
faster, so a regression must show in every attempt and the best attempt is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

GATE_KEY = "norm_min"
SECOND_KEY = "norm_peer"
# How the gate measures (``--save-baseline``; ``--compare`` reuses the baseline's settings):
# one thread, because a parallel region on a shared 2-core machine measures the scheduler (two
# threads must be on the cores at once); many short samples, because the fastest of 40 calls
# of ~1 ms each is one that no other process interrupted. No cool-down: one thread leaves no
# pool workers spinning.
GATE_PROFILE = {
    "threads": 1,
    "repeats": 40,
    "min_sample_s": 0.0005,
    "max_time_s": 1.0,
    "cooldown_s": 0.0,
    "peers": ["numpy"],
    "burst": 3,
}


class BaselineError(ValueError):
    """A baseline file that cannot be used for comparison."""


@dataclass(frozen=True)
class Change:
    layer: str
    name: str
    base: float
    now: float
    base2: float | None = None  # SECOND_KEY, where both runs have it
    now2: float | None = None

    @property
    def ratio(self) -> float:
        return self.now / self.base

    @property
    def ratio2(self) -> float | None:
        return None if self.base2 is None or self.now2 is None else self.now2 / self.base2

    def regressed(self, limit: float) -> bool:
        r2 = self.ratio2
        return self.ratio > 1 + limit and (r2 is None or r2 > 1 + limit)


def parse_percent(text: str) -> float:
    """``"20%"``, ``"20"`` or ``"0.2"`` → 0.2 (numbers above 1 are read as percents)."""
    t = text.strip().rstrip("%")
    try:
        v = float(t)
    except ValueError:
        raise ValueError(f"--max-regression must be a percentage like 20%, got {text!r}") from None
    v = v / 100 if (text.strip().endswith("%") or v > 1) else v
    if not 0 < v < 10:
        raise ValueError(f"--max-regression must be between 0% and 1000%, got {text!r}")
    return v


def gate_values(report: dict, key: str = GATE_KEY) -> dict[tuple[str, str], float]:
    """``{(layer, algorithm): normalized time}`` of our own kernels (peers are not gated)."""
    out = {}
    for L in report["layers"]:
        for e in L["entries"]:
            if e["role"] != "peer" and e.get(key) is not None:
                out[(L["name"], e["name"])] = e[key]
    return out


def check_baseline(base: dict) -> None:
    from .runner import SCHEMA

    if base.get("schema") != SCHEMA:
        raise BaselineError(
            f"baseline schema is {base.get('schema')!r}, expected {SCHEMA!r}: regenerate it with --save-baseline"
        )
    if not gate_values(base):
        raise BaselineError("baseline has no calibrated timings (it was run without calibration)")


def compare(base: dict, now: dict, max_regression: float) -> tuple[list[Change], list[Change], list[str]]:
    """(regressions, all compared changes, notes on entries present in only one of the two)."""
    b, n = gate_values(base), gate_values(now)
    b2, n2 = gate_values(base, SECOND_KEY), gate_values(now, SECOND_KEY)
    changes = [Change(k[0], k[1], b[k], n[k], b2.get(k), n2.get(k)) for k in b if k in n]
    regressions = [c for c in changes if c.regressed(max_regression)]
    notes = [f"{layer}/{name}: in the baseline, not measured now" for layer, name in b if (layer, name) not in n]
    notes += [f"{layer}/{name}: new, not in the baseline" for layer, name in n if (layer, name) not in b]
    return regressions, changes, notes


def merge_best(report: dict, retry: dict) -> None:
    """Keep, per (layer, algorithm) and per normalization, the smallest value of the attempts."""
    fresh = {(L["name"], e["name"]): e for L in retry["layers"] for e in L["entries"]}
    for L in report["layers"]:
        for e in L["entries"]:
            r = fresh.get((L["name"], e["name"]))
            for key in (GATE_KEY, SECOND_KEY):
                if r is not None and r.get(key) is not None and r[key] < e.get(key, float("inf")):
                    e[key] = r[key]
