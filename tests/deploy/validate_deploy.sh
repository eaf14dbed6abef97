#!/usr/bin/env bash
# Validates deploy/ without a cluster or a Docker daemon (ctest: deploy_validate):
#   1. yamllint --strict on every Kubernetes manifest (deploy/k8s/.yamllint);
#   2. the agent configs (deploy/agent.textproto, deploy/fleet.textproto, the ConfigMap's copy) parse against
#      proto/duvo/sandbox/v1/agent_config.proto (protoc --encode), and the manifests, the systemd unit and the
#      Dockerfile agree with them and with each other (check_deploy.py: probes on the health port, grace
#      period > drain grace, token and TLS files mounted from Secrets, no host namespaces, COPY sources, ...);
#   3. systemd-analyze verify on the unit, and its `systemd-analyze security` exposure score (printed);
#   4. the Dockerfile's runtime-package script (deploy/runtime-packages.sh) on the built binaries, when given;
#   5. kubectl kustomize deploy/k8s, when kubectl is installed;
#   6. docker: a lint of the Dockerfile (docker build --check) when a Docker daemon answers, and the whole
#      image build when SBX_DEPLOY_DOCKER_BUILD=1. Skipped, saying so, when there is no daemon. (The image
#      is built and run under a real engine by tests/container/run.sh.)
# Usage: validate_deploy.sh [--bin-dir DIR]   (DIR: where sandbox-agent, sandbox-agentd, sandbox-init and
#                                              sandboxctl were built, e.g. build/bin)
# Exits non-zero on any problem, each reported as "<file>: <what is wrong>".
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir)
      # Absolute, for the symlinks below; a directory not built yet just means no binaries.
      bin_dir=$(cd "$2" 2>/dev/null && pwd) || { echo "note: --bin-dir $2 does not exist (not built yet?)"; bin_dir=""; }
      shift 2 ;;
    *) echo "validate_deploy.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
