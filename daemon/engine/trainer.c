/* trainer.c -- the epoch loop of one job; see trainer.h.
 *
 * Data order: epoch e visits the training windows in the permutation
 * nllm_data_shuffle(seed, e), batch k taking positions [k*B, (k+1)*B) (the
 * last partial batch is dropped). Dropout masks use the global step, Adam
 * its 1-based count. Nothing else carries state between steps, so a
 * restored nllm_progress_t plus model state continues bit-identically.
 *
 * Steps are queued without waiting for the device (nllm_model_train_step_
 * async); their figures are read in one go ("drained") when queue_depth
 * steps are pending (the whole stats ring on a backend that records, as
 * CUDA does; every step on the CPU, whose ops are done when they return),
 * DRAIN_SECONDS after the last read, and before anything that looks at the
 * progress: pause, stop, the epoch's end. Only a drain advances
 * nllm_progress_t, step by step in order, so the counters, sums and
 * callbacks are exactly those of waiting for every step.
 *
 * Data parallelism (a comm from the caller, comm.h: the threads of a job on
 * several devices in nllmd, or the MPI ranks of `mpirun -np N nllmd run`;
 * NULL: none): batch_size is the global batch; every rank builds the same
 * global batch and trains on its contiguous slice [r*B/N, (r+1)*B/N),
 * scaled by the global batch's token count, with the dropout masks of the
 * global windows; the model's hook sums the gradients over the ranks before
 * the norm. Each step's figures are read at once and summed over the
 * ranks; at each read the ranks agree on pause and stop, so all end at the
 * same step. Validation is split over the ranks by whole batches and
 * summed. A run starts from rank 0's weights and progress, and the
 * weights' hashes are compared at each epoch's end. Nothing here depends on
 * the number of ranks but the order of float sums, so a checkpoint of N
 * ranks resumes on M.
 */
#include "trainer.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "comm.h"

