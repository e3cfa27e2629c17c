/* powerloss.c -- campaign 2: power loss at every durability point of a
 * checkpoint save, simulated.
 *
 * The program saves checkpoints the way nllmd does (nllm_ckpt_write: temp file,
 * write, fsync, rename, folder fsync; then nllm_catalog_ckpt_add in SQLite,
 * WAL mode, synchronous=FULL; then retention: delete the oldest epoch row,
 * then its file, in jobs.c's order). It defines fsync, fdatasync, open,
 * open64 and openat itself, so both nllm's code and libsqlite3 call them (the
 * executable's symbols come first), and keeps a model of what a power loss
 * would leave on disk:
 *   - a file's durable content is its content at its last fsync/fdatasync
 *     (a file never fsynced is empty);
 *   - a folder's durable entries (name -> file) are those of its last fsync.
 * File identity is the inode number, renewed whenever open(O_CREAT) makes a
 * new file, so a reused inode number is a new file.
 * At every durability event (an fsync of a file or folder under the test
 * folder) it writes two crash images into a scratch folder:
 *   strict: right after the event, durable entries with durable content;
 *   loose:  right before the event, durable entries with the files' current
 *           content (unsynced writes happened to reach the disk).
 * The catalog's -shm file is left out (SQLite rebuilds it from the WAL).
 * After each cycle every image is checked the way nllmd starts up: the
 * catalog opens (WAL recovery) and passes integrity_check; every checkpoint
 * row with status ok that owns its file points at a file of the recorded size
 * whose xxh64 matches ("verified"), or at a complete checkpoint that a newer
 * save put under the same name before its row committed ("replaced, not
 * recorded": nllmd marks such a row bad at start-up); a row pointing at a
 * missing, short or torn file is a violation; every row whose commit had
 * returned before the image was taken must be in it (synchronous=FULL);
 * the newest such row's checkpoint loads.
 *
 * --mutate shows that the model catches the bugs it is for: nodirsync (folder
 * fsyncs of the checkpoint folder are ignored), nofsync (file fsyncs of
 * checkpoint files are ignored), normal (PRAGMA synchronous=NORMAL).
 *
 * Usage: powerloss [--cycles N] [--dir D] [--scratch S] [--every K]
 *                  [--mutate none|nodirsync|nofsync|normal] [--seed S]
 * Prints one JSON line of figures; exit 0 when no violation (or, with
 * --mutate, when the mutation was detected).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "ckpt.h"
#include "fsutil.h"
#include "safetensors.h"

/* ------------------------------------------------------------ the model */

typedef struct obj {
    struct obj *next;
    ino_t ino;
    int alive;        /* the current file with this inode number */
    int refs;         /* durable folder entries pointing here */
    uint8_t *dur;     /* durable content */
    size_t dur_len;
} obj_t;

typedef struct {
    char name[256];
    obj_t *o;
} dent_t;

typedef struct {
    char path[PATH_MAX];
    ino_t ino;
    dent_t *ents;
    int n;
} mdir_t;

static obj_t *objs;
static mdir_t dirs[2]; /* 0: the test folder (catalog), 1: its checkpoints folder */
static int tracking, internal;
static const char *mutate = "none";
static char root[PATH_MAX], scratch[PATH_MAX];
static long n_events, n_images;
static unsigned every = 1;
static uint64_t rng = 88172645463325252ull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "powerloss: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static int raw_open(const char *p, int flags, mode_t mode)
{
    return (int)syscall(SYS_openat, AT_FDCWD, p, flags, mode);
}

