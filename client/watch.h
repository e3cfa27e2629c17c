/* watch.h -- `nllmctl watch`: subscribes to one job and draws the research
 * code's training display live (header, `Epoch N/M`, a progress bar redrawn
 * in place, validation lines, checkpoint saves, resume summary), or plain
 * log lines when stdout is no terminal or NO_COLOR is set, or JSON lines.
 * Callers: client/nllmctl.c (watch, start --watch, resume --watch).
 */
#ifndef NLLM_CLIENT_WATCH_H
#define NLLM_CLIENT_WATCH_H

#include "conn.h"

/* Watches job `name` on c until it ends or Ctrl-C. When watch_sent, the
 * `watch` request has already gone out as watch_msgid (pipelined behind
 * start/resume so that no early notification is missed); else it is sent
 * here. Returns nllmctl's exit code: 0 when the job reached completed,
 * stopped, paused or interrupted, or the user detached; 1 when it failed or
 * the daemon refused; 3 when the connection was lost. Errors go to stderr. */
int nllm_watch_run(nllm_conn_t *c, const char *name, int json, int watch_sent,
                   uint32_t watch_msgid);

#endif /* NLLM_CLIENT_WATCH_H */
