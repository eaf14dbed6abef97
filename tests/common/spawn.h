// Test helper: starting a program under test (the agent) as a child of the test, its stderr in a log file.
// Header-only.
#ifndef SBX_TESTS_COMMON_SPAWN_H_
#define SBX_TESTS_COMMON_SPAWN_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace sbx::testing {

// Starts `args` (args[0] a path): stdin and stdout /dev/null, stderr into `log_path` (appended to, or
// truncated), SIGKILLed if the test dies. Everything is prepared before fork: the test process has gRPC's
// threads, so the child makes raw syscalls only until exec. Returns the pid, or -1.
inline pid_t SpawnLogged(const std::vector<std::string>& args, const std::string& log_path, bool append) {
  if (args.empty()) return -1;
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0644);
  const int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (log < 0 || null < 0) {
    if (log >= 0) close(log);
    if (null >= 0) close(null);
    return -1;
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test that dies takes its child with it
    if (getppid() != parent) _exit(127);
    dup2(log, 2);
    dup2(null, 0);
    dup2(null, 1);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log);
  close(null);
  return pid;
}

}  // namespace sbx::testing

#endif  // SBX_TESTS_COMMON_SPAWN_H_
