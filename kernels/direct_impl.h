/* Direct convolution core for kernels/direct.pyx: direct_body.h (with direct_mk.h) once per element
 * type, float and double.
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

#define FC_COMMON_NAMES_ONLY /* FC_NAME: the per-dtype names of direct_body.h */
#include "_common.h"
#undef FC_COMMON_NAMES_ONLY

#define FC_VBYTES 64

/* Short zero-fill and copy loops (a row's padding columns, a partial vector) stay inline: gcc
 * otherwise turns them into memset/memmove calls, 5-10% of a depthwise layer (perf). */
#if defined(__GNUC__) && !defined(__clang__)
#define FC_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define FC_NO_LIBCALLS
#endif

/* name_SFX_cb: direct_mk.h's micro-kernel `name` for cb output channels */
#define DIRECT_CB(name, cb) FC_JOIN(FC_NAME(name), cb)

#define T float
#define SFX f
#include "direct_dw.h"
#undef T
#undef SFX

#define T double
#define SFX d
#include "direct_dw.h"
#undef T
#undef SFX

#define T float
#define SFX f
#include "direct_body.h"
#undef T
#undef SFX

#define T double
#define SFX d
#include "direct_body.h"
#undef T
#undef SFX

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
