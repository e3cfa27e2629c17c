/* methods.c -- the RPC methods of proto/PROTOCOL.md: parameter checking,
 * the job operations of jobs.c, and results as JSON (packed to msgpack by
 * server.c). Slow work (generate, verify) runs on libuv's thread pool and
 * answers from its after-work callback, so the loop never waits on it.
 * Called on the loop thread by server.c for every decoded request, through
 * the d->dispatch nllmd.c gave it; counts each request in d->metrics.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "jobs.h"
#include "jsonpack.h"
#include "methods.h"
#include "server.h"

typedef int (*method_fn)(nllm_conn_t *c, uint32_t msgid, const msgpack_object *p,
                         json_t **result, nllm_err_t *err);

/* ---- helpers ------------------------------------------------------------ */

static int get_job(nllmd_t *d, const msgpack_object *p, nllm_job_t **j, nllm_err_t *err)
{
    char name[NLLM_CATALOG_NAME_MAX + 2];
    int rc = nllm_rpc_get_strbuf(p, "name", name, sizeof name, 1, err);
    if (rc < 0)
        return nllm_err_set(err, NLLM_EINVAL,
                            "parameter \"name\" (the job name, a string of 1-64 characters) is "
                            "missing or not valid");
    *j = nllmd_job_find(d, name);
    if (!*j)
        return nllm_err_set(err, NLLM_ENOENT, "no job named %s: see `nllmctl list`", name);
    return 0;
}

/* The job named by "name" and the optional boolean "all" (default false). */
static int get_job_all(nllmd_t *d, const msgpack_object *p, nllm_job_t **j, int *all,
                       nllm_err_t *err)
{
    *all = 0;
    int rc = get_job(d, p, j, err);
    if (rc == 0)
        rc = nllm_rpc_get_bool(p, "all", all, 0, err) < 0 ? -1 : 0;
    return rc;
}

/* Applies a params map's "config" (if any) on top of cfg. */
static int apply_config(const msgpack_object *p, nllm_job_config_t *cfg, nllm_err_t *err)
{
    const msgpack_object *m = NULL;
    int rc = nllm_rpc_get_map(p, "config", &m, 0, err);
    if (rc < 0 || !m)
        return rc;
    json_t *j = nllm_msgpack_to_json(m);
    if (!j)
        return nllm_err_set(err, NLLM_EINVAL, "config: not a valid map");
    rc = nllm_job_config_from_json(j, cfg, err);
    json_decref(j);
    return rc;
}

/* ---- methods ---------------------------------------------------------- */

static int m_hello(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                   nllm_err_t *err)
{
    (void)id, (void)p, (void)err;
    nllmd_t *d = c->d;
    json_t *devs = json_array();
    for (int k = 0; k < d->ndevices; k++) {
        nllmd_device_t *v = &d->devices[k];
        json_t *jobs = nllmd_device_jobs_json(d, k);
        json_t *first = json_array_get(jobs, 0);
        /* busy: the first of jobs, for clients older than jobs_per_device */
        json_t *o = json_pack("{s:s,s:s,s:s,s:O,s:o,s:I,s:I}", "name", v->name, "kind", v->kind,
                              "model", v->gpu, "busy", first ? first : json_null(), "jobs", jobs,
                              "memory_total", (json_int_t)v->mem_total, "memory_free",
                              (json_int_t)v->mem_free);
        nllmd_device_health_json(v, o);
        nllmd_device_kernels_json(v, o);
        json_array_append_new(devs, o);
    }
    *res = json_pack("{s:i,s:s,s:o,s:i,s:i,s:b,s:f}", "protocol", NLLM_PROTOCOL_VERSION,
                     "daemon", "nllmd " NLLMD_VERSION, "devices", devs, "max_jobs",
                     d->opt.max_jobs, "jobs_per_device", d->opt.jobs_per_device,
                     "auth_required", c->is_tcp && d->token_len > 0, "uptime",
                     uv_now(d->loop) / 1000.0 - d->started);
    return 0;
}

