/* model.h -- the context-vector language model (shared/docs/model.md) on
 * any backend: parameters, forward, back-propagation through the whole
 * window, gradient norm and the fused Adam step.
 *
 * Parameters, gradients and both Adam moments each live in one contiguous
 * device buffer (so the norm and Adam are one pass); nllm_model_param()
 * maps the model.md names to offsets in it. A model is used by one thread
 * at a time. Callers: daemon/engine/trainer.c, the benchmark, the tests.
 */
#ifndef NLLM_MODEL_H
#define NLLM_MODEL_H

#include <stdint.h>

#include "backend.h"
#include "nllm_err.h"
#include "nllm_math.h"

typedef struct {
    int32_t vocab_size;     /* V  */
    int32_t embed_dim;      /* De */
    int32_t hidden_dim;     /* H  */
    int32_t context_dim;    /* Dc */
    int32_t num_layers;     /* L  */
    int32_t max_seq_length; /* S  */
    float dropout;          /* p  */
} nllm_model_config_t;

/* model.md defaults */
#define NLLM_MODEL_CONFIG_DEFAULT {1000, 256, 512, 512, 12, 64, 0.1f}
#define NLLM_DIM_MAX 65536

typedef struct {
    char name[48];  /* model.md name, e.g. "fnn_layers.3.weight" */
    int ndim;       /* 1 or 2 */
    int64_t shape[2];
    int64_t numel;
    int64_t offset; /* in floats, into the parameter buffer */
    int is_weight;  /* drawn from Normal(0, 0.02) at init */
} nllm_param_info_t;

typedef struct {
    double loss_sum; /* sum of per-token cross-entropy over non-pad targets */
    int64_t tokens;  /* non-pad targets */
    int64_t correct; /* of those, argmax == target */
} nllm_batch_stats_t;

typedef struct nllm_model nllm_model_t;

/* Validates every field (names the field, its value and the allowed range). */
int nllm_model_config_check(const nllm_model_config_t *cfg, nllm_err_t *err);

/* The parameter table of a config without allocating a model: *params is
 * malloc'd (free() it), in model.md order; *nfloats the buffer length. */
int nllm_model_layout(const nllm_model_config_t *cfg, nllm_param_info_t **params, int *nparams,
                      int64_t *nfloats, nllm_err_t *err);

/* Allocates parameters, gradients, moments and the activations of a batch
 * of up to max_batch windows. Weights start at zero: call init_weights or
 * set_state. */
int nllm_model_create(const nllm_model_config_t *cfg, nllm_backend_t *be, int max_batch,
                      nllm_model_t **out, nllm_err_t *err);
void nllm_model_destroy(nllm_model_t *m);

const nllm_model_config_t *nllm_model_config(const nllm_model_t *m);
nllm_backend_t *nllm_model_backend(const nllm_model_t *m);
int nllm_model_max_batch(const nllm_model_t *m);
int nllm_model_num_params(const nllm_model_t *m);
const nllm_param_info_t *nllm_model_param(const nllm_model_t *m, int i);
const nllm_param_info_t *nllm_model_param_by_name(const nllm_model_t *m, const char *name);
int64_t nllm_model_num_floats(const nllm_model_t *m); /* buffer length incl. padding */
int64_t nllm_model_num_weights(const nllm_model_t *m); /* sum of numel */
/* Bytes of device memory the model holds (parameters, state, activations). */
size_t nllm_model_device_bytes(const nllm_model_t *m);
/* Bytes a model of this config and batch would need (for OOM messages). */
size_t nllm_model_bytes_needed(const nllm_model_config_t *cfg, int max_batch);

/* model.md initialisation from seed (Normal(0, 0.02) weights, zero biases,
 * gamma 1, beta 0); clears the Adam moments. */
void nllm_model_init_weights(nllm_model_t *m, uint64_t seed);

/* Whole-buffer host copies (num_floats each). Any pointer may be NULL. */
int nllm_model_get_state(nllm_model_t *m, float *weights, float *exp_avg, float *exp_avg_sq,
                         nllm_err_t *err);
int nllm_model_set_state(nllm_model_t *m, const float *weights, const float *exp_avg,
                         const float *exp_avg_sq, nllm_err_t *err);
int nllm_model_get_grads(nllm_model_t *m, float *grads, nllm_err_t *err);

/* Forward pass over B windows of S token ids (host, row-major [B, S]).
 * train: dropout on with masks from (seed, step). want_grad: keep what
 * backward needs and turn the logits into their gradient. */
