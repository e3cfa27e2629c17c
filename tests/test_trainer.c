/* test_trainer.c -- the trainer and checkpoint files together: every
 * tensor and metadata field round-trips; exact resume (10 epochs straight
 * versus 5 + resume from epoch_5, and a pause in the middle of an epoch)
 * is bit-identical; damaged files and shape mismatches fail clearly; a
 * step made to diverge (NLLM_TRAINER_FAULT) ends the run with its step and
 * NaN norm and leaves weights and progress just before it, so running on
 * gives the straight run's state. Data parallelism through a comm: one
 * rank of a threads comm is bit-identical to no comm; two ranks (two
 * threads, the second a peer sharing the first's data) end with the same
 * weights bit for bit and the validation losses of one rank within 1e-5;
 * a global batch that does not divide by the ranks is refused.
 */
#include <pthread.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"
#include "corpus.h"
#include "safetensors.h"
#include "testutil.h"
#include "trainer.h"

static nllm_backend_t *be;
static char dir[256];

static void small_config(nllm_job_config_t *c, int epochs)
{
    nllm_job_config_defaults(c);
    snprintf(c->data, sizeof c->data, "%s/train.txt", dir);
    c->model = (nllm_model_config_t){24, 8, 16, 8, 2, 8, 0.1f};
    c->num_epochs = epochs;
    c->batch_size = 8;
    c->learning_rate = 3e-3;
    c->save_every = 5;
    c->seed = 11;
}

typedef struct {
    const char *job;
    int64_t pause_at; /* global step after which to request a pause; 0 = never */
    int saved[4];
} run_ctx_t;

static void on_step(void *ud, nllm_trainer_t *tr, const nllm_step_report_t *r)
{
    run_ctx_t *rc = ud;
    if (rc->pause_at && r->global_step == rc->pause_at)
        atomic_store(&nllm_trainer_ctl(tr)->pause, 1);
}

