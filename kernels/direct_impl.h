/* Direct convolution core for kernels/direct.pyx (templated for float and double).
 *
 * 1. pack: each image is copied once into "phase planes": for stride (sh, sw) the zero-padded
 *    input splits into sh*sw planes xs[a][b][r][c] = xpad[r*sh + a][c*sw + b], each Hq x Wq with
 *    Hq = OH + ((kh-1)*dh)/sh, Wq = OW + ((kw-1)*dw)/sw. A tap (u, v) of any stride/dilation then
 *    reads plane ((u*dh)%sh, (v*dw)%sw) at the constant offset ((u*dh)/sh)*Wq + (v*dw)/sw from the
 *    output's flat position p = i*Wq + j: every tap is a *contiguous* stride-1 read, no branch.
 *    Positions with j >= OW are computed too (Wq-OW of every Wq lanes are waste) and dropped.
 * 2. compute: a register-blocked micro-kernel keeps CB output channels x NV vectors of flat
 *    positions in accumulators (CB=8, NV=2: 16 zmm); per tap it loads NV input vectors once and
 *    does CB*NV FMAs with the tap's CB weights (packed [tap][CB] in prepare), so each loaded input
 *    vector is reused CB times. CB is instantiated 1..8 so a group's output channels split into
 *    near-equal blocks (lenet's 10 = 5+5, depthwise's 1 = 1) without padding waste.
 * 3. extract: the valid columns of each tile go to y with the bias added; where OW is a whole
 *    number of vectors the tiles are whole rows instead and fc_direct_rows writes them into y.
 * gcc vector extensions (not intrinsics) keep it portable: -march=native turns them into AVX-512.
 */
#ifndef FASTCONV_DIRECT_IMPL_H
#define FASTCONV_DIRECT_IMPL_H

#include <stddef.h>
#include <string.h>

#define FC_VBYTES 64

/* Short zero-fill and copy loops (a row's padding columns, a partial vector) stay inline: gcc
 * otherwise turns them into memset/memmove calls, 5-10% of a depthwise layer (perf). */
#if defined(__GNUC__) && !defined(__clang__)
#define FC_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define FC_NO_LIBCALLS
#endif

/* The heart of both micro-kernels: the CB x NV accumulators a (declared and initialised by the
 * caller) gain every tap of the chunk whose vector k starts at flat position xp[k]. */
#define FC_DIRECT_TAPS(T, vT, CB, NV, a, xp, toff, ntap, wb)                                        \
    for (ptrdiff_t t = 0; t < (ntap); t++) {                                                       \
        const T *restrict wt = (wb) + t * CB;                                                      \
        vT xv[NV];                                                                                 \
        for (int k = 0; k < NV; k++) memcpy(&xv[k], (xp)[k] + (toff)[t], sizeof(vT));             \
        for (int c = 0; c < CB; c++) {                                                             \
            const T w = wt[c];                                                                     \
            for (int k = 0; k < NV; k++) a[c][k] += w * xv[k];                                     \
        }                                                                                          \
    }

