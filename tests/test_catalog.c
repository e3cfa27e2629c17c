/* test_catalog.c -- tests of daemon/store/catalog.c against real SQLite
 * files in a fresh temporary folder: schema and pragmas, jobs, checkpoints,
 * epoch supersede-on-resume, bounded events, v1 -> current migration, errors
 * (not a database, disk full, corruption) and cascade delete.
 * Exit 0 pass, 1 fail (one line per failed check), 77 skip.
 */
#ifndef _GNU_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#endif

#include "../daemon/store/catalog.h"
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];

#define EXPECT(cond) CHECK(cond, "%s", #cond)

/* Check a call's return code; print the error message on a mismatch. */
#define CHECK_RC(expr, want)                                                                       \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        CHECK(rc_ == (want), "%s returned %s, want %s (msg: %s)", #expr, nllm_err_name(rc_),       \
              nllm_err_name(want), err.msg);                                                       \
    } while (0)

#define CHECK_MSG(needle)                                                                          \
    CHECK(strstr(err.msg, (needle)) != NULL, "message '%s' lacks '%s'", err.msg, (needle))

static void path_in_dir(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", dir, name);
}

/* Run SQL on a separate raw connection; returns the SQLite result. */
static int raw_exec(const char *path, const char *sql)
{
    sqlite3 *db;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK) {
        sqlite3_extended_result_codes(db, 1);
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
    sqlite3_close(db);
    return rc;
}

