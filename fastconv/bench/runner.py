"""Run a suite: for each layer, every registered algorithm that supports it, ``auto``, and the
peers, timed interleaved (`timer.measure`), with prepare time, errors against the float64
reference and the derived rates. Returns plain dicts: the JSON report *is* this structure.

Our kernels are measured through the public plan API — ``rules.select`` →
``plan.Plan`` (prepare, timed on its own) → ``plan.run(x, out)`` — iterating
``registry.REGISTRY``, so a new algorithm shows up without touching this file. Two more rows:
``conv2d()`` times the drop-in function itself (weights prepared on every call), which is what
torch's ``F.conv2d`` row does too; the layer-object row (``Conv2d``, ``MaxPool2d``, ...) times a
prepared `fastconv.Conv2d` (or pool layer) called as a network calls it — validation memo, plan
lookup, a new output — which is what the summary (`summarize`) sets against the faster of torch
and ONNX Runtime.

`Options.ours` picks our rows: ``"all"`` (every algorithm, auto, conv2d() and the layer object),
``"kernels"`` (all but the layer object: the regression gate's rows) or ``"layer"`` (the layer
object alone, plus any ``algorithms`` asked for: the network suites, hundreds of layers).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, TypeVar

import numpy as np

from .. import memory, reference, registry, rules, threads
from .. import plan as _plan
from ..params import ConvParams, PoolParams
from . import machine
from . import peers as _peers
from .suites import Layer
from .timer import Candidate, measure

SCHEMA = "fastconv-bench/1"
T = TypeVar("T")


@dataclass
class Options:
    repeats: int = 5
    min_sample_s: float = 0.02
    max_time_s: float = 3.0  # per candidate and layer; slow ones get fewer (>= 3) samples
    cooldown_s: float = 0.25
    peers: tuple[str, ...] = _peers.PEERS
    check: bool = True  # errors vs the float64 reference
    calibration: str | None = "fma"
    algorithms: tuple[str, ...] | None = None  # None: every registered algorithm
    seed: int = 0
    burst: int = 0  # >0: a sample is the fastest of >= burst back-to-back calls
    ours: str = "all"  # our rows: "all", "kernels" (no layer object) or "layer" (see module doc)
    clock: str = "wall"  # "wall" or "cpu": the calling thread's CPU time (one thread only; see timer)


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


OURS = ("all", "kernels", "layer")
# peers the summary compares with: the faster of the two per layer
SUMMARY_PEERS = ("torch", "onnxruntime")


class Progress(Protocol):
    def layer(self, name: str, samples: int) -> None: ...
    def advance(self) -> None: ...


@dataclass
class _Entry:
    name: str
    role: str  # "algorithm", "auto", "one-shot", "layer" or "peer"
    fn: Callable[[], object]
    pool: str
    prepare_s: float = 0.0
    chosen: str | None = None  # auto, one-shot: the algorithm it picked
    workspace_bytes: int | None = None
    output: Callable[[], object] = field(default=lambda: None)


def _data(p, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, p.input_shape).astype(p.dtype)
    if isinstance(p, PoolParams):
        return x, None, None
    fan_in = p.c_in_per_group * p.kh * p.kw
    w = (rng.uniform(-1, 1, p.weight_shape) / np.sqrt(fan_in)).astype(p.dtype)
    b = rng.uniform(-0.1, 0.1, p.c_out).astype(p.dtype)
    return x, w, b


def _timed(make: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    obj = make()
    return obj, time.perf_counter() - t0


def _stored(last: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
    """Reads ``last["out"]`` later: binds this loop iteration's ``last`` (a lambda written in the
    loop would read the last iteration's)."""
    return lambda: last["out"]


