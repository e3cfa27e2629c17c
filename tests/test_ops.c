/* test_ops.c -- every CPU backend op against a plain reference.
 *
 * The references are the obvious loops in double precision (or, for the
 * dropout mask, nllm_dropout_keep() called per element), so a fast path
 * that reorders or vectorises work is checked against the definition.
 * Also: the Philox known-answer vectors and thread-count independence.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "nllm_math.h"
#include "philox.h"
#include "testutil.h"

static nllm_backend_t *be1, *be2; /* 1 and 2 threads */

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * nllm_rng_normal(seed, 99, i));
}

/* ---- Philox ------------------------------------------------------------ */

static void test_philox_kat(void)
{
    struct {
        uint32_t c[4], k[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        nllm_philox_ctr_t c;
        memcpy(c.v, kat[i].c, sizeof c.v);
        nllm_philox_ctr_t r = nllm_philox4x32_10(c, kat[i].k[0], kat[i].k[1]);
        CHECK(memcmp(r.v, kat[i].out, sizeof r.v) == 0, "philox KAT %zu: got %08x %08x %08x %08x",
              i, r.v[0], r.v[1], r.v[2], r.v[3]);
    }
    /* the dropout rate is what was asked for */
    int64_t kept = 0, n = 1 << 20;
    for (int64_t i = 0; i < n; i++)
        kept += nllm_dropout_keep(42, 3, 7, (uint64_t)i, 0.25f);
    double rate = 1.0 - (double)kept / (double)n;
    CHECK(fabs(rate - 0.25) < 0.003, "dropout rate %.4f, want 0.25", rate);
}

/* Every vector variant of philox.h against nllm_rng_block, block for
 * block: counters whose low word carries into the high word, odd counts
 * (partial vectors), a seed with both halves set. */
static void test_philox_variants(void)
{
    const char *names[] = {"scalar", "avx2", "avx512"};
    const uint64_t starts[] = {0, 12345, 0xFFFFFFF5ull, 0x1FFFFFFF9ull};
    const int counts[] = {1, 7, 16, 17, 64};
    uint32_t out[4 * 64];
    int ran = 0;
    for (int v = 0; v < 3; v++) {
        nllm_philox_blocks_fn fn = nllm_philox_variant(names[v]);
        if (!fn) {
            printf("note: philox %s: not on this CPU\n", names[v]);
            continue;
        }
        ran++;
        int bad = 0;
        for (size_t si = 0; si < sizeof starts / sizeof starts[0]; si++)
            for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
                memset(out, 0xA5, sizeof out);
                fn(0x0123456789ABCDEFull, 7, 3, starts[si], counts[ci], out);
                for (int k = 0; k < counts[ci]; k++) {
                    nllm_philox_ctr_t r =
                        nllm_rng_block(0x0123456789ABCDEFull, 7, 3, starts[si] + (uint64_t)k);
                    bad += memcmp(r.v, out + 4 * k, sizeof r.v) != 0;
                }
            }
        CHECK(bad == 0, "philox %s: %d blocks differ from nllm_rng_block", names[v], bad);
    }
    CHECK(ran >= 1 && nllm_philox_best() != NULL, "philox: the scalar variant and a best one");
}

/* ---- GEMM -------------------------------------------------------------- */