static uint8_t *read_fd_all(int fd, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    uint8_t *b = malloc(cap);
    for (;;) {
        if (n == cap)
            b = realloc(b, cap *= 2);
        ssize_t r = pread(fd, b + n, cap - n, (off_t)n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("read: %s", strerror(errno));
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *len = n;
    return b;
}

static uint8_t *read_path_all(const char *p, size_t *len)
{
    int fd = raw_open(p, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    uint8_t *b = read_fd_all(fd, len);
    close(fd);
    return b;
}

static obj_t *obj_find(ino_t ino)
{
    for (obj_t *o = objs; o; o = o->next)
        if (o->alive && o->ino == ino)
            return o;
    return NULL;
}

static obj_t *obj_new(ino_t ino)
{
    obj_t *old = obj_find(ino);
    if (old)
        old->alive = 0; /* the number was reused: that file is gone */
    obj_t *o = calloc(1, sizeof *o);
    o->ino = ino;
    o->alive = 1;
    o->next = objs;
    objs = o;
    return o;
}

static int dir_index(const char *p)
{
    for (int i = 0; i < 2; i++)
        if (strcmp(dirs[i].path, p) == 0)
            return i;
    return -1;
}

/* Snapshot folder i's entries (regular files) as its durable entries. */
static void dir_sync(int i)
{
    mdir_t *d = &dirs[i];
    for (int k = 0; k < d->n; k++)
        d->ents[k].o->refs--;
    free(d->ents);
    d->ents = NULL;
    d->n = 0;
    DIR *dd = opendir(d->path);
    if (!dd)
        die("opendir %s: %s", d->path, strerror(errno));
    struct dirent *de;
    int cap = 0;
    while ((de = readdir(dd))) {
        struct stat st;
        if (fstatat(dirfd(dd), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        obj_t *o = obj_find(st.st_ino);
        if (!o)
            o = obj_new(st.st_ino); /* never fsynced: durable content empty */
        if (d->n == cap)
            d->ents = realloc(d->ents, sizeof(dent_t) * (size_t)(cap = cap ? cap * 2 : 16));
        snprintf(d->ents[d->n].name, sizeof d->ents[d->n].name, "%s", de->d_name);
        d->ents[d->n].o = o;
        o->refs++;
        d->n++;
    }
    closedir(dd);
}

/* Forget files that are neither current nor named by a durable entry. */
static void gc(void)
{
    for (obj_t *o = objs; o; o = o->next)
        if (o->alive) {
            int found = 0;
            for (int i = 0; i < 2 && !found; i++) {
                DIR *dd = opendir(dirs[i].path);
                struct dirent *de;
                while (dd && (de = readdir(dd)))
                    if (de->d_ino == o->ino)
                        found = 1;
                if (dd)
                    closedir(dd);
            }
            if (!found)
                o->alive = 0;
        }
    for (obj_t **pp = &objs; *pp;) {
        obj_t *o = *pp;
        if (!o->alive && o->refs == 0) {
            *pp = o->next;
            free(o->dur);
            free(o);
        } else {
            pp = &o->next;
        }
    }
}

/* Everything on disk now is durable (the start of the test). */
static void model_reset(void)
{
    for (int i = 0; i < 2; i++) {
        DIR *dd = opendir(dirs[i].path);
        struct dirent *de;
        while ((de = readdir(dd))) {
            char p[PATH_MAX + 256];
            struct stat st;
            snprintf(p, sizeof p, "%s/%s", dirs[i].path, de->d_name);
            if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode))
                continue;
            obj_t *o = obj_find(st.st_ino);
            if (!o)
                o = obj_new(st.st_ino);
            free(o->dur);
            o->dur = read_path_all(p, &o->dur_len);
        }
        closedir(dd);
        dir_sync(i);
    }
}

/* ------------------------------------------------------------ crash images */

typedef struct {
    char dir[PATH_MAX];
    int loose;
    char what[300];
    int64_t *committed; /* ids whose commit had returned */
    int ncommitted;
} image_t;

static image_t *images;
static int nimages, capimages;
static int64_t *committed_ids;
static int ncommitted, capcommitted;

static void write_file(const char *p, const uint8_t *b, size_t n)
{
    int fd = raw_open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("create %s: %s", p, strerror(errno));
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, b + off, n - off);
        if (w <= 0)
            die("write %s: %s", p, strerror(errno));
        off += (size_t)w;
    }
    close(fd);
}

/* Current content of the file with object o, if it is still in a folder. */
static uint8_t *current_content(const obj_t *o, size_t *len)
{
    if (!o->alive)
        return NULL;
    for (int i = 0; i < 2; i++) {
        DIR *dd = opendir(dirs[i].path);
        struct dirent *de;
        while (dd && (de = readdir(dd)))
            if (de->d_ino == o->ino) {
                char p[PATH_MAX + 256];
                snprintf(p, sizeof p, "%s/%s", dirs[i].path, de->d_name);
                closedir(dd);
                return read_path_all(p, len);
            }
        if (dd)
            closedir(dd);
    }
    return NULL;
}

static void capture(int loose, const char *what)
{
    n_events += !loose;
    if (every > 1 && rnd() % every != 0)
        return;
    if (nimages == capimages)
        images = realloc(images, sizeof(image_t) * (size_t)(capimages = capimages ? capimages * 2 : 64));
    image_t *im = &images[nimages++];
    memset(im, 0, sizeof *im);
    snprintf(im->dir, sizeof im->dir, "%s/img%07ld", scratch, n_images++);
    im->loose = loose;
    snprintf(im->what, sizeof im->what, "%s", what);
    im->ncommitted = ncommitted;
    im->committed = malloc(sizeof(int64_t) * (size_t)(ncommitted + 1));
    memcpy(im->committed, committed_ids, sizeof(int64_t) * (size_t)ncommitted);
    char p[PATH_MAX + 300];
    mkdir(im->dir, 0755);
    snprintf(p, sizeof p, "%s/ckpt", im->dir);
    mkdir(p, 0755);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < dirs[i].n; k++) {
            const dent_t *e = &dirs[i].ents[k];
            size_t l = strlen(e->name);
            if (l > 4 && strcmp(e->name + l - 4, "-shm") == 0)
                continue;
            snprintf(p, sizeof p, "%s%s/%s", im->dir, i ? "/ckpt" : "", e->name);
            size_t n = 0;
            uint8_t *cur = loose ? current_content(e->o, &n) : NULL;
            if (cur) {
                write_file(p, cur, n);
                free(cur);
            } else {
                write_file(p, e->o->dur, e->o->dur_len);
            }
        }
}

