/* backend.h -- the one small interface every compute backend implements.
 *
 * A backend owns device memory and runs the model's ops on it: GEMM and the
 * handful of fused element-wise / reduction kernels the context-vector model
 * needs. kernels/model.c is written only against this table; the CPU backend
 * (kernels/cpu/) and the CUDA backend (kernels/cuda/) fill it. All matrices
 * are float32, row-major; pointers are device pointers of the backend.
 * Ops are fire-and-forget: a backend that fails records a sticky error that
 * nllm_be_status() returns (the CUDA backend checks at sync points).
 * Every op result is deterministic for a fixed backend and thread count.
 */
#ifndef NLLM_BACKEND_H
#define NLLM_BACKEND_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "nllm_err.h"
#include "nllm_math.h"

typedef struct nllm_backend nllm_backend_t;

/* Arithmetic of the GEMMs (job key `precision`). Parameters, Adam moments,
 * reductions, LayerNorm, softmax and the loss are float32 in every mode;
 * only the matrix products change:
 *   fp32  full float32 products (the reference; CPU and GPU agree)
 *   tf32  tensor-core products with TF32 operands (10-bit mantissa)
 *   bf16  tensor-core products with bfloat16 operands (7-bit mantissa),
 *         float32 accumulation (on the CPU: AMX tiles, cpu/bf16_gemm.h) */
typedef enum { NLLM_PREC_FP32 = 0, NLLM_PREC_TF32 = 1, NLLM_PREC_BF16 = 2 } nllm_precision_t;
#define NLLM_PREC_COUNT 3

/* "fp32", "tf32", "bf16" */
const char *nllm_precision_name(nllm_precision_t p);
/* 0 and *out, or NLLM_EINVAL for any other text (err names the allowed values). */
int nllm_precision_parse(const char *s, nllm_precision_t *out, nllm_err_t *err);
/* The names of the precisions in mask (bit 1 << NLLM_PREC_*), as "fp32, tf32
 * and bf16" into buf. */
const char *nllm_precision_list(unsigned mask, char *buf, size_t n);

/* The per-step scalars of a training step, in device memory. The host
 * writes the fields from `seed` on before each step (one upload, with the
 * batch's token ids); the step's ops read them, and write the first two,
 * on the device. Taking them from device memory rather than as call
 * arguments is what makes a step free of host round trips and lets a
 * backend record it once and replay it (CUDA graphs). */
typedef struct {
    /* written on the device */
    double sqnorm;           /* sum of squared gradients (sq_norm)          */
    int32_t halted;          /* sticky: a step had a non-finite gradient    */
                             /* norm; adam updates nothing from then on     */
    int32_t pad0;
    /* written by the host (nllm_step_dev_host_offset() onwards) */
    uint64_t seed;           /* dropout key                                 */
    uint32_t rng_step;       /* dropout step                                */
    uint32_t slot;           /* stats ring slot this step writes            */
    float grad_scale;        /* softmax_xent gradient scale (1 / tokens of  */
                             /* the global batch)                           */
    int32_t win0;            /* global index of this batch's first window   */
                             /* (data parallelism; dropout masks)           */
    double max_norm;         /* global-norm clip threshold, <= 0: none      */
    nllm_adam_consts_t adam; /* clip_scale: set by the clip op              */
} nllm_step_dev_t;

#define NLLM_STEP_DEV_HOST_OFFSET offsetof(nllm_step_dev_t, seed)

/* What one step leaves in its slot of the stats ring (device memory). */
typedef struct {
    double loss_sum;   /* sum of per-token cross-entropy (batch_stats)     */
    double grad_norm;  /* global L2 norm before clipping (clip)            */
    double clip_scale; /* factor Adam applied (1: no clipping)             */
    int64_t correct;   /* argmax hits (batch_stats)                        */
    int32_t halted;    /* Adam skipped: this or an earlier step diverged   */
    int32_t pad;
} nllm_step_out_t;

/* The clip decision of a step (be->clip), the same arithmetic on every
 * backend: norm = sqrt(sd->sqnorm), torch's clip factor, the halt on a
 * non-finite norm, and the step's slot of the ring. */
