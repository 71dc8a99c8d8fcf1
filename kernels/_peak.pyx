# cython: boundscheck=False, wraparound=False
"""FMA-peak microbenchmark for ``fastconv bench`` (the "% of FMA peak" column).

Each thread runs independent chains of vector FMAs held in registers (12 accumulators hide
the 4-cycle FMA latency on 2 FMA pipes), so the loop measures the core's FMA throughput and
nothing else. Compiled with -march=native like the kernels: AVX-512 where the CPU has it,
else AVX2/FMA, else scalar (then the number is a floor, not a peak).
"""
from cython.parallel cimport prange

cdef extern from *:
    """
    #include <immintrin.h>
    #if defined(__AVX512F__)
      typedef __m512 vec_t;
      #define VLANES 16
      #define VSET(x) _mm512_set1_ps(x)
      #define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
      #define VADD(a, b) _mm512_add_ps(a, b)
      #define VSUM(a) _mm512_reduce_add_ps(a)
    #elif defined(__FMA__)
      typedef __m256 vec_t;
      #define VLANES 8
      #define VSET(x) _mm256_set1_ps(x)
      #define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
      #define VADD(a, b) _mm256_add_ps(a, b)
      static inline float VSUM(__m256 a) {
          float t[8]; _mm256_storeu_ps(t, a);
          return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
      }
    #else
      typedef float vec_t;
      #define VLANES 1
      #define VSET(x) (x)
      #define VFMA(a, b, c) ((a) * (b) + (c))
      #define VADD(a, b) ((a) + (b))
      #define VSUM(a) (a)
    #endif
    /* 12 independent FMA chains for `iters` rounds; returns a sum so nothing is optimised away. */
    static float fma_chains(long iters, float seed) {
        vec_t m = VSET(0.999999f), c = VSET(1e-7f);
        vec_t a0 = VSET(seed), a1 = VSET(seed + 1), a2 = VSET(seed + 2), a3 = VSET(seed + 3);
        vec_t a4 = VSET(seed + 4), a5 = VSET(seed + 5), a6 = VSET(seed + 6), a7 = VSET(seed + 7);
        vec_t a8 = VSET(seed + 8), a9 = VSET(seed + 9), a10 = VSET(seed + 10), a11 = VSET(seed + 11);
        for (long i = 0; i < iters; i++) {
            a0 = VFMA(a0, m, c); a1 = VFMA(a1, m, c); a2 = VFMA(a2, m, c); a3 = VFMA(a3, m, c);
            a4 = VFMA(a4, m, c); a5 = VFMA(a5, m, c); a6 = VFMA(a6, m, c); a7 = VFMA(a7, m, c);
            a8 = VFMA(a8, m, c); a9 = VFMA(a9, m, c); a10 = VFMA(a10, m, c); a11 = VFMA(a11, m, c);
        }
        vec_t s = VADD(VADD(VADD(a0, a1), VADD(a2, a3)), VADD(VADD(a4, a5), VADD(a6, a7)));
        s = VADD(s, VADD(VADD(a8, a9), VADD(a10, a11)));
        return VSUM(s);
    }
    """
    int VLANES
    float fma_chains(long iters, float seed) nogil


def lanes() -> int:
    """float32 lanes per vector FMA in the compiled loop (16 with AVX-512, 8 with AVX2)."""
    return VLANES


def flops_per_iter() -> int:
    """FLOPs one thread does per iteration: 12 chains x lanes x 2 (an FMA is two FLOPs)."""
    return 12 * VLANES * 2


def run(long iters, int nthreads) -> float:
    """Run ``iters`` rounds on each of ``nthreads`` OpenMP threads; returns a checksum."""
    cdef int t
    cdef float total = 0
    for t in prange(nthreads, nogil=True, schedule="static", num_threads=nthreads):
        total += fma_chains(iters, <float>t)
    return total
