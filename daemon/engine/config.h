/* config.h -- a training job's full configuration: model shape, data,
 * optimiser, schedule and checkpoint policy, with model.md's defaults.
 *
 * One table of fields drives defaults, validation, the JSON form stored in
 * the catalog and in checkpoints, the job-file parser (INI: `key = value`)
 * and the command-line overrides, so the names are the same everywhere.
 * Callers: nllmd (start/resume), nllmctl (flags), the trainer, checkpoints.
 */
#ifndef NLLM_CONFIG_H
#define NLLM_CONFIG_H

#include <jansson.h>
#include <stdint.h>

#include "backend.h"
#include "data.h"
#include "model.h"
#include "nllm_err.h"

#define NLLM_PATH_MAX 4096
/* Devices (data-parallel ranks) one job may train on at once. */
#define NLLM_MAX_JOB_DEVICES 64

typedef enum { NLLM_CLIP_REFERENCE = 0, NLLM_CLIP_FIXED = 1, NLLM_CLIP_NONE = 2 } nllm_clip_mode_t;

/* What nllmd does when a step's gradient norm is not finite. */
typedef enum { NLLM_DIV_ROLLBACK = 0, NLLM_DIV_FAIL = 1 } nllm_div_mode_t;

/* What nllmd does when the job's device faults (NLLM_EDEVICE, backend.h). */
typedef enum { NLLM_FAULT_REQUEUE = 0, NLLM_FAULT_FAIL = 1 } nllm_fault_mode_t;

typedef struct {
    nllm_model_config_t model;
    /* data */
    char data[NLLM_PATH_MAX]; /* training text (required)                 */
    char val[NLLM_PATH_MAX];  /* validation text; "" = split off training */
    nllm_tok_kind_t tokenizer;
    double val_fraction;
    /* optimisation */
    int32_t num_epochs, batch_size;
    double learning_rate, beta1, beta2, eps, weight_decay;
    nllm_clip_mode_t clip_mode;
    double clip_value;        /* NLLM_CLIP_FIXED: max norm */
    int32_t patience;         /* 0: no early stopping */
    double min_delta;
    int32_t reset_patience;   /* 1: counter from zero on resume (research code) */
    uint64_t seed;
    /* checkpoints */
    int32_t save_every;       /* epochs between {name}_epoch_N saves */
    int32_t keep;             /* newest periodic checkpoints kept; 0 = all */
    /* divergence (nllmd): roll back to the newest checkpoint with a finite
     * val loss at divergence_lr_factor times the lr, at most
     * divergence_retries times, or fail at once */
    nllm_div_mode_t on_divergence;
    double divergence_lr_factor; /* (0, 1) */
    int32_t divergence_retries;  /* 0 .. 100 */
    /* device fault (nllmd): queue the job again from its latest checkpoint
     * for a healthy device (at most NLLMD_MAX_FAULT_REQUEUES times), or fail */
    nllm_fault_mode_t on_device_fault;
    /* placement */
    char device[512];         /* "cpu", "cuda:0", "cuda" = any GPU, a list
                               * "cuda:0,cuda:1" (rank r on the r-th), or "" =
                               * any free device */
    int32_t num_devices;      /* ranks, one per device (GPUs) or sharing the
                               * cpu; batch_size divides by it. 1: as before */
    int32_t threads;          /* CPU threads; 0 = all (split among cpu ranks) */
    nllm_precision_t precision; /* GEMM arithmetic (backend.h); may change on resume */
} nllm_job_config_t;

void nllm_job_config_defaults(nllm_job_config_t *c);
/* Every field in range; data set. Names the field, its value, the range. */
int nllm_job_config_check(const nllm_job_config_t *c, nllm_err_t *err);
/* The devices part of nllm_job_config_check: num_devices in range, as many
 * GPUs listed in device as ranks (or one device cpu/cuda/any), batch_size a
 * multiple of num_devices; the message names the field and what to use. */
int nllm_job_config_check_devices(const nllm_job_config_t *c, nllm_err_t *err);
/* Sets one field from text, by its key (e.g. "hidden_dim", "clip"). */
int nllm_job_config_set(nllm_job_config_t *c, const char *key, const char *value,
                        nllm_err_t *err);
/* A job file: lines `key = value`, `#` or `;` comments, optional [section]
 * headers (ignored); errors name FILE:LINE. Applies on top of c. */
int nllm_job_config_parse_file(const char *path, nllm_job_config_t *c, nllm_err_t *err);
int nllm_job_config_parse_text(const char *text, size_t len, const char *label,
                               nllm_job_config_t *c, nllm_err_t *err);
/* JSON object with every key. */
json_t *nllm_job_config_to_json(const nllm_job_config_t *c);
/* Applies the keys of a JSON object on top of c; unknown keys are errors. */
int nllm_job_config_from_json(const json_t *j, nllm_job_config_t *c, nllm_err_t *err);
/* Model-shape fields that differ, as "context_dim: checkpoint 512, job 1024;
 * ..." into buf; returns how many differ. `a_label`/`b_label` name the sides. */
int nllm_job_config_model_diff(const nllm_model_config_t *a, const char *a_label,
                               const nllm_model_config_t *b, const char *b_label, char *buf,
                               size_t buflen);
/* Data and init fields that differ (data, val, tokenizer, val_fraction,
 * seed: fixed once a job exists, like the model shape), same format. */
int nllm_job_config_data_diff(const nllm_job_config_t *a, const char *a_label,
                              const nllm_job_config_t *b, const char *b_label, char *buf,
                              size_t buflen);
/* Training-only fields that differ (lr, batch, ...), same format. */
int nllm_job_config_train_diff(const nllm_job_config_t *a, const nllm_job_config_t *b,
                               char *buf, size_t buflen);
/* Max gradient norm for a 0-based epoch (<= 0: no clipping): the reference
 * schedule is 0.5 for epochs 0-9, 1.0 for 10-29, 2.0 from 30 on. */
double nllm_job_config_clip_for_epoch(const nllm_job_config_t *c, int64_t epoch);
/* Names of all keys, NULL-terminated (for --help and docs). */
const char *const *nllm_job_config_keys(void);

#endif /* NLLM_CONFIG_H */
