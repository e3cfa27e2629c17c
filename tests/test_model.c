/* test_model.c -- the whole model: finite-difference gradient check of every
 * parameter tensor (dropout on and off, pad targets, contexts that hit the
 * clamp), overfitting a tiny corpus, bit-identical determinism, and that
 * the result does not depend on the element-wise thread split; the
 * sync-free step (no host sync or download per queued step, one of each per
 * read of their figures) and the halt after a non-finite gradient.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model.h"
#include "testutil.h"

static nllm_backend_t *be;

static double loss_of(nllm_model_t *m, const int32_t *win, int B, int train, uint32_t step)
{
    nllm_batch_stats_t st;
    nllm_err_t err;
    if (nllm_model_forward(m, win, B, train, 7, step, 0, &st, &err) < 0) {
        fprintf(stderr, "forward: %s\n", err.msg);
        exit(1);
    }
    return st.loss_sum / (double)st.tokens;
}

/* Random weights of a larger scale than init, gamma/beta chosen so that
 * some context values land outside [-10, 10]. */
static void random_weights(nllm_model_t *m, float *w, uint64_t seed, float gamma)
{
    int64_t nf = nllm_model_num_floats(m);
    memset(w, 0, sizeof(float) * (size_t)nf);
    for (int i = 0; i < nllm_model_num_params(m); i++) {
        const nllm_param_info_t *p = nllm_model_param(m, i);
        for (int64_t k = 0; k < p->numel; k++) {
            double z = nllm_rng_normal(seed, 200 + (uint32_t)i, (uint64_t)k);
            float v = (float)(0.4 * z);
            if (strcmp(p->name, "context_norm.weight") == 0)
                v = gamma + (float)z;
            if (strcmp(p->name, "context_norm.bias") == 0)
                v = (float)(3.0 * z);
            w[p->offset + k] = v;
        }
    }
}

static void gradcheck(float p, float gamma)
{
    nllm_model_config_t cfg = {11, 3, 6, 5, 3, 7, p};
    nllm_model_t *m;
    nllm_err_t err;
    enum { B = 3 };
    if (nllm_model_create(&cfg, be, B, &m, &err) < 0) {
        CHECK(0, "create: %s", err.msg);
        return;
    }
    int64_t nf = nllm_model_num_floats(m);
    float *w = malloc(sizeof(float) * nf), *g = malloc(sizeof(float) * nf);
    random_weights(m, w, 3, gamma);
    nllm_model_set_state(m, w, NULL, NULL, &err);
    /* windows with pad targets at the end of two of them */
    int32_t win[B * 7] = {2, 5, 6, 7, 8, 3, 0, /**/ 2, 9, 10, 4, 3, 0, 0, /**/ 2, 4, 4, 5, 6, 7, 8};
    int train = p > 0;
    nllm_batch_stats_t st;
    CHECK(nllm_model_forward(m, win, B, train, 7, 1, 1, &st, &err) == 0, "%s", err.msg);
    CHECK(st.tokens == 18 - 3, "tokens %lld, want 15 (pad targets excluded)",
          (long long)st.tokens);
    CHECK(nllm_model_backward(m, &err) == 0, "%s", err.msg);
    nllm_model_get_grads(m, g, &err);

    /* does this configuration reach the clamp? */
    float ctx[B * 5];
    nllm_model_forward(m, win, B, train, 7, 1, 0, &st, &err);
    nllm_model_get_context(m, ctx, &err);
    int at_clamp = 0;
    for (int i = 0; i < B * 5; i++)
        at_clamp += fabsf(ctx[i]) == 10.0f;

    /* Central differences in float32: an element whose +h and -h sides
     * disagree crosses a kink (ReLU, dropout-zeroed unit, clamp edge) and is
     * not differentiable there; those are counted, not compared. */
    double worst = 0;
    const char *worst_name = "";
    int64_t kinks = 0, total = 0;
    double l0 = loss_of(m, win, B, train, 1);
    for (int i = 0; i < nllm_model_num_params(m); i++) {
        const nllm_param_info_t *pi = nllm_model_param(m, i);
        double num = 0, den = 0;
        for (int64_t k = 0; k < pi->numel; k++) {
            float *x = &w[pi->offset + k];
            float saved = *x;
            double h = 2e-3 * fmax(1.0, fabs(saved));
            *x = saved + (float)h;
            double hp = (double)*x - saved;
            nllm_model_set_state(m, w, NULL, NULL, &err);
            double lp = loss_of(m, win, B, train, 1);
            *x = saved - (float)h;
            double hm = saved - (double)*x;
            nllm_model_set_state(m, w, NULL, NULL, &err);
            double lm = loss_of(m, win, B, train, 1);
            *x = saved;
            double fd = (lp - lm) / (hp + hm);
            double fp = (lp - l0) / hp, fm = (l0 - lm) / hm;
            double an = g[pi->offset + k];
            total++;
            if (fabs(fp - fm) > 0.05 * fmax(fabs(fp), fabs(fm)) + 1e-3) {
                kinks++;
                continue;
            }
            num += (fd - an) * (fd - an);
            den += fd * fd;
        }
        nllm_model_set_state(m, w, NULL, NULL, &err);
        double rel = sqrt(num) / fmax(sqrt(den), 1e-4);
        if (rel > worst) {
            worst = rel;
            worst_name = pi->name;
        }
        CHECK(rel < 2e-2, "gradcheck p=%g gamma=%g: %s relative error %.3g", (double)p,
              (double)gamma, pi->name, rel);
    }
    CHECK(kinks * 10 < total, "gradcheck: %lld of %lld elements at kinks", (long long)kinks,
          (long long)total);
    printf("     gradcheck p=%.1f gamma=%.0f: %d tensors, worst %s %.2e, %lld/%lld at kinks, "
           "%d clamped contexts\n",
           (double)p, (double)gamma, nllm_model_num_params(m), worst_name, worst,
           (long long)kinks, (long long)total, at_clamp);
    if (gamma > 5)
        CHECK(at_clamp > 0, "gradcheck with gamma %g: no context value hit the clamp",
              (double)gamma);
    free(w);
    free(g);
    nllm_model_destroy(m);
}

