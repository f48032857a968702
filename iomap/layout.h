// Layout: windows of one file's logical-to-physical block map, read from the ext4 extent tree
// or from the ext2/ext3 indirect block map, validated against the filesystem's geometry.
//
// Internal to iomap/: the Engine caches Windows and turns them into byte Mappings.
// Thread-safety: every function REQUIRES the metadata lock (an ext2::Guard); Windows are values.
#pragma once

#include <ext2fs/ext2fs.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "base/result.h"
#include "ext2/ext2_fs.h"
#include "iomap/mapping.h"

namespace iomapfs::iomap {

// ext4 logical block numbers are 32 bits (ext4 disk format, "The Extent Tree": ee_block).
inline constexpr uint64_t kExtentLblkLimit = 1ull << 32;
// ext4 never builds a deeper tree (EXT4_MAX_EXTENT_DEPTH); a deeper root is corruption.
inline constexpr int kMaxExtentDepth = 5;

// `len` blocks of the file starting at logical block `lblk` live at physical block `pblk`.
// type is kMapped or kUnwritten.
struct Run {
  uint64_t lblk = 0;
  uint64_t len = 0;
  uint64_t pblk = 0;
  MappingType type = MappingType::kMapped;
  uint64_t end() const { return lblk + len; }
  bool operator==(const Run&) const = default;
};

// Everything known about logical blocks [start, end): the runs, sorted, non-overlapping, each
// inside [start, end) except that the first may start before `start`; gaps are holes.
struct Window {
  uint64_t start = 0;
  uint64_t end = 0;
  std::vector<Run> runs;
  bool Contains(uint64_t lblk) const { return lblk >= start && lblk < end; }
};

// Errors from walking on-disk structures. A short read means a pointer past the end of the
// device (Ext2Fs::Open checked that the device holds every block of the filesystem); EINVAL and
// EOVERFLOW come from the I/O manager's lseek for a pointer so large that its byte offset does
// not fit an off_t; the handle's navigation errors mean the tree is not shaped as its headers
// claim. All of these are corruption (EUCLEAN), not I/O errors.
int WalkErrno(errcode_t err);

// True if physical blocks [pblk, pblk + len) lie inside the filesystem's data area.
bool PhysicalRangeValid(ext2_filsys fs, uint64_t pblk, uint64_t len);

struct ExtentHandleFree {
  void operator()(ext2_extent_handle* h) const { ext2fs_extent_free(h); }
};
using ExtentHandle = std::unique_ptr<ext2_extent_handle, ExtentHandleFree>;

// Moves the handle from a leaf entry to the next leaf entry (the next sibling, else the first
// entry of the next non-empty leaf), with UP / NEXT_SIB / DOWN only. (NEXT_LEAF relies on
// per-level visit marks that ext2fs_extent_goto2 leaves unset, and then revisits leaves; see
// the layout tests.) REQUIRES: the handle is on a leaf entry.
// Returns: true and the extent in *e, or false at the end of the tree. Errors: EUCLEAN; EIO.
Result<bool> NextLeafExtent(ext2_extent_handle_t h, ext2fs_extent* e);

// Reads the extent tree of `ino` (whose inode, already read, is `inode`, with EXT4_EXTENTS_FL)
// around logical block `target` (< kExtentLblkLimit): the extent containing or preceding
// `target` and up to `max_extents` leaf extents after it, merging physically contiguous
// extents of one type.
// REQUIRES: g holds the metadata lock; max_extents >= 2.
// Returns: a Window containing `target`.
// Errors: EUCLEAN bad header, extent past the filesystem's blocks or beyond 2^32 logical
// blocks, zero-length extent, overlapping or out-of-order extents, too deep a tree, index
// pointing outside the filesystem; EIO device error; ENOMEM.
Result<Window> LoadExtentWindow(const ext2::Guard& g, ext2_ino_t ino, ext2_inode* inode,
                                uint64_t target, size_t max_extents);

// Highest logical block + 1 an indirect-mapped file can address with `block_size` blocks
// (12 direct + single, double and triple indirect), capped at kExtentLblkLimit.
uint64_t IndirectLblkLimit(uint32_t block_size);

// Reads the indirect block map of `ino` for logical blocks [target, target + count) with
// ext2fs_bmap2 (never allocating), merging physically contiguous blocks.
// REQUIRES: g holds the metadata lock; count > 0; target + count <= IndirectLblkLimit().
// Returns: a Window [target, target + count).
// Errors: EUCLEAN bad indirect block or block past the filesystem; EIO; ENOMEM.
Result<Window> LoadIndirectWindow(const ext2::Guard& g, ext2_ino_t ino, ext2_inode* inode,
                                  uint64_t target, uint64_t count);

}  // namespace iomapfs::iomap
