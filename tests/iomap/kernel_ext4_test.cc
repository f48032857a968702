// The engine against kernel ext4 (root, loop devices): files laid out by the kernel
// (fragmented, fallocate'd unwritten ranges, KEEP_SIZE preallocation past EOF, punched holes,
// many extents, a sparse file with data past 4 GiB, indirect-mapped ext2 files, inline data)
// are read back through the engine and compared with what the kernel read, and the engine's
// MAPPED/UNWRITTEN ranges are compared with FIEMAP taken while the image was mounted.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "iomap/engine.h"
#include "tests/iomap/iomap_test_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::iomap::testing {
namespace {

using iomapfs::testing::FsckClean;
using iomapfs::testing::IsRoot;
using iomapfs::testing::MakeImage;
using iomapfs::testing::TempDir;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;

// What the kernel said about one file while mounted.
struct KernelView {
  uint64_t size = 0;
  std::vector<PhysRange> fiemap;         // clipped to the file's blocks, merged
  std::map<uint64_t, std::string> data;  // offset -> bytes read by the kernel
  bool inline_data = false;
};

// FIEMAP of `path` (FIEMAP_FLAG_SYNC), as byte ranges inside [0, limit).
bool Fiemap(const std::string& path, uint64_t limit, std::vector<PhysRange>* out,
            bool* inline_data) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  constexpr size_t kCount = 512;
  std::vector<char> buf(sizeof(fiemap) + kCount * sizeof(fiemap_extent));
  auto* fm = reinterpret_cast<fiemap*>(buf.data());
  uint64_t start = 0;
  bool last = false;
  bool ok = true;
  while (!last && start < limit) {
    std::memset(buf.data(), 0, buf.size());
    fm->fm_start = start;
    fm->fm_length = ~0ull - start;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = kCount;
    if (::ioctl(fd, FS_IOC_FIEMAP, fm) != 0) {
      ok = false;
      break;
    }
    if (fm->fm_mapped_extents == 0) break;
    for (uint32_t i = 0; i < fm->fm_mapped_extents; ++i) {
      const fiemap_extent& e = fm->fm_extents[i];
      if (e.fe_flags & FIEMAP_EXTENT_LAST) last = true;
      start = e.fe_logical + e.fe_length;
      if (e.fe_flags & FIEMAP_EXTENT_DATA_INLINE) {
        *inline_data = true;
        continue;
      }
      if (e.fe_logical >= limit) continue;
      uint64_t len = std::min<uint64_t>(e.fe_length, limit - e.fe_logical);
      out->push_back(
          PhysRange{e.fe_logical, len, e.fe_physical, (e.fe_flags & FIEMAP_EXTENT_UNWRITTEN) != 0});
    }
  }
  ::close(fd);
  *out = MergePhys(std::move(*out));
  return ok;
}

std::string ReadRange(const std::string& path, uint64_t off, uint64_t len) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  std::string out(len, '\0');
  ssize_t n = fd < 0 ? -1 : ::pread(fd, out.data(), len, static_cast<off_t>(off));
  if (fd >= 0) ::close(fd);
  out.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return out;
}

bool PwritePattern(int fd, uint64_t seed, uint64_t off, uint64_t len) {
  std::string d = PatternBytes(seed, off, len);
  return ::pwrite(fd, d.data(), d.size(), static_cast<off_t>(off)) ==
         static_cast<ssize_t>(d.size());
}

struct KConfig {
  std::string name;
  std::string fs_type;
  uint32_t block;
  std::vector<std::string> extra;
};

class KernelExt4Test : public ::testing::TestWithParam<KConfig> {
 protected:
  void SetUp() override {
    if (!IsRoot()) GTEST_SKIP() << "needs root to loop-mount images with kernel ext4";
    if (::access("/dev/loop-control", F_OK) != 0) GTEST_SKIP() << "no loop devices here";
  }
  void TearDown() override {
    if (mounted_) (void)iomapfs::testing::Run({"umount", mnt_});
  }

  void Mount() {
    mnt_ = dir_.Sub("mnt");
    ASSERT_EQ(::mkdir(mnt_.c_str(), 0755), 0);
    auto r = iomapfs::testing::Run({"mount", "-t", GetParam().fs_type, "-o", "loop", image_, mnt_});
    if (r.exit_code != 0) GTEST_SKIP() << "cannot loop-mount: " << r.output;
    mounted_ = true;
  }
  void Unmount() {
    auto r = iomapfs::testing::Run({"umount", mnt_});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    mounted_ = false;
  }
  std::string P(const std::string& name) const { return mnt_ + "/" + name; }

