// Helpers for the iomap tests: deterministic file contents, opening images, reading a file back
// through the engine (MapRange + device reads), and the invariant checks every test applies to
// every mapping it sees.
//
// Thread-safety: none (single-threaded tests). Ownership: OpenedFs owns the Ext2Fs and Engine.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ext2/ext2_fs.h"
#include "iomap/engine.h"
#include "iomap/mapping.h"

namespace iomapfs::iomap::testing {

// Bytes that depend on (seed, offset), so misplaced data is detected.
std::string PatternBytes(uint64_t seed, uint64_t offset, size_t len);

// One piece of a generated file: `len` bytes of PatternBytes(seed, offset) at `offset`.
struct Piece {
  uint64_t offset;
  uint64_t len;
};
// Creates `path` as a sparse file of `size` bytes holding `pieces` (everything else a hole).
// Returns: false on an I/O error.
bool WriteSparseFile(const std::string& path, uint64_t size, const std::vector<Piece>& pieces,
                     uint64_t seed);
// The expected content of a file written by WriteSparseFile, for [offset, offset + len).
std::string ExpectedBytes(uint64_t size, const std::vector<Piece>& pieces, uint64_t seed,
                          uint64_t offset, uint64_t len);

struct OpenedFs {
  std::unique_ptr<ext2::Ext2Fs> fs;
  std::unique_ptr<Engine> engine;
  uint64_t device_bytes = 0;  // blocks_count * block_size
};
// Opens `image` read-only (fails the calling test on error).
OpenedFs OpenImage(const std::string& image);

// Resolves an absolute path in the image. Returns 0 if not found.
uint64_t LookupIno(ext2::Ext2Fs& fs, const std::string& path);
uint64_t FileSize(ext2::Ext2Fs& fs, uint64_t ino);

// Map() with CheckMapping applied (adds a gtest failure, with context, if it fails).
Result<Mapping> CheckedMap(OpenedFs& o, uint64_t ino, uint64_t pos, uint64_t len,
                           uint32_t opflags = 0);
// MapRange() with CheckMapping on every mapping, plus: mappings are in order, the first covers
// pos, each starts where the previous one ended (block-rounded after INLINE), the last reaches
// pos + len.
Result<std::vector<Mapping>> CheckedMapRange(OpenedFs& o, uint64_t ino, uint64_t pos, uint64_t len,
                                             uint32_t opflags = 0);

// Reads [pos, pos + len) of the file (clipped to i_size) through the engine: MapRange, then
// BlockDevice::ReadAt for MAPPED, zeros for HOLE/UNWRITTEN, ReadInline for INLINE. The lock is
// dropped for device reads, as the server does.
Result<std::string> ReadThroughEngine(OpenedFs& o, uint64_t ino, uint64_t pos, uint64_t len);

// Probes Map() at block boundaries and pseudo-random positions of a file of `size` bytes and
// checks each answer against the MapRange() view of the same byte.
void ProbeConsistency(OpenedFs& o, uint64_t ino, uint64_t size, uint64_t seed);

// Physical ranges of written (MAPPED) and UNWRITTEN data inside [0, size rounded up to a
// block): logically and physically contiguous ranges of one kind merged.
struct PhysRange {
  uint64_t offset;
  uint64_t length;
  uint64_t addr;
  bool unwritten;
  bool operator==(const PhysRange&) const = default;
};
std::vector<PhysRange> MergePhys(std::vector<PhysRange> ranges);
Result<std::vector<PhysRange>> EnginePhys(OpenedFs& o, uint64_t ino, uint64_t size);
std::string ToString(const std::vector<PhysRange>& ranges);

}  // namespace iomapfs::iomap::testing
