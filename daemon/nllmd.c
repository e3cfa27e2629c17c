/* nllmd.c -- the daemon's entry point: flags and config file, the state
 * directory and catalog, devices, the libuv loop with its signals, tick
 * timer (progress notifications, systemd watchdog) and event wake-up, the
 * orderly shutdown (pause every job at a step boundary, then exit 0), and
 * the one-shot mode `nllmd run NAME ...` for batch schedulers. The top of
 * the loop (the order is drawn in nllmd.h): it includes every module and
 * hands the lower ones what they call back (nllmd_dispatch to server.c;
 * the one-shot printer and the shutdown to jobs.c).
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "collective.h"
#include "comm.h"
#include "cpu/cpu_kernels.h"
#include "cuda/cuda_backend.h"
#include "fsutil.h"
#include "http.h"
#include "jobs.h"
#include "jsonpack.h"
#include "log.h"
#include "methods.h"
#include "nllmd.h"
#include "server.h"

/* ---- systemd notification (the documented datagram protocol) ----------- */

static void sd_notify_msg(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    (void)!sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    close(fd);
}

static uint64_t watchdog_usec(void)
{
    const char *w = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    if (!w || (pid && atoi(pid) != getpid()))
        return 0;
    return strtoull(w, NULL, 10);
}

static void notify_status(nllmd_t *d)
{
    char msg[512];
    int running = nllmd_jobs_running(d), queued = 0;
    for (nllm_job_t *j = d->jobs; j; j = j->next)
        queued += !strcmp(j->state, "queued");
    snprintf(msg, sizeof msg, "STATUS=%d job(s) running, %d queued, %d client(s)", running,
             queued, d->nconns);
    sd_notify_msg(msg);
}

/* ---- shutdown ------------------------------------------------------------ */

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Once no job thread is left: close the listeners and connections (after
 * their pending replies), then the loop's own handles; uv_run returns when
 * the last one has closed. */
static void finish_if_idle(nllmd_t *d)
{
    if (!d->shutting_down || nllmd_jobs_running(d) > 0 || d->closed)
        return;
    d->closed = 1;
    nllmd_server_close(d);
    nllmd_http_close(d);
    close_if_open((uv_handle_t *)&d->tick);
    close_if_open((uv_handle_t *)&d->async);
    close_if_open((uv_handle_t *)&d->sig_term);
    close_if_open((uv_handle_t *)&d->sig_int);
    close_if_open((uv_handle_t *)&d->sig_hup);
    /* closing the signal handles restores the default actions: a second
     * SIGTERM during the last writes must not kill the process */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
}

static void nllmd_begin_shutdown(nllmd_t *d, const char *why)
{
    if (d->shutting_down)
        return;
    d->shutting_down = 1;
    nllmd_log(d, NULL, "%s: pausing %d running job(s) at a step boundary", why,
              nllmd_jobs_running(d));
    sd_notify_msg("STOPPING=1");
    nllmd_pause_all_for_shutdown(d);
    /* queued jobs stay queued; they start on the next start */
    finish_if_idle(d);
}

