/* test_cuda_ops.c -- the CUDA backend against the CPU backend (the reference
 * semantics): every op on the same random inputs, then the whole model
 * (gradients of one step, 50 training steps, determinism).
 *
 * Float paths must agree to 1e-5 relative to the output's scale (max |ref|)
 * and NaN always fails; dropout masks, ReLU, embedding rows, the embedding
 * gradient and Adam's element-wise formulas must agree bit for bit; every
 * reduction must give bit-identical results on two GPU runs. A training
 * step recorded as a CUDA graph must give the same bits as the same step run
 * op by op, and queued steps (stats ring) the same as waited-for ones.
 * tf32 and bf16 (tensor-core GEMMs) are held to looser bars against the
 * CPU's fp32, written down at each check, and must be deterministic too.
 * Exits 77 when there is no CUDA device (or no CUDA in this build).
 *   test_cuda_ops            everything
 *   test_cuda_ops --ops      the op tests only (quick; for compute-sanitizer;
 *                            without the deliberate out-of-memory probe,
 *                            which memcheck would report)
 *   test_cuda_ops --digest [fp32|tf32|bf16]
 *                            prints "digest <hex>" of a GPU training run in
 *                            that precision, for tests/gpu/check.sh's
 *                            run-twice determinism check
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda/cuda_backend.h"
#include "model.h"
#include "nllm_math.h"
#include "testutil.h"

static nllm_backend_t *cpu, *gpu;
static int ops_only;
static nllm_backend_t *gpu_backend(int graphs, nllm_precision_t prec);

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * nllm_rng_normal(seed, 99, i));
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of host memory\n");
        exit(1);
    }
    return p;
}

/* ---- device helpers (abort the test binary on failure: nothing after a
 * sticky CUDA error can be trusted) ------------------------------------- */

static void gsync(const char *what)
{
    nllm_err_t err;
    if (gpu->sync(gpu, &err) < 0) {
        fprintf(stderr, "FAIL %s: cuda sync: %s\n", what, err.msg);
        exit(1);
    }
}

static void *dput(const void *h, size_t bytes)
{
    void *d = gpu->alloc(gpu, bytes);
    if (!d) {
        fprintf(stderr, "FAIL: cuda alloc of %zu bytes failed\n", bytes);
        exit(1);
    }
    if (h)
        gpu->upload(gpu, d, h, bytes);
    return d;
}

static void dget(void *h, const void *d, size_t bytes, const char *what)
{
    gpu->download(gpu, h, d, bytes);
    gsync(what);
}

/* max |a - b| / max |b| over n values (b the reference); infinite when
 * either side has a NaN or the two disagree on an infinity. */
