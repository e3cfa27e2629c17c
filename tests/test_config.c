/* test_config.c -- job configuration: model.md defaults, every bad value
 * rejected with a message naming the field (vocab_size < 5, a dimension 0
 * or over 65536, batch 0, ...), every numeric key just past either bound
 * refused naming the key, the value and the range, the job-file parser
 * (FILE:LINE in errors), JSON round trip, the shape diff used for resume
 * mismatches, the reference clipping schedule, the key `precision` (fp32
 * default, also for a config JSON from before the key existed; a
 * training-only setting), and the divergence keys (defaults, ranges named
 * in errors, text/JSON).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "testutil.h"

static void test_defaults(void)
{
    nllm_job_config_t c;
    nllm_job_config_defaults(&c);
    CHECK(c.model.vocab_size == 1000 && c.model.embed_dim == 256 && c.model.hidden_dim == 512 &&
              c.model.context_dim == 512 && c.model.num_layers == 12 &&
              c.model.max_seq_length == 64 && c.model.dropout == 0.1f,
          "model defaults differ from model.md");
    CHECK(c.learning_rate == 1e-4 && c.beta1 == 0.9 && c.beta2 == 0.999 && c.eps == 1e-8 &&
              c.weight_decay == 0 && c.num_epochs == 50 && c.batch_size == 512 && c.seed == 42 &&
              c.patience == 15 && c.min_delta == 0.001 && c.save_every == 5,
          "training defaults differ from model.md");
    nllm_err_t err;
    CHECK(nllm_job_config_check(&c, &err) == NLLM_EINVAL && strstr(err.msg, "--data"),
          "a config without data must be refused: %s", err.msg);
}

static void expect_bad(const char *key, const char *value, const char *phrase)
{
    nllm_job_config_t c;
    nllm_job_config_defaults(&c);
    snprintf(c.data, sizeof c.data, "/tmp/x.txt");
    nllm_err_t err;
    nllm_err_clear(&err);
    int rc = nllm_job_config_set(&c, key, value, &err);
    if (rc == 0)
        rc = nllm_job_config_check(&c, &err);
    CHECK(rc == NLLM_EINVAL, "%s = %s accepted", key, value);
    CHECK(strstr(err.msg, phrase) != NULL, "%s = %s: message \"%s\" lacks \"%s\"", key, value,
          err.msg, phrase);
}

static void test_bad_values(void)
{
    expect_bad("vocab_size", "4", "vocab_size");
    expect_bad("vocab_size", "0", "vocab_size");
    expect_bad("embed_dim", "0", "embed_dim");
    expect_bad("hidden_dim", "65537", "hidden_dim");
    expect_bad("context_dim", "0", "context_dim");
    expect_bad("num_layers", "0", "num_layers");
    expect_bad("max_seq_length", "1", "max_seq_length");
    expect_bad("max_seq_length", "70000", "max_seq_length");
    expect_bad("batch_size", "0", "batch_size");
    expect_bad("batch", "-3", "batch_size");
    expect_bad("dropout", "1", "dropout");
    expect_bad("learning_rate", "abc", "learning_rate");
    expect_bad("lr", "nan", "learning_rate");
    expect_bad("clip", "-1", "clip");
    expect_bad("tokenizer", "char", "tokenizer");
    expect_bad("device", "gpu0", "device");
    /* found by fuzz_jobfile: strtol skipped the white space, and the value was
     * stored cut to 31 bytes, which then did not load back from JSON */
    expect_bad("device", "cuda: 0", "device");
    expect_bad("device", "cuda:\v0", "device");
    expect_bad("device", "cuda:+1", "device");
    expect_bad("device", "cuda:1024", "device");
    expect_bad("device", "cuda:", "device");
    {
        nllm_job_config_t d;
        nllm_err_t e;
        nllm_job_config_defaults(&d);
        CHECK(nllm_job_config_set(&d, "device", "cuda:000000000000000000000000000000000007",
                                  &e) == 0 &&
                  strcmp(d.device, "cuda:7") == 0,
              "device with leading zeros is stored as cuda:7: \"%s\"", d.device);
    }
    expect_bad("seed", "-1", "seed");
    expect_bad("num_epochs", "0", "num_epochs");
    expect_bad("no_such_key", "1", "no_such_key");
    expect_bad("reset_patience", "maybe", "reset_patience");
    /* byte tokenizer needs V = 259 */
    nllm_job_config_t c;
    nllm_job_config_defaults(&c);
    snprintf(c.data, sizeof c.data, "/tmp/x.txt");
    nllm_err_t err;
    nllm_job_config_set(&c, "tokenizer", "byte", &err);
    CHECK(nllm_job_config_check(&c, &err) == NLLM_EINVAL && strstr(err.msg, "259"),
          "byte tokenizer with V 1000: %s", err.msg);
}

