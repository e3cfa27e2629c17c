/* tmproot.h -- the preamble test_fsutil.c, test_safetensors.c and
 * test_data.c share:
 * CHECK counts a failure in `failures` and prints "FAIL FILE:LINE: cond:
 * message" on stdout, then the test goes on; root is the test's temp
 * folder (main creates it) and pjoin(name) a path in it, in one of 8
 * static buffers used in turn. (tests/testutil.h is the other test
 * preamble: its CHECK writes to stderr and RUN counts whole tests.)
 */
#ifndef NLLM_TMPROOT_H
#define NLLM_TMPROOT_H

#include <stdio.h>

static int failures;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                                 \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

static char root[256];

__attribute__((unused)) static char *pjoin(const char *name)
{
    static char buf[8][512];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, 512, "%s/%s", root, name);
    return b;
}

#endif /* NLLM_TMPROOT_H */
