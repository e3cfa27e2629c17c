/* config.c -- the job configuration table and its text/JSON forms; see
 * config.h. Every key appears once in `fields`; adding a setting means
 * adding a row there and a member in nllm_job_config_t. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { F_I32, F_F32, F_F64, F_U64, F_PATH, F_TOK, F_CLIP, F_BOOL, F_DEV, F_PREC, F_DIV,
               F_FAULT,
               F_FRAC /* a double in the open range (lo, hi) */ } ftype_t;

typedef struct {
    const char *key;
    ftype_t type;
    size_t off;
    double lo, hi;  /* numeric range */
    int model;      /* 1: part of the model shape, 2: of the data and init (seed): neither
                     * may change on resume; 0: training-only, may change */
    const char *help;
} field_t;

#define OFF(m) offsetof(nllm_job_config_t, m)

static const field_t fields[] = {
    {"vocab_size", F_I32, OFF(model.vocab_size), 5, 1 << 24, 1, "vocabulary size V"},
    {"embed_dim", F_I32, OFF(model.embed_dim), 1, NLLM_DIM_MAX, 1, "token embedding size De"},
    {"hidden_dim", F_I32, OFF(model.hidden_dim), 1, NLLM_DIM_MAX, 1, "feed-forward width H"},
    {"context_dim", F_I32, OFF(model.context_dim), 2, NLLM_DIM_MAX, 1, "context vector size Dc"},
    {"num_layers", F_I32, OFF(model.num_layers), 1, 1024, 1, "feed-forward layers L"},
    {"max_seq_length", F_I32, OFF(model.max_seq_length), 2, NLLM_DIM_MAX, 1,
     "tokens per window S"},
    {"dropout", F_F32, OFF(model.dropout), 0, 0.99, 0, "dropout after every ReLU"},
    {"data", F_PATH, OFF(data), 0, 0, 2, "training text file"},
    {"val", F_PATH, OFF(val), 0, 0, 2, "validation text file (empty: split off training)"},
    {"tokenizer", F_TOK, OFF(tokenizer), 0, 0, 2, "word or byte"},
    {"val_fraction", F_F64, OFF(val_fraction), 0.001, 0.9, 2,
     "share of paragraphs held out when no val file is given"},
    {"num_epochs", F_I32, OFF(num_epochs), 1, 1000000, 0, "epochs to train"},
    {"batch_size", F_I32, OFF(batch_size), 1, 1 << 20, 0, "windows per step"},
    {"learning_rate", F_F64, OFF(learning_rate), 0, 10, 0, "Adam learning rate"},
    {"beta1", F_F64, OFF(beta1), 0, 0.999999, 0, "Adam beta1"},
    {"beta2", F_F64, OFF(beta2), 0, 0.99999999, 0, "Adam beta2"},
    {"eps", F_F64, OFF(eps), 0, 1, 0, "Adam epsilon"},
    {"weight_decay", F_F64, OFF(weight_decay), 0, 10, 0, "L2 added to the gradient"},
    {"clip", F_CLIP, OFF(clip_mode), 0, 1e6, 0,
     "max gradient norm: reference (0.5/1.0/2.0 by epoch), a number, or none"},
    {"patience", F_I32, OFF(patience), 0, 1000000, 0, "early-stopping patience (0: off)"},
    {"min_delta", F_F64, OFF(min_delta), 0, 1e6, 0, "improvement that resets patience"},
    {"reset_patience", F_BOOL, OFF(reset_patience), 0, 1, 0,
     "restart the patience counter on resume"},
    {"seed", F_U64, OFF(seed), 0, 0, 2, "seed of init, data order and dropout"},
    {"save_every", F_I32, OFF(save_every), 1, 1000000, 0, "epochs between periodic checkpoints"},
    {"keep", F_I32, OFF(keep), 0, 1000000, 0, "periodic checkpoints kept (0: all)"},
    {"on_divergence", F_DIV, OFF(on_divergence), 0, 0, 0,
     "on a non-finite gradient norm: rollback (to the newest checkpoint with a finite val "
     "loss, lr times divergence_lr_factor) or fail"},
    {"divergence_lr_factor", F_FRAC, OFF(divergence_lr_factor), 0, 1, 0,
     "learning-rate factor of each rollback"},
    {"divergence_retries", F_I32, OFF(divergence_retries), 0, 100, 0,
     "rollbacks before a diverging job fails"},
    {"on_device_fault", F_FAULT, OFF(on_device_fault), 0, 0, 0,
     "when the job's device faults: requeue (from the latest checkpoint, onto a healthy "
     "device; at most 3 times) or fail"},
    {"device", F_DEV, OFF(device), 0, 0, 0,
     "cpu, cuda:N, cuda (any GPU), a list cuda:0,cuda:1 (one rank each), or empty for any "
     "free device"},
    {"num_devices", F_I32, OFF(num_devices), 1, NLLM_MAX_JOB_DEVICES, 0,
     "devices the job trains on at once, data-parallel: GPUs of their own, or ranks sharing "
     "the cpu; batch_size is the global batch and must divide by it"},
    {"threads", F_I32, OFF(threads), 0, 4096, 0,
     "CPU threads (0: all), split among the job's ranks on the cpu"},
    {"precision", F_PREC, OFF(precision), 0, 0, 0,
     "GEMM arithmetic: fp32, tf32 or bf16 (tf32 and bf16 need a CUDA device)"},
};
#define NFIELDS (sizeof fields / sizeof fields[0])

