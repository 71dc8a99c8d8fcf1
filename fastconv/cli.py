"""The ``fastconv`` command: ``fastconv bench`` (benchmark, JSON, chart, regression gate) and
``fastconv info`` (version, CPU, threads, BLAS, extensions, JIT cache).

Every user error (unknown suite, malformed layer, unwritable path, bad baseline) is one line on
stderr and exit status 2; a detected performance regression is exit status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

EXIT_REGRESSION, EXIT_USAGE = 1, 2
RETRY_WAIT_S = 0.5     # first pause before the gate re-measures a flagged layer (doubles per retry)


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


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="fastconv", description="fastconv command line: benchmarks and machine info.")
    sub = ap.add_subparsers(dest="command", metavar="{bench,info}")
    b = sub.add_parser("bench", help="benchmark our algorithms and peers on a suite of layers",
                       description="Benchmark every algorithm that supports each layer, auto, and the installed "
                                   "peers (torch, ONNX Runtime, NumPy), timed interleaved in one process.")
    b.add_argument("--suite", default=None,
                   help="suite name (see --list-suites) or path to a suite file; default: 'default'")
    b.add_argument("--layer", action="append", default=[], metavar="SPEC",
                   help="one layer instead of a suite: N,C,H,W,Cout,k,s,p (or N,C,H,Cout,k,s,p), optional "
                        ":g=G; pools max:N,C,H,W,k,s,p, avg:..., gap:N,C,H,W. Repeatable.")
    b.add_argument("--list-suites", action="store_true", help="print the shipped suites and exit")
    b.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="time a whole seed network, torch original vs converted to fastconv "
                        "(lenet, alexnet, nin, vgg11, resnet18, inception, densenet; repeatable; needs torch)")
    b.add_argument("--batch", action="append", type=int, default=None, metavar="N",
                   help="with --model: batch sizes (repeatable; default 1 and 8)")
    b.add_argument("--algo", action="append", default=None, metavar="NAME",
                   help="only these registered algorithms (repeatable); auto is always measured")
    b.add_argument("--peers", default=None, metavar="LIST",
                   help="comma-separated peers among torch,onnxruntime,numpy, or 'none' "
                        "(default: all installed; numpy with --save-baseline, the baseline's with --compare)")
    b.add_argument("--no-peers", action="store_true", help="same as --peers none")
    b.add_argument("--threads", type=int, default=None,
                   help="threads for every pool (fastconv.set_num_threads); default: all cores, or the "
                        "baseline's with --compare")
    b.add_argument("--repeats", type=int, default=None,
                   help="timed samples per candidate (default 5; 40 with --save-baseline, the baseline's with --compare)")
    b.add_argument("--cooldown", type=float, default=None,
                   help="seconds of rest when switching thread pools (default 0.25)")
    b.add_argument("--calibration", choices=("sgemm", "fma"), default=None,
                   help="workload the gate divides kernel times by (default: the baseline's, else fma)")
    b.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="element type of every layer (default float32; the baseline's with --compare)")
    b.add_argument("--no-check", action="store_true", help="skip the float64 reference (error columns)")
    b.add_argument("--json", metavar="PATH", help="write the full report as JSON (schema fastconv-bench/1)")
    b.add_argument("--plot", metavar="PATH.png", help="write a chart of per-layer rates")
    b.add_argument("--compare", metavar="BASELINE", help="regression gate: compare with a baseline JSON")
    b.add_argument("--max-regression", default="20%", metavar="PCT",
                   help="gate threshold on normalized time (default 20%%)")
    b.add_argument("--retries", type=int, default=3, help="re-measure a regressing layer up to N times (default 3)")
    b.add_argument("--save-baseline", metavar="PATH", help="write this run as a baseline for --compare")
    b.add_argument("--quiet", action="store_true", help="no table or progress bar")
    i = sub.add_parser("info", help="version, CPU, threads, BLAS, compiled extensions, JIT cache")
    i.add_argument("--json", action="store_true", help="print machine-readable JSON")
    i.add_argument("--peaks", action="store_true", help="also measure (or read cached) FMA peak and SGEMM rate")
    return ap


# --- info ------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    import fastconv
    from fastconv import dispatch
    from fastconv.bench import machine
    d = machine.info()
    d["algorithms"] = {a.name: f"{a.language}: {a.summary}" for a in dispatch.REGISTRY}
    d["pools"] = {k.name: f"{k.language}: {k.summary}" for k in dispatch.POOL_REGISTRY}
    d["extensions"] = machine.extensions()
    if args.peaks:
        d["peaks"] = machine.peaks(fastconv.get_num_threads())
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    c = d["cpu"]
    lines = [f"fastconv {d['fastconv']} (python {d['python']}, {d['platform']})",
             f"CPU: {c['model']} — {c['usable_cpus']} usable of {c['logical_cpus']} logical CPUs",
             f"SIMD: {' '.join(c['simd_flags']) or 'none reported'}",
             f"threads: {d['threads']} (fastconv.set_num_threads / FASTCONV_NUM_THREADS)",
             "OpenMP: " + (", ".join(f"{o['internal_api']} ({o['num_threads']} threads) {o['filepath']}"
                                     for o in d["openmp"]) or "no runtime loaded")]
    for bl in d["blas"]:
        lines.append(f"BLAS: {bl['internal_api']} {bl['version']} ({bl['threading_layer']}, {bl['num_threads']} "
                     f"threads, {bl['architecture']}) {bl['filepath']}")
    lines.append("libraries: " + ", ".join(f"{k} {v}" for k, v in d["libraries"].items() if v))
    lines.append("compiled extensions: " + ", ".join(f"{k} {v}" for k, v in d["extensions"].items()))
    lines.append("JIT: none — every kernel is compiled ahead of time (Cython/C), so there is no JIT cache")
    lines.append("algorithms: " + ", ".join(d["algorithms"]) + "; pools: " + ", ".join(d["pools"]))
    if "peaks" in d:
        lines.append(f"peaks ({d['threads']} threads): FMA {d['peaks']['fma_gflops']} GFLOP/s, "
                     f"SGEMM {d['peaks']['sgemm_gflops']} GFLOP/s")
    print("\n".join(lines))
    return 0


# --- bench -----------------------------------------------------------------------------------
def _layers(args):
    from fastconv.bench import suites
    if args.layer:
        if args.suite:
            raise UsageError("give either --suite or --layer, not both")
        return "", [suites.parse_layer_arg(s) for s in args.layer]
    name = args.suite or suites.DEFAULT_SUITE
    return name, suites.load(name)


def _report_dtype(report: dict) -> str:
    """The element type a report's layers ran in (float32 for reports older than --dtype)."""
    return next((L["params"].get("dtype", "float32") for L in report["layers"]), "float32")


