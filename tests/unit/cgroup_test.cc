// Tests for sandbox/cgroup: (a) layout discovery from /proc texts, (b) the writer and reader against a temp
// directory that imitates cgroupfs, (c) the real cgroupfs (as root, with memory and pids controllers).
#include "sandbox/cgroup/cgroup.h"

#include <fcntl.h>
#include <ftw.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

// ---------------------------------------------------------------------------------------------------------
// The fake cgroupfs. Like the kernel, it fills every directory made below one of its hierarchies with that
// hierarchy's interface files. It does so by interposing mkdir(2) in this test binary (a syscall seam), so
// the code under test runs unchanged and makes its directories exactly as it does on cgroupfs.
namespace {

struct FakeHierarchy {
  std::string root;
  std::vector<std::pair<std::string, std::string>> files;  // name -> initial content
};

std::vector<FakeHierarchy>* g_fake_hierarchies = nullptr;

void WriteText(const std::string& path, const std::string& text) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (write(fd, text.data(), text.size()) < 0) perror(path.c_str());
  close(fd);
}

}  // namespace

extern "C" int mkdir(const char* path, mode_t mode) noexcept {
  const long rc = syscall(SYS_mkdirat, AT_FDCWD, path, mode);
  if (rc == 0 && g_fake_hierarchies != nullptr) {
    const std::string dir(path);
    for (const FakeHierarchy& h : *g_fake_hierarchies) {
      if (dir.size() > h.root.size() && dir.compare(0, h.root.size(), h.root) == 0 &&
          dir[h.root.size()] == '/') {
        for (const auto& [name, content] : h.files) WriteText(dir + "/" + name, content);
      }
    }
  }
  return static_cast<int>(rc);
}

