/* nllmctl.c -- the command-line client of nllmd: parses a command and its
 * flags, sends one msgpack-RPC request (proto/PROTOCOL.md), and prints the
 * result as text or --json. Exit codes: 0 ok, 1 the daemon answered with an
 * error (its message is printed), 2 usage error, 3 cannot connect (or the
 * connection was lost). Owns only argument handling and printing; the wire
 * and the watch display live in conn.c and watch.c. `--host ssh://...` runs
 * ssh to a remote `nllmctl proxy`, which splices its stdin and stdout to the
 * remote daemon's Unix socket (cmd_proxy, at the end of the commands).
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "curves.h"
#include "fmt.h"
#include "watch.h"

#ifndef NLLM_VERSION
#define NLLM_VERSION "0.0.0"
#endif

enum { EXIT_OK = 0, EXIT_DAEMON = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

typedef struct {
    const char *socket, *connect, *token_file, *host;
    int json;
    char socket_buf[PATH_MAX];
} global_t;

typedef struct cmd cmd_t;
struct cmd {
    const char *name;
    int (*run)(global_t *g, const cmd_t *cmd, int argc, char **argv);
    const char *synopsis; /* after "nllmctl " */
    const char *summary;
    const char *help;     /* description and flags */
};

/* ---- usage ------------------------------------------------------------- */

#define GLOBAL_FLAGS                                                                     \
    "Global flags (before or after the command):\n"                                     \
    "  --socket PATH        nllmd's Unix socket (default: $NLLM_SOCKET, else\n"          \
    "                       $RUNTIME_DIRECTORY/nllmd.sock, else /run/nllm/nllmd.sock as\n" \
    "                       root, else $XDG_RUNTIME_DIR/nllm/nllmd.sock, else\n"         \
    "                       /tmp/nllm-$UID/nllmd.sock; /run/nllm/nllmd.sock is tried\n"  \
    "                       when the per-user socket does not exist)\n"                  \
    "  --connect HOST:PORT  use TCP instead (nllmd --listen); [ADDR]:PORT for IPv6\n"    \
    "  --token-file F       send the token in F (first line) with `auth` first\n"        \
    "  --host ssh://[USER@]HOST[:PORT][/SOCKET]\n"                                       \
    "                       reach nllmd on another machine through ssh (default:\n"      \
    "                       $NLLM_HOST unless --socket or --connect is given); the\n"     \
    "                       path is the remote daemon's socket (default: its default)\n" \
    "  --json               print the raw result as JSON (watch: one object per line)\n" \
    "  -h, --help           this help\n"

static const cmd_t *find_cmd(const char *name);
static const cmd_t commands[];

static void print_synopsis(FILE *f, const cmd_t *c)
{
    fprintf(f, "usage: nllmctl [GLOBAL FLAGS] %s\n", c->synopsis);
}

static void print_cmd_help(const cmd_t *c)
{
    print_synopsis(stdout, c);
    printf("\n%s\n\n%s\n%s", c->summary, c->help, GLOBAL_FLAGS);
}

static int usage_error(const cmd_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const cmd_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nllmctl %s: ", c->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    print_synopsis(stderr, c);
    fprintf(stderr, "Run `nllmctl %s --help` for every flag.\n", c->name);
    return EXIT_USAGE;
}

static void print_main_usage(FILE *f)
{
    fprintf(f, "usage: nllmctl [--socket PATH | --host ssh://[USER@]HOST[:PORT][/SOCKET] |\n"
               "               --connect HOST:PORT --token-file F] [--json] COMMAND [ARGS]\n"
               "\nControls nllmd, the nllm training daemon.\n\nCommands:\n");
    for (const cmd_t *c = commands; c->name; c++)
        fprintf(f, "  %-12s %s\n", c->name, c->summary);
    fprintf(f, "\n%s\nRun `nllmctl COMMAND --help` for a command's flags.\n"
               "Exit status: 0 ok, 1 the daemon refused (its message says why), 2 usage "
               "error,\n3 cannot reach nllmd.\n"
               "\nEnvironment: NLLM_SOCKET (the socket), NLLM_HOST (an ssh:// URL, as --host),\n"
               "NLLM_SSH (the ssh program, default ssh), NLLM_SSH_OPTS (extra ssh arguments,\n"
               "split at spaces, e.g. \"-F ~/.ssh/nllm_config\"), NLLM_REMOTE_NLLMCTL (the\n"
               "remote command line that starts nllmctl, default nllmctl).\n",
            GLOBAL_FLAGS);
}

/* ---- option parsing ------------------------------------------------------ */

enum {
    O_HELP = 'h',
    O_JSON = 1000, O_SOCKET, O_CONNECT, O_TOKEN, O_HOST,
    /* start / resume */
    O_DATA, O_VAL, O_CONFIG, O_EPOCHS, O_BATCH, O_LR, O_SEQ, O_VOCAB, O_EMBED, O_HIDDEN,
    O_CONTEXT, O_LAYERS, O_DROPOUT, O_PATIENCE, O_RESET_PATIENCE, O_SAVE_EVERY, O_KEEP,
    O_CLIP, O_SEED, O_TOKENIZER, O_DEVICE, O_INIT_FROM, O_INIT_OPT, O_THREADS, O_WATCH,
    O_SET, O_PRECISION, O_ON_DIV, O_NUM_DEVICES, O_GPUS,
    /* others */
    O_AT_EPOCH_END, O_ALL, O_CSV, O_LIMIT, O_DELETE_FILES, O_CHECKPOINT, O_PROMPT,
    O_TOKENS, O_TEMPERATURE, O_OUTPUT,
};

#define COMMON_OPTS                                                                       \
    {"help", no_argument, 0, O_HELP}, {"json", no_argument, 0, O_JSON},                   \
        {"socket", required_argument, 0, O_SOCKET},                                       \
        {"connect", required_argument, 0, O_CONNECT},                                     \
        {"token-file", required_argument, 0, O_TOKEN},                                    \
        {"host", required_argument, 0, O_HOST}

/* 1: handled, 0: not a common option. */
static int common_opt(global_t *g, int opt)
{
    switch (opt) {
    case O_JSON:
        g->json = 1;
        return 1;
    case O_SOCKET:
        g->socket = optarg;
        return 1;
    case O_CONNECT:
        g->connect = optarg;
        return 1;
    case O_TOKEN:
        g->token_file = optarg;
        return 1;
    case O_HOST:
        g->host = optarg;
        return 1;
    }
    return 0;
}

/* Runs getopt_long over a command's argv (argv[0] = command name) and hands
 * each non-common option to fn. Positionals are left in argv[optind..].
 * Returns -1 to go on, else an exit code (help printed, usage error).
 * shortopts: getopt's short options, ":h" plus the command's own. */
typedef int (*opt_fn)(void *ctx, const cmd_t *c, int opt, const char *arg);
static int parse_opts_short(global_t *g, const cmd_t *c, int argc, char **argv,
                            const char *shortopts, const struct option *opts, opt_fn fn,
                            void *ctx)
{
    optind = 0; /* glibc: full re-initialisation */
    opterr = 0;
    for (;;) {
        int idx = 0;
        int opt = getopt_long(argc, argv, shortopts, opts, &idx); /* permuting */
        if (opt == -1)
            break;
        if (opt == O_HELP) {
            print_cmd_help(c);
            return EXIT_OK;
        }
        if (opt == ':') {
            for (const struct option *o = opts; o->name; o++)
                if (optopt == o->val)
                    return usage_error(c, "--%s needs a value", o->name);
            return usage_error(c, "%s needs a value", argv[optind - 1]);
        }
        if (opt == '?') {
            if (optopt > ' ' && optopt < 127)
                return usage_error(c, "unknown flag -%c", optopt);
            return usage_error(c, "unknown flag %s", argv[optind - 1]);
        }
        if (common_opt(g, opt))
            continue;
        int rc = fn ? fn(ctx, c, opt, optarg) : usage_error(c, "unexpected flag");
        if (rc >= 0)
            return rc;
    }
    return -1;
}

static int parse_opts(global_t *g, const cmd_t *c, int argc, char **argv,
                      const struct option *opts, opt_fn fn, void *ctx)
{
    return parse_opts_short(g, c, argc, argv, ":h", opts, fn, ctx);
}

static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (end == s || *end || errno || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

static int parse_f64(const char *s, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(x))
        return -1;
    *out = x;
    return 0;
}

/* ---- connecting -------------------------------------------------------- */

static int path_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static const char *default_socket(global_t *g)
{
    const char *e = getenv("NLLM_SOCKET");
    if (e && *e)
        return e;
    e = getenv("RUNTIME_DIRECTORY"); /* systemd: may list several, ':'-separated */
    if (e && *e) {
        size_t n = strcspn(e, ":");
        snprintf(g->socket_buf, sizeof g->socket_buf, "%.*s/nllmd.sock", (int)n, e);
        return g->socket_buf;
    }
    if (geteuid() == 0)
        return "/run/nllm/nllmd.sock";
    e = getenv("XDG_RUNTIME_DIR");
    if (e && *e)
        snprintf(g->socket_buf, sizeof g->socket_buf, "%s/nllm/nllmd.sock", e);
    else
        snprintf(g->socket_buf, sizeof g->socket_buf, "/tmp/nllm-%u/nllmd.sock",
                 (unsigned)getuid());
    /* a system daemon serves users too: fall back to its socket */
    if (!path_exists(g->socket_buf) && path_exists("/run/nllm/nllmd.sock"))
        return "/run/nllm/nllmd.sock";
    return g->socket_buf;
}

static int read_token(const char *path, char *buf, size_t cap, nllm_err_t *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return nllm_err_set(err, NLLM_EIO, "token file %s: %s", path, strerror(errno));
    if (!fgets(buf, (int)cap, f)) {
        fclose(f);
        return nllm_err_set(err, NLLM_EINVAL, "token file %s is empty", path);
    }
    fclose(f);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
                     buf[n - 1] == '\t'))
        buf[--n] = '\0';
    if (n == 0)
        return nllm_err_set(err, NLLM_EINVAL, "token file %s is empty", path);
    return 0;
}

/* The ssh:// URL in effect: --host, else NLLM_HOST unless --socket,
 * --connect or --token-file chose another daemon; NULL for none. */
static const char *ssh_host(const global_t *g)
{
    if (g->host)
        return g->host;
    if (g->socket || g->connect || g->token_file)
        return NULL;
    const char *e = getenv("NLLM_HOST");
    return e && *e ? e : NULL;
}

/* Appends s to buf (at *len, capacity cap) quoted for a POSIX shell. */
static int shell_quote(char *buf, size_t cap, size_t *len, const char *s)
{
    size_t n = *len;
    if (n + 1 >= cap)
        return -1;
    buf[n++] = '\'';
    for (; *s; s++) {
        const char *piece = *s == '\'' ? "'\\''" : NULL;
        size_t pl = piece ? strlen(piece) : 1;
        if (n + pl + 2 >= cap)
            return -1;
        if (piece)
            memcpy(buf + n, piece, pl);
        else
            buf[n] = *s;
        n += pl;
    }
    buf[n++] = '\'';
    buf[n] = '\0';
    *len = n;
    return 0;
}

/* Opens c through `ssh [NLLM_SSH_OPTS] -T [-p PORT] [-l USER] -- HOST
 * nllmctl proxy [--socket PATH]` for url = ssh://[USER@]HOST[:PORT][/PATH]
 * ([V6ADDR] in brackets). Returns EXIT_OK, EXIT_USAGE (a bad URL) or
 * EXIT_CONNECT (ssh could not be started). */
