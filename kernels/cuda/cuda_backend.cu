/* cuda_backend.cu -- the CUDA backend's lifecycle, memory, GEMM and error
 * handling (the kernels are in cuda_ops.cu).
 *
 * One backend = one device, one non-blocking stream and one cuBLAS handle
 * bound to it; every op is queued on that stream, so ops run in call order
 * and results depend only on the inputs (cuBLAS without atomics and with a
 * fixed workspace, kernels with fixed reduction orders). Errors are sticky
 * (see cuda_impl.h) and surface at sync with the device, the failed call
 * and CUDA's own words. be->record captures a body once per (owner, key)
 * as a CUDA graph and replays it; uploads go through pinned staging
 * buffers so they never wait for the device.
 * Callers: backend.c (nllm_backend_create), the daemon (device inventory).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_impl.h"

/* ---- errors ----------------------------------------------------------- */

static void fail(nllm__cuda_impl_t *ci, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(nllm__cuda_impl_t *ci, int code, const char *fmt, ...)
{
    if (ci->err_code)
        return; /* keep the first failure: later ones are its consequences */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ci->err_msg, sizeof ci->err_msg, fmt, ap);
    va_end(ap);
    ci->err_code = code;
}

/* What to do about a CUDA error, for the message's tail. */
static const char *hint_of(cudaError_t e)
{
    switch (e) {
    case cudaErrorMemoryAllocation:
        return "the GPU is out of memory: lower --batch or free the device";
    case cudaErrorECCUncorrectable:
        return "uncorrectable ECC error: the GPU needs attention (nvidia-smi -q -d ECC); "
               "resume the job from its last checkpoint on a healthy device";
    case cudaErrorDevicesUnavailable:
        return "the device is busy or in exclusive mode with another process";
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDeviceFunction:
        return "this build has no kernels for this GPU: rebuild with -Dgpu_arch=<its SM>";
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
        return "a kernel faulted and the CUDA context is lost: resume the job from its last "
               "checkpoint (a bug: please report it)";
    case cudaErrorLaunchTimeout:
        return "a kernel ran too long (display watchdog?)";
    default:
        return "the device may be lost or reset: check nvidia-smi, then resume the job from "
               "its last checkpoint";
    }
}

/* Inside a capture an error breaks the capture, not the backend: the
 * body runs again without a graph (cu_record). */
static bool capture_error(nllm__cuda_impl_t *ci, const char *what, const char *why)
{
    if (!ci->capturing)
        return false;
    if (!ci->capture_broken)
        snprintf(ci->capture_msg, sizeof ci->capture_msg, "%s: %s", what, why);
    ci->capture_broken = 1;
    return true;
}

bool nllm__cuda_check(nllm__cuda_impl_t *ci, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return true;
    if (capture_error(ci, what, cudaGetErrorString(e))) {
        (void)cudaGetLastError();
        return false;
    }
    fail(ci, e == cudaErrorMemoryAllocation ? NLLM_ENOMEM : NLLM_EDEVICE,
         "%s: %s failed: %s (%s) on %s; %s", ci->name, what, cudaGetErrorString(e),
         cudaGetErrorName(e), ci->devname, hint_of(e));
    return false;
}

static bool blas_check(nllm__cuda_impl_t *ci, cublasStatus_t st, const char *what)
{
    if (st == CUBLAS_STATUS_SUCCESS)
        return true;
    /* an execution failure usually hides a CUDA error: name it too */
    cudaError_t e = cudaGetLastError();
    if (capture_error(ci, what, cublasGetStatusString(st)))
        return false;
    fail(ci, st == CUBLAS_STATUS_ALLOC_FAILED ? NLLM_ENOMEM : NLLM_EDEVICE,
         "%s: %s failed: %s (%s)%s%s on %s", ci->name, what, cublasGetStatusString(st),
         cublasGetStatusName(st), e != cudaSuccess ? "; CUDA: " : "",
         e != cudaSuccess ? cudaGetErrorString(e) : "", ci->devname);
    return false;
}

bool nllm__cuda_enter(nllm__cuda_impl_t *ci)
{
    if (ci->err_code)
        return false;
    return nllm__cuda_check(ci, cudaSetDevice(ci->device), "cudaSetDevice");
}

/* Waits for both queues (the caller records any error). */
static cudaError_t sync_all(nllm__cuda_impl_t *ci)
{
    cudaError_t e = ci->stream ? cudaStreamSynchronize(ci->stream) : cudaSuccess;
    cudaError_t e2 = ci->alt_stream ? cudaStreamSynchronize(ci->alt_stream) : cudaSuccess;
    return e != cudaSuccess ? e : e2;
}

