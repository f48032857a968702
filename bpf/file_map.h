// FileMap: a file's mappings as the BPF programs see them, the program context layout, and the
// reference answer (a pure C++ lookup) that every generated program must reproduce exactly.
//
// The interval list covers the whole file address space: the engine's mappings in order
// (Engine::MapRange), a HOLE for each gap, and a final HOLE to the largest block-aligned end
// (the engine's past-EOF hole). For `iomap_begin(pos, count, opflags)` (spec §4, §13) a program
// answers the interval containing `pos`:
//   - reads (opflags 0, DIRECT, NOWAIT, FAULT...) and REPORT: read slot = the interval (HOLE,
//     MAPPED or UNWRITTEN), write slot = PURE_OVERWRITE over the same range;
//   - write ops (WRITE, ZERO, UNSHARE, WRITEBACK; spec §3.4) over MAPPED: the same;
//   - anything else falls back to the server (FIB_FALLBACK): writes over holes or unwritten
//     extents (allocation or conversion), ATOMIC and SWAPFILE (special rules, §4.7, §4.8),
//     pos >= 2^62 (past any file system's maximum size), and a context whose node id or expected
//     sequence number is not the program's own (a stale program).
// INLINE mappings are never answered: a file that has one gets no program.
//
// Thread-safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "iomap/mapping.h"

namespace iomapfs::bpf {

// struct fuse_iomap_io (spec §3.1), wire layout.
struct IomapIo {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t addr = iomap::kNullAddr;
  uint16_t type = 0;
  uint16_t flags = 0;
  uint32_t dev = 0;
  bool operator==(const IomapIo&) const = default;
};
static_assert(sizeof(IomapIo) == 32);

// struct fuse_iomap_begin_out (spec §4.2).
struct IomapBeginOut {
  IomapIo read;
  IomapIo write;
  bool operator==(const IomapBeginOut&) const = default;
};
static_assert(sizeof(IomapBeginOut) == 64);

inline constexpr uint16_t kTypePureOverwrite = 255;  // FUSE_IOMAP_TYPE_PURE_OVERWRITE
// enum fuse_iomap_bpf_ret (spec §13.2).
inline constexpr uint32_t kFibFallback = 0;
inline constexpr uint32_t kFibHandled = 1;

// The context of a BPF_PROG_TYPE_SYSCALL program body: the hook's arguments (node id instead of
// the inode pointer), the sequence number the dispatcher expects of the file's program, and the
// reply. Offsets are part of the generated code.
struct BeginCtx {
  uint64_t nodeid = 0;      // 0
  uint64_t pos = 0;         // 8
  uint64_t count = 0;       // 16
  uint32_t opflags = 0;     // 24
  uint32_t reserved = 0;    // 28
  uint64_t expect_seq = 0;  // 32: a program answers only if this equals its own sequence number
  IomapBeginOut out;        // 40
};
static_assert(sizeof(BeginCtx) == 104);
inline constexpr int kCtxNodeid = 0;
inline constexpr int kCtxPos = 8;
inline constexpr int kCtxOpflags = 24;
inline constexpr int kCtxExpectSeq = 32;
inline constexpr int kCtxOut = 40;

// Positions at or past this fall back (loff_t positions are below s_maxbytes <= 2^63 - 1, ext4's
// largest file is 2^48 bytes; the bound keeps every signed trick in the search exact).
inline constexpr uint64_t kPosLimit = 1ull << 62;

// Opflags that make an op a "write op" (spec §3.4).
inline constexpr uint32_t kWriteOps =
    iomap::kOpWrite | iomap::kOpZero | iomap::kOpUnshare | iomap::kOpWriteback;
// Opflags a program never answers.
inline constexpr uint32_t kNeverOps = iomap::kOpAtomic | iomap::kOpSwapfile;

struct FileMap {
  uint64_t nodeid = 0;
  uint32_t block_size = 4096;
  uint32_t dev = 1;  // backing device id written into MAPPED/UNWRITTEN mappings (spec §3.1)
  std::vector<iomap::Mapping> intervals;  // normalized: see BuildFileMap
};

// Normalizes `mappings` (sorted by offset, non-overlapping; the engine's MapRange output, from
// offset 0 through EOF or beyond) into a FileMap: gaps become HOLEs and the tail becomes a HOLE
// to the largest block-aligned end, merged with a trailing HOLE if the list ends with one.
// Returns: the FileMap.
// Errors: EINVAL unsorted, overlapping, unaligned, zero-length or badly typed mappings;
// ENOTSUP an INLINE or DELALLOC mapping (such files get no program).
Result<FileMap> BuildFileMap(uint64_t nodeid, uint32_t block_size, uint32_t dev,
                             std::span<const iomap::Mapping> mappings);

// The largest block-aligned end: the end of the final HOLE.
uint64_t MaxEnd(uint32_t block_size);

// Returns: the index of the interval containing pos (REQUIRES: pos < intervals.back().end()).
size_t FindInterval(const FileMap& map, uint64_t pos);

struct Answer {
  uint32_t ret = kFibFallback;
  IomapBeginOut out;  // meaningful only when ret == kFibHandled
  bool operator==(const Answer&) const = default;
};

// The reference: what the program for `map` with sequence number `seq` returns for `ctx`.
Answer ReferenceAnswer(const FileMap& map, uint64_t seq, const BeginCtx& ctx);

// The fuse_iomap_io a program writes into the read slot for interval `m`.
IomapIo ReadSlot(const FileMap& map, const iomap::Mapping& m);

std::string ToString(const Answer& a);

}  // namespace iomapfs::bpf
