/* test_hostile.c -- named hostile inputs, the fixed cases beside the
 * libFuzzer targets of tests/fuzz/ (suite proto).
 *
 * The msgpack-RPC decoder must not allocate more than 1 MiB for headers
 * that claim 4 billion items or 4 GiB of string/binary, must reject 33
 * levels of nesting (32 pass), and must wait, not read past the end, when
 * a count is larger than the bytes left. Allocation is measured with
 * AddressSanitizer's malloc/free hooks in sanitized builds, and otherwise
 * by running the case in a forked child whose address space is capped at
 * its current size + 1 MiB (RLIMIT_AS). Every byte-prefix truncation of a
 * real checkpoint (tests/fuzz/corpus/ckpt/checkpoint, made by nllm-bench)
 * must be rejected by nllm_st_parse with NLLM_ECORRUPT, and a header of
 * 20000 tensors named against their order must parse and index by name.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../proto/rpc.h"
#include "safetensors.h"
#include "testutil.h"

#define MIB ((size_t)1 << 20)

/* ---- measuring allocation ------------------------------------------------ */

#if defined(__SANITIZE_ADDRESS__)
#define NLLM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NLLM_ASAN 1
#endif
#endif

#ifdef NLLM_ASAN
/* sanitizer/allocator_interface.h (not shipped with every gcc) */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));
size_t __sanitizer_get_allocated_size(const volatile void *p);

static volatile int counting;
static volatile size_t live, peak;

static void on_malloc(const volatile void *p, size_t n)
{
    (void)p;
    if (!counting)
        return;
    live += n;
    if (live > peak)
        peak = live;
}

static void on_free(const volatile void *p)
{
    if (!counting || !p)
        return;
    size_t n = __sanitizer_get_allocated_size(p);
    live = n > live ? 0 : live - n;
}
#endif

/* A case: returns 0 when the decoder behaved, a small number saying what
 * went wrong otherwise. */
typedef int (*case_fn)(void);

static size_t vm_size(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %zu kB", &kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

/* Runs fn allowing it at most 1 MiB of new memory. Returns fn's result, or
 * 100 + the bytes over (ASan), or 200+ when the child died. */
static int within_1mib(case_fn fn, size_t *peak_out)
{
    *peak_out = 0;
#ifdef NLLM_ASAN
    static int hooked;
    if (!hooked)
        hooked = __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free) != 0;
    if (hooked) {
        live = peak = 0;
        counting = 1;
        int rc = fn();
        counting = 0;
        *peak_out = peak;
        return rc ? rc : peak > MIB ? 100 : 0;
    }
#endif
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return 201;
    if (pid == 0) {
        size_t now = vm_size();
        if (now == 0)
            _exit(202);
        struct rlimit rl = {now + MIB, now + MIB};
        if (setrlimit(RLIMIT_AS, &rl) != 0)
            _exit(203);
        /* the cap bites: 2 MiB more cannot be had */
        void *probe = malloc(2 * MIB);
        if (probe)
            _exit(204);
        _exit(fn());
    }
    int st;
    if (waitpid(pid, &st, 0) != pid)
        return 205;
    if (WIFSIGNALED(st))
        return 210 + WTERMSIG(st);
    return WEXITSTATUS(st);
}

/* ---- decoder cases ------------------------------------------------------- */

/* Feeds bytes to a fresh decoder (max_msg 0: default) and reads one result. */
static int decode(const uint8_t *p, size_t n, size_t max_msg, nllm_rpc_msg_t *msg,
                  nllm_err_t *err, size_t *buffered)
{
    nllm_rpc_decoder_t d;
    nllm_rpc_limits_t lim;
    nllm_rpc_limits_default(&lim);
    if (max_msg)
        lim.max_msg = max_msg;
    if (nllm_rpc_decoder_init(&d, &lim, err) < 0)
        return -1000;
    int rc = nllm_rpc_feed(&d, p, n);
    if (rc == 0)
        rc = nllm_rpc_next(&d, msg, err);
    if (buffered)
        *buffered = nllm_rpc_buffered(&d);
    nllm_rpc_decoder_close(&d);
    return rc;
}

/* A claim that cannot fit: fatal too_large after the header, nothing kept. */
static int expect_too_large(const uint8_t *p, size_t n, size_t max_msg)
{
    nllm_rpc_msg_t m;
    nllm_err_t e;
    size_t buf = 0;
    int rc = decode(p, n, max_msg, &m, &e, &buf);
    int ok = rc == NLLM_EPROTO && strstr(e.msg, "exceeds the limit") != NULL && buf == n &&
             m.zone == NULL;
    nllm_rpc_msg_free(&m);
    return ok ? 0 : 1;
}

