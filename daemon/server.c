/* server.c -- nllmd's listeners and client connections on the loop: the
 * Unix socket (mode 0660, peers checked with SO_PEERCRED), the optional
 * TCP listener (token auth first), msgpack-RPC decoding with the proto/
 * limits, bounded write queues, and watch notifications.
 *
 * A connection is freed only in its close callback; writes in flight hold
 * a pointer to it, so close waits for them (libuv runs write callbacks
 * with UV_ECANCELED before the close callback). EOF from a client is a
 * half-close: it still gets every reply, also async ones, before the close.
 * Before auth (TCP with a token) nothing but the auth result and the
 * "authenticate first" error is sent (d->dispatch decides). It knows no
 * methods and no jobs: messages go out to d->dispatch (methods.c), job
 * notifications come in through nllmd_notify (jobs.c).
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fsutil.h"
#include "jsonpack.h"
#include "log.h"
#include "server.h"

/* One queued write: freed by on_write, which libuv also runs (with
 * UV_ECANCELED) for writes still queued when the connection closes. */
typedef struct nllm_wbuf {
    uv_write_t req;
    struct nllm_wbuf *next;
    nllm_conn_t *conn;
    size_t len;
    char data[];
} nllm_wbuf_t;

static void conn_close(nllm_conn_t *c);

/* ---- writing ---------------------------------------------------------- */

static void on_write(uv_write_t *req, int status)
{
    nllm_wbuf_t *w = (nllm_wbuf_t *)req;
    nllm_conn_t *c = w->conn;
    c->pending_bytes -= w->len;
    free(w);
    if (status < 0 && !c->closing)
        conn_close(c);
}

static void conn_write(nllm_conn_t *c, const char *data, size_t len)
{
    if (c->closing)
        return;
    if (c->pending_bytes + len > NLLMD_WRITE_QUEUE_MAX) {
        nllmd_log(c->d, NULL, "client too slow: %zu bytes unsent, disconnecting it",
                  c->pending_bytes);
        conn_close(c);
        return;
    }
    nllm_wbuf_t *w = malloc(sizeof *w + len);
    if (!w) {
        conn_close(c);
        return;
    }
    w->conn = c;
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    c->pending_bytes += len;
    int rc = uv_write(&w->req, &c->h.stream, &b, 1, on_write);
    if (rc < 0) {
        c->pending_bytes -= len;
        free(w);
        conn_close(c);
    }
}

void nllmd_conn_send_json(nllm_conn_t *c, int kind, uint32_t msgid, const char *method,
                          const nllm_err_t *error, json_t *payload)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc;
    if (kind == NLLM_RPC_NOTIFICATION) {
        rc = nllm_rpc_pack_notification_begin(&pk, method);
        if (rc == 0)
            rc = msgpack_pack_array(&pk, 1) < 0 ? -1 : nllm_json_pack(&pk, payload);
    } else if (error && error->code) {
        rc = nllm_rpc_pack_response_err(&pk, msgid, error);
    } else {
        rc = nllm_rpc_pack_response_ok(&pk, msgid);
        if (rc == 0)
            rc = payload ? nllm_json_pack(&pk, payload) : msgpack_pack_nil(&pk);
    }
    if (rc == 0)
        conn_write(c, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

void nllmd_notify(nllmd_t *d, const char *job, const char *method, json_t *params)
{
    for (nllm_conn_t *c = d->conns; c; c = c->next)
        for (int i = 0; i < c->nwatch; i++)
            if (strcmp(c->watch[i], job) == 0) {
                nllmd_conn_send_json(c, NLLM_RPC_NOTIFICATION, 0, method, NULL, params);
                break;
            }
    json_decref(params);
}

/* ---- reading ------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char slab[65536]; /* the loop is single-threaded; feed() copies */
    *buf = uv_buf_init(slab, sizeof slab);
}

