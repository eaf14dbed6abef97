#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: install dependencies, build, run ctest; then the
# unit and integration suites again under ASan+UBSan (tests/sanitize/run.sh, build-asan) and every fuzz target
# for SBX_FUZZ_SECONDS (default 60) each (tests/fuzz/run.sh, build-fuzz). Each part also runs alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
ninja -C build -j2
(cd build && ctest --output-on-failure -j2 --timeout 600)
bash tests/sanitize/run.sh
bash tests/fuzz/run.sh
