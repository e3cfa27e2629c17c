/* catalog.c -- the SQLite catalog of jobs, checkpoints, epoch history and
 * events (API and threading rule in catalog.h).
 * Invariants: after open the schema is at NLLM_CATALOG_SCHEMA_VERSION (each
 * migration is one IMMEDIATE transaction that also bumps user_version); user
 * values reach SQL only as bound parameters; multi-row changes are one
 * transaction. Called only from the daemon's loop thread.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "catalog.h"

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct nllm_catalog {
    sqlite3 *db;
    char *path;
    int batch; /* inside nllm_catalog_batch_begin/_end: writes are savepoints */
};

/* ---- schema ------------------------------------------------------------ */

/* Version 1, the first design. Frozen: a later change is a new migration. */
static const char schema_v1[] =
    "CREATE TABLE jobs ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " name TEXT NOT NULL UNIQUE,"
    " state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued','running',"
    "   'pausing','paused','completed','stopped','failed','interrupted')),"
    " config TEXT NOT NULL DEFAULT '{}',"
    " num_epochs INTEGER NOT NULL CHECK (num_epochs >= 1),"
    " epochs_done INTEGER NOT NULL DEFAULT 0"
    "   CHECK (epochs_done >= 0 AND epochs_done <= num_epochs),"
    " best_val_loss REAL,"
    " error TEXT,"
    " parent_job TEXT,"
    " parent_checkpoint TEXT,"
    " attempt INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),"
    " created_at REAL NOT NULL,"
    " updated_at REAL NOT NULL);"
    "CREATE TABLE checkpoints ("
    " id INTEGER PRIMARY KEY,"
    " job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    " kind TEXT NOT NULL CHECK (kind IN ('best','epoch','final','paused')),"
    " name TEXT NOT NULL,"
    " epoch INTEGER NOT NULL CHECK (epoch >= 0),"
    " step INTEGER NOT NULL CHECK (step >= 0),"
    " path TEXT NOT NULL,"
    " size INTEGER NOT NULL CHECK (size >= 0),"
    " checksum TEXT NOT NULL,"
    " val_loss REAL,"
    " created_at REAL NOT NULL,"
    " status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok','bad')),"
    " bad_reason TEXT,"
    " current INTEGER NOT NULL DEFAULT 1 CHECK (current IN (0,1)),"
    " attempt INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),"
    " CHECK ((status = 'bad') = (bad_reason IS NOT NULL)));"
    "CREATE UNIQUE INDEX checkpoints_one_current ON checkpoints(job_id, name)"
    " WHERE current = 1;"
    "CREATE UNIQUE INDEX checkpoints_epoch_name ON checkpoints(job_id, name)"
    " WHERE kind = 'epoch';"
    "CREATE INDEX checkpoints_job_step ON checkpoints(job_id, current, step);"
    "CREATE TABLE epochs ("
    " id INTEGER PRIMARY KEY,"
    " job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    " epoch INTEGER NOT NULL CHECK (epoch >= 1),"
    " train_loss REAL, val_loss REAL, train_ppl REAL, val_ppl REAL, val_acc REAL,"
    " seconds REAL, tokens_per_s REAL,"
    " superseded INTEGER NOT NULL DEFAULT 0 CHECK (superseded IN (0,1)),"
    " created_at REAL NOT NULL);"
    "CREATE INDEX epochs_job_epoch ON epochs(job_id, epoch);"
    "CREATE TABLE events ("
    " id INTEGER PRIMARY KEY,"
    " job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    " ts REAL NOT NULL,"
    " kind TEXT NOT NULL,"
    " message TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX events_job_id ON events(job_id, id);";

/* Version 2: checkpoints get the hash of the weights alone (comparable
 * across files with different optimizer state); epoch rows get the attempt
 * that ran them. For v1 rows the attempt is reconstructed from the order
 * rows were written in: within one job a new attempt began whenever the
 * epoch number did not increase. Then at most one current row per epoch. */
static const char migrate_v2[] =
    "ALTER TABLE checkpoints ADD COLUMN weights_hash TEXT;"
    "ALTER TABLE epochs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1"
    " CHECK (attempt >= 1);"
    "CREATE TEMP TABLE mig2_attempt (id INTEGER PRIMARY KEY, attempt INTEGER NOT NULL);"
    "INSERT INTO temp.mig2_attempt (id, attempt)"
    " SELECT id, 1 + SUM(brk) OVER (PARTITION BY job_id ORDER BY id"
    "                               ROWS UNBOUNDED PRECEDING)"
    " FROM (SELECT id, job_id,"
    "        CASE WHEN epoch <= LAG(epoch) OVER (PARTITION BY job_id ORDER BY id)"
    "             THEN 1 ELSE 0 END AS brk"
    "       FROM epochs);"
    "UPDATE epochs SET attempt ="
    " (SELECT m.attempt FROM temp.mig2_attempt m WHERE m.id = epochs.id);"
    "DROP TABLE temp.mig2_attempt;"
    "UPDATE jobs SET attempt ="
    " MAX(attempt, (SELECT MAX(e.attempt) FROM epochs e WHERE e.job_id = jobs.id))"
    " WHERE EXISTS (SELECT 1 FROM epochs e WHERE e.job_id = jobs.id);"
    "UPDATE epochs SET superseded = 1 WHERE superseded = 0 AND EXISTS"
    " (SELECT 1 FROM epochs n WHERE n.job_id = epochs.job_id AND n.epoch = epochs.epoch"
    "  AND n.superseded = 0 AND n.id > epochs.id);"
    "CREATE UNIQUE INDEX epochs_attempt_epoch ON epochs(job_id, attempt, epoch);"
    "CREATE UNIQUE INDEX epochs_one_current ON epochs(job_id, epoch)"
    " WHERE superseded = 0;";

static const struct {
    int to;
    const char *sql;
} migrations[] = {
    {1, schema_v1},
    {2, migrate_v2},
};

_Static_assert(sizeof migrations / sizeof migrations[0] == NLLM_CATALOG_SCHEMA_VERSION,
               "one migration per schema version");

static const char *const job_states[] = {"queued",    "running", "pausing", "paused",
                                         "completed", "stopped", "failed",  "interrupted"};
static const char *const ckpt_kinds[] = {"best", "epoch", "final", "paused"};

