/* catalog.h -- the daemon's SQLite catalog: jobs, checkpoints, per-epoch
 * history and a bounded event log, kept in one WAL-mode database file.
 * Invariants: a job is addressed by its unique name; a checkpoint row is
 * only added after its file is durable; history is superseded, never deleted.
 * Caller: the daemon's loop thread, which owns the only connection.
 */
#ifndef NLLM_CATALOG_H
#define NLLM_CATALOG_H

#include <stddef.h>
#include <stdint.h>

#include "nllm_err.h"

/*
 * Threading: an nllm_catalog_t wraps one SQLite connection opened without
 * SQLite's own mutexes. Only the thread that opened it (the daemon's loop
 * thread) may call these functions; other processes may read the file
 * concurrently (WAL mode), and writers wait up to NLLM_CATALOG_BUSY_TIMEOUT_MS.
 *
 * Errors: every int function returns 0 or a negative NLLM_E* code and fills
 * err (may be NULL) with a message naming the job, checkpoint or catalog
 * file. Storage errors map as SQLITE_FULL -> NLLM_ENOSPC, SQLITE_IOERR ->
 * NLLM_EIO, SQLITE_CORRUPT/NOTADB -> NLLM_ECORRUPT, busy -> NLLM_EBUSY;
 * a duplicate -> NLLM_EEXIST, a missing job or row -> NLLM_ENOENT, a value
 * the schema rejects -> NLLM_EINVAL.
 *
 * Floating-point columns that may be absent (losses, accuracy, timings) use
 * NAN for SQL NULL in both directions.
 *
 * Schema history (PRAGMA user_version):
 *   1  first design: jobs, checkpoints, epochs, events.
 *   2  checkpoints.weights_hash; epochs.attempt (reconstructed for old rows
 *      from the epoch sequence), one current row per job+epoch, unique
 *      job+attempt+epoch.
 */

#define NLLM_CATALOG_SCHEMA_VERSION 2
#define NLLM_CATALOG_BUSY_TIMEOUT_MS 5000
#define NLLM_CATALOG_EVENTS_PER_JOB 1000
#define NLLM_CATALOG_NAME_MAX 64
#define NLLM_CATALOG_EVENT_MSG_MAX 4000 /* longer event messages are cut */

typedef struct nllm_catalog nllm_catalog_t;
struct sqlite3;

/* ---- open / close / health ------------------------------------------- */

/* Open (creating if needed) the catalog at path and migrate it to
 * NLLM_CATALOG_SCHEMA_VERSION. A file that is not an SQLite database, or an
 * SQLite database that is not a catalog, gives NLLM_ECORRUPT; a catalog from
 * a newer nllm gives NLLM_EMISMATCH. On failure *out is NULL. */
int nllm_catalog_open(const char *path, nllm_catalog_t **out, nllm_err_t *err);
/* Close the connection (NULL is fine). Last closer folds the WAL back. */
void nllm_catalog_close(nllm_catalog_t *cat);
/* A counter that changes whenever a row of the catalog is inserted, updated
 * or deleted through this connection (the daemon's only one): readers cache
 * what they derived from the catalog until it moves. */
int64_t nllm_catalog_generation(const nllm_catalog_t *cat);
/* Group the writes between begin and end into one transaction (one fsync
 * instead of one each): each write still succeeds or fails on its own (a
 * savepoint), end commits them together. Not nested; end returns an error
 * when the commit fails or SQLite rolled the group back after an I/O error
 * (the writes' own calls reported that error too). */
void nllm_catalog_batch_begin(nllm_catalog_t *cat);
int nllm_catalog_batch_end(nllm_catalog_t *cat, nllm_err_t *err);

typedef struct {
    char journal_mode[16]; /* "wal" */
    int synchronous;       /* 2 = FULL */
    int foreign_keys;      /* 1 = on */
    int busy_timeout_ms;
    int user_version; /* schema version */
} nllm_catalog_settings_t;

/* Read the settings in effect on this connection, from SQLite itself. */
int nllm_catalog_settings(nllm_catalog_t *cat, nllm_catalog_settings_t *out, nllm_err_t *err);
/* PRAGMA integrity_check and foreign_key_check; NLLM_ECORRUPT with the
 * first problems in the message when either finds something. */
int nllm_catalog_integrity_check(nllm_catalog_t *cat, nllm_err_t *err);
/* The raw connection, for tests and diagnostics on the owning thread. */
struct sqlite3 *nllm_catalog_db(nllm_catalog_t *cat);

/* 1 when name matches [A-Za-z0-9._-]{1,64} and does not start with '.',
 * else 0. Used for job names and checkpoint names. */
int nllm_catalog_valid_name(const char *name);
/* 1 when state is one of the job states the schema allows, else 0. */
int nllm_catalog_valid_state(const char *state);

/* ---- jobs -------------------------------------------------------------- */

