/* pool_body.h — the per-plane pooling kernels of pool_impl.h (which documents them), included
 * there once per element type with T, SFX, IT and POOL_SIMD defined; names are FC_NAME(name),
 * i.e. name_SFX. Not a standalone header. */

#if !POOL_SIMD
/* this type has no SIMD special case: every plane takes the generic path */
static inline int FC_NAME(fc_maxpool_3x3s2)(const T *x, T *y, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH,
                                            ptrdiff_t OW, int p) {
    (void)x; (void)y; (void)H; (void)W; (void)OH; (void)OW; (void)p;
    return 0;
}
static inline int FC_NAME(fc_avg3s1p1)(const T *x, T *y, ptrdiff_t H, ptrdiff_t W, const double *hdiv,
                                       const double *winv) {
    (void)x; (void)y; (void)H; (void)W; (void)hdiv; (void)winv;
    return 0;
}
#endif

/* Output columns [*j0, *j1) whose kw taps (spaced dw) all lie inside a row of W. */
static inline void FC_NAME(fc_interior)(ptrdiff_t W, ptrdiff_t OW, int kw, int sw, int pw, int dw,
                                        ptrdiff_t *j0, ptrdiff_t *j1) {
    ptrdiff_t span = (ptrdiff_t)(kw - 1) * dw + 1, a = (pw + sw - 1) / sw, b;
    b = (W - span + pw < 0) ? 0 : (W - span + pw) / sw + 1;
    if (b > OW) b = OW;
    if (a > b) a = b;
    *j0 = a; *j1 = b;
}

/* Max, horizontal first (like avg below): each needed input row is reduced once into a ring of
 * span = (kh-1)*dh+1 lines (slot r % span), interior columns straight from x, border columns with
 * their taps clipped; then each output row takes the max of its window's lines. A vertical-first
 * version (max of rows into a line, then shifted re-loads of it) measured 2x slower on 54-wide
 * planes: re-loading just-stored vectors at shifted offsets stalls store forwarding. */
FC_ALWAYS_INLINE void FC_NAME(fc_maxpool_any)(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,
                                              ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,
                                              int ph, int pw, int dh, int dw, T *restrict ring,
                                              const int exact_nan) {
    /* exact_nan (a constant after inlining): NaN-propagating max, else one maxps per max */
    const ptrdiff_t span = (ptrdiff_t)(kh - 1) * dh + 1;
    ptrdiff_t j0, j1, next = 0; /* rows below `next` are in the ring (windows only move down) */
    FC_NAME(fc_interior)(W, OW, kw, sw, pw, dw, &j0, &j1);
    for (ptrdiff_t i = 0; i < OH; i++) {
        T *restrict yr = y + i * OW;
        ptrdiff_t r0 = i * sh - ph, ra = r0 < 0 ? 0 : r0, rb = r0 + span < H ? r0 + span : H;
        if (next < ra) next = ra;
        for (ptrdiff_t r = next, s = next % span; r < rb; r++, s = (s + 1 == span) ? 0 : s + 1) {
            T *restrict hm = ring + s * OW;
            const T *restrict xr = x + r * W;
            if (dw == 1 && kw == 3 && sw == 2) {
                for (ptrdiff_t j = j0; j < j1; j++) {
                    const T *restrict xj = xr + 2 * j - pw;
                    T m = FC_MAX2(xj[0], xj[1]);
                    hm[j] = FC_MAX2(m, xj[2]);
                }
            } else if (dw == 1 && kw == 2 && sw == 2) {
                for (ptrdiff_t j = j0; j < j1; j++) {
                    const T *restrict xj = xr + 2 * j - pw;
                    hm[j] = FC_MAX2(xj[0], xj[1]);
                }
            } else if (dw == 1 && kw == 3 && sw == 1) {
                for (ptrdiff_t j = j0; j < j1; j++) {
                    const T *restrict xj = xr + j - pw;
                    T m = FC_MAX2(xj[0], xj[1]);
                    hm[j] = FC_MAX2(m, xj[2]);
                }
            } else {
                for (ptrdiff_t j = j0; j < j1; j++) hm[j] = xr[j * sw - pw];
                for (int v = 1; v < kw; v++) {
                    const T *restrict xv = xr + (ptrdiff_t)v * dw - pw;
                    for (ptrdiff_t j = j0; j < j1; j++) hm[j] = FC_MAX2(hm[j], xv[j * sw]);
                }
            }
            for (ptrdiff_t j = 0; j < OW; j++) { /* border columns */
                if (j == j0) j = j1;
                if (j >= OW) break;
                T m = (T)-INFINITY;
                for (int v = 0; v < kw; v++) {
                    ptrdiff_t q = j * sw - pw + (ptrdiff_t)v * dw;
                    if (q >= 0 && q < W) m = FC_MAX2(m, xr[q]);
                }
                hm[j] = m;
            }
        }
        if (next < rb) next = rb;
        /* vertical: the window's taps r0 + u*dh that lie inside the input */
        ptrdiff_t u0 = 0, u1 = kh;
        while (u0 < kh && r0 + u0 * dh < 0) u0++;
        while (u1 > u0 && r0 + (u1 - 1) * dh >= H) u1--;
        if (u0 == u1) { /* window entirely in padding (never with torch's pad <= k/2) */
            for (ptrdiff_t j = 0; j < OW; j++) yr[j] = (T)-INFINITY;
            continue;
        }
        const T *restrict h0 = ring + ((r0 + u0 * dh) % span) * OW;
        if (u1 - u0 == 3 && dh == 1) {
            const ptrdiff_t s0 = (r0 + u0) % span, s1 = s0 + 1 == span ? 0 : s0 + 1,
                            s2 = s1 + 1 == span ? 0 : s1 + 1;
            const T *restrict h1 = ring + s1 * OW, *restrict h2 = ring + s2 * OW;
            for (ptrdiff_t j = 0; j < OW; j++) {
                T m = FC_MAX2(h0[j], h1[j]);
                yr[j] = FC_MAX2(m, h2[j]);
            }
            continue;
        }
        for (ptrdiff_t j = 0; j < OW; j++) yr[j] = h0[j];
        for (ptrdiff_t u = u0 + 1; u < u1; u++) {
            const T *restrict hu = ring + ((r0 + u * dh) % span) * OW;
            for (ptrdiff_t j = 0; j < OW; j++) yr[j] = FC_MAX2(yr[j], hu[j]);
        }
    }
}

