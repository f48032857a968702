// A filesystem whose journal needs recovery (kernel ext4 shut down with committed but not
// checkpointed transactions, as after a crash):
//   - without `norecovery` iomapfs either refuses with a message about the journal, or serves
//     the recovered state (then it must equal what kernel ext4 shows after replaying);
//   - with `-o ro,norecovery` it serves what kernel ext4 serves with `-o ro,norecovery`, and
//     writes nothing to the image;
//   - after `e2fsck -fy` has replayed the journal it serves what kernel ext4 serves.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"
#include "tests/support/tree_compare.h"

namespace iomapfs::testing {
namespace {

#ifdef IOMAPFS_BINARY
constexpr const char* kBinary = IOMAPFS_BINARY;
#else
constexpr const char* kBinary = nullptr;
#endif

constexpr uint64_t kMiB = uint64_t{1} << 20;
// EXT4_IOC_SHUTDOWN (fs/ext4/ext4.h) and EXT4_GOING_FLAGS_LOGFLUSH: commit the journal, then
// stop all I/O; nothing is checkpointed, so the image is left needing recovery.
constexpr unsigned long kShutdownIoctl = _IOR('X', 125, uint32_t);
constexpr uint32_t kShutdownLogFlush = 1;
constexpr uint32_t kIncompatRecover = 0x4;

std::string Hash(const std::string& path) {
  CommandResult r = iomapfs::testing::Run({"sha256sum", path});
  return r.exit_code == 0 ? r.output.substr(0, 64) : "sha256sum failed: " + r.output;
}

bool NeedsRecovery(const std::string& image) {
  int fd = open(image.c_str(), O_RDONLY);
  uint8_t b[4] = {};
  bool ok = fd >= 0 && pread(fd, b, 4, 1024 + 0x60) == 4;
  if (fd >= 0) close(fd);
  return ok && (b[0] & kIncompatRecover);
}

bool WriteData(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return false;
  bool ok =
      write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()) && fsync(fd) == 0;
  close(fd);
  return ok;
}

// Makes `image` an ext4 filesystem whose journal holds committed transactions that were never
// checkpointed.
std::string MakeImageNeedingRecovery(const std::string& image, const std::string& mnt) {
  std::string err = MakeImage(image, 64 * kMiB, "ext4", {});
  if (!err.empty()) return err;
  LoopDevice loop;
  if (err = loop.Attach(image, false); !err.empty()) return err;
  MountGuard guard;
  if (err = KernelMount(loop.path(), mnt, false, &guard); !err.empty()) return err;
  if (!WriteData(mnt + "/old", std::string(20000, 'o')) ||
      !WriteData(mnt + "/overwritten", std::string(5000, '1')) ||
      !WriteData(mnt + "/removed", "soon gone")) {
    return "writing the first files failed";
  }
  sync();
  // Changes that live only in the journal.
  if (mkdir((mnt + "/newdir").c_str(), 0750) != 0 ||
      !WriteData(mnt + "/newdir/new", "written after the last checkpoint\n") ||
      !WriteData(mnt + "/overwritten", std::string(7000, '2')) ||
      unlink((mnt + "/removed").c_str()) != 0 ||
      setxattr((mnt + "/old").c_str(), "user.late", "xattr", 5, 0) != 0 ||
      chmod((mnt + "/old").c_str(), 0600) != 0 || symlink("newdir/new", (mnt + "/ln").c_str())) {
    return std::string("changes failed: ") + strerror(errno);
  }
  int dir = open(mnt.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir < 0) return "open " + mnt;
  fsync(dir);
  uint32_t flags = kShutdownLogFlush;
  int rc = ioctl(dir, kShutdownIoctl, &flags);
  int ioctl_err = errno;
  close(dir);
  if (rc != 0) return std::string("EXT4_IOC_SHUTDOWN: ") + strerror(ioctl_err);
  if (err = guard.Unmount(); !err.empty()) return err;
  if (err = loop.Detach(); !err.empty()) return err;
  if (!NeedsRecovery(image)) return "the image does not need recovery after the shutdown";
  return "";
}

class RecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = MountTestSkipReason(kBinary); !why.empty()) GTEST_SKIP() << why;
    image_ = tmp_.Sub("fs.img");
    a_ = tmp_.Sub("kernel");
    b_ = tmp_.Sub("iomapfs");
    ASSERT_EQ(mkdir(a_.c_str(), 0755), 0);
    ASSERT_EQ(mkdir(b_.c_str(), 0755), 0);
    ASSERT_EQ(MakeImageNeedingRecovery(image_, a_), "");
  }

  // Kernel ext4 mounts `image` (read-only loop device unless `replay`) at a_, iomapfs at b_,
  // and the trees are compared.
  // Returns: the number of entries compared.
  uint64_t ExpectSameAsKernel(const std::string& image, const std::string& kernel_options,
                              const std::string& server_options) {
    LoopDevice loop;
    MountGuard kernel;
    ServerMount server;
    std::string err = loop.Attach(image, true);
    if (err.empty()) err = KernelMount(loop.path(), a_, true, &kernel, kernel_options);
    if (err.empty()) err = server.Start(kBinary, image, b_, server_options);
    EXPECT_EQ(err, "");
    if (!err.empty()) return 0;
    TreeComparison c = CompareTrees(a_, b_);
    EXPECT_TRUE(c.ok()) << c.Format();
    EXPECT_EQ(server.Stop(), "");
    return c.entries;
  }

  TempDir tmp_;
  std::string image_, a_, b_;
};