static int case_array32_ff000000(void)
{
    static const uint8_t b[] = {0xdd, 0xff, 0x00, 0x00, 0x00};
    return expect_too_large(b, sizeof b, 0);
}

static int case_array32_ffffffff(void)
{
    static const uint8_t b[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    return expect_too_large(b, sizeof b, 0);
}

static int case_map32_ffffffff(void)
{
    static const uint8_t b[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    return expect_too_large(b, sizeof b, 0);
}

static int case_str32_4gib(void)
{
    static const uint8_t b[] = {0xdb, 0xff, 0xff, 0xff, 0xff};
    return expect_too_large(b, sizeof b, 0);
}

static int case_bin32_4gib(void)
{
    static const uint8_t b[] = {0xc6, 0xff, 0xff, 0xff, 0xff};
    return expect_too_large(b, sizeof b, 0);
}

/* Inside a request: the reply names the msgid and says too_large. */
static int case_str32_in_request(void)
{
    static const uint8_t b[] = {0x94, 0x00, 0x2a, 0xdb, 0xff, 0xff, 0xff, 0xff};
    nllm_rpc_msg_t m;
    nllm_err_t e;
    int rc = decode(b, sizeof b, 0, &m, &e, NULL);
    int ok = rc == NLLM_EPROTO && m.type == NLLM_RPC_INVALID && m.has_msgid && m.msgid == 42 &&
             m.error_code && strcmp(m.error_code, NLLM_RPC_CODE_TOO_LARGE) == 0;
    nllm_rpc_msg_free(&m);
    return ok ? 0 : 1;
}

/* With max_msg at its 1 GiB ceiling, a str32 of 1 GiB - 16 bytes fits the
 * limit: the decoder must wait for the bytes, holding only what came. */
static int case_str32_at_ceiling_waits(void)
{
    static const uint8_t b[] = {0xdb, 0x3f, 0xff, 0xff, 0xf0, 'a', 'b', 'c'};
    nllm_rpc_msg_t m;
    nllm_err_t e;
    size_t buf = 0;
    int rc = decode(b, sizeof b, NLLM_RPC_MAX_MSG_CEILING, &m, &e, &buf);
    int ok = rc == 0 && m.type == NLLM_RPC_NONE && buf == sizeof b;
    nllm_rpc_msg_free(&m);
    return ok ? 0 : 1;
}

static int case_bin32_at_ceiling_waits(void)
{
    static const uint8_t b[] = {0x92, 0xc6, 0x3f, 0xff, 0xff, 0xf0, 1, 2};
    nllm_rpc_msg_t m;
    nllm_err_t e;
    size_t buf = 0;
    int rc = decode(b, sizeof b, NLLM_RPC_MAX_MSG_CEILING, &m, &e, &buf);
    int ok = rc == 0 && m.type == NLLM_RPC_NONE && buf == sizeof b;
    nllm_rpc_msg_free(&m);
    return ok ? 0 : 1;
}

/* The meter itself: 2 MiB must not pass as within 1 MiB. */
static int case_two_mib(void)
{
    volatile char *p = malloc(2 * MIB);
    if (!p)
        return 50;
    for (size_t i = 0; i < 2 * MIB; i += 4096)
        p[i] = 1;
    free((void *)p);
    return 0;
}

static size_t peak_of(case_fn fn, int *rc)
{
    size_t peak;
    *rc = within_1mib(fn, &peak);
    return peak;
}

static void check_case(const char *name, case_fn fn)
{
    int rc;
    size_t peak = peak_of(fn, &rc);
    CHECK(rc == 0, "%s: result %d (peak %zu bytes; 100: over 1 MiB, 200+: child died)", name, rc,
          peak);
}

static void test_huge_claims_allocate_little(void)
{
    int rc;
    size_t peak = peak_of(case_two_mib, &rc);
    CHECK(rc != 0, "the 1 MiB meter let a 2 MiB allocation through (peak %zu)", peak);
    check_case("dd ff 00 00 00", case_array32_ff000000);
    check_case("dd ff ff ff ff", case_array32_ffffffff);
    check_case("df ff ff ff ff", case_map32_ffffffff);
    check_case("db ff ff ff ff (str32 4 GiB)", case_str32_4gib);
    check_case("c6 ff ff ff ff (bin32 4 GiB)", case_bin32_4gib);
    check_case("str32 4 GiB inside a request", case_str32_in_request);
    check_case("str32 1 GiB at the ceiling", case_str32_at_ceiling_waits);
    check_case("bin32 1 GiB at the ceiling", case_bin32_at_ceiling_waits);
}

/* ---- nesting -------------------------------------------------------------- */

/* levels nested arrays (the root counts), innermost empty */
static size_t nest(uint8_t *b, int levels, int request)
{
    size_t n = 0;
    if (request) { /* [0, 7, "x", [[[...]]]]: the params array is level 2 */
        b[n++] = 0x94, b[n++] = 0x00, b[n++] = 0x07, b[n++] = 0xa1, b[n++] = 'x';
        for (int i = 1; i < levels - 1; i++)
            b[n++] = 0x91;
        b[n++] = 0x90;
        return n;
    }
    for (int i = 0; i < levels - 1; i++)
        b[n++] = 0x91;
    b[n++] = 0x90;
    return n;
}

static void test_nesting(void)
{
    uint8_t b[64];
    nllm_rpc_msg_t m;
    nllm_err_t e;
    /* 33 levels, no msgid: fatal */
    size_t n = nest(b, 33, 0);
    int rc = decode(b, n, 0, &m, &e, NULL);
    CHECK(rc == NLLM_EPROTO && strstr(e.msg, "deeper"), "33 levels: rc %d (%s)", rc, e.msg);
    nllm_rpc_msg_free(&m);
    /* 33 levels in a request: answered as invalid, with its msgid */
    n = nest(b, 33, 1);
    rc = decode(b, n, 0, &m, &e, NULL);
    CHECK(rc == 1 && m.type == NLLM_RPC_INVALID && m.msgid == 7 && strstr(m.reason, "deeper"),
          "33-level request: rc %d type %d reason %s", rc, m.type, m.reason);
    nllm_rpc_msg_free(&m);
    /* 32 levels is the limit, and passes */
    n = nest(b, 32, 1);
    rc = decode(b, n, 0, &m, &e, NULL);
    CHECK(rc == 1 && m.type == NLLM_RPC_REQUEST, "32-level request: rc %d type %d (%s)", rc,
          m.type, rc < 0 ? e.msg : m.reason);
    nllm_rpc_msg_free(&m);
}

/* ---- counts larger than the bytes left ----------------------------------- */

static void test_count_past_end(void)
{
    nllm_rpc_msg_t m;
    nllm_err_t e;
    size_t buf;
    /* [0, 1, "ping", [array16 of 16 items]] with only 3 of them sent */
    static const uint8_t a[] = {0x94, 0x00, 0x01, 0xa4, 'p', 'i', 'n', 'g',
                                0x91, 0xdc, 0x00, 0x10, 0x01, 0x02, 0x03};
    int rc = decode(a, sizeof a, 0, &m, &e, &buf);
    CHECK(rc == 0 && m.type == NLLM_RPC_NONE && buf == sizeof a,
          "array16(16) with 3 items: rc %d type %d buffered %zu", rc, m.type, buf);
    nllm_rpc_msg_free(&m);
    /* a str8 claiming 200 bytes with 2 sent */
    static const uint8_t s[] = {0x94, 0x00, 0x01, 0xd9, 0xc8, 'h', 'i'};
    rc = decode(s, sizeof s, 0, &m, &e, &buf);
    CHECK(rc == 0 && buf == sizeof s, "str8(200) with 2 bytes: rc %d buffered %zu", rc, buf);
    nllm_rpc_msg_free(&m);
    /* a map16 of 65535 pairs is more than a 1 KiB limit can hold: refused at once */
    static const uint8_t mp[] = {0x94, 0x00, 0x05, 0xa1, 'x', 0x91, 0xde, 0xff, 0xff};
    rc = decode(mp, sizeof mp, 1024, &m, &e, &buf);
    CHECK(rc == NLLM_EPROTO && m.type == NLLM_RPC_INVALID && m.msgid == 5 &&
              m.error_code && !strcmp(m.error_code, NLLM_RPC_CODE_TOO_LARGE),
          "map16(65535) under 1 KiB: rc %d type %d", rc, m.type);
    nllm_rpc_msg_free(&m);
    /* every byte of the partial message, one at a time: never a message, never fatal */
    nllm_rpc_decoder_t d;
    nllm_rpc_decoder_init(&d, NULL, &e);
    for (size_t i = 0; i < sizeof a; i++) {
        nllm_rpc_feed(&d, a + i, 1);
        rc = nllm_rpc_next(&d, &m, &e);
        CHECK(rc == 0, "byte %zu: rc %d", i, rc);
        nllm_rpc_msg_free(&m);
    }
    nllm_rpc_decoder_close(&d);
}

/* ---- truncated checkpoints ------------------------------------------------ */

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *b = NULL;
    size_t cap = 0, n = 0, r;
    do {
        if (n == cap) {
            cap = cap ? 2 * cap : 65536;
            uint8_t *nb = realloc(b, cap);
            if (!nb) {
                free(b);
                fclose(f);
                return NULL;
            }
            b = nb;
        }
        r = fread(b + n, 1, cap - n, f);
        n += r;
    } while (r > 0);
    fclose(f);
    *len = n;
    return b;
}

static void test_truncated_checkpoint(void)
{
    const char *root = getenv("NLLM_SOURCE_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fuzz/corpus/ckpt/checkpoint", root ? root : ".");
    size_t len = 0;
    uint8_t *b = read_all(path, &len);
    CHECK(b && len > 64, "cannot read %s (made by tests/fuzz/make_corpus.py)", path);
    if (!b)
        return;
    nllm_st_file_t *f;
    nllm_err_t e;
    int rc = nllm_st_parse(b, len, "checkpoint", &f, &e);
    CHECK(rc == 0 && nllm_st_count(f) > 10 && nllm_st_meta(f, "format"),
          "the whole checkpoint: %s", rc ? e.msg : "too few tensors");
    nllm_st_close(f);
    int bad = 0;
    for (size_t n = 0; n < len; n++) {
        /* a copy of exactly n bytes, so ASan sees any read past it */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, b, n);
        f = (nllm_st_file_t *)1;
        rc = nllm_st_parse(p, n, "truncated", &f, &e);
        if (rc != NLLM_ECORRUPT || f != NULL) {
            if (bad++ < 5)
                CHECK(0, "prefix of %zu bytes: rc %d, file %p", n, rc, (void *)f);
            nllm_st_close(f);
        }
        free(p);
    }
    CHECK(bad == 0, "%d of %zu truncations not rejected", bad, len);
    free(b);
}

