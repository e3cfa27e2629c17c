#!/usr/bin/python3
"""torch_bench.py -- PyTorch training-speed baseline for the model of docs/model.md.

Trains --warmup + --steps steps of bench/torch_model.py on random windows
(ids uniform in 1..V-1), Adam lr 1e-4, clip 0.5, with the flags of nllm-bench,
and prints ONE JSON line: impl, device, precision, graph, tokens_per_s, gflops,
step_ms_median, config. Tokens per step = B*(S-1); FLOPs per token =
model.md's cost formula (x6). Timing: median of the per-step wall times after
the warmup steps.

--device cpu (default): the CPU loop of torch_model.train_step in fp32, or
with --precision bf16 its forward and loss under torch.autocast("cpu",
bfloat16) (oneDNN's AMX kernels where the CPU has them; beside nllm's bf16
on such CPUs); --precision tf32 and --graph are refused there.

--device cuda:N: every step is timed between two torch.cuda.synchronize()
calls and includes the copy of the step's windows to the device.
  --precision fp32  float32 GEMMs (TF32 off for matmuls and cuDNN)
  --precision tf32  float32 GEMMs with TF32 tensor-core operands
  --precision bf16  forward and loss under torch.autocast(bfloat16); float32
                    master weights, gradients and Adam
Adam runs its foreach path (PyTorch's CUDA default), clipping by the global
norm with foreach and no host sync (error_if_nonfinite=False).
  --graph           the whole step (zero grads, forward, loss, backward,
                    clip, Adam with capturable=True) captured once with
                    torch.cuda.graph after max(3, --warmup) eager steps on a
                    side stream (PyTorch's whole-network capture recipe); each
                    step copies its windows into the static input and replays.
                    Dropout stays on (PyTorch's Philox offsets are graph-safe).
                    --warmup replays (at least 1) are untimed.
Exit status: 0, 2 (bad flags; no CUDA where one is asked for), 3 (out of
device memory), 4 (graph capture failed); a message on stderr says which.
"""
import argparse
import contextlib
import inspect
import json
import os
import re
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from torch_model import (ContextVectorLM, flops_per_token, lm_loss, make_adam,  # noqa: E402
                         train_step)

PRECISIONS = ("fp32", "tf32", "bf16")
GRAPH_EAGER_WARMUP = 3   # eager steps before a capture, as PyTorch's recipe

EXIT_USAGE, EXIT_OOM, EXIT_CAPTURE = 2, 3, 4


class BenchError(Exception):
    """A failure with a message for stderr and an exit status."""

    def __init__(self, msg, status):
        super().__init__(msg)
        self.status = status


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
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda:N")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="GEMM arithmetic: fp32 (default), tf32 (CUDA only) or bf16")
    ap.add_argument("--graph", action="store_true",
                    help="capture the whole training step in a CUDA graph and replay it")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.warmup < 0 or a.seq_len < 2 or a.batch < 1 or a.vocab < 2:
        ap.error("need --steps >= 1, --warmup >= 0, --seq-len >= 2, --batch >= 1, --vocab >= 2")
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", a.device)
    if not m:
        ap.error("--device must be cpu or cuda:N, not %r" % a.device)
    if a.device == "cuda":
        a.device = "cuda:0"
    if a.device == "cpu":
        if a.graph:
            ap.error("--graph needs --device cuda:N (CUDA graphs need a GPU)")
        if a.precision == "tf32":
            ap.error("--precision tf32 needs --device cuda:N: the CPU baseline implements "
                     "fp32 and bf16 (as nllm's CPU backend)")
    return a


# ---- CUDA setup ------------------------------------------------------------------

def cuda_device(name):
    """torch.device for "cuda:N", or BenchError (status 2) with the reason."""
    if not torch.cuda.is_available():
        raise BenchError("--device %s: CUDA is not available to this PyTorch (%s, %s)" % (
            name, torch.__version__,
            "CUDA %s build, no usable GPU" % torch.version.cuda if torch.version.cuda
            else "a CPU-only build"), EXIT_USAGE)
    idx = int(name.split(":")[1])
    n = torch.cuda.device_count()
    if idx >= n:
        raise BenchError("--device %s: this machine has %d CUDA device(s)" % (name, n), EXIT_USAGE)
    return torch.device("cuda", idx)


def tf32_enabled():
    """Whether float32 CUDA matmuls may use TF32, read without PyTorch's mixed-API check."""
    m = torch.backends.cuda.matmul
    try:
        return m.fp32_precision == "tf32"          # PyTorch >= 2.9
    except (AttributeError, AssertionError):        # older: no such attribute
        return bool(m.allow_tf32)


