// The engine's write side over images built by mke2fs -d (no root needed): ext4 with 4 KiB and
// 1 KiB blocks, ext2 and ext3 (indirect block maps), inline_data. Random sequences of writes
// (PrepareWrite + zeroing + device writes + CompleteWrite), truncates, punches, fallocates and
// zero ranges are checked against a model of every file after each few steps (MapRange + device
// reads), every mapping is checked, and the image must pass e2fsck -fn and be marked clean after
// Close(). Targeted tests cover contiguity, overwrite in place, unwritten conversion, zeroing
// of partial blocks, inline data growth, ENOSPC and EFBIG.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "iomap/engine.h"
#include "iomap/extent_tree.h"
#include "tests/iomap/iomap_test_util.h"
#include "tests/iomap/write_model.h"
#include "tests/support/test_util.h"

namespace iomapfs::iomap::testing {
namespace {

using iomapfs::testing::FsckClean;
using iomapfs::testing::MakeImage;
using iomapfs::testing::TempDir;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

struct Config {
  std::string name;
  std::string fs_type;
  uint32_t block;
  std::vector<std::string> extra;
  bool extents;  // fallocate modes are supported (EOPNOTSUPP on indirect files, as ext4)
};

// The superblock's s_state, read from the image.
uint16_t RawState(const std::string& image) {
  int fd = ::open(image.c_str(), O_RDONLY | O_CLOEXEC);
  uint16_t state = 0;
  if (fd >= 0) {
    EXPECT_EQ(::pread(fd, &state, sizeof(state), 1024 + 0x3A), 2);
    ::close(fd);
  }
  return state;
}

// Files every image starts with.
void WriteSources(const std::string& dir, uint32_t block) {
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  ASSERT_TRUE(WriteSparseFile(dir + "/empty", 0, {}, 1));
  ASSERT_TRUE(WriteSparseFile(dir + "/empty2", 0, {}, 1));
  ASSERT_TRUE(WriteSparseFile(dir + "/small", 100, {{0, 100}}, 2));
  ASSERT_TRUE(WriteSparseFile(dir + "/block", block, {{0, block}}, 3));
  ASSERT_TRUE(WriteSparseFile(dir + "/big", kMiB + 123, {{0, kMiB + 123}}, 4));
  ASSERT_TRUE(WriteSparseFile(dir + "/sparse", 4 * kMiB,
                              {{0, 10000}, {kMiB, 5000}, {2 * kMiB + 100, 3 * block}}, 5));
}

const std::vector<std::string> kFiles = {"/empty", "/empty2", "/small",
                                         "/block", "/big",    "/sparse"};

class WriteImageTest : public ::testing::TestWithParam<Config> {
 protected:
  void SetUp() override {
    const Config& c = GetParam();
    WriteSources(dir_.Sub("src"), c.block);
    std::vector<std::string> args = {"-b", std::to_string(c.block)};
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    image_ = dir_.Sub("img");
    ASSERT_EQ(MakeImage(image_, 64 * kMiB, c.fs_type, args, dir_.Sub("src")), "");
  }

