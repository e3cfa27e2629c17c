/* fuzz_rpc.c -- libFuzzer target: hostile bytes on nllmd's RPC socket.
 *
 * The input (byte 0: options, byte 1: seed of the read splits, the rest:
 * the stream) goes through the daemon's real path: nllmd_server_start's
 * listener on a Unix socket (or the token-protected TCP one), server.c's
 * on_read, the proto/ decoder, nllmd_dispatch with methods.c, jobs.c and an
 * SQLite catalog in /dev/shm -- on a loop driven by uv_run between reads,
 * each read one chunk of the split. The daemon has no devices, so a started
 * job stays queued and no training thread ever runs. After each input the
 * connection is closed and every job removed, so inputs do not depend on
 * each other. The same chunks also go through a second decoder here, and
 * every typed params getter runs on every key of every request. What the
 * daemon sends back must decode as nllmctl decodes it, into responses to
 * msgids it was sent and notifications, and every request must get
 * exactly one response (at most one once a protocol error or a failed
 * auth has closed the connection).
 * Built by tests/fuzz/run.sh.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define FUZZ_NAME "fuzz_rpc"
#include "fuzz_daemon.h" /* D, state_dir, diag, die() */

static int tcp_port;

/* The daemon's on_async without the shutdown: the shutdown method may be
 * called, but the fuzzed daemon goes on. */
static void on_async(uv_async_t *h)
{
    nllmd_t *d = h->data;
    nllmd_events_drain(d);
    d->shutdown_requested = 0;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    nllm_err_t err;
    int fd2 = dup(2);
    diag = fd2 >= 0 ? fdopen(fd2, "w") : NULL;
    if (diag)
        setvbuf(diag, NULL, _IONBF, 0);
    else
        diag = stderr;
    signal(SIGPIPE, SIG_IGN);
    fuzz_daemon_init("rpc");
    nllmd_t *d = &D;
    snprintf(d->opt.socket_path, sizeof d->opt.socket_path, "%s/nllmd.sock", state_dir);
    snprintf(d->opt.token_file, sizeof d->opt.token_file, "%s/token", state_dir);
    tcp_port = free_port();
    if (tcp_port)
        snprintf(d->opt.listen, sizeof d->opt.listen, "127.0.0.1:%d", tcp_port);
    FILE *t = fopen(d->opt.token_file, "w");
    if (!t)
        die("token file", NULL);
    fputs("fuzz-token-0123456789abcdef\n", t);
    fclose(t);
    d->ndevices = 0; /* no device: jobs queue, never train */
    uv_async_init(d->loop, &d->async, on_async);
    d->async.data = d;
    uv_unref((uv_handle_t *)&d->async);
    if (nllmd_jobs_load(d, &err) < 0)
        die("jobs", &err);
    if (nllmd_server_start(d, nllmd_dispatch, &err) < 0)
        die("listen", &err);
    return 0;
}

/* ---- the getters on every key ------------------------------------------- */

static void poke_map(const msgpack_object *m, int depth)
{
    nllm_err_t err;
    if (!m || m->type != MSGPACK_OBJECT_MAP || depth > 3)
        return;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        char key[300];
        size_t kl = k->via.str.size < sizeof key - 1 ? k->via.str.size : sizeof key - 1;
        memcpy(key, k->via.str.ptr, kl);
        key[kl] = '\0'; /* a key with a NUL byte is asked for by its prefix */
        const char *s = NULL;
        size_t sl = 0;
        char buf[65];
        int64_t i64 = 0;
        double dv = 0;
        int b = 0;
        const msgpack_object *o = NULL;
        if (nllm_rpc_get_str(m, key, &s, &sl, 1, &err) == 0 && s) {
            volatile char sink = 0;
            for (size_t q = 0; q < sl; q++)
                sink ^= s[q];
            (void)sink;
        }
        nllm_rpc_get_strbuf(m, key, buf, sizeof buf, 1, &err);
        nllm_rpc_get_strbuf(m, key, buf, 1, 0, &err);
        nllm_rpc_get_int64(m, key, &i64, 1, &err);
        nllm_rpc_get_double(m, key, &dv, 1, &err);
        nllm_rpc_get_bool(m, key, &b, 0, &err);
        if (nllm_rpc_get_map(m, key, &o, 1, &err) == 0)
            poke_map(o, depth + 1);
        nllm_rpc_get_array(m, key, &o, 0, NULL);
        (void)nllm_rpc_map_get(m, key);
    }
    /* a key that is not there, required and optional */
    int64_t v = 7;
    nllm_rpc_get_int64(m, "\x01missing", &v, 1, &err);
    nllm_rpc_get_int64(m, "\x01missing", &v, 0, &err);
}

/* msgids the daemon may answer: those of requests and of invalid messages */
static uint32_t sent_ids[4096];
static size_t nsent;
static int side_fatal; /* the stream breaks the protocol: the daemon closes */
static int nmsgs_side, first_not_auth; /* before auth on TCP, anything but auth closes */

static void note_id(const nllm_rpc_msg_t *m)
{
    if (m->has_msgid && nsent < sizeof sent_ids / sizeof sent_ids[0])
        sent_ids[nsent++] = m->msgid;
}

