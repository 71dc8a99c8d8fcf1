/* wino_impl.h — body of the fused Winograd F(m x m, r x r) pipeline (F(2x2,3x3), F(4x4,3x3),
 * F(2x2,5x5); tiles of A = m + r - 1 = 4 or 6 points), included by wino_kernels.h
 * once per dtype with T (float/double), SFX (f32/f64), MR, NR (micro-kernel tile) and UKR (the
 * micro-kernel, from gemm_ukernel.h) defined. Not a standalone header.
 *
 * One task = one block of nt output tiles (of one group; a block may span images, so small maps
 * of a batch share each pass over U) x one range of output-channel panels [cp0, cp1):
 *   1. input transform  V[xi][g][ci][r] = (B^T d B)[xi] of tile g*2*MR + r, channel ci
 *                       (written straight in the micro-kernel's A layout; 2*MR tiles per lane
 *                       group so the transform arithmetic runs on 16-wide vectors)
 *   2. GEMM per point   M[xi][t][co] = sum_ci V[xi][t][ci] U[xi][ci][co]   (U packed in prepare)
 *   3. output transform y[co][tile] = (A^T M A)[co] + bias[co]   (vectorized over co, clipped at
 *                       the bottom/right edges)
 * V and M are the caller's per-thread buffers, sized by the tile block winograd.pyx chooses
 * (geometry()): a block fits V and M in L2 (at least MIN_BLOCK tiles), except deep layers on
 * small maps, which run as one block shared by the threads so that U is read once.
 */
#define FC_COMMON_NAMES_ONLY /* FC_NAME: this body's per-dtype names */
#include "_common.h"
#undef FC_COMMON_NAMES_ONLY

#define WINO_OL 16 /* output-transform lanes (output channels per vector chunk) */
#define WINO_PF 6 /* input channels prefetched ahead: vgg16.conv1_2 (224x224) on 2 threads, where
                   * both stream the input from memory, is ~5% faster than with 2 (6 of 6
                   * alternating process pairs: 9.4-10.3 vs 10.0-11.3 ms); 1 thread the same */
#ifndef WINO_INPUT
#define WINO_INPUT 1  /* wino_task phases */
#define WINO_OUTPUT 2
#endif
#ifndef WINO_PAD
#define WINO_PAD 16 /* elements between the A^2 panels of V and of M */
#endif

/* The 1-D transforms act on 16 lanes at once (16 tiles in the input transform, 16 output
 * channels in the output transform), as GCC vector types: the plain loops over lanes were left
 * partly scalar by the vectorizer (aliasing versions, unrolled strided stores). */
typedef T FC_NAME(v16) __attribute__((vector_size(16 * sizeof(T))));
#define WLD(p) ({ FC_NAME(v16) v_; memcpy(&v_, (p), sizeof v_); v_; })
#define WST(p, v) do { FC_NAME(v16) v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)

/* out[i*os + r] = sum_k BT[i][k] in[k*is + r], r < 16. BT depends only on the A interpolation
 * points (A = 4: 0, ±1, ∞; A = 6: 0, ±1, ±2, ∞), so F(4x4,3x3) and F(2x2,5x5) share theirs. */
static inline __attribute__((always_inline)) void
FC_NAME(wino_bt)(const int A, const T *restrict in, long is, T *restrict out, long os)
{
    if (A == 4) {
        FC_NAME(v16) d0 = WLD(in), d1 = WLD(in + is), d2 = WLD(in + 2 * is), d3 = WLD(in + 3 * is);
        WST(out, d0 - d2);
        WST(out + os, d1 + d2);
        WST(out + 2 * os, d2 - d1);
        WST(out + 3 * os, d1 - d3);
    } else {
        FC_NAME(v16) d0 = WLD(in), d1 = WLD(in + is), d2 = WLD(in + 2 * is), d3 = WLD(in + 3 * is),
                     d4 = WLD(in + 4 * is), d5 = WLD(in + 5 * is);
        FC_NAME(v16) s12 = d1 + d2, s34 = d3 + d4, t42 = d4 - d2, t31 = d3 - d1;
        WST(out, 4 * d0 - 5 * d2 + d4);
        WST(out + os, s34 - 4 * s12);
        WST(out + 2 * os, (d4 - d3) + 4 * (d1 - d2));
        WST(out + 3 * os, t42 + 2 * t31);
        WST(out + 4 * os, t42 - 2 * t31);
        WST(out + 5 * os, 4 * d1 - 5 * d3 + d5);
    }
}

