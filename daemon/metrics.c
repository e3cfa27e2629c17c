/* metrics.c -- counting into nllmd_metrics_t (metrics.h): the table of RPC
 * requests by (method, code), filled by methods.c and read by http.c's
 * /metrics. Loop thread only.
 */
#include <stdio.h>
#include <string.h>

#include "metrics.h"

void nllmd_metrics_count_request(nllmd_metrics_t *m, const char *method, int code)
{
    if (!method)
        method = "unknown";
    for (int i = 0; i < m->nreq; i++)
        if (m->req[i].code == code && strcmp(m->req[i].method, method) == 0) {
            m->req[i].n++;
            return;
        }
    if (m->nreq >= NLLMD_METRICS_MAX_REQUESTS)
        return;
    snprintf(m->req[m->nreq].method, sizeof m->req[0].method, "%s", method);
    m->req[m->nreq].code = code;
    m->req[m->nreq].n = 1;
    m->nreq++;
}