struct nllm_trainer {
    nllm_job_config_t cfg;
    const nllm_dataset_t *data; /* &own_data, or the first rank's (create_peer) */
    nllm_dataset_t own_data;
    nllm_model_t *model;
    nllm_progress_t prog;
    nllm_trainer_ctl_t own_ctl;
    nllm_trainer_ctl_t *ctl; /* own_ctl or the caller's */
    int64_t *perm;     /* (ntrain) order of the running epoch */
    int64_t perm_epoch; /* epoch perm was made for, -1 none */
    int32_t *batch;    /* (B, S) host batch */
    int queue_depth;   /* steps queued before their figures are read */
    nllm_comm_t *comm; /* data parallelism (comm.h), the caller's; NULL: none */
    int rank, world;   /* in comm; 0 of 1 without one */
    int num_epochs;    /* target epochs in force (agree_epochs) */
    /* time in collectives since this run entered the running epoch (host
     * clock: the exposed time where the comm is the host's) */
    double coll_t0;    /* when this run entered the epoch */
    double coll_s;     /* seconds in collectives, the gradient sums included */
    double grad_s;     /* seconds in the gradient sums */
    int64_t grad_n;    /* gradient sums */
    /* the step that ended the last run with a divergence */
    int diverged;
    int64_t div_step;
    double div_norm;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Adds the time since t0 to the collectives' clock. */
static void coll_time(nllm_trainer_t *tr, double t0)
{
    tr->coll_s += now_s() - t0;
}

/* ---- test hook: NLLM_TRAINER_FAULT (trainer.h) ------------------------- */

static struct {
    int64_t step;  /* global step to diverge, -1 none */
    long times;    /* how many times in this process, < 0 every time */
    atomic_long fired; /* counted by rank 0; the other ranks follow it */
} fault = {-1, -1, 0};
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static void fault_parse(void)
{
    const char *v = getenv("NLLM_TRAINER_FAULT");
    long long n;
    long k = -1;
    char tail;
    if (!v || !*v)
        return;
    int got = sscanf(v, "diverge@step:%lld:%ld%c", &n, &k, &tail);
    if ((got == 1 || got == 2) && n >= 0 && (got == 1 || k > 0)) {
        fault.step = n;
        fault.times = got == 2 ? k : -1;
    } else {
        fprintf(stderr, "nllm: NLLM_TRAINER_FAULT=\"%s\" ignored: use diverge@step:N or "
                "diverge@step:N:K\n", v);
    }
}

/* *due: whether the step at global step gs is to diverge (rank 0 counts
 * it and, with data parallelism, tells the others at that step). */
static int fault_due(nllm_trainer_t *tr, int64_t gs, int *due, nllm_err_t *err)
{
    pthread_once(&fault_once, fault_parse);
    *due = 0;
    if (fault.step < 0 || gs != fault.step)
        return 0;
    if (tr->rank == 0) {
        long k = atomic_fetch_add(&fault.fired, 1);
        *due = fault.times < 0 || k < fault.times;
    }
    return tr->comm ? nllm_comm_bcast(tr->comm, due, sizeof *due, 0, err) : 0;
}

const char *nllm_ckpt_kind_name(nllm_ckpt_kind_t k)
{
    switch (k) {
    case NLLM_CKPT_BEST:
        return "best";
    case NLLM_CKPT_EPOCH:
        return "epoch";
    case NLLM_CKPT_FINAL:
        return "final";
    case NLLM_CKPT_PAUSED:
        return "paused";
    }
    return "unknown";
}

/* Longest wait between reads of the queued steps' figures (progress in
 * status and watch stays this fresh). */
#define DRAIN_SECONDS 0.5

/* ---- progress ---------------------------------------------------------- */

void nllm_progress_init(nllm_progress_t *p)
{
    memset(p, 0, sizeof *p);
    p->best_val_loss = INFINITY;
    p->es_best = INFINITY;
}

void nllm_progress_free(nllm_progress_t *p)
{
    nllm_history_t *h = &p->hist;
    free(h->train_loss);
    free(h->val_loss);
    free(h->train_ppl);
    free(h->val_ppl);
    free(h->val_acc);
    memset(h, 0, sizeof *h);
}

static int hist_reserve(nllm_history_t *h, int64_t cap)
{
    if (cap <= h->cap)
        return 0;
    double **cols[5] = {&h->train_loss, &h->val_loss, &h->train_ppl, &h->val_ppl, &h->val_acc};
    for (int i = 0; i < 5; i++) {
        double *p = realloc(*cols[i], sizeof(double) * (size_t)cap);
        if (!p)
            return NLLM_ENOMEM;
        *cols[i] = p;
    }
    h->cap = cap;
    return 0;
}

int nllm_history_push(nllm_history_t *h, double tl, double vl, double tp, double vp, double va)
{
    if (h->n == h->cap && hist_reserve(h, h->cap ? 2 * h->cap : 16) < 0)
        return NLLM_ENOMEM;
    h->train_loss[h->n] = tl;
    h->val_loss[h->n] = vl;
    h->train_ppl[h->n] = tp;
    h->val_ppl[h->n] = vp;
    h->val_acc[h->n] = va;
    h->n++;
    return 0;
}

int nllm_progress_copy(nllm_progress_t *dst, const nllm_progress_t *src)
{
    nllm_progress_t tmp = *src;
    memset(&tmp.hist, 0, sizeof tmp.hist);
    if (hist_reserve(&tmp.hist, src->hist.n > 0 ? src->hist.n : 1) < 0) {
        nllm_progress_free(&tmp);
        return NLLM_ENOMEM;
    }
    size_t bytes = sizeof(double) * (size_t)src->hist.n;
    if (bytes) {
        memcpy(tmp.hist.train_loss, src->hist.train_loss, bytes);
        memcpy(tmp.hist.val_loss, src->hist.val_loss, bytes);
        memcpy(tmp.hist.train_ppl, src->hist.train_ppl, bytes);
        memcpy(tmp.hist.val_ppl, src->hist.val_ppl, bytes);
        memcpy(tmp.hist.val_acc, src->hist.val_acc, bytes);
    }
    tmp.hist.n = src->hist.n;
    nllm_progress_free(dst);
    *dst = tmp;
    return 0;
}

/* ---- lifecycle --------------------------------------------------------- */

/* The model's hook: gradients (the backend's memory) summed over ranks. A
 * failure breaks the comm, so the step's figures, summed next, report it. */
static void grad_reduce(void *ud, float *g, int64_t n)
{
    nllm_trainer_t *tr = ud;
    nllm_err_t err;
    double t0 = now_s();
    (void)nllm_comm_allreduce_sum_f(tr->comm, g, n, &err);
    double dt = now_s() - t0;
    tr->grad_s += dt;
    tr->coll_s += dt;
    tr->grad_n++;
}

/* The part of create shared with create_peer: a trainer without data or
 * model, on be, in comm. */
static int trainer_new(const nllm_job_config_t *cfg, nllm_backend_t *be, nllm_comm_t *comm,
                       nllm_trainer_t **out, nllm_err_t *err)
{
    *out = NULL;
    int rc = nllm_job_config_check(cfg, err);
    if (rc < 0)
        return rc;
    const int rank = nllm_comm_rank(comm), world = nllm_comm_size(comm);
    if (comm && (rc = nllm_comm_bind(comm, be, err)) < 0)
        return rc;
    if (cfg->batch_size % world != 0)
        return nllm_err_set(err, NLLM_EINVAL,
                            "batch_size %d does not divide by the world size %d (ranks): "
                            "batch_size is the global batch; pick a multiple of %d",
                            cfg->batch_size, world, world);
    nllm_trainer_t *tr = calloc(1, sizeof *tr);
    if (!tr)
        return nllm_err_set(err, NLLM_ENOMEM, "trainer: out of memory");
    tr->cfg = *cfg;
    tr->perm_epoch = -1;
    tr->data = &tr->own_data;
    /* a backend that records (CUDA) runs queued steps while the host
     * prepares the next; the CPU has finished each op when it returns, so
     * reading its figures at once costs nothing and keeps status and pause
     * exact to the step */
    tr->queue_depth = be->record ? NLLM_STATS_RING : 1;
    tr->comm = comm;
    tr->rank = rank;
    tr->world = world;
    if (comm)
        tr->queue_depth = 1; /* the ranks agree on pause and stop at every step */
    nllm_progress_init(&tr->prog);
    tr->ctl = &tr->own_ctl;
    atomic_init(&tr->own_ctl.pause, 0);
    atomic_init(&tr->own_ctl.pause_epoch_end, 0);
    atomic_init(&tr->own_ctl.stop, 0);
    atomic_init(&tr->own_ctl.num_epochs, cfg->num_epochs);
    *out = tr;
    return 0;
}

/* The rest of create and create_peer, with the data set in place: the
 * model (each rank holds the activations of its slice only), its weights
 * from the seed, the order and batch buffers. */
static int trainer_finish(nllm_trainer_t *tr, nllm_backend_t *be, nllm_trainer_t **out,
                          nllm_err_t *err)
{
    const nllm_job_config_t *cfg = &tr->cfg;
    int maxb = cfg->batch_size / tr->world;
    int rc = nllm_model_create(&cfg->model, be, maxb, &tr->model, err);
    if (rc < 0) {
        nllm_trainer_destroy(tr);
        return rc;
    }
    nllm_model_init_weights(tr->model, cfg->seed);
    if (tr->comm)
        nllm_model_set_grad_reduce(tr->model, grad_reduce, tr);
    tr->perm = malloc(sizeof(int64_t) * (size_t)(tr->data->train.n > 0 ? tr->data->train.n : 1));
    tr->batch = malloc(sizeof(int32_t) * (size_t)cfg->batch_size *
                       (size_t)cfg->model.max_seq_length);
    if (!tr->perm || !tr->batch) {
        int64_t n = tr->data->train.n;
        nllm_trainer_destroy(tr);
        return nllm_err_set(err, NLLM_ENOMEM, "trainer: out of memory for %lld windows",
                            (long long)n);
    }
    *out = tr;
    return 0;
}

int nllm_trainer_create(const nllm_job_config_t *cfg, const char *cache_path,
                        const nllm_vocab_t *vocab, nllm_backend_t *be, nllm_comm_t *comm,
                        nllm_trainer_t **out, nllm_err_t *err)
{
    nllm_trainer_t *tr;
    int rc = trainer_new(cfg, be, comm, &tr, err);
    if (rc < 0)
        return rc;

    nllm_data_opts_t o;
    nllm_data_opts_init(&o);
    o.train_path = cfg->data;
    o.val_path = cfg->val[0] ? cfg->val : NULL;
    o.kind = cfg->tokenizer;
    o.vocab_size = cfg->model.vocab_size;
    o.seq_len = cfg->model.max_seq_length;
    o.batch = cfg->batch_size;
    o.seed = cfg->seed;
    o.val_fraction = cfg->val_fraction;
    o.cache_path = cache_path;
    o.vocab = vocab;
    rc = nllm_data_load(&o, &tr->own_data, err);
    if (rc < 0) {
        free(tr);
        return rc;
    }
    return trainer_finish(tr, be, out, err);
}

int nllm_trainer_create_peer(const nllm_trainer_t *first, nllm_backend_t *be, nllm_comm_t *comm,
                             nllm_trainer_t **out, nllm_err_t *err)
{
    nllm_trainer_t *tr;
    int rc = trainer_new(&first->cfg, be, comm, &tr, err);
    if (rc < 0)
        return rc;
    tr->data = first->data; /* read only, from here on by every rank */
    return trainer_finish(tr, be, out, err);
}

void nllm_trainer_destroy(nllm_trainer_t *tr)
{
    if (!tr)
        return;
    nllm_model_destroy(tr->model);
    nllm_data_free(&tr->own_data);
    nllm_progress_free(&tr->prog);
    free(tr->perm);
    free(tr->batch);
    free(tr);
}

nllm_model_t *nllm_trainer_model(nllm_trainer_t *tr) { return tr->model; }
const nllm_dataset_t *nllm_trainer_data(const nllm_trainer_t *tr) { return tr->data; }
nllm_progress_t *nllm_trainer_progress(nllm_trainer_t *tr) { return &tr->prog; }
const nllm_job_config_t *nllm_trainer_config(const nllm_trainer_t *tr) { return &tr->cfg; }
nllm_trainer_ctl_t *nllm_trainer_ctl(nllm_trainer_t *tr) { return tr->ctl; }
void nllm_trainer_use_ctl(nllm_trainer_t *tr, nllm_trainer_ctl_t *ctl) { tr->ctl = ctl; }

void nllm_trainer_set_queue_depth(nllm_trainer_t *tr, int depth)
{
    tr->queue_depth = depth < 1 ? 1 : depth > NLLM_STATS_RING ? NLLM_STATS_RING : depth;
    if (tr->comm)
        tr->queue_depth = 1;
}

int64_t nllm_trainer_steps_per_epoch(const nllm_trainer_t *tr)
{
    return tr->data->train.n / tr->cfg.batch_size;
}

int nllm_trainer_set_config(nllm_trainer_t *tr, const nllm_job_config_t *cfg, nllm_err_t *err)
{
    char diff[1024];
    if (nllm_job_config_model_diff(&tr->cfg.model, "running", &cfg->model, "new", diff,
                                   sizeof diff) > 0)
        return nllm_err_set(err, NLLM_EMISMATCH, "model shape cannot change: %s", diff);
    if (cfg->batch_size / tr->world > nllm_model_max_batch(tr->model))
        return nllm_err_set(err, NLLM_EINVAL,
                            "batch_size %d is larger than the %d this job was set up for",
                            cfg->batch_size, nllm_model_max_batch(tr->model) * tr->world);
    if (cfg->batch_size % tr->world != 0)
        return nllm_err_set(err, NLLM_EINVAL,
                            "batch_size %d does not divide by the world size %d (ranks): "
                            "batch_size is the global batch; pick a multiple of %d",
                            cfg->batch_size, tr->world, tr->world);
    if (tr->data->train.n < cfg->batch_size)
        return nllm_err_set(err, NLLM_EINVAL,
                            "batch_size %d: the training text has only %lld windows",
                            cfg->batch_size, (long long)tr->data->train.n);
    tr->cfg = *cfg;
    atomic_store(&tr->ctl->num_epochs, cfg->num_epochs);
    return 0;
}

int nllm_trainer_restore(nllm_trainer_t *tr, const nllm_progress_t *p, nllm_err_t *err)
{
    if (p->step_in_epoch < 0 || p->step_in_epoch > nllm_trainer_steps_per_epoch(tr))
        return nllm_err_set(err, NLLM_EMISMATCH,
                            "checkpoint is at step %lld of its epoch, but this data gives %lld "
                            "steps per epoch: resume with the same data and batch_size",
                            (long long)p->step_in_epoch,
                            (long long)nllm_trainer_steps_per_epoch(tr));
    if (nllm_progress_copy(&tr->prog, p) < 0)
        return nllm_err_set(err, NLLM_ENOMEM, "trainer: out of memory");
    tr->perm_epoch = -1;
    return 0;
}

/* ---- validation -------------------------------------------------------- */

int nllm_trainer_validate(nllm_trainer_t *tr, double *loss, double *acc, nllm_err_t *err)
{
    const nllm_windows_t *v = &tr->data->val;
    const int S = tr->cfg.model.max_seq_length, Bm = nllm_model_max_batch(tr->model);
    /* with data parallelism this rank's share of the batches, summed below */
    const int64_t nb = (v->n + Bm - 1) / Bm;
    const int64_t b0 = nb * tr->rank / tr->world, b1 = nb * (tr->rank + 1) / tr->world;
    double sums[3] = {0, 0, 0}; /* loss, tokens, hits */
    int rc = 0;
    for (int64_t k = b0; k < b1 && rc == 0; k++) {
        int64_t i = k * Bm;
        int B = (int)(v->n - i < Bm ? v->n - i : Bm);
        nllm_batch_stats_t st;
        if ((rc = nllm_model_forward(tr->model, v->ids + i * S, B, 0, 0, 0, 0, &st, err)) < 0)
            break;
        sums[0] += st.loss_sum;
        sums[1] += (double)st.tokens;
        sums[2] += (double)st.correct;
    }
    if (tr->comm) {
        /* every rank takes part, also one whose forward failed */
        int bad = rc < 0, any = 0, crc;
        nllm_err_t e2;
        double t0 = now_s();
        crc = nllm_comm_any(tr->comm, bad, &any, rc < 0 ? &e2 : err);
        if (crc == 0 && rc == 0 && !any)
            crc = nllm_comm_allreduce_sum_d(tr->comm, sums, 3, err);
        coll_time(tr, t0);
        if (rc < 0)
            return rc;
        if (crc < 0)
            return crc;
        if (any)
            return nllm_err_set(err, NLLM_EIO, "validation failed on another rank");
    }
    if (rc < 0)
        return rc;
    double tokens = sums[1];
    *loss = tokens > 0 ? sums[0] / tokens : 0.0;
    *acc = tokens > 0 ? sums[2] / tokens : 0.0;
    return 0;
}

/* ---- the loop ---------------------------------------------------------- */

int nllm_trainer_diverged(const nllm_trainer_t *tr, int64_t *step, double *grad_norm)
{
    if (tr->diverged) {
        *step = tr->div_step;
        *grad_norm = tr->div_norm;
    }
    return tr->diverged;
}

static int checkpoint(nllm_trainer_t *tr, const nllm_trainer_cbs_t *cbs, nllm_ckpt_kind_t kind,
                      int64_t epoch, nllm_err_t *err)
{
    if (!cbs || !cbs->on_checkpoint)
        return 0;
    return cbs->on_checkpoint(cbs->ud, tr, kind, epoch, err);
}

/* XXH3 of the whole parameter buffer (ranks compare it). */
static int weights_hash(nllm_trainer_t *tr, uint64_t *h, nllm_err_t *err)
{
    int64_t n = nllm_model_num_floats(tr->model);
    float *w = malloc(sizeof(float) * (size_t)n);
    if (!w)
        return nllm_err_set(err, NLLM_ENOMEM, "trainer: out of memory");
    int rc = nllm_model_get_state(tr->model, w, NULL, NULL, err);
    if (rc == 0)
        *h = XXH3_64bits(w, sizeof(float) * (size_t)n);
    free(w);
    return rc;
}

/* Data parallelism: every rank takes rank 0's weights, Adam moments and
 * progress (rank 0 may have resumed from a checkpoint). */
static int sync_from_rank0(nllm_trainer_t *tr, nllm_err_t *err)
{
    int64_t n = nllm_model_num_floats(tr->model);
    float *buf = malloc(sizeof(float) * (size_t)n * 3);
    if (!buf)
        return nllm_err_set(err, NLLM_ENOMEM, "trainer: out of memory");
    int rc = 0, same = 0, crc;
    if (tr->rank == 0)
        rc = nllm_model_get_state(tr->model, buf, buf + n, buf + 2 * n, err);
    if ((crc = nllm_comm_same_u64(tr->comm, rc < 0, &same, err)) < 0 || !same) {
        free(buf);
        return crc < 0 || rc < 0 ? (crc < 0 ? crc : rc)
                                 : nllm_err_set(err, NLLM_EIO, "rank 0 could not read its weights");
    }
    if ((crc = nllm_comm_bcast(tr->comm, buf, sizeof(float) * (size_t)n * 3, 0, err)) < 0) {
        free(buf);
        return crc;
    }
    if (tr->rank != 0)
        rc = nllm_model_set_state(tr->model, buf, buf + n, buf + 2 * n, err);
    free(buf);
    if ((crc = nllm_comm_same_u64(tr->comm, rc < 0, &same, err)) < 0 || !same)
        return crc < 0 || rc < 0 ? (crc < 0 ? crc : rc)
                                 : nllm_err_set(err, NLLM_EIO, "a rank could not set its weights");
    /* rank 0's settings (a resume may have changed training ones) */
    nllm_job_config_t cfg = tr->cfg;
    int ne = atomic_load(&tr->ctl->num_epochs);
    nllm_progress_t tmp = tr->prog;
    if ((crc = nllm_comm_bcast(tr->comm, &cfg, sizeof cfg, 0, err)) < 0 ||
        (crc = nllm_comm_bcast(tr->comm, &ne, sizeof ne, 0, err)) < 0 ||
        (crc = nllm_comm_bcast(tr->comm, &tmp, sizeof tmp, 0, err)) < 0)
        return crc;
    tr->cfg = cfg;
    atomic_store(&tr->ctl->num_epochs, ne);
    if (tr->rank != 0) {
        int64_t hn = tmp.hist.n;
        memset(&tmp.hist, 0, sizeof tmp.hist);
        if (hist_reserve(&tmp.hist, hn > 0 ? hn : 1) < 0)
            abort(); /* the other ranks wait in the broadcasts below */
        tmp.hist.n = hn;
        nllm_progress_free(&tr->prog);
        tr->prog = tmp;
    }
    nllm_history_t *h = &tr->prog.hist;
    double *cols[5] = {h->train_loss, h->val_loss, h->train_ppl, h->val_ppl, h->val_acc};
    for (int i = 0; i < 5; i++)
        if ((crc = nllm_comm_bcast(tr->comm, cols[i], sizeof(double) * (size_t)h->n, 0, err)) < 0)
            return crc;
    tr->perm_epoch = -1;
    return 0;
}

/* The stop and pause requests in force at a step boundary: this rank's
 * own, or with data parallelism the ranks' agreement (a request seen by any
 * rank holds for all). Ranks act on the agreed values only: a request that
 * arrives after this rank voted counts at the next boundary, on every rank
 * alike, so all stop at the same step. */
static int agree_requests(nllm_trainer_t *tr, int *stop, int *pause, nllm_err_t *err)
{
    *stop = atomic_load(&tr->ctl->stop);
    *pause = atomic_load(&tr->ctl->pause);
    if (!tr->comm)
        return 0;
    double t0 = now_s();
    int rc = nllm_comm_any(tr->comm, *stop, stop, err);
    if (rc == 0)
        rc = nllm_comm_any(tr->comm, *pause, pause, err);
    coll_time(tr, t0);
    if (rc < 0)
        return rc;
    if (*stop)
        atomic_store(&tr->ctl->stop, 1);
    if (*pause)
        atomic_store(&tr->ctl->pause, 1);
    return 0;
}

/* The target epochs in force: this rank's (extend raises it while the job
 * runs), or with data parallelism rank 0's, sent to all at each epoch's
 * start and end. */
static int agree_epochs(nllm_trainer_t *tr, int *num_epochs, nllm_err_t *err)
{
    *num_epochs = atomic_load(&tr->ctl->num_epochs);
    return tr->comm ? nllm_comm_bcast(tr->comm, num_epochs, sizeof *num_epochs, 0, err) : 0;
}

/* Ends the running epoch: validation, history, best, early stopping. */
static int end_epoch(nllm_trainer_t *tr, const nllm_trainer_cbs_t *cbs, double seconds,
                     nllm_err_t *err)
{
    nllm_progress_t *p = &tr->prog;
    double vl, va;
    int rc = nllm_trainer_validate(tr, &vl, &va, err);
    if (rc < 0)
        return rc;
    if (tr->comm) {
        uint64_t h = 0;
        int same = 0;
        if ((rc = weights_hash(tr, &h, err)) < 0)
            return rc;
        double t0 = now_s();
        rc = nllm_comm_same_u64(tr->comm, h, &same, err);
        coll_time(tr, t0);
        if (rc < 0)
            return rc;
        if (!same)
            return nllm_err_set(err, NLLM_EIO,
                                "data-parallel ranks disagree: the weights of rank %d (hash "
                                "%016llx) differ from rank 0's after epoch %lld; resume from the "
                                "last checkpoint",
                                tr->rank, (unsigned long long)h, (long long)p->epoch + 1);
    }
    double tl = p->ep_tokens ? p->ep_loss_sum / (double)p->ep_tokens : 0.0;
    if (nllm_history_push(&p->hist, tl, vl, exp(tl), exp(vl), va) < 0)
        return nllm_err_set(err, NLLM_ENOMEM, "trainer: out of memory");
    double tokens = (double)p->ep_tokens;
    p->epoch++;
    p->step_in_epoch = 0;
    p->ep_loss_sum = 0;
    p->ep_tokens = p->ep_correct = 0;
    p->ep_seconds = 0;

    nllm_epoch_report_t r = {p->epoch, tr->num_epochs, tl, vl, exp(tl),
                             exp(vl), va, seconds, seconds > 0 ? tokens / seconds : 0, 0, 0,
                             0, 0, 0};
    if (tr->comm) {
        /* NCCL queues the gradient sums on the device, inside the step */
        int host = strcmp(nllm_comm_kind(tr->comm), "nccl") != 0;
        double ran = now_s() - tr->coll_t0;
        r.grad_sum_bytes = (double)sizeof(float) * (double)nllm_model_num_floats(tr->model);
        r.grad_sum_seconds = !host ? NAN : tr->grad_n ? tr->grad_s / (double)tr->grad_n : 0;
        r.comm_share = !host ? NAN : ran > 0 ? tr->coll_s / ran : 0;
    }
    if (vl < p->best_val_loss) {
        p->best_val_loss = vl;
        p->best_epoch = p->epoch;
        r.is_best = 1;
    }
    if (vl < p->es_best - tr->cfg.min_delta) {
        p->es_best = vl;
        p->es_counter = 0;
    } else {
        p->es_counter++;
        if (tr->cfg.patience > 0 && p->es_counter >= tr->cfg.patience) {
            p->stopped_early = 1;
            r.early_stop = 1;
        }
    }
    if (cbs && cbs->on_epoch)
        cbs->on_epoch(cbs->ud, tr, &r);
    if (r.is_best && (rc = checkpoint(tr, cbs, NLLM_CKPT_BEST, p->epoch, err)) < 0)
        return rc;
    if (p->epoch % tr->cfg.save_every == 0 &&
        (rc = checkpoint(tr, cbs, NLLM_CKPT_EPOCH, p->epoch, err)) < 0)
        return rc;
    return 0;
}

/* Steps queued on the device whose figures have not been read. */
typedef struct {
    int pending;   /* ring slots 0 .. pending-1 */
    double t_read; /* when figures were last read */
} queue_t;

/* Reads the queued steps' figures and advances the progress by each step
 * in order, as if each had been waited for. A step whose gradient norm is
 * not finite ends the run with the error of nllm_model_train_step; the
 * device applied neither it nor any later queued step, so the weights and
 * the progress both stand just before it. */
static int drain(nllm_trainer_t *tr, const nllm_trainer_cbs_t *cbs, queue_t *q, int64_t spe,
                 double t_epoch, nllm_err_t *err)
{
    nllm_progress_t *p = &tr->prog;
    nllm_step_stats_t st[NLLM_STATS_RING];
    int n = q->pending;
    if (n == 0)
        return 0;
    /* the device sums of the queued steps first: a bounded wait (NCCL) */
    int rc = nllm_comm_wait(tr->comm, err);
    if (rc == 0)
        rc = nllm_model_read_stats(tr->model, 0, n, st, err);
    q->pending = 0;
    double now = now_s(), dt = now - q->t_read;
    q->t_read = now;
    if (rc < 0)
        return nllm_err_prefix(err, "epoch %lld step %lld: ", (long long)p->epoch + 1,
                               (long long)p->step_in_epoch + 1);
    int64_t own = 0; /* this rank's tokens */
    for (int i = 0; i < n; i++)
        own += st[i].batch.tokens;
    if (tr->comm) {
        /* each rank's share of the loss, hits and tokens, summed */
        double sums[3 * NLLM_STATS_RING];
        for (int i = 0; i < n; i++) {
            sums[3 * i] = st[i].batch.loss_sum;
            sums[3 * i + 1] = (double)st[i].batch.correct;
            sums[3 * i + 2] = (double)st[i].batch.tokens;
        }
        double t0 = now_s();
        rc = nllm_comm_allreduce_sum_d(tr->comm, sums, 3 * n, err);
        coll_time(tr, t0);
        if (rc < 0)
            return nllm_err_prefix(err, "epoch %lld step %lld: ", (long long)p->epoch + 1,
                                   (long long)p->step_in_epoch + 1);
        for (int i = 0; i < n; i++) {
            st[i].batch.loss_sum = sums[3 * i];
            st[i].batch.correct = (int64_t)sums[3 * i + 1];
            st[i].batch.tokens = (int64_t)sums[3 * i + 2];
        }
    }
    int64_t tokens = 0;
    for (int i = 0; i < n; i++)
        tokens += st[i].batch.tokens;
    double rate = dt > 0 ? (double)tokens / dt : 0, own_rate = dt > 0 ? (double)own / dt : 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(st[i].grad_norm) || st[i].halted) {
            tr->diverged = 1;
            tr->div_step = p->global_step;
            tr->div_norm = st[i].grad_norm;
            nllm_model_diverged(st[i].grad_norm, (uint32_t)p->global_step, err);
            return nllm_err_prefix(err, "epoch %lld step %lld: ", (long long)p->epoch + 1,
                                   (long long)p->step_in_epoch + 1);
        }
        p->global_step++;
        p->step_in_epoch++;
        p->ep_loss_sum += st[i].batch.loss_sum;
        p->ep_tokens += st[i].batch.tokens;
        p->ep_correct += st[i].batch.correct;
        if (cbs && cbs->on_step) {
            nllm_step_report_t r = {p->epoch,
                                    p->step_in_epoch,
                                    spe,
                                    p->global_step,
                                    p->ep_tokens ? p->ep_loss_sum / (double)p->ep_tokens : 0,
                                    rate,
                                    now - t_epoch,
                                    own_rate};
            cbs->on_step(cbs->ud, tr, &r);
        }
    }
    return 0;
}

