"""Run a suite: for each layer, every registered algorithm that supports it, ``auto``, and the
peers, timed interleaved (`timer.measure`), with prepare time, errors against the float64
reference and the derived rates. Returns plain dicts: the JSON report *is* this structure.

Our kernels are measured through the public plan API — ``dispatch.select`` →
``dispatch.Plan`` (prepare, timed on its own) → ``plan.run(x, out)`` — iterating
``dispatch.REGISTRY``, so a new algorithm shows up without touching this file. One more row,
``conv2d()``, times the drop-in function itself (weights prepared on every call), which is what
torch's ``F.conv2d`` row does too.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import numpy as np

from .. import dispatch, reference, threads
from ..params import ConvParams, PoolParams
from . import machine, peers as _peers
from .suites import Layer
from .timer import Candidate, measure

SCHEMA = "fastconv-bench/1"


@dataclass
class Options:
    repeats: int = 5
    min_sample_s: float = 0.02
    max_time_s: float = 3.0          # per candidate and layer; slow ones get fewer (>= 3) samples
    cooldown_s: float = 0.25
    peers: tuple[str, ...] = _peers.PEERS
    check: bool = True               # errors vs the float64 reference
    calibration: str | None = "fma"
    algorithms: tuple[str, ...] | None = None   # None: every registered algorithm
    seed: int = 0
    burst: int = 0                   # >0: a sample is the fastest of >= burst back-to-back calls


class Progress(Protocol):
    def layer(self, name: str, samples: int) -> None: ...
    def advance(self) -> None: ...


@dataclass
class _Entry:
    name: str
    role: str                        # "algorithm", "auto", "one-shot" or "peer"
    fn: Callable[[], object]
    pool: str
    prepare_s: float = 0.0
    chosen: str | None = None        # auto, one-shot: the algorithm it picked
    workspace_bytes: int | None = None
    output: Callable[[], np.ndarray] = field(default=lambda: None)


def _data(p, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, p.input_shape).astype(p.dtype)
    if isinstance(p, PoolParams):
        return x, None, None
    fan_in = p.c_in_per_group * p.kh * p.kw
    w = (rng.uniform(-1, 1, p.weight_shape) / np.sqrt(fan_in)).astype(p.dtype)
    b = rng.uniform(-0.1, 0.1, p.c_out).astype(p.dtype)
    return x, w, b


def _timed(make: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    obj = make()
    return obj, time.perf_counter() - t0


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
    wanted = [a for a in dispatch.REGISTRY if opts.algorithms is None or a.name in opts.algorithms]
    plans = [(a.name, "algorithm", a) for a in wanted]
    plans.append(("auto", "auto", dispatch.select(p, "auto")))
    for name, role, alg in plans:
        reason = alg.supports(p)
        if reason is None and alg.workspace_bytes(p) > dispatch.get_workspace_limit():
            reason = f"workspace {alg.workspace_bytes(p):,} B over the limit"
        if reason is not None:
            skipped.append({"name": name, "reason": reason})
            continue
        dispatch.Plan(alg, w, b, p)                       # first prepare may compile: not timed
        plan, prep = _timed(lambda: dispatch.Plan(alg, w, b, p))
        pick = _placements(x, p.out_shape, p.dtype, 4 if opts.burst else 1)
        last = {}

        def call(plan=plan, pick=pick, last=last):
            xi, oi = pick()
            plan.run(xi, oi)
            last["out"] = oi
        entries.append(_Entry(name, role, call, "fastconv", prep,
                              alg.name if role == "auto" else None, alg.workspace_bytes(p),
                              output=(lambda last=last: last["out"])))
    one = dispatch.select(p, "auto", one_shot=True)  # the call fastconv.conv2d makes
    if not p.symmetric_padding:
        skipped.append({"name": "conv2d()", "reason": f"padding {p.pad} is asymmetric; "
                        "torch.nn.functional's signature cannot express it"})
    elif one.workspace_bytes(p) > dispatch.get_workspace_limit():
        skipped.append({"name": "conv2d()", "reason": f"workspace {one.workspace_bytes(p):,} B over the limit"})
    else:
        entries.append(_one_shot(p, x, w, b, one))
    return entries


def _one_shot(p: ConvParams, x, w, b, alg: dispatch.Algorithm) -> _Entry:
    """``fastconv.conv2d`` as a drop-in user calls it: validation, the one-shot auto choice (``alg``),
    prepare and run, a new output every call — the like-for-like row against torch's ``F.conv2d``."""
    from .. import functional
    kw = p.functional_kwargs()
    last = {}

    def call():
        last["out"] = functional.conv2d(x, w, b, **kw)
    return _Entry("conv2d()", "one-shot", call, "fastconv", 0.0, alg.name, alg.workspace_bytes(p),
                  output=lambda: last["out"])


