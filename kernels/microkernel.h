/* microkernel.h — register-blocked GEMM micro-kernels on packed panels (float32 and float64).
 *
 * API (all functions are static inline; include this header from any kernel):
 *
 *   FC_MR_F32, FC_NR_F32   rows and columns of the float32 micro-kernel tile (8 x 32)
 *   FC_MR_F64, FC_NR_F64   rows and columns of the float64 micro-kernel tile (8 x 16)
 *
 *   void fc_ukr_f32(long K, const float *A, long lda, const float *B, float *C, long ldc);
 *   void fc_ukr_f64(long K, const double *A, long lda, const double *B, double *C, long ldc);
 *
 *     C[r][c] = sum_k A[k*lda + r] * B[k*NR + c]     for r < MR, c < NR  (C is overwritten)
 *
 *   fc_ukr_pf_f32, fc_ukr_pf_f64: the same, also prefetching B FC_UKR_PF k-steps ahead — for the
 *     first call on a panel that comes from L3 or memory (Winograd's U: measured below)
 *
 *     A: panel of MR rows, k-major with stride lda >= MR between k steps (lda = MR for a packed
 *     [K][MR] panel; larger lets two panels interleave); B: packed panel of NR columns, k-major
 *     ([K][NR]); C: row-major with row stride ldc (elements). Pad the packed panels with zeros
 *     for row/column remainders: the kernel always writes a full MR x NR tile. No alignment
 *     is required (loads/stores are unaligned). K may be 0 (C is zeroed).
 *
 * Design: the C tile lives in registers for the whole K loop (MR x NR/VL accumulators: 16 of the
 * 32 zmm registers for float32), each k step loads NR/VL vectors of B and broadcasts MR scalars
 * of A — 2*MR FMAs per (2 + MR) loads. Written with GCC vector extensions, so the same source
 * compiles to AVX-512 (zmm) with -march=native on AVX-512 machines and to AVX2/SSE pairs
 * elsewhere; -ffp-contract=fast turns the a*b+c into FMAs. Measured on the Zen 4 build machine (1 core,
 * K=512, B panels cycling through L2): MR=6/8/12/14 run at 99/102/103/104 GFLOP/s, i.e. all at the
 * core's FMA peak (one 512-bit FMA per cycle, double-pumped); MR=8 is kept because it wastes the
 * least on row remainders (the small late layers have 4-49 Winograd tiles).
 * The hardware prefetchers alone left Winograd's first pass over each U panel waiting on L3:
 * with the prefetch (32 k-steps ahead; 8 was worse, 16 and 64 about the same) in the first call per
 * panel, 2 threads, interleaved medians of 15: resnet50.3x3_last 1.13-1.16x, vgg16.conv5_2 1.06x,
 * conv4_2 / conv3_2 / alexnet.conv3 1.02-1.03x, resnet50.3x3 (U in L2) 0.99-1.0x.
 */
#ifndef FASTCONV_MICROKERNEL_H
#define FASTCONV_MICROKERNEL_H

#include <string.h>

#define FC_MR_F32 8
#define FC_NR_F32 32
#define FC_MR_F64 8
#define FC_NR_F64 16
#define FC_UKR_PF 32 /* k-steps the _pf kernels prefetch B ahead (4 KiB of float32 panel) */

typedef float fc_v16f __attribute__((vector_size(64)));
typedef double fc_v8d __attribute__((vector_size(64)));

#define FC_DEFINE_UKR(NAME, T, VT, VL, MR, PF)                                                    \
    static inline void NAME(long K, const T *restrict A, long lda, const T *restrict B,       \
                            T *restrict C, long ldc)                                           \
    {                                                                                          \
        VT c0[MR], c1[MR];                                                                     \
        for (int r = 0; r < MR; r++) { c0[r] = (VT){0}; c1[r] = (VT){0}; }                     \
        for (long k = 0; k < K; k++) {                                                         \
            VT b0, b1;                                                                         \
            memcpy(&b0, B + k * 2 * VL, sizeof b0);                                            \
            memcpy(&b1, B + k * 2 * VL + VL, sizeof b1);                                       \
            const T *a = A + k * lda;                                                          \
            if (PF) { /* B's two 64-byte lines PF k-steps ahead */                             \
                __builtin_prefetch(B + (k + PF) * 2 * VL, 0, 3);                               \
                __builtin_prefetch(B + (k + PF) * 2 * VL + VL, 0, 3);                          \
            }                                                                                  \
            _Pragma("GCC unroll 16")                                                           \
            for (int r = 0; r < MR; r++) {                                                     \
                VT av = (VT){0} + a[r];                                                        \
                c0[r] += av * b0;                                                              \
                c1[r] += av * b1;                                                              \
            }                                                                                  \
        }                                                                                      \
        for (int r = 0; r < MR; r++) {                                                         \
            memcpy(C + r * ldc, &c0[r], sizeof c0[r]);                                         \
            memcpy(C + r * ldc + VL, &c1[r], sizeof c1[r]);                                    \
        }                                                                                      \
    }

FC_DEFINE_UKR(fc_ukr_f32, float, fc_v16f, 16, FC_MR_F32, 0)
FC_DEFINE_UKR(fc_ukr_f64, double, fc_v8d, 8, FC_MR_F64, 0)
FC_DEFINE_UKR(fc_ukr_pf_f32, float, fc_v16f, 16, FC_MR_F32, FC_UKR_PF)
FC_DEFINE_UKR(fc_ukr_pf_f64, double, fc_v8d, 8, FC_MR_F64, FC_UKR_PF)

#endif
