#include "sandbox/policy/policy_loader.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "duvo/sandbox/v1/policy.pb.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "sandbox/policy/policy.h"
#include "sandbox/policy/policy_builder.h"
#include "sandbox/seccomp_program.h"
#include "tests/unit/status_matchers.h"

namespace sbx::sandbox {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::absl::StatusCode;
using ::sbx::testing::IsOk;
using ::sbx::testing::StatusIs;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// Every field of a spec, one per line: equal strings mean equal specs, and a diff shows what differs.
std::string SpecToString(const PolicySpec& spec) {
  std::string out = absl::StrCat("name=", spec.name, "\nns=", spec.new_ipc_ns, spec.new_uts_ns,
                                 spec.new_cgroup_ns, "\nids=", spec.uid, ":", spec.gid, "\n");
  for (const MountSpec& mount : spec.mounts) {
    if (const auto* m = std::get_if<BindMount>(&mount)) {
      absl::StrAppend(&out, "bind ", m->src, " ", m->dst, " w=", m->writable, " opt=", m->optional, "\n");
    } else if (const auto* m = std::get_if<TmpfsMount>(&mount)) {
      absl::StrAppend(&out, "tmpfs ", m->dst, " ", m->size_bytes, " ", m->mode, "\n");
    } else if (const auto* m = std::get_if<FileMount>(&mount)) {
      absl::StrAppend(&out, "file ", m->dst, " ", m->mode, " [", m->contents, "]\n");
    } else if (const auto* m = std::get_if<SymlinkMount>(&mount)) {
      absl::StrAppend(&out, "symlink ", m->dst, " -> ", m->target, "\n");
    }
  }
  const Limits& l = spec.limits;
  absl::StrAppend(&out, "limits ", l.memory_max_bytes, " ", l.pids_max, " ", l.cpu_millicores, " ",
                  l.wall_time_limit_ms, " ", l.open_files_max, " ", l.file_size_max_bytes, " ",
                  l.output_max_bytes, " ", l.kill_on_pids_limit, "\n");
  absl::StrAppend(&out, "seccomp ", static_cast<int>(spec.seccomp.default_action), " ",
                  spec.seccomp.default_errno, "\n");
  for (const SeccompRule& rule : spec.seccomp.rules) {
    absl::StrAppend(&out, "  ", rule.syscall, " ", static_cast<int>(rule.action), " ", rule.errno_value);
    for (const SyscallArgCondition& arg : rule.args) {
      absl::StrAppend(&out, " [", arg.index, " ", static_cast<int>(arg.op), " ", arg.value, " ", arg.mask,
                      "]");
    }
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppend(&out, "network ", static_cast<int>(spec.network), "\npassthrough ",
                  absl::StrJoin(spec.env_passthrough, ","), "\n");
  for (const EnvVar& var : spec.env) absl::StrAppend(&out, "env ", var.name, "=", var.value, "\n");
  absl::StrAppend(&out, "hostname ", spec.hostname, "\nworkdir ", spec.workdir, "\n");
  return out;
}

const SeccompRule* FindRule(const Policy& policy, const std::string& syscall) {
  for (const SeccompRule& rule : policy.seccomp().rules) {
    if (rule.syscall == syscall) return &rule;
  }
  return nullptr;
}

template <typename T>
const T* FindMount(const Policy& policy, const std::string& dst) {
  for (const MountSpec& mount : policy.mounts()) {
    const T* m = std::get_if<T>(&mount);
    if (m != nullptr && m->dst == dst) return m;
  }
  return nullptr;
}

// A policy like one an operator writes for a stricter kind: deny-by-default seccomp, egress networking,
// a writable data bind.
constexpr char kRealisticPolicy[] = R"pb(
  name: "strict"
  namespaces { ipc: true uts: true cgroup: false }
  ids { uid: 2000 gid: 2001 }
  mounts { bind { src: "/usr" dst: "/usr" } }
  mounts { bind { src: "/srv/data" dst: "/data" writable: true optional: true } }
  mounts { symlink { dst: "/bin" target: "usr/bin" } }
  mounts {
    file {
      dst: "/etc/passwd"
      contents: "root:x:0:0::/:/bin/false\n"
                "app:x:2000:2001::/data:/bin/sh\n"
    }
  }
  mounts { tmpfs { dst: "/tmp" size_bytes: 16777216 mode: 01777 } }
  limits {
    memory_max_bytes: 268435456
    pids_max: 64
    cpu_millicores: 500
    wall_time_limit_ms: 30000
    open_files_max: 256
    file_size_max_bytes: 1048576
    output_max_bytes: 1048576
    kill_on_pids_limit: false
  }
  seccomp {
    default_action: KILL
    rules {
      syscalls: [ "read", "write", "exit_group" ]
      action: ALLOW
    }
    rules { syscalls: "openat" action: LOG }
    rules {
      syscalls: "socket"
      action: ERRNO
      errno_value: 97
      args { index: 0 op: NE value: 1 }
    }
    rules {
      syscalls: "ioctl"
      action: ERRNO
      args { index: 1 op: MASKED_EQ value: 0x5412 mask: 0xffffffff }
    }
  }
  network { mode: EGRESS }
  env {
    passthrough: [ "TERM", "TZ" ]
    set { name: "PATH" value: "/usr/bin:/bin" }
    set { name: "EMPTY" value: "" }
  }
  hostname: "strict-box"
  workdir: "/data"
)pb";

// --- The built-in default ---

TEST(DefaultFilePolicyTest, ParsesWithTheExpectedLimits) {
  ASSERT_OK_AND_ASSIGN(Policy policy, DefaultFilePolicy());
  EXPECT_EQ(policy.name(), "file");
  const Limits& limits = policy.limits();
  EXPECT_EQ(limits.memory_max_bytes, 512 * kMiB);
  EXPECT_EQ(limits.pids_max, 256u);
  EXPECT_EQ(limits.cpu_millicores, 1000u);
  EXPECT_EQ(limits.wall_time_limit_ms, 10u * 60 * 1000);
  EXPECT_EQ(limits.open_files_max, 1024u);
  EXPECT_EQ(limits.file_size_max_bytes, kGiB);
  EXPECT_EQ(limits.output_max_bytes, 64 * kMiB);
  EXPECT_TRUE(limits.kill_on_pids_limit);
}

TEST(DefaultFilePolicyTest, HasTheExpectedFilesystem) {
  ASSERT_OK_AND_ASSIGN(Policy policy, DefaultFilePolicy());
  const auto* usr = FindMount<BindMount>(policy, "/usr");
  ASSERT_NE(usr, nullptr);
  EXPECT_EQ(usr->src, "/usr");
  EXPECT_FALSE(usr->writable);
  EXPECT_FALSE(usr->optional);
  for (const auto& [dst, target] : std::vector<std::pair<std::string, std::string>>{
           {"/bin", "usr/bin"}, {"/sbin", "usr/sbin"}, {"/lib", "usr/lib"}, {"/lib64", "usr/lib64"}}) {
    const auto* link = FindMount<SymlinkMount>(policy, dst);
    ASSERT_NE(link, nullptr) << dst;
    EXPECT_EQ(link->target, target);
  }
  for (const char* etc : {"/etc/alternatives", "/etc/ssl", "/etc/ca-certificates", "/etc/ld.so.cache",
                          "/etc/localtime", "/etc/mime.types"}) {
    const auto* bind = FindMount<BindMount>(policy, etc);
    ASSERT_NE(bind, nullptr) << etc;
    EXPECT_FALSE(bind->writable) << etc;
    EXPECT_TRUE(bind->optional) << etc;
  }
  for (const auto& mount : policy.mounts()) {
    if (const auto* bind = std::get_if<BindMount>(&mount)) {
      EXPECT_FALSE(bind->writable) << bind->dst;
    }
  }
  const auto* passwd = FindMount<FileMount>(policy, "/etc/passwd");
  ASSERT_NE(passwd, nullptr);
  EXPECT_NE(passwd->contents.find("sandbox:x:1000:1000:sandbox:/workspace:"), std::string::npos);
  EXPECT_NE(passwd->contents.find("root:x:0:0:"), std::string::npos);
  for (const char* file :
       {"/etc/group", "/etc/hosts", "/etc/hostname", "/etc/nsswitch.conf", "/etc/resolv.conf"}) {
    EXPECT_NE(FindMount<FileMount>(policy, file), nullptr) << file;
  }
  EXPECT_NE(FindMount<FileMount>(policy, "/etc/hosts")->contents.find("localhost"), std::string::npos);

  const auto* tmp = FindMount<TmpfsMount>(policy, "/tmp");
  ASSERT_NE(tmp, nullptr);
  EXPECT_EQ(tmp->size_bytes, 256 * kMiB);
  EXPECT_EQ(tmp->mode, 01777u);  // written in octal in the textproto
  const auto* workspace = FindMount<TmpfsMount>(policy, "/workspace");
  ASSERT_NE(workspace, nullptr);
  EXPECT_EQ(workspace->size_bytes, kGiB);
}

TEST(DefaultFilePolicyTest, HasTheExpectedIdentityAndEnvironment) {
  ASSERT_OK_AND_ASSIGN(Policy policy, DefaultFilePolicy());
  const PolicySpec& spec = policy.spec();
  EXPECT_EQ(spec.uid, 1000u);
  EXPECT_EQ(spec.gid, 1000u);
  EXPECT_EQ(spec.hostname, "sandbox");
  EXPECT_EQ(spec.workdir, "/workspace");
  EXPECT_EQ(spec.network, NetworkMode::kNone);
  EXPECT_EQ(spec.env_passthrough, std::vector<std::string>{"TERM"});
  std::set<std::string> env;
  for (const EnvVar& var : spec.env) env.insert(absl::StrCat(var.name, "=", var.value));
  EXPECT_EQ(env, (std::set<std::string>{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/workspace",
                                        "USER=sandbox", "LANG=C.UTF-8"}));
}

TEST(DefaultFilePolicyTest, DeniesDangerousSyscallsWithEperm) {
  ASSERT_OK_AND_ASSIGN(Policy policy, DefaultFilePolicy());
  EXPECT_EQ(policy.seccomp().default_action, SeccompAction::kAllow);
  for (const char* syscall : {"mount",
                              "umount2",
                              "pivot_root",
                              "unshare",
                              "setns",
                              "ptrace",
                              "process_vm_readv",
                              "process_vm_writev",
                              "keyctl",
                              "add_key",
                              "request_key",
                              "bpf",
                              "perf_event_open",
                              "userfaultfd",
                              "kexec_load",
                              "kexec_file_load",
                              "init_module",
                              "finit_module",
                              "delete_module",
                              "open_by_handle_at",
                              "name_to_handle_at",
                              "reboot",
                              "swapon",
                              "swapoff",
                              "settimeofday",
                              "clock_settime",
                              "clock_adjtime",
                              "adjtimex",
                              "modify_ldt",
                              "fanotify_init",
                              "memfd_secret",
                              "acct",
                              "quotactl",
                              "lookup_dcookie",
                              "io_uring_setup",
                              "io_uring_enter",
                              "io_uring_register",
                              "fsopen",
                              "fsmount",
                              "fsconfig",
                              "move_mount",
                              "open_tree",
                              "fspick",
                              "mount_setattr"}) {
    SCOPED_TRACE(syscall);
    const SeccompRule* rule = FindRule(policy, syscall);
    ASSERT_NE(rule, nullptr);
    EXPECT_EQ(rule->action, SeccompAction::kErrno);
    EXPECT_EQ(rule->errno_value, 1);  // EPERM
    EXPECT_TRUE(rule->args.empty());
  }
  EXPECT_EQ(FindRule(policy, "execve"), nullptr);
}

// Docker's default profile allows personality() only with these values; the default policies refuse the
// rest (one rule: "argument 0 is none of them").
TEST(DefaultFilePolicyTest, PersonalityOnlyWithDockersValues) {
  for (auto load : {DefaultFilePolicy, DefaultBrowserPolicy, DefaultDesktopPolicy}) {
    ASSERT_OK_AND_ASSIGN(Policy policy, load());
    SCOPED_TRACE(policy.name());
    const SeccompRule* rule = FindRule(policy, "personality");
    ASSERT_NE(rule, nullptr);
    EXPECT_EQ(rule->action, SeccompAction::kErrno);
    EXPECT_EQ(rule->errno_value, 1);
    std::set<uint64_t> allowed;
    for (const SyscallArgCondition& arg : rule->args) {
      EXPECT_EQ(arg.index, 0u);
      EXPECT_EQ(arg.op, SyscallArgCondition::Op::kNe);
      allowed.insert(arg.value);
    }
    EXPECT_EQ(allowed, (std::set<uint64_t>{0x0, 0x8, 0x20000, 0x20008, 0xffffffff}));
  }
}

TEST(DefaultFilePolicyTest, RefusesClone3AndNamespaceClones) {
  ASSERT_OK_AND_ASSIGN(Policy policy, DefaultFilePolicy());
  const SeccompRule* clone3 = FindRule(policy, "clone3");
  ASSERT_NE(clone3, nullptr);
  EXPECT_EQ(clone3->action, SeccompAction::kErrno);
  EXPECT_EQ(clone3->errno_value, 38);  // ENOSYS, so libc falls back to clone
  EXPECT_TRUE(clone3->args.empty());

  const SeccompRule* clone = FindRule(policy, "clone");
  ASSERT_NE(clone, nullptr);
  EXPECT_EQ(clone->action, SeccompAction::kErrno);
  EXPECT_EQ(clone->errno_value, 1);
  ASSERT_EQ(clone->args.size(), 1u);
  EXPECT_EQ(clone->args[0].index, 0u);
  EXPECT_EQ(clone->args[0].op, SyscallArgCondition::Op::kAnyBitsSet);
  constexpr uint64_t kNamespaceFlags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
                                       CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWTIME;
  EXPECT_EQ(clone->args[0].value, kNamespaceFlags);
}

TEST(DefaultFilePolicyTest, RefusesTerminalInjectionIoctls) {
  ASSERT_OK_AND_ASSIGN(Policy policy, DefaultFilePolicy());
  std::set<uint64_t> requests;
  for (const SeccompRule& rule : policy.seccomp().rules) {
    if (rule.syscall != "ioctl") continue;
    EXPECT_EQ(rule.action, SeccompAction::kErrno);
    EXPECT_EQ(rule.errno_value, 1);
    ASSERT_EQ(rule.args.size(), 1u);
    EXPECT_EQ(rule.args[0].index, 1u);
    EXPECT_EQ(rule.args[0].op, SyscallArgCondition::Op::kMaskedEq);
    EXPECT_EQ(rule.args[0].mask, 0xffffffffu);
    requests.insert(rule.args[0].value);
  }
  EXPECT_EQ(requests, (std::set<uint64_t>{TIOCSTI, TIOCLINUX}));
}

// Runs a classic-BPF seccomp program on one call, as the kernel would (the instructions libseccomp emits).
uint32_t RunSeccomp(const SeccompProgram& program, int nr, uint64_t arg0) {
  seccomp_data data{};
  data.nr = nr;
  data.arch = AUDIT_ARCH_X86_64;
  data.args[0] = arg0;
  uint32_t a = 0, x = 0, mem[BPF_MEMWORDS] = {};
  auto load = [&](uint32_t offset) {
    uint32_t v = 0;
    if (offset + sizeof(v) > sizeof(data)) ADD_FAILURE() << "load past seccomp_data at " << offset;
    else memcpy(&v, reinterpret_cast<const char*>(&data) + offset, sizeof(v));
    return v;
  };
  for (size_t pc = 0; pc < program.instructions.size(); ++pc) {
    const sock_filter& in = program.instructions[pc];
    switch (in.code) {
      case BPF_LD | BPF_W | BPF_ABS: a = load(in.k); break;
      case BPF_LD | BPF_MEM: a = mem[in.k]; break;
      case BPF_LDX | BPF_MEM: x = mem[in.k]; break;
      case BPF_ST: mem[in.k] = a; break;
      case BPF_STX: mem[in.k] = x; break;
      case BPF_ALU | BPF_AND | BPF_K: a &= in.k; break;
      case BPF_ALU | BPF_OR | BPF_K: a |= in.k; break;
      case BPF_MISC | BPF_TAX: x = a; break;
      case BPF_MISC | BPF_TXA: a = x; break;
      case BPF_JMP | BPF_JA: pc += in.k; break;
      case BPF_JMP | BPF_JEQ | BPF_K: pc += (a == in.k) ? in.jt : in.jf; break;
      case BPF_JMP | BPF_JGT | BPF_K: pc += (a > in.k) ? in.jt : in.jf; break;
      case BPF_JMP | BPF_JGE | BPF_K: pc += (a >= in.k) ? in.jt : in.jf; break;
      case BPF_JMP | BPF_JSET | BPF_K: pc += (a & in.k) ? in.jt : in.jf; break;
      case BPF_RET | BPF_K: return in.k;
      default:
        ADD_FAILURE() << "unexpected BPF instruction " << in.code << " at " << pc;
        return 0;
    }
  }
  ADD_FAILURE() << "the program fell off its end";
  return 0;
}

// The NE list of personality compiles to "none of these values", exactly: every value around and between
// the allowed ones, the 32-bit edges, the high half and random values.
TEST(DefaultPoliciesSeccompTest, PersonalityFilterAllowsExactlyDockersValues) {
  const std::set<uint64_t> allowed = {0x0, 0x8, 0x20000, 0x20008, 0xffffffff};
  std::vector<uint64_t> probes = {0x40000, 0x400000, 0x6, 0x1ffff, 0x7fffffff, 0x80000000, 0xfffffffe,
                                  0x100000000, 0x100000008, 0x1ffffffff, UINT64_MAX, UINT64_MAX - 1};
  for (uint64_t v : allowed) {
    for (uint64_t d = 0; d < 20; ++d) {
      probes.push_back(v + d);
      probes.push_back(v - d);
    }
    for (int bit = 0; bit < 64; ++bit) probes.push_back(v ^ (uint64_t{1} << bit));
  }
  std::mt19937_64 rng(42);
  for (int i = 0; i < 2000; ++i) {
    probes.push_back(rng());
    probes.push_back(rng() & 0xffffffff);
    probes.push_back(rng() & 0x3ffff);
  }
  for (auto load : {DefaultFilePolicy, DefaultBrowserPolicy, DefaultDesktopPolicy}) {
    ASSERT_OK_AND_ASSIGN(Policy policy, load());
    SCOPED_TRACE(policy.name());
    // audit_denials (the default): denials go to the supervisor; off: plain EPERM from the kernel.
    for (const bool audit : {true, false}) {
      SCOPED_TRACE(audit ? "audit_denials" : "plain");
      SeccompPolicy seccomp = policy.seccomp();
      seccomp.audit_denials = audit;
      ASSERT_OK_AND_ASSIGN(SeccompProgram program, CompileSeccomp(seccomp));
      EXPECT_EQ(program.user_notif, audit);
      EXPECT_LT(program.instructions.size(), 1024u);
      const uint32_t denied = audit ? SECCOMP_RET_USER_NOTIF : (SECCOMP_RET_ERRNO | 1);
      for (uint64_t v : probes) {
        const uint32_t want = allowed.count(v) ? SECCOMP_RET_ALLOW : denied;
        ASSERT_EQ(RunSeccomp(program, SYS_personality, v), want) << std::hex << "personality(0x" << v << ")";
      }
      EXPECT_EQ(RunSeccomp(program, SYS_getpid, 0x40000), SECCOMP_RET_ALLOW);
      for (int nr : {SYS_modify_ldt, SYS_fanotify_init, 447 /* memfd_secret */}) {
        EXPECT_EQ(RunSeccomp(program, nr, 0), denied) << nr;
      }
    }
  }
}

// --- Parsing ---

TEST(ParsePolicyTextTest, AuditDenialsDefaultsToTrueAndCanBeTurnedOff) {
  ASSERT_OK_AND_ASSIGN(Policy on, ParsePolicyText("seccomp { rules { syscalls: \"ptrace\" action: ERRNO } }",
                                                  "on.textproto"));
  EXPECT_TRUE(on.seccomp().audit_denials);
  ASSERT_OK_AND_ASSIGN(Policy off, ParsePolicyText("seccomp { audit_denials: false rules { syscalls: \"ptrace\" "
                                                   "action: ERRNO } }",
                                                   "off.textproto"));
  EXPECT_FALSE(off.seccomp().audit_denials);
  for (auto load : {DefaultFilePolicy, DefaultBrowserPolicy, DefaultDesktopPolicy}) {
    ASSERT_OK_AND_ASSIGN(Policy policy, load());
    EXPECT_TRUE(policy.seccomp().audit_denials) << policy.name();
  }
}

TEST(ParsePolicyTextTest, SeveralNeConditionsOnOneArgumentAreANoneOfList) {
  ASSERT_OK_AND_ASSIGN(Policy policy,
                       ParsePolicyText("seccomp { rules { syscalls: \"personality\" action: ERRNO "
                                       "args { index: 0 op: NE value: 0 } args { index: 0 op: NE value: 8 } } }",
                                       "ne.textproto"));
  const SeccompRule* rule = FindRule(policy, "personality");
  ASSERT_NE(rule, nullptr);
  EXPECT_EQ(rule->args.size(), 2u);

  EXPECT_TRUE(StatusIs(ParsePolicyText("seccomp { rules { syscalls: \"personality\" action: ERRNO "
                                       "args { index: 0 op: NE value: 0 } args { index: 0 op: EQ value: 8 } } }",
                                       "mixed.textproto"),
                       StatusCode::kInvalidArgument,
                       "seccomp.rules[0].args[1].index: argument 0 already has a condition (args[0]); only NE "
                       "conditions may repeat an argument"));
}

TEST(ParsePolicyTextTest, MalformedTextNamesOriginLineAndColumn) {
  EXPECT_TRUE(StatusIs(ParsePolicyText("name: \"x\"\nlimits {\n  pids_max: \"many\"\n}\n", "bad.textproto"),
                       StatusCode::kInvalidArgument, "bad.textproto:3:13: "));
  EXPECT_TRUE(StatusIs(ParsePolicyText("limits {\n  pids_max: 5\n", "unclosed.textproto"),
                       StatusCode::kInvalidArgument, "unclosed.textproto:3:"));
}

TEST(ParsePolicyTextTest, UnknownFieldIsAnErrorNamingIt) {
  // protobuf reports the position just after the unknown name (the ':').
  EXPECT_TRUE(StatusIs(ParsePolicyText("name: \"x\"\nlimits { memory_max: 5 }\n", "typo.textproto"),
                       StatusCode::kInvalidArgument, "typo.textproto:2:20: "));
  EXPECT_TRUE(StatusIs(ParsePolicyText("limits { memory_max: 5 }", "typo.textproto"),
                       StatusCode::kInvalidArgument, "no field named \"memory_max\""));
  EXPECT_TRUE(StatusIs(ParsePolicyText("network { mode: OPEN }", "enum.textproto"),
                       StatusCode::kInvalidArgument, "\"OPEN\""));
}

TEST(ParsePolicyTextTest, RepeatedSingularFieldIsAnError) {
  EXPECT_TRUE(StatusIs(ParsePolicyText("hostname: \"a\"\nhostname: \"b\"\n", "twice.textproto"),
                       StatusCode::kInvalidArgument, "twice.textproto:2:"));
}

TEST(ParsePolicyTextTest, ConversionErrorsNameOriginAndFieldPath) {
  EXPECT_TRUE(StatusIs(ParsePolicyText(R"pb(
                                         mounts { bind { src: "/usr" dst: "/usr" } }
                                         mounts { tmpfs { dst: "/tmp" size_bytes: 1024 } }
                                         mounts { symlink { dst: "/bin" target: "usr/bin" } }
                                         mounts { bind { src: "opt" dst: "/opt" } }
                                       )pb",
                                       "paths.textproto"),
                       StatusCode::kInvalidArgument,
                       "paths.textproto: mounts[3].bind.src: \"opt\" is not an absolute path"));
  EXPECT_TRUE(StatusIs(
      ParsePolicyText("limits { memory_max_bytes: 0 }", "limits.textproto"), StatusCode::kInvalidArgument,
      "limits.textproto: limits.memory_max_bytes: 0 is not allowed (must be between 1 MiB and 1 TiB)"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("mounts { tmpfs { dst: \"/tmp\" } }", "t.textproto"),
                       StatusCode::kInvalidArgument,
                       "t.textproto: mounts[0].tmpfs.size_bytes: 0 is not allowed"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("mounts { }", "t.textproto"), StatusCode::kInvalidArgument,
                       "t.textproto: mounts[0]: one of bind, tmpfs, file or symlink must be set"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("ids { uid: 0 }", "t.textproto"), StatusCode::kInvalidArgument,
                       "t.textproto: ids.uid: 0"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("hostname: \"\"", "t.textproto"), StatusCode::kInvalidArgument,
                       "t.textproto: hostname: "));
  EXPECT_TRUE(StatusIs(ParsePolicyText("workdir: \"work\"", "t.textproto"), StatusCode::kInvalidArgument,
                       "t.textproto: workdir: "));
  EXPECT_TRUE(
      StatusIs(ParsePolicyText("mounts { bind { src: \"/\" dst: \"/host\" writable: true } }", "t.textproto"),
               StatusCode::kInvalidArgument, "t.textproto: mounts[0].bind.writable"));
}

