/* safetensors.h -- reading and writing the safetensors tensor file format.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON header (padded
 * with spaces), then the data buffer. The reader validates strictly (every
 * byte of the data buffer belongs to exactly one tensor) and owns a copy of
 * the bytes; the writer streams the caller's tensors without copying them.
 * Callers: checkpoints (save/load of model and optimiser state), tools.
 */
#ifndef NLLM_SAFETENSORS_H
#define NLLM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "nllm_err.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NLLM_ST_MAX_DIMS 8
#define NLLM_ST_MAX_NAME 1024                  /* bytes, tensor names and metadata keys */
#define NLLM_ST_MAX_HEADER (100u * 1000u * 1000u) /* bytes, as the reference implementation */

typedef enum {
    NLLM_ST_F32,
    NLLM_ST_F64,
    NLLM_ST_F16,
    NLLM_ST_BF16,
    NLLM_ST_I64,
    NLLM_ST_I32,
    NLLM_ST_I16,
    NLLM_ST_I8,
    NLLM_ST_U8,
    NLLM_ST_BOOL,
    NLLM_ST_U16,
    NLLM_ST_U32,
    NLLM_ST_U64,
    NLLM_ST_F8_E4M3,
    NLLM_ST_F8_E5M2,
    NLLM_ST_DTYPE_COUNT_
} nllm_st_dtype_t;

typedef struct {
    const char *name;
    nllm_st_dtype_t dtype;
    int ndim;                        /* 0 = scalar */
    int64_t shape[NLLM_ST_MAX_DIMS];
    uint64_t begin, end;             /* byte offsets in the data buffer */
    const void *data;                /* end-begin bytes, little-endian, owned by the file */
} nllm_st_tensor_t;

/* "F32", "BF16", ... or NULL for an invalid value. */
const char *nllm_st_dtype_name(nllm_st_dtype_t dt);
/* Bytes per element, 0 for an invalid value. */
size_t nllm_st_dtype_size(nllm_st_dtype_t dt);

/* ---- reader ---- */

typedef struct nllm_st_file nllm_st_file_t; /* owns its bytes, names and metadata */

/* Parse a whole file held in buf (copied: buf may be freed afterwards).
 * label names the file in messages. Any format violation -> NLLM_ECORRUPT,
 * among them a tensor name, metadata key or value that holds a NUL byte (the
 * message names the file and the string) and a name or metadata key longer
 * than NLLM_ST_MAX_NAME: what the writer cannot write back unchanged. */
int nllm_st_parse(const uint8_t *buf, size_t len, const char *label, nllm_st_file_t **out, nllm_err_t *err);
/* Read and parse path; xxh64_out (may be NULL) gets XXH64 (seed 0) of the
 * whole file. Missing file -> NLLM_ENOENT, read error -> NLLM_EIO. */
int nllm_st_open(const char *path, nllm_st_file_t **out, uint64_t *xxh64_out, nllm_err_t *err);
void nllm_st_close(nllm_st_file_t *f);

/* Tensors in data-offset order. */
int nllm_st_count(const nllm_st_file_t *f);
const nllm_st_tensor_t *nllm_st_at(const nllm_st_file_t *f, int i);
const nllm_st_tensor_t *nllm_st_find(const nllm_st_file_t *f, const char *name); /* NULL if absent */
/* "__metadata__" entries, sorted by key. */
const char *nllm_st_meta(const nllm_st_file_t *f, const char *key); /* NULL if absent */
int nllm_st_meta_count(const nllm_st_file_t *f);
int nllm_st_meta_at(const nllm_st_file_t *f, int i, const char **key, const char **value);

/* Typed access: checks presence, dtype, exact shape and alignment of the
 * tensor; errors (NLLM_ECORRUPT) name the file, the tensor and expected vs
 * actual. Bad arguments -> NLLM_EINVAL. */
int nllm_st_get(const nllm_st_file_t *f, const char *name, nllm_st_dtype_t dtype, int ndim, const int64_t *shape,
                const void **data, nllm_err_t *err);
int nllm_st_get_f32(const nllm_st_file_t *f, const char *name, int ndim, const int64_t *shape, const float **data,
                    nllm_err_t *err);

/* ---- writer ---- */

/* Tensors are laid out in the order added, stable-sorted by element size
 * (largest first), so each one starts at a multiple of its element size with
 * no holes (the format forbids holes; for all-F32 files this is exactly the
 * order added). The data buffer starts at a multiple of 8 in the file. */
typedef struct nllm_st_writer nllm_st_writer_t;

nllm_st_writer_t *nllm_st_writer_new(void); /* NULL when out of memory */
/* data is borrowed until the writer is written or freed; it may be NULL only
 * for a zero-size tensor. Bad name/shape/dtype or a duplicate -> NLLM_EINVAL. */
int nllm_st_writer_add(nllm_st_writer_t *w, const char *name, nllm_st_dtype_t dtype, int ndim, const int64_t *shape,
                       const void *data, nllm_err_t *err);
/* Key and value are copied; a repeated key, a key longer than
 * NLLM_ST_MAX_NAME or one that is not UTF-8 -> NLLM_EINVAL. Both are C
 * strings, so neither can hold a NUL byte ("a\0b" is the key "a"). */
int nllm_st_writer_meta(nllm_st_writer_t *w, const char *key, const char *value, nllm_err_t *err);
/* Stream header and data to fd (short writes and EINTR handled). xxh64_out
 * and size_out (may be NULL) get XXH64 (seed 0) and size of what was written. */
int nllm_st_writer_write_fd(nllm_st_writer_t *w, int fd, uint64_t *xxh64_out, uint64_t *size_out, nllm_err_t *err);
/* Durable atomic save (nllm_fs_write_atomic). */
int nllm_st_writer_save(nllm_st_writer_t *w, const char *path, uint64_t *xxh64_out, uint64_t *size_out,
                        nllm_err_t *err);
void nllm_st_writer_free(nllm_st_writer_t *w);

#ifdef __cplusplus
}
#endif

#endif /* NLLM_SAFETENSORS_H */
