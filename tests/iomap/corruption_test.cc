// Corrupt layouts: each becomes EUCLEAN for the damaged file, never a crash or abort, while
// the other files of the same filesystem keep mapping. Inodes are patched through libext2fs
// (so the inode checksum stays valid and only the structure under test is wrong).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <map>
#include <random>
#include <string>

#include "iomap/engine.h"
#include "tests/iomap/iomap_test_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::iomap::testing {
namespace {

using iomapfs::testing::MakeImage;
using iomapfs::testing::TempDir;

constexpr uint64_t kMiB = 1024 * 1024;

class CorruptionTest : public ::testing::Test {
 protected:
  // Builds an image of `fs_type` holding: "good" (1 MiB), "two" (two extents), "many" (a
  // depth >= 1 extent tree / indirect blocks), "small" (3 blocks).
  void Build(const std::string& fs_type, const std::vector<std::string>& args) {
    ASSERT_EQ(::mkdir(dir_.Sub("src").c_str(), 0755), 0);
    ASSERT_TRUE(WriteSparseFile(dir_.Sub("src/good"), kMiB, {{0, kMiB}}, 1));
    ASSERT_TRUE(WriteSparseFile(dir_.Sub("src/two"), kMiB, {{0, 8192}, {512 * 1024, 8192}}, 2));
    std::vector<Piece> many;
    for (uint64_t i = 0; i < 200; ++i) many.push_back({i * 8192, 4096});
    ASSERT_TRUE(WriteSparseFile(dir_.Sub("src/many"), 200 * 8192, many, 3));
    ASSERT_TRUE(WriteSparseFile(dir_.Sub("src/small"), 3 * 4096, {{0, 3 * 4096}}, 4));
    image_ = dir_.Sub("img");
    ASSERT_EQ(MakeImage(image_, 32 * kMiB, fs_type, args, dir_.Sub("src")), "");
    std::string why;
    auto fs = ext2::Ext2Fs::Open(image_, ext2::OpenOptions{.read_write = true}, &why);
    ASSERT_TRUE(fs.has_value()) << why;
    fs_ = std::move(*fs);
    engine_ = std::make_unique<Engine>(*fs_);
    for (const char* n : {"good", "two", "many", "small"}) {
      ext2_ino_t ino = 0;
      auto g = fs_->Lock();
      ASSERT_EQ(ext2fs_namei(g.fs(), EXT2_ROOT_INO, EXT2_ROOT_INO, n, &ino), 0);
      inos_[n] = ino;
    }
  }

  // Rewrites the inode of `name` after `patch` edits it (checksum recomputed).
  template <class F>
  void PatchInode(const std::string& name, F patch) {
    auto g = fs_->Lock();
    ext2_inode inode;
    ASSERT_EQ(ext2fs_read_inode(g.fs(), inos_[name], &inode), 0);
    patch(&inode, g.fs());
    ASSERT_EQ(ext2fs_write_inode(g.fs(), inos_[name], &inode), 0);
  }

  Result<std::vector<Mapping>> MapAll(const std::string& name) {
    auto g = fs_->Lock();
    auto r = engine_->MapRange(g, Ino(inos_[name]), 0, 2 * kMiB, 0);
    if (r) {
      uint64_t dev = ext2fs_blocks_count(g->super) * static_cast<uint64_t>(g->blocksize);
      uint64_t pos = 0;
      for (const Mapping& m : *r) {
        std::string why;
        EXPECT_TRUE(CheckMapping(m, pos, fs_->block_size(), dev, &why).has_value()) << why;
        pos = m.end();
      }
    }
    return r;
  }

  // The untouched file still maps and reads back.
  void ExpectGoodStillWorks() {
    auto r = MapAll("good");
    ASSERT_TRUE(r.has_value()) << r.error();
    ASSERT_FALSE(r->empty());
    EXPECT_EQ((*r)[0].type, MappingType::kMapped);
    EXPECT_GE((*r)[0].length, 4096u);
  }

  static ext3_extent_header* Header(ext2_inode* i) {
    return reinterpret_cast<ext3_extent_header*>(i->i_block);
  }
  static ext3_extent* FirstExtent(ext2_inode* i) {
    return reinterpret_cast<ext3_extent*>(Header(i) + 1);
  }

