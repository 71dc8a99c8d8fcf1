"""Numba's on-disk JIT cache (``cache=True``) must never break fastconv.

Each scenario runs in a fresh child process (the cache is read at first compile) that calls
every registered algorithm and pool and checks the results against the float64 reference:

* a corrupted cache (garbage or empty ``*.nbi`` index / ``*.nbc`` code files) is ignored and
  the kernels are recompiled;
* a cache directory that cannot be created (``NUMBA_CACHE_DIR`` below a regular file);
* a read-only install: the package's own ``__pycache__`` cannot be written (it is a regular file,
  so this holds even for root), and no ``NUMBA_CACHE_DIR`` is set.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import fastconv

CHILD = textwrap.dedent(r'''
    import warnings
    import numpy as np
    import fastconv
    from fastconv import dispatch, reference, validate
    from fastconv.testing import assert_algorithm_close

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    ran = []
    for alg in dispatch.REGISTRY:
        for k in (3, 1):
            w = rng.standard_normal((6, 4, k, k)).astype(np.float32)
            xx, ww, bb, p, _ = validate.conv2d_args(x, w, b, 1, 0, 1, 1)
            if alg.supports(p) is None:
                y = fastconv.conv2d(x, w, b, algo=alg.name)
                assert_algorithm_close(alg, y, x, w, b, p)
                ran.append(alg.name)
                break
    assert set(ran) == set(dispatch.names()), ran
    p = validate.max_pool2d_args(x, 3, 2, 1, 1, False)[1]
    np.testing.assert_array_equal(fastconv.max_pool2d(x, 3, 2, 1), reference.max_pool2d(x, p))
    print("OK", fastconv.__file__, flush=True)
''')


def _run(env_extra: dict, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env.update(env_extra, FASTCONV_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)
    assert proc.returncode == 0 and "OK" in proc.stdout, \
        f"rc={proc.returncode}\nstdout:{proc.stdout[-1000:]}\nstderr:{proc.stderr[-3000:]}"
    return proc


def test_corrupted_cache_is_recompiled(tmp_path):
    cache = tmp_path / "cache"
    _run({"NUMBA_CACHE_DIR": str(cache)}, tmp_path)  # populate
    index, code = list(cache.rglob("*.nbi")), list(cache.rglob("*.nbc"))
    assert index and code, f"numba wrote no cache under {cache}"
    for f in code:  # a valid index that points at junk code
        f.write_bytes(os.urandom(256))
    _run({"NUMBA_CACHE_DIR": str(cache)}, tmp_path)
    for i, f in enumerate(index):  # broken indexes: empty, random, truncated in turn
        data = f.read_bytes()
        f.write_bytes([b"", os.urandom(64), data[: len(data) // 2]][i % 3])
    _run({"NUMBA_CACHE_DIR": str(cache)}, tmp_path)


def test_cache_dir_cannot_be_created(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a regular file: nothing can be created below it")
    _run({"NUMBA_CACHE_DIR": str(blocker / "cache")}, tmp_path)


def test_read_only_install(tmp_path):
    """The package's __pycache__ cannot be written: numba must fall back, not fail."""
    site = tmp_path / "site"
    src = Path(fastconv.__file__).parent
    shutil.copytree(src, site / "fastconv", ignore=shutil.ignore_patterns("__pycache__"))
    for d in [site / "fastconv", *(p for p in (site / "fastconv").rglob("*") if p.is_dir())]:
        (d / "__pycache__").write_text("not a directory")  # unwritable even for root
    home = tmp_path / "home"
    home.mkdir()
    proc = _run({"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}, tmp_path, pythonpath=str(site))
    assert str(site) in proc.stdout, f"the child did not import the copied package: {proc.stdout}"
