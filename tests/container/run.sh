#!/usr/bin/env bash
# The container test (issue 12, part 2): the image of deploy/Dockerfile built and run under a real engine,
# Debian's docker.io (dockerd, containerd, runc: the runtime of a Kubernetes node's containerd), with the
# grants, mounts, environment and command of deploy/k8s/daemonset.yaml, checked from outside the container:
#   1. a private dockerd (tests/container/engine.sh: own data root, exec root, socket, no bridge, no iptables),
#      stopped at the end, leaving no container, mount, cgroup or process;
#   2. the base image imported from a debootstrap root fs (no registry), cached under the build dir;
#   3. the full and the file-only image built from this checkout's host build (BINARIES=prebuilt), sizes
#      printed;
#   4. local mode (--network none): healthy (the DaemonSet's gRPC probe, from the pod's network namespace),
#      cold start-to-healthy printed, a file session, a desktop screenshot and a browser screenshot through
#      the container's socket with the host's sandboxctl; the file-only image serves a file session;
#   5. fleet mode (--network host) against the control-plane double on loopback: leases run, outcomes
#      reported;
#   6. `docker stop` drains: health NOT_SERVING, running sessions canceled after the grace, outcomes
#      reported, exit 0;
#   7. `docker kill` and a restart recover: each lease reported once, no session cgroup left on the host.
# Usage: tests/container/run.sh [BUILD_DIR]   (default build; it must hold a RelWithDebInfo build of the
# agent, sandboxctl and control-plane-double). Work files, the engine's data root and the base image cache
# are in BUILD_DIR/container. Runs as root.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd) || { echo "container test: no build dir ${1:-$ROOT/build}" >&2; exit 1; }
WORK="$BUILD/container"
T0=$SECONDS
log() { echo "[container $((SECONDS - T0))s] $*"; }
die() { echo "container test: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root"
for b in sandboxctl control-plane-double sandbox-agent sandbox-agentd sandbox-init; do
  [ -x "$BUILD/bin/$b" ] || die "$BUILD/bin/$b not built"
done
command -v curl >/dev/null && command -v nsenter >/dev/null || die "curl and nsenter are needed: run deploy/install-deps.sh"
mkdir -p "$WORK"
# shellcheck source=tests/container/engine.sh
. "$ROOT/tests/container/engine.sh"

CP_PID=""
cleanup() {
  local rc=$?
  [ -z "$CP_PID" ] || { kill "$CP_PID" 2>/dev/null; wait "$CP_PID" 2>/dev/null; }
  engine_stop || rc=1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# The sessions touch host cgroups and host uid ranges: one test run at a time on this host (the lock the
# other suites' jail tests take).
LOCK_FD=""
take_lock() { exec {LOCK_FD}>/tmp/sbx-test.lock; flock "$LOCK_FD"; }
drop_lock() { [ -z "$LOCK_FD" ] || { flock -u "$LOCK_FD"; exec {LOCK_FD}>&-; LOCK_FD=""; }; }

# ---------------------------------------------------------------------------------------------------------
# Helpers.

# gRPC health (grpc.health.v1.Health/Check for the server, service ""), as the kubelet's grpc probe asks it:
# from the pod's network namespace, here the container's (nsenter with the host's curl: the image carries
# no gRPC client). Prints SERVING, NOT_SERVING, DOWN or what else came back.
health() {
  local pid=$1 addr=$2 out
  out=$(printf '\0\0\0\0\0' | nsenter -t "$pid" -n curl -s --max-time 2 --http2-prior-knowledge \
          -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- \
          "http://$addr/grpc.health.v1.Health/Check" 2>/dev/null | od -An -tx1 | tr -d ' \n')
  case "$out" in
    00000000020801) echo SERVING ;;
    00000000020802) echo NOT_SERVING ;;
    "") echo DOWN ;;
    *) echo "OTHER($out)" ;;
  esac
}
container_pid() { docker inspect -f '{{.State.Pid}}' "$1"; }

# Waits (up to $3 s) until the container's health is SERVING.
wait_healthy() {
  local name=$1 addr=$2 deadline=$((SECONDS + $3)) pid
  while [ "$SECONDS" -lt "$deadline" ]; do
    pid=$(container_pid "$name")
    [ "$pid" != 0 ] || { docker logs "$name" 2>&1 | tail -n 20 >&2; die "$name exited before it was healthy"; }
    [ "$(health "$pid" "$addr")" = SERVING ] && return 0
    sleep 0.1
  done
  docker logs "$name" 2>&1 | tail -n 20 >&2
  die "$name not healthy in $3 s"
}

