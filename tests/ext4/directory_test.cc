// Directory lookup paths (htree walk, cached name index, fallbacks) and corruption handling.
#include "fsserver/ext4/directory.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "fsserver/ext4/inode.h"
#include "tests/ext4/ext4_test_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::ext4::testing {
namespace {

using iomapfs::testing::TempDir;

constexpr int kEntries = 3000;

std::string BigName(int i) {
  char name[64];
  std::snprintf(name, sizeof(name), "entry-%05d-with-a-longer-name", i);
  return name;
}

// The number after `key` in debugfs output (decimal or 0x hex).
uint64_t ParseAfter(const std::string& out, const std::string& key) {
  auto pos = out.find(key);
  if (pos == std::string::npos) return 0;
  return std::stoull(out.substr(pos + key.size()), nullptr, 0);
}

bool PatchImage(const std::string& image, uint64_t offset, const void* bytes, size_t n) {
  int fd = ::open(image.c_str(), O_WRONLY);
  if (fd < 0) return false;
  bool ok = ::pwrite(fd, bytes, n, static_cast<off_t>(offset)) == static_cast<ssize_t>(n);
  ::close(fd);
  return ok;
}

class DirectoryTest : public ::testing::Test {
 protected:
  // Makes an indexed image of a fresh source tree with `mkfs_args`.
  void Make(const FeatureSet& fs) {
    std::string src = tmp_.Sub("src");
    if (::mkdir(src.c_str(), 0755) == 0) {
      SourceTree tree;
      ASSERT_EQ(BuildSourceTree(src, kEntries, &tree), "");
    }
    image_ = tmp_.Sub("img");
    ASSERT_EQ(MakeIndexedImage(image_, src, fs, 64ull << 20), "");
  }
  void Open() {
    std::string why;
    auto e2 = ext2::Ext2Fs::Open(image_, ext2::OpenOptions{}, &why);
    ASSERT_TRUE(e2) << why;
    e2_ = std::move(*e2);
  }
  // Looks up `name` in the directory at `path` through `index`.
  Result<std::optional<DirHit>> Find(DirIndex& index, const std::string& path,
                                     const std::string& name) {
    ext2::Guard g = e2_->Lock();
    ext2_ino_t dir = 0;
    errcode_t err = ext2fs_namei(g.fs(), EXT2_ROOT_INO, EXT2_ROOT_INO, path.c_str(), &dir);
    if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadInode(g, Ino(dir)));
    return index.Find(g, Ino(dir), inode, name);
  }
  DirIndex::Stats Stats(const DirIndex& index) {
    ext2::Guard g = e2_->Lock();
    return index.stats(g);
  }

  TempDir tmp_;
  std::string image_;
  std::unique_ptr<ext2::Ext2Fs> e2_;
};

TEST_F(DirectoryTest, HtreeLookupsWalkTheIndex) {
  for (const FeatureSet& fs : {AllFeatureSets()[0], AllFeatureSets()[1]}) {
    SCOPED_TRACE(fs.name);
    Make(fs);
    Open();
    if (fs.name == "ext4_1k") {
      EXPECT_NE(Debugfs(image_, "htree big").find("Indirect levels: 1"), std::string::npos)
          << "expected a two-level htree with 1 KiB blocks";
    }
    DirIndex index;
    for (int i = 0; i < kEntries; ++i) {
      auto hit = Find(index, "big", BigName(i));
      ASSERT_TRUE(hit) << strerror(hit.error());
      ASSERT_TRUE(hit->has_value()) << BigName(i);
    }
    auto miss = Find(index, "big", "no-such-entry");
    ASSERT_TRUE(miss);
    EXPECT_FALSE(miss->has_value());
    DirIndex::Stats s = Stats(index);
    EXPECT_EQ(s.dx_lookups, static_cast<uint64_t>(kEntries) + 1);
    EXPECT_EQ(s.index_builds, 0u);
    EXPECT_EQ(s.dx_fallbacks, 0u);
    e2_.reset();
  }
}

TEST_F(DirectoryTest, UnsignedHashFlagIsHonoured) {
  // Names with bytes >= 0x80 hash differently with the signed and unsigned variants.
  std::string src = tmp_.Sub("src");
  ::mkdir(src.c_str(), 0755);
  ::mkdir((src + "/u").c_str(), 0755);
  for (int i = 0; i < kEntries; ++i) {
    ASSERT_TRUE(
        iomapfs::testing::WriteFile(src + "/u/\xc3\xa9\xe2\x82\xac-" + std::to_string(i), ""));
  }
  image_ = tmp_.Sub("img");
  ASSERT_EQ(iomapfs::testing::MakeImage(image_, 64ull << 20, "ext4", {}, src), "");
  ASSERT_EQ(iomapfs::testing::Run({"debugfs", "-w", "-R", "ssv flags 2", image_}).exit_code,
            0);  // unsigned
  iomapfs::testing::Run({"e2fsck", "-fyD", image_});
  ASSERT_TRUE(iomapfs::testing::FsckClean(image_));
  Open();
  DirIndex index;
  for (int i = 0; i < kEntries; ++i) {
    auto hit = Find(index, "u", "\xc3\xa9\xe2\x82\xac-" + std::to_string(i));
    ASSERT_TRUE(hit) << strerror(hit.error());
    ASSERT_TRUE(hit->has_value()) << i;
  }
  EXPECT_EQ(Stats(index).dx_lookups, static_cast<uint64_t>(kEntries));
}

