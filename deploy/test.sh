#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: install dependencies, build, run ctest; then the
# unit and integration suites again under ASan+UBSan (tests/sanitize/run.sh, build-asan) and every fuzz target
# for SBX_FUZZ_SECONDS (default 60) each (tests/fuzz/run.sh, build-fuzz); then the container image under a real
# engine (tests/container/run.sh, from build) and the VM suite (tests/vm/run.sh: Debian's stock kernel, cgroup v2
# only, systemd). Each part also runs alone (README).
# Every part runs even when an earlier one failed, so one CI run shows all failures; the exit status is
# non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh || exit 1
status=0
part() {
  local name=$1 start=$SECONDS
  shift
  echo "== deploy/test.sh: $name"
  if "$@"; then
    echo "== deploy/test.sh: $name passed in $((SECONDS - start)) s"
  else
    echo "== deploy/test.sh: $name FAILED after $((SECONDS - start)) s"
    status=1
  fi
}
build() {
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo && ninja -C build -j2
}
part "build" build || true
if [ "$status" -ne 0 ]; then exit 1; fi
# clang's -Wthread-safety over the product's sources (parsing only), with the build's flags.
part "thread-safety" bash deploy/tsa-check.sh build
part "ctest" bash -c 'cd build && ctest --output-on-failure -j2 --timeout 600'
part "sanitizers" bash tests/sanitize/run.sh
# 30 s per fuzz target here keeps the whole run under an hour on a 2-core machine with the VM and container
# suites; a developer runs them longer with SBX_FUZZ_SECONDS.
part "fuzzers" env SBX_FUZZ_SECONDS="${SBX_FUZZ_SECONDS:-30}" bash tests/fuzz/run.sh
part "container" bash tests/container/run.sh
part "vm" bash tests/vm/run.sh
exit "$status"
