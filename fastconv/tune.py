"""The measured tuner: time every eligible algorithm on a layer on this machine, keep the fastest.

Like ``torch.backends.cudnn.benchmark``, but the measurement outlives the process: the times go
to a JSON file in the user's cache directory (`cache_path`), one file per CPU model, CPU flags
and thread count, keyed by the layer's description (`layer_key`, batch size included). ``auto``
(`fastconv.rules`) is a fixed table measured on one machine; the tuner answers for this one.

Which algorithms may be chosen (``accuracy``)
---------------------------------------------
Every algorithm has an accuracy contract (`fastconv.registry.Kernel`): ``|y − ref| ≤ tol · scale``
where ``scale`` is `fastconv.testing.conv_error_bound` with the kernel's ``error_tile`` (0: the
sum of the absolute products, as in a dot product; m: Winograd's Σ|W|·max|X| over an m-tile, a
larger scale for every output). Algorithm C is *no looser than* A on layer p when

    C.error_tile <= A.error_tile  and  C.tolerance_for(p) <= A.tolerance_for(p)

— then C's guaranteed error bound is at most A's for every input. The policies:

* ``"contract"`` (default): candidates no looser than ``auto``'s choice for p. Where auto runs
  direct (tile 0, 2e-5), Winograd of any tile is excluded; where auto runs Winograd (tile 4,
  1e-4), every algorithm qualifies. The tuner never gives a user a weaker guarantee than auto.
* ``"strict"``: candidates no looser than ``direct`` (the dot-product algorithms only).
* ``"any"``: every algorithm that runs p (Winograd F(4x4) where auto runs direct, too).

Every candidate also has to run p (``supports(p) is None``) within the workspace limit.

The choice
----------
The candidate with the lowest median time, except that ``auto``'s choice is kept unless another
candidate is more than `MARGIN` faster: the medians of two equal kernels differ by a few % from
run to run on a shared machine, and a tie should not flip the algorithm between tunings. Each
policy's choice is derived from the same stored times, so one tuning serves every policy whose
candidates it timed.

`lookup`, `tune_layer` and `cache_path` are what ``Conv2d(..., algo="tune")`` / ``FASTCONV_TUNE=1``
use; ``fastconv tune`` fills the cache for a suite.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import registry as _registry
from . import rules as _rules
from . import threads
from .memory import get_workspace_limit as _workspace_limit
from .params import ConvParams
from .plan import Plan as _Plan

SCHEMA = "fastconv-tune/1"
ACCURACY = ("contract", "strict", "any")
MARGIN = 0.03  # auto's choice stays unless another candidate is >3% faster (median)
REPEATS = 7  # timed samples per candidate
MIN_SAMPLE_S = 0.01  # a sample repeats the call until it lasts this long


# --- where --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def machine_tag() -> str:
    """``<cpu-model-slug>-<cpu-flags-hash>``: what names this machine's tune cache and CI gate
    baseline (`benchmarks/baselines/`), whose numbers only hold on the CPU they were measured on."""
    from .bench import machine

    c = machine.cpu()
    slug = re.sub(r"[^a-z0-9]+", "-", c["model"].lower()).strip("-")[:48] or "cpu"
    return f"{slug}-{c['flags_hash']}"


def cache_path(threads_: int | None = None) -> Path:
    """The tune cache file of this machine at ``threads_`` threads (default: the current count).

    ``FASTCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastconv``, else ``~/.cache/fastconv``, then
    ``tune-<cpu-model-slug>-<cpu-flags-hash>-t<threads>.json``: a choice measured on another CPU or
    thread count does not carry over, so each gets its own file.

    Parameters
    ----------
    threads_ : int, optional
        Thread count; default `fastconv.get_num_threads`.

    Returns
    -------
    pathlib.Path
        The file (it may not exist yet).
    """
    from .bench.machine import cache_dir

    nt = threads_ if threads_ is not None else threads.get_num_threads()
    return cache_dir() / f"tune-{machine_tag()}-t{nt}.json"


def layer_key(p: ConvParams) -> str:
    """The cache key of layer ``p``: every field a kernel's speed may depend on."""
    return (
        f"n{p.n} c{p.c_in} {p.h}x{p.w} -> {p.c_out} k{p.kh}x{p.kw} s{p.stride[0]}x{p.stride[1]} "
        f"p{','.join(map(str, p.pad))} d{p.dilation[0]}x{p.dilation[1]} g{p.groups} {p.dtype} "
        f"bias{int(p.has_bias)} {p.pass_} {p.layout}" + (f" +{'+'.join(p.post_ops)}" if p.post_ops else "")
    )


