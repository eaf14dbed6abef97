// The browser's tools on its page: navigate, screenshot, evaluate, content, click, type, press, wait_for, the
// viewport.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "sandbox/init/drivers/cdp.h"
#include "sandbox/init/drivers/cdp_internal.h"

namespace sbx::init {
namespace {

bool DecodeBase64(const std::string& in, std::string* out) {
  static const auto kTable = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(chars[i])] = static_cast<int8_t>(i);
    return t;
  }();
  out->clear();
  out->reserve(in.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const int v = kTable[static_cast<unsigned char>(c)];
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return true;
}

uint32_t Be16(const std::string& s, size_t i) {
  return static_cast<uint32_t>(static_cast<unsigned char>(s[i])) << 8 | static_cast<unsigned char>(s[i + 1]);
}

// The size of a PNG (IHDR) or JPEG (the first SOFn marker) image.
bool ImageSize(const std::string& img, uint32_t* w, uint32_t* h) {
  if (img.size() >= 24 && img.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0) {
    *w = Be16(img, 16) << 16 | Be16(img, 18);
    *h = Be16(img, 20) << 16 | Be16(img, 22);
    return true;
  }
  if (img.size() < 4 || static_cast<unsigned char>(img[0]) != 0xff || static_cast<unsigned char>(img[1]) != 0xd8) {
    return false;
  }
  size_t i = 2;
  while (i + 9 < img.size()) {
    if (static_cast<unsigned char>(img[i]) != 0xff) return false;
    const unsigned char marker = static_cast<unsigned char>(img[i + 1]);
    if (marker == 0xff) {
      ++i;
      continue;
    }
    const uint32_t len = Be16(img, i + 2);
    if (marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc) {
      *h = Be16(img, i + 5);
      *w = Be16(img, i + 7);
      return true;
    }
    i += 2 + len;
  }
  return false;
}

struct KeyInfo {
  std::string key, code, text;
  int vk = 0;
};

bool LookupKey(const std::string& name, KeyInfo* k) {
  struct Named {
    const char* name;
    const char* code;
    int vk;
    const char* text;
  };
  static const Named kNamed[] = {
      {"Enter", "Enter", 13, "\r"},
      {"Tab", "Tab", 9, ""},
      {"Escape", "Escape", 27, ""},
      {"Backspace", "Backspace", 8, ""},
      {"Delete", "Delete", 46, ""},
      {"Space", "Space", 32, " "},
      {"ArrowLeft", "ArrowLeft", 37, ""},
      {"ArrowUp", "ArrowUp", 38, ""},
      {"ArrowRight", "ArrowRight", 39, ""},
      {"ArrowDown", "ArrowDown", 40, ""},
      {"Home", "Home", 36, ""},
      {"End", "End", 35, ""},
      {"PageUp", "PageUp", 33, ""},
      {"PageDown", "PageDown", 34, ""},
  };
  static const std::pair<const char*, const char*> kAliases[] = {
      {"return", "Enter"},     {"esc", "Escape"},     {"del", "Delete"},  {"left", "ArrowLeft"}, {"up", "ArrowUp"},
      {"right", "ArrowRight"}, {"down", "ArrowDown"}, {"pgup", "PageUp"}, {"pgdn", "PageDown"},  {" ", "Space"},
  };
  std::string lower;
  for (char c : name) lower.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c));
  std::string canonical;
  for (const auto& [alias, to] : kAliases) {
    if (lower == alias) canonical = to;
  }
  for (const Named& n : kNamed) {
    std::string nl;
    for (const char* p = n.name; *p; ++p) nl.push_back(static_cast<char>(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p));
    if (lower == nl || canonical == n.name) {
      *k = {n.name, n.code, n.text, n.vk};
      return true;
    }
  }
  if (name.size() == 1 && name[0] > 0x20 && name[0] < 0x7f) {
    const char c = name[0];
    k->key = name;
    k->text = name;
    if (c >= 'a' && c <= 'z') {
      k->code = std::string("Key") + static_cast<char>(c - 'a' + 'A');
      k->vk = c - 'a' + 'A';
    } else if (c >= 'A' && c <= 'Z') {
      k->code = std::string("Key") + c;
      k->vk = c;
    } else if (c >= '0' && c <= '9') {
      k->code = std::string("Digit") + c;
      k->vk = c;
    } else {
      k->vk = 0;  // punctuation: the text is what matters
    }
    return true;
  }
  return false;
}

}  // namespace

