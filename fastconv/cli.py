"""The ``fastconv`` command: ``fastconv bench`` (benchmark, JSON, chart, regression gate; with
``--pass backward`` the gradients against torch's; with ``--model NAME [--train]`` whole seed
networks, inference or a training step), ``fastconv tune`` (measure the fastest algorithm per
layer into the tune cache) and ``fastconv info`` (version, CPU, caches, FMA width, threads,
BLAS, extensions, tune cache).

Only numpy and fastconv's own dependencies are needed: without rich (the ``bench`` extra) the
table and progress are plain text; ``--plot`` without matplotlib is a one-line error naming the
extra to install.

Every user error (unknown suite, malformed layer, unwritable path, bad baseline) is one line on
stderr and exit status 2; a detected performance regression is exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

EXIT_REGRESSION, EXIT_USAGE = 1, 2
RETRY_WAIT_S = 0.5  # first pause before the gate re-measures a flagged layer (doubles per retry)


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise UsageError(f"{message} (see {self.prog} --help)")


def _writable(path: str, what: str) -> Path:
    """Fail before a long run, not after it, if ``path`` cannot be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UsageError(f"{what} {path!r} is a directory, expected a file path")
    if not parent.is_dir():
        raise UsageError(f"{what} {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{what} {path!r} is not writable")
    return p


