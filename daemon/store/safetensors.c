/* safetensors.c -- strict safetensors reader and streaming writer.
 *
 * Reader invariant: a nllm_st_file_t exists only for bytes that passed every
 * check (JSON header, dtypes, shapes, offsets covering the data buffer exactly
 * once); its data buffer is a 64-byte aligned copy, so tensors whose offsets
 * are multiples of their element size are naturally aligned in memory.
 * Writer invariant: bytes are streamed from the caller's buffers, never copied.
 * Callers: see safetensors.h.
 */
#ifndef _GNU_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#endif
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "fsutil.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "nllm safetensors I/O assumes a little-endian host (tensor data is stored little-endian)"
#endif
_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE float sizes expected");

static const struct {
    const char *name;
    size_t size;
} dtypes[NLLM_ST_DTYPE_COUNT_] = {
    [NLLM_ST_F32] = {"F32", 4},         [NLLM_ST_F64] = {"F64", 8},         [NLLM_ST_F16] = {"F16", 2},
    [NLLM_ST_BF16] = {"BF16", 2},       [NLLM_ST_I64] = {"I64", 8},         [NLLM_ST_I32] = {"I32", 4},
    [NLLM_ST_I16] = {"I16", 2},         [NLLM_ST_I8] = {"I8", 1},           [NLLM_ST_U8] = {"U8", 1},
    [NLLM_ST_BOOL] = {"BOOL", 1},       [NLLM_ST_U16] = {"U16", 2},         [NLLM_ST_U32] = {"U32", 4},
    [NLLM_ST_U64] = {"U64", 8},         [NLLM_ST_F8_E4M3] = {"F8_E4M3", 1}, [NLLM_ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *nllm_st_dtype_name(nllm_st_dtype_t dt)
{
    return (unsigned)dt < NLLM_ST_DTYPE_COUNT_ ? dtypes[dt].name : NULL;
}

size_t nllm_st_dtype_size(nllm_st_dtype_t dt)
{
    return (unsigned)dt < NLLM_ST_DTYPE_COUNT_ ? dtypes[dt].size : 0;
}

static int dtype_from_name(const char *s, nllm_st_dtype_t *out)
{
    for (int i = 0; i < NLLM_ST_DTYPE_COUNT_; i++)
        if (strcmp(dtypes[i].name, s) == 0) {
            *out = (nllm_st_dtype_t)i;
            return 0;
        }
    return -1;
}

/* Bytes of a tensor of this shape, or -1 on overflow / negative dim. */
static int shape_bytes(nllm_st_dtype_t dt, int ndim, const int64_t *shape, uint64_t *out)
{
    uint64_t n = dtypes[dt].size;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, (uint64_t)shape[i], &n))
            return -1;
    }
    *out = n;
    return 0;
}

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
}

/* ------------------------------------------------------------------ reader */

struct nllm_st_file {
    char *label;
    int n;
    nllm_st_tensor_t *t; /* sorted by (begin, end, name) */
    int *by_name;        /* indices into t sorted by name */
    int nmeta;
    char **meta;         /* key0, value0, key1, value1, ... sorted by key */
    uint8_t *data;       /* 64-byte aligned copy of the data buffer */
    uint64_t data_len;
};

