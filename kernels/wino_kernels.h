/* wino_kernels.h — the fused Winograd pipeline (wino_impl.h) instantiated for float32 and float64:
 *   wino_task_f32(m, x, xs, H, W, cig, pt, pl, ntile, tw, t0, nt, U, ncp, cp0, cp1, bias, y, ys, cog,
 *                 OH, OW, V, M)
 *   wino_task_f64(...)   same, double
 * m is the output tile size (2 or 4); see wino_impl.h for the layouts and kernels/winograd.pyx for
 * the driver.
 */
#ifndef FASTCONV_WINO_KERNELS_H
#define FASTCONV_WINO_KERNELS_H

#include "microkernel.h"

#if defined(__AVX2__)
#include <immintrin.h>
/* d[(i*A + j)*8 + r] = xc[off[r] + i*W + j] for the 8 tiles of a group (all inside the image) */
#define WINO_GATHER_F32(d, xc, off, A, W)                                                      \
    do {                                                                                       \
        const __m256i vidx_ = _mm256_loadu_si256((const __m256i *)(off));                      \
        for (int i_ = 0; i_ < (A); i_++)                                                       \
            for (int j_ = 0; j_ < (A); j_++)                                                   \
                _mm256_storeu_ps((d) + (i_ * (A) + j_) * 8,                                     \
                                 _mm256_i32gather_ps((xc) + (long)i_ * (W) + j_, vidx_, 4));    \
    } while (0)
#endif

#define T float
#define SFX f32
#define MR FC_MR_F32
#define NR FC_NR_F32
#define UKR fc_ukr_f32
#if defined(WINO_GATHER_F32) && FC_MR_F32 == 8
#define WINO_GATHER WINO_GATHER_F32
#endif
#include "wino_impl.h"
#undef WINO_GATHER
#undef T
#undef SFX
#undef MR
#undef NR
#undef UKR

#define T double
#define SFX f64
#define MR FC_MR_F64
#define NR FC_NR_F64
#define UKR fc_ukr_f64
#include "wino_impl.h"
#undef T
#undef SFX
#undef MR
#undef NR
#undef UKR

#endif
