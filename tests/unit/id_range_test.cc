// IdRange: uid-range leases are exclusive across every agent on the host, whatever network namespace each
// runs in (a systemd agent and a DaemonSet pod, or two pods in a rolling update), and a crashed lessee's
// slot is reused. Runs as root (a rootless IdRange leases nothing).
#include "sandbox/id_range.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"

namespace sbx::sandbox {
namespace {

// A base no real jail uses, so the test never contends with jails leased on this host at the same time.
constexpr uint32_t kTestBase = 0xF0000000u;

class IdRangeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "uid-range leases are taken only as root";
    char tmpl[] = "/tmp/sbx-id-range-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Acquires (host_base kTestBase, `slots`) in a forked child that first moves to a network namespace of its
  // own; returns the slot it got, -1 when every slot was taken, -2 on another error or a crash.
  int SlotFromAnotherNetns(uint32_t slots) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -2;
    const pid_t pid = fork();
    if (pid == 0) {
      int result = -2;
      if (unshare(CLONE_NEWNET) == 0) {
        absl::StatusOr<IdRange> r = IdRange::Acquire(kTestBase, slots, dir_);
        if (r.ok()) {
          result = r->slot();
        } else if (r.status().code() == absl::StatusCode::kResourceExhausted) {
          result = -1;
        }
      }
      [[maybe_unused]] ssize_t n = write(fds[1], &result, sizeof(result));
      _exit(0);
    }
    close(fds[1]);
    int result = -2;
    if (read(fds[0], &result, sizeof(result)) != sizeof(result)) result = -2;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return result;
  }

  std::string dir_;
};

TEST_F(IdRangeTest, ALeaseHeldInOneNetworkNamespaceIsNotHandedOutInAnother) {
  absl::StatusOr<IdRange> held = IdRange::Acquire(kTestBase, 1, dir_);
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_EQ(held->slot(), 0);
  // The only slot is ours: an agent in another network namespace must not get it too.
  EXPECT_EQ(SlotFromAnotherNetns(1), -1);

  // With two slots, the other namespace gets the other one.
  EXPECT_EQ(SlotFromAnotherNetns(2), 1);
}

TEST_F(IdRangeTest, ASlotIsFreeAgainOnceItsHolderIsGoneAndItsFileIsReused) {
  { absl::StatusOr<IdRange> held = IdRange::Acquire(kTestBase, 1, dir_); ASSERT_TRUE(held.ok()) << held.status(); }
  // The child took the slot and exited without releasing anything itself (as a crashed agent would).
  EXPECT_EQ(SlotFromAnotherNetns(1), 0);
  absl::StatusOr<IdRange> again = IdRange::Acquire(kTestBase, 1, dir_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->slot(), 0);
  EXPECT_EQ(again->host_uid_base(), kTestBase);
  // Within one process too, a held slot is not leased twice.
  EXPECT_EQ(IdRange::Acquire(kTestBase, 1, dir_).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(IdRangeTest, TheLockFdIsCloseOnExec) {
  absl::StatusOr<IdRange> held = IdRange::Acquire(kTestBase, 1, dir_);
  ASSERT_TRUE(held.ok()) << held.status();
  const std::string lock = absl::StrCat(dir_, "/", kTestBase, "/0.lock");
  int found = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(entry.path(), ec).string() != lock) continue;
    ++found;
    const int fd = std::stoi(entry.path().filename().string());
    EXPECT_NE(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0) << "the lock fd would reach an exec'd program";
  }
  EXPECT_EQ(found, 1) << "no open fd on " << lock;
}

TEST_F(IdRangeTest, ALockDirectoryOthersCanWriteIsRefused) {
  ASSERT_EQ(chmod(dir_.c_str(), 0777), 0);
  const absl::Status s = IdRange::Acquire(kTestBase, 1, dir_).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find(dir_), std::string::npos) << s;
}

}  // namespace
}  // namespace sbx::sandbox
