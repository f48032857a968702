// Pure codegen: file map normalization, the reference answer, strategy choice, stride detection,
// map images, and golden disassembly of small files (no kernel needed).
#include "bpf/codegen.h"

#include <gtest/gtest.h>

#include "bpf/assembler.h"
#include "bpf/file_map.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

using iomap::Mapping;
using iomap::MappingType;

constexpr const char* kGoldenSingleExtent = R"(     0: r6 = r1
     1: r2 = *(u64 *)(r6 +0)
     2: if r2 != 0xc goto +34 <37>
     3: r2 = *(u64 *)(r6 +32)
     4: if r2 != 3 goto +32 <37>
     5: r7 = *(u64 *)(r6 +8)
     6: r8 = *(u32 *)(r6 +24)
     7: r1 = r7
     8: r1 >>= 0x3e
     9: if r1 != 0 goto +27 <37>
    10: if r8 & 0x40000200 goto +26 <37>
    11: r8 &= -2147483517
    12: if r7 < 0x2000 goto +5 <18>
    13: w2 = 0x2000
    14: r3 = -12288
    15: r4 = -1
    16: w5 = 0
    17: goto +5 <23>
    18: w2 = 0
    19: w3 = 0x2000
    20: w4 = 0x100000
    21: r5 = 0x700000002 ll
    23: if r8 == 0 goto +3 <27>
    24: r1 = r5
    25: r1 &= 0xffff
    26: if r1 != 2 goto +10 <37>
    27: *(u64 *)(r6 +40) = r2
    28: *(u64 *)(r6 +48) = r3
    29: *(u64 *)(r6 +56) = r4
    30: *(u64 *)(r6 +64) = r5
    31: *(u64 *)(r6 +72) = r2
    32: *(u64 *)(r6 +80) = r3
    33: *(u64 *)(r6 +88) = -1
    34: *(u64 *)(r6 +96) = 0xff
    35: w0 = 1
    36: exit
    37: w0 = 0
    38: exit
)";

constexpr const char* kGoldenTwoExtentTree = R"(     0: r6 = r1
     1: r2 = *(u64 *)(r6 +0)
     2: if r2 != 0xc goto +48 <51>
     3: r2 = *(u64 *)(r6 +32)
     4: if r2 != 3 goto +46 <51>
     5: r7 = *(u64 *)(r6 +8)
     6: r8 = *(u32 *)(r6 +24)
     7: r1 = r7
     8: r1 >>= 0x3e
     9: if r1 != 0 goto +41 <51>
    10: if r8 & 0x40000200 goto +40 <51>
    11: r8 &= -2147483517
    12: if r7 >= 0x4000 goto +12 <25>
    13: if r7 >= 0x2000 goto +6 <20>
    14: w2 = 0
    15: w3 = 0x2000
    16: w4 = 0x100000
    17: r5 = 0x700000002 ll
    19: goto +17 <37>
    20: w2 = 0x2000
    21: w3 = 0x2000
    22: r4 = -1
    23: w5 = 0
    24: goto +12 <37>
    25: if r7 >= 0x5000 goto +7 <33>
    26: w2 = 0x4000
    27: w3 = 0x1000
    28: r4 = 0x200000000 ll
    30: r5 = 0x700000003 ll
    32: goto +4 <37>
    33: w2 = 0x5000
    34: r3 = -24576
    35: r4 = -1
    36: w5 = 0
    37: if r8 == 0 goto +3 <41>
    38: r1 = r5
    39: r1 &= 0xffff
    40: if r1 != 2 goto +10 <51>
    41: *(u64 *)(r6 +40) = r2
    42: *(u64 *)(r6 +48) = r3
    43: *(u64 *)(r6 +56) = r4
    44: *(u64 *)(r6 +64) = r5
    45: *(u64 *)(r6 +72) = r2
    46: *(u64 *)(r6 +80) = r3
    47: *(u64 *)(r6 +88) = -1
    48: *(u64 *)(r6 +96) = 0xff
    49: w0 = 1
    50: exit
    51: w0 = 0
    52: exit
)";