/* ---- device memory accounting (be->mem_bytes, be->mem_peak) ----------- */

static void mem_add(nllm_backend_t *be, void *p, size_t bytes)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (ci->nblocks == ci->cap_blocks) {
        size_t cap = ci->cap_blocks ? 2 * ci->cap_blocks : 64;
        nllm__cuda_block_t *nb =
            (nllm__cuda_block_t *)realloc(ci->blocks, cap * sizeof *nb);
        if (!nb)
            return; /* only the figures suffer */
        ci->blocks = nb;
        ci->cap_blocks = cap;
    }
    ci->blocks[ci->nblocks].p = p;
    ci->blocks[ci->nblocks].bytes = bytes;
    ci->nblocks++;
    be->mem_bytes += bytes;
    if (be->mem_bytes > be->mem_peak)
        be->mem_peak = be->mem_bytes;
}

static void mem_remove(nllm_backend_t *be, void *p)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    for (size_t i = ci->nblocks; i-- > 0;)
        if (ci->blocks[i].p == p) {
            be->mem_bytes -= ci->blocks[i].bytes;
            ci->blocks[i] = ci->blocks[--ci->nblocks];
            return;
        }
}

/* ---- recordings (CUDA graphs) ------------------------------------------- */

static void graph_forget(nllm__cuda_graph_t *g)
{
    if (g->exec)
        cudaGraphExecDestroy(g->exec);
    memset(g, 0, sizeof *g);
}

/* Drops every instantiated graph (they hold pointers about to change);
 * each body is captured again on its next call. The caller has synced. */
static void graphs_invalidate(nllm__cuda_impl_t *ci)
{
    for (int i = 0; i < NLLM_CUDA_GRAPHS; i++) {
        nllm__cuda_graph_t *g = &ci->graphs[i];
        if (g->exec) {
            cudaGraphExecDestroy(g->exec);
            g->exec = NULL;
        }
    }
}

void *nllm__cuda_scratch(nllm__cuda_impl_t *ci, size_t bytes, const char *what)
{
    if (bytes <= ci->scratch_bytes)
        return ci->scratch;
    if (ci->capturing) {
        /* no allocation inside a capture: the body reruns eagerly */
        capture_error(ci, what, "scratch memory must grow");
        return NULL;
    }
    /* work queued earlier may still read the old buffer, and a graph about
     * to be dropped may still run on either queue */
    if (!nllm__cuda_check(ci, sync_all(ci), "cudaStreamSynchronize"))
        return NULL;
    graphs_invalidate(ci);
    if (ci->scratch) {
        cudaFree(ci->scratch);
        ci->be->mem_bytes -= ci->scratch_bytes;
    }
    ci->scratch = NULL;
    ci->scratch_bytes = 0;
    size_t want = bytes + bytes / 2 + 4096;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, want);
    if (e != cudaSuccess) {
        char buf[160];
        snprintf(buf, sizeof buf, "cudaMalloc of %.1f MiB scratch for %s", (double)want / 1048576.0,
                 what);
        nllm__cuda_check(ci, e, buf);
        return NULL;
    }
    ci->scratch = p;
    ci->scratch_bytes = want;
    ci->be->mem_bytes += want;
    if (ci->be->mem_bytes > ci->be->mem_peak)
        ci->be->mem_peak = ci->be->mem_bytes;
    return p;
}

/* ---- memory ------------------------------------------------------------- */

static void *cu_alloc(nllm_backend_t *be, size_t bytes)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (!nllm__cuda_enter(ci))
        return NULL;
    if (bytes == 0)
        bytes = 256;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError(); /* not sticky: the caller reports how much it needed */
        return NULL;
    }
    if (!nllm__cuda_check(ci, e, "cudaMalloc"))
        return NULL;
    if (!nllm__cuda_check(ci, cudaMemsetAsync(p, 0, bytes, ci->stream), "cudaMemsetAsync")) {
        cudaFree(p);
        return NULL;
    }
    mem_add(be, p, bytes);
    return p;
}

static void cu_free(nllm_backend_t *be, void *p)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (!p)
        return;
    /* free even after a failure, so a failed job gives its memory back */
    cudaSetDevice(ci->device);
    sync_all(ci);
    mem_remove(be, p);
    cudaError_t e = cudaFree(p);
    if (!ci->err_code)
        nllm__cuda_check(ci, e, "cudaFree");
}

