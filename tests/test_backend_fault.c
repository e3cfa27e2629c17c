/* test_backend_fault.c -- the device-fault test hook of kernels/backend.c
 * (NLLM_BACKEND_FAULT, backend.h) on the CPU backend: the Nth sync of a
 * backend and every later one fail with NLLM_EDEVICE naming the device and
 * the hook, earlier ones succeed, ":K" arms only the first K backends, the
 * environment variable is read, and a bad spec is refused with nothing set.
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "testutil.h"

static nllm_backend_t *make(void)
{
    nllm_backend_t *be = NULL;
    nllm_err_t err;
    if (nllm_backend_create("cpu", 1, &be, &err) < 0) {
        CHECK(0, "cpu backend: %s", err.msg);
        return NULL;
    }
    return be;
}

/* The sync number (1-based) at which be first fails within max syncs, 0
 * none; checks that every later one fails too (sticky). */
static int first_fault(nllm_backend_t *be, int max, nllm_err_t *first)
{
    int at = 0;
    for (int i = 1; i <= max; i++) {
        nllm_err_t err = {0};
        int rc = be->sync(be, &err);
        if (rc < 0 && !at) {
            at = i;
            *first = err;
        }
        if (at)
            CHECK(rc == NLLM_EDEVICE && err.code == NLLM_EDEVICE,
                  "sync %d after the fault at %d: rc %d (sticky NLLM_EDEVICE)", i, at, rc);
    }
    return at;
}

static void test_env_spec(void)
{
    /* set before the first nllm_backend_create: the hook reads it then */
    nllm_backend_t *be = make();
    if (!be)
        return;
    nllm_err_t e;
    int at = first_fault(be, 8, &e);
    CHECK(at == 5, "NLLM_BACKEND_FAULT=device@sync:5:1: the 5th sync faults, not %d", at);
    CHECK(at && strstr(e.msg, "device cpu") && strstr(e.msg, "injected device fault"),
          "message names the device and the injection: %s", e.msg);
    be->destroy(be);
    be = make(); /* K = 1: the second backend is not armed */
    if (be) {
        CHECK(first_fault(be, 8, &e) == 0, "a second backend does not fault (K = 1)");
        be->destroy(be);
    }
}

static void test_parse(void)
{
    nllm_err_t err;
    CHECK(nllm_backend_fault_parse("device@sync:3", &err) == 0, "device@sync:3: %s", err.msg);
    for (int k = 0; k < 2; k++) { /* no K: every backend */
        nllm_backend_t *be = make();
        if (!be)
            return;
        nllm_err_t e;
        int at = first_fault(be, 6, &e);
        CHECK(at == 3, "backend %d: the 3rd sync faults, not %d", k, at);
        CHECK(be->n_syncs == 6, "the backend's own sync still runs and counts (%llu)",
              (unsigned long long)be->n_syncs);
        be->destroy(be);
    }
    const char *bad[] = {"device@sync:0", "device@sync:x", "device@sync:3:0", "device@step:3",
                         "device@sync:3:1:2", "sync:3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = nllm_backend_fault_parse(bad[i], &err);
        CHECK(rc == NLLM_EINVAL && strstr(err.msg, "device@sync:N"), "\"%s\" refused: %d %s",
              bad[i], rc, err.msg);
    }
    nllm_backend_t *be = make(); /* a refused spec changed nothing: still device@sync:3 */
    if (be) {
        nllm_err_t e;
        CHECK(first_fault(be, 4, &e) == 3, "a refused spec leaves the previous one");
        be->destroy(be);
    }
    CHECK(nllm_backend_fault_parse("", &err) == 0, "\"\" clears");
    be = make();
    if (be) {
        nllm_err_t e;
        CHECK(first_fault(be, 10, &e) == 0, "no fault once cleared");
        be->destroy(be);
    }
}

int main(void)
{
    setenv("NLLM_BACKEND_FAULT", "device@sync:5:1", 1);
    RUN(test_env_spec);
    RUN(test_parse);
    return TEST_REPORT();
}
