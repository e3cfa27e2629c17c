/* curves.c -- renders per-epoch training curves as one self-contained SVG
 * (two panels: loss and perplexity by epoch) and writes it durably.
 * Invariants: output is well-formed XML with every piece of caller text
 * escaped; non-finite values are skipped (lines break at them); no fonts,
 * scripts, images or links are referenced. Depends only on libc and
 * fsutil, so nllmd and nllmctl link it alike (see curves.h).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curves.h"
#include "fsutil.h"

/* ---- geometry (SVG user units = pixels) ----------------------------------- */

#define SVG_W 1000
#define SVG_H 450
#define PANEL_X(p) (10.0 + 495.0 * (p)) /* left edge of panel p (0 or 1) */
#define PANEL_W 485.0
#define PLOT_L 70.0  /* plot area left, from the panel edge */
#define PLOT_R 12.0  /* plot area right margin */
#define PLOT_T 100.0 /* plot area top; the best label sits above it */
#define PLOT_B (SVG_H - 60.0)
#define X_INSET 10.0 /* first/last epoch this far inside the plot area */
#define CHAR_W 6.8   /* estimated width of one 12px character */
#define MAX_TICKS 64
#define MARKERS_MAX 60 /* more points than this: markers only on isolated ones */

#define C_TRAIN "#1f77b4"
#define C_VAL "#ff7f0e"
#define C_BEST "#2ca02c"
#define C_AXIS "#333333"
#define C_GRID "#e6e6e6"

/* ---- a growing string ------------------------------------------------------ */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} sb_t;

static void sb_printf(sb_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sb_t *s, const char *fmt, ...)
{
    while (!s->oom) {
        size_t room = s->cap - s->len;
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(s->buf ? s->buf + s->len : NULL, room, fmt, ap);
        va_end(ap);
        if (k < 0) {
            s->oom = 1;
            return;
        }
        if ((size_t)k < room) {
            s->len += (size_t)k;
            return;
        }
        size_t cap = s->cap ? s->cap : 8192;
        while (cap - s->len <= (size_t)k)
            cap *= 2;
        char *nb = realloc(s->buf, cap);
        if (!nb) {
            s->oom = 1;
            return;
        }
        s->buf = nb;
        s->cap = cap;
    }
}