static int m_start(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                   nllm_err_t *err)
{
    (void)id;
    nllmd_t *d = c->d;
    char name[NLLM_CATALOG_NAME_MAX + 2];
    if (nllm_rpc_get_strbuf(p, "name", name, sizeof name, 1, err) < 0)
        return nllm_err_set(err, NLLM_EINVAL,
                            "parameter \"name\" must be a job name: 1-64 of A-Z a-z 0-9 . _ -");
    if (d->shutting_down)
        return nllm_err_set(err, NLLM_ESTATE, "the daemon is shutting down: start %s later",
                            name);
    nllm_job_config_t cfg;
    nllm_job_config_defaults(&cfg);
    int rc = apply_config(p, &cfg, err);
    if (rc < 0)
        return nllm_err_prefix(err, "job %s: ", name);
    nllm_job_origin_t o = {0};
    char from[NLLM_PATH_MAX] = "";
    const char *parent_job = NULL, *parent_ck = NULL;
    char pj[NLLM_CATALOG_NAME_MAX + 1] = "", pc[96] = "";
    rc = nllm_rpc_get_strbuf(p, "init_from", from, sizeof from, 0, err);
    if (rc < 0)
        return rc;
    if (rc == 0 && from[0]) {
        rc = nllmd_resolve_checkpoint(d, from, &o, err);
        if (rc < 0)
            return nllm_err_prefix(err, "job %s: --init-from: ", name);
        o.weights_only = 1;
        int opt = 0;
        nllm_rpc_get_bool(p, "init_optimizer", &opt, 0, NULL);
        o.with_optimizer = opt;
        const char *colon = strchr(from, ':');
        if (colon && from[0] != '/') {
            snprintf(pj, sizeof pj, "%.*s", (int)(colon - from), from);
            snprintf(pc, sizeof pc, "%s", colon + 1);
            parent_job = pj;
            parent_ck = pc;
        } else {
            parent_ck = from;
        }
    }
    nllm_job_t *j;
    rc = nllmd_job_create(d, name, &cfg, &o, parent_job, parent_ck, &j, err);
    if (rc < 0)
        return rc;
    *res = nllmd_job_status_json(j);
    return 0;
}

static int m_pause(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                   nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int rc = get_job(c->d, p, &j, err), at_end = 0;
    if (rc == 0)
        rc = nllm_rpc_get_bool(p, "at_epoch_end", &at_end, 0, err);
    if (rc >= 0)
        rc = nllmd_job_pause(j, at_end, err);
    if (rc >= 0)
        *res = nllmd_job_status_json(j);
    return rc < 0 ? rc : 0;
}

static int m_stop(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                  nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int rc = get_job(c->d, p, &j, err);
    if (rc == 0)
        rc = nllmd_job_stop(j, err);
    if (rc == 0)
        *res = nllmd_job_status_json(j);
    return rc;
}

static int m_resume(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                    nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int rc = get_job(c->d, p, &j, err);
    if (rc < 0)
        return rc;
    char ck[96] = "";
    if ((rc = nllm_rpc_get_strbuf(p, "checkpoint", ck, sizeof ck, 0, err)) < 0)
        return rc;
    int64_t ne = 0;
    if ((rc = nllm_rpc_get_int64(p, "num_epochs", &ne, 0, err)) < 0)
        return rc;
    int reset = 0;
    if ((rc = nllm_rpc_get_bool(p, "reset_patience", &reset, 0, err)) < 0)
        return rc;
    nllm_job_config_t cfg = j->cfg;
    int changed = nllm_rpc_map_get(p, "config") != NULL;
    if ((rc = apply_config(p, &cfg, err)) < 0)
        return nllm_err_prefix(err, "job %s: ", j->name);
    if (rc == 0 && ne > 0) {
        if (ne > 1000000)
            return nllm_err_set(err, NLLM_EINVAL, "num_epochs %lld is too large", (long long)ne);
        cfg.num_epochs = (int32_t)ne;
        changed = 1;
    }
    rc = nllmd_job_resume(j, ck, changed ? &cfg : NULL, reset, err);
    if (rc == 0)
        *res = nllmd_job_status_json(j);
    return rc;
}

