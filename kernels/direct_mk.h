/* direct_mk.h — the register-blocked micro-kernels of direct_impl.h (which documents them) for CB
 * output channels and NV vectors per chunk, included by direct_body.h once per (CB, NV) with T,
 * SFX, CB and NV defined; names are DIRECT_CB(name, CB), i.e. name_SFX_CB. Not a standalone
 * header.
 *
 * Both kernels write out the same tap loop (CB * NV FMAs per tap on NV loaded vectors): as an
 * always_inline function of its own it compiled fc_direct_rows to other register assignments
 * (gcc 12), and these are the hottest loops of the direct algorithm. */

/* one micro-kernel: acc[c*lda + p] for p in [0, np rounded up) */
static void DIRECT_CB(fc_direct_mk, CB)(const T *restrict xin, const ptrdiff_t *restrict toff, ptrdiff_t ntap,
                                        const T *restrict wb, T *restrict acc, ptrdiff_t lda, ptrdiff_t np) {
    typedef FC_NAME(fc_vec) vT;
    enum { VL = FC_VBYTES / sizeof(T), CH = NV * VL };
    for (ptrdiff_t p = 0; p < np; p += CH) {
        vT a[CB][NV];
        const T *xp[NV];
        for (int k = 0; k < NV; k++) xp[k] = xin + p + k * VL;
        for (int c = 0; c < CB; c++)
            for (int k = 0; k < NV; k++) a[c][k] = (vT){0};
        for (ptrdiff_t t = 0; t < ntap; t++) { /* the heart: every tap of the chunk */
            const T *restrict wt = wb + t * CB;
            vT xv[NV];
            for (int k = 0; k < NV; k++) memcpy(&xv[k], xp[k] + toff[t], sizeof(vT));
            for (int c = 0; c < CB; c++) {
                const T w = wt[c];
                for (int k = 0; k < NV; k++) a[c][k] += w * xv[k];
            }
        }
        for (int c = 0; c < CB; c++)
            for (int k = 0; k < NV; k++) memcpy(acc + c * lda + p + k * VL, &a[c][k], sizeof(vT));
    }
}

/* The same for whole output rows [i0, i1) of a width OW that is a multiple of the vector: the
 * accumulators start at the bias and go straight into y's rows, so nothing is extracted. Chunks
 * of NV vectors along a row; the vectors left at the rows' ends (OW mod NV*VL) are gathered
 * NV at a time across rows, so they run at the full chunk's ratio of FMAs to loads too. */
static void DIRECT_CB(fc_direct_rows, CB)(const T *restrict xin, const ptrdiff_t *restrict toff, ptrdiff_t ntap,
                                          const T *restrict wb, const T *restrict bias, int cvalid,
                                          T *restrict y, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t Wq, ptrdiff_t i0,
                                          ptrdiff_t i1) {
    typedef FC_NAME(fc_vec) vT;
    enum { VL = FC_VBYTES / sizeof(T), CH = NV * VL };
    const ptrdiff_t jt = OW / CH * CH;       /* the row's end vectors start at column jt */
    const ptrdiff_t nend = (OW - jt) / VL * (i1 - i0); /* end vectors of all the rows */
    for (ptrdiff_t q = 0; q < (i1 - i0) * (jt / CH) + (nend + NV - 1) / NV; q++) {
        const T *xp[NV];
        T *yp[NV];
        int nv = NV;
        if (q < (i1 - i0) * (jt / CH)) { /* a chunk along row i */
            const ptrdiff_t i = i0 + q / (jt / CH), j = q % (jt / CH) * CH;
            for (int k = 0; k < NV; k++) {
                xp[k] = xin + i * Wq + j + k * VL;
                yp[k] = y + i * OW + j + k * VL;
            }
        } else { /* end vectors e, e+1, ...: row i0 + e / per, column jt + e % per * VL */
            const ptrdiff_t per = (OW - jt) / VL, e0 = (q - (i1 - i0) * (jt / CH)) * NV;
            nv = nend - e0 < NV ? (int)(nend - e0) : NV;
            for (int k = 0; k < NV; k++) {
                const ptrdiff_t e = e0 + (k < nv ? k : 0);
                const ptrdiff_t i = i0 + e / per, j = jt + e % per * VL;
                xp[k] = xin + i * Wq + j;
                yp[k] = y + i * OW + j;
            }
        }
        vT a[CB][NV];
        for (int c = 0; c < CB; c++)
            for (int k = 0; k < NV; k++) a[c][k] = (vT){0} + bias[c];
        for (ptrdiff_t t = 0; t < ntap; t++) {
            const T *restrict wt = wb + t * CB;
            vT xv[NV];
            for (int k = 0; k < NV; k++) memcpy(&xv[k], xp[k] + toff[t], sizeof(vT));
            for (int c = 0; c < CB; c++) {
                const T w = wt[c];
                for (int k = 0; k < NV; k++) a[c][k] += w * xv[k];
            }
        }
        for (int c = 0; c < cvalid; c++)
            for (int k = 0; k < nv; k++) memcpy(yp[k] + c * OH * OW, &a[c][k], sizeof(vT));
    }
}