static void conn_free(nllm_conn_t *c)
{
    nllmd_t *d = c->d;
    for (nllm_conn_t **pp = &d->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    d->nconns--;
    nllm_rpc_decoder_close(&c->dec);
    free(c);
}

static void conn_free_cb(uv_handle_t *h)
{
    nllm_conn_t *c = h->data;
    c->handle_closed = 1;
    if (c->refs == 0)
        conn_free(c);
}

void nllmd_conn_ref(nllm_conn_t *c)
{
    c->refs++;
}

/* The last reference: free a closed connection, or finish the close that a
 * half-close (on_read, UV_EOF) deferred until every async reply was sent. */
void nllmd_conn_unref(nllm_conn_t *c)
{
    if (--c->refs > 0)
        return;
    if (c->handle_closed)
        conn_free(c);
    else if (c->closing_after_reply && !c->closing)
        nllmd_conn_close_after_writes(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    nllm_conn_t *c = req->data;
    if (uv_is_closing((uv_handle_t *)&c->h.stream))
        return;
    c->closing = 0; /* let conn_close run */
    conn_close(c);
}

void nllmd_conn_close_after_writes(nllm_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1; /* no more reads or writes */
    uv_read_stop(&c->h.stream);
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, &c->h.stream, on_shutdown) < 0) {
        c->closing = 0;
        conn_close(c);
    }
}

static void conn_close(nllm_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->h.stream, conn_free_cb);
}

/* A request that breaks the decoder's limits gets one last error reply when
 * its msgid could be read -- but on a TCP connection that has not
 * authenticated, d->dispatch answers it only "authenticate first". */
static void reply_fatal(nllm_conn_t *c, nllm_rpc_msg_t *msg, const nllm_err_t *err)
{
    if (!c->authed) {
        c->d->dispatch(c, msg);
        return;
    }
    nllm_err_t e;
    nllm_err_set(&e, NLLM_EPROTO, "%s", msg->reason[0] ? msg->reason : err->msg);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    nllm_rpc_pack_response_error(&pk, msg->msgid,
                                 msg->error_code ? msg->error_code : "bad_request", e.msg);
    conn_write(c, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* EOF is a half-close: the peer sends no more, but still reads. Reading
 * stops; the connection closes once every reply is written -- at once when
 * no async work (generate, verify) is in flight, else from the
 * nllmd_conn_unref that drops the last reference (closing_after_reply marks
 * it). The write-queue bound keeps applying until then. Any other read
 * error closes now. */
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    nllm_conn_t *c = s->data;
    if (nread == UV_EOF) {
        if (c->closing)
            return;
        uv_read_stop(s);
        if (nllm_rpc_buffered(&c->dec) > 0)
            nllmd_log(c->d, NULL, "a client half-closed in the middle of a message (%zu bytes "
                      "unread); answering what came before it",
                      nllm_rpc_buffered(&c->dec));
        if (c->refs > 0)
            c->closing_after_reply = 1;
        else
            nllmd_conn_close_after_writes(c);
        return;
    }
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0 || c->closing)
        return;
    if (nllm_rpc_feed(&c->dec, buf->base, (size_t)nread) < 0) {
        conn_close(c);
        return;
    }
    int got = 0;
    for (;;) {
        nllm_rpc_msg_t msg;
        nllm_err_t err;
        memset(&msg, 0, sizeof msg);
        int rc = nllm_rpc_next(&c->dec, &msg, &err);
        if (rc == 0) {
            /* the message now in part began in this read if one ended in
             * it, else with the read that first left bytes behind */
            if (nllm_rpc_buffered(&c->dec) == 0)
                c->msg_started = 0;
            else if (got || !c->msg_started)
                c->msg_started = uv_now(c->d->loop) + 1;
            break;
        }
        if (rc < 0) {
            /* fatal: one last error reply when a msgid could be read */
            if (msg.type == NLLM_RPC_INVALID && msg.has_msgid)
                reply_fatal(c, &msg, &err);
            nllm_rpc_msg_free(&msg);
            nllmd_log(c->d, NULL, "closing a connection: %s", err.msg);
            nllmd_conn_close_after_writes(c);
            return;
        }
        c->d->metrics.messages++;
        got = 1;
        c->d->dispatch(c, &msg);
        nllm_rpc_msg_free(&msg);
        if (c->closing)
            return;
    }
}

