/* corpus.h -- the small text corpus the C training tests train on: lines
 * of 5 to 13 words from a 15-word vocabulary, drawn from the project's
 * Philox stream, so every run and every test writes the same text.
 * Callers: tests/test_trainer.c, tests/test_comm_nccl.c.
 */
#ifndef NLLM_TEST_CORPUS_H
#define NLLM_TEST_CORPUS_H

#include <stdio.h>

#include "nllm_math.h"

/* Writes `lines` lines of the corpus to path. */
static inline void nllm_test_write_corpus(const char *path, int lines)
{
    FILE *f = fopen(path, "w");
    const char *words[] = {"the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away",
                           "and", "then", "slept", "under", "tree"};
    for (int line = 0; line < lines; line++) {
        int n = 5 + (int)nllm_rng_below(1, 2, 0, (uint64_t)line, 9);
        for (int k = 0; k < n; k++)
            fprintf(f, "%s%s", k ? " " : "",
                    words[nllm_rng_below(1, 3, (uint32_t)line, (uint64_t)k, 15)]);
        fputc('\n', f);
    }
    fclose(f);
}

#endif /* NLLM_TEST_CORPUS_H */
