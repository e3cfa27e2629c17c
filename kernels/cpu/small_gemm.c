/* small_gemm.c -- SGEMM for few rows (see small_gemm.h); called by
 * cpu_backend.c's cpu_gemm for the per-time-step products.
 *
 * B (the weights) is read in place, never packed. NT (C = A B^T): a tile of
 * MR rows of A by NR rows of B keeps MR*NR vector accumulators over k, then
 * folds them to scalars with a shuffle tree. NN (C = A B): a tile of MR rows
 * by NV vectors of columns broadcasts A[i,k] against the contiguous row k of
 * B. Invariants: every element of C is summed in one fixed order (lane-wise
 * over k, then the lanes by halves) that does not depend on the split over
 * threads, which only ever hands out whole column blocks.
 *
 * The kernels are a template: the part of this file under SG_TEMPLATE is
 * included into itself once per instruction set (AVX-512, AVX2+FMA, plain
 * x86-64 / any target), inside a `#pragma GCC target` region, with the
 * vector width and tile sizes as macros. The driver picks one variant at
 * run time with __builtin_cpu_supports, so a build without -march still
 * runs AVX-512 code where the CPU has it.
 */
#ifndef SG_TEMPLATE

#include "small_gemm.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "nllm_err.h"

typedef struct {
    int M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    float *C;
} sg_args_t;

/* Kernels of one variant over the column blocks [b0, b1) of C. */
typedef void (*sg_blocks_fn)(const sg_args_t *g, int64_t b0, int64_t b1);

typedef struct {
    const char *name;
    int (*usable)(void);
    sg_blocks_fn nt, nn;
    int nt_cols, nn_cols; /* columns of C per block */
} sg_isa_t;

/* Products of fewer multiply-adds than this run on the calling thread
 * alone. A pool hand-off (condition-variable wake-up and join) costs about
 * 10 us on the 2-core Zen 4 VM; 2^21 multiply-adds take about 60 us on one
 * core, so splitting them still saves ~20 us. */
#ifndef SG_PAR_MIN_WORK
#define SG_PAR_MIN_WORK ((int64_t)1 << 21)
#endif
/* A split call gives each thread a home part of the column blocks, cut
 * into this many chunks: enough that a participant that starts late costs
 * little (the others take its chunks), few enough that claiming them is
 * free. */
#define SG_CHUNKS 8
/* At most this many home parts (more threads share them). */
#define SG_MAX_PARTS 64

/* Software prefetch of the next block of B: into L2 (locality 2 is
 * prefetcht1; it measured 10-15% faster per time step than prefetching into
 * L1, with 16 MB of weights streamed from L3), one block ahead. */
#define SG_PF_LOC 2

#define SG_TEMPLATE

#if defined(__x86_64__) || defined(__i386__)
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
#endif
#define SG_SFX avx512
#define SG_VW 16    /* floats per vector */
#define SG_NT_MR 4  /* NT tile: rows of A ... */
#define SG_NT_NR 4  /* ... by rows of B (16 accumulators of 32 registers) */
#define SG_NN_MR 8  /* NN tile: rows of A ... */
#define SG_NN_NV 3  /* ... by vectors of columns (24 accumulators) */
#include "small_gemm.c"
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define SG_SFX avx2
#define SG_VW 8
#define SG_NT_MR 3 /* 12 accumulators + 3 rows of A of 16 registers */
#define SG_NT_NR 4
#define SG_NN_MR 4 /* 12 accumulators + 3 of B + 1 broadcast */
#define SG_NN_NV 3
#include "small_gemm.c"
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

/* Baseline: SSE2 on x86-64, whatever the target has elsewhere. */
#define SG_SFX generic
#define SG_VW 4
#define SG_NT_MR 2
#define SG_NT_NR 4
#define SG_NN_MR 4
#define SG_NN_NV 2
#include "small_gemm.c"

#undef SG_TEMPLATE