# --- which --------------------------------------------------------------------------------------
def _no_looser(c: Any, a: Any, p: ConvParams) -> bool:
    return c.error_tile <= a.error_tile and c.tolerance_for(p) <= a.tolerance_for(p)


def _check_accuracy(accuracy: str) -> None:
    if accuracy not in ACCURACY:
        raise ValueError(f"accuracy must be one of {', '.join(map(repr, ACCURACY))}; got {accuracy!r}")


def candidates(p: ConvParams, accuracy: str = "contract") -> list[Any]:
    """The registered algorithms the tuner may pick for ``p`` under ``accuracy`` (module doc).

    Parameters
    ----------
    p : ConvParams
        The layer.
    accuracy : {"contract", "strict", "any"}
        The policy: no looser than auto's choice, no looser than direct, or anything that runs.

    Returns
    -------
    list of registry.Kernel
        In registry order; auto's choice is always among them (under "strict", direct is).
    """
    _check_accuracy(accuracy)
    ref = {
        "contract": lambda: _rules.select(p, "auto"),
        "strict": lambda: _registry.get("direct"),
        "any": lambda: None,
    }[accuracy]()
    nt = threads.get_num_threads()
    out = []
    for a in _registry.REGISTRY:
        if a.supports(p) is not None or (ref is not None and not _no_looser(a, ref, p)):
            continue
        if _workspace(a, p, nt) > _workspace_limit():
            continue
        out.append(a)
    return out


def _workspace(a: Any, p: ConvParams, nt: int) -> int:
    try:
        return int(a.workspace_bytes(p, nt))
    except TypeError:  # pragma: no cover - the one-argument form of older trees
        return int(a.workspace_bytes(p))


def _pick(times: dict[str, float], auto: str) -> str:
    best = min(times, key=lambda name: times[name])
    if auto in times and times[auto] <= (1 + MARGIN) * times[best]:
        return auto
    return best


# --- the cache file -----------------------------------------------------------------------------
_memory: dict[Path, tuple[int, dict]] = {}  # path -> (mtime_ns, entries): one read per change


def _version() -> str:
    from . import __version__

    return __version__


def _read(path: Path) -> dict:
    """The file's entries ({} if missing, unreadable, of another schema or fastconv version)."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return {}
    hit = _memory.get(path)
    if hit and hit[0] == mtime:
        return hit[1]
    try:
        data = json.loads(path.read_text())
        entries = data["entries"] if data.get("schema") == SCHEMA and data.get("fastconv") == _version() else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        entries = {}  # a damaged file is re-measured, not an error on every call
    _memory[path] = (mtime, entries)
    return entries


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock beside ``path``, so two tuning processes merge rather than overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: last writer wins
            pass
        yield


def _store(path: Path, key: str, times: dict[str, float]) -> None:
    from .bench import machine

    with _locked(path):
        _memory.pop(path, None)
        entries = dict(_read(path))
        entry = entries.get(key, {"times": {}})
        entry = {"times": {**entry.get("times", {}), **times}, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        entries[key] = entry
        c = machine.cpu()
        data = {
            "schema": SCHEMA,
            "fastconv": _version(),
            "cpu": c["model"],
            "flags_hash": c["flags_hash"],
            "threads": int(path.stem.rsplit("-t", 1)[1]),
            "entries": entries,
        }
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    _memory.pop(path, None)


def entry(p: ConvParams) -> dict | None:
    """The cached measurement of ``p`` at the current thread count: ``{"times": {algo: median_s},
    "measured_at": ...}``, or None."""
    return _read(cache_path()).get(layer_key(p))


# --- the two calls the layers use ---------------------------------------------------------------
def lookup(p: ConvParams, accuracy: str = "contract") -> str | None:
    """The tuned algorithm for layer ``p`` at the current thread count, from the cache only.

    Parameters
    ----------
    p : ConvParams
        The layer (batch size included: each batch size is tuned on its own).
    accuracy : {"contract", "strict", "any"}
        The policy of the module doc.

    Returns
    -------
    str or None
        A registered algorithm's name; None when the cache has no measurement of every candidate
        of ``p`` under ``accuracy`` (call `tune_layer`), e.g. a new layer or another policy.
    """
    e = _read(cache_path()).get(layer_key(p))
    if e is None:
        return None
    names = [a.name for a in candidates(p, accuracy)]
    times = e.get("times", {})
    if not names or any(n not in times for n in names):
        return None
    return _pick({n: times[n] for n in names}, _rules.select(p, "auto").name)


def _data(p: ConvParams, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, p.input_shape).astype(p.dtype)
    w = (rng.uniform(-1, 1, p.weight_shape) / np.sqrt(p.c_in_per_group * p.kh * p.kw)).astype(p.dtype)
    b = rng.uniform(-0.1, 0.1, p.c_out).astype(p.dtype) if p.has_bias else None
    return x, w, b


def measure(
    p: ConvParams, algos: list[Any], repeats: int = REPEATS, min_sample_s: float = MIN_SAMPLE_S, seed: int = 0
) -> dict[str, float]:
    """Median seconds per call of each algorithm in ``algos`` on ``p``, timed interleaved
    (`fastconv.bench.timer.measure`: rotated rounds, so a slow spell hits every candidate)
    with prepared weights and a preallocated output — what a layer object's call runs."""
    from .bench.timer import Candidate
    from .bench.timer import measure as _measure

    x, w, b = _data(p, seed)
    threads.apply()
    cands = []
    for a in algos:
        plan = _Plan(a, w, b, p)
        out = np.empty(p.out_shape, dtype=p.dtype)
        cands.append(Candidate(a.name, functools.partial(plan.run, x, out)))
    timings = _measure(cands, repeats, min_sample_s, max_time_s=2.0, cooldown_s=0.0)
    return {name: t.median for name, t in timings.items()}


