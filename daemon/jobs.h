/* jobs.h -- training jobs in nllmd (jobs.c): nllm_job_t and its state
 * machine, drawn below, device scheduling, the job and checkpoint-writer
 * threads, and the job operations the RPC methods (methods.c), the HTTP
 * listener (http.c) and nllmd.c call, all on the loop thread. A job's
 * fields are touched only by the loop thread, except those marked
 * [shared] (under job->mu or atomic).
 */
#ifndef NLLM_JOBS_H
#define NLLM_JOBS_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "catalog.h"
#include "comm.h"
#include "config.h"
#include "nllmd.h"
#include "trainer.h"

#define NLLMD_MAX_DIVERGENCES 101               /* divergence_retries (<= 100) + 1 */
/* Requeues after device faults (on_device_fault = requeue) since a client
 * last started or resumed a job; the next fault fails it. */
#define NLLMD_MAX_FAULT_REQUEUES 3

/* Job state machine (catalog column jobs.state):
 *
 *   start ──> queued ──(a free slot on a device: job_launch)──> running
 *             │  │                                                │ pause (step boundary, paused ckpt)
 *             │  │ no GPU it may use could ever hold it           ├──────────> pausing ──> paused
 *             │  └──(nllmd_schedule)──> failed                    │ stop ───────────────> stopped (final ckpt)
 *             │ pause                                             │ epochs done / patience ──> completed
 *             v                                                   │ error ───────────────> failed
 *           paused <── resume ─┐                                  │ daemon SIGTERM ─────> interrupted (paused ckpt)
 *                              │                                  │ daemon killed: running ──(next start)──> interrupted
 *   paused | interrupted | stopped | completed | failed
 *        └──── resume / extend ──┴──> queued
 *   running ──(diverged; on_divergence rollback with retries left:
 *              divergence_rollback, a resume at a lower lr)──> queued
 *   running ──(device fault; on_device_fault requeue with requeues left:
 *              device_fault in jobs.c, a resume from the latest checkpoint)──> queued
 *
 * A device runs up to opt.jobs_per_device jobs at once, each on its own
 * thread and backend; place.c picks the device. A job with num_devices N
 * > 1 runs as N data-parallel ranks, one thread and backend each (rank 0 is
 * the job thread; the others its peers), on N GPUs or sharing the cpu,
 * placed all at once: it takes one slot on each device it uses, and it is
 * one job in every state above (a rank that fails fails the run).
 * Transitions are made only by job_set_state() on the loop thread.
 */

/* What the job thread starts from. */
typedef struct {
    char path[NLLM_PATH_MAX]; /* checkpoint file, "" = fresh weights from seed */
    uint64_t checksum;        /* catalog xxh64 of the file (0: don't check) */
    char label[96];           /* "epoch_25", "JOB:best", a file name */
    int weights_only;         /* fine-tune: weights (and opt) only, fresh progress */
    int with_optimizer;       /* fine-tune: also take Adam state */
    int reset_patience;
} nllm_job_origin_t;

struct nllm_job {
    nllmd_t *d;
    nllm_job_t *next;
    char name[NLLM_CATALOG_NAME_MAX + 1];
    char state[16];
    nllm_job_config_t cfg;
    char dir[NLLM_PATH_MAX]; /* state_dir/jobs/<name> */
    int64_t attempt;
    double created, updated;
    char error[NLLM_ERR_MSG_MAX];
    int error_code;          /* nllm_err code of a checkpoint failure in error, else 0 */
    uint64_t ckpt_failures;  /* loop only: checkpoints not written or not recorded */
    nllm_job_origin_t origin;
    /* loop only: divergence handling (on_divergence = rollback). The origin
     * the job was created with (--init-from; "" = the seed), where a
     * rollback goes when no checkpoint has a finite val loss; init_unknown:
     * loaded from the catalog with a parent, so that origin is not known. */
    nllm_job_origin_t init_origin;
    int init_unknown;
    /* divergences since a client last started or resumed the job (status
     * `divergences`); each one but a last that used up divergence_retries
     * was rolled back */
    struct {
        int64_t step;
        double grad_norm, lr;
    } div_hist[NLLMD_MAX_DIVERGENCES];
    int ndiv;
    /* device faults since a client last started or resumed the job (status
     * `device_faults`); each one but a last beyond NLLMD_MAX_FAULT_REQUEUES
     * (or with on_device_fault = fail) was requeued */
    int nfault;
    int refs;                /* thread + loop; freed at 0 */
    int removing;

    /* running */
    int device;              /* index in d->devices of rank 0's device, -1 none */
    int ranks;               /* ranks of the run (num_devices), 0 none; set by */
    int rank_dev[NLLM_MAX_JOB_DEVICES]; /* job_launch before the job thread starts and
                              * cleared after it is joined, so the thread may read
                              * them: each rank's device index */
    uint64_t mem_need;       /* loop only: device bytes a rank needs (nllm_model_bytes_needed) */
    int mem_pending;         /* loop only: launched on a GPU, model not allocated yet
                              * (until EV_STARTED or EV_DONE): place.c counts mem_need
                              * as taken */
    uv_thread_t thread;
    int thread_live;
    nllm_trainer_ctl_t ctl;  /* [shared] requests to the trainer */
    atomic_int shutdown_pause; /* [shared] this pause is the daemon stopping */

