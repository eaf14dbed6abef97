// Test helper: decoding a PNG (libpng's simplified API) into RGB pixels, for the tests that check what a
// screenshot shows. Header-only; the test links PNG::PNG.
#ifndef SBX_TESTS_COMMON_PNG_IMAGE_H_
#define SBX_TESTS_COMMON_PNG_IMAGE_H_

#include <png.h>

#include <cstdint>
#include <cstring>
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

inline bool DecodePng(const std::string& png, Image* out) {
  png_image image;
  memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, png.data(), png.size())) return false;
  image.format = PNG_FORMAT_RGB;
  out->width = image.width;
  out->height = image.height;
  out->rgb.resize(PNG_IMAGE_SIZE(image));
  const bool ok = png_image_finish_read(&image, nullptr, out->rgb.data(), 0, nullptr) != 0;
  png_image_free(&image);
  return ok;
}

}  // namespace sbx::testing

#endif  // SBX_TESTS_COMMON_PNG_IMAGE_H_
