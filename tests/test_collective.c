/* test_collective.c -- kernels/comm.h: the threads comm (ranks = threads of
 * this process) against a sequential reference, and its failures; the self
 * and MPI (a process not under a launcher: rank 0 of 1) comms.
 *
 * For 1 to 4 ranks: float and double sums of several lengths (shorter than
 * the ranks, odd, a few MiB) equal, bit for bit on every rank, the sum in
 * rank order ((x0 + x1) + x2) + ... computed alone; broadcasts from every
 * root, any, same_u64, barriers. With NLLM_COLL_TIMEOUT=1: a rank that
 * stops calling makes the others fail within the timeout with an error
 * naming it, after which every collective fails at once, its own too; a
 * rank that aborts, or frees its handle, fails the others at once, naming
 * it; ranks in different collectives fail, naming both. Each thread
 * records what it saw; the main thread checks. Suite: engine.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "testutil.h"

#define MAXR 4
static const int64_t LENS[] = {1, 3, 7, 1000, 1 << 20};
#define NLENS ((int)(sizeof LENS / sizeof LENS[0]))

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A value of rank r at index i that makes summation order visible. */
static float xf(int r, int64_t i)
{
    uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(r * 40503u + 17u);
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    float m = (float)(h & 0xffffff) / (float)0x1000000; /* [0, 1) */
    int e = (int)((h >> 24) % 24) - 12;
    return (h & 1 ? -1.0f : 1.0f) * m * (float)(1 << (e + 12)) / 4096.0f;
}

static double xd(int r, int64_t i) { return (double)xf(r, i) * (1.0 + 1e-9 * r); }

typedef struct {
    nllm_comm_t *c;
    int n;             /* ranks */
    int bad;           /* checks that failed on this thread */
    char what[256];    /* the first of them */
} ctx_t;

static void bad(ctx_t *x, const char *what)
{
    if (!x->bad++)
        snprintf(x->what, sizeof x->what, "rank %d: %s", nllm_comm_rank(x->c), what);
}

static void *sums_main(void *arg)
{
    ctx_t *x = arg;
    const int r = nllm_comm_rank(x->c), N = x->n;
    nllm_err_t err;
    if (nllm_comm_size(x->c) != N)
        bad(x, "size");
    for (int li = 0; li < NLENS; li++) {
        int64_t n = LENS[li];
        float *f = malloc(sizeof(float) * (size_t)n), *rf = malloc(sizeof(float) * (size_t)n);
        double *d = malloc(sizeof(double) * (size_t)n), *rd = malloc(sizeof(double) * (size_t)n);
        for (int64_t i = 0; i < n; i++) {
            f[i] = xf(r, i);
            d[i] = xd(r, i);
            /* the reference: in rank order */
            float sf = xf(0, i);
            double sd = xd(0, i);
            for (int k = 1; k < N; k++) {
                sf = sf + xf(k, i);
                sd = sd + xd(k, i);
            }
            rf[i] = sf;
            rd[i] = sd;
        }
        if (nllm_comm_allreduce_sum_f(x->c, f, n, &err) < 0)
            bad(x, err.msg);
        else if (memcmp(f, rf, sizeof(float) * (size_t)n) != 0)
            bad(x, "float sum differs from the rank-order reference");
        if (nllm_comm_allreduce_sum_d(x->c, d, n, &err) < 0)
            bad(x, err.msg);
        else if (memcmp(d, rd, sizeof(double) * (size_t)n) != 0)
            bad(x, "double sum differs from the rank-order reference");
        free(f);
        free(rf);
        free(d);
        free(rd);
    }
    for (int root = 0; root < N; root++) {
        char buf[100];
        memset(buf, r == root ? 'a' + root : '?', sizeof buf);
        if (nllm_comm_bcast(x->c, buf, sizeof buf, root, &err) < 0)
            bad(x, err.msg);
        for (size_t i = 0; i < sizeof buf; i++)
            if (buf[i] != 'a' + root) {
                bad(x, "broadcast");
                break;
            }
    }
    int out = -1;
    if (nllm_comm_any(x->c, 0, &out, &err) < 0 || out != 0)
        bad(x, "any of all 0 is not 0");
    if (nllm_comm_any(x->c, r == N - 1, &out, &err) < 0 || out != 1)
        bad(x, "any with the last rank 1 is not 1");
    int same = -1;
    if (nllm_comm_same_u64(x->c, 42, &same, &err) < 0 || same != 1)
        bad(x, "same_u64 of equal values");
    if (nllm_comm_same_u64(x->c, r == N - 1 ? 7 : 42, &same, &err) < 0 || same != (N == 1))
        bad(x, "same_u64 of different values");
    for (int i = 0; i < 3; i++)
        if (nllm_comm_barrier(x->c, &err) < 0)
            bad(x, err.msg);
    if (nllm_comm_broken(x->c))
        bad(x, "broken after a clean run");
    nllm_comm_free(x->c);
    return NULL;
}

