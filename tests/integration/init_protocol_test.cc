// The init protocol end to end: a real serving jail (sandbox-init --serve as PID 1 under the default file
// policy) driven through InitClient. Each test proves one behaviour of exec, the file tools, or the
// connection; the last group replaces sandbox-init with a hostile peer on a plain socketpair.
#include "sandbox/init_client.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sandbox/cgroup/cgroup.h"
#include "wire/frame.h"
#include "wire/init_protocol.pb.h"
#include "base/sha256.h"
#include "sandbox/jail.h"
#include "sandbox/policy/policy_loader.h"
#include "tests/unit/status_matchers.h"

extern char** environ;

namespace sbx::sandbox {
namespace {

using ::sbx::testing::IsOk;
using ::sbx::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Everything one command sent back, gathered from the reader thread.
struct ExecRun {
  std::mutex mu;
  std::condition_variable cv;
  std::string out, err;
  uint64_t next_offset[3] = {0, 0, 0};
  bool offsets_ok = true;
  size_t chunks = 0;
  size_t largest_chunk = 0;
  int end_calls = 0;
  std::optional<absl::StatusOr<ExecEnd>> end;
  Clock::time_point started, first_output, ended;
  // Called for every chunk (reader thread), e.g. to read slowly.
  std::function<void(OutputStream, std::string_view)> on_chunk;
  bool keep_output = true;
  uint64_t total_bytes = 0;

  bool WaitEnd(Clock::duration timeout) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return end.has_value(); });
  }
  bool WaitOutput(std::string_view needle, Clock::duration timeout) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return out.find(needle) != std::string::npos || end.has_value(); }) &&
           out.find(needle) != std::string::npos;
  }
  std::string Out() {
    std::lock_guard<std::mutex> lock(mu);
    return out;
  }
};

absl::StatusOr<uint64_t> Start(InitClient& client, const ExecSpec& spec, const std::shared_ptr<ExecRun>& run) {
  run->started = Clock::now();
  return client.StartExec(
      spec,
      [run](OutputStream stream, std::string_view data, uint64_t offset) {
        if (run->on_chunk) run->on_chunk(stream, data);
        std::lock_guard<std::mutex> lock(run->mu);
        const int s = static_cast<int>(stream);
        if (offset != run->next_offset[s]) run->offsets_ok = false;
        run->next_offset[s] = offset + data.size();
        if (run->chunks++ == 0) run->first_output = Clock::now();
        run->largest_chunk = std::max(run->largest_chunk, data.size());
        run->total_bytes += data.size();
        if (run->keep_output) (stream == OutputStream::kStdout ? run->out : run->err).append(data);
        run->cv.notify_all();
      },
      [run](absl::StatusOr<ExecEnd> end) {
        std::lock_guard<std::mutex> lock(run->mu);
        ++run->end_calls;
        run->end = std::move(end);
        run->ended = Clock::now();
        run->cv.notify_all();
      });
}

ExecSpec Command(std::vector<std::string> argv) {
  ExecSpec spec;
  spec.argv = std::move(argv);
  return spec;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(gen() & 0xff);
  return s;
}

std::atomic<int> g_jails{0};

class InitProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) {
      GTEST_SKIP() << "these tests build jails as root (CI runs as root); this process is uid " << geteuid();
    }
    // A host secret in the agent's environment must never show up inside the jail.
    setenv("SBX_HOST_SECRET", "hunter2-host-secret", 1);
    absl::StatusOr<Policy> policy = DefaultFilePolicy();
    ASSERT_TRUE(IsOk(policy));
    absl::StatusOr<CgroupLayout> layout = PrepareCgroupLayout();
    ASSERT_TRUE(IsOk(layout));
    layout_ = *layout;
    JailOptions options;
    options.serve = true;
    options.init_path = SBX_INIT_BIN;
    options.cgroups = &layout_;
    options.name = "initproto-" + std::to_string(getpid()) + "-" + std::to_string(g_jails++);
    options.host_environ = environ;
    absl::StatusOr<std::unique_ptr<Jail>> jail = Jail::Start(*policy, options);
    ASSERT_TRUE(IsOk(jail));
    jail_ = std::move(*jail);
    client_ = std::make_unique<InitClient>(jail_->TakeControlFd());
  }

  void TearDown() override {
    if (client_) {
      EXPECT_TRUE(client_->healthy()) << "the connection broke during the test";
    }
    client_.reset();
    jail_.reset();
  }

  // Runs a command to its end (or fails the test after `timeout`).
  std::shared_ptr<ExecRun> RunToEnd(const ExecSpec& spec, Clock::duration timeout = seconds(20)) {
    auto run = std::make_shared<ExecRun>();
    absl::StatusOr<uint64_t> id = Start(*client_, spec, run);
    EXPECT_TRUE(IsOk(id));
    if (id.ok()) {
      EXPECT_TRUE(run->WaitEnd(timeout)) << "no end within the timeout: " << spec.argv[0];
    }
    return run;
  }
  std::shared_ptr<ExecRun> Sh(const std::string& script) { return RunToEnd(Command({"sh", "-c", script})); }

  CgroupLayout layout_;
  std::unique_ptr<Jail> jail_;
  std::unique_ptr<InitClient> client_;
};

#define ASSERT_ENDED_OK(run)                                         \
  do {                                                              \
    ASSERT_TRUE((run)->end.has_value());                            \
    ASSERT_TRUE(IsOk(*(run)->end)) << (run)->out << (run)->err;     \
  } while (0)

// --- exec ----------------------------------------------------------------------------------------------

TEST_F(InitProtocolTest, EchoPrintsAndExitsZero) {
  auto run = RunToEnd(Command({"echo", "hi"}));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ(run->out, "hi\n");
  EXPECT_EQ(run->err, "");
  EXPECT_EQ((*run->end)->exit_code, 0);
  EXPECT_EQ((*run->end)->signal, 0);
  EXPECT_FALSE((*run->end)->timed_out);
  EXPECT_EQ(run->end_calls, 1);
}

