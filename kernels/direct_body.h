/* direct_body.h — the direct convolution kernels of direct_impl.h (which documents them),
 * included there once per element type with T and SFX defined; names are FC_NAME(name), i.e.
 * name_SFX. Not a standalone header. */

typedef T FC_NAME(fc_vec) __attribute__((vector_size(FC_VBYTES)));

/* the micro-kernels for CB = 1..8 output channels, NV vectors per chunk (CB * NV accumulators:
 * at most 16 of the 32 vector registers, the rest for the loaded inputs and the weights) */
#define CB 1
#define NV 4
#include "direct_mk.h"
#undef CB
#undef NV
#define CB 2
#define NV 4
#include "direct_mk.h"
#undef CB
#undef NV
#define CB 3
#define NV 4
#include "direct_mk.h"
#undef CB
#undef NV
#define CB 4
#define NV 3
#include "direct_mk.h"
#undef CB
#undef NV
#define CB 5
#define NV 3
#include "direct_mk.h"
#undef CB
#undef NV
#define CB 6
#define NV 2
#include "direct_mk.h"
#undef CB
#undef NV
#define CB 7
#define NV 2
#include "direct_mk.h"
#undef CB
#undef NV
#define CB 8
#define NV 2
#include "direct_mk.h"
#undef CB
#undef NV

/* Pack channel plane x (H x W) into the phase planes the taps use: row phases aph[0..na),
 * column phases bph[0..nb) (at most min(s, k) each, so a huge stride packs only kh*kw planes);
 * dst: [na][nb][Hq][Wq]. */
FC_NO_LIBCALLS static void FC_NAME(fc_direct_pack)(const T *restrict x, T *restrict dst, ptrdiff_t H, ptrdiff_t W,
                                                   ptrdiff_t Hq, ptrdiff_t Wq, int sh, int sw, int pt, int pl,
                                                   const ptrdiff_t *restrict aph, int na,
                                                   const ptrdiff_t *restrict bph, int nb) {
    for (int ia = 0; ia < na; ia++)
        for (int ib = 0; ib < nb; ib++) {
            const ptrdiff_t a = aph[ia], b = bph[ib];
            T *restrict d = dst + ((ptrdiff_t)ia * nb + ib) * Hq * Wq;
            /* columns c with 0 <= c*sw + b - pl < W */
            ptrdiff_t c0 = 0, c1;
            while (c0 < Wq && c0 * (ptrdiff_t)sw + b - pl < 0) c0++;
            c1 = c0;
            while (c1 < Wq && c1 * (ptrdiff_t)sw + b - pl < W) c1++;
            for (ptrdiff_t r = 0; r < Hq; r++) {
                T *restrict dr = d + r * Wq;
                ptrdiff_t sr = r * (ptrdiff_t)sh + a - pt;
                if (sr < 0 || sr >= H) {
                    for (ptrdiff_t c = 0; c < Wq; c++) dr[c] = 0;
                    continue;
                }
                const T *restrict xr = x + sr * W + b - pl;
                for (ptrdiff_t c = 0; c < c0; c++) dr[c] = 0;
                if (sw == 1) { /* inline vector copy: a memcpy call per short row cost 20% */
                    typedef T vT __attribute__((vector_size(FC_VBYTES)));
                    const ptrdiff_t VL = FC_VBYTES / sizeof(T);
                    ptrdiff_t c = c0;
                    for (; c + VL <= c1; c += VL) {
                        vT v;
                        __builtin_memcpy(&v, xr + c, sizeof v);
                        __builtin_memcpy(dr + c, &v, sizeof v);
                    }
                    if (c < c1 && c1 - c0 >= VL) { /* the rest as one overlapping vector */
                        vT v;
                        __builtin_memcpy(&v, xr + c1 - VL, sizeof v);
                        __builtin_memcpy(dr + c1 - VL, &v, sizeof v);
                    } else
                        for (; c < c1; c++) dr[c] = xr[c];
                } else if (sw == 2) /* a constant stride vectorises (even lanes of two loads) */
                    for (ptrdiff_t c = c0; c < c1; c++) dr[c] = xr[2 * c];
                else
                    for (ptrdiff_t c = c0; c < c1; c++) dr[c] = xr[c * (ptrdiff_t)sw];
                for (ptrdiff_t c = c1; c < Wq; c++) dr[c] = 0;
            }
        }
}

