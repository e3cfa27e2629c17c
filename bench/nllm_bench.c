/* nllm_bench.c -- trains N steps of the model on random tokens and prints
 * one JSON line: tokens/s, useful GFLOP/s (model.md's cost formula: 6 FLOP
 * per multiply-add per token for training), the median step time, and the
 * config. Steps are queued as the trainer queues them (figures read once
 * per NLLM_STATS_RING steps; on CUDA each step replays one graph), or
 * waited for one by one with --sync. With --sgemm it also times the
 * backend's own SGEMM on an n^3 product in the same run, so the two rates
 * can be compared side by side.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "cpu/cpu_kernels.h"
#include "ckpt.h"
#include "data.h"
#include "cuda/cuda_backend.h"
#include "model.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* s as the inside of a JSON string: quotes, backslashes and controls
 * become spaces (the figures' labels need no more). */
static void put_json_text(const char *s)
{
    for (const char *c = s; *c; c++)
        putchar(*c == '"' || *c == '\\' || (unsigned char)*c < 0x20 ? ' ' : *c);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nllm-bench [options]\n"
            "Trains --steps steps of the context-vector model on random tokens and prints\n"
            "one JSON line with tokens_per_s, gflops and the config.\n\n"
            "  --batch N        windows per step (default 512)\n"
            "  --seq-len N      tokens per window S (default 64)\n"
            "  --vocab N        vocabulary size V (default 1000)\n"
            "  --embed-dim N    De (default 256)\n"
            "  --hidden-dim N   H (default 512)\n"
            "  --context-dim N  Dc (default 512)\n"
            "  --layers N       L (default 12)\n"
            "  --dropout X      p (default 0.1)\n"
            "  --steps N        timed steps (default 5)\n"
            "  --warmup N       untimed steps first (default 1)\n"
            "  --threads N      CPU threads (default: all)\n"
            "  --device D       cpu or cuda:N (default cpu)\n"
            "  --precision P    GEMM precision: fp32, tf32 or bf16 (default fp32; the CPU\n"
            "                   implements fp32, and bf16 where it has AMX-BF16)\n"
            "  --data FILE      train on FILE's windows (word tokenizer, --vocab, --seq-len;\n"
            "                   in file order, cycling) instead of random tokens: real text\n"
            "                   has padding and a skewed id distribution, random ids neither\n"
            "  --sync           wait for every step (default: queue them as the trainer\n"
            "                   does, reading their figures every %d steps)\n"
            "  --sgemm N        also time an NxNxN SGEMM on the same backend (0: off)\n"
            "  --checkpoint F   also time a checkpoint of the trained state: the copy to\n"
            "                   host memory (what training waits for) and the durable\n"
            "                   write of F (done on the writer thread in nllmd)\n"
            "  --help\n",
            NLLM_STATS_RING);
}

