/* cuda_impl.h -- private to kernels/cuda/: the CUDA backend's state and the
 * helpers its two translation units share (C++, nvcc only).
 *
 * Invariants: every op runs on ci->stream of device ci->device; the first
 * failing CUDA or cuBLAS call is recorded in err_code/err_msg and stays
 * (sticky): later ops become no-ops and sync returns it. cuda_backend.cu
 * owns lifecycle, memory, GEMM and errors; cuda_ops.cu owns the kernels.
 */
#ifndef NLLM_CUDA_IMPL_H
#define NLLM_CUDA_IMPL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "cuda_backend.h"

extern "C" {
#include "backend.h"
}

#define NLLM_CUDA_SQN_BLOCKS 1024 /* sq_norm: fixed grid, so a fixed sum order */

typedef struct {
    int device;
    char name[16];     /* "cuda:0" (be->name points here) */
    char devname[256]; /* "NVIDIA H200"                   */
    cudaStream_t stream;
    cublasHandle_t blas;
    int err_code;      /* 0 or the first failure's NLLM_E* code */
    char err_msg[NLLM_ERR_MSG_MAX];
    void *scratch;     /* grows on demand; used within one op at a time */
    size_t scratch_bytes;
    double *d_norm;    /* NLLM_CUDA_SQN_BLOCKS partials + 1 result      */
    double *h_norm;    /* pinned host copy of the result                */
} nllm__cuda_impl_t;

static inline nllm__cuda_impl_t *nllm__cuda_impl(nllm_backend_t *be)
{
    return (nllm__cuda_impl_t *)be->impl;
}

/* Records e as the sticky error (if it is the first) naming `what`;
 * returns true when e == cudaSuccess. */
bool nllm__cuda_check(nllm__cuda_impl_t *ci, cudaError_t e, const char *what);
/* Makes the backend's device current; false if the backend has failed. */
bool nllm__cuda_enter(nllm__cuda_impl_t *ci);
/* Device scratch of at least `bytes` (stream-ordered reuse: only valid
 * until the next call); NULL after recording an error. */
void *nllm__cuda_scratch(nllm__cuda_impl_t *ci, size_t bytes, const char *what);

/* cuda_ops.cu: fills the op table; C = beta * C (GEMM with K == 0);
 * probes that the fat binary has code for the current device. */
void nllm__cuda_ops_install(nllm_backend_t *be);
void nllm__cuda_scale(nllm__cuda_impl_t *ci, float *C, int ldc, int M, int N, float beta);
cudaError_t nllm__cuda_probe_kernels(void);

#endif /* NLLM_CUDA_IMPL_H */
