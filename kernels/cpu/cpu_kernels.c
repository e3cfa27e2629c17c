/* cpu_kernels.c -- the choice of the CPU backend's GEMM kernels (see
 * cpu_kernels.h): the CPU's level from cpuid, the BLAS's from its core
 * name, a reference check of every candidate, then one decision per
 * process.
 */
#include "cpu_kernels.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "bf16_gemm.h"
#include "gemm.h"
#include "small_gemm.h"

/* OpenBLAS's introspection; weak, so another CBLAS still links and runs. */
extern char *openblas_get_corename(void) __attribute__((weak));
extern char *openblas_get_config(void) __attribute__((weak));

static nllm_cpu_kernels_t g_kernels;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

const char *nllm_isa_name(nllm_isa_t isa)
{
    switch (isa) {
    case NLLM_ISA_AVX512:
        return "avx512";
    case NLLM_ISA_AVX2:
        return "avx2";
    case NLLM_ISA_AVX:
        return "avx";
    case NLLM_ISA_SSE3:
        return "sse3";
    case NLLM_ISA_BASE:
        return "base";
    default:
        return "unknown";
    }
}

static void addf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void addf(char *buf, size_t size, const char *fmt, ...)
{
    size_t n = strlen(buf);
    if (n + 1 >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, size - n, fmt, ap);
    va_end(ap);
}

/* ---- the CPU --------------------------------------------------------- */

#if defined(__x86_64__) || defined(__i386__)
static unsigned long long xgetbv0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

unsigned nllm__cpu_amx(void)
{
    unsigned a, b, c, d, d7 = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    int osxsave = (c >> 27) & 1;
    if (__get_cpuid_max(0, NULL) >= 7)
        __cpuid_count(7, 0, a, b, c, d7);
    unsigned amx = ((d7 >> 24) & 1 ? NLLM_AMX_TILE : 0) | ((d7 >> 22) & 1 ? NLLM_AMX_BF16 : 0);
    if (osxsave && (xgetbv0() & 0x60000) == 0x60000) /* XTILECFG, XTILEDATA */
        amx |= NLLM_AMX_OS;
    return amx;
}

static nllm_isa_t detect_cpu(char *features, size_t size)
{
    unsigned a, b, c, d;
    features[0] = '\0';
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return NLLM_ISA_BASE;
    int sse3 = (c >> 0) & 1, fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
    int os_ymm = (xcr0 & 0x6) == 0x6;             /* SSE and AVX state */
    int os_zmm = os_ymm && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM0-15 high, ZMM16-31 */
    unsigned amx = nllm__cpu_amx();
    int os_amx = (amx & NLLM_AMX_OS) != 0;
    unsigned b7 = 0, d7 = 0;
    if (__get_cpuid_max(0, NULL) >= 7)
        __cpuid_count(7, 0, a, b7, c, d7);
    int avx2 = (b7 >> 5) & 1, f512 = (b7 >> 16) & 1, dq = (b7 >> 17) & 1, bw = (b7 >> 30) & 1,
        vl = (b7 >> 31) & 1, amx_bf16 = (amx & NLLM_AMX_BF16) != 0,
        amx_tile = (amx & NLLM_AMX_TILE) != 0;
    avx = avx && os_ymm;
    fma = fma && os_ymm;
    avx2 = avx2 && os_ymm;
    f512 = f512 && os_zmm;
    struct {
        int on;
        const char *name;
    } fs[] = {{sse3, "sse3"},      {avx, "avx"},       {fma, "fma"},         {avx2, "avx2"},
              {f512, "avx512f"},   {f512 && dq, "avx512dq"}, {f512 && bw, "avx512bw"},
              {f512 && vl, "avx512vl"}, {amx_tile && os_amx, "amx-tile"},
              {amx_bf16 && os_amx, "amx-bf16"}};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
        if (fs[i].on)
            addf(features, size, "%s%s", features[0] ? " " : "", fs[i].name);
    if (f512 && fma)
        return NLLM_ISA_AVX512;
    if (avx2 && fma)
        return NLLM_ISA_AVX2;
    if (avx)
        return NLLM_ISA_AVX;
    return sse3 ? NLLM_ISA_SSE3 : NLLM_ISA_BASE;
}
#else
unsigned nllm__cpu_amx(void)
{
    return 0;
}

static nllm_isa_t detect_cpu(char *features, size_t size)
{
    snprintf(features, size, "not x86");
    return NLLM_ISA_BASE;
}
#endif

/* ---- the BLAS -------------------------------------------------------- */

/* OpenBLAS's x86 core names by the instruction set their kernels use. A
 * name not listed is NLLM_ISA_UNKNOWN: nllm does not trust its level. */
