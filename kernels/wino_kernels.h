/* wino_kernels.h — the fused Winograd pipeline (wino_impl.h) instantiated for float32 and float64:
 *   wino_task_f32(m, x, H, W, cig, pt, pl, tw, t0, nt, U, ncp, cp0, cp1, bias, y, cog, OH, OW, V, M)
 *   wino_task_f64(...)   same, double
 * m is the output tile size (2 or 4); see wino_impl.h for the layouts and kernels/winograd.pyx for
 * the driver.
 */
#ifndef FASTCONV_WINO_KERNELS_H
#define FASTCONV_WINO_KERNELS_H

#include "microkernel.h"

#define T float
#define SFX f32
#define MR FC_MR_F32
#define NR FC_NR_F32
#define UKR fc_ukr_f32
#include "wino_impl.h"
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
