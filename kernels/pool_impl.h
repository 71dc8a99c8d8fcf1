/* Per-plane pooling kernels for kernels/pool.pyx (one template, instantiated for float and double).
 *
 * Every window is separable, so each output row is two row-wise passes, each element-wise over a
 * contiguous line (gcc vectorises them without reassociating anything, so results are exact and
 * reproducible), and no inner loop has a per-element bounds branch:
 *
 * max  vertical first: buf[pw + q] = NaN-propagating max over the window's valid input rows of
 *      x[r, q]; then y[j] = max over v of buf[j*sw + v*dw]. `buf` is a per-thread line in window
 *      coordinates whose border cells (left padding, right padding, ceil_mode overhang) hold -inf,
 *      written once per plane. NaN wins as in torch's `val > best || isnan(val)`; a window's value
 *      does not depend on scan order, so this returns exactly torch's value. (Argmax does depend on
 *      the order: pool.pyx keeps a row-major scan for return_indices.)
 * avg  horizontal first (each input row converted and summed once, whatever the vertical stride):
 *      interior columns straight from x, border columns with their taps clipped; the row sums
 *      live in a ring of kh lines; then each output row adds its window's lines and divides.
 *      Sums are in double (the contract: only the final rounding differs from the float64 oracle).
 * mean global average: a contiguous sum with 8 fixed lanes.
 */
#ifndef FASTCONV_POOL_IMPL_H
#define FASTCONV_POOL_IMPL_H

#include <math.h>
#include <stddef.h>

/* b if b is larger or NaN, else a: NaN propagates whichever argument carries it */
#define FC_NANMAX(a, b) (((b) > (a) || (b) != (b)) ? (b) : (a))

#define FC_POOL_TEMPLATE(T, SUF)                                                                   \
/* Line-buffer length: covers [0, pw + W) and the last window's right edge. */                     \
static inline ptrdiff_t fc_pool_buflen_##SUF(ptrdiff_t W, ptrdiff_t OW, int kw, int sw, int pw,    \
                                            int dw) {                                              \
    ptrdiff_t a = (OW - 1) * (ptrdiff_t)sw + (ptrdiff_t)(kw - 1) * dw + 1, b = pw + W;             \
    return a > b ? a : b;                                                                          \
}                                                                                                  \
                                                                                                   \