def _batches(text: str) -> list[int]:
    """``--batch 1,8`` (argparse type): positive integers, comma-separated."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 1,8, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return vals


def _batch_list(args) -> list[int] | None:
    return list(dict.fromkeys(b for group in args.batch for b in group)) if args.batch else None


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="fastconv", description="fastconv command line: benchmarks, tuning and machine info.")
    sub = ap.add_subparsers(dest="command", metavar="{bench,tune,info}")
    b = sub.add_parser(
        "bench",
        help="benchmark our algorithms and peers on a suite of layers",
        description="Benchmark every algorithm that supports each layer, auto, and the installed "
        "peers (torch, ONNX Runtime, NumPy), timed interleaved in one process.",
    )
    b.add_argument(
        "--suite",
        default=None,
        help="suite name (see --list-suites), path to a suite file, 'nets' (every distinct conv "
        "and pool of 10 well-known networks), a network (resnet18, mobilenetv2, ...) or "
        "nets:NAME[,NAME]; default: 'default'",
    )
    b.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="SPEC",
        help="one layer instead of a suite: N,C,H,W,Cout,k,s,p (or N,C,H,Cout,k,s,p), optional "
        ":g=G; pools max:N,C,H,W,k,s,p, avg:..., gap:N,C,H,W. Repeatable.",
    )
    b.add_argument("--list-suites", action="store_true", help="print the shipped suites and exit")
    b.add_argument(
        "--pass",
        dest="pass_",
        choices=("forward", "backward", "all"),
        default="forward",
        help="forward: the forward rows (default); backward: per conv layer the input gradient, "
        "the weight gradient and both + bias (fastconv.grad vs torch.nn.grad and autograd), per "
        "pool its input gradient, with GFLOP/s, %%peak and a closing summary; all: both",
    )
    b.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="time a whole seed network, torch original vs converted to fastconv "
        "(lenet, alexnet, nin, vgg11, resnet18, inception, densenet; repeatable; needs torch)",
    )
    b.add_argument(
        "--train",
        action="store_true",
        help="with --model: time a full training step (forward, loss, backward, SGD with momentum) "
        "instead of inference; default batch per model (lenet 64, resnet18 16)",
    )
    b.add_argument(
        "--batch",
        action="append",
        type=_batches,
        default=None,
        metavar="N[,N]",
        help="batch sizes, e.g. 1,8 (repeatable): a network suite's (default 1,8), --model's "
        "(default 1,8; with --train one per model), or every layer of a file suite / --layer at each size",
    )
    b.add_argument(
        "--ours",
        choices=("all", "kernels", "layer"),
        default=None,
        help="our rows: every algorithm, auto, conv2d() and the layer object (all; default for "
        "file suites), all but the layer object (kernels), or the prepared layer object "
        "only (layer; default for network suites)",
    )
    b.add_argument(
        "--algo",
        action="append",
        default=None,
        metavar="NAME",
        help="only these registered algorithms (repeatable); auto is always measured",
    )
    b.add_argument(
        "--peers",
        default=None,
        metavar="LIST",
        help="comma-separated peers among torch,onnxruntime,numpy, or 'none' (default: all "
        "installed; torch,onnxruntime for network suites; numpy with --save-baseline, the "
        "baseline's with --compare)",
    )
    b.add_argument("--no-peers", action="store_true", help="same as --peers none")
    b.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for every pool (fastconv.set_num_threads); default: all cores, or the baseline's with --compare",
    )
    b.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed samples per candidate (default 5; 40 with --save-baseline, the baseline's with --compare)",
    )
    b.add_argument(
        "--cooldown", type=float, default=None, help="seconds of rest when switching thread pools (default 0.25)"
    )
    b.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: time the calling thread's CPU time instead of wall time (with --threads 1 only): "
        "a comparison that other processes on a shared machine disturb much less",
    )
    b.add_argument(
        "--calibration",
        choices=("sgemm", "fma"),
        default=None,
        help="workload the gate divides kernel times by (default: the baseline's, else fma)",
    )
    b.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="element type of every layer (default float32; the baseline's with --compare)",
    )
    b.add_argument("--no-check", action="store_true", help="skip the float64 reference (error columns)")
    b.add_argument(
        "--json",
        metavar="PATH",
        help="write the full report as JSON (schema fastconv-bench/1; --pass backward: "
        "fastconv-bench-backward/1; --pass all: the forward report with the backward one under 'backward')",
    )
    b.add_argument("--plot", metavar="PATH.png", help="write a chart of per-layer rates")
    b.add_argument("--compare", metavar="BASELINE", help="regression gate: compare with a baseline JSON")
    b.add_argument(
        "--max-regression", default="20%", metavar="PCT", help="gate threshold on normalized time (default 20%%)"
    )
    b.add_argument("--retries", type=int, default=3, help="re-measure a regressing layer up to N times (default 3)")
    b.add_argument("--save-baseline", metavar="PATH", help="write this run as a baseline for --compare")
    b.add_argument("--quiet", action="store_true", help="no table or progress bar")
    t = sub.add_parser(
        "tune",
        help="time every eligible algorithm per layer and cache the fastest",
        description="Measure, per conv layer, every algorithm whose accuracy contract is allowed "
        "and keep the fastest in the tune cache (see `fastconv info`), which "
        "Conv2d(..., algo='tune') reads. Pools have one kernel and are skipped.",
    )
    t.add_argument("--suite", default=None, help="as for bench (default: nets)")
    t.add_argument("--layer", action="append", default=[], metavar="SPEC", help="as for bench (repeatable)")
    t.add_argument(
        "--batch",
        action="append",
        type=_batches,
        default=None,
        metavar="N[,N]",
        help="batch sizes (default: a network suite's 1,8; a file suite's own)",
    )
    t.add_argument(
        "--accuracy",
        choices=("contract", "strict", "any"),
        default="contract",
        help="candidates no looser than auto's choice (contract, default), than direct (strict), "
        "or every algorithm that runs the layer (any)",
    )
    t.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads (default: fastconv's default); each thread count has its own cache file",
    )
    t.add_argument("--repeats", type=int, default=None, help="timed samples per candidate (default 7)")
    t.add_argument("--force", action="store_true", help="measure again layers the cache already answers")
    t.add_argument("--json", metavar="PATH", help="also write the per-layer results as JSON")
    t.add_argument("--quiet", action="store_true", help="only the closing line")
    i = sub.add_parser("info", help="version, CPU, caches, FMA width, threads, BLAS, extensions, tune cache")
    i.add_argument("--json", action="store_true", help="print machine-readable JSON")
    i.add_argument("--peaks", action="store_true", help="also measure (or read cached) FMA peak and SGEMM rate")
    return ap


# --- info ------------------------------------------------------------------------------------
def _kib(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


def cmd_info(args) -> int:
    import fastconv
    from fastconv import registry, tune
    from fastconv.bench import machine

    d = machine.info()
    d["algorithms"] = {a.name: a.summary for a in registry.REGISTRY}
    d["pools"] = {k.name: k.summary for k in registry.POOL_REGISTRY}
    d["extensions"] = machine.extensions()
    nt = fastconv.get_num_threads()
    if args.peaks:
        d["peaks"] = machine.peaks(nt)
    # FMA units per cycle need a measured peak: this run's, else one cached for any thread count
    cached = machine.cached_peaks()
    peak_t = (
        (nt, d["peaks"]["fma_gflops"])
        if "peaks" in d
        else next(
            ((int(k), v["fma_gflops"]) for k, v in sorted(cached.items(), key=lambda kv: int(kv[0]))), (None, None)
        )
    )
    d["fma"] = machine.fma(peak_t[1], peak_t[0])
    path = tune.cache_path()
    d["tune_cache"] = {"path": str(path), "entries": len(tune._read(path))}
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    c, k, f = d["cpu"], d["caches"], d["fma"]
    lines = [
        f"fastconv {d['fastconv']} (python {d['python']}, {d['platform']})",
        f"CPU: {c['model']} — {c.get('physical_cores') or '?'} cores, {c['usable_cpus']} usable of "
        f"{c['logical_cpus']} logical CPUs",
        f"caches: L1d {_kib(k['L1d'])}, L1i {_kib(k['L1i'])}, L2 {_kib(k['L2'])}"
        + (f" (shared by {k['L2_shared_cpus']} CPUs)" if (k["L2_shared_cpus"] or 1) > 1 else "")
        + f", L3 {_kib(k['L3'])}"
        + (f" (shared by {k['L3_shared_cpus']} CPUs)" if k["L3_shared_cpus"] else "")
        + f"; {k['line_bytes'] or '?'}-byte lines",
        f"FMA: {f['cpu_bits']}-bit vectors ({f['cpu_lanes']} float32 lanes); kernels compiled for "
        f"{f['kernel_lanes'] or '?'} lanes; clock {f['ghz'] or '?'} GHz; "
        + (
            f"≈{f['per_cycle']} vector FMAs per cycle per core (FMA peak {peak_t[1]} GFLOP/s on {peak_t[0]} "
            f"threads; high if the core runs above the reported clock)"
            if f["per_cycle"]
            else "FMAs per cycle: run `fastconv info --peaks` to measure"
        ),
        f"SIMD: {' '.join(c['simd_flags']) or 'none reported'}",
        f"threads: {d['threads']} (fastconv.set_num_threads / FASTCONV_NUM_THREADS)",
        "OpenMP: "
        + (
            ", ".join(f"{o['internal_api']} ({o['num_threads']} threads) {o['filepath']}" for o in d["openmp"])
            or "no runtime loaded"
        ),
    ]
    for bl in d["blas"]:
        lines.append(
            f"BLAS: {bl['internal_api']} {bl['version']} ({bl['threading_layer']}, {bl['num_threads']} "
            f"threads, {bl['architecture']}) {bl['filepath']}"
        )
    lines.append("libraries: " + ", ".join(f"{k} {v}" for k, v in d["libraries"].items() if v))
    lines.append("compiled extensions: " + ", ".join(f"{k} {v}" for k, v in d["extensions"].items()))
    lines.append(
        f"tune cache ({d['threads']} threads): {path} ({d['tune_cache']['entries']} layers; "
        "fill it with `fastconv tune`)"
    )
    lines.append("algorithms: " + ", ".join(d["algorithms"]) + "; pools: " + ", ".join(d["pools"]))
    if "peaks" in d:
        lines.append(
            f"peaks ({d['threads']} threads): FMA {d['peaks']['fma_gflops']} GFLOP/s, "
            f"SGEMM {d['peaks']['sgemm_gflops']} GFLOP/s"
        )
    print("\n".join(lines))
    return 0


# --- bench -----------------------------------------------------------------------------------
def _layers(args):
    from fastconv.bench import suites

    batches = _batch_list(args)
    if args.layer:
        if args.suite:
            raise UsageError("give either --suite or --layer, not both")
        layers = [suites.parse_layer_arg(s) for s in args.layer]
        return "", suites.with_batches(layers, tuple(batches)) if batches else layers
    name = args.suite or suites.DEFAULT_SUITE
    return name, suites.load(name, batches=tuple(batches) if batches else None)


def _report_dtype(report: dict) -> str:
    """The element type a report's layers ran in (float32 for reports older than --dtype)."""
    return next((L["params"].get("dtype", "float32") for L in report["layers"]), "float32")


