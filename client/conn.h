/* conn.h -- nllmctl's connection to nllmd: a blocking Unix or TCP socket,
 * or a socketpair to an ssh process's stdin and stdout (ssh://; the remote
 * side runs `nllmctl proxy`), one proto/rpc.h decoder, and a call helper
 * that waits for its response while queueing the notifications that arrive
 * meanwhile (watch reads them later). Values cross this layer as jansson
 * JSON (msgpack <-> JSON here). Callers: client/nllmctl.c and
 * client/watch.c. No global state.
 */
#ifndef NLLM_CLIENT_CONN_H
#define NLLM_CLIENT_CONN_H

#include <jansson.h>
#include <signal.h>
#include <stdint.h>

#include <msgpack.h>

#include "rpc.h"

/* What a call or read ended with (also nllmctl's exit codes where equal). */
enum {
    NLLM_CALL_OK = 0,
    NLLM_CALL_ERROR = 1,       /* the daemon answered with an error map */
    NLLM_CALL_CONNECT = 3,     /* could not connect (message in err) */
    NLLM_CALL_LOST = 4,        /* connection closed, protocol error, I/O error */
    NLLM_CALL_INTERRUPTED = 5, /* *interrupt was set while waiting */
    NLLM_CALL_TIMEOUT = 6,     /* nothing arrived within the timeout */
};

typedef struct nllm_conn_note {
    json_t *note; /* {"method": str, "params": value} */
    struct nllm_conn_note *next;
} nllm_conn_note_t;

typedef struct {
    int fd;
    char where[512];           /* "/run/nllm/nllmd.sock", "host:port" or "ssh://u@h:p" */
    int ssh_pid;               /* ssh transport: the ssh process (else 0) */
    int ssh_errfd;             /* ssh transport: unlinked file holding ssh's stderr */
    int got_bytes;             /* anything read yet (for the ssh error's wording) */
    uint32_t next_msgid;
    nllm_rpc_decoder_t dec;
    nllm_conn_note_t *head, *tail;   /* notifications not yet read */
    nllm_conn_note_t *rhead, *rtail; /* responses not yet waited for */
    volatile sig_atomic_t *interrupt; /* optional: non-zero stops waits */
} nllm_conn_t;

/* Connect; on failure fill err with the address tried and the errno text.
 * Both return NLLM_CALL_OK or NLLM_CALL_CONNECT. */
int nllm_conn_open_unix(nllm_conn_t *c, const char *path, nllm_err_t *err);
int nllm_conn_open_tcp(nllm_conn_t *c, const char *hostport, nllm_err_t *err);
/* Run argv (argv[0] is looked up in PATH: ssh and its arguments, ending in
 * the remote `nllmctl proxy`) with its stdin and stdout connected to c and
 * its stderr kept for messages; where names the host ("ssh://user@box").
 * The ssh process is reaped by nllm_conn_close. Whether the far end is
 * reachable shows on the first read: a lost connection then reports
 * "cannot reach nllmd on WHERE: ssh exited N: <ssh's last stderr line>". */
int nllm_conn_open_cmd(nllm_conn_t *c, char *const argv[], const char *where,
                       nllm_err_t *err);
void nllm_conn_close(nllm_conn_t *c);

/* Send [0, id, method, [params]] (params NULL: an empty params array; else
 * a JSON object, not consumed) without waiting; *msgid gets the id. Several
 * requests may be in flight: responses are kept until waited for. */
int nllm_conn_request(nllm_conn_t *c, const char *method, json_t *params, uint32_t *msgid,
                      nllm_err_t *err);
/* Wait for the response to msgid. OK: *result owns the result (json null
 * for nil). ERROR: code_buf holds the wire code, err->msg the daemon's
 * message. Notifications that arrive meanwhile are queued. */
int nllm_conn_wait(nllm_conn_t *c, uint32_t msgid, json_t **result, char *code_buf,
                   size_t code_cap, nllm_err_t *err);
/* request + wait. */
int nllm_conn_call(nllm_conn_t *c, const char *method, json_t *params, json_t **result,
                   char *code_buf, size_t code_cap, nllm_err_t *err);

/* Next queued or arriving notification, waiting up to timeout_ms (-1:
 * forever). OK: *note owns {"method", "params"}. */
int nllm_conn_next_note(nllm_conn_t *c, int timeout_ms, json_t **note, nllm_err_t *err);

/* Send raw bytes. */
int nllm_conn_send(nllm_conn_t *c, const void *buf, size_t len, nllm_err_t *err);

/* msgpack <-> JSON. Binary becomes a hex string, non-finite floats null,
 * non-string map keys their JSON text, invalid UTF-8 is replaced by U+FFFD. */
json_t *nllm_mp_to_json(const msgpack_object *o);
int nllm_json_pack(msgpack_packer *pk, const json_t *j);

#endif /* NLLM_CLIENT_CONN_H */
