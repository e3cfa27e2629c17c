/* cpu_pool.c -- fork-join pool; see cpu_pool.h. One job at a time: the
 * caller runs range 0 itself and waits for the workers' ranges. */
#include "cpu_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#define NLLM_POOL_MIN_WORK 65536

/* How long a thread that waits (a worker for the next job, the caller for
 * the workers) spins before it sleeps on the condition variable: a sleep
 * and wake-up costs tens of microseconds, about what a whole per-time-step
 * op takes at small batches, while the next job usually comes within a few
 * microseconds. The spin is a time (a pause takes 10 to 150 cycles,
 * depending on the CPU) that adapts per waiter: a wait that ends while
 * spinning doubles it, up to NLLM_POOL_SPIN_MAX_NS; one that runs out
 * quarters it, down to NLLM_POOL_SPIN_MIN_NS. On an oversubscribed machine
 * (other jobs, other processes) the thread waited for is often off its core,
 * spins run out, and the pool soon sleeps at once instead of taking the
 * core from whoever would use it. */
#define NLLM_POOL_SPIN_MAX_NS 50000
#define NLLM_POOL_SPIN_MIN_NS 2000

/* Handoff: the caller writes fn, arg and n, then bumps gen (seq_cst); a
 * worker that sees the new gen reads them. Who sleeps says so first
 * (sleepers, caller_waits, seq_cst) and re-checks the condition under mu;
 * who changes the condition checks that flag afterwards and, when set,
 * signals under mu. By seq_cst one of the two sees the other's write, so
 * no wake-up is lost. */
struct nllm_pool {
    int threads; /* including the caller */
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t cv_job, cv_done;
    _Atomic uint64_t generation;
    _Atomic int pending;
    _Atomic int sleepers;     /* workers in (or about to enter) cv_job */
    _Atomic int caller_waits; /* the caller in (or about to enter) cv_done */
    _Atomic int quit;
    int64_t caller_spin_ns; /* the caller's spin (one caller at a time) */
    nllm_pool_fn fn;
    void *arg;
    int64_t n;
};

static void range_of(int64_t n, int parts, int k, int64_t *b, int64_t *e)
{
    *b = n * k / parts;
    *e = n * (k + 1) / parts;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A spin that ended: doubled when the wait ended while spinning, else
 * quartered, within [NLLM_POOL_SPIN_MIN_NS, NLLM_POOL_SPIN_MAX_NS]. */
static void adapt_spin(int64_t *budget, int done)
{
    int64_t b = done ? *budget * 2 : *budget / 4;
    *budget = b > NLLM_POOL_SPIN_MAX_NS ? NLLM_POOL_SPIN_MAX_NS
              : b < NLLM_POOL_SPIN_MIN_NS ? NLLM_POOL_SPIN_MIN_NS
                                          : b;
}

/* Spins until the condition done holds or *budget ns are over (then the
 * caller re-checks done and sleeps), and adapts *budget. */
#define SPIN_UNTIL(done, budget)                                           \
    do {                                                                   \
        int64_t t_end_ = 0;                                                \
        unsigned i_ = 0;                                                   \
        int d_;                                                            \
        while (!(d_ = (done) != 0)) {                                      \
            if ((i_++ & 63) == 0) {                                        \
                int64_t t_ = now_ns();                                     \
                if (!t_end_)                                               \
                    t_end_ = t_ + *(budget);                               \
                else if (t_ > t_end_)                                      \
                    break;                                                 \
            }                                                              \
            nllm_cpu_relax();                                              \
        }                                                                  \
        adapt_spin(budget, d_);                                            \
    } while (0)

typedef struct {
    nllm_pool_t *pool;
    int index;
} worker_arg_t;

/* Waits until the generation differs from seen (or quit); returns it. */
static uint64_t wait_job(nllm_pool_t *pool, uint64_t seen, int64_t *spin_ns)
{
    uint64_t g;
    SPIN_UNTIL((g = atomic_load(&pool->generation)) != seen || atomic_load(&pool->quit),
               spin_ns);
    if (g != seen || atomic_load(&pool->quit))
        return g;
    pthread_mutex_lock(&pool->mu);
    atomic_fetch_add(&pool->sleepers, 1);
    while ((g = atomic_load(&pool->generation)) == seen && !atomic_load(&pool->quit))
        pthread_cond_wait(&pool->cv_job, &pool->mu);
    atomic_fetch_sub(&pool->sleepers, 1);
    pthread_mutex_unlock(&pool->mu);
    return g;
}

static void *worker_main(void *p)
{
    worker_arg_t wa = *(worker_arg_t *)p;
    free(p);
    nllm_pool_t *pool = wa.pool;
    uint64_t seen = 0;
    int64_t spin_ns = NLLM_POOL_SPIN_MAX_NS;
    for (;;) {
        seen = wait_job(pool, seen, &spin_ns);
        if (atomic_load(&pool->quit))
            break;
        int64_t b, e;
        range_of(pool->n, pool->threads, wa.index, &b, &e);
        if (b < e)
            pool->fn(pool->arg, b, e);
        if (atomic_fetch_sub(&pool->pending, 1) == 1 && atomic_load(&pool->caller_waits)) {
            pthread_mutex_lock(&pool->mu);
            pthread_cond_signal(&pool->cv_done);
            pthread_mutex_unlock(&pool->mu);
        }
    }
    return NULL;
}

int nllm_pool_create(int threads, nllm_pool_t **out, nllm_err_t *err)
{
    *out = NULL;
    nllm_pool_t *pool = calloc(1, sizeof *pool);
    if (!pool)
        return nllm_err_set(err, NLLM_ENOMEM, "thread pool: out of memory");
    pool->threads = threads < 1 ? 1 : threads;
    pool->caller_spin_ns = NLLM_POOL_SPIN_MAX_NS;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv_job, NULL);
    pthread_cond_init(&pool->cv_done, NULL);
    pool->tids = calloc((size_t)pool->threads, sizeof(pthread_t));
    if (!pool->tids) {
        nllm_pool_destroy(pool);
        return nllm_err_set(err, NLLM_ENOMEM, "thread pool: out of memory");
    }
    for (int i = 1; i < pool->threads; i++) {
        worker_arg_t *wa = malloc(sizeof *wa);
        if (wa) {
            wa->pool = pool;
            wa->index = i;
        }
        if (!wa || pthread_create(&pool->tids[i], NULL, worker_main, wa) != 0) {
            free(wa);
            pool->threads = i; /* join only those started */
            nllm_pool_destroy(pool);
            return nllm_err_set(err, NLLM_ENOMEM, "thread pool: cannot start thread %d", i);
        }
    }
    *out = pool;
    return 0;
}

