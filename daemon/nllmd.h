/* nllmd.h -- the daemon's internal types: the daemon (one libuv loop that
 * owns sockets, timers, signals and the catalog), its jobs (each running
 * job trains on its own thread) and its client connections.
 *
 * Threads: everything in nllmd_t and nllm_job_t is touched only by the
 * loop thread, except the fields marked [shared] (under job->mu or
 * atomic) and the event queue (under d->evmu), through which job and
 * checkpoint-writer threads report back via uv_async_send.
 */
#ifndef NLLM_NLLMD_H
#define NLLM_NLLMD_H

#include <jansson.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

#include "catalog.h"
#include "ckpt.h"
#include "config.h"
#include "http.h"
#include "metrics.h"
#include "rpc.h"
#include "trainer.h"

#define NLLMD_VERSION "0.1.0"
#define NLLMD_MAX_DEVICES 64
#define NLLMD_MAX_JOBS_PER_DEVICE 256
#define NLLMD_WRITE_QUEUE_MAX ((size_t)4 << 20) /* bytes pending per connection */
/* An RPC message whose first byte has arrived must arrive in full within
 * this, or the connection is closed (a client idle between messages is
 * never timed out). Tests lower it with NLLMD_MESSAGE_TIMEOUT_MS. */
#define NLLMD_MESSAGE_TIMEOUT_MS 30000
#define NLLMD_MAX_WATCH 16                      /* jobs one connection watches */
#define NLLMD_MAX_DIVERGENCES 101               /* divergence_retries (<= 100) + 1 */
/* Requeues after device faults (on_device_fault = requeue) since a client
 * last started or resumed a job; the next fault fails it. */
#define NLLMD_MAX_FAULT_REQUEUES 3

typedef struct nllmd nllmd_t;
typedef struct nllm_job nllm_job_t;
typedef struct nllm_conn nllm_conn_t;

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
 * thread and backend; place.c picks the device. Transitions are made only
 * by job_set_state() on the loop thread.
 */

typedef struct {
    char name[32];   /* "cpu", "cuda:0" */
    char kind[8];    /* "cpu" | "cuda" */
    char gpu[128];   /* GPU name, "" for cpu */
    uint64_t mem_total, mem_free;
    unsigned precisions; /* what its backend implements: bit 1 << NLLM_PREC_* */
    int njobs;        /* jobs running on it (j->device == its index), at most
                       * opt.jobs_per_device */
    /* health: a job's backend reported a device fault (NLLM_EDEVICE) here;
     * no job is placed on it until nllmd_device_reset (or a restart) */
    int unhealthy;
    char fault[NLLM_ERR_MSG_MAX]; /* the first fault's message, "" healthy */
    char fault_job[NLLM_CATALOG_NAME_MAX + 1];
    double fault_time;            /* wall clock of that fault */
    uint64_t faults;              /* device faults since the daemon started */
} nllmd_device_t;

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
    int device;              /* index in d->devices, -1 none */
    uint64_t mem_need;       /* loop only: device bytes it needs (nllm_model_bytes_needed) */
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
    uint64_t mem_peak;       /* device memory of its latest run at most (0: not known) */
    char resumed_label[96];
    double progress_sent; /* loop only: last progress notification time */
    /* loop only: the `checkpoints` reply ([0] current, [1] all) and the
     * catalog generation it was read at */
    json_t *ckpt_reply[2];
    int64_t ckpt_reply_gen[2];
};

typedef struct nllm_wbuf {
    uv_write_t req;
    struct nllm_wbuf *next;
    nllm_conn_t *conn;
    size_t len;
    char data[];
} nllm_wbuf_t;