static int connect_ssh(const char *url, nllm_conn_t *c, FILE *out)
{
    char auth[512], user[256] = "", host[256], port[16] = "";
    const char *bad = NULL;
    if (strncmp(url, "ssh://", 6) != 0) {
        bad = "only ssh:// hosts are supported";
        goto usage;
    }
    const char *rest = url + 6, *slash = strchr(rest, '/');
    size_t alen = slash ? (size_t)(slash - rest) : strlen(rest);
    if (alen == 0 || alen >= sizeof auth) {
        bad = "missing or overlong host";
        goto usage;
    }
    memcpy(auth, rest, alen);
    auth[alen] = '\0';
    const char *path = slash && slash[1] ? slash : NULL;
    char *hp = auth, *at = strrchr(auth, '@');
    if (at) {
        *at = '\0';
        if (!*auth || strlen(auth) >= sizeof user || auth[0] == '-') {
            bad = "bad user name";
            goto usage;
        }
        snprintf(user, sizeof user, "%s", auth);
        hp = at + 1;
    }
    char *colon = NULL;
    if (hp[0] == '[') {
        char *rb = strchr(hp, ']');
        if (!rb || (rb[1] && rb[1] != ':')) {
            bad = "expected [ADDRESS] or [ADDRESS]:PORT";
            goto usage;
        }
        *rb = '\0';
        colon = rb[1] ? rb + 1 : NULL;
        hp++;
    } else if ((colon = strchr(hp, ':')) && strchr(colon + 1, ':')) {
        colon = NULL; /* a bare IPv6 address: no port */
    }
    if (colon) {
        *colon = '\0';
        char *end;
        long pn = strtol(colon + 1, &end, 10);
        if (!colon[1] || *end || pn < 1 || pn > 65535) {
            bad = "the port must be a number 1..65535";
            goto usage;
        }
        snprintf(port, sizeof port, "%ld", pn);
    }
    if (!*hp || hp[0] == '-' || strlen(hp) >= sizeof host) {
        bad = "bad host name";
        goto usage;
    }
    snprintf(host, sizeof host, "%s", hp);

    char where[600], remote[PATH_MAX + 512], opts[4096];
    snprintf(where, sizeof where, "ssh://%.*s", (int)alen, rest);
    const char *rc = getenv("NLLM_REMOTE_NLLMCTL");
    int w = snprintf(remote, sizeof remote, "%s proxy", rc && *rc ? rc : "nllmctl");
    size_t rlen = w > 0 ? (size_t)w : sizeof remote;
    if (path) {
        static const char flag[] = " --socket ";
        if (rlen + sizeof flag < sizeof remote) {
            memcpy(remote + rlen, flag, sizeof flag);
            rlen += sizeof flag - 1;
        } else {
            rlen = sizeof remote;
        }
        if (rlen >= sizeof remote || shell_quote(remote, sizeof remote, &rlen, path) < 0) {
            bad = "the socket path (or NLLM_REMOTE_NLLMCTL) is too long";
            goto usage;
        }
    } else if (rlen >= sizeof remote) {
        bad = "NLLM_REMOTE_NLLMCTL is too long";
        goto usage;
    }
    char *argv[64];
    int n = 0;
    const char *ssh = getenv("NLLM_SSH");
    argv[n++] = (char *)(ssh && *ssh ? ssh : "ssh");
    const char *o = getenv("NLLM_SSH_OPTS");
    snprintf(opts, sizeof opts, "%s", o ? o : "");
    for (char *save = NULL, *t = strtok_r(opts, " \t\n", &save); t;
         t = strtok_r(NULL, " \t\n", &save)) {
        if (n >= 54) {
            if (out)
                fprintf(out, "nllmctl: NLLM_SSH_OPTS has too many arguments\n");
            return EXIT_USAGE;
        }
        argv[n++] = t;
    }
    argv[n++] = "-T"; /* no terminal: the channel carries msgpack */
    if (*port) {
        argv[n++] = "-p";
        argv[n++] = port;
    }
    if (*user) {
        argv[n++] = "-l";
        argv[n++] = user;
    }
    argv[n++] = "--";
    argv[n++] = host;
    argv[n++] = remote;
    argv[n] = NULL;
    nllm_err_t err = {0};
    if (nllm_conn_open_cmd(c, argv, where, &err) != NLLM_CALL_OK) {
        nllm_conn_close(c);
        if (out)
            fprintf(out, "nllmctl: %s\n", err.msg);
        return EXIT_CONNECT;
    }
    return EXIT_OK;
usage:
    if (out)
        fprintf(out, "nllmctl: --host %s: %s (expected ssh://[USER@]HOST[:PORT][/SOCKET])\n",
                url, bad);
    return EXIT_USAGE;
}

/* Returns EXIT_OK with c open, else the exit code (message printed unless
 * quiet). */
static int connect_quiet(global_t *g, nllm_conn_t *c, int quiet)
{
    nllm_err_t err = {0};
    FILE *out = quiet ? NULL : stderr;
    if (g->host && (g->socket || g->connect || g->token_file)) {
        if (out)
            fprintf(out, "nllmctl: --host goes alone: put the remote socket in its path "
                         "(ssh://HOST/run/nllm/nllmd.sock); ssh authenticates, no token\n");
        return EXIT_USAGE;
    }
    const char *host = ssh_host(g);
    if (host)
        return connect_ssh(host, c, out);
    if (g->connect && g->socket) {
        if (out)
            fprintf(out, "nllmctl: give either --socket or --connect, not both\n");
        return EXIT_USAGE;
    }
    if (g->token_file && !g->connect) {
        if (out)
            fprintf(out, "nllmctl: --token-file goes with --connect HOST:PORT (a Unix socket "
                         "needs no token)\n");
        return EXIT_USAGE;
    }
    if (g->connect) {
        char token[4096];
        if (g->token_file && read_token(g->token_file, token, sizeof token, &err) < 0) {
            if (out)
                fprintf(out, "nllmctl: %s\n", err.msg);
            return EXIT_USAGE;
        }
        if (nllm_conn_open_tcp(c, g->connect, &err) != NLLM_CALL_OK) {
            nllm_conn_close(c);
            if (out)
                fprintf(out,
                    "nllmctl: %s\n"
                    "nllmctl: is nllmd running and listening there? start it with `nllmd "
                    "--state-dir DIR --listen %s --token-file F` or `systemctl start nllmd`\n",
                    err.msg, g->connect);
            return EXIT_CONNECT;
        }
        if (g->token_file) {
            json_t *p = json_pack("{ss}", "token", token), *res = NULL;
            char code[64];
            int rc = nllm_conn_call(c, "auth", p, &res, code, sizeof code, &err);
            json_decref(p);
            json_decref(res);
            explicit_bzero(token, sizeof token);
            if (rc != NLLM_CALL_OK) {
                if (out)
                    fprintf(out, "nllmctl: %s%s\n", rc == NLLM_CALL_ERROR ? "auth: " : "",
                        err.msg);
                nllm_conn_close(c);
                return rc == NLLM_CALL_ERROR ? EXIT_DAEMON : EXIT_CONNECT;
            }
        }
        return EXIT_OK;
    }
    const char *path = g->socket ? g->socket : default_socket(g);
    if (nllm_conn_open_unix(c, path, &err) != NLLM_CALL_OK) {
        nllm_conn_close(c);
        if (out)
            fprintf(out,
                "nllmctl: %s\n"
                "nllmctl: is nllmd running? start it with `nllmd --state-dir DIR` or "
                "`systemctl start nllmd`, or point nllmctl at its socket with --socket PATH "
                "or NLLM_SOCKET\n",
                err.msg);
        return EXIT_CONNECT;
    }
    return EXIT_OK;
}

static int connect_daemon(global_t *g, nllm_conn_t *c)
{
    return connect_quiet(g, c, 0);
}

/* The daemon's (or the transport's) error on stderr, with a hint where the
 * daemon cannot give one. */
static void report_error(const char *code, const nllm_err_t *err)
{
    fprintf(stderr, "nllmctl: %s\n", err->msg);
    if (!strcmp(code, NLLM_RPC_CODE_UNAUTHORIZED))
        fprintf(stderr, "nllmctl: pass the daemon's token with --connect HOST:PORT "
                        "--token-file F\n");
}

/* One request on c. params is consumed (may be NULL). Prints the daemon's
 * error; returns an exit code. */
static int call(nllm_conn_t *c, const char *method, json_t *params, json_t **result)
{
    char code[64];
    nllm_err_t err = {0};
    int rc = nllm_conn_call(c, method, params, result, code, sizeof code, &err);
    json_decref(params);
    if (rc == NLLM_CALL_OK)
        return EXIT_OK;
    report_error(code, &err);
    return rc == NLLM_CALL_ERROR ? EXIT_DAEMON : EXIT_CONNECT;
}

static json_t *name_params(const char *name)
{
    return json_pack("{ss}", "name", name);
}

/* method (start or resume), with `watch` pipelined right behind it when
 * watch is set, so that the watch is in place before the job can report
 * anything (a tiny job may finish at once). params is consumed. */
static int call_then_watch(nllm_conn_t *c, const char *method, json_t *params,
                           const char *name, int watch, uint32_t *watch_id, json_t **result)
{
    char code[64];
    nllm_err_t err = {0};
    uint32_t id;
    int rc = nllm_conn_request(c, method, params, &id, &err);
    json_decref(params);
    if (rc == NLLM_CALL_OK && watch) {
        json_t *wp = name_params(name);
        rc = nllm_conn_request(c, "watch", wp, watch_id, &err);
        json_decref(wp);
    }
    if (rc == NLLM_CALL_OK)
        rc = nllm_conn_wait(c, id, result, code, sizeof code, &err);
    if (rc == NLLM_CALL_OK)
        return EXIT_OK;
    report_error(code, &err);
    return rc == NLLM_CALL_ERROR ? EXIT_DAEMON : EXIT_CONNECT;
}

/* Connect, call, close. */
static int call1(global_t *g, const char *method, json_t *params, json_t **result)
{
    nllm_conn_t c;
    int rc = connect_daemon(g, &c);
    if (rc) {
        json_decref(params);
        return rc;
    }
    rc = call(&c, method, params, result);
    nllm_conn_close(&c);
    return rc;
}

static void print_json(const json_t *j)
{
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_ENCODE_ANY);
    fputc('\n', stdout);
}

/* ---- tables ------------------------------------------------------------ */

typedef struct {
    int ncols;
    int nrows, cap;
    char **cells; /* nrows * ncols, row 0 the header */
} table_t;

static void table_init(table_t *t, int ncols)
{
    memset(t, 0, sizeof *t);
    t->ncols = ncols;
}

static void table_row(table_t *t, ...)
{
    if (t->nrows == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        char **n = realloc(t->cells, (size_t)t->cap * (size_t)t->ncols * sizeof *n);
        if (!n) {
            fprintf(stderr, "nllmctl: out of memory\n");
            exit(EXIT_DAEMON);
        }
        t->cells = n;
    }
    va_list ap;
    va_start(ap, t);
    for (int i = 0; i < t->ncols; i++) {
        const char *s = va_arg(ap, const char *);
        t->cells[t->nrows * t->ncols + i] = strdup(s ? s : "-");
    }
    va_end(ap);
    t->nrows++;
}

