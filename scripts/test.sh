#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, runs every ctest label
# (unit, mount, ...). Mount tests need root and /dev/fuse; without them they skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j"${CTEST_JOBS:-2}" "$@"