static void decode_side(const uint8_t *p, const size_t *cut, size_t ncut, size_t max_msg)
{
    nllm_rpc_decoder_t dec;
    nllm_rpc_limits_t lim;
    nllm_err_t err;
    nllm_rpc_limits_default(&lim);
    lim.max_msg = max_msg;
    if (nllm_rpc_decoder_init(&dec, &lim, &err) < 0)
        die("decoder_init", &err);
    size_t off = 0;
    for (size_t c = 0; c < ncut; c++) {
        if (nllm_rpc_feed(&dec, p + off, cut[c]) < 0)
            break;
        off += cut[c];
        for (;;) {
            nllm_rpc_msg_t msg;
            int rc = nllm_rpc_next(&dec, &msg, &err);
            if (rc != 0 && msg.type != NLLM_RPC_RESPONSE)
                note_id(&msg);
            if (rc != 0 && nmsgs_side++ == 0)
                first_not_auth = !(rc > 0 && msg.type == NLLM_RPC_REQUEST && msg.method &&
                                   strcmp(msg.method, "auth") == 0);
            if (rc <= 0) {
                side_fatal |= rc < 0;
                nllm_rpc_msg_free(&msg);
                break;
            }
            if (msg.type == NLLM_RPC_REQUEST || msg.type == NLLM_RPC_NOTIFICATION) {
                if (!msg.method || strlen(msg.method) != msg.method_len)
                    die("a method name is not NUL-terminated or holds a NUL", NULL);
                const msgpack_object *map;
                if (nllm_rpc_params_map(&msg, &map, &err) == 0)
                    poke_map(map, 0);
            }
            nllm_rpc_msg_free(&msg);
        }
    }
    nllm_rpc_decoder_close(&dec);
}

/* ---- one input ---------------------------------------------------------- */

/* Everything the daemon sends must decode, as nllmctl decodes it, into
 * responses to msgids it was sent, or notifications. */
static nllm_rpc_decoder_t replies;
static size_t nreplies, nresponses;
static int saw_unauthorized; /* a failed auth: the daemon closes after it */

/* connect(), finished when a signal (libFuzzer's timer) interrupts it */
static int connect_fully(int fd, const struct sockaddr *sa, socklen_t len)
{
    if (connect(fd, sa, len) == 0)
        return 0;
    if (errno != EINTR && errno != EINPROGRESS)
        return -1;
    struct pollfd pf = {.fd = fd, .events = POLLOUT};
    int e = 0;
    socklen_t el = sizeof e;
    while (poll(&pf, 1, 5000) < 0)
        if (errno != EINTR)
            return -1;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0 || e) {
        errno = e ? e : errno;
        return -1;
    }
    return 0;
}

