"""Backward rows of ``fastconv bench --pass backward``: `fastconv.grad` against torch, per layer.

For every conv layer three rows, each ours against its torch peer:

* ``input``    — ``fastconv.grad.conv2d_input``  vs ``torch.nn.grad.conv2d_input``;
* ``weight``   — ``fastconv.grad.conv2d_weight`` vs ``torch.nn.grad.conv2d_weight``;
* ``backward`` — ours: input + weight + bias gradients (``conv2d_bias``), vs autograd's backward of
  ``F.conv2d`` (``torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)``: the backward alone,
  the forward is recorded once, outside the timing);

and one ``input`` row per pool (max with the forward's indices, average, adaptive average) against
autograd's backward of the same torch pool.

Work: a gradient of a conv costs the forward's 2 × MACs of the direct algorithm (``p.flops``), so
``input`` and ``weight`` count ``p.flops`` each and ``backward`` twice that (the bias gradient's
N·C_out·H_out·W_out additions are left out); ``%peak`` is against the machine's FMA peak
(`machine.peaks`, halved for float64 as in the forward rows). An input gradient that runs as a
forward convolution through Winograd (``algorithm``) does fewer multiplications: its rate is
*effective* (``effective``, ``*`` in the table), as in the forward rows. Pools count GB/s of the input
gradient written (the forward rows' input bytes).

Timing is the forward harness's (`timer.measure`): all of a layer's candidates — ours and torch's,
every kind of row — interleaved round by round in one process, with the cool-down between thread
pools; ``ratio`` is torch's median / ours (> 1: fastconv faster). With ``Options.check`` every
gradient of both libraries is compared with the float64 definitions in `fastconv.reference`
(``max_rel_err`` = max|g − ref| / max|ref|, the worst of the three gradients on ``backward`` rows).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from .. import grad, reference, threads
from ..params import ConvParams, PoolParams
from . import machine
from .runner import CLOCKS, Options, Progress, _data, _geomean, params_dict
from .suites import Layer
from .timer import Candidate, measure

SCHEMA = "fastconv-bench-backward/1"
# the kinds of rows, in the order the table and the summary show them
KINDS = ("input", "weight", "backward", "pool")
KIND_LABEL = {"input": "input", "weight": "weight", "backward": "input+weight+bias", "pool": "pool input"}
# what each kind of row calls: ours, torch's
CALLS = {
    "input": ("fastconv.grad.conv2d_input", "torch.nn.grad.conv2d_input"),
    "weight": ("fastconv.grad.conv2d_weight", "torch.nn.grad.conv2d_weight"),
    "backward": ("fastconv.grad.conv2d_input + conv2d_weight + conv2d_bias", "torch.autograd.grad of F.conv2d"),
    "max": ("fastconv.grad.max_pool2d_input", "torch.autograd.grad of F.max_pool2d"),
    "avg": ("fastconv.grad.avg_pool2d_input", "torch.autograd.grad of F.avg_pool2d"),
    "adaptive_avg": ("fastconv.grad.adaptive_avg_pool2d_input", "torch.autograd.grad of F.adaptive_avg_pool2d"),
}
PEERS = ("torch",)  # the one library here with a CPU backward to compare with


class Skip(Exception):
    """This layer (or its torch side) cannot be measured; the message says why."""


@dataclass
class _Row:
    kind: str  # KINDS
    work: float  # FLOPs (conv) or bytes (pool) of one call
    ours: Callable[[], Any]  # returns the gradient(s), a tuple of arrays
    torch: Callable[[], Any] | None
    refs: Callable[[], tuple[np.ndarray, ...]]  # float64 references, same order as ours' result
    algorithm: str | None = None  # the forward kernel an input gradient runs as a forward conv


def _rel_err(got: tuple, refs: tuple[np.ndarray, ...]) -> float:
    """The worst max|g − ref| / max|ref| over the gradients of one call."""
    worst = 0.0
    for g, r in zip(got, refs):
        g = np.asarray(g, dtype=np.float64)
        if g.shape != r.shape:
            return float("nan")
        worst = max(worst, float(np.abs(g - r).max(initial=0.0) / max(np.abs(r).max(initial=0.0), 1e-30)))
    return worst


def _torch(peers: tuple[str, ...], nt: int):
    """torch, set to ``nt`` threads, if it is a peer of this run and installed; else None."""
    if "torch" not in peers:
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(nt)
    return torch


def _conv_rows(p: ConvParams, opts: Options, torch) -> list[_Row]:
    if not p.symmetric_padding:
        raise Skip(f"padding {p.pad} is asymmetric: the gradient functions' signature cannot express it")
    kw = p.functional_kwargs()
    x, w, b = _data(p, opts.seed)
    dy = np.random.default_rng(opts.seed + 1).uniform(-1, 1, p.out_shape).astype(p.dtype)
    memo: dict[str, Any] = {}

    def ref(key: str, fn: Callable[[], np.ndarray]) -> np.ndarray:  # each reference computed once
        if key not in memo:
            memo[key] = fn()
        return memo[key]

    def dx_ref():
        return ref("dx", lambda: reference.conv2d_input_grad(dy, w, p))

    def dw_ref():
        return ref("dw", lambda: reference.conv2d_weight_grad(x, dy, p))

    def db_ref():
        return ref("db", lambda: reference.conv2d_bias_grad(dy))

    def ours_input():
        return (grad.conv2d_input(x.shape, w, dy, **kw),)

    def ours_weight():
        return (grad.conv2d_weight(x, w.shape, dy, **kw),)

    def ours_backward():
        return (grad.conv2d_input(x.shape, w, dy, **kw), grad.conv2d_weight(x, w.shape, dy, **kw), grad.conv2d_bias(dy))

    t_input = t_weight = t_backward = None
    if torch is not None:
        import torch.nn.functional as F

        s, pad, d, g = kw["stride"], kw["padding"], kw["dilation"], kw["groups"]
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.conv2d(tx, tw, tb, **kw)  # recorded once: the backward rows time the backward alone
        tdy, txd, twd = torch.from_numpy(dy), tx.detach(), tw.detach()

        def t_input():
            return (torch.nn.grad.conv2d_input(tx.shape, twd, tdy, s, pad, d, g),)

        def t_weight():
            return (torch.nn.grad.conv2d_weight(txd, tw.shape, tdy, s, pad, d, g),)

        def t_backward():
            return torch.autograd.grad(y, (tx, tw, tb), tdy, retain_graph=True)

    algo = _forward_algorithm(dy, w, p) if grad.input_grad_route(p) == "forward" else None
    return [
        _Row("input", p.flops, ours_input, t_input, lambda: (dx_ref(),), algo),
        _Row("weight", p.flops, ours_weight, t_weight, lambda: (dw_ref(),)),
        _Row("backward", 2 * p.flops, ours_backward, t_backward, lambda: (dx_ref(), dw_ref(), db_ref()), algo),
    ]


def _forward_algorithm(dy: np.ndarray, w: np.ndarray, p: ConvParams) -> str:
    """The algorithm `fastconv.conv2d` picks for the forward convolution that a stride-1 input
    gradient is (`fastconv.grad.forward_equivalent`): Winograd makes the row's rate effective."""
    from .. import rules, validate

    dyf, wt, kw = grad.forward_equivalent(dy, w, p)
    return rules.select(validate.conv2d_args(dyf, wt, None, **kw)[3], "auto", one_shot=True).name


