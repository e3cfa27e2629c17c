/* metrics.h -- the counters of nllmd that more than one module touches:
 * RPC requests answered, by method and result code (methods.c counts
 * them, http.c exports them as nllm_requests_total), and RPC messages
 * decoded (server.c). Plain data in nllmd_t (d->metrics), touched on the
 * loop thread only. Counting never fails: once the table holds
 * NLLMD_METRICS_MAX_REQUESTS pairs, a new pair is not counted. Counters
 * only one module touches stay in it (http.c's responses by status).
 */
#ifndef NLLM_METRICS_H
#define NLLM_METRICS_H

#include <stdint.h>

#define NLLMD_METRICS_MAX_REQUESTS 256 /* (method, code) pairs counted */

typedef struct {
    uint64_t messages; /* RPC messages decoded on every connection (server.c) */
    struct {
        char method[32];
        int code; /* 0 or the NLLM_E* code of the reply */
        uint64_t n;
    } req[NLLMD_METRICS_MAX_REQUESTS];
    int nreq;
} nllmd_metrics_t;

/* Counts one RPC request: method is the method name (NULL when the daemon
 * does not know it: counted as "unknown"), code 0 or the NLLM_E* code of
 * the reply. */
void nllmd_metrics_count_request(nllmd_metrics_t *m, const char *method, int code);

#endif /* NLLM_METRICS_H */
