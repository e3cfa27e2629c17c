/* rpc.c -- msgpack-RPC framing: pre-scan, decode, validate, encode.
 *
 * Invariant: nothing is allocated for a message until the pre-scanner has
 * proved that one complete object within every limit is buffered; only then
 * is that exact span decoded, into one msgpack_zone owned by the message
 * (O(span) bytes). Called by daemon/ rpc dispatch and client/ (see rpc.h).
 */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * The pre-scanner.
 *
 * It walks object headers and never looks inside str/bin/ext bodies. Its
 * whole state is (pos, pending, stack): pos is the offset of the next header
 * in the buffered message, pending the number of objects still owed before
 * the root is complete, stack the items left in each open container (only
 * needed to measure depth). Each header costs O(1) and the state persists
 * across nllm_rpc_next calls, so a trickled message is scanned once.
 *
 *  first byte   wire type            header  then              owes
 *  0x00..0x7f   positive fixint      1       -                 -
 *  0x80..0x8f   fixmap   N=b&0x0f    1       -                 2N objects
 *  0x90..0x9f   fixarray N=b&0x0f    1       -                 N objects
 *  0xa0..0xbf   fixstr   L=b&0x1f    1       L bytes           -
 *  0xc0         nil                  1
 *  0xc1         (never used)         -> BAD, fatal
 *  0xc2, 0xc3   false, true          1
 *  0xc4..0xc6   bin 8/16/32          2/3/5   L bytes
 *  0xc7..0xc9   ext 8/16/32          3/4/6   L bytes  (len, then type byte)
 *  0xca, 0xcb   float 32/64          5/9
 *  0xcc..0xcf   uint 8/16/32/64      2/3/5/9
 *  0xd0..0xd3   int 8/16/32/64       2/3/5/9
 *  0xd4..0xd8   fixext 1/2/4/8/16    2       1/2/4/8/16 bytes
 *  0xd9..0xdb   str 8/16/32          2/3/5   L bytes
 *  0xdc, 0xdd   array 16/32          3/5     -                 N objects
 *  0xde, 0xdf   map 16/32            3/5     -                 2N objects
 *  0xe0..0xff   negative fixint      1
 *
 * A request, and where the scanner stands after each header:
 *
 *   94 | 00 | cd 01 2c | a6 's' 't' 'a' 't' 'u' 's' | 91 | 80
 *   |    |    |          |                            |    `- fixmap(0)    pending 0
 *   |    |    |          |                            `- fixarray(1)      pending 1
 *   |    |    |          `- fixstr(6): pos skips the body, even unbuffered
 *   |    |    `- uint16 msgid 300                                     pending 2
 *   |    `- fixint type 0 (request)                                   pending 3
 *   `- fixarray(4), root, depth 1                                     pending 4
 *
 *            +----------------------------------------------------+
 *            v                                                    |
 *   +-> [HEADER at pos] -- first byte 0xc1 --------------> BAD (fatal)
 *   |        | pos + header + (pending-1) > max_msg -----> TOO_LARGE (fatal)
 *   |        | header bytes not all buffered ------------> MORE (resume here)
 *   |        | pos + header + body + (pending-1) + items
 *   |        |   > max_msg, or items so far > max_items --> TOO_LARGE (fatal)
 *   |        | container at depth > max_depth: too_deep, keep counting
 *   |        v
 *   |   pos += header + body; pending += items - 1 -------+  (every owed
 *   |        | pending > 0                                |   object needs
 *   +--------+                                            |   >= 1 byte)
 *            pending == 0 <-------------------------------+
 *            | pos > buffered --> MORE (a body is still in flight)
 *            v
 *          DONE: the object is bytes [0, pos); too_deep -> INVALID/fatal
 *
 * MORE with too_deep set is fatal at once: a prefix that already nests
 * too deep is refused without waiting for the rest of its message (a
 * complete one, buffered in full, is answered INVALID and the stream
 * stays in sync).
 *
 * Every claim is bounded by max_msg before anything is allocated, so
 * `dd ff ff ff ff` (array32 of 4 billion) fails after 5 bytes, allocating
 * nothing.
 * ------------------------------------------------------------------------ */

enum { SCAN_MORE, SCAN_DONE, SCAN_BAD, SCAN_TOO_LARGE };

static uint64_t be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Header layout of a first byte. */
typedef struct {
    size_t hdr;      /* header bytes, type byte included */
    size_t lenbytes; /* size of the big-endian length/count after the type byte */
    size_t body;     /* fixed body bytes (when lenbytes == 0) */
    int bad;         /* 0xc1 */
    int container;   /* 0, 1 array, 2 map */
    uint64_t n;      /* count of a fix container or length of a fixstr */
} hdr_t;