/* Every numeric key: a value just below its minimum and one just above its
 * maximum are refused, naming the key, the value and the bound (issue 13:
 * --clip 1e9 was "must be a positive number"). Through set (flags, job
 * files) and through JSON (the RPC's config). */
static void test_ranges(void)
{
    static const struct {
        const char *key, *below, *above, *range;
    } r[] = {
        {"vocab_size", "4", "16777217", "use 5..16777216, both included"},
        {"embed_dim", "0", "65537", "use 1..65536, both included"},
        {"hidden_dim", "-1", "65537", "use 1..65536, both included"},
        {"context_dim", "1", "65537", "use 2..65536, both included"},
        {"num_layers", "0", "1025", "use 1..1024, both included"},
        {"max_seq_length", "1", "65537", "use 2..65536, both included"},
        {"dropout", "-0.1", "0.995", "use 0..0.99, both included"},
        {"val_fraction", "0.0005", "0.95", "use 0.001..0.9, both included"},
        {"num_epochs", "0", "1000001", "use 1..1000000, both included"},
        {"batch_size", "0", "1048577", "use 1..1048576, both included"},
        {"learning_rate", "-0.001", "11", "use 0..10, both included"},
        {"beta1", "-0.1", "1", "use 0..0.999999, both included"},
        {"beta2", "-0.1", "1", "use 0..0.99999999, both included"},
        {"eps", "-1e-8", "2", "use 0..1, both included"},
        {"weight_decay", "-1", "10.5", "use 0..10, both included"},
        {"clip", "0", "1e9", "above 0 (excluded) and at most 1000000 (included)"},
        {"patience", "-1", "1000001", "use 0..1000000, both included"},
        {"min_delta", "-1", "2e6", "use 0..1000000, both included"},
        {"seed", "-1", "18446744073709551616", "use 0..18446744073709551615, both included"},
        {"save_every", "0", "1000001", "use 1..1000000, both included"},
        {"keep", "-1", "1000001", "use 0..1000000, both included"},
        {"threads", "-1", "4097", "use 0..4096, both included"},
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
        const char *vals[2] = {r[i].below, r[i].above};
        for (int k = 0; k < 2; k++) {
            nllm_job_config_t c;
            nllm_job_config_defaults(&c);
            nllm_err_t err;
            nllm_err_clear(&err);
            char what[128];
            snprintf(what, sizeof what, "%s = %s is out of range", r[i].key, vals[k]);
            CHECK(nllm_job_config_set(&c, r[i].key, vals[k], &err) == NLLM_EINVAL &&
                      strstr(err.msg, what) && strstr(err.msg, r[i].range),
                  "%s = %s: \"%s\" lacks \"%s\" or \"%s\"", r[i].key, vals[k], err.msg, what,
                  r[i].range);
            /* the same through JSON, as the RPC's config gives it */
            char text[256];
            snprintf(text, sizeof text, "{\"%s\": %s}", r[i].key, vals[k]);
            json_t *j = json_loads(text, 0, NULL);
            if (!j) { /* 18446744073709551616 is beyond jansson's integers */
                snprintf(text, sizeof text, "{\"%s\": \"%s\"}", r[i].key, vals[k]);
                j = json_loads(text, 0, NULL);
            }
            nllm_err_clear(&err);
            CHECK(j && nllm_job_config_from_json(j, &c, &err) == NLLM_EINVAL &&
                      strstr(err.msg, r[i].key) && strstr(err.msg, r[i].range),
                  "JSON %s: \"%s\" lacks \"%s\"", text, err.msg, r[i].range);
            json_decref(j);
        }
    }
    /* the bounds themselves are accepted */
    static const char *ok[][2] = {{"clip", "1000000"}, {"beta2", "0.99999999"},
                                  {"dropout", "0.99"},  {"val_fraction", "0.001"},
                                  {"seed", "18446744073709551615"}, {"learning_rate", "0"}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        nllm_job_config_t c;
        nllm_job_config_defaults(&c);
        snprintf(c.data, sizeof c.data, "/tmp/x.txt");
        nllm_err_t err;
        nllm_err_clear(&err);
        CHECK(nllm_job_config_set(&c, ok[i][0], ok[i][1], &err) == 0 &&
                  nllm_job_config_check(&c, &err) == 0,
              "%s = %s (a bound) refused: %s", ok[i][0], ok[i][1], err.msg);
    }
    /* not numbers at all: still a plain "must be" message */
    expect_bad("clip", "big", "clip must be reference, none or a number above 0 and at most");
    expect_bad("epochs", "99999999999999999999", "num_epochs = 99999999999999999999 is out of "
               "range: use 1..1000000");
    expect_bad("lr", "1e999", "learning_rate = 1e999 is out of range: use 0..10");
}

