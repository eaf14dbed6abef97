#include "tests/common/spawn.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

// Boost 1.74 compiles bp::posix::use_vfork in only for pre-2008 POSIX levels (config.hpp), and this build's
// _GNU_SOURCE is 2008's; glibc still has vfork, so say so before Boost looks.
#ifndef BOOST_POSIX_HAS_VFORK
#define BOOST_POSIX_HAS_VFORK 1
#endif
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

// The child's environment: `base` (or the test's own) with `overrides` set on top, each replacing a variable
// of its name.
std::vector<std::string> ChildEnv(const std::optional<std::vector<std::string>>& base,
                                  const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  if (base.has_value()) {
    env = *base;
  } else {
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) env.emplace_back(*e);
  }
  for (const std::string& o : overrides) {
    const std::string name = o.substr(0, o.find('=') + 1);  // "NAME="
    std::erase_if(env, [&](const std::string& e) { return e.starts_with(name); });
    env.push_back(o);
  }
  return env;
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
  const bool own_env = options.env.has_value() || !options.env_overrides.empty();
  std::vector<std::string> env = own_env ? ChildEnv(options.env, options.env_overrides) : std::vector<std::string>{};
  std::vector<char*> envp = CStrings(env);

  Fds closed_after_fork;  // the child's ends, and files; ours are released below
  const int null = closed_after_fork.Add(open("/dev/null", O_RDWR | O_CLOEXEC));
  int err = null;
  if (options.stderr_inherit) {
    err = 2;
  } else if (!options.stderr_path.empty()) {
    err = closed_after_fork.Add(open(options.stderr_path.c_str(),
                                     O_WRONLY | O_CREAT | O_CLOEXEC | (options.append_stderr ? O_APPEND : O_TRUNC),
                                     0644));
  }
  int in[2] = {options.stdin_fd >= 0 ? options.stdin_fd : null, -1};
  int out[2] = {-1, options.stdout_fd >= 0 ? options.stdout_fd : null};
  if (options.stdin_pipe && pipe2(in, O_CLOEXEC) != 0) return spawned;
  closed_after_fork.Add(options.stdin_pipe ? in[0] : -1);
  Fds ours;
  ours.Add(in[1]);
  if (options.stdout_pipe && pipe2(out, O_CLOEXEC) != 0) return spawned;
  closed_after_fork.Add(options.stdout_pipe ? out[1] : -1);
  ours.Add(out[0]);
  if (options.stderr_to_stdout) err = out[1];
  if (null < 0 || err < 0) return spawned;

  const pid_t parent = getpid();
  const bool die_with_test = options.die_with_test;
  std::error_code ec;  // set instead of an exception when fork or exec fails
  // In the child, before execve: pointer stores and raw syscalls only (under vfork the stores land in the
  // test's own memory, in the executor that is about to be dropped).
  auto in_child = [&](auto& exec) {
    exec.cmd_line = argv.data();
    if (own_env) exec.env = envp.data();
    if (die_with_test) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test that dies takes its child with it
      if (getppid() != parent) _exit(127);
    }
  };
  auto start = [&](auto&&... how) {
    return bp::child(bp::exe = exe, bp::posix::fd.bind(0, in[0]), bp::posix::fd.bind(1, out[1]),
                     bp::posix::fd.bind(2, err), bp::extend::on_exec_setup = in_child, how..., ec);
  };
  bp::child child = options.vfork ? start(bp::posix::use_vfork) : start();
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

int WaitExitCode(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

RunResult RunCapture(const std::vector<std::string>& args, const RunOptions& options) {
  SpawnOptions spawn;
  spawn.args = args;
  spawn.stdout_pipe = true;
  spawn.stderr_inherit = true;
  spawn.stderr_to_stdout = options.stderr_to_stdout;
  RunResult result;
  // Its input from a memory file, read at its own pace: no pipe to fill while we wait for its output, and no
  // SIGPIPE for the test when it exits without reading.
  Fds input;
  if (!options.stdin_data.empty()) {
    spawn.stdin_fd = input.Add(memfd_create("stdin", MFD_CLOEXEC));
    if (spawn.stdin_fd < 0 ||
        pwrite(spawn.stdin_fd, options.stdin_data.data(), options.stdin_data.size(), 0) !=
            static_cast<ssize_t>(options.stdin_data.size())) {
      return result;
    }
  }
  const Spawned child = Spawn(spawn);
  if (child.pid < 0) return result;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(child.stdout_fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.out.append(buf, static_cast<size_t>(n));
  }
  close(child.stdout_fd);
  result.exit_code = WaitExitCode(child.pid);
  return result;
}

RunResult RunShell(const std::string& command) { return RunCapture({"/bin/sh", "-c", command}); }

}  // namespace sbx::testing
