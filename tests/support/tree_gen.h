// Test tree generator: fills a directory with every kind of object an ext4 image can hold, so
// that a server can be compared against kernel ext4 on the same image (see tree_compare.h).
//
// Intended to run as root on a kernel ext4 mount of a freshly made image (ext2/ext3/ext4, any
// block size, with or without inline_data). What it makes, under `root`:
//   files/     regular files of many sizes (0 .. several MiB), seeded random content
//   sparse/    files with holes (pwrite at scattered offsets), a > 4 GiB sparse file with data
//              past 4 GiB and across the 4 GiB boundary, a file fragmented into thousands of
//              extents (an extent tree of depth >= 1; indirect blocks on ext2/ext3)
//   falloc/    fallocate(2)d unwritten ranges, FALLOC_FL_KEEP_SIZE past EOF, alternating
//              written/unwritten extents, punched holes, zeroed ranges (skipped where the
//              filesystem does not support fallocate, i.e. on non-extent files)
//   links/     hard links across directories
//   symlinks/  fast (< 60 bytes, in the inode) and slow (block or inline) symlinks
//   xattr/     small in-inode xattrs, large ones that need an EA block, identical sets (shared
//              EA block), user.* and trusted.*, xattrs on symlinks and device nodes
//   acl/       POSIX access and default ACLs (and files that inherit a default ACL)
//   special/   char and block devices (old and new dev_t encodings), fifos, sockets
//   names/     255-byte names and unusual bytes in names
//   bigdir/    a directory with many entries (50,000 by default; htree), every 7th file then
//              deleted; a directory grown to many blocks and then mostly emptied; renames
//   deep/      a path 40 directories deep
//   owners/, modes/  varied uid/gid (incl. > 16 bits) and permission bits (incl. suid/sgid/sticky)
//   times/     timestamps with nanoseconds, pre-1970, post-2038 and beyond ext4's range
//
// The content and layout are a function of the seed (reproducible); ctime and crtime are
// whatever the kernel sets.
//
// Thread-safety: none; one call at a time per directory.
#pragma once

#include <cstdint>
#include <string>

namespace iomapfs::testing {

struct TreeGenOptions {
  uint64_t seed = 1;
  // Entries in bigdir/ (0: no bigdir).
  int big_directory_entries = 50000;
  // Make sparse/over_4g (a > 4 GiB sparse file).
  bool over_4gib_file = true;
  // Depth of deep/.
  int deep_levels = 40;
};

// Generates the tree into the existing directory `root`.
// REQUIRES: root privileges (mknod, chown, trusted.* xattrs); `root` on kernel ext2/3/4.
// Returns: an empty string on success, else a description of the first failure.
std::string GenerateTree(const std::string& root, const TreeGenOptions& options);

}  // namespace iomapfs::testing
