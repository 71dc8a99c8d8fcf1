"""Measure the run-to-run noise of the numbers the regression gate could compare.

    python benchmarks/noise.py --runs 6 --threads 1 2 [--suite smoke] [--profile gate|default]

Runs ``fastconv bench --suite S --no-peers`` in ``runs`` fresh processes per thread count (with
the gate's measuring profile, ``--save-baseline``: 40 short samples; or the default profile:
5 samples of >= 20 ms each) and,
for each candidate normalization, prints over all (layer, algorithm) pairs:

* cv: median over kernels of the coefficient of variation across runs;
* p95 |dev|: 95th percentile of |run / median-of-runs − 1|;
* false alarms @20%: how often one run, used as the baseline of another, would flag a kernel
  (all ordered pairs of runs, all kernels) — what the self-compare test must never see.

``median_s`` and ``min_s`` are raw seconds; ``norm`` is the median of per-round ratios to the
calibration timed in the same rounds; ``norm_min`` is min(kernel) / min(calibration);
``norm_peer`` is min(kernel) / min(NumPy conv of the same layer).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from itertools import permutations
from pathlib import Path

import numpy as np

KEYS = ("median_s", "min_s", "norm", "norm_min", "norm_peer")


def runs(suite: str, threads: int, n: int, profile: str, calib: str) -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(n):
            path = Path(d) / f"r{i}.json"
            peers = [] if profile == "gate" else ["--no-peers"]  # the gate profile brings its NumPy anchor
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fastconv.cli",
                    "bench",
                    "--suite",
                    suite,
                    *peers,
                    "--quiet",
                    "--no-check",
                    "--threads",
                    str(threads),
                    "--calibration",
                    calib,
                    "--save-baseline" if profile == "gate" else "--json",
                    str(path),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            out.append(json.loads(path.read_text()))
    return out


def both_alarms(reports: list[dict], limit: float = 0.2) -> float:
    """False-alarm rate of the gate's rule: flagged only if norm_min AND norm_peer (where the
    layer has one) are over the limit."""
    from fastconv.bench.compare import compare

    pairs = alarms = 0
    for a, b in permutations(range(len(reports)), 2):
        regs, changes, _ = compare(reports[a], reports[b], limit)
        pairs += len(changes)
        alarms += len(regs)
    return alarms / max(pairs, 1)


def stats(reports: list[dict], key: str, limit: float = 0.2) -> tuple[float, float, float]:
    table: dict[tuple[str, str], list[float]] = {}
    for r in reports:
        for L in r["layers"]:
            for e in L["entries"]:
                if e["role"] != "peer" and e.get(key) is not None:
                    table.setdefault((L["name"], e["name"]), []).append(e[key])
    cvs, devs, alarms, pairs = [], [], 0, 0
    for vals in table.values():
        v = np.array(vals)
        cvs.append(v.std() / v.mean())
        devs += list(np.abs(v / np.median(v) - 1))
        for a, b in permutations(range(len(v)), 2):
            pairs += 1
            alarms += v[b] / v[a] > 1 + limit
    return float(np.median(cvs)), float(np.percentile(devs, 95)), alarms / max(pairs, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--suite", default="smoke")
    ap.add_argument("--profile", choices=("gate", "default"), default="gate")
    ap.add_argument("--calibration", choices=("sgemm", "fma"), default="fma")
    a = ap.parse_args()
    for t in a.threads:
        reps = runs(a.suite, t, a.runs, a.profile, a.calibration)
        print(f"threads={t}, {a.runs} runs of suite {a.suite}, {a.profile} profile, {a.calibration} calibration")
        for k in KEYS:
            cv, p95, fa = stats(reps, k)
            print(f"  {k:9s} cv {100 * cv:5.1f}%   p95 |dev| {100 * p95:5.1f}%   false alarms @20% {100 * fa:5.1f}%")
        if a.profile == "gate":
            print(
                f"  gate rule (norm_min and norm_peer both over 20%): false alarms {100 * both_alarms(reps):.1f}% "
                f"of kernel comparisons, before retries"
            )


if __name__ == "__main__":
    main()
