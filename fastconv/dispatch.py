"""The algorithm registry and the ``auto`` chooser.

One list, `REGISTRY`, names every convolution algorithm; tests, benchmarks and ``fastconv
info`` iterate over it, so adding an algorithm is one kernel module plus one line here.
Each kernel module in ``fastconv.kernels`` follows the same contract:

    supports(p: ConvParams, **options) -> str | None   # None, or why it cannot run p
    workspace_bytes(p, **options) -> int               # scratch memory run() will allocate
    prepare(w, b, p, **options) -> packed              # one-time weight work (plan once)
    run(x, packed, p, out, **options) -> None          # writes the result into out

Kernel modules are imported lazily (on first use), so ``import fastconv`` stays cheap and
does not start the JIT.
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from . import threads, validate
from .params import ConvParams, PoolParams


@dataclass(frozen=True)
class Algorithm:
    """One registered convolution algorithm (a kernel module plus fixed options)."""

    name: str
    module: str                    # e.g. "fastconv.kernels.direct"
    language: str                  # "cython" today (see each module docstring for why)
    summary: str
    # Accuracy contract checked by the tests: |y − ref| ≤ tol · scale, where scale is
    # fastconv.testing.conv_error_bound(..., tile=error_tile): for error_tile=0 the sum of absolute
    # products each output adds up, |W| ⊛ |X| + |b| (the natural scale of rounding in a dot product);
    # for Winograd F(m x m) (error_tile=m, the largest tile it may use) Σ|W| · max|X| over the tile,
    # because its transforms mix every tap with every pixel of the tile.
    tolerance: dict[str, float] = field(default_factory=lambda: {"float32": 2e-5, "float64": 1e-12})
    options: dict[str, Any] = field(default_factory=dict)
    error_tile: int = 0
    # per-kernel-size overrides of `tolerance` (kernel height -> tolerances by dtype)
    kernel_tolerance: dict[int, dict[str, float]] = field(default_factory=dict)

    def tolerance_for(self, p: ConvParams) -> float:
        """The accuracy contract's tolerance for layer ``p`` (see `tolerance`)."""
        return self.kernel_tolerance.get(p.kh, self.tolerance)[p.dtype]

    @cached_property
    def kernel(self):
        mod = importlib.import_module(self.module)
        threads.apply()  # the kernel may have loaded a new thread pool (OpenMP, BLAS)
        return mod

    def supports(self, p: ConvParams) -> str | None:
        return self.kernel.supports(p, **self.options)

    def workspace_bytes(self, p: ConvParams) -> int:
        return int(self.kernel.workspace_bytes(p, **self.options))

    def prepare(self, w: np.ndarray, b: np.ndarray | None, p: ConvParams) -> Any:
        return self.kernel.prepare(w, b, p, **self.options)

    def run(self, x: np.ndarray, packed: Any, p: ConvParams, out: np.ndarray) -> None:
        check_workspace(self, p)
        self.kernel.run(x, packed, p, out, **self.options)
        threads.after_first_run(self.name)


