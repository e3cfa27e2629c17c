#!/usr/bin/env bash
# tests/gpu/check.sh -- the GPU acceptance check, for a machine with an NVIDIA
# GPU (about 6 minutes on one H200). From the repository root or anywhere:
#   tests/gpu/check.sh            (env: BUILD=build-gpu DEV=0 SKIP_SANITIZER=1
#                                  SKIP_QUALITY=1)
#   BIN=.dev/bin DATA=.dev/data LD_LIBRARY_PATH=.dev/lib tests/gpu/check.sh
#                                 (programs built elsewhere: scripts/gpu_bundle.sh)
# 1. configures and builds with -Dcuda=enabled into $BUILD (not with BIN)
# 2. test_cuda_ops: every op against the CPU backend, 50 training steps,
#    graph replay == eager, queued steps == waited-for steps, tf32 and bf16
#    against fp32 (tolerances in tests/test_cuda_ops.c)
# 3. determinism: two GPU training runs per precision print the same digest
# 4. compute-sanitizer memcheck of the op tests, when the tool is installed
# 5. exact resume through `nllmd run` (SIGTERM mid-epoch, --resume) in fp32
#    and bf16 (tests/gpu/resume.sh)
#    two jobs at once on one GPU through nllmd and nllmctl (tests/gpu/multi.sh)
#    data parallelism through NCCL (tests/gpu/nccl.sh, on every GPU the
#    caller lets it see): a world of 1 bit-identical to no comm; with 2+
#    GPUs, a 2-GPU job against 1 GPU within 1e-5 and the scaling efficiency
# 6. small-recipe quality per precision (tests/gpu/quality.sh)
# 7. nllm-bench on the seed config in each precision at batch 16, 512 and
#    4096 (and fp32 without graphs, with the fused small-batch products,
#    with the second queue, and waiting for every step): tokens/s
#    and TFLOP/s against the same run's SGEMM; every line goes to
#    $LOGS/bench.jsonl
# 8. the daemon's own rate (nllmd run, epochs 2-3) against the bench's
# Logs go to $LOGS ($BUILD/gpu-check/); a summary table is printed last; the
# exit status is non-zero when any check failed.
set -euo pipefail

cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-gpu}
BIN=${BIN:-}
DEV=${DEV:-0}
LOGS=${LOGS:-${BIN:-$BUILD}/gpu-check}
if [ -n "${DATA:-}" ]; then
    export DATA_FILE=$DATA/tinyshakespeare.txt
fi
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
CALLER_CVD=${CUDA_VISIBLE_DEVICES-unset} # nccl.sh sees these GPUs, not just $DEV
GPU_NAME=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader -i "$DEV" | head -n 1)
TOTAL_MIB=$(timeout 30 nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i "$DEV" |
    head -n 1 | tr -dc '0-9')
export CUDA_VISIBLE_DEVICES=$DEV # the tests and the bench use cuda:0 = this device

# ---- 1. build -------------------------------------------------------------
mkdir -p "$LOGS"
if [ -n "$BIN" ]; then
    for p in test_cuda_ops nllm-bench nllmd; do
        if [ ! -x "$BIN/$p" ]; then
            row "programs in $BIN" FAIL "$BIN/$p missing (scripts/gpu_bundle.sh makes them)"
            table
            trap - EXIT
            exit 1
        fi
    done
    row "programs (prebuilt)" ok "$BIN"
    TEST=$BIN/test_cuda_ops
else
    if [ -d "$BUILD" ]; then
        meson configure "$BUILD" -Dcuda=enabled >/dev/null
    else
        meson setup "$BUILD" -Dcuda=enabled >/dev/null
    fi
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
    BIN=$BUILD
fi
export BIN
BENCH=$BIN/nllm-bench
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

    # ---- 3. determinism: the same run twice, bit for bit, per precision ------
    for prec in fp32 tf32 bf16; do
        run_step "digest-$prec-1" 120 "$TEST" --digest "$prec"
        rc1=$RC
        run_step "digest-$prec-2" 120 "$TEST" --digest "$prec"
        d1=$(grep '^digest' "$LOGS/digest-$prec-1.log" || true)
        d2=$(grep '^digest' "$LOGS/digest-$prec-2.log" || true)
        if [ "$rc1" = 0 ] && [ "$RC" = 0 ] && [ -n "$d1" ] && [ "$d1" = "$d2" ]; then
            row "determinism $prec (2 runs)" ok "$(echo "$d1" | cut -d' ' -f2)"
        else
            row "determinism $prec (2 runs)" FAIL "exit $rc1/$RC; '$d1' vs '$d2'"
        fi
    done

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

