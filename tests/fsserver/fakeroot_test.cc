// Unprivileged read-write with fakeroot: a normal user (nobody) mounts an image it owns whose
// root directory is owned by root (mke2fs's default), and writes into it, which only fakeroot
// allows: every permission check passes as for root, and the kernel does none with the real
// credentials (no default_permissions, no FUSE_POSIX_ACL). New files belong to the caller's uid
// and gid, as with fuse2fs -o fakeroot. The user unmounts with `fusermount3 -u`; the image is
// clean and kernel ext4 shows what was written. /dev/fuse is made 0666 for the test.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
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
constexpr uid_t kUser = 65534;  // nobody
constexpr gid_t kGroup = 65534;

// The mount options of `path` in /proc/self/mounts, or "" if it is not mounted.
std::string MountOptions(const std::string& path) {
  std::ifstream mounts("/proc/self/mounts");
  std::string dev, mnt, type, opts, rest;
  while (mounts >> dev >> mnt >> type >> opts && std::getline(mounts, rest)) {
    if (mnt == path) return type + " " + opts;
  }
  return "";
}

// Runs a shell command line as the unprivileged user, with umask 022.
tu::CommandResult RunAsUser(const std::string& command_line) {
  return tu::Run({"setpriv", "--reuid=" + std::to_string(kUser),
                  "--regid=" + std::to_string(kGroup), "--clear-groups", "sh", "-c",
                  "umask 022; " + command_line});
}

class FakerootTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string skip = tu::MountTestSkipReason(kBinary);
    if (!skip.empty()) GTEST_SKIP() << skip;
    if (access("/usr/bin/fusermount3", X_OK) != 0) GTEST_SKIP() << "fusermount3 is missing";
    if (access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "setpriv is missing";
    struct stat st;
    ASSERT_EQ(stat("/dev/fuse", &st), 0);
    fuse_mode_ = st.st_mode & 07777;
    ASSERT_EQ(chmod("/dev/fuse", 0666), 0);
    ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
    // A root-owned file only root may read, in a root-owned root directory.
    std::string src = dir_.Sub("src");
    ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
    ASSERT_TRUE(tu::WriteFile(src + "/secret", "root only\n"));
    ASSERT_EQ(chmod((src + "/secret").c_str(), 0600), 0);
    image_ = dir_.Sub("user.img");
    ASSERT_EQ(tu::MakeImage(image_, 32 << 20, "ext4", {}, src), "");
    mnt_ = dir_.Sub("mnt");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
    ASSERT_EQ(chown(image_.c_str(), kUser, kGroup), 0);
    ASSERT_EQ(chown(mnt_.c_str(), kUser, kGroup), 0);
  }
  void TearDown() override {
    if (!mnt_.empty() && tu::IsMountPoint(mnt_)) tu::Run({"umount", "-l", mnt_});
    if (fuse_mode_ != 0) chmod("/dev/fuse", fuse_mode_);
  }

  // Unmounts as the user and waits for the daemon to let go of the image.
  void UserUnmount() {
    tu::CommandResult um = RunAsUser("fusermount3 -u " + mnt_);
    EXPECT_EQ(um.exit_code, 0) << um.output;
    EXPECT_FALSE(tu::IsMountPoint(mnt_));
    EXPECT_EQ(tu::WaitServerExit(kBinary, mnt_, 20), "");
  }

  tu::TempDir dir_;
  std::string image_;
  std::string mnt_;
  mode_t fuse_mode_ = 0;
};

