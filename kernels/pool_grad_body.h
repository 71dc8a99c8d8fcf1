/* pool_grad_body.h — body of pool_grad_impl.h, included once per dtype with T (float/double) and
 * SFX (f/d) defined. Not a standalone header. */

/* d[argmax(o)] += g[o] for each output o of one plane in row-major order (d zeroed first), the
 * argmax recomputed from the input plane x and the pooled plane y (see pool_grad_impl.h). */
static void FC_NAME(fpg_max_recompute_plane)(const T *restrict x, const T *restrict y, const T *restrict g,
                                              T *restrict d, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW,
                                              int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw) {
    memset(d, 0, (size_t)(H * W) * sizeof(T));
    for (ptrdiff_t i = 0; i < OH; i++) {
        const ptrdiff_t hs = i * sh - ph;
        int u0 = 0, u1 = kh; /* taps u in [u0, u1) are rows inside the input */
        while (u0 < kh && hs + (ptrdiff_t)u0 * dh < 0) u0++;
        while (u1 > u0 && hs + (ptrdiff_t)(u1 - 1) * dh >= H) u1--;
        for (ptrdiff_t j = 0; j < OW; j++) {
            const ptrdiff_t ws = j * sw - pw;
            int v0 = 0, v1 = kw;
            while (v0 < kw && ws + (ptrdiff_t)v0 * dw < 0) v0++;
            while (v1 > v0 && ws + (ptrdiff_t)(v1 - 1) * dw >= W) v1--;
            if (u0 >= u1 || v0 >= v1) continue;
            const T m = y[i * OW + j];
            ptrdiff_t best_i = (hs + (ptrdiff_t)u0 * dh) * W + ws + (ptrdiff_t)v0 * dw;
            if (m == m) { /* the first tap equal to the maximum: scanned backwards, the last hit wins */
                for (int u = u1 - 1; u >= u0; u--) {
                    const ptrdiff_t row = (hs + (ptrdiff_t)u * dh) * W + ws;
                    for (int v = v1 - 1; v >= v0; v--) {
                        const ptrdiff_t at = row + (ptrdiff_t)v * dw;
                        best_i = x[at] == m ? at : best_i;
                    }
                }
            } else { /* a NaN maximum: the last NaN tap */
                for (int u = u0; u < u1; u++) {
                    const ptrdiff_t row = (hs + (ptrdiff_t)u * dh) * W + ws;
                    for (int v = v0; v < v1; v++) {
                        const ptrdiff_t at = row + (ptrdiff_t)v * dw;
                        best_i = x[at] != x[at] ? at : best_i;
                    }
                }
            }
            d[best_i] += g[i * OW + j];
        }
    }
}