__attribute__((format(printf, 3, 4))) static int corrupt(nllm_err_t *err, const char *label, const char *fmt, ...)
{
    char msg[NLLM_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return nllm_err_set(err, NLLM_ECORRUPT, "safetensors file %s: %s; the file is damaged or not a safetensors file",
                        label, msg);
}

static uint8_t *alloc_data(uint64_t len)
{
    uint64_t sz = (len + 63) & ~(uint64_t)63;
    if (sz == 0)
        sz = 64;
    if (len > SIZE_MAX - 64)
        return NULL;
    return aligned_alloc(64, (size_t)sz);
}

void nllm_st_close(nllm_st_file_t *f)
{
    if (!f)
        return;
    if (f->t)
        for (int i = 0; i < f->n; i++)
            free((char *)f->t[i].name);
    if (f->meta)
        for (int i = 0; i < 2 * f->nmeta; i++)
            free(f->meta[i]);
    free(f->t);
    free(f->by_name);
    free(f->meta);
    free(f->data);
    free(f->label);
    free(f);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const nllm_st_tensor_t *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}


static int cmp_index_name(const void *a, const void *b, void *ctx)
{
    const nllm_st_tensor_t *t = ctx;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

static void sort_by_name(int *idx, int n, const nllm_st_tensor_t *t)
{
    /* O(n log n): a hostile header may list a million tensors */
    qsort_r(idx, (size_t)n, sizeof *idx, cmp_index_name, (void *)t);
}

static int cmp_meta(const void *a, const void *b)
{
    const char *const *x = a, *const *y = b;
    return strcmp(x[0], y[0]);
}

static char *dupstr(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

static int json_i64(json_t *v, int64_t *out)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0)
        return -1;
    *out = (int64_t)x;
    return 0;
}

static int parse_entry(const char *label, const char *name, json_t *v, uint64_t data_len, nllm_st_tensor_t *t,
                       nllm_err_t *err)
{
    if (!json_is_object(v))
        return corrupt(err, label, "entry '%s' is not a JSON object", name);
    json_t *jd = NULL, *js = NULL, *jo = NULL;
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        if (strcmp(k, "dtype") == 0)
            jd = x;
        else if (strcmp(k, "shape") == 0)
            js = x;
        else if (strcmp(k, "data_offsets") == 0)
            jo = x;
        else
            return corrupt(err, label, "tensor '%s' has unknown field '%.64s'", name, k);
    }
    if (!jd || !js || !jo)
        return corrupt(err, label, "tensor '%s' lacks field '%s'", name,
                       !jd ? "dtype" : !js ? "shape" : "data_offsets");
    if (!json_is_string(jd))
        return corrupt(err, label, "tensor '%s': dtype is not a string", name);
    if (dtype_from_name(json_string_value(jd), &t->dtype) != 0)
        return corrupt(err, label, "tensor '%s' has unknown dtype '%.32s'", name, json_string_value(jd));
    if (!json_is_array(js))
        return corrupt(err, label, "tensor '%s': shape is not an array", name);
    size_t nd = json_array_size(js);
    if (nd > NLLM_ST_MAX_DIMS)
        return corrupt(err, label, "tensor '%s' has %zu dimensions, more than the %d supported", name, nd,
                       NLLM_ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++)
        if (json_i64(json_array_get(js, i), &t->shape[i]) != 0)
            return corrupt(err, label, "tensor '%s': shape[%zu] is not a non-negative integer", name, i);
    uint64_t nbytes;
    if (shape_bytes(t->dtype, t->ndim, t->shape, &nbytes) != 0)
        return corrupt(err, label, "tensor '%s': the size of its shape overflows 64 bits", name);
    int64_t b, e;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || json_i64(json_array_get(jo, 0), &b) != 0 ||
        json_i64(json_array_get(jo, 1), &e) != 0)
        return corrupt(err, label, "tensor '%s': data_offsets is not [begin, end] with non-negative integers", name);
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e;
    if (t->begin > t->end)
        return corrupt(err, label, "tensor '%s': data_offsets begin %llu > end %llu", name,
                       (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > data_len)
        return corrupt(err, label, "tensor '%s': data_offsets end %llu is past the data buffer (%llu bytes)", name,
                       (unsigned long long)t->end, (unsigned long long)data_len);
    if (t->end - t->begin != nbytes)
        return corrupt(err, label, "tensor '%s': data_offsets span %llu bytes but %s shape needs %llu", name,
                       (unsigned long long)(t->end - t->begin), dtypes[t->dtype].name, (unsigned long long)nbytes);
    return 0;
}

/* The JSON text of the string token h[b..e) (quotes included) for a message:
 * printable ASCII as is, any other byte as \xHH, at most 80 bytes. */
static void show_token(char *out, size_t cap, const uint8_t *h, size_t b, size_t e)
{
    size_t k = 0;
    for (size_t i = b; i < e && k + 8 < cap; i++) {
        if (i - b == 80) {
            k += (size_t)snprintf(out + k, cap - k, "...");
            break;
        }
        if (h[i] >= 0x20 && h[i] < 0x7f)
            out[k++] = (char)h[i];
        else
            k += (size_t)snprintf(out + k, cap - k, "\\x%02x", h[i]);
    }
    out[k] = '\0';
}

/* Names, metadata keys and values are C strings here and in the writer, so a
 * NUL in one (JSON "\u0000"; a raw control byte is invalid JSON) would cut it
 * short -- "a\u0000b" would read back as the key "a" and collide with it --
 * and could never be written back. Refuse such a header, naming the string,
 * before jansson sees it (whether jansson's parser accepts a NUL in a key
 * differs between its versions). One pass over the header; a header that is
 * not valid JSON is left to jansson. Every other string jansson decodes
 * (valid UTF-8) the writer writes back unchanged. */
