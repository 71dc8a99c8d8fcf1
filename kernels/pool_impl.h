/* Per-plane pooling kernels for kernels/pool.pyx (one template, instantiated for float and double).
 *
 * Every window is separable, so each output row comes from two row-wise passes, each element-wise over a
 * contiguous line (gcc vectorises them without reassociating anything, so results are exact and
 * reproducible), and no inner loop has a per-element bounds branch:
 *
 * max  horizontal first: each input row a window needs is reduced once (interior columns
 *      straight from x, border columns with their taps clipped) into a ring of lines; each output
 *      row then takes the NaN-propagating max of its window's lines. NaN wins as in torch's
 *      `val > best || isnan(val)`; a window's value does not depend on scan order, so this returns
 *      exactly torch's value. (Argmax does depend on the order: pool.pyx keeps a row-major scan
 *      for return_indices.)
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
#include <string.h>

typedef double fc_v8d __attribute__((vector_size(64)));

/* b if b is larger or NaN, else a: NaN propagates whichever argument carries it, and a tie keeps
 * a, the earlier tap (torch's strict `>`: the sign of a zero max matches). Written as two
 * single-comparison selects (gcc: maxps + compare/blend, no branch); the one-line form with `||`
 * compiled to branches that mispredict on random data (measured 3x slower than on sorted data). */
#define FC_NANMAX(a, b) fc_nanmax_sel((a), (b))
/* b if b is larger, else a (ties keep the earlier tap, as torch): one maxps, NaN not propagated —
 * for planes known to hold no NaN; `exact_nan` selects FC_NANMAX inside fc_maxpool_any. */
#define FC_MAX2(a, b) (exact_nan ? FC_NANMAX((a), (b)) : ((b) > (a) ? (b) : (a)))
#define fc_nanmax_sel(a, b) _Generic((a), float: fc_nanmax_f, double: fc_nanmax_d)((a), (b))
static inline float fc_nanmax_f(float a, float b) {
    float m = b > a ? b : a;   /* maxps: a when unordered or tied, so a NaN a propagates */
    return b != b ? b : m;     /* a NaN b propagates too */
}
static inline double fc_nanmax_d(double a, double b) {
    double m = b > a ? b : a;
    return b != b ? b : m;
}

#define FC_ALWAYS_INLINE static inline __attribute__((always_inline))

#define FC_POOL_TEMPLATE(T, SUF)                                                                   \
/* Output columns [*j0, *j1) whose kw taps (spaced dw) all lie inside a row of W. */                \
static inline void fc_interior_##SUF(ptrdiff_t W, ptrdiff_t OW, int kw, int sw, int pw, int dw,   \
                                     ptrdiff_t *j0, ptrdiff_t *j1) {                               \
    ptrdiff_t span = (ptrdiff_t)(kw - 1) * dw + 1, a = (pw + sw - 1) / sw, b;                      \
    b = (W - span + pw < 0) ? 0 : (W - span + pw) / sw + 1;                                        \
    if (b > OW) b = OW;                                                                            \
    if (a > b) a = b;                                                                              \
    *j0 = a; *j1 = b;                                                                              \
}                                                                                                  \
                                                                                                   \
/* Max, horizontal first (like avg below): each needed input row is reduced once into a ring of   \
 * span = (kh-1)*dh+1 lines (slot r % span), interior columns straight from x, border columns with \
 * their taps clipped; then each output row takes the max of its window's lines. A vertical-first \
 * version (max of rows into a line, then shifted re-loads of it) measured 2x slower on 54-wide    \
 * planes: re-loading just-stored vectors at shifted offsets stalls store forwarding. */          \
