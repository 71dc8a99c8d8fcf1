/* gemm_ukernel.h — the register-blocked GEMM micro-kernel on packed panels (float32 and float64),
 * shared by im2col, Winograd and pointwise; its body is gemm_ukr_impl.h, instantiated here per
 * dtype and tile:
 *
 *   fc_ukr_f32_8x16, fc_ukr_f32_8x32, fc_ukr_f32_8x48    MR = 8 rows x 1, 2, 3 vectors of 16 floats
 *   fc_ukr_f64_8x8,  fc_ukr_f64_8x16, fc_ukr_f64_8x24    MR = 8 rows x 1, 2, 3 vectors of 8 doubles
 *   fc_ukr_f32_1x32, fc_ukr_f32_4x32, fc_ukr_f64_1x16, fc_ukr_f64_4x16   1 or 4 rows x 2 vectors
 *                                                         (pointwise's few-row GEMMs, e.g. GEMV)
 *
 *   (K, A, lda, B, ldb, C, ldc, bias, mode, mr, nr, pf): see gemm_ukr_impl.h.
 *
 * Written with GCC vector extensions (64-byte vectors), so the same source compiles to AVX-512
 * (zmm) with -march=native on AVX-512 machines and to AVX2/SSE pairs elsewhere; -ffp-contract=fast
 * turns a*b+c into FMAs. FC_WIDE_VECTORS says whether the 64-byte vectors are single registers
 * (32 of them): only then do the wide tiles (8x48: 24 accumulators) fit the register file, so
 * the kernels that need them fall back to BLAS elsewhere.
 *
 * Measured on the Zen 4 build machine (1 core, K=512, B panels cycling through L2): MR=6/8/12/14
 * x 32 floats run at 99/102/103/104 GFLOP/s, i.e. all at the core's FMA peak (one 512-bit FMA per
 * cycle, double-pumped); MR=8 wastes the least on row remainders. The 8x48 tile runs im2col's
 * tiles at 100-115 GFLOP/s against OpenBLAS's 72-94 on the same shapes.
 *
 * Also here: the float32 driver of im2col's packed GEMM (fc_pack_w, fc_gemm_packed).
 */
#ifndef FASTCONV_GEMM_UKERNEL_H
#define FASTCONV_GEMM_UKERNEL_H

#include <stddef.h>
#include <string.h>
#define FC_COMMON_NAMES_ONLY /* FC_NAME / FC_JOIN: the bodies' per-dtype names */
#include "_common.h"
#undef FC_COMMON_NAMES_ONLY

#define FC_UKR_SET 0  /* C = A B */
#define FC_UKR_BIAS 1 /* C = bias + A B */
#define FC_UKR_ACC 2  /* C += A B */

#ifdef __AVX512F__
#define FC_WIDE_VECTORS 1
#else
#define FC_WIDE_VECTORS 0
#endif

typedef float fc_v16f __attribute__((vector_size(64)));
typedef double fc_v8d __attribute__((vector_size(64)));
typedef float fc_v16f_u __attribute__((vector_size(64), aligned(4), may_alias));
typedef double fc_v8d_u __attribute__((vector_size(64), aligned(8), may_alias));

#define T float
#define VT fc_v16f
#define VTU fc_v16f_u
#define VL 16
#define MR 8
#define NV 1
#define SFX f32_8x16
#include "gemm_ukr_impl.h"
#undef NV
#undef SFX
#define NV 2
#define SFX f32_8x32
#include "gemm_ukr_impl.h"
#undef NV
#undef SFX
#define NV 3
#define SFX f32_8x48
#include "gemm_ukr_impl.h"
#undef NV
#undef SFX
#undef MR
#define NV 2
#define MR 1
#define SFX f32_1x32
#include "gemm_ukr_impl.h"
#undef MR
#undef SFX
#define MR 4
#define SFX f32_4x32
#include "gemm_ukr_impl.h"
#undef MR
#undef SFX
#undef NV
#define MR 8
#undef T
#undef VT
#undef VTU
#undef VL

#define T double
#define VT fc_v8d
#define VTU fc_v8d_u
#define VL 8
#define NV 1
#define SFX f64_8x8
#include "gemm_ukr_impl.h"
#undef NV
#undef SFX
#define NV 2
#define SFX f64_8x16
#include "gemm_ukr_impl.h"
#undef NV
#undef SFX
#define NV 3
#define SFX f64_8x24
#include "gemm_ukr_impl.h"
#undef NV
#undef SFX
#undef MR
#define NV 2
#define MR 1
#define SFX f64_1x16
#include "gemm_ukr_impl.h"
#undef MR
#undef SFX
#define MR 4
#define SFX f64_4x16
#include "gemm_ukr_impl.h"
#undef MR
#undef SFX
#undef NV
#undef T
#undef VT
#undef VTU
#undef VL

