/* gemm.c -- nllm's packed SGEMM (see gemm.h).
 *
 * The loops of GotoBLAS/BLIS: for each NC-wide panel of op(B) and each
 * KC-deep slice of it, the panel is packed once (in NR-column slivers,
 * k-major) by all participants; then every participant claims tasks -- an
 * MC-row block of op(A), packed into its own buffer in MR-row slivers,
 * times a range of the panel's slivers -- and runs an MR x NR register
 * tile per sliver pair. The tile keeps MR x NR/VW vector accumulators
 * over k and adds alpha times them into C (beta times C on the first
 * slice). Partial tiles at the right and bottom edges run the same code on
 * a copy of C's tile (the packed operands are zero-padded), so an element
 * is computed the same way wherever it sits. The pool's threads run all
 * slices of a call in one parallel region with one spin barrier per slice
 * (gm_participant): at 16 threads a slice of a per-time-step product
 * takes microseconds, less than waking sleeping threads.
 *
 * Invariant (exact resume relies on it): which participant computes a
 * tile, MC and the number of tasks never change a result; KC (the depth of
 * a slice) is a constant per variant.
 *
 * Like small_gemm.c, the part of this file under GM_TEMPLATE is included
 * into itself once per instruction set inside a `#pragma GCC target`
 * region; the driver picks the variant at run time.
 */
#ifndef GM_TEMPLATE

#include "gemm.h"

#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The largest tile and slice any variant uses (buffer sizes). */
#define GM_KC 256
#define GM_NC 2048
#define GM_MAX_MR 12
#define GM_MAX_NR 32
#define GM_MAX_MC 144

struct nllm_gemm_ws {
    int threads;
    float *bpack[2]; /* each GM_KC x (GM_NC + GM_MAX_NR): slices alternate */
    float **apack;   /* per participant: GM_MAX_MC x GM_KC */
};

/* One product, as the participants see it. */
typedef struct {
    int transA, transB, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    float *C;
} gm_args_t;

typedef struct gm_isa gm_isa_t;

/* One NC x KC slice of the product. */
typedef struct {
    const gm_args_t *g;
    float *bpack; /* its packed panel of op(B) */
    int j0, nc, k0, kc, first;
    int mc, ngrp, slivers, per_grp;
    int64_t ntasks;
} gm_slice_t;

struct gm_isa {
    const char *name;
    int (*usable)(void);
    void (*pack_b)(const gm_slice_t *s, int64_t s0, int64_t s1);
    void (*task)(const gm_slice_t *s, float *apack, int64_t t);
    int mr, nr;
};

/* Products of fewer multiply-adds than this stay on the calling thread. */
#define GM_PAR_MIN_WORK ((int64_t)1 << 20)

#define GM_TEMPLATE

#if defined(__x86_64__) || defined(__i386__)
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
#endif
#define GM_SFX avx512
#define GM_VW 16
#define GM_MR 12 /* 24 accumulators, 2 vectors of B, 1 broadcast of 32 registers */
#define GM_NV 2
#include "gemm.c"
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
#define GM_SFX avx2
#define GM_VW 8
#define GM_MR 6 /* 12 accumulators, 2 vectors of B, 1 broadcast of 16 registers */
#define GM_NV 2
#include "gemm.c"
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx")
#endif
#define GM_SFX avx
#define GM_VW 8
#define GM_MR 6
#define GM_NV 2
#include "gemm.c"
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#undef GM_TEMPLATE

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

static int usable_avx(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx");
}

/* In order of preference. */
static const gm_isa_t gm_isas[] = {
    {"avx512", usable_avx512, pack_b_avx512, task_avx512, 12, 32},
    {"avx2", usable_avx2, pack_b_avx2, task_avx2, 6, 16},
    {"avx", usable_avx, pack_b_avx, task_avx, 6, 16},
};
#define GM_NISA ((int)(sizeof gm_isas / sizeof gm_isas[0]))
#else
static const gm_isa_t gm_isas[1];
#define GM_NISA 0
#endif

