/* http.c -- nllmd's read-only HTTP listener on the daemon's libuv loop:
 * GET/HEAD of /metrics (Prometheus text format 0.0.4), /api/jobs,
 * /api/jobs/NAME, /api/daemon and the dashboard page at / (embedded at
 * build time from dashboard.html). Requests are parsed by http_parser.
 *
 * Invariants: only the loop thread touches this state; a connection is
 * freed only when both of its handles (socket, timer) have closed, and the
 * server state only when the listener and every connection are gone.
 * Defences: the Host header must name the listener (DNS rebinding), the
 * request head is limited to NLLMD_HTTP_MAX_HEAD bytes, a request must
 * arrive in full within the head timeout (slowloris), idle keep-alive
 * connections close, connections are capped, writes queued per connection
 * are bounded. Callers: nllmd.c (start/close).
 *
 * A connection's life:
 *
 *   accept ──> reading ──(request complete: respond)──> reading (keep-alive)
 *                 │ head timeout / idle timeout / error ──────────> closed
 *                 │ last response queued (Connection: close, 4xx)
 *                 v
 *             finishing ──(writes done: shutdown)──> lingering ──(EOF, 2 s)──> closed
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <http_parser.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda/cuda_backend.h"
#include "http.h"
#include "jobs.h"
#include "jsonpack.h"
#include "log.h"

/* dashboard.html, turned into a C array by meson.build */
extern const unsigned char nllmd_dashboard_html[];
extern const size_t nllmd_dashboard_html_len;

#define LINGER_MS 2000                       /* after our FIN, wait for the peer's */
#define WRITE_QUEUE_MAX ((size_t)16 << 20)   /* bytes queued per connection */
#define URL_MAX 2048                         /* longer request targets: 414 */

static const char *const job_states[] = {"queued",    "running", "pausing", "paused",
                                         "completed", "stopped", "failed",  "interrupted"};
#define NSTATES (sizeof job_states / sizeof job_states[0])

static const int counted_status[] = {200, 400, 404, 405, 414, 421, 431, 500};
#define NSTATUS (sizeof counted_status / sizeof counted_status[0])

typedef struct http_conn http_conn_t;

struct nllmd_http {
    nllmd_t *d;
    uv_tcp_t listener;
    int refs;             /* listener + connections; freed at 0 */
    int closing;
    http_conn_t *conns;
    int nconns;
    char host[64];        /* listening address, without brackets */
    int port;
    int loopback, wildcard;
    unsigned char addr[16];
    int family;           /* AF_INET or AF_INET6 */
    char hostname[256];   /* gethostname(), lower case */
    uint64_t head_timeout_ms, idle_timeout_ms;
    http_parser_settings settings;
    uint64_t responses[NSTATUS];
    uint64_t dev_refreshed_ms;
};

struct http_conn {
    nllmd_http_t *srv;
    http_conn_t *next, *prev;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shut;
    int open_handles;     /* freed when it drops to 0 */
    int closing;          /* uv_close was called */
    int finishing;        /* the last response is queued; no more requests */
    int shut_started;
    int eof;              /* the peer sent EOF */
    int nwrites;
    size_t pending;
    http_parser parser;
    /* the request being read */
    int in_message;
    int is_head;
    int rejected;         /* answered from on_headers_complete */
    char url[URL_MAX];
    size_t url_len;
    int url_overflow;
    char field[8];
    size_t field_len;     /* may exceed sizeof field: then it is not "host" */
    int last_was_value;
    int cur_is_host;
    char hosthdr[256];
    size_t host_len;
    int host_count, host_overflow;
    /* nllmd_http_parse_request: no socket, no timer; responses are built
     * and counted but not sent */
    int detached;
    int first_status, nresponses;
};

typedef struct {
    uv_write_t req;
    http_conn_t *c;
    size_t len;
    char data[];
} wreq_t;