# Prepares the host side of a container named $1 (config $2, the ConfigMap's agent.textproto) and prints
# nothing; run_agent starts it with the DaemonSet's grants and volumes.
RUN_OPTS=() RUN_CMD=()
run_agent() {
  local name=$1 image=$2 network=$3 config=$4 dir="$WORK/$1"
  rm -rf "$dir"
  mkdir -p "$dir/config" "$dir/token" "$dir/tls" "$dir/state" "$dir/run"
  printf '%s\n' "$config" > "$dir/config/agent.textproto"
  echo test-token > "$dir/token/token"
  chmod 0400 "$dir/token/token"
  local args=() i
  mapfile -d '' args < <(/usr/bin/python3 "$ROOT/tests/container/daemonset_run_args.py" \
    "$ROOT/deploy/k8s/daemonset.yaml" --node-name "node-$name" \
    --host-path "/var/lib/sandbox-agent=$dir/state" \
    --volume "config=$dir/config" --volume "token=$dir/token" --volume "tls=$dir/tls" --volume "run=$dir/run")
  [ "${#args[@]}" -gt 0 ] || die "daemonset_run_args.py failed"
  RUN_OPTS=() RUN_CMD=()
  for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[i]}" = -- ] && { RUN_CMD=("${args[@]:i+1}"); break; }
    RUN_OPTS+=("${args[i]}")
  done
  mkdir -p /run/sandbox-agent/ids
  docker run -d --name "$name" --network "$network" "${RUN_OPTS[@]}" "$image" "${RUN_CMD[@]}" >/dev/null \
    || die "docker run $name failed"
}
ctl() { local name=$1; shift; "$BUILD/bin/sandboxctl" --addr "unix:$WORK/$name/run/agent.sock" "$@"; }
is_png() { [ "$(head -c 8 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; }

# The session cgroups the agent made below the container's cgroup, on the host (any hierarchy): below its
# own directory there (sandbox-agent/, which lives as long as the agent).
session_cgroups() {
  local id
  id=$(docker inspect -f '{{.Id}}' "$1")
  find /sys/fs/cgroup/*/"$ENGINE_CGROUP_PARENT/$id" /sys/fs/cgroup/"$ENGINE_CGROUP_PARENT/$id" -mindepth 2 \
    -type d 2>/dev/null | sort
}

# Polls (up to $3 s) until the fleet container's metrics (sandbox_agent_sessions_active, all kinds) show $2
# running sessions.
wait_sessions() {
  local name=$1 want=$2 deadline=$((SECONDS + $3)) n
  while [ "$SECONDS" -lt "$deadline" ]; do
    n=$(curl -s --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics" \
          | awk '/^sandbox_agent_sessions_active/ { n += $NF } END { print n + 0 }')
    [ "${n:-0}" -ge "$want" ] && return 0
    sleep 0.2
  done
  docker logs "$name" 2>&1 | tail -n 20 >&2
  die "$name: $want running sessions not seen in $3 s"
}

# The control-plane double on the host's loopback: enqueues $2 file sessions running the rest; outcome
# lines go to $1; it keeps serving after them and prints each lease's report count when stopped.
start_double() {
  local out=$1 n=$2
  shift 2
  "$BUILD/bin/control-plane-double" --listen "127.0.0.1:$CP_PORT" --token-file "$WORK/cp-token" \
    --enqueue "$n" --keep-serving -- "$@" > "$out" 2> "$out.err" &
  CP_PID=$!
  local deadline=$((SECONDS + 10))
  until grep -q 'serving WorkerGateway' "$out.err" 2>/dev/null; do
    kill -0 "$CP_PID" 2>/dev/null || { cat "$out.err" >&2; die "control-plane-double exited"; }
    [ "$SECONDS" -lt "$deadline" ] || die "control-plane-double did not start"
    sleep 0.1
  done
}
stop_double() { kill -TERM "$CP_PID"; wait "$CP_PID"; local rc=$?; CP_PID=""; return "$rc"; }
# Waits (up to $3 s) until file $1 has $2 outcome lines.
wait_outcomes() {
  local file=$1 want=$2 deadline=$((SECONDS + $3))
  while [ "$(grep -c '"lease_id"' "$file" 2>/dev/null)" -lt "$want" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$file" "$file.err" >&2; die "$want outcomes not reported in $3 s"; }
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------------------
engine_start
start=$SECONDS
base_image
log "base image ready in $((SECONDS - start)) s"
start=$SECONDS
build_images
log "images built in $((SECONDS - start)) s"
size_full=$(docker image inspect -f '{{.Size}}' sandbox-agent:test-full)
size_file=$(docker image inspect -f '{{.Size}}' sandbox-agent:test-file)
log "image size: full $((size_full / 1000000)) MB, file-only $((size_file / 1000000)) MB"

local_config='state_dir: "/var/lib/sandbox-agent"
unix_socket: "/run/sandbox-agent/agent.sock"
max_sessions: 4
policy_dir: "/etc/sandbox-agent/policies"
metrics_address: "0.0.0.0:9464"
health_address: "0.0.0.0:9465"'

take_lock
# --- 4. local mode, the full image.
start=$SECONDS
run_agent local sandbox-agent:test-full none "$local_config"
wait_healthy local 127.0.0.1:9465 60
log "local: cold start to healthy in $((SECONDS - start)) s (docker run to SERVING)"
out=$(ctl local run -- /bin/sh -c 'echo hello from $(id -u)') || die "local: file session failed"
[[ "$out" == "hello from "* ]] || die "local: file session printed '$out'"
log "local: file session: $out"
id=$(ctl local create --kind desktop) || die "local: desktop create failed"
ctl local desktop "$id" screenshot -o "$WORK/desktop.png" || die "local: desktop screenshot failed"
is_png "$WORK/desktop.png" || die "local: the desktop screenshot is not a PNG"
ctl local delete "$id" >/dev/null
log "local: desktop screenshot $(stat -c %s "$WORK/desktop.png") bytes"
id=$(ctl local create --kind browser) || die "local: browser create failed"
ctl local browser "$id" navigate 'data:text/html,<h1>container test</h1>' >/dev/null || die "local: browser navigate failed"
ctl local browser "$id" screenshot -o "$WORK/browser.png" || die "local: browser screenshot failed"
is_png "$WORK/browser.png" || die "local: the browser screenshot is not a PNG"
ctl local delete "$id" >/dev/null
log "local: browser screenshot $(stat -c %s "$WORK/browser.png") bytes"
docker logs local 2>&1 | grep -i 'oom_score_adj' | head -n 1 | sed 's/^/[container] agent said: /'
docker stop -t 30 local >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' local)" = 0 ] || { docker logs local 2>&1 | tail -n 20 >&2; die "local: exit code $(docker inspect -f '{{.State.ExitCode}}' local) after docker stop"; }
[ -z "$(session_cgroups local)" ] || die "local: session cgroups left: $(session_cgroups local)"
docker rm local >/dev/null

# --- 4b. the file-only image.
start=$SECONDS
run_agent local-file sandbox-agent:test-file none "$local_config"
wait_healthy local-file 127.0.0.1:9465 60
log "file-only: start to healthy in $((SECONDS - start)) s"
out=$(ctl local-file run -- /bin/echo file-only) || die "file-only: file session failed"
[ "$out" = file-only ] || die "file-only: file session printed '$out'"
docker stop -t 30 local-file >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' local-file)" = 0 ] || die "file-only: exit code after docker stop"
docker rm local-file >/dev/null
drop_lock

# --- 5. fleet mode on the host's loopback.
CP_PORT=$((20000 + RANDOM % 20000)) HEALTH_PORT=$((CP_PORT + 1)) METRICS_PORT=$((CP_PORT + 2))
echo test-token > "$WORK/cp-token"
fleet_config="state_dir: \"/var/lib/sandbox-agent\"
unix_socket: \"/run/sandbox-agent/agent.sock\"
max_sessions: 4
policy_dir: \"/etc/sandbox-agent/policies\"
metrics_address: \"127.0.0.1:$METRICS_PORT\"
health_address: \"127.0.0.1:$HEALTH_PORT\"
fleet {
  control_plane: \"127.0.0.1:$CP_PORT\"
  agent_id: \"@NODE_NAME@\"
  token_file: \"/etc/sandbox-agent/token/token\"
  lease_wait_ms: 1000
  heartbeat_interval_ms: 500
  drain_grace_ms: 3000
  backoff_initial_ms: 100
  backoff_max_ms: 1000
}"
take_lock
start_double "$WORK/fleet-run.out" 3 /bin/echo leased
run_agent fleet sandbox-agent:test-full host "$fleet_config"
wait_healthy fleet "127.0.0.1:$HEALTH_PORT" 60
wait_outcomes "$WORK/fleet-run.out" 3 60
[ "$(grep -c '"status":"COMPLETED"' "$WORK/fleet-run.out")" = 3 ] || { cat "$WORK/fleet-run.out" >&2; die "fleet: not every lease ended COMPLETED"; }
grep -q '"agent_id":"node-fleet"' "$WORK/fleet-run.out.err" 2>/dev/null || true
stop_double || die "fleet: the double's summary failed"
docker stop -t 60 fleet >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' fleet)" = 0 ] || die "fleet: exit code after docker stop"
docker rm fleet >/dev/null
log "fleet: 3 leases ran, outcomes reported: $(tr '\n' ' ' < "$WORK/fleet-run.out")"

# Each phase below has a double of its own, which numbers its leases from l-1 again: a container of its own
# too (a fresh state dir), or the agent would take them for leases it already ran.
# --- 6. docker stop drains.
start_double "$WORK/fleet-drain.out" 2 /bin/sleep 600
run_agent fleet sandbox-agent:test-full host "$fleet_config"
wait_healthy fleet "127.0.0.1:$HEALTH_PORT" 60
wait_sessions fleet 2 60
docker stop -t 60 fleet >/dev/null &
stopper=$!
fpid=$(container_pid fleet)
seen=""
while kill -0 "$stopper" 2>/dev/null; do
  h=$(health "$fpid" "127.0.0.1:$HEALTH_PORT")
  [ "$h" = NOT_SERVING ] && seen=1
  sleep 0.1
done
wait "$stopper" || die "drain: docker stop failed"
[ -n "$seen" ] || die "drain: health never answered NOT_SERVING while the agent drained"
rc=$(docker inspect -f '{{.State.ExitCode}}' fleet)
[ "$rc" = 0 ] || { docker logs fleet 2>&1 | tail -n 20 >&2; die "drain: exit code $rc after docker stop"; }
wait_outcomes "$WORK/fleet-drain.out" 2 5
[ "$(grep -c '"status":"CANCELED"' "$WORK/fleet-drain.out")" = 2 ] && [ "$(grep -c '"reason":"drained"' "$WORK/fleet-drain.out")" = 2 ] \
  || { cat "$WORK/fleet-drain.out" >&2; die "drain: the running sessions were not reported canceled/drained"; }
[ -z "$(session_cgroups fleet)" ] || die "drain: session cgroups left: $(session_cgroups fleet)"
stop_double || die "drain: the double's summary failed"
docker rm fleet >/dev/null
[ "$(grep '"summary"' "$WORK/fleet-drain.out" | grep -c '"outcome_reports":1[,}]')" = 2 ] || die "drain: not each lease reported once"
log "drain: NOT_SERVING seen, exit 0, outcomes: $(tr '\n' ' ' < "$WORK/fleet-drain.out")"

# --- 7. docker kill, then a restart of the same container (same cgroup path, same state dir).
start_double "$WORK/fleet-kill.out" 2 /bin/sleep 600
run_agent fleet sandbox-agent:test-full host "$fleet_config"
wait_healthy fleet "127.0.0.1:$HEALTH_PORT" 60
wait_sessions fleet 2 60
# The sessions' cgroups are below the container's own (the pod's accounting covers them).
running=$(session_cgroups fleet)
[ -n "$running" ] || die "kill: the running sessions have no cgroup below the container's"
log "kill: sessions' cgroups below the container's: $(grep -c . <<<"$running") dirs, e.g. ${running%%$'\n'*}"
docker kill fleet >/dev/null
# runc removes the container's cgroup subtree when the container dies, the session cgroups with it; the
# restarted agent still finds them in its ledger (state dir) and must not trip over their absence.
start=$SECONDS
docker start fleet >/dev/null
wait_healthy fleet "127.0.0.1:$HEALTH_PORT" 60
log "kill: restarted agent healthy in $((SECONDS - start)) s"
wait_outcomes "$WORK/fleet-kill.out" 2 30
[ "$(grep -c '"reason":"agent_restart"' "$WORK/fleet-kill.out")" = 2 ] || { cat "$WORK/fleet-kill.out" >&2; die "kill: the leases were not reported agent_restart"; }
deadline=$((SECONDS + 10))
while [ -n "$(session_cgroups fleet)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
[ -z "$(session_cgroups fleet)" ] || die "kill: session cgroups left after the restart: $(session_cgroups fleet)"
# A few heartbeats more, so that a second report would have arrived.
sleep 2
docker stop -t 60 fleet >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' fleet)" = 0 ] || die "kill: exit code after the final docker stop"
stop_double || die "kill: the double's summary failed"
# The double's summary lines (after the outcome lines): grants and outcome reports per lease.
reports=$(grep -o '"outcome_reports":[0-9]*' "$WORK/fleet-kill.out" | sort | uniq -c | tr '\n' ' ')
[ "$(grep '"summary"' "$WORK/fleet-kill.out" | grep -c '"outcome_reports":1[,}]')" = 2 ] || { cat "$WORK/fleet-kill.out" >&2; die "kill: each lease not reported exactly once ($reports)"; }
docker rm fleet >/dev/null
left=$(find /sys/fs/cgroup/*/"$ENGINE_CGROUP_PARENT" /sys/fs/cgroup/"$ENGINE_CGROUP_PARENT" -mindepth 1 -type d 2>/dev/null | grep -v /buildkit)
[ -z "$left" ] || die "kill: cgroups left after docker rm: $left"
drop_lock
log "kill: each lease reported once, no cgroup left"
log "passed: image full $((size_full / 1000000)) MB, file-only $((size_file / 1000000)) MB"
