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
 * mean global average: a contiguous sum per plane in 8 double lanes; with AVX-512, 8 planes at a
 *      time and one transposing reduction (fc_means_*).
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

/* fc_avgpool_3x3s1p1: a block is FC_AVG3_BLOCK doubles of input rows (16 KB, in L1) */
#define FC_AVG3_BLOCK 2048
/* doubles of `ring` the avg plane kernels need: kh lines of OW (fc_avgpool_any) or a block of
 * input rows, at least three (fc_avgpool_3x3s1p1) */
static inline ptrdiff_t fc_avg_ring_len(int kh, ptrdiff_t W, ptrdiff_t OW) {
    ptrdiff_t any = (ptrdiff_t)kh * OW, blk = 3 * W > FC_AVG3_BLOCK ? 3 * W : FC_AVG3_BLOCK;
    return any > blk ? any : blk;
}
/* column sums of 8 / 1 consecutive outputs of fc_avg3_block (rows k, k+W, k+2W of X) */
#define FC_VSUM(X, k, W) ((fc_ld8d((X) + (k)) + fc_ld8d((X) + (k) + (W))) + fc_ld8d((X) + (k) + 2 * (W)))
#define FC_SSUM(X, k, W) (((X)[k] + (X)[(k) + (W)]) + (X)[(k) + 2 * (W)])
/* An average from its double sum s (a scalar or a vector): float32 multiplies by the divisor's
 * reciprocal `inv` (the result is rounded to float32 anyway), float64 divides by `div` exactly.
 * Every average kernel below ends in this one step (pool.pyx's hdiv/wdiv/winv hold the factors). */
#define FC_AVG_DIV(T, s, inv, div) (sizeof(T) == 4 ? (s) * (inv) : (s) / (div))
static inline fc_v8d fc_ld8d(const double *p) { fc_v8d v; memcpy(&v, p, sizeof v); return v; }

/* Max 3x3/s2 with padding 0 or 1 (AlexNet, ResNet), float32, AVX-512, in registers: per output
 * row and 16 outputs, each input row of the window gives its three taps from two loads — split
 * into even and odd columns by two permutes, the first two taps then lane shifts against the
 * previous 16 outputs' vectors — and the only stores are the outputs. (The ring version stores
 * each row's horizontal maxima and re-loads them for the next output row: those stores alias the
 * input rows' loads mod 4 KiB at some placements, measured 181-256 us by placement, 1 thread,
 * 64x112x112.) The maxima keep torch's scan order (rows, then columns: ties keep the earlier
 * tap, so a zero's sign matches). NaN: the plain max does not propagate it, so every loaded
 * vector is also tested (unordered compare). Returns 1 when the plane is done; -1 when it holds
 * a NaN (the caller takes the exact path without scanning for one again); 0 where the build
 * lacks AVX-512 or the plane is too small (W < 2), and the caller takes the generic path. */
#if defined(__AVX512F__)
#include <immintrin.h>
/* One output row from its window's nr input rows (nr constant after inlining, so the per-row
 * vectors stay in registers), rows xr, xr + W, ... */