TEST_F(FakerootTest, UserWritesIntoRootOwnedDirectory) {
  tu::CommandResult r =
      RunAsUser(std::string(kBinary) + " " + image_ + " " + mnt_ + " -o rw,fakeroot");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string opts = MountOptions(mnt_);
  EXPECT_NE(opts.find("user_id=65534"), std::string::npos) << opts;
  EXPECT_EQ(opts.find("default_permissions"), std::string::npos) << opts;
  EXPECT_EQ(RunAsUser("stat -c '%u:%g %a' " + mnt_).output, "0:0 755\n");

  const std::string m = mnt_;
  tu::CommandResult w = RunAsUser(
      "set -e; mkdir " + m + "/dir; echo hello > " + m + "/dir/file; mkdir -p " + m +
      "/a/b/c; ln -s dir/file " + m + "/link; cat " + m + "/secret > " + m +
      "/copy; echo more >> " + m + "/secret; touch " + m + "/given; chown 0:0 " + m +
      "/given; mv " + m + "/a/b " + m + "/b; rmdir " + m + "/b/c; chmod 0700 " + m + "/dir");
  ASSERT_EQ(w.exit_code, 0) << w.output;
  // Ownership under fakeroot: the caller's ids, as fuse2fs gives them.
  EXPECT_EQ(RunAsUser("stat -c '%u:%g %a' " + m + "/dir/file").output, "65534:65534 644\n");
  EXPECT_EQ(RunAsUser("stat -c '%u:%g %a' " + m + "/dir").output, "65534:65534 700\n");
  EXPECT_EQ(RunAsUser("stat -c '%u:%g' " + m + "/given").output, "0:0\n");
  EXPECT_EQ(RunAsUser("cat " + m + "/link").output, "hello\n");
  UserUnmount();

  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
  std::string kernel = tu::WithKernelMount(image_, dir_.Sub("kmnt"), [&](const std::string& k) {
    EXPECT_EQ(tu::RunShell("cd " + k + " && ls -A | tr '\\n' ' '").output,
              "a b copy dir given link lost+found secret ");
    EXPECT_EQ(tu::Run({"cat", k + "/dir/file"}).output, "hello\n");
    EXPECT_EQ(tu::Run({"cat", k + "/copy"}).output, "root only\n");
    EXPECT_EQ(tu::Run({"cat", k + "/secret"}).output, "root only\nmore\n");
    EXPECT_EQ(tu::Run({"readlink", k + "/link"}).output, "dir/file\n");
    EXPECT_EQ(tu::Run({"stat", "-c", "%u:%g %a", k + "/dir/file"}).output, "65534:65534 644\n");
    EXPECT_EQ(tu::Run({"stat", "-c", "%u:%g %a", k + "/dir"}).output, "65534:65534 700\n");
    EXPECT_EQ(tu::Run({"stat", "-c", "%u:%g %a", k + "/secret"}).output, "0:0 600\n");
    EXPECT_EQ(tu::Run({"stat", "-c", "%u:%g", k + "/given"}).output, "0:0\n");
    EXPECT_EQ(tu::Run({"ls", "-A", k + "/a"}).output, "");
    EXPECT_EQ(tu::Run({"ls", "-A", k + "/b"}).output, "");
  });
  EXPECT_EQ(kernel, "");
}

TEST_F(FakerootTest, WithoutFakerootTheUserIsRefused) {
  tu::CommandResult r = RunAsUser(std::string(kBinary) + " " + image_ + " " + mnt_ + " -o rw");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(MountOptions(mnt_).find("default_permissions"), std::string::npos);
  tu::CommandResult w = RunAsUser("mkdir " + mnt_ + "/dir");
  EXPECT_NE(w.exit_code, 0);
  EXPECT_NE(w.output.find("Permission denied"), std::string::npos) << w.output;
  w = RunAsUser("cat " + mnt_ + "/secret");
  EXPECT_NE(w.output.find("Permission denied"), std::string::npos) << w.output;
  UserUnmount();
  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
}

TEST_F(FakerootTest, AsRootFakerootKeepsOtherUsersOut) {
  // allow_other with fakeroot would give every user root's rights in the mount.
  tu::ServerMount mount;
  ASSERT_EQ(mount.Start(kBinary, image_, mnt_, "rw,fakeroot"), "");
  std::string opts = MountOptions(mnt_);
  EXPECT_EQ(opts.find("allow_other"), std::string::npos) << opts;
  EXPECT_EQ(opts.find("default_permissions"), std::string::npos) << opts;
  EXPECT_TRUE(tu::WriteFile(mnt_ + "/by-root", "x"));
  tu::CommandResult other = RunAsUser("ls " + mnt_);
  EXPECT_NE(other.exit_code, 0);
  EXPECT_NE(other.output.find("Permission denied"), std::string::npos) << other.output;
  ASSERT_EQ(mount.Stop(), "");
  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
}

}  // namespace
}  // namespace iomapfs
