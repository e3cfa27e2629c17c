/* comm.h -- a collectives object: the few collectives data parallelism
 * needs (sums, agreement, broadcast, barrier), as one handle per rank.
 *
 * Kinds: self (a world of 1, every collective a no-op), threads (N ranks =
 * N threads of one process, kernels/comm_threads.c), mpi (the process's
 * MPI world of collective.h, kernels/comm_mpi.c) and nccl (GPU ranks: the
 * gradient sums on the GPUs through NCCL, everything else through a host
 * comm it wraps, kernels/comm_nccl.c; libnccl.so.2 is loaded when the
 * first NCCL comm is made). Callers: daemon/jobs.c (a job on several
 * devices), daemon/nllmd.c (`nllmd run` under MPI), daemon/engine/trainer.c.
 *
 * Invariants: every rank calls the same collectives in the same order,
 * each from the one thread that owns its handle. The sums of a host comm
 * are in rank order ((x0 + x1) + x2) + ..., the same bits on every rank
 * and the same bits from every host kind. A collective that gets no answer
 * from a rank within the timeout (NLLM_COLL_TIMEOUT, collective.h) fails
 * with NLLM_EIO and a message naming that rank; so does every collective
 * of the others once a rank called nllm_comm_abort. From then on the comm
 * is broken: each collective fails at once. Where a function below takes
 * a comm, NULL is the self comm (rank 0 of 1).
 */
#ifndef NLLM_COMM_H
#define NLLM_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "nllm_err.h"

typedef struct nllm_comm nllm_comm_t;

/* What each kind implements; NULL entries fall back to the wrappers'
 * defaults (bind: host memory only, any backend for a world of 1; wait:
 * nothing to wait for; free: a static handle, nothing to free). */
typedef struct {
    const char *kind; /* "self", "threads", "mpi", "nccl" */
    int (*rank)(const nllm_comm_t *c);
    int (*size)(const nllm_comm_t *c);
    int (*allreduce_sum_f)(nllm_comm_t *c, float *buf, int64_t n, nllm_err_t *err);
    int (*allreduce_sum_d)(nllm_comm_t *c, double *buf, int64_t n, nllm_err_t *err);
    int (*any)(nllm_comm_t *c, int v, int *out, nllm_err_t *err);
    int (*bcast)(nllm_comm_t *c, void *buf, size_t bytes, int root, nllm_err_t *err);
    int (*barrier)(nllm_comm_t *c, nllm_err_t *err);
    int (*same_u64)(nllm_comm_t *c, uint64_t v, int *same, nllm_err_t *err);
    int (*broken)(const nllm_comm_t *c);
    void (*set_training)(nllm_comm_t *c, int on);
    void (*abort)(nllm_comm_t *c, const char *why);
    int (*bind)(nllm_comm_t *c, nllm_backend_t *be, nllm_err_t *err);
    int (*wait)(nllm_comm_t *c, nllm_err_t *err);
    void (*free)(nllm_comm_t *c);
} nllm_comm_ops_t;

struct nllm_comm {
    const nllm_comm_ops_t *ops;
    void *impl;
};

/* ---- the collectives (c NULL: the self comm) ---- */

const char *nllm_comm_kind(const nllm_comm_t *c);
int nllm_comm_rank(const nllm_comm_t *c);
int nllm_comm_size(const nllm_comm_t *c);
/* buf[0:n] = the sum over ranks, the same bits on every rank. buf is host
 * memory, except on an NCCL comm: memory of the backend it is bound to
 * (the model's gradients); there the sum is queued on that backend's
 * stream and nllm_comm_wait waits for it. */