/* Aliases accepted in job files and JSON (the client's flag spellings). */
static const struct {
    const char *alias, *key;
} aliases[] = {
    {"epochs", "num_epochs"}, {"batch", "batch_size"},    {"lr", "learning_rate"},
    {"seq_len", "max_seq_length"}, {"vocab", "vocab_size"}, {"layers", "num_layers"},
    {"train", "data"},
};

const char *const *nllm_job_config_keys(void)
{
    static const char *keys[NFIELDS + 1];
    for (size_t i = 0; i < NFIELDS; i++)
        keys[i] = fields[i].key;
    keys[NFIELDS] = NULL;
    return keys;
}

void nllm_job_config_defaults(nllm_job_config_t *c)
{
    memset(c, 0, sizeof *c);
    nllm_model_config_t m = NLLM_MODEL_CONFIG_DEFAULT;
    c->model = m;
    c->tokenizer = NLLM_TOK_WORD;
    c->val_fraction = 0.1;
    c->num_epochs = 50;
    c->batch_size = 512;
    c->learning_rate = 1e-4;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->eps = 1e-8;
    c->weight_decay = 0.0;
    c->clip_mode = NLLM_CLIP_REFERENCE;
    c->clip_value = 0.0;
    c->patience = 15;
    c->min_delta = 0.001;
    c->reset_patience = 0;
    c->seed = 42;
    c->save_every = 5;
    c->keep = 0;
    c->on_divergence = NLLM_DIV_ROLLBACK;
    c->divergence_lr_factor = 0.5;
    c->divergence_retries = 3;
    c->on_device_fault = NLLM_FAULT_REQUEUE;
    c->threads = 0;
    c->num_devices = 1;
    c->precision = NLLM_PREC_FP32;
}

/* device: "", "cpu", "cuda" (any GPU), "cuda:N", or a list of two or more
 * distinct cuda:N, which also sets num_devices to their count. Stored
 * normalised ("cuda:007" -> cuda:7). */
