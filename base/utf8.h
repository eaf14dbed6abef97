// UTF-8 decoding shared by every folder that shows text made inside a jail: the agent (making event text
// valid UTF-8) and sandboxctl (escaping text for the operator's terminal).
#ifndef SBX_BASE_UTF8_H_
#define SBX_BASE_UTF8_H_

#include <cstddef>
#include <string_view>

namespace sbx {

// The length of the valid UTF-8 sequence at s[i] (1 for ASCII, 2 to 4 otherwise), or 0 when it is not one.
// Strict, as protobuf checks it: no overlong forms, no surrogates, nothing past U+10FFFF. Needs i < s.size().
size_t Utf8SequenceAt(std::string_view s, size_t i);

}  // namespace sbx

#endif  // SBX_BASE_UTF8_H_