def _ours_pool(p: PoolParams, x, opts: Options) -> list[_Entry]:
    k = dispatch.POOLS[p.kind]
    pick = _placements(x, p.out_shape, p.dtype, 4 if opts.burst else 1)
    last = {}

    def call():
        xi, oi = pick()
        k.run(xi, p, oi)
        last["out"] = oi
    return [_Entry(p.kind, "algorithm", call, "fastconv", 0.0, None, 0, output=lambda: last["out"])]


def _peer_entries(p, x, w, b, opts: Options, skipped: list) -> list[_Entry]:
    entries = []
    for name in opts.peers:
        try:
            _peers.load(name)
            fn, prep = _timed(lambda: _peers.make(name, p, x, w, b, threads.get_num_threads()))
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


def bench_layer(layer: Layer, opts: Options, peaks: dict, progress: Progress | None = None,
                calib: Callable[[], None] | None = None) -> dict:
    p = layer.params
    is_pool = isinstance(p, PoolParams)
    x, w, b = _data(p, opts.seed)
    skipped: list[dict] = []
    entries = _ours_pool(p, x, opts) if is_pool else _ours_conv(p, x, w, b, opts, skipped)
    entries += _peer_entries(p, x, w, b, opts, skipped)
    if progress:
        progress.layer(layer.name, len(entries) * opts.repeats)
    for e in entries:       # warm-up: JIT compile, first touch, and lazily loaded libraries ...
        e.fn()
    threads.apply()         # ... such as a BLAS loaded lazily on a kernel's first call: knob it too
    if calib:
        calib()
    cands = [Candidate(e.name, e.fn, e.pool) for e in entries]
    calibration = Candidate("calibration", calib, "calibration") if calib else None
    timings = measure(cands, opts.repeats, opts.min_sample_s, opts.max_time_s, opts.cooldown_s, calibration,
                      tick=progress.advance if progress else None, warmed=True,
                      burst=opts.burst)
    ref = _reference(p, x, w, b) if opts.check else None
    work = p.input_bytes if is_pool else p.flops
    rows = []
    for e in entries:
        t = timings[e.name]
        row = {"name": e.name, "role": e.role, "median_s": t.median, "min_s": t.min, "spread": t.spread,
               "samples": len(t.samples), "prepare_s": e.prepare_s}
        if calib:
            row["norm"] = t.norm                                        # median of per-round ratios
            row["norm_min"] = t.min / timings["calibration"].min        # ratio of the fastest samples
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
    if anchor is not None:      # second gate normalization: the NumPy conv of the same layer
        for r in rows:
            if r["role"] != "peer":
                r["norm_peer"] = r["min_s"] / anchor["min_s"]
    for r in rows:
        if r["role"] != "peer":
            r["vs"] = {q: by_name[q]["median_s"] / r["median_s"] for q in by_name if by_name[q]["role"] == "peer"}
    result = {"name": layer.name, "params": params_dict(p), "describe": p.describe(),
              "unit": "GB/s" if is_pool else "GFLOP/s", "work": work, "entries": rows, "skipped": skipped}
    if calib:
        result["calibration_s"] = timings["calibration"].median
    return result


def run_suite(layers: list[Layer], opts: Options, progress: Progress | None = None,
              suite_name: str = "") -> dict:
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
    return {"schema": SCHEMA, "suite": suite_name, "started": started, "load_average": load,
            "elapsed_s": time.perf_counter() - t0, "threads": nt, "machine": machine.info(),
            "peaks": peaks, "options": opt, "calibration": opts.calibration, "layers": results}
