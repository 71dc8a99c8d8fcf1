"""``algo="auto"``: the rules as data, and the pure function that applies them.

Each rule names an algorithm and the layers it takes; `choose` returns the first rule that
matches, so the table reads top to bottom like the decision it is. The numbers come from
measurements on the benchmark suites (2 threads, interleaved medians); `benchmarks/NOTES.md`
has them. The result depends on the layer alone (no timing, no machine state), and a table test
(tests/test_registry.py) locks it. Whoever wants choices measured on their own machine uses
the tuner (``algo="tune"``, `fastconv.tune`), which never leaves the accuracy contract ``auto``
would give.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import registry, validate
from .params import ConvParams


@dataclass(frozen=True)
class Rule:
    """Run ``algo`` on layers with this square kernel size (0: any), stride/dilation 1 if
    ``unit_stride``, no padding if ``no_padding``, and at least ``min_in``/``min_out`` channels
    per group."""

    algo: str
    kernel: int = 0
    unit_stride: bool = False
    no_padding: bool = False
    min_in: int = 0
    min_out: int = 0
    depthwise: bool = False  # one input and one output channel per group only
    same_padding: int = -1  # if >= 0: this padding on every side only
    min_width: int = 0  # input maps at least this wide only
    dtype: str = ""  # this dtype only

    def matches(self, p: ConvParams) -> bool:
        if self.kernel and (p.kh, p.kw) != (self.kernel, self.kernel):
            return False
        if self.depthwise and not (p.groups == p.c_in == p.c_out):
            return False
        if self.same_padding >= 0 and p.pad != (self.same_padding,) * 4:
            return False
        if p.w < self.min_width or (self.dtype and p.dtype != self.dtype):
            return False
        if self.unit_stride and (p.stride, p.dilation) != ((1, 1), (1, 1)):
            return False
        if self.no_padding and p.pad != (0, 0, 0, 0):
            return False
        return p.c_in_per_group >= self.min_in and p.c_out_per_group >= self.min_out


RULES: tuple[Rule, ...] = (
    # 1x1 without padding is a GEMM on NCHW memory
    Rule("pointwise", kernel=1, no_padding=True),
    # depthwise: float32 3x3/s1/p1 maps from 16 wide run on direct's flat plane kernel (lane
    # shifts instead of unaligned loads: 1.7-3.6x faster there); every other depthwise layer runs
    # on the depthwise kernel, which reads the input in place where direct packs each plane
    # (1.1-2.7x faster on MobileNetV2/EfficientNet's strided, 5x5 and 7x7/14x14 layers)
    Rule("direct", kernel=3, unit_stride=True, depthwise=True, same_padding=1, min_width=16, dtype="float32"),
    Rule("depthwise", depthwise=True),
    # Winograd wins 3x3 stride-1 layers from 16 channels per group, and F(2x2,5x5) 5x5 ones from
    # 10 input / 16 output channels; below those, its transforms cost more than they save
    Rule("winograd", kernel=3, unit_stride=True, min_in=16, min_out=16),
    Rule("winograd", kernel=5, unit_stride=True, min_in=10, min_out=16),
    # everything else (the direct kernel beats im2col on every other suite layer)
    Rule("direct"),
)

# fastconv.conv2d prepares the weights for one call, so Winograd's weight transform ((m+2)^2
# numbers per 3x3 filter) must be shared by enough outputs, and F(4x4)'s large U costs more in
# fresh pages than F(2x2)'s slower run: for 3x3 layers picked by a Winograd rule,
ONE_SHOT_WINOGRAD_MIN_OUTPUTS = 400  # batch x height x width below which direct runs instead
ONE_SHOT_F4_MAX_U_BYTES = 24 << 20  # F(4x4)'s U (24 MiB) above which F(2x2) runs instead


def choose(p: ConvParams, one_shot: bool = False) -> str:
    """The ``auto`` choice for layer ``p``: the first matching `RULES` entry.

    Parameters
    ----------
    p : ConvParams
        The layer (shapes, stride, padding, dilation, groups, dtype).
    one_shot : bool
        The weights are prepared for this one call (`fastconv.conv2d`): 3x3 Winograd then needs
        `ONE_SHOT_WINOGRAD_MIN_OUTPUTS` outputs, and F(2x2) replaces F(4x4) when F(4x4)'s
        transformed weights would pass `ONE_SHOT_F4_MAX_U_BYTES`.

    Returns
    -------
    str
        A registered algorithm's name.

    Examples
    --------
    >>> choose(ConvParams.from_layer(1, 64, 56, 64, 3, padding=1))
    'winograd'
    >>> choose(ConvParams.from_layer(1, 64, 56, 64, 3, padding=1, stride=2))
    'direct'
    """
    algo = next(r.algo for r in RULES if r.matches(p))
    if one_shot and algo == "winograd" and p.kh == 3:
        if p.n * p.out_h * p.out_w < ONE_SHOT_WINOGRAD_MIN_OUTPUTS:
            return "direct"
        u_f4 = 36 * p.c_in_per_group * p.c_out * p.itemsize  # (before padding to whole panels)
        if u_f4 > ONE_SHOT_F4_MAX_U_BYTES:
            return "winograd_f2"
    return algo


def select(p: ConvParams, algo: str = "auto", one_shot: bool = False) -> registry.Kernel:
    """The algorithm to run ``p`` with; an explicit algorithm that cannot run it raises its reason.

    ``one_shot``: the weights are prepared for one call only (see `choose`).
    """
    if algo == "auto":
        chosen = registry.get(choose(p, one_shot))
        if chosen.name == "depthwise" and not chosen.kernel.vector:
            # a build without AVX-512 has only the depthwise kernel's scalar loop; direct's
            # portable vector code is faster there
            chosen = registry.get("direct")
        if chosen.supports(p) is None:
            return chosen
        return registry.get("direct")  # direct runs every valid forward case
    chosen = registry.get(validate.algo_name(algo, registry.names()))
    reason = chosen.supports(p)
    if reason is not None:
        raise ValueError(f"algo={algo!r} cannot run this convolution ({p.describe()}): {reason}")
    return chosen
