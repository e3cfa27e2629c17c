/* bf16_gemm.c -- bfloat16 products on AMX tiles (see bf16_gemm.h).
 *
 * op(A) is packed, rounded to bf16, into 16-row strips of 16 x 32 blocks
 * (one tile each, 64-byte rows); op(B) into 16-column strips of blocks in
 * the tiles' pair-interleaved layout (row k/2 holds k and k+1 of each of
 * 16 columns). Both are zero-padded to whole blocks, so the edges of the
 * product run the same code as its middle. A task is a 32 x 32 block of C
 * (2 x 2 accumulator tiles, fewer at the bottom and right edges): it adds
 * the blocks' products over k in order, then writes alpha * sum + beta * C
 * (deep products: over the k blocks of one pass, see BF_PASS).
 * The pool's threads take whole tasks, so no element's sum depends on the
 * thread count. Every participant loads the tile configuration when it
 * starts its share and releases the tiles when it ends.
 *
 * Invariant: a C element is computed by one task, its k blocks in
 * ascending order -- exact resume in precision bf16 relies on it.
 */
#include "bf16_gemm.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <errno.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define BF_HAVE_AMX 1
#else
#define BF_HAVE_AMX 0
#endif

#include "cpu_kernels.h"

#define BF_TR 16 /* tile rows */
#define BF_TK 32 /* bf16 values per tile row (64 bytes) */
#define BF_BLOCK (BF_TR * BF_TK) /* bf16 values per packed block */

/* A packed op(B) of the parameters: valid while gen is the buffers' */
typedef struct {
    const float *B;
    int transB, N, K, ldb;
    uint64_t gen;
    uint16_t *buf;
    size_t cap; /* bytes */
} bf_kept_t;

#define BF_KEPT_MAX 64 /* the seed model uses 2 per weight matrix: 30 */

/* Products deeper than BF_PASS_MIN k blocks (the weight gradients: k runs
 * over every position of a chunk) go in passes of BF_PASS blocks, whose
 * parts of op(A) and op(B) stay in L2; C's sums wait in a float buffer
 * between passes (tile stores and loads are exact). Shallower ones take
 * one pass: their op(B) fits L2 whole. */
#define BF_PASS 16
#define BF_PASS_MIN 64

struct nllm_bf16_ws {
    uint16_t *a, *b; /* packed op(A), op(B) */
    float *acc;      /* sums between passes */
    size_t acap, bcap, acccap; /* bytes */
    const float *w; /* the parameters, [w, w + wn) */
    int64_t wn;
    uint64_t gen; /* bumped when they change */
    bf_kept_t kept[BF_KEPT_MAX];
    int nkept;
};

int nllm_bf16_ws_create(nllm_bf16_ws_t **out, nllm_err_t *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return nllm_err_set(err, NLLM_ENOMEM, "cpu backend: out of memory (bf16 buffers)");
    (*out)->gen = 1;
    return 0;
}

void nllm_bf16_ws_params(nllm_bf16_ws_t *ws, const float *w, int64_t n)
{
    for (int i = 0; i < ws->nkept; i++)
        free(ws->kept[i].buf);
    memset(ws->kept, 0, sizeof ws->kept);
    ws->nkept = 0;
    ws->w = w;
    ws->wn = w ? n : 0;
    ws->gen++;
}

void nllm_bf16_ws_params_changed(nllm_bf16_ws_t *ws)
{
    ws->gen++;
}

void nllm_bf16_ws_destroy(nllm_bf16_ws_t *ws)
{
    if (!ws)
        return;
    nllm_bf16_ws_params(ws, NULL, 0);
    free(ws->acc);
    free(ws->a);
    free(ws->b);
    free(ws);
}

/* *buf holds at least need bytes (64-byte aligned; a quarter more than
 * asked when it grows, for the next larger product), its old content
 * dropped; -1 when it cannot grow (*buf kept) */
