// The desktop's screen: the root window's pixels captured (GetImage, in strips), converted to RGB, scaled
// down (an area average) and encoded as PNG, for Screenshot and Zoom.
#include <png.h>

#include <algorithm>
#include <csetjmp>
#include <cstddef>
#include <cstring>
#include <utility>
#include <vector>

#include "sandbox/init/drivers/desktop.h"
#include "sandbox/init/drivers/x_connection.h"

namespace sbx::init {
namespace {

constexpr size_t kStripBytes = 16 << 20;  // the most pixel data one GetImage request asks for

// ---- Pixels ----

struct Channel {
  int shift = 0;
  uint32_t max = 0;  // the largest value of the channel after the shift
};

Channel ChannelOf(uint32_t mask) {
  Channel c;
  if (mask == 0) return c;
  c.shift = __builtin_ctz(mask);
  c.max = mask >> c.shift;
  return c;
}

uint8_t Scale8(uint32_t v, uint32_t max) {
  return max == 255 ? static_cast<uint8_t>(v) : static_cast<uint8_t>((v * 255 + max / 2) / max);
}

// Converts `rows` rows of a ZPixmap image into packed RGB.
void ToRgb(const PixelFormat& f, const uint8_t* data, uint32_t stride, uint32_t width, uint32_t rows,
           uint8_t* rgb) {
  if (f.bits_per_pixel == 32 && !f.msb_first && f.red_mask == 0xff0000 && f.green_mask == 0xff00 &&
      f.blue_mask == 0xff) {
    for (uint32_t y = 0; y < rows; ++y) {
      const uint8_t* p = data + static_cast<size_t>(y) * stride;
      uint8_t* o = rgb + static_cast<size_t>(y) * width * 3;
      for (uint32_t x = 0; x < width; ++x, p += 4, o += 3) {
        o[0] = p[2];
        o[1] = p[1];
        o[2] = p[0];
      }
    }
    return;
  }
  const Channel r = ChannelOf(f.red_mask), g = ChannelOf(f.green_mask), b = ChannelOf(f.blue_mask);
  const uint32_t bytes = f.bits_per_pixel / 8;
  for (uint32_t y = 0; y < rows; ++y) {
    const uint8_t* p = data + static_cast<size_t>(y) * stride;
    uint8_t* o = rgb + static_cast<size_t>(y) * width * 3;
    for (uint32_t x = 0; x < width; ++x, p += bytes, o += 3) {
      uint32_t v = 0;
      for (uint32_t i = 0; i < bytes; ++i) {
        v |= static_cast<uint32_t>(f.msb_first ? p[i] : p[bytes - 1 - i]) << (8 * (bytes - 1 - i));
      }
      o[0] = r.max ? Scale8((v >> r.shift) & r.max, r.max) : 0;
      o[1] = g.max ? Scale8((v >> g.shift) & g.max, g.max) : 0;
      o[2] = b.max ? Scale8((v >> b.shift) & b.max, b.max) : 0;
    }
  }
}

// Area-average (box filter) weights from `src` samples to `dst` (< src): output i covers source
// [i*src/dst, (i+1)*src/dst); each source sample weighs its overlap. Weights are 14-bit fixed point and sum
// to exactly 1 << 14 per output, so a flat colour stays exact.
constexpr int kWeightBits = 14;
struct Taps {
  std::vector<uint32_t> first;     // per output: the first source index
  std::vector<uint32_t> count;     // per output: how many source samples
  std::vector<uint32_t> offset;    // per output: where its weights start in `weights`
  std::vector<uint32_t> weights;
};

Taps BoxTaps(uint32_t src, uint32_t dst) {
  Taps t;
  for (uint64_t i = 0; i < dst; ++i) {
    const uint64_t start = i * src, end = (i + 1) * src;  // in units of 1/dst source pixels
    const uint32_t first = static_cast<uint32_t>(start / dst);
    const uint32_t last = static_cast<uint32_t>((end - 1) / dst);
    t.first.push_back(first);
    t.count.push_back(last - first + 1);
    t.offset.push_back(static_cast<uint32_t>(t.weights.size()));
    uint32_t sum = 0, biggest = 0;
    const size_t at = t.weights.size();
    for (uint64_t j = first; j <= last; ++j) {
      const uint64_t overlap = std::min(end, (j + 1) * dst) - std::max(start, j * dst);
      const uint32_t w = static_cast<uint32_t>((overlap * (1u << kWeightBits) + src / 2) / src);
      t.weights.push_back(w);
      sum += w;
      if (w > t.weights[at + biggest]) biggest = static_cast<uint32_t>(j - first);
    }
    t.weights[at + biggest] += (1u << kWeightBits) - sum;  // rounding leftovers go to the largest tap
  }
  return t;
}

std::vector<uint8_t> ScaleDown(const std::vector<uint8_t>& rgb, uint32_t w, uint32_t h, uint32_t tw,
                               uint32_t th) {
  const Taps tx = BoxTaps(w, tw), ty = BoxTaps(h, th);
  // Horizontal pass into 8.8 fixed point, then vertical.
  std::vector<uint16_t> mid(static_cast<size_t>(h) * tw * 3);
  for (uint32_t y = 0; y < h; ++y) {
    const uint8_t* row = rgb.data() + static_cast<size_t>(y) * w * 3;
    uint16_t* o = mid.data() + static_cast<size_t>(y) * tw * 3;
    for (uint32_t x = 0; x < tw; ++x) {
      uint32_t acc[3] = {0, 0, 0};
      const uint8_t* p = row + static_cast<size_t>(tx.first[x]) * 3;
      const uint32_t* wt = tx.weights.data() + tx.offset[x];
      for (uint32_t k = 0; k < tx.count[x]; ++k, p += 3) {
        acc[0] += p[0] * wt[k];
        acc[1] += p[1] * wt[k];
        acc[2] += p[2] * wt[k];
      }
      for (int c = 0; c < 3; ++c) o[x * 3 + c] = static_cast<uint16_t>((acc[c] + 32) >> (kWeightBits - 8));
    }
  }
  std::vector<uint8_t> out(static_cast<size_t>(tw) * th * 3);
  std::vector<uint32_t> acc(static_cast<size_t>(tw) * 3);
  for (uint32_t y = 0; y < th; ++y) {
    std::fill(acc.begin(), acc.end(), 0);
    const uint32_t* wt = ty.weights.data() + ty.offset[y];
    for (uint32_t k = 0; k < ty.count[y]; ++k) {
      const uint16_t* row = mid.data() + static_cast<size_t>(ty.first[y] + k) * tw * 3;
      for (size_t i = 0; i < acc.size(); ++i) acc[i] += row[i] * wt[k];
    }
    uint8_t* o = out.data() + static_cast<size_t>(y) * tw * 3;
    constexpr int kShift = kWeightBits + 8;
    for (size_t i = 0; i < acc.size(); ++i) o[i] = static_cast<uint8_t>((acc[i] + (1u << (kShift - 1))) >> kShift);
  }
  return out;
}

// ---- PNG ----

struct PngState {
  std::string* out;
  char message[200];
};

void PngWrite(png_structp png, png_bytep data, size_t n) {
  auto* s = static_cast<PngState*>(png_get_io_ptr(png));
  bool ok = true;
  try {
    s->out->append(reinterpret_cast<const char*>(data), n);
  } catch (...) {
    ok = false;
  }
  if (!ok) png_error(png, "out of memory");
}

void PngFlush(png_structp) {}

void PngError(png_structp png, png_const_charp message) {
  auto* s = static_cast<PngState*>(png_get_error_ptr(png));
  snprintf(s->message, sizeof(s->message), "%s", message);
  png_longjmp(png, 1);
}

void PngWarning(png_structp, png_const_charp) {}

// NOTE: libpng reports errors by longjmp: nothing with a destructor lives in this frame past setjmp.
bool EncodePng(const uint8_t* rgb, uint32_t width, uint32_t height, std::string* out, std::string* error) {
  PngState state{out, {}};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &state, PngError, PngWarning);
  if (png == nullptr) {
    *error = "png_create_write_struct failed";
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    *error = "png_create_info_struct failed";
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    *error = std::string("encoding the PNG: ") + state.message;
    return false;
  }
  png_set_write_fn(png, &state, PngWrite, PngFlush);
  // Fast settings, measured on 1280x800 screens (xterms under twm; and with a photo-like quarter): zlib level 1
  // with the SUB filter takes 8 / 14 ms where the defaults (level 6, adaptive filters) take 23 / 78 ms, for
  // 13% more bytes. No filter is as fast on flat UI but 50% bigger on photos; Z_RLE gains nothing.
  png_set_compression_level(png, 1);
  png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_BASE,
               PNG_FILTER_TYPE_BASE);
  png_write_info(png, info);
  for (uint32_t y = 0; y < height; ++y) {
    png_write_row(png, const_cast<png_bytep>(rgb + static_cast<size_t>(y) * width * 3));
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

// *out: `rgb` (width x height pixels) as a PNG, taken from a display_width x display_height display.
bool ToImage(const std::vector<uint8_t>& rgb, uint32_t width, uint32_t height, uint32_t display_width,
             uint32_t display_height, DesktopImage* out, std::string* error) {
  DesktopImage image;
  image.png.reserve(rgb.size() / 4);
  if (!EncodePng(rgb.data(), width, height, &image.png, error)) return false;
  image.width = width;
  image.height = height;
  image.display_width = display_width;
  image.display_height = display_height;
  *out = std::move(image);
  return true;
}

}  // namespace

bool Desktop::Capture(uint32_t x0, uint32_t y0, uint32_t w, uint32_t h, std::vector<uint8_t>* rgb,
                      std::string* error) {
  XConnection& x = *x_;
  x.DrainEvents();
  const PixelFormat& f = x.format_;
  const uint32_t stride = ((w * f.bits_per_pixel + f.scanline_pad - 1) / f.scanline_pad) * f.scanline_pad / 8;
  const uint32_t strip = static_cast<uint32_t>(std::max<size_t>(1, std::min<size_t>(h, kStripBytes / stride)));
  rgb->assign(static_cast<size_t>(w) * h * 3, 0);
  for (uint32_t y = 0; y < h; y += strip) {
    const uint32_t rows = std::min(strip, h - y);
    XPtr<xcb_get_image_reply_t> image;
    std::string e;
    if (!x.AwaitTyped(xcb_get_image(x.c_, XCB_IMAGE_FORMAT_Z_PIXMAP, x.root_, static_cast<int16_t>(x0),
                                    static_cast<int16_t>(y0 + y), static_cast<uint16_t>(w),
                                    static_cast<uint16_t>(rows), ~0u)
                          .sequence,
                      &image, "screenshot: GetImage", &e)) {
      return Fail(e, error);
    }
    const int length = xcb_get_image_data_length(image.get());
    if (image->depth != x.depth_ || length < 0 || static_cast<size_t>(length) < static_cast<size_t>(stride) * rows) {
      return Fail("screenshot: GetImage returned " + std::to_string(length) + " bytes of depth " +
                      std::to_string(image->depth) + " for " + std::to_string(rows) + " rows",
                  error);
    }
    ToRgb(f, xcb_get_image_data(image.get()), stride, w, rows, rgb->data() + static_cast<size_t>(y) * w * 3);
  }
  return true;
}

bool Desktop::Screenshot(uint32_t target_width, DesktopImage* out, std::string* error) {
  if (!Check(error)) return false;
  const uint32_t w = width_, h = height_;
  std::vector<uint8_t> rgb;
  if (!Capture(0, 0, w, h, &rgb, error)) return false;
  uint32_t tw = w, th = h;
  if (target_width != 0 && target_width < w) {
    tw = target_width;
    th = static_cast<uint32_t>(std::max<uint64_t>(1, (static_cast<uint64_t>(h) * tw + w / 2) / w));
    rgb = ScaleDown(rgb, w, h, tw, th);
  }
  return ToImage(rgb, tw, th, w, h, out, error);
}

bool Desktop::Zoom(Point from, Point to, DesktopImage* out, std::string* error) {
  if (!Check(error)) return false;
  if (from.x < 0 || from.y < 0 || to.x <= from.x || to.y <= from.y || static_cast<uint32_t>(to.x) > width_ ||
      static_cast<uint32_t>(to.y) > height_) {
    *error = "zoom: the region (" + std::to_string(from.x) + ", " + std::to_string(from.y) + ") - (" +
             std::to_string(to.x) + ", " + std::to_string(to.y) + ") is empty or not inside the display (" +
             std::to_string(width_) + "x" + std::to_string(height_) + ")";
    return false;
  }
  const uint32_t w = static_cast<uint32_t>(to.x - from.x), h = static_cast<uint32_t>(to.y - from.y);
  std::vector<uint8_t> rgb;
  if (!Capture(static_cast<uint32_t>(from.x), static_cast<uint32_t>(from.y), w, h, &rgb, error)) return false;
  return ToImage(rgb, w, h, width_, height_, out, error);
}

}  // namespace sbx::init
