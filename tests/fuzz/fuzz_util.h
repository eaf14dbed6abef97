// Helpers for the fuzz targets that touch the file system (cdp_fuzz, outbox_fuzz).
#ifndef SBX_TESTS_FUZZ_FUZZ_UTIL_H_
#define SBX_TESTS_FUZZ_FUZZ_UTIL_H_

#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace sbx::fuzz {

inline int OpenFdCount() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr) ++n;
    closedir(d);
  }
  return n;
}

// Call once per input: aborts (a finding) when the process holds 16 fds more than at its 256th input,
// checked every 256 inputs, so a target that leaks an fd per input (or per few inputs) fails within a run.
// The slack is libFuzzer's own: it keeps pipes to llvm-symbolizer once it prints a NEW_FUNC line.
inline void CheckNoFdLeak() {
  static int baseline = -1;
  static unsigned calls = 0;
  if (++calls % 256 != 0) return;
  const int now = OpenFdCount();
  if (baseline < 0) baseline = now;
  if (now > baseline + 16) {
    std::fprintf(stderr, "fd leak: %d open fds, %d at input 256\n", now, baseline);
    std::abort();
  }
}

// A private directory under TMPDIR (tests/fuzz/run.sh points it at a scratch directory), removed with what is
// left in it (files only) when the process exits.
inline const std::string& ScratchDir(const char* name) {
  static std::string* dir = nullptr;
  if (dir == nullptr) {
    const char* tmp = std::getenv("TMPDIR");
    std::string path = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/" + name + ".XXXXXX";
    if (mkdtemp(path.data()) == nullptr) std::abort();
    dir = new std::string(path);
    std::atexit([] { std::system(("rm -rf '" + *dir + "'").c_str()); });
  }
  return *dir;
}

}  // namespace sbx::fuzz

#endif  // SBX_TESTS_FUZZ_FUZZ_UTIL_H_