/* Copies src to a pinned staging buffer and queues the copy from there:
 * returns without waiting for the device (the buffer is reused two uploads
 * later, after the event of its copy). Large uploads (whole states) go
 * straight from pageable memory, which returns once src has been staged.
 * Either way the caller may reuse src immediately. */
static void cu_upload(nllm_backend_t *be, void *dst, const void *src, size_t bytes)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (bytes == 0 || !nllm__cuda_enter(ci))
        return;
    if (ci->capturing) { /* a body must read uploads, not contain them */
        capture_error(ci, "upload", "an upload inside a recorded body");
        return;
    }
    if (bytes <= NLLM_CUDA_STAGE_MAX) {
        nllm__cuda_stage_t *st = &ci->stage[ci->stage_next];
        if (st->pending &&
            !nllm__cuda_check(ci, cudaEventSynchronize(st->ev), "upload (staging event)"))
            return;
        st->pending = 0;
        if (st->cap < bytes) {
            if (st->buf)
                cudaFreeHost(st->buf);
            st->buf = NULL;
            st->cap = 0;
            size_t cap = bytes < 65536 ? 65536 : bytes + bytes / 2;
            if (cap > NLLM_CUDA_STAGE_MAX)
                cap = NLLM_CUDA_STAGE_MAX;
            if (!nllm__cuda_check(ci, cudaHostAlloc(&st->buf, cap, cudaHostAllocDefault),
                                  "upload (cudaHostAlloc of the staging buffer)"))
                return;
            st->cap = cap;
        }
        memcpy(st->buf, src, bytes);
        if (!nllm__cuda_check(ci,
                              cudaMemcpyAsync(dst, st->buf, bytes, cudaMemcpyHostToDevice,
                                              ci->stream),
                              "upload (cudaMemcpyAsync host to device)"))
            return;
        if (nllm__cuda_check(ci, cudaEventRecord(st->ev, ci->stream), "upload (event record)"))
            st->pending = 1;
        ci->stage_next ^= 1;
        return;
    }
    nllm__cuda_check(ci, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ci->stream),
                     "upload (cudaMemcpyAsync host to device)");
}

static void cu_download(nllm_backend_t *be, void *dst, const void *src, size_t bytes)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    be->n_downloads++;
    if (bytes == 0 || !nllm__cuda_enter(ci))
        return;
    /* dst is valid after the caller's sync (stream order) */
    nllm__cuda_check(ci, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ci->stream),
                     "download (cudaMemcpyAsync device to host)");
}

static void cu_copy(nllm_backend_t *be, void *dst, const void *src, size_t bytes)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (bytes == 0 || dst == src || !nllm__cuda_enter(ci))
        return;
    const char *d = (const char *)dst, *s = (const char *)src;
    if (d < s + bytes && s < d + bytes) {
        /* overlapping (memmove semantics): go through scratch */
        void *tmp = nllm__cuda_scratch(ci, bytes, "copy");
        if (!tmp)
            return;
        nllm__cuda_check(ci, cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, ci->stream),
                         "copy (cudaMemcpyAsync device to device)");
        src = tmp;
    }
    nllm__cuda_check(ci, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ci->stream),
                     "copy (cudaMemcpyAsync device to device)");
}

static void cu_zero(nllm_backend_t *be, void *dst, size_t bytes)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (bytes == 0 || !nllm__cuda_enter(ci))
        return;
    nllm__cuda_check(ci, cudaMemsetAsync(dst, 0, bytes, ci->stream), "zero (cudaMemsetAsync)");
}

static void cu_zero_rows(nllm_backend_t *be, float *dst, int ld, int width, int rows)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (width <= 0 || rows <= 0 || !nllm__cuda_enter(ci))
        return;
    nllm__cuda_check(ci,
                     cudaMemset2DAsync(dst, sizeof(float) * (size_t)ld, 0,
                                       sizeof(float) * (size_t)width, (size_t)rows, ci->stream),
                     "zero_rows (cudaMemset2DAsync)");
}

static int cu_sync(nllm_backend_t *be, nllm_err_t *err)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    be->n_syncs++;
    if (nllm__cuda_enter(ci))
        nllm__cuda_check(ci, sync_all(ci), "queued work (found at cudaStreamSynchronize)");
    if (ci->err_code)
        return nllm_err_set(err, ci->err_code, "%s", ci->err_msg);
    return 0;
}

/* ---- the second queue -------------------------------------------------- */