/* ---- small helpers ----------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int in_list(const char *s, const char *const *list, size_t n)
{
    if (!s)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0)
            return 1;
    return 0;
}

/* A printable, bounded copy of a user string for messages. */
static const char *shown(const char *s, char *buf, size_t cap)
{
    if (!s)
        return "(null)";
    size_t o = 0, i = 0;
    for (; s[i] && o + 4 < cap; i++)
        buf[o++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (s[i]) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

int nllm_catalog_valid_name(const char *name)
{
    if (!name || name[0] == '\0' || name[0] == '.')
        return 0;
    size_t n = 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (n >= NLLM_CATALOG_NAME_MAX)
            return 0;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int nllm_catalog_valid_state(const char *state)
{
    return in_list(state, job_states, sizeof job_states / sizeof job_states[0]);
}

static int check_job_name(const char *name, nllm_err_t *err)
{
    if (nllm_catalog_valid_name(name))
        return 0;
    char b[80];
    return nllm_err_set(err, NLLM_EINVAL,
                        "job name '%s' is invalid: use 1-64 characters from A-Z a-z 0-9 . _ - "
                        "and do not start with '.'",
                        shown(name, b, sizeof b));
}

static int check_ckpt_name(const char *job, const char *name, nllm_err_t *err)
{
    if (nllm_catalog_valid_name(name))
        return 0;
    char b[80];
    return nllm_err_set(err, NLLM_EINVAL,
                        "job '%s': checkpoint name '%s' is invalid: use \"latest\", \"best\", "
                        "\"final\", \"paused\" or \"epoch_N\"",
                        job, shown(name, b, sizeof b));
}

static int oom(nllm_err_t *err, const char *what)
{
    return nllm_err_set(err, NLLM_ENOMEM, "%s: out of memory; free memory and retry", what);
}

/* ---- SQLite error mapping ---------------------------------------------- */

static int map_code(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_FULL:
        return NLLM_ENOSPC;
    case SQLITE_IOERR:
        return rc == SQLITE_IOERR_NOMEM ? NLLM_ENOMEM : NLLM_EIO;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return NLLM_ECORRUPT;
    case SQLITE_CONSTRAINT:
        if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
            return NLLM_EEXIST;
        if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
            return NLLM_ENOENT;
        return NLLM_EINVAL;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return NLLM_EBUSY;
    case SQLITE_NOMEM:
        return NLLM_ENOMEM;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_PROTOCOL:
        return NLLM_EIO;
    case SQLITE_TOOBIG:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
        return NLLM_EINVAL;
    default:
        return NLLM_EINTERNAL;
    }
}

static const char *advice(int code)
{
    switch (code) {
    case NLLM_ENOSPC:
        return "free disk space there, then retry";
    case NLLM_EIO:
        return "check the disk and the permissions of the file and its folder";
    case NLLM_ECORRUPT:
        return "it is damaged or not an nllm catalog; stop the daemon, move the file and its "
               "-wal and -shm files aside and restore a backup or start a new catalog";
    case NLLM_EBUSY:
        return "another process holds a lock on it; stop that process and retry";
    case NLLM_ENOMEM:
        return "free memory and retry";
    case NLLM_EINTERNAL:
        return "this is a bug in nllm; please report it with this message";
    }
    return NULL;
}

/* Fill err from SQLite result rc; call right after the failing call so
 * sqlite3_errmsg still describes it. */
static int db_fail(nllm_catalog_t *cat, int rc, nllm_err_t *err, const char *what)
{
    int code = map_code(rc);
    const char *msg = sqlite3_errstr(rc);
    if (cat->db && sqlite3_extended_errcode(cat->db) == rc)
        msg = sqlite3_errmsg(cat->db);
    const char *adv = advice(code);
    if (adv)
        return nllm_err_set(err, code, "%s: %s (catalog %s: %s)", what, msg, cat->path, adv);
    return nllm_err_set(err, code, "%s: %s", what, msg);
}

/* ---- statements -------------------------------------------------------- */

/* Prepare sql and bind one argument per letter of types:
 * 't' const char * (NULL binds NULL), 'i' int64_t, 'd' double (NAN binds NULL). */
static int vprep(nllm_catalog_t *cat, sqlite3_stmt **st, nllm_err_t *err, const char *what,
                 const char *sql, const char *types, va_list ap)
{
    *st = NULL;
    int rc = sqlite3_prepare_v2(cat->db, sql, -1, st, NULL);
    if (rc != SQLITE_OK) {
        int ret = db_fail(cat, rc, err, what);
        sqlite3_finalize(*st);
        *st = NULL;
        return ret;
    }
    for (int i = 0; types && types[i]; i++) {
        int idx = i + 1;
        switch (types[i]) {
        case 't': {
            const char *s = va_arg(ap, const char *);
            rc = s ? sqlite3_bind_text(*st, idx, s, -1, SQLITE_TRANSIENT)
                   : sqlite3_bind_null(*st, idx);
            break;
        }
        case 'i':
            rc = sqlite3_bind_int64(*st, idx, (sqlite3_int64)va_arg(ap, int64_t));
            break;
        case 'd': {
            double d = va_arg(ap, double);
            rc = isnan(d) ? sqlite3_bind_null(*st, idx) : sqlite3_bind_double(*st, idx, d);
            break;
        }
        default:
            abort(); /* broken invariant: unknown bind type letter */
        }
        if (rc != SQLITE_OK) {
            int ret = db_fail(cat, rc, err, what);
            sqlite3_finalize(*st);
            *st = NULL;
            return ret;
        }
    }
    return 0;
}

static int prep(nllm_catalog_t *cat, sqlite3_stmt **st, nllm_err_t *err, const char *what,
                const char *sql, const char *types, ...)
{
    va_list ap;
    va_start(ap, types);
    int ret = vprep(cat, st, err, what, sql, types, ap);
    va_end(ap);
    return ret;
}

/* Run a statement that returns no rows we need; sqlite3_changes() is valid after. */
static int run(nllm_catalog_t *cat, nllm_err_t *err, const char *what, const char *sql,
               const char *types, ...)
{
    sqlite3_stmt *st;
    va_list ap;
    va_start(ap, types);
    int ret = vprep(cat, &st, err, what, sql, types, ap);
    va_end(ap);
    if (ret)
        return ret;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    if (rc != SQLITE_DONE)
        ret = db_fail(cat, rc, err, what);
    sqlite3_finalize(st);
    return ret;
}

static int exec_sql(nllm_catalog_t *cat, const char *sql, nllm_err_t *err, const char *what)
{
    int rc = sqlite3_exec(cat->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_fail(cat, rc, err, what);
}

/* One write = one transaction; inside a batch (the batch's transaction is
 * open) a savepoint, so that a failed write undoes itself and nothing else. */
static int in_batch(nllm_catalog_t *cat)
{
    return cat->batch && !sqlite3_get_autocommit(cat->db);
}

static int tx_begin(nllm_catalog_t *cat, nllm_err_t *err, const char *what)
{
    return exec_sql(cat, in_batch(cat) ? "SAVEPOINT nllm_write" : "BEGIN IMMEDIATE", err, what);
}

static int tx_commit(nllm_catalog_t *cat, nllm_err_t *err, const char *what)
{
    return exec_sql(cat, in_batch(cat) ? "RELEASE nllm_write" : "COMMIT", err, what);
}

static void tx_rollback(nllm_catalog_t *cat)
{
    if (in_batch(cat))
        sqlite3_exec(cat->db, "ROLLBACK TO nllm_write; RELEASE nllm_write", NULL, NULL, NULL);
    else if (!sqlite3_get_autocommit(cat->db))
        sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
}

void nllm_catalog_batch_begin(nllm_catalog_t *cat)
{
    if (!cat || cat->batch || !sqlite3_get_autocommit(cat->db))
        return;
    /* on failure the writes below commit one by one, as without a batch */
    cat->batch = sqlite3_exec(cat->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
}

int nllm_catalog_batch_end(nllm_catalog_t *cat, nllm_err_t *err)
{
    if (!cat || !cat->batch)
        return 0;
    cat->batch = 0;
    if (sqlite3_get_autocommit(cat->db)) /* SQLite rolled it back after an I/O error */
        return nllm_err_set(err, NLLM_EIO,
                            "catalog %s: a group of writes was rolled back after an error: %s",
                            cat->path, advice(NLLM_EIO));
    int ret = exec_sql(cat, "COMMIT", err, "committing a group of writes");
    if (ret)
        sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}

/* ---- rows -------------------------------------------------------------- */

/* Column readers: NULL text stays NULL, NULL real reads NAN. */
static int col_dup(sqlite3_stmt *st, int i, char **out)
{
    *out = NULL;
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return 0;
    const unsigned char *t = sqlite3_column_text(st, i);
    if (!t)
        return -1;
    *out = strdup((const char *)t);
    return *out ? 0 : -1;
}

static void col_copy(sqlite3_stmt *st, int i, char *buf, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(buf, cap, "%s", t ? (const char *)t : "");
}

static double col_real(sqlite3_stmt *st, int i)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return NAN;
    return sqlite3_column_double(st, i);
}

/* A row struct as a SELECT fills it: field i takes column i. F_TEXT
 * fields are owned copies (NULL for SQL NULL), F_BUF fields char arrays. */
typedef enum { F_I64, F_INT, F_REAL, F_TEXT, F_BUF } field_kind_t;

typedef struct {
    field_kind_t kind;
    size_t off, size; /* where in the struct; size: of an F_BUF array */
} field_t;

typedef struct {
    size_t size; /* of the struct */
    const field_t *fields;
    size_t nfields;
} row_type_t;

/* The comparison in sizeof (never evaluated) only compiles, under
 * -Werror, when field f of T has the C type the kind reads into. */
#define FIELD_AS(T, f, kind, ctype)                                                                \
    {kind, offsetof(T, f) + 0 * sizeof(&((T *)0)->f == (ctype *)0), sizeof(((T *)0)->f)}
#define F_I64(T, f) FIELD_AS(T, f, F_I64, int64_t)
#define F_INT(T, f) FIELD_AS(T, f, F_INT, int)
#define F_REAL(T, f) FIELD_AS(T, f, F_REAL, double)
#define F_TEXT(T, f) FIELD_AS(T, f, F_TEXT, char *)
#define F_BUF(T, f)                                                                                \
    {F_BUF, offsetof(T, f) + 0 * sizeof(&((T *)0)->f[0] == (char *)0), sizeof(((T *)0)->f)}
#define ROW_TYPE(T, fields) {sizeof(T), fields, sizeof fields / sizeof fields[0]}

/* Fill elem (zeroed by the caller) from the current row of st; -1 when a
 * copy could not be allocated (free elem with row_free). */
static int read_row(sqlite3_stmt *st, const row_type_t *t, void *elem)
{
    for (size_t i = 0; i < t->nfields; i++) {
        const field_t *f = &t->fields[i];
        void *p = (char *)elem + f->off;
        int col = (int)i;
        switch (f->kind) {
        case F_I64:
            *(int64_t *)p = sqlite3_column_int64(st, col);
            break;
        case F_INT:
            *(int *)p = sqlite3_column_int(st, col);
            break;
        case F_REAL:
            *(double *)p = col_real(st, col);
            break;
        case F_TEXT:
            if (col_dup(st, col, (char **)p))
                return -1;
            break;
        case F_BUF:
            col_copy(st, col, p, f->size);
            break;
        }
    }
    return 0;
}

/* Free elem's F_TEXT fields and zero it (NULL is fine). */
static void row_free(const row_type_t *t, void *elem)
{
    if (!elem)
        return;
    for (size_t i = 0; i < t->nfields; i++)
        if (t->fields[i].kind == F_TEXT)
            free(*(char **)((char *)elem + t->fields[i].off));
    memset(elem, 0, t->size);
}

/* Free an array of n rows (NULL is fine). */
static void rows_free(const row_type_t *t, void *arr, size_t n)
{
    if (!arr)
        return;
    for (size_t i = 0; i < n; i++)
        row_free(t, (char *)arr + i * t->size);
    free(arr);
}

/* Run sql (bound as prep binds it) to the end, reading every row into a
 * growing array of t rows: *out and *n_out are set only on success. */
static int select_rows(nllm_catalog_t *cat, const row_type_t *t, void **out, size_t *n_out,
                       nllm_err_t *err, const char *what, const char *sql, const char *types, ...)
{
    sqlite3_stmt *st;
    va_list ap;
    va_start(ap, types);
    int ret = vprep(cat, &st, err, what, sql, types, ap);
    va_end(ap);
    if (ret)
        return ret;
    char *arr = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            break;
        if (rc != SQLITE_ROW) {
            ret = db_fail(cat, rc, err, what);
            goto fail;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            char *na = realloc(arr, ncap * t->size);
            if (!na) {
                ret = oom(err, what);
                goto fail;
            }
            arr = na;
            cap = ncap;
        }
        void *e = arr + n * t->size;
        memset(e, 0, t->size);
        if (read_row(st, t, e)) {
            row_free(t, e);
            ret = oom(err, what);
            goto fail;
        }
        n++;
    }
    sqlite3_finalize(st);
    *out = arr;
    *n_out = n;
    return 0;
fail:
    sqlite3_finalize(st);
    rows_free(t, arr, n);
    return ret;
}

/* Run sql for its first row, read into elem (zeroed by the caller). 0: read;
 * 1: there is no row (err untouched: the caller names what is missing);
 * else a negative error code. */
static int select_one(nllm_catalog_t *cat, const row_type_t *t, void *elem, nllm_err_t *err,
                      const char *what, const char *sql, const char *types, ...)
{
    sqlite3_stmt *st;
    va_list ap;
    va_start(ap, types);
    int ret = vprep(cat, &st, err, what, sql, types, ap);
    va_end(ap);
    if (ret)
        return ret;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (read_row(st, t, elem)) {
            row_free(t, elem);
            ret = oom(err, what);
        }
    } else if (rc == SQLITE_DONE) {
        ret = 1;
    } else {
        ret = db_fail(cat, rc, err, what);
    }
    sqlite3_finalize(st);
    return ret;
}

static int job_not_found(const char *name, nllm_err_t *err)
{
    return nllm_err_set(err, NLLM_ENOENT, "job '%s' not found; list jobs to see their names", name);
}

typedef struct {
    int64_t id, attempt;
} job_key_t;

static const field_t job_key_fields[] = {F_I64(job_key_t, id), F_I64(job_key_t, attempt)};
static const row_type_t job_key_rows = ROW_TYPE(job_key_t, job_key_fields);

/* Look up a job's id and current attempt; NLLM_ENOENT when missing. */
static int job_lookup(nllm_catalog_t *cat, const char *name, int64_t *id, int64_t *attempt,
                      nllm_err_t *err, const char *what)
{
    job_key_t k = {0, 0}; /* what the outputs get on failure */
    int ret = select_one(cat, &job_key_rows, &k, err, what,
                         "SELECT id, attempt FROM jobs WHERE name = ?", "t", name);
    if (id)
        *id = k.id;
    if (attempt)
        *attempt = k.attempt;
    return ret == 1 ? job_not_found(name, err) : ret;
}

/* The start of most calls on one job: its name checked, and what (cap
 * bytes) set to "job 'JOB': " and fmt's text, for the messages. */
static int vjob_what(const char *job, char *what, size_t cap, nllm_err_t *err, const char *fmt,
                     va_list ap)
{
    int ret = check_job_name(job, err);
    if (ret)
        return ret;
    int k = snprintf(what, cap, "job '%s': ", job); /* a valid name fits */
    vsnprintf(what + k, cap - (size_t)k, fmt, ap);
    return 0;
}

static int job_what(const char *job, char *what, size_t cap, nllm_err_t *err, const char *fmt,
                    ...) __attribute__((format(printf, 5, 6)));
static int job_what(const char *job, char *what, size_t cap, nllm_err_t *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = vjob_what(job, what, cap, err, fmt, ap);
    va_end(ap);
    return ret;
}

/* job_what, then the job's id looked up. */
static int job_what_id(nllm_catalog_t *cat, const char *job, int64_t *job_id, char *what,
                       size_t cap, nllm_err_t *err, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static int job_what_id(nllm_catalog_t *cat, const char *job, int64_t *job_id, char *what,
                       size_t cap, nllm_err_t *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = vjob_what(job, what, cap, err, fmt, ap);
    va_end(ap);
    return ret ? ret : job_lookup(cat, job, job_id, NULL, err, what);
}

/* The list calls: the rows of t that sql selects for job, binding the
 * job's id, then arg when types has a second letter. Returns the array
 * (NULL when empty) with *ret 0 and *n rows, or NULL with *ret the error
 * code and *n 0. listing names the call in messages. */
static void *list_job_rows(nllm_catalog_t *cat, const char *job, const char *listing,
                           const row_type_t *t, size_t *n, int *ret, nllm_err_t *err,
                           const char *sql, const char *types, int64_t arg)
{
    *n = 0;
    char what[128];
    int64_t job_id;
    void *arr = NULL;
    if (!(*ret = job_what_id(cat, job, &job_id, what, sizeof what, err, "%s", listing)))
        *ret = select_rows(cat, t, &arr, n, err, what, sql, types, job_id, arg);
    return arr;
}

/* ---- open / close ------------------------------------------------------ */

/* The first column of sql's first row: as an int in *iout (no row is an
 * error), or as text in buf (no row reads ""). */
static int pragma_get(nllm_catalog_t *cat, const char *sql, int *iout, char *buf, size_t cap,
                      nllm_err_t *err, const char *what)
{
    sqlite3_stmt *st;
    int ret = prep(cat, &st, err, what, sql, NULL);
    if (ret)
        return ret;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && iout)
        *iout = sqlite3_column_int(st, 0);
    else if (rc == SQLITE_ROW)
        col_copy(st, 0, buf, cap);
    else if (rc == SQLITE_DONE && iout)
        ret = nllm_err_set(err, NLLM_EINTERNAL,
                           "%s: '%s' returned nothing; this SQLite build lacks a needed feature",
                           what, sql);
    else if (rc == SQLITE_DONE)
        buf[0] = '\0';
    else
        ret = db_fail(cat, rc, err, what);
    sqlite3_finalize(st);
    return ret;
}

static int pragma_int(nllm_catalog_t *cat, const char *sql, int *out, nllm_err_t *err,
                      const char *what)
{
    return pragma_get(cat, sql, out, NULL, 0, err, what);
}

static int pragma_text(nllm_catalog_t *cat, const char *sql, char *buf, size_t cap, nllm_err_t *err,
                       const char *what)
{
    return pragma_get(cat, sql, NULL, buf, cap, err, what);
}

static int migrate(nllm_catalog_t *cat, nllm_err_t *err)
{
    const char *what = "migrating the catalog schema";
    int ver = 0, ret;
    if ((ret = pragma_int(cat, "PRAGMA user_version", &ver, err, what)))
        return ret;
    if (ver > NLLM_CATALOG_SCHEMA_VERSION)
        return nllm_err_set(err, NLLM_EMISMATCH,
                            "catalog %s has schema version %d but this nllm knows only up to %d; "
                            "run a newer nllm daemon or point it at another catalog",
                            cat->path, ver, NLLM_CATALOG_SCHEMA_VERSION);
    if (ver < 0)
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "catalog %s has schema version %d, which nllm never writes: %s",
                            cat->path, ver, advice(NLLM_ECORRUPT));
    for (size_t i = 0; i < sizeof migrations / sizeof migrations[0]; i++) {
        if (ver >= migrations[i].to)
            continue;
        if ((ret = tx_begin(cat, err, what)))
            return ret;
        /* Re-read inside the write lock: another process may have migrated. */
        if ((ret = pragma_int(cat, "PRAGMA user_version", &ver, err, what)))
            goto fail;
        if (ver >= migrations[i].to) {
            tx_rollback(cat);
            continue;
        }
        if (ver == 0) {
            int tables = 0;
            ret =
                pragma_int(cat, "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
                           &tables, err, what);
            if (ret)
                goto fail;
            if (tables > 0) {
                ret = nllm_err_set(err, NLLM_ECORRUPT,
                                   "catalog %s is an SQLite database with %d other objects but "
                                   "no nllm schema: %s",
                                   cat->path, tables, advice(NLLM_ECORRUPT));
                goto fail;
            }
        }
        char w[96];
        snprintf(w, sizeof w, "migrating the catalog schema from version %d to %d", ver,
                 migrations[i].to);
        if ((ret = exec_sql(cat, migrations[i].sql, err, w)))
            goto fail;
        char pv[48];
        snprintf(pv, sizeof pv, "PRAGMA user_version = %d", migrations[i].to);
        if ((ret = exec_sql(cat, pv, err, w)))
            goto fail;
        if ((ret = tx_commit(cat, err, w)))
            goto fail;
        ver = migrations[i].to;
    }
    return 0;
fail:
    tx_rollback(cat);
    return ret;
}