static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i]))
            return INFINITY;
        if (isinf(a[i]) || isinf(b[i])) {
            if (a[i] != b[i])
                return INFINITY;
            continue;
        }
        num = fmax(num, fabs((double)a[i] - (double)b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0.0 ? num / den : num;
}

static size_t ndiff(const float *a, const float *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        d += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return d;
}

/* ---- GEMM --------------------------------------------------------------- */

static void test_gemm(void)
{
    int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {64, 128, 96}, {300, 257, 513},
                       {5, 3, 0}, {1, 512, 768}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
                int arows = ta ? K : M, brows = tb ? N : K;
                size_t na = (size_t)arows * lda, nb = (size_t)brows * ldb, nc = (size_t)M * ldc;
                float *A = xmalloc(sizeof(float) * (na + 1)), *Bm = xmalloc(sizeof(float) * (nb + 1));
                float *C = xmalloc(sizeof(float) * nc), *Cg = xmalloc(sizeof(float) * nc);
                fill(A, na, 1, 1.0f);
                fill(Bm, nb, 2, 1.0f);
                fill(C, nc, 3, 1.0f);
                float *dA = dput(A, sizeof(float) * (na + 1)), *dB = dput(Bm, sizeof(float) * (nb + 1));
                float *dC = dput(C, sizeof(float) * nc);
                float alpha = 0.75f, beta = s % 2 ? 0.0f : 0.5f;
                cpu->gemm(cpu, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
                gpu->gemm(gpu, ta, tb, M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc);
                dget(Cg, dC, sizeof(float) * nc, "gemm");
                double e = rel_err(Cg, C, nc);
                CHECK(e < 1e-5, "gemm %dx%dx%d ta=%d tb=%d beta=%g: relative error %g", M, N, K,
                      ta, tb, (double)beta, e);
                gpu->free(gpu, dA);
                gpu->free(gpu, dB);
                gpu->free(gpu, dC);
                free(A);
                free(Bm);
                free(C);
                free(Cg);
            }
}

/* ---- embedding ------------------------------------------------------------ */

static void embedding_case(int V, int D, int N, int ld)
{
    float *table = xmalloc(sizeof(float) * V * D), *out = xmalloc(sizeof(float) * N * ld),
          *outg = xmalloc(sizeof(float) * N * ld);
    float *dtab = xmalloc(sizeof(float) * V * D), *dtabg = xmalloc(sizeof(float) * V * D),
          *dtabg2 = xmalloc(sizeof(float) * V * D), *dout = xmalloc(sizeof(float) * N * ld);
    int32_t *ids = xmalloc(sizeof(int32_t) * N);
    /* skewed like real text: ~40% pad (id 0), a frequent id, the rest spread */
    for (int r = 0; r < N; r++) {
        uint64_t u = nllm_rng_below(5, 1, 0, (uint64_t)r, 10);
        ids[r] = u < 4 ? 0 : u < 6 ? 4 % V : (int32_t)nllm_rng_below(5, 2, 0, (uint64_t)r, (uint64_t)V);
    }
    fill(table, (size_t)V * D, 4, 1.0f);
    fill(out, (size_t)N * ld, 5, 1.0f);
    fill(dout, (size_t)N * ld, 6, 1.0f);
    fill(dtab, (size_t)V * D, 7, 1.0f); /* backward adds into what is there */
    float *d_table = dput(table, sizeof(float) * V * D), *d_out = dput(out, sizeof(float) * N * ld);
    float *d_dout = dput(dout, sizeof(float) * N * ld);
    int32_t *d_ids = dput(ids, sizeof(int32_t) * N);
    float *d_dtab = dput(dtab, sizeof(float) * V * D);

    cpu->embedding_forward(cpu, out, ld, table, ids, N, D);
    gpu->embedding_forward(gpu, d_out, ld, d_table, d_ids, N, D);
    dget(outg, d_out, sizeof(float) * N * ld, "embedding_forward");
    CHECK(ndiff(outg, out, (size_t)N * ld) == 0, "embedding_forward V=%d D=%d N=%d: %zu values differ",
          V, D, N, ndiff(outg, out, (size_t)N * ld));

    gpu->embedding_backward(gpu, d_dtab, d_dout, ld, d_ids, N, D);
    dget(dtabg, d_dtab, sizeof(float) * V * D, "embedding_backward");
    gpu->upload(gpu, d_dtab, dtab, sizeof(float) * V * D);
    gpu->embedding_backward(gpu, d_dtab, d_dout, ld, d_ids, N, D);
    dget(dtabg2, d_dtab, sizeof(float) * V * D, "embedding_backward");
    cpu->embedding_backward(cpu, dtab, dout, ld, ids, N, D);
    size_t nv = (size_t)V * D;
    CHECK(ndiff(dtabg, dtabg2, nv) == 0, "embedding_backward V=%d D=%d N=%d: two GPU runs differ in "
          "%zu values", V, D, N, ndiff(dtabg, dtabg2, nv));
    /* same additions in the same (increasing r) order: bit-identical */
    CHECK(ndiff(dtabg, dtab, nv) == 0, "embedding_backward V=%d D=%d N=%d: %zu values differ from "
          "the CPU (relative error %g): the per-row order is not increasing r", V, D, N,
          ndiff(dtabg, dtab, nv), rel_err(dtabg, dtab, nv));
    gpu->free(gpu, d_table);
    gpu->free(gpu, d_out);
    gpu->free(gpu, d_dout);
    gpu->free(gpu, d_ids);
    gpu->free(gpu, d_dtab);
    free(table);
    free(out);
    free(outg);
    free(dtab);
    free(dtabg);
    free(dtabg2);
    free(dout);
    free(ids);
}

static void test_embedding(void)
{
    embedding_case(13, 6, 40, 9);
    embedding_case(50, 70, 5000, 80);
    embedding_case(1000, 256, 20000, 256);
    embedding_case(7, 33, 1, 33);
}

/* ---- bias + ReLU + dropout -------------------------------------------------- */

static void test_bias_relu_dropout(void)
{
    int dims[][3] = {{3, 5, 4}, {16, 64, 9}, {7, 513, 3}, {512, 512, 63}}; /* B, H, T */
    float ps[] = {0.0f, 0.1f, 0.5f};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
        for (size_t q = 0; q < 3; q++) {
            int B = dims[d][0], H = dims[d][1], T = dims[d][2], t = T / 2;
            float p = ps[q];
            uint64_t seed = 0x1234567890ULL + d;
            uint32_t stream = 5, step = 77;
            size_t n = (size_t)B * H;
            float *x = xmalloc(sizeof(float) * n), *xg = xmalloc(sizeof(float) * n),
                  *bias = xmalloc(sizeof(float) * H), *dx = xmalloc(sizeof(float) * n),
                  *dxg = xmalloc(sizeof(float) * n);
            fill(x, n, 6, 1.0f);
            fill(bias, (size_t)H, 7, 0.3f);
            fill(dx, n, 8, 1.0f);
            float *d_x = dput(x, sizeof(float) * n), *d_b = dput(bias, sizeof(float) * H),
                  *d_dx = dput(dx, sizeof(float) * n);
            nllm_step_dev_t sd = {.seed = seed, .rng_step = step};
            nllm_step_dev_t *d_sd = dput(&sd, sizeof sd);
            cpu->bias_relu_dropout_forward(cpu, x, bias, B, H, t, T, &sd, stream, p);
            gpu->bias_relu_dropout_forward(gpu, d_x, d_b, B, H, t, T, d_sd, stream, p);
            dget(xg, d_x, sizeof(float) * n, "bias_relu_dropout_forward");
            size_t masks = 0;
            for (size_t i = 0; i < n; i++)
                masks += (xg[i] == 0.0f) != (x[i] == 0.0f);
            CHECK(masks == 0, "bias_relu_dropout B=%d H=%d p=%g: %zu mask entries differ", B, H,
                  (double)p, masks);
            CHECK(ndiff(xg, x, n) == 0, "bias_relu_dropout B=%d H=%d p=%g: %zu values differ", B,
                  H, (double)p, ndiff(xg, x, n));
            cpu->relu_dropout_backward(cpu, dx, x, (int64_t)n, p);
            gpu->relu_dropout_backward(gpu, d_dx, d_x, (int64_t)n, p);
            dget(dxg, d_dx, sizeof(float) * n, "relu_dropout_backward");
            CHECK(ndiff(dxg, dx, n) == 0, "relu_dropout_backward B=%d H=%d p=%g: %zu differ", B,
                  H, (double)p, ndiff(dxg, dx, n));
            gpu->free(gpu, d_x);
            gpu->free(gpu, d_b);
            gpu->free(gpu, d_sd);
            gpu->free(gpu, d_dx);
            free(x);
            free(xg);
            free(bias);
            free(dx);
            free(dxg);
        }
}

/* ---- context step ------------------------------------------------------------ */

static void context_case(int B, int Dc, int with_prev)
{
    int ldc = Dc + 6; /* cprev and cout rows at a stride, as in A0 */
    size_t ng = (size_t)B * 3 * Dc, nc = (size_t)B * ldc, nx = (size_t)B * Dc;
    float *g = xmalloc(4 * ng), *gg = xmalloc(4 * ng), *bias3 = xmalloc(4 * 3 * Dc);
    float *gamma = xmalloc(4 * Dc), *beta = xmalloc(4 * Dc), *cprev = xmalloc(4 * nc);
    float *xhat = xmalloc(4 * nx), *xhatg = xmalloc(4 * nx), *rstd = xmalloc(4 * B),
          *rstdg = xmalloc(4 * B);
    float *cout = xmalloc(4 * nc), *coutg = xmalloc(4 * nc);
    float *dc = xmalloc(4 * nx), *dcg = xmalloc(4 * nx), *dn = xmalloc(4 * nx),
          *dng = xmalloc(4 * nx);
    fill(g, ng, 10, 1.5f);
    fill(bias3, (size_t)3 * Dc, 11, 0.5f);
    fill(cprev, nc, 12, 3.0f);
    fill(cout, nc, 13, 1.0f);
    fill(xhat, nx, 14, 1.0f);
    fill(dc, nx, 15, 1.0f);
    memset(dn, 0, 4 * nx);
    for (int k = 0; k < Dc; k++) {
        gamma[k] = (float)(6.0 + 4.0 * nllm_rng_normal(13, 1, (uint64_t)k)); /* some |n| > 10 */
        beta[k] = (float)(2.0 * nllm_rng_normal(13, 2, (uint64_t)k));
    }
    float *d_g = dput(g, 4 * ng), *d_b3 = dput(bias3, 4 * 3 * Dc), *d_gm = dput(gamma, 4 * Dc),
          *d_bt = dput(beta, 4 * Dc), *d_cp = dput(cprev, 4 * nc), *d_xh = dput(xhat, 4 * nx),
          *d_rs = dput(NULL, 4 * B), *d_co = dput(cout, 4 * nc), *d_dc = dput(dc, 4 * nx),
          *d_dn = dput(dn, 4 * nx);
    nllm_ctx_args_t ac = {B, Dc, bias3, gamma, beta}, ag = {B, Dc, d_b3, d_gm, d_bt};
    cpu->context_forward(cpu, &ac, g, with_prev ? cprev : NULL, ldc, xhat, rstd, cout, ldc);
    gpu->context_forward(gpu, &ag, d_g, with_prev ? d_cp : NULL, ldc, d_xh, d_rs, d_co, ldc);
    dget(gg, d_g, 4 * ng, "context_forward");
    dget(xhatg, d_xh, 4 * nx, "context_forward");
    dget(rstdg, d_rs, 4 * B, "context_forward");
    dget(coutg, d_co, 4 * nc, "context_forward");
    double e;
    CHECK((e = rel_err(gg, g, ng)) < 1e-5, "context_forward B=%d Dc=%d prev=%d: gates error %g",
          B, Dc, with_prev, e);
    CHECK((e = rel_err(xhatg, xhat, nx)) < 1e-5, "context_forward B=%d Dc=%d prev=%d: xhat error %g",
          B, Dc, with_prev, e);
    CHECK((e = rel_err(rstdg, rstd, (size_t)B)) < 1e-5,
          "context_forward B=%d Dc=%d prev=%d: rstd error %g", B, Dc, with_prev, e);
    CHECK((e = rel_err(coutg, cout, nc)) < 1e-5, "context_forward B=%d Dc=%d prev=%d: c(t) error %g",
          B, Dc, with_prev, e);
    int clamped = 0;
    for (size_t i = 0; i < nc; i++)
        clamped += fabsf(cout[i]) == NLLM_CLAMP;
    CHECK(clamped > 0, "context case B=%d Dc=%d does not reach the clamp", B, Dc);

    /* backward from the CPU's forward state on both sides */
    gpu->upload(gpu, d_g, g, 4 * ng);
    gpu->upload(gpu, d_xh, xhat, 4 * nx);
    gpu->upload(gpu, d_rs, rstd, 4 * B);
    cpu->context_backward(cpu, &ac, dc, g, with_prev ? cprev : NULL, ldc, xhat, rstd, dn);
    gpu->context_backward(gpu, &ag, d_dc, d_g, with_prev ? d_cp : NULL, ldc, d_xh, d_rs, d_dn);
    dget(dcg, d_dc, 4 * nx, "context_backward");
    dget(gg, d_g, 4 * ng, "context_backward");
    dget(xhatg, d_xh, 4 * nx, "context_backward");
    dget(dng, d_dn, 4 * nx, "context_backward");
    CHECK((e = rel_err(dcg, dc, nx)) < 1e-5, "context_backward B=%d Dc=%d prev=%d: dc error %g",
          B, Dc, with_prev, e);
    CHECK((e = rel_err(gg, g, ng)) < 1e-5, "context_backward B=%d Dc=%d prev=%d: dG error %g", B,
          Dc, with_prev, e);
    CHECK((e = rel_err(xhatg, xhat, nx)) < 1e-5,
          "context_backward B=%d Dc=%d prev=%d: dn*xhat error %g", B, Dc, with_prev, e);
    CHECK((e = rel_err(dng, dn, nx)) < 1e-5, "context_backward B=%d Dc=%d prev=%d: dn error %g",
          B, Dc, with_prev, e);
    size_t maskd = 0;
    for (size_t i = 0; i < nx; i++)
        maskd += (dng[i] == 0.0f) != (dn[i] == 0.0f);
    CHECK(maskd == 0, "context_backward B=%d Dc=%d: clamp mask differs in %zu entries", B, Dc,
          maskd);
    float *dev[] = {d_g, d_b3, d_gm, d_bt, d_cp, d_xh, d_rs, d_co, d_dc, d_dn};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        gpu->free(gpu, dev[i]);
    float *host[] = {g, gg, bias3, gamma, beta, cprev, xhat, xhatg, rstd, rstdg,
                     cout, coutg, dc, dcg, dn, dng};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
}

static void test_context(void)
{
    context_case(5, 24, 1);
    context_case(37, 600, 1);
    context_case(37, 600, 0);
    context_case(64, 512, 1);
}

/* ---- softmax cross-entropy ------------------------------------------------------- */

static void xent_case(int N, int V)
{
    size_t ny = (size_t)N * V;
    float *y0 = xmalloc(4 * ny), *y = xmalloc(4 * ny), *yg = xmalloc(4 * ny),
          *bias = xmalloc(4 * (size_t)V);
    float *loss = xmalloc(4 * N), *lossg = xmalloc(4 * N), *hit = xmalloc(4 * N),
          *hitg = xmalloc(4 * N);
    int32_t *tgt = xmalloc(4 * (size_t)N);
    fill(y0, ny, 20, 2.0f);
    fill(bias, (size_t)V, 21, 0.5f);
    for (int r = 0; r < N; r++)
        tgt[r] = r % 5 == 1 ? 0 : (int32_t)nllm_rng_below(22, 1, 0, (uint64_t)r, (uint64_t)V);
    /* ties: the first maximum is the argmax */
    if (N > 3 && V > 9) {
        bias[5] = bias[9] = 0.0f; /* so that both logits are exactly 50 */
        for (int r = 2; r <= 3; r++)
            y0[(size_t)r * V + 5] = y0[(size_t)r * V + 9] = 50.0f;
        tgt[2] = 9; /* not a hit: index 5 comes first */
        tgt[3] = 5; /* a hit */
    }
    float *d_y = dput(NULL, 4 * ny), *d_b = dput(bias, 4 * (size_t)V), *d_l = dput(NULL, 4 * N),
          *d_h = dput(NULL, 4 * N);
    int32_t *d_t = dput(tgt, 4 * (size_t)N);
    nllm_step_dev_t sd = {.grad_scale = 1.0f / 7.0f};
    nllm_step_dev_t *d_sd = dput(&sd, sizeof sd);
    for (int grad = 0; grad < 2; grad++) {
        memcpy(y, y0, 4 * ny);
        gpu->upload(gpu, d_y, y0, 4 * ny);
        cpu->softmax_xent(cpu, y, bias, tgt, N, V, grad, &sd, loss, hit);
        gpu->softmax_xent(gpu, d_y, d_b, d_t, N, V, grad, d_sd, d_l, d_h);
        dget(yg, d_y, 4 * ny, "softmax_xent");
        dget(lossg, d_l, 4 * N, "softmax_xent");
        dget(hitg, d_h, 4 * N, "softmax_xent");
        double e;
        CHECK((e = rel_err(lossg, loss, (size_t)N)) < 1e-5,
              "softmax_xent N=%d V=%d grad=%d: loss error %g", N, V, grad, e);
        CHECK(ndiff(hitg, hit, (size_t)N) == 0, "softmax_xent N=%d V=%d: accuracy differs in %zu rows",
              N, V, ndiff(hitg, hit, (size_t)N));
        if (grad)
            CHECK((e = rel_err(yg, y, ny)) < 1e-5, "softmax_xent N=%d V=%d: gradient error %g", N,
                  V, e);
        else
            CHECK(ndiff(yg, y, ny) == 0, "softmax_xent N=%d V=%d: biased logits differ in %zu", N,
                  V, ndiff(yg, y, ny));
        if (N > 3 && V > 9)
            CHECK(hitg[2] == 0.0f && hitg[3] == 1.0f, "softmax_xent: ties must go to the first "
                  "maximum (rows 2, 3: hit %g %g, want 0 1)", (double)hitg[2], (double)hitg[3]);
        for (int r = 1; r < N; r += 5)
            CHECK(lossg[r] == 0.0f && hitg[r] == 0.0f, "softmax_xent: pad row %d has loss %g", r,
                  (double)lossg[r]);
    }
    gpu->free(gpu, d_y);
    gpu->free(gpu, d_b);
    gpu->free(gpu, d_l);
    gpu->free(gpu, d_h);
    gpu->free(gpu, d_t);
    gpu->free(gpu, d_sd);
    free(y0);
    free(y);
    free(yg);
    free(bias);
    free(loss);
    free(lossg);
    free(hit);
    free(hitg);
    free(tgt);
}

static void test_xent(void)
{
    xent_case(9, 37);
    xent_case(300, 1000);
    xent_case(2, 5000);
}

/* ---- reductions and Adam ------------------------------------------------------------ */

static void colsum_case(int N, int D, int ld)
{
    size_t nx = (size_t)N * ld;
    float *x = xmalloc(4 * nx), *out = xmalloc(4 * (size_t)D), *o1 = xmalloc(4 * (size_t)D),
          *o2 = xmalloc(4 * (size_t)D);
    fill(x, nx, 30, 1.0f);
    for (size_t i = 0; i < nx; i++)
        x[i] += 0.25f; /* a non-zero mean, as gradients have */
    float *d_x = dput(x, 4 * nx), *d_o = dput(NULL, 4 * (size_t)D);
    cpu->col_sum(cpu, out, x, N, D, ld);
    gpu->col_sum(gpu, d_o, d_x, N, D, ld);
    dget(o1, d_o, 4 * (size_t)D, "col_sum");
    gpu->col_sum(gpu, d_o, d_x, N, D, ld);
    dget(o2, d_o, 4 * (size_t)D, "col_sum");
    /* against the exact sums: the CPU's sequential float sum is itself off
     * by ~1e-6 of the scale at N = 32k, so both are held to the truth */
    double num = 0, numc = 0, den = 0;
    for (int j = 0; j < D; j++) {
        double s = 0;
        for (int r = 0; r < N; r++)
            s += x[(size_t)r * ld + j];
        num = fmax(num, fabs(s - o1[j]));
        numc = fmax(numc, fabs(s - out[j]));
        den = fmax(den, fabs(s));
        if (isnan(o1[j]))
            num = INFINITY;
    }
    CHECK(num <= 1e-5 * den || num <= numc, "col_sum N=%d D=%d: error %g of scale %g (CPU: %g)", N,
          D, num, den, numc);
    CHECK(rel_err(o1, out, (size_t)D) < 1e-4, "col_sum N=%d D=%d: differs from the CPU by %g", N,
          D, rel_err(o1, out, (size_t)D));
    CHECK(ndiff(o1, o2, (size_t)D) == 0, "col_sum N=%d D=%d: two GPU runs differ", N, D);
    gpu->free(gpu, d_x);
    gpu->free(gpu, d_o);
    free(x);
    free(out);
    free(o1);
    free(o2);
}

static void sqnorm_case(int64_t n)
{
    float *v = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    fill(v, (size_t)n, 31, 1.0f);
    float *d_v = dput(v, sizeof(float) * (size_t)(n > 0 ? n : 1));
    double sc = -1, s1 = -1, s2 = -1;
    double *d_s = dput(NULL, 2 * sizeof(double));
    cpu->sq_norm(cpu, v, n, &sc);
    gpu->sq_norm(gpu, d_v, n, d_s);
    gpu->sq_norm(gpu, d_v, n, d_s + 1);
    dget(&s1, d_s, sizeof s1, "sq_norm");
    dget(&s2, d_s + 1, sizeof s2, "sq_norm");
    gpu->free(gpu, d_s);
    CHECK(fabs(s1 - sc) <= 1e-10 * sc, "sq_norm n=%lld: %.17g vs CPU %.17g", (long long)n, s1, sc);
    CHECK(memcmp(&s1, &s2, sizeof s1) == 0, "sq_norm n=%lld: two GPU runs differ", (long long)n);
    gpu->free(gpu, d_v);
    free(v);
}

static void test_reductions(void)
{
    colsum_case(1000, 37, 40);
    colsum_case(100, 1000, 1000);
    colsum_case(32256, 512, 512);
    colsum_case(3, 3, 3);
    sqnorm_case(0);
    sqnorm_case(17);
    sqnorm_case(300001);
    sqnorm_case(5000003);
}

static void test_adam(void)
{
    int64_t n = 100003;
    size_t b = sizeof(float) * (size_t)n;
    float *p = xmalloc(b), *m = xmalloc(b), *v = xmalloc(b), *g = xmalloc(b);
    float *pg = xmalloc(b), *mg = xmalloc(b), *vg = xmalloc(b);
    fill(p, (size_t)n, 40, 1.0f);
    memset(m, 0, b);
    memset(v, 0, b);
    float *d_p = dput(p, b), *d_m = dput(m, b), *d_v = dput(v, b), *d_g = dput(NULL, b);
    nllm_step_dev_t *d_sd = dput(NULL, sizeof(nllm_step_dev_t));
    for (int t = 1; t <= 3; t++) {
        fill(g, (size_t)n, 41 + (uint64_t)t, 1.0f);
        gpu->upload(gpu, d_g, g, b);
        nllm_step_dev_t sd = {.adam = nllm_adam_consts(1e-3, 0.9, 0.999, 1e-8, 0.01, t, 0.5)};
        gpu->upload(gpu, d_sd, &sd, sizeof sd);
        cpu->adam(cpu, p, m, v, g, n, &sd);
        gpu->adam(gpu, d_p, d_m, d_v, d_g, n, d_sd);
    }
    gpu->free(gpu, d_sd);
    dget(pg, d_p, b, "adam");
    dget(mg, d_m, b, "adam");
    dget(vg, d_v, b, "adam");
    double e;
    CHECK((e = rel_err(pg, p, (size_t)n)) < 1e-5, "adam: parameter error %g", e);
    CHECK((e = rel_err(mg, m, (size_t)n)) < 1e-5, "adam: exp_avg error %g", e);
    CHECK((e = rel_err(vg, v, (size_t)n)) < 1e-5, "adam: exp_avg_sq error %g", e);
    gpu->free(gpu, d_p);
    gpu->free(gpu, d_m);
    gpu->free(gpu, d_v);
    gpu->free(gpu, d_g);
    free(p);
    free(m);
    free(v);
    free(g);
    free(pg);
    free(mg);
    free(vg);
}

/* The fused small-batch products against the CPU's GEMM followed by its
 * element-wise op: values to 1e-5 of the output's scale in fp32 (a ReLU at
 * a value within rounding of zero may go either way, costing nothing at
 * that bar), 1e-2 in tf32 and 4e-2 in bf16; deterministic. */
static void small_case(nllm_backend_t *g, int M, int N, int K, int epi, float beta, float p,
                       double tol)
{
    int lda = K + 3, ldw = K + 1, ldc = N;
    size_t na = (size_t)M * lda, nw = (size_t)N * ldw, nc = (size_t)M * ldc;
    size_t nw2 = (size_t)K * (N + 2);
    float *A = xmalloc(4 * na), *W = xmalloc(4 * (nw > nw2 ? nw : nw2)), *C = xmalloc(4 * nc),
          *C0 = xmalloc(4 * nc), *Cg = xmalloc(4 * nc), *Cg2 = xmalloc(4 * nc),
          *bias = xmalloc(4 * (size_t)N), *mask = xmalloc(4 * nc);
    fill(A, na, 70, 1.0f);
    fill(W, nw > nw2 ? nw : nw2, 71, 0.05f);
    fill(C0, nc, 72, 1.0f);
    fill(bias, (size_t)N, 73, 0.3f);
    fill(mask, nc, 74, 1.0f);
    nllm_step_dev_t sd = {.seed = 99, .rng_step = 5};
    /* g's own memory and queue: another backend's download would not wait
     * for g's kernels */
    size_t nwb = 4 * (nw > nw2 ? nw : nw2);
    float *dA = g->alloc(g, 4 * na), *dW = g->alloc(g, nwb), *dC = g->alloc(g, 4 * nc),
          *db = g->alloc(g, 4 * (size_t)N), *dm = g->alloc(g, 4 * nc);
    nllm_step_dev_t *dsd = g->alloc(g, sizeof sd);
    if (!dA || !dW || !dC || !db || !dm || !dsd) {
        fprintf(stderr, "FAIL: small_case: cuda alloc failed\n");
        exit(1);
    }
    g->upload(g, dA, A, 4 * na);
    g->upload(g, dW, W, nwb);
    g->upload(g, db, bias, 4 * (size_t)N);
    g->upload(g, dm, mask, 4 * nc);
    g->upload(g, dsd, &sd, sizeof sd);
    nllm_err_t err;
    const char *what = epi ? "small_nt (bias, relu, dropout)" : "small_nt";
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0: A W^T (+ bias, relu, dropout); pass 1: A W (+ mask) */
        memcpy(C, C0, 4 * nc);
        g->upload(g, dC, C0, 4 * nc);
        if (pass == 0) {
            cpu->gemm(cpu, 0, 1, M, N, K, 1.0f, A, lda, W, ldw, beta, C, ldc);
            if (epi)
                cpu->bias_relu_dropout_forward(cpu, C, bias, M, N, 3, 7, &sd, 4, p);
            g->small_nt(g, M, N, K, dA, lda, dW, ldw, beta, dC, ldc, epi ? db : NULL, 3, 7, dsd,
                        4, p);
        } else {
            what = epi ? "small_nn (mask)" : "small_nn";
            cpu->gemm(cpu, 0, 0, M, N, K, 1.0f, A, lda, W, N + 2, beta, C, ldc);
            if (epi)
                cpu->relu_dropout_backward(cpu, C, mask, (int64_t)nc, p);
            g->small_nn(g, M, N, K, dA, lda, dW, N + 2, beta, dC, ldc, epi ? dm : NULL, p);
        }
        g->download(g, Cg, dC, 4 * nc);
        if (g->sync(g, &err) < 0) {
            fprintf(stderr, "FAIL %s: %s\n", what, err.msg);
            exit(1);
        }
        g->upload(g, dC, C0, 4 * nc);
        if (pass == 0)
            g->small_nt(g, M, N, K, dA, lda, dW, ldw, beta, dC, ldc, epi ? db : NULL, 3, 7, dsd,
                        4, p);
        else
            g->small_nn(g, M, N, K, dA, lda, dW, N + 2, beta, dC, ldc, epi ? dm : NULL, p);
        g->download(g, Cg2, dC, 4 * nc);
        if (g->sync(g, &err) < 0) {
            fprintf(stderr, "FAIL %s: %s\n", what, err.msg);
            exit(1);
        }
        double e = rel_err(Cg, C, nc);
        CHECK(e < tol, "%s %s M=%d N=%d K=%d beta=%g p=%g: error %g (bar %g)",
              nllm_precision_name(g->precision), what, M, N, K, (double)beta, (double)p, e, tol);
        CHECK(ndiff(Cg, Cg2, nc) == 0, "%s M=%d N=%d K=%d: two runs differ", what, M, N, K);
    }
    void *dev[] = {dA, dW, dC, db, dm, dsd};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        g->free(g, dev[i]);
    free(A);
    free(W);
    free(C);
    free(C0);
    free(Cg);
    free(Cg2);
    free(bias);
    free(mask);
}

