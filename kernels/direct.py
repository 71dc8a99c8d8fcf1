"""Direct convolution (Numba): loops over output pixels and kernel taps, nothing unfolded.

Runs every valid conv2d case (any stride, padding, dilation, groups), so it is also the
fallback of ``auto``. Parallel over (image, output channel) planes; the innermost loop walks
a contiguous output row with the valid column range computed up front, so it has no branch
and vectorises.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._numba_config import JIT


def supports(p) -> str | None:
    return None


def workspace_bytes(p) -> int:
    return 0


def prepare(w, b, p):
    bias = np.zeros(p.c_out, dtype=w.dtype) if b is None else b
    return np.ascontiguousarray(w), np.ascontiguousarray(bias)


def run(x, packed, p, out) -> None:
    w, b = packed
    _direct(x, w, b, out, p.stride[0], p.stride[1], p.pad[0], p.pad[2],
            p.dilation[0], p.dilation[1], p.groups)


@njit(parallel=True, **JIT)
def _direct(x, w, b, out, sh, sw, pt, pl, dh, dw, groups):
    n, _, H, W = x.shape
    cout, cig, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    cog = cout // groups
    for t in prange(n * cout):
        img = t // cout
        co = t % cout
        ci0 = (co // cog) * cig
        o = out[img, co]
        o[:, :] = b[co]
        for ci in range(cig):
            plane = x[img, ci0 + ci]
            for u in range(kh):
                for v in range(kw):
                    wv = w[co, ci, u, v]
                    off = v * dw - pl
                    # output columns j with 0 <= j*sw + off < W
                    j0 = 0 if off >= 0 else (-off + sw - 1) // sw
                    j1 = min(ow, (W - 1 - off) // sw + 1) if W - 1 - off >= 0 else 0
                    for i in range(oh):
                        r = i * sh + u * dh - pt
                        if r < 0 or r >= H:
                            continue
                        row = plane[r]
                        orow = o[i]
                        for j in range(j0, j1):
                            orow[j] += wv * row[j * sw + off]