TEST_F(RecoveryTest, WithoutNorecoveryRefusesOrServesTheRecoveredState) {
  ServerResult r = RunServer(kBinary, {image_, b_, "-o", "ro"});
  MountGuard guard;
  if (IsMountPoint(b_)) guard.Arm(b_);
  ASSERT_FALSE(r.timed_out);
  if (r.exit_code != 0) {
    EXPECT_FALSE(guard.armed()) << "refused, but left a mount";
    const std::string out = r.output;
    EXPECT_TRUE(out.find("journal") != std::string::npos ||
                out.find("recover") != std::string::npos)
        << "the refusal does not say that the journal needs recovery:\n"
        << out;
    EXPECT_EQ(WaitServerExit(kBinary, b_, 5), "");
    return;
  }
  // It mounted: it must show the state after replay, as kernel ext4 does.
  ASSERT_TRUE(guard.armed());
  ASSERT_EQ(guard.Unmount(), "");
  ASSERT_EQ(WaitServerExit(kBinary, b_), "");
  const std::string copy = tmp_.Sub("replayed.img");
  ASSERT_EQ(iomapfs::testing::Run({"cp", "--sparse=always", image_, copy}).exit_code, 0);
  {
    LoopDevice loop;  // a read-write mount replays the journal
    MountGuard kernel;
    ASSERT_EQ(loop.Attach(copy, false), "");
    ASSERT_EQ(KernelMount(loop.path(), a_, false, &kernel), "");
  }
  ASSERT_FALSE(NeedsRecovery(copy));
  LoopDevice loop;
  MountGuard kernel;
  ServerMount server;
  ASSERT_EQ(loop.Attach(copy, true), "");
  ASSERT_EQ(KernelMount(loop.path(), a_, true, &kernel), "");
  ASSERT_EQ(server.Start(kBinary, image_, b_, "ro"), "");
  TreeComparison c = CompareTrees(a_, b_);
  EXPECT_TRUE(c.ok()) << c.Format();
}

TEST_F(RecoveryTest, NorecoveryServesWhatKernelNorecoveryServesAndWritesNothing) {
  const std::string before = Hash(image_);
  EXPECT_GE(ExpectSameAsKernel(image_, "norecovery", "ro,norecovery"), 4u);
  EXPECT_EQ(Hash(image_), before) << "the image changed";
  EXPECT_TRUE(NeedsRecovery(image_));
}

TEST_F(RecoveryTest, AfterE2fsckReplayServesWhatKernelServes) {
  CommandResult r = iomapfs::testing::Run({"e2fsck", "-fy", image_});
  ASSERT_TRUE(r.exit_code == 0 || r.exit_code == 1) << r.output;
  ASSERT_FALSE(NeedsRecovery(image_));
  std::string fsck;
  ASSERT_TRUE(FsckClean(image_, &fsck)) << fsck;
  // root, lost+found, old, overwritten, newdir, newdir/new, ln: the journalled changes included.
  EXPECT_EQ(ExpectSameAsKernel(image_, "", "ro"), 7u);
}

}  // namespace
}  // namespace iomapfs::testing
