/* test_curves.c -- daemon/engine/curves.c: the training-curve SVG is
 * well-formed XML (a small tag checker here, plus `xmllint --noout` when
 * installed), has both panels, the legend, tick labels and the best epoch
 * marked, and copes with 1 epoch, no epochs, no validation values,
 * unsorted input, infinities, a perplexity range > 1e4 (log scale) and
 * hostile titles.
 * Suite: daemon.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "curves.h"
#include "fsutil.h"
#include "testutil.h"

/* ---- a tiny well-formedness check: nested tags, quoted attributes,
 * escaped character data ---- */

static int well_formed(const char *s, char *why, size_t whyn)
{
    char stack[64][32];
    int depth = 0, roots = 0;
    const char *p = s;
    if (strncmp(p, "<?xml", 5) == 0) {
        p = strstr(p, "?>");
        if (!p)
            return snprintf(why, whyn, "unterminated XML declaration"), 0;
        p += 2;
    }
    while (*p) {
        if (*p != '<') {
            if (*p == '&') {
                const char *q = p + 1;
                while ((*q >= 'a' && *q <= 'z') || *q == '#' || (*q >= '0' && *q <= '9'))
                    q++;
                if (*q != ';' || q == p + 1)
                    return snprintf(why, whyn, "bare & at offset %ld", (long)(p - s)), 0;
            }
            if (*p == '>')
                return snprintf(why, whyn, "bare > at offset %ld", (long)(p - s)), 0;
            if (depth == 0 && !(*p == '\n' || *p == ' '))
                return snprintf(why, whyn, "text outside the root at %ld", (long)(p - s)), 0;
            p++;
            continue;
        }
        if (strncmp(p, "<!--", 4) == 0) {
            const char *q = strstr(p, "-->");
            if (!q)
                return snprintf(why, whyn, "unterminated comment"), 0;
            p = q + 3;
            continue;
        }
        int closing = p[1] == '/';
        const char *nm = p + 1 + closing, *q = nm;
        while (*q && *q != ' ' && *q != '>' && *q != '/' && *q != '\n')
            q++;
        size_t nl = (size_t)(q - nm);
        if (nl == 0 || nl >= 32)
            return snprintf(why, whyn, "bad tag name at %ld", (long)(p - s)), 0;
        /* attributes: quoted values, no < inside the tag */
        char quote = 0;
        while (*q && (quote || *q != '>')) {
            if (quote) {
                if (*q == quote)
                    quote = 0;
                else if (*q == '<')
                    return snprintf(why, whyn, "< in an attribute at %ld", (long)(q - s)), 0;
            } else if (*q == '"' || *q == '\'') {
                quote = *q;
            } else if (*q == '<') {
                return snprintf(why, whyn, "< inside a tag at %ld", (long)(q - s)), 0;
            }
            q++;
        }
        if (!*q)
            return snprintf(why, whyn, "unterminated tag at %ld", (long)(p - s)), 0;
        int self = q[-1] == '/';
        if (closing) {
            if (depth == 0 || strlen(stack[depth - 1]) != nl || strncmp(stack[depth - 1], nm, nl))
                return snprintf(why, whyn, "</%.*s> does not close <%s>", (int)nl, nm,
                                depth ? stack[depth - 1] : "(nothing)"),
                       0;
            depth--;
        } else if (!self) {
            if (depth == 0 && roots++)
                return snprintf(why, whyn, "a second root element"), 0;
            if (depth == 64)
                return snprintf(why, whyn, "nested too deep"), 0;
            snprintf(stack[depth++], 32, "%.*s", (int)nl, nm);
        }
        p = q + 1;
    }
    if (depth)
        return snprintf(why, whyn, "<%s> is never closed", stack[depth - 1]), 0;
    if (roots != 1)
        return snprintf(why, whyn, "no root element"), 0;
    return 1;
}

static int have_xmllint = -1;

/* Both checks; xmllint when it is installed (Debian libxml2-utils). */
static void check_xml(const char *svg, size_t len, const char *what)
{
    char why[256] = "";
    CHECK(well_formed(svg, why, sizeof why), "%s: not well-formed: %s", what, why);
    CHECK(strlen(svg) == len, "%s: length %zu, strlen %zu", what, len, strlen(svg));
    if (have_xmllint < 0) {
        have_xmllint = system("xmllint --version >/dev/null 2>&1") == 0;
        if (!have_xmllint)
            printf("note: xmllint not installed (apt-get install libxml2-utils); tag check only\n");
    }
    if (!have_xmllint)
        return;
    char path[] = "/tmp/nllm_test_curves_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0)
        return;
    CHECK(write(fd, svg, len) == (ssize_t)len, "write");
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "xmllint --noout %s", path);
    CHECK(system(cmd) == 0, "%s: xmllint rejects the SVG", what);
    unlink(path);
}

