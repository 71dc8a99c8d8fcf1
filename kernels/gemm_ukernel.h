/* fastconv: a register-blocked AVX-512 SGEMM for the im2col tiles (float32).
 *
 * C[M x N] (row stride ldc) = Wp @ Bp + bias, where
 *   Wp = W (M x K, row-major) packed once in prepare as [ceil(M/MR)][K][MR] (rows zero-padded),
 *   Bp = the unfolded tile packed as [ceil(N/NR)][K][NR] (columns zero-padded; im2col writes it
 *        in this layout directly, so packing costs nothing extra).
 * Loop order: K in blocks of KC (a KC x NR slice of Bp, 24 KiB, stays in L1 while every MR-row
 * panel of W passes over it); MR x NR = 8 x 48 accumulators = 24 zmm registers. The bias is the
 * initial value of the accumulators on the first K block, so it costs no extra pass.
 * Without AVX-512F this file compiles to a portable scalar loop of the same contract.
 */
#ifndef FASTCONV_GEMM_UKERNEL_H
#define FASTCONV_GEMM_UKERNEL_H

#include <stddef.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#ifdef __AVX512F__
#define FC_AVX512 1
#else
#define FC_AVX512 0   /* the kernels then use BLAS instead (the scalar loop below is only a fallback) */
#endif

#define FC_MR 8
#define FC_NR 48
#ifndef FC_KC
#define FC_KC 192   /* most K per block; K is split into equal blocks of at most this */
#endif

/* Wp[(i/MR)*K*MR + k*MR + i%MR] = w[i*K + k]; zero rows past M. */
static inline void fc_pack_w(const float* w, int M, int K, float* wp) {
    int np = (M + FC_MR - 1) / FC_MR;
    for (int p = 0; p < np; p++)
        for (int k = 0; k < K; k++)
            for (int r = 0; r < FC_MR; r++) {
                int i = p * FC_MR + r;
                wp[((size_t)p * K + k) * FC_MR + r] = i < M ? w[(size_t)i * K + k] : 0.0f;
            }
}

static inline size_t fc_packed_w_floats(int M, int K) {
    return (size_t)((M + FC_MR - 1) / FC_MR) * K * FC_MR;
}

static inline size_t fc_packed_b_floats(int N, int K) {
    return (size_t)((N + FC_NR - 1) / FC_NR) * K * FC_NR;
}

/* One mr x nr block (mr <= MR, nr <= NR) of C over k in [0, kc):
 * c (row stride ldc) = (first ? bias : c) + a @ b. NV = 16-float vectors per row (1..3), the last
 * one masked to nr, so partial panels cost only the vectors they use and nothing outside C is
 * read or written; rows past mr are computed (zero weights) but never loaded or stored. */
#ifdef __AVX512F__
static inline __attribute__((always_inline)) void fc_ukernel_nv(
        const int NV, int kc, const float* a, const float* b, float* c, ptrdiff_t ldc, int first,
        const float* bias, int mr, int nr) {
    __m512 acc[FC_MR][3];
    __mmask16 last = (__mmask16)((1u << (nr - 16 * (NV - 1))) - 1u);
    if (nr - 16 * (NV - 1) >= 16) last = (__mmask16)0xFFFF;
#pragma GCC unroll 8
    for (int i = 0; i < FC_MR; i++) {
#pragma GCC unroll 3
        for (int v = 0; v < NV; v++) {
            if (first) acc[i][v] = _mm512_set1_ps(bias ? bias[i] : 0.0f);
            else if (i < mr) acc[i][v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, c + i * ldc + 16 * v);
            else acc[i][v] = _mm512_setzero_ps();
        }
    }
    for (int k = 0; k < kc; k++) {
        __m512 bv[3];
#pragma GCC unroll 3
        for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 8
        for (int i = 0; i < FC_MR; i++) {
            __m512 av = _mm512_set1_ps(a[i]);
#pragma GCC unroll 3
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
        }
        a += FC_MR;
        b += FC_NR;
    }
#pragma GCC unroll 8
    for (int i = 0; i < FC_MR; i++) {
        if (i >= mr) break;
#pragma GCC unroll 3
        for (int v = 0; v < NV; v++)
            _mm512_mask_storeu_ps(c + i * ldc + 16 * v, v == NV - 1 ? last : 0xFFFF, acc[i][v]);
    }
}
#endif

static inline void fc_ukernel(int kc, const float* a, const float* b, float* c, ptrdiff_t ldc,
                              int first, const float* bias, int mr, int nr) {
#ifdef __AVX512F__
    if (nr > 32) fc_ukernel_nv(3, kc, a, b, c, ldc, first, bias, mr, nr);
    else if (nr > 16) fc_ukernel_nv(2, kc, a, b, c, ldc, first, bias, mr, nr);
    else fc_ukernel_nv(1, kc, a, b, c, ldc, first, bias, mr, nr);
#else
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float s = first ? (bias ? bias[i] : 0.0f) : c[i * ldc + j];
            for (int k = 0; k < kc; k++) s += a[k * FC_MR + i] * b[k * FC_NR + j];
            c[i * ldc + j] = s;
        }
#endif
}

/* C[M x N] (row stride ldc) = Wp @ Bp (+ bias[M], may be NULL). */
static inline void fc_gemm_packed(int M, int N, int K, const float* wp, const float* bp,
                                  const float* bias, float* c, ptrdiff_t ldc) {
    int mp = (M + FC_MR - 1) / FC_MR, np = (N + FC_NR - 1) / FC_NR;
    float bias_pad[FC_MR];
    int nkb = (K + FC_KC - 1) / FC_KC, kstep = (K + nkb - 1) / nkb;
    for (int k0 = 0; k0 < K; k0 += kstep) {
        int kc = K - k0 < kstep ? K - k0 : kstep;
        int first = k0 == 0;
        for (int q = 0; q < np; q++) {
            const float* bq = bp + ((size_t)q * K + k0) * FC_NR;
            int nr = N - q * FC_NR < FC_NR ? N - q * FC_NR : FC_NR;
            for (int p = 0; p < mp; p++) {
                const float* ap = wp + ((size_t)p * K + k0) * FC_MR;
                int mr = M - p * FC_MR < FC_MR ? M - p * FC_MR : FC_MR;
                const float* bb = bias ? bias + p * FC_MR : NULL;
                if (bb && mr < FC_MR) {  /* never read bias past M */
                    memset(bias_pad, 0, sizeof bias_pad);
                    memcpy(bias_pad, bb, mr * sizeof(float));
                    bb = bias_pad;
                }
                fc_ukernel(kc, ap, bq, c + (ptrdiff_t)p * FC_MR * ldc + (ptrdiff_t)q * FC_NR, ldc, first, bb, mr, nr);
            }
        }
    }
}

#endif