/* NLLM_TRAINER_FAULT: queues the step at global step gs with the context
 * norm's gain set to NaN, so its loss, gradients and norm are NaN and the
 * device halts as for any divergence (Adam skipped); then puts the gain
 * back. The queue is empty on entry; drain reports the divergence. */
static int poisoned_step(nllm_trainer_t *tr, const nllm_trainer_cbs_t *cbs, queue_t *q,
                         int64_t spe, double t_epoch, const int32_t *batch, int B, int64_t gs,
                         const nllm_optim_t *opt, nllm_err_t *err)
{
    nllm_model_t *m = tr->model;
    const nllm_param_info_t *gain = nllm_model_param_by_name(m, "context_norm.weight");
    float *w = malloc(sizeof(float) * (size_t)nllm_model_num_floats(m));
    if (!w || !gain) {
        free(w);
        return nllm_err_set(err, NLLM_ENOMEM, "trainer fault hook: out of memory");
    }
    int rc = nllm_model_get_state(m, w, NULL, NULL, err);
    if (rc < 0) {
        free(w);
        return rc;
    }
    float keep = w[gain->offset];
    w[gain->offset] = NAN;
    rc = nllm_model_set_state(m, w, NULL, NULL, err);
    if (rc == 0)
        rc = nllm_model_train_step_async(m, batch, B, tr->cfg.seed, (uint32_t)gs, gs + 1, opt,
                                         0, err);
    if (rc == 0) {
        q->pending = 1;
        rc = drain(tr, cbs, q, spe, t_epoch, err);
    }
    nllm_err_t e2;
    w[gain->offset] = keep;
    /* halted: nothing else changed, so these are the weights before the step */
    if (nllm_model_set_state(m, w, NULL, NULL, &e2) < 0 && rc == 0)
        rc = nllm_err_set(err, e2.code, "%s", e2.msg);
    free(w);
    return rc;
}

