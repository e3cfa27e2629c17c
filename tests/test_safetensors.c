/* test_safetensors.c -- safetensors round trips, reference bytes, corruption.
 *
 * Round-trips several dtypes/shapes (scalar, zero-size) with metadata and
 * checks layout and XXH64; parses a hand-written reference file; checks that
 * every truncation, flipped header byte and malformed header fails cleanly
 * with NLLM_ECORRUPT and a message naming the file. Run under ASan/UBSan.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "../daemon/store/fsutil.h"
#include "../daemon/store/safetensors.h"

#include "tmproot.h" /* CHECK, failures, root, pjoin */

static uint8_t *slurp(const char *path, size_t *len)
{
    uint8_t *b = NULL;
    nllm_err_t err;
    if (nllm_fs_read_file(path, 1 << 26, &b, len, &err) != 0) {
        printf("FAIL reading %s: %s\n", path, err.msg);
        failures++;
        return NULL;
    }
    return b;
}

static void spit(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(b, 1, n, f) != n)) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

/* Hand-written file in the reference layout (as the Python safetensors
 * package writes it for {"bias": [0.5, -1], "weight": [[1, 2], [3, 4]]} with
 * metadata {"format": "pt"}): header of 149 bytes padded to 152. */
static const uint8_t ref_file[] = {
    0x98, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* N = 152 */
    '{', '"', '_', '_', 'm', 'e', 't', 'a', 'd', 'a', 't', 'a', '_', '_', '"', ':', '{', '"', 'f', 'o', 'r', 'm',
    'a', 't', '"', ':', '"', 'p', 't', '"', '}', ',', '"', 'b', 'i', 'a', 's', '"', ':', '{', '"', 'd', 't', 'y',
    'p', 'e', '"', ':', '"', 'F', '3', '2', '"', ',', '"', 's', 'h', 'a', 'p', 'e', '"', ':', '[', '2', ']', ',',
    '"', 'd', 'a', 't', 'a', '_', 'o', 'f', 'f', 's', 'e', 't', 's', '"', ':', '[', '0', ',', '8', ']', '}', ',',
    '"', 'w', 'e', 'i', 'g', 'h', 't', '"', ':', '{', '"', 'd', 't', 'y', 'p', 'e', '"', ':', '"', 'F', '3', '2',
    '"', ',', '"', 's', 'h', 'a', 'p', 'e', '"', ':', '[', '2', ',', '2', ']', ',', '"', 'd', 'a', 't', 'a', '_',
    'o', 'f', 'f', 's', 'e', 't', 's', '"', ':', '[', '8', ',', '2', '4', ']', '}', '}', ' ', ' ', ' ',
    /* bias: 0.5, -1.0 */
    0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x80, 0xbf,
    /* weight: 1, 2, 3, 4 */
    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0x80, 0x40};

static void test_reference_bytes(void)
{
    nllm_err_t err;
    nllm_st_file_t *f = NULL;
    CHECK(sizeof ref_file == 8 + 152 + 24, "reference literal is %zu bytes", sizeof ref_file);
    int rc = nllm_st_parse(ref_file, sizeof ref_file, "ref.safetensors", &f, &err);
    CHECK(rc == 0, "reference parse rc=%d %s", rc, err.msg);
    if (rc)
        return;
    CHECK(nllm_st_count(f) == 2, "count %d", nllm_st_count(f));
    CHECK(nllm_st_meta(f, "format") && strcmp(nllm_st_meta(f, "format"), "pt") == 0, "metadata format");
    CHECK(nllm_st_meta(f, "absent") == NULL, "absent metadata");
    const float *w = NULL, *b = NULL;
    rc = nllm_st_get_f32(f, "weight", 2, (const int64_t[]){2, 2}, &w, &err);
    CHECK(rc == 0 && w && w[0] == 1.0f && w[1] == 2.0f && w[2] == 3.0f && w[3] == 4.0f, "weight rc=%d %s", rc, err.msg);
    rc = nllm_st_get_f32(f, "bias", 1, (const int64_t[]){2}, &b, &err);
    CHECK(rc == 0 && b && b[0] == 0.5f && b[1] == -1.0f, "bias rc=%d %s", rc, err.msg);
    CHECK(nllm_st_at(f, 0) && strcmp(nllm_st_at(f, 0)->name, "bias") == 0, "offset order");
    CHECK(nllm_st_at(f, 2) == NULL && nllm_st_at(f, -1) == NULL, "at out of range");
    nllm_st_close(f);

    /* The same header without padding (N = 149): data starts unaligned in the
     * file but the reader's copy is aligned. */
    uint8_t un[8 + 149 + 24];
    memcpy(un, ref_file, sizeof un);
    un[0] = 149;
    memcpy(un + 8 + 149, ref_file + 8 + 152, 24);
    rc = nllm_st_parse(un, sizeof un, "unpadded", &f, &err);
    CHECK(rc == 0, "unpadded parse rc=%d %s", rc, err.msg);
    if (rc == 0) {
        rc = nllm_st_get_f32(f, "weight", 2, (const int64_t[]){2, 2}, &w, &err);
        CHECK(rc == 0 && ((uintptr_t)w % 4) == 0 && w[3] == 4.0f, "unpadded weight");
        nllm_st_close(f);
    }
}

