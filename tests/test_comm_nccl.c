/* test_comm_nccl.c -- the NCCL comm (kernels/comm_nccl.c) on real GPUs; run
 * by tests/gpu/nccl.sh on a GPU machine, skipped (77) where there is no
 * GPU, no NCCL in the build or no libnccl.so.2.
 *
 * A world of 1: the trainer on cuda:0 with an NCCL comm of one rank (the
 * data-parallel path: the shard, the gradient hook as an ncclAllReduce
 * inside the step's CUDA graph, the bounded wait, the figures through the
 * host comm) ends with the weights, Adam state and history of the trainer
 * without a comm, bit for bit. With 2 or more GPUs: a sum of device
 * buffers over 2 GPU ranks gives the same bits on both and the host sum
 * within float rounding; the trainer on 2 GPUs ends with the same weights
 * on both ranks and the validation losses of 1 GPU within 1e-5.
 * Suite: gpu.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"
#include "corpus.h"
#include "comm.h"
#include "cuda/cuda_backend.h"
#include "testutil.h"
#include "trainer.h"

static char dir[256];

static void config(nllm_job_config_t *c)
{
    nllm_job_config_defaults(c);
    snprintf(c->data, sizeof c->data, "%s/train.txt", dir);
    c->model = (nllm_model_config_t){24, 16, 64, 16, 2, 16, 0.1f};
    c->num_epochs = 3;
    c->batch_size = 16;
    c->learning_rate = 3e-3;
    c->seed = 5;
    c->patience = 0;
}

/* Trains to the end on cuda:dev with comm (NULL: none); the final snapshot. */
static nllm_ckpt_t *train(int dev, nllm_comm_t *comm, const nllm_trainer_t *first,
                          nllm_trainer_t **keep, nllm_err_t *err)
{
    nllm_job_config_t c;
    config(&c);
    nllm_backend_t *be;
    nllm_trainer_t *tr = NULL;
    nllm_ckpt_t *ck = NULL;
    if (nllm_cuda_backend_create(dev, &be, err) < 0)
        return NULL;
    int rc = first ? nllm_trainer_create_peer(first, be, comm, &tr, err)
                   : nllm_trainer_create(&c, NULL, NULL, be, comm, &tr, err);
    nllm_run_result_t res;
    if (rc == 0)
        rc = nllm_trainer_run(tr, NULL, &res, err);
    if (rc < 0)
        nllm_comm_abort(comm, err->msg);
    if (rc == 0)
        rc = nllm_ckpt_snapshot(tr, "nccl", NLLM_CKPT_FINAL, &ck, err);
    if (keep && rc == 0) {
        *keep = tr; /* a peer still reads its data: the caller destroys it */
        return ck;
    }
    nllm_trainer_destroy(tr);
    be->destroy(be);
    return ck;
}

static int same_bits(const nllm_ckpt_t *a, const nllm_ckpt_t *b)
{
    size_t n = sizeof(float) * (size_t)a->nfloats;
    size_t h = sizeof(double) * (size_t)a->progress.hist.n;
    return a->nfloats == b->nfloats && !memcmp(a->weights, b->weights, n) &&
           !memcmp(a->exp_avg, b->exp_avg, n) && !memcmp(a->exp_avg_sq, b->exp_avg_sq, n) &&
           a->progress.hist.n == b->progress.hist.n &&
           !memcmp(a->progress.hist.val_loss, b->progress.hist.val_loss, h) &&
           !memcmp(a->progress.hist.train_loss, b->progress.hist.train_loss, h);
}

static nllm_ckpt_t *plain;

