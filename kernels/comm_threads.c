/* comm_threads.c -- comm.h's threads comm: N ranks that are N threads of
 * one process (a job on several devices in nllmd), made together by
 * nllm_comm_threads_create.
 *
 * The ranks meet at barriers (a mutex, a condition variable and a
 * generation count). A collective with data is two of them: at the first
 * every rank has brought its buffer (or value), between the two each rank
 * reads what it needs, and at the second every rank is done with the
 * others' buffers, so no rank returns (and reuses its buffer) while
 * another still reads it. A sum gives rank r the slice [r*n/N, (r+1)*n/N)
 * of the buffer: it adds the ranks' slices in rank order into rank 0's
 * buffer, ((x0 + x1) + x2) + ..., as the MPI ring does (coll_mpi.c), and
 * copies the result into every other rank's buffer, so every rank gets
 * the same bits, and the ranks add in parallel.
 *
 * Every wait is bounded (the limits of collective.h); a rank that gives
 * up names the lowest rank that has not arrived and breaks the group: the
 * waiting ranks fail at once, and so does every later collective. So does
 * nllm_comm_abort (a rank failed on its own) and a rank's handle freed
 * while the others wait for it. Each rank arriving at a barrier states
 * which collective it is in; a rank in another one breaks the group (a
 * program error, named, instead of a silent mix-up).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"

typedef enum { OP_SUM_F = 1, OP_SUM_D, OP_ANY, OP_BCAST, OP_BARRIER, OP_SAME } op_t;

static const char *op_what(op_t op)
{
    switch (op) {
    case OP_SUM_F:
    case OP_SUM_D:
        return "in a sum over the ranks";
    case OP_ANY:
    case OP_SAME:
        return "in an agreement of the ranks";
    case OP_BCAST:
        return "in a broadcast";
    case OP_BARRIER:
        return "at a barrier";
    }
    return "in a collective";
}

/* What a rank brings to the running collective. */
typedef struct {
    void *buf;
    uint64_t v;
} slot_t;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    int n;
    int refs;               /* handles not freed yet */
    /* the barrier in progress */
    int arrived;
    uint64_t gen;
    unsigned char *in;      /* [n] arrived at it */
    unsigned char *gone;    /* [n] handle freed */
    op_t cur_op;            /* what the first arrival said it is: op, phase, */
    int cur_phase;          /* element count and root, which every other one */
    int64_t cur_n;          /* must match */
    int cur_root, first;
    slot_t *slot;           /* [n] */
    int broken;
    char why[NLLM_ERR_MSG_MAX - 64]; /* the first failure, without a rank prefix */
    double step_timeout, solo_timeout;
} group_t;

typedef struct {
    nllm_comm_t base;
    group_t *g;
    int rank;
    int training;
} thr_t;

static thr_t *T(const nllm_comm_t *c) { return (thr_t *)c->impl; }

static int fail_broken(const thr_t *t, nllm_err_t *err)
{
    return nllm_err_set(err, NLLM_EIO, "data-parallel rank %d of %d: %s", t->rank, t->g->n,
                        t->g->why);
}

/* Breaks the group (g->mu held): the first reason stays. */
static void break_group(group_t *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void break_group(group_t *g, const char *fmt, ...)
{
    if (!g->broken) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->why, sizeof g->why, fmt, ap);
        va_end(ap);
        g->broken = 1;
    }
    pthread_cond_broadcast(&g->cv);
}

/* Waits (g->mu held) until every rank has arrived at this barrier, which
 * is phase `phase` of collective op over n elements from root. */
static int meet(thr_t *t, op_t op, int phase, int64_t n, int root, nllm_err_t *err)
{
    group_t *g = t->g;
    if (g->broken)
        return fail_broken(t, err);
    if (g->arrived == 0) {
        g->cur_op = op;
        g->cur_phase = phase;
        g->cur_n = n;
        g->cur_root = root;
        g->first = t->rank;
    } else if (g->cur_op != op || g->cur_phase != phase || g->cur_n != n ||
               g->cur_root != root) {
        break_group(g, "rank %d is %s (%lld elements, root %d) while rank %d is %s (%lld "
                    "elements, root %d): the ranks called different collectives",
                    t->rank, op_what(op), (long long)n, root, g->first, op_what(g->cur_op),
                    (long long)g->cur_n, g->cur_root);
        return fail_broken(t, err);
    }
    g->in[t->rank] = 1;
    if (++g->arrived == g->n) {
        g->arrived = 0;
        memset(g->in, 0, (size_t)g->n);
        g->gen++;
        pthread_cond_broadcast(&g->cv);
        return 0;
    }
    const uint64_t gen = g->gen;
    const double limit = t->training ? g->step_timeout : g->solo_timeout;
    double waited = 0, last = nllm__comm_now();
    while (g->gen == gen) {
        if (g->broken)
            return fail_broken(t, err);
        for (int r = 0; r < g->n; r++)
            if (!g->in[r] && g->gone[r]) {
                break_group(g, "rank %d left the group (its thread ended) while the others "
                            "waited for it %s; the job stops here: resume it from its last "
                            "checkpoint",
                            r, op_what(op));
                return fail_broken(t, err);
            }
        /* short slices: a gap of more than 2 s between two of them is this
         * process stopped (SIGSTOP), which does not count */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 200000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        double now = nllm__comm_now(), dt = now - last;
        last = now;
        if (dt < 2.0)
            waited += dt;
        if (g->gen == gen && !g->broken && waited > limit) {
            int silent = 0;
            while (silent < g->n && g->in[silent])
                silent++;
            break_group(g, "no answer from rank %d for %.0f s %s: that rank died or hangs (or "
                        "waits itself for a rank that did); the job stops here: resume it "
                        "from its last checkpoint (NLLM_COLL_TIMEOUT sets how long ranks wait "
                        "while training)",
                        silent, limit, op_what(op));
            return fail_broken(t, err);
        }
    }
    return 0;
}

