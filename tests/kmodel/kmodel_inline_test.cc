// The write side of INLINE mappings (§9) through the kernel MODEL (no real iomap kernel is
// involved): writes into an inline-data file go to the server with FUSE_WRITE by nodeid (fh 0),
// never through writeback or END; the server's INVALs after FUSE_WRITE, fallocate and
// copy_file_range (§12.4) drop a cached INLINE mapping once the file may have changed format.
// Several tests switch off the model's own §12.5 invalidations so that only the server's INVALs
// can keep its cache right. Every test ends with e2fsck -fn; the bytes are checked against a
// shadow copy, and against kernel ext4 where a loop mount is possible.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "iomap/mapping.h"
#include "tests/kmodel/harness.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::kmodel {
namespace {

namespace tu = ::iomapfs::testing;

std::string Text(const std::vector<std::byte>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size());
}

// Writes `data` at `pos` into the shadow copy `file`, zero-filling any gap.
void Put(std::vector<std::byte>& file, uint64_t pos, std::span<const std::byte> data) {
  if (file.size() < pos + data.size()) file.resize(pos + data.size());
  std::copy(data.begin(), data.end(), file.begin() + static_cast<ptrdiff_t>(pos));
}

class KmodelInlineWriteTest : public ::testing::Test {
 protected:
  // Small files mke2fs stores inline (the inline area of a 256-byte inode holds at least 100
  // bytes), and an extent-mapped source for copy_file_range.
  void SetUp() override {
    const std::string src = dir_.Sub("src");
    ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
    shadow_["a"] = tu::BytePattern(100, 1);
    shadow_["b"] = tu::BytePattern(40, 2);
    shadow_["c"] = tu::BytePattern(60, 3);
    shadow_["d"] = tu::BytePattern(30, 4);
    shadow_["e"] = tu::BytePattern(50, 5);
    shadow_["f"] = tu::BytePattern(30, 6);
    shadow_["g"] = tu::BytePattern(70, 7);
    shadow_["h"] = tu::BytePattern(80, 9);
    shadow_["src.bin"] = tu::BytePattern(3 * 4096 + 123, 8);
    for (const auto& [name, bytes] : shadow_) {
      ASSERT_TRUE(tu::WriteFile(src + "/" + name, Text(bytes)));
    }
    image_ = dir_.Sub("inline.img");
    ASSERT_EQ(tu::MakeImage(image_, 32 << 20, "ext4", {"-b", "4096", "-O", "inline_data"}, src),
              "");
  }

  std::unique_ptr<ModelHarness> Start(ModelOptions m = {}) {
    ServerConfig s;
    s.read_write = true;
    std::unique_ptr<ModelHarness> h;
    EXPECT_EQ(ModelHarness::Start(image_, s, m, &h), "");
    return h;
  }

  // The layout the server has on disk at `pos` (a test-side look at the server, not the model).
  iomap::MappingType ServerType(ModelHarness& h, uint64_t node, uint64_t pos) {
    auto m = h.fs().IomapRead(Ino{node}, pos, iomap::kOpReport);
    EXPECT_TRUE(m);
    return m ? m->type : iomap::MappingType::kHole;
  }

  static bool InlineCached(KernelModel& km, uint64_t node) {
    for (const abi::fuse_iomap_io& m : km.CachedReadMappings(node)) {
      if (m.type == abi::FUSE_IOMAP_TYPE_INLINE) return true;
    }
    return false;
  }

  // Opens `name` (the server pushes its INLINE mapping), checks it is inline and cached.
  std::pair<uint64_t, uint64_t> OpenInline(ModelHarness& h, const std::string& name) {
    KernelModel& km = h.model();
    auto node = km.Lookup(abi::FUSE_ROOT_ID, name);
    EXPECT_TRUE(node);
    if (!node) return {0, 0};
    EXPECT_EQ(ServerType(h, *node, 0), iomap::MappingType::kInline)
        << name << ": mke2fs did not store it inline";
    auto fh = km.Open(*node, O_RDWR);
    EXPECT_TRUE(fh);
    EXPECT_TRUE(InlineCached(km, *node)) << name << ": no INLINE mapping cached at OPEN";
    return {*node, fh ? *fh : 0};
  }

