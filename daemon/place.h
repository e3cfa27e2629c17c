/* place.h -- where a queued job runs: the choice among the daemon's devices,
 * as a pure function over a snapshot of them, so it can be tested without
 * a GPU. Invariants: a device never takes more than per_device jobs, and a
 * GPU never takes a job whose memory need (plus NLLMD_GPU_HEADROOM) is
 * above its free memory. Callers: daemon/jobs.c (nllmd_schedule),
 * tests/test_place.c.
 */
#ifndef NLLM_PLACE_H
#define NLLM_PLACE_H

#include <stddef.h>
#include <stdint.h>

/* Device memory a GPU must have free beyond what the model needs (the CUDA
 * backend's stream, cuBLAS handle and workspace, allocator slack). */
#define NLLMD_GPU_HEADROOM ((uint64_t)256 << 20)

/* One device as the scheduler sees it now. */
typedef struct {
    const char *name;   /* "cpu", "cuda:0" */
    int is_gpu;         /* memory is checked only on GPUs */
    int jobs;           /* jobs running on it */
    uint64_t mem_total; /* GPU: bytes in all (0: not known, never checked) */
    uint64_t mem_free;  /* GPU: bytes free now, less what jobs just started
                         * there have yet to allocate */
    int excluded;       /* not for this job (it lacks the job's precision) */
} nllmd_place_dev_t;

enum {
    NLLMD_PLACE_WAIT = -1,  /* no device it may use has a free slot (and memory) now */
    NLLMD_PLACE_NEVER = -2, /* no device it may use could ever hold it: see why */
};

/* Whether a job asking for device `want` ("" = any, "cuda" = any GPU, else
 * a device name) may run on dev (never when dev->excluded). */
int nllmd_place_allowed(const nllmd_place_dev_t *dev, const char *want);

/* Picks the device for a job that asks for `want` and needs `need` bytes of
 * device memory: among the devices it may use that have a free slot (fewer
 * than per_device jobs) and, for a GPU, need + NLLMD_GPU_HEADROOM bytes
 * free, the one with the fewest running jobs; between two GPUs with as
 * many, the one with more free memory; else the first listed. Returns the
 * index in devs, NLLMD_PLACE_WAIT (also when no device matches want: a
 * daemon started with other devices keeps such a job queued), or
 * NLLMD_PLACE_NEVER with a message in why when every device it may use is
 * a GPU with less memory in all than need + NLLMD_GPU_HEADROOM. */
int nllmd_place(const nllmd_place_dev_t *devs, int n, const char *want, int per_device,
                uint64_t need, char *why, size_t whyn);

#endif /* NLLM_PLACE_H */
