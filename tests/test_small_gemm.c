/* test_small_gemm.c -- kernels/cpu/small_gemm.c against a double-precision
 * reference, for every instruction-set variant this CPU can run.
 *
 * Shapes cover M 1..70 (every remainder of the row tiles), N and K odd, just
 * off and on multiples of the vector width, row strides wider than the rows,
 * alpha/beta variants (beta 0 over NaN garbage, alpha 0 over NaN inputs).
 * Matrices are allocated to their last element so ASan sees any over-read;
 * the padding of C must come back untouched. Also: 1, 2 and 3 pool threads
 * give bit-identical results, a row of C does not depend on how many other
 * rows are computed with it, and cpu_gemm routes small M here.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu_pool.h"
#include "nllm_math.h"
#include "small_gemm.h"
#include "testutil.h"

#define PAD_VALUE 12345.0f

typedef struct {
    int transB, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    float *A, *B, *C, *C0; /* C0: C before the call */
    size_t na, nb, nc;
} prob_t;

static void fill(float *x, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)nllm_rng_normal(seed, 7, i);
}

/* Allocates and fills a problem; pad is added to every row stride. */
static prob_t prob_make(int transB, int M, int N, int K, int pad, float alpha, float beta,
                        uint64_t seed)
{
    prob_t p = {transB, M, N, K, K + pad, (transB ? K : N) + pad, N + pad, alpha, beta,
                NULL, NULL, NULL, NULL, 0, 0, 0};
    int brows = transB ? N : K, bw = transB ? K : N;
    p.na = (size_t)(M - 1) * p.lda + K;
    p.nb = (size_t)(brows - 1) * p.ldb + bw;
    p.nc = (size_t)M * p.ldc; /* whole rows: the padding is checked */
    p.A = malloc(sizeof(float) * p.na);
    p.B = malloc(sizeof(float) * p.nb);
    p.C = malloc(sizeof(float) * p.nc);
    p.C0 = malloc(sizeof(float) * p.nc);
    if (!p.A || !p.B || !p.C || !p.C0)
        abort();
    fill(p.A, p.na, seed);
    fill(p.B, p.nb, seed + 1);
    fill(p.C0, p.nc, seed + 2);
    for (int i = 0; i < M; i++)
        for (int j = N; j < p.ldc; j++)
            p.C0[(size_t)i * p.ldc + j] = PAD_VALUE;
    if (beta == 0.0f) /* must be ignored */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                p.C0[(size_t)i * p.ldc + j] = (i + j) % 2 ? NAN : INFINITY;
    if (alpha == 0.0f) { /* A and B must not be read */
        p.A[0] = NAN;
        p.B[p.nb - 1] = NAN;
    }
    memcpy(p.C, p.C0, sizeof(float) * p.nc);
    return p;
}

static void prob_free(prob_t *p)
{
    free(p->A);
    free(p->B);
    free(p->C);
    free(p->C0);
}

static void prob_run(prob_t *p, nllm_pool_t *pool)
{
    memcpy(p->C, p->C0, sizeof(float) * p->nc);
    nllm_small_gemm(pool, p->transB, p->M, p->N, p->K, p->alpha, p->A, p->lda, p->B, p->ldb,
                    p->beta, p->C, p->ldc);
}

/* Largest error relative to the size of the terms summed, |alpha| sum
 * |a b| + |beta c| (so cancellation does not inflate it), and the count of
 * padding elements of C that changed. */
static double prob_error(const prob_t *p, int *pad_changed)
{
    double worst = 0.0;
    *pad_changed = 0;
    for (int i = 0; i < p->M; i++) {
        for (int j = 0; j < p->N; j++) {
            double acc = 0.0, mag = 0.0;
            if (p->alpha != 0.0f)
                for (int k = 0; k < p->K; k++) {
                    double a = p->A[(size_t)i * p->lda + k];
                    double b = p->transB ? p->B[(size_t)j * p->ldb + k]
                                         : p->B[(size_t)k * p->ldb + j];
                    acc += a * b;
                    mag += fabs(a * b);
                }
            double c0 = p->C0[(size_t)i * p->ldc + j];
            double ref = (double)p->alpha * acc, size = fabs((double)p->alpha) * mag;
            if (p->beta != 0.0f) {
                ref += (double)p->beta * c0;
                size += fabs((double)p->beta * c0);
            }
            double got = p->C[(size_t)i * p->ldc + j];
            double e = isfinite(got) ? fabs(got - ref) / (size + FLT_MIN) : INFINITY;
            if (!(e <= worst))
                worst = e;
        }
        for (int j = p->N; j < p->ldc; j++)
            *pad_changed += p->C[(size_t)i * p->ldc + j] != PAD_VALUE;
    }
    return worst;
}

static const char *const isas[] = {"avx512", "avx2", "generic"};
#define NISA 3