static void test_gemm(void)
{
    int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {64, 128, 96}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
                int arows = ta ? K : M, brows = tb ? N : K;
                float *A = malloc(sizeof(float) * arows * lda);
                float *Bm = malloc(sizeof(float) * brows * ldb);
                float *C = malloc(sizeof(float) * M * ldc);
                float *C0 = malloc(sizeof(float) * M * ldc);
                fill(A, (size_t)arows * lda, 1, 1.0f);
                fill(Bm, (size_t)brows * ldb, 2, 1.0f);
                fill(C, (size_t)M * ldc, 3, 1.0f);
                memcpy(C0, C, sizeof(float) * M * ldc);
                float alpha = 0.75f, beta = s % 2 ? 0.0f : 0.5f;
                be2->gemm(be2, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
                double maxerr = 0;
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        double acc = 0;
                        for (int k = 0; k < K; k++) {
                            double a = ta ? A[k * lda + i] : A[i * lda + k];
                            double b = tb ? Bm[j * ldb + k] : Bm[k * ldb + j];
                            acc += a * b;
                        }
                        double ref = alpha * acc + (beta == 0 ? 0 : beta * C0[i * ldc + j]);
                        double e = fabs(ref - C[i * ldc + j]) / (1 + fabs(ref));
                        if (e > maxerr)
                            maxerr = e;
                    }
                CHECK(maxerr < 1e-5, "gemm %dx%dx%d ta=%d tb=%d: error %g", M, N, K, ta, tb,
                      maxerr);
                free(A);
                free(Bm);
                free(C);
                free(C0);
            }
}

/* ---- embedding ----------------------------------------------------------- */

/* Small (one thread runs it) and large enough that the pool splits it;
 * few ids, so many rows add into the same table row. */
static void embedding_case(int V, int D, int N, int ld)
{
    float *table = malloc(sizeof(float) * V * D), *out = calloc((size_t)N * ld, sizeof(float));
    float *out2 = calloc((size_t)N * ld, sizeof(float));
    float *dtable = calloc((size_t)V * D, sizeof(float));
    float *dtable2 = calloc((size_t)V * D, sizeof(float));
    double *ref = calloc((size_t)V * D, sizeof(double));
    int32_t *ids = malloc(sizeof(int32_t) * N);
    for (int r = 0; r < N; r++)
        ids[r] = (int32_t)nllm_rng_below(5, 1, 0, (uint64_t)r, (uint64_t)V);
    fill(table, (size_t)V * D, 4, 1.0f);
    be1->embedding_forward(be1, out, ld, table, ids, N, D);
    be2->embedding_forward(be2, out2, ld, table, ids, N, D);
    int bad = 0, bad2 = 0;
    for (int r = 0; r < N; r++)
        for (int j = 0; j < D; j++) {
            bad += out[r * ld + j] != table[ids[r] * D + j];
            bad2 += out2[r * ld + j] != table[ids[r] * D + j];
        }
    CHECK(bad == 0 && bad2 == 0, "embedding_forward V=%d D=%d N=%d: %d wrong values (1 thread), "
          "%d (2 threads)", V, D, N, bad, bad2);
    float *dout = malloc(sizeof(float) * N * ld);
    fill(dout, (size_t)N * ld, 5, 1.0f);
    be1->embedding_backward(be1, dtable, dout, ld, ids, N, D);
    be2->embedding_backward(be2, dtable2, dout, ld, ids, N, D);
    for (int r = 0; r < N; r++)
        for (int j = 0; j < D; j++)
            ref[ids[r] * D + j] += dout[r * ld + j];
    double maxerr = 0;
    for (int i = 0; i < V * D; i++)
        maxerr = fmax(maxerr, fabs(ref[i] - dtable[i]) / (1.0 + fabs(ref[i])));
    CHECK(maxerr < 1e-5, "embedding_backward V=%d D=%d N=%d: error %g", V, D, N, maxerr);
    CHECK(memcmp(dtable, dtable2, sizeof(float) * V * D) == 0,
          "embedding_backward V=%d D=%d N=%d: 1 and 2 threads differ", V, D, N);
    free(table);
    free(out);
    free(out2);
    free(dtable);
    free(dtable2);
    free(ref);
    free(dout);
    free(ids);
}

static void test_embedding(void)
{
    embedding_case(13, 6, 40, 9);
    embedding_case(37, 256, 1024, 260);
}

/* ---- bias + ReLU + dropout ---------------------------------------------- */

