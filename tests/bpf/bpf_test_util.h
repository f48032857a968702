// Helpers for the bpf tests: synthetic mapping lists, and the check that a loaded program answers
// exactly like the reference (ReferenceAnswer) at random and boundary positions.
//
// Thread-safety: none needed.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bpf/file_map.h"
#include "bpf/file_program.h"
#include "bpf/kernel.h"
#include "iomap/mapping.h"

namespace iomapfs::bpf::testing {

struct GenOptions {
  uint32_t block_size = 4096;
  uint64_t base = 0;        // file offset of the first possible extent
  double hole_prob = 0.35;  // chance of a hole before each extent
  double unwritten_prob = 0.2;
  uint64_t max_blocks = 64;       // extent length in blocks: 1..max_blocks
  uint64_t tail_hole_blocks = 3;  // blocks of hole inside i_size after the last extent
};

// `n` extents (MAPPED or UNWRITTEN, never physically mergeable with the previous one), holes
// between some, as the engine's MapRange(0, i_size) would list them.
inline std::vector<iomap::Mapping> RandomMappings(size_t n, uint64_t seed,
                                                  const GenOptions& o = GenOptions{}) {
  std::mt19937_64 rng(seed);
  std::vector<iomap::Mapping> out;
  const uint64_t bs = o.block_size;
  uint64_t cur = 0;
  uint64_t phys = (1000 + rng() % 1000) * bs;
  if (o.base > 0) {
    iomap::Mapping h;
    h.offset = 0;
    h.length = o.base;
    out.push_back(h);
    cur = o.base;
  }
  std::uniform_real_distribution<double> u(0, 1);
  for (size_t i = 0; i < n; ++i) {
    if (u(rng) < o.hole_prob) {
      iomap::Mapping h;
      h.offset = cur;
      h.length = (1 + rng() % 16) * bs;
      out.push_back(h);
      cur = h.end();
    }
    iomap::Mapping m;
    m.offset = cur;
    m.length = (1 + rng() % o.max_blocks) * bs;
    m.type =
        u(rng) < o.unwritten_prob ? iomap::MappingType::kUnwritten : iomap::MappingType::kMapped;
    phys += (1 + rng() % 8) * bs;  // a gap, so that neighbours never merge
    m.addr = phys;
    phys += m.length;
    out.push_back(m);
    cur = m.end();
  }
  if (o.tail_hole_blocks > 0) {
    iomap::Mapping h;
    h.offset = cur;
    h.length = o.tail_hole_blocks * bs;
    out.push_back(h);
  }
  return out;
}

// `count` extents of `len` bytes at first + k * stride, device addresses addr0 + k * addr_stride.
inline std::vector<iomap::Mapping> StrideFile(uint64_t first, uint64_t len, uint64_t stride,
                                              uint64_t count, uint64_t addr0, int64_t addr_stride,
                                              iomap::MappingType type = iomap::MappingType::kMapped,
                                              uint16_t flags = 0) {
  std::vector<iomap::Mapping> out;
  for (uint64_t k = 0; k < count; ++k) {
    iomap::Mapping m;
    m.offset = first + k * stride;
    m.length = len;
    m.addr = addr0 + k * static_cast<uint64_t>(addr_stride);
    m.type = type;
    m.flags = flags;
    out.push_back(m);
  }
  return out;
}

// Positions to probe: every interval boundary (start, start - 1, last byte, end), `random`
// uniform positions up to 1.06 x the last data end, and special values.
inline std::vector<uint64_t> ProbePositions(const FileMap& map, size_t random, uint64_t seed) {
  std::vector<uint64_t> pos;
  uint64_t data_end = 0;
  for (const iomap::Mapping& m : map.intervals) {
    pos.push_back(m.offset);
    if (m.offset > 0) pos.push_back(m.offset - 1);
    pos.push_back(m.end() - 1);
    if (m.end() - 1 < kPosLimit) pos.push_back(m.end());
    if (m.end() < (1ull << 62)) data_end = m.end();
  }
  std::mt19937_64 rng(seed);
  uint64_t span = data_end + data_end / 16 + 1;
  for (size_t i = 0; i < random; ++i) pos.push_back(rng() % span);
  for (uint64_t v : std::initializer_list<uint64_t>{
           0ull, 1ull, 4095ull, 1ull << 32, (1ull << 32) - 1, 1ull << 40, kPosLimit - 1, kPosLimit,
           1ull << 63, ~0ull, 0x7fffffffffffffffull}) {
    pos.push_back(v);
  }
  return pos;
}

// Runs `prog` at every probe position with a rotating set of opflags and compares with the
// reference. Returns the number of mismatches (the first few are reported as test failures).
inline size_t CheckAgainstReference(const FileProgram& prog, const FileMap& map, size_t random,
                                    uint64_t seed) {
  static constexpr uint32_t kOps[] = {
      0,
      iomap::kOpReport,
      iomap::kOpWrite,
      iomap::kOpDirect,
      iomap::kOpWrite | iomap::kOpDirect,
      iomap::kOpZero,
      iomap::kOpWriteback,
      iomap::kOpAtomic | iomap::kOpWrite | iomap::kOpDirect,
      iomap::kOpReport | iomap::kOpSwapfile,
      iomap::kOpFault | iomap::kOpWrite,
  };
  std::vector<uint64_t> positions = ProbePositions(map, random, seed);
  size_t bad = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    BeginCtx ctx;
    ctx.nodeid = map.nodeid;
    ctx.expect_seq = prog.seq();
    ctx.pos = positions[i];
    ctx.count = 4096;
    // Reads dominate: every other probe is a plain read.
    ctx.opflags = (i % 2 == 0) ? 0 : kOps[(i / 2) % std::size(kOps)];
    if (i % 997 == 13) ctx.expect_seq ^= 1;  // a stale dispatcher entry: must fall back
    if (i % 991 == 17) ctx.nodeid += 1;      // another file: must fall back
    auto got = prog.Run(ctx);
    if (!got) {
      ADD_FAILURE() << "test run failed: " << got.error();
      return positions.size();
    }
    Answer want = ReferenceAnswer(map, prog.seq(), ctx);
    if (!(*got == want)) {
      if (++bad <= 5) {
        ADD_FAILURE() << StrategyName(prog.strategy()) << " pos=" << ctx.pos
                      << " opflags=" << ctx.opflags << "\n  got  " << ToString(*got) << "\n  want "
                      << ToString(want);
      }
    }
  }
  return bad;
}

// Skips the calling test unless sleepable SYSCALL programs can be loaded here.
#define IOMAPFS_REQUIRE_BPF()                                       \
  do {                                                              \
    std::string iomapfs_why_;                                       \
    if (!::iomapfs::bpf::SyscallProgramsAvailable(&iomapfs_why_)) { \
      GTEST_SKIP() << "BPF unavailable: " << iomapfs_why_;          \
    }                                                               \
  } while (0)

}  // namespace iomapfs::bpf::testing
