"""Condense a `fastconv bench --suite nets --json` report into a Markdown table and a summary.

One row per layer: the prepared layer's time (``--ours layer``), torch's and ONNX Runtime's,
the ratio against the faster of the two (their time / ours, > 1: fastconv faster), fastconv's %
of the machine's FMA peak (conv layers), and the algorithm ``auto`` ran. Then the summary line
and the layers below 1.0x grouped by kind (what the closing notes of the speed issue list).

    python benchmarks/nets_table.py benchmarks/results/nets-<cpu>.json > benchmarks/results/nets-<cpu>.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from fastconv.bench.runner import _geomean as geomean


def kind(layer: dict) -> str:
    """A coarse class of the layer: what decides which kernel runs it."""
    p = layer["params"]
    if p.get("kind") != "conv":
        return str(p.get("kind", "pool")).replace("pool:", "") + " pool"
    k, kw, s = p["kh"], p["kw"], p["stride"][0]
    if p["groups"] > 1 and p["groups"] == p["c_in"] == p["c_out"]:
        return f"depthwise {k}x{kw} s{s}"
    if k == kw == 1:
        small = p["h"] * p["w"] <= 196
        return f"1x1 s{s}" + (" small map" if small else "")
    return f"{k}x{kw} s{s}" + (" grouped" if p["groups"] > 1 else "")


def rows(report: dict):
    for layer in report["layers"]:
        by_role = defaultdict(list)
        for e in layer["entries"]:
            by_role[e["role"]].append(e)
        ours = (by_role.get("layer") or by_role.get("auto") or [None])[0]
        peers = {e["name"]: e for e in by_role.get("peer", [])}
        if ours is None or not ours.get("median_s"):
            continue
        t, o = peers.get("torch", {}).get("median_s"), peers.get("onnxruntime", {}).get("median_s")
        best = min((v for v in (t, o) if v), default=None)
        yield {
            "name": layer["name"],
            "describe": layer["describe"],
            "kind": kind(layer),
            "algo": ours.get("chosen") or "",
            "ours": ours["median_s"],
            "torch": t,
            "ort": o,
            "ratio": best / ours["median_s"] if best else None,
            "pct_peak": ours.get("pct_peak"),
        }


def us(v):
    return "–" if v is None else f"{v * 1e6:,.0f}"


def main(path: str) -> None:
    report = json.load(open(path))
    rs = list(rows(report))
    m = report.get("machine", {})
    cpu = m.get("cpu", {}).get("model", "")
    print(f"# Coverage suite: {report.get('suite')} — {cpu}, {report.get('threads')} threads\n")
    print("| layer | shape | algo | ours µs | torch µs | ORT µs | vs faster | %peak |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rs:
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        peak = "" if r["pct_peak"] is None else f"{r['pct_peak']:.0f}%"  # the report's % already
        times = f"{us(r['ours'])} | {us(r['torch'])} | {us(r['ort'])}"
        print(f"| {r['name']} | {r['describe']} | {r['algo']} | {times} | {ratio} | {peak} |")
    rated = [r for r in rs if r["ratio"]]
    geo = geomean([r["ratio"] for r in rated]) or float("nan")
    below = [r for r in rated if r["ratio"] < 1.0]
    print(
        f"\n**Summary**: geomean {geo:.2f}x over {len(rated)} layers against the faster of torch and ONNX "
        f"Runtime; {len(below)} below 1.0x.\n"
    )
    for tag in ("@b1", "@b8"):
        part = [r for r in rated if r["name"].endswith(tag)]
        if part:
            g = geomean([r["ratio"] for r in part])
            n_below = sum(r["ratio"] < 1 for r in part)
            print(f"- batch {tag[2:]}: geomean {g:.2f}x over {len(part)} layers, {n_below} below 1.0x")
    print()
    groups = defaultdict(list)
    for r in rated:
        groups[r["kind"]].append(r)
    print("| kind | layers | geomean | below 1.0x | worst |")
    print("|---|---:|---:|---:|---|")
    for k in sorted(groups, key=lambda k: geomean([r["ratio"] for r in groups[k]])):
        g = groups[k]
        gm = geomean([r["ratio"] for r in g])
        worst = min(g, key=lambda r: r["ratio"])
        print(
            f"| {k} | {len(g)} | {gm:.2f}x | {sum(r['ratio'] < 1 for r in g)} | {worst['name']} {worst['ratio']:.2f}x |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
