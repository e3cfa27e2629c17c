/* methods.h -- the RPC methods of proto/PROTOCOL.md (methods.c), behind
 * one entry point: nllmd.c gives nllmd_dispatch to nllmd_server_start, and
 * server.c calls it on the loop thread for every decoded message. Above
 * server.c and jobs.c: it answers through the one and acts through the
 * other.
 */
#ifndef NLLM_METHODS_H
#define NLLM_METHODS_H

#include "nllmd.h"
#include "rpc.h"

/* Answers msg on c (at once, or later from the thread pool for generate
 * and verify); before auth only auth is served. An nllmd_dispatch_cb. */
void nllmd_dispatch(nllm_conn_t *c, nllm_rpc_msg_t *msg);

#endif /* NLLM_METHODS_H */
