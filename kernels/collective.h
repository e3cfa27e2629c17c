/* collective.h -- the few collectives data parallelism needs, over MPI ranks
 * (kernels/coll_mpi.c, built with -Dmpi) or a single rank (coll_single.c).
 *
 * Invariants: every rank calls the same collectives in the same order;
 * allreduce_sum gives bit-identical results on every rank, summed in rank
 * order ((x0 + x1) + x2) + ... (coll_mpi.c). A collective that gets no
 * answer from the rank it waits on within the timeout (a rank that died or
 * hangs) fails with NLLM_EIO and a message naming that rank; from then on
 * the collectives are broken: each fails at once. Until nllm_coll_init
 * succeeds under a launcher, the process is rank 0 of 1 and every
 * collective is a no-op. Callers: daemon/nllmd.c (`nllmd run`: init,
 * finalize, its one broadcast of rank 0's decision) and kernels/comm_mpi.c,
 * the MPI comm of comm.h through which the trainer uses the world.
 */
#ifndef NLLM_COLLECTIVE_H
#define NLLM_COLLECTIVE_H

#include <stddef.h>
#include <stdint.h>

#include "nllm_err.h"

/* How long a rank waits for another in a collective while training (the
 * ranks run in step: a longer wait means a rank died or hangs), in
 * seconds; the environment variable NLLM_COLL_TIMEOUT overrides it. */
#define NLLM_COLL_TIMEOUT_S 30.0
/* How long it waits outside training, where one rank may work alone for a
 * while (rank 0 reading the catalog, tokenizing, loading a checkpoint,
 * writing the last one): NLLM_COLL_SOLO_TIMEOUT_S or NLLM_COLL_TIMEOUT,
 * whichever is larger. */
#define NLLM_COLL_SOLO_TIMEOUT_S 1800.0

/* 1 where built with MPI. */
int nllm_coll_built(void);
/* Joins the MPI world (threads: serialized calls from any one thread at a
 * time). A no-op without MPI. */
int nllm_coll_init(int *argc, char ***argv, nllm_err_t *err);
/* Leaves the MPI world with this rank's exit code rc. When rc is 0 or 75
 * (the ranks ended together) and the collectives work: a barrier (solo
 * timeout), then MPI_Finalize, and it returns. Otherwise (this rank
 * failed, or a collective broke) it does not return: MPI_Abort(rc or 1)
 * makes the launcher end the other ranks rather than leave them waiting
 * for this one. */
void nllm_coll_finalize(int rc);
int nllm_coll_rank(void);
int nllm_coll_size(void);
/* Training (1: the short timeout) or not (0: the solo timeout). */
void nllm_coll_set_training(int on);
/* 1 once a collective has failed (the others fail at once from then on). */
int nllm_coll_broken(void);

/* buf[0:n] = the sum over ranks, the same bits on every rank. */
int nllm_coll_allreduce_sum_f(float *buf, int64_t n, nllm_err_t *err);
int nllm_coll_allreduce_sum_d(double *buf, int64_t n, nllm_err_t *err);
/* *out = logical OR of v over ranks. */
int nllm_coll_any(int v, int *out, nllm_err_t *err);
/* root's bytes to every rank. */
int nllm_coll_bcast(void *buf, size_t bytes, int root, nllm_err_t *err);
int nllm_coll_barrier(nllm_err_t *err);
/* *same = 1 when v is the same on every rank. */
int nllm_coll_same_u64(uint64_t v, int *same, nllm_err_t *err);

#endif /* NLLM_COLLECTIVE_H */
