/* conn.c -- socket, framing and msgpack <-> JSON for nllmctl; see conn.h.
 * Invariant: every decoded message is filed at once: a response in the
 * response list until its caller waits for it (responses may come out of
 * order, and start + watch are pipelined), a notification in the note
 * queue in arrival order. An ssh transport's process lives exactly as long
 * as the connection: nllm_conn_close closes our end (ssh sees EOF and ends
 * the remote proxy) and reaps it.
 */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_MAX_MSG ((size_t)256 << 20) /* responses (history --all) can be big */
#define CLIENT_MAX_ITEMS (64u << 20)

static int conn_init(nllm_conn_t *c, nllm_err_t *err)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->ssh_errfd = -1;
    c->next_msgid = 1;
    nllm_rpc_limits_t lim;
    nllm_rpc_limits_default(&lim);
    lim.max_msg = CLIENT_MAX_MSG;
    lim.max_items = CLIENT_MAX_ITEMS;
    if (nllm_rpc_decoder_init(&c->dec, &lim, err) < 0)
        return NLLM_CALL_CONNECT;
    return NLLM_CALL_OK;
}

int nllm_conn_open_unix(nllm_conn_t *c, const char *path, nllm_err_t *err)
{
    if (conn_init(c, err))
        return NLLM_CALL_CONNECT;
    snprintf(c->where, sizeof c->where, "%s", path);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path) {
        nllm_err_set(err, NLLM_EINVAL, "socket path %s is longer than %zu bytes", path,
                     sizeof sa.sun_path - 1);
        return NLLM_CALL_CONNECT;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        nllm_err_set(err, NLLM_EIO, "socket(): %s", strerror(errno));
        return NLLM_CALL_CONNECT;
    }
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        const char *hint = "";
        if (e == EACCES || e == EPERM)
            hint = " (only root, the daemon's user and members of the socket's group may "
                   "connect)";
        nllm_err_set(err, NLLM_EIO, "cannot connect to nllmd at %s: %s%s", path, strerror(e),
                     hint);
        close(c->fd);
        c->fd = -1;
        return NLLM_CALL_CONNECT;
    }
    return NLLM_CALL_OK;
}

int nllm_conn_open_tcp(nllm_conn_t *c, const char *hostport, nllm_err_t *err)
{
    if (conn_init(c, err))
        return NLLM_CALL_CONNECT;
    snprintf(c->where, sizeof c->where, "%s", hostport);
    char host[256], port[32];
    const char *colon;
    if (hostport[0] == '[') { /* [v6]:port */
        const char *rb = strchr(hostport, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - hostport - 1) >= sizeof host) {
            nllm_err_set(err, NLLM_EINVAL, "--connect %s: expected [ADDR]:PORT", hostport);
            return NLLM_CALL_CONNECT;
        }
        memcpy(host, hostport + 1, (size_t)(rb - hostport - 1));
        host[rb - hostport - 1] = '\0';
        colon = rb + 1;
    } else {
        colon = strrchr(hostport, ':');
        if (!colon || colon == hostport || (size_t)(colon - hostport) >= sizeof host) {
            nllm_err_set(err, NLLM_EINVAL, "--connect %s: expected HOST:PORT", hostport);
            return NLLM_CALL_CONNECT;
        }
        memcpy(host, hostport, (size_t)(colon - hostport));
        host[colon - hostport] = '\0';
    }
    if (!colon[1] || strlen(colon + 1) >= sizeof port) {
        nllm_err_set(err, NLLM_EINVAL, "--connect %s: missing port", hostport);
        return NLLM_CALL_CONNECT;
    }
    snprintf(port, sizeof port, "%s", colon + 1);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0) {
        nllm_err_set(err, NLLM_EIO, "cannot resolve %s: %s", hostport, gai_strerror(g));
        return NLLM_CALL_CONNECT;
    }
    int e = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            c->fd = fd;
            break;
        }
        e = errno;
        close(fd);
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        nllm_err_set(err, NLLM_EIO, "cannot connect to nllmd at %s: %s", hostport,
                     strerror(e ? e : ECONNREFUSED));
        return NLLM_CALL_CONNECT;
    }
    return NLLM_CALL_OK;
}

