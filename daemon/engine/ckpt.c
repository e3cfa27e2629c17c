/* ckpt.c -- checkpoint snapshot, write and load; see ckpt.h.
 *
 * Metadata values are strings (safetensors requires it); structured ones
 * are JSON. Doubles are written with 17 significant digits, so every
 * history entry reads back bit-identical; infinities (no best yet) are
 * written as null.
 */
#include "ckpt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "safetensors.h"

void nllm_ckpt_filename(const char *job, nllm_ckpt_kind_t kind, int64_t epoch, char *buf,
                        size_t n)
{
    switch (kind) {
    case NLLM_CKPT_BEST:
        snprintf(buf, n, "best_%s.safetensors", job);
        break;
    case NLLM_CKPT_EPOCH:
        snprintf(buf, n, "%s_epoch_%lld.safetensors", job, (long long)epoch);
        break;
    case NLLM_CKPT_FINAL:
        snprintf(buf, n, "%s_final.safetensors", job);
        break;
    case NLLM_CKPT_PAUSED:
        snprintf(buf, n, "%s_paused.safetensors", job);
        break;
    }
}

uint64_t nllm_ckpt_weights_hash(const nllm_param_info_t *params, int nparams,
                                const float *weights)
{
    XXH64_state_t *st = XXH64_createState();
    if (!st)
        abort();
    XXH64_reset(st, 0);
    for (int i = 0; i < nparams; i++)
        XXH64_update(st, weights + params[i].offset, sizeof(float) * (size_t)params[i].numel);
    uint64_t h = XXH64_digest(st);
    XXH64_freeState(st);
    return h;
}

void nllm_ckpt_free(nllm_ckpt_t *c)
{
    if (!c)
        return;
    nllm_progress_free(&c->progress);
    json_decref(c->vocab);
    free(c->params);
    free(c->weights);
    free(c->exp_avg);
    free(c->exp_avg_sq);
    free(c);
}

int nllm_ckpt_snapshot(nllm_trainer_t *tr, const char *job, nllm_ckpt_kind_t kind,
                       nllm_ckpt_t **out, nllm_err_t *err)
{
    *out = NULL;
    nllm_model_t *m = nllm_trainer_model(tr);
    nllm_ckpt_t *c = calloc(1, sizeof *c);
    if (!c)
        return nllm_err_set(err, NLLM_ENOMEM, "checkpoint: out of memory");
    snprintf(c->job, sizeof c->job, "%s", job);
    c->kind = kind;
    c->config = *nllm_trainer_config(tr);
    nllm_progress_init(&c->progress);
    int rc = 0;
    if (nllm_progress_copy(&c->progress, nllm_trainer_progress(tr)) < 0)
        rc = NLLM_ENOMEM;
    int64_t nf = nllm_model_num_floats(m);
    c->nfloats = nf;
    c->nparams = nllm_model_num_params(m);
    c->params = malloc(sizeof(nllm_param_info_t) * (size_t)c->nparams);
    c->weights = malloc(sizeof(float) * (size_t)nf);
    c->exp_avg = malloc(sizeof(float) * (size_t)nf);
    c->exp_avg_sq = malloc(sizeof(float) * (size_t)nf);
    if (rc < 0 || !c->params || !c->weights || !c->exp_avg || !c->exp_avg_sq) {
        nllm_ckpt_free(c);
        return nllm_err_set(err, NLLM_ENOMEM, "checkpoint of job %s: out of host memory for "
                            "%.1f MB of state", job, 3.0 * 4 * (double)nf / 1e6);
    }
    for (int i = 0; i < c->nparams; i++)
        c->params[i] = *nllm_model_param(m, i);
    rc = nllm_model_get_state(m, c->weights, c->exp_avg, c->exp_avg_sq, err);
    if (rc == 0)
        rc = nllm_vocab_to_json(&nllm_trainer_data(tr)->vocab, &c->vocab, err);
    if (rc < 0) {
        nllm_ckpt_free(c);
        return rc;
    }
    c->weights_hash = nllm_ckpt_weights_hash(c->params, c->nparams, c->weights);
    c->created = (double)time(NULL);
    *out = c;
    return 0;
}

