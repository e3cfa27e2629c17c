#!/usr/bin/env python3
"""dp_bench.py -- data parallelism over MPI ranks against threads in one
process, on the same cores: `nllmd run` with R ranks x T threads for each
layout given, alternating, --repeats times; medians and ratios.

Each run trains one epoch of the seed model (or the shape given) on the
first --windows windows of a text file at the global --batch; the figure is
the epoch's tokens/s from rank 0's epoch line (tokens of every rank: the
trainer sums them over ranks), so checkpoints and validation are outside it.
With several ranks the same line gives the gradient sums' size, the time a
step waits for them ("exposed") and the share of the epoch spent in
collectives of any kind; the table shows their medians.
The default layouts answer issue #12's CPU question: 2 ranks x 1 thread
against 1 rank x 2 threads at batch 512.

  bench/dp_bench.py --data ../shared/data/tinyshakespeare/input.txt
  bench/dp_bench.py --layouts 1x16,2x8,4x4,16x1 --batch 512 --repeats 3
Needs mpirun (openmpi-bin) and an MPI build of nllmd (-Dmpi, on by default
where libopenmpi-dev is installed). Prints a table; --json-out FILE writes
every run.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCH_RE = re.compile(r"epoch 1/1: .* ([0-9.]+) tokens/s")
COMM_RE = re.compile(r"epoch 1/1: .*gradient sums ([0-9.e+]+) MB/step, ([0-9.]+) ms/step "
                     r"exposed; collectives ([0-9.]+)% of the time")


def one_run(a, ranks, threads, data, val, tmp):
    state = tempfile.mkdtemp(prefix="dp-", dir=tmp)
    cmd = [a.nllmd, "run", "--state-dir", state, "bench", "--data", data, "--val", val,
           "--epochs", "1", "--batch", str(a.batch), "--device", "cpu", "--threads",
           str(threads)] + a.job
    if ranks > 1:
        cmd = [a.mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
               "-np", str(ranks)] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    shutil.rmtree(state, ignore_errors=True)
    m = EPOCH_RE.search(r.stdout + r.stderr)
    if r.returncode != 0 or not m:
        sys.exit("dp_bench.py: %d x %d failed (exit %d):\n%s" %
                 (ranks, threads, r.returncode, (r.stdout + r.stderr)[-2000:]))
    c = COMM_RE.search(r.stdout + r.stderr)
    if ranks > 1 and not c:
        sys.exit("dp_bench.py: %d x %d: no gradient sums in the epoch line:\n%s" %
                 (ranks, threads, (r.stdout + r.stderr)[-2000:]))
    comm = {"grad_mb": float(c.group(1)), "exposed_ms": float(c.group(2)),
            "comm_pct": float(c.group(3))} if c else None
    return float(m.group(1)), comm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nllmd", default=os.path.join(HERE, "..", "build", "nllmd"))
    ap.add_argument("--mpirun", default=shutil.which("mpirun"))
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                   "tinyshakespeare", "input.txt"))
    ap.add_argument("--layouts", default="1x2,2x1", help="RANKSxTHREADS, comma-separated")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--windows", type=int, default=2048,
                    help="training windows (steps per epoch = windows / batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json-out")
    ap.add_argument("job", nargs="*", help="more job keys after --, e.g. -- --layers 4")
    a = ap.parse_args()
    a.job = ["--seq-len", str(a.seq_len)] + a.job
    if not a.mpirun:
        sys.exit("dp_bench.py: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)")
    if not os.path.exists(a.data):
        sys.exit("dp_bench.py: no text at %s (--data FILE)" % a.data)
    layouts = []
    for s in a.layouts.split(","):
        r, t = s.split("x")
        layouts.append((int(r), int(t)))
    tmp = tempfile.mkdtemp(prefix="nllm-dpbench-")
    # --windows windows of seq_len + 1 tokens (words), then a small validation file
    words = open(a.data, encoding="utf-8", errors="replace").read().split()
    need = a.windows * (a.seq_len + 1)
    if len(words) < need + 2000:
        sys.exit("dp_bench.py: %s has %d words; --windows %d needs %d" %
                 (a.data, len(words), a.windows, need + 2000))
    data, val = os.path.join(tmp, "train.txt"), os.path.join(tmp, "val.txt")
    with open(data, "w") as f:
        f.write(" ".join(words[:need]) + "\n")
    with open(val, "w") as f:
        f.write(" ".join(words[need:need + 2000]) + "\n")
    res = {l: [] for l in layouts}
    comm = {l: [] for l in layouts}
    try:
        for _ in range(a.repeats):
            for l in layouts:
                v, c = one_run(a, l[0], l[1], data, val, tmp)
                res[l].append(v)
                if c:
                    comm[l].append(c)
                print("%dx%d: %.0f tokens/s" % (l[0], l[1], v), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(res[layouts[0]])
    print("batch %d, %d windows, job keys %s" % (a.batch, a.windows, " ".join(a.job)))
    print("%-14s %12s %8s %9s %11s %7s  %s" % ("ranks x thr", "tokens/s", "ratio", "grad MB",
                                                "exposed ms", "comm %", "runs"))

    def med(l, k, fmt):
        return fmt % statistics.median(c[k] for c in comm[l]) if comm[l] else "-"
    for l in layouts:
        m = statistics.median(res[l])
        print("%-14s %12.0f %8.3f %9s %11s %7s  %s" % (
            "%d x %d" % l, m, m / base, med(l, "grad_mb", "%.3g"), med(l, "exposed_ms", "%.2f"),
            med(l, "comm_pct", "%.2f"), " ".join("%.0f" % v for v in res[l])))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"batch": a.batch, "windows": a.windows, "job": a.job,
                       "runs": [{"ranks": l[0], "threads": l[1], "tokens_per_s": res[l],
                                 "comm": comm[l]}
                                for l in layouts]}, f, indent=1)


if __name__ == "__main__":
    main()
