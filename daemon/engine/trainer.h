/* trainer.h -- the training loop of one job: epochs of shuffled batches,
 * validation, histories, early stopping, the clipping schedule, and the
 * points where checkpoints are due.
 *
 * The trainer owns its data set and model and runs on the job's thread.
 * Everything needed to continue exactly (weights, Adam moments, step and
 * epoch counters, partial-epoch sums, histories, early-stopping state) is in
 * nllm_progress_t plus the model state, so a checkpoint of those resumes
 * bit-identically. Other threads talk to it only through nllm_trainer_ctl_t.
 *
 * Data parallelism: a trainer per rank, each on its own backend, with the
 * rank's handle of a comm (comm.h) given by the caller; every rank calls
 * nllm_trainer_run together, rank 0 with the callbacks that report and
 * checkpoint (the others' results are the same).
 */
#ifndef NLLM_TRAINER_H
#define NLLM_TRAINER_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>

#include "comm.h"
#include "config.h"
#include "data.h"
#include "model.h"

typedef enum {
    NLLM_CKPT_BEST = 0,
    NLLM_CKPT_EPOCH = 1,
    NLLM_CKPT_FINAL = 2,
    NLLM_CKPT_PAUSED = 3,
} nllm_ckpt_kind_t;

const char *nllm_ckpt_kind_name(nllm_ckpt_kind_t k); /* "best", "epoch", ... */

/* Histories: one entry per completed epoch. */
typedef struct {
    int64_t n, cap;
    double *train_loss, *val_loss, *train_ppl, *val_ppl, *val_acc;
} nllm_history_t;

typedef struct {
    int64_t epoch;          /* completed epochs                          */
    int64_t global_step;    /* optimizer steps done                      */
    int64_t step_in_epoch;  /* steps done in the running epoch           */
    /* partial sums of the running epoch */
    double ep_loss_sum;
    int64_t ep_tokens, ep_correct;
    double ep_seconds;
    nllm_history_t hist;
    double best_val_loss;   /* INFINITY when none yet */
    int64_t best_epoch;     /* 1-based epoch of best_val_loss, 0 none */
    /* early stopping (min_delta, patience) */
    double es_best;
    int64_t es_counter;
    int32_t stopped_early;
} nllm_progress_t;

void nllm_progress_init(nllm_progress_t *p);
void nllm_progress_free(nllm_progress_t *p);
int nllm_progress_copy(nllm_progress_t *dst, const nllm_progress_t *src);
int nllm_history_push(nllm_history_t *h, double tl, double vl, double tp, double vp, double va);

/* Requests from other threads; read at step boundaries. */
typedef struct {
    atomic_int pause;           /* pause at the next step boundary          */
    atomic_int pause_epoch_end; /* pause when the running epoch ends         */
    atomic_int stop;            /* end the job at the next step boundary     */
    atomic_int num_epochs;      /* target epochs (extend raises it)          */
} nllm_trainer_ctl_t;

typedef struct {
    int64_t epoch;         /* 0-based running epoch */
    int64_t step_in_epoch; /* steps done in it      */
    int64_t steps_per_epoch;
    int64_t global_step;
    double running_loss;   /* token-weighted mean of the epoch so far */
    double tokens_per_s;   /* of the last step (all ranks)  */
    double epoch_seconds;
    double rank_tokens_per_s; /* this rank's own share of it */
} nllm_step_report_t;

typedef struct {
    int64_t epoch; /* 1-based, just completed */
    int64_t num_epochs;
    double train_loss, val_loss, train_ppl, val_ppl, val_acc;
    double seconds, tokens_per_s;
    int is_best;
    int early_stop; /* patience ran out */
    /* Data parallelism (0 with one rank): the gradients each rank sums per
     * step (bytes); the time a step waited for that sum (seconds, mean over
     * the epoch's steps in this run); the share of this run's part of the
     * epoch spent in collectives of any kind (sums, agreement, checks).
     * NaN where the sums run on the device (NCCL), as part of the step. */
    double grad_sum_bytes, grad_sum_seconds, comm_share;
} nllm_epoch_report_t;

typedef struct nllm_trainer nllm_trainer_t;

typedef struct {
    void *ud;
    void (*on_step)(void *ud, nllm_trainer_t *tr, const nllm_step_report_t *r);
    void (*on_epoch)(void *ud, nllm_trainer_t *tr, const nllm_epoch_report_t *r);
    /* A checkpoint of `kind` is due now (epoch: the 1-based epoch for
     * NLLM_CKPT_EPOCH). Return < 0 to fail the run with err filled. */
    int (*on_checkpoint)(void *ud, nllm_trainer_t *tr, nllm_ckpt_kind_t kind, int64_t epoch,
                         nllm_err_t *err);
} nllm_trainer_cbs_t;