static void test_bias_relu_dropout(void)
{
    int dims[][3] = {{3, 5, 4}, {16, 64, 9}, {7, 513, 3}}; /* B, H, T */
    float ps[] = {0.0f, 0.1f, 0.5f};
    for (size_t d = 0; d < 3; d++)
        for (size_t q = 0; q < 3; q++) {
            int B = dims[d][0], H = dims[d][1], T = dims[d][2], t = T - 1;
            float p = ps[q];
            uint64_t seed = 0x1234567890ULL;
            uint32_t stream = 5, step = 77;
            size_t n = (size_t)B * H;
            float *x = malloc(sizeof(float) * n), *x2 = malloc(sizeof(float) * n),
                  *x0 = malloc(sizeof(float) * n), *bias = malloc(sizeof(float) * H);
            fill(x0, n, 6, 1.0f);
            fill(bias, (size_t)H, 7, 0.3f);
            memcpy(x, x0, sizeof(float) * n);
            memcpy(x2, x0, sizeof(float) * n);
            nllm_step_dev_t sd = {.seed = seed, .rng_step = step};
            be1->bias_relu_dropout_forward(be1, x, bias, B, H, t, T, &sd, stream, p);
            be2->bias_relu_dropout_forward(be2, x2, bias, B, H, t, T, &sd, stream, p);
            int bad = 0;
            float scale = nllm_dropout_scale(p);
            for (int b = 0; b < B; b++)
                for (int j = 0; j < H; j++) {
                    uint64_t idx = ((uint64_t)b * T + t) * H + j;
                    float v = x0[b * H + j] + bias[j];
                    int keep = p == 0.0f || nllm_dropout_keep(seed, stream, step, idx, p);
                    float ref = v > 0 && keep ? v * scale : 0.0f;
                    bad += ref != x[b * H + j];
                }
            CHECK(bad == 0, "bias_relu_dropout B=%d H=%d p=%g: %d of %zu differ from the mask "
                  "definition", B, H, (double)p, bad, n);
            CHECK(memcmp(x, x2, sizeof(float) * n) == 0,
                  "bias_relu_dropout: 1 and 2 threads differ (B=%d H=%d)", B, H);
            /* backward: gradient passes where the output is positive */
            float *dx = malloc(sizeof(float) * n), *dx0 = malloc(sizeof(float) * n);
            fill(dx0, n, 8, 1.0f);
            memcpy(dx, dx0, sizeof(float) * n);
            be2->relu_dropout_backward(be2, dx, x, (int64_t)n, p);
            bad = 0;
            for (size_t i = 0; i < n; i++)
                bad += dx[i] != (x[i] > 0 ? dx0[i] * scale : 0.0f);
            CHECK(bad == 0, "relu_dropout_backward: %d wrong", bad);
            free(x);
            free(x2);
            free(x0);
            free(bias);
            free(dx);
            free(dx0);
        }
}

/* ---- context step ------------------------------------------------------- */

/* Reference forward for one row in double: c = clamp(LN(f*cp + i*d)). */
static void ctx_ref_row(int Dc, const double *gpre, const double *bias3, const double *cp,
                        const double *gamma, const double *beta, double *c, double *n_out)
{
    double s[256], mean = 0, var = 0;
    for (int k = 0; k < Dc; k++) {
        double d = gpre[k] + bias3[k];
        double f = 1 / (1 + exp(-(gpre[Dc + k] + bias3[Dc + k])));
        double ig = 1 / (1 + exp(-(gpre[2 * Dc + k] + bias3[2 * Dc + k])));
        s[k] = f * (cp ? cp[k] : 0) + ig * d;
        mean += s[k];
    }
    mean /= Dc;
    for (int k = 0; k < Dc; k++)
        var += (s[k] - mean) * (s[k] - mean);
    var /= Dc;
    for (int k = 0; k < Dc; k++) {
        double n = gamma[k] * (s[k] - mean) / sqrt(var + 1e-5) + beta[k];
        if (n_out)
            n_out[k] = n;
        c[k] = n < -10 ? -10 : n > 10 ? 10 : n;
    }
}

