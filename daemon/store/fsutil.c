/* fsutil.c -- durable atomic file replacement and the fs fault hook.
 *
 * Invariant: nllm_fs_write_atomic either makes the new content durable under
 * the final name or leaves the final name as it was (a hard-link backup of the
 * old file lets a failed folder fsync be undone) and no temp file behind.
 * Every write/fsync/rename/folder-fsync goes through fault_hit() so tests can
 * fail the k-th one; the check is one atomic add and one atomic load.
 * Callers: see fsutil.h.
 */
#ifndef _GNU_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#endif
#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* ---------------------------------------------------------------- faults */

typedef struct {
    atomic_long calls;    /* calls made since start */
    atomic_long fail_at;  /* value of calls that fails; 0 = none */
    atomic_int fail_errno;
    atomic_int sticky;    /* fail every call >= fail_at */
} fault_slot_t;

static fault_slot_t g_fault[NLLM_FS_OP_COUNT_];
static atomic_size_t g_write_cap;    /* 0 = no cap */
static atomic_int g_env_state;       /* 0 not read, 1 reading, 2 done */
static atomic_ulong g_tmp_counter;

static const char *const op_names[NLLM_FS_OP_COUNT_] = {"write", "fsync", "rename", "dirsync"};

/* Not an errno: the fault action "kill" (spec "write:3:kill") makes the call
 * raise(SIGKILL) instead of failing -- a crash at that exact instant, for the
 * reliability campaign (tests/reliability/kill.py). */
#define FAULT_KILL 1000000

static void fault_store(int op, long nth, int errnum)
{
    fault_slot_t *s = &g_fault[op];
    if (nth == 0) {
        atomic_store(&s->fail_at, 0);
        return;
    }
    atomic_store(&s->fail_at, 0); /* disarm while changing errno/sticky */
    long now = atomic_load(&s->calls);
    atomic_store(&s->fail_errno, errnum);
    atomic_store(&s->sticky, nth < 0);
    atomic_store(&s->fail_at, now + (nth < 0 ? -nth : nth));
}

static void env_once(void);

void nllm_fs_fault_set(int op, long nth, int errnum)
{
    if (op < 0 || op >= NLLM_FS_OP_COUNT_)
        return;
    env_once(); /* so that the environment cannot override this later */
    fault_store(op, nth, errnum);
}

void nllm_fs_fault_clear_all(void)
{
    env_once();
    for (int op = 0; op < NLLM_FS_OP_COUNT_; op++)
        fault_store(op, 0, 0);
    atomic_store(&g_write_cap, 0);
}

void nllm_fs_fault_short_writes(size_t cap)
{
    atomic_store(&g_write_cap, cap);
}

long nllm_fs_op_count(int op)
{
    if (op < 0 || op >= NLLM_FS_OP_COUNT_)
        return -1;
    return atomic_load(&g_fault[op].calls);
}

static int errno_from_name(const char *s, size_t n)
{
    static const struct {
        const char *name;
        int val;
    } tab[] = {{"ENOSPC", ENOSPC}, {"EIO", EIO},       {"EDQUOT", EDQUOT}, {"EROFS", EROFS},
               {"EACCES", EACCES}, {"EINTR", EINTR},   {"EPERM", EPERM},   {"ENOMEM", ENOMEM},
               {"EFBIG", EFBIG},   {"EAGAIN", EAGAIN}, {"EBADF", EBADF},   {"EINVAL", EINVAL},
               {"kill", FAULT_KILL}};
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strlen(tab[i].name) == n && memcmp(tab[i].name, s, n) == 0)
            return tab[i].val;
    if (n == 0 || n > 6)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v > 0 ? v : -1;
}

