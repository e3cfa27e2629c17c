/* comm_mpi.c -- comm.h's MPI comm: the process's MPI world of collective.h
 * (coll_mpi.c's ring, or coll_single.c's one rank in a build without MPI)
 * as a comm object, so that the trainer takes it like any other kind. The
 * ring keeps its bounded waits and its messages; there is one world per
 * process, so this comm is static and free does nothing. An abort only
 * marks the world broken here: nllm_coll_finalize (nllmd.c) then ends
 * every rank with MPI_Abort.
 */
#include <stdio.h>

#include "collective.h"
#include "comm.h"

static int aborted;

static int mpi_rank(const nllm_comm_t *c)
{
    (void)c;
    return nllm_coll_rank();
}

static int mpi_size(const nllm_comm_t *c)
{
    (void)c;
    return nllm_coll_size();
}

static int mpi_sum_f(nllm_comm_t *c, float *buf, int64_t n, nllm_err_t *err)
{
    (void)c;
    return nllm_coll_allreduce_sum_f(buf, n, err);
}

static int mpi_sum_d(nllm_comm_t *c, double *buf, int64_t n, nllm_err_t *err)
{
    (void)c;
    return nllm_coll_allreduce_sum_d(buf, n, err);
}

static int mpi_any(nllm_comm_t *c, int v, int *out, nllm_err_t *err)
{
    (void)c;
    return nllm_coll_any(v, out, err);
}

static int mpi_bcast(nllm_comm_t *c, void *buf, size_t bytes, int root, nllm_err_t *err)
{
    (void)c;
    return nllm_coll_bcast(buf, bytes, root, err);
}

static int mpi_barrier(nllm_comm_t *c, nllm_err_t *err)
{
    (void)c;
    return nllm_coll_barrier(err);
}

static int mpi_same(nllm_comm_t *c, uint64_t v, int *same, nllm_err_t *err)
{
    (void)c;
    return nllm_coll_same_u64(v, same, err);
}

static int mpi_broken(const nllm_comm_t *c)
{
    (void)c;
    return nllm_coll_broken() || aborted;
}

static void mpi_set_training(nllm_comm_t *c, int on)
{
    (void)c;
    nllm_coll_set_training(on);
}

static void mpi_abort(nllm_comm_t *c, const char *why)
{
    (void)c;
    (void)why; /* the rank's own error is reported by its caller */
    aborted = 1;
}

static const nllm_comm_ops_t mpi_ops = {
    .kind = "mpi",
    .rank = mpi_rank,
    .size = mpi_size,
    .allreduce_sum_f = mpi_sum_f,
    .allreduce_sum_d = mpi_sum_d,
    .any = mpi_any,
    .bcast = mpi_bcast,
    .barrier = mpi_barrier,
    .same_u64 = mpi_same,
    .broken = mpi_broken,
    .set_training = mpi_set_training,
    .abort = mpi_abort,
};

static nllm_comm_t mpi_comm = {&mpi_ops, NULL};

nllm_comm_t *nllm_comm_mpi(void) { return &mpi_comm; }
