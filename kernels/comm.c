/* comm.c -- comm.h's wrappers (a NULL comm is the self comm, a kind's NULL
 * entry its default), the self comm, the wait limits every kind shares,
 * and the NCCL entry points of a build without NCCL (comm_nccl.c replaces
 * them with -Dnccl).
 */
#include "comm.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "collective.h"

/* ---- the self comm: rank 0 of 1 ------------------------------------------- */

static int self_rank(const nllm_comm_t *c)
{
    (void)c;
    return 0;
}

static int self_size(const nllm_comm_t *c)
{
    (void)c;
    return 1;
}

static int self_sum_f(nllm_comm_t *c, float *buf, int64_t n, nllm_err_t *err)
{
    (void)c, (void)buf, (void)n, (void)err;
    return 0;
}

static int self_sum_d(nllm_comm_t *c, double *buf, int64_t n, nllm_err_t *err)
{
    (void)c, (void)buf, (void)n, (void)err;
    return 0;
}

static int self_any(nllm_comm_t *c, int v, int *out, nllm_err_t *err)
{
    (void)c, (void)err;
    *out = v != 0;
    return 0;
}

static int self_bcast(nllm_comm_t *c, void *buf, size_t bytes, int root, nllm_err_t *err)
{
    (void)c, (void)buf, (void)bytes, (void)root, (void)err;
    return 0;
}

static int self_barrier(nllm_comm_t *c, nllm_err_t *err)
{
    (void)c, (void)err;
    return 0;
}

static int self_same(nllm_comm_t *c, uint64_t v, int *same, nllm_err_t *err)
{
    (void)c, (void)v, (void)err;
    *same = 1;
    return 0;
}

static int self_broken(const nllm_comm_t *c)
{
    (void)c;
    return 0;
}

static void self_set_training(nllm_comm_t *c, int on)
{
    (void)c, (void)on;
}

static void self_abort(nllm_comm_t *c, const char *why)
{
    (void)c, (void)why;
}

static const nllm_comm_ops_t self_ops = {
    .kind = "self",
    .rank = self_rank,
    .size = self_size,
    .allreduce_sum_f = self_sum_f,
    .allreduce_sum_d = self_sum_d,
    .any = self_any,
    .bcast = self_bcast,
    .barrier = self_barrier,
    .same_u64 = self_same,
    .broken = self_broken,
    .set_training = self_set_training,
    .abort = self_abort,
};

static nllm_comm_t self_comm = {&self_ops, NULL};

nllm_comm_t *nllm_comm_self(void) { return &self_comm; }

/* ---- wrappers ------------------------------------------------------------- */

static nllm_comm_t *or_self(nllm_comm_t *c) { return c ? c : &self_comm; }

const char *nllm_comm_kind(const nllm_comm_t *c) { return c ? c->ops->kind : "self"; }
int nllm_comm_rank(const nllm_comm_t *c) { return c ? c->ops->rank(c) : 0; }
int nllm_comm_size(const nllm_comm_t *c) { return c ? c->ops->size(c) : 1; }

int nllm_comm_allreduce_sum_f(nllm_comm_t *c, float *buf, int64_t n, nllm_err_t *err)
{
    c = or_self(c);
    return c->ops->allreduce_sum_f(c, buf, n, err);
}

int nllm_comm_allreduce_sum_d(nllm_comm_t *c, double *buf, int64_t n, nllm_err_t *err)
{
    c = or_self(c);
    return c->ops->allreduce_sum_d(c, buf, n, err);
}

int nllm_comm_any(nllm_comm_t *c, int v, int *out, nllm_err_t *err)
{
    c = or_self(c);
    return c->ops->any(c, v, out, err);
}

int nllm_comm_bcast(nllm_comm_t *c, void *buf, size_t bytes, int root, nllm_err_t *err)
{
    c = or_self(c);
    return c->ops->bcast(c, buf, bytes, root, err);
}

int nllm_comm_barrier(nllm_comm_t *c, nllm_err_t *err)
{
    c = or_self(c);
    return c->ops->barrier(c, err);
}