static hdr_t classify(uint8_t b)
{
    hdr_t h = {1, 0, 0, 0, 0, 0};
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return h;
    if (b <= 0x8f) {
        h.container = 2;
        h.n = b & 0x0f;
    } else if (b <= 0x9f) {
        h.container = 1;
        h.n = b & 0x0f;
    } else if (b <= 0xbf) {
        h.body = b & 0x1f;
    } else {
        switch (b) {
        case 0xc1:
            h.bad = 1;
            break;
        case 0xc4: case 0xc5: case 0xc6: /* bin */
        case 0xd9: case 0xda: case 0xdb: /* str */
            h.lenbytes = (b == 0xc4 || b == 0xd9) ? 1 : (b == 0xc5 || b == 0xda) ? 2 : 4;
            h.hdr = 1 + h.lenbytes;
            break;
        case 0xc7: case 0xc8: case 0xc9: /* ext: len, then type byte */
            h.lenbytes = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
            h.hdr = 2 + h.lenbytes;
            break;
        case 0xca: h.hdr = 5; break;
        case 0xcb: h.hdr = 9; break;
        case 0xcc: case 0xd0: h.hdr = 2; break;
        case 0xcd: case 0xd1: h.hdr = 3; break;
        case 0xce: case 0xd2: h.hdr = 5; break;
        case 0xcf: case 0xd3: h.hdr = 9; break;
        case 0xd4: h.hdr = 2; h.body = 1; break;
        case 0xd5: h.hdr = 2; h.body = 2; break;
        case 0xd6: h.hdr = 2; h.body = 4; break;
        case 0xd7: h.hdr = 2; h.body = 8; break;
        case 0xd8: h.hdr = 2; h.body = 16; break;
        case 0xdc: h.hdr = 3; h.lenbytes = 2; h.container = 1; break;
        case 0xdd: h.hdr = 5; h.lenbytes = 4; h.container = 1; break;
        case 0xde: h.hdr = 3; h.lenbytes = 2; h.container = 2; break;
        case 0xdf: h.hdr = 5; h.lenbytes = 4; h.container = 2; break;
        }
    }
    return h;
}

static void scan_reset(nllm_rpc_decoder_t *d)
{
    d->scan_pos = 0;
    d->scan_pending = 1;
    d->scan_items = 0;
    d->scan_depth = 0;
    d->scan_too_deep = 0;
}

/* Advance the scan over p[0, avail). On SCAN_BAD, *where is the offset. */
static int scan(nllm_rpc_decoder_t *d, const uint8_t *p, size_t avail, size_t *where)
{
    const uint64_t max = d->lim.max_msg;
    while (d->scan_pending > 0) {
        size_t pos = d->scan_pos;
        if (pos >= avail)
            return SCAN_MORE;
        hdr_t h = classify(p[pos]);
        if (h.bad) {
            *where = pos;
            return SCAN_BAD;
        }
        if ((uint64_t)pos + h.hdr + (d->scan_pending - 1) > max)
            return SCAN_TOO_LARGE;
        if (pos + h.hdr > avail)
            return SCAN_MORE;
        uint64_t n = h.lenbytes ? be(p + pos + 1, h.lenbytes) : h.n;
        uint64_t body = h.container ? 0 : (h.lenbytes ? n : h.body);
        uint64_t items = h.container == 2 ? 2 * n : h.container == 1 ? n : 0;
        /* pos <= 2^30, body < 2^32, items < 2^33, pending <= 2^30: no overflow */
        if ((uint64_t)pos + h.hdr + body + (d->scan_pending - 1) + items > max)
            return SCAN_TOO_LARGE;
        if (h.container) {
            d->scan_items += items;
            if (d->scan_items > d->lim.max_items)
                return SCAN_TOO_LARGE;
        }
        if (!d->scan_too_deep) {
            if (d->scan_depth > 0)
                d->scan_stack[d->scan_depth - 1]--;
            if (h.container) {
                if (d->scan_depth + 1 > d->lim.max_depth)
                    d->scan_too_deep = 1;
                else if (items > 0)
                    d->scan_stack[d->scan_depth++] = (uint32_t)items;
            }
            while (d->scan_depth > 0 && d->scan_stack[d->scan_depth - 1] == 0)
                d->scan_depth--;
        }
        d->scan_pending = d->scan_pending - 1 + items;
        d->scan_pos = pos + h.hdr + (size_t)body;
    }
    return d->scan_pos > avail ? SCAN_MORE : SCAN_DONE;
}

/* ------------------------------------------------------------------------
 * Decoding a span the scanner accepted, into msgpack_object in a zone.
 * Recursion is bounded by max_depth; every read is still bounds-checked.
 * ------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *p; /* the span, copied into the zone */
    size_t len, pos;
    msgpack_zone *z;
} rd_t;

static int rd_take(rd_t *r, size_t n, const uint8_t **out)
{
    if (n > r->len - r->pos)
        return NLLM_EINTERNAL;
    *out = r->p + r->pos;
    r->pos += n;
    return 0;
}