static int m_extend(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                    nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int64_t n;
    int rc = get_job(c->d, p, &j, err);
    if (rc == 0 && (rc = nllm_rpc_get_int64(p, "num_epochs", &n, 1, err)) > 0)
        rc = 0;
    if (rc == 0)
        rc = nllmd_job_extend(j, n, err);
    if (rc == 0)
        *res = nllmd_job_status_json(j);
    return rc;
}

static int m_status(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                    nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int rc = get_job(c->d, p, &j, err);
    if (rc == 0)
        *res = nllmd_job_status_json(j);
    return rc;
}

static int m_list(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                  nllm_err_t *err)
{
    (void)id, (void)p, (void)err;
    json_t *a = json_array();
    for (nllm_job_t *j = c->d->jobs; j; j = j->next)
        if (!j->removing)
            json_array_append_new(a, nllmd_job_status_json(j));
    *res = json_pack("{s:o}", "jobs", a);
    return 0;
}

static json_t *ckpt_json(const nllm_catalog_ckpt_t *k)
{
    return json_pack("{s:s,s:s,s:I,s:I,s:s,s:I,s:s,s:s,s:o,s:f,s:s,s:o,s:b,s:I}", "name",
                     k->name, "kind", k->kind, "epoch", (json_int_t)k->epoch, "step",
                     (json_int_t)k->step, "path", k->path, "size", (json_int_t)k->size,
                     "checksum", k->checksum, "weights_hash",
                     k->weights_hash ? k->weights_hash : "", "val_loss",
                     nllm_json_num(k->val_loss), "created", k->created_at, "status", k->status,
                     "bad_reason", k->bad_reason ? json_string(k->bad_reason) : json_null(),
                     "current", k->current, "attempt", (json_int_t)k->attempt);
}

static int m_checkpoints(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                         nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int all;
    int rc = get_job_all(c->d, p, &j, &all, err);
    if (rc < 0)
        return rc;
    /* monitors poll this: answer from the last reply while no catalog row
     * has changed since (a query costs ~100 us of the loop's CPU) */
    int64_t gen = nllm_catalog_generation(c->d->cat);
    if (j->ckpt_reply[all] && j->ckpt_reply_gen[all] == gen) {
        *res = json_incref(j->ckpt_reply[all]);
        return 0;
    }
    nllm_catalog_ckpt_t *cks;
    size_t n;
    rc = nllm_catalog_ckpt_list(c->d->cat, j->name, !all, &cks, &n, err);
    if (rc < 0)
        return rc;
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, ckpt_json(&cks[i]));
    nllm_catalog_ckpts_free(cks, n);
    *res = json_pack("{s:o}", "checkpoints", a);
    json_decref(j->ckpt_reply[all]);
    j->ckpt_reply[all] = json_incref(*res);
    j->ckpt_reply_gen[all] = gen;
    return 0;
}

static int m_history(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                     nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int all;
    int rc = get_job_all(c->d, p, &j, &all, err);
    if (rc < 0)
        return rc;
    nllm_catalog_epoch_t *eps;
    size_t n;
    rc = nllm_catalog_epoch_list(c->d->cat, j->name, all, &eps, &n, err);
    if (rc < 0)
        return rc;
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            a, json_pack("{s:I,s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:b}", "epoch",
                         (json_int_t)eps[i].epoch, "attempt", (json_int_t)eps[i].attempt,
                         "train_loss", nllm_json_num(eps[i].train_loss), "val_loss",
                         nllm_json_num(eps[i].val_loss), "train_ppl",
                         nllm_json_num(eps[i].train_ppl), "val_ppl",
                         nllm_json_num(eps[i].val_ppl), "val_acc", nllm_json_num(eps[i].val_acc),
                         "seconds", nllm_json_num(eps[i].seconds), "tokens_per_s",
                         nllm_json_num(eps[i].tokens_per_s), "superseded", eps[i].superseded));
    nllm_catalog_epochs_free(eps, n);
    *res = json_pack("{s:o}", "epochs", a);
    return 0;
}

