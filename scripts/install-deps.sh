#!/usr/bin/env bash
# Installs what iomapfs needs to build, test and benchmark, from Debian 12's archive only.
# Idempotent: skips apt when everything is present. Run as root.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config clang-format
  libfuse3-dev fuse3
  libext2fs-dev e2fsprogs
  liburing-dev libbpf-dev libboost-dev
  googletest libgtest-dev
  attr acl util-linux fdisk psmisc
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
