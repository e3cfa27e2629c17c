/* curves.h -- training curves as a self-contained SVG picture: two panels
 * side by side, loss (train, val) and perplexity (train, val) by epoch, with
 * nice 1-2-5 ticks, a legend and the best epoch marked. Pure C + fsutil, no
 * fonts, scripts or links, so nllmctl (`plot`) and nllmd (the
 * {name}_training_curves_*.svg files) draw the same picture.
 * Callers: daemon/curves_job.c (nllmd), client/nllmctl.c, tests/test_curves.c.
 */
#ifndef NLLM_CURVES_H
#define NLLM_CURVES_H

#include <stddef.h>
#include <stdint.h>

#include "nllm_err.h"

/* One finished epoch. NAN (or any non-finite value) = missing: skipped. */
typedef struct {
    int64_t epoch; /* 1-based */
    double train_loss, val_loss, train_ppl, val_ppl;
} nllm_curve_point_t;

/* Render pts (any order; one row per epoch) into a new malloc'd,
 * NUL-terminated SVG document (*svg_out, caller frees; *len without the
 * NUL, len may be NULL). title may be NULL. best_epoch >= 1 marks that
 * epoch; < 0 picks the epoch with the lowest finite val loss (the trainer's
 * "best"); 0 marks none. The perplexity panel switches to a log scale
 * (labelled) when its finite values span more than a factor of 100.
 * n == 0 draws empty panels saying so. Numbers are printed with printf, so
 * LC_NUMERIC must be "C" (neither nllmd nor nllmctl calls setlocale).
 * Returns 0, NLLM_EINVAL (pts NULL with n > 0) or NLLM_ENOMEM. */
int nllm_curves_svg(const nllm_curve_point_t *pts, size_t n, const char *title, int best_epoch,
                    char **svg_out, size_t *len, nllm_err_t *err);

/* Render as above and replace path atomically (nllm_fs_write_atomic: temp
 * file, fsync, rename, fsync the folder). */
int nllm_curves_write(const char *path, const nllm_curve_point_t *pts, size_t n,
                      const char *title, int best_epoch, nllm_err_t *err);

#endif /* NLLM_CURVES_H */
