/* small_gemm.h -- row-major SGEMM for products with few rows (small M): the
 * per-time-step products of the recurrence in kernels/model.c, where B is a
 * weight matrix read in place (no packing) and OpenBLAS would spend more time
 * re-packing it than multiplying. cpu_backend.c's cpu_gemm routes M <=
 * NLLM_SMALL_GEMM_MAX_M here for the NT and NN layouts; everything else
 * stays with OpenBLAS. Results are bit-identical for the same inputs on the
 * same machine whatever the pool's thread count (work is split over whole
 * column blocks; every element is summed in one fixed order).
 */
#ifndef NLLM_SMALL_GEMM_H
#define NLLM_SMALL_GEMM_H

#include "cpu_pool.h"

/* cpu_gemm uses nllm_small_gemm for M up to this (measured crossover with
 * OpenBLAS on Zen 4 at N, K = 512..1536). */
#define NLLM_SMALL_GEMM_MAX_M 64

/* C(M,N) = alpha * A(M,K) op(B) + beta * C, all row-major:
 *   transB != 0 (NT): B is (N, K), op(B) = B^T   (activations times W^T)
 *   transB == 0 (NN): B is (K, N)                (dZ times W)
 * lda, ldb, ldc are row strides in floats. beta == 0: C is only written (old
 * values, NaN included, are ignored); alpha == 0: A and B are not read.
 * pool may be NULL (single-threaded); with a pool the work is split over
 * column blocks when it is large enough to pay for the hand-off. */
void nllm_small_gemm(nllm_pool_t *pool, int transB, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc);

/* The instruction-set variant in use: "avx512", "avx2" or "generic". */
const char *nllm_small_gemm_isa(void);

/* For tests and benchmarks: use variant `name` ("avx512", "avx2",
 * "generic") from now on, or NULL for the automatic choice. Returns 0, or
 * NLLM_EINVAL when the name is unknown or this CPU cannot run it. Not to be
 * called while another thread is inside nllm_small_gemm. */
int nllm_small_gemm_force_isa(const char *name);

#endif /* NLLM_SMALL_GEMM_H */
