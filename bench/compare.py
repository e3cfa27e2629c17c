#!/usr/bin/python3
"""compare.py -- nllm-bench against the PyTorch baseline (bench/torch_bench.py).

Runs both on the same config, alternating (nllm, pytorch, nllm, ...) --repeats
times so drift in machine load hits both alike, then prints a table and the
ratio of the median tokens/s (nllm / pytorch). Each benchmark prints one JSON
line with at least tokens_per_s, gflops and config; the last such line counts.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# flag name -> default (the seed config of docs/model.md, 2 threads)
CONFIG = [("batch", 512), ("seq-len", 64), ("vocab", 1000), ("embed-dim", 256),
          ("hidden-dim", 512), ("context-dim", 512), ("layers", 12), ("dropout", 0.1),
          ("steps", 3), ("warmup", 1), ("threads", 2)]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nllm-bench", default="build/nllm-bench", help="path of nllm-bench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-naive", action="store_true",
                    help="PyTorch literal per-position loop instead of the batched variant")
    ap.add_argument("--only", choices=["nllm", "pytorch"], help="run only one side")
    for name, dflt in CONFIG:
        ap.add_argument("--" + name, type=type(dflt), default=dflt)
    return ap.parse_args(argv)


def bench_flags(a):
    out = []
    for name, _ in CONFIG:
        out += ["--" + name, str(getattr(a, name.replace("-", "_")))]
    return out


def run_one(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit("compare: `%s` exited with %d" % (" ".join(map(shlex.quote, cmd)),
                                                          p.returncode))
    for line in reversed(p.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "tokens_per_s" in r:
                return r
    raise SystemExit("compare: no JSON result line with tokens_per_s from `%s`:\n%s"
                     % (" ".join(map(shlex.quote, cmd)), p.stdout[-2000:]))


def main(argv=None):
    a = parse_args(argv)
    flags = bench_flags(a)
    sides = []
    if a.only != "pytorch":
        if not (os.path.isfile(a.nllm_bench) and os.access(a.nllm_bench, os.X_OK)):
            raise SystemExit("compare: %s is not an executable (build it, or pass "
                             "--nllm-bench PATH, or --only pytorch)" % a.nllm_bench)
        sides.append(("nllm", [a.nllm_bench] + flags))
    if a.only != "nllm":
        tcmd = [sys.executable, os.path.join(HERE, "torch_bench.py")] + flags
        if a.torch_naive:
            tcmd.append("--naive")
        sides.append(("pytorch", tcmd))

    print("config: " + " ".join(flags))
    print("%-4s %-8s %14s %10s %12s" % ("run", "impl", "tokens/s", "GFLOP/s", "step ms"))
    results = {name: [] for name, _ in sides}
    for rep in range(a.repeats):
        for name, cmd in sides:
            r = run_one(cmd)
            results[name].append(r)
            step_ms = r.get("step_ms_median")
            print("%-4d %-8s %14.1f %10.2f %12s" % (
                rep + 1, name, r["tokens_per_s"], r.get("gflops", float("nan")),
                "%.1f" % step_ms if isinstance(step_ms, (int, float)) else "-"), flush=True)

    med = {}
    for name, rs in results.items():
        med[name] = statistics.median(r["tokens_per_s"] for r in rs)
        gf = statistics.median(r.get("gflops", float("nan")) for r in rs)
        print("median %-8s %14.1f tokens/s %10.2f GFLOP/s" % (name, med[name], gf))
    if "nllm" in med and "pytorch" in med and med["pytorch"] > 0:
        print("ratio nllm/pytorch (median tokens/s): %.3f" % (med["nllm"] / med["pytorch"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
