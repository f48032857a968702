// Kill -9 of a read-write server in the middle of writes. What a program made durable before the
// kill (fsync of a file and its directory; syncfs through `sync -f MNT`) must be in the image
// afterwards; the rest may be lost but e2fsck -fy must be able to repair it (exit 0 or 1, never
// 4 or 8), after which e2fsck -fn is clean and kernel ext4 mounts it and shows the synced files
// byte for byte. The dead mount answers ENOTCONN; a new server on it says so and how to clean
// it up.
//
// Linux does not forward syncfs(2) to /dev/fuse servers (fuse_sync_fs() only asks servers that
// set fc->sync_fs, i.e. virtiofs), so what makes `sync -f` durable here is that the server
// writes every change through to the image before it replies; the test holds it to that. With
// the writeback cache (-o writeback_cache) syncfs(2) first has the kernel write its dirty
// pages and times back to the server and waits for the replies (sync_filesystem). A kill
// -9 leaves the image's page cache intact, so this is a smoke test of the server, not of power
// loss.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/fsserver/rw_mount_util.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs {
namespace {

namespace tu = ::iomapfs::testing;

constexpr char kBinary[] = IOMAPFS_BINARY;

// Deterministic bytes (an LCG), so each file's expected content is known.
// Writes `data` to a new file in 64 KiB pieces; fsyncs it if asked. Returns: 0 or an errno.
int WriteFile(const std::string& path, const std::string& data, bool fsync_it) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  for (size_t done = 0; done < data.size();) {
    ssize_t n = write(fd, data.data() + done, std::min<size_t>(65536, data.size() - done));
    if (n < 0) {
      int err = errno;
      close(fd);
      return err;
    }
    done += static_cast<size_t>(n);
  }
  int err = fsync_it && fsync(fd) != 0 ? errno : 0;
  close(fd);
  return err;
}

int FsyncDir(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = fsync(fd) != 0 ? errno : 0;
  close(fd);
  return err;
}

// The writer killed along with the server: files of 256 KiB in noise/, with renames and
// unlinks among them, until a call fails (the connection is gone). Never returns.
[[noreturn]] void WriteNoise(const std::string& mnt) {
  const std::string dir = mnt + "/noise";
  mkdir(dir.c_str(), 0755);
  const std::string chunk(65536, 'n');
  for (int i = 0;; ++i) {
    const std::string path = dir + "/n" + std::to_string(i);
    int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) _exit(0);
    for (int k = 0; k < 4; ++k) {
      if (write(fd, chunk.data(), chunk.size()) < 0) _exit(0);
    }
    close(fd);
    // (n<i-1> may have been renamed already.)
    if (i % 3 == 2 && unlink((dir + "/n" + std::to_string(i - 1)).c_str()) != 0 &&
        errno != ENOENT) {
      _exit(0);
    }
    if (i % 5 == 4 && rename(path.c_str(), (path + ".r").c_str()) != 0) _exit(0);
  }
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string skip = tu::MountTestSkipReason(kBinary);
    if (!skip.empty()) GTEST_SKIP() << skip;
    image_ = dir_.Sub("fs.img");
    ASSERT_EQ(tu::MakeImage(image_, 256 << 20, "ext4", {}), "");
    mnt_ = dir_.Sub("mnt");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
  }
  void TearDown() override {
    if (noise_ > 0) {
      kill(noise_, SIGKILL);
      waitpid(noise_, nullptr, 0);
    }
    if (!mnt_.empty() && tu::IsMountPoint(mnt_)) tu::Run({"umount", "-l", mnt_});
  }

  tu::TempDir dir_;
  std::string image_;
  std::string mnt_;
  pid_t noise_ = -1;
};

