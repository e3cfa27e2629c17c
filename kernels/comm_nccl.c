/* comm_nccl.c -- comm.h's NCCL comm (built with -Dnccl): GPU ranks, one
 * GPU each. The gradient sum (allreduce_sum_f, on the memory of the CUDA
 * backend the rank is bound to) is an ncclAllReduce queued on that
 * backend's stream, so it joins the step's CUDA graph like any op; every
 * other collective (host memory: figures, flags, weights at start) goes
 * through the host comm the NCCL comm wraps: the threads comm of the job's
 * ranks in nllmd, or the MPI world under `nllmd run`. NCCL's sums are in
 * its own order (ring or tree), the same bits on every rank.
 *
 * libnccl.so.2 is dlopen'd when the first NCCL comm is made, never at
 * start: builds and CPU runs work without it. Bounded waits: nllm_comm_wait
 * polls the stream and ncclCommGetAsyncError; a sum that does not finish
 * within the timeout (a rank died or hangs) aborts the NCCL communicator
 * (ncclCommAbort ends its kernels), breaks the host comm too, and fails
 * naming what the host comm knows. Callers: daemon/jobs.c, daemon/nllmd.c
 * (through comm.h).
 */
#include <dlfcn.h>
#include <nccl.h>
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "cuda/cuda_backend.h"

/* ---- libnccl, loaded on demand ---------------------------------------------- */

static struct {
    void *lib;
    __typeof__(&ncclGetVersion) GetVersion;
    __typeof__(&ncclGetUniqueId) GetUniqueId;
    __typeof__(&ncclCommInitRank) CommInitRank;
    __typeof__(&ncclCommInitAll) CommInitAll;
    __typeof__(&ncclCommDestroy) CommDestroy;
    __typeof__(&ncclCommAbort) CommAbort;
    __typeof__(&ncclCommGetAsyncError) CommGetAsyncError;
    __typeof__(&ncclGetErrorString) GetErrorString;
    __typeof__(&ncclAllReduce) AllReduce;
    int version;
    int code;         /* 0 loaded, else why not (msg) */
    char msg[512];
} nccl;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void load(void)
{
    const char *name = getenv("NLLM_NCCL_LIBRARY");
    if (!name || !*name)
        name = "libnccl.so.2";
    nccl.lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!nccl.lib) {
        const char *e = dlerror();
        nccl.code = NLLM_ENOENT;
        snprintf(nccl.msg, sizeof nccl.msg,
                 "data parallelism on GPUs needs NCCL, but %s cannot be loaded (%s): install "
                 "libnccl2 (or set NLLM_NCCL_LIBRARY to the library's path)",
                 name, e ? e : "unknown error");
        return;
    }
