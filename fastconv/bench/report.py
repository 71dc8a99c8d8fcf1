"""Presenting a benchmark report: a table (rich's when installed, else plain text), the JSON file
and a matplotlib chart.

rich and matplotlib are the ``bench`` extra (``pip install "fastconv[bench]"``): without rich the
same table prints as aligned plain text (`plain_table`); without matplotlib the chart raises
`MissingExtra`, whose message says what to install.

How to read the table: one block per layer; one row per algorithm (``auto`` shows what it
chose), the layer object (``Conv2d``, ...) and each peer. ``GFLOP/s`` counts 2 × MACs of the
direct algorithm whatever ran, so a Winograd rate is *effective* (marked ``*``) and may exceed
the machine's SGEMM rate. ``vs X`` is X's time divided by ours: above 1 we are faster. Pools
report GB/s of input read.

A backward report (`fastconv.bench.backward`, ``fastconv bench --pass backward``) draws as one
block per layer with one row per gradient (input, weight, input+weight+bias; pools: input), ours
and torch's side by side.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Literal

from .backward import KIND_LABEL
from .backward import SCHEMA as BACKWARD_SCHEMA
from .runner import SCHEMA

BENCH_EXTRA = 'pip install "fastconv[bench]"'


class MissingExtra(ImportError):
    """An optional library of the ``bench`` extra is not installed; the message says which."""


def have(module: str) -> bool:
    """Whether ``module`` can be imported (None in ``sys.modules`` counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ValueError, ImportError):  # a module in sys.modules without a spec
        return False


def need_matplotlib() -> None:
    """Raise `MissingExtra` unless matplotlib can be imported (the chart needs it)."""
    if not have("matplotlib"):
        raise MissingExtra(f"--plot needs matplotlib: {BENCH_EXTRA}")


Justify = Literal["left", "right"]  # a column's alignment, as rich's Table spells it
PEER_LABEL = {"torch": "torch", "onnxruntime": "onnxrt", "numpy": "numpy", "sgemm": "sgemm"}


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.2f}" if s < 1 else f"{s * 1e3:.0f}"


def _bytes(n: int | None) -> str:
    if not n:
        return "0" if n == 0 else ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _ratio(v: float | None) -> tuple[str, str | None]:
    if v is None:
        return "", None
    return f"{v:.2f}x", ("green" if v >= 1.05 else "red" if v < 0.95 else None)


def _dtype_note(report: dict) -> str:
    kinds = {L["params"].get("dtype", "float32") for L in report["layers"]}
    return "; float64 (%SGEMM and %peak against half those rates)" if kinds == {"float64"} else ""


CAPTION = (
    "GFLOP/s = 2·MACs of direct conv / time (* = effective: Winograd does fewer); pools: GB/s "
    "of input. vs X = X's time / ours (>1: fastconv faster). err = max|y−ref64| / max|ref64|."
)


def cells(report: dict) -> tuple[str, list[tuple[str, Justify]], list[list[tuple[str, str | None]]], list[int]]:
    """The table as data: ``(title, columns, rows, section_ends)``.

    ``columns`` are ``(header, "left"|"right")``; each row is a list of ``(text, style)`` cells
    (style: a rich style name or None); ``section_ends`` are the indices of each layer's last row.
    Both renderers (`table`, `plain_table`) draw this, so they show the same numbers.
    """
    peers = [p for p in PEER_LABEL if any(e["name"] == p for L in report["layers"] for e in L["entries"])]
    pk = report["peaks"]
    title = (
        f"fastconv bench — suite {report['suite'] or '(layers)'}, {report['threads']} threads; "
        f"SGEMM {pk['sgemm_gflops']:.0f}, FMA peak {pk['fma_gflops']:.0f} GFLOP/s" + _dtype_note(report)
    )
    columns: list[tuple[str, Justify]] = [
        ("layer", "left"),
        ("algorithm", "left"),
        ("ms", "right"),
        ("±", "right"),
        ("GFLOP/s", "right"),
        ("%SGEMM", "right"),
        ("%peak", "right"),
    ]
    columns += [(f"vs {PEER_LABEL[p]}", "right") for p in peers]
    columns += [("err", "right"), ("workspace", "right"), ("prep ms", "right")]
    rows, ends = [], []
    for L in report["layers"]:
        best = min((e["median_s"] for e in L["entries"] if e["role"] != "peer"), default=None)
        for i, e in enumerate(L["entries"]):
            name = e["name"] + (f" → {e['chosen']}" if e.get("chosen") else "")
            style = "dim" if e["role"] == "peer" else "bold" if e["median_s"] == best else None
            rate = e.get("gflops", e.get("gbps"))
            rate_s = f"{rate:.1f}" + ("*" if e.get("effective") else "") + (" GB/s" if "gbps" in e else "")
            row = [
                (L["name"] if i == 0 else "", None),
                (name, style),
                (_ms(e["median_s"]), None),
                (f"{100 * e['spread']:.0f}%", None),
                (rate_s, None),
                (f"{e['pct_sgemm']:.0f}" if "pct_sgemm" in e else "", None),
                (f"{e['pct_peak']:.0f}" if "pct_peak" in e else "", None),
            ]
            row += [_ratio(e.get("vs", {}).get(p)) for p in peers]
            err = e.get("max_rel_err")
            row += [
                ("" if err is None else f"{err:.1e}", None),
                (_bytes(e.get("workspace_bytes")), None),
                (_ms(e["prepare_s"]) if e["prepare_s"] else "", None),
            ]
            rows.append(row)
        ends.append(len(rows) - 1)
    return title, columns, rows, ends


