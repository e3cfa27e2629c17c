#!/usr/bin/env bash
# tests/gpu/check.sh -- the GPU acceptance check, for a machine with an NVIDIA
# GPU (under 8 minutes on one H100/H200). From the repository root or anywhere:
#   tests/gpu/check.sh            (env: BUILD=build-gpu DEV=0 SKIP_SANITIZER=1)
# 1. configures and builds with -Dcuda=enabled into $BUILD
# 2. test_cuda_ops: every op against the CPU backend, 50 training steps
# 3. determinism: two GPU training runs must print the same digest
#    (+ a hook for the trainer-level exact-resume test)
# 4. compute-sanitizer memcheck of the op tests, when the tool is installed
# 5. nllm-bench on the seed config at --batch 512 and at the largest batch
#    that fits 10% of device memory: tokens/s and TFLOP/s against SGEMM
# Logs go to $BUILD/gpu-check/; a summary table is printed last; the exit
# status is non-zero when any check failed.
set -euo pipefail

cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-gpu}
DEV=${DEV:-0}
LOGS=$BUILD/gpu-check
ROWS=()
FAILED=0

row() { # name status detail
    ROWS+=("$(printf '%-28s %-5s %s' "$1" "$2" "$3")")
    case $2 in ok | skip) ;; *) FAILED=1 ;; esac
}

table() {
    echo
    echo "== GPU check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $GPU_NAME) =="
    printf '%-28s %-5s %s\n' check result detail
    for r in "${ROWS[@]}"; do echo "$r"; done
    if [ "$FAILED" = 0 ]; then echo "ALL OK"; else echo "SOME CHECKS FAILED (logs in $LOGS/)"; fi
}
trap 'rc=$?; if [ $rc -ne 0 ] && [ "${#ROWS[@]}" -gt 0 ]; then row "script" FAIL "aborted (exit $rc)"; table; fi' EXIT

# run_step NAME TIMEOUT CMD...: output to $LOGS/NAME.log; sets RC (124: timeout)
run_step() {
    local name=$1 limit=$2
    shift 2
    if timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1; then RC=0; else RC=$?; fi
}

jget() { # KEY < json line: the number after "KEY":
    sed -n "s/.*\"$1\":\([-0-9.eE+]*\).*/\1/p" | head -n 1
}

rate() { # BENCH_JSON SGEMM_GFLOPS: "N tok/s, X TFLOP/s (P% of SGEMM), M ms/step"
    awk -v t="$(echo "$1" | jget tokens_per_s)" -v g="$(echo "$1" | jget gflops)" -v s="$2" \
        -v m="$(echo "$1" | jget step_ms_median)" 'BEGIN {
            printf "%.0f tok/s, %.2f TFLOP/s", t, g / 1000
            if (s > 0) printf " (%.0f%% of SGEMM)", 100 * g / s
            printf ", %.1f ms/step", m }'
}

# ---- the device ---------------------------------------------------------
GPU_NAME="no GPU"
if ! command -v nvidia-smi >/dev/null 2>&1; then
    mkdir -p "$LOGS"
    row "gpu" FAIL "nvidia-smi not found: run this on a machine with an NVIDIA GPU"
    table
    trap - EXIT
    exit 1
fi
GPU_NAME=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader -i "$DEV" | head -n 1)
TOTAL_MIB=$(timeout 30 nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i "$DEV" |
    head -n 1 | tr -dc '0-9')
export CUDA_VISIBLE_DEVICES=$DEV # the tests and the bench use cuda:0 = this device

# ---- 1. build -------------------------------------------------------------
if [ -d "$BUILD" ]; then
    meson configure "$BUILD" -Dcuda=enabled >/dev/null
else
    meson setup "$BUILD" -Dcuda=enabled >/dev/null
fi
mkdir -p "$LOGS"
t0=$SECONDS
run_step build 600 ninja -C "$BUILD"
if [ "$RC" != 0 ]; then
    row "build (-Dcuda=enabled)" FAIL "ninja exit $RC, see $LOGS/build.log"
    table
    trap - EXIT
    exit 1
fi
if ! grep -q NLLM_HAVE_CUDA "$BUILD/compile_commands.json"; then
    row "build (-Dcuda=enabled)" FAIL "configured without the CUDA backend (meson summary)"
    table
    trap - EXIT
    exit 1
fi
row "build (-Dcuda=enabled)" ok "$((SECONDS - t0)) s"
TEST=$BUILD/tests/test_cuda_ops
if [ ! -x "$TEST" ]; then
    row "test_cuda_ops" FAIL "$TEST not built: add it to tests/meson.build (suite gpu)"
