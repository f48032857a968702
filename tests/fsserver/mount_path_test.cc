// How the server gets its mount, as root on this kernel:
//   - its own mount(2) with FUSE_DEV_IOC_SYNC_INIT: the mount table entry is the one libfuse's
//     mount would make (compared against a real libfuse mount of the same options), and INIT is
//     answered inside mount(2) (a server that fails INIT fails the mount command);
//   - FUSE_DEV_IOC_ADD_IOMAP before mount(2): whatever this kernel answers, the mount serves;
//   - a /dev/fuse fd mounted by a privileged parent and passed as /dev/fd/N, and bad /dev/fd/N
//     arguments refused with a clear message.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#define FUSE_USE_VERSION 314
#include <fuse3/fuse_lowlevel.h>

#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs {
namespace {

namespace tu = ::iomapfs::testing;

const std::string kBinary = IOMAPFS_BINARY;
// spec/fuse-iomap-protocol.md §11 and spec/fuse-mainline-7.45-and-io-uring.md §6.
constexpr unsigned long kSyncInit = _IO(229, 3);
constexpr unsigned long kAddIomap = _IO(229, 101);

// The fields of a /proc/self/mountinfo line that describe the mount itself (not its ids).
struct MountEntry {
  std::string mount_options, fs_type, source, super_options;
  bool operator==(const MountEntry&) const = default;
};
std::ostream& operator<<(std::ostream& os, const MountEntry& e) {
  return os << "{" << e.mount_options << " | " << e.fs_type << " | " << e.source << " | "
            << e.super_options << "}";
}

bool FindMount(const std::string& mountpoint, MountEntry* out) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, mnt, opts, field;
    ls >> id >> parent >> devno >> root >> mnt >> opts;
    if (mnt != mountpoint) continue;
    while (ls >> field && field != "-") {
    }
    ls >> out->fs_type >> out->source >> out->super_options;
    out->mount_options = opts;
    return true;
  }
  return false;
}

// The errno of `request` on a fresh, unbound /dev/fuse fd (0: accepted).
int ProbeUnboundIoctl(unsigned long request) {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = ioctl(fd, request) == 0 ? 0 : errno;
  close(fd);
  return err;
}

class MountPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = tu::MountTestSkipReason(kBinary.c_str()); !why.empty()) {
      GTEST_SKIP() << why;
    }
    ASSERT_EQ(tu::MakeHelloImage(dir_, &image_, &mnt_), "");
  }
  void TearDown() override {
    if (!mnt_.empty() && tu::IsMountPoint(mnt_)) umount2(mnt_.c_str(), MNT_DETACH);
  }

  // Starts `iomapfs IMAGE MNT -f args...` with stderr to a file; waits for the mount and for
  // the "serving" line. Returns the pid (-1 on failure).
  pid_t StartForeground(const std::vector<std::string>& args) {
    log_ = dir_.Sub("server" + std::to_string(++starts_) + ".log");  // fresh: no old "serving"
    pid_t pid = fork();
    if (pid == 0) {
      int out = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      dup2(out, 2);
      std::vector<std::string> argv = {kBinary, image_, mnt_, "-f"};
      argv.insert(argv.end(), args.begin(), args.end());
      std::vector<char*> cargs;
      for (auto& a : argv) cargs.push_back(a.data());
      cargs.push_back(nullptr);
      execv(cargs[0], cargs.data());
      _exit(127);
    }
    if (!tu::WaitFor([&] { return tu::ReadAll(log_).find("serving ") != std::string::npos; })) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      ADD_FAILURE() << "server did not report serving; log:\n" << tu::ReadAll(log_);
      return -1;
    }
    return pid;
  }

  // Unmounts and returns the foreground server's exit code (-1: killed or hung).
  int StopForeground(pid_t pid) {
    EXPECT_EQ(umount(mnt_.c_str()), 0) << strerror(errno);
    int status = 0;
    if (!tu::WaitFor([&] { return waitpid(pid, &status, WNOHANG) == pid; })) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  tu::TempDir dir_;
  std::string image_, mnt_, log_;
  int starts_ = 0;
};

