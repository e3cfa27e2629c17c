/* data.h -- training text to token windows: tokenizers, vocabulary, split, cache.
 *
 * Owns the word and byte tokenizers of docs/model.md ("Tokenizer and windows"),
 * the train/validation paragraph split, the per-epoch shuffle order and the
 * binary token cache. Invariants: every id in a window is in [0, vocab_size);
 * the same files and options give bit-identical windows on every machine.
 * Callers: the trainer (nllm_data_load at job start, nllm_data_shuffle per
 * epoch), generation (encode/decode) and checkpoints (vocabulary JSON).
 */
#ifndef NLLM_DATA_H
#define NLLM_DATA_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "nllm_err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NLLM_TOK_WORD = 0, NLLM_TOK_BYTE = 1 } nllm_tok_kind_t;

/* Special ids. Word tokenizer: <pad> <unk> <bos> <eos> = 0 1 2 3, words from 4.
 * Byte tokenizer: <pad> <bos> <eos> = 0 1 2, byte b is 3 + b (no <unk>). */
#define NLLM_TOK_PAD 0
#define NLLM_WORD_UNK 1
#define NLLM_WORD_BOS 2
#define NLLM_WORD_EOS 3
#define NLLM_WORD_FIRST 4
#define NLLM_BYTE_BOS 1
#define NLLM_BYTE_EOS 2
#define NLLM_BYTE_FIRST 3
#define NLLM_BYTE_VOCAB 259

#define NLLM_VOCAB_MIN 5
#define NLLM_VOCAB_MAX (1 << 24)
#define NLLM_SEQ_MIN 2
#define NLLM_SEQ_MAX 65536

/* A vocabulary. Word kind: words[id] names every id 0..vocab_size-1 (ids 0..3
 * the specials, 4..4+n_words-1 the words, most frequent first, the rest
 * "<unused-ID>" when the training text had fewer distinct words); lookup goes
 * through an open-addressing table over the n_words real words only, so a
 * text word spelled like a special is an ordinary word. Byte kind: words is
 * NULL, n_words 0, vocab_size 259. Zero-initialised is a valid empty value. */
typedef struct {
    nllm_tok_kind_t kind;
    int32_t vocab_size;
    int32_t n_words;   /* real words, ids 4 .. 4 + n_words - 1            */
    char **words;      /* [vocab_size] NUL-terminated, into strs; or NULL  */
    uint32_t *lens;    /* [vocab_size] strlen(words[id])                   */
    char *strs;        /* one block holding every name                     */
    int32_t *slots;    /* [nslots] word id or -1; nslots a power of two    */
    uint32_t nslots;
} nllm_vocab_t;

/* n windows of seq_len ids each, row-major: ids[(w * seq_len) + t]. */
typedef struct {
    int32_t seq_len;
    int64_t n;
    int32_t *ids; /* (n, seq_len); NULL when n == 0 */
} nllm_windows_t;

typedef struct {
    const char *train_path; /* required                                        */
    const char *val_path;   /* NULL: hold out val_fraction of the paragraphs    */
    nllm_tok_kind_t kind;
    int32_t vocab_size;     /* word: 5 .. 1<<24; byte: 259 (0 means 259)       */
    int32_t seq_len;        /* S, 2 .. 65536                                    */
    int32_t batch;          /* training windows must be >= batch (>= 1)         */
    uint64_t seed;          /* drives the split when val_path is NULL          */
    double val_fraction;    /* in [0, 1); 0 means the default 0.1               */
    const char *cache_path; /* NULL: no cache; else the binary token cache file */
    /* Use this vocabulary instead of building one from the training text
     * (resume and fine-tuning keep the source checkpoint's tokenizer). Its
     * kind and vocab_size must match kind and vocab_size above. */
    const nllm_vocab_t *vocab;
} nllm_data_opts_t;

typedef struct {
    nllm_vocab_t vocab;
    nllm_windows_t train, val;
    int from_cache;           /* 1: windows came from a valid cache file       */
    int64_t train_paragraphs; /* lines of >= 5 words that went to training     */
    int64_t val_paragraphs;
    int64_t train_tokens;     /* words (bytes) in training paragraphs, no bos/eos */
    int64_t train_tokens_unk; /* of those, mapped to <unk> (word kind)          */
    /* Set (code != 0) when cache_path was given but the cache could not be
     * written; the load itself still succeeded. Callers should log it. */
    nllm_err_t cache_err;
} nllm_dataset_t;

/* Defaults of docs/model.md: word kind, V 1000, S 64, batch 512, seed 42,
 * val_fraction 0.1, no val file, no cache. */
void nllm_data_opts_init(nllm_data_opts_t *o);

/* Read, tokenize and window the training (and validation) text, or take the
 * result from o->cache_path when that cache is intact and was made from the
 * same bytes and options. On failure out is left zeroed (nothing to free) and
 * err names the file or option and what to do. */
int nllm_data_load(const nllm_data_opts_t *o, nllm_dataset_t *out, nllm_err_t *err);
void nllm_data_free(nllm_dataset_t *d);

/* perm[0..n-1] = the order of training windows in epoch `epoch`: Fisher-Yates
 * from the identity, j = nllm_rng_below(seed, NLLM_STREAM_SHUFFLE, epoch, i, i+1)
 * for i = n-1 down to 1. */
void nllm_data_shuffle(uint64_t seed, uint64_t epoch, int64_t n, int64_t *perm /* (n) */);

/* Encode a generation prompt (no <bos>/<eos> added): word kind lower-cases
 * and splits like the training text (text must be UTF-8), unknown words give
 * <unk>; byte kind maps every byte. *ids is malloc'd (free() it), *n its length. */
int nllm_vocab_encode(const nllm_vocab_t *v, const char *text, size_t len, int32_t **ids,
                      int64_t *n, nllm_err_t *err);
/* Decode ids to malloc'd NUL-terminated text: words joined by single spaces,
 * bytes concatenated; specials and unused ids are skipped. An id outside
 * [0, vocab_size) is NLLM_EINVAL. */
int nllm_vocab_decode(const nllm_vocab_t *v, const int32_t *ids, int64_t n, char **text,
                      nllm_err_t *err);
/* Id of a word (already lower-cased, exact bytes) or -1. Word kind only. */
int32_t nllm_vocab_lookup(const nllm_vocab_t *v, const char *word, size_t len);

/* {"kind": "word", "vocab_size": V, "words": [ids 4.. in order]} or
 * {"kind": "byte", "vocab_size": 259}. *out is a new reference. */
int nllm_vocab_to_json(const nllm_vocab_t *v, json_t **out, nllm_err_t *err);
/* Rebuild a vocabulary from nllm_vocab_to_json's output; checks every field. */
int nllm_vocab_from_json(const json_t *j, nllm_vocab_t *out, nllm_err_t *err);
void nllm_vocab_free(nllm_vocab_t *v);

/* Python's str.lower() of one whitespace-free UTF-8 word (valid UTF-8 assumed;
 * Final_Sigma rule included). dst must hold 3 * len / 2 + 4 bytes; returns
 * the length written (no NUL). Exposed for tests and tools. */
size_t nllm_data_lower_word(const char *src, size_t len, char *dst);

#ifdef __cplusplus
}
#endif

#endif /* NLLM_DATA_H */