static void test_writer_bytes(void)
{
    /* Our writer's exact output for weight then bias: compact JSON, metadata
     * first, tensors in the order added, header padded with spaces to 8. */
    static const char hdr[] = "{\"__metadata__\":{\"format\":\"pt\"},"
                              "\"weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                              "\"bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}} ";
    const float w[4] = {1, 2, 3, 4}, b[2] = {0.5f, -1};
    nllm_err_t err;
    nllm_st_writer_t *wr = nllm_st_writer_new();
    CHECK(nllm_st_writer_add(wr, "weight", NLLM_ST_F32, 2, (const int64_t[]){2, 2}, w, &err) == 0, "add weight");
    CHECK(nllm_st_writer_add(wr, "bias", NLLM_ST_F32, 1, (const int64_t[]){2}, b, &err) == 0, "add bias");
    CHECK(nllm_st_writer_meta(wr, "format", "pt", &err) == 0, "meta");
    uint64_t xxh = 0, size = 0;
    int rc = nllm_st_writer_save(wr, pjoin("w.safetensors"), &xxh, &size, &err);
    CHECK(rc == 0, "save rc=%d %s", rc, err.msg);
    nllm_st_writer_free(wr);
    size_t len = 0;
    uint8_t *got = slurp(pjoin("w.safetensors"), &len);
    size_t hl = sizeof hdr - 1;
    CHECK(hl == 152, "expected header is %zu bytes", hl);
    CHECK(got && len == 8 + hl + 24 && size == len, "writer size %zu (size_out %llu)", len, (unsigned long long)size);
    if (got && len == 8 + hl + 24) {
        CHECK(got[0] == 152 && got[1] == 0 && got[7] == 0, "writer length prefix");
        CHECK(memcmp(got + 8, hdr, hl) == 0, "writer header: %.*s", (int)hl, got + 8);
        CHECK(memcmp(got + 8 + hl, w, 16) == 0 && memcmp(got + 8 + hl + 16, b, 8) == 0, "writer data");
        CHECK(xxh == XXH64(got, len, 0), "xxh64_out does not match the file");
    }
    free(got);
}

typedef struct {
    const char *name;
    nllm_st_dtype_t dt;
    int ndim;
    int64_t shape[3];
    size_t nbytes;
    const void *data;
} spec_t;

