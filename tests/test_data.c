/* test_data.c -- tests of daemon/engine/data.c: tokenizers, windows, split,
 * shuffle, token cache, errors, encode/decode and vocabulary JSON.
 *
 * Writes small texts to a private temp folder (removed at the end); the
 * real-corpus check reads $NLLM_SHARED_DATA/tinyshakespeare/input.txt and is
 * skipped when that is absent. Exit 0 pass, 1 fail (one line per failed check).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "../daemon/engine/data.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "../daemon/store/fsutil.h"
#include "../kernels/nllm_math.h"
#include "tmproot.h"

/* Path of name in the temp folder; each call gets its own buffer. */
static const char *tpath(const char *name)
{
    static char buf[256][512];
    static int k;
    if (k == 256) {
        printf("FAIL test bug: more than 256 temp paths\n");
        exit(1);
    }
    char *p = buf[k++];
    snprintf(p, 512, "%s/%s", root, name);
    return p;
}

static const char *write_file(const char *name, const void *data, size_t n)
{
    const char *p = tpath(name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        printf("FAIL cannot write %s: %s\n", p, strerror(errno));
        exit(1);
    }
    return p;
}

static const char *write_str(const char *name, const char *s)
{
    return write_file(name, s, strlen(s));
}

static nllm_data_opts_t opts(const char *train, const char *val, int32_t V, int32_t S)
{
    nllm_data_opts_t o;
    nllm_data_opts_init(&o);
    o.train_path = train;
    o.val_path = val;
    o.vocab_size = V;
    o.seq_len = S;
    o.batch = 1;
    return o;
}

static int32_t lookup(const nllm_vocab_t *v, const char *w)
{
    return nllm_vocab_lookup(v, w, strlen(w));
}

/* Window w of ws equals the n ids in want, padded with 0. */
static int window_is(const nllm_windows_t *ws, int64_t w, const int32_t *want, int n)
{
    if (w >= ws->n)
        return 0;
    for (int t = 0; t < ws->seq_len; t++)
        if (ws->ids[w * ws->seq_len + t] != (t < n ? want[t] : 0))
            return 0;
    return 1;
}

/* ---- tokenizer rules --------------------------------------------------- */

static void test_word_rules(void)
{
    /* line 1: 5 words with non-ASCII capitals and assorted whitespace;
     * line 2: 4 words -> dropped; line 3: CRLF, literal <unk>; blank lines. */
    const char *text = "\xC3\x89" "cole \xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3\tB\xC3\x84R\v zebra\f"
                       "\xC2\xA0" "apple\xE3\x80\x80" "APPLE\xE2\x80\xA8" "x\x1c" "y\n"
                       "one two three four\n"
                       "\n"
                       "<unk> Zebra apple the end\r\n"
                       "   \n";
    const char *tr = write_str("rules.txt", text);
    nllm_data_opts_t o = opts(tr, tr, 20, 16);
    nllm_dataset_t d;
    nllm_err_t e;
    int rc = nllm_data_load(&o, &d, &e);
    CHECK(rc == 0, "load: %s", e.msg);
    if (rc)
        return;
    const nllm_vocab_t *v = &d.vocab;
    CHECK(d.train_paragraphs == 2, "paragraphs %lld", (long long)d.train_paragraphs);
    CHECK(d.train_tokens == 13, "tokens %lld", (long long)d.train_tokens);
    /* counts: apple 3, zebra 2, the rest 1 each in first-seen order */
    CHECK(lookup(v, "apple") == 4, "apple id %d", lookup(v, "apple"));
    CHECK(lookup(v, "zebra") == 5, "zebra id %d", lookup(v, "zebra"));
    CHECK(lookup(v, "\xC3\xA9" "cole") == 6, "école id %d", lookup(v, "\xC3\xA9" "cole"));
    /* ΟΔΟΣ -> οδος with final sigma */
    CHECK(lookup(v, "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82") == 7, "οδος id %d",
          lookup(v, "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82"));
    CHECK(lookup(v, "b\xC3\xA4r") == 8, "bär id %d", lookup(v, "b\xC3\xA4r"));
    CHECK(lookup(v, "x") == 9 && lookup(v, "y") == 10, "x %d y %d", lookup(v, "x"),
          lookup(v, "y"));
    CHECK(lookup(v, "<unk>") == 11, "literal <unk> id %d", lookup(v, "<unk>"));
    CHECK(lookup(v, "the") == 12 && lookup(v, "end") == 13, "the %d end %d", lookup(v, "the"),
          lookup(v, "end"));
    CHECK(v->n_words == 10 && v->vocab_size == 20, "n_words %d V %d", v->n_words,
          v->vocab_size);
    CHECK(lookup(v, "four") < 0 && lookup(v, "APPLE") < 0, "dropped line or upper case in vocab");
    CHECK(lookup(v, "<pad>") < 0 && lookup(v, "<unused-14>") < 0, "special names looked up");
    CHECK(strcmp(v->words[1], "<unk>") == 0 && strcmp(v->words[14], "<unused-14>") == 0 &&
              strcmp(v->words[19], "<unused-19>") == 0,
          "names %s %s %s", v->words[1], v->words[14], v->words[19]);
    int32_t w0[] = {2, 6, 7, 8, 5, 4, 4, 9, 10, 3};
    int32_t w1[] = {2, 11, 5, 4, 12, 13, 3};
    CHECK(d.train.n == 2 && window_is(&d.train, 0, w0, 10) && window_is(&d.train, 1, w1, 7),
          "train windows wrong (n=%lld)", (long long)d.train.n);
    CHECK(d.val.n == 2 && window_is(&d.val, 1, w1, 7), "val windows wrong");
    nllm_data_free(&d);

    /* ties: first seen first; V smaller than the words: the rest are <unk> */
    tr = write_str("ties.txt", "b a c a b\nd e d e f\n");
    o = opts(tr, tr, 7, 8); /* room for 3 words: b, a, d (all count 2) */
    rc = nllm_data_load(&o, &d, &e);
    CHECK(rc == 0, "ties load: %s", e.msg);
    if (rc == 0) {
        CHECK(lookup(&d.vocab, "b") == 4 && lookup(&d.vocab, "a") == 5 &&
                  lookup(&d.vocab, "d") == 6 && lookup(&d.vocab, "e") < 0,
              "tie order b %d a %d d %d e %d", lookup(&d.vocab, "b"), lookup(&d.vocab, "a"),
              lookup(&d.vocab, "d"), lookup(&d.vocab, "e"));
        CHECK(d.train_tokens == 10 && d.train_tokens_unk == 4, "unk %lld of %lld",
              (long long)d.train_tokens_unk, (long long)d.train_tokens);
        int32_t t1[] = {2, 6, 1, 6, 1, 1, 3};
        CHECK(window_is(&d.train, 1, t1, 7), "unknown words not <unk>");
        nllm_data_free(&d);
    }
}

