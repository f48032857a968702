// The read matrix: for each ext2/3/4 feature set, kernel ext4 writes a tree with every kind of
// object (tree_gen.h) into a fresh image; then the image is mounted read-only both by kernel
// ext4 (the oracle) and by the iomapfs binary, and the two trees must not differ in anything an
// application can observe (tree_compare.h). e2fsck -fn must find the image clean before and
// after.
#include <dirent.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"
#include "tests/support/tree_compare.h"
#include "tests/support/tree_gen.h"

namespace iomapfs::testing {
namespace {

#ifdef IOMAPFS_BINARY
constexpr const char* kBinary = IOMAPFS_BINARY;
#else
constexpr const char* kBinary = nullptr;
#endif

constexpr uint64_t kImageSize = uint64_t{8} << 30;  // sparse

struct FeatureSet {
  std::string name;
  std::string fs_type;
  std::vector<std::string> mkfs_args;
  // Also compare again on a fresh server mount with 4 threads at once (costs ~20 s).
  bool parallel_pass = false;
};

void PrintTo(const FeatureSet& set, std::ostream* os) { *os << set.name; }

// Compares each top-level directory of `a` with the same one in `b`, from `threads` threads at
// once: concurrent lookups, reads, readdirs and xattr requests against one server.
// Returns: the differences of all of them, prefixed by the directory.
std::string CompareInParallel(const std::string& a, const std::string& b, int threads) {
  std::vector<std::string> tops;
  DIR* dir = opendir(a.c_str());
  if (dir == nullptr) return "opendir " + a;
  while (struct dirent* e = readdir(dir)) {
    if (e->d_type == DT_DIR && strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
      tops.push_back(e->d_name);
    }
  }
  closedir(dir);
  // Largest first, so that the big directory does not start last.
  std::sort(tops.begin(), tops.end(), [](const std::string& x, const std::string& y) {
    return (x == "bigdir") > (y == "bigdir");
  });
  std::vector<TreeComparison> results(tops.size());
  std::atomic<size_t> next{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      for (size_t i; (i = next++) < tops.size();) {
        results[i] = CompareTrees(a + "/" + tops[i], b + "/" + tops[i]);
      }
    });
  }
  for (std::thread& w : workers) w.join();
  std::string out;
  for (size_t i = 0; i < tops.size(); ++i) {
    if (!results[i].ok()) out += "under /" + tops[i] + ":\n" + results[i].Format();
  }
  return out;
}

std::string StatfsDiff(const std::string& a, const std::string& b) {
  struct statfs sa, sb;
  if (statfs(a.c_str(), &sa) != 0) return "statfs a failed";
  if (statfs(b.c_str(), &sb) != 0) return "statfs b failed";
  std::string out;
  auto field = [&](const char* name, uint64_t x, uint64_t y) {
    if (x != y) {
      out += std::string(name) + " a=" + std::to_string(x) + " b=" + std::to_string(y) + "\n";
    }
  };
  field("f_bsize", sa.f_bsize, sb.f_bsize);
  field("f_blocks", sa.f_blocks, sb.f_blocks);
  field("f_bfree", sa.f_bfree, sb.f_bfree);
  field("f_bavail", sa.f_bavail, sb.f_bavail);
  field("f_files", sa.f_files, sb.f_files);
  field("f_ffree", sa.f_ffree, sb.f_ffree);
  field("f_namelen", sa.f_namelen, sb.f_namelen);
  return out;
}

class ReadMatrixTest : public ::testing::TestWithParam<FeatureSet> {};

TEST_P(ReadMatrixTest, ServerShowsWhatKernelExt4Shows) {
  if (std::string why = MountTestSkipReason(kBinary); !why.empty()) GTEST_SKIP() << why;
  const FeatureSet& set = GetParam();
  TempDir tmp;
  const std::string image = tmp.Sub("fs.img"), a = tmp.Sub("kernel"), b = tmp.Sub("iomapfs");
  ASSERT_EQ(mkdir(a.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(b.c_str(), 0755), 0);

  TreeGenOptions tree;
  tree.seed = 0x5eed0000 + set.name.size();
  double gen_seconds = 0;
  ASSERT_EQ(MakeGeneratedImage(image, kImageSize, set.fs_type, set.mkfs_args, tree, &gen_seconds),
            "");

  // Declared in this order so that they are torn down server first, then kernel mount, then
  // loop device, even when an assertion returns early.
  LoopDevice loop;
  MountGuard kernel_mount;
  ServerMount server;
  ASSERT_EQ(loop.Attach(image, /*read_only=*/true), "");
  ASSERT_EQ(KernelMount(loop.path(), a, /*read_only=*/true, &kernel_mount), "");
  ASSERT_EQ(server.Start(kBinary, image, b, "ro"), "");

  const double start = Now();
  TreeComparison c = CompareTrees(a, b);
  const double compare_seconds = Now() - start;
  printf("[%s] generated in %.1f s; compared in %.1f s: %s\n", set.name.c_str(), gen_seconds,
         compare_seconds, c.Stats().c_str());
  EXPECT_TRUE(c.ok()) << c.difference_count << " differences between kernel ext4 (a) and "
                      << "iomapfs (b):\n"
                      << c.Format();
  EXPECT_GT(c.entries, 50000u);
  EXPECT_EQ(StatfsDiff(a, b), "") << "statfs(2) differs";

  EXPECT_TRUE(IsMountPoint(b)) << "the server's mount went away during the comparison";
  if (set.parallel_pass) {
    // Both mounts afresh: kernel ext4 reports an unwritten extent as data once its pages are in
    // the page cache (SEEK_DATA), so the reference must be as cold as in the first pass.
    ASSERT_EQ(server.Stop(), "");
    ASSERT_EQ(kernel_mount.Unmount(), "");
    ASSERT_EQ(KernelMount(loop.path(), a, /*read_only=*/true, &kernel_mount), "");
    ASSERT_EQ(server.Start(kBinary, image, b, "ro"), "");
    const double parallel_start = Now();
    EXPECT_EQ(CompareInParallel(a, b, 4), "");
    printf("[%s] parallel pass (4 threads) in %.1f s\n", set.name.c_str(), Now() - parallel_start);
    EXPECT_TRUE(IsMountPoint(b)) << "the server's mount went away during the parallel pass";
  }
  EXPECT_EQ(server.Stop(), "");
  EXPECT_FALSE(IsMountPoint(b));
  ASSERT_EQ(kernel_mount.Unmount(), "");
  ASSERT_EQ(loop.Detach(), "");
  std::string fsck;
  EXPECT_TRUE(FsckClean(image, &fsck)) << fsck;
}

INSTANTIATE_TEST_SUITE_P(
    FeatureSets, ReadMatrixTest,
    ::testing::Values(FeatureSet{"ext4", "ext4", {}, /*parallel_pass=*/true},
                      FeatureSet{"ext4_1k_blocks", "ext4", {"-b", "1024"}},
                      FeatureSet{"ext4_no64bit_nocsum", "ext4", {"-O", "^64bit,^metadata_csum"}},
                      FeatureSet{"ext4_inline_data", "ext4", {"-O", "inline_data"}},
                      FeatureSet{"ext2", "ext2", {}, /*parallel_pass=*/true},
                      FeatureSet{"ext3", "ext3", {}}),
    [](const ::testing::TestParamInfo<FeatureSet>& info) { return info.param.name; });

}  // namespace
}  // namespace iomapfs::testing
