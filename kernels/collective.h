/* collective.h -- the few collectives data parallelism needs, over MPI ranks
 * (kernels/coll_mpi.c, built with -Dmpi) or a single rank (coll_single.c).
 *
 * Invariants: every rank calls the same collectives in the same order;
 * allreduce_sum gives bit-identical results on every rank (reduce to rank
 * 0, then broadcast). Until nllm_coll_init succeeds under a launcher, the
 * process is rank 0 of 1 and every collective is a no-op. Callers:
 * daemon/nllmd.c (`nllmd run`), daemon/engine/trainer.c, kernels/model.c's
 * hook.
 */
#ifndef NLLM_COLLECTIVE_H
#define NLLM_COLLECTIVE_H

#include <stddef.h>
#include <stdint.h>

#include "nllm_err.h"

/* 1 where built with MPI. */
int nllm_coll_built(void);
/* Joins the MPI world (threads: serialized calls from any one thread at a
 * time). A no-op without MPI. */
int nllm_coll_init(int *argc, char ***argv, nllm_err_t *err);
void nllm_coll_finalize(void);
int nllm_coll_rank(void);
int nllm_coll_size(void);

/* buf[0:n] = the sum over ranks, the same bits on every rank. */
void nllm_coll_allreduce_sum_f(float *buf, int64_t n);
void nllm_coll_allreduce_sum_d(double *buf, int64_t n);
/* Logical OR of v over ranks. */
int nllm_coll_any(int v);
/* root's bytes to every rank. */
void nllm_coll_bcast(void *buf, size_t bytes, int root);
void nllm_coll_barrier(void);
/* 1 when v is the same on every rank. */
int nllm_coll_same_u64(uint64_t v);

#endif /* NLLM_COLLECTIVE_H */