TEST(ParsePolicyTextTest, FirstErrorInFieldOrderWins) {
  // ids is checked by the builder, the seccomp rule by the loader: the earlier field is reported.
  EXPECT_TRUE(StatusIs(ParsePolicyText("ids { uid: 0 } seccomp { rules { action: ERRNO } }", "o.textproto"),
                       StatusCode::kInvalidArgument, "o.textproto: ids.uid: 0"));
  EXPECT_TRUE(
      StatusIs(ParsePolicyText("mounts { bind { src: \"x\" dst: \"/x\" } } mounts { }", "o.textproto"),
               StatusCode::kInvalidArgument, "o.textproto: mounts[0].bind.src"));
}

TEST(ParsePolicyTextTest, SeccompErrorsNameTheProtoPath) {
  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"seccomp { rules { syscalls: \"ptrace\" } }", "seccomp.rules[0].action: must be set"},
      {"seccomp { rules { action: ERRNO } }", "seccomp.rules[0].syscalls: must name at least one syscall"},
      {"seccomp { rules { syscalls: \"a\" action: ERRNO } rules { syscalls: [\"b\", \"\"] action: KILL } }",
       "seccomp.rules[1].syscalls[1]: \"\" is not a syscall name"},
      {"seccomp { rules { syscalls: \"ptrace\" action: KILL errno_value: 1 } }",
       "seccomp.rules[0].errno_value: is only meaningful with action ERRNO"},
      {"seccomp { rules { syscalls: \"ptrace\" action: ERRNO errno_value: 4096 } }",
       "seccomp.rules[0].errno_value: 4096 is out of range"},
      {"seccomp { default_action: ERRNO default_errno: 0 }", "seccomp.default_errno: 0 is not allowed"},
      {"seccomp { default_errno: 13 }",
       "seccomp.default_errno: is only meaningful with default_action ERRNO"},
      {"seccomp { rules { syscalls: \"read\" action: ALLOW } }",
       "seccomp.rules[0].action: ALLOW under default_action ALLOW is a contradiction"},
      {"seccomp { rules { syscalls: [\"a\", \"b\"] action: KILL }"
       "          rules { syscalls: \"c\" action: ERRNO args { index: 6 op: EQ value: 1 } } }",
       "seccomp.rules[1].args[0].index: 6 is out of range (must be between 0 and 5)"},
      {"seccomp { rules { syscalls: \"c\" action: ERRNO args { index: 0 value: 1 } } }",
       "seccomp.rules[0].args[0].op: must be set"},
      {"seccomp { rules { syscalls: \"c\" action: ERRNO args { index: 0 op: EQ value: 1 mask: 1 } } }",
       "seccomp.rules[0].args[0].mask: is only meaningful with MASKED_EQ"},
      {"seccomp { rules { syscalls: \"c\" action: ERRNO args { index: 0 op: ANY_BITS_SET } } }",
       "seccomp.rules[0].args[0].value: 0 has no bits to test"},
      {"seccomp { rules { syscalls: [\"x\", \"clone3\"] action: ERRNO }"
       "          rules { syscalls: \"clone3\" action: ERRNO errno_value: 38 } }",
       "seccomp.rules[1].syscalls[0]: \"clone3\" already has a rule (seccomp.rules[0].syscalls[1])"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_TRUE(StatusIs(ParsePolicyText(c.text, "s.textproto"), StatusCode::kInvalidArgument,
                         absl::StrCat("s.textproto: ", c.message)));
  }
}

