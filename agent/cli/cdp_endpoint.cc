#include "agent/cli/cdp_endpoint.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <atomic>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>
#include <vector>

#include "net/http_response.h"
#include "net/loopback_guard.h"

namespace sbx::cdp {
namespace {

using nlohmann::json;

constexpr size_t kMaxRequestHeadBytes = 16 << 10;

uint32_t Rotl(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}

std::string Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return std::string(s);
}

struct HttpRequest {
  std::string method, path;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string Header(const std::string& name) const {
    for (const auto& [k, v] : headers) {
      if (k == name) return v;
    }
    return "";
  }
};

bool ParseHead(std::string_view head, HttpRequest* r) {
  size_t eol = head.find("\r\n");
  if (eol == std::string_view::npos) return false;
  const std::string_view line = head.substr(0, eol);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp2 == sp1) return false;
  r->method = std::string(line.substr(0, sp1));
  r->path = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
  size_t pos = eol + 2;
  while (pos < head.size()) {
    eol = head.find("\r\n", pos);
    if (eol == std::string_view::npos) eol = head.size();
    const std::string_view h = head.substr(pos, eol - pos);
    pos = eol + 2;
    if (h.empty()) break;
    const size_t colon = h.find(':');
    if (colon == std::string_view::npos) return false;
    r->headers.emplace_back(Lower(std::string(h.substr(0, colon))), Trim(h.substr(colon + 1)));
  }
  return true;
}

void Respond(int fd, int status, const std::string& content_type, const std::string& body,
             const std::string& extra_headers = "") {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + agent::http1::ReasonPhrase(status) + "\r\nContent-Type: " + content_type +
                    "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n" +
                    extra_headers + "\r\n" + body;
  agent::http1::SendAll(fd, out);
}

// One command over a fresh stream, for /json/version and /json/list: its result, or nullopt with the HTTP
// status and error of the failure.
std::optional<json> OneCommand(const CdpEndpointOptions& o, const CdpOpenRequest& open, const std::string& method,
                               int* status, std::string* error) {
  std::unique_ptr<CdpStream> s = o.open(open, status, error);
  if (!s) return std::nullopt;
  json command = {{"id", 1}, {"method", method}, {"params", json::object()}};
  if (!s->Write(command.dump())) {
    *status = 502;
    *error = s->Finish();
    return std::nullopt;
  }
  std::string text;
  while (s->Read(&text)) {
    json answer = json::parse(text, nullptr, false);
    if (!answer.is_object() || answer.value("id", json()) != 1) continue;  // an event
    // A clean close, waited for: the session's one client slot is free again before this answer is sent
    // (a client fetches /json/version and connects at once).
    s->WritesDone();
    std::string rest;
    while (s->Read(&rest)) {
    }
    s->Finish();
    if (answer.contains("error")) {
      *status = 502;
      *error = answer["error"].dump();
      return std::nullopt;
    }
    return answer.value("result", json::object());
  }
  *status = 502;
  *error = s->Finish();
  if (error->empty()) *error = "the stream ended before the browser answered";
  return std::nullopt;
}

