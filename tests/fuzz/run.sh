#!/usr/bin/env bash
# run.sh -- builds the libFuzzer targets of tests/fuzz/ with clang
# (-fsanitize=fuzzer,address,undefined) into build-fuzz/ and runs each one
# on its seed corpus, then prints a table (target, executions, exec/s,
# crashes, leaks, peak RSS) and "N passed, M failed".
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [RUNS]
#     SECONDS_PER_TARGET  time per target (default 60; 0 = no time limit)
#     RUNS                stop a target after this many executions (-runs=N)
#   tests/fuzz/run.sh --available   exit 0 when clang can build a fuzzer
#   FUZZ_TARGETS="rpc http" tests/fuzz/run.sh ...   a subset
#   FUZZ_OUT=DIR tests/fuzz/run.sh ...   build and run in DIR (default
#                                        build-fuzz; two runs at once need two)
#
# Memory: every target runs with -rss_limit_mb=256 and -malloc_limit_mb=256
# (one allocation over 256 MiB is reported as a crash at once, and so is a
# resident size over 256 MiB). `ulimit -v` cannot be used: AddressSanitizer
# reserves terabytes of virtual address space for its shadow memory at
# start-up, so a 256 MiB address-space limit would stop every target before
# it ran an input. ASan's quarantine of freed memory is cut to 32 MiB
# (default 256 MiB), so that the RSS limit measures the target, not it.
#   FUZZ_AS_LIMIT_MB=256 tests/fuzz/run.sh ...   the address-space pass:
# targets built without AddressSanitizer (libFuzzer + UBSan only, in
# DIR-as/) and run under `ulimit -v` of that many MiB, so that every
# mapping the code makes counts (glibc arenas, thread stacks, OpenBLAS).
#
# New inputs go to build-fuzz/corpus/TARGET (the seeds in
# tests/fuzz/corpus/TARGET are only read); crashes, leaks, OOMs and
# timeouts are written to build-fuzz/artifacts/TARGET/ and logs to
# build-fuzz/logs/. Reproduce one with build-fuzz/fuzz_TARGET FILE.
set -euo pipefail
cd "$(dirname "$0")/../.."

CC=${CC_FUZZ:-clang}
out=${FUZZ_OUT:-build-fuzz}
as_limit=${FUZZ_AS_LIMIT_MB:-}
san=address,undefined
if [ -n "$as_limit" ]; then
    out=$out-as
    san=undefined
fi
all_targets="rpc safetensors ckpt jobfile http"

available() {
    command -v "$CC" >/dev/null 2>&1 || return 1
    local tmp
    tmp=$(mktemp -d)
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n)\n{ (void)d; (void)n; return 0; }\n' >"$tmp/t.c"
    "$CC" -fsanitize=fuzzer,address,undefined "$tmp/t.c" -o "$tmp/t" >/dev/null 2>&1
    local rc=$?
    rm -rf "$tmp"
    return $rc
}

if [ "${1:-}" = "--available" ]; then
    if available; then exit 0; else exit 1; fi
fi
if ! available; then
    echo "run.sh: $CC with libFuzzer not found (apt-get install clang llvm libclang-rt-14-dev)" >&2
    exit 77
fi

secs=${1:-60}
runs=${2:-}
targets=${FUZZ_TARGETS:-$all_targets}

# ---- build ------------------------------------------------------------------
mkdir -p "$out/obj" "$out/logs"
cflags=(-std=gnu11 -D_GNU_SOURCE -fno-strict-aliasing -g -O1 -fno-omit-frame-pointer
        -fsanitize=fuzzer-no-link,$san -fno-sanitize-recover=undefined
        -Ikernels -Ikernels/cpu -Idaemon/store -Idaemon/engine -Idaemon -Iproto)
pkgs="jansson libxxhash sqlite3 msgpack libuv openblas"
# shellcheck disable=SC2207
cflags+=($(pkg-config --cflags $pkgs))
# shellcheck disable=SC2207
libs=($(pkg-config --libs $pkgs) -lhttp_parser -lm -lpthread)

# dashboard.html as a C array, as meson.build makes it
python3 -c 'import sys; d = open(sys.argv[1], "rb").read(); nl = chr(10); open(sys.argv[2], "w").write("#include <stddef.h>" + nl + "const unsigned char nllmd_dashboard_html[] = {" + ",".join(map(str, d)) + ",0};" + nl + "const size_t nllmd_dashboard_html_len = %d;" % len(d) + nl)' \
    daemon/dashboard.html "$out/dashboard_html.c"