/* one micro-kernel: CB channels, NV vectors per chunk; acc[c*lda + p] for p in [0, np rounded up) */
#define FC_DIRECT_MK(T, SUF, CB, NV)                                                               \
static void fc_direct_mk_##SUF##_##CB(const T *restrict xin, const ptrdiff_t *restrict toff,       \
                                      ptrdiff_t ntap, const T *restrict wb, T *restrict acc,       \
                                      ptrdiff_t lda, ptrdiff_t np) {                               \
    typedef T vT __attribute__((vector_size(FC_VBYTES)));                                          \
    enum { VL = FC_VBYTES / sizeof(T), CH = NV * VL };                                             \
    for (ptrdiff_t p = 0; p < np; p += CH) {                                                       \
        vT a[CB][NV];                                                                              \
        const T *xp[NV];                                                                           \
        for (int k = 0; k < NV; k++) xp[k] = xin + p + k * VL;                                     \
        for (int c = 0; c < CB; c++)                                                               \
            for (int k = 0; k < NV; k++) a[c][k] = (vT){0};                                        \
        FC_DIRECT_TAPS(T, vT, CB, NV, a, xp, toff, ntap, wb)                                       \
        for (int c = 0; c < CB; c++)                                                               \
            for (int k = 0; k < NV; k++) memcpy(acc + c * lda + p + k * VL, &a[c][k], sizeof(vT));  \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* The same for whole output rows [i0, i1) of a width OW that is a multiple of the vector: the   \
 * accumulators start at the bias and go straight into y's rows, so nothing is extracted. Chunks  \
 * of NV vectors along a row; the vectors left at the rows' ends (OW mod NV*VL) are gathered      \
 * NV at a time across rows, so they run at the full chunk's ratio of FMAs to loads too. */       \
static void fc_direct_rows_##SUF##_##CB(const T *restrict xin, const ptrdiff_t *restrict toff,     \
                                        ptrdiff_t ntap, const T *restrict wb, const T *restrict bias,\
                                        int cvalid, T *restrict y, ptrdiff_t OH, ptrdiff_t OW,     \
                                        ptrdiff_t Wq, ptrdiff_t i0, ptrdiff_t i1) {                \
    typedef T vT __attribute__((vector_size(FC_VBYTES)));                                          \
    enum { VL = FC_VBYTES / sizeof(T), CH = NV * VL };                                             \
    const ptrdiff_t jt = OW / CH * CH;       /* the row's end vectors start at column jt */       \
    const ptrdiff_t nend = (OW - jt) / VL * (i1 - i0); /* end vectors of all the rows */          \
    for (ptrdiff_t q = 0; q < (i1 - i0) * (jt / CH) + (nend + NV - 1) / NV; q++) {                 \
        const T *xp[NV];                                                                           \
        T *yp[NV];                                                                                 \
        int nv = NV;                                                                               \
        if (q < (i1 - i0) * (jt / CH)) { /* a chunk along row i */                                 \
            const ptrdiff_t i = i0 + q / (jt / CH), j = q % (jt / CH) * CH;                        \
            for (int k = 0; k < NV; k++) {                                                         \
                xp[k] = xin + i * Wq + j + k * VL;                                                 \
                yp[k] = y + i * OW + j + k * VL;                                                   \
            }                                                                                      \
        } else { /* end vectors e, e+1, ...: row i0 + e / per, column jt + e % per * VL */        \
            const ptrdiff_t per = (OW - jt) / VL, e0 = (q - (i1 - i0) * (jt / CH)) * NV;           \
            nv = nend - e0 < NV ? (int)(nend - e0) : NV;                                           \
            for (int k = 0; k < NV; k++) {                                                         \
                const ptrdiff_t e = e0 + (k < nv ? k : 0);                                         \
                const ptrdiff_t i = i0 + e / per, j = jt + e % per * VL;                           \
                xp[k] = xin + i * Wq + j;                                                          \
                yp[k] = y + i * OW + j;                                                            \
            }                                                                                      \
        }                                                                                          \
        vT a[CB][NV];                                                                              \
        for (int c = 0; c < CB; c++)                                                               \
            for (int k = 0; k < NV; k++) a[c][k] = (vT){0} + bias[c];                              \
        FC_DIRECT_TAPS(T, vT, CB, NV, a, xp, toff, ntap, wb)                                       \
        for (int c = 0; c < cvalid; c++)                                                           \
            for (int k = 0; k < nv; k++) memcpy(yp[k] + c * OH * OW, &a[c][k], sizeof(vT));        \
    }                                                                                              \
}

#define FC_DIRECT_TEMPLATE(T, SUF)                                                                 \
FC_DIRECT_MK(T, SUF, 1, 4)                                                                         \
FC_DIRECT_MK(T, SUF, 2, 4)                                                                         \
FC_DIRECT_MK(T, SUF, 3, 4)                                                                         \
FC_DIRECT_MK(T, SUF, 4, 3)                                                                         \
FC_DIRECT_MK(T, SUF, 5, 3)                                                                         \
FC_DIRECT_MK(T, SUF, 6, 2)                                                                         \
FC_DIRECT_MK(T, SUF, 7, 2)                                                                         \
FC_DIRECT_MK(T, SUF, 8, 2)                                                                         \
                                                                                                   \
/* Pack channel plane x (H x W) into the phase planes the taps use: row phases aph[0..na),        \
 * column phases bph[0..nb) (at most min(s, k) each, so a huge stride packs only kh*kw planes);     \
 * dst: [na][nb][Hq][Wq]. */                                                                       \
FC_NO_LIBCALLS static void fc_direct_pack_##SUF(const T *restrict x, T *restrict dst, ptrdiff_t H, ptrdiff_t W,  \
                                 ptrdiff_t Hq, ptrdiff_t Wq, int sh, int sw, int pt, int pl,       \
                                 const ptrdiff_t *restrict aph, int na,                            \
                                 const ptrdiff_t *restrict bph, int nb) {                          \
    for (int ia = 0; ia < na; ia++)                                                                \
        for (int ib = 0; ib < nb; ib++) {                                                          \
            const ptrdiff_t a = aph[ia], b = bph[ib];                                              \
            T *restrict d = dst + ((ptrdiff_t)ia * nb + ib) * Hq * Wq;                             \
            /* columns c with 0 <= c*sw + b - pl < W */                                            \
            ptrdiff_t c0 = 0, c1;                                                                  \
            while (c0 < Wq && c0 * (ptrdiff_t)sw + b - pl < 0) c0++;                               \
            c1 = c0;                                                                               \
            while (c1 < Wq && c1 * (ptrdiff_t)sw + b - pl < W) c1++;                               \
            for (ptrdiff_t r = 0; r < Hq; r++) {                                                   \
                T *restrict dr = d + r * Wq;                                                       \
                ptrdiff_t sr = r * (ptrdiff_t)sh + a - pt;                                         \
                if (sr < 0 || sr >= H) {                                                           \
                    for (ptrdiff_t c = 0; c < Wq; c++) dr[c] = 0;                                  \
                    continue;                                                                      \
                }                                                                                  \
                const T *restrict xr = x + sr * W + b - pl;                                        \
                for (ptrdiff_t c = 0; c < c0; c++) dr[c] = 0;                                      \
                if (sw == 1) { /* inline vector copy: a memcpy call per short row cost 20% */     \
                    typedef T vT __attribute__((vector_size(FC_VBYTES)));                          \
                    const ptrdiff_t VL = FC_VBYTES / sizeof(T);                                    \
                    ptrdiff_t c = c0;                                                              \
                    for (; c + VL <= c1; c += VL) {                                                \
                        vT v;                                                                      \
                        __builtin_memcpy(&v, xr + c, sizeof v);                                    \
                        __builtin_memcpy(dr + c, &v, sizeof v);                                    \
                    }                                                                              \
                    if (c < c1 && c1 - c0 >= VL) { /* the rest as one overlapping vector */       \
                        vT v;                                                                      \
                        __builtin_memcpy(&v, xr + c1 - VL, sizeof v);                              \
                        __builtin_memcpy(dr + c1 - VL, &v, sizeof v);                              \
                    } else                                                                         \
                        for (; c < c1; c++) dr[c] = xr[c];                                         \
                } else if (sw == 2) /* a constant stride vectorises (even lanes of two loads) */   \
                    for (ptrdiff_t c = c0; c < c1; c++) dr[c] = xr[2 * c];                         \
                else                                                                               \
                    for (ptrdiff_t c = c0; c < c1; c++) dr[c] = xr[c * (ptrdiff_t)sw];             \
                for (ptrdiff_t c = c1; c < Wq; c++) dr[c] = 0;                                     \
            }                                                                                      \
        }                                                                                          \
}                                                                                                  \
                                                                                                   \
