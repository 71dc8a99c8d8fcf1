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

#define FC_MR 8
#define FC_NR 48
#define FC_KC 128

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

/* One MR x NR block of C over k in [0, kc): c (row stride ldc) = (first ? bias : c) + a @ b. */
static inline void fc_ukernel(int kc, const float* a, const float* b, float* c, ptrdiff_t ldc,
                              int first, const float* bias) {
#ifdef __AVX512F__
    __m512 acc[FC_MR][3];
#pragma GCC unroll 8
    for (int i = 0; i < FC_MR; i++) {
        if (first) {
            __m512 bv = _mm512_set1_ps(bias ? bias[i] : 0.0f);
            acc[i][0] = bv; acc[i][1] = bv; acc[i][2] = bv;
        } else {
            acc[i][0] = _mm512_loadu_ps(c + i * ldc);
            acc[i][1] = _mm512_loadu_ps(c + i * ldc + 16);
            acc[i][2] = _mm512_loadu_ps(c + i * ldc + 32);
        }
    }
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32);
#pragma GCC unroll 8
        for (int i = 0; i < FC_MR; i++) {
            __m512 av = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(av, b2, acc[i][2]);
        }
        a += FC_MR;
        b += FC_NR;
    }
#pragma GCC unroll 8
    for (int i = 0; i < FC_MR; i++) {
        _mm512_storeu_ps(c + i * ldc, acc[i][0]);
        _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
        _mm512_storeu_ps(c + i * ldc + 32, acc[i][2]);
    }
#else
    for (int i = 0; i < FC_MR; i++)
        for (int j = 0; j < FC_NR; j++) {
            float s = first ? (bias ? bias[i] : 0.0f) : c[i * ldc + j];
            for (int k = 0; k < kc; k++) s += a[k * FC_MR + i] * b[k * FC_NR + j];
            c[i * ldc + j] = s;
        }
#endif
}

/* C[M x N] (row stride ldc) = Wp @ Bp (+ bias[M], may be NULL). tmp: FC_MR*FC_NR floats. */
static inline void fc_gemm_packed(int M, int N, int K, const float* wp, const float* bp,
                                  const float* bias, float* c, ptrdiff_t ldc, float* tmp) {
    int mp = (M + FC_MR - 1) / FC_MR, np = (N + FC_NR - 1) / FC_NR;
    float bias_pad[FC_MR];
    for (int k0 = 0; k0 < K; k0 += FC_KC) {
        int kc = K - k0 < FC_KC ? K - k0 : FC_KC;
        int first = k0 == 0;
        for (int q = 0; q < np; q++) {
            const float* bq = bp + ((size_t)q * K + k0) * FC_NR;
            int nr = N - q * FC_NR < FC_NR ? N - q * FC_NR : FC_NR;
            for (int p = 0; p < mp; p++) {
                const float* ap = wp + ((size_t)p * K + k0) * FC_MR;
                int mr = M - p * FC_MR < FC_MR ? M - p * FC_MR : FC_MR;
                float* cp = c + (ptrdiff_t)p * FC_MR * ldc + (ptrdiff_t)q * FC_NR;
                const float* bb = bias ? bias + p * FC_MR : NULL;
                if (mr == FC_MR && nr == FC_NR) {
                    fc_ukernel(kc, ap, bq, cp, ldc, first, bb);
                } else {  /* edge block: through tmp, so nothing outside C is touched */
                    if (bb && mr < FC_MR) {
                        memset(bias_pad, 0, sizeof bias_pad);
                        memcpy(bias_pad, bb, mr * sizeof(float));
                        bb = bias_pad;
                    }
                    if (!first)
                        for (int i = 0; i < mr; i++) memcpy(tmp + i * FC_NR, cp + i * ldc, nr * sizeof(float));
                    fc_ukernel(kc, ap, bq, tmp, FC_NR, first, bb);
                    for (int i = 0; i < mr; i++) memcpy(cp + i * ldc, tmp + i * FC_NR, nr * sizeof(float));
                }
            }
        }
    }
}

#endif
