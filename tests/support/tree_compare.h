// Tree comparator: walks two mounted directory trees in parallel and reports every difference
// an application could observe, so a test can say "the server shows exactly what kernel ext4
// shows" and print all the ways it does not.
//
// Per path it compares: the lstat fields ext4 exposes (mode, nlink, uid, gid, rdev, size,
// st_blocks, atime/mtime/ctime with nanoseconds, st_ino; not st_dev or st_blksize), statx
// btime when both sides report STATX_BTIME, the sorted directory listing with each entry's d_ino
// and d_type, symlink targets, every xattr (llistxattr names and lgetxattr values, including
// system.posix_acl_*), and for regular files the full SEEK_DATA/SEEK_HOLE sequence and the
// content. Files up to `full_compare_limit` bytes are compared byte for byte; larger ones (the
// sparse > 4 GiB file) over tree `a`'s data regions, with samples of `b` inside `a`'s holes
// (which must read as zeros).
//
// Tree `a` is the reference (kernel ext4); `b` is the tree under test. Nothing is written; run it
// on read-only mounts so atime does not move. Run it on a freshly mounted `a`: kernel ext4's
// SEEK_DATA counts an unwritten extent as data once pages of it are in the page cache, so each
// file's SEEK sequence is taken before its content is read, and a second pass over the same
// kernel mount can see different (cache-dependent) data regions.
//
// Thread-safety: none; one comparison at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace iomapfs::testing {

struct TreeCompareOptions {
  // Differences recorded in full; the rest are only counted.
  size_t max_differences = 200;
  bool compare_atime = true;
  bool compare_xattrs = true;
  uint64_t full_compare_limit = uint64_t{16} << 20;
};

struct TreeComparison {
  std::vector<std::string> differences;           // at most max_differences, in walk order
  uint64_t difference_count = 0;                  // all of them
  uint64_t entries = 0;                           // paths compared (the root included)
  uint64_t bytes_compared = 0;                    // file bytes read from each side
  uint64_t btime_compared = 0;                    // paths where both sides reported STATX_BTIME
  uint64_t xattrs_compared = 0;                   // xattr values compared
  uint64_t data_regions = 0;                      // SEEK_DATA/SEEK_HOLE data regions seen in `a`
  std::map<std::string, uint64_t> count_by_kind;  // "mtime" -> 12, "content differs" -> 1
  bool ok() const { return difference_count == 0; }
  // "N entries, N bytes, ..." for a log line.
  std::string Stats() const;
  // A summary line (count per kind), then the differences one per line, then a line with the
  // total if some were left out.
  std::string Format() const;
};

// Compares the trees rooted at directories `a` and `b`.
// Returns: the comparison; a failure to read either side (EIO, ...) is a difference.
TreeComparison CompareTrees(const std::string& a, const std::string& b,
                            const TreeCompareOptions& options = {});

}  // namespace iomapfs::testing