static void test_job_file(void)
{
    const char *text = "# a job file\n[model]\nhidden_dim = 128\ncontext_dim=64\n\n"
                       "; comment\n[train]\nepochs = 7\nlr = 3e-4\nclip = 1.5\n"
                       "data = \"/data/train.txt\"\ntokenizer = word\nreset_patience = yes\n";
    nllm_job_config_t c;
    nllm_job_config_defaults(&c);
    nllm_err_t err;
    CHECK(nllm_job_config_parse_text(text, strlen(text), "job.ini", &c, &err) == 0, "%s",
          err.msg);
    CHECK(c.model.hidden_dim == 128 && c.model.context_dim == 64 && c.num_epochs == 7 &&
              c.learning_rate == 3e-4 && c.clip_mode == NLLM_CLIP_FIXED && c.clip_value == 1.5 &&
              !strcmp(c.data, "/data/train.txt") && c.reset_patience == 1,
          "job file values not applied");
    const char *bad = "hidden_dim = 128\nthis line is wrong\n";
    CHECK(nllm_job_config_parse_text(bad, strlen(bad), "job.ini", &c, &err) == NLLM_EINVAL &&
              strstr(err.msg, "job.ini:2"),
          "bad line: %s", err.msg);
    const char *bad2 = "layers = 0\n";
    CHECK(nllm_job_config_parse_text(bad2, strlen(bad2), "j.ini", &c, &err) == NLLM_EINVAL &&
              strstr(err.msg, "j.ini:1") && strstr(err.msg, "num_layers"),
          "bad value: %s", err.msg);
    CHECK(nllm_job_config_parse_file("/nonexistent/job.ini", &c, &err) == NLLM_ENOENT &&
              strstr(err.msg, "/nonexistent/job.ini"),
          "missing file: %s", err.msg);
}

static void test_json_roundtrip(void)
{
    nllm_job_config_t a, b;
    nllm_job_config_defaults(&a);
    snprintf(a.data, sizeof a.data, "/d/t.txt");
    snprintf(a.device, sizeof a.device, "cuda:1");
    a.model.dropout = 0.3f;
    a.learning_rate = 1.234567890123e-4;
    a.seed = 18446744073709551ULL;
    a.clip_mode = NLLM_CLIP_NONE;
    a.precision = NLLM_PREC_BF16;
    json_t *j = nllm_job_config_to_json(&a);
    char *s = json_dumps(j, JSON_REAL_PRECISION(17));
    json_decref(j);
    json_t *k = json_loads(s, 0, NULL);
    nllm_job_config_defaults(&b);
    nllm_err_t err;
    CHECK(nllm_job_config_from_json(k, &b, &err) == 0, "%s", err.msg);
    CHECK(memcmp(&a, &b, sizeof a) == 0, "config JSON round trip differs: %s", s);
    json_decref(k);
    free(s);
    json_t *u = json_pack("{s:i}", "bogus", 1);
    CHECK(nllm_job_config_from_json(u, &b, &err) == NLLM_EINVAL && strstr(err.msg, "bogus"),
          "unknown JSON key: %s", err.msg);
    json_decref(u);
}

