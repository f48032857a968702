// errors=continue|remount-ro|panic: what the server does once it finds corruption while
// serving a read-write mount. One file's extent tree is corrupt; reading it finds the damage.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs {
namespace {

namespace tu = ::iomapfs::testing;

const std::string kBinary = IOMAPFS_BINARY;

// Reads the whole file; returns 0 or the errno of the failing call.
int ReadError(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return errno;
  char buf[65536];
  int err = 0;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) err = errno;
    if (n <= 0) break;
  }
  close(fd);
  return err;
}

int CreateError(const std::string& path) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY, 0644);
  if (fd < 0) return errno;
  int err = write(fd, "x", 1) == 1 ? 0 : errno;
  close(fd);
  return err;
}

std::string SuperblockField(const std::string& image, const std::string& field) {
  tu::CommandResult r = tu::Run({"dumpe2fs", "-h", image});
  size_t at = r.output.find(field + ":");
  if (at == std::string::npos) return "";
  size_t eol = r.output.find('\n', at);
  std::string v = r.output.substr(at + field.size() + 1, eol - at - field.size() - 1);
  return v.substr(v.find_first_not_of(' '));
}

class ErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!tu::IsRoot()) GTEST_SKIP() << "mounting needs root in this test";
    if (access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/fuse is not usable";
    std::string src = dir_.Sub("src");
    mkdir(src.c_str(), 0755);
    ASSERT_TRUE(tu::WriteFile(src + "/good", "fine\n"));
    ASSERT_TRUE(tu::WriteFile(src + "/bad", std::string(100000, 'b')));
    image_ = dir_.Sub("fs.img");
    ASSERT_EQ(tu::MakeImage(image_, 32 << 20, "ext4", {}, src), "");
    // Zero the extent header magic of /bad: its tree is now unreadable.
    tu::CommandResult r = tu::Run({"debugfs", "-w", "-R", "sif /bad block[0] 0", image_});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    mnt_ = dir_.Sub("mnt");
    mkdir(mnt_.c_str(), 0755);
  }
  void TearDown() override {
    if (!mnt_.empty() && tu::IsMountPoint(mnt_)) tu::Run({"umount", "-l", mnt_});
  }

  void Mount(const std::string& opts) {
    tu::CommandResult r = tu::Run({kBinary, image_, mnt_, "-o", opts});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_TRUE(tu::IsMountPoint(mnt_));
  }
  // Unmounts and waits for the server to let go of the image.
  void Unmount() {
    ASSERT_EQ(tu::Run({"umount", mnt_}).exit_code, 0);
    for (int i = 0; i < 400 && tu::Run({"fuser", image_}).exit_code == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  }

  tu::TempDir dir_;
  std::string image_;
  std::string mnt_;
};

TEST_F(ErrorsTest, ContinueKeepsWritingAndRecordsTheError) {
  Mount("rw,errors=continue");
  EXPECT_EQ(ReadError(mnt_ + "/bad"), EUCLEAN);
  EXPECT_EQ(ReadError(mnt_ + "/good"), 0);
  EXPECT_EQ(CreateError(mnt_ + "/new"), 0);
  Unmount();
  EXPECT_NE(SuperblockField(image_, "Filesystem state").find("with errors"), std::string::npos);
  EXPECT_NE(SuperblockField(image_, "FS Error count"), "");
  EXPECT_NE(SuperblockField(image_, "Last error function").find("read"), std::string::npos);
  // e2fsck repairs the damage (exit 1: errors corrected), and a second run is clean.
  EXPECT_EQ(tu::Run({"e2fsck", "-fy", image_}).exit_code, 1);
  EXPECT_TRUE(tu::FsckClean(image_));
}

TEST_F(ErrorsTest, RemountRoRefusesChangesAfterTheError) {
  Mount("rw,errors=remount-ro");
  EXPECT_EQ(CreateError(mnt_ + "/before"), 0);
  EXPECT_EQ(ReadError(mnt_ + "/bad"), EUCLEAN);
  EXPECT_EQ(CreateError(mnt_ + "/after"), EROFS);
  // Refused at the create itself, not only at the write that follows it.
  struct stat st;
  EXPECT_NE(stat((mnt_ + "/after").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(mkdir((mnt_ + "/after-dir").c_str(), 0755), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(unlink((mnt_ + "/before").c_str()), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(ReadError(mnt_ + "/good"), 0);  // reading still works
  EXPECT_EQ(ReadError(mnt_ + "/before"), 0);
  Unmount();
  EXPECT_NE(SuperblockField(image_, "Filesystem state").find("with errors"), std::string::npos);
}

TEST_F(ErrorsTest, PanicStopsTheServer) {
  Mount("rw,errors=panic");
  int err = ReadError(mnt_ + "/bad");
  EXPECT_NE(err, 0);
  // The server is gone: the mount answers ENOTCONN and nothing holds the image.
  struct stat st;
  bool dead = false;
  for (int i = 0; i < 200 && !dead; ++i) {
    dead = stat((mnt_ + "/good").c_str(), &st) != 0 && errno == ENOTCONN;
    if (!dead) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_TRUE(dead);
  EXPECT_NE(tu::Run({"fuser", image_}).exit_code, 0);
}

TEST_F(ErrorsTest, BadValueIsRefused) {
  tu::CommandResult r = tu::Run({kBinary, image_, mnt_, "-o", "rw,errors=sometimes"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("bad errors='sometimes'"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace iomapfs
