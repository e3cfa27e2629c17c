/* gemm.h -- nllm's own packed SGEMM for the CPU, at the CPU's instruction
 * set (AVX-512, AVX2+FMA or AVX), for every product shape: NN, NT and TN.
 *
 * cpu_backend.c runs the large products (output head, weight gradients,
 * per-time-step products at large batch) here instead of in the BLAS when
 * the BLAS would run kernels below the CPU's level (cpu_kernels.h decides).
 * Results are bit-identical for the same inputs on the same machine whatever
 * the thread count: threads only ever take whole MR x NR tiles, and every
 * element of C is summed over k in one fixed order (KC-deep blocks in
 * order, each block k by k).
 */
#ifndef NLLM_GEMM_H
#define NLLM_GEMM_H

#include "cpu_pool.h"
#include "nllm_err.h"

/* Packing buffers for one caller at a time (one per backend), sized at
 * creation for `threads` participants. */
typedef struct nllm_gemm_ws nllm_gemm_ws_t;

int nllm_gemm_ws_create(int threads, nllm_gemm_ws_t **out, nllm_err_t *err);
void nllm_gemm_ws_destroy(nllm_gemm_ws_t *ws);

/* C(M,N) = alpha op(A) op(B) + beta C, row-major, op(X) = X or X^T:
 *   transA: A is (K, M), else (M, K); transB: B is (N, K), else (K, N).
 * beta == 0: C is only written (NaN in it is ignored); K == 0 or
 * alpha == 0: C = beta C. pool may be NULL (one thread); ws must not be. */
void nllm_gemm(nllm_pool_t *pool, nllm_gemm_ws_t *ws, int transA, int transB, int M, int N,
              int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc);

/* The variant in use ("avx512", "avx2", "avx"), or NULL where none of them
 * runs on this CPU (then nllm_gemm must not be called). */
const char *nllm_gemm_isa(void);

/* Use variant `name` from now on, or NULL for the best this CPU runs.
 * Returns 0, or NLLM_EINVAL when the name is unknown or this CPU cannot run
 * it. Not to be called while another thread is inside nllm_gemm. */
int nllm_gemm_force_isa(const char *name);

#endif /* NLLM_GEMM_H */