int nllm_model_forward(nllm_model_t *m, const int32_t *windows, int B, int train, uint64_t seed,
                       uint32_t step, int want_grad, nllm_batch_stats_t *stats, nllm_err_t *err);
/* Logits of the last forward without want_grad, host [B, S-1, V]. */
int nllm_model_get_logits(nllm_model_t *m, float *out, nllm_err_t *err);
/* Back-propagation of the last forward (want_grad) into the gradients. */
int nllm_model_backward(nllm_model_t *m, nllm_err_t *err);
/* Global L2 norm of the gradients. */
double nllm_model_grad_norm(nllm_model_t *m);
/* Adam step on every parameter with the given constants (clip included). */
void nllm_model_adam(nllm_model_t *m, const nllm_adam_consts_t *c);

/* Final context vectors c(S-2) of the last forward, host [B, Dc]. */
int nllm_model_get_context(nllm_model_t *m, float *out, nllm_err_t *err);

/* One step of generation for one sequence: feed token id `tok` with
 * context ctx (host [Dc], updated in place), write V logits to out. */
int nllm_model_step_logits(nllm_model_t *m, int32_t tok, float *ctx, float *out,
                           nllm_err_t *err);

/* Optimiser settings of one training step. */
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    double max_norm; /* <= 0: no clipping */
} nllm_optim_t;

typedef struct {
    nllm_batch_stats_t batch;
    double grad_norm;  /* before clipping */
    double clip_scale; /* factor applied (1 when no clipping happened) */
    int halted;        /* no update: this or an earlier step diverged */
} nllm_step_stats_t;

/* forward + backward + clip + Adam, then waits for the step's figures.
 * adam_t: 1-based optimizer step count; the dropout masks use rng_step.
 * A non-finite gradient norm is an error (nllm_model_diverged) and leaves
 * the weights as they were before the step. */
int nllm_model_train_step(nllm_model_t *m, const int32_t *windows, int B, uint64_t seed,
                          uint32_t rng_step, int64_t adam_t, const nllm_optim_t *opt,
                          nllm_step_stats_t *st, nllm_err_t *err);

/* Slots of the stats ring: how many steps may be queued before their
 * figures are read. */
#define NLLM_STATS_RING 64

/* The same step, queued without waiting for the device: one upload (the
 * ids and per-step scalars), then the device work. Its figures land in
 * ring slot `slot` (0 .. NLLM_STATS_RING-1), read with
 * nllm_model_read_stats. A step whose gradient norm is not finite updates
 * nothing and halts the model: later steps update nothing either, until
 * new weights are set (init_weights, set_state). Errors returned here are
 * the host's (bad ids, slot); device errors surface at the next read. */
int nllm_model_train_step_async(nllm_model_t *m, const int32_t *windows, int B, uint64_t seed,
                                uint32_t rng_step, int64_t adam_t, const nllm_optim_t *opt,
                                int slot, nllm_err_t *err);
/* Waits for the queued work and copies the figures of slots
 * first .. first+n-1 to out[0 .. n-1] (one download, one sync). */
int nllm_model_read_stats(nllm_model_t *m, int first, int n, nllm_step_stats_t *out,
                          nllm_err_t *err);
/* The error of a step whose gradient norm is not finite. */
int nllm_model_diverged(double grad_norm, uint32_t rng_step, nllm_err_t *err);

/* ---- data parallelism ----
 * A rank of a data-parallel job trains on a slice of the global batch.
 * nllm_model_set_shard: the next training step's windows are global
 * windows win0 .. win0+B-1 (dropout masks as for those windows), and its
 * gradient scale is 1 / global_tokens (the non-pad targets of the whole
 * global batch; 0: this batch's own). The shard stays until changed.
 * nllm_model_set_grad_reduce: after back-propagation, before the gradient
 * norm, fn(ud, grads, n) sums the gradients over the ranks in place; the
 * gradients are host memory there (the CPU backend; the trainer refuses
 * data parallelism on other devices). NULL: none. */
void nllm_model_set_shard(nllm_model_t *m, int32_t win0, int64_t global_tokens);
void nllm_model_set_grad_reduce(nllm_model_t *m, void (*fn)(void *ud, float *g, int64_t n),
                                void *ud);

/* Multiply-adds of one forward position (model.md's cost formula). */
double nllm_model_macs_per_token(const nllm_model_config_t *cfg);

#endif /* NLLM_MODEL_H */
