/* cuda_backend.h -- what the CUDA backend offers beyond backend.h: the GPU
 * inventory the daemon reports (device count, name, memory).
 *
 * The backend itself is created through backend.h (nllm_cuda_backend_create
 * or nllm_backend_create("cuda:N")). Builds without CUDA get fallbacks from
 * kernels/backend.c: no devices, and info fails with NLLM_EDEVICE. Safe to
 * include from C and C++; callers: daemon (status, job placement), tests.
 */
#ifndef NLLM_CUDA_BACKEND_H
#define NLLM_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "nllm_err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices the driver reports; 0 when there is no driver,
 * no device, or this build has no CUDA support. */
int nllm_cuda_device_count(void);

/* Name (truncated to n bytes, NUL-terminated), total and free memory in
 * bytes of device dev; any output pointer may be NULL. Asking for free
 * memory creates the device's primary context if it does not exist yet.
 * Returns 0 or NLLM_EDEVICE (no such device, driver error, no CUDA). */
int nllm_cuda_device_info(int dev, char *name, size_t n, uint64_t *total_mem,
                          uint64_t *free_mem);

/* Destroys device dev's primary context (cudaDeviceReset), which clears a
 * sticky error there, so that later backends on dev start clean. No
 * backend may exist on dev meanwhile. 0 or NLLM_EDEVICE (message in err). */
int nllm_cuda_device_reset(int dev, nllm_err_t *err);

/* How the CUDA backend be ran its recorded bodies (be->record): graph
 * launches, eager runs (warm-ups and bodies that could not be captured),
 * and why the last capture failed ("" when none did). NLLM_EDEVICE when be
 * is not a CUDA backend (or this build has no CUDA). */
struct nllm_backend;
int nllm_cuda_graph_stats(struct nllm_backend *be, uint64_t *launches, uint64_t *eager,
                          char *why, size_t n);

/* The CUDA stream the backend be queues its ops on now (a cudaStream_t),
 * for work others queue in its order (the NCCL comm's gradient sums);
 * NULL when be is not a CUDA backend (or this build has no CUDA). */
void *nllm_cuda_backend_stream(struct nllm_backend *be);

#ifdef __cplusplus
}
#endif

#endif /* NLLM_CUDA_BACKEND_H */
