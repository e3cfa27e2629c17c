/* test_fsutil.c -- durable atomic writes under injected faults, and helpers.
 *
 * For each of write/fsync/rename/dirsync failing with ENOSPC and EIO, checks
 * that the final name keeps its previous content (or stays absent), that no
 * temp file is left and that the code is right. Also the NLLM_FS_FAULT
 * environment variable, short writes, temp cleanup, mkdir_p, read_file.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../daemon/store/fsutil.h"

#include "tmproot.h" /* CHECK, failures, root, pjoin */

static void put(const char *path, const char *s)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(s, f);
    fclose(f);
}

/* Content of path in a static buffer, or NULL if absent. */
static const char *get(const char *path)
{
    static char buf[65536];
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

static int count_temps(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    if (!d)
        return -1;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".tmp."))
            n++;
    closedir(d);
    return n;
}

typedef struct {
    const char *text;
    int pieces; /* number of nllm_fs_write_all calls */
    int calls;
    int ret;    /* code to return instead of writing, 0 = write */
    int set_msg;
} wctx_t;

static int write_cb(int fd, void *ud, nllm_err_t *err)
{
    wctx_t *c = ud;
    c->calls++;
    if (c->ret) {
        if (c->set_msg)
            return nllm_err_set(err, c->ret, "callback says no");
        return c->ret;
    }
    size_t n = strlen(c->text), per = c->pieces > 1 ? n / (size_t)c->pieces : n;
    size_t off = 0;
    for (int i = 0; i < c->pieces; i++) {
        size_t len = i == c->pieces - 1 ? n - off : per;
        int rc = nllm_fs_write_all(fd, c->text + off, len, "test file", err);
        if (rc)
            return rc;
        off += len;
    }
    return 0;
}

static void test_env_fault(void)
{
    /* main() set NLLM_FS_FAULT=rename:1:EDQUOT before any fs call */
    nllm_err_t err;
    nllm_err_clear(&err);
    const char *p = pjoin("envfile");
    put(p, "old");
    wctx_t c = {"new", 1, 0, 0, 0};
    int rc = nllm_fs_write_atomic(p, write_cb, &c, &err);
    CHECK(rc == NLLM_ENOSPC, "env fault: rc=%d (%s) msg=%s", rc, nllm_err_name(rc), err.msg);
    CHECK(get(p) && strcmp(get(p), "old") == 0, "env fault: final content changed");
    CHECK(count_temps(root) == 0, "env fault: temp left");
    CHECK(strstr(err.msg, "envfile") != NULL, "env fault: message lacks file: %s", err.msg);
    /* the env fault fired once; the next write succeeds */
    rc = nllm_fs_write_atomic(p, write_cb, &c, &err);
    CHECK(rc == 0, "after env fault: rc=%d %s", rc, err.msg);
    CHECK(get(p) && strcmp(get(p), "new") == 0, "after env fault: content");
}

static void test_success(void)
{
    nllm_err_t err;
    nllm_err_clear(&err);
    const char *p = pjoin("a.bin");
    long r0 = nllm_fs_op_count(NLLM_FS_OP_RENAME), d0 = nllm_fs_op_count(NLLM_FS_OP_DIRSYNC),
         f0 = nllm_fs_op_count(NLLM_FS_OP_FSYNC), w0 = nllm_fs_op_count(NLLM_FS_OP_WRITE);
    wctx_t c = {"hello durable world", 3, 0, 0, 0};
    int rc = nllm_fs_write_atomic(p, write_cb, &c, &err);
    CHECK(rc == 0, "first write rc=%d %s", rc, err.msg);
    CHECK(get(p) && strcmp(get(p), c.text) == 0, "first write content '%s'", get(p) ? get(p) : "(absent)");
    CHECK(count_temps(root) == 0, "temp file left after success");
    CHECK(nllm_fs_op_count(NLLM_FS_OP_RENAME) == r0 + 1, "rename count");
    CHECK(nllm_fs_op_count(NLLM_FS_OP_DIRSYNC) == d0 + 1, "dirsync count");
    CHECK(nllm_fs_op_count(NLLM_FS_OP_FSYNC) == f0 + 1, "fsync count");
    CHECK(nllm_fs_op_count(NLLM_FS_OP_WRITE) == w0 + 3, "write count %ld", nllm_fs_op_count(NLLM_FS_OP_WRITE) - w0);
    /* replace */
    wctx_t c2 = {"second", 1, 0, 0, 0};
    rc = nllm_fs_write_atomic(p, write_cb, &c2, &err);
    CHECK(rc == 0, "replace rc=%d %s", rc, err.msg);
    CHECK(get(p) && strcmp(get(p), "second") == 0, "replace content");
    CHECK(count_temps(root) == 0, "temp/backup left after replace");
    /* relative path in the current folder */
    char cwd[512];
    CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
    CHECK(chdir(root) == 0, "chdir");
    rc = nllm_fs_write_atomic("rel.bin", write_cb, &c2, &err);
    CHECK(rc == 0, "relative rc=%d %s", rc, err.msg);
    CHECK(chdir(cwd) == 0, "chdir back");
    CHECK(get(pjoin("rel.bin")) && strcmp(get(pjoin("rel.bin")), "second") == 0, "relative content");
}

