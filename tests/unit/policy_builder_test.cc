#include "sandbox/policy/policy_builder.h"

#include <cstdint>
#include <string>
#include <variant>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "sandbox/policy/policy.h"
#include "tests/unit/status_matchers.h"

namespace sbx::sandbox {
namespace {

using ::absl::StatusCode;
using ::sbx::testing::IsOk;
using ::sbx::testing::StatusIs;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kTiB = uint64_t{1} << 40;

SeccompRule Rule(std::string syscall, SeccompAction action, int errno_value = 1) {
  SeccompRule rule;
  rule.syscall = std::move(syscall);
  rule.action = action;
  rule.errno_value = errno_value;
  return rule;
}

SyscallArgCondition Arg(uint32_t index, SyscallArgCondition::Op op, uint64_t value, uint64_t mask = 0) {
  SyscallArgCondition arg;
  arg.index = index;
  arg.op = op;
  arg.value = value;
  arg.mask = mask;
  return arg;
}

TEST(PolicyBuilderTest, EmptyBuilderBuildsTheDefaults) {
  ASSERT_OK_AND_ASSIGN(Policy policy, PolicyBuilder().TryBuild());
  const PolicySpec defaults;
  EXPECT_EQ(policy.limits().memory_max_bytes, defaults.limits.memory_max_bytes);
  EXPECT_EQ(policy.limits().pids_max, defaults.limits.pids_max);
  EXPECT_EQ(policy.spec().uid, 1000u);
  EXPECT_EQ(policy.spec().hostname, "sandbox");
  EXPECT_EQ(policy.spec().workdir, "/workspace");
  EXPECT_EQ(policy.spec().network, NetworkMode::kNone);
  EXPECT_TRUE(policy.mounts().empty());
}

TEST(PolicyBuilderTest, BuildsEveryFieldInOrder) {
  Limits limits;
  limits.memory_max_bytes = 256 * kMiB;
  limits.pids_max = 64;
  SeccompPolicy seccomp;
  seccomp.rules.push_back(Rule("ptrace", SeccompAction::kErrno));
  ASSERT_OK_AND_ASSIGN(Policy policy, PolicyBuilder()
                                          .SetName("test")
                                          .SetNamespaces(/*ipc=*/false, /*uts=*/true, /*cgroup=*/false)
                                          .SetIds(1234, 2345)
                                          .AddBind("/usr", "/usr", /*writable=*/false)
                                          .AddBind("/srv/data", "/data", /*writable=*/true, /*optional=*/true)
                                          .AddTmpfs("/tmp", 64 * kMiB)
                                          .AddFile("/etc/hostname", "box\n", 0600)
                                          .AddSymlink("/bin", "usr/bin")
                                          .SetLimits(limits)
                                          .SetSeccomp(seccomp)
                                          .SetNetworkEgress()
                                          .AddEnvPassthrough("TERM")
                                          .SetEnv("PATH", "/usr/bin")
                                          .SetHostname("box-1.example")
                                          .SetWorkdir("/data")
                                          .TryBuild());
  const PolicySpec& spec = policy.spec();
  EXPECT_EQ(spec.name, "test");
  EXPECT_FALSE(spec.new_ipc_ns);
  EXPECT_TRUE(spec.new_uts_ns);
  EXPECT_FALSE(spec.new_cgroup_ns);
  EXPECT_EQ(spec.uid, 1234u);
  EXPECT_EQ(spec.gid, 2345u);
  ASSERT_EQ(spec.mounts.size(), 5u);
  const auto& data = std::get<BindMount>(spec.mounts[1]);
  EXPECT_EQ(data.src, "/srv/data");
  EXPECT_TRUE(data.writable);
  EXPECT_TRUE(data.optional);
  EXPECT_EQ(std::get<TmpfsMount>(spec.mounts[2]).mode, 01777u);
  EXPECT_EQ(std::get<FileMount>(spec.mounts[3]).mode, 0600u);
  EXPECT_EQ(std::get<SymlinkMount>(spec.mounts[4]).target, "usr/bin");
  EXPECT_EQ(spec.limits.pids_max, 64u);
  ASSERT_EQ(spec.seccomp.rules.size(), 1u);
  EXPECT_EQ(spec.network, NetworkMode::kEgress);
  ASSERT_EQ(spec.env.size(), 1u);
  EXPECT_EQ(spec.env[0].value, "/usr/bin");
  EXPECT_EQ(spec.hostname, "box-1.example");
  EXPECT_EQ(spec.workdir, "/data");
}

TEST(PolicyBuilderTest, HostNetworkingNeedsTheToken) {
  ASSERT_OK_AND_ASSIGN(Policy policy, PolicyBuilder().SetNetworkHost(UnrestrictedNetworking()).TryBuild());
  EXPECT_EQ(policy.spec().network, NetworkMode::kHost);
}

TEST(PolicyBuilderTest, FirstErrorSticks) {
  PolicyBuilder builder;
  builder.AddBind("usr", "/usr", false).SetIds(0, 0).AddTmpfs("/tmp", 0).SetWorkdir("/workspace");
  EXPECT_TRUE(StatusIs(builder.TryBuild(), StatusCode::kInvalidArgument, "mounts[0].bind.src"));
}

TEST(PolicyBuilderTest, StartsFromABasePolicy) {
  ASSERT_OK_AND_ASSIGN(Policy base, PolicyBuilder().SetName("base").AddTmpfs("/tmp", kMiB).TryBuild());
  ASSERT_OK_AND_ASSIGN(Policy extended,
                       PolicyBuilder(base).AddBind("/opt/tool", "/opt/tool", false).TryBuild());
  EXPECT_EQ(extended.name(), "base");
  ASSERT_EQ(extended.mounts().size(), 2u);
  // The base's mounts count for duplicate destinations and for the index in messages.
  EXPECT_TRUE(StatusIs(PolicyBuilder(base).AddTmpfs("/tmp", kMiB).TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[1].tmpfs.dst: \"/tmp\" is already the destination of mounts[0]"));
}

// --- Paths ---

TEST(PolicyBuilderTest, RejectsPathsThatAreNotAbsoluteAndNormalized) {
  const char* const kBad[] = {"",      "usr",       "./usr", "/usr/../etc", "/usr/./bin",
                              "//usr", "/usr//bin", "/usr/", "/.."};
  for (const char* bad : kBad) {
    SCOPED_TRACE(bad);
    EXPECT_TRUE(StatusIs(PolicyBuilder().AddBind(bad, "/x", false).TryBuild(), StatusCode::kInvalidArgument,
                         "mounts[0].bind.src: "));
    EXPECT_TRUE(StatusIs(PolicyBuilder().AddBind("/x", bad, false).TryBuild(), StatusCode::kInvalidArgument,
                         "mounts[0].bind.dst: "));
    EXPECT_TRUE(
        StatusIs(PolicyBuilder().SetWorkdir(bad).TryBuild(), StatusCode::kInvalidArgument, "workdir: "));
  }
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddBind("/usr/../etc", "/etc", false).TryBuild(),
                       StatusCode::kInvalidArgument,
                       "\"/usr/../etc\" is not normalized (it has a \"..\" component)"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddTmpfs("tmp", kMiB).TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].tmpfs.dst: \"tmp\" is not an absolute path"));
}

