// The CDP driver's shared helpers (cdp_internal.h).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "sandbox/init/drivers/cdp_internal.h"

namespace sbx::init {
namespace {

// A file name for a download from the name the page suggested (which the page controls): its last path
// component (after the last slash or backslash), control characters replaced, no leading dot (no hidden
// files, no "." or ".."), at most 200 bytes (a UTF-8 boundary, a short extension kept). "download" when
// nothing is left.
std::string SafeDownloadName(const std::string& suggested) {
  const size_t slash = suggested.find_last_of("/\\");
  std::string name = slash == std::string::npos ? suggested : suggested.substr(slash + 1);
  for (char& c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '_';
  }
  while (!name.empty() && (name[0] == '.' || name[0] == ' ')) name.erase(0, 1);
  constexpr size_t kMax = 200;
  if (name.size() > kMax) {
    const size_t dot = name.rfind('.');
    const std::string ext = dot != std::string::npos && name.size() - dot <= 16 ? name.substr(dot) : "";
    size_t n = kMax - ext.size();
    while (n > 0 && (static_cast<unsigned char>(name[n]) & 0xc0) == 0x80) --n;
    name = name.substr(0, n) + ext;
  }
  return name.empty() ? "download" : name;
}

// Chromium's D-Bus complaints (a jail has no bus): harmless, and they would crowd out what matters.
bool IsDbusNoise(std::string_view line) {
  return line.find("dbus") != std::string_view::npos || line.find("DBus") != std::string_view::npos;
}

}  // namespace

bool TooDeep(const json& j, size_t max) {
  std::vector<std::pair<const json*, size_t>> stack = {{&j, 1}};
  while (!stack.empty()) {
    const auto [node, depth] = stack.back();
    stack.pop_back();
    if (!node->is_structured()) continue;
    if (depth > max) return true;
    for (const json& child : *node) {
      if (child.is_structured()) stack.emplace_back(&child, depth + 1);
    }
  }
  return false;
}

const json* Field(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

std::string Str(const json& j, const char* key) {
  const json* f = Field(j, key);
  return f != nullptr && f->is_string() ? f->get<std::string>() : std::string();
}


double Num(const json& j, const char* key, double fallback) {
  const json* f = Field(j, key);
  return f != nullptr && f->is_number() ? f->get<double>() : fallback;
}


int64_t Count(const json& j, const char* key) {
  const double v = Num(j, key);
  return v >= 0 && v < 9.2e18 ? static_cast<int64_t>(v) : 0;
}

std::string ReplaceLoneSurrogates(std::string_view text) {
  const auto unit = [&](size_t i) -> int {  // the code unit of a \uXXXX escape at i, or -1
    if (i + 6 > text.size() || text[i] != '\\' || text[i + 1] != 'u') return -1;
    int v = 0;
    for (size_t k = i + 2; k < i + 6; ++k) {
      const char c = text[k];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  };
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text[i] != '\\' || i + 1 >= text.size()) {
      out.push_back(text[i++]);
      continue;
    }
    const int u = unit(i);
    if (u < 0) {  // another escape: copied whole, so an escaped backslash is never mistaken for one
      out.append(text.substr(i, 2));
      i += 2;
      continue;
    }
    const bool high = u >= 0xd800 && u <= 0xdbff, low = u >= 0xdc00 && u <= 0xdfff;
    const int next = high ? unit(i + 6) : -1;
    if (high && next >= 0xdc00 && next <= 0xdfff) {
      out.append(text.substr(i, 12));
      i += 12;
    } else {
      out.append(high || low ? "\\ufffd" : text.substr(i, 6));
      i += 6;
    }
  }
  return out;
}

std::string Cut(std::string s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xc0) == 0x80) --n;  // a UTF-8 boundary
  s.resize(n);
  return s + "...";
}

std::string ExceptionText(const json& details) {
  std::string text = Str(details, "text");
  if (const json* ex = Field(details, "exception")) {
    std::string desc = Str(*ex, "description");
    if (desc.empty()) {
      if (const json* v = Field(*ex, "value")) desc = v->is_string() ? v->get<std::string>() : v->dump();
    }
    desc = desc.substr(0, desc.find('\n'));
    if (!desc.empty()) text = text.empty() ? desc : text + " " + desc;
  }
  return text.empty() ? "an exception was thrown" : text;
}

// The text of a console API call: its arguments' values (or descriptions), space-separated.
std::string ConsoleText(const json& params) {
  std::string text;
  if (const json* args = Field(params, "args"); args != nullptr && args->is_array()) {
    for (const json& a : *args) {
      std::string part;
      if (const json* v = Field(a, "value")) {
        part = v->is_string() ? v->get<std::string>() : v->dump();
      } else {
        part = Str(a, "description");
        if (part.empty()) part = Str(a, "type");
      }
      if (!text.empty()) text += " ";
      text += part;
      if (text.size() > kMaxEventText) break;
    }
  }
  return Cut(text, kMaxEventText);
}

std::string ChromiumOutputTail(int fd) { return internal::OutputTail(fd, IsDbusNoise); }

bool CheckSize(uint32_t w, uint32_t h, std::string* error) {
  return internal::CheckScreenSize("viewport", w, h, error);
}

std::string SettleDownload(const std::string& dir, const std::string& guid, const std::string& suggested) {
  const std::string from = dir + "/" + guid;
  const std::string name = SafeDownloadName(suggested);
  const size_t dot = name.rfind('.');
  const std::string stem = dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
  const std::string ext = dot == std::string::npos || dot == 0 ? "" : name.substr(dot);
  for (int i = 0; i < 1000; ++i) {
    const std::string to = dir + "/" + (i == 0 ? name : stem + " (" + std::to_string(i) + ")" + ext);
    if (renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return to;
    if (errno != EEXIST) break;
  }
  return from;
}

}  // namespace sbx::init