__attribute__((always_inline)) static inline __mmask16
fc_mp3s2_row(const float *restrict xr, float *restrict yr, ptrdiff_t W, ptrdiff_t OW, ptrdiff_t c0,
             const int nr) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __mmask16 nan = 0;
    __m512 pe[3], po[3]; /* per window row: the previous 16 outputs' even / odd columns */
    for (int u = 0; u < nr; u++) {
        pe[u] = c0 >= 2 ? _mm512_set1_ps(xr[u * W + c0 - 2]) : ninf;
        po[u] = _mm512_set1_ps(xr[u * W + c0 - 1]);
        nan |= _mm512_cmp_ps_mask(pe[u], po[u], _CMP_UNORD_Q);
    }
    for (ptrdiff_t j = 0; j < OW; j += 16) {
        const ptrdiff_t c = 2 * j + c0, left = W - c; /* lane l's third tap: column c + 2l */
        const __mmask16 mP = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
        const __mmask16 mQ = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
        __m512 acc = ninf;
        for (int u = 0; u < nr; u++) {
            const float *restrict xc = xr + u * W + c;
            const __m512 P = _mm512_mask_loadu_ps(ninf, mP, xc), Q = _mm512_mask_loadu_ps(ninf, mQ, xc + 16);
            nan |= _mm512_cmp_ps_mask(P, Q, _CMP_UNORD_Q);
            const __m512 E = _mm512_permutex2var_ps(P, ev, Q), O = _mm512_permutex2var_ps(P, od, Q);
            const __m512 t0 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(E), _mm512_castps_si512(pe[u]), 15));
            const __m512 t1 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(O), _mm512_castps_si512(po[u]), 15));
            /* _mm512_max_ps(b, a) = b > a ? b : a: a tie or a NaN keeps a, the earlier tap */
            const __m512 h = _mm512_max_ps(E, _mm512_max_ps(t1, t0));
            acc = u == 0 ? h : _mm512_max_ps(h, acc);
            pe[u] = E;
            po[u] = O;
        }
        const ptrdiff_t n = OW - j;
        _mm512_mask_storeu_ps(yr + j, n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1), acc);
    }
    return nan;
}
static inline int fc_maxpool_3x3s2_f(const float *restrict x, float *restrict y, ptrdiff_t H, ptrdiff_t W,
                                     ptrdiff_t OH, ptrdiff_t OW, int p) {
    if (W < 2) return 0;
    const ptrdiff_t c0 = 2 - p; /* column of output 0's third tap */
    __mmask16 nan = 0;
    for (ptrdiff_t i = 0; i < OH; i++) {
        const ptrdiff_t r0 = 2 * i - p, ra = r0 < 0 ? 0 : r0, rb = r0 + 3 < H ? r0 + 3 : H;
        const float *restrict xr = x + ra * W;
        if (rb - ra == 3)
            nan |= fc_mp3s2_row(xr, y + i * OW, W, OW, c0, 3);
        else if (rb - ra == 2)
            nan |= fc_mp3s2_row(xr, y + i * OW, W, OW, c0, 2);
        else if (rb - ra == 1)
            nan |= fc_mp3s2_row(xr, y + i * OW, W, OW, c0, 1);
        else
            return 0;
    }
    return nan == 0 ? 1 : -1;
}
#endif
/* not its case: builds without AVX-512, and float64 (which keeps the generic path) */
#define FC_MAXPOOL_3X3S2_NONE(T, SUF)                                                              \
static inline int fc_maxpool_3x3s2_##SUF(const T *x, T *y, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH,\
                                         ptrdiff_t OW, int p) {                                    \
    (void)x; (void)y; (void)H; (void)W; (void)OH; (void)OW; (void)p;                               \
    return 0;                                                                                      \
}
#if !defined(__AVX512F__)
FC_MAXPOOL_3X3S2_NONE(float, f)
#endif
FC_MAXPOOL_3X3S2_NONE(double, d)
/* Average 3x3/s1/p1 (Inception's pool branch), float32 planes at most 32 wide, AVX-512: each
 * input row is converted to double once, in registers (NV vectors of 8), and the three rows of
 * a window stay there as the plane is walked down; the column sums' left and right neighbours
 * are lane shifts (zeros past the edges, which is the padding), and the only stores are the
 * outputs. Same arithmetic, in the same order, as fc_avgpool_3x3s1p1 (which keeps the wider
 * planes and float64): ((up + row) + down) per column, then ((left + mid) + right), times
 * 1/hdiv[i] * winv[j]. Returns 1 when the plane is done, 0 (not its case) for planes wider than
 * 32 or smaller than 2x2, float64, or builds without AVX-512. */