static int refuse_nul(const char *label, const uint8_t *h, size_t n, nllm_err_t *err)
{
    char stack[64];     /* '{' or '[' of each open container */
    int depth = 0;
    int meta = -1;      /* depth of the __metadata__ object while inside it */
    uint8_t prev = 0;   /* last byte outside strings and whitespace */
    size_t kb = 0, ke = 0; /* the last object key seen */
    for (size_t i = 0; i < n; i++) {
        uint8_t c = h[i];
        if (c == '"') {
            size_t b = i;
            int nul = 0;
            for (i++; i < n && h[i] != '"'; i++)
                if (h[i] == '\\' && i + 1 < n) {
                    nul |= h[i + 1] == 'u' && i + 5 < n && memcmp(h + i + 2, "0000", 4) == 0;
                    i++;
                }
            if (i >= n)
                return 0;
            size_t e = i + 1;
            int is_key = depth > 0 && stack[depth - 1] == '{' && (prev == '{' || prev == ',');
            if (nul) {
                char s[400], k[400];
                show_token(s, sizeof s, h, b, e);
                if (is_key && depth == 1)
                    return corrupt(err, label, "tensor name %s contains a NUL byte; names, metadata keys and values "
                                   "cannot hold NUL", s);
                if (is_key && depth == meta)
                    return corrupt(err, label, "__metadata__ key %s contains a NUL byte; names, metadata keys and "
                                   "values cannot hold NUL", s);
                if (!is_key && depth == meta && ke > kb) {
                    show_token(k, sizeof k, h, kb, ke);
                    return corrupt(err, label, "__metadata__ value of %s contains a NUL byte (%s); names, metadata "
                                   "keys and values cannot hold NUL", k, s);
                }
                return corrupt(err, label, "%s %s at byte %zu of the header contains a NUL byte", is_key ? "key" : "string",
                               s, b);
            }
            if (is_key) {
                kb = b;
                ke = e;
            }
            prev = '"';
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            continue;
        if (c == '{' || c == '[') {
            if (depth == (int)sizeof stack)
                return 0; /* deeper than any safetensors header: jansson decides */
            if (c == '{' && depth == 1 && prev == ':' && ke - kb == 14 && memcmp(h + kb, "\"__metadata__\"", 14) == 0)
                meta = depth + 1;
            stack[depth++] = (char)c;
        } else if ((c == '}' || c == ']') && depth > 0) {
            if (meta == depth)
                meta = -1;
            depth--;
        }
        prev = c;
    }
    return 0;
}

/* Validate header (hdr, hlen) against a data buffer of data_len bytes; takes
 * ownership of data (freed on failure). */
static int build(const char *label, const uint8_t *hdr, uint64_t hlen, uint8_t *data, uint64_t data_len,
                 nllm_st_file_t **out, nllm_err_t *err)
{
    *out = NULL;
    nllm_st_file_t *f = calloc(1, sizeof *f);
    json_t *root = NULL;
    int rc;
    if (!f || !(f->label = dupstr(label))) {
        free(data);
        if (f)
            free(f);
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory reading safetensors file %s", label);
    }
    f->data = data;
    f->data_len = data_len;
    if (hlen == 0 || hdr[0] != '{') {
        rc = corrupt(err, label, "header does not start with '{'");
        goto fail;
    }
    if ((rc = refuse_nul(label, hdr, hlen, err)))
        goto fail;
    json_error_t je;
    root = json_loadb((const char *)hdr, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        rc = corrupt(err, label, "header is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = corrupt(err, label, "header is not a JSON object");
        goto fail;
    }
    json_t *meta = json_object_get(root, "__metadata__");
    size_t nt = json_object_size(root) - (meta ? 1 : 0);
    if (nt > (size_t)(1 << 24)) {
        rc = corrupt(err, label, "header lists %zu tensors, too many", nt);
        goto fail;
    }
    f->t = calloc(nt ? nt : 1, sizeof *f->t);
    f->by_name = calloc(nt ? nt : 1, sizeof *f->by_name);
    if (!f->t || !f->by_name) {
        rc = nllm_err_set(err, NLLM_ENOMEM, "out of memory reading safetensors file %s", label);
        goto fail;
    }
    if (meta) {
        if (!json_is_object(meta)) {
            rc = corrupt(err, label, "__metadata__ is not an object of strings");
            goto fail;
        }
        size_t nm = json_object_size(meta);
        f->meta = calloc(2 * nm + 1, sizeof *f->meta);
        if (!f->meta) {
            rc = nllm_err_set(err, NLLM_ENOMEM, "out of memory reading safetensors file %s", label);
            goto fail;
        }
        for (void *mi = json_object_iter(meta); mi; mi = json_object_iter_next(meta, mi)) {
            const char *k = json_object_iter_key(mi);
            json_t *v = json_object_iter_value(mi);
#if JANSSON_VERSION_HEX >= 0x020e00
            size_t klen = json_object_iter_key_len(mi);
#else
            size_t klen = strlen(k);
#endif
            /* refuse_nul already refused these; kept so that a key is never cut short */
            if (klen != strlen(k)) {
                rc = corrupt(err, label, "__metadata__ key '%.64s...' contains a NUL byte", k);
                goto fail;
            }
            if (klen > NLLM_ST_MAX_NAME) {
                rc = corrupt(err, label, "__metadata__ key '%.40s...' is %zu bytes, longer than %d", k, klen,
                             NLLM_ST_MAX_NAME);
                goto fail;
            }
            if (!json_is_string(v)) {
                rc = corrupt(err, label, "__metadata__ value of '%.64s' is not a string", k);
                goto fail;
            }
            if (strlen(json_string_value(v)) != json_string_length(v)) {
                rc = corrupt(err, label, "__metadata__ value of '%.64s' contains a NUL byte", k);
                goto fail;
            }
            f->meta[2 * f->nmeta] = dupstr(k);
            f->meta[2 * f->nmeta + 1] = dupstr(json_string_value(v));
            f->nmeta++;
            if (!f->meta[2 * f->nmeta - 2] || !f->meta[2 * f->nmeta - 1]) {
                rc = nllm_err_set(err, NLLM_ENOMEM, "out of memory reading safetensors file %s", label);
                goto fail;
            }
        }
        qsort(f->meta, (size_t)f->nmeta, 2 * sizeof *f->meta, cmp_meta);
    }
    void *it;
    for (it = json_object_iter(root); it; it = json_object_iter_next(root, it)) {
        const char *name = json_object_iter_key(it);
#if JANSSON_VERSION_HEX >= 0x020e00
        size_t nlen = json_object_iter_key_len(it);
#else
        size_t nlen = strlen(name); /* older jansson cannot hold NUL in keys */
#endif
        if (nlen != strlen(name)) { /* before the __metadata__ test: "__metadata__\0x" is a tensor name */
            rc = corrupt(err, label, "tensor name '%.64s...' contains a NUL byte", name);
            goto fail;
        }
        if (strcmp(name, "__metadata__") == 0)
            continue;
        if (nlen > NLLM_ST_MAX_NAME) {
            rc = corrupt(err, label, "tensor name '%.40s...' is %zu bytes, longer than %d", name, nlen,
                         NLLM_ST_MAX_NAME);
            goto fail;
        }
        nllm_st_tensor_t *t = &f->t[f->n];
        rc = parse_entry(label, name, json_object_iter_value(it), data_len, t, err);
        if (rc)
            goto fail;
        if (!(t->name = dupstr(name))) {
            rc = nllm_err_set(err, NLLM_ENOMEM, "out of memory reading safetensors file %s", label);
            goto fail;
        }
        f->n++;
    }
    json_decref(root);
    root = NULL;

    /* The tensors must tile the data buffer: sorted ranges contiguous from 0
     * to data_len, no overlap, no hole. */
    qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_tensor_offset);
    uint64_t pos = 0;
    for (int i = 0; i < f->n; i++) {
        nllm_st_tensor_t *t = &f->t[i];
        if (t->begin < pos) {
            rc = corrupt(err, label, "tensor '%s' (bytes %llu..%llu) overlaps tensor '%s' (ends at %llu)", t->name,
                         (unsigned long long)t->begin, (unsigned long long)t->end, f->t[i - 1].name,
                         (unsigned long long)pos);
            goto fail;
        }
        if (t->begin > pos) {
            rc = corrupt(err, label, "bytes %llu..%llu of the data buffer belong to no tensor (hole before '%s')",
                         (unsigned long long)pos, (unsigned long long)t->begin, t->name);
            goto fail;
        }
        pos = t->end;
        t->data = f->data + t->begin;
    }
    if (pos != data_len) {
        rc = corrupt(err, label, "bytes %llu..%llu of the data buffer belong to no tensor (trailing bytes)",
                     (unsigned long long)pos, (unsigned long long)data_len);
        goto fail;
    }
    for (int i = 0; i < f->n; i++)
        f->by_name[i] = i;
    sort_by_name(f->by_name, f->n, f->t);
    *out = f;
    return 0;
fail:
    json_decref(root);
    nllm_st_close(f);
    return rc;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int check_prefix(const char *label, uint64_t file_len, uint64_t hlen, nllm_err_t *err)
{
    if (hlen > NLLM_ST_MAX_HEADER)
        return corrupt(err, label, "header length %llu is larger than the %u byte limit", (unsigned long long)hlen,
                       NLLM_ST_MAX_HEADER);
    if (hlen > file_len - 8)
        return corrupt(err, label, "header length %llu is larger than the %llu bytes after the length field",
                       (unsigned long long)hlen, (unsigned long long)(file_len - 8));
    return 0;
}

int nllm_st_parse(const uint8_t *buf, size_t len, const char *label, nllm_st_file_t **out, nllm_err_t *err)
{
    if (!out)
        return nllm_err_set(err, NLLM_EINVAL, "nllm_st_parse: out is NULL");
    *out = NULL;
    if (!label)
        label = "(buffer)";
    if (!buf && len)
        return nllm_err_set(err, NLLM_EINVAL, "nllm_st_parse %s: buffer is NULL", label);
    if (len < 8)
        return corrupt(err, label, "file is %zu bytes, shorter than the 8-byte header length", len);
    uint64_t hlen = le64(buf);
    int rc = check_prefix(label, len, hlen, err);
    if (rc)
        return rc;
    uint64_t dlen = len - 8 - hlen;
    uint8_t *data = alloc_data(dlen);
    if (!data)
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory reading safetensors file %s", label);
    if (dlen)
        memcpy(data, buf + 8 + hlen, (size_t)dlen);
    return build(label, buf + 8, hlen, data, dlen, out, err);
}

/* Read exactly n bytes; early EOF -> NLLM_ECORRUPT (file changed size). */
static int read_exact(int fd, void *buf, size_t n, const char *path, XXH64_state_t *h, nllm_err_t *err)
{
    uint8_t *p = buf;
    size_t left = n;
    while (left) {
        ssize_t r = read(fd, p, left > ((size_t)1 << 30) ? (size_t)1 << 30 : left);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            return nllm_err_set(err, NLLM_EIO, "reading safetensors file %s: %s; check the disk", path, strerror(e));
        }
        if (r == 0)
            return corrupt(err, path, "file ended early while being read (it changed size)");
        p += r;
        left -= (size_t)r;
    }
    XXH64_update(h, buf, n);
    return 0;
}

int nllm_st_open(const char *path, nllm_st_file_t **out, uint64_t *xxh64_out, nllm_err_t *err)
{
    if (!out || !path)
        return nllm_err_set(err, NLLM_EINVAL, "nllm_st_open: path and out are required");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return nllm_err_set(err, e == ENOENT ? NLLM_ENOENT : NLLM_EIO, "cannot open safetensors file %s: %s; %s", path,
                            strerror(e), e == ENOENT ? "check the path" : "check its permissions and the disk");
    }
    uint8_t *hdr = NULL, *data = NULL;
    XXH64_state_t *h = XXH64_createState();
    int rc;
    struct stat st;
    if (!h) {
        rc = nllm_err_set(err, NLLM_ENOMEM, "out of memory reading %s", path);
        goto out;
    }
    XXH64_reset(h, 0);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = nllm_err_set(err, NLLM_EIO, "safetensors file %s is not a readable regular file", path);
        goto out;
    }
    uint64_t flen = (uint64_t)st.st_size;
    if (flen < 8) {
        rc = corrupt(err, path, "file is %llu bytes, shorter than the 8-byte header length", (unsigned long long)flen);
        goto out;
    }
    uint8_t pre[8];
    if ((rc = read_exact(fd, pre, 8, path, h, err)))
        goto out;
    uint64_t hlen = le64(pre);
    if ((rc = check_prefix(path, flen, hlen, err)))
        goto out;
    uint64_t dlen = flen - 8 - hlen;
    hdr = malloc(hlen ? (size_t)hlen : 1);
    data = alloc_data(dlen);
    if (!hdr || !data || dlen > SIZE_MAX) {
        rc = nllm_err_set(err, NLLM_ENOMEM, "out of memory reading safetensors file %s (%llu bytes)", path,
                          (unsigned long long)flen);
        goto out;
    }
    if ((rc = read_exact(fd, hdr, (size_t)hlen, path, h, err)) || (rc = read_exact(fd, data, (size_t)dlen, path, h, err)))
        goto out;
    uint8_t extra;
    ssize_t r;
    while ((r = read(fd, &extra, 1)) < 0 && errno == EINTR)
        ;
    if (r != 0) {
        rc = nllm_err_set(err, NLLM_EIO, "safetensors file %s changed while being read; retry", path);
        goto out;
    }
    if (xxh64_out)
        *xxh64_out = XXH64_digest(h);
    rc = build(path, hdr, hlen, data, dlen, out, err);
    data = NULL; /* owned by build */
