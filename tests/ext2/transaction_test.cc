// Read-write opens of Ext2Fs: the superblock's clean state (not clean while open, restored at
// Close), mount count and times, the advisory image lock (EBUSY with a clear message, across
// processes too), refusal of features this server cannot write, Transaction commits (deferred
// and durable) and Sync().
#include "ext2/transaction.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <string>

#include "ext2/ext2_fs.h"
#include "ext2/inode_buf.h"
#include "tests/support/test_util.h"

namespace iomapfs::ext2 {
namespace {

using iomapfs::testing::FsckClean;
using iomapfs::testing::MakeImage;
using iomapfs::testing::RunShell;
using iomapfs::testing::TempDir;

constexpr uint64_t kMiB = 1024 * 1024;

bool Contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

// The primary superblock as it is on the image.
ext2_super_block RawSuper(const std::string& image) {
  ext2_super_block sb;
  std::memset(&sb, 0, sizeof(sb));
  int fd = ::open(image.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::pread(fd, &sb, sizeof(sb), 1024), static_cast<ssize_t>(sizeof(sb)));
  ::close(fd);
  return sb;
}

uint64_t FreeBlocksOnDisk(const std::string& image) {
  ext2_super_block sb = RawSuper(image);
  return ext2fs_free_blocks_count(&sb);
}

std::unique_ptr<Ext2Fs> OpenRw(const std::string& image) {
  std::string why;
  auto fs = Ext2Fs::Open(image, OpenOptions{.read_write = true}, &why);
  EXPECT_TRUE(fs.has_value()) << why;
  return fs ? std::move(*fs) : nullptr;
}

TEST(Ext2FsRwTest, NotCleanWhileOpenCleanAfterClose) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 16 * kMiB, "ext4", {}), "");
  ext2_super_block before = RawSuper(image);
  ASSERT_NE(before.s_state & EXT2_VALID_FS, 0);
  time_t t0 = time(nullptr);
  auto fs = OpenRw(image);
  ASSERT_TRUE(fs);
  ext2_super_block open = RawSuper(image);
  EXPECT_EQ(open.s_state & EXT2_VALID_FS, 0) << "written at open, not at close";
  EXPECT_EQ(open.s_mnt_count, before.s_mnt_count + 1);
  EXPECT_GE(static_cast<time_t>(open.s_mtime), t0);
  ASSERT_TRUE(fs->Close().has_value());
  ext2_super_block after = RawSuper(image);
  EXPECT_NE(after.s_state & EXT2_VALID_FS, 0);
  EXPECT_GE(static_cast<time_t>(after.s_wtime), t0);
  EXPECT_EQ(after.s_mnt_count, before.s_mnt_count + 1);
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
  // Read-only opens change nothing.
  std::string why;
  auto ro = Ext2Fs::Open(image, OpenOptions{}, &why);
  ASSERT_TRUE(ro.has_value()) << why;
  ASSERT_TRUE((*ro)->Close().has_value());
  EXPECT_EQ(RawSuper(image).s_mnt_count, after.s_mnt_count);
}

TEST(Ext2FsRwTest, AnUncleanImageStaysUnclean) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 16 * kMiB, "ext4", {}), "");
  auto r = iomapfs::testing::Run({"debugfs", "-w", "-R", "ssv state 0", image});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto fs = OpenRw(image);
  ASSERT_TRUE(fs);
  ASSERT_TRUE(fs->Close().has_value());
  EXPECT_EQ(RawSuper(image).s_state & EXT2_VALID_FS, 0) << "only e2fsck may mark it clean";
}

TEST(Ext2FsRwTest, SecondReadWriteOpenIsBusy) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 16 * kMiB, "ext4", {}), "");
  auto first = OpenRw(image);
  ASSERT_TRUE(first);
  std::string why;
  auto second = Ext2Fs::Open(image, OpenOptions{.read_write = true}, &why);
  EXPECT_EQ(second.error(), EBUSY);
  EXPECT_TRUE(Contains(why, "image is in use by another process")) << why;
  // Another process sees the lock as well.
  auto other = RunShell("flock -n -x '" + image + "' true");
  EXPECT_NE(other.exit_code, 0) << other.output;
  // Read-only opens are refused too: they would read an image that changes under them.
  auto ro = Ext2Fs::Open(image, OpenOptions{}, &why);
  EXPECT_EQ(ro.error(), EBUSY);
  EXPECT_TRUE(Contains(why, "image is in use by another process (it is open read-write)")) << why;
  other = RunShell("flock -n -s '" + image + "' true");
  EXPECT_NE(other.exit_code, 0) << other.output;
  ASSERT_TRUE(first->Close().has_value());
  // Released at Close().
  other = RunShell("flock -n -x '" + image + "' true");
  EXPECT_EQ(other.exit_code, 0) << other.output;
  auto again = OpenRw(image);
  EXPECT_TRUE(again);
}

