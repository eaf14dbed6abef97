#include "tests/common/spawn.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <system_error>

#include <boost/process/args.hpp>
#include <boost/process/child.hpp>
#include <boost/process/exe.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/posix.hpp>
#include <boost/process/search_path.hpp>

namespace sbx::testing {

namespace bp = ::boost::process;

namespace {

// Closes the fds it holds unless released.
struct Fds {
  std::vector<int> fds;
  int Add(int fd) {
    if (fd >= 0) fds.push_back(fd);
    return fd;
  }
  ~Fds() {
    for (int fd : fds) close(fd);
  }
};

std::vector<char*> CStrings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (std::string& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

Spawned Spawn(const SpawnOptions& options) {
  Spawned spawned;
  if (options.args.empty()) return spawned;
  // PATH is searched here, in the test, as execvp would in the child.
  std::string exe = options.args[0];
  if (exe.find('/') == std::string::npos) {
    exe = bp::search_path(exe).string();
    if (exe.empty()) return spawned;
  }
  // Our own argv (argv[0] as given, where Boost.Process would put the path found) and environment, for the
  // child's execve.
  std::vector<std::string> args = options.args;
  std::vector<char*> argv = CStrings(args);
  std::vector<std::string> env = options.env.value_or(std::vector<std::string>{});
  std::vector<char*> envp = CStrings(env);

  Fds closed_after_fork;  // the child's ends, and files; ours are released below
  const int null = closed_after_fork.Add(open("/dev/null", O_RDWR | O_CLOEXEC));
  int err = null;
  if (!options.stderr_path.empty()) {
    err = closed_after_fork.Add(open(options.stderr_path.c_str(),
                                     O_WRONLY | O_CREAT | O_CLOEXEC | (options.append_stderr ? O_APPEND : O_TRUNC),
                                     0644));
  }
  int in[2] = {null, -1}, out[2] = {-1, null};
  if (options.stdin_pipe && pipe2(in, O_CLOEXEC) != 0) return spawned;
  closed_after_fork.Add(options.stdin_pipe ? in[0] : -1);
  Fds ours;
  ours.Add(in[1]);
  if (options.stdout_pipe && pipe2(out, O_CLOEXEC) != 0) return spawned;
  closed_after_fork.Add(options.stdout_pipe ? out[1] : -1);
  ours.Add(out[0]);
  if (null < 0 || err < 0) return spawned;

  const pid_t parent = getpid();
  const bool die_with_test = options.die_with_test;
  const bool own_env = options.env.has_value();
  std::error_code ec;  // set instead of an exception when fork or exec fails
  bp::child child(bp::exe = exe, bp::posix::fd.bind(0, in[0]), bp::posix::fd.bind(1, out[1]),
                  bp::posix::fd.bind(2, err),
                  bp::extend::on_exec_setup =
                      [&](auto& exec) {
                        // In the child, before execve: pointer stores and raw syscalls only.
                        exec.cmd_line = argv.data();
                        if (own_env) exec.env = envp.data();
                        if (die_with_test) {
                          prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test that dies takes its child with it
                          if (getppid() != parent) _exit(127);
                        }
                      },
                  ec);
  if (ec || !child.valid()) return spawned;
  child.detach();  // the caller waits for it by pid
  spawned.pid = child.id();
  ours.fds.clear();
  spawned.stdin_fd = in[1];
  spawned.stdout_fd = out[0];
  return spawned;
}

pid_t SpawnLogged(const std::vector<std::string>& args, const std::string& log_path, bool append) {
  SpawnOptions options;
  options.args = args;
  options.stderr_path = log_path;
  options.append_stderr = append;
  return Spawn(options).pid;
}

}  // namespace sbx::testing
