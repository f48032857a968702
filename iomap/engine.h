// Engine: turns (inode, byte range, operation) into Mappings read from the ext4 extent tree,
// from indirect block maps (ext2/ext3 files) and from inline data. Later: allocation for writes
// (unwritten first, converted at ioend) through the same interface.
//
// Thread-safety: every method REQUIRES the caller to hold the metadata lock (an ext2::Guard),
// which also protects the engine's per-inode extent cache.
// Ownership: the Engine borrows the Ext2Fs, which must outlive it.
#pragma once

#include <cstdint>
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

  // Returns the mapping covering byte `pos` of `ino`, as long as the on-disk layout stays of one
  // kind, but not past the first block boundary at or after pos + len (len > 0). Past i_size the
  // answer is a HOLE (reads clip to i_size themselves). Inline-data files: one INLINE mapping
  // {0, inline size}; positions past it are a HOLE.
  // `opflags`: kOp* bits; only reads and REPORT are served today (writes: EOPNOTSUPP).
  // REQUIRES: g holds the metadata lock.
  // Errors: EUCLEAN corrupt extent tree / block map / inode; ENOENT unused inode; EIO.
  Result<Mapping> Map(const ext2::Guard& g, Ino ino, uint64_t pos, uint64_t len,
                      uint32_t opflags);

  // All mappings covering [pos, pos + len), in order, each produced by Map().
  Result<std::vector<Mapping>> MapRange(const ext2::Guard& g, Ino ino, uint64_t pos, uint64_t len,
                                        uint32_t opflags);

  // Copies the inline data of `ino` (an INLINE mapping's bytes) into `out` starting at file
  // offset `pos`. Returns: bytes copied. Errors: EUCLEAN, ENODATA (no inline data).
  Result<size_t> ReadInline(const ext2::Guard& g, Ino ino, uint64_t pos, std::span<std::byte> out);

  // Drops cached layout of `ino` (it changed, or the kernel forgot the inode).
  void Invalidate(const ext2::Guard& g, Ino ino);

 private:
  struct Cache;
  ext2::Ext2Fs& fs_;
  std::unique_ptr<Cache> cache_;
};

}  // namespace iomapfs::iomap
