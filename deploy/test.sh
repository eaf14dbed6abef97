#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: install dependencies, build, run ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
ninja -C build -j2
cd build
ctest --output-on-failure -j2 --timeout 600