namespace sbx::sandbox {
namespace {

using std::chrono::milliseconds;

constexpr uint64_t kMiB = uint64_t{1} << 20;

bool HasText(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

std::string ReadText(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "<cannot open " + path + ">";
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

// The content without its trailing newline.
std::string ReadValue(const std::string& path) {
  std::string text = ReadText(path);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

std::vector<pid_t> ProcsOf(const std::string& dir) {
  std::vector<pid_t> pids;
  const std::string text = ReadText(dir + "/cgroup.procs");
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = text.find('\n', pos);
    const std::string line = text.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    if (!line.empty()) pids.push_back(static_cast<pid_t>(std::stol(line)));
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return pids;
}

void RemoveTree(const std::string& root) {
  nftw(
      root.c_str(), [](const char* path, const struct stat*, int, struct FTW*) { return remove(path); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

// ---------------------------------------------------------------------------------------------------------
// (a) CgroupLayoutFromProc.

// This machine: cgroup v1 hybrid, from /proc/self/mountinfo and /proc/self/cgroup.
constexpr char kHybridMountinfo[] =
    R"(22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334432k,nr_inodes=3083608,mode=755
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
)";
constexpr char kHybridSelf[] =
    R"(9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/b99cc8aee228621e29415be0c009c207
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
)";

TEST(CgroupLayoutFromProcTest, ThisMachinesV1Hybrid) {
  absl::StatusOr<CgroupLayout> layout = CgroupLayoutFromProc(kHybridMountinfo, kHybridSelf, "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->version, CgroupVersion::kV1);
  EXPECT_EQ(layout->v1_memory,
            "/sys/fs/cgroup/memory/process_api/b99cc8aee228621e29415be0c009c207/sandbox-agent");
  EXPECT_EQ(layout->v1_pids, "/sys/fs/cgroup/pids/sandbox-agent");
  EXPECT_EQ(layout->v1_cpu, "/sys/fs/cgroup/cpu/sandbox-agent");
  EXPECT_EQ(layout->v1_cpuacct, "/sys/fs/cgroup/cpuacct/sandbox-agent");
  EXPECT_EQ(layout->v1_freezer, "/sys/fs/cgroup/freezer/sandbox-agent");
  EXPECT_EQ(layout->v2_parent, "");
}

TEST(CgroupLayoutFromProcTest, PureV2OnASystemdHost) {
  constexpr char kMountinfo[] =
      R"(22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 24 0:25 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
)";
  absl::StatusOr<CgroupLayout> layout =
      CgroupLayoutFromProc(kMountinfo, "0::/system.slice/sandbox-agent.service\n", "sessions");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->version, CgroupVersion::kV2);
  EXPECT_EQ(layout->v2_parent, "/sys/fs/cgroup/system.slice/sandbox-agent.service/sessions");
  EXPECT_EQ(layout->v1_memory, "");
  EXPECT_EQ(layout->v1_pids, "");
}

// A process already in the leaf "<x>/agent" (an earlier agent moved its caller there, or a restarted agent is
// its child) uses "<x>/sandbox-agent", beside the leaf: the same parent as the agent before it, so a restarted
// agent finds the cgroups a dead one left, and repeated runs do not nest one level deeper each time.
TEST(CgroupLayoutFromProcTest, V2FromTheAgentLeafUsesTheParentBesideIt) {
  constexpr char kMountinfo[] =
      R"(26 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
)";
  absl::StatusOr<CgroupLayout> layout =
      CgroupLayoutFromProc(kMountinfo, "0::/system.slice/ci.service/agent\n", "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->v2_parent, "/sys/fs/cgroup/system.slice/ci.service/sandbox-agent");
  // Only the leaf of that name: a cgroup merely containing "agent" in its name is ours as it is.
  layout = CgroupLayoutFromProc(kMountinfo, "0::/system.slice/agent.service\n", "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->v2_parent, "/sys/fs/cgroup/system.slice/agent.service/sandbox-agent");
  // The root cgroup's "agent" child has nothing above it to use.
  layout = CgroupLayoutFromProc(kMountinfo, "0::/agent\n", "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->v2_parent, "/sys/fs/cgroup/sandbox-agent");
}

TEST(CgroupLayoutFromProcTest, V2InAContainerStripsTheMountRoot) {
  constexpr char kMountinfo[] =
      R"(1432 1400 0:310 / / rw,relatime master:512 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1500 1432 0:312 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1510 1500 0:26 /kubepods/burstable/pod5b3c9a1e/4f5e2d1c /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
)";
  absl::StatusOr<CgroupLayout> layout =
      CgroupLayoutFromProc(kMountinfo, "0::/kubepods/burstable/pod5b3c9a1e/4f5e2d1c\n", "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->version, CgroupVersion::kV2);
  EXPECT_EQ(layout->v2_parent, "/sys/fs/cgroup/sandbox-agent");

  // A process in the leaf an agent moved itself (and its caller) into below the container's cgroup: the
  // sessions' parent is the one beside that leaf, as for the agent before it.
  layout = CgroupLayoutFromProc(kMountinfo, "0::/kubepods/burstable/pod5b3c9a1e/4f5e2d1c/agent\n",
                                "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->v2_parent, "/sys/fs/cgroup/sandbox-agent");

  // A sibling path that merely shares a prefix is not below the mount root.
  layout =
      CgroupLayoutFromProc(kMountinfo, "0::/kubepods/burstable/pod5b3c9a1e/4f5e2d1cX\n", "sandbox-agent");
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kFailedPrecondition) << layout.status();
  EXPECT_TRUE(HasText(Message(layout.status()), "/kubepods/burstable/pod5b3c9a1e/4f5e2d1cX"))
      << layout.status();
}

TEST(CgroupLayoutFromProcTest, V2InACgroupNamespace) {
  constexpr char kMountinfo[] =
      "900 880 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
  absl::StatusOr<CgroupLayout> layout = CgroupLayoutFromProc(kMountinfo, "0::/\n", "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->v2_parent, "/sys/fs/cgroup/sandbox-agent");
}

TEST(CgroupLayoutFromProcTest, UnescapesMountPoints) {
  constexpr char kMountinfo[] = "900 880 0:26 / /mnt/cgroup\\040root rw - cgroup2 cgroup2 rw\n";
  absl::StatusOr<CgroupLayout> layout = CgroupLayoutFromProc(kMountinfo, "0::/a\n", "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->v2_parent, "/mnt/cgroup root/a/sandbox-agent");
}

TEST(CgroupLayoutFromProcTest, CombinedCpuCpuacctV1Mount) {
  constexpr char kMountinfo[] =
      R"(25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
31 25 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,net_cls,net_prio
)";
  constexpr char kSelf[] =
      R"(11:pids:/system.slice/sandbox-agent.service
10:memory:/system.slice/sandbox-agent.service
4:cpu,cpuacct:/system.slice/sandbox-agent.service
3:net_cls,net_prio:/
1:name=systemd:/system.slice/sandbox-agent.service
0::/system.slice/sandbox-agent.service
)";
  absl::StatusOr<CgroupLayout> layout = CgroupLayoutFromProc(kMountinfo, kSelf, "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->version, CgroupVersion::kV1);
  const std::string service = "/system.slice/sandbox-agent.service/sandbox-agent";
  EXPECT_EQ(layout->v1_memory, "/sys/fs/cgroup/memory" + service);
  EXPECT_EQ(layout->v1_pids, "/sys/fs/cgroup/pids" + service);
  EXPECT_EQ(layout->v1_cpu, "/sys/fs/cgroup/cpu,cpuacct" + service);
  EXPECT_EQ(layout->v1_cpuacct, "/sys/fs/cgroup/cpu,cpuacct" + service);
  EXPECT_EQ(layout->v1_freezer, "");  // not mounted: optional
}

TEST(CgroupLayoutFromProcTest, V1InAContainerStripsTheMountRoot) {
  constexpr char kMountinfo[] =
      R"(700 690 0:40 /docker/0123abcd /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:20 - cgroup cgroup rw,memory
701 690 0:41 /docker/0123abcd /sys/fs/cgroup/pids ro,nosuid,nodev,noexec,relatime master:21 - cgroup cgroup rw,pids
)";
  constexpr char kSelf[] = "9:memory:/docker/0123abcd\n5:pids:/docker/0123abcd/agent\n0::/\n";
  absl::StatusOr<CgroupLayout> layout = CgroupLayoutFromProc(kMountinfo, kSelf, "sandbox-agent");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->version, CgroupVersion::kV1);
  EXPECT_EQ(layout->v1_memory, "/sys/fs/cgroup/memory/sandbox-agent");
  EXPECT_EQ(layout->v1_pids, "/sys/fs/cgroup/pids/agent/sandbox-agent");
  EXPECT_EQ(layout->v1_cpu, "");
}

TEST(CgroupLayoutFromProcTest, MissingPidsControllerIsNamed) {
  std::string mountinfo = kHybridMountinfo;
  const std::string pids_line = "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n";
  ASSERT_NE(mountinfo.find(pids_line), std::string::npos);
  mountinfo.erase(mountinfo.find(pids_line), pids_line.size());
  absl::StatusOr<CgroupLayout> layout = CgroupLayoutFromProc(mountinfo, kHybridSelf, "sandbox-agent");
  ASSERT_EQ(layout.status().code(), absl::StatusCode::kFailedPrecondition) << layout.status();
  EXPECT_TRUE(HasText(Message(layout.status()), "pids")) << layout.status();
  EXPECT_TRUE(HasText(Message(layout.status()), "controller(s) pids not mounted")) << layout.status();
}

TEST(CgroupLayoutFromProcTest, NoCgroupsAtAllNamesBothControllers) {
  absl::StatusOr<CgroupLayout> layout =
      CgroupLayoutFromProc("22 27 0:21 / /proc rw,relatime - proc proc rw\n", "0::/\n", "sandbox-agent");
  ASSERT_EQ(layout.status().code(), absl::StatusCode::kFailedPrecondition) << layout.status();
  EXPECT_TRUE(HasText(Message(layout.status()), "memory, pids")) << layout.status();
}

TEST(CgroupLayoutFromProcTest, RejectsSubdirsThatAreNotOneComponent) {
  for (const char* subdir : {"", ".", "..", "a/b", "/abs"}) {
    EXPECT_EQ(CgroupLayoutFromProc(kHybridMountinfo, kHybridSelf, subdir).status().code(),
              absl::StatusCode::kInvalidArgument)
        << "subdir \"" << subdir << "\"";
  }
}

// ---------------------------------------------------------------------------------------------------------
// (b) The writer against a temp directory that imitates cgroupfs.

using Files = std::vector<std::pair<std::string, std::string>>;

class FakeCgroupfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sbx-cgroup-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr) << "mkdtemp: " << std::strerror(errno);
    root_ = tmpl;
    g_fake_hierarchies = &hierarchies_;
  }
  void TearDown() override {
    g_fake_hierarchies = nullptr;
    if (!root_.empty()) RemoveTree(root_);
  }

  // Makes `<root>/<name>/parent` (the layout's parent directory); directories made below it get `files`.
  std::string AddHierarchy(const std::string& name, Files files) {
    const std::string parent = root_ + "/" + name + "/parent";
    for (size_t pos = root_.size(); pos != std::string::npos;) {
      pos = parent.find('/', pos + 1);
      const std::string prefix = parent.substr(0, pos);
      EXPECT_TRUE(mkdir(prefix.c_str(), 0755) == 0 || errno == EEXIST)
          << prefix << ": " << std::strerror(errno);
    }
    hierarchies_.push_back({parent, std::move(files)});
    return parent;
  }

  static Files V1MemoryFiles() {
    return {{"cgroup.procs", ""},
            {"memory.limit_in_bytes", "9223372036854771712\n"},
            {"memory.memsw.limit_in_bytes", "9223372036854771712\n"},
            {"memory.swappiness", "60\n"},
            {"memory.max_usage_in_bytes", "12345678\n"},
            {"memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"}};
  }
  static Files V1PidsFiles() {
    return {{"cgroup.procs", ""}, {"pids.max", "max\n"}, {"pids.events", "max 7\n"}};
  }
  static Files V1CpuCpuacctFiles() {
    return {{"cgroup.procs", ""},
            {"cpu.cfs_period_us", "100000\n"},
            {"cpu.cfs_quota_us", "-1\n"},
            {"cpu.shares", "1024\n"},
            {"cpu.cfs_burst_us", "0\n"},
            {"cpuacct.usage_user", "2500000000\n"},
            {"cpuacct.usage_sys", "500000000\n"},
            {"cpuacct.stat", "user 250\nsystem 50\n"}};
  }
  static Files V2Files() {
    return {{"cgroup.procs", ""},
            {"cgroup.kill", ""},
            {"cgroup.freeze", "0\n"},
            {"cgroup.events", "populated 0\nfrozen 0\n"},
            {"memory.max", "max\n"},
            {"memory.swap.max", "max\n"},
            {"memory.current", "1000\n"},
            {"memory.peak", "4096000\n"},
            {"memory.events", "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n"},
            {"pids.max", "max\n"},
            {"pids.events", "max 7\n"},
            {"cpu.max", "max 100000\n"},
            {"cpu.weight", "100\n"},
            {"cpu.max.burst", "0\n"},
            {"cpu.stat", "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\nnr_periods 0\n"}};
  }
  static Files Without(Files files, const std::vector<std::string>& names) {
    files.erase(std::remove_if(files.begin(), files.end(),
                               [&](const auto& f) {
                                 return std::find(names.begin(), names.end(), f.first) != names.end();
                               }),
                files.end());
    return files;
  }
  static Files With(Files files, const std::string& name, const std::string& content) {
    for (auto& f : files) {
      if (f.first == name) f.second = content;
    }
    return files;
  }

  std::string root_;
  std::vector<FakeHierarchy> hierarchies_;
};

TEST_F(FakeCgroupfsTest, V1CreateWritesLimitsInEveryHierarchy) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV1;
  layout.v1_memory = AddHierarchy("memory", V1MemoryFiles());
  layout.v1_pids = AddHierarchy("pids", V1PidsFiles());
  layout.v1_cpu = AddHierarchy("cpu,cpuacct", V1CpuCpuacctFiles());
  layout.v1_cpuacct = layout.v1_cpu;  // co-mounted
  layout.v1_freezer = AddHierarchy("freezer", {{"cgroup.procs", ""}, {"freezer.state", "THAWED\n"}});

  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "s1", {64 * kMiB, 16, 1500});
  ASSERT_TRUE(cg.ok()) << cg.status();
  const std::string mem = layout.v1_memory + "/s1";
  EXPECT_EQ(cg->memory_path(), mem);
  EXPECT_EQ(cg->pids_path(), layout.v1_pids + "/s1");
  EXPECT_EQ(cg->v2_dir_fd(), -1);
  EXPECT_EQ(ReadValue(mem + "/memory.limit_in_bytes"), "67108864");
  EXPECT_EQ(ReadValue(mem + "/memory.memsw.limit_in_bytes"), "67108864");
  EXPECT_EQ(ReadValue(mem + "/memory.swappiness"), "0");
  EXPECT_EQ(ReadValue(mem + "/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3");  // untouched
  EXPECT_EQ(ReadValue(layout.v1_pids + "/s1/pids.max"), "16");
  EXPECT_EQ(ReadValue(layout.v1_cpu + "/s1/cpu.cfs_period_us"), "100000");
  EXPECT_EQ(ReadValue(layout.v1_cpu + "/s1/cpu.cfs_quota_us"), "150000");
  EXPECT_EQ(ReadValue(layout.v1_cpu + "/s1/cpu.cfs_burst_us"), "150000");  // one period's quota may be banked
  EXPECT_TRUE(Exists(layout.v1_freezer + "/s1/freezer.state"));
}

TEST_F(FakeCgroupfsTest, V1ReadUsageParsesKernelFiles) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV1;
  layout.v1_memory = AddHierarchy("memory", V1MemoryFiles());
  layout.v1_pids = AddHierarchy("pids", V1PidsFiles());
  layout.v1_cpu = AddHierarchy("cpu,cpuacct", V1CpuCpuacctFiles());
  layout.v1_cpuacct = layout.v1_cpu;

  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "s1", {});
  ASSERT_TRUE(cg.ok()) << cg.status();
  absl::StatusOr<CgroupUsage> usage = cg->ReadUsage();
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_TRUE(usage->cpu_known);
  EXPECT_EQ(usage->cpu_user_us, 2500000u);  // cpuacct.usage_user is in ns
  EXPECT_EQ(usage->cpu_sys_us, 500000u);
  EXPECT_EQ(usage->memory_peak_bytes, 12345678u);
  EXPECT_EQ(usage->oom_kills, 3u);
  EXPECT_EQ(usage->pids_max_events, 7u);
  absl::StatusOr<uint64_t> pids_events = cg->ReadPidsMaxEvents();
  ASSERT_TRUE(pids_events.ok()) << pids_events.status();
  EXPECT_EQ(*pids_events, 7u);
  // No limits asked for: the kernel's defaults stay.
  EXPECT_EQ(ReadValue(cg->memory_path() + "/memory.limit_in_bytes"), "9223372036854771712");
  EXPECT_EQ(ReadValue(cg->pids_path() + "/pids.max"), "max");
  EXPECT_EQ(ReadValue(layout.v1_cpu + "/s1/cpu.cfs_quota_us"), "-1");
}