TEST_F(InitProtocolTest, CommandsRunAsTheWorkloadInTheWorkdirWithThePolicyEnvironment) {
  auto run = Sh("id -u; pwd; echo \"$HOME\"; echo \"secret=$SBX_HOST_SECRET\"");
  ASSERT_ENDED_OK(run);
  EXPECT_EQ(run->out, "1000\n/workspace\n/workspace\nsecret=\n");
  // An explicit environment and cwd replace the defaults.
  ExecSpec spec = Command({"sh", "-c", "pwd; echo \"$GREETING\""});
  spec.env = {"PATH=/usr/bin:/bin", "GREETING=hello"};
  spec.cwd = "/tmp";
  auto custom = RunToEnd(spec);
  ASSERT_ENDED_OK(custom);
  EXPECT_EQ(custom->out, "/tmp\nhello\n");
}

TEST_F(InitProtocolTest, OutputIsStreamedBeforeTheCommandEnds) {
  auto run = Sh("echo a; sleep 1; echo b >&2");
  ASSERT_ENDED_OK(run);
  EXPECT_EQ(run->out, "a\n");
  EXPECT_EQ(run->err, "b\n");
  EXPECT_GE(run->ended - run->first_output, milliseconds(800))
      << "the first chunk came only "
      << std::chrono::duration_cast<milliseconds>(run->ended - run->first_output).count()
      << " ms before the end";
}

TEST_F(InitProtocolTest, StdinRoundTripThroughCat) {
  auto run = std::make_shared<ExecRun>();
  ExecSpec spec = Command({"cat"});
  spec.stdin_open = true;
  ASSERT_OK_AND_ASSIGN(uint64_t id, Start(*client_, spec, run));
  EXPECT_TRUE(IsOk(client_->WriteStdin(id, "hello\n", false)));
  EXPECT_TRUE(run->WaitOutput("hello\n", seconds(5))) << "cat echoed before stdin closed";
  const std::string big = RandomBytes(700 << 10, 7);  // several chunks, more than a pipe holds
  EXPECT_TRUE(IsOk(client_->WriteStdin(id, big, true)));
  ASSERT_TRUE(run->WaitEnd(seconds(10)));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ((*run->end)->exit_code, 0);
  EXPECT_TRUE(run->out == "hello\n" + big) << "got " << run->out.size() << " bytes";
  // stdin is closed now; and a command without stdin_open has none.
  EXPECT_FALSE(client_->WriteStdin(id, "late", false).ok());
  auto no_stdin = std::make_shared<ExecRun>();
  ASSERT_OK_AND_ASSIGN(uint64_t id2, Start(*client_, Command({"sleep", "2"}), no_stdin));
  EXPECT_TRUE(StatusIs(client_->WriteStdin(id2, "x", false), absl::StatusCode::kFailedPrecondition, "stdin_open"));
  EXPECT_TRUE(IsOk(client_->Signal(id2, SIGKILL)));
  EXPECT_TRUE(no_stdin->WaitEnd(seconds(5)));
  // Without stdin_open, stdin reads EOF at once: cat ends.
  auto devnull = RunToEnd(Command({"cat"}), seconds(5));
  ASSERT_ENDED_OK(devnull);
  EXPECT_EQ(devnull->out, "");
}

TEST_F(InitProtocolTest, PtyIsAControllingTerminalWithTheWindowSize) {
  ExecSpec spec = Command({"sh", "-c", "tty; stty size; test -t 0 && test -t 2 && echo all-tty"});
  spec.pty = true;
  spec.rows = 30;
  spec.cols = 100;
  auto run = RunToEnd(spec);
  ASSERT_ENDED_OK(run);
  EXPECT_EQ((*run->end)->exit_code, 0) << run->out;
  EXPECT_THAT(run->out, HasSubstr("/dev/pts/"));
  EXPECT_THAT(run->out, HasSubstr("30 100"));
  EXPECT_THAT(run->out, HasSubstr("all-tty"));
  EXPECT_EQ(run->err, "") << "stderr is the terminal too";
}

TEST_F(InitProtocolTest, PtyResizeAndInput) {
  ExecSpec spec = Command({"sh", "-c", "read line; echo \"got=$line\"; stty size"});
  spec.pty = true;
  spec.rows = 24;
  spec.cols = 80;
  auto run = std::make_shared<ExecRun>();
  ASSERT_OK_AND_ASSIGN(uint64_t id, Start(*client_, spec, run));
  EXPECT_TRUE(IsOk(client_->Resize(id, 40, 120)));
  EXPECT_TRUE(IsOk(client_->WriteStdin(id, "typed\n", false)));
  ASSERT_TRUE(run->WaitEnd(seconds(10)));
  ASSERT_ENDED_OK(run);
  EXPECT_THAT(run->out, HasSubstr("got=typed"));
  EXPECT_THAT(run->out, HasSubstr("40 120"));
  // Resize needs a pty.
  auto plain = std::make_shared<ExecRun>();
  ASSERT_OK_AND_ASSIGN(uint64_t id2, Start(*client_, Command({"sleep", "2"}), plain));
  EXPECT_TRUE(StatusIs(client_->Resize(id2, 10, 10), absl::StatusCode::kFailedPrecondition, "pty"));
  EXPECT_TRUE(IsOk(client_->Signal(id2, SIGKILL)));
  EXPECT_TRUE(plain->WaitEnd(seconds(5)));
}

TEST_F(InitProtocolTest, PtyEofEndsInput) {
  ExecSpec spec = Command({"cat"});
  spec.pty = true;
  auto run = std::make_shared<ExecRun>();
  ASSERT_OK_AND_ASSIGN(uint64_t id, Start(*client_, spec, run));
  EXPECT_TRUE(IsOk(client_->WriteStdin(id, "line\n", true)));
  ASSERT_TRUE(run->WaitEnd(seconds(10)));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ((*run->end)->exit_code, 0) << "signal " << (*run->end)->signal << ", output: " << run->out;
  EXPECT_THAT(run->out, HasSubstr("line"));
}