typedef enum {
    NLLM_RUN_COMPLETED = 0,  /* num_epochs reached           */
    NLLM_RUN_EARLY_STOPPED,  /* patience ran out             */
    NLLM_RUN_PAUSED,         /* pause requested (checkpointed by the caller's callback) */
    NLLM_RUN_STOPPED,        /* stop requested (final written) */
} nllm_run_result_t;

/* Loads the data (token cache at cache_path, may be NULL; vocab NULL:
 * built from the training text, else that vocabulary -- resume and
 * fine-tuning keep the source's) and builds the model on be (the trainer
 * does not own be). Fresh weights from the seed; use nllm_trainer_restore
 * to continue from a checkpoint. comm: this rank's handle for data
 * parallelism (not owned; NULL: none, one rank); batch_size must divide by
 * its size, and be must be a backend it can sum on (nllm_comm_bind). */
int nllm_trainer_create(const nllm_job_config_t *cfg, const char *cache_path,
                        const nllm_vocab_t *vocab, nllm_backend_t *be, nllm_comm_t *comm,
                        nllm_trainer_t **out, nllm_err_t *err);
/* Another rank's trainer in this process, beside first (a trainer of the
 * same comm, with its config): it reads first's data set instead of loading
 * its own, so first must outlive it. Its weights and progress come from
 * rank 0 when the run starts. */
int nllm_trainer_create_peer(const nllm_trainer_t *first, nllm_backend_t *be, nllm_comm_t *comm,
                             nllm_trainer_t **out, nllm_err_t *err);
void nllm_trainer_destroy(nllm_trainer_t *tr);

nllm_model_t *nllm_trainer_model(nllm_trainer_t *tr);
const nllm_dataset_t *nllm_trainer_data(const nllm_trainer_t *tr);
nllm_progress_t *nllm_trainer_progress(nllm_trainer_t *tr);
const nllm_job_config_t *nllm_trainer_config(const nllm_trainer_t *tr);
/* Training-only settings may change between runs (resume with new lr...). */
int nllm_trainer_set_config(nllm_trainer_t *tr, const nllm_job_config_t *cfg, nllm_err_t *err);
nllm_trainer_ctl_t *nllm_trainer_ctl(nllm_trainer_t *tr);
/* Makes the trainer read requests from ctl (owned by the caller, which
 * must outlive the trainer) instead of its own. */
void nllm_trainer_use_ctl(nllm_trainer_t *tr, nllm_trainer_ctl_t *ctl);
int64_t nllm_trainer_steps_per_epoch(const nllm_trainer_t *tr);
/* How many steps may be queued on the device before their figures are read
 * (1 .. NLLM_STATS_RING; default NLLM_STATS_RING on a backend that records
 * its steps, as CUDA does, else 1: every step). Pause and stop requests take
 * effect at the next read. */
void nllm_trainer_set_queue_depth(nllm_trainer_t *tr, int depth);

/* Replaces the progress (deep copy) -- with the model state set by the
 * caller, this resumes exactly where a checkpoint was taken. */
int nllm_trainer_restore(nllm_trainer_t *tr, const nllm_progress_t *p, nllm_err_t *err);

/* Runs until done, paused or stopped. Checkpoints are asked for through
 * cbs->on_checkpoint: best when validation improves, epoch every
 * save_every epochs, final at the end (or on stop), paused on pause. */
int nllm_trainer_run(nllm_trainer_t *tr, const nllm_trainer_cbs_t *cbs, nllm_run_result_t *res,
                     nllm_err_t *err);

/* 1 when the last nllm_trainer_run ended because a step's gradient norm was
 * not finite (the error of nllm_model_diverged); then *step is that step's
 * global step (0-based, the "at step N" of the error) and *grad_norm its
 * norm. The weights and progress stand just before that step. 0 otherwise.
 *
 * Test hook: the environment variable NLLM_TRAINER_FAULT=diverge@step:N
 * makes the step at global step N diverge each time a run of this process
 * reaches it (diverge@step:N:K: only the first K times): it is queued
 * alone with the context norm's gain set to NaN, so its loss, gradients
 * and norm are really NaN and the device skips its update as for any
 * divergence; then the gain is put back. Read once per process; a
 * malformed value is reported on stderr and ignored. With data
 * parallelism rank 0 counts and tells the other ranks at that step, so
 * every rank of a run poisons the same step. (See also
 * NLLM_FS_FAULT in fsutil.h.) */
int nllm_trainer_diverged(const nllm_trainer_t *tr, int64_t *step, double *grad_norm);

/* Mean loss and accuracy over the validation windows (no dropout); with
 * data parallelism a collective (each rank takes its share of the batches). */
int nllm_trainer_validate(nllm_trainer_t *tr, double *loss, double *acc, nllm_err_t *err);

#endif /* NLLM_TRAINER_H */
