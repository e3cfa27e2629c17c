/* jobs.c -- training jobs in nllmd: the state machine (drawn in jobs.h),
 * device scheduling (up to opt.jobs_per_device jobs per device, placed by
 * place.c), the job thread that trains, the checkpoint writer thread beside
 * it, and the loop-side handling of what they report (a run that diverged
 * is rolled back there: divergence_rollback; a device fault takes the
 * device out of service and requeues the job: device_fault).
 *
 * Order of a checkpoint: the training thread copies the state to host
 * memory (snapshot) and goes on; the writer thread writes the file (temp,
 * fsync, rename, fsync dir) and only then posts EV_CKPT; the loop adds the
 * catalog row and only then applies retention. A paused or final
 * checkpoint is waited for before the job thread ends, so its row exists
 * before the job is marked paused/completed.
 *
 * A job on several devices (num_devices N): the job thread is rank 0; it
 * makes the ranks' comm (comm.h: threads on the cpu, NCCL over them on
 * GPUs), loads the data and the checkpoint, and starts a peer thread per
 * other rank (peer_main) whose trainer shares rank 0's data; all run the
 * trainer together, rank 0 alone with the callbacks that report and write
 * checkpoints. A rank that fails aborts the comm, so the others fail at
 * once; rank 0 joins the peers, and the run's error is that of the first
 * rank that failed on its own (a device fault: its device).
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ckpt.h"
#include "collective.h"
#include "cpu/cpu_kernels.h"
#include "cuda/cuda_backend.h"
#include "curves_job.h"
#include "fsutil.h"
#include "jobs.h"
#include "jsonpack.h"
#include "log.h"
#include "place.h"
#include "safetensors.h"
#include "server.h"

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
    /* done: the device index of the rank whose failure ended the run (a
     * device fault is that device's), -1 for rank 0's */
    int fault_dev;
} nllmd_ev_t;

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void nllmd_job_event(nllm_job_t *j, const char *kind, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nllmd_log(j->d, j->name, "%s: %s", kind, msg);
    nllm_err_t err;
    if (nllm_catalog_event_add(j->d->cat, j->name, kind, msg, &err) < 0)
        nllmd_log(j->d, j->name, "could not record event: %s", err.msg);
}

void nllmd_job_notify(nllm_job_t *j, const char *method, json_t *params)
{
    nllmd_t *d = j->d;
    json_incref(params);
    nllmd_notify(d, j->name, method, params); /* the watchers */
    if (d->oneshot && strcmp(d->oneshot->name, j->name) == 0)
        d->oneshot_print(d, method, params);
    json_decref(params);
}

/* ---- events from threads ------------------------------------------------ */

static nllmd_ev_t *ev_new(nllmd_ev_kind_t kind, nllm_job_t *j)
{
    nllmd_ev_t *e = calloc(1, sizeof *e);
    if (!e)
        abort(); /* a lost event would leave a job's state wrong */
    e->kind = kind;
    e->job = j;
    e->fault_dev = -1;
    return e;
}

static void ev_post(nllmd_t *d, nllmd_ev_t *e)
{
    pthread_mutex_lock(&d->evmu);
    if (d->ev_tail)
        d->ev_tail->next = e;
    else
        d->ev_head = e;
    d->ev_tail = e;
    pthread_mutex_unlock(&d->evmu);
    uv_async_send(&d->async);
}

/* ---- lookup and status ---------------------------------------------------- */

nllm_job_t *nllmd_job_find(nllmd_t *d, const char *name)
{
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        if (strcmp(j->name, name) == 0 && !j->removing)
            return j;
    return NULL;
}

static int is_active(const nllm_job_t *j)
{
    return !strcmp(j->state, "running") || !strcmp(j->state, "pausing");
}

json_t *nllmd_job_status_json(nllm_job_t *j)
{
    json_t *o = json_object();
    pthread_mutex_lock(&j->mu);
    nllm_step_report_t st = j->last_step;
    int have_step = j->have_step && is_active(j);
    nllm_epoch_report_t ep = j->last_epoch;
    int have_ep = j->have_epoch;
    json_object_set_new(o, "name", json_string(j->name));
    json_object_set_new(o, "state", json_string(j->state));
    json_object_set_new(o, "epoch", json_integer(j->epoch_done));
    json_object_set_new(o, "num_epochs", json_integer(j->cfg.num_epochs));
    json_object_set_new(o, "step", json_integer(have_step ? st.step_in_epoch : 0));
    json_object_set_new(o, "steps_per_epoch", json_integer(j->steps_per_epoch));
    json_object_set_new(o, "global_step", json_integer(j->global_step));
    json_object_set_new(o, "loss", have_step ? nllm_json_num(st.running_loss) : json_null());
    json_object_set_new(o, "train_loss", have_ep ? nllm_json_num(ep.train_loss) : json_null());
    json_object_set_new(o, "val_loss", have_ep ? nllm_json_num(ep.val_loss) : json_null());
    json_object_set_new(o, "val_ppl", have_ep ? nllm_json_num(ep.val_ppl) : json_null());
    json_object_set_new(o, "val_acc", have_ep ? nllm_json_num(ep.val_acc) : json_null());
    json_object_set_new(o, "best_val_loss", nllm_json_num(j->best_val_loss));
    json_object_set_new(o, "best_epoch", json_integer(j->best_epoch));
    json_object_set_new(o, "tokens_per_s", json_real(have_step ? st.tokens_per_s : 0.0));
    json_object_set_new(o, "epoch_seconds", json_real(have_step ? st.epoch_seconds : 0.0));
    json_object_set_new(o, "last_checkpoint_time", nllm_json_num(j->last_ckpt_time));
    json_object_set_new(o, "checkpoint_bytes", json_integer((json_int_t)j->ckpt_bytes));
    json_object_set_new(o, "device_memory_peak",
                        j->mem_peak ? json_integer((json_int_t)j->mem_peak) : json_null());
    /* each rank of the running job: its device and its own throughput */
    json_t *devs = j->ranks > 0 ? json_array() : json_null();
    json_t *ranks = json_array();
    for (int r = 0; r < j->ranks; r++) {
        const char *dn = j->d->devices[j->rank_dev[r]].name;
        json_array_append_new(devs, json_string(dn));
        json_array_append_new(ranks, json_pack("{s:i,s:s,s:f}", "rank", r, "device", dn,
                                               "tokens_per_s",
                                               have_step ? j->rank_tps[r] : 0.0));
    }
    pthread_mutex_unlock(&j->mu);
    json_object_set_new(o, "num_devices", json_integer(j->cfg.num_devices));
    json_object_set_new(o, "devices", devs);
    json_object_set_new(o, "ranks", ranks);
    json_object_set_new(o, "device",
                        j->device >= 0 ? json_string(j->d->devices[j->device].name)
                                       : json_null());
    json_object_set_new(o, "precision", json_string(nllm_precision_name(j->cfg.precision)));
    json_object_set_new(o, "device_jobs",
                        j->device >= 0 ? nllmd_device_jobs_json(j->d, j->device) : json_null());
    json_object_set_new(o, "error", j->error[0] ? json_string(j->error) : json_null());
    json_object_set_new(o, "attempt", json_integer(j->attempt));
    json_object_set_new(o, "divergences", json_integer(j->ndiv));
    json_object_set_new(o, "device_faults", json_integer(j->nfault));
    json_object_set_new(o, "created", json_real(j->created));
    json_object_set_new(o, "updated", json_real(j->updated));
    json_object_set_new(o, "config", nllm_job_config_to_json(&j->cfg));
    return o;
}

static void notify_state(nllm_job_t *j, json_t *extra)
{
    json_t *p = json_pack("{s:s,s:s,s:o}", "name", j->name, "state", j->state, "error",
                          j->error[0] ? json_string(j->error) : json_null());
    if (extra)
        json_object_update(p, extra);
    nllmd_job_notify(j, "state", p);
}

static void job_set_state(nllm_job_t *j, const char *state, const char *error)
{
    nllm_err_t err;
    snprintf(j->state, sizeof j->state, "%s", state);
    if (error) {
        if (error != j->error) { /* callers pass j->error itself to keep it */
            snprintf(j->error, sizeof j->error, "%s", error);
            j->error_code = 0;
        }
    } else if (strcmp(state, "failed") != 0) {
        j->error[0] = '\0';
        j->error_code = 0;
    }
    j->updated = wall_now();
    if (nllm_catalog_job_set_state(j->d->cat, j->name, state, j->error[0] ? j->error : NULL,
                                   &err) < 0)
        nllmd_log(j->d, j->name, "catalog: %s", err.msg);
    notify_state(j, NULL);
}

/* ---- the checkpoint writer (one thread per running job) ------------------ */

typedef struct wjob {
    struct wjob *next;
    nllm_ckpt_t *ck;
    char path[NLLM_PATH_MAX];
    int64_t epoch;
    double val_loss;
} wjob_t;

typedef struct {
    nllm_job_t *job;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    wjob_t *head, *tail;
    int queued; /* jobs in the queue or being written */
    int quit;
    int failed; /* a write failed during this run */
    /* timings of the last snapshot and write (seconds) */
    double snap_s, write_s;
} writer_t;

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    nllm_job_t *j = w->job;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->head && !w->quit)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->head)
            break;
        wjob_t *q = w->head;
        w->head = q->next;
        if (!w->head)
            w->tail = NULL;
        pthread_mutex_unlock(&w->mu);

        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        nllmd_ev_t *e = ev_new(EV_CKPT, j);
        uint64_t h = 0, size = 0;
        int rc = nllm_ckpt_write(q->ck, q->path, &h, &size, &e->err);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        e->kind = rc < 0 ? EV_CKPT_FAIL : EV_CKPT;
        e->rc = rc;
        e->ckind = q->ck->kind;
        e->ck_epoch = q->epoch;
        e->ck_step = q->ck->progress.global_step;
        snprintf(e->path, sizeof e->path, "%s", q->path);
        e->size = size;
        e->checksum = h;
        e->weights_hash = q->ck->weights_hash;
        e->val_loss = q->val_loss;
        ev_post(j->d, e);
        nllm_ckpt_free(q->ck);
        free(q);

        pthread_mutex_lock(&w->mu);
        w->write_s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (rc < 0)
            w->failed = 1;
        w->queued--;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Waits until at most `max` writes are pending. */
