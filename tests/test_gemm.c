/* test_gemm.c -- kernels/cpu/gemm.c (nllm's packed SGEMM) against a
 * double-precision reference for every variant this CPU runs, and
 * cpu_kernels.c's choice.
 *
 * Shapes cross every blocking edge of every variant (partial MR x NR tiles,
 * several KC slices, several NC panels), all four transpose cases, row
 * strides wider than the rows, beta 0 over NaN, alpha 0 and K 0. Matrices
 * end at their last element (ASan sees an over-read) and C's padding must
 * come back untouched. 1, 2 and 3 pool threads give bit-identical results.
 * The choice: the large products run at the CPU's level wherever a variant
 * of that level exists, and cpu_gemm follows the choice.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "gemm.h"
#include "gemm_prob.h"
#include "nllm_math.h"
#include "testutil.h"

static const char *const variants[] = {"avx512", "avx2", "avx"};
#define NVARIANTS ((int)(sizeof variants / sizeof variants[0]))

/* The largest |C - reference| relative to sum |alpha a b| + |beta c|;
 * counts changed padding. */
static double prob_error(const prob_t *p, int *pad_changed)
{
    double worst = 0;
    *pad_changed = 0;
    for (int i = 0; i < p->M; i++) {
        for (int j = 0; j < p->N; j++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < p->K; k++) {
                double a = p->ta ? p->A[(size_t)k * p->lda + i] : p->A[(size_t)i * p->lda + k];
                double b = p->tb ? p->B[(size_t)j * p->ldb + k] : p->B[(size_t)k * p->ldb + j];
                ref += a * b;
                mag += fabs(a * b);
            }
            double c0 = p->beta == 0.0f ? 0.0 : p->C0[(size_t)i * p->ldc + j];
            ref = p->alpha * ref + p->beta * c0;
            mag = fabs(p->alpha) * mag + fabs(p->beta * c0) + 1e-30;
            double e = fabs(p->C[(size_t)i * p->ldc + j] - ref) / mag;
            if (!(e <= worst))
                worst = isnan(e) ? INFINITY : e;
        }
        for (int j = p->N; j < p->ldc; j++)
            *pad_changed += p->C[(size_t)i * p->ldc + j] != PAD_VALUE;
    }
    return worst;
}

static void prob_run(prob_t *p, nllm_pool_t *pool, nllm_gemm_ws_t *ws)
{
    memcpy(p->C, p->C0, sizeof(float) * p->nc);
    nllm_gemm(pool, ws, p->ta, p->tb, p->M, p->N, p->K, p->alpha, p->A, p->lda, p->B, p->ldb,
              p->beta, p->C, p->ldc);
}

/* Every variant, every transpose case, shapes around the blocking. */
static void test_accuracy(void)
{
    static const int shapes[][3] = {
        /* M, N, K */
        {1, 1, 1},    {5, 7, 3},     {12, 32, 256}, {13, 33, 257},  {6, 16, 255},
        {37, 61, 520}, {150, 40, 64}, {299, 97, 31}, {17, 2100, 70}, {3, 5, 1000},
    };
    nllm_gemm_ws_t *ws;
    nllm_err_t err;
    if (nllm_gemm_ws_create(1, &ws, &err) < 0) {
        CHECK(0, "ws: %s", err.msg);
        return;
    }
    int ran = 0;
    for (int v = 0; v < NVARIANTS; v++) {
        if (nllm_gemm_force_isa(variants[v]) < 0)
            continue;
        ran++;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int t = 0; t < 4; t++)
                for (int ab = 0; ab < 2; ab++) {
                    float alpha = ab ? -0.5f : 1.0f, beta = ab ? 0.75f : 0.0f;
                    prob_t p = prob_make(t >> 1, t & 1, shapes[s][0], shapes[s][1],
                                         shapes[s][2], (int)(s % 3), alpha, beta, 100 + s);
                    prob_run(&p, NULL, ws);
                    int pad;
                    double e = prob_error(&p, &pad);
                    CHECK(e < 1e-5 && pad == 0,
                          "%s %c%c %dx%dx%d alpha %g beta %g: error %g, %d pad changed",
                          variants[v], p.ta ? 'T' : 'N', p.tb ? 'T' : 'N', p.M, p.N, p.K,
                          alpha, beta, e, pad);
                    prob_free(&p);
                }
    }
    CHECK(ran > 0 || nllm_gemm_isa() == NULL, "no variant ran, but nllm_gemm_isa() is %s",
          nllm_gemm_isa());
    printf("     variants run: %d\n", ran);
    nllm_gemm_force_isa(NULL);
    nllm_gemm_ws_destroy(ws);
}

/* alpha 0 and K 0: C = beta C, A and B unread (NaN in them is harmless). */
static void test_degenerate(void)
{
    nllm_gemm_ws_t *ws;
    nllm_err_t err;
    if (!nllm_gemm_isa() || nllm_gemm_ws_create(1, &ws, &err) < 0)
        return;
    for (int k0 = 0; k0 < 2; k0++) {
        prob_t p = prob_make(0, 1, 9, 11, k0 ? 0 : 20, 1, k0 ? 1.0f : 0.0f, 0.5f, 7);
        for (size_t i = 0; i < p.na; i++)
            p.A[i] = NAN;
        prob_run(&p, NULL, ws);
        int bad = 0;
        for (int i = 0; i < p.M; i++)
            for (int j = 0; j < p.N; j++)
                bad += p.C[(size_t)i * p.ldc + j] != 0.5f * p.C0[(size_t)i * p.ldc + j];
        CHECK(bad == 0, "%s: %d elements are not beta C", k0 ? "K 0" : "alpha 0", bad);
        prob_free(&p);
    }
    nllm_gemm_ws_destroy(ws);
}