int nllm_catalog_open(const char *path, nllm_catalog_t **out, nllm_err_t *err)
{
    if (!out)
        return nllm_err_set(err, NLLM_EINVAL, "opening the catalog: no place for the handle");
    *out = NULL;
    if (!path || !*path)
        return nllm_err_set(err, NLLM_EINVAL,
                            "opening the catalog: empty path; pass the catalog file's path");
    nllm_catalog_t *cat = calloc(1, sizeof *cat);
    if (!cat || !(cat->path = strdup(path))) {
        free(cat);
        return oom(err, "opening the catalog");
    }
    const char *what = "opening the catalog";
    int ret;
    int rc = sqlite3_open_v2(
        path, &cat->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        ret = db_fail(cat, rc, err, what);
        goto fail;
    }
    sqlite3_extended_result_codes(cat->db, 1);
    sqlite3_busy_timeout(cat->db, NLLM_CATALOG_BUSY_TIMEOUT_MS);
    if ((ret = exec_sql(cat, "PRAGMA foreign_keys = ON", err, what)))
        goto fail;
    char mode[16];
    /* The first statement that reads the file: NOTADB shows up here. */
    if ((ret = pragma_text(cat, "PRAGMA journal_mode = WAL", mode, sizeof mode, err, what)))
        goto fail;
    if (strcmp(mode, "wal") != 0 &&
        !(strcmp(path, ":memory:") == 0 && strcmp(mode, "memory") == 0)) {
        ret = nllm_err_set(err, NLLM_EIO,
                           "opening the catalog %s: could not switch to WAL mode (got '%s'); put "
                           "the catalog on a local filesystem that supports shared memory",
                           path, mode);
        goto fail;
    }
    if ((ret = exec_sql(cat, "PRAGMA synchronous = FULL", err, what)))
        goto fail;
    int fk = 0;
    if ((ret = pragma_int(cat, "PRAGMA foreign_keys", &fk, err, what)))
        goto fail;
    if (fk != 1) {
        ret = nllm_err_set(err, NLLM_EINTERNAL,
                           "opening the catalog %s: SQLite refused to enable foreign keys; build "
                           "against an SQLite with foreign key support",
                           path);
        goto fail;
    }
    if ((ret = migrate(cat, err)))
        goto fail;
    *out = cat;
    return 0;
fail:
    nllm_catalog_close(cat);
    return ret;
}

