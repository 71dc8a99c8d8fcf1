"""1x1 (pointwise) convolution (Numba): one GEMM per image and group, straight on NCHW.

With a 1x1 kernel and no padding, ``out[n, g] = W[g] @ x[n, g]`` where each image's channels
are already a ``C_in × H·W`` row-major matrix — no unfolding. A stride > 1 first gathers the
strided pixels (the only workspace).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._numba_config import JIT


def supports(p) -> str | None:
    if (p.kh, p.kw) != (1, 1):
        return f"needs a 1x1 kernel, got {p.kh}x{p.kw}"
    if p.pad != (0, 0, 0, 0):
        return f"needs padding 0, got {p.pad}"
    return None


def workspace_bytes(p) -> int:
    if p.stride == (1, 1):
        return 0
    return p.n * p.c_in * p.out_h * p.out_w * p.itemsize  # the gathered strided pixels


def prepare(w, b, p):
    wm = np.ascontiguousarray(w.reshape(p.groups, p.c_out_per_group, p.c_in_per_group))
    bias = np.zeros(p.c_out, dtype=w.dtype) if b is None else b
    return wm, np.ascontiguousarray(bias)


def run(x, packed, p, out) -> None:
    wm, b = packed
    if p.stride != (1, 1):
        x = np.ascontiguousarray(x[:, :, ::p.stride[0], ::p.stride[1]])
    _pointwise(x, wm, b, out)


@njit(**JIT)
def _pointwise(x, wm, b, out):
    n = x.shape[0]
    groups, cog, cig = wm.shape
    hw = out.shape[2] * out.shape[3]
    for img in range(n):
        for g in range(groups):
            a = x[img, g * cig:(g + 1) * cig].reshape(cig, hw)
            o = out[img, g * cog:(g + 1) * cog].reshape(cog, hw)
            np.dot(wm[g], a, o)
            for co in range(cog):
                bv = b[g * cog + co]
                for t in range(hw):
                    o[co, t] += bv