out:
    close(fd);
    free(hdr);
    free(data);
    if (h)
        XXH64_freeState(h);
    return rc;
}

int nllm_st_count(const nllm_st_file_t *f)
{
    return f ? f->n : 0;
}

const nllm_st_tensor_t *nllm_st_at(const nllm_st_file_t *f, int i)
{
    return f && i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const nllm_st_tensor_t *nllm_st_find(const nllm_st_file_t *f, const char *name)
{
    if (!f || !name)
        return NULL;
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(f->t[f->by_name[mid]].name, name);
        if (c == 0)
            return &f->t[f->by_name[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

const char *nllm_st_meta(const nllm_st_file_t *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    return NULL;
}

int nllm_st_meta_count(const nllm_st_file_t *f)
{
    return f ? f->nmeta : 0;
}

int nllm_st_meta_at(const nllm_st_file_t *f, int i, const char **key, const char **value)
{
    if (!f || i < 0 || i >= f->nmeta)
        return NLLM_EINVAL;
    if (key)
        *key = f->meta[2 * i];
    if (value)
        *value = f->meta[2 * i + 1];
    return 0;
}

int nllm_st_get(const nllm_st_file_t *f, const char *name, nllm_st_dtype_t dtype, int ndim, const int64_t *shape,
                const void **data, nllm_err_t *err)
{
    if (!f || !name || !data || ndim < 0 || ndim > NLLM_ST_MAX_DIMS || (ndim > 0 && !shape) ||
        !nllm_st_dtype_name(dtype))
        return nllm_err_set(err, NLLM_EINVAL, "nllm_st_get(%s): bad arguments", name ? name : "(null)");
    *data = NULL;
    const nllm_st_tensor_t *t = nllm_st_find(f, name);
    if (!t)
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "safetensors file %s has no tensor '%s'; the file was not written for this model", f->label,
                            name);
    if (t->dtype != dtype)
        return nllm_err_set(err, NLLM_ECORRUPT, "safetensors file %s: tensor '%s' is %s, expected %s; convert the file",
                            f->label, name, dtypes[t->dtype].name, dtypes[dtype].name);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char want[256], got[256];
        format_shape(want, sizeof want, ndim, shape);
        format_shape(got, sizeof got, t->ndim, t->shape);
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "safetensors file %s: tensor '%s' has shape %s, expected %s; the file was written for a "
                            "different model configuration",
                            f->label, name, got, want);
    }
    if (t->begin % dtypes[dtype].size != 0)
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "safetensors file %s: tensor '%s' starts at data offset %llu, not a multiple of its %zu-byte "
                            "element size; re-save the file with an aligning writer",
                            f->label, name, (unsigned long long)t->begin, dtypes[dtype].size);
    *data = t->data;
    return 0;
}