void nllm_catalog_close(nllm_catalog_t *cat)
{
    if (!cat)
        return;
    if (cat->db) {
        cat->batch = 0;
        tx_rollback(cat);
        /* No statement outlives its function, so close cannot be busy. */
        sqlite3_close(cat->db);
    }
    free(cat->path);
    free(cat);
}

int64_t nllm_catalog_generation(const nllm_catalog_t *cat)
{
    return cat && cat->db ? (int64_t)sqlite3_total_changes64(cat->db) : -1;
}

struct sqlite3 *nllm_catalog_db(nllm_catalog_t *cat)
{
    return cat ? cat->db : NULL;
}

int nllm_catalog_settings(nllm_catalog_t *cat, nllm_catalog_settings_t *out, nllm_err_t *err)
{
    if (!cat || !out)
        return nllm_err_set(err, NLLM_EINVAL, "reading catalog settings: missing argument");
    const char *what = "reading catalog settings";
    int ret;
    memset(out, 0, sizeof *out);
    if ((ret = pragma_text(cat, "PRAGMA journal_mode", out->journal_mode, sizeof out->journal_mode,
                           err, what)) ||
        (ret = pragma_int(cat, "PRAGMA synchronous", &out->synchronous, err, what)) ||
        (ret = pragma_int(cat, "PRAGMA foreign_keys", &out->foreign_keys, err, what)) ||
        (ret = pragma_int(cat, "PRAGMA busy_timeout", &out->busy_timeout_ms, err, what)) ||
        (ret = pragma_int(cat, "PRAGMA user_version", &out->user_version, err, what)))
        return ret;
    return 0;
}

/* Append up to three problem rows of a check pragma to buf. */
static int check_rows(nllm_catalog_t *cat, const char *sql, int fk, char *buf, size_t cap,
                      int *problems, nllm_err_t *err)
{
    const char *what = "checking the catalog";
    sqlite3_stmt *st;
    int ret = prep(cat, &st, err, what, sql, NULL);
    if (ret)
        return ret;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char line[256];
        if (fk) {
            /* table, rowid, parent, fkid */
            const unsigned char *t = sqlite3_column_text(st, 0);
            const unsigned char *p = sqlite3_column_text(st, 2);
            snprintf(line, sizeof line, "%s row %lld references a missing %s row",
                     t ? (const char *)t : "?", (long long)sqlite3_column_int64(st, 1),
                     p ? (const char *)p : "?");
        } else {
            const unsigned char *t = sqlite3_column_text(st, 0);
            if (t && strcmp((const char *)t, "ok") == 0)
                continue;
            snprintf(line, sizeof line, "%s", t ? (const char *)t : "?");
        }
        if (*problems < 3) {
            size_t used = strlen(buf);
            snprintf(buf + used, cap - used, "%s%s", used ? "; " : "", line);
        }
        (*problems)++;
    }
    if (rc != SQLITE_DONE)
        ret = db_fail(cat, rc, err, what);
    sqlite3_finalize(st);
    return ret;
}

int nllm_catalog_integrity_check(nllm_catalog_t *cat, nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "checking the catalog: no catalog");
    char buf[640] = "";
    int problems = 0, ret;
    if ((ret = check_rows(cat, "PRAGMA integrity_check", 0, buf, sizeof buf, &problems, err)))
        return ret;
    if ((ret = check_rows(cat, "PRAGMA foreign_key_check", 1, buf, sizeof buf, &problems, err)))
        return ret;
    if (problems)
        return nllm_err_set(err, NLLM_ECORRUPT,
                            "catalog %s failed its check with %d problem(s): "
                            "%s (%s)",
                            cat->path, problems, buf, advice(NLLM_ECORRUPT));
    return 0;
}

/* ---- jobs -------------------------------------------------------------- */

#define JOB_COLS                                                                                   \
    "id, name, state, config, num_epochs, epochs_done, best_val_loss, error, parent_job, "         \
    "parent_checkpoint, attempt, created_at, updated_at"