/* The products are opt-in (NLLM_CUDA_SMALL=1): backends made here with it
 * set, in each precision; the training tests run them too when the
 * variable is set for the whole test. */
static void test_small(void)
{
    static const nllm_precision_t precs[] = {NLLM_PREC_FP32, NLLM_PREC_TF32, NLLM_PREC_BF16};
    static const double tols[] = {1e-5, 1e-2, 4e-2};
    int shapes[][3] = {{1, 37, 100}, {5, 512, 512}, {16, 512, 512}, {16, 1536, 512},
                       {16, 512, 1536}, {32, 512, 300}, {8, 70, 513}};
    const char *was = getenv("NLLM_CUDA_SMALL");
    setenv("NLLM_CUDA_SMALL", "1", 1);
    for (int q = 0; q < 3; q++) {
        nllm_backend_t *g = gpu_backend(1, precs[q]);
        CHECK(g->small_nt && g->small_nn && g->small_batch >= 16,
              "NLLM_CUDA_SMALL=1: the CUDA backend offers no small-batch products");
        if (g->small_nt)
            for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
                if (q > 0 && i != 2 && i != 4)
                    continue; /* tf32 and bf16: two shapes */
                for (int epi = 0; epi < 2; epi++) {
                    small_case(g, shapes[i][0], shapes[i][1], shapes[i][2], epi, 0.0f, 0.1f,
                               tols[q]);
                    small_case(g, shapes[i][0], shapes[i][1], shapes[i][2], epi, 1.0f, 0.0f,
                               tols[q]);
                }
            }
        g->destroy(g);
    }
    if (was)
        setenv("NLLM_CUDA_SMALL", was, 1);
    else
        unsetenv("NLLM_CUDA_SMALL");
}