def _with_dtype(layers, dtype: str):
    from fastconv.bench.suites import Layer
    return [Layer(L.name, dataclasses.replace(L.params, dtype=dtype)) for L in layers]


def _peer_list(args, gate: bool, prof: dict) -> tuple[str, ...]:
    from fastconv.bench.peers import PEERS
    if args.no_peers or (args.peers or "").strip() == "none":
        return ()
    if args.peers is None:
        return tuple(prof.get("peers", ())) if gate else PEERS
    names = tuple(s.strip() for s in args.peers.split(",") if s.strip())
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise UsageError(f"--peers: unknown peer {bad[0]!r}; choose from {', '.join(PEERS)} or 'none'")
    return names


class _RichProgress:
    def __init__(self, progress):
        self.p, self.task = progress, None

    def layer(self, name: str, samples: int) -> None:
        if self.task is not None:
            self.p.remove_task(self.task)
        self.task = self.p.add_task(name, total=samples)

    def advance(self) -> None:
        self.p.advance(self.task)


def _run(layers, opts, suite_name: str, quiet: bool):
    from fastconv.bench import runner
    if quiet:
        return runner.run_suite(layers, opts, None, suite_name)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    cols = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, transient=True, console=_console(err=True)) as p:
        return runner.run_suite(layers, opts, _RichProgress(p), suite_name)


def _console(err: bool = False):
    from rich.console import Console
    return Console(stderr=err, width=max(160, Console().width))


