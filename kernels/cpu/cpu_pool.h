/* cpu_pool.h -- a tiny fork-join thread pool for the CPU backend's
 * kernels. Between jobs a worker spins up to 50 us (the next per-time-step op
 * usually comes sooner than a sleep and wake-up would take), then sleeps on
 * a condition variable, so an idle pool does not compete with other threads
 * (OpenBLAS's, other jobs'). A job splits [0, n) into one contiguous range
 * per thread; callers make every element independent of the split, so
 * results never depend on it.
 */
#ifndef NLLM_CPU_POOL_H
#define NLLM_CPU_POOL_H

#include <stdint.h>

#include "nllm_err.h"

typedef struct nllm_pool nllm_pool_t;
typedef void (*nllm_pool_fn)(void *arg, int64_t begin, int64_t end);

int nllm_pool_create(int threads, nllm_pool_t **out, nllm_err_t *err);
void nllm_pool_destroy(nllm_pool_t *pool);
/* Runs fn over [0, n); inline when work (a rough cost) is small. */
void nllm_pool_for(nllm_pool_t *pool, nllm_pool_fn fn, void *arg, int64_t n, int64_t work);
/* The pool's threads, the caller included (1 for NULL). */
int nllm_pool_threads(const nllm_pool_t *pool);
/* One turn of a spin-wait: tells the core (and its hyperthread sibling)
 * that this thread only polls. */
static inline void nllm_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Runs fn(arg, k, k + 1) once on each of the pool's threads at the same
 * time, k = 0 .. nllm_pool_threads() - 1 (the caller is k = 0), whatever
 * the work: fn may wait for the others (a barrier). */
void nllm_pool_all(nllm_pool_t *pool, nllm_pool_fn fn, void *arg);

#endif /* NLLM_CPU_POOL_H */