/* The first barrier of a collective: this rank's slot filled, every rank's
 * slot readable once it returns 0. */
static int enter(thr_t *t, op_t op, int64_t n, int root, void *buf, uint64_t v,
                 nllm_err_t *err)
{
    group_t *g = t->g;
    pthread_mutex_lock(&g->mu);
    g->slot[t->rank].buf = buf;
    g->slot[t->rank].v = v;
    int rc = meet(t, op, 0, n, root, err);
    pthread_mutex_unlock(&g->mu);
    return rc;
}

/* The second barrier: every rank is done with the others' slots. */
static int leave(thr_t *t, op_t op, int64_t n, int root, nllm_err_t *err)
{
    group_t *g = t->g;
    pthread_mutex_lock(&g->mu);
    int rc = meet(t, op, 1, n, root, err);
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static int check_broken(thr_t *t, nllm_err_t *err)
{
    pthread_mutex_lock(&t->g->mu);
    int rc = t->g->broken ? fail_broken(t, err) : 0;
    pthread_mutex_unlock(&t->g->mu);
    return rc;
}

static int th_rank(const nllm_comm_t *c) { return T(c)->rank; }
static int th_size(const nllm_comm_t *c) { return T(c)->g->n; }

/* This rank's slice [*lo, *hi) of n elements. */
static void slice(const thr_t *t, int64_t n, int64_t *lo, int64_t *hi)
{
    *lo = n * t->rank / t->g->n;
    *hi = n * (t->rank + 1) / t->g->n;
}

static int th_sum_f(nllm_comm_t *c, float *buf, int64_t n, nllm_err_t *err)
{
    thr_t *t = T(c);
    const int N = t->g->n;
    if (N == 1 || n <= 0)
        return check_broken(t, err);
    int rc = enter(t, OP_SUM_F, n, 0, buf, 0, err);
    if (rc < 0)
        return rc;
    int64_t lo, hi;
    slice(t, n, &lo, &hi);
    float *acc = t->g->slot[0].buf;
    for (int k = 1; k < N; k++) {
        const float *x = t->g->slot[k].buf;
        for (int64_t i = lo; i < hi; i++)
            acc[i] = acc[i] + x[i];
    }
    for (int k = 1; k < N && hi > lo; k++)
        memcpy((float *)t->g->slot[k].buf + lo, acc + lo, sizeof(float) * (size_t)(hi - lo));
    return leave(t, OP_SUM_F, n, 0, err);
}

static int th_sum_d(nllm_comm_t *c, double *buf, int64_t n, nllm_err_t *err)
{
    thr_t *t = T(c);
    const int N = t->g->n;
    if (N == 1 || n <= 0)
        return check_broken(t, err);
    int rc = enter(t, OP_SUM_D, n, 0, buf, 0, err);
    if (rc < 0)
        return rc;
    int64_t lo, hi;
    slice(t, n, &lo, &hi);
    double *acc = t->g->slot[0].buf;
    for (int k = 1; k < N; k++) {
        const double *x = t->g->slot[k].buf;
        for (int64_t i = lo; i < hi; i++)
            acc[i] = acc[i] + x[i];
    }
    for (int k = 1; k < N && hi > lo; k++)
        memcpy((double *)t->g->slot[k].buf + lo, acc + lo, sizeof(double) * (size_t)(hi - lo));
    return leave(t, OP_SUM_D, n, 0, err);
}

static int th_any(nllm_comm_t *c, int v, int *out, nllm_err_t *err)
{
    thr_t *t = T(c);
    *out = v != 0;
    if (t->g->n == 1)
        return check_broken(t, err);
    int rc = enter(t, OP_ANY, 1, 0, NULL, v != 0, err);
    if (rc < 0)
        return rc;
    int any = 0;
    for (int k = 0; k < t->g->n; k++)
        any |= t->g->slot[k].v != 0;
    *out = any;
    return leave(t, OP_ANY, 1, 0, err);
}

static int th_bcast(nllm_comm_t *c, void *buf, size_t bytes, int root, nllm_err_t *err)
{
    thr_t *t = T(c);
    if (root < 0 || root >= t->g->n)
        return nllm_err_set(err, NLLM_EINVAL, "broadcast from rank %d of %d", root, t->g->n);
    if (t->g->n == 1)
        return check_broken(t, err);
    int rc = enter(t, OP_BCAST, (int64_t)bytes, root, buf, 0, err);
    if (rc < 0)
        return rc;
    if (t->rank != root && bytes)
        memcpy(buf, t->g->slot[root].buf, bytes);
    return leave(t, OP_BCAST, (int64_t)bytes, root, err);
}

static int th_barrier(nllm_comm_t *c, nllm_err_t *err)
{
    thr_t *t = T(c);
    if (t->g->n == 1)
        return check_broken(t, err);
    return enter(t, OP_BARRIER, 0, 0, NULL, 0, err);
}

static int th_same(nllm_comm_t *c, uint64_t v, int *same, nllm_err_t *err)
{
    thr_t *t = T(c);
    *same = 1;
    if (t->g->n == 1)
        return check_broken(t, err);
    *same = 0;
    int rc = enter(t, OP_SAME, 1, 0, NULL, v, err);
    if (rc < 0)
        return rc;
    int eq = 1;
    for (int k = 1; k < t->g->n; k++)
        eq &= t->g->slot[k].v == t->g->slot[0].v;
    rc = leave(t, OP_SAME, 1, 0, err);
    *same = rc == 0 && eq;
    return rc;
}

static int th_broken(const nllm_comm_t *c)
{
    group_t *g = T(c)->g;
    pthread_mutex_lock(&g->mu);
    int b = g->broken;
    pthread_mutex_unlock(&g->mu);
    return b;
}

static void th_set_training(nllm_comm_t *c, int on) { T(c)->training = on != 0; }

static void th_abort(nllm_comm_t *c, const char *why)
{
    thr_t *t = T(c);
    group_t *g = t->g;
    pthread_mutex_lock(&g->mu);
    break_group(g, "rank %d failed: %s; the job stops here", t->rank, why);
    pthread_mutex_unlock(&g->mu);
}

static void th_free(nllm_comm_t *c)
{
    thr_t *t = T(c);
    group_t *g = t->g;
    pthread_mutex_lock(&g->mu);
    g->gone[t->rank] = 1;
    int last = --g->refs == 0;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    free(t);
    if (!last)
        return;
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g->in);
    free(g->gone);
    free(g->slot);
    free(g);
}