/* batch_stats, clip and the halt, against the CPU: the figures to 1e-12,
 * the clip decision bit for bit, a NaN norm halting Adam for good. */
static void test_step_ops(void)
{
    enum { N = 100000, P = 4099 };
    float *loss = xmalloc(sizeof(float) * N), *hit = xmalloc(sizeof(float) * N);
    fill(loss, N, 60, 2.0f);
    for (int r = 0; r < N; r++) {
        loss[r] = fabsf(loss[r]);
        hit[r] = r % 3 == 0 ? 1.0f : 0.0f;
    }
    nllm_step_out_t ring_c[3], ring_g[3];
    memset(ring_c, 0, sizeof ring_c);
    nllm_step_dev_t sd = {.slot = 1, .max_norm = 1.0};
    float *d_loss = dput(loss, sizeof(float) * N), *d_hit = dput(hit, sizeof(float) * N);
    nllm_step_dev_t *d_sd = dput(&sd, sizeof sd);
    nllm_step_out_t *d_ring = dput(ring_c, sizeof ring_c);
    cpu->batch_stats(cpu, loss, hit, N, &sd, ring_c);
    gpu->batch_stats(gpu, d_loss, d_hit, N, d_sd, d_ring);
    dget(ring_g, d_ring, sizeof ring_g, "batch_stats");
    CHECK(fabs(ring_g[1].loss_sum - ring_c[1].loss_sum) <= 1e-12 * ring_c[1].loss_sum,
          "batch_stats: loss %.17g vs CPU %.17g", ring_g[1].loss_sum, ring_c[1].loss_sum);
    CHECK(ring_g[1].correct == ring_c[1].correct, "batch_stats: %lld hits vs CPU %lld",
          (long long)ring_g[1].correct, (long long)ring_c[1].correct);
    CHECK(ring_g[0].loss_sum == 0 && ring_g[2].correct == 0, "batch_stats wrote outside slot 1");
    double again;
    gpu->batch_stats(gpu, d_loss, d_hit, N, d_sd, d_ring);
    dget(ring_g, d_ring, sizeof ring_g, "batch_stats");
    again = ring_g[1].loss_sum;
    gpu->batch_stats(gpu, d_loss, d_hit, N, d_sd, d_ring);
    dget(ring_g, d_ring, sizeof ring_g, "batch_stats");
    CHECK(memcmp(&again, &ring_g[1].loss_sum, sizeof again) == 0,
          "batch_stats: two GPU runs differ");

    /* the clip decision from a norm computed on the device */
    float *g = xmalloc(sizeof(float) * P);
    fill(g, P, 61, 0.1f);
    float *d_g = dput(g, sizeof(float) * P);
    cpu->sq_norm(cpu, g, P, &sd.sqnorm);
    gpu->sq_norm(gpu, d_g, P, &d_sd->sqnorm);
    cpu->clip(cpu, &sd, ring_c);
    gpu->clip(gpu, d_sd, d_ring);
    nllm_step_dev_t sdg;
    dget(&sdg, d_sd, sizeof sdg, "clip");
    dget(ring_g, d_ring, sizeof ring_g, "clip");
    CHECK(fabs(ring_g[1].grad_norm - ring_c[1].grad_norm) <= 1e-12 * ring_c[1].grad_norm,
          "clip: norm %.17g vs CPU %.17g", ring_g[1].grad_norm, ring_c[1].grad_norm);
    CHECK(sdg.adam.clip_scale == (float)nllm_clip_factor(ring_g[1].grad_norm, 1.0) &&
              ring_g[1].clip_scale == nllm_clip_factor(ring_g[1].grad_norm, 1.0),
          "clip: factor %.9g on the GPU for norm %.17g", (double)sdg.adam.clip_scale,
          ring_g[1].grad_norm);
    CHECK(!sdg.halted && !ring_g[1].halted, "clip: a finite norm halted the GPU");

    /* a NaN gradient: halted, Adam leaves every weight alone */
    g[7] = NAN;
    gpu->upload(gpu, d_g, g, sizeof(float) * P);
    float *w = xmalloc(sizeof(float) * P), *wb = xmalloc(sizeof(float) * P);
    fill(w, P, 62, 1.0f);
    float *d_w = dput(w, sizeof(float) * P), *d_m1 = dput(NULL, sizeof(float) * P),
          *d_m2 = dput(NULL, sizeof(float) * P);
    sd.adam = nllm_adam_consts(1e-2, 0.9, 0.999, 1e-8, 0, 1, 1.0);
    gpu->upload(gpu, (char *)d_sd + NLLM_STEP_DEV_HOST_OFFSET,
                (char *)&sd + NLLM_STEP_DEV_HOST_OFFSET,
                sizeof sd - NLLM_STEP_DEV_HOST_OFFSET);
    gpu->sq_norm(gpu, d_g, P, &d_sd->sqnorm);
    gpu->clip(gpu, d_sd, d_ring);
    gpu->adam(gpu, d_w, d_m1, d_m2, d_g, P, d_sd);
    dget(wb, d_w, sizeof(float) * P, "adam (halted)");
    dget(ring_g, d_ring, sizeof ring_g, "clip (NaN)");
    CHECK(ring_g[1].halted == 1 && isnan(ring_g[1].grad_norm),
          "clip: a NaN gradient gave norm %g, halted %d", ring_g[1].grad_norm, ring_g[1].halted);
    CHECK(ndiff(wb, w, P) == 0, "adam changed %zu weights of a halted model", ndiff(wb, w, P));
    g[7] = 0.0f; /* finite again: still halted */
    gpu->upload(gpu, d_g, g, sizeof(float) * P);
    gpu->sq_norm(gpu, d_g, P, &d_sd->sqnorm);
    gpu->clip(gpu, d_sd, d_ring);
    gpu->adam(gpu, d_w, d_m1, d_m2, d_g, P, d_sd);
    dget(wb, d_w, sizeof(float) * P, "adam (halted)");
    CHECK(ndiff(wb, w, P) == 0, "adam changed weights after a halt");
    void *dev[] = {d_loss, d_hit, d_sd, d_ring, d_g, d_w, d_m1, d_m2};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        gpu->free(gpu, dev[i]);
    free(loss);
    free(hit);
    free(g);
    free(w);
    free(wb);
}