static void test_context(void)
{
    enum { B = 5, Dc = 24, ldc = 30 };
    float g[B * 3 * Dc], g0[B * 3 * Dc], bias3[3 * Dc], gamma[Dc], beta[Dc];
    float cprev[B * ldc], xhat[B * Dc], rstd[B], cout[B * ldc];
    fill(g0, sizeof g0 / 4, 10, 1.5f);
    fill(bias3, 3 * Dc, 11, 0.5f);
    fill(cprev, sizeof cprev / 4, 12, 3.0f);
    for (int k = 0; k < Dc; k++) {
        gamma[k] = (float)(6.0 + 4.0 * nllm_rng_normal(13, 1, (uint64_t)k)); /* some |n| > 10 */
        beta[k] = (float)(2.0 * nllm_rng_normal(13, 2, (uint64_t)k));
    }
    memcpy(g, g0, sizeof g);
    nllm_ctx_args_t a = {B, Dc, bias3, gamma, beta};
    be1->context_forward(be1, &a, g, cprev, ldc, xhat, rstd, cout, ldc);

    double gd[3 * Dc], bd[3 * Dc], cpd[Dc], gmd[Dc], btd[Dc], c[Dc], n[Dc];
    for (int k = 0; k < 3 * Dc; k++)
        bd[k] = bias3[k];
    for (int k = 0; k < Dc; k++) {
        gmd[k] = gamma[k];
        btd[k] = beta[k];
    }
    double maxerr = 0;
    int clamped = 0;
    for (int b = 0; b < B; b++) {
        for (int k = 0; k < 3 * Dc; k++)
            gd[k] = g0[b * 3 * Dc + k];
        for (int k = 0; k < Dc; k++)
            cpd[k] = cprev[b * ldc + k];
        ctx_ref_row(Dc, gd, bd, cpd, gmd, btd, c, n);
        for (int k = 0; k < Dc; k++) {
            maxerr = fmax(maxerr, fabs(c[k] - cout[b * ldc + k]));
            clamped += fabs(n[k]) > 10;
        }
    }
    CHECK(maxerr < 1e-4, "context_forward: error %g", maxerr);
    CHECK(clamped > 0, "context test does not reach the clamp");

    /* backward against central differences of the double reference for
     * J = sum R .* c, R random */
    float R[B * Dc], dc[B * Dc], dn[B * Dc];
    fill(R, B * Dc, 14, 1.0f);
    memcpy(dc, R, sizeof dc);
    be1->context_backward(be1, &a, dc, g, cprev, ldc, xhat, rstd, dn);
    double eps = 1e-6, gerr = 0, cerr = 0, gscale = 0, cscale = 0;
    for (int b = 0; b < B; b++) {
        for (int k = 0; k < 3 * Dc; k++)
            gd[k] = g0[b * 3 * Dc + k];
        for (int k = 0; k < Dc; k++)
            cpd[k] = cprev[b * ldc + k];
        for (int k = 0; k < 4 * Dc; k++) {
            double *x = k < 3 * Dc ? &gd[k] : &cpd[k - 3 * Dc];
            double saved = *x, jp = 0, jm = 0;
            *x = saved + eps;
            ctx_ref_row(Dc, gd, bd, cpd, gmd, btd, c, NULL);
            for (int q = 0; q < Dc; q++)
                jp += R[b * Dc + q] * c[q];
            *x = saved - eps;
            ctx_ref_row(Dc, gd, bd, cpd, gmd, btd, c, NULL);
            for (int q = 0; q < Dc; q++)
                jm += R[b * Dc + q] * c[q];
            *x = saved;
            double fd = (jp - jm) / (2 * eps);
            if (k < 3 * Dc) {
                gerr = fmax(gerr, fabs(fd - g[b * 3 * Dc + k]));
                gscale = fmax(gscale, fabs(fd));
            } else {
                cerr = fmax(cerr, fabs(fd - dc[b * Dc + k - 3 * Dc]));
                cscale = fmax(cscale, fabs(fd));
            }
        }
    }
    CHECK(gerr <= 1e-4 * fmax(gscale, 1), "context_backward gate grads: error %g (scale %g)",
          gerr, gscale);
    CHECK(cerr <= 1e-4 * fmax(cscale, 1), "context_backward dc: error %g (scale %g)", cerr,
          cscale);
    /* dn * xhat and dn summed over rows are dgamma, dbeta: check against FD */
    double gmerr = 0, gmscale = 0;
    for (int k = 0; k < Dc; k++) {
        double saved = gmd[k], jp = 0, jm = 0, ana = 0;
        for (int sgn = -1; sgn <= 1; sgn += 2) {
            gmd[k] = saved + sgn * eps;
            double J = 0;
            for (int b = 0; b < B; b++) {
                for (int q = 0; q < 3 * Dc; q++)
                    gd[q] = g0[b * 3 * Dc + q];
                for (int q = 0; q < Dc; q++)
                    cpd[q] = cprev[b * ldc + q];
                ctx_ref_row(Dc, gd, bd, cpd, gmd, btd, c, NULL);
                for (int q = 0; q < Dc; q++)
                    J += R[b * Dc + q] * c[q];
            }
            if (sgn < 0)
                jm = J;
            else
                jp = J;
        }
        gmd[k] = saved;
        for (int b = 0; b < B; b++)
            ana += xhat[b * Dc + k];
        double fd = (jp - jm) / (2 * eps);
        gmerr = fmax(gmerr, fabs(fd - ana));
        gmscale = fmax(gmscale, fabs(fd));
    }
    CHECK(gmerr <= 1e-4 * fmax(gmscale, 1), "context_backward dgamma: error %g", gmerr);
}