NLLM_HD void nllm_clip_step(nllm_step_dev_t *sd, nllm_step_out_t *ring)
{
    double norm = sqrt(sd->sqnorm);
    double scale = nllm_clip_factor(norm, sd->max_norm);
    sd->adam.clip_scale = (float)scale;
    if (!isfinite(norm))
        sd->halted = 1;
    nllm_step_out_t *o = &ring[sd->slot];
    o->grad_norm = norm;
    o->clip_scale = scale;
    o->halted = sd->halted;
}

/* Parameters of the fused context step (gates, LayerNorm, clamp). */
typedef struct {
    int B, Dc;
    const float *bias3;  /* (3*Dc) biases of update, forget, input gate   */
    const float *gamma;  /* (Dc)                                           */
    const float *beta;   /* (Dc)                                           */
} nllm_ctx_args_t;

struct nllm_backend {
    const char *name; /* "cpu", "cuda:0" */
    void *impl;
    unsigned precisions;        /* supported: bit 1 << NLLM_PREC_* */
    nllm_precision_t precision; /* in use (nllm_backend_set_precision) */
    const char *precision_note; /* why one is missing, or NULL (static text) */
    /* Device memory this backend holds now and has held at most (its
     * allocations, scratch and library workspaces), in bytes; both stay 0
     * on a backend that does not count (the CPU). Read by the owning
     * thread, or by others as a plain snapshot (monitoring only). */
    size_t mem_bytes, mem_peak;

    /* --- memory --- */
    void *(*alloc)(nllm_backend_t *be, size_t bytes); /* zeroed; NULL on failure */
    void (*free)(nllm_backend_t *be, void *p);
    void (*upload)(nllm_backend_t *be, void *dst, const void *src, size_t bytes);
    void (*download)(nllm_backend_t *be, void *dst, const void *src, size_t bytes);
    void (*copy)(nllm_backend_t *be, void *dst, const void *src, size_t bytes);
    void (*zero)(nllm_backend_t *be, void *dst, size_t bytes);
    /* Zeroes `width` floats of each of `rows` rows at stride ld. */
    void (*zero_rows)(nllm_backend_t *be, float *dst, int ld, int width, int rows);
    /* Waits for queued work; returns 0 or the sticky error (and fills err). */
    int (*sync)(nllm_backend_t *be, nllm_err_t *err);
    void (*destroy)(nllm_backend_t *be);
    /* Host round trips so far: sync calls and download calls (the
     * sync-free step test counts them). */
    uint64_t n_syncs, n_downloads;
    /* Fault injection (NLLM_BACKEND_FAULT, see nllm_backend_fault_parse):
     * the backend's own sync while `sync` is the hook's wrapper, and the
     * sync count from which every sync fails (0: none). */
    int (*sync_impl)(nllm_backend_t *be, nllm_err_t *err);
    uint64_t fault_at;

    /* --- recording ---
     * Runs body(ctx), whose ops must be the same, on the same pointers and
     * shapes, every time it is called with the same (owner, key), and read
     * everything that changes between calls from device memory. A backend
     * may record the ops once and replay the recording on later calls
     * (CUDA graphs); the results are bit-identical to running them. NULL:
     * the caller runs body itself. */
    void (*record)(nllm_backend_t *be, const void *owner, uint64_t key,
                   void (*body)(void *ctx), void *ctx);
    /* Forgets every recording of owner (before its buffers are freed). */
    void (*record_drop)(nllm_backend_t *be, const void *owner);

    /* --- small-batch products of the recurrent chain ---
     * For batches of at most small_batch rows (0: not offered), products
     * fused with the element-wise step that follows them; the same results
     * as the plain ops up to float summation order, deterministic, in the
     * backend's precision.
     * small_nt: C(M,N) = beta*C + A(M,K) W(N,K)^T; then, with bias, C =
     *   relu(C + bias) * dropout mask as bias_relu_dropout_forward does
     *   for step t of T (rows of C are the batch, N its units).
     * small_nn: C(M,N) = beta*C + A(M,K) W(K,N); then, with mask (stride
     *   ldc), C = mask > 0 ? C / (1-p) : 0 as relu_dropout_backward does. */
    void (*small_nt)(nllm_backend_t *be, int M, int N, int K, const float *A, int lda,
                     const float *W, int ldw, float beta, float *C, int ldc, const float *bias,
                     int t, int T, const nllm_step_dev_t *sd, uint32_t stream, float p);
    void (*small_nn)(nllm_backend_t *be, int M, int N, int K, const float *A, int lda,
                     const float *W, int ldw, float beta, float *C, int ldc, const float *mask,
                     float p);
    int small_batch;