FC_ALWAYS_INLINE void fc_maxpool_any_##SUF(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,\
                                   ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,     \
                                   int ph, int pw, int dh, int dw, T *restrict ring,               \
                                   const int exact_nan) {                                          \
    /* exact_nan (a constant after inlining): NaN-propagating max, else one maxps per max */      \
    const ptrdiff_t span = (ptrdiff_t)(kh - 1) * dh + 1;                                           \
    ptrdiff_t j0, j1, next = 0; /* rows below `next` are in the ring (windows only move down) */  \
    fc_interior_##SUF(W, OW, kw, sw, pw, dw, &j0, &j1);                                            \
    for (ptrdiff_t i = 0; i < OH; i++) {                                                           \
        T *restrict yr = y + i * OW;                                                               \
        ptrdiff_t r0 = i * sh - ph, ra = r0 < 0 ? 0 : r0, rb = r0 + span < H ? r0 + span : H;      \
        if (next < ra) next = ra;                                                                  \
        for (ptrdiff_t r = next, s = next % span; r < rb; r++, s = (s + 1 == span) ? 0 : s + 1) {  \
            T *restrict hm = ring + s * OW;                                                        \
            const T *restrict xr = x + r * W;                                                      \
            if (dw == 1 && kw == 3 && sw == 2) {                                                   \
                for (ptrdiff_t j = j0; j < j1; j++) {                                              \
                    const T *restrict xj = xr + 2 * j - pw;                                        \
                    T m = FC_MAX2(xj[0], xj[1]);                                                 \
                    hm[j] = FC_MAX2(m, xj[2]);                                                   \
                }                                                                                  \
            } else if (dw == 1 && kw == 2 && sw == 2) {                                            \
                for (ptrdiff_t j = j0; j < j1; j++) {                                              \
                    const T *restrict xj = xr + 2 * j - pw;                                        \
                    hm[j] = FC_MAX2(xj[0], xj[1]);                                               \
                }                                                                                  \
            } else if (dw == 1 && kw == 3 && sw == 1) {                                            \
                for (ptrdiff_t j = j0; j < j1; j++) {                                              \
                    const T *restrict xj = xr + j - pw;                                            \
                    T m = FC_MAX2(xj[0], xj[1]);                                                 \
                    hm[j] = FC_MAX2(m, xj[2]);                                                   \
                }                                                                                  \
            } else {                                                                               \
                for (ptrdiff_t j = j0; j < j1; j++) hm[j] = xr[j * sw - pw];                       \
                for (int v = 1; v < kw; v++) {                                                     \
                    const T *restrict xv = xr + (ptrdiff_t)v * dw - pw;                            \
                    for (ptrdiff_t j = j0; j < j1; j++) hm[j] = FC_MAX2(hm[j], xv[j * sw]);      \
                }                                                                                  \
            }                                                                                      \
            for (ptrdiff_t j = 0; j < OW; j++) { /* border columns */                              \
                if (j == j0) j = j1;                                                               \
                if (j >= OW) break;                                                                \
                T m = (T)-INFINITY;                                                                \
                for (int v = 0; v < kw; v++) {                                                     \
                    ptrdiff_t q = j * sw - pw + (ptrdiff_t)v * dw;                                 \
                    if (q >= 0 && q < W) m = FC_MAX2(m, xr[q]);                                  \
                }                                                                                  \
                hm[j] = m;                                                                         \
            }                                                                                      \
        }                                                                                          \
        if (next < rb) next = rb;                                                                  \
        /* vertical: the window's taps r0 + u*dh that lie inside the input */                    \
        ptrdiff_t u0 = 0, u1 = kh;                                                                 \
        while (u0 < kh && r0 + u0 * dh < 0) u0++;                                                  \
        while (u1 > u0 && r0 + (u1 - 1) * dh >= H) u1--;                                           \
        if (u0 == u1) { /* window entirely in padding (never with torch's pad <= k/2) */           \
            for (ptrdiff_t j = 0; j < OW; j++) yr[j] = (T)-INFINITY;                               \
            continue;                                                                              \
        }                                                                                          \
        const T *restrict h0 = ring + ((r0 + u0 * dh) % span) * OW;                                \
        if (u1 - u0 == 3 && dh == 1) {                                                             \
            const ptrdiff_t s0 = (r0 + u0) % span, s1 = s0 + 1 == span ? 0 : s0 + 1,               \
                            s2 = s1 + 1 == span ? 0 : s1 + 1;                                      \
            const T *restrict h1 = ring + s1 * OW, *restrict h2 = ring + s2 * OW;                  \
            for (ptrdiff_t j = 0; j < OW; j++) {                                                   \
                T m = FC_MAX2(h0[j], h1[j]);                                                     \
                yr[j] = FC_MAX2(m, h2[j]);                                                       \
            }                                                                                      \
            continue;                                                                              \
        }                                                                                          \
        for (ptrdiff_t j = 0; j < OW; j++) yr[j] = h0[j];                                          \
        for (ptrdiff_t u = u0 + 1; u < u1; u++) {                                                  \
            const T *restrict hu = ring + ((r0 + u * dh) % span) * OW;                             \
            for (ptrdiff_t j = 0; j < OW; j++) yr[j] = FC_MAX2(yr[j], hu[j]);                    \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Average: horizontal first, so each input row is converted and summed once whatever the      \
 * vertical stride; the per-row sums live in a ring of kh lines (`ring`, kh*OW doubles, slot r%kh \
 * holds input row r), then each output row adds its window's lines. wdiv[j] / hdiv[i]: column / \
 * row factors of the divisor (pool.pyx); float32 multiplies by their reciprocals (the result is  \
 * rounded to float32 anyway), float64 divides exactly. */                                        \
FC_ALWAYS_INLINE void fc_avgpool_any_##SUF(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,\
                                   ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,     \
                                   int ph, int pw, const double *restrict hdiv,                    \
                                   const double *restrict wdiv, const double *restrict winv,       \
                                   double *restrict acc, double *restrict ring) {                  \
    ptrdiff_t j0, j1;                                                                              \
    fc_interior_##SUF(W, OW, kw, sw, pw, 1, &j0, &j1);                                             \
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
/* Mean of n contiguous values, summed in double in 8 fixed lanes (gcc vector extensions: the    \
 * plain-C version of this loop stayed scalar, at ~60 cycles per 7x7 plane), then a fixed tree:  \
 * reproducible, and no reassociation flags needed. */                                            \
static inline T fc_mean_##SUF(const T *restrict x, ptrdiff_t n) {                                  \
    typedef T vT __attribute__((vector_size(8 * sizeof(T))));                                      \
    fc_v8d acc = {0, 0, 0, 0, 0, 0, 0, 0};                                                         \
    ptrdiff_t i = 0;                                                                               \
    for (; i + 8 <= n; i += 8) {                                                                   \
        vT v;                                                                                      \
        memcpy(&v, x + i, sizeof v);                                                               \
        acc += __builtin_convertvector(v, fc_v8d);                                                 \
    }                                                                                              \
    double s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));  \
    for (; i < n; i++) s += (double)x[i];                                                          \
    return (T)(s / (double)n);                                                                     \
}                                                                                                  \
                                                                                                   \
