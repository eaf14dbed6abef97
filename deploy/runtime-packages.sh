#!/bin/sh
# The Debian packages that own the shared libraries the installed binaries load (abseil, protobuf, gRPC and
# OpenSSL are linked statically, see cmake/StaticDeps.cmake; sandbox-init is fully static; what is left is
# e.g. libstdc++, re2, spdlog and fmt). Worked out with ldd and dpkg -S rather than listed by hand, so the
# image's runtime stage follows the build.
#   STAGING=DIR RUNTIME_PACKAGES=FILE sh deploy/runtime-packages.sh
# DIR is a `cmake --install` staging root (DESTDIR); FILE gets one package a line. Run where the binaries
# were built (deploy/Dockerfile's builder stage; tests/container/run.sh on the host for the prebuilt image;
# tests/deploy/validate_deploy.sh on the local build), since ldd and dpkg must see the libraries.
set -eu
staging="${STAGING:-/staging}"
out="${RUNTIME_PACKAGES:-/runtime-packages}"
libs=$(for f in "$staging"/usr/local/bin/* "$staging"/usr/local/libexec/sandbox-agent/*; do
  ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
done | sort -u)
: > "$out"
for lib in $libs; do
  real=$(readlink -f "$lib")
  pkg=""
  # Debian 12 is merged-/usr, but dpkg knows each file under the path its package ships it at.
  for p in "$lib" "$real" "/usr$lib" "/usr$real" "${lib#/usr}" "${real#/usr}"; do
    pkg=$(dpkg -S "$p" 2>/dev/null | grep -v '^diversion' | head -n 1 | cut -d: -f1) && [ -n "$pkg" ] && break
  done
  if [ -z "$pkg" ]; then
    echo "runtime packages: no Debian package owns $lib" >&2
    exit 1
  fi
  echo "$pkg" >> "$out"
done
sort -u -o "$out" "$out"
echo "runtime packages: $(tr '\n' ' ' < "$out")"
