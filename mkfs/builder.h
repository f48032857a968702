// Builder: creates an ext4 filesystem with libext2fs and fills it from a SourceTree.
//
// What it writes, in order: superblock template -> ext2fs_initialize -> group tables ->
// reserved inodes, bad-block inode, resize inode, journal, lost+found -> the tree (each
// directory's children before the directory's own blocks) -> root directory -> close (the
// primary superblock goes out last, in ext2fs_flush). File data does not go through
// libext2fs file I/O: each file's blocks are allocated in one run where free space allows
// (ext2fs_new_range), its extents are inserted whole, and the data is copied with one pread and
// one pwrite per chunk of up to 8 MiB through the caller's fd. Directory blocks are laid out
// here from the sorted entries and written the same way, so that a directory of N entries
// costs O(N), not the O(N^2) of ext2fs_link.
//
// Determinism: inode numbers, block placement and directory order follow the sorted tree; every
// timestamp comes from the source, from SOURCE_DATE_EPOCH or (only when neither applies) from
// the clock; i_generation is 0; UUID and hash seed come from the options when given.
//
// Thread-safety: single-threaded; libext2fs handles are created and freed inside BuildImage.
// Ownership: BuildImage does not take ownership of target.data_fd.
#pragma once

#include <cstdint>
#include <string>

#include "base/result.h"
#include "mkfs/options.h"
#include "mkfs/progress.h"
#include "mkfs/source_tree.h"

namespace iomapfs::mkfs {

// Where the filesystem goes.
struct BuildTarget {
  std::string path;  // the name libext2fs opens (a temporary file or the device)
  int data_fd = -1;  // the caller's read-write fd on the same file or device
  uint64_t size_bytes = 0;
  bool zeroed = false;  // every byte reads as zero (a fresh sparse file): skip zeroing
  bool is_device = false;
};

// The resolved geometry for one size.
struct Plan {
  uint32_t block_size = 4096;
  uint64_t blocks = 0;
  uint64_t inodes = 0;  // requested; libext2fs rounds up to fill inode tables
  FeatureSet features;
};

// What the content of a tree needs, in blocks of a given size (an upper estimate).
struct ContentNeeds {
  uint64_t blocks = 0;
  uint64_t inodes = 0;
};

struct BuildSummary {
  uint32_t block_size = 0;
  uint64_t blocks = 0;
  uint64_t inodes = 0;
  uint64_t free_blocks = 0;
  uint64_t free_inodes = 0;
  std::string uuid;
  uint64_t files_copied = 0;
  uint64_t bytes_copied = 0;
};

// Estimates what `tree` needs in a filesystem with `block_size` and the options' inode size and
// features: data blocks, extent and indirect blocks, directory blocks, symlink and xattr blocks.
ContentNeeds EstimateContent(const SourceTree& tree, uint32_t block_size,
                             const MkfsOptions& options, const FeatureSet& features);

// Resolves block size, block count and inode count for a filesystem of `size_bytes`, as mke2fs
// would (size types from /etc/mke2fs.conf), raising the inode count to `min_inodes` when
// neither -N nor -i was given.
// Errors: EINVAL (*why) the size is too small for an ext4 filesystem or needs 64bit.
Result<Plan> MakePlan(const MkfsOptions& options, const FeatureSet& features, uint64_t size_bytes,
                      uint64_t min_inodes, std::string* why);

// The plan for the smallest size (a multiple of 1 MiB) whose free space after all metadata holds
// `tree` plus options.auto_margin_percent, with as many more inodes than the tree needs.
// Errors: EFBIG (*why) no size up to the ext4 limit fits; EINVAL -N too small; others from
// libext2fs (as errno).
Result<Plan> ComputeAutoSize(const MkfsOptions& options, const FeatureSet& features,
                             const SourceTree& tree, std::string* why);

// Creates the filesystem described by `plan` on `target` and copies `tree` (may be null).
// Returns: a summary. Errors (with *why naming the problem): ENOSPC the content does not fit
// (blocks or inodes); EIO/ENOENT/EACCES/... from reading the source or writing the target;
// EINVAL bad parameters; EUCLEAN/others converted from libext2fs. On error nothing is flushed:
// the primary superblock is never written.
Result<BuildSummary> BuildImage(const MkfsOptions& options, const Plan& plan,
                                const SourceTree* tree, const BuildTarget& target,
                                Progress* progress, std::string* why);

}  // namespace iomapfs::mkfs