int nllm_st_get_f32(const nllm_st_file_t *f, const char *name, int ndim, const int64_t *shape, const float **data,
                    nllm_err_t *err)
{
    const void *p = NULL;
    int rc = nllm_st_get(f, name, NLLM_ST_F32, ndim, shape, &p, err);
    if (data)
        *data = rc == 0 ? p : NULL;
    return rc;
}

/* ------------------------------------------------------------------ writer */

typedef struct {
    char *name;
    nllm_st_dtype_t dtype;
    int ndim;
    int64_t shape[NLLM_ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
} wentry_t;

struct nllm_st_writer {
    wentry_t *e;
    int n, cap;
    char **meta; /* key, value pairs in the order added */
    int nmeta, metacap;
};

nllm_st_writer_t *nllm_st_writer_new(void)
{
    return calloc(1, sizeof(nllm_st_writer_t));
}

void nllm_st_writer_free(nllm_st_writer_t *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n; i++)
        free(w->e[i].name);
    for (int i = 0; i < 2 * w->nmeta; i++)
        free(w->meta[i]);
    free(w->e);
    free(w->meta);
    free(w);
}

static int valid_utf8_string(const char *s)
{
    json_t *j = json_string(s);
    if (!j)
        return 0;
    json_decref(j);
    return 1;
}