TEST_F(InitProtocolTest, ExitCodesAndSignals) {
  auto exited = Sh("exit 3");
  ASSERT_ENDED_OK(exited);
  EXPECT_EQ((*exited->end)->exit_code, 3);
  EXPECT_EQ((*exited->end)->signal, 0);

  auto killed_itself = Sh("kill -TERM $$");
  ASSERT_ENDED_OK(killed_itself);
  EXPECT_EQ((*killed_itself->end)->signal, SIGTERM);
  EXPECT_EQ((*killed_itself->end)->exit_code, -1);

  // Signal goes to the whole process group: the shell and its sleep both get it (SIGTERM: `sh -c` catches
  // SIGINT itself, and would leave its sleep running when the signal lands before the fork).
  auto run = std::make_shared<ExecRun>();
  ASSERT_OK_AND_ASSIGN(uint64_t id, Start(*client_, Command({"sh", "-c", "echo started; sleep 30; echo never"}), run));
  ASSERT_TRUE(run->WaitOutput("started", seconds(5)));
  const auto sent = Clock::now();
  EXPECT_TRUE(IsOk(client_->Signal(id, SIGTERM)));
  ASSERT_TRUE(run->WaitEnd(seconds(5)));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ((*run->end)->signal, SIGTERM);
  EXPECT_LT(run->ended - sent, seconds(3)) << "the sleep died with the shell";
  EXPECT_THAT(run->out, Not(HasSubstr("never")));
  // Right after the start, even before the command runs: the signal is not lost.
  auto early = std::make_shared<ExecRun>();
  ASSERT_OK_AND_ASSIGN(uint64_t early_id, Start(*client_, Command({"sleep", "30"}), early));
  EXPECT_TRUE(IsOk(client_->Signal(early_id, SIGINT)));
  ASSERT_TRUE(early->WaitEnd(seconds(5)));
  ASSERT_ENDED_OK(early);
  EXPECT_EQ((*early->end)->signal, SIGINT);
  // Signals to commands that are gone, or that are not signals.
  EXPECT_TRUE(StatusIs(client_->Signal(id, SIGTERM), absl::StatusCode::kNotFound));
  EXPECT_TRUE(StatusIs(client_->Signal(987654, SIGTERM), absl::StatusCode::kNotFound));
  auto alive = std::make_shared<ExecRun>();
  ASSERT_OK_AND_ASSIGN(uint64_t alive_id, Start(*client_, Command({"sleep", "30"}), alive));
  EXPECT_TRUE(StatusIs(client_->Signal(alive_id, 0), absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(StatusIs(client_->Signal(alive_id, 1000), absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsOk(client_->Signal(alive_id, SIGKILL)));
  EXPECT_TRUE(alive->WaitEnd(seconds(5)));
}

TEST_F(InitProtocolTest, TimeoutKillsTheProcessGroup) {
  ExecSpec spec = Command({"sh", "-c", "echo before; sleep 30 & sleep 30; echo never"});
  spec.timeout_ms = 300;
  const auto start = Clock::now();
  auto run = RunToEnd(spec);
  ASSERT_ENDED_OK(run);
  EXPECT_TRUE((*run->end)->timed_out);
  EXPECT_EQ((*run->end)->signal, SIGKILL);
  EXPECT_EQ(run->out, "before\n");
  EXPECT_GE(run->ended - start, milliseconds(300));
  EXPECT_LT(run->ended - start, seconds(5)) << "the background sleep held the pipe, but was in the group";
}

TEST_F(InitProtocolTest, CommandNotFoundAndNotExecutable) {
  auto missing = RunToEnd(Command({"no-such-command-anywhere"}));
  ASSERT_ENDED_OK(missing);
  EXPECT_EQ((*missing->end)->exec_errno, ENOENT);
  auto not_exec = RunToEnd(Command({"/etc/passwd"}));
  ASSERT_ENDED_OK(not_exec);
  EXPECT_EQ((*not_exec->end)->exec_errno, EACCES);
  ExecSpec bad_cwd = Command({"true"});
  bad_cwd.cwd = "/no/such/dir";
  auto cwd = RunToEnd(bad_cwd);
  ASSERT_TRUE(cwd->end.has_value());
  EXPECT_TRUE(StatusIs(*cwd->end, absl::StatusCode::kNotFound, "/no/such/dir"));
  EXPECT_TRUE(StatusIs(client_->StartExec(Command({}), nullptr, nullptr), absl::StatusCode::kInvalidArgument));
  // A socket for stdio is not for a pty command: refused, not silently ignored.
  ExecSpec pty_socket = Command({"true"});
  pty_socket.pty = true;
  pty_socket.stdin_open = true;
  pty_socket.socket_stdio = true;
  auto both = RunToEnd(pty_socket);
  ASSERT_TRUE(both->end.has_value());
  EXPECT_TRUE(StatusIs(*both->end, absl::StatusCode::kInvalidArgument, "socket_stdio is not for a pty"));
}

// Commands start on a small stack of their own that shares init's memory (exec.cc, SpawnCommand). glibc's
// execvpe copies argv onto that stack when a file has no #! line (ENOEXEC, run through /bin/sh): the stack
// must be sized for it, and init must be unharmed either way.
TEST_F(InitProtocolTest, AScriptWithoutAShebangRunsWithAHugeArgv) {
  auto made = RunToEnd(Command({"sh", "-c", "printf 'echo $#\\n' > /tmp/noshebang && chmod +x /tmp/noshebang"}));
  ASSERT_ENDED_OK(made);
  ASSERT_EQ((*made->end)->exit_code, 0) << made->err;
  constexpr int kArgs = 40000;  // 320 KB of argv pointers copied onto the child's stack
  std::vector<std::string> argv = {"/tmp/noshebang"};
  for (int i = 0; i < kArgs; ++i) argv.push_back("x");
  auto run = RunToEnd(Command(argv));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ((*run->end)->exit_code, 0) << run->err;
  EXPECT_EQ(run->out, std::to_string(kArgs) + "\n");
  auto after = RunToEnd(Command({"echo", "still serving"}));
  ASSERT_ENDED_OK(after);
  EXPECT_EQ(after->out, "still serving\n");
}

TEST_F(InitProtocolTest, ManyCommandsRunConcurrently) {
  constexpr int kCommands = 12;
  std::vector<std::shared_ptr<ExecRun>> runs;
  const auto start = Clock::now();
  for (int i = 0; i < kCommands; ++i) {
    auto run = std::make_shared<ExecRun>();
    ASSERT_TRUE(IsOk(Start(*client_, Command({"sh", "-c", "sleep 1; echo " + std::to_string(i)}), run)));
    runs.push_back(run);
  }
  for (int i = 0; i < kCommands; ++i) {
    ASSERT_TRUE(runs[i]->WaitEnd(seconds(10)));
    ASSERT_ENDED_OK(runs[i]);
    EXPECT_EQ(runs[i]->out, std::to_string(i) + "\n");
  }
  EXPECT_LT(Clock::now() - start, seconds(4)) << "12 one-second commands should overlap";
}

TEST_F(InitProtocolTest, TwentyMebibytesArriveCompleteInOrder) {
  auto run = std::make_shared<ExecRun>();
  run->keep_output = false;
  std::atomic<bool> all_zero{true};
  run->on_chunk = [&](OutputStream, std::string_view data) {
    if (data.find_first_not_of('\0') != std::string_view::npos) all_zero = false;
  };
  // A sparse file reads as zeros (the jail's /dev nodes are not needed for this).
  ASSERT_TRUE(IsOk(Start(*client_, Command({"sh", "-c", "truncate -s 20M zeros && cat zeros && rm zeros"}), run)));
  ASSERT_TRUE(run->WaitEnd(seconds(60)));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ((*run->end)->exit_code, 0);
  EXPECT_EQ(run->total_bytes, 20u << 20);
  EXPECT_EQ(run->next_offset[1], 20u << 20);
  EXPECT_TRUE(run->offsets_ok);
  EXPECT_TRUE(all_zero);
  EXPECT_LE(run->largest_chunk, InitClient::kMaxOutputChunkBytes);
}

TEST_F(InitProtocolTest, AFastWritersOutputComesInFewChunks) {
  // dd writes 4 KiB at a time, as fast as it can. Read on every write, its 64 MiB came in thousands of small
  // chunks, each a wakeup all along the path to the client. Read at most once per kReadCoalesce (250 us) per
  // stream, or in full chunks, there are at most elapsed/250us + size/kMaxChunkBytes of them.
  constexpr uint64_t kBytes = 64u << 20;
  auto run = std::make_shared<ExecRun>();
  run->keep_output = false;
  ASSERT_TRUE(IsOk(Start(
      *client_, Command({"sh", "-c", "truncate -s 64M z && dd if=z bs=4096 status=none && rm z"}), run)));
  ASSERT_TRUE(run->WaitEnd(seconds(60)));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ(run->total_bytes, kBytes);
  EXPECT_TRUE(run->offsets_ok);
  const auto elapsed_us = std::chrono::duration_cast<std::chrono::microseconds>(run->ended - run->started).count();
  const uint64_t bound = static_cast<uint64_t>(elapsed_us) / 250 + kBytes / InitClient::kMaxChunkBytes + 16;
  EXPECT_LE(run->chunks, bound) << run->chunks << " chunks in " << elapsed_us << " us (average "
                                << kBytes / std::max<uint64_t>(run->chunks, 1) << " bytes)";
}

TEST_F(InitProtocolTest, ASlowReaderLosesNothing) {
  // The agent side stalls on the first chunks: init's queue to it fills, it stops reading the command's
  // pipe, and the command blocks instead of output being dropped or buffered without bound.
  auto run = std::make_shared<ExecRun>();
  run->keep_output = true;
  std::atomic<int> stalls{0};
  run->on_chunk = [&](OutputStream, std::string_view) {
    if (stalls.fetch_add(1) < 10) std::this_thread::sleep_for(milliseconds(200));
  };
  const std::string blob = RandomBytes(12u << 20, 12);
  ASSERT_TRUE(IsOk(client_->WriteFile("blob", blob, 0, true)));
  ASSERT_TRUE(IsOk(Start(*client_, Command({"sh", "-c", "cat blob && echo done >&2"}), run)));
  ASSERT_TRUE(run->WaitEnd(seconds(60)));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ(run->out.size(), blob.size());
  EXPECT_TRUE(run->out == blob);
  EXPECT_EQ(run->err, "done\n");
  EXPECT_TRUE(run->offsets_ok);
  EXPECT_GE(stalls.load(), 10);
}

// Reads a "Key:   N kB" line of /proc/<pid>/status, in bytes.
uint64_t StatusKb(pid_t pid, const std::string& key) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoull(line.substr(key.size() + 1)) * 1024;
  }
  return 0;
}

TEST_F(InitProtocolTest, InitMemoryStaysBoundedWhileTheAgentStalls) {
  // 256 MiB of output while the agent side does not read for a second: without backpressure, init would
  // queue most of it. With it, init's queue stops at a few MiB and the command waits in write(2).
  auto run = std::make_shared<ExecRun>();
  run->keep_output = false;
  std::atomic<uint64_t> peak_rss{0};
  std::atomic<bool> stalled{false};
  const pid_t init_pid = jail_->pid();
  run->on_chunk = [&](OutputStream, std::string_view) {
    if (stalled.exchange(true)) return;
    for (int i = 0; i < 10; ++i) {
      std::this_thread::sleep_for(milliseconds(100));
      peak_rss = std::max<uint64_t>(peak_rss, StatusKb(init_pid, "VmRSS"));
    }
  };
  ASSERT_TRUE(IsOk(Start(*client_, Command({"sh", "-c", "truncate -s 256M z && cat z && rm z"}), run)));
  ASSERT_TRUE(run->WaitEnd(seconds(60)));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ(run->total_bytes, 256u << 20);
  EXPECT_TRUE(run->offsets_ok);
  EXPECT_GT(peak_rss.load(), 0u);
  EXPECT_LT(peak_rss.load(), 24u << 20) << "init held " << (peak_rss.load() >> 20) << " MiB while the agent stalled";
}

TEST_F(InitProtocolTest, OrphansAreReaped) {
  auto run = Sh("(sleep 0.2 >&- 2>&- &); exit 0");
  ASSERT_ENDED_OK(run);
  std::this_thread::sleep_for(milliseconds(600));
  auto ps = Sh("for s in /proc/[0-9]*/stat; do cat $s; echo; done");
  ASSERT_ENDED_OK(ps);
  std::istringstream lines(ps->out);
  std::string line;
  int processes = 0;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    ++processes;
    const size_t paren = line.rfind(')');
    ASSERT_NE(paren, std::string::npos) << line;
    EXPECT_NE(line.substr(paren + 2, 1), "Z") << "a zombie: " << line;
  }
  EXPECT_GE(processes, 2);  // init and the shell (and its cat)
}