static int parse_spec(const char *spec, int apply, nllm_err_t *err)
{
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *c1 = memchr(p, ':', len);
        const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - p)) : NULL;
        if (!c1 || !c2)
            return nllm_err_set(err, NLLM_EINVAL,
                                "fault spec '%s': expected op:nth:ERRNO such as write:3:ENOSPC", spec);
        int op = -1;
        for (int i = 0; i < NLLM_FS_OP_COUNT_; i++)
            if (strlen(op_names[i]) == (size_t)(c1 - p) && memcmp(op_names[i], p, (size_t)(c1 - p)) == 0)
                op = i;
        if (op < 0)
            return nllm_err_set(err, NLLM_EINVAL,
                                "fault spec '%s': unknown op '%.*s'; use write, fsync, rename or dirsync", spec,
                                (int)(c1 - p), p);
        long nth = 0;
        const char *q = c1 + 1;
        int digits = 0;
        while (q < c2 && *q >= '0' && *q <= '9' && nth < 1000000000L) {
            nth = nth * 10 + (*q - '0');
            q++;
            digits++;
        }
        int sticky = 0;
        if (q < c2 && *q == '+') {
            sticky = 1;
            q++;
        }
        if (!digits || q != c2 || nth <= 0)
            return nllm_err_set(err, NLLM_EINVAL, "fault spec '%s': nth must be a positive integer, optionally followed by '+'",
                                spec);
        int e = errno_from_name(c2 + 1, len - (size_t)(c2 + 1 - p));
        if (e <= 0)
            return nllm_err_set(err, NLLM_EINVAL, "fault spec '%s': unknown errno '%.*s'; use a name like ENOSPC, a number or kill",
                                spec, (int)(len - (size_t)(c2 + 1 - p)), c2 + 1);
        if (apply)
            fault_store(op, sticky ? -nth : nth, e);
        p = end ? end + 1 : p + len;
    }
    return 0;
}

int nllm_fs_fault_parse(const char *spec, nllm_err_t *err)
{
    if (!spec)
        return nllm_err_set(err, NLLM_EINVAL, "fault spec is NULL");
    env_once();
    int rc = parse_spec(spec, 0, err);
    if (rc == 0)
        parse_spec(spec, 1, NULL);
    return rc;
}

static void env_once(void)
{
    if (atomic_load_explicit(&g_env_state, memory_order_acquire) == 2)
        return;
    int expect = 0;
    if (atomic_compare_exchange_strong(&g_env_state, &expect, 1)) {
        const char *spec = getenv("NLLM_FS_FAULT");
        if (spec && *spec) {
            nllm_err_t e;
            nllm_err_clear(&e);
            if (parse_spec(spec, 0, &e) == 0)
                parse_spec(spec, 1, NULL);
            else
                fprintf(stderr, "nllm: ignoring NLLM_FS_FAULT: %s\n", e.msg);
        }
        atomic_store_explicit(&g_env_state, 2, memory_order_release);
        return;
    }
    while (atomic_load_explicit(&g_env_state, memory_order_acquire) != 2)
        ; /* another thread is parsing a short string */
}

/* Count a call of op; return the errno to inject, or 0 to do the real call. */
static int fault_hit(int op)
{
    if (atomic_load_explicit(&g_env_state, memory_order_acquire) != 2)
        env_once();
    fault_slot_t *s = &g_fault[op];
    long n = atomic_fetch_add_explicit(&s->calls, 1, memory_order_relaxed) + 1;
    long at = atomic_load_explicit(&s->fail_at, memory_order_acquire);
    if (at == 0)
        return 0;
    if (n == at || (n > at && atomic_load(&s->sticky))) {
        int e = atomic_load(&s->fail_errno);
        if (e == FAULT_KILL)
            raise(SIGKILL);
        return e;
    }
    return 0;
}

/* ---------------------------------------------------------------- helpers */

static int code_of(int e)
{
    if (e == ENOSPC || e == EDQUOT)
        return NLLM_ENOSPC;
    if (e == ENOMEM)
        return NLLM_ENOMEM;
    return NLLM_EIO;
}

static const char *hint_of(int e)
{
    if (e == ENOSPC || e == EDQUOT)
        return "free disk space and retry";
    if (e == EACCES || e == EPERM || e == EROFS)
        return "check the permissions of the folder";
    return "check the disk and the system log";
}

static char *xstrdup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Split path into a malloc'd folder ("." when none) and a pointer to the base. */
static int split_path(const char *path, char **dir, const char **base, nllm_err_t *err)
{
    size_t n = strlen(path);
    if (n == 0 || path[n - 1] == '/')
        return nllm_err_set(err, NLLM_EINVAL, "file path '%s' does not name a file; give a path like dir/name", path);
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    if (strcmp(*base, ".") == 0 || strcmp(*base, "..") == 0)
        return nllm_err_set(err, NLLM_EINVAL, "file path '%s' does not name a file; give a path like dir/name", path);
    if (!slash)
        *dir = xstrdup_n(".", 1);
    else if (slash == path)
        *dir = xstrdup_n("/", 1);
    else
        *dir = xstrdup_n(path, (size_t)(slash - path));
    if (!*dir)
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory splitting path '%s'", path);
    return 0;
}

static char *make_temp_name(const char *dir, const char *base)
{
    unsigned long c = atomic_fetch_add(&g_tmp_counter, 1);
    size_t n = strlen(dir) + strlen(base) + 64;
    char *t = malloc(n);
    if (t)
        snprintf(t, n, "%s/.%s.tmp.%ld.%lu", dir, base, (long)getpid(), c);
    return t;
}