static void set_int(msgpack_object *o, int64_t v)
{
    if (v >= 0) {
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = (uint64_t)v;
    } else {
        o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = v;
    }
}

static int decode_obj(rd_t *r, msgpack_object *o, unsigned depth)
{
    const uint8_t *q;
    int rc = rd_take(r, 1, &q);
    if (rc)
        return rc;
    uint8_t b = q[0];
    hdr_t h = classify(b);
    if (h.bad)
        return NLLM_EINTERNAL;
    const uint8_t *hp = NULL;
    if (h.hdr > 1 && (rc = rd_take(r, h.hdr - 1, &hp)))
        return rc;
    uint64_t n = h.lenbytes ? be(hp, h.lenbytes) : h.n;
    memset(o, 0, sizeof *o);

    if (h.container) {
        if (depth >= NLLM_RPC_MAX_DEPTH || n > r->len - r->pos)
            return NLLM_EINTERNAL; /* the scanner let through what it must not */
        if (h.container == 1) {
            o->type = MSGPACK_OBJECT_ARRAY;
            o->via.array.size = (uint32_t)n;
            if (n == 0)
                return 0;
            o->via.array.ptr = msgpack_zone_malloc(r->z, (size_t)n * sizeof(msgpack_object));
            if (!o->via.array.ptr)
                return NLLM_ENOMEM;
            for (uint64_t i = 0; i < n; i++)
                if ((rc = decode_obj(r, &o->via.array.ptr[i], depth + 1)))
                    return rc;
        } else {
            o->type = MSGPACK_OBJECT_MAP;
            o->via.map.size = (uint32_t)n;
            if (n == 0)
                return 0;
            o->via.map.ptr = msgpack_zone_malloc(r->z, (size_t)n * sizeof(msgpack_object_kv));
            if (!o->via.map.ptr)
                return NLLM_ENOMEM;
            for (uint64_t i = 0; i < n; i++) {
                if ((rc = decode_obj(r, &o->via.map.ptr[i].key, depth + 1)) ||
                    (rc = decode_obj(r, &o->via.map.ptr[i].val, depth + 1)))
                    return rc;
            }
        }
        return 0;
    }

    if (b <= 0x7f) {
        set_int(o, b);
    } else if (b >= 0xe0) {
        set_int(o, (int8_t)b);
    } else if (b >= 0xa0 && b <= 0xbf) {
        if ((rc = rd_take(r, h.body, &q)))
            return rc;
        o->type = MSGPACK_OBJECT_STR;
        o->via.str.size = (uint32_t)h.body;
        o->via.str.ptr = (const char *)q;
    } else {
        switch (b) {
        case 0xc0:
            o->type = MSGPACK_OBJECT_NIL;
            break;
        case 0xc2: case 0xc3:
            o->type = MSGPACK_OBJECT_BOOLEAN;
            o->via.boolean = b == 0xc3;
            break;
        case 0xc4: case 0xc5: case 0xc6:
        case 0xd9: case 0xda: case 0xdb:
            if ((rc = rd_take(r, (size_t)n, &q)))
                return rc;
            if (b <= 0xc6) {
                o->type = MSGPACK_OBJECT_BIN;
                o->via.bin.size = (uint32_t)n;
                o->via.bin.ptr = (const char *)q;
            } else {
                o->type = MSGPACK_OBJECT_STR;
                o->via.str.size = (uint32_t)n;
                o->via.str.ptr = (const char *)q;
            }
            break;
        case 0xc7: case 0xc8: case 0xc9:
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
            size_t len = b >= 0xd4 ? h.body : (size_t)n;
            int8_t t = (int8_t)hp[h.hdr - 2]; /* type byte ends the header */
            if ((rc = rd_take(r, len, &q)))
                return rc;
            o->type = MSGPACK_OBJECT_EXT;
            o->via.ext.type = t;
            o->via.ext.size = (uint32_t)len;
            o->via.ext.ptr = (const char *)q;
            break;
        }
        case 0xca: {
            uint32_t u = (uint32_t)be(hp, 4);
            float f;
            memcpy(&f, &u, sizeof f);
            o->type = MSGPACK_OBJECT_FLOAT32;
            o->via.f64 = f;
            break;
        }
        case 0xcb: {
            uint64_t u = be(hp, 8);
            double f;
            memcpy(&f, &u, sizeof f);
            o->type = MSGPACK_OBJECT_FLOAT64;
            o->via.f64 = f;
            break;
        }
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->via.u64 = be(hp, h.hdr - 1);
            break;
        case 0xd0: set_int(o, (int8_t)be(hp, 1)); break;
        case 0xd1: set_int(o, (int16_t)be(hp, 2)); break;
        case 0xd2: set_int(o, (int32_t)be(hp, 4)); break;
        case 0xd3: set_int(o, (int64_t)be(hp, 8)); break;
        default:
            return NLLM_EINTERNAL;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Reading a msgid from a prefix, for a last reply to a request whose
 * remainder is too large or malformed. Rules shared with msgid_of():
 * [tag, id, ...] with tag 0 or an unknown tag (>= 3), id an integer that
 * fits in uint32.
 * ------------------------------------------------------------------------ */

static int prefix_int(const uint8_t *p, size_t avail, size_t *pos, uint64_t *v)
{
    if (*pos >= avail)
        return 0;
    uint8_t b = p[*pos];
    size_t n;
    int sign;
    if (b <= 0x7f) {
        *v = b;
        *pos += 1;
        return 1;
    }
    if (b >= 0xcc && b <= 0xcf) {
        n = (size_t)1 << (b - 0xcc);
        sign = 0;
    } else if (b >= 0xd0 && b <= 0xd3) {
        n = (size_t)1 << (b - 0xd0);
        sign = 1;
    } else {
        return 0;
    }
    if (n > avail - *pos - 1)
        return 0;
    uint64_t u = be(p + *pos + 1, n);
    if (sign && (u >> (8 * n - 1)) & 1)
        return 0; /* negative */
    *v = u;
    *pos += 1 + n;
    return 1;
}

static int prefix_msgid(const uint8_t *p, size_t avail, uint32_t *id)
{
    if (avail < 1)
        return 0;
    hdr_t h = classify(p[0]);
    if (h.container != 1 || h.hdr > avail)
        return 0;
    uint64_t n = h.lenbytes ? be(p + 1, h.lenbytes) : h.n;
    size_t pos = h.hdr;
    uint64_t tag, v;
    if (n < 2 || !prefix_int(p, avail, &pos, &tag) || tag == 1 || tag == 2 ||
        !prefix_int(p, avail, &pos, &v) || v > UINT32_MAX)
        return 0;
    *id = (uint32_t)v;
    return 1;
}

static int msgid_of(const msgpack_object *root, uint32_t *id)
{
    if (root->type != MSGPACK_OBJECT_ARRAY || root->via.array.size < 2)
        return 0;
    const msgpack_object *a = root->via.array.ptr;
    if (a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[0].via.u64 == 1 ||
        a[0].via.u64 == 2)
        return 0;
    if (a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].via.u64 > UINT32_MAX)
        return 0;
    *id = (uint32_t)a[1].via.u64;
    return 1;
}

/* ------------------------------------------------------------------------
 * Decoder lifecycle and feeding.
 * ------------------------------------------------------------------------ */

void nllm_rpc_limits_default(nllm_rpc_limits_t *lim)
{
    lim->max_msg = NLLM_RPC_DEFAULT_MAX_MSG;
    lim->max_items = NLLM_RPC_DEFAULT_MAX_ITEMS;
    lim->max_depth = NLLM_RPC_MAX_DEPTH;
}

int nllm_rpc_decoder_init(nllm_rpc_decoder_t *dec, const nllm_rpc_limits_t *lim,
                          nllm_err_t *err)
{
    memset(dec, 0, sizeof *dec);
    if (lim)
        dec->lim = *lim;
    else
        nllm_rpc_limits_default(&dec->lim);
    if (dec->lim.max_msg < 8 || dec->lim.max_msg > NLLM_RPC_MAX_MSG_CEILING)
        return nllm_err_set(err, NLLM_EINVAL,
                            "rpc limits: max_msg %zu is outside 8..%zu bytes",
                            dec->lim.max_msg, NLLM_RPC_MAX_MSG_CEILING);
    if (dec->lim.max_depth < 1 || dec->lim.max_depth > NLLM_RPC_MAX_DEPTH)
        return nllm_err_set(err, NLLM_EINVAL, "rpc limits: max_depth %u is outside 1..%d",
                            dec->lim.max_depth, NLLM_RPC_MAX_DEPTH);
    if (dec->lim.max_items < 4)
        return nllm_err_set(err, NLLM_EINVAL, "rpc limits: max_items %u is below 4",
                            (unsigned)dec->lim.max_items);
    scan_reset(dec);
    return 0;
}

void nllm_rpc_decoder_close(nllm_rpc_decoder_t *dec)
{
    free(dec->buf);
    dec->buf = NULL;
    dec->cap = dec->len = dec->off = 0;
}

size_t nllm_rpc_buffered(const nllm_rpc_decoder_t *dec)
{
    return dec->len - dec->off;
}

int nllm_rpc_feed(nllm_rpc_decoder_t *dec, const void *buf, size_t len)
{
    if (dec->fatal)
        return dec->fatal;
    if (len == 0)
        return 0;
    if (dec->cap - dec->len < len) {
        size_t used = dec->len - dec->off;
        if (dec->off > 0) {
            memmove(dec->buf, dec->buf + dec->off, used);
            dec->len = used;
            dec->off = 0;
        }
        if (dec->cap - dec->len < len) {
            if (len > SIZE_MAX / 2 - used)
                return NLLM_ENOMEM;
            size_t want = used + len;
            size_t ncap = dec->cap ? dec->cap : 4096;
            while (ncap < want)
                ncap *= 2;
            uint8_t *nb = realloc(dec->buf, ncap);
            if (!nb)
                return NLLM_ENOMEM;
            dec->buf = nb;
            dec->cap = ncap;
        }
    }
    memcpy(dec->buf + dec->len, buf, len);
    dec->len += len;
    return 0;
}

static void msg_init(nllm_rpc_msg_t *m)
{
    memset(m, 0, sizeof *m);
    m->type = NLLM_RPC_NONE;
    m->params.type = MSGPACK_OBJECT_NIL;
    m->error.type = MSGPACK_OBJECT_NIL;
    m->result.type = MSGPACK_OBJECT_NIL;
}

void nllm_rpc_msg_free(nllm_rpc_msg_t *msg)
{
    if (msg->zone)
        msgpack_zone_free(msg->zone);
    msg_init(msg);
}

/* Drop the span just returned; keep memory small between messages. */
static void consume(nllm_rpc_decoder_t *d, size_t span)
{
    d->off += span;
    if (d->off == d->len) {
        d->off = d->len = 0;
        if (d->cap > 65536) {
            free(d->buf);
            d->buf = NULL;
            d->cap = 0;
        }
    }
    scan_reset(d);
}

/* Fill *msg as an INVALID reply target. */
static void set_invalid(nllm_rpc_msg_t *m, uint32_t id, const char *code, const char *reason)
{
    m->type = NLLM_RPC_INVALID;
    m->has_msgid = 1;
    m->msgid = id;
    m->error_code = code;
    snprintf(m->reason, sizeof m->reason, "%s", reason);
}

/* Become fatal; offer a last reply if the buffered prefix has a msgid. */
static int go_fatal(nllm_rpc_decoder_t *d, nllm_rpc_msg_t *m, int code, const char *wire,
                    const char *why, nllm_err_t *err)
{
    uint32_t id;
    if (!d->fatal) {
        d->fatal = code;
        snprintf(d->fatal_msg, sizeof d->fatal_msg, "%s", why);
    }
    if (wire && d->buf && prefix_msgid(d->buf + d->off, d->len - d->off, &id))
        set_invalid(m, id, wire, why);
    return nllm_err_set(err, d->fatal, "rpc: %s; closing the connection", d->fatal_msg);
}

static const char *type_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return "an integer";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "a negative integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "a float";
    case MSGPACK_OBJECT_STR: return "a string";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    case MSGPACK_OBJECT_BIN: return "binary";
    case MSGPACK_OBJECT_EXT: return "an extension";
    }
    return "an unknown type";
}