/* Length of the well-formed UTF-8 sequence at p (1-4), or 0. */
static int utf8_len(const unsigned char *p)
{
    int n = p[0] < 0x80 ? 1 : (p[0] & 0xE0) == 0xC0 ? 2 : (p[0] & 0xF0) == 0xE0 ? 3
                           : (p[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 2 && p[0] < 0xC2)
        return 0;
    for (int i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    if ((n == 3 && p[0] == 0xE0 && p[1] < 0xA0) || (n == 3 && p[0] == 0xED && p[1] >= 0xA0) ||
        (n == 4 && p[0] == 0xF0 && p[1] < 0x90) || (n == 4 && p[0] > 0xF4) ||
        (n == 4 && p[0] == 0xF4 && p[1] >= 0x90))
        return 0;
    return n;
}

/* Caller text as XML character data: & < > " ' escaped, control bytes and
 * malformed UTF-8 replaced, so the document stays well-formed. */
static void sb_text(sb_t *s, const char *t)
{
    const unsigned char *p = (const unsigned char *)t;
    while (*p) {
        int n = utf8_len(p);
        if (n == 1) {
            switch (*p) {
            case '&': sb_printf(s, "&amp;"); break;
            case '<': sb_printf(s, "&lt;"); break;
            case '>': sb_printf(s, "&gt;"); break;
            case '"': sb_printf(s, "&quot;"); break;
            case '\'': sb_printf(s, "&apos;"); break;
            default: sb_printf(s, "%c", *p < 0x20 ? ' ' : *p);
            }
        } else if (n > 1) {
            sb_printf(s, "%.*s", n, (const char *)p);
        } else {
            sb_printf(s, "?");
            n = 1;
        }
        p += n;
    }
}

/* ---- axes ------------------------------------------------------------------- */

typedef struct {
    double lo, hi;    /* domain */
    int log;          /* log10 scale (lo > 0) */
    double p0, p1;    /* pixels that lo and hi map to */
    double ticks[MAX_TICKS];
    int nticks;
    int decimals;     /* linear tick labels */
} axis_t;

static double ax_map(const axis_t *a, double v)
{
    double t = a->log ? (log10(v) - log10(a->lo)) / (log10(a->hi) - log10(a->lo))
                      : (v - a->lo) / (a->hi - a->lo);
    return a->p0 + t * (a->p1 - a->p0);
}

/* 1, 2 or 5 times a power of ten, about range/target. */
static double nice_step(double range, int target)
{
    double raw = range / target;
    if (!(raw > 0) || !isfinite(raw))
        return 1;
    double mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

static int step_decimals(double step)
{
    int k = (int)floor(log10(step) + 1e-9);
    return k < 0 ? (-k > 10 ? 10 : -k) : 0;
}

/* Linear axis over [lo, hi] widened to whole steps. */
static void axis_linear(axis_t *a, double lo, double hi, int target)
{
    if (!isfinite(lo) || !isfinite(hi) || hi < lo) {
        lo = 0;
        hi = 1;
    }
    if (hi == lo) {
        double d = lo != 0 ? fabs(lo) * 0.1 : 1;
        lo -= d;
        hi += d;
    }
    double pad = (hi - lo) * 0.04; /* keep points off the frame */
    if (isfinite(pad)) {
        lo = lo >= 0 && lo - pad < 0 ? 0 : lo - pad; /* losses, ppl: never below 0 */
        hi += pad;
    }
    double step = nice_step(hi - lo, target);
    a->log = 0;
    a->lo = floor(lo / step) * step;
    a->hi = ceil(hi / step) * step;
    if (!(a->hi > a->lo) || !isfinite(a->hi - a->lo)) { /* beyond double precision */
        a->lo = lo;
        a->hi = hi;
        a->ticks[0] = lo;
        a->ticks[1] = hi;
        a->nticks = 2;
        a->decimals = 0;
        return;
    }
    double cnt = floor((a->hi - a->lo) / step + 0.5);
    a->nticks = 0;
    for (double i = 0; i <= cnt && a->nticks < MAX_TICKS; i++) {
        double t = a->lo + i * step;
        a->ticks[a->nticks++] = fabs(t) < step * 1e-9 ? 0 : t;
    }
    a->decimals = step_decimals(step);
}

/* Epoch axis: domain exactly [lo, hi], ticks on whole epochs. */
static void axis_epochs(axis_t *a, double lo, double hi)
{
    if (hi <= lo) { /* one epoch: centred */
        lo -= 0.5;
        hi += 0.5;
    }
    double step = nice_step(hi - lo, 8);
    if (step < 1)
        step = 1;
    a->log = 0;
    a->lo = lo;
    a->hi = hi;
    a->nticks = 0;
    for (double t = ceil(lo / step) * step; t <= hi && a->nticks < MAX_TICKS; t += step)
        if (t >= 1) /* epochs are 1-based */
            a->ticks[a->nticks++] = t;
    a->decimals = 0;
}

/* Log axis over whole decades around [lo, hi] (0 < lo <= hi). */
static void axis_log(axis_t *a, double lo, double hi)
{
    int klo = (int)floor(log10(lo) + 1e-12), khi = (int)ceil(log10(hi) - 1e-12);
    if (khi <= klo)
        khi = klo + 1;
    int decades = khi - klo, stride = (decades + 7) / 8;
    a->log = 1;
    a->lo = pow(10, klo);
    a->hi = pow(10, khi);
    a->nticks = 0;
    for (int k = klo; k <= khi && a->nticks < MAX_TICKS - 2; k += stride) {
        double d = pow(10, k);
        a->ticks[a->nticks++] = d;
        if (decades <= 2 && k < khi) {
            a->ticks[a->nticks++] = 2 * d;
            a->ticks[a->nticks++] = 5 * d;
        }
    }
    a->decimals = 0;
}

static void fmt_tick(const axis_t *a, double v, char *buf, size_t n)
{
    if (a->log) {
        if (v >= 1e-3 && v < 1e5) {
            snprintf(buf, n, "%g", v);
        } else {
            int k = (int)floor(log10(v) + 1e-9);
            snprintf(buf, n, "%.0fe%d", v / pow(10, k), k);
        }
    } else if (fabs(v) >= 1e6) {
        snprintf(buf, n, "%.3g", v);
    } else {
        snprintf(buf, n, "%.*f", a->decimals, v);
    }
}

/* ---- panels -------------------------------------------------------------- */

typedef struct {
    const char *id;         /* "loss" | "perplexity" */
    const char *title;      /* "Loss" */
    const char *ylabel;     /* "loss" */
    const char *names[2];   /* legend: train, val */
    const double *y[2];     /* train, val values per point */
    int allow_log;
    const char *best_what;  /* "val loss" */
    int best_prec;          /* decimals of the best value */
} panel_t;

typedef struct {
    const double *x; /* epochs, ascending */
    size_t n;
    int64_t best_epoch; /* 0 = none */
    long best_i;        /* its index, -1 when not among the points */
} frame_t;

static int usable(const axis_t *a, double v)
{
    return isfinite(v) && (!a->log || v > 0);
}

static void draw_series(sb_t *s, const frame_t *f, const axis_t *ax, const axis_t *ay,
                        const double *y, const char *color, const char *cls)
{
    int pen = 0;
    sb_printf(s, "<path class=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                 "stroke-linejoin=\"round\" d=\"",
              cls, color);
    for (size_t i = 0; i < f->n; i++) {
        if (!usable(ay, y[i])) {
            pen = 0;
            continue;
        }
        sb_printf(s, "%s%.1f %.1f", pen ? " L" : (i ? " M" : "M"), ax_map(ax, f->x[i]),
                  ax_map(ay, y[i]));
        pen = 1;
    }
    sb_printf(s, "\"/>\n");
    for (size_t i = 0; i < f->n; i++) {
        if (!usable(ay, y[i]))
            continue;
        int isolated = (i == 0 || !usable(ay, y[i - 1])) && (i + 1 == f->n || !usable(ay, y[i + 1]));
        if (f->n <= MARKERS_MAX || isolated)
            sb_printf(s, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%s\" fill=\"%s\"/>\n",
                      ax_map(ax, f->x[i]), ax_map(ay, y[i]), isolated ? "3.5" : "2.5", color);
    }
}

static void draw_panel(sb_t *s, int p, const panel_t *P, const frame_t *f)
{
    double x0 = PANEL_X(p), px0 = x0 + PLOT_L, px1 = x0 + PANEL_W - PLOT_R;
    double py0 = PLOT_T, py1 = PLOT_B;

    /* y range over both series */
    double lo = INFINITY, hi = -INFINITY, plo = INFINITY;
    int have[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < f->n; i++) {
            double v = P->y[k][i];
            if (!isfinite(v))
                continue;
            have[k] = 1;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
            if (v > 0 && v < plo)
                plo = v;
        }
    axis_t ax, ay;
    axis_epochs(&ax, f->n ? f->x[0] : 1, f->n ? f->x[f->n - 1] : 1);
    ax.p0 = px0 + X_INSET;
    ax.p1 = px1 - X_INSET;
    if (P->allow_log && isfinite(plo) && hi / plo > 100)
        axis_log(&ay, plo, hi);
    else
        axis_linear(&ay, have[0] || have[1] ? lo : 0, have[0] || have[1] ? hi : 1, 5);
    ay.p0 = py1;
    ay.p1 = py0;

    sb_printf(s, "<g class=\"panel\" id=\"panel-%s\">\n", P->id);

    /* grid, axes, ticks, labels */
    char lab[64];
    for (int i = 0; i < ay.nticks; i++) {
        double ty = ax_map(&ay, ay.ticks[i]);
        fmt_tick(&ay, ay.ticks[i], lab, sizeof lab);
        sb_printf(s, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n"
                     "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n"
                     "<text class=\"ytick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" "
                     "font-size=\"11\">%s</text>\n",
                  px0, ty, px1, ty, C_GRID, px0 - 5, ty, px0, ty, C_AXIS, px0 - 8, ty + 4, lab);
    }
    for (int i = 0; i < ax.nticks; i++) {
        double tx = ax_map(&ax, ax.ticks[i]);
        fmt_tick(&ax, ax.ticks[i], lab, sizeof lab);
        sb_printf(s, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n"
                     "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n"
                     "<text class=\"xtick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
                     "font-size=\"11\">%s</text>\n",
                  tx, py0, tx, py1, C_GRID, tx, py1, tx, py1 + 5, C_AXIS, tx, py1 + 18, lab);
    }
    sb_printf(s, "<path fill=\"none\" stroke=\"%s\" d=\"M%.1f %.1f V%.1f H%.1f\"/>\n", C_AXIS,
              px0, py0, py1, px1);
    sb_printf(s, "<text class=\"xlabel\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">epoch"
                 "</text>\n",
              (px0 + px1) / 2, py1 + 40);
    sb_printf(s, "<text class=\"ylabel\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
                 "transform=\"rotate(-90 %.1f %.1f)\">%s%s</text>\n",
              x0 + 16, (py0 + py1) / 2, x0 + 16, (py0 + py1) / 2, P->ylabel,
              ay.log ? " (log scale)" : "");

    /* panel title (left) and legend (right) in the header row */
    sb_printf(s, "<text class=\"panel-title\" x=\"%.1f\" y=\"%.1f\" font-size=\"14\" "
                 "font-weight=\"bold\">%s%s</text>\n",
              px0, py0 - 36, P->title, ay.log ? " (log scale)" : "");
    char leg[2][64];
    double lx = px1;
    for (int k = 1; k >= 0; k--) {
        snprintf(leg[k], sizeof leg[k], "%s%s", P->names[k], have[k] ? "" : " (no data)");
        lx -= 22 + CHAR_W * (double)strlen(leg[k]) + (k == 1 ? 0 : 14);
    }
    sb_printf(s, "<g class=\"legend\">\n");
    for (int k = 0; k < 2; k++) {
        const char *color = k ? C_VAL : C_TRAIN;
        double ly = py0 - 40;
        sb_printf(s, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                     "stroke-width=\"2\"/><circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>"
                     "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                  lx, ly, lx + 18, ly, color, lx + 9, ly, color, lx + 22, ly + 4, leg[k]);
        lx += 22 + CHAR_W * (double)strlen(leg[k]) + 14;
    }
    sb_printf(s, "</g>\n");

    if (!have[0] && !have[1])
        sb_printf(s, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#888888\">"
                     "%s</text>\n",
                  (px0 + px1) / 2, (py0 + py1) / 2, f->n ? "no data" : "no epochs yet");

    /* the best epoch: a dashed line under the curves, its label above the
     * plot area (centred on the line, kept inside the panel) */
    if (f->best_epoch > 0 && f->best_epoch >= ax.lo && f->best_epoch <= ax.hi) {
        double bx = ax_map(&ax, (double)f->best_epoch);
        sb_printf(s, "<g class=\"best\">\n<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                     "stroke=\"%s\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>\n",
                  bx, py0 - 6, bx, py1, C_BEST);
        char txt[128];
        int n = snprintf(txt, sizeof txt, "best: epoch %lld", (long long)f->best_epoch);
        double bv = f->best_i >= 0 ? P->y[1][f->best_i] : NAN;
        if (isfinite(bv))
            snprintf(txt + n, sizeof txt - (size_t)n, ", %s %.*f", P->best_what, P->best_prec,
                     bv);
        double w = CHAR_W * (double)strlen(txt) + 8;
        double tx = bx - w / 2;
        if (tx + w > x0 + PANEL_W - 2)
            tx = x0 + PANEL_W - 2 - w;
        if (tx < x0 + 2)
            tx = x0 + 2;
        sb_printf(s, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"18\" rx=\"3\" "
                     "fill=\"#ffffff\" stroke=\"%s\" stroke-width=\"0.8\"/>\n"
                     "<text class=\"best-label\" x=\"%.1f\" y=\"%.1f\" fill=\"#1a6b1a\">%s</text>\n"
                     "</g>\n",
                  tx, py0 - 24, w, C_BEST, tx + 4, py0 - 11, txt);
    }

    draw_series(s, f, &ax, &ay, P->y[0], C_TRAIN, "train");
    draw_series(s, f, &ax, &ay, P->y[1], C_VAL, "val");

    if (f->best_i >= 0 && usable(&ay, P->y[1][f->best_i]))
        sb_printf(s, "<circle class=\"best-marker\" cx=\"%.1f\" cy=\"%.1f\" r=\"6.5\" "
                     "fill=\"none\" stroke=\"%s\" stroke-width=\"2.5\"/>\n",
                  ax_map(&ax, (double)f->best_epoch), ax_map(&ay, P->y[1][f->best_i]), C_BEST);

    sb_printf(s, "</g>\n");
}

/* ---- the document ---------------------------------------------------------- */

static int by_epoch(const void *a, const void *b)
{
    int64_t x = ((const nllm_curve_point_t *)a)->epoch, y = ((const nllm_curve_point_t *)b)->epoch;
    return (x > y) - (x < y);
}

int nllm_curves_svg(const nllm_curve_point_t *pts, size_t n, const char *title, int best_epoch,
                    char **svg_out, size_t *len, nllm_err_t *err)
{
    *svg_out = NULL;
    if (len)
        *len = 0;
    if (n && !pts)
        return nllm_err_set(err, NLLM_EINVAL, "training curves: no points given");
    nllm_curve_point_t *p = malloc((n ? n : 1) * sizeof *p);
    double *col = malloc((n ? n : 1) * 5 * sizeof *col);
    sb_t s = {0};
    if (!p || !col) {
        free(p);
        free(col);
        return nllm_err_set(err, NLLM_ENOMEM, "training curves: out of memory");
    }
    if (n)
        memcpy(p, pts, n * sizeof *p);
    qsort(p, n, sizeof *p, by_epoch);
    double *x = col, *tl = col + n, *vl = col + 2 * n, *tp = col + 3 * n, *vp = col + 4 * n;
    frame_t f = {x, n, 0, -1};
    for (size_t i = 0; i < n; i++) {
        x[i] = (double)p[i].epoch;
        tl[i] = p[i].train_loss;
        vl[i] = p[i].val_loss;
        tp[i] = p[i].train_ppl;
        vp[i] = p[i].val_ppl;
        if (best_epoch < 0 && isfinite(vl[i]) && (f.best_i < 0 || vl[i] < vl[f.best_i]))
            f.best_i = (long)i;
    }
    if (best_epoch < 0 && f.best_i >= 0)
        f.best_epoch = p[f.best_i].epoch;
    if (best_epoch > 0) {
        f.best_epoch = best_epoch;
        for (size_t i = 0; i < n; i++)
            if (p[i].epoch == best_epoch)
                f.best_i = (long)i;
    }

    const char *t = title && *title ? title : "Training curves";
    sb_printf(&s, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                  "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Liberation Sans, Arial, "
                  "Helvetica, sans-serif\" font-size=\"12\" fill=\"#222222\">\n<title>",
              SVG_W, SVG_H, SVG_W, SVG_H);
    sb_text(&s, t);
    sb_printf(&s, "</title>\n<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n"
                  "<text class=\"title\" x=\"%d\" y=\"28\" text-anchor=\"middle\" "
                  "font-size=\"17\" font-weight=\"bold\">",
              SVG_W, SVG_H, SVG_W / 2);
    sb_text(&s, t);
    sb_printf(&s, "</text>\n");

    panel_t loss = {"loss", "Loss", "loss", {"train loss", "val loss"}, {tl, vl}, 0,
                    "val loss", 4};
    panel_t ppl = {"perplexity", "Perplexity", "perplexity", {"train ppl", "val ppl"},
                   {tp, vp}, 1, "val ppl", 2};
    draw_panel(&s, 0, &loss, &f);
    draw_panel(&s, 1, &ppl, &f);
    sb_printf(&s, "</svg>\n");

    free(p);
    free(col);
    if (s.oom) {
        free(s.buf);
        return nllm_err_set(err, NLLM_ENOMEM, "training curves: out of memory");
    }
    *svg_out = s.buf;
    if (len)
        *len = s.len;
    return 0;
}

/* ---- writing -------------------------------------------------------------- */

typedef struct {
    const char *buf;
    size_t len;
    const char *path;
} write_ctx_t;

static int write_cb(int fd, void *ud, nllm_err_t *err)
{
    const write_ctx_t *w = ud;
    return nllm_fs_write_all(fd, w->buf, w->len, w->path, err);
}

int nllm_curves_write(const char *path, const nllm_curve_point_t *pts, size_t n,
                      const char *title, int best_epoch, nllm_err_t *err)
{
    char *svg;
    size_t len;
    int rc = nllm_curves_svg(pts, n, title, best_epoch, &svg, &len, err);
    if (rc < 0)
        return rc;
    write_ctx_t w = {svg, len, path};
    rc = nllm_fs_write_atomic(path, write_cb, &w, err);
    free(svg);
    return rc;
}