# ---- 5. exact resume through nllmd run --------------------------------------
for prec in fp32 bf16; do
    t0=$SECONDS
    run_step "resume-$prec" 300 tests/gpu/resume.sh "$prec"
    case $RC in
    0) row "exact resume $prec" ok "$(tail -n 1 "$LOGS/resume-$prec.log" | cut -c1-60), $((SECONDS - t0)) s" ;;
    77) row "exact resume $prec" skip "$(tail -n 1 "$LOGS/resume-$prec.log")" ;;
    *) row "exact resume $prec" FAIL "exit $RC: $(tail -n 1 "$LOGS/resume-$prec.log")" ;;
    esac
done

# ---- 5b. two jobs on one GPU through the daemon ------------------------------
t0=$SECONDS
run_step multi 240 tests/gpu/multi.sh
case $RC in
0) row "two jobs on one GPU" ok "$(tail -n 1 "$LOGS/multi.log" | cut -c1-70), $((SECONDS - t0)) s" ;;
77) row "two jobs on one GPU" skip "$(tail -n 1 "$LOGS/multi.log")" ;;
*) row "two jobs on one GPU" FAIL "exit $RC: $(grep -m 1 '^multi:' "$LOGS/multi.log" || tail -n 1 "$LOGS/multi.log")" ;;
esac

# ---- 5c. data parallelism through NCCL -----------------------------------------
t0=$SECONDS
if [ "$CALLER_CVD" = unset ]; then
    run_step nccl 600 env -u CUDA_VISIBLE_DEVICES tests/gpu/nccl.sh
else
    run_step nccl 600 env CUDA_VISIBLE_DEVICES="$CALLER_CVD" tests/gpu/nccl.sh
fi
case $RC in
0) row "NCCL data parallelism" ok "$(tail -n 1 "$LOGS/nccl.log" | sed 's/^nccl: //' | cut -c1-110), $((SECONDS - t0)) s" ;;
77) row "NCCL data parallelism" skip "$(tail -n 1 "$LOGS/nccl.log")" ;;
*) row "NCCL data parallelism" FAIL "exit $RC: $(grep -m 1 '^nccl:' "$LOGS/nccl.log" || tail -n 1 "$LOGS/nccl.log")" ;;
esac

# ---- 6. small-recipe quality per precision -----------------------------------
if [ "${SKIP_QUALITY:-0}" = 1 ]; then
    row "quality per precision" skip "SKIP_QUALITY=1"
else
    t0=$SECONDS
    run_step quality 400 tests/gpu/quality.sh
    detail="$({ grep 'mean val loss' "$LOGS/quality.log" || true; } | sed 's/quality: mean val loss //' | tr '\n' ';'), $((SECONDS - t0)) s"
    case $RC in
    0) row "quality per precision" ok "$detail" ;;
    77) row "quality per precision" skip "$(tail -n 1 "$LOGS/quality.log")" ;;
    *) row "quality per precision" FAIL "exit $RC: $detail $(tail -n 1 "$LOGS/quality.log")" ;;
    esac
fi

# ---- 7. throughput ----------------------------------------------------------------
: >"$LOGS/bench.jsonl"
SG=0
run_step sgemm 120 "$BENCH" --device cuda:0 --batch 16 --steps 1 --warmup 0 --sgemm 4096
if [ "$RC" = 0 ]; then
    SG=$({ grep '^{' "$LOGS/sgemm.log" || true; } | tail -n 1 | jget sgemm_gflops)
    row "sgemm 4096^3" ok "$(awk -v g="$SG" 'BEGIN { printf "%.1f TFLOP/s", g / 1000 }')"
else
    row "sgemm 4096^3" FAIL "exit $RC: $(tail -n 1 "$LOGS/sgemm.log")"
