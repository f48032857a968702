// Engine: turns (inode, byte range, operation) into Mappings read from the ext4 extent tree,
// from indirect block maps (ext2/ext3 files) and from inline data (the read side), and changes
// the file layout for writes, truncate and fallocate (the write side, modelled on fs/iomap and
// ext4: allocate UNWRITTEN extents before the data I/O, convert them when it has completed).
//
// The write protocol for one write(2) of [pos, pos + len) (classic mode; iomap mode maps
// BEGIN/IOEND onto the same two calls, spec §4.3-§6, §14.3-§14.5):
//   1. under the lock: maps = PrepareWrite(tx, ino, pos, len); tx.Commit(); unlock.
//   2. outside the lock: zero every ZeroSpan of WriteZeroSpans(maps, pos, len, bs), write the
//      data at the mapped device addresses (INLINE: WriteInline under the lock instead).
//   3. under the lock: CompleteWrite(tx, ino, pos, len, pos + len); tx.Commit(); unlock.
// If the data I/O fails, skip step 3: the prepared range stays UNWRITTEN (reads zeros) on extent
// files; on indirect (ext2/ext3) files the new blocks are MAPPED with undefined contents and the
// caller must Punch them (or zero them) before reporting the error.
// The caller serializes operations on one inode (the layers above hold a per-inode lock across
// the three steps); the engine only serializes through the metadata lock.
//
// Invariants the write side keeps (and the tests check with e2fsck -fn):
//   - i_blocks counts every data and tree block in 512-byte units (huge_file aware), as ext4;
//   - bytes past i_size inside the last block read as zeros on the device (Truncate returns the
//     span to zero; WriteZeroSpans covers new and unwritten blocks);
//   - every layout change invalidates the inode's cache before the lock is released.
//
// Liveness: the engine refuses only unused inodes (i_mode 0, ENOENT). Whether an unlinked inode
// is still in use (open in the kernel, on the orphan list with the next orphan in i_dtime) is the
// caller's decision, made before it calls in; the engine keeps i_dtime as it found it.
//
// Thread-safety: every method REQUIRES the caller to hold the metadata lock (an ext2::Guard, or
// the Guard of an ext2::Transaction), which also protects the engine's per-inode extent cache.
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
#include "ext2/inode_buf.h"
#include "ext2/transaction.h"
#include "iomap/mapping.h"

namespace iomapfs::iomap {

// A byte range of the device the caller must fill with zeros, outside the metadata lock and
// before the operation is reported complete.
struct ZeroSpan {
  uint64_t addr = 0;    // filesystem byte address
  uint64_t length = 0;  // bytes; > 0
  bool operator==(const ZeroSpan&) const = default;
};

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

  // ---- Write side. Every call REQUIRES tx's Guard (the metadata lock) and a read-write
  // filesystem, takes byte ranges, records what it changed in `tx` and invalidates the inode's
  // cache. Common errors: EROFS read-only filesystem; ENOENT unused inode; EISDIR a directory;
  // EINVAL len == 0; EFBIG the range ends past MaxFileSize(); EUCLEAN corrupt extent tree /
  // block map; EIO; ENOMEM. A failed call leaves the filesystem consistent for e2fsck: what it
  // leaves behind is documented per call.

  // Makes [pos, pos + len) writable: every block of [floor(pos), ceil(pos + len)) that is a
  // hole (including blocks past EOF) gets storage. Extent files: new blocks are allocated as
  // UNWRITTEN extents, each kept as its own extent until CompleteWrite converts it, with a goal
  // that keeps the file contiguous (the physical end of the extent before the hole, else the
  // start of the next extent minus the distance, else the inode's group); an existing UNWRITTEN
  // extent straddling the range's edge is split there first, so that CompleteWrite of the same
  // range never needs a new tree block. Indirect files: real blocks (MAPPED) are allocated and
  // linked (ext2fs_bmap2 BMAP_SET|BMAP_ALLOC: one call per block, the format's cost).
  // Inline-data files: if pos + len fits the inline area, nothing is allocated and the result is
  // one INLINE mapping {0, max(i_size, pos + len)} (write the bytes with WriteInline);
  // otherwise the file is first converted to extents (or blocks), as ext4 does.
  // Returns: the mappings covering [floor(pos), ceil(pos + len)) exactly, in order: MAPPED for
  // written blocks (overwrite in place), UNWRITTEN for allocated-unwritten ones; kFlagNew on
  // the blocks allocated by this call. The caller must zero the parts of NEW or UNWRITTEN
  // blocks it does not write (WriteZeroSpans), for indirect files before any metadata referring
  // to them is made durable. i_size is not changed (CompleteWrite does it).
  // Errors: ENOSPC not enough free blocks (checked up front; an allocation failing later is
  // rolled back: no block of this call stays allocated); EFBIG.
  Result<std::vector<Mapping>> PrepareWrite(ext2::Transaction& tx, Ino ino, uint64_t pos,
                                            uint64_t len);

  // Device ranges a writer of [pos, pos + len) through `maps` (from PrepareWrite) must zero:
  // the parts of the first and last block outside [pos, pos + len) when that block is UNWRITTEN
  // or NEW (its old contents must not appear once it is written).
  static std::vector<ZeroSpan> WriteZeroSpans(const std::vector<Mapping>& maps, uint64_t pos,
                                              uint64_t len, uint32_t block_size);