static void swap_queues(nllm__cuda_impl_t *ci)
{
    cudaStream_t st = ci->stream;
    ci->stream = ci->alt_stream;
    ci->alt_stream = st;
    cublasHandle_t bh = ci->blas;
    ci->blas = ci->alt_blas;
    ci->alt_blas = bh;
    void *sc = ci->scratch;
    ci->scratch = ci->alt_scratch;
    ci->alt_scratch = sc;
    size_t sb = ci->scratch_bytes;
    ci->scratch_bytes = ci->alt_scratch_bytes;
    ci->alt_scratch_bytes = sb;
    ci->on_aux ^= 1;
}

/* Fork: the second queue waits for the main queue's work so far (an event;
 * inside a capture this pulls the second queue into the graph). */
static void cu_aux_begin(nllm_backend_t *be)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (ci->on_aux || !nllm__cuda_enter(ci))
        return;
    if (!nllm__cuda_check(ci, cudaEventRecord(ci->ev_fork, ci->stream), "aux_begin (event record)"))
        return;
    swap_queues(ci);
    nllm__cuda_check(ci, cudaStreamWaitEvent(ci->stream, ci->ev_fork, 0),
                     "aux_begin (cudaStreamWaitEvent)");
}

static void cu_aux_end(nllm_backend_t *be)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (ci->on_aux)
        swap_queues(ci);
}

/* Join: the main queue waits for the second queue's work so far. */
static void cu_aux_join(nllm_backend_t *be)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (ci->on_aux)
        swap_queues(ci);
    if (!nllm__cuda_enter(ci))
        return;
    if (nllm__cuda_check(ci, cudaEventRecord(ci->ev_join, ci->alt_stream),
                         "aux_join (event record)"))
        nllm__cuda_check(ci, cudaStreamWaitEvent(ci->stream, ci->ev_join, 0),
                         "aux_join (cudaStreamWaitEvent)");
}

/* be->record: the first call of a (owner, key) runs body eagerly (it
 * loads kernels, sizes scratch and lets cuBLAS pick its kernels); the
 * second captures it into a graph (thread-local capture mode: other jobs'
 * threads may allocate meanwhile), instantiates and launches it; later
 * calls launch the graph. A capture that breaks (an error inside, scratch
 * that must grow) runs the body eagerly instead and tries again next time;
 * one that CUDA refuses outright marks the body eager for good
 * (capture_msg says why). NLLM_CUDA_GRAPHS=0 turns graphs off. */
static void cu_record(nllm_backend_t *be, const void *owner, uint64_t key,
                      void (*body)(void *ctx), void *ctx)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (!nllm__cuda_enter(ci))
        return; /* a failed backend runs nothing */
    if (!ci->graphs_on || ci->capturing) {
        ci->eager_bodies++;
        body(ctx);
        return;
    }
    nllm__cuda_graph_t *g = NULL, *lru = &ci->graphs[0];
    for (int i = 0; i < NLLM_CUDA_GRAPHS && !g; i++) {
        nllm__cuda_graph_t *c = &ci->graphs[i];
        if (c->owner == owner && c->key == key && owner)
            g = c;
        else if (c->last_use < lru->last_use)
            lru = c;
    }
    if (!g) {
        if (lru->exec) /* a graph of another body may still run */
            nllm__cuda_check(ci, sync_all(ci), "cudaStreamSynchronize");
        graph_forget(lru); /* an unused slot has last_use 0 */
        g = lru;
        g->owner = owner;
        g->key = key;
    }
    g->last_use = ++ci->use_clock;
    if (g->exec) {
        if (nllm__cuda_check(ci, cudaGraphLaunch(g->exec, ci->stream), "cudaGraphLaunch"))
            ci->graph_launches++;
        return;
    }
    if (g->failed || g->eager_runs < 1) {
        g->eager_runs++;
        ci->eager_bodies++;
        body(ctx);
        return;
    }
    cudaGraph_t graph = NULL;
    if (!nllm__cuda_check(ci,
                          cudaStreamBeginCapture(ci->stream, cudaStreamCaptureModeThreadLocal),
                          "cudaStreamBeginCapture"))
        return;
    ci->capturing = 1;
    ci->capture_broken = 0;
    body(ctx);
    ci->capturing = 0;
    cudaError_t e = cudaStreamEndCapture(ci->stream, &graph);
    if (e == cudaSuccess && !ci->capture_broken && graph)
        e = cudaGraphInstantiateWithFlags(&g->exec, graph, 0);
    else if (e != cudaSuccess && !ci->capture_broken) {
        snprintf(ci->capture_msg, sizeof ci->capture_msg, "cudaStreamEndCapture: %s",
                 cudaGetErrorString(e));
        g->failed = 1;
    }
    if (graph)
        cudaGraphDestroy(graph);
    if (e != cudaSuccess || ci->capture_broken || !g->exec) {
        (void)cudaGetLastError(); /* capture errors are not sticky */
        if (ci->capture_broken && ++g->breaks >= 3)
            g->failed = 1; /* it breaks every time: stop trying */
        if (e != cudaSuccess && !ci->capture_broken) {
            if (!g->failed)
                snprintf(ci->capture_msg, sizeof ci->capture_msg, "cudaGraphInstantiate: %s",
                         cudaGetErrorString(e));
            g->failed = 1;
        }
        g->exec = NULL;
        g->eager_runs++;
        ci->eager_bodies++;
        body(ctx); /* nothing of the capture ran: run it for real */
        return;
    }
    ci->capture_msg[0] = '\0';
    if (nllm__cuda_check(ci, cudaGraphLaunch(g->exec, ci->stream), "cudaGraphLaunch"))
        ci->graph_launches++;
}