/* ---- writing ----------------------------------------------------------- */

static json_t *num_or_null(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static json_t *doubles_json(const double *v, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; a && i < n; i++)
        json_array_append_new(a, num_or_null(v[i]));
    return a;
}

static int meta_json(nllm_st_writer_t *w, const char *key, json_t *j, nllm_err_t *err)
{
    if (!j)
        return nllm_err_set(err, NLLM_ENOMEM, "checkpoint: out of memory");
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
    json_decref(j);
    if (!s)
        return nllm_err_set(err, NLLM_ENOMEM, "checkpoint: out of memory");
    int rc = nllm_st_writer_meta(w, key, s, err);
    free(s);
    return rc;
}

static int meta_int(nllm_st_writer_t *w, const char *key, long long v, nllm_err_t *err)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    return nllm_st_writer_meta(w, key, buf, err);
}

int nllm_ckpt_write(const nllm_ckpt_t *c, const char *path, uint64_t *xxh64, uint64_t *size,
                    nllm_err_t *err)
{
    nllm_st_writer_t *w = nllm_st_writer_new();
    if (!w)
        return nllm_err_set(err, NLLM_ENOMEM, "checkpoint %s: out of memory", path);
    int rc = 0;
    for (int i = 0; rc == 0 && i < c->nparams; i++) {
        const nllm_param_info_t *p = &c->params[i];
        rc = nllm_st_writer_add(w, p->name, NLLM_ST_F32, p->ndim, p->shape, c->weights + p->offset,
                                err);
    }
    char name[128];
    for (int k = 0; k < 2 && c->exp_avg; k++)
        for (int i = 0; rc == 0 && i < c->nparams; i++) {
            const nllm_param_info_t *p = &c->params[i];
            snprintf(name, sizeof name, "optimizer.%s.%s", k ? "exp_avg_sq" : "exp_avg",
                     p->name);
            const float *src = (k ? c->exp_avg_sq : c->exp_avg) + p->offset;
            rc = nllm_st_writer_add(w, name, NLLM_ST_F32, p->ndim, p->shape, src, err);
        }
    const nllm_progress_t *p = &c->progress;
    char hash[24];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)c->weights_hash);
    char fver[8];
    snprintf(fver, sizeof fver, "%d", NLLM_CKPT_FORMAT_VERSION);
    char created[32];
    time_t t = (time_t)c->created;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (rc == 0)
        rc = nllm_st_writer_meta(w, "format", NLLM_CKPT_FORMAT, err);
    if (rc == 0)
        rc = nllm_st_writer_meta(w, "format_version", fver, err);
    if (rc == 0)
        rc = nllm_st_writer_meta(w, "job", c->job, err);
    if (rc == 0)
        rc = nllm_st_writer_meta(w, "kind", nllm_ckpt_kind_name(c->kind), err);
    if (rc == 0)
        rc = nllm_st_writer_meta(w, "created", created, err);
    if (rc == 0)
        rc = nllm_st_writer_meta(w, "weights_hash", hash, err);
    if (rc == 0)
        rc = meta_json(w, "config", nllm_job_config_to_json(&c->config), err);
    if (rc == 0)
        rc = meta_int(w, "current_epoch", p->epoch, err);
    if (rc == 0)
        rc = meta_int(w, "global_step", p->global_step, err);
    if (rc == 0)
        rc = meta_int(w, "step_in_epoch", p->step_in_epoch, err);
    if (rc == 0)
        rc = meta_json(w, "train_losses", doubles_json(p->hist.train_loss, p->hist.n), err);
    if (rc == 0)
        rc = meta_json(w, "val_losses", doubles_json(p->hist.val_loss, p->hist.n), err);
    if (rc == 0)
        rc = meta_json(w, "train_ppls", doubles_json(p->hist.train_ppl, p->hist.n), err);
    if (rc == 0)
        rc = meta_json(w, "val_ppls", doubles_json(p->hist.val_ppl, p->hist.n), err);
    if (rc == 0)
        rc = meta_json(w, "val_accs", doubles_json(p->hist.val_acc, p->hist.n), err);
    if (rc == 0)
        rc = meta_json(w, "best_val_loss", num_or_null(p->best_val_loss), err);
    if (rc == 0)
        rc = meta_int(w, "best_epoch", p->best_epoch, err);
    if (rc == 0)
        rc = meta_json(w, "early_stopping",
                       json_pack("{s:o,s:I,s:b}", "best", num_or_null(p->es_best), "counter",
                                 (json_int_t)p->es_counter, "stopped", p->stopped_early),
                       err);
    if (rc == 0)
        rc = meta_json(w, "epoch_partial",
                       json_pack("{s:f,s:I,s:I,s:f}", "loss_sum", p->ep_loss_sum, "tokens",
                                 (json_int_t)p->ep_tokens, "correct", (json_int_t)p->ep_correct,
                                 "seconds", p->ep_seconds),
                       err);
    if (rc == 0)
        rc = meta_json(w, "data_order",
                       json_pack("{s:s,s:I,s:I,s:I}", "shuffle", "philox4x32-fisher-yates",
                                 "seed", (json_int_t)c->config.seed, "epoch",
                                 (json_int_t)p->epoch, "step_in_epoch",
                                 (json_int_t)p->step_in_epoch),
                       err);
    if (rc == 0 && c->vocab)
        rc = meta_json(w, "tokenizer", json_incref(c->vocab), err);
    if (rc == 0)
        rc = nllm_st_writer_save(w, path, xxh64, size, err);
    nllm_st_writer_free(w);
    return rc;
}

