/* nllmd.h -- the daemon's shared state: nllmd_t (one libuv loop that owns
 * the listeners, timers, signals, devices and the catalog), its options
 * and its devices. Every module of the loop includes it, and it includes
 * none of theirs: jobs, connections and the HTTP listener appear here by
 * pointer only (their types are in jobs.h, server.h and http.c). nllmd.c
 * fills it and runs the loop.
 *
 * Threads: everything in nllmd_t is touched only by the loop thread,
 * except the event queue (under d->evmu), through which job and
 * checkpoint-writer threads report back via uv_async_send (jobs.c).
 *
 * Modules of the loop, each including only those below it:
 *   nllmd.c                  entry point, options, loop, signals, one-shot
 *   methods.c   http.c       RPC methods; monitoring over HTTP
 *   jobs.c                   jobs, scheduling, job and writer threads
 *   server.c    curves_job.c RPC connections; training-curve files
 *   nllmd.h log.h metrics.h jsonpack.h place.h
 * Calls against that order go through callbacks: d->dispatch (server.c to
 * methods.c), d->oneshot_print and d->begin_shutdown (jobs.c to nllmd.c).
 */
#ifndef NLLM_NLLMD_H
#define NLLM_NLLMD_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#include "catalog.h"
#include "comm.h"
#include "config.h" /* NLLM_PATH_MAX */
#include "metrics.h"
#include "nllm_err.h"
#include "rpc.h"

#define NLLMD_VERSION "0.1.0"
#define NLLMD_MAX_DEVICES 64
#define NLLMD_MAX_JOBS_PER_DEVICE 256

typedef struct nllmd nllmd_t;
typedef struct nllm_job nllm_job_t;     /* jobs.h */
typedef struct nllm_conn nllm_conn_t;   /* server.h */
typedef struct nllmd_http nllmd_http_t; /* http.c */
struct nllmd_ev;                        /* jobs.c */

/* Handles one decoded RPC message on connection c (loop thread). server.c
 * calls it; nllmd.c passes methods.c's nllmd_dispatch to nllmd_server_start. */
typedef void (*nllmd_dispatch_cb)(nllm_conn_t *c, nllm_rpc_msg_t *msg);

typedef struct {
    char name[32];   /* "cpu", "cuda:0" */
    char kind[8];    /* "cpu" | "cuda" */
    char gpu[128];   /* GPU name, "" for cpu */
    uint64_t mem_total, mem_free;
    unsigned precisions; /* what its backend implements: bit 1 << NLLM_PREC_* */
    int njobs;        /* jobs running on it (j->device == its index), at most
                       * opt.jobs_per_device */
    /* health: a job's backend reported a device fault (NLLM_EDEVICE) here;
     * no job is placed on it until nllmd_device_reset (or a restart) */
    int unhealthy;
    char fault[NLLM_ERR_MSG_MAX]; /* the first fault's message, "" healthy */
    char fault_job[NLLM_CATALOG_NAME_MAX + 1];
    double fault_time;            /* wall clock of that fault */
    uint64_t faults;              /* device faults since the daemon started */
} nllmd_device_t;

typedef struct {
    char state_dir[NLLM_PATH_MAX];
    char socket_path[NLLM_PATH_MAX];
    char listen[256];       /* HOST:PORT or "" */
    char token_file[NLLM_PATH_MAX];
    char devices[256];      /* "cpu", "cuda:0,cuda:1", "" = auto */
    int max_jobs;
    int jobs_per_device;    /* jobs one device runs at once (default 1) */
    int auto_resume;
    size_t max_message;
    int threads;            /* default CPU threads for jobs (0 = all) */
    char metrics[256];      /* HTTP monitoring HOST:PORT, "none", "" = default (http.h) */
} nllmd_opts_t;

struct nllmd {
    uv_loop_t *loop;
    nllmd_opts_t opt;
    nllm_catalog_t *cat;
    int state_lock;         /* descriptor holding <state>/nllmd.lock; -1 = none */
    nllmd_device_t devices[NLLMD_MAX_DEVICES];
    int ndevices;
    nllm_job_t *jobs;
    nllm_conn_t *conns;
    int nconns;
    uv_pipe_t unix_server;
    int have_unix;
    int socket_activated; /* the service manager owns the socket file */
    uv_tcp_t tcp_server;
    int have_tcp;
    nllmd_dispatch_cb dispatch; /* what server.c hands each decoded message */
    uv_timer_t msg_sweep;    /* closes connections stuck mid-message */
    int have_msg_sweep;
    uint64_t msg_timeout_ms; /* NLLMD_MESSAGE_TIMEOUT_MS or its env override */
    char token[256];
    size_t token_len;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t tick;
    uv_async_t async;
    pthread_mutex_t evmu;
    struct nllmd_ev *ev_head, *ev_tail; /* [shared] under evmu (jobs.c) */
    int waiting_for_memory; /* a queued job waits for GPU memory: the tick reschedules */
    int shutting_down;
    int shutdown_requested; /* by the shutdown method; acted on in on_async */
    int closed;             /* handles closing: the loop is about to end */
    int exit_code;
    double started;
    nllmd_metrics_t metrics; /* counters RPC and HTTP share (metrics.h) */
    nllmd_http_t *http;     /* the monitoring listener (http.c), NULL when off */
    /* one-shot mode (nllmd run): the job it runs, how to print, and what
     * jobs.c asks of nllmd.c for it (nllmd.c sets both before oneshot):
     * print a notification about the job (nllmd_job_notify), begin the
     * orderly shutdown (after a device fault) */
    nllm_job_t *oneshot;
    nllm_comm_t *comm; /* nllmd run under an MPI launcher: the world (comm.h), else NULL */
    int oneshot_tty;
    void (*oneshot_print)(nllmd_t *d, const char *method, json_t *params);
    void (*begin_shutdown)(nllmd_t *d, const char *why);
};

#endif /* NLLM_NLLMD_H */