static void test_gradcheck_no_dropout(void) { gradcheck(0.0f, 1.0f); }
static void test_gradcheck_dropout(void) { gradcheck(0.3f, 1.0f); }
static void test_gradcheck_clamp(void) { gradcheck(0.0f, 14.0f); }
static void test_gradcheck_clamp_dropout(void) { gradcheck(0.2f, 14.0f); }

static void test_overfit(void)
{
    nllm_model_config_t cfg = {20, 16, 32, 16, 2, 9, 0.0f};
    nllm_model_t *m;
    nllm_err_t err;
    enum { B = 4 };
    CHECK(nllm_model_create(&cfg, be, B, &m, &err) == 0, "%s", err.msg);
    nllm_model_init_weights(m, 42);
    /* distinct first tokens: c(-1) = 0, so the first prediction of a
     * window depends on its first token alone */
    int32_t win[B * 9] = {2, 4, 5, 6, 7, 8, 9, 10, 3,  11, 12, 13, 14, 15, 3, 0, 0, 0,
                          16, 17, 18, 19, 4, 5, 6, 3, 0, 5, 7, 7, 8, 8, 9, 3, 0, 0};
    nllm_optim_t opt = {1e-2, 0.9, 0.999, 1e-8, 0.0, 1.0};
    nllm_step_stats_t st;
    double first = 0, last = 0;
    for (int s = 0; s < 400; s++) {
        if (nllm_model_train_step(m, win, B, 42, (uint32_t)s, s + 1, &opt, &st, &err) < 0) {
            CHECK(0, "train step: %s", err.msg);
            break;
        }
        double l = st.batch.loss_sum / st.batch.tokens;
        if (s == 0)
            first = l;
        last = l;
    }
    nllm_batch_stats_t ev;
    nllm_model_forward(m, win, B, 0, 0, 0, 0, &ev, &err);
    double acc = (double)ev.correct / ev.tokens;
    printf("     overfit: loss %.3f -> %.4f after 400 steps, eval accuracy %.2f\n", first, last,
           acc);
    CHECK(fabs(first - log(20.0)) < 0.1, "initial loss %.3f should be near ln(20) = 3.0",
          first);
    CHECK(last < 0.05, "tiny corpus not memorised: loss %.4f >= 0.05", last);
    CHECK(acc > 0.9, "eval accuracy %.2f <= 0.9 after memorising", acc);
    nllm_model_destroy(m);
}

/* Trains `steps` steps from seed 5 and returns the weights and losses. */
static void run_training(nllm_backend_t *b, int steps, float *w_out, double *losses)
{
    nllm_model_config_t cfg = {50, 8, 24, 12, 3, 12, 0.1f};
    nllm_model_t *m;
    nllm_err_t err;
    enum { B = 6 };
    if (nllm_model_create(&cfg, b, B, &m, &err) < 0) {
        CHECK(0, "%s", err.msg);
        return;
    }
    nllm_model_init_weights(m, 5);
    int32_t win[B * 12];
    nllm_optim_t opt = {1e-3, 0.9, 0.999, 1e-8, 0.0, 0.5};
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < B * 12; i++)
            win[i] = (int32_t)nllm_rng_below(9, 1, (uint32_t)s, (uint64_t)i, 50);
        nllm_step_stats_t st;
        nllm_model_train_step(m, win, B, 5, (uint32_t)s, s + 1, &opt, &st, &err);
        losses[s] = st.batch.loss_sum;
    }
    nllm_model_get_state(m, w_out, NULL, NULL, &err);
    nllm_model_destroy(m);
}

