#!/usr/bin/env bash
# demo.sh -- the main job in one command: installs what is missing, builds,
# starts nllmd on a state folder under ./demo, starts a training job on a
# real corpus (../shared/data/tinyshakespeare when present, else Debian's
# fortunes) and watches it live. Ctrl-C stops watching; the daemon and the
# job go on (`build/nllmctl --socket demo/nllmd.sock pause shakespeare`,
# `... shutdown`). Usage: scripts/demo.sh [extra nllmctl start flags]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/deps.sh --demo
[ -f build/build.ninja ] || meson setup build
ninja -C build nllmd nllmctl

demo="$root/demo"
mkdir -p "$demo"
sock="$demo/nllmd.sock"
ctl=(build/nllmctl --socket "$sock")

corpus="$root/../shared/data/tinyshakespeare/input.txt"
name=shakespeare
if [ ! -r "$corpus" ]; then
  corpus="$demo/fortunes.txt"
  name=fortunes
  # one fortune per paragraph line: join each fortune's lines, drop the % separators
  awk 'BEGIN{RS="%\n"} {gsub(/[ \t]*\n[ \t]*/," "); if (length($0) > 0) print}' \
      /usr/share/games/fortunes/fortunes > "$corpus"
fi

if ! "${ctl[@]}" hello >/dev/null 2>&1; then
  echo "demo: starting nllmd (state $demo/state, log $demo/nllmd.log)"
  # its own session: Ctrl-C on the watch below must not reach the daemon
  setsid nohup build/nllmd --state-dir "$demo/state" --socket "$sock" >>"$demo/nllmd.log" 2>&1 &
  for _ in $(seq 50); do "${ctl[@]}" hello >/dev/null 2>&1 && break; sleep 0.1; done
fi
"${ctl[@]}" hello

if "${ctl[@]}" status "$name" >/dev/null 2>&1; then
  state=$("${ctl[@]}" --json status "$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  case "$state" in
    paused|interrupted|stopped|failed) "${ctl[@]}" resume "$name" ;;
  esac
  exec "${ctl[@]}" watch "$name"
fi
# the seed model (model.md defaults) with a batch that gives frequent updates on a CPU
exec "${ctl[@]}" start "$name" --data "$corpus" --batch 64 --epochs 50 "$@" --watch
