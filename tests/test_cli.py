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


@pytest.mark.parametrize(
    "argv, needle",
    [
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
        (["bench", "--batch", "0"], "batch sizes must be positive"),
        (["bench", "--batch", "1,x"], "expected positive integers"),
        (["bench", "--suite", "nets:resnet1000"], "unknown network 'resnet1000'"),
        (["bench", "--ours", "layer", "--save-baseline", "b.json"], "times the kernels only"),
        (["tune", "--layer", "max:1,8,16,16,3,2,1"], "no conv layer to tune"),
        (["tune", "--accuracy", "loose"], "invalid choice"),
        (["tune", "--threads", "0"], "--threads must be a positive integer"),
        (["frobnicate"], "invalid choice"),
        (["bench", "--pass", "sideways"], "invalid choice"),
        (["bench", "--pass", "backward", "--plot", "b.png"], "--plot applies to the forward rows"),
        (["bench", "--pass", "backward", "--algo", "direct"], "--algo applies to the forward rows"),
        (["bench", "--pass", "backward", "--peers", "numpy"], "compares with torch only"),
        (["bench", "--pass", "all", "--save-baseline", "b.json"], "gate times the forward kernels only"),
        (["bench", "--pass", "backward", "--model", "lenet"], "--model NAME --train"),
        (["bench", "--train"], "give --model NAME"),
        (["bench", "--clock", "cpu", "--threads", "2"], "use it with --threads 1"),
        (["bench", "--model", "lenet", "--train", "--repeats", "0"], "--repeats must be a positive integer"),
        (["bench", "--model", "lenet", "--train", "--clock", "cpu"], "use it with --threads 1"),
    ],
)
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
    r = subprocess.run(
        [sys.executable, "-m", "fastconv.cli", "bench", "--layer", "1,2,3"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_info(capsys):
    rc, out, _ = run_cli(capsys, "info")
    assert rc == 0
    for needle in (
        "fastconv",
        "CPU:",
        "cores",
        "caches: L1d",
        "L2",
        "L3",
        "FMA:",
        "-bit vectors",
        "threads:",
        "OpenMP: openmp",
        "libgomp",
        "BLAS",
        "compiled extensions",
        "tune cache",
        "algorithms:",
    ):
        assert needle in out
    rc, out, _ = run_cli(capsys, "info", "--json")
    d = json.loads(out)
    assert rc == 0 and d["extensions"] and all(v == "ok" for v in d["extensions"].values())
    assert set(d["algorithms"]) == set(__import__("fastconv").algorithms())
    from fastconv import tune
    from fastconv.bench import machine

    assert d["caches"] == machine.cache_sizes() and d["fma"]["cpu_lanes"] in (4, 8, 16)
    assert d["tune_cache"]["path"] == str(tune.cache_path())


def test_cache_sizes_from_sysfs(tmp_path):
    from fastconv.bench import machine

    for i, (level, kind, size, shared) in enumerate(
        [
            (1, "Data", "48K", "0"),
            (1, "Instruction", "32K", "0"),
            (2, "Unified", "2048K", "0-1"),
            (3, "Unified", "32M", "0-7,16"),
        ]
    ):
        d = tmp_path / "cpu0" / "cache" / f"index{i}"
        d.mkdir(parents=True)
        for name, text in (
            ("level", level),
            ("type", kind),
            ("size", size),
            ("shared_cpu_list", shared),
            ("coherency_line_size", 64),
        ):
            (d / name).write_text(f"{text}\n")
    c = machine.cache_sizes(sysfs=tmp_path)
    assert c == {
        "L1d": 48 << 10,
        "L1i": 32 << 10,
        "L2": 2 << 20,
        "L3": 32 << 20,
        "line_bytes": 64,
        "L2_shared_cpus": 2,
        "L3_shared_cpus": 9,
    }
    real = machine.cache_sizes()
    assert real["L1d"] is None or 4 << 10 <= real["L1d"] <= real["L2"] or real["L2"] is None


def test_bench_json_and_plot(capsys, tmp_path):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    rc, out, _ = run_cli(
        capsys,
        "bench",
        *TINY,
        "--layer",
        "max:1,8,16,16,3,2,1",
        "--threads",
        "1",
        "--json",
        str(js),
        "--plot",
        str(png),
    )
    assert rc == 0
    assert "layer:1,8,12,8,3,1,1" in out and "vs numpy" in out
    rep = json.loads(js.read_text())
    assert rep["schema"] == runner.SCHEMA and rep["threads"] == 1
    for key in ("cpu", "blas", "libraries", "openmp"):
        assert key in rep["machine"]
    conv, pool = rep["layers"]
    names = {e["name"] for e in conv["entries"]}
    from fastconv import registry, rules

    p = suites.parse_layer_arg("1,8,12,8,3,1,1").params
    expected = {a.name for a in registry.REGISTRY if a.supports(p) is None} | {"auto", "conv2d()", "Conv2d", "numpy"}
    assert names == expected
    one = next(e for e in conv["entries"] if e["name"] == "conv2d()")  # the drop-in function's row
    assert one["role"] == "one-shot" and one["chosen"] == rules.select(p, one_shot=True).name
    obj = next(e for e in conv["entries"] if e["name"] == "Conv2d")  # the prepared layer object
    assert obj["role"] == "layer" and obj["chosen"] == rules.select(p).name
    assert {e["name"] for e in pool["entries"]} == {"max", "MaxPool2d", "numpy"}
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
    code, stdout, _ = run_cli(
        capsys, "bench", "--model", "lenet", "--batch", "1", "--batch", "0", "--repeats", "2", "--json", str(out)
    )
    assert code == 2  # batch 0 is refused up front, in one line
    code, stdout, _ = run_cli(
        capsys, "bench", "--model", "lenet", "--batch", "2", "--repeats", "2", "--threads", "1", "--json", str(out)
    )
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
    assert ours and all(e["max_rel_err"] < 1e-11 for e in layer["entries"])  # float64 accuracy, not float32's
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


# --- without the bench extra (rich, matplotlib) ----------------------------------------------------
def _without(monkeypatch, *modules):
    """Make ``import <module>`` (and its submodules) fail, as after a plain ``pip install .``."""
    for name in list(sys.modules):
        if name.split(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_bench_without_rich_prints_a_plain_table(capsys, monkeypatch, tmp_path):
    _without(monkeypatch, "rich")
    with pytest.raises(ImportError):
        import rich.table  # noqa: F401
    rc, out, err = run_cli(capsys, "bench", *TINY, "--layer", "max:1,8,16,16,3,2,1", "--json", str(tmp_path / "r.json"))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("fastconv bench — suite (layers)")
    header = next(line for line in lines if line.startswith("layer "))
    for col in ("algorithm", "ms", "GFLOP/s", "%peak", "vs numpy", "err"):
        assert col in header
    assert any(line.startswith("layer:1,8,12,8,3,1,1") for line in lines) and "auto → " in out
    assert any("MaxPool2d" in line for line in lines) and "[dim]" not in out and "┃" not in out
    assert lines[-1].startswith("summary: ")
    assert "[1/2] layer:1,8,12,8,3,1,1" in err and "[2/2] max:" in err  # plain progress on stderr


def test_plot_without_matplotlib_is_one_line_before_the_run(capsys, monkeypatch, tmp_path):
    _without(monkeypatch, "matplotlib")
    rc, out, err = run_cli(capsys, "bench", *TINY, "--plot", str(tmp_path / "r.png"))
    assert rc == 2 and out == ""
    assert err.strip() == 'fastconv: error: --plot needs matplotlib: pip install "fastconv[bench]"'
    assert not (tmp_path / "r.png").exists()
    from fastconv.bench import report

    with pytest.raises(report.MissingExtra, match="fastconv\\[bench\\]"):
        report.plot({"layers": []}, tmp_path / "x.png")


def test_bench_in_a_fresh_process_without_the_extra(tmp_path):
    """As after ``pip install .``: rich and matplotlib cannot be imported at all."""
    code = (
        "import sys\nfor m in ('rich', 'matplotlib'):\n    sys.modules[m] = None\n"
        "from fastconv.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, "bench", *TINY], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "auto → " in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("summary:")
    r = subprocess.run([sys.executable, "-c", code, "info"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "caches:" in r.stdout


# --- network suites, the summary, tune ---------------------------------------------------------------
def test_list_suites_has_the_networks(capsys):
    rc, out, _ = run_cli(capsys, "bench", "--list-suites")
    names = out.split()
    assert rc == 0
    assert {"nets", "resnet18", "mobilenetv2", "nets:resnet50", "nets:vgg16", "resnet50", "vgg16"} <= set(names)


def test_network_suite_summary(capsys, tmp_path):
    """A whole (small) network: the prepared layer objects against torch and ONNX Runtime, a
    summary line last, and per-layer ours/torch/onnxruntime/ratio/%peak in the JSON."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    js = tmp_path / "n.json"
    rc, out, err = run_cli(
        capsys,
        "bench",
        "--suite",
        "shufflenetv2",
        "--batch",
        "1",
        "--repeats",
        "1",
        "--cooldown",
        "0",
        "--no-check",
        "--threads",
        "1",
        "--json",
        str(js),
    )
    assert rc == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("summary: geomean ") and "faster of torch and ONNX Runtime" in last and "below 1.0x" in last
    rep = json.loads(js.read_text())
    from fastconv import zoo

    assert len(rep["layers"]) == len(zoo.distinct_layers("shufflenetv2", 1))
    for L in rep["layers"]:
        assert {e["name"] for e in L["entries"]} in (
            {"Conv2d", "torch", "onnxruntime"},
            {"MaxPool2d", "torch", "onnxruntime"},
            {"AdaptiveAvgPool2d", "torch", "onnxruntime"},
        )
        s = L["summary"]
        assert s["ours_s"] > 0 and s["torch_s"] > 0 and s["onnxruntime_s"] > 0
        assert s["ratio"] == pytest.approx(min(s["torch_s"], s["onnxruntime_s"]) / s["ours_s"])
        assert (s["pct_peak"] is not None) == (L["unit"] == "GFLOP/s")
        assert L["uses"][0]["net"] == "shufflenetv2"
    summ = rep["summary"]
    ratios = [L["summary"]["ratio"] for L in rep["layers"]]
    assert summ["layers"] == len(ratios) and summ["below_1"] == sum(r < 1 for r in ratios)
    import numpy as np

    assert summ["geomean"] == pytest.approx(float(np.exp(np.mean(np.log(ratios)))))
    (net,) = summ["nets"]
    assert net["net"] == "shufflenetv2" and net["complete"]
    assert net["layers"] == sum(1 for L in zoo.net_layers("shufflenetv2") if L.kind != "fc")


def test_summary_line_without_peers():
    assert "no layer" in runner.summary_line(runner.summarize([]))


def test_tune_command_fills_the_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    from fastconv import tune

    tune._memory.clear()
    js = tmp_path / "t.json"
    rc, out, err = run_cli(
        capsys, "tune", "--layer", "1,8,12,8,3,1,1", "--batch", "1,2", "--repeats", "1", "--json", str(js)
    )
    assert rc == 0, err
    assert "tuned 2 conv layers (2 measured now)" in out and str(tune.cache_path()) in out
    rows = json.loads(js.read_text())["layers"]
    assert [r["name"] for r in rows] == ["layer:1,8,12,8,3,1,1@b1", "layer:1,8,12,8,3,1,1@b2"]
    p = suites.parse_layer_arg("1,8,12,8,3,1,1").params
    assert tune.lookup(p) == rows[0]["choice"] and tune.lookup(p.with_batch(2)) == rows[1]["choice"]
    rc, out, _ = run_cli(capsys, "tune", "--layer", "1,8,12,8,3,1,1", "--quiet")
    assert rc == 0 and "(0 measured now)" in out and len(out.strip().splitlines()) == 1
    rc, out, _ = run_cli(capsys, "info", "--json")
    assert json.loads(out)["tune_cache"]["entries"] == 2


# --- backward rows and the training step -------------------------------------------------------------
BACKWARD_LAYERS = [
    "--layer",
    "1,4,16,16,4,3,1,1",  # stride 1 on >= 256 output pixels: the input gradient as a forward conv
    "--layer",
    "2,4,9,9,6,3,1,1",  # stride 1, small map: the conv_grad kernel
    "--layer",
    "1,4,10,10,6,3,2,1:g=2",  # strided, grouped
    "--layer",
    "max:2,3,9,9,3,2,1",
    "--layer",
    "avg:1,3,8,8,2,2,0",
    "--layer",
    "gap:2,5,4,4",
]


def _check_side(side: dict, unit: str, work: float, checked: bool = True) -> None:
    assert side["median_s"] > 0 and side["min_s"] > 0 and side["samples"] >= 1 and side["spread"] >= 0
    if unit == "GFLOP/s":
        assert side["gflops"] == pytest.approx(work / side["median_s"] / 1e9) and side["pct_peak"] > 0
    else:
        assert side["gbps"] == pytest.approx(work / side["median_s"] / 1e9) and "pct_peak" not in side
    if checked:
        assert side["max_rel_err"] < 1e-4  # float32 gradients (Winograd included) vs the float64 definitions


def test_bench_backward_rows(capsys, tmp_path):
    """``--pass backward``: per conv the input, weight and input+weight+bias rows, per pool its input
    row, ours and torch's timed, checked and rated; the summary line last."""
    pytest.importorskip("torch")
    from fastconv.bench import backward

    js = tmp_path / "b.json"
    rc, out, err = run_cli(
        capsys,
        "bench",
        "--pass",
        "backward",
        *BACKWARD_LAYERS,
        "--repeats",
        "2",
        "--cooldown",
        "0",
        "--threads",
        "1",
        "--json",
        str(js),
    )
    assert rc == 0, err
    assert "fastconv bench --pass backward" in out and "input+weight+bias" in out and "vs torch" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("summary (backward): ") and "below 1.0x" in last
    rep = json.loads(js.read_text())
    assert rep["schema"] == backward.SCHEMA and rep["threads"] == 1 and rep["options"]["peers"] == ["torch"]
    assert len(rep["layers"]) == 6
    routes = [L["rows"][0].get("route") for L in rep["layers"][:3]]
    assert routes == ["forward", "conv_grad", "conv_grad"] and rep["layers"][0]["rows"][0]["algorithm"]
    ratios = []
    for L in rep["layers"]:
        conv = L["unit"] == "GFLOP/s"
        assert [r["kind"] for r in L["rows"]] == (["input", "weight", "backward"] if conv else ["pool"])
        for r in L["rows"]:
            p = L["params"]
            if conv:
                macs = p["n"] * p["c_out"] * p["out_h"] * p["out_w"] * (p["c_in"] // p["groups"]) * p["kh"] * p["kw"]
                assert r["work"] == (4 if r["kind"] == "backward" else 2) * macs
            else:
                assert r["work"] == p["n"] * p["c"] * p["h"] * p["w"] * 4
            _check_side(r["ours"], L["unit"], r["work"])
            _check_side(r["torch"], L["unit"], r["work"])
            assert r["ratio"] == pytest.approx(r["torch"]["median_s"] / r["ours"]["median_s"])
            assert r["ours"]["call"].startswith("fastconv.grad.") and "torch" in r["torch"]["call"]
            assert (r.get("route") in ("forward", "conv_grad")) == (r["kind"] == "input")
            assert r["ours"].get("effective", False) == ("winograd" in r.get("algorithm", ""))
            ratios.append(r["ratio"])
    s = rep["summary"]
    assert s["rows"] == len(ratios) == 3 * 3 + 3 and s["below_1"] == sum(v < 1 for v in ratios)
    assert (s["input"]["rows"], s["weight"]["rows"], s["backward"]["rows"], s["pool"]["rows"]) == (3, 3, 3, 3)
    import numpy as np

    assert s["geomean"] == pytest.approx(float(np.exp(np.mean(np.log(ratios)))))
    assert s["worst"]["ratio"] == min(ratios)


def test_bench_backward_float64_without_check_and_without_torch(capsys, tmp_path):
    js = tmp_path / "b.json"
    rc, out, err = run_cli(
        capsys,
        "bench",
        "--pass",
        "backward",
        "--layer",
        "1,3,7,7,4,3,1,0",
        "--layer",
        "max:1,3,7,7,2,2,0",
        "--dtype",
        "float64",
        "--no-peers",
        "--no-check",
        "--repeats",
        "1",
        "--cooldown",
        "0",
        "--json",
        str(js),
    )
    assert rc == 0, err
    assert out.strip().splitlines()[-1].startswith("summary (backward): no row has a torch time")
    rep = json.loads(js.read_text())
    for L in rep["layers"]:
        assert L["params"]["dtype"] == "float64"
        for r in L["rows"]:
            assert r["torch"] is None and r["ratio"] is None and "max_rel_err" not in r["ours"]
            assert r["ours"]["median_s"] > 0
    assert rep["summary"]["rows"] == 0


def test_bench_pass_all_writes_both_reports(capsys, tmp_path):
    pytest.importorskip("torch")
    from fastconv.bench import backward

    js = tmp_path / "all.json"
    rc, out, err = run_cli(
        capsys, "bench", "--pass", "all", *TINY[:2], "--peers", "torch", *TINY[4:], "--threads", "1", "--json", str(js)
    )
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[-2].startswith("summary: geomean") and lines[-1].startswith("summary (backward): geomean")
    rep = json.loads(js.read_text())
    assert rep["schema"] == runner.SCHEMA and rep["backward"]["schema"] == backward.SCHEMA
    assert {e["name"] for e in rep["layers"][0]["entries"]} >= {"auto", "torch"}
    (layer,) = rep["backward"]["layers"]
    assert [r["kind"] for r in layer["rows"]] == ["input", "weight", "backward"]
    assert all(r["ours"]["max_rel_err"] < 1e-5 and r["torch"]["max_rel_err"] < 1e-5 for r in layer["rows"])


def test_backward_script_is_the_command(tmp_path):
    """benchmarks/backward.py passes its arguments to ``fastconv bench --pass backward``."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "backward.py"
    js = tmp_path / "b.json"
    argv = ["--layer", "1,2,5,5,2,3,1,1", "--no-peers", "--repeats", "1", "--cooldown", "0", "--quiet"]
    r = subprocess.run(
        [sys.executable, str(script), *argv, "--json", str(js)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(js.read_text())["pass"] == "backward"


def test_clock_cpu_times_the_calling_thread(capsys, tmp_path):
    js = tmp_path / "c.json"
    rc, _, err = run_cli(
        capsys, "bench", *TINY, "--pass", "all", "--threads", "1", "--clock", "cpu", "--quiet", "--json", str(js)
    )
    assert rc == 0, err
    rep = json.loads(js.read_text())
    assert rep["options"]["clock"] == "cpu" and rep["backward"]["options"]["clock"] == "cpu"
    assert all(e["median_s"] > 0 for e in rep["layers"][0]["entries"])


def test_bench_model_train_step(capsys, tmp_path):
    """``--model NAME --train``: a training step of the original and of the converted model, from
    the same weights: both times, the ratio, steps/s, and losses that agree."""
    pytest.importorskip("torch")
    from fastconv.bench import train

    assert train.DEFAULT_BATCH["lenet"] == 64 and train.DEFAULT_BATCH["resnet18"] == 16
    from fastconv import zoo

    assert set(train.DEFAULT_BATCH) == set(zoo.model_names())
    js = tmp_path / "t.json"
    rc, out, err = run_cli(
        capsys,
        "bench",
        "--model",
        "lenet",
        "--train",
        "--batch",
        "4",
        "--repeats",
        "2",
        "--threads",
        "1",
        "--json",
        str(js),
    )
    assert rc == 0, err
    assert "lenet train step batch 4 (4x1x28x28), 1 threads: torch " in out and "steps/s" in out
    rep = json.loads(js.read_text())
    assert rep["schema"] == "fastconv-train/1"
    (row,) = rep["models"]
    assert row["model"] == "lenet" and row["batch"] == 4 and row["momentum"] > 0 and row["lr"] > 0
    assert row["torch_s"] > 0 and row["fastconv_s"] > 0
    assert row["speedup"] == pytest.approx(row["torch_s"] / row["fastconv_s"])
    assert row["torch_steps_per_s"] == pytest.approx(1 / row["torch_s"])
    assert row["fastconv_steps_per_s"] == pytest.approx(1 / row["fastconv_s"])
    assert len(row["torch_times"]) == len(row["fastconv_times"]) == 2
    assert len(row["torch_losses"]) == len(row["fastconv_losses"]) == 3  # warm-up step + 2 timed
    assert row["torch_losses"][-1] != row["torch_losses"][0]  # the weights did change
    assert row["loss_rel_diff"] < 1e-4  # the same model trained the same way
    assert row["clock"] == "wall"
    argv = ["--model", "lenet", "--train", "--batch", "2", "--repeats", "1", "--threads", "1", "--clock", "cpu"]
    rc, out, err = run_cli(capsys, "bench", *argv)
    assert rc == 0, err
    assert "lenet train step batch 2 (2x1x28x28), 1 threads, CPU time: torch " in out