BACKWARD_CAPTION = (
    "GFLOP/s = 2·MACs of direct conv per gradient / time (input+weight+bias: both gradients' 4·MACs; "
    "* = effective: an input gradient run as a Winograd forward conv does fewer); "
    "pools: GB/s of input gradient written. %peak: of the FMA peak. vs torch = torch's time / ours "
    "(>1: fastconv faster). err = max|g−ref64| / max|ref64| (worst gradient of the row)."
)


def backward_cells(
    report: dict,
) -> tuple[str, list[tuple[str, Justify]], list[list[tuple[str, str | None]]], list[int]]:
    """The backward report's table as data (same shape as `cells`): one block per layer, one row
    per kind of gradient with ours and torch's time, rate and %peak side by side."""
    pk = report["peaks"]
    title = (
        f"fastconv bench --pass backward — suite {report['suite'] or '(layers)'}, {report['threads']} threads; "
        f"FMA peak {pk['fma_gflops']:.0f} GFLOP/s" + _dtype_note(report)
    )
    columns: list[tuple[str, Justify]] = [
        ("layer", "left"),
        ("gradient", "left"),
        ("ms", "right"),
        ("±", "right"),
        ("GFLOP/s", "right"),
        ("%peak", "right"),
        ("torch ms", "right"),
        ("±", "right"),
        ("GFLOP/s", "right"),
        ("%peak", "right"),
        ("vs torch", "right"),
        ("err", "right"),
        ("torch err", "right"),
    ]

    def side(s: dict | None) -> list[tuple[str, str | None]]:
        if not s:
            return [("", None)] * 4
        rate = f"{s['gflops']:.1f}" + ("*" if s.get("effective") else "") if "gflops" in s else f"{s['gbps']:.1f} GB/s"
        pct = f"{s['pct_peak']:.0f}" if "pct_peak" in s else ""
        return [(_ms(s["median_s"]), None), (f"{100 * s['spread']:.0f}%", None), (rate, None), (pct, None)]

    def err(s: dict | None) -> tuple[str, str | None]:
        e = (s or {}).get("max_rel_err")
        return ("" if e is None else f"{e:.1e}", None)

    rows, ends = [], []
    for L in report["layers"]:
        for i, r in enumerate(L["rows"]):
            # an input gradient says how it ran: the conv_grad kernel, or a forward conv and its algorithm
            via = "/".join(v for v in (r.get("route"), r.get("algorithm")) if v) if r["kind"] == "input" else ""
            label = KIND_LABEL[r["kind"]] + (f" → {via}" if via else "")
            row: list[tuple[str, str | None]] = [(L["name"] if i == 0 else "", None), (label, None)]
            row += side(r["ours"]) + side(r["torch"]) + [_ratio(r["ratio"]), err(r["ours"]), err(r["torch"])]
            rows.append(row)
        if L["rows"]:
            ends.append(len(rows) - 1)
    return title, columns, rows, ends


def _cells_and_caption(report: dict):
    if report.get("schema") == BACKWARD_SCHEMA:
        return backward_cells(report), BACKWARD_CAPTION
    return cells(report), CAPTION


def table(report: dict):
    """A rich Table of every layer in ``report`` (needs rich; see `plain_table`); forward or
    backward report alike."""
    from rich.table import Table
    from rich.text import Text

    (title, columns, rows, ends), caption = _cells_and_caption(report)
    t = Table(title=title, caption=caption, show_lines=False, header_style="bold")
    for j, (col, just) in enumerate(columns):
        t.add_column(col, justify=just, no_wrap=j < 7)  # name, time and rate columns stay on one line
    last = set(ends)
    for i, row in enumerate(rows):
        t.add_row(*(Text(text, style=style or "") for text, style in row), end_section=i in last)
    return t