/* One task: CB output channels of one group of one image over flat positions [p0, p1).
 * xin: the group's packed input; y: output plane of the block's first channel (OH x OW each);
 * acc: thread scratch of CB * lda (lda >= p1 - p0 rounded up to the chunk); lda == 0 (no
 * scratch) where OW is a multiple of the vector and [p0, p1) whole rows: rows go straight to y. */
static void FC_NAME(fc_direct_task)(const T *restrict xin, const ptrdiff_t *restrict toff,
                                    ptrdiff_t ntap, const T *restrict wb, const T *restrict bias,
                                    int cb, int cvalid, T *restrict y, ptrdiff_t OH, ptrdiff_t OW,
                                    ptrdiff_t Wq, ptrdiff_t p0, ptrdiff_t p1, T *restrict acc,
                                    ptrdiff_t lda) {
    const ptrdiff_t np = p1 - p0;
    if (lda == 0) { /* whole rows of whole vectors, straight into y */
        const ptrdiff_t i0 = p0 / Wq, i1 = p1 / Wq < OH ? p1 / Wq : OH;
        switch (cb) {
        case 1: DIRECT_CB(fc_direct_rows, 1)(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;
        case 2: DIRECT_CB(fc_direct_rows, 2)(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;
        case 3: DIRECT_CB(fc_direct_rows, 3)(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;
        case 4: DIRECT_CB(fc_direct_rows, 4)(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;
        case 5: DIRECT_CB(fc_direct_rows, 5)(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;
        case 6: DIRECT_CB(fc_direct_rows, 6)(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;
        case 7: DIRECT_CB(fc_direct_rows, 7)(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;
        default: DIRECT_CB(fc_direct_rows, 8)(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;
        }
        return;
    }
    switch (cb) {
    case 1: DIRECT_CB(fc_direct_mk, 1)(xin + p0, toff, ntap, wb, acc, lda, np); break;
    case 2: DIRECT_CB(fc_direct_mk, 2)(xin + p0, toff, ntap, wb, acc, lda, np); break;
    case 3: DIRECT_CB(fc_direct_mk, 3)(xin + p0, toff, ntap, wb, acc, lda, np); break;
    case 4: DIRECT_CB(fc_direct_mk, 4)(xin + p0, toff, ntap, wb, acc, lda, np); break;
    case 5: DIRECT_CB(fc_direct_mk, 5)(xin + p0, toff, ntap, wb, acc, lda, np); break;
    case 6: DIRECT_CB(fc_direct_mk, 6)(xin + p0, toff, ntap, wb, acc, lda, np); break;
    case 7: DIRECT_CB(fc_direct_mk, 7)(xin + p0, toff, ntap, wb, acc, lda, np); break;
    default: DIRECT_CB(fc_direct_mk, 8)(xin + p0, toff, ntap, wb, acc, lda, np); break;
    }
    /* extract rows: flat p = i*Wq + j, keep j < OW */
    for (ptrdiff_t i = p0 / Wq; i * Wq < p1 && i < OH; i++) {
        ptrdiff_t ja = p0 - i * Wq, jb = p1 - i * Wq;
        if (ja < 0) ja = 0;
        if (jb > OW) jb = OW;
        for (int c = 0; c < cvalid; c++) {
            const T *restrict src = acc + c * lda + i * Wq - p0;
            T *restrict dst = y + (ptrdiff_t)c * OH * OW + i * OW;
            const T bc = bias[c];
            for (ptrdiff_t j = ja; j < jb; j++) dst[j] = src[j] + bc;
        }
    }
}