static void test_memory(void)
{
    /* alloc zeroes; zero_rows touches only its rows; overlapping copy */
    enum { R = 9, LD = 13, W = 5 };
    float h[R * LD], back[R * LD];
    fill(h, R * LD, 50, 1.0f);
    float *d = dput(NULL, sizeof h);
    dget(back, d, sizeof h, "alloc");
    int nz = 0;
    for (int i = 0; i < R * LD; i++)
        nz += back[i] != 0.0f;
    CHECK(nz == 0, "alloc: %d of %d floats not zero", nz, R * LD);
    gpu->upload(gpu, d, h, sizeof h);
    gpu->zero_rows(gpu, d + 2, LD, W, R - 1);
    cpu->zero_rows(cpu, h + 2, LD, W, R - 1);
    dget(back, d, sizeof h, "zero_rows");
    CHECK(ndiff(back, h, R * LD) == 0, "zero_rows: %zu floats differ", ndiff(back, h, R * LD));
    gpu->copy(gpu, d + 3, d, sizeof(float) * 50); /* overlapping: memmove semantics */
    cpu->copy(cpu, h + 3, h, sizeof(float) * 50);
    dget(back, d, sizeof h, "copy");
    CHECK(ndiff(back, h, R * LD) == 0, "copy (overlapping): %zu floats differ", ndiff(back, h, R * LD));
    gpu->free(gpu, d);
    /* out of memory: NULL, and the backend stays usable (not under
     * --ops: compute-sanitizer reports the failed cudaMalloc as an error) */
    if (ops_only)
        return;
    void *huge = gpu->alloc(gpu, (size_t)1 << 50);
    CHECK(huge == NULL, "alloc of 1 PiB did not fail");
    nllm_err_t err;
    CHECK(gpu->sync(gpu, &err) == 0, "out-of-memory at alloc left a sticky error: %s", err.msg);
}

