"""Processes: fork safety and the thread-count precedence (fastconv/threads.py).

Every scenario runs in a fresh interpreter under a hard timeout, in a session of its own: a
regression (a forked child stuck in libgomp's ``GOMP_parallel``, waiting for pool threads that only
exist in the parent) fails the test instead of hanging CI, and the stuck children are killed.
The parents set 2 threads and run every op before forking, so that libgomp's pool exists on any
machine (on 1 core the default would never create it and nothing would be tested).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")

TIMEOUT = 60

# every op: conv2d on each registered algorithm, then the three pools; bit-identical for any
# thread count (so the child's results must equal the parent's exactly)
OPS = textwrap.dedent("""
    import json, os, sys, pickle, warnings
    import numpy as np
    import fastconv
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 16, 20, 20), dtype=np.float32)
    W = {k: rng.standard_normal((24, 16, k, k), dtype=np.float32) for k in (1, 3)}
    NAMES = [*fastconv.algorithms(), "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]

    def op(name):
        if name == "max_pool2d":
            return fastconv.max_pool2d(X, 3, stride=2, padding=1)
        if name == "avg_pool2d":
            return fastconv.avg_pool2d(X, 2)
        if name == "adaptive_avg_pool2d":
            return fastconv.adaptive_avg_pool2d(X, (3, 5))
        if name == "depthwise":
            return fastconv.conv2d(X, W[3][:16, :1], padding=1, groups=16, algo=name)
        k = 1 if name == "pointwise" else 3
        return fastconv.conv2d(X, W[k], padding=k // 2, algo=name)

    def ops():
        return {name: op(name) for name in NAMES}

    def blas_threads():
        return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})

    def check(got, want):
        assert got.keys() == want.keys(), (got.keys(), want.keys())
        for name in want:
            assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name