def _with_dtype(layers, dtype: str):
    return [dataclasses.replace(L, params=dataclasses.replace(L.params, dtype=dtype)) for L in layers]


def _peer_list(args, gate: bool, prof: dict, nets: bool = False) -> tuple[str, ...]:
    from fastconv.bench.peers import PEERS
    from fastconv.bench.runner import SUMMARY_PEERS

    if args.no_peers or (args.peers or "").strip() == "none":
        return ()
    if args.peers is None:
        # network suites: the summary's peers only (NumPy's conv is slow on hundreds of layers)
        return tuple(prof.get("peers", ())) if gate else SUMMARY_PEERS if nets else PEERS
    names = tuple(s.strip() for s in args.peers.split(",") if s.strip())
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise UsageError(f"--peers: unknown peer {bad[0]!r}; choose from {', '.join(PEERS)} or 'none'")
    return names


def _have(module: str) -> bool:
    from fastconv.bench.report import have

    return have(module)


class _Out:
    """Where the command's text goes: rich's console when rich is installed, else plain print.

    ``style`` is a rich style name; plain output drops it. Text is never parsed as rich markup,
    so a reason or a layer name with brackets prints as it is.
    """

    def __init__(self, err: bool = False):
        self.err, self.console = err, None
        if _have("rich"):
            from rich.console import Console

            self.console = Console(stderr=err, width=max(160, Console().width))

    def print(self, obj, style: str | None = None, wrap: bool = True) -> None:
        """``wrap=False``: one line however long (a summary line that scripts read last)."""
        if self.console is not None:
            self.console.print(obj, style=style, markup=False, highlight=False, soft_wrap=not wrap)
        else:
            print(obj, file=sys.stderr if self.err else sys.stdout, flush=True)

    def table(self, rep: dict) -> None:
        from fastconv.bench import report

        self.print(report.table(rep) if self.console is not None else report.plain_table(rep))


