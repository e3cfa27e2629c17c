#!/usr/bin/env bash
# test.sh -- the one command that runs every test: installs what is
# missing, builds (release, then AddressSanitizer+UBSan), runs the meson
# test suites in both, and compiles the CUDA backend where nvcc exists.
# Prints "N passed, N failed" last. Usage: scripts/test.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

scripts/deps.sh --test

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

if [ $quick -eq 0 ]; then
  [ -f build-asan/build.ninja ] || meson setup build-asan -Dcuda=disabled \
      -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Db_lundef=false
  ninja -C build-asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    NLLM_TEST_SANITIZED=1 run_suite build-asan || status=1

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
