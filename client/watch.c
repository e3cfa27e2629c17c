/* watch.c -- the live training display of `nllmctl watch`; see watch.h.
 *
 * Two renderings of the same notifications: on a terminal (stdout is a TTY,
 * NO_COLOR unset, TERM not dumb) a progress bar redrawn in place with \r at
 * most 10 times a second; otherwise plain lines, one progress line at most
 * every 10 seconds plus one at each epoch end, so logs stay readable.
 * Invariant: on a terminal, `bar_shown` says whether the cursor sits on an
 * unfinished bar line, which must be cleared before any other output.
 */
#include "watch.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "fmt.h"

#define DRAW_INTERVAL 0.1   /* seconds between bar redraws */
#define PLAIN_INTERVAL 10.0 /* seconds between plain progress lines */

typedef struct {
    const char *name;
    int tty, color;
    int64_t cur_epoch; /* 0-based running epoch whose header is shown; -1 none */
    int64_t num_epochs;
    int have_prog;
    int64_t step, steps;
    double loss, tps, elapsed, eta;
    int bar_shown, dirty;
    char state[16]; /* last state shown or reported */
    double last_draw, last_plain;
} view_t;

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *sgr(const view_t *v, const char *code)
{
    return v->color ? code : "";
}
#define BOLD "\033[1m"
#define GREEN "\033[32m"
#define RED "\033[31m"
#define DIM "\033[2m"
#define RESET "\033[0m"

static int term_cols(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
        return ws.ws_col;
    return 80;
}

static void clear_bar(view_t *v)
{
    if (v->bar_shown) {
        fputs("\r\033[K", stdout);
        v->bar_shown = 0;
    }
}

static void progress_text(const view_t *v, char *buf, size_t n)
{
    char el[32], eta[32], tps[32];
    nllm_fmt_duration(v->elapsed, el, sizeof el);
    nllm_fmt_duration(v->eta, eta, sizeof eta);
    nllm_fmt_count(v->tps, tps, sizeof tps);
    snprintf(buf, n, "%lld/%lld [%s<%s, loss=%.4f, %s tok/s]", (long long)v->step,
             (long long)v->steps, el, eta, v->loss, tps);
}

static double fraction(const view_t *v)
{
    if (v->steps <= 0)
        return 0;
    double f = (double)v->step / (double)v->steps;
    return f < 0 ? 0 : f > 1 ? 1 : f;
}

