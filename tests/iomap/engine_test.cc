// Engine tests over images built by mke2fs -d from generated files (no root needed):
// ext4 (extents, 4 KiB and 1 KiB blocks), ext2/ext3 (indirect blocks), inline_data; sparse
// files, many-extent files, a sparse file with data past 4 GiB. Every file is read back through
// MapRange + device reads and compared with its source; every mapping seen is checked.
#include "iomap/engine.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "tests/iomap/iomap_test_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::iomap::testing {
namespace {

using iomapfs::testing::FsckClean;
using iomapfs::testing::MakeImage;
using iomapfs::testing::TempDir;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;

// Where two byte strings first differ, for failure messages.
std::string FirstDiff(const std::string& a, const std::string& b) {
  size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return "first difference at +" + std::to_string(i);
  }
  return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
}

struct SourceFile {
  std::string name;
  uint64_t size;
  std::vector<Piece> pieces;
};

// Every other `unit` bytes written, `count` times: as many extents as pieces.
SourceFile Checkerboard(const std::string& name, uint64_t unit, uint64_t count) {
  SourceFile f{name, 2 * unit * count, {}};
  for (uint64_t i = 0; i < count; ++i) f.pieces.push_back({2 * unit * i, unit});
  return f;
}

std::vector<SourceFile> StandardFiles(uint64_t block) {
  std::vector<SourceFile> files = {
      {"empty", 0, {}},
      {"one", 1, {{0, 1}}},
      {"block_minus", block - 1, {{0, block - 1}}},
      {"block", block, {{0, block}}},
      {"block_plus", block + 1, {{0, block + 1}}},
      {"big", 3 * kMiB + 123, {{0, 3 * kMiB + 123}}},
      // Holes in the middle and at the end (i_size past the last data).
      {"sparse", 4 * kMiB + 7, {{0, 10000}, {kMiB, 5000}, {2 * kMiB + 100, 3 * block}}},
      {"leading_hole", 2 * kMiB + 4096, {{2 * kMiB, 4096}}},
      {"all_hole", 5 * kMiB, {}},
      Checkerboard("checker", 4096, 700),
  };
  return files;
}

void WriteSources(const TempDir& dir, const std::string& sub, const std::vector<SourceFile>& fs) {
  ASSERT_EQ(::mkdir(dir.Sub(sub).c_str(), 0755), 0);
  for (const SourceFile& f : fs) {
    ASSERT_TRUE(WriteSparseFile(dir.Sub(sub) + "/" + f.name, f.size, f.pieces, f.size + 17));
  }
}

// Reads every file back through the engine, compares, probes, and checks the cache is used.
void VerifyFiles(OpenedFs& o, const std::vector<SourceFile>& files) {
  for (const SourceFile& f : files) {
    SCOPED_TRACE(f.name);
    uint64_t ino = LookupIno(*o.fs, "/" + f.name);
    ASSERT_NE(ino, 0u);
    ASSERT_EQ(FileSize(*o.fs, ino), f.size);
    if (f.size <= 64 * kMiB) {
      auto data = ReadThroughEngine(o, ino, 0, f.size);
      ASSERT_TRUE(data.has_value()) << "errno " << data.error();
      std::string want = ExpectedBytes(f.size, f.pieces, f.size + 17, 0, f.size);
      ASSERT_TRUE(*data == want) << "content differs: " << FirstDiff(*data, want);
    } else {
      // Huge sparse files: compare each piece and a window around it.
      for (const Piece& p : f.pieces) {
        uint64_t b = p.offset > 8192 ? p.offset - 8192 : 0;
        uint64_t len = p.len + 16384;
        auto data = ReadThroughEngine(o, ino, b, len);
        ASSERT_TRUE(data.has_value()) << "errno " << data.error();
        std::string want = ExpectedBytes(f.size, f.pieces, f.size + 17, b, len);
        ASSERT_TRUE(*data == want)
            << "content differs near " << p.offset << ": " << FirstDiff(*data, want);
      }
    }
    ProbeConsistency(o, ino, f.size, f.size);
  }
}

