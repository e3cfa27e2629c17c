/* backend.c -- picks a backend by device name ("cpu", "cuda:N"). The CUDA
 * constructors come from kernels/cuda/ when the build has CUDA, else from
 * the fallbacks below, which report that this build has no GPU support. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda/cuda_backend.h"

#ifndef NLLM_HAVE_CUDA
int nllm_cuda_available(void)
{
    return 0;
}

int nllm_cuda_backend_create(int device, nllm_backend_t **out, nllm_err_t *err)
{
    *out = NULL;
    return nllm_err_set(err, NLLM_EDEVICE,
                        "device cuda:%d: this nllm was built without CUDA support; rebuild "
                        "with -Dcuda=enabled or use --device cpu",
                        device);
}

int nllm_cuda_device_count(void)
{
    return 0;
}

int nllm_cuda_device_info(int dev, char *name, size_t n, uint64_t *total_mem,
                          uint64_t *free_mem)
{
    (void)dev;
    (void)total_mem;
    (void)free_mem;
    if (name && n)
        name[0] = '\0';
    return NLLM_EDEVICE;
}
#endif

int nllm_backend_create(const char *device, int threads, nllm_backend_t **out, nllm_err_t *err)
{
    *out = NULL;
    if (!device || strcmp(device, "cpu") == 0)
        return nllm_cpu_backend_create(threads, out, err);
    if (strncmp(device, "cuda:", 5) == 0) {
        char *end = NULL;
        long id = strtol(device + 5, &end, 10);
        if (end != device + 5 && *end == '\0' && id >= 0 && id < 1024)
            return nllm_cuda_backend_create((int)id, out, err);
    }
    return nllm_err_set(err, NLLM_EINVAL,
                        "device \"%s\" is not valid: use cpu or cuda:N (for example cuda:0)",
                        device);
}
