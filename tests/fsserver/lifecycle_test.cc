// The server binary's life cycle: help and version, option errors, daemon start, and clean
// shutdown on unmount, SIGINT and SIGTERM (the mount is gone and the process exits 0).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs {
namespace {

namespace tu = ::iomapfs::testing;
using tu::TempDir;

const std::string kBinary = IOMAPFS_BINARY;

class LifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!tu::IsRoot()) GTEST_SKIP() << "mounting needs root in this test";
    if (access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/fuse is not usable";
    ASSERT_EQ(tu::MakeHelloImage(dir_, &image_, &mnt_), "");
  }
  void TearDown() override {
    if (!mnt_.empty() && tu::IsMountPoint(mnt_)) tu::Run({"umount", "-l", mnt_});
  }

  // Starts the server in the foreground as a child; returns its pid once the mount is live.
  pid_t StartForeground() {
    pid_t pid = fork();
    if (pid == 0) {
      int devnull = open("/dev/null", O_WRONLY);
      dup2(devnull, 1);
      execl(kBinary.c_str(), kBinary.c_str(), image_.c_str(), mnt_.c_str(), "-f", "-o", "ro",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    EXPECT_TRUE(tu::WaitFor([&] { return tu::IsMountPoint(mnt_); })) << "mount did not appear";
    return pid;
  }

  int WaitExit(pid_t pid) {
    int status = 0;
    bool exited = tu::WaitFor([&] { return waitpid(pid, &status, WNOHANG) == pid; });
    if (!exited) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  TempDir dir_;
  std::string image_;
  std::string mnt_;
};

TEST(CliTest, HelpAndVersion) {
  auto help = tu::Run({kBinary, "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("usage: iomapfs IMAGE MOUNTPOINT"), std::string::npos);
  for (const char* opt : {"fakeroot", "allow_other", "offset=BYTES", "norecovery", "-f", "-d",
                          "/dev/fd/N", "iomap=auto|off"}) {
    EXPECT_NE(help.output.find(opt), std::string::npos) << opt;
  }
  auto version = tu::Run({kBinary, "--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_NE(version.output.find("iomapfs "), std::string::npos);
}

TEST(CliTest, BadArgumentsAreRefusedClearly) {
  auto none = tu::Run({kBinary});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.output.find("need an IMAGE and a MOUNTPOINT"), std::string::npos);
  auto bad = tu::Run({kBinary, "img", "mnt", "-o", "nonsense"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.output.find("unknown option 'nonsense'"), std::string::npos) << bad.output;
  auto off = tu::Run({kBinary, "img", "mnt", "-o", "offset=12x"});
  EXPECT_EQ(off.exit_code, 2);
  EXPECT_NE(off.output.find("bad offset"), std::string::npos) << off.output;
  auto rw = tu::Run({kBinary, "img", "mnt", "-o", "rw,ro"});
  EXPECT_NE(rw.exit_code, 0);
  EXPECT_NE(rw.output.find("contradict"), std::string::npos) << rw.output;
}

TEST_F(LifecycleTest, DaemonServesAndExitsOnUnmount) {
  auto r = tu::Run({kBinary, image_, mnt_, "-o", "ro"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(tu::IsMountPoint(mnt_));
  std::ifstream f(mnt_ + "/hello");
  std::string line;
  std::getline(f, line);
  EXPECT_EQ(line, "hello world");
  f.close();
  ASSERT_EQ(tu::Run({"umount", mnt_}).exit_code, 0);
  // The daemon must be gone: no process still holds the image open for writing or reading.
  EXPECT_TRUE(tu::WaitFor([&] {
    return tu::Run({"fuser", image_}).exit_code != 0;
  })) << "server still running after unmount";
}

TEST_F(LifecycleTest, ForegroundExitsZeroOnUnmount) {
  pid_t pid = StartForeground();
  ASSERT_EQ(tu::Run({"umount", mnt_}).exit_code, 0);
  EXPECT_EQ(WaitExit(pid), 0);
}

TEST_F(LifecycleTest, SigtermUnmountsAndExitsZero) {
  pid_t pid = StartForeground();
  kill(pid, SIGTERM);
  EXPECT_EQ(WaitExit(pid), 0);
  EXPECT_FALSE(tu::IsMountPoint(mnt_));
}

TEST_F(LifecycleTest, SigintUnmountsAndExitsZero) {
  pid_t pid = StartForeground();
  kill(pid, SIGINT);
  EXPECT_EQ(WaitExit(pid), 0);
  EXPECT_FALSE(tu::IsMountPoint(mnt_));
}

TEST_F(LifecycleTest, MissingMountpointFails) {
  auto r = tu::Run({kBinary, image_, dir_.Sub("no-such-dir"), "-o", "ro"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("bad mountpoint"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace iomapfs