static int run_loop(nllm_trainer_t *tr, const nllm_trainer_cbs_t *cbs, nllm_run_result_t *res,
                    nllm_err_t *err)
{
    tr->diverged = 0;
    nllm_progress_t *p = &tr->prog;
    const int B = tr->cfg.batch_size, S = tr->cfg.model.max_seq_length;
    const int Bl = B / tr->world; /* this rank's slice of the global batch */
    const int64_t spe = nllm_trainer_steps_per_epoch(tr);
    nllm_optim_t opt = {tr->cfg.learning_rate, tr->cfg.beta1, tr->cfg.beta2, tr->cfg.eps,
                        tr->cfg.weight_decay, 0};
    int rc, stop, pause;
    for (;;) {
        if (p->stopped_early) {
            *res = NLLM_RUN_EARLY_STOPPED;
            return checkpoint(tr, cbs, NLLM_CKPT_FINAL, p->epoch, err);
        }
        if ((rc = agree_epochs(tr, &tr->num_epochs, err)) < 0)
            return rc;
        if (p->epoch >= tr->num_epochs) {
            *res = NLLM_RUN_COMPLETED;
            return checkpoint(tr, cbs, NLLM_CKPT_FINAL, p->epoch, err);
        }
        if (tr->perm_epoch != p->epoch) {
            nllm_data_shuffle(tr->cfg.seed, (uint64_t)p->epoch, tr->data->train.n, tr->perm);
            tr->perm_epoch = p->epoch;
        }
        opt.max_norm = nllm_job_config_clip_for_epoch(&tr->cfg, p->epoch);
        double t_epoch = now_s() - p->ep_seconds;
        queue_t q = {0, now_s()};
        tr->coll_t0 = q.t_read;
        tr->coll_s = tr->grad_s = 0;
        tr->grad_n = 0;
        while (p->step_in_epoch + q.pending < spe) {
            if ((rc = agree_requests(tr, &stop, &pause, err)) < 0)
                return nllm_err_prefix(err, "epoch %lld step %lld: ", (long long)p->epoch + 1,
                                       (long long)p->step_in_epoch + 1);
            if ((stop || pause) && (rc = drain(tr, cbs, &q, spe, t_epoch, err)) < 0)
                return rc;
            if (stop) {
                *res = NLLM_RUN_STOPPED;
                p->ep_seconds = now_s() - t_epoch;
                return checkpoint(tr, cbs, NLLM_CKPT_FINAL, p->epoch, err);
            }
            if (pause) {
                *res = NLLM_RUN_PAUSED;
                p->ep_seconds = now_s() - t_epoch;
                return checkpoint(tr, cbs, NLLM_CKPT_PAUSED, p->epoch, err);
            }
            const int64_t *order = tr->perm + (p->step_in_epoch + q.pending) * B;
            for (int b = 0; b < B; b++)
                memcpy(tr->batch + (size_t)b * S, tr->data->train.ids + order[b] * S,
                       sizeof(int32_t) * (size_t)S);
            int64_t gs = p->global_step + q.pending;
            if (tr->comm) {
                /* the non-pad targets of the global batch scale every slice */
                int64_t gtok = 0;
                for (int b = 0; b < B; b++)
                    for (int t = 1; t < S; t++)
                        gtok += tr->batch[(size_t)b * S + t] != 0;
                nllm_model_set_shard(tr->model, tr->rank * Bl, gtok);
            }
            int due;
            if ((rc = fault_due(tr, gs, &due, err)) < 0)
                return rc;
            if (due) {
                /* the step alone in the queue, its figures read at once */
                if ((rc = drain(tr, cbs, &q, spe, t_epoch, err)) < 0 ||
                    (rc = poisoned_step(tr, cbs, &q, spe, t_epoch,
                                        tr->batch + (size_t)tr->rank * Bl * S, Bl, gs, &opt,
                                        err)) < 0)
                    return rc;
                continue;
            }
            rc = nllm_model_train_step_async(tr->model, tr->batch + (size_t)tr->rank * Bl * S,
                                             Bl, tr->cfg.seed, (uint32_t)gs, gs + 1, &opt,
                                             q.pending, err);
            if (rc < 0)
                return nllm_err_prefix(err, "epoch %lld step %lld: ", (long long)p->epoch + 1,
                                       (long long)(p->step_in_epoch + q.pending) + 1);
            q.pending++;
            if (q.pending >= tr->queue_depth ||
                p->step_in_epoch + q.pending == spe || now_s() - q.t_read >= DRAIN_SECONDS) {
                if ((rc = drain(tr, cbs, &q, spe, t_epoch, err)) < 0)
                    return rc;
            }
        }
        if ((rc = agree_epochs(tr, &tr->num_epochs, err)) < 0 ||
            (rc = end_epoch(tr, cbs, now_s() - t_epoch, err)) < 0)
            return rc;
        int pe = atomic_load(&tr->ctl->pause_epoch_end);
        if (tr->comm && (rc = nllm_comm_any(tr->comm, pe, &pe, err)) < 0)
            return rc;
        if (pe)
            atomic_store(&tr->ctl->pause_epoch_end, 1);
        if (pe && !p->stopped_early && p->epoch < tr->num_epochs) {
            *res = NLLM_RUN_PAUSED;
            return checkpoint(tr, cbs, NLLM_CKPT_PAUSED, p->epoch, err);
        }
    }
}

int nllm_trainer_run(nllm_trainer_t *tr, const nllm_trainer_cbs_t *cbs, nllm_run_result_t *res,
                     nllm_err_t *err)
{
    if (!tr->comm)
        return run_loop(tr, cbs, res, err);
    int rc = sync_from_rank0(tr, err);
    if (rc == 0) {
        /* in step from here: the short timeout (comm.h) */
        nllm_comm_set_training(tr->comm, 1);
        rc = run_loop(tr, cbs, res, err);
        nllm_comm_set_training(tr->comm, 0);
    }
    uint64_t h = 0;
    nllm_err_t e2;
    if (weights_hash(tr, &h, &e2) == 0)
        fprintf(stderr, "nllm: rank %d of %d: weights hash %016llx after step %lld\n", tr->rank,
                tr->world, (unsigned long long)h, (long long)tr->prog.global_step);
    return rc;
}