// --- file tools ----------------------------------------------------------------------------------------

TEST_F(InitProtocolTest, WriteAndReadWithOffsets) {
  ASSERT_TRUE(IsOk(client_->WriteFile("notes.txt", "hello world", 0, true)));
  EXPECT_EQ(client_->ReadFile("notes.txt", 0, 100).value_or("<error>"), "hello world");
  ASSERT_TRUE(IsOk(client_->WriteFile("notes.txt", "WORLD", 6, false)));
  EXPECT_EQ(client_->ReadFile("notes.txt", 0, 100).value_or("<error>"), "hello WORLD");
  EXPECT_EQ(client_->ReadFile("notes.txt", 6, 3).value_or("<error>"), "WOR");
  EXPECT_EQ(client_->ReadFile("notes.txt", 11, 10).value_or("<error>"), "");
  EXPECT_EQ(client_->ReadFile("notes.txt", 1000, 10).value_or("<error>"), "");
  // Absolute paths reach the same file; the workload sees it too.
  EXPECT_EQ(client_->ReadFile("/workspace/notes.txt", 0, 5).value_or("<error>"), "hello");
  auto cat = Sh("cat notes.txt");
  ASSERT_ENDED_OK(cat);
  EXPECT_EQ(cat->out, "hello WORLD");
  // Truncate, and a mode on creation.
  ASSERT_TRUE(IsOk(client_->WriteFile("notes.txt", "short", 0, true)));
  EXPECT_EQ(client_->ReadFile("notes.txt", 0, 100).value_or("<error>"), "short");
  ASSERT_TRUE(IsOk(client_->WriteFile("private.txt", "x", 0, true, 0600)));
  ASSERT_OK_AND_ASSIGN(FileInfo info, client_->Stat("private.txt"));
  EXPECT_EQ(info.mode, 0600u);
  EXPECT_EQ(info.type, FileInfo::Type::kFile);
  EXPECT_EQ(info.size, 1u);
  // Errors name what failed.
  EXPECT_TRUE(StatusIs(client_->ReadFile("missing.txt", 0, 10), absl::StatusCode::kNotFound, "missing.txt"));
  EXPECT_TRUE(StatusIs(client_->ReadFile("/workspace", 0, 10), absl::StatusCode::kFailedPrecondition,
                       "is a directory"));
  // File tools stay in the workspace: an absolute path elsewhere is refused by name.
  EXPECT_TRUE(StatusIs(client_->WriteFile("/usr/bin/evil", "x", 0, true), absl::StatusCode::kInvalidArgument,
                       "/usr/bin/evil"));
  EXPECT_TRUE(StatusIs(client_->ReadFile("/etc/passwd", 0, 10), absl::StatusCode::kInvalidArgument,
                       "outside the workspace"));
  ASSERT_TRUE(IsOk(client_->WriteFile("/workspace/absolute.txt", "abs", 0, true)));
  EXPECT_EQ(client_->ReadFile("absolute.txt", 0, 10).value_or("<error>"), "abs");
  auto fifo = Sh("mkfifo fifo");
  ASSERT_ENDED_OK(fifo);
  EXPECT_TRUE(StatusIs(client_->ReadFile("fifo", 0, 10), absl::StatusCode::kFailedPrecondition, "not a regular file"));
  EXPECT_TRUE(StatusIs(client_->WriteFile("fifo", "x", 0, false), absl::StatusCode::kFailedPrecondition, "fifo"));
  // A read is capped at one chunk.
  ASSERT_TRUE(IsOk(client_->WriteFile("big", std::string(InitClient::kMaxChunkBytes + 10, 'b'), 0, true)));
  EXPECT_EQ(client_->ReadFile("big", 0, 10u << 20).value_or("").size(), InitClient::kMaxChunkBytes);
}

