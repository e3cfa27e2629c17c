/* test_crash.c -- a committed checkpoint survives a crash at any instant.
 *
 * Crash loop: a child process saves checkpoints the way nllmd does (file
 * durable first, then the catalog row) over and over; the parent SIGKILLs
 * it after a random delay, then checks that every row the catalog lists
 * points at a file that opens, matches its checksum and loads, and that no
 * row is lost or half-written. Fault sweep: ENOSPC and EIO injected at every
 * write / fsync / rename / folder fsync of one save leave the previous file
 * and the catalog intact, remove the temp file and report the error.
 */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "ckpt.h"
#include "fsutil.h"
#include "safetensors.h"
#include "testutil.h"

static char dir[256];
static nllm_ckpt_t *base;

/* A checkpoint of a small model with realistic metadata. */
static nllm_ckpt_t *make_ckpt(void)
{
    nllm_job_config_t cfg;
    nllm_job_config_defaults(&cfg);
    cfg.model = (nllm_model_config_t){200, 32, 64, 32, 3, 16, 0.1f};
    snprintf(cfg.data, sizeof cfg.data, "/data/x.txt");
    nllm_ckpt_t *c = calloc(1, sizeof *c);
    snprintf(c->job, sizeof c->job, "crash");
    c->kind = NLLM_CKPT_EPOCH;
    c->config = cfg;
    nllm_progress_init(&c->progress);
    nllm_err_t err;
    if (nllm_model_layout(&cfg.model, &c->params, &c->nparams, &c->nfloats, &err) < 0)
        abort();
    c->weights = malloc(sizeof(float) * (size_t)c->nfloats);
    c->exp_avg = malloc(sizeof(float) * (size_t)c->nfloats);
    c->exp_avg_sq = malloc(sizeof(float) * (size_t)c->nfloats);
    for (int64_t i = 0; i < c->nfloats; i++)
        c->weights[i] = c->exp_avg[i] = c->exp_avg_sq[i] = (float)i * 1e-3f;
    return c;
}

/* One save as nllmd does it; epoch e changes the content. */
static int save(nllm_catalog_t *cat, int e, nllm_err_t *err)
{
    base->weights[0] = (float)e;
    base->progress.epoch = 0;
    base->progress.global_step = e;
    base->weights_hash = nllm_ckpt_weights_hash(base->params, base->nparams, base->weights);
    char path[512];
    snprintf(path, sizeof path, "%s/crash_epoch_%d.safetensors", dir, e % 4);
    uint64_t h, size;
    int rc = nllm_ckpt_write(base, path, &h, &size, err);
    if (rc < 0)
        return rc;
    char sum[17], name[32];
    snprintf(sum, sizeof sum, "%016llx", (unsigned long long)h);
    snprintf(name, sizeof name, "epoch_%d", e % 4 + 1);
    nllm_catalog_ckpt_spec_t spec = {"epoch", name, e % 4 + 1, e, path, (int64_t)size, sum,
                                     NULL, 1.0};
    return nllm_catalog_ckpt_add(cat, "crash", &spec, NULL, err);
}

static void child(void)
{
    char p[512];
    snprintf(p, sizeof p, "%s/catalog.db", dir);
    nllm_catalog_t *cat;
    nllm_err_t err;
    if (nllm_catalog_open(p, &cat, &err) < 0)
        _exit(3);
    for (int e = 1;; e++)
        if (save(cat, e, &err) < 0)
            _exit(4);
}

/* Every listed row verifies and loads, except rows already marked bad (the
 * kill loop marks a row whose file a later, unrecorded save replaced, as
 * nllmd's start-up does). Returns the number of rows. */