/* ---- im2col's float32 GEMM: C[M x N] (row stride ldc) = Wp @ Bp + bias, where
 *   Wp = W (M x K, row-major) packed once in prepare as [ceil(M/MR)][K][MR] (rows zero-padded),
 *   Bp = the unfolded tile packed as [ceil(N/NR)][K][NR] (columns zero-padded; im2col writes it
 *        in this layout directly, so packing costs nothing extra).
 * Loop order: K in blocks of KC (a KC x NR slice of Bp, 36 KiB, stays near L1 while every MR-row
 * panel of W passes over it); MR x NR = 8 x 48 accumulators = 24 zmm registers. The bias is the
 * initial value of the accumulators on the first K block, so it costs no extra pass. A partial
 * last panel runs the 8x16 or 8x32 tile, so it costs only the vectors it uses. */
#define FC_MR 8
#define FC_NR 48
#ifndef FC_KC
#define FC_KC 192 /* most K per block; K is split into equal blocks of at most this */
#endif

/* Wp[(i/MR)*K*MR + k*MR + i%MR] = w[i*K + k]; zero rows past M. */
static inline void fc_pack_w(const float *w, int M, int K, float *wp)
{
    int np = (M + FC_MR - 1) / FC_MR;
    for (int p = 0; p < np; p++)
        for (int k = 0; k < K; k++)
            for (int r = 0; r < FC_MR; r++) {
                int i = p * FC_MR + r;
                wp[((size_t)p * K + k) * FC_MR + r] = i < M ? w[(size_t)i * K + k] : 0.0f;
            }
}

static inline size_t fc_packed_w_floats(int M, int K) { return (size_t)((M + FC_MR - 1) / FC_MR) * K * FC_MR; }

static inline size_t fc_packed_b_floats(int N, int K) { return (size_t)((N + FC_NR - 1) / FC_NR) * K * FC_NR; }

/* One tile of fc_gemm_packed, the micro-kernel picked by nr: out of line, so that the driver's
 * loops keep their registers (inlined into them, the three kernels' addresses spilled). */
static __attribute__((noinline)) void fc_gemm_tile(int kc, const float *ap, const float *bq, float *cp, ptrdiff_t ldc,
                                                   const float *bb, int mode, int mr, int nr)
{
    if (nr > 32)
        fc_ukr_f32_8x48(kc, ap, FC_MR, bq, FC_NR, cp, ldc, bb, mode, mr, nr, 0);
    else if (nr > 16)
        fc_ukr_f32_8x32(kc, ap, FC_MR, bq, FC_NR, cp, ldc, bb, mode, mr, nr, 0);
    else
        fc_ukr_f32_8x16(kc, ap, FC_MR, bq, FC_NR, cp, ldc, bb, mode, mr, nr, 0);
}

/* C[M x N] (row stride ldc) = Wp @ Bp (+ bias[M], may be NULL). */
static inline void fc_gemm_packed(int M, int N, int K, const float *wp, const float *bp, const float *bias,
                                  float *c, ptrdiff_t ldc)
{
    int mp = (M + FC_MR - 1) / FC_MR, np = (N + FC_NR - 1) / FC_NR;
    float bias_pad[FC_MR];
    int nkb = (K + FC_KC - 1) / FC_KC, kstep = (K + nkb - 1) / nkb;
    for (int k0 = 0; k0 < K; k0 += kstep) {
        int kc = K - k0 < kstep ? K - k0 : kstep;
        for (int q = 0; q < np; q++) {
            const float *bq = bp + ((size_t)q * K + k0) * FC_NR;
            int nr = N - q * FC_NR < FC_NR ? N - q * FC_NR : FC_NR;
            for (int p = 0; p < mp; p++) {
                const float *ap = wp + ((size_t)p * K + k0) * FC_MR;
                int mr = M - p * FC_MR < FC_MR ? M - p * FC_MR : FC_MR;
                const float *bb = bias ? bias + p * FC_MR : NULL;
                if (bb && mr < FC_MR) { /* never read bias past M */
                    memset(bias_pad, 0, sizeof bias_pad);
                    memcpy(bias_pad, bb, mr * sizeof(float));
                    bb = bias_pad;
                }
                const int mode = k0 > 0 ? FC_UKR_ACC : bb ? FC_UKR_BIAS : FC_UKR_SET;
                float *cp = c + (ptrdiff_t)p * FC_MR * ldc + (ptrdiff_t)q * FC_NR;
                fc_gemm_tile(kc, ap, bq, cp, ldc, bb, mode, mr, nr);
            }
        }
    }
}

#endif
