// Bad input at mount time: iomapfs must exit non-zero with a message that names the problem,
// and leave neither a mount nor a daemon behind. And bad data after mount: a file whose extent
// tree is corrupt fails with EUCLEAN while the rest of the filesystem stays readable and the
// server keeps running.
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::testing {
namespace {

#ifdef IOMAPFS_BINARY
constexpr const char* kBinary = IOMAPFS_BINARY;
#else
constexpr const char* kBinary = nullptr;
#endif

constexpr uint64_t kMiB = uint64_t{1} << 20;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool ContainsAny(const std::string& text, const std::vector<std::string>& needles) {
  const std::string lower = Lower(text);
  return std::any_of(needles.begin(), needles.end(), [&](const std::string& n) {
    return lower.find(Lower(n)) != std::string::npos;
  });
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    s[i] = static_cast<char>(seed >> 56);
  }
  return s;
}

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = MountTestSkipReason(kBinary); !why.empty()) GTEST_SKIP() << why;
    mountpoint_ = tmp_.Sub("mnt");
    ASSERT_EQ(mkdir(mountpoint_.c_str(), 0755), 0);
    source_ = tmp_.Sub("src");
    ASSERT_EQ(mkdir(source_.c_str(), 0755), 0);
    ASSERT_EQ(mkdir((source_ + "/sub").c_str(), 0755), 0);
    contents_ = {{"good1", RandomBytes(100000, 1)},
                 {"good2", RandomBytes(50, 2)},
                 {"bad", RandomBytes(65536, 3)},
                 {"sub/good3", RandomBytes(300000, 4)}};
    for (const auto& [name, data] : contents_) {
      ASSERT_TRUE(WriteFile(source_ + "/" + name, data));
    }
  }

  // Makes a 64 MiB image holding the source tree.
  std::string MakeSourceImage(const std::string& path, const std::vector<std::string>& args = {}) {
    return MakeImage(path, 64 * kMiB, "ext4", args, source_);
  }

  // Runs iomapfs on `image` and expects it to fail: non-zero exit, a message containing one of
  // `keywords`, no mount and no daemon left.
  void ExpectRefused(const std::string& image, const std::string& mountpoint,
                     const std::string& options, const std::vector<std::string>& keywords) {
    std::vector<std::string> args = {image, mountpoint};
    if (!options.empty()) {
      args.push_back("-o");
      args.push_back(options);
    }
    ServerResult r = RunServer(kBinary, args);
    MountGuard guard;  // clean up if it did mount after all
    if (IsMountPoint(mountpoint)) guard.Arm(mountpoint);
    EXPECT_FALSE(r.timed_out) << "iomapfs did not exit within 30 s";
    EXPECT_NE(r.exit_code, 0) << "iomapfs accepted it; output:\n" << r.output;
    EXPECT_NE(r.exit_code, -1) << "iomapfs was killed by a signal; output:\n" << r.output;
    EXPECT_FALSE(guard.armed()) << mountpoint << " is mounted after a refused mount";
    EXPECT_TRUE(ContainsAny(r.output, keywords))
        << "the message does not name the problem (expected one of: "
        << ::testing::PrintToString(keywords) << "); output:\n"
        << r.output;
    EXPECT_EQ(WaitServerExit(kBinary, mountpoint, 5), "") << "a daemon was left running";
  }

  TempDir tmp_;
  std::string mountpoint_, source_;
  std::map<std::string, std::string> contents_;
};

TEST_F(BadInputTest, NotExt4) {
  const std::string image = tmp_.Sub("random.img");
  ASSERT_TRUE(WriteFile(image, RandomBytes(4 * kMiB, 42)));
  ExpectRefused(image, mountpoint_, "ro",
                {"not an ext", "ext2", "ext3", "ext4", "superblock", "magic", "bad"});
}

TEST_F(BadInputTest, TruncatedImage) {
  const std::string image = tmp_.Sub("truncated.img");
  ASSERT_EQ(MakeSourceImage(image), "");
  ASSERT_EQ(truncate(image.c_str(), 32 * kMiB), 0);
  ExpectRefused(image, mountpoint_, "ro",
                {"truncat", "short", "size", "exceeds", "beyond", "block count", "smaller"});
}