static int grow(void **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = need + need / 4;
    void *p = NULL;
    if (posix_memalign(&p, 64, n) != 0)
        return -1;
    free(*buf);
    *buf = p;
    *cap = n;
    return 0;
}

/* ---- rounding and the reference -------------------------------------- */

static inline uint16_t bf16_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u); /* NaN stays a (quiet) NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float nllm_bf16_round(float x)
{
    uint32_t u = (uint32_t)bf16_bits(x) << 16;
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

void nllm_gemm_bf16_ref(int transA, int transB, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C,
                        int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                float a = transA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = transB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += (double)nllm_bf16_round(a) * (double)nllm_bf16_round(b);
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = beta == 0.0f ? alpha * (float)s : alpha * (float)s + beta * *c;
        }
}

#if BF_HAVE_AMX

typedef struct {
    int transA, transB, M, N, K, lda, ldb, ldc;
    int nk;     /* k blocks */
    int ms, ns; /* 16-row strips of op(A), 16-column strips of op(B) */
    float alpha, beta;
    const float *A, *B;
    float *C;
    uint16_t *ap, *bp;
    int kb0, kb1; /* the k blocks of this pass */
    float *acc;   /* C's sums between passes: block (s, u) at (s * ns + u) * 256 */
} bf_args_t;

/* ---- the tiles --------------------------------------------------------- */

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw")
#endif

/* ---- packing ------------------------------------------------------------
 * Sixteen floats at a time: the bf16 bits (ties to even, NaN quieted) of
 * each in the low half of a 32-bit lane, as bf16_bits does one by one. Loads
 * are masked at the edges of op(A) and op(B); masked-off lanes read nothing
 * and pack as zeros. */

static inline __m512i cvt16(__m512 x)
{
    __m512i u = _mm512_castps_si512(x);
    __m512i hi = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_add_epi32(
        u, _mm512_add_epi32(_mm512_and_si512(hi, _mm512_set1_epi32(1)), _mm512_set1_epi32(0x7fff)));
    r = _mm512_srli_epi32(r, 16);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
}