  TempDir dir_;
  std::string image_;
};

TEST_P(WriteImageTest, RandomOperationsMatchTheModel) {
  const Config& c = GetParam();
  // IOMAPFS_WRITE_SEEDS=N runs seeds 1..N (a soak run); the default keeps the unit label fast.
  uint64_t seeds =
      getenv("IOMAPFS_WRITE_SEEDS") != nullptr ? atoi(getenv("IOMAPFS_WRITE_SEEDS")) : 3;
  for (uint64_t seed = 1; seed <= seeds; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    WriteModel m(image_);
    ASSERT_TRUE(m.fs().fs);
    for (const std::string& f : kFiles) m.Track(f);
    if (getenv("IOMAPFS_VERIFY_EVERY") != nullptr) {
      m.set_verify_every(atoi(getenv("IOMAPFS_VERIFY_EVERY")));
    }
    m.VerifyAll();
    m.RandomOps(300, 4 * kMiB, seed, c.extents);
    if (HasFatalFailure()) return;
    m.VerifyAll();
    ASSERT_EQ(RawState(image_) & EXT2_VALID_FS, 0) << "not clean while open read-write";
    m.Close();
    EXPECT_NE(RawState(image_) & EXT2_VALID_FS, 0) << "clean after Close";
    std::string out;
    EXPECT_TRUE(FsckClean(image_, &out)) << out;
    // A fresh read-only open sees the same contents.
    m.Reopen(image_, /*read_write=*/false);
    m.VerifyAll();
    m.Close();
  }
}

TEST_P(WriteImageTest, SyncLeavesACheckableImage) {
  WriteModel m(image_);
  ASSERT_TRUE(m.fs().fs);
  for (const std::string& f : kFiles) m.Track(f);
  m.RandomOps(40, 2 * kMiB, 7, GetParam().extents);
  ASSERT_TRUE(m.fs().fs->Sync().has_value());
  // Still open (and marked not clean), but everything is on the image: e2fsck finds no damage.
  std::string out;
  auto r = iomapfs::testing::Run({"e2fsck", "-fn", image_});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  m.Close();
  EXPECT_TRUE(FsckClean(image_, &out)) << out;
}

TEST_P(WriteImageTest, SequentialWritesStayContiguous) {
  const Config& c = GetParam();
  WriteModel m(image_);
  ASSERT_TRUE(m.fs().fs);
  uint64_t ino = m.Track("/empty");
  constexpr uint64_t kChunk = 64 * kKiB;
  constexpr uint64_t kTotal = 16 * kMiB;
  for (uint64_t pos = 0; pos < kTotal; pos += kChunk) {
    ASSERT_EQ(m.Write(ino, pos, PatternBytes(9, pos, kChunk)), 0) << pos;
  }
  m.Verify(ino);
  auto phys = EnginePhys(m.fs(), ino, kTotal);
  ASSERT_TRUE(phys.has_value());
  // Physically contiguous runs: the allocator kept the goal except at group metadata (and, on
  // indirect files, the indirect blocks the format interleaves every block_size / 4 blocks).
  size_t limit = c.block == 1024 ? 6 : 2;
  if (!c.extents) limit += kTotal / c.block / (c.block / 4) + 1;
  EXPECT_LE(phys->size(), limit) << ToString(*phys);
  if (c.extents) {
    size_t n = CountExtents(m.fs(), ino);
    EXPECT_LE(n, c.block == 1024 ? 6u : 2u) << ToString(*phys);
    EXPECT_GE(n, 1u);
  }
  m.Close();
  std::string out;
  EXPECT_TRUE(FsckClean(image_, &out)) << out;
}

TEST_P(WriteImageTest, OverwriteIsInPlaceAndPartialBlocksAreZeroed) {
  const uint32_t bs = GetParam().block;
  WriteModel m(image_);
  ASSERT_TRUE(m.fs().fs);
  uint64_t ino = m.Track("/empty2");
  // A 10-byte write into a new block: the rest of the block must be zeroed by the writer.
  std::vector<Mapping> maps;
  {
    auto g = m.fs().fs->Lock();
    ext2::Transaction tx(g);
    auto r = m.fs().engine->PrepareWrite(tx, Ino(ino), 3 * bs + 100, 10);
    ASSERT_TRUE(r.has_value()) << r.error();
    maps = *r;
    ASSERT_TRUE(tx.Commit().has_value());
  }
  if (maps[0].type != MappingType::kInline) {
    ASSERT_EQ(maps.size(), 1u);
    EXPECT_EQ(maps[0].offset, 3 * bs);
    EXPECT_EQ(maps[0].length, bs);
    EXPECT_NE(maps[0].flags & kFlagNew, 0);
    auto spans = Engine::WriteZeroSpans(maps, 3 * bs + 100, 10, bs);
    ASSERT_EQ(spans.size(), 2u);
    EXPECT_EQ(spans[0], (ZeroSpan{maps[0].addr, 100}));
    EXPECT_EQ(spans[1], (ZeroSpan{maps[0].addr + 110, bs - 110}));
    // Prepared twice without completing: still the same storage, no second allocation.
    auto g = m.fs().fs->Lock();
    ext2::Transaction tx(g);
    auto again = m.fs().engine->PrepareWrite(tx, Ino(ino), 3 * bs + 100, 10);
    ASSERT_TRUE(again.has_value());
    ASSERT_EQ(again->size(), 1u);
    EXPECT_EQ((*again)[0].addr, maps[0].addr);
    EXPECT_EQ((*again)[0].flags & kFlagNew, 0);
    if (GetParam().extents) {
      EXPECT_EQ((*again)[0].type, MappingType::kUnwritten);
    }
  }
  ASSERT_EQ(m.Write(ino, 3 * bs + 100, std::string(10, 'a')), 0);
  m.Verify(ino);
  // Overwrite: MAPPED, not new, same address.
  auto before = CheckedMap(m.fs(), ino, 3 * bs, bs);
  ASSERT_TRUE(before.has_value());
  {
    auto g = m.fs().fs->Lock();
    ext2::Transaction tx(g);
    auto r = m.fs().engine->PrepareWrite(tx, Ino(ino), 3 * bs, bs);
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(r->size(), 1u);
    if (before->type == MappingType::kMapped) {
      EXPECT_EQ((*r)[0].type, MappingType::kMapped);
      EXPECT_EQ((*r)[0].flags, 0);
      EXPECT_EQ((*r)[0].addr, before->addr);
      EXPECT_TRUE(Engine::WriteZeroSpans(*r, 3 * bs + 5, 7, bs).empty());
    }
  }
  ASSERT_EQ(m.Write(ino, 3 * bs + 5, std::string(7, 'b')), 0);
  m.Verify(ino);
  m.Close();
  std::string out;
  EXPECT_TRUE(FsckClean(image_, &out)) << out;
}

TEST_P(WriteImageTest, ReadOnlyAndBadArguments) {
  WriteModel m(image_);
  ASSERT_TRUE(m.fs().fs);
  uint64_t ino = m.Track("/small");
  auto g = m.fs().fs->Lock();
  ext2::Transaction tx(g);
  Engine& e = *m.fs().engine;
  EXPECT_EQ(e.PrepareWrite(tx, Ino(ino), 0, 0).error(), EINVAL);
  EXPECT_EQ(e.PrepareWrite(tx, Ino(EXT2_ROOT_INO), 0, 10).error(), EISDIR);
  EXPECT_EQ(e.PrepareWrite(tx, Ino(0), 0, 10).error(), ENOENT);
  EXPECT_EQ(e.Truncate(tx, Ino(g->super->s_inodes_count + 1), 0).error(), ENOENT);
  auto max = e.MaxFileSize(g, Ino(ino));
  ASSERT_TRUE(max.has_value());
  EXPECT_EQ(e.PrepareWrite(tx, Ino(ino), *max - 10, 100).error(), EFBIG);
  EXPECT_EQ(e.PrepareWrite(tx, Ino(ino), *max, 1).error(), EFBIG);
  EXPECT_EQ(e.Truncate(tx, Ino(ino), *max + 1).error(), EFBIG);
  EXPECT_EQ(e.Allocate(tx, Ino(ino), 0, 0, false).error(), EINVAL);
  if (!GetParam().extents) {
    EXPECT_EQ(e.Allocate(tx, Ino(ino), 0, 4096, false).error(), EOPNOTSUPP);
    EXPECT_EQ(e.ZeroRange(tx, Ino(ino), 0, 4096, false).error(), EOPNOTSUPP);
  }
}

TEST_P(WriteImageTest, LastBlockOfTheLargestFile) {
  // The block just below MaxFileSize: 32-bit logical block numbers at their limit (extent
  // files) or the triple-indirect tail (ext2/ext3).
  WriteModel m(image_);
  ASSERT_TRUE(m.fs().fs);
  uint64_t ino = m.Track("/empty");
  uint64_t max = 0;
  {
    auto g = m.fs().fs->Lock();
    max = m.fs().engine->MaxFileSize(g, Ino(ino)).value();
  }
  const uint32_t bs = m.block_size();
  uint64_t pos = max / bs * bs - bs;
  // Not through the model: it would hold the whole (sparse) file in memory.
  ASSERT_EQ(WriteThroughEngine(m.fs(), ino, pos + 1, std::string(bs - 1, 'z')), 0);
  ASSERT_EQ(FileSize(*m.fs().fs, ino), pos + bs);
  auto data = ReadThroughEngine(m.fs(), ino, pos - bs, 2 * bs);
  ASSERT_TRUE(data.has_value()) << data.error();
  EXPECT_EQ(*data, std::string(bs + 1, '\0') + std::string(bs - 1, 'z'));
  EXPECT_EQ(WriteThroughEngine(m.fs(), ino, pos + bs, "x"), EFBIG);
  ASSERT_EQ(m.Truncate(ino, 0), 0);
  m.Close();
  std::string out;
  EXPECT_TRUE(FsckClean(image_, &out)) << out;
}

INSTANTIATE_TEST_SUITE_P(
    Formats, WriteImageTest,
    ::testing::Values(Config{"ext4_4k", "ext4", 4096, {}, true},
                      Config{"ext4_1k", "ext4", 1024, {}, true},
                      Config{"ext2_4k", "ext2", 4096, {}, false},
                      Config{"ext3_1k", "ext3", 1024, {}, false},
                      Config{"inline_4k", "ext4", 4096, {"-O", "inline_data"}, true}),
    [](const ::testing::TestParamInfo<Config>& i) { return i.param.name; });

}  // namespace
}  // namespace iomapfs::iomap::testing
