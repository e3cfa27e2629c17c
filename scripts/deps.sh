#!/usr/bin/env bash
# deps.sh -- installs the Debian packages nllm needs to build and test,
# only those missing (apt-get, as root or through sudo).
#   scripts/deps.sh            build + test dependencies
#   scripts/deps.sh --demo     also a text corpus for the demo (fortunes)
#   scripts/deps.sh --test     also what the test suites drive: promtool (prometheus), zsh,
#                              headless chromium, systemd-analyze, scdoc, xmllint,
#                              sshd and ssh (nllmctl --host ssh://), Slurm's
#                              slurmctld, slurmd and srun (tests/test_slurm.py starts a
#                              cluster of its own in a temporary folder)
#   scripts/deps.sh --torch    also python3-torch (benchmarks, parity test)
set -euo pipefail

pkgs=(meson ninja-build pkg-config gcc libc6-dev
      libopenblas-dev libuv1-dev libmsgpack-dev libjansson-dev libxxhash-dev
      libsqlite3-dev sqlite3 python3 python3-msgpack python3-yaml libhttp-parser-dev
      libopenmpi-dev openmpi-bin)
for arg in "$@"; do
  case "$arg" in
    --demo) pkgs+=(fortunes-min) ;;
    --torch) pkgs+=(python3-torch python3-numpy) ;;
    --test) pkgs+=(prometheus zsh chromium fonts-dejavu-core systemd scdoc libxml2-utils clang libclang-rt-14-dev
                   openssh-server openssh-client slurmctld slurmd slurm-client) ;;
    --extra) pkgs+=(clang llvm libclang-rt-14-dev) ;;
    *) echo "deps.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps.sh: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps.sh: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
