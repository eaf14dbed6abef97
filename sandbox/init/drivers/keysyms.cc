#include "sandbox/init/drivers/keysyms.h"

#include <cstddef>

namespace sbx::init {
namespace {

struct KeysymName {
  const char* name;
  uint32_t keysym;
  uint32_t codepoint;  // from the header's "U+XXXX" comment; 0 if none
};

constexpr KeysymName kKeysyms[] = {
#include "keysym_names.inc"
};

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

std::optional<uint32_t> ParseHex(std::string_view s) {
  if (s.empty() || s.size() > 8) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) {
    c = Lower(c);
    if (c >= '0' && c <= '9') {
      v = v * 16 + static_cast<uint32_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      v = v * 16 + static_cast<uint32_t>(c - 'a' + 10);
    } else {
      return std::nullopt;
    }
  }
  return v;
}

}  // namespace

std::optional<uint32_t> KeysymFromName(std::string_view name) {
  if (name.empty()) return std::nullopt;
  uint32_t cp = 0;
  if (DecodeUtf8(name, &cp) == name.size()) return KeysymForCodepoint(cp);  // a single character
  for (const KeysymName& k : kKeysyms) {
    if (name == k.name) return k.keysym;
  }
  for (const KeysymName& k : kKeysyms) {
    if (EqualsIgnoreCase(name, k.name)) return k.keysym;
  }
  if (name.size() > 2 && (name[0] == 'U' || name[0] == 'u') && name[1] == '+') {
    const std::optional<uint32_t> v = ParseHex(name.substr(2));
    if (v && *v >= 0x20 && *v <= 0x10ffff && !(*v >= 0xd800 && *v <= 0xdfff)) return KeysymForCodepoint(*v);
  }
  if (name.size() > 2 && name[0] == '0' && (name[1] == 'x' || name[1] == 'X')) {
    const std::optional<uint32_t> v = ParseHex(name.substr(2));
    if (v && *v != 0) return v;
  }
  return std::nullopt;
}

uint32_t KeysymForCodepoint(uint32_t cp) { return cp < 0x100 ? cp : 0x01000000u | cp; }

uint32_t KeysymToCodepoint(uint32_t keysym) {
  if ((keysym >= 0x20 && keysym <= 0x7e) || (keysym >= 0xa0 && keysym <= 0xff)) return keysym;
  if ((keysym & 0xff000000u) == 0x01000000u) {
    const uint32_t cp = keysym & 0x00ffffffu;
    return cp <= 0x10ffff ? cp : 0;
  }
  for (const KeysymName& k : kKeysyms) {
    if (k.keysym == keysym && k.codepoint != 0) return k.codepoint;
  }
  return 0;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

size_t DecodeUtf8(std::string_view s, uint32_t* cp) {
  if (s.empty()) return 0;
  const auto b = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t c = b(0);
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t len;
  uint32_t v, min;
  if ((c & 0xe0) == 0xc0) {
    len = 2, v = c & 0x1f, min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3, v = c & 0x0f, min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (s.size() < len) return 0;
  for (size_t i = 1; i < len; ++i) {
    if ((b(i) & 0xc0) != 0x80) return 0;
    v = (v << 6) | (b(i) & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
  *cp = v;
  return len;
}

}  // namespace sbx::init
