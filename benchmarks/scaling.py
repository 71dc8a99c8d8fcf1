"""1 -> 2 (or N) thread speed-up of ``auto`` on the large suite layers, measured in one process.

    python benchmarks/scaling.py [--threads 1 2] [--rounds 9] [--json PATH]

Per layer, the thread counts alternate round by round (order rotated each round) through the one
knob, ``fastconv.set_num_threads``; after each switch one untimed call lets the thread pool wake
up, then a sample is the mean of calls lasting >= 50 ms. Printed: the median time per thread
count and the speed-up of the median (time at the first count / time at each other count).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import fastconv
from fastconv import dispatch
from fastconv.bench import machine, suites

LARGE = ["vgg16.conv1_2", "vgg16.conv3_2", "vgg16.conv4_2", "alexnet.conv2", "seed003.1gflop", "nin.1x1",
         "alexnet.conv3", "resnet50.stem"]


def sample(fn, min_s: float = 0.05) -> float:
    fn()                                           # untimed: wake the pool after a switch
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= min_s and n >= 3:
            return el / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json")
    args = ap.parse_args()
    layers = {L.name: L for L in suites.load("seed")}
    rng = np.random.default_rng(0)
    rows = []
    for name in LARGE:
        p = layers[name].params
        x = rng.uniform(-1, 1, p.input_shape).astype(np.float32)
        w = (rng.uniform(-1, 1, p.weight_shape) / np.sqrt(p.c_in_per_group * p.kh * p.kw)).astype(np.float32)
        plan = dispatch.Plan(dispatch.select(p, "auto"), w, None, p)
        out = np.empty(p.out_shape, np.float32)
        times: dict[int, list[float]] = {t: [] for t in args.threads}
        for r in range(args.rounds):
            order = args.threads[r % len(args.threads):] + args.threads[:r % len(args.threads)]
            for t in order:
                fastconv.set_num_threads(t)
                times[t].append(sample(lambda: plan.run(x, out)))
        med = {t: statistics.median(v) for t, v in times.items()}
        base = med[args.threads[0]]
        row = {"layer": name, "algorithm": plan.algorithm.name, "median_s": med,
               "speedup": {t: base / med[t] for t in args.threads}}
        rows.append(row)
        print(f"{name:16s} {plan.algorithm.name:10s} " + "  ".join(
            f"{t} thr {1e3 * med[t]:8.2f} ms ({row['speedup'][t]:.2f}x)" for t in args.threads), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": "fastconv-scaling/1", "threads": args.threads, "rounds": args.rounds,
                       "machine": machine.info(), "layers": rows}, f, indent=1)


if __name__ == "__main__":
    main()