  // Creates the kernel-laid-out files. Returns the names created.
  std::vector<std::string> CreateFiles(bool extents, uint32_t bs) {
    std::vector<std::string> names;
    auto open_new = [&](const std::string& name) {
      names.push_back(name);
      return ::open(P(name).c_str(), O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
    };
    // Two files grown in turns with fsync between: fragmented.
    int a = open_new("frag_a");
    int b = open_new("frag_b");
    for (uint64_t i = 0; i < 40; ++i) {
      EXPECT_TRUE(PwritePattern(a, 1, i * 64 * kKiB, 64 * kKiB));
      EXPECT_EQ(::fsync(a), 0);
      EXPECT_TRUE(PwritePattern(b, 2, i * 64 * kKiB, 64 * kKiB));
      EXPECT_EQ(::fsync(b), 0);
    }
    ::close(a);
    ::close(b);
    // Every other block, synced, then the gaps filled: many extents, a deep tree.
    int c = open_new("checker_fill");
    for (uint64_t i = 0; i < 3000; i += 2) EXPECT_TRUE(PwritePattern(c, 3, i * bs, bs));
    EXPECT_EQ(::fsync(c), 0);
    for (uint64_t i = 1; i < 3000; i += 2) EXPECT_TRUE(PwritePattern(c, 3, i * bs, bs));
    EXPECT_EQ(::fsync(c), 0);
    ::close(c);
    // Every other block only.
    int d = open_new("checker");
    for (uint64_t i = 0; i < 2000; i += 2) EXPECT_TRUE(PwritePattern(d, 4, i * bs, bs));
    ::close(d);
    // Sparse with a trailing hole.
    int e = open_new("sparse");
    EXPECT_TRUE(PwritePattern(e, 5, 100 * kKiB, 5000));
    EXPECT_TRUE(PwritePattern(e, 5, 3 * kMiB + 77, 20000));
    EXPECT_EQ(::ftruncate(e, 8 * kMiB + 3), 0);
    ::close(e);
    // Data past 4 GiB.
    int h = open_new("huge");
    EXPECT_TRUE(PwritePattern(h, 6, 0, 4096));
    EXPECT_TRUE(PwritePattern(h, 6, 4 * kGiB + 8191, 70000));
    EXPECT_TRUE(PwritePattern(h, 6, 5 * kGiB - 100, 100));
    ::close(h);
    if (extents) {
      // Unwritten: fallocate, then write into the middle.
      int f = open_new("falloc");
      EXPECT_EQ(::fallocate(f, 0, 0, 2 * kMiB), 0);
      EXPECT_TRUE(PwritePattern(f, 7, 512 * kKiB + 100, 3 * bs));
      EXPECT_EQ(::fsync(f), 0);
      ::close(f);
      // Preallocated past EOF (KEEP_SIZE): a hole for the engine, clipped for FIEMAP.
      int k = open_new("falloc_keep");
      EXPECT_TRUE(PwritePattern(k, 8, 0, 10000));
      EXPECT_EQ(::fallocate(k, FALLOC_FL_KEEP_SIZE, 0, kMiB), 0);
      EXPECT_EQ(::fsync(k), 0);
      ::close(k);
      // Holes punched into written data.
      int p = open_new("punched");
      EXPECT_TRUE(PwritePattern(p, 9, 0, 2 * kMiB));
      EXPECT_EQ(::fsync(p), 0);
      for (uint64_t off = 64 * kKiB; off < 2 * kMiB; off += 256 * kKiB) {
        EXPECT_EQ(::fallocate(p, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, 64 * kKiB), 0);
      }
      ::close(p);
      // Whole file unwritten, size set by fallocate -l.
      auto r = iomapfs::testing::Run({"fallocate", "-l", "3M", P("falloc_l")});
      EXPECT_EQ(r.exit_code, 0) << r.output;
      names.push_back("falloc_l");
    }
    // Small files (inline when the feature is on).
    for (uint64_t n : {1, 50, 120, 4000}) {
      std::string name = "small" + std::to_string(n);
      int s = open_new(name);
      EXPECT_TRUE(PwritePattern(s, n, 0, n));
      ::close(s);
    }
    ::sync();
    return names;
  }

  TempDir dir_;
  std::string image_;
  std::string mnt_;
  bool mounted_ = false;
};

TEST_P(KernelExt4Test, EngineAgreesWithKernel) {
  const KConfig& c = GetParam();
  image_ = dir_.Sub("img");
  std::vector<std::string> args = {"-b", std::to_string(c.block)};
  args.insert(args.end(), c.extra.begin(), c.extra.end());
  ASSERT_EQ(MakeImage(image_, 256 * kMiB, c.fs_type, args), "");
  Mount();
  if (IsSkipped()) return;
  const bool extents = c.fs_type == "ext4";
  std::vector<std::string> names = CreateFiles(extents, c.block);
  ASSERT_FALSE(HasFailure());

  std::map<std::string, KernelView> views;
  for (const std::string& n : names) {
    KernelView v;
    struct stat st;
    ASSERT_EQ(::stat(P(n).c_str(), &st), 0);
    v.size = static_cast<uint64_t>(st.st_size);
    uint64_t limit = (v.size + c.block - 1) / c.block * c.block;
    ASSERT_TRUE(Fiemap(P(n), limit, &v.fiemap, &v.inline_data)) << n;
    if (v.size <= 64 * kMiB) {
      v.data[0] = ReadRange(P(n), 0, v.size);
    } else {
      for (uint64_t off : std::vector<uint64_t>{0, 4 * kGiB, 5 * kGiB - 8192})
        v.data[off] = ReadRange(P(n), off, 200000);
    }
    views[n] = v;
  }
  Unmount();

  {
    OpenedFs o = OpenImage(image_);
    ASSERT_TRUE(o.engine);
    for (const std::string& n : names) {
      SCOPED_TRACE(n);
      const KernelView& v = views[n];
      uint64_t ino = LookupIno(*o.fs, "/" + n);
      ASSERT_NE(ino, 0u);
      ASSERT_EQ(FileSize(*o.fs, ino), v.size);
      for (const auto& [off, bytes] : v.data) {
        auto got = ReadThroughEngine(o, ino, off, bytes.size());
        ASSERT_TRUE(got.has_value()) << got.error();
        ASSERT_TRUE(*got == bytes) << "content differs at " << off;
      }
      if (v.inline_data) {
        auto m = CheckedMap(o, ino, 0, 1);
        ASSERT_TRUE(m.has_value());
        EXPECT_EQ(m->type, MappingType::kInline);
        continue;
      }
      auto phys = EnginePhys(o, ino, v.size);
      ASSERT_TRUE(phys.has_value()) << phys.error();
      EXPECT_EQ(*phys, v.fiemap) << "engine: " << ToString(*phys)
                                 << "\nfiemap: " << ToString(v.fiemap);
      ProbeConsistency(o, ino, v.size, ino);
    }
    if (extents) {
      // The layouts the test meant to produce really are there.
      auto has = [&](const std::string& n, bool unwritten) {
        for (const PhysRange& r : views[n].fiemap) {
          if (r.unwritten == unwritten) return true;
        }
        return false;
      };
      EXPECT_TRUE(has("falloc", true));
      EXPECT_TRUE(has("falloc", false));
      EXPECT_TRUE(has("falloc_l", true));
      EXPECT_GE(views["checker"].fiemap.size(), 900u);
      EXPECT_GE(views["checker_fill"].fiemap.size(), 1u);
    }
    bool inline_fs = std::find(c.extra.begin(), c.extra.end(), "inline_data") != c.extra.end();
    EXPECT_EQ(views["small50"].inline_data, inline_fs) << "kernel wrote small50 inline";
    EXPECT_FALSE(views["small4000"].inline_data);
  }
  std::string out;
  EXPECT_TRUE(FsckClean(image_, &out)) << out;
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, KernelExt4Test,
    ::testing::Values(KConfig{"ext4_4k", "ext4", 4096, {}}, KConfig{"ext4_1k", "ext4", 1024, {}},
                      KConfig{"ext4_inline", "ext4", 4096, {"-O", "inline_data"}},
                      KConfig{"ext2_4k", "ext2", 4096, {}}, KConfig{"ext2_1k", "ext2", 1024, {}}),
    [](const ::testing::TestParamInfo<KConfig>& i) { return i.param.name; });

}  // namespace
}  // namespace iomapfs::iomap::testing
