#!/usr/bin/env bash
# tests/gpu/cpu_host.sh -- CPU figures on a GPU machine's host (issue #13;
# those hosts have 16+ cores, this project's own machines 2): nllm's CPU
# kernels against OpenBLAS's (as installed; NLLM_CPU_GEMM=blas; and
# OPENBLAS_CORETYPE=Prescott, OpenBLAS's kernels on a CPU it does not know)
# at 4, 8 and 16 threads, batch 512 and 16, each with the same run's SGEMM
# rate, then PyTorch on the same host at the same threads, and precision
# bf16 (nllm's AMX tiles, PyTorch's autocast) where it has AMX-BF16. About 7 minutes
# on a 16-core Xeon; a benchmark, not a test: it prints and logs, and
# fails only when a program does.
#   BIN=.dev/bin LOGS=/tmp/cpu tests/gpu/cpu_host.sh   (after scripts/gpu_bundle.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build}
LOGS=${LOGS:-$BIN/cpu-host}
PY=${PYTHON:-python3}
mkdir -p "$LOGS"
nproc | tee "$LOGS/nproc.txt"
{ lscpu | grep -E 'Model name|^CPU\(s\)|Flags' || true; } >"$LOGS/lscpu.txt"
"$PY" bench/cpu_kernels.py --nllm-bench "$BIN/nllm-bench" --batch 512 --threads 4,8,16 \
    --choices auto,blas,prescott-blas --repeats 1 --steps 2 --sgemm 2048 \
    --json-out "$LOGS/cpu-b512.json" | tee "$LOGS/cpu-b512.txt"
"$PY" bench/cpu_kernels.py --nllm-bench "$BIN/nllm-bench" --batch 16 --threads 1,4,16 \
    --choices auto,blas --repeats 3 --steps 3 --sgemm 1024 \
    --json-out "$LOGS/cpu-b16.json" | tee "$LOGS/cpu-b16.txt"
for t in 4 16; do
    for b in 512 16; do
        s=2
        [ "$b" = 16 ] && s=5
        "$PY" bench/torch_bench.py --device cpu --threads "$t" --batch "$b" --steps "$s" \
            --warmup 1 | tee -a "$LOGS/torch.jsonl" || echo "torch_bench failed (t $t b $b)"
    done
done
# precision bf16 on the AMX tiles where the host has AMX-BF16: nllm and
# PyTorch's autocast at 16 threads
if grep -q amx_bf16 /proc/cpuinfo; then
    for b in 512 16; do
        s=3
        [ "$b" = 16 ] && s=10
        "$BIN/nllm-bench" --threads 16 --batch "$b" --steps "$s" --precision bf16 |
            tee -a "$LOGS/bf16.jsonl" || echo "nllm-bench bf16 failed (b $b)"
        "$PY" bench/torch_bench.py --device cpu --threads 16 --batch "$b" --steps "$s" \
            --warmup 1 --precision bf16 | tee -a "$LOGS/bf16.jsonl" ||
            echo "torch_bench bf16 failed (b $b)"
    done
fi
