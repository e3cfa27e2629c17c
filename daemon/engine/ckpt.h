/* ckpt.h -- checkpoint files: the full training state of a job as one
 * safetensors file (model.md tensor names, Adam moments as
 * optimizer.exp_avg.<param> / optimizer.exp_avg_sq.<param>, everything
 * else in __metadata__), written atomically and durably, read back with
 * every field checked.
 *
 * A snapshot is a host copy of the state; taking one is the only part done
 * on the training thread, writing it can happen on any thread.
 * Callers: the job runner in nllmd, `nllmd run`, tests and tools.
 */
#ifndef NLLM_CKPT_H
#define NLLM_CKPT_H

#include <jansson.h>
#include <stdint.h>

#include "config.h"
#include "model.h"
#include "trainer.h"

#define NLLM_CKPT_FORMAT "nllm-checkpoint"
#define NLLM_CKPT_FORMAT_VERSION 1

typedef struct {
    char job[72];
    nllm_ckpt_kind_t kind;
    nllm_job_config_t config;
    nllm_progress_t progress;
    json_t *vocab;            /* tokenizer (kind + words), owned */
    int nparams;
    nllm_param_info_t *params; /* layout of the buffers below, owned */
    int64_t nfloats;
    float *weights;           /* (nfloats) model layout, owned */
    float *exp_avg;           /* NULL when the file has no optimizer state */
    float *exp_avg_sq;
    uint64_t weights_hash;    /* XXH64 of the weights in model.md order */
    double created;           /* unix seconds */
} nllm_ckpt_t;

/* Host copy of a trainer's state (weights, moments, progress, vocab). */
int nllm_ckpt_snapshot(nllm_trainer_t *tr, const char *job, nllm_ckpt_kind_t kind,
                       nllm_ckpt_t **out, nllm_err_t *err);
void nllm_ckpt_free(nllm_ckpt_t *c);

/* Writes c to path: temp file in the same folder, fsync, rename, fsync the
 * folder. Returns the XXH64 of the whole file and its size. */
int nllm_ckpt_write(const nllm_ckpt_t *c, const char *path, uint64_t *xxh64, uint64_t *size,
                    nllm_err_t *err);

/* Reads a checkpoint. expect_xxh64 != 0: the file's hash must match (the
 * catalog's record). A plain safetensors file with the model.md names and
 * no nllm metadata loads as weights only when `shape` gives the model
 * config (progress empty, no vocab); else such a file is an error. */
int nllm_ckpt_load(const char *path, uint64_t expect_xxh64, const nllm_model_config_t *shape,
                   nllm_ckpt_t **out, nllm_err_t *err);

/* Puts a checkpoint's weights (and moments when present and with_optimizer)
 * into a model of the same shape; a differing shape fails before anything
 * changes, listing every differing field with both values. */
int nllm_ckpt_apply_model(const nllm_ckpt_t *c, nllm_model_t *m, int with_optimizer,
                          nllm_err_t *err);

/* XXH64 of the parameter tensors in model.md order (for "same weights?"). */
uint64_t nllm_ckpt_weights_hash(const nllm_param_info_t *params, int nparams,
                                const float *weights);

/* The file name of a checkpoint: best_{job}, {job}_epoch_{N}, {job}_final,
 * {job}_paused, with .safetensors. */
void nllm_ckpt_filename(const char *job, nllm_ckpt_kind_t kind, int64_t epoch, char *buf,
                        size_t n);

#endif /* NLLM_CKPT_H */