/* ---- reading ----------------------------------------------------------- */

static int meta_parse(const nllm_st_file_t *f, const char *path, const char *key, int required,
                      json_t **out, nllm_err_t *err)
{
    *out = NULL;
    const char *s = nllm_st_meta(f, key);
    if (!s)
        return required ? nllm_err_set(err, NLLM_ECORRUPT,
                                       "checkpoint %s: metadata field \"%s\" is missing", path,
                                       key)
                        : 0;
    json_error_t je;
    *out = json_loads(s, JSON_DECODE_ANY, &je);
    if (!*out)
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "checkpoint %s: metadata field \"%s\" is not valid JSON (%s)", path,
                            key, je.text);
    return 0;
}

static int meta_i64(const nllm_st_file_t *f, const char *path, const char *key, int64_t lo,
                    int64_t *out, nllm_err_t *err)
{
    json_t *j;
    int rc = meta_parse(f, path, key, 1, &j, err);
    if (rc < 0)
        return rc;
    if (!json_is_integer(j) || json_integer_value(j) < lo) {
        json_decref(j);
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "checkpoint %s: metadata field \"%s\" must be an integer >= %lld",
                            path, key, (long long)lo);
    }
    *out = json_integer_value(j);
    json_decref(j);
    return 0;
}

static int json_num(const json_t *j, double *out)
{
    if (json_is_null(j))
        *out = INFINITY;
    else if (json_is_number(j))
        *out = json_number_value(j);
    else
        return -1;
    return 0;
}

