// Real images: files fragmented on a kernel ext4 loop mount (writes, fallocate'd unwritten
// extents, holes, offsets past 2^32 and 2^40), mapped by iomap::Engine from the image, compiled,
// loaded in the verifier, and compared with the reference and with Engine::Map itself.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <limits>

#include "bpf/file_program.h"
#include "ext2/ext2_fs.h"
#include "iomap/engine.h"
#include "tests/bpf/bpf_test_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::bpf {
namespace {

namespace t = iomapfs::testing;

struct Spec {
  std::string name;
  size_t extents;
  bool unwritten_every_third;  // else written data everywhere
  uint64_t base;               // file offset of the first extent
};

// Writes (or fallocates) one block at every other block starting at `base`: `n` extents.
bool Fragment(const std::string& path, const Spec& s) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY, 0644);
  if (fd < 0) return false;
  std::string block(4096, 'x');
  for (size_t i = 0; i < s.extents; ++i) {
    off_t off = static_cast<off_t>(s.base + i * 8192);
    bool unw = s.unwritten_every_third && i % 3 == 0;
    int rc = unw ? fallocate(fd, 0, off, 4096)
                 : static_cast<int>(pwrite(fd, block.data(), 4096, off)) - 4096;
    if (rc != 0) {
      close(fd);
      return false;
    }
  }
  if (ftruncate(fd, static_cast<off_t>(s.base + s.extents * 8192 + 3 * 4096)) != 0) return false;
  return close(fd) == 0;
}

TEST(ImageKernel, FragmentedFilesOnARealImage) {
  IOMAPFS_REQUIRE_BPF();
  if (!t::IsRoot()) GTEST_SKIP() << "needs root for a loop mount";
  t::TempDir dir;
  const std::string img = dir.Sub("img");
  ASSERT_EQ(t::MakeImage(img, 256ull << 20, "ext4", {"-b", "4096"}), "");
  const std::string mnt = dir.Sub("mnt");
  ASSERT_EQ(t::Run({"mkdir", "-p", mnt}).exit_code, 0);
  auto m = t::Run({"mount", "-o", "loop", img, mnt});
  if (m.exit_code != 0) GTEST_SKIP() << "loop mount failed: " << m.output;
  std::vector<Spec> specs = {
      {"e1", 1, false, 0},
      {"e2", 2, true, 0},
      {"e8", 8, true, 0},
      {"e64", 64, true, 0},
      {"e512", 512, true, 0},
      {"e4096", 4096, true, 0},
      {"p32", 40, true, (1ull << 32) + 8192},
      {"p40", 40, true, (1ull << 40) + 4096},
  };
  bool ok = true;
  for (const Spec& s : specs) ok = ok && Fragment(mnt + "/" + s.name, s);
  t::Run({"sync"});
  auto u = t::Run({"umount", mnt});
  ASSERT_TRUE(ok);
  ASSERT_EQ(u.exit_code, 0) << u.output;

  std::string why;
  auto fs = ext2::Ext2Fs::Open(img, ext2::OpenOptions{}, &why);
  ASSERT_TRUE(fs.has_value()) << why;
  iomap::Engine engine(**fs);
  for (const Spec& s : specs) {
    SCOPED_TRACE(s.name);
    ext2::Guard g = (*fs)->Lock();
    ext2_ino_t ino = 0;
    ASSERT_EQ(ext2fs_namei(g.fs(), EXT2_ROOT_INO, EXT2_ROOT_INO, s.name.c_str(), &ino), 0);
    auto ms = engine.MapRange(g, Ino(ino), 0, MaxEnd(4096), 0);
    ASSERT_TRUE(ms.has_value()) << ms.error();
    auto map = BuildFileMap(ino, 4096, 1, *ms);
    ASSERT_TRUE(map.has_value()) << map.error();
    size_t data = 0;
    for (const auto& iv : map->intervals) data += iv.type != iomap::MappingType::kHole;
    EXPECT_GE(data, s.extents);  // ext4 may split, never merge (every other block)
    std::string reason;
    auto prog = FileProgram::Build(*map, 7, CodegenOptions{}, &reason);
    ASSERT_TRUE(prog.has_value()) << reason;
    std::printf("%-6s %6zu intervals: %-10s %5zu insns, load %6.0f us (%s)\n", s.name.c_str(),
                map->intervals.size(), StrategyName(prog->strategy()), prog->insns().size(),
                prog->load_ns() / 1e3, reason.c_str());
    EXPECT_EQ(testing::CheckAgainstReference(*prog, *map, 10000, ino), 0u);
    // And the engine itself: its mapping for [pos, pos + 1) lies inside the program's answer.
    std::mt19937_64 rng(ino);
    uint64_t span =
        map->intervals.size() > 1 ? map->intervals[map->intervals.size() - 2].end() : 1 << 20;
    for (int i = 0; i < 500; ++i) {
      uint64_t pos = rng() % (span + 65536);
      auto em = engine.Map(g, Ino(ino), pos, 1, 0);
      ASSERT_TRUE(em.has_value());
      BeginCtx c;
      c.nodeid = ino;
      c.expect_seq = 7;
      c.pos = pos;
      auto got = prog->Run(c);
      ASSERT_TRUE(got.has_value());
      ASSERT_EQ(got->ret, kFibHandled);
      EXPECT_EQ(got->out.read.type, static_cast<uint16_t>(em->type)) << pos;
      EXPECT_LE(got->out.read.offset, em->offset);
      EXPECT_GE(got->out.read.offset + got->out.read.length, em->end());
      if (em->type != iomap::MappingType::kHole) {
        EXPECT_EQ(got->out.read.addr + (em->offset - got->out.read.offset), em->addr) << pos;
      }
    }
  }
}

}  // namespace
}  // namespace iomapfs::bpf