#if defined(__AVX512F__)
__attribute__((always_inline)) static inline void
fc_avg3s1p1_rows(const float *restrict x, float *restrict y, ptrdiff_t H, ptrdiff_t W,
                 const double *restrict hdiv, const double *restrict winv, const int NV) {
    __mmask8 m[4];
    __m512d wi[4], a[4], b[4], c[4], v[4];
    for (int k = 0; k < NV; k++) {
        const ptrdiff_t left = W - 8 * k;
        m[k] = left >= 8 ? 0xFF : (__mmask8)((1u << left) - 1);
        wi[k] = _mm512_maskz_loadu_pd(m[k], winv + 8 * k);
        a[k] = _mm512_setzero_pd();
        b[k] = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m[k], x + 8 * k));
    }
    for (ptrdiff_t i = 0; i < H; i++) {
        const double hinv = 1.0 / hdiv[i];
        for (int k = 0; k < NV; k++) {
            c[k] = i + 1 < H ? _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m[k], x + (i + 1) * W + 8 * k))
                             : _mm512_setzero_pd();
            v[k] = _mm512_add_pd(_mm512_add_pd(a[k], b[k]), c[k]);
        }
        for (int k = 0; k < NV; k++) {
            const __m512d lo = k > 0 ? v[k - 1] : _mm512_setzero_pd();
            const __m512d hi = k + 1 < NV ? v[k + 1] : _mm512_setzero_pd();
            const __m512d L = _mm512_castsi512_pd(_mm512_alignr_epi64(_mm512_castpd_si512(v[k]), _mm512_castpd_si512(lo), 7));
            const __m512d R = _mm512_castsi512_pd(_mm512_alignr_epi64(_mm512_castpd_si512(hi), _mm512_castpd_si512(v[k]), 1));
            const __m512d sum = _mm512_add_pd(_mm512_add_pd(L, v[k]), R);
            const __m512d o = _mm512_mul_pd(sum, _mm512_mul_pd(_mm512_set1_pd(hinv), wi[k]));
            _mm256_mask_storeu_ps(y + i * W + 8 * k, m[k], _mm512_cvtpd_ps(o));
        }
        for (int k = 0; k < NV; k++) {
            a[k] = b[k];
            b[k] = c[k];
        }
    }
}
static inline int fc_avg3s1p1_f(const float *restrict x, float *restrict y, ptrdiff_t H, ptrdiff_t W,
                                const double *restrict hdiv, const double *restrict winv) {
    if (W > 32 || W < 2 || H < 2) return 0;
    if (W > 24) fc_avg3s1p1_rows(x, y, H, W, hdiv, winv, 4);
    else if (W > 16) fc_avg3s1p1_rows(x, y, H, W, hdiv, winv, 3);
    else if (W > 8) fc_avg3s1p1_rows(x, y, H, W, hdiv, winv, 2);
    else fc_avg3s1p1_rows(x, y, H, W, hdiv, winv, 1);
    return 1;
}
#endif
/* not its case: builds without AVX-512, and float64 (which keeps fc_avgpool_3x3s1p1) */
#define FC_AVG3S1P1_NONE(T, SUF)                                                                   \
static inline int fc_avg3s1p1_##SUF(const T *x, T *y, ptrdiff_t H, ptrdiff_t W, const double *hdiv,\
                                    const double *winv) {                                          \
    (void)x; (void)y; (void)H; (void)W; (void)hdiv; (void)winv;                                    \
    return 0;                                                                                      \
}
#if !defined(__AVX512F__)
FC_AVG3S1P1_NONE(float, f)
#endif
FC_AVG3S1P1_NONE(double, d)

