// Engine: turns (inode, byte range, operation) into Mappings read from the ext4 extent tree,
// from indirect block maps (ext2/ext3 files) and from inline data. Later: allocation for writes
// (unwritten first, converted at ioend) through the same interface.
//
// Thread-safety: every method REQUIRES the caller to hold the metadata lock (an ext2::Guard),
// which also protects the engine's per-inode extent cache.
// Ownership: the Engine borrows the Ext2Fs, which must outlive it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/result.h"
#include "base/strong_id.h"
#include "ext2/ext2_fs.h"
#include "iomap/mapping.h"

namespace iomapfs::iomap {

class Engine {
 public:
  explicit Engine(ext2::Ext2Fs& fs);
  ~Engine();

  // Returns the mapping covering byte `pos` of `ino`: it starts at the block containing pos and
  // runs as long as the on-disk layout stays of one kind (physically contiguous MAPPED, or
  // UNWRITTEN, or HOLE up to the next extent), but not past the first block boundary at or after
  // pos + len (len > 0, saturating at 2^64). Blocks at or past i_size (rounded up to a block) are
  // a HOLE, extents allocated there (fallocate KEEP_SIZE) included; reads clip to i_size
  // themselves. Inline-data files: one INLINE mapping {0, i_size} for pos < i_size; positions
  // past it are a HOLE starting at the block containing pos (which may overlap the INLINE
  // mapping's block: both lie past EOF there). Every result passes CheckMapping(m, pos, ...).
  // `opflags`: kOp* bits; reads and REPORT are served (WRITE/ZERO/UNSHARE/WRITEBACK: EOPNOTSUPP).
  // REQUIRES: g holds the metadata lock.
  // Errors: EUCLEAN corrupt extent tree / block map / inode (the engine never aborts on disk
  // data); ENOENT unused or out-of-range inode; EINVAL len == 0 or a fast symlink; EFBIG pos in
  // the last partial block below 2^64; EOPNOTSUPP write ops; EIO; ENOMEM.
  Result<Mapping> Map(const ext2::Guard& g, Ino ino, uint64_t pos, uint64_t len, uint32_t opflags);

  // All mappings covering [pos, pos + len), in order and without gaps, each produced by Map()
  // at the end of the previous one. For an inline-data file the continuation after the INLINE
  // mapping starts at the next block boundary (the rest of the inline block is past EOF).
  // REQUIRES: g holds the metadata lock; len > 0. Errors: as Map().
  Result<std::vector<Mapping>> MapRange(const ext2::Guard& g, Ino ino, uint64_t pos, uint64_t len,
                                        uint32_t opflags);

  // Copies the inline data of `ino` (an INLINE mapping's bytes) into `out` starting at file
  // offset `pos`, never past i_size. Returns: bytes copied (0 at or past i_size).
  // REQUIRES: g holds the metadata lock.
  // Errors: EUCLEAN (i_size larger than the inline area, bad inline xattr), ENODATA (no inline
  // data), ENOENT unused inode, EIO, ENOMEM.
  Result<size_t> ReadInline(const ext2::Guard& g, Ino ino, uint64_t pos, std::span<std::byte> out);

  // Drops cached layout of `ino` (it changed, or the kernel forgot the inode). Every change to
  // an inode's extent tree or block map must be followed by this before the lock is released.
  void Invalidate(const ext2::Guard& g, Ino ino);

  // Drops every cached layout (e.g. after an fsck-style repair or a remount).
  void InvalidateAll(const ext2::Guard& g);

  // Counters for tests and statistics.
  struct Stats {
    uint64_t cache_hits = 0;      // Map() answered from a cached window
    uint64_t windows_loaded = 0;  // extent-tree / block-map walks
    size_t cached_inodes = 0;
  };
  Stats stats(const ext2::Guard& g) const;

  // Bounds of the cache and of one walk.
  static constexpr size_t kCacheInodes = 1024;
  static constexpr size_t kCacheRuns = 1 << 18;
  static constexpr size_t kWindowExtents = 2048;      // leaf extents read per extent-tree walk
  static constexpr uint64_t kIndirectMinBlocks = 64;  // blocks bmap'ed per indirect walk
  static constexpr uint64_t kIndirectMaxBlocks = 2048;

 private:
  struct Cache;
  ext2::Ext2Fs& fs_;
  std::unique_ptr<Cache> cache_;  // guarded by the metadata lock
};

}  // namespace iomapfs::iomap