/* First column of the first row as an integer, on a raw connection. */
static long long raw_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    long long v = -999;
    if (sqlite3_open(path, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static const char *CK1 = "0123456789abcdef";

static nllm_catalog_ckpt_spec_t ck_spec(const char *kind, int64_t epoch, int64_t step,
                                        double val_loss)
{
    nllm_catalog_ckpt_spec_t s = {0};
    s.kind = kind;
    s.epoch = epoch;
    s.step = step;
    s.path = "/var/lib/nllm/jobs/x/ckpt.bin";
    s.size = 1000 + step;
    s.checksum = CK1;
    s.weights_hash = "feedbeef";
    s.val_loss = val_loss;
    return s;
}

static nllm_catalog_epoch_t ep_rec(int64_t epoch, double val_loss)
{
    nllm_catalog_epoch_t e;
    memset(&e, 0, sizeof e);
    e.epoch = epoch;
    e.train_loss = val_loss + 0.5;
    e.val_loss = val_loss;
    e.train_ppl = exp(e.train_loss);
    e.val_ppl = exp(val_loss);
    e.val_acc = NAN;
    e.seconds = 1.5;
    e.tokens_per_s = 1e5;
    return e;
}

static int make_job(nllm_catalog_t *cat, const char *name, int64_t epochs)
{
    nllm_err_t err = {0};
    nllm_catalog_job_spec_t s = {.name = name, .config = "{\"lr\": 0.001}", .num_epochs = epochs};
    int rc = nllm_catalog_job_create(cat, &s, NULL, &err);
    CHECK(rc == 0, "creating job %s: %s", name, err.msg);
    return rc;
}

/* ---------------------------------------------------------------------- */

static void test_names(void)
{
    const char *good[] = {
        "a",   "job-1", "A.b_c-9",
        "a..", "x.y.z", "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij1234"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK(nllm_catalog_valid_name(good[i]), "valid name rejected: '%s'", good[i]);
    EXPECT(strlen(good[5]) == 64);
    const char *bad[] = {"",
                         ".x",
                         "a/b",
                         "..",
                         ".",
                         "a b",
                         "a\n",
                         "caf\xc3\xa9",
                         "a:b",
                         "a\\b",
                         "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij12345"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(!nllm_catalog_valid_name(bad[i]), "invalid name accepted: '%s'", bad[i]);
    EXPECT(!nllm_catalog_valid_name(NULL));
    EXPECT(nllm_catalog_valid_state("interrupted") && !nllm_catalog_valid_state("done"));
}

static void test_open_and_pragmas(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "pragmas.db");
    nllm_err_t err = {0};
    nllm_catalog_t *cat = NULL;
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    if (!cat)
        return;
    nllm_catalog_settings_t s;
    CHECK_RC(nllm_catalog_settings(cat, &s, &err), 0);
    EXPECT(strcmp(s.journal_mode, "wal") == 0);
    EXPECT(s.synchronous == 2);
    EXPECT(s.foreign_keys == 1);
    EXPECT(s.busy_timeout_ms == NLLM_CATALOG_BUSY_TIMEOUT_MS);
    EXPECT(s.user_version == NLLM_CATALOG_SCHEMA_VERSION);
    /* The same, asked of the live connection directly. */
    sqlite3 *db = nllm_catalog_db(cat);
    sqlite3_stmt *st;
    EXPECT(sqlite3_prepare_v2(db, "PRAGMA foreign_keys", -1, &st, NULL) == SQLITE_OK);
    EXPECT(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 1);
    sqlite3_finalize(st);
    CHECK_RC(nllm_catalog_integrity_check(cat, &err), 0);
    nllm_catalog_close(cat);

    /* Persisted in the file, seen by another connection. */
    EXPECT(raw_int(path, "PRAGMA user_version") == NLLM_CATALOG_SCHEMA_VERSION);
    sqlite3 *raw;
    EXPECT(sqlite3_open(path, &raw) == SQLITE_OK);
    EXPECT(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK);
    EXPECT(sqlite3_step(st) == SQLITE_ROW &&
           strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0);
    sqlite3_finalize(st);
    sqlite3_close(raw);
    EXPECT(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN"
                         " ('jobs','checkpoints','epochs','events')") == 4);
    EXPECT(raw_int(path, "SELECT count(*) FROM pragma_table_info('checkpoints')"
                         " WHERE name = 'weights_hash'") == 1);
    EXPECT(raw_int(path, "SELECT count(*) FROM pragma_table_info('epochs')"
                         " WHERE name = 'attempt'") == 1);

    /* Reopening an up-to-date catalog changes nothing. */
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    nllm_catalog_close(cat);
    EXPECT(raw_int(path, "PRAGMA user_version") == NLLM_CATALOG_SCHEMA_VERSION);

    /* Bad arguments. */
    CHECK_RC(nllm_catalog_open("", &cat, &err), NLLM_EINVAL);
    EXPECT(cat == NULL);
    char nodir[160];
    path_in_dir(nodir, sizeof nodir, "no/such/dir/x.db");
    CHECK_RC(nllm_catalog_open(nodir, &cat, &err), NLLM_EIO);
    CHECK_MSG(nodir);
    EXPECT(cat == NULL);
}

static void test_jobs(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "jobs.db");
    nllm_err_t err = {0};
    nllm_catalog_t *cat = NULL;
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    if (!cat)
        return;

    nllm_catalog_job_spec_t s = {.name = "alpha", .config = "{\"d\": 64}", .num_epochs = 10};
    int64_t id = 0;
    CHECK_RC(nllm_catalog_job_create(cat, &s, &id, &err), 0);
    EXPECT(id > 0);
    CHECK_RC(nllm_catalog_job_create(cat, &s, NULL, &err), NLLM_EEXIST);
    CHECK_MSG("'alpha'");

    const char *bad[] = {
        "",   ".x",  "a/b",
        "..", "a b", "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij12345"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nllm_catalog_job_spec_t b = s;
        b.name = bad[i];
        CHECK_RC(nllm_catalog_job_create(cat, &b, NULL, &err), NLLM_EINVAL);
        CHECK_MSG("invalid");
    }
    nllm_catalog_job_spec_t b = s;
    b.name = NULL;
    CHECK_RC(nllm_catalog_job_create(cat, &b, NULL, &err), NLLM_EINVAL);
    b = s;
    b.name = "beta";
    b.config = "{\"d\": ";
    CHECK_RC(nllm_catalog_job_create(cat, &b, NULL, &err), NLLM_EINVAL);
    CHECK_MSG("beta");
    b.config = "[1, 2]";
    CHECK_RC(nllm_catalog_job_create(cat, &b, NULL, &err), NLLM_EINVAL);
    b.config = NULL;
    b.num_epochs = 0;
    CHECK_RC(nllm_catalog_job_create(cat, &b, NULL, &err), NLLM_EINVAL);
    b.num_epochs = 3;
    b.parent_job = "ghost";
    b.parent_checkpoint = "best";
    CHECK_RC(nllm_catalog_job_create(cat, &b, NULL, &err), NLLM_ENOENT);
    CHECK_MSG("ghost");
    b.parent_job = "alpha";
    CHECK_RC(nllm_catalog_job_create(cat, &b, NULL, &err), 0);

    nllm_catalog_job_t j;
    CHECK_RC(nllm_catalog_job_get(cat, "alpha", &j, &err), 0);
    EXPECT(j.id == id);
    EXPECT(j.name && strcmp(j.name, "alpha") == 0);
    EXPECT(strcmp(j.state, "queued") == 0);
    EXPECT(j.config && strcmp(j.config, "{\"d\": 64}") == 0);
    EXPECT(j.num_epochs == 10 && j.epochs_done == 0 && j.attempt == 1);
    EXPECT(isnan(j.best_val_loss));
    EXPECT(j.error == NULL && j.parent_job == NULL && j.parent_checkpoint == NULL);
    EXPECT(j.created_at > 1.6e9 && j.updated_at >= j.created_at);
    nllm_catalog_job_free(&j);

    CHECK_RC(nllm_catalog_job_get(cat, "beta", &j, &err), 0);
    EXPECT(strcmp(j.config, "{}") == 0);
    EXPECT(j.parent_job && strcmp(j.parent_job, "alpha") == 0);
    EXPECT(j.parent_checkpoint && strcmp(j.parent_checkpoint, "best") == 0);
    nllm_catalog_job_free(&j);

    CHECK_RC(nllm_catalog_job_get(cat, "nobody", &j, &err), NLLM_ENOENT);
    CHECK_MSG("'nobody'");
    EXPECT(j.name == NULL);

    /* States: the CHECK constraint rejects an unknown one, through the API ... */
    CHECK_RC(nllm_catalog_job_set_state(cat, "alpha", "running", NULL, &err), 0);
    CHECK_RC(nllm_catalog_job_set_state(cat, "alpha", "finished", NULL, &err), NLLM_EINVAL);
    CHECK_MSG("'finished'");
    CHECK_MSG("alpha");
    CHECK_RC(nllm_catalog_job_set_state(cat, "nobody", "running", NULL, &err), NLLM_ENOENT);
    CHECK_MSG("nobody");
    /* ... and for any writer of the file. */
    EXPECT(raw_exec(path, "UPDATE jobs SET state = 'bogus' WHERE name = 'alpha'") ==
           SQLITE_CONSTRAINT_CHECK);
    CHECK_RC(nllm_catalog_job_get(cat, "alpha", &j, &err), 0);
    EXPECT(strcmp(j.state, "running") == 0);
    nllm_catalog_job_free(&j);

    CHECK_RC(nllm_catalog_job_set_state(cat, "alpha", "failed",
                                        "CUDA out of memory; lower "
                                        "batch_size",
                                        &err),
             0);
    CHECK_RC(nllm_catalog_job_get(cat, "alpha", &j, &err), 0);
    EXPECT(strcmp(j.state, "failed") == 0);
    EXPECT(j.error && strstr(j.error, "out of memory"));
    nllm_catalog_job_free(&j);

    /* Progress and epochs. */
    CHECK_RC(nllm_catalog_job_set_progress(cat, "alpha", 4, 2.5, &err), 0);
    CHECK_RC(nllm_catalog_job_set_progress(cat, "alpha", 11, 2.5, &err), NLLM_EINVAL);
    CHECK_RC(nllm_catalog_job_set_num_epochs(cat, "alpha", 20, &err), 0);
    CHECK_RC(nllm_catalog_job_set_num_epochs(cat, "alpha", 3, &err), NLLM_EINVAL);
    CHECK_MSG("alpha");
    CHECK_RC(nllm_catalog_job_set_num_epochs(cat, "nobody", 3, &err), NLLM_ENOENT);
    CHECK_RC(nllm_catalog_job_set_config(cat, "alpha", "{\"d\": 128}", &err), 0);
    CHECK_RC(nllm_catalog_job_set_config(cat, "alpha", "nope", &err), NLLM_EINVAL);
    CHECK_RC(nllm_catalog_job_set_state(cat, "alpha", "running", NULL, &err), 0);
    CHECK_RC(nllm_catalog_job_get(cat, "alpha", &j, &err), 0);
    EXPECT(j.epochs_done == 4 && j.best_val_loss == 2.5 && j.num_epochs == 20);
    EXPECT(j.error == NULL);
    EXPECT(strcmp(j.config, "{\"d\": 128}") == 0);
    nllm_catalog_job_free(&j);

    /* Lists. */
    EXPECT(make_job(cat, "gamma", 5) == 0);
    nllm_catalog_job_t *list = NULL;
    size_t n = 0;
    CHECK_RC(nllm_catalog_job_list(cat, &list, &n, &err), 0);
    EXPECT(n == 3);
    if (n == 3)
        EXPECT(strcmp(list[0].name, "alpha") == 0 && strcmp(list[1].name, "beta") == 0 &&
               strcmp(list[2].name, "gamma") == 0);
    nllm_catalog_jobs_free(list, n);
    CHECK_RC(nllm_catalog_job_set_state(cat, "gamma", "running", NULL, &err), 0);
    CHECK_RC(nllm_catalog_jobs_in_state(cat, "running", &list, &n, &err), 0);
    EXPECT(n == 2);
    nllm_catalog_jobs_free(list, n);
    CHECK_RC(nllm_catalog_jobs_in_state(cat, "paused", &list, &n, &err), 0);
    EXPECT(n == 0 && list == NULL);
    CHECK_RC(nllm_catalog_jobs_in_state(cat, "runnin", &list, &n, &err), NLLM_EINVAL);

    /* Delete. */
    CHECK_RC(nllm_catalog_job_delete(cat, "gamma", &err), 0);
    CHECK_RC(nllm_catalog_job_delete(cat, "gamma", &err), NLLM_ENOENT);
    CHECK_MSG("gamma");
    CHECK_RC(nllm_catalog_job_get(cat, "gamma", &j, &err), NLLM_ENOENT);
    nllm_catalog_close(cat);
}

static void test_checkpoints(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "ckpt.db");
    nllm_err_t err = {0};
    nllm_catalog_t *cat = NULL;
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    if (!cat)
        return;
    EXPECT(make_job(cat, "j", 10) == 0);

    nllm_catalog_ckpt_t c;
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "latest", &c, &err), NLLM_ENOENT);
    CHECK_MSG("'j'");

    int64_t id1, id2, id3, best1, best2;
    nllm_catalog_ckpt_spec_t s = ck_spec("epoch", 1, 100, 3.0);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, &id1, &err), 0);
    s = ck_spec("epoch", 2, 200, 2.5);
    s.name = "epoch_2";
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, &id2, &err), 0);
    s = ck_spec("best", 2, 200, 2.5);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, &best1, &err), 0);
    s = ck_spec("epoch", 3, 300, 2.2);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, &id3, &err), 0);

    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "latest", &c, &err), 0);
    EXPECT(c.id == id3 && strcmp(c.name, "epoch_3") == 0 && c.step == 300);
    EXPECT(strcmp(c.kind, "epoch") == 0 && strcmp(c.status, "ok") == 0 && c.current == 1);
    EXPECT(strcmp(c.checksum, CK1) == 0 && c.weights_hash &&
           strcmp(c.weights_hash, "feedbeef") == 0);
    EXPECT(c.size == 1300 && c.val_loss == 2.2 && c.attempt == 1 && c.bad_reason == NULL);
    nllm_catalog_ckpt_free(&c);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "epoch_2", &c, &err), 0);
    EXPECT(c.id == id2);
    nllm_catalog_ckpt_free(&c);

    /* A new best supersedes the old row: exactly one current best. */
    s = ck_spec("best", 3, 300, 2.2);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, &best2, &err), 0);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "best", &c, &err), 0);
    EXPECT(c.id == best2 && c.epoch == 3 && c.current == 1);
    nllm_catalog_ckpt_free(&c);
    EXPECT(raw_int(path, "SELECT count(*) FROM checkpoints WHERE name = 'best' AND current = 1") ==
           1);
    EXPECT(raw_int(path, "SELECT count(*) FROM checkpoints WHERE name = 'best'") == 2);
    nllm_catalog_ckpt_t *list = NULL;
    size_t n = 0;
    CHECK_RC(nllm_catalog_ckpt_list(cat, "j", 1, &list, &n, &err), 0);
    EXPECT(n == 4);
    if (n == 4)
        EXPECT(list[0].id == id1 && list[3].step == 300);
    nllm_catalog_ckpts_free(list, n);
    CHECK_RC(nllm_catalog_ckpt_list(cat, "j", 0, &list, &n, &err), 0);
    EXPECT(n == 5);
    nllm_catalog_ckpts_free(list, n);

    /* Paused: one current row too. */
    s = ck_spec("paused", 3, 350, NAN);
    s.weights_hash = NULL;
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, NULL, &err), 0);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, NULL, &err), 0);
    EXPECT(raw_int(path,
                   "SELECT count(*) FROM checkpoints WHERE name = 'paused' AND current = 1") == 1);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "latest", &c, &err), 0);
    EXPECT(strcmp(c.name, "paused") == 0 && isnan(c.val_loss) && c.weights_hash == NULL);
    int64_t paused_id = c.id;
    nllm_catalog_ckpt_free(&c);

    /* The generation moves with every row change and only then (the
     * daemon's `checkpoints` reply is cached on it). */
    int64_t g0 = nllm_catalog_generation(cat);
    CHECK_RC(nllm_catalog_ckpt_list(cat, "j", 0, &list, &n, &err), 0);
    nllm_catalog_ckpts_free(list, n);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "latest", &c, &err), 0);
    nllm_catalog_ckpt_free(&c);
    EXPECT(nllm_catalog_generation(cat) == g0);

    /* Bad marking: latest skips bad checkpoints. */
    CHECK_RC(nllm_catalog_ckpt_mark_bad(cat, "j", paused_id, "checksum mismatch", &err), 0);
    EXPECT(nllm_catalog_generation(cat) != g0);
    g0 = nllm_catalog_generation(cat);
    CHECK_RC(nllm_catalog_ckpt_mark_bad(cat, "j", best2, "truncated file", &err), 0);
    CHECK_RC(nllm_catalog_ckpt_mark_bad(cat, "j", id3, "truncated file", &err), 0);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "latest", &c, &err), 0);
    EXPECT(c.id == id2);
    nllm_catalog_ckpt_free(&c);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "epoch_3", &c, &err), 0);
    EXPECT(strcmp(c.status, "bad") == 0 && c.bad_reason &&
           strcmp(c.bad_reason, "truncated file") == 0);
    nllm_catalog_ckpt_free(&c);
    EXPECT(nllm_catalog_generation(cat) != g0);
    g0 = nllm_catalog_generation(cat);
    CHECK_RC(nllm_catalog_ckpt_mark_ok(cat, "j", id3, &err), 0);
    EXPECT(nllm_catalog_generation(cat) != g0);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "latest", &c, &err), 0);
    EXPECT(c.id == id3 && strcmp(c.status, "ok") == 0 && c.bad_reason == NULL);
    nllm_catalog_ckpt_free(&c);
    CHECK_RC(nllm_catalog_ckpt_mark_bad(cat, "j", id3, "", &err), NLLM_EINVAL);
    CHECK_RC(nllm_catalog_ckpt_mark_bad(cat, "j", 99999, "x", &err), NLLM_ENOENT);
    CHECK_MSG("99999");

    /* Re-saving epoch_3 replaces its row: one row per job+epoch_N. */
    s = ck_spec("epoch", 3, 300, 2.1);
    int64_t id3b;
    g0 = nllm_catalog_generation(cat);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, &id3b, &err), 0);
    EXPECT(nllm_catalog_generation(cat) != g0);
    EXPECT(id3b != id3);
    EXPECT(raw_int(path, "SELECT count(*) FROM checkpoints WHERE name = 'epoch_3'") == 1);

    /* Validation and not-found. */
    s = ck_spec("epoch", 4, 400, 2.0);
    s.name = "epoch_5";
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, NULL, &err), NLLM_EINVAL);
    CHECK_MSG("epoch_4");
    s = ck_spec("best", 4, 400, 2.0);
    s.name = "epoch_4";
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, NULL, &err), NLLM_EINVAL);
    s = ck_spec("snapshot", 4, 400, 2.0);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, NULL, &err), NLLM_EINVAL);
    s = ck_spec("epoch", 4, 400, 2.0);
    s.checksum = "0123456789ABCDEF";
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, NULL, &err), NLLM_EINVAL);
    s.checksum = "abc";
    CHECK_RC(nllm_catalog_ckpt_add(cat, "j", &s, NULL, &err), NLLM_EINVAL);
    s = ck_spec("epoch", 4, 400, 2.0);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "nobody", &s, NULL, &err), NLLM_ENOENT);
    CHECK_MSG("nobody");
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "epoch_9", &c, &err), NLLM_ENOENT);
    CHECK_MSG("epoch_9");
    CHECK_RC(nllm_catalog_ckpt_find(cat, "j", "../x", &c, &err), NLLM_EINVAL);
    CHECK_RC(nllm_catalog_ckpt_list(cat, "nobody", 0, &list, &n, &err), NLLM_ENOENT);
    nllm_catalog_close(cat);
}