bool Browser::Navigate(const std::string& url, const std::string& wait, int timeout_ms, std::string* error) {
  if (wait != "load" && wait != "networkidle") {
    *error = "navigate: wait must be \"load\" or \"networkidle\", not \"" + wait + "\"";
    return false;
  }
  const int64_t deadline = NowMs() + timeout_ms;
  loaded_.clear();
  in_flight_.clear();
  // A crashed page can be navigated again: Chromium gives it a new renderer.
  const bool was_crashed = crashed_;
  crashed_ = false;
  const uint64_t downloads_before = downloads_begun_;
  json result;
  if (!Call("Page.navigate", {{"url", url}}, &result, error, timeout_ms)) {
    crashed_ = crashed_ || was_crashed;
    return false;
  }
  const std::string error_text = Str(result, "errorText");
  if (error_text == "net::ERR_ABORTED" && !download_dir_.empty()) {
    // Perhaps a download: Chromium announces it just after answering.
    const int64_t until = std::min(deadline, NowMs() + kDownloadAnnounceMs);
    while (downloads_begun_ == downloads_before && NowMs() < until) {
      if (!Pump(until, error)) return false;
    }
    if (downloads_begun_ != downloads_before) {
      // The navigation became a download: its result is the file, so wait for it to finish.
      const std::string guid = last_download_guid_;
      while (downloads_.count(guid) != 0) {
        if (NowMs() >= deadline) {
          *error = "navigate: " + url + " became a download that did not finish within " +
                   std::to_string(timeout_ms) + " ms (it goes on; a later call reports it)";
          return false;
        }
        if (!Pump(deadline, error)) return false;
      }
      ++downloads_waited_;  // this navigation waited for it: a later wait_for is for another
      return true;
    }
  }
  const std::string loader = Str(result, "loaderId");
  if (!error_text.empty()) {
    // Chromium goes on to commit an error page (in another renderer): let it settle (briefly), so the next
    // call sees that page rather than one half swapped out.
    const int64_t until = std::min(deadline, NowMs() + kErrorPageSettleMs);
    std::string ignored;
    while (!loader.empty() && loaded_.count(loader) == 0 && NowMs() < until && Pump(until, &ignored)) {
    }
    *error = "navigate: " + url + ": " + error_text;
    return false;
  }
  if (loader.empty()) return true;  // same-document: no load
  while (loaded_.count(loader) == 0) {
    if (NowMs() >= deadline) {
      *error = "navigate: the page did not finish loading within " + std::to_string(timeout_ms) + " ms";
      return false;
    }
    if (!Pump(deadline, error)) return false;
    if (!Check(error)) return false;
  }
  if (wait == "networkidle") return WaitNetworkIdle(deadline, error);
  return true;
}

bool Browser::WaitNetworkIdle(int64_t deadline_ms, std::string* error) {
  // Quiet time before the load event counts too (like Playwright's networkidle).
  last_network_ms_ = std::max(last_network_ms_, NowMs() - kNetworkIdleMs);
  for (;;) {
    const int64_t now = NowMs();
    if (in_flight_.empty() && now - last_network_ms_ >= kNetworkIdleMs) return true;
    if (now >= deadline_ms) {
      *error = "navigate: the network was not idle before the timeout (" + std::to_string(in_flight_.size()) +
               " requests in flight)";
      return false;
    }
    const int64_t until = in_flight_.empty() ? std::min(deadline_ms, last_network_ms_ + kNetworkIdleMs) : deadline_ms;
    if (!Pump(until, error)) return false;
    if (!Check(error)) return false;
  }
}

