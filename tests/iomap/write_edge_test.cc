// The engine's write side at its edges: deep extent trees (thousands of extents, splits and
// merges across leaves), unwritten extents from fallocate converted piece by piece (as IOEND
// does for short or partial writes), inline data at its capacity, ENOSPC on a full image (no
// block leaked, e2fsck clean), and i_blocks accounting.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ext2/inode_buf.h"
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

// An image holding empty files f0..f<n-1> (and one 100-byte file "tiny").
std::string MakeFilesImage(const TempDir& dir, uint64_t size, const std::string& fs_type,
                           std::vector<std::string> args, int n) {
  std::string src = dir.Sub("src");
  EXPECT_EQ(::mkdir(src.c_str(), 0755), 0);
  for (int i = 0; i < n; ++i) {
    EXPECT_TRUE(WriteSparseFile(src + "/f" + std::to_string(i), 0, {}, 1));
  }
  EXPECT_TRUE(WriteSparseFile(src + "/tiny", 100, {{0, 100}}, 2));
  std::string image = dir.Sub("img");
  EXPECT_EQ(MakeImage(image, size, fs_type, args, src), "");
  return image;
}

uint64_t FreeBlocks(OpenedFs& o) {
  auto g = o.fs->Lock();
  return ext2fs_free_blocks_count(g->super);
}

uint64_t IBlocks(OpenedFs& o, uint64_t ino) {
  auto g = o.fs->Lock();
  auto inode = ext2::InodeBuf::Read(g, static_cast<ext2_ino_t>(ino));
  return inode ? ext2fs_get_stat_i_blocks(g.fs(), inode->base()) : 0;
}

class DeepTreeTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(DeepTreeTest, ThousandsOfExtents) {
  const uint32_t bs = GetParam();
  TempDir dir;
  std::string image = MakeFilesImage(dir, 64 * kMiB, "ext4", {"-b", std::to_string(bs)}, 2);
  WriteModel m(image);
  ASSERT_TRUE(m.fs().fs);
  uint64_t ino = m.Track("/f0");
  // Every other block: one extent each (the allocator's goal is the block after the previous
  // extent, so physical contiguity does not merge them: the logical gaps keep them apart).
  constexpr int kBlocks = 1500;
  for (int i = 0; i < kBlocks; ++i) {
    uint64_t pos = 2ull * i * bs;
    ASSERT_EQ(m.Write(ino, pos, PatternBytes(i, pos, bs)), 0) << i;
  }
  size_t n = CountExtents(m.fs(), ino);
  EXPECT_GE(n, static_cast<size_t>(kBlocks) / 2);
  {
    auto g = m.fs().fs->Lock();
    auto inode = ext2::InodeBuf::Read(g, static_cast<ext2_ino_t>(ino));
    ASSERT_TRUE(inode.has_value());
    auto t = ExtentTree::Open(g, static_cast<ext2_ino_t>(ino), &*inode);
    ASSERT_TRUE(t.has_value());
    EXPECT_GE(t->depth(), 1);
    if (bs == 1024) {
      EXPECT_GE(t->depth(), 2) << "1 KiB leaves hold 84 extents";
    }
  }
  m.Verify(ino);
  const uint64_t size = 2ull * kBlocks * bs;
  // Fill every hole with unwritten extents, then write across leaf boundaries.
  ASSERT_EQ(m.Allocate(ino, 0, size, /*keep_size=*/true), 0);
  m.Verify(ino);
  ASSERT_EQ(m.Write(ino, 100 * bs + 17, PatternBytes(77, 100 * bs + 17, 700 * bs)), 0);
  m.Verify(ino);
  ASSERT_EQ(m.ZeroRange(ino, 900 * bs + 5, 400 * bs, /*keep_size=*/true), 0);
  m.Verify(ino);
  ASSERT_EQ(m.Punch(ino, 1500 * bs + 3, 600 * bs), 0);
  m.Verify(ino);
  ASSERT_EQ(m.Write(ino, 0, PatternBytes(78, 0, size)), 0);  // everything written
  m.Verify(ino);
  // Nothing is left unwritten.
  auto phys = EnginePhys(m.fs(), ino, size);
  ASSERT_TRUE(phys.has_value());
  for (const PhysRange& r : *phys) EXPECT_FALSE(r.unwritten) << ToString(*phys);
  ASSERT_EQ(m.Truncate(ino, size / 3 + 11), 0);
  m.Verify(ino);
  ASSERT_EQ(m.Truncate(ino, 0), 0);
  m.Verify(ino);
  EXPECT_EQ(CountExtents(m.fs(), ino), 0u);
  EXPECT_EQ(IBlocks(m.fs(), ino), 0u) << "tree blocks freed with the extents";
  m.Close();
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, DeepTreeTest, ::testing::Values(1024u, 4096u));