TEST(PolicyBuilderTest, RejectsANulByteInAPath) {
  const std::string with_nul("/us\0r", 5);
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddFile(with_nul, "x").TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].file.dst: \"/us\\x00r\" contains a NUL byte"));
}

TEST(PolicyBuilderTest, AcceptsNormalizedPathsWithDots) {
  EXPECT_TRUE(IsOk(PolicyBuilder().AddBind("/opt/a..b/.c", "/opt/a..b/.c", false).TryBuild()));
}

TEST(PolicyBuilderTest, RejectsAWritableBindOfTheHostRoot) {
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddBind("/", "/host", /*writable=*/true).TryBuild(),
                       StatusCode::kInvalidArgument,
                       "mounts[0].bind.writable: a writable bind of the host's /"));
  EXPECT_TRUE(IsOk(PolicyBuilder().AddBind("/", "/host", /*writable=*/false).TryBuild()));
}

TEST(PolicyBuilderTest, RejectsTheJailRootAsADestination) {
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddBind("/srv", "/", /*writable=*/true).TryBuild(),
                       StatusCode::kInvalidArgument, "mounts[0].bind.dst: / is the jail's root"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddBind("/srv", "/", /*writable=*/false).TryBuild(),
                       StatusCode::kInvalidArgument, "mounts[0].bind.dst: / is the jail's root"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddTmpfs("/", kMiB).TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].tmpfs.dst: / is the jail's root"));
}

