/* curves_job.c -- nllmd's training-curve files: reads a job's current
 * history from the catalog (superseded rows left out, so curves continue
 * across resumes) and writes {name}_training_curves_epoch_N.svg every
 * save_every epochs and {name}_training_curves_final.svg when the job ends
 * completed or stopped, in the job folder. The history is read on the loop
 * thread (it owns the catalog), the file written on the thread pool; a
 * failure is an event, never fatal. Caller: jobs.c handle_event.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curves.h"
#include "nllmd.h"

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
    nllm_job_t *job; /* a reference: the job outlives the write */
    nllm_curve_point_t *pts;
    size_t n;
    int rc;
    nllm_err_t err;
    char suffix[48];
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
    if (w->rc < 0)
        nllmd_job_event(w->job, "curves_failed", "%s_training_curves_%s.svg: %s", w->job->name,
                        w->suffix, w->err.msg);
    nllmd_job_unref(w->job);
    free(w->pts);
    free(w);
}

/* suffix: "epoch_N" or "final" */
static void write_curves(nllm_job_t *j, const char *suffix, const char *what)
{
    curves_write_t *w = calloc(1, sizeof *w);
    nllm_err_t err = {0};
    if (!w) {
        nllmd_job_event(j, "curves_failed", "%s_training_curves_%s.svg: out of memory", j->name,
                        suffix);
        return;
    }
    snprintf(w->path, sizeof w->path, "%s/%s_training_curves_%s.svg", j->dir, j->name, suffix);
    snprintf(w->title, sizeof w->title, "%s: training curves (%s)", j->name, what);
    snprintf(w->suffix, sizeof w->suffix, "%s", suffix);
    int rc = nllm_curves_from_catalog(j->d->cat, j->name, &w->pts, &w->n, &err);
    if (rc == 0 && w->n > 0) {
        w->job = j;
        w->req.data = w;
        nllmd_job_ref(j);
        rc = uv_queue_work(j->d->loop, &w->req, curves_work, curves_after);
        if (rc == 0)
            return;
        nllmd_job_unref(j);
        rc = nllm_err_set(&err, NLLM_EINTERNAL, "%s", uv_strerror(rc));
    }
    /* n == 0: nothing trained yet (stopped before the first epoch) */
    if (rc < 0)
        nllmd_job_event(j, "curves_failed", "%s_training_curves_%s.svg: %s", j->name, suffix,
                        err.msg);
    free(w->pts);
    free(w);
}

void nllmd_curves_on_epoch(nllm_job_t *j, int64_t epoch)
{
    if (j->cfg.save_every < 1 || epoch < 1 || epoch % j->cfg.save_every != 0)
        return;
    char suffix[48], what[48];
    snprintf(suffix, sizeof suffix, "epoch_%lld", (long long)epoch);
    snprintf(what, sizeof what, "epoch %lld", (long long)epoch);
    write_curves(j, suffix, what);
}

void nllmd_curves_on_done(nllm_job_t *j)
{
    if (strcmp(j->state, "completed") != 0 && strcmp(j->state, "stopped") != 0)
        return;
    write_curves(j, "final", j->state);
}