TEST(UnwrittenTest, FallocateThenPartialCompletion) {
  TempDir dir;
  std::string image = MakeFilesImage(dir, 32 * kMiB, "ext4", {"-b", "4096"}, 1);
  WriteModel m(image);
  ASSERT_TRUE(m.fs().fs);
  const uint64_t bs = 4096;
  uint64_t ino = m.Track("/f0");
  uint64_t free0 = FreeBlocks(m.fs());
  ASSERT_EQ(m.Allocate(ino, 0, 64 * bs, /*keep_size=*/false), 0);
  EXPECT_EQ(FreeBlocks(m.fs()), free0 - 64);
  EXPECT_EQ(IBlocks(m.fs(), ino), 64 * bs / 512);
  EXPECT_EQ(CountExtents(m.fs(), ino), 1u);
  auto before = CheckedMap(m.fs(), ino, 0, 64 * bs);
  ASSERT_TRUE(before.has_value());
  EXPECT_EQ(before->type, MappingType::kUnwritten);
  // A write into the middle: UNWRITTEN, not new, split at its edges before any data moves.
  std::vector<Mapping> maps;
  {
    auto g = m.fs().fs->Lock();
    ext2::Transaction tx(g);
    auto r = m.fs().engine->PrepareWrite(tx, Ino(ino), 10 * bs + 1, 20 * bs);
    ASSERT_TRUE(r.has_value()) << r.error();
    maps = *r;
    ASSERT_TRUE(tx.Commit().has_value());
  }
  ASSERT_EQ(maps.size(), 1u);
  EXPECT_EQ(maps[0].type, MappingType::kUnwritten);
  EXPECT_EQ(maps[0].flags & kFlagNew, 0);
  EXPECT_EQ(maps[0].offset, 10 * bs);
  EXPECT_EQ(maps[0].length, 21 * bs);
  EXPECT_EQ(maps[0].addr, before->addr + 10 * bs);
  EXPECT_EQ(CountExtents(m.fs(), ino), 3u);
  auto spans = Engine::WriteZeroSpans(maps, 10 * bs + 1, 20 * bs, bs);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0], (ZeroSpan{maps[0].addr, 1}));
  EXPECT_EQ(spans[1], (ZeroSpan{maps[0].addr + 20 * bs + 1, bs - 1}));
  // The data lands, but only the first 5 blocks complete (a short write / partial IOEND).
  std::string data = PatternBytes(5, 10 * bs, 5 * bs);
  ASSERT_TRUE(
      m.fs()
          .fs->data()
          .WriteAt({reinterpret_cast<const std::byte*>(data.data()), data.size()}, maps[0].addr)
          .has_value());
  {
    auto g = m.fs().fs->Lock();
    ext2::Transaction tx(g);
    ASSERT_TRUE(m.fs().engine->CompleteWrite(tx, Ino(ino), 10 * bs, 5 * bs, 15 * bs).has_value());
    // Completing the same range again is a no-op.
    ASSERT_TRUE(m.fs().engine->CompleteWrite(tx, Ino(ino), 10 * bs, 5 * bs, 15 * bs).has_value());
    ASSERT_TRUE(tx.Commit().has_value());
  }
  auto got = ReadThroughEngine(m.fs(), ino, 0, 64 * bs);
  ASSERT_TRUE(got.has_value());
  std::string want(64 * bs, '\0');
  want.replace(10 * bs, 5 * bs, data);
  EXPECT_TRUE(*got == want);
  EXPECT_EQ(CountExtents(m.fs(), ino), 4u);  // U[0,10) M[10,15) U[15,31) U[31,64)
  // Writing everything converts it all and merges it back into one extent.
  std::string all = PatternBytes(6, 0, 64 * bs);
  ASSERT_EQ(WriteThroughEngine(m.fs(), ino, 0, all), 0);
  EXPECT_EQ(CountExtents(m.fs(), ino), 1u);
  EXPECT_EQ(FreeBlocks(m.fs()), free0 - 64);
  EXPECT_EQ(IBlocks(m.fs(), ino), 64 * bs / 512);
  // KEEP_SIZE preallocation past EOF reads as a hole, then a truncate drops it.
  ASSERT_EQ(m.Allocate(ino, 64 * bs, 16 * bs, /*keep_size=*/true), 0);
  EXPECT_EQ(FileSize(*m.fs().fs, ino), 64 * bs);
  EXPECT_EQ(FreeBlocks(m.fs()), free0 - 80);
  ASSERT_EQ(m.Truncate(ino, 64 * bs), 0);
  EXPECT_EQ(FreeBlocks(m.fs()), free0 - 64);
  m.Close();
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

