// Differential tester, part 3: the whole run for one seed, images and mounts included.
//
// RunDifftest makes one ext4 image with mke2fs (fixed UUID and directory hash seed, so runs are
// reproducible), copies it, mounts the copy as the reference with kernel ext4 on a loop device,
// mounts the other as the tree under test (the iomapfs binary with `-o rw`, or kernel ext4 again
// with `kernel_only`), runs RunLockstep, unmounts both, requires `e2fsck -fn` to be clean on both,
// then mounts both read-only with kernel ext4 and compares the trees once more (what iomapfs
// wrote must read back identically through the kernel). Every `remount_every` ops it also
// unmounts both mid-run, requires e2fsck -fn to be clean and mounts them again.
//
// Everything it mounts or attaches is undone before it returns, pass or fail; the work directory
// is removed unless `keep`.
// REQUIRES: root, loop devices, /dev/fuse (unless kernel_only).
// Thread-safety: none (mounts, the umask).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "tests/difftest/runner.h"

namespace iomapfs::difftest {

struct HarnessOptions {
  uint64_t seed = 1;
  uint64_t ops = 10000;
  bool kernel_only = false;          // the tree under test is kernel ext4 too (proves the tester)
  bool keep = false;                 // keep the work directory (images) and print where it is
  std::string iomapfs;               // the iomapfs binary
  std::string mount_options = "rw";  // iomapfs -o OPTIONS for the tree under test
  std::string tool;                  // the difftest tool, for the repro command
  std::string tmpdir;                // parent of the work directory; default $TMPDIR or /tmp
  uint64_t image_bytes = uint64_t{1} << 30;
  uint64_t check_every = 1000;     // tree comparison interval (RunnerOptions)
  uint64_t remount_every = 10000;  // unmount, e2fsck -fn and mount both again (RunnerOptions)
  CompareOptions compare;
  std::function<void(const std::string&)> log;  // progress lines, if set
  bool trace = false;  // log every op and the reference's result (to find how a state arose)
};

enum class HarnessStatus {
  kPass,
  kFail,           // a mismatch, an unclean fsck or a difference after the kernel remount
  kRwUnsupported,  // the server refused `-o rw` (this build has no write path)
  kError,          // setup failed (mke2fs, losetup, mount)
};

struct HarnessResult {
  HarnessStatus status = HarnessStatus::kError;
  std::string message;  // the report on kFail, the reason otherwise
  std::string repro;    // one command that reproduces this run (set on kFail)
  uint64_t ops_run = 0;
  double seconds = 0;
  std::string stats;  // per-op-kind counts
};

HarnessResult RunDifftest(const HarnessOptions& options);

// The command line that reruns `options` for `ops` operations.
std::string ReproCommand(const HarnessOptions& options, uint64_t ops);

}  // namespace iomapfs::difftest