TEST_F(FakeCgroupfsTest, V1OlderKernelFilesAndOptionalHierarchies) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV1;
  // No swap accounting, no oom_kill line (kernel < 4.13), no cpuacct.usage_user (kernel < 4.16), no cpu and
  // no freezer hierarchy.
  layout.v1_memory = AddHierarchy(
      "memory", With(Without(V1MemoryFiles(), {"memory.memsw.limit_in_bytes", "memory.swappiness"}),
                     "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n"));
  layout.v1_pids = AddHierarchy("pids", V1PidsFiles());
  layout.v1_cpuacct =
      AddHierarchy("cpuacct", {{"cgroup.procs", ""}, {"cpuacct.stat", "user 250\nsystem 50\n"}});

  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "s1", {64 * kMiB, 16, 1500});
  ASSERT_TRUE(cg.ok()) << cg.status();
  EXPECT_EQ(ReadValue(cg->memory_path() + "/memory.limit_in_bytes"), "67108864");
  EXPECT_FALSE(Exists(cg->memory_path() + "/memory.memsw.limit_in_bytes"));
  EXPECT_FALSE(Exists(cg->memory_path() + "/memory.swappiness"));
  EXPECT_TRUE(Exists(layout.v1_cpuacct + "/s1"));

  absl::StatusOr<CgroupUsage> usage = cg->ReadUsage();
  ASSERT_TRUE(usage.ok()) << usage.status();
  const uint64_t hz = static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
  EXPECT_EQ(usage->cpu_user_us, 250 * 1000000 / hz);
  EXPECT_EQ(usage->cpu_sys_us, 50 * 1000000 / hz);
  EXPECT_EQ(usage->oom_kills, 0u);
  EXPECT_EQ(usage->pids_max_events, 7u);
  // Without a freezer KillAll kills until cgroup.procs is empty; here it already is.
  EXPECT_TRUE(cg->KillAll().ok());
}