/* out[i*os + r] = sum_k AT[i][k] in[k*is + r], i < m, r < 16 (AT: the A points' powers 0..m-1) */
static inline __attribute__((always_inline)) void
FC_NAME(wino_at)(const int m, const int A, const T *restrict in, long is, T *restrict out, long os)
{
    if (A == 4) {
        FC_NAME(v16) m0 = WLD(in), m1 = WLD(in + is), m2 = WLD(in + 2 * is), m3 = WLD(in + 3 * is);
        WST(out, m0 + m1 + m2);
        WST(out + os, m1 - m2 - m3);
    } else {
        FC_NAME(v16) m0 = WLD(in), m1 = WLD(in + is), m2 = WLD(in + 2 * is), m3 = WLD(in + 3 * is),
                     m4 = WLD(in + 4 * is), m5 = WLD(in + 5 * is);
        FC_NAME(v16) a12 = m1 + m2, s12 = m1 - m2, a34 = m3 + m4, s34 = m3 - m4;
        WST(out, m0 + a12 + a34);
        if (m == 2) { /* F(2x2,5x5): the point at infinity feeds the top power, here x^1 */
            WST(out + os, s12 + 2 * s34 + m5);
            return;
        }
        WST(out + os, s12 + 2 * s34);
        WST(out + 2 * os, a12 + 4 * a34);
        WST(out + 3 * os, s12 + 8 * s34 + m5);
    }
}