static void on_signal(uv_signal_t *h, int sig)
{
    nllmd_t *d = h->data;
    if (sig == SIGHUP) {
        nllmd_log(d, NULL, "SIGHUP: logs go to stderr; nothing to reopen");
        return;
    }
    if (d->shutting_down) {
        nllmd_log(d, NULL, "second signal: still waiting for paused checkpoints");
        return;
    }
    nllmd_begin_shutdown(d, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_async(uv_async_t *h)
{
    nllmd_t *d = h->data;
    nllmd_events_drain(d);
    if (d->shutdown_requested)
        nllmd_begin_shutdown(d, "shutdown requested by a client");
    notify_status(d);
    finish_if_idle(d);
}

static void on_tick(uv_timer_t *t)
{
    nllmd_t *d = t->data;
    static uint64_t last_wd;
    uint64_t wd = watchdog_usec();
    uint64_t now = uv_now(d->loop);
    if (wd && (now - last_wd) * 1000 >= wd / 2) {
        sd_notify_msg("WATCHDOG=1");
        last_wd = now;
    }
    if (d->waiting_for_memory)
        nllmd_schedule(d); /* a queued job waits for GPU memory others may have freed */
    for (nllm_job_t *j = d->jobs; j; j = j->next) {
        if (!j->thread_live)
            continue;
        pthread_mutex_lock(&j->mu);
        nllm_step_report_t r = j->last_step;
        int have = j->have_step;
        pthread_mutex_unlock(&j->mu);
        if (!have)
            continue;
        double frac = r.steps_per_epoch ? (double)r.step_in_epoch / r.steps_per_epoch : 0;
        double eta = frac > 0 ? r.epoch_seconds * (1 - frac) / frac : NAN;
        json_t *p = json_pack("{s:s,s:I,s:i,s:I,s:I,s:I,s:o,s:f,s:f,s:o}", "name", j->name,
                              "epoch", (json_int_t)r.epoch, "num_epochs", j->cfg.num_epochs,
                              "step", (json_int_t)r.step_in_epoch, "steps_per_epoch",
                              (json_int_t)r.steps_per_epoch, "global_step",
                              (json_int_t)r.global_step, "loss", nllm_json_num(r.running_loss),
                              "tokens_per_s", r.tokens_per_s, "elapsed", r.epoch_seconds, "eta",
                              nllm_json_num(eta));
        nllmd_job_notify(j, "progress", p);
    }
}

/* ---- options ------------------------------------------------------------- */

static const char usage_text[] =
    "usage: nllmd [options]\n"
    "       nllmd run [--state-dir DIR] NAME --data FILE [job options] [--resume [CKPT]]\n"
    "\n"
    "The nllm training daemon: owns training jobs of the context-vector language\n"
    "model, saves and resumes their checkpoints, and serves nllmctl over a socket.\n"
    "\n"
    "  --state-dir DIR     catalog and job folders (default $STATE_DIRECTORY, else\n"
    "                      /var/lib/nllm as root, else $XDG_STATE_HOME/nllm); one\n"
    "                      process owns it (nllmd.lock): a second nllmd or nllmd run\n"
    "                      on a folder in use is refused\n"
    "  --socket PATH       control socket (default $RUNTIME_DIRECTORY/nllmd.sock, else\n"
    "                      /run/nllm/nllmd.sock as root, else $XDG_RUNTIME_DIR/nllm/nllmd.sock)\n"
    "  --listen HOST:PORT  also accept TCP clients (needs --token-file unless loopback)\n"
    "  --token-file F      token TCP clients must send with `auth` (>= 16 bytes)\n"
    "  --devices LIST      cpu, or cuda:0,cuda:1,... (default: every GPU, else cpu); a\n"
    "                      device that faults (ECC, illegal address, lost GPU) takes\n"
    "                      no job until `nllmctl device reset DEV` or a restart\n"
    "  --max-jobs N        jobs running at once (default: jobs-per-device per device)\n"
    "  --jobs-per-device N jobs one device runs at once, each on its own backend\n"
    "                      (default 1); a GPU takes a job only while it has the\n"
    "                      memory the job needs free\n"
    "  --threads N         CPU threads per job on the cpu device (default: all)\n"
    "  --auto-resume       resume interrupted jobs at start\n"
    "  --max-message BYTES largest RPC message accepted (default 1048576)\n"
    "  --metrics HOST:PORT read-only HTTP monitoring: dashboard at /, Prometheus\n"
    "                      /metrics, JSON /api/jobs (default 127.0.0.1:9477; none = off)\n"
    "  --config FILE       daemon settings, `key = value` lines with the names above\n"
    "                      (default /etc/nllm/nllmd.conf when it exists); flags win\n"
    "  --version, --help\n"
    "\n"
    "Signals: SIGTERM/SIGINT pause every job at a step boundary (paused checkpoint,\n"
    "state interrupted) and exit 0; SIGHUP is accepted (logs go to stderr).\n";

static void default_paths(nllmd_opts_t *o)
{
    const char *sd = getenv("STATE_DIRECTORY"), *rd = getenv("RUNTIME_DIRECTORY");
    if (!o->state_dir[0]) {
        if (sd && *sd)
            snprintf(o->state_dir, sizeof o->state_dir, "%.*s", (int)strcspn(sd, ":"), sd);
        else if (getuid() == 0)
            snprintf(o->state_dir, sizeof o->state_dir, "/var/lib/nllm");
        else if (getenv("XDG_STATE_HOME"))
            snprintf(o->state_dir, sizeof o->state_dir, "%s/nllm", getenv("XDG_STATE_HOME"));
        else
            snprintf(o->state_dir, sizeof o->state_dir, "%s/.local/state/nllm",
                     getenv("HOME") ? getenv("HOME") : "/tmp");
    }
    if (!o->socket_path[0]) {
        if (rd && *rd)
            snprintf(o->socket_path, sizeof o->socket_path, "%.*s/nllmd.sock",
                     (int)strcspn(rd, ":"), rd);
        else if (getuid() == 0)
            snprintf(o->socket_path, sizeof o->socket_path, "/run/nllm/nllmd.sock");
        else if (getenv("XDG_RUNTIME_DIR"))
            snprintf(o->socket_path, sizeof o->socket_path, "%s/nllm/nllmd.sock",
                     getenv("XDG_RUNTIME_DIR"));
        else
            snprintf(o->socket_path, sizeof o->socket_path, "/tmp/nllm-%u/nllmd.sock",
                     (unsigned)getuid());
    }
}

enum { O_STATE = 1000, O_SOCKET, O_LISTEN, O_TOKEN, O_DEVICES, O_MAXJOBS, O_AUTORESUME,
       O_CONFIG, O_VERSION, O_HELP, O_MAXMSG, O_THREADS, O_METRICS, O_JOBSPERDEV, O_LAST };

static const struct option daemon_opts[] = {
    {"state-dir", 1, 0, O_STATE}, {"socket", 1, 0, O_SOCKET},    {"listen", 1, 0, O_LISTEN},
    {"token-file", 1, 0, O_TOKEN}, {"devices", 1, 0, O_DEVICES}, {"max-jobs", 1, 0, O_MAXJOBS},
    {"auto-resume", 0, 0, O_AUTORESUME}, {"config", 1, 0, O_CONFIG}, {"version", 0, 0, O_VERSION},
    {"help", 0, 0, O_HELP}, {"max-message", 1, 0, O_MAXMSG}, {"threads", 1, 0, O_THREADS},
    {"metrics", 1, 0, O_METRICS}, {"jobs-per-device", 1, 0, O_JOBSPERDEV}, {0, 0, 0, 0}};

static int set_opt(nllmd_opts_t *o, int code, const char *v, nllm_err_t *err)
{
    char *end;
    long long x;
    switch (code) {
    case O_STATE:
        snprintf(o->state_dir, sizeof o->state_dir, "%s", v);
        return 0;
    case O_SOCKET:
        if (strlen(v) >= 100)
            return nllm_err_set(err, NLLM_EINVAL, "--socket %s: a socket path must be shorter "
                                "than 100 bytes", v);
        snprintf(o->socket_path, sizeof o->socket_path, "%s", v);
        return 0;
    case O_LISTEN:
        snprintf(o->listen, sizeof o->listen, "%s", v);
        return 0;
    case O_TOKEN:
        snprintf(o->token_file, sizeof o->token_file, "%s", v);
        return 0;
    case O_METRICS: /* checked by nllmd_http_start */
        if (!*v || strlen(v) >= sizeof o->metrics)
            return nllm_err_set(err, NLLM_EINVAL, "--metrics \"%s\": use HOST:PORT or none", v);
        snprintf(o->metrics, sizeof o->metrics, "%s", v);
        return 0;
    case O_DEVICES:
        snprintf(o->devices, sizeof o->devices, "%s", v);
        return 0;
    case O_AUTORESUME:
        o->auto_resume = !v || strcmp(v, "0") != 0;
        return 0;
    case O_JOBSPERDEV:
        x = strtoll(v, &end, 10);
        if (end == v || *end || x < 1 || x > NLLMD_MAX_JOBS_PER_DEVICE)
            return nllm_err_set(err, NLLM_EINVAL,
                                "--jobs-per-device %s: use a number from 1 to %d", v,
                                NLLMD_MAX_JOBS_PER_DEVICE);
        o->jobs_per_device = (int)x;
        return 0;
    case O_MAXJOBS:
    case O_MAXMSG:
    case O_THREADS:
        x = strtoll(v, &end, 10);
        if (end == v || *end || x < (code == O_THREADS ? 0 : 1) ||
            x > (code == O_MAXMSG ? (1LL << 30) : 4096))
            return nllm_err_set(err, NLLM_EINVAL, "--%s %s: not a valid number",
                                code == O_MAXJOBS ? "max-jobs"
                                : code == O_MAXMSG ? "max-message"
                                                   : "threads",
                                v);
        if (code == O_MAXJOBS)
            o->max_jobs = (int)x;
        else if (code == O_MAXMSG)
            o->max_message = (size_t)x;
        else
            o->threads = (int)x;
        return 0;
    }
    return nllm_err_set(err, NLLM_EINVAL, "unknown option");
}

/* The daemon config file: `key = value` with the long flag names. */
static int read_config_file(nllmd_opts_t *o, const char *path, int required, nllm_err_t *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!required && errno == ENOENT)
            return 0;
        return nllm_err_set(err, NLLM_ENOENT, "config file %s: %s", path, strerror(errno));
    }
    char line[4096];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char *s = line + strspn(line, " \t");
        s[strcspn(s, "\r\n")] = '\0';
        if (!*s || *s == '#' || *s == ';' || *s == '[')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = nllm_err_set(err, NLLM_EINVAL, "%s:%d: expected `key = value`", path, lineno);
            break;
        }
        char *k = s, *ke = eq;
        while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t'))
            ke--;
        *ke = '\0';
        char *v = eq + 1 + strspn(eq + 1, " \t");
        size_t vl = strlen(v);
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            v[--vl] = '\0';
        for (char *c = k; *c; c++)
            if (*c == '_')
                *c = '-';
        int code = 0;
        for (const struct option *op = daemon_opts; op->name; op++)
            if (strcmp(op->name, k) == 0)
                code = op->val;
        if (!code || code == O_CONFIG || code == O_HELP || code == O_VERSION)
            rc = nllm_err_set(err, NLLM_EINVAL, "%s:%d: unknown setting \"%s\"", path, lineno, k);
        else if (code == O_AUTORESUME)
            o->auto_resume = !strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes");
        else if ((rc = set_opt(o, code, v, err)) < 0)
            nllm_err_prefix(err, "%s:%d: ", path, lineno);
    }
    fclose(f);
    return rc;
}