def _placements(x: np.ndarray, out_shape, dtype, copies: int) -> Callable[[], tuple]:
    """A function returning the next of ``copies`` independently allocated (input, output) pairs.

    Measured (1 thread, max pool on 1x32x56x56, fresh processes): the same kernel on arrays
    allocated at different places ran at 60 or at 85-100 us, and a process keeps whatever it got,
    so a single-placement number moved ~40% between runs — more than the gate's threshold. Cycling
    through several placements lets "the fastest sample" find the good one in every process.
    """
    pairs, spacers = [], []
    for i in range(copies):
        spacers.append(np.empty(4096 * (17 * i + 1), np.uint8))  # push the next copy elsewhere
        pairs.append((x.copy() if i else x, np.empty(out_shape, dtype=dtype)))
    state = {"i": -1, "keep": spacers}

    def next_pair():
        state["i"] = (state["i"] + 1) % copies
        return pairs[state["i"]]

    return next_pair


def _ours_conv(p: ConvParams, x, w, b, opts: Options, skipped: list) -> list[_Entry]:
    entries = []
    nt = threads.get_num_threads()
    wanted = [a for a in registry.REGISTRY if opts.algorithms is None or a.name in opts.algorithms]
    if opts.ours == "layer" and opts.algorithms is None:
        wanted = []
    plans = [(a.name, "algorithm", a) for a in wanted]
    if opts.ours != "layer":
        plans.append(("auto", "auto", rules.select(p, "auto")))
    for name, role, alg in plans:
        reason = alg.supports(p)
        if reason is None and alg.workspace_bytes(p, nt) > memory.get_workspace_limit():
            reason = f"workspace {alg.workspace_bytes(p, nt):,} B over the limit"
        if reason is not None:
            skipped.append({"name": name, "reason": reason})
            continue
        _plan.Plan(alg, w, b, p)  # the first prepare imports the kernel's module: not timed
        plan, prep = _timed(functools.partial(_plan.Plan, alg, w, b, p))
        pick = _placements(x, p.out_shape, p.dtype, 4 if opts.burst else 1)
        last: dict[str, np.ndarray] = {}

        def call(plan=plan, pick=pick, last=last):
            xi, oi = pick()
            plan.run(xi, oi)
            last["out"] = oi

        entries.append(
            _Entry(
                name,
                role,
                call,
                "fastconv",
                prep,
                alg.name if role == "auto" else None,
                alg.workspace_bytes(p, nt),
                output=_stored(last),
            )
        )
    if opts.ours != "layer":
        one = rules.select(p, "auto", one_shot=True)  # the call fastconv.conv2d makes
        if not p.symmetric_padding:
            skipped.append(
                {
                    "name": "conv2d()",
                    "reason": f"padding {p.pad} is asymmetric; torch.nn.functional's signature cannot express it",
                }
            )
        elif one.workspace_bytes(p, nt) > memory.get_workspace_limit():
            skipped.append({"name": "conv2d()", "reason": f"workspace {one.workspace_bytes(p, nt):,} B over the limit"})
        else:
            entries.append(_one_shot(p, x, w, b, one))
    if opts.ours != "kernels":
        entries += _layer_object(p, x, w, b, skipped)
    return entries


def _one_shot(p: ConvParams, x, w, b, alg: registry.Kernel) -> _Entry:
    """``fastconv.conv2d`` as a drop-in user calls it: validation, the one-shot auto choice (``alg``),
    prepare and run, a new output every call — the like-for-like row against torch's ``F.conv2d``."""
    from .. import functional

    kw = p.functional_kwargs()
    last = {}

    def call():
        last["out"] = functional.conv2d(x, w, b, **kw)

    return _Entry(
        "conv2d()",
        "one-shot",
        call,
        "fastconv",
        0.0,
        alg.name,
        alg.workspace_bytes(p, threads.get_num_threads()),
        output=lambda: last["out"],
    )


LAYER_ROW = {"conv": "Conv2d", "max": "MaxPool2d", "avg": "AvgPool2d", "adaptive_avg": "AdaptiveAvgPool2d"}