    /* --- a second queue ---
     * aux_begin: later ops run on a second queue, after everything queued
     * so far; aux_end: later ops run on the main queue again (while the
     * second one may still work); aux_join: the main queue waits for all
     * work queued on the second. Until joined, ops on the two queues must
     * not touch the same memory. NULL (the CPU): one queue, in call order.
     * wgrad_chunk: time steps per chunk of the weight gradients that the
     * model hands to the second queue during BPTT (0: the whole window). */
    void (*aux_begin)(nllm_backend_t *be);
    void (*aux_end)(nllm_backend_t *be);
    void (*aux_join)(nllm_backend_t *be);
    int wgrad_chunk;

    /* --- the parameters, for precisions that convert GEMM operands ---
     * params_bind names the parameter buffer [w, w+n) (NULL: none); a
     * backend may keep a converted copy of it (bf16) and use that for GEMM
     * operands inside the buffer. params_changed is called, in stream order,
     * after every change of the parameters (Adam, uploads). One buffer per
     * backend. NULL: nothing to do. */
    void (*params_bind)(nllm_backend_t *be, const float *w, int64_t n);
    void (*params_changed)(nllm_backend_t *be);

    /* --- ops --- */

    /* C(M,N) = alpha * op(A) op(B) + beta * C; op(X) = X^T when transX. */
    void (*gemm)(nllm_backend_t *be, int transA, int transB, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C,
                 int ldc);

    /* out[r, 0:D] = table[ids[r], 0:D] for r < N (row stride ldo). */
    void (*embedding_forward)(nllm_backend_t *be, float *out, int ldo, const float *table,
                              const int32_t *ids, int N, int D);
    /* dtable[ids[r], :] += dout[r, :], in increasing r for every row of dtable. */
    void (*embedding_backward)(nllm_backend_t *be, float *dtable, const float *dout, int ldd,
                               const int32_t *ids, int N, int D);

    /* One time step t of T, B rows, H units:
     * x = relu(x + bias) * dropout mask * 1/(1-p) (mask from nllm_math.h,
     * key sd->seed, step sd->rng_step, element (b, t, j) with index
     * ((b + sd->win0)*T + t)*H + j; p == 0: no dropout, and sd is not
     * read). */
    void (*bias_relu_dropout_forward)(nllm_backend_t *be, float *x, const float *bias, int B,
                                      int H, int t, int T, const nllm_step_dev_t *sd,
                                      uint32_t stream, float p);
    /* dx[i] = a[i] > 0 ? dx[i] * 1/(1-p) : 0, n elements (a = forward output). */
    void (*relu_dropout_backward)(nllm_backend_t *be, float *dx, const float *a, int64_t n,
                                  float p);

    /* Context step forward. g (B, 3Dc) holds W_{u,f,i} h on entry and
     * (d, f, gate) after bias and sigmoids on exit; cprev (B, Dc, stride
     * ldc) is c(t-1) or NULL for zeros; writes xhat (B, Dc), rstd (B) and
     * c(t) = clamp(LayerNorm(f*cprev + gate*d)) to cout (stride ldo). */
    void (*context_forward)(nllm_backend_t *be, const nllm_ctx_args_t *a, float *g,
                            const float *cprev, int ldc, float *xhat, float *rstd, float *cout,
                            int ldo);
    /* Context step backward. dc (B, Dc): gradient w.r.t. c(t) on entry and
     * w.r.t. c(t-1) through the f*c(t-1) term on exit (the caller adds the
     * layer-1 path). g: (d, f, gate) on entry, pre-activation gradients of the
     * three heads on exit. On exit xhat holds dn*xhat and dn holds dn, where
     * dn is the gradient at the LayerNorm output (clamp applied), for the
     * later gamma/beta column sums. */
    void (*context_backward)(nllm_backend_t *be, const nllm_ctx_args_t *a, float *dc,
                             float *g, const float *cprev, int ldc, float *xhat,
                             const float *rstd, float *dn);

