/* depthwise_body.h — the depthwise convolution of one dtype; included by depthwise_impl.h once per
 * dtype with these defined, and undefined again at its end (not a standalone header):
 *
 *   T, SFX the element type and its suffix (float f32, double f64): names are FC_NAME(name) (_common.h)
 *   VI     the gather index vector (32-bit lanes), DGIDX(s) its lanes i*s
 *   VL     lanes per vector (16, 8)              DM        the lane mask type (__mmask16, __mmask8)
 *   V      the vector type                       DMASK(lo, hi)  lanes [lo, hi) of a mask, as DM
 *   DLOAD(m, p), DFMA(a, b, c), DSET1(s), DSTORE(p, m, v), DPERM2(a, idx, b), DGATHER(m, idx, p)
 *   DEVEN  the lane indices 0, 2, 4, ... (2 VL - 2) that pick the even lanes of a two-vector span
 *
 * One plane (image n, channel c) is y[oy][ox] = b + sum_{ky,kx} w[ky][kx] x[oy*sh-ph+ky*dh][ox*sw-pw+kx*dw].
 * Vectors run along an output row (VL output columns); each tap of a row is one masked load from
 * the input row (stride 1), two masked loads and a permute that keeps the even lanes (stride 2),
 * or a masked gather (larger strides). The load masks drop the columns that fall in the padding,
 * so the plane is read in place: no packed copy, no padded buffer. Input rows above or below the
 * plane read a row of zeros instead (`zrow`), which keeps the row loop free of branches.
 * DW_ROWS output rows go together: their accumulators are independent FMA chains, which hides
 * the FMA latency (a single chain of kh*kw dependent FMAs per vector would wait on each one).
 */

#define DW_ROWS 4

/* The input columns that tap kx of the vector starting at output column ox0 reads: a mask per
 * load (one for stride 1, two for stride 2, the gather's for larger strides) and the offset of
 * the first column read. The masks depend on the column chunk and kx only, never on the row. */
typedef struct {
    ptrdiff_t off;
    DM m0, m1;
} FC_NAME(fc_dw_tap);

static inline void FC_NAME(fc_dw_taps)(FC_NAME(fc_dw_tap) *taps, ptrdiff_t ox0, ptrdiff_t nout, ptrdiff_t W,
                                  int kw, int sw, int pw, int dw) {
    for (int kx = 0; kx < kw; kx++) {
        ptrdiff_t base = ox0 * sw - pw + (ptrdiff_t)kx * dw;
        taps[kx].off = base;
        if (sw == 1) {
            /* lanes i < nout with 0 <= base + i < W */
            ptrdiff_t lo = base < 0 ? -base : 0, hi = W - base < nout ? W - base : nout;
            taps[kx].m0 = DMASK(lo, hi);
            taps[kx].m1 = 0;
        } else if (sw == 2) {
            /* positions base + j of the two-vector span, j < 2*nout - 1, inside the row */
            ptrdiff_t lo = base < 0 ? -base : 0, hi = W - base < 2 * nout - 1 ? W - base : 2 * nout - 1;
            ptrdiff_t lo0 = lo < VL ? lo : VL, hi0 = hi < VL ? hi : VL;
            ptrdiff_t lo1 = lo > VL ? lo - VL : 0, hi1 = hi > VL ? hi - VL : 0;
            taps[kx].m0 = DMASK(lo0, hi0);
            taps[kx].m1 = DMASK(lo1, hi1);
        } else {
            /* gather lanes i < nout with 0 <= base + i*sw < W */
            DM m = 0;
            for (ptrdiff_t i = 0; i < nout; i++) {
                ptrdiff_t c = base + i * sw;
                if (c >= 0 && c < W) m |= (DM)((DM)1 << i);
            }
            taps[kx].m0 = m;
            taps[kx].m1 = 0;
        }
    }
}

/* Tap values of one input row for the VL output columns `t` describes; SW is 1, 2 or 0 (any
 * other stride), a constant where it is called. */
static inline __attribute__((always_inline)) V FC_NAME(fc_dw_load)(const T *row, const FC_NAME(fc_dw_tap) *t, int SW,
                                                             VI gidx) {
    if (SW == 1) return DLOAD(t->m0, row + t->off);
    if (SW == 2) return DPERM2(DLOAD(t->m0, row + t->off), DEVEN, DLOAD(t->m1, row + t->off + VL));
    return DGATHER(t->m0, gidx, row + t->off);
}