/* ---- allocation and a growable text buffer -------------------------------- */

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "nllmd: http: out of memory (%zu bytes)\n", n);
        abort();
    }
    return q;
}

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void buf_add(buf_t *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- counters (RPC requests are counted in d->metrics: metrics.h) ---------- */

static void count_response(nllmd_http_t *s, int status)
{
    for (size_t i = 0; i < NSTATUS; i++)
        if (counted_status[i] == status)
            s->responses[i]++;
}

/* ---- connection lifetime ------------------------------------------------ */

static void srv_unref(nllmd_http_t *s)
{
    if (--s->refs == 0)
        free(s);
}

static void conn_handle_closed(uv_handle_t *h)
{
    http_conn_t *c = h->data;
    if (--c->open_handles > 0)
        return;
    nllmd_http_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    free(c);
    srv_unref(s);
}

static void conn_close(http_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

static void on_timer(uv_timer_t *t)
{
    conn_close(t->data); /* head, idle or linger timeout: all close */
}

static void timer_set(http_conn_t *c, uint64_t ms)
{
    if (!c->closing && !c->detached)
        uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    http_conn_t *c = req->data;
    if (c->closing)
        return;
    if (status < 0 || c->eof)
        conn_close(c);
    else
        timer_set(c, LINGER_MS); /* reads go on (discarded) until EOF */
}

/* Called whenever a write completes or the connection's plans change. */
static void conn_after_writes(http_conn_t *c)
{
    if (c->closing || c->nwrites > 0 || c->detached)
        return;
    if (c->eof) {
        conn_close(c);
        return;
    }
    if (c->finishing && !c->shut_started) {
        c->shut_started = 1;
        c->shut.data = c;
        if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
            conn_close(c);
    }
}

static void on_written(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    http_conn_t *c = w->c;
    c->nwrites--;
    c->pending -= w->len;
    free(w);
    if (status < 0)
        conn_close(c);
    else
        conn_after_writes(c);
}

static void conn_write(http_conn_t *c, const char *data, size_t len)
{
    if (c->closing || c->detached)
        return;
    if (c->pending + len > WRITE_QUEUE_MAX) {
        conn_close(c); /* a client that does not read what it asked for */
        return;
    }
    wreq_t *w = xrealloc(NULL, sizeof *w + len);
    w->c = c;
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc < 0) {
        free(w);
        conn_close(c);
        return;
    }
    c->nwrites++;
    c->pending += len;
}

/* ---- responses ----------------------------------------------------------- */

#define CT_TEXT "text/plain; charset=utf-8"
#define CT_JSON "application/json"
#define CT_HTML "text/html; charset=utf-8"
#define CT_PROM "text/plain; version=0.0.4; charset=utf-8"

/* Queues one response. last != 0: Connection: close, and no more requests
 * are read from this connection. */
static void respond(http_conn_t *c, int status, const char *ctype, const char *body, size_t blen,
                    int last)
{
    if (c->closing)
        return;
    count_response(c->srv, status);
    if (!c->nresponses++)
        c->first_status = status;
    buf_t b = {0};
    const char *reason = http_status_str((enum http_status)status);
    buf_printf(&b,
               "HTTP/1.1 %d %s\r\n"
               "Content-Type: %s\r\n"
               "Content-Length: %zu\r\n"
               "Cache-Control: no-store\r\n"
               "X-Content-Type-Options: nosniff\r\n"
               "Referrer-Policy: no-referrer\r\n",
               status, reason, ctype, blen);
    if (!strcmp(ctype, CT_HTML))
        buf_puts(&b, "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
                     "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                     "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
                     "X-Frame-Options: DENY\r\n");
    if (status == 405)
        buf_puts(&b, "Allow: GET, HEAD\r\n");
    buf_puts(&b, last ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n");
    if (!c->is_head)
        buf_add(&b, body, blen);
    conn_write(c, b.p, b.len);
    free(b.p);
    if (last) {
        c->finishing = 1;
        timer_set(c, c->srv->idle_timeout_ms); /* to drain what is queued */
        conn_after_writes(c);
    }
}

static void respond_text(http_conn_t *c, int status, const char *msg, int last)
{
    buf_t b = {0};
    buf_printf(&b, "%d %s: %s\n", status, http_status_str((enum http_status)status), msg);
    respond(c, status, CT_TEXT, b.p, b.len, last);
    free(b.p);
}

/* Takes ownership of j. */
static void respond_json(http_conn_t *c, int status, json_t *j, int last)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) {
        respond_text(c, 500, "could not encode the answer as JSON", 1);
        return;
    }
    respond(c, status, CT_JSON, s, strlen(s), last);
    free(s);
}

static void respond_json_error(http_conn_t *c, int status, const char *code, const char *msg,
                               int last)
{
    respond_json(c, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg),
                 last);
}

/* ---- /metrics ------------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *state;
    const char *precision; /* "fp32", "tf32", "bf16" */
    int active;
    int have_step, have_epoch;
    int64_t epoch, num_epochs, step, steps_per_epoch, global_step, attempt, best_epoch;
    double running_loss, train_loss, val_loss, val_ppl, val_acc, best_val_loss, tokens_per_s;
    double last_ckpt_time; /* wall seconds, <= 0: none known */
    uint64_t ckpt_bytes, ckpt_failures;
    uint64_t mem_peak; /* 0: not known */
    int num_devices;
    int error_code; /* with an error: its nllm_err code (0: not classified) */
    int has_error;
} job_snap_t;

static void snap_job(nllmd_t *d, nllm_job_t *j, job_snap_t *o)
{
    memset(o, 0, sizeof *o);
    o->name = j->name;
    o->state = j->state;
    o->precision = nllm_precision_name(j->cfg.precision);
    o->num_devices = j->cfg.num_devices;
    o->active = !strcmp(j->state, "running") || !strcmp(j->state, "pausing");
    pthread_mutex_lock(&j->mu);
    nllm_step_report_t st = j->last_step;
    nllm_epoch_report_t ep = j->last_epoch;
    o->have_step = j->have_step && o->active;
    o->have_epoch = j->have_epoch;
    o->epoch = j->epoch_done;
    o->num_epochs = j->cfg.num_epochs;
    o->steps_per_epoch = j->steps_per_epoch;
    o->global_step = j->global_step;
    o->best_val_loss = j->best_val_loss;
    o->best_epoch = j->best_epoch;
    o->last_ckpt_time = j->last_ckpt_time;
    o->ckpt_bytes = j->ckpt_bytes;
    o->mem_peak = j->mem_peak;
    pthread_mutex_unlock(&j->mu);
    o->attempt = j->attempt;
    o->has_error = j->error[0] != '\0';
    o->error_code = j->error_code;
    o->ckpt_failures = j->ckpt_failures;
    o->step = o->have_step ? st.step_in_epoch : 0;
    o->running_loss = o->have_step ? st.running_loss : NAN;
    o->tokens_per_s = o->have_step ? st.tokens_per_s : 0.0;
    o->train_loss = o->have_epoch ? ep.train_loss : NAN;
    o->val_loss = o->have_epoch ? ep.val_loss : NAN;
    o->val_ppl = o->have_epoch ? ep.val_ppl : NAN;
    o->val_acc = o->have_epoch ? ep.val_acc : NAN;
    if (o->last_ckpt_time <= 0) {
        /* none written since the daemon started: the catalog's newest */
        nllm_catalog_ckpt_t row;
        if (nllm_catalog_ckpt_find(d->cat, j->name, "latest", &row, NULL) == 0) {
            o->last_ckpt_time = row.created_at;
            o->ckpt_bytes = (uint64_t)row.size;
            nllm_catalog_ckpt_free(&row);
        }
    }
}

