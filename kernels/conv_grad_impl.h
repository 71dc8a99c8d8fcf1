/* conv_grad_impl.h — the C cores of kernels/conv_grad.pyx (conv2d's input and weight gradients).
 *
 * Everything here works on buffers the .pyx carves out of the caller's workspace, 64-byte aligned,
 * with rows padded with zeros to whole vectors, so the loops have no tails and no masks. Written
 * with GCC vector extensions (like the GEMM micro-kernel, gemm_ukernel.h): zmm registers on AVX-512 builds, AVX2/SSE pairs
 * elsewhere; -ffp-contract=fast makes the a*b+c FMAs. Two element types: the kernels are written
 * once in conv_grad_body.h, included below per type with T, VT (vector), VL (lanes) and SFX
 * defined: _f (float, 16 lanes) and _d (double, 8 lanes).
 *
 * Weight gradient, "dot" micro-kernel (fcg_dot_<MP>x<MR>_<SFX>):
 *     c[p*ldc + r] += Σ_t dy[p*ldy + t] · xs[r][t]       p < MP, r < MR, t < nv·VL
 * i.e. MP output channels × MR unfolded input rows, reduced over a chunk of output pixels that
 * lies along the vector lanes. The MP·MR accumulators are vectors (4 × 6 = 24 zmm); each step of
 * VL pixels loads MP + MR vectors for MP·MR FMAs. At the end of the chunk each accumulator is
 * summed across its lanes in a fixed tree and added to c in double: the partial sums of a chunk
 * are float for float32, the running total over chunks is double, so the error does not grow with
 * the batch. The order of every sum is fixed by the chunking alone, never by the threads.
 *
 * "bcast" micro-kernel (fcg_bcast_<SFX>), the GEMM
 *     c[r*ldc + j] = Σ_k a[k*8 + r] · b[k*ldb + j]       r < 8, j < 3·VL, k < K
 * 8 × 3 vectors of accumulators over the whole K (the layout of the forward's GEMM kernels); a is a
 * packed [K][8] panel, b rows of 3 vectors (pitch ldb, no alignment needed), c written (unaligned)
 * once. Used by the input gradient (a = Wᵀ panels, b = grad_output rows; or a = grad_outputᵀ panels,
 * b = W column blocks) and the small-map weight gradient (a = grad_outputᵀ, b = unfolded input).
 */
#ifndef FASTCONV_CONV_GRAD_IMPL_H
#define FASTCONV_CONV_GRAD_IMPL_H

#include <stddef.h>
#include <string.h>
#define FC_COMMON_NAMES_ONLY /* FC_NAME / FC_JOIN: the bodies' per-dtype names */
#include "_common.h"
#undef FC_COMMON_NAMES_ONLY

typedef float fcg_vf __attribute__((vector_size(64)));
typedef double fcg_vd __attribute__((vector_size(64)));
#define FCG_VL_F 16
#define FCG_VL_D 8
#define FCG_MP 4   /* output channels per dot block */
#define FCG_MR 6   /* unfolded rows per dot block */
#define FCG_BR 8   /* rows of the bcast kernel */
#define FCG_BV 3   /* vectors of columns of the bcast kernel */

static inline double fcg_hsum_f(fcg_vf v) {
    /* fixed tree: 16 -> 8 -> 4 -> 2 -> 1 */
    float s8[8], s4[4], s2[2];
    for (int i = 0; i < 8; i++) s8[i] = v[i] + v[i + 8];
    for (int i = 0; i < 4; i++) s4[i] = s8[i] + s8[i + 4];
    for (int i = 0; i < 2; i++) s2[i] = s4[i] + s4[i + 2];
    return (double)(s2[0] + s2[1]);
}

static inline double fcg_hsum_d(fcg_vd v) {
    double s4[4], s2[2];
    for (int i = 0; i < 4; i++) s4[i] = v[i] + v[i + 4];
    for (int i = 0; i < 2; i++) s2[i] = s4[i] + s4[i + 2];
    return s2[0] + s2[1];
}

/* Lane sums of 24 accumulators in a fixed tree (each fold adds lane i to lane i + half of a
 * shrinking group, and interleaves two accumulators' partials into one vector, so the 24 sums cost
 * 23 folds instead of 24 separate reductions): out[a] = Σ lanes of acc[a]. */
