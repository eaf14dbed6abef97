# Sourced by tests/container/run.sh: a private Docker engine (Debian's docker.io: dockerd, containerd, runc)
# and the base image imported from a debootstrap root filesystem. Needs ROOT, WORK (under the build dir) and
# the functions log and die.

# Debian's own client, by full path: another `docker` first on PATH may be a different client that wants
# components (buildx, ...) the engine package does not have.
DOCKER_BIN=/usr/bin/docker
DOCKERD_BIN=/usr/sbin/dockerd
# Exec root, pidfile and socket outside the build dir: containerd's socket paths must stay short (108 bytes).
ENGINE_RUN=/run/sbx-docker-test
ENGINE_SOCK=$ENGINE_RUN/docker.sock
# Every container's cgroup is below this one, in each hierarchy, so the test can check that nothing is left.
ENGINE_CGROUP_PARENT=sbx-docker-test
ENGINE_PID=""

docker() { "$DOCKER_BIN" -H "unix://$ENGINE_SOCK" "$@"; }

engine_start() {
  [ -x "$DOCKERD_BIN" ] && [ -x "$DOCKER_BIN" ] || die "no $DOCKERD_BIN or $DOCKER_BIN: run deploy/install-deps.sh (docker.io)"
  if [ -e "$ENGINE_RUN/dockerd.pid" ] && kill -0 "$(cat "$ENGINE_RUN/dockerd.pid")" 2>/dev/null; then
    die "a test engine already runs (pid $(cat "$ENGINE_RUN/dockerd.pid"), $ENGINE_RUN): another run of this test?"
  fi
  mkdir -p "$ENGINE_RUN" "$WORK/data-root"
  # Its own (empty) config file: not the host's /etc/docker/daemon.json.
  echo '{}' > "$WORK/daemon.json"
  # The data root (images and build cache) is under the build dir, so a rerun reuses the base and the
  # image layers. No bridge and no iptables: containers get --network none, or the host's for the fleet
  # tests (the control-plane double listens on the host's loopback).
  "$DOCKERD_BIN" --data-root "$WORK/data-root" --exec-root "$ENGINE_RUN/exec" --pidfile "$ENGINE_RUN/dockerd.pid" \
    -H "unix://$ENGINE_SOCK" --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --cgroup-parent "$ENGINE_CGROUP_PARENT" --config-file "$WORK/daemon.json" --log-level warn \
    > "$WORK/dockerd.log" 2>&1 &
  ENGINE_PID=$!
  local deadline=$((SECONDS + 60))
  until docker version >/dev/null 2>&1; do
    kill -0 "$ENGINE_PID" 2>/dev/null || { tail -n 30 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$WORK/dockerd.log" >&2; die "dockerd did not answer in 60 s"; }
    sleep 0.2
  done
  log "dockerd $(docker version -f '{{.Server.Version}}') up (pid $ENGINE_PID, data root $WORK/data-root)"
}

# Removes every container, stops dockerd and checks that it left no process, mount or cgroup.
engine_stop() {
  [ -n "$ENGINE_PID" ] || return 0
  local ids
  ids=$(docker ps -aq 2>/dev/null)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1
  kill -TERM "$ENGINE_PID" 2>/dev/null
  local deadline=$((SECONDS + 30))
  while kill -0 "$ENGINE_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  if kill -0 "$ENGINE_PID" 2>/dev/null; then
    echo "container test: dockerd did not stop in 30 s; killing it" >&2
    kill -KILL "$ENGINE_PID" 2>/dev/null
  fi
  wait "$ENGINE_PID" 2>/dev/null
  ENGINE_PID=""
  local left=0
  # containerd and its shims are dockerd's children; any left would still name the exec root.
  if pgrep -f -- "$ENGINE_RUN/" >/dev/null; then
    echo "container test: processes left behind: $(pgrep -a -f -- "$ENGINE_RUN/" | tr '\n' ';')" >&2
    left=1
  fi
  # dockerd leaves its network namespace file mounted (exec root's netns/default), and BuildKit empty
  # cgroups: what the engine leaves by design is removed here. A mount that does not go, or a cgroup with
  # a process in it, is a failure.
  local m
  for m in $(awk -v a="$ENGINE_RUN" -v b="$WORK/data-root" 'index($5, a) == 1 || index($5, b) == 1 { print $5 }' \
               /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || { echo "container test: cannot unmount $m" >&2; left=1; }
  done
  local cg d
  for cg in /sys/fs/cgroup/*/"$ENGINE_CGROUP_PARENT" /sys/fs/cgroup/"$ENGINE_CGROUP_PARENT"; do
    [ -d "$cg" ] || continue
    for d in $(find "$cg" -depth -type d 2>/dev/null); do
      if [ -s "$d/cgroup.procs" ]; then
        echo "container test: processes left in cgroup $d: $(tr '\n' ' ' < "$d/cgroup.procs")" >&2
        left=1
      fi
      rmdir "$d" 2>/dev/null
    done
  done
  rm -rf "$ENGINE_RUN"
  return "$left"
}

# The base image: `docker import` of a debootstrap minbase bookworm (no registry is reachable), tagged as
# every FROM of deploy/Dockerfile (debian:12 and debian:12-slim are the same image here). The root fs
# tarball is cached under the build dir, keyed on what went into it.
base_image() {
  local mirror suite=bookworm variant=minbase key tarball
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  key=$(printf '%s\n' "$suite" "$variant" "$mirror" "$(dpkg-query -W -f '${Version}' debootstrap)" v1 | sha256sum | cut -c1-16)
  tarball="$WORK/cache/debian-$suite-$variant-$key.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || die "debootstrap not found: run deploy/install-deps.sh"
    log "debootstrap $variant $suite from $mirror (cache: $tarball)"
    local rootfs="$WORK/cache/rootfs.tmp"
    rm -rf "$rootfs" "$WORK"/cache/debian-*.tar
    mkdir -p "$WORK/cache"
    debootstrap --variant="$variant" "$suite" "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
      || { tail -n 20 "$WORK/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  local label
  label=$(docker image inspect -f '{{ index .Config.Labels "sbx.base-key" }}' debian:12 2>/dev/null || true)
  if [ "$label" != "$key" ]; then
    log "docker import $tarball as debian:12 and debian:12-slim"
    docker import --change "LABEL sbx.base-key=$key" --change 'CMD ["/bin/bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$tarball" debian:12 >/dev/null \
      || die "docker import failed"
  fi
  docker tag debian:12 debian:12-slim
}

# The images, from the checkout's own host build ($BUILD): its binaries installed (--strip) into
# build/image-staging, the one directory of build/ in the build context, with their runtime package list;
# then deploy/Dockerfile with BINARIES=prebuilt, the full and the file-only variant. BuildKit (it skips the
# builder stage) with the host's network for the RUN steps' apt-get (the engine has no bridge).
build_images() {
  local staging="$ROOT/build/image-staging"
  rm -rf "$staging"
  DESTDIR="$staging/staging" cmake --install "$BUILD" --strip > "$WORK/install.log" 2>&1 \
    || { cat "$WORK/install.log" >&2; die "cmake --install $BUILD failed"; }
  STAGING="$staging/staging" RUNTIME_PACKAGES="$staging/runtime-packages" sh "$ROOT/deploy/runtime-packages.sh" \
    > "$WORK/runtime-packages.log" 2>&1 || { cat "$WORK/runtime-packages.log" >&2; die "deploy/runtime-packages.sh failed"; }
  local variant start
  for variant in full file; do
    start=$SECONDS
    DOCKER_BUILDKIT=1 docker build --network host --progress plain -f "$ROOT/deploy/Dockerfile" \
      --build-arg BINARIES=prebuilt --build-arg VARIANT="$variant" -t "sandbox-agent:test-$variant" "$ROOT" \
      > "$WORK/build-$variant.log" 2>&1 || { tail -n 40 "$WORK/build-$variant.log" >&2; die "docker build ($variant) failed"; }
    log "image sandbox-agent:test-$variant built in $((SECONDS - start)) s"
  done
}