static int load_history(const nllm_st_file_t *f, const char *path, nllm_progress_t *p,
                        nllm_err_t *err)
{
    static const char *keys[5] = {"train_losses", "val_losses", "train_ppls", "val_ppls",
                                  "val_accs"};
    json_t *cols[5] = {0};
    int rc = 0;
    size_t n = 0;
    for (int k = 0; k < 5 && rc == 0; k++) {
        rc = meta_parse(f, path, keys[k], 1, &cols[k], err);
        if (rc == 0 && !json_is_array(cols[k]))
            rc = nllm_err_set(err, NLLM_ECORRUPT, "checkpoint %s: \"%s\" must be a list", path,
                              keys[k]);
        if (rc == 0 && k == 0)
            n = json_array_size(cols[0]);
        if (rc == 0 && json_array_size(cols[k]) != n)
            rc = nllm_err_set(err, NLLM_ECORRUPT,
                              "checkpoint %s: \"%s\" has %zu entries but train_losses has %zu",
                              path, keys[k], json_array_size(cols[k]), n);
    }
    if (rc == 0 && (int64_t)n != p->epoch)
        rc = nllm_err_set(err, NLLM_ECORRUPT,
                          "checkpoint %s: %zu history entries but current_epoch is %lld", path, n,
                          (long long)p->epoch);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        double v[5];
        for (int k = 0; k < 5; k++)
            if (json_num(json_array_get(cols[k], i), &v[k]) < 0)
                rc = nllm_err_set(err, NLLM_ECORRUPT,
                                  "checkpoint %s: \"%s\"[%zu] is not a number", path, keys[k],
                                  i);
        if (rc == 0 && nllm_history_push(&p->hist, v[0], v[1], v[2], v[3], v[4]) < 0)
            rc = nllm_err_set(err, NLLM_ENOMEM, "checkpoint %s: out of memory", path);
    }
    for (int k = 0; k < 5; k++)
        json_decref(cols[k]);
    return rc;
}

static int load_progress(const nllm_st_file_t *f, const char *path, nllm_progress_t *p,
                         nllm_err_t *err)
{
    int rc;
    if ((rc = meta_i64(f, path, "current_epoch", 0, &p->epoch, err)) < 0 ||
        (rc = meta_i64(f, path, "global_step", 0, &p->global_step, err)) < 0 ||
        (rc = meta_i64(f, path, "step_in_epoch", 0, &p->step_in_epoch, err)) < 0 ||
        (rc = meta_i64(f, path, "best_epoch", 0, &p->best_epoch, err)) < 0)
        return rc;
    if ((rc = load_history(f, path, p, err)) < 0)
        return rc;
    json_t *j;
    if ((rc = meta_parse(f, path, "best_val_loss", 1, &j, err)) < 0)
        return rc;
    rc = json_num(j, &p->best_val_loss);
    json_decref(j);
    if (rc < 0)
        return nllm_err_set(err, NLLM_ECORRUPT, "checkpoint %s: best_val_loss is not a number",
                            path);
    if ((rc = meta_parse(f, path, "early_stopping", 1, &j, err)) < 0)
        return rc;
    json_t *best = json_object_get(j, "best"), *cnt = json_object_get(j, "counter"),
           *stp = json_object_get(j, "stopped");
    if (!best || json_num(best, &p->es_best) < 0 || !json_is_integer(cnt) ||
        json_integer_value(cnt) < 0 || !json_is_boolean(stp)) {
        json_decref(j);
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "checkpoint %s: early_stopping needs best, counter and stopped",
                            path);
    }
    p->es_counter = json_integer_value(cnt);
    p->stopped_early = json_is_true(stp);
    json_decref(j);
    if ((rc = meta_parse(f, path, "epoch_partial", 1, &j, err)) < 0)
        return rc;
    json_t *ls = json_object_get(j, "loss_sum"), *tk = json_object_get(j, "tokens"),
           *cr = json_object_get(j, "correct"), *sc = json_object_get(j, "seconds");
    if (!json_is_number(ls) || !json_is_integer(tk) || !json_is_integer(cr) ||
        !json_is_number(sc) || json_integer_value(tk) < 0 || json_integer_value(cr) < 0) {
        json_decref(j);
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "checkpoint %s: epoch_partial needs loss_sum, tokens, correct, "
                            "seconds",
                            path);
    }
    p->ep_loss_sum = json_number_value(ls);
    p->ep_tokens = json_integer_value(tk);
    p->ep_correct = json_integer_value(cr);
    p->ep_seconds = json_number_value(sc);
    json_decref(j);
    return 0;
}

