// WriteOutcomeJson (`sandbox-agent run --outcome-json`) never replaces anything through a symlink and never
// renames over a file it should not: "-" is fd 1, written in place (it used to be /dev/stdout, which, with
// stdout redirected to a file, the atomic write replaced with a regular file: the host's /dev/stdout, as
// root); a symlink to a regular file is refused; a pipe or terminal is written in place.
#include "agent/run/outcome_json.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace sbx::agent {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool IsSymlink(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

sandbox::RunResult Result() {
  sandbox::RunResult r;
  r.status = sandbox::RunStatus::kCompleted;
  r.exit_code = 3;
  return r;
}

class OutcomeJsonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sbx-outcome-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

// The bug, reproduced where it cannot hurt: a forked child in a mount namespace of its own, with a tmpfs on
// /dev holding only the /dev/stdout symlink, stdout redirected to a file.
TEST_F(OutcomeJsonTest, DashIsFdOneAndLeavesTheDevStdoutSymlinkAlone) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for a private mount namespace with a tmpfs /dev";
  const std::string out = dir_ + "/out.txt";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (unshare(CLONE_NEWNS) != 0 || mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        mount("tmpfs", "/dev", "tmpfs", 0, "mode=0755") != 0 || symlink("/proc/self/fd/1", "/dev/stdout") != 0) {
      _exit(10);
    }
    const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, "workload output\n", 16) != 16 || dup2(fd, 1) != 1) _exit(11);
    const absl::Status s = WriteOutcomeJson(Result(), "-");
    if (!s.ok()) _exit(12);
    struct stat st;
    if (lstat("/dev/stdout", &st) != 0 || !S_ISLNK(st.st_mode)) _exit(13);  // replaced through the link
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 13) << "/dev/stdout is no longer a symlink: it was replaced with a regular file";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The JSON went to the file stdout was redirected to, after what was there.
  const std::string text = ReadFile(out);
  EXPECT_EQ(text.rfind("workload output\n{\"exit_code\":3,", 0), 0u) << text;
}

TEST_F(OutcomeJsonTest, ASymlinkToARegularFileIsRefusedAndNothingIsReplaced) {
  std::filesystem::create_directories(dir_ + "/elsewhere");
  const std::string target = dir_ + "/elsewhere/precious";
  std::ofstream(target) << "precious\n";
  const std::string link = dir_ + "/outcome.json";
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
  const absl::Status s = WriteOutcomeJson(Result(), link);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("symlink"), std::string::npos) << s;
  EXPECT_TRUE(IsSymlink(link)) << "the link was replaced";
  EXPECT_EQ(ReadFile(target), "precious\n");
  // A dangling link creates nothing through it either.
  const std::string dangling = dir_ + "/dangling";
  ASSERT_EQ(symlink((dir_ + "/nowhere").c_str(), dangling.c_str()), 0);
  EXPECT_FALSE(WriteOutcomeJson(Result(), dangling).ok());
  EXPECT_TRUE(IsSymlink(dangling));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/nowhere"));
}

TEST_F(OutcomeJsonTest, ASymlinkToAPipeIsWrittenInPlace) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  const std::string link = dir_ + "/fd";  // as bash's >(...) hands out /dev/fd/63
  ASSERT_EQ(symlink(("/proc/self/fd/" + std::to_string(p[1])).c_str(), link.c_str()), 0);
  EXPECT_TRUE(WriteOutcomeJson(Result(), link).ok());
  close(p[1]);
  char buf[4096];
  const ssize_t n = read(p[0], buf, sizeof(buf));
  close(p[0]);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)).rfind("{\"exit_code\":3,", 0), 0u);
  EXPECT_TRUE(IsSymlink(link));
}

TEST_F(OutcomeJsonTest, ARegularFileIsCreatedOrReplacedOnlyWhenItIsTheCallers) {
  const std::string path = dir_ + "/outcome.json";
  ASSERT_TRUE(WriteOutcomeJson(Result(), path).ok());
  EXPECT_EQ(ReadFile(path).rfind("{\"exit_code\":3,", 0), 0u);
  std::ofstream(path) << "old\n";
  ASSERT_TRUE(WriteOutcomeJson(Result(), path).ok());
  EXPECT_EQ(ReadFile(path).rfind("{\"exit_code\":3,", 0), 0u);
  // No temporary file is left beside it.
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir_)) ++entries;
  EXPECT_EQ(entries, 1);
  if (geteuid() == 0) {
    ASSERT_EQ(chown(path.c_str(), 12345, 12345), 0);
    const absl::Status s = WriteOutcomeJson(Result(), path);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("owned by"), std::string::npos) << s;
  }
  // A directory is not replaced either.
  std::filesystem::create_directories(dir_ + "/d");
  EXPECT_FALSE(WriteOutcomeJson(Result(), dir_ + "/d").ok());
  EXPECT_TRUE(std::filesystem::is_directory(dir_ + "/d"));
}

}  // namespace
}  // namespace sbx::agent