/* Display width of UTF-8 text (code points; good enough for our tables). */
static int text_width(const char *s)
{
    int w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

static void table_print(table_t *t)
{
    int *w = calloc((size_t)t->ncols, sizeof *w);
    for (int r = 0; r < t->nrows; r++)
        for (int i = 0; i < t->ncols; i++) {
            int x = text_width(t->cells[r * t->ncols + i]);
            if (w && x > w[i])
                w[i] = x;
        }
    for (int r = 0; r < t->nrows; r++) {
        int last = t->ncols - 1; /* no padding after the last non-empty cell */
        while (last > 0 && !t->cells[r * t->ncols + last][0])
            last--;
        for (int i = 0; i <= last; i++) {
            const char *s = t->cells[r * t->ncols + i];
            if (i == last)
                printf("%s", s);
            else
                printf("%s%*s", s, (w ? w[i] : 0) - text_width(s) + 2, "");
        }
        printf("\n");
    }
    free(w);
    for (int k = 0; k < t->nrows * t->ncols; k++)
        free(t->cells[k]);
    free(t->cells);
}

/* ---- printers ---------------------------------------------------------- */

/* The strings of arr joined with ", " into buf, leaving out skip (may be
 * NULL); returns how many were joined. */
static int join_names(const json_t *arr, const char *skip, char *buf, size_t n)
{
    size_t i, used = 0;
    const json_t *v;
    int k = 0;
    buf[0] = '\0';
    json_array_foreach(arr, i, v)
    {
        const char *s = json_string_value(v);
        if (!s || (skip && !strcmp(s, skip)) || used >= n)
            continue;
        used += (size_t)snprintf(buf + used, n - used, "%s%s", k ? ", " : "", s);
        k++;
    }
    return k;
}

static void print_status(const json_t *st)
{
    char a[64], b[64], c[64], d[64];
    printf("name:            %s\n", nllm_j_str(st, "name", "?"));
    printf("state:           %s\n", nllm_j_str(st, "state", "?"));
    int64_t ep = nllm_j_int(st, "epoch", 0), ne = nllm_j_int(st, "num_epochs", 0);
    printf("epoch:           %lld/%lld\n", (long long)ep, (long long)ne);
    const char *state = nllm_j_str(st, "state", "");
    int64_t spe = nllm_j_int(st, "steps_per_epoch", 0);
    if (!strcmp(state, "running") || !strcmp(state, "pausing")) {
        printf("step:            %lld/%lld of epoch %lld\n", (long long)nllm_j_int(st, "step", 0),
               (long long)spe, (long long)ep + 1);
        nllm_fmt_field(st, "loss", 4, a, sizeof a);
        printf("running loss:    %s\n", a);
        double tps;
        if (nllm_j_num(st, "tokens_per_s", &tps)) {
            nllm_fmt_count(tps, a, sizeof a);
            printf("tokens/s:        %s\n", a);
        }
    }
    printf("global step:     %lld\n", (long long)nllm_j_int(st, "global_step", 0));
    nllm_fmt_field(st, "train_loss", 4, a, sizeof a);
    printf("train loss:      %s\n", a);
    nllm_fmt_field(st, "val_loss", 4, a, sizeof a);
    nllm_fmt_field(st, "val_ppl", 2, b, sizeof b);
    nllm_fmt_percent_field(st, "val_acc", c, sizeof c);
    printf("val loss:        %s (PPL %s, accuracy %s)\n", a, b, c);
    double best;
    if (nllm_j_num(st, "best_val_loss", &best))
        printf("best val loss:   %.4f (PPL %.2f) at epoch %lld\n", best, best < 700 ? exp(best) : INFINITY,
               (long long)nllm_j_int(st, "best_epoch", 0));
    else
        printf("best val loss:   -\n");
    char others[512];
    if (join_names(json_object_get(st, "device_jobs"), nllm_j_str(st, "name", ""), others,
                   sizeof others))
        printf("device:          %s (shared with %s)\n", nllm_j_str(st, "device", "-"), others);
    else
        printf("device:          %s\n", nllm_j_str(st, "device", "-"));
    long long ndev = (long long)nllm_j_int(st, "num_devices", 1);
    if (ndev > 1) {
        char devs[512];
        nllm_fmt_devices(st, devs, sizeof devs, "-");
        if (json_array_size(json_object_get(st, "ranks")) > 0)
            printf("devices:         %lld data-parallel ranks on %s\n", ndev, devs);
        else
            printf("devices:         %lld data-parallel ranks (num_devices)\n", ndev);
        const json_t *ranks = json_object_get(st, "ranks");
        size_t i;
        const json_t *rk;
        json_array_foreach(ranks, i, rk)
        {
            double rt = 0;
            nllm_j_num(rk, "tokens_per_s", &rt);
            nllm_fmt_count(rt, a, sizeof a);
            printf("  rank %lld:        %s, %s tokens/s\n", (long long)nllm_j_int(rk, "rank", 0),
                   nllm_j_str(rk, "device", "?"), a);
        }
    }
    double peak;
    if (nllm_j_num(st, "device_memory_peak", &peak) && peak > 0) {
        nllm_fmt_size(peak, a, sizeof a);
        printf("device memory:   %s at most (its latest run)\n", a);
    }
    printf("precision:       %s\n", nllm_j_str(st, "precision", "-"));
    printf("attempt:         %lld\n", (long long)nllm_j_int(st, "attempt", 1));
    long long ndiv = (long long)nllm_j_int(st, "divergences", 0);
    if (ndiv > 0)
        printf("divergences:     %lld since the last start or resume (see events)\n", ndiv);
    long long nfault = (long long)nllm_j_int(st, "device_faults", 0);
    if (nfault > 0)
        printf("device faults:   %lld since the last start or resume (see events)\n", nfault);
    const char *e = nllm_j_str(st, "error", NULL);
    if (e && *e)
        printf("error:           %s\n", e);
    double t = 0;
    nllm_j_num(st, "created", &t);
    nllm_fmt_time(t, d, sizeof d);
    printf("created:         %s\n", d);
    t = 0;
    nllm_j_num(st, "updated", &t);
    nllm_fmt_time(t, d, sizeof d);
    printf("updated:         %s\n", d);
    const json_t *cfg = json_object_get(st, "config");
    if (json_is_object(cfg)) {
        double np = nllm_model_params_of(cfg);
        if (np > 0) {
            nllm_fmt_count(np, a, sizeof a);
            printf("parameters:      %s (%.0f)\n", a, np);
        }
        printf("config:\n");
        /* known keys in table order, then anything else the daemon sent */
        const char *const *keys = nllm_job_config_keys();
        for (size_t i = 0; keys[i]; i++) {
            const json_t *v = json_object_get(cfg, keys[i]);
            if (!v)
                continue;
            char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT), num[64];
            const char *txt = json_is_string(v) ? json_string_value(v) : s ? s : "?";
            if (json_is_real(v)) { /* 0.1 rather than 0.10000000149011612 */
                snprintf(num, sizeof num, "%.7g", json_real_value(v));
                txt = num;
            }
            printf("  %-16s %s\n", keys[i], *txt ? txt : "\"\"");
            free(s);
        }
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)cfg, k, v)
        {
            int known = 0;
            for (size_t i = 0; keys[i] && !known; i++)
                known = !strcmp(keys[i], k);
            if (known)
                continue;
            char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            printf("  %-16s %s\n", k, s ? s : "?");
            free(s);
        }
    }
}

static void one_line_status(const char *what, const json_t *st)
{
    printf("%s %s: %s, epoch %lld/%lld", what, nllm_j_str(st, "name", "?"),
           nllm_j_str(st, "state", "?"), (long long)nllm_j_int(st, "epoch", 0),
           (long long)nllm_j_int(st, "num_epochs", 0));
    char devs[512];
    if (*nllm_fmt_devices(st, devs, sizeof devs, ""))
        printf(" on %s", devs);
    printf("\n");
}

/* ---- commands ---------------------------------------------------------- */

static int need_name(const cmd_t *c, int argc, char **argv, int max_pos)
{
    int npos = argc - optind;
    if (npos < 1)
        return usage_error(c, "missing the job NAME");
    if (npos > max_pos)
        return usage_error(c, "unexpected argument \"%s\"", argv[optind + max_pos]);
    return -1;
}

/* parse_opts, then the positionals: with max_pos 0 none, else the job NAME
 * and at most max_pos - 1 more (need_name). Returns -1 to go on, else an
 * exit code. */
static int parse_args(global_t *g, const cmd_t *c, int argc, char **argv,
                      const struct option *opts, opt_fn fn, void *ctx, int max_pos)
{
    int rc = parse_opts(g, c, argc, argv, opts, fn, ctx);
    if (rc >= 0)
        return rc;
    if (max_pos > 0)
        return need_name(c, argc, argv, max_pos);
    if (optind < argc)
        return usage_error(c, "unexpected argument \"%s\"", argv[optind]);
    return -1;
}

/* call1, and with --json the result printed. Returns the exit code; *res
 * is NULL unless the result is still to be printed as text and freed (the
 * call succeeded and --json is off). */
static int call_json_or_text(global_t *g, const char *method, json_t *params, json_t **res)
{
    *res = NULL;
    int rc = call1(g, method, params, res);
    if (rc == EXIT_OK && g->json) {
        print_json(*res);
        json_decref(*res);
        *res = NULL;
    }
    return rc;
}

/* -- start -- */

typedef struct {
    const char *key, *value, *flag;
} setting_t;

/* The settings flags of start and resume, in the order given. */
typedef struct {
    setting_t set[128];
    int nset, max;      /* max: how many the command takes (at most 128) */
    char keys[128][64]; /* the keys of --set flags */
} settings_t;

typedef struct {
    settings_t s;
    const char *data, *val, *config, *init_from;
    int init_optimizer, watch;
} start_opts_t;

static const struct option start_long[] = {
    COMMON_OPTS,
    {"data", required_argument, 0, O_DATA},
    {"val", required_argument, 0, O_VAL},
    {"config", required_argument, 0, O_CONFIG},
    {"epochs", required_argument, 0, O_EPOCHS},
    {"batch", required_argument, 0, O_BATCH},
    {"lr", required_argument, 0, O_LR},
    {"seq-len", required_argument, 0, O_SEQ},
    {"vocab", required_argument, 0, O_VOCAB},
    {"embed-dim", required_argument, 0, O_EMBED},
    {"hidden-dim", required_argument, 0, O_HIDDEN},
    {"context-dim", required_argument, 0, O_CONTEXT},
    {"layers", required_argument, 0, O_LAYERS},
    {"dropout", required_argument, 0, O_DROPOUT},
    {"patience", required_argument, 0, O_PATIENCE},
    {"reset-patience", no_argument, 0, O_RESET_PATIENCE},
    {"save-every", required_argument, 0, O_SAVE_EVERY},
    {"keep", required_argument, 0, O_KEEP},
    {"clip", required_argument, 0, O_CLIP},
    {"on-divergence", required_argument, 0, O_ON_DIV},
    {"seed", required_argument, 0, O_SEED},
    {"tokenizer", required_argument, 0, O_TOKENIZER},
    {"device", required_argument, 0, O_DEVICE},
    {"init-from", required_argument, 0, O_INIT_FROM},
    {"init-optimizer", no_argument, 0, O_INIT_OPT},
    {"threads", required_argument, 0, O_THREADS},
    {"precision", required_argument, 0, O_PRECISION},
    {"num-devices", required_argument, 0, O_NUM_DEVICES},
    {"gpus", required_argument, 0, O_GPUS},
    {"watch", no_argument, 0, O_WATCH},
    {"set", required_argument, 0, O_SET},
    {0, 0, 0, 0},
};

/* Flag -> config key, for the flags that are plain settings. */
static const struct {
    int opt;
    const char *key, *flag;
} flag_keys[] = {
    {O_EPOCHS, "num_epochs", "--epochs"},         {O_BATCH, "batch_size", "--batch"},
    {O_LR, "learning_rate", "--lr"},              {O_SEQ, "max_seq_length", "--seq-len"},
    {O_VOCAB, "vocab_size", "--vocab"},           {O_EMBED, "embed_dim", "--embed-dim"},
    {O_HIDDEN, "hidden_dim", "--hidden-dim"},     {O_CONTEXT, "context_dim", "--context-dim"},
    {O_LAYERS, "num_layers", "--layers"},         {O_DROPOUT, "dropout", "--dropout"},
    {O_PATIENCE, "patience", "--patience"},       {O_SAVE_EVERY, "save_every", "--save-every"},
    {O_KEEP, "keep", "--keep"},                   {O_CLIP, "clip", "--clip"},
    {O_SEED, "seed", "--seed"},                   {O_TOKENIZER, "tokenizer", "--tokenizer"},
    {O_DEVICE, "device", "--device"},             {O_THREADS, "threads", "--threads"},
    {O_PRECISION, "precision", "--precision"},   {O_ON_DIV, "on_divergence", "--on-divergence"},
    {O_NUM_DEVICES, "num_devices", "--num-devices"},
};

static int add_setting(settings_t *s, const cmd_t *c, const char *key, const char *value,
                       const char *flag)
{
    if (s->nset >= s->max)
        return usage_error(c, "too many settings");
    s->set[s->nset++] = (setting_t){key, value, flag};
    return -1;
}

/* A flag of flag_keys or --set KEY=VALUE: added to s (-1), a usage error,
 * or 0 when opt is neither. A key too long to keep is named in the message
 * with name_long_key, else the message is the one of a malformed --set. */
static int setting_opt(settings_t *s, const cmd_t *c, int opt, const char *arg, int name_long_key)
{
    for (size_t i = 0; i < sizeof flag_keys / sizeof flag_keys[0]; i++)
        if (flag_keys[i].opt == opt)
            return add_setting(s, c, flag_keys[i].key, arg, flag_keys[i].flag);
    if (opt == O_GPUS) { /* any N GPUs: device cuda, num_devices N */
        int rc = add_setting(s, c, "device", "cuda", "--gpus");
        return rc == -1 ? add_setting(s, c, "num_devices", arg, "--gpus") : rc;
    }
    if (opt != O_SET)
        return 0;
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return usage_error(c, "--set wants KEY=VALUE, not \"%s\"", arg);
    size_t n = (size_t)(eq - arg);
    if (n >= sizeof s->keys[0])
        return name_long_key ? usage_error(c, "--set: key \"%.*s\" is too long", (int)n, arg)
                             : usage_error(c, "--set wants KEY=VALUE, not \"%s\"", arg);
    char *k = s->keys[s->nset % 128];
    memcpy(k, arg, n);
    k[n] = '\0';
    return add_setting(s, c, k, eq + 1, "--set");
}

static int start_opt(void *ctx, const cmd_t *c, int opt, const char *arg)
{
    start_opts_t *o = ctx;
    int rc = setting_opt(&o->s, c, opt, arg, 1);
    if (rc)
        return rc;
    switch (opt) {
    case O_DATA:
        o->data = arg;
        return -1;
    case O_VAL:
        o->val = arg;
        return -1;
    case O_CONFIG:
        o->config = arg;
        return -1;
    case O_INIT_FROM:
        o->init_from = arg;
        return -1;
    case O_INIT_OPT:
        o->init_optimizer = 1;
        return -1;
    case O_WATCH:
        o->watch = 1;
        return -1;
    case O_RESET_PATIENCE:
        return add_setting(&o->s, c, "reset_patience", "true", "--reset-patience");
    }
    return usage_error(c, "unexpected flag");
}