TEST(ParsePolicyTextTest, EnvNamesAreListedOnce) {
  EXPECT_TRUE(StatusIs(
      ParsePolicyText("env { set { name: \"A\" value: \"1\" } set { name: \"A\" value: \"2\" } }",
                      "e.textproto"),
      StatusCode::kInvalidArgument, "e.textproto: env.set[1].name: \"A\" is already set by env.set[0]"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("env { passthrough: [\"TERM\", \"TZ\", \"TERM\"] }", "e.textproto"),
                       StatusCode::kInvalidArgument,
                       "e.textproto: env.passthrough[2]: \"TERM\" is already listed"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("env { set { name: \"A\" } set { name: \"B-C\" } }", "e.textproto"),
                       StatusCode::kInvalidArgument, "e.textproto: env.set[1].name: \"B-C\""));
}

TEST(ParsePolicyTextTest, UnsetFieldsKeepTheDefaults) {
  ASSERT_OK_AND_ASSIGN(Policy minimal, ParsePolicyText("name: \"minimal\"", "m.textproto"));
  PolicySpec expected;
  expected.name = "minimal";
  EXPECT_EQ(SpecToString(minimal.spec()), SpecToString(expected));

  ASSERT_OK_AND_ASSIGN(Policy partial,
                       ParsePolicyText(R"pb(
                                         namespaces { uts: false }
                                         ids { gid: 4242 }
                                         limits { pids_max: 10 }
                                         seccomp { rules { syscalls: "ptrace" action: ERRNO } }
                                         network {}
                                       )pb",
                                       "p.textproto"));
  expected.name = "";
  expected.new_uts_ns = false;
  expected.gid = 4242;
  expected.limits.pids_max = 10;
  SeccompRule ptrace;
  ptrace.syscall = "ptrace";
  ptrace.action = SeccompAction::kErrno;
  ptrace.errno_value = 1;  // EPERM when unset
  expected.seccomp.rules.push_back(ptrace);
  EXPECT_EQ(SpecToString(partial.spec()), SpecToString(expected));
}

