/* gemm_pw_impl.h — body of the packed pointwise (1x1) GEMM, included by gemm_pointwise.h once per
 * dtype with T, SFX (f32, f64), NR (= 3 vectors of T) and the micro-kernels UKR1, UKR2, UKR3
 * (8 x 1, 2, 3 vectors, gemm_ukernel.h) defined; it undefines them at its end. Not a standalone
 * header.
 *
 * out[n][co][p] = bias[co] + sum_ci W[co][ci] x[n][ci][src(p)] for one group, where the output
 * pixels of all images form one column space j = n*P + p (P = OH*OW), so a batch of small maps
 * fills whole NR-column panels. One task = output-channel rows [m0, m1) x columns [j0, j1):
 *   1. pack x's columns [j0, j1) as B panels [ceil(nc/NR)][K][NR] (zero-padded) into buf;
 *   2. for each MR-row panel of W (packed once in prepare: [ceil(M/MR)][K][MR]) and each B panel:
 *      one micro-kernel call over the whole K, the bias as the accumulators' initial value. A panel
 *      inside one image is written straight into out (row stride P); one that crosses images (or
 *      small maps, P < NR) goes through a tile buffer and is scattered.
 * The caller sizes [j0, j1) so that the packed B (K x nc) stays in L2 while W's panels stream
 * past it once: each task reads its rows of W once, from L3 or memory.
 */

/* wp[(i/MR)*K*MR + k*MR + i%MR] = w[i*K + k]; zero rows past M. */
static void FC_NAME(fc_pw_pack_w)(const T *w, int M, int K, T *wp)
{
    const int np = (M + FC_PW_MR - 1) / FC_PW_MR;
    for (int p = 0; p < np; p++)
        for (int k = 0; k < K; k++)
            for (int r = 0; r < FC_PW_MR; r++) {
                const int i = p * FC_PW_MR + r;
                wp[((size_t)p * K + k) * FC_PW_MR + r] = i < M ? w[(size_t)i * K + k] : (T)0;
            }
}

/* x: channel 0 of the group in image 0 (images xs apart, channels H*W apart); the output pixel
 * p = (oy, ox) reads x at oy*sh*W + ox*sw. y: output channel 0 of the group in image 0 (images
 * ys apart, channels P apart). wp: the group's packed W. bias: M values or NULL. buf: at least
 * K * ceil((j1-j0)/NR)*NR + MR*NR elements. */
static void FC_NAME(fc_pw_task)(int M, int K, const T *x, long xs, long HW, int W, int OW, long P, int sh,
                              int sw, const T *wp, const T *bias, T *y, long ys, int m0, int m1, long j0,
                              long j1, T *buf, int pack)
{
    const long nc = j1 - j0;
    const int nq = (int)((nc + NR - 1) / NR);
    T *tile = buf + (size_t)nq * K * NR;
    const int unit = sh == 1 && sw == 1 && OW == W; /* an output row run is an input row run */

    /* 1. pack (unless buf holds these columns already): runs of columns that stay in one image,
     * one output row (strided) and one panel */
    for (long s = j0; pack && s < j1;) {
        const long n = s / P, p = s - n * P;
        const long oy = p / OW, ox = p - oy * OW;
        const long q = (s - j0) / NR, off = (s - j0) - q * NR;
        long len = unit ? P - p : OW - ox;
        len = len < j1 - s ? len : j1 - s;
        len = len < NR - off ? len : NR - off;
        const T *src = x + n * xs + oy * sh * W + ox * sw;
        T *dst = buf + (size_t)q * K * NR + off;
        if (sw == 1)
            for (int k = 0; k < K; k++) memcpy(dst + (size_t)k * NR, src + k * HW, (size_t)len * sizeof(T));
        else
            for (int k = 0; k < K; k++)
                for (long c = 0; c < len; c++) dst[(size_t)k * NR + c] = src[k * HW + c * sw];
        s += len;
    }
    if (pack && nc % NR) /* zero the padding columns of the last panel */
        for (int k = 0; k < K; k++)
            memset(buf + ((size_t)(nq - 1) * K + k) * NR + nc % NR, 0, (size_t)(NR - nc % NR) * sizeof(T));

    /* 2. multiply */
    T bias_pad[FC_PW_MR];
    for (int p = m0 / FC_PW_MR; p * FC_PW_MR < m1; p++) {
        const T *a = wp + (size_t)p * K * FC_PW_MR;
        const int mr = M - p * FC_PW_MR < FC_PW_MR ? M - p * FC_PW_MR : FC_PW_MR;
        const T *bb = bias ? bias + p * FC_PW_MR : NULL;
        if (bb && mr < FC_PW_MR) { /* never read bias past M */
            memset(bias_pad, 0, sizeof bias_pad);
            memcpy(bias_pad, bb, (size_t)mr * sizeof(T));
            bb = bias_pad;
        }
        const int mode = bb ? FC_UKR_BIAS : FC_UKR_SET;
        for (int q = 0; q < nq; q++) {
            const T *b = buf + (size_t)q * K * NR;
            const long ja = j0 + (long)q * NR;
            const int nr = j1 - ja < NR ? (int)(j1 - ja) : NR;
            const long n = ja / P, pix = ja - n * P;
            const int direct = pix + nr <= P;
            T *c = direct ? y + n * ys + (long)p * FC_PW_MR * P + pix : tile;
            const long ldc = direct ? P : NR;
            if (nr > 2 * (NR / 3))
                UKR3(K, a, FC_PW_MR, b, NR, c, ldc, bb, mode, mr, nr, 0);
            else if (nr > NR / 3)
                UKR2(K, a, FC_PW_MR, b, NR, c, ldc, bb, mode, mr, nr, 0);
            else
                UKR1(K, a, FC_PW_MR, b, NR, c, ldc, bb, mode, mr, nr, 0);
            if (!direct) /* scatter the tile's columns to their images */
                for (int cc = 0; cc < nr;) {
                    const long jj = ja + cc, nn = jj / P, pp = jj - nn * P;
                    const int len = P - pp < nr - cc ? (int)(P - pp) : nr - cc;
                    T *o = y + nn * ys + (long)p * FC_PW_MR * P + pp;
                    for (int r = 0; r < mr; r++)
                        memcpy(o + (long)r * P, tile + r * NR + cc, (size_t)len * sizeof(T));
                    cc += len;
                }
        }
    }
}

