// A real workload on a read-write mount of a fresh image: untar /usr/include (thousands of
// files, directories and symlinks) and compare it with the original, build a small C project
// with `make -j2` and run what it built, then `rm -rf` everything. Afterwards the image must be
// clean (e2fsck -fn), kernel ext4 must see an empty root (lost+found only), and the free block
// and inode counts must be exactly those of the fresh image: nothing leaked.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "tests/fsserver/rw_mount_util.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs {
namespace {

namespace tu = ::iomapfs::testing;

constexpr char kBinary[] = IOMAPFS_BINARY;
constexpr int kSources = 20;

struct Format {
  std::string name;
  std::string fs_type;
  std::vector<std::string> mkfs_args;
};

std::string Ls(const std::string& dir) {
  return tu::RunShell("ls -A '" + dir + "' | tr '\\n' ' '").output;
}

// Writes f00.c..f19.c (f<i> returns i*i+1), main.c (prints each and the sum) and a Makefile
// that compiles each into an object and links `prog`.
bool WriteCProject(const std::string& dir, int* expected_sum) {
  std::string header = "#pragma once\n";
  std::string main_c = "#include <stdio.h>\n#include \"funcs.h\"\nint main(void) {\n  int s = 0;\n";
  std::string objs;
  *expected_sum = 0;
  for (int i = 0; i < kSources; ++i) {
    char name[8];
    snprintf(name, sizeof(name), "f%02d", i);
    header += std::string("int ") + name + "(void);\n";
    std::string src = "#include \"funcs.h\"\nint " + std::string(name) + "(void) { return " +
                      std::to_string(i) + " * " + std::to_string(i) + " + 1; }\n";
    if (!tu::WriteFile(dir + "/" + name + ".c", src)) return false;
    main_c += "  s += " + std::string(name) + "();\n";
    objs += std::string(" ") + name + ".o";
    *expected_sum += i * i + 1;
  }
  main_c += "  printf(\"sum=%d\\n\", s);\n  return 0;\n}\n";
  std::string makefile = "OBJS = main.o" + objs +
                         "\n"
                         "prog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n"
                         "%.o: %.c funcs.h\n\t$(CC) -O1 -c -o $@ $<\n"
                         "clean:\n\trm -f prog $(OBJS)\n";
  return tu::WriteFile(dir + "/funcs.h", header) && tu::WriteFile(dir + "/main.c", main_c) &&
         tu::WriteFile(dir + "/Makefile", makefile);
}

class WorkloadTest : public ::testing::TestWithParam<Format> {
 protected:
  void SetUp() override {
    std::string skip = tu::MountTestSkipReason(kBinary);
    if (!skip.empty()) GTEST_SKIP() << skip;
    for (const char* tool : {"tar", "make", "cc", "diff"}) {
      if (tu::Run({"sh", "-c", std::string("command -v ") + tool}).exit_code != 0) {
        GTEST_SKIP() << tool << " is missing (scripts/install-deps.sh installs it)";
      }
    }
    if (access("/usr/include/stdio.h", R_OK) != 0) GTEST_SKIP() << "no /usr/include to untar";
    image_ = dir_.Sub("fs.img");
    mnt_ = dir_.Sub("mnt");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
  }

