"""The naive float64 oracle — for tests and the benchmark's error column, never for speed.

Written straight from the definition of seed 003: output channel ``p`` is
``Z^p = Σ_d W^{p,d} ⊗ X^d + b^p`` (a cross-correlation, as in every CNN library):

    Z[n, p, i, j] = b[p] + Σ_d Σ_u Σ_v  W[p, d, u, v] · X_pad[n, g·C_g + d, i·S_h + u·D_h, j·S_w + v·D_w]

The only liberty taken is vectorising over (n, p, i, j) so that the oracle is usable on
real layer sizes; the loops over the kernel taps (u, v) and groups are literal. Everything
is accumulated in float64, whatever the input dtype. Arguments are assumed valid: the
public ops (and the tests) go through `fastconv.validate` first.
"""

from __future__ import annotations

import numpy as np

from .params import ConvParams, PoolParams, adaptive_bounds


def _pad(x: np.ndarray, top: int, bottom: int, left: int, right: int, value: float = 0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _tap(xp: np.ndarray, u: int, v: int, oh: int, ow: int, s: tuple[int, int], d: tuple[int, int]) -> np.ndarray:
    """The input pixels that kernel tap (u, v) meets, for every output pixel: [N, C, oh, ow]."""
    r0, c0 = u * d[0], v * d[1]
    return xp[:, :, r0 : r0 + s[0] * (oh - 1) + 1 : s[0], c0 : c0 + s[1] * (ow - 1) + 1 : s[1]]


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, p: ConvParams) -> np.ndarray:
    """float64 convolution of 4-D ``x`` with ``w`` as described by ``p``."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    xp = _pad(x, *p.pad)
    out = np.zeros(p.out_shape, dtype=np.float64)
    cig, cog = p.c_in_per_group, p.c_out_per_group
    for g in range(p.groups):
        xg = xp[:, g * cig : (g + 1) * cig]
        wg = w[g * cog : (g + 1) * cog]
        for u in range(p.kh):
            for v in range(p.kw):
                # Σ_d W[p, d, u, v] · X[n, d, ...] for every (n, p, i, j)
                out[:, g * cog : (g + 1) * cog] += np.einsum(
                    "pd,ndij->npij", wg[:, :, u, v], _tap(xg, u, v, p.out_h, p.out_w, p.stride, p.dilation)
                )
    if b is not None:
        out += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return out


def max_pool2d(x: np.ndarray, p: PoolParams, return_indices: bool = False):
    """Max over each window; padding never wins. Scanning the window row by row, a value is
    taken if it is the first real pixel, greater than the best so far, or NaN — torch's rule,
    so NaN propagates and its index is the last NaN seen."""
    x = np.asarray(x, dtype=np.float64)
    (ph, pw), (kh, kw) = p.padding, p.kernel
    # pad enough on the right for ceil_mode windows; padded cells are marked invalid
    extra_h = max(0, (p.out_h - 1) * p.stride[0] + (kh - 1) * p.dilation[0] + 1 - (p.h + 2 * ph))
    extra_w = max(0, (p.out_w - 1) * p.stride[1] + (kw - 1) * p.dilation[1] + 1 - (p.w + 2 * pw))
    xp = _pad(x, ph, ph + extra_h, pw, pw + extra_w, value=-np.inf)
    valid = _pad(np.ones((1, 1, p.h, p.w), dtype=bool), ph, ph + extra_h, pw, pw + extra_w, value=False)
    rows = np.arange(xp.shape[2])[:, None] - ph
    cols = np.arange(xp.shape[3])[None, :] - pw
    flat = np.broadcast_to(rows * p.w + cols, (1, 1) + xp.shape[2:])
    best = np.full(p.out_shape, -np.inf)
    idx = np.full(p.out_shape, -1, dtype=np.int64)
    for u in range(kh):
        for v in range(kw):
            val = _tap(xp, u, v, p.out_h, p.out_w, p.stride, p.dilation)
            ok = _tap(valid, u, v, p.out_h, p.out_w, p.stride, p.dilation)
            where = _tap(flat, u, v, p.out_h, p.out_w, p.stride, p.dilation)
            take = ok & ((val > best) | np.isnan(val) | (idx < 0))
            best = np.where(take, val, best)
            idx = np.where(take, where, idx)
    return (best, idx) if return_indices else best


def _avg_divisors(
    size: int, out: int, k: int, s: int, pad: int, include_pad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel along one axis: clipped window start/end and the count torch divides by."""
    start = np.arange(out) * s - pad
    end = np.minimum(start + k, size + pad)
    pool = end - start  # includes padding, but not the ceil_mode overhang past size + pad
    start_c, end_c = np.maximum(start, 0), np.minimum(end, size)
    return start_c, end_c, (pool if include_pad else end_c - start_c)