constexpr const char* kGoldenTwoExtentMapSearch = R"(     0: r6 = r1
     1: r2 = *(u64 *)(r6 +0)
     2: if r2 != 0xc goto +66 <69>
     3: r2 = *(u64 *)(r6 +32)
     4: if r2 != 3 goto +64 <69>
     5: r7 = *(u64 *)(r6 +8)
     6: r8 = *(u32 *)(r6 +24)
     7: r1 = r7
     8: r1 >>= 0x3e
     9: if r1 != 0 goto +59 <69>
    10: if r8 & 0x40000200 goto +58 <69>
    11: r8 &= -2147483517
    12: r1 = map[fd:42][0]+0
    14: *(u64 *)(r10 -8) = r1
    15: r9 = *(u64 *)(r1 +0)
    16: r2 = r9
    17: r2 >>= 1
    18: r2 &= 1
    19: r2 *= 0x80
    20: r1 += 0x40
    21: r1 += r2
    22: w2 = 0
    23: r0 = r7
    24: r0 += 1
    25: r3 = r1
    26: r3 += r2
    27: r3 = *(u64 *)(r3 +16)
    28: r3 -= r0
    29: r3 >>= 0x3f
    30: r3 <<= 4
    31: r2 += r3
    32: r3 = r1
    33: r3 += r2
    34: r3 = *(u64 *)(r3 +8)
    35: r3 -= r0
    36: r3 >>= 0x3f
    37: r3 <<= 3
    38: r2 += r3
    39: r3 = r1
    40: r3 += r2
    41: r0 = *(u64 *)(r3 +0)
    42: r5 = r2
    43: r5 *= 3
    44: r5 += r1
    45: r5 += 0x20
    46: r2 = r0
    47: r3 = *(u64 *)(r5 +0)
    48: r4 = *(u64 *)(r5 +8)
    49: r5 = *(u64 *)(r5 +16)
    50: r1 = *(u64 *)(r10 -8)
    51: r1 = *(u64 *)(r1 +0)
    52: r9 &= -2
    53: r1 -= r9
    54: if r1 > 2 goto +14 <69>
    55: if r8 == 0 goto +3 <59>
    56: r1 = r5
    57: r1 &= 0xffff
    58: if r1 != 2 goto +10 <69>
    59: *(u64 *)(r6 +40) = r2
    60: *(u64 *)(r6 +48) = r3
    61: *(u64 *)(r6 +56) = r4
    62: *(u64 *)(r6 +64) = r5
    63: *(u64 *)(r6 +72) = r2
    64: *(u64 *)(r6 +80) = r3
    65: *(u64 *)(r6 +88) = -1
    66: *(u64 *)(r6 +96) = 0xff
    67: w0 = 1
    68: exit
    69: w0 = 0
    70: exit
)";

const Mapping kA{0, 8192, 1 << 20, MappingType::kMapped, 0};
const Mapping kB{16384, 4096, 1ull << 33, MappingType::kUnwritten, 0};

TEST(CodegenGolden, SingleExtent) {
  auto map = BuildFileMap(12, 4096, 7, std::vector<Mapping>{kA});
  ASSERT_TRUE(map.has_value());
  ASSERT_EQ(Choose(*map, CodegenOptions{}, nullptr), Strategy::kArithmetic);
  auto g = Generate(*map, 3, Strategy::kArithmetic, -1);
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(Disassemble(g->insns), kGoldenSingleExtent);
}

TEST(CodegenGolden, TwoExtentTree) {
  auto map = BuildFileMap(12, 4096, 7, std::vector<Mapping>{kA, kB});
  ASSERT_TRUE(map.has_value());
  ASSERT_EQ(Choose(*map, CodegenOptions{}, nullptr), Strategy::kTree);
  auto g = Generate(*map, 3, Strategy::kTree, -1);
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(Disassemble(g->insns), kGoldenTwoExtentTree);
}

TEST(CodegenGolden, TwoExtentMapSearch) {
  auto map = BuildFileMap(12, 4096, 7, std::vector<Mapping>{kA, kB});
  ASSERT_TRUE(map.has_value());
  auto g = Generate(*map, 3, Strategy::kMapSearch, 42);
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(Disassemble(g->insns), kGoldenTwoExtentMapSearch);
}