TEST(InlineTest, GrowsInPlaceUpToCapacityThenConverts) {
  TempDir dir;
  std::string image =
      MakeFilesImage(dir, 32 * kMiB, "ext4", {"-b", "4096", "-O", "inline_data", "-I", "256"}, 1);
  WriteModel m(image);
  ASSERT_TRUE(m.fs().fs);
  uint64_t ino = m.Track("/tiny");
  auto is_inline = [&]() {
    auto g = m.fs().fs->Lock();
    auto inode = ext2::InodeBuf::Read(g, static_cast<ext2_ino_t>(ino));
    return inode.has_value() && inode->has_inline_data();
  };
  ASSERT_TRUE(is_inline());
  uint64_t cap = 0;
  {
    auto g = m.fs().fs->Lock();
    cap = m.fs().engine->InlineCapacity(g, Ino(ino)).value();
    // 256-byte inodes: 60 bytes of i_block plus what the in-inode xattr area leaves.
    EXPECT_GT(cap, 60u);
    EXPECT_LT(cap, 256u);
    ext2::Transaction tx(g);
    auto r = m.fs().engine->PrepareWrite(tx, Ino(ino), 0, cap);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ((*r)[0].type, MappingType::kInline);
  }
  // Exactly at capacity: stays inline; the bytes read back.
  ASSERT_EQ(m.Write(ino, 0, PatternBytes(1, 0, cap)), 0);
  EXPECT_TRUE(is_inline());
  m.Verify(ino);
  ASSERT_EQ(m.Truncate(ino, 30), 0);
  EXPECT_TRUE(is_inline());
  m.Verify(ino);
  ASSERT_EQ(m.Write(ino, 50, "x"), 0);  // a gap past EOF reads as zeros
  m.Verify(ino);
  ASSERT_EQ(m.Punch(ino, 10, 5), 0);
  m.Verify(ino);
  // One byte more than fits: converted to an extent file, contents kept.
  ASSERT_EQ(m.Write(ino, cap, "y"), 0);
  EXPECT_FALSE(is_inline());
  m.Verify(ino);
  ASSERT_EQ(m.Write(ino, 3 * 4096 + 5, "end"), 0);
  m.Verify(ino);
  m.Close();
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

// Splitting an extent needs room in its leaf or a free block for a new tree node. With the
// 4-entry root full and no block free, CompleteWrite falls back to ext4's zeroout (zeros written
// over the parts that stay unwritten, the whole extent converted) and ZeroRange returns the
// written middle as a span for the caller to zero instead of converting it.
TEST(UnwrittenTest, SplitsWithoutAFreeBlockFallBack) {
  TempDir dir;
  std::string image = MakeFilesImage(dir, 8 * kMiB, "ext4", {"-b", "4096"}, 2);
  WriteModel m(image);
  ASSERT_TRUE(m.fs().fs);
  const uint64_t bs = 4096;
  uint64_t ino = m.Track("/f0");
  ASSERT_EQ(m.Allocate(ino, 0, 100 * bs, /*keep_size=*/false), 0);  // U[0,100)
  for (uint64_t b : {200, 300, 400}) {
    ASSERT_EQ(m.Write(ino, b * bs, PatternBytes(b, b * bs, 4 * bs)), 0);  // three M extents
  }
  ASSERT_EQ(CountExtents(m.fs(), ino), 4u);
  auto unwritten = CheckedMap(m.fs(), ino, 0, bs);
  ASSERT_TRUE(unwritten.has_value());
  ASSERT_EQ(unwritten->type, MappingType::kUnwritten);
  // Take every free block (behind the engine's back; given back before Close).
  std::vector<blk64_t> taken;
  {
    auto g = m.fs().fs->Lock();
    blk64_t blk = 0;
    while (ext2fs_new_block2(g.fs(), 0, nullptr, &blk) == 0) {
      ext2fs_block_alloc_stats2(g.fs(), blk, +1);
      taken.push_back(blk);
    }
    ASSERT_EQ(ext2fs_free_blocks_count(g->super), 0u);
  }
  // Data lands in the middle of the unwritten extent; completing it cannot split.
  std::string data = PatternBytes(7, 40 * bs, 10 * bs);
  ASSERT_TRUE(m.fs()
                  .fs->data()
                  .WriteAt({reinterpret_cast<const std::byte*>(data.data()), data.size()},
                           unwritten->addr + 40 * bs)
                  .has_value());
  {
    auto g = m.fs().fs->Lock();
    ext2::Transaction tx(g);
    ASSERT_TRUE(m.fs().engine->CompleteWrite(tx, Ino(ino), 40 * bs, 10 * bs, 0).has_value());
    ASSERT_TRUE(tx.Commit().has_value());
  }
  EXPECT_EQ(CountExtents(m.fs(), ino), 4u) << "converted whole, not split";
  auto all = CheckedMap(m.fs(), ino, 0, 100 * bs);
  ASSERT_TRUE(all.has_value());
  EXPECT_EQ(all->type, MappingType::kMapped);
  EXPECT_EQ(all->length, 100 * bs);
  auto got = ReadThroughEngine(m.fs(), ino, 0, 100 * bs);
  ASSERT_TRUE(got.has_value());
  std::string want(100 * bs, '\0');
  want.replace(40 * bs, 10 * bs, data);
  EXPECT_TRUE(*got == want) << "the unwritten parts were zeroed on the device";
  // ZeroRange of written blocks in the middle: the caller gets them to zero instead.
  std::vector<ZeroSpan> spans;
  {
    auto g = m.fs().fs->Lock();
    ext2::Transaction tx(g);
    auto r = m.fs().engine->ZeroRange(tx, Ino(ino), 42 * bs + 7, 5 * bs, /*keep_size=*/true);
    ASSERT_TRUE(r.has_value()) << r.error();
    spans = *r;
    ASSERT_TRUE(tx.Commit().has_value());
  }
  EXPECT_EQ(CountExtents(m.fs(), ino), 4u);
  ASSERT_EQ(spans.size(), 3u);  // the partial head and tail blocks, the whole blocks between
  for (const ZeroSpan& z : spans) {
    std::string zeros(z.length, '\0');
    ASSERT_TRUE(
        m.fs()
            .fs->data()
            .WriteAt({reinterpret_cast<const std::byte*>(zeros.data()), zeros.size()}, z.addr)
            .has_value());
  }
  std::memset(want.data() + 42 * bs + 7, 0, 5 * bs);
  got = ReadThroughEngine(m.fs(), ino, 0, 100 * bs);
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(*got == want);
  {
    auto g = m.fs().fs->Lock();
    for (blk64_t b : taken) ext2fs_block_alloc_stats2(g.fs(), b, -1);
  }
  m.Close();
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

class EnospcTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EnospcTest, FullImageLeavesNothingBehind) {
  TempDir dir;
  std::vector<std::string> args = {"-b", "1024"};
  std::string image = MakeFilesImage(dir, 4 * kMiB, GetParam(), args, 4);
  WriteModel m(image);
  ASSERT_TRUE(m.fs().fs);
  std::vector<uint64_t> inos;
  for (int i = 0; i < 4; ++i) inos.push_back(m.Track("/f" + std::to_string(i)));
  // Fill the image with interleaved writes (fragmented files, tree splits on the way).
  int enospc = 0;
  uint64_t pos[4] = {0, 0, 0, 0};
  for (int step = 0; step < 100000 && enospc < 8; ++step) {
    int f = step % 4;
    uint64_t len = (f + 1) * 3000;
    uint64_t free_before = FreeBlocks(m.fs());
    uint64_t iblocks_before = IBlocks(m.fs(), inos[f]);
    int err = m.Write(inos[f], pos[f], PatternBytes(step, pos[f], len));
    if (err == ENOSPC) {
      ++enospc;
      // Nothing of the failed call stays allocated.
      EXPECT_EQ(FreeBlocks(m.fs()), free_before) << "step " << step;
      EXPECT_EQ(IBlocks(m.fs(), inos[f]), iblocks_before) << "step " << step;
      pos[f] += len;  // try further on, then the other files
      continue;
    }
    ASSERT_EQ(err, 0) << "step " << step;
    pos[f] += len + (step % 3) * 1024;  // leave holes: more extents
  }
  EXPECT_GT(enospc, 0);
  m.VerifyAll();
  // Fallocate on a full image fails cleanly too (what it allocated stays, unwritten).
  EXPECT_EQ(m.Allocate(inos[0], 0, 8 * kMiB, /*keep_size=*/true),
            GetParam() == "ext4" ? ENOSPC : EOPNOTSUPP);
  m.VerifyAll();
  // Freeing space makes writes work again.
  ASSERT_EQ(m.Truncate(inos[1], 0), 0);
  ASSERT_EQ(m.Write(inos[1], 0, PatternBytes(1, 0, 100000)), 0);
  m.VerifyAll();
  m.Close();
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

INSTANTIATE_TEST_SUITE_P(Formats, EnospcTest, ::testing::Values("ext4", "ext2"));

// Metadata cost of the write path (no data I/O): PrepareWrite + CompleteWrite per 1 MiB of
// sequential allocation, per 4 KiB overwrite of written data, and the same on an indirect file.
// Reported as test properties; the bounds only catch a per-block regression (a 1 MiB extent
// write must not cost anywhere near 256 tree updates).
class WriteCostTest : public ::testing::TestWithParam<std::string> {};

TEST_P(WriteCostTest, MetadataCostPerWrite) {
  TempDir dir;
  std::string image = MakeFilesImage(dir, 256 * kMiB, GetParam(), {"-b", "4096"}, 1);
  OpenedFs o = OpenImageRw(image);
  ASSERT_TRUE(o.fs);
  uint64_t ino = LookupIno(*o.fs, "/f0");
  auto round = [&](uint64_t pos, uint64_t len) {
    auto g = o.fs->Lock();
    ext2::Transaction tx(g);
    auto maps = o.engine->PrepareWrite(tx, Ino(ino), pos, len);
    ASSERT_TRUE(maps.has_value()) << maps.error();
    ASSERT_TRUE(o.engine->CompleteWrite(tx, Ino(ino), pos, len, pos + len).has_value());
    ASSERT_TRUE(tx.Commit().has_value());
  };
  using Clock = std::chrono::steady_clock;
  constexpr int kMiBs = 128;
  auto t0 = Clock::now();
  for (int i = 0; i < kMiBs; ++i) round(i * kMiB, kMiB);
  double alloc_us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / kMiBs;
  std::mt19937_64 rng(1);
  constexpr int kOverwrites = 2000;
  t0 = Clock::now();
  for (int i = 0; i < kOverwrites; ++i) round(rng() % (kMiBs * kMiB / 4096) * 4096, 4096);
  double overwrite_us =
      std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / kOverwrites;
  RecordProperty("alloc_us_per_MiB", static_cast<int>(alloc_us));
  RecordProperty("overwrite_us_per_4KiB", static_cast<int>(overwrite_us));
  std::printf(
      "%s: sequential allocation %.1f us per MiB (PrepareWrite + CompleteWrite), "
      "4 KiB overwrite %.1f us\n",
      GetParam().c_str(), alloc_us, overwrite_us);
  if (GetParam() == "ext4") {
    EXPECT_LE(CountExtents(o, ino), 8u);
    EXPECT_LT(alloc_us, 5000);
  }
  EXPECT_LT(overwrite_us, 5000);
  ASSERT_TRUE(o.fs->Close().has_value());
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

INSTANTIATE_TEST_SUITE_P(Formats, WriteCostTest, ::testing::Values("ext4", "ext2"));

}  // namespace
}  // namespace iomapfs::iomap::testing