TEST_F(CrashTest, KillNineMidWritesKeepsWhatWasSynced) {
  tu::ForegroundServer server;
  ASSERT_EQ(server.Start(kBinary, image_, mnt_, "rw"), "");

  // A: written, fsynced, its directory fsynced. B likewise, in a new directory.
  const std::string a = tu::RandomPattern((3 << 20) + 123, 1);
  ASSERT_EQ(WriteFile(mnt_ + "/A", a, /*fsync_it=*/true), 0);
  ASSERT_EQ(FsyncDir(mnt_), 0);
  ASSERT_EQ(mkdir((mnt_ + "/sub").c_str(), 0755), 0);
  const std::string b = tu::RandomPattern(5000, 2);
  ASSERT_EQ(WriteFile(mnt_ + "/sub/B", b, /*fsync_it=*/true), 0);
  ASSERT_EQ(FsyncDir(mnt_ + "/sub"), 0);
  ASSERT_EQ(FsyncDir(mnt_), 0);
  // Files made durable only by syncfs(2) on the mount.
  constexpr int kSynced = 40;
  ASSERT_EQ(mkdir((mnt_ + "/synced").c_str(), 0755), 0);
  for (int i = 0; i < kSynced; ++i) {
    ASSERT_EQ(
        WriteFile(mnt_ + "/synced/f" + std::to_string(i), tu::RandomPattern(i * 3001, 100 + i),
                  /*fsync_it=*/false),
        0);
  }
  tu::CommandResult sync = tu::Run({"sync", "-f", mnt_});
  ASSERT_EQ(sync.exit_code, 0) << sync.output;

  noise_ = fork();
  ASSERT_GE(noise_, 0);
  if (noise_ == 0) WriteNoise(mnt_);
  // Kill once the writer is well under way.
  struct stat st;
  int status = 0;
  for (int i = 0; i < 500 && stat((mnt_ + "/noise/n30").c_str(), &st) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(stat((mnt_ + "/noise/n30").c_str(), &st), 0)
      << "the writer made no progress: " << tu::Run({"ls", mnt_ + "/noise"}).output
      << "\nwriter exited: " << (waitpid(noise_, &status, WNOHANG) == noise_) << " status "
      << status;
  status = server.KillAndWait(SIGKILL);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  // The writer's next call fails and it exits.
  for (int i = 0; i < 500 && waitpid(noise_, &status, WNOHANG) != noise_; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (i == 499) ADD_FAILURE() << "the writer still runs 10 s after the server died";
  }
  kill(noise_, SIGKILL);
  waitpid(noise_, nullptr, 0);
  noise_ = -1;

  // The mount is dead (stat(2) could still answer from cached attributes; these ask the
  // server), and a new server on it says what to do.
  struct statfs sfs;
  EXPECT_NE(statfs(mnt_.c_str(), &sfs), 0);
  EXPECT_EQ(errno, ENOTCONN);
  EXPECT_EQ(opendir(mnt_.c_str()), nullptr);
  EXPECT_EQ(errno, ENOTCONN);
  tu::ServerResult again = tu::RunServer(kBinary, {image_, mnt_, "-o", "rw"});
  EXPECT_EQ(again.exit_code, 1) << again.output;
  EXPECT_NE(again.output.find(mnt_ + " is a stale FUSE mount (its server died)"), std::string::npos)
      << again.output;
  EXPECT_NE(again.output.find("umount -l " + mnt_), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("fusermount3 -uz " + mnt_), std::string::npos) << again.output;
  tu::CommandResult umount = tu::Run({"umount", "-l", mnt_});
  EXPECT_EQ(umount.exit_code, 0) << umount.output;
  EXPECT_FALSE(tu::IsMountPoint(mnt_));

  // Repairable, then clean.
  tu::CommandResult fix = tu::Run({"e2fsck", "-fy", image_});
  EXPECT_TRUE(fix.exit_code == 0 || fix.exit_code == 1)
      << "e2fsck -fy exit " << fix.exit_code << ":\n"
      << fix.output;
  printf("[ e2fsck -fy ] exit %d after the kill\n", fix.exit_code);
  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;

  std::string kernel = tu::WithKernelMount(image_, dir_.Sub("kmnt"), [&](const std::string& k) {
    EXPECT_TRUE(tu::ReadAll(k + "/A") == a) << "A differs from what was fsynced";
    EXPECT_TRUE(tu::ReadAll(k + "/sub/B") == b) << "sub/B differs from what was fsynced";
    for (int i = 0; i < kSynced; ++i) {
      const std::string name = "synced/f" + std::to_string(i);
      EXPECT_TRUE(tu::ReadAll(k + "/" + name) == tu::RandomPattern(i * 3001, 100 + i)) << name;
    }
  });
  EXPECT_EQ(kernel, "");
}

TEST_F(CrashTest, NewServerReportsTheStaleMountOfADeadOne) {
  tu::ForegroundServer server;
  ASSERT_EQ(server.Start(kBinary, image_, mnt_, "rw"), "");
  server.KillAndWait(SIGKILL);
  tu::ServerResult again = tu::RunServer(kBinary, {image_, mnt_, "-o", "ro"});
  EXPECT_EQ(again.exit_code, 1) << again.output;
  EXPECT_NE(again.output.find("is a stale FUSE mount"), std::string::npos) << again.output;
  // The other way to clean up, the one a normal user has.
  tu::CommandResult um = tu::Run({"fusermount3", "-uz", mnt_});
  EXPECT_EQ(um.exit_code, 0) << um.output;
  EXPECT_FALSE(tu::IsMountPoint(mnt_));
  // Once unmounted the image (not clean, but consistent: nothing was written) mounts again.
  tu::ServerMount fresh;
  EXPECT_EQ(fresh.Start(kBinary, image_, mnt_, "ro"), "");
  EXPECT_EQ(fresh.Stop(), "");
}

}  // namespace
}  // namespace iomapfs
