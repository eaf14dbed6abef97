// Text that comes from inside a jail (file names, page console text, download names, errors quoting them) is
// any bytes. Protobuf `string` fields must be UTF-8: one invalid name would make an event unparseable for
// every client, and a resuming client could never get past its seq. These helpers make jail text valid UTF-8
// in one place (EventLog::Append runs SanitizeUtf8 on every event), keeping the raw bytes where the API
// has a `<field>_bytes` beside the string.
#ifndef SBX_AGENT_SESSION_JAIL_TEXT_H_
#define SBX_AGENT_SESSION_JAIL_TEXT_H_

#include <string>
#include <string_view>

namespace google::protobuf {
class Message;
}

namespace sbx::agent {

// Strict UTF-8 (as protobuf checks it): no overlong forms, no surrogates, nothing past U+10FFFF.
bool IsValidUtf8(std::string_view s);

// `s` with each invalid sequence replaced by U+FFFD (one per maximal invalid subpart, as WHATWG does).
std::string ToValidUtf8(std::string_view s);

// Makes every string field of `message`, recursively (not map keys or values), valid UTF-8. When a string
// field `x` is changed and the message has a `bytes` field `x_bytes`, the raw value is kept there. Returns
// how many fields were changed.
int SanitizeUtf8(google::protobuf::Message* message);

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_JAIL_TEXT_H_
