/* backend.c -- picks a backend by device name ("cpu", "cuda:N"). The CUDA
 * constructors come from kernels/cuda/ when the build has CUDA, else from
 * the fallbacks below, which report that this build has no GPU support.
 * Also owns the device-fault test hook NLLM_BACKEND_FAULT (backend.h): a
 * wrapper around the sync of the backends it makes, the same for all. */
#include <pthread.h>
#include <stdatomic.h>
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

int nllm_cuda_device_reset(int dev, nllm_err_t *err)
{
    return nllm_err_set(err, NLLM_EDEVICE,
                        "device cuda:%d: this nllm was built without CUDA support", dev);
}

int nllm_cuda_graph_stats(struct nllm_backend *be, uint64_t *launches, uint64_t *eager,
                          char *why, size_t n)
{
    (void)be;
    (void)launches;
    (void)eager;
    if (why && n)
        why[0] = '\0';
    return NLLM_EDEVICE;
}

void *nllm_cuda_backend_stream(struct nllm_backend *be)
{
    (void)be;
    return NULL;
}
#endif

/* ---- test hook: NLLM_BACKEND_FAULT (backend.h) --------------------------- */

static struct {
    pthread_mutex_t mu;
    uint64_t nth;  /* sync that faults, 0 none */
    long times;    /* backends to arm, < 0 all */
    long armed;    /* backends armed so far */
} fault = {PTHREAD_MUTEX_INITIALIZER, 0, -1, 0};
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static int fault_apply(const char *spec, nllm_err_t *err)
{
    unsigned long long n = 0;
    long k = -1;
    char tail;
    int got = spec && *spec ? sscanf(spec, "device@sync:%llu:%ld%c", &n, &k, &tail) : 0;
    if (spec && *spec && !((got == 1 || got == 2) && n > 0 && (got == 1 || k > 0)))
        return nllm_err_set(err, NLLM_EINVAL,
                            "NLLM_BACKEND_FAULT=\"%.64s\" is not valid: use device@sync:N or "
                            "device@sync:N:K (N, K >= 1)",
                            spec);
    pthread_mutex_lock(&fault.mu);
    fault.nth = got ? (uint64_t)n : 0;
    fault.times = got == 2 ? k : -1;
    fault.armed = 0;
    pthread_mutex_unlock(&fault.mu);
    return 0;
}

static void fault_from_env(void)
{
    nllm_err_t err;
    const char *v = getenv("NLLM_BACKEND_FAULT");
    if (v && *v && fault_apply(v, &err) < 0)
        fprintf(stderr, "nllm: %s; ignored\n", err.msg);
}

int nllm_backend_fault_parse(const char *spec, nllm_err_t *err)
{
    pthread_once(&fault_once, fault_from_env); /* the environment never overrides this */
    return fault_apply(spec, err);
}

/* be->sync while a fault is armed: the backend's own sync, then the
 * injected fault from the fault_at-th sync on (sticky). */
static int fault_sync(nllm_backend_t *be, nllm_err_t *err)
{
    int rc = be->sync_impl(be, err);
    if (rc < 0 || be->n_syncs < be->fault_at)
        return rc;
    return nllm_err_set(err, NLLM_EDEVICE,
                        "device %s: injected device fault (NLLM_BACKEND_FAULT: from sync %llu "
                        "of this backend on)",
                        be->name, (unsigned long long)be->fault_at);
}

static void fault_arm(nllm_backend_t *be)
{
    pthread_once(&fault_once, fault_from_env);
    pthread_mutex_lock(&fault.mu);
    if (fault.nth && (fault.times < 0 || fault.armed < fault.times)) {
        fault.armed++;
        be->fault_at = fault.nth;
        be->sync_impl = be->sync;
        be->sync = fault_sync;
    }
    pthread_mutex_unlock(&fault.mu);
}

/* ---- construction ----------------------------------------------------------- */

int nllm_backend_create(const char *device, int threads, nllm_backend_t **out, nllm_err_t *err)
{
    int rc;
    *out = NULL;
    if (!device || strcmp(device, "cpu") == 0) {
        rc = nllm_cpu_backend_create(threads, out, err);
    } else {
        char *end = NULL;
        long id = strncmp(device, "cuda:", 5) == 0 ? strtol(device + 5, &end, 10) : -1;
        if (!end || end == device + 5 || *end != '\0' || id < 0 || id >= 1024)
            return nllm_err_set(err, NLLM_EINVAL,
                                "device \"%s\" is not valid: use cpu or cuda:N (for example "
                                "cuda:0)",
                                device);
        rc = nllm_cuda_backend_create((int)id, out, err);
    }
    if (rc == 0)
        fault_arm(*out);
    return rc;
}

/* ---- precision ----------------------------------------------------------- */

static const char *const prec_names[NLLM_PREC_COUNT] = {"fp32", "tf32", "bf16"};

const char *nllm_precision_name(nllm_precision_t p)
{
    return (unsigned)p < NLLM_PREC_COUNT ? prec_names[p] : "unknown";
}

int nllm_precision_parse(const char *s, nllm_precision_t *out, nllm_err_t *err)
{
    for (int i = 0; s && i < NLLM_PREC_COUNT; i++)
        if (strcmp(s, prec_names[i]) == 0) {
            *out = (nllm_precision_t)i;
            return 0;
        }
    return nllm_err_set(err, NLLM_EINVAL, "precision must be fp32, tf32 or bf16, not \"%.64s\"",
                        s ? s : "");
}

const char *nllm_precision_list(unsigned mask, char *buf, size_t n)
{
    int count = 0, total = 0;
    for (int i = 0; i < NLLM_PREC_COUNT; i++)
        total += (mask >> i) & 1u;
    size_t len = 0;
    if (n)
        buf[0] = '\0';
    for (int i = 0; i < NLLM_PREC_COUNT && len < n; i++) {
        if (!((mask >> i) & 1u))
            continue;
        count++;
        const char *sep = count == 1 ? "" : count == total ? " and " : ", ";
        int w = snprintf(buf + len, n - len, "%s%s", sep, prec_names[i]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
    return buf;
}

int nllm_backend_set_precision(nllm_backend_t *be, nllm_precision_t p, nllm_err_t *err)
{
    if ((unsigned)p >= NLLM_PREC_COUNT)
        return nllm_err_set(err, NLLM_EINVAL, "precision %d is not a precision", (int)p);
    if (!((be->precisions >> p) & 1u)) {
        char list[64];
        unsigned mask = be->precisions;
        return nllm_err_set(err, NLLM_EINVAL,
                            "device %s implements precision %s%s, not %s%s%s%s: use --precision "
                            "%s or a CUDA device",
                            be->name, nllm_precision_list(mask, list, sizeof list),
                            (mask & (mask - 1)) ? "" : " only", prec_names[p],
                            be->precision_note ? " (" : "",
                            be->precision_note ? be->precision_note : "",
                            be->precision_note ? ")" : "", prec_names[0]);
    }
    be->precision = p;
    return 0;
}
