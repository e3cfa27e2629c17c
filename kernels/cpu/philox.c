/* philox.c -- Philox4x32-10 blocks, scalar and on vectors; see philox.h.
 * Each variant computes its lanes' counters from b0 on the host side (the
 * carry into the high word included) and writes the words block by block,
 * so a variant differs from the scalar loop only in how the rounds run. */
#include "philox.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PHILOX_X86 1
#endif

#define PH_M0 0xD2511F53u
#define PH_M1 0xCD9E8D57u
#define PH_W0 0x9E3779B9u
#define PH_W1 0xBB67AE85u

/* The lanes of one batch: counters in, words out (structure of arrays). */
typedef struct {
    uint32_t c0[16], c1[16], c2[16], c3[16];
} ph_lanes_t;

static void lanes_in(ph_lanes_t *l, int n, uint64_t b, uint32_t stream, uint32_t step)
{
    for (int i = 0; i < n; i++) {
        uint64_t c = b + (uint64_t)i;
        l->c0[i] = (uint32_t)c;
        l->c1[i] = (uint32_t)(c >> 32);
        l->c2[i] = stream;
        l->c3[i] = step;
    }
}

static void lanes_out(const ph_lanes_t *l, int m, uint32_t *out)
{
    for (int i = 0; i < m; i++) {
        out[4 * i + 0] = l->c0[i];
        out[4 * i + 1] = l->c1[i];
        out[4 * i + 2] = l->c2[i];
        out[4 * i + 3] = l->c3[i];
    }
}

static void blocks_scalar(uint64_t seed, uint32_t stream, uint32_t step, uint64_t b0, int nb,
                          uint32_t *out)
{
    ph_lanes_t l;
    for (int k = 0; k < nb; k += 16) {
        int m = nb - k < 16 ? nb - k : 16;
        lanes_in(&l, m, b0 + (uint64_t)k, stream, step);
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int r = 0; r < 10; r++) {
            for (int i = 0; i < m; i++) {
                uint64_t p0 = (uint64_t)PH_M0 * l.c0[i];
                uint64_t p1 = (uint64_t)PH_M1 * l.c2[i];
                uint32_t n0 = (uint32_t)(p1 >> 32) ^ l.c1[i] ^ k0;
                uint32_t n2 = (uint32_t)(p0 >> 32) ^ l.c3[i] ^ k1;
                l.c1[i] = (uint32_t)p1;
                l.c3[i] = (uint32_t)p0;
                l.c0[i] = n0;
                l.c2[i] = n2;
            }
            k0 += PH_W0;
            k1 += PH_W1;
        }
        lanes_out(&l, m, out + 4 * (size_t)k);
    }
}

#ifdef PHILOX_X86
/* hi and lo of the 32x32 products c * m per 32-bit lane: vpmuludq takes
 * the even lanes; the odd ones shifted down take the second. */
__attribute__((target("avx512f"))) static void blocks_avx512(uint64_t seed, uint32_t stream,
                                                             uint32_t step, uint64_t b0, int nb,
                                                             uint32_t *out)
{
    const __m512i m0 = _mm512_set1_epi32((int)PH_M0), m1 = _mm512_set1_epi32((int)PH_M1);
    const __mmask16 odd = 0xAAAA;
    ph_lanes_t l;
    memset(&l, 0, sizeof l);
    for (int k = 0; k < nb; k += 16) {
        int m = nb - k < 16 ? nb - k : 16;
        lanes_in(&l, 16, b0 + (uint64_t)k, stream, step);
        __m512i c0 = _mm512_loadu_si512(l.c0), c1 = _mm512_loadu_si512(l.c1);
        __m512i c2 = _mm512_loadu_si512(l.c2), c3 = _mm512_loadu_si512(l.c3);
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int r = 0; r < 10; r++) {
            __m512i e0 = _mm512_mul_epu32(c0, m0);
            __m512i o0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
            __m512i e1 = _mm512_mul_epu32(c2, m1);
            __m512i o1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
            __m512i hi0 = _mm512_mask_blend_epi32(odd, _mm512_srli_epi64(e0, 32), o0);
            __m512i lo0 = _mm512_mask_blend_epi32(odd, e0, _mm512_slli_epi64(o0, 32));
            __m512i hi1 = _mm512_mask_blend_epi32(odd, _mm512_srli_epi64(e1, 32), o1);
            __m512i lo1 = _mm512_mask_blend_epi32(odd, e1, _mm512_slli_epi64(o1, 32));
            __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)k0));
            __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)k1));
            c0 = n0;
            c1 = lo1;
            c2 = n2;
            c3 = lo0;
            k0 += PH_W0;
            k1 += PH_W1;
        }
        _mm512_storeu_si512(l.c0, c0);
        _mm512_storeu_si512(l.c1, c1);
        _mm512_storeu_si512(l.c2, c2);
        _mm512_storeu_si512(l.c3, c3);
        lanes_out(&l, m, out + 4 * (size_t)k);
    }
}

