// Pure codegen: file map normalization, the reference answer, strategy choice, stride detection,
// map images, and golden disassembly of small files (no kernel needed).
#include "bpf/codegen.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstring>

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
     2: if r2 != 0xc goto +145 <148>
     3: r2 = *(u64 *)(r6 +32)
     4: if r2 != 3 goto +143 <148>
     5: r7 = *(u64 *)(r6 +8)
     6: r8 = *(u32 *)(r6 +24)
     7: r1 = r7
     8: r1 >>= 0x3e
     9: if r1 != 0 goto +138 <148>
    10: if r8 & 0x40000200 goto +137 <148>
    11: r8 &= -2147483517
    12: r1 = map[fd:42][0]+0
    14: *(u64 *)(r10 -8) = r1
    15: r9 = *(u64 *)(r1 +0)
    16: *(u64 *)(r10 -64) = r9
    17: r0 = r7
    18: r0 >>= 0xc
    19: r3 = r0
    20: r3 >>= 0x20
    21: r3 *= -1
    22: r3 s>>= 0x3f
    23: r0 |= r3
    24: w0 &= 0xffffffff
    25: r1 += 0x40
    26: r2 = r9
    27: r2 &= 2
    28: if r2 == 0 goto +1 <30>
    29: r1 += 0x100
    30: w2 = 0
    31: r4 = r1
    32: r2 <<= 4
    33: r3 = *(u32 *)(r4 +16)
    34: r3 -= r0
    35: r3 >>= 0x3f
    36: r5 = r3
    37: r3 = *(u32 *)(r4 +32)
    38: r3 -= r0
    39: r3 >>= 0x3f
    40: r7 = r3
    41: r3 = *(u32 *)(r4 +48)
    42: r3 -= r0
    43: r3 >>= 0x3f
    44: r9 = r3
    45: r3 = *(u32 *)(r4 +64)
    46: r3 -= r0
    47: r3 >>= 0x3f
    48: r2 += r3
    49: r3 = *(u32 *)(r4 +80)
    50: r3 -= r0
    51: r3 >>= 0x3f
    52: r5 += r3
    53: r3 = *(u32 *)(r4 +96)
    54: r3 -= r0
    55: r3 >>= 0x3f
    56: r7 += r3
    57: r3 = *(u32 *)(r4 +112)
    58: r3 -= r0
    59: r3 >>= 0x3f
    60: r9 += r3
    61: r3 = *(u32 *)(r4 +128)
    62: r3 -= r0
    63: r3 >>= 0x3f
    64: r2 += r3
    65: r3 = *(u32 *)(r4 +144)
    66: r3 -= r0
    67: r3 >>= 0x3f
    68: r5 += r3
    69: r3 = *(u32 *)(r4 +160)
    70: r3 -= r0
    71: r3 >>= 0x3f
    72: r7 += r3
    73: r3 = *(u32 *)(r4 +176)
    74: r3 -= r0
    75: r3 >>= 0x3f
    76: r9 += r3
    77: r3 = *(u32 *)(r4 +192)
    78: r3 -= r0
    79: r3 >>= 0x3f
    80: r2 += r3
    81: r3 = *(u32 *)(r4 +208)
    82: r3 -= r0
    83: r3 >>= 0x3f
    84: r5 += r3
    85: r3 = *(u32 *)(r4 +224)
    86: r3 -= r0
    87: r3 >>= 0x3f
    88: r7 += r3
    89: r3 = *(u32 *)(r4 +240)
    90: r3 -= r0
    91: r3 >>= 0x3f
    92: r9 += r3
    93: r2 += r5
    94: r7 += r9
    95: r2 += r7
    96: r2 &= 0xf
    97: r5 = r2
    98: r5 <<= 4
    99: r5 += r1
   100: r2 = *(u32 *)(r5 +0)
   101: r3 = *(u32 *)(r5 +4)
   102: r4 = *(u64 *)(r5 +8)
   103: r1 = *(u64 *)(r10 -8)
   104: r5 = *(u64 *)(r1 +0)
   105: r9 = *(u64 *)(r10 -64)
   106: r9 &= -2
   107: r5 -= r9
   108: if r5 > 2 goto +39 <148>
   109: r1 = *(u32 *)(r1 +36)
   110: r1 <<= 0x20
   111: w2 += 1
   112: r2 <<= 0xc
   113: r3 <<= 0xc
   114: if r3 != 0 goto +3 <118>
   115: r3 = -1
   116: r3 <<= 0xc
   117: r3 -= r2
   118: r5 = r4
   119: r5 &= 3
   120: r9 = r5
   121: r9 -= 1
   122: r9 s>>= 0x3f
   123: r0 = r9
   124: r0 ^= -1
   125: r1 &= r0
   126: r5 |= r1
   127: r0 = r4
   128: r0 >>= 2
   129: r0 &= 0xff
   130: r0 <<= 0x10
   131: r5 |= r0
   132: r4 &= -1024
   133: r4 |= r9
   134: if r8 == 0 goto +3 <138>
   135: r1 = r5
   136: r1 &= 0xffff
   137: if r1 != 2 goto +10 <148>
   138: *(u64 *)(r6 +40) = r2
   139: *(u64 *)(r6 +48) = r3
   140: *(u64 *)(r6 +56) = r4
   141: *(u64 *)(r6 +64) = r5
   142: *(u64 *)(r6 +72) = r2
   143: *(u64 *)(r6 +80) = r3
   144: *(u64 *)(r6 +88) = -1
   145: *(u64 *)(r6 +96) = 0xff
   146: w0 = 1
   147: exit
   148: w0 = 0
   149: exit
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