static void test_precision(void)
{
    nllm_job_config_t c;
    nllm_err_t err;
    nllm_job_config_defaults(&c);
    CHECK(c.precision == NLLM_PREC_FP32, "precision defaults to fp32");
    const char *const *keys = nllm_job_config_keys();
    int listed = 0;
    for (size_t i = 0; keys[i]; i++)
        listed |= !strcmp(keys[i], "precision");
    CHECK(listed, "precision is one of nllm_job_config_keys");
    const char *names[] = {"fp32", "tf32", "bf16"};
    const nllm_precision_t want[] = {NLLM_PREC_FP32, NLLM_PREC_TF32, NLLM_PREC_BF16};
    for (int i = 0; i < 3; i++) {
        nllm_job_config_defaults(&c);
        if (i == 0)
            c.precision = NLLM_PREC_BF16;
        CHECK(nllm_job_config_set(&c, "precision", names[i], &err) == 0 &&
                  c.precision == want[i],
              "precision = %s: %s", names[i], err.msg);
    }
    expect_bad("precision", "fp16", "precision");
    expect_bad("precision", "FP32", "precision");
    expect_bad("precision", "", "precision");
    nllm_err_clear(&err);
    nllm_job_config_set(&c, "precision", "half", &err);
    CHECK(strstr(err.msg, "precision") && strstr(err.msg, "fp32, tf32 or bf16") &&
              strstr(err.msg, "\"half\""),
          "bad precision: the message names the key, the allowed values and the value: %s",
          err.msg);

    /* a job file; an error names FILE:LINE */
    const char *text = "data = /d/t.txt\nprecision = tf32\n";
    nllm_job_config_defaults(&c);
    CHECK(nllm_job_config_parse_text(text, strlen(text), "job.ini", &c, &err) == 0 &&
              c.precision == NLLM_PREC_TF32,
          "job file precision = tf32: %s", err.msg);
    const char *bad = "data = /d/t.txt\nprecision = int8\n";
    CHECK(nllm_job_config_parse_text(bad, strlen(bad), "job.ini", &c, &err) == NLLM_EINVAL &&
              strstr(err.msg, "job.ini:2") && strstr(err.msg, "precision"),
          "job file precision = int8: %s", err.msg);

    /* JSON: a string; a config JSON without the key (checkpoints and catalog
     * rows from before it) loads as fp32; a bad value is refused */
    nllm_job_config_defaults(&c);
    c.precision = NLLM_PREC_TF32;
    json_t *j = nllm_job_config_to_json(&c);
    CHECK(json_is_string(json_object_get(j, "precision")) &&
              !strcmp(json_string_value(json_object_get(j, "precision")), "tf32"),
          "precision is a JSON string");
    json_object_del(j, "precision");
    nllm_job_config_t old;
    nllm_job_config_defaults(&old);
    CHECK(nllm_job_config_from_json(j, &old, &err) == 0 && old.precision == NLLM_PREC_FP32,
          "config JSON without precision loads as fp32: %s", err.msg);
    json_object_set_new(j, "precision", json_string("fp8"));
    CHECK(nllm_job_config_from_json(j, &old, &err) == NLLM_EINVAL &&
              strstr(err.msg, "precision") && strstr(err.msg, "fp8"),
          "config JSON with precision fp8: %s", err.msg);
    json_object_set_new(j, "precision", json_integer(2));
    CHECK(nllm_job_config_from_json(j, &old, &err) == NLLM_EINVAL && strstr(err.msg, "precision"),
          "config JSON with precision 2 (a number): %s", err.msg);
    json_decref(j);

    /* training-only: a change is a train diff (what resume reports), never a
     * model-shape diff */
    nllm_job_config_t a, b;
    nllm_job_config_defaults(&a);
    b = a;
    b.precision = NLLM_PREC_TF32;
    char buf[512];
    int n = nllm_job_config_train_diff(&a, &b, buf, sizeof buf);
    CHECK(n == 1 && strstr(buf, "precision: was fp32, now tf32"), "train diff: %d \"%s\"", n,
          buf);
}