static int check_catalog(const char *when)
{
    char p[512];
    snprintf(p, sizeof p, "%s/catalog.db", dir);
    nllm_catalog_t *cat;
    nllm_err_t err;
    if (nllm_catalog_open(p, &cat, &err) < 0) {
        CHECK(0, "%s: catalog does not open: %s", when, err.msg);
        return -1;
    }
    CHECK(nllm_catalog_integrity_check(cat, &err) == 0, "%s: integrity: %s", when, err.msg);
    nllm_catalog_ckpt_t *cks;
    size_t n = 0;
    if (nllm_catalog_ckpt_list(cat, "crash", 1, &cks, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++) {
            if (strcmp(cks[i].status, "ok") != 0)
                continue;
            nllm_ckpt_t *c;
            uint64_t want = strtoull(cks[i].checksum, NULL, 16);
            int rc = nllm_ckpt_load(cks[i].path, want, NULL, &c, &err);
            if (rc == 0 && c->progress.global_step != cks[i].step) {
                /* the file under this name was replaced by a newer save whose row
                 * did not commit: its checksum would have failed above */
                rc = -1;
            }
            CHECK(rc == 0, "%s: listed checkpoint %s does not load: %s", when, cks[i].name,
                  err.msg);
            nllm_ckpt_free(rc == 0 ? c : NULL);
        }
        nllm_catalog_ckpts_free(cks, n);
    }
    nllm_catalog_close(cat);
    return (int)n;
}

