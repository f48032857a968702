// Differential tester, part 2: running ops on two trees in lockstep and comparing them.
//
// `Side` executes an `Op` on one tree (a root directory) and keeps that tree's fd table (the
// same slots on both sides). `RunLockstep` drives a `Generator` over a reference tree (kernel
// ext4) and a tree under test: every op runs on both, and the results (return value or -errno,
// plus the data the op observed: bytes read, link target, xattr value, listing, the stat fields
// that must agree) must be equal. Every `check_every` ops and at the end the whole trees are
// compared (`CompareTrees`). The first mismatch stops the run with a report: seed, op index, the
// op, both results and the last ops before it.
//
// What must agree, and what may not (CompareOptions):
//  - always: file type, permission bits, nlink, uid, gid, size of files and symlinks, contents,
//    symlink targets, xattr names (as a set) and values, directory listings (names and d_type),
//    explicit times set by utimensat, every return value and errno;
//  - never: st_ino, st_dev, ctime, and atime/mtime other than explicitly set ones (the two sides
//    run the same op at different instants);
//  - optional: st_blocks (`blocks`; two allocators may differ), directory st_size (`dir_size`;
//    how a directory grows is an allocation detail), SEEK_DATA/SEEK_HOLE offsets (`seek`, on by
//    default).
//
// REQUIRES: both roots are empty filesystems of the same kind (same mke2fs options); root for
// chown and trusted.* xattrs. RunLockstep sets the umask to 0 while it runs.
// Thread-safety: none; one run at a time per process (the umask is process-wide).
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "tests/difftest/ops.h"

namespace iomapfs::difftest {

struct CompareOptions {
  bool blocks = false;    // compare st_blocks
  bool dir_size = false;  // compare st_size of directories
  bool seek = true;       // compare SEEK_DATA/SEEK_HOLE offsets
};

struct OpResult {
  int64_t ret = 0;   // the return value, or -errno
  std::string data;  // what the op observed (bytes read, stat fields, ...)
  bool operator==(const OpResult&) const = default;
};

// "ret=-2 (ENOENT)" plus the data, abbreviated when long or binary.
std::string DescribeResult(const OpResult& result);

// One tree and its fd table.
class Side {
 public:
  Side(std::string root, int slots, CompareOptions compare);
  ~Side();
  Side(const Side&) = delete;
  Side& operator=(const Side&) = delete;

  OpResult Run(const Op& op);
  void CloseAll();

 private:
  std::string Path(const std::string& rel) const;
  // The fd an op should use: the slot's fd, or `path` opened with `flags` (*opened set).
  int Fd(const Op& op, int flags, bool* opened, int64_t* error);
  std::string StatString(const struct stat& st) const;
  // fstat(fd) or fstatat(path) formatted; "" on error.
  std::string PostStat(const Op& op, int fd) const;

  std::string root_;
  std::vector<int> fds_;
  CompareOptions compare_;
};

struct TreeDifferences {
  std::vector<std::string> lines;  // at most `max` of them
  uint64_t count = 0;
  uint64_t entries = 0;  // paths compared
  uint64_t bytes = 0;    // file bytes compared
};

// Walks both trees in parallel (sorted) and lists every difference (see the header comment for
// what is compared). SEEK_DATA/SEEK_HOLE maps are taken before a file's contents are read, so
// the walk's own reads do not turn unwritten ranges into cached data first.
TreeDifferences CompareTrees(const std::string& ref_root, const std::string& test_root,
                             const CompareOptions& options, size_t max = 20);

struct RunnerOptions {
  uint64_t seed = 1;
  uint64_t ops = 10000;
  uint64_t check_every = 1000;  // whole-tree comparison interval; 0: only at the end
  size_t history = 20;          // ops listed in a report
  // If set, called after every op with its index, description and the reference's result.
  std::function<void(uint64_t index, const std::string& op, const std::string& result)> trace;
  GeneratorOptions generator;
  CompareOptions compare;
  std::string ref_name = "kernel ext4";
  std::string test_name = "test";
  std::function<void(uint64_t ops_done)> progress;  // called every 10,000 ops, if set
  // Every `remount_every` ops (0: never; not after the last op) the fds of both sides are
  // closed and `remount` is called (the harness unmounts both trees, checks them with e2fsck
  // and mounts them again at the same roots); a non-empty return is a failure. Closing the fds
  // is part of the op sequence, so a repro must use the same interval.
  uint64_t remount_every = 0;
  std::function<std::string()> remount;
};

struct RunResult {
  bool ok = true;
  uint64_t ops_run = 0;    // ops executed on both sides (the failing one included)
  int64_t failed_op = -1;  // index of the mismatching op; -1 if none or a tree check failed
  uint64_t tree_checks = 0;
  uint64_t remounts = 0;
  std::string report;  // on failure
  struct KindStats {
    uint64_t runs = 0;
    uint64_t ok = 0;                 // on the reference side
    std::map<int, uint64_t> errors;  // errno -> count, on the reference side
  };
  std::map<std::string, KindStats> by_kind;
  // "write 3100/3300 (EBADF 150, ...), ..." for a log line.
  std::string Stats() const;
};

RunResult RunLockstep(const std::string& ref_root, const std::string& test_root,
                      const RunnerOptions& options);

}  // namespace iomapfs::difftest
