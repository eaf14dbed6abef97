#include "tests/common/host_state.h"

#include <dirent.h>

#include <cstdlib>
#include <fstream>

namespace sbx::testing {

std::vector<pid_t> JailUidProcesses() {
  std::vector<pid_t> pids;
  DIR* d = opendir("/proc");
  while (d != nullptr) {
    dirent* e = readdir(d);
    if (e == nullptr) break;
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/status");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("Uid:", 0) != 0) continue;
      const unsigned long uid = strtoul(line.c_str() + 4, nullptr, 10);
      if (uid >= (1ul << 30) && uid != 0xFFFFFFFFul) pids.push_back(atoi(e->d_name));
      break;
    }
  }
  if (d != nullptr) closedir(d);
  return pids;
}

namespace {

void FindDirs(const std::string& dir, const std::function<bool(std::string_view)>& match, int depth,
              std::vector<std::string>* out) {
  if (depth > 8) return;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = readdir(d)) {
    if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
    const std::string path = dir + "/" + e->d_name;
    if (match(e->d_name)) out->push_back(path);
    FindDirs(path, match, depth + 1, out);
  }
  closedir(d);
}

}  // namespace

std::vector<std::string> CgroupDirs(const std::function<bool(std::string_view name)>& match) {
  std::vector<std::string> out;
  FindDirs("/sys/fs/cgroup", match, 0, &out);
  return out;
}

}  // namespace sbx::testing
