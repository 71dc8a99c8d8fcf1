"""The kernel registry: one list of convolution algorithms and one of pooling kernels.

Tests, benchmarks, the tuner and ``fastconv info`` iterate over these lists, so adding a kernel
is one module in ``fastconv.kernels`` plus one line here. Every kernel module follows the
contract of `fastconv.contract` (``supports`` / ``workspace_bytes`` / ``prepare`` / ``run``);
`Kernel` is the only code that calls a kernel module. Modules are imported on first use, so
``import fastconv`` stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from . import threads
from .params import ConvParams


@dataclass(frozen=True)
class Kernel:
    """One registered kernel: a compiled module plus fixed options.

    ``op`` says which registry it belongs to (``"conv2d"`` or ``"pool"``); ``passes`` lists the
    passes it runs (its ``supports`` refuses the others, see `fastconv.contract`).
    """

    name: str
    module: str  # e.g. "fastconv.kernels.direct"
    summary: str
    op: str = "conv2d"
    passes: tuple[str, ...] = ("forward",)
    # The accuracy contract the tests check: |y - ref| <= tol * scale, where scale is
    # fastconv.testing.conv_error_bound(..., tile=error_tile): for error_tile=0 the sum of absolute
    # products each output adds up, |W| * |X| + |b| (the natural scale of rounding in a dot
    # product); for Winograd F(m x m) (error_tile=m, the largest tile it may use) sum|W| * max|X|
    # over the tile, because its transforms mix every tap with every pixel of the tile.
    tolerance: dict[str, float] = field(default_factory=lambda: {"float32": 2e-5, "float64": 1e-12})
    options: dict[str, Any] = field(default_factory=dict)
    error_tile: int = 0
    # per-kernel-size overrides of `tolerance` (kernel height -> tolerances by dtype)
    kernel_tolerance: dict[int, dict[str, float]] = field(default_factory=dict)

    def tolerance_for(self, p: ConvParams) -> float:
        """The accuracy contract's tolerance for layer ``p`` (see `tolerance`)."""
        return self.kernel_tolerance.get(p.kh, self.tolerance)[p.dtype]

    @cached_property
    def kernel(self) -> Any:
        mod = importlib.import_module(self.module)
        threads.apply()  # the module may have loaded a new thread pool (OpenMP, BLAS)
        return mod

    @property
    def needs_finite(self) -> bool:
        """Whether the kernel's arithmetic spreads a non-finite value over neighbouring outputs
        (Winograd's transforms do): `fastconv.plan` then runs such a call on ``direct``."""
        return bool(getattr(self.kernel, "needs_finite", False))

    def supports(self, p: Any) -> str | None:
        """None if this kernel runs ``p`` exactly, else why not (the module's own answer)."""
        return self.kernel.supports(p, **self.options)

    def workspace_bytes(self, p: Any, nthreads: int) -> int:
        """Every byte of scratch `run` needs for ``p`` on ``nthreads`` threads."""
        return int(self.kernel.workspace_bytes(p, nthreads, **self.options))

    def prepare(self, w: np.ndarray | None, b: np.ndarray | None, p: Any) -> Any:
        return self.kernel.prepare(w, b, p, **self.options)

    def run(
        self, x: np.ndarray, packed: Any, p: Any, out: np.ndarray, workspace: np.ndarray, nthreads: int, **extra: Any
    ) -> None:
        """Run into ``out`` with the caller's ``workspace`` (see `fastconv.plan`)."""
        self.kernel.run(x, packed, p, out, workspace, nthreads, **self.options, **extra)
        threads.after_first_run(self.name)


Algorithm = Kernel  # the convolution registry's entries are called algorithms (``algo=``)