/* One task: CB output channels of one group of one image over flat positions [p0, p1).           \
 * xin: the group's packed input; y: output plane of the block's first channel (OH x OW each);    \
 * acc: thread scratch of CB * lda (lda >= p1 - p0 rounded up to the chunk); lda == 0 (no       \
 * scratch) where OW is a multiple of the vector and [p0, p1) whole rows: rows go straight to y. */\
static void fc_direct_task_##SUF(const T *restrict xin, const ptrdiff_t *restrict toff,            \
                                 ptrdiff_t ntap, const T *restrict wb, const T *restrict bias,     \
                                 int cb, int cvalid, T *restrict y, ptrdiff_t OH, ptrdiff_t OW,    \
                                 ptrdiff_t Wq, ptrdiff_t p0, ptrdiff_t p1, T *restrict acc,        \
                                 ptrdiff_t lda) {                                                  \
    const ptrdiff_t np = p1 - p0;                                                                  \
    if (lda == 0) { /* whole rows of whole vectors, straight into y */                             \
        const ptrdiff_t i0 = p0 / Wq, i1 = p1 / Wq < OH ? p1 / Wq : OH;                            \
        switch (cb) {                                                                              \
        case 1: fc_direct_rows_##SUF##_1(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;\
        case 2: fc_direct_rows_##SUF##_2(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;\
        case 3: fc_direct_rows_##SUF##_3(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;\
        case 4: fc_direct_rows_##SUF##_4(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;\
        case 5: fc_direct_rows_##SUF##_5(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;\
        case 6: fc_direct_rows_##SUF##_6(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;\
        case 7: fc_direct_rows_##SUF##_7(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;\
        default: fc_direct_rows_##SUF##_8(xin, toff, ntap, wb, bias, cvalid, y, OH, OW, Wq, i0, i1); break;\
        }                                                                                          \
        return;                                                                                    \
    }                                                                                              \
    switch (cb) {                                                                                  \
    case 1: fc_direct_mk_##SUF##_1(xin + p0, toff, ntap, wb, acc, lda, np); break;                 \
    case 2: fc_direct_mk_##SUF##_2(xin + p0, toff, ntap, wb, acc, lda, np); break;                 \
    case 3: fc_direct_mk_##SUF##_3(xin + p0, toff, ntap, wb, acc, lda, np); break;                 \
    case 4: fc_direct_mk_##SUF##_4(xin + p0, toff, ntap, wb, acc, lda, np); break;                 \
    case 5: fc_direct_mk_##SUF##_5(xin + p0, toff, ntap, wb, acc, lda, np); break;                 \
    case 6: fc_direct_mk_##SUF##_6(xin + p0, toff, ntap, wb, acc, lda, np); break;                 \
    case 7: fc_direct_mk_##SUF##_7(xin + p0, toff, ntap, wb, acc, lda, np); break;                 \
    default: fc_direct_mk_##SUF##_8(xin + p0, toff, ntap, wb, acc, lda, np); break;                \
    }                                                                                              \
    /* extract rows: flat p = i*Wq + j, keep j < OW */                                             \
    for (ptrdiff_t i = p0 / Wq; i * Wq < p1 && i < OH; i++) {                                      \
        ptrdiff_t ja = p0 - i * Wq, jb = p1 - i * Wq;                                              \
        if (ja < 0) ja = 0;                                                                        \
        if (jb > OW) jb = OW;                                                                      \
        for (int c = 0; c < cvalid; c++) {                                                         \
            const T *restrict src = acc + c * lda + i * Wq - p0;                                   \
            T *restrict dst = y + (ptrdiff_t)c * OH * OW + i * OW;                                 \
            const T bc = bias[c];                                                                  \
            for (ptrdiff_t j = ja; j < jb; j++) dst[j] = src[j] + bc;                              \
        }                                                                                          \
    }                                                                                              \
}