static inline __mmask16 lanes(int n) /* the first n (clamped to 0..16) lanes */
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* two rows' 16 values as 16 pairs: row k in the low halves, k + 1 high */
static inline __m512i pair16(const float *r0, const float *r1, __mmask16 m)
{
    __m512i lo = cvt16(_mm512_maskz_loadu_ps(m, r0));
    __m512i hi = r1 ? cvt16(_mm512_maskz_loadu_ps(m, r1)) : _mm512_setzero_si512();
    return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

/* 32 consecutive values (n of them present) as 32 bf16 in order */
static inline __m512i row32(const float *src, int n)
{
    __m256i a = _mm512_cvtepi32_epi16(cvt16(_mm512_maskz_loadu_ps(lanes(n), src)));
    __m256i b = _mm512_cvtepi32_epi16(cvt16(_mm512_maskz_loadu_ps(lanes(n - 16), src + 16)));
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

/* v[i] lane j -> v[j] lane i, for 16 vectors of 16 32-bit lanes */
static inline void transpose16(__m512i v[16])
{
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* each 128-bit lane now holds a 4 x 4 block of the result */
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(v[i], v[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(v[i], v[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(v[i + 8], v[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(v[i + 8], v[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        v[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        v[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        v[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

/* strips [s0, s1) of op(A): block (s, kb) at ap + (s * nk + kb) * BF_BLOCK,
 * element (r, kk) of it at r * BF_TK + kk */
static void pack_a(void *arg, int64_t s0, int64_t s1)
{
    const bf_args_t *g = arg;
    for (int64_t s = s0; s < s1; s++) {
        uint16_t *dst = g->ap + (size_t)s * g->nk * BF_BLOCK;
        int i0 = (int)s * BF_TR, rows = g->M - i0 < BF_TR ? g->M - i0 : BF_TR;
        for (int kb = g->kb0; kb < g->kb1; kb++) {
            uint16_t *blk = dst + (size_t)kb * BF_BLOCK;
            int k0 = kb * BF_TK;
            if (!g->transA) {
                for (int r = 0; r < BF_TR; r++)
                    _mm512_store_si512((void *)(blk + r * BF_TK),
                                       r < rows ? row32(g->A + (size_t)(i0 + r) * g->lda + k0,
                                                        g->K - k0)
                                                : _mm512_setzero_si512());
            } else { /* A is (K, M): row k of A holds op(A)'s column k */
                /* pair p of the block: lane r holds row r's values k0+2p,
                 * k0+2p+1; transposed, vector r is row r's 16 pairs */
                __mmask16 m = lanes(rows);
                __m512i v[16];
                for (int p = 0; p < BF_TK / 2; p++) {
                    int k = k0 + 2 * p;
                    v[p] = k < g->K ? pair16(g->A + (size_t)k * g->lda + i0,
                                             k + 1 < g->K ? g->A + (size_t)(k + 1) * g->lda + i0
                                                          : NULL,
                                             m)
                                    : _mm512_setzero_si512();
                }
                transpose16(v);
                for (int r = 0; r < BF_TR; r++)
                    _mm512_store_si512((void *)(blk + r * BF_TK), v[r]);
            }
        }
    }
}

/* strips [t0, t1) of op(B): block (t, kb) at bp + (t * nk + kb) * BF_BLOCK,
 * element (kk, c) of it at (kk / 2) * BF_TK + c * 2 + kk % 2 */
static void pack_b(void *arg, int64_t t0, int64_t t1)
{
    const bf_args_t *g = arg;
    const __m512i pairstep = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(BF_TK / 2));
    for (int64_t t = t0; t < t1; t++) {
        uint16_t *dst = g->bp + (size_t)t * g->nk * BF_BLOCK;
        int j0 = (int)t * BF_TR, cols = g->N - j0 < BF_TR ? g->N - j0 : BF_TR;
        for (int kb = g->kb0; kb < g->kb1; kb++) {
            uint16_t *blk = dst + (size_t)kb * BF_BLOCK;
            int k0 = kb * BF_TK;
            if (g->transB) { /* B is (N, K): row c of B is op(B)'s column c */
                for (int c = 0; c < BF_TR; c++) {
                    /* 32 values of k in order are the 16 pairs; pair p to
                     * row p, column c */
                    __m512i d = c < cols ? row32(g->B + (size_t)(j0 + c) * g->ldb + k0,
                                                 g->K - k0)
                                         : _mm512_setzero_si512();
                    _mm512_i32scatter_epi32((void *)(blk + c * 2), pairstep, d, 4);
                }
            } else {
                __mmask16 m = lanes(cols);
                for (int kk = 0; kk < BF_TK; kk += 2) {
                    int k = k0 + kk;
                    __m512i d = k < g->K ? pair16(g->B + (size_t)k * g->ldb + j0,
                                                  k + 1 < g->K ? g->B + (size_t)(k + 1) * g->ldb + j0
                                                               : NULL,
                                                  m)
                                         : _mm512_setzero_si512();
                    _mm512_store_si512((void *)(blk + (kk / 2) * BF_TK), d);
                }
            }
        }
    }
}


typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} bf_tilecfg_t;

/* tiles 0-3: accumulators (C blocks 00, 01, 10, 11); 4, 5: op(A) blocks;
 * 6, 7: op(B) blocks -- all 16 rows of 64 bytes */
static void tiles_on(void)
{
    bf_tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = BF_TR;
    }
    _tile_loadconfig(&cfg);
}

static void tiles_off(void)
{
    _tile_release();
}

/* acc (16 x 16 floats) into C's block at (i0, j0), clipped to M x N */
static void put_block(const bf_args_t *g, const float *acc, int i0, int j0)
{
    int rows = g->M - i0 < BF_TR ? g->M - i0 : BF_TR;
    int cols = g->N - j0 < BF_TR ? g->N - j0 : BF_TR;
    __mmask16 m = lanes(cols);
    __m512 alpha = _mm512_set1_ps(g->alpha), beta = _mm512_set1_ps(g->beta);
    for (int r = 0; r < rows; r++) {
        float *c = g->C + (size_t)(i0 + r) * g->ldc + j0;
        __m512 v = _mm512_mul_ps(alpha, _mm512_load_ps(acc + r * BF_TR));
        if (g->beta != 0.0f) /* alpha * a + beta * c, rounded twice as the reference does */
            v = _mm512_add_ps(v, _mm512_mul_ps(beta, _mm512_maskz_loadu_ps(m, c)));
        _mm512_mask_storeu_ps(c, m, v);
    }
}

#define BF_A(s, kb) (g->ap + ((size_t)(s) * g->nk + (kb)) * BF_BLOCK)
#define BF_B(t, kb) (g->bp + ((size_t)(t) * g->nk + (kb)) * BF_BLOCK)

/* tasks [t0, t1): task t is C block row t / nb, column t % nb, each 32 x 32 */
static void run_tasks(void *arg, int64_t t0, int64_t t1)
{
    const bf_args_t *g = arg;
    int nb = (g->ns + 1) / 2;
    float acc[BF_TR * BF_TR] __attribute__((aligned(64)));
    tiles_on();
    for (int64_t t = t0; t < t1; t++) {
        int s = (int)(t / nb) * 2, u = (int)(t % nb) * 2;
        int two_m = s + 1 < g->ms, two_n = u + 1 < g->ns;
        /* the sums between passes (no buffer in a single pass) */
        float *acc0 = NULL, *acc1 = NULL, *acc2 = NULL, *acc3 = NULL;
        if (g->acc) {
            acc0 = g->acc + ((size_t)s * g->ns + u) * (BF_TR * BF_TR);
            acc1 = acc0 + BF_TR * BF_TR;                 /* (s, u + 1) */
            acc2 = acc0 + (size_t)g->ns * BF_TR * BF_TR; /* (s + 1, u) */
            acc3 = acc2 + BF_TR * BF_TR;                 /* (s + 1, u + 1) */
        }
        if (g->kb0 == 0) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
        } else { /* the sums of the earlier passes, exactly as they were */
            _tile_loadd(0, acc0, 64);
            if (two_n)
                _tile_loadd(1, acc1, 64);
            if (two_m)
                _tile_loadd(2, acc2, 64);
            if (two_m && two_n)
                _tile_loadd(3, acc3, 64);
        }
        if (two_m && two_n) {
            for (int kb = g->kb0; kb < g->kb1; kb++) {
                _tile_loadd(4, BF_A(s, kb), 64);
                _tile_loadd(6, BF_B(u, kb), 64);
                _tile_loadd(5, BF_A(s + 1, kb), 64);
                _tile_loadd(7, BF_B(u + 1, kb), 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
        } else if (two_m) {
            for (int kb = g->kb0; kb < g->kb1; kb++) {
                _tile_loadd(4, BF_A(s, kb), 64);
                _tile_loadd(6, BF_B(u, kb), 64);
                _tile_loadd(5, BF_A(s + 1, kb), 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(2, 5, 6);
            }
        } else if (two_n) {
            for (int kb = g->kb0; kb < g->kb1; kb++) {
                _tile_loadd(4, BF_A(s, kb), 64);
                _tile_loadd(6, BF_B(u, kb), 64);
                _tile_loadd(7, BF_B(u + 1, kb), 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
            }
        } else {
            for (int kb = g->kb0; kb < g->kb1; kb++) {
                _tile_loadd(4, BF_A(s, kb), 64);
                _tile_loadd(6, BF_B(u, kb), 64);
                _tile_dpbf16ps(0, 4, 6);
            }
        }
        if (g->kb1 < g->nk) { /* more passes follow: keep the sums */
            _tile_stored(0, acc0, 64);
            if (two_n)
                _tile_stored(1, acc1, 64);
            if (two_m)
                _tile_stored(2, acc2, 64);
            if (two_m && two_n)
                _tile_stored(3, acc3, 64);
            continue;
        }
        _tile_stored(0, acc, 64);
        put_block(g, acc, s * BF_TR, u * BF_TR);
        if (two_n) {
            _tile_stored(1, acc, 64);
            put_block(g, acc, s * BF_TR, (u + 1) * BF_TR);
        }
        if (two_m) {
            _tile_stored(2, acc, 64);
            put_block(g, acc, (s + 1) * BF_TR, u * BF_TR);
        }
        if (two_m && two_n) {
            _tile_stored(3, acc, 64);
            put_block(g, acc, (s + 1) * BF_TR, (u + 1) * BF_TR);
        }
    }
    tiles_off();
}

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

int nllm_gemm_bf16(nllm_pool_t *pool, nllm_bf16_ws_t *ws, int transA, int transB, int M, int N,
                   int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc)
{
    bf_args_t g = {transA, transB, M, N, K, lda, ldb, ldc, (K + BF_TK - 1) / BF_TK,
                   (M + BF_TR - 1) / BF_TR, (N + BF_TR - 1) / BF_TR, alpha, beta, A, B, C,
                   NULL, NULL, 0, 0, NULL};
    size_t bsize = (size_t)g.ns * g.nk * BF_BLOCK * sizeof(uint16_t);
    if (grow((void **)&ws->a, &ws->acap, (size_t)g.ms * g.nk * BF_BLOCK * sizeof(uint16_t)) < 0)
        return NLLM_ENOMEM;
    g.ap = ws->a;
    /* B inside the parameters: its packing is kept until they change */
    bf_kept_t *kept = NULL;
    if (ws->w && B >= ws->w && B < ws->w + ws->wn) {
        for (int i = 0; i < ws->nkept && !kept; i++) {
            bf_kept_t *e = &ws->kept[i];
            if (e->B == B && e->transB == transB && e->N == N && e->K == K && e->ldb == ldb)
                kept = e;
        }
        if (!kept && ws->nkept < BF_KEPT_MAX) {
            kept = &ws->kept[ws->nkept++];
            *kept = (bf_kept_t){B, transB, N, K, ldb, 0, NULL, 0};
        }
    }
    int have_b = kept && kept->gen == ws->gen;
    if (have_b)
        g.bp = kept->buf;
    else if (kept ? grow((void **)&kept->buf, &kept->cap, bsize) < 0
                  : grow((void **)&ws->b, &ws->bcap, bsize) < 0)
        return NLLM_ENOMEM;
    else
        g.bp = kept ? kept->buf : ws->b;
    int pass = g.nk > BF_PASS_MIN ? BF_PASS : g.nk;
    if (pass < g.nk &&
        grow((void **)&ws->acc, &ws->acccap, (size_t)g.ms * g.ns * BF_TR * BF_TR * sizeof(float)) < 0)
        return NLLM_ENOMEM;
    g.acc = pass < g.nk ? ws->acc : NULL;
    /* passes of BF_PASS k blocks: each packs its part of the operands and
     * multiplies it while it is in cache */
    int64_t tasks = (int64_t)((g.ms + 1) / 2) * ((g.ns + 1) / 2);
    for (g.kb0 = 0; g.kb0 < g.nk; g.kb0 = g.kb1) {
        g.kb1 = g.kb0 + pass < g.nk ? g.kb0 + pass : g.nk;
        int64_t kc = (int64_t)(g.kb1 - g.kb0) * BF_TK;
        nllm_pool_for(pool, pack_a, &g, g.ms, (int64_t)g.ms * BF_TR * kc / 4);
        if (!have_b)
            nllm_pool_for(pool, pack_b, &g, g.ns, (int64_t)g.ns * BF_TR * kc / 4);
        /* work in multiply-adds, as the pool's other callers count it */
        nllm_pool_for(pool, run_tasks, &g, tasks, (int64_t)M * N * kc / 16);
    }
    if (kept)
        kept->gen = ws->gen;
    return 0;
}

/* ---- may it run here? --------------------------------------------------- */

#define BF_ARCH_REQ_XCOMP_PERM 0x1023
#define BF_XFEATURE_XTILEDATA 18

static int g_usable;
static char g_why[160];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void decide(void)
{
    const char *env = getenv("NLLM_CPU_BF16");
    if (env && strcmp(env, "off") == 0) {
        snprintf(g_why, sizeof g_why, "turned off by NLLM_CPU_BF16=off");
        return;
    }
    unsigned amx = nllm__cpu_amx();
    if (!(amx & NLLM_AMX_TILE) || !(amx & NLLM_AMX_BF16)) {
        snprintf(g_why, sizeof g_why, "this CPU has no AMX-BF16");
        return;
    }
    if (!(amx & NLLM_AMX_OS)) {
        snprintf(g_why, sizeof g_why, "the OS does not enable the AMX tile state (XCR0)");
        return;
    }
    if (syscall(SYS_arch_prctl, BF_ARCH_REQ_XCOMP_PERM, BF_XFEATURE_XTILEDATA) != 0) {
        snprintf(g_why, sizeof g_why, "Linux refused the AMX tile state (arch_prctl: %s)",
                 strerror(errno));
        return;
    }
    /* one product with ragged edges, every transposition, against the
     * reference: a VM that advertises AMX it cannot run fails here */
    enum { M = 37, N = 45, K = 70 };
    static float A[M * K], Bm[K * N], C[M * N], R[M * N];
    for (int i = 0; i < M * K; i++)
        A[i] = (float)((i * 37 % 101) - 50) / 64.0f;
    for (int i = 0; i < K * N; i++)
        Bm[i] = (float)((i * 53 % 97) - 48) / 32.0f;
    nllm_bf16_ws_t *ws = NULL;
    nllm_err_t err;
    if (nllm_bf16_ws_create(&ws, &err) < 0) {
        snprintf(g_why, sizeof g_why, "out of memory for the AMX check");
        return;
    }
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = ta ? M : K, ldb = tb ? K : N;
            nllm_gemm_bf16_ref(ta, tb, M, N, K, 1.0f, A, lda, Bm, ldb, 0.0f, R, N);
            if (nllm_gemm_bf16(NULL, ws, ta, tb, M, N, K, 1.0f, A, lda, Bm, ldb, 0.0f, C, N) <
                0) {
                snprintf(g_why, sizeof g_why, "out of memory for the AMX check");
                nllm_bf16_ws_destroy(ws);
                return;
            }
            /* the operands are bf16-exact and every partial sum is a
             * multiple of 2^-11 below 2^13: float sums are exact */
            for (int i = 0; i < M * N; i++)
                if (C[i] != R[i]) {
                    snprintf(g_why, sizeof g_why,
                             "the AMX product disagreed with the reference (%s%s, element %d: "
                             "%g, not %g)",
                             ta ? "T" : "N", tb ? "T" : "N", i, C[i], R[i]);
                    nllm_bf16_ws_destroy(ws);
                    return;
                }
        }
    nllm_bf16_ws_destroy(ws);
    g_usable = 1;
}

int nllm_bf16_gemm_usable(const char **why)
{
    pthread_once(&g_once, decide);
    if (why)
        *why = g_usable ? NULL : g_why;
    return g_usable;
}

#else /* not x86-64 */

int nllm_gemm_bf16(nllm_pool_t *pool, nllm_bf16_ws_t *ws, int transA, int transB, int M, int N,
                   int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc)
{
    (void)pool;
    (void)ws;
    nllm_gemm_bf16_ref(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return 0;
}

int nllm_bf16_gemm_usable(const char **why)
{
    if (why)
        *why = "this CPU has no AMX-BF16";
    return 0;
}

#endif
