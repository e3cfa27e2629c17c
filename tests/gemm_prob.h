/* gemm_prob.h -- the random products the GEMM tests share: op(A) op(B)
 * with row strides pad wider than the rows, every matrix ending at its last
 * element (ASan sees an over-read), C0 holding PAD_VALUE in its padding and,
 * for beta 0, NaN where C must only be written; C starts as C0.
 * Included by test_gemm.c and test_bf16_gemm.c. */
#ifndef NLLM_GEMM_PROB_H
#define NLLM_GEMM_PROB_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nllm_math.h"

#define PAD_VALUE 12345.0f

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    float *A, *B, *C, *C0;
    size_t na, nb, nc;
} prob_t;

static void fill(float *x, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)nllm_rng_normal(seed, 3, i);
}

static prob_t prob_make(int ta, int tb, int M, int N, int K, int pad, float alpha, float beta,
                        uint64_t seed)
{
    prob_t p = {ta, tb, M, N, K, (ta ? M : K) + pad, (tb ? K : N) + pad, N + pad, alpha, beta,
                NULL, NULL, NULL, NULL, 0, 0, 0};
    int arows = ta ? K : M, aw = ta ? M : K, brows = tb ? N : K, bw = tb ? K : N;
    p.na = arows ? (size_t)(arows - 1) * p.lda + aw : 1;
    p.nb = brows ? (size_t)(brows - 1) * p.ldb + bw : 1;
    p.nc = (size_t)M * p.ldc;
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
        for (int j = 0; j < p.ldc; j++)
            if (j >= N)
                p.C0[(size_t)i * p.ldc + j] = PAD_VALUE;
            else if (beta == 0.0f)
                p.C0[(size_t)i * p.ldc + j] = NAN; /* must be ignored */
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

#endif /* NLLM_GEMM_PROB_H */