bool Browser::Screenshot(bool full_page, const std::string& format, int quality, uint32_t scale_width,
                         std::string* image, uint32_t* width, uint32_t* height, std::string* error) {
  if (format != "png" && format != "jpeg") {
    *error = "screenshot: the format must be png or jpeg, not \"" + format + "\"";
    return false;
  }
  json params = {{"format", format}};
  if (format == "jpeg") params["quality"] = std::clamp(quality, 1, 100);
  json result;
  if (full_page || scale_width != 0) {
    if (!Call("Page.getLayoutMetrics", json::object(), &result, error)) return false;
    double x = 0, y = 0, w = 0, h = 0;
    if (full_page) {
      const json* size = Field(result, "cssContentSize");
      if (size == nullptr) size = Field(result, "contentSize");
      w = size ? std::min(Num(*size, "width"), static_cast<double>(internal::kMaxScreenWidth)) : 0;
      h = size ? std::min(Num(*size, "height"), kMaxFullPageHeight) : 0;
      params["captureBeyondViewport"] = true;
    } else {
      // The viewport, where the page is scrolled to.
      const json* vp = Field(result, "cssVisualViewport");
      if (vp == nullptr) vp = Field(result, "visualViewport");
      x = vp ? Num(*vp, "pageX") : 0;
      y = vp ? Num(*vp, "pageY") : 0;
      w = vp ? Num(*vp, "clientWidth") : 0;
      h = vp ? Num(*vp, "clientHeight") : 0;
    }
    if (w < 1 || h < 1) {
      *error = "screenshot: the page has no size";
      return false;
    }
    double scale = 1;
    if (scale_width != 0) {
      if (scale_width < 16 || scale_width > static_cast<uint32_t>(w)) {
        *error = "screenshot: the width to scale to, " + std::to_string(scale_width) + ", is outside 16.." +
                 std::to_string(static_cast<uint32_t>(w)) + " (the image's own width; screenshots only scale down)";
        return false;
      }
      // Chromium rounds the clip's scaled size; aim at the middle of the pixel.
      scale = (scale_width + 0.25) / std::floor(w);
      w = std::floor(w);
    }
    params["clip"] = {{"x", x}, {"y", y}, {"width", w}, {"height", h}, {"scale", scale}};
  }
  if (!Call("Page.captureScreenshot", params, &result, error, 60000)) return false;
  if (!DecodeBase64(Str(result, "data"), image) || image->empty()) {
    *error = "screenshot: chromium sent no image";
    return false;
  }
  if (!ImageSize(*image, width, height)) {
    *error = "screenshot: chromium sent an image that is not " + format;
    return false;
  }
  return true;
}

bool Browser::EvaluateValue(const std::string& expression, int timeout_ms, json* value, std::string* error) {
  if (!Check(error)) return false;
  json result;
  const json params = {
      {"expression", expression}, {"returnByValue", true}, {"awaitPromise", true}, {"userGesture", true}};
  std::string e;
  if (!Call("Runtime.evaluate", params, &result, &e, timeout_ms)) {
    if (!Check(error)) return false;
    if (e.find("no answer within") == std::string::npos) {
      *error = "evaluate: " + e;
      return false;
    }
    // A script that does not stop: terminate it (handled off the page's main thread), then wait for the
    // evaluate's own answer, so the page is free again when we return.
    terminated_id_ = next_id_ - 1;
    terminated_answered_ = false;
    // The cleanup is short and must happen even at the call's deadline (the script would run on).
    const int64_t call_deadline = call_deadline_ms_;
    call_deadline_ms_ = 0;
    json ignored;
    std::string te;
    Call("Runtime.terminateExecution", json::object(), &ignored, &te, kTerminateWaitMs);
    const int64_t deadline = NowMs() + kTerminateWaitMs;
    while (!terminated_answered_ && NowMs() < deadline && Pump(deadline, &te)) {
    }
    terminated_id_ = 0;
    call_deadline_ms_ = call_deadline;
    if (!Check(error)) return false;
    *error = "evaluate: timed out after " + std::to_string(timeout_ms) + " ms (the script was terminated)";
    return false;
  }
  if (const json* details = Field(result, "exceptionDetails")) {
    *error = "evaluate: " + ExceptionText(*details);
    return false;
  }
  const json* r = Field(result, "result");
  const json* v = r != nullptr ? Field(*r, "value") : nullptr;
  *value = v != nullptr ? *v : json();
  return true;
}

