// The writeback cache (FUSE_WRITEBACK_CACHE, on by default for -o rw in classic mode) on a real
// mount: what the kernel then expects of the server. O_APPEND positions come from the kernel's
// i_size, not the image's; a write-only handle doing partial-page writes makes the kernel READ
// through it; the kernel's mtime and ctime reach the image (SETATTR with FATTR_MTIME/CTIME);
// extending writes give the size stat showed, after fsync and after a plain unmount; a write by
// a user without CAP_FSETID clears suid/sgid. Each test reads the image back with kernel ext4
// and ends with e2fsck -fn clean. Whether the connection really negotiated the cache is read
// from the server's INIT log line, so a test cannot pass with the cache silently off.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "tests/fsserver/rw_mount_util.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs {
namespace {

namespace tu = ::iomapfs::testing;

constexpr char kBinary[] = IOMAPFS_BINARY;
constexpr uint64_t kWritebackCacheFlag = 1ull << 16;  // FUSE_WRITEBACK_CACHE

// The INIT flags the server enabled, from its debug log ("INIT: ... using 7.N flags 0x...").
// Returns: the flags, or ~0 if the line is missing.
uint64_t EnabledInitFlags(const std::string& log) {
  size_t at = log.find("INIT: kernel");
  if (at == std::string::npos) return ~uint64_t{0};
  size_t f = log.find(" flags 0x", log.find("using", at));
  if (f == std::string::npos) return ~uint64_t{0};
  return strtoull(log.c_str() + f + 7, nullptr, 16);
}

bool PwriteAll(int fd, const std::string& data, off_t off) {
  return pwrite(fd, data.data(), data.size(), off) == static_cast<ssize_t>(data.size());
}

class WritebackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string skip = tu::MountTestSkipReason(kBinary);
    if (!skip.empty()) GTEST_SKIP() << skip;
    image_ = dir_.Sub("fs.img");
    ASSERT_EQ(tu::MakeImage(image_, 128 << 20, "ext4", {}), "");
    mnt_ = dir_.Sub("mnt");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
  }
  void TearDown() override {
    if (!mnt_.empty() && tu::IsMountPoint(mnt_)) tu::Run({"umount", "-l", mnt_});
  }

  // Mounts with `options` plus debug (for the INIT line) and checks what INIT negotiated.
  void Mount(const std::string& options, bool expect_cache) {
    ASSERT_EQ(server_.Start(kBinary, image_, mnt_, options + ",debug"), "");
    uint64_t flags = EnabledInitFlags(server_.Output());
    ASSERT_NE(flags, ~uint64_t{0}) << server_.Output();
    ASSERT_EQ((flags & kWritebackCacheFlag) != 0, expect_cache) << std::hex << flags;
  }
  void Unmount() { ASSERT_EQ(server_.Unmount(), ""); }
  // Unmounts, then runs `fn` on a read-only kernel ext4 mount of the image, then e2fsck -fn.
  void CheckWithKernel(const std::function<void(const std::string&)>& fn) {
    Unmount();
    EXPECT_EQ(tu::WithKernelMount(image_, dir_.Sub("kmnt"), fn), "");
    std::string fsck;
    EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
  }
  std::string M(const std::string& name) const { return mnt_ + "/" + name; }

  tu::TempDir dir_;
  std::string image_;
  std::string mnt_;
  tu::ForegroundServer server_;
};

TEST_F(WritebackTest, OnlyWhenAskedAndOnlyForRw) {
  Mount("rw", /*expect_cache=*/false);  // off by default
  Unmount();
  Mount("rw,writeback_cache", /*expect_cache=*/true);
  Unmount();
  Mount("rw,writeback_cache,no_writeback_cache", /*expect_cache=*/false);
  Unmount();
  Mount("ro,writeback_cache", /*expect_cache=*/false);  // read-only: nothing to write back
  Unmount();
  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
}