/* Thread c of nt: its share of the groups x chunks x row blocks tasks, in that order (a thread's
 * consecutive tasks of one chunk pack it once). Chunks of nc columns over the n*P columns, row
 * blocks of mstep rows (a multiple of MR). wp: groups' packed W, wps elements apart; x, y, bias
 * as in fc_pw_task, for group 0 (groups K*HW / M*P / M elements apart). */
static void FC_NAME(fc_pw_thread)(int c, int nt, int groups, int n, int M, int K, const T *x, long xs, long HW,
                                int W, int OW, long P, int sh, int sw, const T *wp, long wps, const T *bias,
                                T *y, long ys, long nc, int mstep, T *buf)
{
    const long J = (long)n * P, nch = (J + nc - 1) / nc, nmb = (M + mstep - 1) / mstep;
    const long ntask = groups * nch * nmb, t0 = ntask * c / nt, t1 = ntask * (c + 1) / nt;
    long packed = -1;
    for (long t = t0; t < t1; t++) {
        const long mb = t % nmb, gc = t / nmb, ch = gc % nch, g = gc / nch;
        const long j0 = ch * nc, j1 = j0 + nc < J ? j0 + nc : J;
        const int m0 = (int)mb * mstep, m1 = m0 + mstep < M ? m0 + mstep : M;
        FC_NAME(fc_pw_task)(M, K, x + g * K * HW, xs, HW, W, OW, P, sh, sw, wp + g * wps,
                          bias ? bias + g * M : NULL, y + g * M * P, ys, m0, m1, j0, j1, buf, gc != packed);
        packed = gc;
    }
}

/* ---- the transposed GEMM, for few output pixels (small maps, SE / classifier-like 1x1 maps):
 * out[n][co][p] as C[j][co], j = n*P + p the rows (8 per tile, broadcast; the rows left over on
 * a 1-, 4- or 8-row tile) and the output channels the columns (NRT = 2 vectors, loaded from W^T
 * packed in prepare as [ceil(M/NRT)][K][NRT]). Rows waste less than columns do (49 pixels:
 * 6 x 8 + 1 rows, all used, against 48 + 16 columns = 77%; one pixel: the 1-row tile), and the
 * threads split the channel panels, so each reads its part of W once. The tiles are stored
 * transposed (+ bias) into out: NRT scalar stores per row per K-long loop. */
static void FC_NAME(fc_pwt_pack_w)(const T *w, int M, int K, T *wt)
{
    const int np = (M + NRT - 1) / NRT;
    for (int q = 0; q < np; q++)
        for (int k = 0; k < K; k++)
            for (int c = 0; c < NRT; c++) {
                const int i = q * NRT + c;
                wt[((size_t)q * K + k) * NRT + c] = i < M ? w[(size_t)i * K + k] : (T)0;
            }
}

