/* test_bf16_gemm.c -- kernels/cpu/bf16_gemm.c (bf16 products on AMX tiles)
 * against its plain reference, and the CPU backend's precision bf16.
 *
 * Everywhere: bf16 rounding (ties to even, NaN, infinities, overflow), the
 * reference, and what the CPU backend offers -- bf16 exactly where the AMX
 * product runs, else a refusal that says why. Where AMX runs: shapes across
 * every tile edge (1..2 strips per task, ragged M, N and K, deep products
 * summed in several passes), all four
 * transpose cases, row strides wider than the rows, beta 0 over NaN, and
 * C's padding untouched; results within float summation error of the
 * reference, bit-identical for 1, 2 and 3 pool threads and across calls;
 * cpu_gemm in precision bf16 runs every shape (small and large rows) here,
 * and keeps the packed weights until the parameters change.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bf16_gemm.h"
#include "cpu_pool.h"
#include "gemm_prob.h"
#include "nllm_math.h"
#include "testutil.h"

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void test_rounding(void)
{
    CHECK(nllm_bf16_round(1.0f) == 1.0f, "1 is exact");
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even -> 1 */
    CHECK(nllm_bf16_round(1.0f + 0x1p-8f) == 1.0f, "tie to even (down)");
    /* 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: -> 1 + 2^-6 */
    CHECK(nllm_bf16_round(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f, "tie to even (up)");
    CHECK(nllm_bf16_round(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f, "above the tie: up");
    CHECK(nllm_bf16_round(-1.0f - 0x1p-8f - 0x1p-20f) == -1.0f - 0x1p-7f, "negative: away");
    CHECK(isinf(nllm_bf16_round(INFINITY)) && nllm_bf16_round(-INFINITY) < 0, "infinities");
    CHECK(isnan(nllm_bf16_round(NAN)), "NaN stays NaN");
    /* a NaN whose payload sits only in the low 16 bits must not become inf */
    CHECK(isnan(nllm_bf16_round(from_bits(0x7f800001u))), "low-payload NaN stays NaN");
    CHECK(isinf(nllm_bf16_round(from_bits(0x7f7fffffu))), "FLT_MAX rounds to inf");
    CHECK((bits(nllm_bf16_round(3.14159265f)) & 0xffffu) == 0, "low 16 bits cleared");
}

static void test_reference(void)
{
    /* 2x3 times 3x2, operands exact in bf16 */
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1}, C[4] = {1, 1, 1, 1};
    nllm_gemm_bf16_ref(0, 0, 2, 2, 3, 2.0f, A, 3, B, 2, 0.5f, C, 2);
    CHECK(C[0] == 2 * 4 + 0.5f && C[1] == 2 * 5 + 0.5f && C[2] == 2 * 10 + 0.5f &&
              C[3] == 2 * 11 + 0.5f,
          "reference NN: %g %g %g %g", C[0], C[1], C[2], C[3]);
    /* operands are rounded: 1 + 2^-9 times 1 is 1 */
    float a = 1.0f + 0x1p-9f, b = 1.0f, c = NAN;
    nllm_gemm_bf16_ref(0, 0, 1, 1, 1, 1.0f, &a, 1, &b, 1, 0.0f, &c, 1);
    CHECK(c == 1.0f, "reference rounds its operands (%g); beta 0 ignores NaN", c);
}