/* Label values: backslash, double quote and newline escaped. */
static void label_value(buf_t *b, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            buf_puts(b, "\\\\");
        else if (*p == '"')
            buf_puts(b, "\\\"");
        else if (*p == '\n')
            buf_puts(b, "\\n");
        else
            buf_add(b, p, 1);
    }
}

static void family(buf_t *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample with up to three labels; unknown values (NaN, infinities)
 * are left out. */
static void sample3(buf_t *b, const char *name, const char *l1, const char *v1, const char *l2,
                    const char *v2, const char *l3, const char *v3, double x)
{
    if (!isfinite(x))
        return;
    buf_puts(b, name);
    if (l1) {
        buf_printf(b, "{%s=\"", l1);
        label_value(b, v1);
        if (l2) {
            buf_printf(b, "\",%s=\"", l2);
            label_value(b, v2);
        }
        if (l2 && l3) {
            buf_printf(b, "\",%s=\"", l3);
            label_value(b, v3);
        }
        buf_puts(b, "\"}");
    }
    if (x == floor(x) && fabs(x) < 9e15)
        buf_printf(b, " %.0f\n", x);
    else
        buf_printf(b, " %.12g\n", x);
}

static void sample(buf_t *b, const char *name, const char *l1, const char *v1, const char *l2,
                   const char *v2, double x)
{
    sample3(b, name, l1, v1, l2, v2, NULL, NULL, x);
}

static void refresh_devices(nllmd_t *d, nllmd_http_t *s)
{
    uint64_t now = uv_now(d->loop);
    if (s->dev_refreshed_ms && now - s->dev_refreshed_ms < 1000)
        return;
    s->dev_refreshed_ms = now;
    for (int k = 0; k < d->ndevices; k++) {
        nllmd_device_t *v = &d->devices[k];
        uint64_t total, freeb;
        if (strcmp(v->kind, "cuda") == 0 &&
            nllm_cuda_device_info(atoi(v->name + 5), NULL, 0, &total, &freeb) == 0) {
            v->mem_total = total;
            v->mem_free = freeb;
        }
    }
}

static void metrics_text(nllmd_http_t *s, buf_t *b)
{
    nllmd_t *d = s->d;
    int n = 0;
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        n += !j->removing;
    job_snap_t *js = xrealloc(NULL, sizeof *js * (size_t)(n ? n : 1));
    int k = 0;
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        if (!j->removing)
            snap_job(d, j, &js[k++]);
    double now = wall_now();
    char num[32];

    family(b, "nllm_build_info", "gauge", "nllmd version, value 1.");
    sample(b, "nllm_build_info", "version", NLLMD_VERSION, NULL, NULL, 1);
    family(b, "nllm_uptime_seconds", "gauge", "Seconds since nllmd started.");
    sample(b, "nllm_uptime_seconds", NULL, NULL, NULL, NULL,
           uv_now(d->loop) / 1000.0 - d->started);
    family(b, "nllm_connected_clients", "gauge", "RPC clients connected (socket and TCP).");
    sample(b, "nllm_connected_clients", NULL, NULL, NULL, NULL, d->nconns);
    family(b, "nllm_http_connections", "gauge", "Open HTTP connections to this listener.");
    sample(b, "nllm_http_connections", NULL, NULL, NULL, NULL, s->nconns);
    family(b, "nllm_requests_total", "counter",
           "RPC requests answered, by method and result code (ok or the error code).");
    const nllmd_metrics_t *m = &d->metrics;
    for (int i = 0; i < m->nreq; i++)
        sample(b, "nllm_requests_total", "method", m->req[i].method, "code",
               m->req[i].code ? nllm_err_wire_code(m->req[i].code) : "ok", (double)m->req[i].n);
    family(b, "nllm_http_responses_total", "counter", "HTTP responses sent, by status code.");
    for (size_t i = 0; i < NSTATUS; i++) {
        snprintf(num, sizeof num, "%d", counted_status[i]);
        sample(b, "nllm_http_responses_total", "code", num, NULL, NULL, (double)s->responses[i]);
    }
    family(b, "nllm_jobs", "gauge", "Jobs in each state.");
    for (size_t st = 0; st < NSTATES; st++) {
        int cnt = 0;
        for (int i = 0; i < n; i++)
            cnt += !strcmp(js[i].state, job_states[st]);
        sample(b, "nllm_jobs", "state", job_states[st], NULL, NULL, cnt);
    }

    family(b, "nllm_job_state", "gauge", "1 for the job's current state, 0 for the others.");
    for (int i = 0; i < n; i++) {
        int known = 0;
        for (size_t st = 0; st < NSTATES; st++) {
            int cur = !strcmp(js[i].state, job_states[st]);
            known |= cur;
            sample(b, "nllm_job_state", "job_name", js[i].name, "state", job_states[st], cur);
        }
        if (!known)
            sample(b, "nllm_job_state", "job_name", js[i].name, "state", js[i].state, 1);
    }
#define JOB_FAMILY(metric, type, help, expr)                                                   \
    do {                                                                                       \
        family(b, metric, type, help);                                                         \
        for (int i = 0; i < n; i++) {                                                          \
            const job_snap_t *J = &js[i];                                                      \
            sample(b, metric, "job_name", J->name, NULL, NULL, (double)(expr));                \
        }                                                                                      \
    } while (0)
    JOB_FAMILY("nllm_job_epoch", "gauge", "Epochs completed.", J->epoch);
    JOB_FAMILY("nllm_job_num_epochs", "gauge", "Epochs the job is to train.", J->num_epochs);
    JOB_FAMILY("nllm_job_step", "gauge", "Step within the current epoch (0 when not running).",
               J->step);
    JOB_FAMILY("nllm_job_steps_per_epoch", "gauge",
               "Optimizer steps per epoch (0 = not known yet).", J->steps_per_epoch);
    JOB_FAMILY("nllm_job_global_step", "gauge", "Optimizer steps since the job began.",
               J->global_step);
    JOB_FAMILY("nllm_job_attempt", "gauge", "Attempt number (1 + resumes from a checkpoint).",
               J->attempt);
    JOB_FAMILY("nllm_job_running_loss", "gauge", "Mean training loss of the epoch in progress.",
               J->running_loss);
    JOB_FAMILY("nllm_job_train_loss", "gauge", "Training loss of the last finished epoch.",
               J->train_loss);
    JOB_FAMILY("nllm_job_val_loss", "gauge", "Validation loss of the last finished epoch.",
               J->val_loss);
    JOB_FAMILY("nllm_job_val_ppl", "gauge", "Validation perplexity of the last finished epoch.",
               J->val_ppl);
    JOB_FAMILY("nllm_job_val_accuracy", "gauge",
               "Validation next-token accuracy (0..1) of the last finished epoch.", J->val_acc);
    JOB_FAMILY("nllm_job_best_val_loss", "gauge", "Best validation loss so far.",
               J->best_val_loss);
    JOB_FAMILY("nllm_job_best_epoch", "gauge", "Epoch of the best validation loss.",
               isfinite(J->best_val_loss) ? (double)J->best_epoch : NAN);
    JOB_FAMILY("nllm_job_tokens_per_second", "gauge",
               "Training throughput in tokens per second (0 when not running).",
               J->tokens_per_s);
    JOB_FAMILY("nllm_job_num_devices", "gauge",
               "Devices the job trains on at once, data-parallel (job key num_devices).",
               J->num_devices);
    JOB_FAMILY("nllm_job_seconds_since_checkpoint", "gauge",
               "Seconds since the job's newest checkpoint was written.",
               J->last_ckpt_time > 0 ? fmax(0.0, now - J->last_ckpt_time) : NAN);
    JOB_FAMILY("nllm_job_checkpoint_bytes", "gauge", "Size of the job's newest checkpoint file.",
               J->last_ckpt_time > 0 ? (double)J->ckpt_bytes : NAN);
    JOB_FAMILY("nllm_job_checkpoint_failures_total", "counter",
               "Checkpoints that could not be written or recorded since nllmd started (each "
               "pauses the job; the reason is in nllm_job_error_info, status and events).",
               J->ckpt_failures);
#undef JOB_FAMILY
    family(b, "nllm_job_error_info", "gauge",
           "1 while the job has an error (paused or failed with a reason), by its code: "
           "ENOSPC, EIO, ... for a checkpoint failure, error otherwise; the text is in "
           "/api/jobs/NAME and nllmctl status.");
    for (int i = 0; i < n; i++)
        if (js[i].has_error)
            sample(b, "nllm_job_error_info", "job_name", js[i].name, "code",
                   js[i].error_code ? nllm_err_name(js[i].error_code) : "error", 1);
    family(b, "nllm_job_precision_info", "gauge",
           "The job's GEMM precision (job key precision: fp32, tf32 or bf16), value 1.");
    for (int i = 0; i < n; i++)
        sample(b, "nllm_job_precision_info", "job_name", js[i].name, "precision",
               js[i].precision, 1);

    family(b, "nllm_job_device_memory_peak_bytes", "gauge",
           "Device memory the job's latest run held at most (its backend's count, at least "
           "the model's weights, gradients, Adam state and activations).");
    for (int i = 0; i < n; i++)
        if (js[i].mem_peak)
            sample(b, "nllm_job_device_memory_peak_bytes", "job_name", js[i].name, NULL, NULL,
                   (double)js[i].mem_peak);
    family(b, "nllm_job_device_info", "gauge",
           "1 for each running job and device it runs on (a job on several devices has a "
           "sample for each).");
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        for (int k = 0; k < d->ndevices && !j->removing; k++)
            if (nllmd_job_uses_device(j, k))
                sample(b, "nllm_job_device_info", "job_name", j->name, "device",
                       d->devices[k].name, 1);
    family(b, "nllm_job_rank_tokens_per_second", "gauge",
           "Training throughput of each rank (device) of a running job, in tokens per second "
           "of its own share of the batch; a job on one device has rank 0 only.");
    for (nllm_job_t *j = d->jobs; j; j = j->next) {
        if (j->removing || j->ranks <= 0)
            continue;
        pthread_mutex_lock(&j->mu);
        int have = j->have_step;
        double tps[NLLM_MAX_JOB_DEVICES];
        memcpy(tps, j->rank_tps, sizeof(double) * (size_t)j->ranks);
        pthread_mutex_unlock(&j->mu);
        for (int r = 0; r < j->ranks; r++) {
            char rank[16];
            snprintf(rank, sizeof rank, "%d", r);
            sample3(b, "nllm_job_rank_tokens_per_second", "job_name", j->name, "rank", rank,
                    "device", d->devices[j->rank_dev[r]].name, have ? tps[r] : 0.0);
        }
    }

    refresh_devices(d, s);
    family(b, "nllm_device_busy", "gauge", "1 when at least one job is training on the device.");
    for (int v = 0; v < d->ndevices; v++)
        sample(b, "nllm_device_busy", "device", d->devices[v].name, "kind", d->devices[v].kind,
               d->devices[v].njobs > 0);
    family(b, "nllm_device_jobs", "gauge",
           "Jobs training on the device (at most nllm_device_job_slots).");
    for (int v = 0; v < d->ndevices; v++)
        sample(b, "nllm_device_jobs", "device", d->devices[v].name, "kind", d->devices[v].kind,
               d->devices[v].njobs);
    family(b, "nllm_device_job_slots", "gauge", "Jobs the device may run at once "
           "(--jobs-per-device).");
    for (int v = 0; v < d->ndevices; v++)
        sample(b, "nllm_device_job_slots", "device", d->devices[v].name, "kind",
               d->devices[v].kind, d->opt.jobs_per_device);
    family(b, "nllm_device_healthy", "gauge",
           "0 while the device is out of service after a device fault (no job is placed on it "
           "until `nllmctl device reset`), else 1.");
    for (int v = 0; v < d->ndevices; v++)
        sample(b, "nllm_device_healthy", "device", d->devices[v].name, "kind",
               d->devices[v].kind, !d->devices[v].unhealthy);
    family(b, "nllm_device_faults_total", "counter",
           "Device faults (a job's backend failed with a device error) since nllmd started.");
    for (int v = 0; v < d->ndevices; v++)
        sample(b, "nllm_device_faults_total", "device", d->devices[v].name, "kind",
               d->devices[v].kind, (double)d->devices[v].faults);
    family(b, "nllm_device_memory_total_bytes", "gauge", "Device memory (GPUs only).");
    for (int v = 0; v < d->ndevices; v++)
        if (d->devices[v].mem_total)
            sample(b, "nllm_device_memory_total_bytes", "device", d->devices[v].name, NULL, NULL,
                   (double)d->devices[v].mem_total);
    family(b, "nllm_device_memory_free_bytes", "gauge", "Free device memory (GPUs only).");
    for (int v = 0; v < d->ndevices; v++)
        if (d->devices[v].mem_total)
            sample(b, "nllm_device_memory_free_bytes", "device", d->devices[v].name, NULL, NULL,
                   (double)d->devices[v].mem_free);
    free(js);
}

/* ---- /api ---------------------------------------------------------------- */

static json_t *epoch_json(const nllm_catalog_epoch_t *e)
{
    return json_pack("{s:I,s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "epoch", (json_int_t)e->epoch,
                     "attempt", (json_int_t)e->attempt, "train_loss",
                     nllm_json_num(e->train_loss), "val_loss", nllm_json_num(e->val_loss),
                     "train_ppl", nllm_json_num(e->train_ppl), "val_ppl",
                     nllm_json_num(e->val_ppl), "val_acc", nllm_json_num(e->val_acc), "seconds",
                     nllm_json_num(e->seconds), "tokens_per_s", nllm_json_num(e->tokens_per_s));
}

static json_t *ckpt_json(const nllm_catalog_ckpt_t *k)
{
    return json_pack("{s:s,s:s,s:I,s:I,s:s,s:I,s:s,s:o,s:f,s:s,s:o,s:I}", "name", k->name,
                     "kind", k->kind, "epoch", (json_int_t)k->epoch, "step", (json_int_t)k->step,
                     "path", k->path, "size", (json_int_t)k->size, "checksum", k->checksum,
                     "val_loss", nllm_json_num(k->val_loss), "created", k->created_at, "status",
                     k->status, "bad_reason",
                     k->bad_reason ? json_string(k->bad_reason) : json_null(), "attempt",
                     (json_int_t)k->attempt);
}

static void api_job(http_conn_t *c, const char *name, int last)
{
    nllmd_t *d = c->srv->d;
    nllm_job_t *j = nllmd_job_find(d, name);
    if (!j) {
        char msg[160];
        size_t n = strlen(name);
        int plain = n > 0 && n <= NLLM_CATALOG_NAME_MAX &&
                    strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789._-") == n;
        if (plain)
            snprintf(msg, sizeof msg, "no job named %s: see /api/jobs", name);
        else
            snprintf(msg, sizeof msg, "no such job: see /api/jobs");
        respond_json_error(c, 404, "not_found", msg, last);
        return;
    }
    json_t *o = nllmd_job_status_json(j);
    nllm_err_t err;
    nllm_catalog_epoch_t *eps;
    nllm_catalog_ckpt_t *cks;
    size_t n;
    if (nllm_catalog_epoch_list(d->cat, j->name, 0, &eps, &n, &err) < 0) {
        json_decref(o);
        respond_json_error(c, 500, "internal", err.msg, 1);
        return;
    }
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, epoch_json(&eps[i]));
    nllm_catalog_epochs_free(eps, n);
    json_object_set_new(o, "history", a);
    if (nllm_catalog_ckpt_list(d->cat, j->name, 1, &cks, &n, &err) < 0) {
        json_decref(o);
        respond_json_error(c, 500, "internal", err.msg, 1);
        return;
    }
    a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, ckpt_json(&cks[i]));
    nllm_catalog_ckpts_free(cks, n);
    json_object_set_new(o, "checkpoints", a);
    respond_json(c, 200, o, last);
}