// Two O_APPEND fds of one file, interleaved: every write lands at the end, in order, although
// the image's EOF lags the kernel's while the data sits in the page cache.
TEST_F(WritebackTest, AppendFromTwoFdsLandsAtTheEndInOrder) {
  Mount("rw,writeback_cache", /*expect_cache=*/true);
  const std::string head = tu::RandomPattern(5000, 1);
  ASSERT_TRUE(tu::WriteFile(M("log"), head));
  int a = open(M("log").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  int b = open(M("log").c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  std::string expected = head;
  for (int i = 0; i < 200; ++i) {
    // Sizes that cross page boundaries, from alternating fds; lseek to 0 must not matter.
    std::string rec = tu::RandomPattern(1 + (i * 737) % 6000, 10 + i);
    int fd = i % 2 == 0 ? a : b;
    ASSERT_EQ(lseek(fd, 0, SEEK_SET), 0);
    ASSERT_EQ(write(fd, rec.data(), rec.size()), static_cast<ssize_t>(rec.size())) << i;
    expected += rec;
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    ASSERT_EQ(static_cast<size_t>(st.st_size), expected.size()) << i;
  }
  EXPECT_TRUE(tu::ReadAll(M("log")) == expected);
  EXPECT_EQ(close(a), 0);
  EXPECT_EQ(close(b), 0);
  EXPECT_TRUE(tu::ReadAll(M("log")) == expected);
  CheckWithKernel(
      [&](const std::string& k) { EXPECT_TRUE(tu::ReadAll(k + "/log") == expected) << "log"; });
}

// A write-only fd writing pieces of pages of a file whose pages are not cached: the kernel
// must read the rest of each page (READ on the O_WRONLY handle) before it can write it back.
TEST_F(WritebackTest, WriteOnlyFdPartialPageWrites) {
  Mount("rw,writeback_cache", /*expect_cache=*/true);
  std::string expected = tu::RandomPattern(5 * 4096 + 321, 2);
  ASSERT_TRUE(tu::WriteFile(M("f"), expected));
  {
    // Make the data durable and drop the file's clean pages, so the next writes find none.
    int fd = open(M("f").c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(fsync(fd), 0);
    ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    close(fd);
  }
  auto reads = [&] {
    std::string log = server_.Output();
    size_t n = 0;
    for (size_t at = log.find("FUSE_READ "); at != std::string::npos;
         at = log.find("FUSE_READ ", at + 1)) {
      ++n;
    }
    return n;
  };
  const size_t reads_before = reads();
  int fd = open(M("f").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  struct Piece {
    off_t off;
    size_t len;
  };
  // Inside a page, across a boundary, the partial last page, and past EOF (a hole between).
  const Piece pieces[] = {
      {100, 7}, {4096 + 4000, 300}, {3 * 4096 + 1, 1}, {5 * 4096 + 300, 40}, {9 * 4096 + 5, 10}};
  int seed = 50;
  for (const Piece& p : pieces) {
    std::string data = tu::RandomPattern(p.len, seed++);
    ASSERT_TRUE(PwriteAll(fd, data, p.off)) << p.off;
    if (expected.size() < p.off + p.len) expected.resize(p.off + p.len, '\0');
    expected.replace(p.off, p.len, data);
  }
  ASSERT_EQ(close(fd), 0);
  // The kernel read the rest of those pages through the write-only handle.
  EXPECT_GT(reads(), reads_before);
  EXPECT_TRUE(tu::ReadAll(M("f")) == expected);
  struct stat st;
  ASSERT_EQ(stat(M("f").c_str(), &st), 0);
  EXPECT_EQ(static_cast<size_t>(st.st_size), expected.size());
  CheckWithKernel([&](const std::string& k) { EXPECT_TRUE(tu::ReadAll(k + "/f") == expected); });
}

// The kernel owns mtime while it caches a file: what stat shows at unmount (times of the
// writes, and times set explicitly after writes) is what the image holds afterwards.
TEST_F(WritebackTest, KernelMtimeSurvivesRemount) {
  Mount("rw,writeback_cache", /*expect_cache=*/true);
  // "written": mtime from the writes alone. "set": written, then utimensat, then written
  // into the page cache again (a later write must move mtime on from the set value).
  // "set_last": written, then an explicit time, nothing after.
  for (const char* name : {"written", "set", "set_last"}) {
    ASSERT_TRUE(tu::WriteFile(M(name), tu::RandomPattern(10000, 3)));
  }
  const timespec explicit_times[2] = {{1000000000, 111}, {1234567890, 123456789}};
  ASSERT_EQ(utimensat(AT_FDCWD, M("set").c_str(), explicit_times, 0), 0);
  ASSERT_EQ(utimensat(AT_FDCWD, M("set_last").c_str(), explicit_times, 0), 0);
  {
    int fd = open(M("set").c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(PwriteAll(fd, "xyz", 20000));
    close(fd);
  }
  {
    int fd = open(M("written").c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    usleep(20000);
    ASSERT_TRUE(PwriteAll(fd, "abc", 5));
    close(fd);
  }
  struct stat before[3];
  const char* names[3] = {"written", "set", "set_last"};
  for (int i = 0; i < 3; ++i) ASSERT_EQ(stat(M(names[i]).c_str(), &before[i]), 0);
  EXPECT_EQ(before[2].st_mtim.tv_sec, 1234567890);
  EXPECT_EQ(before[2].st_mtim.tv_nsec, 123456789);
  EXPECT_GT(before[1].st_mtim.tv_sec, 1234567890);
  CheckWithKernel([&](const std::string& k) {
    for (int i = 0; i < 3; ++i) {
      struct stat after;
      ASSERT_EQ(stat((k + "/" + names[i]).c_str(), &after), 0);
      EXPECT_EQ(after.st_mtim.tv_sec, before[i].st_mtim.tv_sec) << names[i];
      EXPECT_EQ(after.st_mtim.tv_nsec, before[i].st_mtim.tv_nsec) << names[i];
      EXPECT_EQ(after.st_size, before[i].st_size) << names[i];
    }
  });
}

// Extending writes (sequential, and far past EOF leaving holes) followed by fsync: the size
// and bytes stat and read showed are the image's, also for a file never fsynced (written back
// at unmount).
TEST_F(WritebackTest, ExtendingWritesThenFsyncGiveTheSizeOnTheImage) {
  Mount("rw,writeback_cache", /*expect_cache=*/true);
  std::string synced, unsynced;
  for (const char* name : {"synced", "unsynced"}) {
    int fd = open(M(name).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    const bool fsync_it = std::string(name) == "synced";
    std::string& model = fsync_it ? synced : unsynced;
    const std::pair<off_t, size_t> writes[] = {
        {0, 4096}, {4096, 100}, {1 << 20, 4097}, {(3 << 20) + 17, 70000}, {50, 9}};
    int seed = 70;
    for (const auto& [off, len] : writes) {
      std::string data = tu::RandomPattern(len, seed++);
      ASSERT_TRUE(PwriteAll(fd, data, off));
      if (model.size() < off + len) model.resize(off + len, '\0');
      model.replace(off, len, data);
    }
    if (fsync_it) ASSERT_EQ(fsync(fd), 0);
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<size_t>(st.st_size), model.size()) << name;
    ASSERT_EQ(close(fd), 0);
  }
  CheckWithKernel([&](const std::string& k) {
    EXPECT_TRUE(tu::ReadAll(k + "/synced") == synced);
    EXPECT_TRUE(tu::ReadAll(k + "/unsynced") == unsynced);
  });
}

// A write by a user without CAP_FSETID clears S_ISUID, and S_ISGID with group execute, as on
// kernel ext4, though the data only reaches the page cache.
TEST_F(WritebackTest, WriteByAnotherUserKillsSuidSgid) {
  Mount("rw,writeback_cache", /*expect_cache=*/true);
  for (const char* name : {"suid", "sgid_noexec"}) {
    ASSERT_TRUE(tu::WriteFile(M(name), tu::RandomPattern(3000, 4)));
  }
  ASSERT_EQ(chmod(M("suid").c_str(), 06777), 0);
  ASSERT_EQ(chmod(M("sgid_noexec").c_str(), 02766), 0);  // sgid without group x: kept
  for (const char* name : {"suid", "sgid_noexec"}) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Opened as root (the test directory is private), written as nobody.
      int fd = open(M(name).c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) _exit(3);
      if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0) _exit(2);
      if (pwrite(fd, "w", 1, 10) != 1) _exit(4);
      _exit(close(fd) == 0 ? 0 : 5);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << name << " " << status;
  }
  struct stat st;
  ASSERT_EQ(stat(M("suid").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0777u);
  ASSERT_EQ(stat(M("sgid_noexec").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 02766u);
  CheckWithKernel([&](const std::string& k) {
    struct stat kst;
    ASSERT_EQ(stat((k + "/suid").c_str(), &kst), 0);
    EXPECT_EQ(kst.st_mode & 07777, 0777u);
    ASSERT_EQ(stat((k + "/sgid_noexec").c_str(), &kst), 0);
    EXPECT_EQ(kst.st_mode & 07777, 02766u);
    EXPECT_EQ(tu::ReadAll(k + "/suid")[10], 'w');
  });
}

// SEEK_DATA/SEEK_HOLE and a punch past the image's EOF while the data that extends the file is
// still dirty in the kernel: the answers are kernel ext4's (the server has the kernel write the
// file back first).
TEST_F(WritebackTest, SeekAndPunchSeeDirtyData) {
  Mount("rw,writeback_cache", /*expect_cache=*/true);
  int fd = open(M("sparse").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  const std::string data = tu::RandomPattern(8192, 5);
  ASSERT_TRUE(PwriteAll(fd, data, 1 << 20));
  EXPECT_EQ(lseek(fd, 0, SEEK_DATA), 1 << 20);
  EXPECT_EQ(lseek(fd, 1 << 20, SEEK_HOLE), (1 << 20) + 8192);
  EXPECT_EQ(lseek(fd, 0, SEEK_HOLE), 0);
  // Preallocated blocks, then a write past them that only the kernel knows of yet; a punch
  // of the preallocated range must free it, as ext4 (whose i_size covers it) does.
  int g = open(M("prealloc").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(g, 0);
  ASSERT_EQ(fallocate(g, FALLOC_FL_KEEP_SIZE, 0, 1 << 20), 0);
  ASSERT_TRUE(PwriteAll(g, data, 2 << 20));
  ASSERT_EQ(fallocate(g, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1 << 20), 0);
  ASSERT_EQ(fsync(g), 0);
  struct stat st;
  ASSERT_EQ(fstat(g, &st), 0);
  EXPECT_EQ(st.st_size, (2 << 20) + 8192);
  EXPECT_LE(st.st_blocks, 8192 / 512 + 8) << "the punched preallocation is still allocated";
  close(g);
  close(fd);
  CheckWithKernel([&](const std::string& k) {
    std::string expected(1 << 20, '\0');
    expected += data;
    EXPECT_TRUE(tu::ReadAll(k + "/sparse") == expected);
  });
}

// A full image: the buffered writes succeed, the error comes from fsync and close (README
// "Writeback cache"), and the image stays consistent.
TEST_F(WritebackTest, EnospcIsReportedByFsyncAndClose) {
  Mount("rw,writeback_cache", /*expect_cache=*/true);
  int fd = open(M("big").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  const std::string chunk(1 << 20, 'x');
  int write_errno = 0;
  for (int i = 0; i < 160 && write_errno == 0; ++i) {  // 160 MiB into a 128 MiB image
    if (write(fd, chunk.data(), chunk.size()) < 0) write_errno = errno;
  }
  int fsync_errno = fsync(fd) == 0 ? 0 : errno;
  int close_errno = close(fd) == 0 ? 0 : errno;
  EXPECT_TRUE(write_errno == ENOSPC || fsync_errno == ENOSPC || close_errno == ENOSPC)
      << write_errno << " " << fsync_errno << " " << close_errno;
  ASSERT_EQ(unlink(M("big").c_str()), 0);
  CheckWithKernel([&](const std::string&) {});
}

}  // namespace
}  // namespace iomapfs