static void writer_wait(writer_t *w, int max)
{
    pthread_mutex_lock(&w->mu);
    while (w->queued > max)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

/* ---- the job thread ------------------------------------------------------ */

static int is_gpu(const nllmd_device_t *v)
{
    return strcmp(v->kind, "cuda") == 0;
}

typedef struct {
    nllm_job_t *job;
    writer_t *w;
    nllm_backend_t *be;
    uint64_t model_bytes; /* nllm_model_device_bytes of the trainer's model */
} run_ctx_t;

/* The job's device memory at most so far: what its backend counted (GPUs),
 * at least what the model holds. Job thread; the copy is under j->mu. */
static uint64_t mem_peak_of(const run_ctx_t *rc)
{
    uint64_t peak = rc->be->mem_peak;
    return peak > rc->model_bytes ? peak : rc->model_bytes;
}

static void on_step(void *ud, nllm_trainer_t *tr, const nllm_step_report_t *r)
{
    (void)tr;
    run_ctx_t *rc = ud;
    nllm_job_t *j = rc->job;
    uint64_t peak = mem_peak_of(rc);
    pthread_mutex_lock(&j->mu);
    j->last_step = *r;
    j->have_step = 1;
    j->global_step = r->global_step;
    j->rank_tps[0] = r->rank_tokens_per_s;
    if (peak > j->mem_peak)
        j->mem_peak = peak;
    pthread_mutex_unlock(&j->mu);
}

static void on_epoch(void *ud, nllm_trainer_t *tr, const nllm_epoch_report_t *r)
{
    nllm_job_t *j = ((run_ctx_t *)ud)->job;
    nllm_progress_t *p = nllm_trainer_progress(tr);
    pthread_mutex_lock(&j->mu);
    j->last_epoch = *r;
    j->have_epoch = 1;
    j->epoch_done = p->epoch;
    j->best_val_loss = p->best_val_loss;
    j->best_epoch = p->best_epoch;
    pthread_mutex_unlock(&j->mu);
    nllmd_ev_t *e = ev_new(EV_EPOCH, j);
    e->epoch = *r;
    ev_post(j->d, e);
}

static int on_checkpoint(void *ud, nllm_trainer_t *tr, nllm_ckpt_kind_t kind, int64_t epoch,
                         nllm_err_t *err)
{
    run_ctx_t *rc = ud;
    nllm_job_t *j = rc->job;
    writer_t *w = rc->w;
    /* at most one more snapshot in memory than the one being written */
    writer_wait(w, 1);
    char name[256], path[NLLM_PATH_MAX];
    nllm_ckpt_filename(j->name, kind, epoch, name, sizeof name);
    snprintf(path, sizeof path, "%s/checkpoints/%s", j->dir, name);
    nllm_model_t *m = nllm_trainer_model(tr);
    uint64_t need = (uint64_t)nllm_model_num_floats(m) * 12u + (1u << 20);
    uint64_t avail = 0;
    nllm_err_t ferr;
    char dir[NLLM_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/checkpoints", j->dir);
    if (nllm_fs_free_bytes(dir, &avail, &ferr) == 0 && avail < need) {
        nllmd_ev_t *e = ev_new(EV_CKPT_FAIL, j);
        nllm_err_set(&e->err, NLLM_ENOSPC,
                     "checkpoint %s not written: it needs about %.1f MB but %s has %.1f MB "
                     "free; free disk space, then resume the job",
                     name, (double)need / 1e6, dir, (double)avail / 1e6);
        e->rc = NLLM_ENOSPC;
        e->ckind = kind;
        ev_post(j->d, e);
        pthread_mutex_lock(&w->mu);
        w->failed = 1;
        pthread_mutex_unlock(&w->mu);
        return 0; /* training goes on; the loop pauses the job with the reason */
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    nllm_ckpt_t *ck;
    int r = nllm_ckpt_snapshot(tr, j->name, kind, &ck, err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (r < 0)
        return r;
    wjob_t *q = calloc(1, sizeof *q);
    if (!q) {
        nllm_ckpt_free(ck);
        return nllm_err_set(err, NLLM_ENOMEM, "checkpoint %s: out of memory", name);
    }
    q->ck = ck;
    q->epoch = epoch;
    snprintf(q->path, sizeof q->path, "%s", path);
    const nllm_progress_t *p = &ck->progress;
    q->val_loss = kind == NLLM_CKPT_BEST ? p->best_val_loss
                  : p->hist.n > 0       ? p->hist.val_loss[p->hist.n - 1]
                                        : NAN;
    pthread_mutex_lock(&w->mu);
    w->snap_s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (w->tail)
        w->tail->next = q;
    else
        w->head = q;
    w->tail = q;
    w->queued++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (kind == NLLM_CKPT_PAUSED || kind == NLLM_CKPT_FINAL)
        writer_wait(w, 0);
    return 0;
}

/* ---- the other ranks of a job on several devices ---------------------------- */

typedef struct {
    nllm_job_t *job;
    int rank;
    nllm_comm_t *comm;            /* this rank's handle; the peer frees it */
    const nllm_trainer_t *first;  /* rank 0's: the config and the data */
    char device[32];
    int threads;
    nllm_precision_t precision;
    pthread_t thread;
    int started;
    /* results */
    int rc, own; /* own: it failed before the comm broke (not because of it) */
    nllm_err_t err;
    nllm_backend_t *be;
    uint64_t model_bytes;
} peer_t;

static void on_peer_step(void *ud, nllm_trainer_t *tr, const nllm_step_report_t *r)
{
    (void)tr;
    peer_t *p = ud;
    nllm_job_t *j = p->job;
    uint64_t peak = p->be->mem_peak > p->model_bytes ? p->be->mem_peak : p->model_bytes;
    pthread_mutex_lock(&j->mu);
    j->rank_tps[p->rank] = r->rank_tokens_per_s;
    if (peak > j->mem_peak)
        j->mem_peak = peak;
    pthread_mutex_unlock(&j->mu);
}

/* A rank whose run failed: whether it failed on its own (the comm was not
 * broken yet), then the comm broken so that the others stop at once. */
static int rank_failed(nllm_comm_t *comm, const nllm_err_t *err)
{
    int own = !nllm_comm_broken(comm);
    nllm_comm_abort(comm, err->msg);
    return own;
}

/* A peer rank's thread: its backend, a trainer beside rank 0's, the run
 * (no callbacks but its throughput; rank 0 reports and writes). */
static void *peer_main(void *arg)
{
    peer_t *p = arg;
    nllm_job_t *j = p->job;
    nllm_trainer_t *tr = NULL;
    nllm_err_t *err = &p->err;
    int rc = nllm_backend_create(p->device, p->threads, &p->be, err);
    if (rc == 0)
        rc = nllm_backend_set_precision(p->be, p->precision, err);
    if (rc == 0)
        rc = nllm_trainer_create_peer(p->first, p->be, p->comm, &tr, err);
    if (rc == 0) {
        p->model_bytes = nllm_model_device_bytes(nllm_trainer_model(tr));
        nllm_trainer_use_ctl(tr, &j->ctl);
        nllm_trainer_cbs_t cbs = {p, on_peer_step, NULL, NULL};
        nllm_run_result_t res;
        rc = nllm_trainer_run(tr, &cbs, &res, err);
    }
    if (rc < 0)
        p->own = rank_failed(p->comm, err);
    p->rc = rc;
    nllm_trainer_destroy(tr);
    if (p->be)
        p->be->destroy(p->be);
    p->be = NULL;
    nllm_comm_free(p->comm);
    return NULL;
}

/* CPU threads of each rank: the job's (or the daemon's default), split
 * among ranks that share the cpu, at least one each. */
static int rank_threads(nllmd_t *d, const nllm_job_t *j, int dev)
{
    int threads = j->cfg.threads > 0 ? j->cfg.threads : d->opt.threads;
    if (j->ranks <= 1 || is_gpu(&d->devices[dev]))
        return threads;
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    int sharing = 0;
    for (int r = 0; r < j->ranks; r++)
        sharing += j->rank_dev[r] == dev;
    threads /= sharing > 0 ? sharing : 1;
    return threads > 0 ? threads : 1;
}

/* The comm of the job's ranks (comms[r], rank r's handle): nllmd run under
 * MPI: the world, wrapped in NCCL on a GPU; a job on several devices: the
 * threads comm, wrapped in NCCL on GPUs; else none (NULL). */
static int make_comms(nllm_job_t *j, nllm_comm_t **comms, nllm_err_t *err)
{
    nllmd_t *d = j->d;
    const int n = j->ranks;
    const int gpu = is_gpu(&d->devices[j->rank_dev[0]]);
    comms[0] = NULL;
    if (d->comm && nllm_comm_size(d->comm) > 1) {
        if (n > 1)
            return nllm_err_set(err, NLLM_EINVAL,
                                "job %s: num_devices %d cannot be combined with %d MPI ranks: "
                                "under mpirun each rank trains on one device; start as many "
                                "ranks as devices instead",
                                j->name, n, nllm_comm_size(d->comm));
        if (!gpu) {
            comms[0] = d->comm;
            return 0;
        }
        int rc = nllm_comm_nccl_create_rank(d->comm, atoi(d->devices[j->rank_dev[0]].name + 5),
                                            &comms[0], err);
        return rc < 0 ? nllm_err_prefix(err, "job %s: ", j->name) : 0;
    }
    if (n <= 1)
        return 0;
    int rc = nllm_comm_threads_create(n, comms, err);
    if (rc == 0 && gpu) {
        int ids[NLLM_MAX_JOB_DEVICES];
        for (int r = 0; r < n; r++)
            ids[r] = atoi(d->devices[j->rank_dev[r]].name + 5);
        rc = nllm_comm_nccl_create_all(n, ids, comms, comms, err);
    }
    return rc < 0 ? nllm_err_prefix(err, "job %s: ", j->name) : 0;
}

static void job_main(void *arg)
{
    nllm_job_t *j = arg;
    nllmd_t *d = j->d;
    nllmd_ev_t *done = ev_new(EV_DONE, j);
    nllm_err_t *err = &done->err;
    nllm_backend_t *be = NULL;
    nllm_trainer_t *tr = NULL;
    nllm_ckpt_t *ck = NULL;
    nllm_vocab_t vocab = {0};
    int have_vocab = 0;
    int rc = 0;
    nllm_job_config_t cfg = j->cfg; /* the loop may change j->cfg while we run */
    const nllm_job_origin_t *o = &j->origin;
    writer_t w = {.job = j};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    int writer_started = 0;
    const int ranks = j->ranks; /* fixed while the thread runs */
    nllm_comm_t *comms[NLLM_MAX_JOB_DEVICES] = {0};
    peer_t *peers = NULL;

    rc = make_comms(j, comms, err);
    if (rc == 0)
        rc = nllm_backend_create(d->devices[j->rank_dev[0]].name,
                                 rank_threads(d, j, j->rank_dev[0]), &be, err);
    if (rc == 0 && (rc = nllm_backend_set_precision(be, cfg.precision, err)) < 0)
        nllm_err_prefix(err, "job %s: ", j->name);
    if (rc == 0 && o->path[0]) {
        rc = nllm_ckpt_load(o->path, o->checksum, o->weights_only ? &cfg.model : NULL, &ck, err);
        if (rc == 0 && ck->vocab) {
            rc = nllm_vocab_from_json(ck->vocab, &vocab, err);
            have_vocab = rc == 0;
            if (rc == 0 && (vocab.kind != cfg.tokenizer ||
                            vocab.vocab_size != cfg.model.vocab_size))
                rc = nllm_err_set(err, NLLM_EMISMATCH,
                                  "checkpoint %s has a %s tokenizer of %d ids but the job asks "
                                  "for %s with vocab_size %d: use the checkpoint's settings",
                                  o->label, vocab.kind == NLLM_TOK_BYTE ? "byte" : "word",
                                  vocab.vocab_size,
                                  cfg.tokenizer == NLLM_TOK_BYTE ? "byte" : "word",
                                  cfg.model.vocab_size);
        }
    }
    if (rc == 0) {
        char cache[NLLM_PATH_MAX + 32];
        snprintf(cache, sizeof cache, "%s/tokens.cache", j->dir);
        rc = nllm_trainer_create(&cfg, cache, have_vocab ? &vocab : NULL, be, comms[0], &tr, err);
        if (rc == 0 && nllm_trainer_data(tr)->cache_err.code)
            nllmd_log(d, j->name, "%s", nllm_trainer_data(tr)->cache_err.msg);
    }
    if (rc == 0) {
        nllm_trainer_use_ctl(tr, &j->ctl);
        if (ck) {
            rc = nllm_ckpt_apply_model(ck, nllm_trainer_model(tr),
                                       !o->weights_only || o->with_optimizer, err);
            if (rc == 0 && !o->weights_only) {
                rc = nllm_trainer_restore(tr, &ck->progress, err);
                if (rc == 0 && o->reset_patience) {
                    nllm_progress_t *p = nllm_trainer_progress(tr);
                    p->es_counter = 0;
                    p->es_best = INFINITY;
                    p->stopped_early = 0;
                }
            }
            if (rc < 0)
                nllm_err_prefix(err, "resuming from %s: ", o->label);
        }
    }
    if (rc == 0) {
        nllm_progress_t *p = nllm_trainer_progress(tr);
        /* an explicit resume continues a job that patience had ended */
        if (o->path[0] && !o->weights_only && p->stopped_early &&
            p->epoch < atomic_load(&j->ctl.num_epochs))
            p->stopped_early = 0, p->es_counter = 0;
        pthread_mutex_lock(&j->mu);
        j->steps_per_epoch = nllm_trainer_steps_per_epoch(tr);
        j->epoch_done = p->epoch;
        j->global_step = p->global_step;
        j->best_val_loss = p->best_val_loss;
        j->best_epoch = p->best_epoch;
        j->have_step = 0;
        for (int r = 0; r < ranks; r++)
            j->rank_tps[r] = 0;
        pthread_mutex_unlock(&j->mu);
        nllmd_ev_t *e = ev_new(EV_STARTED, j);
        e->ck_epoch = p->epoch;
        e->val_loss = p->best_val_loss;
        snprintf(e->path, sizeof e->path, "%s", o->path[0] ? o->label : "");
        ev_post(d, e);
        if (pthread_create(&w.thread, NULL, writer_main, &w) != 0)
            rc = nllm_err_set(err, NLLM_ENOMEM, "cannot start the checkpoint writer thread");
        else
            writer_started = 1;
    }
    nllm_ckpt_free(ck);
    ck = NULL;
    if (rc == 0 && ranks > 1 && !(peers = calloc((size_t)ranks, sizeof *peers)))
        rc = nllm_err_set(err, NLLM_ENOMEM, "job %s: out of memory", j->name);
    for (int r = 1; rc == 0 && r < ranks; r++) {
        /* the other ranks: each on its thread, beside rank 0's trainer */
        peer_t *pr = &peers[r];
        pr->job = j;
        pr->rank = r;
        pr->comm = comms[r];
        pr->first = tr;
        snprintf(pr->device, sizeof pr->device, "%s", d->devices[j->rank_dev[r]].name);
        pr->threads = rank_threads(d, j, j->rank_dev[r]);
        pr->precision = cfg.precision;
        if (pthread_create(&pr->thread, NULL, peer_main, pr) != 0) {
            rc = nllm_err_set(err, NLLM_ENOMEM, "job %s: cannot start the thread of rank %d",
                              j->name, r);
            break;
        }
        pr->started = 1;
        comms[r] = NULL; /* the peer's now */
    }
    int own0 = 1; /* rank 0 failed on its own */
    if (rc == 0) {
        run_ctx_t ctx = {j, &w, be, nllm_model_device_bytes(nllm_trainer_model(tr))};
        uint64_t peak = mem_peak_of(&ctx);
        pthread_mutex_lock(&j->mu);
        if (peak > j->mem_peak)
            j->mem_peak = peak;
        pthread_mutex_unlock(&j->mu);
        nllm_trainer_cbs_t cbs = {&ctx, on_step, on_epoch, on_checkpoint};
        rc = nllm_trainer_run(tr, &cbs, &done->result, err);
        if (rc < 0 && nllm_trainer_diverged(tr, &done->div_step, &done->div_norm)) {
            done->diverged = 1;
            done->div_lr = cfg.learning_rate;
        }
    }
    if (rc < 0 && comms[0])
        own0 = rank_failed(comms[0], err);
    /* the peers end with rank 0 (together, or at once once the comm broke);
     * the run's error is the first one that failed on its own */
    for (int r = 1; peers && r < ranks; r++) {
        peer_t *pr = &peers[r];
        if (!pr->started)
            continue;
        pthread_join(pr->thread, NULL);
        if (pr->rc < 0 && pr->own && !(rc < 0 && own0) && !done->diverged) {
            done->fault_dev = j->rank_dev[r];
            char msg[NLLM_ERR_MSG_MAX];
            snprintf(msg, sizeof msg, "rank %d of %d (%s): %s", r, ranks, pr->device,
                     pr->err.msg);
            rc = nllm_err_set(err, pr->rc, "%s", msg);
            own0 = 1; /* this one stays */
        } else if (pr->rc < 0 && rc == 0) {
            rc = nllm_err_set(err, pr->rc, "rank %d of %d (%s): %s", r, ranks, pr->device,
                              pr->err.msg);
        }
    }
    free(peers);
    for (int r = 0; r < ranks && r < NLLM_MAX_JOB_DEVICES; r++)
        if (comms[r] != d->comm)
            nllm_comm_free(comms[r]); /* rank 0's, and those of peers never started */
    if (writer_started) {
        writer_wait(&w, 0);
        pthread_mutex_lock(&w.mu);
        w.quit = 1;
        pthread_cond_broadcast(&w.cv);
        pthread_mutex_unlock(&w.mu);
        pthread_join(w.thread, NULL);
        if (w.snap_s > 0)
            nllmd_log(d, j->name, "last checkpoint: snapshot %.1f ms on the training thread, "
                      "write %.1f ms on the writer thread", w.snap_s * 1e3, w.write_s * 1e3);
    }
    done->rc = rc;
    done->ck_step = w.failed; /* a checkpoint write failed during the run */
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    nllm_trainer_destroy(tr);
    if (have_vocab)
        nllm_vocab_free(&vocab);
    if (be)
        be->destroy(be);
    ev_post(d, done);
}

/* ---- scheduling ------------------------------------------------------------ */

int nllmd_jobs_running(nllmd_t *d)
{
    int n = 0;
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        n += j->thread_live;
    return n;
}

int nllmd_job_uses_device(const nllm_job_t *j, int k)
{
    for (int r = 0; r < j->ranks; r++)
        if (j->rank_dev[r] == k)
            return 1;
    return 0;
}

json_t *nllmd_device_jobs_json(nllmd_t *d, int k)
{
    json_t *a = json_array();
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        if (nllmd_job_uses_device(j, k))
            json_array_append_new(a, json_string(j->name));
    return a;
}

/* Each device the running job j uses once (ranks may share the cpu):
 * calls fn(d, k, ud) for it. */
static void for_job_devices(nllm_job_t *j, void (*fn)(nllmd_t *d, int k, void *ud), void *ud)
{
    for (int r = 0; r < j->ranks; r++) {
        int seen = 0;
        for (int q = 0; q < r; q++)
            seen |= j->rank_dev[q] == j->rank_dev[r];
        if (!seen)
            fn(j->d, j->rank_dev[r], ud);
    }
}

static void dev_take(nllmd_t *d, int k, void *ud)
{
    d->devices[k].njobs += *(int *)ud;
}

/* The devices as place.c sees them: jobs per device, and each GPU's free
 * memory read now, less what the jobs launched there and not yet allocated
 * will take; a device out of service after a fault is excluded (a job
 * that may use no other one waits). */
static void place_snapshot(nllmd_t *d, nllmd_place_dev_t *pd)
{
    for (int k = 0; k < d->ndevices; k++) {
        nllmd_device_t *v = &d->devices[k];
        uint64_t total, freeb;
        if (is_gpu(v) && nllm_cuda_device_info(atoi(v->name + 5), NULL, 0, &total, &freeb) == 0) {
            v->mem_total = total;
            v->mem_free = freeb;
        }
        pd[k] = (nllmd_place_dev_t){v->name, is_gpu(v), v->njobs, is_gpu(v) ? v->mem_total : 0,
                                    is_gpu(v) ? v->mem_free : 0, v->unhealthy};
    }
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        for (int r = 0; j->mem_pending && r < j->ranks; r++) {
            nllmd_place_dev_t *p = &pd[j->rank_dev[r]];
            if (p->is_gpu)
                p->mem_free = p->mem_free > j->mem_need ? p->mem_free - j->mem_need : 0;
        }
}

/* Starts job j's thread, rank r on device devs[r] (ranks of them). */
static void job_launch(nllm_job_t *j, const int *devs, int ranks)
{
    nllmd_t *d = j->d;
    const int dev = devs[0];
    j->device = dev;
    j->ranks = ranks;
    memcpy(j->rank_dev, devs, sizeof(int) * (size_t)ranks);
    j->mem_pending = is_gpu(&d->devices[dev]);
    int one = 1, minus = -1;
    for_job_devices(j, dev_take, &one);
    pthread_mutex_lock(&j->mu);
    j->mem_peak = 0; /* of this run */
    pthread_mutex_unlock(&j->mu);
    atomic_store(&j->ctl.pause, 0);
    atomic_store(&j->ctl.pause_epoch_end, 0);
    atomic_store(&j->ctl.stop, 0);
    atomic_store(&j->ctl.num_epochs, j->cfg.num_epochs);
    atomic_store(&j->shutdown_pause, 0);
    j->refs++;
    j->thread_live = 1;
    job_set_state(j, "running", NULL);
    if (uv_thread_create(&j->thread, job_main, j) != 0) {
        j->thread_live = 0;
        j->refs--;
        for_job_devices(j, dev_take, &minus);
        j->device = -1;
        j->ranks = 0;
        j->mem_pending = 0;
        job_set_state(j, "failed", "could not start the job's thread");
        return;
    }
    int others = d->devices[dev].njobs - 1;
    char with[64] = "", on[NLLM_ERR_MSG_MAX / 2] = "";
    if (others > 0)
        snprintf(with, sizeof with, ", beside %d other job%s", others, others > 1 ? "s" : "");
    if (ranks == 1) {
        snprintf(on, sizeof on, "%s", d->devices[dev].name);
    } else if (!is_gpu(&d->devices[dev])) {
        snprintf(on, sizeof on, "%s (%d data-parallel ranks sharing it)", d->devices[dev].name,
                 ranks);
    } else {
        size_t used = 0;
        for (int r = 0; r < ranks && used < sizeof on; r++)
            used += (size_t)snprintf(on + used, sizeof on - used, "%s%s", r ? ", " : "",
                                     d->devices[devs[r]].name);
        if (used < sizeof on)
            snprintf(on + used, sizeof on - used, " (%d data-parallel ranks)", ranks);
    }
    nllmd_job_event(j, "started", "training on %s%s, precision %s (attempt %lld)%s%s", on, with,
                    nllm_precision_name(j->cfg.precision), (long long)j->attempt,
                    j->origin.path[0] ? " from " : "", j->origin.path[0] ? j->origin.label : "");
}

/* Starts queued jobs, in creation order, while max_jobs allows: each on the
 * device place.c picks, or it stays queued (a later job that fits elsewhere
 * may go first). A job no GPU it may use could ever hold fails at once,
 * with the reason, as a job that ran out of memory does. */
void nllmd_schedule(nllmd_t *d)
{
    d->waiting_for_memory = 0;
    if (d->shutting_down)
        return;
    int queued = 0;
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        queued += !strcmp(j->state, "queued") && !j->removing;
    if (!queued)
        return;
    nllmd_place_dev_t pd[NLLMD_MAX_DEVICES];
    place_snapshot(d, pd);
    int running = nllmd_jobs_running(d);
    for (nllm_job_t *j = d->jobs; j; j = j->next) {
        if (strcmp(j->state, "queued") != 0 || j->removing)
            continue;
        /* each rank holds the activations of its share of the batch */
        const int ranks = j->cfg.num_devices >= 1 ? j->cfg.num_devices : 1;
        uint64_t need = nllm_model_bytes_needed(&j->cfg.model, j->cfg.batch_size / ranks);
        char why[768];
        /* devices that lack the job's precision are not its devices */
        nllmd_place_dev_t pj[NLLMD_MAX_DEVICES];
        for (int v = 0; v < d->ndevices; v++) {
            pj[v] = pd[v];
            pj[v].excluded =
                pd[v].excluded || !((d->devices[v].precisions >> j->cfg.precision) & 1u);
        }
        int devs[NLLM_MAX_JOB_DEVICES];
        int k = nllmd_place_ranks(pj, d->ndevices, j->cfg.device, ranks, d->opt.jobs_per_device,
                                  need, devs, why, sizeof why);
        if (k == NLLMD_PLACE_NEVER) {
            char msg[NLLM_ERR_MSG_MAX];
            snprintf(msg, sizeof msg, "job %s cannot run: %s", j->name, why);
            nllmd_job_event(j, "failed", "%s", msg);
            job_set_state(j, "failed", msg);
            continue;
        }
        if (running >= d->opt.max_jobs)
            continue;
        if (k < 0) {
            /* a GPU with a free slot but not the memory: look again each tick
             * (other processes free memory without telling us) */
            for (int v = 0; v < d->ndevices; v++)
                if (pj[v].is_gpu && pj[v].jobs < d->opt.jobs_per_device &&
                    nllmd_place_allowed(&pj[v], j->cfg.device))
                    d->waiting_for_memory = 1;
            continue;
        }
        j->mem_need = need;
        job_launch(j, devs, ranks);
        if (!j->thread_live)
            continue;
        running++;
        for (int r = 0; r < ranks; r++) {
            int seen = 0;
            for (int q = 0; q < r; q++)
                seen |= devs[q] == devs[r];
            if (!seen)
                pd[devs[r]].jobs++;
            if (pd[devs[r]].is_gpu)
                pd[devs[r]].mem_free = pd[devs[r]].mem_free > need ? pd[devs[r]].mem_free - need
                                                                   : 0;
        }
    }
}

/* ---- loop side of the events ------------------------------------------------ */

static void job_unref(nllm_job_t *j)
{
    if (--j->refs > 0)
        return;
    nllmd_t *d = j->d;
    for (nllm_job_t **pp = &d->jobs; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    nllmd_job_free(j);
}

void nllmd_job_ref(nllm_job_t *j)
{
    j->refs++;
}

void nllmd_job_unref(nllm_job_t *j)
{
    job_unref(j);
}

void nllmd_job_free(nllm_job_t *j)
{
    pthread_mutex_destroy(&j->mu);
    json_decref(j->ckpt_reply[0]);
    json_decref(j->ckpt_reply[1]);
    free(j);
}

/* Training-curve files (curves_job.h): {name}_training_curves_epoch_N.svg
 * every save_every epochs, once the epoch's catalog row is added, and
 * {name}_training_curves_final.svg once EV_DONE has set the job completed
 * or stopped. A failure is a curves_failed event, never fatal. The job
 * holds a reference while its file is written. */
static void curves_done(void *data, const char *path, int rc, const nllm_err_t *err)
{
    nllm_job_t *j = data;
    if (rc < 0) {
        const char *file = strrchr(path, '/');
        nllmd_job_event(j, "curves_failed", "%s: %s", file ? file + 1 : path, err->msg);
    }
    nllmd_job_unref(j);
}

/* suffix: "epoch_N" or "final" */
static void write_curves(nllm_job_t *j, const char *suffix, const char *what)
{
    char path[NLLM_PATH_MAX + 128], title[256];
    nllm_err_t err = {0};
    snprintf(path, sizeof path, "%s/%s_training_curves_%s.svg", j->dir, j->name, suffix);
    snprintf(title, sizeof title, "%s: training curves (%s)", j->name, what);
    int rc = nllmd_curves_write(j->d->loop, j->d->cat, j->name, path, title, curves_done, j, &err);
    if (rc == 0)
        nllmd_job_ref(j); /* curves_done drops it */
    else if (rc < 0)
        nllmd_job_event(j, "curves_failed", "%s_training_curves_%s.svg: %s", j->name, suffix,
                        err.msg);
}

static void curves_on_epoch(nllm_job_t *j, int64_t epoch)
{
    if (j->cfg.save_every < 1 || epoch < 1 || epoch % j->cfg.save_every != 0)
        return;
    char suffix[48], what[48];
    snprintf(suffix, sizeof suffix, "epoch_%lld", (long long)epoch);
    snprintf(what, sizeof what, "epoch %lld", (long long)epoch);
    write_curves(j, suffix, what);
}

static void curves_on_done(nllm_job_t *j)
{
    if (strcmp(j->state, "completed") != 0 && strcmp(j->state, "stopped") != 0)
        return;
    write_curves(j, "final", j->state);
}

static void retention(nllm_job_t *j)
{
    if (j->cfg.keep <= 0)
        return;
    nllm_catalog_ckpt_t *cks;
    size_t n;
    nllm_err_t err;
    if (nllm_catalog_ckpt_list(j->d->cat, j->name, 1, &cks, &n, &err) < 0)
        return;
    size_t periodic = 0;
    for (size_t i = 0; i < n; i++)
        periodic += strcmp(cks[i].kind, "epoch") == 0;
    /* rows come oldest first by step; drop the oldest periodic ones */
    for (size_t i = 0; i < n && periodic > (size_t)j->cfg.keep; i++) {
        if (strcmp(cks[i].kind, "epoch") != 0)
            continue;
        /* the row first: a crash in between leaves a file no row names, never a
         * row whose file is gone; the next start-up removes that file
         * (reconcile_unlisted) */
        if (nllm_catalog_ckpt_delete(j->d->cat, j->name, cks[i].id, &err) < 0) {
            nllmd_log(j->d, j->name, "retention: cannot delete %s: %s", cks[i].name, err.msg);
            continue;
        }
        if (unlink(cks[i].path) != 0 && errno != ENOENT)
            nllmd_log(j->d, j->name, "retention: cannot delete %s: %s", cks[i].path,
                      strerror(errno));
        nllmd_job_event(j, "retention", "deleted %s (keep %d)", cks[i].name, j->cfg.keep);
        periodic--;
    }
    nllm_catalog_ckpts_free(cks, n);
}

/* A checkpoint that could not be made durable or recorded: the job pauses at
 * the next step with the reason (j->error; EV_DONE keeps it). */
static void checkpoint_failed(nllm_job_t *j, int code, const char *msg)
{
    nllmd_job_event(j, "checkpoint_failed", "%s", msg);
    snprintf(j->error, sizeof j->error, "%s", msg);
    j->ckpt_failures++;
    if (j->thread_live && !atomic_load(&j->ctl.pause)) {
        atomic_store(&j->ctl.pause, 1);
        if (strcmp(j->state, "running") == 0)
            job_set_state(j, "pausing", j->error);
    }
    j->error_code = code < 0 ? code : NLLM_EINTERNAL; /* /metrics: nllm_job_error_info */
}

static int requeue(nllm_job_t *j, const nllm_job_origin_t *o, int64_t from_epoch,
                   const nllm_job_config_t *newcfg, nllm_err_t *err);

/* "step 12, gradient norm nan, lr 10" for divergence k of j. */
static int div_text(const nllm_job_t *j, int k, char *buf, size_t n)
{
    return snprintf(buf, n, "step %lld, gradient norm %g, lr %g", (long long)j->div_hist[k].step,
                    j->div_hist[k].grad_norm, j->div_hist[k].lr);
}

/* A run that ended with a divergence (e->diverged), on the loop before the
 * job is marked failed. With on_divergence = rollback and retries left, a
 * resume from the newest current checkpoint whose val loss is finite (none:
 * the job's start, its --init-from origin or the seed) with the learning
 * rate times divergence_lr_factor, as a client's resume with --lr would
 * make it (new attempt, later history superseded, config recorded): events
 * diverged and rolled_back; returns 1 (the job is queued). Otherwise
 * returns 0 with e->err the failure: with rollback, the history of the
 * divergences (step, norm and lr of each) before the run's own message. */
static int divergence_rollback(nllm_job_t *j, nllmd_ev_t *e)
{
    nllmd_t *d = j->d;
    const nllm_job_config_t *c = &j->cfg;
    if (c->on_divergence != NLLM_DIV_ROLLBACK)
        return 0;
    if (j->ndiv >= NLLMD_MAX_DIVERGENCES) /* divergence_retries was lowered meanwhile */
        j->ndiv = NLLMD_MAX_DIVERGENCES - 1;
    j->div_hist[j->ndiv].step = e->div_step;
    j->div_hist[j->ndiv].grad_norm = e->div_norm;
    j->div_hist[j->ndiv].lr = e->div_lr;
    int k = ++j->ndiv; /* this divergence's number */
    char what[160];
    div_text(j, k - 1, what, sizeof what);
    nllmd_job_event(j, "diverged", "%s (divergence %d; divergence_retries %d)", what, k,
                    c->divergence_retries);
    char why[NLLM_ERR_MSG_MAX] = "";
    if (k <= c->divergence_retries) {
        nllm_catalog_ckpt_t *cks;
        size_t n;
        nllm_err_t err;
        int rc = nllm_catalog_ckpt_list(d->cat, j->name, 1, &cks, &n, &err);
        if (rc == 0) {
            const nllm_catalog_ckpt_t *ck = NULL; /* rows come by step: the last fit */
            for (size_t i = 0; i < n; i++)
                if (strcmp(cks[i].status, "ok") == 0 && isfinite(cks[i].val_loss))
                    ck = &cks[i];
            nllm_job_origin_t o = {0};
            int64_t from_epoch = 0, from_step = 0;
            if (ck) {
                snprintf(o.path, sizeof o.path, "%s", ck->path);
                o.checksum = strtoull(ck->checksum, NULL, 16);
                snprintf(o.label, sizeof o.label, "%s", ck->name);
                from_epoch = ck->epoch;
                from_step = ck->step;
            } else if (j->init_unknown) {
                rc = nllm_err_set(&err, NLLM_ENOENT,
                                  "no checkpoint has a finite validation loss, and the "
                                  "checkpoint this job was started from is not known since "
                                  "the daemon restarted");
            } else {
                o = j->init_origin;
            }
            if (rc == 0) {
                nllm_job_config_t newcfg = *c;
                newcfg.learning_rate = c->learning_rate * c->divergence_lr_factor;
                double old_lr = c->learning_rate;
                rc = requeue(j, &o, from_epoch, &newcfg, &err);
                if (rc == 0)
                    nllmd_job_event(j, "rolled_back",
                                    "rollback %d of %d: from %s (epoch %lld, step %lld), "
                                    "learning_rate %g -> %g",
                                    k, c->divergence_retries,
                                    o.path[0] ? o.label : "the start", (long long)from_epoch,
                                    (long long)from_step, old_lr, newcfg.learning_rate);
            }
            nllm_catalog_ckpts_free(cks, n);
        }
        if (rc == 0)
            return 1;
        snprintf(why, sizeof why, "the rollback failed (%s)", err.msg);
    } else {
        if (c->divergence_retries == 0)
            snprintf(why, sizeof why, "divergence_retries is 0");
        else
            snprintf(why, sizeof why, "its %d rollbacks (divergence_retries) are used up",
                     c->divergence_retries);
    }
    /* the history: all when it fits, else the first and the last ones */
    char hist[NLLM_ERR_MSG_MAX];
    size_t used = 0;
    for (int i = 0; i < k && used < sizeof hist; i++) {
        if (k > 8 && i == 3) {
            used += (size_t)snprintf(hist + used, sizeof hist - used, "; ... %d more", k - 7);
            i = k - 4;
            continue;
        }
        char t[160];
        div_text(j, i, t, sizeof t);
        used += (size_t)snprintf(hist + used, sizeof hist - used, "%s%d: %s", i ? "; " : "",
                                 i + 1, t);
    }
    char msg[NLLM_ERR_MSG_MAX];
    snprintf(msg, sizeof msg, "training diverged %d time%s and %s: %s. The last: %s", k,
             k > 1 ? "s" : "", why, hist, e->err.msg);
    snprintf(e->err.msg, sizeof e->err.msg, "%s", msg);
    return 0;
}

/* ---- device faults ------------------------------------------------------------ */

void nllmd_device_health_json(const nllmd_device_t *v, json_t *o)
{
    json_object_set_new(o, "healthy", json_boolean(!v->unhealthy));
    json_object_set_new(o, "fault", v->unhealthy ? json_string(v->fault) : json_null());
    json_object_set_new(o, "fault_job", v->unhealthy ? json_string(v->fault_job) : json_null());
    json_object_set_new(o, "fault_time", v->unhealthy ? json_real(v->fault_time) : json_null());
    json_object_set_new(o, "faults", json_integer((json_int_t)v->faults));
}

/* For a CPU device: the kernels its products run on (cpu_kernels.h) as
 * o["kernels"]; other devices get nothing. */
void nllmd_device_kernels_json(const nllmd_device_t *v, json_t *o)
{
    json_t *prec = json_array();
    for (int p = 0; p < NLLM_PREC_COUNT; p++)
        if ((v->precisions >> p) & 1u)
            json_array_append_new(prec, json_string(nllm_precision_name((nllm_precision_t)p)));
    json_object_set_new(o, "precisions", prec);
    if (strcmp(v->kind, "cpu") != 0)
        return;
    const nllm_cpu_kernels_t *k = nllm_cpu_kernels();
    json_object_set_new(
        o, "kernels",
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:b,s:s,s:s,s:s,s:s,s:o,s:o}", "cpu_isa",
                  nllm_isa_name(k->cpu_isa), "cpu_features", k->cpu_features, "blas", k->blas,
                  "blas_core", k->blas_core, "blas_isa", nllm_isa_name(k->blas_isa),
                  "blas_check_passed", k->blas_ok, "large_gemm", k->large_gemm, "large_isa",
                  nllm_isa_name(k->large_isa), "small_gemm", k->small_gemm, "reason", k->reason,
                  "bf16_gemm", k->bf16_gemm ? json_string(k->bf16_gemm) : json_null(),
                  "bf16_note", k->bf16_note ? json_string(k->bf16_note) : json_null()));
}

/* Job j's run on device k ended with a device fault (e->rc == NLLM_EDEVICE),
 * on the loop before the job is marked failed: the device goes out of
 * service (no job is placed on it until nllmd_device_reset), event
 * device_fault. With on_device_fault = requeue and requeues left, the job
 * is queued again from its latest checkpoint (none: where it started), as
 * a client's resume would queue it, keeping the fault as its error until
 * it runs again: event requeued; returns 1. Otherwise returns 0 with
 * e->err the failure (why it was not requeued, then the fault). Nothing
 * written is touched: a snapshot whose sync failed was never written, so
 * the checkpoints are those of before the fault. */
static int device_fault(nllm_job_t *j, int k, nllmd_ev_t *e)
{
    nllmd_t *d = j->d;
    nllmd_device_t *v = &d->devices[k];
    const nllm_job_config_t *c = &j->cfg;
    v->faults++;
    if (!v->unhealthy) {
        v->unhealthy = 1;
        snprintf(v->fault, sizeof v->fault, "%s", e->err.msg);
        snprintf(v->fault_job, sizeof v->fault_job, "%s", j->name);
        v->fault_time = wall_now();
        nllmd_log(d, j->name,
                  "device %s faulted and is out of service until `nllmctl device reset %s` or a "
                  "restart of nllmd: %s",
                  v->name, v->name, e->err.msg);
    }
    int n = ++j->nfault;
    nllmd_job_event(j, "device_fault",
                    "%s (device fault %d; %s is out of service until `nllmctl device reset %s`)",
                    e->err.msg, n, v->name, v->name);
    char why[256];
    if (c->on_device_fault != NLLM_FAULT_REQUEUE) {
        snprintf(why, sizeof why, "on_device_fault is fail");
    } else if (n > NLLMD_MAX_FAULT_REQUEUES) {
        snprintf(why, sizeof why, "its %d requeues after device faults are used up",
                 NLLMD_MAX_FAULT_REQUEUES);
    } else {
        nllm_job_origin_t o = {0};
        nllm_catalog_ckpt_t ck;
        nllm_err_t err;
        int64_t from_epoch = 0, from_step = 0;
        int rc = nllm_catalog_ckpt_find(d->cat, j->name, "latest", &ck, &err);
        if (rc == 0) {
            snprintf(o.path, sizeof o.path, "%s", ck.path);
            o.checksum = strtoull(ck.checksum, NULL, 16);
            snprintf(o.label, sizeof o.label, "%s", ck.name);
            from_epoch = ck.epoch;
            from_step = ck.step;
            nllm_catalog_ckpt_free(&ck);
        } else if (rc == NLLM_ENOENT && !j->init_unknown) {
            rc = 0;
            o = j->init_origin; /* never checkpointed: where it started */
        } else if (rc == NLLM_ENOENT) {
            nllm_err_set(&err, NLLM_ENOENT,
                         "it has no checkpoint, and the checkpoint it was started from is not "
                         "known since the daemon restarted");
        }
        if (rc == 0)
            rc = requeue(j, &o, from_epoch, NULL, &err);
        if (rc == 0) {
            nllmd_job_event(j, "requeued",
                            "device fault on %s: queued again from %s (epoch %lld, step %lld) "
                            "for a healthy device (requeue %d of %d)",
                            v->name, o.path[0] ? o.label : "the start", (long long)from_epoch,
                            (long long)from_step, n, NLLMD_MAX_FAULT_REQUEUES);
            job_set_state(j, "queued", e->err.msg); /* the fault stays its error until it runs */
            j->error_code = NLLM_EDEVICE;
            if (d->oneshot == j && !d->shutting_down) {
                /* nllmd run: nobody resets the device; a new run (a restart)
                 * finds it healthy and the job queued */
                d->exit_code = 75;
                d->begin_shutdown(d, "device fault: run again with --resume");
            }
            return 1;
        }
        snprintf(why, sizeof why, "the requeue failed (%.200s)", err.msg);
    }
    char msg[NLLM_ERR_MSG_MAX];
    snprintf(msg, sizeof msg, "%s; not requeued: %s", e->err.msg, why);
    snprintf(e->err.msg, sizeof e->err.msg, "%s", msg);
    return 0;
}

int nllmd_device_reset(nllmd_t *d, const char *name, json_t **res, nllm_err_t *err)
{
    int k = 0;
    while (k < d->ndevices && strcmp(d->devices[k].name, name) != 0)
        k++;
    if (k == d->ndevices) {
        char list[512] = "";
        size_t used = 0;
        for (int i = 0; i < d->ndevices && used < sizeof list; i++)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                                     d->devices[i].name);
        return nllm_err_set(err, NLLM_ENOENT, "no device \"%.64s\": this nllmd has %s", name,
                            list);
    }
    nllmd_device_t *v = &d->devices[k];
    if (v->njobs > 0) {
        char names[512] = "";
        size_t used = 0;
        for (nllm_job_t *j = d->jobs; j && used < sizeof names; j = j->next)
            if (nllmd_job_uses_device(j, k))
                used += (size_t)snprintf(names + used, sizeof names - used, "%s%s",
                                         used ? ", " : "", j->name);
        return nllm_err_set(err, NLLM_ESTATE,
                            "device %s runs %d job%s (%s): a reset needs it idle; pause or stop "
                            "them first, or wait until they end",
                            v->name, v->njobs, v->njobs > 1 ? "s" : "", names);
    }
    if (v->unhealthy && is_gpu(v)) {
        int rc = nllm_cuda_device_reset(atoi(v->name + 5), err);
        if (rc < 0)
            return rc; /* still out of service */
    }
    *res = json_pack("{s:s,s:b,s:o}", "device", v->name, "was_healthy", !v->unhealthy, "fault",
                     v->unhealthy ? json_string(v->fault) : json_null());
    if (v->unhealthy)
        nllmd_log(d, NULL, "device %s reset by an operator: back in service (its fault: %s)",
                  v->name, v->fault);
    v->unhealthy = 0;
    v->fault[0] = v->fault_job[0] = '\0';
    v->fault_time = 0;
    nllmd_schedule(d);
    return 0;
}

static void handle_event(nllmd_t *d, nllmd_ev_t *e)
{
    nllm_job_t *j = e->job;
    nllm_err_t err;
    switch (e->kind) {
    case EV_STARTED: {
        j->mem_pending = 0; /* the model is allocated: free memory counts it */
        json_t *extra = NULL;
        if (e->path[0]) {
            extra = json_pack("{s:{s:s,s:I,s:o,s:o}}", "resumed_from", "checkpoint", e->path,
                              "epoch", (json_int_t)e->ck_epoch, "best_val_loss",
                              nllm_json_num(e->val_loss), "best_val_ppl",
                              nllm_json_num(exp(e->val_loss)));
            snprintf(j->resumed_label, sizeof j->resumed_label, "%s", e->path);
        }
        notify_state(j, extra);
        json_decref(extra);
        break;
    }
    case EV_EPOCH: {
        const nllm_epoch_report_t *r = &e->epoch;
        nllm_catalog_epoch_t row = {0, r->epoch, r->train_loss, r->val_loss, r->train_ppl,
                                    r->val_ppl, r->val_acc, r->seconds, r->tokens_per_s, 0, 0};
        /* the epoch row, progress and events: one transaction, one fsync on
         * the loop instead of three or four */
        nllm_catalog_batch_begin(d->cat);
        if (nllm_catalog_epoch_add(d->cat, j->name, &row, &err) < 0)
            nllmd_log(d, j->name, "catalog: %s", err.msg);
        pthread_mutex_lock(&j->mu);
        double best = j->best_val_loss;
        pthread_mutex_unlock(&j->mu);
        nllm_catalog_job_set_progress(d->cat, j->name, r->epoch, best, &err);
        char comm[128] = "";
        if (r->grad_sum_bytes > 0 && isnan(r->comm_share))
            snprintf(comm, sizeof comm, "; gradient sums %.3g MB/step on the devices",
                     r->grad_sum_bytes / 1e6);
        else if (r->grad_sum_bytes > 0)
            snprintf(comm, sizeof comm,
                     "; gradient sums %.3g MB/step, %.2f ms/step exposed; collectives %.1f%% "
                     "of the time",
                     r->grad_sum_bytes / 1e6, 1e3 * r->grad_sum_seconds, 100 * r->comm_share);
        nllmd_job_event(j, "epoch",
                        "epoch %lld/%lld: train loss %.4f, val loss %.4f, val ppl %.2f, "
                        "val acc %.1f%%, %.0f tokens/s, %.2f steps/s%s%s",
                        (long long)r->epoch, (long long)r->num_epochs, r->train_loss,
                        r->val_loss, r->val_ppl, 100 * r->val_acc, r->tokens_per_s,
                        r->seconds > 0 ? (double)j->steps_per_epoch / r->seconds : 0.0,
                        r->is_best ? " (best)" : "", comm);
        if (r->early_stop)
            nllmd_job_event(j, "early_stopped",
                            "no improvement of %g in %d epochs: stopping after epoch %lld",
                            j->cfg.min_delta, j->cfg.patience, (long long)r->epoch);
        if (nllm_catalog_batch_end(d->cat, &err) < 0)
            nllmd_log(d, j->name, "catalog: epoch %lld: %s", (long long)r->epoch, err.msg);
        curves_on_epoch(j, r->epoch); /* every save_every epochs */
        json_t *p = json_pack("{s:s,s:I,s:I,s:o,s:o,s:o,s:o,s:o,s:f,s:f,s:b}", "name", j->name,
                              "epoch", (json_int_t)r->epoch, "num_epochs",
                              (json_int_t)r->num_epochs, "train_loss",
                              nllm_json_num(r->train_loss), "val_loss",
                              nllm_json_num(r->val_loss), "train_ppl",
                              nllm_json_num(r->train_ppl), "val_ppl", nllm_json_num(r->val_ppl),
                              "val_acc", nllm_json_num(r->val_acc), "seconds", r->seconds,
                              "tokens_per_s", r->tokens_per_s, "is_best", r->is_best);
        if (p && r->grad_sum_bytes > 0)
            json_object_update_new(
                p, json_pack("{s:f,s:o,s:o}", "grad_sum_bytes", r->grad_sum_bytes,
                             "grad_sum_seconds", nllm_json_num(r->grad_sum_seconds),
                             "comm_share", nllm_json_num(r->comm_share)));
        nllmd_job_notify(j, "epoch", p);
        break;
    }
    case EV_CKPT: {
        char sum[17], wh[17], nm[64];
        snprintf(sum, sizeof sum, "%016llx", (unsigned long long)e->checksum);
        snprintf(wh, sizeof wh, "%016llx", (unsigned long long)e->weights_hash);
        if (e->ckind == NLLM_CKPT_EPOCH)
            snprintf(nm, sizeof nm, "epoch_%lld", (long long)e->ck_epoch);
        else
            snprintf(nm, sizeof nm, "%s", nllm_ckpt_kind_name(e->ckind));
        nllm_catalog_ckpt_spec_t spec = {nllm_ckpt_kind_name(e->ckind), nm,
                                         e->ck_epoch, e->ck_step,
                                         e->path, (int64_t)e->size,
                                         sum, wh,
                                         e->val_loss};
        if (nllm_catalog_ckpt_add(d->cat, j->name, &spec, NULL, &err) < 0) {
            char msg[NLLM_ERR_MSG_MAX];
            snprintf(msg, sizeof msg, "%s written but not recorded: %s", nm, err.msg);
            checkpoint_failed(j, err.code, msg);
            break;
        }
        pthread_mutex_lock(&j->mu);
        j->last_ckpt_time = wall_now();
        j->ckpt_bytes = e->size;
        pthread_mutex_unlock(&j->mu);
        /* ranks above 0 of `nllmd run` save into a private scratch folder
         * (removed when they exit): say so, it is not a second checkpoint */
        nllmd_job_event(j, "checkpoint", "saved %s (epoch %lld, step %lld, %.1f MB, xxh64 %s, "
                        "weights %s)%s", nm, (long long)e->ck_epoch, (long long)e->ck_step,
                        (double)e->size / 1e6, sum, wh,
                        d->oneshot && nllm_coll_rank() > 0
                            ? " in this rank's scratch folder (rank 0 keeps the job's)"
                            : "");
        json_t *p = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:I}", "name", j->name, "checkpoint", nm,
                              "kind", nllm_ckpt_kind_name(e->ckind), "epoch",
                              (json_int_t)e->ck_epoch, "step", (json_int_t)e->ck_step, "path",
                              e->path, "size", (json_int_t)e->size);
        nllmd_job_notify(j, "checkpoint", p);
        if (e->ckind == NLLM_CKPT_EPOCH)
            retention(j);
        break;
    }
    case EV_CKPT_FAIL:
        checkpoint_failed(j, e->err.code ? e->err.code : e->rc, e->err.msg);
        break;
    case EV_DONE: {
        uv_thread_join(&j->thread);
        j->thread_live = 0;
        int dev = e->fault_dev >= 0 ? e->fault_dev : j->device, minus = -1;
        for_job_devices(j, dev_take, &minus);
        j->device = -1;
        j->ranks = 0;
        j->mem_pending = 0;
        int ckpt_failed = (int)e->ck_step || j->error[0]; /* written, or not recorded */
        int rolled_back = 0;
        int pausing = !strcmp(j->state, "pausing"), stopping = atomic_load(&j->ctl.stop);
        if ((e->rc < 0 && e->diverged && (rolled_back = divergence_rollback(j, e))) ||
            (e->rc == NLLM_EDEVICE && dev >= 0 && (rolled_back = device_fault(j, dev, e)))) {
            /* queued again, unless a client asked for a pause or stop meanwhile */
            if (stopping)
                nllmd_job_stop(j, &err);
            else if (pausing)
                nllmd_job_pause(j, 0, &err);
        } else if (e->rc < 0) {
            nllmd_job_event(j, "failed", "%s", e->err.msg);
            job_set_state(j, "failed", e->err.msg);
            if (e->rc == NLLM_EDEVICE)
                j->error_code = NLLM_EDEVICE; /* /metrics: nllm_job_error_info{code="EDEVICE"} */
        } else if (e->result == NLLM_RUN_PAUSED) {
            int shut = atomic_load(&j->shutdown_pause);
            nllmd_job_event(j, shut ? "interrupted" : "paused",
                            "%s at epoch %lld step %lld",
                            shut ? "daemon stopping: paused" : "paused",
                            (long long)j->epoch_done, (long long)j->global_step);
            job_set_state(j, shut ? "interrupted" : "paused", ckpt_failed ? j->error : NULL);
        } else if (ckpt_failed) {
            nllmd_job_event(j, "paused", "a checkpoint could not be written: %s", j->error);
            job_set_state(j, "paused", j->error);
        } else if (e->result == NLLM_RUN_STOPPED) {
            nllmd_job_event(j, "stopped", "stopped at epoch %lld", (long long)j->epoch_done);
            job_set_state(j, "stopped", NULL);
        } else {
            nllmd_job_event(j, "completed", "%s after %lld epochs, best val loss %.4f (epoch "
                            "%lld)",
                            e->result == NLLM_RUN_EARLY_STOPPED ? "early stopped" : "completed",
                            (long long)j->epoch_done, j->best_val_loss,
                            (long long)j->best_epoch);
            job_set_state(j, "completed", NULL);
        }
        curves_on_done(j); /* final curves when completed or stopped */
        if (!rolled_back)
            j->origin.path[0] = '\0';
        job_unref(j);
        nllmd_schedule(d);
        break;
    }
    }
}

