/* cpu_pool.c -- fork-join pool; see cpu_pool.h. One job at a time: the
 * caller runs range 0 itself and waits for the workers' ranges. */
#include "cpu_pool.h"

#include <pthread.h>
#include <stdlib.h>

#define NLLM_POOL_MIN_WORK 65536

struct nllm_pool {
    int threads; /* including the caller */
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t cv_job, cv_done;
    uint64_t generation;
    int pending;
    int quit;
    nllm_pool_fn fn;
    void *arg;
    int64_t n;
};

static void range_of(int64_t n, int parts, int k, int64_t *b, int64_t *e)
{
    *b = n * k / parts;
    *e = n * (k + 1) / parts;
}

typedef struct {
    nllm_pool_t *pool;
    int index;
} worker_arg_t;

static void *worker_main(void *p)
{
    worker_arg_t wa = *(worker_arg_t *)p;
    free(p);
    nllm_pool_t *pool = wa.pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!pool->quit && pool->generation == seen)
            pthread_cond_wait(&pool->cv_job, &pool->mu);
        if (pool->quit)
            break;
        seen = pool->generation;
        nllm_pool_fn fn = pool->fn;
        void *arg = pool->arg;
        int64_t b, e;
        range_of(pool->n, pool->threads, wa.index, &b, &e);
        pthread_mutex_unlock(&pool->mu);
        if (b < e)
            fn(arg, b, e);
        pthread_mutex_lock(&pool->mu);
        if (--pool->pending == 0)
            pthread_cond_signal(&pool->cv_done);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

int nllm_pool_create(int threads, nllm_pool_t **out, nllm_err_t *err)
{
    *out = NULL;
    nllm_pool_t *pool = calloc(1, sizeof *pool);
    if (!pool)
        return nllm_err_set(err, NLLM_ENOMEM, "thread pool: out of memory");
    pool->threads = threads < 1 ? 1 : threads;
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
    pthread_mutex_lock(&pool->mu);
    pool->quit = 1;
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
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    pool->pending = pool->threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->cv_job);
    pthread_mutex_unlock(&pool->mu);
    int64_t b, e;
    range_of(n, pool->threads, 0, &b, &e);
    fn(arg, b, e);
    pthread_mutex_lock(&pool->mu);
    while (pool->pending > 0)
        pthread_cond_wait(&pool->cv_done, &pool->mu);
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