#if defined(__x86_64__) || defined(__i386__)
static int usable_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

static int usable_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

static int usable_generic(void)
{
    return 1;
}

/* In order of preference. */
static const sg_isa_t sg_isas[] = {
#if defined(__x86_64__) || defined(__i386__)
    {"avx512", usable_avx512, nt_blocks_avx512, nn_blocks_avx512, k_nt_cols_avx512,
     k_nn_cols_avx512},
    {"avx2", usable_avx2, nt_blocks_avx2, nn_blocks_avx2, k_nt_cols_avx2, k_nn_cols_avx2},
#endif
    {"generic", usable_generic, nt_blocks_generic, nn_blocks_generic, k_nt_cols_generic,
     k_nn_cols_generic},
};
#define SG_NISA ((int)(sizeof sg_isas / sizeof sg_isas[0]))

/* The variant in use; chosen on first use (a benign race: every thread
 * picks the same one). */
static _Atomic(const sg_isa_t *) sg_current;

static const sg_isa_t *sg_auto(void)
{
    for (int i = 0; i < SG_NISA; i++)
        if (sg_isas[i].usable())
            return &sg_isas[i];
    return &sg_isas[SG_NISA - 1];
}

static const sg_isa_t *sg_isa(void)
{
    const sg_isa_t *isa = atomic_load_explicit(&sg_current, memory_order_acquire);
    if (!isa) {
        isa = sg_auto();
        atomic_store_explicit(&sg_current, isa, memory_order_release);
    }
    return isa;
}

const char *nllm_small_gemm_isa(void)
{
    return sg_isa()->name;
}

int nllm_small_gemm_use(int M)
{
    return M <= NLLM_SMALL_GEMM_MAX_M && sg_isa() != &sg_isas[SG_NISA - 1];
}

int nllm_small_gemm_force_isa(const char *name)
{
    if (!name) {
        atomic_store_explicit(&sg_current, sg_auto(), memory_order_release);
        return 0;
    }
    for (int i = 0; i < SG_NISA; i++)
        if (strcmp(sg_isas[i].name, name) == 0) {
            if (!sg_isas[i].usable())
                return NLLM_EINVAL;
            atomic_store_explicit(&sg_current, &sg_isas[i], memory_order_release);
            return 0;
        }
    return NLLM_EINVAL;
}

/* A call split over the pool. The column blocks form one home part per
 * thread, the same part for the same thread at every call, so a thread
 * reads the same rows (NT) or columns (NN) of each weight matrix at every
 * time step: its share of the weights stays in its own core's cache
 * instead of moving between cores from call to call. A participant claims
 * chunks of its home part, then of the others' parts, so one that starts
 * late (its core busy with something else) just gets less. Which thread
 * computes a block never changes its result. */
typedef struct {
    _Alignas(64) _Atomic int64_t next; /* next unclaimed block of the part */
} sg_part_t;

typedef struct {
    const sg_isa_t *isa;
    int transB;
    sg_args_t g;
    int64_t blocks;
    int parts;
    sg_part_t part[SG_MAX_PARTS];
} sg_job_t;

static void sg_blocks(const sg_job_t *job, int64_t b0, int64_t b1)
{
    if (job->transB)
        job->isa->nt(&job->g, b0, b1);
    else
        job->isa->nn(&job->g, b0, b1);
}

/* Part p's blocks: [*b0, *b1). */
static void sg_part_range(const sg_job_t *job, int p, int64_t *b0, int64_t *b1)
{
    *b0 = job->blocks * p / job->parts;
    *b1 = job->blocks * (p + 1) / job->parts;
}