static int set_device(nllm_job_config_t *c, const char *v, nllm_err_t *err)
{
    if (!v[0] || !strcmp(v, "cpu") || !strcmp(v, "cuda")) {
        snprintf(c->device, sizeof c->device, "%s", v);
        return 0;
    }
    char out[sizeof c->device];
    size_t used = 0;
    int n = 0;
    long ids[NLLM_MAX_JOB_DEVICES];
    for (const char *p = v;; n++) {
        size_t len = strcspn(p, ",");
        char *end = NULL;
        long id = -1;
        /* digits only: strtol would skip white space (the fuzzer's
         * "cuda:   ...0" was stored cut to 31 bytes, which no longer
         * parsed) */
        if (len > 5 && strncmp(p, "cuda:", 5) == 0 && isdigit((unsigned char)p[5]))
            id = strtol(p + 5, &end, 10);
        if (id < 0 || id > 1023 || end != p + len) {
            if (strchr(v, ','))
                return nllm_err_set(err, NLLM_EINVAL,
                                    "device: a list names GPUs only, cuda:N,cuda:M,... (e.g. "
                                    "cuda:0,cuda:1), not \"%.*s\" in \"%.64s\"",
                                    (int)(len < 64 ? len : 64), p, v);
            return nllm_err_set(err, NLLM_EINVAL,
                                "device must be cpu, cuda:N (e.g. cuda:0), cuda (any GPU) or a "
                                "list cuda:0,cuda:1, not \"%.64s\"",
                                v);
        }
        if (n >= NLLM_MAX_JOB_DEVICES)
            return nllm_err_set(err, NLLM_EINVAL, "device: more than %d GPUs listed",
                                NLLM_MAX_JOB_DEVICES);
        for (int k = 0; k < n; k++)
            if (ids[k] == id)
                return nllm_err_set(err, NLLM_EINVAL,
                                    "device: cuda:%ld is listed twice in \"%.64s\": each rank "
                                    "needs a GPU of its own",
                                    id, v);
        ids[n] = id;
        used += (size_t)snprintf(out + used, sizeof out - used, "%scuda:%ld", n ? "," : "", id);
        p += len;
        if (!*p)
            break;
        p++; /* the comma: an item must follow */
    }
    n++;
    if (used >= sizeof out)
        return nllm_err_set(err, NLLM_EINVAL, "device: the list \"%.64s...\" is too long", v);
    memcpy(c->device, out, used + 1);
    if (n > 1)
        c->num_devices = n;
    return 0;
}

static const field_t *find_field(const char *key)
{
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(key, aliases[i].alias) == 0)
            key = aliases[i].key;
    for (size_t i = 0; i < NFIELDS; i++)
        if (strcmp(fields[i].key, key) == 0)
            return &fields[i];
    return NULL;
}

/* A bound as text: whole numbers in full ("1000000"), others in the
 * shortest form that reads back the same ("0.99999999", not "1"). */
static void bound_text(double x, char *buf, size_t n)
{
    if (x == floor(x) && fabs(x) < 1e15) {
        snprintf(buf, n, "%.0f", x);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            return;
    }
}

/* An overflow (inf) is out of range; an underflow reads as the nearest
 * double, like any other rounding. F_FRAC bounds are excluded. */
static int in_range(const field_t *f, double x)
{
    if (isinf(x))
        return 0;
    return f->type == F_FRAC ? x > f->lo && x < f->hi : x >= f->lo && x <= f->hi;
}

/* "KEY = VALUE is out of range: use LO..HI, both included (help)": every
 * numeric key's refusal names the key, the value given and the range. */
static int range_err(const field_t *f, const char *value, nllm_err_t *err)
{
    char lo[32], hi[32];
    bound_text(f->lo, lo, sizeof lo);
    bound_text(f->hi, hi, sizeof hi);
    if (f->type == F_U64)
        return nllm_err_set(err, NLLM_EINVAL,
                            "%s = %.64s is out of range: use 0..%llu, both included (%s)", f->key,
                            value, (unsigned long long)UINT64_MAX, f->help);
    if (f->type == F_FRAC)
        return nllm_err_set(err, NLLM_EINVAL,
                            "%s = %.64s is out of range: use a number in (%s, %s), both "
                            "excluded (%s)",
                            f->key, value, lo, hi, f->help);
    if (f->type == F_CLIP)
        return nllm_err_set(err, NLLM_EINVAL,
                            "%s = %.64s is out of range: use a number above 0 (excluded) and "
                            "at most %s (included), or reference or none",
                            f->key, value, hi);
    return nllm_err_set(err, NLLM_EINVAL, "%s = %.64s is out of range: use %s..%s, both included "
                        "(%s)", f->key, value, lo, hi, f->help);
}