/* Average: horizontal first, so each input row is converted and summed once whatever the
 * vertical stride; the per-row sums live in a ring of kh lines (`ring`, kh*OW doubles, slot r%kh
 * holds input row r), then each output row adds its window's lines. wdiv[j] / hdiv[i]: column /
 * row factors of the divisor (pool.pyx); float32 multiplies by their reciprocals (the result is
 * rounded to float32 anyway), float64 divides exactly. */
FC_ALWAYS_INLINE void FC_NAME(fc_avgpool_any)(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,
                                              ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,
                                              int ph, int pw, const double *restrict hdiv,
                                              const double *restrict wdiv, const double *restrict winv,
                                              double *restrict acc, double *restrict ring) {
    ptrdiff_t j0, j1;
    FC_NAME(fc_interior)(W, OW, kw, sw, pw, 1, &j0, &j1);
    ptrdiff_t next = 0; /* rows below `next` were summed already (windows only move down) */
    for (ptrdiff_t i = 0; i < OH; i++) {
        T *restrict yr = y + i * OW;
        ptrdiff_t r0 = i * sh - ph, ra = r0 < 0 ? 0 : r0, rb = r0 + kh < H ? r0 + kh : H;
        /* horizontal sums of the rows this window needs and the ring does not hold yet */
        if (next < ra) next = ra;
        for (ptrdiff_t r = next, s = next % kh; r < rb; r++, s = (s + 1 == kh) ? 0 : s + 1) {
            double *restrict hs = ring + s * OW;
            const T *restrict xr = x + r * W;
            /* interior columns straight from x (a staged line buffer measured 30% slower: the
             * shifted re-loads of just-stored vectors stall store forwarding on short rows) */
            if (kw == 3 && sw == 1) {
                for (ptrdiff_t j = j0; j < j1; j++) {
                    const T *restrict xj = xr + j - pw;
                    hs[j] = ((double)xj[0] + (double)xj[1]) + (double)xj[2];
                }
            } else if (kw == 3 && sw == 2) {
                for (ptrdiff_t j = j0; j < j1; j++) {
                    const T *restrict xj = xr + 2 * j - pw;
                    hs[j] = ((double)xj[0] + (double)xj[1]) + (double)xj[2];
                }
            } else if (kw == 2 && sw == 2) {
                for (ptrdiff_t j = j0; j < j1; j++)
                    hs[j] = (double)xr[2 * j - pw] + (double)xr[2 * j + 1 - pw];
            } else {
                for (ptrdiff_t j = j0; j < j1; j++) hs[j] = (double)xr[j * sw - pw];
                for (int v = 1; v < kw; v++) {
                    const T *restrict xv = xr + v - pw;
                    for (ptrdiff_t j = j0; j < j1; j++) hs[j] += (double)xv[j * sw];
                }
            }
            /* border columns: skip the taps in padding / overhang */
            for (ptrdiff_t j = 0; j < OW; j++) {
                if (j == j0) j = j1;
                if (j >= OW) break;
                double s = 0.0;
                for (int v = 0; v < kw; v++) {
                    ptrdiff_t q = j * sw - pw + v;
                    if (q >= 0 && q < W) s += (double)xr[q];
                }
                hs[j] = s;
            }
        }
        if (next < rb) next = rb;
        if (ra >= rb) { for (ptrdiff_t j = 0; j < OW; j++) yr[j] = (T)0; continue; }
        const ptrdiff_t sa = ra % kh, sb = (sa + 1 == kh) ? 0 : sa + 1, sc = (sb + 1 == kh) ? 0 : sb + 1;
        /* vertical: add the window's lines, then divide */
        const double hd = hdiv[i], hinv = 1.0 / hdiv[i];
        if (rb - ra == 3) {
            const double *restrict h0 = ring + sa * OW, *restrict h1 = ring + sb * OW,
                         *restrict h2 = ring + sc * OW;
            for (ptrdiff_t j = 0; j < OW; j++)
                yr[j] = (T)FC_AVG_DIV(T, h0[j] + h1[j] + h2[j], hinv * winv[j], hd * wdiv[j]);
            continue;
        }
        for (ptrdiff_t j = 0; j < OW; j++) acc[j] = 0.0;
        for (ptrdiff_t r = ra, s = sa; r < rb; r++, s = (s + 1 == kh) ? 0 : s + 1) {
            const double *restrict hs = ring + s * OW;
            for (ptrdiff_t j = 0; j < OW; j++) acc[j] += hs[j];
        }
        for (ptrdiff_t j = 0; j < OW; j++)
            yr[j] = (T)FC_AVG_DIV(T, acc[j], hinv * winv[j], hd * wdiv[j]);
    }
}