TEST(ParsePolicyTextTest, MapsARealisticPolicy) {
  ASSERT_OK_AND_ASSIGN(Policy policy, ParsePolicyText(kRealisticPolicy, "strict.textproto"));
  const PolicySpec& spec = policy.spec();
  EXPECT_EQ(spec.name, "strict");
  EXPECT_TRUE(spec.new_ipc_ns);
  EXPECT_FALSE(spec.new_cgroup_ns);
  EXPECT_EQ(spec.uid, 2000u);
  EXPECT_EQ(spec.gid, 2001u);
  ASSERT_EQ(spec.mounts.size(), 5u);
  const auto& data = std::get<BindMount>(spec.mounts[1]);
  EXPECT_TRUE(data.writable);
  EXPECT_TRUE(data.optional);
  EXPECT_EQ(std::get<FileMount>(spec.mounts[3]).contents,
            "root:x:0:0::/:/bin/false\napp:x:2000:2001::/data:/bin/sh\n");
  EXPECT_EQ(std::get<FileMount>(spec.mounts[3]).mode, 0644u);  // default
  EXPECT_EQ(std::get<TmpfsMount>(spec.mounts[4]).mode, 01777u);
  EXPECT_EQ(spec.limits.cpu_millicores, 500u);
  EXPECT_FALSE(spec.limits.kill_on_pids_limit);
  EXPECT_EQ(spec.seccomp.default_action, SeccompAction::kKill);
  ASSERT_EQ(spec.seccomp.rules.size(), 6u);  // one per syscall
  EXPECT_EQ(spec.seccomp.rules[2].syscall, "exit_group");
  EXPECT_EQ(spec.seccomp.rules[2].action, SeccompAction::kAllow);
  EXPECT_EQ(spec.seccomp.rules[3].action, SeccompAction::kLog);
  EXPECT_EQ(spec.seccomp.rules[4].errno_value, 97);
  EXPECT_EQ(spec.seccomp.rules[4].args[0].op, SyscallArgCondition::Op::kNe);
  EXPECT_EQ(spec.seccomp.rules[5].args[0].mask, 0xffffffffu);
  EXPECT_EQ(spec.network, NetworkMode::kEgress);
  EXPECT_EQ(spec.env_passthrough, (std::vector<std::string>{"TERM", "TZ"}));
  ASSERT_EQ(spec.env.size(), 2u);
  EXPECT_EQ(spec.env[1].name, "EMPTY");
  EXPECT_EQ(spec.env[1].value, "");
  EXPECT_EQ(spec.hostname, "strict-box");
  EXPECT_EQ(spec.workdir, "/data");
}