static int set_field(nllm_job_config_t *c, const field_t *f, const char *v, nllm_err_t *err)
{
    char *base = (char *)c + f->off;
    char *end = NULL;
    errno = 0;
    switch (f->type) {
    case F_I32: {
        long long x = strtoll(v, &end, 10);
        if (end == v || *end || (errno && errno != ERANGE))
            return nllm_err_set(err, NLLM_EINVAL, "%s must be an integer, not \"%s\" (%s)",
                                f->key, v, f->help);
        if (errno == ERANGE || x < f->lo || x > f->hi)
            return range_err(f, v, err);
        *(int32_t *)base = (int32_t)x;
        return 0;
    }
    case F_U64: {
        unsigned long long x = strtoull(v, &end, 10);
        if (end == v || *end || (errno && errno != ERANGE))
            return nllm_err_set(err, NLLM_EINVAL, "%s must be an integer, not \"%s\" (%s)",
                                f->key, v, f->help);
        const char *d = v;
        while (isspace((unsigned char)*d))
            d++;
        if (errno == ERANGE || *d == '-') /* strtoull takes "-1" as UINT64_MAX */
            return range_err(f, v, err);
        *(uint64_t *)base = (uint64_t)x;
        return 0;
    }
    case F_F32:
    case F_F64:
    case F_FRAC: {
        double x = strtod(v, &end);
        if (end == v || *end || (errno && errno != ERANGE) || isnan(x))
            return nllm_err_set(err, NLLM_EINVAL, "%s must be a number, not \"%s\" (%s)",
                                f->key, v, f->help);
        if (!in_range(f, x))
            return range_err(f, v, err);
        if (f->type == F_F32)
            *(float *)base = (float)x;
        else
            *(double *)base = x;
        return 0;
    }
    case F_PATH: {
        if (strlen(v) >= NLLM_PATH_MAX)
            return nllm_err_set(err, NLLM_EINVAL, "%s: path is longer than %d bytes", f->key,
                                NLLM_PATH_MAX - 1);
        json_t *utf8 = json_string(v); /* settings are stored as JSON: UTF-8 only */
        if (!utf8)
            return nllm_err_set(err, NLLM_EINVAL,
                                "%s: path is not valid UTF-8 (job settings are stored as "
                                "JSON): rename the file or link it under a UTF-8 name",
                                f->key);
        json_decref(utf8);
        snprintf(base, NLLM_PATH_MAX, "%s", v);
        return 0;
    }
    case F_TOK:
        if (strcmp(v, "word") == 0)
            c->tokenizer = NLLM_TOK_WORD;
        else if (strcmp(v, "byte") == 0)
            c->tokenizer = NLLM_TOK_BYTE;
        else
            return nllm_err_set(err, NLLM_EINVAL, "tokenizer must be word or byte, not \"%s\"",
                                v);
        return 0;
    case F_CLIP:
        if (strcmp(v, "reference") == 0) {
            c->clip_mode = NLLM_CLIP_REFERENCE;
            c->clip_value = 0;
        } else if (strcmp(v, "none") == 0) {
            c->clip_mode = NLLM_CLIP_NONE;
            c->clip_value = 0;
        } else {
            double x = strtod(v, &end);
            if (end == v || *end || (errno && errno != ERANGE) || isnan(x)) {
                char hi[32];
                bound_text(f->hi, hi, sizeof hi);
                return nllm_err_set(err, NLLM_EINVAL,
                                    "clip must be reference, none or a number above 0 and at "
                                    "most %s, not \"%.64s\"",
                                    hi, v);
            }
            if (isinf(x) || x <= 0 || x > f->hi)
                return range_err(f, v, err);
            c->clip_mode = NLLM_CLIP_FIXED;
            c->clip_value = x;
        }
        return 0;
    case F_BOOL:
        if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on"))
            *(int32_t *)base = 1;
        else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") ||
                 !strcmp(v, "off"))
            *(int32_t *)base = 0;
        else
            return nllm_err_set(err, NLLM_EINVAL, "%s must be true or false, not \"%s\"", f->key,
                                v);
        return 0;
    case F_DEV:
        return set_device(c, v, err);
    case F_DIV:
        if (strcmp(v, "rollback") == 0)
            c->on_divergence = NLLM_DIV_ROLLBACK;
        else if (strcmp(v, "fail") == 0)
            c->on_divergence = NLLM_DIV_FAIL;
        else
            return nllm_err_set(err, NLLM_EINVAL,
                                "%s must be rollback or fail, not \"%.64s\"", f->key, v);
        return 0;
    case F_FAULT:
        if (strcmp(v, "requeue") == 0)
            c->on_device_fault = NLLM_FAULT_REQUEUE;
        else if (strcmp(v, "fail") == 0)
            c->on_device_fault = NLLM_FAULT_FAIL;
        else
            return nllm_err_set(err, NLLM_EINVAL,
                                "%s must be requeue or fail, not \"%.64s\"", f->key, v);
        return 0;
    case F_PREC: {
        nllm_precision_t p;
        if (nllm_precision_parse(v, &p, NULL) < 0)
            return nllm_err_set(err, NLLM_EINVAL, "%s must be fp32, tf32 or bf16, not \"%.64s\"",
                                f->key, v);
        c->precision = p;
        return 0;
    }
    }
    return nllm_err_set(err, NLLM_EINTERNAL, "config field %s has no type", f->key);
}

