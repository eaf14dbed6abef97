// Test helper: starting a program (the agent under test, sandboxctl, node, a shell, a benchmark's anchor) as an
// ordinary child of the test, outside any jail, with Boost.Process. Jails are built with raw clone in the product;
// a test forks by hand only where the child must do something in-process before (or instead of) exec. In
// sbx_test_common (tests/common/CMakeLists.txt).
#ifndef SBX_TESTS_COMMON_SPAWN_H_
#define SBX_TESTS_COMMON_SPAWN_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace sbx::testing {

struct SpawnOptions {
  std::vector<std::string> args;  // args[0]: a path, or a name looked up in the test's PATH
  // The child's whole environment ("NAME=value" each); unset: the test's own.
  std::optional<std::vector<std::string>> env;
  // "NAME=value" each, set on top of `env` (or the test's own), replacing a variable of the same name.
  std::vector<std::string> env_overrides;
  bool stdin_pipe = false;   // else /dev/null, or `stdin_fd`
  int stdin_fd = -1;         // stdin from this fd of the test's (left open), when >= 0 and no pipe
  bool stdout_pipe = false;  // else /dev/null, or `stdout_fd`
  int stdout_fd = -1;        // stdout onto this fd of the test's (left open), when >= 0 and no pipe
  std::string stderr_path;   // stderr into this file (created); "" for /dev/null
  bool append_stderr = false;  // else the file is truncated
  bool stderr_inherit = false;    // stderr is the test's own (stderr_path is then ignored)
  bool stderr_to_stdout = false;  // stderr goes where stdout goes, as a shell's 2>&1 (overrides the above)
  bool die_with_test = true;   // SIGKILLed if the test dies (PR_SET_PDEATHSIG)
  // vfork instead of fork: no copy of the test's page tables, as posix_spawn does; the benchmarks start their
  // anchors (and ours beside them) this way, so that the start cost measured is the program's own.
  bool vfork = false;
};

struct Spawned {
  pid_t pid = -1;  // -1 when it could not be started (the program could not be found or executed); the
                   // caller reaps it (waitpid)
  int stdin_fd = -1;   // the test's end of the child's stdin pipe (close-on-exec), or -1
  int stdout_fd = -1;  // the test's end of the child's stdout pipe (close-on-exec), or -1
};

// Starts the program. Everything is prepared before fork (files and pipes opened, the program found in PATH):
// the test process has gRPC's threads, so the child makes raw syscalls only until exec.
Spawned Spawn(const SpawnOptions& options);

// Starts `args` (args[0] a path): stdin and stdout /dev/null, stderr into `log_path` (appended to, or
// truncated), SIGKILLed if the test dies. Returns the pid, or -1.
pid_t SpawnLogged(const std::vector<std::string>& args, const std::string& log_path, bool append);

// Waits for `pid` (retrying on EINTR); its exit status, or -1 when a signal ended it or it was no child.
int WaitExitCode(pid_t pid);

// What a program run to its end wrote on stdout, and how it ended.
struct RunResult {
  int exit_code = -1;  // its exit status; -1 when a signal ended it or it could not be started
  std::string out;     // its stdout (with its stderr, when asked for)
};

struct RunOptions {
  std::string stdin_data;         // its whole stdin (a memory file it reads to the end); "" for /dev/null
  bool stderr_to_stdout = false;  // stderr into `out` too (2>&1); else it is the test's own
};

// Runs `args` (args[0] a path, or a name looked up in PATH) to its end and reads its stdout.
RunResult RunCapture(const std::vector<std::string>& args, const RunOptions& options = {});

// Runs `command` with /bin/sh -c, as popen(command, "r") does (stdin /dev/null, stderr the test's own unless
// the command redirects it).
RunResult RunShell(const std::string& command);

}  // namespace sbx::testing

#endif  // SBX_TESTS_COMMON_SPAWN_H_