void nllmd_events_drain(nllmd_t *d)
{
    for (;;) {
        pthread_mutex_lock(&d->evmu);
        nllmd_ev_t *e = d->ev_head;
        if (e) {
            d->ev_head = e->next;
            if (!d->ev_head)
                d->ev_tail = NULL;
        }
        pthread_mutex_unlock(&d->evmu);
        if (!e)
            return;
        handle_event(d, e);
        free(e);
    }
}

/* ---- creation and loading ------------------------------------------------ */

static nllm_job_t *job_alloc(nllmd_t *d, const char *name)
{
    nllm_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->d = d;
    snprintf(j->name, sizeof j->name, "%s", name);
    snprintf(j->dir, sizeof j->dir, "%s/jobs/%s", d->opt.state_dir, name);
    j->device = -1;
    j->refs = 1;
    j->best_val_loss = INFINITY;
    j->attempt = 1;
    pthread_mutex_init(&j->mu, NULL);
    atomic_init(&j->ctl.pause, 0);
    atomic_init(&j->ctl.pause_epoch_end, 0);
    atomic_init(&j->ctl.stop, 0);
    atomic_init(&j->ctl.num_epochs, 0);
    atomic_init(&j->shutdown_pause, 0);
    /* append, so scheduling follows creation order */
    nllm_job_t **pp = &d->jobs;
    while (*pp)
        pp = &(*pp)->next;
    *pp = j;
    return j;
}

