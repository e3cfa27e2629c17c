/* philox.h -- Philox4x32-10 blocks for the CPU's dropout masks, many at a
 * time: the same bits as nllm_rng_block (nllm_math.h, the definition the
 * GPU and every reference use), with the rounds on AVX-512 or AVX2 vectors
 * where the CPU has them (16 or 8 blocks at once; the 32x32->64 multiplies
 * run as vpmuludq on even and odd lanes). Callers: cpu_backend.c (dropout),
 * tests/test_ops.c (every variant against nllm_rng_block).
 */
#ifndef NLLM_PHILOX_H
#define NLLM_PHILOX_H

#include <stdint.h>

typedef void (*nllm_philox_blocks_fn)(uint64_t seed, uint32_t stream, uint32_t step,
                                      uint64_t b0, int nb, uint32_t *out);

/* A variant by name ("avx512", "avx2", "scalar"); NULL when this CPU (or
 * build) cannot run it. Each writes out[4k + i] = word i of block b0 + k,
 * k = 0 .. nb - 1, counter {blk lo, blk hi, stream, step}, key seed. */
nllm_philox_blocks_fn nllm_philox_variant(const char *name);

/* The best variant this CPU runs (chosen once; thread-safe). */
nllm_philox_blocks_fn nllm_philox_best(void);

#endif /* NLLM_PHILOX_H */