def set_tf32(enabled):
    """float32 matmuls (and cuDNN) with TF32 operands or in full float32.

    The legacy switches (allow_tf32, set_float32_matmul_precision) set PyTorch's
    old and new (2.9+: fp32_precision) flags together, so neither API later
    finds them mixed; they are deprecated from 2.9 (a warning, silenced here).
    Where they fail, the new API alone. Returns the state read back."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32 = enabled
            torch.backends.cudnn.allow_tf32 = enabled
            torch.set_float32_matmul_precision("high" if enabled else "highest")
    except Exception:  # noqa: BLE001 -- any failure of the legacy API: use the new one
        mode = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        for sub in ("conv", "rnn"):
            mod = getattr(torch.backends.cudnn, sub, None)
            if mod is not None and hasattr(mod, "fp32_precision"):
                mod.fp32_precision = mode
    got = tf32_enabled()
    if got != enabled:
        raise BenchError("could not %s TF32 for float32 matmuls (PyTorch %s)" % (
            "enable" if enabled else "disable", torch.__version__), EXIT_USAGE)
    return got


def matmul_probe(dev, precision, n=512):
    """Relative error of one n x n x n product under the chosen precision against
    float64 (orders of magnitude apart: fp32 about 1e-6, tf32 about 1e-4 to 1e-3,
    bf16 about 1e-3 to 1e-2). It shows that the setting took effect."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    b = torch.randn(n, n, generator=g, dtype=torch.float64)
    ref = a @ b
    with autocast(dev.type, precision)():
        got = a.float().to(dev) @ b.float().to(dev)
    return float((got.double().cpu() - ref).norm() / ref.norm())


# ---- one training step -------------------------------------------------------------

def autocast(device_type, precision):
    """Context-manager factory for the forward and the loss."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _clip_kwargs(dev):
    """foreach=True on CUDA where clip_grad_norm_ takes it (PyTorch >= 2.0)."""
    try:
        params = inspect.signature(torch.nn.utils.clip_grad_norm_).parameters
    except (TypeError, ValueError):
        params = {}
    return {"foreach": True} if dev.type == "cuda" and "foreach" in params else {}


def make_optimizer(model, a, dev, graph):
    """Adam of the recipe; foreach (PyTorch's CUDA default), capturable for a graph."""
    return torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, foreach=True,
                            capturable=bool(graph and dev.type == "cuda"))


def make_step(model, opt, max_norm, precision, dev):
    """step(window) on a device window [B, S]: zero grads, forward and loss (autocast
    for bf16), backward, clip by global norm, Adam. Returns (loss, grad norm) as
    device tensors; nothing in it waits for the device, so it can be captured."""
    params = list(model.parameters())
    amp = autocast(dev.type, precision)
    clip_kw = _clip_kwargs(dev)

    def step(window):
        opt.zero_grad(set_to_none=True)
        with amp():
            logits = model(window[:, :-1])
            loss = lm_loss(logits, window[:, 1:])
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0,
                                            error_if_nonfinite=False, **clip_kw)
        opt.step()
        return loss.detach(), gn.detach()
    return step


# ---- timing loops ------------------------------------------------------------------

def run_eager(step, next_window, a, dev, cu):
    """--warmup + --steps eager steps; returns (step times s, final loss)."""
    times, loss = [], None
    for i in range(a.warmup + a.steps):
        w = next_window()
        cu.synchronize(dev)
        t0 = time.perf_counter()
        loss, _ = step(w.to(dev))
        cu.synchronize(dev)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    return times, float(loss)


def run_graph(step, opt, next_window, a, dev, cu, extra):
    """Warm-up on a side stream, one capture of step(), then timed replays."""
    B, S = a.batch, a.seq_len
    static = torch.zeros((B, S), dtype=torch.long, device=dev)
    n_eager = max(GRAPH_EAGER_WARMUP, a.warmup)
    n_untimed = max(1, a.warmup)
    extra["graph_eager_warmup"] = n_eager
    extra["graph_untimed_replays"] = n_untimed

    side = cu.Stream(device=dev)
    side.wait_stream(cu.current_stream(dev))
    with cu.stream(side):
        for _ in range(n_eager):
            static.copy_(next_window())
            step(static)
    cu.current_stream(dev).wait_stream(side)
    cu.synchronize(dev)

    g = cu.CUDAGraph()
    opt.zero_grad(set_to_none=True)   # backward in the capture allocates .grad from its pool
    t0 = time.perf_counter()
    try:
        with cu.graph(g):
            static_loss, _ = step(static)
        cu.synchronize(dev)
    except Exception as e:  # noqa: BLE001
        if is_oom(e):
            raise
        # the end of a failed capture often raises again: name the first error too
        msg = "; ".join("%s: %s" % (type(x).__name__, str(x).strip()) for x in _chain(e))
        raise BenchError("CUDA graph capture failed: %s" % msg, EXIT_CAPTURE) from e
    extra["capture_ms"] = round((time.perf_counter() - t0) * 1e3, 3)

    times = []
    for i in range(n_untimed + a.steps):
        w = next_window()
        cu.synchronize(dev)
        t0 = time.perf_counter()
        static.copy_(w)
        g.replay()
        cu.synchronize(dev)
        if i >= n_untimed:
            times.append(time.perf_counter() - t0)
    return times, float(static_loss)