static int m_events(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                    nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int64_t limit = 100;
    int rc = get_job(c->d, p, &j, err);
    if (rc == 0)
        rc = nllm_rpc_get_int64(p, "limit", &limit, 0, err) < 0 ? -1 : 0;
    if (rc < 0)
        return rc;
    if (limit < 1 || limit > 1000)
        return nllm_err_set(err, NLLM_EINVAL, "limit %lld: use 1..1000", (long long)limit);
    nllm_catalog_event_t *evs;
    size_t n;
    rc = nllm_catalog_event_list(c->d->cat, j->name, (size_t)limit, &evs, &n, err);
    if (rc < 0)
        return rc;
    json_t *a = json_array();
    for (size_t i = n; i-- > 0;) /* the catalog lists newest first; newest last here */
        json_array_append_new(a, json_pack("{s:f,s:s,s:s}", "ts", evs[i].ts, "kind",
                                           evs[i].kind, "message", evs[i].message));
    nllm_catalog_events_free(evs, n);
    *res = json_pack("{s:o}", "events", a);
    return 0;
}

typedef struct {
    uv_work_t req;
    nllm_conn_t *conn;
    uint32_t msgid;
    nllmd_verify_t v;
} verify_work_t;

static void verify_work(uv_work_t *req)
{
    verify_work_t *w = req->data;
    nllmd_verify_hash(&w->v);
}

static void verify_after(uv_work_t *req, int status)
{
    verify_work_t *w = req->data;
    nllm_conn_t *c = w->conn;
    int bad = 0;
    json_t *results = nllmd_verify_apply(c->d, &w->v, &bad);
    if (!c->closing) {
        nllm_err_t err;
        if (status < 0) {
            nllm_err_set(&err, NLLM_ECANCELED, "verify was canceled");
            nllmd_conn_send_json(c, NLLM_RPC_RESPONSE, w->msgid, NULL, &err, NULL);
        } else {
            json_t *res = json_pack("{s:i,s:i,s:O}", "checked", w->v.n, "bad", bad, "results",
                                    results);
            nllmd_conn_send_json(c, NLLM_RPC_RESPONSE, w->msgid, NULL, NULL, res);
            json_decref(res);
        }
    }
    json_decref(results);
    free(w->v.items);
    free(w);
    nllmd_conn_unref(c);
}

/* Re-hashing checkpoint files can take seconds: it runs on the thread pool. */
static int m_verify(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                    nllm_err_t *err)
{
    (void)res;
    nllmd_t *d = c->d;
    int all = 0, rc;
    if ((rc = nllm_rpc_get_bool(p, "all", &all, 0, err)) < 0)
        return rc;
    verify_work_t *w = calloc(1, sizeof *w);
    if (!w)
        return nllm_err_set(err, NLLM_ENOMEM, "verify: out of memory");
    if (all) {
        for (nllm_job_t *j = d->jobs; j && rc == 0; j = j->next)
            if (!j->removing)
                rc = nllmd_verify_collect(d, j, &w->v, err);
    } else {
        nllm_job_t *j;
        rc = get_job(d, p, &j, err);
        if (rc == 0)
            rc = nllmd_verify_collect(d, j, &w->v, err);
    }
    if (rc < 0) {
        free(w->v.items);
        free(w);
        return rc;
    }
    w->conn = c;
    w->msgid = id;
    w->req.data = w;
    nllmd_conn_ref(c);
    rc = uv_queue_work(d->loop, &w->req, verify_work, verify_after);
    if (rc < 0) {
        nllmd_conn_unref(c);
        free(w->v.items);
        free(w);
        return nllm_err_set(err, NLLM_EINTERNAL, "verify: %s", uv_strerror(rc));
    }
    return 1; /* answered from verify_after */
}