/* Absolute, existing path of p (relative to base_dir when given and p is
 * relative). Returns 0 or -errno. */
static int abs_path(const char *p, const char *base_dir, char *out, size_t cap)
{
    char joined[PATH_MAX * 2];
    if (base_dir && p[0] != '/') {
        snprintf(joined, sizeof joined, "%s/%s", base_dir, p);
        p = joined;
    }
    char *r = realpath(p, NULL);
    if (!r)
        return -errno;
    if (strlen(r) >= cap) {
        free(r);
        return -ENAMETOOLONG;
    }
    memcpy(out, r, strlen(r) + 1);
    free(r);
    return 0;
}

/* A file path for start (what: "training data"): local paths become
 * absolute and must exist (relative to base when given); a daemon reached
 * with --host reads them on its own machine, so they must be absolute there
 * and travel as given. Returns -1 with out filled, else a usage exit code. */
static int start_path(const global_t *g, const cmd_t *c, const char *what, const char *p,
                      const char *base, char *out, size_t cap)
{
    const char *host = ssh_host(g);
    if (host) {
        if (p[0] != '/')
            return usage_error(c, "%s %s: give an absolute path on %s (the remote nllmd "
                                  "reads it there)", what, p, host);
        if (strlen(p) >= cap)
            return usage_error(c, "%s %s: %s", what, p, strerror(ENAMETOOLONG));
        memcpy(out, p, strlen(p) + 1);
        return -1;
    }
    int e = abs_path(p, base, out, cap);
    if (e < 0)
        return usage_error(c, "%s %s: %s", what, p, strerror(-e));
    return -1;
}

/* The end of start and resume: method ("start" or "resume"; params
 * consumed) with the watch pipelined behind it when watch is set, its
 * result printed (with --json as one line when a watch follows; as text
 * only without a watch: the watch display's header says it), then the
 * watch. */
static int start_or_resume(global_t *g, const char *method, json_t *params, const char *name,
                           int watch)
{
    nllm_conn_t conn;
    int rc = connect_daemon(g, &conn);
    if (rc)
        return json_decref(params), rc;
    json_t *res = NULL;
    uint32_t watch_id = 0;
    rc = call_then_watch(&conn, method, params, name, watch, &watch_id, &res);
    if (rc == EXIT_OK) {
        if (g->json) {
            if (watch) {
                json_dumpf(res, stdout, JSON_COMPACT);
                fputc('\n', stdout);
            } else {
                print_json(res);
            }
        } else if (!watch) {
            int start = !strcmp(method, "start");
            one_line_status(start ? "Started job" : "Resumed job", res);
            if (start)
                printf("Follow it with `nllmctl watch %s`.\n", name);
        }
        fflush(stdout);
        json_decref(res);
        if (watch)
            rc = nllm_watch_run(&conn, name, g->json, 1, watch_id);
    }
    nllm_conn_close(&conn);
    return rc;
}

static int cmd_start(global_t *g, const cmd_t *c, int argc, char **argv)
{
    static start_opts_t o;
    memset(&o, 0, sizeof o);
    o.s.max = 128;
    int rc = parse_args(g, c, argc, argv, start_long, start_opt, &o, 1);
    if (rc >= 0)
        return rc;
    const char *name = argv[optind];

    static nllm_job_config_t cfg;
    nllm_job_config_defaults(&cfg);
    nllm_err_t err = {0};
    char cfg_dir[PATH_MAX] = "";
    if (o.config) {
        char abs_cfg[PATH_MAX];
        int e = abs_path(o.config, NULL, abs_cfg, sizeof abs_cfg);
        if (e < 0)
            return usage_error(c, "job file %s: %s", o.config, strerror(-e));
        if (nllm_job_config_parse_file(abs_cfg, &cfg, &err) < 0)
            return usage_error(c, "%s", err.msg);
        snprintf(cfg_dir, sizeof cfg_dir, "%s", abs_cfg);
        char *slash = strrchr(cfg_dir, '/');
        if (slash)
            *(slash == cfg_dir ? slash + 1 : slash) = '\0';
    }
    int vocab_given = 0;
    for (int i = 0; i < o.s.nset; i++) {
        const setting_t *set = &o.s.set[i];
        if (nllm_job_config_set(&cfg, set->key, set->value, &err) < 0)
            return usage_error(c, "%s: %s", set->flag, err.msg);
        if (!strcmp(set->key, "vocab_size") || !strcmp(set->key, "vocab"))
            vocab_given = 1;
    }
    /* paths: flags relative to the working directory, job-file ones to the file */
    char path[PATH_MAX];
    if (o.data || cfg.data[0]) {
        const char *p = o.data ? o.data : cfg.data;
        int e = start_path(g, c, "training data", p,
                           o.data ? NULL : (cfg_dir[0] ? cfg_dir : NULL), path, sizeof path);
        if (e >= 0)
            return e;
        if (nllm_job_config_set(&cfg, "data", path, &err) < 0)
            return usage_error(c, "%s", err.msg);
    }
    if (o.val || cfg.val[0]) {
        const char *p = o.val ? o.val : cfg.val;
        int e = start_path(g, c, "validation data", p,
                           o.val ? NULL : (cfg_dir[0] ? cfg_dir : NULL), path, sizeof path);
        if (e >= 0)
            return e;
        if (nllm_job_config_set(&cfg, "val", path, &err) < 0)
            return usage_error(c, "%s", err.msg);
    }
    if (!cfg.data[0])
        return usage_error(c, "no training data: pass --data FILE (or `data = FILE` in the "
                              "job file)");
    if (cfg.tokenizer == NLLM_TOK_BYTE && !vocab_given && cfg.model.vocab_size == 1000)
        cfg.model.vocab_size = NLLM_BYTE_VOCAB; /* the byte tokenizer's fixed size */
    if (nllm_job_config_check(&cfg, &err) < 0)
        return usage_error(c, "%s", err.msg);

    json_t *params = json_object();
    json_object_set_new(params, "name", json_string(name));
    json_t *jc = nllm_job_config_to_json(&cfg);
    if (!jc) {
        json_decref(params);
        fprintf(stderr, "nllmctl: out of memory\n");
        return EXIT_DAEMON;
    }
    json_object_set_new(params, "config", jc);
    if (o.init_from) {
        /* an existing file travels as an absolute path, anything else as JOB:CKPT;
         * for a remote daemon an absolute path is its own file */
        if (ssh_host(g) && o.init_from[0] == '/')
            json_object_set_new(params, "init_from", json_string(o.init_from));
        else if (!ssh_host(g) && path_exists(o.init_from) &&
                 abs_path(o.init_from, NULL, path, sizeof path) == 0)
            json_object_set_new(params, "init_from", json_string(path));
        else if (strchr(o.init_from, ':'))
            json_object_set_new(params, "init_from", json_string(o.init_from));
        else {
            json_decref(params);
            return usage_error(c, "--init-from %s: no such file, and not JOB:CHECKPOINT",
                               o.init_from);
        }
        if (o.init_optimizer)
            json_object_set_new(params, "init_optimizer", json_true());
    } else if (o.init_optimizer) {
        json_decref(params);
        return usage_error(c, "--init-optimizer needs --init-from");
    }

    return start_or_resume(g, "start", params, name, o.watch);
}

/* -- resume -- */

typedef struct {
    settings_t s; /* at most 16 */
    int64_t epochs;
    int reset_patience, watch;
} resume_opts_t;

static const struct option resume_long[] = {
    COMMON_OPTS,
    {"epochs", required_argument, 0, O_EPOCHS},
    {"reset-patience", no_argument, 0, O_RESET_PATIENCE},
    {"lr", required_argument, 0, O_LR},
    {"batch", required_argument, 0, O_BATCH},
    {"patience", required_argument, 0, O_PATIENCE},
    {"clip", required_argument, 0, O_CLIP},
    {"on-divergence", required_argument, 0, O_ON_DIV},
    {"precision", required_argument, 0, O_PRECISION},
    {"num-devices", required_argument, 0, O_NUM_DEVICES},
    {"gpus", required_argument, 0, O_GPUS},
    {"device", required_argument, 0, O_DEVICE},
    {"set", required_argument, 0, O_SET},
    {"watch", no_argument, 0, O_WATCH},
    {0, 0, 0, 0},
};

static int resume_opt(void *ctx, const cmd_t *c, int opt, const char *arg)
{
    resume_opts_t *o = ctx;
    if (o->s.nset >= o->s.max)
        return usage_error(c, "too many settings");
    switch (opt) {
    case O_EPOCHS:
        if (parse_i64(arg, 1, 1000000, &o->epochs) < 0)
            return usage_error(c, "--epochs wants a whole number 1..1000000, not \"%s\"", arg);
        return -1;
    case O_RESET_PATIENCE:
        o->reset_patience = 1;
        return -1;
    case O_WATCH:
        o->watch = 1;
        return -1;
    }
    /* --lr, --batch, --patience, --clip, --on-divergence, --precision,
     * --num-devices, --gpus, --device, --set */
    int rc = setting_opt(&o->s, c, opt, arg, 0);
    return rc ? rc : usage_error(c, "unexpected flag");
}

/* Resolve an alias ("lr") to its canonical key by setting a scratch config
 * and finding which JSON key changed; validates the value at the same time. */
static int typed_setting(const cmd_t *c, const setting_t *s, json_t *out)
{
    static nllm_job_config_t a, b;
    nllm_job_config_defaults(&a);
    nllm_job_config_defaults(&b);
    nllm_err_t err = {0};
    if (nllm_job_config_set(&b, s->key, s->value, &err) < 0)
        return usage_error(c, "%s: %s", s->flag, err.msg);
    json_t *ja = nllm_job_config_to_json(&a), *jb = nllm_job_config_to_json(&b);
    const char *k;
    json_t *v;
    int found = 0;
    json_object_foreach(jb, k, v)
    {
        if (!json_equal(v, json_object_get(ja, k))) {
            json_object_set(out, k, v);
            found = 1;
        }
    }
    if (!found) { /* the value is the default: typed if the key is canonical */
        v = json_object_get(jb, s->key);
        json_object_set_new(out, s->key, v ? json_incref(v) : json_string(s->value));
    }
    json_decref(ja);
    json_decref(jb);
    return -1;
}

static int cmd_resume(global_t *g, const cmd_t *c, int argc, char **argv)
{
    resume_opts_t o;
    memset(&o, 0, sizeof o);
    o.s.max = 16;
    int rc = parse_args(g, c, argc, argv, resume_long, resume_opt, &o, 2);
    if (rc >= 0)
        return rc;
    const char *name = argv[optind];
    json_t *params = name_params(name);
    if (argc - optind == 2)
        json_object_set_new(params, "checkpoint", json_string(argv[optind + 1]));
    if (o.epochs)
        json_object_set_new(params, "num_epochs", json_integer(o.epochs));
    if (o.reset_patience)
        json_object_set_new(params, "reset_patience", json_true());
    if (o.s.nset) {
        json_t *cfg = json_object();
        for (int i = 0; i < o.s.nset; i++)
            if ((rc = typed_setting(c, &o.s.set[i], cfg)) >= 0) {
                json_decref(cfg);
                json_decref(params);
                return rc;
            }
        json_object_set_new(params, "config", cfg);
    }
    return start_or_resume(g, "resume", params, name, o.watch);
}

/* -- simple flag sets -- */

typedef struct {
    int at_epoch_end, all, csv, delete_files;
    int64_t limit;
    const char *checkpoint, *prompt;
    int64_t tokens, seed;
    double temperature;
    int have_tokens, have_seed, have_temp;
} misc_opts_t;

static int misc_opt(void *ctx, const cmd_t *c, int opt, const char *arg)
{
    misc_opts_t *o = ctx;
    switch (opt) {
    case O_AT_EPOCH_END:
        o->at_epoch_end = 1;
        return -1;
    case O_ALL:
        o->all = 1;
        return -1;
    case O_CSV:
        o->csv = 1;
        return -1;
    case O_DELETE_FILES:
        o->delete_files = 1;
        return -1;
    case O_LIMIT:
        if (parse_i64(arg, 1, INT32_MAX, &o->limit) < 0)
            return usage_error(c, "--limit wants a positive whole number, not \"%s\"", arg);
        return -1;
    case O_CHECKPOINT:
        o->checkpoint = arg;
        return -1;
    case O_PROMPT:
        o->prompt = arg;
        return -1;
    case O_TOKENS:
        if (parse_i64(arg, 1, 1000000, &o->tokens) < 0)
            return usage_error(c, "--tokens wants a whole number 1..1000000, not \"%s\"", arg);
        o->have_tokens = 1;
        return -1;
    case O_SEED:
        if (parse_i64(arg, 0, INT64_MAX, &o->seed) < 0)
            return usage_error(c, "--seed wants a non-negative whole number, not \"%s\"", arg);
        o->have_seed = 1;
        return -1;
    case O_TEMPERATURE:
        if (parse_f64(arg, &o->temperature) < 0 || o->temperature < 0)
            return usage_error(c, "--temperature wants a number >= 0, not \"%s\"", arg);
        o->have_temp = 1;
        return -1;
    }
    return usage_error(c, "unexpected flag");
}