_K = "fastconv.kernels."
REGISTRY: list[Algorithm] = [
    Algorithm("direct", _K + "direct", "cython",
              "direct: phase-packed input, register-blocked channels x positions; any stride/padding/"
              "dilation/groups"),
    Algorithm("im2col", _K + "im2col", "cython",
              "im2col + GEMM over bounded tiles of output pixels (AVX-512 micro-kernel for float32, "
              "BLAS otherwise); any stride/padding/dilation/groups"),
    Algorithm("pointwise", _K + "pointwise", "cython",
              "1x1 kernels as BLAS GEMMs straight on NCHW, split over threads; strided via im2col tiles"),
    # Winograd tolerances, from the contract metric (error_tile: scale = sum|W| x max|X| over the
    # tile, see fastconv.testing.conv_error_bound) measured over the case table x 20 seeds:
    #   F(2x2,3x3): float32 worst 1.2e-7, float64 2.9e-16  -> 1e-5 / 1e-13  (>= 80x margin)
    #   F(4x4,3x3): float32 worst 1.8e-6, float64 3.2e-15  -> 1e-4 / 1e-12  (>= 55x margin)
    #   F(2x2,5x5): float32 worst 1.8e-6, float64 3.1e-15  -> 1e-4 / 1e-12  (>= 55x margin; it
    #     interpolates at F(4x4,3x3)'s six points, and errs like it)
    # Max |y - ref| / max |ref| on the suite's 3x3 layers: F(2x2) 8.8e-7, F(4x4) 1.4e-5 (torch's
    # float32 conv: 3.7e-7); kernels/winograd.pyx has the per-layer table.
    Algorithm("winograd", _K + "winograd", "cython",
              "Winograd, tile chosen per layer (F(4x4,3x3), or F(2x2,3x3) where it needs fewer GEMM "
              "rows, e.g. 7x7 maps; F(2x2,5x5) for 5x5): 3x3 or 5x5, stride 1, dilation 1",
              tolerance={"float32": 1e-4, "float64": 1e-12}, options={"tile": 0}, error_tile=4),
    Algorithm("winograd_f2", _K + "winograd", "cython",
              "Winograd F(2x2,3x3) or F(2x2,5x5): 3x3 or 5x5, stride 1, dilation 1",
              tolerance={"float32": 1e-5, "float64": 1e-13}, options={"tile": 2}, error_tile=2,
              kernel_tolerance={5: {"float32": 1e-4, "float64": 1e-12}}),
    Algorithm("winograd_f4", _K + "winograd", "cython",
              "Winograd F(4x4,3x3): 3x3, stride 1, dilation 1; fewer multiplies, larger error",
              tolerance={"float32": 1e-4, "float64": 1e-12}, options={"tile": 4}, error_tile=4),
]
BY_NAME: dict[str, Algorithm] = {a.name: a for a in REGISTRY}


def names() -> list[str]:
    return [a.name for a in REGISTRY]


def get(name: str) -> Algorithm:
    return BY_NAME[name]


# Square stride-1 kernels auto runs with Winograd: size -> (least input, least output) channels
# per group. 5x5: F(2x2,5x5) won from 10 input / 20 output channels (lenet.conv2, 64x10x12x12 ->
# 20: 0.34 vs direct 0.40 ms) and lost below (8 -> 16 on 12x12: 0.053 vs 0.042; 6 -> 16: 0.116 vs
# 0.090; LeNet's 1-channel conv1: 0.97 vs 0.18).
_WINOGRAD_MIN_CHANNELS = {3: (16, 16), 5: (10, 16)}
# A one-off call pays the weight transform too; 3x3 layers then run Winograd from this many output
# pixels (batch x height x width). Measured, `fastconv.conv2d` prepare + run, 2 threads, medians
# of 7, Winograd / direct: 512x512 7x7 1.72, 14x14 2.41; 256x256 14x14 0.98; 28x28 (784 pixels)
# 0.57-0.95 for 128-512 channels; 4x256x14x14 0.78. F(2x2,5x5)'s U is only 36/25 of the weights
# (48 -> 128 on 13x13, 169 pixels: 0.73), so 5x5 keeps no threshold.
_ONE_SHOT_WINOGRAD_MIN_OUTPUTS = 400
# ... and F(2x2) where F(4x4)'s U (36 numbers per 3x3 filter) would exceed this many bytes: its
# fresh pages and transform cost more than F(2x2)'s slower run saves. Measured the same way:
# 512x512 on 28x28, U 37.7 MB: F(2x2) 15.5 ms, F(4x4) 19.1 (torch 18.0); 8x256x12x12 -> 384,
# U 14.2 MB: F(4x4) 6.3, F(2x2) 7.9; 256x256 on 28x28, 9.4 MB: F(4x4) 3.4, F(2x2) 3.7.
_ONE_SHOT_F4_MAX_U_BYTES = 24 << 20  # 24 MiB (the measurements above are in MB, 10^6 bytes)