static void test_faults(void)
{
    const int ops[] = {NLLM_FS_OP_WRITE, NLLM_FS_OP_FSYNC, NLLM_FS_OP_RENAME, NLLM_FS_OP_DIRSYNC};
    const char *opn[] = {"write", "fsync", "rename", "dirsync"};
    const int errs[] = {ENOSPC, EIO};
    const int codes[] = {NLLM_ENOSPC, NLLM_EIO};
    for (int o = 0; o < 4; o++)
        for (int e = 0; e < 2; e++)
            for (int existed = 0; existed < 2; existed++) {
                nllm_err_t err;
                nllm_err_clear(&err);
                const char *p = pjoin("f.bin");
                unlink(p);
                if (existed)
                    put(p, "previous content");
                long before = nllm_fs_op_count(ops[o]);
                nllm_fs_fault_set(ops[o], 1, errs[e]);
                wctx_t c = {"replacement content", 2, 0, 0, 0};
                int rc = nllm_fs_write_atomic(p, write_cb, &c, &err);
                CHECK(rc == codes[e], "%s/%s existed=%d: rc=%d (%s) msg=%s", opn[o], strerror(errs[e]), existed, rc,
                      nllm_err_name(rc), err.msg);
                CHECK(err.code == rc, "%s: err.code %d != rc %d", opn[o], err.code, rc);
                const char *now = get(p);
                if (existed)
                    CHECK(now && strcmp(now, "previous content") == 0, "%s/%s: final changed to '%s'", opn[o],
                          strerror(errs[e]), now ? now : "(absent)");
                else
                    CHECK(now == NULL, "%s/%s: final created with '%s'", opn[o], strerror(errs[e]), now);
                CHECK(count_temps(root) == 0, "%s/%s existed=%d: temp file left", opn[o], strerror(errs[e]), existed);
                CHECK(strstr(err.msg, "f.bin") != NULL, "%s: message lacks the file name: %s", opn[o], err.msg);
                CHECK(nllm_fs_op_count(ops[o]) == before + 1, "%s: op count %ld", opn[o],
                      nllm_fs_op_count(ops[o]) - before);
                /* one-shot: the same write succeeds now */
                rc = nllm_fs_write_atomic(p, write_cb, &c, &err);
                CHECK(rc == 0, "%s: retry after one-shot fault rc=%d %s", opn[o], rc, err.msg);
                CHECK(get(p) && strcmp(get(p), "replacement content") == 0, "%s: retry content", opn[o]);
            }

    /* the 2nd write fails: the first piece was written, still nothing visible */
    nllm_err_t err;
    nllm_err_clear(&err);
    const char *p = pjoin("g.bin");
    put(p, "old");
    nllm_fs_fault_set(NLLM_FS_OP_WRITE, 2, ENOSPC);
    wctx_t c = {"abcdefghij", 3, 0, 0, 0};
    int rc = nllm_fs_write_atomic(p, write_cb, &c, &err);
    CHECK(rc == NLLM_ENOSPC, "2nd write: rc=%d", rc);
    CHECK(get(p) && strcmp(get(p), "old") == 0, "2nd write: content");
    CHECK(count_temps(root) == 0, "2nd write: temp left");

    /* sticky fault via a spec: fails until cleared */
    CHECK(nllm_fs_fault_parse("write:1+:EDQUOT", &err) == 0, "parse sticky: %s", err.msg);
    for (int i = 0; i < 3; i++) {
        rc = nllm_fs_write_atomic(p, write_cb, &c, &err);
        CHECK(rc == NLLM_ENOSPC, "sticky try %d: rc=%d", i, rc);
    }
    nllm_fs_fault_clear_all();
    rc = nllm_fs_write_atomic(p, write_cb, &c, &err);
    CHECK(rc == 0, "after clear: rc=%d %s", rc, err.msg);

    /* injected EINTR is retried by write_all */
    nllm_fs_fault_set(NLLM_FS_OP_WRITE, 1, EINTR);
    wctx_t ci = {"interrupted but whole", 1, 0, 0, 0};
    rc = nllm_fs_write_atomic(p, write_cb, &ci, &err);
    CHECK(rc == 0, "EINTR: rc=%d %s", rc, err.msg);
    CHECK(get(p) && strcmp(get(p), ci.text) == 0, "EINTR content");

    /* a fsync fault of EINTR is a failure, never retried into success */
    put(p, "old");
    nllm_fs_fault_set(NLLM_FS_OP_FSYNC, 1, EINTR);
    rc = nllm_fs_write_atomic(p, write_cb, &ci, &err);
    CHECK(rc == NLLM_EIO, "fsync EINTR: rc=%d", rc);
    CHECK(get(p) && strcmp(get(p), "old") == 0, "fsync EINTR: content");
    nllm_fs_fault_clear_all();

    /* bad specs are refused and set nothing */
    const char *bad[] = {"bogus", "write:0:EIO", "write:x:EIO", "write:1:EWHAT", "disk:1:EIO", "write:1", "write:1:EIO,,",
                         "write:2:EIO,fsync:1:"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nllm_err_clear(&err);
        CHECK(nllm_fs_fault_parse(bad[i], &err) == NLLM_EINVAL, "spec '%s' accepted", bad[i]);
        CHECK(strstr(err.msg, "fault spec") != NULL, "spec '%s' message: %s", bad[i], err.msg);
    }
    rc = nllm_fs_write_atomic(p, write_cb, &ci, &err);
    CHECK(rc == 0, "bad spec armed something: rc=%d %s", rc, err.msg);
    CHECK(nllm_fs_fault_parse("write:2:28,rename:1:EIO", &err) == 0, "numeric errno spec: %s", err.msg);
    rc = nllm_fs_write_atomic(p, write_cb, &ci, &err);
    CHECK(rc == NLLM_EIO, "multi spec: rename first, rc=%d", rc);
    nllm_fs_fault_clear_all();
}

