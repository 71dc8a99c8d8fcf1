"""1 -> 2 (or N) thread speed-up of ``auto`` on the large suite layers, measured in one process.

    python benchmarks/scaling.py [--threads 1 2] [--rounds 15] [--json PATH]

Per layer, the thread counts alternate round by round (order rotated each round) through the one
knob, ``fastconv.set_num_threads``; after each switch one untimed call lets the thread pool wake
up, then a sample is the mean of calls lasting >= 50 ms. In the same rounds, right after each
layer sample, the register-only FMA loop (``fastconv.kernels._peak``, no memory traffic) is timed
at the same thread count: the machine's own speed-up at that moment. Printed per layer: the
median time per thread count, the speed-up of the medians, the median of the per-round speed-ups
(``paired``: each from two samples taken back to back), and the FMA loop's speed-up of the
medians (``machine``). On a shared VM the machine column moves too (1.55-2.31x per round here,
session 7): a layer below 1.8x while the machine column is at 2.0x is the code's limit, one
that moves with the machine column is the machine's.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import numpy as np

import fastconv
from fastconv import plan as plans
from fastconv import rules
from fastconv.bench import machine, suites
from fastconv.kernels import _peak

FMA_ITERS = 100_000  # ~1 ms of the FMA loop per call on one thread

LARGE = [
    "vgg16.conv1_2",
    "vgg16.conv3_2",
    "vgg16.conv4_2",
    "alexnet.conv2",
    "seed003.1gflop",
    "nin.1x1",
    "alexnet.conv3",
    "resnet50.stem",
]


def sample(fn, min_s: float = 0.05, min_calls: int = 3) -> float:
    """Mean time of back-to-back calls lasting >= min_s (and >= min_calls), after one untimed call
    (it wakes the thread pool after a switch). Also used by gap_floor.py."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= min_s and n >= min_calls:
            return el / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--layers", nargs="+", default=LARGE, metavar="NAME", help="suite layer names")
    ap.add_argument("--json")
    args = ap.parse_args()
    layers = {L.name: L for L in suites.load("seed")}
    rng = np.random.default_rng(0)
    rows = []
    for name in args.layers:
        p = layers[name].params
        x = rng.uniform(-1, 1, p.input_shape).astype(np.float32)
        w = (rng.uniform(-1, 1, p.weight_shape) / np.sqrt(p.c_in_per_group * p.kh * p.kw)).astype(np.float32)
        plan = plans.Plan(rules.select(p, "auto"), w, None, p)
        out = np.empty(p.out_shape, np.float32)
        times: dict[int, list[float]] = {t: [] for t in args.threads}
        probe: dict[int, list[float]] = {t: [] for t in args.threads}
        for r in range(args.rounds):
            order = args.threads[r % len(args.threads) :] + args.threads[: r % len(args.threads)]
            for t in order:
                fastconv.set_num_threads(t)
                times[t].append(sample(functools.partial(plan.run, x, out)))
                probe[t].append(sample(functools.partial(_peak.run, FMA_ITERS, t)))
        t0 = args.threads[0]
        med = {t: statistics.median(v) for t, v in times.items()}
        row = {
            "layer": name,
            "algorithm": plan.algorithm.name,
            "median_s": med,
            "speedup": {t: med[t0] / med[t] for t in args.threads},
            "paired": {t: statistics.median(a / b for a, b in zip(times[t0], times[t])) for t in args.threads},
            # the FMA loop does t times the work at t threads: its speed-up is the time ratio x t / t0
            "machine": {t: statistics.median(probe[t0]) / statistics.median(probe[t]) * t / t0 for t in args.threads},
        }
        rows.append(row)
        print(
            f"{name:16s} {plan.algorithm.name:10s} {t0} thr {1e3 * med[t0]:8.2f} ms  "
            + "  ".join(
                f"{t} thr {1e3 * med[t]:8.2f} ms ({row['speedup'][t]:.2f}x, paired {row['paired'][t]:.2f}x, "
                f"machine {row['machine'][t]:.2f}x)"
                for t in args.threads[1:]
            ),
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "schema": "fastconv-scaling/2",
                    "threads": args.threads,
                    "rounds": args.rounds,
                    "machine": machine.info(),
                    "layers": rows,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