/* The CPU backend offers bf16 exactly where the AMX product runs. */
static void test_backend_offer(void)
{
    const char *why = NULL, *note = NULL;
    int usable = nllm_bf16_gemm_usable(&why);
    unsigned mask = nllm_cpu_precisions(&note);
    CHECK(mask & (1u << NLLM_PREC_FP32), "cpu implements fp32");
    CHECK(!(mask & (1u << NLLM_PREC_TF32)), "cpu never implements tf32");
    CHECK(!!(mask & (1u << NLLM_PREC_BF16)) == usable, "bf16 offered iff AMX runs");
    nllm_backend_t *be = NULL;
    nllm_err_t err;
    CHECK(nllm_cpu_backend_create(1, &be, &err) == 0, "cpu backend: %s", err.msg);
    if (!be)
        return;
    CHECK(be->precisions == mask, "the backend's mask is nllm_cpu_precisions'");
    int rc = nllm_backend_set_precision(be, NLLM_PREC_BF16, &err);
    if (usable) {
        CHECK(rc == 0 && be->precision == NLLM_PREC_BF16, "bf16 accepted");
        printf("     AMX-BF16 runs here: bf16 offered\n");
    } else {
        CHECK(rc == NLLM_EINVAL && strstr(err.msg, "device cpu") &&
                  strstr(err.msg, "fp32 only") && strstr(err.msg, "AMX-BF16") &&
                  strstr(err.msg, why) && be->precision == NLLM_PREC_FP32,
              "bf16 refused naming the device and why: %s", err.msg);
        CHECK(note && strstr(note, why), "the note says why (%s)", note ? note : "NULL");
        printf("     no bf16 here: %s\n", err.msg);
    }
    rc = nllm_backend_set_precision(be, NLLM_PREC_TF32, &err);
    CHECK(rc == NLLM_EINVAL && strstr(err.msg, "not tf32") && be->precision != NLLM_PREC_TF32,
          "tf32 refused: %s", err.msg);
    be->destroy(be);
}

/* |C - ref| within float summation error of the rounded products:
 * K * 2^-23 * sum |a b| (plus the alpha/beta roundings) */
static int within(const prob_t *p, const float *C, const float *R, char *why, size_t n)
{
    for (int i = 0; i < p->M; i++) {
        for (int j = 0; j < p->N; j++) {
            double mag = 0;
            for (int k = 0; k < p->K; k++) {
                float a = p->ta ? p->A[(size_t)k * p->lda + i] : p->A[(size_t)i * p->lda + k];
                float b = p->tb ? p->B[(size_t)j * p->ldb + k] : p->B[(size_t)k * p->ldb + j];
                mag += fabs((double)nllm_bf16_round(a) * nllm_bf16_round(b));
            }
            double c0 = p->beta == 0.0f ? 0 : fabs(p->C0[(size_t)i * p->ldc + j]);
            double tol = (p->K * 0x1p-23 + 0x1p-22) * fabs(p->alpha) * mag +
                         0x1p-22 * fabs(p->beta) * c0 + 1e-30;
            double got = C[(size_t)i * p->ldc + j], want = R[(size_t)i * p->ldc + j];
            if (!(fabs(got - want) <= tol)) {
                snprintf(why, n, "C[%d,%d] = %.9g, reference %.9g, tolerance %.3g", i, j, got,
                         want, tol);
                return 0;
            }
        }
        for (int j = p->N; j < p->ldc; j++)
            if (C[(size_t)i * p->ldc + j] != PAD_VALUE) {
                snprintf(why, n, "padding C[%d,%d] changed", i, j);
                return 0;
            }
    }
    return 1;
}

static void run_case(nllm_pool_t **pools, nllm_bf16_ws_t *ws, int ta, int tb, int M, int N,
                     int K, int pad, float alpha, float beta)
{
    prob_t p = prob_make(ta, tb, M, N, K, pad, alpha, beta, (uint64_t)(M * 131 + N * 7 + K));
    float *R = malloc(sizeof(float) * p.nc), *C = malloc(sizeof(float) * p.nc),
          *C1 = malloc(sizeof(float) * p.nc);
    if (!R || !C || !C1)
        abort();
    memcpy(R, p.C0, sizeof(float) * p.nc);
    nllm_gemm_bf16_ref(ta, tb, M, N, K, alpha, p.A, p.lda, p.B, p.ldb, beta, R, p.ldc);
    for (int t = 0; t < 3; t++) {
        memcpy(C, p.C0, sizeof(float) * p.nc);
        int rc = nllm_gemm_bf16(pools[t], ws, ta, tb, M, N, K, alpha, p.A, p.lda, p.B, p.ldb,
                                beta, C, p.ldc);
        char why[200] = "";
        CHECK(rc == 0 && within(&p, C, R, why, sizeof why),
              "%s%s M=%d N=%d K=%d pad=%d alpha=%g beta=%g, %d thread(s): %s", ta ? "T" : "N",
              tb ? "T" : "N", M, N, K, pad, alpha, beta, t + 1, why);
        if (t == 0)
            memcpy(C1, C, sizeof(float) * p.nc);
        else
            CHECK(memcmp(C, C1, sizeof(float) * p.nc) == 0,
                  "%s%s M=%d N=%d K=%d: %d threads give other bits than 1", ta ? "T" : "N",
                  tb ? "T" : "N", M, N, K, t + 1);
    }
    free(R);
    free(C);
    free(C1);
    prob_free(&p);
}

