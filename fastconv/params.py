"""Shape arithmetic: output sizes, parameter counts, FLOPs and the frozen descriptions of one
call (`ConvParams`, `PoolParams`) that every kernel receives.

The formulas are the ones of the seed notes (seed 003/004): the output size of a
convolution over ``M`` pixels with kernel ``K``, padding ``P`` on each side, stride ``S``
and dilation ``D`` is ``⌊(M + 2P − D(K−1) − 1)/S⌋ + 1``; with ``D = 1`` this is the notes'
``⌊(M + 2P − K)/S⌋ + 1``. FLOPs are always ``2 × multiply–accumulates`` of the direct
algorithm, whatever algorithm ran (so Winograd shows an *effective* rate).

Nothing here validates: `fastconv.validate` checks arguments and then builds these.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .contract import check_fields


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1
) -> int:
    """Output length of a convolution along one axis: ``⌊(M + P₀ + P₁ − D(K−1) − 1)/S⌋ + 1``.

    ``padding`` is the padding on each side, or a ``(before, after)`` pair.
    """
    before, after = (padding, padding) if isinstance(padding, int) else padding
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(
    size: int, kernel: int, stride: int, padding: int = 0, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """Output length of a pooling window along one axis, with torch's ``ceil_mode`` rule:
    rounding up may not start a window that lies entirely in the right padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return span // stride + 1


def conv_param_count(
    in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], groups: int = 1, bias: bool = True
) -> int:
    """Learnable parameters of a conv layer: ``C_out·(C_in/groups)·K_h·K_w (+ C_out biases)``.

    Seed 004: ten 5x5 filters over 3 channels → ``10·3·5·5 + 10 = 760``.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    return out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)


def conv_flops(
    batch: int,
    in_channels: int,
    out_channels: int,
    out_h: int,
    out_w: int,
    kernel_size: int | tuple[int, int],
    groups: int = 1,
) -> int:
    """FLOPs of the direct algorithm: ``2 × N·C_out·H_out·W_out·(C_in/groups)·K_h·K_w``."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    return 2 * batch * out_channels * out_h * out_w * (in_channels // groups) * kh * kw


@dataclass(frozen=True)
class ConvParams:
    """Everything a kernel needs to know about one conv2d call (batch ``n`` included).

    Padding is stored per side (top, bottom, left, right) because ``padding="same"`` with an
    even effective kernel pads one more pixel after than before, as torch does.
    """

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: str = "float32"
    has_bias: bool = True
    pass_: str = "forward"  # see fastconv.contract: forward, input_grad, weight_grad
    layout: str = "NCHW"
    post_ops: tuple[str, ...] = ()  # epilogue ops after the bias (none are fused today)
    out_h: int = field(init=False)
    out_w: int = field(init=False)

    def __post_init__(self) -> None:
        check_fields(self.pass_, self.layout, self.post_ops)
        object.__setattr__(
            self,
            "out_h",
            conv_output_size(self.h, self.kh, self.stride[0], (self.pad[0], self.pad[1]), self.dilation[0]),
        )
        object.__setattr__(
            self,
            "out_w",
            conv_output_size(self.w, self.kw, self.stride[1], (self.pad[2], self.pad[3]), self.dilation[1]),
        )

    @classmethod
    def from_layer(
        cls,
        n: int,
        c_in: int,
        h: int,
        c_out: int,
        k: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        dtype: str = "float32",
        w: int | None = None,
    ) -> "ConvParams":
        """Square-kernel shorthand used by suites and tests: ``N, C_in, H(=W), C_out, k, s, p``."""
        return cls(
            n,
            c_in,
            h,
            h if w is None else w,
            c_out,
            k,
            k,
            (stride, stride),
            (padding,) * 4,
            (dilation, dilation),
            groups,
            dtype,
        )

    # --- derived sizes --------------------------------------------------------------
    @property
    def c_in_per_group(self) -> int:
        return self.c_in // self.groups

    @property
    def c_out_per_group(self) -> int:
        return self.c_out // self.groups

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_in, self.h, self.w)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.c_out, self.c_in_per_group, self.kh, self.kw)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_out, self.out_h, self.out_w)

    @property
    def macs(self) -> int:
        return self.n * self.c_out * self.out_h * self.out_w * self.c_in_per_group * self.kh * self.kw

    @property
    def flops(self) -> int:
        """2 × MACs of the direct algorithm (see module docstring)."""
        return 2 * self.macs

    @property
    def param_count(self) -> int:
        return conv_param_count(self.c_in, self.c_out, (self.kh, self.kw), self.groups, self.has_bias)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def symmetric_padding(self) -> bool:
        return self.pad[0] == self.pad[1] and self.pad[2] == self.pad[3]

    def functional_kwargs(self) -> dict:
        """The keyword arguments of ``torch.nn.functional.conv2d`` (and `fastconv.conv2d`) for this
        layer; their padding is symmetric, so only a layer with `symmetric_padding` has them."""
        if not self.symmetric_padding:
            raise ValueError(f"padding {self.pad} is asymmetric: conv2d's signature cannot express it")
        return dict(stride=self.stride, padding=(self.pad[0], self.pad[2]), dilation=self.dilation, groups=self.groups)

    @property
    def epilogue(self) -> tuple[str, ...]:
        """The element-wise ops applied after the reduction, in order (`fastconv.contract`)."""
        return (("bias",) if self.has_bias else ()) + self.post_ops

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.c_in and self.groups > 1

    def with_batch(self, n: int) -> "ConvParams":
        """The same layer on another batch size (plans cache per shape)."""
        return replace(self, n=n)

    def with_pass(self, pass_: str) -> "ConvParams":
        """The same layer, for another pass (`fastconv.contract.PASSES`)."""
        return replace(self, pass_=pass_)

    def describe(self) -> str:
        s = f"{self.n}x{self.c_in}x{self.h}x{self.w} -> {self.c_out} k{self.kh}x{self.kw}"
        s += f" s{self.stride[0]}x{self.stride[1]} p{','.join(map(str, self.pad))}"
        if self.dilation != (1, 1):
            s += f" d{self.dilation[0]}x{self.dilation[1]}"
        if self.groups != 1:
            s += f" g{self.groups}"
        if self.pass_ != "forward":
            s += f" [{self.pass_}]"
        return s + f" {self.dtype}"


