#!/usr/bin/env bash
# Installs every build, test and benchmark dependency of sandbox-agent on Debian 12.
# Idempotent: packages already present are left alone. Run as root.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (it calls apt-get)" >&2
  exit 1
fi

packages=(
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
  # tests/fuzz (libFuzzer targets, build-fuzz): clang, and libclang-rt-14-dev, which ships libFuzzer
  # (libclang_rt.fuzzer-x86_64.a) and clang's ASan/UBSan runtimes. tests/sanitize uses gcc's (libasan8 and
  # libubsan1 come with build-essential's gcc-12).
  clang libclang-rt-14-dev
  # tests and benchmarks run these: setpriv (util-linux), bubblewrap as the benchmark anchor, procps, iproute2
  util-linux bubblewrap procps iproute2 python3
  # desktop sessions: the virtual display (xvfb brings xkbcomp and the XKB data), a window manager, the core
  # fonts twm and xterm draw with, a terminal to run in it, x11vnc for live viewers; and what sandbox-init's
  # X driver links statically: xcb with XTEST (+ libXau, libXdmcp), the keysym names (x11proto-dev), libpng
  xvfb twm xfonts-base xterm x11vnc
  libxcb1-dev libxcb-xtest0-dev libxau-dev libxdmcp-dev x11proto-dev libpng-dev zlib1g-dev
  # desktop_bench's anchors on a host Xvfb: xwd (x11-apps) for screenshots, xdotool for input
  x11-apps xdotool
  # browser sessions: Debian's Chromium (policies/browser.textproto; the browser policy test runs it)
  chromium
  # tests/deploy (deploy_validate): yamllint for the Kubernetes manifests, python3-yaml for their structural
  # checks, systemd for systemd-analyze (fresh Debian container images do not have it)
  yamllint python3-yaml systemd
  # tests/container (the image under a real engine): Debian's engine (dockerd, containerd, runc and its own
  # docker client), debootstrap for the imported base image, curl (HTTP/2) for the gRPC health probe and
  # nsenter (util-linux, above) to probe from the container's network namespace
  docker.io debootstrap curl
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps.sh: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