/* ---- softmax cross-entropy ---------------------------------------------- */

static void test_xent(void)
{
    enum { N = 9, V = 37 };
    float y[N * V], y0[N * V], bias[V], loss[N], hit[N];
    int32_t tgt[N] = {3, 0, 36, 1, 5, 0, 7, 7, 2};
    fill(y0, N * V, 20, 2.0f);
    fill(bias, V, 21, 0.5f);
    y0[4 * V + 5] = 50.0f; /* row 4 predicts its target */
    for (int grad = 0; grad < 2; grad++) {
        memcpy(y, y0, sizeof y);
        float scale = 1.0f / 7.0f;
        nllm_step_dev_t sd = {.grad_scale = scale};
        be1->softmax_xent(be1, y, bias, tgt, N, V, grad, &sd, loss, hit);
        double lerr = 0, gerr = 0;
        int hbad = 0;
        for (int r = 0; r < N; r++) {
            double mx = -1e30, sum = 0;
            int am = 0;
            for (int k = 0; k < V; k++) {
                double v = (double)y0[r * V + k] + bias[k];
                if (v > mx) {
                    mx = v;
                    am = k;
                }
            }
            for (int k = 0; k < V; k++)
                sum += exp((double)y0[r * V + k] + bias[k] - mx);
            double lref = tgt[r] ? log(sum) + mx - ((double)y0[r * V + tgt[r]] + bias[tgt[r]]) : 0;
            lerr = fmax(lerr, fabs(lref - loss[r]));
            hbad += (tgt[r] && am == tgt[r]) != (hit[r] == 1.0f);
            for (int k = 0; k < V; k++) {
                double ref;
                if (grad)
                    ref = tgt[r] ? scale * (exp((double)y0[r * V + k] + bias[k] - mx) / sum -
                                            (k == tgt[r]))
                                 : 0.0;
                else
                    ref = (double)y0[r * V + k] + bias[k];
                gerr = fmax(gerr, fabs(ref - y[r * V + k]));
            }
        }
        CHECK(lerr < 1e-5, "softmax_xent loss error %g", lerr);
        CHECK(hbad == 0, "softmax_xent accuracy wrong in %d rows", hbad);
        CHECK(gerr < 1e-6, "softmax_xent %s error %g", grad ? "gradient" : "logits", gerr);
        CHECK(hit[4] == 1.0f, "softmax_xent: row 4 should be a hit");
    }
}