/* The variant in use; NULL until chosen, and where none runs. */
static _Atomic(const gm_isa_t *) gm_current;
static _Atomic int gm_chosen;

static const gm_isa_t *gm_auto(void)
{
    for (int i = 0; i < GM_NISA; i++)
        if (gm_isas[i].usable())
            return &gm_isas[i];
    return NULL;
}

static const gm_isa_t *gm_isa(void)
{
    if (!atomic_load_explicit(&gm_chosen, memory_order_acquire)) {
        atomic_store_explicit(&gm_current, gm_auto(), memory_order_release);
        atomic_store_explicit(&gm_chosen, 1, memory_order_release);
    }
    return atomic_load_explicit(&gm_current, memory_order_acquire);
}

const char *nllm_gemm_isa(void)
{
    const gm_isa_t *isa = gm_isa();
    return isa ? isa->name : NULL;
}

int nllm_gemm_force_isa(const char *name)
{
    const gm_isa_t *isa = NULL;
    if (!name) {
        isa = gm_auto();
    } else {
        for (int i = 0; i < GM_NISA && !isa; i++)
            if (strcmp(gm_isas[i].name, name) == 0)
                isa = &gm_isas[i];
        if (!isa || !isa->usable())
            return NLLM_EINVAL;
    }
    atomic_store_explicit(&gm_current, isa, memory_order_release);
    atomic_store_explicit(&gm_chosen, 1, memory_order_release);
    return 0;
}

int nllm_gemm_ws_create(int threads, nllm_gemm_ws_t **out, nllm_err_t *err)
{
    *out = NULL;
    if (threads < 1)
        threads = 1;
    nllm_gemm_ws_t *ws = calloc(1, sizeof *ws);
    if (!ws)
        return nllm_err_set(err, NLLM_ENOMEM, "cpu gemm: out of memory");
    ws->threads = threads;
    size_t bbytes = sizeof(float) * GM_KC * (GM_NC + GM_MAX_NR);
    size_t abytes = sizeof(float) * GM_KC * GM_MAX_MC;
    ws->apack = calloc((size_t)threads, sizeof *ws->apack);
    int ok = ws->apack && posix_memalign((void **)&ws->bpack[0], 64, bbytes) == 0 &&
             posix_memalign((void **)&ws->bpack[1], 64, bbytes) == 0;
    for (int t = 0; ok && t < threads; t++)
        ok = posix_memalign((void **)&ws->apack[t], 64, abytes) == 0;
    if (!ok) {
        nllm_gemm_ws_destroy(ws);
        return nllm_err_set(err, NLLM_ENOMEM,
                            "cpu gemm: out of memory for %zu bytes of packing buffers",
                            2 * bbytes + abytes * (size_t)threads);
    }
    *out = ws;
    return 0;
}

void nllm_gemm_ws_destroy(nllm_gemm_ws_t *ws)
{
    if (!ws)
        return;
    if (ws->apack)
        for (int t = 0; t < ws->threads; t++)
            free(ws->apack[t]);
    free(ws->apack);
    free(ws->bpack[0]);
    free(ws->bpack[1]);
    free(ws);
}

/* A barrier for the participants of one call: they spin a little (a slice
 * takes microseconds at 16 threads; a sleep and wake-up costs more), then
 * yield the core (an oversubscribed machine). */
typedef struct {
    int n;
    _Atomic int count;
    _Atomic unsigned gen;
} gm_barrier_t;

static void gm_barrier_wait(gm_barrier_t *b)
{
    if (b->n == 1)
        return;
    unsigned gen = atomic_load_explicit(&b->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->gen, 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->gen, memory_order_acquire) == gen; spins++) {
        if (spins < 4000) {
            nllm_cpu_relax();
        } else {
            sched_yield();
        }
    }
}

/* One call, shared by its participants. */
typedef struct {
    const gm_isa_t *isa;
    const gm_args_t *g;
    nllm_gemm_ws_t *ws;
    int mc, nblk;
    gm_barrier_t barrier;
    _Atomic int64_t next[2]; /* task counters of alternate slices */
} gm_call_t;