int nllm_st_writer_add(nllm_st_writer_t *w, const char *name, nllm_st_dtype_t dtype, int ndim, const int64_t *shape,
                       const void *data, nllm_err_t *err)
{
    if (!w || !name)
        return nllm_err_set(err, NLLM_EINVAL, "nllm_st_writer_add: writer and name are required");
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen > NLLM_ST_MAX_NAME || strcmp(name, "__metadata__") == 0 || !valid_utf8_string(name))
        return nllm_err_set(err, NLLM_EINVAL,
                            "tensor name '%.64s' is not allowed: use 1..%d bytes of UTF-8 other than __metadata__",
                            name, NLLM_ST_MAX_NAME);
    if (!nllm_st_dtype_name(dtype))
        return nllm_err_set(err, NLLM_EINVAL, "tensor '%s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > NLLM_ST_MAX_DIMS || (ndim > 0 && !shape))
        return nllm_err_set(err, NLLM_EINVAL, "tensor '%s': ndim %d is outside 0..%d or shape is NULL", name, ndim,
                            NLLM_ST_MAX_DIMS);
    uint64_t nbytes;
    if (shape_bytes(dtype, ndim, shape, &nbytes) != 0 || nbytes > (uint64_t)INT64_MAX)
        return nllm_err_set(err, NLLM_EINVAL, "tensor '%s': shape has a negative dimension or is too large", name);
    if (nbytes > 0 && !data)
        return nllm_err_set(err, NLLM_EINVAL, "tensor '%s': data is NULL for %llu bytes", name,
                            (unsigned long long)nbytes);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->e[i].name, name) == 0)
            return nllm_err_set(err, NLLM_EINVAL, "tensor '%s' added twice; tensor names must be unique", name);
    if (w->n == w->cap) {
        int ncap = w->cap ? 2 * w->cap : 16;
        wentry_t *ne = realloc(w->e, (size_t)ncap * sizeof *ne);
        if (!ne)
            return nllm_err_set(err, NLLM_ENOMEM, "out of memory adding tensor '%s'", name);
        w->e = ne;
        w->cap = ncap;
    }
    wentry_t *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = dupstr(name)))
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory adding tensor '%s'", name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->nbytes = nbytes;
    e->data = data;
    w->n++;
    return 0;
}