static inline __attribute__((always_inline)) void
FC_NAME(wino_task_m)(const int m, const int r, const T *x, long xs, int H, int W, int cig, int pt, int pl, int ntile,
                int tw, long t0, int nt, const T *U, int ncp, int cp0, int cp1, const T *bias, T *y,
                long ys, int cog, int OH, int OW, T *V, T *M, int ci0, int ci1, int phases)
{
    enum { AMAX = 6 };
    const int A = m + r - 1;
    const int ntg = (nt + MR - 1) / MR, NBp = ntg * MR;
    const long HW = (long)H * W, OHW = (long)OH * OW;
    const long ldc = (long)(cp1 - cp0) * NR;
    /* strides between transform points, padded by a cache line: a multiple of 4 KiB would put all
     * A^2 streams of the transforms into the same L1 set (measured: 2x slower transforms) */
    const long vs = (long)(ntg + 1) / 2 * cig * 2 * MR + WINO_PAD, ms = (long)NBp * ldc + WINO_PAD;

    /* 1. input transform, IL = 2*MR tiles at a time (one vector lane per tile; V holds the two
     * MR-row panels of a lane group interleaved, read back with lda = IL). Channel-outer order:
     * within a channel plane the lane groups walk along the rows, so prefetching works (the
     * tile-outer order jumped between planes at every patch: 1.3x slower on 224x224 maps) */
    enum { IL = 2 * MR };
    _Static_assert(IL == 16 && WINO_OL == 16, "the 1-D transforms are written for 16 lanes");
    const int nlg = (nt + IL - 1) / IL; /* lane groups */
    long off[nlg * IL], ioff[nlg * IL];
    int y0[nlg * IL], x0[nlg * IL], state[nlg * IL]; /* 0: past the block, 1: inside, 2: edge */
#ifdef WINO_GATHER
    int gather[nlg], off32[nlg * IL];
#endif
    for (int lg = 0; lg < nlg; lg++) {
        int edge = 0;
        for (int r = lg * IL; r < lg * IL + IL; r++) {
            if (r >= nt) { state[r] = 0; off[r] = ioff[r] = 0; y0[r] = x0[r] = 0; continue; }
            const long tg_ = t0 + r;
            const int tl = (int)(tg_ % ntile);
            y0[r] = (tl / tw) * m - pt;
            x0[r] = (tl % tw) * m - pl;
            ioff[r] = (tg_ / ntile) * xs;
            off[r] = ioff[r] + (long)y0[r] * W + x0[r];
            state[r] = (y0[r] >= 0 && x0[r] >= 0 && y0[r] + A <= H && x0[r] + A <= W) ? 1 : 2;
            edge |= state[r] == 2;
        }
#ifdef WINO_GATHER
        /* lane groups inside the image: one hardware gather per patch position; lanes past the
         * block gather offset 0 (valid memory; their V rows only feed unused C rows) */
        gather[lg] = !edge && (t0 + nt) / ntile * xs + (long)cig * HW < (1L << 30);
        for (int r = lg * IL; r < lg * IL + IL; r++) off32[r] = (int)off[r];
#else
        (void)edge;
#endif
    }
    /* the block's input rows [plo, phi) when they lie in one image (the usual case): software
     * prefetch WINO_PF channels ahead — per channel they are only a few short rows, too short for
     * the hardware prefetchers to catch on (measured 1.2x faster input transform at 224x224) */
    long plo = -1, phi = 0;
    if (nt > 0 && (t0 / ntile) == (t0 + nt - 1) / ntile) {
        const long img = (t0 / ntile) * xs;
        int ya = y0[0], yb = y0[nt - 1] + A;
        ya = ya < 0 ? 0 : ya;
        yb = yb > H ? H : yb;
        plo = img + (long)ya * W;
        phi = img + (long)yb * W;
        if ((phi - plo) * (long)sizeof(T) > (64L << 10)) plo = -1; /* huge block: leave to the hardware */
    }
    if (phases & WINO_INPUT)
    for (int ci = ci0; ci < ci1; ci++) {
        const T *xc = x + ci * HW; /* + off[r]: image, row and column of lane r's tile */
        if (plo >= 0 && ci + WINO_PF < cig)
            for (long q = plo; q < phi; q += 64 / sizeof(T))
                __builtin_prefetch(xc + WINO_PF * HW + q, 0, 3);
        for (int lg = 0; lg < nlg; lg++) {
            T d[AMAX * AMAX * IL], tmp[AMAX * AMAX * IL];
#ifdef WINO_LOAD6
            /* 6x6 patches: row loads + transposes for every lane group — a border tile loads from a
             * zero-padded copy of its patch (lane groups of consecutive tiles nearly always hold
             * one: with the all-or-nothing gather path most groups of a 56x56 map were scalar) */
            if (A == 6) {
                const T *rp[IL];
                long rs[IL];
                T ebuf[IL * 36];
                static const T zero[8] = {0};
                for (int l = 0; l < IL; l++) {
                    const int r = lg * IL + l;
                    if (state[r] == 1) {
                        rp[l] = xc + off[r];
                        rs[l] = W;
                    } else if (state[r] == 0) {
                        rp[l] = zero;
                        rs[l] = 0;
                    } else {
                        T *e = ebuf + l * 36;
                        for (int i = 0; i < 6; i++) {
                            const int yy = y0[r] + i;
                            for (int j = 0; j < 6; j++) {
                                const int xx = x0[r] + j;
                                e[i * 6 + j] = (yy >= 0 && yy < H && xx >= 0 && xx < W)
                                                   ? xc[ioff[r] + (long)yy * W + xx] : 0;
                            }
                        }
                        rp[l] = e;
                        rs[l] = 6;
                    }
                }
                WINO_LOAD6(d, rp, rs);
            } else
#endif
#ifdef WINO_GATHER
            if (gather[lg]) {
                WINO_GATHER(d, xc, off32 + lg * IL, A, W);
            } else
#endif
            for (int l = 0; l < IL; l++) {
                const int r = lg * IL + l;
                if (state[r] == 1) {
                    const T *p = xc + off[r];
                    for (int i = 0; i < A; i++)
                        for (int j = 0; j < A; j++) d[(i * A + j) * IL + l] = p[(long)i * W + j];
                } else if (state[r] == 0) {
                    for (int i = 0; i < A * A; i++) d[i * IL + l] = 0;
                } else {
                    for (int i = 0; i < A; i++) {
                        int yy = y0[r] + i;
                        for (int j = 0; j < A; j++) {
                            int xx = x0[r] + j;
                            d[(i * A + j) * IL + l] =
                                (yy >= 0 && yy < H && xx >= 0 && xx < W) ? xc[ioff[r] + (long)yy * W + xx] : 0;
                        }
                    }
                }
            }
            for (int j = 0; j < A; j++) /* columns: tmp = B^T d */
                FC_NAME(wino_bt)(A, d + j * IL, (long)A * IL, tmp + j * IL, (long)A * IL);
            T *vout = V + ((long)lg * cig + ci) * IL;
            for (int i = 0; i < A; i++) /* rows: V = tmp B */
                FC_NAME(wino_bt)(A, tmp + i * A * IL, IL, vout + (long)i * A * vs, vs);
        }
    }

    if (!(phases & WINO_OUTPUT))
        return;
    /* 2. one GEMM per transform point: B panel (cig x NR) reused over the block's tile groups;
     * the first group's call brings the panel in from L3 / memory, with software prefetch */
    for (int xi = 0; xi < A * A; xi++)
        for (int cp = cp0; cp < cp1; cp++) {
            const T *Bp = U + ((long)xi * ncp + cp) * cig * NR;
            for (int tg = 0; tg < ntg; tg++) {
                const T *a = V + xi * vs + (long)(tg / 2) * cig * IL + (tg % 2) * MR;
                T *c = M + xi * ms + (long)tg * MR * ldc + (long)(cp - cp0) * NR;
                if (tg == 0)
                    UKR_PF(cig, a, IL, Bp, c, ldc);
                else
                    UKR(cig, a, IL, Bp, c, ldc);
            }
        }

    /* 3. output transform, WINO_OL output channels at a time */
    const int co0 = cp0 * NR, ncol = (cp1 * NR < cog ? cp1 * NR : cog) - co0;
    /* channel chunks outer, tiles inner: consecutive tiles fill the same few output lines (the
     * other order kept 4x more partially written lines live) */
    for (int cc = 0; cc < ncol; cc += WINO_OL)
    for (int tt = 0; tt < nt; tt++) {
        const long tg_ = t0 + tt;
        const int tl = (int)(tg_ % ntile), oy = (tl / tw) * m, ox = (tl % tw) * m;
        T *yi = y + (tg_ / ntile) * ys;
        const int rows = OH - oy < m ? OH - oy : m, cols = OW - ox < m ? OW - ox : m;
        {
            T tmp[AMAX * AMAX * WINO_OL], Y[AMAX * AMAX * WINO_OL];
            const T *mp = M + (long)tt * ldc + cc;
            for (int j = 0; j < A; j++) /* columns: tmp = A^T M */
                FC_NAME(wino_at)(m, A, mp + j * ms, A * ms, tmp + j * WINO_OL, (long)A * WINO_OL);
            for (int i = 0; i < m; i++) /* rows: Y = tmp A */
                FC_NAME(wino_at)(m, A, tmp + i * A * WINO_OL, WINO_OL, Y + i * m * WINO_OL, WINO_OL);
            const int nl = ncol - cc < WINO_OL ? ncol - cc : WINO_OL;
#ifdef WINO_STORE16
            if (m == 4 && nl == 16) {
                WINO_STORE16(Y, bias + co0 + cc, yi + (co0 + cc) * OHW + (long)oy * OW + ox, OHW, OW,
                             rows, cols);
                continue;
            }
#endif
            for (int l = 0; l < nl; l++) {
                const int co = co0 + cc + l;
                const T b = bias[co];
                T *yp = yi + co * OHW + (long)oy * OW + ox;
                if (rows == m && cols == m) {
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < m; j++) yp[(long)i * OW + j] = Y[(i * m + j) * WINO_OL + l] + b;
                } else {
                    for (int i = 0; i < rows; i++)
                        for (int j = 0; j < cols; j++) yp[(long)i * OW + j] = Y[(i * m + j) * WINO_OL + l] + b;
                }
            }
        }
    }
}