/* Many tensors whose names run against their offsets: found by name (the
 * name index once was an insertion sort, quadratic in the tensor count: a
 * 6.5 MB header of 100000 such tensors took 35 s to open). */
static void test_many_tensors(void)
{
    enum { N = 20000 };
    size_t cap = (size_t)N * 80 + 64, n = 8;
    char *h = malloc(cap + N);
    n += (size_t)snprintf(h + n, cap - n, "{");
    for (int i = 0; i < N; i++)
        n += (size_t)snprintf(h + n, cap - n,
                              "%s\"t%06d\":{\"dtype\":\"U8\",\"shape\":[1],"
                              "\"data_offsets\":[%d,%d]}",
                              i ? "," : "", N - i, i, i + 1);
    n += (size_t)snprintf(h + n, cap - n, "}");
    uint64_t hlen = n - 8;
    for (int k = 0; k < 8; k++)
        h[k] = (char)(hlen >> (8 * k));
    for (int i = 0; i < N; i++)
        h[n++] = (char)i;
    nllm_st_file_t *f;
    nllm_err_t e;
    int rc = nllm_st_parse((const uint8_t *)h, n, "many", &f, &e);
    CHECK(rc == 0 && nllm_st_count(f) == N, "%d tensors: %s", N, rc ? e.msg : "wrong count");
    int missing = 0;
    char name[16];
    for (int i = 0; rc == 0 && i < N; i++) {
        snprintf(name, sizeof name, "t%06d", N - i);
        const nllm_st_tensor_t *t = nllm_st_find(f, name);
        missing += !t || t->begin != (uint64_t)i || ((const uint8_t *)t->data)[0] != (uint8_t)i;
    }
    CHECK(missing == 0, "%d of %d tensors not found by name", missing, N);
    CHECK(nllm_st_find(f, "t000000") == NULL && nllm_st_find(f, "u") == NULL, "phantom tensor");
    nllm_st_close(f);
    free(h);
}

int main(void)
{
    RUN(test_huge_claims_allocate_little);
    RUN(test_nesting);
    RUN(test_count_past_end);
    RUN(test_truncated_checkpoint);
    RUN(test_many_tensors);
    return TEST_REPORT();
}