static int on_ckpt(void *ud, nllm_trainer_t *tr, nllm_ckpt_kind_t kind, int64_t epoch,
                   nllm_err_t *err)
{
    run_ctx_t *rc = ud;
    nllm_ckpt_t *c;
    int r = nllm_ckpt_snapshot(tr, rc->job, kind, &c, err);
    if (r < 0)
        return r;
    char name[256], path[512];
    nllm_ckpt_filename(rc->job, kind, epoch, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    uint64_t h, sz;
    r = nllm_ckpt_write(c, path, &h, &sz, err);
    nllm_ckpt_free(c);
    rc->saved[kind]++;
    return r;
}

/* Runs a trainer to its end; returns the final snapshot. */
static nllm_ckpt_t *run(nllm_trainer_t *tr, run_ctx_t *ctx, nllm_run_result_t *res)
{
    nllm_trainer_cbs_t cbs = {ctx, on_step, NULL, on_ckpt};
    nllm_err_t err;
    if (nllm_trainer_run(tr, &cbs, res, &err) < 0) {
        CHECK(0, "run: %s", err.msg);
        return NULL;
    }
    nllm_ckpt_t *c = NULL;
    nllm_ckpt_snapshot(tr, ctx->job, NLLM_CKPT_FINAL, &c, &err);
    return c;
}

static int same_state(const nllm_ckpt_t *a, const nllm_ckpt_t *b, const char *what)
{
    int ok = 1;
    size_t bytes = sizeof(float) * (size_t)a->nfloats;
    if (a->nfloats != b->nfloats || memcmp(a->weights, b->weights, bytes) != 0) {
        CHECK(0, "%s: weights differ", what);
        ok = 0;
    }
    if (memcmp(a->exp_avg, b->exp_avg, bytes) || memcmp(a->exp_avg_sq, b->exp_avg_sq, bytes)) {
        CHECK(0, "%s: Adam moments differ", what);
        ok = 0;
    }
    const nllm_progress_t *p = &a->progress, *q = &b->progress;
    size_t hb = sizeof(double) * (size_t)p->hist.n;
    if (p->epoch != q->epoch || p->global_step != q->global_step || p->hist.n != q->hist.n ||
        memcmp(p->hist.train_loss, q->hist.train_loss, hb) ||
        memcmp(p->hist.val_loss, q->hist.val_loss, hb) ||
        memcmp(p->hist.val_acc, q->hist.val_acc, hb) ||
        memcmp(p->hist.train_ppl, q->hist.train_ppl, hb) ||
        memcmp(p->hist.val_ppl, q->hist.val_ppl, hb) || p->best_val_loss != q->best_val_loss ||
        p->es_counter != q->es_counter || p->es_best != q->es_best) {
        CHECK(0, "%s: progress/history differs (epoch %lld/%lld step %lld/%lld)", what,
              (long long)p->epoch, (long long)q->epoch, (long long)p->global_step,
              (long long)q->global_step);
        ok = 0;
    }
    return ok;
}

static nllm_trainer_t *new_trainer(const nllm_job_config_t *c)
{
    nllm_trainer_t *tr;
    nllm_err_t err;
    if (nllm_trainer_create(c, NULL, NULL, be, NULL, &tr, &err) < 0) {
        fprintf(stderr, "trainer: %s\n", err.msg);
        exit(1);
    }
    return tr;
}

/* Continue from a checkpoint file in a fresh trainer. */
static nllm_trainer_t *resume_from(const nllm_job_config_t *c, const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    nllm_err_t err;
    nllm_ckpt_t *ck;
    if (nllm_ckpt_load(path, 0, NULL, &ck, &err) < 0) {
        CHECK(0, "load %s: %s", file, err.msg);
        return NULL;
    }
    nllm_trainer_t *tr = new_trainer(c);
    CHECK(nllm_ckpt_apply_model(ck, nllm_trainer_model(tr), 1, &err) == 0, "%s", err.msg);
    CHECK(nllm_trainer_restore(tr, &ck->progress, &err) == 0, "%s", err.msg);
    nllm_ckpt_free(ck);
    return tr;
}

static nllm_ckpt_t *straight10;

/* First in main: the hook is read at the process's first step. */
static void test_diverge_hook(void)
{
    nllm_job_config_t c;
    small_config(&c, 2);
    nllm_trainer_t *tr = new_trainer(&c);
    run_ctx_t ctx = {"dv", 0, {0}};
    nllm_trainer_cbs_t cbs = {&ctx, on_step, NULL, on_ckpt};
    nllm_run_result_t res;
    nllm_err_t err;
    int64_t step = -1;
    double norm = 0;
    int rc = nllm_trainer_run(tr, &cbs, &res, &err);
    CHECK(rc < 0 && strstr(err.msg, "gradient norm is nan at step 7"), "faulted run: %d %s", rc,
          err.msg);
    CHECK(nllm_trainer_diverged(tr, &step, &norm) == 1 && step == 7 && isnan(norm),
          "nllm_trainer_diverged: step %lld norm %g", (long long)step, norm);
    CHECK(nllm_trainer_progress(tr)->global_step == 7, "progress stands before step 7: %lld",
          (long long)nllm_trainer_progress(tr)->global_step);
    nllm_ckpt_t *a = run(tr, &ctx, &res); /* the hook fired once: on from step 7 */
    CHECK(nllm_trainer_diverged(tr, &step, &norm) == 0, "a clean run is not diverged");
    nllm_trainer_destroy(tr);
    tr = new_trainer(&c);
    nllm_ckpt_t *b = run(tr, &ctx, &res);
    if (a && b)
        same_state(a, b, "run on after the diverged step vs straight");
    nllm_ckpt_free(a);
    nllm_ckpt_free(b);
    nllm_trainer_destroy(tr);
}

static void test_straight(void)
{
    nllm_job_config_t c;
    small_config(&c, 10);
    nllm_trainer_t *tr = new_trainer(&c);
    run_ctx_t ctx = {"s", 0, {0}};
    nllm_run_result_t res;
    straight10 = run(tr, &ctx, &res);
    CHECK(res == NLLM_RUN_COMPLETED, "result %d", res);
    CHECK(ctx.saved[NLLM_CKPT_EPOCH] == 2, "epoch checkpoints: %d, want 2",
          ctx.saved[NLLM_CKPT_EPOCH]);
    CHECK(ctx.saved[NLLM_CKPT_FINAL] == 1, "final checkpoints: %d", ctx.saved[NLLM_CKPT_FINAL]);
    CHECK(ctx.saved[NLLM_CKPT_BEST] >= 1, "no best checkpoint");
    const nllm_history_t *h = &straight10->progress.hist;
    CHECK(h->n == 10, "history has %lld entries", (long long)h->n);
    CHECK(h->n == 10 && h->train_loss[9] < h->train_loss[0], "train loss did not fall: %g -> %g",
          h->train_loss[0], h->train_loss[h->n - 1]);
    printf("     10 epochs: train loss %.4f -> %.4f, val %.4f -> %.4f\n", h->train_loss[0],
           h->train_loss[9], h->val_loss[0], h->val_loss[9]);
    nllm_trainer_destroy(tr);
}

static void test_roundtrip(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/s_final.safetensors", dir);
    nllm_ckpt_t *ck;
    nllm_err_t err;
    CHECK(nllm_ckpt_load(path, 0, NULL, &ck, &err) == 0, "%s", err.msg);
    if (!ck)
        return;
    same_state(ck, straight10, "round trip");
    CHECK(ck->kind == NLLM_CKPT_FINAL && strcmp(ck->job, "s") == 0, "kind/job lost");
    CHECK(ck->weights_hash == straight10->weights_hash, "weights hash differs");
    CHECK(ck->config.model.hidden_dim == 16 && ck->config.learning_rate == 3e-3 &&
              ck->config.seed == 11 && strcmp(ck->config.data, straight10->config.data) == 0,
          "config fields lost");
    CHECK(ck->vocab && json_is_object(ck->vocab), "tokenizer lost");
    CHECK(ck->progress.best_epoch >= 1 && isfinite(ck->progress.best_val_loss), "best lost");
    nllm_ckpt_free(ck);
}

static void test_resume_epoch(void)
{
    nllm_job_config_t c;
    small_config(&c, 10);
    nllm_trainer_t *tr = resume_from(&c, "s_epoch_5.safetensors");
    if (!tr)
        return;
    CHECK(nllm_trainer_progress(tr)->epoch == 5, "resumed at epoch %lld",
          (long long)nllm_trainer_progress(tr)->epoch);
    run_ctx_t ctx = {"r", 0, {0}};
    nllm_run_result_t res;
    nllm_ckpt_t *c2 = run(tr, &ctx, &res);
    if (c2)
        same_state(c2, straight10, "resume from epoch_5");
    nllm_ckpt_free(c2);
    nllm_trainer_destroy(tr);
}

static void test_resume_mid_epoch(void)
{
    nllm_job_config_t c;
    small_config(&c, 10);
    nllm_trainer_t *tr = new_trainer(&c);
    int64_t spe = nllm_trainer_steps_per_epoch(tr);
    /* steps are read three at a time: the pause asked for after step
     * spe/2 lands at the end of its group of three, still mid-epoch */
    nllm_trainer_set_queue_depth(tr, 3);
    run_ctx_t ctx = {"p", 3 * spe + spe / 2, {0}};
    nllm_run_result_t res;
    nllm_ckpt_t *c1 = run(tr, &ctx, &res);
    CHECK(res == NLLM_RUN_PAUSED, "result %d, want paused", res);
    CHECK(spe >= 8, "the corpus gives only %lld steps per epoch", (long long)spe);
    CHECK(c1 && c1->progress.step_in_epoch >= spe / 2 && c1->progress.step_in_epoch < spe / 2 + 3,
          "paused at step %lld of the epoch, want %lld..%lld",
          c1 ? (long long)c1->progress.step_in_epoch : -1LL, (long long)spe / 2,
          (long long)spe / 2 + 2);
    nllm_ckpt_free(c1);
    nllm_trainer_destroy(tr);
    tr = resume_from(&c, "p_paused.safetensors");
    if (!tr)
        return;
    run_ctx_t ctx2 = {"p2", 0, {0}};
    nllm_ckpt_t *c2 = run(tr, &ctx2, &res);
    if (c2)
        same_state(c2, straight10, "pause mid-epoch + resume");
    nllm_ckpt_free(c2);
    nllm_trainer_destroy(tr);
}

static void test_damaged(void)
{
    char src[512], bad[512];
    snprintf(src, sizeof src, "%s/s_final.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    uint8_t *buf;
    size_t len;
    FILE *f = fopen(src, "rb");
    fseek(f, 0, SEEK_END);
    len = (size_t)ftell(f);
    rewind(f);
    buf = malloc(len);
    CHECK(fread(buf, 1, len, f) == len, "read");
    fclose(f);
    nllm_ckpt_t *ck;
    nllm_err_t err;
    uint64_t good_hash;
    {
        nllm_ckpt_t *tmp;
        nllm_st_file_t *sf;
        (void)tmp;
        CHECK(nllm_st_open(src, &sf, &good_hash, &err) == 0, "%s", err.msg);
        nllm_st_close(sf);
    }
    /* a flipped byte in the data: the checksum catches it */
    buf[len - 5] ^= 0x40;
    f = fopen(bad, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    buf[len - 5] ^= 0x40;
    int rc = nllm_ckpt_load(bad, good_hash, NULL, &ck, &err);
    CHECK(rc == NLLM_ECORRUPT && strstr(err.msg, "checksum") && strstr(err.msg, "bad.safetensors"),
          "flipped byte: rc %d msg %s", rc, err.msg);
    /* truncated */
    f = fopen(bad, "wb");
    fwrite(buf, 1, len / 2, f);
    fclose(f);
    rc = nllm_ckpt_load(bad, 0, NULL, &ck, &err);
    CHECK(rc == NLLM_ECORRUPT && strstr(err.msg, "bad.safetensors"), "truncated: rc %d msg %s",
          rc, err.msg);
    /* a plain weights file without shape information */
    rc = nllm_ckpt_load("/nonexistent/x.safetensors", 0, NULL, &ck, &err);
    CHECK(rc < 0 && strstr(err.msg, "/nonexistent/x.safetensors"), "missing file: %s", err.msg);
    free(buf);
}

static void test_mismatch(void)
{
    nllm_job_config_t c;
    small_config(&c, 10);
    c.model.context_dim = 12;
    c.model.hidden_dim = 20;
    nllm_trainer_t *tr = new_trainer(&c);
    char path[512];
    snprintf(path, sizeof path, "%s/s_epoch_5.safetensors", dir);
    nllm_ckpt_t *ck;
    nllm_err_t err;
    CHECK(nllm_ckpt_load(path, 0, NULL, &ck, &err) == 0, "%s", err.msg);
    int rc = nllm_ckpt_apply_model(ck, nllm_trainer_model(tr), 1, &err);
    CHECK(rc == NLLM_EMISMATCH, "mismatch rc %d", rc);
    CHECK(strstr(err.msg, "hidden_dim: checkpoint 16, job 20") &&
              strstr(err.msg, "context_dim: checkpoint 8, job 12"),
          "mismatch message: %s", err.msg);
    nllm_ckpt_free(ck);
    nllm_trainer_destroy(tr);
}

/* With the queue depth of a GPU, the training loop waits for the device
 * only to read queued steps' figures: an epoch of one-window steps costs
 * one host sync per read (the ring holds NLLM_STATS_RING steps), plus
 * validation and checkpoints, not one per step as it did. */
static void test_sync_count(void)
{
    nllm_job_config_t c;
    small_config(&c, 1);
    c.batch_size = 1;
    nllm_trainer_t *tr = new_trainer(&c);
    /* as on a GPU (the CPU reads every step by default: its ops are done
     * when they return) */
    nllm_trainer_set_queue_depth(tr, NLLM_STATS_RING);
    int64_t spe = nllm_trainer_steps_per_epoch(tr);
    int64_t nval = nllm_trainer_data(tr)->val.n; /* one forward each (batch 1) */
    uint64_t s0 = be->n_syncs, d0 = be->n_downloads;
    run_ctx_t ctx = {"s", 0, {0}};
    nllm_run_result_t res;
    nllm_ckpt_t *ck = run(tr, &ctx, &res);
    uint64_t syncs = be->n_syncs - s0, downloads = be->n_downloads - d0;
    /* reads: a full ring, the epoch's end, one per half second at most */
    int64_t reads = (spe + NLLM_STATS_RING - 1) / NLLM_STATS_RING + 4;
    int64_t ckpts = 2 * 3; /* best and final: a sync and up to 3 downloads each */
    printf("     %lld steps, %lld validation windows: %llu syncs, %llu downloads\n",
           (long long)spe, (long long)nval, (unsigned long long)syncs,
           (unsigned long long)downloads);
    CHECK(spe > 2 * NLLM_STATS_RING, "only %lld steps: the test needs more", (long long)spe);
    CHECK((int64_t)syncs <= reads + nval + ckpts,
          "%llu host syncs for %lld steps (want at most %lld reads + %lld validation + %lld)",
          (unsigned long long)syncs, (long long)spe, (long long)reads, (long long)nval,
          (long long)ckpts);
    CHECK((int64_t)downloads <= reads + nval + ckpts, "%llu downloads for %lld steps",
          (unsigned long long)downloads, (long long)spe);
    nllm_ckpt_free(ck);
    nllm_trainer_destroy(tr);
}

/* one rank of a threads comm takes the data-parallel path: same bits */
static void test_comm_one_rank(void)
{
    nllm_job_config_t c;
    small_config(&c, 10);
    nllm_comm_t *comm;
    nllm_err_t err;
    CHECK(nllm_comm_threads_create(1, &comm, &err) == 0, "%s", err.msg);
    nllm_trainer_t *tr;
    CHECK(nllm_trainer_create(&c, NULL, NULL, be, comm, &tr, &err) == 0, "%s", err.msg);
    run_ctx_t ctx = {"c1", 0, {0}};
    nllm_run_result_t res;
    nllm_ckpt_t *a = run(tr, &ctx, &res);
    if (a && straight10)
        same_state(a, straight10, "a threads comm of 1 rank vs no comm");
    nllm_ckpt_free(a);
    nllm_trainer_destroy(tr);
    nllm_comm_free(comm);
}

typedef struct {
    const nllm_trainer_t *first;
    nllm_comm_t *comm;
    nllm_ckpt_t *end;
    int rc;
    char msg[NLLM_ERR_MSG_MAX];
} peer_ctx_t;

static void *peer_main(void *arg)
{
    peer_ctx_t *p = arg;
    nllm_backend_t *pb = NULL;
    nllm_trainer_t *tr = NULL;
    nllm_err_t err = {0};
    p->rc = nllm_cpu_backend_create(1, &pb, &err);
    if (p->rc == 0)
        p->rc = nllm_trainer_create_peer(p->first, pb, p->comm, &tr, &err);
    nllm_run_result_t res;
    if (p->rc == 0)
        p->rc = nllm_trainer_run(tr, NULL, &res, &err);
    if (p->rc == 0)
        p->rc = nllm_ckpt_snapshot(tr, "peer", NLLM_CKPT_FINAL, &p->end, &err);
    if (p->rc < 0)
        nllm_comm_abort(p->comm, err.msg);
    snprintf(p->msg, sizeof p->msg, "%s", err.msg);
    nllm_trainer_destroy(tr);
    if (pb)
        pb->destroy(pb);
    nllm_comm_free(p->comm);
    return NULL;
}

static void test_comm_two_ranks(void)
{
    nllm_job_config_t c;
    small_config(&c, 4);
    nllm_comm_t *comm[2];
    nllm_err_t err;
    CHECK(nllm_comm_threads_create(2, comm, &err) == 0, "%s", err.msg);
    nllm_backend_t *b0;
    CHECK(nllm_cpu_backend_create(1, &b0, &err) == 0, "%s", err.msg);
    nllm_trainer_t *tr;
    c.batch_size = 7;
    CHECK(nllm_trainer_create(&c, NULL, NULL, b0, comm[0], &tr, &err) == NLLM_EINVAL &&
              strstr(err.msg, "batch_size 7") && strstr(err.msg, "world size 2"),
          "batch 7 over 2 ranks refused: %s", err.msg);
    c.batch_size = 8;
    CHECK(nllm_trainer_create(&c, NULL, NULL, b0, comm[0], &tr, &err) == 0, "%s", err.msg);
    peer_ctx_t p = {tr, comm[1], NULL, 0, ""};
    pthread_t th;
    pthread_create(&th, NULL, peer_main, &p);
    run_ctx_t ctx = {"c2", 0, {0}};
    nllm_run_result_t res;
    nllm_ckpt_t *a = run(tr, &ctx, &res);
    pthread_join(th, NULL);
    CHECK(p.rc == 0, "rank 1: %s", p.msg);
    CHECK(ctx.saved[NLLM_CKPT_FINAL] == 1, "rank 0 was asked for the final checkpoint");
    if (a && p.end) {
        CHECK(memcmp(a->weights, p.end->weights, sizeof(float) * (size_t)a->nfloats) == 0 &&
                  memcmp(a->exp_avg_sq, p.end->exp_avg_sq,
                         sizeof(float) * (size_t)a->nfloats) == 0,
              "both ranks end with the same weights and Adam state");
        CHECK(p.end->progress.global_step == a->progress.global_step &&
                  p.end->progress.hist.n == 4,
              "rank 1's progress follows rank 0's");
    }
    if (a && straight10) {
        double worst = 0;
        for (int e = 0; e < 4; e++) {
            double x = a->progress.hist.val_loss[e], y = straight10->progress.hist.val_loss[e];
            worst = fmax(worst, fabs(x - y) / fabs(y));
        }
        CHECK(worst < 1e-5, "2 ranks' validation losses within 1e-5 of one rank's (%.1e)",
              worst);
        printf("     2 ranks vs 1: validation losses within %.1e\n", worst);
    }
    nllm_ckpt_free(a);
    nllm_ckpt_free(p.end);
    nllm_trainer_destroy(tr);
    b0->destroy(b0);
    nllm_comm_free(comm[0]);
}

int main(void)
{
    nllm_err_t err;
    snprintf(dir, sizeof dir, "/tmp/nllm_test_trainer.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/train.txt", dir);
    nllm_test_write_corpus(path, 120);
    if (nllm_cpu_backend_create(2, &be, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    setenv("NLLM_TRAINER_FAULT", "diverge@step:7:1", 1);
    RUN(test_diverge_hook);
    unsetenv("NLLM_TRAINER_FAULT");
    RUN(test_straight);
    RUN(test_roundtrip);
    RUN(test_resume_epoch);
    RUN(test_resume_mid_epoch);
    RUN(test_damaged);
    RUN(test_mismatch);
    RUN(test_sync_count);
    RUN(test_comm_one_rank);
    RUN(test_comm_two_ranks);
    nllm_ckpt_free(straight10);
    be->destroy(be);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return TEST_REPORT();
}