  tu::TempDir dir_;
  std::string image_;
  std::string mnt_;
};

TEST_P(WorkloadTest, UntarBuildRemoveLeavesAnEmptyCleanImage) {
  const Format& f = GetParam();
  ASSERT_EQ(tu::MakeImage(image_, uint64_t{1} << 30, f.fs_type, f.mkfs_args), "");
  const uint64_t fresh_blocks = tu::SuperblockCount(image_, "Free blocks");
  const uint64_t fresh_inodes = tu::SuperblockCount(image_, "Free inodes");
  ASSERT_GT(fresh_blocks, 0u);
  ASSERT_GT(fresh_inodes, 0u);

  // pax format keeps nanosecond mtimes, so the trees compare exactly.
  const std::string tarball = dir_.Sub("include.tar");
  tu::CommandResult tar =
      tu::Run({"tar", "--format=posix", "-C", "/usr", "-cf", tarball, "include"});
  ASSERT_EQ(tar.exit_code, 0) << tar.output;

  tu::ForegroundServer server;
  ASSERT_EQ(server.Start(kBinary, image_, mnt_, "rw"), "");
  struct statvfs before;
  ASSERT_EQ(statvfs(mnt_.c_str(), &before), 0);

  double t0 = tu::Now();
  tu::CommandResult untar = tu::Run({"tar", "-C", mnt_, "-xf", tarball});
  ASSERT_EQ(untar.exit_code, 0) << untar.output;
  double t1 = tu::Now();
  tu::CommandResult diff =
      tu::Run({"diff", "-r", "--no-dereference", "/usr/include", mnt_ + "/include"});
  EXPECT_EQ(diff.exit_code, 0) << diff.output.substr(0, 4000);
  std::map<std::string, std::string> want = tu::TreeMetadata("/usr/include");
  std::map<std::string, std::string> got = tu::TreeMetadata(mnt_ + "/include");
  EXPECT_GT(want.size(), 1000u);
  EXPECT_EQ(tu::DiffTreeMetadata(want, got), "");
  double t2 = tu::Now();

  const std::string proj = mnt_ + "/proj";
  ASSERT_EQ(mkdir(proj.c_str(), 0755), 0);
  int sum = 0;
  ASSERT_TRUE(WriteCProject(proj, &sum));
  tu::CommandResult make = tu::Run({"make", "-C", proj, "-j2"});
  ASSERT_EQ(make.exit_code, 0) << make.output;
  tu::CommandResult prog = tu::Run({proj + "/prog"});
  EXPECT_EQ(prog.exit_code, 0);
  EXPECT_EQ(prog.output, "sum=" + std::to_string(sum) + "\n");
  // Timestamps work: everything is up to date; a touched source rebuilds only its object.
  EXPECT_EQ(tu::Run({"make", "-C", proj, "-q"}).exit_code, 0) << "make thinks work is left";
  sleep(1);
  ASSERT_TRUE(
      tu::WriteFile(proj + "/f07.c", "#include \"funcs.h\"\nint f07(void) { return 0; }\n"));
  make = tu::Run({"make", "-C", proj});
  ASSERT_EQ(make.exit_code, 0) << make.output;
  EXPECT_NE(make.output.find("f07.c"), std::string::npos) << make.output;
  EXPECT_EQ(make.output.find("f06.c"), std::string::npos) << make.output;
  prog = tu::Run({proj + "/prog"});
  EXPECT_EQ(prog.output, "sum=" + std::to_string(sum - (7 * 7 + 1)) + "\n");
  double t3 = tu::Now();

  tu::CommandResult rm = tu::Run({"rm", "-rf", mnt_ + "/include", proj});
  ASSERT_EQ(rm.exit_code, 0) << rm.output;
  EXPECT_EQ(Ls(mnt_), "lost+found ");
  struct statvfs after;
  ASSERT_EQ(statvfs(mnt_.c_str(), &after), 0);
  EXPECT_EQ(after.f_bfree, before.f_bfree);
  EXPECT_EQ(after.f_ffree, before.f_ffree);
  double t4 = tu::Now();
  ASSERT_EQ(server.Unmount(), "");
  printf("[ %s ] untar %.1f s, compare %.1f s, make %.1f s, rm -rf %.1f s (%zu entries)\n",
         f.name.c_str(), t1 - t0, t2 - t1, t3 - t2, t4 - t3, want.size());

  std::string fsck;
  EXPECT_TRUE(tu::FsckClean(image_, &fsck)) << fsck;
  EXPECT_EQ(tu::SuperblockCount(image_, "Free blocks"), fresh_blocks);
  EXPECT_EQ(tu::SuperblockCount(image_, "Free inodes"), fresh_inodes);
  EXPECT_EQ(tu::SuperblockField(image_, "Filesystem state"), "clean");
  std::string kernel = tu::WithKernelMount(image_, dir_.Sub("kmnt"), [&](const std::string& m) {
    EXPECT_EQ(Ls(m), "lost+found ");
    EXPECT_EQ(Ls(m + "/lost+found"), "");
  });
  EXPECT_EQ(kernel, "");
}

INSTANTIATE_TEST_SUITE_P(Formats, WorkloadTest,
                         ::testing::Values(Format{"ext4", "ext4", {}},
                                           Format{"ext4_1k", "ext4", {"-b", "1024"}},
                                           Format{"ext3", "ext3", {}}),
                         [](const ::testing::TestParamInfo<Format>& p) { return p.param.name; });

}  // namespace
}  // namespace iomapfs