def _pool_rows(p: PoolParams, opts: Options, torch) -> list[_Row]:
    from .. import functional

    x, _, _ = _data(p, opts.seed)
    dy = np.random.default_rng(opts.seed + 1).uniform(-1, 1, p.out_shape).astype(p.dtype)
    if p.kind == "max":
        kw: dict[str, Any] = dict(
            kernel_size=p.kernel, stride=p.stride, padding=p.padding, dilation=p.dilation, ceil_mode=p.ceil_mode
        )
        # the indices the forward returns (torch's autograd keeps its own from its forward)
        idx = np.ascontiguousarray(functional.max_pool2d(x, **kw, return_indices=True)[1])

        def ours():
            return (grad.max_pool2d_input(x, dy, idx, **kw),)

        def refs():
            return (reference.max_pool2d_input_grad(dy, reference.max_pool2d(x, p, return_indices=True)[1], p),)

    elif p.kind == "avg":
        kw = dict(
            kernel_size=p.kernel,
            stride=p.stride,
            padding=p.padding,
            ceil_mode=p.ceil_mode,
            count_include_pad=p.count_include_pad,
            divisor_override=p.divisor_override,
        )

        def ours():
            return (grad.avg_pool2d_input(x.shape, dy, **kw),)

        def refs():
            return (reference.avg_pool2d_input_grad(dy, p),)

    else:
        kw = {}

        def ours():
            return (grad.adaptive_avg_pool2d_input(x.shape, dy),)

        def refs():
            return (reference.adaptive_avg_pool2d_input_grad(dy, p),)

    theirs = None
    if torch is not None:
        import torch.nn.functional as F

        tx = torch.tensor(x, requires_grad=True)
        if p.kind == "max":
            y = F.max_pool2d(tx, **kw)
        elif p.kind == "avg":
            y = F.avg_pool2d(tx, **kw)
        else:
            y = F.adaptive_avg_pool2d(tx, (p.out_h, p.out_w))
        tdy = torch.from_numpy(dy)

        def theirs():
            return torch.autograd.grad(y, (tx,), tdy, retain_graph=True)

    return [_Row("pool", p.input_bytes, ours, theirs, refs)]


