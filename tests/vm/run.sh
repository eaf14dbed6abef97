#!/usr/bin/env bash
# The VM suite: the agent where it is deployed. Boots Debian 12's own kernel (linux-image-amd64, 6.1) under
# qemu-system-x86_64 with cgroup v2 alone (systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all) and systemd as
# PID 1, no network device, and runs tests/vm/guest/suite.sh there at boot (tests/vm/guest/sbx-vm-suite.service):
# the systemd unit of deploy/systemd started with systemctl, vm_guest_test against it, rootless mode under the
# user's systemd manager, the cgroup/jail/fleet test binaries and the start-latency benchmark. The guest writes
# its report to its second serial port (a file here) and powers off.
#
#   bash tests/vm/run.sh              (as root, after a build in ./build; SBX_BUILD_DIR names another)
#   bash tests/vm/run.sh --base-only  (only make the cached base root file system)
#
# The root file system (debootstrap bookworm + systemd-sysv + deploy/install-deps.sh --runtime + the kernel) is
# cached under <build>/vm/base-<key>, the key hashing everything that went into it (this script's image part,
# install-deps.sh, the guest's extra packages); a rerun copies only the binaries in and makes the disk image.
# Fails on any failed guest test, or when the guest does not power off within SBX_VM_TIMEOUT seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=$PWD
build=$(cd "${SBX_BUILD_DIR:-build}" && pwd)
timeout_s=${SBX_VM_TIMEOUT:-600}
mirror=${SBX_VM_MIRROR:-http://deb.debian.org/debian}
log() { echo "tests/vm: $*"; }
die() { echo "tests/vm: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, mke2fs -d of a root-owned tree)"
for tool in qemu-system-x86_64 debootstrap mke2fs; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash deploy/install-deps.sh)"
done

# Packages of the guest beyond the project's runtime ones: the kernel (its initramfs is made in the chroot).
guest_extra=(linux-image-amd64 systemd-sysv)
key=$( (sed -n '/^# ---- base image ----$/,/^# ---- end of base image ----$/p' tests/vm/run.sh
        cat deploy/install-deps.sh; echo "${guest_extra[*]} $mirror") | sha256sum | cut -c1-16)
vmdir=$build/vm
base=$vmdir/base-$key
mkdir -p "$vmdir"
total_start=$SECONDS

# ---- base image ----
# The chroot's mounts; undone on every exit.
chroot_mounts=()
umount_chroot() {
  local i
  for ((i = ${#chroot_mounts[@]} - 1; i >= 0; i--)); do umount -l "${chroot_mounts[$i]}" 2>/dev/null || true; done
  chroot_mounts=()
}
build_base() {
  local tmp=$vmdir/base-tmp root
  rm -rf "$tmp" && mkdir -p "$tmp"
  root=$tmp/root
  trap umount_chroot EXIT
  # The host's apt cache serves every package it already holds (install-deps.sh filled it), so a cold build
  # downloads little; what is downloaded lands there too.
  log "debootstrap bookworm (minbase + systemd-sysv) into $root"
  debootstrap --variant=minbase --include=systemd-sysv,ca-certificates --cache-dir=/var/cache/apt/archives \
    bookworm "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 || { tail -30 "$tmp/debootstrap.log"; die "debootstrap"; }
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  mount -t proc proc "$root/proc" && chroot_mounts+=("$root/proc")
  mount --bind /var/cache/apt/archives "$root/var/cache/apt/archives" && chroot_mounts+=("$root/var/cache/apt/archives")
  mkdir -p "$root/tmp/deps" && cp deploy/install-deps.sh "$root/tmp/deps/"
  # No service starts in the chroot; a small initramfs (only the modules this guest needs: virtio disk, ext4).
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
  mkdir -p "$root/etc/initramfs-tools/conf.d"
  echo 'MODULES=list' >"$root/etc/initramfs-tools/conf.d/sbx-vm.conf"
  printf 'virtio_pci\nvirtio_blk\next4\n' >>"$root/etc/initramfs-tools/modules"
  log "install-deps.sh --runtime and ${guest_extra[*]} in the chroot"
  chroot "$root" bash -c "bash /tmp/deps/install-deps.sh --runtime &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${guest_extra[*]}" \
    >"$tmp/apt.log" 2>&1 || { tail -30 "$tmp/apt.log"; die "installing the guest's packages"; }
  umount_chroot
  trap - EXIT
  rm -f "$root/usr/sbin/policy-rc.d"
  rm -rf "$root/tmp/deps" "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  cp "$root"/boot/vmlinuz-* "$tmp/vmlinuz" && cp "$root"/boot/initrd.img-* "$tmp/initrd.img"
  # A smaller image to make on every run: no hardware this guest lacks (sound, GPUs, NICs, USB, ...), no docs.
  local kdir
  kdir=$(echo "$root"/lib/modules/*)
  rm -rf "$kdir/kernel/sound" "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  for d in gpu net media infiniband staging usb hid input iio bluetooth isdn nfc thunderbolt hwmon mfd video \
    scsi target misc platform mmc; do
    rm -rf "$kdir/kernel/drivers/$d"
  done
  chroot "$root" depmod "$(basename "$kdir")"
  # The guest: root on the virtio disk, no login prompts, nothing periodic to compete with the suite.
  echo "/dev/vda / ext4 rw,relatime 0 1" >"$root/etc/fstab"
  echo sbx-vm >"$root/etc/hostname"
  for unit in getty@tty1.service serial-getty@ttyS0.service serial-getty@ttyS1.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-timesyncd.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
  done
  # The rootless user, with lingering so logind starts its systemd manager at boot.
  chroot "$root" useradd --create-home --uid 1000 --shell /bin/bash sbxuser
  mkdir -p "$root/var/lib/systemd/linger" && touch "$root/var/lib/systemd/linger/sbxuser"
  rm -rf "$base" && mv "$tmp" "$base"
}
# ---- end of base image ----

if [ -f "$base/root/etc/hostname" ] && [ -f "$base/vmlinuz" ]; then
  log "base root file system cached: $base"
else
  # Older bases are not kept: each is ~1 GB.
  rm -rf "$vmdir"/base-*
  start=$SECONDS
  build_base
  log "base root file system built in $((SECONDS - start)) s"
fi

[ "${1:-}" = --base-only ] && exit 0
[ -x "$build/bin/sandbox-agent" ] && [ -x "$build/bin/vm_guest_test" ] ||
  die "no build in $build (cmake -S . -B build -G Ninja && ninja -C build)"

# ---- this build's binaries on a copy of the base (hard links: the base is never written) ----
start=$SECONDS
stage=$vmdir/stage
rm -rf "$stage"
cp -al "$base/root" "$stage"
# The product as installed: cmake --install (binaries, policies), the systemd unit and config of deploy/.
DESTDIR=$stage cmake --install "$build" --prefix /usr/local --strip >/dev/null
install -D -m 0644 deploy/agent.textproto "$stage/etc/sandbox-agent/agent.textproto"
install -m 0644 deploy/systemd/sandbox-agent.service "$stage/etc/systemd/system/sandbox-agent.service"
# The test binaries at the build path they were built with (they name the agent, init and probes by it).
# Only what the guest runs, without debug info (the image is made from them on every run).
guest_bins=(bin/sandbox-agent bin/sandbox-agentd bin/sandbox-init bin/sandboxctl testcases/probe
            testcases/no_clone3 testcases/xprobe bin/vm_guest_test bin/cgroup_test bin/jail_test bin/daemon_test
            bin/fleet_test bin/start_latency_bench)
mkdir -p "$stage$build/bin" "$stage$build/testcases"
for b in "${guest_bins[@]}"; do
  [ -x "$build/$b" ] || die "$build/$b is missing (build it: ninja -C $build $(basename "$b"))"
  strip --strip-debug -o "$stage$build/$b" "$build/$b"
done
# Policies the tests read from the source tree (the desktop policy, for one).
mkdir -p "$stage$src"
cp -r "$src/policies" "$stage$src/"
# The suite and its unit.
# SBX_VM_GUEST_SCRIPT: another script in its place, to look into something in the guest by hand.
install -D -m 0755 "${SBX_VM_GUEST_SCRIPT:-tests/vm/guest/suite.sh}" "$stage/opt/sbx-vm/suite.sh"
install -m 0644 tests/vm/guest/sbx-vm-suite.service "$stage/etc/systemd/system/sbx-vm-suite.service"
ln -sf /etc/systemd/system/sbx-vm-suite.service "$stage/etc/systemd/system/multi-user.target.wants/sbx-vm-suite.service"
if [ -w /dev/kvm ]; then accel_name=kvm; else accel_name=tcg; fi
printf 'SBX_BUILD=%s\nSBX_SRC=%s\nexport SBX_VM_ACCEL=%s\n' "$build" "$src" "$accel_name" >"$stage/opt/sbx-vm/env"
disk=$vmdir/disk.img
rm -f "$disk"
size_mb=$(( $(du -sm "$stage" | cut -f1) + 2048 ))
mke2fs -q -t ext4 -d "$stage" -L sbx-vm "$disk" "${size_mb}M" || die "mke2fs -d"
rm -rf "$stage"
log "disk image (${size_mb} MB, sparse) made in $((SECONDS - start)) s"

# ---- boot ----
if [ -w /dev/kvm ]; then accel=(-accel kvm -cpu host); accel_name=kvm; else accel=(-accel tcg,thread=multi -cpu max); accel_name=tcg; fi
console=$vmdir/console.log
report=$vmdir/report.log
rm -f "$console" "$report"
log "booting the guest ($accel_name, 2 CPUs, 4 GiB, no network device); timeout ${timeout_s} s"
boot_start=$SECONDS
set +e
nice timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 "${accel[@]}" -smp 2 -m 4G -nodefaults -nic none \
  -display none -no-reboot \
  -kernel "$base/vmlinuz" -initrd "$base/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all panic=-1 systemd.show_status=0" \
  -drive "file=$disk,format=raw,if=virtio,cache=unsafe" \
  -serial "file:$console" -serial "file:$report"
qemu_rc=$?
set -e
guest_s=$((SECONDS - boot_start))
rm -f "$disk"

sed -i 's/\r$//' "$report" 2>/dev/null || true
# The whole report follows SBX-VM-REPORT-BEGIN; before it, the progress lines (all there is if the guest hung).
if grep -q '^SBX-VM-REPORT-BEGIN$' "$report" 2>/dev/null; then
  sed -i '1,/^SBX-VM-REPORT-BEGIN$/d' "$report"
fi
cat "$report" 2>/dev/null || true
if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
  tail -40 "$console" || true
  die "the guest did not power off within ${timeout_s} s (console: $console)"
fi
[ "$qemu_rc" -eq 0 ] || { tail -40 "$console" || true; die "qemu exited with $qemu_rc"; }
grep -q '^SBX-VM-END status=0 ' "$report" || {
  grep -q '^SBX-VM-END' "$report" || tail -40 "$console"
  die "guest suite failed (report: $report, console: $console)"
}
boot=$(sed -n 's/^SBX-VM-BOOTED uptime=\([0-9.]*\).*/\1/p' "$report")
suite=$(sed -n 's/^SBX-VM-END status=0 suite_s=\([0-9.]*\).*/\1/p' "$report" | head -1)
ratio=$(sed -n 's/^SBX-VM-RATIO //p' "$report" | head -1)
log "start latency in the guest, ours / bubblewrap: ${ratio:-?} (accelerator $accel_name)"
log "passed: accelerator $accel_name, guest boot ${boot} s (kernel to the suite's start), guest suite ${suite:-?} s, qemu ${guest_s} s, total $((SECONDS - total_start)) s"
