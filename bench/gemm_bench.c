/* gemm_bench.c -- nllm-gemm-bench: the CPU's large-product kernels side by
 * side on the model's product shapes: OpenBLAS (whatever kernels it runs:
 * set OPENBLAS_CORETYPE before the run to choose) and each of nllm's packed
 * GEMM variants this CPU runs (kernels/cpu/gemm.c), and where the CPU has
 * AMX-BF16 the bf16 products of precision bf16 (kernels/cpu/bf16_gemm.c:
 * "bf16-amx" packs both operands at every call, "bf16-amx-kept" keeps B's
 * packing, as the CPU backend does for the weights), alternating, repeated,
 * medians. Prints one JSON line per (shape, kernel): GFLOP/s by wall clock
 * and by the process's CPU time (which other load on the machine does not
 * inflate, for one thread), and the largest difference from OpenBLAS's
 * result.
 *
 *   build/nllm-gemm-bench [--threads N] [--repeats R] [--shape MxNxK:TT]...
 */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/bf16_gemm.h"
#include "cpu/cpu_kernels.h"
#include "cpu/cpu_pool.h"
#include "cpu/gemm.h"

extern void openblas_set_num_threads(int num_threads);
extern char *openblas_get_corename(void) __attribute__((weak));

typedef struct {
    int M, N, K, ta, tb;
    const char *what;
} shape_t;

/* The seed model's products at batch 512 (S 64: 32256 positions). */
static const shape_t default_shapes[] = {
    {512, 512, 512, 0, 1, "per-time-step layer forward (NT)"},
    {512, 512, 512, 0, 0, "per-time-step layer backward (NN)"},
    {32256, 1000, 512, 0, 1, "output head forward (NT)"},
    {32256, 512, 1000, 0, 0, "output head backward, dh (NN)"},
    {512, 512, 32256, 1, 0, "weight gradient of a layer (TN)"},
};