TEST_F(InitProtocolTest, FiveMebibytesInChunksWithMatchingSha256) {
  const std::string data = RandomBytes(5u << 20, 42);
  constexpr size_t kChunk = 256u << 10;
  for (size_t off = 0; off < data.size(); off += kChunk) {
    ASSERT_TRUE(IsOk(client_->WriteFile("big.bin", std::string_view(data).substr(off, kChunk), off, off == 0)));
  }
  const std::string host_digest = Sha256Hex(data);
  ASSERT_OK_AND_ASSIGN(std::string jail_digest, client_->Sha256("big.bin"));
  EXPECT_EQ(jail_digest, host_digest);
  // The workload's own sha256sum agrees.
  auto sum = Sh("sha256sum big.bin");
  ASSERT_ENDED_OK(sum);
  EXPECT_EQ(sum->out.substr(0, 64), host_digest);
  std::string back;
  for (size_t off = 0; off < data.size(); off += kChunk) {
    ASSERT_OK_AND_ASSIGN(std::string part, client_->ReadFile("big.bin", off, kChunk));
    back += part;
  }
  EXPECT_TRUE(back == data);
  // One WriteFile call with more than a frame's worth is split by the client.
  ASSERT_TRUE(IsOk(client_->WriteFile("big2.bin", data, 0, true)));
  EXPECT_EQ(client_->Sha256("big2.bin").value_or("<error>"), host_digest);
  EXPECT_TRUE(StatusIs(client_->Sha256("nope"), absl::StatusCode::kNotFound, "nope"));
}