#define FCG_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
static inline fcg_vf fcg_fold1_f(fcg_vf a, fcg_vf b) {  /* 16 partials of 1 → 8 partials of 2 */
    return FCG_SHUF(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           FCG_SHUF(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
static inline fcg_vf fcg_fold2_f(fcg_vf a, fcg_vf b) {  /* 8 partials of 2 → 4 partials of 4 */
    return FCG_SHUF(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           FCG_SHUF(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
}
static inline fcg_vf fcg_fold3_f(fcg_vf a, fcg_vf b) {  /* 4 partials of 4 → 2 partials of 8 */
    return FCG_SHUF(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           FCG_SHUF(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
}
static inline fcg_vf fcg_fold4_f(fcg_vf a, fcg_vf b) {  /* 2 partials of 8 → 16 sums */
    return FCG_SHUF(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           FCG_SHUF(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
static inline fcg_vf fcg_tree8_f(const fcg_vf *a) {  /* 8 accumulators → 2 partials each */
    return fcg_fold3_f(fcg_fold2_f(fcg_fold1_f(a[0], a[1]), fcg_fold1_f(a[2], a[3])),
                       fcg_fold2_f(fcg_fold1_f(a[4], a[5]), fcg_fold1_f(a[6], a[7])));
}
static inline void fcg_reduce24_f(const fcg_vf *a, double *out) {
    fcg_vf s16 = fcg_fold4_f(fcg_tree8_f(a), fcg_tree8_f(a + 8));
    fcg_vf s8 = fcg_fold4_f(fcg_tree8_f(a + 16), (fcg_vf){0});
    for (int i = 0; i < 16; i++) out[i] = (double)s16[i];
    for (int i = 0; i < 8; i++) out[16 + i] = (double)s8[i];
}
static inline fcg_vd fcg_fold1_d(fcg_vd a, fcg_vd b) {
    return FCG_SHUF(a, b, 0, 1, 2, 3, 8, 9, 10, 11) + FCG_SHUF(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
}
static inline fcg_vd fcg_fold2_d(fcg_vd a, fcg_vd b) {
    return FCG_SHUF(a, b, 0, 1, 4, 5, 8, 9, 12, 13) + FCG_SHUF(a, b, 2, 3, 6, 7, 10, 11, 14, 15);
}
static inline fcg_vd fcg_fold3_d(fcg_vd a, fcg_vd b) {
    return FCG_SHUF(a, b, 0, 2, 4, 6, 8, 10, 12, 14) + FCG_SHUF(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
}
static inline void fcg_reduce24_d(const fcg_vd *a, double *out) {
    for (int g = 0; g < 3; g++) {
        const fcg_vd *b = a + 8 * g;
        fcg_vd s = fcg_fold3_d(fcg_fold2_d(fcg_fold1_d(b[0], b[1]), fcg_fold1_d(b[2], b[3])),
                               fcg_fold2_d(fcg_fold1_d(b[4], b[5]), fcg_fold1_d(b[6], b[7])));
        for (int i = 0; i < 8; i++) out[8 * g + i] = s[i];
    }
}

/* Keeps v in a register: without it gcc folds the load of an input row into each of the MP FMAs
 * that use it (MP loads instead of one, most of them splitting cache lines, as the rows start at
 * any tap offset: the 4 x 6 kernel ran at ~55% of the FMA rate on 56x56 maps). */
#define FCG_IN_REG(v) __asm__("" : "+v"(v))

/* Vector loads that need no alignment (dy may be read in place from a numpy array). */
#define FCG_LOAD(VT, p) ({ VT v_; memcpy(&v_, (p), sizeof v_); v_; })

/* The kernels themselves, once per element type (conv_grad_body.h). */

#define T float
#define VT fcg_vf
#define VL FCG_VL_F
#define SFX f
#include "conv_grad_body.h"
#undef T
#undef VT
#undef VL
#undef SFX

#define T double
#define VT fcg_vd
#define VL FCG_VL_D
#define SFX d
#include "conv_grad_body.h"
#undef T
#undef VT
#undef VL
#undef SFX


#endif