/* ---- reductions and Adam -------------------------------------------------- */

static void test_reductions(void)
{
    int N = 1000, D = 37, ld = 40;
    float *x = malloc(sizeof(float) * N * ld), out[37], out2[37];
    fill(x, (size_t)N * ld, 30, 1.0f);
    be1->col_sum(be1, out, x, N, D, ld);
    be2->col_sum(be2, out2, x, N, D, ld);
    double err = 0;
    for (int j = 0; j < D; j++) {
        double s = 0;
        for (int r = 0; r < N; r++)
            s += x[r * ld + j];
        err = fmax(err, fabs(s - out[j]));
    }
    CHECK(err < 1e-3, "col_sum error %g", err);
    CHECK(memcmp(out, out2, sizeof out) == 0, "col_sum: 1 and 2 threads differ");
    int64_t n = 300001;
    float *v = malloc(sizeof(float) * n);
    fill(v, (size_t)n, 31, 1.0f);
    double s1 = 0, s2 = 0, ref = 0;
    for (int64_t i = 0; i < n; i++)
        ref += (double)v[i] * v[i];
    be1->sq_norm(be1, v, n, &s1);
    be2->sq_norm(be2, v, n, &s2);
    CHECK(fabs(s1 - ref) < 1e-9 * ref, "sq_norm %g vs %g", s1, ref);
    CHECK(s1 == s2, "sq_norm: 1 and 2 threads differ");
    free(x);
    free(v);
}

static void test_adam(void)
{
    int64_t n = 100003;
    float *p = malloc(sizeof(float) * n), *m = malloc(sizeof(float) * n),
          *v = malloc(sizeof(float) * n), *g = malloc(sizeof(float) * n);
    double *pr = malloc(sizeof(double) * n), *mr = malloc(sizeof(double) * n),
           *vr = malloc(sizeof(double) * n);
    fill(p, (size_t)n, 40, 1.0f);
    for (int64_t i = 0; i < n; i++) {
        m[i] = v[i] = 0;
        pr[i] = p[i];
        mr[i] = vr[i] = 0;
    }
    double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01, clip = 0.5;
    for (int t = 1; t <= 3; t++) {
        fill(g, (size_t)n, 41 + (uint64_t)t, 1.0f);
        nllm_step_dev_t sd = {.adam = nllm_adam_consts(lr, b1, b2, eps, wd, t, clip)};
        be2->adam(be2, p, m, v, g, n, &sd);
        for (int64_t i = 0; i < n; i++) { /* textbook Adam in double */
            double gg = g[i] * clip + wd * pr[i];
            mr[i] = b1 * mr[i] + (1 - b1) * gg;
            vr[i] = b2 * vr[i] + (1 - b2) * gg * gg;
            double mh = mr[i] / (1 - pow(b1, t)), vh = vr[i] / (1 - pow(b2, t));
            pr[i] -= lr * mh / (sqrt(vh) + eps);
        }
    }
    double err = 0;
    for (int64_t i = 0; i < n; i++)
        err = fmax(err, fabs(pr[i] - p[i]));
    CHECK(err < 1e-6, "adam: max error %g vs textbook Adam", err);
    free(p);
    free(m);
    free(v);
    free(g);
    free(pr);
    free(mr);
    free(vr);
}

/* The step's figures and its clip decision, as the host computed them
 * before they moved to the backend: loss in row order in double, hits
 * counted, torch's clip rule, and a non-finite norm halting Adam. */