/* ------------------------------------------------------------ interposed calls */

static int model_sync(int fd, const char *call)
{
    if (!tracking || internal)
        return 0; /* nothing here needs real durability: the images are the test */
    internal = 1;
    char lp[64], path[PATH_MAX];
    snprintf(lp, sizeof lp, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(lp, path, sizeof path - 1);
    struct stat st;
    if (n <= 0 || fstat(fd, &st) != 0) {
        internal = 0;
        return 0;
    }
    path[n] = '\0';
    char what[PATH_MAX + 32];
    if (S_ISDIR(st.st_mode)) {
        int i = dir_index(path);
        if (i >= 0) {
            snprintf(what, sizeof what, "%s(folder %s)", call, i ? "ckpt" : "root");
            capture(1, what);
            if (!(i == 1 && strcmp(mutate, "nodirsync") == 0))
                dir_sync(i);
            capture(0, what);
            gc();
        }
    } else if (S_ISREG(st.st_mode)) {
        char *slash = strrchr(path, '/');
        int i = -1;
        if (slash) {
            *slash = '\0';
            i = dir_index(path);
            *slash = '/';
        }
        if (i >= 0) {
            snprintf(what, sizeof what, "%s(%s)", call, slash + 1);
            capture(1, what);
            obj_t *o = obj_find(st.st_ino);
            if (!o)
                o = obj_new(st.st_ino);
            if (!(i == 1 && strcmp(mutate, "nofsync") == 0)) {
                free(o->dur);
                int rfd = raw_open(lp, O_RDONLY | O_CLOEXEC, 0);
                if (rfd < 0)
                    die("reopen %s: %s", path, strerror(errno));
                o->dur = read_fd_all(rfd, &o->dur_len);
                close(rfd);
            }
            capture(0, what);
        }
    }
    internal = 0;
    return 0;
}

int fsync(int fd)
{
    return model_sync(fd, "fsync");
}

int fdatasync(int fd)
{
    return model_sync(fd, "fdatasync");
}

static int track_open(int dfd, const char *p, int flags, mode_t mode)
{
    int existed = 1;
    if (tracking && !internal && (flags & O_CREAT)) {
        struct stat st;
        existed = (flags & O_EXCL) ? 0 : fstatat(dfd, p, &st, 0) == 0;
    }
    int fd = (int)syscall(SYS_openat, dfd, p, flags, mode);
    if (fd >= 0 && !existed) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
            obj_new(st.st_ino);
    }
    return fd;
}

