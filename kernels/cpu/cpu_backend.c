/* cpu_backend.c -- the CPU implementation of backend.h.
 *
 * GEMMs with few rows (the per-time-step products of the recurrence) go to
 * small_gemm.c, which reads the weights in place; the large ones (output
 * head, weight gradients) go to OpenBLAS (CBLAS), or to nllm's own packed
 * GEMM (gemm.c) where OpenBLAS's kernels sit below the CPU's instruction
 * set (cpu_kernels.c decides, once per process). In precision bf16 every
 * product runs on the AMX tiles instead (bf16_gemm.c; offered only where
 * they run), with the weights' packing kept until the parameters change.
 * The fused element-wise kernels are plain C
 * loops written so the compiler vectorises them, split across the backend's
 * worker threads where the work is large enough. "Device" memory is host
 * memory. Results depend only on the inputs and the thread count (every
 * reduction has a fixed order), which is what exact resume relies on.
 */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend.h"
#include "bf16_gemm.h"
#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "gemm.h"
#include "nllm_math.h"
#include "philox.h"
#include "small_gemm.h"

/* OpenBLAS's own thread controls (declared in its cblas.h on Debian, but
 * not on every build). */
extern void openblas_set_num_threads(int num_threads);
extern int openblas_get_num_threads(void);

typedef struct {
    int threads;
    nllm_pool_t *pool;
    nllm_gemm_ws_t *gemm_ws; /* NULL when the BLAS runs the large products */
    nllm_bf16_ws_t *bf16_ws; /* precision bf16's packing buffers */
    nllm_err_t sticky;       /* the first failed op's error, for sync */
} cpu_impl_t;

static nllm_pool_t *pool_of(nllm_backend_t *be)
{
    return ((cpu_impl_t *)be->impl)->pool;
}

/* ---- memory ---------------------------------------------------------- */

static void *cpu_alloc(nllm_backend_t *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    if (bytes == 0)
        bytes = 64;
    /* large buffers on 2 MiB boundaries, marked for transparent huge pages:
     * fewer TLB misses when GEMMs stream the weights every time step */
    size_t align = bytes >= ((size_t)4 << 20) ? ((size_t)2 << 20) : 64;
    if (posix_memalign(&p, align, (bytes + 63) & ~(size_t)63) != 0)
        return NULL;
    if (align > 64)
        (void)madvise(p, bytes & ~(align - 1), MADV_HUGEPAGE);
    memset(p, 0, bytes);
    return p;
}

static void cpu_free(nllm_backend_t *be, void *p)
{
    (void)be;
    free(p);
}

static void cpu_copy(nllm_backend_t *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes)
        memmove(dst, src, bytes);
}

static void cpu_zero(nllm_backend_t *be, void *dst, size_t bytes)
{
    (void)be;
    if (bytes)
        memset(dst, 0, bytes);
}

static void cpu_zero_rows(nllm_backend_t *be, float *dst, int ld, int width, int rows)
{
    (void)be;
    for (int r = 0; r < rows; r++)
        memset(dst + (size_t)r * ld, 0, sizeof(float) * (size_t)width);
}

static void cpu_download(nllm_backend_t *be, void *dst, const void *src, size_t bytes)
{
    be->n_downloads++;
    if (bytes)
        memmove(dst, src, bytes);
}

static int cpu_sync(nllm_backend_t *be, nllm_err_t *err)
{
    be->n_syncs++;
    const cpu_impl_t *impl = be->impl;
    if (impl->sticky.code < 0) {
        *err = impl->sticky;
        return impl->sticky.code;
    }
    return 0;
}

static void cpu_destroy(nllm_backend_t *be)
{
    if (!be)
        return;
    cpu_impl_t *impl = be->impl;
    if (impl) {
        nllm_pool_destroy(impl->pool);
        nllm_gemm_ws_destroy(impl->gemm_ws);
        nllm_bf16_ws_destroy(impl->bf16_ws);
        free(impl);
    }
    free(be);
}

/* ---- GEMM ------------------------------------------------------------ */