static int m_remove(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                    nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int del = 0, n = 0;
    int rc = get_job(c->d, p, &j, err);
    if (rc == 0)
        rc = nllm_rpc_get_bool(p, "delete_files", &del, 0, err) < 0 ? -1 : 0;
    if (rc == 0)
        rc = nllmd_job_remove(j, del, &n, err);
    if (rc == 0)
        *res = json_pack("{s:b,s:i}", "removed", 1, "deleted_files", n);
    return rc;
}

static int m_watch(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                   nllm_err_t *err)
{
    (void)id;
    nllm_job_t *j;
    int rc = get_job(c->d, p, &j, err);
    if (rc < 0)
        return rc;
    int have = 0;
    for (int i = 0; i < c->nwatch; i++)
        have |= strcmp(c->watch[i], j->name) == 0;
    if (!have) {
        if (c->nwatch >= NLLMD_MAX_WATCH)
            return nllm_err_set(err, NLLM_EINVAL,
                                "this connection already watches %d jobs: unwatch one first",
                                NLLMD_MAX_WATCH);
        snprintf(c->watch[c->nwatch++], sizeof c->watch[0], "%s", j->name);
    }
    *res = json_pack("{s:s,s:o}", "watching", j->name, "status", nllmd_job_status_json(j));
    return 0;
}

static int m_unwatch(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                     nllm_err_t *err)
{
    (void)id;
    char name[NLLM_CATALOG_NAME_MAX + 2];
    int rc = nllm_rpc_get_strbuf(p, "name", name, sizeof name, 1, err);
    if (rc < 0)
        return rc;
    for (int i = 0; i < c->nwatch; i++)
        if (strcmp(c->watch[i], name) == 0) {
            memmove(c->watch[i], c->watch[i + 1], sizeof c->watch[0] * (size_t)(c->nwatch - i - 1));
            c->nwatch--;
            break;
        }
    *res = json_pack("{s:n}", "watching");
    return 0;
}

static int m_shutdown(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                      nllm_err_t *err)
{
    (void)id, (void)p, (void)err;
    *res = json_pack("{s:b}", "ok", 1);
    /* after this reply is queued: the loop begins the shutdown on its next turn */
    c->d->shutdown_requested = 1;
    uv_async_send(&c->d->async);
    return 0;
}

static int m_device_reset(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                          nllm_err_t *err)
{
    (void)id;
    char name[40];
    if (nllm_rpc_get_strbuf(p, "device", name, sizeof name, 1, err) < 0)
        return nllm_err_set(err, NLLM_EINVAL,
                            "parameter \"device\" must be a device name: cpu or cuda:N");
    return nllmd_device_reset(c->d, name, res, err);
}

static int m_auth(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                  nllm_err_t *err)
{
    (void)id;
    nllmd_t *d = c->d;
    const char *tok;
    size_t len;
    int rc = nllm_rpc_get_str(p, "token", &tok, &len, 1, err);
    if (rc < 0)
        return rc;
    if (d->token_len == 0) {
        c->authed = 1;
        *res = json_pack("{s:b}", "ok", 1);
        return 0;
    }
    /* constant time in the token's length */
    unsigned char diff = (unsigned char)(len != d->token_len);
    for (size_t i = 0; i < d->token_len; i++)
        diff |= (unsigned char)(d->token[i] ^ (i < len ? tok[i] : 0));
    if (diff) {
        c->closing_after_reply = 1;
        return nllm_err_set(err, NLLM_EAUTH, "wrong token: check --token-file");
    }
    c->authed = 1;
    *res = json_pack("{s:b}", "ok", 1);
    return 0;
}