/* ---- accuracy ------------------------------------------------------------- */

static void check_shape(const char *isa, int transB, int M, int N, int K, int pad, float alpha,
                        float beta, uint64_t seed)
{
    prob_t p = prob_make(transB, M, N, K, pad, alpha, beta, seed);
    prob_run(&p, NULL);
    int pad_changed;
    double e = prob_error(&p, &pad_changed);
    CHECK(e < 1e-5, "%s %s M=%d N=%d K=%d pad=%d alpha=%g beta=%g: relative error %g", isa,
          transB ? "NT" : "NN", M, N, K, pad, alpha, beta, e);
    CHECK(pad_changed == 0, "%s %s M=%d N=%d K=%d: %d padding elements of C written", isa,
          transB ? "NT" : "NN", M, N, K, pad_changed);
    prob_free(&p);
}

static void test_accuracy(void)
{
    static const int Ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 23, 24, 25,
                             31, 32, 33, 47, 48, 49, 63, 64, 65, 70};
    static const int Ns[] = {1, 3, 4, 5, 7, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65,
                             96, 97, 100, 129};
    static const int Ks[] = {1, 2, 3, 5, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.75f, 0.5f}, {-1.5f, 1.0f}, {2.0f, 0.0f},
                                  {1.0f, -0.25f}};
    const int nM = sizeof Ms / sizeof Ms[0], nN = sizeof Ns / sizeof Ns[0],
              nK = sizeof Ks / sizeof Ks[0], nab = sizeof ab / sizeof ab[0];
    int ran = 0;
    for (int v = 0; v < NISA; v++) {
        if (nllm_small_gemm_force_isa(isas[v]) < 0) {
            printf("     (variant %s: not on this CPU, skipped)\n", isas[v]);
            continue;
        }
        ran++;
        int n = 0;
        for (int t = 0; t < 2; t++)
            for (int mi = 0; mi < nM; mi++)
                for (int r = 0; r < 4; r++, n++) {
                    /* every M with several N, K, strides and alpha/beta */
                    int N = Ns[(mi * 5 + r * 7 + t) % nN], K = Ks[(mi * 3 + r * 5 + t) % nK];
                    int pad = (n % 3 == 0) ? 0 : 1 + n % 7;
                    check_shape(isas[v], t, Ms[mi], N, K, pad, ab[n % nab][0], ab[n % nab][1],
                                (uint64_t)n);
                }
        /* every N against a few M, K; every K against a few M, N */
        for (int t = 0; t < 2; t++) {
            for (int ni = 0; ni < nN; ni++)
                check_shape(isas[v], t, 1 + ni % 9, Ns[ni], 33 + ni, ni % 3, 1.0f,
                            ni % 2 ? 0.5f : 0.0f, 100 + (uint64_t)ni);
            for (int ki = 0; ki < nK; ki++)
                check_shape(isas[v], t, 16, 35, Ks[ki], 2, 1.0f, 1.0f, 200 + (uint64_t)ki);
        }
        /* the model's shapes */
        check_shape(isas[v], 1, 16, 512, 512, 256, 1.0f, 1.0f, 300);
        check_shape(isas[v], 1, 16, 1536, 512, 0, 1.0f, 0.0f, 301);
        check_shape(isas[v], 0, 16, 512, 1536, 0, 1.0f, 1.0f, 302);
        check_shape(isas[v], 0, 13, 512, 512, 0, 1.0f, 0.0f, 303);
        /* alpha 0: C = beta C, A and B not read */
        check_shape(isas[v], 1, 5, 9, 17, 1, 0.0f, 0.5f, 400);
        check_shape(isas[v], 0, 5, 9, 17, 1, 0.0f, 0.0f, 401);
    }
    nllm_small_gemm_force_isa(NULL);
    CHECK(ran > 0, "no variant ran");
    CHECK(nllm_small_gemm_force_isa("avx9000") == NLLM_EINVAL, "unknown variant accepted");
}

/* ---- determinism ---------------------------------------------------------- */

