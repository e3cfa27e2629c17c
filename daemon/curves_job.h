/* curves_job.h -- nllmd's training-curve files ({name}_training_curves_*.svg
 * in a job folder): a job's history read from the catalog on the loop
 * thread (it owns the catalog), the picture (engine/curves.c) written on
 * the loop's thread pool, so the fsyncs never hold the loop. It knows no
 * jobs: the caller says which file, and decides when and what a failure
 * becomes. Callers: daemon/jobs.c (every save_every epochs, and when a job
 * ends completed or stopped).
 */
#ifndef NLLM_CURVES_JOB_H
#define NLLM_CURVES_JOB_H

#include <stddef.h>
#include <uv.h>

#include "catalog.h"
#include "curves.h"

/* The job's current history (nllm_catalog_epoch_list, superseded rows left
 * out), so curves continue across resumes. *pts: malloc'd, caller frees
 * (NULL when *n == 0). */
int nllm_curves_from_catalog(nllm_catalog_t *cat, const char *job, nllm_curve_point_t **pts,
                             size_t *n, nllm_err_t *err);

/* Runs on the loop thread when the write of path has ended: rc 0 (the file
 * is durable) or an NLLM_E* code with err saying why. */
typedef void (*nllmd_curves_cb)(void *data, const char *path, int rc, const nllm_err_t *err);

/* Loop thread: reads job's history from cat now and queues the write of
 * path (nllm_curves_write: temp, fsync, rename, folder fsync; title on
 * top) on loop's thread pool. Returns 0 when queued (cb(data, ...) will
 * run), 1 when job has no finished epoch yet (nothing to draw; cb will not
 * run), or an NLLM_E* code with err filled (cb will not run). */
int nllmd_curves_write(uv_loop_t *loop, nllm_catalog_t *cat, const char *job, const char *path,
                       const char *title, nllmd_curves_cb cb, void *data, nllm_err_t *err);

#endif /* NLLM_CURVES_JOB_H */
