/* gemm_ukr_impl.h — body of the register-blocked GEMM micro-kernel, included by gemm_ukernel.h once
 * per dtype and tile with these defined (not a standalone header):
 *   T    element type (float, double)
 *   VT   GCC vector of T, 64 bytes (VL lanes); VTU the same, unaligned and may_alias (loads of B:
 *        a memcpy into VT compiles to an integer-domain vmovdqu64 that the FMAs then wait on)
 *   VL   lanes of VT
 *   MR   rows of the tile (broadcast from A)
 *   NV   vectors per row (the tile has NR = NV * VL columns, loaded from B)
 *   SFX  suffix of the function's name, e.g. f32_8x48
 *
 * Defines fc_ukr_SFX(K, A, lda, B, ldb, C, ldc, bias, mode, mr, nr, pf):
 *
 *   C[r][c] (= or +=) sum_{k < K} A[k*lda + r] * B[k*ldb + c]      r < mr <= MR, c < nr <= NR
 *
 *   mode FC_UKR_SET:  C = A B
 *        FC_UKR_BIAS: C = bias[r] + A B   (bias holds MR values, also for mr < MR)
 *        FC_UKR_ACC:  C += A B            (a later K block onto an earlier one)
 *   A: MR rows per k step, lda >= MR apart (a packed [K][MR] panel, or two interleaved panels);
 *   B: NR columns per k step, ldb apart (a packed [K][NR] panel has ldb = NR); rows past mr and
 *   columns past nr are computed from whatever A and B hold there (pad packed panels with zeros
 *   or anything finite) but never read from or written to C. pf > 0 prefetches B pf k-steps
 *   ahead (for a B panel that comes from L3 or memory). No alignment is required. K may be 0.
 *
 * The C tile lives in MR x NV vector accumulators for the whole K loop; each k step loads NV
 * vectors of B and broadcasts MR scalars of A: MR*NV FMAs per NV + MR loads. Always inlined, so
 * the constant arguments of a call site (mode, mr, nr, pf) select the code at compile time.
 */

static inline __attribute__((always_inline)) void
FC_NAME(fc_ukr)(long K, const T *restrict A, long lda, const T *restrict B, long ldb, T *restrict C,
              long ldc, const T *bias, int mode, int mr, int nr, int pf)
{
    VT acc[MR][NV];
    /* rows past mr are left out of C's loads and stores; a tile with columns past nr goes through
     * this buffer (so acc is only ever moved whole, and stays in registers) */
    const int cols = nr == NV * VL;
    T part[MR * NV * VL] __attribute__((aligned(64)));
    if (!cols && mode == FC_UKR_ACC) {
        memset(part, 0, sizeof part);
        for (int r = 0; r < mr; r++) memcpy(part + r * NV * VL, C + r * ldc, (size_t)nr * sizeof(T));
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            if (mode == FC_UKR_BIAS)
                acc[r][v] = bias[r] - (VT){0}; /* a broadcast: x - 0 == x folds away (x + 0 does not) */
            else if (mode == FC_UKR_ACC && !cols)
                acc[r][v] = *(const VTU *)(part + (r * NV + v) * VL);
            else if (mode == FC_UKR_ACC && r < mr)
                acc[r][v] = *(const VTU *)(C + r * ldc + v * VL);
            else
                acc[r][v] = (VT){0};
        }
    for (long k = 0; k < K; k++) {
        VT b[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) b[v] = *(const VTU *)(B + k * ldb + v * VL);
        if (pf > 0)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) __builtin_prefetch(B + (k + pf) * ldb + v * VL, 0, 3);
        const T *a = A + k * lda;
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            const VT av = a[r] - (VT){0};
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] += av * b[v];
        }
    }
    if (cols) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++)
            if (r < mr)
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) *(VTU *)(C + r * ldc + v * VL) = acc[r][v];
        return;
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) *(VTU *)(part + (r * NV + v) * VL) = acc[r][v];
    for (int r = 0; r < mr; r++) memcpy(C + r * ldc, part + r * NV * VL, (size_t)nr * sizeof(T));
}