#define FC_POOL_TEMPLATE(T, SUF, IT) /* IT: an integer type as wide as T */                                                                   \
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
            for (ptrdiff_t j = 0; j < OW; j++)                                                     \
                yr[j] = (T)FC_AVG_DIV(T, h0[j] + h1[j] + h2[j], hinv * winv[j], hd * wdiv[j]);     \
            continue;                                                                              \
        }                                                                                          \
        for (ptrdiff_t j = 0; j < OW; j++) acc[j] = 0.0;                                           \
        for (ptrdiff_t r = ra, s = sa; r < rb; r++, s = (s + 1 == kh) ? 0 : s + 1) {               \
            const double *restrict hs = ring + s * OW;                                             \
            for (ptrdiff_t j = 0; j < OW; j++) acc[j] += hs[j];                                    \
        }                                                                                          \
        for (ptrdiff_t j = 0; j < OW; j++)                                                         \
            yr[j] = (T)FC_AVG_DIV(T, acc[j], hinv * winv[j], hd * wdiv[j]);                        \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Whether x[0..n) holds a NaN. Vector lanes OR-ing `v != v` (no early exit, which would not     \
 * vectorise); the plain-C `exact |= x[i] != x[i]` loop compiled to masked moves and cost a      \
 * quarter of ResNet's 3x3/s2 max pool (perf, C harness). */                                     \
static inline int fc_has_nan_##SUF(const T *restrict x, ptrdiff_t n) {                             \
    typedef T vT __attribute__((vector_size(64)));                                                 \
    typedef IT vI __attribute__((vector_size(64))); /* lanes the width of T: v != v's type */     \
    vT v0, v1;                                                                                     \
    vI a0 = {0}, a1 = {0};                                                                         \
    const ptrdiff_t L = (ptrdiff_t)(64 / sizeof(T));                                               \
    const ptrdiff_t nv = n - n % (2 * L);                                                          \
    for (ptrdiff_t i = 0; i < nv; i += 2 * L) {                                                    \
        memcpy(&v0, x + i, sizeof v0);                                                             \
        memcpy(&v1, x + i + L, sizeof v1);                                                         \
        a0 |= (vI)(v0 != v0);                                                                      \
        a1 |= (vI)(v1 != v1);                                                                      \
    }                                                                                              \
    a0 |= a1;                                                                                      \
    int any = 0;                                                                                   \
    for (ptrdiff_t l = 0; l < L; l++) any |= a0[l] != 0;                                           \
    for (ptrdiff_t i = nv; i < n; i++) any |= x[i] != x[i];                                        \
    return any;                                                                                    \
}                                                                                                  \
                                                                                                   \
/* Average 3x3/s1/p1 ("same" size; Inception's pool branch). Rows 1..H-2 go in blocks: the      \
 * block's input rows (and one above and below) are converted to double once into `buf`, then   \
 * one flat pass over the block, 8 outputs a step, keeps the column sums in registers: the       \
 * left/right neighbours come from lane shifts across adjacent vectors (no re-load of a stored   \
 * line, so none of the store-forwarding stalls of fc_avgpool_any's staged-buffer variant).     \
 * The flat pass is wrong in columns 0 and W-1 (their neighbours wrap to the adjacent rows);     \
 * those, and rows 0 and H-1, are rewritten from x with their own divisors. Needs H, W >= 2 and \
 * buf of fc_avg_ring_len doubles; `line` holds W doubles. Measured (1 thread, 256x28x28, C     \
 * harness, shapes at run time): 98 us as separate column-sum/row-sum passes through a buffer,  \
 * 79 us with register shifts on x converted three times, 66 us converted once (interior only), \
 * vs 182-232 us for fc_avgpool_any. */                                                         \
FC_ALWAYS_INLINE void fc_avg3_block_##SUF(const double *restrict X, T *restrict yb, ptrdiff_t n, \
                                          ptrdiff_t W, double cinv, double cdiv) {                 \
    /* X: rows a-1 .. b as doubles; output k (flat in rows a..b-1) sums X[k + dr*W + dc] */     \
    typedef T vT __attribute__((vector_size(8 * sizeof(T))));                                      \
    typedef long long fc_v8l __attribute__((vector_size(64)));                                     \
    const fc_v8d zero = {0, 0, 0, 0, 0, 0, 0, 0};                                                  \
    fc_v8d prev = zero, cur = zero, next;                                                          \
    ptrdiff_t k = 0;                                                                               \
    if (n >= 8) cur = FC_VSUM(X, 0, W);                                                            \
    for (; k + 8 <= n; k += 8) {                                                                   \
        if (k + 16 <= n) next = FC_VSUM(X, k + 8, W);                                              \
        else { next = zero; if (k + 8 < n) next[0] = FC_SSUM(X, k + 8, W); }                       \
        fc_v8d L = __builtin_shuffle(prev, cur, (fc_v8l){7, 8, 9, 10, 11, 12, 13, 14});            \
        fc_v8d R = __builtin_shuffle(cur, next, (fc_v8l){1, 2, 3, 4, 5, 6, 7, 8});                 \
        fc_v8d s = (L + cur) + R;                                                                  \
        vT o = __builtin_convertvector(FC_AVG_DIV(T, s, cinv, cdiv), vT);                          \
        memcpy(yb + k, &o, sizeof o);                                                              \
        prev = cur; cur = next;                                                                    \
    }                                                                                              \
    for (; k < n; k++) { /* the block's last n % 8 outputs (0 past the ends: wrapped columns) */   \
        double s = ((k > 0 ? FC_SSUM(X, k - 1, W) : 0.0) + FC_SSUM(X, k, W))                       \
                   + (k + 1 < n ? FC_SSUM(X, k + 1, W) : 0.0);                                     \
        yb[k] = (T)FC_AVG_DIV(T, s, cinv, cdiv);                                                   \
    }                                                                                              \
}                                                                                                  \
/* One output row of the 3x3/s1/p1 average from its column sums v[0..W-1], every column with    \
 * its own divisor (first/last row of the plane). */                                            \