static void test_device_fault_key(void)
{
    nllm_job_config_t c;
    nllm_job_config_defaults(&c);
    CHECK(c.on_device_fault == NLLM_FAULT_REQUEUE, "on_device_fault defaults to requeue");
    expect_bad("on_device_fault", "retry", "requeue or fail");
    const char *text = "on_device_fault = fail\n";
    nllm_err_t err;
    CHECK(nllm_job_config_parse_text(text, strlen(text), "job.ini", &c, &err) == 0 &&
              c.on_device_fault == NLLM_FAULT_FAIL,
          "on_device_fault in a job file: %s", err.msg);
    json_t *j = nllm_job_config_to_json(&c);
    CHECK(strcmp(json_string_value(json_object_get(j, "on_device_fault")), "fail") == 0,
          "on_device_fault in JSON");
    nllm_job_config_t d;
    nllm_job_config_defaults(&d);
    CHECK(nllm_job_config_from_json(j, &d, &err) == 0 && d.on_device_fault == NLLM_FAULT_FAIL,
          "on_device_fault round-trips JSON");
    json_decref(j);
    CHECK(nllm_job_config_set(&d, "on_device_fault", "requeue", &err) == 0 &&
              d.on_device_fault == NLLM_FAULT_REQUEUE,
          "on_device_fault set (--set): %s", err.msg);
}

static void test_divergence_keys(void)
{
    nllm_job_config_t c;
    nllm_job_config_defaults(&c);
    CHECK(c.on_divergence == NLLM_DIV_ROLLBACK && c.divergence_lr_factor == 0.5 &&
              c.divergence_retries == 3,
          "divergence defaults: rollback, 0.5, 3");
    expect_bad("on_divergence", "retry", "rollback or fail");
    expect_bad("divergence_lr_factor", "1", "(0, 1)");
    expect_bad("divergence_lr_factor", "0", "divergence_lr_factor");
    expect_bad("divergence_lr_factor", "-0.5", "(0, 1)");
    expect_bad("divergence_retries", "101", "0..100");
    expect_bad("divergence_retries", "-1", "divergence_retries");
    const char *text = "on_divergence = fail\ndivergence_lr_factor = 0.25\n"
                       "divergence_retries = 0\n";
    nllm_err_t err;
    CHECK(nllm_job_config_parse_text(text, strlen(text), "job.ini", &c, &err) == 0,
          "divergence keys in a job file: %s", err.msg);
    CHECK(c.on_divergence == NLLM_DIV_FAIL && c.divergence_lr_factor == 0.25 &&
              c.divergence_retries == 0,
          "divergence keys from the job file");
    json_t *j = nllm_job_config_to_json(&c);
    CHECK(strcmp(json_string_value(json_object_get(j, "on_divergence")), "fail") == 0,
          "on_divergence in JSON");
    nllm_job_config_t d;
    nllm_job_config_defaults(&d);
    CHECK(nllm_job_config_from_json(j, &d, &err) == 0 && d.on_divergence == NLLM_DIV_FAIL &&
              d.divergence_lr_factor == 0.25 && d.divergence_retries == 0,
          "divergence keys round-trip JSON");
    json_decref(j);
    char diff[256];
    CHECK(nllm_job_config_train_diff(&d, &c, diff, sizeof diff) == 0, "no diff: %s", diff);
    d.divergence_lr_factor = 0.5;
    CHECK(nllm_job_config_train_diff(&c, &d, diff, sizeof diff) == 1 &&
              strstr(diff, "divergence_lr_factor"),
          "training diff names divergence_lr_factor: %s", diff);
}

static void test_diff_and_clip(void)
{
    nllm_model_config_t a = NLLM_MODEL_CONFIG_DEFAULT, b = a;
    b.context_dim = 1024;
    b.num_layers = 6;
    char buf[512];
    int n = nllm_job_config_model_diff(&a, "checkpoint", &b, "job", buf, sizeof buf);
    CHECK(n == 2 && strstr(buf, "context_dim: checkpoint 512, job 1024") &&
              strstr(buf, "num_layers: checkpoint 12, job 6"),
          "diff: %d \"%s\"", n, buf);
    nllm_job_config_t c;
    nllm_job_config_defaults(&c);
    CHECK(nllm_job_config_clip_for_epoch(&c, 0) == 0.5 && nllm_job_config_clip_for_epoch(&c, 9) == 0.5 &&
              nllm_job_config_clip_for_epoch(&c, 10) == 1.0 &&
              nllm_job_config_clip_for_epoch(&c, 29) == 1.0 &&
              nllm_job_config_clip_for_epoch(&c, 30) == 2.0,
          "reference clip schedule wrong");
    c.clip_mode = NLLM_CLIP_FIXED;
    c.clip_value = 3;
    CHECK(nllm_job_config_clip_for_epoch(&c, 40) == 3, "fixed clip");
}