/* Job states (the CHECK constraint of jobs.state). */
#define NLLM_CATALOG_JOB_STATES                                                                    \
    "queued, running, pausing, paused, completed, stopped, failed, interrupted"

typedef struct {
    const char *name;              /* valid name, unique */
    const char *config;            /* JSON object text; NULL = "{}" */
    int64_t num_epochs;            /* >= 1 */
    const char *parent_job;        /* fine-tune source job, or NULL */
    const char *parent_checkpoint; /* its checkpoint name, or NULL */
} nllm_catalog_job_spec_t;

typedef struct {
    int64_t id;
    char *name;
    char state[16];
    char *config;
    int64_t num_epochs;
    int64_t epochs_done;
    double best_val_loss;    /* NAN when none */
    char *error;             /* NULL when none */
    char *parent_job;        /* NULL when none */
    char *parent_checkpoint; /* NULL when none */
    int64_t attempt;         /* 1, +1 on each resume */
    double created_at;       /* unix seconds */
    double updated_at;
} nllm_catalog_job_t;

/* Create a job in state "queued". NLLM_EEXIST when the name is taken,
 * NLLM_ENOENT when parent_job does not exist. */
int nllm_catalog_job_create(nllm_catalog_t *cat, const nllm_catalog_job_spec_t *spec,
                            int64_t *id_out, nllm_err_t *err);
/* Fill *out (free with nllm_catalog_job_free). */
int nllm_catalog_job_get(nllm_catalog_t *cat, const char *name, nllm_catalog_job_t *out,
                         nllm_err_t *err);
/* All jobs, oldest first (free with nllm_catalog_jobs_free). */
int nllm_catalog_job_list(nllm_catalog_t *cat, nllm_catalog_job_t **out, size_t *n,
                          nllm_err_t *err);
/* Jobs in one state, oldest first; at startup the daemon lists "running"
 * and "pausing" jobs and marks them "interrupted". */
int nllm_catalog_jobs_in_state(nllm_catalog_t *cat, const char *state, nllm_catalog_job_t **out,
                               size_t *n, nllm_err_t *err);
void nllm_catalog_job_free(nllm_catalog_job_t *job);
void nllm_catalog_jobs_free(nllm_catalog_job_t *jobs, size_t n);

/* Set the state and the error text (NULL clears it). The state machine
 * itself is checked by the job module; here only the state's spelling. */
int nllm_catalog_job_set_state(nllm_catalog_t *cat, const char *name, const char *state,
                               const char *error, nllm_err_t *err);
/* Change num_epochs (extend); must stay >= 1 and >= epochs_done. */
int nllm_catalog_job_set_num_epochs(nllm_catalog_t *cat, const char *name, int64_t num_epochs,
                                    nllm_err_t *err);
/* Record progress: epochs_done (<= num_epochs) and best_val_loss (NAN = none). */
int nllm_catalog_job_set_progress(nllm_catalog_t *cat, const char *name, int64_t epochs_done,
                                  double best_val_loss, nllm_err_t *err);
/* Replace the JSON config text (must be a JSON object). */
int nllm_catalog_job_set_config(nllm_catalog_t *cat, const char *name, const char *config,
                                nllm_err_t *err);
/* Begin a new attempt resuming from a checkpoint at from_epoch, in one
 * transaction: attempt += 1, epoch rows and checkpoints with epoch >
 * from_epoch are superseded, epochs_done = from_epoch, best_val_loss = the
 * best val_loss left on the current history (NAN if none). */
int nllm_catalog_job_resume(nllm_catalog_t *cat, const char *name, int64_t from_epoch,
                            int64_t *attempt_out, nllm_err_t *err);
/* Delete a job and (cascade) its checkpoints, epochs and events rows. The
 * caller removes the files. */
int nllm_catalog_job_delete(nllm_catalog_t *cat, const char *name, nllm_err_t *err);

/* ---- checkpoints ------------------------------------------------------- */

typedef struct {
    const char *kind; /* "best", "epoch", "final" or "paused" */
    const char *name; /* NULL = derived: "epoch_<epoch>" or the kind */
    int64_t epoch;    /* epochs completed (>= 1 for kind epoch) */
    int64_t step;     /* global step */
    const char *path;
    int64_t size;             /* bytes */
    const char *checksum;     /* xxh64 of the file, 16 lowercase hex digits */
    const char *weights_hash; /* hex, or NULL */
    double val_loss;          /* NAN = unknown */
} nllm_catalog_ckpt_spec_t;

typedef struct {
    int64_t id;
    int64_t job_id;
    char kind[8];
    char *name;
    int64_t epoch;
    int64_t step;
    char *path;
    int64_t size;
    char checksum[17];
    char *weights_hash; /* NULL when unknown (rows from schema v1) */
    double val_loss;    /* NAN when unknown */
    double created_at;
    char status[4];   /* "ok" or "bad" */
    char *bad_reason; /* NULL unless status is "bad" */
    int current;      /* 1 = on the current line of history */
    int64_t attempt;  /* the job attempt that wrote it */
} nllm_catalog_ckpt_t;

