/* fuzz_ckpt.c -- libFuzzer target: nllm_ckpt_load on a hostile file.
 *
 * The input is written to one file in /dev/shm (rewritten in place each
 * run) and loaded as a checkpoint twice: as an nllm checkpoint (metadata:
 * format, config, progress, history, early stopping, tokenizer; then the
 * tensors against the layout the config implies) and as a weights-only
 * file for a small model shape. A load that succeeds must hold buffers of
 * the size its layout says. Built by tests/fuzz/run.sh.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"

#define FUZZ_NAME "fuzz_ckpt"
#include "fuzz_assert.h"

static char path[128];
static int fd = -1;

static void cleanup(void)
{
    if (path[0])
        unlink(path);
}

static void check(const nllm_ckpt_t *c)
{
    ASSERT(c->params && c->nparams > 0 && c->weights);
    int64_t end = 0;
    for (int i = 0; i < c->nparams; i++) {
        const nllm_param_info_t *p = &c->params[i];
        ASSERT(p->offset >= 0 && p->offset + p->numel <= c->nfloats);
        if (p->offset + p->numel > end)
            end = p->offset + p->numel;
    }
    volatile float s = 0;
    for (int64_t i = 0; i < c->nfloats; i++)
        s += c->weights[i] + (c->exp_avg ? c->exp_avg[i] + c->exp_avg_sq[i] : 0.0f);
    (void)s;
    (void)end;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fd < 0) {
        snprintf(path, sizeof path, "/dev/shm/nllm-fuzz-ckpt-%d.safetensors", (int)getpid());
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            snprintf(path, sizeof path, "/tmp/nllm-fuzz-ckpt-%d.safetensors", (int)getpid());
            fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        }
        ASSERT(fd >= 0);
        atexit(cleanup);
    }
    ASSERT(ftruncate(fd, 0) == 0);
    ASSERT(pwrite(fd, data, size, 0) == (ssize_t)size);

    nllm_ckpt_t *c = NULL;
    nllm_err_t err;
    int rc = nllm_ckpt_load(path, 0, NULL, &c, &err);
    ASSERT((rc == 0) == (c != NULL));
    if (rc == 0) {
        check(c);
        nllm_ckpt_free(c);
        c = NULL;
        /* a catalog checksum that does not match is refused */
        ASSERT(nllm_ckpt_load(path, 1, NULL, &c, &err) == NLLM_ECORRUPT && !c);
    }
    /* weights-only, for the model of tests/fuzz/make_corpus.py's checkpoint */
    nllm_model_config_t shape = {8, 2, 3, 2, 1, 4, 0.1f};
    rc = nllm_ckpt_load(path, 0, &shape, &c, &err);
    ASSERT((rc == 0) == (c != NULL));
    if (rc == 0) {
        check(c);
        nllm_ckpt_free(c);
    }
    return 0;
}
