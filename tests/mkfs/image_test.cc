// iomapfs-mkfs end to end without a kernel mount (label unit): the option matrix checked with
// e2fsck -fn and dumpe2fs -h, defaults against mke2fs, reproducibility, auto size, and bad input.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <set>
#include <sstream>

#include "tests/mkfs/mkfs_test_util.h"

namespace iomapfs::mkfs::testing {
namespace {

using iomapfs::testing::FsckClean;
using iomapfs::testing::IsRoot;
using iomapfs::testing::TempDir;

std::string HeaderField(const std::string& header, const std::string& field) {
  std::istringstream in(header);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::string v = line.substr(field.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

std::set<std::string> Features(const std::string& header) {
  std::istringstream in(HeaderField(header, "Filesystem features"));
  std::set<std::string> out;
  std::string f;
  while (in >> f) out.insert(f);
  return out;
}

std::vector<std::string> DirEntries(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  while (dirent* de = d ? readdir(d) : nullptr) {
    if (de->d_name[0] != '.') out.emplace_back(de->d_name);
  }
  if (d) closedir(d);
  return out;
}

// Every test that writes an image ends with this.
void ExpectFsckClean(const std::string& image) {
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

class MkfsMatrix : public ::testing::TestWithParam<MatrixCase> {};

TEST_P(MkfsMatrix, FsckCleanWithRequestedFeatures) {
  const MatrixCase& c = GetParam();
  TempDir tmp;
  std::string src = tmp.Sub("src"), image = tmp.Sub("img");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(MakeTree(src, {.big_directory_entries = 0, .privileged = IsRoot()}), "");
  std::vector<std::string> args = c.args;
  args.insert(args.end(), {"-q", "-d", src, image, "96M"});
  auto r = RunMkfs(args);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string header = DumpHeader(image);
  ASSERT_FALSE(header.empty());
  std::set<std::string> features = Features(header);
  for (const std::string& f : c.features) EXPECT_TRUE(features.count(f)) << f << "\n" << header;
  for (const std::string& f : c.absent_features) EXPECT_FALSE(features.count(f)) << f;
  if (c.block_size) {
    EXPECT_EQ(HeaderField(header, "Block size"), std::to_string(c.block_size));
  }
  if (c.inode_size) {
    EXPECT_EQ(HeaderField(header, "Inode size"), std::to_string(c.inode_size));
  }
  ExpectFsckClean(image);
}

INSTANTIATE_TEST_SUITE_P(Options, MkfsMatrix, ::testing::ValuesIn(OptionMatrix()),
                         [](const auto& info) { return info.param.name; });

// Without -d, the geometry equals mke2fs's on the same size: same inode count, free blocks,
// overhead, reserved GDT blocks and journal size.
TEST(MkfsDefaults, GeometryEqualsMke2fs) {
  for (const char* size : {"64M", "1G"}) {
    TempDir tmp;
    std::string ours = tmp.Sub("ours"), theirs = tmp.Sub("theirs");
    auto r = RunMkfs({"-q", ours, size});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_EQ(iomapfs::testing::Run({"truncate", "-s", size, theirs}).exit_code, 0);
    ASSERT_EQ(iomapfs::testing::Run({"mke2fs", "-q", "-F", "-t", "ext4", theirs}).exit_code, 0);
    std::string a = DumpHeader(ours), b = DumpHeader(theirs);
    for (const char* field : {"Filesystem features",
                              "Filesystem flags",
                              "Default mount options",
                              "Inode count",
                              "Block count",
                              "Reserved block count",
                              "Overhead clusters",
                              "Free blocks",
                              "Free inodes",
                              "Block size",
                              "Reserved GDT blocks",
                              "Blocks per group",
                              "Inodes per group",
                              "Flex block group size",
                              "Inode size",
                              "Required extra isize",
                              "Maximum mount count",
                              "Check interval",
                              "Default directory hash",
                              "Total journal size",
                              "Checksum type"}) {
      EXPECT_EQ(HeaderField(a, field), HeaderField(b, field)) << size << " " << field;
    }
    ExpectFsckClean(ours);
  }
}

TEST(MkfsReproducible, TwoRunsSameSha256) {
  TempDir tmp;
  std::string src = tmp.Sub("src");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(MakeTree(src, {.big_directory_entries = 2000, .privileged = IsRoot()}), "");
  setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
  const std::vector<std::vector<std::string>> variants = {
      {"-U", "01234567-89ab-cdef-0123-456789abcdef", "-E",
       "hash_seed=fedcba98-7654-3210-fedc-ba9876543210"},
      {"-U", "01234567-89ab-cdef-0123-456789abcdef", "-b", "4096", "-O", "inline_data"},
  };
  for (const auto& variant : variants) {
    std::vector<std::string> shas;
    for (int run = 0; run < 2; ++run) {
      std::string image = tmp.Sub("img" + std::to_string(run));
      std::vector<std::string> args = variant;
      args.insert(args.end(), {"-q", "-d", src, image, "auto"});
      auto r = RunMkfs(args);
      ASSERT_EQ(r.exit_code, 0) << r.output;
      ExpectFsckClean(image);
      shas.push_back(Sha256(image));
      if (run == 0) sleep(1);  // the clock must not matter
    }
    EXPECT_FALSE(shas[0].empty());
    EXPECT_EQ(shas[0], shas[1]);
    std::string header = DumpHeader(tmp.Sub("img0"));
    EXPECT_EQ(HeaderField(header, "Filesystem UUID"), "01234567-89ab-cdef-0123-456789abcdef");
    EXPECT_NE(HeaderField(header, "Filesystem created").find("2023"), std::string::npos);
  }
  unsetenv("SOURCE_DATE_EPOCH");
}

TEST(MkfsAutoSize, FitsWithMargin) {
  TempDir tmp;
  std::string src = tmp.Sub("src"), image = tmp.Sub("img");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(MakeTree(src, {.big_directory_entries = 3000, .privileged = IsRoot()}), "");
  // No SIZE and no existing image: auto.
  auto r = RunMkfs({"-q", "-d", src, image});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectFsckClean(image);
  struct stat st {};
  ASSERT_EQ(stat(image.c_str(), &st), 0);
  EXPECT_LT(st.st_size, 24 << 20);  // about 4.5 MiB of data, 3000 inodes, plus metadata
  std::string header = DumpHeader(image);
  uint64_t free_blocks = std::stoull(HeaderField(header, "Free blocks"));
  uint64_t blocks = std::stoull(HeaderField(header, "Block count"));
  EXPECT_GT(free_blocks, 0u);
  EXPECT_LT(free_blocks, blocks / 2);
  uint64_t free_inodes = std::stoull(HeaderField(header, "Free inodes"));
  EXPECT_GT(free_inodes, 300u);  // 10% margin over ~3100 inodes
}

TEST(MkfsErrors, SizeTooSmallLeavesNothing) {
  TempDir tmp;
  std::string src = tmp.Sub("src"), image = tmp.Sub("img");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(MakeTree(src, {.privileged = false}), "");
  auto r = RunMkfs({"-q", "-d", src, image, "4M"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("too small for the content"), std::string::npos) << r.output;
  EXPECT_EQ(DirEntries(tmp.path()), std::vector<std::string>{"src"});  // no image, no temp
}

TEST(MkfsErrors, FailureKeepsTheExistingImage) {
  TempDir tmp;
  std::string src = tmp.Sub("src"), image = tmp.Sub("img");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(MakeTree(src, {.privileged = false}), "");
  ASSERT_EQ(RunMkfs({"-q", "-L", "old", image, "4M"}).exit_code, 0);
  std::string before = Sha256(image);
  auto r = RunMkfs({"-q", "-F", "-d", src, image, "4M"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(Sha256(image), before);
  EXPECT_EQ(HeaderField(DumpHeader(image), "Filesystem volume name"), "old");
  ExpectFsckClean(image);
  EXPECT_EQ(DirEntries(tmp.path()).size(), 2u);  // src and img only
  // And a successful run replaces it.
  r = RunMkfs({"-q", "-F", "-L", "new", image, "8M"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(HeaderField(DumpHeader(image), "Filesystem volume name"), "new");
  ExpectFsckClean(image);
}

TEST(MkfsErrors, UnknownFeature) {
  TempDir tmp;
  auto r = RunMkfs({"-O", "nosuchfeature", tmp.Sub("img"), "8M"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown filesystem feature 'nosuchfeature'"), std::string::npos)
      << r.output;
  EXPECT_TRUE(DirEntries(tmp.path()).empty());
}

TEST(MkfsErrors, UnreadableSourceFile) {
  TempDir tmp;
  std::string src = tmp.Sub("src"), out = tmp.Sub("out");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(out.c_str(), 0777), 0);
  ASSERT_EQ(chmod(out.c_str(), 0777), 0);
  ASSERT_EQ(chmod(tmp.path().c_str(), 0755), 0);
  ASSERT_TRUE(iomapfs::testing::WriteFile(src + "/readable", "ok"));
  ASSERT_TRUE(iomapfs::testing::WriteFile(src + "/secret", "no"));
  ASSERT_EQ(chmod((src + "/secret").c_str(), 0), 0);
  std::vector<std::string> argv = {IOMAPFS_MKFS_BIN, "-q", "-d", src, out + "/img", "8M"};
  if (IsRoot()) {  // root reads anything: run as nobody
    argv.insert(argv.begin(), {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"});
  }
  auto r = iomapfs::testing::Run(argv);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find(src + "/secret"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Permission denied"), std::string::npos) << r.output;
  EXPECT_TRUE(DirEntries(out).empty());
}

TEST(MkfsErrors, SourceNotADirectoryAndMissingTargetDir) {
  TempDir tmp;
  ASSERT_TRUE(iomapfs::testing::WriteFile(tmp.Sub("file"), "x"));
  auto r = RunMkfs({"-d", tmp.Sub("file"), tmp.Sub("img"), "8M"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("not a directory"), std::string::npos) << r.output;
  r = RunMkfs({tmp.Sub("nodir/img"), "8M"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
  r = RunMkfs({tmp.path(), "8M"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("neither a regular file nor a block device"), std::string::npos);
}

TEST(MkfsCli, HelpAndVersion) {
  auto r = RunMkfs({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("Usage: iomapfs-mkfs"), std::string::npos);
  r = RunMkfs({"-V"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("libext2fs"), std::string::npos);
  r = RunMkfs({});
  EXPECT_EQ(r.exit_code, 2);
}

}  // namespace
}  // namespace iomapfs::mkfs::testing

namespace iomapfs::mkfs::testing {
namespace {

// The progress bar appears on a terminal (script(1) gives the tool a pseudo-terminal) and
// nowhere else: a pipe, as in scripts and CI, gets no progress output at all.
TEST(MkfsProgress, BarOnATerminalOnly) {
  if (system("command -v script >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "script(1) from util-linux is needed to give the tool a terminal";
  }
  TempDir tmp;
  std::string src = tmp.Sub("src");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(iomapfs::testing::WriteFile(src + "/f" + std::to_string(i),
                                            std::string(100000, static_cast<char>('a' + i))));
  }
  std::string cmd =
      std::string(IOMAPFS_MKFS_BIN) + " -F -d " + src + " " + tmp.Sub("tty.img") + " 16M";
  auto tty = iomapfs::testing::Run({"script", "-qfec", cmd, "/dev/null"});
  ASSERT_EQ(tty.exit_code, 0) << tty.output;
  EXPECT_NE(tty.output.find("Copying ["), std::string::npos) << tty.output;
  EXPECT_NE(tty.output.find("files 20/20"), std::string::npos) << tty.output;
  EXPECT_NE(tty.output.find("MiB/s"), std::string::npos) << tty.output;

  auto piped = RunMkfs({"-F", "-d", src, tmp.Sub("pipe.img"), "16M"});
  ASSERT_EQ(piped.exit_code, 0) << piped.output;
  EXPECT_EQ(piped.output.find("Copying ["), std::string::npos) << piped.output;
  EXPECT_TRUE(FsckClean(tmp.Sub("tty.img")));
  EXPECT_TRUE(FsckClean(tmp.Sub("pipe.img")));
}

}  // namespace
}  // namespace iomapfs::mkfs::testing
