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

void nllm_coll_finalize(int rc) { (void)rc; }
int nllm_coll_rank(void) { return 0; }
int nllm_coll_size(void) { return 1; }
void nllm_coll_set_training(int on) { (void)on; }
int nllm_coll_broken(void) { return 0; }

int nllm_coll_allreduce_sum_f(float *buf, int64_t n, nllm_err_t *err)
{
    (void)buf;
    (void)n;
    (void)err;
    return 0;
}

int nllm_coll_allreduce_sum_d(double *buf, int64_t n, nllm_err_t *err)
{
    (void)buf;
    (void)n;
    (void)err;
    return 0;
}

int nllm_coll_any(int v, int *out, nllm_err_t *err)
{
    (void)err;
    *out = v != 0;
    return 0;
}

int nllm_coll_bcast(void *buf, size_t bytes, int root, nllm_err_t *err)
{
    (void)buf;
    (void)bytes;
    (void)root;
    (void)err;
    return 0;
}

int nllm_coll_barrier(nllm_err_t *err)
{
    (void)err;
    return 0;
}

int nllm_coll_same_u64(uint64_t v, int *same, nllm_err_t *err)
{
    (void)v;
    (void)err;
    *same = 1;
    return 0;
}