/* Check the RPC shape of a decoded root; fill m. Returns 1 valid, 0 invalid
 * (why filled; the caller decides INVALID vs fatal by msgid_of). */
static int validate(const msgpack_object *root, nllm_rpc_msg_t *m, char *why, size_t whylen)
{
    if (root->type != MSGPACK_OBJECT_ARRAY) {
        snprintf(why, whylen, "message is %s, not an array", type_name(root->type));
        return 0;
    }
    uint32_t n = root->via.array.size;
    const msgpack_object *a = root->via.array.ptr;
    if (n == 0) {
        snprintf(why, whylen, "message is an empty array");
        return 0;
    }
    if (a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[0].via.u64 > 2) {
        if (a[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            snprintf(why, whylen, "unknown message type %llu (expected 0, 1 or 2)",
                     (unsigned long long)a[0].via.u64);
        else
            snprintf(why, whylen, "message type is %s, expected 0, 1 or 2",
                     type_name(a[0].type));
        return 0;
    }
    int tag = (int)a[0].via.u64;
    uint32_t want = tag == NLLM_RPC_NOTIFICATION ? 3 : 4;
    static const char *const names[] = {"request", "response", "notification"};
    if (n != want) {
        snprintf(why, whylen, "%s has %u elements, expected %u", names[tag], n, want);
        return 0;
    }
    if (tag != NLLM_RPC_NOTIFICATION) {
        if (a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].via.u64 > UINT32_MAX) {
            snprintf(why, whylen, "%s msgid is %s, expected an unsigned 32-bit integer",
                     names[tag], a[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER
                                     ? "too large" : type_name(a[1].type));
            return 0;
        }
        m->has_msgid = 1;
        m->msgid = (uint32_t)a[1].via.u64;
    }
    if (tag == NLLM_RPC_RESPONSE) {
        if (a[2].type != MSGPACK_OBJECT_NIL && a[2].type != MSGPACK_OBJECT_MAP) {
            snprintf(why, whylen, "response error is %s, expected nil or a map",
                     type_name(a[2].type));
            return 0;
        }
        m->error = a[2];
        m->result = a[3];
        m->type = tag;
        return 1;
    }
    const msgpack_object *meth = &a[tag == NLLM_RPC_REQUEST ? 2 : 1];
    const msgpack_object *par = &a[tag == NLLM_RPC_REQUEST ? 3 : 2];
    if (meth->type != MSGPACK_OBJECT_STR) {
        snprintf(why, whylen, "method is %s, expected a string", type_name(meth->type));
        return 0;
    }
    uint32_t ml = meth->via.str.size;
    if (ml == 0 || ml > NLLM_RPC_MAX_METHOD || memchr(meth->via.str.ptr, 0, ml)) {
        snprintf(why, whylen, "method name must be 1..%d bytes without NUL",
                 NLLM_RPC_MAX_METHOD);
        return 0;
    }
    if (par->type != MSGPACK_OBJECT_ARRAY) {
        snprintf(why, whylen, "params is %s, expected an array", type_name(par->type));
        return 0;
    }
    char *copy = msgpack_zone_malloc_no_align(m->zone, ml + 1);
    if (!copy) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    memcpy(copy, meth->via.str.ptr, ml);
    copy[ml] = '\0';
    m->method = copy;
    m->method_len = ml;
    m->params = *par;
    m->type = tag;
    return 1;
}

int nllm_rpc_next(nllm_rpc_decoder_t *dec, nllm_rpc_msg_t *msg, nllm_err_t *err)
{
    char why[200];
    size_t where = 0;
    uint32_t id;
    msg_init(msg);
    if (dec->fatal)
        return go_fatal(dec, msg, dec->fatal, NULL, dec->fatal_msg, err);

    if (dec->len == dec->off)
        return 0; /* nothing buffered (buf may be NULL) */
    const uint8_t *p = dec->buf + dec->off;
    size_t avail = dec->len - dec->off;
    switch (scan(dec, p, avail, &where)) {
    case SCAN_MORE:
        if (dec->scan_too_deep) {
            /* the prefix already breaks the limit: the rest is not waited
             * for (100000 bytes of 0x91 would otherwise hold the peer's
             * connection open for the rest of a megabyte) */
            snprintf(why, sizeof why, "message nests deeper than %u levels", dec->lim.max_depth);
            return go_fatal(dec, msg, NLLM_EPROTO, NLLM_RPC_CODE_BAD_REQUEST, why, err);
        }
        return 0;
    case SCAN_BAD:
        snprintf(why, sizeof why, "byte 0xc1 at offset %zu is not valid msgpack", where);
        return go_fatal(dec, msg, NLLM_EPROTO, NLLM_RPC_CODE_BAD_REQUEST, why, err);
    case SCAN_TOO_LARGE:
        snprintf(why, sizeof why,
                 "message exceeds the limit of %zu bytes or %u items",
                 dec->lim.max_msg, (unsigned)dec->lim.max_items);
        return go_fatal(dec, msg, NLLM_EPROTO, NLLM_RPC_CODE_TOO_LARGE, why, err);
    default:
        break;
    }

    size_t span = dec->scan_pos;
    if (dec->scan_too_deep) {
        snprintf(why, sizeof why, "message nests deeper than %u levels", dec->lim.max_depth);
        if (!prefix_msgid(p, span, &id))
            return go_fatal(dec, msg, NLLM_EPROTO, NULL, why, err);
        consume(dec, span);
        set_invalid(msg, id, NLLM_RPC_CODE_BAD_REQUEST, why);
        nllm_err_set(err, NLLM_EPROTO, "rpc: msgid %u: %s", id, why);
        return 1;
    }

    /* One chunk fits it all: the span, its objects and the method copy. */
    size_t chunk = span + ((size_t)dec->scan_items + 4) * (sizeof(msgpack_object) + 8) + 512;
    msgpack_zone *z = msgpack_zone_new(chunk);
    uint8_t *copy = z ? msgpack_zone_malloc_no_align(z, span) : NULL;
    if (!copy) {
        if (z)
            msgpack_zone_free(z);
        return go_fatal(dec, msg, NLLM_ENOMEM, NULL, "out of memory decoding a message", err);
    }
    memcpy(copy, p, span);
    msgpack_object root;
    rd_t r = {copy, span, 0, z};
    int rc = decode_obj(&r, &root, 0);
    if (rc == 0 && r.pos != span)
        rc = NLLM_EINTERNAL;
    if (rc) {
        msgpack_zone_free(z);
        return go_fatal(dec, msg, rc, NULL,
                        rc == NLLM_ENOMEM ? "out of memory decoding a message"
                                          : "decoder disagrees with the pre-scan (bug)",
                        err);
    }

    msg->zone = z;
    int ok = validate(&root, msg, why, sizeof why);
    if (ok == 1) {
        consume(dec, span);
        return 1;
    }
    int have_id = ok == 0 && msgid_of(&root, &id); /* root lives in z: read first */
    nllm_rpc_msg_free(msg);
    if (ok < 0)
        return go_fatal(dec, msg, NLLM_ENOMEM, NULL, why, err);
    if (!have_id)
        return go_fatal(dec, msg, NLLM_EPROTO, NULL, why, err);
    consume(dec, span);
    set_invalid(msg, id, NLLM_RPC_CODE_BAD_REQUEST, why);
    nllm_err_set(err, NLLM_EPROTO, "rpc: msgid %u: %s", id, why);
    return 1;
}

/* ------------------------------------------------------------------------
 * Reading params.
 * ------------------------------------------------------------------------ */

static const msgpack_object empty_map = {.type = MSGPACK_OBJECT_MAP};

int nllm_rpc_params_map(const nllm_rpc_msg_t *msg, const msgpack_object **map,
                        nllm_err_t *err)
{
    const msgpack_object *p = &msg->params;
    if (p->type != MSGPACK_OBJECT_ARRAY)
        return nllm_err_set(err, NLLM_EINVAL, "params is %s, expected an array",
                            type_name(p->type));
    if (p->via.array.size == 0) {
        *map = &empty_map;
        return 0;
    }
    if (p->via.array.size > 1)
        return nllm_err_set(err, NLLM_EINVAL,
                            "params has %u elements; %s takes one map of named fields",
                            p->via.array.size, msg->method ? msg->method : "this method");
    if (p->via.array.ptr[0].type != MSGPACK_OBJECT_MAP)
        return nllm_err_set(err, NLLM_EINVAL, "params[0] is %s; %s takes a map of named fields",
                            type_name(p->via.array.ptr[0].type),
                            msg->method ? msg->method : "this method");
    *map = &p->via.array.ptr[0];
    return 0;
}

const msgpack_object *nllm_rpc_map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP || !key)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
            memcmp(k->via.str.ptr, key, kl) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* Shared front of the getters: 1 found (*v set), 0 absent and optional, <0. */
static int lookup(const msgpack_object *map, const char *key, int required,
                  const msgpack_object **v, nllm_err_t *err)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return nllm_err_set(err, NLLM_EINVAL, "field '%s': params is %s, expected a map", key,
                            map ? type_name(map->type) : "missing");
    *v = nllm_rpc_map_get(map, key);
    if (*v)
        return 1;
    if (required)
        return nllm_err_set(err, NLLM_EINVAL, "missing required field '%s'", key);
    return 0;
}