  // Writes `data` at `pos` of an inline-data file and sets i_size to max(i_size, pos + size).
  // REQUIRES: PrepareWrite(tx, ino, pos, data.size()) returned an INLINE mapping in this lock
  // hold. Returns: bytes written (all). Errors: EINVAL not an inline-data file; ENOSPC the data
  // no longer fits the inline area.
  Result<size_t> WriteInline(ext2::Transaction& tx, Ino ino, uint64_t pos,
                             std::span<const std::byte> data);

  // After the data of [pos, pos + len) is on the device: converts the UNWRITTEN extents in
  // [floor(pos), ceil(pos + len)) to written, splitting at the range's edges and merging with
  // written neighbours, then raises i_size to new_size if that is larger (never lowers it).
  // Converting written blocks is a no-op; len == 0 only updates the size. Timestamps
  // (mtime/ctime) are the caller's: ext4 sets them when the write starts, not at completion.
  // A split that needs a tree block on a full filesystem falls back to writing zeros to the
  // unconverted rest of that extent and converting all of it (as ext4's zeroout), with device
  // I/O under the lock: PrepareWrite's pre-split makes this unreachable for prepared ranges.
  Result<void> CompleteWrite(ext2::Transaction& tx, Ino ino, uint64_t pos, uint64_t len,
                             uint64_t new_size);

  // Sets i_size. Shrinking frees every block at or past ceil(new_size) (preallocated blocks past
  // EOF included); growing allocates nothing. Inline-data files stay inline while new_size fits
  // the inline area, else are converted first.
  // Returns: the device range to zero: the tail of the new last block past new_size when that
  // block is written (MAPPED); empty otherwise.
  // Errors: EFBIG new_size > MaxFileSize(); ENOSPC (a shrink that must split an extent in the
  // middle of a full filesystem: nothing changed).
  Result<std::vector<ZeroSpan>> Truncate(ext2::Transaction& tx, Ino ino, uint64_t new_size);

  // FALLOC_FL_PUNCH_HOLE|KEEP_SIZE: frees the whole blocks inside [pos, pos + len); i_size is
  // unchanged. Inline-data files: the bytes are zeroed in place.
  // Returns: the device ranges of the partial first/last blocks inside the range that are
  // written (MAPPED): the caller zeroes them.
  // Errors: ENOSPC (splitting an extent in two on a full filesystem: what was punched before
  // stays punched, the rest is unchanged).
  Result<std::vector<ZeroSpan>> Punch(ext2::Transaction& tx, Ino ino, uint64_t pos, uint64_t len);

  // fallocate(mode 0 or KEEP_SIZE): allocates UNWRITTEN extents for the holes of
  // [floor(pos), ceil(pos + len)) (merged with unwritten neighbours), then, without keep_size,
  // raises i_size to pos + len. Inline-data files are converted first.
  // Errors: EOPNOTSUPP an indirect-mapped file (as ext4); ENOSPC (checked up front; a later
  // failure keeps what was allocated, UNWRITTEN, reading as zeros).
  Result<void> Allocate(ext2::Transaction& tx, Ino ino, uint64_t pos, uint64_t len, bool keep_size);

  // FALLOC_FL_ZERO_RANGE (as ext4): the holes of [floor(pos), ceil(pos + len)) are allocated
  // UNWRITTEN, the written blocks wholly inside [pos, pos + len) become UNWRITTEN, and without
  // keep_size i_size is raised to pos + len. Inline-data files whose new size fits stay inline
  // (bytes zeroed in place), else are converted first.
  // Returns: device ranges the caller must zero: the parts of written partial edge blocks
  // inside the range, and any written blocks that could not be converted for lack of a tree
  // block.
  // Errors: EOPNOTSUPP an indirect-mapped file (as ext4); ENOSPC.
  Result<std::vector<ZeroSpan>> ZeroRange(ext2::Transaction& tx, Ino ino, uint64_t pos,
                                          uint64_t len, bool keep_size);

  // Bytes the inline-data file `ino` can hold without conversion to blocks: i_block plus the
  // room its system.data xattr can grow to inside the inode.
  // REQUIRES: g holds the metadata lock. Errors: EINVAL not an inline-data file; ENOENT; EIO.
  Result<uint64_t> InlineCapacity(const ext2::Guard& g, Ino ino);

  // The largest file size of `ino`'s format, as kernel ext4 computes s_maxbytes: extent files
  // (2^32 - 1) blocks, indirect files what the block map addresses; without huge_file at most
  // 2^32 - 1 sectors. REQUIRES: g holds the metadata lock. Errors: ENOENT.
  Result<uint64_t> MaxFileSize(const ext2::Guard& g, Ino ino);

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
  // The prologue of every layout change: `ino` read for writing (ENOENT unused, EISDIR, EINVAL
  // fast symlink, EROFS), the range [pos, pos + len) (EINVAL empty) or the new size (EFBIG past
  // MaxFileSize()) checked, and the cached layout of `ino` dropped before anything changes.
  // REQUIRES: g holds the metadata lock.
  Result<ext2::InodeBuf> ReadForChange(const ext2::Guard& g, Ino ino, uint64_t pos, uint64_t len);
  Result<ext2::InodeBuf> ReadForResize(const ext2::Guard& g, Ino ino, uint64_t new_size);

  struct Cache;
  ext2::Ext2Fs& fs_;
  std::unique_ptr<Cache> cache_;  // guarded by the metadata lock
};

}  // namespace iomapfs::iomap