static void test_round_trip(void)
{
    nllm_err_t err;
    float w[6] = {1.5f, -2, 3.25f, 0, 1e-30f, -7};
    double d[3] = {1e300, -0.0, 3.14159};
    int32_t s = 42;
    uint8_t u[5] = {1, 2, 3, 254, 255};
    int64_t i[2] = {-1, INT64_MAX};
    uint16_t h[3] = {0x3f80, 0x4000, 0xbf80}; /* BF16 1, 2, -1 */
    uint8_t bo[1] = {1};
    int16_t i16[3] = {-3, 0, 300};
    spec_t sp[] = {
        {"w", NLLM_ST_F32, 2, {2, 3}, 24, w}, {"d", NLLM_ST_F64, 1, {3}, 24, d},   {"s", NLLM_ST_I32, 0, {0}, 4, &s},
        {"u", NLLM_ST_U8, 1, {5}, 5, u},      {"z", NLLM_ST_F32, 2, {0, 4}, 0, NULL}, {"i", NLLM_ST_I64, 1, {2}, 16, i},
        {"h", NLLM_ST_BF16, 1, {3}, 6, h},    {"b", NLLM_ST_BOOL, 1, {1}, 1, bo}, {"i16", NLLM_ST_I16, 1, {3}, 6, i16},
    };
    const int n = (int)(sizeof sp / sizeof sp[0]);
    nllm_st_writer_t *wr = nllm_st_writer_new();
    for (int k = 0; k < n; k++) {
        int rc = nllm_st_writer_add(wr, sp[k].name, sp[k].dt, sp[k].ndim, sp[k].shape, sp[k].data, &err);
        CHECK(rc == 0, "add %s rc=%d %s", sp[k].name, rc, err.msg);
    }
    CHECK(nllm_st_writer_meta(wr, "format", "pt", &err) == 0, "meta format");
    CHECK(nllm_st_writer_meta(wr, "nllm.step", "1234", &err) == 0, "meta step");
    CHECK(nllm_st_writer_meta(wr, "unicode", "h\xc3\xa9llo \"q\"", &err) == 0, "meta unicode");

    /* streaming: one write for the header and one per non-empty tensor, i.e.
     * the tensors are written from the caller's buffers, not gathered */
    long w0 = nllm_fs_op_count(NLLM_FS_OP_WRITE);
    uint64_t xxh = 0, size = 0;
    const char *path = pjoin("rt.safetensors");
    int rc = nllm_st_writer_save(wr, path, &xxh, &size, &err);
    CHECK(rc == 0, "save rc=%d %s", rc, err.msg);
    CHECK(nllm_fs_op_count(NLLM_FS_OP_WRITE) - w0 == 1 + (n - 1), "write calls %ld",
          nllm_fs_op_count(NLLM_FS_OP_WRITE) - w0);

    /* write_fd with 3-byte short writes gives the same bytes and hash */
    const char *p2 = pjoin("rt2.safetensors");
    int fd = open(p2, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    uint64_t xxh2 = 0, size2 = 0;
    nllm_fs_fault_short_writes(3);
    rc = nllm_st_writer_write_fd(wr, fd, &xxh2, &size2, &err);
    nllm_fs_fault_short_writes(0);
    close(fd);
    CHECK(rc == 0 && xxh2 == xxh && size2 == size, "write_fd rc=%d hash/size differ", rc);
    nllm_st_writer_free(wr);

    size_t len = 0, len2 = 0;
    uint8_t *bytes = slurp(path, &len), *bytes2 = slurp(p2, &len2);
    CHECK(bytes && bytes2 && len == len2 && memcmp(bytes, bytes2, len) == 0, "save and write_fd bytes differ");
    CHECK(len == size && xxh == XXH64(bytes, len, 0), "size/hash of the saved file");
    free(bytes2);

    nllm_st_file_t *f = NULL;
    uint64_t rxxh = 0;
    rc = nllm_st_open(path, &f, &rxxh, &err);
    CHECK(rc == 0, "open rc=%d %s", rc, err.msg);
    if (rc) {
        free(bytes);
        return;
    }
    CHECK(rxxh == xxh, "open xxh64 %llx != %llx", (unsigned long long)rxxh, (unsigned long long)xxh);
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--)
        hlen = hlen << 8 | bytes[k];
    CHECK((8 + hlen) % 8 == 0, "data buffer starts at %llu", (unsigned long long)(8 + hlen));
    CHECK(bytes[8 + hlen - 1] == ' ' || bytes[8 + hlen - 1] == '}', "header padding");
    free(bytes);
    CHECK(nllm_st_count(f) == n, "count %d", nllm_st_count(f));
    for (int k = 0; k < n; k++) {
        const nllm_st_tensor_t *t = nllm_st_find(f, sp[k].name);
        CHECK(t != NULL, "tensor %s missing", sp[k].name);
        if (!t)
            continue;
        CHECK(t->dtype == sp[k].dt && t->ndim == sp[k].ndim, "%s dtype/ndim", sp[k].name);
        for (int j = 0; j < sp[k].ndim; j++)
            CHECK(t->shape[j] == sp[k].shape[j], "%s shape[%d]", sp[k].name, j);
        CHECK(t->end - t->begin == sp[k].nbytes, "%s size", sp[k].name);
        CHECK(sp[k].nbytes == 0 || memcmp(t->data, sp[k].data, sp[k].nbytes) == 0, "%s bytes", sp[k].name);
        size_t es = nllm_st_dtype_size(t->dtype);
        CHECK(t->begin % es == 0 && (uintptr_t)t->data % es == 0, "%s misaligned at %llu", sp[k].name,
              (unsigned long long)t->begin);
    }
    /* 8-byte dtypes first, then 4, 2, 1 -- each group in the order added */
    const char *order[] = {"d", "i", "w", "s", "z", "h", "i16", "u", "b"};
    const uint64_t begins[] = {0, 24, 40, 64, 68, 68, 74, 80, 85};
    for (int k = 0; k < n; k++) {
        const nllm_st_tensor_t *t = nllm_st_at(f, k);
        CHECK(t && strcmp(t->name, order[k]) == 0 && t->begin == begins[k], "layout %d: %s at %llu", k,
              t ? t->name : "?", t ? (unsigned long long)t->begin : 0ULL);
    }
    CHECK(nllm_st_find(f, "nope") == NULL, "find absent");
    CHECK(nllm_st_meta_count(f) == 3, "meta count %d", nllm_st_meta_count(f));
    CHECK(nllm_st_meta(f, "nllm.step") && strcmp(nllm_st_meta(f, "nllm.step"), "1234") == 0, "meta step");
    CHECK(nllm_st_meta(f, "unicode") && strcmp(nllm_st_meta(f, "unicode"), "h\xc3\xa9llo \"q\"") == 0, "meta unicode");
    const char *mk = NULL, *mv = NULL;
    CHECK(nllm_st_meta_at(f, 0, &mk, &mv) == 0 && strcmp(mk, "format") == 0, "meta_at sorted");

    /* typed access */
    const float *fp = NULL;
    rc = nllm_st_get_f32(f, "w", 2, (const int64_t[]){2, 3}, &fp, &err);
    CHECK(rc == 0 && fp && fp[2] == 3.25f, "get_f32 w rc=%d %s", rc, err.msg);
    rc = nllm_st_get_f32(f, "z", 2, (const int64_t[]){0, 4}, &fp, &err);
    CHECK(rc == 0 && fp != NULL, "get_f32 zero-size rc=%d %s", rc, err.msg);
    const void *sv = NULL;
    rc = nllm_st_get(f, "s", NLLM_ST_I32, 0, NULL, &sv, &err);
    CHECK(rc == 0 && sv && *(const int32_t *)sv == 42, "get scalar rc=%d %s", rc, err.msg);

    rc = nllm_st_get_f32(f, "d", 1, (const int64_t[]){3}, &fp, &err);
    CHECK(rc == NLLM_ECORRUPT && fp == NULL, "wrong dtype rc=%d", rc);
    CHECK(strstr(err.msg, "rt.safetensors") && strstr(err.msg, "'d'") && strstr(err.msg, "F64") &&
              strstr(err.msg, "F32"),
          "wrong dtype message: %s", err.msg);
    rc = nllm_st_get_f32(f, "w", 2, (const int64_t[]){3, 2}, &fp, &err);
    CHECK(rc == NLLM_ECORRUPT && strstr(err.msg, "rt.safetensors") && strstr(err.msg, "'w'") &&
              strstr(err.msg, "[2, 3]") && strstr(err.msg, "[3, 2]"),
          "wrong shape rc=%d: %s", rc, err.msg);
    rc = nllm_st_get_f32(f, "w", 1, (const int64_t[]){6}, &fp, &err);
    CHECK(rc == NLLM_ECORRUPT && strstr(err.msg, "[6]") && strstr(err.msg, "[2, 3]"), "wrong ndim rc=%d: %s", rc,
          err.msg);
    rc = nllm_st_get_f32(f, "fnn_layers.0.weight", 2, (const int64_t[]){2, 3}, &fp, &err);
    CHECK(rc == NLLM_ECORRUPT && strstr(err.msg, "fnn_layers.0.weight") && strstr(err.msg, "rt.safetensors"),
          "missing tensor rc=%d: %s", rc, err.msg);
    rc = nllm_st_get_f32(f, "w", 9, (const int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}, &fp, &err);
    CHECK(rc == NLLM_EINVAL, "ndim 9 rc=%d", rc);
    nllm_st_close(f);

    /* empty file: no tensors, no metadata */
    wr = nllm_st_writer_new();
    rc = nllm_st_writer_save(wr, pjoin("empty.safetensors"), NULL, &size, &err);
    CHECK(rc == 0 && size == 16, "empty save rc=%d size=%llu", rc, (unsigned long long)size);
    nllm_st_writer_free(wr);
    rc = nllm_st_open(pjoin("empty.safetensors"), &f, NULL, &err);
    CHECK(rc == 0 && nllm_st_count(f) == 0 && nllm_st_meta_count(f) == 0, "empty open rc=%d %s", rc, err.msg);
    nllm_st_close(f);
}