TEST(Ext2FsRwTest, ReadOnlyOpensShareTheImageButExcludeAWriter) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 16 * kMiB, "ext4", {}), "");
  std::string why;
  auto ro1 = Ext2Fs::Open(image, OpenOptions{}, &why);
  ASSERT_TRUE(ro1.has_value()) << why;
  auto ro2 = Ext2Fs::Open(image, OpenOptions{}, &why);
  ASSERT_TRUE(ro2.has_value()) << why;
  auto rw = Ext2Fs::Open(image, OpenOptions{.read_write = true}, &why);
  EXPECT_EQ(rw.error(), EBUSY);
  EXPECT_TRUE(Contains(why, "image is in use by another process")) << why;
  // Another process may read along, but not write.
  EXPECT_EQ(RunShell("flock -n -s '" + image + "' true").exit_code, 0);
  EXPECT_NE(RunShell("flock -n -x '" + image + "' true").exit_code, 0);
  ASSERT_TRUE((*ro1)->Close().has_value());
  rw = Ext2Fs::Open(image, OpenOptions{.read_write = true}, &why);
  EXPECT_EQ(rw.error(), EBUSY) << "one reader is still there";
  ASSERT_TRUE((*ro2)->Close().has_value());
  auto rw2 = OpenRw(image);
  EXPECT_TRUE(rw2);
}

struct Feature {
  std::string name;  // as e2p names it, and as the message must say it
  std::vector<std::string> mkfs_args;
};

class RwFeatureTest : public ::testing::TestWithParam<Feature> {};

TEST_P(RwFeatureTest, ReadOnlyWorksReadWriteIsRefusedByName) {
  TempDir dir;
  std::string image = dir.Sub("img");
  std::string made = MakeImage(image, 32 * kMiB, "ext4", GetParam().mkfs_args);
  if (!made.empty()) GTEST_SKIP() << "mke2fs cannot make this feature here: " << made;
  std::string why;
  auto ro = Ext2Fs::Open(image, OpenOptions{}, &why);
  ASSERT_TRUE(ro.has_value()) << why;
  ASSERT_TRUE((*ro)->Close().has_value());
  auto rw = Ext2Fs::Open(image, OpenOptions{.read_write = true}, &why);
  ASSERT_FALSE(rw.has_value());
  EXPECT_EQ(rw.error(), EOPNOTSUPP);
  EXPECT_TRUE(Contains(why, GetParam().name)) << why;
  EXPECT_TRUE(Contains(why, "read-only")) << why;
  // The refused open changed nothing.
  EXPECT_NE(RawSuper(image).s_state & EXT2_VALID_FS, 0);
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

INSTANTIATE_TEST_SUITE_P(Features, RwFeatureTest,
                         ::testing::Values(Feature{"quota", {"-O", "quota"}},
                                           Feature{"project", {"-O", "quota,project", "-I", "256"}},
                                           Feature{"casefold", {"-O", "casefold"}},
                                           Feature{"encrypt", {"-O", "encrypt"}},
                                           Feature{"verity", {"-O", "verity"}},
                                           Feature{"bigalloc", {"-O", "bigalloc", "-C", "16384"}}),
                         [](const ::testing::TestParamInfo<Feature>& i) { return i.param.name; });

TEST(TransactionTest, DeferredThenDurableCommit) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 16 * kMiB, "ext4", {}), "");
  auto fs = OpenRw(image);
  ASSERT_TRUE(fs);
  uint64_t free_before = FreeBlocksOnDisk(image);
  {
    Guard g = fs->Lock();
    Transaction tx(g);
    EXPECT_TRUE(tx.empty());
    blk64_t blk = 0;
    ASSERT_EQ(ext2fs_new_block2(g.fs(), 0, nullptr, &blk), 0);
    ext2fs_block_alloc_stats2(g.fs(), blk, +1);
    tx.NoteAllocation();
    // An inode write goes through the transaction.
    auto root = InodeBuf::Read(g, EXT2_ROOT_INO);
    ASSERT_TRUE(root.has_value());
    root->base()->i_mtime = 12345;
    ASSERT_TRUE(tx.WriteInode(EXT2_ROOT_INO, *root).has_value());
    EXPECT_EQ(tx.inodes(), std::vector<ext2_ino_t>{EXT2_ROOT_INO});
    EXPECT_FALSE(tx.empty());
    ASSERT_TRUE(tx.Commit(Durability::kDeferred).has_value());
    EXPECT_TRUE(tx.committed());
    EXPECT_TRUE(tx.Commit().has_value()) << "a second commit is a no-op";
  }
  // Deferred: the superblock counters on the image are not written yet.
  EXPECT_EQ(FreeBlocksOnDisk(image), free_before);
  {
    Guard g = fs->Lock();
    Transaction tx(g);
    blk64_t blk = 0;
    ASSERT_EQ(ext2fs_new_block2(g.fs(), 0, nullptr, &blk), 0);
    ext2fs_block_alloc_stats2(g.fs(), blk, +1);
    tx.NoteAllocation();
    ASSERT_TRUE(tx.Commit(Durability::kDurable).has_value());
  }
  // Durable: both allocations are on the image, and it checks clean apart from the state.
  EXPECT_EQ(FreeBlocksOnDisk(image), free_before - 2);
  // The two allocated blocks belong to nobody: e2fsck reports exactly that (bitmap
  // differences), which proves the bitmaps were written.
  auto r = iomapfs::testing::Run({"e2fsck", "-fn", image});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.output, "Block bitmap differences")) << r.output;
  {
    auto root = [&]() {
      Guard g = fs->Lock();
      return InodeBuf::Read(g, EXT2_ROOT_INO);
    }();
    ASSERT_TRUE(root.has_value());
    EXPECT_EQ(root->base()->i_mtime, 12345u);
  }
}