/* A batch: one transaction; a failing write inside undoes only itself; the
 * rows are durable after end (a second connection sees them), not before. */
static void test_batch(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "batch.db");
    nllm_err_t err = {0};
    nllm_catalog_t *cat = NULL;
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    if (!cat)
        return;
    EXPECT(make_job(cat, "b", 10) == 0);
    nllm_catalog_batch_begin(cat);
    nllm_catalog_epoch_t ep = ep_rec(1, 3.0);
    CHECK_RC(nllm_catalog_epoch_add(cat, "b", &ep, &err), 0);
    CHECK_RC(nllm_catalog_epoch_add(cat, "b", &ep, &err), NLLM_EEXIST); /* undone alone */
    CHECK_RC(nllm_catalog_event_add(cat, "b", "epoch", "epoch 1", &err), 0);
    /* not committed yet: another connection does not see the rows */
    EXPECT(raw_int(path, "SELECT count(*) FROM epochs") == 0);
    CHECK_RC(nllm_catalog_batch_end(cat, &err), 0);
    EXPECT(raw_int(path, "SELECT count(*) FROM epochs") == 1);
    EXPECT(raw_int(path, "SELECT count(*) FROM events WHERE kind = 'epoch'") == 1);
    CHECK_RC(nllm_catalog_batch_end(cat, &err), 0); /* no batch: nothing to do */
    /* without a batch each write commits by itself, as before */
    ep = ep_rec(2, 2.5);
    CHECK_RC(nllm_catalog_epoch_add(cat, "b", &ep, &err), 0);
    EXPECT(raw_int(path, "SELECT count(*) FROM epochs") == 2);
    /* a batch left open at close is rolled back, not committed */
    nllm_catalog_batch_begin(cat);
    ep = ep_rec(3, 2.0);
    CHECK_RC(nllm_catalog_epoch_add(cat, "b", &ep, &err), 0);
    nllm_catalog_close(cat);
    EXPECT(raw_int(path, "SELECT count(*) FROM epochs") == 2);
}