// Without a cpuacct hierarchy there is no cpu reading, and the usage says so (the jail then takes rusage).
TEST_F(FakeCgroupfsTest, V1WithoutCpuacctHasNoCpuReading) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV1;
  layout.v1_memory = AddHierarchy("memory", V1MemoryFiles());
  layout.v1_pids = AddHierarchy("pids", V1PidsFiles());
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "s1", {});
  ASSERT_TRUE(cg.ok()) << cg.status();
  absl::StatusOr<CgroupUsage> usage = cg->ReadUsage();
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_FALSE(usage->cpu_known);
  EXPECT_EQ(usage->cpu_user_us + usage->cpu_sys_us, 0u);
}

TEST_F(FakeCgroupfsTest, V1KillAllFreezesAndThaws) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV1;
  layout.v1_memory = AddHierarchy("memory", V1MemoryFiles());
  layout.v1_pids = AddHierarchy("pids", V1PidsFiles());
  layout.v1_freezer = AddHierarchy("freezer", {{"cgroup.procs", ""}, {"freezer.state", "THAWED\n"}});
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "s1", {});
  ASSERT_TRUE(cg.ok()) << cg.status();
  ASSERT_TRUE(cg->KillAll().ok());
  EXPECT_EQ(ReadValue(layout.v1_freezer + "/s1/freezer.state"), "THAWED");
}

TEST_F(FakeCgroupfsTest, CreateUndoesWhatItMadeOnFailure) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV1;
  layout.v1_memory = AddHierarchy("memory", {});  // empty directories, so the undo's rmdir can work here
  layout.v1_pids = AddHierarchy("pids", {});      // no pids.max: the write fails
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "s1", {0, 16, 0});
  ASSERT_EQ(cg.status().code(), absl::StatusCode::kNotFound) << cg.status();
  EXPECT_TRUE(HasText(Message(cg.status()), layout.v1_pids + "/s1/pids.max")) << cg.status();
  EXPECT_FALSE(Exists(layout.v1_memory + "/s1"));
  EXPECT_FALSE(Exists(layout.v1_pids + "/s1"));
}

TEST_F(FakeCgroupfsTest, CreateRefusesAnExistingCgroupAndLeavesItAlone) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV1;
  layout.v1_memory = AddHierarchy("memory", V1MemoryFiles());
  layout.v1_pids = AddHierarchy("pids", V1PidsFiles());
  absl::StatusOr<Cgroup> first = Cgroup::Create(layout, "s1", {64 * kMiB, 16, 0});
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<Cgroup> second = Cgroup::Create(layout, "s1", {32 * kMiB, 8, 0});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  EXPECT_TRUE(HasText(Message(second.status()), layout.v1_memory + "/s1")) << second.status();
  EXPECT_EQ(ReadValue(layout.v1_memory + "/s1/memory.limit_in_bytes"), "67108864");
  EXPECT_EQ(ReadValue(layout.v1_pids + "/s1/pids.max"), "16");
}

TEST_F(FakeCgroupfsTest, RejectsNamesThatAreNotOneComponent) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV1;
  layout.v1_memory = AddHierarchy("memory", V1MemoryFiles());
  layout.v1_pids = AddHierarchy("pids", V1PidsFiles());
  for (const char* name : {"", ".", "..", "a/b", "../escape"}) {
    EXPECT_EQ(Cgroup::Create(layout, name, {}).status().code(), absl::StatusCode::kInvalidArgument)
        << "name \"" << name << "\"";
  }
  EXPECT_FALSE(Exists(root_ + "/memory/escape"));
}

