/* model.c -- forward and back-propagation of the context-vector model on a
 * backend (see model.h and shared/docs/model.md).
 *
 * Layout: activations are time-major, row r = t*B + b for position t of
 * window b, so each time step is one contiguous block of B rows. Only the
 * chain through c(t-1) runs step by step; the embedding half of layer 1,
 * the output head and every weight gradient are one GEMM over all T*B rows.
 * The block for step t of A0 holds [e_t | c(t-1)], so layer 1's input needs
 * no copies and dW_1 is a single GEMM over A0.
 *
 * A training step is queued without a host round trip: the host uploads
 * one block (the per-step scalars of nllm_step_dev_t and the time-major
 * ids), then the backend runs forward, BPTT, weight gradients, the norm,
 * the clip decision and Adam, all reading their per-step values from that
 * device block, and leaves the step's figures in a slot of the stats ring
 * that the caller reads when it wants them. That body is handed to
 * be->record, so a backend may replay it as one graph per batch shape.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { P_EMB = 0 }; /* index of token_embedding.weight in params[] */

/* The ids follow the scalars in the step block, 256-byte aligned. */
#define IDS_OFFSET 256
_Static_assert(sizeof(nllm_step_dev_t) <= IDS_OFFSET, "step block scalars overflow");
#define FWD_SLOT NLLM_STATS_RING /* ring slot of plain forwards */

/* record keys: batch size and what the body does */
enum { KEY_EVAL = 0, KEY_TRAIN = 1 };

static void params_changed(nllm_backend_t *be)
{
    if (be->params_changed)
        be->params_changed(be);
}

/* The backend's second queue (no-ops where it has none). */
static void aux_begin(nllm_backend_t *be)
{
    if (be->aux_begin)
        be->aux_begin(be);
}

static void aux_end(nllm_backend_t *be)
{
    if (be->aux_end)
        be->aux_end(be);
}

static void aux_join(nllm_backend_t *be)
{
    if (be->aux_join)
        be->aux_join(be);
}

struct nllm_model {
    nllm_model_config_t cfg;
    nllm_backend_t *be;
    int max_batch;

    int nparams;
    nllm_param_info_t *params;
    int64_t nfloats;
    /* offsets of the blocks the kernels address directly */
    int64_t off_emb, *off_w, *off_b, off_wo, off_bo, off_wg, off_bg, off_gamma, off_beta;

    float *w, *g, *m1, *m2; /* device: parameters, gradients, Adam moments */

    /* activations (device) for up to max_batch windows */
    float *a0;   /* (N, De+Dc): [e_t | c(t-1)]        */
    float *act;  /* L x (N, H): layer outputs a_l      */
    float *dz;   /* L x (N, H): pre-activation grads   */
    float *gts;  /* (N, 3Dc): gates / their gradients  */
    float *xhat; /* (N, Dc)                             */
    float *rstd; /* (N)                                 */
    float *dn;   /* (N, Dc)                             */
    float *y;    /* (N, V): logits / their gradient     */
    float *dx;   /* (N, De)                             */
    float *dc;   /* (Bm, Dc)                            */
    float *clast;/* (Bm, Dc)                            */
    float *row_loss, *row_hit; /* (N)                   */
    /* the step block: sd, then ids_in and ids_tgt (N each) at IDS_OFFSET */
    unsigned char *dblock;
    nllm_step_dev_t *sd;
    int32_t *ids_in, *ids_tgt;
    nllm_step_out_t *ring; /* (NLLM_STATS_RING + 1); the last: plain forwards */

    /* host mirrors */
    unsigned char *hblock; /* what the next upload sends                */
    nllm_step_dev_t *h_sd; /* its scalars                               */
    int32_t *h_in;         /* its ids (targets follow, at h_in + T*B)   */
    nllm_step_out_t h_ring[NLLM_STATS_RING + 1];
    int64_t slot_tokens[NLLM_STATS_RING + 1];

    /* data parallelism (nllm_model_set_shard, _set_grad_reduce) */
    int32_t shard_win0;
    int64_t shard_tokens;
    void (*grad_reduce)(void *ud, float *g, int64_t n);
    void *grad_reduce_ud;

    /* what the recorded bodies read (fixed for one record key) */
    int cur_B, cur_train, cur_grad;

    /* last forward */
    int last_B, last_grad, last_train;
    uint64_t last_seed;
    uint32_t last_step;
    int64_t last_tokens;
};

/* ---- configuration ----------------------------------------------------- */

int nllm_model_config_check(const nllm_model_config_t *c, nllm_err_t *err)
{
    struct {
        const char *name;
        int32_t v, lo, hi;
    } dims[] = {
        {"vocab_size", c->vocab_size, 5, 1 << 24},
        {"embed_dim", c->embed_dim, 1, NLLM_DIM_MAX},
        {"hidden_dim", c->hidden_dim, 1, NLLM_DIM_MAX},
        {"context_dim", c->context_dim, 2, NLLM_DIM_MAX},
        {"num_layers", c->num_layers, 1, 1024},
        {"max_seq_length", c->max_seq_length, 2, NLLM_DIM_MAX},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].v < dims[i].lo || dims[i].v > dims[i].hi)
            return nllm_err_set(err, NLLM_EINVAL,
                                "model config: %s = %d is out of range (allowed %d..%d)",
                                dims[i].name, dims[i].v, dims[i].lo, dims[i].hi);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return nllm_err_set(err, NLLM_EINVAL,
                            "model config: dropout = %g is out of range (allowed 0 <= p < 1)",
                            (double)c->dropout);
    return 0;
}