static void test_epochs_resume(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "epochs.db");
    nllm_err_t err = {0};
    nllm_catalog_t *cat = NULL;
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    if (!cat)
        return;
    EXPECT(make_job(cat, "r", 10) == 0);

    /* Attempt 1 runs epochs 1..5 (val loss 5,4,3,2,1) and checkpoints each. */
    for (int e = 1; e <= 5; e++) {
        nllm_catalog_epoch_t ep = ep_rec(e, 6.0 - e);
        CHECK_RC(nllm_catalog_epoch_add(cat, "r", &ep, &err), 0);
        nllm_catalog_ckpt_spec_t s = ck_spec("epoch", e, 100 * e, 6.0 - e);
        CHECK_RC(nllm_catalog_ckpt_add(cat, "r", &s, NULL, &err), 0);
    }
    nllm_catalog_ckpt_spec_t sb = ck_spec("best", 5, 500, 1.0);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "r", &sb, NULL, &err), 0);
    CHECK_RC(nllm_catalog_job_set_progress(cat, "r", 5, 1.0, &err), 0);
    nllm_catalog_epoch_t dup = ep_rec(5, 1.0);
    CHECK_RC(nllm_catalog_epoch_add(cat, "r", &dup, &err), NLLM_EEXIST);
    CHECK_MSG("'r'");
    nllm_catalog_epoch_t zero = ep_rec(0, 1.0);
    CHECK_RC(nllm_catalog_epoch_add(cat, "r", &zero, &err), NLLM_EINVAL);

    /* Resume from the epoch-3 checkpoint. */
    int64_t attempt = 0;
    CHECK_RC(nllm_catalog_job_resume(cat, "r", 3, &attempt, &err), 0);
    EXPECT(attempt == 2);
    nllm_catalog_job_t j;
    CHECK_RC(nllm_catalog_job_get(cat, "r", &j, &err), 0);
    EXPECT(j.attempt == 2 && j.epochs_done == 3 && j.best_val_loss == 3.0);
    nllm_catalog_job_free(&j);

    nllm_catalog_epoch_t *eps = NULL;
    size_t n = 0;
    CHECK_RC(nllm_catalog_epoch_list(cat, "r", 0, &eps, &n, &err), 0);
    EXPECT(n == 3);
    for (size_t i = 0; i < n; i++)
        EXPECT(eps[i].epoch == (int64_t)i + 1 && eps[i].attempt == 1 && !eps[i].superseded);
    nllm_catalog_epochs_free(eps, n);
    CHECK_RC(nllm_catalog_epoch_list(cat, "r", 1, &eps, &n, &err), 0);
    EXPECT(n == 5); /* kept, not deleted */
    if (n == 5)
        EXPECT(eps[3].superseded && eps[4].superseded && !eps[2].superseded &&
               isnan(eps[0].val_acc) && eps[0].val_loss == 5.0 && eps[0].seconds == 1.5);
    nllm_catalog_epochs_free(eps, n);

    /* Checkpoints past epoch 3 left the current line; "latest" is epoch_3. */
    nllm_catalog_ckpt_t c;
    CHECK_RC(nllm_catalog_ckpt_find(cat, "r", "latest", &c, &err), 0);
    EXPECT(strcmp(c.name, "epoch_3") == 0);
    nllm_catalog_ckpt_free(&c);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "r", "epoch_5", &c, &err), 0);
    EXPECT(c.current == 0 && c.attempt == 1); /* still findable: file still on disk */
    nllm_catalog_ckpt_free(&c);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "r", "best", &c, &err), 0);
    EXPECT(c.current == 0 && c.epoch == 5);
    nllm_catalog_ckpt_free(&c);

    /* Attempt 2 runs epochs 4..6; epoch_4 checkpoint replaced. */
    for (int e = 4; e <= 6; e++) {
        nllm_catalog_epoch_t ep = ep_rec(e, 10.0 + e);
        CHECK_RC(nllm_catalog_epoch_add(cat, "r", &ep, &err), 0);
    }
    nllm_catalog_ckpt_spec_t s4 = ck_spec("epoch", 4, 400, 14.0);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "r", &s4, NULL, &err), 0);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "r", "epoch_4", &c, &err), 0);
    EXPECT(c.current == 1 && c.attempt == 2 && c.val_loss == 14.0);
    nllm_catalog_ckpt_free(&c);
    CHECK_RC(nllm_catalog_epoch_list(cat, "r", 0, &eps, &n, &err), 0);
    EXPECT(n == 6);
    if (n == 6) {
        const int64_t want_attempt[] = {1, 1, 1, 2, 2, 2};
        for (size_t i = 0; i < n; i++)
            EXPECT(eps[i].epoch == (int64_t)i + 1 && eps[i].attempt == want_attempt[i]);
        EXPECT(eps[3].val_loss == 14.0);
    }
    nllm_catalog_epochs_free(eps, n);
    EXPECT(raw_int(path, "SELECT count(*) FROM epochs") == 8);

    /* Attempt 3 without an explicit supersede: adding epoch 4 still leaves
     * one current row per epoch. */
    EXPECT(raw_exec(path, "UPDATE jobs SET attempt = 3 WHERE name = 'r'") == SQLITE_OK);
    nllm_catalog_epoch_t e4 = ep_rec(4, 0.5);
    CHECK_RC(nllm_catalog_epoch_add(cat, "r", &e4, &err), 0);
    EXPECT(raw_int(path, "SELECT count(*) FROM epochs WHERE epoch = 4 AND superseded = 0") == 1);
    EXPECT(raw_int(path, "SELECT attempt FROM epochs WHERE epoch = 4 AND superseded = 0") == 3);

    /* The explicit helpers. */
    CHECK_RC(nllm_catalog_epoch_supersede_after(cat, "r", 2, &err), 0);
    CHECK_RC(nllm_catalog_epoch_list(cat, "r", 0, &eps, &n, &err), 0);
    EXPECT(n == 2);
    nllm_catalog_epochs_free(eps, n);
    CHECK_RC(nllm_catalog_ckpt_supersede_after(cat, "r", 1, &err), 0);
    nllm_catalog_ckpt_t *cl = NULL;
    CHECK_RC(nllm_catalog_ckpt_list(cat, "r", 1, &cl, &n, &err), 0);
    EXPECT(n == 1 && cl && strcmp(cl[0].name, "epoch_1") == 0);
    nllm_catalog_ckpts_free(cl, n);
    CHECK_RC(nllm_catalog_epoch_supersede_after(cat, "nobody", 2, &err), NLLM_ENOENT);
    CHECK_RC(nllm_catalog_job_resume(cat, "r", 11, NULL, &err), NLLM_EINVAL);
    CHECK_MSG("num_epochs");
    CHECK_RC(nllm_catalog_job_get(cat, "r", &j, &err), 0);
    EXPECT(j.attempt == 3); /* the failed resume changed nothing */
    nllm_catalog_job_free(&j);
    nllm_catalog_close(cat);
}