/* ---------------------------------------------------------------- writes */

int nllm_fs_write_all(int fd, const void *buf, size_t len, const char *label, nllm_err_t *err)
{
    const char *p = buf;
    if (!label)
        label = "(file)";
    while (len > 0) {
        size_t chunk = len;
        size_t cap = atomic_load_explicit(&g_write_cap, memory_order_relaxed);
        if (cap && chunk > cap)
            chunk = cap;
        if (chunk > (size_t)1 << 30)
            chunk = (size_t)1 << 30;
        ssize_t w;
        int inj = fault_hit(NLLM_FS_OP_WRITE);
        if (inj) {
            errno = inj;
            w = -1;
        } else {
            w = write(fd, p, chunk);
        }
        if (w < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            return nllm_err_set(err, code_of(e), "writing %s: %s; %s", label, strerror(e), hint_of(e));
        }
        if (w == 0)
            return nllm_err_set(err, NLLM_EIO, "writing %s: write returned 0 bytes; check the disk", label);
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int nllm_fs_fsync_fd(int fd, const char *label, nllm_err_t *err)
{
    if (!label)
        label = "(file)";
    int inj = fault_hit(NLLM_FS_OP_FSYNC);
    int rc;
    if (inj) {
        errno = inj;
        rc = -1;
    } else {
        rc = fsync(fd);
    }
    if (rc != 0) {
        int e = errno;
        return nllm_err_set(err, code_of(e), "fsync of %s failed: %s; the data may not be on disk, %s", label,
                            strerror(e), hint_of(e));
    }
    return 0;
}

int nllm_fs_fsync_dir(const char *dir, nllm_err_t *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return nllm_err_set(err, e == ENOENT ? NLLM_ENOENT : code_of(e), "opening folder %s to fsync it: %s; %s", dir,
                            strerror(e), hint_of(e));
    }
    int inj = fault_hit(NLLM_FS_OP_DIRSYNC);
    int rc;
    if (inj) {
        errno = inj;
        rc = -1;
    } else {
        rc = fsync(fd);
    }
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL && e != EBADF)
        return nllm_err_set(err, code_of(e), "fsync of folder %s failed: %s; recent renames in it may be lost, %s", dir,
                            strerror(e), hint_of(e));
    return 0;
}

static int do_rename(const char *from, const char *to)
{
    int inj = fault_hit(NLLM_FS_OP_RENAME);
    if (inj) {
        errno = inj;
        return -1;
    }
    return rename(from, to);
}

int nllm_fs_write_atomic(const char *path, nllm_fs_write_cb cb, void *ud, nllm_err_t *err)
{
    if (!path || !cb)
        return nllm_err_set(err, NLLM_EINVAL, "nllm_fs_write_atomic: path and callback are required");
    char *dir = NULL, *tmp = NULL, *bak = NULL;
    const char *base = NULL;
    int rc = split_path(path, &dir, &base, err);
    if (rc)
        return rc;
    tmp = make_temp_name(dir, base);
    bak = make_temp_name(dir, base);
    if (!tmp || !bak) {
        rc = nllm_err_set(err, NLLM_ENOMEM, "out of memory writing %s", path);
        goto out;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        rc = nllm_err_set(err, e == ENOENT ? NLLM_ENOENT : code_of(e), "creating temp file %s for %s: %s; %s", tmp, path,
                          strerror(e), e == ENOENT ? "create the folder first" : hint_of(e));
        goto out;
    }
    rc = cb(fd, ud, err);
    if (rc != 0) {
        if (rc > 0)
            rc = NLLM_EINTERNAL;
        if (err && err->code == 0)
            nllm_err_set(err, rc, "writing %s: %s", path, nllm_err_default_msg(rc));
        else if (err && !strstr(err->msg, path))
            nllm_err_prefix(err, "saving %s: ", path);
        close(fd);
        unlink(tmp);
        goto out;
    }
    rc = nllm_fs_fsync_fd(fd, tmp, err);
    if (rc) {
        close(fd);
        unlink(tmp);
        goto out;
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        rc = nllm_err_set(err, code_of(e), "closing temp file %s for %s: %s; %s", tmp, path, strerror(e), hint_of(e));
        goto out;
    }
    /* Keep the old content reachable so that a failed folder fsync can be
     * undone. Without hard links (some file systems) there is no undo. */
    int have_old = 1, have_bak = 0;
    if (link(path, bak) == 0) {
        have_bak = 1;
    } else if (errno == ENOENT) {
        have_old = 0;
    } else if (errno != EPERM && errno != ENOTSUP && errno != EOPNOTSUPP && errno != EMLINK && errno != EXDEV) {
        int e = errno;
        unlink(tmp);
        rc = nllm_err_set(err, code_of(e), "keeping the previous %s during replace: %s; %s", path, strerror(e),
                          hint_of(e));
        goto out;
    }
    if (do_rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        if (have_bak)
            unlink(bak);
        rc = nllm_err_set(err, code_of(e), "renaming %s over %s: %s; %s", tmp, path, strerror(e), hint_of(e));
        goto out;
    }
    rc = nllm_fs_fsync_dir(dir, err);
    if (rc) {
        /* Undo: the new content must not stay under the final name when we
         * report failure. */
        int undone = have_bak ? rename(bak, path) == 0 : !have_old ? unlink(path) == 0 : 0;
        if (have_bak && !undone)
            unlink(bak);
        if (undone)
            nllm_err_prefix(err, "replacing %s failed, previous content kept: ", path);
        else
            nllm_err_prefix(err, "replacing %s failed and could not be undone, it holds the new content: ", path);
        goto out;
    }
    if (have_bak)
        unlink(bak);
out:
    free(dir);
    free(tmp);
    free(bak);
    return rc;
}