static void cpu_gemm(nllm_backend_t *be, int transA, int transB, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    cpu_impl_t *impl = be->impl;
    if (be->precision == NLLM_PREC_BF16) { /* every product, whatever its shape */
        if (nllm_gemm_bf16(impl->pool, impl->bf16_ws, transA, transB, M, N, K, alpha, A, lda, B,
                           ldb, beta, C, ldc) < 0 &&
            impl->sticky.code == 0)
            nllm_err_set(&impl->sticky, NLLM_ENOMEM,
                         "device cpu: out of memory for the bf16 packing buffers of a %d x %d x "
                         "%d product",
                         M, N, K);
        return;
    }
    /* Few rows (the per-time-step products): OpenBLAS would re-pack all of B
     * on every call, so multiply in place instead. */
    if (!transA && nllm_small_gemm_use(M)) {
        nllm_small_gemm(pool_of(be), transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* The BLAS's kernels sit below the CPU's level (cpu_kernels.h). */
    if (impl->gemm_ws) {
        nllm_gemm(impl->pool, impl->gemm_ws, transA, transB, M, N, K, alpha, A, lda, B, ldb,
                  beta, C, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
}

/* precision bf16 keeps the packed weights until the parameters change */
static void cpu_params_bind(nllm_backend_t *be, const float *w, int64_t n)
{
    cpu_impl_t *impl = be->impl;
    if (impl->bf16_ws)
        nllm_bf16_ws_params(impl->bf16_ws, w, n);
}

static void cpu_params_changed(nllm_backend_t *be)
{
    cpu_impl_t *impl = be->impl;
    if (impl->bf16_ws)
        nllm_bf16_ws_params_changed(impl->bf16_ws);
}

/* ---- embedding ------------------------------------------------------- */

typedef struct {
    float *dst;
    const float *src;
    const int32_t *ids;
    int ld, N, D;
} emb_args_t;

static void emb_fwd_rows(void *arg, int64_t r0, int64_t r1)
{
    emb_args_t *e = arg;
    for (int64_t r = r0; r < r1; r++)
        memcpy(e->dst + (size_t)r * e->ld, e->src + (size_t)e->ids[r] * e->D,
               sizeof(float) * e->D);
}

static void cpu_embedding_forward(nllm_backend_t *be, float *out, int ldo, const float *table,
                                  const int32_t *ids, int N, int D)
{
    emb_args_t e = {out, table, ids, ldo, N, D};
    nllm_pool_for(pool_of(be), emb_fwd_rows, &e, N, (int64_t)N * D);
}

/* Threads split the columns, not the rows: two rows with the same id add
 * into the same table row, and each column still takes its rows in order
 * 0..N-1, so the sums have the same bits for every thread count. */
static void emb_bwd_cols(void *arg, int64_t j0, int64_t j1)
{
    emb_args_t *e = arg;
    for (int r = 0; r < e->N; r++) {
        float *dst = e->dst + (size_t)e->ids[r] * e->D;
        const float *src = e->src + (size_t)r * e->ld;
        for (int64_t j = j0; j < j1; j++)
            dst[j] += src[j];
    }
}

static void cpu_embedding_backward(nllm_backend_t *be, float *dtable, const float *dout, int ldd,
                                   const int32_t *ids, int N, int D)
{
    emb_args_t e = {dtable, dout, ids, ldd, N, D};
    nllm_pool_for(pool_of(be), emb_bwd_cols, &e, D, (int64_t)N * D);
}

/* ---- bias + ReLU + dropout -------------------------------------------- */

typedef struct {
    float *x;
    const float *bias;
    int B, H, t, T;
    uint64_t seed;
    uint32_t stream, step;
    float p;
    int64_t win0; /* global index of window 0 (sd->win0) */
} brd_args_t;

/* Keep words for the elements [idx0, idx0 + n) of a stream: words[i] is
 * the Philox word that decides element idx0 + i. */
static void dropout_words(uint32_t *words, uint64_t idx0, int n, uint64_t seed, uint32_t stream,
                          uint32_t step)
{
    uint64_t blk0 = idx0 >> 2, blk1 = (idx0 + (uint64_t)n + 3) >> 2;
    int skip = (int)(idx0 & 3);
    uint32_t buf[4 * 64];
    nllm_philox_blocks_fn rng = nllm_philox_best();
    for (uint64_t b = blk0; b < blk1; b += 64) {
        int nb = (int)(blk1 - b < 64 ? blk1 - b : 64);
        rng(seed, stream, step, b, nb, buf);
        /* element e = 4*(b - blk0) + i - skip of the output */
        int64_t base = (int64_t)4 * (int64_t)(b - blk0) - skip;
        for (int i = 0; i < 4 * nb; i++) {
            int64_t e = base + i;
            if (e >= 0 && e < n)
                words[e] = buf[i];
        }
    }
}

static void brd_rows(void *arg, int64_t r0, int64_t r1)
{
    brd_args_t *a = arg;
    int H = a->H;
    uint32_t *words = NULL;
    float scale = nllm_dropout_scale(a->p);
    /* Keep threshold on the 24-bit integer: u01(w) >= p  <=>  (w >> 8) >= ceil(p * 2^24). */
    uint32_t thr = 0;
    if (a->p > 0.0f) {
        words = malloc(sizeof(uint32_t) * (size_t)H);
        if (!words)
            abort();
        double t = ceil((double)a->p * 16777216.0);
        thr = (uint32_t)t;
    }
    /* Branch-free bodies (products computed, then selected) so that the
     * compiler vectorizes them: it keeps a product that might trap inside
     * a branch otherwise, and ReLU and dropout branch at random. */
    for (int64_t b = r0; b < r1; b++) {
        float *restrict x = a->x + (size_t)b * H;
        const float *restrict bias = a->bias;
        if (a->p > 0.0f) {
            uint64_t idx0 =
                ((uint64_t)(b + a->win0) * (uint64_t)a->T + (uint64_t)a->t) * (uint64_t)H;
            dropout_words(words, idx0, H, a->seed, a->stream, a->step);
            const uint32_t *restrict w = words;
            for (int j = 0; j < H; j++) {
                float v = x[j] + bias[j];
                float sv = v * scale;
                int ok = (v > 0.0f) & ((w[j] >> 8) >= thr);
                x[j] = ok ? sv : 0.0f;
            }
        } else {
            for (int j = 0; j < H; j++) {
                float v = x[j] + bias[j];
                x[j] = v > 0.0f ? v : 0.0f;
            }
        }
    }
    free(words);
}

static void cpu_bias_relu_dropout_forward(nllm_backend_t *be, float *x, const float *bias, int B,
                                          int H, int t, int T, const nllm_step_dev_t *sd,
                                          uint32_t stream, float p)
{
    uint64_t seed = p > 0.0f ? sd->seed : 0;
    uint32_t step = p > 0.0f ? sd->rng_step : 0;
    int64_t win0 = p > 0.0f ? sd->win0 : 0;
    brd_args_t a = {x, bias, B, H, t, T, seed, stream, step, p, win0};
    int64_t work = (int64_t)B * H * (p > 0.0f ? 8 : 1);
    nllm_pool_for(pool_of(be), brd_rows, &a, B, work);
}

typedef struct {
    float *dx;
    const float *a;
    float scale;
} rdb_args_t;

static void rdb_range(void *arg, int64_t i0, int64_t i1)
{
    rdb_args_t *r = arg;
    float *restrict dx = r->dx;
    const float *restrict a = r->a;
    float scale = r->scale;
    for (int64_t i = i0; i < i1; i++) { /* branch-free: see brd_rows */
        float g = dx[i] * scale;
        dx[i] = a[i] > 0.0f ? g : 0.0f;
    }
}

static void cpu_relu_dropout_backward(nllm_backend_t *be, float *dx, const float *a, int64_t n,
                                      float p)
{
    rdb_args_t r = {dx, a, nllm_dropout_scale(p)};
    nllm_pool_for(pool_of(be), rdb_range, &r, n, n);
}

/* ---- context step ---------------------------------------------------- */

typedef struct {
    const nllm_ctx_args_t *a;
    float *g, *xhat, *rstd, *cout, *dc, *dn;
    const float *cprev;
    const float *crstd;
    int ldc, ldo;
} ctx_job_t;

static void ctx_fwd_rows(void *arg, int64_t r0, int64_t r1)
{
    ctx_job_t *j = arg;
    const nllm_ctx_args_t *a = j->a;
    int Dc = a->Dc;
    const float *bu = a->bias3, *bf = a->bias3 + Dc, *bi = a->bias3 + 2 * Dc;
    for (int64_t b = r0; b < r1; b++) {
        float *gd = j->g + (size_t)b * 3 * Dc, *gf = gd + Dc, *gi = gd + 2 * Dc;
        const float *cp = j->cprev ? j->cprev + (size_t)b * j->ldc : NULL;
        float *xh = j->xhat + (size_t)b * Dc;
        float sum = 0.0f;
        for (int k = 0; k < Dc; k++) {
            float d = gd[k] + bu[k];
            float f = nllm_sigmoidf(gf[k] + bf[k]);
            float ig = nllm_sigmoidf(gi[k] + bi[k]);
            gd[k] = d;
            gf[k] = f;
            gi[k] = ig;
            float s = (cp ? f * cp[k] : 0.0f) + ig * d;
            xh[k] = s;
            sum += s;
        }
        float mean = sum / (float)Dc;
        float var = 0.0f;
        for (int k = 0; k < Dc; k++) {
            float c = xh[k] - mean;
            var += c * c;
        }
        var /= (float)Dc;
        float rs = 1.0f / sqrtf(var + NLLM_LN_EPS);
        j->rstd[b] = rs;
        float *co = j->cout + (size_t)b * j->ldo;
        for (int k = 0; k < Dc; k++) {
            float x = (xh[k] - mean) * rs;
            xh[k] = x;
            float n = a->gamma[k] * x + a->beta[k];
            co[k] = fminf(fmaxf(n, -NLLM_CLAMP), NLLM_CLAMP);
        }
    }
}

static void cpu_context_forward(nllm_backend_t *be, const nllm_ctx_args_t *a, float *g,
                                const float *cprev, int ldc, float *xhat, float *rstd,
                                float *cout, int ldo)
{
    ctx_job_t j = {.a = a, .g = g, .xhat = xhat, .rstd = rstd, .cout = cout, .cprev = cprev,
                   .ldc = ldc, .ldo = ldo};
    nllm_pool_for(pool_of(be), ctx_fwd_rows, &j, a->B, (int64_t)a->B * a->Dc * 16);
}

static void ctx_bwd_rows(void *arg, int64_t r0, int64_t r1)
{
    ctx_job_t *j = arg;
    const nllm_ctx_args_t *a = j->a;
    int Dc = a->Dc;
    for (int64_t b = r0; b < r1; b++) {
        float *gd = j->g + (size_t)b * 3 * Dc, *gf = gd + Dc, *gi = gd + 2 * Dc;
        const float *cp = j->cprev ? j->cprev + (size_t)b * j->ldc : NULL;
        float *xh = j->xhat + (size_t)b * Dc;
        float *dn = j->dn + (size_t)b * Dc;
        float *dc = j->dc + (size_t)b * Dc;
        float rs = j->crstd[b];
        /* dn through the clamp; dxhat = dn * gamma; the two row means. */
        float m1 = 0.0f, m2 = 0.0f;
        for (int k = 0; k < Dc; k++) {
            float n = a->gamma[k] * xh[k] + a->beta[k];
            float d = (n >= -NLLM_CLAMP && n <= NLLM_CLAMP) ? dc[k] : 0.0f;
            dn[k] = d;
            float dxh = d * a->gamma[k];
            m1 += dxh;
            m2 += dxh * xh[k];
        }
        m1 /= (float)Dc;
        m2 /= (float)Dc;
        for (int k = 0; k < Dc; k++) {
            float dxh = dn[k] * a->gamma[k];
            float ds = rs * (dxh - m1 - xh[k] * m2);
            float d = gd[k], f = gf[k], ig = gi[k];
            float c = cp ? cp[k] : 0.0f;
            gd[k] = ds * ig;
            gf[k] = ds * c * f * (1.0f - f);
            gi[k] = ds * d * ig * (1.0f - ig);
            dc[k] = ds * f;
            xh[k] = dn[k] * xh[k];
        }
    }
}

static void cpu_context_backward(nllm_backend_t *be, const nllm_ctx_args_t *a, float *dc,
                                 float *g, const float *cprev, int ldc, float *xhat,
                                 const float *rstd, float *dn)
{
    ctx_job_t j = {.a = a, .g = g, .xhat = xhat, .crstd = rstd, .dc = dc, .dn = dn,
                   .cprev = cprev, .ldc = ldc};
    nllm_pool_for(pool_of(be), ctx_bwd_rows, &j, a->B, (int64_t)a->B * a->Dc * 16);
}

/* ---- softmax cross-entropy ------------------------------------------ */

typedef struct {
    float *y;
    const float *bias;
    const int32_t *targets;
    int V;
    int want_grad;
    float grad_scale;
    float *row_loss, *row_hit;
} xent_args_t;

static void xent_rows(void *arg, int64_t r0, int64_t r1)
{
    xent_args_t *a = arg;
    int V = a->V;
    for (int64_t r = r0; r < r1; r++) {
        float *y = a->y + (size_t)r * V;
        int tgt = a->targets[r];
        float mx = -INFINITY;
        int arg_max = 0;
        for (int k = 0; k < V; k++) {
            float v = y[k] + a->bias[k];
            y[k] = v;
            if (v > mx) {
                mx = v;
                arg_max = k;
            }
        }
        if (tgt == 0) {
            a->row_loss[r] = 0.0f;
            a->row_hit[r] = 0.0f;
            if (a->want_grad)
                memset(y, 0, sizeof(float) * V);
            continue;
        }
        float sum = 0.0f;
        for (int k = 0; k < V; k++)
            sum += expf(y[k] - mx);
        float lse = logf(sum) + mx;
        a->row_loss[r] = lse - y[tgt];
        a->row_hit[r] = arg_max == tgt ? 1.0f : 0.0f;
        if (a->want_grad) {
            float inv = 1.0f / sum;
            for (int k = 0; k < V; k++)
                y[k] = a->grad_scale * (expf(y[k] - mx) * inv);
            y[tgt] -= a->grad_scale;
        }
    }
}

static void cpu_softmax_xent(nllm_backend_t *be, float *y, const float *bias,
                             const int32_t *targets, int N, int V, int want_grad,
                             const nllm_step_dev_t *sd, float *row_loss, float *row_hit)
{
    float grad_scale = want_grad ? sd->grad_scale : 0.0f;
    xent_args_t a = {y, bias, targets, V, want_grad, grad_scale, row_loss, row_hit};
    nllm_pool_for(pool_of(be), xent_rows, &a, N, (int64_t)N * V * 8);
}

/* In row order, as the host loop it replaces: the CPU's figures are the
 * same as before the statistics moved to the backend. */
static void cpu_batch_stats(nllm_backend_t *be, const float *row_loss, const float *row_hit,
                            int N, const nllm_step_dev_t *sd, nllm_step_out_t *ring)
{
    (void)be;
    double loss = 0.0;
    int64_t hits = 0;
    for (int r = 0; r < N; r++) {
        loss += row_loss[r];
        hits += row_hit[r] != 0.0f;
    }
    ring[sd->slot].loss_sum = loss;
    ring[sd->slot].correct = hits;
}

/* ---- reductions ------------------------------------------------------ */

typedef struct {
    float *out;
    const float *x;
    int N, ld;
} colsum_args_t;

/* Each worker owns a range of columns; rows are summed in ascending order. */
static void colsum_cols(void *arg, int64_t j0, int64_t j1)
{
    colsum_args_t *a = arg;
    float *restrict out = a->out; /* never one of x's rows: it vectorizes */
    for (int64_t j = j0; j < j1; j++)
        out[j] = 0.0f;
    for (int r = 0; r < a->N; r++) {
        const float *restrict row = a->x + (size_t)r * a->ld;
        for (int64_t j = j0; j < j1; j++)
            out[j] += row[j];
    }
}

static void cpu_col_sum(nllm_backend_t *be, float *out, const float *x, int N, int D, int ld)
{
    colsum_args_t a = {out, x, N, ld};
    nllm_pool_for(pool_of(be), colsum_cols, &a, D, (int64_t)N * D);
}

/* Fixed chunking (independent of the thread count): partial sums of
 * NLLM_NORM_CHUNK elements each, added in chunk order. */
#define NLLM_NORM_CHUNK 65536

typedef struct {
    const float *x;
    int64_t n;
    double *partial;
} sqn_args_t;

static void sqn_chunks(void *arg, int64_t c0, int64_t c1)
{
    sqn_args_t *a = arg;
    for (int64_t c = c0; c < c1; c++) {
        int64_t i0 = c * NLLM_NORM_CHUNK, i1 = i0 + NLLM_NORM_CHUNK;
        if (i1 > a->n)
            i1 = a->n;
        double s = 0.0;
        for (int64_t i = i0; i < i1; i++)
            s += (double)a->x[i] * (double)a->x[i];
        a->partial[c] = s;
    }
}

static void cpu_sq_norm(nllm_backend_t *be, const float *x, int64_t n, double *out)
{
    int64_t chunks = (n + NLLM_NORM_CHUNK - 1) / NLLM_NORM_CHUNK;
    double *partial = calloc((size_t)(chunks > 0 ? chunks : 1), sizeof(double));
    if (!partial)
        abort();
    sqn_args_t a = {x, n, partial};
    nllm_pool_for(pool_of(be), sqn_chunks, &a, chunks, n);
    double s = 0.0;
    for (int64_t c = 0; c < chunks; c++)
        s += partial[c];
    free(partial);
    *out = s;
}

static void cpu_clip(nllm_backend_t *be, nllm_step_dev_t *sd, nllm_step_out_t *ring)
{
    (void)be;
    nllm_clip_step(sd, ring);
}

typedef struct {
    float *p, *m, *v;
    const float *g;
    const nllm_adam_consts_t *c;
} adam_args_t;

static void adam_range(void *arg, int64_t i0, int64_t i1)
{
    adam_args_t *a = arg;
    nllm_adam_consts_t c = *a->c;
    /* restrict: the stores cannot change a's fields, so the loop vectorizes */
    float *restrict p = a->p, *restrict m = a->m, *restrict v = a->v;
    const float *restrict g = a->g;
    for (int64_t i = i0; i < i1; i++)
        nllm_adam_update(&p[i], &m[i], &v[i], g[i], &c);
}

static void cpu_adam(nllm_backend_t *be, float *p, float *m, float *v, const float *g, int64_t n,
                     const nllm_step_dev_t *sd)
{
    if (sd->halted)
        return;
    adam_args_t a = {p, m, v, g, &sd->adam};
    nllm_pool_for(pool_of(be), adam_range, &a, n, n * 4);
}

/* ---- construction ---------------------------------------------------- */

static char g_prec_note[200];
static unsigned g_prec_mask;
static pthread_once_t g_prec_once = PTHREAD_ONCE_INIT;

static void prec_decide(void)
{
    const char *why = NULL;
    g_prec_mask = 1u << NLLM_PREC_FP32;
    if (nllm_bf16_gemm_usable(&why))
        g_prec_mask |= 1u << NLLM_PREC_BF16;
    else
        snprintf(g_prec_note, sizeof g_prec_note, "bf16 on the CPU needs AMX-BF16: %s", why);
}

unsigned nllm_cpu_precisions(const char **note)
{
    pthread_once(&g_prec_once, prec_decide);
    if (note)
        *note = g_prec_note[0] ? g_prec_note : NULL;
    return g_prec_mask;
}

int nllm_cpu_backend_create(int threads, nllm_backend_t **out, nllm_err_t *err)
{
    *out = NULL;
    if (threads <= 0)
        threads = openblas_get_num_threads();
    if (threads <= 0)
        threads = 1;
    openblas_set_num_threads(threads);
    nllm_backend_t *be = calloc(1, sizeof *be);
    cpu_impl_t *impl = calloc(1, sizeof *impl);
    if (!be || !impl) {
        free(be);
        free(impl);
        return nllm_err_set(err, NLLM_ENOMEM, "cpu backend: out of memory");
    }
    impl->threads = threads;
    int rc = nllm_pool_create(threads, &impl->pool, err);
    if (rc == 0 && nllm_cpu_kernels_use_own())
        rc = nllm_gemm_ws_create(threads, &impl->gemm_ws, err);
    unsigned precisions = nllm_cpu_precisions(&be->precision_note);
    if (rc == 0 && (precisions >> NLLM_PREC_BF16) & 1u)
        rc = nllm_bf16_ws_create(&impl->bf16_ws, err);
    if (rc < 0) {
        nllm_gemm_ws_destroy(impl->gemm_ws);
        nllm_pool_destroy(impl->pool);
        free(be);
        free(impl);
        return rc;
    }
    be->name = "cpu";
    be->impl = impl;
    be->precisions = precisions;
    be->precision = NLLM_PREC_FP32;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_copy;
    be->download = cpu_download;
    be->copy = cpu_copy;
    be->zero = cpu_zero;
    be->zero_rows = cpu_zero_rows;
    be->sync = cpu_sync;
    be->destroy = cpu_destroy;
    be->gemm = cpu_gemm;
    be->params_bind = cpu_params_bind;
    be->params_changed = cpu_params_changed;
    be->embedding_forward = cpu_embedding_forward;
    be->embedding_backward = cpu_embedding_backward;
    be->bias_relu_dropout_forward = cpu_bias_relu_dropout_forward;
    be->relu_dropout_backward = cpu_relu_dropout_backward;
    be->context_forward = cpu_context_forward;
    be->context_backward = cpu_context_backward;
    be->softmax_xent = cpu_softmax_xent;
    be->batch_stats = cpu_batch_stats;
    be->clip = cpu_clip;
    be->col_sum = cpu_col_sum;
    be->sq_norm = cpu_sq_norm;
    be->adam = cpu_adam;
    *out = be;
    return 0;
}
