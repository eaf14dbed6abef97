// Fuzzes what sandbox-init does with the bytes Chromium sends over its CDP pipe (sandbox/init/drivers/cdp.h,
// Browser::HandleBytesForTesting: the NUL-framed JSON reader, the lone-surrogate repair, the depth limit and
// the dispatch of responses and events). The first byte picks the size of the reads. Downloads settle in a
// private directory made once; the target empties it after every input, so nothing accumulates.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "sandbox/init/drivers/cdp.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// TMPDIR/sbx-cdp-fuzz.XXXXXX/d/d, so even a ".." GUID stays inside the private tree.
const std::string& DownloadDir() {
  static const std::string* dir = [] {
    const std::string base = sbx::fuzz::ScratchDir("sbx-cdp-fuzz");
    if (mkdir((base + "/d").c_str(), 0700) != 0 || mkdir((base + "/d/d").c_str(), 0700) != 0) std::abort();
    return new std::string(base + "/d/d");
  }();
  return *dir;
}

// Removes what a settled download left (files only: nothing else is created there).
void Empty(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") unlink((dir + "/" + name).c_str());
  }
  closedir(d);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = data[0] % 64;  // 0: everything at once
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::string& dir = DownloadDir();
  // A finished download is renamed from dir/GUID: give the input a file to move.
  const int fd = open((dir + "/g").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0) close(fd);
  std::vector<nlohmann::json> events = sbx::init::Browser::HandleBytesForTesting(bytes, chunk, dir);
  for (const nlohmann::json& e : events) (void)e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  Empty(dir);
  sbx::fuzz::CheckNoFdLeak();
  return 0;
}