FC_ALWAYS_INLINE void fc_avg3_row_##SUF(const double *restrict v, T *restrict yr, ptrdiff_t W,   \
                                        double hd, const double *restrict wdiv,                    \
                                        const double *restrict winv) {                             \
    const double hinv = 1.0 / hd;                                                                  \
    for (ptrdiff_t j = 0; j < W; j++) {                                                            \
        double s = (j > 0 ? v[j - 1] : 0.0) + v[j];                                                \
        if (j + 1 < W) s += v[j + 1];                                                              \
        yr[j] = (T)FC_AVG_DIV(T, s, hinv * winv[j], hd * wdiv[j]);                                 \
    }                                                                                              \
}                                                                                                  \
static void fc_avgpool_3x3s1p1_##SUF(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,\
                                     const double *restrict hdiv, const double *restrict wdiv,     \
                                     const double *restrict winv, double *restrict line,           \
                                     double *restrict buf) {                                       \
    /* rows 1..H-2 and columns 1..W-2 share one divisor (padding 1 keeps those windows whole,   \
     * whatever count_include_pad says); hdiv[1] exists as H >= 2 */                              \
    const double cinv = (1.0 / hdiv[1]) * winv[1], cdiv = hdiv[1] * wdiv[1];                      \
    const double hmid = hdiv[1], hmid_inv = 1.0 / hmid;                                            \
    ptrdiff_t br = FC_AVG3_BLOCK / W - 2;                                                          \
    if (br < 1) br = 1;                                                                            \
    for (ptrdiff_t a = 1; a < H - 1; a += br) {                                                    \
        const ptrdiff_t b = a + br < H - 1 ? a + br : H - 1, m = (b - a + 2) * W;                  \
        const T *restrict xa = x + (a - 1) * W;                                                    \
        for (ptrdiff_t k = 0; k < m; k++) buf[k] = (double)xa[k];                                  \
        fc_avg3_block_##SUF(buf, y + a * W, (b - a) * W, W, cinv, cdiv);                           \
        for (ptrdiff_t i = a; i < b; i++) { /* columns 0 and W-1 */                               \
            const double *restrict r0 = buf + (i - a) * W, *restrict r1 = r0 + W, *restrict r2 = r1 + W; \
            double s0 = ((r0[0] + r1[0]) + r2[0]) + ((r0[1] + r1[1]) + r2[1]);                     \
            double s1 = ((r0[W - 2] + r1[W - 2]) + r2[W - 2]) + ((r0[W - 1] + r1[W - 1]) + r2[W - 1]); \
            T *restrict yr = y + i * W;                                                            \
            yr[0] = (T)FC_AVG_DIV(T, s0, hmid_inv * winv[0], hmid * wdiv[0]);                      \
            yr[W - 1] = (T)FC_AVG_DIV(T, s1, hmid_inv * winv[W - 1], hmid * wdiv[W - 1]);          \
        }                                                                                          \
    }                                                                                              \
    /* rows 0 and H-1: two input rows each */                                                      \
    for (ptrdiff_t j = 0; j < W; j++) line[j] = (double)x[j] + (double)x[W + j];                   \
    fc_avg3_row_##SUF(line, y, W, hdiv[0], wdiv, winv);                                           \
    const T *restrict xl = x + (H - 2) * W;                                                        \
    for (ptrdiff_t j = 0; j < W; j++) line[j] = (double)xl[j] + (double)xl[W + j];                 \
    fc_avg3_row_##SUF(line, y + (H - 1) * W, W, hdiv[H - 1], wdiv, winv);                          \
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
/* float32 3x3/s2 windows (padding 0/1) go to fc_maxpool_3x3s2_f first: 1 thread, 64x112x112,   \
 * C harness 91-113 us against 140-176 for the ring path below; in Python 94-96 us at every      \
 * placement against 181-256. Everything else, and a plane that holds a NaN, comes here.         \
 * NaN is rare, and the NaN-propagating max costs 3 instructions where plain max costs 1: with     \
 * 9+ taps, scan the plane for NaN first (an integer OR, vectorised) and take the exact path only  \
 * for a plane that holds one. Measured, 1 thread, C harness: ResNet's 3x3/s2 pool 208 -> 137 us   \
 * (plain max alone 103); VGG's 2x2/s2 pool, already memory-bound, 285 us exact vs 410-570 with    \
 * the scan pass, so small windows always take the exact path. */                                \
static void fc_maxpool_plane_##SUF(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,  \
                                   ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,     \
                                   int ph, int pw, int dh, int dw, T *restrict ring) {             \
    int r = 0; /* fc_maxpool_3x3s2: 1 done, -1 a NaN in the plane, 0 not its case */             \
    if (kh == 3 && kw == 3 && sh == 2 && sw == 2 && dh == 1 && dw == 1 && ph == pw && ph <= 1) {  \
        r = fc_maxpool_3x3s2_##SUF(x, y, H, W, OH, OW, ph);                                        \
        if (r > 0) return;                                                                         \
    }                                                                                              \
    int exact = r < 0 || kh * kw < 9; /* a NaN in the plane, or small windows */               \
    if (!exact) exact = fc_has_nan_##SUF(x, H * W);                                                \
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
        if (kh == 3 && sh == 1 && ph == 1 && H >= 2 && W >= 2) { /* Inception */                   \
            if (fc_avg3s1p1_##SUF(x, y, H, W, hdiv, winv)) return;                                 \
            return fc_avgpool_3x3s1p1_##SUF(x, y, H, W, hdiv, wdiv, winv, acc, ring);              \
        }                                                                                          \
        if (kh == 2 && sh == 2 && ph == 0) /* LeNet, DenseNet transitions */                       \
            return fc_avgpool_any_##SUF(x, y, H, W, OH, OW, 2, 2, 2, 2, 0, 0, hdiv, wdiv, winv, acc, ring); \
        if (kh == 3 && sh == 2 && ph == 1)                                                         \
            return fc_avgpool_any_##SUF(x, y, H, W, OH, OW, 3, 3, 2, 2, 1, 1, hdiv, wdiv, winv, acc, ring); \
    }                                                                                              \
    fc_avgpool_any_##SUF(x, y, H, W, OH, OW, kh, kw, sh, sw, ph, pw, hdiv, wdiv, winv, acc, ring);   \
}

