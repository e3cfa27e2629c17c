/* rpc.h -- msgpack-RPC wire layer shared by the daemon and the client.
 *
 * Owns the byte stream <-> message mapping: a streaming decoder that checks
 * every size/count/depth limit before it allocates, message accessors and
 * encoder helpers. Pure bytes in and out: no I/O, no sockets, no threads.
 * Callers: daemon/ rpc dispatch (one decoder per connection) and client/.
 */
#ifndef NLLM_PROTO_RPC_H
#define NLLM_PROTO_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "../kernels/nllm_err.h"

#define NLLM_PROTOCOL_VERSION 1

/* Limits. A message is one complete top-level msgpack object. */
#define NLLM_RPC_DEFAULT_MAX_MSG ((size_t)1 << 20) /* bytes */
#define NLLM_RPC_MAX_MSG_CEILING ((size_t)1 << 30) /* largest max_msg accepted */
#define NLLM_RPC_MAX_DEPTH 32                      /* containers, root included */
#define NLLM_RPC_DEFAULT_MAX_ITEMS 262144u         /* elements + keys + values */
#define NLLM_RPC_MAX_METHOD 255                    /* bytes in a method name */

/* Stable wire error codes (the "code" of an error map). */
#define NLLM_RPC_CODE_NOT_FOUND "not_found"
#define NLLM_RPC_CODE_BAD_REQUEST "bad_request"
#define NLLM_RPC_CODE_CONFLICT "conflict"
#define NLLM_RPC_CODE_UNAUTHORIZED "unauthorized"
#define NLLM_RPC_CODE_INTERNAL "internal"
#define NLLM_RPC_CODE_NO_SPACE "no_space"
#define NLLM_RPC_CODE_CORRUPT "corrupt"
#define NLLM_RPC_CODE_DEVICE "device"
#define NLLM_RPC_CODE_CANCELED "canceled"
#define NLLM_RPC_CODE_TOO_LARGE "too_large"

/* Message kinds. REQUEST/RESPONSE/NOTIFICATION equal the wire type tags. */
enum {
    NLLM_RPC_NONE = -2,    /* no message (need more bytes, or fatal w/o msgid) */
    NLLM_RPC_INVALID = -1, /* well-framed but not a valid RPC message; has msgid */
    NLLM_RPC_REQUEST = 0,
    NLLM_RPC_RESPONSE = 1,
    NLLM_RPC_NOTIFICATION = 2,
};

typedef struct {
    size_t max_msg;      /* bytes in one message; <= NLLM_RPC_MAX_MSG_CEILING */
    uint32_t max_items;  /* array elements + map keys + map values, per message */
    unsigned max_depth;  /* nested containers incl. the root; 1..NLLM_RPC_MAX_DEPTH */
} nllm_rpc_limits_t;

/* One decoded message. Everything it points to lives in zone; free it with
 * nllm_rpc_msg_free once the reply has been sent.
 *   REQUEST:      msgid, method, params (array)
 *   RESPONSE:     msgid, error (nil or map), result
 *   NOTIFICATION: method, params (array)
 *   INVALID:      msgid, error_code + reason: reply with
 *                 nllm_rpc_pack_response_error(pk, msgid, error_code, reason) */
typedef struct {
    int type;               /* NLLM_RPC_* */
    int has_msgid;          /* 1 for REQUEST, RESPONSE and INVALID */
    uint32_t msgid;
    const char *method;     /* NUL-terminated copy, no embedded NUL; else NULL */
    size_t method_len;
    msgpack_object params;  /* NIL when absent */
    msgpack_object error;
    msgpack_object result;
    const char *error_code; /* INVALID: static NLLM_RPC_CODE_* string */
    char reason[256];       /* INVALID: what was wrong, for the reply */
    msgpack_zone *zone;     /* owns all of the above; NULL when nothing owned */
} nllm_rpc_msg_t;

/* Streaming decoder. Caller-allocated; fields are private. The scan state
 * (scan_*) survives between nllm_rpc_next calls so that a message trickled in
 * byte by byte is scanned once, not once per byte. */
typedef struct {
    nllm_rpc_limits_t lim;
    uint8_t *buf;
    size_t cap, len, off;        /* bytes [off, len) are buffered, unconsumed */
    /* resumable pre-scan of the object starting at buf + off */
    size_t scan_pos;             /* offset of the next header (may pass len) */
    uint64_t scan_pending;       /* objects still owed to finish the root */
    uint64_t scan_items;         /* container items declared so far */
    unsigned scan_depth;         /* open containers on scan_stack */
    int scan_too_deep;           /* nesting limit exceeded; stack abandoned */
    uint32_t scan_stack[NLLM_RPC_MAX_DEPTH];
    /* sticky failure: once set, feed/next keep returning it */
    int fatal;
    char fatal_msg[256];
} nllm_rpc_decoder_t;

