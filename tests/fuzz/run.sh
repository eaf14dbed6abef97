#!/usr/bin/env bash
# Builds the libFuzzer targets in build-fuzz (clang, -fsanitize=fuzzer,address,undefined; the product libraries
# they link are compiled with the same sanitizers, cmake/Sanitizers.cmake) and runs each for SBX_FUZZ_SECONDS
# (default 60) on a scratch copy of its seed corpus (tests/fuzz/<name>_corpus/). Fails on the first crash,
# sanitizer finding, leak, timeout or out-of-memory; the input that did it is kept in build-fuzz/fuzz/findings/.
#
#   bash tests/fuzz/run.sh                        # every target, 60 s each: 6 min 12 s once built
#   SBX_FUZZ_SECONDS=300 bash tests/fuzz/run.sh cdp_fuzz   # one target, longer
# A finding: reproduce with `build-fuzz/fuzz/<target> <input>`, fix, and add the input to the corpus.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${SBX_FUZZ_SECONDS:-60}
targets=(http1_parser_fuzz init_frame_fuzz init_client_fuzz policy_loader_fuzz cdp_fuzz outbox_fuzz)
if [ "$#" -gt 0 ]; then targets=("$@"); fi

if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSBX_FUZZ=ON \
    -DBUILD_TESTING=OFF
fi
ninja -C build-fuzz -j2 "${targets[@]}"

# Scratch space for the corpus copies and what the targets write (outbox_fuzz fsyncs: tmpfs when there is one).
scratch_root=/tmp
if [ -d /dev/shm ] && [ -w /dev/shm ]; then scratch_root=/dev/shm; fi
work=$(mktemp -d "$scratch_root/sbx-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
findings=$PWD/build-fuzz/fuzz/findings
mkdir -p "$findings"

failed=()
for t in "${targets[@]}"; do
  corpus=tests/fuzz/${t%_fuzz}_corpus
  mkdir -p "$work/$t/tmp"
  cp -r "$corpus" "$work/$t/corpus"
  echo "== $t: ${seconds}s on $(ls "$corpus" | wc -l) seeds"
  start=$(date +%s)
  # -rss_limit_mb: a target may use up to 2 GiB (the 1 MiB frame cap, the 64 MiB CDP message cap, the 4 MiB
  # outbox payload cap are far below it); -timeout: one input taking over 10 s is a finding (a hang).
  if ! TMPDIR="$work/$t/tmp" \
       ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=1 \
       UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
       "build-fuzz/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
         -print_final_stats=1 -artifact_prefix="$findings/$t-" "$work/$t/corpus" \
         >"$work/$t/log" 2>&1; then
    tail -n 60 "$work/$t/log"
    echo "== $t: FAILED (input in $findings/)"
    failed+=("$t")
  else
    grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' "$work/$t/log" | tr '\n' ' '
    echo
    echo "== $t: ok ($(( $(date +%s) - start ))s)"
    # A target cleans up after every input and at exit (fuzz_util.h); after a crash it cannot.
    if [ -n "$(ls -A "$work/$t/tmp")" ]; then
      echo "== $t: left files behind in TMPDIR:"; ls -laR "$work/$t/tmp"
      failed+=("$t (temp files)")
    fi
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s without a finding"
