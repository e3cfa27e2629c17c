/* coll_mpi.c -- collective.h over MPI (built with -Dmpi).
 *
 * Sums are MPI_Reduce to rank 0 then MPI_Bcast, not MPI_Allreduce, whose
 * summation order may differ between ranks: every rank then holds rank 0's
 * bits. Large buffers go in chunks of at most CHUNK elements (MPI counts
 * are int). Before nllm_coll_init (daemon mode, tests) this is rank 0 of 1.
 */
#include "collective.h"

#include <mpi.h>
#include <stdlib.h>

static int inited, my_rank, world = 1;

#define CHUNK ((int64_t)1 << 28)

int nllm_coll_built(void) { return 1; }

int nllm_coll_init(int *argc, char ***argv, nllm_err_t *err)
{
    if (inited)
        return 0;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
        return nllm_err_set(err, NLLM_EIO, "MPI_Init_thread failed");
    if (provided < MPI_THREAD_SERIALIZED) {
        MPI_Finalize();
        return nllm_err_set(err, NLLM_EIO,
                            "this MPI offers thread level %d, nllm needs MPI_THREAD_SERIALIZED",
                            provided);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &my_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    inited = 1;
    return 0;
}

void nllm_coll_finalize(void)
{
    if (!inited)
        return;
    MPI_Finalize();
    inited = 0;
    my_rank = 0;
    world = 1;
}

int nllm_coll_rank(void) { return my_rank; }
int nllm_coll_size(void) { return world; }

static void reduce_bcast(void *buf, int64_t n, MPI_Datatype type, size_t elem)
{
    if (world <= 1)
        return;
    for (int64_t i = 0; i < n; i += CHUNK) {
        int cnt = (int)(n - i < CHUNK ? n - i : CHUNK);
        char *p = (char *)buf + (size_t)i * elem;
        if (my_rank == 0)
            MPI_Reduce(MPI_IN_PLACE, p, cnt, type, MPI_SUM, 0, MPI_COMM_WORLD);
        else
            MPI_Reduce(p, NULL, cnt, type, MPI_SUM, 0, MPI_COMM_WORLD);
        MPI_Bcast(p, cnt, type, 0, MPI_COMM_WORLD);
    }
}

void nllm_coll_allreduce_sum_f(float *buf, int64_t n)
{
    reduce_bcast(buf, n, MPI_FLOAT, sizeof(float));
}

void nllm_coll_allreduce_sum_d(double *buf, int64_t n)
{
    reduce_bcast(buf, n, MPI_DOUBLE, sizeof(double));
}

int nllm_coll_any(int v)
{
    if (world <= 1)
        return v != 0;
    int in = v != 0, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);
    return out;
}

void nllm_coll_bcast(void *buf, size_t bytes, int root)
{
    if (world <= 1)
        return;
    for (size_t i = 0; i < bytes; i += (size_t)CHUNK) {
        size_t cnt = bytes - i < (size_t)CHUNK ? bytes - i : (size_t)CHUNK;
        MPI_Bcast((char *)buf + i, (int)cnt, MPI_BYTE, root, MPI_COMM_WORLD);
    }
}

void nllm_coll_barrier(void)
{
    if (world > 1)
        MPI_Barrier(MPI_COMM_WORLD);
}

int nllm_coll_same_u64(uint64_t v)
{
    uint64_t v0 = v;
    nllm_coll_bcast(&v0, sizeof v0, 0);
    return !nllm_coll_any(v0 != v);
}
