/* gemm_pointwise.h — the packed GEMM of the pointwise (1x1) kernel on gemm_ukernel.h's micro-kernel,
 * for float32 (8 x 48 tiles) and float64 (8 x 24); the body is gemm_pw_impl.h:
 *   fc_pw_pack_w_f32(w, M, K, wp) / _f64      W (M x K) into [ceil(M/8)][K][8] panels (prepare)
 *   fc_pw_task_f32(...) / _f64                one task: rows [m0, m1) x columns [j0, j1)
 *   fc_pwt_pack_w_f32(w, M, K, wt) / _f64     W^T into [ceil(M/NRT)][K][NRT] panels (prepare)
 *   fc_pwt_thread_f32(...) / _f64             one thread's share of the transposed GEMM
 *   FC_PW_MR, FC_PW_NR_F32, FC_PW_NR_F64      the tile; FC_PWT_NR_F32, FC_PWT_NR_F64 the
 *                                             transposed GEMM's channel panel
 */
#ifndef FASTCONV_GEMM_POINTWISE_H
#define FASTCONV_GEMM_POINTWISE_H

#include "gemm_ukernel.h"

#define FC_PW_MR 8
#define FC_PW_NR_F32 48
#define FC_PW_NR_F64 24
#define FC_PWT_NR_F32 32
#define FC_PWT_NR_F64 16
#define FC_PWT_KC 256 /* K per block of the transposed GEMM */

#define T float
#define SFX f32
#define NR FC_PW_NR_F32
#define UKR1 fc_ukr_f32_8x16
#define UKR2 fc_ukr_f32_8x32
#define UKR3 fc_ukr_f32_8x48
#define NRT 32
#define UKT1 fc_ukr_f32_1x32
#define UKT4 fc_ukr_f32_4x32
#define UKT8 fc_ukr_f32_8x32
#include "gemm_pw_impl.h"

#define T double
#define SFX f64
#define NR FC_PW_NR_F64
#define UKR1 fc_ukr_f64_8x8
#define UKR2 fc_ukr_f64_8x16
#define UKR3 fc_ukr_f64_8x24
#define NRT 16
#define UKT1 fc_ukr_f64_1x16
#define UKT4 fc_ukr_f64_4x16
#define UKT8 fc_ukr_f64_8x16
#include "gemm_pw_impl.h"

#endif
