// Real images built directly with libext2fs (no kernel fragmentation, which is slow): a file of
// 100,000 extents (every other physical block, some unwritten, some logical holes) and an exact
// stride file. Both are mapped by iomap::Engine from the image, compiled (the stride file must
// get the arithmetic strategy), loaded in the verifier, and compared with the reference and with
// Engine::Map at 10,000 random positions plus every interval boundary; e2fsck -fn stays clean.
#include <ext2fs/ext2fs.h>
#include <gtest/gtest.h>

#include <random>

#include "bpf/file_program.h"
#include "ext2/ext2_fs.h"
#include "iomap/engine.h"
#include "tests/bpf/bpf_test_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::bpf {
namespace {

namespace t = iomapfs::testing;

struct Planned {
  uint64_t lblk;
  uint64_t pblk;
  bool uninit;
};

// Creates /name with the given extents (4 KiB blocks) and i_size at the last extent's end.
errcode_t AddFile(ext2_filsys fs, const char* name, const std::vector<Planned>& extents) {
  ext2_ino_t ino = 0;
  errcode_t err = ext2fs_new_inode(fs, EXT2_ROOT_INO, LINUX_S_IFREG | 0644, nullptr, &ino);
  if (err != 0) return err;
  ext2fs_inode_alloc_stats2(fs, ino, +1, 0);
  ext2_inode inode{};
  inode.i_mode = LINUX_S_IFREG | 0644;
  inode.i_links_count = 1;
  inode.i_flags = EXT4_EXTENTS_FL;
  inode.i_atime = inode.i_ctime = inode.i_mtime = static_cast<uint32_t>(fs->now ? fs->now : 1);
  if ((err = ext2fs_write_new_inode(fs, ino, &inode)) != 0) return err;
  ext2_extent_handle_t h = nullptr;
  if ((err = ext2fs_extent_open2(fs, ino, &inode, &h)) != 0) return err;
  for (const Planned& e : extents) {
    ext2fs_block_alloc_stats2(fs, e.pblk, +1);
    err = ext2fs_extent_set_bmap(h, e.lblk, e.pblk, e.uninit ? EXT2_EXTENT_SET_BMAP_UNINIT : 0);
    if (err == 0) err = ext2fs_iblk_add_blocks(fs, &inode, 1);
    if (err != 0) break;
  }
  ext2fs_extent_free(h);
  if (err != 0) return err;
  if ((err = ext2fs_inode_size_set(fs, &inode, (extents.back().lblk + 1) * 4096)) != 0) return err;
  if ((err = ext2fs_write_inode(fs, ino, &inode)) != 0) return err;
  err = ext2fs_link(fs, EXT2_ROOT_INO, name, ino, EXT2_FT_REG_FILE);
  if (err == EXT2_ET_DIR_NO_SPACE) {
    if ((err = ext2fs_expand_dir(fs, EXT2_ROOT_INO)) != 0) return err;
    err = ext2fs_link(fs, EXT2_ROOT_INO, name, ino, EXT2_FT_REG_FILE);
  }
  return err;
}

// Compares `prog` with Engine::Map at `positions`: the engine's mapping for [pos, pos + 1) must
// lie inside the program's answer, with the same type and address.
void CheckAgainstEngine(const FileProgram& prog, iomap::Engine& engine, const ext2::Guard& g,
                        ext2_ino_t ino, const std::vector<uint64_t>& positions) {
  size_t bad = 0;
  for (uint64_t pos : positions) {
    if (pos >= kPosLimit) continue;
    auto em = engine.Map(g, Ino(ino), pos, 1, 0);
    ASSERT_TRUE(em.has_value()) << pos;
    BeginCtx c;
    c.nodeid = ino;
    c.expect_seq = prog.seq();
    c.pos = pos;
    auto got = prog.Run(c);
    ASSERT_TRUE(got.has_value());
    bool ok = got->ret == kFibHandled && got->out.read.type == static_cast<uint16_t>(em->type) &&
              got->out.read.offset <= em->offset &&
              got->out.read.offset + got->out.read.length >= em->end() &&
              (em->type == iomap::MappingType::kHole ||
               got->out.read.addr + (em->offset - got->out.read.offset) == em->addr);
    if (!ok && ++bad <= 5) {
      ADD_FAILURE() << "pos " << pos << ": program " << ToString(*got) << ", engine type "
                    << static_cast<int>(em->type) << " [" << em->offset << ", " << em->end()
                    << ") addr " << em->addr;
    }
  }
  EXPECT_EQ(bad, 0u);
}

TEST(ImageKernel, HundredThousandExtentsAndAStrideFileBuiltWithLibext2fs) {
  IOMAPFS_REQUIRE_BPF();
  t::TempDir dir;
  const std::string img = dir.Sub("img");
  ASSERT_EQ(t::MakeImage(img, 2ull << 30, "ext4", {"-b", "4096"}), "");
  {
    ext2_filsys fs = nullptr;
    ASSERT_EQ(ext2fs_open(img.c_str(), EXT2_FLAG_RW | EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs),
              0);
    ASSERT_EQ(ext2fs_read_bitmaps(fs), 0);
    // The stride file first, in a free run: 2,000 blocks at logical 3k, physical b0 + 2k.
    constexpr uint64_t kStride = 2000;
    blk64_t b0 = 0;
    for (blk64_t b = ext2fs_blocks_count(fs->super) / 2; b0 == 0; b += 4096) {
      bool free_run = true;
      for (blk64_t x = b; x < b + 2 * kStride && free_run; ++x) {
        free_run = !ext2fs_test_block_bitmap2(fs->block_map, x);
      }
      if (free_run) b0 = b;
    }
    std::vector<Planned> stride;
    for (uint64_t k = 0; k < kStride; ++k) stride.push_back({3 * k, b0 + 2 * k, false});
    ASSERT_EQ(AddFile(fs, "stride", stride), 0);
    // 100,000 extents: every other free block, every third unwritten, a logical hole before
    // every fifth.
    std::vector<Planned> many;
    blk64_t goal = 10000;
    uint64_t lblk = 0;
    for (uint64_t i = 0; i < 100000; ++i) {
      blk64_t b = 0;
      ASSERT_EQ(ext2fs_new_block2(fs, goal, nullptr, &b), 0);
      ext2fs_mark_block_bitmap2(fs->block_map, b);  // claimed for good in AddFile
      if (i % 5 == 0) lblk += 1 + i % 7;
      many.push_back({lblk++, b, i % 3 == 0});
      goal = b + 2;
    }
    for (const Planned& e : many) ext2fs_unmark_block_bitmap2(fs->block_map, e.pblk);
    ASSERT_EQ(AddFile(fs, "many", many), 0);
    ASSERT_EQ(ext2fs_close_free(&fs), 0);
  }
  std::string fsck;
  EXPECT_TRUE(t::FsckClean(img, &fsck)) << fsck;

  std::string why;
  auto fs = ext2::Ext2Fs::Open(img, ext2::OpenOptions{}, &why);
  ASSERT_TRUE(fs.has_value()) << why;
  iomap::Engine engine(**fs);
  struct Expect {
    const char* name;
    Strategy strategy;
    size_t min_extents;
  };
  for (Expect e : {Expect{"stride", Strategy::kArithmetic, 2000},
                   Expect{"many", Strategy::kMapSearch, 100000}}) {
    SCOPED_TRACE(e.name);
    ext2::Guard g = (*fs)->Lock();
    ext2_ino_t ino = 0;
    ASSERT_EQ(ext2fs_namei(g.fs(), EXT2_ROOT_INO, EXT2_ROOT_INO, e.name, &ino), 0);
    auto ms = engine.MapRange(g, Ino(ino), 0, MaxEnd(4096), 0);
    ASSERT_TRUE(ms.has_value()) << ms.error();
    auto map = BuildFileMap(ino, 4096, 1, *ms);
    ASSERT_TRUE(map.has_value()) << map.error();
    size_t data = 0;
    for (const auto& iv : map->intervals) data += iv.type != iomap::MappingType::kHole;
    EXPECT_EQ(data, e.min_extents);  // nothing merged: physical gaps everywhere
    std::string reason;
    auto prog = FileProgram::Build(*map, 7, CodegenOptions{}, &reason);
    ASSERT_TRUE(prog.has_value()) << reason;
    EXPECT_EQ(prog->strategy(), e.strategy) << reason;
    std::printf("%-6s %6zu intervals: %-10s %5zu insns, load %6.0f us (%s)\n", e.name,
                map->intervals.size(), StrategyName(prog->strategy()), prog->insns().size(),
                prog->load_ns() / 1e3, reason.c_str());
    EXPECT_EQ(testing::CheckAgainstReference(*prog, *map, 10000, ino), 0u);
    // The engine at 10,000 random positions plus every interval's first and last byte.
    std::vector<uint64_t> positions;
    std::mt19937_64 rng(ino);
    const uint64_t span = map->intervals[map->intervals.size() - 2].end() + 65536;
    for (int i = 0; i < 10000; ++i) positions.push_back(rng() % span);
    for (const auto& iv : map->intervals) {
      positions.push_back(iv.offset);
      if (iv.end() < kPosLimit) positions.push_back(iv.end() - 1);
    }
    CheckAgainstEngine(*prog, engine, g, ino, positions);
  }
}

}  // namespace
}  // namespace iomapfs::bpf