/* ----------------------------------------------------------- corruption */

static uint8_t *make_file(const char *hdr, size_t data_len, size_t *len)
{
    size_t h = strlen(hdr);
    uint8_t *b = malloc(8 + h + data_len + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, hdr, h);
    for (size_t i = 0; i < data_len; i++)
        b[8 + h + i] = (uint8_t)i;
    *len = 8 + h + data_len;
    return b;
}

static void expect_corrupt(const uint8_t *b, size_t len, const char *label, const char *want, const char *what)
{
    nllm_err_t err;
    nllm_err_clear(&err);
    nllm_st_file_t *f = (nllm_st_file_t *)0x1;
    int rc = nllm_st_parse(b, len, label, &f, &err);
    CHECK(rc == NLLM_ECORRUPT, "%s: rc=%d (%s)", what, rc, nllm_err_name(rc));
    CHECK(f == NULL, "%s: out not cleared", what);
    CHECK(err.code == rc && strstr(err.msg, label) != NULL, "%s: message lacks label: %s", what, err.msg);
    if (want)
        CHECK(strstr(err.msg, want) != NULL, "%s: message lacks '%s': %s", what, want, err.msg);
    if (rc == 0)
        nllm_st_close(f);
}

static void test_truncation(void)
{
    char label[64];
    for (size_t n = 0; n < sizeof ref_file; n++) {
        snprintf(label, sizeof label, "trunc%zu.safetensors", n);
        expect_corrupt(ref_file, n, label, NULL, label);
    }
    /* also through nllm_st_open on disk */
    const size_t cuts[] = {0, 7, 8, 100, 8 + 152, 8 + 152 + 23};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        const char *p = pjoin("cut.safetensors");
        spit(p, ref_file, cuts[k]);
        nllm_err_t err;
        nllm_st_file_t *f = NULL;
        int rc = nllm_st_open(p, &f, NULL, &err);
        CHECK(rc == NLLM_ECORRUPT && f == NULL && strstr(err.msg, "cut.safetensors"), "open cut %zu: rc=%d %s",
              cuts[k], rc, err.msg);
    }
    /* trailing garbage after the last tensor */
    uint8_t longer[sizeof ref_file + 1];
    memcpy(longer, ref_file, sizeof ref_file);
    longer[sizeof ref_file] = 0;
    expect_corrupt(longer, sizeof longer, "long.safetensors", "trailing", "extra byte");
}

