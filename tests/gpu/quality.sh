#!/usr/bin/env bash
# tests/gpu/quality.sh -- the small recipe in every precision: 3 seeds x
# fp32, tf32, bf16, 2 epochs each on Tiny Shakespeare (seed model, batch 64,
# lr 1e-3, reference clipping) through `nllmd run`; the mean validation loss
# of tf32 and of bf16 must be within 0.03 of fp32's mean.
# Env: BIN, NLLM_GPU_DEVICE, DATA_FILE as tests/gpu/resume.sh; PRECISIONS, the
# ones set beside fp32 (default "tf32 bf16"; on a cpu with AMX-BF16:
# NLLM_GPU_DEVICE=cpu PRECISIONS=bf16 BIN=build). Exit 0, 1 or 77 (skip).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build-gpu}
DEV=${NLLM_GPU_DEVICE:-cuda:0}
TEXT=${DATA_FILE:-../shared/data/tinyshakespeare/input.txt}
[ -f "$TEXT" ] || { echo "quality: $TEXT not found: skipped"; exit 77; }
W=$(mktemp -d /tmp/nllm-gpu-quality.XXXXXX)
trap 'rm -rf "$W"' EXIT
OTHERS=${PRECISIONS:-tf32 bf16}
declare -A MEAN
for prec in fp32 $OTHERS; do
    losses=()
    for seed in 1 2 3; do
        log="$W/$prec-$seed.log"
        t0=$SECONDS
        "$BIN/nllmd" run --state-dir "$W/$prec-$seed" q --data "$TEXT" --epochs 2 --batch 64 \
            --lr 1e-3 --seed "$seed" --device "$DEV" --precision "$prec" >"$log" 2>&1 ||
            { echo "quality: $prec seed $seed failed:"; tail -3 "$log"; exit 1; }
        l=$(sed -n 's/^Val: Loss=\([0-9.]*\).*/\1/p' "$log" | tail -1)
        [ -n "$l" ] || { echo "quality: no validation loss in $log"; exit 1; }
        losses+=("$l")
        echo "quality: $prec seed $seed: val loss $l ($((SECONDS - t0)) s)"
    done
    MEAN[$prec]=$(printf '%s\n' "${losses[@]}" | awk '{ s += $1 } END { printf "%.4f", s / NR }')
done
fail=0
for prec in $OTHERS; do
    d=$(awk -v a="${MEAN[$prec]}" -v b="${MEAN[fp32]}" 'BEGIN { d = a - b; if (d < 0) d = -d; printf "%.4f", d }')
    ok=$(awk -v d="$d" 'BEGIN { print (d <= 0.03) ? "ok" : "FAIL" }')
    echo "quality: mean val loss $prec ${MEAN[$prec]} vs fp32 ${MEAN[fp32]}: |diff| $d ($ok)"
    [ "$ok" = ok ] || fail=1
done
exit $fail
