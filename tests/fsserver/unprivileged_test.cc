// The unprivileged path: a normal user mounts an image it owns through fusermount3 (libfuse's
// setuid helper), reads it, and unmounts it with `fusermount3 -u`. /dev/fuse is 0600 on this
// machine and 0666 on most distributions, so the test opens it up for its duration.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/test_util.h"

namespace iomapfs {
namespace {

namespace tu = ::iomapfs::testing;

const std::string kBinary = IOMAPFS_BINARY;
constexpr uid_t kUser = 65534;  // nobody
constexpr gid_t kGroup = 65534;

bool IsMounted(const std::string& path, std::string* options = nullptr) {
  std::ifstream mounts("/proc/self/mounts");
  std::string dev, mnt, type, opts, rest;
  while (mounts >> dev >> mnt >> type >> opts && std::getline(mounts, rest)) {
    if (mnt == path) {
      if (options) *options = type + " " + opts;
      return true;
    }
  }
  return false;
}

// Runs argv as the unprivileged user; returns its exit status and output.
tu::CommandResult RunAsUser(const std::vector<std::string>& argv) {
  std::vector<std::string> cmd = {"setpriv", "--reuid=" + std::to_string(kUser),
                                  "--regid=" + std::to_string(kGroup), "--clear-groups"};
  cmd.insert(cmd.end(), argv.begin(), argv.end());
  return tu::Run(cmd);
}

class UnprivilegedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!tu::IsRoot()) GTEST_SKIP() << "needs root to set up the user, /dev/fuse and files";
    if (access("/usr/bin/fusermount3", X_OK) != 0) GTEST_SKIP() << "fusermount3 is missing";
    struct stat st;
    if (stat("/dev/fuse", &st) != 0) GTEST_SKIP() << "/dev/fuse is missing";
    fuse_mode_ = st.st_mode & 07777;
    ASSERT_EQ(chmod("/dev/fuse", 0666), 0);
    ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
    std::string src = dir_.Sub("src");
    mkdir(src.c_str(), 0755);
    ASSERT_TRUE(tu::WriteFile(src + "/hello", "hello from a user mount\n"));
    image_ = dir_.Sub("user.img");
    ASSERT_EQ(tu::MakeImage(image_, 16 << 20, "ext4", {}, src), "");
    mnt_ = dir_.Sub("mnt");
    mkdir(mnt_.c_str(), 0755);
    ASSERT_EQ(chown(image_.c_str(), kUser, kGroup), 0);
    ASSERT_EQ(chown(mnt_.c_str(), kUser, kGroup), 0);
  }
  void TearDown() override {
    if (!mnt_.empty() && IsMounted(mnt_)) tu::Run({"umount", "-l", mnt_});
    if (fuse_mode_ != 0) chmod("/dev/fuse", fuse_mode_);
  }

  tu::TempDir dir_;
  std::string image_;
  std::string mnt_;
  mode_t fuse_mode_ = 0;
};

TEST_F(UnprivilegedTest, UserMountsReadsAndUnmountsItsImage) {
  tu::CommandResult r = RunAsUser({kBinary, image_, mnt_, "-o", "ro"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string opts;
  ASSERT_TRUE(IsMounted(mnt_, &opts));
  EXPECT_NE(opts.find("fuse.iomapfs"), std::string::npos) << opts;
  EXPECT_NE(opts.find("user_id=65534"), std::string::npos) << opts;

  tu::CommandResult cat = RunAsUser({"cat", mnt_ + "/hello"});
  EXPECT_EQ(cat.exit_code, 0);
  EXPECT_EQ(cat.output, "hello from a user mount\n");

  tu::CommandResult um = RunAsUser({"fusermount3", "-u", mnt_});
  EXPECT_EQ(um.exit_code, 0) << um.output;
  EXPECT_FALSE(IsMounted(mnt_));
  // The server notices the unmount and exits: nothing holds the image any more.
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = tu::Run({"fuser", image_}).exit_code != 0;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_TRUE(gone) << "server still running after fusermount3 -u";
}

TEST_F(UnprivilegedTest, UserCannotServeAnImageItCannotRead) {
  ASSERT_EQ(chown(image_.c_str(), 0, 0), 0);
  ASSERT_EQ(chmod(image_.c_str(), 0600), 0);
  tu::CommandResult r = RunAsUser({kBinary, image_, mnt_, "-o", "ro"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("Permission denied"), std::string::npos) << r.output;
  EXPECT_FALSE(IsMounted(mnt_));
}

}  // namespace
}  // namespace iomapfs
