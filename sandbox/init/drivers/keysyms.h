// X keysym names and the text a keysym stands for: the table behind Desktop::Key and Desktop::Type (and the
// xprobe test program). Generated at build time from the X headers (keysymdef.h, XF86keysym.h).
#ifndef SBX_SANDBOX_INIT_DRIVERS_KEYSYMS_H_
#define SBX_SANDBOX_INIT_DRIVERS_KEYSYMS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sbx::init {

// The keysym an X keysym name stands for ("Return", "eacute", "XF86AudioMute"): the exact name first, else a
// case-insensitive match ("return", "page_down"). Also "U+20AC" / "0x20ac" style, and a single UTF-8
// character ("a", "é", "€") by KeysymForCodepoint. nullopt if unknown.
std::optional<uint32_t> KeysymFromName(std::string_view name);

// The keysym that types code point `cp` (xdotool's rule): cp itself for Latin-1, else 0x01000000 | cp.
uint32_t KeysymForCodepoint(uint32_t cp);

// The code point a keysym types, or 0 if none (function keys, modifiers, NoSymbol).
uint32_t KeysymToCodepoint(uint32_t keysym);

// Appends `cp` to `out` as UTF-8.
void AppendUtf8(uint32_t cp, std::string* out);

// Decodes the first UTF-8 sequence of `s` into *cp and returns its length, or 0 if it is not valid UTF-8
// (overlong forms, surrogates and values past U+10FFFF are invalid).
size_t DecodeUtf8(std::string_view s, uint32_t* cp);

}  // namespace sbx::init

#endif  // SBX_SANDBOX_INIT_DRIVERS_KEYSYMS_H_
