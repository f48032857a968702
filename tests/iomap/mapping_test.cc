// CheckMapping: the invariant checker itself, one case per rule of mapping.h / spec §4.5.
#include "iomap/mapping.h"

#include <gtest/gtest.h>

namespace iomapfs::iomap {
namespace {

constexpr uint32_t kBs = 4096;
constexpr uint64_t kDev = 1ull << 30;

Mapping M(uint64_t off, uint64_t len, uint64_t addr, MappingType t, uint16_t flags = 0) {
  return Mapping{off, len, addr, t, flags};
}

bool Ok(const Mapping& m, uint64_t pos, std::string* why = nullptr) {
  std::string w;
  bool ok = CheckMapping(m, pos, kBs, kDev, &w).has_value();
  if (why) *why = w;
  return ok;
}

TEST(CheckMappingTest, AcceptsValidMappings) {
  EXPECT_TRUE(Ok(M(0, kBs, 8 * kBs, MappingType::kMapped), 0));
  EXPECT_TRUE(Ok(M(kBs, 2 * kBs, 8 * kBs, MappingType::kUnwritten), 3 * kBs - 1));
  EXPECT_TRUE(Ok(M(0, 16 * kBs, kNullAddr, MappingType::kHole), 5));
  EXPECT_TRUE(Ok(M(0, 60, kNullAddr, MappingType::kInline), 59));
  EXPECT_TRUE(Ok(M(0, kBs, kDev - kBs, MappingType::kMapped, kFlagMerged | kFlagWantIomapEnd), 0));
  // The largest hole that does not overflow.
  uint64_t top = UINT64_MAX / kBs * kBs;
  EXPECT_TRUE(Ok(M(top - kBs, kBs, kNullAddr, MappingType::kHole), top - 1));
}

TEST(CheckMappingTest, RejectsEachBrokenRule) {
  std::string why;
  EXPECT_FALSE(Ok(M(0, 0, kNullAddr, MappingType::kHole), 0, &why));
  EXPECT_NE(why.find("zero length"), std::string::npos) << why;
  EXPECT_FALSE(Ok(M(UINT64_MAX / kBs * kBs, kBs * 2, kNullAddr, MappingType::kHole),
                  UINT64_MAX / kBs * kBs));
  EXPECT_FALSE(Ok(M(kBs, kBs, kNullAddr, MappingType::kHole), 0)) << "pos before";
  EXPECT_FALSE(Ok(M(kBs, kBs, kNullAddr, MappingType::kHole), 2 * kBs)) << "pos at end";
  EXPECT_FALSE(Ok(M(0, kBs, kNullAddr, MappingType::kHole, 1u << 8), 0)) << "flag bit 8";
  EXPECT_FALSE(Ok(M(0, kBs, kNullAddr, MappingType::kDelalloc), 0)) << "never produced";
  EXPECT_FALSE(Ok(M(0, kBs, kNullAddr, static_cast<MappingType>(253)), 0));
  EXPECT_FALSE(Ok(M(0, kBs, 0, MappingType::kHole), 0)) << "hole with addr";
  EXPECT_FALSE(Ok(M(0, 60, 0, MappingType::kInline), 0)) << "inline with addr";
  EXPECT_FALSE(Ok(M(0, kBs, kNullAddr, MappingType::kMapped), 0)) << "mapped without addr";
  EXPECT_FALSE(Ok(M(0, kBs, kNullAddr, MappingType::kUnwritten), 0));
  EXPECT_FALSE(Ok(M(0, kBs, kDev, MappingType::kMapped), 0)) << "past device";
  EXPECT_FALSE(Ok(M(0, 2 * kBs, kDev - kBs, MappingType::kMapped), 0)) << "straddles end";
  EXPECT_FALSE(Ok(M(0, kBs, UINT64_MAX - kBs + 2, MappingType::kMapped), 0)) << "overflow";
  EXPECT_FALSE(Ok(M(512, kBs, kNullAddr, MappingType::kHole), 600)) << "unaligned offset";
  EXPECT_FALSE(Ok(M(0, kBs + 1, kNullAddr, MappingType::kHole), 0)) << "unaligned length";
  EXPECT_FALSE(Ok(M(0, kBs, kBs + 512, MappingType::kMapped), 0)) << "unaligned addr";
  EXPECT_FALSE(
      CheckMapping(M(0, kBs, kNullAddr, MappingType::kHole), 0, 0, kDev, nullptr).has_value());
}

TEST(CheckMappingTest, ErrorIsEuclean) {
  auto r = CheckMapping(M(0, 0, kNullAddr, MappingType::kHole), 0, kBs, kDev, nullptr);
  EXPECT_EQ(r.error(), EUCLEAN);
}

TEST(MappingToStringTest, NamesTypeAndFields) {
  EXPECT_EQ(ToString(M(4096, 8192, 1 << 20, MappingType::kMapped, kFlagMerged)),
            "{MAPPED off=4096 len=8192 addr=1048576 flags=0x8}");
  EXPECT_EQ(ToString(M(0, 4096, kNullAddr, MappingType::kHole)),
            "{HOLE off=0 len=4096 addr=NULL flags=0x0}");
}

}  // namespace
}  // namespace iomapfs::iomap
