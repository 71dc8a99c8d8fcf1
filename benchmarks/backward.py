"""Backward-pass benchmark: `fastconv.grad` against torch, layer by layer.

For every conv layer of the suites (default: the seed suite ``default`` and ResNet-18's conv layers
at batch 1 and 8) three rows, each timed against its torch peer:

* ``input``   — ``fastconv.grad.conv2d_input``  vs ``torch.nn.grad.conv2d_input``;
* ``weight``  — ``fastconv.grad.conv2d_weight`` vs ``torch.nn.grad.conv2d_weight``;
* ``backward``— ours: input + weight + bias gradients, vs autograd's backward of ``F.conv2d``
  (``torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)``: the backward alone, the forward
  is recorded once).

and one ``input`` row per pool (max with torch's indices, adaptive average) against autograd's.
GFLOP/s count 2 × MACs of the direct algorithm per gradient (4 × MACs for ``backward``; pools: none).
Timing: both libraries at ``--threads`` threads (2), one call of each in turn per round (interleaved,
so drifts of a shared machine hit both), ``--repeats`` rounds after a warm-up, medians; ``ratio`` is
torch's median / ours (> 1: we are faster). The summary gives the geometric mean of the ratios per
kind of row and the smallest.

    python benchmarks/backward.py                         # default + resnet18, 2 threads
    python benchmarks/backward.py --suite resnet18 --repeats 21 --json out.json
    python benchmarks/backward.py --threads 1 --clock cpu     # per-thread work, robust to a busy machine
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastconv
from fastconv import grad
from fastconv.bench import suites
from fastconv.params import ConvParams, PoolParams


def _conv_rows(layer, rng):
    p: ConvParams = layer.params
    kw = p.functional_kwargs()
    x = rng.standard_normal(p.input_shape, dtype=np.float32)
    w = rng.standard_normal(p.weight_shape, dtype=np.float32) * 0.1
    b = rng.standard_normal(p.c_out, dtype=np.float32)
    dy = rng.standard_normal(p.out_shape, dtype=np.float32)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(tx, tw, tb, **kw)
    tdy = torch.from_numpy(dy)
    txd, twd = tx.detach(), tw.detach()
    s, pad, d, g = kw["stride"], kw["padding"], kw["dilation"], kw["groups"]

    def ours_bwd():
        grad.conv2d_input(x.shape, w, dy, **kw)
        grad.conv2d_weight(x, w.shape, dy, **kw)
        grad.conv2d_bias(dy)

    flops = 2 * p.macs
    return [
        (
            "input",
            flops,
            lambda: grad.conv2d_input(x.shape, w, dy, **kw),
            lambda: torch.nn.grad.conv2d_input(tx.shape, twd, tdy, s, pad, d, g),
        ),
        (
            "weight",
            flops,
            lambda: grad.conv2d_weight(x, w.shape, dy, **kw),
            lambda: torch.nn.grad.conv2d_weight(txd, tw.shape, tdy, s, pad, d, g),
        ),
        ("backward", 2 * flops, ours_bwd, lambda: torch.autograd.grad(y, (tx, tw, tb), tdy, retain_graph=True)),
    ]


def _pool_rows(layer, rng):
    p: PoolParams = layer.params
    x = rng.standard_normal(p.input_shape, dtype=np.float32)
    tx = torch.tensor(x, requires_grad=True)
    if p.kind == "max":
        kw = dict(kernel_size=p.kernel, stride=p.stride, padding=p.padding, dilation=p.dilation, ceil_mode=p.ceil_mode)
        y, idx = F.max_pool2d(tx, **kw, return_indices=True)
        dy = rng.standard_normal(tuple(y.shape), dtype=np.float32)
        idx_np = idx.numpy()
        ours = lambda: grad.max_pool2d_input(x, dy, idx_np, **kw)  # noqa: E731
    elif p.kind == "adaptive_avg":
        y = F.adaptive_avg_pool2d(tx, (p.out_h, p.out_w))
        dy = rng.standard_normal(tuple(y.shape), dtype=np.float32)
        ours = lambda: grad.adaptive_avg_pool2d_input(x.shape, dy)  # noqa: E731
    else:
        kw = dict(
            kernel_size=p.kernel,
            stride=p.stride,
            padding=p.padding,
            ceil_mode=p.ceil_mode,
            count_include_pad=p.count_include_pad,
            divisor_override=p.divisor_override,
        )
        y = F.avg_pool2d(tx, **kw)
        dy = rng.standard_normal(tuple(y.shape), dtype=np.float32)
        ours = lambda: grad.avg_pool2d_input(x.shape, dy, **kw)  # noqa: E731
    tdy = torch.from_numpy(dy)
    return [("input", 0, ours, lambda: torch.autograd.grad(y, (tx,), tdy, retain_graph=True))]


def time_pair(ours, theirs, repeats: int, clock=time.perf_counter) -> tuple[float, float]:
    """Interleaved medians (seconds) of ``ours`` and ``theirs``, after one warm-up call each."""
    ours()
    theirs()
    a, b = [], []
    for _ in range(repeats):
        t = clock()
        ours()
        a.append(clock() - t)
        t = clock()
        theirs()
        b.append(clock() - t)
    return statistics.median(a), statistics.median(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", nargs="+", default=["default", "resnet18"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--ops", default="input,weight,backward", help="comma-separated rows to run")
    ap.add_argument("--layers", default="", help="only layers whose name contains this")
    ap.add_argument("--json", default="", help="write the rows here")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the calling thread's CPU time (time.thread_time), with --threads 1 only — "
        "a comparison that other processes on a shared machine disturb much less",
    )
    args = ap.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu measures the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    ops = set(args.ops.split(","))
    rng = np.random.default_rng(0)
    rows = []
    print(
        f"# fastconv.grad vs torch {torch.__version__}, {args.threads} threads, {args.clock} clock, interleaved "
        f"medians of {args.repeats}; ratio = torch / ours"
    )
    print(f"{'layer':34s} {'row':8s} {'ours ms':>9s} {'GF/s':>6s} {'torch ms':>9s} {'GF/s':>6s} {'ratio':>6s}")
    for suite in args.suite:
        for layer in suites.load(suite):
            if args.layers and args.layers not in layer.name:
                continue
            make = _pool_rows if layer.is_pool else _conv_rows
            for op, flops, ours, theirs in make(layer, rng):
                if op not in ops:
                    continue
                a, b = time_pair(ours, theirs, args.repeats, clock)

                def gf(t, flops=flops):
                    return f"{flops / t / 1e9:6.1f}" if flops else f"{'':6s}"

                print(
                    f"{layer.name:34s} {op:8s} {a * 1e3:9.3f} {gf(a)} {b * 1e3:9.3f} {gf(b)} {b / a:6.2f}", flush=True
                )
                rows.append(
                    dict(
                        suite=suite,
                        layer=layer.name,
                        row=op,
                        pool=layer.is_pool,
                        ours_s=a,
                        torch_s=b,
                        flops=flops,
                        ratio=b / a,
                    )
                )
    print()
    for op in ("input", "weight", "backward"):
        for pool in (False, True):
            r = [x["ratio"] for x in rows if x["row"] == op and x["pool"] == pool]
            if r:
                what = f"{op} ({'pools' if pool else 'conv'})"
                print(
                    f"{what:20s} geomean {math.exp(sum(map(math.log, r)) / len(r)):5.2f}x  min {min(r):5.2f}x  "
                    f"({len(r)} rows, {sum(x < 1 for x in r)} below 1.0x)"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, repeats=args.repeats, torch=torch.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