def _stats(t, work: float, is_pool: bool, fma_gflops: float, algorithm: str | None = None) -> dict:
    d: dict[str, Any] = {"median_s": t.median, "min_s": t.min, "spread": t.spread, "samples": len(t.samples)}
    if is_pool:
        d["gbps"] = work / t.median / 1e9
    else:
        d["gflops"] = work / t.median / 1e9
        d["pct_peak"] = 100 * d["gflops"] / fma_gflops
        # FLOPs are the direct algorithm's, so a gradient through Winograd has an "effective" rate
        d["effective"] = "winograd" in (algorithm or "")
    return d


def bench_layer(layer: Layer, opts: Options, peaks: dict, progress: Progress | None = None) -> dict:
    """One layer's backward rows: ours and torch's, timed interleaved; checked unless ``opts.check``
    is off. Returns the layer's JSON (``rows``: one per kind)."""
    p = layer.params
    is_pool = isinstance(p, PoolParams)
    nt = threads.get_num_threads()
    torch = _torch(opts.peers, nt)
    result: dict[str, Any] = {
        "name": layer.name,
        "params": params_dict(p),
        "describe": p.describe(),
        "unit": "GB/s" if is_pool else "GFLOP/s",
        "rows": [],
        "skipped": [],
    }
    if "torch" in opts.peers and torch is None:
        result["skipped"].append({"name": "torch", "reason": "torch not installed (pip install 'fastconv[peers]')"})
    try:
        rows = _pool_rows(p, opts, torch) if isinstance(p, PoolParams) else _conv_rows(p, opts, torch)
    except Skip as e:
        result["skipped"].append({"name": "backward", "reason": str(e)})
        return result
    cands: list[Candidate] = []
    for r in rows:
        cands.append(Candidate(r.kind, r.ours, "fastconv"))
        if r.torch is not None:
            cands.append(Candidate("torch:" + r.kind, r.torch, "torch"))
    if progress:
        progress.layer(layer.name, len(cands) * opts.repeats)
    for c in cands:  # warm-up: first touch, lazily loaded kernels and libraries ...
        c.fn()
    threads.apply()  # ... such as a BLAS loaded on a kernel's first call: knob it too
    timings = measure(
        cands,
        opts.repeats,
        opts.min_sample_s,
        opts.max_time_s,
        opts.cooldown_s,
        tick=progress.advance if progress else None,
        warmed=True,
        clock=CLOCKS[opts.clock],
    )
    fma = peaks["fma_gflops"] * (0.5 if p.dtype == "float64" else 1.0)  # float64 vectors: half the lanes
    for r in rows:
        ours_call, torch_call = CALLS[p.kind if isinstance(p, PoolParams) else r.kind]
        row: dict[str, Any] = {"kind": r.kind, "work": r.work}
        row["ours"] = {"call": ours_call, **_stats(timings[r.kind], r.work, is_pool, fma, r.algorithm)}
        row["torch"] = (
            {"call": torch_call, **_stats(timings["torch:" + r.kind], r.work, is_pool, fma)}
            if r.torch is not None
            else None
        )
        row["ratio"] = row["torch"]["median_s"] / row["ours"]["median_s"] if row["torch"] else None
        if isinstance(p, ConvParams) and r.kind == "input":
            row["route"] = grad.input_grad_route(p)  # forward conv or the conv_grad kernel
        if r.algorithm:
            row["algorithm"] = r.algorithm
        if opts.check:
            refs = r.refs()
            row["ours"]["max_rel_err"] = _rel_err(r.ours(), refs)
            if r.torch is not None:
                row["torch"]["max_rel_err"] = _rel_err(tuple(t.detach().numpy() for t in r.torch()), refs)
        result["rows"].append(row)
    return result