static int amx;
static nllm_pool_t *g_pools[3];

static void test_shapes(void)
{
    nllm_bf16_ws_t *ws = NULL;
    nllm_err_t err;
    CHECK(nllm_bf16_ws_create(&ws, &err) == 0, "ws");
    /* M, N: one strip, two, an odd count, ragged; K: below one block,
     * exactly one, ragged, several */
    static const int Ms[] = {1, 16, 17, 32, 33, 50, 97};
    static const int Ns[] = {1, 15, 16, 31, 32, 48, 70};
    static const int Ks[] = {1, 31, 32, 33, 100, 257};
    int n = 0;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (size_t a = 0; a < sizeof Ms / sizeof Ms[0]; a++)
                for (size_t b = 0; b < sizeof Ns / sizeof Ns[0]; b++) {
                    int K = Ks[(a + b + (size_t)ta * 2 + (size_t)tb) % (sizeof Ks / sizeof Ks[0])];
                    int pad = (int)((a * 3 + b) % 3) * 5;
                    float alpha = (a + b) % 2 ? 1.0f : -0.75f;
                    float beta = (a + 2 * b) % 3 == 0 ? 0.0f : ((a + b) % 3 == 1 ? 1.0f : 0.5f);
                    run_case(g_pools, ws, ta, tb, Ms[a], Ns[b], K, pad, alpha, beta);
                    n++;
                }
    /* the model's shapes: per-time-step products and a weight gradient */
    run_case(g_pools, ws, 0, 1, 16, 512, 512, 0, 1.0f, 0.0f);
    run_case(g_pools, ws, 0, 0, 64, 512, 1536, 0, 1.0f, 1.0f);
    run_case(g_pools, ws, 1, 0, 512, 256, 630, 0, 1.0f, 1.0f);
    /* deep products go in passes (BF_PASS): several, the last one partial */
    run_case(g_pools, ws, 1, 0, 40, 50, 2500, 0, 1.0f, 0.5f);
    run_case(g_pools, ws, 0, 0, 33, 17, 2080, 2, -1.0f, 0.0f);
    printf("     %d shapes x 3 thread counts, and the model's\n", n);
    nllm_bf16_ws_destroy(ws);
}

/* a 2-thread cpu backend in precision bf16, or NULL (a failed check) */
static nllm_backend_t *bf16_backend(void)
{
    nllm_backend_t *be = NULL;
    nllm_err_t err;
    CHECK(nllm_cpu_backend_create(2, &be, &err) == 0, "cpu backend: %s", err.msg);
    if (be)
        CHECK(nllm_backend_set_precision(be, NLLM_PREC_BF16, &err) == 0, "bf16: %s", err.msg);
    return be;
}

/* cpu_gemm in precision bf16: the bf16 product for small and large M (the
 * fp32 path sends M <= 64 to small_gemm.c) */
static void test_backend_gemm(void)
{
    nllm_err_t err;
    nllm_backend_t *be = bf16_backend();
    if (!be)
        return;
    static const int Ms[] = {4, 200};
    for (int m = 0; m < 2; m++) {
        int M = Ms[m], N = 40, K = 72;
        prob_t p = prob_make(0, 1, M, N, K, 0, 1.0f, 0.0f, 99 + (uint64_t)m);
        float *R = malloc(sizeof(float) * p.nc), *C = malloc(sizeof(float) * p.nc);
        if (!R || !C)
            abort();
        memcpy(R, p.C0, sizeof(float) * p.nc);
        memcpy(C, p.C0, sizeof(float) * p.nc);
        nllm_gemm_bf16_ref(0, 1, M, N, K, 1.0f, p.A, p.lda, p.B, p.ldb, 0.0f, R, p.ldc);
        be->gemm(be, 0, 1, M, N, K, 1.0f, p.A, p.lda, p.B, p.ldb, 0.0f, C, p.ldc);
        char why[200] = "";
        CHECK(within(&p, C, R, why, sizeof why), "cpu_gemm bf16, M=%d: %s", M, why);
        /* and it is not the fp32 product: some element differs */
        float *F = malloc(sizeof(float) * p.nc);
        if (!F)
            abort();
        be->precision = NLLM_PREC_FP32;
        be->gemm(be, 0, 1, M, N, K, 1.0f, p.A, p.lda, p.B, p.ldb, 0.0f, F, p.ldc);
        be->precision = NLLM_PREC_BF16;
        CHECK(memcmp(F, C, sizeof(float) * p.nc) != 0, "M=%d: bf16 differs from fp32", M);
        CHECK(be->sync(be, &err) == 0, "sync after bf16 products: %s", err.msg);
        free(F);
        free(R);
        free(C);
        prob_free(&p);
    }
    be->destroy(be);
}

