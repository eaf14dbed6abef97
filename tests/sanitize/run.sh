#!/usr/bin/env bash
# Builds the unit and integration suites under ASan+UBSan in build-asan (-DSBX_SANITIZE=ON, gcc) and runs them
# once with ctest. Programs linked -static cannot take ASan: sandbox-init, the test probes (probe, xprobe) and
# the libraries linked into them (frame/sha256, the desktop and CDP drivers, the init protocol's messages) are
# built without sanitizers in that build (cmake/Sanitizers.cmake); everything else, the agent included, is
# sanitized, except the jail child (jail_child.cc and jail.cc: between clone and execve, on a stack ASan does
# not know). UBSan findings abort; a leak at exit fails the process that leaked.
#
#   bash tests/sanitize/run.sh   # ~10 min to build from a warm ccache, ~3 min to run (measured on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -f build-asan/build.ninja ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSBX_SANITIZE=ON
fi
ninja -C build-asan -j2 tests/unit/all tests/integration/all

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
status=0
for suite in unit integration; do
  echo "== sanitize: tests/$suite"
  ctest --test-dir "build-asan/tests/$suite" --output-on-failure -j2 --timeout 900 || status=1
done
exit "$status"