TEST_F(FakeCgroupfsTest, V2CreateWritesLimitsAndOpensTheDirectory) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV2;
  layout.v2_parent = AddHierarchy("unified", V2Files());
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "s1", {64 * kMiB, 16, 500});
  ASSERT_TRUE(cg.ok()) << cg.status();
  const std::string dir = layout.v2_parent + "/s1";
  EXPECT_EQ(cg->memory_path(), dir);
  EXPECT_EQ(cg->pids_path(), dir);
  EXPECT_EQ(ReadValue(dir + "/memory.max"), "67108864");
  EXPECT_EQ(ReadValue(dir + "/memory.swap.max"), "0");
  EXPECT_EQ(ReadValue(dir + "/pids.max"), "16");
  EXPECT_EQ(ReadValue(dir + "/cpu.max"), "50000 100000");
  EXPECT_EQ(ReadValue(dir + "/cpu.max.burst"), "50000");

  ASSERT_GE(cg->v2_dir_fd(), 0);
  struct stat by_fd {};
  struct stat by_path {};
  ASSERT_EQ(fstat(cg->v2_dir_fd(), &by_fd), 0);
  ASSERT_EQ(stat(dir.c_str(), &by_path), 0);
  EXPECT_EQ(by_fd.st_ino, by_path.st_ino);
  EXPECT_TRUE(fcntl(cg->v2_dir_fd(), F_GETFD) & FD_CLOEXEC);

  absl::StatusOr<CgroupUsage> usage = cg->ReadUsage();
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(usage->cpu_user_us, 2000u);
  EXPECT_EQ(usage->cpu_sys_us, 1000u);
  EXPECT_EQ(usage->memory_peak_bytes, 4096000u);  // memory.peak, not memory.current
  EXPECT_EQ(usage->oom_kills, 2u);                // oom_kill, not oom
  EXPECT_EQ(usage->pids_max_events, 7u);

  ASSERT_TRUE(cg->KillAll().ok());
  EXPECT_EQ(ReadValue(dir + "/cgroup.kill"), "1");
}

TEST_F(FakeCgroupfsTest, CpuBackgroundFromTheStartAndLater) {
  // A kernel with cpu.idle (>= 5.15): the whole group becomes SCHED_IDLE, its weight untouched.
  CgroupLayout v1;
  v1.version = CgroupVersion::kV1;
  v1.v1_memory = AddHierarchy("memory", V1MemoryFiles());
  v1.v1_pids = AddHierarchy("pids", V1PidsFiles());
  v1.v1_cpu = AddHierarchy("cpu,cpuacct", V1CpuCpuacctFiles());
  hierarchies_.back().files.push_back({"cpu.idle", "0\n"});
  CgroupLimits limits;
  limits.cpu_background = true;
  absl::StatusOr<Cgroup> a = Cgroup::Create(v1, "b1", limits);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(ReadValue(v1.v1_cpu + "/b1/cpu.idle"), "1");
  EXPECT_EQ(ReadValue(v1.v1_cpu + "/b1/cpu.shares"), "1024");
  ASSERT_TRUE(a->SetCpuBackground(false).ok());
  EXPECT_EQ(ReadValue(v1.v1_cpu + "/b1/cpu.idle"), "0");

  // Older kernels: the least weight, then the default again.
  CgroupLayout old_v1 = v1;
  old_v1.v1_cpu = AddHierarchy("cpu-old", V1CpuCpuacctFiles());
  absl::StatusOr<Cgroup> b = Cgroup::Create(old_v1, "b2", limits);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(ReadValue(old_v1.v1_cpu + "/b2/cpu.shares"), "2");
  ASSERT_TRUE(b->SetCpuBackground(false).ok());
  EXPECT_EQ(ReadValue(old_v1.v1_cpu + "/b2/cpu.shares"), "1024");

  CgroupLayout v2;
  v2.version = CgroupVersion::kV2;
  v2.v2_parent = AddHierarchy("unified", V2Files());
  absl::StatusOr<Cgroup> c = Cgroup::Create(v2, "b3", limits);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(ReadValue(v2.v2_parent + "/b3/cpu.weight"), "1");
  ASSERT_TRUE(c->SetCpuBackground(false).ok());
  EXPECT_EQ(ReadValue(v2.v2_parent + "/b3/cpu.weight"), "100");

  // No cpu controller: nothing to do, and no error.
  CgroupLayout bare;
  bare.version = CgroupVersion::kV1;
  bare.v1_memory = v1.v1_memory;
  bare.v1_pids = v1.v1_pids;
  absl::StatusOr<Cgroup> d = Cgroup::Create(bare, "b4", limits);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->SetCpuBackground(false).ok());
}

TEST_F(FakeCgroupfsTest, V2OlderKernelFallbacks) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV2;
  // No memory.peak (< 5.19), no cgroup.kill (< 5.14), no swap accounting, no cpu controller.
  layout.v2_parent = AddHierarchy(
      "unified", With(Without(V2Files(), {"memory.peak", "cgroup.kill", "memory.swap.max", "cpu.max"}),
                      "cgroup.events", "populated 0\nfrozen 1\n"));
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "s1", {64 * kMiB, 16, 500});
  ASSERT_TRUE(cg.ok()) << cg.status();
  const std::string dir = layout.v2_parent + "/s1";
  EXPECT_FALSE(Exists(dir + "/memory.swap.max"));
  EXPECT_FALSE(Exists(dir + "/cpu.max"));
  absl::StatusOr<CgroupUsage> usage = cg->ReadUsage();
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(usage->memory_peak_bytes, 1000u);  // memory.current
  // Freeze, kill what is listed (nothing), thaw.
  ASSERT_TRUE(cg->KillAll().ok());
  EXPECT_EQ(ReadValue(dir + "/cgroup.freeze"), "0");
  EXPECT_FALSE(Exists(dir + "/cgroup.kill"));
}

TEST_F(FakeCgroupfsTest, MovedFromCgroupIsEmpty) {
  CgroupLayout layout;
  layout.version = CgroupVersion::kV2;
  layout.v2_parent = AddHierarchy("unified", V2Files());
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "s1", {});
  ASSERT_TRUE(cg.ok()) << cg.status();
  const int fd = cg->v2_dir_fd();
  Cgroup moved(std::move(*cg));
  EXPECT_EQ(cg->v2_dir_fd(), -1);
  EXPECT_EQ(moved.v2_dir_fd(), fd);
  EXPECT_EQ(moved.memory_path(), layout.v2_parent + "/s1");
  EXPECT_TRUE(cg->Remove().ok());  // nothing left to remove
  EXPECT_TRUE(Exists(layout.v2_parent + "/s1/memory.max"));
  EXPECT_EQ(cg->AddProcess(getpid()).code(), absl::StatusCode::kFailedPrecondition);
}

// ---------------------------------------------------------------------------------------------------------
// (c) The real cgroupfs.