/* d->devices from --devices (default: every GPU, else cpu). Each device's
 * precisions are what its backend implements (kernels/cpu: fp32, and bf16
 * on CPUs with AMX; kernels/cuda: fp32, tf32, bf16), known here without creating one, so
 * that start and resume can refuse a precision its device lacks; the job
 * thread's nllm_backend_set_precision still has the last word. */
static int setup_devices(nllmd_t *d, nllm_err_t *err)
{
    char list[256];
    snprintf(list, sizeof list, "%s", d->opt.devices[0] ? d->opt.devices : "");
    if (!list[0]) {
        int n = nllm_cuda_available() ? nllm_cuda_device_count() : 0;
        if (n <= 0)
            snprintf(list, sizeof list, "cpu");
        else {
            size_t used = 0;
            for (int k = 0; k < n && used < sizeof list - 16; k++)
                used += (size_t)snprintf(list + used, sizeof list - used, "%scuda:%d",
                                         k ? "," : "", k);
        }
    }
    char *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (d->ndevices >= NLLMD_MAX_DEVICES)
            return nllm_err_set(err, NLLM_EINVAL, "--devices: more than %d devices",
                                NLLMD_MAX_DEVICES);
        nllmd_device_t *v = &d->devices[d->ndevices];
        memset(v, 0, sizeof *v);
        if (strcmp(t, "cpu") == 0) {
            snprintf(v->name, sizeof v->name, "cpu");
            snprintf(v->kind, sizeof v->kind, "cpu");
            v->precisions = nllm_cpu_precisions(NULL);
        } else if (strncmp(t, "cuda:", 5) == 0) {
            char *end;
            long id = strtol(t + 5, &end, 10);
            if (end == t + 5 || *end || id < 0)
                return nllm_err_set(err, NLLM_EINVAL, "--devices: \"%s\" is not cuda:N", t);
            if (nllm_cuda_device_info((int)id, v->gpu, sizeof v->gpu, &v->mem_total,
                                      &v->mem_free) < 0)
                return nllm_err_set(err, NLLM_EDEVICE,
                                    "--devices: %s is not available (no such GPU, or this "
                                    "nllm was built without CUDA); use --devices cpu",
                                    t);
            snprintf(v->name, sizeof v->name, "cuda:%ld", id);
            snprintf(v->kind, sizeof v->kind, "cuda");
            v->precisions = (1u << NLLM_PREC_FP32) | (1u << NLLM_PREC_TF32) |
                            (1u << NLLM_PREC_BF16);
        } else {
            return nllm_err_set(err, NLLM_EINVAL,
                                "--devices: \"%s\" is not a device: use cpu or cuda:N", t);
        }
        for (int k = 0; k < d->ndevices; k++)
            if (!strcmp(d->devices[k].name, v->name))
                return nllm_err_set(err, NLLM_EINVAL, "--devices: %s given twice", v->name);
        d->ndevices++;
    }
    if (d->ndevices == 0)
        return nllm_err_set(err, NLLM_EINVAL, "--devices: no device given");
    if (d->opt.jobs_per_device <= 0)
        d->opt.jobs_per_device = 1;
    if (d->opt.max_jobs <= 0)
        d->opt.max_jobs = d->ndevices * d->opt.jobs_per_device;
    return 0;
}