/* 1, 2 and 3 pool threads: the same bits, for every variant. */
static void test_threads(void)
{
    static const int shapes[][5] = {
        {0, 1, 512, 512, 512}, {1, 0, 200, 130, 3000}, {0, 0, 700, 90, 300}, {0, 1, 40, 2300, 50},
    };
    for (int v = 0; v < NVARIANTS; v++) {
        if (nllm_gemm_force_isa(variants[v]) < 0)
            continue;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            prob_t p = prob_make(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3],
                                 shapes[s][4], 1, 1.0f, 0.25f, 300 + s);
            float *first = NULL;
            for (int th = 1; th <= 3; th++) {
                nllm_pool_t *pool;
                nllm_gemm_ws_t *ws;
                nllm_err_t err;
                if (nllm_pool_create(th, &pool, &err) < 0 ||
                    nllm_gemm_ws_create(th, &ws, &err) < 0) {
                    CHECK(0, "%s", err.msg);
                    break;
                }
                prob_run(&p, pool, ws);
                if (!first) {
                    first = malloc(sizeof(float) * p.nc);
                    memcpy(first, p.C, sizeof(float) * p.nc);
                } else {
                    CHECK(memcmp(first, p.C, sizeof(float) * p.nc) == 0,
                          "%s %dx%dx%d: %d threads differ from 1", variants[v], p.M, p.N, p.K,
                          th);
                }
                nllm_gemm_ws_destroy(ws);
                nllm_pool_destroy(pool);
            }
            free(first);
            prob_free(&p);
        }
    }
    nllm_gemm_force_isa(NULL);
}

/* The choice is at the CPU's level where nllm has a variant of it, every
 * field is filled, and cpu_gemm runs the chosen kernels. */
static void test_choice(void)
{
    const nllm_cpu_kernels_t *k = nllm_cpu_kernels();
    char line[600];
    nllm_cpu_kernels_describe(line, sizeof line);
    printf("     %s\n     blas: %s (core %s, level %s, check %s)\n", line, k->blas,
           k->blas_core, nllm_isa_name(k->blas_isa), k->blas_ok ? "passed" : "FAILED");
    CHECK(k->reason[0] && k->large_gemm[0] && k->small_gemm, "a field is empty");
    const char *env = getenv("NLLM_CPU_GEMM");
    int forced = env && *env && strcmp(env, "auto") != 0;
    if (!forced && k->cpu_isa >= NLLM_ISA_AVX && k->cpu_isa <= NLLM_ISA_AVX512)
        CHECK(k->large_isa == k->cpu_isa,
              "large products run at %s, the CPU is %s (%s)", nllm_isa_name(k->large_isa),
              nllm_isa_name(k->cpu_isa), k->reason);
    CHECK(nllm_cpu_kernels_use_own() == (strncmp(k->large_gemm, "nllm-", 5) == 0),
          "use_own disagrees with large_gemm %s", k->large_gemm);
    if (nllm_cpu_kernels_use_own())
        CHECK(strcmp(k->large_gemm + 5, nllm_gemm_isa()) == 0, "chose %s, gemm runs %s",
              k->large_gemm, nllm_gemm_isa());

    /* cpu_gemm: a large product, bit-identical to the chosen kernels */
    nllm_backend_t *be;
    nllm_err_t err;
    if (nllm_cpu_backend_create(2, &be, &err) < 0) {
        CHECK(0, "backend: %s", err.msg);
        return;
    }
    prob_t p = prob_make(1, 0, 300, 200, 400, 2, 1.0f, 0.5f, 900);
    be->gemm(be, 1, 0, p.M, p.N, p.K, p.alpha, p.A, p.lda, p.B, p.ldb, p.beta, p.C, p.ldc);
    int pad;
    double e = prob_error(&p, &pad);
    CHECK(e < 1e-5 && pad == 0, "cpu_gemm TN: error %g, %d pad changed", e, pad);
    if (nllm_cpu_kernels_use_own()) {
        float *mine = malloc(sizeof(float) * p.nc);
        memcpy(mine, p.C, sizeof(float) * p.nc);
        nllm_gemm_ws_t *ws;
        if (nllm_gemm_ws_create(1, &ws, &err) == 0) {
            prob_run(&p, NULL, ws);
            CHECK(memcmp(mine, p.C, sizeof(float) * p.nc) == 0,
                  "cpu_gemm did not run nllm's kernels");
            nllm_gemm_ws_destroy(ws);
        }
        free(mine);
    }
    prob_free(&p);
    be->destroy(be);
}

int main(void)
{
    printf("     nllm gemm variant: %s\n", nllm_gemm_isa() ? nllm_gemm_isa() : "(none)");
    RUN(test_accuracy);
    RUN(test_degenerate);
    RUN(test_threads);
    RUN(test_choice);
    return TEST_REPORT();
}