static void test_sums_in_rank_order(void)
{
    for (int N = 1; N <= MAXR; N++) {
        nllm_comm_t *cs[MAXR];
        nllm_err_t err;
        CHECK(nllm_comm_threads_create(N, cs, &err) == 0, "create %d: %s", N, err.msg);
        ctx_t x[MAXR];
        pthread_t th[MAXR];
        for (int r = 0; r < N; r++) {
            x[r] = (ctx_t){cs[r], N, 0, ""};
            CHECK(nllm_comm_rank(cs[r]) == r, "handle %d is rank %d", r, nllm_comm_rank(cs[r]));
            CHECK(!strcmp(nllm_comm_kind(cs[r]), "threads"), "kind %s", nllm_comm_kind(cs[r]));
            pthread_create(&th[r], NULL, sums_main, &x[r]);
        }
        for (int r = 0; r < N; r++) {
            pthread_join(th[r], NULL);
            CHECK(x[r].bad == 0, "%d ranks: %d failures, first: %s", N, x[r].bad, x[r].what);
        }
    }
}

/* ---- failures -------------------------------------------------------------- */

typedef struct {
    nllm_comm_t *c;
    int role;          /* what this rank does */
    int rc1, rc2;      /* the first and the next collective */
    double t1, t2;     /* how long each took */
    char msg1[NLLM_ERR_MSG_MAX], msg2[NLLM_ERR_MSG_MAX];
} fctx_t;

enum { SUMS, SILENT, ABORTS, LEAVES, BCASTS, LATE };

static void *fail_main(void *arg)
{
    fctx_t *x = arg;
    nllm_err_t err;
    float buf[64] = {0};
    nllm_comm_set_training(x->c, 1);
    double t0 = now_s();
    switch (x->role) {
    case SILENT: /* stops calling for longer than the timeout */
        usleep(2500 * 1000);
        t0 = now_s();
        x->rc1 = nllm_comm_barrier(x->c, &err);
        break;
    case ABORTS:
        usleep(100 * 1000);
        nllm_comm_abort(x->c, "its device failed: boom");
        x->rc1 = 0;
        break;
    case LEAVES:
        usleep(100 * 1000);
        nllm_comm_free(x->c);
        x->c = NULL;
        return NULL;
    case BCASTS:
        x->rc1 = nllm_comm_bcast(x->c, buf, sizeof buf, 0, &err);
        break;
    default:
        x->rc1 = nllm_comm_allreduce_sum_f(x->c, buf, 64, &err);
    }
    x->t1 = now_s() - t0;
    snprintf(x->msg1, sizeof x->msg1, "%s", x->rc1 < 0 ? err.msg : "");
    t0 = now_s();
    x->rc2 = nllm_comm_any(x->c, 1, &(int){0}, &err);
    x->t2 = now_s() - t0;
    snprintf(x->msg2, sizeof x->msg2, "%s", x->rc2 < 0 ? err.msg : "");
    nllm_comm_free(x->c);
    return NULL;
}

static void run_roles(int n, const int *roles, fctx_t *x)
{
    nllm_comm_t *cs[MAXR];
    nllm_err_t err;
    CHECK(nllm_comm_threads_create(n, cs, &err) == 0, "create: %s", err.msg);
    pthread_t th[MAXR];
    for (int r = 0; r < n; r++) {
        memset(&x[r], 0, sizeof x[r]);
        x[r].c = cs[r];
        x[r].role = roles[r];
        pthread_create(&th[r], NULL, fail_main, &x[r]);
    }
    for (int r = 0; r < n; r++)
        pthread_join(th[r], NULL);
}

/* NLLM_COLL_TIMEOUT=1 (main): ranks 0 and 1 wait for rank 2 in a sum */
static void test_silent_rank(void)
{
    fctx_t x[3];
    run_roles(3, (int[]){SUMS, SUMS, SILENT}, x);
    for (int r = 0; r < 2; r++) {
        CHECK(x[r].rc1 == NLLM_EIO, "rank %d: the sum fails (%d)", r, x[r].rc1);
        CHECK(x[r].t1 > 0.9 && x[r].t1 < 2.4, "rank %d: within the 1 s timeout (%.2f s)", r,
              x[r].t1);
        CHECK(strstr(x[r].msg1, "no answer from rank 2") &&
                  strstr(x[r].msg1, "in a sum over the ranks") &&
                  strstr(x[r].msg1, "NLLM_COLL_TIMEOUT"),
              "rank %d: the error names rank 2 and the sum: %s", r, x[r].msg1);
        char pre[64];
        snprintf(pre, sizeof pre, "data-parallel rank %d of 3: ", r);
        CHECK(!strncmp(x[r].msg1, pre, strlen(pre)), "rank %d: the error starts with its own "
              "rank: %s", r, x[r].msg1);
        CHECK(x[r].rc2 == NLLM_EIO && x[r].t2 < 0.1 && strstr(x[r].msg2, "no answer from rank 2"),
              "rank %d: the next collective fails at once (%.3f s): %s", r, x[r].t2, x[r].msg2);
    }
    CHECK(x[2].rc1 == NLLM_EIO && x[2].t1 < 0.1 && strstr(x[2].msg1, "no answer from rank 2"),
          "the silent rank's own late collective fails at once (%.3f s): %s", x[2].t1, x[2].msg1);
}