// The oracle: what libfuse's own mount (mount(2) as root) puts in the mount table for the
// option string the server handed libfuse before it mounted itself.
MountEntry LibfuseMountEntry(const std::string& mountpoint, const std::string& options) {
  MountEntry e;
  std::string opt_arg = "-o" + options;
  const char* argv[] = {"iomapfs", opt_arg.c_str()};
  fuse_args args = FUSE_ARGS_INIT(2, const_cast<char**>(argv));
  fuse_lowlevel_ops no_ops{};
  fuse_session* se = fuse_session_new(&args, &no_ops, sizeof(no_ops), nullptr);
  if (se == nullptr) {
    ADD_FAILURE() << "fuse_session_new refused " << options;
    return e;
  }
  if (fuse_session_mount(se, mountpoint.c_str()) != 0) {
    ADD_FAILURE() << "libfuse could not mount with " << options;
  } else {
    EXPECT_TRUE(FindMount(mountpoint, &e));
    fuse_session_unmount(se);
  }
  fuse_session_destroy(se);
  return e;
}

struct OptionCase {
  std::vector<std::string> server_args;  // -o for iomapfs
  std::string libfuse_options;           // what the server passed libfuse for them, as root
};

TEST_F(MountPathTest, OwnMountHasTheMountTableEntryOfALibfuseMount) {
  const std::string fsname = image_;  // no ',' or '\' in it: no escaping needed
  const std::vector<OptionCase> cases = {
      {{"-o", "ro"},
       "ro,default_permissions,subtype=iomapfs,fsname=" + fsname + ",allow_other,dev,suid"},
      {{"-o", "rw,nodev,nosuid,noexec,noatime"},
       "rw,default_permissions,subtype=iomapfs,fsname=" + fsname +
           ",nodev,nosuid,noexec,noatime,allow_other"},
      {{"-o", "ro,fakeroot,nosuid,exec"},
       "ro,subtype=iomapfs,fsname=" + fsname + ",nosuid,exec,dev"},
  };
  for (const OptionCase& c : cases) {
    SCOPED_TRACE(c.libfuse_options);
    MountEntry oracle = LibfuseMountEntry(mnt_, c.libfuse_options);
    ASSERT_FALSE(tu::IsMountPoint(mnt_)) << "libfuse's mount is still there";
    ASSERT_EQ(oracle.fs_type, "fuse.iomapfs");

    std::vector<std::string> args = {image_, mnt_};
    args.insert(args.end(), c.server_args.begin(), c.server_args.end());
    tu::ServerResult r = tu::RunServer(kBinary, args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    MountEntry ours;
    ASSERT_TRUE(FindMount(mnt_, &ours));
    EXPECT_EQ(ours, oracle);
    EXPECT_EQ(tu::ReadAll(mnt_ + "/hello"), "hello world\n");
    ASSERT_EQ(umount(mnt_.c_str()), 0) << strerror(errno);
    EXPECT_EQ(tu::WaitServerExit(kBinary, mnt_), "");
  }
  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
}

TEST_F(MountPathTest, InitIsAnsweredInsideMount) {
  const int probe = ProbeUnboundIoctl(kSyncInit);
  if (probe == ENOTTY) GTEST_SKIP() << "this kernel has no FUSE_DEV_IOC_SYNC_INIT (before 6.18)";
  ASSERT_EQ(probe, 0) << strerror(probe);
  // The server records whether its dispatcher had answered INIT at the moment mount(2)
  // returned; with an asynchronous INIT the reader only starts after mount(2), so it cannot.
  pid_t pid = StartForeground({"-o", "ro"});
  ASSERT_GT(pid, 0);
  const std::string log = tu::ReadAll(log_);
  EXPECT_NE(log.find("INIT answered inside mount(2): synchronous INIT"), std::string::npos) << log;
  EXPECT_EQ(tu::ReadAll(mnt_ + "/hello"), "hello world\n");
  EXPECT_EQ(StopForeground(pid), 0);
}

TEST_F(MountPathTest, FailedInitFailsTheMountCommand) {
  const int probe = ProbeUnboundIoctl(kSyncInit);
  if (probe == ENOTTY) GTEST_SKIP() << "this kernel has no FUSE_DEV_IOC_SYNC_INIT (before 6.18)";
  // The server's test hook answers INIT with an error; with synchronous INIT the mount command
  // itself fails and no broken mount is left behind.
  setenv("IOMAPFS_TEST_FAIL_INIT", "1", 1);
  tu::ServerResult r = tu::RunServer(kBinary, {image_, mnt_, "-o", "rw"});
  unsetenv("IOMAPFS_TEST_FAIL_INIT");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("cannot mount"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("INIT failed"), std::string::npos) << r.output;
  EXPECT_FALSE(tu::IsMountPoint(mnt_));
  EXPECT_EQ(tu::WaitServerExit(kBinary, mnt_), "");
  // The image was closed properly: clean, and not left locked.
  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
  r = tu::RunServer(kBinary, {image_, mnt_, "-o", "rw"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(tu::ReadAll(mnt_ + "/hello"), "hello world\n");
  ASSERT_EQ(umount(mnt_.c_str()), 0) << strerror(errno);
  EXPECT_EQ(tu::WaitServerExit(kBinary, mnt_), "");
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
}

TEST_F(MountPathTest, AddIomapAnswerIsHandledAndTheMountServes) {
  // What this kernel answers to FUSE_DEV_IOC_ADD_IOMAP on an unbound fd, from root with
  // CAP_SYS_RAWIO (ENOTTY on kernels without fuse-iomap, such as Linux 6.18).
  const int probe = ProbeUnboundIoctl(kAddIomap);
  pid_t pid = StartForeground({"-d", "-o", "ro,iomap=auto"});
  ASSERT_GT(pid, 0);
  const std::string log = tu::ReadAll(log_);
  const std::string expected =
      probe == 0 ? "FUSE_DEV_IOC_ADD_IOMAP accepted"
                 : std::string("FUSE_DEV_IOC_ADD_IOMAP: ") + strerror(probe) + "; classic mode";
  EXPECT_NE(log.find(expected), std::string::npos) << "expected '" << expected << "' in:\n" << log;
  EXPECT_EQ(tu::ReadAll(mnt_ + "/hello"), "hello world\n");
  EXPECT_EQ(StopForeground(pid), 0);

  // iomap=off: the ioctl is not issued at all.
  pid = StartForeground({"-d", "-o", "ro,iomap=off"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(tu::ReadAll(log_).find("FUSE_DEV_IOC_ADD_IOMAP"), std::string::npos)
      << tu::ReadAll(log_);
  EXPECT_EQ(StopForeground(pid), 0);
}

TEST_F(MountPathTest, ServesAFuseFdMountedByItsParent) {
  // The privileged helper's part: open /dev/fuse (inheritable), mount(2) it, pass it on.
  int dev = open("/dev/fuse", O_RDWR);
  ASSERT_GE(dev, 0) << strerror(errno);
  const std::string data = "fd=" + std::to_string(dev) +
                           ",rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other";
  ASSERT_EQ(mount(image_.c_str(), mnt_.c_str(), "fuse.iomapfs", MS_NOSUID | MS_NODEV, data.c_str()),
            0)
      << strerror(errno);
  const std::string fd_path = "/dev/fd/" + std::to_string(dev);
  tu::ServerResult r = tu::RunServer(kBinary, {image_, fd_path, "-o", "rw"});
  close(dev);  // the server holds its own copy now
  ASSERT_EQ(r.exit_code, 0) << r.output;

  EXPECT_EQ(tu::ReadAll(mnt_ + "/hello"), "hello world\n");
  ASSERT_TRUE(tu::WriteFile(mnt_ + "/written", "written through a passed fd\n"));
  EXPECT_EQ(tu::ReadAll(mnt_ + "/written"), "written through a passed fd\n");
  MountEntry e;
  ASSERT_TRUE(FindMount(mnt_, &e));
  EXPECT_EQ(e.fs_type, "fuse.iomapfs");

  // The helper unmounts; the server sees the connection end and exits.
  ASSERT_EQ(umount(mnt_.c_str()), 0) << strerror(errno);
  EXPECT_EQ(tu::WaitServerExit(kBinary, fd_path), "");
  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
  tu::CommandResult cat = tu::Run({"debugfs", "-R", "cat /written", image_});
  EXPECT_NE(cat.output.find("written through a passed fd"), std::string::npos) << cat.output;
}

TEST_F(MountPathTest, BadDevFdIsRefusedClearly) {
  int null = open("/dev/null", O_RDWR);
  int unbound = open("/dev/fuse", O_RDWR);
  ASSERT_GE(null, 0);
  ASSERT_GE(unbound, 0);
  struct Case {
    std::string arg, message;
  };
  const std::vector<Case> cases = {
      {"/dev/fd/" + std::to_string(null), "not a /dev/fuse file descriptor"},
      {"/dev/fd/" + std::to_string(unbound), "not mounted"},
      {"/dev/fd/999", "not an open file descriptor"},
  };
  for (const Case& c : cases) {
    tu::ServerResult r = tu::RunServer(kBinary, {image_, c.arg, "-o", "ro"});
    EXPECT_EQ(r.exit_code, 1) << c.arg << ": " << r.output;
    EXPECT_NE(r.output.find("bad mountpoint '" + c.arg + "'"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << r.output;
  }
  close(null);
  close(unbound);
}

}  // namespace
}  // namespace iomapfs
