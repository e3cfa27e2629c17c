/* server.h -- nllmd's RPC listeners and client connections (server.c): the
 * Unix socket and the optional TCP listener, nllm_conn_t, replies and
 * notifications queued on a connection, and its reference count across
 * async replies. Every decoded message goes to the d->dispatch given to
 * nllmd_server_start. Loop thread only. Callers: nllmd.c (start, close),
 * methods.c (replies, watches), jobs.c (notifications).
 */
#ifndef NLLM_SERVER_H
#define NLLM_SERVER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "catalog.h"
#include "nllmd.h"
#include "rpc.h"

#define NLLMD_WRITE_QUEUE_MAX ((size_t)4 << 20) /* bytes pending per connection */
/* An RPC message whose first byte has arrived must arrive in full within
 * this, or the connection is closed (a client idle between messages is
 * never timed out). Tests lower it with NLLMD_MESSAGE_TIMEOUT_MS. */
#define NLLMD_MESSAGE_TIMEOUT_MS 30000
#define NLLMD_MAX_WATCH 16                      /* jobs one connection watches */

struct nllm_conn {
    nllmd_t *d;
    nllm_conn_t *next;
    union {
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;
    int is_tcp;
    int authed;
    int closing;
    int closing_after_reply; /* close once the pending reply is written */
    int refs;                /* async work in flight (generate); freed at 0 */
    int handle_closed;
    uv_shutdown_t shutdown_req;
    nllm_rpc_decoder_t dec;
    uint64_t msg_started;    /* uv_now when the message now buffered in part
                              * began arriving (0: none in part) */
    size_t pending_bytes;
    char watch[NLLMD_MAX_WATCH][NLLM_CATALOG_NAME_MAX + 1];
    int nwatch;
};

/* Listens on d->opt.socket_path (or the socket the service manager passed)
 * and on d->opt.listen when set; each decoded message goes to dispatch.
 * Returns 0 or an NLLM_E* code with err filled. */
int nllmd_server_start(nllmd_t *d, nllmd_dispatch_cb dispatch, nllm_err_t *err);
void nllmd_server_close(nllmd_t *d);
/* Sends notification `method` to every connection that watches job; takes
 * params' reference. */
void nllmd_notify(nllmd_t *d, const char *job, const char *method, json_t *params);
void nllmd_conn_ref(nllm_conn_t *c);
void nllmd_conn_unref(nllm_conn_t *c);
void nllmd_conn_close_after_writes(nllm_conn_t *c);
/* Queues a response (kind NLLM_RPC_RESPONSE: error or payload) or a
 * notification (NLLM_RPC_NOTIFICATION: method, payload) on c. */
void nllmd_conn_send_json(nllm_conn_t *c, int kind, uint32_t msgid, const char *method,
                          const nllm_err_t *error, json_t *payload);

#endif /* NLLM_SERVER_H */
