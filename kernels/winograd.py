"""Winograd F(m x m, 3x3) convolution (Numba), for 3x3 kernels with stride 1 and dilation 1.

Each m x m block of output costs (m+2)² multiplies per (input, output) channel pair instead
of 9·m², at the price of a larger rounding error (the transforms add terms of mixed sign and
size). Per image and group, blocks of tiles go through: input transform ``V = Bᵀ d B`` →
one GEMM per transform point ``M[ξ] = U[ξ] · V[ξ]`` against the weights transformed once in
`prepare` (``U = G g Gᵀ``) → output transform ``Y = Aᵀ M A`` straight into ``out``.
Tiles are processed ``TILE_BLOCK`` at a time, so the workspace is bounded.

NaN and Inf: the transforms mix every pixel of a tile (``Inf − Inf`` and ``Inf · 0`` give NaN),
so a single non-finite input would turn whole tiles to NaN where torch gives ±Inf or finite
values. A call whose input or weights are not all finite therefore runs the direct kernel —
detected with one summation pass over the input (a finite sum proves finiteness; an overflow to
Inf just takes the slower, still exact, path).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from . import direct
from ._numba_config import JIT

# Transform matrices (Lavin & Gray 2015). Rows of Bᵀ/Aᵀ act on a tile of (m+2) input pixels.
MATRICES = {
    2: dict(
        BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        G=[[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
        AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: dict(
        BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
           [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}
TILE_BLOCK = 512  # tiles transformed and multiplied together


class _Exact(NamedTuple):
    packed: tuple            # direct.prepare(w, b, p)
    weights_finite: bool


def supports(p, tile: int = 2) -> str | None:
    if tile not in MATRICES:
        return f"tile size must be one of {sorted(MATRICES)}, got {tile}"
    if (p.kh, p.kw) != (3, 3):
        return f"needs a 3x3 kernel, got {p.kh}x{p.kw}"
    if p.stride != (1, 1):
        return f"needs stride 1, got {p.stride}"
    if p.dilation != (1, 1):
        return f"needs dilation 1, got {p.dilation}"
    return None


def _tiles(p, tile):
    return -(-p.out_h // tile), -(-p.out_w // tile)


def workspace_bytes(p, tile: int = 2) -> int:
    th, tw = _tiles(p, tile)
    nb = min(TILE_BLOCK, th * tw)
    a2 = (tile + 2) ** 2
    return a2 * (p.c_in_per_group + p.c_out_per_group) * nb * p.itemsize


def prepare(w, b, p, tile: int = 2):
    mats = {k: np.asarray(v, dtype=np.float64) for k, v in MATRICES[tile].items()}
    # U[g, ξ, co, ci] = (G g Gᵀ)[ξ] computed in float64, stored in the layer's dtype
    G = mats["G"]
    u = np.einsum("ak,oikl,bl->oiab", G, w.astype(np.float64), G)  # [Co, Ci/g, α, α]
    a = tile + 2
    u = u.reshape(p.groups, p.c_out_per_group, p.c_in_per_group, a * a).transpose(0, 3, 1, 2)
    bias = np.zeros(p.c_out, dtype=w.dtype) if b is None else b
    # kept for inputs with NaN/Inf (see module docstring): direct's packing is just references
    exact = _Exact(direct.prepare(w, b, p), bool(np.isfinite(w).all()))
    return (np.ascontiguousarray(u, dtype=w.dtype), np.ascontiguousarray(bias),
            mats["BT"].astype(w.dtype), mats["AT"].astype(w.dtype), exact)


def run(x, packed, p, out, tile: int = 2) -> None:
    u, b, bt, at, exact = packed
    with np.errstate(all="ignore"):  # an overflowing or NaN sum is the answer, not a warning
        finite = exact.weights_finite and np.isfinite(np.add.reduce(x, axis=None))
    if not finite:
        direct.run(x, exact.packed, p, out)
        return
    th, tw = _tiles(p, tile)
    _winograd(x, u, b, bt, at, out, p.pad[0], p.pad[2], th, tw, min(TILE_BLOCK, th * tw))


@njit(**JIT)
def _winograd(x, u, b, bt, at, out, pt, pl, th, tw, block):
    n, cin, H, W = x.shape
    groups, a2, cog, cig = u.shape
    a = bt.shape[0]
    m = at.shape[0]
    oh, ow = out.shape[2], out.shape[3]
    ntiles = th * tw
    vbuf = np.empty(a2 * cig * block, dtype=x.dtype)
    mbuf = np.empty(a2 * cog * block, dtype=x.dtype)
    d = np.empty((a, a), dtype=x.dtype)
    tmp = np.empty((a, a), dtype=x.dtype)
    y = np.empty((m, m), dtype=x.dtype)
    for img in range(n):
        for g in range(groups):
            for t0 in range(0, ntiles, block):
                nb = min(block, ntiles - t0)
                V = vbuf[:a2 * cig * nb].reshape(a2, cig, nb)
                M = mbuf[:a2 * cog * nb].reshape(a2, cog, nb)
                # input transform: V[ξ, ci, t] = (Bᵀ d B)[ξ]
                for ci in range(cig):
                    plane = x[img, g * cig + ci]
                    for tt in range(nb):
                        t = t0 + tt
                        r0 = (t // tw) * m - pt
                        c0 = (t % tw) * m - pl
                        for i in range(a):
                            for j in range(a):
                                r = r0 + i
                                c = c0 + j
                                d[i, j] = plane[r, c] if (0 <= r < H and 0 <= c < W) else 0.0
                        for i in range(a):
                            for j in range(a):
                                s = 0.0
                                for k in range(a):
                                    s += bt[i, k] * d[k, j]
                                tmp[i, j] = s
                        for i in range(a):
                            for j in range(a):
                                s = 0.0
                                for k in range(a):
                                    s += tmp[i, k] * bt[j, k]
                                V[i * a + j, ci, tt] = s
                for xi in range(a2):
                    np.dot(u[g, xi], V[xi], M[xi])
                # output transform: Y = Aᵀ M A, clipped at the right/bottom edges
                for co in range(cog):
                    oc = g * cog + co
                    for tt in range(nb):
                        t = t0 + tt
                        r0 = (t // tw) * m
                        c0 = (t % tw) * m
                        for i in range(m):
                            for j in range(a):
                                s = 0.0
                                for k in range(a):
                                    s += at[i, k] * M[k * a + j, co, tt]
                                tmp[i, j] = s
                        for i in range(m):
                            for j in range(m):
                                s = 0.0
                                for k in range(a):
                                    s += tmp[i, k] * at[j, k]
                                y[i, j] = s
                        for i in range(min(m, oh - r0)):
                            for j in range(min(m, ow - c0)):
                                out[img, oc, r0 + i, c0 + j] = y[i, j] + b[oc]