/* Runs the unclaimed chunks of part p. */
static void sg_drain_part(sg_job_t *job, int p)
{
    int64_t lo, hi;
    sg_part_range(job, p, &lo, &hi);
    int64_t chunk = (hi - lo + SG_CHUNKS - 1) / SG_CHUNKS;
    if (chunk < 1)
        chunk = 1;
    for (;;) {
        int64_t b0 = atomic_fetch_add_explicit(&job->part[p].next, chunk, memory_order_relaxed);
        if (b0 >= hi)
            return;
        sg_blocks(job, b0, b0 + chunk < hi ? b0 + chunk : hi);
    }
}

/* The pool calls this once per thread with [k, k + 1), k the thread's index
 * (inline: once with [0, threads)): its home part k first, then the rest. */
static void sg_participant(void *arg, int64_t begin, int64_t end)
{
    (void)end;
    sg_job_t *job = arg;
    int home = (int)(begin % job->parts);
    for (int i = 0; i < job->parts; i++)
        sg_drain_part(job, (home + i) % job->parts);
}

void nllm_small_gemm(nllm_pool_t *pool, int transB, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0 || alpha == 0.0f) {
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            for (int j = 0; j < N; j++)
                c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        }
        return;
    }
    sg_job_t job = {.isa = sg_isa(),
                    .transB = transB != 0,
                    .g = {M, N, K, lda, ldb, ldc, alpha, beta, A, B, C}};
    int cols = job.transB ? job.isa->nt_cols : job.isa->nn_cols;
    job.blocks = ((int64_t)N + cols - 1) / cols;
    int64_t work = (int64_t)M * N * K;
    if (!pool || work < SG_PAR_MIN_WORK || job.blocks < 2) {
        sg_blocks(&job, 0, job.blocks);
        return;
    }
    int threads = nllm_pool_threads(pool);
    job.parts = threads < SG_MAX_PARTS ? threads : SG_MAX_PARTS;
    if (job.parts > job.blocks)
        job.parts = (int)job.blocks;
    for (int p = 0; p < job.parts; p++) {
        int64_t b0, b1;
        sg_part_range(&job, p, &b0, &b1);
        atomic_init(&job.part[p].next, b0);
    }
    /* one index per thread: the pool hands thread k the range [k, k + 1) */
    nllm_pool_for(pool, sg_participant, &job, threads, work);
}

#else /* SG_TEMPLATE ------------------------------------------------------- */

/* Kernels for one instruction set. In: SG_SFX (name suffix), SG_VW (floats
 * per vector: 4, 8 or 16), SG_NT_MR, SG_NT_NR (1..4), SG_NN_MR (1..8),
 * SG_NN_NV (1..4). Out: nt_blocks_SFX, nn_blocks_SFX, and the constants
 * k_nt_cols_SFX, k_nn_cols_SFX (columns of C per block). */

#define SG_CAT2(a, b) a##_##b
#define SG_CAT(a, b) SG_CAT2(a, b)
#define SG(name) SG_CAT(name, SG_SFX)
#define SG_INLINE static inline __attribute__((always_inline))

typedef float SG(vf) __attribute__((vector_size(4 * SG_VW)));
/* the same, for loads and stores at any float address */
typedef float SG(vfu) __attribute__((vector_size(4 * SG_VW), aligned(4), may_alias));
typedef int SG(vi) __attribute__((vector_size(4 * SG_VW)));
#define VF SG(vf)
#define VFU SG(vfu)
#define VI SG(vi)

enum { SG(k_nt_cols) = SG_NT_NR, SG(k_nn_cols) = SG_NN_NV * SG_VW };

/* ---- horizontal sums ---- */

/* Folding two vectors x, y whose lanes hold segments of w lanes (one segment
 * per accumulator) into one vector of segments of w/2: lane o takes
 * lane SG_LO(o, w) + lane SG_HI(o, w) of the concatenation x:y. x's
 * segments come first, then y's, so the order of accumulators is kept. */
