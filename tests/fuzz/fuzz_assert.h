/* fuzz_assert.h -- ASSERT for the libFuzzer targets of tests/fuzz/: a
 * broken promise prints "FUZZ_NAME: FILE:LINE: condition" on stderr and
 * aborts, which libFuzzer reports as a crash and saves the input of. Define
 * FUZZ_NAME (the target's name) before including it.
 */
#ifndef NLLM_FUZZ_ASSERT_H
#define NLLM_FUZZ_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#ifndef FUZZ_NAME
#error "define FUZZ_NAME before including fuzz_assert.h"
#endif

#define ASSERT(c)                                                                                  \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, FUZZ_NAME ": %s:%d: %s\n", __FILE__, __LINE__, #c);                    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif /* NLLM_FUZZ_ASSERT_H */
