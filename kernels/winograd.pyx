# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Winograd F(m x m, r x r) convolution (Cython driver + C kernels): F(2x2,3x3) and F(4x4,3x3) for
3x3 kernels, F(2x2,5x5) for 5x5 kernels; stride 1, dilation 1.

Each m x m block of output costs (m+r−1)² multiplies per (input, output) channel pair instead of
r²·m², at the price of a larger rounding error (the transforms add terms of mixed sign and size).

Design — a fused, cache-blocked pipeline (kernels/wino_impl.h). One OpenMP task (dynamic
schedule, GIL released) = one block of tiles of one group (blocks run across the images of a
batch, so small maps share each pass over U) x one range of output-channel panels:
  1. input transform ``V = Bᵀ d B`` of the block's tiles into a per-thread buffer, 16 tiles per
     vector, written in the micro-kernel's A layout (F(4x4): a masked 6-float load per patch row
     and tile + 8x8 transposes; F(2x2): hardware gathers where a lane group is inside the image);
  2. one GEMM per transform point ``M[ξ] = V[ξ] · U[ξ]`` with the 8x32 register-blocked FMA
     micro-kernel of kernels/gemm_ukernel.h against U = G g Gᵀ, computed in float64 and packed
     into 32-column panels once, in `prepare`;
  3. output transform ``Y = Aᵀ M A`` (+ bias) straight into ``out`` (16 output channels per
     vector, an in-register 16x16 transpose for the stores).
V and M of a block stay in L2 (block = 512 KiB / ((m+2)²·(C_in + C_out)·itemsize) tiles, at least
32 so a deep layer's U, tens of MB, is not re-streamed every few tiles; all of them, up to 128,
where U exceeds 2 MiB; 16 where U fits in L2 and the layer has too few blocks for the threads).
Where blocks are still fewer than 2 per thread (deep layers on 7x7/14x14/28x28 maps) the threads
share each block: they split its input transform by input channels into one shared V, then its
output-channel panels (GEMM + output transform). Redoing the input transform per output-channel
task instead caps vgg16.conv4_2 at 1.68x from 1 to 2 threads (1.92x shared) and
resnet50.3x3_last at 1.9 ms (1.45 ms shared). Transforming the weights inside the GEMM phase (r²
numbers per weight streamed instead of (m+2)², G g Gᵀ per 64-channel chunk) runs at 0.69-0.93x
of the packed U on every suite layer, 0.66-0.73x on 1 thread — the deep layers are not bound by
reading U (vgg16.conv5_2 2.06x from 1 to 2 threads).

Language and measurements (Zen 4, 1 core, CPU time so that the other jobs on the machine do not
count): the micro-kernel runs at 99–104 GFLOP/s for MR = 6…14 (the FMA peak); inside the pipeline
the GEMM phase runs at 89–114 GFLOP/s, against 66–96 for OpenBLAS's ``sgemm`` called on the
same per-point shapes (which also re-packs U on every call), hence C for the hot loops, with GCC
vector types rather than intrinsics so the same source builds for AVX-512, AVX2 or plain x86-64
(all three checked). Pitfalls measured: V/M panel strides that are multiples of 4 KiB put all
(m+2)² transform streams into one L1 set (2x slower transforms), so the panels are padded by
WINO_PAD; the input of 224x224 maps arrives in short rows per channel, so it is
software-prefetched WINO_PF (6) channels ahead; Zen 4's gathers cost ~1.3 cycles per element, so
F(4x4)'s input transform loads rows and transposes them (~1.3x faster). Phase split (1 core, 64
channels, 56x56): input transform 26 %, GEMM 54 %, output transform 20 %; 256 channels: 16 / 74 /
10 %.

5x5 kernels: F(2x2,5x5) interpolates at F(4x4,3x3)'s six points, so it shares its 6x6 input
transform (and its row loads) and only G and Aᵀ differ: 36 multiplies per 2x2 outputs instead of
100 (2.8x fewer). Measured (2 threads, `fastconv bench --layer`, medians of 9, same process):
alexnet.conv2 (8x96x26x26 -> 256, pad 2) 18.7-19.2 ms against direct 37-39, torch 49, ONNX
Runtime 36; seed003 (100 -> 100, 64x64) 7.6-8.0 ms against direct 11.5, torch 14.3. Error: the
case table's worst is 1.8e-6 (float32) / 3.1e-15 (float64) on the contract metric, like F(4x4,3x3);
max|y−ref|/max|ref| 4-8e-6 on those layers. F(4x4,5x5) (8x8 tiles, eight points) is not built.

