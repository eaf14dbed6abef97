#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: install dependencies, build, and run a command in a jail,
# showing its output and its outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j2 sandbox-agent sandbox-init
echo "--- sandbox-agent run -- sh -c '...'"
build/bin/sandbox-agent run --outcome-json - --memory-limit 256M --time-limit 10 -- \
  sh -c 'echo "hello from $(hostname) as $(id -un) (uid $(id -u)) in $(pwd)"; echo "processes visible: $(ls /proc | grep -c "^[0-9]")"; ls /'
