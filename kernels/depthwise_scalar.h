/* depthwise_scalar.h — the contract of depthwise_body.h as a plain loop, for builds without
 * AVX-512; included by depthwise_impl.h once per dtype with T and SFX defined. */
static void FC_NAME(fc_depthwise)(const T *restrict x, const T *restrict w, const T *restrict b, T *restrict y,
                             const T *restrict zrow, void *tapbuf, const ptrdiff_t *flat_off, const void *flat_mask,
                             ptrdiff_t NP, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW,
                             int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int nthreads) {
    (void)zrow;
    (void)tapbuf;
    (void)flat_off;
    (void)flat_mask;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (ptrdiff_t i = 0; i < NP; i++) {
        ptrdiff_t c = i % C;
        const T *xp = x + i * H * W, *wc = w + c * kh * kw;
        T *yp = y + i * OH * OW;
        for (ptrdiff_t oy = 0; oy < OH; oy++)
            for (ptrdiff_t ox = 0; ox < OW; ox++) {
                T s = b ? b[c] : (T)0;
                for (int ky = 0; ky < kh; ky++) {
                    ptrdiff_t iy = oy * sh - ph + (ptrdiff_t)ky * dh;
                    if (iy < 0 || iy >= H) continue;
                    for (int kx = 0; kx < kw; kx++) {
                        ptrdiff_t ix = ox * sw - pw + (ptrdiff_t)kx * dw;
                        if (ix >= 0 && ix < W) s += wc[ky * kw + kx] * xp[iy * W + ix];
                    }
                }
                yp[oy * OW + ox] = s;
            }
    }
}
