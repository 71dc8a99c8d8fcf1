/* wino_kernels.h — the fused Winograd pipeline (wino_impl.h) instantiated for float32 and float64:
 *   wino_task_f32(m, r, x, xs, H, W, cig, pt, pl, ntile, tw, t0, nt, U, ncp, cp0, cp1, bias, y, ys,
 *                 cog, OH, OW, V, M, ci0, ci1, phases)
 *   wino_task_f64(...)   same, double
 *   wino_u_panel_f32(A, r, w, G, cig, nv, u, point) / _f64: the weight transform U = G w G^T of one
 *                 panel of output channels (prepare)
 * m is the output tile size and r the kernel size: F(2x2,3x3), F(4x4,3x3) or F(2x2,5x5); see wino_impl.h for the layouts and kernels/winograd.pyx for
 * the driver.
 */
#ifndef FASTCONV_WINO_KERNELS_H
#define FASTCONV_WINO_KERNELS_H

#include "gemm_ukernel.h"

/* Winograd's GEMM tile (gemm_ukernel.h): 8 tiles x 32 float32 / 16 float64 output channels */
#define FC_MR_F32 8
#define FC_NR_F32 32
#define FC_MR_F64 8
#define FC_NR_F64 16
#define FC_UKR_PF 32 /* k-steps the _pf kernels prefetch B ahead (4 KiB of float32 panel) */

/* C (MR x NR, row stride ldc) = A (MR rows lda apart per k step) @ B (packed [K][NR]). The _pf
 * variants also prefetch B FC_UKR_PF k-steps ahead: for the first call on a panel that comes from
 * L3 or memory. The hardware prefetchers alone left Winograd's first pass over each U panel
 * waiting on L3: with the prefetch (32 k-steps ahead; 8 was worse, 16 and 64 about the same) in
 * the first call per panel, 2 threads, interleaved medians of 15: resnet50.3x3_last 1.13-1.16x,
 * vgg16.conv5_2 1.06x, conv4_2 / conv3_2 / alexnet.conv3 1.02-1.03x, resnet50.3x3 (U in L2)
 * 0.99-1.0x. */
static inline void wino_ukr_f32(long K, const float *A, long lda, const float *B, float *C, long ldc)
{
    fc_ukr_f32_8x32(K, A, lda, B, FC_NR_F32, C, ldc, NULL, FC_UKR_SET, FC_MR_F32, FC_NR_F32, 0);
}
static inline void wino_ukr_pf_f32(long K, const float *A, long lda, const float *B, float *C, long ldc)
{
    fc_ukr_f32_8x32(K, A, lda, B, FC_NR_F32, C, ldc, NULL, FC_UKR_SET, FC_MR_F32, FC_NR_F32, FC_UKR_PF);
}
static inline void wino_ukr_f64(long K, const double *A, long lda, const double *B, double *C, long ldc)
{
    fc_ukr_f64_8x16(K, A, lda, B, FC_NR_F64, C, ldc, NULL, FC_UKR_SET, FC_MR_F64, FC_NR_F64, 0);
}
static inline void wino_ukr_pf_f64(long K, const double *A, long lda, const double *B, double *C, long ldc)
{
    fc_ukr_f64_8x16(K, A, lda, B, FC_NR_F64, C, ldc, NULL, FC_UKR_SET, FC_MR_F64, FC_NR_F64, FC_UKR_PF);
}

#if defined(__AVX2__)
#include <immintrin.h>
/* d[(i*A + j)*16 + r] = xc[off[r] + i*W + j] for the 16 tiles of a lane group (all inside) */
#if defined(__AVX512F__)
#define WINO_GATHER_F32(d, xc, off, A, W)                                                      \
    do {                                                                                       \
        const __m512i vidx_ = _mm512_loadu_si512((const void *)(off));                         \
        for (int i_ = 0; i_ < (A); i_++)                                                       \
            for (int j_ = 0; j_ < (A); j_++)                                                   \
                _mm512_storeu_ps((d) + (i_ * (A) + j_) * 16,                                    \
                                 _mm512_i32gather_ps(vidx_, (xc) + (long)i_ * (W) + j_, 4));    \
    } while (0)
#else
#define WINO_GATHER_F32(d, xc, off, A, W)                                                      \
    do {                                                                                       \
        const __m256i lo_ = _mm256_loadu_si256((const __m256i *)(off));                        \
        const __m256i hi_ = _mm256_loadu_si256((const __m256i *)(off) + 1);                    \
        for (int i_ = 0; i_ < (A); i_++)                                                       \
            for (int j_ = 0; j_ < (A); j_++) {                                                 \
                const float *b_ = (xc) + (long)i_ * (W) + j_;                                  \
                _mm256_storeu_ps((d) + (i_ * (A) + j_) * 16, _mm256_i32gather_ps(b_, lo_, 4)); \
                _mm256_storeu_ps((d) + (i_ * (A) + j_) * 16 + 8, _mm256_i32gather_ps(b_, hi_, 4)); \
            }                                                                                  \
    } while (0)