def plain_table(report: dict) -> str:
    """The table of `table` as aligned plain text (no rich needed)."""
    (title, columns, rows, ends), caption = _cells_and_caption(report)
    texts = [[c for c, _ in columns]] + [[text for text, _ in row] for row in rows]
    widths = [max(len(r[j]) for r in texts) for j in range(len(columns))]

    def line(r):
        return "  ".join(
            v.ljust(w) if just == "left" else v.rjust(w) for v, w, (_, just) in zip(r, widths, columns)
        ).rstrip()

    rule = "-" * len(line(texts[0]))
    out = [title, rule, line(texts[0]), rule]
    last = set(ends)
    for i, r in enumerate(texts[1:]):
        out.append(line(r))
        if i in last:
            out.append(rule)
    out.append(caption)
    return "\n".join(out)


def skipped_lines(report: dict) -> list[str]:
    """One line per reason something was not measured, with the layers it applies to."""
    by_reason: dict[tuple[str, str], list[str]] = {}
    for L in report["layers"]:
        for s in L["skipped"]:
            reason = s["reason"].splitlines()[0][:160]
            by_reason.setdefault((s["name"], reason), []).append(L["name"])
    return [f"skipped {name} on {', '.join(layers)}: {reason}" for (name, reason), layers in by_reason.items()]


def write_json(report: dict, path: str | Path) -> None:
    assert report.get("schema") in (SCHEMA, BACKWARD_SCHEMA)
    Path(path).write_text(json.dumps(report, indent=1, default=float) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def plot(report: dict, path: str | Path) -> None:
    """Per-layer rates by algorithm and peer (grouped bars, log scale), with the machine's SGEMM
    rate and FMA peak as lines; pools in their own panel (GB/s). Needs matplotlib
    (`MissingExtra` otherwise)."""
    need_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    convs = [L for L in report["layers"] if L["unit"] == "GFLOP/s"]
    pools = [L for L in report["layers"] if L["unit"] != "GFLOP/s"]
    panels = [(convs, "gflops", "GFLOP/s (2·MACs of direct conv / time)")] if convs else []
    if pools:
        panels.append((pools, "gbps", "GB/s of input read"))
    widths = [max(2, len(ls)) for ls, _, _ in panels]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(min(24, 3 + 1.3 * sum(widths)), 6.5),
        gridspec_kw={"width_ratios": widths},
        squeeze=False,
    )
    cmap = plt.get_cmap("tab10")
    for ax, (layers, key, ylabel) in zip(axes[0], panels):
        # pools: our kernel of each kind is one series, "fastconv"
        def series_of(e: dict, key: str = key) -> str:
            return e["name"] if e["role"] == "peer" or key == "gflops" else "fastconv"

        series = []
        for L in layers:
            for e in L["entries"]:
                if series_of(e) not in series:
                    series.append(series_of(e))
        # ours in registry order, then auto and the one-shot conv2d(), then the peers in grey tones
        from fastconv.registry import names

        from .runner import LAYER_ROW

        rank = {n: i for i, n in enumerate(names() + ["auto", "conv2d()", *LAYER_ROW.values()] + list(PEER_LABEL))}
        series.sort(key=lambda s: rank.get(s, -1))
        peers = [s for s in series if s in PEER_LABEL]
        n = len(series)
        bw = 0.8 / n
        xs = np.arange(len(layers))
        for j, s in enumerate(series):
            vals = [next((e.get(key, 0) for e in L["entries"] if series_of(e) == s), 0) for L in layers]
            color = ("0.35", "0.6", "0.8", "0.1")[peers.index(s) % 4] if s in peers else cmap(j % 10)
            label = ("peer: " + s) if s in peers else s
            ax.bar(
                xs - 0.4 + bw * (j + 0.5),
                [v if v > 0 else np.nan for v in vals],
                bw,
                label=label,
                color=color,
                edgecolor="black" if s == "auto" else None,
                hatch="//" if "winograd" in s else None,
            )
        if key == "gflops":
            pk = report["peaks"]
            ax.axhline(pk["sgemm_gflops"], color="tab:red", ls="--", lw=1)
            ax.text(
                len(layers) - 0.5,
                pk["sgemm_gflops"],
                f" SGEMM {pk['sgemm_gflops']:.0f}",
                va="top",
                ha="right",
                color="tab:red",
                fontsize=8,
            )
            ax.axhline(pk["fma_gflops"], color="tab:purple", ls=":", lw=1)
            ax.text(
                len(layers) - 0.5,
                pk["fma_gflops"],
                f" FMA peak {pk['fma_gflops']:.0f}",
                va="bottom",
                ha="right",
                color="tab:purple",
                fontsize=8,
            )
            ax.set_title("convolution (hatched: Winograd, effective rate)")
        else:
            ax.set_title("pooling")
        ax.set_yscale("log")
        ax.set_xticks(xs, [L["name"] for L in layers], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if n > 6 else 1, loc="upper left")
    m = report["machine"]
    fig.suptitle(
        f"fastconv {m['fastconv']} — {m['cpu']['model']}, {report['threads']} threads "
        f"(suite {report['suite'] or 'layers'})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
