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

#define FC_COMMON_NAMES_ONLY /* FC_NAME: the per-dtype names of pool_body.h */
#include "_common.h"
#undef FC_COMMON_NAMES_ONLY

typedef double fc_v8d __attribute__((vector_size(64)));

/* b if b is larger or NaN, else a: NaN propagates whichever argument carries it, and a tie keeps
 * a, the earlier tap (torch's strict `>`: the sign of a zero max matches). Written as two
 * single-comparison selects (gcc: maxps + compare/blend, no branch); the one-line form with `||`
 * compiled to branches that mispredict on random data (measured 3x slower than on sorted data). */
#define FC_NANMAX(a, b) FC_NAME(fc_nanmax)((a), (b))
/* b if b is larger, else a (ties keep the earlier tap, as torch): one maxps, NaN not propagated —
 * for planes known to hold no NaN; `exact_nan` selects FC_NANMAX inside fc_maxpool_any. */
#define FC_MAX2(a, b) (exact_nan ? FC_NANMAX((a), (b)) : ((b) > (a) ? (b) : (a)))
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
/* not its case (pool_body.h's stub): builds without AVX-512, and float64 (which keeps the
 * generic path) */
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
/* not its case (pool_body.h's stub): builds without AVX-512, and float64 (which keeps
 * fc_avgpool_3x3s1p1) */

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
/* fc_means' loads of 8 values as doubles (whole / masked) and its masked store of 8 means, per
 * element type */
static inline __m512d fc_means_ld_f(const float *p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
static inline __m512d fc_means_mld_f(__mmask8 m, const float *p) {
    return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, p));
}
static inline void fc_means_st_f(float *p, __mmask8 m, __m512d v) { _mm256_mask_storeu_ps(p, m, _mm512_cvtpd_ps(v)); }
static inline __m512d fc_means_ld_d(const double *p) { return _mm512_loadu_pd(p); }
static inline __m512d fc_means_mld_d(__mmask8 m, const double *p) { return _mm512_maskz_loadu_pd(m, p); }
static inline void fc_means_st_d(double *p, __mmask8 m, __m512d v) { _mm512_mask_storeu_pd(p, m, v); }
#endif

/* The per-plane kernels (pool_body.h) once per element type: T, SFX (the suffix FC_NAME appends),
 * IT (an integer type as wide as T) and POOL_SIMD (1 where this type's fc_maxpool_3x3s2 and
 * fc_avg3s1p1 are defined above, 0 for their stubs). */
#define T float
#define SFX f
#define IT int
#if defined(__AVX512F__)
#define POOL_SIMD 1
#else
#define POOL_SIMD 0
#endif
#include "pool_body.h"
#undef T
#undef SFX
#undef IT
#undef POOL_SIMD

#define T double
#define SFX d
#define IT long long
#define POOL_SIMD 0
#include "pool_body.h"
#undef T
#undef SFX
#undef IT
#undef POOL_SIMD

#endif
