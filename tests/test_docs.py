"""The documentation runs: every ```python block of the README, as written, and the Examples
sections of the public docstrings (doctest)."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs_as_written(i):
    code = BLOCKS[i]
    if "import torch" in code:
        pytest.importorskip("torch")
    exec(compile(code, f"README.md python block {i + 1}", "exec"), {"__name__": f"readme_{i}"})


MODULES = [
    "fastconv",
    "fastconv.functional",
    "fastconv.layers",
    "fastconv.memory",
    "fastconv.rules",
    "fastconv.threads",
    "fastconv.params",
    "fastconv.grad",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:  # a module another change has not landed yet
        pytest.fail(f"{name}: {exc}")
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.IGNORE_EXCEPTION_DETAIL
    result = doctest.testmod(mod, optionflags=flags, extraglobs={"np": np}, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (run doctest -v)"


def test_source_checkout_says_it_is_not_built(tmp_path):
    """``python`` started in a checkout imports the bare source folder (the Python files without
    the compiled ``kernels``): one clear line, not a
    traceback from deep inside the first call."""
    import shutil
    import subprocess
    import sys

    import fastconv

    shutil.copytree(
        Path(fastconv.__file__).parent, tmp_path / "fastconv", ignore=shutil.ignore_patterns("__pycache__", "kernels")
    )
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
        f"sys.path.insert(0, {str(tmp_path)!r}); import fastconv"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .startswith("ImportError: fastconv is not built here: `pip install .` and run from elsewhere")
    )
