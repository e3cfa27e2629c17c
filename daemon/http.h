/* http.h -- nllmd's read-only HTTP listener for monitoring (http.c): the
 * Prometheus exposition at /metrics, job status as JSON under /api/, and
 * the dashboard page at /. It runs on the daemon's libuv loop; every
 * function here is called on the loop thread only. It reads the daemon
 * (jobs, devices, d->metrics); outside its own state it writes only the
 * GPUs' memory figures, refreshed at most once a second.
 * Callers: nllmd.c (start/close next to the RPC listeners),
 * tests/fuzz/fuzz_http.c (nllmd_http_parse_request).
 */
#ifndef NLLM_HTTP_H
#define NLLM_HTTP_H

#include "nllm_err.h"

typedef struct nllmd nllmd_t;
typedef struct nllmd_http nllmd_http_t;

#define NLLMD_HTTP_DEFAULT_ADDR "127.0.0.1:9477"
#define NLLMD_HTTP_MAX_CONNS 512        /* concurrent HTTP connections */
#define NLLMD_HTTP_MAX_HEAD 8192        /* request line + headers, else 431 */
#define NLLMD_HTTP_HEAD_TIMEOUT_MS 10000 /* a request must arrive in full within */
#define NLLMD_HTTP_IDLE_TIMEOUT_MS 30000 /* idle keep-alive connections close after */

/* Starts listening on d->opt.metrics: "HOST:PORT" or "[V6]:PORT"; "none"
 * = off; "" = NLLMD_HTTP_DEFAULT_ADDR, where a busy port only logs a
 * warning (so several daemons can run side by side). The timeouts can be
 * overridden (for tests) with NLLMD_HTTP_HEAD_TIMEOUT_MS and
 * NLLMD_HTTP_IDLE_TIMEOUT_MS in the environment. Returns 0 or an NLLM_E*
 * code with err filled. */
int nllmd_http_start(nllmd_t *d, nllm_err_t *err);

/* Closes the listener and every HTTP connection; their memory is freed in
 * the close callbacks, so uv_run() returns once they have run. */
void nllmd_http_close(nllmd_t *d);

/* Parses len bytes as what one connection to a listener on HOST:port (an
 * IP literal) received, through the same http_parser callbacks, limits and
 * checks as a socket connection, delivered in reads of `piece` bytes (0:
 * as large as a real read). No socket and no timer: responses are built
 * and counted, not sent; the host name a non-loopback listener accepts is
 * "nllm-host.example". Returns the status of the first response (0: none,
 * e.g. the head is incomplete) or NLLM_EINVAL for a bad host; *nresponses
 * (may be NULL) gets how many. For tests and tests/fuzz/fuzz_http.c. */
int nllmd_http_parse_request(nllmd_t *d, const char *host, int port, const char *data,
                             size_t len, size_t piece, int *nresponses);

#endif /* NLLM_HTTP_H */