/* Whether x[0..n) holds a NaN. Vector lanes OR-ing `v != v` (no early exit, which would not
 * vectorise); the plain-C `exact |= x[i] != x[i]` loop compiled to masked moves and cost a
 * quarter of ResNet's 3x3/s2 max pool (perf, C harness). */
static inline int FC_NAME(fc_has_nan)(const T *restrict x, ptrdiff_t n) {
    typedef T vT __attribute__((vector_size(64)));
    typedef IT vI __attribute__((vector_size(64))); /* lanes the width of T: v != v's type */
    vT v0, v1;
    vI a0 = {0}, a1 = {0};
    const ptrdiff_t L = (ptrdiff_t)(64 / sizeof(T));
    const ptrdiff_t nv = n - n % (2 * L);
    for (ptrdiff_t i = 0; i < nv; i += 2 * L) {
        memcpy(&v0, x + i, sizeof v0);
        memcpy(&v1, x + i + L, sizeof v1);
        a0 |= (vI)(v0 != v0);
        a1 |= (vI)(v1 != v1);
    }
    a0 |= a1;
    int any = 0;
    for (ptrdiff_t l = 0; l < L; l++) any |= a0[l] != 0;
    for (ptrdiff_t i = nv; i < n; i++) any |= x[i] != x[i];
    return any;
}

/* Average 3x3/s1/p1 ("same" size; Inception's pool branch). Rows 1..H-2 go in blocks: the
 * block's input rows (and one above and below) are converted to double once into `buf`, then
 * one flat pass over the block, 8 outputs a step, keeps the column sums in registers: the
 * left/right neighbours come from lane shifts across adjacent vectors (no re-load of a stored
 * line, so none of the store-forwarding stalls of fc_avgpool_any's staged-buffer variant).
 * The flat pass is wrong in columns 0 and W-1 (their neighbours wrap to the adjacent rows);
 * those, and rows 0 and H-1, are rewritten from x with their own divisors. Needs H, W >= 2 and
 * buf of fc_avg_ring_len doubles; `line` holds W doubles. Measured (1 thread, 256x28x28, C
 * harness, shapes at run time): 98 us as separate column-sum/row-sum passes through a buffer,
 * 79 us with register shifts on x converted three times, 66 us converted once (interior only),
 * vs 182-232 us for fc_avgpool_any. */