static void test_events(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "events.db");
    nllm_err_t err = {0};
    nllm_catalog_t *cat = NULL;
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    if (!cat)
        return;
    EXPECT(make_job(cat, "a", 1) == 0);
    EXPECT(make_job(cat, "b", 1) == 0);
    CHECK_RC(nllm_catalog_event_add(cat, "b", "started", "first", &err), 0);
    const int total = NLLM_CATALOG_EVENTS_PER_JOB + 5;
    for (int i = 0; i < total; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "e%d", i);
        nllm_err_clear(&err);
        int rc = nllm_catalog_event_add(cat, "a", "checkpoint", msg, &err);
        if (rc) {
            CHECK_RC(rc, 0);
            break;
        }
    }
    CHECK_RC(nllm_catalog_event_add(cat, "b", "completed", NULL, &err), 0);
    EXPECT(raw_int(path, "SELECT count(*) FROM events e JOIN jobs j ON j.id = e.job_id"
                         " WHERE j.name = 'a'") == NLLM_CATALOG_EVENTS_PER_JOB);

    nllm_catalog_event_t *ev = NULL;
    size_t n = 0;
    CHECK_RC(nllm_catalog_event_list(cat, "a", 0, &ev, &n, &err), 0);
    EXPECT(n == NLLM_CATALOG_EVENTS_PER_JOB);
    if (n == NLLM_CATALOG_EVENTS_PER_JOB) {
        char want[32];
        snprintf(want, sizeof want, "e%d", total - 1);
        EXPECT(strcmp(ev[0].message, want) == 0);
        snprintf(want, sizeof want, "e%d", total - NLLM_CATALOG_EVENTS_PER_JOB);
        EXPECT(strcmp(ev[n - 1].message, want) == 0);
        EXPECT(strcmp(ev[0].kind, "checkpoint") == 0 && ev[0].ts >= ev[n - 1].ts);
    }
    nllm_catalog_events_free(ev, n);
    CHECK_RC(nllm_catalog_event_list(cat, "a", 10, &ev, &n, &err), 0);
    EXPECT(n == 10);
    nllm_catalog_events_free(ev, n);
    CHECK_RC(nllm_catalog_event_list(cat, "b", 0, &ev, &n, &err), 0);
    EXPECT(n == 2);
    if (n == 2)
        EXPECT(strcmp(ev[0].kind, "completed") == 0 && strcmp(ev[0].message, "") == 0 &&
               strcmp(ev[1].message, "first") == 0);
    nllm_catalog_events_free(ev, n);

    CHECK_RC(nllm_catalog_event_add(cat, "a", "Bad Kind", "x", &err), NLLM_EINVAL);
    CHECK_RC(nllm_catalog_event_add(cat, "nobody", "started", "x", &err), NLLM_ENOENT);
    CHECK_MSG("nobody");

    /* Long messages are cut, at a character boundary. */
    size_t big = NLLM_CATALOG_EVENT_MSG_MAX + 100;
    char *msg = malloc(big + 1);
    if (msg) {
        for (size_t i = 0; i + 1 < big; i += 2) {
            msg[i] = (char)0xc3;
            msg[i + 1] = (char)0xa9;
        }
        msg[big] = '\0';
        CHECK_RC(nllm_catalog_event_add(cat, "b", "verify", msg, &err), 0);
        CHECK_RC(nllm_catalog_event_list(cat, "b", 1, &ev, &n, &err), 0);
        EXPECT(n == 1 && strlen(ev[0].message) <= NLLM_CATALOG_EVENT_MSG_MAX &&
               strlen(ev[0].message) % 2 == 0);
        nllm_catalog_events_free(ev, n);
        free(msg);
    }
    nllm_catalog_close(cat);
}

