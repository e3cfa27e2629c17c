#!/usr/bin/env bash
# test.sh -- the one command that runs every test: installs what is
# missing, builds (release, then AddressSanitizer+UBSan), runs the meson
# test suites in both, runs each libFuzzer target of tests/fuzz/ for 5 s
# (when clang has libFuzzer), and compiles the CUDA backend where nvcc exists.
# Prints "N passed, N failed" last. Usage: scripts/test.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

scripts/deps.sh --test --torch  # PyTorch: the parity tests and the baseline's own checks

jobs=$(nproc)
passed=0; failed=0; skipped=0
run_suite() { # dir
  local dir=$1 rc=0
  meson test -C "$dir" --print-errorlogs --num-processes "$jobs" || rc=$?
  local log="$dir/meson-logs/testlog.json"
  local p f s
  p=$(grep -c '"result": "OK"' "$log" || true)
  f=$(grep -c -E '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log" || true)
  s=$(grep -c '"result": "SKIP"' "$log" || true)
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  return $rc
}

status=0
[ -f build/build.ninja ] || meson setup build -Dcuda=disabled
ninja -C build
run_suite build || status=1

# Reliability campaigns, CI size: SIGKILL during checkpoint writes, simulated
# power loss, I/O faults, access rules, load, a 2-minute soak
# (tests/reliability/run.sh --quick, about 6 minutes on 2 cores;
# docs/reliability.md has the full run). A failed campaign fails this script.
if tests/reliability/run.sh --quick --build build; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); status=1
fi

if [ $quick -eq 0 ]; then
  [ -f build-asan/build.ninja ] || meson setup build-asan -Dcuda=disabled \
      -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Db_lundef=false
  ninja -C build-asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    NLLM_TEST_SANITIZED=1 run_suite build-asan || status=1

  # hostile input: every libFuzzer target of tests/fuzz/ for 5 seconds
  if tests/fuzz/run.sh --available; then
    fuzz_log=$(mktemp)
    frc=0
    tests/fuzz/run.sh 5 2>&1 | tee "$fuzz_log" || frc=$?
    fp=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$fuzz_log" | tail -1)
    ff=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$fuzz_log" | tail -1)
    rm -f "$fuzz_log"
    passed=$((passed + ${fp:-0})); failed=$((failed + ${ff:-0}))
    if [ $frc -ne 0 ]; then
      status=1
      [ -z "$ff" ] && failed=$((failed + 1)) # it did not get as far as running
    fi
  else
    echo "test.sh: clang with libFuzzer not found: fuzz targets skipped"
    skipped=$((skipped + 1))
  fi

  nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
  if [ -n "$nvcc" ]; then
    echo "test.sh: nvcc found ($nvcc): building the CUDA backend (no GPU tests here)"
    [ -f build-cuda/build.ninja ] || meson setup build-cuda -Dcuda=enabled
    if ninja -C build-cuda; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; fi
  else
    echo "test.sh: no nvcc: CUDA build skipped"
  fi
fi

echo "$passed passed, $failed failed, $skipped skipped"
exit $status
