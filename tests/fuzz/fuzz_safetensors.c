/* fuzz_safetensors.c -- libFuzzer target: nllm_st_parse on hostile bytes.
 *
 * A file that parses must keep every promise of safetensors.h: tensors
 * tile the data buffer in offset order, each is found by name and readable
 * to its last byte (nllm_st_get / nllm_st_get_f32 with its own shape, and
 * refused with another), metadata is sorted and found by key. It is then
 * written again with nllm_st_writer and the copy must parse to the same
 * tensors and metadata. Built by tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "safetensors.h"

#define FUZZ_NAME "fuzz_safetensors"
#include "fuzz_assert.h"

static int memfd = -1;

static void rewrite_and_compare(const nllm_st_file_t *f)
{
    nllm_err_t err;
    nllm_st_writer_t *w = nllm_st_writer_new();
    ASSERT(w);
    int ok = 1;
    for (int i = 0; ok && i < nllm_st_count(f); i++) {
        const nllm_st_tensor_t *t = nllm_st_at(f, i);
        ok = nllm_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err) == 0;
    }
    for (int i = 0; ok && i < nllm_st_meta_count(f); i++) {
        const char *k, *v;
        ASSERT(nllm_st_meta_at(f, i, &k, &v) == 0);
        ok = nllm_st_writer_meta(w, k, v, &err) == 0;
    }
    if (!ok) { /* the writer is stricter (names, sizes): fine */
        nllm_st_writer_free(w);
        return;
    }
    if (memfd < 0)
        memfd = memfd_create("fuzz_st", 0);
    ASSERT(memfd >= 0);
    ASSERT(ftruncate(memfd, 0) == 0 && lseek(memfd, 0, SEEK_SET) == 0);
    uint64_t size = 0;
    int rc = nllm_st_writer_write_fd(w, memfd, NULL, &size, &err);
    nllm_st_writer_free(w);
    ASSERT(rc == 0);
    uint8_t *buf = malloc(size ? size : 1);
    ASSERT(buf);
    ASSERT(pread(memfd, buf, size, 0) == (ssize_t)size);
    nllm_st_file_t *g;
    rc = nllm_st_parse(buf, size, "rewritten", &g, &err);
    free(buf);
    if (rc != 0)
        fprintf(stderr, "fuzz_safetensors: a rewritten file does not parse: %s\n", err.msg);
    ASSERT(rc == 0);
    ASSERT(nllm_st_count(g) == nllm_st_count(f));
    ASSERT(nllm_st_meta_count(g) == nllm_st_meta_count(f));
    for (int i = 0; i < nllm_st_count(f); i++) {
        const nllm_st_tensor_t *a = nllm_st_at(f, i), *b = nllm_st_find(g, a->name);
        ASSERT(b && b->dtype == a->dtype && b->ndim == a->ndim);
        ASSERT(memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0);
        ASSERT(b->end - b->begin == a->end - a->begin);
        ASSERT(a->end == a->begin || memcmp(a->data, b->data, a->end - a->begin) == 0);
    }
    for (int i = 0; i < nllm_st_meta_count(f); i++) {
        const char *k, *v;
        nllm_st_meta_at(f, i, &k, &v);
        const char *v2 = nllm_st_meta(g, k);
        ASSERT(v2 && strcmp(v, v2) == 0);
    }
    nllm_st_close(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nllm_st_file_t *f;
    nllm_err_t err;
    int rc = nllm_st_parse(data, size, "fuzz", &f, &err);
    if (rc != 0) {
        ASSERT(f == NULL);
        ASSERT(rc == NLLM_ECORRUPT || rc == NLLM_ENOMEM);
        return 0;
    }
    ASSERT(f);
    uint64_t pos = 0;
    for (int i = 0; i < nllm_st_count(f); i++) {
        const nllm_st_tensor_t *t = nllm_st_at(f, i);
        ASSERT(t && t->name && t->begin == pos && t->end >= t->begin);
        pos = t->end;
        ASSERT(nllm_st_find(f, t->name) == t);
        /* every byte readable */
        const uint8_t *b = t->data;
        volatile uint8_t x = 0;
        for (uint64_t q = 0; q < t->end - t->begin; q++)
            x ^= b[q];
        (void)x;
        const void *p;
        rc = nllm_st_get(f, t->name, t->dtype, t->ndim, t->shape, &p, &err);
        ASSERT(rc == 0 ? p == t->data : t->begin % nllm_st_dtype_size(t->dtype) != 0);
        const float *fl;
        rc = nllm_st_get_f32(f, t->name, t->ndim, t->shape, &fl, &err);
        if (rc == 0) {
            ASSERT(t->dtype == NLLM_ST_F32);
            uint64_t n = (t->end - t->begin) / 4;
            volatile float s = 0;
            for (uint64_t q = 0; q < n; q++)
                s += fl[q];
            (void)s;
        }
        /* another shape is refused */
        int64_t other[NLLM_ST_MAX_DIMS];
        memcpy(other, t->shape, sizeof other);
        if (t->ndim > 0) {
            other[0] += 1;
            ASSERT(nllm_st_get_f32(f, t->name, t->ndim, other, &fl, &err) < 0);
        }
        ASSERT(nllm_st_get_f32(f, t->name, NLLM_ST_MAX_DIMS + 1, other, &fl, &err) ==
               NLLM_EINVAL);
    }
    ASSERT(nllm_st_at(f, -1) == NULL && nllm_st_at(f, nllm_st_count(f)) == NULL);
    ASSERT(nllm_st_find(f, "\x01 not a tensor") == NULL);
    const char *prev = NULL;
    for (int i = 0; i < nllm_st_meta_count(f); i++) {
        const char *k, *v;
        ASSERT(nllm_st_meta_at(f, i, &k, &v) == 0 && k && v);
        ASSERT(!prev || strcmp(prev, k) <= 0);
        prev = k;
        const char *v2 = nllm_st_meta(f, k);
        ASSERT(v2);
        (void)strlen(v2);
    }
    ASSERT(nllm_st_meta_at(f, nllm_st_meta_count(f), NULL, NULL) == NLLM_EINVAL);
    /* the accessors a checkpoint load uses */
    static const char *const keys[] = {"format", "format_version", "config", "tokenizer",
                                       "current_epoch", "early_stopping"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = nllm_st_meta(f, keys[i]);
        if (v)
            (void)strlen(v);
    }
    const float *w;
    int64_t shape2[2] = {8, 2};
    (void)nllm_st_get_f32(f, "token_embedding.weight", 2, shape2, &w, &err);
    rewrite_and_compare(f);
    nllm_st_close(f);
    return 0;
}