    /* Softmax cross-entropy over N rows of V logits (row stride V), after
     * adding bias to every row. Rows with target 0 (pad) are ignored.
     * row_loss[r] = -log softmax(y_r)[target] (0 for pad), row_hit[r] = 1 when
     * argmax (first maximum) == target. With want_grad, y is replaced by
     * sd->grad_scale * (softmax - onehot) (zero rows for pad); else y keeps
     * the biased logits (and sd is not read). */
    void (*softmax_xent)(nllm_backend_t *be, float *y, const float *bias,
                         const int32_t *targets, int N, int V, int want_grad,
                         const nllm_step_dev_t *sd, float *row_loss, float *row_hit);
    /* ring[sd->slot].loss_sum = sum of row_loss[0:N] in double and
     * .correct = number of non-zero row_hit, each in a fixed order. */
    void (*batch_stats)(nllm_backend_t *be, const float *row_loss, const float *row_hit, int N,
                        const nllm_step_dev_t *sd, nllm_step_out_t *ring);

    /* out[j] = sum_r x[r, j] over N rows (row stride ld), r ascending. */
    void (*col_sum)(nllm_backend_t *be, float *out, const float *x, int N, int D, int ld);

    /* Sum of squares of x[0:n] in double, into *out (device pointer). */
    void (*sq_norm)(nllm_backend_t *be, const float *x, int64_t n, double *out);

    /* The clip decision of a step, on the device (nllm_clip_decide):
     * norm = sqrt(sd->sqnorm); sd->adam.clip_scale = the factor; a
     * non-finite norm sets sd->halted; ring[sd->slot] gets grad_norm,
     * clip_scale and halted. */
    void (*clip)(nllm_backend_t *be, nllm_step_dev_t *sd, nllm_step_out_t *ring);

    /* Fused Adam over n parameters (nllm_adam_update for every element
     * with the constants sd->adam); nothing changes while sd->halted. */
    void (*adam)(nllm_backend_t *be, float *p, float *m, float *v, const float *g, int64_t n,
                 const nllm_step_dev_t *sd);
};

/* Backend constructors. threads <= 0: the library default. */
int nllm_cpu_backend_create(int threads, nllm_backend_t **out, nllm_err_t *err);
/* What a CPU backend implements on this machine, known without creating
 * one: fp32, plus bf16 where the CPU's AMX tiles run it (cpu/bf16_gemm.h).
 * *note (may be NULL) gets why bf16 is missing ("bf16 on the CPU needs
 * AMX-BF16: this CPU has no AMX-BF16"), or NULL. */
unsigned nllm_cpu_precisions(const char **note);
/* CUDA backend (only where built with CUDA; else returns NLLM_EDEVICE). */
int nllm_cuda_backend_create(int device, nllm_backend_t **out, nllm_err_t *err);
int nllm_cuda_available(void);

/* Create by device name: "cpu" or "cuda:N". A backend made here may carry
 * an injected device fault (below). */
int nllm_backend_create(const char *device, int threads, nllm_backend_t **out, nllm_err_t *err);

/* ---- device faults ----
 * NLLM_EDEVICE from sync is a device fault: the device itself failed
 * (the CUDA backend's sticky errors: ECC, illegal address, launch failure,
 * device lost, and every other CUDA or cuBLAS error but running out of
 * memory, which is NLLM_ENOMEM). The daemon takes a device that faulted
 * out of service until an operator resets it.
 *
 * Test hook (process-global): NLLM_BACKEND_FAULT=device@sync:N makes the
 * Nth sync (1-based) of every backend made by nllm_backend_create, and
 * every later sync of it, fail with NLLM_EDEVICE "device D: injected
 * device fault (...)", as a sticky CUDA error does; device@sync:N:K: only
 * the first K backends this process makes. Works on every backend (the
 * CPU too: CI tests the daemon's fault handling with it). Read once, at
 * the first nllm_backend_create; a malformed value is reported on stderr
 * and ignored. (See also NLLM_FS_FAULT in daemon/store/fsutil.h.)
 * nllm_backend_fault_parse applies such a spec now (replacing the
 * environment's; "" clears it; NLLM_EINVAL for a bad spec, nothing set). */
int nllm_backend_fault_parse(const char *spec, nllm_err_t *err);

/* Selects the GEMM precision of every later op. A precision the backend
 * does not implement is NLLM_EINVAL with a message naming the device and
 * what it supports ("device cpu implements precision fp32 only ..."). */
int nllm_backend_set_precision(nllm_backend_t *be, nllm_precision_t p, nllm_err_t *err);

#endif /* NLLM_BACKEND_H */