static void test_byte_rules(void)
{
    const char *tr = write_str("bytes.txt", "Ab \xC3\xA9 c d e\r\nnot five words\nA b c d e\n");
    nllm_data_opts_t o = opts(tr, tr, 259, 16);
    o.kind = NLLM_TOK_BYTE;
    nllm_dataset_t d;
    nllm_err_t e;
    int rc = nllm_data_load(&o, &d, &e);
    CHECK(rc == 0, "byte load: %s", e.msg);
    if (rc)
        return;
    CHECK(d.vocab.kind == NLLM_TOK_BYTE && d.vocab.vocab_size == 259 && !d.vocab.words,
          "byte vocab");
    int32_t w0[] = {1, 3 + 'A', 3 + 'b', 3 + ' ', 3 + 0xC3, 3 + 0xA9, 3 + ' ', 3 + 'c',
                    3 + ' ', 3 + 'd', 3 + ' ', 3 + 'e', 2};
    int32_t w1[] = {1, 3 + 'A', 3 + ' ', 3 + 'b', 3 + ' ', 3 + 'c', 3 + ' ', 3 + 'd',
                    3 + ' ', 3 + 'e', 2};
    CHECK(d.train.n == 2 && window_is(&d.train, 0, w0, 13) && window_is(&d.train, 1, w1, 11),
          "byte windows wrong (n=%lld)", (long long)d.train.n);
    CHECK(d.train_tokens == 20 && d.train_tokens_unk == 0, "byte tokens %lld",
          (long long)d.train_tokens);
    nllm_data_free(&d);
    o.vocab_size = 0; /* 0 means 259 */
    rc = nllm_data_load(&o, &d, &e);
    CHECK(rc == 0 && d.vocab.vocab_size == 259, "byte V 0: %s", e.msg);
    nllm_data_free(&d);
}

/* Python's "...".lower() for words where the rule is subtle. */
static void test_lower(void)
{
    static const struct { const char *in, *out; } c[] = {
        {"HELLO", "hello"},
        {"\xCE\xA3", "\xCF\x83"},                                  /* Σ -> σ (no letter before) */
        {"\xCE\x91\xCE\xA3", "\xCE\xB1\xCF\x82"},                  /* ΑΣ -> ας */
        {"\xCE\x91\xCE\xA3\xCE\x91", "\xCE\xB1\xCF\x83\xCE\xB1"},  /* ΑΣΑ -> ασα */
        {"\xCE\x91\xCE\xA3.", "\xCE\xB1\xCF\x82."},                /* '.' is case-ignorable */
        {"\xCE\x91\xCE\xA3.B", "\xCE\xB1\xCF\x83.b"},
        {"A'\xCE\xA3", "a'\xCF\x82"},
        {"\xC4\xB0", "i\xCC\x87"},                                 /* İ -> i + U+0307 */
        {"\xE1\xBA\x9E", "\xC3\x9F"},                              /* ẞ -> ß */
        {"\xE2\x84\xAA", "k"},                                     /* Kelvin sign */
        {"\xC8\xBA", "\xE2\xB1\xA5"},                              /* Ⱥ -> ⱥ (grows) */
        {"\xF0\x90\x90\x80", "\xF0\x90\x90\xA8"},                  /* Deseret */
        {"\xC7\x85", "\xC7\x86"},                                  /* titlecase ǅ */
        {"\xD0\x9F\xD0\xA0\xD0\x98", "\xD0\xBF\xD1\x80\xD0\xB8"},  /* ПРИ */
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char out[64];
        size_t n = nllm_data_lower_word(c[i].in, strlen(c[i].in), out);
        CHECK(n == strlen(c[i].out) && memcmp(out, c[i].out, n) == 0, "lower case %zu", i);
    }
}

/* ---- windows ----------------------------------------------------------- */

