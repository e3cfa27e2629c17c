/* bf16_gemm.h -- the CPU backend's precision bf16: matrix products with
 * bfloat16 operands and float32 accumulation, on the AMX tiles of Intel
 * Xeons from Sapphire Rapids on (amx-tile, amx-bf16).
 *
 * Both operands are rounded to bfloat16 (to nearest, ties to even, as the
 * CUDA backend's bf16 does) while they are packed into the tiles' layouts;
 * every element of C is summed over k in one fixed order by one tile, so
 * results are bit-identical for the same inputs on the same machine whatever
 * the thread count. cpu_backend.c runs every product here while the job's
 * precision is bf16 and offers bf16 only where nllm_bf16_gemm_usable() says
 * so (the CPU has AMX, Linux granted its tile state, and a product checked
 * against the plain reference at start agreed).
 */
#ifndef NLLM_BF16_GEMM_H
#define NLLM_BF16_GEMM_H

#include <stdint.h>

#include "cpu_pool.h"
#include "nllm_err.h"

/* Packing buffers for one caller at a time (one per backend); they grow
 * with the largest product seen. */
typedef struct nllm_bf16_ws nllm_bf16_ws_t;

int nllm_bf16_ws_create(nllm_bf16_ws_t **out, nllm_err_t *err);
void nllm_bf16_ws_destroy(nllm_bf16_ws_t *ws);

/* The parameters [w, w + n) (w NULL: none): a product whose B lies inside
 * them packs that operand once and reuses the packing in later products
 * until nllm_bf16_ws_params_changed (the CPU backend's params_bind and
 * params_changed). Binding again, or NULL, forgets every packing. */
void nllm_bf16_ws_params(nllm_bf16_ws_t *ws, const float *w, int64_t n);
void nllm_bf16_ws_params_changed(nllm_bf16_ws_t *ws);

/* 1 when nllm_gemm_bf16 runs here; else 0 and, where why is not NULL, a
 * phrase saying why ("this CPU has no AMX-BF16", "Linux refused the AMX
 * tile state: ...", "the AMX product disagreed with the reference ...").
 * Decided once per process (thread-safe); the first call asks Linux for the
 * tile state (arch_prctl ARCH_REQ_XCOMP_PERM) and runs the check.
 * NLLM_CPU_BF16=off in the environment turns bf16 off (tests, comparisons). */
int nllm_bf16_gemm_usable(const char **why);

/* C(M,N) = alpha op(A) op(B) + beta C with bf16-rounded operands, row-major,
 * op(X) = X or X^T: transA: A is (K, M), else (M, K); transB: B is (N, K),
 * else (K, N). beta == 0: C is only written. M, N, K > 0. Returns 0, or
 * NLLM_ENOMEM when the packing buffers cannot grow (C untouched). Only
 * where nllm_bf16_gemm_usable() is 1; pool may be NULL (one thread). */
int nllm_gemm_bf16(nllm_pool_t *pool, nllm_bf16_ws_t *ws, int transA, int transB, int M, int N,
                   int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc);

/* x rounded to the nearest bfloat16 (ties to even; NaN stays NaN), as a
 * float. */
float nllm_bf16_round(float x);

/* The plain reference: the same product with every operand rounded by
 * nllm_bf16_round, the products summed over k in ascending order in
 * double, then alpha and beta applied in float. For tests and the start
 * check. */
void nllm_gemm_bf16_ref(int transA, int transB, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C,
                        int ldc);

#endif /* NLLM_BF16_GEMM_H */