void nllm_pool_destroy(nllm_pool_t *pool)
{
    if (!pool)
        return;
    atomic_store(&pool->quit, 1);
    pthread_mutex_lock(&pool->mu);
    pthread_cond_broadcast(&pool->cv_job);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->threads && pool->tids; i++)
        pthread_join(pool->tids[i], NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv_job);
    pthread_cond_destroy(&pool->cv_done);
    free(pool->tids);
    free(pool);
}

/* Hands [0, n) out over every thread and waits for them. */
static void run_split(nllm_pool_t *pool, nllm_pool_fn fn, void *arg, int64_t n)
{
    /* the workers are idle (pending was 0): nobody reads these now */
    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    atomic_store(&pool->pending, pool->threads - 1);
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv_job);
        pthread_mutex_unlock(&pool->mu);
    }
    int64_t b, e;
    range_of(n, pool->threads, 0, &b, &e);
    fn(arg, b, e);
    SPIN_UNTIL(atomic_load(&pool->pending) == 0, &pool->caller_spin_ns);
    if (atomic_load(&pool->pending) == 0)
        return;
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->caller_waits, 1);
    while (atomic_load(&pool->pending) > 0)
        pthread_cond_wait(&pool->cv_done, &pool->mu);
    atomic_store(&pool->caller_waits, 0);
    pthread_mutex_unlock(&pool->mu);
}

void nllm_pool_for(nllm_pool_t *pool, nllm_pool_fn fn, void *arg, int64_t n, int64_t work)
{
    if (n <= 0)
        return;
    if (!pool || pool->threads == 1 || work < NLLM_POOL_MIN_WORK || n < pool->threads) {
        fn(arg, 0, n);
        return;
    }
    run_split(pool, fn, arg, n);
}

int nllm_pool_threads(const nllm_pool_t *pool)
{
    return pool ? pool->threads : 1;
}

void nllm_pool_all(nllm_pool_t *pool, nllm_pool_fn fn, void *arg)
{
    if (!pool || pool->threads == 1)
        fn(arg, 0, 1);
    else
        run_split(pool, fn, arg, pool->threads);
}