static int make_job_dirs(nllm_job_t *j, nllm_err_t *err)
{
    char p[NLLM_PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/checkpoints", j->dir);
    return nllm_fs_mkdir_p(p, 0750, err);
}

/* Refuses a job whose precision no device it may run on implements (a
 * tf32 or bf16 job for device cpu, or on a daemon without GPUs), before
 * anything changes. The message is the one the job thread would get from
 * nllm_backend_set_precision (asked here of a stand-in for the device):
 * "job x: device cpu implements precision fp32 only, not bf16: use
 * --precision fp32 or a CUDA device". */
static int check_precision(nllmd_t *d, const char *name, const nllm_job_config_t *cfg,
                           nllm_err_t *err)
{
    const nllmd_device_t *lacking = NULL;
    for (int k = 0; k < d->ndevices; k++) {
        const nllmd_device_t *v = &d->devices[k];
        if (!nllmd_place_wants(cfg->device, v->name, is_gpu(v)))
            continue;
        if ((v->precisions >> cfg->precision) & 1u)
            return 0;
        if (!lacking)
            lacking = v;
    }
    if (!lacking)
        return 0; /* no device of that name (nllmd_job_create refuses it) */
    nllm_backend_t probe = {.name = lacking->name, .precisions = lacking->precisions};
    if (!is_gpu(lacking))
        (void)nllm_cpu_precisions(&probe.precision_note);
    int rc = nllm_backend_set_precision(&probe, cfg->precision, err);
    return rc < 0 ? nllm_err_prefix(err, "job %s: ", name) : 0;
}

/* Refuses a job whose devices this daemon lacks, before anything changes:
 * a device (or one of a list) it does not have, or more ranks than it has
 * GPUs where the cpu may not take them (device cuda, or any device on a
 * daemon without the cpu). */
static int check_devices(nllmd_t *d, const char *name, const nllm_job_config_t *cfg,
                         nllm_err_t *err)
{
    const char *want = cfg->device;
    const int n = cfg->num_devices;
    int gpus = 0, cpus = 0;
    char have[512] = "";
    size_t used = 0;
    for (int k = 0; k < d->ndevices; k++) {
        if (!is_gpu(&d->devices[k])) {
            cpus++;
            continue;
        }
        if (used < sizeof have)
            used += (size_t)snprintf(have + used, sizeof have - used, "%s%s", gpus ? ", " : "",
                                     d->devices[k].name);
        gpus++;
    }
    if (want[0] && strcmp(want, "cuda") != 0) {
        for (const char *p = want; *p;) {
            size_t len = strcspn(p, ",");
            int found = 0;
            for (int k = 0; k < d->ndevices; k++)
                found |= strlen(d->devices[k].name) == len &&
                         strncmp(d->devices[k].name, p, len) == 0;
            if (!found)
                return nllm_err_set(err, NLLM_EINVAL,
                                    "job %s: device %.*s is not one of this daemon's devices "
                                    "(see `nllmctl hello`)",
                                    name, (int)len, p);
            p += len + (p[len] == ',');
        }
        return 0;
    }
    if ((!strcmp(want, "cuda") || (n > 1 && cpus == 0)) && gpus < n)
        return nllm_err_set(err, NLLM_EINVAL,
                            "job %s: it trains on %d GPU%s (num_devices %d%s), but this daemon "
                            "has %d%s%s%s: lower num_devices%s",
                            name, n, n > 1 ? "s" : "", n, !strcmp(want, "cuda") ? ", device cuda"
                                                                               : "",
                            gpus, gpus ? " (" : "", have, gpus ? ")" : "",
                            cpus ? ", or let its ranks share the cpu (device cpu)" : "");
    return 0;
}

int nllmd_job_create(nllmd_t *d, const char *name, const nllm_job_config_t *cfg,
                     const nllm_job_origin_t *origin, const char *parent_job,
                     const char *parent_ckpt, nllm_job_t **out, nllm_err_t *err)
{
    *out = NULL;
    if (!nllm_catalog_valid_name(name))
        return nllm_err_set(err, NLLM_EINVAL,
                            "job name \"%.80s\" is not valid: use 1-64 of A-Z a-z 0-9 . _ -, "
                            "not starting with a dot",
                            name);
    if (nllmd_job_find(d, name))
        return nllm_err_set(err, NLLM_EEXIST,
                            "job %s already exists: pick another name, or `nllmctl rm %s` first",
                            name, name);
    int rc = nllm_job_config_check(cfg, err);
    if (rc < 0)
        return nllm_err_prefix(err, "job %s: ", name);
    if (access(cfg->data, R_OK) != 0)
        return nllm_err_set(err, NLLM_ENOENT, "job %s: training text %s cannot be read: %s",
                            name, cfg->data, strerror(errno));
    if (cfg->val[0] && access(cfg->val, R_OK) != 0)
        return nllm_err_set(err, NLLM_ENOENT, "job %s: validation text %s cannot be read: %s",
                            name, cfg->val, strerror(errno));
    if ((rc = check_devices(d, name, cfg, err)) < 0)
        return rc;
    if ((rc = check_precision(d, name, cfg, err)) < 0)
        return rc;
    json_t *cj = nllm_job_config_to_json(cfg);
    char *ctext = json_dumps(cj, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(cj);
    nllm_catalog_job_spec_t spec = {name, ctext, cfg->num_epochs, parent_job, parent_ckpt};
    rc = nllm_catalog_job_create(d->cat, &spec, NULL, err);
    free(ctext);
    if (rc < 0)
        return rc;
    nllm_job_t *j = job_alloc(d, name);
    if (!j)
        return nllm_err_set(err, NLLM_ENOMEM, "job %s: out of memory", name);
    j->cfg = *cfg;
    if (origin) {
        j->origin = *origin;
        if (origin->weights_only)
            j->init_origin = *origin;
    }
    j->created = j->updated = wall_now();
    if ((rc = make_job_dirs(j, err)) < 0) {
        nllm_catalog_job_delete(d->cat, name, NULL);
        j->removing = 1;
        job_unref(j);
        return rc;
    }
    snprintf(j->state, sizeof j->state, "queued");
    nllm_catalog_job_set_state(d->cat, name, "queued", NULL, err);
    nllmd_job_event(j, "created", "%s", origin && origin->path[0] ? origin->label : "fresh");
    *out = j;
    nllmd_schedule(d);
    return 0;
}

/* A superseded row whose file name a newer current row took over (best,
 * final, paused are replaced in place) no longer owns that file: only rows
 * that still own their file are checked. */
static int owns_file(const nllm_catalog_ckpt_t *cks, size_t n, size_t i)
{
    if (cks[i].current)
        return 1;
    for (size_t k = 0; k < n; k++)
        if (k != i && cks[k].current && strcmp(cks[k].path, cks[i].path) == 0)
            return 0;
    return 1;
}

/* A crash between the rename of a new checkpoint over an older one of the same
 * name (best, paused, final, or epoch_N saved again after a resume) and the
 * commit of its row leaves that row naming the new, complete file -- the job's
 * newest state, while the old content is gone. Record the file in place of the
 * row when it is this job's checkpoint of that kind (for epoch_N: of epoch N),
 * at epoch min_epoch or later, and every epoch it has completed is current
 * history. Also used for a file no row names (reconcile_unlisted), with a
 * row made up from its name. Returns 1 when recorded. */
static int adopt_checkpoint(nllm_job_t *j, const nllm_catalog_ckpt_t *row, uint64_t h,
                            int64_t size, int64_t min_epoch)
{
    nllm_ckpt_t *c;
    nllm_err_t err;
    if (nllm_ckpt_load(row->path, h, NULL, &c, &err) < 0)
        return 0;
    const nllm_progress_t *p = &c->progress;
    int ok = strcmp(c->job, j->name) == 0 && strcmp(nllm_ckpt_kind_name(c->kind), row->kind) == 0 &&
             (c->kind != NLLM_CKPT_EPOCH || p->epoch == row->epoch) && p->epoch >= min_epoch;
    nllm_catalog_epoch_t *eps;
    size_t ne;
    if (ok && (ok = nllm_catalog_epoch_list(j->d->cat, j->name, 0, &eps, &ne, &err) == 0)) {
        int64_t have = 0;
        for (size_t k = 0; k < ne; k++)
            have += eps[k].epoch <= p->epoch;
        nllm_catalog_epochs_free(eps, ne);
        ok = have == p->epoch;
    }
    if (ok) {
        char sum[17], wh[17];
        snprintf(sum, sizeof sum, "%016llx", (unsigned long long)h);
        snprintf(wh, sizeof wh, "%016llx", (unsigned long long)c->weights_hash);
        double vl = c->kind == NLLM_CKPT_BEST ? p->best_val_loss
                    : p->hist.n > 0          ? p->hist.val_loss[p->hist.n - 1]
                                             : NAN;
        nllm_catalog_ckpt_spec_t spec = {row->kind, row->name, p->epoch, p->global_step,
                                         row->path, size, sum, wh, vl};
        ok = nllm_catalog_ckpt_add(j->d->cat, j->name, &spec, NULL, &err) == 0;
        if (ok)
            nllmd_job_event(j, "recovered",
                            "%s: recorded the complete file a save wrote just before the daemon "
                            "stopped (epoch %lld, step %lld, xxh64 %s); its row had not been "
                            "committed",
                            row->name, (long long)p->epoch, (long long)p->global_step, sum);
    }
    nllm_ckpt_free(c);
    return ok;
}

/* The kind of checkpoint of job j a file name is (nllm_ckpt_filename's names;
 * *epoch gets N of epoch_N), or -1 for any other name. */
static int ckpt_kind_of_file(const char *job, const char *name, int64_t *epoch)
{
    static const nllm_ckpt_kind_t fixed[] = {NLLM_CKPT_BEST, NLLM_CKPT_FINAL, NLLM_CKPT_PAUSED};
    char buf[NLLM_CATALOG_NAME_MAX + 64];
    for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++) {
        nllm_ckpt_filename(job, fixed[k], 0, buf, sizeof buf);
        if (strcmp(buf, name) == 0)
            return (int)fixed[k];
    }
    size_t jl = strlen(job);
    if (strncmp(name, job, jl) != 0 || strncmp(name + jl, "_epoch_", 7) != 0 ||
        name[jl + 7] < '1' || name[jl + 7] > '9')
        return -1;
    char *end;
    errno = 0;
    long long n = strtoll(name + jl + 7, &end, 10);
    if (errno != 0 || strcmp(end, ".safetensors") != 0)
        return -1;
    nllm_ckpt_filename(job, NLLM_CKPT_EPOCH, n, buf, sizeof buf);
    if (strcmp(buf, name) != 0)
        return -1;
    *epoch = n;
    return NLLM_CKPT_EPOCH;
}

/* Checkpoint files of this job in dir that no catalog row names. Retention
 * deletes an epoch_N row, then its file (F5): a crash in between leaves the
 * file, listed nowhere, never resumed from, never deleted. A save of a name
 * the job never used before (epoch_N, or the first best/paused/final) that
 * died after its rename and before its row committed leaves one too, and that
 * one is the job's newest state. So, against the newest ok checkpoint on the
 * job's current history (after reconcile_checkpoints' own repairs):
 *  - a file of an older epoch is removed (an event each);
 *  - one at that epoch or later is recorded as adopt_checkpoint records the
 *    complete file under a stale row (F4), by the same tests -- this job's,
 *    of the kind and epoch its name says, every epoch it completed current
 *    history -- which is as straightforward here and keeps what a crash
 *    would otherwise throw away; one that fails them is removed, as a row
 *    naming it would contradict the catalog's history.
 * Never touched: a file any row names (ok, bad or superseded), other names,
 * and files older than the job itself (a job of the same name removed
 * without --delete-files left them). Start-up only: nothing writes in dir. */
static void reconcile_unlisted(nllm_job_t *j, const char *dir)
{
    nllm_catalog_ckpt_t *cks;
    size_t n;
    nllm_err_t err;
    if (nllm_catalog_ckpt_list(j->d->cat, j->name, 0, &cks, &n, &err) < 0)
        return;
    DIR *dd = opendir(dir);
    if (!dd) {
        nllm_catalog_ckpts_free(cks, n);
        return;
    }
    int64_t newest = -1;
    const char *newest_name = "";
    for (size_t i = 0; i < n; i++)
        if (strcmp(cks[i].status, "ok") == 0 && cks[i].current && cks[i].epoch > newest) {
            newest = cks[i].epoch;
            newest_name = cks[i].name;
        }
    int adopted_periodic = 0;
    struct dirent *de;
    while ((de = readdir(dd))) {
        int64_t epoch = -1;
        int kind = ckpt_kind_of_file(j->name, de->d_name, &epoch);
        if (kind < 0)
            continue;
        int named = 0;
        for (size_t i = 0; i < n && !named; i++) {
            const char *slash = strrchr(cks[i].path, '/');
            named = strcmp(slash ? slash + 1 : cks[i].path, de->d_name) == 0;
        }
        char path[NLLM_PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (named || lstat(path, &st) != 0 || !S_ISREG(st.st_mode) ||
            (double)st.st_mtim.tv_sec + 1e-9 * (double)st.st_mtim.tv_nsec < j->created - 1.0)
            continue;
        char why[NLLM_ERR_MSG_MAX + 64];
        if (kind == NLLM_CKPT_EPOCH && epoch < newest) {
            snprintf(why, sizeof why, "of epoch %lld, older than checkpoint %s (epoch %lld) "
                     "(what a retention delete stopped between its row and its file leaves)",
                     (long long)epoch, newest_name, (long long)newest);
        } else {
            nllm_st_file_t *f;
            nllm_err_t e2;
            uint64_t h = 0;
            if (nllm_st_open(path, &f, &h, &e2) == 0) {
                nllm_st_close(f);
                char rname[32];
                if (kind == NLLM_CKPT_EPOCH)
                    snprintf(rname, sizeof rname, "epoch_%lld", (long long)epoch);
                else
                    snprintf(rname, sizeof rname, "%s", nllm_ckpt_kind_name(kind));
                nllm_catalog_ckpt_t row = {0};
                snprintf(row.kind, sizeof row.kind, "%s", nllm_ckpt_kind_name(kind));
                row.name = rname;
                row.path = path;
                row.epoch = epoch;
                if (adopt_checkpoint(j, &row, h, (int64_t)st.st_size, newest)) {
                    adopted_periodic |= kind == NLLM_CKPT_EPOCH;
                    continue;
                }
                snprintf(why, sizeof why, "not this job's %s at epoch %lld or later on its "
                         "current history", rname, (long long)(newest < 0 ? 0 : newest));
            } else {
                snprintf(why, sizeof why, "incomplete: %s", e2.msg);
            }
        }
        if (unlink(path) == 0 || errno == ENOENT)
            nllmd_job_event(j, "recovered", "removed %s: no checkpoint row names it and it is %s",
                            path, why);
        else
            nllmd_log(j->d, j->name, "cannot remove %s (no checkpoint row names it): %s", path,
                      strerror(errno));
    }
    closedir(dd);
    nllm_catalog_ckpts_free(cks, n);
    if (adopted_periodic)
        retention(j); /* keep at most cfg.keep epoch_N, as after a save */
}

/* Marks rows whose file is missing, short or fails its checksum (after trying
 * adopt_checkpoint on a complete file), then settles the checkpoint files no
 * row names (reconcile_unlisted). */
static void reconcile_checkpoints(nllm_job_t *j)
{
    nllm_catalog_ckpt_t *cks;
    size_t n;
    nllm_err_t err;
    char dir[NLLM_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/checkpoints", j->dir);
    int removed = 0;
    if (nllm_fs_remove_temp_files(dir, &removed, &err) == 0 && removed)
        nllmd_job_event(j, "recovered", "removed %d unfinished temporary file(s) in %s", removed,
                        dir);
    /* the job folder's training-curve SVGs are written the same way */
    if (nllm_fs_remove_temp_files(j->dir, &removed, &err) == 0 && removed)
        nllmd_job_event(j, "recovered", "removed %d unfinished temporary file(s) in %s", removed,
                        j->dir);
    if (nllm_catalog_ckpt_list(j->d->cat, j->name, 0, &cks, &n, &err) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(cks[i].status, "ok") != 0 || !owns_file(cks, n, i))
            continue;
        struct stat st;
        char reason[512] = "";
        uint64_t h = 0;
        int complete = 0; /* a whole, well-formed safetensors file */
        if (stat(cks[i].path, &st) != 0) {
            snprintf(reason, sizeof reason, "file %s is missing (%s)", cks[i].path,
                     strerror(errno));
        } else {
            nllm_st_file_t *f;
            nllm_err_t e2;
            if (nllm_st_open(cks[i].path, &f, &h, &e2) == 0) {
                nllm_st_close(f);
                complete = 1;
            }
            char sum[17];
            snprintf(sum, sizeof sum, "%016llx", (unsigned long long)h);
            if ((int64_t)st.st_size != cks[i].size)
                snprintf(reason, sizeof reason, "file %s has %lld bytes, the catalog says %lld",
                         cks[i].path, (long long)st.st_size, (long long)cks[i].size);
            else if (!complete)
                snprintf(reason, sizeof reason, "%s", e2.msg);
            else if (strcmp(sum, cks[i].checksum) != 0)
                snprintf(reason, sizeof reason,
                         "file %s fails its checksum (file %s, catalog %s)", cks[i].path, sum,
                         cks[i].checksum);
        }
        if (reason[0] && complete && adopt_checkpoint(j, &cks[i], h, (int64_t)st.st_size, 0))
            continue;
        if (reason[0]) {
            nllm_catalog_ckpt_mark_bad(j->d->cat, j->name, cks[i].id, reason, &err);
            nllmd_job_event(j, "checkpoint_bad", "%s: %s", cks[i].name, reason);
        }
    }
    nllm_catalog_ckpts_free(cks, n);
    reconcile_unlisted(j, dir);
}

int nllmd_jobs_load(nllmd_t *d, nllm_err_t *err)
{
    nllm_catalog_job_t *rows;
    size_t n;
    int rc = nllm_catalog_job_list(d->cat, &rows, &n, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        nllm_job_t *j = job_alloc(d, rows[i].name);
        if (!j) {
            nllm_catalog_jobs_free(rows, n);
            return nllm_err_set(err, NLLM_ENOMEM, "out of memory loading jobs");
        }
        nllm_job_config_defaults(&j->cfg);
        json_error_t je;
        json_t *cj = json_loads(rows[i].config ? rows[i].config : "{}", 0, &je);
        nllm_err_t cerr;
        if (!cj || nllm_job_config_from_json(cj, &j->cfg, &cerr) < 0)
            nllmd_log(d, j->name, "stored config is unreadable; using defaults");
        json_decref(cj);
        j->cfg.num_epochs = (int32_t)rows[i].num_epochs;
        snprintf(j->state, sizeof j->state, "%s", rows[i].state);
        if (rows[i].error)
            snprintf(j->error, sizeof j->error, "%s", rows[i].error);
        j->attempt = rows[i].attempt;
        j->init_unknown = rows[i].parent_job != NULL;
        j->created = rows[i].created_at;
        j->updated = rows[i].updated_at;
        j->epoch_done = rows[i].epochs_done;
        j->best_val_loss = isnan(rows[i].best_val_loss) ? INFINITY : rows[i].best_val_loss;
        nllm_catalog_epoch_t *eps;
        size_t ne;
        if (nllm_catalog_epoch_list(d->cat, j->name, 0, &eps, &ne, &cerr) == 0) {
            for (size_t k = 0; k < ne; k++)
                if (eps[k].val_loss == j->best_val_loss)
                    j->best_epoch = eps[k].epoch;
            if (ne) {
                const nllm_catalog_epoch_t *l = &eps[ne - 1];
                j->last_epoch = (nllm_epoch_report_t){.epoch = l->epoch,
                                                      .num_epochs = j->cfg.num_epochs,
                                                      .train_loss = l->train_loss,
                                                      .val_loss = l->val_loss,
                                                      .train_ppl = l->train_ppl,
                                                      .val_ppl = l->val_ppl,
                                                      .val_acc = l->val_acc,
                                                      .seconds = l->seconds,
                                                      .tokens_per_s = l->tokens_per_s};
                j->have_epoch = 1;
            }
            nllm_catalog_epochs_free(eps, ne);
        }
        reconcile_checkpoints(j);
        nllm_catalog_ckpt_t ck;
        if (nllm_catalog_ckpt_find(d->cat, j->name, "latest", &ck, &cerr) == 0) {
            j->global_step = ck.step;
            nllm_catalog_ckpt_free(&ck);
        }
        if (!strcmp(j->state, "running") || !strcmp(j->state, "pausing")) {
            nllmd_job_event(j, "interrupted",
                            "the daemon stopped while this job was %s; resume it from its "
                            "latest checkpoint",
                            j->state);
            snprintf(j->state, sizeof j->state, "interrupted");
            nllm_catalog_job_set_state(d->cat, j->name, "interrupted", NULL, &cerr);
        }
    }
    nllm_catalog_jobs_free(rows, n);
    if (d->opt.auto_resume)
        for (nllm_job_t *j = d->jobs; j; j = j->next)
            if (!strcmp(j->state, "interrupted")) {
                nllm_err_t rerr;
                if (nllmd_job_resume(j, NULL, NULL, 0, &rerr) < 0)
                    nllmd_log(d, j->name, "auto-resume failed: %s", rerr.msg);
            }
    return 0;
}

/* ---- requests -------------------------------------------------------------- */

int nllmd_job_pause(nllm_job_t *j, int at_epoch_end, nllm_err_t *err)
{
    if (!strcmp(j->state, "queued")) {
        job_set_state(j, "paused", NULL);
        nllmd_job_event(j, "paused", "paused while queued");
        return 0;
    }
    if (!is_active(j))
        return nllm_err_set(err, NLLM_ESTATE, "job %s is %s, not running: nothing to pause",
                            j->name, j->state);
    if (at_epoch_end)
        atomic_store(&j->ctl.pause_epoch_end, 1);
    else
        atomic_store(&j->ctl.pause, 1);
    nllmd_job_event(j, "pause_requested", "pause requested %s",
                    at_epoch_end ? "at the end of the epoch" : "at the next step");
    if (strcmp(j->state, "pausing") != 0)
        job_set_state(j, "pausing", NULL);
    return 0;
}

int nllmd_job_stop(nllm_job_t *j, nllm_err_t *err)
{
    if (is_active(j)) {
        atomic_store(&j->ctl.stop, 1);
        nllmd_job_event(j, "stop_requested", "stop requested: final checkpoint at the next step");
        return 0;
    }
    if (!strcmp(j->state, "queued") || !strcmp(j->state, "paused") ||
        !strcmp(j->state, "interrupted")) {
        nllmd_job_event(j, "stopped", "stopped while %s", j->state);
        job_set_state(j, "stopped", NULL);
        return 0;
    }
    return nllm_err_set(err, NLLM_ESTATE, "job %s is already %s", j->name, j->state);
}

int nllmd_resolve_checkpoint(nllmd_t *d, const char *spec, nllm_job_origin_t *o,
                             nllm_err_t *err)
{
    memset(o, 0, sizeof *o);
    const char *colon = strchr(spec, ':');
    if (colon && colon != spec && !strchr(spec, '/')) {
        char job[NLLM_CATALOG_NAME_MAX + 1];
        size_t n = (size_t)(colon - spec);
        if (n > NLLM_CATALOG_NAME_MAX)
            return nllm_err_set(err, NLLM_EINVAL, "\"%.80s\": job name too long", spec);
        memcpy(job, spec, n);
        job[n] = '\0';
        if (!nllmd_job_find(d, job))
            return nllm_err_set(err, NLLM_ENOENT, "no job named %s (from \"%s\")", job, spec);
        nllm_catalog_ckpt_t ck;
        int rc = nllm_catalog_ckpt_find(d->cat, job, colon + 1, &ck, err);
        if (rc < 0)
            return rc;
        if (strcmp(ck.status, "ok") != 0) {
            rc = nllm_err_set(err, NLLM_ECORRUPT,
                              "checkpoint %s of job %s is marked bad (%s): pick another", ck.name,
                              job, ck.bad_reason ? ck.bad_reason : "unknown reason");
            nllm_catalog_ckpt_free(&ck);
            return rc;
        }
        snprintf(o->path, sizeof o->path, "%s", ck.path);
        o->checksum = strtoull(ck.checksum, NULL, 16);
        snprintf(o->label, sizeof o->label, "%s:%s", job, ck.name);
        nllm_catalog_ckpt_free(&ck);
        return 0;
    }
    if (spec[0] != '/')
        return nllm_err_set(err, NLLM_EINVAL,
                            "\"%.200s\" is neither JOB:CHECKPOINT nor an absolute path to a "
                            "safetensors file",
                            spec);
    if (access(spec, R_OK) != 0)
        return nllm_err_set(err, NLLM_ENOENT, "cannot read %s: %s", spec, strerror(errno));
    snprintf(o->path, sizeof o->path, "%s", spec);
    const char *base = strrchr(spec, '/');
    snprintf(o->label, sizeof o->label, "%s", base ? base + 1 : spec);
    return 0;
}

int nllmd_job_resume(nllm_job_t *j, const char *ckpt, const nllm_job_config_t *newcfg,
                     int reset_patience, nllm_err_t *err)
{
    nllmd_t *d = j->d;
    if (is_active(j) || !strcmp(j->state, "queued"))
        return nllm_err_set(err, NLLM_ESTATE,
                            "job %s is %s: only a paused, interrupted, stopped, completed or "
                            "failed job can be resumed",
                            j->name, j->state);
    if (newcfg) {
        char diff[2048];
        if (nllm_job_config_model_diff(&j->cfg.model, "job", &newcfg->model, "requested", diff,
                                       sizeof diff) > 0)
            return nllm_err_set(err, NLLM_EMISMATCH,
                                "job %s: the model shape cannot change on resume: %s; start a "
                                "new job with --init-from %s:latest instead",
                                j->name, diff, j->name);
        if (nllm_job_config_data_diff(&j->cfg, "job", newcfg, "requested", diff, sizeof diff) >
            0)
            return nllm_err_set(err, NLLM_EMISMATCH,
                                "job %s: the data, tokenizer and seed cannot change on resume: "
                                "%s; start a new job with --init-from %s:latest instead",
                                j->name, diff, j->name);
        int rc = nllm_job_config_check(newcfg, err);
        if (rc < 0)
            return nllm_err_prefix(err, "job %s: ", j->name);
    }
    /* A completed job resumed from a checkpoint at (or past) its target has
     * nothing to train: the run would only write its final checkpoint again.
     * Refuse before anything changes. (extend raises the target first.) */
    int32_t target = newcfg ? newcfg->num_epochs : j->cfg.num_epochs;
    nllm_catalog_ckpt_t at;
    nllm_err_t ferr;
    if (!strcmp(j->state, "completed") &&
        nllm_catalog_ckpt_find(d->cat, j->name, ckpt && *ckpt ? ckpt : "latest", &at, &ferr) ==
            0) {
        int64_t e = at.epoch;
        nllm_catalog_ckpt_free(&at);
        if (e >= target)
            return nllm_err_set(err, NLLM_ESTATE,
                                "job %s has completed: checkpoint %s is at epoch %lld and its "
                                "target is %d epochs, so resuming would only rewrite its final "
                                "checkpoint; to train on, raise the target: `nllmctl extend %s "
                                "N` or `nllmctl resume %s --epochs N` with N > %lld",
                                j->name, ckpt && *ckpt ? ckpt : "latest", (long long)e, target,
                                j->name, j->name, (long long)e);
    }
    /* new devices must exist; a job whose own device is gone waits queued,
     * as it always has */
    int rc = 0;
    if (newcfg && (strcmp(newcfg->device, j->cfg.device) != 0 ||
                   newcfg->num_devices != j->cfg.num_devices))
        rc = check_devices(d, j->name, newcfg, err);
    if (rc == 0)
        rc = check_precision(d, j->name, newcfg ? newcfg : &j->cfg, err);
    if (rc < 0)
        return rc;
    nllm_job_origin_t o = {0};
    nllm_catalog_ckpt_t ck;
    const char *name = ckpt && *ckpt ? ckpt : "latest";
    rc = nllm_catalog_ckpt_find(d->cat, j->name, name, &ck, err);
    int64_t from_epoch = 0;
    if (rc == 0) {
        if (strcmp(ck.status, "ok") != 0) {
            rc = nllm_err_set(err, NLLM_ECORRUPT,
                              "job %s: checkpoint %s is marked bad (%s); resume from another "
                              "one (see `nllmctl checkpoints %s`)",
                              j->name, ck.name, ck.bad_reason ? ck.bad_reason : "?", j->name);
            nllm_catalog_ckpt_free(&ck);
            return rc;
        }
        snprintf(o.path, sizeof o.path, "%s", ck.path);
        o.checksum = strtoull(ck.checksum, NULL, 16);
        snprintf(o.label, sizeof o.label, "%s", ck.name);
        from_epoch = ck.epoch;
        nllm_catalog_ckpt_free(&ck);
    } else if (rc == NLLM_ENOENT && !(ckpt && *ckpt)) {
        nllm_err_clear(err); /* never checkpointed: start again from the seed */
    } else {
        return nllm_err_prefix(err, "job %s: ", j->name);
    }
    o.reset_patience = reset_patience || (newcfg ? newcfg->reset_patience : j->cfg.reset_patience);
    j->ndiv = 0; /* a client's resume: divergence_retries anew */
    j->nfault = 0; /* and NLLMD_MAX_FAULT_REQUEUES */
    rc = requeue(j, &o, from_epoch, newcfg, err);
    if (rc == 0)
        nllmd_schedule(d);
    return rc;
}

/* The common part of a resume and a rollback: records a new config (event
 * config_changed), begins the catalog's new attempt from from_epoch, and
 * queues the job to start from o. The caller schedules. */
static int requeue(nllm_job_t *j, const nllm_job_origin_t *o, int64_t from_epoch,
                   const nllm_job_config_t *newcfg, nllm_err_t *err)
{
    nllmd_t *d = j->d;
    if (newcfg) {
        char diff[4096];
        if (nllm_job_config_train_diff(&j->cfg, newcfg, diff, sizeof diff) > 0)
            nllmd_job_event(j, "config_changed", "%s", diff);
        j->cfg = *newcfg;
        json_t *cj = nllm_job_config_to_json(&j->cfg);
        char *ctext = json_dumps(cj, JSON_COMPACT | JSON_REAL_PRECISION(17));
        nllm_catalog_job_set_config(d->cat, j->name, ctext, NULL);
        nllm_catalog_job_set_num_epochs(d->cat, j->name, j->cfg.num_epochs, NULL);
        free(ctext);
        json_decref(cj);
    }
    int64_t attempt = j->attempt;
    int rc = nllm_catalog_job_resume(d->cat, j->name, from_epoch, &attempt, err);
    if (rc < 0)
        return rc;
    j->attempt = attempt;
    j->origin = *o;
    j->error[0] = '\0';
    pthread_mutex_lock(&j->mu);
    j->epoch_done = from_epoch;
    pthread_mutex_unlock(&j->mu);
    nllmd_job_event(j, "resumed", "resume from %s (epoch %lld), attempt %lld",
                    o->path[0] ? o->label : "the start", (long long)from_epoch,
                    (long long)attempt);
    job_set_state(j, "queued", NULL);
    return 0;
}

int nllmd_job_extend(nllm_job_t *j, int64_t num_epochs, nllm_err_t *err)
{
    if (num_epochs < 1 || num_epochs > 1000000)
        return nllm_err_set(err, NLLM_EINVAL, "num_epochs %lld is out of range 1..1000000",
                            (long long)num_epochs);
    if (num_epochs < j->epoch_done)
        return nllm_err_set(err, NLLM_EINVAL,
                            "job %s has already completed %lld epochs: num_epochs must be at "
                            "least that",
                            j->name, (long long)j->epoch_done);
    /* a completed job trains on at once: refused before the target changes */
    int rc = 0;
    if (!strcmp(j->state, "completed") && num_epochs > j->epoch_done &&
        (rc = check_precision(j->d, j->name, &j->cfg, err)) < 0)
        return rc;
    int64_t old = j->cfg.num_epochs;
    rc = nllm_catalog_job_set_num_epochs(j->d->cat, j->name, num_epochs, err);
    if (rc < 0)
        return rc;
    j->cfg.num_epochs = (int32_t)num_epochs;
    atomic_store(&j->ctl.num_epochs, (int)num_epochs);
    json_t *cj = nllm_job_config_to_json(&j->cfg);
    char *ctext = json_dumps(cj, JSON_COMPACT | JSON_REAL_PRECISION(17));
    nllm_catalog_job_set_config(j->d->cat, j->name, ctext, NULL);
    free(ctext);
    json_decref(cj);
    nllmd_job_event(j, "extended", "num_epochs %lld -> %lld", (long long)old,
                    (long long)num_epochs);
    if (!strcmp(j->state, "completed") && num_epochs > j->epoch_done) {
        rc = nllmd_job_resume(j, "final", NULL, 0, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int remove_tree(const char *path)
{
    DIR *dir = opendir(path);
    if (!dir)
        return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
    struct dirent *de;
    int n = 0;
    char p[NLLM_PATH_MAX + 300];
    while ((de = readdir(dir))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", path, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            int r = remove_tree(p);
            if (r > 0)
                n += r;
        } else if (unlink(p) == 0) {
            n++;
        }
    }
    closedir(dir);
    rmdir(path);
    return n;
}

int nllmd_job_remove(nllm_job_t *j, int delete_files, int *deleted, nllm_err_t *err)
{
    *deleted = 0;
    if (is_active(j) || !strcmp(j->state, "queued") || j->thread_live)
        return nllm_err_set(err, NLLM_ESTATE,
                            "job %s is %s: pause or stop it before removing it", j->name,
                            j->state);
    int rc = nllm_catalog_job_delete(j->d->cat, j->name, err);
    if (rc < 0)
        return rc;
    if (delete_files) {
        int n = remove_tree(j->dir);
        *deleted = n > 0 ? n : 0;
    }
    nllmd_log(j->d, j->name, "removed%s", delete_files ? " with its files" : "");
    j->removing = 1;
    job_unref(j);
    return 0;
}

void nllmd_pause_all_for_shutdown(nllmd_t *d)
{
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        if (j->thread_live) {
            atomic_store(&j->shutdown_pause, 1);
            atomic_store(&j->ctl.pause, 1);
        }
}

/* ---- verify: rows collected on the loop, files hashed on the thread pool,
 * verdicts recorded back on the loop ---------------------------------------- */

int nllmd_verify_collect(nllmd_t *d, nllm_job_t *j, nllmd_verify_t *v, nllm_err_t *err)
{
    nllm_catalog_ckpt_t *cks;
    size_t n;
    int rc = nllm_catalog_ckpt_list(d->cat, j->name, 0, &cks, &n, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (!owns_file(cks, n, i))
            continue;
        nllmd_verify_item_t *it = realloc(v->items, sizeof *it * (size_t)(v->n + 1));
        if (!it) {
            nllm_catalog_ckpts_free(cks, n);
            return nllm_err_set(err, NLLM_ENOMEM, "verify: out of memory");
        }
        v->items = it;
        it = &v->items[v->n++];
        memset(it, 0, sizeof *it);
        snprintf(it->job, sizeof it->job, "%s", j->name);
        snprintf(it->name, sizeof it->name, "%s", cks[i].name);
        snprintf(it->path, sizeof it->path, "%s", cks[i].path);
        snprintf(it->checksum, sizeof it->checksum, "%s", cks[i].checksum);
        it->id = cks[i].id;
        it->was_ok = strcmp(cks[i].status, "ok") == 0;
    }
    nllm_catalog_ckpts_free(cks, n);
    return 0;
}

/* Thread pool: re-hash every file (no catalog access here). */
void nllmd_verify_hash(nllmd_verify_t *v)
{
    for (int i = 0; i < v->n; i++) {
        nllmd_verify_item_t *it = &v->items[i];
        nllm_st_file_t *f;
        uint64_t h;
        nllm_err_t e2;
        if (nllm_st_open(it->path, &f, &h, &e2) < 0) {
            snprintf(it->reason, sizeof it->reason, "%s", e2.msg);
            continue;
        }
        nllm_st_close(f);
        char sum[17];
        snprintf(sum, sizeof sum, "%016llx", (unsigned long long)h);
        if (strcmp(sum, it->checksum) != 0)
            snprintf(it->reason, sizeof it->reason,
                     "checksum %s does not match the catalog's %s", sum, it->checksum);
    }
}

/* Loop: record the verdicts; returns the results array. */
json_t *nllmd_verify_apply(nllmd_t *d, nllmd_verify_t *v, int *bad)
{
    json_t *results = json_array();
    *bad = 0;
    for (int i = 0; i < v->n; i++) {
        nllmd_verify_item_t *it = &v->items[i];
        nllm_job_t *j = nllmd_job_find(d, it->job);
        if (it->reason[0]) {
            (*bad)++;
            if (j) {
                nllm_catalog_ckpt_mark_bad(d->cat, j->name, it->id, it->reason, NULL);
                nllmd_job_event(j, "verify", "%s is bad: %s", it->name, it->reason);
            }
        } else if (!it->was_ok && j) {
            nllm_catalog_ckpt_mark_ok(d->cat, j->name, it->id, NULL);
        }
        json_array_append_new(results,
                              json_pack("{s:s,s:s,s:s,s:s}", "job", it->job, "name", it->name,
                                        "status", it->reason[0] ? "bad" : "ok", "reason",
                                        it->reason));
    }
    return results;
}