/* A participant of a call, for every slice in order: packs its share of the
 * slice's panel (into the buffer the slice before last used), waits for
 * the others, then claims the slice's tasks until none are left. One
 * barrier per slice is enough: a participant reaches slice i's barrier
 * only after its tasks of slice i-1, so past it no one still reads the
 * buffer (or the counter) that slice i+1 reuses. Participant 0 resets that
 * counter there. Which participant runs a task never changes a result. */
static void gm_participant(void *arg, int64_t me, int64_t end)
{
    (void)end;
    gm_call_t *call = arg;
    const gm_args_t *g = call->g;
    const gm_isa_t *isa = call->isa;
    int np = call->barrier.n, nr = isa->nr;
    float *apack = me < call->ws->threads ? call->ws->apack[me] : NULL;
    int idx = 0;
    for (int j0 = 0; j0 < g->N; j0 += GM_NC) {
        int nc = g->N - j0 < GM_NC ? g->N - j0 : GM_NC;
        int slivers = (nc + nr - 1) / nr;
        /* few row blocks: split the panel's slivers into groups as well */
        int ngrp = call->nblk >= 2 * np ? 1 : (2 * np + call->nblk - 1) / call->nblk;
        if (ngrp > slivers)
            ngrp = slivers;
        for (int k0 = 0; k0 < g->K; k0 += GM_KC, idx++) {
            gm_slice_t s = {.g = g,
                            .bpack = call->ws->bpack[idx & 1],
                            .j0 = j0,
                            .nc = nc,
                            .k0 = k0,
                            .kc = g->K - k0 < GM_KC ? g->K - k0 : GM_KC,
                            .first = k0 == 0,
                            .mc = call->mc,
                            .ngrp = ngrp,
                            .slivers = slivers,
                            .per_grp = (slivers + ngrp - 1) / ngrp,
                            .ntasks = (int64_t)call->nblk * ngrp};
            isa->pack_b(&s, slivers * me / np, slivers * (me + 1) / np);
            gm_barrier_wait(&call->barrier);
            _Atomic int64_t *next = &call->next[idx & 1];
            if (me == 0)
                atomic_store_explicit(&call->next[(idx + 1) & 1], 0, memory_order_relaxed);
            if (!apack)
                continue;
            for (;;) {
                int64_t t = atomic_fetch_add_explicit(next, 1, memory_order_relaxed);
                if (t >= s.ntasks)
                    break;
                isa->task(&s, apack, t);
            }
        }
    }
}

static void gm_scale(int M, int N, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++)
            c[j] = beta == 0.0f ? 0.0f : beta * c[j];
    }
}

void nllm_gemm(nllm_pool_t *pool, nllm_gemm_ws_t *ws, int transA, int transB, int M, int N,
               int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta,
               float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    const gm_isa_t *isa = gm_isa();
    if (K <= 0 || alpha == 0.0f || !isa) {
        gm_scale(M, N, beta, C, ldc);
        return;
    }
    gm_args_t g = {transA != 0, transB != 0, M, N, K, lda, ldb, ldc, alpha, beta, A, B, C};
    int np = (int64_t)M * N * K >= GM_PAR_MIN_WORK ? nllm_pool_threads(pool) : 1;
    /* MC: a multiple of MR, small enough that every participant gets two
     * blocks where M allows (results do not depend on it) */
    int mr = isa->mr;
    int mc = (M + 2 * np - 1) / (2 * np);
    mc = (mc + mr - 1) / mr * mr;
    if (mc > GM_MAX_MC / mr * mr)
        mc = GM_MAX_MC / mr * mr;
    gm_call_t call = {.isa = isa, .g = &g, .ws = ws, .mc = mc, .nblk = (M + mc - 1) / mc};
    call.barrier.n = np;
    atomic_init(&call.barrier.count, 0);
    atomic_init(&call.barrier.gen, 0);
    atomic_init(&call.next[0], 0);
    atomic_init(&call.next[1], 0);
    if (np > 1)
        nllm_pool_all(pool, gm_participant, &call);
    else
        gm_participant(&call, 0, 1);
}

