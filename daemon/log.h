/* log.h -- nllmd's log lines on stderr ("nllmd: job NAME: ..." or
 * "nllmd: ..."), which journald or the terminal keeps. Any module of the
 * loop, on the loop thread or a job thread. A job's events also go to the
 * catalog: nllmd_job_event in jobs.h.
 */
#ifndef NLLM_LOG_H
#define NLLM_LOG_H

#include "nllmd.h"

/* job: the job the line is about, NULL for the daemon itself. */
void nllmd_log(nllmd_t *d, const char *job, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* NLLM_LOG_H */