/* R output rows from oy of one column chunk (R <= DW_ROWS and SW: constants where it is called, so
 * the loops over r unroll, the accumulators stay in registers and the load has no branch). */
static inline __attribute__((always_inline)) void FC_NAME(fc_dw_rows)(
    const T *restrict x, const T *restrict zrow, const T *restrict w, T bias, T *restrict y, ptrdiff_t oy,
    int R, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OW, const FC_NAME(fc_dw_tap) *taps, ptrdiff_t ox0, DM store,
    int kh, int kw, int sh, int SW, int ph, int dh, VI gidx) {
    V acc[DW_ROWS];
    for (int r = 0; r < R; r++) acc[r] = DSET1(bias);
    for (int ky = 0; ky < kh; ky++) {
        const T *row[DW_ROWS];
        for (int r = 0; r < R; r++) {
            ptrdiff_t iy = (oy + r) * sh - ph + (ptrdiff_t)ky * dh;
            row[r] = (iy >= 0 && iy < H) ? x + iy * W : zrow;
        }
        for (int kx = 0; kx < kw; kx++) {
            V wv = DSET1(w[ky * kw + kx]);
            for (int r = 0; r < R; r++) acc[r] = DFMA(FC_NAME(fc_dw_load)(row[r], &taps[kx], SW, gidx), wv, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) DSTORE(y + (oy + r) * OW + ox0, store, acc[r]);
}

/* One plane at stride class SW (1, 2, or 0: any other), a constant where it is called. */
static inline __attribute__((always_inline)) void FC_NAME(fc_dw_plane_sw)(
    const T *restrict x, const T *restrict zrow, const T *restrict w, T bias, T *restrict y, ptrdiff_t H,
    ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw, int ph, const FC_NAME(fc_dw_tap) *tab,
    int dh, int SW) {
    VI gidx = DGIDX(sw);
    for (ptrdiff_t ox0 = 0; ox0 < OW; ox0 += VL) {
        ptrdiff_t nout = OW - ox0 < VL ? OW - ox0 : VL;
        DM store = DMASK(0, nout);
        const FC_NAME(fc_dw_tap) *taps = tab + (ox0 / VL) * kw;
        ptrdiff_t oy = 0;
        for (; oy + DW_ROWS <= OH; oy += DW_ROWS)
            FC_NAME(fc_dw_rows)(x, zrow, w, bias, y, oy, DW_ROWS, H, W, OW, taps, ox0, store, kh, kw, sh, SW, ph, dh, gidx);
        switch (OH - oy) {
        case 3:
            FC_NAME(fc_dw_rows)(x, zrow, w, bias, y, oy, 3, H, W, OW, taps, ox0, store, kh, kw, sh, SW, ph, dh, gidx);
            break;
        case 2:
            FC_NAME(fc_dw_rows)(x, zrow, w, bias, y, oy, 2, H, W, OW, taps, ox0, store, kh, kw, sh, SW, ph, dh, gidx);
            break;
        case 1:
            FC_NAME(fc_dw_rows)(x, zrow, w, bias, y, oy, 1, H, W, OW, taps, ox0, store, kh, kw, sh, SW, ph, dh, gidx);
            break;
        default:
            break;
        }
    }
}

/* One plane; `tab` holds the taps of every column chunk (kw per chunk, fc_dw_taps). */
static void FC_NAME(fc_dw_plane)(const T *restrict x, const T *restrict zrow, const T *restrict w, T bias,
                            T *restrict y, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, int kh, int kw,
                            int sh, int sw, int ph, int dh, const FC_NAME(fc_dw_tap) *tab) {
    if (sw == 1)
        FC_NAME(fc_dw_plane_sw)(x, zrow, w, bias, y, H, W, OH, OW, kh, kw, sh, sw, ph, tab, dh, 1);
    else if (sw == 2)
        FC_NAME(fc_dw_plane_sw)(x, zrow, w, bias, y, H, W, OH, OW, kh, kw, sh, sw, ph, tab, dh, 2);
    else
        FC_NAME(fc_dw_plane_sw)(x, zrow, w, bias, y, H, W, OH, OW, kh, kw, sh, sw, ph, tab, dh, 0);
}

/* R vectors of a flat plane from vector j (R <= DW_ROWS: a constant where it is called). */
static inline __attribute__((always_inline)) void FC_NAME(fc_dw_flat_block)(
    const T *restrict x, const T *restrict w, T bias, T *restrict y, ptrdiff_t j, int R, ptrdiff_t HW,
    const ptrdiff_t *restrict off, const DM *restrict mask, int ntap) {
    V acc[DW_ROWS];
    for (int r = 0; r < R; r++) acc[r] = DSET1(bias);
    for (int t = 0; t < ntap; t++) {
        V wv = DSET1(w[t]);
        for (int r = 0; r < R; r++)
            acc[r] = DFMA(DLOAD(mask[(j + r) * ntap + t], x + (j + r) * VL + off[t]), wv, acc[r]);
    }
    for (int r = 0; r < R; r++) {
        ptrdiff_t left = HW - (j + r) * VL;
        DSTORE(y + (j + r) * VL, DMASK(0, left < VL ? left : VL), acc[r]);
    }
}

/* A stride-1 plane whose output has the input's size ("same" padding): output position o of the
 * flattened plane reads input o + off[t] for tap t, so whole vectors run across row ends (a 7x7
 * plane is 4 vectors instead of 7 part-filled rows). mask[j*ntap + t] keeps the lanes of vector j
 * whose tap t falls inside the plane (built once per layer shape by `prepare`). */
static void FC_NAME(fc_dw_flat_plane)(const T *restrict x, const T *restrict w, T bias, T *restrict y, ptrdiff_t HW,
                                 const ptrdiff_t *restrict off, const DM *restrict mask, int ntap) {
    ptrdiff_t nv = (HW + VL - 1) / VL, j = 0;
    for (; j + DW_ROWS <= nv; j += DW_ROWS) FC_NAME(fc_dw_flat_block)(x, w, bias, y, j, DW_ROWS, HW, off, mask, ntap);
    switch (nv - j) {
    case 3:
        FC_NAME(fc_dw_flat_block)(x, w, bias, y, j, 3, HW, off, mask, ntap);
        break;
    case 2:
        FC_NAME(fc_dw_flat_block)(x, w, bias, y, j, 2, HW, off, mask, ntap);
        break;
    case 1:
        FC_NAME(fc_dw_flat_block)(x, w, bias, y, j, 1, HW, off, mask, ntap);
        break;
    default:
        break;
    }
}

/* Every plane of x (NP = N*C planes of H x W; weight plane and bias of plane i: channel i % C),
 * shared out over nthreads in contiguous runs. With `flat_mask` (a "same" stride-1 layer, see
 * fc_dw_flat_plane) the planes run flat; otherwise row by row, `zrow` holding W zeros and
 * `tapbuf` room for the taps of every column chunk (fc_depthwise_tap_bytes), filled here once. */
static void FC_NAME(fc_depthwise)(const T *restrict x, const T *restrict w, const T *restrict b, T *restrict y,
                             const T *restrict zrow, void *tapbuf, const ptrdiff_t *flat_off, const void *flat_mask,
                             ptrdiff_t NP, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW,
                             int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int nthreads) {
    FC_NAME(fc_dw_tap) *tab = (FC_NAME(fc_dw_tap) *)tapbuf;
    if (!flat_mask)
        for (ptrdiff_t ox0 = 0; ox0 < OW; ox0 += VL)
            FC_NAME(fc_dw_taps)(tab + (ox0 / VL) * kw, ox0, OW - ox0 < VL ? OW - ox0 : VL, W, kw, sw, pw, dw);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (ptrdiff_t i = 0; i < NP; i++) {
        ptrdiff_t c = i % C;
        if (flat_mask)
            FC_NAME(fc_dw_flat_plane)(x + i * H * W, w + c * kh * kw, b ? b[c] : (T)0, y + i * OH * OW, H * W, flat_off,
                                 (const DM *)flat_mask, kh * kw);
        else
            FC_NAME(fc_dw_plane)(x + i * H * W, zrow, w + c * kh * kw, b ? b[c] : (T)0, y + i * OH * OW, H, W, OH, OW,
                            kh, kw, sh, sw, ph, dh, tab);
    }
}

/* the parameters above are this include's alone: the next dtype defines its own */
#undef T
#undef SFX
#undef VL
#undef V
#undef VI
#undef DM
#undef DMASK
#undef DLOAD
#undef DSTORE
#undef DFMA
#undef DSET1
#undef DPERM2
#undef DEVEN
#undef DGIDX
#undef DGATHER
#undef DW_ROWS