  void ExpectBytes(KernelModel& km, uint64_t node, const std::string& name) {
    auto got = km.Read(node, 0, shadow_[name].size());
    ASSERT_TRUE(got);
    EXPECT_EQ(got->size(), shadow_[name].size()) << name;
    EXPECT_TRUE(*got == shadow_[name]) << name << ": the model reads other bytes";
    auto attr = km.GetAttr(node);
    ASSERT_TRUE(attr);
    EXPECT_EQ(attr->size, shadow_[name].size()) << name << ": the server's size";
  }

  // Unmount, e2fsck -fn, then every file through kernel ext4 (root only).
  void StopAndCheck(std::unique_ptr<ModelHarness>& h) {
    EXPECT_TRUE(h->model().rejections().empty()) << h->model().rejections().front();
    ASSERT_EQ(h->Stop(), "");
    std::string out;
    EXPECT_TRUE(tu::FsckClean(image_, &out)) << out;
    if (!tu::IsRoot()) GTEST_SKIP() << "kernel ext4 read-back needs root (loop device, mount)";
    const std::string mnt = dir_.Sub("mnt");
    ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
    tu::LoopDevice loop;
    tu::MountGuard mount;
    ASSERT_EQ(loop.Attach(image_, /*read_only=*/true), "");
    ASSERT_EQ(tu::KernelMount(loop.path(), mnt, /*read_only=*/true, &mount), "");
    for (const auto& [name, want] : shadow_) {
      auto got = ReadHostFile(mnt + "/" + name);
      ASSERT_TRUE(got) << name;
      EXPECT_EQ(got->size(), want.size()) << name;
      EXPECT_TRUE(*got == want) << name << ": kernel ext4 reads other contents";
    }
    ASSERT_EQ(mount.Unmount(), "");
    ASSERT_EQ(loop.Detach(), "");
  }

  tu::TempDir dir_;
  std::string image_;
  std::map<std::string, std::vector<std::byte>> shadow_;
};

// §9: small buffered writes into an inline file (an overwrite, an extension, one across a gap
// past EOF) each cost one FUSE_WRITE, no END, no IOEND, no writeback; the file stays inline
// and reads back (through FUSE_READ) as the shadow copy.
TEST_F(KmodelInlineWriteTest, SmallWritesGoThroughFuseWrite) {
  auto h = Start();
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto [node, fh] = OpenInline(*h, "a");
  ASSERT_NE(node, 0u);
  struct W {
    uint64_t pos;
    size_t len;
  };
  const W writes[] = {{10, 20}, {0, 8}, {100, 6}, {112, 4}};  // the last leaves a gap of zeros
  km.ResetCounters();
  uint8_t seed = 40;
  for (const W& w : writes) {
    const auto data = tu::BytePattern(w.len, seed++);
    ASSERT_TRUE(km.Write(node, w.pos, data)) << "pos " << w.pos;
    Put(shadow_["a"], w.pos, data);
    EXPECT_EQ(km.Size(node), shadow_["a"].size());
  }
  const uint64_t n = std::size(writes);
  EXPECT_EQ(km.counters().Upcalls("WRITE"), n) << km.counters().Format();
  EXPECT_EQ(km.counters().inline_writes, n);
  EXPECT_EQ(km.counters().Upcalls("IOMAP_END"), 0u) << "END for an inline write (§5.3)";
  EXPECT_EQ(km.counters().Upcalls("IOMAP_IOEND"), 0u);
  EXPECT_EQ(km.counters().begin_upcalls[static_cast<int>(BeginKind::kWriteback)], 0u);
  EXPECT_EQ(ServerType(*h, node, 0), iomap::MappingType::kInline) << "the file left inline";
  ASSERT_TRUE(km.Fsync(node, fh));  // nothing dirty: still no writeback BEGIN
  EXPECT_EQ(km.counters().begin_upcalls[static_cast<int>(BeginKind::kWriteback)], 0u);
  for (int pass = 0; pass < 2; ++pass) {
    km.ResetCounters();
    ExpectBytes(km, node, "a");
    EXPECT_EQ(km.counters().Upcalls("READ"), 1u) << km.counters().Format();
  }
  km.DropCaches();
  ExpectBytes(km, node, "a");
  // A truncate shrinking it zeroes the new EOF block's tail through the inline write side.
  km.ResetCounters();
  ASSERT_TRUE(km.Truncate(node, 90));
  shadow_["a"].resize(90);
  EXPECT_EQ(km.counters().inline_writes, 1u) << km.counters().Format();
  ExpectBytes(km, node, "a");
  ASSERT_TRUE(km.Release(node, fh));
  StopAndCheck(h);
}