static const nllm_comm_ops_t threads_ops = {
    .kind = "threads",
    .rank = th_rank,
    .size = th_size,
    .allreduce_sum_f = th_sum_f,
    .allreduce_sum_d = th_sum_d,
    .any = th_any,
    .bcast = th_bcast,
    .barrier = th_barrier,
    .same_u64 = th_same,
    .broken = th_broken,
    .set_training = th_set_training,
    .abort = th_abort,
    .free = th_free,
};

int nllm_comm_threads_create(int n, nllm_comm_t **out, nllm_err_t *err)
{
    if (n < 1 || n > 4096)
        return nllm_err_set(err, NLLM_EINVAL, "threads comm: %d ranks (use 1 to 4096)", n);
    group_t *g = calloc(1, sizeof *g);
    if (!g)
        return nllm_err_set(err, NLLM_ENOMEM, "threads comm: out of memory");
    g->n = g->refs = n;
    g->in = calloc((size_t)n, 1);
    g->gone = calloc((size_t)n, 1);
    g->slot = calloc((size_t)n, sizeof *g->slot);
    thr_t **ts = calloc((size_t)n, sizeof *ts);
    int ok = g->in && g->gone && g->slot && ts;
    for (int r = 0; ok && r < n; r++)
        ok = (ts[r] = calloc(1, sizeof **ts)) != NULL;
    if (!ok) {
        for (int r = 0; ts && r < n; r++)
            free(ts[r]);
        free(ts);
        free(g->in);
        free(g->gone);
        free(g->slot);
        free(g);
        return nllm_err_set(err, NLLM_ENOMEM, "threads comm: out of memory");
    }
    nllm__comm_timeouts(&g->step_timeout, &g->solo_timeout);
    pthread_mutex_init(&g->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    for (int r = 0; r < n; r++) {
        ts[r]->base.ops = &threads_ops;
        ts[r]->base.impl = ts[r];
        ts[r]->g = g;
        ts[r]->rank = r;
        out[r] = &ts[r]->base;
    }
    free(ts);
    return 0;
}
