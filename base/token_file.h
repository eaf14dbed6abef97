// Bearer tokens kept in files (the agent's bearer_token_file), read afresh on every request so that a rotated
// token takes effect at once.
#ifndef SBX_BASE_TOKEN_FILE_H_
#define SBX_BASE_TOKEN_FILE_H_

#include <string>

namespace sbx {

// The token in `path`: its first 4 KiB without trailing newlines, carriage returns and spaces; "" when the
// file cannot be read.
std::string ReadTokenFile(const std::string& path);

}  // namespace sbx

#endif  // SBX_BASE_TOKEN_FILE_H_