static void drain(int fd)
{
    char buf[65536];
    ssize_t n;
    nllm_err_t err;
    while ((n = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
        if (nllm_rpc_feed(&replies, buf, (size_t)n) < 0)
            die("the daemon's replies do not decode", NULL);
        nllm_rpc_msg_t m;
        int rc;
        while ((rc = nllm_rpc_next(&replies, &m, &err)) > 0) {
            int known = m.type == NLLM_RPC_NOTIFICATION;
            for (size_t i = 0; !known && m.type == NLLM_RPC_RESPONSE && i < nsent; i++)
                known = sent_ids[i] == m.msgid;
            if (!known && nsent < sizeof sent_ids / sizeof sent_ids[0]) {
                fprintf(diag, "fuzz_rpc: the daemon sent a message of type %d (msgid %u) "
                                "that answers nothing sent\n", m.type, m.msgid);
                abort();
            }
            nreplies++;
            nresponses += m.type == NLLM_RPC_RESPONSE;
            const msgpack_object *code = nllm_rpc_map_get(&m.error, "code");
            saw_unauthorized |= code && code->type == MSGPACK_OBJECT_STR &&
                                code->via.str.size == strlen(NLLM_RPC_CODE_UNAUTHORIZED) &&
                                !memcmp(code->via.str.ptr, NLLM_RPC_CODE_UNAUTHORIZED,
                                        code->via.str.size);
            nllm_rpc_msg_free(&m);
        }
        if (rc < 0)
            die("the daemon's replies do not decode", &err);
    }
}

static void reset_jobs(nllmd_t *d)
{
    nllm_err_t err;
    int n;
    while (d->jobs) {
        nllm_job_t *j = d->jobs;
        if (!strcmp(j->state, "queued"))
            nllmd_job_stop(j, &err);
        if (nllmd_job_remove(j, 1, &n, &err) < 0) {
            fprintf(diag, "fuzz_rpc: cannot remove job %s (%s): %s\n", j->name, j->state,
                    err.msg);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nllmd_t *d = &D;
    if (size < 2 || size > (1 << 20))
        return 0;
    uint8_t opts = data[0];
    uint32_t rng = data[1] * 2654435761u + 1;
    const uint8_t *p = data + 2;
    size_t len = size - 2;
    int use_tcp = (opts & 1) && tcp_port;
    /* bit 2: a small --max-message (64..544 bytes), to reach the too_large paths */
    d->opt.max_message = (opts & 4) ? 64 + (size_t)(opts >> 3) * 16 : 0;
    /* reads of 1..64 bytes, or all at once */
    size_t cut[4096], ncut = 0;
    for (size_t off = 0; off < len && ncut < sizeof cut / sizeof cut[0];) {
        rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
        size_t n = (opts & 2) ? len - off : 1 + rng % 64;
        if (n > len - off || ncut == sizeof cut / sizeof cut[0] - 1)
            n = len - off;
        cut[ncut++] = n;
        off += n;
    }
    nsent = nreplies = nresponses = 0;
    side_fatal = saw_unauthorized = nmsgs_side = first_not_auth = 0;
    decode_side(p, cut, ncut, d->opt.max_message ? d->opt.max_message : NLLM_RPC_DEFAULT_MAX_MSG);
    nllm_rpc_limits_t rlim;
    nllm_err_t rerr;
    nllm_rpc_limits_default(&rlim);
    rlim.max_msg = (size_t)256 << 20; /* nllmctl's limit (client/conn.c) */
    if (nllm_rpc_decoder_init(&replies, &rlim, &rerr) < 0)
        die("decoder_init", &rerr);

    int fd;
    if (use_tcp) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        /* a new 127.x.y.z source each time: the TIME_WAIT sockets that a
         * million connections leave would use up the ports of one address */
        static uint32_t seq;
        struct sockaddr_in src = {.sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl(0x7f000002u + seq++ % 0xfff000u)};
        if (fd >= 0)
            bind(fd, (struct sockaddr *)&src, sizeof src);
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)tcp_port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (fd < 0 || connect_fully(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            die("connect tcp", NULL);
        int one = 1; /* each chunk goes out as it is sent */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    } else {
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", d->opt.socket_path);
        if (fd < 0 || connect_fully(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            die("connect unix", NULL);
    }
    int before = d->nconns;
    for (int spin = 0; d->nconns == before && spin < 1000; spin++)
        uv_run(d->loop, UV_RUN_NOWAIT);
    if (d->nconns == before)
        die("the daemon did not accept the connection", NULL);

    size_t off = 0;
    for (size_t c = 0; c < ncut && d->conns; c++) {
        ssize_t w;
        while ((w = send(fd, p + off, cut[c], MSG_NOSIGNAL)) < 0 && errno == EINTR)
            ;
        off += cut[c];
        uv_run(d->loop, UV_RUN_NOWAIT);
        drain(fd);
        if (w < 0)
            break; /* the daemon closed it */
    }
    /* answers that come later (verify, generate run on the thread pool):
     * wait for them while the connection lives, since the daemon drops
     * what is in flight when the peer half-closes */
    for (int idle = 0; d->nconns > before && nresponses < nsent &&
                       nsent < sizeof sent_ids / sizeof sent_ids[0];) {
        uv_run(d->loop, UV_RUN_NOWAIT);
        drain(fd);
        /* replies may still be on their way to fd (TCP): wait on both sides */
        struct pollfd pf[2] = {{.fd = fd, .events = POLLIN},
                               {.fd = uv_backend_fd(d->loop), .events = POLLIN}};
        int t = uv_backend_timeout(d->loop); /* 0: callbacks are pending */
        if (poll(pf, 2, t >= 0 && t < 1000 ? t : 1000) == 0 && t != 0 && ++idle == 10) {
            fprintf(diag, "fuzz_rpc: %zu requests, %zu answered, nothing for 10 s\n", nsent,
                    nresponses);
            abort();
        }
    }
    shutdown(fd, SHUT_WR);
    /* until the daemon has closed and freed the connection (async work,
     * e.g. verify, answered first) */
    while (d->nconns > 0) {
        uv_run(d->loop, UV_RUN_ONCE);
        drain(fd);
    }
    /* the daemon's side is closed: read what is still in flight, up to EOF */
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int pr;
    while ((pr = poll(&pf, 1, 5000)) > 0 || (pr < 0 && errno == EINTR)) {
        if (pr < 0)
            continue;
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
        if (n <= 0)
            break;
        drain(fd);
    }
    close(fd);
    nllm_rpc_decoder_close(&replies);
    if (getenv("FUZZ_RPC_VERBOSE"))
        fprintf(diag, "fuzz_rpc: %zu msgids sent, %zu replies\n", nsent, nreplies);
    /* every request is answered at most once, and exactly once unless a
     * protocol error or a failed auth closed the connection, or (TCP, before
     * auth) a first message that is not an auth request: the daemon closes
     * then, answering at most "authenticate first" (PROTOCOL.md) */
    if (nsent < sizeof sent_ids / sizeof sent_ids[0] &&
        (nresponses > nsent || (nresponses < nsent && !side_fatal && !saw_unauthorized &&
                                !(use_tcp && first_not_auth)))) {
        fprintf(diag, "fuzz_rpc: %zu requests with a msgid, %zu responses\n", nsent,
                nresponses);
        abort();
    }
    reset_jobs(d);
    return 0;
}