TEST(PolicyBuilderTest, RejectsDestinationsTheJailOwns) {
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddBind("/proc", "/proc", false).TryBuild(),
                       StatusCode::kInvalidArgument, "mounts[0].bind.dst: \"/proc\" is under /proc"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddFile("/proc/sys/x", "1").TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].file.dst"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddTmpfs("/dev", kMiB).TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].tmpfs.dst: /dev is set up by the jail"));
  EXPECT_TRUE(IsOk(PolicyBuilder()
                       .AddBind("/dev/dri", "/dev/dri", false)
                       .AddBind("/procfs", "/procfs", false)
                       .TryBuild()));
}

TEST(PolicyBuilderTest, RejectsDuplicateMountDestinations) {
  EXPECT_TRUE(StatusIs(PolicyBuilder()
                           .AddBind("/usr", "/usr", false)
                           .AddTmpfs("/tmp", kMiB)
                           .AddSymlink("/usr", "x")
                           .TryBuild(),
                       StatusCode::kInvalidArgument,
                       "mounts[2].symlink.dst: \"/usr\" is already the destination of mounts[0]"));
}

TEST(PolicyBuilderTest, TmpfsSizeMustBeCapped) {
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddTmpfs("/tmp", 0).TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].tmpfs.size_bytes: 0 is not allowed"));
  EXPECT_TRUE(StatusIs(
      PolicyBuilder().AddTmpfs("/tmp", 64 * kGiB + 1).TryBuild(), StatusCode::kInvalidArgument,
      "mounts[0].tmpfs.size_bytes: 68719476737 is out of range (must be between 1 byte and 64 GiB)"));
  EXPECT_TRUE(IsOk(PolicyBuilder().AddTmpfs("/tmp", 64 * kGiB).TryBuild()));
  EXPECT_TRUE(IsOk(PolicyBuilder().AddTmpfs("/tmp", 1).TryBuild()));
}

TEST(PolicyBuilderTest, RejectsBadModes) {
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddTmpfs("/tmp", kMiB, 010000).TryBuild(),
                       StatusCode::kInvalidArgument,
                       "mounts[0].tmpfs.mode: 010000 is not a permission mode"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddFile("/etc/x", "", 04755).TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].file.mode: 04755 sets the setuid or setgid bit"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddFile("/etc/x", "", 02755).TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].file.mode"));
  EXPECT_TRUE(IsOk(PolicyBuilder().AddFile("/etc/x", "", 0755).TryBuild()));
}

TEST(PolicyBuilderTest, FileContentsAreSmall) {
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddFile("/etc/big", std::string(kMiB + 1, 'x')).TryBuild(),
                       StatusCode::kInvalidArgument, "mounts[0].file.contents: 1048577 bytes is too large"));
  EXPECT_TRUE(IsOk(PolicyBuilder().AddFile("/etc/big", std::string(kMiB, 'x')).TryBuild()));
}

TEST(PolicyBuilderTest, SymlinkNeedsATarget) {
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddSymlink("/bin", "").TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].symlink.target: must be set"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().AddSymlink("bin", "usr/bin").TryBuild(), StatusCode::kInvalidArgument,
                       "mounts[0].symlink.dst"));
}

