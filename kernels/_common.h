/* _common.h — the C side of kernels/_common.pyx: what every kernel needs before a parallel region
 * so that a process short of memory gets a MemoryError instead of dying.
 *
 * libgomp keeps a pool of threads per calling thread. A region asking for more threads than the
 * pool holds creates them, and a thread it cannot create is fatal ("libgomp: Thread creation
 * failed", exit). A region of k >= 2 threads ends the pool's threads past k (measured, gcc 12:
 * 4, 3, 4 threads create 3, end 1, create 1 again); a 1-thread region leaves the pool alone. So
 * the kernels run every region on either 1 or the call's n threads, and fc_team_ensure(n) makes
 * the pool hold n - 1 threads before a kernel starts: it first creates and joins the missing
 * threads itself (pthread_create reports failure where libgomp would exit; the joined threads'
 * stacks go to glibc's stack cache, where libgomp's pthread_create finds them), then runs one
 * empty region of n threads. The team size each thread's pool was left at is kept in a pthread
 * key (no allocation for the first keys, and a failed allocation is only reported), so the
 * check costs a few nanoseconds when the pool is already right.
 *
 * The main thread's stack grows on demand, and growing it counts against RLIMIT_AS: a kernel
 * whose frames reach below the deepest page touched so far gets SIGSEGV when the address space is
 * full. So the main thread touches FC_STACK_RESERVE bytes of stack (far more than any kernel's
 * frames: the deepest are Winograd's, ~50 KiB) at import and, failing that, at its first call,
 * each time after checking that as much address space is free (an mmap probe; -1 if not), so
 * later calls stay inside it. Other threads' stacks are mapped whole when they start.
 *
 * fc_overlapped(n, fn, size) runs fn(size) on n threads at once and says whether the calls
 * overlapped: OpenBLAS takes a buffer from a process-wide table on each call and allocates the
 * table's entries on first use (exiting when that fails), so the GEMM kernels warm n entries by
 * calls that provably held them at the same time (kernels/gemm_blas.pxi).
 */
/* FC_NAME(name) is name_SFX. A kernel body header (pool_body.h, direct_body.h, wino_impl.h) is
 * #included once per element type with T and SFX defined and names what it defines with
 * FC_NAME, so every type gets its own functions from one source. A kernel header takes only
 * these macros by defining FC_COMMON_NAMES_ONLY around its #include (the rest of this header
 * defines functions for _common.pyx alone). */
#ifndef FASTCONV_COMMON_NAMES
#define FASTCONV_COMMON_NAMES
#define FC_JOIN_(a, b) a##_##b
#define FC_JOIN(a, b) FC_JOIN_(a, b)
#define FC_NAME(name) FC_JOIN(name, SFX)
#endif

#if !defined(FASTCONV_COMMON_H) && !defined(FC_COMMON_NAMES_ONLY)
#define FASTCONV_COMMON_H

#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FC_STACK_RESERVE (256 * 1024)

static pthread_key_t fc_team_key;
static int fc_team_key_ok;
static int fc_stack_touched; /* the main thread's reserve is touched */

static __attribute__((noinline)) void fc_touch_stack(void)
{
    volatile char frame[FC_STACK_RESERVE];
    for (long i = 0; i < FC_STACK_RESERVE; i += 4096) frame[i] = 0;
    __asm__ volatile("" : : "r"(frame) : "memory");
}

/* 0 once the main thread's stack reserve is touched (at once on any other thread), -1 when the
 * address space for it is not free. */
static int fc_stack_reserve(void)
{
    if (fc_stack_touched || getpid() != (pid_t)syscall(SYS_gettid)) return 0;
    void *p = mmap(NULL, FC_STACK_RESERVE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1;
    munmap(p, FC_STACK_RESERVE);
    fc_touch_stack();
    fc_stack_touched = 1;
    return 0;
}

/* Called once, at import (kernels/_common.pyx). */
static void fc_common_init(void)
{
    fc_team_key_ok = pthread_key_create(&fc_team_key, NULL) == 0;
    fc_stack_reserve(); /* (a failure is retried at the first call) */
}

static void *fc_idle_thread(void *arg) { return arg; }

/* Whether k more threads can be created right now (they are created, then joined). */
static int fc_threads_available(int k)
{
    int made = 0, ok = 1;
    pthread_t t[k > 0 ? k : 1];
    for (; made < k; made++)
        if (pthread_create(&t[made], NULL, fc_idle_thread, NULL) != 0) {
            ok = 0;
            break;
        }
    for (int i = 0; i < made; i++) pthread_join(t[i], NULL);
    return ok;
}

/* 0 once the calling thread's OpenMP pool has the threads of an n-thread region (and its stack
 * reserve is touched); -1 when the threads cannot be created (nothing was changed then). The
 * key holds (team size << 1) | 1, 0 for a thread not seen yet. */
static int fc_team_ensure(int n)
{
    intptr_t state = fc_team_key_ok ? (intptr_t)pthread_getspecific(fc_team_key) : 0;
    int team = (int)(state >> 1);
    if (state != 0 && (n <= 1 || n == team)) return 0;
    if (state == 0 && fc_stack_reserve() < 0) return -1;
    if (n > 1 && n != team) {
        if (n > team && !fc_threads_available(n - (team > 1 ? team : 1))) return -1;
        /* (a region with an empty body is compiled away; an OMP_THREAD_LIMIT may give fewer) */
#pragma omp parallel num_threads(n)
        __asm__ volatile("" : : : "memory");
        team = n;
    }
    if (fc_team_key_ok) pthread_setspecific(fc_team_key, (void *)(((intptr_t)team << 1) | 1));
    return 0;
}

static double fc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef void (*fc_work_fn)(int size);

/* Runs fn(size) on each of n threads, started together; 1 when the calls overlapped for more than
 * half of the shortest call (so whatever each call holds from its start to its end was held by
 * all of them at once), else 0. (OpenMP may give fewer threads than n: then those overlapped.) */
static int fc_overlapped(int n, fc_work_fn fn, int size)
{
    double t0[n > 0 ? n : 1], t1[n > 0 ? n : 1];
    int got = 0;
#pragma omp parallel num_threads(n)
    {
        const int i = omp_get_thread_num();
        if (i == 0) got = omp_get_num_threads();
#pragma omp barrier
        t0[i] = fc_now();
        fn(size);
        t1[i] = fc_now();
    }
    double start = t0[0], end = t1[0], shortest = t1[0] - t0[0];
    for (int i = 1; i < got; i++) {
        start = t0[i] > start ? t0[i] : start;
        end = t1[i] < end ? t1[i] : end;
        shortest = t1[i] - t0[i] < shortest ? t1[i] - t0[i] : shortest;
    }
    return end - start > 0.5 * shortest;
}

#endif
