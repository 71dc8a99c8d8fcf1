"""im2col + GEMM (Numba): unfold a tile of output rows into a column matrix, multiply by the
weight matrix with BLAS, add the bias.

The unfolded matrix never exists whole: tiles hold at most ``TILE_BYTES`` of columns (plus
the tile's GEMM result), so extra memory is bounded by ``workspace_bytes(p)`` ≤ about
2·TILE_BYTES + one output row block, whatever the input size.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._numba_config import JIT

TILE_BYTES = 4 * 1024 * 1024  # unfolded columns per tile: fits in L2+L3 of this machine


def supports(p) -> str | None:
    return None


def _rows_per_tile(p) -> int:
    k = p.c_in_per_group * p.kh * p.kw
    return int(max(1, min(p.out_h, TILE_BYTES // max(1, k * p.out_w * p.itemsize))))


def workspace_bytes(p) -> int:
    rows = _rows_per_tile(p)
    k = p.c_in_per_group * p.kh * p.kw
    return (k + p.c_out_per_group) * rows * p.out_w * p.itemsize


def prepare(w, b, p):
    wm = np.ascontiguousarray(w.reshape(p.groups, p.c_out_per_group, -1))
    bias = np.zeros(p.c_out, dtype=w.dtype) if b is None else b
    return wm, np.ascontiguousarray(bias)


def run(x, packed, p, out) -> None:
    wm, b = packed
    _im2col(x, wm, b, out, p.stride[0], p.stride[1], p.pad[0], p.pad[2],
            p.dilation[0], p.dilation[1], p.kh, p.kw, _rows_per_tile(p))


@njit(**JIT)
def _im2col(x, wm, b, out, sh, sw, pt, pl, dh, dw, kh, kw, rows):
    n, cin, H, W = x.shape
    groups, cog, K = wm.shape
    cig = cin // groups
    oh, ow = out.shape[2], out.shape[3]
    buf = np.empty(K * rows * ow, dtype=x.dtype)
    for img in range(n):
        for g in range(groups):
            for r0 in range(0, oh, rows):
                r1 = min(oh, r0 + rows)
                m = (r1 - r0) * ow
                cols = buf[:K * m].reshape(K, m)
                for ci in range(cig):
                    plane = x[img, g * cig + ci]
                    for u in range(kh):
                        for v in range(kw):
                            k = (ci * kh + u) * kw + v
                            for i in range(r0, r1):
                                r = i * sh + u * dh - pt
                                base = (i - r0) * ow
                                for j in range(ow):
                                    c = j * sw + v * dw - pl
                                    if 0 <= r < H and 0 <= c < W:
                                        cols[k, base + j] = plane[r, c]
                                    else:
                                        cols[k, base + j] = 0.0
                res = np.dot(wm[g], cols)
                for co in range(cog):
                    oc = g * cog + co
                    for i in range(r0, r1):
                        for j in range(ow):
                            out[img, oc, i, j] = res[co, (i - r0) * ow + j] + b[oc]