static void test_windows(void)
{
    /* paragraphs of 7, 8, 9 and 17 tokens (5, 6, 7, 15 distinct words plus
     * bos/eos); 7 is the shortest possible paragraph (5 words), it stands in
     * for the padded case. */
    const char *text = "a b c d e\n"                       /* 7 tokens */
                       "f g h i j k\n"                     /* 8 tokens */
                       "l m n o p q r\n"                   /* 9 tokens */
                       "s t u v w x y z aa bb cc dd ee ff gg\n"; /* 17 tokens */
    const char *tr = write_str("win.txt", text);
    nllm_data_opts_t o = opts(tr, tr, 100, 8);
    nllm_dataset_t d;
    nllm_err_t e;
    int rc = nllm_data_load(&o, &d, &e);
    CHECK(rc == 0, "windows load: %s", e.msg);
    if (rc)
        return;
    /* every word occurs once: ids follow first-seen order, a = 4 ... */
    int32_t p17[17];
    p17[0] = 2;
    for (int k = 0; k < 15; k++)
        p17[1 + k] = 4 + 18 + k;
    p17[16] = 3;
    int32_t p7[] = {2, 4, 5, 6, 7, 8, 3};
    int32_t p8[] = {2, 9, 10, 11, 12, 13, 14, 3};
    int32_t p9[] = {2, 15, 16, 17, 18, 19, 20, 21, 3};
    CHECK(d.train.n == 1 + 1 + 1 + 3, "windows %lld, want 6", (long long)d.train.n);
    CHECK(window_is(&d.train, 0, p7, 7), "7-token paragraph not padded");
    CHECK(window_is(&d.train, 1, p8, 8), "8-token paragraph not one window");
    CHECK(window_is(&d.train, 2, p9, 8), "9-token paragraph: first 8 tokens only");
    CHECK(window_is(&d.train, 3, p17, 8) && window_is(&d.train, 4, p17 + 4, 8) &&
              window_is(&d.train, 5, p17 + 8, 8),
          "17-token paragraph: starts 0, 4, 8");
    nllm_data_free(&d);

    /* odd S: stride S/2 = 1 */
    o = opts(tr, tr, 100, 3);
    rc = nllm_data_load(&o, &d, &e);
    CHECK(rc == 0 && d.train.n == 5 + 6 + 7 + 15, "S=3 windows %lld (%s)",
          (long long)d.train.n, e.msg);
    if (rc == 0)
        CHECK(window_is(&d.train, 1, p7 + 1, 3), "S=3 stride 1");
    nllm_data_free(&d);

    /* S above every paragraph: one padded window each */
    o = opts(tr, tr, 100, 40);
    rc = nllm_data_load(&o, &d, &e);
    CHECK(rc == 0 && d.train.n == 4 && window_is(&d.train, 3, p17, 17), "S=40 padding");
    nllm_data_free(&d);
}

/* ---- validation split -------------------------------------------------- */

static int expect_val(uint64_t seed, uint64_t i, double frac)
{
    long double t = (long double)frac * 18446744073709551616.0L;
    return (long double)nllm_rng_u64(seed, NLLM_STREAM_VALSPLIT, 0, i) < t;
}

static void test_split(void)
{
    const int N = 2000;
    size_t cap = (size_t)N * 64;
    char *text = malloc(cap), *p = text;
    for (int i = 0; i < N; i++)
        p += sprintf(p, "common words and uniq%d here\n", i);
    const char *tr = write_file("split.txt", text, (size_t)(p - text));
    free(text);
    nllm_data_opts_t o = opts(tr, NULL, 5000, 16);
    o.val_fraction = 0.25;
    o.seed = 7;
    nllm_dataset_t d, d2;
    nllm_err_t e;
    int rc = nllm_data_load(&o, &d, &e);
    CHECK(rc == 0, "split load: %s", e.msg);
    if (rc)
        return;
    int64_t nval = 0, mism = 0;
    for (int i = 0; i < N; i++) {
        char w[32];
        snprintf(w, sizeof w, "uniq%d", i);
        int v = expect_val(7, (uint64_t)i, 0.25);
        nval += v;
        mism += (lookup(&d.vocab, w) >= 0) == v; /* val words must not be in vocab */
    }
    CHECK(mism == 0, "%lld paragraphs on the wrong side of the split", (long long)mism);
    CHECK(d.val_paragraphs == nval && d.train_paragraphs == N - nval && d.val.n == nval &&
              d.train.n == N - nval,
          "val %lld/%lld windows %lld", (long long)d.val_paragraphs, (long long)nval,
          (long long)d.val.n);
    CHECK(nval > 500 - 90 && nval < 500 + 90, "val share %lld of 2000 at 0.25", (long long)nval);
    /* val windows hold <unk> for the held-out unique word */
    CHECK(d.val.n > 0 && d.val.ids[4] == NLLM_WORD_UNK, "val unique word not <unk>");
    rc = nllm_data_load(&o, &d2, &e);
    CHECK(rc == 0 && d2.train.n == d.train.n &&
              memcmp(d2.train.ids, d.train.ids, (size_t)d.train.n * 16 * 4) == 0,
          "split not deterministic");
    nllm_data_free(&d2);
    o.seed = 8;
    rc = nllm_data_load(&o, &d2, &e);
    CHECK(rc == 0 && (d2.train.n != d.train.n ||
                      memcmp(d2.train.ids, d.train.ids, (size_t)d.train.n * 16 * 4) != 0),
          "seed does not change the split");
    nllm_data_free(&d2);
    /* val_fraction 0 means the default 0.1 */
    o.val_fraction = 0;
    o.seed = 7;
    rc = nllm_data_load(&o, &d2, &e);
    int64_t n01 = 0;
    for (int i = 0; i < N; i++)
        n01 += expect_val(7, (uint64_t)i, 0.1);
    CHECK(rc == 0 && d2.val_paragraphs == n01, "default fraction: %lld vs %lld (%s)",
          (long long)d2.val_paragraphs, (long long)n01, e.msg);
    nllm_data_free(&d2);
    nllm_data_free(&d);
}

