#!/usr/bin/env bash
# Installs every build, test and benchmark dependency of sandbox-agent on Debian 12.
# Idempotent: packages already present are left alone. Run as root.
#   install-deps.sh            everything (build, tests, benchmarks, runtime)
#   install-deps.sh --runtime  only what the installed binaries and the tests run on a target host need: the
#                              binaries are static but for glibc, so this is what sessions and tests execute
#                              (tests/vm builds its guest root with it)
set -euo pipefail

mode=all
case "${1:-}" in
  "") ;;
  --runtime) mode=runtime ;;
  *) echo "install-deps.sh: unknown argument '$1' (expected nothing or --runtime)" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (it calls apt-get)" >&2
  exit 1
fi

# What the binaries and the tests run at runtime (also part of the full set).
runtime_packages=(
  # the shared libraries the binaries link (everything else is linked statically): gRPC's RE2, the daemon's
  # logging, libpng for sandboxctl's screenshots, and the C++ runtime
  libre2-9 libspdlog1.10 libfmt9 libpng16-16 zlib1g libstdc++6
  # tests and benchmarks run these: setpriv (util-linux), bubblewrap as the benchmark anchor, procps, iproute2
  util-linux bubblewrap procps iproute2 python3
  # desktop sessions: the virtual display (xvfb brings xkbcomp and the XKB data), a window manager, the core
  # fonts twm and xterm draw with, a terminal to run in it, x11vnc for live viewers
  xvfb twm xfonts-base xterm x11vnc
  # browser sessions: Debian's Chromium (policies/browser.textproto; the browser policy test runs it)
  chromium
  # tests/vm's in-guest checks: strace shows the agent's clone3 flags (CLONE_INTO_CGROUP); dbus lets logind
  # start a lingering user's systemd manager (rootless mode under a delegated cgroup)
  strace dbus
)

packages=(
  "${runtime_packages[@]}"
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git
  # gRPC + Protocol Buffers (protobuf-compiler-grpc is required by gRPC's CMake config)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  # the jail
  libseccomp-dev libcap-dev
  # Boost.Process (header-only in 1.74; it links Boost.Filesystem)
  libboost-dev libboost-filesystem-dev
  # logging, argument parsing, JSON
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  # tests
  libgtest-dev libgmock-dev
  # tests/e2e/reflection_client.py: an independent gRPC client (server reflection, dynamic messages); the
  # daemon's reflection service itself is libgrpc++-dev's static libgrpc++_reflection
  python3-grpcio python3-protobuf
  # tests/fuzz (libFuzzer targets, build-fuzz): clang, and libclang-rt-14-dev, which ships libFuzzer
  # (libclang_rt.fuzzer-x86_64.a) and clang's ASan/UBSan runtimes. tests/sanitize uses gcc's (libasan8 and
  # libubsan1 come with build-essential's gcc-12).
  clang libclang-rt-14-dev
  # deploy/tsa-check.sh: clang 16's thread-safety analysis over the product's sources (clang 14 cannot parse
  # the jail code's C++20)
  clang-16
  # what sandbox-init's X driver links statically: xcb with XTEST (+ libXau, libXdmcp), the keysym names
  # (x11proto-dev), libpng
  libxcb1-dev libxcb-xtest0-dev libxau-dev libxdmcp-dev x11proto-dev libpng-dev zlib1g-dev
  # desktop_bench's anchors on a host Xvfb: xwd (x11-apps) for screenshots, xdotool for input
  x11-apps xdotool
  # tests/deploy (deploy_validate): yamllint for the Kubernetes manifests, python3-yaml for their structural
  # checks, systemd for systemd-analyze (fresh Debian container images do not have it)
  yamllint python3-yaml systemd
  # tests/container (the image under a real engine): Debian's engine (dockerd, containerd, runc and its own
  # docker client), debootstrap for the imported base image, curl (HTTP/2) for the gRPC health probe and
  # nsenter (util-linux, above) to probe from the container's network namespace
  docker.io debootstrap curl
  # tests/vm: the guest (Debian's stock kernel, cgroup v2 only, systemd) under QEMU; its root file system is
  # made by debootstrap (above) and mke2fs -d (e2fsprogs)
  qemu-system-x86 e2fsprogs
)
if [ "$mode" = runtime ]; then
  packages=("${runtime_packages[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps.sh: all ${#packages[@]} packages present"
else
  echo "install-deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Test-only npm packages (tests/npm/package-lock.json pins them): the official MCP SDK's client (tests/mcp),
# playwright-core and puppeteer-core (tests/cdp; no browser is downloaded). Node 20 or newer is needed (Debian 12's nodejs is 18): it is not a product
# dependency, so it is not installed here; say so plainly instead of failing later in a test.
# Only where the tests are: the Dockerfile's builder runs this script alone, without tests/.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$mode" = all ] && [ ! -f "$here/tests/npm/package.json" ]; then
  echo "install-deps.sh: no tests/npm beside this script; the npm test packages are not needed here"
elif [ "$mode" = all ]; then
  if ! command -v node >/dev/null 2>&1; then
    echo "install-deps.sh: node is not installed; the tests need Node.js 20 or newer (with npm) on PATH" >&2
    exit 1
  fi
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" -lt 20 ]; then
    echo "install-deps.sh: node $(node --version) is too old; the tests need Node.js 20 or newer" >&2
    exit 1
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "install-deps.sh: npm is not installed; the tests need it to install tests/npm" >&2
    exit 1
  fi
  echo "install-deps.sh: npm ci in tests/npm (node $(node --version))"
  (cd "$here/tests/npm" && npm ci --no-audit --no-fund --loglevel=error)
fi