def make_layer(p: ConvParams | PoolParams, w=None, b=None):
    """The `fastconv` layer object (``Conv2d``, ``MaxPool2d``, ...) that runs layer ``p``, with
    weights ``w`` and bias ``b`` for a conv; ValueError if its arguments cannot express ``p``."""
    import fastconv

    if isinstance(p, PoolParams):
        if p.kind == "max":
            return fastconv.MaxPool2d(p.kernel, p.stride, p.padding, p.dilation, ceil_mode=p.ceil_mode)
        if p.kind == "avg":
            return fastconv.AvgPool2d(
                p.kernel, p.stride, p.padding, p.ceil_mode, p.count_include_pad, p.divisor_override
            )
        assert p.output_size is not None  # PoolParams refuses adaptive pooling without one
        return fastconv.AdaptiveAvgPool2d(p.output_size)
    kw = p.functional_kwargs()  # raises for asymmetric padding
    layer = fastconv.Conv2d(
        p.c_in,
        p.c_out,
        (p.kh, p.kw),
        kw["stride"],
        kw["padding"],
        kw["dilation"],
        kw["groups"],
        bias=b is not None,
        dtype=np.dtype(p.dtype),
    )
    layer.weight = w
    if b is not None:
        layer.bias = b
    return layer


def _layer_object(p, x, w, b, skipped: list) -> list[_Entry]:
    """A prepared layer object called as a network calls it (a new output every call)."""
    name = LAYER_ROW["conv" if isinstance(p, ConvParams) else p.kind]
    try:
        layer = make_layer(p, w, b)
    except ValueError as e:
        skipped.append({"name": name, "reason": str(e)})
        return []
    chosen, prep = None, 0.0
    if isinstance(p, ConvParams):
        plan, prep = _timed(lambda: layer.plan(x.shape))  # prepare: the plan a first call builds
        chosen = plan.algorithm.name
    layer(x)  # first call: validation memo
    last = {}

    def call():
        last["out"] = layer(x)

    return [_Entry(name, "layer", call, "fastconv", prep, chosen, None, output=lambda: last["out"])]


def _ours_pool(p: PoolParams, x, opts: Options, skipped: list) -> list[_Entry]:
    entries = []
    if opts.ours != "layer":
        pick = _placements(x, p.out_shape, p.dtype, 4 if opts.burst else 1)
        last = {}

        def call():
            xi, oi = pick()
            _plan.run_pool(xi, p, oi)
            last["out"] = oi

        entries.append(_Entry(p.kind, "algorithm", call, "fastconv", 0.0, None, 0, output=lambda: last["out"]))
    if opts.ours != "kernels":
        entries += _layer_object(p, x, None, None, skipped)
    return entries


def _peer_entries(p, x, w, b, opts: Options, skipped: list) -> list[_Entry]:
    entries = []
    nt = threads.get_num_threads()
    for name in opts.peers:
        try:
            _peers.load(name)
            fn, prep = _timed(functools.partial(_peers.make, name, p, x, w, b, nt))
        except _peers.Skip as e:
            skipped.append({"name": name, "reason": str(e)})
            continue
        # a peer may time less than it returns (sgemm: the GEMM alone; its output adds the bias)
        entries.append(_Entry(name, "peer", getattr(fn, "timed", fn), _peers.POOL_OF[name], prep, output=fn))
    return entries


def _reference(p, x, w, b):
    if isinstance(p, ConvParams):
        return reference.conv2d(x, w, b, p)
    if p.kind == "max":
        return reference.max_pool2d(x, p)
    if p.kind == "avg":
        return reference.avg_pool2d(x, p)
    return reference.adaptive_avg_pool2d(x, p)


def params_dict(p) -> dict:
    d = asdict(p)
    d["kind"] = "conv" if isinstance(p, ConvParams) else "pool:" + p.kind
    return d