int open(const char *p, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    return track_open(AT_FDCWD, p, flags, mode);
}

int open64(const char *p, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    return track_open(AT_FDCWD, p, flags, mode);
}

int openat(int dfd, const char *p, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    return track_open(dfd, p, flags, mode);
}

/* ------------------------------------------------------------ the saves */

static nllm_ckpt_t *make_ckpt(void)
{
    nllm_job_config_t cfg;
    nllm_job_config_defaults(&cfg);
    cfg.model = (nllm_model_config_t){200, 32, 64, 32, 3, 16, 0.1f};
    snprintf(cfg.data, sizeof cfg.data, "/data/x.txt");
    nllm_ckpt_t *c = calloc(1, sizeof *c);
    snprintf(c->job, sizeof c->job, "pl");
    c->config = cfg;
    nllm_progress_init(&c->progress);
    nllm_err_t err;
    if (nllm_model_layout(&cfg.model, &c->params, &c->nparams, &c->nfloats, &err) < 0)
        die("layout: %s", err.msg);
    c->weights = malloc(sizeof(float) * (size_t)c->nfloats);
    c->exp_avg = malloc(sizeof(float) * (size_t)c->nfloats);
    c->exp_avg_sq = malloc(sizeof(float) * (size_t)c->nfloats);
    for (int64_t i = 0; i < c->nfloats; i++)
        c->weights[i] = c->exp_avg[i] = c->exp_avg_sq[i] = (float)i * 1e-3f;
    return c;
}

static nllm_catalog_t *cat;
static nllm_ckpt_t *ck;
static long n_saves, n_save_fail;

static void add_committed(int64_t id)
{
    if (ncommitted == capcommitted)
        committed_ids = realloc(committed_ids, sizeof(int64_t) * (size_t)(capcommitted = capcommitted ? capcommitted * 2 : 64));
    committed_ids[ncommitted++] = id;
}

static void drop_committed(int64_t id)
{
    for (int i = 0; i < ncommitted; i++)
        if (committed_ids[i] == id) {
            committed_ids[i] = committed_ids[--ncommitted];
            return;
        }
}

