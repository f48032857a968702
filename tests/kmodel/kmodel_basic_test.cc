// The kernel model against the unchanged server on a small image: INIT/CONFIG negotiation,
// classic fallback, reads, attribute flags, hot-read upcall counts, FIEMAP/SEEK, swapfile
// activation, validation of injected bad mappings. Everything here is a kernel MODEL.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "tests/kmodel/harness.h"
#include "tests/support/test_util.h"

namespace iomapfs::kmodel {
namespace {

namespace tu = ::iomapfs::testing;

std::vector<std::byte> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

bool WriteAt(const std::string& path, uint64_t off, const std::vector<std::byte>& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT, 0644);
  if (fd < 0) return false;
  bool ok = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(off)) ==
            static_cast<ssize_t>(data.size());
  ::close(fd);
  return ok;
}

class KmodelBasicTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = dir_.Sub("src");
    ASSERT_EQ(mkdir(src_.c_str(), 0755), 0);
    ASSERT_TRUE(tu::WriteFile(src_ + "/small.txt", "hello, kernel model\n"));
    ASSERT_TRUE(WriteAt(src_ + "/medium.bin", 0, RandomBytes(300 << 10, 1)));
    ASSERT_TRUE(WriteAt(src_ + "/big.bin", 0, RandomBytes(8 << 20, 2)));
    ASSERT_TRUE(WriteAt(src_ + "/sparse.bin", 1 << 20, RandomBytes(64 << 10, 3)));
    ASSERT_TRUE(WriteAt(src_ + "/sparse.bin", 5 << 20, RandomBytes(10000, 4)));
    ASSERT_TRUE(tu::WriteFile(src_ + "/empty", ""));
    image_ = dir_.Sub("fs.img");
    ASSERT_EQ(tu::MakeImage(image_, 64 << 20, "ext4", {"-b", "4096"}, src_), "");
  }

  std::unique_ptr<ModelHarness> Start(const ServerConfig& s, const ModelOptions& m) {
    std::unique_ptr<ModelHarness> h;
    std::string err = ModelHarness::Start(image_, s, m, &h);
    EXPECT_EQ(err, "");
    return h;
  }

  // Reads `name` whole through the model.
  std::vector<std::byte> ReadAll(KernelModel& km, const std::string& name, bool direct = false) {
    auto node = km.LookupPath(name);
    EXPECT_TRUE(node) << name;
    if (!node) return {};
    auto fh = km.Open(*node, O_RDONLY);
    EXPECT_TRUE(fh);
    auto data = km.Read(*node, 0, km.Size(*node), direct);
    EXPECT_TRUE(data) << name << ": " << strerror(data.error());
    EXPECT_TRUE(km.Release(*node, *fh));
    return data ? *data : std::vector<std::byte>{};
  }

  std::vector<std::byte> Source(const std::string& name) {
    return *ReadHostFile(src_ + "/" + name);
  }

  tu::TempDir dir_;
  std::string src_, image_;
};

TEST_F(KmodelBasicTest, InitAcknowledgesIomapAndConfigReportsGeometry) {
  auto h = Start(ServerConfig{}, ModelOptions{});
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  EXPECT_TRUE(km.iomap_mode());
  EXPECT_EQ(km.minor(), abi::FUSE_IOMAP_KERNEL_MINOR_VERSION);
  EXPECT_EQ(km.block_size(), h->fs().block_size());
  // ext4 with 4 KiB blocks and huge_file: (2^32 - 1) blocks.
  EXPECT_EQ(km.max_bytes(), ((uint64_t{1} << 32) - 1) * 4096);
  EXPECT_NE(h->dispatcher().iomap().backing_id(), 0u);
  EXPECT_EQ(km.counters().Upcalls("IOMAP_CONFIG"), 1u);
  EXPECT_EQ(h->Stop(), "");
}

TEST_F(KmodelBasicTest, ClassicModeWhenNotOffered) {
  ModelOptions m;
  m.offer_iomap = false;
  auto h = Start(ServerConfig{}, m);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  EXPECT_FALSE(km.iomap_mode());
  EXPECT_EQ(km.minor(), 45u);
  EXPECT_EQ(ReadAll(km, "medium.bin"), Source("medium.bin"));
  EXPECT_EQ(km.LatchedFlags(*km.LookupPath("medium.bin")), 0u);
  EXPECT_EQ(km.counters().BeginUpcalls(), 0u);
  EXPECT_GT(km.counters().Upcalls("READ"), 0u);
  EXPECT_EQ(h->Stop(), "");
}

TEST_F(KmodelBasicTest, ServerDeclinesWhenDisabled) {
  ServerConfig s;
  s.iomap.enable = false;
  auto h = Start(s, ModelOptions{});
  ASSERT_NE(h, nullptr);
  EXPECT_FALSE(h->model().iomap_mode());
  EXPECT_EQ(h->model().minor(), 45u);
  EXPECT_EQ(ReadAll(h->model(), "big.bin"), Source("big.bin"));
}