static const struct option plain_long[] = {COMMON_OPTS, {0, 0, 0, 0}};

/* The commands on one job (NAME and flags of misc_opts_t): parses them
 * into o, sends method with {"name": NAME} and the request's flags that
 * are set, and with --json prints the result. Returns the exit code; *res
 * is NULL unless the result is still to be printed as text and freed. */
static int job_call(global_t *g, const cmd_t *c, int argc, char **argv, const struct option *lo,
                    misc_opts_t *o, const char *method, json_t **res)
{
    *res = NULL;
    int rc = parse_args(g, c, argc, argv, lo, misc_opt, o, 1);
    if (rc >= 0)
        return rc;
    json_t *params = name_params(argv[optind]);
    if (o->at_epoch_end)
        json_object_set_new(params, "at_epoch_end", json_true());
    if (o->all)
        json_object_set_new(params, "all", json_true());
    if (o->delete_files)
        json_object_set_new(params, "delete_files", json_true());
    if (o->limit)
        json_object_set_new(params, "limit", json_integer(o->limit));
    if (o->checkpoint)
        json_object_set_new(params, "checkpoint", json_string(o->checkpoint));
    if (o->prompt)
        json_object_set_new(params, "prompt", json_string(o->prompt));
    if (o->have_tokens)
        json_object_set_new(params, "tokens", json_integer(o->tokens));
    if (o->have_temp)
        json_object_set_new(params, "temperature", json_real(o->temperature));
    if (o->have_seed)
        json_object_set_new(params, "seed", json_integer(o->seed));
    return call_json_or_text(g, method, params, res);
}

static int cmd_hello(global_t *g, const cmd_t *c, int argc, char **argv)
{
    int rc = parse_args(g, c, argc, argv, plain_long, NULL, NULL, 0);
    if (rc >= 0)
        return rc;
    json_t *res;
    if ((rc = call_json_or_text(g, "hello", NULL, &res)) || !res)
        return rc;
    printf("daemon:     %s\n", nllm_j_str(res, "daemon", "?"));
    printf("protocol:   %lld (nllmctl speaks %d)\n", (long long)nllm_j_int(res, "protocol", 0),
           NLLM_PROTOCOL_VERSION);
    printf("max jobs:   %lld (%lld per device)\n", (long long)nllm_j_int(res, "max_jobs", 0),
           (long long)nllm_j_int(res, "jobs_per_device", 1));
    printf("auth:       %s\n", nllm_j_bool(res, "auth_required", 0) ? "required" : "not required");
    const json_t *devs = json_object_get(res, "devices");
    if (json_array_size(devs)) {
        printf("devices:\n");
        table_t t;
        table_init(&t, 6);
        table_row(&t, "  NAME", "KIND", "JOBS", "MEM_FREE", "MEM_TOTAL", "PRECISIONS");
        size_t i;
        const json_t *d;
        json_array_foreach(devs, i, d)
        {
            char nm[128], fr[32] = "-", to[32] = "-", jobs[512], prec[64];
            double x;
            const json_t *ja = json_object_get(d, "jobs");
            if (!json_is_array(ja)) /* a daemon older than jobs_per_device */
                snprintf(jobs, sizeof jobs, "%s", nllm_j_str(d, "busy", "-"));
            else if (!join_names(ja, NULL, jobs, sizeof jobs))
                snprintf(jobs, sizeof jobs, "-");
            snprintf(nm, sizeof nm, "  %s", nllm_j_str(d, "name", "?"));
            /* a daemon older than the precisions list shows "-" */
            const json_t *pa = json_object_get(d, "precisions"), *pv;
            size_t pi, pn = 0;
            snprintf(prec, sizeof prec, "-");
            if (json_is_array(pa))
                json_array_foreach(pa, pi, pv) if (json_is_string(pv) && pn < sizeof prec)
                    pn += (size_t)snprintf(prec + pn, sizeof prec - pn, "%s%s", pn ? "," : "",
                                           json_string_value(pv));
            if (nllm_j_num(d, "memory_free", &x) && x > 0)
                nllm_fmt_size(x, fr, sizeof fr);
            if (nllm_j_num(d, "memory_total", &x) && x > 0)
                nllm_fmt_size(x, to, sizeof to);
            table_row(&t, nm, nllm_j_str(d, "kind", "-"), jobs, fr, to, prec);
        }
        table_print(&t);
        json_array_foreach(devs, i, d)
        {
            const json_t *k = json_object_get(d, "kernels");
            if (!json_is_object(k))
                continue;
            printf("%s kernels: large products on %s, small on %s (CPU %s, BLAS %s: %s)\n",
                   nllm_j_str(d, "name", "?"), nllm_j_str(k, "large_gemm", "?"),
                   nllm_j_str(k, "small_gemm", "?"), nllm_j_str(k, "cpu_isa", "?"),
                   nllm_j_str(k, "blas_core", "?"), nllm_j_str(k, "reason", "?"));
            const char *bf = nllm_j_str(k, "bf16_gemm", NULL);
            const char *why = nllm_j_str(k, "bf16_note", NULL);
            if (bf)
                printf("%s bf16: products on %s tiles\n", nllm_j_str(d, "name", "?"), bf);
            else if (why)
                printf("%s bf16: none (%s)\n", nllm_j_str(d, "name", "?"), why);
        }
        json_array_foreach(devs, i, d)
        {
            if (nllm_j_bool(d, "healthy", 1))
                continue;
            const char *nm = nllm_j_str(d, "name", "?");
            printf("device %s is UNHEALTHY (out of service, no job is placed on it): %s\n"
                   "  after fixing the cause: nllmctl device reset %s\n",
                   nm, nllm_j_str(d, "fault", "device fault"), nm);
        }
    }
    json_decref(res);
    return EXIT_OK;
}

static int cmd_device(global_t *g, const cmd_t *c, int argc, char **argv)
{
    int rc = parse_opts(g, c, argc, argv, plain_long, NULL, NULL);
    if (rc >= 0)
        return rc;
    int npos = argc - optind;
    if (npos < 1)
        return usage_error(c, "missing the action (reset)");
    if (strcmp(argv[optind], "reset") != 0)
        return usage_error(c, "unknown action \"%s\": use reset", argv[optind]);
    if (npos < 2)
        return usage_error(c, "missing the DEVICE (cpu or cuda:N)");
    if (npos > 2)
        return usage_error(c, "unexpected argument \"%s\"", argv[optind + 2]);
    json_t *res;
    const char *dev = argv[optind + 1];
    if ((rc = call_json_or_text(g, "device_reset", json_pack("{ss}", "device", dev), &res)) ||
        !res)
        return rc;
    if (nllm_j_bool(res, "was_healthy", 1))
        printf("Device %s was healthy: nothing to reset.\n", nllm_j_str(res, "device", dev));
    else
        printf("Device %s is back in service (its fault: %s).\nQueued jobs may run on it "
               "again.\n",
               nllm_j_str(res, "device", dev), nllm_j_str(res, "fault", "?"));
    json_decref(res);
    return EXIT_OK;
}

static int cmd_version(global_t *g, const cmd_t *c, int argc, char **argv)
{
    int rc = parse_args(g, c, argc, argv, plain_long, NULL, NULL, 0);
    if (rc >= 0)
        return rc;
    /* the daemon's version is a bonus: no error when it is not running */
    json_t *res = NULL;
    nllm_conn_t conn;
    int have = 0;
    if (connect_quiet(g, &conn, 1) == EXIT_OK) {
        char code[64];
        nllm_err_t err = {0};
        have = nllm_conn_call(&conn, "hello", NULL, &res, code, sizeof code, &err) ==
               NLLM_CALL_OK;
        nllm_conn_close(&conn);
    }
    if (g->json) {
        json_t *j = json_pack("{sssi}", "client", "nllmctl " NLLM_VERSION, "protocol",
                              NLLM_PROTOCOL_VERSION);
        if (have)
            json_object_set(j, "daemon", res);
        print_json(j);
        json_decref(j);
    } else {
        printf("nllmctl %s (protocol %d)\n", NLLM_VERSION, NLLM_PROTOCOL_VERSION);
        if (have)
            printf("%s (protocol %lld)\n", nllm_j_str(res, "daemon", "nllmd ?"),
                   (long long)nllm_j_int(res, "protocol", 0));
        else
            printf("nllmd: not reachable\n");
    }
    json_decref(res);
    return EXIT_OK;
}

/* Writes all of buf to fd; 0 or -1. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* The remote end of `--host ssh://`: splices stdin -> the local daemon's
 * socket and the socket -> stdout, byte for byte, until the daemon closes
 * (stdin's EOF is passed on as a half-close). Exit 0 then, 3 when the
 * socket cannot be reached (the client shows this stderr line). */
static int cmd_proxy(global_t *g, const cmd_t *c, int argc, char **argv)
{
    int rc = parse_args(g, c, argc, argv, plain_long, NULL, NULL, 0);
    if (rc >= 0)
        return rc;
    if (g->connect || g->host || g->token_file)
        return usage_error(c, "proxy reaches the local daemon's Unix socket only (--socket)");
    const char *path = g->socket ? g->socket : default_socket(g);
    nllm_conn_t conn;
    nllm_err_t err = {0};
    if (nllm_conn_open_unix(&conn, path, &err) != NLLM_CALL_OK) {
        nllm_conn_close(&conn);
        fprintf(stderr, "nllmctl proxy: %s\n", err.msg);
        return EXIT_CONNECT;
    }
    signal(SIGPIPE, SIG_IGN); /* a gone client shows as a write error */
    int in_open = 1;
    for (;;) {
        struct pollfd p[2] = {{.fd = conn.fd, .events = POLLIN},
                              {.fd = in_open ? 0 : -1, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        char buf[65536];
        if (p[0].revents) {
            ssize_t n = read(conn.fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0 || write_all(1, buf, (size_t)n) < 0)
                break; /* the daemon closed, or the client is gone */
        }
        if (p[1].revents) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                in_open = 0;
                shutdown(conn.fd, SHUT_WR);
            } else if (write_all(conn.fd, buf, (size_t)n) < 0) {
                break;
            }
        }
    }
    nllm_conn_close(&conn);
    return EXIT_OK;
}

static int cmd_shutdown(global_t *g, const cmd_t *c, int argc, char **argv)
{
    int rc = parse_args(g, c, argc, argv, plain_long, NULL, NULL, 0);
    if (rc >= 0)
        return rc;
    json_t *res = NULL;
    nllm_conn_t conn;
    if ((rc = connect_daemon(g, &conn)))
        return rc;
    char code[64];
    nllm_err_t err = {0};
    int crc = nllm_conn_call(&conn, "shutdown", NULL, &res, code, sizeof code, &err);
    nllm_conn_close(&conn);
    if (crc == NLLM_CALL_LOST) /* it went away before answering: done all the same */
        res = json_pack("{sb}", "ok", 1);
    else if (crc != NLLM_CALL_OK) {
        fprintf(stderr, "nllmctl: %s\n", err.msg);
        return crc == NLLM_CALL_ERROR ? EXIT_DAEMON : EXIT_CONNECT;
    }
    if (g->json)
        print_json(res);
    else
        printf("nllmd is shutting down: running jobs are paused at a step boundary (state "
               "interrupted);\nresume them with `nllmctl resume NAME` once it runs again.\n");
    json_decref(res);
    return EXIT_OK;
}

static const char *fnum(const json_t *o, const char *key, int prec, char *buf, size_t n)
{
    nllm_fmt_field(o, key, prec, buf, n);
    return buf;
}

