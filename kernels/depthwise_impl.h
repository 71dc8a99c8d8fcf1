/* depthwise_impl.h — depthwise convolution (one input and one output channel per group) on NCHW,
 * read in place: see depthwise_body.h for the design and kernels/depthwise.pyx for the measurements.
 *
 *   void fc_depthwise_f32(x, w, b, y, zrow, tapbuf, flat_off, flat_mask, NP, C, H, W, OH, OW, kh, kw, sh, sw,
 *                         ph, pw, dh, dw, nthreads)
 *   void fc_depthwise_f64(...)  the same in double
 *   size_t fc_depthwise_tap_bytes(OW, kw)   tapbuf bytes (the load masks of every column chunk)
 *
 * AVX-512 builds run the vector body (depthwise_body.h, included once per dtype); other builds a
 * scalar loop of the same contract (FC_DW_VECTOR tells which; `auto` then keeps depthwise layers
 * on the direct kernel, whose portable vector code is faster there).
 */
#ifndef FASTCONV_DEPTHWISE_IMPL_H
#define FASTCONV_DEPTHWISE_IMPL_H

#include <stddef.h>
#include <omp.h>

#define FC_COMMON_NAMES_ONLY /* FC_NAME: the bodies' per-dtype names */
#include "_common.h"
#undef FC_COMMON_NAMES_ONLY

#ifdef __AVX512F__
#include <immintrin.h>
#define FC_DW_VECTOR 1

/* float32: 16 lanes */
#define T float
#define SFX f32
#define VL 16
#define V __m512
#define VI __m512i
#define DM __mmask16
#define DMASK(lo, hi) ((hi) > (lo) ? (DM)((((unsigned)1 << (hi)) - 1) & ~(((unsigned)1 << (lo)) - 1)) : (DM)0)
#define DLOAD(m, p) _mm512_maskz_loadu_ps((m), (p))
#define DSTORE(p, m, v) _mm512_mask_storeu_ps((p), (m), (v))
#define DFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define DSET1(s) _mm512_set1_ps(s)
#define DPERM2(a, idx, b) _mm512_permutex2var_ps((a), (idx), (b))
#define DEVEN _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0)
#define DGIDX(s) _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(s))
#define DGATHER(m, idx, p) _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (m), (idx), (p), 4)
#include "depthwise_body.h"

/* float64: 8 lanes */
#define T double
#define SFX f64
#define VL 8
#define V __m512d
#define VI __m256i
#define DM __mmask8
#define DMASK(lo, hi) ((hi) > (lo) ? (DM)((((unsigned)1 << (hi)) - 1) & ~(((unsigned)1 << (lo)) - 1)) : (DM)0)
#define DLOAD(m, p) _mm512_maskz_loadu_pd((m), (p))
#define DSTORE(p, m, v) _mm512_mask_storeu_pd((p), (m), (v))
#define DFMA(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define DSET1(s) _mm512_set1_pd(s)
#define DPERM2(a, idx, b) _mm512_permutex2var_pd((a), (idx), (b))
#define DEVEN _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0)
#define DGIDX(s) _mm256_mullo_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0), _mm256_set1_epi32(s))
#define DGATHER(m, idx, p) _mm512_mask_i32gather_pd(_mm512_setzero_pd(), (m), (idx), (p), 8)
#include "depthwise_body.h"

static inline size_t fc_depthwise_tap_bytes(ptrdiff_t OW, int kw) {
    /* f32's chunks are the narrower (16 lanes), f64's entries the smaller */
    return (size_t)((OW + 7) / 8) * (size_t)kw * sizeof(fc_dw_tap_f32);
}

#else /* no AVX-512: a scalar loop of the same contract */
#define FC_DW_VECTOR 0
#define T float
#define SFX f32
#include "depthwise_scalar.h"
#undef T
#undef SFX
#define T double
#define SFX f64
#include "depthwise_scalar.h"
#undef T
#undef SFX

static inline size_t fc_depthwise_tap_bytes(ptrdiff_t OW, int kw) {
    (void)OW;
    (void)kw;
    return 0;
}
#endif

#endif