static void test_callback_errors(void)
{
    nllm_err_t err;
    nllm_err_clear(&err);
    const char *p = pjoin("cb.bin");
    put(p, "keep");
    wctx_t c = {"x", 1, 0, NLLM_EMISMATCH, 1};
    int rc = nllm_fs_write_atomic(p, write_cb, &c, &err);
    CHECK(rc == NLLM_EMISMATCH, "cb code: %d", rc);
    CHECK(strstr(err.msg, "callback says no") != NULL, "cb message replaced: %s", err.msg);
    CHECK(get(p) && strcmp(get(p), "keep") == 0, "cb failure changed the file");
    CHECK(count_temps(root) == 0, "cb failure left a temp");
    nllm_err_clear(&err);
    wctx_t c2 = {"x", 1, 0, NLLM_EIO, 0};
    rc = nllm_fs_write_atomic(p, write_cb, &c2, &err);
    CHECK(rc == NLLM_EIO && err.code == NLLM_EIO && strstr(err.msg, "cb.bin"), "cb without message: rc=%d msg=%s", rc,
          err.msg);
    wctx_t c3 = {"x", 1, 0, 0, 0};
    rc = nllm_fs_write_atomic(pjoin("no/such/dir/file"), write_cb, &c3, &err);
    CHECK(rc == NLLM_ENOENT, "missing folder: rc=%d", rc);
    CHECK(c3.calls == 0, "callback called although the temp file could not be created");
    rc = nllm_fs_write_atomic(pjoin("dir/"), write_cb, &c3, &err);
    CHECK(rc == NLLM_EINVAL, "trailing slash: rc=%d", rc);
}

