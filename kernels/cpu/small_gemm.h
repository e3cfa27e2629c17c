/* small_gemm.h -- row-major SGEMM for products with few rows (small M): the
 * per-time-step products of the recurrence in kernels/model.c, where B is a
 * weight matrix read in place (no packing) and OpenBLAS would spend more time
 * re-packing it than multiplying. cpu_backend.c's cpu_gemm routes NT and NN
 * products with M <= NLLM_SMALL_GEMM_MAX_M here (nllm_small_gemm_use);
 * everything else stays with OpenBLAS. Results are bit-identical for the same inputs on the
 * same machine whatever the pool's thread count (work is split over whole
 * column blocks; every element is summed in one fixed order).
 */
#ifndef NLLM_SMALL_GEMM_H
#define NLLM_SMALL_GEMM_H

#include "cpu_pool.h"

/* cpu_gemm uses nllm_small_gemm for M up to this. Per time step of the
 * seed model (16 MB of weights streamed from L3; CPU time, one Zen 4 core)
 * it beats OpenBLAS by 2.4x at M = 8, 1.6x at 16, 1.4x at 32, 1.2x at 64
 * and 1.15x at 128. Above 64 the gain is small and was not measured with
 * both libraries threaded, so larger M stays with OpenBLAS. */
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

/* Whether cpu_gemm should use nllm_small_gemm for an M-row NT or NN product:
 * M <= NLLM_SMALL_GEMM_MAX_M and a vector variant (AVX2 or AVX-512) runs on
 * this CPU; the plain variant is slower than OpenBLAS, so it only serves
 * direct callers and tests. */
int nllm_small_gemm_use(int M);

/* For tests and benchmarks: use variant `name` ("avx512", "avx2",
 * "generic") from now on, or NULL for the automatic choice. Returns 0, or
 * NLLM_EINVAL when the name is unknown or this CPU cannot run it. Not to be
 * called while another thread is inside nllm_small_gemm. */
int nllm_small_gemm_force_isa(const char *name);

#endif /* NLLM_SMALL_GEMM_H */