static int cmd_list(global_t *g, const cmd_t *c, int argc, char **argv)
{
    int rc = parse_args(g, c, argc, argv, plain_long, NULL, NULL, 0);
    if (rc >= 0)
        return rc;
    json_t *res;
    if ((rc = call_json_or_text(g, "list", NULL, &res)) || !res)
        return rc;
    const json_t *jobs = json_object_get(res, "jobs");
    if (!json_array_size(jobs)) {
        printf("No jobs. Start one with `nllmctl start NAME --data FILE`.\n");
        json_decref(res);
        return EXIT_OK;
    }
    table_t t;
    table_init(&t, 8);
    table_row(&t, "NAME", "STATE", "EPOCH", "PROGRESS", "VAL_LOSS", "BEST_VAL", "DEVICE",
              "UPDATED");
    size_t i;
    const json_t *j;
    json_array_foreach(jobs, i, j)
    {
        char ep[48], prog[32] = "-", vl[32], best[48] = "-", upd[48];
        snprintf(ep, sizeof ep, "%lld/%lld", (long long)nllm_j_int(j, "epoch", 0),
                 (long long)nllm_j_int(j, "num_epochs", 0));
        const char *st = nllm_j_str(j, "state", "?");
        int64_t spe = nllm_j_int(j, "steps_per_epoch", 0);
        if ((!strcmp(st, "running") || !strcmp(st, "pausing")) && spe > 0)
            snprintf(prog, sizeof prog, "%.0f%%",
                     100.0 * (double)nllm_j_int(j, "step", 0) / (double)spe);
        double b;
        if (nllm_j_num(j, "best_val_loss", &b))
            snprintf(best, sizeof best, "%.4f@%lld", b, (long long)nllm_j_int(j, "best_epoch", 0));
        double u = 0;
        nllm_j_num(j, "updated", &u);
        nllm_fmt_time(u, upd, sizeof upd);
        char devs[512];
        nllm_fmt_devices(j, devs, sizeof devs, "-");
        table_row(&t, nllm_j_str(j, "name", "?"), st, ep, prog, fnum(j, "val_loss", 4, vl, sizeof vl),
                  best, devs, upd);
    }
    table_print(&t);
    json_decref(res);
    return EXIT_OK;
}

/* Commands taking NAME and printing a job status: status, stop, pause, extend. */
static int cmd_status(global_t *g, const cmd_t *c, int argc, char **argv)
{
    misc_opts_t o = {0};
    json_t *res;
    int rc = job_call(g, c, argc, argv, plain_long, &o, "status", &res);
    if (rc || !res)
        return rc;
    print_status(res);
    json_decref(res);
    return EXIT_OK;
}

static int cmd_stop(global_t *g, const cmd_t *c, int argc, char **argv)
{
    misc_opts_t o = {0};
    json_t *res;
    int rc = job_call(g, c, argc, argv, plain_long, &o, "stop", &res);
    if (rc || !res)
        return rc;
    one_line_status("Stopping job", res);
    printf("It ends at the next step boundary and saves checkpoint final.\n");
    json_decref(res);
    return EXIT_OK;
}

static int cmd_pause(global_t *g, const cmd_t *c, int argc, char **argv)
{
    static const struct option lo[] = {COMMON_OPTS,
                                       {"at-epoch-end", no_argument, 0, O_AT_EPOCH_END},
                                       {0, 0, 0, 0}};
    misc_opts_t o = {0};
    json_t *res;
    int rc = job_call(g, c, argc, argv, lo, &o, "pause", &res);
    if (rc || !res)
        return rc;
    one_line_status("Pausing job", res);
    if (!strcmp(nllm_j_str(res, "state", ""), "pausing"))
        printf("It stops %s, saves checkpoint paused and frees its device.\n",
               o.at_epoch_end ? "at the end of the epoch" : "at the next step boundary");
    json_decref(res);
    return EXIT_OK;
}

static int cmd_extend(global_t *g, const cmd_t *c, int argc, char **argv)
{
    int rc = parse_opts(g, c, argc, argv, plain_long, NULL, NULL);
    if (rc >= 0)
        return rc;
    if (argc - optind < 2)
        return usage_error(c, argc - optind < 1 ? "missing the job NAME" : "missing NUM_EPOCHS");
    if (argc - optind > 2)
        return usage_error(c, "unexpected argument \"%s\"", argv[optind + 2]);
    int64_t n;
    if (parse_i64(argv[optind + 1], 1, 1000000, &n) < 0)
        return usage_error(c, "NUM_EPOCHS wants a whole number 1..1000000, not \"%s\"",
                           argv[optind + 1]);
    json_t *params = name_params(argv[optind]), *res;
    json_object_set_new(params, "num_epochs", json_integer(n));
    if ((rc = call_json_or_text(g, "extend", params, &res)) || !res)
        return rc;
    one_line_status("Extended job", res);
    json_decref(res);
    return EXIT_OK;
}

static int cmd_watch(global_t *g, const cmd_t *c, int argc, char **argv)
{
    int rc = parse_args(g, c, argc, argv, plain_long, NULL, NULL, 1);
    if (rc >= 0)
        return rc;
    nllm_conn_t conn;
    if ((rc = connect_daemon(g, &conn)))
        return rc;
    rc = nllm_watch_run(&conn, argv[optind], g->json, 0, 0);
    nllm_conn_close(&conn);
    return rc;
}

static int cmd_verify(global_t *g, const cmd_t *c, int argc, char **argv)
{
    static const struct option lo[] = {COMMON_OPTS, {"all", no_argument, 0, O_ALL}, {0, 0, 0, 0}};
    misc_opts_t o = {0};
    int rc = parse_opts(g, c, argc, argv, lo, misc_opt, &o);
    if (rc >= 0)
        return rc;
    json_t *params;
    if (o.all) {
        if (optind < argc)
            return usage_error(c, "give a job NAME or --all, not both");
        params = json_pack("{sb}", "all", 1);
    } else {
        if (optind >= argc)
            return usage_error(c, "give a job NAME or --all");
        if ((rc = need_name(c, argc, argv, 1)) >= 0)
            return rc;
        params = name_params(argv[optind]);
    }
    json_t *res = NULL;
    if ((rc = call1(g, "verify", params, &res)))
        return rc;
    int64_t bad = nllm_j_int(res, "bad", 0);
    if (g->json) {
        print_json(res);
    } else {
        const json_t *results = json_object_get(res, "results");
        if (json_array_size(results)) {
            table_t t;
            table_init(&t, 4);
            table_row(&t, "JOB", "CHECKPOINT", "STATUS", "REASON");
            size_t i;
            const json_t *r;
            json_array_foreach(results, i, r)
            {
                const char *reason = nllm_j_str(r, "reason", "");
                table_row(&t, nllm_j_str(r, "job", "?"), nllm_j_str(r, "name", "?"),
                          nllm_j_str(r, "status", "?"), *reason ? reason : "-");
            }
            table_print(&t);
        }
        printf("checked %lld checkpoint%s: %lld bad\n", (long long)nllm_j_int(res, "checked", 0),
               nllm_j_int(res, "checked", 0) == 1 ? "" : "s", (long long)bad);
    }
    json_decref(res);
    if (bad > 0) {
        fflush(stdout);
        fprintf(stderr, "nllmctl: %lld checkpoint%s failed verification (marked bad; resume "
                        "from another one)\n",
                (long long)bad, bad == 1 ? "" : "s");
        return EXIT_DAEMON;
    }
    return EXIT_OK;
}

static int cmd_checkpoints(global_t *g, const cmd_t *c, int argc, char **argv)
{
    static const struct option lo[] = {COMMON_OPTS, {"all", no_argument, 0, O_ALL}, {0, 0, 0, 0}};
    misc_opts_t o = {0};
    json_t *res;
    int rc = job_call(g, c, argc, argv, lo, &o, "checkpoints", &res);
    if (rc || !res)
        return rc;
    const json_t *cks = json_object_get(res, "checkpoints");
    if (!json_array_size(cks)) {
        printf("No checkpoints yet for %s.\n", argv[optind]);
        json_decref(res);
        return EXIT_OK;
    }
    table_t t;
    table_init(&t, 9);
    table_row(&t, "NAME", "EPOCH", "STEP", "VAL_LOSS", "SIZE", "CREATED", "STATUS",
              o.all ? "CURRENT" : "ATTEMPT", "CHECKSUM");
    size_t i;
    const json_t *k;
    json_array_foreach(cks, i, k)
    {
        char ep[32], stp[32], vl[32], sz[32] = "-", cr[48], status[256], cur[32];
        snprintf(ep, sizeof ep, "%lld", (long long)nllm_j_int(k, "epoch", 0));
        snprintf(stp, sizeof stp, "%lld", (long long)nllm_j_int(k, "step", 0));
        double x = 0;
        if (nllm_j_num(k, "size", &x))
            nllm_fmt_size(x, sz, sizeof sz);
        x = 0;
        nllm_j_num(k, "created", &x);
        nllm_fmt_time(x, cr, sizeof cr);
        const char *s = nllm_j_str(k, "status", "?"), *why = nllm_j_str(k, "bad_reason", "");
        if (why && *why && strcmp(s, "ok") != 0)
            snprintf(status, sizeof status, "%s (%s)", s, why);
        else
            snprintf(status, sizeof status, "%s", s);
        if (o.all)
            snprintf(cur, sizeof cur, "%s, attempt %lld",
                     nllm_j_bool(k, "current", 1) ? "yes" : "superseded",
                     (long long)nllm_j_int(k, "attempt", 1));
        else
            snprintf(cur, sizeof cur, "%lld", (long long)nllm_j_int(k, "attempt", 1));
        table_row(&t, nllm_j_str(k, "name", "?"), ep, stp, fnum(k, "val_loss", 4, vl, sizeof vl),
                  sz, cr, status, cur, nllm_j_str(k, "checksum", "-"));
    }
    table_print(&t);
    json_decref(res);
    return EXIT_OK;
}

static void csv_num(const json_t *o, const char *key, int last)
{
    double v;
    if (nllm_j_num(o, key, &v))
        printf("%.10g", v);
    fputc(last ? '\n' : ',', stdout);
}

static int cmd_history(global_t *g, const cmd_t *c, int argc, char **argv)
{
    static const struct option lo[] = {COMMON_OPTS, {"all", no_argument, 0, O_ALL},
                                       {"csv", no_argument, 0, O_CSV}, {0, 0, 0, 0}};
    misc_opts_t o = {0};
    json_t *res;
    int rc = job_call(g, c, argc, argv, lo, &o, "history", &res);
    if (rc || !res)
        return rc;
    const json_t *eps = json_object_get(res, "epochs");
    size_t i;
    const json_t *e;
    if (o.csv) {
        printf("epoch,attempt,train_loss,val_loss,train_ppl,val_ppl,val_acc,seconds,"
               "tokens_per_s,superseded\n");
        json_array_foreach(eps, i, e)
        {
            printf("%lld,%lld,", (long long)nllm_j_int(e, "epoch", 0),
                   (long long)nllm_j_int(e, "attempt", 1));
            csv_num(e, "train_loss", 0);
            csv_num(e, "val_loss", 0);
            csv_num(e, "train_ppl", 0);
            csv_num(e, "val_ppl", 0);
            csv_num(e, "val_acc", 0);
            csv_num(e, "seconds", 0);
            csv_num(e, "tokens_per_s", 0);
            printf("%d\n", nllm_j_bool(e, "superseded", 0));
        }
    } else if (!json_array_size(eps)) {
        printf("No epochs completed yet for %s.\n", argv[optind]);
    } else {
        table_t t;
        table_init(&t, 10);
        table_row(&t, "EPOCH", "ATTEMPT", "TRAIN_LOSS", "VAL_LOSS", "TRAIN_PPL", "VAL_PPL",
                  "VAL_ACC", "TIME", "TOK/S", "NOTE");
        json_array_foreach(eps, i, e)
        {
            char ep[32], at[32], tl[32], vl[32], tp[32], vp[32], va[32], tm[32] = "-",
                 tk[32] = "-";
            snprintf(ep, sizeof ep, "%lld", (long long)nllm_j_int(e, "epoch", 0));
            snprintf(at, sizeof at, "%lld", (long long)nllm_j_int(e, "attempt", 1));
            double x;
            nllm_fmt_percent_field(e, "val_acc", va, sizeof va);
            if (nllm_j_num(e, "seconds", &x))
                nllm_fmt_duration(x, tm, sizeof tm);
            if (nllm_j_num(e, "tokens_per_s", &x))
                nllm_fmt_count(x, tk, sizeof tk);
            table_row(&t, ep, at, fnum(e, "train_loss", 4, tl, sizeof tl),
                      fnum(e, "val_loss", 4, vl, sizeof vl), fnum(e, "train_ppl", 2, tp, sizeof tp),
                      fnum(e, "val_ppl", 2, vp, sizeof vp), va, tm, tk,
                      nllm_j_bool(e, "superseded", 0) ? "superseded" : "");
        }
        table_print(&t);
    }
    json_decref(res);
    return EXIT_OK;
}

/* -- plot: the history drawn by daemon/engine/curves.c, like nllmd's curve files -- */

static int plot_opt(void *ctx, const cmd_t *c, int opt, const char *arg)
{
    if (opt != 'o' && opt != O_OUTPUT)
        return usage_error(c, "unexpected flag");
    if (!*arg)
        return usage_error(c, "--output wants a file name");
    *(const char **)ctx = arg;
    return -1;
}