// §9, §12.4: the INLINE mapping cached at OPEN is hit by a buffered write that runs past the
// inline area; its FUSE_WRITE converts the file to extents. With the model's own §12.5
// invalidation switched off only the server's INVAL after FUSE_WRITE can drop the record:
// afterwards no INLINE record is cached and reads use the extents (no FUSE_READ).
TEST_F(KmodelInlineWriteTest, ConversionByInlineWriteDropsInlineMapping) {
  ModelOptions m;
  m.auto_inval = false;
  auto h = Start(m);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  const uint64_t bs = km.block_size();
  auto [node, fh] = OpenInline(*h, "b");
  ASSERT_NE(node, 0u);
  km.ResetCounters();
  const auto big = tu::BytePattern(3000, 50);
  ASSERT_TRUE(km.Write(node, 20, big));
  Put(shadow_["b"], 20, big);
  EXPECT_EQ(km.counters().BeginUpcalls(), 0u) << "the write did not hit the cached INLINE mapping";
  EXPECT_EQ(km.counters().Upcalls("WRITE"), 1u) << km.counters().Format();
  EXPECT_EQ(km.counters().Upcalls("IOMAP_END"), 0u);
  EXPECT_EQ(ServerType(*h, node, 0), iomap::MappingType::kMapped) << "not converted";
  EXPECT_FALSE(InlineCached(km, node)) << "the server did not INValidate the INLINE mapping";
  for (int pass = 0; pass < 2; ++pass) {
    km.ResetCounters();
    ExpectBytes(km, node, "b");
    EXPECT_EQ(km.counters().Upcalls("READ"), 0u) << "the INLINE mapping was used after conversion";
  }
  // Later writes take the extent path: dirty pages, writeback (the new block's unwritten
  // conversion ends with an IOEND), no FUSE_WRITE.
  km.ResetCounters();
  const auto more = tu::BytePattern(bs + 10, 51);
  ASSERT_TRUE(km.Write(node, 2000, more));
  Put(shadow_["b"], 2000, more);
  ASSERT_TRUE(km.Fsync(node, fh));
  EXPECT_EQ(km.counters().Upcalls("WRITE"), 0u) << km.counters().Format();
  EXPECT_EQ(km.counters().inline_writes, 0u);
  EXPECT_GT(km.counters().Upcalls("IOMAP_IOEND"), 0u) << km.counters().Format();
  ExpectBytes(km, node, "b");
  ASSERT_TRUE(km.Release(node, fh));
  StopAndCheck(h);
}

