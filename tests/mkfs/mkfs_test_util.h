// Helpers for the iomapfs-mkfs tests: running the built binary, writing a source tree with every
// kind of object ext4 stores, and comparing two trees field by field.
//
// Thread-safety: none (tests are single-threaded).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "tests/support/test_util.h"

namespace iomapfs::mkfs::testing {

using iomapfs::testing::CommandResult;

// One point of the option matrix the tests cover.
struct MatrixCase {
  std::string name;
  std::vector<std::string> args;             // options before IMAGE SIZE
  std::vector<std::string> features;         // must appear in dumpe2fs -h's feature list
  std::vector<std::string> absent_features;  // must not
  unsigned block_size = 0;                   // expected "Block size" (0: not checked)
  unsigned inode_size = 0;                   // expected "Inode size" (0: not checked)
  bool small_inodes() const { return inode_size == 128; }
};
inline void PrintTo(const MatrixCase& c, std::ostream* os) { *os << c.name; }

// Block sizes 1k/2k/4k, with and without journal, 64bit, metadata_csum, inline_data, small
// and large inodes, ext2/ext3 feature sets, meta_bg.
std::vector<MatrixCase> OptionMatrix();

// Runs the iomapfs-mkfs built with the tests, with `args`, collecting stdout and stderr.
CommandResult RunMkfs(const std::vector<std::string>& args);

struct TreeOptions {
  // Entries in big/ (0: none).
  int big_directory_entries = 0;
  // Objects only root can make: device nodes, other owners, trusted.* xattrs.
  bool privileged = false;
  // Largest xattr value: must fit an EA block of the image's block size.
  size_t large_xattr_bytes = 700;
};

// Writes the tree into the existing directory `root`: regular files of several sizes
// (seeded contents), sparse files (holes at the start, middle and end), an empty file, fast
// and slow symlinks, hard links (across directories), a fifo, a socket, user.* xattrs (small and
// large), a POSIX access and default ACL (kernel xattr format), nanosecond, pre-1970 and
// post-2038 timestamps, odd modes (setuid, sticky), and with `privileged` char/block devices
// (old and new dev_t encodings), uid/gid above 16 bits and trusted.* xattrs.
// Returns: "" on success, else what failed.
std::string MakeTree(const std::string& root, const TreeOptions& options);

// Compares the tree under `expected` (the source) with `actual` (a kernel mount of the image):
// names, types, modes, owners, sizes, nanosecond atime/mtime/ctime, link counts (directories:
// not for the roots), device numbers, symlink targets, xattrs (all namespaces the caller can
// read), file contents, and the data/hole layout (SEEK_DATA/SEEK_HOLE). lost+found in `actual`
// is ignored when `expected` has none. Returns: "" if equal, else the first difference.
// With `small_inodes` (128-byte inodes: no extra timestamp fields), expected times are whole
// seconds clamped to the signed 32-bit range, as ext4 stores them.
std::string CompareTrees(const std::string& expected, const std::string& actual,
                         bool small_inodes = false);

// sha256 of a file, as hex. Returns "" on error.
std::string Sha256(const std::string& path);

// `dumpe2fs -h` output (empty on failure).
std::string DumpHeader(const std::string& image);

// Mounts `image` read-only on a loop device at `mountpoint` (kernel ext4). Returns "" or the
// mount output on failure.
std::string MountImage(const std::string& image, const std::string& mountpoint);
void Unmount(const std::string& mountpoint);

}  // namespace iomapfs::mkfs::testing