/* Thread c of nt: its share of the groups x output-channel panels, all J = n*P rows: panels of
 * 8 rows, the last one of the rows left over (1, 4 or 8 of them, so 49 pixels compute 49 + 0
 * rows, not 56). buf (64-byte aligned): the rows' offsets in x (ceil(J/8)*8 longs, rounded up to
 * 64 bytes), x packed as row panels [ceil(J/8)][K][8] (the last one [K][its rows]; by each thread,
 * for its own channel panels), the rows' C tiles (ceil(J/8)*8 x NRT). Other arguments as
 * fc_pw_task. */
static void FC_NAME(fc_pwt_thread)(int c, int nt, int groups, int n, int M, int K, const T *x, long xs, long HW,
                                 int W, int OW, long P, int sh, int sw, const T *wt, long wts, const T *bias,
                                 T *y, long ys, T *buf)
{
    const long J = (long)n * P, nrp = (J + 7) / 8;
    const int rem = (int)(J - (nrp - 1) * 8), mrl = rem == 1 ? 1 : rem <= 4 ? 4 : 8; /* last panel */
    const int np = (M + NRT - 1) / NRT;
    const long ntask = (long)groups * np, t0 = ntask * c / nt, t1 = ntask * (c + 1) / nt;
    long *off = (long *)buf; /* the rows' offsets in x (buf is 64-byte aligned) */
    T *xb = (T *)((char *)buf + ((nrp * 8 * sizeof(long) + 63) & ~(size_t)63));
    T *ctile = xb + (size_t)nrp * 8 * K;
    long packed = -1;
    for (long t = t0; t < t1; t++) {
        const long g = t / np;
        const int q = (int)(t - g * np);
        const T *xg = x + g * K * HW;
        if (g != packed) { /* pack this group's x: row j of panel rp = j/8 at [rp][k][j%8] */
            for (long j = 0; j < nrp * 8; j++) { /* each row's offset in x, once (-1: padding) */
                const long nn = j / P, p = j - nn * P, oy = p / OW, ox = p - oy * OW;
                off[j] = j < J ? nn * xs + oy * sh * W + ox * sw : -1;
            }
            for (long rp = 0; rp < nrp; rp++) {
                const int mr = rp == nrp - 1 ? mrl : 8;
                T *d = xb + (size_t)rp * K * 8;
                for (int r = 0; r < mr; r++) {
                    const long o = off[rp * 8 + r];
                    if (o < 0)
                        for (int k = 0; k < K; k++) d[(size_t)k * mr + r] = 0;
                    else
                        for (int k = 0; k < K; k++) d[(size_t)k * mr + r] = xg[o + k * HW];
                }
            }
            packed = g;
        }
        const T *b = wt + g * wts + (size_t)q * K * NRT;
        const int nc = M - q * NRT < NRT ? M - q * NRT : NRT;
        /* K in blocks of FC_PWT_KC: the block's slice of the W^T panel (KC x NRT) stays in L1
         * while every row panel passes over it; the rows' tiles accumulate in ctile */
        for (int k0 = 0; k0 < K; k0 += FC_PWT_KC) {
            const int kc = K - k0 < FC_PWT_KC ? K - k0 : FC_PWT_KC;
            const int mode = k0 ? FC_UKR_ACC : FC_UKR_SET;
            const T *bk = b + (size_t)k0 * NRT;
            for (long rp = 0; rp < nrp; rp++) {
                const int mr = rp == nrp - 1 ? mrl : 8;
                const T *a = xb + (size_t)rp * K * 8 + (size_t)k0 * mr;
                T *ct = ctile + (size_t)rp * 8 * NRT;
                if (mr == 1)
                    UKT1(kc, a, 1, bk, NRT, ct, NRT, NULL, mode, 1, NRT, 0);
                else if (mr == 4)
                    UKT4(kc, a, 4, bk, NRT, ct, NRT, NULL, mode, 4, NRT, 0);
                else
                    UKT8(kc, a, 8, bk, NRT, ct, NRT, NULL, mode, 8, NRT, 0);
            }
        }
        const T *bb = bias ? bias + g * M + q * NRT : NULL;
        for (long j = 0; j < J; j++) {
            const long nn = j / P, p = j - nn * P;
            T *o = y + g * M * P + nn * ys + (long)q * NRT * P + p;
            for (int cc = 0; cc < nc; cc++) o[cc * P] = ctile[j * NRT + cc] + (bb ? bb[cc] : (T)0);
        }
    }
}

/* the parameters of this include end here: the next dtype defines its own */
#undef T
#undef SFX
#undef NR
#undef UKR1
#undef UKR2
#undef UKR3
#undef NRT
#undef UKT1
#undef UKT4
#undef UKT8