TEST(FileMap, GapsBecomeHolesAndTheTailReachesMaxEnd) {
  auto map = BuildFileMap(1, 4096, 7, std::vector<Mapping>{kA, kB});
  ASSERT_TRUE(map.has_value());
  ASSERT_EQ(map->intervals.size(), 4u);
  EXPECT_EQ(map->intervals[1], (Mapping{8192, 8192, iomap::kNullAddr, MappingType::kHole, 0}));
  EXPECT_EQ(map->intervals[3].offset, 20480u);
  EXPECT_EQ(map->intervals[3].end(), MaxEnd(4096));
}

TEST(FileMap, TrailingHoleMergesWithThePastEofHole) {
  Mapping tail{8192, 4096, iomap::kNullAddr, MappingType::kHole, 0};
  auto map = BuildFileMap(1, 4096, 7, std::vector<Mapping>{kA, tail});
  ASSERT_TRUE(map.has_value());
  ASSERT_EQ(map->intervals.size(), 2u);
  EXPECT_EQ(map->intervals[1].offset, 8192u);
  EXPECT_EQ(map->intervals[1].end(), MaxEnd(4096));
}

TEST(FileMap, RejectsBadInput) {
  Mapping inl{0, 100, iomap::kNullAddr, MappingType::kInline, 0};
  EXPECT_EQ(BuildFileMap(1, 4096, 7, std::vector<Mapping>{inl}).error(), ENOTSUP);
  EXPECT_EQ(BuildFileMap(1, 4096, 7, std::vector<Mapping>{kB, kA}).error(), EINVAL);
  Mapping unaligned = kA;
  unaligned.length = 100;
  EXPECT_EQ(BuildFileMap(1, 4096, 7, std::vector<Mapping>{unaligned}).error(), EINVAL);
  Mapping noaddr = kA;
  noaddr.addr = iomap::kNullAddr;
  EXPECT_EQ(BuildFileMap(1, 4096, 7, std::vector<Mapping>{noaddr}).error(), EINVAL);
}

TEST(Reference, AnswersPerSpec) {
  auto map = *BuildFileMap(12, 4096, 7, std::vector<Mapping>{kA, kB});
  BeginCtx c;
  c.nodeid = 12;
  c.expect_seq = 3;
  c.pos = 100;
  Answer a = ReferenceAnswer(map, 3, c);
  ASSERT_EQ(a.ret, kFibHandled);
  EXPECT_EQ(a.out.read, (IomapIo{0, 8192, 1 << 20, 2, 0, 7}));
  EXPECT_EQ(a.out.write, (IomapIo{0, 8192, iomap::kNullAddr, kTypePureOverwrite, 0, 0}));
  c.opflags = iomap::kOpWrite;
  EXPECT_EQ(ReferenceAnswer(map, 3, c).ret, kFibHandled);  // overwrite of written blocks
  c.pos = 16384;
  EXPECT_EQ(ReferenceAnswer(map, 3, c).ret, kFibFallback);  // unwritten: conversion
  c.opflags = 0;
  EXPECT_EQ(ReferenceAnswer(map, 3, c).out.read.type, 3);
  c.pos = 9000;
  c.opflags = iomap::kOpZero;
  EXPECT_EQ(ReferenceAnswer(map, 3, c).ret, kFibFallback);  // hole
  c.opflags = iomap::kOpReport;
  EXPECT_EQ(ReferenceAnswer(map, 3, c).out.read.dev, 0u);
  c.opflags = iomap::kOpAtomic | iomap::kOpWrite;
  c.pos = 0;
  EXPECT_EQ(ReferenceAnswer(map, 3, c).ret, kFibFallback);
  c.opflags = 0;
  EXPECT_EQ(ReferenceAnswer(map, 4, c).ret, kFibFallback);  // stale
  c.pos = kPosLimit;
  EXPECT_EQ(ReferenceAnswer(map, 3, c).ret, kFibFallback);
  c.pos = 1ull << 50;  // past EOF: the final hole
  a = ReferenceAnswer(map, 3, c);
  EXPECT_EQ(a.out.read.offset, 20480u);
  EXPECT_EQ(a.out.read.type, 0);
  EXPECT_EQ(a.out.read.addr, iomap::kNullAddr);
}

