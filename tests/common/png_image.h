// Test helper: decoding a PNG (libpng's simplified API) into RGB pixels, for the tests that check what a
// screenshot shows. In sbx_test_common (tests/common/CMakeLists.txt).
#ifndef SBX_TESTS_COMMON_PNG_IMAGE_H_
#define SBX_TESTS_COMMON_PNG_IMAGE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace sbx::testing {

struct Image {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgb;  // 3 bytes per pixel
  // 0xRRGGBB of the pixel at (x, y).
  uint32_t Pixel(uint32_t x, uint32_t y) const {
    const uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
    return static_cast<uint32_t>(p[0]) << 16 | static_cast<uint32_t>(p[1]) << 8 | p[2];
  }
};

// Decodes `png` into out (RGB); false when it is not a PNG libpng can read.
bool DecodePng(const std::string& png, Image* out);

}  // namespace sbx::testing

#endif  // SBX_TESTS_COMMON_PNG_IMAGE_H_