int nllm_conn_open_cmd(nllm_conn_t *c, char *const argv[], const char *where,
                       nllm_err_t *err)
{
    if (conn_init(c, err))
        return NLLM_CALL_CONNECT;
    snprintf(c->where, sizeof c->where, "%s", where);
    char tmpl[PATH_MAX];
    const char *tmpdir = getenv("TMPDIR");
    snprintf(tmpl, sizeof tmpl, "%s/nllmctl-ssh-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    int sv[2], efd = mkostemp(tmpl, O_CLOEXEC);
    if (efd < 0) {
        nllm_err_set(err, NLLM_EIO, "cannot reach nllmd on %s: temporary file: %s", where,
                     strerror(errno));
        return NLLM_CALL_CONNECT;
    }
    unlink(tmpl);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        nllm_err_set(err, NLLM_EIO, "cannot reach nllmd on %s: socketpair: %s", where,
                     strerror(errno));
        close(efd);
        return NLLM_CALL_CONNECT;
    }
    pid_t pid = fork();
    if (pid < 0) {
        nllm_err_set(err, NLLM_EIO, "cannot reach nllmd on %s: fork: %s", where,
                     strerror(errno));
        close(sv[0]);
        close(sv[1]);
        close(efd);
        return NLLM_CALL_CONNECT;
    }
    if (pid == 0) { /* dup2 clears close-on-exec on 0, 1, 2 */
        if (dup2(sv[1], 0) < 0 || dup2(sv[1], 1) < 0 || dup2(efd, 2) < 0)
            _exit(127);
        signal(SIGPIPE, SIG_DFL);
        execvp(argv[0], argv);
        dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(sv[1]);
    c->fd = sv[0];
    c->ssh_pid = (int)pid;
    c->ssh_errfd = efd;
    return NLLM_CALL_OK;
}

/* Waits up to ms for the ssh process; returns its wait status or -1. */
static int reap_ssh(nllm_conn_t *c, int ms)
{
    if (c->ssh_pid <= 0)
        return -1;
    for (int waited = 0;; waited += 10) {
        int st;
        pid_t r = waitpid((pid_t)c->ssh_pid, &st, WNOHANG);
        if (r == (pid_t)c->ssh_pid || (r < 0 && errno != EINTR)) {
            c->ssh_pid = 0;
            return r < 0 ? -1 : st;
        }
        if (waited >= ms)
            return -1;
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    }
}

/* The ssh transport ended (EOF or a write error): explain it with ssh's exit
 * status and the last line it wrote to stderr. */
static void ssh_ended(nllm_conn_t *c, nllm_err_t *err)
{
    int st = reap_ssh(c, 5000);
    char buf[4096] = "", how[64] = "";
    if (c->ssh_errfd >= 0) {
        off_t end = lseek(c->ssh_errfd, 0, SEEK_END);
        off_t from = end > (off_t)sizeof buf - 1 ? end - (off_t)sizeof buf + 1 : 0;
        ssize_t n = pread(c->ssh_errfd, buf, sizeof buf - 1, from);
        buf[n > 0 ? n : 0] = '\0';
    }
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    const char *last = strrchr(buf, '\n');
    last = last ? last + 1 : buf;
    if (st >= 0 && WIFEXITED(st))
        snprintf(how, sizeof how, "ssh exited %d", WEXITSTATUS(st));
    else if (st >= 0 && WIFSIGNALED(st))
        snprintf(how, sizeof how, "ssh was killed by signal %d", WTERMSIG(st));
    else
        snprintf(how, sizeof how, "ssh closed the connection");
    nllm_err_set(err, NLLM_EIO, "%s nllmd on %s: %s%s%s",
                 c->got_bytes ? "lost the connection to" : "cannot reach", c->where, how,
                 *last ? ": " : "", last);
}

void nllm_conn_close(nllm_conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->ssh_pid > 0 && reap_ssh(c, 2000) < 0 && c->ssh_pid > 0) {
        kill((pid_t)c->ssh_pid, SIGTERM);
        reap_ssh(c, 2000);
    }
    if (c->ssh_errfd >= 0)
        close(c->ssh_errfd);
    c->ssh_errfd = -1;
    nllm_rpc_decoder_close(&c->dec);
    nllm_conn_note_t *lists[2] = {c->head, c->rhead};
    for (int i = 0; i < 2; i++)
        while (lists[i]) {
            nllm_conn_note_t *n = lists[i];
            lists[i] = n->next;
            json_decref(n->note);
            free(n);
        }
    c->head = c->tail = c->rhead = c->rtail = NULL;
}

