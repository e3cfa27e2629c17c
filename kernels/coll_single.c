/* coll_single.c -- collective.h for a build without MPI: one rank, every
 * collective a no-op (the sum over one rank is the buffer itself). */
#include "collective.h"

int nllm_coll_built(void) { return 0; }

int nllm_coll_init(int *argc, char ***argv, nllm_err_t *err)
{
    (void)argc;
    (void)argv;
    (void)err;
    return 0;
}

void nllm_coll_finalize(void) {}
int nllm_coll_rank(void) { return 0; }
int nllm_coll_size(void) { return 1; }

void nllm_coll_allreduce_sum_f(float *buf, int64_t n)
{
    (void)buf;
    (void)n;
}

void nllm_coll_allreduce_sum_d(double *buf, int64_t n)
{
    (void)buf;
    (void)n;
}

int nllm_coll_any(int v) { return v != 0; }

void nllm_coll_bcast(void *buf, size_t bytes, int root)
{
    (void)buf;
    (void)bytes;
    (void)root;
}

void nllm_coll_barrier(void) {}

int nllm_coll_same_u64(uint64_t v)
{
    (void)v;
    return 1;
}