static void test_flips(void)
{
    const uint8_t masks[] = {0x01, 0x20, 0x80, 0xff};
    uint8_t b[sizeof ref_file];
    int failed = 0, total = 0;
    for (size_t i = 0; i < 8 + 152; i++)
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(b, ref_file, sizeof b);
            b[i] ^= masks[m];
            nllm_err_t err;
            nllm_err_clear(&err);
            nllm_st_file_t *f = NULL;
            int rc = nllm_st_parse(b, sizeof b, "flip.safetensors", &f, &err);
            total++;
            /* Some flips still give a valid file (a letter of a name, a
             * metadata value); those are what the catalog's XXH64 catches. */
            CHECK(rc == 0 || rc == NLLM_ECORRUPT, "flip %zu^%02x: rc=%d", i, masks[m], rc);
            if (rc == 0) {
                nllm_st_close(f);
            } else {
                failed++;
                CHECK(strstr(err.msg, "flip.safetensors") != NULL, "flip %zu: message %s", i, err.msg);
            }
        }
    CHECK(failed > total / 2, "only %d of %d flips detected", failed, total);
    /* flips that must be caught */
    const size_t must[] = {0, 3, 7, 8 /* '{' */, 8 + 82 /* '0' of bias offsets */, 8 + 148 /* last '}' */};
    for (size_t k = 0; k < sizeof must / sizeof must[0]; k++) {
        memcpy(b, ref_file, sizeof b);
        b[must[k]] ^= 0x01;
        char what[64];
        snprintf(what, sizeof what, "flip of byte %zu", must[k]);
        expect_corrupt(b, sizeof b, "flip.safetensors", NULL, what);
    }
}