// The same through a following write: a small inline write keeps the file inline (and, with
// the model's §12.5 invalidation off, its INLINE record cached); a later buffered write past
// the inline area converts it in BEGIN. A direct write into an inline file is the §9 write
// side too (UNCERTAIN in the spec; see KernelModel::Write) and converts it the same way.
TEST_F(KmodelInlineWriteTest, ConversionByFollowingWriteDropsInlineMapping) {
  ModelOptions m;
  m.auto_inval = false;
  auto h = Start(m);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  const uint64_t bs = km.block_size();
  auto [node, fh] = OpenInline(*h, "c");
  ASSERT_NE(node, 0u);
  const auto small = tu::BytePattern(12, 60);
  ASSERT_TRUE(km.Write(node, 30, small));
  Put(shadow_["c"], 30, small);
  EXPECT_EQ(ServerType(*h, node, 0), iomap::MappingType::kInline);
  ExpectBytes(km, node, "c");
  ASSERT_TRUE(InlineCached(km, node));
  const auto far = tu::BytePattern(100, 61);
  ASSERT_TRUE(km.Write(node, 2 * bs, far));
  Put(shadow_["c"], 2 * bs, far);
  EXPECT_FALSE(InlineCached(km, node)) << "a stale INLINE mapping stayed cached";
  ASSERT_TRUE(km.Fsync(node, fh));
  EXPECT_EQ(ServerType(*h, node, 0), iomap::MappingType::kMapped);
  km.ResetCounters();
  ExpectBytes(km, node, "c");
  EXPECT_EQ(km.counters().Upcalls("READ"), 0u) << "the INLINE mapping was used after conversion";
  ASSERT_TRUE(km.Release(node, fh));

  // Direct: one aligned block at 0 of an inline file.
  auto [d, dfh] = OpenInline(*h, "d");
  ASSERT_NE(d, 0u);
  km.ResetCounters();
  const auto block = tu::BytePattern(bs, 62);
  ASSERT_TRUE(km.Write(d, 0, block, /*direct=*/true));
  Put(shadow_["d"], 0, block);
  shadow_["d"].resize(bs);
  EXPECT_EQ(km.counters().Upcalls("WRITE"), 1u) << km.counters().Format();
  EXPECT_EQ(km.counters().Upcalls("IOMAP_IOEND"), 0u);
  EXPECT_EQ(km.counters().Upcalls("IOMAP_END"), 0u);
  EXPECT_EQ(ServerType(*h, d, 0), iomap::MappingType::kMapped);
  EXPECT_FALSE(InlineCached(km, d)) << "a stale INLINE mapping stayed cached";
  km.ResetCounters();
  ExpectBytes(km, d, "d");
  EXPECT_EQ(km.counters().Upcalls("READ"), 0u);
  auto direct = km.Read(d, 0, bs, /*direct=*/true);
  ASSERT_TRUE(direct);
  EXPECT_TRUE(*direct == shadow_["d"]);
  ASSERT_TRUE(km.Release(d, dfh));
  StopAndCheck(h);
}