/* Slowloris: a message begun but not finished within msg_timeout_ms closes
 * its connection (HTTP has its head timeout, http.c). Between messages a
 * connection may stay idle for ever: watch clients only read. */
static void on_msg_sweep(uv_timer_t *t)
{
    nllmd_t *d = t->data;
    uint64_t now = uv_now(d->loop);
    for (nllm_conn_t *c = d->conns; c; c = c->next) {
        if (c->closing || c->closing_after_reply || !c->msg_started ||
            nllm_rpc_buffered(&c->dec) == 0 || now + 1 - c->msg_started < d->msg_timeout_ms)
            continue;
        nllmd_log(d, NULL,
                  "closing a %s connection: a message begun %.1f s ago is still incomplete "
                  "(%zu bytes of it arrived; a message must arrive in full within %.1f s)",
                  c->is_tcp ? "TCP" : "Unix socket", (double)(now + 1 - c->msg_started) / 1000,
                  nllm_rpc_buffered(&c->dec), (double)d->msg_timeout_ms / 1000);
        conn_close(c); /* freed in its close callback: the list stays walkable */
    }
}

static void msg_sweep_start(nllmd_t *d)
{
    d->msg_timeout_ms = NLLMD_MESSAGE_TIMEOUT_MS;
    const char *v = getenv("NLLMD_MESSAGE_TIMEOUT_MS");
    char *end;
    unsigned long long x = v && *v ? strtoull(v, &end, 10) : 0;
    if (x > 0 && !*end)
        d->msg_timeout_ms = x;
    uint64_t every = d->msg_timeout_ms / 4;
    every = every < 10 ? 10 : every > 1000 ? 1000 : every;
    uv_timer_init(d->loop, &d->msg_sweep);
    d->msg_sweep.data = d;
    uv_timer_start(&d->msg_sweep, on_msg_sweep, every, every);
    uv_unref((uv_handle_t *)&d->msg_sweep);
    d->have_msg_sweep = 1;
}

/* ---- accepting -------------------------------------------------------- */

/* Root, the daemon's user, or a member (primary or supplementary group) of
 * the socket's group -- the group that mode 0660 grants access to. */
static int peer_allowed(nllmd_t *d, uv_stream_t *s)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)s, &fd) < 0)
        return 0;
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
        return 0;
    if (cr.uid == 0 || cr.uid == getuid())
        return 1;
    gid_t sock_gid = getgid();
    char name[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    size_t nlen = sizeof name;
    struct stat st;
    if (uv_pipe_getsockname(&d->unix_server, name, &nlen) == 0 && nlen < sizeof name) {
        name[nlen] = '\0';
        if (stat(name, &st) == 0)
            sock_gid = st.st_gid;
    }
    if (cr.gid == sock_gid)
        return 1;
#ifdef SO_PEERGROUPS
    gid_t groups[256];
    socklen_t glen = sizeof groups;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0) {
        for (size_t i = 0; i < glen / sizeof(gid_t); i++)
            if (groups[i] == sock_gid)
                return 1;
        return 0;
    }
#endif
    /* older kernels: the peer user's groups from the group database */
    struct passwd pw, *pp = NULL;
    char buf[4096];
    if (getpwuid_r(cr.uid, &pw, buf, sizeof buf, &pp) == 0 && pp) {
        gid_t g[256];
        int ng = 256;
        if (getgrouplist(pp->pw_name, pp->pw_gid, g, &ng) >= 0)
            for (int i = 0; i < ng; i++)
                if (g[i] == sock_gid)
                    return 1;
    }
    return 0;
}