// SIGKILLs and reaps a child on scope exit unless released.
struct ChildGuard {
  pid_t pid = -1;
  ~ChildGuard() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

// waitpid with a deadline. False on timeout or error.
bool WaitBounded(pid_t pid, int* status, milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 || std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(2));
  }
}

// Reaps every child left (e.g. orphans handed to us as subreaper); returns how many died of SIGKILL.
int ReapAll(milliseconds timeout) {
  int killed = 0;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(-1, &status, WNOHANG);
    if (r > 0) {
      if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ++killed;
      continue;
    }
    if (r < 0 || std::chrono::steady_clock::now() > deadline) return killed;
    std::this_thread::sleep_for(milliseconds(2));
  }
}

pid_t ForkPausing() {
  const pid_t pid = fork();
  if (pid == 0) {
    while (true) pause();
  }
  return pid;
}

// The path of `pid`'s cgroup for `controller` (v1) or its v2 path ("" controller), from /proc/<pid>/cgroup.
std::string CgroupOf(pid_t pid, const std::string& controller) {
  const std::string text = ReadText("/proc/" + std::to_string(pid) + "/cgroup");
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    const size_t c1 = line.find(':');
    const size_t c2 = line.find(':', c1 + 1);
    if (c1 == std::string::npos || c2 == std::string::npos) continue;
    const std::string controllers = "," + line.substr(c1 + 1, c2 - c1 - 1) + ",";
    if (controller.empty() ? controllers == ",," : HasText(controllers, "," + controller + ",")) {
      return line.substr(c2 + 1);
    }
  }
  return "<no " + controller + " line in /proc/" + std::to_string(pid) + "/cgroup>";
}

class RealCgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: creates cgroups under /sys/fs/cgroup";
    subdir_ = "sbx-test-" + std::to_string(getpid());
    absl::StatusOr<CgroupLayout> layout =
        CgroupLayoutFromProc(ReadText("/proc/self/mountinfo"), ReadText("/proc/self/cgroup"), subdir_);
    if (!layout.ok()) GTEST_SKIP() << "no usable cgroup memory+pids controllers: " << layout.status();
    layout_ = *layout;  // for TearDown, even if preparing fails halfway
    absl::StatusOr<CgroupLayout> prepared = PrepareCgroupLayout(subdir_);
    if (prepared.status().code() == absl::StatusCode::kFailedPrecondition ||
        prepared.status().code() == absl::StatusCode::kPermissionDenied) {
      GTEST_SKIP() << "cgroup tree not usable here: " << prepared.status();
    }
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    layout_ = *prepared;
  }

  void TearDown() override {
    ReapAll(milliseconds(2000));
    std::vector<std::string> dirs;
    for (const std::string* d : {&layout_.v2_parent, &layout_.v1_memory, &layout_.v1_pids, &layout_.v1_cpu,
                                 &layout_.v1_cpuacct, &layout_.v1_freezer}) {
      if (!d->empty() && std::find(dirs.begin(), dirs.end(), *d) == dirs.end()) dirs.push_back(*d);
    }
    for (const std::string& dir : dirs) {
      if (rmdir(dir.c_str()) != 0 && errno != ENOENT) {
        ADD_FAILURE() << "rmdir " << dir << ": " << std::strerror(errno);
      }
    }
  }

  // Every directory the session cgroup `name` would have.
  std::vector<std::string> SessionDirs(const std::string& name) const {
    std::vector<std::string> dirs;
    for (const std::string* d : {&layout_.v2_parent, &layout_.v1_memory, &layout_.v1_pids, &layout_.v1_cpu,
                                 &layout_.v1_cpuacct, &layout_.v1_freezer}) {
      if (!d->empty()) dirs.push_back(*d + "/" + name);
    }
    return dirs;
  }

  void ExpectGone(const std::string& name) const {
    for (const std::string& dir : SessionDirs(name)) EXPECT_FALSE(Exists(dir)) << dir << " still exists";
  }

  bool HasCpuController() const {
    if (layout_.version == CgroupVersion::kV1) return !layout_.v1_cpu.empty();
    return HasText(" " + ReadValue(layout_.v2_parent + "/cgroup.controllers") + " ", " cpu ");
  }

  std::string subdir_;
  CgroupLayout layout_;
};

TEST_F(RealCgroupTest, AddProcessKillAllRemove) {
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout_, "basic", {64 * kMiB, 16, 0});
  ASSERT_TRUE(cg.ok()) << cg.status();
  const bool v1 = layout_.version == CgroupVersion::kV1;
  EXPECT_EQ(ReadValue(cg->memory_path() + (v1 ? "/memory.limit_in_bytes" : "/memory.max")), "67108864");
  EXPECT_EQ(ReadValue(cg->pids_path() + "/pids.max"), "16");
  if (v1 && Exists(cg->memory_path() + "/memory.memsw.limit_in_bytes")) {
    EXPECT_EQ(ReadValue(cg->memory_path() + "/memory.memsw.limit_in_bytes"), "67108864");
  }
  EXPECT_EQ(cg->v2_dir_fd() >= 0, !v1);

  ChildGuard child{ForkPausing()};
  ASSERT_GT(child.pid, 0) << std::strerror(errno);
  ASSERT_TRUE(cg->AddProcess(child.pid).ok());

  const std::string suffix = "/" + subdir_ + "/basic";
  for (const char* controller :
       v1 ? std::vector<const char*>{"memory", "pids"} : std::vector<const char*>{""}) {
    const std::string path = CgroupOf(child.pid, controller);
    EXPECT_TRUE(path.size() >= suffix.size() &&
                path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0)
        << controller << ": " << path;
  }
  const std::vector<pid_t> procs = ProcsOf(cg->memory_path());
  EXPECT_EQ(procs, std::vector<pid_t>{child.pid});

  ASSERT_TRUE(cg->KillAll().ok());
  int status = 0;
  ASSERT_TRUE(WaitBounded(std::exchange(child.pid, -1), &status, milliseconds(5000)));
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;

  const absl::Status removed = cg->Remove();
  ASSERT_TRUE(removed.ok()) << removed;
  ExpectGone("basic");
  EXPECT_TRUE(cg->Remove().ok());  // idempotent
}