def _chain(e):
    """e, then the exceptions it was raised from or during, oldest last."""
    seen = []
    while e is not None and e not in seen and len(seen) < 8:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def is_oom(e):
    """Whether e (or one it was raised during) is the device running out of memory."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return any((oom is not None and isinstance(x, oom)) or "out of memory" in str(x).lower()
               for x in _chain(e))


def run_device(a, dev, cu=torch.cuda):
    """The CUDA path (dev = torch.device("cuda", N); `cu` is torch.cuda -- tests pass
    a CPU stand-in with dev = cpu to run the control flow). Returns
    (step times s, final loss, extra JSON fields)."""
    extra = {}
    model = ContextVectorLM(a.vocab, a.embed_dim, a.hidden_dim, a.context_dim, a.layers,
                            a.dropout, fast=not a.naive, dropout_mode="torch").to(dev)
    model.train()
    opt = make_optimizer(model, a, dev, a.graph)
    step = make_step(model, opt, a.max_norm, a.precision, dev)

    def next_window():
        return torch.randint(1, a.vocab, (a.batch, a.seq_len))

    cu.reset_peak_memory_stats(dev)
    if a.graph:
        times, loss = run_graph(step, opt, next_window, a, dev, cu, extra)
    else:
        times, loss = run_eager(step, next_window, a, dev, cu)
    extra["mem_peak_mib"] = round(cu.max_memory_allocated(dev) / 2**20, 1)
    return times, loss, extra


def run_cpu(a):
    """The CPU baseline loop (unchanged since the first version of this script)."""
    model = ContextVectorLM(a.vocab, a.embed_dim, a.hidden_dim, a.context_dim, a.layers,
                            a.dropout, fast=not a.naive, dropout_mode="torch")
    model.train()
    opt = make_adam(model, lr=a.lr)
    amp = autocast("cpu", a.precision)
    times = []
    loss = float("nan")
    for i in range(a.warmup + a.steps):
        window = torch.randint(1, a.vocab, (a.batch, a.seq_len))
        t0 = time.perf_counter()
        loss, _ = train_step(model, opt, window, a.max_norm, amp)
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
    return times, loss, {}


def result(a, times, loss, extra):
    """The JSON object of one run."""
    med = statistics.median(times)
    tokens = a.batch * (a.seq_len - 1)
    tps = tokens / med
    fpt = flops_per_token(a.vocab, a.embed_dim, a.hidden_dim, a.context_dim, a.layers)
    out = {
        "impl": "pytorch",
        "device": a.device,
        "precision": a.precision,
        "graph": bool(a.graph),
        "tokens_per_s": round(tps, 3),
        "gflops": round(tps * fpt / 1e9, 4),
        "step_ms_median": round(med * 1e3, 3),
        "step_ms": [round(t * 1e3, 3) for t in times],
        "final_loss": round(loss, 6),
    }
    out.update(extra)
    out["config"] = {
        "batch": a.batch, "seq_len": a.seq_len, "vocab": a.vocab,
        "embed_dim": a.embed_dim, "hidden_dim": a.hidden_dim,
        "context_dim": a.context_dim, "layers": a.layers, "dropout": a.dropout,
        "steps": a.steps, "warmup": a.warmup, "threads": a.threads,
        "variant": "naive" if a.naive else "batched",
        "flops_per_token": fpt, "torch": torch.__version__,
    }
    return out


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    try:
        if a.device == "cpu":
            times, loss, extra = run_cpu(a)
            extra = dict(extra, autocast="bfloat16" if a.precision == "bf16" else None)
        else:
            dev = cuda_device(a.device)
            torch.cuda.set_device(dev)
            if a.precision == "bf16" and not torch.cuda.is_bf16_supported():
                raise BenchError("--precision bf16: %s has no bfloat16 support"
                                 % torch.cuda.get_device_name(dev), EXIT_USAGE)
            extra = {"gpu_name": torch.cuda.get_device_name(dev),
                     "torch_cuda": torch.version.cuda,
                     "tf32_matmul": set_tf32(a.precision == "tf32"),
                     "autocast": "bfloat16" if a.precision == "bf16" else None,
                     "adam": "foreach" + (", capturable" if a.graph else "")}
            extra["matmul_probe_rel_err"] = float("%.3g" % matmul_probe(dev, a.precision))
            times, loss, more = run_device(a, dev)
            extra.update(more)
    except BenchError as e:
        sys.stderr.write("torch_bench: %s\n" % e)
        return e.status
    except Exception as e:  # noqa: BLE001
        if a.device != "cpu" and is_oom(e):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            sys.stderr.write("torch_bench: out of memory on %s (batch %d, %s%s): %s\n"
                             % (a.device, a.batch, a.precision, ", graph" if a.graph else "",
                                first))
            return EXIT_OOM
        raise
    print(json.dumps(result(a, times, loss, extra)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