TEST(Reference, AgreesWithALinearScan) {
  auto map = *BuildFileMap(12, 4096, 7, testing::RandomMappings(300, 1));
  std::mt19937_64 rng(2);
  for (uint64_t pos : testing::ProbePositions(map, 2000, 3)) {
    if (pos >= map.intervals.back().end()) continue;
    size_t i = FindInterval(map, pos);
    EXPECT_LE(map.intervals[i].offset, pos);
    EXPECT_LT(pos, map.intervals[i].end());
    for (size_t j = 0; j < map.intervals.size(); ++j) {
      if (map.intervals[j].offset <= pos && pos < map.intervals[j].end()) {
        EXPECT_EQ(i, j);
      }
    }
  }
}

TEST(Choose, ByShape) {
  CodegenOptions o;
  auto small = *BuildFileMap(1, 4096, 7, testing::RandomMappings(20, 1));
  EXPECT_EQ(Choose(small, o, nullptr), Strategy::kTree);
  auto big = *BuildFileMap(1, 4096, 7, testing::RandomMappings(500, 1));
  EXPECT_EQ(Choose(big, o, nullptr), Strategy::kMapSearch);
  o.map_max_intervals = 100;
  std::string why;
  EXPECT_EQ(Choose(big, o, &why), Strategy::kNone);
  EXPECT_NE(why.find("map limit"), std::string::npos);
  o = CodegenOptions{};
  o.tree_max_insns = 50;  // the stated cap: a tree over it becomes a map search
  EXPECT_EQ(Choose(small, o, nullptr), Strategy::kMapSearch);
}

TEST(DetectStride, ExactOnly) {
  std::vector<Mapping> ms;
  for (uint64_t k = 0; k < 10; ++k) {
    ms.push_back(Mapping{4096 + k * 12288, 4096, (1 << 20) + k * 8192, MappingType::kMapped, 0});
  }
  auto map = *BuildFileMap(1, 4096, 7, ms);
  StrideShape s;
  ASSERT_TRUE(DetectStride(map, &s));
  EXPECT_EQ(s.count, 10u);
  EXPECT_EQ(s.stride, 12288u);
  EXPECT_EQ(s.addr_stride, 8192u);
  ms[5].addr += 4096;
  EXPECT_FALSE(DetectStride(*BuildFileMap(1, 4096, 7, ms), &s));
  ms[5].addr -= 4096;
  ms[7].type = MappingType::kUnwritten;
  EXPECT_FALSE(DetectStride(*BuildFileMap(1, 4096, 7, ms), &s));
}

TEST(MapImage, PublishFlipsBuffers) {
  auto a = *BuildFileMap(1, 4096, 7, testing::RandomMappings(10, 1));
  auto b = *BuildFileMap(1, 4096, 7, testing::RandomMappings(12, 2));
  MapLayout l = MapLayout::ForIntervals(32);
  std::vector<uint8_t> v(l.value_bytes());
  WriteInitialImage(a, l, v.data());
  auto seq = [&] { return *reinterpret_cast<uint64_t*>(v.data()); };
  auto key = [&](int buf, size_t i) {
    return reinterpret_cast<uint64_t*>(v.data() + MapLayout::kHeaderBytes +
                                       buf * l.buffer_bytes())[i];
  };
  EXPECT_EQ(seq(), 0u);
  EXPECT_EQ(key(0, 1), a.intervals[1].offset);
  EXPECT_EQ(key(0, a.intervals.size()), kPosLimit);
  PublishImage(b, l, v.data());
  EXPECT_EQ(seq(), 2u);
  EXPECT_EQ(key(1, 1), b.intervals[1].offset);
  EXPECT_EQ(key(0, 1), a.intervals[1].offset);  // the old buffer is untouched
  PublishImage(a, l, v.data());
  EXPECT_EQ(seq(), 4u);
}

}  // namespace
}  // namespace iomapfs::bpf