static nllm_isa_t core_level(const char *core)
{
    static const struct {
        const char *name;
        nllm_isa_t isa;
    } cores[] = {
        {"SkylakeX", NLLM_ISA_AVX512}, {"Cooperlake", NLLM_ISA_AVX512},
        {"SapphireRapids", NLLM_ISA_AVX512}, {"Haswell", NLLM_ISA_AVX2},
        {"Zen", NLLM_ISA_AVX2},        {"Sandybridge", NLLM_ISA_AVX},
        {"Bulldozer", NLLM_ISA_AVX},   {"Piledriver", NLLM_ISA_AVX},
        {"Steamroller", NLLM_ISA_AVX}, {"Excavator", NLLM_ISA_AVX},
        {"Prescott", NLLM_ISA_SSE3},   {"Core2", NLLM_ISA_SSE3},
        {"Penryn", NLLM_ISA_SSE3},     {"Dunnington", NLLM_ISA_SSE3},
        {"Nehalem", NLLM_ISA_SSE3},    {"Atom", NLLM_ISA_SSE3},
        {"Opteron_SSE3", NLLM_ISA_SSE3}, {"Barcelona", NLLM_ISA_SSE3},
        {"Nano", NLLM_ISA_SSE3},       {"Opteron", NLLM_ISA_BASE},
        {"Northwood", NLLM_ISA_BASE},  {"Banias", NLLM_ISA_BASE},
        {"Katmai", NLLM_ISA_BASE},     {"Coppermine", NLLM_ISA_BASE},
    };
    for (size_t i = 0; i < sizeof cores / sizeof cores[0]; i++)
        if (strcasecmp(core, cores[i].name) == 0)
            return cores[i].isa;
    return NLLM_ISA_UNKNOWN;
}

/* ---- the reference check --------------------------------------------- */

typedef void (*gemm_fn)(int transA, int transB, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C,
                        int ldc);

static void blas_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                      int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
}

static nllm_gemm_ws_t *g_check_ws;