// --- Limits ---

// One limit, its field name and its accepted range.
struct LimitCase {
  const char* field;
  uint64_t Limits::*wide = nullptr;    // for uint64_t limits
  uint32_t Limits::*narrow = nullptr;  // for uint32_t limits
  uint64_t min;
  uint64_t max;
};

void SetLimit(Limits& limits, const LimitCase& c, uint64_t value) {
  if (c.wide != nullptr) limits.*(c.wide) = value;
  if (c.narrow != nullptr) limits.*(c.narrow) = static_cast<uint32_t>(value);
}

const LimitCase kLimitCases[] = {
    {"limits.memory_max_bytes", &Limits::memory_max_bytes, nullptr, kMiB, kTiB},
    {"limits.pids_max", nullptr, &Limits::pids_max, 1, 4194304},
    {"limits.cpu_millicores", nullptr, &Limits::cpu_millicores, 10, 1024000},
    {"limits.wall_time_limit_ms", &Limits::wall_time_limit_ms, nullptr, 1, uint64_t{7} * 24 * 3600 * 1000},
    {"limits.open_files_max", &Limits::open_files_max, nullptr, 3, 1048576},
    {"limits.file_size_max_bytes", &Limits::file_size_max_bytes, nullptr, 1, kTiB},
    {"limits.output_max_bytes", &Limits::output_max_bytes, nullptr, 1, kTiB},
};

TEST(PolicyBuilderTest, LimitsMustBeWithinBounds) {
  for (const LimitCase& c : kLimitCases) {
    SCOPED_TRACE(c.field);
    Limits limits;
    SetLimit(limits, c, 0);
    EXPECT_TRUE(StatusIs(PolicyBuilder().SetLimits(limits).TryBuild(), StatusCode::kInvalidArgument,
                         std::string(c.field) + ": 0 is not allowed (must be between "));
    if (c.min > 1) {
      SetLimit(limits, c, c.min - 1);
      EXPECT_TRUE(StatusIs(PolicyBuilder().SetLimits(limits).TryBuild(), StatusCode::kInvalidArgument,
                           std::string(c.field) + ": " + std::to_string(c.min - 1) + " is out of range"));
    }
    SetLimit(limits, c, c.min);
    EXPECT_TRUE(IsOk(PolicyBuilder().SetLimits(limits).TryBuild()));
    SetLimit(limits, c, c.max);
    EXPECT_TRUE(IsOk(PolicyBuilder().SetLimits(limits).TryBuild()));
    if (c.wide != nullptr) {
      SetLimit(limits, c, c.max + 1);
      EXPECT_TRUE(StatusIs(PolicyBuilder().SetLimits(limits).TryBuild(), StatusCode::kInvalidArgument,
                           std::string(c.field) + ": " + std::to_string(c.max + 1) + " is out of range"));
    }
  }
}

TEST(PolicyBuilderTest, LimitMessageStatesTheRangeInUnits) {
  Limits limits;
  limits.memory_max_bytes = 0;
  EXPECT_TRUE(StatusIs(PolicyBuilder().SetLimits(limits).TryBuild(), StatusCode::kInvalidArgument,
                       "limits.memory_max_bytes: 0 is not allowed (must be between 1 MiB and 1 TiB)"));
  limits = Limits();
  limits.pids_max = 4194305;
  EXPECT_TRUE(StatusIs(PolicyBuilder().SetLimits(limits).TryBuild(), StatusCode::kInvalidArgument,
                       "limits.pids_max: 4194305 is out of range (must be between 1 and 4194304)"));
}

// --- Identity, names, environment ---