static int load_tensors(const nllm_st_file_t *f, const char *path, nllm_ckpt_t *c,
                        int plain, nllm_err_t *err)
{
    int has_opt = nllm_st_find(f, "optimizer.exp_avg.token_embedding.weight") != NULL;
    int expected = c->nparams * (has_opt ? 3 : 1);
    char name[128];
    /* pass 0 checks that every tensor is there with its shape, before the
     * buffers are allocated: a small file whose config claims a huge model
     * is refused as corrupt instead of costing gigabytes; pass 1 copies */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            c->weights = calloc((size_t)c->nfloats, sizeof(float));
            if (!c->weights)
                return nllm_err_set(err, NLLM_ENOMEM, "checkpoint %s: out of memory", path);
            if (has_opt) {
                c->exp_avg = calloc((size_t)c->nfloats, sizeof(float));
                c->exp_avg_sq = calloc((size_t)c->nfloats, sizeof(float));
                if (!c->exp_avg || !c->exp_avg_sq)
                    return nllm_err_set(err, NLLM_ENOMEM, "checkpoint %s: out of memory", path);
            }
        }
        for (int k = 0; k < (has_opt ? 3 : 1); k++)
            for (int i = 0; i < c->nparams; i++) {
                const nllm_param_info_t *p = &c->params[i];
                if (k == 0)
                    snprintf(name, sizeof name, "%s", p->name);
                else
                    snprintf(name, sizeof name, "optimizer.%s.%s",
                             k == 1 ? "exp_avg" : "exp_avg_sq", p->name);
                const float *src;
                int rc = nllm_st_get_f32(f, name, p->ndim, p->shape, &src, err);
                if (rc < 0)
                    return rc;
                if (pass == 0)
                    continue;
                float *dst =
                    (k == 0 ? c->weights : k == 1 ? c->exp_avg : c->exp_avg_sq) + p->offset;
                memcpy(dst, src, sizeof(float) * (size_t)p->numel);
            }
    }
    if (!plain && nllm_st_count(f) != expected) {
        /* name the first tensor that is not ours */
        for (int i = 0; i < nllm_st_count(f); i++) {
            const char *n = nllm_st_at(f, i)->name;
            const char *base = n;
            if (strncmp(n, "optimizer.exp_avg.", 18) == 0)
                base = n + 18;
            else if (strncmp(n, "optimizer.exp_avg_sq.", 21) == 0)
                base = n + 21;
            int known = 0;
            for (int q = 0; q < c->nparams && !known; q++)
                known = strcmp(c->params[q].name, base) == 0;
            if (!known || (base != n && !has_opt))
                return nllm_err_set(err, NLLM_ECORRUPT,
                                    "checkpoint %s: unknown tensor \"%s\" for this model", path,
                                    n);
        }
    }
    return 0;
}