void ServeWebSocket(int fd, const HttpRequest& req, const CdpEndpointOptions& o, const CdpOpenRequest& open) {
  const std::string key = req.Header("sec-websocket-key");
  if (key.empty() || req.Header("sec-websocket-version") != "13") {
    return Respond(fd, 400, "text/plain", "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13\n",
                   "Sec-WebSocket-Version: 13\r\n");
  }
  int status = 502;
  std::string error;
  // The stream is opened before the upgrade is answered: a refused token is an HTTP 401 here.
  std::unique_ptr<CdpStream> stream = o.open(open, &status, &error);
  if (!stream) return Respond(fd, status, "text/plain", error + "\n");
  if (!agent::http1::SendAll(fd, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Accept: " + WebSocketAccept(key) + "\r\n\r\n")) {
    stream->Cancel();
    stream->Finish();
    return;
  }
  std::mutex write_mu;  // frames to the client: messages from the stream, pongs and the close from the reader
  auto send = [&](std::string_view frame) {
    std::lock_guard<std::mutex> lock(write_mu);
    return agent::http1::SendAll(fd, frame);
  };
  std::atomic<bool> ended{false};  // the browser side ended first
  std::thread up([&] {
    WebSocketReader reader(o.max_message_bytes);
    char buf[1 << 16];
    bool open = true;
    while (open) {
      const ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      reader.Feed(std::string_view(buf, static_cast<size_t>(n)));
      for (;;) {
        WebSocketReader::Event e = reader.Next();
        using K = WebSocketReader::Event::Kind;
        if (e.kind == K::kNeedMore) break;
        if (e.kind == K::kMessage) {
          if (!stream->Write(e.data)) {
            open = false;
            break;
          }
        } else if (e.kind == K::kPing) {
          send(WebSocketFrame(kWsPong, e.data));
        } else if (e.kind == K::kClose) {
          send(WebSocketCloseFrame(e.code == 1005 ? 1000 : e.code, ""));
          open = false;
          break;
        } else if (e.kind == K::kError) {
          send(WebSocketCloseFrame(e.code, e.data));
          open = false;
          break;
        }
      }
    }
    if (!ended.load()) {
      stream->WritesDone();
      stream->Cancel();  // the client is gone: its sessions are detached, its targets closed
    }
  });
  std::string message;
  bool client_gone = false;
  while (stream->Read(&message)) {
    if (!send(WebSocketFrame(kWsText, message))) {
      client_gone = true;
      stream->Cancel();
      break;
    }
  }
  ended.store(true);
  ::shutdown(fd, SHUT_RD);  // wakes the reader
  up.join();
  const std::string why = stream->Finish();
  // The browser side ended (Browser.close, the session ended, a refusal): say so in the close frame.
  if (!client_gone) send(WebSocketCloseFrame(why.empty() ? 1000 : 1011, why.substr(0, 120)));
  ::shutdown(fd, SHUT_RDWR);
}

// Reads and parses the request's head (at most kMaxRequestHeadBytes, 30 s between reads); false when the
// client left, was too slow, or sent a malformed head (answered with a 400).
bool ReadRequest(int fd, HttpRequest* req) {
  std::string head;
  char buf[4096];
  while (head.find("\r\n\r\n") == std::string::npos) {
    if (head.size() > kMaxRequestHeadBytes) {
      Respond(fd, 400, "text/plain", "the request's head is too long\n");
      return false;
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 30000) <= 0) return false;
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    head.append(buf, static_cast<size_t>(n));
  }
  if (!ParseHead(head, req)) {
    Respond(fd, 400, "text/plain", "a malformed HTTP request\n");
    return false;
  }
  return true;
}

// The token first, then who may drive the browser at all; false after answering 401 or 403.
bool Admitted(int fd, const HttpRequest& req, const CdpEndpointOptions& o) {
  if (o.authorize && !o.authorize(req.Header("authorization"))) {
    Respond(fd, 401, "text/plain", "Unauthorized: missing or wrong bearer token\n", "WWW-Authenticate: Bearer\r\n");
    return false;
  }
  // As Chromium's DevTools server: no web page may drive the browser. A page's WebSocket (never subject to
  // CORS) carries its Origin; a page reaching loopback through a rebound DNS name carries that name in Host.
  // Node's clients (Playwright, Puppeteer) send no Origin.
  if (const std::string origin = req.Header("origin"); !origin.empty()) {
    Respond(fd, 403, "text/plain", "Forbidden: a request from a web page (it sent an Origin header)\n");
    return false;
  }
  if (!sbx::agent::HostAllowedOnConnection(fd, req.Header("host"))) {
    Respond(fd, 403, "text/plain", "Forbidden: over loopback the Host must be localhost or an IP address\n");
    return false;
  }
  return true;
}

// One CDP command's result for an HTTP answer; nullopt after answering the failure with its status.
std::optional<json> CommandOrRespond(int fd, const CdpEndpointOptions& o, const CdpOpenRequest& open,
                                     const std::string& method) {
  int status = 502;
  std::string error;
  std::optional<json> result = OneCommand(o, open, method, &status, &error);
  if (!result) Respond(fd, status, "text/plain", error + "\n");
  return result;
}