/* One checkpoint as nllmd writes it: file durable first, then its row. */
static void save(nllm_ckpt_kind_t kind, int64_t epoch, int64_t step)
{
    nllm_err_t err;
    ck->kind = kind;
    ck->weights[0] = (float)step;
    ck->progress.global_step = step;
    ck->weights_hash = nllm_ckpt_weights_hash(ck->params, ck->nparams, ck->weights);
    char name[256], path[PATH_MAX + 300], nm[64], sum[17], wh[17];
    nllm_ckpt_filename("pl", kind, epoch, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", dirs[1].path, name);
    uint64_t h = 0, size = 0;
    n_saves++;
    if (nllm_ckpt_write(ck, path, &h, &size, &err) < 0) {
        n_save_fail++;
        fprintf(stderr, "powerloss: save %s: %s\n", name, err.msg);
        return;
    }
    if (kind == NLLM_CKPT_EPOCH)
        snprintf(nm, sizeof nm, "epoch_%lld", (long long)epoch);
    else
        snprintf(nm, sizeof nm, "%s", nllm_ckpt_kind_name(kind));
    snprintf(sum, sizeof sum, "%016llx", (unsigned long long)h);
    snprintf(wh, sizeof wh, "%016llx", (unsigned long long)ck->weights_hash);
    nllm_catalog_ckpt_spec_t spec = {nllm_ckpt_kind_name(kind), nm, epoch, step, path,
                                     (int64_t)size, sum, wh, 1.0};
    int64_t id;
    if (nllm_catalog_ckpt_add(cat, "pl", &spec, &id, &err) < 0) {
        n_save_fail++;
        fprintf(stderr, "powerloss: recording %s: %s\n", nm, err.msg);
        return;
    }
    add_committed(id);
}

/* jobs.c's retention with keep = 3: delete the oldest epoch row, then its file. */
static void retention(void)
{
    nllm_catalog_ckpt_t *cks;
    size_t n;
    nllm_err_t err;
    if (nllm_catalog_ckpt_list(cat, "pl", 1, &cks, &n, &err) < 0)
        die("list: %s", err.msg);
    size_t periodic = 0;
    for (size_t i = 0; i < n; i++)
        periodic += strcmp(cks[i].kind, "epoch") == 0;
    for (size_t i = 0; i < n && periodic > 3; i++) {
        if (strcmp(cks[i].kind, "epoch") != 0)
            continue;
        /* from here the row may be gone: its delete may reach the disk any time */
        drop_committed(cks[i].id);
        if (nllm_catalog_ckpt_delete(cat, "pl", cks[i].id, &err) == 0)
            unlink(cks[i].path);
        periodic--;
    }
    nllm_catalog_ckpts_free(cks, n);
}

/* ------------------------------------------------------------ checking images */

static struct {
    long images, strict, loose, rows, verified, replaced, loaded, orphans, temps;
    long v_open, v_integrity, v_missing, v_short, v_lost, v_load;
} S;
static char first_violation[1024];

static void violation(long *counter, const image_t *im, const char *fmt, ...)
{
    (*counter)++;
    if (!first_violation[0]) {
        char m[700];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m, sizeof m, fmt, ap);
        va_end(ap);
        snprintf(first_violation, sizeof first_violation, "%s image after %s: %s",
                 im->loose ? "loose" : "strict", im->what, m);
    }
}