static int wrong_type(nllm_err_t *err, const char *key, const msgpack_object *v,
                      const char *want)
{
    return nllm_err_set(err, NLLM_EINVAL, "field '%s' is %s, expected %s", key,
                        type_name(v->type), want);
}

int nllm_rpc_get_str(const msgpack_object *map, const char *key, const char **s,
                     size_t *len, int required, nllm_err_t *err)
{
    const msgpack_object *v;
    int rc = lookup(map, key, required, &v, err);
    if (rc <= 0)
        return rc;
    if (v->type != MSGPACK_OBJECT_STR)
        return wrong_type(err, key, v, "a string");
    *s = v->via.str.ptr;
    if (len)
        *len = v->via.str.size;
    return 0;
}

int nllm_rpc_get_strbuf(const msgpack_object *map, const char *key, char *buf,
                        size_t cap, int required, nllm_err_t *err)
{
    const msgpack_object *v;
    int rc = lookup(map, key, required, &v, err);
    if (rc <= 0)
        return rc;
    if (v->type != MSGPACK_OBJECT_STR)
        return wrong_type(err, key, v, "a string");
    const char *s = v->via.str.ptr;
    size_t len = v->via.str.size;
    if (memchr(s, 0, len))
        return nllm_err_set(err, NLLM_EINVAL, "field '%s' contains a NUL byte", key);
    if (len >= cap)
        return nllm_err_set(err, NLLM_EINVAL, "field '%s' is %zu bytes, at most %zu allowed",
                            key, len, cap ? cap - 1 : 0);
    memcpy(buf, s, len);
    buf[len] = '\0';
    return 0;
}

