/* nllm_parity.c -- the C side of the PyTorch parity test (tests/parity.py).
 *
 * `nllm-parity IN.safetensors OUT.safetensors`: IN holds every model tensor
 * (model.md names), `input_ids` I32 [B, S] and metadata config, seed, step,
 * train, lr, max_norm, weight_decay, adam_steps. OUT receives the loss,
 * accuracy, logits and every gradient of the first forward/backward, the
 * gradient norm, and every parameter after adam_steps Adam steps (each
 * clipped with torch's clip_grad_norm_ rule). Exit 0 on success.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "model.h"
#include "safetensors.h"

static int die(const char *what, const nllm_err_t *err)
{
    fprintf(stderr, "nllm-parity: %s: %s\n", what, err ? err->msg : "");
    return 1;
}

static double meta_num(const nllm_st_file_t *f, const char *key, double dflt)
{
    const char *v = nllm_st_meta(f, key);
    return v ? strtod(v, NULL) : dflt;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: nllm-parity IN.safetensors OUT.safetensors\n");
        return 2;
    }
    nllm_err_t err;
    nllm_st_file_t *in;
    if (nllm_st_open(argv[1], &in, NULL, &err) < 0)
        return die("input", &err);
    const char *cj = nllm_st_meta(in, "config");
    json_error_t je;
    json_t *cfgj = cj ? json_loads(cj, 0, &je) : NULL;
    if (!cfgj)
        return die("input has no valid \"config\" metadata", NULL);
    nllm_job_config_t jc;
    nllm_job_config_defaults(&jc);
    if (nllm_job_config_from_json(cfgj, &jc, &err) < 0)
        return die("config", &err);
    json_decref(cfgj);
    const nllm_st_tensor_t *ids = nllm_st_find(in, "input_ids");
    if (!ids || ids->dtype != NLLM_ST_I32 || ids->ndim != 2 ||
        ids->shape[1] != jc.model.max_seq_length)
        return die("input_ids must be I32 [B, max_seq_length]", NULL);
    const int B = (int)ids->shape[0];
    const int32_t *win = ids->data;
    uint64_t seed = strtoull(nllm_st_meta(in, "seed") ? nllm_st_meta(in, "seed") : "0", NULL, 10);
    uint32_t step = (uint32_t)meta_num(in, "step", 0);
    int train = (int)meta_num(in, "train", 1);
    double lr = meta_num(in, "lr", 1e-4), max_norm = meta_num(in, "max_norm", 0),
           wd = meta_num(in, "weight_decay", 0);
    int adam_steps = (int)meta_num(in, "adam_steps", 1);

    nllm_backend_t *be;
    if (nllm_backend_create(getenv("NLLM_PARITY_DEVICE") ? getenv("NLLM_PARITY_DEVICE") : "cpu",
                            0, &be, &err) < 0)
        return die("backend", &err);
    nllm_model_t *m;
    if (nllm_model_create(&jc.model, be, B, &m, &err) < 0)
        return die("model", &err);
    int64_t nf = nllm_model_num_floats(m);
    float *w = calloc((size_t)nf, sizeof(float)), *g = calloc((size_t)nf, sizeof(float));
    for (int i = 0; i < nllm_model_num_params(m); i++) {
        const nllm_param_info_t *p = nllm_model_param(m, i);
        const float *src;
        if (nllm_st_get_f32(in, p->name, p->ndim, p->shape, &src, &err) < 0)
            return die("weights", &err);
        memcpy(w + p->offset, src, sizeof(float) * (size_t)p->numel);
    }
    if (nllm_model_set_state(m, w, NULL, NULL, &err) < 0)
        return die("set_state", &err);

    const int T = jc.model.max_seq_length - 1, V = jc.model.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)B * T * V);
    nllm_batch_stats_t st;
    if (nllm_model_forward(m, win, B, train, seed, step, 0, &st, &err) < 0 ||
        nllm_model_get_logits(m, logits, &err) < 0)
        return die("forward", &err);
    float loss = st.tokens ? (float)(st.loss_sum / (double)st.tokens) : 0.0f;
    float acc = st.tokens ? (float)((double)st.correct / (double)st.tokens) : 0.0f;
    if (nllm_model_forward(m, win, B, train, seed, step, 1, &st, &err) < 0 ||
        nllm_model_backward(m, &err) < 0 || nllm_model_get_grads(m, g, &err) < 0)
        return die("backward", &err);
    float gnorm = (float)nllm_model_grad_norm(m);

    /* Adam steps on the same batch, torch's order: forward, backward, clip, step */
    for (int k = 0; k < adam_steps; k++) {
        if (nllm_model_forward(m, win, B, train, seed, step + (uint32_t)k, 1, &st, &err) < 0 ||
            nllm_model_backward(m, &err) < 0)
            return die("train step", &err);
        double norm = nllm_model_grad_norm(m), clip = 1.0;
        if (max_norm > 0 && max_norm / (norm + 1e-6) < 1.0)
            clip = max_norm / (norm + 1e-6);
        nllm_adam_consts_t c = nllm_adam_consts(lr, 0.9, 0.999, 1e-8, wd, k + 1, clip);
        nllm_model_adam(m, &c);
    }
    float *w2 = calloc((size_t)nf, sizeof(float));
    if (nllm_model_get_state(m, w2, NULL, NULL, &err) < 0)
        return die("get_state", &err);

    nllm_st_writer_t *wr = nllm_st_writer_new();
    int64_t one = 1, lshape[3] = {B, T, V};
    nllm_st_writer_add(wr, "loss", NLLM_ST_F32, 1, &one, &loss, &err);
    nllm_st_writer_add(wr, "accuracy", NLLM_ST_F32, 1, &one, &acc, &err);
    nllm_st_writer_add(wr, "grad_norm", NLLM_ST_F32, 1, &one, &gnorm, &err);
    nllm_st_writer_add(wr, "logits", NLLM_ST_F32, 3, lshape, logits, &err);
    char (*names)[96] = calloc((size_t)nllm_model_num_params(m) * 2, sizeof *names);
    for (int i = 0; i < nllm_model_num_params(m); i++) {
        const nllm_param_info_t *p = nllm_model_param(m, i);
        snprintf(names[2 * i], sizeof names[0], "grad.%s", p->name);
        snprintf(names[2 * i + 1], sizeof names[0], "updated.%s", p->name);
        if (nllm_st_writer_add(wr, names[2 * i], NLLM_ST_F32, p->ndim, p->shape, g + p->offset,
                               &err) < 0 ||
            nllm_st_writer_add(wr, names[2 * i + 1], NLLM_ST_F32, p->ndim, p->shape,
                               w2 + p->offset, &err) < 0)
            return die("output", &err);
    }
    if (nllm_st_writer_save(wr, argv[2], NULL, NULL, &err) < 0)
        return die("write", &err);
    nllm_st_writer_free(wr);
    free(names);
    free(w);
    free(w2);
    free(g);
    free(logits);
    nllm_model_destroy(m);
    be->destroy(be);
    nllm_st_close(in);
    return 0;
}