static nllm_conn_t *conn_new(nllmd_t *d, int tcp)
{
    nllm_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->d = d;
    c->is_tcp = tcp;
    c->authed = !tcp || d->token_len == 0;
    nllm_rpc_limits_t lim;
    nllm_rpc_limits_default(&lim);
    if (d->opt.max_message)
        lim.max_msg = d->opt.max_message;
    nllm_err_t err;
    if (nllm_rpc_decoder_init(&c->dec, &lim, &err) < 0) {
        free(c);
        return NULL;
    }
    return c;
}

static void on_connection(uv_stream_t *server, int status)
{
    nllmd_t *d = server->data;
    if (status < 0)
        return;
    int tcp = server == (uv_stream_t *)&d->tcp_server;
    nllm_conn_t *c = conn_new(d, tcp);
    if (!c)
        return;
    if (tcp)
        uv_tcp_init(d->loop, &c->h.tcp);
    else
        uv_pipe_init(d->loop, &c->h.pipe, 0);
    c->h.stream.data = c;
    c->next = d->conns;
    d->conns = c;
    d->nconns++;
    if (uv_accept(server, &c->h.stream) < 0) {
        conn_close(c);
        return;
    }
    if (!tcp && !peer_allowed(d, &c->h.stream)) {
        nllmd_log(d, NULL, "refused a client whose uid/gid may not use %s",
                  d->opt.socket_path);
        conn_close(c);
        return;
    }
    if (tcp)
        uv_tcp_nodelay(&c->h.tcp, 1); /* replies are small: send each at once */
    uv_read_start(&c->h.stream, on_alloc, on_read);
}

/* ---- listeners -------------------------------------------------------- */

static int listen_unix(nllmd_t *d, nllm_err_t *err)
{
    const char *path = d->opt.socket_path;
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return nllm_err_set(err, NLLM_EINVAL,
                            "socket path %s is too long for a Unix socket (at most %zu "
                            "bytes): use --socket with a shorter path",
                            path, sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    char dir[NLLM_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        int rc = nllm_fs_mkdir_p(dir, 0750, err);
        if (rc < 0)
            return rc;
    }
    uv_pipe_init(d->loop, &d->unix_server, 0);
    d->unix_server.data = d;
    d->have_unix = 1;
    /* systemd socket activation: adopt fd 3 */
    const char *lfds = getenv("LISTEN_FDS"), *lpid = getenv("LISTEN_PID");
    struct stat fst;
    if (lfds && atoi(lfds) >= 1 && lpid && atoi(lpid) == getpid()) {
        if (fstat(3, &fst) != 0 || !S_ISSOCK(fst.st_mode))
            return nllm_err_set(err, NLLM_EINVAL,
                                "socket activation: LISTEN_FDS is set but fd 3 is not a socket; "
                                "check nllmd.socket");
        int rc = uv_pipe_open(&d->unix_server, 3);
        if (rc < 0)
            return nllm_err_set(err, NLLM_EIO, "socket activation: cannot adopt fd 3: %s",
                                uv_strerror(rc));
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDNAMES");
        d->socket_activated = 1;
        nllmd_log(d, NULL, "using the socket passed by the service manager");
    } else {
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            /* a stale socket from a previous run: only if nobody answers */
            int fd = socket(AF_UNIX, SOCK_STREAM, 0);
            struct sockaddr_un sa = {.sun_family = AF_UNIX};
            memcpy(sa.sun_path, path, strlen(path) + 1); /* length checked above */
            int live = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
            if (fd >= 0)
                close(fd);
            if (live)
                return nllm_err_set(err, NLLM_EBUSY,
                                    "socket %s is in use by another nllmd: stop it first or use "
                                    "--socket",
                                    path);
            unlink(path);
        }
        int rc = uv_pipe_bind(&d->unix_server, path);
        if (rc < 0)
            return nllm_err_set(err, NLLM_EIO, "cannot bind %s: %s", path, uv_strerror(rc));
        chmod(path, 0660);
    }
    int rc = uv_listen((uv_stream_t *)&d->unix_server, 128, on_connection);
    if (rc < 0)
        return nllm_err_set(err, NLLM_EIO, "cannot listen on %s: %s", path, uv_strerror(rc));
    return 0;
}