srcs=(kernels/nllm_err.c kernels/backend.c kernels/model.c kernels/coll_single.c
      kernels/cpu/cpu_backend.c
      kernels/cpu/cpu_pool.c kernels/cpu/small_gemm.c
      kernels/cpu/gemm.c kernels/cpu/bf16_gemm.c kernels/cpu/cpu_kernels.c kernels/cpu/philox.c
      kernels/comm.c kernels/comm_threads.c kernels/comm_mpi.c
      daemon/store/fsutil.c daemon/store/safetensors.c daemon/store/catalog.c
      daemon/engine/data.c daemon/engine/config.c daemon/engine/trainer.c
      daemon/engine/ckpt.c daemon/engine/curves.c proto/rpc.c
      daemon/nllmd.c daemon/server.c daemon/jobs.c daemon/methods.c daemon/jsonpack.c
      daemon/curves_job.c daemon/http.c daemon/place.c daemon/metrics.c daemon/log.c
      "$out/dashboard_html.c")
objs=()
pids=()
for s in "${srcs[@]}"; do
    o="$out/obj/$(echo "$s" | tr / _ | sed 's/\.c$/.o/')"
    objs+=("$o")
    cc=("$CC" "${cflags[@]}")
    # libFuzzer has the main(); nllmd's is renamed out of the way
    [ "$s" = daemon/nllmd.c ] && cc+=(-Dmain=nllmd_main_unused)
    # GCC vector builtins (__builtin_shuffle): gcc, uninstrumented; the
    # fuzzed paths never reach the GEMM kernels
    [ "$s" = kernels/cpu/small_gemm.c ] &&
        cc=(gcc -std=gnu11 -D_GNU_SOURCE -O2 -g -Ikernels -Ikernels/cpu)
    if [ ! -f "$o" ] || [ "$s" -nt "$o" ] || [ "$0" -nt "$o" ] ||
       [ -n "$(find daemon kernels proto -name '*.h' -newer "$o" -print -quit)" ]; then
        "${cc[@]}" -c "$s" -o "$o" &
        pids+=($!)
    fi
done
for p in "${pids[@]}"; do wait "$p"; done
rm -f "$out/libnllm_fuzz.a"
ar rcs "$out/libnllm_fuzz.a" "${objs[@]}"
for t in $targets; do
    "$CC" "${cflags[@]}" -fsanitize=fuzzer "tests/fuzz/fuzz_$t.c" "$out/libnllm_fuzz.a" \
        "${libs[@]}" -o "$out/fuzz_$t"
done

# ---- run --------------------------------------------------------------------
# ASan's quarantine of freed memory (256 MiB by default) would count
# against -rss_limit_mb by itself; 32 MiB keeps the limit about the target.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:quarantine_size_mb=32:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
rows=()
passed=0
failed=0
for t in $targets; do
    mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
    args=(-rss_limit_mb=256 -malloc_limit_mb=256 -timeout=20 -print_final_stats=1
          -artifact_prefix="$out/artifacts/$t/")
    [ "$secs" != 0 ] && args+=(-max_total_time="$secs")
    [ -n "$runs" ] && args+=(-runs="$runs")
    [ -f "tests/fuzz/$t.dict" ] && args+=(-dict="tests/fuzz/$t.dict")
    # nllmd logs every job event on stderr; keep libFuzzer's own output only
    [ "$t" = rpc ] && args+=(-close_fd_mask=2)
    ls "$out/artifacts/$t" | sort >"$out/logs/$t.before"
    log="$out/logs/$t.log"
    echo "run.sh: fuzz_$t ${args[*]}" >&2
    rc=0
    if [ -n "$as_limit" ]; then
        # OpenBLAS sizes its buffers by its thread count: one thread here
        (ulimit -v $((as_limit * 1024)) && OPENBLAS_NUM_THREADS=1 exec "$out/fuzz_$t" \
            "${args[@]}" "$out/corpus/$t" "tests/fuzz/corpus/$t") >"$log" 2>&1 || rc=$?
    else
        "$out/fuzz_$t" "${args[@]}" "$out/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    newfiles=$(ls "$out/artifacts/$t" | sort | comm -13 "$out/logs/$t.before" -)
    crashes=$(echo "$newfiles" | grep -c -E '^(crash|oom|timeout)-' || true)
    leaks=$(echo "$newfiles" | grep -c -E '^leak-' || true)
    new=$((crashes + leaks))
    if [ $rc -eq 0 ] && [ "$new" -eq 0 ]; then
        passed=$((passed + 1)); verdict=ok
    else
        failed=$((failed + 1)); verdict=FAIL
        echo "run.sh: fuzz_$t failed (exit $rc), see $log:" >&2
        grep -E -m 5 'ERROR:|runtime error|fuzz_[a-z]+: ' "$log" >&2 || tail -5 "$log" >&2
        ls "$out/artifacts/$t" >&2 || true
    fi
    rows+=("$(printf '%-12s %12s %9s %8s %6s %9s  %s' "$t" "${execs:-0}" "${eps:-0}" \
        "$crashes" "$leaks" "${rss:-?} MB" "$verdict")")
done

printf '%-12s %12s %9s %8s %6s %9s\n' target executions exec/s crashes leaks "peak RSS"
for r in "${rows[@]}"; do echo "$r"; done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
