#include "wire/frame.h"

#include <cstring>

namespace sbx::sandbox {
namespace {

uint32_t DecodeLength(const char* p) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 | static_cast<uint32_t>(b[2]) << 16 |
         static_cast<uint32_t>(b[3]) << 24;
}

}  // namespace

void EncodeFrameHeader(uint32_t size, char out[kFrameHeaderBytes]) {
  out[0] = static_cast<char>(size & 0xff);
  out[1] = static_cast<char>((size >> 8) & 0xff);
  out[2] = static_cast<char>((size >> 16) & 0xff);
  out[3] = static_cast<char>((size >> 24) & 0xff);
}

std::string EncodeFrame(std::string_view payload) {
  std::string out(kFrameHeaderBytes + payload.size(), '\0');
  EncodeFrameHeader(static_cast<uint32_t>(payload.size()), out.data());
  if (!payload.empty()) out.replace(kFrameHeaderBytes, payload.size(), payload);
  return out;
}

void FrameReader::Scan() {
  while (len_ - scan_ >= kFrameHeaderBytes) {
    const uint32_t length = DecodeLength(buf_.data() + scan_);
    if (length > max_) {
      error_ = "frame of " + std::to_string(length) + " bytes exceeds the " + std::to_string(max_) + "-byte cap";
      return;
    }
    if (len_ - scan_ - kFrameHeaderBytes < length) return;
    scan_ += kFrameHeaderBytes + length;
  }
}

char* FrameReader::Prepare(size_t n) {
  // Drop what Next already returned: only a partial frame (or nothing) moves, and only when the room behind
  // it is short. NOTE: moving it at every read copied a 1 MiB frame again and again while it came in, at a
  // socket buffer's worth (~200 KiB) a read.
  if (pos_ > 0 && (pos_ == len_ || buf_.size() - len_ < n)) {
    if (len_ > pos_) memmove(buf_.data(), buf_.data() + pos_, len_ - pos_);
    len_ -= pos_;
    scan_ -= pos_;
    pos_ = 0;
  }
  // NOTE: the buffer grows by what is asked for only; Scan() rejects an oversized prefix before the next
  // Prepare, so at most one capped frame plus one read's worth of bytes is ever held.
  if (buf_.size() - len_ < n) buf_.resize(len_ + n);
  return buf_.data() + len_;
}

bool FrameReader::Commit(size_t n) {
  if (failed()) return false;
  len_ += n;
  Scan();
  return !failed();
}

bool FrameReader::Feed(const char* data, size_t size) {
  if (failed()) return false;
  memcpy(Prepare(size), data, size);
  return Commit(size);
}

bool FrameReader::Next(std::string_view* payload) {
  if (failed() || pos_ >= scan_) return false;
  const uint32_t length = DecodeLength(buf_.data() + pos_);
  *payload = std::string_view(buf_.data() + pos_ + kFrameHeaderBytes, length);
  pos_ += kFrameHeaderBytes + length;
  return true;
}

bool FrameReader::Finish() {
  if (failed()) return false;
  const size_t rest = len_ - scan_;
  if (rest == 0) return true;
  if (rest < kFrameHeaderBytes) {
    error_ = "truncated frame: connection closed after " + std::to_string(rest) + " of " +
             std::to_string(kFrameHeaderBytes) + " length-prefix bytes";
  } else {
    error_ = "truncated frame: connection closed after " + std::to_string(rest - kFrameHeaderBytes) + " of " +
             std::to_string(DecodeLength(buf_.data() + scan_)) + " bytes";
  }
  return false;
}

}  // namespace sbx::sandbox