/* JOB_COLS in order. */
static const field_t job_fields[] = {
    F_I64(nllm_catalog_job_t, id),           F_TEXT(nllm_catalog_job_t, name),
    F_BUF(nllm_catalog_job_t, state),        F_TEXT(nllm_catalog_job_t, config),
    F_I64(nllm_catalog_job_t, num_epochs),   F_I64(nllm_catalog_job_t, epochs_done),
    F_REAL(nllm_catalog_job_t, best_val_loss), F_TEXT(nllm_catalog_job_t, error),
    F_TEXT(nllm_catalog_job_t, parent_job),  F_TEXT(nllm_catalog_job_t, parent_checkpoint),
    F_I64(nllm_catalog_job_t, attempt),      F_REAL(nllm_catalog_job_t, created_at),
    F_REAL(nllm_catalog_job_t, updated_at),
};
static const row_type_t job_rows = ROW_TYPE(nllm_catalog_job_t, job_fields);

void nllm_catalog_job_free(nllm_catalog_job_t *job)
{
    row_free(&job_rows, job);
}

void nllm_catalog_jobs_free(nllm_catalog_job_t *jobs, size_t n)
{
    rows_free(&job_rows, jobs, n);
}

static int check_config(const char *job, const char *config, nllm_err_t *err)
{
    json_error_t je;
    json_t *v = json_loads(config, JSON_REJECT_DUPLICATES, &je);
    if (!v)
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': config is not valid JSON (line %d, column %d: %s); send a "
                            "JSON object",
                            job, je.line, je.column, je.text);
    int ok = json_is_object(v);
    json_decref(v);
    if (!ok)
        return nllm_err_set(err, NLLM_EINVAL, "job '%s': config must be a JSON object {...}", job);
    return 0;
}

int nllm_catalog_job_create(nllm_catalog_t *cat, const nllm_catalog_job_spec_t *spec,
                            int64_t *id_out, nllm_err_t *err)
{
    if (!cat || !spec)
        return nllm_err_set(err, NLLM_EINVAL, "creating a job: missing argument");
    int ret;
    if ((ret = check_job_name(spec->name, err)))
        return ret;
    const char *name = spec->name;
    const char *config = spec->config ? spec->config : "{}";
    if ((ret = check_config(name, config, err)))
        return ret;
    if (spec->num_epochs < 1)
        return nllm_err_set(err, NLLM_EINVAL, "job '%s': num_epochs must be at least 1 (got %lld)",
                            name, (long long)spec->num_epochs);
    if (spec->parent_job && !nllm_catalog_valid_name(spec->parent_job)) {
        char b[80];
        return nllm_err_set(err, NLLM_EINVAL, "job '%s': parent job name '%s' is invalid", name,
                            shown(spec->parent_job, b, sizeof b));
    }
    if (spec->parent_checkpoint) {
        if (!spec->parent_job)
            return nllm_err_set(err, NLLM_EINVAL,
                                "job '%s': parent_checkpoint given without parent_job", name);
        if ((ret = check_ckpt_name(name, spec->parent_checkpoint, err)))
            return ret;
    }
    char what[128];
    snprintf(what, sizeof what, "job '%s': creating it", name);
    if ((ret = tx_begin(cat, err, what)))
        return ret;
    if (spec->parent_job) {
        ret = job_lookup(cat, spec->parent_job, NULL, NULL, err, what);
        if (ret == NLLM_ENOENT)
            nllm_err_set(err, NLLM_ENOENT,
                         "job '%s': parent job '%s' not found; fine-tune from an existing job",
                         name, spec->parent_job);
        if (ret)
            goto fail;
    }
    double now = now_s();
    ret = run(cat, err, what,
              "INSERT INTO jobs (name, state, config, num_epochs, parent_job, parent_checkpoint,"
              " created_at, updated_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
              "ttittdd", name, config, (int64_t)spec->num_epochs, spec->parent_job,
              spec->parent_checkpoint, now, now);
    if (ret == NLLM_EEXIST)
        nllm_err_set(err, NLLM_EEXIST,
                     "job '%s' already exists; choose another name or delete the old job first",
                     name);
    if (ret)
        goto fail;
    int64_t id = sqlite3_last_insert_rowid(cat->db);
    if ((ret = tx_commit(cat, err, what)))
        goto fail;
    if (id_out)
        *id_out = id;
    return 0;
fail:
    tx_rollback(cat);
    return ret;
}

int nllm_catalog_job_get(nllm_catalog_t *cat, const char *name, nllm_catalog_job_t *out,
                         nllm_err_t *err)
{
    if (!cat || !out)
        return nllm_err_set(err, NLLM_EINVAL, "reading a job: missing argument");
    memset(out, 0, sizeof *out);
    char what[128];
    int ret = job_what(name, what, sizeof what, err, "reading it");
    if (ret)
        return ret;
    ret = select_one(cat, &job_rows, out, err, what,
                     "SELECT " JOB_COLS " FROM jobs WHERE name = ?", "t", name);
    return ret == 1 ? job_not_found(name, err) : ret;
}

static int job_query(nllm_catalog_t *cat, const char *state, nllm_catalog_job_t **out, size_t *n,
                     nllm_err_t *err)
{
    const char *what = state ? "listing jobs by state" : "listing jobs";
    void *arr = NULL;
    int ret = state ? select_rows(cat, &job_rows, &arr, n, err, what,
                                  "SELECT " JOB_COLS " FROM jobs WHERE state = ? ORDER BY id", "t",
                                  state)
                    : select_rows(cat, &job_rows, &arr, n, err, what,
                                  "SELECT " JOB_COLS " FROM jobs ORDER BY id", NULL);
    if (!ret)
        *out = arr;
    return ret;
}

int nllm_catalog_job_list(nllm_catalog_t *cat, nllm_catalog_job_t **out, size_t *n, nllm_err_t *err)
{
    if (!cat || !out || !n)
        return nllm_err_set(err, NLLM_EINVAL, "listing jobs: missing argument");
    *out = NULL;
    *n = 0;
    return job_query(cat, NULL, out, n, err);
}

int nllm_catalog_jobs_in_state(nllm_catalog_t *cat, const char *state, nllm_catalog_job_t **out,
                               size_t *n, nllm_err_t *err)
{
    if (!cat || !out || !n)
        return nllm_err_set(err, NLLM_EINVAL, "listing jobs by state: missing argument");
    *out = NULL;
    *n = 0;
    if (!nllm_catalog_valid_state(state)) {
        char b[40];
        return nllm_err_set(
            err, NLLM_EINVAL,
            "listing jobs by state: '%s' is not a job state (" NLLM_CATALOG_JOB_STATES ")",
            shown(state, b, sizeof b));
    }
    return job_query(cat, state, out, n, err);
}

/* After an UPDATE or DELETE of one job by name that returned ret: 0 rows
 * changed means no such job. */
static int one_job_changed(nllm_catalog_t *cat, const char *name, int ret, nllm_err_t *err)
{
    if (ret)
        return ret;
    if (sqlite3_changes(cat->db) == 0)
        return job_not_found(name, err);
    return 0;
}

int nllm_catalog_job_set_state(nllm_catalog_t *cat, const char *name, const char *state,
                               const char *error, nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "setting a job state: no catalog");
    int ret;
    if ((ret = check_job_name(name, err)))
        return ret;
    char b[40];
    if (!state)
        return nllm_err_set(err, NLLM_EINVAL, "job '%s': no state given", name);
    shown(state, b, sizeof b);
    if (!nllm_catalog_valid_state(state))
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': '%s' is not a job state (" NLLM_CATALOG_JOB_STATES ")", name,
                            b);
    char what[128];
    snprintf(what, sizeof what, "job '%s': setting state '%s'", name, b);
    /* The schema's CHECK constraint enforces the same list for any writer. */
    ret = run(cat, err, what, "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE name = ?",
              "ttdt", state, error, now_s(), name);
    return one_job_changed(cat, name, ret, err);
}

int nllm_catalog_job_set_num_epochs(nllm_catalog_t *cat, const char *name, int64_t num_epochs,
                                    nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "setting num_epochs: no catalog");
    char what[128];
    int ret = job_what(name, what, sizeof what, err, "setting num_epochs to %lld",
                       (long long)num_epochs);
    if (ret)
        return ret;
    ret = run(cat, err, what, "UPDATE jobs SET num_epochs = ?, updated_at = ? WHERE name = ?",
              "idt", num_epochs, now_s(), name);
    if (ret == NLLM_EINVAL)
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': num_epochs %lld must be at least 1 and not below the epochs "
                            "already done",
                            name, (long long)num_epochs);
    return one_job_changed(cat, name, ret, err);
}