struct Config {
  std::string name;
  std::string fs_type;
  uint32_t block;
  std::vector<std::string> extra;
};

class EngineImageTest : public ::testing::TestWithParam<Config> {};

TEST_P(EngineImageTest, FilesReadBackExactly) {
  const Config& c = GetParam();
  TempDir dir;
  std::vector<SourceFile> files = StandardFiles(c.block);
  // Data past 4 GiB: 64-bit offsets everywhere (and triple-indirect blocks on ext2).
  files.push_back({"huge_sparse", 5 * kGiB + 3, {{0, 5000}, {4 * kGiB + 12345, 100000}}});
  WriteSources(dir, "src", files);
  std::vector<std::string> args = {"-b", std::to_string(c.block)};
  args.insert(args.end(), c.extra.begin(), c.extra.end());
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 128 * kMiB, c.fs_type, args, dir.Sub("src")), "");
  {
    OpenedFs o = OpenImage(image);
    ASSERT_TRUE(o.engine);
    VerifyFiles(o, files);
  }
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, EngineImageTest,
    ::testing::Values(Config{"ext4_4k", "ext4", 4096, {}}, Config{"ext4_1k", "ext4", 1024, {}},
                      Config{"ext4_2k_noflex", "ext4", 2048, {"-O", "^flex_bg"}},
                      Config{"ext2_4k", "ext2", 4096, {}}, Config{"ext2_1k", "ext2", 1024, {}},
                      Config{"ext3_4k", "ext3", 4096, {}}),
    [](const ::testing::TestParamInfo<Config>& i) { return i.param.name; });

TEST(EngineTest, InlineDataFiles) {
  TempDir dir;
  std::vector<SourceFile> files = {
      {"tiny", 1, {{0, 1}}},     {"i59", 59, {{0, 59}}},
      {"i60", 60, {{0, 60}}},     // exactly i_block
      {"i100", 100, {{0, 100}}},  // spills into the system.data xattr
      {"empty", 0, {}},          {"not_inline", 3 * 4096 + 5, {{0, 3 * 4096 + 5}}},
  };
  WriteSources(dir, "src", files);
  std::string image = dir.Sub("img");
  ASSERT_EQ(MakeImage(image, 32 * kMiB, "ext4", {"-O", "inline_data", "-I", "256"}, dir.Sub("src")),
            "");
  {
    OpenedFs o = OpenImage(image);
    ASSERT_TRUE(o.engine);
    VerifyFiles(o, files);
    for (const char* name : {"tiny", "i59", "i60", "i100"}) {
      SCOPED_TRACE(name);
      uint64_t ino = LookupIno(*o.fs, std::string("/") + name);
      uint64_t size = FileSize(*o.fs, ino);
      auto m = CheckedMap(o, ino, 0, 4096);
      ASSERT_TRUE(m.has_value());
      EXPECT_EQ(m->type, MappingType::kInline);
      EXPECT_EQ(m->offset, 0u);
      EXPECT_EQ(m->length, size);
      // Partial reads at an offset, and reads at/after EOF.
      auto g = o.fs->Lock();
      std::string buf(200, 'x');
      std::span<std::byte> out(reinterpret_cast<std::byte*>(buf.data()), buf.size());
      auto n = o.engine->ReadInline(g, Ino(ino), size / 2, out);
      ASSERT_TRUE(n.has_value());
      EXPECT_EQ(*n, size - size / 2);
      EXPECT_EQ(buf.substr(0, *n), ExpectedBytes(size, {{0, size}}, size + 17, size / 2, size));
      n = o.engine->ReadInline(g, Ino(ino), size, out);
      ASSERT_TRUE(n.has_value());
      EXPECT_EQ(*n, 0u);
    }
    // A file that is not inline: INLINE reads are refused.
    uint64_t ino = LookupIno(*o.fs, "/not_inline");
    auto g = o.fs->Lock();
    std::string buf(10, '\0');
    auto n = o.engine->ReadInline(
        g, Ino(ino), 0, std::span<std::byte>(reinterpret_cast<std::byte*>(buf.data()), buf.size()));
    EXPECT_EQ(n.error(), ENODATA);
  }
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

class EngineSingleImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    files_ = {
        {"data", 1 * kMiB, {{0, 1 * kMiB}}},
        {"sparse", 4 * kMiB, {{0, 8192}, {2 * kMiB, 8192}}},
        // More extents than one walk reads (Engine::kWindowExtents), 1 KiB blocks.
        Checkerboard("many", 1024, Engine::kWindowExtents * 2 + 77),
    };
    WriteSources(dir_, "src", files_);
    image_ = dir_.Sub("img");
    ASSERT_EQ(MakeImage(image_, 64 * kMiB, "ext4", {"-b", "1024"}, dir_.Sub("src")), "");
    o_ = OpenImage(image_);
    ASSERT_TRUE(o_.engine);
  }
  void TearDown() override {
    o_ = OpenedFs();
    std::string out;
    EXPECT_TRUE(FsckClean(image_, &out)) << out;
  }
  TempDir dir_;
  std::vector<SourceFile> files_;
  std::string image_;
  OpenedFs o_;
};