#define SG_LO1(o, w, h) (((o) / ((w) / 2)) * (w) + (o) % ((w) / 2) + (h))
#define SG_LO(o, w) ((o) < SG_VW / 2 ? SG_LO1(o, w, 0) : SG_VW + SG_LO1((o) - SG_VW / 2, w, 0))
#define SG_HI(o, w) (SG_LO(o, w) + (w) / 2)
#if SG_VW == 16
#define SG_IDX(F, w)                                                                         \
    F(0, w), F(1, w), F(2, w), F(3, w), F(4, w), F(5, w), F(6, w), F(7, w), F(8, w), F(9, w),  \
        F(10, w), F(11, w), F(12, w), F(13, w), F(14, w), F(15, w)
#elif SG_VW == 8
#define SG_IDX(F, w) F(0, w), F(1, w), F(2, w), F(3, w), F(4, w), F(5, w), F(6, w), F(7, w)
#elif SG_VW == 4
#define SG_IDX(F, w) F(0, w), F(1, w), F(2, w), F(3, w)
#else
#error "SG_VW must be 4, 8 or 16"
#endif
#if defined(__clang__) || __GNUC__ >= 12
#define SG_SHUF(x, y, F, w) __builtin_shufflevector(x, y, SG_IDX(F, w))
#else
#define SG_SHUF(x, y, F, w) __builtin_shuffle(x, y, (VI){SG_IDX(F, w)})
#endif

#define SG_STAGE(x, w)                                                                       \
    do {                                                                                     \
        for (int p_ = 0; p_ < (w) / 2; p_++)                                                \
            (x)[p_] = SG_SHUF((x)[2 * p_], (x)[2 * p_ + 1], SG_LO, w) +                      \
                      SG_SHUF((x)[2 * p_], (x)[2 * p_ + 1], SG_HI, w);                       \
    } while (0)

/* x[0..SG_VW) -> one vector whose lane q is the sum of the lanes of x[q],
 * added by halves (lane l + lane l + VW/2, then l + VW/4, ...). Clobbers x. */
SG_INLINE VF SG(reduce)(VF *x)
{
#if SG_VW == 16
    SG_STAGE(x, 16);
#endif
#if SG_VW >= 8
    SG_STAGE(x, 8);
#endif
    SG_STAGE(x, 4);
    SG_STAGE(x, 2);
    return x[0];
}

/* ---- NT: C = alpha A B^T + beta C ---- */

/* The mr x nr tile at (i0, j0); mr, nr are constants after inlining. While
 * it runs, the rows pf[0..npf) of B (the next block's) are prefetched. */
SG_INLINE void SG(nt_tile)(const sg_args_t *g, int i0, int j0, const int mr, const int nr,
                           const float *const *pf, int npf)
{
    enum { NACC = SG_NT_MR * SG_NT_NR, NRED = (NACC + SG_VW - 1) / SG_VW * SG_VW };
    const int K = g->K;
    const float *ap[SG_NT_MR], *bp[SG_NT_NR];
    for (int r = 0; r < mr; r++)
        ap[r] = g->A + (size_t)(i0 + r) * g->lda;
    for (int c = 0; c < nr; c++)
        bp[c] = g->B + (size_t)(j0 + c) * g->ldb;
    VF acc[NRED];
    for (int q = 0; q < NRED; q++)
        acc[q] = (VF){0};
    int k = 0;
    for (; k + SG_VW <= K; k += SG_VW) {
        VF a[SG_NT_MR], b[SG_NT_NR];
        for (int p = 0; p < npf; p++)
            __builtin_prefetch(pf[p] + k, 0, SG_PF_LOC);
        for (int r = 0; r < mr; r++)
            a[r] = *(const VFU *)(ap[r] + k);
        for (int c = 0; c < nr; c++)
            b[c] = *(const VFU *)(bp[c] + k);
        for (int r = 0; r < mr; r++)
            for (int c = 0; c < nr; c++)
                acc[r * nr + c] += a[r] * b[c];
    }
    if (k < K) { /* the last K % VW, zero-padded */
        size_t bytes = sizeof(float) * (size_t)(K - k);
        VF a[SG_NT_MR], b[SG_NT_NR];
        for (int r = 0; r < mr; r++) {
            a[r] = (VF){0};
            memcpy(&a[r], ap[r] + k, bytes);
        }
        for (int c = 0; c < nr; c++) {
            b[c] = (VF){0};
            memcpy(&b[c], bp[c] + k, bytes);
        }
        for (int r = 0; r < mr; r++)
            for (int c = 0; c < nr; c++)
                acc[r * nr + c] += a[r] * b[c];
    }
    float s[NRED];
    for (int q = 0; q < mr * nr; q += SG_VW) {
        VF v = SG(reduce)(acc + q);
        memcpy(s + q, &v, sizeof v);
    }
    const float alpha = g->alpha, beta = g->beta;
    for (int r = 0; r < mr; r++) {
        float *cp = g->C + (size_t)(i0 + r) * g->ldc + j0;
        for (int c = 0; c < nr; c++) {
            float v = alpha * s[r * nr + c];
            cp[c] = beta == 0.0f ? v : v + beta * cp[c];
        }
    }
}