/* Depthwise plane (one input channel -> one output channel): output rows straight from the
 * packed planes into y, bias as the initial value. The general task's CB = 1 micro-kernel, its
 * accumulator tile and the extraction pass cost ~4x the arithmetic here (9 FMAs per output).
 * RB = 4 output rows share each vector column step: four independent FMA chains (one row alone
 * waits on the FMA latency at every tap), and for 3x3 stride 1 each loaded input vector feeds up
 * to three rows (18 loads for 36 FMAs).
 * Stores: a row's last vector is stored whole even past OW. Its spill lands in the rows below,
 * which are stored later: columns are walked right to left and, within a step, rows top to
 * bottom (so a row's first vectors, where the spill lands, are stored after it). Only where the
 * spill would leave the plane is the vector copied element by element. Rows past OH in the last
 * block recompute row OH-1 (same values, same places). */
#define FC_DW_STORE(T, vT, VL, yrow, j, a, OW, room)                                               \
    do {                                                                                           \
        if ((j) + VL <= (room)) memcpy((yrow) + (j), &(a), sizeof(vT));                           \
        else {                                                                                     \
            T b_[VL]; /* (indexing the vector itself would keep it in memory everywhere) */        \
            memcpy(b_, &(a), sizeof b_);                                                           \
            for (ptrdiff_t q_ = 0; q_ < (OW) - (j) && q_ < VL; q_++) (yrow)[(j) + q_] = b_[q_];   \
        }                                                                                          \
    } while (0)