static void test_bad_headers(void)
{
    static const struct {
        const char *hdr;
        size_t data;
        const char *want;
    } cases[] = {
        {"{\"a\":", 0, "not valid JSON"},
        {"[]      ", 0, "header does not start"},
        {" {}     ", 0, "header does not start"},
        {"{} x", 0, "not valid JSON"},
        {"{\"a\":1}", 0, "not a JSON object"},
        {"{\"a\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'F31'"},
        {"{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype is not a string"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "lacks field 'dtype'"},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "lacks field 'shape'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "lacks field 'data_offsets'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4, "unknown field 'x'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4, "shape is not an array"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,4]}}", 4, "overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "9 dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4, "data_offsets is not"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets is not"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "data_offsets is not"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", 4, "data_offsets is not"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4, "begin 4 > end 0"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 4, "past the data buffer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "needs 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
         12, "hole before 'b'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "hole before 'a'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "trailing"},
        {"{}", 1, "trailing"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, "duplicate"},
        {"{\"__metadata__\":[],\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "__metadata__"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value of 'k'"},
        {"{\"__metadata__\":{\"k\":{}}}", 0, "__metadata__ value of 'k'"},
        {"{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "duplicate"},
        {"{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
         "tensor name \"a\\u0000b\" contains a NUL byte"},
        /* a NUL would end the name at "__metadata__": still a tensor name, refused */
        {"{\"__metadata__\\u0000x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
         "tensor name \"__metadata__\\u0000x\" contains a NUL byte"},
        /* metadata keys "a\0b" and "a" would both read back as "a" */
        {"{\"__metadata__\":{\"a\\u0000b\":\"1\",\"a\":\"2\"}}", 0,
         "__metadata__ key \"a\\u0000b\" contains a NUL byte"},
        {"{\"__metadata__\":{\"\\u0000\":\"1\"}}", 0, "__metadata__ key \"\\u0000\" contains a NUL byte"},
        {"{\"__metadata__\":{\"k\\u0000\":\"1\"}}", 0, "__metadata__ key \"k\\u0000\" contains a NUL byte"},
        {"{\"__metadata__\":{\"a\\nb\\u0000\":\"1\"}}", 0, "__metadata__ key \"a\\nb\\u0000\" contains a NUL byte"},
        {"{\"__metadata__\":{\"k\":\"v\\u0000w\"}}", 0, "__metadata__ value of \"k\" contains a NUL byte"},
        {"{\"\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "not valid JSON"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,18446744073709551616]}}", 1, NULL},
    };
    char label[64];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t len;
        uint8_t *b = make_file(cases[k].hdr, cases[k].data, &len);
        snprintf(label, sizeof label, "case%zu.safetensors", k);
        char what[600];
        snprintf(what, sizeof what, "case %zu (%s)", k, cases[k].hdr);
        expect_corrupt(b, len, label, cases[k].want, what);
        free(b);
    }
    /* a name of 1025 bytes is refused, 1024 accepted */
    for (int extra = 0; extra < 2; extra++) {
        size_t nl = 1024 + (size_t)extra;
        char *hdr = malloc(nl + 128);
        hdr[0] = '{';
        hdr[1] = '"';
        memset(hdr + 2, 'n', nl);
        strcpy(hdr + 2 + nl, "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}");
        size_t len;
        uint8_t *b = make_file(hdr, 1, &len);
        if (extra) {
            expect_corrupt(b, len, "longname.safetensors", "longer than 1024", "1025-byte name");
        } else {
            nllm_err_t err;
            nllm_st_file_t *f = NULL;
            int rc = nllm_st_parse(b, len, "name1024", &f, &err);
            CHECK(rc == 0, "1024-byte name rc=%d %s", rc, err.msg);
            nllm_st_close(f);
        }
        free(b);
        free(hdr);
    }
    /* a metadata key of 1025 bytes is refused, 1024 accepted (as the writer) */
    for (int extra = 0; extra < 2; extra++) {
        size_t nl = 1024 + (size_t)extra;
        char *hdr = malloc(nl + 64);
        strcpy(hdr, "{\"__metadata__\":{\"");
        size_t pre = strlen(hdr);
        memset(hdr + pre, 'k', nl);
        strcpy(hdr + pre + nl, "\":\"v\"}}");
        size_t len;
        uint8_t *b = make_file(hdr, 0, &len);
        if (extra) {
            expect_corrupt(b, len, "longkey.safetensors", "longer than 1024", "1025-byte metadata key");
        } else {
            nllm_err_t err;
            nllm_st_file_t *f = NULL;
            int rc = nllm_st_parse(b, len, "key1024", &f, &err);
            CHECK(rc == 0 && nllm_st_meta_count(f) == 1, "1024-byte metadata key rc=%d %s", rc, err.msg);
            nllm_st_close(f);
        }
        free(b);
        free(hdr);
    }
    /* header length field beyond the file and beyond the 100 MB limit */
    uint8_t b[64];
    memcpy(b, ref_file, sizeof b);
    b[0] = 0xff;
    b[1] = 0x00;
    expect_corrupt(b, sizeof b, "hl.safetensors", "larger than the 56 bytes", "header len > file");
    memset(b, 0, 8);
    uint64_t big = 100000001;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(big >> (8 * i));
    expect_corrupt(b, sizeof b, "hl2.safetensors", "limit", "header len > 100 MB");
    memset(b, 0xff, 8);
    expect_corrupt(b, sizeof b, "hl3.safetensors", "limit", "header len 2^64-1");
    memset(b, 0, 8);
    expect_corrupt(b, sizeof b, "hl4.safetensors", "does not start", "header len 0");

    /* zero-size tensors may share an offset; they do not overlap */
    size_t len;
    uint8_t *zb = make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                            "\"b\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
                            "\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                            2, &len);
    nllm_err_t err;
    nllm_st_file_t *f = NULL;
    int rc = nllm_st_parse(zb, len, "zeros", &f, &err);
    CHECK(rc == 0 && nllm_st_count(f) == 3, "shared zero-size offsets rc=%d %s", rc, err.msg);
    nllm_st_close(f);
    free(zb);

    /* misaligned F32 (valid file, but get_f32 refuses it) */
    zb = make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]}}",
                   5, &len);
    rc = nllm_st_parse(zb, len, "misaligned", &f, &err);
    CHECK(rc == 0, "misaligned parse rc=%d %s", rc, err.msg);
    if (rc == 0) {
        const float *fp;
        rc = nllm_st_get_f32(f, "b", 1, (const int64_t[]){1}, &fp, &err);
        CHECK(rc == NLLM_ECORRUPT && strstr(err.msg, "misaligned") && strstr(err.msg, "'b'"),
              "misaligned get rc=%d %s", rc, err.msg);
        nllm_st_close(f);
    }
    free(zb);

    /* open errors */
    rc = nllm_st_open(pjoin("absent.safetensors"), &f, NULL, &err);
    CHECK(rc == NLLM_ENOENT && f == NULL && strstr(err.msg, "absent.safetensors"), "open absent rc=%d", rc);
}

