// iomapfs-mkfs images under kernel ext4 (label mount; needs root for loop mounts): every image of
// the option matrix mounts and matches its source tree, the full tree (every file type, sparse
// files, xattrs and ACLs, hard links, a 10,000-entry directory, nanosecond times) matches field by
// field, a block device target works, and mounted targets are refused.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/mkfs/mkfs_test_util.h"
#include "tests/mount/mount_util.h"

namespace iomapfs::mkfs::testing {
namespace {

using iomapfs::testing::FsckClean;
using iomapfs::testing::IsRoot;
using iomapfs::testing::TempDir;

#define SKIP_UNLESS_ROOT() \
  if (!IsRoot()) GTEST_SKIP() << "needs root: loop devices and kernel ext4 mounts"

void ExpectFsckClean(const std::string& image) {
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

// Builds `image` from `src` with `args`, mounts it read-only and compares.
void BuildMountCompare(const std::string& src, const std::string& image,
                       const std::string& mountpoint, std::vector<std::string> args,
                       const std::string& size, bool small_inodes = false) {
  args.insert(args.end(), {"-q", "-d", src, image, size});
  auto r = RunMkfs(args);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string err = MountImage(image, mountpoint);
  ASSERT_EQ(err, "");
  std::string diff = CompareTrees(src, mountpoint, small_inodes);
  Unmount(mountpoint);
  EXPECT_EQ(diff, "");
  ExpectFsckClean(image);
}

class MkfsMountMatrix : public ::testing::TestWithParam<MatrixCase> {};

TEST_P(MkfsMountMatrix, KernelMountsAndContentMatches) {
  SKIP_UNLESS_ROOT();
  TempDir tmp;
  std::string src = tmp.Sub("src");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(MakeTree(src, {.big_directory_entries = 0, .privileged = true}), "");
  BuildMountCompare(src, tmp.Sub("img"), tmp.Sub("mnt"), GetParam().args, "96M",
                    GetParam().small_inodes());
}

INSTANTIATE_TEST_SUITE_P(Options, MkfsMountMatrix, ::testing::ValuesIn(OptionMatrix()),
                         [](const auto& info) { return info.param.name; });

TEST(MkfsMount, FullTreeMatchesSource) {
  SKIP_UNLESS_ROOT();
  TempDir tmp;
  std::string src = tmp.Sub("src");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(MakeTree(src, {.big_directory_entries = 10000, .privileged = true}), "");
  BuildMountCompare(src, tmp.Sub("img1"), tmp.Sub("mnt"), {}, "auto");
  BuildMountCompare(src, tmp.Sub("img2"), tmp.Sub("mnt"),
                    {"-b", "4096", "-O", "inline_data", "-I", "512"}, "auto");
  BuildMountCompare(src, tmp.Sub("img3"), tmp.Sub("mnt"), {"-b", "2048"}, "128M");
}

TEST(MkfsMount, ReproducibleImageMounts) {
  SKIP_UNLESS_ROOT();
  TempDir tmp;
  std::string src = tmp.Sub("src");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(MakeTree(src, {.big_directory_entries = 100, .privileged = true}), "");
  setenv("SOURCE_DATE_EPOCH", "4200000000", 1);  // later than every source time: no clamping
  BuildMountCompare(src, tmp.Sub("img"), tmp.Sub("mnt"),
                    {"-U", "01234567-89ab-cdef-0123-456789abcdef"}, "auto");
  unsetenv("SOURCE_DATE_EPOCH");
}

TEST(MkfsMount, BlockDeviceAndMountedTargetsRefused) {
  SKIP_UNLESS_ROOT();
  TempDir tmp;
  std::string src = tmp.Sub("src"), backing = tmp.Sub("disk"), mnt = tmp.Sub("mnt");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
  ASSERT_EQ(MakeTree(src, {.big_directory_entries = 50, .privileged = true}), "");
  ASSERT_EQ(iomapfs::testing::Run({"truncate", "-s", "80M", backing}).exit_code, 0);
  // Stale bytes everywhere: the device path must not rely on zeroed blocks.
  ASSERT_EQ(
      iomapfs::testing::Run({"sh", "-c", "yes garbage | head -c 83886080 > " + backing}).exit_code,
      0);
  // Guards detach the loop device and unmount even when an assertion ends the test early.
  iomapfs::testing::LoopDevice lo;
  if (std::string err = lo.Attach(backing, /*read_only=*/false); !err.empty()) {
    GTEST_SKIP() << "no loop device: " << err;
  }
  const std::string& dev = lo.path();
  iomapfs::testing::MountGuard mounted;

  auto r = RunMkfs({"-q", "-d", src, dev});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  ExpectFsckClean(dev);
  ASSERT_EQ(iomapfs::testing::Run({"mount", "-o", "ro", dev, mnt}).exit_code, 0);
  mounted.Arm(mnt);
  EXPECT_EQ(CompareTrees(src, mnt), "");

  // Mounted: the device and the image file behind it are refused, and left alone.
  r = RunMkfs({"-q", "-F", dev});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("mounted"), std::string::npos) << r.output;
  r = RunMkfs({"-q", "-F", backing});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("mounted"), std::string::npos) << r.output;
  EXPECT_EQ(mounted.Unmount(), "");
  ExpectFsckClean(dev);

  // A failed run on the device leaves no valid superblock behind.
  r = RunMkfs({"-q", "-F", "-d", src, dev, "3M"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(iomapfs::testing::Run({"dumpe2fs", "-h", dev}).exit_code, 0);
}

}  // namespace
}  // namespace iomapfs::mkfs::testing