TEST_F(DirectoryTest, LinearIndexIsBuiltOnceAndBounded) {
  Make(AllFeatureSets()[0]);
  Open();
  DirIndex index(DirIndex::Limits{.max_dirs = 2, .max_names = 1000});
  for (int round = 0; round < 3; ++round) {
    for (const char* name : {"small", "block", "multi", "sparse", "empty"}) {
      auto hit = Find(index, "files", name);
      ASSERT_TRUE(hit && hit->has_value()) << name;
    }
  }
  DirIndex::Stats s = Stats(index);
  EXPECT_EQ(s.index_builds, 1u);
  EXPECT_EQ(s.index_hits, 14u);
  EXPECT_TRUE(Find(index, "a", "b")->has_value());
  EXPECT_TRUE(Find(index, "links", "fast")->has_value());
  s = Stats(index);
  EXPECT_EQ(s.cached_dirs, 2u);  // "files" was evicted
  EXPECT_TRUE(Find(index, "files", "small")->has_value());
  EXPECT_EQ(Stats(index).index_builds, 4u);
  {
    ext2::Guard g = e2_->Lock();
    ext2_ino_t files = 0;
    ASSERT_EQ(ext2fs_namei(g.fs(), 2, 2, "files", &files), 0);
    index.Invalidate(g, Ino(files));
  }
  EXPECT_TRUE(Find(index, "files", "small")->has_value());
  EXPECT_EQ(Stats(index).index_builds, 5u);
}

TEST_F(DirectoryTest, UnusableHtreeFallsBackToTheNameIndex) {
  Make(AllFeatureSets()[2]);  // no metadata_csum: the patched dx root still reads
  std::string bmap = Debugfs(image_, "bmap big 0");  // "debugfs 1.47.0 ...\n<pblk>\n"
  uint64_t pblk = ParseAfter(bmap, "\n");
  ASSERT_GT(pblk, 0u);
  uint64_t bs = ParseAfter(Debugfs(image_, "stats"), "Block size:");
  ASSERT_GT(bs, 0u);
  uint8_t bad_version = 9;
  ASSERT_TRUE(PatchImage(image_, pblk * bs + 28, &bad_version, 1));  // dx_root_info.hash_version
  Open();
  DirIndex index;
  for (int i = 0; i < kEntries; i += 7) {
    auto hit = Find(index, "big", BigName(i));
    ASSERT_TRUE(hit) << strerror(hit.error());
    ASSERT_TRUE(hit->has_value()) << BigName(i);
  }
  DirIndex::Stats s = Stats(index);
  EXPECT_EQ(s.dx_lookups, 0u);
  EXPECT_GT(s.dx_fallbacks, 0u);
  EXPECT_EQ(s.index_builds, 1u);
}

TEST_F(DirectoryTest, BadInodeChecksumIsEucleanAndContained) {
  Make(AllFeatureSets()[0]);
  std::string imap = Debugfs(image_, "imap files/block");
  uint64_t block = ParseAfter(imap, "located at block ");
  auto pos = imap.find("offset ");
  ASSERT_NE(pos, std::string::npos) << imap;
  uint64_t offset = std::stoull(imap.substr(pos + 7), nullptr, 0);
  uint64_t bs = ParseAfter(Debugfs(image_, "stats"), "Block size:");
  uint8_t junk = 0xa5;
  ASSERT_TRUE(PatchImage(image_, block * bs + offset + 0x64, &junk, 1));  // i_generation
  std::string why;
  auto fs = OpenFilesystem(image_, &why);
  ASSERT_NE(fs, nullptr) << why;
  EXPECT_EQ(Resolve(*fs, "files/block").error(), EUCLEAN);
  EXPECT_TRUE(Resolve(*fs, "files/small"));
  auto listing = ListAll(*fs, Resolve(*fs, "files")->ino);
  ASSERT_TRUE(listing);  // the directory itself is fine
}

TEST_F(DirectoryTest, CorruptExtentTreeIsEucleanAndContained) {
  Make(AllFeatureSets()[0]);
  // Break the extent header magic in i_block[0] (debugfs updates the inode checksum).
  ASSERT_EQ(iomapfs::testing::Run({"debugfs", "-w", "-R", "sif files/multi block[0] 0", image_})
                .exit_code,
            0);
  std::string why;
  auto fs = OpenFilesystem(image_, &why);
  ASSERT_NE(fs, nullptr) << why;
  auto multi = Resolve(*fs, "files/multi");
  ASSERT_TRUE(multi);  // the inode itself is readable
  std::vector<std::byte> buf(8192);
  EXPECT_EQ(fs->Read(multi->ino, 0, buf).error(), EUCLEAN);
  auto block = Resolve(*fs, "files/block");
  ASSERT_TRUE(block);
  auto n = fs->Read(block->ino, 0, buf);
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 4096u + 17);
}

}  // namespace
}  // namespace iomapfs::ext4::testing