int nllm_comm_same_u64(nllm_comm_t *c, uint64_t v, int *same, nllm_err_t *err)
{
    c = or_self(c);
    return c->ops->same_u64(c, v, same, err);
}

int nllm_comm_broken(const nllm_comm_t *c) { return c ? c->ops->broken(c) : 0; }

void nllm_comm_set_training(nllm_comm_t *c, int on)
{
    if (c)
        c->ops->set_training(c, on);
}

void nllm_comm_abort(nllm_comm_t *c, const char *why)
{
    if (c)
        c->ops->abort(c, why ? why : "it failed");
}

int nllm_comm_bind(nllm_comm_t *c, nllm_backend_t *be, nllm_err_t *err)
{
    c = or_self(c);
    if (c->ops->bind)
        return c->ops->bind(c, be, err);
    if (strcmp(be->name, "cpu") == 0 || c->ops->size(c) <= 1)
        return 0;
    return nllm_err_set(err, NLLM_EINVAL,
                        "data parallelism over %d ranks (%s) runs on --device cpu only: GPUs "
                        "sum their gradients with NCCL, %s; device %s was asked for",
                        c->ops->size(c), c->ops->kind,
                        nllm_comm_nccl_built() ? "which this comm does not use"
                                               : "and this nllm was built without it (meson "
                                                 "-Dnccl=enabled, with CUDA)",
                        be->name);
}

int nllm_comm_wait(nllm_comm_t *c, nllm_err_t *err)
{
    return c && c->ops->wait ? c->ops->wait(c, err) : 0;
}

void nllm_comm_free(nllm_comm_t *c)
{
    if (c && c->ops->free)
        c->ops->free(c);
}

/* ---- shared by the kinds -------------------------------------------------- */

double nllm__comm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double step_timeout = NLLM_COLL_TIMEOUT_S, solo_timeout = NLLM_COLL_SOLO_TIMEOUT_S;
static pthread_once_t timeouts_once = PTHREAD_ONCE_INIT;

/* NLLM_COLL_TIMEOUT, read once per process as coll_mpi.c reads it. */
static void read_timeouts(void)
{
    const char *v = getenv("NLLM_COLL_TIMEOUT");
    if (!v || !*v)
        return;
    char *end;
    double t = strtod(v, &end);
    if (end == v || *end || !(t > 0) || t > 1e7) {
        fprintf(stderr, "nllm: NLLM_COLL_TIMEOUT=\"%s\" ignored: give seconds > 0; waiting "
                "%.0f s\n", v, step_timeout);
        return;
    }
    step_timeout = t;
    if (solo_timeout < t)
        solo_timeout = t;
}

void nllm__comm_timeouts(double *step_s, double *solo_s)
{
    pthread_once(&timeouts_once, read_timeouts);
    *step_s = step_timeout;
    *solo_s = solo_timeout;
}

/* ---- NCCL in a build without it ------------------------------------------- */

#ifndef NLLM_HAVE_NCCL
int nllm_comm_nccl_built(void) { return 0; }

int nllm_comm_nccl_load(nllm_err_t *err)
{
    return nllm_err_set(err, NLLM_EINVAL,
                        "this nllm was built without NCCL: data parallelism on GPUs needs a "
                        "build with -Dcuda=enabled -Dnccl=enabled (nccl.h from the CUDA "
                        "toolkit or libnccl-dev)");
}

int nllm_comm_nccl_create_all(int n, const int *devs, nllm_comm_t **hosts, nllm_comm_t **out,
                              nllm_err_t *err)
{
    (void)devs;
    for (int r = 0; r < n; r++) {
        nllm_comm_free(hosts[r]);
        out[r] = NULL;
    }
    return nllm_comm_nccl_load(err);
}

int nllm_comm_nccl_create_rank(nllm_comm_t *host, int dev, nllm_comm_t **out, nllm_err_t *err)
{
    (void)dev;
    nllm_comm_free(host);
    *out = NULL;
    return nllm_comm_nccl_load(err);
}
#endif