TEST(ParsePolicyTextTest, RoundTripsThroughTheWireAndTextForms) {
  pb::SandboxPolicy proto;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(kRealisticPolicy, &proto));
  ASSERT_OK_AND_ASSIGN(Policy from_proto, PolicyFromProto(proto));

  // Wire form: serialize and parse back.
  pb::SandboxPolicy from_wire;
  ASSERT_TRUE(from_wire.ParseFromString(proto.SerializeAsString()));
  ASSERT_OK_AND_ASSIGN(Policy wire_policy, PolicyFromProto(from_wire));
  EXPECT_EQ(SpecToString(wire_policy.spec()), SpecToString(from_proto.spec()));

  // Text form: print and parse back.
  std::string text;
  ASSERT_TRUE(google::protobuf::TextFormat::PrintToString(proto, &text));
  ASSERT_OK_AND_ASSIGN(Policy text_policy, ParsePolicyText(text, "printed.textproto"));
  EXPECT_EQ(SpecToString(text_policy.spec()), SpecToString(from_proto.spec()));
}

TEST(ParsePolicyTextTest, NetworkModes) {
  ASSERT_OK_AND_ASSIGN(Policy host, ParsePolicyText("network { mode: HOST }", "n.textproto"));
  EXPECT_EQ(host.spec().network, NetworkMode::kHost);
  ASSERT_OK_AND_ASSIGN(Policy none, ParsePolicyText("network { mode: NONE }", "n.textproto"));
  EXPECT_EQ(none.spec().network, NetworkMode::kNone);

  pb::SandboxPolicy unknown;
  unknown.mutable_network()->set_mode(static_cast<pb::Network::Mode>(42));  // a newer client's value
  EXPECT_TRUE(
      StatusIs(PolicyFromProto(unknown), StatusCode::kInvalidArgument, "network.mode: unknown mode 42"));
}