static json_t *daemon_json(nllmd_t *d)
{
    json_t *devs = json_array();
    for (int k = 0; k < d->ndevices; k++) {
        nllmd_device_t *v = &d->devices[k];
        json_t *jobs = nllmd_device_jobs_json(d, k);
        json_t *first = json_array_get(jobs, 0);
        json_t *o = json_pack("{s:s,s:s,s:s,s:O,s:o}", "name", v->name, "kind", v->kind, "model",
                              v->gpu, "busy", first ? first : json_null(), "jobs", jobs);
        nllmd_device_health_json(v, o);
        nllmd_device_kernels_json(v, o);
        json_array_append_new(devs, o);
    }
    return json_pack("{s:s,s:f,s:i,s:o,s:i,s:i,s:b}", "version", NLLMD_VERSION, "uptime",
                     uv_now(d->loop) / 1000.0 - d->started, "clients", d->nconns, "devices", devs,
                     "jobs_per_device", d->opt.jobs_per_device, "max_jobs", d->opt.max_jobs,
                     "shutting_down", d->shutting_down);
}

/* ---- routing -------------------------------------------------------------- */

static int hexval(int ch)
{
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

/* Percent-decodes the path of the request target into out; -1 if bad. */
static int request_path(const http_conn_t *c, char *out, size_t outn)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(c->url, c->url_len, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH)))
        return -1;
    const char *p = c->url + u.field_data[UF_PATH].off;
    size_t n = u.field_data[UF_PATH].len, k = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)p[i];
        if (ch == '%') {
            int hi = i + 2 < n ? hexval(p[i + 1]) : -1, lo = i + 2 < n ? hexval(p[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            ch = hi * 16 + lo;
            i += 2;
        }
        if (k + 1 >= outn)
            return -1;
        out[k++] = (char)ch;
    }
    out[k] = '\0';
    return 0;
}