/* ---- the whole model ----------------------------------------------------------------- */

static const nllm_model_config_t tcfg = {50, 16, 32, 24, 3, 12, 0.1f};
enum { TB = 8, TSTEPS = 50 };

/* Windows of step s: <bos>, then words of which 3 in 4 follow from the
 * previous one (so there is something to learn), a random length, pad. */
static void make_windows(int32_t *w, int B, int S, int V, uint32_t s)
{
    for (int b = 0; b < B; b++) {
        int len = 4 + (int)nllm_rng_below(9, 1, s, (uint64_t)b, (uint64_t)(S - 3));
        int32_t prev = 2;
        for (int i = 0; i < S; i++) {
            uint64_t k = (uint64_t)(b * S + i);
            int32_t id = (int32_t)(1 + nllm_rng_below(9, 2, s, k, (uint64_t)(V - 1)));
            if (i > 1 && nllm_rng_below(9, 3, s, k, 4) != 0)
                id = (prev * 7 + 3) % (V - 1) + 1;
            w[b * S + i] = i == 0 ? 2 : i < len ? id : 0;
            prev = w[b * S + i];
        }
    }
}

static nllm_model_t *make_model(nllm_backend_t *be, const nllm_model_config_t *cfg, int B)
{
    nllm_model_t *m;
    nllm_err_t err;
    if (nllm_model_create(cfg, be, B, &m, &err) < 0) {
        fprintf(stderr, "FAIL: model on %s: %s\n", be->name, err.msg);
        exit(1);
    }
    nllm_model_init_weights(m, 42);
    return m;
}

/* Trains `steps` steps; losses[s] per step; final weights, exp_avg and
 * exp_avg_sq into state (3 * nfloats). queued: steps go into the stats
 * ring and are read in batches (nllm_model_train_step_async), else each is
 * waited for. Returns 0 or -1. */
static int train_run_mode(nllm_backend_t *be, const nllm_model_config_t *cfg, int B, int steps,
                          double *losses, double *norms, float *state, int queued)
{
    nllm_model_t *m = make_model(be, cfg, B);
    int S = cfg->max_seq_length;
    int32_t *w = xmalloc(sizeof(int32_t) * (size_t)B * S);
    nllm_optim_t opt = {1e-3, 0.9, 0.999, 1e-8, 0.0, 1.0};
    nllm_err_t err;
    int rc = 0, pending = 0;
    nllm_step_stats_t ring[NLLM_STATS_RING];
    for (int s = 0; s < steps && rc == 0; s++) {
        make_windows(w, B, S, cfg->vocab_size, (uint32_t)s);
        nllm_step_stats_t st;
        if (queued) {
            rc = nllm_model_train_step_async(m, w, B, 42, (uint32_t)s, s + 1, &opt, pending++,
                                             &err);
            if (rc == 0 && (pending == NLLM_STATS_RING || s == steps - 1)) {
                rc = nllm_model_read_stats(m, 0, pending, ring, &err);
                for (int i = 0; rc == 0 && i < pending; i++) {
                    int k = s - pending + 1 + i;
                    losses[k] = ring[i].batch.loss_sum / (double)ring[i].batch.tokens;
                    norms[k] = ring[i].grad_norm;
                }
                pending = 0;
            }
        } else {
            rc = nllm_model_train_step(m, w, B, 42, (uint32_t)s, s + 1, &opt, &st, &err);
            if (rc == 0) {
                losses[s] = st.batch.loss_sum / (double)st.batch.tokens;
                norms[s] = st.grad_norm;
            }
        }
        if (rc < 0) {
            fprintf(stderr, "FAIL: train step %d on %s: %s\n", s, be->name, err.msg);
            break;
        }
    }
    int64_t nf = nllm_model_num_floats(m);
    if (rc == 0 && nllm_model_get_state(m, state, state + nf, state + 2 * nf, &err) < 0) {
        fprintf(stderr, "FAIL: get_state on %s: %s\n", be->name, err.msg);
        rc = -1;
    }
    free(w);
    nllm_model_destroy(m);
    return rc;
}

static int train_run(nllm_backend_t *be, const nllm_model_config_t *cfg, int B, int steps,
                     double *losses, double *norms, float *state)
{
    return train_run_mode(be, cfg, B, steps, losses, norms, state, 0);
}

/* A CUDA backend on device 0 with graphs on or off and a precision
 * (graphs 2: graphs on and the second queue too). */
static nllm_backend_t *gpu_backend(int graphs, nllm_precision_t prec)
{
    nllm_backend_t *be;
    nllm_err_t err;
    if (!graphs)
        setenv("NLLM_CUDA_GRAPHS", "0", 1);
    if (graphs == 2)
        setenv("NLLM_CUDA_AUX", "1", 1);
    int rc = nllm_cuda_backend_create(0, &be, &err);
    unsetenv("NLLM_CUDA_GRAPHS");
    unsetenv("NLLM_CUDA_AUX");
    if (rc < 0 || nllm_backend_set_precision(be, prec, &err) < 0) {
        fprintf(stderr, "FAIL: cuda backend (%s): %s\n", nllm_precision_name(prec), err.msg);
        exit(1);
    }
    return be;
}

static int64_t nfloats_of(const nllm_model_config_t *cfg)
{
    nllm_param_info_t *p;
    int np;
    int64_t nf = 0;
    nllm_err_t err;
    if (nllm_model_layout(cfg, &p, &np, &nf, &err) < 0) {
        fprintf(stderr, "layout: %s\n", err.msg);
        exit(1);
    }
    free(p);
    return nf;
}

/* Gradients of one training step (dropout on, pad targets) per tensor. */
static void test_model_grads(void)
{
    nllm_model_t *mc = make_model(cpu, &tcfg, TB), *mg = make_model(gpu, &tcfg, TB);
    int S = tcfg.max_seq_length;
    int32_t w[TB * 12];
    make_windows(w, TB, S, tcfg.vocab_size, 1000);
    int64_t nf = nllm_model_num_floats(mc);
    float *gc = xmalloc(sizeof(float) * nf), *gg = xmalloc(sizeof(float) * nf);
    nllm_batch_stats_t sc, sg;
    nllm_err_t err;
    CHECK(nllm_model_forward(mc, w, TB, 1, 42, 3, 1, &sc, &err) == 0, "cpu forward: %s", err.msg);
    CHECK(nllm_model_forward(mg, w, TB, 1, 42, 3, 1, &sg, &err) == 0, "gpu forward: %s", err.msg);
    CHECK(fabs(sg.loss_sum - sc.loss_sum) <= 1e-5 * fabs(sc.loss_sum),
          "model forward: loss sum %.9g vs CPU %.9g", sg.loss_sum, sc.loss_sum);
    CHECK(sg.tokens == sc.tokens && sg.correct == sc.correct,
          "model forward: tokens/correct %lld/%lld vs CPU %lld/%lld", (long long)sg.tokens,
          (long long)sg.correct, (long long)sc.tokens, (long long)sc.correct);
    CHECK(nllm_model_backward(mc, &err) == 0, "cpu backward: %s", err.msg);
    CHECK(nllm_model_backward(mg, &err) == 0, "gpu backward: %s", err.msg);
    nllm_model_get_grads(mc, gc, &err);
    CHECK(nllm_model_get_grads(mg, gg, &err) == 0, "gpu grads: %s", err.msg);
    for (int i = 0; i < nllm_model_num_params(mc); i++) {
        const nllm_param_info_t *p = nllm_model_param(mc, i);
        double e = rel_err(gg + p->offset, gc + p->offset, (size_t)p->numel);
        CHECK(e < 1e-4, "model gradient of %s: relative error %g", p->name, e);
    }
    double nc = nllm_model_grad_norm(mc), ng = nllm_model_grad_norm(mg);
    CHECK(fabs(ng - nc) <= 1e-5 * nc, "model grad norm %.9g vs CPU %.9g", ng, nc);
    free(gc);
    free(gg);
    nllm_model_destroy(mc);
    nllm_model_destroy(mg);
}