// §10, §12.4: fallocate into an inline file (sent raw: the model keeps no state for it, so
// only the server's INVAL can drop the cached INLINE mapping). Preallocation converts the file
// as kernel ext4 does (ext4_fallocate converts inline data first); punching and zeroing a range
// of a file that stays inline zero the bytes in place.
TEST_F(KmodelInlineWriteTest, FallocateDropsInlineMapping) {
  auto h = Start();
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  const uint64_t bs = km.block_size();
  auto fallocate = [&](uint64_t node, uint64_t fh, uint32_t mode, uint64_t off, uint64_t len) {
    abi::fuse_fallocate_in f{};
    f.fh = fh;
    f.offset = off;
    f.length = len;
    f.mode = mode;
    return km.RawRequest(abi::FUSE_FALLOCATE, node,
                         std::as_bytes(std::span<const abi::fuse_fallocate_in, 1>(&f, 1)));
  };

  // Preallocation with KEEP_SIZE: the size stays, the file leaves the inline format.
  auto [e, efh] = OpenInline(*h, "e");
  ASSERT_NE(e, 0u);
  ASSERT_TRUE(km.Read(e, 0, 10));
  auto r = fallocate(e, efh, FALLOC_FL_KEEP_SIZE, 0, 2 * bs);
  ASSERT_TRUE(r) << "fallocate(KEEP_SIZE) on an inline file: " << strerror(r.error());
  EXPECT_FALSE(InlineCached(km, e)) << "a stale INLINE mapping stayed cached";
  EXPECT_NE(ServerType(*h, e, 0), iomap::MappingType::kInline);
  km.ResetCounters();
  ExpectBytes(km, e, "e");
  EXPECT_EQ(km.counters().Upcalls("READ"), 0u) << "the INLINE mapping was used after fallocate";
  ASSERT_TRUE(km.Release(e, efh));

  // A punch inside an inline file: the bytes are zeroed and the mapping dropped all the same.
  auto [g, gfh] = OpenInline(*h, "g");
  ASSERT_NE(g, 0u);
  ASSERT_TRUE(km.Read(g, 0, 10));
  ASSERT_TRUE(fallocate(g, gfh, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 10, 20));
  std::fill(shadow_["g"].begin() + 10, shadow_["g"].begin() + 30, std::byte{0});
  EXPECT_FALSE(InlineCached(km, g)) << "a stale INLINE mapping stayed cached";
  ExpectBytes(km, g, "g");
  ASSERT_TRUE(km.Release(g, gfh));

  auto [z, zfh] = OpenInline(*h, "h");
  ASSERT_NE(z, 0u);
  ASSERT_TRUE(km.Read(z, 0, 10));
  r = fallocate(z, zfh, FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE, 20, 30);
  ASSERT_TRUE(r) << "fallocate(ZERO_RANGE) on an inline file: " << strerror(r.error());
  std::fill(shadow_["h"].begin() + 20, shadow_["h"].begin() + 50, std::byte{0});
  EXPECT_FALSE(InlineCached(km, z)) << "a stale INLINE mapping stayed cached";
  ExpectBytes(km, z, "h");
  ASSERT_TRUE(km.Release(z, zfh));
  StopAndCheck(h);
}

// §10, §12.4: copy_file_range into an inline file, first staying inline, then converting it.
// With the model's §12.5 invalidation off, the server's INVAL alone must drop the INLINE
// record each time.
TEST_F(KmodelInlineWriteTest, CopyFileRangeDropsInlineMapping) {
  ModelOptions m;
  m.auto_inval = false;
  auto h = Start(m);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto src = km.Lookup(abi::FUSE_ROOT_ID, "src.bin");
  ASSERT_TRUE(src);
  auto sfh = km.Open(*src, O_RDONLY);
  ASSERT_TRUE(sfh);
  const auto& from = shadow_["src.bin"];
  auto [f, ffh] = OpenInline(*h, "f");
  ASSERT_NE(f, 0u);

  auto copied = km.CopyFileRange(*src, *sfh, 5, f, ffh, 10, 40);
  ASSERT_TRUE(copied);
  ASSERT_EQ(*copied, 40u);
  Put(shadow_["f"], 10, std::span(from).subspan(5, 40));
  EXPECT_EQ(ServerType(*h, f, 0), iomap::MappingType::kInline);
  EXPECT_FALSE(InlineCached(km, f)) << "the server did not INValidate the INLINE mapping";
  ExpectBytes(km, f, "f");  // a BEGIN caches the INLINE mapping again
  ASSERT_TRUE(InlineCached(km, f));

  copied = km.CopyFileRange(*src, *sfh, 100, f, ffh, 30, 6000);
  ASSERT_TRUE(copied);
  ASSERT_EQ(*copied, 6000u);
  Put(shadow_["f"], 30, std::span(from).subspan(100, 6000));
  EXPECT_EQ(ServerType(*h, f, 0), iomap::MappingType::kMapped);
  EXPECT_FALSE(InlineCached(km, f)) << "a stale INLINE mapping stayed cached";
  km.ResetCounters();
  ExpectBytes(km, f, "f");
  EXPECT_EQ(km.counters().Upcalls("READ"), 0u) << "the INLINE mapping was used after conversion";
  ASSERT_TRUE(km.Release(f, ffh));
  ASSERT_TRUE(km.Release(*src, *sfh));
  StopAndCheck(h);
}

}  // namespace
}  // namespace iomapfs::kmodel
