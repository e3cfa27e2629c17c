/* fuzz_http.c -- libFuzzer target: hostile bytes on nllmd's HTTP listener.
 *
 * The input (byte 0: which listener address, byte 1: read size, the rest:
 * what the peer sent) goes through nllmd_http_parse_request, which drives
 * http.c's http_parser callbacks, limits, Host check and routing exactly as
 * a connection does, without a socket. The daemon behind it has a catalog
 * in /dev/shm and two jobs (one queued, one paused), so /metrics and
 * /api/jobs/NAME reach the catalog. Built by tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_NAME "fuzz_http"
#include "fuzz_daemon.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    nllm_err_t err;
    fuzz_daemon_init("http");
    nllmd_t *d = &D;
    char p[512];
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