bool Browser::Evaluate(const std::string& expression, int timeout_ms, size_t max_result_bytes, std::string* json_result,
                       std::string* error) {
  json value;
  if (!EvaluateValue(expression, timeout_ms, &value, error)) return false;
  *json_result = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (json_result->size() > max_result_bytes) {
    *error = "evaluate: the result is " + std::to_string(json_result->size()) + " bytes, over the limit of " +
             std::to_string(max_result_bytes);
    json_result->clear();
    return false;
  }
  return true;
}

bool Browser::Content(bool text, size_t max_bytes, std::string* out, bool* truncated, std::string* error) {
  json value;
  const char* expression = text ? "document.body ? document.body.innerText : ''"
                                : "document.documentElement ? document.documentElement.outerHTML : ''";
  if (!EvaluateValue(expression, 30000, &value, error)) return false;
  *out = value.is_string() ? value.get<std::string>() : std::string();
  *truncated = out->size() > max_bytes;
  if (*truncated) {
    size_t n = max_bytes;
    while (n > 0 && (static_cast<unsigned char>((*out)[n]) & 0xc0) == 0x80) --n;
    out->resize(n);
  }
  return true;
}

bool Browser::DispatchClick(double x, double y, std::string* error) {
  json result;
  for (const char* type : {"mouseMoved", "mousePressed", "mouseReleased"}) {
    json params = {{"type", type}, {"x", x}, {"y", y}};
    if (std::string(type) != "mouseMoved") {
      params["button"] = "left";
      params["buttons"] = std::string(type) == "mousePressed" ? 1 : 0;
      params["clickCount"] = 1;
    }
    if (!Call("Input.dispatchMouseEvent", params, &result, error, kInputTimeoutMs)) return false;
  }
  return true;
}

bool Browser::ClickAt(double x, double y, std::string* error) {
  if (!(x >= 0 && y >= 0)) {
    *error = "click: the point is outside the viewport";
    return false;
  }
  return DispatchClick(x, y, error);
}

bool Browser::Click(const std::string& selector, std::string* error) {
  const std::string expression =
      "(() => { const e = document.querySelector(" + json(selector).dump() +
      "); if (!e) return null; e.scrollIntoView({block: 'center', inline: 'center'});"
      " const r = e.getBoundingClientRect(); return {x: r.left + r.width / 2, y: r.top + r.height / 2,"
      " w: r.width, h: r.height}; })()";
  json box;
  if (!EvaluateValue(expression, kInputTimeoutMs, &box, error)) {
    *error = "click: " + *error;
    return false;
  }
  if (box.is_null()) {
    *error = "click: nothing matches the selector " + selector;
    return false;
  }
  if (Num(box, "w") <= 0 || Num(box, "h") <= 0) {
    *error = "click: the element " + selector + " is not visible (it has no box)";
    return false;
  }
  return DispatchClick(Num(box, "x"), Num(box, "y"), error);
}

bool Browser::Type(const std::string& text, const std::string& selector, std::string* error) {
  if (!selector.empty()) {
    const std::string expression = "(() => { const e = document.querySelector(" + json(selector).dump() +
                                   "); if (!e) return false; e.focus(); return true; })()";
    json found;
    if (!EvaluateValue(expression, kInputTimeoutMs, &found, error)) {
      *error = "type: " + *error;
      return false;
    }
    if (found != true) {
      *error = "type: nothing matches the selector " + selector;
      return false;
    }
  }
  json result;
  return Call("Input.insertText", {{"text", text}}, &result, error, kInputTimeoutMs);
}