static void test_determinism(void)
{
    enum { STEPS = 6 };
    nllm_model_config_t cfg = {50, 8, 24, 12, 3, 12, 0.1f};
    nllm_model_t *m;
    nllm_err_t err;
    nllm_model_create(&cfg, be, 1, &m, &err);
    int64_t nf = nllm_model_num_floats(m);
    nllm_model_destroy(m);
    float *w1 = malloc(sizeof(float) * nf), *w2 = malloc(sizeof(float) * nf);
    double l1[STEPS], l2[STEPS];
    run_training(be, STEPS, w1, l1);
    run_training(be, STEPS, w2, l2);
    CHECK(memcmp(w1, w2, sizeof(float) * nf) == 0, "two runs: weights differ");
    CHECK(memcmp(l1, l2, sizeof l1) == 0, "two runs: losses differ");
    CHECK(l1[0] != l1[STEPS - 1], "losses did not change");
    free(w1);
    free(w2);
}

/* The sync-free step: queued steps cost no host sync and no download;
 * reading their figures costs one of each; the result is bit-identical
 * to waiting for every step. */
static void test_sync_free(void)
{
    nllm_model_config_t cfg = {50, 8, 24, 12, 3, 12, 0.1f};
    enum { B = 6, STEPS = 100 };
    nllm_model_t *mq, *mw;
    nllm_err_t err;
    CHECK(nllm_model_create(&cfg, be, B, &mq, &err) == 0, "%s", err.msg);
    CHECK(nllm_model_create(&cfg, be, B, &mw, &err) == 0, "%s", err.msg);
    nllm_model_init_weights(mq, 5);
    nllm_model_init_weights(mw, 5);
    nllm_optim_t opt = {1e-3, 0.9, 0.999, 1e-8, 0.0, 0.5};
    int32_t win[B * 12];
    nllm_step_stats_t ring[NLLM_STATS_RING], st;
    uint64_t queued_syncs = 0, queued_downloads = 0, reads = 0, read_syncs = 0,
             read_downloads = 0;
    int pending = 0;
    for (int s = 0; s < STEPS; s++) {
        for (int i = 0; i < B * 12; i++)
            win[i] = (int32_t)nllm_rng_below(9, 1, (uint32_t)s, (uint64_t)i, 50);
        CHECK(nllm_model_train_step(mw, win, B, 5, (uint32_t)s, s + 1, &opt, &st, &err) == 0,
              "waited-for step %d: %s", s, err.msg);
        uint64_t s0 = be->n_syncs, d0 = be->n_downloads;
        CHECK(nllm_model_train_step_async(mq, win, B, 5, (uint32_t)s, s + 1, &opt, pending++,
                                          &err) == 0,
              "queued step %d: %s", s, err.msg);
        queued_syncs += be->n_syncs - s0;
        queued_downloads += be->n_downloads - d0;
        if (pending == NLLM_STATS_RING || s == STEPS - 1) {
            s0 = be->n_syncs;
            d0 = be->n_downloads;
            CHECK(nllm_model_read_stats(mq, 0, pending, ring, &err) == 0, "read: %s", err.msg);
            read_syncs += be->n_syncs - s0;
            read_downloads += be->n_downloads - d0;
            reads++;
            pending = 0;
        }
    }
    /* the last read holds the last step's figures in its last slot */
    int last = (STEPS - 1) % NLLM_STATS_RING;
    CHECK(ring[last].batch.loss_sum == st.batch.loss_sum &&
              ring[last].batch.tokens == st.batch.tokens &&
              ring[last].batch.correct == st.batch.correct &&
              ring[last].grad_norm == st.grad_norm && ring[last].clip_scale == st.clip_scale &&
              ring[last].halted == st.halted,
          "queued step figures differ from waited-for ones (loss %.17g vs %.17g)",
          ring[last].batch.loss_sum, st.batch.loss_sum);
    printf("     %d queued steps: %llu syncs, %llu downloads; %llu reads: %llu syncs, %llu "
           "downloads\n",
           STEPS, (unsigned long long)queued_syncs, (unsigned long long)queued_downloads,
           (unsigned long long)reads, (unsigned long long)read_syncs,
           (unsigned long long)read_downloads);
    CHECK(queued_syncs == 0 && queued_downloads == 0,
          "a queued step made %llu host syncs and %llu downloads (want 0)",
          (unsigned long long)queued_syncs, (unsigned long long)queued_downloads);
    CHECK(read_syncs == reads && read_downloads == reads,
          "a read made more than one sync and one download (%llu, %llu for %llu reads)",
          (unsigned long long)read_syncs, (unsigned long long)read_downloads,
          (unsigned long long)reads);
    int64_t nf = nllm_model_num_floats(mq);
    float *a = malloc(sizeof(float) * 3 * nf), *b = malloc(sizeof(float) * 3 * nf);
    nllm_model_get_state(mq, a, a + nf, a + 2 * nf, &err);
    nllm_model_get_state(mw, b, b + nf, b + 2 * nf, &err);
    CHECK(memcmp(a, b, sizeof(float) * 3 * nf) == 0, "queued training ends in other weights");
    free(a);
    free(b);
    nllm_model_destroy(mq);
    nllm_model_destroy(mw);
}