int nllm_job_config_set(nllm_job_config_t *c, const char *key, const char *value,
                        nllm_err_t *err)
{
    const field_t *f = find_field(key);
    if (!f)
        return nllm_err_set(err, NLLM_EINVAL,
                            "unknown setting \"%s\": see `nllmctl start --help` for the list",
                            key);
    return set_field(c, f, value, err);
}

int nllm_job_config_check(const nllm_job_config_t *c, nllm_err_t *err)
{
    int rc = nllm_model_config_check(&c->model, err);
    if (rc < 0)
        return rc;
    if (!(c->model.dropout >= 0.0f && c->model.dropout <= 0.99f)) {
        char v[64];
        snprintf(v, sizeof v, "%g", (double)c->model.dropout);
        return range_err(find_field("dropout"), v, err);
    }
    if (!c->data[0])
        return nllm_err_set(err, NLLM_EINVAL, "data: no training text given: pass --data FILE");
    for (size_t i = 0; i < NFIELDS; i++) {
        const field_t *f = &fields[i];
        const char *base = (const char *)c + f->off;
        double x;
        if (f->type == F_I32)
            x = *(const int32_t *)base;
        else if (f->type == F_F64 || f->type == F_FRAC)
            x = *(const double *)base;
        else
            continue;
        if (!in_range(f, x)) {
            char v[64];
            snprintf(v, sizeof v, "%g", x);
            return range_err(f, v, err);
        }
    }
    if (c->tokenizer == NLLM_TOK_BYTE && c->model.vocab_size != NLLM_BYTE_VOCAB)
        return nllm_err_set(err, NLLM_EINVAL,
                            "vocab_size = %d does not fit the byte tokenizer, which has %d ids: "
                            "set --vocab %d",
                            c->model.vocab_size, NLLM_BYTE_VOCAB, NLLM_BYTE_VOCAB);
    const field_t *clip = find_field("clip");
    if (c->clip_mode == NLLM_CLIP_FIXED && !(c->clip_value > 0 && c->clip_value <= clip->hi)) {
        char v[64];
        snprintf(v, sizeof v, "%g", c->clip_value);
        return range_err(clip, v, err);
    }
    return nllm_job_config_check_devices(c, err);
}

