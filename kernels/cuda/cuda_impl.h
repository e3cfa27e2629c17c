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

#define NLLM_CUDA_GRAPHS 16          /* recordings kept per backend (LRU)   */
#define NLLM_CUDA_STAGE_MAX (8u << 20) /* uploads up to this size are staged  */
#define NLLM_CUDA_WORKSPACE (32u << 20) /* cuBLAS workspace (graph-safe)       */

/* One recording of be->record: an instantiated CUDA graph of a body. */
typedef struct {
    const void *owner;
    uint64_t key;
    cudaGraphExec_t exec; /* NULL: not captured (yet)              */
    int eager_runs;       /* runs without a graph so far            */
    int failed;           /* capture failed: always run eagerly     */
    int breaks;           /* captures broken so far                 */
    uint64_t last_use;
} nllm__cuda_graph_t;

/* A pinned host buffer an upload is staged through, and the event after
 * the copy that reads it (the buffer is free again once it completed). */
typedef struct {
    void *buf;
    size_t cap;
    cudaEvent_t ev;
    int pending;
} nllm__cuda_stage_t;

typedef struct {
    void *p;
    size_t bytes;
} nllm__cuda_block_t;

typedef struct {
    nllm_backend_t *be; /* the backend this is the impl of */
    int device;
    char name[16];     /* "cuda:0" (be->name points here) */
    char devname[256]; /* "NVIDIA H200"                   */
    cudaStream_t stream;
    cublasHandle_t blas;
    int err_code;      /* 0 or the first failure's NLLM_E* code */
    char err_msg[NLLM_ERR_MSG_MAX];
    void *scratch;     /* grows on demand; used within one op at a time */
    size_t scratch_bytes;
    double *d_norm;    /* NLLM_CUDA_SQN_BLOCKS partials                 */
    void *workspace;   /* cuBLAS workspace, NLLM_CUDA_WORKSPACE bytes   */
    /* recordings (be->record) */
    int graphs_on;     /* 0: NLLM_CUDA_GRAPHS=0 in the environment      */
    nllm__cuda_graph_t graphs[NLLM_CUDA_GRAPHS];
    uint64_t use_clock;
    int capturing;     /* inside a stream capture: errors break it      */
    int capture_broken;
    char capture_msg[256]; /* why the last capture failed (or "")      */
    uint64_t graph_launches, eager_bodies;
    /* staged uploads: two pinned buffers used in turn */
    nllm__cuda_stage_t stage[2];
    int stage_next;
    /* the second queue (be->aux_*): while on_aux, stream, blas, scratch
     * and scratch_bytes above are the second queue's and the alt_ fields
     * the main queue's; aux_begin/aux_end swap them */
    cudaStream_t alt_stream;
    cublasHandle_t alt_blas;
    void *alt_scratch;
    size_t alt_scratch_bytes;
    void *alt_workspace;
    cudaEvent_t ev_fork, ev_join;
    int on_aux;
    /* bf16 GEMMs: the bound parameter buffer and its bf16 copy */
    const float *pbase;
    int64_t pn;
    void *pshadow;     /* pn bf16 values, same layout as pbase          */
    int pshadow_valid; /* converted since the last change               */
    /* device memory held (be->mem_bytes/mem_peak): the allocations */
    nllm__cuda_block_t *blocks;
    size_t nblocks, cap_blocks;
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
 * until the next call); NULL after recording an error. Growing it drops
 * every recorded graph (they hold the old pointer); inside a capture it
 * breaks the capture instead (the body then runs eagerly and grows it). */
void *nllm__cuda_scratch(nllm__cuda_impl_t *ci, size_t bytes, const char *what);

/* cuda_ops.cu: fills the op table; C = beta * C (GEMM with K == 0);
 * probes that the fat binary has code for the current device. */
void nllm__cuda_ops_install(nllm_backend_t *be);
void nllm__cuda_scale(nllm__cuda_impl_t *ci, float *C, int ldc, int M, int N, float beta);
cudaError_t nllm__cuda_probe_kernels(void);
/* dst (rows, cols, packed) = src (rows, cols, row stride ld) rounded to
 * bfloat16 (round to nearest even). */
void nllm__cuda_to_bf16(nllm__cuda_impl_t *ci, const float *src, int64_t rows, int64_t cols,
                        int64_t ld, void *dst);

#endif /* NLLM_CUDA_IMPL_H */