TEST(ParsePolicyTextTest, RefusesOversizedText) {
  const std::string huge(5 << 20, ' ');
  EXPECT_TRUE(StatusIs(ParsePolicyText(huge, "huge.textproto"), StatusCode::kInvalidArgument,
                       "huge.textproto: 5242880 bytes is too large"));
}

// --- Files ---

class LoadPolicyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "policy_loader_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const std::string& file : files_) ::unlink(file.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string Write(const std::string& name, const std::string& contents) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << contents;
    files_.push_back(path);
    return path;
  }

  std::string dir_;
  std::vector<std::string> files_;
};

TEST_F(LoadPolicyFileTest, LoadsAPolicyFile) {
  const std::string path = Write("strict.textproto", kRealisticPolicy);
  ASSERT_OK_AND_ASSIGN(Policy policy, LoadPolicyFile(path));
  ASSERT_OK_AND_ASSIGN(Policy parsed, ParsePolicyText(kRealisticPolicy, "strict.textproto"));
  EXPECT_EQ(SpecToString(policy.spec()), SpecToString(parsed.spec()));
}

TEST_F(LoadPolicyFileTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = dir_ + "/absent.textproto";
  EXPECT_TRUE(StatusIs(LoadPolicyFile(path), StatusCode::kNotFound, path));
}