#define FC_DIRECT_DW(T, SUF)                                                                       \
/* rows [i0, OH) with any taps (offsets toff), stores that never leave the plane */               \
FC_NO_LIBCALLS static void fc_direct_dw_rows_##SUF(const T *restrict xin, const ptrdiff_t *restrict toff,        \
                                    ptrdiff_t ntap, const T *restrict wt, T bias,                 \
                                    T *restrict y, ptrdiff_t i0, ptrdiff_t OH, ptrdiff_t OW,      \
                                    ptrdiff_t Wq) {                                               \
    typedef T vT __attribute__((vector_size(FC_VBYTES)));                                          \
    enum { VL = FC_VBYTES / sizeof(T), RB = 4 };                                                   \
    for (; i0 < OH; i0 += RB) {                                                                    \
        ptrdiff_t row[RB];                                                                         \
        for (int r = 0; r < RB; r++) row[r] = i0 + r < OH ? i0 + r : OH - 1;                       \
        for (ptrdiff_t j = (OW - 1) / VL * VL; j >= 0; j -= VL) {                                  \
            vT a[RB];                                                                              \
            _Pragma("GCC unroll 8")                                                                \
            for (int r = 0; r < RB; r++) a[r] = (vT){0} + bias;                                    \
            for (ptrdiff_t t = 0; t < ntap; t++) {                                                 \
                const T w = wt[t];                                                                 \
                _Pragma("GCC unroll 8")                                                            \
                for (int r = 0; r < RB; r++) {                                                     \
                    vT x;                                                                          \
                    memcpy(&x, xin + row[r] * Wq + toff[t] + j, sizeof x);                         \
                    a[r] += w * x;                                                                 \
                }                                                                                  \
            }                                                                                      \
            _Pragma("GCC unroll 8")                                                                \
            for (int r = 0; r < RB; r++)                                                           \
                FC_DW_STORE(T, vT, VL, y + row[r] * OW, j, a[r], OW, (OH - row[r]) * OW);          \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
FC_NO_LIBCALLS static void fc_direct_dw_##SUF(const T *restrict xin, const ptrdiff_t *restrict toff,             \
                               ptrdiff_t ntap, const T *restrict wt, T bias, T *restrict y,       \
                               ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t Wq, int s1k3) {              \
    typedef T vT __attribute__((vector_size(FC_VBYTES)));                                          \
    enum { VL = FC_VBYTES / sizeof(T), RB = 4 };                                                   \
    const ptrdiff_t jlast = (OW - 1) / VL * VL;                                                    \
    ptrdiff_t i0 = 0;                                                                              \
    if (s1k3) { /* 3x3, stride 1: input row i0+q feeds output rows i0+q-2 .. i0+q */              \
        vT wv[9];                                                                                  \
        for (int t = 0; t < 9; t++) wv[t] = (vT){0} + wt[t];                                       \
        /* blocks whose last row's spill stays in the plane: plain stores */                       \
        for (; i0 + RB <= OH && (OH - i0 - RB + 1) * OW >= jlast + VL; i0 += RB)                   \
            for (ptrdiff_t j = jlast; j >= 0; j -= VL) {                                           \
                vT a[RB];                                                                          \
                _Pragma("GCC unroll 8")                                                            \
                for (int r = 0; r < RB; r++) a[r] = (vT){0} + bias;                                \
                const T *restrict xb = xin + i0 * Wq + j;                                          \
                _Pragma("GCC unroll 8")                                                            \
                for (int q = 0; q < RB + 2; q++)                                                   \
                    _Pragma("GCC unroll 8")                                                        \
                    for (int v = 0; v < 3; v++) {                                                  \
                        vT x;                                                                      \
                        memcpy(&x, xb + q * Wq + v, sizeof x);                                     \
                        _Pragma("GCC unroll 8")                                                    \
                        for (int r = 0; r < RB; r++)                                               \
                            if (q - r >= 0 && q - r < 3) a[r] += wv[(q - r) * 3 + v] * x;          \
                    }                                                                              \
                _Pragma("GCC unroll 8")                                                            \
                for (int r = 0; r < RB; r++) memcpy(y + (i0 + r) * OW + j, &a[r], sizeof(vT));     \
            }                                                                                      \
    }                                                                                              \
    if (i0 < OH) fc_direct_dw_rows_##SUF(xin, toff, ntap, wt, bias, y, i0, OH, OW, Wq);            \
}

FC_DIRECT_DW(float, f)
FC_DIRECT_DW(double, d)

FC_DIRECT_TEMPLATE(float, f)
FC_DIRECT_TEMPLATE(double, d)

/* Depthwise 3x3, stride 1, padding 1, float32, straight from x (no pack): flat over the plane,
 * 16 outputs a step, so there are no row tails. Interior rows load each input vector once and
 * slide it along (prev/cur/next per input row); the left/right neighbour columns are lane shifts
 * (valignd) whose masks zero the lanes that would wrap to the adjacent row, i.e. the padding. The
 * first and last rows take masked loads (masked-off lanes never fault, so nothing outside the
 * plane is read) and masked stores. Needs W >= 16 (one column-0 lane per vector at most).
 * Built for AVX-512 only (FC_HAS_DW3X3 1); elsewhere a stub that direct.pyx never calls (it packs).
 * Measured (1 thread, C harness, 56x56 planes): 0.69-0.74 us a plane, against 1.65 for pack
 * (0.55) + fc_direct_dw (1.1); 1.1-1.3 with masked loads for every tap (Zen 4: each unaligned
 * 64-byte load spans two lines), 0.80 unmasked (wrong at the borders) for comparison. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define FC_HAS_DW3X3 1 /* fc_dw3x3s1p1_f does its planes (direct.pyx then needs no pack buffer) */
#define FC_DW_STEP(MU, MD, ALL, STORE)                                                              \
    do {                                                                                           \
        const float *xc = x + k;                                                                   \
        __mmask16 mL = ALL, mR = ALL;                                                              \
        if (l0 < 16) mL &= (__mmask16)~(1u << l0);                                                 \
        if (l1 < 16) mR &= (__mmask16)~(1u << l1);                                                 \
        __m512 a0 = _mm512_fmadd_ps(w4, _mm512_maskz_loadu_ps(ALL, xc), vb);                       \
        __m512 a1 = _mm512_mul_ps(w3, _mm512_maskz_loadu_ps(mL, xc - 1));                          \
        __m512 a2 = _mm512_mul_ps(w5, _mm512_maskz_loadu_ps(mR, xc + 1));                          \
        a0 = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(MU, xc - W), a0);                           \
        a1 = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps((MU) & mL, xc - W - 1), a1);                \
        a2 = _mm512_fmadd_ps(w2, _mm512_maskz_loadu_ps((MU) & mR, xc - W + 1), a2);                \
        a0 = _mm512_fmadd_ps(w7, _mm512_maskz_loadu_ps(MD, xc + W), a0);                           \
        a1 = _mm512_fmadd_ps(w6, _mm512_maskz_loadu_ps((MD) & mL, xc + W - 1), a1);                \
        a2 = _mm512_fmadd_ps(w8, _mm512_maskz_loadu_ps((MD) & mR, xc + W + 1), a2);                \
        STORE(y + k, _mm512_add_ps(_mm512_add_ps(a0, a1), a2));                                    \
    } while (0)