int nllm_conn_send(nllm_conn_t *c, const void *buf, size_t len, nllm_err_t *err)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (c->ssh_errfd >= 0)
                ssh_ended(c, err);
            else
                nllm_err_set(err, NLLM_EIO, "writing to nllmd at %s: %s", c->where,
                             strerror(errno));
            return NLLM_CALL_LOST;
        }
        p += w;
        len -= (size_t)w;
    }
    return NLLM_CALL_OK;
}

/* ---- msgpack <-> JSON ---------------------------------------------------- */

/* Copy s replacing each invalid UTF-8 sequence (and NUL) by U+FFFD. */
static json_t *utf8_string(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    char *out = malloc(n * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char b = (unsigned char)s[i];
        size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && b != 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++)
            ok = ((unsigned char)s[i + k] >> 6) == 2;
        if (ok && len > 1) { /* overlong or surrogate: let jansson judge */
            json_t *t = json_stringn(s + i, len);
            ok = t != NULL;
            json_decref(t);
        }
        if (ok) {
            memcpy(out + o, s + i, len);
            o += len;
            i += len;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    j = json_stringn(out, o);
    free(out);
    return j;
}

json_t *nllm_mp_to_json(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return json_real((double)o->via.u64);
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
    case MSGPACK_OBJECT_STR:
        return utf8_string(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN:
    case MSGPACK_OBJECT_EXT: {
        const char *p = o->type == MSGPACK_OBJECT_BIN ? o->via.bin.ptr : o->via.ext.ptr;
        size_t n = o->type == MSGPACK_OBJECT_BIN ? o->via.bin.size : o->via.ext.size;
        char *hex = malloc(n * 2 + 1);
        if (!hex)
            return NULL;
        for (size_t i = 0; i < n; i++)
            snprintf(hex + 2 * i, 3, "%02x", (unsigned char)p[i]);
        hex[2 * n] = '\0';
        json_t *j = json_string(hex);
        free(hex);
        return j;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++) {
            json_t *v = nllm_mp_to_json(&o->via.array.ptr[i]);
            if (!v || json_array_append_new(a, v) < 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            json_t *v = nllm_mp_to_json(&o->via.map.ptr[i].val);
            char *key = NULL;
            if (k->type == MSGPACK_OBJECT_STR) {
                json_t *ks = utf8_string(k->via.str.ptr, k->via.str.size);
                key = ks ? strdup(json_string_value(ks)) : NULL;
                json_decref(ks);
            } else {
                json_t *kj = nllm_mp_to_json(k);
                key = kj ? json_dumps(kj, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
                json_decref(kj);
            }
            if (!v || !key || json_object_set_new(m, key, v) < 0) {
                free(key);
                json_decref(m);
                return NULL;
            }
            free(key);
        }
        return m;
    }
    }
    return json_null();
}

int nllm_json_pack(msgpack_packer *pk, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_NULL:
        return msgpack_pack_nil(pk);
    case JSON_TRUE:
        return msgpack_pack_true(pk);
    case JSON_FALSE:
        return msgpack_pack_false(pk);
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, (int64_t)json_integer_value(j));
    case JSON_REAL:
        return msgpack_pack_double(pk, json_real_value(j));
    case JSON_STRING: {
        size_t n = json_string_length(j);
        if (msgpack_pack_str(pk, n) < 0)
            return -1;
        return msgpack_pack_str_body(pk, json_string_value(j), n);
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        if (msgpack_pack_array(pk, n) < 0)
            return -1;
        for (size_t i = 0; i < n; i++)
            if (nllm_json_pack(pk, json_array_get(j, i)) < 0)
                return -1;
        return 0;
    }
    case JSON_OBJECT: {
        if (msgpack_pack_map(pk, json_object_size(j)) < 0)
            return -1;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v)
        {
            if (nllm_rpc_pack_str(pk, k) < 0 || nllm_json_pack(pk, v) < 0)
                return -1;
        }
        return 0;
    }
    }
    return -1;
}