static void test_world_of_one(void)
{
    nllm_err_t err;
    plain = train(0, NULL, NULL, NULL, &err);
    CHECK(plain != NULL, "the plain run: %s", err.msg);
    nllm_comm_t *host, *nc;
    CHECK(nllm_comm_threads_create(1, &host, &err) == 0, "%s", err.msg);
    int dev = 0;
    CHECK(nllm_comm_nccl_create_all(1, &dev, &host, &nc, &err) == 0, "NCCL world of 1: %s",
          err.msg);
    if (!nc)
        return;
    CHECK(!strcmp(nllm_comm_kind(nc), "nccl") && nllm_comm_size(nc) == 1, "an NCCL comm of 1");
    nllm_ckpt_t *one = train(0, nc, NULL, NULL, &err);
    CHECK(one != NULL, "the run with an NCCL comm of 1: %s", err.msg);
    if (one && plain)
        CHECK(same_bits(one, plain), "NCCL world of 1: weights, Adam state and history are the "
              "plain path's bit for bit");
    nllm_ckpt_free(one);
    nllm_comm_free(nc);
}

typedef struct {
    nllm_comm_t *comm;
    const nllm_trainer_t *first;
    nllm_ckpt_t *end;
    nllm_err_t err;
} rank_t;

static void *rank1_main(void *arg)
{
    rank_t *r = arg;
    r->end = train(1, r->comm, r->first, NULL, &r->err);
    nllm_comm_free(r->comm);
    return NULL;
}

/* a device sum over 2 GPUs, each rank on its own thread (as in nllmd): the
 * same bits on both */
enum { SUM_N = 1 << 20 };

typedef struct {
    nllm_comm_t *comm;
    int rank;
    float *host, *got;
    int rc;
    nllm_err_t err;
} sum_t;

static void *sum_main(void *arg)
{
    sum_t *s = arg;
    nllm_backend_t *be = NULL;
    float *d = NULL;
    size_t bytes = sizeof(float) * SUM_N;
    s->rc = nllm_cuda_backend_create(s->rank, &be, &s->err);
    if (s->rc == 0)
        s->rc = nllm_comm_bind(s->comm, be, &s->err);
    if (s->rc == 0 && !(d = be->alloc(be, bytes)))
        s->rc = nllm_err_set(&s->err, NLLM_ENOMEM, "cuda:%d: out of memory", s->rank);
    if (s->rc == 0) {
        be->upload(be, d, s->host, bytes);
        s->rc = nllm_comm_allreduce_sum_f(s->comm, d, SUM_N, &s->err);
    }
    if (s->rc == 0)
        s->rc = nllm_comm_wait(s->comm, &s->err);
    if (s->rc == 0) {
        be->download(be, s->got, d, bytes);
        s->rc = be->sync(be, &s->err);
    }
    if (s->rc < 0)
        nllm_comm_abort(s->comm, s->err.msg);
    if (d)
        be->free(be, d);
    if (be)
        be->destroy(be);
    nllm_comm_free(s->comm);
    return NULL;
}

/* NCCL comms over GPUs 0 and 1 of this process, over a threads comm:
 * 0, or -1 after a failed check. */
static int nccl_pair(nllm_comm_t *nc[2])
{
    nllm_err_t err;
    nllm_comm_t *host[2];
    int devs[2] = {0, 1};
    if (nllm_comm_threads_create(2, host, &err) < 0) {
        CHECK(0, "threads comm of 2: %s", err.msg);
        return -1;
    }
    if (nllm_comm_nccl_create_all(2, devs, host, nc, &err) < 0) {
        CHECK(0, "NCCL over 2 GPUs: %s", err.msg);
        return -1;
    }
    return 0;
}

static void test_device_sum(void)
{
    nllm_comm_t *nc[2];
    if (nccl_pair(nc) < 0)
        return;
    sum_t s[2];
    pthread_t th[2];
    for (int r = 0; r < 2; r++) {
        s[r] = (sum_t){nc[r], r, malloc(sizeof(float) * SUM_N), malloc(sizeof(float) * SUM_N),
                       0, {0}};
        for (int i = 0; i < SUM_N; i++)
            s[r].host[i] = (float)sin(0.001 * i + r) * (float)(1 + r * 1e-3);
        pthread_create(&th[r], NULL, sum_main, &s[r]);
    }
    for (int r = 0; r < 2; r++) {
        pthread_join(th[r], NULL);
        CHECK(s[r].rc == 0, "rank %d: %s", r, s[r].err.msg);
    }
    if (s[0].rc == 0 && s[1].rc == 0) {
        CHECK(memcmp(s[0].got, s[1].got, sizeof(float) * SUM_N) == 0,
              "both GPUs hold the same bits");
        double worst = 0;
        for (int i = 0; i < SUM_N; i++)
            worst = fmax(worst, fabs((double)s[0].got[i] - ((double)s[0].host[i] + s[1].host[i])));
        CHECK(worst < 1e-6, "the device sum is the host sum within rounding (%.1e)", worst);
    }
    for (int r = 0; r < 2; r++) {
        free(s[r].host);
        free(s[r].got);
    }
}