Tile size: ``tile=2`` F(2x2,3x3) or F(2x2,5x5), ``tile=4`` F(4x4,3x3), ``tile=0`` per layer
(`auto_tile`: the fewest padded GEMM rows; F(4x4) on the suite layers except 7x7 maps). F(4x4) is
1.3–2.0x faster than F(2x2) on every suite layer except resnet50.3x3_last (7x7: F(2x2) 1.5x
faster). F(6x6) is not built: ~20 % fewer GEMM flops than F(4x4) for another ~10x error growth.
Max error vs the float64 reference on the suite's 3x3 layers (float32; max|y−ref|/(|W|*|X|+|b|),
and max|y−ref|/max|ref|): F(2x2) 1.6e-7 / 8.8e-7, F(4x4) 3.5e-6 / 1.4e-5, torch's float32 conv
1.3e-7 / 3.7e-7. Per-output |W|*|X| understates Winograd's error where an output's own products
are small but its tile's are not (F(4x4) 2.3e-4 on rows of padding), hence the tile-aware
contract scale (``error_tile``): with it the case table's worst is F(2x2) 1.2e-7, F(4x4) 1.8e-6
(float64: 2.9e-16 / 3.2e-15); the registry tolerances (fastconv/registry.py) carry >= 55x margin.

NaN and Inf: the transforms mix every pixel of a tile (``Inf − Inf`` and ``Inf · 0`` give NaN),
so a single non-finite input would turn whole tiles to NaN where torch gives ±Inf or finite
values. So the module declares ``needs_finite``: the registry checks the input and weights
(``_common.all_finite``, one parallel pass) and runs a call that holds NaN or Inf on the direct
kernel instead; this module never sees one.