/* A step whose gradient is not finite changes nothing, and neither does
 * any step queued after it, until new weights are set. */
static void test_divergence(void)
{
    nllm_model_config_t cfg = {50, 8, 24, 12, 3, 12, 0.0f};
    enum { B = 4 };
    nllm_model_t *m;
    nllm_err_t err;
    CHECK(nllm_model_create(&cfg, be, B, &m, &err) == 0, "%s", err.msg);
    nllm_model_init_weights(m, 5);
    int64_t nf = nllm_model_num_floats(m);
    float *w0 = malloc(sizeof(float) * 3 * nf), *w1 = malloc(sizeof(float) * 3 * nf);
    nllm_model_get_state(m, w0, w0 + nf, w0 + 2 * nf, &err);
    const nllm_param_info_t *bo = nllm_model_param_by_name(m, "token_output.bias");
    w0[bo->offset + 7] = INFINITY; /* logits inf - inf: NaN loss and gradient */
    CHECK(nllm_model_set_state(m, w0, NULL, NULL, &err) == 0, "%s", err.msg);
    nllm_optim_t opt = {1e-3, 0.9, 0.999, 1e-8, 0.0, 1.0};
    int32_t win[B * 12];
    for (int i = 0; i < B * 12; i++)
        win[i] = 1 + (int32_t)nllm_rng_below(3, 1, 0, (uint64_t)i, 49);
    for (int s = 0; s < 3; s++)
        CHECK(nllm_model_train_step_async(m, win, B, 5, (uint32_t)s, s + 1, &opt, s, &err) == 0,
              "%s", err.msg);
    nllm_step_stats_t st[3];
    CHECK(nllm_model_read_stats(m, 0, 3, st, &err) == 0, "%s", err.msg);
    CHECK(!isfinite(st[0].grad_norm) && st[0].halted && st[1].halted && st[2].halted,
          "a NaN gradient: norms %g %g %g, halted %d %d %d", st[0].grad_norm, st[1].grad_norm,
          st[2].grad_norm, st[0].halted, st[1].halted, st[2].halted);
    nllm_model_get_state(m, w1, w1 + nf, w1 + 2 * nf, &err);
    CHECK(memcmp(w0, w1, sizeof(float) * 3 * nf) == 0,
          "steps after a non-finite gradient changed the weights or moments");
    int rc = nllm_model_train_step(m, win, B, 5, 3, 4, &opt, st, &err);
    CHECK(rc < 0 && strstr(err.msg, "diverged"), "waited-for step on a halted model: rc %d %s",
          rc, rc < 0 ? err.msg : "");
    w0[bo->offset + 7] = 0.0f; /* new weights: training resumes */
    CHECK(nllm_model_set_state(m, w0, NULL, NULL, &err) == 0, "%s", err.msg);
    CHECK(nllm_model_train_step(m, win, B, 5, 4, 5, &opt, st, &err) == 0 && !st[0].halted,
          "after set_state: %s", err.msg);
    nllm_model_get_state(m, w1, NULL, NULL, &err);
    CHECK(memcmp(w0, w1, sizeof(float) * nf) != 0, "a finite step after set_state did nothing");
    free(w0);
    free(w1);
    nllm_model_destroy(m);
}

int main(void)
{
    nllm_err_t err;
    if (nllm_cpu_backend_create(2, &be, &err) < 0) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return 1;
    }
    RUN(test_gradcheck_no_dropout);
    RUN(test_gradcheck_dropout);
    RUN(test_gradcheck_clamp);
    RUN(test_gradcheck_clamp_dropout);
    RUN(test_overfit);
    RUN(test_determinism);
    RUN(test_sync_free);
    RUN(test_divergence);
    be->destroy(be);
    return TEST_REPORT();
}
