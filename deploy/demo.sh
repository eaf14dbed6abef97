#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: install dependencies, build, start the agent daemon in
# local mode, and run commands in sandboxes through sandboxctl, showing their output and outcomes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j2 sandbox-agent sandbox-agentd sandbox-init sandboxctl

demo=$(mktemp -d /tmp/sandbox-agent-demo.XXXXXX)
socket="$demo/agent.sock"
# A state dir of its own: an agent already installed on this host keeps /var/lib/sandbox-agent (one agent per
# state dir).
echo "state_dir: \"$demo/state\"" >"$demo/agent.textproto"
build/bin/sandbox-agent serve --config "$demo/agent.textproto" --socket "$socket" --metrics-address off \
  2>"$demo/agent.log" &
agent=$!
cleanup() { kill "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; rm -rf "$demo"; }
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.05; done
ctl() { build/bin/sandboxctl --addr "unix:$socket" "$@"; }

echo "--- sandboxctl run: a sandbox for one command (created, used, deleted)"
ctl run -- sh -c 'echo "hello from $(hostname) as $(id -un) (uid $(id -u)) in $(pwd)"; echo "processes visible: $(ls /proc | grep -c "^[0-9]")"'
echo "exit status: $?"

echo "--- a long-lived session: files in, a command, a file out, then its outcome"
id=$(ctl create --label demo=yes --memory-limit 268435456)
echo "session $id"
printf 'print(sum(range(1000)))\n' > "$demo/sum.py"
ctl cp "$demo/sum.py" "$id:sum.py" >/dev/null
ctl exec "$id" -- sh -c 'command -v python3 >/dev/null && python3 sum.py || awk "BEGIN{s=0; for(i=0;i<1000;i++) s+=i; print s}"; ls -l' 
ctl exec "$id" -- sh -c 'echo computed > result.txt'
ctl cp "$id:result.txt" "$demo/result.txt" >/dev/null && echo "result.txt from the sandbox: $(cat "$demo/result.txt")"
ctl cancel "$id" >/dev/null
echo "outcome: $(ctl events "$id" | tail -n 1)"
ctl delete "$id"

echo "--- sandbox-agent run: one command in a one-shot jail, with its outcome as JSON"
build/bin/sandbox-agent run --outcome-json - --memory-limit 256M --time-limit 10 -- sh -c 'echo one-shot; exit 3' || echo "exit status: $?"
