"""benchmarks/train_digits.py stays runnable: each (model, variant) trains one epoch on a few
images in this process, and the script's own driver runs one worker process end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_digits.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_is_the_digits_at_mnist_size(bench):
    xtr, xte, ytr, yte = bench.load_data()
    assert xtr.shape == (1347, 1, 28, 28) and xte.shape == (450, 1, 28, 28) and xtr.dtype == np.float32
    assert abs(float(xtr.mean())) < 1e-5 and abs(float(xtr.std()) - 1) < 1e-4
    assert set(np.unique(ytr)) == set(range(10))


@pytest.mark.parametrize("model", ["lenet", "vgg"])
def test_every_variant_trains_a_few_steps(bench, model):
    rows = [bench.train_one(model, v, 1, 1, 0, 0.01, 32, limit=96) for v in bench.VARIANTS]
    assert [r["steps"] for r in rows] == [3, 3, 3]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and np.all(np.isfinite(r["first_losses"])), r
    torch_row, converted, numpy_row = rows
    # converted: the same model and dropout masks, float32 rounding apart
    np.testing.assert_allclose(converted["first_losses"], torch_row["first_losses"], rtol=1e-4)
    if model == "lenet":  # the NumPy LeNet draws its own dropout masks
        assert numpy_row["own_dropout"]
    else:
        np.testing.assert_allclose(numpy_row["first_losses"], torch_row["first_losses"], rtol=1e-4)
    lines = bench.table(rows)
    assert len(lines) == 2 + len(rows) + 1  # header, rule, a row each, legend
    assert ("own dropout" in lines[-2]) == (model == "lenet")  # the NumPy row: no trajectory to compare


def test_driver_runs_a_worker_process(bench, capsys, tmp_path):
    out = tmp_path / "rows.json"
    code = bench.main(
        ["--models", "lenet", "--variants", "converted", "--epochs", "1", "--limit", "64", "--threads", "1"]
        + ["--json", str(out)]
    )
    text = capsys.readouterr().out
    assert code == 0 and "lenet  converted" in text and out.exists()
