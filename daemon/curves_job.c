/* curves_job.c -- nllmd's training-curve files: reads a job's current
 * history from the catalog (superseded rows left out, so curves continue
 * across resumes) on the loop thread, which owns the catalog, and writes
 * the SVG on the thread pool; the caller hears how it went through its
 * callback. Knows the catalog and engine/curves.c, not jobs. Caller:
 * jobs.c (curves_on_epoch, curves_on_done).
 */
#include <stdio.h>
#include <stdlib.h>

#include "config.h" /* NLLM_PATH_MAX */
#include "curves_job.h"

int nllm_curves_from_catalog(nllm_catalog_t *cat, const char *job, nllm_curve_point_t **pts,
                             size_t *n, nllm_err_t *err)
{
    nllm_catalog_epoch_t *eps;
    size_t m;
    *pts = NULL;
    *n = 0;
    int rc = nllm_catalog_epoch_list(cat, job, 0, &eps, &m, err);
    if (rc < 0)
        return rc;
    if (m) {
        *pts = malloc(m * sizeof **pts);
        if (!*pts) {
            nllm_catalog_epochs_free(eps, m);
            return nllm_err_set(err, NLLM_ENOMEM, "job %s: training curves: out of memory", job);
        }
    }
    for (size_t i = 0; i < m; i++)
        (*pts)[i] = (nllm_curve_point_t){eps[i].epoch, eps[i].train_loss, eps[i].val_loss,
                                         eps[i].train_ppl, eps[i].val_ppl};
    nllm_catalog_epochs_free(eps, m);
    *n = m;
    return 0;
}

/* The file is written (temp, fsync, rename, folder fsync) on the thread
 * pool: those fsyncs kept the loop from answering requests for tens of
 * milliseconds. The points are read from the catalog here, on the loop. */
typedef struct {
    uv_work_t req;
    nllmd_curves_cb cb;
    void *data;
    nllm_curve_point_t *pts;
    size_t n;
    int rc;
    nllm_err_t err;
    char path[NLLM_PATH_MAX + 128];
    char title[256];
} curves_write_t;

static void curves_work(uv_work_t *req)
{
    curves_write_t *w = req->data;
    w->rc = nllm_curves_write(w->path, w->pts, w->n, w->title, -1, &w->err);
}

static void curves_after(uv_work_t *req, int status)
{
    curves_write_t *w = req->data;
    if (status < 0)
        w->rc = nllm_err_set(&w->err, NLLM_EINTERNAL, "%s", uv_strerror(status));
    w->cb(w->data, w->path, w->rc, &w->err);
    free(w->pts);
    free(w);
}

int nllmd_curves_write(uv_loop_t *loop, nllm_catalog_t *cat, const char *job, const char *path,
                       const char *title, nllmd_curves_cb cb, void *data, nllm_err_t *err)
{
    curves_write_t *w = calloc(1, sizeof *w);
    if (!w)
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory");
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->title, sizeof w->title, "%s", title);
    int rc = nllm_curves_from_catalog(cat, job, &w->pts, &w->n, err);
    if (rc == 0 && w->n == 0)
        rc = 1; /* nothing trained yet (stopped before the first epoch) */
    if (rc == 0) {
        w->cb = cb;
        w->data = data;
        w->req.data = w;
        rc = uv_queue_work(loop, &w->req, curves_work, curves_after);
        if (rc == 0)
            return 0;
        rc = nllm_err_set(err, NLLM_EINTERNAL, "%s", uv_strerror(rc));
    }
    free(w->pts);
    free(w);
    return rc;
}