static int is_loopback(const char *host)
{
    return !strcmp(host, "127.0.0.1") || !strcmp(host, "::1") || !strcmp(host, "localhost") ||
           !strncmp(host, "127.", 4);
}

static int listen_tcp(nllmd_t *d, nllm_err_t *err)
{
    char host[256];
    snprintf(host, sizeof host, "%s", d->opt.listen);
    char *colon = strrchr(host, ':');
    if (!colon)
        return nllm_err_set(err, NLLM_EINVAL, "--listen %s: expected HOST:PORT", d->opt.listen);
    *colon = '\0';
    int port = atoi(colon + 1);
    char *h = host;
    if (*h == '[') { /* [::1]:port */
        h++;
        char *e = strchr(h, ']');
        if (e)
            *e = '\0';
    }
    if (port <= 0 || port > 65535)
        return nllm_err_set(err, NLLM_EINVAL, "--listen %s: bad port", d->opt.listen);
    if (d->opt.token_file[0]) {
        uint8_t *buf;
        size_t len;
        int rc = nllm_fs_read_file(d->opt.token_file, 4096, &buf, &len, err);
        if (rc < 0)
            return nllm_err_prefix(err, "--token-file: ");
        while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
            len--;
        if (len < 16 || len >= sizeof d->token) {
            free(buf);
            return nllm_err_set(err, NLLM_EINVAL,
                                "token file %s: the token must be 16..255 bytes (128 bits or "
                                "more; e.g. `head -c 32 /dev/urandom | base64`)",
                                d->opt.token_file);
        }
        memcpy(d->token, buf, len);
        d->token_len = len;
        free(buf);
    } else if (!is_loopback(h)) {
        return nllm_err_set(err, NLLM_EAUTH,
                            "refusing to listen on %s without a token: pass --token-file F "
                            "or listen on 127.0.0.1",
                            d->opt.listen);
    }
    struct sockaddr_storage sa;
    int rc = strchr(h, ':') ? uv_ip6_addr(h, port, (struct sockaddr_in6 *)&sa)
                            : uv_ip4_addr(strcmp(h, "localhost") ? h : "127.0.0.1", port,
                                          (struct sockaddr_in *)&sa);
    if (rc < 0)
        return nllm_err_set(err, NLLM_EINVAL, "--listen %s: bad address", d->opt.listen);
    uv_tcp_init(d->loop, &d->tcp_server);
    d->tcp_server.data = d;
    d->have_tcp = 1;
    rc = uv_tcp_bind(&d->tcp_server, (struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&d->tcp_server, 128, on_connection);
    if (rc < 0)
        return nllm_err_set(err, NLLM_EIO, "cannot listen on %s: %s", d->opt.listen,
                            uv_strerror(rc));
    return 0;
}

int nllmd_server_start(nllmd_t *d, nllmd_dispatch_cb dispatch, nllm_err_t *err)
{
    int rc = 0;
    d->dispatch = dispatch;
    if (d->opt.socket_path[0])
        rc = listen_unix(d, err);
    if (rc == 0 && d->opt.listen[0])
        rc = listen_tcp(d, err);
    if (rc == 0 && (d->have_unix || d->have_tcp))
        msg_sweep_start(d);
    return rc;
}

void nllmd_server_close(nllmd_t *d)
{
    for (nllm_conn_t *c = d->conns; c; c = c->next)
        nllmd_conn_close_after_writes(c);
    if (d->have_unix && !uv_is_closing((uv_handle_t *)&d->unix_server)) {
        uv_close((uv_handle_t *)&d->unix_server, NULL);
        if (!d->socket_activated)
            unlink(d->opt.socket_path);
    }
    if (d->have_tcp && !uv_is_closing((uv_handle_t *)&d->tcp_server))
        uv_close((uv_handle_t *)&d->tcp_server, NULL);
    if (d->have_msg_sweep && !uv_is_closing((uv_handle_t *)&d->msg_sweep))
        uv_close((uv_handle_t *)&d->msg_sweep, NULL);
}
