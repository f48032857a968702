// Ext2Fs::Open diagnostics: each refusal has the documented errno and a message naming it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "ext2/ext2_fs.h"
#include "tests/support/test_util.h"

namespace iomapfs::ext2 {
namespace {

using iomapfs::testing::FsckClean;
using iomapfs::testing::MakeImage;
using iomapfs::testing::TempDir;
using iomapfs::testing::WriteFile;

constexpr uint64_t kMiB = 1024 * 1024;
constexpr off_t kIncompatOffset = 1024 + 0x60;  // s_feature_incompat in the primary superblock

bool Contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

TEST(Ext2FsOpenTest, OpensAFreshImage) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 32 * kMiB, "ext4", {"-b", "4096"}), "");
  std::string why;
  auto fs = Ext2Fs::Open(image, OpenOptions{}, &why);
  ASSERT_TRUE(fs.has_value()) << why;
  EXPECT_TRUE((*fs)->read_only());
  EXPECT_EQ((*fs)->block_size(), 4096u);
  EXPECT_EQ((*fs)->data().size(), 32 * kMiB);
  {
    auto g = (*fs)->Lock();
    EXPECT_EQ(g->super->s_magic, EXT2_SUPER_MAGIC);
  }
  EXPECT_TRUE((*fs)->Close().has_value());
  EXPECT_TRUE((*fs)->Close().has_value()) << "a second Close is a no-op";
  EXPECT_TRUE(FsckClean(image));
}

TEST(Ext2FsOpenTest, MissingFile) {
  TempDir dir;
  std::string why;
  auto fs = Ext2Fs::Open(dir.Sub("nope"), OpenOptions{}, &why);
  EXPECT_EQ(fs.error(), ENOENT);
  EXPECT_TRUE(Contains(why, "nope")) << why;
}

TEST(Ext2FsOpenTest, NotAnExtFilesystem) {
  TempDir dir;
  std::string image = dir.Sub("zeros");
  ASSERT_TRUE(WriteFile(image, std::string(kMiB, '\0')));
  std::string why;
  auto fs = Ext2Fs::Open(image, OpenOptions{}, &why);
  EXPECT_EQ(fs.error(), EINVAL);
  EXPECT_TRUE(Contains(why, "not an ext2/ext3/ext4 filesystem")) << why;
  // Too short to even hold a superblock.
  ASSERT_TRUE(WriteFile(image, "hello"));
  fs = Ext2Fs::Open(image, OpenOptions{}, &why);
  EXPECT_EQ(fs.error(), EINVAL);
  // A directory.
  fs = Ext2Fs::Open(dir.path(), OpenOptions{}, &why);
  EXPECT_NE(fs.error(), 0);
}

TEST(Ext2FsOpenTest, TruncatedImage) {
  TempDir dir;
  std::string image = dir.Sub("img");
  for (off_t keep : {off_t{16 * kMiB}, off_t{4096}}) {
    SCOPED_TRACE(keep);
    ASSERT_EQ(MakeImage(image, 64 * kMiB, "ext4", {"-b", "4096"}), "");
    ASSERT_EQ(::truncate(image.c_str(), keep), 0);
    std::string why;
    auto fs = Ext2Fs::Open(image, OpenOptions{}, &why);
    EXPECT_FALSE(fs.has_value());
    EXPECT_EQ(fs.error(), EUCLEAN);
    EXPECT_TRUE(Contains(why, "truncated")) << why;
  }
}