""")


def _run(code: str, env: dict | None = None) -> dict:
    """Run ``OPS + code`` in a fresh interpreter; it prints one JSON line last, returned here."""
    proc = subprocess.Popen(
        [sys.executable, "-c", OPS + textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tempfile.gettempdir(),
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and every child it forked
        proc.communicate()
        pytest.fail(f"hung for {TIMEOUT} s (a forked child stuck in OpenMP?)")
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_os_fork_child_and_grandchild_run_every_op():
    r = _run("""
        fastconv.set_num_threads(2)
        want = ops()  # libgomp now has a pool of 2 threads that a forked child will not have

        def child(depth):
            # runs every op in a forked child (which forks its own child at depth 2), checks the
            # results there and sends them up a pipe with the child's thread counts
            rd, wr = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rd)
                try:
                    got = ops()
                    check(got, want)
                    info = {"threads": fastconv.get_num_threads(), "blas": blas_threads()}
                    if depth > 1:
                        info["grandchild"] = child(depth - 1)[1]
                    payload, status = pickle.dumps((got, info)), 0
                except BaseException as e:
                    payload, status = pickle.dumps(repr(e)), 1
                with os.fdopen(wr, "wb") as f:
                    f.write(payload)
                os._exit(status)
            os.close(wr)
            with os.fdopen(rd, "rb") as f:
                res = pickle.loads(f.read())
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, res
            return res

        got, info = child(2)
        check(got, want)  # the copy that came back through the pipe
        print(json.dumps({"parent": fastconv.get_num_threads(), "child": info}))
    """)
    assert r["parent"] == 2
    assert r["child"]["threads"] == 1 and r["child"]["blas"] == [1], r
    assert r["child"]["grandchild"] == {"threads": 1, "blas": [1]}, r


def test_fork_pool_workers_run_every_op():
    # multiprocessing's fork start method (dask's process scheduler under fork does the same)
    r = _run("""
        import multiprocessing as mp

        def work(name):
            return name, op(name), fastconv.get_num_threads(), blas_threads()

        fastconv.set_num_threads(2)
        want = ops()
        with mp.get_context("fork").Pool(2) as pool:
            res = pool.map(work, NAMES * 2, chunksize=1)  # each op in both workers, most likely
        check({name: y for name, y, _, _ in res}, want)
        print(json.dumps({"threads": sorted({t for *_, t, _ in res}),
                          "blas": sorted({b for *_, bl in res for b in bl})}))
    """)
    assert r == {"threads": [1], "blas": [1]}, r


def test_forked_child_thread_settings():
    # after the parent ran 2-thread regions, a child's request for more warns and stays at 1 (a
    # 2-thread region there would wait forever for the parent's pool threads); a child forked
    # before any region ran has no stale pool: it defaults to 1 but may use more
    r = _run(
        """
        def in_child(fn):
            rd, wr = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rd)
                try:
                    payload, status = json.dumps(fn()), 0
                except BaseException as e:
                    payload, status = json.dumps(repr(e)), 1
                with os.fdopen(wr, "w") as f:
                    f.write(payload)
                os._exit(status)
            os.close(wr)
            with os.fdopen(rd) as f:
                res = json.loads(f.read())
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, res
            return res

        def ask_for_two():
            default = fastconv.get_num_threads()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fastconv.set_num_threads(2)
            ops()
            return {"default": default, "after_set": fastconv.get_num_threads(),
                    "warned": [str(w.category.__name__) for w in caught]}

        fresh = in_child(ask_for_two)        # nothing ran here yet: no pool to go stale
        fastconv.set_num_threads(2)
        ops()
        stale = in_child(ask_for_two)
        print(json.dumps({"fresh": fresh, "stale": stale}))
    """,
        env={"FASTCONV_NUM_THREADS": "", "OMP_NUM_THREADS": ""},
    )
    assert r["fresh"] == {"default": 1, "after_set": 2, "warned": []}, r
    assert r["stale"] == {"default": 1, "after_set": 1, "warned": ["RuntimeWarning"]}, r


def test_precedence():
    # set_num_threads > a caller's OpenMP limit (only lowers) > FASTCONV_NUM_THREADS >
    # OMP_NUM_THREADS > cores; the limit holds in the thread that set it, like OpenMP's own
    code = """
        import threading
        from threadpoolctl import threadpool_limits
        r = {"default": fastconv.get_num_threads()}
        with threadpool_limits(1):
            r["limit1"] = fastconv.get_num_threads()
            r["limit1_op"] = bool(np.array_equal(op("direct"), op("direct")))
            other = []
            t = threading.Thread(target=lambda: other.append(fastconv.get_num_threads()))
            t.start(); t.join()
            r["limit1_other_thread"] = other[0]
        with threadpool_limits(64):
            r["limit64"] = fastconv.get_num_threads()
        r["after"] = fastconv.get_num_threads()
        fastconv.set_num_threads(1)
        fastconv.set_num_threads(None)  # back to automatic: the 1 must not linger as a "limit"
        r["reset"] = fastconv.get_num_threads()
        with threadpool_limits(1):
            fastconv.set_num_threads(3)
            r["explicit_in_limit"] = fastconv.get_num_threads()
        print(json.dumps(r))
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    unset = {"FASTCONV_NUM_THREADS": "", "OMP_NUM_THREADS": ""}
    r = _run(code, env=unset)
    assert r == {
        "default": cores,
        "limit1": 1,
        "limit1_op": True,
        "limit1_other_thread": cores,
        "limit64": cores,
        "after": cores,
        "reset": cores,
        "explicit_in_limit": 3,
    }, r
    r = _run(code, env={**unset, "OMP_NUM_THREADS": "3,1"})
    assert (r["default"], r["limit1"], r["after"]) == (3, 1, 3), r
    r = _run(code, env={"FASTCONV_NUM_THREADS": "5", "OMP_NUM_THREADS": "3"})
    assert (r["default"], r["limit1"], r["limit64"], r["after"], r["reset"]) == (5, 1, 5, 5, 5), r


def test_spawned_worker_defaults_to_one_thread():
    # N workers share the cores (2 spawned workers x 2 threads on 2 cores: 4x slower per call
    # than x 1 thread, benchmarks/workers.py); the environment still decides where it is set
    code = """
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(1) as pool:
            n = pool.apply(fastconv.get_num_threads)
        print(json.dumps({"main": fastconv.get_num_threads(), "worker": n}))
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert _run(code, env={"FASTCONV_NUM_THREADS": "", "OMP_NUM_THREADS": ""}) == {"main": cores, "worker": 1}
    assert _run(code, env={"FASTCONV_NUM_THREADS": "2", "OMP_NUM_THREADS": ""}) == {"main": 2, "worker": 2}
