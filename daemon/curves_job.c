/* curves_job.c -- nllmd's training-curve files: reads a job's current
 * history from the catalog (superseded rows left out, so curves continue
 * across resumes) and writes {name}_training_curves_epoch_N.svg every
 * save_every epochs and {name}_training_curves_final.svg when the job ends
 * completed or stopped, in the job folder. Loop thread only (it owns the
 * catalog); a failure is an event, never fatal. Caller: jobs.c handle_event.
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

/* suffix: "epoch_N" or "final" */
static void write_curves(nllm_job_t *j, const char *suffix, const char *what)
{
    char path[NLLM_PATH_MAX + 128], title[256];
    nllm_curve_point_t *pts;
    size_t n;
    nllm_err_t err = {0};
    snprintf(path, sizeof path, "%s/%s_training_curves_%s.svg", j->dir, j->name, suffix);
    snprintf(title, sizeof title, "%s: training curves (%s)", j->name, what);
    int rc = nllm_curves_from_catalog(j->d->cat, j->name, &pts, &n, &err);
    if (rc == 0 && n == 0)
        return; /* nothing trained yet (stopped before the first epoch) */
    if (rc == 0) {
        rc = nllm_curves_write(path, pts, n, title, -1, &err);
        free(pts);
    }
    if (rc < 0)
        nllmd_job_event(j, "curves_failed", "%s_training_curves_%s.svg: %s", j->name, suffix,
                        err.msg);
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