/* owner: what a second process on the same folder is told holds it */
static int open_state(nllmd_t *d, const char *owner, nllm_err_t *err)
{
    int rc = nllm_fs_mkdir_p(d->opt.state_dir, 0750, err);
    if (rc < 0)
        return nllm_err_prefix(err, "state directory: ");
    /* before the catalog: the folder's one owner (released when we exit) */
    if ((rc = nllm_fs_lock_dir(d->opt.state_dir, owner, &d->state_lock, err)) < 0)
        return rc;
    if (d->state_lock < 0)
        nllmd_log(d, NULL,
                  "state folder %s: its file system has no locks; make sure no other nllm "
                  "process uses it",
                  d->opt.state_dir);
    char p[NLLM_PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/jobs", d->opt.state_dir);
    if ((rc = nllm_fs_mkdir_p(p, 0750, err)) < 0)
        return rc;
    snprintf(p, sizeof p, "%s/catalog.db", d->opt.state_dir);
    if ((rc = nllm_catalog_open(p, &d->cat, err)) < 0)
        return rc;
    return nllmd_jobs_load(d, err);
}

static int loop_init(nllmd_t *d)
{
    d->loop = uv_default_loop();
    d->started = uv_now(d->loop) / 1000.0;
    pthread_mutex_init(&d->evmu, NULL);
    uv_async_init(d->loop, &d->async, on_async);
    d->async.data = d;
    uv_signal_init(d->loop, &d->sig_term);
    uv_signal_init(d->loop, &d->sig_int);
    uv_signal_init(d->loop, &d->sig_hup);
    d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
    uv_signal_start(&d->sig_term, on_signal, SIGTERM);
    uv_signal_start(&d->sig_int, on_signal, SIGINT);
    uv_signal_start(&d->sig_hup, on_signal, SIGHUP);
    uv_timer_init(d->loop, &d->tick);
    d->tick.data = d;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static int loop_finish(nllmd_t *d)
{
    uv_run(d->loop, UV_RUN_DEFAULT);
    nllmd_events_drain(d); /* anything posted after the last wake-up */
    int rc = uv_loop_close(d->loop);
    if (rc != 0)
        nllmd_log(d, NULL, "loop closed with handles still open (%s)", uv_strerror(rc));
    nllm_catalog_close(d->cat);
    if (d->state_lock >= 0)
        close(d->state_lock);
    d->state_lock = -1;
    while (d->jobs) {
        nllm_job_t *j = d->jobs;
        d->jobs = j->next;
        nllmd_job_free(j);
    }
    pthread_mutex_destroy(&d->evmu);
    return rc;
}

/* Where a CPU device serves: which kernels its products run on. */
static void log_cpu_kernels(nllmd_t *d)
{
    for (int k = 0; k < d->ndevices; k++)
        if (strcmp(d->devices[k].kind, "cpu") == 0) {
            char line[600];
            nllm_cpu_kernels_describe(line, sizeof line);
            nllmd_log(d, NULL, "%s", line);
        }
}

/* ---- one-shot mode ----------------------------------------------------- */

static void nllmd_oneshot_notify(nllmd_t *d, const char *method, json_t *p)
{
    FILE *o = stdout;
    if (!strcmp(method, "progress")) {
        static double last;
        double now = uv_now(d->loop) / 1000.0;
        if (!d->oneshot_tty && now - last < 10)
            return;
        last = now;
        double frac = json_real_value(json_object_get(p, "steps_per_epoch")) > 0 ? 0 : 0;
        json_int_t step = json_integer_value(json_object_get(p, "step")),
                   spe = json_integer_value(json_object_get(p, "steps_per_epoch"));
        frac = spe ? (double)step / (double)spe : 0;
        double loss = json_number_value(json_object_get(p, "loss"));
        double el = json_number_value(json_object_get(p, "elapsed"));
        double eta = json_number_value(json_object_get(p, "eta"));
        if (d->oneshot_tty) {
            int w = 30, fill = (int)(frac * w);
            char bar[64];
            for (int i = 0; i < w; i++)
                bar[i] = i < fill ? '#' : '-';
            bar[w] = '\0';
            fprintf(o, "\r[%s] %3.0f%% %lld/%lld %.0fs<%.0fs loss=%.4f ", bar, 100 * frac,
                    (long long)step, (long long)spe, el, isfinite(eta) ? eta : 0, loss);
        } else {
            fprintf(o, "  step %lld/%lld (%.0f%%) elapsed %.0fs eta %.0fs loss=%.4f\n",
                    (long long)step, (long long)spe, 100 * frac, el, isfinite(eta) ? eta : 0,
                    loss);
        }
    } else if (!strcmp(method, "epoch")) {
        if (d->oneshot_tty)
            fputc('\n', o);
        fprintf(o, "Epoch %lld/%lld: Train Loss=%.4f PPL=%.2f\n",
                (long long)json_integer_value(json_object_get(p, "epoch")),
                (long long)json_integer_value(json_object_get(p, "num_epochs")),
                json_number_value(json_object_get(p, "train_loss")),
                json_number_value(json_object_get(p, "train_ppl")));
        fprintf(o, "Val: Loss=%.4f PPL=%.2f Acc=%.1f%%%s\n",
                json_number_value(json_object_get(p, "val_loss")),
                json_number_value(json_object_get(p, "val_ppl")),
                100 * json_number_value(json_object_get(p, "val_acc")),
                json_is_true(json_object_get(p, "is_best")) ? " \u2713" : "");
        json_t *gb = json_object_get(p, "grad_sum_bytes"), *gs, *cs;
        if (gb && json_is_real(gs = json_object_get(p, "grad_sum_seconds")) &&
            json_is_real(cs = json_object_get(p, "comm_share")))
            fprintf(o, "Ranks: gradient sums %.3g MB/step, %.2f ms/step exposed; collectives "
                    "%.1f%% of the time\n",
                    json_number_value(gb) / 1e6, 1e3 * json_real_value(gs),
                    100 * json_real_value(cs));
        else if (gb)
            fprintf(o, "Ranks: gradient sums %.3g MB/step on the devices\n",
                    json_number_value(gb) / 1e6);
    } else if (!strcmp(method, "checkpoint")) {
        fprintf(o, "Saved checkpoint %s (%s)\n",
                json_string_value(json_object_get(p, "checkpoint")),
                json_string_value(json_object_get(p, "path")));
    } else if (!strcmp(method, "state")) {
        json_t *rf = json_object_get(p, "resumed_from");
        if (rf) {
            fprintf(o, "Resuming from checkpoint: %s\n",
                    json_string_value(json_object_get(rf, "checkpoint")));
            fprintf(o, "Completed epochs: %lld\n",
                    (long long)json_integer_value(json_object_get(rf, "epoch")));
            fprintf(o, "Resuming from epoch %lld\n",
                    (long long)json_integer_value(json_object_get(rf, "epoch")) + 1);
        }
        const char *st = json_string_value(json_object_get(p, "state"));
        json_t *e = json_object_get(p, "error");
        fprintf(o, "State: %s%s%s\n", st, json_is_string(e) ? ": " : "",
                json_is_string(e) ? json_string_value(e) : "");
        if (st && strcmp(st, "running") && strcmp(st, "pausing") && strcmp(st, "queued")) {
            if (!d->shutting_down) {
                d->exit_code = !strcmp(st, "completed") || !strcmp(st, "stopped") ? 0
                               : !strcmp(st, "failed")                             ? 1
                                                                                    : 75;
                nllmd_begin_shutdown(d, "job finished");
            } else if (!strcmp(st, "interrupted")) {
                d->exit_code = 75; /* EX_TEMPFAIL: requeue and resume */
            }
        }
    }
    fflush(o);
}

/* One job key given to `nllmd run` (--KEY VALUE, or --config FILE). */
typedef struct {
    char key[64];
    char *value;
} oneshot_set_t;

static int oneshot_apply(nllm_job_config_t *cfg, const char *flag, const char *key,
                         const char *v, nllm_err_t *err)
{
    if (!strcmp(key, "config"))
        return nllm_job_config_parse_file(v, cfg, err);
    if (nllm_job_config_set(cfg, key, v, err) < 0)
        return nllm_err_prefix(err, "--%s: ", flag);
    return 0;
}

/* ---- data parallelism in one-shot mode -------------------------------------
 * Under mpirun/srun every rank runs `nllmd run` with the same arguments.
 * Rank 0 is the job as without MPI: it reads and writes the state folder.
 * The other ranks write nothing there: each trains a copy of the job in a
 * private folder under $TMPDIR (removed at exit), with the settings rank 0
 * decided (shared before any job starts: MPI calls come from one thread at
 * a time), and the trainer gives every rank rank 0's weights and progress
 * when the run starts. */

/* Launched by an MPI launcher (Open MPI, or a PMI one such as srun). */
static int under_launcher(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

/* How many tasks the launcher says it started (1 when none says): Open MPI's,
 * PMI's or srun's count, the largest. srun sets SLURM_STEP_NUM_TASKS even
 * where no MPI plugin runs (--mpi=none, Slurm's default MpiDefault). */
static int launched_tasks(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                                       "SLURM_STEP_NUM_TASKS"};
    int n = 1;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > n)
            n = atoi(v);
    }
    return n;
}