class _RichProgress:
    def __init__(self, progress):
        self.p, self.task = progress, None

    def layer(self, name: str, samples: int) -> None:
        if self.task is not None:
            self.p.remove_task(self.task)
        self.task = self.p.add_task(name, total=samples)

    def advance(self) -> None:
        self.p.advance(self.task)


class _PlainProgress:
    """One stderr line per layer (``[3/680] name``): what a long run shows without rich."""

    def __init__(self, total: int):
        self.total, self.i = total, 0

    def layer(self, name: str, samples: int) -> None:
        self.i += 1
        print(f"[{self.i}/{self.total}] {name}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        pass


def _run(layers, opts, suite_name: str, quiet: bool, run_suite=None):
    """``run_suite`` (the forward runner's unless given: the backward one) with a progress display."""
    from fastconv.bench import runner

    run_suite = run_suite or runner.run_suite
    if quiet:
        return run_suite(layers, opts, None, suite_name)
    if not _have("rich"):
        return run_suite(layers, opts, _PlainProgress(len(layers)), suite_name)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, transient=True, console=_Out(err=True).console) as p:
        return run_suite(layers, opts, _RichProgress(p), suite_name)


def _backward_peers(args) -> tuple[str, ...]:
    """The backward rows' peers: torch (the one with a CPU backward here) unless left out."""
    from fastconv.bench import backward

    if args.no_peers or (args.peers or "").strip() == "none":
        return ()
    if args.peers is None:
        return backward.PEERS
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    if args.pass_ == "backward" and not set(names) & set(backward.PEERS):
        raise UsageError(
            f"--pass backward compares with {', '.join(backward.PEERS)} only; --peers {args.peers} names none "
            "(--no-peers times ours alone)"
        )
    return tuple(n for n in names if n in backward.PEERS)


def _check_pass(args, gate: bool) -> None:
    """Options that only the forward rows have are refused where no forward row runs."""
    if args.pass_ == "forward":
        return
    if gate:
        raise UsageError(f"--pass {args.pass_}: the regression gate times the forward kernels only")
    if args.pass_ == "backward":
        for flag, value in (("--plot", args.plot), ("--ours", args.ours), ("--algo", args.algo)):
            if value:
                raise UsageError(f"{flag} applies to the forward rows: use --pass forward or --pass all")


def _list_suites() -> int:
    from fastconv.bench import suites

    print("\n".join(suites.available() + suites.net_suites()))
    return 0


