"""Benchmark suites: named layers read from small text files (or one ``--layer`` string).

The canonical files live in this package (``fastconv/bench/suites/*.txt``) so that an
installed fastconv has them; ``benchmarks/suites/README.md`` points here. Format, one layer
per line (``#`` starts a comment)::

    <name> conv N,C_in,H,C_out,k,s,p [g=G]      square input and kernel (H = W)
    <name> conv N,C_in,H,W,C_out,k,s,p [g=G]    rectangular input
    <name> max|avg N,C,H,W,k,s,p                pooling
    <name> gap N,C,H,W                          global average pooling
    include <suite>                             the layers of another suite

Network suites come from the layer shapes of `fastconv.zoo` instead of a file: ``nets`` (every
network), ``nets:<net>[,<net>...]`` and, where no shipped file has the name, the bare network
name (``resnet18``, ``mobilenetv2``, ...; ``resnet50`` and ``vgg16`` are the hand-picked files,
their whole networks ``nets:resnet50`` and ``nets:vgg16``). They hold each distinct conv and pool
shape once, at batch 1 and 8 by default, named after its first use (``resnet50.conv1@b8``), with
how often each network runs it (`Layer.uses`).

Malformed input raises `SuiteError` with the file, line and what was expected; the CLI
prints it as one line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from ..params import ConvParams, PoolParams

DEFAULT_SUITE = "default"
NETS_SUITE = "nets"
NET_BATCHES = (1, 8)


class SuiteError(ValueError):
    """A suite name, file or layer string that cannot be read."""


@dataclass(frozen=True)
class Layer:
    """A layer to benchmark; ``uses`` says which networks run it how often: ``(net, batch, count)``
    triples (network suites only; empty for file suites)."""

    name: str
    params: ConvParams | PoolParams
    uses: tuple[tuple[str, int, int], ...] = ()

    @property
    def is_pool(self) -> bool:
        return isinstance(self.params, PoolParams)


def _suite_dir():
    return resources.files("fastconv.bench") / "suites"


def available() -> list[str]:
    """Names of the suite files shipped with fastconv."""
    return sorted(p.name[:-4] for p in _suite_dir().iterdir() if p.name.endswith(".txt"))


def net_suites() -> list[str]:
    """Names of the network suites: ``nets``, then one per network (its bare name where no
    shipped file has it, else ``nets:<net>``)."""
    from .. import zoo

    files = set(available())
    return [NETS_SUITE] + [n if n not in files else f"{NETS_SUITE}:{n}" for n in zoo.net_names()]


def _net_list(suite: str) -> list[str] | None:
    """The networks a suite name stands for, or None if it is not a network suite."""
    from .. import zoo

    if suite == NETS_SUITE:
        return zoo.net_names()
    if suite.startswith(NETS_SUITE + ":"):
        names = [n.strip() for n in suite[len(NETS_SUITE) + 1 :].split(",") if n.strip()]
        bad = [n for n in names if n not in zoo.NETS]
        if bad or not names:
            raise SuiteError(
                f"unknown network {bad[0] if bad else ''!r} in suite {suite!r}; networks: {', '.join(zoo.net_names())}"
            )
        return names
    return [suite] if suite in zoo.NETS else None


def is_net_suite(suite: str) -> bool:
    """Whether ``suite`` names a network suite (`net_suites`) rather than a file."""
    path = Path(suite)
    if path.suffix == ".txt" or path.exists() or (_suite_dir() / f"{suite}.txt").is_file():
        return False
    try:
        return _net_list(suite) is not None
    except SuiteError:
        return True


def net_layers(nets: list[str], batches: tuple[int, ...] = NET_BATCHES) -> list[Layer]:
    """Every distinct conv and pool shape of ``nets`` at each batch size, once.

    A shape that several networks share (ResNet-18's and ResNet-50's stem) is one layer, named
    after its first use, whose `Layer.uses` lists every network and count.

    Parameters
    ----------
    nets : list of str
        Keys of `fastconv.zoo.NETS`.
    batches : tuple of int
        Batch sizes; each gives its own layers (suffix ``@b<N>``).
    """
    from .. import zoo

    layers: dict[ConvParams | PoolParams, list] = {}
    for batch in batches:
        for net in nets:
            for L, count in zoo.distinct_layers(net, batch):
                assert not isinstance(L.params, zoo.FC)  # distinct_layers leaves the FC layers out
                entry = layers.setdefault(L.params, [f"{L.name}@b{batch}", []])
                entry[1].append((net, batch, count))
    return [Layer(name, p, tuple(uses)) for p, (name, uses) in layers.items()]


def with_batches(layers: list[Layer], batches: tuple[int, ...]) -> list[Layer]:
    """File-suite layers re-batched: each layer at each batch size (``@b<N>`` names when several)."""
    out = []
    for b in batches:
        for L in layers:
            name = f"{L.name}@b{b}" if len(batches) > 1 else L.name
            out.append(Layer(name, replace(L.params, n=b), L.uses))
    return out


def _ints(text: str, where: str, counts: tuple[int, ...], what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise SuiteError(f"{where}: expected {what} (comma-separated integers), got {text!r}") from None
    if len(vals) not in counts:
        raise SuiteError(
            f"{where}: expected {what} ({' or '.join(map(str, counts))} numbers), got {len(vals)} in {text!r}"
        )
    if any(v < 0 for v in vals) or any(v == 0 for v in vals[: len(vals) - 1]):
        raise SuiteError(f"{where}: sizes must be positive (padding >= 0), got {text!r}")
    return vals


CONV_FORMAT = "N,C_in,H,C_out,k,s,p or N,C_in,H,W,C_out,k,s,p"


def parse_conv(spec: str, extra: list[str], where: str) -> ConvParams:
    vals = _ints(spec, where, (7, 8), CONV_FORMAT)
    if len(vals) == 7:
        n, c, h, co, k, s, pad = vals
        w = h
    else:
        n, c, h, w, co, k, s, pad = vals
    groups = 1
    for opt in extra:
        if not opt.startswith("g="):
            raise SuiteError(f"{where}: unknown option {opt!r} (only g=<groups>)")
        groups = _ints(opt[2:], where, (1,), "g=<groups>")[0]
    if c % groups or co % groups:
        raise SuiteError(f"{where}: groups={groups} must divide C_in={c} and C_out={co}")
    p = ConvParams.from_layer(n, c, h, co, k, s, pad, groups=groups, w=w)
    if p.out_h < 1 or p.out_w < 1:
        raise SuiteError(f"{where}: kernel {k} with padding {pad} does not fit a {h}x{w} input")
    return p


def parse_pool(kind: str, spec: str, where: str) -> PoolParams:
    if kind == "gap":
        n, c, h, w = _ints(spec, where, (4,), "N,C,H,W")
        return PoolParams("adaptive_avg", n, c, h, w, output_size=(1, 1))
    n, c, h, w, k, s, pad = _ints(spec, where, (7,), "N,C,H,W,k,s,p")
    if pad * 2 > k:
        raise SuiteError(f"{where}: pool padding {pad} must be at most half the window {k}")
    p = PoolParams(kind, n, c, h, w, (k, k), (s, s), (pad, pad))
    if p.out_h < 1 or p.out_w < 1:
        raise SuiteError(f"{where}: window {k} does not fit a {h}x{w} input")
    return p


def parse_line(line: str, where: str) -> Layer:
    parts = line.split()
    if len(parts) < 3:
        raise SuiteError(f"{where}: expected '<name> conv|max|avg|gap <sizes>', got {line.strip()!r}")
    name, kind, spec, extra = parts[0], parts[1], parts[2], parts[3:]
    if kind == "conv":
        return Layer(name, parse_conv(spec, extra, where))
    if kind in ("max", "avg", "gap"):
        if extra:
            raise SuiteError(f"{where}: unexpected {' '.join(extra)!r} after a pool layer")
        return Layer(name, parse_pool(kind, spec, where))
    raise SuiteError(f"{where}: layer kind must be conv, max, avg or gap, got {kind!r}")


def parse_layer_arg(text: str) -> Layer:
    """A ``--layer`` value: ``N,C,H,W,Cout,k,s,p`` (or 7 numbers with H=W), optionally
    ``...:g=G``; or a pool ``max:N,C,H,W,k,s,p`` / ``avg:...`` / ``gap:N,C,H,W``."""
    where = f"--layer {text!r}"
    head, _, rest = text.partition(":")
    if head in ("max", "avg", "gap"):
        return Layer(f"{head}:{rest}", parse_pool(head, rest, where))
    extra = [rest] if rest else []
    return Layer(f"layer:{head}", parse_conv(head, extra, where))


def _read(text: str, origin: str, seen: tuple[str, ...]) -> list[Layer]:
    layers: list[Layer] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{origin}:{no}"
        if line.startswith("include "):
            layers += load(line.split(None, 1)[1].strip(), seen + (origin,))
        else:
            layers.append(parse_line(line, where))
    return layers


def load(suite: str, _seen: tuple[str, ...] = (), *, batches: tuple[int, ...] | None = None) -> list[Layer]:
    """Layers of a shipped suite (by name), a suite file (by path) or a network suite.

    Parameters
    ----------
    suite : str
        A name from `available` or `net_suites`, ``nets:<net>,...``, or a path to a suite file.
    batches : tuple of int, optional
        Batch sizes: a network suite's (default `NET_BATCHES`); a file suite's layers are
        re-batched to each (default: the batch each line gives).

    Returns
    -------
    list of Layer
    """
    if batches is not None:
        if not batches or min(batches) < 1:
            raise SuiteError(f"batch sizes must be positive, got {list(batches)}")
        batches = tuple(dict.fromkeys(batches))
    nets = (
        None
        if (Path(suite).suffix == ".txt" or Path(suite).exists() or (_suite_dir() / f"{suite}.txt").is_file())
        else _net_list(suite)
    )
    if nets is not None:
        return net_layers(nets, batches or NET_BATCHES)
    layers = _load_file(suite, _seen)
    return with_batches(layers, batches) if batches else layers


def _load_file(suite: str, _seen: tuple[str, ...] = ()) -> list[Layer]:
    if suite in _seen:
        raise SuiteError(f"suite {suite!r} includes itself ({' -> '.join(_seen + (suite,))})")
    path = Path(suite)
    if path.suffix == ".txt" or path.exists():
        try:
            text = path.read_text()
        except OSError as e:
            raise SuiteError(f"cannot read suite file {suite!r}: {e.strerror or e}") from None
        return _read(text, str(path), _seen)
    shipped = _suite_dir() / f"{suite}.txt"
    if not shipped.is_file():
        raise SuiteError(
            f"unknown suite {suite!r}; choose one of {', '.join(available() + net_suites())} "
            f"or give a path to a suite file"
        )
    return _read(shipped.read_text(), suite, _seen)
