"""Test support shared by fastconv's tests, fuzzers and benchmarks (like ``numpy.testing``).

* `ConvCase` / `CONV_CASES`: a named table of conv2d cases covering strides 1–4, padding 0–3,
  asymmetric and ``"same"``/``"valid"``, dilation 1–3, groups (1, 2, depthwise), kernels 1x1…11x11
  and non-square, odd spatial sizes and batch 0/1/N. Sizes are deliberately odd (STYLE §9):
  remainders of every tile and vector width get exercised.
* `conv_error_bound` / `assert_conv_close`: the accuracy contract. A kernel's error at each
  output must satisfy ``|y − ref| ≤ tol · (|W| ⊛ |X| + |b|)`` — relative to the sum of absolute
  products that output adds up, which is the natural scale of floating-point rounding in a dot
  product (a plain relative error is meaningless where terms cancel to ~0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import reference, validate
from .params import ConvParams


@dataclass(frozen=True)
class ConvCase:
    name: str
    n: int = 2
    c_in: int = 3
    h: int = 9
    w: int = 11
    c_out: int = 5
    kh: int = 3
    kw: int = 3
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True

    def arrays(self, dtype=np.float32, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.n, self.c_in, self.h, self.w)).astype(dtype)
        w = rng.standard_normal((self.c_out, self.c_in // self.groups, self.kh, self.kw)).astype(dtype)
        b = rng.standard_normal(self.c_out).astype(dtype) if self.bias else None
        return x, w, b

    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


CONV_CASES: list[ConvCase] = [
    ConvCase("basic_3x3"),
    ConvCase("no_bias", bias=False),
    # strides 1–4
    ConvCase("stride2_pad1", h=11, w=13, stride=2, padding=1),
    ConvCase("stride3_k5", h=17, w=16, kh=5, kw=5, stride=3, padding=2),
    ConvCase("stride4_k11_alexnet", n=1, h=31, w=29, c_out=4, kh=11, kw=11, stride=4, padding=2),
    ConvCase("stride_pair_2x1", h=10, w=9, stride=(2, 1), padding=1),
    # padding 0–3, asymmetric pairs, 'same' / 'valid'
    ConvCase("pad2", padding=2),
    ConvCase("pad3_k7", h=8, w=9, kh=7, kw=7, padding=3),
    ConvCase("pad_pair_1x2", padding=(1, 2)),
    ConvCase("pad_pair_3x0", h=7, w=12, padding=(3, 0)),
    ConvCase("same_k3", padding="same"),
    ConvCase("same_even_k4", kh=4, kw=4, padding="same"),  # torch pads 1 before, 2 after
    ConvCase("same_k2x5_dil2", kh=2, kw=5, dilation=2, padding="same"),
    ConvCase("valid", padding="valid"),
    # dilation 1–3
    ConvCase("dilation2", h=13, w=12, dilation=2, padding=2),
    ConvCase("dilation3_stride2", h=15, w=17, dilation=3, stride=2, padding=1),
    ConvCase("dilation_pair_2x1", dilation=(2, 1), padding=1),
    # groups
    ConvCase("groups2", c_in=4, c_out=6, groups=2, padding=1),
    ConvCase("depthwise", c_in=6, c_out=6, groups=6, padding=1),
    ConvCase("depthwise_x2_stride2", c_in=4, c_out=8, groups=4, stride=2, padding=1),
    ConvCase("groups3_1x1", c_in=9, c_out=6, kh=1, kw=1, groups=3),
    # kernel sizes 1x1 … 11x11 and non-square
    ConvCase("k1", kh=1, kw=1),
    ConvCase("k1_stride2", h=10, w=9, kh=1, kw=1, stride=2),
    ConvCase("k1_pad1", kh=1, kw=1, padding=1),
    ConvCase("k1_stride_pair_3x2_dil2", h=11, w=7, kh=1, kw=1, stride=(3, 2), dilation=2),
    ConvCase("k1_nin_no_bias", n=1, c_in=16, h=6, w=6, c_out=16, kh=1, kw=1, bias=False),
    ConvCase("k2", kh=2, kw=2),
    ConvCase("k4", h=10, w=10, kh=4, kw=4, padding=1),
    ConvCase("k5_lenet", n=3, c_in=1, h=28, w=28, c_out=10, kh=5, kw=5),
    ConvCase("k7_stem", n=1, c_in=3, h=23, w=21, c_out=4, kh=7, kw=7, stride=2, padding=3),
    ConvCase("k11", n=1, h=13, w=14, c_out=3, kh=11, kw=11, padding=1),
    ConvCase("k1x3", kh=1, kw=3, padding=(0, 1)),
    ConvCase("k3x1", kh=3, kw=1),
    ConvCase("k2x5", h=8, w=12, kh=2, kw=5),
    # odd spatial sizes, tiny maps
    ConvCase("odd_7x5", h=7, w=5),
    ConvCase("thin_3x17", h=3, w=17),
    ConvCase("single_pixel_pad1", h=1, w=1, padding=1),
    ConvCase("input_equals_kernel", h=3, w=3),
    ConvCase("winograd_edges_10x7", h=10, w=7, padding=1),
    ConvCase("winograd_2x3", h=2, w=3, padding=1),
    # Winograd blocking: tile blocks that span images, output channels split over panels/tasks
    ConvCase("winograd_blocks_batch3", n=3, c_in=5, h=23, w=21, c_out=7, padding=1),
    ConvCase("winograd_cout_panels", n=1, c_in=6, h=9, w=10, c_out=70, padding=(1, 0)),
    # deep channels on a small map: fewer tile blocks than threads, so the threads share one V
    # (input channels split unevenly: 37 over up to 4 per thread) and split the output panels
    ConvCase("winograd_shared_v_deep_7x7", n=2, c_in=37, h=7, w=7, c_out=97, padding=1),
    ConvCase("winograd_interior_38", n=1, c_in=3, h=38, w=38, c_out=5),  # all tiles inside: fast loads
    # F(2x2,5x5): ragged edges and asymmetric padding, a map smaller than the kernel, groups, all
    # tiles inside (the 6x6 row loads), and the shared-V path on a deep small map
    ConvCase("winograd5_edges_11x9", n=2, h=11, w=9, c_out=7, kh=5, kw=5, padding=(2, 1)),
    ConvCase("winograd5_map_3x4", h=3, w=4, kh=5, kw=5, padding=2),
    ConvCase("winograd5_groups2", c_in=6, c_out=4, h=9, w=8, kh=5, kw=5, padding=2, groups=2),
    ConvCase("winograd5_interior_30", n=1, c_in=3, h=30, w=30, c_out=5, kh=5, kw=5),
    ConvCase("winograd5_shared_v_deep_6x6", n=1, c_in=37, h=6, w=6, c_out=70, kh=5, kw=5, padding=2),
    # batch 0 / 1 / N
    ConvCase("batch0", n=0, padding=1),
    ConvCase("batch1", n=1, padding=1),
    ConvCase("batch5", n=5, h=6, w=6, padding=1),
    # enough channels to exercise GEMM blocking remainders
    ConvCase("wide_3x3", n=1, c_in=37, h=12, w=13, c_out=41, padding=1),
    ConvCase("wide_1x1", n=2, c_in=70, h=5, w=9, c_out=33, kh=1, kw=1),
    ConvCase("wide_5x5_s2", n=1, c_in=19, h=15, w=15, c_out=23, kh=5, kw=5, stride=2, padding=2),
    # direct (kernels/direct_impl.h): channel blocks of 1..8 (9 = 5+4, 17 = 6+6+5), phase planes of
    # stride 3 with dilation, packing per (image, group) inside threads (n*groups >= 4*threads)
    ConvCase(
        "direct_blocks_9_s3_d2", n=1, c_in=2, h=17, w=19, c_out=9, kh=3, kw=2, stride=3, dilation=2, padding=(2, 1)
    ),
    ConvCase("direct_blocks_17_local_pack", n=9, c_in=2, h=7, w=6, c_out=17, kh=2, kw=3, padding=1),
    ConvCase(
        "direct_depthwise_k5_s2_local_pack", n=2, c_in=8, h=11, w=10, c_out=8, kh=5, kw=5, stride=2, padding=2, groups=8
    ),
    # direct on wide rows (many chunks per row, ragged last chunk)
    ConvCase("direct_wide_ragged_chunk", n=1, c_in=2, h=4, w=130, c_out=4, padding=1),
    ConvCase("direct_depthwise_w62", n=1, c_in=3, h=5, w=62, c_out=3, padding=1, groups=3),
    # the depthwise plane kernel (n * groups >= 4 * threads): 3x3 stride-1 row blocks with plain
    # stores, then the careful last rows; a row of exactly two vectors; other taps (generic rows)
    ConvCase("direct_depthwise_3x3_20x35", n=2, c_in=8, h=20, w=35, c_out=8, padding=1, groups=8),
    ConvCase("direct_depthwise_3x3_9x32", n=2, c_in=8, h=9, w=32, c_out=8, padding=1, groups=8),
    # float32 3x3/s1/p1 depthwise straight from x (fc_dw3x3s1p1_f): masked first/last rows only
    # (H 1 and 2), W of exactly one vector, W a multiple of 16 (no tail), an odd W over 16
    ConvCase("direct_depthwise_3x3_1x40", n=2, c_in=8, h=1, w=40, c_out=8, padding=1, groups=8),
    ConvCase("direct_depthwise_3x3_2x16", n=2, c_in=8, h=2, w=16, c_out=8, padding=1, groups=8),
    ConvCase("direct_depthwise_3x3_12x64", n=2, c_in=8, h=12, w=64, c_out=8, padding=1, groups=8),
    # output widths of whole vectors: direct's row tiles, written straight into y (fc_direct_rows);
    # 48 = a chunk of 2 vectors + 1 end vector (float32; the rows' end vectors run NV at a time
    # across rows), 13 channels = blocks of 7 + 6, two row tiles, shared pack; 3 channels (chunks
    # of 4 vectors: all 3 vectors of a row are end vectors); stride 2, 32 wide, batch 9 (packed
    # per thread)
    ConvCase("direct_rows_w48", n=1, c_in=3, h=45, w=48, c_out=13, padding=1),
    ConvCase("direct_rows_3ch", n=1, c_in=2, h=7, w=48, c_out=3, padding=1),  # 3 end vectors a row
    ConvCase("direct_rows_s2_batch", n=9, c_in=4, h=64, w=63, c_out=8, kh=5, kw=5, stride=2, padding=2),
    ConvCase("direct_depthwise_3x3_7x17_bias0", n=2, c_in=8, h=7, w=17, c_out=8, padding=1, groups=8, bias=False),
    ConvCase("direct_depthwise_5x5_13x21", n=2, c_in=8, h=13, w=21, c_out=8, kh=5, kw=5, padding=2, groups=8),
    # the depthwise kernel (kernels/depthwise_body.h): stride 2 over several column chunks (even-lane
    # permutes, both loads masked at the edges), stride 3 with dilation (gathers), a kernel wider
    # than the map, "same" padding of an even kernel (asymmetric), padding wider than a vector
    ConvCase("depthwise_s2_w70", n=1, c_in=4, h=9, w=70, c_out=4, stride=2, padding=1, groups=4),
    ConvCase("depthwise_s3_d2", n=2, c_in=5, h=17, w=40, c_out=5, stride=3, dilation=2, padding=2, groups=5),
    ConvCase("depthwise_k7_on_5x6", n=1, c_in=3, h=5, w=6, c_out=3, kh=7, kw=7, padding=3, groups=3),
    ConvCase("depthwise_same_k4", n=2, c_in=4, h=6, w=19, c_out=4, kh=4, kw=4, padding="same", groups=4),
    ConvCase("depthwise_pad17_s2", n=1, c_in=2, h=3, w=5, c_out=2, kh=3, kw=3, stride=2, padding=17, groups=2),
    ConvCase("direct_s2_w200", n=1, c_in=1, h=6, w=200, c_out=9, kh=3, kw=5, stride=2, padding=2),
    ConvCase("direct_stride_over_kernel", h=9, w=10, stride=(7, 5), padding=1),  # unused phases skipped
    # GEMM tiling edges (im2col / pointwise): tiles that split rows mid-way with groups and a
    # stride pair, and 1x1 chunks that split mid-(image, group)
    ConvCase(
        "gemm_tiles_groups_stride",
        n=1,
        c_in=4,
        h=9,
        w=13,
        c_out=6,
        kh=2,
        kw=3,
        stride=(1, 2),
        padding=1,
        groups=2,
        bias=False,
    ),
    ConvCase("pointwise_chunks_groups", n=3, c_in=6, h=7, w=5, c_out=9, kh=1, kw=1, groups=3),
]


def describe(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, **kwargs) -> ConvParams:
    """The `ConvParams` of a conv2d call (through the same validation as the public op)."""
    return validate.conv2d_args(
        x, w, b, kwargs.get("stride", 1), kwargs.get("padding", 0), kwargs.get("dilation", 1), kwargs.get("groups", 1)
    )[3]


def conv_error_bound(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, p: ConvParams, tile: int = 0) -> np.ndarray:
    """The scale of each output's rounding error, in float64.

    ``tile=0`` (direct, GEMM): ``|W| ⊛ |X| + |b|`` — the sum of the absolute products the output
    adds up. ``tile=m`` (Winograd F(m x m, k x k)): the transforms mix every weight tap with
    every pixel of the output's (m+k−1)² input tile, so an output whose own products are tiny (a zero
    centre tap, say) still carries rounding from its neighbours; the scale is then
    ``Σ_d Σ_uv |W[p,d,u,v]| · max |X[d]| over any tile holding the output`` (+ |b|).
    """
    x4 = np.abs(np.asarray(x if x.ndim == 4 else x[None], dtype=np.float64))
    w = np.abs(np.asarray(w, dtype=np.float64))
    bias = None if b is None else np.abs(b)
    if tile == 0:
        return reference.conv2d(x4, w, bias, p)
    # Any tile holding output i reads input rows [i − pt − (m−1), i − pt + m + k − 2]: a box of
    # Lh = 2m + k − 1 rows (2m + 2 for 3x3 kernels), likewise columns.
    Lh, Lw = 2 * tile + p.kh - 1, 2 * tile + p.kw - 1
    top, left = p.pad[0] + tile - 1, p.pad[2] + tile - 1
    bottom = max(0, p.out_h - 1 + Lh - (p.h + top))
    right = max(0, p.out_w - 1 + Lw - (p.w + left))
    q = np.pad(x4, ((0, 0), (0, 0), (top, bottom), (left, right)))
    box = np.lib.stride_tricks.sliding_window_view(q, (Lh, Lw), axis=(2, 3)).max(axis=(-2, -1))
    box = box[:, :, : p.out_h, : p.out_w]
    wsum = w.sum(axis=(2, 3))  # [C_out, C_in/groups]
    cig, cog = p.c_in_per_group, p.c_out_per_group
    scale = np.concatenate(
        [
            np.einsum("pd,ndij->npij", wsum[g * cog : (g + 1) * cog], box[:, g * cig : (g + 1) * cig])
            for g in range(p.groups)
        ],
        axis=1,
    )
    return scale if bias is None else scale + bias[None, :, None, None]


def conv_errors(
    y: np.ndarray, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, p: ConvParams, tile: int = 0
) -> tuple[float, float]:
    """(max |y − ref| / scale, max |y − ref| / max |ref|) of a result against the float64 oracle."""
    x4 = x if x.ndim == 4 else x[None]
    ref = reference.conv2d(x4, w, b, p)
    scale = conv_error_bound(x, w, b, p, tile)
    err = np.abs(np.asarray(y, dtype=np.float64).reshape(ref.shape) - ref)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(scale > 0, err / np.where(scale > 0, scale, 1), np.where(err > 0, np.inf, 0))
    rel = err.max() / max(np.abs(ref).max(), np.finfo(np.float64).tiny) if err.size else 0.0
    return (float(scaled.max()) if scaled.size else 0.0), float(rel)


def assert_conv_close(
    y: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    p: ConvParams,
    tol: float,
    label: str = "",
    tile: int = 0,
) -> None:
    """Fail unless every output is within ``tol · scale`` of the float64 reference, with the
    scale of `conv_error_bound` (``tile`` = the algorithm's ``error_tile``)."""
    assert np.asarray(y).shape == p.out_shape or np.asarray(y).shape == p.out_shape[1:], (
        f"{label}: shape {np.asarray(y).shape} != expected {p.out_shape}"
    )
    assert np.all(np.isfinite(y)), f"{label}: non-finite values in output (unwritten or overflow)"
    worst, rel = conv_errors(y, x, w, b, p, tile)
    assert worst <= tol, f"{label}: error {worst:.3g} x scale exceeds tolerance {tol:g} (rel {rel:.3g})"


def assert_algorithm_close(
    alg, y: np.ndarray, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, p: ConvParams, label: str = ""
) -> None:
    """`assert_conv_close` with the registry entry's own tolerance and error model."""
    assert_conv_close(y, x, w, b, p, alg.tolerance_for(p), label or alg.name, alg.error_tile)


@dataclass(frozen=True)
class PoolCase:
    name: str
    shape: tuple = (2, 3, 9, 11)
    kwargs: dict = field(default_factory=dict)


def _k3s1p1(name: str, shape: tuple, **extra) -> PoolCase:
    """A pool case with Inception's window: 3x3, stride 1, padding 1."""
    return PoolCase(name, shape, dict(kernel_size=3, stride=1, padding=1, **extra))


MAX_POOL_CASES = [
    PoolCase("k2", kwargs=dict(kernel_size=2)),
    PoolCase("k3_s2_p1_resnet", (1, 4, 12, 13), dict(kernel_size=3, stride=2, padding=1)),
    PoolCase("k3_s2_alexnet", (2, 3, 13, 13), dict(kernel_size=3, stride=2)),
    PoolCase("ceil", (1, 2, 10, 9), dict(kernel_size=3, stride=2, ceil_mode=True)),
    PoolCase("ceil_pad", (1, 2, 7, 8), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    PoolCase("dilation2", (1, 2, 11, 10), dict(kernel_size=3, stride=1, padding=1, dilation=2)),
    PoolCase("rect", (2, 2, 9, 14), dict(kernel_size=(2, 4), stride=(1, 3), padding=(1, 2))),
    PoolCase("global", (2, 3, 5, 7), dict(kernel_size=(5, 7))),
    PoolCase("batch0", (0, 3, 8, 8), dict(kernel_size=2)),
    PoolCase("unbatched", (3, 8, 9), dict(kernel_size=3, stride=2, padding=1)),
    # row-kernel paths (kernels/pool_impl.h): vector remainders on odd widths, stride > kernel
    PoolCase("k3_s2_p1_wide_odd", (1, 3, 13, 37), dict(kernel_size=3, stride=2, padding=1)),
    # the 3x3/s2 register kernel (fc_maxpool_3x3s2_f): several 16-output vectors and a tail, rows
    # of 1 and 2 input rows at the bottom, the smallest planes it takes and one it leaves (W = 1)
    PoolCase("k3_s2_p1_3_vectors", (1, 2, 8, 90), dict(kernel_size=3, stride=2, padding=1)),
    PoolCase("k3_s2_p0_2_vectors_ceil", (1, 2, 10, 67), dict(kernel_size=3, stride=2, ceil_mode=True)),
    PoolCase("k3_s2_p1_one_row", (2, 2, 1, 5), dict(kernel_size=3, stride=2, padding=1)),
    PoolCase("k3_s2_p0_3x3", (1, 2, 3, 3), dict(kernel_size=3, stride=2)),
    PoolCase("k3_s2_p1_2x2", (1, 1, 2, 2), dict(kernel_size=3, stride=2, padding=1)),
    PoolCase("k3_s2_p1_1wide", (1, 1, 6, 1), dict(kernel_size=3, stride=2, padding=1)),
    PoolCase("k2_s2_wide_odd", (1, 2, 9, 37), dict(kernel_size=2, stride=2)),
    _k3s1p1("k3_s1_p1_wide", (1, 2, 7, 33)),
    PoolCase("k2_s3_gaps", (1, 2, 11, 13), dict(kernel_size=2, stride=3)),
]
AVG_POOL_CASES = [
    PoolCase("k2", kwargs=dict(kernel_size=2)),
    _k3s1p1("k3_s1_p1_inception", (1, 4, 9, 9)),
    PoolCase("exclude_pad", (1, 4, 9, 9), dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
    PoolCase("ceil", (1, 2, 10, 9), dict(kernel_size=3, stride=2, ceil_mode=True)),
    PoolCase(
        "ceil_pad_exclude",
        (1, 2, 8, 7),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    ),
    PoolCase("divisor_override", (1, 2, 8, 8), dict(kernel_size=2, divisor_override=3)),
    PoolCase("rect", (2, 2, 9, 14), dict(kernel_size=(2, 5), stride=(2, 3), padding=(1, 2))),
    PoolCase("batch0", (0, 3, 8, 8), dict(kernel_size=2)),
    PoolCase("unbatched", (3, 8, 9), dict(kernel_size=3, stride=2, padding=1)),
    # row-kernel paths (kernels/pool_impl.h): no interior column, stride > kernel, odd widths
    PoolCase("k5_p2_no_interior", (1, 2, 6, 4), dict(kernel_size=5, stride=1, padding=2)),
    PoolCase("k2_s3_gaps", (1, 2, 11, 13), dict(kernel_size=2, stride=3)),
    PoolCase("k3_s2_p1_wide_odd", (1, 3, 13, 37), dict(kernel_size=3, stride=2, padding=1)),
    _k3s1p1("k3_s1_p1_wide_exclude", (1, 2, 7, 33), count_include_pad=False),
    # 3x3/s1/p1 plane kernel (fc_avgpool_3x3s1p1): several row blocks, one row a block, the
    # smallest planes it takes (every row and column a border), and 1-wide planes it leaves alone
    _k3s1p1("k3_s1_p1_blocks_exclude", (1, 2, 70, 40), count_include_pad=False),
    _k3s1p1("k3_s1_p1_rows_wider_than_block", (1, 1, 3, 2100)),
    _k3s1p1("k3_s1_p1_2x2_exclude", (2, 2, 2, 2), count_include_pad=False),
    _k3s1p1("k3_s1_p1_2x5_override", (1, 2, 2, 5), divisor_override=7),
    _k3s1p1("k3_s1_p1_1wide", (1, 2, 5, 1)),
    # float32 planes up to 32 wide run in registers (fc_avg3s1p1_f): 1, 2, 3 and 4 vectors of 8
    # doubles, full and partial, with each divisor rule; 33 wide (above) takes the flat kernel
    _k3s1p1("k3_s1_p1_regs_w8", (1, 2, 6, 8)),
    _k3s1p1("k3_s1_p1_regs_w13_exclude", (1, 2, 5, 13), count_include_pad=False),
    _k3s1p1("k3_s1_p1_regs_w17_override", (1, 3, 4, 17), divisor_override=5),
    _k3s1p1("k3_s1_p1_regs_w28", (2, 3, 28, 28)),
    _k3s1p1("k3_s1_p1_regs_w32_exclude", (1, 2, 3, 32), count_include_pad=False),
    PoolCase(
        "k4x3_s3x2_p2x1_ceil", (1, 2, 14, 17), dict(kernel_size=(4, 3), stride=(3, 2), padding=(2, 1), ceil_mode=True)
    ),
]
ADAPTIVE_CASES = [
    # global means go 8 planes at a time (fc_means_*): 10 planes = a group of 8 and one of 2
    PoolCase("global", (2, 5, 7, 7), dict(output_size=1)),
    PoolCase("global_exact_group", (1, 8, 3, 3), dict(output_size=1)),
    PoolCase("global_no_tail", (3, 7, 4, 4), dict(output_size=1)),  # 16 values: no masked tail
    PoolCase("global_tail_only", (1, 11, 1, 3), dict(output_size=1)),  # 3 values: only the tail
    PoolCase("global_1x1", (2, 9, 1, 1), dict(output_size=1)),
    PoolCase("uneven_3x4", (1, 3, 10, 9), dict(output_size=(3, 4))),
    PoolCase("upsample", (1, 2, 3, 2), dict(output_size=(5, 4))),
    PoolCase("none_keeps", (1, 2, 6, 5), dict(output_size=(2, None))),
    PoolCase("batch0", (0, 3, 8, 8), dict(output_size=2)),
    PoolCase("unbatched", (3, 8, 9), dict(output_size=(4, 3))),
    PoolCase("global_odd_plane", (2, 3, 5, 19), dict(output_size=1)),  # 95 = 11 lanes of 8 + 7
]


def run_concurrently(target, n: int) -> None:
    """Call ``target(i)`` for i in range(n), each in its own thread, all released at once by a
    barrier; fails if any call raised or a thread hung (the thread-safety tests' harness)."""
    import threading

    barrier, errors = threading.Barrier(n), []

    def wrap(i):
        try:
            barrier.wait()  # every thread's first call starts at the same moment
            target(i)
        except BaseException as e:  # reported in the calling thread
            errors.append((i, repr(e)))

    ts = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    assert not errors, errors