// Sets `bit` in the raw superblock's incompat features, touching nothing else.
void SetIncompatBit(const std::string& image, uint32_t bit) {
  int fd = ::open(image.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  uint32_t incompat = 0;
  ASSERT_EQ(::pread(fd, &incompat, 4, kIncompatOffset), 4);
  incompat |= bit;  // little-endian host: the on-disk field is __le32
  ASSERT_EQ(::pwrite(fd, &incompat, 4, kIncompatOffset), 4);
  ::close(fd);
}

TEST(Ext2FsOpenTest, UnknownIncompatFeature) {
  TempDir dir;
  std::string image = dir.Sub("img");
  // Without metadata_csum the raw edit leaves a consistent superblock apart from the feature.
  ASSERT_EQ(MakeImage(image, 32 * kMiB, "ext4", {"-O", "^metadata_csum"}), "");
  SetIncompatBit(image, 1u << 31);
  for (bool rw : {false, true}) {
    std::string why;
    auto fs = Ext2Fs::Open(image, OpenOptions{.read_write = rw}, &why);
    EXPECT_EQ(fs.error(), EOPNOTSUPP);
    EXPECT_TRUE(Contains(why, "unsupported filesystem feature")) << why;
    EXPECT_TRUE(Contains(why, "FEATURE_I31")) << why;
  }
}

TEST(Ext2FsOpenTest, UnknownIncompatFeatureWithChecksums) {
  // With metadata_csum the same raw edit also breaks the superblock checksum. Either refusal
  // is acceptable, but it must be one of them, with a message.
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 32 * kMiB, "ext4", {"-O", "metadata_csum"}), "");
  SetIncompatBit(image, 1u << 30);
  std::string why;
  auto fs = Ext2Fs::Open(image, OpenOptions{}, &why);
  ASSERT_FALSE(fs.has_value());
  EXPECT_TRUE(fs.error() == EOPNOTSUPP || fs.error() == EUCLEAN) << fs.error() << " " << why;
  EXPECT_FALSE(why.empty());
  if (fs.error() == EOPNOTSUPP) {
    EXPECT_TRUE(Contains(why, "FEATURE_I30")) << why;
  }
}

TEST(Ext2FsOpenTest, JournalNeedsRecovery) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 32 * kMiB, "ext4", {}), "");
  auto r = iomapfs::testing::Run({"debugfs", "-w", "-R", "feature needs_recovery", image});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (bool rw : {false, true}) {
    std::string why;
    auto fs = Ext2Fs::Open(image, OpenOptions{.read_write = rw}, &why);
    EXPECT_EQ(fs.error(), EROFS);
    EXPECT_TRUE(Contains(why, "journal needs recovery")) << why;
  }
  std::string why;
  auto fs = Ext2Fs::Open(image, OpenOptions{.norecovery = true}, &why);
  EXPECT_TRUE(fs.has_value()) << why;
  fs = Ext2Fs::Open(image, OpenOptions{.read_write = true, .norecovery = true}, &why);
  EXPECT_EQ(fs.error(), EINVAL);
  EXPECT_TRUE(Contains(why, "norecovery")) << why;
}

TEST(Ext2FsOpenTest, OffsetPastTheEnd) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 8 * kMiB, "ext4", {}), "");
  std::string why;
  auto fs = Ext2Fs::Open(image, OpenOptions{.offset = 64 * kMiB}, &why);
  EXPECT_EQ(fs.error(), EINVAL);
  EXPECT_TRUE(Contains(why, "past the end")) << why;
}

TEST(Ext2FsOpenTest, FilesystemAtAnOffset) {
  // A partitioned disk image: the filesystem starts 1 MiB in.
  TempDir dir;
  std::string fsimg = dir.Sub("fs");
  ASSERT_EQ(MakeImage(fsimg, 16 * kMiB, "ext4", {}), "");
  std::string disk = dir.Sub("disk");
  auto r =
      iomapfs::testing::Run({"dd", "if=" + fsimg, "of=" + disk, "bs=1M", "seek=1", "status=none"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string why;
  auto fs = Ext2Fs::Open(disk, OpenOptions{.offset = kMiB}, &why);
  ASSERT_TRUE(fs.has_value()) << why;
  EXPECT_EQ((*fs)->data().size(), 16 * kMiB);
  // Data I/O is filesystem-relative: the superblock magic is at 1024 + 0x38.
  uint16_t magic = 0;
  std::span<std::byte> buf(reinterpret_cast<std::byte*>(&magic), sizeof(magic));
  ASSERT_TRUE((*fs)->data().ReadAt(buf, 1024 + 0x38).has_value());
  EXPECT_EQ(magic, EXT2_SUPER_MAGIC);
  // Reading past the end is EIO, not a short buffer.
  std::byte big[8];
  EXPECT_EQ((*fs)->data().ReadAt(big, 16 * kMiB - 4).error(), EIO);
}

}  // namespace
}  // namespace iomapfs::ext2