static void cu_record_drop(nllm_backend_t *be, const void *owner)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    cudaSetDevice(ci->device);
    sync_all(ci); /* a launched graph may still run */
    for (int i = 0; i < NLLM_CUDA_GRAPHS; i++)
        if (ci->graphs[i].owner == owner)
            graph_forget(&ci->graphs[i]);
}

extern "C" int nllm_cuda_graph_stats(nllm_backend_t *be, uint64_t *launches, uint64_t *eager,
                                     char *why, size_t n)
{
    if (!be || !be->name || strncmp(be->name, "cuda:", 5) != 0)
        return NLLM_EDEVICE;
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (launches)
        *launches = ci->graph_launches;
    if (eager)
        *eager = ci->eager_bodies;
    if (why && n)
        snprintf(why, n, "%s", ci->graphs_on ? ci->capture_msg : "NLLM_CUDA_GRAPHS=0");
    return 0;
}

extern "C" void *nllm_cuda_backend_stream(nllm_backend_t *be)
{
    if (!be || !be->name || strncmp(be->name, "cuda:", 5) != 0)
        return NULL;
    return (void *)nllm__cuda_impl(be)->stream;
}

static void cu_destroy(nllm_backend_t *be)
{
    if (!be)
        return;
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (ci) {
        cudaSetDevice(ci->device);
        if (ci->on_aux) /* the fields of the main queue back in place */
            swap_queues(ci);
        sync_all(ci);
        for (int i = 0; i < NLLM_CUDA_GRAPHS; i++)
            graph_forget(&ci->graphs[i]);
        if (ci->blas)
            cublasDestroy(ci->blas);
        if (ci->alt_blas)
            cublasDestroy(ci->alt_blas);
        if (ci->alt_scratch)
            cudaFree(ci->alt_scratch);
        if (ci->alt_workspace)
            cudaFree(ci->alt_workspace);
        if (ci->alt_stream)
            cudaStreamDestroy(ci->alt_stream);
        if (ci->ev_fork)
            cudaEventDestroy(ci->ev_fork);
        if (ci->ev_join)
            cudaEventDestroy(ci->ev_join);
        if (ci->scratch)
            cudaFree(ci->scratch);
        if (ci->d_norm)
            cudaFree(ci->d_norm);
        if (ci->workspace)
            cudaFree(ci->workspace);
        if (ci->pshadow)
            cudaFree(ci->pshadow);
        for (int i = 0; i < 2; i++) {
            if (ci->stage[i].buf)
                cudaFreeHost(ci->stage[i].buf);
            if (ci->stage[i].ev)
                cudaEventDestroy(ci->stage[i].ev);
        }
        free(ci->blocks);
        if (ci->stream)
            cudaStreamDestroy(ci->stream);
        (void)cudaGetLastError();
        free(ci);
    }
    free(be);
}

/* ---- GEMM ----------------------------------------------------------------- */

/* The bf16 copy of X (rows x cols at stride ld) when X lies in the bound
 * parameter buffer and the copy is current: same offset, same stride. */
static const void *param_bf16(nllm__cuda_impl_t *ci, const float *X, int rows, int cols, int ld)
{
    if (!ci->pshadow_valid || X < ci->pbase ||
        X + (int64_t)(rows - 1) * ld + cols > ci->pbase + ci->pn)
        return NULL;
    return (const char *)ci->pshadow + 2 * (X - ci->pbase);
}

