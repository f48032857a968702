#include "base/byte_reader.h"

#include <gtest/gtest.h>

#include <array>

namespace iomapfs {
namespace {

TEST(ByteReaderTest, ReadsWithinBoundsOnly) {
  std::array<std::byte, 6> buf{std::byte{1}, std::byte{0},   std::byte{0},
                               std::byte{0}, std::byte{'a'}, std::byte{0}};
  ByteReader r(buf);
  auto v = r.Read<uint32_t>();
  ASSERT_TRUE(v);
  EXPECT_EQ(*v, 1u);
  EXPECT_FALSE(r.Read<uint32_t>());  // only 2 bytes left
  EXPECT_EQ(r.remaining(), 2u);      // a failed read consumes nothing
  auto s = r.ReadCString();
  ASSERT_TRUE(s);
  EXPECT_EQ(*s, "a");
  EXPECT_EQ(r.remaining(), 0u);
}

TEST(ByteReaderTest, UnterminatedStringFails) {
  std::array<std::byte, 2> buf{std::byte{'a'}, std::byte{'b'}};
  ByteReader r(buf);
  EXPECT_FALSE(r.ReadCString());
  EXPECT_EQ(r.remaining(), 2u);
}

}  // namespace
}  // namespace iomapfs