struct nllm_conn {
    nllmd_t *d;
    nllm_conn_t *next;
    union {
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;
    int is_tcp;
    int authed;
    int closing;
    int closing_after_reply; /* close once the pending reply is written */
    int refs;                /* async work in flight (generate); freed at 0 */
    int handle_closed;
    uv_shutdown_t shutdown_req;
    nllm_rpc_decoder_t dec;
    uint64_t msg_started;    /* uv_now when the message now buffered in part
                              * began arriving (0: none in part) */
    size_t pending_bytes;
    char watch[NLLMD_MAX_WATCH][NLLM_CATALOG_NAME_MAX + 1];
    int nwatch;
};

/* Events from job and writer threads to the loop. */
typedef enum {
    EV_EPOCH,     /* an epoch ended (report) */
    EV_CKPT,      /* a checkpoint file is durable: add its catalog row */
    EV_CKPT_FAIL, /* a checkpoint could not be written */
    EV_DONE,      /* the job thread ended */
    EV_STARTED,   /* the job thread loaded data and began training */
} nllmd_ev_kind_t;

typedef struct nllmd_ev {
    struct nllmd_ev *next;
    nllmd_ev_kind_t kind;
    nllm_job_t *job;
    nllm_epoch_report_t epoch;
    /* checkpoint */
    nllm_ckpt_kind_t ckind;
    int64_t ck_epoch, ck_step;
    char path[NLLM_PATH_MAX];
    uint64_t size, checksum, weights_hash;
    double val_loss;
    /* done */
    int rc;                     /* 0 or an NLLM_E* */
    nllm_run_result_t result;
    nllm_err_t err;
    /* done by a divergence (nllm_trainer_diverged): its global step, norm
     * and the learning rate the run had */
    int diverged;
    int64_t div_step;
    double div_norm, div_lr;
} nllmd_ev_t;

typedef struct {
    char state_dir[NLLM_PATH_MAX];
    char socket_path[NLLM_PATH_MAX];
    char listen[256];       /* HOST:PORT or "" */
    char token_file[NLLM_PATH_MAX];
    char devices[256];      /* "cpu", "cuda:0,cuda:1", "" = auto */
    int max_jobs;
    int jobs_per_device;    /* jobs one device runs at once (default 1) */
    int auto_resume;
    size_t max_message;
    int threads;            /* default CPU threads for jobs (0 = all) */
    char metrics[256];      /* HTTP monitoring HOST:PORT, "none", "" = default (http.h) */
} nllmd_opts_t;

struct nllmd {
    uv_loop_t *loop;
    nllmd_opts_t opt;
    nllm_catalog_t *cat;
    nllmd_device_t devices[NLLMD_MAX_DEVICES];
    int ndevices;
    nllm_job_t *jobs;
    nllm_conn_t *conns;
    int nconns;
    uv_pipe_t unix_server;
    int have_unix;
    int socket_activated; /* the service manager owns the socket file */
    uv_tcp_t tcp_server;
    int have_tcp;
    uv_timer_t msg_sweep;    /* closes connections stuck mid-message */
    int have_msg_sweep;
    uint64_t msg_timeout_ms; /* NLLMD_MESSAGE_TIMEOUT_MS or its env override */
    char token[256];
    size_t token_len;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t tick;
    uv_async_t async;
    pthread_mutex_t evmu;
    nllmd_ev_t *ev_head, *ev_tail;
    int waiting_for_memory; /* a queued job waits for GPU memory: the tick reschedules */
    int shutting_down;
    int shutdown_requested; /* by the shutdown method; acted on in on_async */
    int closed;             /* handles closing: the loop is about to end */
    int exit_code;
    double started;
    nllmd_metrics_t metrics; /* counters RPC and HTTP share (metrics.h) */
    nllmd_http_t *http;     /* the monitoring listener (http.c), NULL when off */
    /* one-shot mode (nllmd run): the job it runs, and how to print */
    nllm_job_t *oneshot;
    int oneshot_tty;
};

/* ---- jobs.c ---- */
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
void nllmd_device_kernels_json(const nllmd_device_t *v, json_t *o);
/* Names of the jobs running on device k (a JSON array), in job-list order. */
json_t *nllmd_device_jobs_json(nllmd_t *d, int k);
void nllmd_pause_all_for_shutdown(nllmd_t *d);
int nllmd_jobs_running(nllmd_t *d);
void nllmd_events_drain(nllmd_t *d);
void nllmd_job_event(nllm_job_t *j, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
json_t *nllmd_job_status_json(nllm_job_t *j);
/* Frees a job's memory (no thread may still use it; the loop has ended or
 * its last reference is gone). */
void nllmd_job_free(nllm_job_t *j);
/* Loop thread: keep a job's memory alive across async work (uv_queue_work). */
void nllmd_job_ref(nllm_job_t *j);
void nllmd_job_unref(nllm_job_t *j);
int nllmd_resolve_checkpoint(nllmd_t *d, const char *spec, nllm_job_origin_t *o,
                             nllm_err_t *err);
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
void nllmd_log(nllmd_t *d, const char *job, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- server.c ---- */
int nllmd_server_start(nllmd_t *d, nllm_err_t *err);
void nllmd_server_close(nllmd_t *d);
void nllmd_notify(nllmd_t *d, const char *job, const char *method, json_t *params);
void nllmd_conn_ref(nllm_conn_t *c);
void nllmd_conn_unref(nllm_conn_t *c);
void nllmd_conn_close_after_writes(nllm_conn_t *c);

/* ---- nllmd.c ---- */
void nllmd_begin_shutdown(nllmd_t *d, const char *why);
void nllmd_oneshot_notify(nllmd_t *d, const char *method, json_t *params);

void nllmd_conn_send_json(nllm_conn_t *c, int kind, uint32_t msgid, const char *method,
                          const nllm_err_t *error, json_t *payload);

/* ---- methods.c ---- */
void nllmd_dispatch(nllm_conn_t *c, nllm_rpc_msg_t *msg);

/* ---- jsonpack.c ---- */
int nllm_json_pack(msgpack_packer *pk, const json_t *j);
json_t *nllm_msgpack_to_json(const msgpack_object *o);
json_t *nllm_json_num(double x); /* NaN/inf -> null */

#endif /* NLLM_NLLMD_H */