/* num_devices and device lists: defaults, ranges, lists setting the count,
 * the batch dividing by it, a config without the key loading as 1. */
static void test_num_devices(void)
{
    nllm_job_config_t c;
    nllm_err_t err;
    nllm_job_config_defaults(&c);
    CHECK(c.num_devices == 1 && c.device[0] == '\0', "num_devices defaults to 1");
    expect_bad("num_devices", "0", "num_devices = 0 is out of range: use 1..64");
    expect_bad("num_devices", "65", "1..64");
    expect_bad("num_devices", "3", "batch_size 512 does not divide by num_devices 3");
    expect_bad("num_devices", "3", "multiple of 3 (such as 510 or 513)");
    expect_bad("device", "cuda:0,cpu", "a list names GPUs only");
    expect_bad("device", "cuda:1,cuda:01", "cuda:1 is listed twice");
    expect_bad("device", "cuda:0,", "a list names GPUs only");
    expect_bad("device", "cuda:0, cuda:1", "a list names GPUs only");
    snprintf(c.data, sizeof c.data, "/tmp/x.txt");
    CHECK(nllm_job_config_set(&c, "device", "cuda:03,cuda:1", &err) == 0 &&
              !strcmp(c.device, "cuda:3,cuda:1") && c.num_devices == 2,
          "a list is normalised and sets num_devices: %s %d", c.device, c.num_devices);
    CHECK(nllm_job_config_check(&c, &err) == 0, "%s", err.msg);
    c.num_devices = 4;
    CHECK(nllm_job_config_check(&c, &err) == NLLM_EINVAL &&
              strstr(err.msg, "device lists 2 GPUs (cuda:3,cuda:1) but num_devices is 4"),
          "a list and another count: %s", err.msg);
    CHECK(nllm_job_config_set(&c, "device", "cuda:2", &err) == 0 &&
              nllm_job_config_check(&c, &err) == NLLM_EINVAL &&
              strstr(err.msg, "device cuda:2 is one GPU but num_devices is 4"),
          "one GPU named for 4 ranks: %s", err.msg);
    CHECK(nllm_job_config_set(&c, "device", "cuda", &err) == 0 &&
              nllm_job_config_check(&c, &err) == 0,
          "device cuda (any GPU) with 4 ranks: %s", err.msg);
    CHECK(nllm_job_config_set(&c, "device", "cpu", &err) == 0 &&
              nllm_job_config_check(&c, &err) == 0,
          "4 ranks sharing the cpu: %s", err.msg);
    /* a job stored before num_devices existed */
    nllm_job_config_t old;
    nllm_job_config_defaults(&old);
    json_t *j = nllm_job_config_to_json(&c);
    json_object_del(j, "num_devices");
    CHECK(nllm_job_config_from_json(j, &old, &err) == 0 && old.num_devices == 1,
          "a config without num_devices loads as 1");
    json_decref(j);
    nllm_job_config_t a = c, b = c;
    b.num_devices = 2;
    char diff[512];
    CHECK(nllm_job_config_train_diff(&a, &b, diff, sizeof diff) == 1 &&
              strstr(diff, "num_devices: was 4, now 2") &&
              nllm_job_config_model_diff(&a.model, "a", &b.model, "b", diff, sizeof diff) == 0 &&
              nllm_job_config_data_diff(&a, "a", &b, "b", diff, sizeof diff) == 0,
          "num_devices is a training setting (a resume may change it)");
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_bad_values);
    RUN(test_ranges);
    RUN(test_job_file);
    RUN(test_json_roundtrip);
    RUN(test_precision);
    RUN(test_diff_and_clip);
    RUN(test_divergence_keys);
    RUN(test_device_fault_key);
    RUN(test_num_devices);
    return TEST_REPORT();
}
