/* fuzz_http.c -- libFuzzer target: hostile bytes on nllmd's HTTP listener.
 *
 * The input (byte 0: which listener address, byte 1: read size, the rest:
 * what the peer sent) goes through nllmd_http_parse_request, which drives
 * http.c's http_parser callbacks, limits, Host check and routing exactly as
 * a connection does, without a socket. The daemon behind it has a catalog
 * in /dev/shm and two jobs (one queued, one paused), so /metrics and
 * /api/jobs/NAME reach the catalog. Built by tests/fuzz/run.sh.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "nllmd.h"

static nllmd_t D;
static char state_dir[256];

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
    fprintf(stderr, "fuzz_http: %s: %s\n", what, err ? err->msg : "");
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    nllm_err_t err;
    snprintf(state_dir, sizeof state_dir, "/dev/shm/nllm-fuzz-http-XXXXXX");
    if (!mkdtemp(state_dir)) {
        snprintf(state_dir, sizeof state_dir, "/tmp/nllm-fuzz-http-XXXXXX");
        if (!mkdtemp(state_dir))
            die("mkdtemp", NULL);
    }
    atexit(cleanup);
    nllmd_t *d = &D;
    snprintf(d->opt.state_dir, sizeof d->opt.state_dir, "%s", state_dir);
    d->opt.max_jobs = 1;
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
    snprintf(p, sizeof p, "%s/train.txt", state_dir);
    FILE *f = fopen(p, "w");
    if (!f)
        die("train.txt", NULL);
    fputs("the quick brown fox\n", f);
    fclose(f);
    nllm_job_config_t cfg;
    nllm_job_config_defaults(&cfg);
    snprintf(cfg.data, sizeof cfg.data, "%s", p);
    nllm_job_t *j;
    if (nllmd_job_create(d, "demo", &cfg, NULL, NULL, NULL, &j, &err) < 0 ||
        nllmd_job_create(d, "a.b_c-1", &cfg, NULL, NULL, NULL, &j, &err) < 0 ||
        nllmd_job_pause(j, 0, &err) < 0)
        die("jobs", &err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const hosts[] = {"127.0.0.1", "::1", "0.0.0.0", "::", "192.0.2.7",
                                        "2001:db8::7", "127.0.0.2", "::ffff:127.0.0.1"};
    if (size < 2)
        return 0;
    const char *host = hosts[data[0] & 7];
    int port = (data[0] & 8) ? 80 : 9477;
    size_t piece = data[1] == 0 ? 0 : data[1]; /* 0: as large as a real read */
    int n = 0;
    int status = nllmd_http_parse_request(&D, host, port, (const char *)data + 2, size - 2,
                                          piece, &n);
    if (status < 0 || (status == 0) != (n == 0) || (status && (status < 100 || status > 599))) {
        fprintf(stderr, "fuzz_http: status %d after %d responses\n", status, n);
        abort();
    }
    return 0;
}