/* 1, 2 and 3 pool threads (and no pool) give the same bits, twice over. */
static void test_threads(void)
{
    nllm_pool_t *pools[3] = {NULL, NULL, NULL};
    nllm_err_t err;
    for (int t = 0; t < 3; t++)
        if (nllm_pool_create(t + 1, &pools[t], &err) < 0) {
            CHECK(0, "pool: %s", err.msg);
            return;
        }
    static const int shapes[][4] = {/* transB, M, N, K: all big enough to be split */
                                    {1, 16, 512, 512}, {0, 16, 512, 512}, {1, 16, 1536, 512},
                                    {0, 16, 512, 1536}, {1, 7, 1001, 333}, {0, 7, 1001, 333},
                                    {1, 64, 200, 200}, {0, 61, 203, 190}, {0, 3, 4000, 200}};
    for (int v = 0; v < NISA; v++) {
        if (nllm_small_gemm_force_isa(isas[v]) < 0)
            continue;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int *sh = shapes[s];
            prob_t p = prob_make(sh[0], sh[1], sh[2], sh[3], 3, 1.0f, s % 2 ? 0.0f : 1.0f,
                                 500 + (uint64_t)s);
            float *ref = malloc(sizeof(float) * p.nc);
            prob_run(&p, NULL);
            memcpy(ref, p.C, sizeof(float) * p.nc);
            int same = 1;
            for (int rep = 0; rep < 2; rep++)
                for (int t = 0; t < 3; t++) {
                    prob_run(&p, pools[t]);
                    same &= memcmp(ref, p.C, sizeof(float) * p.nc) == 0;
                }
            CHECK(same, "%s %s M=%d N=%d K=%d: results depend on the thread count", isas[v],
                  sh[0] ? "NT" : "NN", sh[1], sh[2], sh[3]);
            free(ref);
            prob_free(&p);
        }
    }
    nllm_small_gemm_force_isa(NULL);
    for (int t = 0; t < 3; t++)
        nllm_pool_destroy(pools[t]);
}

/* Row i of C is the same whether it is computed alone or with others (the
 * row tiles only change which rows share a pass over B). */
static void test_row_independence(void)
{
    for (int v = 0; v < NISA; v++) {
        if (nllm_small_gemm_force_isa(isas[v]) < 0)
            continue;
        for (int t = 0; t < 2; t++) {
            int M = 21, N = 77, K = 93;
            prob_t p = prob_make(t, M, N, K, 1, 1.0f, 0.0f, 600 + (uint64_t)t);
            prob_run(&p, NULL);
            int bad = 0;
            float *row = malloc(sizeof(float) * (size_t)N);
            for (int i = 0; i < M; i++) {
                nllm_small_gemm(NULL, t, 1, N, K, 1.0f, p.A + (size_t)i * p.lda, p.lda, p.B,
                                p.ldb, 0.0f, row, N);
                bad += memcmp(row, p.C + (size_t)i * p.ldc, sizeof(float) * (size_t)N) != 0;
            }
            CHECK(bad == 0, "%s %s: %d rows differ when computed alone", isas[v],
                  t ? "NT" : "NN", bad);
            free(row);
            prob_free(&p);
        }
    }
    nllm_small_gemm_force_isa(NULL);
}

/* ---- routing -------------------------------------------------------------- */

/* cpu_gemm sends small-M NT and NN products here (same bits), and larger M
 * to OpenBLAS (checked against the reference). */
static void test_backend_routing(void)
{
    nllm_backend_t *be;
    nllm_err_t err;
    if (nllm_cpu_backend_create(2, &be, &err) < 0) {
        CHECK(0, "backend: %s", err.msg);
        return;
    }
    int Ms[] = {1, 16, NLLM_SMALL_GEMM_MAX_M, NLLM_SMALL_GEMM_MAX_M + 1, 100};
    for (size_t m = 0; m < sizeof Ms / sizeof Ms[0]; m++)
        for (int t = 0; t < 2; t++) {
            int M = Ms[m];
            prob_t p = prob_make(t, M, 300, 260, 2, 1.0f, 0.5f, 700 + m);
            prob_run(&p, NULL);
            float *small = malloc(sizeof(float) * p.nc);
            memcpy(small, p.C, sizeof(float) * p.nc);
            memcpy(p.C, p.C0, sizeof(float) * p.nc);
            be->gemm(be, 0, t, M, p.N, p.K, p.alpha, p.A, p.lda, p.B, p.ldb, p.beta, p.C, p.ldc);
            int pad_changed;
            double e = prob_error(&p, &pad_changed);
            CHECK(e < 1e-5 && pad_changed == 0, "cpu_gemm %s M=%d: error %g, %d pad changed",
                  t ? "NT" : "NN", M, e, pad_changed);
            CHECK(nllm_small_gemm_use(M) == (M <= NLLM_SMALL_GEMM_MAX_M &&
                                             strcmp(nllm_small_gemm_isa(), "generic") != 0),
                  "nllm_small_gemm_use(%d) is wrong", M);
            if (nllm_small_gemm_use(M))
                CHECK(memcmp(small, p.C, sizeof(float) * p.nc) == 0,
                      "cpu_gemm %s M=%d: not the small-M kernel's result", t ? "NT" : "NN", M);
            free(small);
            prob_free(&p);
        }
    be->destroy(be);
}

int main(void)
{
    printf("     small-M GEMM variant: %s\n", nllm_small_gemm_isa());
    RUN(test_accuracy);
    RUN(test_threads);
    RUN(test_row_independence);
    RUN(test_backend_routing);
    return TEST_REPORT();
}
