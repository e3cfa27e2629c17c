/* coll_mpi.c -- collective.h over MPI (built with -Dmpi).
 *
 * Every collective is point-to-point messages around the ring of ranks,
 * nonblocking, each wait on one known rank and bounded by the timeout, so
 * a rank that died or hangs is named instead of waited for forever (a
 * blocking MPI collective on shared memory waits forever for a dead rank
 * when the launcher does not end the others: srun without
 * --kill-on-bad-exit, mpirun --enable-recovery).
 *
 * Sums: rank 0 sends its buffer to rank 1, which adds its own (partial +
 * own) and sends on, ..., so rank N-1 holds ((x0 + x1) + x2) + ... + xN-1
 * (for two ranks x0 + x1, which is x1 + x0 bit for bit); then the result
 * goes around the ring from rank N-1 (N-1 -> 0 -> 1 -> ... -> N-2), so
 * every rank holds the same bits. Buffers go in chunks of CHUNK bytes, so
 * the ranks work on different chunks at once. A broadcast goes around the
 * ring from its root. Before nllm_coll_init (daemon mode, tests) this is
 * rank 0 of 1.
 */
#include "collective.h"
#include "comm.h"

#include <mpi.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int inited, my_rank, world = 1;
static MPI_Comm comm; /* a duplicate of MPI_COMM_WORLD, errors returned */
static double step_timeout = NLLM_COLL_TIMEOUT_S, solo_timeout = NLLM_COLL_SOLO_TIMEOUT_S;
static int training;
static int broken;
static nllm_err_t broken_err; /* the first failure, repeated by every later call */

#define CHUNK ((size_t)1 << 20)

/* message tags: one per kind of collective, so that ranks that got out of
 * step on an error path never take one kind's message for another's */
enum { TAG_SUM = 1, TAG_BCAST, TAG_ANY, TAG_BARRIER };

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
    MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm, &my_rank);
    MPI_Comm_size(comm, &world);
    /* NLLM_COLL_TIMEOUT as comm.c reads it for every comm kind */
    nllm__comm_timeouts(&step_timeout, &solo_timeout);
    inited = 1;
    return 0;
}

void nllm_coll_finalize(int rc)
{
    if (!inited)
        return;
    nllm_err_t err;
    if ((rc == 0 || rc == 75) && !broken) {
        training = 0;
        if (nllm_coll_barrier(&err) == 0) {
            MPI_Comm_free(&comm);
            MPI_Finalize();
            inited = 0;
            my_rank = 0;
            world = 1;
            return;
        }
        fprintf(stderr, "nllm: rank %d of %d: %s\n", my_rank, world, err.msg);
    }
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, rc ? rc : 1);
    exit(rc ? rc : 1); /* not reached */
}

int nllm_coll_rank(void) { return my_rank; }
int nllm_coll_size(void) { return world; }
void nllm_coll_set_training(int on) { training = on != 0; }
int nllm_coll_broken(void) { return broken; }