static void test_short_writes(void)
{
    nllm_err_t err;
    char big[5000];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = (char)('a' + i % 26);
    big[sizeof big - 1] = 0;
    long w0 = nllm_fs_op_count(NLLM_FS_OP_WRITE);
    nllm_fs_fault_short_writes(7);
    wctx_t c = {big, 1, 0, 0, 0};
    int rc = nllm_fs_write_atomic(pjoin("short.bin"), write_cb, &c, &err);
    nllm_fs_fault_short_writes(0);
    CHECK(rc == 0, "short writes rc=%d %s", rc, err.msg);
    CHECK(get(pjoin("short.bin")) && strcmp(get(pjoin("short.bin")), big) == 0, "short writes content");
    long calls = nllm_fs_op_count(NLLM_FS_OP_WRITE) - w0;
    CHECK(calls == (long)((sizeof big - 1 + 6) / 7), "short writes: %ld write calls", calls);
}

static void *thread_main(void *arg)
{
    int id = (int)(long)arg;
    char name[600], text[64];
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "%s/thr%d.bin", root, id);
        snprintf(text, sizeof text, "thread %d iteration %d", id, i);
        wctx_t c = {text, 2, 0, 0, 0};
        nllm_err_t err;
        if (nllm_fs_write_atomic(name, write_cb, &c, &err) != 0)
            return (void *)1;
    }
    return NULL;
}

static void test_threads(void)
{
    long r0 = nllm_fs_op_count(NLLM_FS_OP_RENAME);
    pthread_t t[4];
    for (long i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, thread_main, (void *)i);
    for (int i = 0; i < 4; i++) {
        void *res;
        pthread_join(t[i], &res);
        CHECK(res == NULL, "thread %d failed", i);
        char name[64];
        snprintf(name, sizeof name, "thr%d.bin", i);
        char want[64];
        snprintf(want, sizeof want, "thread %d iteration 19", i);
        CHECK(get(pjoin(name)) && strcmp(get(pjoin(name)), want) == 0, "thread %d content", i);
    }
    CHECK(nllm_fs_op_count(NLLM_FS_OP_RENAME) == r0 + 80, "rename count across threads %ld",
          nllm_fs_op_count(NLLM_FS_OP_RENAME) - r0);
    CHECK(count_temps(root) == 0, "threads left temps");
}

static void test_remove_temps(void)
{
    nllm_err_t err;
    char *d = pjoin("temps");
    CHECK(mkdir(d, 0755) == 0, "mkdir temps");
    char b[600];
    const char *files[] = {".a.bin.tmp.123.0", ".b.tmp.x", "keep.bin", ".hidden", "c.tmp.1"};
    for (int i = 0; i < 5; i++) {
        snprintf(b, sizeof b, "%s/%s", d, files[i]);
        put(b, "x");
    }
    snprintf(b, sizeof b, "%s/.dir.tmp.1", d);
    CHECK(mkdir(b, 0755) == 0, "mkdir .dir.tmp.1");
    int removed = -1;
    int rc = nllm_fs_remove_temp_files(d, &removed, &err);
    CHECK(rc == 0, "remove temps rc=%d %s", rc, err.msg);
    CHECK(removed == 2, "removed %d, expected 2", removed);
    const char *stay[] = {"keep.bin", ".hidden", "c.tmp.1", ".dir.tmp.1"};
    for (int i = 0; i < 4; i++) {
        snprintf(b, sizeof b, "%s/%s", d, stay[i]);
        CHECK(access(b, F_OK) == 0, "%s was removed", stay[i]);
    }
    snprintf(b, sizeof b, "%s/.a.bin.tmp.123.0", d);
    CHECK(access(b, F_OK) != 0, ".a.bin.tmp.123.0 still there");
    rc = nllm_fs_remove_temp_files(pjoin("nope"), &removed, &err);
    CHECK(rc == NLLM_ENOENT && strstr(err.msg, "nope"), "missing folder: rc=%d %s", rc, err.msg);
}