static int cmd_plot(global_t *g, const cmd_t *c, int argc, char **argv)
{
    static const struct option lo[] = {COMMON_OPTS, {"output", required_argument, 0, O_OUTPUT},
                                       {0, 0, 0, 0}};
    const char *out = NULL;
    int rc = parse_opts_short(g, c, argc, argv, ":ho:", lo, plot_opt, &out);
    if (rc >= 0)
        return rc;
    if ((rc = need_name(c, argc, argv, 1)) >= 0)
        return rc;
    const char *name = argv[optind];
    char defpath[PATH_MAX], title[512];
    if (!out) {
        snprintf(defpath, sizeof defpath, "%s_training_curves.svg", name);
        out = defpath;
    }
    json_t *res = NULL;
    if ((rc = call1(g, "history", name_params(name), &res)))
        return rc;
    const json_t *eps = json_object_get(res, "epochs");
    size_t n = 0, i;
    const json_t *e;
    nllm_curve_point_t *pts = malloc((json_array_size(eps) + 1) * sizeof *pts);
    if (!pts) {
        json_decref(res);
        fprintf(stderr, "nllmctl plot: out of memory\n");
        return EXIT_DAEMON;
    }
    json_array_foreach(eps, i, e)
    {
        if (nllm_j_bool(e, "superseded", 0))
            continue;
        nllm_curve_point_t *p = &pts[n++];
        p->epoch = nllm_j_int(e, "epoch", 0);
        p->train_loss = p->val_loss = p->train_ppl = p->val_ppl = NAN;
        nllm_j_num(e, "train_loss", &p->train_loss);
        nllm_j_num(e, "val_loss", &p->val_loss);
        nllm_j_num(e, "train_ppl", &p->train_ppl);
        nllm_j_num(e, "val_ppl", &p->val_ppl);
    }
    json_decref(res);
    if (!n) {
        free(pts);
        fprintf(stderr, "nllmctl plot: job %s has no completed epochs yet; nothing to plot\n",
                name);
        return EXIT_DAEMON;
    }
    snprintf(title, sizeof title, "%s: training curves", name);
    nllm_err_t err = {0};
    if (!strcmp(out, "-")) {
        char *svg = NULL;
        size_t len = 0;
        if ((rc = nllm_curves_svg(pts, n, title, -1, &svg, &len, &err)) == 0 &&
            fwrite(svg, 1, len, stdout) != len)
            rc = nllm_err_set(&err, NLLM_EIO, "writing to standard output failed");
        free(svg);
    } else {
        rc = nllm_curves_write(out, pts, n, title, -1, &err);
    }
    free(pts);
    if (rc < 0) {
        fprintf(stderr, "nllmctl plot: %s\n", err.msg);
        return EXIT_DAEMON;
    }
    if (strcmp(out, "-") != 0) {
        if (g->json) {
            json_t *j = json_pack("{s:s,s:I}", "path", out, "epochs", (json_int_t)n);
            print_json(j);
            json_decref(j);
        } else {
            printf("Wrote the training curves of %s (%zu epoch%s) to %s.\n", name, n,
                   n == 1 ? "" : "s", out);
        }
    }
    return EXIT_OK;
}

static int cmd_events(global_t *g, const cmd_t *c, int argc, char **argv)
{
    static const struct option lo[] = {COMMON_OPTS, {"limit", required_argument, 0, O_LIMIT},
                                       {0, 0, 0, 0}};
    misc_opts_t o = {0};
    json_t *res;
    int rc = job_call(g, c, argc, argv, lo, &o, "events", &res);
    if (rc || !res)
        return rc;
    const json_t *evs = json_object_get(res, "events");
    size_t i, kw = 4;
    const json_t *e;
    json_array_foreach(evs, i, e)
    {
        size_t n = strlen(nllm_j_str(e, "kind", ""));
        if (n > kw)
            kw = n;
    }
    json_array_foreach(evs, i, e)
    {
        char ts[48];
        double t = 0;
        nllm_j_num(e, "ts", &t);
        nllm_fmt_time(t, ts, sizeof ts);
        printf("%s  %-*s  %s\n", ts, (int)kw, nllm_j_str(e, "kind", "?"),
               nllm_j_str(e, "message", ""));
    }
    if (!json_array_size(evs))
        printf("No events for %s.\n", argv[optind]);
    json_decref(res);
    return EXIT_OK;
}

static int cmd_rm(global_t *g, const cmd_t *c, int argc, char **argv)
{
    static const struct option lo[] = {COMMON_OPTS,
                                       {"delete-files", no_argument, 0, O_DELETE_FILES},
                                       {0, 0, 0, 0}};
    misc_opts_t o = {0};
    json_t *res;
    int rc = job_call(g, c, argc, argv, lo, &o, "remove", &res);
    if (rc || !res)
        return rc;
    if (o.delete_files)
        printf("Removed job %s and deleted %lld file%s.\n", argv[optind],
               (long long)nllm_j_int(res, "deleted_files", 0),
               nllm_j_int(res, "deleted_files", 0) == 1 ? "" : "s");
    else
        printf("Removed job %s from the catalog (its files are kept; --delete-files removes "
               "them).\n",
               argv[optind]);
    json_decref(res);
    return EXIT_OK;
}

static int cmd_generate(global_t *g, const cmd_t *c, int argc, char **argv)
{
    static const struct option lo[] = {COMMON_OPTS,
                                       {"checkpoint", required_argument, 0, O_CHECKPOINT},
                                       {"prompt", required_argument, 0, O_PROMPT},
                                       {"tokens", required_argument, 0, O_TOKENS},
                                       {"temperature", required_argument, 0, O_TEMPERATURE},
                                       {"seed", required_argument, 0, O_SEED},
                                       {0, 0, 0, 0}};
    misc_opts_t o = {0};
    json_t *res;
    int rc = job_call(g, c, argc, argv, lo, &o, "generate", &res);
    if (rc || !res)
        return rc;
    const char *text = nllm_j_str(res, "text", "");
    size_t n = strlen(text);
    fputs(text, stdout);
    if (n == 0 || text[n - 1] != '\n')
        fputc('\n', stdout);
    json_decref(res);
    return EXIT_OK;
}

static int cmd_help(global_t *g, const cmd_t *c, int argc, char **argv)
{
    (void)g;
    (void)c;
    if (argc >= 2) {
        const cmd_t *h = find_cmd(argv[1]);
        if (!h) {
            fprintf(stderr, "nllmctl: unknown command \"%s\"\n", argv[1]);
            print_main_usage(stderr);
            return EXIT_USAGE;
        }
        print_cmd_help(h);
        return EXIT_OK;
    }
    print_main_usage(stdout);
    return EXIT_OK;
}

/* ---- command table ----------------------------------------------------- */