step() { echo "--- $*"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The tools (deploy/install-deps.sh installs them). A python3 that can import yaml: Debian's python3-yaml
# belongs to /usr/bin/python3, which another python3 first on PATH would not see.
python=""
for p in /usr/bin/python3 python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import yaml' 2>/dev/null; then python="$p"; break; fi
done
[ -n "$python" ] || fail "python3 with the yaml module (python3-yaml) not found: run deploy/install-deps.sh"
for tool in yamllint protoc systemd-analyze; do
  command -v "$tool" >/dev/null || fail "$tool not found: run deploy/install-deps.sh"
done

step "yamllint --strict deploy/k8s"
if command -v yamllint >/dev/null; then
  if ! out=$(yamllint --strict -f parsable -c "$root/deploy/k8s/.yamllint" "$root"/deploy/k8s/*.yaml 2>&1); then
    fail "yamllint:"; echo "${out//$root\//}"
  fi
fi

step "configs, manifests, unit and Dockerfile against each other (check_deploy.py)"
if [ -n "$python" ] && command -v protoc >/dev/null; then
  if ! out=$("$python" "$root/tests/deploy/check_deploy.py" "$root" 2>&1); then
    while IFS= read -r line; do fail "$line"; done <<<"$out"
  fi
fi

step "systemd-analyze verify deploy/systemd/sandbox-agent.service"
if command -v systemd-analyze >/dev/null; then
  # verify needs ExecStart's binary to exist: use the installed one, else the build's, else a stand-in
  # (then only the unit's syntax and directives are verified, not the binary).
  unit="$root/deploy/systemd/sandbox-agent.service"
  agent=/usr/local/bin/sandbox-agent
  if [ ! -x "$agent" ]; then
    if [ -n "$bin_dir" ] && [ -x "$bin_dir/sandbox-agent" ]; then
      agent="$bin_dir/sandbox-agent"
    else
      agent=/bin/true
      echo "note: no sandbox-agent installed or given with --bin-dir; verifying with /bin/true as ExecStart"
    fi
  fi
  mkdir -p "$tmp/unit"
  sed "s|^ExecStart=/usr/local/bin/sandbox-agent |ExecStart=$agent |" "$unit" > "$tmp/unit/sandbox-agent.service"
  # verify prints nothing about a clean unit: any line naming it is a warning or an error. Lines about other
  # units it loads (the host's own) are shown but are not ours to fail on.
  out=$(systemd-analyze verify "$tmp/unit/sandbox-agent.service" 2>&1); rc=$?
  out=${out//$tmp\/unit\//}
  if [ "$rc" -ne 0 ] || grep -q 'sandbox-agent' <<<"$out"; then
    fail "deploy/systemd/sandbox-agent.service: systemd-analyze verify (exit $rc):"; echo "$out"
  elif [ -n "$out" ]; then
    echo "note: systemd-analyze verify said, about other units:"; echo "$out"
  fi
  if score=$(systemd-analyze security --offline=true --no-pager "$tmp/unit/sandbox-agent.service" 2>/dev/null \
             | grep -o 'Overall exposure level.*'); then
    echo "systemd-analyze security: $score (root, cgroups and namespaces are the agent's job; see the unit's comments)"
  else
    echo "note: systemd-analyze security --offline is not available here; no exposure score"
  fi
fi

step "deploy/runtime-packages.sh (the Dockerfile's runtime package list) on the built binaries"
if [ -n "$bin_dir" ] && [ -x "$bin_dir/sandbox-agentd" ]; then
  staging="$tmp/staging"
  mkdir -p "$staging/usr/local/bin" "$staging/usr/local/libexec/sandbox-agent"
  for b in sandbox-agent sandboxctl; do [ -e "$bin_dir/$b" ] && ln -s "$bin_dir/$b" "$staging/usr/local/bin/$b"; done
  for b in sandbox-agentd sandbox-init; do
    [ -e "$bin_dir/$b" ] && ln -s "$bin_dir/$b" "$staging/usr/local/libexec/sandbox-agent/$b"
  done
  if ! STAGING="$staging" RUNTIME_PACKAGES="$tmp/runtime-packages" sh -eu "$root/deploy/runtime-packages.sh"; then
    fail "deploy/runtime-packages.sh failed on the binaries in $bin_dir"
  elif ! grep -qx 'libc6' "$tmp/runtime-packages"; then
    fail "deploy/runtime-packages.sh did not find libc6 among the binaries' libraries"
  fi
else
  echo "skipped: no --bin-dir with the built binaries"
fi

step "kubectl kustomize deploy/k8s"
if command -v kubectl >/dev/null; then
  if ! out=$(kubectl kustomize "$root/deploy/k8s" 2>&1); then
    fail "deploy/k8s/kustomization.yaml: kubectl kustomize failed:"; echo "$out"
  fi
else
  echo "skipped: kubectl is not installed (the kustomization's files are checked by check_deploy.py)"
fi

step "docker"
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  if docker build --help 2>/dev/null | grep -q -- '--check'; then
    docker build --check -f "$root/deploy/Dockerfile" "$root" || fail "deploy/Dockerfile: docker build --check"
  else
    echo "skipped: this docker has no 'build --check'"
  fi
  if [ "${SBX_DEPLOY_DOCKER_BUILD:-0}" = 1 ]; then
    docker build -f "$root/deploy/Dockerfile" -t sandbox-agent:validate "$root" || fail "deploy/Dockerfile: docker build"
  else
    echo "skipped: the image build (set SBX_DEPLOY_DOCKER_BUILD=1 to build it)"
  fi
else
  echo "skipped: no Docker daemon answers here (docker info failed), so the Dockerfile was checked statically only"
fi

if [ "$failures" -ne 0 ]; then
  echo "validate_deploy.sh: $failures problem(s)"
  exit 1
fi
echo "validate_deploy.sh: deploy/ is consistent"