int nllm_st_writer_meta(nllm_st_writer_t *w, const char *key, const char *value, nllm_err_t *err)
{
    if (!w || !key || !value)
        return nllm_err_set(err, NLLM_EINVAL, "nllm_st_writer_meta: writer, key and value are required");
    if (!valid_utf8_string(key) || !valid_utf8_string(value))
        return nllm_err_set(err, NLLM_EINVAL, "metadata '%.64s': key and value must be UTF-8", key);
    if (strlen(key) > NLLM_ST_MAX_NAME) /* the reader refuses longer keys */
        return nllm_err_set(err, NLLM_EINVAL, "metadata key '%.40s...' is %zu bytes, longer than %d", key,
                            strlen(key), NLLM_ST_MAX_NAME);
    for (int i = 0; i < w->nmeta; i++)
        if (strcmp(w->meta[2 * i], key) == 0)
            return nllm_err_set(err, NLLM_EINVAL, "metadata key '%s' set twice; keys must be unique", key);
    if (w->nmeta == w->metacap) {
        int ncap = w->metacap ? 2 * w->metacap : 8;
        char **nm = realloc(w->meta, (size_t)ncap * 2 * sizeof *nm);
        if (!nm)
            return nllm_err_set(err, NLLM_ENOMEM, "out of memory adding metadata '%s'", key);
        w->meta = nm;
        w->metacap = ncap;
    }
    char *k = dupstr(key), *v = dupstr(value);
    if (!k || !v) {
        free(k);
        free(v);
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory adding metadata '%s'", key);
    }
    w->meta[2 * w->nmeta] = k;
    w->meta[2 * w->nmeta + 1] = v;
    w->nmeta++;
    return 0;
}

/* Layout order: stable by element size, largest first. */
static int *layout_order(const nllm_st_writer_t *w)
{
    int *ord = malloc((size_t)(w->n ? w->n : 1) * sizeof *ord);
    if (!ord)
        return NULL;
    int k = 0;
    for (size_t sz = 8; sz >= 1; sz /= 2)
        for (int i = 0; i < w->n; i++)
            if (dtypes[w->e[i].dtype].size == sz)
                ord[k++] = i;
    return ord;
}