static void check_image(const image_t *im)
{
    S.images++;
    if (im->loose)
        S.loose++;
    else
        S.strict++;
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/catalog.db", im->dir);
    nllm_catalog_t *c;
    nllm_err_t err;
    if (nllm_catalog_open(p, &c, &err) < 0) {
        violation(&S.v_open, im, "catalog does not open: %s", err.msg);
        return;
    }
    if (nllm_catalog_integrity_check(c, &err) < 0)
        violation(&S.v_integrity, im, "integrity: %s", err.msg);
    nllm_catalog_ckpt_t *cks;
    size_t n = 0;
    if (nllm_catalog_ckpt_list(c, "pl", 0, &cks, &n, &err) < 0) {
        violation(&S.v_open, im, "listing rows: %s", err.msg);
        nllm_catalog_close(c);
        return;
    }
    size_t rootlen = strlen(dirs[1].path);
    int64_t newest_step = -1;
    size_t newest = 0;
    for (size_t i = 0; i < n; i++) {
        int owns = 1;
        for (size_t k = 0; k < n; k++)
            if (k != i && !cks[i].current && cks[k].current && strcmp(cks[k].path, cks[i].path) == 0)
                owns = 0;
        if (strcmp(cks[i].status, "ok") != 0 || !owns)
            continue;
        S.rows++;
        if (strncmp(cks[i].path, dirs[1].path, rootlen) != 0)
            die("row path %s outside %s", cks[i].path, dirs[1].path);
        char ip[PATH_MAX + 300];
        snprintf(ip, sizeof ip, "%s/ckpt%s", im->dir, cks[i].path + rootlen);
        struct stat st;
        if (stat(ip, &st) != 0) {
            violation(&S.v_missing, im, "row %s (#%lld) points at a missing file", cks[i].name,
                      (long long)cks[i].id);
            continue;
        }
        nllm_st_file_t *f;
        uint64_t h = 0;
        nllm_err_t e2;
        int rc = nllm_st_open(ip, &f, &h, &e2);
        if (rc == 0)
            nllm_st_close(f);
        char sum[17];
        snprintf(sum, sizeof sum, "%016llx", (unsigned long long)h);
        if (rc == 0 && (int64_t)st.st_size == cks[i].size && strcmp(sum, cks[i].checksum) == 0) {
            S.verified++;
            if (cks[i].step > newest_step)
                newest_step = cks[i].step, newest = i;
        } else if (rc == 0) {
            S.replaced++; /* a complete newer save under this name, its row not committed */
        } else {
            violation(&S.v_short, im, "row %s (#%lld): file of %lld bytes (catalog %lld) is torn: %s",
                      cks[i].name, (long long)cks[i].id, (long long)st.st_size,
                      (long long)cks[i].size, e2.msg);
        }
    }
    for (int k = 0; k < im->ncommitted; k++) {
        int found = 0;
        for (size_t i = 0; i < n && !found; i++)
            found = cks[i].id == im->committed[k];
        if (!found)
            violation(&S.v_lost, im, "row #%lld committed before this instant is gone",
                      (long long)im->committed[k]);
    }
    if (newest_step >= 0) {
        char ip[PATH_MAX + 300];
        snprintf(ip, sizeof ip, "%s/ckpt%s", im->dir, cks[newest].path + rootlen);
        nllm_ckpt_t *lc = NULL;
        if (nllm_ckpt_load(ip, strtoull(cks[newest].checksum, NULL, 16), NULL, &lc, &err) == 0 &&
            lc->progress.global_step == cks[newest].step)
            S.loaded++;
        else
            violation(&S.v_load, im, "newest row %s does not load: %s", cks[newest].name, err.msg);
        nllm_ckpt_free(lc);
    }
    /* files no row names (left by a save whose row never committed, or an
     * unlink that was not durable), and temp files nllmd removes at start */
    char cp[PATH_MAX + 64];
    snprintf(cp, sizeof cp, "%s/ckpt", im->dir);
    DIR *dd = opendir(cp);
    struct dirent *de;
    while (dd && (de = readdir(dd))) {
        if (de->d_name[0] == '.' && strstr(de->d_name, ".tmp.")) {
            S.temps++;
            continue;
        }
        if (de->d_name[0] == '.')
            continue;
        int named = 0;
        for (size_t i = 0; i < n && !named; i++) {
            const char *b = strrchr(cks[i].path, '/');
            named = b && strcmp(b + 1, de->d_name) == 0;
        }
        S.orphans += !named;
    }
    if (dd)
        closedir(dd);
    nllm_catalog_ckpts_free(cks, n);
    nllm_catalog_close(c);
}

static void rm_rf(const char *p)
{
    DIR *dd = opendir(p);
    if (!dd) {
        unlink(p);
        return;
    }
    struct dirent *de;
    while ((de = readdir(dd))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char q[PATH_MAX + 300];
        snprintf(q, sizeof q, "%s/%s", p, de->d_name);
        struct stat st;
        if (lstat(q, &st) == 0 && S_ISDIR(st.st_mode))
            rm_rf(q);
        else
            unlink(q);
    }
    closedir(dd);
    rmdir(p);
}