int nllm_comm_allreduce_sum_f(nllm_comm_t *c, float *buf, int64_t n, nllm_err_t *err);
/* Host memory on every kind, in rank order. */
int nllm_comm_allreduce_sum_d(nllm_comm_t *c, double *buf, int64_t n, nllm_err_t *err);
/* *out = logical OR of v over ranks. */
int nllm_comm_any(nllm_comm_t *c, int v, int *out, nllm_err_t *err);
/* root's bytes (host memory) to every rank. */
int nllm_comm_bcast(nllm_comm_t *c, void *buf, size_t bytes, int root, nllm_err_t *err);
int nllm_comm_barrier(nllm_comm_t *c, nllm_err_t *err);
/* *same = 1 when v is the same on every rank. */
int nllm_comm_same_u64(nllm_comm_t *c, uint64_t v, int *same, nllm_err_t *err);
/* 1 once a collective has failed (each fails at once from then on). */
int nllm_comm_broken(const nllm_comm_t *c);
/* Training (1: the short timeout, NLLM_COLL_TIMEOUT_S) or not (0: the solo
 * timeout, where one rank may work alone for a while). This rank only. */
void nllm_comm_set_training(nllm_comm_t *c, int on);
/* This rank failed on its own (why: its error): breaks the comm, so that
 * the other ranks' collectives fail at once, naming this rank, instead of
 * waiting for it. MPI: the others learn it when the launcher ends them. */
void nllm_comm_abort(nllm_comm_t *c, const char *why);
/* The backend this rank trains on: host comms take a host backend (cpu)
 * only, an NCCL comm a CUDA backend on its GPU only; err says why not. */
int nllm_comm_bind(nllm_comm_t *c, nllm_backend_t *be, nllm_err_t *err);
/* Waits, bounded by the timeout, until the device sums queued so far are
 * done (NCCL; 0 at once on host comms). */
int nllm_comm_wait(nllm_comm_t *c, nllm_err_t *err);
/* Frees this rank's handle (NULL: nothing). A threads rank that frees its
 * handle leaves the group: a later collective of the others fails at once. */
void nllm_comm_free(nllm_comm_t *c);

/* ---- the kinds ---- */

/* The self comm: rank 0 of 1 (static; free does nothing). */
nllm_comm_t *nllm_comm_self(void);

/* N ranks that are N threads of this process: out[0 .. n-1], one handle
 * per rank, each to be used (and freed) by one thread. Sums are computed
 * in shared memory, each rank adding its slice of the buffer in rank order
 * and writing it to every rank's buffer: the same bits as the MPI ring.
 * Waits are bounded as in collective.h (NLLM_COLL_TIMEOUT). */
int nllm_comm_threads_create(int n, nllm_comm_t **out, nllm_err_t *err);

/* The process's MPI world (collective.h), after nllm_coll_init: its ring
 * collectives with their bounded waits and messages. Static; free does
 * nothing; abort only marks it (nllm_coll_finalize aborts the world). */
nllm_comm_t *nllm_comm_mpi(void);

/* 1 where built with NCCL support (meson -Dnccl). */
int nllm_comm_nccl_built(void);
/* Loads libnccl.so.2 (once; NLLM_NCCL_LIBRARY names another file):
 * 0, or NLLM_EINVAL/NLLM_ENOENT with the reason. */
int nllm_comm_nccl_load(nllm_err_t *err);
/* NCCL comms for GPUs devs[0 .. n-1] of this process (ncclCommInitAll,
 * called from one thread): out[r] sums rank r's gradients on GPU devs[r]
 * and passes every other collective to hosts[r], which it takes over
 * (freed with it, also on failure). */
int nllm_comm_nccl_create_all(int n, const int *devs, nllm_comm_t **hosts, nllm_comm_t **out,
                              nllm_err_t *err);
/* This process's NCCL comm over the ranks of host (MPI: one GPU per
 * process): rank 0's unique id goes to every rank through host, then
 * ncclCommInitRank on GPU dev. Every rank calls it. Takes over host. */
int nllm_comm_nccl_create_rank(nllm_comm_t *host, int dev, nllm_comm_t **out, nllm_err_t *err);

/* ---- for the kinds (kernels/comm*.c) ---- */

/* The wait limits of collective.h: while training NLLM_COLL_TIMEOUT_S or
 * NLLM_COLL_TIMEOUT, outside it the larger of that and the solo timeout. */
void nllm__comm_timeouts(double *step_s, double *solo_s);
double nllm__comm_now(void);

#endif /* NLLM_COMM_H */