bool Browser::Press(const std::string& key, std::string* error) {
  KeyInfo k;
  if (!LookupKey(key, &k)) {
    *error = "press: unknown key \"" + key + "\"";
    return false;
  }
  json down = {{"type", k.text.empty() ? "rawKeyDown" : "keyDown"}, {"key", k.key}};
  if (!k.code.empty()) down["code"] = k.code;
  if (k.vk != 0) down["windowsVirtualKeyCode"] = k.vk;
  if (!k.text.empty()) {
    down["text"] = k.text;
    down["unmodifiedText"] = k.text;
  }
  json up = {{"type", "keyUp"}, {"key", k.key}};
  if (!k.code.empty()) up["code"] = k.code;
  if (k.vk != 0) up["windowsVirtualKeyCode"] = k.vk;
  json result;
  return Call("Input.dispatchKeyEvent", down, &result, error, kInputTimeoutMs) &&
         Call("Input.dispatchKeyEvent", up, &result, error, kInputTimeoutMs);
}

bool Browser::WaitFor(const std::string& selector, const std::string& text, int timeout_ms, std::string* error) {
  if (selector.empty() && text.empty()) {
    *error = "wait_for: give a selector or a text";
    return false;
  }
  std::string expression = "(() => { ";
  if (!selector.empty()) expression += "if (!document.querySelector(" + json(selector).dump() + ")) return false; ";
  if (!text.empty()) {
    expression += "if (!document.body || !document.body.innerText.includes(" + json(text).dump() + ")) return false; ";
  }
  expression += "return true; })()";
  const int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    json found;
    const int left = static_cast<int>(std::max<int64_t>(1000, deadline - NowMs()));
    if (!EvaluateValue(expression, left, &found, error)) {
      // A navigation in between destroys the context the evaluate ran in ("Execution context was destroyed",
      // "Cannot find context with specified id"), or Chromium answers an evaluate that was in flight when the
      // navigation began with "Inspected target navigated or closed": try again. A target that really closed
      // fails Check() or runs into the deadline.
      if (!Check(error)) return false;
      if (error->find("context") == std::string::npos &&
          error->find("Inspected target navigated or closed") == std::string::npos) {
        *error = "wait_for: " + *error;
        return false;
      }
    } else if (found == true) {
      return true;
    }
    if (NowMs() >= deadline) {
      *error = "wait_for: " + (selector.empty() ? "" : "the selector " + selector) +
               (selector.empty() || text.empty() ? "" : " and ") + (text.empty() ? "" : "the text \"" + text + "\"") +
               " did not appear within " + std::to_string(timeout_ms) + " ms";
      return false;
    }
    // Sleep 100 ms, reading events meanwhile.
    const int64_t until = std::min(deadline, NowMs() + 100);
    while (NowMs() < until) {
      if (!Pump(until, error)) return false;
    }
  }
}

bool Browser::WaitForDownload(int timeout_ms, std::string* error) {
  if (download_dir_.empty()) {
    *error = "wait_for: downloads are off in this browser";
    return false;
  }
  const int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    // One finished download per wait, whenever it finished (the call before may already have reported it).
    if (downloads_finished_ > downloads_waited_) {
      ++downloads_waited_;
      return true;
    }
    if (NowMs() >= deadline) {
      *error = "wait_for: no download finished within " + std::to_string(timeout_ms) + " ms (" +
               std::to_string(downloads_.size()) + " in progress)";
      return false;
    }
    if (!Pump(deadline, error)) return false;
  }
}

bool Browser::SetViewport(uint32_t width, uint32_t height, std::string* error) {
  if (!CheckSize(width, height, error)) return false;
  json result;
  return Call("Emulation.setDeviceMetricsOverride",
              {{"width", width}, {"height", height}, {"deviceScaleFactor", 1}, {"mobile", false}}, &result, error,
              kInputTimeoutMs);
}

}  // namespace sbx::init