int nllm_ckpt_load(const char *path, uint64_t expect_xxh64, const nllm_model_config_t *shape,
                   nllm_ckpt_t **out, nllm_err_t *err)
{
    *out = NULL;
    nllm_st_file_t *f;
    uint64_t h = 0;
    int rc = nllm_st_open(path, &f, &h, err);
    if (rc < 0)
        return rc;
    if (expect_xxh64 && h != expect_xxh64) {
        nllm_st_close(f);
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "checkpoint %s fails its checksum (file %016llx, catalog %016llx): "
                            "it was changed or damaged after it was written; resume from "
                            "another checkpoint",
                            path, (unsigned long long)h, (unsigned long long)expect_xxh64);
    }
    nllm_ckpt_t *c = calloc(1, sizeof *c);
    if (!c) {
        nllm_st_close(f);
        return nllm_err_set(err, NLLM_ENOMEM, "checkpoint %s: out of memory", path);
    }
    nllm_progress_init(&c->progress);
    const char *fmt = nllm_st_meta(f, "format");
    int plain = fmt == NULL;
    nllm_job_config_defaults(&c->config);
    if (plain) {
        if (!shape) {
            rc = nllm_err_set(err, NLLM_ECORRUPT,
                              "%s is not an nllm checkpoint (no \"format\" metadata); weights-only "
                              "files can initialise a new job (--init-from FILE)",
                              path);
            goto fail;
        }
        c->config.model = *shape;
    } else {
        const char *ver = nllm_st_meta(f, "format_version");
        if (strcmp(fmt, NLLM_CKPT_FORMAT) != 0 || !ver) {
            rc = nllm_err_set(err, NLLM_ECORRUPT, "checkpoint %s: format \"%s\" is not %s", path,
                              fmt, NLLM_CKPT_FORMAT);
            goto fail;
        }
        if (atoi(ver) != NLLM_CKPT_FORMAT_VERSION) {
            rc = nllm_err_set(err, NLLM_ECORRUPT,
                              "checkpoint %s: format version %s is not supported (this nllm "
                              "reads version %d)",
                              path, ver, NLLM_CKPT_FORMAT_VERSION);
            goto fail;
        }
        const char *job = nllm_st_meta(f, "job"), *kind = nllm_st_meta(f, "kind");
        snprintf(c->job, sizeof c->job, "%s", job ? job : "");
        c->kind = NLLM_CKPT_FINAL;
        for (int k = 0; kind && k <= NLLM_CKPT_PAUSED; k++)
            if (strcmp(kind, nllm_ckpt_kind_name((nllm_ckpt_kind_t)k)) == 0)
                c->kind = (nllm_ckpt_kind_t)k;
        json_t *cfg;
        if ((rc = meta_parse(f, path, "config", 1, &cfg, err)) < 0)
            goto fail;
        rc = nllm_job_config_from_json(cfg, &c->config, err);
        json_decref(cfg);
        if (rc < 0) {
            nllm_err_prefix(err, "checkpoint %s: config: ", path);
            rc = NLLM_ECORRUPT;
            goto fail;
        }
        if ((rc = load_progress(f, path, &c->progress, err)) < 0)
            goto fail;
        if ((rc = meta_parse(f, path, "tokenizer", 0, &c->vocab, err)) < 0)
            goto fail;
    }
    rc = nllm_model_layout(&c->config.model, &c->params, &c->nparams, &c->nfloats, err);
    if (rc < 0) {
        nllm_err_prefix(err, "checkpoint %s: ", path);
        goto fail;
    }
    if ((rc = load_tensors(f, path, c, plain, err)) < 0)
        goto fail;
    c->weights_hash = nllm_ckpt_weights_hash(c->params, c->nparams, c->weights);
    nllm_st_close(f);
    *out = c;
    return 0;
fail:
    nllm_st_close(f);
    nllm_ckpt_free(c);
    return rc;
}

int nllm_ckpt_apply_model(const nllm_ckpt_t *c, nllm_model_t *m, int with_optimizer,
                          nllm_err_t *err)
{
    char diff[1024];
    if (nllm_job_config_model_diff(&c->config.model, "checkpoint", nllm_model_config(m), "job",
                                   diff, sizeof diff) > 0)
        return nllm_err_set(err, NLLM_EMISMATCH,
                            "checkpoint does not fit this model: %s; start the job with the "
                            "checkpoint's model settings",
                            diff);
    if (nllm_model_num_floats(m) != c->nfloats)
        return nllm_err_set(err, NLLM_EINTERNAL, "checkpoint layout differs from the model");
    return nllm_model_set_state(m, c->weights, with_optimizer ? c->exp_avg : NULL,
                                with_optimizer ? c->exp_avg_sq : NULL, err);
}