FC_ALWAYS_INLINE void FC_NAME(fc_avg3_block)(const double *restrict X, T *restrict yb, ptrdiff_t n,
                                             ptrdiff_t W, double cinv, double cdiv) {
    /* X: rows a-1 .. b as doubles; output k (flat in rows a..b-1) sums X[k + dr*W + dc] */
    typedef T vT __attribute__((vector_size(8 * sizeof(T))));
    typedef long long fc_v8l __attribute__((vector_size(64)));
    const fc_v8d zero = {0, 0, 0, 0, 0, 0, 0, 0};
    fc_v8d prev = zero, cur = zero, next;
    ptrdiff_t k = 0;
    if (n >= 8) cur = FC_VSUM(X, 0, W);
    for (; k + 8 <= n; k += 8) {
        if (k + 16 <= n) next = FC_VSUM(X, k + 8, W);
        else { next = zero; if (k + 8 < n) next[0] = FC_SSUM(X, k + 8, W); }
        fc_v8d L = __builtin_shuffle(prev, cur, (fc_v8l){7, 8, 9, 10, 11, 12, 13, 14});
        fc_v8d R = __builtin_shuffle(cur, next, (fc_v8l){1, 2, 3, 4, 5, 6, 7, 8});
        fc_v8d s = (L + cur) + R;
        vT o = __builtin_convertvector(FC_AVG_DIV(T, s, cinv, cdiv), vT);
        memcpy(yb + k, &o, sizeof o);
        prev = cur; cur = next;
    }
    for (; k < n; k++) { /* the block's last n % 8 outputs (0 past the ends: wrapped columns) */
        double s = ((k > 0 ? FC_SSUM(X, k - 1, W) : 0.0) + FC_SSUM(X, k, W))
                   + (k + 1 < n ? FC_SSUM(X, k + 1, W) : 0.0);
        yb[k] = (T)FC_AVG_DIV(T, s, cinv, cdiv);
    }
}
/* One output row of the 3x3/s1/p1 average from its column sums v[0..W-1], every column with
 * its own divisor (first/last row of the plane). */
FC_ALWAYS_INLINE void FC_NAME(fc_avg3_row)(const double *restrict v, T *restrict yr, ptrdiff_t W,
                                           double hd, const double *restrict wdiv,
                                           const double *restrict winv) {
    const double hinv = 1.0 / hd;
    for (ptrdiff_t j = 0; j < W; j++) {
        double s = (j > 0 ? v[j - 1] : 0.0) + v[j];
        if (j + 1 < W) s += v[j + 1];
        yr[j] = (T)FC_AVG_DIV(T, s, hinv * winv[j], hd * wdiv[j]);
    }
}
static void FC_NAME(fc_avgpool_3x3s1p1)(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,
                                        const double *restrict hdiv, const double *restrict wdiv,
                                        const double *restrict winv, double *restrict line,
                                        double *restrict buf) {
    /* rows 1..H-2 and columns 1..W-2 share one divisor (padding 1 keeps those windows whole,
     * whatever count_include_pad says); hdiv[1] exists as H >= 2 */
    const double cinv = (1.0 / hdiv[1]) * winv[1], cdiv = hdiv[1] * wdiv[1];
    const double hmid = hdiv[1], hmid_inv = 1.0 / hmid;
    ptrdiff_t br = FC_AVG3_BLOCK / W - 2;
    if (br < 1) br = 1;
    for (ptrdiff_t a = 1; a < H - 1; a += br) {
        const ptrdiff_t b = a + br < H - 1 ? a + br : H - 1, m = (b - a + 2) * W;
        const T *restrict xa = x + (a - 1) * W;
        for (ptrdiff_t k = 0; k < m; k++) buf[k] = (double)xa[k];
        FC_NAME(fc_avg3_block)(buf, y + a * W, (b - a) * W, W, cinv, cdiv);
        for (ptrdiff_t i = a; i < b; i++) { /* columns 0 and W-1 */
            const double *restrict r0 = buf + (i - a) * W, *restrict r1 = r0 + W, *restrict r2 = r1 + W;
            double s0 = ((r0[0] + r1[0]) + r2[0]) + ((r0[1] + r1[1]) + r2[1]);
            double s1 = ((r0[W - 2] + r1[W - 2]) + r2[W - 2]) + ((r0[W - 1] + r1[W - 1]) + r2[W - 1]);
            T *restrict yr = y + i * W;
            yr[0] = (T)FC_AVG_DIV(T, s0, hmid_inv * winv[0], hmid * wdiv[0]);
            yr[W - 1] = (T)FC_AVG_DIV(T, s1, hmid_inv * winv[W - 1], hmid * wdiv[W - 1]);
        }
    }
    /* rows 0 and H-1: two input rows each */
    for (ptrdiff_t j = 0; j < W; j++) line[j] = (double)x[j] + (double)x[W + j];
    FC_NAME(fc_avg3_row)(line, y, W, hdiv[0], wdiv, winv);
    const T *restrict xl = x + (H - 2) * W;
    for (ptrdiff_t j = 0; j < W; j++) line[j] = (double)xl[j] + (double)xl[W + j];
    FC_NAME(fc_avg3_row)(line, y + (H - 1) * W, W, hdiv[H - 1], wdiv, winv);
}

