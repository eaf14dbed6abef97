// Test helper: starting a program under test (the agent, sandboxctl) as an ordinary child of the test, outside
// any jail, with Boost.Process. In sbx_test_common (tests/common/CMakeLists.txt).
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
  bool stdin_pipe = false;   // else /dev/null
  bool stdout_pipe = false;  // else /dev/null
  std::string stderr_path;   // stderr into this file (created); "" for /dev/null
  bool append_stderr = false;  // else the file is truncated
  bool die_with_test = true;   // SIGKILLed if the test dies (PR_SET_PDEATHSIG)
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

}  // namespace sbx::testing

#endif  // SBX_TESTS_COMMON_SPAWN_H_