#ifdef __cplusplus
extern "C" {
#endif

void nllm_rpc_limits_default(nllm_rpc_limits_t *lim);

/* lim NULL means defaults. Fails with NLLM_EINVAL on out-of-range limits. */
int nllm_rpc_decoder_init(nllm_rpc_decoder_t *dec, const nllm_rpc_limits_t *lim,
                          nllm_err_t *err);
void nllm_rpc_decoder_close(nllm_rpc_decoder_t *dec);

/* Append bytes. Returns 0, NLLM_ENOMEM, or the sticky fatal code. */
int nllm_rpc_feed(nllm_rpc_decoder_t *dec, const void *buf, size_t len);

/* Yield the next complete message.
 *   1  *msg holds a REQUEST, RESPONSE, NOTIFICATION or INVALID message
 *      (INVALID also fills err); free it with nllm_rpc_msg_free.
 *   0  need more bytes; *msg is type NONE and owns nothing.
 *  <0  fatal: drop the connection. err says why. A prefix that already
 *      nests deeper than max_depth is fatal at once, before the rest of
 *      its message arrives (a complete one is INVALID instead). On the call that first
 *      reports it, if the broken message was a request whose msgid could be
 *      read, *msg is INVALID with msgid, error_code (e.g. too_large) and
 *      reason (owning nothing), so a last reply can go out before closing.
 *      Later calls, and nllm_rpc_feed, keep returning the same code.
 * Never allocates more than the buffered message needs, whatever the
 * headers claim. */
int nllm_rpc_next(nllm_rpc_decoder_t *dec, nllm_rpc_msg_t *msg, nllm_err_t *err);

/* Bytes fed but not yet returned as messages. */
size_t nllm_rpc_buffered(const nllm_rpc_decoder_t *dec);

void nllm_rpc_msg_free(nllm_rpc_msg_t *msg);

/* Reading params. nllm methods take one map as params[0] or no params at
 * all; nllm_rpc_params_map points *map at that map (an empty map when there
 * are no params) and fails with NLLM_EINVAL otherwise. */
int nllm_rpc_params_map(const nllm_rpc_msg_t *msg, const msgpack_object **map,
                        nllm_err_t *err);

/* Value under key in a map with string keys (first match), or NULL. */
const msgpack_object *nllm_rpc_map_get(const msgpack_object *map, const char *key);

/* Typed getters: 0 on success or when the key is absent and !required (the
 * output is then left untouched, so preset it to the default); NLLM_EINVAL
 * with a message naming the field on a missing required key or wrong type. */
int nllm_rpc_get_str(const msgpack_object *map, const char *key, const char **s,
                     size_t *len, int required, nllm_err_t *err);
/* Copy into buf as a C string; rejects embedded NUL and len >= cap. */
int nllm_rpc_get_strbuf(const msgpack_object *map, const char *key, char *buf,
                        size_t cap, int required, nllm_err_t *err);
int nllm_rpc_get_int64(const msgpack_object *map, const char *key, int64_t *v,
                       int required, nllm_err_t *err);
/* Accepts float32/float64 and integers. */
int nllm_rpc_get_double(const msgpack_object *map, const char *key, double *v,
                        int required, nllm_err_t *err);
int nllm_rpc_get_bool(const msgpack_object *map, const char *key, int *v,
                      int required, nllm_err_t *err);
int nllm_rpc_get_map(const msgpack_object *map, const char *key,
                     const msgpack_object **v, int required, nllm_err_t *err);
int nllm_rpc_get_array(const msgpack_object *map, const char *key,
                       const msgpack_object **v, int required, nllm_err_t *err);

/* Encoding. All return 0 or NLLM_ENOMEM (the packer's writer failed). */
/* [0, msgid, method, ...]: the caller then packs params (an array). */
int nllm_rpc_pack_request(msgpack_packer *pk, uint32_t msgid, const char *method);
/* [1, msgid, nil, ...]: the caller then packs the result. */
int nllm_rpc_pack_response_ok(msgpack_packer *pk, uint32_t msgid);
/* [1, msgid, {"code": code, "message": message}, nil], complete. */
int nllm_rpc_pack_response_error(msgpack_packer *pk, uint32_t msgid, const char *code,
                                 const char *message);
/* Same, with the wire code and text taken from an nllm_err_t. */
int nllm_rpc_pack_response_err(msgpack_packer *pk, uint32_t msgid, const nllm_err_t *e);
/* [2, method, ...]: the caller then packs params (an array). */
int nllm_rpc_pack_notification_begin(msgpack_packer *pk, const char *method);
int nllm_rpc_pack_str(msgpack_packer *pk, const char *s);
int nllm_rpc_pack_kv_str(msgpack_packer *pk, const char *key, const char *val);
int nllm_rpc_pack_kv_int(msgpack_packer *pk, const char *key, int64_t val);
int nllm_rpc_pack_kv_double(msgpack_packer *pk, const char *key, double val);
int nllm_rpc_pack_kv_bool(msgpack_packer *pk, const char *key, int val);

#ifdef __cplusplus
}
#endif

#endif /* NLLM_PROTO_RPC_H */