TEST(PolicyBuilderTest, IdsMustBeUnprivilegedAndBelow65536) {
  EXPECT_TRUE(
      StatusIs(PolicyBuilder().SetIds(0, 1000).TryBuild(), StatusCode::kInvalidArgument, "ids.uid: 0"));
  EXPECT_TRUE(
      StatusIs(PolicyBuilder().SetIds(1000, 0).TryBuild(), StatusCode::kInvalidArgument, "ids.gid: 0"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().SetIds(65536, 1000).TryBuild(), StatusCode::kInvalidArgument,
                       "ids.uid: 65536 is out of range"));
  EXPECT_TRUE(IsOk(PolicyBuilder().SetIds(65535, 1).TryBuild()));
}

TEST(PolicyBuilderTest, HostnameIsShortAndPlain) {
  EXPECT_TRUE(StatusIs(PolicyBuilder().SetHostname("").TryBuild(), StatusCode::kInvalidArgument,
                       "hostname: \"\" must be 1 to 64 characters long"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().SetHostname(std::string(65, 'a')).TryBuild(),
                       StatusCode::kInvalidArgument, "hostname: "));
  EXPECT_TRUE(StatusIs(PolicyBuilder().SetHostname("my_box").TryBuild(), StatusCode::kInvalidArgument,
                       "hostname: \"my_box\" has a character outside [A-Za-z0-9-.]"));
  EXPECT_TRUE(
      StatusIs(PolicyBuilder().SetHostname("a b").TryBuild(), StatusCode::kInvalidArgument, "hostname"));
  EXPECT_TRUE(IsOk(PolicyBuilder().SetHostname(std::string(64, 'a')).TryBuild()));
  EXPECT_TRUE(IsOk(PolicyBuilder().SetHostname("Box-1.local").TryBuild()));
}

TEST(PolicyBuilderTest, EnvNamesMustBeValid) {
  for (const char* bad : {"", "1X", "A=B", "A-B", "A B", "ÄB"}) {
    SCOPED_TRACE(bad);
    EXPECT_TRUE(StatusIs(PolicyBuilder().SetEnv(bad, "v").TryBuild(), StatusCode::kInvalidArgument,
                         "env.set[0].name: "));
    EXPECT_TRUE(StatusIs(PolicyBuilder().AddEnvPassthrough(bad).TryBuild(), StatusCode::kInvalidArgument,
                         "env.passthrough[0]: "));
  }
  EXPECT_TRUE(StatusIs(PolicyBuilder().SetEnv("A", "x").SetEnv("A=B", "v").TryBuild(),
                       StatusCode::kInvalidArgument,
                       "env.set[1].name: \"A=B\" is not a valid variable name"));
  EXPECT_TRUE(StatusIs(PolicyBuilder().SetEnv("A", std::string("x\0y", 3)).TryBuild(),
                       StatusCode::kInvalidArgument, "env.set[0].value: contains a NUL byte"));
  EXPECT_TRUE(IsOk(PolicyBuilder().SetEnv("_a1", "").AddEnvPassthrough("TERM").TryBuild()));
}

TEST(PolicyBuilderTest, SetEnvReplacesAndPassthroughIsASet) {
  ASSERT_OK_AND_ASSIGN(Policy policy, PolicyBuilder()
                                          .SetEnv("A", "1")
                                          .SetEnv("B", "2")
                                          .SetEnv("A", "3")
                                          .AddEnvPassthrough("TERM")
                                          .AddEnvPassthrough("TERM")
                                          .TryBuild());
  ASSERT_EQ(policy.spec().env.size(), 2u);
  EXPECT_EQ(policy.spec().env[0].name, "A");
  EXPECT_EQ(policy.spec().env[0].value, "3");
  EXPECT_EQ(policy.spec().env_passthrough.size(), 1u);
}

// --- Seccomp ---

absl::Status BuildSeccomp(const SeccompPolicy& seccomp) {
  return PolicyBuilder().SetSeccomp(seccomp).TryBuild().status();
}

TEST(PolicyBuilderTest, SeccompSyscallNamesAreNonEmptyNames) {
  SeccompPolicy seccomp;
  seccomp.rules.push_back(Rule("", SeccompAction::kErrno));
  EXPECT_TRUE(
      StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument, "seccomp.rules[0].syscall: must be set"));
  seccomp.rules[0].syscall = "mount ";
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].syscall: \"mount \" is not a syscall name"));
}