def cmd_bench(args) -> int:
    import fastconv
    from fastconv.bench import compare, report, runner, suites
    if args.list_suites:
        print("\n".join(suites.available()))
        return 0
    if args.model:
        return cmd_models(args)
    gate = bool(args.compare or args.save_baseline)
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
    if args.plot and not args.plot.lower().endswith((".png", ".svg", ".pdf")):
        raise UsageError(f"--plot {args.plot!r}: the file name must end in .png, .svg or .pdf")
    if args.algo:
        from fastconv import dispatch
        bad = [a for a in args.algo if a not in dispatch.names()]
        if bad:
            raise UsageError(f"--algo: unknown algorithm {bad[0]!r}; registered: {', '.join(dispatch.names())}")
    # the gate measures the way its baseline did (compare.GATE_PROFILE when saving a new one)
    prof = ({**base["options"], "threads": base["threads"]} if base else compare.GATE_PROFILE) if gate else {}
    threads = args.threads if args.threads is not None else prof.get("threads")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {threads}")
        fastconv.set_num_threads(threads)
    repeats = args.repeats if args.repeats is not None else prof.get("repeats", 5)
    if repeats < 1:
        raise UsageError(f"--repeats must be a positive integer, got {repeats}")
    suite_name, layers = _layers(args)
    base_dtype = _report_dtype(base) if base else None
    if base_dtype and args.dtype and args.dtype != base_dtype:
        raise UsageError(f"--dtype {args.dtype}: the baseline {args.compare!r} was measured in {base_dtype}")
    layers = _with_dtype(layers, args.dtype or base_dtype or "float32")
    cooldown = args.cooldown if args.cooldown is not None else prof.get("cooldown_s", runner.Options.cooldown_s)
    opts = runner.Options(repeats=repeats, cooldown_s=cooldown, peers=_peer_list(args, gate, prof),
                          min_sample_s=prof.get("min_sample_s", 0.02), max_time_s=prof.get("max_time_s", 3.0),
                          burst=prof.get("burst", 0),
                          check=not args.no_check, calibration=args.calibration or prof.get("calibration", "fma"),
                          algorithms=tuple(args.algo) if args.algo else None)
    rep = _run(layers, opts, suite_name, args.quiet)
    if args.save_baseline:
        # a baseline that caught a slow moment would flag every later run: keep the best of two
        compare.merge_best(rep, _run(layers, opts, suite_name, True))
    out = _console()
    if not args.quiet:
        out.print(report.table(rep))
        for line in report.skipped_lines(rep):
            out.print(f"[dim]{line}[/dim]", highlight=False)
        spreads = [e["spread"] for L in rep["layers"] for e in L["entries"]]
        load, cores = rep["load_average"][-1], rep["machine"]["cpu"]["usable_cpus"]
        if spreads and sorted(spreads)[len(spreads) // 2] > 0.15:
            out.print(f"[yellow]warning: noisy run (median spread {100 * sorted(spreads)[len(spreads) // 2]:.0f}%"
                      + (f", load average {load:.1f} on {cores} CPUs" if load is not None else "")
                      + "): other processes share the cores; rerun when idle or compare with --threads 1[/yellow]")
        out.print(f"[dim]{rep['elapsed_s']:.0f} s; peaks {'cached in ' + rep['peaks']['cached'] if rep['peaks'].get('cached') else 'measured now'}[/dim]")
    if args.json:
        report.write_json(rep, args.json)
    if args.plot:
        report.plot(rep, args.plot)
    if args.save_baseline:
        report.write_json(rep, args.save_baseline)
        print(f"baseline written to {args.save_baseline}")
    if base is None:
        return 0
    return _gate(base, rep, layers, opts, suite_name, max_reg, args, out)


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
    batches = args.batch or [1, 8]
    if min(batches) < 1:
        raise UsageError(f"--batch must be positive, got {min(batches)}")
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


def _gate(base, rep, layers, opts, suite_name, max_reg, args, out) -> int:
    from fastconv.bench import compare
    regs, _, notes = compare.compare(base, rep, max_reg)
    for attempt in range(args.retries):
        if not regs:
            break
        # spaced out (0.5, 1, 2 s): a whole gate run takes ~0.5 s, and the machine's slow spells
        # (measured: a shift that slowed memory-bound kernels ~30% for seconds) outlast it
        time.sleep(RETRY_WAIT_S * 2 ** attempt)
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
            print(f"REGRESSION {c.layer} {c.name}: {100 * (c.ratio - 1):+.0f}% normalized time{second} "
                  f"({c.base:.4g} -> {c.now:.4g}, limit +{100 * max_reg:.0f}%)")
        print(f"gate FAILED: {len(regs)} of {len(changes)} kernels regressed by more than {100 * max_reg:.0f}%")
        return EXIT_REGRESSION
    print(f"gate passed: {len(changes)} kernels within +{100 * max_reg:.0f}% of the baseline"
          + (f" (worst {worst.layer} {worst.name} {100 * (worst.ratio - 1):+.0f}%)" if worst else ""))
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
        return cmd_bench(args) if args.command == "bench" else cmd_info(args)
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