static const cmd_t commands[] = {
    {"start", cmd_start,
     "start NAME --data TRAIN [--val VAL] [--config FILE] [--epochs N] [--batch N] [--lr X]\n"
     "       [--seq-len N] [--vocab N] [--embed-dim N] [--hidden-dim N] [--context-dim N]\n"
     "       [--layers N] [--dropout X] [--patience N] [--reset-patience] [--save-every N]\n"
     "       [--keep N] [--clip X|reference|none] [--on-divergence rollback|fail]\n"
     "       [--seed N] [--tokenizer word|byte]\n"
     "       [--device D] [--num-devices N | --gpus N] [--precision fp32|tf32|bf16]\n"
     "       [--init-from JOB:CKPT|FILE] [--init-optimizer] [--threads N] [--set KEY=VALUE]\n"
     "       [--watch]",
     "create a training job and queue it",
     "Creates job NAME ([A-Za-z0-9._-], 1-64 characters, not starting with '.') and\n"
     "queues it until a device has a free slot. Settings come from the defaults, then\n"
     "the job file (--config), then the flags, in that order; the full configuration\n"
     "is sent.\n"
     "Paths are made absolute here: flag paths relative to the working directory,\n"
     "job-file paths relative to the job file.\n"
     "\n"
     "Data:\n"
     "  --data TRAIN         training text (required; one paragraph per line)\n"
     "  --val VAL            validation text (default: hold out val_fraction, 10%, of\n"
     "                       the training paragraphs)\n"
     "  --tokenizer word|byte  word level (default) or bytes (vocab is then 259)\n"
     "  --config FILE        job file: `key = value` lines, # or ; comments, optional\n"
     "                       [section] headers; keys as listed below\n"
     "Model shape (fixed for the job's life):\n"
     "  --vocab N            vocabulary size (vocab_size, default 1000)\n"
     "  --embed-dim N        token embedding size (embed_dim, 256)\n"
     "  --hidden-dim N       feed-forward width (hidden_dim, 512)\n"
     "  --context-dim N      context vector size (context_dim, 512)\n"
     "  --layers N           feed-forward layers (num_layers, 12)\n"
     "  --seq-len N          tokens per training window (max_seq_length, 64)\n"
     "  --dropout X          dropout after every ReLU (dropout, 0.1)\n"
     "Training:\n"
     "  --epochs N           epochs to train (num_epochs, 50)\n"
     "  --batch N            windows per step (batch_size, 512)\n"
     "  --lr X               Adam learning rate (learning_rate, 1e-4)\n"
     "  --clip X|reference|none  gradient clipping: a max norm, the reference schedule\n"
     "                       (0.5 for epochs 1-10, 1.0 to 30, then 2.0; default), or none\n"
     "  --on-divergence rollback|fail  on a non-finite gradient norm: go back to the\n"
     "                       newest checkpoint with a finite val loss at\n"
     "                       divergence_lr_factor (0.5) times the lr, at most\n"
     "                       divergence_retries (3) times, then fail (on_divergence,\n"
     "                       rollback); or fail at once\n"
     "  --patience N         early-stopping patience in epochs, 0 = off (patience, 15)\n"
     "  --reset-patience     restart the patience counter when the job is resumed\n"
     "  --seed N             seed of init, data order and dropout (seed, 42)\n"
     "  --init-from JOB:CKPT|FILE  start from another job's checkpoint (e.g. base:best)\n"
     "                       or a safetensors file, keeping the source's tokenizer\n"
     "  --init-optimizer     with --init-from, also take its Adam state\n"
     "Checkpoints:\n"
     "  --save-every N       epochs between NAME_epoch_N checkpoints (save_every, 5)\n"
     "  --keep N             periodic checkpoints kept, 0 = all (keep, 0)\n"
     "Placement:\n"
     "  --device D           cpu, cuda:N, cuda (any GPU) or a list of GPUs\n"
     "                       cuda:0,cuda:1 (one data-parallel rank on each; sets\n"
     "                       num_devices); default: the least busy device\n"
     "  --num-devices N      train on N devices at once, data-parallel (num_devices, 1):\n"
     "                       N GPUs of their own, or N ranks sharing the cpu (its threads\n"
     "                       split among them); --batch is the global batch and must\n"
     "                       divide by N; the results match one device up to float\n"
     "                       summation order, and a checkpoint resumes on any N\n"
     "  --gpus N             any N free GPUs (device cuda, num_devices N)\n"
     "  --precision P        GEMM arithmetic: fp32 (default), tf32 or bf16 (precision);\n"
     "                       tf32 needs a CUDA device, bf16 a CUDA device or a cpu with\n"
     "                       AMX-BF16 (hello lists each device's precisions)\n"
     "  --threads N          CPU threads, 0 = all (threads, 0); split among the ranks\n"
     "                       of a job on the cpu with num_devices > 1\n"
     "Other:\n"
     "  --set KEY=VALUE      any configuration key, e.g. --set weight_decay=0.01\n"
     "                       (keys: vocab_size embed_dim hidden_dim context_dim num_layers\n"
     "                       max_seq_length dropout data val tokenizer val_fraction\n"
     "                       num_epochs batch_size learning_rate beta1 beta2 eps\n"
     "                       weight_decay clip patience min_delta reset_patience seed\n"
     "                       save_every keep on_divergence divergence_lr_factor\n"
     "                       divergence_retries on_device_fault device num_devices\n"
     "                       threads precision; on_device_fault requeue|fail: after a device\n"
     "                       fault, queue the job again from its latest checkpoint for a\n"
     "                       healthy device, at most 3 times (default), or fail)\n"
     "  --watch              then follow the job like `nllmctl watch NAME`\n"
     "\n"
     "A bad flag value or a missing data file is a usage error (exit 2).\n"},
    {"list", cmd_list, "list", "list the jobs and their state",
     "Prints one line per job: NAME STATE EPOCH (done/target) PROGRESS (of the running\n"
     "epoch) VAL_LOSS (last epoch) BEST_VAL (loss@epoch) DEVICE UPDATED.\n"},
    {"status", cmd_status, "status NAME", "show one job's state, metrics and configuration",
     "Prints `key: value` lines: state, epoch, step, losses, best validation loss,\n"
     "device (and the jobs sharing it), a job on several devices its ranks with each\n"
     "one's device and tokens/s, precision, peak device memory, attempt,\n"
     "divergences (non-finite gradient norms since the last start or resume, when\n"
     "any), device faults (likewise), error, times, and the full configuration.\n"},
    {"watch", cmd_watch, "watch NAME", "follow a job's training live",
     "Draws the training display: a header (model dims, parameters, device), then per\n"
     "epoch `Epoch N/M`, a progress bar with percent, elapsed time, ETA and the running\n"
     "loss, and at the epoch's end `Val: Loss=.. PPL=.. Acc=..%` (✓ for a new best),\n"
     "plus checkpoint saves and the resume point. Without a terminal, or with NO_COLOR\n"
     "set, prints plain lines instead (a progress line at most every 10 s and one per\n"
     "epoch). With --json prints the watch result, then one notification\n"
     "{\"method\", \"params\"} per line.\n"
     "Exits 0 when the job is completed, stopped, paused or interrupted, 1 when it\n"
     "failed, 3 when the connection is lost. Ctrl-C detaches (exit 0); the job goes on.\n"},
    {"pause", cmd_pause, "pause NAME [--at-epoch-end]", "pause a job, freeing its device",
     "The job stops at the next step boundary, writes checkpoint paused and becomes\n"
     "paused; a queued job is paused at once.\n"
     "  --at-epoch-end       finish the running epoch first\n"},
    {"resume", cmd_resume,
     "resume NAME [CKPT] [--epochs N] [--reset-patience] [--lr X] [--batch N]\n"
     "       [--patience N] [--clip X] [--on-divergence rollback|fail] [--precision P]\n"
     "       [--num-devices N | --gpus N] [--device D] [--set KEY=VALUE] [--watch]",
     "continue a paused, interrupted, stopped, completed or failed job",
     "CKPT is paused, latest (default), best, final or epoch_N; history after it is kept\n"
     "but marked superseded. Training settings may change; the model shape, data,\n"
     "tokenizer and seed may not.\n"
     "  --epochs N           new target number of epochs (num_epochs)\n"
     "  --reset-patience     restart the early-stopping counter\n"
     "  --lr X               learning rate from now on\n"
     "  --batch N            batch size from now on\n"
     "  --patience N         early-stopping patience from now on\n"
     "  --clip X             clipping from now on: a max norm, reference or none\n"
     "  --on-divergence M    rollback or fail from now on (on_divergence)\n"
     "  --precision P        GEMM precision from now on: fp32, tf32 or bf16 (an event\n"
     "                       records the change)\n"
     "  --num-devices N      devices from now on (the global batch, the data order and\n"
     "                       so the training stay the same: a checkpoint of N devices\n"
     "                       resumes on M)\n"
     "  --gpus N             any N GPUs from now on (device cuda, num_devices N)\n"
     "  --device D           device from now on: cpu, cuda:N, cuda or cuda:0,cuda:1\n"
     "  --set KEY=VALUE      any other training setting (e.g. weight_decay=0.01)\n"
     "  --watch              then follow the job like `nllmctl watch NAME`\n"},
    {"extend", cmd_extend, "extend NAME NUM_EPOCHS", "raise a job's target number of epochs",
     "Sets the target to NUM_EPOCHS on a running, paused or completed job; a completed\n"
     "job continues from its final checkpoint at once.\n"},
    {"stop", cmd_stop, "stop NAME", "end a job for good (checkpoint final)",
     "The job ends at the next step boundary, writes checkpoint final and becomes\n"
     "stopped (it can still be resumed later).\n"},
    {"verify", cmd_verify, "verify NAME|--all", "re-hash checkpoint files",
     "Re-hashes every checkpoint of job NAME (or of all jobs) against the catalog and\n"
     "marks the bad ones. Exits 1 when a checkpoint is bad.\n"
     "  --all                every job\n"},
    {"checkpoints", cmd_checkpoints, "checkpoints NAME [--all]", "list a job's checkpoints",
     "Prints NAME EPOCH STEP VAL_LOSS SIZE CREATED STATUS ATTEMPT CHECKSUM (xxh64).\n"
     "  --all                include checkpoints superseded by a resume (CURRENT column)\n"},
    {"history", cmd_history, "history NAME [--all] [--csv]", "per-epoch metrics of a job",
     "Prints one line per completed epoch: losses, perplexities, accuracy, time, speed.\n"
     "  --all                include epochs superseded by a resume\n"
     "  --csv                CSV with the header epoch,attempt,train_loss,val_loss,\n"
     "                       train_ppl,val_ppl,val_acc,seconds,tokens_per_s,superseded\n"},
    {"plot", cmd_plot, "plot NAME [-o FILE]", "draw a job's training curves as an SVG picture",
     "Fetches the job's history (epochs superseded by a resume left out) and writes\n"
     "the picture nllmd writes as NAME_training_curves_*.svg in the job folder: loss\n"
     "and perplexity (log scale when it spans more than 100x), train and val, by\n"
     "epoch, with the best epoch (lowest val loss) marked. Exits 1 when the job has\n"
     "no completed epoch yet or the file cannot be written.\n"
     "  -o, --output FILE    where to write (default NAME_training_curves.svg in the\n"
     "                       current folder; - = standard output)\n"},
    {"events", cmd_events, "events NAME [--limit N]", "a job's event log, newest last",
     "Prints `TIME KIND MESSAGE` lines with ISO 8601 local times.\n"
     "  --limit N            only the newest N events\n"},
    {"rm", cmd_rm, "rm NAME [--delete-files]", "remove a job from the catalog",
     "A running or queued job must be paused or stopped first.\n"
     "  --delete-files       also delete its checkpoint files\n"},
    {"generate", cmd_generate,
     "generate NAME [--checkpoint C] [--prompt TEXT] [--tokens N] [--temperature X]\n"
     "       [--seed N]",
     "sample text from a job's checkpoint",
     "Prints the generated text.\n"
     "  --checkpoint C       best (default when there is one), latest, final, paused, epoch_N\n"
     "  --prompt TEXT        text to continue\n"
     "  --tokens N           tokens to generate (default 50)\n"
     "  --temperature X      sampling temperature (default 1.0; 0 = greedy)\n"
     "  --seed N             sampling seed\n"},
    {"hello", cmd_hello, "hello", "show the daemon's version, devices and limits",
     "Prints the daemon version, protocol, maximum concurrent jobs (in all and per\n"
     "device), whether TCP clients must authenticate, and each device with the jobs\n"
     "running on it.\n"},
    {"device", cmd_device, "device reset DEVICE", "put a device back in service after a fault",
     "A device fault (a GPU's ECC error, illegal address, launch failure, lost device)\n"
     "takes the device out of service: no job is placed on it until it is reset here\n"
     "(or nllmd restarts), and `hello` shows it UNHEALTHY. `device reset cuda:N` runs\n"
     "cudaDeviceReset and puts it back; queued jobs may then run there. Refused while\n"
     "jobs run on the device: pause or stop them first, or wait until they end.\n"},
    {"shutdown", cmd_shutdown, "shutdown", "stop the daemon",
     "Pauses every running job at a step boundary (state interrupted) and exits.\n"},
    {"version", cmd_version, "version", "print nllmctl's (and the daemon's) version",
     "Prints nllmctl's version and, when it can be reached, the daemon's.\n"},
    {"proxy", cmd_proxy, "proxy", "relay stdin/stdout to the local nllmd (for --host ssh://)",
     "Connects to the local daemon's Unix socket (--socket PATH, NLLM_SOCKET or the\n"
     "default) and copies standard input to it and its output to standard output\n"
     "until the daemon closes the connection. `nllmctl --host ssh://HOST ...` runs\n"
     "`ssh HOST nllmctl proxy` and speaks the usual protocol through it, so access is\n"
     "what ssh and the socket's permissions allow. Exits 0 when the connection ends,\n"
     "3 when the socket cannot be reached.\n"},
    {"help", cmd_help, "help [COMMAND]", "help for a command", "Same as `COMMAND --help`.\n"},
    {0, 0, 0, 0, 0},
};

static const cmd_t *find_cmd(const char *name)
{
    if (!strcmp(name, "remove"))
        name = "rm";
    for (const cmd_t *c = commands; c->name; c++)
        if (!strcmp(c->name, name))
            return c;
    return NULL;
}

/* ---- completion helper ----------------------------------------------------
 * `nllmctl __complete commands` prints the command names, `nllmctl
 * __complete flags CMD` the flags CMD's synopsis and help text name plus the
 * global ones, one a line; the shell completions (ops/completion/) call it,
 * so they list what `--help` lists and never go stale. Hidden from usage. */

/* Prints the flags in text[0..len) not printed yet (seen). */
static void flags_in(const char *text, size_t len, const char **seen, int *nseen, int max)
{
    const char *end = text + len;
    for (const char *p = text; (p = memchr(p, '-', (size_t)(end - p))) != NULL; p++) {
        if (p > text && (p[-1] == '-' || p[-1] == '_' || isalnum((unsigned char)p[-1])))
            continue;
        const char *q = p + 1;
        if (q < end && *q == '-')
            q++;
        if (q >= end || !islower((unsigned char)*q))
            continue;
        size_t n = 1;
        while (q + n < end && (islower((unsigned char)q[n]) || isdigit((unsigned char)q[n]) ||
                               (q[n] == '-' && islower((unsigned char)q[n + 1]))))
            n++;
        if (q == p + 1 && n != 1) /* a short flag is one letter: -o */
            continue;
        int flen = (int)(q - p + (ptrdiff_t)n), dup = 0;
        for (int i = 0; i < *nseen && !dup; i++)
            dup = (int)strlen(seen[i]) == flen && !strncmp(seen[i], p, (size_t)flen);
        if (!dup && *nseen < max) {
            printf("%.*s\n", flen, p);
            seen[(*nseen)++] = strndup(p, (size_t)flen);
        }
        p += flen - 1;
    }
}

/* The flags a help text defines: lines "  -o, --output FILE    what", up to
 * the gap before the description (flags named in descriptions are not
 * this command's). */
static void flags_defined(const char *help, const char **seen, int *nseen, int max)
{
    for (const char *l = help; *l; ) {
        const char *nl = strchr(l, '\n');
        size_t len = nl ? (size_t)(nl - l) : strlen(l);
        if (len > 3 && !strncmp(l, "  -", 3)) {
            const char *gap = strstr(l + 2, "  ");
            size_t n = gap && gap < l + len ? (size_t)(gap - l) : len;
            flags_in(l, n, seen, nseen, max);
        }
        l += len + (nl != NULL);
    }
}

static int complete_helper(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[2], "commands")) {
        for (const cmd_t *c = commands; c->name; c++)
            printf("%s\n", c->name);
        return EXIT_OK;
    }
    if (argc == 4 && !strcmp(argv[2], "flags")) {
        const cmd_t *c = find_cmd(argv[3]);
        if (!c)
            return EXIT_USAGE;
        const char *seen[128];
        int nseen = 0;
        flags_in(c->synopsis, strlen(c->synopsis), seen, &nseen, 128);
        flags_defined(c->help, seen, &nseen, 128);
        flags_defined(GLOBAL_FLAGS, seen, &nseen, 128);
        for (int i = 0; i < nseen; i++)
            free((void *)seen[i]);
        return EXIT_OK;
    }
    fprintf(stderr, "usage: nllmctl __complete commands | flags COMMAND\n");
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    static global_t g;
    static const struct option lo[] = {COMMON_OPTS, {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    if (argc >= 2 && !strcmp(argv[1], "__complete"))
        return complete_helper(argc, argv);
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "+:hV", lo, NULL)) != -1) {
        if (opt == 'h') {
            print_main_usage(stdout);
            return EXIT_OK;
        }
        if (opt == 'V') {
            printf("nllmctl %s (protocol %d)\n", NLLM_VERSION, NLLM_PROTOCOL_VERSION);
            return EXIT_OK;
        }
        if (common_opt(&g, opt))
            continue;
        if (opt == ':')
            fprintf(stderr, "nllmctl: %s needs a value\n", argv[optind - 1]);
        else
            fprintf(stderr, "nllmctl: unknown flag %s\n", argv[optind - 1]);
        print_main_usage(stderr);
        return EXIT_USAGE;
    }
    if (optind >= argc) {
        fprintf(stderr, "nllmctl: missing COMMAND\n");
        print_main_usage(stderr);
        return EXIT_USAGE;
    }
    const cmd_t *c = find_cmd(argv[optind]);
    if (!c) {
        fprintf(stderr, "nllmctl: unknown command \"%s\"\n", argv[optind]);
        print_main_usage(stderr);
        return EXIT_USAGE;
    }
    int rc = c->run(&g, c, argc - optind, argv + optind);
    fflush(stdout);
    return rc;
}
