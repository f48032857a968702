// Helpers for the ext4 operation tests: feature sets, a generated source tree, images made from
// it with mke2fs -d (and indexed with e2fsck -D), and path resolution through Filesystem.
//
// Thread-safety: none; tests are single-threaded unless they say otherwise.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"
#include "fsserver/ext4/filesystem.h"

namespace iomapfs::ext4::testing {

struct FeatureSet {
  std::string name;  // a gtest-safe identifier
  std::string fs_type;
  std::vector<std::string> mkfs_args;
};

// default ext4, -b 1024, ^64bit,^metadata_csum, inline_data, ext2, ext3.
const std::vector<FeatureSet>& AllFeatureSets();

// What BuildSourceTree made, for tests to check against.
struct SourceTree {
  std::string root;
  std::string big_dir = "big";  // relative path of the directory with many entries
  int big_entries = 0;
  std::string sparse_file = "files/sparse";
  std::string long_name;  // a 255-byte name under names/
  bool has_devices = false;
};

// Builds the source tree under `root` (an existing empty directory): regular files (empty,
// small, multi-block, sparse), nested dirs, fast and slow symlinks, hard links, a fifo, device
// nodes (root only), xattrs (small, large, on a dir), a POSIX ACL, 255-byte names, and a
// directory with `big_entries` entries. Returns an empty string on success, else why not.
std::string BuildSourceTree(const std::string& root, int big_entries, SourceTree* out);

// Makes `image` from `source` with `fs` and indexes directories (e2fsck -fyD), so that large
// directories are htree-indexed where the feature set has dir_index. Returns "" or why not.
std::string MakeIndexedImage(const std::string& image, const std::string& source,
                             const FeatureSet& fs, uint64_t size_bytes = 96ull << 20);

// Opens `image` read-only. Returns nullptr on failure (and *why).
std::unique_ptr<Filesystem> OpenFilesystem(const std::string& image, std::string* why,
                                           const Options& options = {});

// Resolves a relative path ("" = root) by Lookup from the root. Adds Lookup references.
Result<Attr> Resolve(Filesystem& fs, const std::string& relpath);

// The full listing of directory `ino` through OpenDir/ReadDir (served `batch` entries per call).
Result<std::vector<DirEntry>> ListAll(Filesystem& fs, Ino ino, size_t batch = 1000);

// Reads `size` bytes from offset 0 with reads of `chunk` bytes.
Result<std::string> ReadAll(Filesystem& fs, Ino ino, uint64_t size, size_t chunk = 1 << 20);

// Reads a whole file of the host filesystem. Returns false on error.
bool ReadHostFile(const std::string& path, std::string* out);

// Runs debugfs -R `request` on `image` and returns its output.
std::string Debugfs(const std::string& image, const std::string& request);

}  // namespace iomapfs::ext4::testing