#else /* GM_TEMPLATE ------------------------------------------------------- */

/* Kernels of one instruction set. In: GM_SFX, GM_VW (floats per vector),
 * GM_MR (rows per tile), GM_NV (vectors per tile row; NR = NV * VW),
 * Out: pack_b_SFX, task_SFX. */

#define GM_CAT2(a, b) a##_##b
#define GM_CAT(a, b) GM_CAT2(a, b)
#define GM(name) GM_CAT(name, GM_SFX)
#define GM_NR (GM_NV * GM_VW)
#define GM_INLINE static inline __attribute__((always_inline))

typedef float GM(vf) __attribute__((vector_size(4 * GM_VW)));
typedef float GM(vfu) __attribute__((vector_size(4 * GM_VW), aligned(4), may_alias));
#define VF GM(vf)
#define VFU GM(vfu)

/* Slivers [s0, s1) of the slice's panel of op(B): sliver q holds columns
 * j0 + q*NR .. +NR as kc rows of NR floats, zero past N. */
static void GM(pack_b)(const gm_slice_t *s, int64_t s0, int64_t s1)
{
    const gm_args_t *g = s->g;
    for (int64_t q = s0; q < s1; q++) {
        float *dst = s->bpack + (size_t)q * s->kc * GM_NR;
        int j = s->j0 + (int)q * GM_NR;
        int n = g->N - j < GM_NR ? g->N - j : GM_NR;
        if (!g->transB) {
            const float *src = g->B + (size_t)s->k0 * g->ldb + j;
            for (int k = 0; k < s->kc; k++, src += g->ldb, dst += GM_NR) {
                if (n == GM_NR) {
                    for (int v = 0; v < GM_NV; v++)
                        *(VF *)(dst + v * GM_VW) = *(const VFU *)(src + v * GM_VW);
                } else {
                    memcpy(dst, src, sizeof(float) * (size_t)n);
                    memset(dst + n, 0, sizeof(float) * (size_t)(GM_NR - n));
                }
            }
        } else {
            /* op(B)[k][j] = B[j][k]: row j of B is contiguous in k */
            if (n < GM_NR)
                memset(dst, 0, sizeof(float) * (size_t)s->kc * GM_NR);
            for (int jj = 0; jj < n; jj++) {
                const float *src = g->B + (size_t)(j + jj) * g->ldb + s->k0;
                for (int k = 0; k < s->kc; k++)
                    dst[(size_t)k * GM_NR + jj] = src[k];
            }
        }
    }
}

/* Rows [i0, i0 + m) of op(A) at depth [k0, k0 + kc) into MR-row slivers,
 * k-major, zero past M. */
static void GM(pack_a)(const gm_slice_t *s, float *dst, int i0, int m)
{
    const gm_args_t *g = s->g;
    for (int r0 = 0; r0 < m; r0 += GM_MR, dst += (size_t)s->kc * GM_MR) {
        int mr = m - r0 < GM_MR ? m - r0 : GM_MR;
        if (g->transA) {
            /* op(A)[i][k] = A[k][i]: row k of A is contiguous in i */
            const float *src = g->A + (size_t)s->k0 * g->lda + i0 + r0;
            for (int k = 0; k < s->kc; k++, src += g->lda) {
                float *d = dst + (size_t)k * GM_MR;
                memcpy(d, src, sizeof(float) * (size_t)mr);
                if (mr < GM_MR)
                    memset(d + mr, 0, sizeof(float) * (size_t)(GM_MR - mr));
            }
        } else {
            if (mr < GM_MR)
                memset(dst, 0, sizeof(float) * (size_t)s->kc * GM_MR);
            for (int ii = 0; ii < mr; ii++) {
                const float *src = g->A + (size_t)(i0 + r0 + ii) * g->lda + s->k0;
                for (int k = 0; k < s->kc; k++)
                    dst[(size_t)k * GM_MR + ii] = src[k];
            }
        }
    }
}