/* ---- generate (thread pool) --------------------------------------------- */

typedef struct {
    uv_work_t req;
    nllm_conn_t *conn;
    uint32_t msgid;
    char path[NLLM_PATH_MAX];
    uint64_t checksum;
    char label[96];
    char *prompt;
    int64_t ntokens;
    double temperature;
    uint64_t seed;
    json_t *result;
    nllm_err_t err;
} gen_t;

static int sample(const float *logits, int V, double temp, uint64_t seed, uint64_t idx)
{
    double mx = -INFINITY;
    for (int k = 0; k < V; k++)
        if (logits[k] > mx)
            mx = logits[k];
    if (temp <= 0) {
        for (int k = 0; k < V; k++)
            if (logits[k] == mx)
                return k;
    }
    double sum = 0;
    for (int k = 0; k < V; k++)
        sum += exp((logits[k] - mx) / temp);
    double u = (double)(nllm_rng_u64(seed, NLLM_STREAM_SAMPLE, 0, idx) >> 11) * 0x1.0p-53 * sum;
    double acc = 0;
    for (int k = 0; k < V; k++) {
        acc += exp((logits[k] - mx) / temp);
        if (u < acc)
            return k;
    }
    return V - 1;
}

static void gen_work(uv_work_t *req)
{
    gen_t *g = req->data;
    nllm_err_t *err = &g->err;
    nllm_ckpt_t *ck = NULL;
    nllm_backend_t *be = NULL;
    nllm_model_t *m = NULL;
    nllm_vocab_t vocab = {0};
    int32_t *ids = NULL, *out = NULL;
    float *logits = NULL, *ctx = NULL;
    char *text = NULL;
    int64_t n = 0;
    int rc = nllm_ckpt_load(g->path, g->checksum, NULL, &ck, err);
    if (rc == 0 && !ck->vocab)
        rc = nllm_err_set(err, NLLM_ECORRUPT, "checkpoint %s has no tokenizer", g->label);
    if (rc == 0)
        rc = nllm_vocab_from_json(ck->vocab, &vocab, err);
    if (rc == 0)
        rc = nllm_cpu_backend_create(1, &be, err);
    if (rc == 0)
        rc = nllm_model_create(&ck->config.model, be, 1, &m, err);
    if (rc == 0)
        rc = nllm_ckpt_apply_model(ck, m, 0, err);
    if (rc == 0)
        rc = nllm_vocab_encode(&vocab, g->prompt, strlen(g->prompt), &ids, &n, err);
    const int V = ck ? ck->config.model.vocab_size : 0, Dc = ck ? ck->config.model.context_dim : 0;
    if (rc == 0) {
        logits = malloc(sizeof(float) * (size_t)V);
        ctx = calloc((size_t)Dc, sizeof(float));
        out = malloc(sizeof(int32_t) * (size_t)(n + g->ntokens + 1));
        if (!logits || !ctx || !out)
            rc = nllm_err_set(err, NLLM_ENOMEM, "generate: out of memory");
    }
    int byte = vocab.kind == NLLM_TOK_BYTE;
    int32_t bos = byte ? NLLM_BYTE_BOS : NLLM_WORD_BOS, eos = byte ? NLLM_BYTE_EOS : NLLM_WORD_EOS;
    int64_t made = 0;
    if (rc == 0) {
        rc = nllm_model_step_logits(m, bos, ctx, logits, err);
        for (int64_t i = 0; rc == 0 && i < n; i++)
            rc = nllm_model_step_logits(m, ids[i], ctx, logits, err);
        for (; rc == 0 && made < g->ntokens; made++) {
            int tok = sample(logits, V, g->temperature, g->seed, (uint64_t)made);
            if (tok == eos)
                break;
            out[made] = tok;
            rc = nllm_model_step_logits(m, tok, ctx, logits, err);
        }
    }
    if (rc == 0)
        rc = nllm_vocab_decode(&vocab, out, made, &text, err);
    if (rc == 0)
        g->result = json_pack("{s:s,s:s,s:I,s:s}", "text", text, "prompt", g->prompt, "tokens",
                              (json_int_t)made, "checkpoint", g->label);
    free(text);
    free(ids);
    free(out);
    free(logits);
    free(ctx);
    nllm_model_destroy(m);
    if (be)
        be->destroy(be);
    nllm_vocab_free(&vocab);
    nllm_ckpt_free(ck);
}

