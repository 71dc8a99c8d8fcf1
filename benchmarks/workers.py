"""Milliseconds per call of one conv in worker processes: 1 process vs N spawned vs N forked workers.

    python benchmarks/workers.py                 # the table in README "Threads and processes"
    python benchmarks/workers.py --wait-policy --rounds 5    # interleaved rounds on a busy machine

The layer is 8x64x56x56, 3x3, 64 out, padding 1 (``algo="auto"``). Each row runs in a fresh
interpreter, so one row's thread pools and environment never leak into the next; in the fork rows
the parent calls the conv before forking, the case that used to hang. Workers warm up, wait at a
barrier so that they run at the same time, then time ``--calls`` calls each; a row shows the
median ms per call of each worker and the threads fastconv and BLAS used there. ``--wait-policy``
adds rows with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep at once instead of spinning
when idle), to tell spinning apart from plain oversubscription.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

SHAPE = (8, 64, 56, 56)


def _data():
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal((64, 64, 3, 3), dtype=np.float32))


def _time(threads: str, calls: int, barrier=None) -> dict:
    """Warm up, wait for the others, time ``calls`` calls; median ms and the threads in use."""
    import numpy as np
    from threadpoolctl import threadpool_info

    import fastconv

    if threads != "default":
        fastconv.set_num_threads(int(threads))
    x, w = _data()
    for _ in range(3):
        fastconv.conv2d(x, w, padding=1)
    if barrier is not None:
        barrier.wait()
    t = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fastconv.conv2d(x, w, padding=1)
        t.append(time.perf_counter() - t0)
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return {"ms": round(float(np.median(t)) * 1e3, 1), "threads": fastconv.get_num_threads(), "blas": blas}


def _worker(threads, calls, barrier, q):
    q.put(_time(threads, calls, barrier))


def scenario(mode: str, threads: str, workers: int, calls: int) -> list[dict]:
    """Run one row in this interpreter: ``mode`` is single, spawn or fork."""
    if mode == "single":
        return [_time(threads, calls)]
    import multiprocessing as mp

    import fastconv

    if mode == "fork":  # the parent has used its thread pools before it forks
        x, w = _data()
        fastconv.conv2d(x, w, padding=1)
    ctx = mp.get_context(mode)
    barrier, q = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(threads, calls, barrier, q)) for _ in range(workers)]
    for p in procs:
        p.start()
    out = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return out


def run_row(mode: str, threads: str, env: dict, workers: int, calls: int, timeout: float):
    """One row in a fresh interpreter: the workers' results, or a string saying what went wrong."""
    # a session of its own, so that a hung row's workers are killed with it (a forked worker
    # stuck in libgomp outlives its parent otherwise)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--only", f"{mode},{threads}", "--workers", str(workers), "--calls", str(calls)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"hang (killed after {timeout:.0f} s)"
    if proc.returncode:
        return f"failed: {err.strip().splitlines()[-1:]}"
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every row this many times, rows in turn, and show the median round "
        "(other load on the machine drifts; interleaving spreads it over the rows)",
    )
    ap.add_argument("--timeout", type=float, default=120, help="seconds per row (a hang shows as 'hang')")
    ap.add_argument("--wait-policy", action="store_true", help="also rows with OMP_WAIT_POLICY=PASSIVE")
    ap.add_argument("--only", default=None, help="run one row here, e.g. 'spawn,1' (internal)")
    a = ap.parse_args()
    if a.only:
        mode, threads = a.only.split(",")
        print(json.dumps(scenario(mode, threads, a.workers, a.calls)))
        return

    cores = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    # "default" is what a user gets without setting anything; the explicit all-cores row in the
    # workers is the oversubscribed case (the default before workers defaulted to 1 thread)
    rows = [("single", "default", {}), ("single", "1", {})]
    rows += [(m, t, {}) for m in ("spawn", "fork") for t in ("default", "1", cores)]
    if a.wait_policy:
        rows += [
            ("single", "default", {"OMP_WAIT_POLICY": "PASSIVE"}),
            ("spawn", cores, {"OMP_WAIT_POLICY": "PASSIVE"}),
        ]
    n = a.workers
    with open("/proc/loadavg") if os.path.exists("/proc/loadavg") else contextlib.nullcontext() as f:
        load = f" (load average before: {f.read().split()[0]})" if f else ""
    print(
        f"conv2d {SHAPE} 3x3 -> 64, padding 1; {cores} cores, {n} workers, {a.calls} calls each, "
        f"{a.rounds} round(s){load}; median ms per call in each worker"
    )
    results: dict[int, list] = {i: [] for i in range(len(rows))}
    for _ in range(a.rounds):
        for i, (mode, threads, env) in enumerate(rows):
            results[i].append(run_row(mode, threads, env, n, a.calls, a.timeout))
    for i, (mode, threads, env) in enumerate(rows):
        label = f"{'1 process' if mode == 'single' else f'{n} {mode}ed workers'}, threads {threads}"
        label += "".join(f", {k}={v}" for k, v in env.items())
        ok = [r for r in results[i] if not isinstance(r, str)]
        if not ok:
            print(f"{label:<58} {results[i][0]}")
            continue
        # the median round by its slowest worker; the range is over every round's workers
        ok.sort(key=lambda r: max(d["ms"] for d in r))
        med = ok[len(ok) // 2]
        lo, hi = min(d["ms"] for r in ok for d in r), max(d["ms"] for r in ok for d in r)
        spread = f"   [{lo:.1f}-{hi:.1f}]" if len(ok) > 1 else ""
        bad = f"   ({len(results[i]) - len(ok)} round(s) failed)" if len(ok) < len(results[i]) else ""
        print(
            f"{label:<58} "
            + "  ".join(f"{d['ms']:6.1f} ms ({d['threads']} omp, blas {d['blas']})" for d in med)
            + spread
            + bad
        )


if __name__ == "__main__":
    main()