#define SG_NT_NRCASE(m, n)                                                                   \
    case n:                                                                                  \
        SG(nt_tile)(g, i0, j0, m, n, pf, npf);                                               \
        break;
#if SG_NT_NR == 4
#define SG_NT_COLS(m) \
    switch (nr) { SG_NT_NRCASE(m, 1) SG_NT_NRCASE(m, 2) SG_NT_NRCASE(m, 3) SG_NT_NRCASE(m, 4) }
#else
#error "the NT column switch is written for SG_NT_NR == 4"
#endif

static void SG(nt_tile_any)(const sg_args_t *g, int i0, int j0, int mr, int nr,
                            const float *const *pf, int npf)
{
    switch (mr) {
    case 1:
        SG_NT_COLS(1)
        break;
#if SG_NT_MR >= 2
    case 2:
        SG_NT_COLS(2)
        break;
#endif
#if SG_NT_MR >= 3
    case 3:
        SG_NT_COLS(3)
        break;
#endif
#if SG_NT_MR >= 4
    case 4:
        SG_NT_COLS(4)
        break;
#endif
    }
}

/* Block b is the columns [b NR, b NR + NR) of C (rows of B): each block's
 * rows of B are read from memory once and stay in L1 across the rows of A.
 * The next block's rows are prefetched meanwhile, one row per tile when
 * there are at least NR tiles of rows, else all of them in the first. */
static void SG(nt_blocks)(const sg_args_t *g, int64_t b0, int64_t b1)
{
    const int M = g->M, N = g->N, ntiles = (M + SG_NT_MR - 1) / SG_NT_MR;
    for (int64_t blk = b0; blk < b1; blk++) {
        int j0 = (int)blk * SG_NT_NR;
        int nr = N - j0 < SG_NT_NR ? N - j0 : SG_NT_NR;
        const float *next[SG_NT_NR];
        int nnext = 0;
        for (int c = 0; c < SG_NT_NR && j0 + SG_NT_NR + c < N; c++)
            next[nnext++] = g->B + (size_t)(j0 + SG_NT_NR + c) * g->ldb;
        for (int i0 = 0, t = 0; i0 < M; i0 += SG_NT_MR, t++) {
            const float *const *pf = next;
            int npf = 0;
            if (ntiles >= SG_NT_NR) {
                pf = next + t;
                npf = t < nnext;
            } else if (t == 0) {
                npf = nnext;
            }
            if (nr == SG_NT_NR && i0 + SG_NT_MR <= M)
                SG(nt_tile)(g, i0, j0, SG_NT_MR, SG_NT_NR, pf, npf);
            else
                SG(nt_tile_any)(g, i0, j0, M - i0 < SG_NT_MR ? M - i0 : SG_NT_MR, nr, pf, npf);
        }
    }
}

