"""fastconv writes nothing at run time, so a read-only install works.

Every kernel is compiled ahead of time and fastconv keeps no on-disk cache next to its code, so
an install location nobody can write to must work. The child process calls every registered
algorithm and pool and checks them against the float64 reference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import fastconv

CHILD = textwrap.dedent(r"""
    import numpy as np
    import fastconv
    from fastconv import plan, reference, registry, rules, validate
    from fastconv.testing import assert_algorithm_close

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    ran = []
    for alg in registry.REGISTRY:
        for k, g in ((3, 1), (1, 1), (3, 4)):  # 3x3, 1x1, depthwise
            w = rng.standard_normal((6 if g == 1 else 4, 4 // g, k, k)).astype(np.float32)
            bg = b[: w.shape[0]]
            xx, ww, bb, p, _ = validate.conv2d_args(x, w, bg, 1, 0, 1, g)
            if alg.supports(p) is None:
                y = fastconv.conv2d(x, w, bg, groups=g, algo=alg.name)
                assert_algorithm_close(alg, y, x, w, bg, p)
                ran.append(alg.name)
                break
    assert set(ran) == set(registry.names()), ran
    p = validate.max_pool2d_args(x, 3, 2, 1, 1, False)[1]
    np.testing.assert_array_equal(fastconv.max_pool2d(x, 3, 2, 1), reference.max_pool2d(x, p))
    print("OK", fastconv.__file__, flush=True)
""")


def test_read_only_install(tmp_path):
    """No directory of the package can be written (``__pycache__`` is a regular file, which
    stops even root), and HOME is empty: every kernel still runs and is correct."""
    site = tmp_path / "site"
    shutil.copytree(Path(fastconv.__file__).parent, site / "fastconv", ignore=shutil.ignore_patterns("__pycache__"))
    for d in [site / "fastconv", *(p for p in (site / "fastconv").rglob("*") if p.is_dir())]:
        (d / "__pycache__").write_text("not a directory")
        d.chmod(0o555)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        FASTCONV_NUM_THREADS="1",
        PYTHONPATH=str(site),
        PYTHONDONTWRITEBYTECODE="0",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
        )
    finally:
        for d in (site / "fastconv").rglob("*"):
            if d.is_dir():
                d.chmod(0o755)
        (site / "fastconv").chmod(0o755)
    assert proc.returncode == 0 and "OK" in proc.stdout, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    assert str(site) in proc.stdout, f"the child did not import the copied package: {proc.stdout}"
    assert not any(home.iterdir()), f"fastconv wrote under HOME: {list(home.rglob('*'))}"