static void fc_maxpool_plane_##SUF(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,  \
                                   ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,     \
                                   int ph, int pw, int dh, int dw, T *buf) {              \
    const ptrdiff_t L = fc_pool_buflen_##SUF(W, OW, kw, sw, pw, dw);                               \
    for (ptrdiff_t t = 0; t < pw; t++) buf[t] = (T)-INFINITY;                                      \
    for (ptrdiff_t t = pw + W; t < L; t++) buf[t] = (T)-INFINITY;                                  \
    T *cm = buf + pw;  /* aliases buf: not restrict */                                                                     \
    for (ptrdiff_t i = 0; i < OH; i++) {                                                           \
        T *restrict yr = y + i * OW;                                                               \
        /* vertical: NaN-propagating max over the window's rows inside the input */               \
        ptrdiff_t r0 = i * sh - ph, nrows = 0;                                                     \
        for (int u = 0; u < kh; u++) {                                                             \
            ptrdiff_t r = r0 + (ptrdiff_t)u * dh;                                                  \
            if (r < 0 || r >= H) continue;                                                         \
            const T *restrict xr = x + r * W;                                                      \
            if (nrows++ == 0) {                                                                    \
                for (ptrdiff_t q = 0; q < W; q++) cm[q] = xr[q];                                   \
            } else {                                                                               \
                for (ptrdiff_t q = 0; q < W; q++) cm[q] = FC_NANMAX(cm[q], xr[q]);                 \
            }                                                                                      \
        }                                                                                          \
        if (nrows == 0)  /* window entirely in padding (never with torch's pad <= k/2) */          \
            for (ptrdiff_t q = 0; q < W; q++) cm[q] = (T)-INFINITY;                                \
        /* horizontal: specialised for the common windows so the taps are compile-time */        \
        if (dw == 1 && kw == 3 && sw == 2) {                                                       \
            for (ptrdiff_t j = 0; j < OW; j++) {                                                   \
                T m = FC_NANMAX(buf[2 * j], buf[2 * j + 1]);                                       \
                yr[j] = FC_NANMAX(m, buf[2 * j + 2]);                                              \
            }                                                                                      \
        } else if (dw == 1 && kw == 2 && sw == 2) {                                                \
            for (ptrdiff_t j = 0; j < OW; j++) yr[j] = FC_NANMAX(buf[2 * j], buf[2 * j + 1]);      \
        } else if (dw == 1 && kw == 3 && sw == 1) {                                                \
            for (ptrdiff_t j = 0; j < OW; j++) {                                                   \
                T m = FC_NANMAX(buf[j], buf[j + 1]);                                               \
                yr[j] = FC_NANMAX(m, buf[j + 2]);                                                  \
            }                                                                                      \
        } else {                                                                                   \
            for (ptrdiff_t j = 0; j < OW; j++) yr[j] = buf[j * sw];                                \
            for (int v = 1; v < kw; v++) {                                                         \
                const T *restrict bv = buf + (ptrdiff_t)v * dw;                                    \
                for (ptrdiff_t j = 0; j < OW; j++) yr[j] = FC_NANMAX(yr[j], bv[j * sw]);           \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Average: horizontal first, so each input row is converted and summed once whatever the      \
 * vertical stride; the per-row sums live in a ring of kh lines (`ring`, kh*OW doubles, slot r%kh \
 * holds input row r), then each output row adds its window's lines. wdiv[j] / hdiv[i]: column / \
 * row factors of the divisor (pool.pyx); float32 multiplies by their reciprocals (the result is  \
 * rounded to float32 anyway), float64 divides exactly. */                                        \
static void fc_avgpool_plane_##SUF(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,  \
                                   ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,     \
                                   int ph, int pw, const double *restrict hdiv,                    \
                                   const double *restrict wdiv, const double *restrict winv,       \
                                   double *restrict acc, double *restrict ring) {                  \
    /* interior output columns [j0, j1): every tap inside the row */                              \
    ptrdiff_t j0 = (pw + sw - 1) / sw, j1 = (W - kw + pw) / sw + 1;                                \
    if (W - kw + pw < 0) j1 = 0;                                                                   \
    if (j1 > OW) j1 = OW;                                                                          \
    if (j0 > j1) j0 = j1;                                                                          \
    ptrdiff_t next = 0; /* rows below `next` were summed already (windows only move down) */      \
    for (ptrdiff_t i = 0; i < OH; i++) {                                                           \
        T *restrict yr = y + i * OW;                                                               \
        ptrdiff_t r0 = i * sh - ph, ra = r0 < 0 ? 0 : r0, rb = r0 + kh < H ? r0 + kh : H;          \
        /* horizontal sums of the rows this window needs and the ring does not hold yet */         \
        if (next < ra) next = ra;                                                                  \
        for (ptrdiff_t r = next, s = next % kh; r < rb; r++, s = (s + 1 == kh) ? 0 : s + 1) {      \
            double *restrict hs = ring + s * OW;                                                   \
            const T *restrict xr = x + r * W;                                                      \
            /* interior columns straight from x (a staged line buffer measured 30% slower: the   \
             * shifted re-loads of just-stored vectors stall store forwarding on short rows) */  \
            if (kw == 3 && sw == 1) {                                                              \
                for (ptrdiff_t j = j0; j < j1; j++) {                                              \
                    const T *restrict xj = xr + j - pw;                                            \
                    hs[j] = ((double)xj[0] + (double)xj[1]) + (double)xj[2];                       \
                }                                                                                  \
            } else if (kw == 3 && sw == 2) {                                                       \
                for (ptrdiff_t j = j0; j < j1; j++) {                                              \
                    const T *restrict xj = xr + 2 * j - pw;                                        \
                    hs[j] = ((double)xj[0] + (double)xj[1]) + (double)xj[2];                       \
                }                                                                                  \
            } else if (kw == 2 && sw == 2) {                                                       \
                for (ptrdiff_t j = j0; j < j1; j++)                                                \
                    hs[j] = (double)xr[2 * j - pw] + (double)xr[2 * j + 1 - pw];                   \
            } else {                                                                               \
                for (ptrdiff_t j = j0; j < j1; j++) hs[j] = (double)xr[j * sw - pw];               \
                for (int v = 1; v < kw; v++) {                                                     \
                    const T *restrict xv = xr + v - pw;                                            \
                    for (ptrdiff_t j = j0; j < j1; j++) hs[j] += (double)xv[j * sw];               \
                }                                                                                  \
            }                                                                                      \
            /* border columns: skip the taps in padding / overhang */                              \
            for (ptrdiff_t j = 0; j < OW; j++) {                                                   \
                if (j == j0) j = j1;                                                               \
                if (j >= OW) break;                                                                \
                double s = 0.0;                                                                    \
                for (int v = 0; v < kw; v++) {                                                     \
                    ptrdiff_t q = j * sw - pw + v;                                                 \
                    if (q >= 0 && q < W) s += (double)xr[q];                                       \
                }                                                                                  \
                hs[j] = s;                                                                         \
            }                                                                                      \
        }                                                                                          \
        if (next < rb) next = rb;                                                                  \
        if (ra >= rb) { for (ptrdiff_t j = 0; j < OW; j++) yr[j] = (T)0; continue; }               \
        const ptrdiff_t sa = ra % kh, sb = (sa + 1 == kh) ? 0 : sa + 1, sc = (sb + 1 == kh) ? 0 : sb + 1; \
        /* vertical: add the window's lines, then divide */                                        \
        const double hd = hdiv[i], hinv = 1.0 / hdiv[i];                                           \
        if (rb - ra == 3) {                                                                        \
            const double *restrict h0 = ring + sa * OW, *restrict h1 = ring + sb * OW,             \
                         *restrict h2 = ring + sc * OW;                                            \
            if (sizeof(T) == 4)                                                                    \
                for (ptrdiff_t j = 0; j < OW; j++)                                                 \
                    yr[j] = (T)((h0[j] + h1[j] + h2[j]) * (hinv * winv[j]));                       \
            else                                                                                   \
                for (ptrdiff_t j = 0; j < OW; j++)                                                 \
                    yr[j] = (T)((h0[j] + h1[j] + h2[j]) / (hd * wdiv[j]));                         \
            continue;                                                                              \
        }                                                                                          \
        for (ptrdiff_t j = 0; j < OW; j++) acc[j] = 0.0;                                           \
        for (ptrdiff_t r = ra, s = sa; r < rb; r++, s = (s + 1 == kh) ? 0 : s + 1) {               \
            const double *restrict hs = ring + s * OW;                                             \
            for (ptrdiff_t j = 0; j < OW; j++) acc[j] += hs[j];                                    \
        }                                                                                          \
        if (sizeof(T) == 4)                                                                        \
            for (ptrdiff_t j = 0; j < OW; j++) yr[j] = (T)(acc[j] * (hinv * winv[j]));             \
        else                                                                                       \
            for (ptrdiff_t j = 0; j < OW; j++) yr[j] = (T)(acc[j] / (hd * wdiv[j]));               \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Mean of n contiguous values, summed in double with 8 independent lanes (vectorisable without  \
 * reassociation flags; the order is fixed, so results are reproducible). */                      \
static inline T fc_mean_##SUF(const T *restrict x, ptrdiff_t n) {                                  \
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                      \
    ptrdiff_t i = 0;                                                                               \
    for (; i + 8 <= n; i += 8)                                                                     \
        for (int k = 0; k < 8; k++) acc[k] += (double)x[i + k];                                    \
    double s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));  \
    for (; i < n; i++) s += (double)x[i];                                                          \
    return (T)(s / (double)n);                                                                     \
}

FC_POOL_TEMPLATE(float, f)
FC_POOL_TEMPLATE(double, d)

#endif