    /* [shared] live progress, under mu */
    pthread_mutex_t mu;
    nllm_step_report_t last_step;
    int have_step;
    nllm_epoch_report_t last_epoch;
    int have_epoch;
    double best_val_loss;
    int64_t best_epoch;
    int64_t epoch_done, global_step, steps_per_epoch;
    double last_ckpt_time;
    uint64_t ckpt_bytes;
    uint64_t mem_peak;       /* device memory of its latest run at most (0: not known; the
                              * largest of its ranks') */
    double rank_tps[NLLM_MAX_JOB_DEVICES]; /* each rank's own tokens/s, last step */
    char resumed_label[96];
    double progress_sent; /* loop only: last progress notification time */
    /* loop only: the `checkpoints` reply ([0] current, [1] all) and the
     * catalog generation it was read at */
    json_t *ckpt_reply[2];
    int64_t ckpt_reply_gen[2];
};

int nllmd_jobs_load(nllmd_t *d, nllm_err_t *err);       /* from the catalog at start */
nllm_job_t *nllmd_job_find(nllmd_t *d, const char *name);
int nllmd_job_create(nllmd_t *d, const char *name, const nllm_job_config_t *cfg,
                     const nllm_job_origin_t *origin, const char *parent_job,
                     const char *parent_ckpt, nllm_job_t **out, nllm_err_t *err);
int nllmd_job_pause(nllm_job_t *j, int at_epoch_end, nllm_err_t *err);
int nllmd_job_stop(nllm_job_t *j, nllm_err_t *err);
int nllmd_job_resume(nllm_job_t *j, const char *ckpt, const nllm_job_config_t *newcfg,
                     int reset_patience, nllm_err_t *err);
int nllmd_job_extend(nllm_job_t *j, int64_t num_epochs, nllm_err_t *err);
int nllmd_job_remove(nllm_job_t *j, int delete_files, int *deleted, nllm_err_t *err);
void nllmd_schedule(nllmd_t *d);
/* Puts device `name` back in service after a fault (GPUs: cudaDeviceReset
 * first). Refused (NLLM_ESTATE) while jobs run on it; NLLM_ENOENT for a
 * device the daemon does not have. *res: {device, was_healthy, fault}. */
int nllmd_device_reset(nllmd_t *d, const char *name, json_t **res, nllm_err_t *err);
/* A device's health as JSON members: healthy, fault, fault_job, fault_time, faults. */
void nllmd_device_health_json(const nllmd_device_t *v, json_t *o);
/* A device's precisions as o["precisions"] (["fp32", "bf16"]), and a CPU
 * device's kernels (cpu_kernels.h) as o["kernels"]. */
void nllmd_device_kernels_json(const nllmd_device_t *v, json_t *o);
/* Names of the jobs running on device k (a JSON array), in job-list order. */
json_t *nllmd_device_jobs_json(nllmd_t *d, int k);
/* Whether a rank of job j runs on device k now. */
int nllmd_job_uses_device(const nllm_job_t *j, int k);
void nllmd_pause_all_for_shutdown(nllmd_t *d);
int nllmd_jobs_running(nllmd_t *d);
void nllmd_events_drain(nllmd_t *d);
/* Logs an event of job j and records it in the catalog (`nllmctl events`). */
void nllmd_job_event(nllm_job_t *j, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sends notification `method` about job j to the connections that watch
 * it and, in one-shot mode, to d->oneshot_print. Takes params' reference. */
void nllmd_job_notify(nllm_job_t *j, const char *method, json_t *params);
json_t *nllmd_job_status_json(nllm_job_t *j);
/* Frees a job's memory (no thread may still use it; the loop has ended or
 * its last reference is gone). */
void nllmd_job_free(nllm_job_t *j);
/* Loop thread: keep a job's memory alive across async work (uv_queue_work). */
void nllmd_job_ref(nllm_job_t *j);
void nllmd_job_unref(nllm_job_t *j);
int nllmd_resolve_checkpoint(nllmd_t *d, const char *spec, nllm_job_origin_t *o,
                             nllm_err_t *err);

/* verify: rows collected on the loop, files hashed on any thread (the
 * thread pool), results applied to the catalog on the loop */
typedef struct {
    char job[NLLM_CATALOG_NAME_MAX + 1];
    char name[96];
    char path[NLLM_PATH_MAX];
    char checksum[17];
    int64_t id;
    int was_ok;
    char reason[1024]; /* empty: the file verifies */
} nllmd_verify_item_t;

typedef struct {
    nllmd_verify_item_t *items;
    int n;
} nllmd_verify_t;

int nllmd_verify_collect(nllmd_t *d, nllm_job_t *j, nllmd_verify_t *v, nllm_err_t *err);
void nllmd_verify_hash(nllmd_verify_t *v);           /* any thread: no catalog */
json_t *nllmd_verify_apply(nllmd_t *d, nllmd_verify_t *v, int *bad); /* loop */

#endif /* NLLM_JOBS_H */