static void route(http_conn_t *c)
{
    nllmd_http_t *s = c->srv;
    char path[URL_MAX];
    if (request_path(c, path, sizeof path) < 0) {
        respond_text(c, 400, "the request target is not a valid path", 1);
        return;
    }
    int last = !http_should_keep_alive(&c->parser) || c->parser.upgrade;
    if (!strcmp(path, "/") || !strcmp(path, "/index.html")) {
        respond(c, 200, CT_HTML, (const char *)nllmd_dashboard_html, nllmd_dashboard_html_len,
                last);
    } else if (!strcmp(path, "/metrics")) {
        buf_t b = {0};
        metrics_text(s, &b);
        respond(c, 200, CT_PROM, b.p, b.len, last);
        free(b.p);
    } else if (!strcmp(path, "/api/jobs") || !strcmp(path, "/api/jobs/")) {
        json_t *a = json_array();
        for (nllm_job_t *j = s->d->jobs; j; j = j->next)
            if (!j->removing)
                json_array_append_new(a, nllmd_job_status_json(j));
        respond_json(c, 200, json_pack("{s:o}", "jobs", a), last);
    } else if (!strncmp(path, "/api/jobs/", 10) && !strchr(path + 10, '/')) {
        api_job(c, path + 10, last);
    } else if (!strcmp(path, "/api/daemon")) {
        respond_json(c, 200, daemon_json(s->d), last);
    } else if (!strncmp(path, "/api/", 5)) {
        respond_json_error(c, 404, "not_found", "no such endpoint: see /api/jobs", last);
    } else {
        respond_text(c, 404, "no such page: try / (dashboard), /metrics or /api/jobs", last);
    }
}

