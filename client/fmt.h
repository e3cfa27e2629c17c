/* fmt.h -- small helpers nllmctl's printers share: typed reads of JSON
 * fields that tolerate absent or null values, and text forms of durations,
 * sizes, times and counts. Pure functions, no I/O except where named.
 * Callers: client/nllmctl.c, client/watch.c.
 */
#ifndef NLLM_CLIENT_FMT_H
#define NLLM_CLIENT_FMT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* obj[key] as a string, or def when absent, null or not a string. */
const char *nllm_j_str(const json_t *obj, const char *key, const char *def);
/* obj[key] as a number; returns 0 (and leaves *v) when absent/null/not numeric. */
int nllm_j_num(const json_t *obj, const char *key, double *v);
/* obj[key] as an integer (a real is truncated), or def. */
int64_t nllm_j_int(const json_t *obj, const char *key, int64_t def);
int nllm_j_bool(const json_t *obj, const char *key, int def);

/* "1:02:03" or "02:03"; "--:--" for a negative or non-finite value. */
void nllm_fmt_duration(double seconds, char *buf, size_t n);
/* "12.3 MiB" */
void nllm_fmt_size(double bytes, char *buf, size_t n);
/* "4.63M", "12.3k", "950" */
void nllm_fmt_count(double x, char *buf, size_t n);
/* Unix seconds as local ISO 8601 with offset: "2025-01-31T12:00:00+01:00";
 * "-" when t <= 0. */
void nllm_fmt_time(double t, char *buf, size_t n);
/* A number with %.*f, or "-" when the field is absent/null. */
void nllm_fmt_field(const json_t *obj, const char *key, int prec, char *buf, size_t n);
/* A fraction as a percentage with two decimals ("12.34%"), or "-" when the
 * field is absent/null. */
void nllm_fmt_percent_field(const json_t *obj, const char *key, char *buf, size_t n);

/* The devices of a job's status (its "devices" array while it runs):
 * "cpu", "cpu x2" (ranks sharing one device), "cuda:0,cuda:1"; else its
 * single "device", else def. */
const char *nllm_fmt_devices(const json_t *st, char *buf, size_t n, const char *def);

/* Parameter count of the model a config map (vocab_size, ...) describes;
 * 0 when a field is missing. Mirrors model.md's parameter table. */
double nllm_model_params_of(const json_t *config);

#endif /* NLLM_CLIENT_FMT_H */