/* The first design, frozen as the v1 daemon wrote it. */
static const char v1_ddl[] =
    "CREATE TABLE jobs ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " name TEXT NOT NULL UNIQUE,"
    " state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued','running',"
    "   'pausing','paused','completed','stopped','failed','interrupted')),"
    " config TEXT NOT NULL DEFAULT '{}',"
    " num_epochs INTEGER NOT NULL CHECK (num_epochs >= 1),"
    " epochs_done INTEGER NOT NULL DEFAULT 0"
    "   CHECK (epochs_done >= 0 AND epochs_done <= num_epochs),"
    " best_val_loss REAL, error TEXT, parent_job TEXT, parent_checkpoint TEXT,"
    " attempt INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),"
    " created_at REAL NOT NULL, updated_at REAL NOT NULL);"
    "CREATE TABLE checkpoints ("
    " id INTEGER PRIMARY KEY,"
    " job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    " kind TEXT NOT NULL CHECK (kind IN ('best','epoch','final','paused')),"
    " name TEXT NOT NULL, epoch INTEGER NOT NULL CHECK (epoch >= 0),"
    " step INTEGER NOT NULL CHECK (step >= 0), path TEXT NOT NULL,"
    " size INTEGER NOT NULL CHECK (size >= 0), checksum TEXT NOT NULL, val_loss REAL,"
    " created_at REAL NOT NULL,"
    " status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok','bad')), bad_reason TEXT,"
    " current INTEGER NOT NULL DEFAULT 1 CHECK (current IN (0,1)),"
    " attempt INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),"
    " CHECK ((status = 'bad') = (bad_reason IS NOT NULL)));"
    "CREATE UNIQUE INDEX checkpoints_one_current ON checkpoints(job_id, name) WHERE current = 1;"
    "CREATE UNIQUE INDEX checkpoints_epoch_name ON checkpoints(job_id, name) WHERE kind = 'epoch';"
    "CREATE INDEX checkpoints_job_step ON checkpoints(job_id, current, step);"
    "CREATE TABLE epochs ("
    " id INTEGER PRIMARY KEY,"
    " job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    " epoch INTEGER NOT NULL CHECK (epoch >= 1),"
    " train_loss REAL, val_loss REAL, train_ppl REAL, val_ppl REAL, val_acc REAL,"
    " seconds REAL, tokens_per_s REAL,"
    " superseded INTEGER NOT NULL DEFAULT 0 CHECK (superseded IN (0,1)),"
    " created_at REAL NOT NULL);"
    "CREATE INDEX epochs_job_epoch ON epochs(job_id, epoch);"
    "CREATE TABLE events ("
    " id INTEGER PRIMARY KEY,"
    " job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    " ts REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX events_job_id ON events(job_id, id);"
    "PRAGMA user_version = 1;";

/* A v1 catalog with history: job "old" ran epochs 1..5, was resumed from 3
 * (attempt 2) and ran 4..6; job "other" ran 1..2. */