def cmd_bench(args) -> int:
    import fastconv
    from fastconv import registry
    from fastconv.bench import backward, compare, report, runner, suites

    if args.list_suites:
        return _list_suites()
    if args.train and not args.model:
        raise UsageError("--train times a whole model's training step: give --model NAME")
    if args.model:
        if args.pass_ != "forward":
            raise UsageError(f"--pass {args.pass_} runs layer suites; a whole model's backward: --model NAME --train")
        return cmd_train(args) if args.train else cmd_models(args)
    gate = bool(args.compare or args.save_baseline)
    _check_pass(args, gate)
    if gate and args.ours not in (None, "kernels"):
        raise UsageError(f"--ours {args.ours}: the regression gate times the kernels only (--ours kernels)")
    base = None
    if args.compare:
        try:
            base = report.read_json(args.compare)
            compare.check_baseline(base)
        except OSError as e:
            raise UsageError(f"--compare: cannot read {args.compare!r}: {e.strerror or e}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--compare: {args.compare!r} is not a usable baseline: {e}") from None
        try:
            max_reg = compare.parse_percent(args.max_regression)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if args.suite is None and not args.layer:
            args.suite = base.get("suite") or None
    for path, what in ((args.json, "--json"), (args.plot, "--plot"), (args.save_baseline, "--save-baseline")):
        if path:
            _writable(path, what)
    if args.plot:
        if not args.plot.lower().endswith((".png", ".svg", ".pdf")):
            raise UsageError(f"--plot {args.plot!r}: the file name must end in .png, .svg or .pdf")
        try:
            report.need_matplotlib()  # before the run, not after minutes of it
        except report.MissingExtra as e:
            raise UsageError(str(e)) from None
    if args.algo:
        bad = [a for a in args.algo if a not in registry.names()]
        if bad:
            raise UsageError(f"--algo: unknown algorithm {bad[0]!r}; registered: {', '.join(registry.names())}")
    # the gate measures the way its baseline did (compare.GATE_PROFILE when saving a new one);
    # a baseline's options are JSON, hence Any
    prof: dict[str, Any] = (
        ({**base["options"], "threads": base["threads"]} if base else compare.GATE_PROFILE) if gate else {}
    )
    threads = args.threads if args.threads is not None else prof.get("threads")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {threads}")
        fastconv.set_num_threads(threads)
    if args.clock == "cpu" and (gate or threads != 1):
        raise UsageError("--clock cpu counts the calling thread only: use it with --threads 1, without the gate")
    repeats = args.repeats if args.repeats is not None else prof.get("repeats", 5)
    if repeats < 1:
        raise UsageError(f"--repeats must be a positive integer, got {repeats}")
    suite_name, layers = _layers(args)
    nets = bool(suite_name) and suites.is_net_suite(suite_name)
    base_dtype = _report_dtype(base) if base else None
    if base_dtype and args.dtype and args.dtype != base_dtype:
        raise UsageError(f"--dtype {args.dtype}: the baseline {args.compare!r} was measured in {base_dtype}")
    layers = _with_dtype(layers, args.dtype or base_dtype or "float32")
    cooldown = args.cooldown if args.cooldown is not None else prof.get("cooldown_s", runner.Options.cooldown_s)
    ours = "kernels" if gate else args.ours or ("layer" if nets else "all")
    opts = runner.Options(
        repeats=repeats,
        cooldown_s=cooldown,
        peers=_peer_list(args, gate, prof, nets),
        min_sample_s=prof.get("min_sample_s", 0.02),
        max_time_s=prof.get("max_time_s", 3.0),
        burst=prof.get("burst", 0),
        check=not args.no_check,
        calibration=args.calibration or prof.get("calibration", "fma"),
        algorithms=tuple(args.algo) if args.algo else None,
        ours=ours,
        clock=args.clock,
    )
    rep: dict | None = None
    brep: dict | None = None
    if args.pass_ in ("forward", "all"):
        rep = _run(layers, opts, suite_name, args.quiet)
    if args.save_baseline:
        assert rep is not None  # the gate runs the forward rows (_check_pass)
        # a baseline that caught a slow moment would flag every later run: keep the best of two
        compare.merge_best(rep, _run(layers, opts, suite_name, True))
        rep["summary"] = runner.summarize(rep["layers"])
    if args.pass_ in ("backward", "all"):
        bopts = dataclasses.replace(opts, peers=_backward_peers(args), calibration=None, algorithms=None)
        brep = _run(layers, bopts, suite_name, args.quiet, backward.run_suite)
    reps = [r for r in (rep, brep) if r is not None]
    out = _Out()
    if not args.quiet:
        for r in reps:
            out.table(r)
            for line in report.skipped_lines(r):
                out.print(line, style="dim")
        spreads = [e["spread"] for L in rep["layers"] for e in L["entries"]] if rep else []
        spreads += backward.spreads(brep) if brep else []
        last = reps[-1]
        load, cores = last["load_average"][-1], last["machine"]["cpu"]["usable_cpus"]
        if spreads and sorted(spreads)[len(spreads) // 2] > 0.15:
            out.print(
                f"warning: noisy run (median spread {100 * sorted(spreads)[len(spreads) // 2]:.0f}%"
                + (f", load average {load:.1f} on {cores} CPUs" if load is not None else "")
                + "): other processes share the cores; rerun when idle or compare with --threads 1",
                style="yellow",
            )
        out.print(
            f"{sum(r['elapsed_s'] for r in reps):.0f} s; peaks "
            f"{'cached in ' + last['peaks']['cached'] if last['peaks'].get('cached') else 'measured now'}",
            style="dim",
        )
    if args.json:
        # --pass all: the forward report, with the backward one under "backward"
        report.write_json({**rep, "backward": brep} if rep and brep else reps[0], args.json)
    if args.plot and rep:
        report.plot(rep, args.plot)
    if args.save_baseline:
        assert rep is not None
        report.write_json(rep, args.save_baseline)
        print(f"baseline written to {args.save_baseline}")
    if base is None:
        if not gate:  # the verdicts, last
            if rep:
                out.print(runner.summary_line(rep["summary"]), style="bold", wrap=False)
            if brep:
                out.print(backward.summary_line(brep["summary"]), style="bold", wrap=False)
        return 0
    return _gate(base, rep, layers, opts, suite_name, max_reg, args, out)


# --- tune ------------------------------------------------------------------------------------
def cmd_tune(args) -> int:
    """``fastconv tune``: `fastconv.tune.tune_layer` over every conv layer of a suite."""
    import fastconv
    from fastconv import tune

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {args.threads}")
        fastconv.set_num_threads(args.threads)
    if args.repeats is not None and args.repeats < 1:
        raise UsageError(f"--repeats must be a positive integer, got {args.repeats}")
    if args.json:
        _writable(args.json, "--json")
    if not args.suite and not args.layer:
        args.suite = "nets"
    _, layers = _layers(args)
    convs = [(L.name, L.params) for L in layers if not L.is_pool]
    if not convs:
        raise UsageError("no conv layer to tune (pools have a single kernel each)")
    path = tune.cache_path()

    def show(row: dict) -> None:
        if args.quiet:
            return
        note = "cached" if row["cached"] else "measured"
        gain = f", {row['speedup']:.2f}x auto's" if row["speedup"] and row["choice"] != row["auto"] else ""
        print(
            f"{row['name']:<44} {row['describe']:<52} {row['choice']:<12} (auto {row['auto']}{gain}; {note})",
            flush=True,
        )

    t0 = time.perf_counter()
    rows = tune.tune_layers(convs, args.accuracy, force=args.force, repeats=args.repeats or tune.REPEATS, report=show)
    changed = [r for r in rows if r["choice"] != r["auto"]]
    gains = [r["speedup"] for r in changed if r["speedup"]]
    geo = f" (geomean speed-up over auto on those {statistics.geometric_mean(gains):.2f}x)" if gains else ""
    print(
        f"tuned {len(rows)} conv layers ({sum(not r['cached'] for r in rows)} measured now) at "
        f"{fastconv.get_num_threads()} threads, accuracy {args.accuracy}, in {time.perf_counter() - t0:.0f} s: "
        f"{len(changed)} differ from auto{geo}; cache {path}"
    )
    if args.json:
        _writable(args.json, "--json").write_text(
            json.dumps(
                {
                    "schema": "fastconv-tune-run/1",
                    "cache": str(path),
                    "threads": fastconv.get_num_threads(),
                    "accuracy": args.accuracy,
                    "layers": rows,
                },
                indent=1,
            )
        )
    return 0


def cmd_models(args) -> int:
    """``fastconv bench --model NAME``: whole-model inference, torch original vs converted."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("--model needs torch: pip install 'torch==2.13.0'") from None
    from fastconv import zoo

    unknown = [m for m in args.model if m not in zoo.model_names()]
    if unknown:
        raise UsageError(f"--model: unknown model {unknown[0]!r}; known: {', '.join(zoo.model_names())}")
    batches = _batch_list(args) or [1, 8]
    threads = args.threads if args.threads is not None else 2
    if threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {threads}")
    rows = []
    for name in args.model:
        for batch in batches:
            t = zoo.time_model(name, batch=batch, threads=threads, repeats=args.repeats or 5)
            rows.append(t.as_dict())
            print(t.describe(), flush=True)
    if args.json:
        import json

        _writable(args.json, "--json").write_text(json.dumps({"schema": "fastconv-models/1", "models": rows}, indent=1))
    return 0


def cmd_train(args) -> int:
    """``fastconv bench --model NAME --train``: one training step, torch original vs converted."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("--model needs torch: pip install 'torch==2.13.0'") from None
    from fastconv import zoo
    from fastconv.bench import runner, train

    unknown = [m for m in args.model if m not in zoo.model_names()]
    if unknown:
        raise UsageError(f"--model: unknown model {unknown[0]!r}; known: {', '.join(zoo.model_names())}")
    threads = args.threads if args.threads is not None else 2
    if threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {threads}")
    repeats = args.repeats if args.repeats is not None else 5
    if repeats < 1:
        raise UsageError(f"--repeats must be a positive integer, got {repeats}")
    if args.clock == "cpu" and threads != 1:
        raise UsageError("--clock cpu counts the calling thread only: use it with --threads 1, without the gate")
    if args.json:
        _writable(args.json, "--json")
    rows = []
    for name in args.model:
        for batch in _batch_list(args) or [train.DEFAULT_BATCH.get(name, 8)]:
            t = train.time_train_step(
                name, batch=batch, threads=threads, repeats=repeats, clock=runner.CLOCKS[args.clock]
            )
            rows.append(t.as_dict())
            print(t.describe(), flush=True)
    if args.json:
        _writable(args.json, "--json").write_text(json.dumps({"schema": "fastconv-train/1", "models": rows}, indent=1))
    return 0


def _gate(base, rep, layers, opts, suite_name, max_reg, args, out) -> int:
    from fastconv.bench import compare

    regs, _, notes = compare.compare(base, rep, max_reg)
    for attempt in range(args.retries):
        if not regs:
            break
        # spaced out (0.5, 1, 2 s): a whole gate run takes ~0.5 s, and the machine's slow spells
        # (measured: a shift that slowed memory-bound kernels ~30% for seconds) outlast it
        time.sleep(RETRY_WAIT_S * 2**attempt)
        again = [L for L in layers if L.name in {c.layer for c in regs}]
        # twice the samples: more chances to catch calls no other process interrupted
        retry = _run(again, dataclasses.replace(opts, repeats=2 * opts.repeats), suite_name, True)
        compare.merge_best(rep, retry)
        regs, _, notes = compare.compare(base, rep, max_reg)
    regs, changes, notes = compare.compare(base, rep, max_reg)
    for n in notes:
        print(f"note: {n}")
    worst = max(changes, key=lambda c: c.ratio, default=None)
    if regs:
        for c in sorted(regs, key=lambda c: -c.ratio):
            second = f", {100 * (c.ratio2 - 1):+.0f}% vs the NumPy conv" if c.ratio2 is not None else ""
            print(
                f"REGRESSION {c.layer} {c.name}: {100 * (c.ratio - 1):+.0f}% normalized time{second} "
                f"({c.base:.4g} -> {c.now:.4g}, limit +{100 * max_reg:.0f}%)"
            )
        print(f"gate FAILED: {len(regs)} of {len(changes)} kernels regressed by more than {100 * max_reg:.0f}%")
        return EXIT_REGRESSION
    print(
        f"gate passed: {len(changes)} kernels within +{100 * max_reg:.0f}% of the baseline"
        + (f" (worst {worst.layer} {worst.name} {100 * (worst.ratio - 1):+.0f}%)" if worst else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    from fastconv.bench.compare import BaselineError
    from fastconv.bench.suites import SuiteError

    ap = _parser()
    try:
        args = ap.parse_args(argv)
        if args.command is None:
            ap.print_help()
            return EXIT_USAGE
        return {"bench": cmd_bench, "tune": cmd_tune, "info": cmd_info}[args.command](args)
    except UsageError as e:
        print(f"fastconv: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (SuiteError, BaselineError) as e:
        print(f"fastconv: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"fastconv: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastconv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