__attribute__((target("avx2"))) static void blocks_avx2(uint64_t seed, uint32_t stream,
                                                        uint32_t step, uint64_t b0, int nb,
                                                        uint32_t *out)
{
    const __m256i m0 = _mm256_set1_epi32((int)PH_M0), m1 = _mm256_set1_epi32((int)PH_M1);
    ph_lanes_t l;
    memset(&l, 0, sizeof l);
    for (int k = 0; k < nb; k += 8) {
        int m = nb - k < 8 ? nb - k : 8;
        lanes_in(&l, 8, b0 + (uint64_t)k, stream, step);
        __m256i c0 = _mm256_loadu_si256((const __m256i *)l.c0);
        __m256i c1 = _mm256_loadu_si256((const __m256i *)l.c1);
        __m256i c2 = _mm256_loadu_si256((const __m256i *)l.c2);
        __m256i c3 = _mm256_loadu_si256((const __m256i *)l.c3);
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int r = 0; r < 10; r++) {
            __m256i e0 = _mm256_mul_epu32(c0, m0);
            __m256i o0 = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), m0);
            __m256i e1 = _mm256_mul_epu32(c2, m1);
            __m256i o1 = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), m1);
            __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(e0, 32), o0, 0xAA);
            __m256i lo0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
            __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(e1, 32), o1, 0xAA);
            __m256i lo1 = _mm256_blend_epi32(e1, _mm256_slli_epi64(o1, 32), 0xAA);
            __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
            __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
            c0 = n0;
            c1 = lo1;
            c2 = n2;
            c3 = lo0;
            k0 += PH_W0;
            k1 += PH_W1;
        }
        _mm256_storeu_si256((__m256i *)l.c0, c0);
        _mm256_storeu_si256((__m256i *)l.c1, c1);
        _mm256_storeu_si256((__m256i *)l.c2, c2);
        _mm256_storeu_si256((__m256i *)l.c3, c3);
        lanes_out(&l, m, out + 4 * (size_t)k);
    }
}
#endif

nllm_philox_blocks_fn nllm_philox_variant(const char *name)
{
    if (strcmp(name, "scalar") == 0)
        return blocks_scalar;
#ifdef PHILOX_X86
    __builtin_cpu_init();
    if (strcmp(name, "avx512") == 0 && __builtin_cpu_supports("avx512f"))
        return blocks_avx512;
    if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2"))
        return blocks_avx2;
#endif
    return NULL;
}

static nllm_philox_blocks_fn best;
static pthread_once_t best_once = PTHREAD_ONCE_INIT;

static void pick_best(void)
{
    const char *order[] = {"avx512", "avx2", "scalar"};
    for (int i = 0; i < 3 && !best; i++)
        best = nllm_philox_variant(order[i]);
}

nllm_philox_blocks_fn nllm_philox_best(void)
{
    pthread_once(&best_once, pick_best);
    return best;
}
