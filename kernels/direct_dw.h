/* direct_dw.h — the depthwise kernels of direct_impl.h, included there once per element type
 * with T and SFX defined; names are FC_NAME(name), i.e. name_SFX. Not a standalone header.
 *
 * Depthwise plane (one input channel -> one output channel): output rows straight from the
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
/* rows [i0, OH) with any taps (offsets toff), stores that never leave the plane */
FC_NO_LIBCALLS static void FC_NAME(fc_direct_dw_rows)(const T *restrict xin, const ptrdiff_t *restrict toff,
                                                      ptrdiff_t ntap, const T *restrict wt, T bias,
                                                      T *restrict y, ptrdiff_t i0, ptrdiff_t OH, ptrdiff_t OW,
                                                      ptrdiff_t Wq) {
    typedef T vT __attribute__((vector_size(FC_VBYTES)));
    enum { VL = FC_VBYTES / sizeof(T), RB = 4 };
    for (; i0 < OH; i0 += RB) {
        ptrdiff_t row[RB];
        for (int r = 0; r < RB; r++) row[r] = i0 + r < OH ? i0 + r : OH - 1;
        for (ptrdiff_t j = (OW - 1) / VL * VL; j >= 0; j -= VL) {
            vT a[RB];
            #pragma GCC unroll 8
            for (int r = 0; r < RB; r++) a[r] = (vT){0} + bias;
            for (ptrdiff_t t = 0; t < ntap; t++) {
                const T w = wt[t];
                #pragma GCC unroll 8
                for (int r = 0; r < RB; r++) {
                    vT x;
                    memcpy(&x, xin + row[r] * Wq + toff[t] + j, sizeof x);
                    a[r] += w * x;
                }
            }
            #pragma GCC unroll 8
            for (int r = 0; r < RB; r++) {
                /* (y + row[r] * OW written out: a local pointer or one flat index compiles to
                 * other code) */
                if (j + VL <= (OH - row[r]) * OW) memcpy(y + row[r] * OW + j, &a[r], sizeof(vT));
                else {
                    T b[VL]; /* (indexing the vector itself would keep it in memory everywhere) */
                    memcpy(b, &a[r], sizeof b);
                    for (ptrdiff_t q = 0; q < OW - j && q < VL; q++) (y + row[r] * OW)[j + q] = b[q];
                }
            }
        }
    }
}

FC_NO_LIBCALLS static void FC_NAME(fc_direct_dw)(const T *restrict xin, const ptrdiff_t *restrict toff,
                                                 ptrdiff_t ntap, const T *restrict wt, T bias, T *restrict y,
                                                 ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t Wq, int s1k3) {
    typedef T vT __attribute__((vector_size(FC_VBYTES)));
    enum { VL = FC_VBYTES / sizeof(T), RB = 4 };
    const ptrdiff_t jlast = (OW - 1) / VL * VL;
    ptrdiff_t i0 = 0;
    if (s1k3) { /* 3x3, stride 1: input row i0+q feeds output rows i0+q-2 .. i0+q */
        vT wv[9];
        for (int t = 0; t < 9; t++) wv[t] = (vT){0} + wt[t];
        /* blocks whose last row's spill stays in the plane: plain stores */
        for (; i0 + RB <= OH && (OH - i0 - RB + 1) * OW >= jlast + VL; i0 += RB)
            for (ptrdiff_t j = jlast; j >= 0; j -= VL) {
                vT a[RB];
                #pragma GCC unroll 8
                for (int r = 0; r < RB; r++) a[r] = (vT){0} + bias;
                const T *restrict xb = xin + i0 * Wq + j;
                #pragma GCC unroll 8
                for (int q = 0; q < RB + 2; q++)
                    #pragma GCC unroll 8
                    for (int v = 0; v < 3; v++) {
                        vT x;
                        memcpy(&x, xb + q * Wq + v, sizeof x);
                        #pragma GCC unroll 8
                        for (int r = 0; r < RB; r++)
                            if (q - r >= 0 && q - r < 3) a[r] += wv[(q - r) * 3 + v] * x;
                    }
                #pragma GCC unroll 8
                for (int r = 0; r < RB; r++) memcpy(y + (i0 + r) * OW + j, &a[r], sizeof(vT));
            }
    }
    if (i0 < OH) FC_NAME(fc_direct_dw_rows)(xin, toff, ntap, wt, bias, y, i0, OH, OW, Wq);
}