/* The entry points: the seed networks' windows get their own copy of the plane loop with the  \
 * window as constants, so gcc unrolls the tap loops and drops the generic paths. Measured (1    \
 * thread, 256x28x28 avg 3x3/s1/p1, C harness): 121-145 us with constants, 188 us without. */    \
FC_ALWAYS_INLINE void fc_maxpool_windows_##SUF(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,  \
                                   ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,     \
                                   int ph, int pw, int dh, int dw, T *restrict ring, const int ex) {\
    if (dh == 1 && dw == 1 && kh == kw && sh == sw && ph == pw) {                                  \
        if (kh == 3 && sh == 2 && ph == 1) /* ResNet */                                            \
            return fc_maxpool_any_##SUF(x, y, H, W, OH, OW, 3, 3, 2, 2, 1, 1, 1, 1, ring, ex);          \
        if (kh == 3 && sh == 2 && ph == 0) /* AlexNet */                                           \
            return fc_maxpool_any_##SUF(x, y, H, W, OH, OW, 3, 3, 2, 2, 0, 0, 1, 1, ring, ex);          \
        if (kh == 2 && sh == 2 && ph == 0) /* VGG, LeNet */                                        \
            return fc_maxpool_any_##SUF(x, y, H, W, OH, OW, 2, 2, 2, 2, 0, 0, 1, 1, ring, ex);          \
        if (kh == 3 && sh == 1 && ph == 1) /* Inception */                                         \
            return fc_maxpool_any_##SUF(x, y, H, W, OH, OW, 3, 3, 1, 1, 1, 1, 1, 1, ring, ex);          \
    }                                                                                              \
    fc_maxpool_any_##SUF(x, y, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, ring, ex);                \
}                                                                                                  \
/* NaN is rare, and the NaN-propagating max costs 3 instructions where plain max costs 1: with     \
 * 9+ taps, scan the plane for NaN first (an integer OR, vectorised) and take the exact path only  \
 * for a plane that holds one. Measured, 1 thread, C harness: ResNet's 3x3/s2 pool 208 -> 137 us   \
 * (plain max alone 103); VGG's 2x2/s2 pool, already memory-bound, 285 us exact vs 410-570 with    \
 * the scan pass, so small windows always take the exact path. */                                \
static void fc_maxpool_plane_##SUF(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,  \
                                   ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,     \
                                   int ph, int pw, int dh, int dw, T *restrict ring) {             \
    int exact = kh * kw < 9; /* small windows, or a NaN in the plane (no early exit in the scan: \
                              * it would not vectorise) */                                         \
    if (!exact)                                                                                    \
        for (ptrdiff_t i = 0; i < H * W; i++) exact |= x[i] != x[i];                               \
    if (exact)                                                                                     \
        fc_maxpool_windows_##SUF(x, y, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, ring, 1);     \
    else                                                                                           \
        fc_maxpool_windows_##SUF(x, y, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, ring, 0);     \
}                                                                                                  \
static void fc_avgpool_plane_##SUF(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,  \
                                   ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,     \
                                   int ph, int pw, const double *restrict hdiv,                    \
                                   const double *restrict wdiv, const double *restrict winv,       \
                                   double *restrict acc, double *restrict ring) {                  \
    if (kh == kw && sh == sw && ph == pw) {                                                        \
        if (kh == 3 && sh == 1 && ph == 1) /* Inception */                                         \
            return fc_avgpool_any_##SUF(x, y, H, W, OH, OW, 3, 3, 1, 1, 1, 1, hdiv, wdiv, winv, acc, ring); \
        if (kh == 2 && sh == 2 && ph == 0) /* LeNet, DenseNet transitions */                       \
            return fc_avgpool_any_##SUF(x, y, H, W, OH, OW, 2, 2, 2, 2, 0, 0, hdiv, wdiv, winv, acc, ring); \
        if (kh == 3 && sh == 2 && ph == 1)                                                         \
            return fc_avgpool_any_##SUF(x, y, H, W, OH, OW, 3, 3, 2, 2, 1, 1, hdiv, wdiv, winv, acc, ring); \
    }                                                                                              \
    fc_avgpool_any_##SUF(x, y, H, W, OH, OW, kh, kw, sh, sw, ph, pw, hdiv, wdiv, winv, acc, ring);   \
}

FC_POOL_TEMPLATE(float, f)
FC_POOL_TEMPLATE(double, d)

#endif
