#include "agent/run/exec_daemon.h"

#include <limits.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace sbx::agent {

int ExecDaemon(const std::vector<std::string>& args) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) {
    fprintf(stderr, "sandbox-agent serve: cannot find this binary: %s\n", strerror(errno));
    return 1;
  }
  std::string dir(self, static_cast<size_t>(n));
  dir.resize(dir.rfind('/'));
  std::vector<std::string> tried;
  for (const std::string& path : {dir + "/sandbox-agentd", dir + "/../libexec/sandbox-agent/sandbox-agentd"}) {
    if (access(path.c_str(), X_OK) != 0) {
      tried.push_back(path);
      continue;
    }
    std::vector<char*> argv;
    std::string name = "sandbox-agentd";
    argv.push_back(name.data());
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(path.c_str(), argv.data());
    fprintf(stderr, "sandbox-agent serve: cannot execute %s: %s\n", path.c_str(), strerror(errno));
    return 1;
  }
  fprintf(stderr, "sandbox-agent serve: sandbox-agentd not found (tried %s, %s)\n", tried[0].c_str(),
          tried.size() > 1 ? tried[1].c_str() : "");
  return 1;
}

}  // namespace sbx::agent