double nllm_model_macs_per_token(const nllm_model_config_t *c)
{
    double De = c->embed_dim, H = c->hidden_dim, Dc = c->context_dim, V = c->vocab_size,
           L = c->num_layers;
    return (De + Dc) * H + (L - 1) * H * H + H * V + 3 * H * Dc;
}

/* ---- parameter table ------------------------------------------------- */

#define ALIGN_FLOATS 16

static int64_t align_up(int64_t x)
{
    return (x + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

static void add_param(nllm_model_t *m, const char *name, int ndim, int64_t d0, int64_t d1,
                      int64_t offset, int is_weight)
{
    nllm_param_info_t *p = &m->params[m->nparams++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim == 2 ? d1 : 0;
    p->numel = ndim == 2 ? d0 * d1 : d0;
    p->offset = offset;
    p->is_weight = is_weight;
}

/* Lays out every tensor. The three gate weights are adjacent (one (3Dc, H)
 * matrix) and so are their biases; other blocks start 64-byte aligned.
 * params[] lists the tensors in model.md order (init streams follow it). */
static int build_params(nllm_model_t *m)
{
    const nllm_model_config_t *c = &m->cfg;
    int64_t V = c->vocab_size, De = c->embed_dim, H = c->hidden_dim, Dc = c->context_dim;
    int L = c->num_layers;
    m->params = calloc((size_t)(2 * L + 11), sizeof *m->params);
    m->off_w = calloc((size_t)L, sizeof(int64_t));
    m->off_b = calloc((size_t)L, sizeof(int64_t));
    if (!m->params || !m->off_w || !m->off_b)
        return NLLM_ENOMEM;
    int64_t off = 0;
    m->off_emb = off;
    off = align_up(off + V * De);
    for (int l = 0; l < L; l++) {
        int64_t in = l == 0 ? De + Dc : H;
        m->off_w[l] = off;
        off = align_up(off + H * in);
        m->off_b[l] = off;
        off = align_up(off + H);
    }
    m->off_wo = off;
    off = align_up(off + V * H);
    m->off_bo = off;
    off = align_up(off + V);
    m->off_wg = off;
    off = align_up(off + 3 * Dc * H);
    m->off_bg = off;
    off = align_up(off + 3 * Dc);
    m->off_gamma = off;
    off = align_up(off + Dc);
    m->off_beta = off;
    off = align_up(off + Dc);
    m->nfloats = off;

    char name[48];
    add_param(m, "token_embedding.weight", 2, V, De, m->off_emb, 1);
    for (int l = 0; l < L; l++) {
        int64_t in = l == 0 ? De + Dc : H;
        snprintf(name, sizeof name, "fnn_layers.%d.weight", 3 * l);
        add_param(m, name, 2, H, in, m->off_w[l], 1);
        snprintf(name, sizeof name, "fnn_layers.%d.bias", 3 * l);
        add_param(m, name, 1, H, 0, m->off_b[l], 0);
    }
    add_param(m, "token_output.weight", 2, V, H, m->off_wo, 1);
    add_param(m, "token_output.bias", 1, V, 0, m->off_bo, 0);
    static const char *heads[3] = {"context_update", "forget_gate", "input_gate"};
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "%s.weight", heads[k]);
        add_param(m, name, 2, Dc, H, m->off_wg + k * Dc * H, 1);
        snprintf(name, sizeof name, "%s.bias", heads[k]);
        add_param(m, name, 1, Dc, 0, m->off_bg + k * Dc, 0);
    }
    add_param(m, "context_norm.weight", 1, Dc, 0, m->off_gamma, 0);
    add_param(m, "context_norm.bias", 1, Dc, 0, m->off_beta, 0);
    return 0;
}

int nllm_model_layout(const nllm_model_config_t *cfg, nllm_param_info_t **params, int *nparams,
                      int64_t *nfloats, nllm_err_t *err)
{
    *params = NULL;
    int rc = nllm_model_config_check(cfg, err);
    if (rc < 0)
        return rc;
    nllm_model_t tmp = {.cfg = *cfg};
    rc = build_params(&tmp);
    free(tmp.off_w);
    free(tmp.off_b);
    if (rc < 0) {
        free(tmp.params);
        return nllm_err_set(err, NLLM_ENOMEM, "model layout: out of memory");
    }
    *params = tmp.params;
    *nparams = tmp.nparams;
    *nfloats = tmp.nfloats;
    return 0;
}

/* ---- creation ---------------------------------------------------------- */

static size_t activation_floats(const nllm_model_config_t *c, int Bm)
{
    size_t T = (size_t)c->max_seq_length - 1, N = T * (size_t)Bm;
    size_t De = c->embed_dim, H = c->hidden_dim, Dc = c->context_dim, V = c->vocab_size,
           L = c->num_layers;
    return N * (De + Dc) + 2 * L * N * H + N * 3 * Dc + 2 * N * Dc + N + N * V + N * De +
           2 * (size_t)Bm * Dc + 2 * N + 2 * N /* ids */ +
           (IDS_OFFSET + sizeof(nllm_step_out_t) * (NLLM_STATS_RING + 1)) / sizeof(float);
}

size_t nllm_model_bytes_needed(const nllm_model_config_t *c, int max_batch)
{
    nllm_model_t tmp = {.cfg = *c};
    size_t params = 0;
    if (build_params(&tmp) == 0)
        params = (size_t)tmp.nfloats * 4 * sizeof(float);
    free(tmp.params);
    free(tmp.off_w);
    free(tmp.off_b);
    return params + activation_floats(c, max_batch) * sizeof(float);
}

size_t nllm_model_device_bytes(const nllm_model_t *m)
{
    return nllm_model_bytes_needed(&m->cfg, m->max_batch);
}

#define DEV_ALLOC(ptr, count, type)                                                      \
    do {                                                                                 \
        (ptr) = (type *)be->alloc(be, sizeof(type) * (size_t)(count));                   \
        if (!(ptr))                                                                      \
            goto oom;                                                                    \
    } while (0)

int nllm_model_create(const nllm_model_config_t *cfg, nllm_backend_t *be, int max_batch,
                      nllm_model_t **out, nllm_err_t *err)
{
    *out = NULL;
    int rc = nllm_model_config_check(cfg, err);
    if (rc < 0)
        return rc;
    if (max_batch < 1 || max_batch > (1 << 24))
        return nllm_err_set(err, NLLM_EINVAL, "batch size %d is out of range (allowed 1..%d)",
                            max_batch, 1 << 24);
    size_t T = (size_t)cfg->max_seq_length - 1;
    if (T * (size_t)max_batch > (size_t)INT32_MAX / 4 ||
        T * (size_t)max_batch * (size_t)cfg->vocab_size > ((size_t)1 << 40))
        return nllm_err_set(err, NLLM_EINVAL,
                            "batch %d x %zu positions x vocab %d is too large for one step: "
                            "lower batch or max_seq_length",
                            max_batch, T, cfg->vocab_size);
    nllm_model_t *m = calloc(1, sizeof *m);
    if (!m)
        return nllm_err_set(err, NLLM_ENOMEM, "model: out of host memory");
    m->cfg = *cfg;
    m->be = be;
    m->max_batch = max_batch;
    if (build_params(m) < 0) {
        nllm_model_destroy(m);
        return nllm_err_set(err, NLLM_ENOMEM, "model: out of host memory");
    }
    size_t N = T * (size_t)max_batch;
    size_t De = cfg->embed_dim, H = cfg->hidden_dim, Dc = cfg->context_dim,
           V = cfg->vocab_size, L = cfg->num_layers;
    DEV_ALLOC(m->w, m->nfloats, float);
    DEV_ALLOC(m->g, m->nfloats, float);
    DEV_ALLOC(m->m1, m->nfloats, float);
    DEV_ALLOC(m->m2, m->nfloats, float);
    DEV_ALLOC(m->a0, N * (De + Dc), float);
    DEV_ALLOC(m->act, L * N * H, float);
    DEV_ALLOC(m->dz, L * N * H, float);
    DEV_ALLOC(m->gts, N * 3 * Dc, float);
    DEV_ALLOC(m->xhat, N * Dc, float);
    DEV_ALLOC(m->rstd, N, float);
    DEV_ALLOC(m->dn, N * Dc, float);
    DEV_ALLOC(m->y, N * V, float);
    DEV_ALLOC(m->dx, N * De, float);
    DEV_ALLOC(m->dc, (size_t)max_batch * Dc, float);
    DEV_ALLOC(m->clast, (size_t)max_batch * Dc, float);
    DEV_ALLOC(m->row_loss, N, float);
    DEV_ALLOC(m->row_hit, N, float);
    DEV_ALLOC(m->dblock, IDS_OFFSET + 2 * sizeof(int32_t) * N, unsigned char);
    DEV_ALLOC(m->ring, NLLM_STATS_RING + 1, nllm_step_out_t);
    m->sd = (nllm_step_dev_t *)m->dblock;
    m->ids_in = (int32_t *)(m->dblock + IDS_OFFSET);
    m->ids_tgt = m->ids_in + N;
    m->hblock = calloc(1, IDS_OFFSET + 2 * sizeof(int32_t) * N);
    if (!m->hblock) {
        nllm_model_destroy(m);
        return nllm_err_set(err, NLLM_ENOMEM, "model: out of host memory");
    }
    m->h_sd = (nllm_step_dev_t *)m->hblock;
    m->h_in = (int32_t *)(m->hblock + IDS_OFFSET);
    if (be->params_bind)
        be->params_bind(be, m->w, m->nfloats);
    *out = m;
    return 0;
oom:
    nllm_model_destroy(m);
    {
        size_t need = nllm_model_bytes_needed(cfg, max_batch);
        size_t per_window = activation_floats(cfg, 1) * sizeof(float);
        return nllm_err_set(err, NLLM_ENOMEM,
                            "%s: out of memory allocating the model: batch %d needs about "
                            "%.1f MiB (%.2f MiB per window); lower --batch",
                            be->name, max_batch, (double)need / 1048576.0,
                            (double)per_window / 1048576.0);
    }
}

void nllm_model_destroy(nllm_model_t *m)
{
    if (!m)
        return;
    nllm_backend_t *be = m->be;
    if (be->record_drop)
        be->record_drop(be, m);
    if (be->params_bind && m->w)
        be->params_bind(be, NULL, 0);
    void *dev[] = {m->w,    m->g,    m->m1,       m->m2,      m->a0,     m->act,
                   m->dz,   m->gts,  m->xhat,     m->rstd,    m->dn,     m->y,
                   m->dx,   m->dc,   m->clast,    m->row_loss, m->row_hit, m->dblock,
                   m->ring};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            be->free(be, dev[i]);
    free(m->hblock);
    free(m->params);
    free(m->off_w);
    free(m->off_b);
    free(m);
}

const nllm_model_config_t *nllm_model_config(const nllm_model_t *m) { return &m->cfg; }
nllm_backend_t *nllm_model_backend(const nllm_model_t *m) { return m->be; }
int nllm_model_max_batch(const nllm_model_t *m) { return m->max_batch; }
int nllm_model_num_params(const nllm_model_t *m) { return m->nparams; }
int64_t nllm_model_num_floats(const nllm_model_t *m) { return m->nfloats; }

const nllm_param_info_t *nllm_model_param(const nllm_model_t *m, int i)
{
    return i >= 0 && i < m->nparams ? &m->params[i] : NULL;
}

const nllm_param_info_t *nllm_model_param_by_name(const nllm_model_t *m, const char *name)
{
    for (int i = 0; i < m->nparams; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return &m->params[i];
    return NULL;
}

int64_t nllm_model_num_weights(const nllm_model_t *m)
{
    int64_t n = 0;
    for (int i = 0; i < m->nparams; i++)
        n += m->params[i].numel;
    return n;
}

/* ---- state ----------------------------------------------------------- */

void nllm_model_init_weights(nllm_model_t *m, uint64_t seed)
{
    float *h = calloc((size_t)m->nfloats, sizeof(float));
    if (!h)
        abort();
    for (int i = 0; i < m->nparams; i++) {
        const nllm_param_info_t *p = &m->params[i];
        float *dst = h + p->offset;
        int is_gamma = strcmp(p->name, "context_norm.weight") == 0;
        for (int64_t k = 0; k < p->numel; k++) {
            if (p->is_weight)
                dst[k] = (float)(0.02 * nllm_rng_normal(seed, NLLM_STREAM_INIT0 + (uint32_t)i,
                                                        (uint64_t)k));
            else
                dst[k] = is_gamma ? 1.0f : 0.0f;
        }
    }
    size_t bytes = sizeof(float) * (size_t)m->nfloats;
    m->be->upload(m->be, m->w, h, bytes);
    m->be->zero(m->be, m->m1, bytes);
    m->be->zero(m->be, m->m2, bytes);
    m->be->zero(m->be, m->g, bytes);
    m->be->zero(m->be, m->sd, NLLM_STEP_DEV_HOST_OFFSET); /* new weights: not halted */
    params_changed(m->be);
    free(h);
}

int nllm_model_get_state(nllm_model_t *m, float *weights, float *exp_avg, float *exp_avg_sq,
                         nllm_err_t *err)
{
    size_t bytes = sizeof(float) * (size_t)m->nfloats;
    if (weights)
        m->be->download(m->be, weights, m->w, bytes);
    if (exp_avg)
        m->be->download(m->be, exp_avg, m->m1, bytes);
    if (exp_avg_sq)
        m->be->download(m->be, exp_avg_sq, m->m2, bytes);
    return m->be->sync(m->be, err);
}

int nllm_model_set_state(nllm_model_t *m, const float *weights, const float *exp_avg,
                         const float *exp_avg_sq, nllm_err_t *err)
{
    size_t bytes = sizeof(float) * (size_t)m->nfloats;
    if (weights)
        m->be->upload(m->be, m->w, weights, bytes);
    if (exp_avg)
        m->be->upload(m->be, m->m1, exp_avg, bytes);
    if (exp_avg_sq)
        m->be->upload(m->be, m->m2, exp_avg_sq, bytes);
    m->be->zero(m->be, m->sd, NLLM_STEP_DEV_HOST_OFFSET); /* new weights: not halted */
    params_changed(m->be);
    return m->be->sync(m->be, err);
}

int nllm_model_get_grads(nllm_model_t *m, float *grads, nllm_err_t *err)
{
    m->be->download(m->be, grads, m->g, sizeof(float) * (size_t)m->nfloats);
    return m->be->sync(m->be, err);
}

/* ---- forward --------------------------------------------------------- */

/* Host half of a step: checks the ids, writes them time-major with the
 * per-step scalars into the host block and uploads it (one copy, no wait).
 * The caller has set h_sd->max_norm and h_sd->adam where they matter. */
static int prepare(nllm_model_t *m, const int32_t *windows, int B, int train, int want_grad,
                   uint64_t seed, uint32_t step, uint32_t slot, nllm_err_t *err)
{
    const nllm_model_config_t *c = &m->cfg;
    nllm_backend_t *be = m->be;
    if (B < 1 || B > m->max_batch)
        return nllm_err_set(err, NLLM_EINVAL, "forward: batch %d outside 1..%d", B,
                            m->max_batch);
    const int S = c->max_seq_length, T = S - 1, V = c->vocab_size;
    const int N = T * B;
    /* time-major ids; count the non-pad targets */
    int64_t tokens = 0;
    int32_t *h_tgt = m->h_in + N; /* ids_tgt follows ids_in for this B */
    for (int b = 0; b < B; b++) {
        const int32_t *w = windows + (size_t)b * S;
        for (int t = 0; t < T; t++) {
            int32_t x = w[t], y = w[t + 1];
            if (x < 0 || x >= V || y < 0 || y >= V)
                return nllm_err_set(err, NLLM_EINVAL,
                                    "forward: token id %d at window %d position %d is outside "
                                    "the vocabulary 0..%d",
                                    (x < 0 || x >= V) ? x : y, b, (x < 0 || x >= V) ? t : t + 1,
                                    V - 1);
            m->h_in[t * B + b] = x;
            h_tgt[t * B + b] = y;
            tokens += y != 0;
        }
    }
    nllm_step_dev_t *h = m->h_sd;
    h->seed = seed;
    h->rng_step = step;
    h->slot = slot;
    /* a training slice of a global batch scales by the global count */
    int64_t scale_tokens = train && m->shard_tokens > 0 ? m->shard_tokens : tokens;
    h->grad_scale = scale_tokens > 0 ? 1.0f / (float)scale_tokens : 0.0f;
    h->win0 = train ? m->shard_win0 : 0;
    m->ids_tgt = m->ids_in + N;
    be->upload(be, m->dblock + NLLM_STEP_DEV_HOST_OFFSET, m->hblock + NLLM_STEP_DEV_HOST_OFFSET,
               IDS_OFFSET - NLLM_STEP_DEV_HOST_OFFSET + 2 * sizeof(int32_t) * (size_t)N);
    m->slot_tokens[slot] = tokens;
    m->cur_B = B;
    m->cur_train = train;
    m->cur_grad = want_grad;
    m->last_B = B;
    m->last_grad = want_grad;
    m->last_train = train;
    m->last_seed = seed;
    m->last_step = step;
    m->last_tokens = tokens;
    return 0;
}

/* The forward ops of the prepared batch, through the loss and the batch's
 * figures (ring slot sd->slot). */
static void forward_body(nllm_model_t *m)
{
    const nllm_model_config_t *c = &m->cfg;
    nllm_backend_t *be = m->be;
    const int B = m->cur_B, want_grad = m->cur_grad;
    const int S = c->max_seq_length, T = S - 1, V = c->vocab_size, De = c->embed_dim,
              H = c->hidden_dim, Dc = c->context_dim, L = c->num_layers, Da = De + Dc;
    const int N = T * B;
    const float p = m->cur_train ? c->dropout : 0.0f;

    const float *W1 = m->w + m->off_w[0];
    /* e_t for every position into A0[:, :De]; c(-1) = 0 */
    be->embedding_forward(be, m->a0, Da, m->w + m->off_emb, m->ids_in, N, De);
    be->zero_rows(be, m->a0 + De, Da, Dc, B); /* c(-1) of each window: block t = 0 */
    /* embedding half of layer 1 for all positions: A_1 = E_x W1[:, :De]^T */
    be->gemm(be, 0, 1, N, H, De, 1.0f, m->a0, Da, W1, Da, 0.0f, m->act, H);

    nllm_ctx_args_t ca = {B, Dc, m->w + m->off_bg, m->w + m->off_gamma, m->w + m->off_beta};
    const size_t NH = (size_t)N * H;
    /* small batches: each product fused with the element-wise step after it */
    const int small = be->small_nt && B <= be->small_batch;
    for (int t = 0; t < T; t++) {
        size_t r0 = (size_t)t * B;
        float *cprev = t > 0 ? m->a0 + r0 * Da + De : NULL;
        float *a1 = m->act + r0 * H;
        if (cprev && small) {
            be->small_nt(be, B, H, Dc, cprev, Da, W1 + De, Da, 1.0f, a1, H, m->w + m->off_b[0],
                         t, T, m->sd, NLLM_STREAM_DROPOUT0, p);
        } else {
            if (cprev)
                be->gemm(be, 0, 1, B, H, Dc, 1.0f, cprev, Da, W1 + De, Da, 1.0f, a1, H);
            be->bias_relu_dropout_forward(be, a1, m->w + m->off_b[0], B, H, t, T, m->sd,
                                          NLLM_STREAM_DROPOUT0, p);
        }
        for (int l = 1; l < L; l++) {
            float *in = m->act + (size_t)(l - 1) * NH + r0 * H;
            float *o = m->act + (size_t)l * NH + r0 * H;
            if (small) {
                be->small_nt(be, B, H, H, in, H, m->w + m->off_w[l], H, 0.0f, o, H,
                             m->w + m->off_b[l], t, T, m->sd,
                             NLLM_STREAM_DROPOUT0 + (uint32_t)l, p);
                continue;
            }
            be->gemm(be, 0, 1, B, H, H, 1.0f, in, H, m->w + m->off_w[l], H, 0.0f, o, H);
            be->bias_relu_dropout_forward(be, o, m->w + m->off_b[l], B, H, t, T, m->sd,
                                          NLLM_STREAM_DROPOUT0 + (uint32_t)l, p);
        }
        float *h = m->act + (size_t)(L - 1) * NH + r0 * H;
        float *g = m->gts + r0 * 3 * Dc;
        if (small)
            be->small_nt(be, B, 3 * Dc, H, h, H, m->w + m->off_wg, H, 0.0f, g, 3 * Dc, NULL, t,
                         T, m->sd, 0, 0.0f);
        else
            be->gemm(be, 0, 1, B, 3 * Dc, H, 1.0f, h, H, m->w + m->off_wg, H, 0.0f, g, 3 * Dc);
        float *cout = t + 1 < T ? m->a0 + (r0 + (size_t)B) * Da + De : m->clast;
        int ldo = t + 1 < T ? Da : Dc;
        be->context_forward(be, &ca, g, cprev, Da, m->xhat + r0 * Dc, m->rstd + r0, cout, ldo);
    }

    /* output head for all positions */
    const float *hL = m->act + (size_t)(L - 1) * NH;
    be->gemm(be, 0, 1, N, V, H, 1.0f, hL, H, m->w + m->off_wo, H, 0.0f, m->y, V);
    be->softmax_xent(be, m->y, m->w + m->off_bo, m->ids_tgt, N, V, want_grad, m->sd,
                     m->row_loss, m->row_hit);
    be->batch_stats(be, m->row_loss, m->row_hit, N, m->sd, m->ring);
}

static void eval_body(void *ctx)
{
    forward_body(ctx);
}

/* Runs body for the prepared batch: recorded per (batch, kind) where the
 * backend records. */
static void run_body(nllm_model_t *m, int kind, void (*body)(void *))
{
    nllm_backend_t *be = m->be;
    if (be->record)
        be->record(be, m, ((uint64_t)m->cur_B << 1) | (uint64_t)kind, body, m);
    else
        body(m);
}

int nllm_model_forward(nllm_model_t *m, const int32_t *windows, int B, int train, uint64_t seed,
                       uint32_t step, int want_grad, nllm_batch_stats_t *stats, nllm_err_t *err)
{
    nllm_backend_t *be = m->be;
    int rc = prepare(m, windows, B, train, want_grad, seed, step, FWD_SLOT, err);
    if (rc < 0) {
        m->last_B = 0;
        return rc;
    }
    if (!train && !want_grad)
        run_body(m, KEY_EVAL, eval_body); /* validation: the same shape batch after batch */
    else
        forward_body(m);
    be->download(be, &m->h_ring[FWD_SLOT], &m->ring[FWD_SLOT], sizeof(nllm_step_out_t));
    rc = be->sync(be, err);
    if (rc < 0)
        return rc;
    if (stats) {
        stats->loss_sum = m->h_ring[FWD_SLOT].loss_sum;
        stats->tokens = m->slot_tokens[FWD_SLOT];
        stats->correct = m->h_ring[FWD_SLOT].correct;
    }
    return 0;
}

int nllm_model_get_logits(nllm_model_t *m, float *out, nllm_err_t *err)
{
    if (m->last_B == 0 || m->last_grad)
        return nllm_err_set(err, NLLM_ESTATE, "logits: no forward pass without gradients");
    const int B = m->last_B, T = m->cfg.max_seq_length - 1, V = m->cfg.vocab_size;
    float *tmp = malloc(sizeof(float) * (size_t)T * B * V);
    if (!tmp)
        return nllm_err_set(err, NLLM_ENOMEM, "logits: out of memory");
    m->be->download(m->be, tmp, m->y, sizeof(float) * (size_t)T * B * V);
    int rc = m->be->sync(m->be, err);
    if (rc == 0)
        for (int t = 0; t < T; t++)
            for (int b = 0; b < B; b++)
                memcpy(out + ((size_t)b * T + t) * V, tmp + ((size_t)t * B + b) * V,
                       sizeof(float) * V);
    free(tmp);
    return rc;
}

int nllm_model_get_context(nllm_model_t *m, float *out, nllm_err_t *err)
{
    if (m->last_B == 0)
        return nllm_err_set(err, NLLM_ESTATE, "context: no forward pass yet");
    m->be->download(m->be, out, m->clast,
                    sizeof(float) * (size_t)m->last_B * (size_t)m->cfg.context_dim);
    return m->be->sync(m->be, err);
}

/* ---- backward -------------------------------------------------------- */

/* The backward ops of the last forward with gradients (cur_*). */
static void backward_body(nllm_model_t *m)
{
    const nllm_model_config_t *c = &m->cfg;
    nllm_backend_t *be = m->be;
    const int B = m->cur_B, T = c->max_seq_length - 1, V = c->vocab_size, De = c->embed_dim,
              H = c->hidden_dim, Dc = c->context_dim, L = c->num_layers, Da = De + Dc;
    const int N = T * B;
    const size_t NH = (size_t)N * H;
    const float p = m->cur_train ? c->dropout : 0.0f;
    const float *W1 = m->w + m->off_w[0];
    const float *hL = m->act + (size_t)(L - 1) * NH;
    /* dz of the last layer doubles as dh (gradient at h_t) */
    float *dh = m->dz + (size_t)(L - 1) * NH;

    /* output head: dh = dY Wo; dWo = dY^T h and dbo = colsum dY beside the
     * BPTT chain (they read only dY and h) */
    be->gemm(be, 0, 0, N, H, V, 1.0f, m->y, V, m->w + m->off_wo, H, 0.0f, dh, H);
    aux_begin(be);
    be->gemm(be, 1, 0, V, H, N, 1.0f, m->y, V, hL, H, 0.0f, m->g + m->off_wo, H);
    be->col_sum(be, m->g + m->off_bo, m->y, N, V, V);
    aux_end(be);

    /* Weight gradients by chunks of time steps, each as soon as BPTT has
     * finished its rows, on the backend's second queue (where it has one)
     * while the chain goes on: the chunks' products add up, last chunk
     * first. A backend without a second queue takes the whole window as one
     * chunk: one product per weight, as before. */
    const int chunk = be->aux_begin && be->wgrad_chunk > 0 ? be->wgrad_chunk : T;
    int t_hi = T;
    float beta_w = 0.0f;

    nllm_ctx_args_t ca = {B, Dc, m->w + m->off_bg, m->w + m->off_gamma, m->w + m->off_beta};
    const int small = be->small_nn && B <= be->small_batch;
    be->zero(be, m->dc, sizeof(float) * (size_t)B * Dc);
    for (int t = T - 1; t >= 0; t--) {
        size_t r0 = (size_t)t * B;
        float *cprev = t > 0 ? m->a0 + r0 * Da + De : NULL;
        float *g = m->gts + r0 * 3 * Dc;
        /* dc: gradient w.r.t. c(t) -> gate grads, and dc = ds * f */
        be->context_backward(be, &ca, m->dc, g, cprev, Da, m->xhat + r0 * Dc, m->rstd + r0,
                             m->dn + r0 * Dc);
        if (small) {
            /* the same chain, each product fused with the mask after it */
            be->small_nn(be, B, H, 3 * Dc, g, 3 * Dc, m->w + m->off_wg, H, 1.0f, dh + r0 * H, H,
                         NULL, 0.0f);
            be->relu_dropout_backward(be, dh + r0 * H, m->act + (size_t)(L - 1) * NH + r0 * H,
                                      (int64_t)B * H, p);
            for (int l = L - 1; l > 0; l--)
                be->small_nn(be, B, H, H, m->dz + (size_t)l * NH + r0 * H, H, m->w + m->off_w[l],
                             H, 0.0f, m->dz + (size_t)(l - 1) * NH + r0 * H, H,
                             m->act + (size_t)(l - 1) * NH + r0 * H, p);
            if (t > 0)
                be->small_nn(be, B, Dc, H, m->dz + r0 * H, H, W1 + De, Da, 1.0f, m->dc, Dc,
                             NULL, 0.0f);
        } else {
            /* dh_t += dG W_g */
            be->gemm(be, 0, 0, B, H, 3 * Dc, 1.0f, g, 3 * Dc, m->w + m->off_wg, H, 1.0f,
                     dh + r0 * H, H);
            for (int l = L - 1; l >= 0; l--) {
                float *dzl = m->dz + (size_t)l * NH + r0 * H;
                be->relu_dropout_backward(be, dzl, m->act + (size_t)l * NH + r0 * H,
                                          (int64_t)B * H, p);
                if (l > 0)
                    be->gemm(be, 0, 0, B, H, H, 1.0f, dzl, H, m->w + m->off_w[l], H, 0.0f,
                             m->dz + (size_t)(l - 1) * NH + r0 * H, H);
            }
            /* dc(t-1) += dz_1 W1[:, De:] */
            if (t > 0)
                be->gemm(be, 0, 0, B, Dc, H, 1.0f, m->dz + r0 * H, H, W1 + De, Da, 1.0f, m->dc,
                         Dc);
        }
        if (t % chunk != 0)
            continue;
        /* rows of time steps t .. t_hi-1 are final: their share of every
         * weight gradient, and their rows of dX = dz_1 W1[:, :De] */
        const int K = (t_hi - t) * B;
        aux_begin(be);
        for (int l = 1; l < L; l++)
            be->gemm(be, 1, 0, H, H, K, 1.0f, m->dz + (size_t)l * NH + r0 * H, H,
                     m->act + (size_t)(l - 1) * NH + r0 * H, H, beta_w, m->g + m->off_w[l], H);
        be->gemm(be, 1, 0, H, Da, K, 1.0f, m->dz + r0 * H, H, m->a0 + r0 * Da, Da, beta_w,
                 m->g + m->off_w[0], Da);
        be->gemm(be, 1, 0, 3 * Dc, H, K, 1.0f, g, 3 * Dc, hL + r0 * H, H, beta_w,
                 m->g + m->off_wg, H);
        be->gemm(be, 0, 0, K, De, H, 1.0f, m->dz + r0 * H, H, W1, Da, 0.0f, m->dx + r0 * De,
                 De);
        aux_end(be);
        t_hi = t;
        beta_w = 1.0f;
    }
    aux_join(be);

    /* bias, gamma and beta gradients over all positions */
    for (int l = 0; l < L; l++)
        be->col_sum(be, m->g + m->off_b[l], m->dz + (size_t)l * NH, N, H, H);
    be->col_sum(be, m->g + m->off_bg, m->gts, N, 3 * Dc, 3 * Dc);
    be->col_sum(be, m->g + m->off_gamma, m->xhat, N, Dc, Dc);
    be->col_sum(be, m->g + m->off_beta, m->dn, N, Dc, Dc);
    /* embedding: dX scattered by token id */
    be->zero(be, m->g + m->off_emb, sizeof(float) * (size_t)V * De);
    be->embedding_backward(be, m->g + m->off_emb, m->dx, De, m->ids_in, N, De);
}

int nllm_model_backward(nllm_model_t *m, nllm_err_t *err)
{
    if (m->last_B == 0 || !m->last_grad)
        return nllm_err_set(err, NLLM_ESTATE, "backward: no forward pass with gradients");
    backward_body(m);
    m->last_grad = 0; /* activations were consumed */
    return m->be->sync(m->be, err);
}

double nllm_model_grad_norm(nllm_model_t *m)
{
    nllm_backend_t *be = m->be;
    double s = 0.0;
    be->sq_norm(be, m->g, m->nfloats, &m->sd->sqnorm);
    be->download(be, &s, &m->sd->sqnorm, sizeof s);
    if (be->sync(be, NULL) < 0)
        return 0.0; /* the caller's next sync reports the error */
    return sqrt(s);
}

void nllm_model_adam(nllm_model_t *m, const nllm_adam_consts_t *c)
{
    nllm_backend_t *be = m->be;
    m->h_sd->adam = *c;
    be->upload(be, m->dblock + NLLM_STEP_DEV_HOST_OFFSET, m->hblock + NLLM_STEP_DEV_HOST_OFFSET,
               sizeof(nllm_step_dev_t) - NLLM_STEP_DEV_HOST_OFFSET);
    be->adam(be, m->w, m->m1, m->m2, m->g, m->nfloats, m->sd);
    params_changed(be);
}

/* The whole training step after prepare(): forward, BPTT, weight
 * gradients, norm, clip decision and Adam, every per-step value read from
 * the device block. */
static void train_body(void *ctx)
{
    nllm_model_t *m = ctx;
    nllm_backend_t *be = m->be;
    forward_body(m);
    backward_body(m);
    if (m->grad_reduce)
        m->grad_reduce(m->grad_reduce_ud, m->g, m->nfloats); /* sum over ranks */
    be->sq_norm(be, m->g, m->nfloats, &m->sd->sqnorm);
    be->clip(be, m->sd, m->ring);
    be->adam(be, m->w, m->m1, m->m2, m->g, m->nfloats, m->sd);
    params_changed(be);
}

int nllm_model_train_step_async(nllm_model_t *m, const int32_t *windows, int B, uint64_t seed,
                                uint32_t rng_step, int64_t adam_t, const nllm_optim_t *opt,
                                int slot, nllm_err_t *err)
{
    if (slot < 0 || slot >= NLLM_STATS_RING)
        return nllm_err_set(err, NLLM_EINVAL, "train step: stats slot %d outside 0..%d", slot,
                            NLLM_STATS_RING - 1);
    m->h_sd->max_norm = opt->max_norm;
    m->h_sd->adam = nllm_adam_consts(opt->lr, opt->beta1, opt->beta2, opt->eps,
                                     opt->weight_decay, adam_t, 1.0);
    int rc = prepare(m, windows, B, 1, 1, seed, rng_step, (uint32_t)slot, err);
    if (rc < 0) {
        m->last_B = 0;
        return rc;
    }
    run_body(m, KEY_TRAIN, train_body);
    m->last_grad = 0; /* activations were consumed */
    return 0;
}

int nllm_model_read_stats(nllm_model_t *m, int first, int n, nllm_step_stats_t *out,
                          nllm_err_t *err)
{
    if (first < 0 || n < 0 || first + n > NLLM_STATS_RING)
        return nllm_err_set(err, NLLM_EINVAL, "read stats: slots %d..%d outside 0..%d", first,
                            first + n - 1, NLLM_STATS_RING - 1);
    if (n == 0)
        return 0;
    nllm_backend_t *be = m->be;
    be->download(be, &m->h_ring[first], &m->ring[first], sizeof(nllm_step_out_t) * (size_t)n);
    int rc = be->sync(be, err);
    if (rc < 0)
        return rc;
    for (int i = 0; i < n; i++) {
        const nllm_step_out_t *o = &m->h_ring[first + i];
        out[i].batch.loss_sum = o->loss_sum;
        out[i].batch.tokens = m->slot_tokens[first + i];
        out[i].batch.correct = o->correct;
        out[i].grad_norm = o->grad_norm;
        out[i].clip_scale = o->clip_scale;
        out[i].halted = o->halted;
    }
    return 0;
}

int nllm_model_diverged(double grad_norm, uint32_t rng_step, nllm_err_t *err)
{
    return nllm_err_set(err, NLLM_EINVAL,
                        "training diverged: gradient norm is %g at step %u; lower --lr or use "
                        "clipping",
                        grad_norm, rng_step);
}

int nllm_model_train_step(nllm_model_t *m, const int32_t *windows, int B, uint64_t seed,
                          uint32_t rng_step, int64_t adam_t, const nllm_optim_t *opt,
                          nllm_step_stats_t *st, nllm_err_t *err)
{
    nllm_step_stats_t local;
    if (!st)
        st = &local;
    int rc = nllm_model_train_step_async(m, windows, B, seed, rng_step, adam_t, opt, 0, err);
    if (rc == 0)
        rc = nllm_model_read_stats(m, 0, 1, st, err);
    if (rc < 0)
        return rc;
    if (!isfinite(st->grad_norm))
        return nllm_model_diverged(st->grad_norm, rng_step, err);
    return 0;
}

/* ---- data parallelism -------------------------------------------------- */

void nllm_model_set_shard(nllm_model_t *m, int32_t win0, int64_t global_tokens)
{
    m->shard_win0 = win0;
    m->shard_tokens = global_tokens;
}

void nllm_model_set_grad_reduce(nllm_model_t *m, void (*fn)(void *ud, float *g, int64_t n),
                                void *ud)
{
    m->grad_reduce = fn;
    m->grad_reduce_ud = ud;
}

/* ---- generation -------------------------------------------------------- */

int nllm_model_step_logits(nllm_model_t *m, int32_t tok, float *ctx, float *out,
                           nllm_err_t *err)
{
    const nllm_model_config_t *c = &m->cfg;
    nllm_backend_t *be = m->be;
    const int V = c->vocab_size, De = c->embed_dim, H = c->hidden_dim, Dc = c->context_dim,
              L = c->num_layers, Da = De + Dc;
    if (tok < 0 || tok >= V)
        return nllm_err_set(err, NLLM_EINVAL, "generate: token id %d outside 0..%d", tok,
                            V - 1);
    /* one row through the same kernels: A0 row 0 = [e | ctx] */
    m->h_in[0] = tok;
    be->upload(be, m->ids_in, m->h_in, sizeof(int32_t));
    be->embedding_forward(be, m->a0, Da, m->w + m->off_emb, m->ids_in, 1, De);
    be->upload(be, m->a0 + De, ctx, sizeof(float) * (size_t)Dc);
    float *a = m->act, *o = m->act + H;
    be->gemm(be, 0, 1, 1, H, Da, 1.0f, m->a0, Da, m->w + m->off_w[0], Da, 0.0f, a, H);
    be->bias_relu_dropout_forward(be, a, m->w + m->off_b[0], 1, H, 0, 1, m->sd, 0, 0.0f);
    for (int l = 1; l < L; l++) {
        be->gemm(be, 0, 1, 1, H, H, 1.0f, a, H, m->w + m->off_w[l], H, 0.0f, o, H);
        be->bias_relu_dropout_forward(be, o, m->w + m->off_b[l], 1, H, 0, 1, m->sd, 0, 0.0f);
        float *tmp = a;
        a = o;
        o = tmp;
    }
    nllm_ctx_args_t ca = {1, Dc, m->w + m->off_bg, m->w + m->off_gamma, m->w + m->off_beta};
    be->gemm(be, 0, 1, 1, 3 * Dc, H, 1.0f, a, H, m->w + m->off_wg, H, 0.0f, m->gts, 3 * Dc);
    be->context_forward(be, &ca, m->gts, m->a0 + De, Da, m->xhat, m->rstd, m->clast, Dc);
    be->gemm(be, 0, 1, 1, V, H, 1.0f, a, H, m->w + m->off_wo, H, 0.0f, m->y, V);
    const int32_t no_target = 0;
    be->upload(be, m->ids_tgt, &no_target, sizeof no_target);
    be->softmax_xent(be, m->y, m->w + m->off_bo, m->ids_tgt, 1, V, 0, m->sd, m->row_loss,
                     m->row_hit);
    be->download(be, out, m->y, sizeof(float) * (size_t)V);
    be->download(be, ctx, m->clast, sizeof(float) * (size_t)Dc);
    m->last_B = 0; /* activations overwritten */
    return be->sync(be, err);
}