@dataclass(frozen=True)
class PoolParams:
    """One pooling call. ``kind`` is ``"max"``, ``"avg"`` or ``"adaptive_avg"``.

    For adaptive pooling the window varies per output pixel (``start = ⌊i·H/H_out⌋``,
    ``end = ⌈(i+1)·H/H_out⌉``); ``kernel``/``stride``/``padding`` are then unused.
    """

    kind: str
    n: int
    c: int
    h: int
    w: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None
    output_size: tuple[int, int] | None = None  # adaptive only
    dtype: str = "float32"
    pass_: str = "forward"  # see fastconv.contract: forward, input_grad
    layout: str = "NCHW"
    out_h: int = field(init=False)
    out_w: int = field(init=False)

    def __post_init__(self) -> None:
        check_fields(self.pass_, self.layout, ())
        if self.kind == "adaptive_avg":
            if self.output_size is None:
                raise TypeError("adaptive_avg pooling needs an output_size")
            oh, ow = self.output_size
        else:
            oh = pool_output_size(
                self.h, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0], self.ceil_mode
            )
            ow = pool_output_size(
                self.w, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1], self.ceil_mode
            )
        object.__setattr__(self, "out_h", oh)
        object.__setattr__(self, "out_w", ow)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.out_h, self.out_w)

    @property
    def epilogue(self) -> tuple[str, ...]:
        """Pools fuse no element-wise ops (`fastconv.contract`)."""
        return ()

    @property
    def input_bytes(self) -> int:
        return self.n * self.c * self.h * self.w * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        if self.kind == "adaptive_avg":
            return f"adaptive_avg {self.n}x{self.c}x{self.h}x{self.w} -> {self.out_h}x{self.out_w}"
        s = (
            f"{self.kind} {self.n}x{self.c}x{self.h}x{self.w} k{self.kernel[0]}x{self.kernel[1]}"
            f" s{self.stride[0]}x{self.stride[1]} p{self.padding[0]}x{self.padding[1]}"
        )
        if self.dilation != (1, 1):
            s += f" d{self.dilation[0]}x{self.dilation[1]}"
        return s + (" ceil" if self.ceil_mode else "")


def adaptive_bounds(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start/end of each adaptive-pooling window along one axis (torch's formula)."""
    i = np.arange(out, dtype=np.int64)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)
    return start, end


__all__ = [
    "conv_output_size",
    "pool_output_size",
    "conv_param_count",
    "conv_flops",
    "ConvParams",
    "PoolParams",
    "adaptive_bounds",
]