TEST(PolicyBuilderTest, SeccompArgIndexIsZeroToFive) {
  SeccompPolicy seccomp;
  seccomp.rules.push_back(Rule("ioctl", SeccompAction::kErrno));
  seccomp.rules[0].args.push_back(Arg(6, SyscallArgCondition::Op::kEq, 1));
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].args[0].index: 6 is out of range (must be between 0 and 5)"));
  seccomp.rules[0].args[0].index = 5;
  EXPECT_TRUE(IsOk(BuildSeccomp(seccomp)));
}

TEST(PolicyBuilderTest, SeccompArgConditionsMustBeAbleToMatch) {
  SeccompPolicy seccomp;
  seccomp.rules.push_back(Rule("ioctl", SeccompAction::kErrno));
  seccomp.rules[0].args.push_back(Arg(1, SyscallArgCondition::Op::kMaskedEq, 0x1ff, 0xff));
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].args[0].value: 0x1ff has bits outside the mask 0xff"));
  seccomp.rules[0].args[0] = Arg(1, SyscallArgCondition::Op::kMaskedEq, 0, 0);
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument, "seccomp.rules[0].args[0].mask"));
  seccomp.rules[0].args[0] = Arg(0, SyscallArgCondition::Op::kAnyBitsSet, 0);
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].args[0].value: 0 has no bits to test"));
  seccomp.rules[0].args[0] = Arg(0, SyscallArgCondition::Op::kEq, 1, 0xff);
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].args[0].mask: is only meaningful with MASKED_EQ"));
  seccomp.rules[0].args[0] = Arg(1, SyscallArgCondition::Op::kEq, 1);
  seccomp.rules[0].args.push_back(Arg(1, SyscallArgCondition::Op::kNe, 2));
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].args[1].index: argument 1 already has a condition (args[0])"));
}

TEST(PolicyBuilderTest, SeccompNeConditionsMayRepeatAnArgument) {
  SeccompPolicy seccomp;
  seccomp.rules.push_back(Rule("personality", SeccompAction::kErrno));
  seccomp.rules[0].args.push_back(Arg(0, SyscallArgCondition::Op::kNe, 0));
  seccomp.rules[0].args.push_back(Arg(1, SyscallArgCondition::Op::kEq, 5));
  seccomp.rules[0].args.push_back(Arg(0, SyscallArgCondition::Op::kNe, 8));
  EXPECT_TRUE(IsOk(BuildSeccomp(seccomp)));

  seccomp.rules[0].args.push_back(Arg(0, SyscallArgCondition::Op::kNe, 8));
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].args[3].value: 0x8 repeats args[2]"));
  seccomp.rules[0].args[3] = Arg(1, SyscallArgCondition::Op::kNe, 8);
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].args[3].index: argument 1 already has a condition (args[1]); only NE "
                       "conditions may repeat an argument"));

  seccomp.rules[0].args.clear();
  for (uint64_t v = 0; v < 9; ++v) seccomp.rules[0].args.push_back(Arg(2, SyscallArgCondition::Op::kNe, v));
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].args[8]: more than 8 NE conditions on argument 2"));
  seccomp.rules[0].args.pop_back();
  EXPECT_TRUE(IsOk(BuildSeccomp(seccomp)));
}

TEST(PolicyBuilderTest, SeccompErrnoIsOneTo4095) {
  SeccompPolicy seccomp;
  seccomp.rules.push_back(Rule("ptrace", SeccompAction::kErrno, 0));
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].errno_value: 0 is not allowed"));
  seccomp.rules[0].errno_value = 4096;
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[0].errno_value: 4096 is out of range (must be between 1 and 4095)"));
  seccomp.rules[0].errno_value = 4095;
  EXPECT_TRUE(IsOk(BuildSeccomp(seccomp)));

  SeccompPolicy errno_default;
  errno_default.default_action = SeccompAction::kErrno;
  errno_default.default_errno = 0;
  EXPECT_TRUE(
      StatusIs(BuildSeccomp(errno_default), StatusCode::kInvalidArgument, "seccomp.default_errno: 0"));
}

