/* conv_grad_body.h — the micro-kernels of conv_grad_impl.h, included by it once per element type
 * with T (float/double), VT (its vector type), VL (lanes per vector) and SFX (f/d) defined, and
 * names built with _common.h's FC_NAME / FC_JOIN. Not a standalone header; conv_grad_impl.h
 * documents the kernels. */

/* c[p*ldc + r] += Σ_t dy[p*ldy + t]·xs[r][t] for p < MP, r < MR, t < nv·VL: MP·MR vector
 * accumulators along the pixels, lane sums in a fixed tree, added to c in double. Always inlined
 * into the fixed-size instances below, where MP and MR are constants (loops unrolled, accumulators
 * in registers). */
static inline __attribute__((always_inline)) void FC_NAME(fcg_dot)(const int MP, const int MR, long nv,
                                                                  const T *restrict dy, long ldy,
                                                                  const T *const *xs, double *restrict c,
                                                                  long ldc) {
    VT acc[FCG_MP * FCG_MR];
    for (int a = 0; a < MP * MR; a++) acc[a] = (VT){0};
    for (long t = 0; t < nv; t++) {
        VT d[FCG_MP];
#pragma GCC unroll 4
        for (int p = 0; p < MP; p++) d[p] = FCG_LOAD(VT, dy + p * ldy + t * VL);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            VT xv = FCG_LOAD(VT, xs[r] + t * VL);
            FCG_IN_REG(xv);
#pragma GCC unroll 4
            for (int p = 0; p < MP; p++) acc[p * MR + r] += d[p] * xv;
        }
    }
    if (MP * MR == 24) {
        double s[24];
        FC_NAME(fcg_reduce24)(acc, s);
        for (int p = 0; p < MP; p++)
            for (int r = 0; r < MR; r++) c[p * ldc + r] += s[p * MR + r];
    } else {
        for (int p = 0; p < MP; p++)
            for (int r = 0; r < MR; r++) c[p * ldc + r] += FC_NAME(fcg_hsum)(acc[p * MR + r]);
    }
}

/* The instances fcg_dot_<MP>x<MR>_<SFX>, MP 1..4, MR 1..6, and their table [MP-1][MR-1]. */
#define FCG_DOT_FN(mp, mr)                                                                            \
    static void FC_JOIN(fcg_dot_##mp##x##mr, SFX)(long nv, const T *dy, long ldy, const T *const *xs, \
                                                   double *c, long ldc) {                             \
        FC_NAME(fcg_dot)(mp, mr, nv, dy, ldy, xs, c, ldc);                                             \
    }
FCG_DOT_FN(1, 1) FCG_DOT_FN(1, 2) FCG_DOT_FN(1, 3) FCG_DOT_FN(1, 4) FCG_DOT_FN(1, 5) FCG_DOT_FN(1, 6)
FCG_DOT_FN(2, 1) FCG_DOT_FN(2, 2) FCG_DOT_FN(2, 3) FCG_DOT_FN(2, 4) FCG_DOT_FN(2, 5) FCG_DOT_FN(2, 6)
FCG_DOT_FN(3, 1) FCG_DOT_FN(3, 2) FCG_DOT_FN(3, 3) FCG_DOT_FN(3, 4) FCG_DOT_FN(3, 5) FCG_DOT_FN(3, 6)
FCG_DOT_FN(4, 1) FCG_DOT_FN(4, 2) FCG_DOT_FN(4, 3) FCG_DOT_FN(4, 4) FCG_DOT_FN(4, 5) FCG_DOT_FN(4, 6)
#undef FCG_DOT_FN

#define FCG_DOT_ROW(mp)                                                                                \
    {FC_JOIN(fcg_dot_##mp##x1, SFX), FC_JOIN(fcg_dot_##mp##x2, SFX), FC_JOIN(fcg_dot_##mp##x3, SFX), \
     FC_JOIN(fcg_dot_##mp##x4, SFX), FC_JOIN(fcg_dot_##mp##x5, SFX), FC_JOIN(fcg_dot_##mp##x6, SFX)}
static void (*const FC_NAME(fcg_dot_table)[FCG_MP][FCG_MR])(long, const T *, long, const T *const *, double *,
                                                          long) = {
    FCG_DOT_ROW(1), FCG_DOT_ROW(2), FCG_DOT_ROW(3), FCG_DOT_ROW(4)};
#undef FCG_DOT_ROW

/* c[p*ldc + r] += Σ_t dy[p*ldy + t]·xs[r][t] for p < np_, r < nr, t < nv·VL (any sizes): blocks of
 * 4 x 6 and the remainders, each (p, r) pair in exactly one block (so its sum order is fixed).
 * Channel blocks outside: a block's 4 grad_output rows stay in L1 while the rows pass (the rows of
 * one input channel's taps are shifted views of one plane, so they are in L1 too). */
static void FC_NAME(fcg_dot_block)(int np_, int nr, long nv, const T *dy, long ldy, const T *const *xs, double *c,
                                 long ldc) {
    for (int p0 = 0; p0 < np_; p0 += FCG_MP) {
        int mp = np_ - p0 < FCG_MP ? np_ - p0 : FCG_MP;
        for (int r0 = 0; r0 < nr; r0 += FCG_MR) {
            int mr = nr - r0 < FCG_MR ? nr - r0 : FCG_MR;
            FC_NAME(fcg_dot_table)[mp - 1][mr - 1](nv, dy + (long)p0 * ldy, ldy, xs + r0, c + (long)p0 * ldc + r0,
                                                 ldc);
        }
    }
}

/* Broadcast GEMM block: c[r*ldc + j] = Σ_k a[k*8 + r]·b[k*ldb + j], 8 rows x 3 vectors; with add,
 * the tile is the accumulators' initial value (c += a·b). */
static void FC_NAME(fcg_bcast_acc)(long K, const T *restrict a, const T *restrict b, long ldb, T *restrict c,
                                 long ldc, int add) {
    VT acc[FCG_BR][FCG_BV];
    for (int r = 0; r < FCG_BR; r++)
        for (int v = 0; v < FCG_BV; v++) acc[r][v] = add ? FCG_LOAD(VT, c + r * ldc + v * VL) : (VT){0};
    for (long k = 0; k < K; k++) {
        VT bv[FCG_BV];
        for (int v = 0; v < FCG_BV; v++) bv[v] = FCG_LOAD(VT, b + k * ldb + v * VL);
#pragma GCC unroll 8
        for (int r = 0; r < FCG_BR; r++) {
            T as = a[k * FCG_BR + r]; /* scalar × vector: a broadcast (not 0 + a, an extra add) */
            for (int v = 0; v < FCG_BV; v++) acc[r][v] += as * bv[v];
        }
    }
    for (int r = 0; r < FCG_BR; r++)
        for (int v = 0; v < FCG_BV; v++) memcpy(c + r * ldc + v * VL, &acc[r][v], sizeof(VT));
}

/* c = a·b */
static inline void FC_NAME(fcg_bcast)(long K, const T *a, const T *b, long ldb, T *c, long ldc) {
    FC_NAME(fcg_bcast_acc)(K, a, b, ldb, c, ldc, 0);
}