static void gen_after(uv_work_t *req, int status)
{
    gen_t *g = req->data;
    nllm_conn_t *c = g->conn;
    if (status < 0 && !g->err.code)
        nllm_err_set(&g->err, NLLM_ECANCELED, "generate was canceled");
    if (!c->closing)
        nllmd_conn_send_json(c, NLLM_RPC_RESPONSE, g->msgid, NULL,
                             g->result ? NULL : &g->err, g->result);
    json_decref(g->result);
    free(g->prompt);
    free(g);
    nllmd_conn_unref(c);
}

static int m_generate(nllm_conn_t *c, uint32_t id, const msgpack_object *p, json_t **res,
                      nllm_err_t *err)
{
    (void)res;
    nllmd_t *d = c->d;
    nllm_job_t *j;
    int rc = get_job(d, p, &j, err);
    if (rc < 0)
        return rc;
    char ck[96] = "";
    const char *prompt = "";
    size_t plen = 0;
    int64_t ntok = 50, seed = 0;
    double temp = 1.0;
    if ((rc = nllm_rpc_get_strbuf(p, "checkpoint", ck, sizeof ck, 0, err)) < 0 ||
        (rc = nllm_rpc_get_str(p, "prompt", &prompt, &plen, 0, err)) < 0 ||
        (rc = nllm_rpc_get_int64(p, "tokens", &ntok, 0, err)) < 0 ||
        (rc = nllm_rpc_get_int64(p, "seed", &seed, 0, err)) < 0 ||
        (rc = nllm_rpc_get_double(p, "temperature", &temp, 0, err)) < 0)
        return rc;
    if (ntok < 1 || ntok > 10000)
        return nllm_err_set(err, NLLM_EINVAL, "tokens %lld: use 1..10000", (long long)ntok);
    if (!(temp >= 0 && temp <= 100))
        return nllm_err_set(err, NLLM_EINVAL, "temperature %g: use 0..100 (0 = greedy)", temp);
    nllm_catalog_ckpt_t row;
    if (ck[0])
        rc = nllm_catalog_ckpt_find(d->cat, j->name, ck, &row, err);
    else if ((rc = nllm_catalog_ckpt_find(d->cat, j->name, "best", &row, NULL)) < 0)
        rc = nllm_catalog_ckpt_find(d->cat, j->name, "latest", &row, err);
    if (rc < 0)
        return nllm_err_set(err, NLLM_ENOENT,
                            "job %s has no checkpoint %s to generate from yet: wait for the "
                            "first epoch to end",
                            j->name, ck[0] ? ck : "(best or latest)");
    if (strcmp(row.status, "ok") != 0) {
        rc = nllm_err_set(err, NLLM_ECORRUPT, "job %s: checkpoint %s is marked bad (%s)",
                          j->name, row.name, row.bad_reason ? row.bad_reason : "?");
        nllm_catalog_ckpt_free(&row);
        return rc;
    }
    gen_t *g = calloc(1, sizeof *g);
    if (!g) {
        nllm_catalog_ckpt_free(&row);
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory");
    }
    g->conn = c;
    g->msgid = id;
    snprintf(g->path, sizeof g->path, "%s", row.path);
    g->checksum = strtoull(row.checksum, NULL, 16);
    snprintf(g->label, sizeof g->label, "%s:%s", j->name, row.name);
    nllm_catalog_ckpt_free(&row);
    g->prompt = strndup(prompt, plen);
    g->ntokens = ntok;
    g->temperature = temp;
    g->seed = (uint64_t)seed;
    g->req.data = g;
    nllmd_conn_ref(c);
    rc = uv_queue_work(d->loop, &g->req, gen_work, gen_after);
    if (rc < 0) {
        nllmd_conn_unref(c);
        free(g->prompt);
        free(g);
        return nllm_err_set(err, NLLM_EINTERNAL, "generate: %s", uv_strerror(rc));
    }
    return 1; /* answered later */
}