TEST(PolicyBuilderTest, SeccompAllowRuleUnderDefaultAllowIsAContradiction) {
  SeccompPolicy seccomp;
  seccomp.rules.push_back(Rule("read", SeccompAction::kAllow));
  EXPECT_TRUE(
      StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
               "seccomp.rules[0].action: ALLOW for \"read\" under default_action ALLOW is a contradiction"));
  // The same allow-list makes sense under every other default.
  for (SeccompAction action : {SeccompAction::kErrno, SeccompAction::kKill, SeccompAction::kLog}) {
    seccomp.default_action = action;
    EXPECT_TRUE(IsOk(BuildSeccomp(seccomp)));
  }
}

TEST(PolicyBuilderTest, SeccompRuleThatRepeatsTheDefaultHasNoEffect) {
  SeccompPolicy seccomp;
  seccomp.default_action = SeccompAction::kErrno;
  seccomp.default_errno = 1;
  seccomp.rules.push_back(Rule("ptrace", SeccompAction::kErrno, 1));
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument, "seccomp.rules[0].action"));
  seccomp.rules[0].errno_value = 38;  // a different errno is a real rule
  EXPECT_TRUE(IsOk(BuildSeccomp(seccomp)));
}

TEST(PolicyBuilderTest, SeccompUnconditionalRuleIsTheOnlyOneForItsSyscall) {
  SeccompPolicy seccomp;
  seccomp.rules.push_back(Rule("clone3", SeccompAction::kErrno, 38));
  seccomp.rules.push_back(Rule("clone3", SeccompAction::kErrno, 1));
  EXPECT_TRUE(StatusIs(BuildSeccomp(seccomp), StatusCode::kInvalidArgument,
                       "seccomp.rules[1].syscall: \"clone3\" already has a rule (seccomp.rules[0])"));

  SeccompPolicy conditional;
  conditional.rules.push_back(Rule("ioctl", SeccompAction::kErrno));
  conditional.rules[0].args.push_back(Arg(1, SyscallArgCondition::Op::kMaskedEq, 0x5412, 0xffffffff));
  conditional.rules.push_back(conditional.rules[0]);
  conditional.rules[1].args[0].value = 0x541c;
  EXPECT_TRUE(IsOk(BuildSeccomp(conditional)));
  conditional.rules.push_back(Rule("ioctl", SeccompAction::kKill));
  EXPECT_TRUE(StatusIs(BuildSeccomp(conditional), StatusCode::kInvalidArgument, "seccomp.rules[2].syscall"));
}

// --- Narrowing ---

Policy Ceiling() {
  Limits limits;  // 512 MiB, 256 pids, 1000 mCPU, 10 min, 1024 files, 1 GiB files, 64 MiB output
  return PolicyBuilder().SetName("ceiling").AddTmpfs("/tmp", kMiB).SetLimits(limits).TryBuild().value();
}

TEST(NarrowPolicyTest, NarrowerValuesApplyAndTheRestIsKept) {
  const Policy ceiling = Ceiling();
  PolicyNarrowing narrowing;
  narrowing.memory_max_bytes = 128 * kMiB;
  narrowing.pids_max = 32;
  narrowing.wall_time_limit_ms = 1000;
  ASSERT_OK_AND_ASSIGN(Policy narrowed, NarrowPolicy(ceiling, narrowing));
  EXPECT_EQ(narrowed.limits().memory_max_bytes, 128 * kMiB);
  EXPECT_EQ(narrowed.limits().pids_max, 32u);
  EXPECT_EQ(narrowed.limits().wall_time_limit_ms, 1000u);
  EXPECT_EQ(narrowed.limits().cpu_millicores, ceiling.limits().cpu_millicores);
  EXPECT_EQ(narrowed.limits().output_max_bytes, ceiling.limits().output_max_bytes);
  EXPECT_EQ(narrowed.name(), "ceiling");
  EXPECT_EQ(narrowed.mounts().size(), 1u);
}