_K = "fastconv.kernels."
REGISTRY: list[Kernel] = [
    Kernel(
        "direct",
        _K + "direct",
        "direct: phase-packed input, register-blocked channels x positions; any stride/padding/dilation/groups",
    ),
    Kernel(
        "im2col",
        _K + "im2col",
        "im2col + GEMM over bounded tiles of output pixels (AVX-512 micro-kernel for float32, "
        "BLAS otherwise); any stride/padding/dilation/groups",
    ),
    Kernel(
        "depthwise",
        _K + "depthwise",
        "depthwise layers (one channel per group) read in place: masked row loads, any kernel/stride/padding/dilation",
    ),
    Kernel("pointwise", _K + "pointwise", "1x1 kernels with padding 0 as GEMMs straight on NCHW, split over threads"),
    # Winograd tolerances, from the contract metric (error_tile: scale = sum|W| x max|X| over the
    # tile, see fastconv.testing.conv_error_bound), measured over the case table x 20 seeds:
    #   F(2x2,3x3): float32 worst 1.2e-7, float64 2.9e-16  -> 1e-5 / 1e-13  (>= 80x margin)
    #   F(4x4,3x3): float32 worst 1.8e-6, float64 3.2e-15  -> 1e-4 / 1e-12  (>= 55x margin)
    #   F(2x2,5x5): float32 worst 1.8e-6, float64 3.1e-15  -> 1e-4 / 1e-12  (>= 55x margin; it
    #     interpolates at F(4x4,3x3)'s six points, and errs like it)
    Kernel(
        "winograd",
        _K + "winograd",
        "Winograd, tile chosen per layer (F(4x4,3x3), or F(2x2,3x3) where it needs fewer GEMM "
        "rows, e.g. 7x7 maps; F(2x2,5x5) for 5x5): 3x3 or 5x5, stride 1, dilation 1",
        tolerance={"float32": 1e-4, "float64": 1e-12},
        options={"tile": 0},
        error_tile=4,
    ),
    Kernel(
        "winograd_f2",
        _K + "winograd",
        "Winograd F(2x2,3x3) or F(2x2,5x5): 3x3 or 5x5, stride 1, dilation 1",
        tolerance={"float32": 1e-5, "float64": 1e-13},
        options={"tile": 2},
        error_tile=2,
        kernel_tolerance={5: {"float32": 1e-4, "float64": 1e-12}},
    ),
    Kernel(
        "winograd_f4",
        _K + "winograd",
        "Winograd F(4x4,3x3): 3x3, stride 1, dilation 1; fewer multiplies, larger error",
        tolerance={"float32": 1e-4, "float64": 1e-12},
        options={"tile": 4},
        error_tile=4,
    ),
]
BY_NAME: dict[str, Kernel] = {a.name: a for a in REGISTRY}

# Pools: one compiled module runs the three kinds; the entry's name is PoolParams.kind.
POOL_REGISTRY: list[Kernel] = [
    Kernel("max", _K + "pool", "max pooling with optional argmax indices", op="pool"),
    Kernel("avg", _K + "pool", "average pooling (count_include_pad, divisor_override)", op="pool"),
    Kernel("adaptive_avg", _K + "pool", "adaptive / global average pooling", op="pool"),
]
POOLS: dict[str, Kernel] = {k.name: k for k in POOL_REGISTRY}


# Backward passes (`fastconv.grad`): one compiled module per op family, an entry per pass.
GRAD_REGISTRY: list[Kernel] = [
    Kernel(
        "conv2d_input",
        _K + "conv_grad",
        "input gradient of strided layers and small maps (stride-1 maps run as a forward convolution)",
        passes=("input_grad",),
        options={"pass_": "input_grad"},
    ),
    Kernel(
        "conv2d_weight",
        _K + "conv_grad",
        "weight (and bias) gradient: a reduction over batch and pixels in fixed chunks (deterministic)",
        passes=("weight_grad",),
        options={"pass_": "weight_grad"},
    ),
    Kernel(
        "pool_input",
        _K + "pool_grad",
        "input gradient of max (by indices), average and adaptive average pooling",
        op="pool",
        passes=("input_grad",),
    ),
]
GRADS: dict[str, Kernel] = {k.name: k for k in GRAD_REGISTRY}


def names() -> list[str]:
    """The convolution algorithms' names (valid values of ``algo=``)."""
    return [a.name for a in REGISTRY]


def get(name: str) -> Kernel:
    """The registered convolution algorithm called ``name``."""
    return BY_NAME[name]