int nllm_job_config_check_devices(const nllm_job_config_t *c, nllm_err_t *err)
{
    const int nd = c->num_devices;
    if (nd < 1 || nd > NLLM_MAX_JOB_DEVICES) {
        char v[32];
        snprintf(v, sizeof v, "%d", nd);
        return range_err(find_field("num_devices"), v, err);
    }
    int listed = 1;
    for (const char *p = c->device; *p; p++)
        listed += *p == ',';
    if (listed > 1 && listed != nd)
        return nllm_err_set(err, NLLM_EINVAL,
                            "device lists %d GPUs (%s) but num_devices is %d: one rank runs on "
                            "each GPU listed, so give as many",
                            listed, c->device, nd);
    if (listed == 1 && nd > 1 && !strncmp(c->device, "cuda:", 5))
        return nllm_err_set(err, NLLM_EINVAL,
                            "device %s is one GPU but num_devices is %d: each rank needs a GPU "
                            "of its own; list %d GPUs (device cuda:0,cuda:1,...), or take any %d "
                            "with device cuda (nllmctl start --gpus %d)",
                            c->device, nd, nd, nd, nd);
    if (c->batch_size % nd != 0) {
        int lo = c->batch_size / nd * nd, hi = lo + nd;
        char alts[64];
        if (lo > 0)
            snprintf(alts, sizeof alts, "%d or %d", lo, hi);
        else
            snprintf(alts, sizeof alts, "%d", hi);
        return nllm_err_set(err, NLLM_EINVAL,
                            "batch_size %d does not divide by num_devices %d: batch_size is the "
                            "global batch, split evenly over the job's devices; use a multiple "
                            "of %d (such as %s), or a num_devices that divides %d",
                            c->batch_size, nd, nd, alts, c->batch_size);
    }
    return 0;
}

/* ---- text forms -------------------------------------------------------- */

static void field_text(const nllm_job_config_t *c, const field_t *f, char *buf, size_t n)
{
    const char *base = (const char *)c + f->off;
    switch (f->type) {
    case F_I32:
    case F_BOOL:
        snprintf(buf, n, "%d", *(const int32_t *)base);
        break;
    case F_U64:
        snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)base);
        break;
    case F_F32:
        snprintf(buf, n, "%.9g", (double)*(const float *)base);
        break;
    case F_F64:
    case F_FRAC:
        snprintf(buf, n, "%.17g", *(const double *)base);
        break;
    case F_PATH:
    case F_DEV:
        snprintf(buf, n, "%s", base);
        break;
    case F_TOK:
        snprintf(buf, n, "%s", c->tokenizer == NLLM_TOK_BYTE ? "byte" : "word");
        break;
    case F_CLIP:
        if (c->clip_mode == NLLM_CLIP_FIXED)
            snprintf(buf, n, "%.17g", c->clip_value);
        else
            snprintf(buf, n, "%s", c->clip_mode == NLLM_CLIP_NONE ? "none" : "reference");
        break;
    case F_PREC:
        snprintf(buf, n, "%s", nllm_precision_name(c->precision));
        break;
    case F_DIV:
        snprintf(buf, n, "%s", c->on_divergence == NLLM_DIV_FAIL ? "fail" : "rollback");
        break;
    case F_FAULT:
        snprintf(buf, n, "%s", c->on_device_fault == NLLM_FAULT_FAIL ? "fail" : "requeue");
        break;
    }
}