TEST_F(InitProtocolTest, ListStatMkdirRemove) {
  ASSERT_TRUE(IsOk(client_->Mkdir("d/e/f", true)));
  EXPECT_TRUE(IsOk(client_->Mkdir("d/e/f", true))) << "mkdir -p of an existing directory";
  EXPECT_TRUE(StatusIs(client_->Mkdir("d", false), absl::StatusCode::kAlreadyExists, "d"));
  EXPECT_TRUE(StatusIs(client_->Mkdir("x/y", false), absl::StatusCode::kNotFound, "x/y"));
  ASSERT_TRUE(IsOk(client_->Mkdir("/workspace/d/g", false)));
  ASSERT_TRUE(IsOk(client_->WriteFile("d/b.txt", "bbbb", 0, true)));
  ASSERT_TRUE(IsOk(client_->WriteFile("d/a.txt", "a", 0, true, 0640)));
  auto ln = Sh("ln -s a.txt d/link");
  ASSERT_ENDED_OK(ln);
  EXPECT_TRUE(StatusIs(client_->Mkdir("d/a.txt/z", true), absl::StatusCode::kAlreadyExists, "a.txt"));

  ASSERT_OK_AND_ASSIGN(std::vector<FileInfo> entries, client_->ListFiles("d"));
  std::vector<std::string> names;
  for (const FileInfo& e : entries) names.push_back(e.name);
  EXPECT_THAT(names, ElementsAre("a.txt", "b.txt", "e", "g", "link"));
  EXPECT_EQ(entries[0].type, FileInfo::Type::kFile);
  EXPECT_EQ(entries[0].mode, 0640u);
  EXPECT_EQ(entries[1].size, 4u);
  EXPECT_EQ(entries[2].type, FileInfo::Type::kDirectory);
  EXPECT_EQ(entries[4].type, FileInfo::Type::kSymlink);
  EXPECT_EQ(entries[4].symlink_target, "a.txt");
  const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_LT(std::abs(entries[1].mtime_ns - now_ns), int64_t{60} * 1'000'000'000);

  ASSERT_OK_AND_ASSIGN(FileInfo link, client_->Stat("d/link"));
  EXPECT_EQ(link.type, FileInfo::Type::kSymlink);
  EXPECT_EQ(link.symlink_target, "a.txt");
  EXPECT_EQ(link.name, "d/link");
  ASSERT_OK_AND_ASSIGN(FileInfo dir, client_->Stat("/workspace/d"));
  EXPECT_EQ(dir.type, FileInfo::Type::kDirectory);
  EXPECT_TRUE(StatusIs(client_->Stat("d/none"), absl::StatusCode::kNotFound));
  EXPECT_TRUE(StatusIs(client_->ListFiles("d/a.txt"), absl::StatusCode::kFailedPrecondition, "d/a.txt"));

  EXPECT_TRUE(StatusIs(client_->Remove("d", false), absl::StatusCode::kFailedPrecondition, "not empty"));
  ASSERT_TRUE(IsOk(client_->Remove("d/b.txt", false)));
  ASSERT_TRUE(IsOk(client_->Remove("d/g", false)));
  EXPECT_TRUE(StatusIs(client_->Stat("d/b.txt"), absl::StatusCode::kNotFound));
  ASSERT_TRUE(IsOk(client_->Remove("d", true)));
  EXPECT_TRUE(StatusIs(client_->Stat("d"), absl::StatusCode::kNotFound));
  EXPECT_TRUE(StatusIs(client_->Remove("d", true), absl::StatusCode::kNotFound));
  EXPECT_TRUE(StatusIs(client_->Remove("/", true), absl::StatusCode::kInvalidArgument));
}

TEST_F(InitProtocolTest, ListingIsCapped) {
  auto many = Sh("mkdir many && cd many && i=0; while [ $i -lt 10001 ]; do : > f$i; i=$((i+1)); done");
  ASSERT_ENDED_OK(many);
  EXPECT_TRUE(StatusIs(client_->ListFiles("many"), absl::StatusCode::kResourceExhausted, "10000"));
  ASSERT_TRUE(IsOk(client_->Remove("many/f0", false)));
  ASSERT_OK_AND_ASSIGN(std::vector<FileInfo> entries, client_->ListFiles("many"));
  EXPECT_EQ(entries.size(), 10000u);
  EXPECT_TRUE(IsOk(client_->Remove("many", true)));
}

TEST_F(InitProtocolTest, DotDotAndEmptyPathsAreRefused) {
  for (const char* path : {"../etc/passwd", "a/../b", "/workspace/..", "..", "x/.."}) {
    SCOPED_TRACE(path);
    EXPECT_TRUE(StatusIs(client_->WriteFile(path, "x", 0, true), absl::StatusCode::kInvalidArgument, path));
    EXPECT_TRUE(StatusIs(client_->ReadFile(path, 0, 1), absl::StatusCode::kInvalidArgument, path));
    EXPECT_TRUE(StatusIs(client_->Sha256(path), absl::StatusCode::kInvalidArgument, path));
    EXPECT_TRUE(StatusIs(client_->ListFiles(path), absl::StatusCode::kInvalidArgument, path));
    EXPECT_TRUE(StatusIs(client_->Stat(path), absl::StatusCode::kInvalidArgument, path));
    EXPECT_TRUE(StatusIs(client_->Mkdir(path, true), absl::StatusCode::kInvalidArgument, path));
    EXPECT_TRUE(StatusIs(client_->Remove(path, true), absl::StatusCode::kInvalidArgument, path));
  }
  EXPECT_TRUE(StatusIs(client_->Stat(""), absl::StatusCode::kInvalidArgument, "empty"));
  EXPECT_TRUE(StatusIs(client_->WriteFile(std::string("a\0b", 3), "x", 0, true), absl::StatusCode::kInvalidArgument,
                       "NUL"));
  // Names that merely start with dots are fine.
  EXPECT_TRUE(IsOk(client_->WriteFile("..hidden", "x", 0, true)));
  EXPECT_TRUE(IsOk(client_->Stat("./..hidden")));
}

TEST_F(InitProtocolTest, PlantedSymlinksAreNotFollowedForWriteAndRemove) {
  auto plant = Sh(
      "ln -s /etc/shadow x && ln -s /proc/1/environ e && mkdir keep && echo precious > keep/file && "
      "ln -s /workspace/keep l && mkdir t && ln -s /workspace/keep t/l");
  ASSERT_ENDED_OK(plant);

  // Writing through the planted link is refused; the link stays what it was.
  EXPECT_TRUE(StatusIs(client_->WriteFile("x", "root::0:0:::::\n", 0, true), absl::StatusCode::kFailedPrecondition,
                       "symlink"));
  ASSERT_OK_AND_ASSIGN(FileInfo x, client_->Stat("x"));
  EXPECT_EQ(x.type, FileInfo::Type::kSymlink);
  EXPECT_EQ(x.symlink_target, "/etc/shadow");
  // Reading does not follow it either: it leads out of the workspace.
  EXPECT_TRUE(StatusIs(client_->ReadFile("x", 0, 4096), absl::StatusCode::kPermissionDenied, "outside the workspace"));
  EXPECT_TRUE(StatusIs(client_->Sha256("x"), absl::StatusCode::kPermissionDenied));

  EXPECT_TRUE(StatusIs(client_->WriteFile("e", "PATH=/evil", 0, true), absl::StatusCode::kFailedPrecondition));
  absl::StatusOr<std::string> environ_text = client_->ReadFile("e", 0, 65536);
  if (environ_text.ok()) {
    EXPECT_THAT(*environ_text, Not(HasSubstr("hunter2")));
    EXPECT_THAT(*environ_text, HasSubstr("HOME=/workspace")) << "it is the jail's init environment";
  }
  // /proc is outside the workspace, so its magic links (the control socket, another root) are out of reach.
  EXPECT_TRUE(StatusIs(client_->ReadFile("/proc/self/fd/3", 0, 10), absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(StatusIs(client_->WriteFile("/proc/1/fd/3", "garbage", 0, false),
                       absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(StatusIs(client_->ReadFile("/proc/self/root/etc/passwd", 0, 10),
                       absl::StatusCode::kInvalidArgument));
  // A workspace symlink into /proc is not followed either.
  ASSERT_ENDED_OK(Sh("ln -s /proc/self/fd/3 sock"));
  EXPECT_TRUE(StatusIs(client_->ReadFile("sock", 0, 10), absl::StatusCode::kPermissionDenied));

  // Removing a link removes the link, never what it points to, also inside a recursive removal.
  EXPECT_TRUE(IsOk(client_->Remove("x", false)));
  EXPECT_TRUE(IsOk(client_->Remove("l", true)));
  EXPECT_TRUE(IsOk(client_->Remove("t", true)));
  EXPECT_TRUE(StatusIs(client_->Stat("l"), absl::StatusCode::kNotFound));
  EXPECT_TRUE(StatusIs(client_->Stat("t"), absl::StatusCode::kNotFound));
  EXPECT_EQ(client_->ReadFile("keep/file", 0, 100).value_or("<error>"), "precious\n");
  // The workload cannot read init's environment or memory itself (init is not dumpable).
  auto peek = Sh("cat /proc/1/environ");
  ASSERT_ENDED_OK(peek);
  EXPECT_NE((*peek->end)->exit_code, 0);
}

// --- the connection ------------------------------------------------------------------------------------

TEST_F(InitProtocolTest, ClosingTheConnectionEndsTheJail) {
  auto run = std::make_shared<ExecRun>();
  ASSERT_TRUE(IsOk(Start(*client_, Command({"sh", "-c", "echo up; sleep 1000"}), run)));
  ASSERT_TRUE(run->WaitOutput("up", seconds(5)));
  const auto start = Clock::now();
  client_.reset();
  // The pending command learned it from on_end, before the destructor returned.
  ASSERT_TRUE(run->end.has_value());
  EXPECT_TRUE(StatusIs(*run->end, absl::StatusCode::kUnavailable, "shut down"));
  const RunResult result = jail_->Wait();
  EXPECT_LT(Clock::now() - start, seconds(5));
  EXPECT_EQ(result.exit_code, 0) << "init exits by itself";
  EXPECT_EQ(result.signal, 0);
}

TEST_F(InitProtocolTest, SigtermIsForwardedAndInitExitsWhenCommandsEnd) {
  auto run = std::make_shared<ExecRun>();
  ASSERT_TRUE(IsOk(Start(
      *client_, Command({"sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"}),
      run)));
  ASSERT_TRUE(run->WaitOutput("ready", seconds(5)));
  ASSERT_EQ(kill(jail_->pid(), SIGTERM), 0);
  ASSERT_TRUE(run->WaitEnd(seconds(5)));
  ASSERT_ENDED_OK(run);
  EXPECT_EQ((*run->end)->exit_code, 7);
  EXPECT_THAT(run->out, HasSubstr("got-term"));
  const RunResult result = jail_->Wait();
  EXPECT_EQ(result.exit_code, 0);
  for (int i = 0; i < 200 && client_->healthy(); ++i) std::this_thread::sleep_for(milliseconds(10));
  EXPECT_FALSE(client_->healthy()) << "init closed the connection when it exited";
  client_.reset();
}

TEST_F(InitProtocolTest, TheWorkloadCannotEndTheJailBySignallingInit) {
  auto run = Sh("kill -TERM 1; kill -INT 1; echo $?");
  ASSERT_ENDED_OK(run);
  std::this_thread::sleep_for(milliseconds(200));
  auto again = RunToEnd(Command({"echo", "still here"}));
  ASSERT_ENDED_OK(again);
  EXPECT_EQ(again->out, "still here\n");
}

// --- a hostile init ------------------------------------------------------------------------------------

// The test plays sandbox-init on the other end of a socketpair.
class HostileInitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    peer_.Reset(fds[1]);
    client_ = std::make_unique<InitClient>(UniqueFd(fds[0]));
  }

  // Reads one request frame (so the client's call is known to be pending).
  void ReadRequest() {
    FrameReader reader;
    char buf[4096];
    std::string_view payload;
    while (!reader.Next(&payload)) {
      const ssize_t n = read(peer_.get(), buf, sizeof(buf));
      ASSERT_GT(n, 0);
      ASSERT_TRUE(reader.Feed(buf, static_cast<size_t>(n)));
    }
  }
  void Write(std::string_view bytes) {
    ASSERT_EQ(write(peer_.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }

  // Runs a Stat in another thread, lets `misbehave` answer it, and returns the call's status.
  absl::Status StatWhile(const std::function<void()>& misbehave) {
    absl::Status status;
    std::thread caller([&] { status = client_->Stat("x").status(); });
    ReadRequest();
    misbehave();
    caller.join();
    return status;
  }

  UniqueFd peer_;
  std::unique_ptr<InitClient> client_;
};

TEST(InitClientTest, AnInvalidSocketMakesAnUnhealthyClient) {
  InitClient client{UniqueFd()};
  EXPECT_FALSE(client.healthy());
  EXPECT_TRUE(StatusIs(client.Stat("x"), absl::StatusCode::kUnavailable, "not a usable socket"));
  EXPECT_TRUE(StatusIs(client.StartExec(Command({"true"}), nullptr, nullptr), absl::StatusCode::kUnavailable));
}

TEST_F(HostileInitTest, OversizedLengthPrefix) {
  const absl::Status status = StatWhile([&] { Write(std::string("\x00\x00\x00\x7f", 4)); });
  EXPECT_TRUE(StatusIs(status, absl::StatusCode::kUnavailable, "exceeds the 1048576-byte cap"));
  EXPECT_FALSE(client_->healthy());
  // Every later call fails at once with the same cause.
  const auto start = Clock::now();
  EXPECT_TRUE(StatusIs(client_->Mkdir("y", false), absl::StatusCode::kUnavailable, "1048576-byte cap"));
  EXPECT_TRUE(StatusIs(client_->StartExec(Command({"true"}), nullptr, nullptr), absl::StatusCode::kUnavailable));
  EXPECT_LT(Clock::now() - start, seconds(1));
}

TEST_F(HostileInitTest, TruncatedFrameThenClose) {
  const absl::Status status = StatWhile([&] {
    char header[4];
    EncodeFrameHeader(100, header);
    Write(std::string_view(header, 4));
    Write(std::string(10, 'x'));
    peer_.Reset();
  });
  EXPECT_TRUE(StatusIs(status, absl::StatusCode::kUnavailable, "truncated frame: connection closed after 10 of 100"));
  EXPECT_FALSE(client_->healthy());
}

// A browser action travels as its typed message, with the call's deadline in the envelope; the answer comes
// back as BrowserOutput.
TEST_F(HostileInitTest, ABrowserActionTravelsAsItsTypedMessage) {
  init::BrowserRequest navigate;
  navigate.mutable_navigate()->set_url("http://example.test/");
  navigate.mutable_navigate()->set_wait_until(init::WAIT_UNTIL_NETWORK_IDLE);
  navigate.mutable_navigate()->set_timeout_ms(12'000);
  absl::StatusOr<InitClient::BrowserOutput> out;
  std::thread caller([&] { out = client_->BrowserRequest(navigate, 14'000); });
  FrameReader reader;
  char buf[4096];
  std::string_view payload;
  while (!reader.Next(&payload)) {
    const ssize_t n = read(peer_.get(), buf, sizeof(buf));
    ASSERT_GT(n, 0);
    ASSERT_TRUE(reader.Feed(buf, static_cast<size_t>(n)));
  }
  init::Request request;
  ASSERT_TRUE(request.ParseFromArray(payload.data(), static_cast<int>(payload.size())));
  EXPECT_EQ(request.timeout_ms(), 14'000u);
  ASSERT_TRUE(request.browser_request().has_navigate());
  EXPECT_EQ(request.browser_request().navigate().url(), "http://example.test/");
  EXPECT_EQ(request.browser_request().navigate().wait_until(), init::WAIT_UNTIL_NETWORK_IDLE);
  EXPECT_EQ(request.browser_request().navigate().timeout_ms(), 12'000u);
  init::Response response;
  response.set_call_id(request.call_id());
  response.mutable_browser_output()->set_data("loaded");
  Write(EncodeFrame(response.SerializeAsString()));
  caller.join();
  ASSERT_TRUE(IsOk(out));
  EXPECT_EQ(out->data, "loaded");
}

// Actions answered with something else than the call expects (a screenshot, the pointer's position) have
// calls of their own: handed to the wrong one they are refused before they are sent, not read as a protocol
// violation that would end the connection.
TEST_F(HostileInitTest, AnActionOnTheWrongCallIsRefusedBeforeItIsSent) {
  init::BrowserRequest shot;
  shot.mutable_screenshot()->set_format(init::IMAGE_FORMAT_PNG);
  EXPECT_TRUE(StatusIs(client_->BrowserRequest(shot), absl::StatusCode::kInvalidArgument, "BrowserScreenshot"));
  EXPECT_TRUE(StatusIs(client_->BrowserRequest(init::BrowserRequest()), absl::StatusCode::kInvalidArgument));
  init::DesktopInput cursor;
  cursor.mutable_cursor_position();
  EXPECT_TRUE(StatusIs(client_->DesktopInput(cursor), absl::StatusCode::kInvalidArgument, "PointerPosition"));
  EXPECT_TRUE(StatusIs(client_->DesktopInput(init::DesktopInput()), absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(client_->healthy());
  char byte;
  EXPECT_EQ(recv(peer_.get(), &byte, 1, MSG_DONTWAIT), -1);  // nothing was sent
}

TEST_F(HostileInitTest, GarbageThatIsNotAResponse) {
  const absl::Status status = StatWhile([&] { Write(EncodeFrame(std::string("\xff\xff\xff\xff\xff\xff", 6))); });
  EXPECT_TRUE(StatusIs(status, absl::StatusCode::kUnavailable, "not a valid response"));
}

TEST_F(HostileInitTest, RandomBytesNeverCrashTheClient) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    SetUp();
    const absl::Status status = StatWhile([&] { Write(RandomBytes(5000, seed)); peer_.Reset(); });
    EXPECT_TRUE(StatusIs(status, absl::StatusCode::kUnavailable)) << "seed " << seed << ": " << status;
    client_.reset();
  }
}

TEST_F(HostileInitTest, PendingCommandsEndWithUnavailable) {
  auto run = std::make_shared<ExecRun>();
  ASSERT_OK_AND_ASSIGN(uint64_t id, Start(*client_, Command({"sleep", "100"}), run));
  ReadRequest();
  // A valid-looking output chunk at a wrong offset is a protocol violation too.
  std::string response;
  response += '\x08';  // call_id (field 1, varint)
  response += static_cast<char>(id);
  response += "\x12\x07\x08\x01\x12\x01z\x18\x05";  // output {stream: 1, data: "z", offset: 5}
  Write(EncodeFrame(response));
  ASSERT_TRUE(run->WaitEnd(seconds(5)));
  EXPECT_TRUE(StatusIs(*run->end, absl::StatusCode::kUnavailable, "offset 5"));
  EXPECT_EQ(run->end_calls, 1);
  EXPECT_FALSE(client_->healthy());
}

TEST_F(HostileInitTest, PeerClosingFailsPendingCallsAndCommands) {
  auto run = std::make_shared<ExecRun>();
  ASSERT_TRUE(IsOk(Start(*client_, Command({"sleep", "100"}), run)));
  ReadRequest();
  const absl::Status status = StatWhile([&] { peer_.Reset(); });
  EXPECT_TRUE(StatusIs(status, absl::StatusCode::kUnavailable, "closed the connection"));
  ASSERT_TRUE(run->WaitEnd(seconds(5)));
  EXPECT_TRUE(StatusIs(*run->end, absl::StatusCode::kUnavailable, "closed the connection"));
}

}  // namespace
}  // namespace sbx::sandbox