TEST(TransactionTest, ReadOnlyFilesystemRefusesChanges) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 16 * kMiB, "ext4", {}), "");
  std::string why;
  auto fs = Ext2Fs::Open(image, OpenOptions{}, &why);
  ASSERT_TRUE(fs.has_value()) << why;
  EXPECT_TRUE((*fs)->Sync().has_value()) << "a no-op";
  Guard g = (*fs)->Lock();
  {
    Transaction empty(g);
    EXPECT_TRUE(empty.Commit(Durability::kDurable).has_value());
  }
  Transaction tx(g);
  auto root = InodeBuf::Read(g, EXT2_ROOT_INO);
  ASSERT_TRUE(root.has_value());
  EXPECT_EQ(tx.WriteInode(EXT2_ROOT_INO, *root).error(), EROFS);
  tx.NoteInode(EXT2_ROOT_INO);
  EXPECT_EQ(tx.Commit().error(), EROFS);
}

TEST(TransactionTest, SyncWritesEverythingWhileOpen) {
  TempDir dir;
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 16 * kMiB, "ext4", {}), "");
  auto fs = OpenRw(image);
  ASSERT_TRUE(fs);
  uint64_t free_before = FreeBlocksOnDisk(image);
  blk64_t blk = 0;
  {
    Guard g = fs->Lock();
    Transaction tx(g);
    ASSERT_EQ(ext2fs_new_block2(g.fs(), 0, nullptr, &blk), 0);
    ext2fs_block_alloc_stats2(g.fs(), blk, +1);
    tx.NoteAllocation();
    ASSERT_TRUE(tx.Commit().has_value());
  }
  ASSERT_TRUE(fs->Sync().has_value());
  EXPECT_EQ(FreeBlocksOnDisk(image), free_before - 1);
  EXPECT_EQ(RawSuper(image).s_state & EXT2_VALID_FS, 0) << "still open";
  {
    // Give the block back: the image checks clean again after Close.
    Guard g = fs->Lock();
    Transaction tx(g);
    ext2fs_block_alloc_stats2(g.fs(), blk, -1);
    tx.NoteAllocation();
    ASSERT_TRUE(tx.Commit().has_value());
  }
  ASSERT_TRUE(fs->Close().has_value());
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

}  // namespace
}  // namespace iomapfs::ext2