static void test_model_train(void)
{
    int64_t nf = nfloats_of(&tcfg);
    float *wc = xmalloc(sizeof(float) * 3 * nf), *wg = xmalloc(sizeof(float) * 3 * nf),
          *wg2 = xmalloc(sizeof(float) * 3 * nf);
    double lc[TSTEPS], lg[TSTEPS], lg2[TSTEPS], nc[TSTEPS], ng[TSTEPS], ng2[TSTEPS];
    CHECK(train_run(cpu, &tcfg, TB, TSTEPS, lc, nc, wc) == 0, "cpu training failed");
    CHECK(train_run(gpu, &tcfg, TB, TSTEPS, lg, ng, wg) == 0, "gpu training failed");
    CHECK(train_run(gpu, &tcfg, TB, TSTEPS, lg2, ng2, wg2) == 0, "gpu training failed");
    double lerr = 0;
    int worst = 0;
    for (int s = 0; s < TSTEPS; s++) {
        double e = fabs(lg[s] - lc[s]) / fabs(lc[s]);
        if (!(e <= lerr)) { /* NaN-safe */
            lerr = e;
            worst = s;
        }
    }
    CHECK(lerr < 1e-4, "training: loss of step %d is %.9g on the GPU, %.9g on the CPU (rel %g)",
          worst, lg[worst], lc[worst], lerr);
    double first = 0, last = 0;
    for (int s = 0; s < 5; s++) {
        first += lc[s] / 5;
        last += lc[TSTEPS - 5 + s] / 5;
    }
    CHECK(last < first - 0.05, "training: the loss did not go down (mean of the first 5 "
          "steps %g, of the last 5 %g)", first, last);
    /* final weights: Adam turns a gradient's sign into a step of lr = 1e-3,
     * so float noise in a near-zero gradient can move a weight by up to a
     * step; agreement to a tenth of a step everywhere is the bar */
    double wmax = 0;
    int64_t wat = 0;
    for (int64_t i = 0; i < nf; i++) {
        double d = fabs((double)wg[i] - (double)wc[i]);
        if (!(d <= wmax)) {
            wmax = d;
            wat = i;
        }
    }
    CHECK(wmax < 1e-4, "training: final weight %lld is %.9g on the GPU, %.9g on the CPU",
          (long long)wat, (double)wg[wat], (double)wc[wat]);
    CHECK(ndiff(wg, wg2, (size_t)(3 * nf)) == 0 && memcmp(lg, lg2, sizeof lg) == 0,
          "training: two GPU runs from the same seed differ (%zu of %lld state floats)",
          ndiff(wg, wg2, (size_t)(3 * nf)), (long long)(3 * nf));
    printf("     losses: first 5 steps %.4f, last 5 %.4f (cpu); gpu vs cpu: max loss rel "
           "diff %.2g, max weight diff %.2g\n",
           first, last, lerr, wmax);
    free(wc);
    free(wg);
    free(wg2);
}

/* The step recorded as a CUDA graph gives the bits of the step run op by
 * op, queued steps the bits of waited-for ones, and validation forwards
 * (also recorded) the figures of eager ones. */
static void test_model_graphs(void)
{
    nllm_model_config_t cfg = {200, 32, 64, 48, 4, 24, 0.1f};
    enum { B = 16, STEPS = 70 }; /* more than one ring of queued steps */
    int64_t nf = nfloats_of(&cfg);
    float *se = xmalloc(sizeof(float) * 3 * nf), *sg = xmalloc(sizeof(float) * 3 * nf),
          *sq = xmalloc(sizeof(float) * 3 * nf);
    double le[STEPS], lg[STEPS], lq[STEPS], ne[STEPS], ng[STEPS], nq[STEPS];
    nllm_backend_t *eager = gpu_backend(0, NLLM_PREC_FP32), *graphs = gpu_backend(1, NLLM_PREC_FP32);
    CHECK(train_run(eager, &cfg, B, STEPS, le, ne, se) == 0, "eager training failed");
    CHECK(train_run(graphs, &cfg, B, STEPS, lg, ng, sg) == 0, "graph training failed");
    CHECK(train_run_mode(graphs, &cfg, B, STEPS, lq, nq, sq, 1) == 0, "queued training failed");
    uint64_t launches = 0, eb = 0;
    char why[256];
    nllm_cuda_graph_stats(graphs, &launches, &eb, why, sizeof why);
    CHECK(launches >= 2 * (STEPS - 2), "graphs: %llu launches for %d steps (eager bodies %llu; "
          "last capture failure: %s)", (unsigned long long)launches, 2 * STEPS,
          (unsigned long long)eb, why[0] ? why : "none");
    CHECK(ndiff(sg, se, (size_t)(3 * nf)) == 0 && memcmp(lg, le, sizeof le) == 0 &&
              memcmp(ng, ne, sizeof ne) == 0,
          "graphs: a graph-replayed run differs from the eager run (%zu of %lld state floats; "
          "loss %.9g vs %.9g at the end)",
          ndiff(sg, se, (size_t)(3 * nf)), (long long)(3 * nf), lg[STEPS - 1], le[STEPS - 1]);
    CHECK(ndiff(sq, se, (size_t)(3 * nf)) == 0 && memcmp(lq, le, sizeof le) == 0 &&
              memcmp(nq, ne, sizeof ne) == 0,
          "queued steps differ from waited-for steps (%zu of %lld state floats)",
          ndiff(sq, se, (size_t)(3 * nf)), (long long)(3 * nf));
    /* the second queue (weight gradients by chunks beside BPTT, in a graph):
     * the same training up to float summation order, and deterministic */
    nllm_backend_t *two = gpu_backend(2, NLLM_PREC_FP32);
    CHECK(two->aux_begin != NULL && graphs->aux_begin == NULL,
          "NLLM_CUDA_AUX=1 did not turn the second queue on (or it is on by default)");
    double ls[STEPS], ns[STEPS], ls2[STEPS], ns2[STEPS];
    CHECK(train_run(two, &cfg, B, STEPS, ls, ns, sq) == 0, "two-queue training failed");
    CHECK(train_run(two, &cfg, B, STEPS, ls2, ns2, sg) == 0, "two-queue training failed");
    double lmax = 0;
    for (int s2 = 0; s2 < STEPS; s2++) {
        double d = fabs(ls[s2] - le[s2]) / fabs(le[s2]);
        if (!(d <= lmax))
            lmax = d;
    }
    CHECK(lmax < 1e-4, "second queue: loss differs from the single queue's by %g", lmax);
    CHECK(ndiff(sq, sg, (size_t)(3 * nf)) == 0 && memcmp(ls, ls2, sizeof ls) == 0,
          "second queue: two runs differ");
    printf("     second queue vs one queue: max loss rel diff %.2g over %d steps\n", lmax, STEPS);
    two->destroy(two);
    /* validation forwards: recorded after the first, same figures as eager */
    nllm_model_t *me = make_model(eager, &cfg, B), *mg = make_model(graphs, &cfg, B);
    int32_t *w = xmalloc(sizeof(int32_t) * B * (size_t)cfg.max_seq_length);
    nllm_err_t err;
    for (int k = 0; k < 5; k++) {
        make_windows(w, B - (k & 1), cfg.max_seq_length, cfg.vocab_size, 500 + (uint32_t)k);
        nllm_batch_stats_t a, b;
        int bb = B - (k & 1);
        CHECK(nllm_model_forward(me, w, bb, 0, 0, 0, 0, &a, &err) == 0, "eager forward: %s",
              err.msg);
        CHECK(nllm_model_forward(mg, w, bb, 0, 0, 0, 0, &b, &err) == 0, "graph forward: %s",
              err.msg);
        CHECK(memcmp(&a.loss_sum, &b.loss_sum, sizeof a.loss_sum) == 0 &&
                  a.correct == b.correct && a.tokens == b.tokens,
              "validation forward %d: %.17g/%lld recorded vs %.17g/%lld eager", k, b.loss_sum,
              (long long)b.correct, a.loss_sum, (long long)a.correct);
    }
    printf("     graphs: %llu launches, %llu eager bodies; device memory %.1f MiB now, "
           "peak %.1f MiB\n",
           (unsigned long long)launches, (unsigned long long)eb,
           (double)graphs->mem_bytes / 1048576.0, (double)graphs->mem_peak / 1048576.0);
    CHECK(graphs->mem_peak >= nllm_model_device_bytes(mg), "mem_peak %zu below the model's "
          "%zu bytes", graphs->mem_peak, nllm_model_device_bytes(mg));
    free(w);
    nllm_model_destroy(me);
    nllm_model_destroy(mg);
    eager->destroy(eager);
    graphs->destroy(graphs);
    free(se);
    free(sg);
    free(sq);
}