#endif
#endif

#if defined(__AVX512F__) && defined(__AVX512VL__)
/* 6x6 patches (F(4x4,3x3), F(2x2,5x5)) of 16 tiles: d[(i*6 + j)*16 + r] = rp[r][i*rs[r] + j], i, j < 6 (rp[r] points at
 * the tile's corner in the image, rs[r] = W, or at a zero-padded copy for tiles on the border).
 * Each patch row is one masked 6-float load per tile, then two 8x8 transposes: 2.5x faster than
 * 36 hardware gathers, which cost ~1.3 cycles per element on Zen 4 (measured). */
static inline void wino_load6_f32(float *d, const float *const *rp, const long *rs)
{
    for (int i = 0; i < 6; i++)
        for (int h = 0; h < 2; h++) {
            __m256 r[8], t[8];
            for (int q = 0; q < 8; q++)
                r[q] = _mm256_maskz_loadu_ps(0x3f, rp[h * 8 + q] + i * rs[h * 8 + q]);
            for (int q = 0; q < 8; q += 2) {
                t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
                t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
            }
            for (int q = 0; q < 8; q += 4) {
                r[q] = _mm256_shuffle_ps(t[q], t[q + 2], 0x44);
                r[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], 0xEE);
                r[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0x44);
                r[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0xEE);
            }
            for (int q = 0; q < 4; q++) {
                t[q] = _mm256_permute2f128_ps(r[q], r[q + 4], 0x20);     /* element q of rows 0..7 */
                t[q + 4] = _mm256_permute2f128_ps(r[q], r[q + 4], 0x31); /* element q + 4 */
            }
            for (int j = 0; j < 6; j++) _mm256_storeu_ps(d + (i * 6 + j) * 16 + h * 8, t[j]);
        }
}
#define WINO_LOAD6 wino_load6_f32
#endif

#if defined(__AVX512F__)
/* Y: 16 pixels (4x4 tile, row-major) x 16 output channels -> out[c][i][j] + bias[c] for c < 16,
 * i < rows, j < cols: an in-register 16x16 transpose turns the 256 scalar stores of the plain
 * path into 64 short vector stores (the output transform's stores were ~2/3 of its time). */
static inline void wino_store16_f32(const float *Y, const float *bias, float *yp, long OHW, long OW,
                                    int rows, int cols)
{
    __m512 r[16], t[16];
    for (int p = 0; p < 16; p++) r[p] = _mm512_loadu_ps(Y + p * 16);
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; k++) {
        __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]),
                c = _mm512_castps_pd(t[4 * k + 2]), d = _mm512_castps_pd(t[4 * k + 3]);
        r[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int k = 0; k < 2; k++)
        for (int c = 0; c < 4; c++) {
            t[8 * k + c] = _mm512_shuffle_f32x4(r[8 * k + c], r[8 * k + 4 + c], 0x88);
            t[8 * k + 4 + c] = _mm512_shuffle_f32x4(r[8 * k + c], r[8 * k + 4 + c], 0xdd);
        }
    for (int c = 0; c < 8; c++) {
        r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xdd);
    }
    for (int c = 0; c < 16; c++) { /* r[c]: channel c's 4x4 tile */
        __m512 v = _mm512_add_ps(r[c], _mm512_set1_ps(bias[c]));
        float *o = yp + c * OHW;
        if (rows == 4 && cols == 4) {
            _mm_storeu_ps(o, _mm512_extractf32x4_ps(v, 0));
            _mm_storeu_ps(o + OW, _mm512_extractf32x4_ps(v, 1));
            _mm_storeu_ps(o + 2 * OW, _mm512_extractf32x4_ps(v, 2));
            _mm_storeu_ps(o + 3 * OW, _mm512_extractf32x4_ps(v, 3));
        } else {
            float tile[16];
            _mm512_storeu_ps(tile, v);
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < cols; j++) o[i * OW + j] = tile[i * 4 + j];
        }
    }
}
#endif

#define T float
#define SFX f32
#define MR FC_MR_F32
#define NR FC_NR_F32
#define UKR wino_ukr_f32
#define UKR_PF wino_ukr_pf_f32
#if defined(WINO_GATHER_F32) && FC_MR_F32 == 8
#define WINO_GATHER WINO_GATHER_F32
#endif
#if defined(__AVX512F__)
#define WINO_STORE16 wino_store16_f32
#endif
#include "wino_impl.h"
#undef WINO_GATHER
#undef WINO_STORE16
#undef WINO_LOAD6
#undef T
#undef SFX
#undef MR
#undef NR
#undef UKR
#undef UKR_PF

#define T double
#define SFX f64
#define MR FC_MR_F64
#define NR FC_NR_F64
#define UKR wino_ukr_f64
#define UKR_PF wino_ukr_pf_f64
#include "wino_impl.h"
#undef T
#undef SFX
#undef MR
#undef NR
#undef UKR
#undef UKR_PF

#endif