// Sets bit 30 of s_feature_incompat (offset 0x60 in the superblock at 1024), which no ext4 knows.
// Without metadata_csum, so that the superblock checksum does not hide the feature check.
TEST_F(BadInputTest, UnknownIncompatFeature) {
  const std::string image = tmp_.Sub("incompat.img");
  ASSERT_EQ(MakeSourceImage(image, {"-O", "^metadata_csum"}), "");
  int fd = open(image.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  uint8_t b[4];
  ASSERT_EQ(pread(fd, b, 4, 1024 + 0x60), 4);
  b[3] |= 0x40;  // little-endian: bit 30
  ASSERT_EQ(pwrite(fd, b, 4, 1024 + 0x60), 4);
  close(fd);
  ExpectRefused(image, mountpoint_, "ro", {"FEATURE_I30", "0x40000000", "bit 30"});
}

// The same through debugfs on a metadata_csum image (debugfs rewrites the checksum).
TEST_F(BadInputTest, UnknownIncompatFeatureWithChecksums) {
  const std::string image = tmp_.Sub("incompat_csum.img");
  ASSERT_EQ(MakeSourceImage(image), "");
  CommandResult r = iomapfs::testing::Run({"debugfs", "-w", "-R", "feature FEATURE_I30", image});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  int fd = open(image.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  uint8_t b[4];
  ASSERT_EQ(pread(fd, b, 4, 1024 + 0x60), 4);
  close(fd);
  ASSERT_TRUE(b[3] & 0x40) << "debugfs did not set the bit";
  ExpectRefused(image, mountpoint_, "ro", {"FEATURE_I30", "0x40000000", "bit 30"});
}

TEST_F(BadInputTest, MissingImage) {
  ExpectRefused(tmp_.Sub("no-such.img"), mountpoint_, "ro", {"no-such.img", "No such file"});
}

TEST_F(BadInputTest, MissingMountpoint) {
  const std::string image = tmp_.Sub("good.img");
  ASSERT_EQ(MakeSourceImage(image), "");
  ExpectRefused(image, tmp_.Sub("no-such-dir"), "ro", {"no-such-dir", "mountpoint", "mount point"});
}

TEST_F(BadInputTest, BadOption) {
  const std::string image = tmp_.Sub("good.img");
  ASSERT_EQ(MakeSourceImage(image), "");
  ExpectRefused(image, mountpoint_, "ro,nonsense", {"nonsense"});
}

TEST_F(BadInputTest, BadOffset) {
  const std::string image = tmp_.Sub("good.img");
  ASSERT_EQ(MakeSourceImage(image), "");
  ExpectRefused(image, mountpoint_, "ro,offset=banana", {"offset", "banana"});
}

// One file's extent header magic is zeroed. Reading it fails with EUCLEAN (EFSCORRUPTED, which
// the kernel passes through from the server); everything else still reads, and the server keeps
// serving.
TEST_F(BadInputTest, CorruptExtentTreeInOneFile) {
  const std::string image = tmp_.Sub("corrupt.img");
  ASSERT_EQ(MakeSourceImage(image), "");
  CommandResult r = iomapfs::testing::Run({"debugfs", "-w", "-R", "sif /bad block[0] 0", image});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string fsck;
  ASSERT_FALSE(FsckClean(image, &fsck)) << "the corruption did not take:\n" << fsck;

  ServerMount server;
  ASSERT_EQ(server.Start(kBinary, image, mountpoint_, "ro"), "");
  const std::string bad = mountpoint_ + "/bad";
  for (int attempt = 0; attempt < 2; ++attempt) {
    int fd = open(bad.c_str(), O_RDONLY);
    if (fd < 0) {
      EXPECT_EQ(errno, EUCLEAN) << "open(bad) failed with " << strerrorname_np(errno);
      continue;
    }
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf));
    int err = errno;
    close(fd);
    EXPECT_EQ(n, -1) << "read of the corrupt file succeeded";
    if (n < 0) {
      EXPECT_EQ(err, EUCLEAN) << "read(bad) failed with " << strerrorname_np(err);
    }
  }
  for (const auto& [name, data] : contents_) {
    if (name == "bad") continue;
    std::string got;
    int fd = open((mountpoint_ + "/" + name).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << name << ": " << strerror(errno);
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) got.append(buf, n);
    EXPECT_EQ(n, 0) << name << ": " << strerror(errno);
    close(fd);
    EXPECT_TRUE(got == data) << name << " reads back wrong (" << got.size() << " bytes)";
  }
  struct stat st;
  EXPECT_EQ(stat((mountpoint_ + "/sub/good3").c_str(), &st), 0) << strerror(errno);
  EXPECT_EQ(st.st_size, 300000);
  EXPECT_TRUE(IsMountPoint(mountpoint_)) << "the server's mount went away";
  EXPECT_FALSE(FindServerProcesses(kBinary, mountpoint_).empty()) << "the server died";
  EXPECT_EQ(server.Stop(), "");
}

}  // namespace
}  // namespace iomapfs::testing
