/* fuzz_daemon.h -- what the libFuzzer targets that drive a daemon
 * (fuzz_http.c, fuzz_rpc.c) share: the daemon D, a state folder in
 * /dev/shm (else /tmp) removed at exit, and die(). Define FUZZ_NAME (the
 * target's name, for messages) before including it. Header-only: each
 * target is one translation unit (tests/fuzz/run.sh).
 */
#ifndef NLLM_FUZZ_DAEMON_H
#define NLLM_FUZZ_DAEMON_H

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "http.h"
#include "jobs.h"
#include "methods.h"
#include "nllmd.h"
#include "server.h"

#ifndef FUZZ_NAME
#error "define FUZZ_NAME before including fuzz_daemon.h"
#endif

static nllmd_t D;
static char state_dir[256];
static FILE *diag; /* where die() writes; NULL: stderr */

static void rm_tree(const char *path)
{
    DIR *dir = opendir(path);
    if (!dir) {
        unlink(path);
        return;
    }
    struct dirent *de;
    char p[1024];
    while ((de = readdir(dir))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", path, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_tree(p);
        else
            unlink(p);
    }
    closedir(dir);
    rmdir(path);
}

static void cleanup(void)
{
    if (state_dir[0])
        rm_tree(state_dir);
}

static void die(const char *what, const nllm_err_t *err)
{
    fprintf(diag ? diag : stderr, FUZZ_NAME ": %s: %s\n", what, err ? err->msg : strerror(errno));
    abort();
}

/* The state folder nllm-fuzz-TAG-XXXXXX (removed at exit), and D in it as
 * nllmd sets itself up, up to an open catalog: one job at a time, the
 * default loop, the event mutex, the jobs folder. The target adds its own
 * options, handles and jobs. */
static void fuzz_daemon_init(const char *tag)
{
    nllm_err_t err;
    snprintf(state_dir, sizeof state_dir, "/dev/shm/nllm-fuzz-%s-XXXXXX", tag);
    if (!mkdtemp(state_dir)) {
        snprintf(state_dir, sizeof state_dir, "/tmp/nllm-fuzz-%s-XXXXXX", tag);
        if (!mkdtemp(state_dir))
            die("mkdtemp", NULL);
    }
    atexit(cleanup);
    nllmd_t *d = &D;
    snprintf(d->opt.state_dir, sizeof d->opt.state_dir, "%s", state_dir);
    d->opt.max_jobs = 1;
    d->opt.jobs_per_device = 1;
    d->loop = uv_default_loop();
    d->started = uv_now(d->loop) / 1000.0;
    pthread_mutex_init(&d->evmu, NULL);
    char p[512];
    snprintf(p, sizeof p, "%s/jobs", state_dir);
    if (nllm_fs_mkdir_p(p, 0750, &err) < 0)
        die("state dir", &err);
    snprintf(p, sizeof p, "%s/catalog.db", state_dir);
    if (nllm_catalog_open(p, &d->cat, &err) < 0)
        die("catalog", &err);
}

#endif /* NLLM_FUZZ_DAEMON_H */
