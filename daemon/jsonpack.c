/* jsonpack.c -- converts between jansson values and msgpack: handlers build
 * their results as JSON (shared with the HTTP API) and the RPC layer packs
 * them; request params that carry a config map come back as JSON for the
 * config parser. Non-finite numbers become nil/null. */
#include <math.h>
#include <string.h>

#include "jsonpack.h"
#include "rpc.h"

json_t *nllm_json_num(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

int nllm_json_pack(msgpack_packer *pk, const json_t *j)
{
    switch (json_typeof(j)) {
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
    case JSON_ARRAY: {
        if (msgpack_pack_array(pk, json_array_size(j)) < 0)
            return -1;
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) if (nllm_json_pack(pk, v) < 0) return -1;
        return 0;
    }
    case JSON_STRING:
        return msgpack_pack_str_with_body(pk, json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, json_integer_value(j));
    case JSON_REAL: {
        double x = json_real_value(j);
        return isfinite(x) ? msgpack_pack_double(pk, x) : msgpack_pack_nil(pk);
    }
    case JSON_TRUE:
        return msgpack_pack_true(pk);
    case JSON_FALSE:
        return msgpack_pack_false(pk);
    case JSON_NULL:
        return msgpack_pack_nil(pk);
    }
    return -1;
}

json_t *nllm_msgpack_to_json(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return json_integer(o->via.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer(o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
    case MSGPACK_OBJECT_STR:
        return json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN:
        return json_stringn_nocheck(o->via.bin.ptr, o->via.bin.size);
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++)
            json_array_append_new(a, nllm_msgpack_to_json(&o->via.array.ptr[i]));
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (k->type != MSGPACK_OBJECT_STR)
                continue;
            char key[256];
            size_t n = k->via.str.size < sizeof key - 1 ? k->via.str.size : sizeof key - 1;
            memcpy(key, k->via.str.ptr, n);
            key[n] = '\0';
            json_object_set_new(m, key, nllm_msgpack_to_json(&o->via.map.ptr[i].val));
        }
        return m;
    }
    default:
        return json_null();
    }
}