TEST_F(KmodelBasicTest, ReadsReturnTheFilesAndRegularFilesAreIomapInodes) {
  auto h = Start(ServerConfig{}, ModelOptions{});
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  for (const char* name : {"small.txt", "medium.bin", "big.bin", "sparse.bin", "empty"}) {
    EXPECT_EQ(ReadAll(km, name), Source(name)) << name;
    EXPECT_EQ(km.LatchedFlags(*km.LookupPath(name)),
              abi::FUSE_ATTR_EXCLUSIVE | abi::FUSE_ATTR_IOMAP)
        << name;
  }
  EXPECT_EQ(ReadAll(km, "sparse.bin", /*direct=*/true), Source("sparse.bin"));
  // Directories are not switched.
  EXPECT_EQ(km.LatchedFlags(abi::FUSE_ROOT_ID), 0u);
  EXPECT_EQ(km.counters().Upcalls("READ"), 0u) << km.counters().Format();
  EXPECT_TRUE(km.rejections().empty()) << km.rejections().front();
  EXPECT_EQ(h->Stop(), "");
}

TEST_F(KmodelBasicTest, HotReadsCostZeroUpcalls) {
  auto h = Start(ServerConfig{}, ModelOptions{});
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  ASSERT_EQ(ReadAll(km, "big.bin"), Source("big.bin"));
  ASSERT_EQ(ReadAll(km, "sparse.bin"), Source("sparse.bin"));
  printf("first read: %s\n", km.counters().Format().c_str());
  km.ResetCounters();
  EXPECT_EQ(ReadAll(km, "big.bin"), Source("big.bin"));
  EXPECT_EQ(ReadAll(km, "sparse.bin"), Source("sparse.bin"));
  printf("hot read: %s\n", km.counters().Format().c_str());
  EXPECT_EQ(km.counters().BeginUpcalls(), 0u) << km.counters().Format();
  EXPECT_GT(km.counters().cache_hits, 0u);
  EXPECT_EQ(h->Stop(), "");
}

TEST_F(KmodelBasicTest, WithoutCacheOrBpfEveryMappingIsAnUpcall) {
  ServerConfig s;
  s.iomap.bpf = false;
  ModelOptions m;
  m.cache = false;
  m.bpf = false;
  auto h = Start(s, m);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  ASSERT_EQ(ReadAll(km, "sparse.bin"), Source("sparse.bin"));
  uint64_t first = km.counters().BeginUpcalls();
  km.ResetCounters();
  ASSERT_EQ(ReadAll(km, "sparse.bin"), Source("sparse.bin"));
  uint64_t second = km.counters().BeginUpcalls();
  // sparse.bin: hole, data, hole, data: one BEGIN per mapping, every time.
  EXPECT_EQ(second, first);
  EXPECT_EQ(second, 4u) << km.counters().Format();
  EXPECT_EQ(km.counters().retry_cache, 0u) << "UPSERTs are declined, so no RETRY_CACHE";
  EXPECT_EQ(h->Stop(), "");
}

TEST_F(KmodelBasicTest, FiemapAndSeek) {
  auto h = Start(ServerConfig{}, ModelOptions{});
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  uint64_t node = *km.LookupPath("sparse.bin");
  auto ext = km.Fiemap(node);
  ASSERT_TRUE(ext);
  ASSERT_EQ(ext->size(), 2u);
  EXPECT_EQ((*ext)[0].logical, 1u << 20);
  EXPECT_EQ((*ext)[0].length, 64u << 10);
  EXPECT_EQ((*ext)[1].logical, 5u << 20);
  EXPECT_EQ(*km.Seek(node, 0, 3), 1u << 20);
  EXPECT_EQ(*km.Seek(node, 1 << 20, 4), (1u << 20) + (64u << 10));
  EXPECT_EQ(*km.Seek(node, (5 << 20) + 9000, 4), km.Size(node));
  EXPECT_EQ(km.Seek(node, km.Size(node), 3).error(), ENXIO);
  EXPECT_EQ(km.counters().Upcalls("IOMAP_BEGIN"),
            km.counters().begin_upcalls[static_cast<int>(BeginKind::kReport)]);
  EXPECT_EQ(h->Stop(), "");
}

TEST_F(KmodelBasicTest, SwaponNeedsAllocatedBlocks) {
  auto h = Start(ServerConfig{}, ModelOptions{});
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto pages = km.Swapon(*km.LookupPath("big.bin"));
  ASSERT_TRUE(pages);
  EXPECT_EQ(*pages, (8u << 20) / 4096);
  EXPECT_TRUE(km.Swapoff(*km.LookupPath("big.bin")));
  EXPECT_EQ(km.Swapon(*km.LookupPath("sparse.bin")).error(), EINVAL);  // holes
  EXPECT_EQ(h->Stop(), "");
}

TEST_F(KmodelBasicTest, InjectedBadMappingsAreRejectedByValidation) {
  for (dispatch::IomapFault f :
       {dispatch::IomapFault::kMisaligned, dispatch::IomapFault::kNotCovering}) {
    ServerConfig s;
    s.iomap.fault = f;
    s.iomap.cache = false;  // every read goes to BEGIN
    auto h = Start(s, ModelOptions{});
    ASSERT_NE(h, nullptr);
    KernelModel& km = h->model();
    uint64_t node = *km.LookupPath("medium.bin");
    auto r = km.Read(node, 0, 4096);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), EUCLEAN);
    ASSERT_FALSE(km.rejections().empty());
    printf("rejected: %s\n", km.rejections().front().c_str());
    EXPECT_EQ(km.counters().rejected_replies, 1u);
    EXPECT_EQ(h->Stop(), "");
  }
}

}  // namespace
}  // namespace iomapfs::kmodel