/* Several tasks that would not form one MPI world would each train the job
 * alone in the same state folder: refused (exit 2) before any of them
 * touches it. */
static int refuse_lone_tasks(void)
{
    const int n = launched_tasks();
    if (n <= 1)
        return 0;
    if (!nllm_coll_built())
        fprintf(stderr, "nllmd run: started as one of %d tasks, but this nllmd was built "
                        "without MPI (-Dmpi=disabled, or no libopenmpi-dev when the build was "
                        "set up): each task would train the job alone in the same state "
                        "folder; rebuild with Open MPI (docs/cluster.md)\n", n);
    else if (!under_launcher())
        fprintf(stderr, "nllmd run: srun started %d tasks (SLURM_STEP_NUM_TASKS) without an "
                        "MPI plugin (no PMIX_RANK, PMI_SIZE or OMPI_COMM_WORLD_SIZE in the "
                        "environment): each task would train the job alone in the same state "
                        "folder; launch with `srun --mpi=pmix` (docs/cluster.md)\n", n);
    else
        return 0;
    return 1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Rank 0's decision, sent once to the other ranks: the exit code when no
 * job runs, else the job's settings. */
typedef struct {
    int32_t rc;
    nllm_job_config_t cfg;
} oneshot_share_t;

static void share_decision(int *shared, int rc, const nllm_job_config_t *cfg)
{
    if (*shared || nllm_coll_size() <= 1)
        return;
    oneshot_share_t s;
    memset(&s, 0, sizeof s);
    s.rc = rc;
    if (cfg)
        s.cfg = *cfg;
    nllm_err_t err;
    if (nllm_coll_bcast(&s, sizeof s, 0, &err) < 0)
        fprintf(stderr, "nllmd run: %s\n", err.msg); /* the job's first collective fails too */
    *shared = 1;
}

static int run_oneshot_rank(nllmd_t *d, int argc, char **argv, const char *tmpdir);

static int run_oneshot(nllmd_t *d, int argc, char **argv)
{
    nllm_err_t err;
    if (refuse_lone_tasks())
        return 2;
    if (nllm_coll_built() && under_launcher() && nllm_coll_init(&argc, &argv, &err) < 0) {
        fprintf(stderr, "nllmd run: %s\n", err.msg);
        return 1;
    }
    char tmpdir[NLLM_PATH_MAX] = "";
    if (nllm_coll_rank() > 0) {
        const char *t = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/nllmd-rank%d-XXXXXX", t && *t ? t : "/tmp",
                 nllm_coll_rank());
        if (!mkdtemp(tmpdir)) {
            fprintf(stderr, "nllmd run: rank %d: cannot make a folder under %s: %s\n",
                    nllm_coll_rank(), t && *t ? t : "/tmp", strerror(errno));
            return 1; /* mpirun ends the other ranks */
        }
        if (!freopen("/dev/null", "w", stdout)) /* rank 0 reports progress */
            fprintf(stderr, "nllmd run: rank %d: cannot silence stdout\n", nllm_coll_rank());
    }
    int rc = run_oneshot_rank(d, argc, argv, tmpdir);
    if (tmpdir[0])
        nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    /* a failed rank, or broken collectives: MPI_Abort, so that no rank is
     * left waiting for this one (collective.h) */
    nllm_coll_finalize(rc);
    return rc;
}