int nllm_rpc_get_int64(const msgpack_object *map, const char *key, int64_t *out,
                       int required, nllm_err_t *err)
{
    const msgpack_object *v;
    int rc = lookup(map, key, required, &v, err);
    if (rc <= 0)
        return rc;
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = v->via.i64;
        return 0;
    }
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return wrong_type(err, key, v, "an integer");
    if (v->via.u64 > INT64_MAX)
        return nllm_err_set(err, NLLM_EINVAL, "field '%s' is %llu, larger than %lld", key,
                            (unsigned long long)v->via.u64, (long long)INT64_MAX);
    *out = (int64_t)v->via.u64;
    return 0;
}

int nllm_rpc_get_double(const msgpack_object *map, const char *key, double *out,
                        int required, nllm_err_t *err)
{
    const msgpack_object *v;
    int rc = lookup(map, key, required, &v, err);
    if (rc <= 0)
        return rc;
    switch (v->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = v->via.f64;
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)v->via.u64;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)v->via.i64;
        return 0;
    default:
        return wrong_type(err, key, v, "a number");
    }
}

int nllm_rpc_get_bool(const msgpack_object *map, const char *key, int *out, int required,
                      nllm_err_t *err)
{
    const msgpack_object *v;
    int rc = lookup(map, key, required, &v, err);
    if (rc <= 0)
        return rc;
    if (v->type != MSGPACK_OBJECT_BOOLEAN)
        return wrong_type(err, key, v, "a boolean");
    *out = v->via.boolean ? 1 : 0;
    return 0;
}