int nllm_catalog_job_set_progress(nllm_catalog_t *cat, const char *name, int64_t epochs_done,
                                  double best_val_loss, nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "setting job progress: no catalog");
    char what[128];
    int ret = job_what(name, what, sizeof what, err, "recording progress");
    if (ret)
        return ret;
    ret = run(cat, err, what,
              "UPDATE jobs SET epochs_done = ?, best_val_loss = ?, updated_at = ? WHERE name = ?",
              "iddt", epochs_done, best_val_loss, now_s(), name);
    if (ret == NLLM_EINVAL)
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': epochs_done %lld must be between 0 and num_epochs", name,
                            (long long)epochs_done);
    return one_job_changed(cat, name, ret, err);
}

int nllm_catalog_job_set_config(nllm_catalog_t *cat, const char *name, const char *config,
                                nllm_err_t *err)
{
    if (!cat || !config)
        return nllm_err_set(err, NLLM_EINVAL, "setting a job config: missing argument");
    char what[128];
    int ret;
    if ((ret = job_what(name, what, sizeof what, err, "setting its config")) ||
        (ret = check_config(name, config, err)))
        return ret;
    ret = run(cat, err, what, "UPDATE jobs SET config = ?, updated_at = ? WHERE name = ?", "tdt",
              config, now_s(), name);
    return one_job_changed(cat, name, ret, err);
}

int nllm_catalog_job_resume(nllm_catalog_t *cat, const char *name, int64_t from_epoch,
                            int64_t *attempt_out, nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "resuming a job: no catalog");
    char what[128];
    int ret = job_what(name, what, sizeof what, err, "resuming from epoch %lld",
                       (long long)from_epoch);
    if (ret)
        return ret;
    if (from_epoch < 0)
        return nllm_err_set(err, NLLM_EINVAL, "job '%s': cannot resume from epoch %lld", name,
                            (long long)from_epoch);
    int64_t id, attempt;
    if ((ret = tx_begin(cat, err, what)))
        return ret;
    if ((ret = job_lookup(cat, name, &id, &attempt, err, what)))
        goto fail;
    if ((ret = run(cat, err, what,
                   "UPDATE epochs SET superseded = 1 WHERE job_id = ? AND epoch > ?"
                   " AND superseded = 0",
                   "ii", id, from_epoch)))
        goto fail;
    if ((ret = run(cat, err, what,
                   "UPDATE checkpoints SET current = 0 WHERE job_id = ? AND epoch > ?"
                   " AND current = 1",
                   "ii", id, from_epoch)))
        goto fail;
    ret = run(cat, err, what,
              "UPDATE jobs SET attempt = attempt + 1, epochs_done = ?,"
              " best_val_loss = (SELECT MIN(val_loss) FROM epochs e"
              "                  WHERE e.job_id = jobs.id AND e.superseded = 0),"
              " updated_at = ? WHERE id = ?",
              "idi", from_epoch, now_s(), id);
    if (ret == NLLM_EINVAL)
        nllm_err_set(err, NLLM_EINVAL, "job '%s': cannot resume from epoch %lld: beyond num_epochs",
                     name, (long long)from_epoch);
    if (ret)
        goto fail;
    if ((ret = tx_commit(cat, err, what)))
        goto fail;
    if (attempt_out)
        *attempt_out = attempt + 1;
    return 0;
fail:
    tx_rollback(cat);
    return ret;
}

int nllm_catalog_job_delete(nllm_catalog_t *cat, const char *name, nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "deleting a job: no catalog");
    char what[128];
    int ret = job_what(name, what, sizeof what, err, "deleting it");
    if (ret)
        return ret;
    /* One statement: the cascade to the child tables is atomic with it. */
    ret = run(cat, err, what, "DELETE FROM jobs WHERE name = ?", "t", name);
    return one_job_changed(cat, name, ret, err);
}

/* ---- checkpoints ------------------------------------------------------- */

#define CKPT_COLS                                                                                  \
    "id, job_id, kind, name, epoch, step, path, size, checksum, weights_hash, val_loss, "          \
    "created_at, status, bad_reason, current, attempt"

/* CKPT_COLS in order. */
static const field_t ckpt_fields[] = {
    F_I64(nllm_catalog_ckpt_t, id),          F_I64(nllm_catalog_ckpt_t, job_id),
    F_BUF(nllm_catalog_ckpt_t, kind),        F_TEXT(nllm_catalog_ckpt_t, name),
    F_I64(nllm_catalog_ckpt_t, epoch),       F_I64(nllm_catalog_ckpt_t, step),
    F_TEXT(nllm_catalog_ckpt_t, path),       F_I64(nllm_catalog_ckpt_t, size),
    F_BUF(nllm_catalog_ckpt_t, checksum),    F_TEXT(nllm_catalog_ckpt_t, weights_hash),
    F_REAL(nllm_catalog_ckpt_t, val_loss),   F_REAL(nllm_catalog_ckpt_t, created_at),
    F_BUF(nllm_catalog_ckpt_t, status),      F_TEXT(nllm_catalog_ckpt_t, bad_reason),
    F_INT(nllm_catalog_ckpt_t, current),     F_I64(nllm_catalog_ckpt_t, attempt),
};
static const row_type_t ckpt_rows = ROW_TYPE(nllm_catalog_ckpt_t, ckpt_fields);

void nllm_catalog_ckpt_free(nllm_catalog_ckpt_t *ck)
{
    row_free(&ckpt_rows, ck);
}

void nllm_catalog_ckpts_free(nllm_catalog_ckpt_t *cks, size_t n)
{
    rows_free(&ckpt_rows, cks, n);
}

static int is_hex(const char *s, size_t min, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= max || !((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return 0;
    return n >= min;
}

static int check_ckpt_spec(const char *job, const nllm_catalog_ckpt_spec_t *s, char *name,
                           size_t cap, nllm_err_t *err)
{
    char b[80];
    if (!in_list(s->kind, ckpt_kinds, sizeof ckpt_kinds / sizeof ckpt_kinds[0]))
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': checkpoint kind '%s' is not one of best, epoch, final, "
                            "paused",
                            job, shown(s->kind, b, sizeof b));
    int is_epoch = strcmp(s->kind, "epoch") == 0;
    if (s->epoch < (is_epoch ? 1 : 0) || s->step < 0 || s->size < 0)
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': %s checkpoint has a bad epoch %lld, step %lld or size %lld",
                            job, s->kind, (long long)s->epoch, (long long)s->step,
                            (long long)s->size);
    if (is_epoch)
        snprintf(name, cap, "epoch_%lld", (long long)s->epoch);
    else
        snprintf(name, cap, "%s", s->kind);
    if (s->name && strcmp(s->name, name) != 0)
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': a %s checkpoint at epoch %lld must be named '%s', not '%s'",
                            job, s->kind, (long long)s->epoch, name, shown(s->name, b, sizeof b));
    if (!s->path || !*s->path)
        return nllm_err_set(err, NLLM_EINVAL, "job '%s': checkpoint '%s' has no path", job, name);
    if (!s->checksum || !is_hex(s->checksum, 16, 16))
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': checkpoint '%s' checksum '%s' is not 16 lowercase hex "
                            "digits (xxh64)",
                            job, name, shown(s->checksum, b, sizeof b));
    if (s->weights_hash && !is_hex(s->weights_hash, 1, 128))
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': checkpoint '%s' weights_hash '%s' is not lowercase hex", job,
                            name, shown(s->weights_hash, b, sizeof b));
    return 0;
}

/* Test hook of the reliability campaign (tests/reliability/), off unless the
 * environment sets NLLM_CATALOG_FAULT="ckpt_add:N:ACTION" (at the N-th
 * checkpoint-row commit of this process, just before COMMIT) or
 * "ckpt_added:N:kill" (just after COMMIT returned). ACTION: kill
 * (raise(SIGKILL): a crash at that instant), ENOSPC or EIO (the transaction is
 * rolled back and the call fails as if SQLite had reported SQLITE_FULL /
 * SQLITE_IOERR). Loop thread only, like the rest of the catalog. */