/* weights bound as the parameters: their packing is kept between products
 * (same bits as packing anew) until params_changed, then redone */
static void test_kept_weights(void)
{
    nllm_err_t err;
    nllm_backend_t *be = bf16_backend();
    if (!be)
        return;
    int M = 24, N = 50, K = 80;
    for (int tb = 0; tb < 2; tb++) {
        prob_t p = prob_make(0, tb, M, N, K, 3, 1.0f, 0.0f, 7 + (uint64_t)tb);
        size_t bytes = sizeof(float) * p.nc;
        float *W = malloc(sizeof(float) * (p.nb + 100)), *fresh = malloc(bytes),
              *C1 = malloc(bytes), *C2 = malloc(bytes);
        if (!W || !fresh || !C1 || !C2)
            abort();
        memcpy(fresh, p.C0, bytes);
        memcpy(C1, p.C0, bytes);
        memcpy(C2, p.C0, bytes);
        memcpy(W + 100, p.B, sizeof(float) * p.nb); /* B sits inside the parameters */
        be->gemm(be, 0, tb, M, N, K, 1.0f, p.A, p.lda, W + 100, p.ldb, 0.0f, fresh, p.ldc);
        be->params_bind(be, W, (int64_t)p.nb + 100);
        be->gemm(be, 0, tb, M, N, K, 1.0f, p.A, p.lda, W + 100, p.ldb, 0.0f, C1, p.ldc);
        be->gemm(be, 0, tb, M, N, K, 1.0f, p.A, p.lda, W + 100, p.ldb, 0.0f, C2, p.ldc);
        CHECK(!memcmp(fresh, C1, bytes) && !memcmp(C1, C2, bytes),
              "%s: a kept packing gives the same bits as a fresh one", tb ? "NT" : "NN");
        for (size_t i = 0; i < p.nb; i++)
            W[100 + i] *= -2.0f; /* exact in bf16: the product negates and doubles */
        be->params_changed(be);
        be->gemm(be, 0, tb, M, N, K, 1.0f, p.A, p.lda, W + 100, p.ldb, 0.0f, C2, p.ldc);
        int ok = 1;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                ok &= C2[(size_t)i * p.ldc + j] == -2.0f * C1[(size_t)i * p.ldc + j];
        CHECK(ok, "%s: after params_changed the new weights are used", tb ? "NT" : "NN");
        be->params_bind(be, NULL, 0);
        free(W);
        free(fresh);
        free(C1);
        free(C2);
        prob_free(&p);
    }
    CHECK(be->sync(be, &err) == 0, "sync: %s", err.msg);
    be->destroy(be);
}

int main(void)
{
    RUN(test_rounding);
    RUN(test_reference);
    RUN(test_backend_offer);
    const char *why = NULL;
    amx = nllm_bf16_gemm_usable(&why);
    /* a CPU with AMX whose product disagrees is a broken kernel, not a
     * machine without bf16 */
    if (!amx && strstr(why, "disagreed")) {
        fprintf(stderr, "FAIL %s\n", why);
        return 1;
    }
    if (!amx) {
        printf("SKIP the AMX product: %s (rounding, reference and the refusal tested)\n", why);
        return TEST_REPORT();
    }
    nllm_err_t err;
    for (int t = 0; t < 3; t++)
        if (nllm_pool_create(t + 1, &g_pools[t], &err) < 0) {
            fprintf(stderr, "pool: %s\n", err.msg);
            return 1;
        }
    RUN(test_shapes);
    RUN(test_backend_gemm);
    RUN(test_kept_weights);
    for (int t = 0; t < 3; t++)
        nllm_pool_destroy(g_pools[t]);
    return TEST_REPORT();
}