/* ---- shuffle ----------------------------------------------------------- */

static void test_shuffle(void)
{
    enum { N = 1000 };
    static int64_t a[N], b[N], c[N], s[N];
    nllm_data_shuffle(42, 0, N, a);
    nllm_data_shuffle(42, 0, N, b);
    nllm_data_shuffle(42, 1, N, c);
    nllm_data_shuffle(43, 0, N, s);
    static char seen[N];
    int ok = 1, fixed = 0;
    for (int i = 0; i < N; i++) {
        if (a[i] < 0 || a[i] >= N || seen[a[i]])
            ok = 0;
        else
            seen[a[i]] = 1;
        fixed += a[i] == i;
    }
    CHECK(ok, "shuffle is not a permutation");
    CHECK(fixed < 20, "shuffle leaves %d of %d in place", fixed, N);
    CHECK(memcmp(a, b, sizeof a) == 0, "shuffle not deterministic");
    CHECK(memcmp(a, c, sizeof a) != 0, "epochs give the same order");
    CHECK(memcmp(a, s, sizeof a) != 0, "seeds give the same order");
    /* the exact recipe, re-derived */
    int64_t r[N];
    for (int i = 0; i < N; i++)
        r[i] = i;
    for (int i = N - 1; i >= 1; i--) {
        uint64_t j = nllm_rng_u64(42, NLLM_STREAM_SHUFFLE, 1, (uint64_t)i) % (uint64_t)(i + 1);
        int64_t t = r[i];
        r[i] = r[j];
        r[j] = t;
    }
    CHECK(memcmp(r, c, sizeof r) == 0, "shuffle differs from the Fisher-Yates recipe");
    int64_t one = 5;
    nllm_data_shuffle(1, 1, 1, &one);
    CHECK(one == 0, "n=1 perm %lld", (long long)one);
    nllm_data_shuffle(1, 1, 0, NULL);
}

/* ---- token cache ------------------------------------------------------- */

static int same_dataset(const nllm_dataset_t *a, const nllm_dataset_t *b)
{
    if (a->train.n != b->train.n || a->val.n != b->val.n || a->vocab.kind != b->vocab.kind ||
        a->vocab.vocab_size != b->vocab.vocab_size || a->vocab.n_words != b->vocab.n_words ||
        a->train_paragraphs != b->train_paragraphs || a->val_paragraphs != b->val_paragraphs ||
        a->train_tokens != b->train_tokens || a->train_tokens_unk != b->train_tokens_unk)
        return 0;
    size_t S = (size_t)a->train.seq_len;
    if (memcmp(a->train.ids, b->train.ids, (size_t)a->train.n * S * 4) ||
        memcmp(a->val.ids, b->val.ids, (size_t)a->val.n * S * 4))
        return 0;
    for (int32_t i = 0; a->vocab.words && i < a->vocab.vocab_size; i++)
        if (strcmp(a->vocab.words[i], b->vocab.words[i]))
            return 0;
    return 1;
}

static long file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static int count_tmp_files(void)
{
    DIR *d = opendir(root);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += strstr(de->d_name, ".tmp.") != NULL;
    if (d)
        closedir(d);
    return n;
}