def avg_pool2d(x: np.ndarray, p: PoolParams) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    hs, he, hdiv = _avg_divisors(p.h, p.out_h, p.kernel[0], p.stride[0], p.padding[0], p.count_include_pad)
    ws, we, wdiv = _avg_divisors(p.w, p.out_w, p.kernel[1], p.stride[1], p.padding[1], p.count_include_pad)
    return _window_sums(x, hs, he, ws, we) / (
        p.divisor_override if p.divisor_override is not None else np.outer(hdiv, wdiv)
    )


def adaptive_avg_pool2d(x: np.ndarray, p: PoolParams) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    hs, he = adaptive_bounds(p.h, p.out_h)
    ws, we = adaptive_bounds(p.w, p.out_w)
    return _window_sums(x, hs, he, ws, we) / np.outer(he - hs, we - ws)


def _window_sums(x: np.ndarray, hs, he, ws, we) -> np.ndarray:
    """Sum of x over each rectangular window [hs:he, ws:we] — one literal window at a time, so
    Inf and NaN propagate exactly as they would by hand. An empty window (a ceil_mode window
    wholly in the padding) sums to 0, as in torch."""
    out = np.zeros(x.shape[:2] + (len(hs), len(ws)))
    for i, (h0, h1) in enumerate(zip(hs, he)):
        for j, (w0, w1) in enumerate(zip(ws, we)):
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3))
    return out