// The descent the program emits, in C++ over the image: at the records it lands on FindInterval.
size_t Descend(const MapLayout& l, const uint8_t* buf, uint32_t block_bits, uint64_t pos) {
  const uint64_t p = std::min<uint64_t>(pos >> block_bits, MapLayout::kPadKey);
  uint64_t i = 0;
  for (const MapLayout::Level& level : l.Levels()) {
    EXPECT_LT(i, level.nodes);
    const auto* keys = reinterpret_cast<const uint32_t*>(buf + level.offset) + i * 16;
    i *= 16;
    for (int j = 1; j < 16; ++j) i += keys[j] < p ? 1 : 0;
  }
  EXPECT_LT(i, l.groups());
  const auto* recs = reinterpret_cast<const uint32_t*>(buf + l.tree_bytes()) + i * 16 * 4;
  EXPECT_TRUE(i == 0 || recs[0] < p);  // the group reached starts at or before pos
  i *= 16;
  for (int j = 1; j < 16; ++j) i += recs[j * 4] < p ? 1 : 0;
  return i;
}

// The record the program decodes for sorted index i, in C++.
IomapIo DecodeRecord(const MapLayout& l, const uint8_t* buf, uint32_t block_bits, uint32_t dev,
                     size_t i) {
  const uint8_t* r = buf + l.tree_bytes() + i * MapLayout::kRecordBytes;
  uint32_t key, len;
  uint64_t word;
  std::memcpy(&key, r, 4);
  std::memcpy(&len, r + 4, 4);
  std::memcpy(&word, r + 8, 8);
  IomapIo io;
  io.offset = uint64_t{static_cast<uint32_t>(key + 1)} << block_bits;
  io.length = len != 0 ? uint64_t{len} << block_bits : (~0ull << block_bits) - io.offset;
  io.type = word & 3;
  io.flags = (word >> 2) & 0xff;
  io.addr = io.type == 0 ? iomap::kNullAddr : word & ~0x3ffull;
  io.dev = io.type == 0 ? 0 : dev;
  return io;
}

TEST(MapImage, LevelsAreCacheLinesAndPowersOfTwo) {
  for (uint32_t cap : {16u, 32u, 64u, 256u, 512u, 1024u, 4096u, 1u << 16, 1u << 17}) {
    MapLayout l;
    l.capacity = cap;
    auto levels = l.Levels();
    EXPECT_EQ(levels.empty(), cap == 16) << cap;
    if (!levels.empty()) {
      EXPECT_EQ(levels.front().nodes, 1u) << cap;
      EXPECT_EQ(levels.back().nodes, std::max(1u, cap / 256)) << cap;
      EXPECT_EQ(levels.back().width, 16u) << cap;
    }
    uint64_t offset = 0;
    for (size_t k = 0; k < levels.size(); ++k) {
      EXPECT_EQ(levels[k].offset, offset);
      EXPECT_TRUE(std::has_single_bit(levels[k].nodes));
      if (k > 0) {
        EXPECT_LE(levels[k].nodes, levels[k - 1].nodes * 16);
      }
      offset += levels[k].nodes * 64;
    }
    EXPECT_EQ(l.tree_bytes(), offset);
    EXPECT_EQ((MapLayout::kHeaderBytes + l.buffer_bytes()) % 64, 0u);  // both trees line-aligned
    EXPECT_EQ(l.tree_bytes() % 64, 0u);                                // groups line-aligned
  }
  MapLayout l;
  l.capacity = 1u << 16;
  EXPECT_EQ(l.Levels().size(), 3u);  // 4096 groups: 3 index lines and one group per lookup
  EXPECT_EQ(MapLayout::ForIntervals(3).capacity, MapLayout::kMinCapacity);
}