fi
# bench NAME ENV... -- FLAGS...: one nllm-bench line into the table and bench.jsonl
bench() {
    local name=$1
    shift
    local envs=()
    while [ "$1" != "--" ]; do
        envs+=("$1")
        shift
    done
    shift
    run_step "bench-$name" 240 env "${envs[@]}" "$BENCH" --device cuda:0 "$@"
    if [ "$RC" = 0 ]; then
        local J
        J=$({ grep '^{' "$LOGS/bench-$name.log" || true; } | tail -n 1)
        echo "{\"name\":\"$name\",\"result\":$J}" >>"$LOGS/bench.jsonl"
        row "bench $name" ok "$(rate "$J" "$SG")"
    else
        row "bench $name" FAIL "exit $RC: $(tail -n 1 "$LOGS/bench-$name.log")"
    fi
}
steps_for() { # batch -> timed steps of about a second
    case $1 in 16) echo 200 ;; 512) echo 60 ;; *) echo 12 ;; esac
}
for b in 16 512 4096; do
    for prec in fp32 tf32 bf16; do
        bench "b$b-$prec" X=1 -- --batch "$b" --precision "$prec" --steps "$(steps_for "$b")" --warmup 3
    done
done
bench "b16-fp32-nographs" NLLM_CUDA_GRAPHS=0 -- --batch 16 --steps 200 --warmup 3
bench "b16-fp32-fused" NLLM_CUDA_SMALL=1 -- --batch 16 --steps 200 --warmup 3
bench "b16-tf32-fused" NLLM_CUDA_SMALL=1 -- --batch 16 --precision tf32 --steps 200 --warmup 3
bench "b16-fp32-sync" X=1 -- --batch 16 --steps 200 --warmup 3 --sync
bench "b512-fp32-nographs" NLLM_CUDA_GRAPHS=0 -- --batch 512 --steps 60 --warmup 3
bench "b512-fp32-twoqueues" NLLM_CUDA_AUX=1 -- --batch 512 --steps 60 --warmup 3
# real windows (Tiny Shakespeare: 86% of the targets are padding): the
# step rate the daemon sees, for step 8's comparison
if [ -f "${DATA_FILE:-../shared/data/tinyshakespeare/input.txt}" ]; then
    bench "b512-fp32-text" X=1 -- --batch 512 --steps 60 --warmup 3 \
        --data "${DATA_FILE:-../shared/data/tinyshakespeare/input.txt}"
fi

# ---- 8. the daemon trains at the bench's rate --------------------------------------
# nllmd run, seed model, batch 512, Tiny Shakespeare: the mean steps/s of
# epochs 2 and 3 (checkpoints and validation outside the epoch's time, as
# the bench has none) against bench b512-fp32-text above (the same text),
# else b512-fp32; the aim is within 5%.
# Steps, not tokens: the daemon counts non-pad targets, and most positions
# of Tiny Shakespeare's short lines are padding; the bench has none.
if [ -f "${DATA_FILE:-../shared/data/tinyshakespeare/input.txt}" ]; then
    W=$(mktemp -d /tmp/nllm-gpu-rate.XXXXXX)
    run_step daemon-rate 300 "$BIN/nllmd" run --state-dir "$W" rate \
        --data "${DATA_FILE:-../shared/data/tinyshakespeare/input.txt}" --epochs 3 --batch 512 \
        --device cuda:0
    rm -rf "$W"
    d=$({ grep -o 'epoch [23]/3: .* \([0-9.]*\) steps/s' "$LOGS/daemon-rate.log" || true; } |
        sed 's/.* \([0-9.]*\) steps\/s/\1/' | awk '{ s += $1; n++ } END { if (n) printf "%.2f", s / n }')
    # the bench on the same text when it ran (same padding, same ids), else
    # on random ids
    ref=bench-b512-fp32-text
    [ -f "$LOGS/$ref.log" ] || ref=bench-b512-fp32
    b=$({ grep -h '^{' "$LOGS/$ref.log" 2>/dev/null || true; } | tail -n 1 |
        jget step_ms_median | awk '{ if ($1 > 0) printf "%.2f", 1000 / $1 }')
    if [ "$RC" = 0 ] && [ -n "$d" ] && [ -n "$b" ]; then
        ratio=$(awk -v d="$d" -v b="$b" 'BEGIN { printf "%.3f", d / b }')
        ok=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.95) ? "ok" : "FAIL" }')
        row "daemon rate b512 fp32" "$ok" "nllmd run $d steps/s, ${ref#bench-} $b: ratio $ratio (aim >= 0.95)"
    else
        row "daemon rate b512 fp32" FAIL "exit $RC: $(tail -n 1 "$LOGS/daemon-rate.log")"
    fi
fi

trap - EXIT
table
exit "$FAILED"