void ServeJsonVersion(int fd, const CdpEndpointOptions& o, const CdpOpenRequest& open, const std::string& ws_url) {
  std::optional<json> v = CommandOrRespond(fd, o, open, "Browser.getVersion");
  if (!v) return;
  json out = {{"Browser", v->value("product", "")},
              {"Protocol-Version", v->value("protocolVersion", "1.3")},
              {"User-Agent", v->value("userAgent", "")},
              {"V8-Version", v->value("jsVersion", "")},
              {"WebKit-Version", v->value("revision", "")},
              {"webSocketDebuggerUrl", ws_url}};
  Respond(fd, 200, "application/json; charset=UTF-8", out.dump(2) + "\n");
}

void ServeJsonList(int fd, const CdpEndpointOptions& o, const CdpOpenRequest& open) {
  std::optional<json> t = CommandOrRespond(fd, o, open, "Target.getTargets");
  if (!t) return;
  // The targets, as Chromium lists them. NOTE: no per-page WebSocket: clients connect to the browser's.
  json list = json::array();
  for (const json& info : t->value("targetInfos", json::array())) {
    list.push_back({{"id", info.value("targetId", "")},
                    {"type", info.value("type", "")},
                    {"title", info.value("title", "")},
                    {"url", info.value("url", "")},
                    {"description", ""}});
  }
  Respond(fd, 200, "application/json; charset=UTF-8", list.dump(2) + "\n");
}

// Answers the request by its path: /json/version, /json/list, the WebSocket, or a 404 naming them. With a
// session_path_prefix, the session comes from the path.
void Route(int fd, const HttpRequest& req, const CdpEndpointOptions& o) {
  std::string path = req.path.substr(0, req.path.find('?'));
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  std::string host = req.Header("host");
  if (host.empty()) host = "127.0.0.1";
  CdpOpenRequest open{o.session_id, req.Header("authorization")};
  std::string base;  // what the paths below are under: "" or PREFIX/SESSION
  if (!o.session_path_prefix.empty()) {
    const std::string prefix = o.session_path_prefix + "/";
    const size_t end = path.find('/', prefix.size());
    if (path.rfind(prefix, 0) != 0 || end == std::string::npos || end == prefix.size()) {
      return Respond(fd, 404, "text/plain", "expected " + prefix + "SESSION/json/version\n");
    }
    open.session_id = path.substr(prefix.size(), end - prefix.size());
    base = path.substr(0, end);
    path = path.substr(end);
  }
  const std::string ws_path = "/devtools/browser/" + open.session_id;
  if (req.method != "GET" && req.method != "PUT") {
    Respond(fd, 405, "text/plain", "GET only\n");
  } else if (path == "/json/version") {
    ServeJsonVersion(fd, o, open, "ws://" + host + base + ws_path);
  } else if (path == "/json" || path == "/json/list") {
    ServeJsonList(fd, o, open);
  } else if (path == "/json/protocol") {
    Respond(fd, 404, "text/plain", "the protocol description is not served here\n");
  } else if (path == ws_path || path == "/devtools/browser") {
    if (Lower(req.Header("upgrade")) != "websocket") {
      Respond(fd, 426, "text/plain", "a WebSocket upgrade is expected here\n", "Upgrade: websocket\r\n");
    } else {
      ServeWebSocket(fd, req, o, open);
    }
  } else {
    Respond(fd, 404, "text/plain",
            "no such endpoint: " + base + "/json/version, " + base + "/json/list, " + base + ws_path + "\n");
  }
}

}  // namespace