def bench_layer(
    layer: Layer,
    opts: Options,
    peaks: dict,
    progress: Progress | None = None,
    calib: Callable[[], object] | None = None,
) -> dict:
    p = layer.params
    is_pool = isinstance(p, PoolParams)
    x, w, b = _data(p, opts.seed)
    skipped: list[dict] = []
    entries = _ours_pool(p, x, opts, skipped) if isinstance(p, PoolParams) else _ours_conv(p, x, w, b, opts, skipped)
    entries += _peer_entries(p, x, w, b, opts, skipped)
    if progress:
        progress.layer(layer.name, len(entries) * opts.repeats)
    for e in entries:  # warm-up: first touch of the buffers, and lazily loaded libraries ...
        e.fn()
    threads.apply()  # ... such as a BLAS loaded lazily on a kernel's first call: knob it too
    if calib:
        calib()
    cands = [Candidate(e.name, e.fn, e.pool) for e in entries]
    calibration = Candidate("calibration", calib, "calibration") if calib else None
    timings = measure(
        cands,
        opts.repeats,
        opts.min_sample_s,
        opts.max_time_s,
        opts.cooldown_s,
        calibration,
        tick=progress.advance if progress else None,
        warmed=True,
        burst=opts.burst,
        clock=CLOCKS[opts.clock],
    )
    ref = _reference(p, x, w, b) if opts.check else None
    work = p.input_bytes if isinstance(p, PoolParams) else p.flops
    rows: list[dict[str, Any]] = []  # the report's JSON
    for e in entries:
        t = timings[e.name]
        row: dict[str, Any] = {
            "name": e.name,
            "role": e.role,
            "median_s": t.median,
            "min_s": t.min,
            "spread": t.spread,
            "samples": len(t.samples),
            "prepare_s": e.prepare_s,
        }
        if calib:
            row["norm"] = t.norm  # median of per-round ratios
            row["norm_min"] = t.min / timings["calibration"].min  # ratio of the fastest samples
        if e.chosen:
            row["chosen"] = e.chosen
        if e.workspace_bytes is not None:
            row["workspace_bytes"] = e.workspace_bytes
        if is_pool:
            row["gbps"] = work / t.median / 1e9
        else:
            row["gflops"] = work / t.median / 1e9
            # FLOPs are the direct algorithm's, so Winograd's rate is "effective"
            row["effective"] = "winograd" in (e.chosen or e.name)
            # float64 vectors hold half the lanes: its peaks are taken as half the float32 ones
            lanes = 0.5 if p.dtype == "float64" else 1.0
            row["pct_sgemm"] = 100 * row["gflops"] / (lanes * peaks["sgemm_gflops"])
            row["pct_peak"] = 100 * row["gflops"] / (lanes * peaks["fma_gflops"])
        if ref is not None:
            y = np.asarray(e.output(), dtype=np.float64)
            err = np.abs(y - ref).max() if y.shape == ref.shape else float("nan")
            row["max_abs_err"] = float(err)
            row["max_rel_err"] = float(err / max(np.abs(ref).max(), 1e-30))
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    anchor = by_name.get("numpy")
    if anchor is not None:  # second gate normalization: the NumPy conv of the same layer
        for r in rows:
            if r["role"] != "peer":
                r["norm_peer"] = r["min_s"] / anchor["min_s"]
    for r in rows:
        if r["role"] != "peer":
            r["vs"] = {q: by_name[q]["median_s"] / r["median_s"] for q in by_name if by_name[q]["role"] == "peer"}
    result: dict[str, Any] = {
        "name": layer.name,
        "params": params_dict(p),
        "describe": p.describe(),
        "unit": "GB/s" if is_pool else "GFLOP/s",
        "work": work,
        "entries": rows,
        "skipped": skipped,
    }
    if layer.uses:
        result["uses"] = [{"net": n, "batch": bt, "count": c} for n, bt, c in layer.uses]
    if calib:
        result["calibration_s"] = timings["calibration"].median
    result["summary"] = layer_summary(result)
    return result


def _ours_row(layer: dict) -> dict | None:
    """Our row the summary uses: the layer object, else auto (conv) or the kernel (pool)."""
    rows = {e["role"]: e for e in layer["entries"]}
    return rows.get("layer") or rows.get("auto") or (rows.get("algorithm") if layer["unit"] == "GB/s" else None)