/* Record a durable checkpoint file for the job's current attempt. A new row
 * replaces the job's row of the same name as the current one: older "best",
 * "final" and "paused" rows stay as superseded history (current = 0), an
 * older "epoch_N" row is removed (one row per job+epoch_N). The spec's name
 * must match its kind ("epoch_<epoch>" or the kind itself). */
int nllm_catalog_ckpt_add(nllm_catalog_t *cat, const char *job,
                          const nllm_catalog_ckpt_spec_t *spec, int64_t *id_out, nllm_err_t *err);
/* The job's checkpoints ordered by step then id; current_only != 0 leaves
 * out superseded rows. Free with nllm_catalog_ckpts_free. */
int nllm_catalog_ckpt_list(nllm_catalog_t *cat, const char *job, int current_only,
                           nllm_catalog_ckpt_t **out, size_t *n, nllm_err_t *err);
/* Find by name: "latest" = the current "ok" checkpoint with the highest step
 * (any kind); any other name = the current row of that name, else the newest
 * superseded one (whose file is still on disk). NLLM_ENOENT if none. */
int nllm_catalog_ckpt_find(nllm_catalog_t *cat, const char *job, const char *name,
                           nllm_catalog_ckpt_t *out, nllm_err_t *err);
/* Mark checkpoint ckpt_id of job bad (reason required), or ok again. */
int nllm_catalog_ckpt_mark_bad(nllm_catalog_t *cat, const char *job, int64_t ckpt_id,
                               const char *reason, nllm_err_t *err);
int nllm_catalog_ckpt_mark_ok(nllm_catalog_t *cat, const char *job, int64_t ckpt_id,
                              nllm_err_t *err);
/* Mark the job's checkpoints with epoch > epoch as not current. */
int nllm_catalog_ckpt_supersede_after(nllm_catalog_t *cat, const char *job, int64_t epoch,
                                      nllm_err_t *err);
/* Removes a checkpoint's row (retention, after its file was deleted). */
int nllm_catalog_ckpt_delete(nllm_catalog_t *cat, const char *job, int64_t ckpt_id,
                             nllm_err_t *err);
void nllm_catalog_ckpt_free(nllm_catalog_ckpt_t *ck);
void nllm_catalog_ckpts_free(nllm_catalog_ckpt_t *cks, size_t n);

/* ---- epochs ------------------------------------------------------------ */

typedef struct {
    int64_t attempt; /* out only: the attempt that ran it */
    int64_t epoch;   /* 1-based */
    double train_loss, val_loss, train_ppl, val_ppl, val_acc; /* NAN = none */
    double seconds, tokens_per_s;                             /* NAN = none */
    int superseded;                                           /* out only */
    double created_at;                                        /* out only */
} nllm_catalog_epoch_t;

/* Record a finished epoch for the job's current attempt. A current row of
 * the same epoch from an earlier attempt is superseded; the same epoch twice
 * in one attempt is NLLM_EEXIST. */
int nllm_catalog_epoch_add(nllm_catalog_t *cat, const char *job, const nllm_catalog_epoch_t *ep,
                           nllm_err_t *err);
/* include_superseded == 0: the current history, one row per epoch ordered
 * by epoch; else every row in the order recorded. Free with free() or
 * nllm_catalog_epochs_free. */
int nllm_catalog_epoch_list(nllm_catalog_t *cat, const char *job, int include_superseded,
                            nllm_catalog_epoch_t **out, size_t *n, nllm_err_t *err);
/* Mark the job's rows with epoch > epoch superseded (kept, never deleted). */
int nllm_catalog_epoch_supersede_after(nllm_catalog_t *cat, const char *job, int64_t epoch,
                                       nllm_err_t *err);
void nllm_catalog_epochs_free(nllm_catalog_epoch_t *eps, size_t n);

/* ---- events ------------------------------------------------------------ */

typedef struct {
    int64_t id;
    double ts; /* unix seconds */
    char *kind;
    char *message;
} nllm_catalog_event_t;

/* Append an event (kind: 1-32 of [a-z0-9_], e.g. "started", "checkpoint",
 * "early_stopped"; message may be NULL). Only the newest
 * NLLM_CATALOG_EVENTS_PER_JOB events of a job are kept. */
int nllm_catalog_event_add(nllm_catalog_t *cat, const char *job, const char *kind,
                           const char *message, nllm_err_t *err);
/* The newest newest_n events (0 = all kept), newest first. */
int nllm_catalog_event_list(nllm_catalog_t *cat, const char *job, size_t newest_n,
                            nllm_catalog_event_t **out, size_t *n, nllm_err_t *err);
void nllm_catalog_events_free(nllm_catalog_event_t *evs, size_t n);

#endif /* NLLM_CATALOG_H */