TEST_F(RealCgroupTest, RemoveKillsWhatIsLeft) {
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout_, "leftover", {64 * kMiB, 16, 0});
  ASSERT_TRUE(cg.ok()) << cg.status();
  ChildGuard a{ForkPausing()};
  ChildGuard b{ForkPausing()};
  ASSERT_TRUE(a.pid > 0 && b.pid > 0);
  ASSERT_TRUE(cg->AddProcess(a.pid).ok());
  ASSERT_TRUE(cg->AddProcess(b.pid).ok());
  // The killed children stay unreaped (zombies) while Remove runs: they must not keep the cgroup busy.
  const absl::Status removed = cg->Remove();
  ASSERT_TRUE(removed.ok()) << removed;
  ExpectGone("leftover");
  for (ChildGuard* c : {&a, &b}) {
    int status = 0;
    ASSERT_TRUE(WaitBounded(std::exchange(c->pid, -1), &status, milliseconds(5000)));
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  }
}

TEST_F(RealCgroupTest, DestructorRemoves) {
  {
    absl::StatusOr<Cgroup> cg = Cgroup::Create(layout_, "scoped", {});
    ASSERT_TRUE(cg.ok()) << cg.status();
    EXPECT_TRUE(Exists(cg->memory_path()));
  }
  ExpectGone("scoped");
}

TEST_F(RealCgroupTest, CreateTwiceIsAlreadyExists) {
  absl::StatusOr<Cgroup> first = Cgroup::Create(layout_, "twice", {});
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<Cgroup> second = Cgroup::Create(layout_, "twice", {});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  EXPECT_TRUE(Exists(first->memory_path()));
  ASSERT_TRUE(first->Remove().ok());
  ExpectGone("twice");
}

TEST_F(RealCgroupTest, CreateUndoesWhenTheKernelRefusesALimit) {
  if (!HasCpuController()) GTEST_SKIP() << "no cpu controller in this cgroup tree";
  // 1 millicore = a 100 us quota; the kernel's minimum is 1000 us.
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout_, "undo", {64 * kMiB, 16, 1});
  ASSERT_EQ(cg.status().code(), absl::StatusCode::kInvalidArgument) << cg.status();
  EXPECT_TRUE(HasText(Message(cg.status()), "/undo/cpu.")) << cg.status();
  ExpectGone("undo");
}

TEST_F(RealCgroupTest, MoveTransfersOwnership) {
  absl::StatusOr<Cgroup> a = Cgroup::Create(layout_, "move-a", {});
  absl::StatusOr<Cgroup> b = Cgroup::Create(layout_, "move-b", {});
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << " " << b.status();
  Cgroup owner(std::move(*a));
  EXPECT_TRUE(a->Remove().ok());  // moved-from: nothing to remove
  EXPECT_TRUE(Exists(owner.memory_path()));
  *b = std::move(owner);  // b's own cgroup goes away, it takes over move-a
  ExpectGone("move-b");
  EXPECT_TRUE(Exists(b->memory_path()));
  EXPECT_EQ(b->memory_path(), SessionDirs("move-a")[0]);
  ASSERT_TRUE(b->Remove().ok());
  ExpectGone("move-a");
}

TEST_F(RealCgroupTest, PidsLimitIsEnforced) {
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);  // the grandchildren come back to us to be reaped
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout_, "pids", {64 * kMiB, 16, 0});
  ASSERT_TRUE(cg.ok()) << cg.status();

  int go[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  ChildGuard child{fork()};
  if (child.pid == 0) {
    // Already in the cgroup when it starts forking: 16 pids in all, so the 16th fork must fail.
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(3);
    for (int i = 0; i < 40; ++i) {
      const pid_t p = fork();
      if (p == 0) {
        while (true) pause();
      }
      if (p < 0) _exit(errno == EAGAIN ? 0 : 2);
    }
    _exit(1);
  }
  close(go[0]);
  ASSERT_GT(child.pid, 0);
  const absl::Status added = cg->AddProcess(child.pid);
  ASSERT_TRUE(added.ok()) << added;
  ASSERT_EQ(write(go[1], "g", 1), 1);
  close(go[1]);

  int status = 0;
  ASSERT_TRUE(WaitBounded(std::exchange(child.pid, -1), &status, milliseconds(10000)));
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: all 40 forks succeeded; 2: fork failed but not with EAGAIN";
  EXPECT_EQ(ProcsOf(cg->pids_path()).size(), 15u);

  absl::StatusOr<CgroupUsage> usage = cg->ReadUsage();
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_GT(usage->pids_max_events, 0u);
  absl::StatusOr<uint64_t> events = cg->ReadPidsMaxEvents();
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_GT(*events, 0u);

  const absl::Status removed = cg->Remove();
  ASSERT_TRUE(removed.ok()) << removed;
  ExpectGone("pids");
  EXPECT_EQ(ReapAll(milliseconds(5000)), 15);
}

TEST_F(RealCgroupTest, MemoryLimitOomKills) {
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout_, "memory", {32 * kMiB, 16, 0});
  ASSERT_TRUE(cg.ok()) << cg.status();

  int go[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  ChildGuard child{fork()};
  if (child.pid == 0) {
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(3);
    const size_t size = 256 * kMiB;
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(2);
    for (size_t off = 0; off < size; off += 4096) static_cast<volatile char*>(p)[off] = 1;
    _exit(0);
  }
  close(go[0]);
  ASSERT_GT(child.pid, 0);
  const absl::Status added = cg->AddProcess(child.pid);
  ASSERT_TRUE(added.ok()) << added;
  ASSERT_EQ(write(go[1], "g", 1), 1);
  close(go[1]);

  int status = 0;
  ASSERT_TRUE(WaitBounded(std::exchange(child.pid, -1), &status, milliseconds(30000)));
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;

  absl::StatusOr<CgroupUsage> usage = cg->ReadUsage();
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_GE(usage->oom_kills, 1u);
  if (layout_.version == CgroupVersion::kV1 || Exists(cg->memory_path() + "/memory.peak")) {
    EXPECT_GE(usage->memory_peak_bytes, 30 * kMiB);
    EXPECT_LE(usage->memory_peak_bytes, 32 * kMiB);
  }
  const absl::Status removed = cg->Remove();
  ASSERT_TRUE(removed.ok()) << removed;
  ExpectGone("memory");
}

