/* nllm_err.h -- error codes and the error record every layer fills.
 *
 * Functions return 0 or a negative code from NLLM_ERRNO_MAP; when they take
 * an nllm_err_t they also leave a human-readable message there that names
 * the thing (job, file, field) and says what to do. Used by kernels/,
 * daemon/ and client/; the RPC layer maps codes to wire codes.
 */
#ifndef NLLM_ERR_H
#define NLLM_ERR_H

#include <stddef.h>

/* X(name, value, wire code, default message) */
#define NLLM_ERRNO_MAP(X)                                                      \
    X(EINVAL, -1, "bad_request", "invalid argument")                           \
    X(ENOENT, -2, "not_found", "not found")                                    \
    X(EIO, -3, "internal", "input/output error")                               \
    X(ENOMEM, -4, "internal", "out of memory")                                 \
    X(ENOSPC, -5, "no_space", "no space left on device")                       \
    X(ECORRUPT, -6, "corrupt", "corrupt or unreadable file")                   \
    X(EMISMATCH, -7, "conflict", "configuration mismatch")                     \
    X(EEXIST, -8, "conflict", "already exists")                                \
    X(EBUSY, -9, "conflict", "busy")                                           \
    X(ESTATE, -10, "conflict", "not allowed in the current state")             \
    X(EDEVICE, -11, "device", "device error")                                  \
    X(EAUTH, -12, "unauthorized", "not authorised")                            \
    X(EPROTO, -13, "bad_request", "protocol error")                            \
    X(ECANCELED, -14, "canceled", "canceled")                                  \
    X(EINTERNAL, -15, "internal", "internal error")

enum {
#define NLLM__ERR_ENUM(name, val, wire, msg) NLLM_##name = (val),
    NLLM_ERRNO_MAP(NLLM__ERR_ENUM)
#undef NLLM__ERR_ENUM
};

#define NLLM_ERR_MSG_MAX 1024

typedef struct {
    int code;                    /* 0 or an NLLM_E* code */
    char msg[NLLM_ERR_MSG_MAX];  /* empty when code == 0 */
} nllm_err_t;

#ifdef __cplusplus
extern "C" {
#endif

/* Record code and a printf-style message in e (e may be NULL); returns code. */
int nllm_err_set(nllm_err_t *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix the message already in e with more context ("job x: " ...). */
int nllm_err_prefix(nllm_err_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void nllm_err_clear(nllm_err_t *e);
const char *nllm_err_name(int code);      /* "EINVAL" */
const char *nllm_err_wire_code(int code); /* "bad_request" */
const char *nllm_err_default_msg(int code);

#ifdef __cplusplus
}
#endif

#endif /* NLLM_ERR_H */
