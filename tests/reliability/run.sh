#!/usr/bin/env bash
# run.sh -- nllm's reliability campaigns (docs/reliability.md):
#   1 kill       SIGKILL nllmd at random instants, in the checkpoint write
#                window and at every write/fsync/rename/dirsync/catalog commit
#   2 powerloss  power loss at every durability point of the checkpoint writer
#   3 faults     EIO/ENOSPC at every call site, SQLite errors, a full disk
#   4 access     socket permissions, peer uid, TCP token auth, HTTP, names
#   5 load       64 clients, connect/disconnect churn, stalled consumers
#   5b soak      fixed-rate clients, churn and floods for an hour (CI: 2 min)
#   6 fuzz       every libFuzzer target 10^6 executions (full run only: CI
#                runs them 5 s each from scripts/test.sh)
# Prints a table of figures; a full run (no --quick) also writes
# docs/reliability.md. Python 3 stdlib and the built binaries only.
#
# Usage: tests/reliability/run.sh [--quick] [--soak MINUTES] [--build DIR]
#                            [--only kill,powerloss,faults,access,load,soak,fuzz]
#   --quick   the CI size (whole run about 6 minutes on 2 cores): 30 kills and
#             a sampled sweep, 100 power-loss cycles, a 2-minute soak,
#             performance aims reported but not asserted; never touches docs/
#   --soak M  the soak's length in minutes (full run: 60; --quick: 2); given
#             alone, without --only, it runs only the soak, then rewrites
#             docs/reliability.md with the last full run's figures and this
#             soak's
# Exit status: 0 when every campaign passed.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=$PWD
here=tests/reliability
py=/usr/bin/python3
mode=full soak="" build=build only=kill,powerloss,faults,access,load,soak,fuzz only_given=""
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --quick) mode=quick ;;
    --soak) soak=${2:?--soak needs MINUTES}; shift ;;
    --build) build=${2:?--build needs DIR}; shift ;;
    --only) only=${2:?--only needs a list}; only_given=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
# --soak M alone: only the soak (the full run's other figures are kept)
[ -n "$soak" ] && [ -z "$only_given" ] && [ $mode = full ] && mode=soak
[ -n "$soak" ] || soak=$([ $mode = quick ] && echo 2 || echo 60)
[ -x "$py" ] || py=$(command -v python3)
if [ ! -f "$build/build.ninja" ]; then
  echo "run.sh: $build is not a meson build folder: meson setup $build && ninja -C $build" >&2
  exit 2
fi
ninja -C "$build" >/dev/null
build=$(cd "$build" && pwd)
export NLLM_BUILD=$build
out=$build/reliability$([ $mode = quick ] && echo -quick || true)
mkdir -p "$out"
failed=()

run() { # name limit_seconds command...
  local name=$1 limit=$2; shift 2
  case ",$only," in *",$name,"*) ;; *) [ $mode = soak ] || return 0 ;; esac
  echo "== $name ($(date +%H:%M:%S))"
  rm -f "$out/$name.json"
  local t0=$SECONDS rc=0
  timeout --kill-after=30 "$limit" "$@" >"$out/$name.log" 2>&1 || rc=$?
  grep -v '^ok ' "$out/$name.log" | tail -n 40 || true
  [ $rc -eq 124 ] && echo "$name: timed out after $limit s (log: $out/$name.log)"
  [ $rc -eq 77 ] && echo "$name: SKIPPED (the machine lacks what it needs; see the log)"
  [ $rc -eq 0 ] || failed+=("$name")
  echo "   $name: exit $rc, $((SECONDS - t0)) s"
}

if [ $mode = soak ]; then
  run soak $((soak * 60 + 600)) "$py" $here/load.py --out "$out" --soak "$soak"
else
  q=(); [ $mode = quick ] && q=(--quick)
  if [ $mode = quick ]; then
    kills=30 sweep=sample cycles=100 every=2 tk=170 tp=90 tf=150 ta=90 tl=150
  else
    kills=200 sweep=full cycles=300 every=1 tk=7200 tp=1800 tf=1800 ta=600 tl=1800 tz=5400
  fi
  # the power-loss simulator links the engine library of the build
  case ",$only," in *,powerloss,*) ;; *) cycles=0 ;; esac
  [ "$cycles" = 0 ] || link=$(awk '/^build tests\/test_crash: /{f=1} f&&/LINK_ARGS/{sub(/^ *LINK_ARGS = /,""); print; exit}' \
         "$build/build.ninja")
  if [ "$cycles" != 0 ] && ! (cd "$build" && cc -std=gnu11 -O2 -D_GNU_SOURCE -Wall -Wextra -Wno-format-truncation \
        -I"$src/daemon/store" -I"$src/daemon/engine" -I"$src/kernels" -I"$src/kernels/cpu" \
        "$src/$here/powerloss.c" -o "$out/powerloss" -rdynamic $link); then
    echo "run.sh: cannot build $here/powerloss.c" >&2
    failed+=(powerloss-build)
  fi
  run kill $tk "$py" $here/kill.py --out "$out" --kills $kills --sweep $sweep "${q[@]}"
  run powerloss $tp "$py" $here/powerloss.py --bin "$out/powerloss" --out "$out" \
      --cycles $cycles --every $every
  run faults $tf "$py" $here/faults.py --out "$out" "${q[@]}"
  run access $ta "$py" $here/access.py --out "$out"
  run load $tl "$py" $here/load.py --out "$out" "${q[@]}"
  run soak $((soak * 60 + 600)) "$py" $here/load.py --out "$out" --soak "$soak"
  [ $mode = quick ] || run fuzz $tz "$py" $here/fuzz.py --out "$out" --runs 1000000
fi

doc=()
[ $mode = quick ] || doc=(--doc "$src/docs/reliability.md")
"$py" $here/report.py --out "$out" --mode $mode "${doc[@]}" || failed+=(report)
if [ ${#failed[@]} -gt 0 ]; then
  echo "run.sh: FAILED: ${failed[*]} (logs and results in $out)"
  exit 1
fi
echo "run.sh: all campaigns passed (results in $out)"