TEST_F(LoadPolicyFileTest, ErrorsArePrefixedWithThePath) {
  const std::string bad_syntax = Write("bad.textproto", "name: \"x\"\nlimits { pids_max: -1 }\n");
  EXPECT_TRUE(StatusIs(LoadPolicyFile(bad_syntax), StatusCode::kInvalidArgument, bad_syntax + ":2:"));
  const std::string bad_value = Write("zero.textproto", "limits { pids_max: 0 }\n");
  EXPECT_TRUE(StatusIs(LoadPolicyFile(bad_value), StatusCode::kInvalidArgument,
                       bad_value + ": limits.pids_max: 0 is not allowed"));
}

TEST_F(LoadPolicyFileTest, DirectoryIsNotAPolicy) {
  EXPECT_TRUE(StatusIs(LoadPolicyFile(dir_), StatusCode::kInvalidArgument, dir_ + ": not a regular file"));
}

TEST(ParsePolicyTextTest, EgressAllowRulesAndProxyPort) {
  absl::StatusOr<Policy> policy = ParsePolicyText(
      "name: \"e\"\nnetwork { mode: EGRESS allow: \"example.com\" allow: \"*.example.org:443\" proxy_port: 8080 }\n",
      "egress.textproto");
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ(policy->spec().network, NetworkMode::kEgress);
  EXPECT_EQ(policy->spec().egress_allow, (std::vector<std::string>{"example.com", "*.example.org:443"}));
  EXPECT_EQ(policy->spec().egress_proxy_port, 8080);
  absl::StatusOr<Policy> defaults = ParsePolicyText("name: \"e\"\nnetwork { mode: EGRESS }\n", "d.textproto");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->spec().egress_proxy_port, 3128);
  EXPECT_TRUE(defaults->spec().egress_allow.empty());
}

TEST(ParsePolicyTextTest, EgressAskRules) {
  absl::StatusOr<Policy> policy = ParsePolicyText(
      "name: \"e\"\nnetwork { mode: EGRESS allow: \"example.com\" ask: \"*.github.com\" ask: \"10.0.0.0/8:22\" }\n",
      "ask.textproto");
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ(policy->spec().egress_ask, (std::vector<std::string>{"*.github.com", "10.0.0.0/8:22"}));
  EXPECT_TRUE(StatusIs(ParsePolicyText("name: \"e\"\nnetwork { mode: NONE ask: \"example.com\" }\n", "n.textproto"),
                       StatusCode::kInvalidArgument, "network.ask"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("name: \"e\"\nnetwork { mode: EGRESS ask: \"a b\" }\n", "s.textproto"),
                       StatusCode::kInvalidArgument, "network.ask[0]"));
}