def choose(p: ConvParams, one_shot: bool = False) -> str:
    """The ``auto`` choice: a pure function of the layer description (locked by a table test).

    Measured on the suite (2 threads, medians, `fastconv bench`; see the closing note of the
    kernels issue): Winograd (its own tile choice) wins every 3x3 stride-1 layer with >= 16
    channels per group, 1.6-2.7x torch, and F(2x2,5x5) the 5x5 stride-1 layers from 10 input
    channels (alexnet.conv2 17.8 vs direct 37.1 ms, seed003 7.0 vs 11.5, lenet.conv2); the direct kernel beats im2col on every other suite
    layer, small or deep (lenet.conv2 0.40 vs 1.00 ms, resnet50.stem 1.96 vs 2.46, alexnet.conv1
    3.62 vs 4.62); 1x1 layers run on BLAS (pointwise),
    which with the bias folded into the GEMM (beta = 1) beat the im2col micro-kernel on
    1x1_reduce (0.69-0.93 vs 0.91-1.33 ms over 4 runs) and nin (3.4-3.6 vs 4.0-4.2) and tied it
    on 1x1_expand (0.62-0.83 vs 0.63-0.78: within the noise), with no workspace. (The first
    session picked im2col for 1x1_expand from a run in which NumPy's BLAS workers, still spinning
    after the NumPy peer, slowed the pointwise rows.)

    ``one_shot``: the weights are prepared for this one call (`fastconv.conv2d`), so Winograd's
    weight transform — (m+2)² numbers per 3x3 filter, 37.7 MB for a 512x512 layer in F(4x4) — is
    only worth it where enough outputs share it (`_ONE_SHOT_WINOGRAD_MIN_OUTPUTS`), and in F(2x2)
    where F(4x4)'s would be large (`_ONE_SHOT_F4_MAX_U_BYTES`).
    """
    if p.kh == 1 and p.kw == 1 and p.pad == (0, 0, 0, 0):
        return "pointwise"
    least = _WINOGRAD_MIN_CHANNELS.get(p.kh)
    if least and p.kw == p.kh and (p.stride, p.dilation) == ((1, 1), (1, 1)) \
            and p.c_in_per_group >= least[0] and p.c_out_per_group >= least[1]:
        if not one_shot or p.kh != 3:
            return "winograd"
        if p.n * p.out_h * p.out_w < _ONE_SHOT_WINOGRAD_MIN_OUTPUTS:
            return "direct"
        u_f4 = 36 * p.c_in_per_group * p.c_out * p.itemsize  # (before padding to whole panels)
        return "winograd_f2" if u_f4 > _ONE_SHOT_F4_MAX_U_BYTES else "winograd"
    return "direct"


def select(p: ConvParams, algo: str = "auto", one_shot: bool = False) -> Algorithm:
    """The algorithm to run ``p`` with; an explicit algorithm that cannot run it raises its reason.
    ``one_shot``: the weights are prepared for one call only (see `choose`)."""
    if algo == "auto":
        chosen = get(choose(p, one_shot))
        if chosen.supports(p) is None:
            return chosen
        return get("direct")  # direct runs every valid case
    chosen = get(validate.algo_name(algo, names()))
    reason = chosen.supports(p)
    if reason is not None:
        raise ValueError(f"algo={algo!r} cannot run this convolution ({p.describe()}): {reason}")
    return chosen


# --- workspace budget -------------------------------------------------------------------
_WORKSPACE_LIMIT = [2 * 1024 ** 3]  # bytes; settable with set_workspace_limit


def set_workspace_limit(nbytes: int) -> None:
    """Largest scratch buffer a kernel may allocate; a larger need raises MemoryError first."""
    if int(nbytes) < 0:
        raise ValueError(f"workspace limit must be >= 0 bytes, got {nbytes}")
    _WORKSPACE_LIMIT[0] = int(nbytes)


def get_workspace_limit() -> int:
    return _WORKSPACE_LIMIT[0]


def check_workspace(alg: Algorithm, p: ConvParams) -> None:
    need = alg.workspace_bytes(p)
    if need > _WORKSPACE_LIMIT[0]:
        raise MemoryError(f"{alg.name} needs a {need:,}-byte workspace for {p.describe()}, over the "
                          f"limit of {_WORKSPACE_LIMIT[0]:,} bytes (fastconv.set_workspace_limit)")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 1 << 62