static void test_cache(void)
{
    const char *tr = write_str("c_train.txt", "the cat sat on the mat today\n"
                                              "a dog ran in the park all day long\n"
                                              "\xC3\x89t\xC3\xA9 comes after the spring time\n");
    const char *va = write_str("c_val.txt", "the cat ran in the rain\n");
    const char *cp = tpath("tok.cache");
    unlink(cp);
    for (int kind = 0; kind < 2; kind++) {
        nllm_data_opts_t o = opts(tr, va, kind ? 259 : 12, 6);
        o.kind = kind ? NLLM_TOK_BYTE : NLLM_TOK_WORD;
        o.cache_path = cp;
        nllm_dataset_t a, b, c;
        nllm_err_t e;
        int rc = nllm_data_load(&o, &a, &e);
        CHECK(rc == 0 && a.from_cache == 0 && a.cache_err.code == 0, "kind %d first: %s %s", kind,
              e.msg, a.cache_err.msg);
        rc = nllm_data_load(&o, &b, &e);
        CHECK(rc == 0 && b.from_cache == 1, "kind %d second load not from cache: %s", kind,
              e.msg);
        CHECK(rc == 0 && same_dataset(&a, &b), "kind %d cache gives different data", kind);
        if (kind == 0)
            CHECK(lookup(&b.vocab, "the") == lookup(&a.vocab, "the") && lookup(&b.vocab, "the") == 4,
                  "cached vocab lookup");
        nllm_data_free(&b);

        /* corrupt one byte in the middle: silently rebuilt, then valid again */
        long sz = file_size(cp);
        FILE *f = fopen(cp, "r+b");
        CHECK(f && sz > 120, "cache file size %ld", sz);
        if (f) {
            fseek(f, sz / 2, SEEK_SET);
            int ch = fgetc(f);
            fseek(f, sz / 2, SEEK_SET);
            fputc(ch ^ 0x5A, f);
            fclose(f);
        }
        rc = nllm_data_load(&o, &b, &e);
        CHECK(rc == 0 && b.from_cache == 0 && same_dataset(&a, &b), "corrupt cache used: %s",
              e.msg);
        nllm_data_free(&b);
        rc = nllm_data_load(&o, &b, &e);
        CHECK(rc == 0 && b.from_cache == 1, "cache not rewritten after corruption");
        nllm_data_free(&b);

        /* truncated and garbage caches */
        CHECK(truncate(cp, sz - 9) == 0, "truncate");
        rc = nllm_data_load(&o, &b, &e);
        CHECK(rc == 0 && b.from_cache == 0 && same_dataset(&a, &b), "truncated cache used");
        nllm_data_free(&b);
        write_str("tok.cache", "NLLMTOK1 garbage");
        rc = nllm_data_load(&o, &b, &e);
        CHECK(rc == 0 && b.from_cache == 0 && same_dataset(&a, &b), "garbage cache used");
        nllm_data_free(&b);

        /* stale: another option, then changed text */
        o.seq_len = 7;
        rc = nllm_data_load(&o, &c, &e);
        CHECK(rc == 0 && c.from_cache == 0 && c.train.seq_len == 7, "stale (seq_len) cache used");
        nllm_data_free(&c);
        rc = nllm_data_load(&o, &c, &e);
        CHECK(rc == 0 && c.from_cache == 1, "seq_len 7 not cached");
        nllm_data_free(&c);
        nllm_data_free(&a);
    }
    /* the split options are in the key when there is no val file */
    {
        char *text = malloc(64 * 100), *p = text;
        for (int i = 0; i < 100; i++)
            p += sprintf(p, "line %d has five words\n", i);
        const char *sp = write_file("c_split.txt", text, (size_t)(p - text));
        free(text);
        nllm_data_opts_t o = opts(sp, NULL, 50, 8);
        o.cache_path = cp;
        nllm_dataset_t a, b;
        nllm_err_t e;
        int rc = nllm_data_load(&o, &a, &e);
        CHECK(rc == 0 && a.from_cache == 0, "split cache first: %s", e.msg);
        nllm_data_free(&a);
        o.seed = 99;
        rc = nllm_data_load(&o, &b, &e);
        CHECK(rc == 0 && b.from_cache == 0, "seed change hit a stale cache");
        nllm_data_free(&b);
        o.val_fraction = 0.3;
        rc = nllm_data_load(&o, &b, &e);
        CHECK(rc == 0 && b.from_cache == 0, "val_fraction change hit a stale cache");
        nllm_data_free(&b);
        /* changed file bytes */
        write_str("c_split.txt", "an entirely different text of words\nand another line of five\n"
                                 "and a third line of five\nfour five six seven eight\n");
        o.val_fraction = 0.5;
        o.seed = 0; /* a seed that puts 1..3 of the 4 paragraphs in validation */
        for (;; o.seed++) {
            int nv = 0;
            for (uint64_t i = 0; i < 4; i++)
                nv += nllm_rng_u64(o.seed, NLLM_STREAM_VALSPLIT, 0, i) < (1ull << 63);
            if (nv > 0 && nv < 4)
                break;
        }
        rc = nllm_data_load(&o, &b, &e);
        CHECK(rc == 0 && b.from_cache == 0 && b.train_paragraphs + b.val_paragraphs == 4,
              "changed text hit a stale cache (%s)", e.msg);
        nllm_data_free(&b);
    }
    CHECK(count_tmp_files() == 0, "temp files left behind");

    /* an unwritable cache is reported in cache_err, the load succeeds */
    nllm_data_opts_t o = opts(tr, va, 12, 6);
    o.cache_path = tpath("no_such_dir/tok.cache");
    nllm_dataset_t a;
    nllm_err_t e;
    int rc = nllm_data_load(&o, &a, &e);
    CHECK(rc == 0 && a.cache_err.code != 0 && strstr(a.cache_err.msg, "no_such_dir/tok.cache"),
          "unwritable cache: rc %d cache_err '%s'", rc, a.cache_err.msg);
    nllm_data_free(&a);
}

/* A crash while the cache is being written leaves its temp file behind; the
 * start-up cleanup of the job folder (nllm_fs_remove_temp_files, which
 * matches ".*.tmp.*") must remove it, and it must never pass for a cache.
 * The crash: a child whose file size limit stops the write (SIGXFSZ). */