static void check_images(void)
{
    int was = tracking;
    tracking = 0;
    for (int i = 0; i < nimages; i++) {
        check_image(&images[i]);
        rm_rf(images[i].dir);
        free(images[i].committed);
    }
    nimages = 0;
    tracking = was;
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    long cycles = 100;
    const char *dir = NULL, *scr = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cycles") && i + 1 < argc)
            cycles = atol(argv[++i]);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--scratch") && i + 1 < argc)
            scr = argv[++i];
        else if (!strcmp(argv[i], "--every") && i + 1 < argc)
            every = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mutate") && i + 1 < argc)
            mutate = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            rng ^= (uint64_t)atoll(argv[++i]) * 0x9e3779b97f4a7c15ull;
        else
            die("usage: powerloss [--cycles N] [--dir D] [--scratch S] [--every K] "
                "[--mutate none|nodirsync|nofsync|normal] [--seed S]");
    }
    if (every < 1)
        every = 1;
    snprintf(root, sizeof root, "%s/nllm-powerloss.XXXXXX", dir ? dir : "/tmp");
    if (!mkdtemp(root))
        die("mkdtemp %s: %s", root, strerror(errno));
    snprintf(scratch, sizeof scratch, "%s/nllm-powerloss-img.XXXXXX",
             scr ? scr : (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"));
    if (!mkdtemp(scratch))
        die("mkdtemp %s: %s", scratch, strerror(errno));
    char *rp = realpath(root, NULL);
    snprintf(dirs[0].path, sizeof dirs[0].path, "%s", rp);
    snprintf(dirs[1].path, sizeof dirs[1].path, "%s/ckpt", rp);
    free(rp);
    mkdir(dirs[1].path, 0755);
    nllm_err_t err;
    char db[PATH_MAX + 32];
    snprintf(db, sizeof db, "%s/catalog.db", dirs[0].path);
    if (nllm_catalog_open(db, &cat, &err) < 0)
        die("%s", err.msg);
    if (strcmp(mutate, "normal") == 0)
        sqlite3_exec(nllm_catalog_db(cat), "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
    nllm_catalog_job_spec_t js = {"pl", "{}", 1000000, NULL, NULL};
    if (nllm_catalog_job_create(cat, &js, NULL, &err) < 0)
        die("%s", err.msg);
    ck = make_ckpt();
    model_reset();
    tracking = 1;
    int64_t step = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long e = 1; e <= cycles; e++) {
        step += 10;
        if (e % 2 == 1)
            save(NLLM_CKPT_BEST, e, step);
        save(NLLM_CKPT_EPOCH, e, step);
        if (e % 5 == 0)
            save(NLLM_CKPT_PAUSED, e, step + 3);
        retention();
        check_images();
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    tracking = 0;
    nllm_catalog_close(cat);
    long violations = S.v_open + S.v_integrity + S.v_missing + S.v_short + S.v_lost + S.v_load;
    printf("{\"mutate\": \"%s\", \"cycles\": %ld, \"saves\": %ld, \"save_failures\": %ld, "
           "\"events\": %ld, \"images\": %ld, \"strict\": %ld, \"loose\": %ld, \"rows_checked\": %ld, "
           "\"verified\": %ld, \"replaced_unrecorded\": %ld, \"newest_loaded\": %ld, "
           "\"orphan_files\": %ld, \"temp_files\": %ld, \"violations\": %ld, "
           "\"v_catalog_open\": %ld, \"v_integrity\": %ld, \"v_missing\": %ld, \"v_short\": %ld, "
           "\"v_committed_lost\": %ld, \"v_newest_load\": %ld, \"seconds\": %.1f, "
           "\"first_violation\": \"",
           mutate, cycles, n_saves, n_save_fail, n_events, S.images, S.strict, S.loose, S.rows,
           S.verified, S.replaced, S.loaded, S.orphans, S.temps, violations, S.v_open,
           S.v_integrity, S.v_missing, S.v_short, S.v_lost, S.v_load,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    for (const char *q = first_violation; *q; q++)
        if (*q == '"' || *q == '\\')
            printf("\\%c", *q);
        else if ((unsigned char)*q >= 0x20)
            putchar(*q);
    printf("\"}\n");
    rm_rf(root);
    rm_rf(scratch);
    if (strcmp(mutate, "none") != 0)
        return violations > 0 ? 0 : 1;
    return violations == 0 && n_save_fail == 0 ? 0 : 1;
}
