#include "agent/session/jail_text.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/reflection.h>

#include "base/utf8.h"

namespace sbx::agent {
namespace {

// How many bytes the invalid sequence at s[i] spans: a lead byte and the continuation bytes that fit it.
size_t InvalidSpanAt(std::string_view s, size_t i) {
  size_t k = i + 1;
  const unsigned char c = static_cast<unsigned char>(s[i]);
  const size_t want = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 1;
  while (k < s.size() && k < i + want && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) ++k;
  return k - i;
}

int SanitizeField(google::protobuf::Message* m, const google::protobuf::FieldDescriptor* f) {
  const google::protobuf::Reflection* r = m->GetReflection();
  int changed = 0;
  if (f->is_repeated()) {
    for (int i = 0; i < r->FieldSize(*m, f); ++i) {
      std::string scratch;
      const std::string& v = r->GetRepeatedStringReference(*m, f, i, &scratch);
      if (!IsValidUtf8(v)) {
        r->SetRepeatedString(m, f, i, ToValidUtf8(v));
        ++changed;
      }
    }
    return changed;
  }
  std::string scratch;
  const std::string& v = r->GetStringReference(*m, f, &scratch);
  if (IsValidUtf8(v)) return 0;
  std::string raw = v;
  r->SetString(m, f, ToValidUtf8(raw));
  const google::protobuf::FieldDescriptor* raw_field = m->GetDescriptor()->FindFieldByName(f->name() + "_bytes");
  if (raw_field != nullptr && raw_field->type() == google::protobuf::FieldDescriptor::TYPE_BYTES &&
      !raw_field->is_repeated()) {
    r->SetString(m, raw_field, std::move(raw));
  }
  return 1;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8SequenceAt(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string ToValidUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8SequenceAt(s, i);
    if (n > 0) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
      i += InvalidSpanAt(s, i);
    }
  }
  return out;
}

int SanitizeUtf8(google::protobuf::Message* message) {
  const google::protobuf::Reflection* r = message->GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(*message, &fields);
  int changed = 0;
  for (const google::protobuf::FieldDescriptor* f : fields) {
    if (f->type() == google::protobuf::FieldDescriptor::TYPE_STRING) {
      changed += SanitizeField(message, f);
    } else if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE && !f->is_map()) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(*message, f); ++i) {
          changed += SanitizeUtf8(r->MutableRepeatedMessage(message, f, i));
        }
      } else {
        changed += SanitizeUtf8(r->MutableMessage(message, f));
      }
    }
  }
  return changed;
}

}  // namespace sbx::agent