/* Build "<u64 N><json padded to N>" into a malloc'd buffer. */
static int build_header(const nllm_st_writer_t *w, const int *ord, uint8_t **out, size_t *out_len, nllm_err_t *err)
{
    json_t *root = json_object();
    int bad = !root;
    if (!bad && w->nmeta) {
        json_t *m = json_object();
        bad = !m || json_object_set_new(root, "__metadata__", m) != 0;
        for (int i = 0; !bad && i < w->nmeta; i++)
            bad = json_object_set_new(m, w->meta[2 * i], json_string(w->meta[2 * i + 1])) != 0;
    }
    uint64_t off = 0;
    for (int k = 0; !bad && k < w->n; k++) {
        const wentry_t *e = &w->e[ord[k]];
        json_t *shape = json_array();
        bad = !shape;
        for (int i = 0; !bad && i < e->ndim; i++)
            bad = json_array_append_new(shape, json_integer((json_int_t)e->shape[i])) != 0;
        json_t *offs = json_array();
        json_t *ent = json_object();
        if (bad || !offs || !ent || json_array_append_new(offs, json_integer((json_int_t)off)) != 0 ||
            json_array_append_new(offs, json_integer((json_int_t)(off + e->nbytes))) != 0 ||
            json_object_set_new(ent, "dtype", json_string(dtypes[e->dtype].name)) != 0 ||
            json_object_set_new(ent, "shape", shape) != 0) {
            json_decref(shape);
            json_decref(offs);
            json_decref(ent);
            bad = 1;
            break;
        }
        if (json_object_set_new(ent, "data_offsets", offs) != 0) {
            json_decref(ent);
            bad = 1;
            break;
        }
        bad = json_object_set_new(root, e->name, ent) != 0;
        off += e->nbytes;
    }
    char *s = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!s)
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory building a safetensors header");
    size_t n = strlen(s), padded = (n + 7) & ~(size_t)7;
    uint8_t *b = malloc(8 + padded);
    if (!b) {
        free(s);
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory building a safetensors header");
    }
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(b + 8, s, n);
    memset(b + 8 + n, ' ', padded - n);
    free(s);
    *out = b;
    *out_len = 8 + padded;
    return 0;
}

static int write_fd_label(nllm_st_writer_t *w, int fd, const char *label, uint64_t *xxh64_out, uint64_t *size_out,
                          nllm_err_t *err)
{
    if (!w)
        return nllm_err_set(err, NLLM_EINVAL, "nllm_st_writer_write_fd: writer is NULL");
    int *ord = layout_order(w);
    uint8_t *hdr = NULL;
    size_t hlen = 0;
    XXH64_state_t *h = XXH64_createState();
    int rc = 0;
    if (!ord || !h) {
        rc = nllm_err_set(err, NLLM_ENOMEM, "out of memory writing %s", label);
        goto out;
    }
    if ((rc = build_header(w, ord, &hdr, &hlen, err)))
        goto out;
    XXH64_reset(h, 0);
    uint64_t total = hlen;
    XXH64_update(h, hdr, hlen);
    if ((rc = nllm_fs_write_all(fd, hdr, hlen, label, err)))
        goto out;
    for (int k = 0; k < w->n; k++) {
        const wentry_t *e = &w->e[ord[k]];
        if (e->nbytes == 0)
            continue;
        XXH64_update(h, e->data, (size_t)e->nbytes);
        if ((rc = nllm_fs_write_all(fd, e->data, (size_t)e->nbytes, label, err))) {
            nllm_err_prefix(err, "tensor '%s': ", e->name);
            goto out;
        }
        total += e->nbytes;
    }
    if (xxh64_out)
        *xxh64_out = XXH64_digest(h);
    if (size_out)
        *size_out = total;
out:
    free(ord);
    free(hdr);
    if (h)
        XXH64_freeState(h);
    return rc;
}

int nllm_st_writer_write_fd(nllm_st_writer_t *w, int fd, uint64_t *xxh64_out, uint64_t *size_out, nllm_err_t *err)
{
    char label[48];
    snprintf(label, sizeof label, "safetensors stream (fd %d)", fd);
    return write_fd_label(w, fd, label, xxh64_out, size_out, err);
}

typedef struct {
    nllm_st_writer_t *w;
    const char *path;
    uint64_t xxh, size;
} save_ctx_t;

static int save_cb(int fd, void *ud, nllm_err_t *err)
{
    save_ctx_t *c = ud;
    return write_fd_label(c->w, fd, c->path, &c->xxh, &c->size, err);
}

int nllm_st_writer_save(nllm_st_writer_t *w, const char *path, uint64_t *xxh64_out, uint64_t *size_out,
                        nllm_err_t *err)
{
    if (!w || !path)
        return nllm_err_set(err, NLLM_EINVAL, "nllm_st_writer_save: writer and path are required");
    save_ctx_t c = {w, path, 0, 0};
    int rc = nllm_fs_write_atomic(path, save_cb, &c, err);
    if (rc == 0) {
        if (xxh64_out)
            *xxh64_out = c.xxh;
        if (size_out)
            *size_out = c.size;
    }
    return rc;
}