FC_POOL_TEMPLATE(float, f, int)
FC_POOL_TEMPLATE(double, d, long long)

/* Global average: the means of `planes` contiguous planes of n values each (y[p] = mean of
 * x[p*n .. p*n+n)). With AVX-512 the planes go 8 at a time: each plane sums its values in 8
 * double lanes (lane k takes the values k mod 8; the tail by a masked load), the 8 planes'
 * loads interleaved, then one transposing reduction turns the 8 accumulators into the vector of
 * the 8 sums, divided by n together and stored together. One plane at a time (fc_mean) paid a
 * horizontal sum and a dependent add chain per plane: ~40 cycles for a 7x7 plane, where the
 * global average's planes are all of its work (ResNet head 8x2048x7x7 from Python, 2 threads:
 * see pool.pyx). A plane's arithmetic is the same whichever group it lands in. */
#if defined(__AVX512F__) && defined(__AVX512VL__)
/* The 8 lanes' sums of a0..a7 as one vector [sum a0, ..., sum a7], by halving: 256-bit halves,
 * then 128-bit quarters, then the pairs. */
static inline __m512d fc_hsum8x8(const __m512d a[8]) {
    __m512d b[4], c[2];
    for (int k = 0; k < 4; k++) /* b[k] = [a(2k) lo+hi quarter pairs, a(2k+1) ...] */
        b[k] = _mm512_add_pd(_mm512_shuffle_f64x2(a[2 * k], a[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f64x2(a[2 * k], a[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int k = 0; k < 2; k++) /* c[k]: quarter q holds plane 4k+q's two partial sums */
        c[k] = _mm512_add_pd(_mm512_shuffle_f64x2(b[2 * k], b[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f64x2(b[2 * k], b[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* quarter q: [plane q, plane q+4] */
    const __m512d r = _mm512_add_pd(_mm512_unpacklo_pd(c[0], c[1]), _mm512_unpackhi_pd(c[0], c[1]));
    return _mm512_permutexvar_pd(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), r);
}
#define FC_MEANS(T, SUF, LOAD, MLOAD, STORE)                                                       \
static void fc_means_##SUF(const T *restrict x, T *restrict y, ptrdiff_t planes, ptrdiff_t n) {    \
    const ptrdiff_t nv = n & ~(ptrdiff_t)7;                                                        \
    const __mmask8 mt = (__mmask8)((1u << (n - nv)) - 1);                                          \
    const __m512d dn = _mm512_set1_pd((double)n);                                                  \
    for (ptrdiff_t p0 = 0; p0 < planes; p0 += 8) {                                                 \
        /* the last group repeats its last plane in the missing lanes (not stored) */              \
        const ptrdiff_t cnt = planes - p0 < 8 ? planes - p0 : 8;                                   \
        const T *restrict xq[8];                                                                   \
        __m512d a[8];                                                                              \
        for (int q = 0; q < 8; q++) {                                                              \
            xq[q] = x + (p0 + (q < cnt ? q : cnt - 1)) * n;                                        \
            a[q] = _mm512_setzero_pd();                                                            \
        }                                                                                          \
        for (ptrdiff_t i = 0; i < nv; i += 8)                                                      \
            for (int q = 0; q < 8; q++) a[q] = _mm512_add_pd(a[q], LOAD(xq[q] + i));               \
        if (mt)                                                                                    \
            for (int q = 0; q < 8; q++) a[q] = _mm512_add_pd(a[q], MLOAD(mt, xq[q] + nv));         \
        STORE(y + p0, (__mmask8)((1u << cnt) - 1), _mm512_div_pd(fc_hsum8x8(a), dn));              \
    }                                                                                              \
}
#define FC_LD_F(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
#define FC_MLD_F(m, p) _mm512_cvtps_pd(_mm256_maskz_loadu_ps((m), (p)))
#define FC_ST_F(p, m, v) _mm256_mask_storeu_ps((p), (m), _mm512_cvtpd_ps(v))
#define FC_MLD_D(m, p) _mm512_maskz_loadu_pd((m), (p))
#define FC_ST_D(p, m, v) _mm512_mask_storeu_pd((p), (m), (v))
FC_MEANS(float, f, FC_LD_F, FC_MLD_F, FC_ST_F)
FC_MEANS(double, d, _mm512_loadu_pd, FC_MLD_D, FC_ST_D)
#else
static void fc_means_f(const float *restrict x, float *restrict y, ptrdiff_t planes, ptrdiff_t n) {
    for (ptrdiff_t p = 0; p < planes; p++) y[p] = fc_mean_f(x + p * n, n);
}
static void fc_means_d(const double *restrict x, double *restrict y, ptrdiff_t planes, ptrdiff_t n) {
    for (ptrdiff_t p = 0; p < planes; p++) y[p] = fc_mean_d(x + p * n, n);
}
#endif

#endif
