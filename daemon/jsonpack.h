/* jsonpack.h -- jansson values to msgpack and back (jsonpack.c): RPC
 * handlers and the HTTP API build results as JSON, server.c packs them;
 * request params that carry a config map come back as JSON for the config
 * parser. Non-finite numbers become nil/null. Any thread; no state.
 */
#ifndef NLLM_JSONPACK_H
#define NLLM_JSONPACK_H

#include <jansson.h>
#include <msgpack.h>

int nllm_json_pack(msgpack_packer *pk, const json_t *j);
json_t *nllm_msgpack_to_json(const msgpack_object *o);
json_t *nllm_json_num(double x); /* NaN/inf -> null */

#endif /* NLLM_JSONPACK_H */