std::string Sha1(std::string_view data) {
  uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  std::string m(data);
  const uint64_t bits = static_cast<uint64_t>(data.size()) * 8;
  m.push_back(static_cast<char>(0x80));
  while (m.size() % 64 != 56) m.push_back('\0');
  for (int i = 7; i >= 0; --i) m.push_back(static_cast<char>((bits >> (i * 8)) & 0xff));
  for (size_t chunk = 0; chunk < m.size(); chunk += 64) {
    uint32_t w[80];
    for (int i = 0; i < 16; ++i) {
      const auto* p = reinterpret_cast<const unsigned char*>(m.data() + chunk + i * 4);
      w[i] = uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
    }
    for (int i = 16; i < 80; ++i) w[i] = Rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; ++i) {
      uint32_t f, k;
      if (i < 20) {
        f = (b & c) | (~b & d);
        k = 0x5A827999;
      } else if (i < 40) {
        f = b ^ c ^ d;
        k = 0x6ED9EBA1;
      } else if (i < 60) {
        f = (b & c) | (b & d) | (c & d);
        k = 0x8F1BBCDC;
      } else {
        f = b ^ c ^ d;
        k = 0xCA62C1D6;
      }
      const uint32_t t = Rotl(a, 5) + f + e + k + w[i];
      e = d;
      d = c;
      c = Rotl(b, 30);
      b = a;
      a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
  }
  std::string out;
  for (uint32_t v : h) {
    for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (i * 8)) & 0xff));
  }
  return out;
}

std::string Base64Encode(std::string_view data) {
  static const char* kChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < data.size(); i += 3) {
    const uint32_t v = uint32_t{static_cast<unsigned char>(data[i])} << 16 |
                       uint32_t{static_cast<unsigned char>(data[i + 1])} << 8 | static_cast<unsigned char>(data[i + 2]);
    for (int k = 18; k >= 0; k -= 6) out.push_back(kChars[(v >> k) & 63]);
  }
  if (i + 1 == data.size()) {
    const uint32_t v = uint32_t{static_cast<unsigned char>(data[i])} << 16;
    out.push_back(kChars[(v >> 18) & 63]);
    out.push_back(kChars[(v >> 12) & 63]);
    out += "==";
  } else if (i + 2 == data.size()) {
    const uint32_t v = uint32_t{static_cast<unsigned char>(data[i])} << 16 | uint32_t{static_cast<unsigned char>(data[i + 1])} << 8;
    out.push_back(kChars[(v >> 18) & 63]);
    out.push_back(kChars[(v >> 12) & 63]);
    out.push_back(kChars[(v >> 6) & 63]);
    out.push_back('=');
  }
  return out;
}