static void cu_params_bind(nllm_backend_t *be, const float *w, int64_t n)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    ci->pshadow_valid = 0;
    if (ci->pshadow && (!w || n != ci->pn)) {
        cudaSetDevice(ci->device);
        sync_all(ci);
        mem_remove(be, ci->pshadow);
        cudaFree(ci->pshadow);
        ci->pshadow = NULL;
    }
    ci->pbase = w;
    ci->pn = w ? n : 0;
}

/* Re-converts the bound parameters after a change (bf16 only; the copy is
 * allocated on first use, outside any capture). */
static void cu_params_changed(nllm_backend_t *be)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (be->precision != NLLM_PREC_BF16 || !ci->pbase || !nllm__cuda_enter(ci))
        return;
    if (!ci->pshadow) {
        if (ci->capturing) {
            capture_error(ci, "bf16 parameter copy", "allocation inside a capture");
            return;
        }
        size_t bytes = 2 * (size_t)ci->pn;
        if (!nllm__cuda_check(ci, cudaMalloc(&ci->pshadow, bytes),
                              "cudaMalloc (bf16 copy of the parameters)"))
            return;
        mem_add(be, ci->pshadow, bytes);
    }
    nllm__cuda_to_bf16(ci, ci->pbase, 1, ci->pn, ci->pn, ci->pshadow);
    ci->pshadow_valid = 1;
}

/* Row-major C(M,N) = alpha op(A) op(B) + beta C is, read column-major, the
 * product C^T(N,M) = op(B)^T op(A)^T: a row-major matrix with leading
 * dimension ld is the column-major view of its transpose with the same ld.
 * So cuBLAS gets (B, A) swapped with the same op flags and m = N, n = M. */