static int ckpt_commit_fault(int after, nllm_err_t *err, const char *what)
{
    static int parsed;
    static char point[16], action[16];
    static long nth, count[2];
    if (!parsed) {
        parsed = 1;
        const char *spec = getenv("NLLM_CATALOG_FAULT");
        if (spec && sscanf(spec, "%15[a-z_]:%ld:%15s", point, &nth, action) != 3)
            nth = 0;
    }
    if (nth <= 0 || strcmp(point, after ? "ckpt_added" : "ckpt_add") != 0 ||
        ++count[after] != nth)
        return 0;
    if (strcmp(action, "kill") == 0)
        raise(SIGKILL);
    if (after)
        return 0;
    if (strcmp(action, "ENOSPC") == 0)
        return nllm_err_set(err, NLLM_ENOSPC, "%s: database or disk is full (injected by "
                            "NLLM_CATALOG_FAULT)", what);
    if (strcmp(action, "EIO") == 0)
        return nllm_err_set(err, NLLM_EIO, "%s: disk I/O error (injected by "
                            "NLLM_CATALOG_FAULT)", what);
    return 0;
}

int nllm_catalog_ckpt_add(nllm_catalog_t *cat, const char *job,
                          const nllm_catalog_ckpt_spec_t *spec, int64_t *id_out, nllm_err_t *err)
{
    if (!cat || !spec)
        return nllm_err_set(err, NLLM_EINVAL, "recording a checkpoint: missing argument");
    int ret;
    char name[32];
    if ((ret = check_job_name(job, err)) ||
        (ret = check_ckpt_spec(job, spec, name, sizeof name, err)))
        return ret;
    char what[160];
    snprintf(what, sizeof what, "job '%s': recording checkpoint '%s'", job, name);
    int64_t job_id, attempt;
    if ((ret = tx_begin(cat, err, what)))
        return ret;
    if ((ret = job_lookup(cat, job, &job_id, &attempt, err, what)))
        goto fail;
    if (strcmp(spec->kind, "epoch") == 0)
        /* The file at this name was replaced; its old row describes nothing. */
        ret = run(cat, err, what, "DELETE FROM checkpoints WHERE job_id = ? AND name = ?", "it",
                  job_id, name);
    else
        ret = run(cat, err, what,
                  "UPDATE checkpoints SET current = 0 WHERE job_id = ? AND name = ?"
                  " AND current = 1",
                  "it", job_id, name);
    if (ret)
        goto fail;
    ret = run(cat, err, what,
              "INSERT INTO checkpoints (job_id, kind, name, epoch, step, path, size, checksum,"
              " weights_hash, val_loss, created_at, status, current, attempt)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', 1, ?)",
              "ittiitittddi", job_id, spec->kind, name, spec->epoch, spec->step, spec->path,
              spec->size, spec->checksum, spec->weights_hash, spec->val_loss, now_s(), attempt);
    if (ret)
        goto fail;
    int64_t id = sqlite3_last_insert_rowid(cat->db);
    if ((ret = ckpt_commit_fault(0, err, what)) || (ret = tx_commit(cat, err, what)))
        goto fail;
    ckpt_commit_fault(1, err, what);
    if (id_out)
        *id_out = id;
    return 0;
fail:
    tx_rollback(cat);
    return ret;
}

int nllm_catalog_ckpt_list(nllm_catalog_t *cat, const char *job, int current_only,
                           nllm_catalog_ckpt_t **out, size_t *n, nllm_err_t *err)
{
    if (!cat || !out || !n)
        return nllm_err_set(err, NLLM_EINVAL, "listing checkpoints: missing argument");
    int ret;
    *out = list_job_rows(cat, job, "listing checkpoints", &ckpt_rows, n, &ret, err,
                         "SELECT " CKPT_COLS " FROM checkpoints WHERE job_id = ?"
                         " AND (current = 1 OR ? = 0) ORDER BY step, id",
                         "ii", (int64_t)(current_only != 0));
    return ret;
}

int nllm_catalog_ckpt_find(nllm_catalog_t *cat, const char *job, const char *name,
                           nllm_catalog_ckpt_t *out, nllm_err_t *err)
{
    if (!cat || !out)
        return nllm_err_set(err, NLLM_EINVAL, "finding a checkpoint: missing argument");
    memset(out, 0, sizeof *out);
    int ret;
    if ((ret = check_job_name(job, err)) || (ret = check_ckpt_name(job, name, err)))
        return ret;
    char what[160];
    int64_t job_id;
    if ((ret = job_what_id(cat, job, &job_id, what, sizeof what, err, "finding checkpoint '%s'",
                           name)))
        return ret;
    int latest = strcmp(name, "latest") == 0;
    if (latest)
        ret = select_one(cat, &ckpt_rows, out, err, what,
                         "SELECT " CKPT_COLS " FROM checkpoints WHERE job_id = ? AND current = 1"
                         " AND status = 'ok' ORDER BY step DESC, id DESC LIMIT 1",
                         "i", job_id);
    else
        ret = select_one(cat, &ckpt_rows, out, err, what,
                         "SELECT " CKPT_COLS " FROM checkpoints WHERE job_id = ? AND name = ?"
                         " ORDER BY current DESC, id DESC LIMIT 1",
                         "it", job_id, name);
    if (ret == 1 && latest)
        return nllm_err_set(err, NLLM_ENOENT,
                            "job '%s' has no usable checkpoint (none current and ok); "
                            "start it from scratch or name a checkpoint",
                            job);
    if (ret == 1)
        return nllm_err_set(err, NLLM_ENOENT,
                            "job '%s' has no checkpoint '%s'; list its checkpoints", job, name);
    return ret;
}

static int ckpt_set_status(nllm_catalog_t *cat, const char *job, int64_t ckpt_id,
                           const char *reason, nllm_err_t *err)
{
    char what[160];
    int ret = job_what(job, what, sizeof what, err, "marking checkpoint #%lld %s",
                       (long long)ckpt_id, reason ? "bad" : "ok");
    if (ret)
        return ret;
    ret = run(cat, err, what,
              "UPDATE checkpoints SET status = ?, bad_reason = ? WHERE id = ?"
              " AND job_id = (SELECT id FROM jobs WHERE name = ?)",
              "ttit", reason ? "bad" : "ok", reason, ckpt_id, job);
    if (ret)
        return ret;
    if (sqlite3_changes(cat->db) == 0) {
        if ((ret = job_lookup(cat, job, NULL, NULL, err, what)))
            return ret;
        return nllm_err_set(err, NLLM_ENOENT,
                            "job '%s' has no checkpoint #%lld; list its checkpoints", job,
                            (long long)ckpt_id);
    }
    return 0;
}

int nllm_catalog_ckpt_mark_bad(nllm_catalog_t *cat, const char *job, int64_t ckpt_id,
                               const char *reason, nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "marking a checkpoint bad: no catalog");
    if (!reason || !*reason)
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': marking checkpoint #%lld bad needs a reason",
                            job ? job : "?", (long long)ckpt_id);
    return ckpt_set_status(cat, job, ckpt_id, reason, err);
}

int nllm_catalog_ckpt_mark_ok(nllm_catalog_t *cat, const char *job, int64_t ckpt_id,
                              nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "marking a checkpoint ok: no catalog");
    return ckpt_set_status(cat, job, ckpt_id, NULL, err);
}

int nllm_catalog_ckpt_supersede_after(nllm_catalog_t *cat, const char *job, int64_t epoch,
                                      nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "superseding checkpoints: no catalog");
    char what[128];
    int64_t job_id;
    int ret = job_what_id(cat, job, &job_id, what, sizeof what, err,
                          "superseding checkpoints after epoch %lld", (long long)epoch);
    if (ret)
        return ret;
    return run(cat, err, what,
               "UPDATE checkpoints SET current = 0 WHERE job_id = ? AND epoch > ? AND current = 1",
               "ii", job_id, epoch);
}

int nllm_catalog_ckpt_delete(nllm_catalog_t *cat, const char *job, int64_t ckpt_id,
                             nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "deleting a checkpoint row: no catalog");
    char what[128];
    int64_t job_id;
    int ret = job_what_id(cat, job, &job_id, what, sizeof what, err, "deleting checkpoint #%lld",
                          (long long)ckpt_id);
    if (ret)
        return ret;
    return run(cat, err, what, "DELETE FROM checkpoints WHERE job_id = ? AND id = ?", "ii",
               job_id, ckpt_id);
}

/* ---- epochs ------------------------------------------------------------ */

#define EPOCH_COLS                                                                                 \
    "attempt, epoch, train_loss, val_loss, train_ppl, val_ppl, val_acc, seconds, tokens_per_s, "   \
    "superseded, created_at"

