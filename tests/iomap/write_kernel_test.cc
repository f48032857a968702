// The engine's writes against kernel ext4 (root, loop devices): files the kernel laid out
// (fallocated unwritten ranges, KEEP_SIZE preallocation, punched holes, many extents) and files
// from mke2fs -d are changed by random write-side operations through the engine; after Close()
// the image must pass e2fsck -fn and a read-only kernel mount must read exactly the model's
// contents and sizes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "tests/iomap/iomap_test_util.h"
#include "tests/iomap/write_model.h"
#include "tests/support/test_util.h"

namespace iomapfs::iomap::testing {
namespace {

using iomapfs::testing::FsckClean;
using iomapfs::testing::IsRoot;
using iomapfs::testing::MakeImage;
using iomapfs::testing::TempDir;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

struct KConfig {
  std::string name;
  std::string fs_type;
  uint32_t block;
  std::vector<std::string> extra;
  bool extents;
};

bool ReadWhole(const std::string& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return false;
  }
  out->assign(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < out->size()) {
    ssize_t n = ::pread(fd, out->data() + done, out->size() - done, static_cast<off_t>(done));
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return done == out->size();
}

class WriteKernelTest : public ::testing::TestWithParam<KConfig> {
 protected:
  void SetUp() override {
    if (!IsRoot()) GTEST_SKIP() << "needs root to loop-mount images with kernel ext4";
    if (::access("/dev/loop-control", F_OK) != 0) GTEST_SKIP() << "no loop devices here";
    mnt_ = dir_.Sub("mnt");
    ASSERT_EQ(::mkdir(mnt_.c_str(), 0755), 0);
  }
  void TearDown() override {
    if (mounted_) (void)iomapfs::testing::Run({"umount", mnt_});
  }
  void Mount(bool read_only) {
    std::string opts = read_only ? "loop,ro" : "loop";
    auto r = iomapfs::testing::Run({"mount", "-t", GetParam().fs_type, "-o", opts, image_, mnt_});
    if (r.exit_code != 0) GTEST_SKIP() << "cannot loop-mount: " << r.output;
    mounted_ = true;
  }
  void Unmount() {
    auto r = iomapfs::testing::Run({"umount", mnt_});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    mounted_ = false;
  }
  // Files laid out by the kernel: fallocate (unwritten) with data written into parts of it,
  // KEEP_SIZE preallocation past EOF, punched holes, a fragmented file.
  void KernelFiles(bool extents) {
    auto sh = [&](const std::string& cmd) {
      auto r = iomapfs::testing::RunShell(cmd);
      ASSERT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
    };
    std::string m = mnt_;
    sh("head -c 3000000 /dev/urandom > " + m + "/kdata");
    sh("for i in $(seq 0 2 300); do dd if=/dev/urandom of=" + m +
       "/kfrag bs=4096 count=1 seek=$i conv=notrunc status=none; done");
    if (extents) {
      sh("fallocate -l 2M " + m + "/kfalloc");
      sh("dd if=/dev/urandom of=" + m +
         "/kfalloc bs=4096 count=10 seek=20 conv=notrunc "
         "status=none");
      sh("fallocate -n -o 2M -l 1M " + m + "/kfalloc");
      sh("fallocate -p -o 100000 -l 500000 " + m + "/kdata");
    }
    sh("sync");
  }

  TempDir dir_;
  std::string image_;
  std::string mnt_;
  bool mounted_ = false;
};

TEST_P(WriteKernelTest, KernelReadsWhatTheEngineWrote) {
  const KConfig& c = GetParam();
  ASSERT_EQ(::mkdir(dir_.Sub("src").c_str(), 0755), 0);
  ASSERT_TRUE(WriteSparseFile(dir_.Sub("src/empty"), 0, {}, 1));
  ASSERT_TRUE(WriteSparseFile(dir_.Sub("src/small"), 100, {{0, 100}}, 2));
  ASSERT_TRUE(WriteSparseFile(dir_.Sub("src/sparse"), 3 * kMiB, {{0, 5000}, {kMiB, 9000}}, 3));
  std::vector<std::string> args = {"-b", std::to_string(c.block)};
  args.insert(args.end(), c.extra.begin(), c.extra.end());
  image_ = dir_.Sub("img");
  ASSERT_EQ(MakeImage(image_, 64 * kMiB, c.fs_type, args, dir_.Sub("src")), "");
  Mount(/*read_only=*/false);
  if (IsSkipped()) return;
  KernelFiles(c.extents);
  if (HasFatalFailure()) return;
  Unmount();

  std::vector<std::string> names = {"empty", "small", "sparse", "kdata", "kfrag"};
  if (c.extents) names.push_back("kfalloc");
  std::map<uint64_t, std::string> paths;
  std::map<uint64_t, std::string> model;
  {
    WriteModel m(image_);
    ASSERT_TRUE(m.fs().fs);
    for (const std::string& n : names) paths[m.Track("/" + n)] = n;
    m.VerifyAll();
    m.RandomOps(200, 4 * kMiB, 11, c.extents);
    if (HasFatalFailure()) return;
    m.VerifyAll();
    model = m.files();
    m.Close();
  }
  std::string out;
  EXPECT_TRUE(FsckClean(image_, &out)) << out;
  Mount(/*read_only=*/true);
  if (IsSkipped()) return;
  for (const auto& [ino, name] : paths) {
    SCOPED_TRACE(name);
    std::string got;
    ASSERT_TRUE(ReadWhole(mnt_ + "/" + name, &got));
    ASSERT_EQ(got.size(), model[ino].size());
    EXPECT_TRUE(got == model[ino]) << "kernel ext4 reads other bytes";
  }
  Unmount();
}

INSTANTIATE_TEST_SUITE_P(
    Formats, WriteKernelTest,
    ::testing::Values(KConfig{"ext4_4k", "ext4", 4096, {}, true},
                      KConfig{"ext4_1k", "ext4", 1024, {}, true},
                      KConfig{"ext2_4k", "ext2", 4096, {}, false},
                      KConfig{"ext3_1k", "ext3", 1024, {}, false},
                      KConfig{"inline_4k", "ext4", 4096, {"-O", "inline_data"}, true}),
    [](const ::testing::TestParamInfo<KConfig>& i) { return i.param.name; });

}  // namespace
}  // namespace iomapfs::iomap::testing
