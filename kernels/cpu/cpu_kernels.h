/* cpu_kernels.h -- which kernels the CPU backend's matrix products run on,
 * chosen from what the CPU can do, not from a table of CPU models.
 *
 * At first use (the first CPU backend) nllm reads the instruction sets the
 * CPU and the OS support (cpuid, xgetbv), asks OpenBLAS which kernels it
 * picked (openblas_get_corename: it may not know the CPU, may be told
 * otherwise by OPENBLAS_CORETYPE, or a VM may hide the model), and runs the
 * large products on nllm's own packed GEMM (gemm.h) when the BLAS's kernels
 * sit below the CPU's level. nllm never changes what OpenBLAS runs. Every
 * candidate -- the BLAS and each of nllm's variants -- is checked against a
 * double-precision reference first; one that disagrees is not used.
 *
 * NLLM_CPU_GEMM in the environment overrides the choice for benchmarks and
 * tests: "auto" (the default), "blas", "nllm" (nllm's best variant), or a
 * variant name ("avx512", "avx2", "avx").
 */
#ifndef NLLM_CPU_KERNELS_H
#define NLLM_CPU_KERNELS_H

/* Instruction-set levels, in order. */
typedef enum {
    NLLM_ISA_UNKNOWN = -1, /* a BLAS whose kernels nllm cannot place */
    NLLM_ISA_BASE = 0,     /* x86-64 (SSE2) or not x86 */
    NLLM_ISA_SSE3,
    NLLM_ISA_AVX,
    NLLM_ISA_AVX2, /* AVX2 with FMA */
    NLLM_ISA_AVX512,
} nllm_isa_t;

typedef struct {
    nllm_isa_t cpu_isa;     /* the CPU's level (as the OS enables it) */
    char cpu_features[160]; /* e.g. "sse3 avx fma avx2 avx512f avx512bw amx-bf16" */
    char blas[96];          /* openblas_get_config(), or "cblas" */
    char blas_core[32];     /* openblas_get_corename(), or "" */
    nllm_isa_t blas_isa;    /* the level of the BLAS's kernels */
    char large_gemm[32];    /* "openblas" / "blas", or "nllm-avx512" ... */
    nllm_isa_t large_isa;   /* the level the large products run at */
    const char *small_gemm; /* small_gemm.h's variant */
    const char *bf16_gemm;  /* precision bf16's products: "amx-bf16", or NULL */
    const char *bf16_note;  /* why there is none (bf16_gemm.h), or NULL */
    int blas_ok;            /* the BLAS passed the reference check */
    char reason[200];       /* why large_gemm was chosen */
} nllm_cpu_kernels_t;

/* The CPU's AMX as cpuid and XCR0 report it: NLLM_AMX_* bits (0 where not
 * x86). Decides nothing, so bf16_gemm.c may ask while the choice below is
 * being made. */
enum { NLLM_AMX_TILE = 1, NLLM_AMX_BF16 = 2, NLLM_AMX_OS = 4 /* tile state enabled */ };
unsigned nllm__cpu_amx(void);

/* The choice, made once per process (thread-safe). */
const nllm_cpu_kernels_t *nllm_cpu_kernels(void);

/* 1 when the large products run on nllm's own GEMM (gemm.h). */
int nllm_cpu_kernels_use_own(void);

/* The level's name: "avx512", "avx2", "avx", "sse3", "base" or "unknown". */
const char *nllm_isa_name(nllm_isa_t isa);

/* One line for logs: "CPU kernels: large products on nllm-avx512 (OpenBLAS
 * runs Haswell kernels (avx2), below this CPU's avx512), small products on
 * avx512; bf16 products on amx-bf16 tiles; CPU level avx512 (sse3 avx fma
 * ...)" (or "no bf16 (this CPU has no AMX-BF16)"). */
void nllm_cpu_kernels_describe(char *buf, unsigned size);

#endif /* NLLM_CPU_KERNELS_H */