Scratch: each thread's V and M (or, where the threads share each block, one V and a M per thread)
are carved from the caller's workspace (``workspace_bytes``); the kernel allocates nothing.
"""
from typing import NamedTuple

import numpy as np

from cython.parallel cimport prange, parallel, threadid

from fastconv import contract
from ..threads import get_num_threads

include "_shared.pxi"

cdef extern from "wino_kernels.h" nogil:
    int FC_MR_F32, FC_NR_F32, FC_MR_F64, FC_NR_F64, WINO_PAD, WINO_INPUT, WINO_OUTPUT
    void wino_task_f32(int m, int r, const float *x, long xs, int H, int W, int cig, int pt, int pl,
                       int ntile, int tw, long t0, int nt, const float *U, int ncp, int cp0, int cp1,
                       const float *bias, float *y, long ys, int cog, int OH, int OW, float *V,
                       float *M, int ci0, int ci1, int phases)
    void wino_task_f64(int m, int r, const double *x, long xs, int H, int W, int cig, int pt, int pl,
                       int ntile, int tw, long t0, int nt, const double *U, int ncp, int cp0,
                       int cp1, const double *bias, double *y, long ys, int cog, int OH, int OW,
                       double *V, double *M, int ci0, int ci1, int phases)
    int wino_u_panel_f32(int A, int r, const float *w, const double *G, long cig, int nv, float *u,
                         long point)
    int wino_u_panel_f64(int A, int r, const double *w, const double *G, long cig, int nv, double *u,
                         long point)

ctypedef fused floating:
    float
    double

# Kernel transforms G, keyed (m, r) (Lavin & Gray 2015); only G is used here (U = G g Gᵀ), Bᵀ/Aᵀ
# are spelled out in wino_impl.h and checked against these by the tests (through the results).
# F(2x2,5x5) uses F(4x4,3x3)'s six points (0, ±1, ±2, ∞), hence the same Bᵀ; its G (the points'
# powers 0..4, with the interpolation's scaling folded in) was solved for from Bᵀ and Aᵀ so that
# the 1-D algorithm is exact (a unique solution: 60 equations, rank 30).
_G = {
    (2, 3): np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
    # integer fractions scaled by 24 (``1 / 4`` would be C integer division under cdivision)
    (4, 3): np.array([[6, 0, 0], [-4, -4, -4], [-4, 4, -4], [1, 2, 4], [1, -2, 4], [0, 0, 24]]) / 24.0,
    (2, 5): np.array([[6, 0, 0, 0, 0], [-4, -4, -4, -4, -4], [-4, 4, -4, 4, -4], [1, 2, 4, 8, 16],
                      [1, -2, 4, -8, 16], [0, 0, 0, 0, 24]]) / 24.0,
}
# The transforms mix every pixel of a tile (module docstring, NaN and Inf): the registry runs a
# call whose input or weights are not all finite on the direct kernel instead.
needs_finite = True
TILES = (2, 4)
KERNELS = {3: (2, 4), 5: (2,)}  # kernel size -> the tile sizes built for it
L2_BYTES = 1 << 19  # per-thread budget for a block's V + M (half the 1 MiB L2: U panels need room)
MIN_BLOCK = 32      # tiles; fewer would re-stream the whole U once per few tiles on deep layers
ONE_BLOCK = 128     # tiles; a layer with a U larger than L2 and at most this many runs as one block
# U up to this size may be re-read per smaller block for balance (measured: re-reading a 9-14 MB U
# per 16-tile block cost 5-10 % on one thread)
U_SHRINK_BYTES = 1 << 21


def _mr_nr(itemsize):
    return (FC_MR_F32, FC_NR_F32) if itemsize == 4 else (FC_MR_F64, FC_NR_F64)


def auto_tile(p) -> int:
    """The tile size with the fewest GEMM rows per image: (m+2)² transform points times the tiles
    padded to the micro-kernel's MR rows (ties go to F(4x4), whose transforms are cheaper per
    output). F(4x4) on every suite layer but the 7x7 maps (resnet50.3x3_last: 4 F(4x4) tiles fill
    half an MR group, F(2x2) was 1.3x faster there, measured). Independent of the batch size, as
    `prepare` must be."""
    if p.kh == 5:
        return 2  # the only tile built for 5x5 (F(4x4,5x5)'s 8x8 tiles would need 8 points)
    mr, _ = _mr_nr(p.itemsize)

    def rows(m):
        return -(-(-(-p.out_h // m) * -(-p.out_w // m)) // mr) * mr * (m + 2) ** 2
    return 4 if rows(4) <= rows(2) else 2


class Geometry(NamedTuple):
    m: int         # output tile size
    th: int        # tile rows
    tw: int        # tile columns
    block: int     # tiles per task
    nblocks: int   # tile blocks per group (blocks run over the tiles of all images)
    ncp: int       # NR-wide output-channel panels per group
    cps: int       # panels per task
    nchunks: int   # output-channel ranges per (group, block)


def geometry(p, nthreads: int, tile: int = 0) -> Geometry:
    m = tile or auto_tile(p)
    a2 = (m + p.kh - 1) ** 2
    mr, nr = _mr_nr(p.itemsize)
    th, tw = -(-p.out_h // m), -(-p.out_w // m)
    ntiles = max(p.n, 1) * th * tw
    cig, cog = p.c_in_per_group, p.c_out_per_group
    ncp = -(-cog // nr)
    if ntiles == 0:
        return Geometry(m, th, tw, mr, 0, ncp, ncp, 1)
    big_u = a2 * cig * cog * p.itemsize > U_SHRINK_BYTES
    if big_u and ntiles <= ONE_BLOCK:
        # Deep layers on small maps: every block re-reads all of U (tens of MB) from memory, so
        # one block, shared by the threads (below). Measured against blocks of 32 (interleaved,
        # medians of 15): vgg16.conv4_2 (49 tiles) 1.15x on 2 threads, 1.07x on 1; alexnet.conv3
        # (72 tiles) 1.16x / 1.17x. Larger blocks lost where tiles are many (alexnet.conv2, 1352
        # tiles of 96 -> 256 channels: 0.6-0.8x with blocks of 104-680; vgg16.conv3_2 even).
        block = ntiles
    else:
        block = L2_BYTES // (a2 * (cig + ncp * nr) * p.itemsize)
        block = max(MIN_BLOCK, block // mr * mr)
    block = min(block, -(-ntiles // mr) * mr)
    nblocks = -(-ntiles // block)
    # Too few tasks for the threads (a task is the unit of dynamic scheduling: 7 equal tasks on
    # 2 threads run 4 rounds, i.e. at 7/8 of the speed). Where U is small (stays in L2), smaller
    # blocks cost nothing: aim at >= 4 tasks per thread, blocks >= 16 tiles (one input-transform
    # lane group).
    if p.groups * nblocks < 4 * nthreads and not big_u:
        block = max(2 * mr, ntiles // (4 * nthreads * p.groups) // (2 * mr) * 2 * mr)
        block = min(block, -(-ntiles // mr) * mr)
        nblocks = -(-ntiles // block)
    # Still too few (deep layers on small maps, where every block streams all of U): split the
    # output channels too; each range redoes the (there cheap) input transform of its block.
    base = p.groups * nblocks
    nchunks = 1
    if base < 2 * nthreads:
        nchunks = min(ncp, -(-2 * nthreads // base))
    cps = -(-ncp // nchunks)
    nchunks = -(-ncp // cps)
    return Geometry(m, th, tw, block, nblocks, ncp, cps, nchunks)


def supports(p, tile: int = 0, **options) -> str | None:
    why = contract.refuse(p, epilogue=("bias",), options=options, takes=("tile",), dtypes=("float32", "float64"))
    if why is not None:
        return why
    if tile not in TILES and tile != 0:
        return f"tile size must be one of {TILES} (or 0 for auto), got {tile}"
    if p.kh != p.kw or p.kh not in KERNELS:
        return f"needs a 3x3 or 5x5 kernel, got {p.kh}x{p.kw}"
    if tile and tile not in KERNELS[p.kh]:
        return f"tile {tile} is not built for {p.kh}x{p.kw} kernels (tiles: {KERNELS[p.kh]})"
    if p.stride != (1, 1):
        return f"needs stride 1, got {p.stride}"
    if p.dilation != (1, 1):
        return f"needs dilation 1, got {p.dilation}"
    if p.groups < 1 or p.c_in % p.groups or p.c_out % p.groups:
        return f"groups ({p.groups}) must divide both channel counts ({p.c_in}, {p.c_out})"
    if min(p.pad) < 0 or max(p.pad) > 2 ** 31 - 1:
        return f"padding must be >= 0 and fit a C int, got {p.pad}"
    if p.out_h < 1 or p.out_w < 1:
        return f"output size {p.out_h}x{p.out_w} is empty"
    return None


def _buffers(p, g: Geometry):
    """(V, M) elements of one task: V holds the block's transformed input (2*MR-tile lane groups
    x C_in_g per point), M the GEMM results of its output-channel panels."""
    mr, nr = _mr_nr(p.itemsize)
    a2 = (g.m + p.kh - 1) ** 2
    rows, vrows = a2 * (-(-g.block // mr) * mr), a2 * (-(-g.block // (2 * mr)) * 2 * mr)
    return vrows * p.c_in_per_group + a2 * WINO_PAD, rows * g.cps * nr + a2 * WINO_PAD


def workspace_bytes(p, nthreads, tile: int = 0, **options) -> int:
    """One V and one M per thread; where the threads share each block (nchunks > 1) one V in all.
    Each buffer starts on a cache line (+ the slack to align the first)."""
    g = geometry(p, nthreads, tile)
    v, m = _buffers(p, g)
    nv = 1 if g.nchunks > 1 else nthreads
    return nv * ws_round(v * p.itemsize) + nthreads * ws_round(m * p.itemsize) + WS_ALIGN - 1


class Packed(NamedTuple):
    u: dict           # tile size -> U packed [g][ξ][ncp][cig][NR]
    bias: np.ndarray


def _pack_u(w, p, m):
    """U[g, ξ, panel, ci, lane] = (G w Gᵀ)[co = panel·NR + lane, ci, ξ], computed in float64 and
    rounded once, one (group, NR-channel panel) per parallel task (``wino_u_panel`` in
    wino_impl.h): 3.4-13 ms for the 512x512 layers (2 threads; ~5 ms of transform for F(4x4)'s
    37.7 MB U, the rest page faults on the fresh U), where NumPy's ``G @ w @ G.T`` per panel takes
    42-70 ms, 10-25x the layer's own run (a one-off ``fastconv.conv2d`` is prepare + run)."""
    G = np.ascontiguousarray(_G[m, p.kh])
    _, nr = _mr_nr(p.itemsize)
    cig, cog = p.c_in_per_group, p.c_out_per_group
    ncp = -(-cog // nr)
    out = np.empty(p.groups * len(G) ** 2 * ncp * cig * nr, dtype=w.dtype)
    _pack_u_all(np.ascontiguousarray(w), G, out, p.groups, cog, cig, nr, get_num_threads())
    return out


def _pack_u_all(const floating[:, :, :, ::1] w, const double[:, ::1] G, floating[::1] out, int groups,
                int cog, int cig, int nr, int nthreads):
    cdef int A = G.shape[0], r = G.shape[1]
    cdef int ncp = (cog + nr - 1) // nr
    cdef Py_ssize_t point = <Py_ssize_t>ncp * cig * nr        # between two points ξ of one group
    cdef Py_ssize_t task
    cdef int g, cp
    cdef int bad = 0
    cdef int nt = nthreads if groups * ncp > 1 else 1  # 1 or all (kernels/_common.h)
    if groups * ncp == 0 or cig == 0:
        return
    team(nt)
    for task in prange(groups * ncp, nogil=True, schedule="dynamic", num_threads=nt):
        g = <int>(task // ncp)
        cp = <int>(task % ncp)
        if floating is float:
            bad += wino_u_panel_f32(A, r, &w[g * cog + cp * nr, 0, 0, 0], &G[0, 0], cig,
                                    min(nr, cog - cp * nr), &out[g * A * A * point + cp * cig * nr], point)
        else:
            bad += wino_u_panel_f64(A, r, &w[g * cog + cp * nr, 0, 0, 0], &G[0, 0], cig,
                                    min(nr, cog - cp * nr), &out[g * A * A * point + cp * cig * nr], point)
    if bad:
        raise ValueError(f"no Winograd weight transform built for {A}x{A} points and {r}x{r} kernels")


def prepare(w, b, p, tile: int = 0, **options) -> Packed:
    # the auto tile depends on the map size only, which prepare may not assume (plans are reused
    # across batches, not sizes — but the map size is part of p), so pack what p needs
    m = tile or auto_tile(p)
    bias = np.zeros(p.c_out, dtype=w.dtype) if b is None else np.ascontiguousarray(b)
    return Packed({m: _pack_u(w, p, m)}, bias)


def run(x, packed: Packed, p, out, workspace, nthreads, tile: int = 0, **options) -> None:
    g = geometry(p, nthreads, tile)
    v, m = _buffers(p, g)
    team(nthreads)
    _run(x, packed.u[g.m], packed.bias, out, workspace, ws_round(v * p.itemsize), ws_round(m * p.itemsize),
         g.m, p.kh, p.groups, p.pad[0], p.pad[2], g.tw, g.th * g.tw, g.block, g.nblocks, g.ncp, g.cps,
         g.nchunks, nthreads)


cdef inline void _task(int m, int r, const floating *x, long xs, int H, int W, int cig, int pt, int pl,
                       int ntile, int tw, long t0, int nt, const floating *u, int ncp, int cp0, int cp1,
                       const floating *bias, floating *y, long ys, int cog, int OH, int OW, floating *V,
                       floating *M, int ci0, int ci1, int phases) noexcept nogil:
    """wino_task in the element type (wino_impl.h documents the arguments)."""
    if floating is float:
        wino_task_f32(m, r, x, xs, H, W, cig, pt, pl, ntile, tw, t0, nt, u, ncp, cp0, cp1, bias, y, ys, cog,
                      OH, OW, V, M, ci0, ci1, phases)
    else:
        wino_task_f64(m, r, x, xs, H, W, cig, pt, pl, ntile, tw, t0, nt, u, ncp, cp0, cp1, bias, y, ys, cog,
                      OH, OW, V, M, ci0, ci1, phases)


def _run(const floating[:, :, :, ::1] x, const floating[::1] u, const floating[::1] bias,
         floating[:, :, :, ::1] out, const unsigned char[::1] workspace, Py_ssize_t vbytes, Py_ssize_t mbytes,
         int m, int r, int groups, int pt, int pl, int tw, int ntile, int block, int nblocks, int ncp, int cps,
         int nchunks, int nthreads):
    """vbytes, mbytes: one V and one M (workspace_bytes), whole cache lines each."""
    cdef int N = x.shape[0], H = x.shape[2], W = x.shape[3], OH = out.shape[2], OW = out.shape[3]
    cdef int cig = x.shape[1] // groups, cog = out.shape[1] // groups
    cdef int a2 = (m + r - 1) * (m + r - 1)
    cdef int nr = FC_NR_F32 if floating is float else FC_NR_F64
    cdef long ntasks = <long>groups * nblocks * nchunks, ntiles = <long>N * ntile
    cdef long xs = <long>x.shape[1] * H * W, ys = <long>out.shape[1] * OH * OW
    cdef long task, rest, t0
    cdef int g, tb, ch, nt, cp0, cp1
    cdef floating *V
    cdef floating *M
    cdef int nci = max(1, min(cig, 4 * nthreads)), cc
    cdef long gb
    cdef floating *Vs
    cdef char *ws
    if ntasks == 0:
        return
    if nchunks > 1:
        # Deep layers on small maps (fewer tile blocks than threads): the threads share each block.
        # They first transform its input channels into one shared V, then (after the prange's
        # barrier) each runs the GEMMs and output transform of its own output-channel panels.
        # Self-contained tasks (below) would each redo the whole input transform: measured 1.68x
        # from 1 to 2 threads on vgg16.conv4_2 (16% of its time is that transform) against 1.9x.
        # Workspace: the shared V, then one M per thread.
        ws = ws_base(workspace, vbytes + nthreads * mbytes)
        Vs = <floating *>ws
        M, gb = NULL, 0  # (Cython makes them firstprivate: start them defined)
        with nogil, parallel(num_threads=nthreads):
            M = <floating *>(ws + vbytes + threadid() * mbytes)
            for gb in range(<long>groups * nblocks):      # every thread walks the blocks in step
                g = <int>(gb // nblocks)
                t0 = (gb % nblocks) * block
                nt = <int>min(<long>block, ntiles - t0)
                for cc in prange(nci, schedule="static"):
                    _task(m, r, &x[0, g * cig, 0, 0], xs, H, W, cig, pt, pl, ntile, tw, t0, nt,
                          &u[<long>g * a2 * ncp * cig * nr], ncp, 0, ncp, &bias[g * cog],
                          &out[0, g * cog, 0, 0], ys, cog, OH, OW, Vs, M,
                          cig * cc // nci, cig * (cc + 1) // nci, WINO_INPUT)
                for ch in prange(nchunks, schedule="dynamic"):
                    cp0 = ch * cps
                    cp1 = min(ncp, cp0 + cps)
                    _task(m, r, &x[0, g * cig, 0, 0], xs, H, W, cig, pt, pl, ntile, tw, t0, nt,
                          &u[<long>g * a2 * ncp * cig * nr], ncp, cp0, cp1, &bias[g * cog],
                          &out[0, g * cog, 0, 0], ys, cog, OH, OW, Vs, M, 0, cig, WINO_OUTPUT)
        return
    # Workspace: each thread's V, then its M.
    ws = ws_base(workspace, nthreads * (vbytes + mbytes))
    V, M = NULL, NULL  # (Cython makes them firstprivate: start them defined)
    with nogil, parallel(num_threads=nthreads):
        V = <floating *>(ws + threadid() * (vbytes + mbytes))
        M = <floating *>(ws + threadid() * (vbytes + mbytes) + vbytes)
        for task in prange(ntasks, schedule="dynamic"):
            ch = task % nchunks
            rest = task // nchunks
            tb = rest % nblocks
            g = rest // nblocks
            t0 = <long>tb * block
            nt = min(block, ntiles - t0)
            cp0 = ch * cps
            cp1 = min(ncp, cp0 + cps)
            _task(m, r, &x[0, g * cig, 0, 0], xs, H, W, cig, pt, pl, ntile, tw, t0, nt,
                  &u[<long>g * a2 * ncp * cig * nr], ncp, cp0, cp1, &bias[g * cog], &out[0, g * cog, 0, 0],
                  ys, cog, OH, OW, V, M, 0, cig, WINO_INPUT | WINO_OUTPUT)