int nllm_rpc_get_map(const msgpack_object *map, const char *key, const msgpack_object **out,
                     int required, nllm_err_t *err)
{
    const msgpack_object *v;
    int rc = lookup(map, key, required, &v, err);
    if (rc <= 0)
        return rc;
    if (v->type != MSGPACK_OBJECT_MAP)
        return wrong_type(err, key, v, "a map");
    *out = v;
    return 0;
}

int nllm_rpc_get_array(const msgpack_object *map, const char *key,
                       const msgpack_object **out, int required, nllm_err_t *err)
{
    const msgpack_object *v;
    int rc = lookup(map, key, required, &v, err);
    if (rc <= 0)
        return rc;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return wrong_type(err, key, v, "an array");
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------
 * Encoding. msgpack_pack_* return nonzero only when the writer fails, which
 * for msgpack_sbuffer means out of memory.
 * ------------------------------------------------------------------------ */

#define PK(call)                                                               \
    do {                                                                       \
        if ((call) != 0)                                                       \
            return NLLM_ENOMEM;                                                \
    } while (0)

int nllm_rpc_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    PK(msgpack_pack_str(pk, n));
    PK(msgpack_pack_str_body(pk, s, n));
    return 0;
}

int nllm_rpc_pack_request(msgpack_packer *pk, uint32_t msgid, const char *method)
{
    PK(msgpack_pack_array(pk, 4));
    PK(msgpack_pack_uint8(pk, NLLM_RPC_REQUEST));
    PK(msgpack_pack_uint32(pk, msgid));
    return nllm_rpc_pack_str(pk, method);
}

