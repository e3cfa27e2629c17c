#!/usr/bin/env bash
# tests/gpu/nccl.sh -- data parallelism on GPUs through NCCL (kernels/comm_nccl.c):
# 1. test_comm_nccl: an NCCL world of 1 gives the plain path's weights,
#    Adam state and history bit for bit; with 2+ GPUs, device sums with the
#    same bits on both and the trainer on 2 GPUs within 1e-5 of 1;
# 2. with 2+ GPUs, through the real daemon (nllmd, nllmctl): the same job
#    (Tiny Shakespeare, batch 512, 2 epochs, fp32) on 1 GPU and with
#    --gpus 2: validation losses within 1e-5 relative, and the scaling
#    efficiency (2-GPU tokens/s over twice the 1-GPU tokens/s, last epoch)
#    printed.
# Sees every GPU (tests/gpu/check.sh passes its caller's CUDA_VISIBLE_DEVICES).
# Env: BIN (the programs' folder, default build-gpu), DATA_FILE, EXTRA (job
# flags). Exit 0 pass, 1 fail, 77 skip (no NCCL in the build or no
# libnccl.so.2); the last line is the summary.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build-gpu}
TEXT=${DATA_FILE:-../shared/data/tinyshakespeare/input.txt}
TEST=$BIN/tests/test_comm_nccl
[ -x "$TEST" ] || TEST=$BIN/test_comm_nccl
[ -x "$TEST" ] || { echo "nccl: $BIN/tests/test_comm_nccl is not built"; exit 1; }
W=$(mktemp -d /tmp/nllm-gpu-nccl.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

# ---- 1. the comm and the trainer ----------------------------------------------
rc=0
"$TEST" >"$W/test.log" 2>&1 || rc=$?
cat "$W/test.log"
case $rc in
0) ;;
77) echo "nccl: skipped: $(grep -m 1 SKIP "$W/test.log" || tail -n 1 "$W/test.log")"; exit 77 ;;
*) echo "nccl: test_comm_nccl failed (exit $rc): $(grep -m 1 FAIL "$W/test.log" || true)"; exit 1 ;;
esac
GPUS=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    GPUS=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
fi
if [ "$GPUS" -lt 2 ]; then
    echo "nccl: world of 1 bit-identical to the plain path; one GPU, so no 2-GPU run"
    exit 0
fi
[ -f "$TEXT" ] || { echo "nccl: world of 1 ok; $TEXT not found: the 2-GPU job is skipped"; exit 0; }

# ---- 2. one job on 1 GPU and on 2 through the daemon ----------------------------
ctl() { "$BIN/nllmctl" --socket "$W/sock" "$@"; }
fail() { echo "nccl: $*"; tail -5 "$W/d.log" | sed 's/^/  daemon: /'; exit 1; }
state() { ctl --json status "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
wait_done() {
    local s
    for _ in $(seq 1 3000); do
        s=$(state "$1")
        case $s in completed | failed | stopped | paused) break ;; esac
        sleep 0.2
    done
    [ "$s" = completed ] || fail "job $1: $s: $(ctl --json status "$1" | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["error"])')"
}
JOB=(--data "$TEXT" --epochs 2 --batch 512 --lr 1e-3 --patience 0 ${EXTRA:-})
"$BIN/nllmd" --state-dir "$W/s" --socket "$W/sock" --metrics none >"$W/d.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do [ -S "$W/sock" ] && break; sleep 0.1; done
ctl hello >/dev/null || fail "the daemon does not answer"
ctl start g1 "${JOB[@]}" --device cuda:0 >/dev/null || fail "start g1 refused"
wait_done g1
ctl start g2 "${JOB[@]}" --gpus 2 >/dev/null || fail "start g2 (--gpus 2) refused"
seen=
for _ in $(seq 1 600); do
    n=$(ctl --json status g2 | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("devices") or []))')
    [ "$n" = 2 ] && { seen=1; break; }
    [ "$(state g2)" = running ] || [ "$(state g2)" = queued ] || break
    sleep 0.1
done
[ -n "$seen" ] || fail "g2 never showed 2 devices"
wait_done g2
cmp=$(python3 - "$W" "$BIN" <<'EOF'
import json, subprocess, sys
w, bindir = sys.argv[1], sys.argv[2]
def hist(job):
    out = subprocess.run([bindir + "/nllmctl", "--socket", w + "/sock", "--json", "history",
                          job], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["epochs"]
h1, h2 = hist("g1"), hist("g2")
v1, v2 = [e["val_loss"] for e in h1], [e["val_loss"] for e in h2]
rel = max(abs(a - b) / abs(b) for a, b in zip(v2, v1)) if len(v1) == len(v2) == 2 else 1.0
t1, t2 = h1[-1]["tokens_per_s"], h2[-1]["tokens_per_s"]
print("1 GPU %.0f tok/s, 2 GPUs %.0f tok/s: scaling efficiency %.0f%% (speed-up %.2fx); "
      "validation losses within %.1e" % (t1, t2, 100 * t2 / (2 * t1), t2 / t1, rel))
sys.exit(0 if rel < 1e-5 else 1)
EOF
) || fail "the 2-GPU job does not match the 1-GPU job: $cmp"
ctl events g2 | grep -q "2 data-parallel ranks" || fail "g2's start event does not name 2 ranks"
kill -TERM "$pid" && wait "$pid" || true
pid=
echo "nccl: ok: $cmp"