std::string WebSocketAccept(std::string_view key) {
  return Base64Encode(Sha1(std::string(key) + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"));
}

WebSocketReader::Event WebSocketReader::Next() {
  Event e;
  if (done_) return e;
  for (;;) {
    Frame frame;
    const Parse parsed = TakeFrame(&frame, &e);
    if (parsed == Parse::kError) return e;
    if (parsed == Parse::kNeedMore) break;
    if (OnFrame(frame, &e)) return e;
  }
  if (pos_ > 0) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  return e;
}

WebSocketReader::Event WebSocketReader::Fail(uint16_t code, std::string why) {
  done_ = true;
  Event e;
  e.kind = Event::Kind::kError;
  e.code = code;
  e.data = std::move(why);
  return e;
}

WebSocketReader::Parse WebSocketReader::Failed(Event* error, uint16_t code, std::string why) {
  *error = Fail(code, std::move(why));
  return Parse::kError;
}

WebSocketReader::Parse WebSocketReader::TakeFrame(Frame* frame, Event* error) {
  const size_t avail = buf_.size() - pos_;
  if (avail < 2) return Parse::kNeedMore;
  const auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + pos_);
  frame->fin = p[0] & 0x80;
  if (p[0] & 0x70) return Failed(error, 1002, "reserved bits set (no extension was agreed)");
  frame->opcode = p[0] & 0x0f;
  if (!(p[1] & 0x80)) return Failed(error, 1002, "a client frame must be masked");
  uint64_t len = p[1] & 0x7f;
  size_t header = 2;
  if (len == 126) {
    if (avail < 4) return Parse::kNeedMore;
    len = uint64_t{p[2]} << 8 | p[3];
    header = 4;
  } else if (len == 127) {
    if (avail < 10) return Parse::kNeedMore;
    len = 0;
    for (int i = 0; i < 8; ++i) len = len << 8 | p[2 + i];
    header = 10;
  }
  const bool control = frame->opcode & 0x08;
  if (control && (len > 125 || !frame->fin)) {
    return Failed(error, 1002, "a control frame must be whole and at most 125 bytes");
  }
  if (!control && len > max_) return Failed(error, 1009, "a message over the size cap");
  if (!control && message_.size() + len > max_) return Failed(error, 1009, "a message over the size cap");
  // Room for the frame is kept; the cap above bounds it.
  if (avail < header + 4 + len) return Parse::kNeedMore;
  const unsigned char* mask = p + header;
  frame->payload.assign(reinterpret_cast<const char*>(p + header + 4), static_cast<size_t>(len));
  for (size_t i = 0; i < frame->payload.size(); ++i) {
    frame->payload[i] = static_cast<char>(frame->payload[i] ^ mask[i % 4]);
  }
  pos_ += header + 4 + static_cast<size_t>(len);
  if (pos_ > (1 << 20) && pos_ * 2 > buf_.size()) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  return Parse::kFrame;
}

bool WebSocketReader::OnFrame(Frame& frame, Event* e) {
  switch (frame.opcode) {
    case 0x0:
      if (!in_message_) {
        *e = Fail(1002, "a continuation frame with no message begun");
        return true;
      }
      message_ += frame.payload;
      if (!frame.fin) return false;
      in_message_ = false;
      e->kind = Event::Kind::kMessage;
      e->data = std::move(message_);
      message_.clear();
      return true;
    case kWsText:
    case kWsBinary:
      if (in_message_) {
        *e = Fail(1002, "a new message began before the last one ended");
        return true;
      }
      if (!frame.fin) {
        in_message_ = true;
        message_ = std::move(frame.payload);
        return false;
      }
      e->kind = Event::Kind::kMessage;
      e->data = std::move(frame.payload);
      return true;
    case kWsPing:
    case kWsPong:
      e->kind = frame.opcode == kWsPing ? Event::Kind::kPing : Event::Kind::kPong;
      e->data = std::move(frame.payload);
      return true;
    case kWsClose: {
      const std::string& payload = frame.payload;
      done_ = true;
      e->kind = Event::Kind::kClose;
      e->code = payload.size() >= 2 ? static_cast<uint16_t>(static_cast<unsigned char>(payload[0]) << 8 |
                                                             static_cast<unsigned char>(payload[1]))
                                    : 1005;
      e->data = payload.size() > 2 ? payload.substr(2) : "";
      return true;
    }
    default:
      *e = Fail(1002, "an unknown opcode");
      return true;
  }
}

std::string WebSocketFrame(uint8_t opcode, std::string_view payload) {
  std::string f;
  f.push_back(static_cast<char>(0x80 | opcode));
  const uint64_t len = payload.size();
  if (len < 126) {
    f.push_back(static_cast<char>(len));
  } else if (len < 65536) {
    f.push_back(126);
    f.push_back(static_cast<char>(len >> 8));
    f.push_back(static_cast<char>(len & 0xff));
  } else {
    f.push_back(127);
    for (int i = 7; i >= 0; --i) f.push_back(static_cast<char>((len >> (i * 8)) & 0xff));
  }
  f.append(payload);
  return f;
}

std::string WebSocketCloseFrame(uint16_t code, std::string_view reason) {
  std::string payload;
  payload.push_back(static_cast<char>(code >> 8));
  payload.push_back(static_cast<char>(code & 0xff));
  payload.append(reason.substr(0, 123));
  return WebSocketFrame(kWsClose, payload);
}

void ServeCdpConnection(int fd, const CdpEndpointOptions& o) {
  HttpRequest req;
  if (ReadRequest(fd, &req) && Admitted(fd, req, o)) Route(fd, req, o);
  ::close(fd);
}

}  // namespace sbx::cdp