/* ---- NN: C = alpha A B + beta C ---- */

/* The tile of mr rows by nv vectors of columns at (i0, j0). pf, when not
 * NULL, is the next block's panel, prefetched row by row meanwhile. */
SG_INLINE void SG(nn_tile)(const sg_args_t *g, int i0, int j0, const int mr, const int nv,
                           const float *pf)
{
    const int K = g->K, ldb = g->ldb;
    const float *ap[SG_NN_MR];
    for (int r = 0; r < mr; r++)
        ap[r] = g->A + (size_t)(i0 + r) * g->lda;
    VF acc[SG_NN_MR][SG_NN_NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++)
            acc[r][v] = (VF){0};
    const float *bp = g->B + j0;
    for (int k = 0; k < K; k++, bp += ldb) {
        VF b[SG_NN_NV];
        if (pf) {
            for (int v = 0; v < SG_NN_NV; v++)
                __builtin_prefetch(pf + v * SG_VW, 0, SG_PF_LOC);
            __builtin_prefetch(pf + SG_NN_NV * SG_VW - 1, 0, SG_PF_LOC);
            pf += ldb;
        }
        for (int v = 0; v < nv; v++)
            b[v] = *(const VFU *)(bp + v * SG_VW);
        for (int r = 0; r < mr; r++) {
            const float x = ap[r][k];
            for (int v = 0; v < nv; v++)
                acc[r][v] += b[v] * x;
        }
    }
    const float alpha = g->alpha, beta = g->beta;
    for (int r = 0; r < mr; r++) {
        float *cp = g->C + (size_t)(i0 + r) * g->ldc + j0;
        for (int v = 0; v < nv; v++) {
            VF o = acc[r][v] * alpha;
            if (beta != 0.0f)
                o = o + beta * *(const VFU *)(cp + v * SG_VW);
            *(VFU *)(cp + v * SG_VW) = o;
        }
    }
}

/* The last w < VW columns of C, as one zero-padded vector: the same sums,
 * lane for lane, as nn_tile. */
SG_INLINE void SG(nn_tail)(const sg_args_t *g, int i0, int j0, const int mr, int w)
{
    const int K = g->K, ldb = g->ldb;
    const float *ap[SG_NN_MR];
    for (int r = 0; r < mr; r++)
        ap[r] = g->A + (size_t)(i0 + r) * g->lda;
    VF acc[SG_NN_MR];
    for (int r = 0; r < mr; r++)
        acc[r] = (VF){0};
    float t[SG_VW] = {0};
    const float *bp = g->B + j0;
    for (int k = 0; k < K; k++, bp += ldb) {
        for (int c = 0; c < w; c++)
            t[c] = bp[c];
        VF b;
        memcpy(&b, t, sizeof b);
        for (int r = 0; r < mr; r++)
            acc[r] += b * ap[r][k];
    }
    const float alpha = g->alpha, beta = g->beta;
    for (int r = 0; r < mr; r++) {
        float *cp = g->C + (size_t)(i0 + r) * g->ldc + j0;
        VF o = acc[r] * alpha;
        memcpy(t, &o, sizeof o);
        for (int c = 0; c < w; c++)
            cp[c] = beta == 0.0f ? t[c] : t[c] + beta * cp[c];
    }
}

/* One instance per row count m; `what` is the tile call with m. */
#define SG_NN_ROWS(what)                                                                     \
    switch (mr) {                                                                            \
    case 1: what(1); break;                                                                  \
    SG_NN_ROWS_2_8(what)                                                                     \
    }
#define SG_NN_CASE(what, m) case m: what(m); break;
#if SG_NN_MR == 8
#define SG_NN_ROWS_2_8(what)                                                                 \
    SG_NN_CASE(what, 2) SG_NN_CASE(what, 3) SG_NN_CASE(what, 4) SG_NN_CASE(what, 5)          \
    SG_NN_CASE(what, 6) SG_NN_CASE(what, 7) SG_NN_CASE(what, 8)
