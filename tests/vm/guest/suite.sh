#!/bin/bash
# tests/vm's guest side (run at boot by sbx-vm-suite.service): each step prints SBX-VM-PASS or SBX-VM-FAIL
# with its time, the last line is SBX-VM-END status=<failed steps>, and the guest powers off. The report is
# written to a file and sent whole over the second serial port at the end (after SBX-VM-REPORT-BEGIN), where
# tests/vm/run.sh reads it; progress lines go there as they happen.
# NOTE: a file, not the tty as stdout: once, the tests' output on the serial tty stopped part-way (every
# later write lost) while the suite ran on; a tty opened afresh at the end works.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
report=/var/log/sbx-vm-report.log
exec >"$report" 2>&1
progress() { echo "$*"; echo "$*" >/dev/ttyS1 2>/dev/null; }
# shellcheck source=/dev/null
. /opt/sbx-vm/env  # SBX_BUILD: the build directory the test binaries were built in (they name binaries by it)
bin=$SBX_BUILD/bin
progress "SBX-VM-BOOTED uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
systemd-analyze time 2>/dev/null | head -1
suite_start=$(date +%s.%N)
failed=0
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME CMD...: runs CMD with its output in the report, and says how it went.
step() {
  local name=$1 t0 rc
  shift
  t0=$(date +%s.%N)
  progress "SBX-VM-STEP $name"
  "$@"
  rc=$?
  local secs
  secs=$(since "$t0")
  if [ "$rc" -eq 0 ]; then
    progress "SBX-VM-PASS $name (${secs} s)"
  else
    progress "SBX-VM-FAIL $name (exit $rc, ${secs} s)"
    failed=$((failed + 1))
  fi
}

# The suite's own processes go to a leaf, so each agent a test starts may enable controllers for its
# sessions in this unit's (delegated) cgroup (cgroup v2: no processes in a cgroup that has children with
# controllers).
own=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
mkdir -p "$own/suite" && echo $$ >"$own/suite/cgroup.procs"
echo "+memory +pids +cpu" >"$own/cgroup.subtree_control"

check_v2_only() {
  # cgroup2 at /sys/fs/cgroup and no v1 hierarchy at all; the controllers the agent uses are there.
  [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ] || { echo "/sys/fs/cgroup is not cgroup2"; return 1; }
  if grep -q ' cgroup ' /proc/mounts; then echo "a v1 hierarchy is mounted:"; grep ' cgroup ' /proc/mounts; return 1; fi
  local c
  echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
  for c in cpu io memory pids; do grep -qw "$c" /sys/fs/cgroup/cgroup.controllers || { echo "no $c controller"; return 1; }; done
  [ -d /proc/sys/kernel ] && echo "kernel $(uname -r), systemd $(systemctl --version | head -1)"
}

# A gtest binary, in a fresh leaf cgroup of its own: each agent it starts moves its caller's processes into
# a leaf below (PrepareCgroupLayout), and a fresh start keeps those trees shallow and apart.
step_no=0
gtest() {
  local binary=$1
  shift
  step_no=$((step_no + 1))
  mkdir -p "$own/step-$step_no"
  (echo "$BASHPID" >"$own/step-$step_no/cgroup.procs" && exec "$bin/$binary" --gtest_color=no "$@")
}

step "cgroup v2 only, systemd as PID 1" check_v2_only
# The unit of deploy/systemd, the agent under it, sessions under its delegated cgroup, crash recovery,
# draining, rootless mode under the user's manager (tests/vm/vm_guest_test.cc).
step "vm_guest_test" gtest vm_guest_test
# Existing suites that do not need the host's v1 layout. Left out for time under software emulation:
# JailTest.TwoHundredRunsLeaveNothingBehind and HostSeesAnUnprivilegedUidRange (many runs), and the long fleet
# tests (outages, thousand sessions, mTLS, retry timing), and the fleet desktop lease (Xvfb misses the
# agent's 10 s readiness deadline under TCG).
step "cgroup_test" gtest cgroup_test
step "jail_test" gtest jail_test \
  --gtest_filter='-JailTest.TwoHundredRunsLeaveNothingBehind:JailTest.HostSeesAnUnprivilegedUidRange'
step "daemon_test (cgroup recovery, delete, pids limit)" gtest daemon_test \
  --gtest_filter='DaemonRecoveryTest.*:DaemonTest.DeleteRemovesEverything:DaemonTest.AForkBombEndsTheSessionWithPidsLimit'
step "fleet_test (crash, drain, duplicate)" gtest fleet_test \
  --gtest_filter='*AgentKilledWithSessionsRunningReportsEachOnceAfterRestartAndLeavesNothing:*SigtermDrainsTwentyRunningSessionsReportsThemAndExitsZero:*DrainPastItsGraceCancelsTheRestAndReportsThem:*AJournaledOutcomeIsReportedOnceAfterACrashBeforeItsLeaseWasAcked:*DuplicateLeaseRunsOnce'

bench() {
  local out
  out=$(gtest start_latency_bench --runs "${SBX_VM_BENCH_RUNS:-15}" 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  echo "$out" | sed -n 's/^  ratio (ours \/ bwrap) \(.*\)$/SBX-VM-RATIO \1/p' | head -1
}
step "start latency, ours against bubblewrap" bench

# No session cgroup, jail process or agent is left by any of it.
leftovers() {
  local found
  found=$(find /sys/fs/cgroup -type d -name 'session-*' 2>/dev/null)
  [ -z "$found" ] || { echo "session cgroups left: $found"; return 1; }
  found=$(ps -eo uid=,pid=,args= | awk '$1 >= 1073741824 && $1 != 4294967295')
  [ -z "$found" ] || { echo "jail processes left: $found"; return 1; }
}
step "nothing left behind" leftovers

echo "SBX-VM-END status=$failed suite_s=$(since "$suite_start")"
{ echo SBX-VM-REPORT-BEGIN; cat "$report"; } >/dev/ttyS1
sync
systemctl poweroff --no-block