def tune_layer(
    p: ConvParams,
    accuracy: str = "contract",
    *,
    force: bool = False,
    repeats: int = REPEATS,
    min_sample_s: float = MIN_SAMPLE_S,
) -> str:
    """Time the candidates of layer ``p`` on this machine (once) and return the fastest.

    Parameters
    ----------
    p : ConvParams
        The layer (batch size included).
    accuracy : {"contract", "strict", "any"}
        Which algorithms may be chosen (module doc); default: none looser than auto's.
    force : bool
        Measure again even if the cache answers (`lookup`).
    repeats, min_sample_s
        Timed samples per candidate, and the least duration of one sample.

    Returns
    -------
    str
        The chosen algorithm's name. When the cache cannot answer (or ``force``), every candidate
        is timed, interleaved, and the times are merged into the cache file (`cache_path`).

    Examples
    --------
    >>> tune_layer(ConvParams.from_layer(1, 8, 12, 8, 3, padding=1))   # doctest: +SKIP
    'direct'
    """
    _check_accuracy(accuracy)
    auto = _rules.select(p, "auto").name
    if p.n == 0:
        return auto  # nothing to time: an empty batch runs no kernel
    if not force:
        hit = lookup(p, accuracy)
        if hit is not None:
            return hit
    # every candidate is timed again, in the same interleaved rounds: times from another session
    # (another load on the machine) would not compare fairly with the new ones
    algos = candidates(p, accuracy)
    times = measure(p, algos, repeats, min_sample_s)
    _store(cache_path(), layer_key(p), times)
    return _pick(times, auto)


def tune_layers(
    layers: list[tuple[str, ConvParams]],
    accuracy: str = "contract",
    *,
    force: bool = False,
    repeats: int = REPEATS,
    report: Callable[[dict], None] | None = None,
) -> list[dict]:
    """`tune_layer` over ``(name, params)`` pairs (what ``fastconv tune`` runs).

    Returns
    -------
    list of dict
        Per layer: ``name``, ``describe``, ``choice``, ``auto``, ``cached`` (no timing was
        needed), ``times`` and ``speedup`` (auto's median / the choice's). ``report`` is called
        with each as it is done.
    """
    rows = []
    for name, p in layers:
        cached = not force and lookup(p, accuracy) is not None
        choice = tune_layer(p, accuracy, force=force, repeats=repeats)
        auto = _rules.select(p, "auto").name
        times = (entry(p) or {}).get("times", {})
        row = {
            "name": name,
            "describe": p.describe(),
            "choice": choice,
            "auto": auto,
            "cached": cached,
            "times": times,
            "speedup": times[auto] / times[choice] if auto in times and choice in times else None,
        }
        rows.append(row)
        if report:
            report(row)
    return rows


__all__ = [
    "ACCURACY",
    "MARGIN",
    "cache_path",
    "candidates",
    "entry",
    "layer_key",
    "lookup",
    "measure",
    "tune_layer",
    "tune_layers",
]
