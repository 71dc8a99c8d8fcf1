"""The ``fastconv`` command: user errors are one line and exit 2; info, --json and --plot work."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastconv import cli
from fastconv.bench import runner, suites

TINY = ["--layer", "1,8,12,8,3,1,1", "--peers", "numpy", "--repeats", "2", "--cooldown", "0"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, needle", [
    (["bench", "--suite", "no_such_suite"], "unknown suite 'no_such_suite'"),
    (["bench", "--layer", "1,2,3"], "7 or 8 numbers"),
    (["bench", "--layer", "1,64,x,64,3,1,1"], "comma-separated integers"),
    (["bench", "--layer", "1,64,28,64,3,1,1:g=5"], "groups=5 must divide"),
    (["bench", "--layer", "1,3,4,8,7,1,0"], "does not fit"),
    (["bench", "--layer", "max:1,3,4,4"], "N,C,H,W,k,s,p"),
    (["bench", "--suite", "smoke", "--layer", "1,8,12,8,3,1,1"], "either --suite or --layer"),
    (["bench", "--json", "/no/such/dir/out.json"], "does not exist"),
    (["bench", "--plot", "/no/such/dir/out.png"], "does not exist"),
    (["bench", "--save-baseline", "/"], "is a directory"),
    (["bench", "--plot", "chart.txt"], "must end in .png"),
    (["bench", "--threads", "0"], "--threads must be a positive integer"),
    (["bench", "--threads", "two"], "invalid int value"),
    (["bench", "--peers", "tensorflow"], "unknown peer 'tensorflow'"),
    (["bench", "--algo", "fft"], "unknown algorithm 'fft'"),
    (["bench", "--compare", "/no/such/baseline.json"], "cannot read"),
    (["bench", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line_exit_2(capsys, argv, needle):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out


def test_bad_baseline_and_threshold(capsys, tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    rc, _, err = run_cli(capsys, "bench", "--compare", str(bad))
    assert rc == 2 and "not a usable baseline" in err and len(err.strip().splitlines()) == 1
    bad.write_text(json.dumps({"schema": "something-else"}))
    rc, _, err = run_cli(capsys, "bench", "--compare", str(bad))
    assert rc == 2 and "schema" in err
    good = tmp_path / "g.json"
    assert cli.main(["bench", *TINY, "--quiet", "--save-baseline", str(good)]) == 0
    rc, _, err = run_cli(capsys, "bench", "--compare", str(good), "--max-regression", "lots")
    assert rc == 2 and "percentage" in err


def test_console_script_error_has_no_traceback():
    """The installed entry point, in a fresh process: exit status 2 and a single stderr line."""
    r = subprocess.run([sys.executable, "-m", "fastconv.cli", "bench", "--layer", "1,2,3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_info(capsys):
    rc, out, _ = run_cli(capsys, "info")
    assert rc == 0
    for needle in ("fastconv", "CPU:", "threads:", "OpenMP: openmp", "libgomp", "BLAS", "compiled extensions",
                   "JIT: none", "algorithms:"):
        assert needle in out
    rc, out, _ = run_cli(capsys, "info", "--json")
    d = json.loads(out)
    assert rc == 0 and d["extensions"] and all(v == "ok" for v in d["extensions"].values())
    assert set(d["algorithms"]) == set(__import__("fastconv").algorithms())


def test_bench_json_and_plot(capsys, tmp_path):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    rc, out, _ = run_cli(capsys, "bench", *TINY, "--layer", "max:1,8,16,16,3,2,1", "--threads", "1",
                         "--json", str(js), "--plot", str(png))
    assert rc == 0
    assert "layer:1,8,12,8,3,1,1" in out and "vs numpy" in out
    rep = json.loads(js.read_text())
    assert rep["schema"] == runner.SCHEMA and rep["threads"] == 1
    for key in ("cpu", "blas", "libraries", "openmp"):
        assert key in rep["machine"]
    conv, pool = rep["layers"]
    names = {e["name"] for e in conv["entries"]}
    import fastconv
    from fastconv import dispatch
    p = suites.parse_layer_arg("1,8,12,8,3,1,1").params
    expected = {a.name for a in dispatch.REGISTRY if a.supports(p) is None} | {"auto", "conv2d()", "numpy"}
    assert names == expected
    one = next(e for e in conv["entries"] if e["name"] == "conv2d()")   # the drop-in function's row
    assert one["role"] == "one-shot" and one["chosen"] == dispatch.select(p, one_shot=True).name
    for e in conv["entries"]:
        assert e["median_s"] > 0 and e["max_rel_err"] < 1e-3 and e["gflops"] > 0
    assert pool["unit"] == "GB/s" and pool["entries"][0]["gbps"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_list_suites(capsys):
    rc, out, _ = run_cli(capsys, "bench", "--list-suites")
    assert rc == 0 and {"smoke", "default", "seed", "all", "pools", "vgg16"} <= set(out.split())


def test_bench_model_times_original_and_converted(capsys, tmp_path):
    pytest.importorskip("torch", reason="--model compares with the torch original: pip install '.[peers]'")
    out = tmp_path / "models.json"
    code, stdout, _ = run_cli(capsys, "bench", "--model", "lenet", "--batch", "1", "--batch", "0",
                              "--repeats", "2", "--json", str(out))
    assert code == 2  # batch 0 is refused up front, in one line
    code, stdout, _ = run_cli(capsys, "bench", "--model", "lenet", "--batch", "2", "--repeats", "2",
                              "--threads", "1", "--json", str(out))
    assert code == 0
    assert "lenet batch 2 (2x1x28x28), 1 threads: torch" in stdout
    row = json.loads(out.read_text())["models"][0]
    assert row["model"] == "lenet" and row["torch_s"] > 0 and row["fastconv_s"] > 0
    assert row["speedup"] == pytest.approx(row["torch_s"] / row["fastconv_s"])
    assert row["max_rel_err"] < 1e-4


def test_bench_model_unknown_name(capsys):
    code, _, err = run_cli(capsys, "bench", "--model", "resnet1000")
    assert code == 2 and err.strip().count("\n") == 0 and "unknown model 'resnet1000'" in err


def test_dtype_float64_runs_every_row_in_float64(tmp_path, capsys):
    out = tmp_path / "f64.json"
    rc, _, _ = run_cli(capsys, "bench", *TINY, "--dtype", "float64", "--quiet", "--json", str(out))
    assert rc == 0
    rep = json.loads(out.read_text())
    (layer,) = rep["layers"]
    assert layer["params"]["dtype"] == "float64"
    ours = [e for e in layer["entries"] if e["role"] != "peer"]
    assert ours and all(e["max_rel_err"] < 1e-11 for e in layer["entries"])   # float64 accuracy, not float32's
    # a float64 run cannot be gated against a float32 baseline
    base = tmp_path / "b32.json"
    assert run_cli(capsys, "bench", *TINY, "--quiet", "--save-baseline", str(base))[0] == 0
    rc, _, err = run_cli(capsys, "bench", *TINY, "--dtype", "float64", "--compare", str(base))
    assert rc == 2 and "measured in float32" in err


def test_one_shot_row_skipped_with_reason_when_torch_cannot_express_the_padding():
    import numpy as np

    from fastconv.params import ConvParams
    p = ConvParams(1, 4, 9, 9, 4, 3, 3, (1, 1), (1, 0, 2, 1), (1, 1), 1, "float32")
    x, w, b = np.ones(p.input_shape, np.float32), np.ones(p.weight_shape, np.float32), None
    skipped = []
    entries = runner._ours_conv(p, x, w, b, runner.Options(algorithms=("direct",)), skipped)
    assert "conv2d()" not in {e.name for e in entries}
    assert any(s["name"] == "conv2d()" and "asymmetric" in s["reason"] for s in skipped)
