"""Other libraries measured beside fastconv: torch, ONNX Runtime and a plain NumPy baseline.

Each peer is optional: `make(name, layer, x, w, b, threads)` returns a ready-to-time callable,
or raises `Skip` with the reason (not installed, cannot run this layer), which the report
shows. Setup work (ONNX session creation, tensor wrapping) happens here, outside the timed
call, and is reported as the peer's prepare time.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..params import ConvParams, PoolParams

PEERS = ("torch", "onnxruntime", "numpy", "sgemm")
# thread-pool family of each peer, for the timer's cool-down rule
POOL_OF = {"torch": "torch", "onnxruntime": "onnxruntime", "numpy": "blas", "sgemm": "blas"}


class Skip(Exception):
    """This peer cannot be measured here; the message says why."""


def _need(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Skip(f"{module} not installed ({hint})")


# --- torch -------------------------------------------------------------------------------------
def _torch(p, x, w, b, threads: int) -> Callable[[], object]:
    _need("torch", "pip install 'fastconv[peers]'")
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    tx = torch.from_numpy(x)
    if isinstance(p, PoolParams):
        if p.kind == "max":
            k, s, pad, dil, ceil = p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode
            op = lambda: F.max_pool2d(tx, kernel_size=k, stride=s, padding=pad, dilation=dil, ceil_mode=ceil)
        elif p.kind == "avg":
            k, s, pad, ceil = p.kernel, p.stride, p.padding, p.ceil_mode
            inc, div = p.count_include_pad, p.divisor_override
            op = lambda: F.avg_pool2d(
                tx, kernel_size=k, stride=s, padding=pad, ceil_mode=ceil, count_include_pad=inc, divisor_override=div
            )
        else:
            op = lambda: F.adaptive_avg_pool2d(tx, p.output_size)
    else:
        if not p.symmetric_padding:
            raise Skip("asymmetric padding")
        tw, tb = torch.from_numpy(w), None if b is None else torch.from_numpy(b)
        args = p.functional_kwargs()
        op = lambda: F.conv2d(tx, tw, tb, **args)

    def run():
        with torch.no_grad():
            return op().numpy()

    return run


# --- ONNX Runtime ------------------------------------------------------------------------------
def _onnx_model(p, w, b):
    from onnx import TensorProto, helper, numpy_helper

    dt = TensorProto.FLOAT if p.dtype == "float32" else TensorProto.DOUBLE
    inits, inputs = [], ["x"]
    if isinstance(p, PoolParams):
        if p.kind == "adaptive_avg":
            if p.output_size != (1, 1):
                raise Skip("adaptive pooling to more than 1x1 has no ONNX operator")
            node = helper.make_node("GlobalAveragePool", ["x"], ["y"])
        else:
            attrs = dict(
                kernel_shape=list(p.kernel),
                strides=list(p.stride),
                pads=[*p.padding, *p.padding],
                ceil_mode=int(p.ceil_mode),
            )
            if p.kind == "max":
                attrs["dilations"] = list(p.dilation)
                node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
            else:
                if p.divisor_override:
                    raise Skip("divisor_override has no ONNX equivalent")
                node = helper.make_node(
                    "AveragePool", ["x"], ["y"], count_include_pad=int(p.count_include_pad), **attrs
                )
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        inputs.append("w")
        if b is not None:
            inits.append(numpy_helper.from_array(b, "b"))
            inputs.append("b")
        top, bottom, left, right = p.pad
        node = helper.make_node(
            "Conv",
            inputs,
            ["y"],
            kernel_shape=[p.kh, p.kw],
            strides=list(p.stride),
            pads=[top, left, bottom, right],
            dilations=list(p.dilation),
            group=p.groups,
        )
    graph = helper.make_graph(
        [node],
        "layer",
        [helper.make_tensor_value_info("x", dt, list(p.input_shape))],
        [helper.make_tensor_value_info("y", dt, list(p.out_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # the newest onnx writes an IR version older runtimes refuse; 8 carries opset 17
    return model


def _onnxruntime(p, x, w, b, threads: int) -> Callable[[], object]:
    _need("onnxruntime", "pip install 'fastconv[peers]'")
    _need("onnx", "pip install onnx (builds the one-node model)")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(_onnx_model(p, w, b).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x}
    return lambda: sess.run(None, feed)[0]


# --- NumPy baseline ----------------------------------------------------------------------------
def _numpy(p, x, w, b, threads: int) -> Callable[[], object]:
    """What one writes with NumPy alone: pad, a strided window view, one tensordot/einsum."""
    if isinstance(p, PoolParams):
        return _numpy_pool(p, x)
    from numpy.lib.stride_tricks import sliding_window_view

    top, bottom, left, right = p.pad
    sh, sw = p.stride
    dh, dw = p.dilation
    g, cig, cog = p.groups, p.c_in_per_group, p.c_out_per_group
    wg = w.reshape(g, cog, cig, p.kh, p.kw)
    bias = None if b is None else b[None, :, None, None]

    def run():
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(p.pad) else x
        win = sliding_window_view(xp, ((p.kh - 1) * dh + 1, (p.kw - 1) * dw + 1), axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, : p.out_h, : p.out_w]  # N, C, OH, OW, kh, kw
        if g == 1:
            y = np.tensordot(w, win, axes=([1, 2, 3], [1, 4, 5])).transpose(1, 0, 2, 3)
        else:
            win = win.reshape(p.n, g, cig, p.out_h, p.out_w, p.kh, p.kw)
            y = np.einsum("ngcijuv,gocuv->ngoij", win, wg, optimize=True).reshape(p.out_shape)
        return y + bias if bias is not None else y

    return run


def _numpy_pool(p: PoolParams, x: np.ndarray) -> Callable[[], object]:
    """Pooling with NumPy alone: pad, then one np.maximum / np.add per window tap over strided slices.

    Also the gate's second reference for pools (fixed code with the pool's memory footprint; see
    fastconv.bench.compare), so it follows torch's rules exactly and is checked like every entry.
    """
    if p.kind == "adaptive_avg":
        if p.output_size != (1, 1):
            raise Skip("adaptive pooling to more than 1x1 has no NumPy baseline")
        return lambda: x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype)
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = p.kernel, p.stride, p.padding, (p.out_h, p.out_w)
    dh, dw = p.dilation if p.kind == "max" else (1, 1)
    # rows/columns the windows reach: padding on both sides plus ceil_mode's overhang
    hh, ww = max(p.h + 2 * ph, (oh - 1) * sh + (kh - 1) * dh + 1), max(p.w + 2 * pw, (ow - 1) * sw + (kw - 1) * dw + 1)
    pads = ((0, 0), (0, 0), (ph, hh - p.h - ph), (pw, ww - p.w - pw))
    taps = [(u * dh, v * dw) for u in range(kh) for v in range(kw)]

    def windows(a):
        return [a[:, :, r : r + (oh - 1) * sh + 1 : sh, c : c + (ow - 1) * sw + 1 : sw] for r, c in taps]

    if p.kind == "max":

        def run_max():
            first, *rest = windows(np.pad(x, pads, constant_values=-np.inf))
            y = first.copy()
            for t in rest:
                np.maximum(y, t, out=y)
            return y

        return run_max
    # divisor: divisor_override, else the taps over input (and padding, if counted) — never the overhang
    if p.divisor_override:
        div = np.asarray(float(p.divisor_override))
    else:
        inside = (
            np.ones((1, 1, p.h + 2 * ph, p.w + 2 * pw))
            if p.count_include_pad
            else np.pad(np.ones((1, 1, p.h, p.w)), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        )
        inside = np.pad(inside, ((0, 0), (0, 0), (0, hh - inside.shape[2]), (0, ww - inside.shape[3])))
        div = sum(windows(inside))

    def run_avg():
        acc = sum(t.astype(np.float64) for t in windows(np.pad(x, pads)))
        return (acc / div).astype(x.dtype)

    return run_avg


@dataclass(frozen=True)
class Timed:
    """A peer whose timed call is less than the call that returns its output (the runner times
    ``timed`` and checks ``output()``)."""

    output: Callable[[], object]
    timed: Callable[[], object]

    def __call__(self) -> object:
        return self.output()


def _sgemm(p, x, w, b, threads: int) -> Callable[[], object]:
    """The plain GEMM a 1x1 layer is: ``W[C_out × C_in] @ x[n]`` (C_in × H·W) per image, NumPy's
    BLAS at the knob's thread count, no bias, into a preallocated output — the yardstick of the
    1x1 path ("≥ 0.95× a plain SGEMM with the same M, N, K")."""
    if isinstance(p, PoolParams) or (p.kh, p.kw) != (1, 1) or p.stride != (1, 1) or any(p.pad) or p.groups != 1:
        raise Skip("plain GEMM row only for 1x1 / stride 1 / padding 0 / groups 1 layers")
    w2 = np.ascontiguousarray(w.reshape(p.c_out, p.c_in))
    x3 = x.reshape(p.n, p.c_in, p.h * p.w)
    out = np.empty((p.n, p.c_out, p.h * p.w), dtype=x.dtype)

    def run():
        np.matmul(w2, x3, out=out)
        return out.reshape(p.out_shape) + (0 if b is None else b[None, :, None, None])  # for the error column

    return Timed(run, lambda: np.matmul(w2, x3, out=out))


_MAKERS = {"torch": _torch, "onnxruntime": _onnxruntime, "numpy": _numpy, "sgemm": _sgemm}


_MODULES = {"torch": ("torch",), "onnxruntime": ("onnxruntime", "onnx"), "numpy": (), "sgemm": ()}


def load(name: str) -> None:
    """Import a peer's libraries (slow for torch) before its setup is timed; `Skip` if missing."""
    import importlib

    for mod in _MODULES[name]:
        _need(mod, "pip install 'fastconv[peers]'")
        importlib.import_module(mod)


def make(
    name: str, p: ConvParams | PoolParams, x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, threads: int
) -> Callable[[], object]:
    """A callable running peer ``name`` on this layer, or `Skip` with the reason."""
    try:
        return _MAKERS[name](p, x, w, b, threads)
    except Skip:
        raise
    except Exception as e:  # a peer's own failure must not stop the benchmark: report it
        raise Skip(f"{type(e).__name__}: {e}") from None