# --- backward passes (gradients), float64, straight from the definitions ----------------------
# The forward op above is Z[n, p, i, j] = b[p] + Σ_d Σ_u Σ_v W[p, d, u, v] · X_pad[n, c(d), i·S_h + u·D_h,
# j·S_w + v·D_w] with c(d) = g·C_g + d. Differentiating it term by term:
#
#   dX_pad[n, c(d), i·S_h + u·D_h, j·S_w + v·D_w] += Σ_p W[p, d, u, v] · dZ[n, p, i, j]
#   dW[p, d, u, v] = Σ_n Σ_i Σ_j dZ[n, p, i, j] · X_pad[n, c(d), i·S_h + u·D_h, j·S_w + v·D_w]
#   db[p]          = Σ_n Σ_i Σ_j dZ[n, p, i, j]
#
# and dX is dX_pad without its padding. As above, the loops over groups and taps are literal and the
# rest is vectorised; every sum is in float64.
def conv2d_input_grad(dy: np.ndarray, w: np.ndarray, p: ConvParams) -> np.ndarray:
    """float64 dL/dX [N, C_in, H, W] of the convolution ``p``, given dL/dZ ``dy`` (4-D)."""
    dy = np.asarray(dy, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    pt, pb, pl, pr = p.pad
    dxp = np.zeros((p.n, p.c_in, p.h + pt + pb, p.w + pl + pr))
    cig, cog = p.c_in_per_group, p.c_out_per_group
    for g in range(p.groups):
        dyg = dy[:, g * cog : (g + 1) * cog]
        for u in range(p.kh):
            for v in range(p.kw):
                # the input pixels tap (u, v) met, one per output pixel (distinct, so += is exact)
                _tap(dxp[:, g * cig : (g + 1) * cig], u, v, p.out_h, p.out_w, p.stride, p.dilation)[...] += np.einsum(
                    "pd,npij->ndij", w[g * cog : (g + 1) * cog, :, u, v], dyg
                )
    return dxp[:, :, pt : pt + p.h, pl : pl + p.w]


def conv2d_weight_grad(x: np.ndarray, dy: np.ndarray, p: ConvParams) -> np.ndarray:
    """float64 dL/dW [C_out, C_in/groups, kH, kW] of the convolution ``p`` at input ``x`` (4-D)."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    xp = _pad(x, *p.pad)
    dw = np.zeros(p.weight_shape)
    cig, cog = p.c_in_per_group, p.c_out_per_group
    for g in range(p.groups):
        xg = xp[:, g * cig : (g + 1) * cig]
        dyg = dy[:, g * cog : (g + 1) * cog]
        for u in range(p.kh):
            for v in range(p.kw):
                dw[g * cog : (g + 1) * cog, :, u, v] = np.einsum(
                    "npij,ndij->pd", dyg, _tap(xg, u, v, p.out_h, p.out_w, p.stride, p.dilation)
                )
    return dw


def conv2d_bias_grad(dy: np.ndarray) -> np.ndarray:
    """float64 dL/db [C_out]: dZ summed over batch, height and width (4-D ``dy``)."""
    return np.asarray(dy, dtype=np.float64).sum(axis=(0, 2, 3))


def max_pool2d_input_grad(dy: np.ndarray, indices: np.ndarray, p: PoolParams) -> np.ndarray:
    """float64 dL/dX of a max pool: each output's gradient goes to the input pixel its index names
    (flat h·W + w in the plane); gradients meeting at one pixel are added."""
    dy = np.asarray(dy, dtype=np.float64)
    dx = np.zeros(p.input_shape)
    for n in range(p.n):
        for c in range(p.c):
            np.add.at(dx[n, c].reshape(-1), np.asarray(indices[n, c]).reshape(-1), dy[n, c].reshape(-1))
    return dx


def _spread(dy: np.ndarray, shape, hs, he, ws, we, div) -> np.ndarray:
    """dX of window means: output (i, j)'s gradient / div[i, j] added to every pixel of its window
    [hs:he, ws:we] (one literal window at a time; an empty window adds nothing)."""
    dx = np.zeros(shape)
    for i, (h0, h1) in enumerate(zip(hs, he)):
        for j, (w0, w1) in enumerate(zip(ws, we)):
            if h1 > h0 and w1 > w0:
                dx[:, :, h0:h1, w0:w1] += (dy[:, :, i, j] / div[i, j])[:, :, None, None]
    return dx


def avg_pool2d_input_grad(dy: np.ndarray, p: PoolParams) -> np.ndarray:
    """float64 dL/dX of `avg_pool2d` (same windows and divisors as the forward oracle)."""
    dy = np.asarray(dy, dtype=np.float64)
    hs, he, hdiv = _avg_divisors(p.h, p.out_h, p.kernel[0], p.stride[0], p.padding[0], p.count_include_pad)
    ws, we, wdiv = _avg_divisors(p.w, p.out_w, p.kernel[1], p.stride[1], p.padding[1], p.count_include_pad)
    div = (
        np.full((p.out_h, p.out_w), float(p.divisor_override))
        if p.divisor_override is not None
        else np.outer(hdiv, wdiv).astype(np.float64)
    )
    return _spread(dy, p.input_shape, hs, he, ws, we, div)


def adaptive_avg_pool2d_input_grad(dy: np.ndarray, p: PoolParams) -> np.ndarray:
    """float64 dL/dX of `adaptive_avg_pool2d`."""
    dy = np.asarray(dy, dtype=np.float64)
    hs, he = adaptive_bounds(p.h, p.out_h)
    ws, we = adaptive_bounds(p.w, p.out_w)
    return _spread(dy, p.input_shape, hs, he, ws, we, np.outer(he - hs, we - ws).astype(np.float64))
