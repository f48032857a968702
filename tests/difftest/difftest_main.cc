// difftest: run the differential random-operation tester for one seed, by hand.
//
//   difftest --seed N --ops M [--kernel-only] [--keep] [--iomapfs PATH] [--check-every K]
//            [--remount-every R] [--blocks] [--dir-size] [--no-seek] [--tmpdir DIR]
//
// Makes the images, mounts them (kernel ext4 as the reference; iomapfs -o rw, or kernel ext4
// with --kernel-only, as the tree under test), runs M ops of seed N in lockstep, checks both
// images with e2fsck -fn and compares them again through kernel ext4. On a mismatch it prints
// the report and the one-line command that reproduces it. Exit status: 0 pass, 1 mismatch,
// 2 usage or setup error, 3 the server refused -o rw. Needs root.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "tests/difftest/harness.h"

namespace {

#ifdef IOMAPFS_BINARY
constexpr const char* kDefaultIomapfs = IOMAPFS_BINARY;
#else
constexpr const char* kDefaultIomapfs = "";
#endif

constexpr char kUsage[] =
    "usage: difftest --seed N --ops M [--kernel-only] [--keep] [--iomapfs PATH]\n"
    "                [--check-every K] [--remount-every R] [--blocks] [--dir-size]\n"
    "                [--no-seek] [--trace] [--tmpdir DIR] [--options OPTS]\n"
    "\n"
    "Runs M random filesystem operations of seed N in lockstep on kernel ext4 (loop device)\n"
    "and on an iomapfs -o rw mount, comparing every result, the trees every K ops (default\n"
    "1000) and at the end; every R ops (default 10000; 0: never) both are unmounted, checked\n"
    "with e2fsck -fn and mounted again; at the end e2fsck -fn on both images and a kernel-ext4\n"
    "comparison of what iomapfs left on disk. Needs root.\n"
    "\n"
    "  --kernel-only   the tree under test is kernel ext4 too (checks the tester itself)\n"
    "  --keep          keep the work directory with both images\n"
    "  --iomapfs PATH  the server binary (default: the one built with this tool)\n"
    "  --options OPTS  iomapfs mount options (default: rw), e.g. rw,writeback_cache\n"
    "  --blocks        also compare st_blocks\n"
    "  --dir-size      also compare directory sizes\n"
    "  --no-seek       do not compare SEEK_DATA/SEEK_HOLE offsets\n"
    "  --trace         print every op and the reference's result\n";

bool ParseU64(const char* s, uint64_t* out) {
  if (s == nullptr || *s == '\0' || *s == '-') return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

std::string SelfPath(const char* argv0) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : std::string(argv0);
}

}  // namespace

int main(int argc, char** argv) {
  iomapfs::difftest::HarnessOptions options;
  options.iomapfs = kDefaultIomapfs;
  options.tool = SelfPath(argv[0]);
  bool have_seed = false, have_ops = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    bool ok = true;
    if (arg == "--seed") {
      ok = have_seed = ParseU64(value, &options.seed);
      ++i;
    } else if (arg == "--ops") {
      ok = have_ops = ParseU64(value, &options.ops);
      ++i;
    } else if (arg == "--check-every") {
      ok = ParseU64(value, &options.check_every);
      ++i;
    } else if (arg == "--remount-every") {
      ok = ParseU64(value, &options.remount_every);
      ++i;
    } else if (arg == "--iomapfs" && value != nullptr) {
      options.iomapfs = value;
      ++i;
    } else if (arg == "--options" && value != nullptr) {
      options.mount_options = value;
      ++i;
    } else if (arg == "--tmpdir" && value != nullptr) {
      options.tmpdir = value;
      ++i;
    } else if (arg == "--kernel-only") {
      options.kernel_only = true;
    } else if (arg == "--keep") {
      options.keep = true;
    } else if (arg == "--blocks") {
      options.compare.blocks = true;
    } else if (arg == "--dir-size") {
      options.compare.dir_size = true;
    } else if (arg == "--trace") {
      options.trace = true;
    } else if (arg == "--no-seek") {
      options.compare.seek = false;
    } else if (arg == "-h" || arg == "--help") {
      fputs(kUsage, stdout);
      return 0;
    } else {
      ok = false;
    }
    if (!ok) {
      fprintf(stderr, "difftest: bad argument '%s'\n%s", arg.c_str(), kUsage);
      return 2;
    }
  }
  if (!have_seed || !have_ops) {
    fprintf(stderr, "difftest: --seed and --ops are required\n%s", kUsage);
    return 2;
  }
  if (geteuid() != 0) {
    fprintf(stderr, "difftest: needs root (loop devices, mount(2), chown)\n");
    return 2;
  }
  if (!options.kernel_only && options.iomapfs.empty()) {
    fprintf(stderr, "difftest: no iomapfs binary built; pass --iomapfs PATH or --kernel-only\n");
    return 2;
  }
  options.log = [](const std::string& line) {
    printf("%s\n", line.c_str());
    fflush(stdout);
  };

  using iomapfs::difftest::HarnessStatus;
  iomapfs::difftest::HarnessResult r = iomapfs::difftest::RunDifftest(options);
  switch (r.status) {
    case HarnessStatus::kPass:
      printf("PASS %s in %.1f s\n%s\n", r.message.c_str(), r.seconds, r.stats.c_str());
      return 0;
    case HarnessStatus::kFail:
      printf("FAIL after %llu ops, %.1f s\n%s", static_cast<unsigned long long>(r.ops_run),
             r.seconds, r.message.c_str());
      return 1;
    case HarnessStatus::kRwUnsupported:
      fprintf(stderr, "difftest: %s\n", r.message.c_str());
      return 3;
    case HarnessStatus::kError:
      break;
  }
  fprintf(stderr, "difftest: setup failed: %s\n", r.message.c_str());
  return 2;
}
