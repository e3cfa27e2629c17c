/* place.h -- where a queued job runs: the choice among the daemon's devices,
 * as a pure function over a snapshot of them, so it can be tested without
 * a GPU. Invariants: a device never takes more than per_device jobs, and a
 * GPU never takes a job whose memory need (plus NLLMD_GPU_HEADROOM) is
 * above its free memory; a job on several devices (num_devices > 1) gets
 * all of them at once or none: its ranks share the one cpu, or each takes
 * a GPU of its own. Callers: daemon/jobs.c (nllmd_schedule, and the checks
 * of start and resume), tests/test_place.c.
 */
#ifndef NLLM_PLACE_H
#define NLLM_PLACE_H

#include <stddef.h>
#include <stdint.h>

/* Device memory a GPU must have free beyond what the model needs (the CUDA
 * backend's stream, cuBLAS handle and workspace, allocator slack). */
#define NLLMD_GPU_HEADROOM ((uint64_t)256 << 20)

/* Devices place.c looks at, at most (nllmd's NLLMD_MAX_DEVICES). */
#define NLLMD_PLACE_MAX_DEVS 64

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
 * a device name or a list of them, "cuda:0,cuda:1") may run on dev (never
 * when dev->excluded). */
int nllmd_place_allowed(const nllmd_place_dev_t *dev, const char *want);
/* The same by name: whether `want` admits the device called name. */
int nllmd_place_wants(const char *want, const char *name, int is_gpu);
/* How many devices a list `want` names (1 for "", "cpu", "cuda", a name). */
int nllmd_place_list_len(const char *want);

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

/* The devices for a job of `ranks` ranks (num_devices), each rank needing
 * `need` bytes of device memory: out[r] is the index in devs of rank r's
 * device. One rank: nllmd_place. More:
 *  - want a list ("cuda:0,cuda:1"): rank r on the r-th device listed, each
 *    with a free slot and, for a GPU, the memory;
 *  - want "", "cuda" or "cpu": `ranks` GPUs with a free slot and the
 *    memory, picked as nllmd_place picks one (fewest jobs, then the most
 *    free memory), or else, where the cpu may be used ("" or "cpu"), every
 *    rank on the cpu, which takes the job in one slot and shares its cores.
 * Returns ranks with out filled; NLLMD_PLACE_WAIT (also when the daemon
 * lacks devices enough: the start was refused then, by jobs.c); or
 * NLLMD_PLACE_NEVER, with why, when the GPUs it may use are enough in
 * number but too few of them have need + NLLMD_GPU_HEADROOM bytes in all. */
int nllmd_place_ranks(const nllmd_place_dev_t *devs, int n, const char *want, int ranks,
                      int per_device, uint64_t need, int *out, char *why, size_t whyn);

#endif /* NLLM_PLACE_H */