static void test_cache_crash(void)
{
    const char *sub = tpath("crashdir");
    char cp[600];
    snprintf(cp, sizeof cp, "%s/tokens.cache", sub);
    CHECK(mkdir(sub, 0755) == 0, "mkdir %s: %s", sub, strerror(errno));
    char *text = malloc(64 * 400), *p = text;
    for (int i = 0; i < 400; i++)
        p += sprintf(p, "line %d has five words\n", i);
    const char *tr = write_file("k_train.txt", text, (size_t)(p - text));
    free(text);
    nllm_data_opts_t o = opts(tr, NULL, 50, 8);
    o.cache_path = cp;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit fsz = {1024, 1024}, core = {0, 0};
        setrlimit(RLIMIT_CORE, &core);
        setrlimit(RLIMIT_FSIZE, &fsz);
        nllm_dataset_t a;
        nllm_err_t e;
        nllm_data_load(&o, &a, &e); /* killed by SIGXFSZ past byte 1024 of the cache */
        _exit(0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait: %s", strerror(errno));
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGXFSZ, "the cache writer was not stopped "
          "mid-write (status %#x)", status);
    DIR *d = opendir(sub);
    struct dirent *de;
    int left = 0;
    char name[256] = "";
    while (d && (de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            left++;
            snprintf(name, sizeof name, "%s", de->d_name);
        }
    if (d)
        closedir(d);
    CHECK(left == 1 && strcmp(name, "tokens.cache") != 0, "after the crash: %d file(s), last %s",
          left, name);
    int removed = -1;
    nllm_err_t e;
    CHECK(nllm_fs_remove_temp_files(sub, &removed, &e) == 0 && removed == 1,
          "start-up cleanup removed %d file(s), not the cache temp file '%s'", removed, name);
    if (removed != 1 && name[0]) { /* clean up for the checks below */
        char q[900];
        snprintf(q, sizeof q, "%s/%s", sub, name);
        unlink(q);
    }
    nllm_dataset_t a;
    int rc = nllm_data_load(&o, &a, &e);
    CHECK(rc == 0 && a.from_cache == 0 && a.cache_err.code == 0, "after the crash: %s %s", e.msg,
          a.cache_err.msg);
    nllm_data_free(&a);
    rc = nllm_data_load(&o, &a, &e);
    CHECK(rc == 0 && a.from_cache == 1, "cache written after the crash not used: %s", e.msg);
    nllm_data_free(&a);
    removed = -1;
    CHECK(nllm_fs_remove_temp_files(sub, &removed, &e) == 0 && removed == 0 &&
              file_size(cp) > 1024,
          "a finished cache is not a temp file (removed %d)", removed);
    unlink(cp);
    rmdir(sub);
}

/* ---- errors ------------------------------------------------------------ */

static void expect_err(const nllm_data_opts_t *o, int code, const char *name, const char *p1,
                       const char *p2, int line)
{
    nllm_dataset_t d;
    nllm_err_t e;
    memset(&d, 0x5A, sizeof d);
    int rc = nllm_data_load(o, &d, &e);
    if (rc != code || e.code != code || (name && !strstr(e.msg, name)) || !strstr(e.msg, p1) ||
        (p2 && !strstr(e.msg, p2)) || d.train.ids || d.vocab.words) {
        failures++;
        printf("FAIL %s:%d: want %s with '%s' '%s' '%s', got %s: %s\n", __FILE__, line,
               nllm_err_name(code), name ? name : "", p1, p2 ? p2 : "", nllm_err_name(rc), e.msg);
    }
    if (rc == 0)
        nllm_data_free(&d);
}

#define EXPECT_ERR(o, code, name, p1, p2) expect_err(o, code, name, p1, p2, __LINE__)

static void test_errors(void)
{
    const char *good = write_str("good.txt", "one two three four five\nsix seven eight nine ten\n");
    nllm_data_opts_t o = opts(tpath("missing.txt"), NULL, 10, 4);
    EXPECT_ERR(&o, NLLM_ENOENT, "missing.txt", "cannot open", "No such file");
    o = opts(good, tpath("missing_val.txt"), 10, 4);
    EXPECT_ERR(&o, NLLM_ENOENT, "missing_val.txt", "validation file", "cannot open");
    o = opts(root, good, 10, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, root, "is a directory", NULL);
    o = opts(write_str("empty.txt", ""), good, 10, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, "empty.txt", "is empty", NULL);
    o = opts(write_str("bad8.txt", "fine line one two three\nab \xE2\x82 cd\n"), good, 10, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, "bad8.txt", "not valid UTF-8 at byte offset 27", "(line 2)");
    o = opts(write_str("overlong.txt", "\xC0\xAF"), good, 10, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, "overlong.txt", "not valid UTF-8 at byte offset 0", "(line 1)");
    o = opts(write_str("surr.txt", "a\n\n\xED\xA0\x80"), good, 10, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, "surr.txt", "byte offset 3", "(line 3)");
    o = opts(write_file("nul.txt", "a b c d e\nf\0g", 13), good, 10, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, "nul.txt", "NUL byte at byte offset 11", "(line 2)");
    o = opts(write_str("short.txt", "one two three four\n\nfive six\n"), good, 10, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, "short.txt", "no line of at least 5 words", NULL);
    o = opts(good, write_str("short_val.txt", "too short\n"), 10, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, "short_val.txt", "validation file", "no line of at least 5 words");
    o = opts(good, good, 10, 4);
    o.batch = 5; /* 2 paragraphs of 7 tokens, S 4: 2 windows each */
    EXPECT_ERR(&o, NLLM_EINVAL, "good.txt", "gives 4 windows of 4 tokens, fewer than one batch of 5",
               "--batch");
    o = opts(good, good, 4, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, NULL, "vocab_size 4 is below 5", NULL);
    o = opts(good, good, (1 << 24) + 1, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, NULL, "vocab_size", "above");
    o = opts(good, good, 10, 1);
    EXPECT_ERR(&o, NLLM_EINVAL, NULL, "seq_len 1 is outside 2..65536", NULL);
    o = opts(good, good, 10, 65537);
    EXPECT_ERR(&o, NLLM_EINVAL, NULL, "seq_len 65537 is outside", NULL);
    o = opts(good, good, 10, 4);
    o.batch = 0;
    EXPECT_ERR(&o, NLLM_EINVAL, NULL, "batch 0 is below 1", NULL);
    o = opts(good, NULL, 10, 4);
    o.val_fraction = 1.0;
    EXPECT_ERR(&o, NLLM_EINVAL, NULL, "val_fraction 1 is outside", NULL);
    o = opts(NULL, NULL, 10, 4);
    EXPECT_ERR(&o, NLLM_EINVAL, NULL, "train_path is not set", NULL);
    o = opts(good, good, 1000, 4);
    o.kind = NLLM_TOK_BYTE;
    EXPECT_ERR(&o, NLLM_EINVAL, NULL, "vocab_size 1000 does not match the byte tokenizer", NULL);
    /* a split that takes no paragraph: find a seed where both go to training */
    uint64_t seed = 0;
    while (nllm_rng_u64(seed, NLLM_STREAM_VALSPLIT, 0, 0) < (1ull << 63) / 5 ||
           nllm_rng_u64(seed, NLLM_STREAM_VALSPLIT, 0, 1) < (1ull << 63) / 5)
        seed++;
    o = opts(good, NULL, 10, 4);
    o.seed = seed;
    EXPECT_ERR(&o, NLLM_EINVAL, "good.txt", "took none of its 2 paragraphs", "--val");
}

/* ---- encode / decode / JSON -------------------------------------------- */

static void test_codec(void)
{
    const char *tr = write_str("codec.txt", "The cat sat on the mat\nthe dog sat on a log\n");
    nllm_data_opts_t o = opts(tr, tr, 20, 8);
    nllm_dataset_t d;
    nllm_err_t e;
    int rc = nllm_data_load(&o, &d, &e);
    CHECK(rc == 0, "codec load: %s", e.msg);
    if (rc)
        return;
    int32_t *ids;
    int64_t n;
    const char *prompt = "  THE Cat\tsat on\xC2\xA0zebras ";
    rc = nllm_vocab_encode(&d.vocab, prompt, strlen(prompt), &ids, &n, &e);
    CHECK(rc == 0 && n == 5, "encode n %lld: %s", (long long)n, e.msg);
    if (rc == 0) {
        CHECK(ids[0] == lookup(&d.vocab, "the") && ids[1] == lookup(&d.vocab, "cat") &&
                  ids[4] == NLLM_WORD_UNK,
              "encode ids %d %d %d", ids[0], ids[1], ids[4]);
        char *t;
        rc = nllm_vocab_decode(&d.vocab, ids, n, &t, &e);
        CHECK(rc == 0 && strcmp(t, "the cat sat on") == 0, "decode '%s'", rc ? "" : t);
        if (rc == 0)
            free(t);
        free(ids);
    }
    int32_t sp[] = {2, 4, 0, 3, 1, 19, 5};
    char *t;
    rc = nllm_vocab_decode(&d.vocab, sp, 7, &t, &e);
    CHECK(rc == 0 && strcmp(t, "the sat") == 0, "specials not skipped: '%s'", rc ? "" : t);
    if (rc == 0)
        free(t);
    int32_t bad[] = {4, 20};
    rc = nllm_vocab_decode(&d.vocab, bad, 2, &t, &e);
    CHECK(rc == NLLM_EINVAL && strstr(e.msg, "token id 20 at position 1"), "bad id: %s", e.msg);
    rc = nllm_vocab_encode(&d.vocab, "a \xFF", 3, &ids, &n, &e);
    CHECK(rc == NLLM_EINVAL && strstr(e.msg, "byte offset 2"), "bad prompt: %s", e.msg);
    rc = nllm_vocab_encode(&d.vocab, "", 0, &ids, &n, &e);
    CHECK(rc == 0 && n == 0, "empty prompt");
    if (rc == 0)
        free(ids);

    /* JSON round trip */
    json_t *j;
    rc = nllm_vocab_to_json(&d.vocab, &j, &e);
    CHECK(rc == 0, "to_json: %s", e.msg);
    if (rc == 0) {
        char *s = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        json_error_t je;
        json_t *j2 = json_loads(s, 0, &je);
        free(s);
        nllm_vocab_t v2;
        rc = nllm_vocab_from_json(j2, &v2, &e);
        CHECK(rc == 0, "from_json: %s", e.msg);
        if (rc == 0) {
            int same = v2.vocab_size == d.vocab.vocab_size && v2.n_words == d.vocab.n_words;
            for (int32_t i = 0; same && i < v2.vocab_size; i++)
                same = strcmp(v2.words[i], d.vocab.words[i]) == 0 &&
                       (i < 4 || i >= 4 + v2.n_words ||
                        nllm_vocab_lookup(&v2, v2.words[i], v2.lens[i]) == i);
            CHECK(same, "JSON round trip changed the vocabulary");
            nllm_vocab_free(&v2);
        }
        /* damaged JSON */
        json_t *w = json_object_get(j2, "words");
        json_array_append_new(w, json_string("the"));
        rc = nllm_vocab_from_json(j2, &v2, &e);
        CHECK(rc == NLLM_EINVAL && strstr(e.msg, "'the' appears twice"), "dup: %s", e.msg);
        json_array_set_new(w, json_array_size(w) - 1, json_string("Upper"));
        rc = nllm_vocab_from_json(j2, &v2, &e);
        CHECK(rc == NLLM_EINVAL && strstr(e.msg, "not lower-case"), "upper: %s", e.msg);
        json_array_set_new(w, json_array_size(w) - 1, json_string("two words"));
        rc = nllm_vocab_from_json(j2, &v2, &e);
        CHECK(rc == NLLM_EINVAL && strstr(e.msg, "whitespace"), "space: %s", e.msg);
        json_array_remove(w, json_array_size(w) - 1);
        json_object_set_new(j2, "vocab_size", json_integer(5));
        rc = nllm_vocab_from_json(j2, &v2, &e);
        CHECK(rc == NLLM_EINVAL && strstr(e.msg, "more than vocab_size"), "too many: %s", e.msg);
        json_object_set_new(j2, "kind", json_string("bpe"));
        rc = nllm_vocab_from_json(j2, &v2, &e);
        CHECK(rc == NLLM_EINVAL && strstr(e.msg, "'kind'"), "kind: %s", e.msg);
        json_decref(j2);
    }
    nllm_data_free(&d);

    /* byte vocabulary: every byte round-trips */
    nllm_vocab_t bv;
    json_t *bj = json_pack("{s:s, s:i}", "kind", "byte", "vocab_size", 259);
    rc = nllm_vocab_from_json(bj, &bv, &e);
    json_decref(bj);
    CHECK(rc == 0 && bv.kind == NLLM_TOK_BYTE && bv.vocab_size == 259, "byte from_json: %s",
          e.msg);
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    rc = nllm_vocab_encode(&bv, all, 256, &ids, &n, &e);
    CHECK(rc == 0 && n == 256 && ids[0] == 3 && ids[255] == 258, "byte encode");
    if (rc == 0) {
        rc = nllm_vocab_decode(&bv, ids, n, &t, &e);
        CHECK(rc == 0 && memcmp(t, all, 256) == 0 && t[256] == 0, "byte decode");
        if (rc == 0)
            free(t);
        free(ids);
    }
    rc = nllm_vocab_to_json(&bv, &bj, &e);
    CHECK(rc == 0 && strcmp(json_string_value(json_object_get(bj, "kind")), "byte") == 0 &&
              json_integer_value(json_object_get(bj, "vocab_size")) == 259,
          "byte to_json");
    if (rc == 0)
        json_decref(bj);
    nllm_vocab_free(&bv);
}

/* ---- real corpus ------------------------------------------------------- */

static int test_corpus(void)
{
    const char *root = getenv("NLLM_SHARED_DATA");
    char path[1024];
    if (!root || !*root) {
        printf("skip corpus check: NLLM_SHARED_DATA is not set\n");
        return 0;
    }
    snprintf(path, sizeof path, "%s/tinyshakespeare/input.txt", root);
    if (access(path, R_OK) != 0) {
        printf("skip corpus check: %s is absent\n", path);
        return 0;
    }
    nllm_data_opts_t o;
    nllm_data_opts_init(&o); /* V 1000, S 64, batch 512, seed 42, val 0.1 */
    o.train_path = path;
    o.cache_path = tpath("shakespeare.cache");
    nllm_dataset_t d;
    nllm_err_t e;
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = nllm_data_load(&o, &d, &e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(rc == 0, "tinyshakespeare: %s", e.msg);
    if (rc)
        return 1;
    double s1 = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("tinyshakespeare V=1000 S=64: %lld train / %lld val paragraphs, %lld / %lld "
           "windows, %lld train words (%lld <unk>), %.3f s\n",
           (long long)d.train_paragraphs, (long long)d.val_paragraphs, (long long)d.train.n,
           (long long)d.val.n, (long long)d.train_tokens, (long long)d.train_tokens_unk, s1);
    /* reference values from an independent Python implementation of the
     * recipe (str.lower().split(), Counter, Philox split) */
    CHECK(d.train_paragraphs == 20499 && d.val_paragraphs == 2390, "paragraphs %lld %lld",
          (long long)d.train_paragraphs, (long long)d.val_paragraphs);
    CHECK(d.train.n == 20499 && d.val.n == 2390, "windows %lld %lld", (long long)d.train.n,
          (long long)d.val.n);
    CHECK(d.train_tokens == 165072 && d.train_tokens_unk == 45070, "tokens %lld unk %lld",
          (long long)d.train_tokens, (long long)d.train_tokens_unk);
    CHECK(!strcmp(d.vocab.words[4], "the") && !strcmp(d.vocab.words[5], "and") &&
              !strcmp(d.vocab.words[8], "of") && !strcmp(d.vocab.words[999], "wrong,"),
          "vocab order %s %s %s %s", d.vocab.words[4], d.vocab.words[5], d.vocab.words[8],
          d.vocab.words[999]);
    CHECK(s1 < 5.0, "tokenizing took %.2f s", s1);
    nllm_dataset_t c;
    rc = nllm_data_load(&o, &c, &e);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    CHECK(rc == 0 && c.from_cache == 1 && same_dataset(&d, &c), "corpus cache: %s", e.msg);
    printf("tinyshakespeare from cache: %.3f s\n",
           (double)(t2.tv_sec - t1.tv_sec) + 1e-9 * (double)(t2.tv_nsec - t1.tv_nsec));
    if (rc == 0)
        nllm_data_free(&c);
    nllm_data_free(&d);
    return 1;
}

static void remove_tmpdir(void)
{
    DIR *d = opendir(root);
    struct dirent *de;
    char p[512];
    while (d && (de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", root, de->d_name);
            unlink(p);
        }
    if (d)
        closedir(d);
    rmdir(root);
}

int main(void)
{
    snprintf(root, sizeof root, "%s/nllm_test_data.XXXXXX",
             getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(root)) {
        printf("FAIL mkdtemp %s: %s\n", root, strerror(errno));
        return 1;
    }
    test_lower();
    test_word_rules();
    test_byte_rules();
    test_windows();
    test_split();
    test_shuffle();
    test_cache();
    test_cache_crash();
    test_errors();
    test_codec();
    test_corpus();
    remove_tmpdir();
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all data checks passed\n");
    return 0;
}