static void test_kill_loop(void)
{
    /* the catalog row may lag the file (crash between rename and commit): then
     * the listed row's checksum no longer matches the new file; nllmd marks such
     * rows bad at startup. A row must never point at a torn file, so after each
     * kill every row either verifies or its file was fully replaced by a later
     * complete save (detected by checksum). */
    int kills = 0, mismatched = 0, rows_seen = 0;
    long window_us = 40000; /* kill 2 ms + up to this after the fork */
    srand(12345);
    for (int k = 0; k < 30; k++) {
        pid_t pid = fork();
        if (pid == 0)
            child();
        long us = rand() % window_us + 2000L;
        struct timespec ts = {us / 1000000L, (us % 1000000L) * 1000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        kills++;
        /* reconcile like nllmd: remove temp files, mark rows whose file fails */
        int removed;
        nllm_err_t err;
        nllm_fs_remove_temp_files(dir, &removed, &err);
        char p[512];
        snprintf(p, sizeof p, "%s/catalog.db", dir);
        nllm_catalog_t *cat;
        CHECK(nllm_catalog_open(p, &cat, &err) == 0, "reopen: %s", err.msg);
        nllm_catalog_ckpt_t *cks;
        size_t n = 0;
        nllm_catalog_ckpt_list(cat, "crash", 1, &cks, &n, &err);
        for (size_t i = 0; i < n; i++) {
            nllm_st_file_t *f;
            uint64_t h = 0;
            int rc = nllm_st_open(cks[i].path, &f, &h, &err);
            CHECK(rc == 0, "kill %d: %s is torn or missing: %s", k, cks[i].path, err.msg);
            if (rc == 0)
                nllm_st_close(f);
            char sum[17];
            snprintf(sum, sizeof sum, "%016llx", (unsigned long long)h);
            if (rc == 0 && strcmp(sum, cks[i].checksum) != 0) {
                mismatched++;
                nllm_catalog_ckpt_mark_bad(cat, "crash", cks[i].id, "replaced by an unrecorded save",
                                           &err);
            }
        }
        rows_seen += (int)n;
        /* a slow machine (sanitizers, load) may not finish a first save
         * in the window: widen it until a save has committed */
        if (rows_seen == 0 && window_us < 2000000)
            window_us *= 2;
        nllm_catalog_ckpts_free(cks, n);
        nllm_catalog_close(cat);
        DIR *dd = opendir(dir);
        struct dirent *de;
        int temps = 0;
        while ((de = readdir(dd)))
            temps += strstr(de->d_name, ".tmp.") != NULL;
        closedir(dd);
        CHECK(temps == 0, "kill %d: %d temp files left after cleanup", k, temps);
    }
    printf("     %d kills, %d catalog rows checked, %d rows whose file a later unrecorded "
           "save replaced (marked bad, as nllmd does)\n",
           kills, rows_seen, mismatched);
    CHECK(rows_seen > 0, "the child never committed a checkpoint");
}

static void test_fault_sweep(void)
{
    char p[512];
    snprintf(p, sizeof p, "%s/faults", dir);
    nllm_err_t err;
    nllm_fs_mkdir_p(p, 0755, &err);
    char db[600];
    snprintf(db, sizeof db, "%s/catalog.db", p);
    nllm_catalog_t *cat;
    CHECK(nllm_catalog_open(db, &cat, &err) == 0, "%s", err.msg);
    nllm_catalog_job_spec_t js = {"crash", "{}", 10, NULL, NULL};
    nllm_catalog_job_create(cat, &js, NULL, &err);
    char save_dir[256];
    snprintf(save_dir, sizeof save_dir, "%s", dir);
    snprintf(dir, sizeof dir, "%s", p);
    CHECK(save(cat, 4, &err) == 0, "first save: %s", err.msg); /* epoch_1 file, e=4 */
    nllm_catalog_ckpt_t before;
    nllm_catalog_ckpt_find(cat, "crash", "epoch_1", &before, &err);
    int ops[4] = {NLLM_FS_OP_WRITE, NLLM_FS_OP_FSYNC, NLLM_FS_OP_RENAME, NLLM_FS_OP_DIRSYNC};
    const char *opn[4] = {"write", "fsync", "rename", "dirsync"};
    int errs[2] = {28 /* ENOSPC */, 5 /* EIO */};
    int cases = 0;
    for (int o = 0; o < 4; o++)
        for (int e = 0; e < 2; e++)
            for (long nth = 1; nth <= (ops[o] == NLLM_FS_OP_WRITE ? 6 : 1); nth++) {
                nllm_fs_fault_clear_all();
                nllm_fs_fault_set(ops[o], nth, errs[e]);
                int rc = save(cat, 8, &err); /* same file name (e % 4 == 0) */
                nllm_fs_fault_clear_all();
                cases++;
                CHECK(rc == (errs[e] == 28 ? NLLM_ENOSPC : NLLM_EIO),
                      "%s #%ld %s: rc %d (%s)", opn[o], nth, errs[e] == 28 ? "ENOSPC" : "EIO", rc,
                      err.msg);
                CHECK(strstr(err.msg, "crash_epoch_0") != NULL, "%s: message lacks the file: %s",
                      opn[o], err.msg);
                nllm_catalog_ckpt_t now;
                nllm_catalog_ckpt_find(cat, "crash", "epoch_1", &now, &err);
                CHECK(now.step == before.step && !strcmp(now.checksum, before.checksum),
                      "%s: catalog row changed after a failed save", opn[o]);
                nllm_ckpt_t *c = NULL;
                CHECK(nllm_ckpt_load(now.path, strtoull(now.checksum, NULL, 16), NULL, &c, &err) ==
                          0,
                      "%s #%ld: previous checkpoint no longer loads: %s", opn[o], nth, err.msg);
                nllm_ckpt_free(c);
                nllm_catalog_ckpt_free(&now);
                DIR *dd = opendir(p);
                struct dirent *de;
                int temps = 0;
                while ((de = readdir(dd)))
                    temps += strstr(de->d_name, ".tmp.") != NULL;
                closedir(dd);
                CHECK(temps == 0, "%s #%ld: temp file left behind", opn[o], nth);
            }
    printf("     %d injected faults: previous checkpoint and catalog intact each time\n", cases);
    nllm_catalog_ckpt_free(&before);
    nllm_catalog_close(cat);
    snprintf(dir, sizeof dir, "%s", save_dir);
}

static void test_final_catalog(void)
{
    CHECK(check_catalog("final") > 0, "final: the catalog lists checkpoints");
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/nllm_test_crash.XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    base = make_ckpt();
    char p[512];
    snprintf(p, sizeof p, "%s/catalog.db", dir);
    nllm_catalog_t *cat;
    nllm_err_t err;
    if (nllm_catalog_open(p, &cat, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    nllm_catalog_job_spec_t js = {"crash", "{}", 10, NULL, NULL};
    nllm_catalog_job_create(cat, &js, NULL, &err);
    nllm_catalog_close(cat);
    RUN(test_kill_loop);
    RUN(test_fault_sweep);
    RUN(test_final_catalog);
    nllm_ckpt_free(base);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return TEST_REPORT();
}
