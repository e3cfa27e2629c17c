#!/usr/bin/env bash
# gpu_bundle.sh -- builds the CUDA programs here and packs what a bare GPU
# machine without Debian's libraries needs to run tests/gpu/check.sh:
#   .dev/bin   nllmd, nllmctl, nllm-bench, test_cuda_ops, test_comm_nccl (built with
#              -Dcuda=enabled; NCCL's library is loaded from the GPU machine's CUDA)
#   .dev/lib   the shared libraries they load from outside the CUDA Toolkit
#   .dev/data  the corpora the GPU checks train on (from ../shared/data)
# On the GPU machine:  LD_LIBRARY_PATH=$PWD/.dev/lib BIN=.dev/bin DATA=.dev/data tests/gpu/check.sh
# Usage: scripts/gpu_bundle.sh [--arch SM]   (default 90: Hopper)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=90
[ "${1:-}" = "--arch" ] && arch=$2
scripts/deps.sh
BUILD=build-gpu
if [ -f "$BUILD/build.ninja" ]; then
    meson configure "$BUILD" -Dcuda=enabled -Dgpu_arch="$arch" >/dev/null
else
    meson setup "$BUILD" -Dcuda=enabled -Dgpu_arch="$arch" -Dbuildtype=release >/dev/null
fi
ninja -C "$BUILD" nllmd nllmctl nllm-bench tests/test_cuda_ops tests/test_comm_nccl
rm -rf .dev
mkdir -p .dev/bin .dev/lib .dev/data
cp "$BUILD/nllmd" "$BUILD/nllmctl" "$BUILD/nllm-bench" "$BUILD/tests/test_cuda_ops" \
    "$BUILD/tests/test_comm_nccl" .dev/bin/
for f in .dev/bin/*; do
    ldd "$f" | awk '/=> \// { print $3 }'
done | sort -u | while read -r lib; do
    case "$lib" in
    /usr/local/cuda* | */libc.so.* | */libm.so.* | */libpthread.so.* | */libdl.so.* | \
        */librt.so.* | */ld-linux* | */libstdc++.so.* | */libgcc_s.so.*) ;;
    *) cp -L "$lib" .dev/lib/ ;;
    esac
done
if [ -d ../shared/data ]; then
    cp ../shared/data/tinyshakespeare/input.txt .dev/data/tinyshakespeare.txt
    cp ../shared/data/wikitext-2/test.txt .dev/data/wikitext2-test.txt
    cp ../shared/data/wikitext-2/valid.txt .dev/data/wikitext2-valid.txt
fi
du -sh .dev