# An output that cannot fit in RAM must raise, not be handed to the OS: a lazily committed
# np.empty "succeeds" and the process is OOM-killed while the kernel writes into it.
_OUTPUT_LIMIT = [_physical_memory()]


def set_output_limit(nbytes: int) -> None:
    """Largest output array an op may allocate (default: physical memory); larger raises MemoryError."""
    if int(nbytes) < 0:
        raise ValueError(f"output limit must be >= 0 bytes, got {nbytes}")
    _OUTPUT_LIMIT[0] = int(nbytes)


def get_output_limit() -> int:
    return _OUTPUT_LIMIT[0]


def check_output(p: ConvParams | PoolParams, dtype: Any, op: str) -> None:
    """Raise MemoryError, naming the op, the layer and the size, before allocating an output
    (``p.out_shape`` of ``dtype``) over the limit. (The message is built only then: describing
    the layer on every call cost ~2 us of a small pool's ~15.)"""
    shape = p.out_shape
    need = math.prod(shape) * np.dtype(dtype).itemsize
    if need > _OUTPUT_LIMIT[0]:
        raise MemoryError(f"{op} ({p.describe()}): the output {tuple(shape)} needs {need:,} bytes, over the "
                          f"limit of {_OUTPUT_LIMIT[0]:,} bytes (fastconv.set_output_limit)")


class Plan:
    """Prepared weights for one layer shape: ``prepare`` once, ``run`` many times."""

    def __init__(self, algorithm: Algorithm, w: np.ndarray, b: np.ndarray | None, p: ConvParams):
        self.algorithm, self.params = algorithm, p
        check_workspace(algorithm, p)  # before prepare allocates the packed weights
        self.packed = algorithm.prepare(w, b, p) if p.n > 0 else None

    def run(self, x: np.ndarray, out: np.ndarray | None = None, p: ConvParams | None = None) -> np.ndarray:
        """``p`` runs the plan on another batch size (``self.params.with_batch(n)``): the prepared
        weights do not depend on the batch, so a layer keeps one plan for every batch."""
        p = self.params if p is None else p
        if out is None:
            check_workspace(self.algorithm, p)  # both budgets before the first byte is allocated
            check_output(p, p.dtype, "conv2d")
            out = np.empty(p.out_shape, dtype=p.dtype)
        if p.n > 0:
            self.algorithm.run(x, self.packed, p, out)
        return out


# --- pooling ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolKernel:
    """A registered pooling kernel: ``run(x, p, out, indices)`` from a compiled module."""

    name: str                      # "max", "avg" or "adaptive_avg" (= PoolParams.kind)
    module: str
    language: str
    summary: str

    @cached_property
    def kernel(self):
        mod = importlib.import_module(self.module)
        threads.apply()
        return mod

    def run(self, x: np.ndarray, p, out: np.ndarray, indices: np.ndarray | None = None) -> None:
        k, nt = self.kernel, threads.get_num_threads()
        if p.kind == "max":
            idx = indices if indices is not None else np.empty((1, 1, 1, 1), dtype=np.int64)
            k.max_pool2d(x, out, idx, indices is not None, *p.kernel, *p.stride, *p.padding, *p.dilation, nt)
        elif p.kind == "avg":
            k.avg_pool2d(x, out, *p.kernel, *p.stride, *p.padding, p.count_include_pad,
                         p.divisor_override or 0, nt)
        else:
            k.adaptive_avg_pool2d(x, out, nt)


POOL_REGISTRY: list[PoolKernel] = [
    PoolKernel("max", _K + "pool", "cython", "max pooling with optional argmax indices"),
    PoolKernel("avg", _K + "pool", "cython", "average pooling (count_include_pad, divisor_override)"),
    PoolKernel("adaptive_avg", _K + "pool", "cython", "adaptive / global average pooling"),
]
POOLS: dict[str, PoolKernel] = {k.name: k for k in POOL_REGISTRY}
