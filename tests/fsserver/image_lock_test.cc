// The image lock across server processes: a read-write mount has the image to itself (a second
// mount of it, read-write or read-only, fails with exit 1 and says the image is in use), while
// read-only mounts share it. A read-only reader of an image that changes under it would see torn
// metadata, so rw+ro conflicts in either order, as kernel ext4 refuses a second mount of a
// block device in use. The lock is flock(2) on the image (ext2/ext2_fs.h).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "tests/fsserver/rw_mount_util.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs {
namespace {

namespace tu = ::iomapfs::testing;

constexpr char kBinary[] = IOMAPFS_BINARY;

class ImageLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string skip = tu::MountTestSkipReason(kBinary);
    if (!skip.empty()) GTEST_SKIP() << skip;
    image_ = dir_.Sub("fs.img");
    ASSERT_EQ(tu::MakeImage(image_, 32 << 20, "ext4", {}), "");
    mnt1_ = dir_.Sub("mnt1");
    mnt2_ = dir_.Sub("mnt2");
    mnt3_ = dir_.Sub("mnt3");
    for (const std::string& m : {mnt1_, mnt2_, mnt3_}) ASSERT_EQ(mkdir(m.c_str(), 0755), 0);
  }

  // A second server that must refuse to start: exit 1, the reason, and no mount left behind.
  void ExpectRefused(const std::string& mountpoint, const std::string& options) {
    tu::ServerResult r = tu::RunServer(kBinary, {image_, mountpoint, "-o", options});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("image is in use"), std::string::npos) << r.output;
    EXPECT_FALSE(tu::IsMountPoint(mountpoint));
    if (tu::IsMountPoint(mountpoint)) tu::Run({"umount", "-l", mountpoint});
  }

  tu::TempDir dir_;
  std::string image_, mnt1_, mnt2_, mnt3_;
};

TEST_F(ImageLockTest, ReadWriteMountExcludesEveryOtherMount) {
  tu::ServerMount rw;
  ASSERT_EQ(rw.Start(kBinary, image_, mnt1_, "rw"), "");
  ASSERT_TRUE(tu::WriteFile(mnt1_ + "/file", "written\n"));
  ExpectRefused(mnt2_, "rw");
  ExpectRefused(mnt2_, "ro");
  // The first mount is unharmed.
  EXPECT_EQ(tu::Run({"cat", mnt1_ + "/file"}).output, "written\n");
  ASSERT_EQ(rw.Stop(), "");
  // Released with the server: now both kinds work.
  tu::ServerMount again;
  ASSERT_EQ(again.Start(kBinary, image_, mnt2_, "ro"), "");
  EXPECT_EQ(tu::Run({"cat", mnt2_ + "/file"}).output, "written\n");
  ASSERT_EQ(again.Stop(), "");
  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
}

TEST_F(ImageLockTest, ReadOnlyMountsShareButExcludeAWriter) {
  tu::ServerMount ro1, ro2;
  ASSERT_EQ(ro1.Start(kBinary, image_, mnt1_, "ro"), "");
  ASSERT_EQ(ro2.Start(kBinary, image_, mnt2_, "ro"), "");
  EXPECT_TRUE(tu::IsMountPoint(mnt1_));
  EXPECT_TRUE(tu::IsMountPoint(mnt2_));
  ExpectRefused(mnt3_, "rw");
  ASSERT_EQ(ro1.Stop(), "");
  ExpectRefused(mnt3_, "rw");  // one reader is still there
  ASSERT_EQ(ro2.Stop(), "");
  tu::ServerMount rw;
  EXPECT_EQ(rw.Start(kBinary, image_, mnt3_, "rw"), "");
  EXPECT_EQ(rw.Stop(), "");
}

}  // namespace
}  // namespace iomapfs