/* Mean of n contiguous values, summed in double in 8 fixed lanes (gcc vector extensions: the
 * plain-C version of this loop stayed scalar, at ~60 cycles per 7x7 plane), then a fixed tree:
 * reproducible, and no reassociation flags needed. */
static inline T FC_NAME(fc_mean)(const T *restrict x, ptrdiff_t n) {
    typedef T vT __attribute__((vector_size(8 * sizeof(T))));
    fc_v8d acc = {0, 0, 0, 0, 0, 0, 0, 0};
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        vT v;
        memcpy(&v, x + i, sizeof v);
        acc += __builtin_convertvector(v, fc_v8d);
    }
    double s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += (double)x[i];
    return (T)(s / (double)n);
}

/* The entry points: the seed networks' windows get their own copy of the plane loop with the
 * window as constants, so gcc unrolls the tap loops and drops the generic paths. Measured (1
 * thread, 256x28x28 avg 3x3/s1/p1, C harness): 121-145 us with constants, 188 us without. */
FC_ALWAYS_INLINE void FC_NAME(fc_maxpool_windows)(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,
                                                  ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,
                                                  int ph, int pw, int dh, int dw, T *restrict ring, const int ex) {
    if (dh == 1 && dw == 1 && kh == kw && sh == sw && ph == pw) {
        if (kh == 3 && sh == 2 && ph == 1) /* ResNet */
            return FC_NAME(fc_maxpool_any)(x, y, H, W, OH, OW, 3, 3, 2, 2, 1, 1, 1, 1, ring, ex);
        if (kh == 3 && sh == 2 && ph == 0) /* AlexNet */
            return FC_NAME(fc_maxpool_any)(x, y, H, W, OH, OW, 3, 3, 2, 2, 0, 0, 1, 1, ring, ex);
        if (kh == 2 && sh == 2 && ph == 0) /* VGG, LeNet */
            return FC_NAME(fc_maxpool_any)(x, y, H, W, OH, OW, 2, 2, 2, 2, 0, 0, 1, 1, ring, ex);
        if (kh == 3 && sh == 1 && ph == 1) /* Inception */
            return FC_NAME(fc_maxpool_any)(x, y, H, W, OH, OW, 3, 3, 1, 1, 1, 1, 1, 1, ring, ex);
    }
    FC_NAME(fc_maxpool_any)(x, y, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, ring, ex);
}
/* float32 3x3/s2 windows (padding 0/1) go to fc_maxpool_3x3s2_f first: 1 thread, 64x112x112,
 * C harness 91-113 us against 140-176 for the ring path below; in Python 94-96 us at every
 * placement against 181-256. Everything else, and a plane that holds a NaN, comes here.
 * NaN is rare, and the NaN-propagating max costs 3 instructions where plain max costs 1: with
 * 9+ taps, scan the plane for NaN first (an integer OR, vectorised) and take the exact path only
 * for a plane that holds one. Measured, 1 thread, C harness: ResNet's 3x3/s2 pool 208 -> 137 us
 * (plain max alone 103); VGG's 2x2/s2 pool, already memory-bound, 285 us exact vs 410-570 with
 * the scan pass, so small windows always take the exact path. */