json_t *nllm_job_config_to_json(const nllm_job_config_t *c)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    for (size_t i = 0; i < NFIELDS; i++) {
        const field_t *f = &fields[i];
        const char *base = (const char *)c + f->off;
        json_t *v = NULL;
        char buf[64];
        switch (f->type) {
        case F_I32:
            v = json_integer(*(const int32_t *)base);
            break;
        case F_BOOL:
            v = json_boolean(*(const int32_t *)base);
            break;
        case F_U64:
            /* above INT64_MAX as a decimal string: a JSON integer would turn negative */
            if (*(const uint64_t *)base > (uint64_t)INT64_MAX) {
                field_text(c, f, buf, sizeof buf);
                v = json_string(buf);
            } else {
                v = json_integer((json_int_t)*(const uint64_t *)base);
            }
            break;
        case F_F32:
            /* shortest decimal that round-trips the float */
            snprintf(buf, sizeof buf, "%.9g", (double)*(const float *)base);
            v = json_real(strtod(buf, NULL));
            break;
        case F_F64:
        case F_FRAC:
            v = json_real(*(const double *)base);
            break;
        case F_PATH:
        case F_DEV:
            v = json_string(base);
            break;
        case F_TOK:
        case F_CLIP:
        case F_PREC:
        case F_DIV:
        case F_FAULT:
            field_text(c, f, buf, sizeof buf);
            v = f->type == F_CLIP && c->clip_mode == NLLM_CLIP_FIXED ? json_real(c->clip_value)
                                                                     : json_string(buf);
            break;
        }
        if (!v || json_object_set_new(o, f->key, v) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

int nllm_job_config_from_json(const json_t *j, nllm_job_config_t *c, nllm_err_t *err)
{
    if (!json_is_object(j))
        return nllm_err_set(err, NLLM_EINVAL, "config must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)j, key, v)
    {
        const field_t *f = find_field(key);
        if (!f)
            return nllm_err_set(err, NLLM_EINVAL,
                                "unknown setting \"%s\" in the config: see `nllmctl start "
                                "--help` for the list",
                                key);
        char buf[NLLM_PATH_MAX];
        if (json_is_string(v))
            snprintf(buf, sizeof buf, "%s", json_string_value(v));
        else if (json_is_integer(v))
            snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        else if (json_is_real(v))
            snprintf(buf, sizeof buf, "%.17g", json_real_value(v));
        else if (json_is_boolean(v))
            snprintf(buf, sizeof buf, "%s", json_is_true(v) ? "true" : "false");
        else
            return nllm_err_set(err, NLLM_EINVAL, "%s: expected a string or number", key);
        int rc = set_field(c, f, buf, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int nllm_job_config_parse_text(const char *text, size_t len, const char *label,
                               nllm_job_config_t *c, nllm_err_t *err)
{
    size_t pos = 0;
    int lineno = 0;
    while (pos < len) {
        size_t e = pos;
        while (e < len && text[e] != '\n')
            e++;
        lineno++;
        char line[NLLM_PATH_MAX + 256];
        size_t n = e - pos;
        if (n >= sizeof line)
            return nllm_err_set(err, NLLM_EINVAL, "%s:%d: line is too long", label, lineno);
        memcpy(line, text + pos, n);
        line[n] = '\0';
        pos = e + 1;
        if (memchr(line, '\0', n))
            return nllm_err_set(err, NLLM_EINVAL, "%s:%d: NUL byte in the line", label, lineno);
        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        char *t = s + strlen(s);
        while (t > s && isspace((unsigned char)t[-1]))
            *--t = '\0';
        if (!*s || *s == '#' || *s == ';')
            continue;
        if (*s == '[') {
            if (t[-1] != ']')
                return nllm_err_set(err, NLLM_EINVAL, "%s:%d: section header needs a closing ]",
                                    label, lineno);
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq)
            return nllm_err_set(err, NLLM_EINVAL, "%s:%d: expected `key = value`, got \"%s\"",
                                label, lineno, s);
        char *k = s, *ke = eq;
        while (ke > k && isspace((unsigned char)ke[-1]))
            ke--;
        *ke = '\0';
        char *v = eq + 1;
        while (isspace((unsigned char)*v))
            v++;
        size_t vl = strlen(v);
        if (vl >= 2 && (v[0] == '"' || v[0] == '\'') && v[vl - 1] == v[0]) {
            v[vl - 1] = '\0';
            v++;
        }
        int rc = nllm_job_config_set(c, k, v, err);
        if (rc < 0)
            return nllm_err_prefix(err, "%s:%d: ", label, lineno);
    }
    return 0;
}

int nllm_job_config_parse_file(const char *path, nllm_job_config_t *c, nllm_err_t *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return nllm_err_set(err, errno == ENOENT ? NLLM_ENOENT : NLLM_EIO,
                            "job file %s: %s", path, strerror(errno));
    char *buf = malloc(1 << 20);
    if (!buf) {
        fclose(f);
        return nllm_err_set(err, NLLM_ENOMEM, "job file %s: out of memory", path);
    }
    size_t n = fread(buf, 1, 1 << 20, f);
    int bad = ferror(f), big = !feof(f) && n == (1 << 20);
    fclose(f);
    int rc;
    if (bad)
        rc = nllm_err_set(err, NLLM_EIO, "job file %s: read error", path);
    else if (big)
        rc = nllm_err_set(err, NLLM_EINVAL, "job file %s: larger than 1 MiB", path);
    else
        rc = nllm_job_config_parse_text(buf, n, path, c, err);
    free(buf);
    return rc;
}

/* ---- comparisons ------------------------------------------------------- */

static int diff_fields(const nllm_job_config_t *a, const char *al, const nllm_job_config_t *b,
                       const char *bl, int model, char *buf, size_t buflen)
{
    int n = 0;
    size_t used = 0;
    if (buflen)
        buf[0] = '\0';
    for (size_t i = 0; i < NFIELDS; i++) {
        const field_t *f = &fields[i];
        if (f->model != model)
            continue;
        char va[NLLM_PATH_MAX], vb[NLLM_PATH_MAX];
        field_text(a, f, va, sizeof va);
        field_text(b, f, vb, sizeof vb);
        if (strcmp(va, vb) == 0)
            continue;
        n++;
        if (used < buflen) {
            int w = snprintf(buf + used, buflen - used, "%s%s: %s %s, %s %s", n > 1 ? "; " : "",
                             f->key, al, va, bl, vb);
            if (w > 0)
                used += (size_t)w;
        }
    }
    return n;
}

int nllm_job_config_model_diff(const nllm_model_config_t *a, const char *a_label,
                               const nllm_model_config_t *b, const char *b_label, char *buf,
                               size_t buflen)
{
    nllm_job_config_t ja, jb;
    nllm_job_config_defaults(&ja);
    nllm_job_config_defaults(&jb);
    ja.model = *a;
    jb.model = *b;
    return diff_fields(&ja, a_label, &jb, b_label, 1, buf, buflen);
}

int nllm_job_config_data_diff(const nllm_job_config_t *a, const char *a_label,
                              const nllm_job_config_t *b, const char *b_label, char *buf,
                              size_t buflen)
{
    return diff_fields(a, a_label, b, b_label, 2, buf, buflen);
}

int nllm_job_config_train_diff(const nllm_job_config_t *a, const nllm_job_config_t *b,
                               char *buf, size_t buflen)
{
    return diff_fields(a, "was", b, "now", 0, buf, buflen);
}

double nllm_job_config_clip_for_epoch(const nllm_job_config_t *c, int64_t epoch)
{
    switch (c->clip_mode) {
    case NLLM_CLIP_NONE:
        return 0.0;
    case NLLM_CLIP_FIXED:
        return c->clip_value;
    case NLLM_CLIP_REFERENCE:
        break;
    }
    return epoch < 10 ? 0.5 : epoch < 30 ? 1.0 : 2.0;
}