static const char v1_rows[] =
    "INSERT INTO jobs (id, name, state, config, num_epochs, epochs_done, best_val_loss,"
    " error, attempt, created_at, updated_at) VALUES"
    " (1, 'old', 'interrupted', '{\"lr\":0.01}', 8, 6, 1.25, 'daemon restarted', 2,"
    "  1700000000, 1700000100),"
    " (2, 'other', 'completed', '{}', 2, 2, NULL, NULL, 1, 1700000200, 1700000300);"
    "INSERT INTO epochs (job_id, epoch, val_loss, superseded, created_at) VALUES"
    " (1, 1, 5.0, 0, 1), (1, 2, 4.0, 0, 2), (1, 3, 3.0, 0, 3), (1, 4, 2.0, 1, 4),"
    " (1, 5, 1.0, 1, 5), (2, 1, 9.0, 0, 6), (1, 4, 2.5, 0, 7), (1, 5, 1.5, 0, 8),"
    " (1, 6, 1.25, 0, 9), (2, 2, 8.0, 0, 10);"
    "INSERT INTO checkpoints (job_id, kind, name, epoch, step, path, size, checksum,"
    " val_loss, created_at, status, bad_reason, current, attempt) VALUES"
    " (1, 'epoch', 'epoch_6', 6, 600, '/d/old/epoch_6.ckpt', 4096, 'aaaaaaaaaaaaaaaa', 1.25,"
    "  1700000090, 'ok', NULL, 1, 2),"
    " (1, 'best', 'best', 6, 600, '/d/old/best.ckpt', 4096, 'bbbbbbbbbbbbbbbb', 1.25,"
    "  1700000091, 'bad', 'checksum mismatch', 1, 2);"
    "INSERT INTO events (job_id, ts, kind, message) VALUES"
    " (1, 1700000000, 'started', 'hello'), (1, 1700000100, 'interrupted', 'restart');";

static void test_migration(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "v1.db");
    EXPECT(raw_exec(path, "PRAGMA journal_mode = WAL") == SQLITE_OK);
    EXPECT(raw_exec(path, v1_ddl) == SQLITE_OK);
    EXPECT(raw_exec(path, v1_rows) == SQLITE_OK);
    EXPECT(raw_int(path, "PRAGMA user_version") == 1);

    nllm_err_t err = {0};
    nllm_catalog_t *cat = NULL;
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    if (!cat)
        return;
    nllm_catalog_settings_t s;
    CHECK_RC(nllm_catalog_settings(cat, &s, &err), 0);
    EXPECT(s.user_version == NLLM_CATALOG_SCHEMA_VERSION);
    CHECK_RC(nllm_catalog_integrity_check(cat, &err), 0);

    nllm_catalog_job_t j;
    CHECK_RC(nllm_catalog_job_get(cat, "old", &j, &err), 0);
    EXPECT(j.id == 1 && strcmp(j.state, "interrupted") == 0 && j.num_epochs == 8 &&
           j.epochs_done == 6 && j.best_val_loss == 1.25 && j.attempt == 2 &&
           j.created_at == 1700000000.0);
    EXPECT(j.error && strcmp(j.error, "daemon restarted") == 0);
    EXPECT(j.config && strcmp(j.config, "{\"lr\":0.01}") == 0);
    nllm_catalog_job_free(&j);

    /* Attempts reconstructed from the order rows were written. */
    nllm_catalog_epoch_t *eps = NULL;
    size_t n = 0;
    CHECK_RC(nllm_catalog_epoch_list(cat, "old", 0, &eps, &n, &err), 0);
    EXPECT(n == 6);
    if (n == 6) {
        const int64_t want[] = {1, 1, 1, 2, 2, 2};
        for (size_t i = 0; i < n; i++)
            EXPECT(eps[i].epoch == (int64_t)i + 1 && eps[i].attempt == want[i] &&
                   !eps[i].superseded);
        EXPECT(eps[3].val_loss == 2.5 && eps[5].val_loss == 1.25 && isnan(eps[0].train_loss));
    }
    nllm_catalog_epochs_free(eps, n);
    CHECK_RC(nllm_catalog_epoch_list(cat, "old", 1, &eps, &n, &err), 0);
    EXPECT(n == 8);
    nllm_catalog_epochs_free(eps, n);
    CHECK_RC(nllm_catalog_epoch_list(cat, "other", 0, &eps, &n, &err), 0);
    EXPECT(n == 2 && eps && eps[1].attempt == 1 && eps[1].val_loss == 8.0);
    nllm_catalog_epochs_free(eps, n);

    nllm_catalog_ckpt_t c;
    CHECK_RC(nllm_catalog_ckpt_find(cat, "old", "latest", &c, &err), 0);
    EXPECT(strcmp(c.name, "epoch_6") == 0 && c.weights_hash == NULL && c.size == 4096 &&
           strcmp(c.checksum, "aaaaaaaaaaaaaaaa") == 0 && c.attempt == 2);
    nllm_catalog_ckpt_free(&c);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "old", "best", &c, &err), 0);
    EXPECT(strcmp(c.status, "bad") == 0 && c.bad_reason &&
           strcmp(c.bad_reason, "checksum mismatch") == 0);
    nllm_catalog_ckpt_free(&c);

    nllm_catalog_event_t *ev = NULL;
    CHECK_RC(nllm_catalog_event_list(cat, "old", 0, &ev, &n, &err), 0);
    EXPECT(n == 2 && ev && strcmp(ev[0].kind, "interrupted") == 0);
    nllm_catalog_events_free(ev, n);

    /* The migrated catalog works under the v2 rules. */
    nllm_catalog_epoch_t e7 = ep_rec(7, 1.0);
    CHECK_RC(nllm_catalog_epoch_add(cat, "old", &e7, &err), 0);
    CHECK_RC(nllm_catalog_epoch_add(cat, "old", &e7, &err), NLLM_EEXIST);
    nllm_catalog_ckpt_spec_t sp = ck_spec("epoch", 7, 700, 1.0);
    CHECK_RC(nllm_catalog_ckpt_add(cat, "old", &sp, NULL, &err), 0);
    CHECK_RC(nllm_catalog_ckpt_find(cat, "old", "latest", &c, &err), 0);
    EXPECT(c.epoch == 7 && c.weights_hash && strcmp(c.weights_hash, "feedbeef") == 0);
    nllm_catalog_ckpt_free(&c);
    nllm_catalog_close(cat);
    EXPECT(raw_int(path, "PRAGMA user_version") == NLLM_CATALOG_SCHEMA_VERSION);
    EXPECT(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'mig2%'") == 0);

    /* A catalog from a newer nllm is refused, untouched. */
    char newer[128];
    path_in_dir(newer, sizeof newer, "newer.db");
    EXPECT(raw_exec(newer, "CREATE TABLE t (x); PRAGMA user_version = 99;") == SQLITE_OK);
    CHECK_RC(nllm_catalog_open(newer, &cat, &err), NLLM_EMISMATCH);
    CHECK_MSG(newer);
    EXPECT(cat == NULL);
    EXPECT(raw_int(newer, "PRAGMA user_version") == 99);

    /* An SQLite database that is not a catalog is refused, untouched. */
    char foreign[128];
    path_in_dir(foreign, sizeof foreign, "foreign.db");
    EXPECT(raw_exec(foreign, "CREATE TABLE people (name TEXT);") == SQLITE_OK);
    CHECK_RC(nllm_catalog_open(foreign, &cat, &err), NLLM_ECORRUPT);
    CHECK_MSG(foreign);
    EXPECT(raw_int(foreign, "SELECT count(*) FROM sqlite_master WHERE name = 'jobs'") == 0);
}

