/* place.c -- the placement rule of place.h: which device a queued job runs
 * on (which devices, for a job on several), given how many jobs each device
 * runs and how much memory each GPU has free. Pure: no I/O, no daemon
 * state; nllmd_schedule (jobs.c) builds the snapshot and launches the job.
 */
#include <stdio.h>
#include <string.h>

#include "place.h"

/* Whether the list "a,b,c" has the item name. */
static int list_has(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

int nllmd_place_wants(const char *want, const char *name, int is_gpu)
{
    return !want[0] || strcmp(want, name) == 0 || (strcmp(want, "cuda") == 0 && is_gpu) ||
           (strchr(want, ',') && list_has(want, name));
}

int nllmd_place_list_len(const char *want)
{
    int n = 1;
    for (const char *p = want; *p; p++)
        n += *p == ',';
    return n;
}

int nllmd_place_allowed(const nllmd_place_dev_t *dev, const char *want)
{
    if (dev->excluded)
        return 0;
    return nllmd_place_wants(want, dev->name, dev->is_gpu);
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

/* ---- jobs on several devices ------------------------------------------------ */

static int big_enough(const nllmd_place_dev_t *v, uint64_t need)
{
    return !v->is_gpu || !v->mem_total || v->mem_total >= need + NLLMD_GPU_HEADROOM;
}

static int too_small(char *why, size_t whyn, int ranks, uint64_t need, int fit, int allowed,
                     const nllmd_place_dev_t *largest)
{
    snprintf(why, whyn,
             "each of its %d ranks needs a GPU with about %.1f MiB of device memory (weights, "
             "gradients, Adam state and the activations of its share of a batch) and %.0f MiB "
             "more for the CUDA libraries, but only %d of the %d GPUs it may use have that much "
             "in all (%s has %.1f MiB): lower batch_size or the model's dimensions",
             ranks, (double)need / 1048576.0, (double)NLLMD_GPU_HEADROOM / 1048576.0, fit,
             allowed, largest->name, (double)largest->mem_total / 1048576.0);
    return NLLMD_PLACE_NEVER;
}

/* want is a list: rank r on its r-th device. */
static int place_list(const nllmd_place_dev_t *devs, int n, const char *want, int ranks,
                      int per_device, uint64_t need, int *out, char *why, size_t whyn)
{
    int r = 0, wait = 0, fit = 0, allowed = 0;
    const nllmd_place_dev_t *small = NULL;
    for (const char *p = want; *p && r < ranks; r++) {
        size_t len = strcspn(p, ",");
        int k = 0;
        while (k < n && !(strlen(devs[k].name) == len && strncmp(devs[k].name, p, len) == 0))
            k++;
        p += len + (p[len] == ',');
        if (k == n || devs[k].excluded) {
            wait = 1; /* a device this daemon lacks, or not for this job now */
            continue;
        }
        allowed++;
        if (big_enough(&devs[k], need))
            fit++;
        else if (!small)
            small = &devs[k];
        if (devs[k].jobs >= per_device || !fits_memory(&devs[k], need))
            wait = 1;
        out[r] = k;
    }
    if (small)
        return too_small(why, whyn, ranks, need, fit, allowed, small);
    return wait || r < ranks ? NLLMD_PLACE_WAIT : ranks;
}

int nllmd_place_ranks(const nllmd_place_dev_t *devs, int n, const char *want, int ranks,
                      int per_device, uint64_t need, int *out, char *why, size_t whyn)
{
    if (ranks <= 1) {
        int k = nllmd_place(devs, n, want, per_device, need, why, whyn);
        if (k >= 0)
            out[0] = k;
        return k >= 0 ? 1 : k;
    }
    if (strchr(want, ','))
        return place_list(devs, n, want, ranks, per_device, need, out, why, whyn);
    const int gpus_ok = !want[0] || strcmp(want, "cuda") == 0;
    const int cpu_ok = !want[0] || strcmp(want, "cpu") == 0;
    if (!gpus_ok && !cpu_ok) {
        snprintf(why, whyn, "device %s is one GPU, but each of its %d ranks needs a GPU of its "
                 "own: list %d GPUs, or ask for any %d (device cuda)", want, ranks, ranks, ranks);
        return NLLMD_PLACE_NEVER;
    }
    /* GPUs: the best `ranks` of those that may take it now, best first */
    int taken[NLLMD_PLACE_MAX_DEVS] = {0}, got = 0;
    int gpu_allowed = 0, gpu_fit = 0, cpu_allowed = 0;
    const nllmd_place_dev_t *small = NULL;
    for (int k = 0; k < n && k < NLLMD_PLACE_MAX_DEVS; k++) {
        const nllmd_place_dev_t *v = &devs[k];
        if (!nllmd_place_allowed(v, want))
            continue;
        if (!v->is_gpu) {
            cpu_allowed++;
            continue;
        }
        gpu_allowed++;
        if (big_enough(v, need))
            gpu_fit++;
        else if (!small || v->mem_total > small->mem_total)
            small = v;
    }
    while (gpus_ok && got < ranks) {
        int best = -1;
        for (int k = 0; k < n && k < NLLMD_PLACE_MAX_DEVS; k++) {
            const nllmd_place_dev_t *v = &devs[k];
            if (taken[k] || !v->is_gpu || !nllmd_place_allowed(v, want) ||
                v->jobs >= per_device || !fits_memory(v, need))
                continue;
            if (best < 0 || better(v, &devs[best]))
                best = k;
        }
        if (best < 0)
            break;
        taken[best] = 1;
        out[got++] = best;
    }
    if (got == ranks)
        return ranks;
    /* else the cpu: every rank there, one slot */
    for (int k = 0; cpu_ok && k < n; k++) {
        const nllmd_place_dev_t *v = &devs[k];
        if (v->is_gpu || !nllmd_place_allowed(v, want) || v->jobs >= per_device)
            continue;
        for (int r = 0; r < ranks; r++)
            out[r] = k;
        return ranks;
    }
    if (gpus_ok && !(cpu_ok && cpu_allowed) && gpu_allowed >= ranks && gpu_fit < ranks && small)
        return too_small(why, whyn, ranks, need, gpu_fit, gpu_allowed, small);
    return NLLMD_PLACE_WAIT;
}