static int fail(nllm_err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(nllm_err_t *err, const char *fmt, ...)
{
    char msg[NLLM_ERR_MSG_MAX - 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    broken = 1;
    nllm_err_set(&broken_err, NLLM_EIO, "data-parallel rank %d of %d: %s", my_rank, world, msg);
    fprintf(stderr, "nllm: %s\n", broken_err.msg);
    return nllm_err_set(err, NLLM_EIO, "%s", broken_err.msg);
}

static int check_broken(nllm_err_t *err)
{
    return broken ? nllm_err_set(err, NLLM_EIO, "%s", broken_err.msg) : 0;
}

/* Waits for rq, a message to or from rank peer, for at most the timeout.
 * Polls, yielding the CPU more and more; a gap of more than a few seconds
 * between two polls is this process stopped (SIGSTOP, a Slurm suspend),
 * not the peer silent, and does not count. */
static int wait_peer(MPI_Request *rq, int peer, int sending, const char *what, nllm_err_t *err)
{
    double limit = training ? step_timeout : solo_timeout;
    double waited = 0, last = nllm__comm_now();
    long polls = 0;
    for (;;) {
        int done = 0;
        int rc = MPI_Test(rq, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            char es[MPI_MAX_ERROR_STRING];
            int n = 0;
            MPI_Error_string(rc, es, &n);
            return fail(err, "%s %s rank %d failed (%s): that rank died or cannot be reached; "
                        "the job stops here: resume it from its last checkpoint",
                        what, sending ? "to" : "from", peer, es);
        }
        if (done)
            return 0;
        double t = nllm__comm_now(), dt = t - last;
        last = t;
        if (dt < 2.0)
            waited += dt;
        if (waited > limit) {
            if (!sending)
                MPI_Cancel(rq);
            return fail(err, "no answer from rank %d for %.0f s %s: that rank died or hangs "
                        "(or waits itself for a rank that did); the job stops here: resume it "
                        "from its last checkpoint (NLLM_COLL_TIMEOUT sets how long ranks wait "
                        "while training)",
                        peer, limit, what);
        }
        if (++polls < 256)
            continue;
        if (waited < 1e-3) {
            sched_yield();
        } else {
            long ns = waited < 0.1 ? 20000 : 1000000;
            struct timespec ts = {0, ns};
            nanosleep(&ts, NULL);
        }
    }
}

static int post_recv(void *p, size_t bytes, int peer, int tag, const char *what,
                     nllm_err_t *err)
{
    MPI_Request rq;
    if (MPI_Irecv(p, (int)bytes, MPI_BYTE, peer, tag, comm, &rq) != MPI_SUCCESS)
        return fail(err, "%s: cannot receive from rank %d", what, peer);
    return wait_peer(&rq, peer, 0, what, err);
}

static int post_send(const void *p, size_t bytes, int peer, int tag, const char *what,
                     nllm_err_t *err)
{
    MPI_Request rq;
    if (MPI_Isend(p, (int)bytes, MPI_BYTE, peer, tag, comm, &rq) != MPI_SUCCESS)
        return fail(err, "%s: cannot send to rank %d", what, peer);
    return wait_peer(&rq, peer, 1, what, err);
}

/* buf's bytes from root to every rank around the ring (root, root+1, ...),
 * chunk by chunk. */
static int ring_bcast(void *buf, size_t bytes, int root, int tag, const char *what,
                      nllm_err_t *err)
{
    int prev = (my_rank + world - 1) % world, next = (my_rank + 1) % world;
    for (size_t i = 0; i < bytes; i += CHUNK) {
        size_t cnt = bytes - i < CHUNK ? bytes - i : CHUNK;
        char *p = (char *)buf + i;
        int rc;
        if (my_rank != root && (rc = post_recv(p, cnt, prev, tag, what, err)) < 0)
            return rc;
        if (next != root && (rc = post_send(p, cnt, next, tag, what, err)) < 0)
            return rc;
    }
    return 0;
}

typedef void (*add_fn)(void *acc, const void *in, size_t n); /* acc[i] = in[i] + acc[i] */

static void add_f(void *acc, const void *in, size_t n)
{
    float *a = acc;
    const float *b = in;
    for (size_t i = 0; i < n; i++)
        a[i] = b[i] + a[i];
}

static void add_d(void *acc, const void *in, size_t n)
{
    double *a = acc;
    const double *b = in;
    for (size_t i = 0; i < n; i++)
        a[i] = b[i] + a[i];
}

static void or_i(void *acc, const void *in, size_t n)
{
    int *a = acc;
    const int *b = in;
    for (size_t i = 0; i < n; i++)
        a[i] = b[i] || a[i];
}

/* buf[0:n] (elements of es bytes) = in rank order x0 + x1 + ... on every
 * rank: up the ring to rank N-1, then around from it. */
static int ring_sum(void *buf, int64_t n, size_t es, add_fn add, int tag, const char *what,
                    nllm_err_t *err)
{
    int rc = check_broken(err);
    if (rc < 0 || world <= 1 || n <= 0)
        return rc;
    const int last = world - 1;
    size_t bytes = (size_t)n * es, chunk = CHUNK / es * es;
    void *tmp = my_rank > 0 ? malloc(bytes < chunk ? bytes : chunk) : NULL;
    if (my_rank > 0 && !tmp)
        return fail(err, "%s: out of memory", what);
    for (size_t i = 0; i < bytes && rc == 0; i += chunk) {
        size_t cnt = bytes - i < chunk ? bytes - i : chunk;
        char *p = (char *)buf + i;
        if (my_rank > 0 && (rc = post_recv(tmp, cnt, my_rank - 1, tag, what, err)) == 0)
            add(p, tmp, cnt / es);
        if (rc == 0 && my_rank < last)
            rc = post_send(p, cnt, my_rank + 1, tag, what, err);
    }
    free(tmp);
    return rc < 0 ? rc : ring_bcast(buf, bytes, last, tag, what, err);
}

int nllm_coll_allreduce_sum_f(float *buf, int64_t n, nllm_err_t *err)
{
    return ring_sum(buf, n, sizeof(float), add_f, TAG_SUM, "in a sum over the ranks", err);
}

int nllm_coll_allreduce_sum_d(double *buf, int64_t n, nllm_err_t *err)
{
    return ring_sum(buf, n, sizeof(double), add_d, TAG_SUM, "in a sum over the ranks", err);
}

int nllm_coll_any(int v, int *out, nllm_err_t *err)
{
    int x = v != 0;
    int rc = ring_sum(&x, 1, sizeof x, or_i, TAG_ANY, "in an agreement of the ranks", err);
    *out = x;
    return rc;
}

int nllm_coll_bcast(void *buf, size_t bytes, int root, nllm_err_t *err)
{
    int rc = check_broken(err);
    if (rc < 0 || world <= 1)
        return rc;
    return ring_bcast(buf, bytes, root, TAG_BCAST, "in a broadcast", err);
}

int nllm_coll_barrier(nllm_err_t *err)
{
    int x = 0;
    return ring_sum(&x, 1, sizeof x, or_i, TAG_BARRIER, "at a barrier", err);
}

int nllm_coll_same_u64(uint64_t v, int *same, nllm_err_t *err)
{
    uint64_t v0 = v;
    int differ = 1;
    int rc = nllm_coll_bcast(&v0, sizeof v0, 0, err);
    if (rc == 0)
        rc = nllm_coll_any(v0 != v, &differ, err);
    *same = rc == 0 && !differ;
    return rc;
}