/* ---- reading ------------------------------------------------------------ */

/* Wait up to timeout_ms for bytes and feed them. OK, LOST, INTERRUPTED or
 * TIMEOUT. */
static int fill(nllm_conn_t *c, int timeout_ms, nllm_err_t *err)
{
    for (;;) {
        if (c->interrupt && *c->interrupt)
            return NLLM_CALL_INTERRUPTED;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r < 0) {
            if (errno == EINTR)
                continue; /* re-checks *interrupt */
            nllm_err_set(err, NLLM_EIO, "poll: %s", strerror(errno));
            return NLLM_CALL_LOST;
        }
        if (r == 0)
            return NLLM_CALL_TIMEOUT;
        char buf[65536];
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0 && c->ssh_errfd >= 0 && c->interrupt && *c->interrupt)
            return NLLM_CALL_INTERRUPTED; /* Ctrl-C reached ssh too: a detach */
        if (n <= 0 && c->ssh_errfd >= 0) {
            ssh_ended(c, err);
            return NLLM_CALL_LOST;
        }
        if (n < 0) {
            nllm_err_set(err, NLLM_EIO, "reading from nllmd at %s: %s", c->where,
                         strerror(errno));
            return NLLM_CALL_LOST;
        }
        if (n == 0) {
            nllm_err_set(err, NLLM_EIO, "nllmd at %s closed the connection", c->where);
            return NLLM_CALL_LOST;
        }
        c->got_bytes = 1;
        if (nllm_rpc_feed(&c->dec, buf, (size_t)n) < 0) {
            nllm_err_set(err, NLLM_EIO, "reading from nllmd at %s: out of memory or bad data",
                         c->where);
            return NLLM_CALL_LOST;
        }
        return NLLM_CALL_OK;
    }
}

static void push(nllm_conn_note_t **head, nllm_conn_note_t **tail, json_t *j)
{
    nllm_conn_note_t *n = calloc(1, sizeof *n);
    if (!n) {
        json_decref(j);
        return;
    }
    n->note = j;
    if (*tail)
        (*tail)->next = n;
    else
        *head = n;
    *tail = n;
}

/* Decode everything buffered: notifications go to the note queue, responses
 * (as {"id", "error", "result"}) to the response list, anything else is
 * dropped. Returns OK or LOST. */
static int drain(nllm_conn_t *c, nllm_err_t *err)
{
    for (;;) {
        nllm_rpc_msg_t m;
        nllm_err_t e = {0};
        int rc = nllm_rpc_next(&c->dec, &m, &e);
        if (rc < 0) {
            nllm_rpc_msg_free(&m);
            nllm_err_set(err, NLLM_EPROTO, "bad data from nllmd at %s: %s", c->where, e.msg);
            return NLLM_CALL_LOST;
        }
        if (rc == 0)
            return NLLM_CALL_OK;
        if (m.type == NLLM_RPC_NOTIFICATION) {
            json_t *note = json_object();
            json_object_set_new(note, "method", json_string(m.method));
            json_t *p = nllm_mp_to_json(&m.params);
            /* params is [map]: hand out the map itself */
            if (json_is_array(p) && json_array_size(p) == 1) {
                json_t *one = json_incref(json_array_get(p, 0));
                json_decref(p);
                p = one;
            }
            json_object_set_new(note, "params", p ? p : json_null());
            push(&c->head, &c->tail, note);
        } else if (m.type == NLLM_RPC_RESPONSE) {
            json_t *r = json_object();
            json_t *e2 = nllm_mp_to_json(&m.error), *res = nllm_mp_to_json(&m.result);
            json_object_set_new(r, "id", json_integer(m.msgid));
            json_object_set_new(r, "error", e2 ? e2 : json_null());
            json_object_set_new(r, "result", res ? res : json_null());
            push(&c->rhead, &c->rtail, r);
        }
        nllm_rpc_msg_free(&m);
    }
}

