// Read matrix through the kernel MODEL: for each feature set of the foundation's image matrix
// (tests/mount/read_matrix_test.cc), kernel ext4 generates the test tree into a fresh image;
// then every regular file is read through the kernel model (iomap mode: mappings from the
// server, data read by the model from the registered device) and must equal what a kernel ext4
// mount of the same image returns. A second pass with the model's cache on must cost zero
// BEGIN upcalls (hot reads). Needs root (loop devices, kernel mounts); skips with a reason.
#include <fcntl.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "tests/kmodel/harness.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"
#include "tests/support/tree_gen.h"

namespace iomapfs::kmodel {
namespace {

namespace tu = ::iomapfs::testing;

struct FeatureSet {
  std::string name;
  std::string fs_type;
  std::vector<std::string> mkfs_args;
};
void PrintTo(const FeatureSet& s, std::ostream* os) { *os << s.name; }

std::vector<std::string>* g_files = nullptr;
std::string g_root;
int Collect(const char* path, const struct stat* st, int flag, struct FTW*) {
  if (flag == FTW_F && S_ISREG(st->st_mode)) g_files->push_back(path + g_root.size() + 1);
  return 0;
}

// Compares `path` (kernel mount) with node `node` read through the model. Files up to 64 MiB
// whole; larger (sparse) ones region by region as the kernel's SEEK_DATA/SEEK_HOLE lays them
// out, plus the first 64 KiB of every hole. Returns: bytes compared, or -1 on a difference.
int64_t CompareFile(KernelModel& km, uint64_t node, const std::string& path, std::string* why) {
  constexpr uint64_t kWhole = 64 << 20;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st {};
  if (!fd.valid() || fstat(fd.get(), &st) != 0) return *why = "open", -1;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  auto compare = [&](uint64_t off, uint64_t len) -> bool {
    std::vector<std::byte> want(len);
    if (pread(fd.get(), want.data(), len, static_cast<off_t>(off)) != static_cast<ssize_t>(len)) {
      *why = "pread";
      return false;
    }
    auto got = km.Read(node, off, len);
    if (!got) {
      *why = std::string("model read: ") + strerror(got.error());
      return false;
    }
    if (*got != want) {
      *why = "bytes differ at [" + std::to_string(off) + ", +" + std::to_string(len) + ")";
      return false;
    }
    return true;
  };
  if (size <= kWhole) return compare(0, size) ? static_cast<int64_t>(size) : -1;
  int64_t total = 0;
  for (uint64_t pos = 0; pos < size;) {
    off_t data = lseek(fd.get(), static_cast<off_t>(pos), SEEK_DATA);
    uint64_t d = data < 0 ? size : static_cast<uint64_t>(data);
    if (d > pos && !compare(pos, std::min<uint64_t>(d - pos, 64 << 10))) return -1;  // hole
    if (d >= size) break;
    uint64_t e = static_cast<uint64_t>(lseek(fd.get(), static_cast<off_t>(d), SEEK_HOLE));
    for (uint64_t p = d; p < e; p += 16 << 20) {
      uint64_t n = std::min<uint64_t>(16 << 20, e - p);
      if (!compare(p, n)) return -1;
      total += static_cast<int64_t>(n);
    }
    pos = e;
  }
  return total;
}

class KmodelReadMatrixTest : public ::testing::TestWithParam<FeatureSet> {};

TEST_P(KmodelReadMatrixTest, EveryFileReadsAsKernelExt4ReadsIt) {
  if (!tu::IsRoot()) GTEST_SKIP() << "needs root: loop devices and kernel ext4 mounts";
  const FeatureSet& set = GetParam();
  tu::TempDir tmp;
  const std::string image = tmp.Sub("fs.img"), mnt = tmp.Sub("kernel");
  ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
  tu::TreeGenOptions tree;
  tree.seed = 0x6d0de1 + set.name.size();
  tree.big_directory_entries = 2000;  // listings are not what this test is about
  ASSERT_EQ(tu::MakeGeneratedImage(image, uint64_t{8} << 30, set.fs_type, set.mkfs_args, tree), "");

  tu::LoopDevice loop;
  tu::MountGuard kernel_mount;
  ASSERT_EQ(loop.Attach(image, /*read_only=*/true), "");
  ASSERT_EQ(tu::KernelMount(loop.path(), mnt, /*read_only=*/true, &kernel_mount), "");
  std::vector<std::string> files;
  g_files = &files;
  g_root = mnt;
  ASSERT_EQ(nftw(mnt.c_str(), Collect, 64, FTW_PHYS), 0);
  ASSERT_GT(files.size(), 50u);

  std::unique_ptr<ModelHarness> h;
  ASSERT_EQ(ModelHarness::Start(image, ServerConfig{}, ModelOptions{}, &h), "");
  KernelModel& km = h->model();
  ASSERT_TRUE(km.iomap_mode());
  uint64_t bytes = 0;
  size_t mismatches = 0;
  for (int pass = 0; pass < 2; ++pass) {
    km.ResetCounters();
    for (const std::string& f : files) {
      auto node = km.LookupPath(f);
      ASSERT_TRUE(node) << f << ": " << strerror(node.error());
      auto fh = km.Open(*node, 0);
      ASSERT_TRUE(fh) << f;
      std::string why;
      int64_t n = CompareFile(km, *node, mnt + "/" + f, &why);
      if (n < 0 && ++mismatches < 10) ADD_FAILURE() << f << ": " << why;
      ASSERT_TRUE(km.Release(*node, *fh));
      if (pass == 0 && n > 0) bytes += static_cast<uint64_t>(n);
    }
    printf("[%s] pass %d: %zu files, %.1f MiB: %s\n", set.name.c_str(), pass, files.size(),
           bytes / 1048576.0, km.counters().Format().c_str());
    EXPECT_TRUE(km.rejections().empty()) << km.rejections().front();
  }
  // Hot: every mapping is cached (pushed at OPEN or after the first BEGIN), INLINE ones too
  // (§9, §12.1): no BEGIN is left; inline files still need the FUSE_READ of their bytes.
  EXPECT_EQ(km.counters().BeginUpcalls(), 0u) << km.counters().Format();
  if (set.name == "ext4_inline_data") {
    EXPECT_GT(km.counters().Upcalls("READ"), 0u) << km.counters().Format();
  } else {
    EXPECT_EQ(km.counters().Upcalls("READ"), 0u) << km.counters().Format();
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(h->Stop(), "");
  ASSERT_EQ(kernel_mount.Unmount(), "");
  ASSERT_EQ(loop.Detach(), "");
}

INSTANTIATE_TEST_SUITE_P(
    FeatureSets, KmodelReadMatrixTest,
    ::testing::Values(FeatureSet{"ext4", "ext4", {}},
                      FeatureSet{"ext4_1k_blocks", "ext4", {"-b", "1024"}},
                      FeatureSet{"ext4_no64bit_nocsum", "ext4", {"-O", "^64bit,^metadata_csum"}},
                      FeatureSet{"ext4_inline_data", "ext4", {"-O", "inline_data"}},
                      FeatureSet{"ext2", "ext2", {}}, FeatureSet{"ext3", "ext3", {}}),
    [](const ::testing::TestParamInfo<FeatureSet>& info) { return info.param.name; });

}  // namespace
}  // namespace iomapfs::kmodel
