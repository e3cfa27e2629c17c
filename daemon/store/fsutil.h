/* fsutil.h -- durable file helpers: atomic replace, full writes, folder fsync.
 *
 * Owns the one rule for durable files: temp file in the same folder, write,
 * fsync the file, rename over the final name, fsync the folder. On any error
 * the final name keeps its previous content (or stays absent). Also owns the
 * process-global fault-injection hook that tests and the reliability
 * campaign use to fail the k-th write / fsync / rename / folder fsync.
 * Callers: safetensors writer, checkpoints, catalog, daemon start-up.
 */
#ifndef NLLM_FSUTIL_H
#define NLLM_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "nllm_err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes the whole content of the temp file to fd; returns 0 or an NLLM_E*
 * code and fills err. Must not close fd. */
typedef int (*nllm_fs_write_cb)(int fd, void *ud, nllm_err_t *err);

/* Atomically replace path with what cb writes. Temp name
 * "<dir>/.<base>.tmp.<pid>.<counter>". On success the new content is durable
 * (file and folder fsynced). On any failure the temp file is unlinked and the
 * final name holds its previous content (or is still absent); cb is not called
 * if the temp file cannot be created. ENOSPC/EDQUOT -> NLLM_ENOSPC, a missing
 * folder -> NLLM_ENOENT, other I/O errors -> NLLM_EIO, cb's own code otherwise.
 * A failed fsync is never retried. One writer per final path at a time. */
int nllm_fs_write_atomic(const char *path, nllm_fs_write_cb cb, void *ud, nllm_err_t *err);

/* Write all len bytes, looping over short writes and EINTR. label names the
 * file for messages. */
int nllm_fs_write_all(int fd, const void *buf, size_t len, const char *label, nllm_err_t *err);

/* fsync(fd); label names the file for messages. Never retried. */
int nllm_fs_fsync_fd(int fd, const char *label, nllm_err_t *err);

/* fsync a folder so that renames/creations in it are durable. Like redis's
 * fsyncFileDir, EINVAL/EBADF from file systems that cannot fsync folders are
 * ignored. */
int nllm_fs_fsync_dir(const char *dir, nllm_err_t *err);

/* Read a whole file into a new malloc'd buffer (*buf, caller frees) with a
 * NUL byte after the *len bytes. Files larger than max -> NLLM_EINVAL;
 * missing -> NLLM_ENOENT. */
int nllm_fs_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, nllm_err_t *err);

/* mkdir -p; newly created folders are made durable in their parent.
 * A path component that exists and is not a folder -> NLLM_EEXIST. */
int nllm_fs_mkdir_p(const char *path, mode_t mode, nllm_err_t *err);

/* Remove leftover temp files (regular files named ".*.tmp.*") from dir.
 * Call at start-up before any writer runs in dir. *removed (may be NULL)
 * gets the count. */
int nllm_fs_remove_temp_files(const char *dir, int *removed, nllm_err_t *err);

/* Bytes available to an unprivileged user on the file system holding path. */
int nllm_fs_free_bytes(const char *path, uint64_t *out, nllm_err_t *err);

/* Take the state folder's lock: flock(2) on "<dir>/nllmd.lock", exclusive and
 * non-blocking, held by the returned descriptor (*fd, close-on-exec) until it is
 * closed or the process ends, so a crash never leaves a stale lock. The file
 * then holds "pid <pid>: <owner>" for the message a second process gets. A
 * folder another process holds -> NLLM_EBUSY naming it, that holder and what to
 * do. One process owns a state folder: two would write the same checkpoint
 * and catalog rows. */
int nllm_fs_lock_dir(const char *dir, const char *owner, int *fd, nllm_err_t *err);

/* ---- fault injection (process-global, thread-safe) ---- */

enum {
    NLLM_FS_OP_WRITE = 0, /* each write(2) made by nllm_fs_write_all */
    NLLM_FS_OP_FSYNC,     /* nllm_fs_fsync_fd (and the file fsync of write_atomic) */
    NLLM_FS_OP_RENAME,    /* the rename of nllm_fs_write_atomic */
    NLLM_FS_OP_DIRSYNC,   /* nllm_fs_fsync_dir */
    NLLM_FS_OP_COUNT_
};

/* Make the nth call of op from now on (1 = the next one) fail with errnum
 * without doing it. nth < 0: every call from the |nth|-th on fails (a full
 * disk). nth == 0: clear the fault of op. Setting a fault overrides the
 * NLLM_FS_FAULT environment variable. */
void nllm_fs_fault_set(int op, long nth, int errnum);
void nllm_fs_fault_clear_all(void);
/* Apply a spec "op:nth[+]:ACTION[,op:nth[+]:ACTION...]", e.g. "write:3:ENOSPC",
 * "fsync:1+:EIO" ('+' = sticky) or "rename:1:kill". op: write|fsync|rename|
 * dirsync; ACTION: an errno name (ENOSPC, EIO, EDQUOT, EROFS, EACCES, EINTR,
 * EPERM, ENOMEM, EFBIG, EAGAIN, EBADF, EINVAL) or number, which the call
 * fails with, or "kill": the call raises SIGKILL instead (a crash at that
 * instant, for the reliability campaign's kill sweep).
 * The environment variable NLLM_FS_FAULT is applied this way once, at the
 * first file operation. Returns NLLM_EINVAL for a bad spec (nothing set).
 * (The trainer's test hook NLLM_TRAINER_FAULT=diverge@step:N makes a
 * training step diverge for real: see nllm_trainer_diverged in trainer.h.
 * The backends' NLLM_BACKEND_FAULT=device@sync:N[:K] makes the Nth sync of
 * a backend, and every later one, fail with a sticky NLLM_EDEVICE, as a
 * GPU fault does: see nllm_backend_fault_parse in kernels/backend.h.) */
int nllm_fs_fault_parse(const char *spec, nllm_err_t *err);
/* Cap each write(2) of nllm_fs_write_all at cap bytes to exercise the
 * short-write path (0 = no cap). */
void nllm_fs_fault_short_writes(size_t cap);
/* Calls of op made since the process started (injected failures included). */
long nllm_fs_op_count(int op);

#ifdef __cplusplus
}
#endif

#endif /* NLLM_FSUTIL_H */