static void test_step_ops(void)
{
    enum { N = 1000 };
    float loss[N], hit[N];
    fill(loss, N, 50, 3.0f);
    double ref = 0;
    int64_t hits = 0;
    for (int r = 0; r < N; r++) {
        hit[r] = (r % 7 == 0) ? 1.0f : 0.0f;
        ref += loss[r];
        hits += r % 7 == 0;
    }
    nllm_step_out_t ring[4];
    memset(ring, 0, sizeof ring);
    nllm_step_dev_t sd = {.slot = 2};
    be1->batch_stats(be1, loss, hit, N, &sd, ring);
    CHECK(ring[2].loss_sum == ref, "batch_stats: loss %.17g, host loop %.17g", ring[2].loss_sum,
          ref);
    CHECK(ring[2].correct == hits, "batch_stats: %lld hits, expected %lld",
          (long long)ring[2].correct, (long long)hits);
    CHECK(ring[1].loss_sum == 0 && ring[3].correct == 0, "batch_stats wrote outside its slot");

    /* clip: 3-4-5 gradient, max norm 1 -> factor 1 / (5 + 1e-6) */
    sd.sqnorm = 25.0;
    sd.max_norm = 1.0;
    sd.slot = 1;
    be1->clip(be1, &sd, ring);
    CHECK(ring[1].grad_norm == 5.0, "clip: norm %g", ring[1].grad_norm);
    CHECK(ring[1].clip_scale == 1.0 / (5.0 + 1e-6), "clip: factor %.17g", ring[1].clip_scale);
    CHECK(sd.adam.clip_scale == (float)(1.0 / (5.0 + 1e-6)), "clip: Adam factor %g",
          sd.adam.clip_scale);
    CHECK(!sd.halted && !ring[1].halted, "clip: a finite norm halted the step");
    sd.max_norm = 10.0;
    be1->clip(be1, &sd, ring);
    CHECK(ring[1].clip_scale == 1.0 && sd.adam.clip_scale == 1.0f, "clip: norm below max clipped");
    sd.max_norm = 0.0;
    be1->clip(be1, &sd, ring);
    CHECK(ring[1].clip_scale == 1.0, "clip: max_norm 0 must not clip");

    /* a non-finite norm halts Adam, for this step and every later one */
    enum { P = 64 };
    float w[P], m1[P], m2[P], g[P], w0[P];
    fill(w, P, 51, 1.0f);
    fill(g, P, 52, 1.0f);
    memset(m1, 0, sizeof m1);
    memset(m2, 0, sizeof m2);
    memcpy(w0, w, sizeof w);
    sd.adam = nllm_adam_consts(1e-2, 0.9, 0.999, 1e-8, 0, 1, 1.0);
    sd.sqnorm = NAN;
    sd.slot = 0;
    be1->clip(be1, &sd, ring);
    CHECK(sd.halted == 1 && ring[0].halted == 1, "clip: a NaN norm must halt");
    CHECK(isnan(ring[0].grad_norm), "clip: norm %g, expected NaN", ring[0].grad_norm);
    be1->adam(be1, w, m1, m2, g, P, &sd);
    CHECK(memcmp(w, w0, sizeof w) == 0, "adam changed weights of a halted model");
    sd.sqnorm = 4.0;
    be1->clip(be1, &sd, ring);
    CHECK(sd.halted == 1 && ring[0].halted == 1, "clip: halted must stay set");
    be1->adam(be1, w, m1, m2, g, P, &sd);
    CHECK(memcmp(w, w0, sizeof w) == 0, "adam changed weights after a halt");
    sd.halted = 0;
    be1->adam(be1, w, m1, m2, g, P, &sd);
    CHECK(memcmp(w, w0, sizeof w) != 0, "adam did nothing on a model that is not halted");
}

int main(void)
{
    nllm_err_t err;
    if (nllm_cpu_backend_create(1, &be1, &err) < 0 || nllm_cpu_backend_create(2, &be2, &err) < 0) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return 1;
    }
    RUN(test_philox_kat);
    RUN(test_philox_variants);
    RUN(test_gemm);
    RUN(test_embedding);
    RUN(test_bias_relu_dropout);
    RUN(test_context);
    RUN(test_xent);
    RUN(test_reductions);
    RUN(test_adam);
    RUN(test_step_ops);
    be1->destroy(be1);
    be2->destroy(be2);
    return TEST_REPORT();
}
