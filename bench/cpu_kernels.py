#!/usr/bin/env python3
"""cpu_kernels.py -- the CPU's GEMM kernels side by side: nllm-bench under
several kernel choices, alternating, --repeats times, medians and ratios.

Choices (each one nllm-bench process; OPENBLAS_CORETYPE is read by OpenBLAS
when it loads, so it cannot change inside one):
  auto           as installed: nllm picks (cpu_kernels.h)
  blas           NLLM_CPU_GEMM=blas: OpenBLAS's kernels, whatever they are
  prescott       OPENBLAS_CORETYPE=Prescott (what OpenBLAS runs on a CPU it
                 does not know), nllm picks
  prescott-blas  the same, NLLM_CPU_GEMM=blas: what nllm ran before
  avx2, avx512   NLLM_CPU_GEMM=avx2 / avx512: one of nllm's variants
Each run also times the backend's --sgemm N product (the same kernels as
the large products), so every line gives the training rate's share of the
SGEMM rate of the same run.

  bench/cpu_kernels.py --batch 512 --threads 2 --repeats 3
  bench/cpu_kernels.py --batch 16,512 --threads 1,4,8,16 --choices auto,blas
Prints a table; --json-out FILE writes every run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CHOICES = {
    "auto": {},
    "blas": {"NLLM_CPU_GEMM": "blas"},
    "prescott": {"OPENBLAS_CORETYPE": "Prescott"},
    "prescott-blas": {"OPENBLAS_CORETYPE": "Prescott", "NLLM_CPU_GEMM": "blas"},
    "avx2": {"NLLM_CPU_GEMM": "avx2"},
    "avx512": {"NLLM_CPU_GEMM": "avx512"},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nllm-bench", default=os.path.join(HERE, "..", "build", "nllm-bench"))
    ap.add_argument("--batch", default="512", help="comma-separated batch sizes")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts")
    ap.add_argument("--choices", default="auto,blas,prescott,prescott-blas")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sgemm", type=int, default=1024)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    choices = a.choices.split(",")
    for c in choices:
        if c not in CHOICES:
            sys.exit("cpu_kernels.py: unknown choice %s (%s)" % (c, ", ".join(CHOICES)))
    runs = []
    for b in [int(x) for x in a.batch.split(",")]:
        for t in [int(x) for x in a.threads.split(",")]:
            res = {c: [] for c in choices}
            for _ in range(a.repeats):
                for c in choices:
                    cmd = [a.nllm_bench, "--batch", str(b), "--threads", str(t), "--steps",
                           str(a.steps), "--sgemm", str(a.sgemm)]
                    r = subprocess.run(cmd, capture_output=True, text=True,
                                       env=dict(os.environ, **CHOICES[c]))
                    if r.returncode != 0:
                        sys.exit("nllm-bench failed: %s" % r.stderr[-1000:])
                    d = json.loads(r.stdout)
                    d["choice"] = c
                    res[c].append(d)
                    runs.append(d)
            base = statistics.median(x["tokens_per_s"] for x in res[choices[0]])
            print("batch %d, %d thread(s), medians of %d:" % (b, t, a.repeats))
            for c in choices:
                k = res[c][0].get("kernels", {})
                tps = statistics.median(x["tokens_per_s"] for x in res[c])
                sg = statistics.median(x["sgemm_gflops"] for x in res[c])
                share = statistics.median(x["ratio_to_sgemm"] for x in res[c])
                print("  %-14s %-12s (BLAS %-9s) %10.0f tokens/s  x%.2f  SGEMM %4d^3 %7.1f "
                      "GFLOP/s  training at %.0f%% of it" %
                      (c, k.get("large_gemm", "?"), k.get("blas_core", "?"), tps, tps / base,
                       a.sgemm, sg, 100 * share))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