static int run_oneshot_rank(nllmd_t *d, int argc, char **argv, const char *tmpdir)
{
    const int rank = nllm_coll_rank();
    int shared = rank > 0; /* rank 0 sends its decision once; the others receive it */
    /* nllmd run [--state-dir DIR] NAME [--resume [CKPT]] [job flags] */
    const char *name = NULL, *resume = NULL, *init_from = NULL;
    int want_resume = 0;
    nllm_job_config_t cfg;
    nllm_job_config_defaults(&cfg);
    nllm_err_t err;
    /* the job keys given, in order: a resume applies them to the job's own
     * settings (cfg holds them over the defaults, for a new job) */
    oneshot_set_t *sets = calloc((size_t)argc + 1, sizeof *sets);
    int nsets = 0, rc = 0;
    if (!sets) {
        fprintf(stderr, "nllmd run: out of memory\n");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            if (name) {
                fprintf(stderr, "nllmd run: unexpected argument \"%s\"\n", a);
                rc = 2;
                goto out;
            }
            name = a;
            continue;
        }
        const char *key = a + 2;
        if (!strcmp(key, "help")) {
            printf("usage: nllmd run [--state-dir DIR] NAME --data FILE [--KEY VALUE ...] "
                   "[--resume [CKPT]] [--init-from JOB:CKPT|FILE]\n"
                   "Trains one job in the foreground; job keys as in `nllmctl start --help`\n"
                   "(e.g. --epochs 10 --precision bf16; tf32 and bf16 need a CUDA device).\n"
                   "--num-devices N trains on N devices at once in this process (one thread\n"
                   "each: N GPUs, or ranks sharing the cpu); --gpus N takes any N GPUs; under\n"
                   "mpirun each rank trains on one device (docs/cluster.md).\n"
                   "Exit 0 when it completes, 1 when it fails, 75 when SIGTERM paused it\n"
                   "(rerun with --resume to continue).\n"
                   "With --resume, the job keys given change its settings as `nllmctl resume`\n"
                   "does: training keys (--epochs, --lr, --patience, --precision, ...) apply\n"
                   "from the resume on; the model shape, data, tokenizer and seed may not\n"
                   "change; a completed job with nothing left to train is refused.\n");
            goto out;
        }
        if (!strcmp(key, "resume")) {
            want_resume = 1;
            if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 && name)
                resume = argv[++i];
            continue;
        }
        if (!strcmp(key, "reset-patience") || !strcmp(key, "auto-resume")) {
            if (!strcmp(key, "reset-patience"))
                cfg.reset_patience = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "nllmd run: --%s needs a value\n", key);
            rc = 2;
            goto out;
        }
        const char *v = argv[++i];
        int code = 0;
        for (const struct option *op = daemon_opts; op->name; op++)
            if (!strcmp(op->name, key))
                code = op->val;
        if (code == O_STATE || code == O_THREADS || code == O_DEVICES) {
            if (set_opt(&d->opt, code, v, &err) < 0) {
                fprintf(stderr, "nllmd run: %s\n", err.msg);
                rc = 2;
                goto out;
            }
            continue;
        }
        if (!strcmp(key, "init-from")) {
            init_from = v;
            continue;
        }
        if (!strcmp(key, "gpus")) {
            /* any N GPUs: device cuda, num_devices N */
            if (oneshot_apply(&cfg, key, "device", "cuda", &err) < 0 ||
                oneshot_apply(&cfg, key, "num_devices", v, &err) < 0) {
                fprintf(stderr, "nllmd run: %s\n", err.msg);
                rc = 2;
                goto out;
            }
            snprintf(sets[nsets].key, sizeof sets[nsets].key, "device");
            if (!(sets[nsets++].value = strdup("cuda"))) {
                fprintf(stderr, "nllmd run: out of memory\n");
                rc = 1;
                goto out;
            }
            key = "num_devices";
        }
        char k[64];
        snprintf(k, sizeof k, "%s", key);
        for (char *c = k; *c; c++)
            if (*c == '-')
                *c = '_';
        char absbuf[NLLM_PATH_MAX];
        if ((!strcmp(k, "data") || !strcmp(k, "val") || !strcmp(k, "train")) && v[0] != '/' &&
            realpath(v, absbuf))
            v = absbuf;
        if (oneshot_apply(&cfg, key, k, v, &err) < 0) {
            fprintf(stderr, "nllmd run: %s\n", err.msg);
            rc = 2;
            goto out;
        }
        snprintf(sets[nsets].key, sizeof sets[nsets].key, "%s", k);
        if (!(sets[nsets++].value = strdup(v))) {
            fprintf(stderr, "nllmd run: out of memory\n");
            rc = 1;
            goto out;
        }
    }
    if (!name) {
        fprintf(stderr, "nllmd run: no job NAME given (see nllmd run --help)\n");
        rc = 2;
        goto out;
    }
    if (nllm_coll_size() > 1 && cfg.num_devices > 1) {
        fprintf(stderr, "nllmd run: num_devices %d cannot be combined with %d MPI ranks: under "
                "mpirun each rank trains on one device; start one rank per device instead\n",
                cfg.num_devices, nllm_coll_size());
        rc = 2;
        goto out;
    }
    if (rank > 0) /* a private state folder (run_oneshot made it) */
        snprintf(d->opt.state_dir, sizeof d->opt.state_dir, "%s", tmpdir);
    if (nllm_coll_size() > 1) {
        /* the trainer's comm: the MPI world (wrapped in NCCL on a GPU) */
        d->comm = nllm_comm_mpi();
        if (!d->opt.devices[0] && nllm_cuda_available() && nllm_cuda_device_count() > 0) {
            /* one GPU per rank: the node-local rank's */
            const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
            if (!lr)
                lr = getenv("SLURM_LOCALID");
            if (!lr)
                lr = getenv("MPI_LOCALRANKID");
            int local = lr ? atoi(lr) : rank;
            snprintf(d->opt.devices, sizeof d->opt.devices, "cuda:%d",
                     local % nllm_cuda_device_count());
        }
    }
    default_paths(&d->opt);
    d->opt.socket_path[0] = '\0'; /* no control socket in one-shot mode */
    d->oneshot_tty = isatty(1) && !getenv("NO_COLOR");
    d->oneshot_print = nllmd_oneshot_notify; /* what jobs.c asks of us for d->oneshot */
    d->begin_shutdown = nllmd_begin_shutdown;
    loop_init(d);
    char owner[NLLM_PATH_MAX];
    snprintf(owner, sizeof owner, "nllmd run %s", name);
    if (setup_devices(d, &err) < 0 || open_state(d, owner, &err) < 0) {
        fprintf(stderr, "nllmd run: %s\n", err.msg);
        rc = 1;
        share_decision(&shared, rc, NULL); /* the other ranks end too */
        d->shutting_down = 1;
        finish_if_idle(d);
        loop_finish(d);
        goto out;
    }
    /* every rank: the kernel choice's reference check runs now, before
     * the job starts, not inside its first step */
    if (rank == 0)
        log_cpu_kernels(d);
    else
        (void)nllm_cpu_kernels();
    nllm_job_t *j = rank == 0 ? nllmd_job_find(d, name) : NULL;
    if (rank > 0) {
        /* rank 0's decision: its exit code, or the settings of the job */
        oneshot_share_t s;
        if (nllm_coll_bcast(&s, sizeof s, 0, &err) < 0) {
            fprintf(stderr, "nllmd run: %s\n", err.msg);
            s.rc = 1;
        }
        rc = s.rc;
        if (rc == 0) {
            nllm_job_origin_t o = {0};
            if (nllmd_job_create(d, name, &s.cfg, &o, NULL, NULL, &j, &err) < 0) {
                fprintf(stderr, "nllmd run: rank %d: %s\n", rank, err.msg);
                rc = 1;
            } else {
                d->oneshot = j;
            }
        }
    } else if (j) {
        if (!want_resume) {
            fprintf(stderr,
                    "nllmd run: job %s already exists in %s (state %s): add --resume to continue "
                    "it, or pick another name\n",
                    name, d->opt.state_dir, j->state);
            rc = 2;
        } else {
            d->oneshot = j;
            /* the keys given change the job's settings as `nllmctl resume`
             * does: training-only ones apply (event config_changed), the
             * model shape, data, tokenizer and seed are refused */
            nllm_job_config_t rcfg = j->cfg;
            for (int i = 0; i < nsets && rc == 0; i++)
                if (oneshot_apply(&rcfg, sets[i].key, sets[i].key, sets[i].value, &err) < 0) {
                    fprintf(stderr, "nllmd run: job %s: %s\n", name, err.msg);
                    rc = 2;
                }
            char diff[4096];
            if (rc == 0 && !strcmp(j->state, "queued")) {
                /* never ran: nothing to resume, so nothing may change */
                if (nllm_job_config_model_diff(&j->cfg.model, "job", &rcfg.model, "requested",
                                               diff, sizeof diff) > 0 ||
                    nllm_job_config_data_diff(&j->cfg, "job", &rcfg, "requested", diff,
                                              sizeof diff) > 0 ||
                    nllm_job_config_train_diff(&j->cfg, &rcfg, diff, sizeof diff) > 0) {
                    fprintf(stderr,
                            "nllmd run: job %s is queued (it never ran), so its settings "
                            "cannot change: %s\n",
                            name, diff);
                    rc = 1;
                } else {
                    share_decision(&shared, 0, &j->cfg);
                    nllmd_schedule(d);
                }
            } else if (rc == 0 && (share_decision(&shared, 0, &rcfg), 0) == 0 &&
                       nllmd_job_resume(j, resume, nsets ? &rcfg : NULL, cfg.reset_patience,
                                        &err) < 0) {
                fprintf(stderr, "nllmd run: %s\n", err.msg);
                rc = 1;
            }
        }
    } else {
        nllm_job_origin_t o = {0};
        if (init_from && nllmd_resolve_checkpoint(d, init_from, &o, &err) < 0) {
            fprintf(stderr, "nllmd run: --init-from: %s\n", err.msg);
            rc = 2;
        } else {
            o.weights_only = init_from != NULL;
            char ndev[32] = "";
            if (cfg.num_devices > 1)
                snprintf(ndev, sizeof ndev, " x%d", cfg.num_devices);
            printf("Job %s: V=%d De=%d H=%d Dc=%d L=%d S=%d dropout=%g, %d epochs, batch %d, "
                   "lr %g, device %s%s, precision %s\n",
                   name, cfg.model.vocab_size, cfg.model.embed_dim, cfg.model.hidden_dim,
                   cfg.model.context_dim, cfg.model.num_layers, cfg.model.max_seq_length,
                   (double)cfg.model.dropout, cfg.num_epochs, cfg.batch_size, cfg.learning_rate,
                   cfg.device[0] ? cfg.device : d->devices[0].name,
                   ndev,
                   nllm_precision_name(cfg.precision));
            /* the job must be known before it starts, to print its first events */
            d->oneshot = NULL;
            share_decision(&shared, 0, &cfg);
            if (nllmd_job_create(d, name, &cfg, &o, NULL, NULL, &j, &err) < 0) {
                fprintf(stderr, "nllmd run: %s\n", err.msg);
                rc = 1;
            } else {
                d->oneshot = j;
            }
        }
    }
    share_decision(&shared, rc, NULL); /* no job started: the others end too */
    if (rc != 0) {
        d->shutting_down = 1;
        finish_if_idle(d);
        loop_finish(d);
        goto out;
    }
    uv_timer_start(&d->tick, on_tick, 1000, 1000);
    d->exit_code = 0;
    loop_finish(d);
    rc = d->exit_code;