TEST_F(EngineSingleImageTest, MappedExtentIsMergedAndClipped) {
  uint64_t ino = LookupIno(*o_.fs, "/data");
  // The whole 1 MiB file is one physically contiguous run (mke2fs allocates it in one go):
  // a long request gets one mapping, a short one is clipped at the block after pos + len.
  auto m = CheckedMap(o_, ino, 0, 1 * kMiB);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->type, MappingType::kMapped);
  EXPECT_EQ(m->length, 1 * kMiB);
  m = CheckedMap(o_, ino, 5000, 1);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->offset, 4096u);
  EXPECT_EQ(m->length, 1024u);
  // Past EOF: a hole, however long the request.
  m = CheckedMap(o_, ino, 1 * kMiB, 10 * kMiB);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->type, MappingType::kHole);
  EXPECT_EQ(m->offset, 1 * kMiB);
  EXPECT_EQ(m->length, 10 * kMiB);
  // Far past EOF and near the top of the 64-bit range.
  for (uint64_t pos : std::vector<uint64_t>{1ull << 40, 1ull << 62, UINT64_MAX - 5000}) {
    m = CheckedMap(o_, ino, pos, UINT64_MAX);
    ASSERT_TRUE(m.has_value()) << pos;
    EXPECT_EQ(m->type, MappingType::kHole);
  }
  m = CheckedMap(o_, ino, UINT64_MAX - 5, 1);
  EXPECT_EQ(m.error(), EFBIG);
}

TEST_F(EngineSingleImageTest, HolesRunToTheNextExtent) {
  uint64_t ino = LookupIno(*o_.fs, "/sparse");
  auto m = CheckedMap(o_, ino, 8192, 100 * kMiB);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->type, MappingType::kHole);
  EXPECT_EQ(m->offset, 8192u);
  EXPECT_EQ(m->end(), 2 * kMiB);
  // After the last extent the hole runs to EOF and continues past it.
  m = CheckedMap(o_, ino, 2 * kMiB + 8192, 100 * kMiB);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->type, MappingType::kHole);
  EXPECT_EQ(m->end(), 2 * kMiB + 8192 + 100 * kMiB);
  auto all = CheckedMapRange(o_, ino, 0, 4 * kMiB);
  ASSERT_TRUE(all.has_value());
  EXPECT_EQ(all->size(), 4u) << "data, hole, data, hole";
}