static void FC_NAME(fc_maxpool_plane)(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,
                                      ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,
                                      int ph, int pw, int dh, int dw, T *restrict ring) {
    int r = 0; /* fc_maxpool_3x3s2: 1 done, -1 a NaN in the plane, 0 not its case */
    if (kh == 3 && kw == 3 && sh == 2 && sw == 2 && dh == 1 && dw == 1 && ph == pw && ph <= 1) {
        r = FC_NAME(fc_maxpool_3x3s2)(x, y, H, W, OH, OW, ph);
        if (r > 0) return;
    }
    int exact = r < 0 || kh * kw < 9; /* a NaN in the plane, or small windows */
    if (!exact) exact = FC_NAME(fc_has_nan)(x, H * W);
    if (exact)
        FC_NAME(fc_maxpool_windows)(x, y, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, ring, 1);
    else
        FC_NAME(fc_maxpool_windows)(x, y, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, ring, 0);
}
static void FC_NAME(fc_avgpool_plane)(const T *restrict x, T *restrict y, ptrdiff_t H, ptrdiff_t W,
                                      ptrdiff_t OH, ptrdiff_t OW, int kh, int kw, int sh, int sw,
                                      int ph, int pw, const double *restrict hdiv,
                                      const double *restrict wdiv, const double *restrict winv,
                                      double *restrict acc, double *restrict ring) {
    if (kh == kw && sh == sw && ph == pw) {
        if (kh == 3 && sh == 1 && ph == 1 && H >= 2 && W >= 2) { /* Inception */
            if (FC_NAME(fc_avg3s1p1)(x, y, H, W, hdiv, winv)) return;
            return FC_NAME(fc_avgpool_3x3s1p1)(x, y, H, W, hdiv, wdiv, winv, acc, ring);
        }
        if (kh == 2 && sh == 2 && ph == 0) /* LeNet, DenseNet transitions */
            return FC_NAME(fc_avgpool_any)(x, y, H, W, OH, OW, 2, 2, 2, 2, 0, 0, hdiv, wdiv, winv, acc, ring);
        if (kh == 3 && sh == 2 && ph == 1)
            return FC_NAME(fc_avgpool_any)(x, y, H, W, OH, OW, 3, 3, 2, 2, 1, 1, hdiv, wdiv, winv, acc, ring);
    }
    FC_NAME(fc_avgpool_any)(x, y, H, W, OH, OW, kh, kw, sh, sw, ph, pw, hdiv, wdiv, winv, acc, ring);
}

/* Global average (pool_impl.h): with AVX-512, 8 planes at a time */
#if defined(__AVX512F__) && defined(__AVX512VL__)
static void FC_NAME(fc_means)(const T *restrict x, T *restrict y, ptrdiff_t planes, ptrdiff_t n) {
    const ptrdiff_t nv = n & ~(ptrdiff_t)7;
    const __mmask8 mt = (__mmask8)((1u << (n - nv)) - 1);
    const __m512d dn = _mm512_set1_pd((double)n), one = _mm512_set1_pd(1.0);
    for (ptrdiff_t p0 = 0; p0 < planes; p0 += 8) {
        /* the last group repeats its last plane in the missing lanes (not stored) */
        const ptrdiff_t cnt = planes - p0 < 8 ? planes - p0 : 8;
        const T *restrict xq[8];
        __m512d a[8];
        for (int q = 0; q < 8; q++) {
            xq[q] = x + (p0 + (q < cnt ? q : cnt - 1)) * n;
            a[q] = _mm512_setzero_pd();
        }
        /* odd planes add by an FMA, v * 1 + a (rounded once: the same sum as a + v), so the adds
         * spread over the FP add and FMA pipes */
        for (ptrdiff_t i = 0; i < nv; i += 8)
            for (int q = 0; q < 8; q++) {
                const __m512d v = FC_NAME(fc_means_ld)(xq[q] + i);
                a[q] = q & 1 ? _mm512_fmadd_pd(v, one, a[q]) : _mm512_add_pd(a[q], v);
            }
        if (mt)
            for (int q = 0; q < 8; q++) a[q] = _mm512_add_pd(a[q], FC_NAME(fc_means_mld)(mt, xq[q] + nv));
        FC_NAME(fc_means_st)(y + p0, (__mmask8)((1u << cnt) - 1), _mm512_div_pd(fc_hsum8x8(a), dn));
    }
}
#else
static void FC_NAME(fc_means)(const T *restrict x, T *restrict y, ptrdiff_t planes, ptrdiff_t n) {
    for (ptrdiff_t p = 0; p < planes; p++) y[p] = FC_NAME(fc_mean)(x + p * n, n);
}
#endif