static int parse_int(const char *opt, const char *s, long lo, long hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "nllm-bench: %s must be an integer in %ld..%ld, not \"%s\"\n", opt, lo,
                hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Times an n^3 SGEMM: returns GFLOP/s (median of reps). */
static double time_sgemm(nllm_backend_t *be, int n, int reps)
{
    size_t bytes = sizeof(float) * (size_t)n * n;
    float *a = be->alloc(be, bytes), *b = be->alloc(be, bytes), *c = be->alloc(be, bytes);
    if (!a || !b || !c)
        return 0;
    float *h = malloc(bytes);
    for (size_t i = 0; i < (size_t)n * n; i++)
        h[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    be->upload(be, a, h, bytes);
    be->upload(be, b, h, bytes);
    free(h);
    double *t = malloc(sizeof(double) * (size_t)reps);
    nllm_err_t err;
    /* each timed sample runs enough products to last a few milliseconds */
    int inner = 1;
    for (;;) {
        double t0 = now_s();
        for (int k = 0; k < inner; k++)
            be->gemm(be, 0, 1, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        be->sync(be, &err);
        if (now_s() - t0 > 0.02 || inner > 1 << 20)
            break;
        inner *= 2;
    }
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        for (int k = 0; k < inner; k++)
            be->gemm(be, 0, 1, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        be->sync(be, &err);
        t[r] = (now_s() - t0) / inner;
    }
    double med = median(t, reps);
    free(t);
    be->free(be, a);
    be->free(be, b);
    be->free(be, c);
    return 2.0 * n * (double)n * n / med / 1e9;
}

int main(int argc, char **argv)
{
    nllm_model_config_t cfg = NLLM_MODEL_CONFIG_DEFAULT;
    int batch = 512, steps = 5, warmup = 1, threads = 0, sgemm = 0, sync_each = 0;
    const char *device = "cpu", *ckpt_path = NULL, *data_path = NULL;
    nllm_precision_t prec = NLLM_PREC_FP32;
    nllm_err_t err;
    enum { O_BATCH = 1, O_SEQ, O_VOCAB, O_DE, O_H, O_DC, O_L, O_P, O_STEPS, O_WARM, O_THR,
           O_DEV, O_SGEMM, O_HELP, O_CKPT, O_PREC, O_SYNC, O_DATA };
    static const struct option opts[] = {
        {"batch", 1, 0, O_BATCH},     {"seq-len", 1, 0, O_SEQ},   {"vocab", 1, 0, O_VOCAB},
        {"embed-dim", 1, 0, O_DE},    {"hidden-dim", 1, 0, O_H},  {"context-dim", 1, 0, O_DC},
        {"layers", 1, 0, O_L},        {"dropout", 1, 0, O_P},     {"steps", 1, 0, O_STEPS},
        {"warmup", 1, 0, O_WARM},     {"threads", 1, 0, O_THR},   {"device", 1, 0, O_DEV},
        {"sgemm", 1, 0, O_SGEMM},     {"help", 0, 0, O_HELP},     {"checkpoint", 1, 0, O_CKPT},
        {"precision", 1, 0, O_PREC},  {"sync", 0, 0, O_SYNC},     {"data", 1, 0, O_DATA},
        {0, 0, 0, 0}};
    int c, rc = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_BATCH: rc = parse_int("--batch", optarg, 1, 1 << 24, &batch); break;
        case O_SEQ: rc = parse_int("--seq-len", optarg, 2, NLLM_DIM_MAX, &cfg.max_seq_length); break;
        case O_VOCAB: rc = parse_int("--vocab", optarg, 5, 1 << 24, &cfg.vocab_size); break;
        case O_DE: rc = parse_int("--embed-dim", optarg, 1, NLLM_DIM_MAX, &cfg.embed_dim); break;
        case O_H: rc = parse_int("--hidden-dim", optarg, 1, NLLM_DIM_MAX, &cfg.hidden_dim); break;
        case O_DC: rc = parse_int("--context-dim", optarg, 2, NLLM_DIM_MAX, &cfg.context_dim); break;
        case O_L: rc = parse_int("--layers", optarg, 1, 1024, &cfg.num_layers); break;
        case O_P: {
            char *end;
            cfg.dropout = strtof(optarg, &end);
            if (end == optarg || *end || !(cfg.dropout >= 0 && cfg.dropout < 1)) {
                fprintf(stderr, "nllm-bench: --dropout must be in [0, 1), not \"%s\"\n", optarg);
                rc = -1;
            }
            break;
        }
        case O_STEPS: rc = parse_int("--steps", optarg, 1, 1000000, &steps); break;
        case O_WARM: rc = parse_int("--warmup", optarg, 0, 1000000, &warmup); break;
        case O_THR: rc = parse_int("--threads", optarg, 1, 4096, &threads); break;
        case O_DEV: device = optarg; break;
        case O_SGEMM: rc = parse_int("--sgemm", optarg, 0, 65536, &sgemm); break;
        case O_CKPT: ckpt_path = optarg; break;
        case O_SYNC: sync_each = 1; break;
        case O_DATA: data_path = optarg; break;
        case O_PREC:
            if ((rc = nllm_precision_parse(optarg, &prec, &err)) < 0)
                fprintf(stderr, "nllm-bench: --%s\n", err.msg);
            break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (rc < 0)
            return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "nllm-bench: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    nllm_backend_t *be;
    if (nllm_backend_create(device, threads, &be, &err) < 0) {
        fprintf(stderr, "nllm-bench: %s\n", err.msg);
        return 1;
    }
    if (nllm_backend_set_precision(be, prec, &err) < 0) {
        fprintf(stderr, "nllm-bench: %s\n", err.msg);
        be->destroy(be);
        return 2;
    }
    nllm_model_t *m;
    if (nllm_model_create(&cfg, be, batch, &m, &err) < 0) {
        fprintf(stderr, "nllm-bench: %s\n", err.msg);
        be->destroy(be);
        return 1;
    }
    nllm_model_init_weights(m, 42);
    const int S = cfg.max_seq_length;
    nllm_dataset_t ds;
    memset(&ds, 0, sizeof ds);
    double pad_share = 0;
    if (data_path) {
        nllm_data_opts_t o;
        nllm_data_opts_init(&o);
        o.train_path = data_path;
        o.vocab_size = cfg.vocab_size;
        o.seq_len = S;
        o.batch = batch;
        if (nllm_data_load(&o, &ds, &err) < 0) {
            fprintf(stderr, "nllm-bench: --data %s: %s\n", data_path, err.msg);
            return 2;
        }
        int64_t pads = 0, all = ds.train.n * (S - 1);
        for (int64_t w = 0; w < ds.train.n; w++)
            for (int t = 1; t < S; t++)
                pads += ds.train.ids[w * S + t] == 0;
        pad_share = all ? (double)pads / (double)all : 0;
    }
    int32_t *win = malloc(sizeof(int32_t) * (size_t)batch * S);
    nllm_optim_t opt = {1e-4, 0.9, 0.999, 1e-8, 0.0, 0.5};
    /* per-step times: each chunk of queued steps (up to one ring) is timed
     * from its first queueing to the read of its figures */
    double *t = malloc(sizeof(double) * (size_t)steps);
    nllm_step_stats_t *st = malloc(sizeof(nllm_step_stats_t) * NLLM_STATS_RING);
    int nt = 0, pending = 0, ch_steps = 0;
    double loss = 0, t_chunk = now_s();
    for (int s = 0; s < warmup + steps; s++) {
        if (data_path)
            for (int b = 0; b < batch; b++)
                memcpy(win + (size_t)b * S,
                       ds.train.ids + (((int64_t)s * batch + b) % ds.train.n) * S,
                       sizeof(int32_t) * (size_t)S);
        else
            for (size_t i = 0; i < (size_t)batch * S; i++)
                win[i] = 1 + (int32_t)nllm_rng_below(1, 77, (uint32_t)s, i,
                                                      (uint64_t)cfg.vocab_size - 1);
        if (s == warmup) {
            /* the warm-up steps' figures are read: timing starts idle */
            if (pending && nllm_model_read_stats(m, 0, pending, st, &err) < 0) {
                fprintf(stderr, "nllm-bench: warm-up: %s\n", err.msg);
                return 1;
            }
            pending = 0;
            t_chunk = now_s();
        }
        if (nllm_model_train_step_async(m, win, batch, 42, (uint32_t)s, s + 1, &opt, pending++,
                                        &err) < 0) {
            fprintf(stderr, "nllm-bench: step %d: %s\n", s, err.msg);
            return 1;
        }
        ch_steps += s >= warmup;
        int last = s == warmup + steps - 1;
        if (sync_each || pending == NLLM_STATS_RING || last || s + 1 == warmup) {
            if (nllm_model_read_stats(m, 0, pending, st, &err) < 0) {
                fprintf(stderr, "nllm-bench: step %d: %s\n", s, err.msg);
                return 1;
            }
            loss = st[pending - 1].batch.loss_sum / (double)st[pending - 1].batch.tokens;
            pending = 0;
            if (ch_steps) {
                double dt = (now_s() - t_chunk) / ch_steps;
                for (int k = 0; k < ch_steps; k++)
                    t[nt++] = dt;
            }
            ch_steps = 0;
            t_chunk = now_s();
        }
    }
    double med = median(t, nt);
    double tokens = (double)batch * (S - 1);
    double tps = tokens / med;
    double gflops = tps * 6.0 * nllm_model_macs_per_token(&cfg) / 1e9;
    double sg = sgemm > 0 ? time_sgemm(be, sgemm, 7) : 0;
    printf("{\"impl\":\"nllm\",\"device\":\"%s\",\"precision\":\"%s\",\"queued\":%s,"
           "\"tokens_per_s\":%.1f,\"gflops\":%.2f,\"step_ms_median\":%.3f,\"loss\":%.4f,",
           be->name, nllm_precision_name(prec), sync_each ? "false" : "true", tps, gflops,
           med * 1e3, loss);
    uint64_t launches = 0, eager = 0;
    char why[256];
    if (nllm_cuda_graph_stats(be, &launches, &eager, why, sizeof why) == 0) {
        printf("\"graph_launches\":%llu,\"eager_bodies\":%llu,\"graph_note\":\"",
               (unsigned long long)launches, (unsigned long long)eager);
        put_json_text(why);
        printf("\",");
    }
    if (strncmp(be->name, "cuda:", 5) == 0)
        printf("\"second_queue\":%s,", be->aux_begin ? "true" : "false");
    if (strcmp(be->name, "cpu") == 0) {
        const nllm_cpu_kernels_t *k = nllm_cpu_kernels();
        printf("\"kernels\":{\"cpu_isa\":\"%s\",\"cpu_features\":\"", nllm_isa_name(k->cpu_isa));
        put_json_text(k->cpu_features);
        printf("\",\"blas\":\"");
        put_json_text(k->blas);
        printf("\",\"blas_core\":\"");
        put_json_text(k->blas_core);
        printf("\",\"blas_isa\":\"%s\",\"blas_check_passed\":%s,\"large_gemm\":\"%s\","
               "\"large_isa\":\"%s\",\"small_gemm\":\"%s\",\"reason\":\"",
               nllm_isa_name(k->blas_isa), k->blas_ok ? "true" : "false", k->large_gemm,
               nllm_isa_name(k->large_isa), k->small_gemm);
        put_json_text(k->reason);
        if (k->bf16_gemm) {
            printf("\",\"bf16_gemm\":\"%s\",\"bf16_note\":null},", k->bf16_gemm);
        } else {
            printf("\",\"bf16_gemm\":null,\"bf16_note\":\"");
            put_json_text(k->bf16_note);
            printf("\"},");
        }
    }
    if (data_path) {
        printf("\"data\":\"");
        put_json_text(data_path);
        printf("\",\"pad_share\":%.4f,", pad_share);
    }
    if (be->mem_peak)
        printf("\"device_mem_peak_mib\":%.1f,", (double)be->mem_peak / 1048576.0);
    if (sgemm > 0)
        printf("\"sgemm_n\":%d,\"sgemm_gflops\":%.2f,\"ratio_to_sgemm\":%.3f,", sgemm, sg,
               gflops / sg);
    if (ckpt_path) {
        /* what a checkpoint costs: the host copy (training waits for it) and the write */
        nllm_ckpt_t ck = {.kind = NLLM_CKPT_EPOCH};
        snprintf(ck.job, sizeof ck.job, "bench");
        nllm_job_config_defaults(&ck.config);
        ck.config.model = cfg;
        nllm_progress_init(&ck.progress);
        ck.nparams = nllm_model_num_params(m);
        ck.params = malloc(sizeof(nllm_param_info_t) * (size_t)ck.nparams);
        for (int i = 0; i < ck.nparams; i++)
            ck.params[i] = *nllm_model_param(m, i);
        ck.nfloats = nllm_model_num_floats(m);
        double t0 = now_s();
        ck.weights = malloc(sizeof(float) * (size_t)ck.nfloats);
        ck.exp_avg = malloc(sizeof(float) * (size_t)ck.nfloats);
        ck.exp_avg_sq = malloc(sizeof(float) * (size_t)ck.nfloats);
        if (nllm_model_get_state(m, ck.weights, ck.exp_avg, ck.exp_avg_sq, &err) < 0) {
            fprintf(stderr, "nllm-bench: %s\n", err.msg);
            return 1;
        }
        double snap = now_s() - t0;
        uint64_t h, size;
        t0 = now_s();
        if (nllm_ckpt_write(&ck, ckpt_path, &h, &size, &err) < 0) {
            fprintf(stderr, "nllm-bench: %s\n", err.msg);
            return 1;
        }
        double wr = now_s() - t0;
        printf("\"checkpoint_bytes\":%llu,\"checkpoint_snapshot_ms\":%.2f,"
               "\"checkpoint_write_ms\":%.2f,",
               (unsigned long long)size, snap * 1e3, wr * 1e3);
        free(ck.params);
        free(ck.weights);
        free(ck.exp_avg);
        free(ck.exp_avg_sq);
        nllm_progress_free(&ck.progress);
    }
    printf("\"config\":{\"batch\":%d,\"seq_len\":%d,\"vocab\":%d,\"embed_dim\":%d,"
           "\"hidden_dim\":%d,\"context_dim\":%d,\"layers\":%d,\"dropout\":%g,\"steps\":%d,"
           "\"threads\":%d}}\n",
           batch, S, cfg.vocab_size, cfg.embed_dim, cfg.hidden_dim, cfg.context_dim,
           cfg.num_layers, (double)cfg.dropout, steps, threads);
    free(win);
    free(t);
    free(st);
    nllm_data_free(&ds);
    nllm_model_destroy(m);
    be->destroy(be);
    return 0;
}