/* tf32 and bf16 against the CPU's fp32. The bars: a GEMM's error relative
 * to the output's scale below 1e-2 (tf32: 10-bit mantissa, unit roundoff
 * 4.9e-4) or 4e-2 (bf16: 7 bits, 3.9e-3), bf16 not giving tf32's bits;
 * 50 training steps within 3e-2 (tf32) or 1e-1 (bf16) of the CPU's loss at
 * every step, the loss going down, and two runs bit-identical. */
static void test_precisions(void)
{
    static const nllm_precision_t precs[] = {NLLM_PREC_TF32, NLLM_PREC_BF16};
    static const double gemm_tol[] = {1e-2, 4e-2}, loss_tol[] = {3e-2, 1e-1};
    int64_t nf = nfloats_of(&tcfg);
    float *wc = xmalloc(sizeof(float) * 3 * nf), *w1 = xmalloc(sizeof(float) * 3 * nf),
          *w2 = xmalloc(sizeof(float) * 3 * nf);
    double lc[TSTEPS], l1[TSTEPS], l2[TSTEPS], nc[TSTEPS], n1[TSTEPS], n2[TSTEPS];
    float *Ctf = xmalloc(sizeof(float) * 300 * 257);
    CHECK(train_run(cpu, &tcfg, TB, TSTEPS, lc, nc, wc) == 0, "cpu training failed");
    for (int q = 0; q < 2; q++) {
        const char *pn = nllm_precision_name(precs[q]);
        nllm_backend_t *be = gpu_backend(1, precs[q]);
        int M = 300, N = 257, K = 513;
        float *A = xmalloc(sizeof(float) * M * K), *Bm = xmalloc(sizeof(float) * K * N),
              *C = xmalloc(sizeof(float) * M * N), *Cg = xmalloc(sizeof(float) * M * N);
        fill(A, (size_t)M * K, 1, 1.0f);
        fill(Bm, (size_t)K * N, 2, 1.0f);
        nllm_err_t err;
        float *dA = be->alloc(be, sizeof(float) * M * K), *dB = be->alloc(be, sizeof(float) * K * N),
              *dC = be->alloc(be, sizeof(float) * M * N);
        CHECK(dA && dB && dC, "%s: alloc failed", pn);
        be->upload(be, dA, A, sizeof(float) * M * K);
        be->upload(be, dB, Bm, sizeof(float) * K * N);
        cpu->gemm(cpu, 0, 0, M, N, K, 1.0f, A, K, Bm, N, 0.0f, C, N);
        be->gemm(be, 0, 0, M, N, K, 1.0f, dA, K, dB, N, 0.0f, dC, N);
        be->download(be, Cg, dC, sizeof(float) * M * N);
        CHECK(be->sync(be, &err) == 0, "%s gemm: %s", pn, err.msg);
        double e = rel_err(Cg, C, (size_t)M * N);
        CHECK(e < gemm_tol[q], "%s gemm %dx%dx%d: error %g of the output's scale (bar %g)", pn,
              M, N, K, e, gemm_tol[q]);
        CHECK(e > 0.0, "%s gemm: bit-identical to fp32: the precision was not applied", pn);
        if (q == 0)
            memcpy(Ctf, Cg, sizeof(float) * M * N);
        else
            CHECK(ndiff(Cg, Ctf, (size_t)M * N) > 0,
                  "bf16 gemm gives tf32's bits: bf16 operands were not applied");
        be->free(be, dA);
        be->free(be, dB);
        be->free(be, dC);
        CHECK(train_run(be, &tcfg, TB, TSTEPS, l1, n1, w1) == 0, "%s training failed", pn);
        CHECK(train_run(be, &tcfg, TB, TSTEPS, l2, n2, w2) == 0, "%s training failed", pn);
        CHECK(ndiff(w1, w2, (size_t)(3 * nf)) == 0 && memcmp(l1, l2, sizeof l1) == 0,
              "%s: two runs from the same seed differ", pn);
        double worst = 0, first = 0, last = 0;
        for (int s = 0; s < TSTEPS; s++) {
            double d = fabs(l1[s] - lc[s]) / fabs(lc[s]);
            if (!(d <= worst))
                worst = d;
        }
        for (int s = 0; s < 5; s++) {
            first += l1[s] / 5;
            last += l1[TSTEPS - 5 + s] / 5;
        }
        CHECK(worst < loss_tol[q], "%s: loss differs from the CPU's fp32 by %g (bar %g)", pn,
              worst, loss_tol[q]);
        CHECK(last < first - 0.05, "%s: the loss did not go down (%g -> %g)", pn, first, last);
        printf("     %s: gemm error %.2g of scale; training loss max rel diff vs fp32 CPU %.2g; "
               "deterministic\n",
               pn, e, worst);
        free(A);
        free(Bm);
        free(C);
        free(Cg);
        be->destroy(be);
    }
    free(wc);
    free(w1);
    free(w2);
    free(Ctf);
}

/* ---- digest mode --------------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int run_digest(nllm_precision_t prec)
{
    nllm_model_config_t cfg = {200, 32, 64, 48, 4, 24, 0.1f};
    enum { B = 64, STEPS = 30 };
    int64_t nf = nfloats_of(&cfg);
    float *st = xmalloc(sizeof(float) * 3 * nf);
    double loss[STEPS], norm[STEPS];
    nllm_err_t err;
    if (nllm_backend_set_precision(gpu, prec, &err) < 0) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    if (train_run(gpu, &cfg, B, STEPS, loss, norm, st) < 0)
        return 1;
    uint64_t h = 0xcbf29ce484222325ULL;
    h = fnv1a(h, st, sizeof(float) * 3 * (size_t)nf);
    h = fnv1a(h, loss, sizeof loss);
    h = fnv1a(h, norm, sizeof norm);
    printf("digest %016llx loss %.9f precision %s\n", (unsigned long long)h, loss[STEPS - 1],
           nllm_precision_name(prec));
    free(st);
    return 0;
}

int main(int argc, char **argv)
{
    ops_only = argc > 1 && strcmp(argv[1], "--ops") == 0;
    int digest = argc > 1 && strcmp(argv[1], "--digest") == 0;
    nllm_precision_t prec = NLLM_PREC_FP32;
    nllm_err_t perr;
    if ((argc > 1 && !ops_only && !digest) || argc > 3 ||
        (argc == 3 && (!digest || nllm_precision_parse(argv[2], &prec, &perr) < 0))) {
        fprintf(stderr, "usage: test_cuda_ops [--ops | --digest [fp32|tf32|bf16]]\n");
        return 2;
    }
    if (!nllm_cuda_available() || nllm_cuda_device_count() == 0) {
        printf("no CUDA device: skipping\n");
        return 77;
    }
    char name[256];
    uint64_t total = 0, fr = 0;
    if (nllm_cuda_device_info(0, name, sizeof name, &total, &fr) == 0)
        printf("device cuda:0: %s, %.1f GiB, %.1f GiB free\n", name, (double)total / (1 << 30),
               (double)fr / (1 << 30));
    nllm_err_t err;
    if (nllm_cuda_backend_create(0, &gpu, &err) < 0) {
        fprintf(stderr, "FAIL: cuda backend: %s\n", err.msg);
        return 1;
    }
    if (nllm_cpu_backend_create(1, &cpu, &err) < 0) {
        fprintf(stderr, "FAIL: cpu backend: %s\n", err.msg);
        return 1;
    }
    int rc;
    if (digest) {
        rc = run_digest(prec);
    } else {
        RUN(test_memory);
        RUN(test_gemm);
        RUN(test_embedding);
        RUN(test_bias_relu_dropout);
        RUN(test_context);
        RUN(test_xent);
        RUN(test_reductions);
        RUN(test_adam);
        RUN(test_step_ops);
        RUN(test_small);
        if (!ops_only) {
            RUN(test_model_grads);
            RUN(test_model_train);
            RUN(test_model_graphs);
            RUN(test_precisions);
        }
        rc = TEST_REPORT();
    }
    gpu->destroy(gpu);
    cpu->destroy(cpu);
    return rc;
}