def summarize(layers: list[dict]) -> dict:
    """Per kind of row (and over all rows): how many have a torch time, the geometric mean of
    torch / ours, the smallest ratio and how many are below 1.0 (fastconv slower)."""

    def part(ratios: list[float]) -> dict:
        return {
            "rows": len(ratios),
            "geomean": _geomean(ratios),
            "min": min(ratios) if ratios else None,
            "below_1": sum(v < 1.0 for v in ratios),
        }

    rows = [r for L in layers for r in L["rows"] if r["ratio"]]
    out: dict[str, Any] = {"baseline": "torch", **part([r["ratio"] for r in rows])}
    for k in KINDS:
        out[k] = part([r["ratio"] for r in rows if r["kind"] == k])
    worst = min(
        ((L["name"], r["kind"], r["ratio"]) for L in layers for r in L["rows"] if r["ratio"]),
        key=lambda t: t[2],
        default=None,
    )
    out["worst"] = {"layer": worst[0], "kind": worst[1], "ratio": worst[2]} if worst else None
    return out


def summary_line(summary: dict) -> str:
    """The one-line verdict of the backward rows."""
    if not summary.get("rows"):
        return "summary (backward): no row has a torch time to compare with (see --peers)"
    parts = [
        f"{KIND_LABEL[k]} {summary[k]['geomean']:.2f}x ({summary[k]['rows']})" for k in KINDS if summary[k]["rows"]
    ]
    w = summary["worst"]
    return (
        f"summary (backward): geomean vs torch (its time / ours, >1: fastconv faster) per kind of row: "
        f"{', '.join(parts)}; all {summary['geomean']:.2f}x; {summary['below_1']} of {summary['rows']} rows "
        f"below 1.0x (worst {w['layer']} {KIND_LABEL[w['kind']]} {w['ratio']:.2f}x)"
    )


def run_suite(layers: list[Layer], opts: Options, progress: Progress | None = None, suite_name: str = "") -> dict:
    """The backward rows of ``layers``; returns the report (its JSON schema is `SCHEMA`)."""
    nt = threads.get_num_threads()
    threads.apply()
    peaks = machine.peaks(nt)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    results = [bench_layer(layer, opts, peaks, progress) for layer in layers]
    load = [load0, os.getloadavg()[0] if load0 is not None else None]
    return {
        "schema": SCHEMA,
        "pass": "backward",
        "suite": suite_name,
        "started": started,
        "load_average": load,
        "elapsed_s": time.perf_counter() - t0,
        "threads": nt,
        "machine": machine.info(),
        "peaks": peaks,
        "options": asdict(opts),
        "layers": results,
        "summary": summarize(results),
    }


def spreads(report: dict) -> list[float]:
    """Every timed candidate's spread (the noisy-run warning's input)."""
    return [s["spread"] for L in report["layers"] for r in L["rows"] for s in (r["ours"], r["torch"]) if s]