TEST(MapImage, DescentFindsTheIntervalAndItsRecordDecodes) {
  for (uint32_t bs : {4096u, 1024u, 65536u}) {
    testing::GenOptions o;
    o.block_size = bs;
    for (size_t n : {1, 3, 7, 8, 9, 15, 16, 60, 300, 3000, 20000}) {
      auto ms = testing::RandomMappings(n, n, o);
      for (size_t k = 0; k < ms.size(); k += 3) ms[k].flags = k % 0x100;  // flags survive
      auto map = *BuildFileMap(1, bs, 7, ms);
      ASSERT_TRUE(MapLayout::Encodable(map));
      MapLayout l = MapLayout::ForIntervals(map.intervals.size());
      std::vector<uint8_t> v(l.value_bytes());
      WriteInitialImage(map, l, v.data());
      ASSERT_TRUE(ImageMatches(v.data(), map));
      const uint8_t* buf = v.data() + MapLayout::kHeaderBytes;
      const uint32_t bits = std::countr_zero(bs);
      for (uint64_t pos : testing::ProbePositions(map, 2000, 3)) {
        if (pos >= kPosLimit) continue;
        const size_t want = FindInterval(map, pos);
        ASSERT_EQ(Descend(l, buf, bits, pos), want) << n << " " << pos;
        ASSERT_EQ(DecodeRecord(l, buf, bits, 7, want), ReadSlot(map, map.intervals[want]))
            << n << " " << pos;
      }
    }
  }
  // Another block size or device: not the same image.
  auto map = *BuildFileMap(1, 4096, 7, testing::RandomMappings(5, 1));
  MapLayout l = MapLayout::ForIntervals(map.intervals.size());
  std::vector<uint8_t> v(l.value_bytes());
  WriteInitialImage(map, l, v.data());
  FileMap other_dev = map;
  other_dev.dev = 8;
  EXPECT_FALSE(ImageMatches(v.data(), other_dev));
}

TEST(MapImage, PublishFlipsBuffers) {
  auto a = *BuildFileMap(1, 4096, 7, testing::RandomMappings(10, 1));
  auto b = *BuildFileMap(1, 4096, 7, testing::RandomMappings(12, 2));
  MapLayout l = MapLayout::ForIntervals(32);
  std::vector<uint8_t> v(l.value_bytes());
  WriteInitialImage(a, l, v.data());
  auto seq = [&] { return *reinterpret_cast<uint64_t*>(v.data()); };
  auto key = [&](int buf, size_t i) {
    return reinterpret_cast<uint32_t*>(v.data() + MapLayout::kHeaderBytes +
                                       buf * l.buffer_bytes())[i];
  };
  // Record keys are the sorted starts (in blocks, minus 1).
  auto slot = [&](size_t rank) { return l.tree_bytes() / 4 + rank * 4; };
  auto blk = [](const FileMap& m, size_t i) { return m.intervals[i].offset / 4096 - 1; };
  EXPECT_EQ(seq(), 0u);
  EXPECT_EQ(key(0, slot(1)), blk(a, 1));
  EXPECT_EQ(key(0, slot(a.intervals.size())), MapLayout::kPadKey);
  PublishImage(b, l, v.data());
  EXPECT_EQ(seq(), 2u);
  EXPECT_EQ(key(1, slot(1)), blk(b, 1));
  EXPECT_EQ(key(0, slot(1)), blk(a, 1));  // the old buffer is untouched
  PublishImage(a, l, v.data());
  EXPECT_EQ(seq(), 4u);
}

}  // namespace
}  // namespace iomapfs::bpf
