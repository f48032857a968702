// AttachLoop (the iomap-mode fallback for image files): the returned fd is a block device of
// the image's size whose bytes are the image's, a read-only attach refuses writes, a read-write
// one writes through to the image, and closing the fd releases the device (autoclear).
// Needs root and /dev/loop-control; no iomap kernel.
#include "fsserver/dispatch/loop_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/test_util.h"

namespace iomapfs::dispatch {
namespace {

namespace tu = ::iomapfs::testing;

constexpr size_t kImageBytes = 4 << 20;

class LoopDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!tu::IsRoot()) GTEST_SKIP() << "attaching loop devices needs root";
    if (access("/dev/loop-control", R_OK | W_OK) != 0) {
      GTEST_SKIP() << "/dev/loop-control is missing or not usable: " << strerror(errno);
    }
    // An ext4 image, so that the read-write case can end with e2fsck; its bytes are what the
    // loop device must show.
    std::string src = dir_.Sub("src");
    mkdir(src.c_str(), 0755);
    ASSERT_TRUE(tu::WriteFile(src + "/f", std::string(100000, 'q')));
    image_ = dir_.Sub("data.img");
    ASSERT_EQ(tu::MakeImage(image_, kImageBytes, "ext4", {"-b", "4096"}, src), "");
    int fd = open(image_.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    bytes_ = ReadAllFd(fd, kImageBytes);
    close(fd);
    ASSERT_EQ(bytes_.size(), kImageBytes);
  }

  // The loop device's backing file as the kernel reports it (empty: not attached).
  static std::string BackingFile(const std::string& dev) {
    std::string name = dev.substr(dev.rfind('/') + 1);
    int fd = open(("/sys/block/" + name + "/loop/backing_file").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return "";
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf));
    close(fd);
    if (n <= 0) return "";
    std::string s(buf, static_cast<size_t>(n));
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }

  // Waits until `dev` has no backing file any more (autoclear runs when the last fd closes).
  static bool WaitReleased(const std::string& dev) {
    for (int i = 0; i < 250; ++i) {
      if (BackingFile(dev).empty()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  static std::string ReadAllFd(int fd, size_t n) {
    std::string out(n, '\0');
    size_t done = 0;
    while (done < n) {
      ssize_t r = pread(fd, out.data() + done, n - done, static_cast<off_t>(done));
      if (r <= 0) break;
      done += static_cast<size_t>(r);
    }
    out.resize(done);
    return out;
  }

  tu::TempDir dir_;
  std::string image_;
  std::string bytes_;
};

TEST_F(LoopDeviceTest, ReadOnlyAttachIsTheImageAndRefusesWrites) {
  int image = open(image_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(image, 0);
  std::string path;
  Result<UniqueFd> loop = AttachLoop(image, /*read_only=*/true, &path);
  close(image);  // the loop device keeps its own reference to the file
  ASSERT_TRUE(loop) << strerror(loop.error());
  EXPECT_EQ(path.rfind("/dev/loop", 0), 0u) << path;
  EXPECT_EQ(BackingFile(path), image_);

  struct stat st {};
  ASSERT_EQ(fstat(loop->get(), &st), 0);
  EXPECT_TRUE(S_ISBLK(st.st_mode));
  uint64_t size = 0;
  ASSERT_EQ(ioctl(loop->get(), BLKGETSIZE64, &size), 0);
  EXPECT_EQ(size, kImageBytes);
  int ro = 0;
  ASSERT_EQ(ioctl(loop->get(), BLKROGET, &ro), 0);
  EXPECT_EQ(ro, 1);
  EXPECT_TRUE(ReadAllFd(loop->get(), kImageBytes) == bytes_) << "loop bytes differ from image";

  // The fd is O_RDONLY; and the device itself is read-only (LO_FLAGS_READ_ONLY): even through
  // a read-write open of it, writes are refused.
  char b = 'x';
  EXPECT_EQ(pwrite(loop->get(), &b, 1, 0), -1);
  int rw = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (rw >= 0) {
    errno = 0;
    EXPECT_EQ(pwrite(rw, &b, 1, 0), -1);
    EXPECT_TRUE(errno == EPERM || errno == EROFS) << strerror(errno);
    close(rw);
  } else {
    EXPECT_TRUE(errno == EROFS || errno == EACCES || errno == EPERM) << strerror(errno);
  }
  EXPECT_TRUE(ReadAllFd(loop->get(), 4096) == bytes_.substr(0, 4096)) << "a write got through";

  ASSERT_TRUE(loop->Close());
  EXPECT_TRUE(WaitReleased(path)) << path << " still attached to " << BackingFile(path);
}

TEST_F(LoopDeviceTest, ReadWriteAttachWritesThroughAndIsReleasedOnClose) {
  int image = open(image_.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(image, 0);
  std::string path;
  Result<UniqueFd> loop = AttachLoop(image, /*read_only=*/false, &path);
  close(image);
  ASSERT_TRUE(loop) << strerror(loop.error());
  int ro = 1;
  ASSERT_EQ(ioctl(loop->get(), BLKROGET, &ro), 0);
  EXPECT_EQ(ro, 0);

  // Bytes 0..1023 of an ext4 image with 4 KiB blocks are the boot area, which ext4 never uses
  // (the superblock starts at 1024): writing them leaves the filesystem clean. One 512-byte
  // sector, so that the write goes straight to the device.
  const std::string block(512, 'Z');
  constexpr off_t kAt = 512;
  ASSERT_EQ(pwrite(loop->get(), block.data(), block.size(), kAt),
            static_cast<ssize_t>(block.size()));
  ASSERT_EQ(fsync(loop->get()), 0);
  ASSERT_TRUE(loop->Close());
  EXPECT_TRUE(WaitReleased(path)) << path << " still attached to " << BackingFile(path);

  int check = open(image_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(check, 0);
  std::string now = ReadAllFd(check, kImageBytes);
  close(check);
  std::string expected = bytes_;
  expected.replace(kAt, block.size(), block);
  EXPECT_TRUE(now == expected) << "the image does not hold what was written through the loop";
  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
}

TEST_F(LoopDeviceTest, BadImageFdIsAnError) {
  std::string path;
  Result<UniqueFd> loop = AttachLoop(-1, true, &path);
  ASSERT_FALSE(loop);
  EXPECT_EQ(loop.error(), EBADF);
  // The device it tried is not left attached.
  if (!path.empty()) {
    EXPECT_EQ(BackingFile(path), "");
  }
}

}  // namespace
}  // namespace iomapfs::dispatch
