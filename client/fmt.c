/* fmt.c -- JSON field readers and text forms for nllmctl; see fmt.h. */
#include "fmt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *nllm_j_str(const json_t *obj, const char *key, const char *def)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : def;
}

int nllm_j_num(const json_t *obj, const char *key, double *v)
{
    const json_t *j = json_object_get(obj, key);
    if (!json_is_number(j))
        return 0;
    *v = json_number_value(j);
    return 1;
}

int64_t nllm_j_int(const json_t *obj, const char *key, int64_t def)
{
    const json_t *j = json_object_get(obj, key);
    if (json_is_integer(j))
        return (int64_t)json_integer_value(j);
    if (json_is_real(j))
        return (int64_t)json_real_value(j);
    if (json_is_string(j)) { /* config values may travel as text */
        char *end;
        long long x = strtoll(json_string_value(j), &end, 10);
        if (end != json_string_value(j) && !*end)
            return x;
    }
    return def;
}

int nllm_j_bool(const json_t *obj, const char *key, int def)
{
    const json_t *j = json_object_get(obj, key);
    if (json_is_boolean(j))
        return json_is_true(j);
    if (json_is_integer(j))
        return json_integer_value(j) != 0;
    return def;
}

void nllm_fmt_duration(double s, char *buf, size_t n)
{
    if (!isfinite(s) || s < 0 || s > 1e9) {
        snprintf(buf, n, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, n, "%02ld:%02ld", t / 60, t % 60);
}

void nllm_fmt_size(double b, char *buf, size_t n)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, n, "%.0f B", b);
    else
        snprintf(buf, n, "%.1f %s", b, unit[u]);
}

void nllm_fmt_count(double x, char *buf, size_t n)
{
    if (!isfinite(x))
        snprintf(buf, n, "-");
    else if (fabs(x) >= 1e9)
        snprintf(buf, n, "%.2fG", x / 1e9);
    else if (fabs(x) >= 1e6)
        snprintf(buf, n, "%.2fM", x / 1e6);
    else if (fabs(x) >= 1e4)
        snprintf(buf, n, "%.1fk", x / 1e3);
    else
        snprintf(buf, n, "%.0f", x);
}

void nllm_fmt_time(double t, char *buf, size_t n)
{
    if (!(t > 0) || !isfinite(t)) {
        snprintf(buf, n, "-");
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    if (!localtime_r(&tt, &tm)) {
        snprintf(buf, n, "%.0f", t);
        return;
    }
    char date[40];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    long off = tm.tm_gmtoff;
    if (off == 0) {
        snprintf(buf, n, "%sZ", date);
        return;
    }
    char sign = off < 0 ? '-' : '+';
    off = labs(off);
    snprintf(buf, n, "%s%c%02ld:%02ld", date, sign, off / 3600, off / 60 % 60);
}

void nllm_fmt_field(const json_t *obj, const char *key, int prec, char *buf, size_t n)
{
    double v;
    if (nllm_j_num(obj, key, &v))
        snprintf(buf, n, "%.*f", prec, v);
    else
        snprintf(buf, n, "-");
}

void nllm_fmt_percent_field(const json_t *obj, const char *key, char *buf, size_t n)
{
    double v;
    if (nllm_j_num(obj, key, &v))
        snprintf(buf, n, "%.2f%%", v * 100);
    else
        snprintf(buf, n, "-");
}

double nllm_model_params_of(const json_t *c)
{
    double V = (double)nllm_j_int(c, "vocab_size", 0), De = (double)nllm_j_int(c, "embed_dim", 0);
    double H = (double)nllm_j_int(c, "hidden_dim", 0), Dc = (double)nllm_j_int(c, "context_dim", 0);
    double L = (double)nllm_j_int(c, "num_layers", 0);
    if (V <= 0 || De <= 0 || H <= 0 || Dc <= 0 || L <= 0)
        return 0;
    return V * De                    /* token_embedding */
           + (De + Dc) * H + H       /* fnn_layers.0 */
           + (L - 1) * (H * H + H)   /* fnn_layers.3k, k >= 1 */
           + V * H + V               /* token_output */
           + 3 * (Dc * H + Dc)       /* context_update, forget_gate, input_gate */
           + 2 * Dc;                 /* context_norm */
}

const char *nllm_fmt_devices(const json_t *st, char *buf, size_t n, const char *def)
{
    const json_t *a = json_object_get(st, "devices");
    size_t k = json_is_array(a) ? json_array_size(a) : 0;
    if (k == 0) {
        const char *dev = nllm_j_str(st, "device", NULL);
        snprintf(buf, n, "%s", dev && *dev ? dev : def);
        return buf;
    }
    const char *first = json_string_value(json_array_get(a, 0));
    int same = 1;
    for (size_t i = 1; i < k; i++) {
        const char *d = json_string_value(json_array_get(a, i));
        same &= first && d && !strcmp(first, d);
    }
    if (k > 1 && same) {
        snprintf(buf, n, "%s x%zu", first, k);
        return buf;
    }
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < k && used < n; i++) {
        const char *d = json_string_value(json_array_get(a, i));
        used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? "," : "", d ? d : "?");
    }
    return buf;
}
