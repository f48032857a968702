// SourceTree: an in-memory snapshot of the directory given to `iomapfs-mkfs -d`: every entry's
// metadata (lstat + statx birth time), xattrs, symlink target and, for regular files, the byte
// ranges that hold data (SEEK_DATA/SEEK_HOLE). Directory entries are sorted by name (bytewise),
// so everything built from the tree is in a deterministic order. File contents are not read
// here; the builder opens each file again when it copies it.
//
// Thread-safety: built once by Scan(), then read-only. Ownership: the tree owns its nodes;
// nodes refer to each other by index into SourceTree::nodes.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "base/result.h"

namespace iomapfs::mkfs {

// A byte range [offset, offset + length) of a regular file that holds data.
struct DataRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct SourceNode {
  std::string name;  // the entry name (empty for the root)
  std::string path;  // the path in the source tree
  struct stat st {};
  // Birth time, if the source filesystem reports one (statx STATX_BTIME).
  bool has_btime = false;
  int64_t btime_sec = 0;
  uint32_t btime_nsec = 0;
  // Extended attributes, sorted by name; system.posix_acl_* values in the kernel's format.
  std::vector<std::pair<std::string, std::string>> xattrs;
  std::string symlink_target;
  std::vector<DataRange> data;   // regular files: data ranges in offset order
  std::vector<size_t> children;  // directories: indices of the entries, sorted by name
  // Hard links: the index of the first node (in scan order) with the same (st_dev, st_ino);
  // equal to this node's own index for the first one.
  size_t link_target = 0;
  // Number of names of this inode inside the tree (set on the link target).
  uint32_t tree_links = 1;
};

struct SourceTree {
  std::vector<SourceNode> nodes;  // nodes[0] is the root directory
  uint64_t regular_files = 0;     // distinct regular-file inodes
  uint64_t data_bytes = 0;        // sum of data range lengths of distinct regular files
  uint64_t distinct_inodes = 0;   // inodes the image needs for the tree (root excluded)
};

// Opens a source file or directory read-only without updating its atime (O_NOATIME, when the
// caller owns it or has CAP_FOWNER), so that building an image does not change the source.
// Returns: the fd, or -1 with errno set (as open(2)).
int OpenSource(const std::string& path, int extra_flags);

// Walks `root` (which must be a directory) without following symlinks.
// Returns: the tree. Errors: the errno of the failing call, with *why naming the path and the
// call (e.g. "cannot open a/b: Permission denied"): ENOTDIR root is not a directory; EACCES,
// ENOENT, EIO, ... from opendir, lstat, open, lseek, listxattr, getxattr, readlink.
Result<SourceTree> ScanSourceTree(const std::string& root, std::string* why);

}  // namespace iomapfs::mkfs