/* the trainer on 2 GPUs against 1 */
static void test_two_gpus(void)
{
    nllm_err_t err;
    nllm_comm_t *nc[2];
    if (nccl_pair(nc) < 0)
        return;
    /* rank 0 builds its trainer (the data) before rank 1 starts beside it */
    nllm_job_config_t c;
    config(&c);
    nllm_backend_t *be0;
    nllm_trainer_t *tr0 = NULL;
    if (nllm_cuda_backend_create(0, &be0, &err) < 0 ||
        nllm_trainer_create(&c, NULL, NULL, be0, nc[0], &tr0, &err) < 0) {
        CHECK(0, "rank 0: %s", err.msg);
        nllm_comm_free(nc[0]);
        nllm_comm_free(nc[1]);
        return;
    }
    rank_t r1 = {nc[1], tr0, NULL, {0}};
    pthread_t th;
    pthread_create(&th, NULL, rank1_main, &r1);
    nllm_run_result_t res;
    nllm_ckpt_t *a = NULL;
    int rc = nllm_trainer_run(tr0, NULL, &res, &err);
    if (rc < 0)
        nllm_comm_abort(nc[0], err.msg);
    else
        rc = nllm_ckpt_snapshot(tr0, "nccl", NLLM_CKPT_FINAL, &a, &err);
    pthread_join(th, NULL);
    CHECK(rc == 0, "rank 0: %s", err.msg);
    CHECK(r1.end != NULL, "rank 1: %s", r1.err.msg);
    if (a && r1.end)
        CHECK(!memcmp(a->weights, r1.end->weights, sizeof(float) * (size_t)a->nfloats),
              "both GPUs end with the same weights");
    if (a && plain) {
        double worst = 0;
        for (int64_t e = 0; e < a->progress.hist.n; e++) {
            double x = a->progress.hist.val_loss[e], y = plain->progress.hist.val_loss[e];
            worst = fmax(worst, fabs(x - y) / fabs(y));
        }
        CHECK(a->progress.hist.n == plain->progress.hist.n && worst < 1e-5,
              "2 GPUs: the validation losses of 1 GPU within 1e-5 (%.1e)", worst);
        printf("     2 GPUs vs 1: validation losses within %.1e\n", worst);
    }
    nllm_ckpt_free(a);
    nllm_ckpt_free(r1.end);
    nllm_trainer_destroy(tr0);
    be0->destroy(be0);
    nllm_comm_free(nc[0]);
}

int main(void)
{
    if (!nllm_comm_nccl_built()) {
        printf("SKIP: this nllm was built without NCCL (-Dnccl)\n");
        return 77;
    }
    if (!nllm_cuda_available() || nllm_cuda_device_count() < 1) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    nllm_err_t err;
    if (nllm_comm_nccl_load(&err) < 0) {
        printf("SKIP: %s\n", err.msg);
        return 77;
    }
    snprintf(dir, sizeof dir, "/tmp/nllm_test_nccl.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/train.txt", dir);
    nllm_test_write_corpus(path, 600);
    int gpus = nllm_cuda_device_count();
    printf("%d GPU(s)\n", gpus);
    RUN(test_world_of_one);
    if (gpus >= 2) {
        RUN(test_device_sum);
        RUN(test_two_gpus);
    } else {
        printf("one GPU: the tests of 2 GPUs are skipped\n");
    }
    nllm_ckpt_free(plain);
    unlink(path);
    rmdir(dir);
    return TEST_REPORT();
}
