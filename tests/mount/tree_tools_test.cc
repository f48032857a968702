// Tests of the test tools themselves (tree_gen, tree_compare, mount_util) with kernel ext4
// only: a generated image compares equal to a copy of itself, and changes made to the copy are
// all reported. These run without the iomapfs binary.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"
#include "tests/support/tree_compare.h"
#include "tests/support/tree_gen.h"

namespace iomapfs::testing {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

bool HasDiff(const TreeComparison& c, const std::string& needle) {
  return std::any_of(c.differences.begin(), c.differences.end(),
                     [&](const std::string& d) { return d.find(needle) != std::string::npos; });
}

TEST(TreeToolsTest, GeneratedImageEqualsItsCopyAndChangesAreReported) {
  if (!IsRoot()) GTEST_SKIP() << "needs root (loop devices, mount, mknod, chown)";
  TempDir tmp;
  const std::string image = tmp.Sub("fs.img"), copy = tmp.Sub("copy.img");
  const std::string a = tmp.Sub("a"), b = tmp.Sub("b");
  ASSERT_EQ(mkdir(a.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(b.c_str(), 0755), 0);
  TreeGenOptions tree;
  tree.seed = 7;
  double gen_seconds = 0;
  ASSERT_EQ(MakeGeneratedImage(image, 8 * kGiB, "ext4", {}, tree, &gen_seconds), "");
  printf("tree generated in %.1f s\n", gen_seconds);
  CommandResult cp = iomapfs::testing::Run({"cp", "--sparse=always", image, copy});
  ASSERT_EQ(cp.exit_code, 0) << cp.output;

  {
    LoopDevice loop_a, loop_b;
    ASSERT_EQ(loop_a.Attach(image, true), "");
    ASSERT_EQ(loop_b.Attach(copy, true), "");
    MountGuard mount_a, mount_b;
    ASSERT_EQ(KernelMount(loop_a.path(), a, true, &mount_a), "");
    ASSERT_EQ(KernelMount(loop_b.path(), b, true, &mount_b), "");
    const double start = Now();
    TreeComparison c = CompareTrees(a, b);
    printf("compared %lu entries, %lu bytes in %.1f s\n", static_cast<unsigned long>(c.entries),
           static_cast<unsigned long>(c.bytes_compared), Now() - start);
    EXPECT_TRUE(c.ok()) << c.Format();
    EXPECT_GT(c.entries, 50000u);
  }

  // Change the copy in ways each comparison must catch.
  {
    LoopDevice loop;
    ASSERT_EQ(loop.Attach(copy, false), "");
    MountGuard guard;
    ASSERT_EQ(KernelMount(loop.path(), b, false, &guard), "");
    ASSERT_EQ(chmod((b + "/modes/f0644").c_str(), 0600), 0);
    int fd = open((b + "/files/f24_65536").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0) << strerror(errno);
    ASSERT_EQ(pwrite(fd, "X", 1, 40000), 1);
    close(fd);
    ASSERT_EQ(setxattr((b + "/xattr/small").c_str(), "user.small", "HELLO", 5, 0), 0);
    ASSERT_EQ(mkdir((b + "/deep/extra").c_str(), 0755), 0);
    ASSERT_EQ(unlink((b + "/symlinks/len30").c_str()), 0);
    ASSERT_EQ(symlink("elsewhere", (b + "/symlinks/len30").c_str()), 0);
    fd = open((b + "/sparse/hole_at_end").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0) << strerror(errno);
    ASSERT_EQ(pwrite(fd, "Y", 1, 2 * 1024 * 1024), 1);  // fills a hole: content and seek map
    close(fd);
    ASSERT_EQ(guard.Unmount(), "");
  }
  LoopDevice loop_a, loop_b;
  ASSERT_EQ(loop_a.Attach(image, true), "");
  ASSERT_EQ(loop_b.Attach(copy, true), "");
  MountGuard mount_a, mount_b;
  ASSERT_EQ(KernelMount(loop_a.path(), a, true, &mount_a), "");
  ASSERT_EQ(KernelMount(loop_b.path(), b, true, &mount_b), "");
  TreeComparison c = CompareTrees(a, b);
  EXPECT_TRUE(HasDiff(c, "/modes/f0644: mode a=0100644 b=0100600")) << c.Format();
  EXPECT_TRUE(HasDiff(c, "/files/f24_65536: content differs at offset 40000")) << c.Format();
  EXPECT_TRUE(HasDiff(c, "/xattr/small: xattr user.small value")) << c.Format();
  EXPECT_TRUE(HasDiff(c, "/deep/extra: only in b")) << c.Format();
  EXPECT_TRUE(HasDiff(c, "/symlinks/len30: symlink target")) << c.Format();
  EXPECT_TRUE(HasDiff(c, "/sparse/hole_at_end: SEEK_DATA/SEEK_HOLE data regions")) << c.Format();
  EXPECT_TRUE(HasDiff(c, "/sparse/hole_at_end: content differs at offset 2097152")) << c.Format();
  EXPECT_TRUE(HasDiff(c, "/deep: mtime")) << c.Format();
}

}  // namespace
}  // namespace iomapfs::testing