static void draw_bar(view_t *v)
{
    char tail[160];
    progress_text(v, tail, sizeof tail);
    double f = fraction(v);
    char head[16];
    snprintf(head, sizeof head, "%3d%%|", (int)(f * 100));
    /* 3 columns spare: a ^C echoed after the bar must not wrap the line */
    int w = term_cols() - 3 - (int)strlen(head) - 2 - (int)strlen(tail);
    if (w > 60)
        w = 60;
    char bar[60 * 3 + 8];
    size_t o = 0;
    if (w >= 5) {
        static const char *const part[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
        double cells = f * w;
        int full = (int)cells;
        int rem = (int)((cells - full) * 8);
        for (int i = 0; i < full; i++)
            o += (size_t)snprintf(bar + o, sizeof bar - o, "█");
        int used = full;
        if (full < w && rem > 0) {
            o += (size_t)snprintf(bar + o, sizeof bar - o, "%s", part[rem]);
            used++;
        }
        for (; used < w; used++)
            bar[o++] = ' ';
    }
    bar[o] = '\0';
    fputs("\r\033[K", stdout);
    if (w >= 5)
        printf("%s%s| %s", head, bar, tail);
    else
        printf("%3d%% %s", (int)(f * 100), tail);
    fflush(stdout);
    v->bar_shown = 1;
    v->dirty = 0;
    v->last_draw = now_mono();
}

static void plain_progress(view_t *v)
{
    char tail[160];
    progress_text(v, tail, sizeof tail);
    printf("  %3d%% %s\n", (int)(fraction(v) * 100), tail);
    fflush(stdout);
    v->last_plain = now_mono();
}

static void begin_epoch(view_t *v, int64_t epoch0, int64_t num_epochs)
{
    if (num_epochs > 0)
        v->num_epochs = num_epochs;
    if (epoch0 == v->cur_epoch)
        return;
    if (v->num_epochs > 0 && epoch0 >= v->num_epochs) { /* nothing left to train */
        v->cur_epoch = epoch0;
        return;
    }
    clear_bar(v);
    printf("%sEpoch %lld/%lld%s\n", sgr(v, BOLD), (long long)epoch0 + 1,
           (long long)v->num_epochs, sgr(v, RESET));
    fflush(stdout);
    v->cur_epoch = epoch0;
    v->have_prog = 0;
    v->step = 0;
    v->last_plain = now_mono();
}

static void header(view_t *v, const json_t *st)
{
    const json_t *cfg = json_object_get(st, "config");
    char params[32] = "?";
    double np = nllm_model_params_of(cfg);
    if (np > 0)
        nllm_fmt_count(np, params, sizeof params);
    char devbuf[512];
    const char *dev = nllm_fmt_devices(st, devbuf, sizeof devbuf, "");
    if (!*dev)
        dev = nllm_j_str(cfg, "device", "");
    if (!*dev)
        dev = "any free device";
    printf("%sJob %s%s: %s, epoch %lld/%lld, attempt %lld\n", sgr(v, BOLD), v->name,
           sgr(v, RESET), nllm_j_str(st, "state", "?"), (long long)nllm_j_int(st, "epoch", 0),
           (long long)nllm_j_int(st, "num_epochs", 0), (long long)nllm_j_int(st, "attempt", 1));
    if (cfg) {
        double dropout = 0, lr = 0;
        nllm_j_num(cfg, "dropout", &dropout);
        nllm_j_num(cfg, "learning_rate", &lr);
        printf("Model: vocab %lld, embed %lld, hidden %lld, context %lld, layers %lld, "
               "seq %lld, dropout %g (%s parameters)\n",
               (long long)nllm_j_int(cfg, "vocab_size", 0),
               (long long)nllm_j_int(cfg, "embed_dim", 0),
               (long long)nllm_j_int(cfg, "hidden_dim", 0),
               (long long)nllm_j_int(cfg, "context_dim", 0),
               (long long)nllm_j_int(cfg, "num_layers", 0),
               (long long)nllm_j_int(cfg, "max_seq_length", 0), dropout, params);
        const json_t *clip = json_object_get(cfg, "clip");
        char clipbuf[32];
        if (json_is_number(clip))
            snprintf(clipbuf, sizeof clipbuf, "%g", json_number_value(clip));
        else
            snprintf(clipbuf, sizeof clipbuf, "%s", json_is_string(clip) ? json_string_value(clip) : "?");
        printf("Training: %lld epochs, batch %lld, lr %g, clip %s, patience %lld, seed %lld, "
               "tokenizer %s\n",
               (long long)nllm_j_int(cfg, "num_epochs", 0),
               (long long)nllm_j_int(cfg, "batch_size", 0), lr, clipbuf,
               (long long)nllm_j_int(cfg, "patience", 0), (long long)nllm_j_int(cfg, "seed", 0),
               nllm_j_str(cfg, "tokenizer", "?"));
        const char *val = nllm_j_str(cfg, "val", "");
        printf("Data: %s%s%s\n", nllm_j_str(cfg, "data", "?"), *val ? ", val " : "", val);
    }
    printf("Device: %s, precision %s\n", dev,
           nllm_j_str(st, "precision", cfg ? nllm_j_str(cfg, "precision", "fp32") : "fp32"));
    fflush(stdout);
}

static void on_progress(view_t *v, const json_t *p)
{
    begin_epoch(v, nllm_j_int(p, "epoch", v->cur_epoch < 0 ? 0 : v->cur_epoch),
                nllm_j_int(p, "num_epochs", 0));
    v->have_prog = 1;
    v->step = nllm_j_int(p, "step", v->step);
    v->steps = nllm_j_int(p, "steps_per_epoch", v->steps);
    nllm_j_num(p, "loss", &v->loss);
    nllm_j_num(p, "tokens_per_s", &v->tps);
    nllm_j_num(p, "elapsed", &v->elapsed);
    nllm_j_num(p, "eta", &v->eta);
    double t = now_mono();
    if (v->tty) {
        if (t - v->last_draw >= DRAW_INTERVAL)
            draw_bar(v);
        else
            v->dirty = 1;
    } else if (t - v->last_plain >= PLAIN_INTERVAL) {
        plain_progress(v);
    }
}

static void on_epoch(view_t *v, const json_t *p)
{
    int64_t ep = nllm_j_int(p, "epoch", 0); /* 1-based, completed */
    begin_epoch(v, ep - 1, nllm_j_int(p, "num_epochs", 0));
    double secs = 0, tps = 0;
    nllm_j_num(p, "seconds", &secs);
    nllm_j_num(p, "tokens_per_s", &tps);
    if (v->have_prog) { /* the epoch's last progress line, at 100% */
        if (v->steps > 0)
            v->step = v->steps;
        v->elapsed = secs > 0 ? secs : v->elapsed;
        v->eta = 0;
        if (v->tty) {
            draw_bar(v);
            fputc('\n', stdout);
            v->bar_shown = 0;
        } else {
            plain_progress(v);
        }
    }
    char tl[32], tp[32], vl[32], vp[32], va[32], tk[32], el[32];
    nllm_fmt_field(p, "train_loss", 4, tl, sizeof tl);
    nllm_fmt_field(p, "train_ppl", 2, tp, sizeof tp);
    nllm_fmt_field(p, "val_loss", 4, vl, sizeof vl);
    nllm_fmt_field(p, "val_ppl", 2, vp, sizeof vp);
    nllm_fmt_percent_field(p, "val_acc", va, sizeof va);
    nllm_fmt_count(tps, tk, sizeof tk);
    nllm_fmt_duration(secs, el, sizeof el);
    printf("Train: Loss=%s PPL=%s (%s, %s tok/s)\n", tl, tp, el, tk);
    printf("Val: Loss=%s PPL=%s Acc=%s%s%s%s\n", vl, vp, va, sgr(v, GREEN),
           nllm_j_bool(p, "is_best", 0) ? " ✓" : "", sgr(v, RESET));
    fflush(stdout);
    v->have_prog = 0;
}

static void on_checkpoint(view_t *v, const json_t *p)
{
    clear_bar(v);
    char sz[32] = "";
    double size;
    if (nllm_j_num(p, "size", &size))
        nllm_fmt_size(size, sz, sizeof sz);
    printf("%sSaved checkpoint %s (epoch %lld%s%s)%s\n", sgr(v, DIM),
           nllm_j_str(p, "checkpoint", "?"), (long long)nllm_j_int(p, "epoch", 0),
           *sz ? ", " : "", sz, sgr(v, RESET));
    fflush(stdout);
    if (v->tty && v->have_prog)
        draw_bar(v);
}

static int terminal_state(const char *s)
{
    return !strcmp(s, "completed") || !strcmp(s, "stopped") || !strcmp(s, "paused") ||
           !strcmp(s, "interrupted") || !strcmp(s, "failed");
}

/* Final lines once the job has ended; returns the exit code. */
static int finish(view_t *v, nllm_conn_t *c, const char *state, const char *error)
{
    clear_bar(v);
    json_t *st = NULL, *params = json_pack("{ss}", "name", v->name);
    char code[64];
    nllm_err_t err = {0};
    if (nllm_conn_call(c, "status", params, &st, code, sizeof code, &err) != NLLM_CALL_OK)
        st = NULL;
    json_decref(params);
    if (!error || !*error)
        error = st ? nllm_j_str(st, "error", NULL) : NULL;
    if (!strcmp(state, "failed")) {
        fflush(stdout);
        fprintf(stderr, "nllmctl: job %s failed: %s\n", v->name,
                error && *error ? error : "no reason given (see `nllmctl events NAME`)");
        json_decref(st);
        return 1;
    }
    printf("%sJob %s %s%s", sgr(v, BOLD), v->name, state, sgr(v, RESET));
    if (st) {
        double best, ppl = NAN;
        int64_t ep = nllm_j_int(st, "epoch", 0), step = nllm_j_int(st, "step", 0);
        int64_t spe = nllm_j_int(st, "steps_per_epoch", 0);
        printf(" after epoch %lld/%lld", (long long)ep, (long long)nllm_j_int(st, "num_epochs", 0));
        if (step > 0 && spe > 0 && step < spe)
            printf(" (+%lld/%lld steps of epoch %lld)", (long long)step, (long long)spe,
                   (long long)ep + 1);
        if (nllm_j_num(st, "best_val_loss", &best)) {
            printf("; best val loss %.4f", best);
            if (best < 700)
                ppl = exp(best);
            if (isfinite(ppl))
                printf(" (PPL %.2f)", ppl);
            printf(" at epoch %lld", (long long)nllm_j_int(st, "best_epoch", 0));
        }
    }
    printf("\n");
    if (error && *error)
        printf("Reason: %s\n", error);
    if (!strcmp(state, "paused") || !strcmp(state, "interrupted"))
        printf("Continue it with `nllmctl resume %s`.\n", v->name);
    fflush(stdout);
    json_decref(st);
    return 0;
}

static void on_resumed(view_t *v, const json_t *r)
{
    clear_bar(v);
    int64_t ep = nllm_j_int(r, "epoch", 0);
    printf("Resuming from checkpoint: %s\n", nllm_j_str(r, "checkpoint", "?"));
    printf("Completed epochs: %lld\n", (long long)ep);
    double best, ppl;
    if (nllm_j_num(r, "best_val_loss", &best)) {
        if (nllm_j_num(r, "best_val_ppl", &ppl))
            printf("Best val loss so far: %.4f (PPL %.2f)\n", best, ppl);
        else
            printf("Best val loss so far: %.4f\n", best);
    }
    printf("Resuming from epoch %lld\n", (long long)ep + 1);
    fflush(stdout);
    v->cur_epoch = -1;
}

/* Prints the state change; returns -1 to go on, else the exit code. */
static int on_state(view_t *v, nllm_conn_t *c, const json_t *p)
{
    const char *state = nllm_j_str(p, "state", "?");
    const json_t *r = json_object_get(p, "resumed_from");
    if (json_is_object(r))
        on_resumed(v, r);
    if (terminal_state(state))
        return finish(v, c, state, nllm_j_str(p, "error", NULL));
    if (!strcmp(state, v->state))
        return -1; /* no change worth a line */
    snprintf(v->state, sizeof v->state, "%s", state);
    clear_bar(v);
    if (!strcmp(state, "queued"))
        printf("Queued: waiting for a free device\n");
    else if (!strcmp(state, "pausing"))
        printf("Pausing at the next step boundary...\n");
    else if (!strcmp(state, "running"))
        printf("Running\n");
    else
        printf("State: %s\n", state);
    fflush(stdout);
    if (v->tty && v->have_prog)
        draw_bar(v);
    return -1;
}

static int lost(view_t *v, nllm_conn_t *c, const nllm_err_t *err)
{
    clear_bar(v);
    fflush(stdout);
    fprintf(stderr, "nllmctl: lost the connection while watching %s: %s\n", v->name,
            err->msg[0] ? err->msg : c->where);
    return 3;
}

int nllm_watch_run(nllm_conn_t *c, const char *name, int json, int watch_sent,
                   uint32_t watch_msgid)
{
    view_t v;
    memset(&v, 0, sizeof v);
    v.name = name;
    v.cur_epoch = -1;
    const char *term = getenv("TERM");
    v.tty = !json && isatty(STDOUT_FILENO) && !getenv("NO_COLOR") &&
            !(term && !strcmp(term, "dumb"));
    v.color = v.tty;

    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint; /* no SA_RESTART: poll must see EINTR */
    sigemptyset(&sa.sa_mask);
    interrupted = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    c->interrupt = &interrupted;

    int rc;
    json_t *params = json_pack("{ss}", "name", name), *res = NULL;
    char code[64];
    nllm_err_t err = {0};
    int crc = NLLM_CALL_OK;
    if (!watch_sent)
        crc = nllm_conn_request(c, "watch", params, &watch_msgid, &err);
    json_decref(params);
    if (crc == NLLM_CALL_OK)
        crc = nllm_conn_wait(c, watch_msgid, &res, code, sizeof code, &err);
    if (crc == NLLM_CALL_INTERRUPTED) {
        rc = 0;
        goto out;
    }
    if (crc != NLLM_CALL_OK) {
        fprintf(stderr, "nllmctl: %s\n", err.msg);
        rc = crc == NLLM_CALL_ERROR ? 1 : 3;
        goto out;
    }
    const json_t *st = json_object_get(res, "status");
    const char *state = nllm_j_str(st, "state", "?");
    snprintf(v.state, sizeof v.state, "%s", state);
    if (json) {
        json_dumpf(res, stdout, JSON_COMPACT);
        fputc('\n', stdout);
        fflush(stdout);
    } else {
        header(&v, st);
        v.num_epochs = nllm_j_int(st, "num_epochs", 0);
    }
    if (terminal_state(state)) {
        if (json)
            rc = strcmp(state, "failed") == 0;
        else
            rc = finish(&v, c, state, nllm_j_str(st, "error", NULL));
        json_decref(res);
        goto out;
    }
    if (!json) {
        if (!strcmp(state, "queued")) {
            printf("Queued: waiting for a free device\n");
        }
        /* a running job's epoch header and bar come with the next progress
         * notification (at least one a second), after any resume lines */
        fflush(stdout);
    }
    json_decref(res);

    for (;;) {
        json_t *note = NULL;
        int timeout = v.tty ? 100 : 1000;
        crc = nllm_conn_next_note(c, timeout, &note, &err);
        if (crc == NLLM_CALL_INTERRUPTED) {
            clear_bar(&v);
            fflush(stdout);
            fprintf(stderr, "Detached from %s; the job goes on (`nllmctl watch %s` follows it "
                    "again).\n", name, name);
            rc = 0;
            break;
        }
        if (crc == NLLM_CALL_TIMEOUT) {
            if (v.tty && v.dirty)
                draw_bar(&v);
            continue;
        }
        if (crc != NLLM_CALL_OK) {
            rc = lost(&v, c, &err);
            break;
        }
        const char *method = nllm_j_str(note, "method", "");
        const json_t *p = json_object_get(note, "params");
        const char *who = nllm_j_str(p, "name", name);
        if (strcmp(who, name) != 0) {
            json_decref(note);
            continue;
        }
        int done = -1;
        if (json) {
            json_dumpf(note, stdout, JSON_COMPACT);
            fputc('\n', stdout);
            fflush(stdout);
            if (!strcmp(method, "state") && terminal_state(nllm_j_str(p, "state", "")))
                done = strcmp(nllm_j_str(p, "state", ""), "failed") == 0;
        } else if (!strcmp(method, "progress")) {
            on_progress(&v, p);
        } else if (!strcmp(method, "epoch")) {
            on_epoch(&v, p);
        } else if (!strcmp(method, "checkpoint")) {
            on_checkpoint(&v, p);
        } else if (!strcmp(method, "state")) {
            done = on_state(&v, c, p);
        }
        json_decref(note);
        if (done >= 0) {
            rc = done;
            break;
        }
    }
out:
    c->interrupt = NULL;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return rc;
}