else
    # ---- 2. ops and training against the CPU -------------------------------
    t0=$SECONDS
    run_step test_cuda_ops 300 "$TEST"
    case $RC in
    0) row "test_cuda_ops" ok "$(tail -n 1 "$LOGS/test_cuda_ops.log"), $((SECONDS - t0)) s" ;;
    77) row "test_cuda_ops" FAIL "skipped: no CUDA device visible ($(tail -n 1 "$LOGS/test_cuda_ops.log"))" ;;
    124 | 137) row "test_cuda_ops" FAIL "timed out after 300 s" ;;
    *) row "test_cuda_ops" FAIL "exit $RC: $(grep -m 1 FAIL "$LOGS/test_cuda_ops.log" || true)" ;;
    esac

    # ---- 3. determinism: the same run twice, bit for bit ----------------------
    run_step digest1 120 "$TEST" --digest
    rc1=$RC
    run_step digest2 120 "$TEST" --digest
    d1=$(grep '^digest' "$LOGS/digest1.log" || true)
    d2=$(grep '^digest' "$LOGS/digest2.log" || true)
    if [ "$rc1" = 0 ] && [ "$RC" = 0 ] && [ -n "$d1" ] && [ "$d1" = "$d2" ]; then
        row "determinism (2 runs)" ok "$(echo "$d1" | cut -d' ' -f2)"
    else
        row "determinism (2 runs)" FAIL "exit $rc1/$RC; '$d1' vs '$d2'"
    fi
    # ---- HOOK: trainer-level exact resume ----------------------------------
    # When the trainer's resume test exists (train, checkpoint, stop, resume,
    # and compare bit for bit with an uninterrupted run), run it here on the
    # GPU and record its row, for example:
    #   run_step resume 300 "$BUILD/tests/test_resume" --device cuda:0
    #   [ "$RC" = 0 ] && row "exact resume (trainer)" ok "" ||
    #       row "exact resume (trainer)" FAIL "exit $RC, see $LOGS/resume.log"
    # ------------------------------------------------------------------------

    # ---- 4. memcheck of the ops (catches out-of-bounds and races early) -------
    SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    if [ "${SKIP_SANITIZER:-0}" = 1 ] || [ ! -x "$SAN" ]; then
        row "compute-sanitizer memcheck" skip "not run"
    else
        t0=$SECONDS
        run_step memcheck 180 "$SAN" --tool memcheck --error-exitcode 99 "$TEST" --ops
        case $RC in
        0) row "compute-sanitizer memcheck" ok "$((SECONDS - t0)) s" ;;
        124 | 137) row "compute-sanitizer memcheck" skip "timed out after 180 s" ;;
        *) row "compute-sanitizer memcheck" FAIL "exit $RC: $(grep -m 1 -E 'ERROR SUMMARY|Invalid|FAIL' "$LOGS/memcheck.log" || true)" ;;
        esac
    fi
fi

# ---- 5. throughput ------------------------------------------------------------
# Device bytes of the seed config (kernels/model.c: activation_floats and the
# four parameter-sized buffers): per window and fixed.
T=63 V=1000 DE=256 H=512 DC=512 L=12
PER_WINDOW=$((4 * (T * (DE + DC) + 2 * L * T * H + T * 3 * DC + 2 * T * DC + T + T * V + T * DE + 2 * DC + 4 * T)))
PARAMS=$((16 * (V * DE + (DE + DC) * H + H + (L - 1) * (H * H + H) + V * H + V + 3 * DC * H + 5 * DC + 1024)))
BIG=$(((TOTAL_MIB * 1048576 / 10 - PARAMS) / PER_WINDOW / 64 * 64))
[ "$BIG" -ge 64 ] || BIG=64
BENCH=$BUILD/nllm-bench
SG=0
run_step bench512 240 "$BENCH" --device cuda:0 --batch 512 --steps 5 --warmup 2 --sgemm 4096
if [ "$RC" = 0 ]; then
    J=$(grep '^{' "$LOGS/bench512.log" | tail -n 1)
    SG=$(echo "$J" | jget sgemm_gflops)
    row "sgemm 4096^3" ok "$(awk -v g="$SG" 'BEGIN { printf "%.1f TFLOP/s", g / 1000 }')"
    row "bench --batch 512" ok "$(rate "$J" "$SG")"
else
    row "bench --batch 512" FAIL "exit $RC: $(tail -n 1 "$LOGS/bench512.log")"
fi
run_step benchbig 240 "$BENCH" --device cuda:0 --batch "$BIG" --steps 3 --warmup 1
if [ "$RC" = 0 ]; then
    J=$(grep '^{' "$LOGS/benchbig.log" | tail -n 1)
    row "bench --batch $BIG (10% mem)" ok "$(rate "$J" "$SG")"
else
    row "bench --batch $BIG (10% mem)" FAIL "exit $RC: $(tail -n 1 "$LOGS/benchbig.log")"
fi

trap - EXIT
table
exit "$FAILED"
