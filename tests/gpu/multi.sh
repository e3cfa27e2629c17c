#!/usr/bin/env bash
# tests/gpu/multi.sh -- two jobs at once on one GPU through the real daemon
# (nllmd --jobs-per-device 2, driven by nllmctl): both are running at the
# same time, status shows the device shared and each job's peak device
# memory, both complete, and each ends with the final weights of the same
# job trained alone (`nllmd run`). Env as tests/gpu/resume.sh (BIN,
# NLLM_GPU_DEVICE, DATA_FILE, EXTRA). Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build-gpu}
DEV=${NLLM_GPU_DEVICE:-cuda:0}
TEXT=${DATA_FILE:-../shared/data/tinyshakespeare/input.txt}
[ -f "$TEXT" ] || { echo "multi: $TEXT not found: skipped"; exit 77; }
W=$(mktemp -d /tmp/nllm-gpu-multi.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
ctl() { "$BIN/nllmctl" --socket "$W/sock" "$@"; }
fail() { echo "multi: $*"; tail -5 "$W/d.log" | sed 's/^/  daemon: /'; exit 1; }
JOB=(--data "$TEXT" --epochs 2 --batch 64 --lr 1e-3 --device "$DEV" ${EXTRA:-})

"$BIN/nllmd" --state-dir "$W/s" --socket "$W/sock" --devices "$DEV" --jobs-per-device 2 \
    --metrics none >"$W/d.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do [ -S "$W/sock" ] && break; sleep 0.1; done
ctl hello >/dev/null || fail "the daemon does not answer"
ctl start a "${JOB[@]}" --seed 1 >/dev/null || fail "start a refused"
ctl start b "${JOB[@]}" --seed 2 >/dev/null || fail "start b refused"

both=0 shared= peak=
for _ in $(seq 1 600); do
    sa=$(ctl --json status a) sb=$(ctl --json status b)
    read -r st_a st_b shared peak < <(python3 -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(a["state"], b["state"], len(a.get("device_jobs") or []),
      min(a.get("device_memory_peak") or 0, b.get("device_memory_peak") or 0))' "$sa" "$sb")
    if [ "$st_a" = running ] && [ "$st_b" = running ] && [ "$shared" = 2 ] && [ "$peak" -gt 0 ]; then
        both=1
        break
    fi
    case "$st_a$st_b" in *failed*) fail "a job failed: $st_a $st_b" ;; esac
    sleep 0.1
done
[ $both = 1 ] || fail "a and b never ran together (last: $st_a $st_b, device_jobs $shared)"
for _ in $(seq 1 1200); do
    st_a=$(ctl --json status a | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    st_b=$(ctl --json status b | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [ "$st_a" = completed ] && [ "$st_b" = completed ] && break
    case "$st_a$st_b" in *failed*) fail "a job failed: $st_a $st_b" ;; esac
    sleep 0.1
done
[ "$st_a" = completed ] && [ "$st_b" = completed ] || fail "not completed: a $st_a, b $st_b"
kill -TERM "$pid" && wait "$pid" || true
pid=
"$BIN/nllmd" run --state-dir "$W/solo" a "${JOB[@]}" --seed 1 >"$W/solo.log" 2>&1 ||
    fail "the solo run failed"
shared_w=$(grep -o 'job a: checkpoint: saved final (.*weights [0-9a-f]*' "$W/d.log" | sed 's/.*weights //')
solo_w=$(grep -o 'job a: checkpoint: saved final (.*weights [0-9a-f]*' "$W/solo.log" | sed 's/.*weights //')
[ -n "$shared_w" ] && [ "$shared_w" = "$solo_w" ] ||
    fail "job a's final weights $shared_w beside b, $solo_w alone"
echo "multi: a and b ran together on $DEV (peak device memory of the smaller $((peak / 1048576)) MiB), both completed; a's final weights $shared_w equal the solo run's"