TEST_F(RealCgroupTest, CpuQuotaThrottlesAndUsageIsCounted) {
  if (!HasCpuController()) GTEST_SKIP() << "no cpu controller in this cgroup tree";
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout_, "cpu", {64 * kMiB, 16, 200});  // 20 ms per 100 ms
  ASSERT_TRUE(cg.ok()) << cg.status();

  int go[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  ChildGuard child{fork()};
  if (child.pid == 0) {
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(3);
    timespec start{};
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {  // spin for 500 ms of wall time
      clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < 500000000L);
    _exit(0);
  }
  close(go[0]);
  ASSERT_GT(child.pid, 0);
  const absl::Status added = cg->AddProcess(child.pid);
  ASSERT_TRUE(added.ok()) << added;
  ASSERT_EQ(write(go[1], "g", 1), 1);
  close(go[1]);
  int status = 0;
  ASSERT_TRUE(WaitBounded(std::exchange(child.pid, -1), &status, milliseconds(10000)));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;

  absl::StatusOr<CgroupUsage> usage = cg->ReadUsage();
  ASSERT_TRUE(usage.ok()) << usage.status();
  const uint64_t cpu_us = usage->cpu_user_us + usage->cpu_sys_us;
  EXPECT_GE(cpu_us, 10000u);   // it did run
  EXPECT_LE(cpu_us, 200000u);  // but at most ~20% of 500 ms, plus one period of slack
  ASSERT_TRUE(cg->Remove().ok());
  ExpectGone("cpu");
}

// v1 without a freezer hierarchy: KillAll falls back to killing until cgroup.procs is empty.
TEST_F(RealCgroupTest, V1KillAllWithoutFreezer) {
  if (layout_.version != CgroupVersion::kV1) GTEST_SKIP() << "cgroup v1 only; this host uses v2";
  CgroupLayout layout = layout_;
  layout.v1_freezer.clear();
  absl::StatusOr<Cgroup> cg = Cgroup::Create(layout, "nofreezer", {64 * kMiB, 16, 0});
  ASSERT_TRUE(cg.ok()) << cg.status();
  ChildGuard a{ForkPausing()};
  ChildGuard b{ForkPausing()};
  ASSERT_TRUE(a.pid > 0 && b.pid > 0);
  ASSERT_TRUE(cg->AddProcess(a.pid).ok());
  ASSERT_TRUE(cg->AddProcess(b.pid).ok());
  const absl::Status killed = cg->KillAll();
  ASSERT_TRUE(killed.ok()) << killed;
  for (ChildGuard* c : {&a, &b}) {
    int status = 0;
    ASSERT_TRUE(WaitBounded(std::exchange(c->pid, -1), &status, milliseconds(5000)));
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  }
  ASSERT_TRUE(cg->Remove().ok());
  ExpectGone("nofreezer");
}

// The v2 paths on a real kernel even on a v1 host: a hybrid host's unified hierarchy has no memory or pids
// controller, but cgroup.procs, cgroup.kill, rmdir and CLONE_INTO_CGROUP work there (no limits are set).
TEST_F(RealCgroupTest, V2KillAndCloneIntoCgroup) {
  if (layout_.version == CgroupVersion::kV2) GTEST_SKIP() << "this host uses v2: the other tests cover it";
  std::string v2_mounts;
  const std::string mountinfo = ReadText("/proc/self/mountinfo");
  for (size_t pos = 0, end; pos < mountinfo.size(); pos = end + 1) {
    end = mountinfo.find('\n', pos);
    if (end == std::string::npos) end = mountinfo.size();
    const std::string line = mountinfo.substr(pos, end - pos);
    if (HasText(line, " - cgroup2 ")) v2_mounts += line + "\n";
  }
  if (v2_mounts.empty()) GTEST_SKIP() << "no cgroup2 mount";
  absl::StatusOr<CgroupLayout> v2 =
      CgroupLayoutFromProc(v2_mounts, ReadText("/proc/self/cgroup"), subdir_ + "-v2");
  ASSERT_TRUE(v2.ok()) << v2.status();
  ASSERT_EQ(v2->version, CgroupVersion::kV2);
  if (mkdir(v2->v2_parent.c_str(), 0755) != 0 && errno != EEXIST) {
    GTEST_SKIP() << "cannot make " << v2->v2_parent << ": " << std::strerror(errno);
  }
  const std::string parent = v2->v2_parent;
  struct RmdirOnExit {
    std::string dir;
    ~RmdirOnExit() { rmdir(dir.c_str()); }
  } rmdir_parent{parent};

  absl::StatusOr<Cgroup> cg = Cgroup::Create(*v2, "v2", {});
  ASSERT_TRUE(cg.ok()) << cg.status();
  ASSERT_GE(cg->v2_dir_fd(), 0);

  clone_args args{};
  args.flags = CLONE_INTO_CGROUP;
  args.exit_signal = SIGCHLD;
  args.cgroup = static_cast<uint64_t>(cg->v2_dir_fd());
  ChildGuard cloned{static_cast<pid_t>(syscall(SYS_clone3, &args, sizeof(args)))};
  if (cloned.pid == 0) {
    while (true) pause();
  }
  ASSERT_GT(cloned.pid, 0) << "clone3(CLONE_INTO_CGROUP): " << std::strerror(errno);
  ChildGuard added{ForkPausing()};
  ASSERT_GT(added.pid, 0);
  ASSERT_TRUE(cg->AddProcess(added.pid).ok());

  const std::string suffix = "/" + subdir_ + "-v2/v2";
  for (pid_t pid : {cloned.pid, added.pid}) {
    const std::string path = CgroupOf(pid, "");
    EXPECT_TRUE(path.size() >= suffix.size() &&
                path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0)
        << "pid " << pid << ": " << path;
  }
  std::vector<pid_t> procs = ProcsOf(cg->memory_path());
  std::sort(procs.begin(), procs.end());
  std::vector<pid_t> want = {cloned.pid, added.pid};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(procs, want);

  const absl::Status killed = cg->KillAll();  // cgroup.kill
  ASSERT_TRUE(killed.ok()) << killed;
  for (ChildGuard* c : {&cloned, &added}) {
    int status = 0;
    ASSERT_TRUE(WaitBounded(std::exchange(c->pid, -1), &status, milliseconds(5000)));
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  }
  const absl::Status removed = cg->Remove();
  ASSERT_TRUE(removed.ok()) << removed;
  EXPECT_FALSE(Exists(parent + "/v2"));
  EXPECT_EQ(cg->v2_dir_fd(), -1);
}

}  // namespace
}  // namespace sbx::sandbox