/* F(m x m, r x r) for (m, r) = (2, 3), (4, 3), (2, 5); A = m + r - 1.
 * Tiles t0 .. t0+nt-1 counted over all images (ntile per image, tw per row): image t / ntile.
 * x: channel 0 of the group in image 0 (images xs apart); U: [A*A][ncp][cig][NR] of the group;
 * bias: [cog] of the group; y: output channel 0 of the group in image 0 (images ys apart); V: >= A*A*(ceil(nt/MR)*MR*cig + WINO_PAD);
 * M: >= A*A*(ceil(nt/MR)*MR*(cp1-cp0)*NR + WINO_PAD) elements. `phases`: WINO_INPUT transforms
 * input channels [ci0, ci1) into V; WINO_OUTPUT runs the GEMMs and the output transform of
 * panels [cp0, cp1) from a complete V (both: one self-contained task). */
static void FC_NAME(wino_task)(int m, int r, const T *x, long xs, int H, int W, int cig, int pt, int pl,
                               int ntile, int tw, long t0, int nt, const T *U, int ncp, int cp0, int cp1,
                               const T *bias, T *y, long ys, int cog, int OH, int OW, T *V, T *M,
                               int ci0, int ci1, int phases)
{
#define WINO_CASE(mm, rr)                                                                          \
    FC_NAME(wino_task_m)(mm, rr, x, xs, H, W, cig, pt, pl, ntile, tw, t0, nt, U, ncp, cp0, cp1, bias, y, \
                    ys, cog, OH, OW, V, M, ci0, ci1, phases)
    if (r == 5)
        WINO_CASE(2, 5);
    else if (m == 2)
        WINO_CASE(2, 3);
    else
        WINO_CASE(4, 3);
#undef WINO_CASE
}