int nllm_rpc_pack_response_ok(msgpack_packer *pk, uint32_t msgid)
{
    PK(msgpack_pack_array(pk, 4));
    PK(msgpack_pack_uint8(pk, NLLM_RPC_RESPONSE));
    PK(msgpack_pack_uint32(pk, msgid));
    PK(msgpack_pack_nil(pk));
    return 0;
}

int nllm_rpc_pack_response_error(msgpack_packer *pk, uint32_t msgid, const char *code,
                                 const char *message)
{
    int rc;
    PK(msgpack_pack_array(pk, 4));
    PK(msgpack_pack_uint8(pk, NLLM_RPC_RESPONSE));
    PK(msgpack_pack_uint32(pk, msgid));
    PK(msgpack_pack_map(pk, 2));
    if ((rc = nllm_rpc_pack_kv_str(pk, "code", code ? code : NLLM_RPC_CODE_INTERNAL)) ||
        (rc = nllm_rpc_pack_kv_str(pk, "message", message ? message : "")))
        return rc;
    PK(msgpack_pack_nil(pk));
    return 0;
}

int nllm_rpc_pack_response_err(msgpack_packer *pk, uint32_t msgid, const nllm_err_t *e)
{
    int code = e && e->code ? e->code : NLLM_EINTERNAL;
    const char *text = e && e->code && e->msg[0] ? e->msg : nllm_err_default_msg(code);
    return nllm_rpc_pack_response_error(pk, msgid, nllm_err_wire_code(code), text);
}

int nllm_rpc_pack_notification_begin(msgpack_packer *pk, const char *method)
{
    PK(msgpack_pack_array(pk, 3));
    PK(msgpack_pack_uint8(pk, NLLM_RPC_NOTIFICATION));
    return nllm_rpc_pack_str(pk, method);
}

int nllm_rpc_pack_kv_str(msgpack_packer *pk, const char *key, const char *val)
{
    int rc = nllm_rpc_pack_str(pk, key);
    return rc ? rc : nllm_rpc_pack_str(pk, val);
}

int nllm_rpc_pack_kv_int(msgpack_packer *pk, const char *key, int64_t val)
{
    int rc = nllm_rpc_pack_str(pk, key);
    if (rc)
        return rc;
    PK(msgpack_pack_int64(pk, val));
    return 0;
}

int nllm_rpc_pack_kv_double(msgpack_packer *pk, const char *key, double val)
{
    int rc = nllm_rpc_pack_str(pk, key);
    if (rc)
        return rc;
    PK(msgpack_pack_double(pk, val));
    return 0;
}

int nllm_rpc_pack_kv_bool(msgpack_packer *pk, const char *key, int val)
{
    int rc = nllm_rpc_pack_str(pk, key);
    if (rc)
        return rc;
    PK(val ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
    return 0;
}
