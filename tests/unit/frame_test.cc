// The init protocol's framing: 4-byte little-endian length + payload, capped, reassembled from arbitrary
// pieces, with clear errors for oversized and truncated frames.
#include "wire/frame.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace sbx::sandbox {
namespace {

std::vector<std::string> Drain(FrameReader& reader) {
  std::vector<std::string> out;
  std::string_view payload;
  while (reader.Next(&payload)) out.emplace_back(payload);
  return out;
}

TEST(FrameTest, EncodeWritesALittleEndianLengthPrefix) {
  EXPECT_EQ(EncodeFrame("hello"), std::string("\x05\x00\x00\x00hello", 9));
  EXPECT_EQ(EncodeFrame(""), std::string("\x00\x00\x00\x00", 4));
  char header[4];
  EncodeFrameHeader(0x01020304, header);
  EXPECT_EQ(std::string(header, 4), "\x04\x03\x02\x01");
  EXPECT_EQ(EncodeFrame(std::string(300, 'x')).substr(0, 4), std::string("\x2c\x01\x00\x00", 4));
}

TEST(FrameTest, FramesFedByteByByteComeOutWhole) {
  const std::string stream = EncodeFrame("first") + EncodeFrame("") + EncodeFrame(std::string(1000, 'z'));
  FrameReader reader;
  std::vector<std::string> got;
  for (char c : stream) {
    ASSERT_TRUE(reader.Feed(&c, 1));
    for (std::string& f : Drain(reader)) got.push_back(std::move(f));
  }
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], "first");
  EXPECT_EQ(got[1], "");
  EXPECT_EQ(got[2], std::string(1000, 'z'));
  EXPECT_TRUE(reader.Finish());
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(FrameTest, ManyFramesInOneFeed) {
  std::string stream;
  for (int i = 0; i < 100; ++i) stream += EncodeFrame(std::to_string(i));
  FrameReader reader;
  ASSERT_TRUE(reader.Feed(stream));
  EXPECT_TRUE(reader.ready());
  const std::vector<std::string> got = Drain(reader);
  ASSERT_EQ(got.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(got[i], std::to_string(i));
  EXPECT_FALSE(reader.ready());
}

TEST(FrameTest, AFrameOfExactlyTheCapIsAccepted) {
  FrameReader reader;
  ASSERT_TRUE(reader.Feed(EncodeFrame(std::string(kMaxFrameBytes, 'c'))));
  std::string_view payload;
  ASSERT_TRUE(reader.Next(&payload));
  EXPECT_EQ(payload.size(), kMaxFrameBytes);
}

TEST(FrameTest, AnOversizedLengthIsRejectedBeforeItsPayloadIsBuffered) {
  FrameReader reader;
  char header[4];
  EncodeFrameHeader(kMaxFrameBytes + 1, header);
  EXPECT_FALSE(reader.Feed(header, 4));
  EXPECT_TRUE(reader.failed());
  EXPECT_EQ(reader.error(), "frame of 1048577 bytes exceeds the 1048576-byte cap");
  EXPECT_LE(reader.buffered(), 4u) << "nothing allocated for the claimed length";
  // Broken for good.
  EXPECT_FALSE(reader.Feed("more"));
  std::string_view payload;
  EXPECT_FALSE(reader.Next(&payload));
  EXPECT_FALSE(reader.Finish());
}

TEST(FrameTest, AHugeClaimedLengthAfterAGoodFrameIsRejected) {
  FrameReader reader;
  const std::string stream = EncodeFrame("ok") + std::string("\xff\xff\xff\xff", 4);
  EXPECT_FALSE(reader.Feed(stream));
  EXPECT_EQ(reader.error(), "frame of 4294967295 bytes exceeds the 1048576-byte cap");
}

TEST(FrameTest, TheCapIsConfigurable) {
  FrameReader reader(16);
  EXPECT_TRUE(reader.Feed(EncodeFrame(std::string(16, 'a'))));
  EXPECT_FALSE(reader.Feed(EncodeFrame(std::string(17, 'a'))));
  EXPECT_EQ(reader.error(), "frame of 17 bytes exceeds the 16-byte cap");
}

TEST(FrameTest, TruncatedInThePayload) {
  FrameReader reader;
  ASSERT_TRUE(reader.Feed(EncodeFrame("0123456789").substr(0, 4 + 3)));
  EXPECT_FALSE(reader.ready());
  EXPECT_FALSE(reader.Finish());
  EXPECT_EQ(reader.error(), "truncated frame: connection closed after 3 of 10 bytes");
}

TEST(FrameTest, TruncatedInTheLengthPrefix) {
  FrameReader reader;
  ASSERT_TRUE(reader.Feed(EncodeFrame("x") + std::string("\x05\x00", 2)));
  EXPECT_EQ(Drain(reader), std::vector<std::string>{"x"});
  EXPECT_FALSE(reader.Finish());
  EXPECT_EQ(reader.error(), "truncated frame: connection closed after 2 of 4 length-prefix bytes");
}

TEST(FrameTest, PayloadViewsStayValidUntilTheNextFeed) {
  FrameReader reader;
  ASSERT_TRUE(reader.Feed(EncodeFrame("alpha") + EncodeFrame("beta")));
  std::string_view a, b;
  ASSERT_TRUE(reader.Next(&a));
  ASSERT_TRUE(reader.Next(&b));
  EXPECT_EQ(a, "alpha");
  EXPECT_EQ(b, "beta");
  // Consumed bytes are dropped on the next Feed, so the buffer does not grow with the stream.
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(reader.Feed(EncodeFrame(std::string(1000, 'q'))));
    std::string_view p;
    ASSERT_TRUE(reader.Next(&p));
  }
  EXPECT_EQ(reader.buffered(), 0u);
}

}  // namespace
}  // namespace sbx::sandbox