static void test_writer_errors(void)
{
    nllm_err_t err;
    float x[2] = {0};
    nllm_st_writer_t *w = nllm_st_writer_new();
    const int64_t s2[] = {2}, neg[] = {-2};
    CHECK(nllm_st_writer_add(w, "x", NLLM_ST_F32, 1, s2, x, &err) == 0, "add x");
    CHECK(nllm_st_writer_add(w, "x", NLLM_ST_F32, 1, s2, x, &err) == NLLM_EINVAL && strstr(err.msg, "'x'"),
          "duplicate: %s", err.msg);
    CHECK(nllm_st_writer_add(w, "y", NLLM_ST_F32, 1, neg, x, &err) == NLLM_EINVAL, "negative dim");
    CHECK(nllm_st_writer_add(w, "y", NLLM_ST_F32, 9, s2, x, &err) == NLLM_EINVAL, "ndim 9");
    CHECK(nllm_st_writer_add(w, "y", NLLM_ST_F32, 1, s2, NULL, &err) == NLLM_EINVAL, "NULL data");
    CHECK(nllm_st_writer_add(w, "y", (nllm_st_dtype_t)99, 1, s2, x, &err) == NLLM_EINVAL, "bad dtype");
    CHECK(nllm_st_writer_add(w, "__metadata__", NLLM_ST_F32, 1, s2, x, &err) == NLLM_EINVAL, "reserved name");
    CHECK(nllm_st_writer_add(w, "", NLLM_ST_F32, 1, s2, x, &err) == NLLM_EINVAL, "empty name");
    CHECK(nllm_st_writer_add(w, "bad\xff", NLLM_ST_F32, 1, s2, x, &err) == NLLM_EINVAL, "invalid UTF-8 name");
    const int64_t huge[] = {INT64_MAX, 4};
    CHECK(nllm_st_writer_add(w, "y", NLLM_ST_F32, 2, huge, x, &err) == NLLM_EINVAL, "overflowing shape");
    CHECK(nllm_st_writer_meta(w, "k", "v", &err) == 0, "meta");
    CHECK(nllm_st_writer_meta(w, "k", "v2", &err) == NLLM_EINVAL, "duplicate meta");
    /* keys the reader would refuse are refused here too (a NUL cannot reach
     * the writer: its keys are C strings, so "a\0b" is the key "a") */
    CHECK(nllm_st_writer_meta(w, "a\0b", "v", &err) == 0 && nllm_st_writer_meta(w, "a", "v", &err) == NLLM_EINVAL,
          "\"a\\0b\" is the key \"a\"");
    CHECK(nllm_st_writer_meta(w, "bad\xff", "v", &err) == NLLM_EINVAL, "invalid UTF-8 key");
    CHECK(nllm_st_writer_meta(w, "k2", "bad\xff", &err) == NLLM_EINVAL, "invalid UTF-8 value");
    {
        char key[1026];
        memset(key, 'k', 1025);
        key[1025] = '\0';
        CHECK(nllm_st_writer_meta(w, key, "v", &err) == NLLM_EINVAL && strstr(err.msg, "1024"),
              "1025-byte metadata key: %s", err.msg);
        key[1024] = '\0';
        CHECK(nllm_st_writer_meta(w, key, "v", &err) == 0, "1024-byte metadata key: %s", err.msg);
    }

    /* a full disk while saving: ENOSPC, previous file intact, no temp */
    const char *p = pjoin("full.safetensors");
    CHECK(nllm_st_writer_save(w, p, NULL, NULL, &err) == 0, "first save %s", err.msg);
    size_t l0, l1;
    uint8_t *before = slurp(p, &l0);
    CHECK(nllm_st_writer_add(w, "y", NLLM_ST_F32, 1, s2, x, &err) == 0, "add y");
    nllm_fs_fault_set(NLLM_FS_OP_WRITE, 2, ENOSPC); /* header ok, first tensor fails */
    int rc = nllm_st_writer_save(w, p, NULL, NULL, &err);
    CHECK(rc == NLLM_ENOSPC && strstr(err.msg, "full.safetensors") && strstr(err.msg, "tensor"), "ENOSPC save rc=%d %s",
          rc, err.msg);
    nllm_fs_fault_clear_all();
    uint8_t *after = slurp(p, &l1);
    CHECK(before && after && l0 == l1 && memcmp(before, after, l0) == 0, "previous file changed");
    free(before);
    free(after);
    int removed = -1;
    CHECK(nllm_fs_remove_temp_files(root, &removed, &err) == 0 && removed == 0, "temp files left: %d", removed);
    nllm_st_writer_free(w);
    nllm_st_writer_free(NULL);
    nllm_st_close(NULL);
}

static void rm_rf(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        printf("note: could not remove %s\n", root);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/nllm_st_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root)) {
        printf("SKIP: cannot create a temp folder: %s\n", strerror(errno));
        return 77;
    }
    test_reference_bytes();
    test_writer_bytes();
    test_round_trip();
    test_truncation();
    test_flips();
    test_bad_headers();
    test_writer_errors();
    rm_rf();
    if (failures)
        printf("%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
