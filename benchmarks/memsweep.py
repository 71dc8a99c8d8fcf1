"""Memory-limit sweep: every convolution algorithm and pool, run in child processes under an
address-space limit (RLIMIT_AS) from no headroom at all to more than the call needs. Each run
must end in a result or a MemoryError; a child killed by a signal or exiting on its own (libgomp's
"Thread creation failed", OpenBLAS's "Memory allocation still failed") is a dead run.

    python benchmarks/memsweep.py [--steps 32] [--via api|kernel] [--cold] [--ops direct,max,...]
                                  [--small] [--dtype float64] [--threads N]

Per op, a few children first find what the call needs (the least headroom with which it
succeeds, within 1/16: doubling, then bisecting); then ``--steps`` children each do: import, one
small warm-up call of the same op (``--cold``: only its kernel module imported), allocate the
layer's inputs, set RLIMIT_AS to the address space in use + headroom (from 0 to 1.25 x the need,
at least ``--min-top`` MiB, evenly spaced), run the call, report. ``--via api`` calls
``fastconv.conv2d`` / ``fastconv.max_pool2d`` ... (the output is allocated under the limit too);
``--via kernel`` calls the kernel module (prepare, a workspace of ``workspace_bytes``, run; the
output allocated before the limit).

Layers: 8x256x56x56 -> 256, 3x3, padding 1 for the convolutions (1x1 for pointwise), 8x256x56x56
for the pools (``--small``: 2x32x28x28, the test's size). Prints one line per op (``.`` ok,
``M`` MemoryError, ``E`` another exception, ``X`` dead, ``S`` the child failed before setting the
limit: not a run) and ``N runs, K dead``; exits 1 if any run died.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

CONVS = ("direct", "im2col", "pointwise", "winograd", "winograd_f2", "winograd_f4")
POOLS = ("max", "max_indices", "avg", "avg_3x3s1", "adaptive_avg", "global_avg")
OPS = CONVS + POOLS


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _vm_peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmPeak in /proc/self/status")


def _shapes(op: str, small: bool):
    n, c, hw = (2, 32, 28) if small else (8, 256, 56)
    return n, c, hw


def _make_call(op: str, via: str, small: bool, warm: bool):
    """(inputs allocated now, call) for op; ``warm``: the small warm-up layer."""
    import numpy as np

    import fastconv
    from fastconv.params import ConvParams, PoolParams

    if via == "kernel":  # (imported here: --via api also runs on older fastconv versions)
        from fastconv import registry, threads
    n, c, hw = (1, 8, 12) if warm else _shapes(op, small)
    rng = np.random.default_rng(0)
    dt = np.dtype(os.environ.get("MEMSWEEP_DTYPE", "float32"))
    x = rng.standard_normal((n, c, hw, hw)).astype(dt)
    nt = threads.get_num_threads() if via == "kernel" else None
    if op in CONVS:
        k = 1 if op == "pointwise" else 3
        pad = 0 if k == 1 else 1
        w = rng.standard_normal((c, c, k, k)).astype(dt)
        b = rng.standard_normal(c).astype(dt)
        if via == "api":
            return (x, w, b), lambda: fastconv.conv2d(x, w, b, padding=pad, algo=op)
        kern = registry.get(op)
        p = ConvParams.from_layer(n, c, hw, c, k, padding=pad, dtype=dt.name)
        out = np.empty(p.out_shape, dt)

        def call():
            packed = kern.kernel.prepare(w, b, p, **kern.options)
            ws = np.empty(kern.kernel.workspace_bytes(p, nt, **kern.options), np.uint8)
            kern.kernel.run(x, packed, p, out, ws, nt, **kern.options)

        return (x, w, b, out), call
    if via == "api":
        calls = {
            "max": lambda: fastconv.max_pool2d(x, 3, 2, 1),
            "max_indices": lambda: fastconv.max_pool2d(x, 3, 2, 1, return_indices=True),
            "avg": lambda: fastconv.avg_pool2d(x, 3, 2, 1),
            "avg_3x3s1": lambda: fastconv.avg_pool2d(x, 3, 1, 1),
            "adaptive_avg": lambda: fastconv.adaptive_avg_pool2d(x, 7),
            "global_avg": lambda: fastconv.adaptive_avg_pool2d(x, 1),
        }
        return (x,), calls[op]
    kind = {"max_indices": "max", "avg_3x3s1": "avg", "global_avg": "adaptive_avg"}.get(op, op)
    if kind == "adaptive_avg":
        p = PoolParams(kind, n, c, hw, hw, output_size=(1, 1) if op == "global_avg" else (7, 7), dtype=dt.name)
    else:
        s = 1 if op == "avg_3x3s1" else 2
        p = PoolParams(kind, n, c, hw, hw, (3, 3), (s, s), (1, 1), dtype=dt.name)
    out = np.empty(p.out_shape, dt)
    idx = np.empty(p.out_shape, np.int64) if op == "max_indices" else None
    mod = registry.POOLS[kind].kernel

    def call():
        ws = np.empty(mod.workspace_bytes(p, nt), np.uint8)
        mod.run(x, None, p, out, ws, nt, indices=idx)

    return (x, out, idx), call


def child(op: str, via: str, small: bool, cold: bool, headroom: int | None) -> None:
    """One run; prints ``RESULT <what> <bytes>`` (the rise of the peak address space, a hint only:
    an earlier peak, e.g. an address-space probe at import, hides a smaller one)."""
    import resource

    if cold:  # the kernel module imported, nothing run
        from fastconv import registry

        kind = {"max_indices": "max", "avg_3x3s1": "avg", "global_avg": "adaptive_avg"}.get(op, op)
        registry.get(op).kernel if op in CONVS else registry.POOLS[kind].kernel  # noqa: B018
    else:
        _make_call(op, via, small, warm=True)[1]()
    keep, call = _make_call(op, via, small, warm=False)
    before, peak0 = _vm_bytes(), _vm_peak()
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    print("LIMIT", flush=True)  # from here on a death is the call's
    if headroom is not None:
        resource.setrlimit(resource.RLIMIT_AS, (before + headroom, hard))
    try:
        call()
        what = "ok"
    except MemoryError:
        what = "MemoryError"
    except Exception as e:  # noqa: BLE001 — reported, not a death
        what = f"error:{type(e).__name__}"
    after, peak = _vm_bytes(), _vm_peak()
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    print(f"RESULT {what} {peak - before if peak > peak0 else max(0, after - before)}", flush=True)
    del keep


def _run_child(op: str, args, headroom: int | None) -> tuple[str, int, str]:
    """(outcome, peak-rise bytes, detail): outcome ok / MemoryError / error:... / dead / setup (the
    child failed before it set the limit)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", op, "--via", args.via]
    cmd += ["--small"] * args.small + ["--cold"] * args.cold
    if headroom is not None:
        cmd += ["--headroom", str(headroom)]
    env = dict(os.environ, MEMSWEEP_DTYPE=args.dtype)
    if args.threads:
        env["FASTCONV_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode == 0 and lines:
        _, what, need = lines[-1].split()
        return what, int(need), ""
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    last = err[-1].strip() if err else "(no stderr)"
    if "LIMIT" not in proc.stdout.split():  # failed before the limit was set (e.g. an import)
        return "setup", 0, f"exit {proc.returncode} before the limit: {last[:160]}"
    if proc.returncode < 0:
        why = f"signal {signal.Signals(-proc.returncode).name}"
    else:
        why = f"exit {proc.returncode}"
    return "dead", 0, f"{why}: {last[:160]}"


class _SetupFailed(Exception):
    """A child failed before it set the limit (not a run: nothing to measure)."""


def _find_need(op: str, args) -> tuple[int | None, int, list[str]]:
    """The least headroom (within 1/16) with which the call succeeds: doubling from 16 MiB, then
    bisecting. Returns (need, runs made, their deaths)."""
    runs, died = 0, []

    def ok(headroom: int) -> bool:
        nonlocal runs
        what, _, detail = _run_child(op, args, headroom)
        runs += what != "setup"
        if what == "dead":
            died.append(f"    (finding the need) headroom {headroom / 2**20:.1f} MiB: {detail}")
        if what == "setup":
            raise _SetupFailed(detail)
        return what == "ok"

    hi = 16 << 20
    while not ok(hi):
        if hi >= 4 << 30:
            return None, runs, died
        hi *= 2
    lo = 0 if hi == 16 << 20 else hi // 2
    while hi - lo > max(1 << 20, hi // 16):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi, runs, died


def sweep(args) -> int:
    ops = args.ops.split(",") if args.ops else list(OPS)
    total = dead = 0
    t0 = time.time()
    print(
        f"memory sweep: via {args.via}, {args.dtype}, {'cold' if args.cold else 'warm'} start, "
        f"{'small' if args.small else 'full-size'} layers, {args.steps} headroom steps, "
        f"threads {args.threads or 'default'}",
        flush=True,
    )
    print(f"{'op':<13} {'need MiB':>8}  runs (headroom 0 -> top, evenly)  {'top MiB':>8} {'first ok':>8}", flush=True)
    for op in ops:
        try:
            need, runs, died = _find_need(op, args)
        except _SetupFailed as e:
            print(f"{op:<13} not run: {e}", flush=True)
            continue
        total += runs
        dead += len(died)
        for line in died:
            print(line, flush=True)
        if need is None:
            print(f"{op:<13} no headroom up to 4 GiB was enough", flush=True)
            continue
        marks, first_ok, deaths = [], None, []
        top = max(1.25 * need, args.min_top * 2**20)
        for i in range(args.steps):
            headroom = int(top * i / max(1, args.steps - 1))
            what, _, detail = _run_child(op, args, headroom)
            total += what != "setup"
            if what == "dead":
                dead += 1
                deaths.append(f"    headroom {headroom / 2**20:.1f} MiB: {detail}")
            if what == "ok" and first_ok is None:
                first_ok = headroom
            if what == "setup":
                deaths.append(f"    headroom {headroom / 2**20:.1f} MiB: not run, {detail}")
            marks.append({"ok": ".", "MemoryError": "M", "dead": "X", "setup": "S"}.get(what, "E"))
        ok = "-" if first_ok is None else f"{first_ok / 2**20:.1f}"
        print(f"{op:<13} {need / 2**20:8.1f}  {''.join(marks):<32} {top / 2**20:8.1f} {ok:>8}", flush=True)
        for line in deaths:
            print(line, flush=True)
    print(f"{total} runs, {dead} dead ({time.time() - t0:.0f} s)", flush=True)
    return 1 if dead else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--via", choices=("api", "kernel"), default="api")
    ap.add_argument("--cold", action="store_true", help="no warm-up call before the limit")
    ap.add_argument("--small", action="store_true", help="2x32x28x28 layers")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="float64 runs im2col on BLAS")
    ap.add_argument("--ops", default="", help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument(
        "--min-top",
        type=float,
        default=96.0,
        help="the largest headroom is at least this many MiB (thread stacks, BLAS buffers)",
    )
    ap.add_argument("--threads", type=int, default=0, help="FASTCONV_NUM_THREADS for the children")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per child")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--headroom", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.via, args.small, args.cold, args.headroom)
        return 0
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
