/* nllm_math.h -- per-element arithmetic shared by every backend.
 *
 * Owns the counter-based RNG (Philox4x32-10) that dropout masks, the data
 * shuffle and weight initialisation draw from, and the small per-element
 * formulas (sigmoid, dropout keep test, Adam update). Everything here is
 * `static inline` and, when compiled by nvcc, `__host__ __device__`, so the
 * CPU tests exercise exactly the formulas the GPU runs and both produce
 * identical dropout masks. No state, no allocation, no I/O.
 */
#ifndef NLLM_MATH_H
#define NLLM_MATH_H

#include <stdint.h>
#include <math.h>

#ifdef __CUDACC__
#define NLLM_HD __host__ __device__ __forceinline__
#else
#define NLLM_HD static inline
#endif

/* ---- Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
 * 1, 2, 3", SC'11; constants and round order as in Random123). ---------- */

typedef struct { uint32_t v[4]; } nllm_philox_ctr_t;

NLLM_HD void nllm__mulhilo32(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

NLLM_HD nllm_philox_ctr_t nllm_philox4x32_10(nllm_philox_ctr_t c, uint32_t k0, uint32_t k1)
{
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, lo0, hi1, lo1;
        nllm__mulhilo32(0xD2511F53u, c.v[0], &hi0, &lo0);
        nllm__mulhilo32(0xCD9E8D57u, c.v[2], &hi1, &lo1);
        nllm_philox_ctr_t n;
        n.v[0] = hi1 ^ c.v[1] ^ k0;
        n.v[1] = lo1;
        n.v[2] = hi0 ^ c.v[3] ^ k1;
        n.v[3] = lo0;
        c = n;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c;
}

/* Streams: the third counter word separates independent uses of one seed. */
enum {
    NLLM_STREAM_DROPOUT0 = 0,            /* dropout after Linear l: stream l */
    NLLM_STREAM_SHUFFLE = 0x7FFF0001,    /* per-epoch data order            */
    NLLM_STREAM_VALSPLIT = 0x7FFF0002,   /* train/val paragraph split       */
    NLLM_STREAM_SAMPLE = 0x7FFF0003,     /* text generation                 */
    NLLM_STREAM_INIT0 = 0x00010000       /* init of parameter tensor i: +i  */
};

/* Four 32-bit words for block `blk` of a stream:
 * counter = {blk lo, blk hi, stream, step}, key = {seed lo, seed hi}. */
NLLM_HD nllm_philox_ctr_t nllm_rng_block(uint64_t seed, uint32_t stream, uint32_t step,
                                         uint64_t blk)
{
    nllm_philox_ctr_t c;
    c.v[0] = (uint32_t)blk;
    c.v[1] = (uint32_t)(blk >> 32);
    c.v[2] = stream;
    c.v[3] = step;
    return nllm_philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
}

/* 64 random bits for index idx: words 0 (high) and 1 (low) of block idx. */
NLLM_HD uint64_t nllm_rng_u64(uint64_t seed, uint32_t stream, uint32_t step, uint64_t idx)
{
    nllm_philox_ctr_t r = nllm_rng_block(seed, stream, step, idx);
    return ((uint64_t)r.v[0] << 32) | r.v[1];
}

/* A 32-bit word to a float uniform in [0, 1) with 24 bits of precision. */
NLLM_HD float nllm_u01(uint32_t w)
{
    return (float)(w >> 8) * (1.0f / 16777216.0f);
}

/* Dropout: element idx of stream `stream` at optimizer step `step` is kept
 * iff u01(word idx%4 of block idx/4) >= p. The element index of the
 * activation (b, t, j) of a [B, T, H] batch is (b*T + t)*H + j. */
NLLM_HD int nllm_dropout_keep(uint64_t seed, uint32_t stream, uint32_t step, uint64_t idx,
                              float p)
{
    nllm_philox_ctr_t r = nllm_rng_block(seed, stream, step, idx >> 2);
    return nllm_u01(r.v[idx & 3]) >= p;
}

/* Inverted-dropout scale for kept units. */
NLLM_HD float nllm_dropout_scale(float p)
{
    return p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
}

/* Standard normal draw for element idx (Box-Muller on words 0 and 1,
 * computed in double so every machine rounds it the same way). */
NLLM_HD double nllm_rng_normal(uint64_t seed, uint32_t stream, uint64_t idx)
{
    nllm_philox_ctr_t r = nllm_rng_block(seed, stream, 0, idx);
    double u1 = ((double)(r.v[0] >> 8) + 1.0) * (1.0 / 16777216.0); /* (0, 1] */
    double u2 = (double)(r.v[1] >> 8) * (1.0 / 16777216.0);         /* [0, 1) */
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Uniform integer in [0, n) for index idx (n > 0; bias below 2^-40). */
NLLM_HD uint64_t nllm_rng_below(uint64_t seed, uint32_t stream, uint32_t step, uint64_t idx,
                                uint64_t n)
{
    return nllm_rng_u64(seed, stream, step, idx) % n;
}

/* ---- per-element model formulas --------------------------------------- */

NLLM_HD float nllm_sigmoidf(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

#define NLLM_LN_EPS 1e-5f
#define NLLM_CLAMP 10.0f

/* Adam, as torch.optim.Adam (single-tensor path) computes it:
 *   g  = grad * clip_scale + wd * p
 *   m  = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
 *   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
 * with bc1 = 1 - b1^t, bc2 = 1 - b2^t, t the 1-based step. The caller fills
 * the per-step constants once, in double precision (nllm_adam_consts). */
typedef struct {
    float b1, omb1, b2, omb2; /* beta1, 1 - beta1, beta2, 1 - beta2 */
    float eps, wd;
    float step_size;          /* lr / (1 - b1^t)                    */
    float bc2_sqrt;           /* sqrt(1 - b2^t)                     */
    float clip_scale;         /* global-norm clip factor (1: none)  */
} nllm_adam_consts_t;

NLLM_HD nllm_adam_consts_t nllm_adam_consts(double lr, double b1, double b2, double eps,
                                            double wd, int64_t t, double clip_scale)
{
    nllm_adam_consts_t c;
    c.b1 = (float)b1;
    c.omb1 = (float)(1.0 - b1);
    c.b2 = (float)b2;
    c.omb2 = (float)(1.0 - b2);
    c.eps = (float)eps;
    c.wd = (float)wd;
    c.step_size = (float)(lr / (1.0 - pow(b1, (double)t)));
    c.bc2_sqrt = (float)sqrt(1.0 - pow(b2, (double)t));
    c.clip_scale = (float)clip_scale;
    return c;
}

NLLM_HD void nllm_adam_update(float *p, float *m, float *v, float grad,
                              const nllm_adam_consts_t *c)
{
    float g = grad * c->clip_scale;
    if (c->wd != 0.0f)
        g = g + c->wd * *p;
    float mm = *m * c->b1 + c->omb1 * g;
    float vv = *v * c->b2 + c->omb2 * g * g;
    *m = mm;
    *v = vv;
    float denom = sqrtf(vv) / c->bc2_sqrt + c->eps;
    *p = *p - c->step_size * (mm / denom);
}

/* Global-norm clipping as torch.nn.utils.clip_grad_norm_: the factor is
 * max_norm / (norm + 1e-6) when that is below 1, else 1 (also with
 * max_norm <= 0: no clipping). Computed in double by every backend. */
NLLM_HD double nllm_clip_factor(double norm, double max_norm)
{
    if (max_norm > 0.0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0)
            return coef;
    }
    return 1.0;
}

#endif /* NLLM_MATH_H */