static void test_mkdir_p(void)
{
    nllm_err_t err;
    char b[600];
    snprintf(b, sizeof b, "%s/m1//m2/m3/", root);
    int rc = nllm_fs_mkdir_p(b, 0755, &err);
    CHECK(rc == 0, "mkdir_p rc=%d %s", rc, err.msg);
    struct stat st;
    CHECK(stat(pjoin("m1/m2/m3"), &st) == 0 && S_ISDIR(st.st_mode), "m1/m2/m3 not a folder");
    rc = nllm_fs_mkdir_p(pjoin("m1/m2/m3"), 0755, &err);
    CHECK(rc == 0, "mkdir_p existing rc=%d %s", rc, err.msg);
    put(pjoin("m1/file"), "x");
    rc = nllm_fs_mkdir_p(pjoin("m1/file/sub"), 0755, &err);
    CHECK(rc == NLLM_EEXIST && strstr(err.msg, "m1/file"), "mkdir_p through a file: rc=%d %s", rc, err.msg);
    rc = nllm_fs_mkdir_p(pjoin("m1/file"), 0755, &err);
    CHECK(rc == NLLM_EEXIST, "mkdir_p onto a file: rc=%d %s", rc, err.msg);
    rc = nllm_fs_mkdir_p("", 0755, &err);
    CHECK(rc == NLLM_EINVAL, "mkdir_p empty: rc=%d", rc);
}

static void test_read_file(void)
{
    nllm_err_t err;
    uint8_t *buf = NULL;
    size_t len = 0;
    put(pjoin("r.txt"), "0123456789");
    int rc = nllm_fs_read_file(pjoin("r.txt"), 100, &buf, &len, &err);
    CHECK(rc == 0 && len == 10 && buf && memcmp(buf, "0123456789", 11) == 0, "read_file rc=%d len=%zu", rc, len);
    free(buf);
    rc = nllm_fs_read_file(pjoin("r.txt"), 10, &buf, &len, &err);
    CHECK(rc == 0 && len == 10, "read_file at exact max rc=%d", rc);
    free(buf);
    rc = nllm_fs_read_file(pjoin("r.txt"), 9, &buf, &len, &err);
    CHECK(rc == NLLM_EINVAL && buf == NULL && strstr(err.msg, "r.txt"), "read_file over max rc=%d %s", rc, err.msg);
    rc = nllm_fs_read_file(pjoin("missing.txt"), 9, &buf, &len, &err);
    CHECK(rc == NLLM_ENOENT && strstr(err.msg, "missing.txt"), "read_file missing rc=%d", rc);
    put(pjoin("empty.txt"), "");
    rc = nllm_fs_read_file(pjoin("empty.txt"), 9, &buf, &len, &err);
    CHECK(rc == 0 && len == 0 && buf && buf[0] == 0, "read_file empty rc=%d", rc);
    free(buf);
    rc = nllm_fs_read_file(root, 9, &buf, &len, &err);
    CHECK(rc == NLLM_EINVAL, "read_file of a folder rc=%d", rc);
}

static void test_free_bytes(void)
{
    nllm_err_t err;
    uint64_t n = 0;
    int rc = nllm_fs_free_bytes(root, &n, &err);
    CHECK(rc == 0 && n > 0, "free_bytes rc=%d n=%llu", rc, (unsigned long long)n);
    rc = nllm_fs_free_bytes(pjoin("absent/x"), &n, &err);
    CHECK(rc == NLLM_ENOENT, "free_bytes missing rc=%d", rc);
}

static void rm_rf(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            char b[1024];
            snprintf(b, sizeof b, "%s/%s", path, de->d_name);
            rm_rf(b);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

int main(void)
{
    setenv("NLLM_FS_FAULT", "rename:1:EDQUOT", 1);
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/nllm_fsutil_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root)) {
        printf("SKIP: cannot create a temp folder under %s: %s\n", tmp ? tmp : "/tmp", strerror(errno));
        return 77;
    }
    test_env_fault();
    test_success();
    test_faults();
    test_callback_errors();
    test_short_writes();
    test_threads();
    test_remove_temps();
    test_mkdir_p();
    test_read_file();
    test_free_bytes();
    rm_rf(root);
    if (failures)
        printf("%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