/* Unlinks and returns the stored response with this msgid, or NULL. */
static json_t *take_response(nllm_conn_t *c, uint32_t id)
{
    nllm_conn_note_t *prev = NULL;
    for (nllm_conn_note_t *n = c->rhead; n; prev = n, n = n->next) {
        if (json_integer_value(json_object_get(n->note, "id")) != (json_int_t)id)
            continue;
        if (prev)
            prev->next = n->next;
        else
            c->rhead = n->next;
        if (c->rtail == n)
            c->rtail = prev;
        json_t *r = n->note;
        free(n);
        return r;
    }
    return NULL;
}

int nllm_conn_request(nllm_conn_t *c, const char *method, json_t *params, uint32_t *msgid,
                      nllm_err_t *err)
{
    uint32_t id = c->next_msgid++;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int prc = nllm_rpc_pack_request(&pk, id, method);
    if (!prc) {
        if (params) {
            prc = msgpack_pack_array(&pk, 1);
            if (!prc)
                prc = nllm_json_pack(&pk, params);
        } else {
            prc = msgpack_pack_array(&pk, 0);
        }
    }
    if (prc) {
        msgpack_sbuffer_destroy(&sb);
        nllm_err_set(err, NLLM_ENOMEM, "out of memory encoding %s", method);
        return NLLM_CALL_LOST;
    }
    int rc = nllm_conn_send(c, sb.data, sb.size, err);
    msgpack_sbuffer_destroy(&sb);
    if (rc == NLLM_CALL_OK && msgid)
        *msgid = id;
    return rc;
}

int nllm_conn_wait(nllm_conn_t *c, uint32_t msgid, json_t **result, char *code_buf,
                   size_t code_cap, nllm_err_t *err)
{
    *result = NULL;
    if (code_cap)
        code_buf[0] = '\0';
    json_t *r;
    for (;;) {
        int rc = drain(c, err);
        if (rc)
            return rc;
        if ((r = take_response(c, msgid)))
            break;
        rc = fill(c, -1, err);
        if (rc)
            return rc;
    }
    const json_t *e = json_object_get(r, "error");
    if (json_is_object(e)) {
        const char *code = json_string_value(json_object_get(e, "code"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        if (code && code_cap)
            snprintf(code_buf, code_cap, "%s", code);
        nllm_err_set(err, NLLM_EINTERNAL, "%s", msg ? msg : code ? code : "request failed");
        json_decref(r);
        return NLLM_CALL_ERROR;
    }
    if (!json_is_null(e)) {
        json_decref(r);
        nllm_err_set(err, NLLM_EPROTO, "nllmd at %s sent a malformed error", c->where);
        return NLLM_CALL_LOST;
    }
    *result = json_incref(json_object_get(r, "result"));
    json_decref(r);
    return NLLM_CALL_OK;
}

int nllm_conn_call(nllm_conn_t *c, const char *method, json_t *params, json_t **result,
                   char *code_buf, size_t code_cap, nllm_err_t *err)
{
    uint32_t id;
    *result = NULL;
    if (code_cap)
        code_buf[0] = '\0';
    int rc = nllm_conn_request(c, method, params, &id, err);
    if (rc)
        return rc;
    return nllm_conn_wait(c, id, result, code_buf, code_cap, err);
}

int nllm_conn_next_note(nllm_conn_t *c, int timeout_ms, json_t **note, nllm_err_t *err)
{
    *note = NULL;
    for (;;) {
        if (c->head) {
            nllm_conn_note_t *n = c->head;
            c->head = n->next;
            if (!c->head)
                c->tail = NULL;
            *note = n->note;
            free(n);
            return NLLM_CALL_OK;
        }
        int d = drain(c, err);
        if (d)
            return d;
        if (c->head)
            continue;
        int rc = fill(c, timeout_ms, err);
        if (rc)
            return rc;
    }
}