TEST(ParsePolicyTextTest, EgressRulesOutsideEgressModeOrMalformedAreErrors) {
  EXPECT_TRUE(StatusIs(ParsePolicyText("name: \"e\"\nnetwork { mode: NONE allow: \"example.com\" }\n", "n.textproto"),
                       StatusCode::kInvalidArgument, "network.allow"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("name: \"e\"\nnetwork { mode: EGRESS proxy_port: 0 }\n", "p.textproto"),
                       StatusCode::kInvalidArgument, "network.proxy_port"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("name: \"e\"\nnetwork { mode: EGRESS allow: \"a b\" }\n", "s.textproto"),
                       StatusCode::kInvalidArgument, "network.allow[0]"));
}

}  // namespace
}  // namespace sbx::sandbox

namespace sbx::sandbox {
namespace {

// --- Human approval gates (policy.proto ApprovalPolicy) -------------------------------------------------

TEST(ApprovalPolicyTest, ParsedFromAPolicyFile) {
  absl::StatusOr<Policy> policy = ParsePolicyText(
      "approvals { require_approval: \"download\" require_approval: \"exec\" exec { argv_regex: \"^sudo \" } "
      "secret_patterns: \"sk-[a-z0-9]+\" timeout_ms: 60000 }",
      "gates.textproto");
  ASSERT_TRUE(::sbx::testing::IsOk(policy));
  const ApprovalSpec& a = policy->spec().approvals;
  EXPECT_EQ(a.require_approval, (std::vector<std::string>{"download", "exec"}));
  EXPECT_EQ(a.exec_regex, (std::vector<std::string>{"^sudo "}));
  EXPECT_EQ(a.secret_patterns, (std::vector<std::string>{"sk-[a-z0-9]+"}));
  EXPECT_EQ(a.timeout(), 60000u);
  EXPECT_TRUE(a.Requires("exec"));
  EXPECT_FALSE(a.Requires("upload"));
  // None: the default deadline.
  absl::StatusOr<Policy> plain = ParsePolicyText("name: \"x\"", "plain.textproto");
  ASSERT_TRUE(::sbx::testing::IsOk(plain));
  EXPECT_EQ(plain->spec().approvals.timeout(), 300000u);
}

TEST(ApprovalPolicyTest, ValidationNamesTheField) {
  using ::sbx::testing::StatusIs;
  EXPECT_TRUE(StatusIs(ParsePolicyText("approvals { require_approval: \"download\" require_approval: \"fly\" }", "f"),
                       absl::StatusCode::kInvalidArgument, "approvals.require_approval[1]: \"fly\" is not a gate"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("approvals { exec { argv_regex: \"ok\" } exec { argv_regex: \"(bad\" } }", "f"),
                       absl::StatusCode::kInvalidArgument, "approvals.exec[1].argv_regex"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("approvals { exec { } }", "f"), absl::StatusCode::kInvalidArgument,
                       "approvals.exec[0].argv_regex: must be set"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("approvals { secret_patterns: \"[z-a]\" }", "f"),
                       absl::StatusCode::kInvalidArgument, "approvals.secret_patterns[0]"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("approvals { timeout_ms: 999 }", "f"), absl::StatusCode::kInvalidArgument,
                       "approvals.timeout_ms"));
  EXPECT_TRUE(StatusIs(ParsePolicyText("approvals { timeout_ms: 86400001 }", "f"),
                       absl::StatusCode::kInvalidArgument, "approvals.timeout_ms"));
  const std::string huge = "approvals { secret_patterns: \"" + std::string(2000, 'a') + "\" }";
  EXPECT_TRUE(StatusIs(ParsePolicyText(huge, "f"), absl::StatusCode::kInvalidArgument,
                       "approvals.secret_patterns[0]: 2000 bytes"));
}

TEST(ApprovalPolicyTest, ARequestAddsGatesAndRemovesNone) {
  absl::StatusOr<Policy> host = ParsePolicyText(
      "approvals { require_approval: \"download\" exec { argv_regex: \"^sudo \" } timeout_ms: 60000 }", "host");
  ASSERT_TRUE(::sbx::testing::IsOk(host));
  pb::ApprovalPolicy request;
  request.add_require_approval("upload");
  request.add_require_approval("download");  // already there: not twice
  request.add_exec()->set_argv_regex("^rm ");
  request.set_timeout_ms(30000);
  absl::StatusOr<Policy> merged = PolicyBuilder(*host).AddApprovals(ApprovalsFromProto(request)).TryBuild();
  ASSERT_TRUE(::sbx::testing::IsOk(merged));
  const ApprovalSpec& a = merged->spec().approvals;
  EXPECT_EQ(a.require_approval, (std::vector<std::string>{"download", "upload"}));
  EXPECT_EQ(a.exec_regex, (std::vector<std::string>{"^sudo ", "^rm "}));
  EXPECT_EQ(a.timeout(), 30000u);
  // A longer deadline than the host's is refused; a request's own bad entry is named by its own index.
  pb::ApprovalPolicy longer;
  longer.set_timeout_ms(120000);
  EXPECT_TRUE(::sbx::testing::StatusIs(PolicyBuilder(*host).AddApprovals(ApprovalsFromProto(longer)).TryBuild(),
                                       absl::StatusCode::kPermissionDenied, "approvals.timeout_ms: 120000"));
  pb::ApprovalPolicy bad;
  bad.add_require_approval("teleport");
  EXPECT_TRUE(::sbx::testing::StatusIs(PolicyBuilder(*host).AddApprovals(ApprovalsFromProto(bad)).TryBuild(),
                                       absl::StatusCode::kInvalidArgument, "approvals.require_approval[0]"));
}

}  // namespace
}  // namespace sbx::sandbox