TEST_F(EngineSingleImageTest, ManyExtentsAcrossWindows) {
  const SourceFile& f = files_[2];
  uint64_t ino = LookupIno(*o_.fs, "/many");
  auto all = CheckedMapRange(o_, ino, 0, f.size);
  ASSERT_TRUE(all.has_value()) << all.error();
  // Alternating single-block data and holes, never merged across a hole.
  ASSERT_EQ(all->size(), 2 * f.pieces.size());
  for (size_t i = 0; i < all->size(); ++i) {
    EXPECT_EQ((*all)[i].type, i % 2 == 0 ? MappingType::kMapped : MappingType::kHole) << i;
    EXPECT_EQ((*all)[i].length, 1024u);
  }
  auto data = ReadThroughEngine(o_, ino, 0, f.size);
  ASSERT_TRUE(data.has_value());
  EXPECT_TRUE(*data == ExpectedBytes(f.size, f.pieces, f.size + 17, 0, f.size));
  // Backwards and random order too (windows reloaded around each position).
  for (uint64_t i = f.pieces.size(); i-- > 0;) {
    if (i % 97 != 0) continue;
    auto m = CheckedMap(o_, ino, f.pieces[i].offset + 3, 1);
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->type, MappingType::kMapped);
    EXPECT_EQ(m->addr, (*all)[2 * i].addr);
  }
  ProbeConsistency(o_, ino, f.size, 99);
}

TEST_F(EngineSingleImageTest, CacheServesRepeatedReadsAndInvalidateDropsIt) {
  uint64_t ino = LookupIno(*o_.fs, "/sparse");
  auto g = o_.fs->Lock();
  Engine::Stats before = o_.engine->stats(g);
  for (int i = 0; i < 100; ++i) {
    auto m = o_.engine->Map(g, Ino(ino), (i % 8) * 4096, 4096, 0);
    ASSERT_TRUE(m.has_value());
  }
  Engine::Stats after = o_.engine->stats(g);
  EXPECT_EQ(after.windows_loaded - before.windows_loaded, 1u);
  EXPECT_EQ(after.cache_hits - before.cache_hits, 99u);
  o_.engine->Invalidate(g, Ino(ino));
  ASSERT_TRUE(o_.engine->Map(g, Ino(ino), 0, 4096, 0).has_value());
  EXPECT_EQ(o_.engine->stats(g).windows_loaded - after.windows_loaded, 1u);
  o_.engine->InvalidateAll(g);
  EXPECT_EQ(o_.engine->stats(g).cached_inodes, 0u);
}

TEST_F(EngineSingleImageTest, ArgumentErrors) {
  uint64_t ino = LookupIno(*o_.fs, "/data");
  auto g = o_.fs->Lock();
  EXPECT_EQ(o_.engine->Map(g, Ino(ino), 0, 0, 0).error(), EINVAL);
  EXPECT_EQ(o_.engine->Map(g, Ino(ino), 0, 1, kOpWrite).error(), EOPNOTSUPP);
  EXPECT_EQ(o_.engine->Map(g, Ino(ino), 0, 1, kOpZero).error(), EOPNOTSUPP);
  EXPECT_TRUE(o_.engine->Map(g, Ino(ino), 0, 1, kOpReport | kOpDirect).has_value());
  EXPECT_EQ(o_.engine->Map(g, Ino(0), 0, 1, 0).error(), ENOENT);
  EXPECT_EQ(o_.engine->Map(g, Ino(1ull << 40), 0, 1, 0).error(), ENOENT);
  // An unused inode number inside the table.
  EXPECT_EQ(o_.engine->Map(g, Ino(g->super->s_inodes_count), 0, 1, 0).error(), ENOENT);
  EXPECT_EQ(o_.engine->MapRange(g, Ino(ino), 0, 0, 0).error(), EINVAL);
}

}  // namespace
}  // namespace iomapfs::iomap::testing
