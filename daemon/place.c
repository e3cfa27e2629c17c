/* place.c -- the placement rule of place.h: which device a queued job runs
 * on, given how many jobs each device runs and how much memory each GPU has
 * free. Pure: no I/O, no daemon state; nllmd_schedule (jobs.c) builds the
 * snapshot and launches the job.
 */
#include <stdio.h>
#include <string.h>

#include "place.h"

int nllmd_place_allowed(const nllmd_place_dev_t *dev, const char *want)
{
    if (dev->excluded)
        return 0;
    return !want[0] || strcmp(want, dev->name) == 0 || (strcmp(want, "cuda") == 0 && dev->is_gpu);
}

static int fits_memory(const nllmd_place_dev_t *v, uint64_t need)
{
    return !v->is_gpu || !v->mem_total || v->mem_free >= need + NLLMD_GPU_HEADROOM;
}

/* Whether a beats b (both may take the job). */
static int better(const nllmd_place_dev_t *a, const nllmd_place_dev_t *b)
{
    if (a->jobs != b->jobs)
        return a->jobs < b->jobs;
    return a->is_gpu && b->is_gpu && a->mem_free > b->mem_free;
}

int nllmd_place(const nllmd_place_dev_t *devs, int n, const char *want, int per_device,
                uint64_t need, char *why, size_t whyn)
{
    int best = -1, allowed = 0, could = 0, largest = -1;
    for (int k = 0; k < n; k++) {
        const nllmd_place_dev_t *v = &devs[k];
        if (!nllmd_place_allowed(v, want))
            continue;
        allowed++;
        if (!v->is_gpu || !v->mem_total || v->mem_total >= need + NLLMD_GPU_HEADROOM)
            could++;
        else if (largest < 0 || v->mem_total > devs[largest].mem_total)
            largest = k;
        if (v->jobs >= per_device || !fits_memory(v, need))
            continue;
        if (best < 0 || better(v, &devs[best]))
            best = k;
    }
    if (best >= 0)
        return best;
    /* none allowed: a job from the catalog naming a device this daemon was
     * not started with waits, as it always has */
    if (could || !allowed)
        return NLLMD_PLACE_WAIT;
    snprintf(why, whyn,
             "it needs about %.1f MiB of device memory (weights, gradients, Adam state and "
             "the activations of one batch) and %.0f MiB more for the CUDA libraries, but "
             "the largest GPU it may use, %s, has %.1f MiB in all: lower batch_size or the "
             "model's dimensions",
             (double)need / 1048576.0, (double)NLLMD_GPU_HEADROOM / 1048576.0,
             devs[largest].name, (double)devs[largest].mem_total / 1048576.0);
    return NLLMD_PLACE_NEVER;
}