static void cu_gemm(nllm_backend_t *be, int transA, int transB, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc)
{
    nllm__cuda_impl_t *ci = nllm__cuda_impl(be);
    if (M <= 0 || N <= 0 || !nllm__cuda_enter(ci))
        return;
    if (K <= 0) {
        nllm__cuda_scale(ci, C, ldc, M, N, beta);
        return;
    }
    cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (be->precision == NLLM_PREC_FP32) {
        blas_check(ci,
                   cublasSgemm(ci->blas, opB, opA, N, M, K, &alpha, B, ldb, A, lda, &beta, C,
                               ldc),
                   "cublasSgemm");
        return;
    }
    if (be->precision == NLLM_PREC_TF32) {
        /* float32 in memory; the tensor cores round the operands to TF32
         * and accumulate in float32 */
        blas_check(ci,
                   cublasGemmEx(ci->blas, opB, opA, N, M, K, &alpha, B, CUDA_R_32F, ldb, A,
                                CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc,
                                CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx (tf32)");
        return;
    }
    /* bf16: both operands rounded to bfloat16 (parameters from the bound
     * buffer's copy, anything else converted here into scratch), float32
     * accumulation and output. CUBLAS_COMPUTE_32F_FAST_16BF on float32
     * operands is not this: cuBLAS may run it as TF32 (it did on an H200). */
    int arows = transA ? K : M, acols = transA ? M : K;
    int brows = transB ? N : K, bcols = transB ? K : N;
    const void *a16 = param_bf16(ci, A, arows, acols, lda);
    const void *b16 = param_bf16(ci, B, brows, bcols, ldb);
    size_t na = a16 ? 0 : ((size_t)arows * acols * 2 + 255) & ~(size_t)255;
    size_t nb = b16 ? 0 : (size_t)brows * bcols * 2;
    int lda16 = a16 ? lda : acols, ldb16 = b16 ? ldb : bcols;
    if (na + nb) {
        char *scr = (char *)nllm__cuda_scratch(ci, na + nb, "bf16 GEMM operands");
        if (!scr)
            return;
        if (!a16) {
            nllm__cuda_to_bf16(ci, A, arows, acols, lda, scr);
            a16 = scr;
        }
        if (!b16) {
            nllm__cuda_to_bf16(ci, B, brows, bcols, ldb, scr + na);
            b16 = scr + na;
        }
    }
    blas_check(ci,
               cublasGemmEx(ci->blas, opB, opA, N, M, K, &alpha, b16, CUDA_R_16BF, ldb16, a16,
                            CUDA_R_16BF, lda16, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (bf16)");
}

/* ---- device inventory ------------------------------------------------------ */

extern "C" int nllm_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" int nllm_cuda_available(void)
{
    return nllm_cuda_device_count() > 0;
}

extern "C" int nllm_cuda_device_info(int dev, char *name, size_t n, uint64_t *total_mem,
                                     uint64_t *free_mem)
{
    if (name && n)
        name[0] = '\0';
    if (dev < 0 || dev >= nllm_cuda_device_count())
        return NLLM_EDEVICE;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return NLLM_EDEVICE;
    }
    if (name && n)
        snprintf(name, n, "%s", prop.name);
    if (total_mem)
        *total_mem = (uint64_t)prop.totalGlobalMem;
    if (free_mem) {
        int prev = 0;
        size_t fr = 0, tot = 0;
        if (cudaGetDevice(&prev) != cudaSuccess || cudaSetDevice(dev) != cudaSuccess) {
            (void)cudaGetLastError();
            return NLLM_EDEVICE;
        }
        cudaError_t e = cudaMemGetInfo(&fr, &tot);
        cudaSetDevice(prev);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            return NLLM_EDEVICE;
        }
        *free_mem = (uint64_t)fr;
    }
    return 0;
}

extern "C" int nllm_cuda_device_reset(int dev, nllm_err_t *err)
{
    if (dev < 0 || dev >= nllm_cuda_device_count())
        return nllm_err_set(err, NLLM_EDEVICE, "device cuda:%d does not exist", dev);
    int prev = 0;
    cudaError_t e = cudaGetDevice(&prev);
    if (e == cudaSuccess)
        e = cudaSetDevice(dev);
    if (e == cudaSuccess)
        e = cudaDeviceReset();
    if (prev != dev)
        (void)cudaSetDevice(prev);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return nllm_err_set(err, NLLM_EDEVICE,
                            "device cuda:%d: the reset failed: %s (%s); check the GPU with "
                            "nvidia-smi, or restart nllmd",
                            dev, cudaGetErrorString(e), cudaGetErrorName(e));
    }
    return 0;
}

/* ---- construction ---------------------------------------------------------- */

extern "C" int nllm_cuda_backend_create(int device, nllm_backend_t **out, nllm_err_t *err)
{
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return nllm_err_set(err, NLLM_EDEVICE,
                            "device cuda:%d: no usable CUDA device: %s (%s); check the NVIDIA "
                            "driver (nvidia-smi) or use --device cpu",
                            device, cudaGetErrorString(e), cudaGetErrorName(e));
    }
    if (device < 0 || device >= count)
        return nllm_err_set(err, NLLM_EDEVICE,
                            "device cuda:%d does not exist: this machine has %d CUDA device%s%s",
                            device, count, count == 1 ? "" : "s",
                            count > 0 ? " (cuda:0 is the first)" : "; use --device cpu");

    nllm_backend_t *be = (nllm_backend_t *)calloc(1, sizeof *be);
    nllm__cuda_impl_t *ci = (nllm__cuda_impl_t *)calloc(1, sizeof *ci);
    if (!be || !ci) {
        free(be);
        free(ci);
        return nllm_err_set(err, NLLM_ENOMEM, "cuda:%d backend: out of host memory", device);
    }
    be->impl = ci;
    ci->be = be;
    ci->device = device;
    const char *ge = getenv("NLLM_CUDA_GRAPHS");
    ci->graphs_on = !(ge && strcmp(ge, "0") == 0);
    snprintf(ci->name, sizeof ci->name, "cuda:%d", device);
    be->name = ci->name;
    be->precisions = (1u << NLLM_PREC_FP32) | (1u << NLLM_PREC_TF32) | (1u << NLLM_PREC_BF16);
    be->precision = NLLM_PREC_FP32;
    snprintf(ci->devname, sizeof ci->devname, "CUDA device %d", device);

    cudaDeviceProp prop;
    if (nllm__cuda_check(ci, cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"))
        snprintf(ci->devname, sizeof ci->devname, "%.200s (compute capability %d.%d)", prop.name,
                 prop.major, prop.minor);
    if (!ci->err_code && nllm__cuda_check(ci, cudaSetDevice(device), "cudaSetDevice"))
        /* creates the primary context: fails on a busy/exclusive or broken device */
        nllm__cuda_check(ci, cudaFree(0), "creating the CUDA context (cudaFree(0))");
    if (!ci->err_code)
        nllm__cuda_check(ci, nllm__cuda_probe_kernels(), "loading the nllm kernels");
    if (!ci->err_code)
        nllm__cuda_check(ci, cudaStreamCreateWithFlags(&ci->stream, cudaStreamNonBlocking),
                         "cudaStreamCreateWithFlags");
    if (!ci->err_code && blas_check(ci, cublasCreate(&ci->blas), "cublasCreate")) {
        blas_check(ci, cublasSetStream(ci->blas, ci->stream), "cublasSetStream");
        /* Sgemm in full FP32; tf32 and bf16 (nllm_backend_set_precision)
         * name their compute type on every call instead */
        blas_check(ci, cublasSetMathMode(ci->blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
        /* the default, spelled out: reductions without atomics are deterministic */
        blas_check(ci, cublasSetAtomicsMode(ci->blas, CUBLAS_ATOMICS_NOT_ALLOWED),
                   "cublasSetAtomicsMode");
    }
    if (!ci->err_code)
        nllm__cuda_check(ci,
                         cudaMalloc((void **)&ci->d_norm, sizeof(double) * NLLM_CUDA_SQN_BLOCKS),
                         "cudaMalloc (norm scratch)");
    /* a workspace of our own: cuBLAS then allocates nothing inside a graph
     * capture, and picks the same kernels with and without graphs */
    if (!ci->err_code &&
        nllm__cuda_check(ci, cudaMalloc(&ci->workspace, NLLM_CUDA_WORKSPACE),
                         "cudaMalloc (cuBLAS workspace)"))
        blas_check(ci, cublasSetWorkspace(ci->blas, ci->workspace, NLLM_CUDA_WORKSPACE),
                   "cublasSetWorkspace");
    for (int i = 0; i < 2 && !ci->err_code; i++)
        nllm__cuda_check(ci, cudaEventCreateWithFlags(&ci->stage[i].ev, cudaEventDisableTiming),
                         "cudaEventCreateWithFlags (upload staging)");
    /* the second queue: its own stream, cuBLAS handle and workspace (two
     * queues must not share a workspace), with NLLM_CUDA_AUX=1 only: on an
     * H200 it cost 6% at batch 512 and 11% at batch 16 (bench/README.md) */
    const char *ae = getenv("NLLM_CUDA_AUX");
    int aux_on = ae && strcmp(ae, "1") == 0;
    if (aux_on && !ci->err_code)
        nllm__cuda_check(ci, cudaStreamCreateWithFlags(&ci->alt_stream, cudaStreamNonBlocking),
                         "cudaStreamCreateWithFlags (second queue)");
    if (aux_on && !ci->err_code)
        nllm__cuda_check(ci, cudaEventCreateWithFlags(&ci->ev_fork, cudaEventDisableTiming),
                         "cudaEventCreateWithFlags (fork)");
    if (aux_on && !ci->err_code)
        nllm__cuda_check(ci, cudaEventCreateWithFlags(&ci->ev_join, cudaEventDisableTiming),
                         "cudaEventCreateWithFlags (join)");
    if (aux_on && !ci->err_code &&
        blas_check(ci, cublasCreate(&ci->alt_blas), "cublasCreate (second queue)")) {
        blas_check(ci, cublasSetStream(ci->alt_blas, ci->alt_stream), "cublasSetStream");
        blas_check(ci, cublasSetMathMode(ci->alt_blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
        blas_check(ci, cublasSetAtomicsMode(ci->alt_blas, CUBLAS_ATOMICS_NOT_ALLOWED),
                   "cublasSetAtomicsMode");
        if (nllm__cuda_check(ci, cudaMalloc(&ci->alt_workspace, NLLM_CUDA_WORKSPACE),
                             "cudaMalloc (cuBLAS workspace, second queue)"))
            blas_check(ci,
                       cublasSetWorkspace(ci->alt_blas, ci->alt_workspace, NLLM_CUDA_WORKSPACE),
                       "cublasSetWorkspace");
    }
    if (!ci->err_code) {
        be->mem_bytes = be->mem_peak = sizeof(double) * NLLM_CUDA_SQN_BLOCKS +
                                       NLLM_CUDA_WORKSPACE * (aux_on ? 2 : 1);
    }
    if (ci->err_code) {
        int rc = nllm_err_set(err, ci->err_code, "%s", ci->err_msg);
        cu_destroy(be);
        return rc;
    }

    be->alloc = cu_alloc;
    be->free = cu_free;
    be->upload = cu_upload;
    be->download = cu_download;
    be->copy = cu_copy;
    be->zero = cu_zero;
    be->zero_rows = cu_zero_rows;
    be->sync = cu_sync;
    be->destroy = cu_destroy;
    be->gemm = cu_gemm;
    be->record = cu_record;
    be->record_drop = cu_record_drop;
    be->params_bind = cu_params_bind;
    be->params_changed = cu_params_changed;
    if (ci->alt_stream) {
        be->aux_begin = cu_aux_begin;
        be->aux_end = cu_aux_end;
        be->aux_join = cu_aux_join;
        be->wgrad_chunk = 8;
    }
    nllm__cuda_ops_install(be);
    *out = be;
    return 0;
}