/* FC_DW_STEP on the first row, the last row or the plane's last partial vector: the lanes past
 * the plane (all), above row 0 (mU) and below row H-1 (mD) are masked off */
#define FC_DW_EDGE_STEP()                                                                          \
    do {                                                                                           \
        __mmask16 all = n - k >= 16 ? 0xFFFF : (__mmask16)((1u << (n - k)) - 1), mU = all, mD = all; \
        if (k < W) mU &= (__mmask16)(W - k >= 16 ? 0 : (0xFFFFu << (W - k)));                      \
        if (k + 16 > last) mD &= (__mmask16)(k >= last ? 0 : ((1u << (last - k)) - 1));             \
        FC_DW_STEP(mU, mD, all, FC_ST_MASK);                                                       \
    } while (0)
static void fc_dw3x3s1p1_f(const float *restrict x, const float *restrict w, float bias,
                           float *restrict y, ptrdiff_t H, ptrdiff_t W) {
    const ptrdiff_t n = H * W, last = (H - 1) * W;
    const __m512 w0 = _mm512_set1_ps(w[0]), w1 = _mm512_set1_ps(w[1]), w2 = _mm512_set1_ps(w[2]),
                 w3 = _mm512_set1_ps(w[3]), w4 = _mm512_set1_ps(w[4]), w5 = _mm512_set1_ps(w[5]),
                 w6 = _mm512_set1_ps(w[6]), w7 = _mm512_set1_ps(w[7]), w8 = _mm512_set1_ps(w[8]);
    const __m512 vb = _mm512_set1_ps(bias);
    ptrdiff_t c = 0, k = 0; /* c: column of lane 0 */
#define FC_ST_FULL(p, v) _mm512_storeu_ps((p), (v))
#define FC_ST_MASK(p, v) _mm512_mask_storeu_ps((p), all, (v))
    /* interior rows: each input row's vectors loaded once (prev/cur/next slide along), the
     * neighbour columns from lane shifts whose masks zero the wrapped lanes */
    ptrdiff_t ka = (W + 31) / 16 * 16; /* >= W + 16: the first prev vectors lie inside the plane */
    if (ka + 32 <= last) {
        for (; k < ka; k += 16) {
            ptrdiff_t l0 = c == 0 ? 0 : W - c, l1 = W - 1 - c;
            FC_DW_EDGE_STEP();
            c += 16; while (c >= W) c -= W;
        }
        __m512 pu = _mm512_loadu_ps(x + k - 16 - W), pm = _mm512_loadu_ps(x + k - 16), pd = _mm512_loadu_ps(x + k - 16 + W);
        __m512 cu = _mm512_loadu_ps(x + k - W), cm = _mm512_loadu_ps(x + k), cd = _mm512_loadu_ps(x + k + W);
        for (; k + 32 <= last; k += 16) {
            ptrdiff_t l0 = c == 0 ? 0 : W - c, l1 = W - 1 - c;
            __mmask16 mL = 0xFFFF, mR = 0xFFFF;
            if (l0 < 16) mL &= (__mmask16)~(1u << l0);
            if (l1 < 16) mR &= (__mmask16)~(1u << l1);
            __m512 nu = _mm512_loadu_ps(x + k + 16 - W), nm = _mm512_loadu_ps(x + k + 16), nd = _mm512_loadu_ps(x + k + 16 + W);
#define FC_LEFT(p, c_) _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(mL, _mm512_castps_si512(c_), _mm512_castps_si512(p), 15))
#define FC_RIGHT(c_, n_) _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(mR, _mm512_castps_si512(n_), _mm512_castps_si512(c_), 1))
            __m512 a0 = _mm512_fmadd_ps(w4, cm, vb);
            __m512 a1 = _mm512_mul_ps(w3, FC_LEFT(pm, cm));
            __m512 a2 = _mm512_mul_ps(w5, FC_RIGHT(cm, nm));
            a0 = _mm512_fmadd_ps(w1, cu, a0);
            a1 = _mm512_fmadd_ps(w0, FC_LEFT(pu, cu), a1);
            a2 = _mm512_fmadd_ps(w2, FC_RIGHT(cu, nu), a2);
            a0 = _mm512_fmadd_ps(w7, cd, a0);
            a1 = _mm512_fmadd_ps(w6, FC_LEFT(pd, cd), a1);
            a2 = _mm512_fmadd_ps(w8, FC_RIGHT(cd, nd), a2);
            _mm512_storeu_ps(y + k, _mm512_add_ps(_mm512_add_ps(a0, a1), a2));
            pu = cu; pm = cm; pd = cd; cu = nu; cm = nm; cd = nd;
            c += 16; while (c >= W) c -= W;
        }
    }
    for (; k < n; k += 16) {
        ptrdiff_t l0 = c == 0 ? 0 : W - c, l1 = W - 1 - c;   /* lanes of column 0 and W-1 */
        if (k >= W && k + 16 <= last) {
            FC_DW_STEP(0xFFFF, 0xFFFF, 0xFFFF, FC_ST_FULL);
        } else {
            FC_DW_EDGE_STEP();
        }
        c += 16; while (c >= W) c -= W;
    }
}
#undef FC_LEFT
#undef FC_RIGHT
#undef FC_ST_FULL
#undef FC_ST_MASK
#undef FC_DW_STEP
#undef FC_DW_EDGE_STEP
#else
#define FC_HAS_DW3X3 0
static void fc_dw3x3s1p1_f(const float *x, const float *w, float bias, float *y, ptrdiff_t H, ptrdiff_t W) {
    (void)x; (void)w; (void)bias; (void)y; (void)H; (void)W;
}
#endif

#endif
