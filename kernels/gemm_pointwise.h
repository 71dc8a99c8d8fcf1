/* gemm_pointwise.h — the packed GEMM of the pointwise (1x1) kernel on gemm_ukernel.h's micro-kernel,
 * for float32 (8 x 48 tiles) and float64 (8 x 24); the body is gemm_pw_impl.h:
 *   fc_pw_pack_w_f32(w, M, K, wp) / _f64      W (M x K) into [ceil(M/8)][K][8] panels (prepare)
 *   fc_pw_task_f32(...) / _f64                one task: rows [m0, m1) x columns [j0, j1)
 *   FC_PW_MR, FC_PW_NR_F32, FC_PW_NR_F64      the tile
 */
#ifndef FASTCONV_GEMM_POINTWISE_H
#define FASTCONV_GEMM_POINTWISE_H

#include "gemm_ukernel.h"

#define FC_PW_MR 8
#define FC_PW_NR_F32 48
#define FC_PW_NR_F64 24

#define T float
#define SFX f32
#define NR FC_PW_NR_F32
#define UKR1 fc_ukr_f32_8x16
#define UKR2 fc_ukr_f32_8x32
#define UKR3 fc_ukr_f32_8x48
#include "gemm_pw_impl.h"
#undef T
#undef SFX
#undef NR
#undef UKR1
#undef UKR2
#undef UKR3

#define T double
#define SFX f64
#define NR FC_PW_NR_F64
#define UKR1 fc_ukr_f64_8x8
#define UKR2 fc_ukr_f64_8x16
#define UKR3 fc_ukr_f64_8x24
#include "gemm_pw_impl.h"
#undef T
#undef SFX
#undef NR
#undef UKR1
#undef UKR2
#undef UKR3

#endif