/* The MR x NR tile: acc = sum over k of a sliver column times b sliver row;
 * then c = alpha acc + (first ? beta c : c), c with row stride ldc. */
GM_INLINE void GM(tile)(int kc, const float *restrict a, const float *restrict b, float *c,
                        int ldc, float alpha, float beta, int first)
{
    VF acc[GM_MR][GM_NV];
#pragma GCC unroll 16
    for (int i = 0; i < GM_MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < GM_NV; v++)
            acc[i][v] = (VF){0};
    for (int k = 0; k < kc; k++, a += GM_MR, b += GM_NR) {
        VF bv[GM_NV];
#pragma GCC unroll 4
        for (int v = 0; v < GM_NV; v++)
            bv[v] = *(const VF *)(b + v * GM_VW);
#pragma GCC unroll 16
        for (int i = 0; i < GM_MR; i++) {
            float ai = a[i];
#pragma GCC unroll 4
            for (int v = 0; v < GM_NV; v++)
                acc[i][v] += bv[v] * ai;
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < GM_MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < GM_NV; v++) {
            VFU *cp = (VFU *)(c + (size_t)i * ldc + v * GM_VW);
            if (!first)
                *cp = *cp + acc[i][v] * alpha;
            else if (beta == 0.0f)
                *cp = acc[i][v] * alpha;
            else
                *cp = *cp * beta + acc[i][v] * alpha;
        }
}

/* Task t of the slice: row block t / ngrp, sliver group t % ngrp. */
static void GM(task)(const gm_slice_t *s, float *apack, int64_t t)
{
    const gm_args_t *g = s->g;
    int blk = (int)(t / s->ngrp), grp = (int)(t % s->ngrp);
    int i0 = blk * s->mc;
    int m = g->M - i0 < s->mc ? g->M - i0 : s->mc;
    int q0 = grp * s->per_grp;
    int q1 = q0 + s->per_grp < s->slivers ? q0 + s->per_grp : s->slivers;
    if (q0 >= q1)
        return;
    GM(pack_a)(s, apack, i0, m);
    for (int q = q0; q < q1; q++) {
        const float *bq = s->bpack + (size_t)q * s->kc * GM_NR;
        int j = s->j0 + q * GM_NR;
        int n = g->N - j < GM_NR ? g->N - j : GM_NR;
        for (int r0 = 0; r0 < m; r0 += GM_MR) {
            const float *ar = apack + (size_t)(r0 / GM_MR) * s->kc * GM_MR;
            float *c = g->C + (size_t)(i0 + r0) * g->ldc + j;
            int mr = m - r0 < GM_MR ? m - r0 : GM_MR;
            if (mr == GM_MR && n == GM_NR) {
                GM(tile)(s->kc, ar, bq, c, g->ldc, g->alpha, g->beta, s->first);
                continue;
            }
            /* an edge: the same tile on a copy of C's part */
            float tmp[GM_MR * GM_NR] __attribute__((aligned(64)));
            memset(tmp, 0, sizeof tmp);
            for (int i = 0; i < mr; i++)
                memcpy(tmp + i * GM_NR, c + (size_t)i * g->ldc, sizeof(float) * (size_t)n);
            GM(tile)(s->kc, ar, bq, tmp, GM_NR, g->alpha, g->beta, s->first);
            for (int i = 0; i < mr; i++)
                memcpy(c + (size_t)i * g->ldc, tmp + i * GM_NR, sizeof(float) * (size_t)n);
        }
    }
}

#undef VF
#undef VFU
#undef GM_NR
#undef GM
#undef GM_CAT
#undef GM_CAT2
#undef GM_INLINE
#undef GM_SFX
#undef GM_VW
#undef GM_MR
#undef GM_NV

#endif /* GM_TEMPLATE */