TEST(NarrowPolicyTest, EqualToTheCeilingIsAllowed) {
  const Policy ceiling = Ceiling();
  PolicyNarrowing narrowing;
  narrowing.memory_max_bytes = ceiling.limits().memory_max_bytes;
  narrowing.open_files_max = ceiling.limits().open_files_max;
  EXPECT_TRUE(IsOk(NarrowPolicy(ceiling, narrowing)));
  EXPECT_TRUE(IsOk(NarrowPolicy(ceiling, PolicyNarrowing())));
}

TEST(NarrowPolicyTest, WiderIsPermissionDeniedNamingFieldAndBothValues) {
  const Policy ceiling = Ceiling();
  PolicyNarrowing narrowing;
  narrowing.memory_max_bytes = kGiB;
  EXPECT_TRUE(StatusIs(NarrowPolicy(ceiling, narrowing), StatusCode::kPermissionDenied,
                       "limits.memory_max_bytes: 1073741824 exceeds the policy ceiling 536870912"));

  struct Case {
    const char* field;
    PolicyNarrowing narrowing;
  };
  Case cases[7];
  cases[0] = {"limits.memory_max_bytes: ", {}};
  cases[0].narrowing.memory_max_bytes = 513 * kMiB;
  cases[1] = {"limits.pids_max: 257 exceeds the policy ceiling 256", {}};
  cases[1].narrowing.pids_max = 257;
  cases[2] = {"limits.cpu_millicores: 2000 exceeds the policy ceiling 1000", {}};
  cases[2].narrowing.cpu_millicores = 2000;
  cases[3] = {"limits.wall_time_limit_ms: 600001 exceeds the policy ceiling 600000", {}};
  cases[3].narrowing.wall_time_limit_ms = 600001;
  cases[4] = {"limits.open_files_max: 1025 exceeds the policy ceiling 1024", {}};
  cases[4].narrowing.open_files_max = 1025;
  cases[5] = {"limits.file_size_max_bytes: ", {}};
  cases[5].narrowing.file_size_max_bytes = 2 * kGiB;
  cases[6] = {"limits.output_max_bytes: ", {}};
  cases[6].narrowing.output_max_bytes = 65 * kMiB;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    EXPECT_TRUE(StatusIs(NarrowPolicy(ceiling, c.narrowing), StatusCode::kPermissionDenied, c.field));
  }
}

TEST(NarrowPolicyTest, ZeroOrAbsurdIsInvalidArgument) {
  const Policy ceiling = Ceiling();
  PolicyNarrowing zero;
  zero.pids_max = 0;
  EXPECT_TRUE(StatusIs(NarrowPolicy(ceiling, zero), StatusCode::kInvalidArgument,
                       "limits.pids_max: 0 is not allowed (must be between 1 and 4194304)"));
  PolicyNarrowing tiny;
  tiny.memory_max_bytes = 4096;  // below 1 MiB
  EXPECT_TRUE(StatusIs(NarrowPolicy(ceiling, tiny), StatusCode::kInvalidArgument,
                       "limits.memory_max_bytes: 4096 is out of range"));
  PolicyNarrowing absurd;
  absurd.wall_time_limit_ms = uint64_t{30} * 24 * 3600 * 1000;  // 30 days: absurd before it is too wide
  EXPECT_TRUE(
      StatusIs(NarrowPolicy(ceiling, absurd), StatusCode::kInvalidArgument, "limits.wall_time_limit_ms"));
  PolicyNarrowing few_files;
  few_files.open_files_max = 2;
  EXPECT_TRUE(
      StatusIs(NarrowPolicy(ceiling, few_files), StatusCode::kInvalidArgument, "limits.open_files_max"));
}

}  // namespace
}  // namespace sbx::sandbox
