/* nllm_err.c -- formatting of nllm_err_t records; see nllm_err.h. */
#include "nllm_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int nllm_err_set(nllm_err_t *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        e->code = code;
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int nllm_err_prefix(nllm_err_t *e, const char *fmt, ...)
{
    if (!e)
        return 0;
    char pre[NLLM_ERR_MSG_MAX], old[NLLM_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    size_t np = strnlen(pre, sizeof pre - 1);
    memcpy(e->msg, pre, np);
    size_t room = sizeof e->msg - 1 - np;
    size_t no = strnlen(old, room);
    memcpy(e->msg + np, old, no);
    e->msg[np + no] = '\0';
    return e->code;
}

void nllm_err_clear(nllm_err_t *e)
{
    if (e) {
        e->code = 0;
        e->msg[0] = '\0';
    }
}

const char *nllm_err_name(int code)
{
    switch (code) {
    case 0:
        return "OK";
#define NLLM__ERR_NAME(name, val, wire, msg) \
    case (val):                              \
        return #name;
        NLLM_ERRNO_MAP(NLLM__ERR_NAME)
#undef NLLM__ERR_NAME
    }
    return "EUNKNOWN";
}

const char *nllm_err_wire_code(int code)
{
    switch (code) {
#define NLLM__ERR_WIRE(name, val, wire, msg) \
    case (val):                              \
        return wire;
        NLLM_ERRNO_MAP(NLLM__ERR_WIRE)
#undef NLLM__ERR_WIRE
    }
    return "internal";
}

const char *nllm_err_default_msg(int code)
{
    switch (code) {
    case 0:
        return "ok";
#define NLLM__ERR_MSG(name, val, wire, msg) \
    case (val):                             \
        return msg;
        NLLM_ERRNO_MAP(NLLM__ERR_MSG)
#undef NLLM__ERR_MSG
    }
    return "unknown error";
}
