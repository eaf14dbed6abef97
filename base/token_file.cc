#include "base/token_file.h"

#include <fcntl.h>
#include <unistd.h>

#include "base/unique_fd.h"

namespace sbx {

std::string ReadTokenFile(const std::string& path) {
  std::string token;
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return token;
  char buf[4096];
  ssize_t n = read(fd.get(), buf, sizeof(buf));
  if (n > 0) token.assign(buf, static_cast<size_t>(n));
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
  return token;
}

}  // namespace sbx