/* ---- dispatch ------------------------------------------------------------ */

static const struct {
    const char *name;
    method_fn fn;
} methods[] = {
    {"hello", m_hello},     {"auth", m_auth},       {"start", m_start},
    {"pause", m_pause},     {"resume", m_resume},   {"extend", m_extend},
    {"stop", m_stop},       {"status", m_status},   {"list", m_list},
    {"checkpoints", m_checkpoints}, {"history", m_history}, {"events", m_events},
    {"verify", m_verify},   {"remove", m_remove},   {"rm", m_remove},
    {"watch", m_watch},     {"unwatch", m_unwatch}, {"generate", m_generate},
    {"shutdown", m_shutdown}, {"device_reset", m_device_reset},
};

void nllmd_dispatch(nllm_conn_t *c, nllm_rpc_msg_t *msg)
{
    nllm_err_t err;
    nllm_err_clear(&err);
    /* Before auth (TCP with a token; Unix peers are authed at accept) only a
     * well-formed auth request is served. Anything else -- another method, a
     * malformed message, also one server.c found fatal -- gets this one reply
     * (when it has a msgid), echoing nothing it said, and the connection
     * closes. */
    if (!c->authed &&
        !(msg->type == NLLM_RPC_REQUEST && strcmp(msg->method, "auth") == 0)) {
        if (msg->type == NLLM_RPC_REQUEST || msg->type == NLLM_RPC_INVALID) {
            nllm_err_set(&err, NLLM_EAUTH,
                         "authenticate first: the first call on this connection must be auth "
                         "with the token");
            nllmd_conn_send_json(c, NLLM_RPC_RESPONSE, msg->msgid, NULL, &err, NULL);
        }
        nllmd_conn_close_after_writes(c);
        return;
    }
    if (msg->type == NLLM_RPC_INVALID) {
        nllm_err_set(&err, NLLM_EPROTO, "%s", msg->reason);
        nllmd_conn_send_json(c, NLLM_RPC_RESPONSE, msg->msgid, NULL, &err, NULL);
        return;
    }
    if (msg->type != NLLM_RPC_REQUEST) /* clients send no responses or notifications */
        return;
    method_fn fn = NULL;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strcmp(methods[i].name, msg->method) == 0)
            fn = methods[i].fn;
    json_t *res = NULL;
    int rc;
    if (!fn) {
        rc = nllm_err_set(&err, NLLM_EINVAL, "unknown method \"%.64s\": see proto/PROTOCOL.md",
                          msg->method);
    } else {
        const msgpack_object *p;
        rc = nllm_rpc_params_map(msg, &p, &err);
        if (rc == 0)
            rc = fn(c, msg->msgid, p, &res, &err);
    }
    nllmd_metrics_count_request(&c->d->metrics, fn ? msg->method : NULL, rc < 0 ? rc : 0);
    if (rc == 1)
        return; /* answered asynchronously */
    if (rc < 0 && !err.code)
        nllm_err_set(&err, rc, "%s", nllm_err_default_msg(rc));
    if (rc == 0 && !res)
        res = json_null();
    nllmd_conn_send_json(c, NLLM_RPC_RESPONSE, msg->msgid, NULL, rc < 0 ? &err : NULL, res);
    json_decref(res);
    if (c->closing_after_reply)
        nllmd_conn_close_after_writes(c);
}