#elif SG_NN_MR == 6
#define SG_NN_ROWS_2_8(what)                                                                 \
    SG_NN_CASE(what, 2) SG_NN_CASE(what, 3) SG_NN_CASE(what, 4) SG_NN_CASE(what, 5)          \
    SG_NN_CASE(what, 6)
#elif SG_NN_MR == 4
#define SG_NN_ROWS_2_8(what) SG_NN_CASE(what, 2) SG_NN_CASE(what, 3) SG_NN_CASE(what, 4)
#else
#error "SG_NN_MR must be 4, 6 or 8"
#endif

static void SG(nn_rows_full)(const sg_args_t *g, int i0, int j0, int mr, const float *pf)
{
#define SG_NN_FULL(m) SG(nn_tile)(g, i0, j0, m, SG_NN_NV, pf)
    SG_NN_ROWS(SG_NN_FULL)
#undef SG_NN_FULL
}

static void SG(nn_rows_one)(const sg_args_t *g, int i0, int j0, int mr)
{
#define SG_NN_ONE(m) SG(nn_tile)(g, i0, j0, m, 1, NULL)
    SG_NN_ROWS(SG_NN_ONE)
#undef SG_NN_ONE
}

static void SG(nn_rows_tail)(const sg_args_t *g, int i0, int j0, int mr, int w)
{
#define SG_NN_TAIL(m) SG(nn_tail)(g, i0, j0, m, w)
    SG_NN_ROWS(SG_NN_TAIL)
#undef SG_NN_TAIL
}

/* Block b is the columns [b NV VW, (b + 1) NV VW) of C: its panel of B
 * (K rows of NV vectors) stays in L2 across the rows of A. The first tile
 * of rows prefetches the next block's panel, when that is a full one. */
static void SG(nn_blocks)(const sg_args_t *g, int64_t b0, int64_t b1)
{
    const int M = g->M, N = g->N, cols = SG_NN_NV * SG_VW;
    for (int64_t blk = b0; blk < b1; blk++) {
        int j0 = (int)blk * cols;
        int width = N - j0 < cols ? N - j0 : cols;
        int nvec = width / SG_VW, w = width % SG_VW;
        const float *next = j0 + 2 * cols <= N ? g->B + j0 + cols : NULL;
        for (int i0 = 0; i0 < M; i0 += SG_NN_MR) {
            int mr = M - i0 < SG_NN_MR ? M - i0 : SG_NN_MR;
            const float *pf = i0 == 0 ? next : NULL;
            if (nvec == SG_NN_NV) {
                if (mr == SG_NN_MR)
                    SG(nn_tile)(g, i0, j0, SG_NN_MR, SG_NN_NV, pf);
                else
                    SG(nn_rows_full)(g, i0, j0, mr, pf);
            } else {
                for (int v = 0; v < nvec; v++)
                    SG(nn_rows_one)(g, i0, j0 + v * SG_VW, mr);
            }
            if (w)
                SG(nn_rows_tail)(g, i0, j0 + nvec * SG_VW, mr, w);
        }
    }
}

#undef SG_NN_ROWS
#undef SG_NN_CASE
#undef SG_NN_ROWS_2_8
#undef SG_NT_NRCASE
#undef SG_NT_COLS
#undef SG_STAGE
#undef SG_IDX
#undef SG_SHUF
#undef SG_LO1
#undef SG_LO
#undef SG_HI
#undef VF
#undef VFU
#undef VI
#undef SG_INLINE
#undef SG
#undef SG_CAT
#undef SG_CAT2
#undef SG_SFX
#undef SG_VW
#undef SG_NT_MR
#undef SG_NT_NR
#undef SG_NN_MR
#undef SG_NN_NV

#endif /* SG_TEMPLATE */
