/* testutil.h -- the few macros the C tests share: CHECK records a failure
 * with a message and goes on; RUN prints each test's name and outcome;
 * TEST_REPORT prints "N passed, N failed" and returns the exit status
 * (meson: 0 pass, 1 fail, 77 skip). */
#ifndef NLLM_TESTUTIL_H
#define NLLM_TESTUTIL_H

#include <stdio.h>

static int nllm__t_failed_checks, nllm__t_passed, nllm__t_failed;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            nllm__t_failed_checks++;                                         \
        }                                                                    \
    } while (0)

#define RUN(fn)                                                              \
    do {                                                                     \
        int before_ = nllm__t_failed_checks;                                 \
        fn();                                                                \
        if (nllm__t_failed_checks == before_) {                              \
            nllm__t_passed++;                                                \
            printf("ok   %s\n", #fn);                                        \
        } else {                                                             \
            nllm__t_failed++;                                                \
            printf("FAIL %s\n", #fn);                                        \
        }                                                                    \
        fflush(stdout);                                                      \
    } while (0)

#define TEST_REPORT()                                                        \
    (printf("%d passed, %d failed\n", nllm__t_passed, nllm__t_failed),       \
     nllm__t_failed ? 1 : 0)

#endif /* NLLM_TESTUTIL_H */