/* ---------------------------------------------------------------- reads */

int nllm_fs_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, nllm_err_t *err)
{
    *buf = NULL;
    *len = 0;
    if (max > SIZE_MAX - 2)
        max = SIZE_MAX - 2;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return nllm_err_set(err, e == ENOENT ? NLLM_ENOENT : code_of(e), "cannot open %s: %s; %s", path, strerror(e),
                            e == ENOENT ? "check the path" : hint_of(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return nllm_err_set(err, code_of(e), "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return nllm_err_set(err, NLLM_EINVAL, "%s is not a regular file; give the path of a file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)max) {
        close(fd);
        return nllm_err_set(err, NLLM_EINVAL, "%s is %lld bytes, more than the limit of %zu bytes", path,
                            (long long)st.st_size, max);
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    uint8_t *b = malloc(cap + 1);
    if (!b) {
        close(fd);
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory reading %s (%lld bytes)", path, (long long)st.st_size);
    }
    for (;;) {
        if (n == cap) { /* the file grew while we read it */
            if (cap > max) {
                free(b);
                close(fd);
                return nllm_err_set(err, NLLM_EINVAL, "%s grew past the limit of %zu bytes while being read", path, max);
            }
            size_t ncap = cap > (max + 1) / 2 ? max + 1 : cap * 2;
            uint8_t *nb = realloc(b, ncap + 1);
            if (!nb) {
                free(b);
                close(fd);
                return nllm_err_set(err, NLLM_ENOMEM, "out of memory reading %s", path);
            }
            b = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, b + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(b);
            close(fd);
            return nllm_err_set(err, code_of(e), "reading %s: %s; %s", path, strerror(e), hint_of(e));
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n > max) {
        free(b);
        return nllm_err_set(err, NLLM_EINVAL, "%s grew past the limit of %zu bytes while being read", path, max);
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

/* ---------------------------------------------------------------- folders */

int nllm_fs_mkdir_p(const char *path, mode_t mode, nllm_err_t *err)
{
    if (!path || !*path)
        return nllm_err_set(err, NLLM_EINVAL, "mkdir: empty folder path");
    size_t n = strlen(path);
    char *p = xstrdup_n(path, n);
    if (!p)
        return nllm_err_set(err, NLLM_ENOMEM, "out of memory creating folder %s", path);
    int rc = 0;
    for (size_t i = 1; i <= n && rc == 0; i++) {
        if (i < n && p[i] != '/')
            continue;
        if (p[i - 1] == '/')
            continue; /* "//" or trailing '/' */
        char saved = p[i];
        p[i] = '\0';
        if (mkdir(p, mode) == 0) {
            /* make the new entry durable in its parent */
            char *slash = strrchr(p, '/');
            if (slash == NULL) {
                rc = nllm_fs_fsync_dir(".", err);
            } else if (slash == p) {
                rc = nllm_fs_fsync_dir("/", err);
            } else {
                *slash = '\0';
                rc = nllm_fs_fsync_dir(p, err);
                *slash = '/';
            }
        } else {
            int e = errno;
            struct stat st;
            if (e == EEXIST || e == EROFS || e == EACCES) {
                if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
                    /* exists as a folder: fine */
                } else if (e == EEXIST) {
                    rc = nllm_err_set(err, NLLM_EEXIST, "cannot create folder %s: %s exists and is not a folder; move it away",
                                      path, p);
                } else {
                    rc = nllm_err_set(err, code_of(e), "cannot create folder %s (at %s): %s; %s", path, p, strerror(e),
                                      hint_of(e));
                }
            } else {
                rc = nllm_err_set(err, e == ENOTDIR ? NLLM_EEXIST : code_of(e), "cannot create folder %s (at %s): %s; %s",
                                  path, p, strerror(e), e == ENOTDIR ? "a path component is not a folder" : hint_of(e));
            }
        }
        p[i] = saved;
    }
    free(p);
    return rc;
}

static int is_temp_name(const char *name)
{
    return name[0] == '.' && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 && strstr(name + 1, ".tmp.") != NULL;
}

int nllm_fs_remove_temp_files(const char *dir, int *removed, nllm_err_t *err)
{
    if (removed)
        *removed = 0;
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        return nllm_err_set(err, e == ENOENT ? NLLM_ENOENT : code_of(e), "cannot open folder %s: %s; %s", dir,
                            strerror(e), e == ENOENT ? "check the path" : hint_of(e));
    }
    int dfd = dirfd(d), count = 0, rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno != 0) {
                int e = errno;
                rc = nllm_err_set(err, code_of(e), "listing folder %s: %s; %s", dir, strerror(e), hint_of(e));
            }
            break;
        }
        if (!is_temp_name(de->d_name))
            continue;
        struct stat st;
        if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (unlinkat(dfd, de->d_name, 0) == 0) {
            count++;
        } else if (errno != ENOENT) {
            int e = errno;
            rc = nllm_err_set(err, code_of(e), "removing temp file %s/%s: %s; %s", dir, de->d_name, strerror(e),
                              hint_of(e));
            break;
        }
    }
    closedir(d);
    if (removed)
        *removed = count;
    return rc;
}