/* ---- weights (prepare): U = G w G^T, packed for the GEMM ------------------------------------
 * One panel of NR output channels of one group: u[xi*point + ci*NR + lane] = (G w G^T)[xi] of
 * w[lane][ci] (r x r, rows of cig*r*r), computed in double and rounded once; lanes nv..NR-1 (past
 * the group's last output channel) are zero. G is A x r, row-major. The inner loops run over
 * WU_L lanes with A and r constants, so gcc vectorises them and keeps the sums in registers;
 * WU_CI channels are staged so each point gets one contiguous run of WU_CI*NR values.
 * Measured, 512x512 3x3 F(4x4) weights (9.4 MB -> 37.7 MB), into memory already touched: 8.3 ms on
 * 1 thread, 4.8 ms on 2; the NumPy version (G @ w @ G.T per panel) took 42-70 ms, and a Cython
 * loop with the lane count known only at run time 30 ms on 1 thread (gcc vectorised the wrong
 * loops). Allocating fresh pages for U adds ~5 ms of page faults per 37.7 MB. */
#define WU_L 8   /* lanes per pass: one vector of doubles */
#define WU_CI 8  /* input channels staged per chunk */
static inline __attribute__((always_inline)) void
FC_NAME(wino_u_panel_ar)(const int A, const int r, const T *w, const double *G, long cig, int nv, T *u, long point)
{
    T stage[36 * WU_CI * NR];  /* [xi][channel of the chunk][lane] */
    for (long c0 = 0; c0 < cig; c0 += WU_CI) {
        const int nc = cig - c0 < WU_CI ? (int)(cig - c0) : WU_CI;
        for (int c = 0; c < nc; c++)
            for (int j0 = 0; j0 < NR; j0 += WU_L) {
                double wv[25][WU_L], t[6][5][WU_L];
                for (int j = 0; j < WU_L; j++) {
                    if (j0 + j >= nv) {  /* past the group's last output channel */
                        for (int k = 0; k < r * r; k++) wv[k][j] = 0.0;
                        continue;
                    }
                    const T *wk = w + ((long)(j0 + j) * cig + c0 + c) * r * r;
                    for (int k = 0; k < r * r; k++) wv[k][j] = (double)wk[k];
                }
                for (int a = 0; a < A; a++)          /* t = G w */
                    for (int l = 0; l < r; l++)
                        for (int j = 0; j < WU_L; j++) {
                            double s = 0;
                            for (int k = 0; k < r; k++) s += G[a * r + k] * wv[k * r + l][j];
                            t[a][l][j] = s;
                        }
                for (int a = 0; a < A; a++)          /* u = t G^T */
                    for (int b = 0; b < A; b++) {
                        T *sp = stage + ((a * A + b) * WU_CI + c) * NR + j0;
                        for (int j = 0; j < WU_L; j++) {
                            double s = 0;
                            for (int l = 0; l < r; l++) s += t[a][l][j] * G[b * r + l];
                            sp[j] = (T)s;
                        }
                    }
            }
        for (int xi = 0; xi < A * A; xi++)
            memcpy(u + xi * point + c0 * NR, stage + xi * WU_CI * NR, (size_t)nc * NR * sizeof(T));
    }
}

/* Returns 0, or -1 for an (A, r) that no tile built here has (then nothing is written). */
static int FC_NAME(wino_u_panel)(int A, int r, const T *w, const double *G, long cig, int nv, T *u, long point)
{
    if (A == 6 && r == 5)
        FC_NAME(wino_u_panel_ar)(6, 5, w, G, cig, nv, u, point);
    else if (A == 6 && r == 3)
        FC_NAME(wino_u_panel_ar)(6, 3, w, G, cig, nv, u, point);
    else if (A == 4 && r == 3)
        FC_NAME(wino_u_panel_ar)(4, 3, w, G, cig, nv, u, point);
    else
        return -1;
    return 0;
}
#undef WU_L
#undef WU_CI

#undef WLD
#undef WST
#undef WINO_OL
