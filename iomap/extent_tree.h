// ExtentTree: edits one inode's ext4 extent tree in whole extents, on top of libext2fs's extent
// handle (ext4 disk format, "The Extent Tree").
//
// Every operation re-navigates from the root by logical block (ext2fs_extent_goto) and walks
// forward with NextLeafExtent(), never with EXT2_EXTENT_NEXT_LEAF, whose visit marks are not set
// by goto and which then revisits leaves (see layout.h). Operations that could need a new tree
// block (an insert into a full leaf) check first that the filesystem can supply one, so that an
// ENOSPC never leaves an extent half-rewritten.
//
// Block accounting: the handle writes the inode (root changes, i_blocks of tree blocks it
// allocates or frees) through the InodeBuf it was opened with; data blocks are claimed and
// released by the caller, who also writes the inode at the end.
//
// Internal to iomap/. Thread-safety: REQUIRES the metadata lock for its whole lifetime.
// Ownership: borrows the Guard and the InodeBuf, which must outlive it.
#pragma once

#include <ext2fs/ext2fs.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "base/result.h"
#include "ext2/ext2_fs.h"
#include "ext2/inode_buf.h"
#include "iomap/layout.h"

namespace iomapfs::iomap {

// Longest initialized / unwritten leaf extent (EXT_INIT_MAX_LEN, EXT_UNINIT_MAX_LEN).
inline constexpr uint64_t kMaxInitLen = 32768;
inline constexpr uint64_t kMaxUninitLen = 32767;

// One leaf extent: logical blocks [lblk, lblk + len) at physical [pblk, pblk + len).
struct Extent {
  uint64_t lblk = 0;
  uint64_t len = 0;
  uint64_t pblk = 0;
  bool uninit = false;
  uint64_t end() const { return lblk + len; }
  bool operator==(const Extent&) const = default;
};

// True if `b` directly follows `a` logically and physically, with the same state, and the two
// fit in one extent.
bool Mergeable(const Extent& a, const Extent& b);

class ExtentTree {
 public:
  // Opens the tree of `ino`. REQUIRES: inode has EXT4_EXTENTS_FL.
  // Errors: EUCLEAN bad root header or too deep a tree; ENOMEM.
  static Result<ExtentTree> Open(const ext2::Guard& g, ext2_ino_t ino, ext2::InodeBuf* inode);

  // Leaf extents overlapping logical blocks [a, b), in order, validated (non-empty, inside the
  // filesystem, not overlapping). Errors: EUCLEAN; EIO.
  Result<std::vector<Extent>> List(uint64_t a, uint64_t b);

  // The last extent that ends at or before `lblk` (the left neighbour of a hole at lblk), if
  // any is found in the leaf that covers lblk. Errors: EUCLEAN; EIO.
  Result<std::optional<Extent>> Before(uint64_t lblk);

  // Inserts `e` into a hole (it must overlap no extent). With `merge`, then merges it with a
  // left and right neighbour it can join (Mergeable).
  // Errors: ENOSPC a tree block was needed and none is free (the tree is unchanged); EUCLEAN;
  // EIO.
  Result<void> Insert(const Extent& e, bool merge);

  // Replaces extent `old` (as returned by List) with `pieces`: extents inside old's logical
  // range, in order, each mapping the same physical blocks old mapped there (the caller frees
  // the blocks of any part left out). Empty `pieces` deletes `old`.
  // Errors: ENOSPC more pieces than the leaf has room for and no block free for a split (the
  // tree is unchanged); EUCLEAN `old` is not in the tree; EIO.
  Result<void> Reshape(const Extent& old, const std::vector<Extent>& pieces);

  // Merges the extent containing `lblk` with its left and then right neighbour where Mergeable.
  // No-op if no extent contains lblk. Errors: EUCLEAN; EIO.
  Result<void> MergeAround(uint64_t lblk);

  // True if a Reshape of the extent containing `lblk` into 1 + `extra` pieces cannot fail for
  // lack of space (the leaf has room, or enough blocks are free for splits up to the root).
  Result<bool> CanGrow(uint64_t lblk, int extra);

  int depth();

 private:
  ExtentTree(const ext2::Guard& g, ext2_ino_t ino, ext2::InodeBuf* inode, ExtentHandle h)
      : g_(&g), ino_(ino), inode_(inode), h_(std::move(h)) {}
  // Positions the handle on the extent containing lblk. Returns it, or nullopt (then the handle
  // is on the preceding extent of the leaf, or its first one, or nowhere for an empty tree).
  Result<std::optional<Extent>> GotoContaining(uint64_t lblk);
  // Deletes the extent the handle is on and fixes the parents' index starts.
  Result<void> DeleteCurrent();
  Result<void> ReplaceCurrent(const Extent& e);
  Result<void> InsertAt(const Extent& e, bool after);

  const ext2::Guard* g_;
  ext2_ino_t ino_;
  ext2::InodeBuf* inode_;
  ExtentHandle h_;
};

}  // namespace iomapfs::iomap