  TempDir dir_;
  std::string image_;
  std::unique_ptr<ext2::Ext2Fs> fs_;
  std::unique_ptr<Engine> engine_;
  std::map<std::string, ext2_ino_t> inos_;
};

TEST_F(CorruptionTest, BadExtentHeaderMagic) {
  Build("ext4", {"-b", "4096"});
  ASSERT_TRUE(MapAll("two").has_value());  // cached before the damage
  PatchInode("two", [](ext2_inode* i, ext2_filsys) { Header(i)->eh_magic = 0x1234; });
  EXPECT_EQ(MapAll("two").error(), EUCLEAN);
  ExpectGoodStillWorks();
}

TEST_F(CorruptionTest, BadHeaderCounts) {
  Build("ext4", {"-b", "4096"});
  PatchInode("two",
             [](ext2_inode* i, ext2_filsys) { Header(i)->eh_entries = Header(i)->eh_max + 1; });
  EXPECT_EQ(MapAll("two").error(), EUCLEAN);
  PatchInode("small", [](ext2_inode* i, ext2_filsys) { Header(i)->eh_depth = 9; });
  EXPECT_EQ(MapAll("small").error(), EUCLEAN);
  ExpectGoodStillWorks();
}

TEST_F(CorruptionTest, ExtentPastEndOfFilesystem) {
  Build("ext4", {"-b", "4096"});
  PatchInode("small", [](ext2_inode* i, ext2_filsys fs) {
    FirstExtent(i)->ee_start = static_cast<uint32_t>(ext2fs_blocks_count(fs->super) - 1);
  });
  EXPECT_EQ(MapAll("small").error(), EUCLEAN) << "3 blocks starting at the last block";
  PatchInode("two", [](ext2_inode* i, ext2_filsys) { FirstExtent(i)->ee_start_hi = 7; });
  EXPECT_EQ(MapAll("two").error(), EUCLEAN) << "48-bit block far past the end";
  ExpectGoodStillWorks();
}

TEST_F(CorruptionTest, ExtentAtBlockZeroAndZeroLength) {
  Build("ext4", {"-b", "4096"});
  PatchInode("small", [](ext2_inode* i, ext2_filsys) {
    FirstExtent(i)->ee_start = 0;
    FirstExtent(i)->ee_start_hi = 0;
  });
  EXPECT_EQ(MapAll("small").error(), EUCLEAN);
  PatchInode("two", [](ext2_inode* i, ext2_filsys) { FirstExtent(i)->ee_len = 0; });
  EXPECT_EQ(MapAll("two").error(), EUCLEAN);
  ExpectGoodStillWorks();
}

TEST_F(CorruptionTest, OverlappingAndOutOfOrderExtents) {
  Build("ext4", {"-b", "4096"});
  PatchInode("two", [](ext2_inode* i, ext2_filsys) {
    ASSERT_EQ(Header(i)->eh_entries, 2);
    FirstExtent(i)[1].ee_block = 1;  // inside the first extent [0, 2)
  });
  EXPECT_EQ(MapAll("two").error(), EUCLEAN);
  PatchInode("two", [](ext2_inode* i, ext2_filsys) {
    FirstExtent(i)[0].ee_block = 1000;  // first after second
    FirstExtent(i)[1].ee_block = 128;
  });
  EXPECT_EQ(MapAll("two").error(), EUCLEAN);
  PatchInode("two", [](ext2_inode* i, ext2_filsys) {
    FirstExtent(i)[0].ee_block = 0;
    FirstExtent(i)[1].ee_block = 0xFFFFFFFFu;  // runs past 2^32 logical blocks
  });
  auto g = fs_->Lock();
  // A walk that reaches the bad extent fails.
  auto m = engine_->Map(g, Ino(inos_["two"]), 4096 * 100, 4096, 0);
  EXPECT_EQ(m.error(), EUCLEAN);
}

TEST_F(CorruptionTest, IndexPointingOutsideTheFilesystem) {
  Build("ext4", {"-b", "4096"});
  {
    auto g = fs_->Lock();
    ext2_inode inode;
    ASSERT_EQ(ext2fs_read_inode(g.fs(), inos_["many"], &inode), 0);
    ASSERT_GE(Header(&inode)->eh_depth, 1) << "need an index node";
  }
  PatchInode("many", [](ext2_inode* i, ext2_filsys fs) {
    auto* idx = reinterpret_cast<ext3_extent_idx*>(Header(i) + 1);
    idx->ei_leaf = static_cast<uint32_t>(ext2fs_blocks_count(fs->super) + 100);
  });
  EXPECT_EQ(MapAll("many").error(), EUCLEAN);
  PatchInode("many", [](ext2_inode* i, ext2_filsys) {
    auto* idx = reinterpret_cast<ext3_extent_idx*>(Header(i) + 1);
    idx->ei_leaf = 0;  // the boot block: not an extent block
  });
  EXPECT_EQ(MapAll("many").error(), EUCLEAN);
  ExpectGoodStillWorks();
}

TEST_F(CorruptionTest, GarbageLeafBlock) {
  Build("ext4", {"-b", "4096"});
  uint64_t leaf = 0;
  {
    auto g = fs_->Lock();
    ext2_inode inode;
    ASSERT_EQ(ext2fs_read_inode(g.fs(), inos_["many"], &inode), 0);
    ASSERT_GE(Header(&inode)->eh_depth, 1);
    leaf = reinterpret_cast<ext3_extent_idx*>(Header(&inode) + 1)->ei_leaf;
    // Scribble over the leaf block (bad entries; with metadata_csum also a bad checksum).
    std::string junk = PatternBytes(9, 0, g->blocksize);
    ASSERT_EQ(io_channel_write_blk64(g->io, leaf, 1, junk.data()), 0);
    ASSERT_EQ(io_channel_flush(g->io), 0);
  }
  EXPECT_EQ(MapAll("many").error(), EUCLEAN);
  ExpectGoodStillWorks();
}

TEST_F(CorruptionTest, IndirectBlockPastTheEnd) {
  Build("ext2", {"-b", "1024"});
  PatchInode("many", [](ext2_inode* i, ext2_filsys fs) {
    i->i_block[EXT2_IND_BLOCK] = static_cast<uint32_t>(ext2fs_blocks_count(fs->super) + 5);
  });
  EXPECT_EQ(MapAll("many").error(), EUCLEAN);
  PatchInode("small", [](ext2_inode* i, ext2_filsys fs) {
    i->i_block[1] = static_cast<uint32_t>(ext2fs_blocks_count(fs->super) + 1);
  });
  EXPECT_EQ(MapAll("small").error(), EUCLEAN);
  ExpectGoodStillWorks();
}

TEST_F(CorruptionTest, RandomRootsNeverCrash) {
  // Random i_block contents under a valid header, and fully random ones: every answer is
  // either an error or a mapping set that passes CheckMapping.
  Build("ext4", {"-b", "1024"});
  std::mt19937_64 rng(42);
  int errors = 0;
  for (int iter = 0; iter < 300; ++iter) {
    PatchInode("two", [&](ext2_inode* i, ext2_filsys) {
      for (auto& w : i->i_block) w = static_cast<uint32_t>(rng());
      if (iter % 3 != 0) {
        Header(i)->eh_magic = EXT3_EXT_MAGIC;
        Header(i)->eh_max = 4;
        Header(i)->eh_entries = static_cast<uint16_t>(rng() % 5);
        Header(i)->eh_depth = static_cast<uint16_t>(rng() % 3);
      }
      i->i_flags |= EXT4_EXTENTS_FL;
    });
    auto r = MapAll("two");
    if (!r) {
      ++errors;
      EXPECT_TRUE(r.error() == EUCLEAN || r.error() == EIO) << r.error();
    }
  }
  EXPECT_GT(errors, 0);
  ExpectGoodStillWorks();
}

TEST_F(CorruptionTest, InlineSizeLargerThanInlineArea) {
  ASSERT_EQ(::mkdir(dir_.Sub("src").c_str(), 0755), 0);
  ASSERT_TRUE(WriteSparseFile(dir_.Sub("src/good"), kMiB, {{0, kMiB}}, 1));
  ASSERT_TRUE(WriteSparseFile(dir_.Sub("src/tiny"), 40, {{0, 40}}, 1));
  image_ = dir_.Sub("img");
  ASSERT_EQ(MakeImage(image_, 32 * kMiB, "ext4", {"-O", "inline_data"}, dir_.Sub("src")), "");
  std::string why;
  auto fs = ext2::Ext2Fs::Open(image_, ext2::OpenOptions{.read_write = true}, &why);
  ASSERT_TRUE(fs.has_value()) << why;
  fs_ = std::move(*fs);
  engine_ = std::make_unique<Engine>(*fs_);
  for (const char* n : {"good", "tiny"}) {
    auto g = fs_->Lock();
    ASSERT_EQ(ext2fs_namei(g.fs(), EXT2_ROOT_INO, EXT2_ROOT_INO, n, &inos_[n]), 0);
  }
  PatchInode("tiny", [](ext2_inode* i, ext2_filsys) {
    ASSERT_NE(i->i_flags & EXT4_INLINE_DATA_FL, 0u);
    i->i_size = 100000;
  });
  EXPECT_EQ(MapAll("tiny").error(), EUCLEAN);
  {
    auto g = fs_->Lock();
    std::byte buf[16];
    EXPECT_EQ(engine_->ReadInline(g, Ino(inos_["tiny"]), 0, buf).error(), EUCLEAN);
  }
  ExpectGoodStillWorks();
}

}  // namespace
}  // namespace iomapfs::iomap::testing