def layer_summary(layer: dict) -> dict:
    """Per layer: our time (`_ours_row`), torch's and ONNX Runtime's, the faster peer, ``ratio`` =
    that peer's time / ours (> 1: fastconv faster) and our %peak (convs: % of the FMA peak)."""
    ours = _ours_row(layer)
    peers = {e["name"]: e["median_s"] for e in layer["entries"] if e["role"] == "peer" and e["name"] in SUMMARY_PEERS}
    d: dict = {"ours": ours["name"] if ours else None, "ours_s": ours["median_s"] if ours else None}
    for q in SUMMARY_PEERS:
        d[f"{q}_s"] = peers.get(q)
    best = min(peers, key=lambda q: peers[q]) if peers else None
    d["best_peer"] = best
    d["ratio"] = peers[best] / ours["median_s"] if ours and best else None
    d["pct_peak"] = ours.get("pct_peak") if ours else None
    if ours and ours.get("chosen"):
        d["chosen"] = ours["chosen"]
    return d


def _geomean(vals: list[float]) -> float | None:
    return float(np.exp(np.mean(np.log(vals)))) if vals else None


def summarize(layers: list[dict]) -> dict:
    """The suite against the faster of torch and ONNX Runtime, per layer (`layer_summary`).

    ``geomean``: geometric mean of the per-layer ratios (> 1: fastconv faster); ``below_1``: how
    many layers are slower than the faster peer; the same for convs and pools alone; and, for
    network suites, ``nets``: each network and batch as the sum over its layers of count x time
    (convs and pools only: a network's time in those, ours against the faster peer's per layer).
    """

    def part(ls):
        r = [L["summary"]["ratio"] for L in ls if L["summary"]["ratio"]]
        return {"layers": len(r), "geomean": _geomean(r), "below_1": sum(v < 1.0 for v in r)}

    out = {
        "baseline": "faster of " + " and ".join(SUMMARY_PEERS),
        **part(layers),
        "conv": part([L for L in layers if L["unit"] != "GB/s"]),
        "pool": part([L for L in layers if L["unit"] == "GB/s"]),
    }
    nets: dict[tuple[str, int], dict] = {}
    for L in layers:
        s = L["summary"]
        for u in L.get("uses", ()):
            t = nets.setdefault(
                (u["net"], u["batch"]),
                {"net": u["net"], "batch": u["batch"], "layers": 0, "ours_s": 0.0, "peer_s": 0.0, "complete": True},
            )
            t["layers"] += u["count"]
            if s["ratio"] is None:
                t["complete"] = False
                continue
            t["ours_s"] += u["count"] * s["ours_s"]
            t["peer_s"] += u["count"] * s["ratio"] * s["ours_s"]
    for t in nets.values():
        t["ratio"] = t["peer_s"] / t["ours_s"] if t["ours_s"] else None
    if nets:
        out["nets"] = list(nets.values())
    return out


def summary_line(summary: dict) -> str:
    """The one-line verdict ``fastconv bench`` prints last."""
    if not summary.get("layers"):
        return "summary: no layer has a torch or ONNX Runtime time to compare with (see --peers)"
    return (
        f"summary: geomean {summary['geomean']:.2f}x over {summary['layers']} layers against the faster of "
        f"torch and ONNX Runtime per layer (their time / ours, >1: fastconv faster); "
        f"{summary['below_1']} layers below 1.0x"
    )


def run_suite(layers: list[Layer], opts: Options, progress: Progress | None = None, suite_name: str = "") -> dict:
    """Benchmark ``layers``; returns the report (also the JSON schema, version `SCHEMA`)."""
    nt = threads.get_num_threads()
    threads.apply()
    peaks = machine.peaks(nt)
    calib = machine.calibration(opts.calibration, nt) if opts.calibration else None
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    results = [bench_layer(layer, opts, peaks, progress, calib) for layer in layers]
    opt = asdict(opts)
    # 1-minute load average before and after: a busy machine explains a wide spread
    load = [load0, os.getloadavg()[0] if load0 is not None else None]
    return {
        "schema": SCHEMA,
        "suite": suite_name,
        "started": started,
        "load_average": load,
        "elapsed_s": time.perf_counter() - t0,
        "threads": nt,
        "machine": machine.info(),
        "peaks": peaks,
        "options": opt,
        "calibration": opts.calibration,
        "layers": results,
        "summary": summarize(results),
    }