/* EPOCH_COLS in order. */
static const field_t epoch_fields[] = {
    F_I64(nllm_catalog_epoch_t, attempt),      F_I64(nllm_catalog_epoch_t, epoch),
    F_REAL(nllm_catalog_epoch_t, train_loss),  F_REAL(nllm_catalog_epoch_t, val_loss),
    F_REAL(nllm_catalog_epoch_t, train_ppl),   F_REAL(nllm_catalog_epoch_t, val_ppl),
    F_REAL(nllm_catalog_epoch_t, val_acc),     F_REAL(nllm_catalog_epoch_t, seconds),
    F_REAL(nllm_catalog_epoch_t, tokens_per_s), F_INT(nllm_catalog_epoch_t, superseded),
    F_REAL(nllm_catalog_epoch_t, created_at),
};
static const row_type_t epoch_rows = ROW_TYPE(nllm_catalog_epoch_t, epoch_fields);

void nllm_catalog_epochs_free(nllm_catalog_epoch_t *eps, size_t n)
{
    rows_free(&epoch_rows, eps, n);
}

int nllm_catalog_epoch_add(nllm_catalog_t *cat, const char *job, const nllm_catalog_epoch_t *ep,
                           nllm_err_t *err)
{
    if (!cat || !ep)
        return nllm_err_set(err, NLLM_EINVAL, "recording an epoch: missing argument");
    char what[128];
    int ret = job_what(job, what, sizeof what, err, "recording epoch %lld", (long long)ep->epoch);
    if (ret)
        return ret;
    if (ep->epoch < 1)
        return nllm_err_set(err, NLLM_EINVAL, "job '%s': epoch numbers start at 1 (got %lld)", job,
                            (long long)ep->epoch);
    int64_t job_id, attempt;
    if ((ret = tx_begin(cat, err, what)))
        return ret;
    if ((ret = job_lookup(cat, job, &job_id, &attempt, err, what)))
        goto fail;
    /* An earlier attempt's row for this epoch is off the current line now. */
    if ((ret = run(cat, err, what,
                   "UPDATE epochs SET superseded = 1 WHERE job_id = ? AND epoch = ?"
                   " AND attempt < ? AND superseded = 0",
                   "iii", job_id, ep->epoch, attempt)))
        goto fail;
    ret = run(cat, err, what,
              "INSERT INTO epochs (job_id, attempt, epoch, train_loss, val_loss, train_ppl,"
              " val_ppl, val_acc, seconds, tokens_per_s, superseded, created_at)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
              "iiiddddddd"
              "d",
              job_id, attempt, ep->epoch, ep->train_loss, ep->val_loss, ep->train_ppl, ep->val_ppl,
              ep->val_acc, ep->seconds, ep->tokens_per_s, now_s());
    if (ret == NLLM_EEXIST)
        nllm_err_set(err, NLLM_EEXIST,
                     "job '%s': epoch %lld of attempt %lld is already recorded; resume the job "
                     "to run it again",
                     job, (long long)ep->epoch, (long long)attempt);
    if (ret)
        goto fail;
    if ((ret = tx_commit(cat, err, what)))
        goto fail;
    return 0;
fail:
    tx_rollback(cat);
    return ret;
}

int nllm_catalog_epoch_list(nllm_catalog_t *cat, const char *job, int include_superseded,
                            nllm_catalog_epoch_t **out, size_t *n, nllm_err_t *err)
{
    if (!cat || !out || !n)
        return nllm_err_set(err, NLLM_EINVAL, "listing epochs: missing argument");
    int ret;
    *out = list_job_rows(cat, job, "listing epochs", &epoch_rows, n, &ret, err,
                         include_superseded
                             ? "SELECT " EPOCH_COLS " FROM epochs WHERE job_id = ? ORDER BY id"
                             : "SELECT " EPOCH_COLS " FROM epochs"
                               " WHERE job_id = ? AND superseded = 0 ORDER BY epoch",
                         "i", 0);
    return ret;
}

int nllm_catalog_epoch_supersede_after(nllm_catalog_t *cat, const char *job, int64_t epoch,
                                       nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "superseding epochs: no catalog");
    char what[128];
    int64_t job_id;
    int ret = job_what_id(cat, job, &job_id, what, sizeof what, err,
                          "superseding epochs after %lld", (long long)epoch);
    if (ret)
        return ret;
    return run(cat, err, what,
               "UPDATE epochs SET superseded = 1 WHERE job_id = ? AND epoch > ? AND superseded = 0",
               "ii", job_id, epoch);
}

/* ---- events ------------------------------------------------------------ */

/* "id, ts, kind, message" in order. */
static const field_t event_fields[] = {
    F_I64(nllm_catalog_event_t, id),
    F_REAL(nllm_catalog_event_t, ts),
    F_TEXT(nllm_catalog_event_t, kind),
    F_TEXT(nllm_catalog_event_t, message),
};
static const row_type_t event_rows = ROW_TYPE(nllm_catalog_event_t, event_fields);

void nllm_catalog_events_free(nllm_catalog_event_t *evs, size_t n)
{
    rows_free(&event_rows, evs, n);
}

static int valid_event_kind(const char *k)
{
    if (!k || !*k)
        return 0;
    size_t n = 0;
    for (; k[n]; n++)
        if (n >= 32 ||
            !((k[n] >= 'a' && k[n] <= 'z') || (k[n] >= '0' && k[n] <= '9') || k[n] == '_'))
            return 0;
    return 1;
}

int nllm_catalog_event_add(nllm_catalog_t *cat, const char *job, const char *kind,
                           const char *message, nllm_err_t *err)
{
    if (!cat)
        return nllm_err_set(err, NLLM_EINVAL, "recording an event: no catalog");
    int ret;
    if ((ret = check_job_name(job, err)))
        return ret;
    if (!valid_event_kind(kind)) {
        char b[48];
        return nllm_err_set(err, NLLM_EINVAL,
                            "job '%s': event kind '%s' is invalid: use 1-32 of a-z 0-9 _", job,
                            shown(kind, b, sizeof b));
    }
    char what[128];
    snprintf(what, sizeof what, "job '%s': recording event '%s'", job, kind);
    /* Cut long messages at a UTF-8 character boundary. */
    size_t len = message ? strlen(message) : 0;
    char *cut = NULL;
    if (len > NLLM_CATALOG_EVENT_MSG_MAX) {
        len = NLLM_CATALOG_EVENT_MSG_MAX;
        while (len > 0 && ((unsigned char)message[len] & 0xC0) == 0x80)
            len--;
        if (!(cut = malloc(len + 1)))
            return oom(err, what);
        memcpy(cut, message, len);
        cut[len] = '\0';
    }
    int64_t job_id;
    if ((ret = tx_begin(cat, err, what)))
        goto out;
    if ((ret = job_lookup(cat, job, &job_id, NULL, err, what)))
        goto out;
    if ((ret = run(cat, err, what,
                   "INSERT INTO events (job_id, ts, kind, message) VALUES (?, ?, ?, ?)", "idtt",
                   job_id, now_s(), kind,
                   cut       ? cut
                   : message ? message
                             : "")))
        goto out;
    /* Keep the newest NLLM_CATALOG_EVENTS_PER_JOB: one index walk, and at
     * most one row to delete per insert once the job is at the bound. */
    if ((ret = run(cat, err, what,
                   "DELETE FROM events WHERE job_id = ?1 AND id <= (SELECT id FROM events"
                   " WHERE job_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                   "ii", job_id, (int64_t)NLLM_CATALOG_EVENTS_PER_JOB)))
        goto out;
    ret = tx_commit(cat, err, what);
out:
    if (ret)
        tx_rollback(cat);
    free(cut);
    return ret;
}

int nllm_catalog_event_list(nllm_catalog_t *cat, const char *job, size_t newest_n,
                            nllm_catalog_event_t **out, size_t *n, nllm_err_t *err)
{
    if (!cat || !out || !n)
        return nllm_err_set(err, NLLM_EINVAL, "listing events: missing argument");
    int64_t limit = newest_n == 0 || newest_n > INT64_MAX ? -1 : (int64_t)newest_n;
    int ret;
    *out = list_job_rows(cat, job, "listing events", &event_rows, n, &ret, err,
                         "SELECT id, ts, kind, message FROM events WHERE job_id = ?"
                         " ORDER BY id DESC LIMIT ?",
                         "ii", limit);
    return ret;
}