static size_t count(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* 12 epochs, val loss lowest at epoch 7, val missing at epoch 3. */
static void history12(nllm_curve_point_t *pts)
{
    for (int i = 0; i < 12; i++) {
        int e = i + 1;
        double tl = 5.0 - 0.3 * i;
        double vl = 3.0 + 0.04 * (e - 7) * (e - 7);
        pts[i] = (nllm_curve_point_t){e, tl, vl, exp(tl), exp(vl)};
    }
    pts[2].val_loss = NAN;
    pts[2].val_ppl = NAN;
}

static char *render(const nllm_curve_point_t *pts, size_t n, const char *title, int best,
                    const char *what)
{
    char *svg = NULL;
    size_t len = 0;
    nllm_err_t err = {0};
    int rc = nllm_curves_svg(pts, n, title, best, &svg, &len, &err);
    CHECK(rc == 0 && svg, "%s: nllm_curves_svg: %d %s", what, rc, err.msg);
    if (!svg)
        return NULL;
    check_xml(svg, len, what);
    CHECK(!strstr(svg, "nan") && !strstr(svg, "inf"), "%s: a non-finite number was printed",
          what);
    return svg;
}

static void test_known_history(void)
{
    nllm_curve_point_t pts[12];
    history12(pts);
    char *svg = render(pts, 12, "wiki: training curves", -1, "12 epochs");
    if (!svg)
        return;
    CHECK(count(svg, "class=\"panel\"") == 2, "two panels");
    CHECK(strstr(svg, "id=\"panel-loss\"") && strstr(svg, "id=\"panel-perplexity\""),
          "loss and perplexity panels");
    CHECK(strstr(svg, "<title>wiki: training curves</title>"), "title");
    CHECK(count(svg, "class=\"legend\"") == 2, "a legend per panel");
    CHECK(strstr(svg, ">train loss<") && strstr(svg, ">val loss<") &&
              strstr(svg, ">train ppl<") && strstr(svg, ">val ppl<"),
          "legend texts");
    char want[128];
    snprintf(want, sizeof want, "best: epoch 7, val loss %.4f", 3.0);
    CHECK(strstr(svg, want), "best label \"%s\"", want);
    CHECK(strstr(svg, "best: epoch 7, val ppl"), "best label in the perplexity panel");
    CHECK(count(svg, "class=\"best-marker\"") == 2, "best marker in both panels");
    CHECK(count(svg, "stroke-dasharray") == 2, "dashed best line in both panels");
    CHECK(count(svg, ">epoch</text>") == 2, "x axis labels");
    CHECK(strstr(svg, "class=\"ylabel\"") && strstr(svg, ">loss</text>") &&
              strstr(svg, ">perplexity</text>"),
          "y axis labels");
    CHECK(!strstr(svg, "log scale"), "linear perplexity for a 30x range");
    /* epochs 1..12: ticks every 2 epochs; loss 1.7..5: whole numbers */
    for (int e = 2; e <= 12; e += 2) {
        char t[64];
        snprintf(t, sizeof t, "font-size=\"11\">%d</text>", e);
        CHECK(strstr(svg, t), "x tick %d", e);
    }
    CHECK(count(svg, "class=\"xtick\"") == 12, "x ticks (6 per panel): %zu",
          count(svg, "class=\"xtick\""));
    CHECK(strstr(svg, "class=\"ytick\" ") && strstr(svg, ">5</text>") && strstr(svg, ">2</text>"),
          "y tick labels");
    /* the NaN breaks the val line: two M commands in the val path */
    const char *vp = strstr(svg, "class=\"val\"");
    const char *d = vp ? strstr(vp, "d=\"") : NULL;
    const char *end = d ? strchr(d + 3, '"') : NULL;
    size_t moves = 0;
    for (const char *q = d; q && q < end; q++)
        moves += *q == 'M';
    CHECK(moves == 2, "the val line breaks at the missing epoch: %zu moves", moves);
    free(svg);
}

static void test_order_and_explicit_best(void)
{
    nllm_curve_point_t pts[12], rev[12];
    history12(pts);
    for (int i = 0; i < 12; i++)
        rev[i] = pts[11 - i];
    char *a = render(pts, 12, NULL, -1, "sorted"), *b = render(rev, 12, NULL, -1, "reversed");
    CHECK(a && b && strcmp(a, b) == 0, "input order does not matter");
    CHECK(a && strstr(a, "<title>Training curves</title>"), "default title");
    free(a);
    free(b);
    char *c = render(pts, 12, NULL, 5, "best 5");
    CHECK(c && strstr(c, "best: epoch 5, val loss"), "explicit best epoch");
    free(c);
    char *d = render(pts, 12, NULL, 0, "no best");
    CHECK(d && !strstr(d, "best:") && !strstr(d, "best-marker"), "best 0 marks nothing");
    free(d);
    char *e = render(pts, 12, NULL, 3, "best on a missing val");
    CHECK(e && strstr(e, ">best: epoch 3<") && !strstr(e, "best-marker"),
          "best on an epoch without val: line and label, no marker");
    free(e);
}

static void test_one_epoch(void)
{
    nllm_curve_point_t p = {1, 4.5, 4.4, exp(4.5), exp(4.4)};
    char *svg = render(&p, 1, "one", -1, "1 epoch");
    if (!svg)
        return;
    CHECK(count(svg, "class=\"panel\"") == 2, "two panels");
    CHECK(strstr(svg, "best: epoch 1, val loss 4.4000"), "best label");
    CHECK(count(svg, "<circle") >= 4, "single points drawn as markers");
    CHECK(strstr(svg, "font-size=\"11\">1</text>"), "x tick 1");
    free(svg);
}

static void test_no_val(void)
{
    nllm_curve_point_t pts[5];
    for (int i = 0; i < 5; i++)
        pts[i] = (nllm_curve_point_t){i + 1, 3.0 - 0.2 * i, NAN, exp(3.0 - 0.2 * i), NAN};
    char *svg = render(pts, 5, "noval", -1, "all-NaN val");
    if (!svg)
        return;
    CHECK(!strstr(svg, "best:") && !strstr(svg, "best-marker"), "no best without val");
    CHECK(strstr(svg, ">val loss (no data)<") && strstr(svg, ">val ppl (no data)<"),
          "legend says val has no data");
    CHECK(strstr(svg, ">train loss<"), "train legend");
    free(svg);

    nllm_curve_point_t all[3] = {{1, NAN, NAN, NAN, NAN}, {2, NAN, NAN, INFINITY, NAN},
                                 {3, NAN, NAN, NAN, -INFINITY}};
    svg = render(all, 3, "nothing", -1, "all missing");
    CHECK(svg && count(svg, ">no data</text>") == 2, "empty panels say no data");
    free(svg);
    svg = render(NULL, 0, "empty", -1, "0 epochs");
    CHECK(svg && count(svg, ">no epochs yet</text>") == 2, "no epochs yet");
    free(svg);
}

static void test_log_ppl(void)
{
    nllm_curve_point_t pts[20];
    for (int i = 0; i < 20; i++) {
        double tl = 14.0 - 0.6 * i, vl = 13.5 - 0.55 * i;
        pts[i] = (nllm_curve_point_t){i + 1, tl, vl, exp(tl), exp(vl)};
    }
    pts[4].train_ppl = INFINITY; /* exp overflowed */
    char *svg = render(pts, 20, "huge", -1, "ppl range > 1e4");
    if (!svg)
        return;
    CHECK(strstr(svg, ">perplexity (log scale)</text>"), "log scale axis label");
    CHECK(strstr(svg, "Perplexity (log scale)"), "log scale panel title");
    CHECK(count(svg, "log scale") == 2, "loss stays linear");
    CHECK(strstr(svg, ">1e6</text>") && strstr(svg, ">100</text>"), "decade tick labels");
    char want[64];
    snprintf(want, sizeof want, "best: epoch 20, val loss %.4f", 13.5 - 0.55 * 19);
    CHECK(strstr(svg, want), "best at the last epoch: %s", want);
    free(svg);
}

static void test_hostile_title(void)
{
    char *svg = render(NULL, 0, "a<b & \"c\" 'd' \x01 \xff\xfe ok\xc3\xa9", -1, "title");
    CHECK(svg && strstr(svg, "a&lt;b &amp; &quot;c&quot; &apos;d&apos;"), "title escaped");
    CHECK(svg && strstr(svg, "ok\xc3\xa9<"), "valid UTF-8 kept");
    free(svg);
    nllm_err_t err = {0};
    char *out = (char *)1;
    CHECK(nllm_curves_svg(NULL, 3, NULL, -1, &out, NULL, &err) == NLLM_EINVAL && !out,
          "NULL points with n > 0");
}

static void test_write(void)
{
    char dir[] = "/tmp/nllm_test_curves_dir_XXXXXX";
    CHECK(mkdtemp(dir), "mkdtemp");
    char path[256];
    snprintf(path, sizeof path, "%s/x_training_curves_final.svg", dir);
    nllm_curve_point_t pts[12];
    history12(pts);
    nllm_err_t err = {0};
    int rc = nllm_curves_write(path, pts, 12, "x", -1, &err);
    CHECK(rc == 0, "nllm_curves_write: %s", err.msg);
    uint8_t *buf = NULL;
    size_t len = 0;
    CHECK(nllm_fs_read_file(path, 1 << 20, &buf, &len, &err) == 0, "read back: %s", err.msg);
    char *svg = NULL;
    size_t slen = 0;
    nllm_curves_svg(pts, 12, "x", -1, &svg, &slen, &err);
    CHECK(buf && svg && len == slen && memcmp(buf, svg, len) == 0, "file holds the SVG");
    free(buf);
    free(svg);
    snprintf(path, sizeof path, "%s/missing/x.svg", dir);
    CHECK(nllm_curves_write(path, pts, 12, "x", -1, &err) == NLLM_ENOENT, "missing folder");
    snprintf(path, sizeof path, "%s/x_training_curves_final.svg", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    RUN(test_known_history);
    RUN(test_order_and_explicit_best);
    RUN(test_one_epoch);
    RUN(test_no_val);
    RUN(test_log_ppl);
    RUN(test_hostile_title);
    RUN(test_write);
    return TEST_REPORT();
}