static double now(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
    int threads = 1, repeats = 5;
    shape_t shapes[16];
    int nshapes = 0;
    static const struct option opts[] = {{"threads", 1, 0, 't'},
                                         {"repeats", 1, 0, 'r'},
                                         {"shape", 1, 0, 's'},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 't') {
            threads = atoi(optarg);
        } else if (c == 'r') {
            repeats = atoi(optarg);
        } else if (c == 's' && nshapes < 16) {
            shape_t s = {0, 0, 0, 0, 0, "given"};
            char t1 = 'N', t2 = 'N';
            if (sscanf(optarg, "%dx%dx%d:%c%c", &s.M, &s.N, &s.K, &t1, &t2) < 3 || s.M < 1 ||
                s.N < 1 || s.K < 1) {
                fprintf(stderr, "nllm-gemm-bench: --shape MxNxK[:TT], not \"%s\"\n", optarg);
                return 2;
            }
            s.ta = t1 == 'T';
            s.tb = t2 == 'T';
            shapes[nshapes++] = s;
        } else {
            printf("usage: nllm-gemm-bench [--threads N] [--repeats R] [--shape MxNxK:TT]...\n"
                   "Times OpenBLAS and nllm's GEMM variants on the seed model's products (or\n"
                   "the --shape ones; TT: N or T for A and B), alternating; one JSON line each.\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (threads < 1 || repeats < 1) {
        fprintf(stderr, "nllm-gemm-bench: --threads and --repeats must be >= 1\n");
        return 2;
    }
    if (!nshapes) {
        nshapes = (int)(sizeof default_shapes / sizeof default_shapes[0]);
        memcpy(shapes, default_shapes, sizeof default_shapes);
    }
    const nllm_cpu_kernels_t *k = nllm_cpu_kernels();
    openblas_set_num_threads(threads);
    nllm_pool_t *pool = NULL;
    nllm_gemm_ws_t *ws = NULL;
    nllm_bf16_ws_t *bws = NULL;
    nllm_err_t err;
    if (nllm_pool_create(threads, &pool, &err) < 0 || nllm_gemm_ws_create(threads, &ws, &err) < 0 ||
        nllm_bf16_ws_create(&bws, &err) < 0) {
        fprintf(stderr, "nllm-gemm-bench: %s\n", err.msg);
        return 1;
    }
    static const char *const names[] = {"blas", "avx512", "avx2", "avx", "bf16-amx",
                                        "bf16-amx-kept"};
    int nk = 6;
    for (int si = 0; si < nshapes; si++) {
        const shape_t *s = &shapes[si];
        size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
        float *A = malloc(sizeof(float) * na), *B = malloc(sizeof(float) * nb),
              *C = malloc(sizeof(float) * nc), *R = malloc(sizeof(float) * nc);
        if (!A || !B || !C || !R) {
            fprintf(stderr, "nllm-gemm-bench: out of memory\n");
            return 1;
        }
        unsigned x = 1;
        for (size_t i = 0; i < na; i++)
            A[i] = (float)((x = x * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
        for (size_t i = 0; i < nb; i++)
            B[i] = (float)((x = x * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
        int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
        double flop = 2.0 * s->M * s->N * s->K;
        int reps = (int)(4e9 / flop) + 1; /* calls per timing: about 4 GFLOP */
        double wall[6][64], cpu[6][64], maxdiff[6] = {0};
        int usable[6] = {1, 0, 0, 0, 0, 0};
        for (int v = 1; v < 4; v++)
            usable[v] = nllm_gemm_force_isa(names[v]) == 0;
        usable[4] = usable[5] = nllm_bf16_gemm_usable(NULL);
        cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans,
                    s->tb ? CblasTrans : CblasNoTrans, s->M, s->N, s->K, 1.0f, A, lda, B, ldb,
                    0.0f, R, s->N);
        int nrep = repeats < 64 ? repeats : 64;
        for (int r = 0; r < nrep; r++)
            for (int v = 0; v < nk; v++) {
                if (!usable[v])
                    continue;
                if (v && v < 4)
                    nllm_gemm_force_isa(names[v]);
                /* "kept": B is the parameters; packed at the first call */
                nllm_bf16_ws_params(bws, v == 5 ? B : NULL, (int64_t)nb);
                double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
                for (int i = 0; i < reps; i++) {
                    if (v == 0)
                        cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans,
                                    s->tb ? CblasTrans : CblasNoTrans, s->M, s->N, s->K, 1.0f,
                                    A, lda, B, ldb, 0.0f, C, s->N);
                    else if (v < 4)
                        nllm_gemm(pool, ws, s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb,
                                  0.0f, C, s->N);
                    else if (nllm_gemm_bf16(pool, bws, s->ta, s->tb, s->M, s->N, s->K, 1.0f, A,
                                            lda, B, ldb, 0.0f, C, s->N) < 0) {
                        fprintf(stderr, "nllm-gemm-bench: out of memory\n");
                        return 1;
                    }
                }
                wall[v][r] = flop * reps / (now(CLOCK_MONOTONIC) - w0) / 1e9;
                cpu[v][r] = flop * reps / (now(CLOCK_PROCESS_CPUTIME_ID) - c0) / 1e9;
                for (size_t i = 0; i < nc; i++)
                    if (fabs((double)C[i] - R[i]) > maxdiff[v])
                        maxdiff[v] = fabs((double)C[i] - R[i]);
            }
        for (int v = 0; v < nk; v++) {
            if (!usable[v])
                continue;
            char kern[64];
            if (v == 0)
                snprintf(kern, sizeof kern, "openblas-%s",
                         openblas_get_corename ? openblas_get_corename() : "?");
            else
                snprintf(kern, sizeof kern, "nllm-%s", names[v]);
            printf("{\"shape\":\"%dx%dx%d:%c%c\",\"what\":\"%s\",\"kernel\":\"%s\",\"threads\":%d,"
                   "\"gflops_wall\":%.1f,\"gflops_cpu\":%.1f,\"max_diff_from_blas\":%.3g,"
                   "\"cpu_isa\":\"%s\",\"repeats\":%d}\n",
                   s->M, s->N, s->K, s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', s->what, kern, threads,
                   median(wall[v], nrep), median(cpu[v], nrep), maxdiff[v],
                   nllm_isa_name(k->cpu_isa), nrep);
        }
        fflush(stdout);
        free(A);
        free(B);
        free(C);
        free(R);
    }
    nllm_gemm_force_isa(NULL);
    nllm_bf16_ws_destroy(bws);
    nllm_gemm_ws_destroy(ws);
    nllm_pool_destroy(pool);
    return 0;
}