out:
    for (int i = 0; i < nsets; i++)
        free(sets[i].value);
    free(sets);
    return rc;
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    static nllmd_t daemon;
    nllmd_t *d = &daemon;
    nllm_err_t err;
    d->state_lock = -1;
    if (argc > 1 && !strcmp(argv[1], "run"))
        return run_oneshot(d, argc - 1, argv + 1);

    const char *config = NULL;
    int c;
    nllmd_opts_t cli = {0};
    int seen[O_LAST] = {0};
    while ((c = getopt_long(argc, argv, "", daemon_opts, NULL)) != -1) {
        if (c == O_HELP) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (c == O_VERSION) {
            printf("nllmd %s\n", NLLMD_VERSION);
            return 0;
        }
        if (c == O_CONFIG) {
            config = optarg;
            continue;
        }
        if (c < O_STATE || c >= O_LAST) {
            fputs(usage_text, stderr);
            return 2;
        }
        if (set_opt(&cli, c, optarg, &err) < 0) {
            fprintf(stderr, "nllmd: %s\n", err.msg);
            return 2;
        }
        seen[c] = 1;
    }
    if (optind < argc) {
        fprintf(stderr, "nllmd: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    /* config file first, then the flags given on the command line */
    if (read_config_file(&d->opt, config ? config : "/etc/nllm/nllmd.conf", config != NULL,
                         &err) < 0) {
        fprintf(stderr, "nllmd: %s\n", err.msg);
        return 2;
    }
    if (seen[O_STATE])
        memcpy(d->opt.state_dir, cli.state_dir, sizeof cli.state_dir);
    if (seen[O_SOCKET])
        memcpy(d->opt.socket_path, cli.socket_path, sizeof cli.socket_path);
    if (seen[O_LISTEN])
        memcpy(d->opt.listen, cli.listen, sizeof cli.listen);
    if (seen[O_TOKEN])
        memcpy(d->opt.token_file, cli.token_file, sizeof cli.token_file);
    if (seen[O_DEVICES])
        memcpy(d->opt.devices, cli.devices, sizeof cli.devices);
    if (seen[O_MAXJOBS])
        d->opt.max_jobs = cli.max_jobs;
    if (seen[O_JOBSPERDEV])
        d->opt.jobs_per_device = cli.jobs_per_device;
    if (seen[O_AUTORESUME])
        d->opt.auto_resume = 1;
    if (seen[O_MAXMSG])
        d->opt.max_message = cli.max_message;
    if (seen[O_THREADS])
        d->opt.threads = cli.threads;
    if (seen[O_METRICS])
        memcpy(d->opt.metrics, cli.metrics, sizeof cli.metrics);
    default_paths(&d->opt);

    loop_init(d);
    char owner[NLLM_PATH_MAX + 32];
    snprintf(owner, sizeof owner, "nllmd, socket %s", d->opt.socket_path);
    if (setup_devices(d, &err) < 0 || open_state(d, owner, &err) < 0 ||
        nllmd_server_start(d, nllmd_dispatch, &err) < 0 || nllmd_http_start(d, &err) < 0) {
        fprintf(stderr, "nllmd: %s\n", err.msg);
        d->shutting_down = 1;
        finish_if_idle(d);
        loop_finish(d);
        return 1;
    }
    nllmd_log(d, NULL,
              "nllmd %s ready: socket %s, state %s, %d device(s) (%s%s), %d job(s) per device, "
              "%d at once, %s",
              NLLMD_VERSION, d->opt.socket_path, d->opt.state_dir, d->ndevices,
              d->devices[0].name, d->ndevices > 1 ? ",..." : "", d->opt.jobs_per_device,
              d->opt.max_jobs, d->opt.listen[0] ? d->opt.listen : "no TCP");
    log_cpu_kernels(d);
    uv_timer_start(&d->tick, on_tick, 1000, 1000);
    nllmd_schedule(d);
    sd_notify_msg("READY=1");
    notify_status(d);
    loop_finish(d);
    nllmd_log(d, NULL, "stopped");
    return 0;
}