static void own_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                     int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    nllm_gemm(NULL, g_check_ws, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* 0 when fn agrees with a double-precision product on shapes that cross
 * every blocking edge (partial tiles, two depth slices, all transposes,
 * beta 0 over NaN and beta 0.5); -1 otherwise or when memory runs out. */
static int check_gemm(gemm_fn fn)
{
    static const int shapes[][5] = {
        /* transA, transB, M, N, K */
        {0, 1, 37, 45, 300}, {0, 0, 29, 70, 263}, {1, 0, 50, 33, 520}, {1, 1, 13, 17, 9},
    };
    int bad = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0] && !bad; s++) {
        int ta = shapes[s][0], tb = shapes[s][1], M = shapes[s][2], N = shapes[s][3],
            K = shapes[s][4];
        int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
        size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb,
               nc = (size_t)M * ldc;
        float *A = malloc(sizeof(float) * na), *B = malloc(sizeof(float) * nb),
              *C = malloc(sizeof(float) * nc), *C0 = malloc(sizeof(float) * nc);
        if (!A || !B || !C || !C0) {
            bad = 1;
        } else {
            unsigned x = 12345u + (unsigned)s;
            for (size_t i = 0; i < na; i++)
                A[i] = (float)((x = x * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
            for (size_t i = 0; i < nb; i++)
                B[i] = (float)((x = x * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
            for (size_t i = 0; i < nc; i++)
                C0[i] = (float)((x = x * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
            for (int pass = 0; pass < 2 && !bad; pass++) {
                float alpha = 0.75f, beta = pass ? 0.5f : 0.0f;
                for (size_t i = 0; i < nc; i++)
                    C[i] = pass ? C0[i] : NAN;
                fn(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                for (int i = 0; i < M && !bad; i++)
                    for (int j = 0; j < N && !bad; j++) {
                        double ref = 0, mag = 0;
                        for (int k = 0; k < K; k++) {
                            double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                            double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                            ref += a * b;
                            mag += fabs(a * b);
                        }
                        double c0 = pass ? C0[(size_t)i * ldc + j] : 0.0;
                        ref = alpha * ref + beta * c0;
                        mag = alpha * mag + fabs(beta * c0) + 1e-30;
                        double got = C[(size_t)i * ldc + j];
                        if (!(fabs(got - ref) <= 1e-5 * mag))
                            bad = 1;
                    }
            }
        }
        free(A);
        free(B);
        free(C);
        free(C0);
    }
    return bad ? -1 : 0;
}

/* ---- the decision ---------------------------------------------------- */

static nllm_isa_t variant_level(const char *name)
{
    if (strcmp(name, "avx512") == 0)
        return NLLM_ISA_AVX512;
    if (strcmp(name, "avx2") == 0)
        return NLLM_ISA_AVX2;
    if (strcmp(name, "avx") == 0)
        return NLLM_ISA_AVX;
    return NLLM_ISA_UNKNOWN;
}

/* nllm's best variant that passes the check, starting at `want` (NULL: the
 * best this CPU runs); NULL when none does. Leaves it selected. */
static const char *pick_own(const char *want, char *why, size_t size)
{
    static const char *const order[] = {"avx512", "avx2", "avx"};
    nllm_err_t err;
    if (!g_check_ws && nllm_gemm_ws_create(1, &g_check_ws, &err) < 0)
        return NULL;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        if (want && strcmp(want, order[i]) != 0)
            continue;
        if (nllm_gemm_force_isa(order[i]) < 0)
            continue; /* this CPU cannot run it */
        if (check_gemm(own_gemm) == 0)
            return order[i];
        addf(why, size, "%snllm-%s failed the reference check", why[0] ? "; " : "", order[i]);
    }
    nllm_gemm_force_isa(NULL);
    return NULL;
}

static void decide(void)
{
    nllm_cpu_kernels_t *k = &g_kernels;
    k->cpu_isa = detect_cpu(k->cpu_features, sizeof k->cpu_features);
    const char *core = openblas_get_corename ? openblas_get_corename() : NULL;
    const char *config = openblas_get_config ? openblas_get_config() : NULL;
    snprintf(k->blas, sizeof k->blas, "%s", config ? config : "cblas");
    snprintf(k->blas_core, sizeof k->blas_core, "%s", core ? core : "");
    k->blas_isa = core ? core_level(core) : NLLM_ISA_UNKNOWN;
    k->blas_ok = check_gemm(blas_gemm) == 0;
    const char *blas_name = core ? "openblas" : "blas";

    char why[160] = "";
    const char *env = getenv("NLLM_CPU_GEMM");
    const char *own = NULL;
    int use_blas = 0;
    if (env && *env && strcmp(env, "auto") != 0) {
        if (strcmp(env, "blas") == 0) {
            use_blas = 1;
            snprintf(k->reason, sizeof k->reason, "NLLM_CPU_GEMM=blas");
        } else if (strcmp(env, "nllm") == 0 || variant_level(env) != NLLM_ISA_UNKNOWN) {
            own = pick_own(strcmp(env, "nllm") == 0 ? NULL : env, why, sizeof why);
            if (own)
                snprintf(k->reason, sizeof k->reason, "NLLM_CPU_GEMM=%s", env);
            else
                snprintf(k->reason, sizeof k->reason,
                         "NLLM_CPU_GEMM=%s, but no such variant runs here%s%s; using the BLAS",
                         env, why[0] ? ": " : "", why);
            use_blas = !own;
        } else {
            snprintf(why, sizeof why, "NLLM_CPU_GEMM=%s ignored (auto, blas, nllm, avx512, avx2 or avx); ",
                     env);
            env = NULL;
        }
    } else {
        env = NULL;
    }
    if (!env) {
        char pre[160];
        snprintf(pre, sizeof pre, "%s", why);
        why[0] = '\0';
        own = pick_own(NULL, why, sizeof why);
        nllm_isa_t own_isa = own ? variant_level(own) : NLLM_ISA_UNKNOWN;
        if (own && !k->blas_ok) {
            snprintf(k->reason, sizeof k->reason, "%sthe BLAS (%s) failed the reference check",
                     pre, core ? core : "cblas");
        } else if (own && own_isa > k->blas_isa) {
            if (k->blas_isa == NLLM_ISA_UNKNOWN)
                snprintf(k->reason, sizeof k->reason,
                         "%sthe BLAS's kernels (%s) are of no level nllm knows", pre,
                         core ? core : "not OpenBLAS");
            else
                snprintf(k->reason, sizeof k->reason,
                         "%sOpenBLAS runs %s kernels (%s), below this CPU's %s", pre, core,
                         nllm_isa_name(k->blas_isa), nllm_isa_name(k->cpu_isa));
        } else {
            use_blas = 1;
            if (!own)
                snprintf(k->reason, sizeof k->reason, "%sno nllm GEMM variant runs here%s%s", pre,
                         why[0] ? ": " : "", why);
            else
                snprintf(k->reason, sizeof k->reason, "%sOpenBLAS runs %s kernels (%s), this CPU's level",
                         pre, core, nllm_isa_name(k->blas_isa));
        }
    }
    if (use_blas) {
        snprintf(k->large_gemm, sizeof k->large_gemm, "%s", blas_name);
        k->large_isa = k->blas_isa;
        nllm_gemm_force_isa(NULL);
    } else {
        snprintf(k->large_gemm, sizeof k->large_gemm, "nllm-%s", own);
        k->large_isa = variant_level(own);
    }
    k->small_gemm = nllm_small_gemm_isa();
    k->bf16_gemm = nllm_bf16_gemm_usable(&k->bf16_note) ? "amx-bf16" : NULL;
    nllm_gemm_ws_destroy(g_check_ws);
    g_check_ws = NULL;
}

const nllm_cpu_kernels_t *nllm_cpu_kernels(void)
{
    pthread_once(&g_once, decide);
    return &g_kernels;
}

int nllm_cpu_kernels_use_own(void)
{
    return strncmp(nllm_cpu_kernels()->large_gemm, "nllm-", 5) == 0;
}

void nllm_cpu_kernels_describe(char *buf, unsigned size)
{
    const nllm_cpu_kernels_t *k = nllm_cpu_kernels();
    snprintf(buf, size,
             "CPU kernels: large products on %s (%s), small products on %s; %s%s%s; CPU level "
             "%s (%s)",
             k->large_gemm, k->reason, k->small_gemm,
             k->bf16_gemm ? "bf16 products on amx-bf16 tiles" : "no bf16 (",
             k->bf16_gemm ? "" : k->bf16_note, k->bf16_gemm ? "" : ")",
             nllm_isa_name(k->cpu_isa), k->cpu_features);
}