int nllm_fs_lock_dir(const char *dir, const char *owner, int *fd, nllm_err_t *err)
{
    char path[PATH_MAX];
    *fd = -1;
    if (snprintf(path, sizeof path, "%s/nllmd.lock", dir) >= (int)sizeof path)
        return nllm_err_set(err, NLLM_EINVAL, "state folder path too long: %s", dir);
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (f < 0) {
        int e = errno;
        return nllm_err_set(err, code_of(e), "cannot open the state folder's lock %s: %s; %s", path,
                            strerror(e), hint_of(e));
    }
    int r;
    while ((r = flock(f, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
        ;
    if (r != 0) {
        int e = errno;
        if (e == EWOULDBLOCK) {
            char who[256];
            ssize_t n = pread(f, who, sizeof who - 1, 0);
            who[n > 0 ? n : 0] = '\0';
            who[strcspn(who, "\n")] = '\0';
            close(f);
            return nllm_err_set(err, NLLM_EBUSY,
                                "state folder %s is in use by another nllm process (%s): stop that "
                                "process first, or give this one another --state-dir",
                                dir, who[0] ? who : "pid unknown");
        }
        close(f);
        if (e == ENOLCK || e == EOPNOTSUPP || e == ENOSYS)
            return 0; /* a file system without locks: *fd stays -1, the caller warns */
        return nllm_err_set(err, code_of(e), "cannot lock the state folder %s: %s; %s", dir,
                            strerror(e), hint_of(e));
    }
    char line[512];
    int len = snprintf(line, sizeof line, "pid %ld: %s\n", (long)getpid(), owner);
    if (len >= (int)sizeof line)
        len = (int)sizeof line - 1;
    /* the content only informs a second process's message: not fsynced */
    if (ftruncate(f, 0) != 0 || pwrite(f, line, (size_t)len, 0) != len) {
        int e = errno;
        close(f);
        return nllm_err_set(err, code_of(e), "writing the state folder's lock %s: %s; %s", path,
                            strerror(e), hint_of(e));
    }
    *fd = f;
    return 0;
}

int nllm_fs_free_bytes(const char *path, uint64_t *out, nllm_err_t *err)
{
    struct statvfs sv;
    if (statvfs(path, &sv) != 0) {
        int e = errno;
        return nllm_err_set(err, e == ENOENT ? NLLM_ENOENT : code_of(e), "cannot query free space of %s: %s", path,
                            strerror(e));
    }
    uint64_t fr = sv.f_frsize ? sv.f_frsize : sv.f_bsize;
    uint64_t v = (uint64_t)sv.f_bavail;
    *out = fr != 0 && v > UINT64_MAX / fr ? UINT64_MAX : v * fr;
    return 0;
}