/* ---- the Host check (DNS rebinding) -------------------------------------- */

static int is_ip_literal(const char *h, unsigned char *bytes, int *family)
{
    unsigned char tmp[16];
    if (inet_pton(AF_INET, h, bytes ? bytes : tmp) == 1) {
        if (family)
            *family = AF_INET;
        return 1;
    }
    if (inet_pton(AF_INET6, h, bytes ? bytes : tmp) == 1) {
        if (family)
            *family = AF_INET6;
        return 1;
    }
    return 0;
}

static int is_loopback_ip(const unsigned char *a, int family)
{
    static const unsigned char v6lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    return family == AF_INET ? a[0] == 127 : memcmp(a, v6lo, 16) == 0;
}

/* Host: "name", "name:port", "[v6]" or "[v6]:port". Allowed: the
 * listener's own address (any loopback form and "localhost" for loopback
 * listeners; any IP literal for a wildcard listener), "localhost", and
 * this machine's host name for non-loopback listeners; a port, when
 * given, must be the listener's. */
static int host_allowed(const nllmd_http_t *s, const char *h, size_t n)
{
    char host[256];
    const char *port = NULL, *end = h + n;
    size_t hl;
    if (n == 0 || n >= sizeof host)
        return 0;
    if (h[0] == '[') {
        const char *e = memchr(h, ']', n);
        if (!e)
            return 0;
        hl = (size_t)(e - h - 1);
        memcpy(host, h + 1, hl);
        if (e + 1 < end) {
            if (e[1] != ':')
                return 0;
            port = e + 2;
        }
        host[hl] = '\0';
        if (!strchr(host, ':'))
            return 0; /* brackets hold IPv6 literals only */
    } else {
        const char *colon = memchr(h, ':', n);
        hl = colon ? (size_t)(colon - h) : n;
        if (colon) {
            if (memchr(colon + 1, ':', (size_t)(end - colon - 1)))
                return 0;
            port = colon + 1;
        }
        memcpy(host, h, hl);
        host[hl] = '\0';
    }
    if (port && port < end) {
        long v = 0;
        for (const char *p = port; p < end; p++) {
            if (*p < '0' || *p > '9' || v > 65535)
                return 0;
            v = v * 10 + (*p - '0');
        }
        if (v != s->port)
            return 0;
    }
    for (char *p = host; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (hl > 1 && host[hl - 1] == '.')
        host[--hl] = '\0'; /* "localhost." */
    if (hl == 0)
        return 0;
    unsigned char a[16];
    int fam;
    if (is_ip_literal(host, a, &fam)) {
        if (s->wildcard)
            return 1;
        if (s->loopback)
            return is_loopback_ip(a, fam);
        return fam == s->family && !memcmp(a, s->addr, fam == AF_INET ? 4 : 16);
    }
    if (!strcmp(host, "localhost"))
        return 1;
    if (!s->loopback && s->hostname[0]) {
        size_t short_len = strcspn(s->hostname, ".");
        if (!strcmp(host, s->hostname) ||
            (strlen(host) == short_len && !strncmp(host, s->hostname, short_len)))
            return 1;
    }
    return 0;
}

/* ---- parser callbacks ---------------------------------------------------- */

static int on_message_begin(http_parser *p)
{
    http_conn_t *c = p->data;
    c->in_message = 1;
    c->is_head = 0;
    c->rejected = 0;
    c->url_len = 0;
    c->url_overflow = 0;
    c->field_len = 0;
    c->last_was_value = 1;
    c->cur_is_host = 0;
    c->host_len = 0;
    c->host_count = 0;
    c->host_overflow = 0;
    timer_set(c, c->srv->head_timeout_ms); /* the whole request within this */
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    http_conn_t *c = p->data;
    if (c->url_len + n >= sizeof c->url) {
        c->url_overflow = 1;
        return 0;
    }
    memcpy(c->url + c->url_len, at, n);
    c->url_len += n;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    http_conn_t *c = p->data;
    if (c->last_was_value) {
        c->field_len = 0;
        c->last_was_value = 0;
    }
    for (size_t i = 0; i < n; i++, c->field_len++)
        if (c->field_len < sizeof c->field)
            c->field[c->field_len] = (char)tolower((unsigned char)at[i]);
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    http_conn_t *c = p->data;
    if (!c->last_was_value) {
        c->last_was_value = 1;
        c->cur_is_host = c->field_len == 4 && !memcmp(c->field, "host", 4);
        if (c->cur_is_host) {
            c->host_count++;
            c->host_len = 0;
        }
    }
    if (c->cur_is_host) {
        if (c->host_len + n >= sizeof c->hosthdr)
            c->host_overflow = 1;
        else {
            memcpy(c->hosthdr + c->host_len, at, n);
            c->host_len += n;
        }
    }
    return 0;
}

/* Checks everything known once the head is in; a rejected request is
 * answered here and ends the connection (a body may follow). */
static int on_headers_complete(http_parser *p)
{
    http_conn_t *c = p->data;
    nllmd_http_t *s = c->srv;
    int status = 0;
    const char *why = NULL;
    char msg[256];
    int http11 = p->http_major > 1 || (p->http_major == 1 && p->http_minor >= 1);
    c->is_head = p->method == HTTP_HEAD;
    if (c->url_overflow) {
        status = 414, why = "the request target is too long";
    } else if (c->host_count > 1 || c->host_overflow || (http11 && c->host_count == 0)) {
        status = 400, why = "a request needs exactly one valid Host header";
    } else if (c->host_count == 1 && !host_allowed(s, c->hosthdr, c->host_len)) {
        int br = s->family == AF_INET6 && !s->wildcard && !s->loopback;
        snprintf(msg, sizeof msg,
                 "the Host header does not name this listener (DNS rebinding defence): use "
                 "its address, e.g. http://%s%s%s:%d/",
                 br ? "[" : "", s->wildcard || s->loopback ? "localhost" : s->host, br ? "]" : "",
                 s->port);
        status = 421, why = msg;
    } else if (p->method != HTTP_GET && p->method != HTTP_HEAD) {
        status = 405, why = "this listener is read-only: GET and HEAD only";
    } else {
        struct http_parser_url u;
        http_parser_url_init(&u);
        if (http_parser_parse_url(c->url, c->url_len, 0, &u) != 0)
            status = 400, why = "the request target is not a valid URL";
        else if ((u.field_set & (1 << UF_HOST))) {
            /* absolute form: its authority must pass the same check */
            char auth[300];
            size_t hl = u.field_data[UF_HOST].len;
            int v6 = memchr(c->url + u.field_data[UF_HOST].off, ':', hl) != NULL;
            int k = snprintf(auth, sizeof auth, "%s%.*s%s", v6 ? "[" : "", (int)hl,
                             c->url + u.field_data[UF_HOST].off, v6 ? "]" : "");
            if ((u.field_set & (1 << UF_PORT)) && k > 0 && (size_t)k < sizeof auth)
                snprintf(auth + k, sizeof auth - (size_t)k, ":%u", u.port);
            if (!host_allowed(s, auth, strlen(auth)))
                status = 421, why = "the request target does not name this listener";
        }
    }
    if (status) {
        c->rejected = 1;
        respond_text(c, status, why, 1);
        http_parser_pause(p, 1);
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    http_conn_t *c = p->data;
    c->in_message = 0;
    if (c->rejected || c->finishing)
        return 0;
    route(c);
    if (c->finishing)
        http_parser_pause(p, 1);
    else
        timer_set(c, c->srv->idle_timeout_ms);
    return 0;
}

/* ---- reading and accepting ------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char slab[65536]; /* the loop is single-threaded; the parser copies */
    *buf = uv_buf_init(slab, sizeof slab);
}

static void conn_feed(http_conn_t *c, const char *data, size_t n);

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    http_conn_t *c = st->data;
    if (c->closing)
        return;
    if (nread < 0) {
        /* EOF or error: answers still queued are written first (half-close) */
        c->eof = 1;
        uv_read_stop(st);
        if (nread != UV_EOF || c->nwrites == 0)
            conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    conn_feed(c, buf->base, (size_t)nread);
}

/* Parses bytes the connection received; answers what they complete. */
static void conn_feed(http_conn_t *c, const char *data, size_t n)
{
    if (c->finishing)
        return; /* lingering: discard */
    http_parser_execute(&c->parser, &c->srv->settings, data, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->closing || c->finishing)
        return;
    if (e != HPE_OK) {
        c->is_head = 0;
        if (e == HPE_HEADER_OVERFLOW)
            respond_text(c, 431, "the request head is larger than 8 KiB", 1);
        else
            respond_text(c, 400, http_errno_description(e), 1);
    }
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static void on_connection(uv_stream_t *server, int status)
{
    nllmd_http_t *s = server->data;
    if (status < 0 || s->closing)
        return;
    if (s->nconns >= NLLMD_HTTP_MAX_CONNS) {
        /* accept and drop at once, so the backlog keeps moving */
        uv_tcp_t *t = xrealloc(NULL, sizeof *t);
        uv_tcp_init(s->d->loop, t);
        uv_accept(server, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, free_handle);
        return;
    }
    http_conn_t *c = xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    c->srv = s;
    uv_tcp_init(s->d->loop, &c->tcp);
    uv_timer_init(s->d->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    s->refs++;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    timer_set(c, s->head_timeout_ms);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_close(c);
}

/* ---- start and close ---------------------------------------------------- */

static uint64_t env_ms(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    char *end;
    if (!v || !*v)
        return dflt;
    unsigned long long x = strtoull(v, &end, 10);
    return *end || x == 0 ? dflt : (uint64_t)x;
}

static void listener_closed(uv_handle_t *h)
{
    srv_unref(h->data);
}

static void settings_init(nllmd_http_t *s)
{
    http_parser_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_message_complete = on_message_complete;
    http_parser_set_max_header_size(NLLMD_HTTP_MAX_HEAD);
}

int nllmd_http_start(nllmd_t *d, nllm_err_t *err)
{
    const char *spec = d->opt.metrics[0] ? d->opt.metrics : NLLMD_HTTP_DEFAULT_ADDR;
    int explicit = d->opt.metrics[0] != '\0';
    if (!strcmp(spec, "none") || !strcmp(spec, "off"))
        return 0;
    char host[256];
    snprintf(host, sizeof host, "%s", spec);
    char *colon = strrchr(host, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || end == colon + 1 || *end || port < 0 || port > 65535)
        return nllm_err_set(err, NLLM_EINVAL,
                            "--metrics %s: expected HOST:PORT (e.g. 127.0.0.1:9477) or none",
                            spec);
    *colon = '\0';
    char *h = host;
    if (*h == '[') {
        h++;
        char *e = strchr(h, ']');
        if (!e || e[1])
            return nllm_err_set(err, NLLM_EINVAL, "--metrics %s: expected [IPV6]:PORT", spec);
        *e = '\0';
    } else if (strchr(h, ':')) {
        return nllm_err_set(err, NLLM_EINVAL, "--metrics %s: write IPv6 addresses as [ADDR]:PORT",
                            spec);
    }
    if (!strcmp(h, "localhost"))
        h = "127.0.0.1";
    nllmd_http_t *s = xrealloc(NULL, sizeof *s);
    memset(s, 0, sizeof *s);
    s->d = d;
    snprintf(s->host, sizeof s->host, "%s", h);
    if (!is_ip_literal(s->host, s->addr, &s->family)) {
        free(s);
        return nllm_err_set(err, NLLM_EINVAL,
                            "--metrics %s: the host must be an IP address or localhost", spec);
    }
    static const unsigned char zero[16];
    s->loopback = is_loopback_ip(s->addr, s->family);
    s->wildcard = !memcmp(s->addr, zero, s->family == AF_INET ? 4 : 16);
    if (gethostname(s->hostname, sizeof s->hostname - 1) == 0)
        for (char *p = s->hostname; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    else
        s->hostname[0] = '\0';
    s->head_timeout_ms = env_ms("NLLMD_HTTP_HEAD_TIMEOUT_MS", NLLMD_HTTP_HEAD_TIMEOUT_MS);
    s->idle_timeout_ms = env_ms("NLLMD_HTTP_IDLE_TIMEOUT_MS", NLLMD_HTTP_IDLE_TIMEOUT_MS);
    settings_init(s);

    struct sockaddr_storage sa;
    int rc = s->family == AF_INET6 ? uv_ip6_addr(s->host, (int)port, (struct sockaddr_in6 *)&sa)
                                   : uv_ip4_addr(s->host, (int)port, (struct sockaddr_in *)&sa);
    uv_tcp_init(d->loop, &s->listener);
    s->listener.data = s;
    s->refs = 1;
    if (rc == 0)
        rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc < 0) {
        s->closing = 1;
        uv_close((uv_handle_t *)&s->listener, listener_closed);
        if (!explicit) {
            nllmd_log(d, NULL,
                      "metrics: cannot listen on %s (%s); the HTTP listener is off (set "
                      "--metrics HOST:PORT or --metrics none)",
                      spec, uv_strerror(rc));
            return 0;
        }
        return nllm_err_set(err, NLLM_EIO,
                            "--metrics %s: cannot listen: %s (pick another port, or "
                            "--metrics none)",
                            spec, uv_strerror(rc));
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen) == 0)
        s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
    d->http = s;
    nllmd_log(d, NULL, "metrics: http://%s%s%s:%d/ (dashboard, /metrics, /api/jobs)%s",
              s->family == AF_INET6 ? "[" : "", s->host, s->family == AF_INET6 ? "]" : "",
              s->port,
              s->loopback ? "" : "; not loopback: anyone who can reach it can read job status");
    return 0;
}

void nllmd_http_close(nllmd_t *d)
{
    nllmd_http_t *s = d->http;
    if (!s || s->closing)
        return;
    s->closing = 1;
    d->http = NULL;
    for (http_conn_t *c = s->conns; c; c = c->next)
        conn_close(c);
    uv_close((uv_handle_t *)&s->listener, listener_closed);
}

int nllmd_http_parse_request(nllmd_t *d, const char *host, int port, const char *data,
                             size_t len, size_t piece, int *nresponses)
{
    nllmd_http_t *s = xrealloc(NULL, sizeof *s);
    memset(s, 0, sizeof *s);
    s->d = d;
    snprintf(s->host, sizeof s->host, "%s", host);
    if (!is_ip_literal(s->host, s->addr, &s->family) || port < 0 || port > 65535) {
        free(s);
        return NLLM_EINVAL;
    }
    static const unsigned char zero[16];
    s->loopback = is_loopback_ip(s->addr, s->family);
    s->wildcard = !memcmp(s->addr, zero, s->family == AF_INET ? 4 : 16);
    snprintf(s->hostname, sizeof s->hostname, "nllm-host.example");
    s->port = port;
    settings_init(s);
    http_conn_t *c = xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    c->srv = s;
    c->detached = 1;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (piece == 0 || piece > 65536)
        piece = 65536; /* on_alloc's slab: the most one read delivers */
    for (size_t off = 0; off < len && !c->finishing;) {
        size_t n = len - off < piece ? len - off : piece;
        conn_feed(c, data + off, n);
        off += n;
    }
    int status = c->first_status;
    if (nresponses)
        *nresponses = c->nresponses;
    free(c);
    free(s);
    return status;
}