static void test_not_a_database(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "notes.txt");
    FILE *f = fopen(path, "w");
    EXPECT(f != NULL);
    if (!f)
        return;
    for (int i = 0; i < 200; i++)
        fputs("this is a text file, not an SQLite database.\n", f);
    fclose(f);
    nllm_err_t err = {0};
    nllm_catalog_t *cat = (nllm_catalog_t *)&err; /* must be reset to NULL */
    CHECK_RC(nllm_catalog_open(path, &cat, &err), NLLM_ECORRUPT);
    EXPECT(cat == NULL);
    CHECK_MSG(path);
    CHECK_MSG("not a database");
    f = fopen(path, "r");
    char line[64] = "";
    EXPECT(f && fgets(line, sizeof line, f) && strncmp(line, "this is a text", 14) == 0);
    if (f)
        fclose(f);
}

static void test_corrupt_and_full(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "damaged.db");
    nllm_err_t err = {0};
    nllm_catalog_t *cat = NULL;
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    if (!cat)
        return;
    EXPECT(make_job(cat, "d", 3) == 0);
    for (int i = 0; i < 200; i++)
        CHECK_RC(nllm_catalog_event_add(cat, "d", "verify",
                                        "padding padding padding padding "
                                        "padding padding padding padding",
                                        &err),
                 0);

    /* Disk full: cap the file at its current size on this connection. */
    sqlite3 *db = nllm_catalog_db(cat);
    EXPECT(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL) == SQLITE_OK);
    long long pages = raw_int(path, "PRAGMA page_count");
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count = %lld", pages);
    EXPECT(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK);
    char *big = malloc(64 * 1024);
    int rc = 0;
    if (big) {
        memset(big, 'x', 64 * 1024 - 1);
        big[64 * 1024 - 1] = '\0';
        for (int i = 0; i < 50 && rc == 0; i++) {
            char name[16];
            snprintf(name, sizeof name, "full%d", i);
            nllm_catalog_job_spec_t s = {.name = name, .num_epochs = 1};
            rc = nllm_catalog_job_create(cat, &s, NULL, &err);
            if (rc == 0)
                rc = nllm_catalog_event_add(cat, name, "verify", big, &err);
        }
        free(big);
    }
    CHECK_RC(rc, NLLM_ENOSPC);
    CHECK_MSG(path);
    /* The catalog stays usable after the failed write. */
    snprintf(sql, sizeof sql, "PRAGMA max_page_count = %lld", 1LL << 30);
    EXPECT(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK);
    CHECK_RC(nllm_catalog_event_add(cat, "d", "verify", "after", &err), 0);
    nllm_catalog_close(cat);

    /* Damage: overwrite every page after the first with junk. */
    long long psize = raw_int(path, "PRAGMA page_size");
    FILE *f = fopen(path, "r+b");
    EXPECT(f != NULL);
    if (!f)
        return;
    EXPECT(fseek(f, 0, SEEK_END) == 0);
    long size = ftell(f);
    EXPECT(psize > 0 && size > 2 * psize);
    char junk[512];
    memset(junk, 0x5a, sizeof junk);
    for (long off = (long)psize; off + (long)sizeof junk <= size; off += (long)sizeof junk) {
        fseek(f, off, SEEK_SET);
        fwrite(junk, 1, sizeof junk, f);
    }
    fclose(f);
    rc = nllm_catalog_open(path, &cat, &err);
    if (rc == 0) {
        rc = nllm_catalog_integrity_check(cat, &err);
        nllm_catalog_close(cat);
    }
    CHECK_RC(rc, NLLM_ECORRUPT);
    CHECK_MSG(path);
}

static void test_cascade(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "cascade.db");
    nllm_err_t err = {0};
    nllm_catalog_t *cat = NULL;
    CHECK_RC(nllm_catalog_open(path, &cat, &err), 0);
    if (!cat)
        return;
    EXPECT(make_job(cat, "gone", 4) == 0);
    EXPECT(make_job(cat, "kept", 4) == 0);
    const char *jobs[] = {"gone", "kept"};
    for (int k = 0; k < 2; k++) {
        for (int e = 1; e <= 3; e++) {
            nllm_catalog_epoch_t ep = ep_rec(e, 1.0);
            CHECK_RC(nllm_catalog_epoch_add(cat, jobs[k], &ep, &err), 0);
            nllm_catalog_ckpt_spec_t s = ck_spec("epoch", e, e * 10, 1.0);
            CHECK_RC(nllm_catalog_ckpt_add(cat, jobs[k], &s, NULL, &err), 0);
            CHECK_RC(nllm_catalog_event_add(cat, jobs[k], "checkpoint", "saved", &err), 0);
        }
    }
    CHECK_RC(nllm_catalog_job_delete(cat, "gone", &err), 0);
    const char *tables[] = {"checkpoints", "epochs", "events"};
    for (int t = 0; t < 3; t++) {
        char sql[160];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM %s WHERE job_id NOT IN (SELECT id FROM jobs)", tables[t]);
        EXPECT(raw_int(path, sql) == 0);
        snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", tables[t]);
        EXPECT(raw_int(path, sql) == 3);
    }
    CHECK_RC(nllm_catalog_integrity_check(cat, &err), 0);
    nllm_catalog_close(cat);
}

static void remove_dir(void)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/nllm_catalog_XXXXXX", tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        printf("SKIP: cannot create a temporary folder under %s\n", tmp ? tmp : "/tmp");
        return 77;
    }
    RUN(test_names);
    RUN(test_open_and_pragmas);
    RUN(test_jobs);
    RUN(test_checkpoints);
    RUN(test_batch);
    RUN(test_epochs_resume);
    RUN(test_events);
    RUN(test_migration);
    RUN(test_not_a_database);
    RUN(test_corrupt_and_full);
    RUN(test_cascade);
    remove_dir();
    return TEST_REPORT();
}
