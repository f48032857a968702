// The differential random-operation tester (runner.h) as CI tests:
//  - KernelVsKernel proves the tester: two kernel ext4 mounts of the same image must agree on
//    every op of a 20,000-op run (any mismatch is a bug in the tester, not in a filesystem);
//  - IomapfsVsKernel runs several seeds, >= 200,000 ops in all (DIFFTEST_OPS overrides the
//    total), of iomapfs -o rw against kernel ext4, with tree comparisons every 1,000 ops,
//    e2fsck -fn on both images and a kernel-ext4 comparison of the iomapfs image. It skips
//    while the server refuses -o rw, and turns on by itself when the write path lands.
// Environment: DIFFTEST_OPS (total ops of IomapfsVsKernel), DIFFTEST_SEED (first seed),
// DIFFTEST_IOMAPFS (another server binary).
// A failure prints the one-line `difftest` command that reproduces it.
#include <stdlib.h>

#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "tests/difftest/harness.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::difftest {
namespace {

#ifdef IOMAPFS_BINARY
constexpr const char* kBuiltBinary = IOMAPFS_BINARY;
#else
constexpr const char* kBuiltBinary = nullptr;
#endif

// The server under test: $DIFFTEST_IOMAPFS if set (another build), else the one built here.
const char* Binary() {
  const char* env = getenv("DIFFTEST_IOMAPFS");
  return env != nullptr && *env != '\0' ? env : kBuiltBinary;
}
#ifdef DIFFTEST_TOOL
constexpr const char* kTool = DIFFTEST_TOOL;
#else
constexpr const char* kTool = "difftest";
#endif

constexpr uint64_t kKernelOps = 20000;
constexpr uint64_t kDefaultTotalOps = 200000;
constexpr uint64_t kSeeds = 4;

uint64_t EnvU64(const char* name, uint64_t fallback) {
  const char* v = getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  unsigned long long x = strtoull(v, &end, 0);
  return *end == '\0' ? x : fallback;
}

HarnessOptions BaseOptions(uint64_t seed, uint64_t ops) {
  HarnessOptions o;
  o.seed = seed;
  o.ops = ops;
  o.tool = kTool;
  if (Binary() != nullptr) o.iomapfs = Binary();
  o.log = [](const std::string& line) { printf("  %s\n", line.c_str()); };
  return o;
}

std::string KernelSkipReason() {
  if (!iomapfs::testing::IsRoot()) return "needs root (loop devices, mount(2), chown)";
  if (access("/dev/loop-control", R_OK | W_OK) != 0) return "no /dev/loop-control";
  return "";
}

TEST(DifftestTest, KernelVsKernel) {
  if (std::string why = KernelSkipReason(); !why.empty()) GTEST_SKIP() << why;
  HarnessOptions o = BaseOptions(EnvU64("DIFFTEST_SEED", 1), kKernelOps);
  o.kernel_only = true;
  HarnessResult r = RunDifftest(o);
  printf("kernel vs kernel: %s (%.1f s)\n  %s\n", r.message.c_str(), r.seconds, r.stats.c_str());
  ASSERT_EQ(r.status, HarnessStatus::kPass) << r.message;
  EXPECT_EQ(r.ops_run, kKernelOps);
}

TEST(DifftestTest, IomapfsVsKernel) {
  if (std::string why = iomapfs::testing::MountTestSkipReason(Binary()); !why.empty()) {
    GTEST_SKIP() << why;
  }
  const uint64_t total = EnvU64("DIFFTEST_OPS", kDefaultTotalOps);
  const uint64_t first_seed = EnvU64("DIFFTEST_SEED", 1);
  const uint64_t per_seed = (total + kSeeds - 1) / kSeeds;
  uint64_t ops = 0;
  double seconds = 0;
  for (uint64_t i = 0; i < kSeeds; ++i) {
    HarnessResult r = RunDifftest(BaseOptions(first_seed + i, per_seed));
    if (r.status == HarnessStatus::kRwUnsupported) {
      GTEST_SKIP() << "read-write mounts not supported by this build (" << r.message << ")";
    }
    ops += r.ops_run;
    seconds += r.seconds;
    ASSERT_EQ(r.status, HarnessStatus::kPass)
        << r.message << "\nreproduce with: " << (r.repro.empty() ? "(setup error)" : r.repro);
    printf("%s (%.1f s)\n  %s\n", r.message.c_str(), r.seconds, r.stats.c_str());
  }
  printf("iomapfs vs kernel: %llu ops over %llu seeds in %.1f s\n",
         static_cast<unsigned long long>(ops), static_cast<unsigned long long>(kSeeds), seconds);
  EXPECT_GE(ops, total);
}

// The same against an iomapfs mount with the writeback cache (-o rw,writeback_cache): the kernel
// buffers writes and owns sizes and times; results, errno values and trees must still match.
TEST(DifftestTest, IomapfsWritebackCacheVsKernel) {
  if (std::string why = iomapfs::testing::MountTestSkipReason(Binary()); !why.empty()) {
    GTEST_SKIP() << why;
  }
  HarnessOptions o = BaseOptions(EnvU64("DIFFTEST_SEED", 1) + kSeeds, kDefaultTotalOps / kSeeds);
  o.mount_options = "rw,writeback_cache";
  HarnessResult r = RunDifftest(o);
  ASSERT_EQ(r.status, HarnessStatus::kPass)
      << r.message << "\nreproduce with: " << (r.repro.empty() ? "(setup error)" : r.repro);
  printf("%s (%.1f s)\n  %s\n", r.message.c_str(), r.seconds, r.stats.c_str());
  EXPECT_EQ(r.ops_run, o.ops);
}

}  // namespace
}  // namespace iomapfs::difftest
