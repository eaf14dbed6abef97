// SHA-256 (FIPS 180-4), small and dependency-free: sandbox-init hashes files inside the jail with it, and the
// agent hashes what it sends or receives, so both sides agree without linking a crypto library into init.
#ifndef SBX_BASE_SHA256_H_
#define SBX_BASE_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sbx {

// Incremental SHA-256: Update any number of times, then Final once.
class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256();
  void Update(const void* data, size_t size);
  void Update(std::string_view data) { Update(data.data(), data.size()); }
  // The digest of everything passed to Update. NOTE: the object is spent afterwards (Reset to reuse it).
  Digest Final();
  void Reset();

  // Lowercase hex of a digest (64 characters).
  static std::string Hex(const Digest& digest);

 private:
  void Block(const uint8_t* block);

  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_bytes_ = 0;
};

// Lowercase hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

}  // namespace sbx

#endif  // SBX_BASE_SHA256_H_
