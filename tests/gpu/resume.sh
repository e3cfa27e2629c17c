#!/usr/bin/env bash
# tests/gpu/resume.sh PRECISION -- exact resume on the GPU through the real
# daemon program: job A trains 3 epochs straight; job B trains the same
# config, gets SIGTERM in its second epoch (exit 75: paused checkpoint),
# and `nllmd run --resume` takes it to the end. The two final checkpoints
# must hold bit-identical tensors (weights, both Adam moments, histories).
# Env: BIN (folder of nllmd; default build-gpu), DATA_FILE (default Tiny
# Shakespeare in ../shared/data), NLLM_GPU_DEVICE (default cuda:0), EXTRA (more job
# flags, e.g. a smaller model to try the script on the CPU).
# Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail
cd "$(dirname "$0")/../.."
PREC=${1:-fp32}
BIN=${BIN:-build-gpu}
DEV=${NLLM_GPU_DEVICE:-cuda:0}
TEXT=${DATA_FILE:-../shared/data/tinyshakespeare/input.txt}
[ -f "$TEXT" ] || { echo "resume: $TEXT not found: skipped"; exit 77; }
W=$(mktemp -d /tmp/nllm-gpu-resume.XXXXXX)
trap 'rm -rf "$W"' EXIT
# the seed model at batch 256: 80 steps an epoch, so a stop lands mid-epoch
JOB=(--data "$TEXT" --epochs 3 --batch 256 --lr 1e-3 --device "$DEV" --precision "$PREC" ${EXTRA:-})
NLLMD="$BIN/nllmd"

"$NLLMD" run --state-dir "$W/a" r "${JOB[@]}" >"$W/a.log" 2>&1 ||
    { echo "resume $PREC: straight run failed:"; tail -5 "$W/a.log"; exit 1; }

"$NLLMD" run --state-dir "$W/b" r "${JOB[@]}" >"$W/b.log" 2>&1 &
pid=$!
# wait for epoch 1's best checkpoint, then stop part-way into epoch 2
for _ in $(seq 1 600); do
    [ -f "$W/b/jobs/r/checkpoints/best_r.safetensors" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
done
sleep 0.3
kill -TERM $pid 2>/dev/null || true
rc=0
wait $pid || rc=$?
if [ $rc -ne 75 ]; then
    echo "resume $PREC: SIGTERM run exited $rc, want 75 (paused):"
    tail -5 "$W/b.log"
    exit 1
fi
paused=$(grep -o 'saved paused (epoch [0-9]*, step [0-9]*' "$W/b.log" | tail -1 || true)
"$NLLMD" run --state-dir "$W/b" r --resume >"$W/b2.log" 2>&1 ||
    { echo "resume $PREC: resumed run failed:"; tail -5 "$W/b2.log"; exit 1; }
python3 - "$W/a/jobs/r/checkpoints/r_final.safetensors" \
    "$W/b/jobs/r/checkpoints/r_final.safetensors" "$PREC" "$paused" <<'PY'
import json, struct, sys
def load(p):
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in h.items()
            if k != "__metadata__"}
a, b = load(sys.argv[1]), load(sys.argv[2])
diff = sorted(k for k in a if a[k] != b.get(k))
if set(a) != set(b) or diff:
    print("resume %s: %d of %d tensors differ after %s: %s" % (
        sys.argv[3], len(diff), len(a), sys.argv[4], ", ".join(diff[:5])))
    sys.exit(1)
print("resume %s: %d/%d tensors bit-identical (SIGTERM: %s)" % (
    sys.argv[3], len(a), len(a), sys.argv[4] or "?"))
PY