#define SYM(f)                                                                                 \
    do {                                                                                       \
        *(void **)&nccl.f = dlsym(nccl.lib, "nccl" #f);                                        \
        if (!nccl.f) {                                                                         \
            nccl.code = NLLM_EINVAL;                                                           \
            snprintf(nccl.msg, sizeof nccl.msg, "%s has no nccl%s: use NCCL 2.9 or newer",     \
                     name, #f);                                                                \
            return;                                                                            \
        }                                                                                      \
    } while (0)
    SYM(GetVersion);
    SYM(GetUniqueId);
    SYM(CommInitRank);
    SYM(CommInitAll);
    SYM(CommDestroy);
    SYM(CommAbort);
    SYM(CommGetAsyncError);
    SYM(GetErrorString);
    SYM(AllReduce);
#undef SYM
    if (nccl.GetVersion(&nccl.version) != ncclSuccess)
        nccl.version = 0;
}

int nllm_comm_nccl_built(void) { return 1; }

int nllm_comm_nccl_load(nllm_err_t *err)
{
    pthread_once(&load_once, load);
    return nccl.code ? nllm_err_set(err, nccl.code, "%s", nccl.msg) : 0;
}

/* ---- the comm ------------------------------------------------------------------ */

typedef struct {
    nllm_comm_t base;
    nllm_comm_t *host; /* owned */
    ncclComm_t nc;
    int dev;
    nllm_backend_t *be; /* bound: whose stream the sums go on */
    int broken;
    char why[NLLM_ERR_MSG_MAX - 64];
    int training;
    double step_timeout, solo_timeout;
} nc_t;

static nc_t *N(const nllm_comm_t *c) { return (nc_t *)c->impl; }

static int nc_rank(const nllm_comm_t *c) { return nllm_comm_rank(N(c)->host); }
static int nc_size(const nllm_comm_t *c) { return nllm_comm_size(N(c)->host); }

static int fail_broken(const nc_t *n, nllm_err_t *err)
{
    return nllm_err_set(err, NLLM_EIO, "data-parallel rank %d of %d: %s",
                        nllm_comm_rank(n->host), nllm_comm_size(n->host), n->why);
}

/* Breaks this comm and its host comm (the others fail at once). */
static int fail(nc_t *n, nllm_err_t *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(nc_t *n, nllm_err_t *err, const char *fmt, ...)
{
    if (!n->broken) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(n->why, sizeof n->why, fmt, ap);
        va_end(ap);
        n->broken = 1;
        nllm_comm_abort(n->host, n->why);
    }
    return fail_broken(n, err);
}

static int nc_sum_f(nllm_comm_t *c, float *buf, int64_t cnt, nllm_err_t *err)
{
    nc_t *n = N(c);
    if (n->broken)
        return fail_broken(n, err);
    if (!n->be)
        return nllm_err_set(err, NLLM_ESTATE, "NCCL sum before the rank's backend is bound");
    if (cnt <= 0)
        return 0;
    cudaStream_t s = (cudaStream_t)nllm_cuda_backend_stream(n->be);
    ncclResult_t r = nccl.AllReduce(buf, buf, (size_t)cnt, ncclFloat, ncclSum, n->nc, s);
    if (r != ncclSuccess && r != ncclInProgress)
        return fail(n, err, "NCCL all-reduce of %lld floats on cuda:%d failed: %s",
                    (long long)cnt, n->dev, nccl.GetErrorString(r));
    return 0;
}

/* host collectives: through the host comm, after this comm's own failure */
static int nc_sum_d(nllm_comm_t *c, double *buf, int64_t cnt, nllm_err_t *err)
{
    nc_t *n = N(c);
    return n->broken ? fail_broken(n, err) : nllm_comm_allreduce_sum_d(n->host, buf, cnt, err);
}

static int nc_any(nllm_comm_t *c, int v, int *out, nllm_err_t *err)
{
    nc_t *n = N(c);
    *out = v != 0;
    return n->broken ? fail_broken(n, err) : nllm_comm_any(n->host, v, out, err);
}

static int nc_bcast(nllm_comm_t *c, void *buf, size_t bytes, int root, nllm_err_t *err)
{
    nc_t *n = N(c);
    return n->broken ? fail_broken(n, err) : nllm_comm_bcast(n->host, buf, bytes, root, err);
}

static int nc_barrier(nllm_comm_t *c, nllm_err_t *err)
{
    nc_t *n = N(c);
    return n->broken ? fail_broken(n, err) : nllm_comm_barrier(n->host, err);
}

static int nc_same(nllm_comm_t *c, uint64_t v, int *same, nllm_err_t *err)
{
    nc_t *n = N(c);
    *same = 0;
    return n->broken ? fail_broken(n, err) : nllm_comm_same_u64(n->host, v, same, err);
}

static int nc_broken(const nllm_comm_t *c)
{
    return N(c)->broken || nllm_comm_broken(N(c)->host);
}

static void nc_set_training(nllm_comm_t *c, int on)
{
    N(c)->training = on != 0;
    nllm_comm_set_training(N(c)->host, on);
}

static void nc_abort(nllm_comm_t *c, const char *why)
{
    nllm_comm_abort(N(c)->host, why);
}

static int nc_bind(nllm_comm_t *c, nllm_backend_t *be, nllm_err_t *err)
{
    nc_t *n = N(c);
    char want[32];
    snprintf(want, sizeof want, "cuda:%d", n->dev);
    if (!be->name || strcmp(be->name, want) != 0)
        return nllm_err_set(err, NLLM_EINVAL,
                            "data-parallel rank %d sums its gradients with NCCL on %s, but its "
                            "backend is %s",
                            nllm_comm_rank(n->host), want, be->name ? be->name : "?");
    n->be = be;
    return 0;
}

/* Polls the bound stream until the queued work (the step with its sum) is
 * done, NCCL reports an error, or the timeout passes. Errors of the step
 * itself are left to the backend's next sync (a device fault is its). */
static int nc_wait(nllm_comm_t *c, nllm_err_t *err)
{
    nc_t *n = N(c);
    if (n->broken)
        return fail_broken(n, err);
    if (!n->be)
        return 0;
    cudaStream_t s = (cudaStream_t)nllm_cuda_backend_stream(n->be);
    const double limit = n->training ? n->step_timeout : n->solo_timeout;
    double waited = 0, last = nllm__comm_now();
    long polls = 0;
    for (;;) {
        cudaError_t q = cudaStreamQuery(s);
        if (q != cudaErrorNotReady)
            return 0; /* done, or a CUDA error the backend's sync reports */
        ncclResult_t ae = ncclSuccess;
        if (nccl.CommGetAsyncError(n->nc, &ae) == ncclSuccess && ae != ncclSuccess &&
            ae != ncclInProgress) {
            nccl.CommAbort(n->nc);
            n->nc = NULL;
            return fail(n, err, "NCCL on cuda:%d failed: %s (a rank's GPU or its link failed); "
                        "the job stops here: resume it from its last checkpoint",
                        n->dev, nccl.GetErrorString(ae));
        }
        double now = nllm__comm_now(), dt = now - last;
        last = now;
        if (dt < 2.0)
            waited += dt;
        if (waited > limit) {
            /* the host comm may know which rank failed */
            char host_why[NLLM_ERR_MSG_MAX] = "";
            if (nllm_comm_broken(n->host)) {
                nllm_err_t e;
                int same;
                if (nllm_comm_same_u64(n->host, 0, &same, &e) < 0)
                    snprintf(host_why, sizeof host_why, " (%s)", e.msg);
            }
            nccl.CommAbort(n->nc);
            n->nc = NULL;
            return fail(n, err, "the GPUs' gradient sum (NCCL) on cuda:%d did not finish within "
                        "%.0f s: a rank died or hangs%s; the job stops here: resume it from its "
                        "last checkpoint (NLLM_COLL_TIMEOUT sets how long ranks wait while "
                        "training)",
                        n->dev, limit, host_why);
        }
        if (++polls > 64) {
            struct timespec ts = {0, waited < 0.1 ? 20000 : 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

static void nc_free(nllm_comm_t *c)
{
    nc_t *n = N(c);
    if (n->nc) {
        if (n->broken || nllm_comm_broken(n->host))
            nccl.CommAbort(n->nc);
        else
            nccl.CommDestroy(n->nc);
    }
    nllm_comm_free(n->host);
    free(n);
}

static const nllm_comm_ops_t nccl_ops = {
    .kind = "nccl",
    .rank = nc_rank,
    .size = nc_size,
    .allreduce_sum_f = nc_sum_f,
    .allreduce_sum_d = nc_sum_d,
    .any = nc_any,
    .bcast = nc_bcast,
    .barrier = nc_barrier,
    .same_u64 = nc_same,
    .broken = nc_broken,
    .set_training = nc_set_training,
    .abort = nc_abort,
    .bind = nc_bind,
    .wait = nc_wait,
    .free = nc_free,
};

static nc_t *nc_new(nllm_comm_t *host, int dev)
{
    nc_t *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->base.ops = &nccl_ops;
    n->base.impl = n;
    n->host = host;
    n->dev = dev;
    nllm__comm_timeouts(&n->step_timeout, &n->solo_timeout);
    return n;
}

int nllm_comm_nccl_create_all(int cnt, const int *devs, nllm_comm_t **hosts, nllm_comm_t **out,
                              nllm_err_t *err)
{
    int rc = nllm_comm_nccl_load(err);
    nc_t **ns = rc == 0 ? calloc((size_t)cnt, sizeof *ns) : NULL;
    ncclComm_t *ncs = rc == 0 ? calloc((size_t)cnt, sizeof *ncs) : NULL;
    if (rc == 0 && (!ns || !ncs))
        rc = nllm_err_set(err, NLLM_ENOMEM, "NCCL comm: out of memory");
    for (int r = 0; rc == 0 && r < cnt; r++)
        if (!(ns[r] = nc_new(hosts[r], devs[r])))
            rc = nllm_err_set(err, NLLM_ENOMEM, "NCCL comm: out of memory");
    if (rc == 0) {
        ncclResult_t res = nccl.CommInitAll(ncs, cnt, devs);
        if (res != ncclSuccess)
            rc = nllm_err_set(err, NLLM_EDEVICE,
                              "NCCL could not join the job's %d GPUs (ncclCommInitAll): %s", cnt,
                              nccl.GetErrorString(res));
    }
    for (int r = 0; r < cnt; r++) {
        if (rc == 0) {
            ns[r]->nc = ncs[r];
            out[r] = &ns[r]->base;
            continue;
        }
        out[r] = NULL;
        if (ns && ns[r])
            free(ns[r]);
        nllm_comm_free(hosts[r]);
    }
    free(ns);
    free(ncs);
    return rc;
}

int nllm_comm_nccl_create_rank(nllm_comm_t *host, int dev, nllm_comm_t **out, nllm_err_t *err)
{
    *out = NULL;
    /* every rank takes part in the broadcast, also one that failed to load */
    int rc = nllm_comm_nccl_load(err), bad = rc < 0, any = 0;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (!bad && nllm_comm_rank(host) == 0 && nccl.GetUniqueId(&id) != ncclSuccess) {
        bad = 1;
        rc = nllm_err_set(err, NLLM_EDEVICE, "NCCL: ncclGetUniqueId failed");
    }
    nllm_err_t e2;
    if (nllm_comm_any(host, bad, &any, &e2) < 0) {
        nllm_comm_free(host);
        return nllm_err_set(err, e2.code, "%s", e2.msg);
    }
    if (any) {
        nllm_comm_free(host);
        return rc < 0 ? rc
                      : nllm_err_set(err, NLLM_EDEVICE, "NCCL could not be set up on another "
                                                        "rank (see its log)");
    }
    if ((rc = nllm_comm_bcast(host, &id, sizeof id, 0, err)) < 0) {
        nllm_comm_free(host);
        return rc;
    }
    nc_t *n = nc_new(host, dev);
    if (!n) {
        nllm_comm_free(host);
        return nllm_err_set(err, NLLM_ENOMEM, "NCCL comm: out of memory");
    }
    if (cudaSetDevice(dev) != cudaSuccess) {
        nc_free(&n->base);
        return nllm_err_set(err, NLLM_EDEVICE, "NCCL: cannot use cuda:%d", dev);
    }
    ncclResult_t res =
        nccl.CommInitRank(&n->nc, nllm_comm_size(host), id, nllm_comm_rank(host));
    if (res != ncclSuccess) {
        n->nc = NULL;
        nc_free(&n->base);
        return nllm_err_set(err, NLLM_EDEVICE, "NCCL: ncclCommInitRank on cuda:%d failed: %s",
                            dev, nccl.GetErrorString(res));
    }
    *out = &n->base;
    return 0;
}
