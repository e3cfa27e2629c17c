#!/usr/bin/python3
"""torch_bench.py -- PyTorch CPU training-speed baseline for the model of docs/model.md.

Trains --warmup + --steps steps of bench/torch_model.py on random windows
(ids uniform in 1..V-1), Adam lr 1e-4, clip 0.5, with the flags of nllm-bench,
and prints ONE JSON line: impl, tokens_per_s, gflops, step_ms_median, config.
Tokens per step = B*(S-1); FLOPs per token = model.md's cost formula (x6).
Timing: median of the per-step wall times after the warmup steps.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from torch_model import ContextVectorLM, flops_per_token, make_adam, train_step  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=64, help="S, tokens per window")
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--embed-dim", type=int, default=256)
    ap.add_argument("--hidden-dim", type=int, default=512)
    ap.add_argument("--context-dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-norm", type=float, default=0.5)
    ap.add_argument("--naive", action="store_true",
                    help="literal per-position loop (default: position-independent work batched)")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.warmup < 0 or a.seq_len < 2 or a.batch < 1 or a.vocab < 2:
        ap.error("need --steps >= 1, --warmup >= 0, --seq-len >= 2, --batch >= 1, --vocab >= 2")
    return a


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = ContextVectorLM(a.vocab, a.embed_dim, a.hidden_dim, a.context_dim, a.layers,
                            a.dropout, fast=not a.naive, dropout_mode="torch")
    model.train()
    opt = make_adam(model, lr=a.lr)
    times = []
    loss = float("nan")
    for i in range(a.warmup + a.steps):
        window = torch.randint(1, a.vocab, (a.batch, a.seq_len))
        t0 = time.perf_counter()
        loss, _ = train_step(model, opt, window, a.max_norm)
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    tokens = a.batch * (a.seq_len - 1)
    tps = tokens / med
    fpt = flops_per_token(a.vocab, a.embed_dim, a.hidden_dim, a.context_dim, a.layers)
    out = {
        "impl": "pytorch",
        "tokens_per_s": round(tps, 3),
        "gflops": round(tps * fpt / 1e9, 4),
        "step_ms_median": round(med * 1e3, 3),
        "step_ms": [round(t * 1e3, 3) for t in times],
        "final_loss": round(loss, 6),
        "config": {
            "batch": a.batch, "seq_len": a.seq_len, "vocab": a.vocab,
            "embed_dim": a.embed_dim, "hidden_dim": a.hidden_dim,
            "context_dim": a.context_dim, "layers": a.layers, "dropout": a.dropout,
            "steps": a.steps, "warmup": a.warmup, "threads": a.threads,
            "variant": "naive" if a.naive else "batched",
            "flops_per_token": fpt, "torch": torch.__version__,
        },
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