static void test_abort(void)
{
    fctx_t x[3];
    run_roles(3, (int[]){SUMS, ABORTS, SUMS}, x);
    for (int r = 0; r < 3; r += 2) {
        CHECK(x[r].rc1 == NLLM_EIO && x[r].t1 < 0.9 &&
                  strstr(x[r].msg1, "rank 1 failed: its device failed: boom"),
              "rank %d fails at once (%.2f s) naming rank 1 and its error: %s", r, x[r].t1,
              x[r].msg1);
        CHECK(x[r].rc2 == NLLM_EIO && x[r].t2 < 0.1, "rank %d: every later collective fails",
              r);
    }
    CHECK(x[1].rc2 == NLLM_EIO, "the aborted rank's own collective fails too");
}

static void test_leaves(void)
{
    fctx_t x[2];
    run_roles(2, (int[]){SUMS, LEAVES}, x);
    CHECK(x[0].rc1 == NLLM_EIO && x[0].t1 < 0.9 && strstr(x[0].msg1, "rank 1 left the group"),
          "a rank whose handle is freed fails the other at once (%.2f s): %s", x[0].t1,
          x[0].msg1);
}

static void test_mismatch(void)
{
    fctx_t x[2];
    run_roles(2, (int[]){SUMS, BCASTS}, x);
    for (int r = 0; r < 2; r++)
        CHECK(x[r].rc1 == NLLM_EIO && strstr(x[r].msg1, "different collectives") &&
                  strstr(x[r].msg1, "in a broadcast") && strstr(x[r].msg1, "in a sum"),
              "rank %d: a sum meeting a broadcast fails, naming both: %s", r, x[r].msg1);
}

/* ---- self and MPI (no launcher: rank 0 of 1) -------------------------------- */

static void test_self_and_mpi(void)
{
    nllm_comm_t *cs[2] = {NULL, nllm_comm_self()};
    nllm_err_t err;
    for (int i = 0; i < 3; i++) {
        nllm_comm_t *c = i < 2 ? cs[i] : nllm_comm_mpi();
        float f[3] = {1, 2, 3};
        double d[2] = {4, 5};
        int out = 0, same = 0;
        char b[4] = "abc";
        CHECK(nllm_comm_rank(c) == 0 && nllm_comm_size(c) == 1, "%s: rank 0 of 1",
              nllm_comm_kind(c));
        CHECK(nllm_comm_allreduce_sum_f(c, f, 3, &err) == 0 && f[2] == 3, "%s: sum_f",
              nllm_comm_kind(c));
        CHECK(nllm_comm_allreduce_sum_d(c, d, 2, &err) == 0 && d[1] == 5, "%s: sum_d",
              nllm_comm_kind(c));
        CHECK(nllm_comm_any(c, 5, &out, &err) == 0 && out == 1, "%s: any", nllm_comm_kind(c));
        CHECK(nllm_comm_same_u64(c, 9, &same, &err) == 0 && same, "%s: same",
              nllm_comm_kind(c));
        CHECK(nllm_comm_bcast(c, b, 4, 0, &err) == 0 && !strcmp(b, "abc"), "%s: bcast",
              nllm_comm_kind(c));
        CHECK(nllm_comm_barrier(c, &err) == 0 && nllm_comm_wait(c, &err) == 0, "%s: barrier",
              nllm_comm_kind(c));
        CHECK(!nllm_comm_broken(c), "%s: not broken", nllm_comm_kind(c));
        nllm_comm_free(c);
    }
    CHECK(!strcmp(nllm_comm_kind(NULL), "self") && !strcmp(nllm_comm_kind(nllm_comm_mpi()), "mpi"),
          "kinds");
    nllm_comm_t *one;
    CHECK(nllm_comm_threads_create(0, &one, &err) == NLLM_EINVAL, "0 ranks refused");
}

int main(void)
{
    /* read once per process: the failure tests wait 1 s while training; the
     * clean runs do not train (the 30 min solo limit) */
    setenv("NLLM_COLL_TIMEOUT", "1", 1);
    RUN(test_sums_in_rank_order);
    RUN(test_self_and_mpi);
    RUN(test_silent_rank);
    RUN(test_abort);
    RUN(test_leaves);
    RUN(test_mismatch);
    return TEST_REPORT();
}
