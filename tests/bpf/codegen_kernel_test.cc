// Generated programs load in the real verifier and answer exactly like the reference at random
// positions and every boundary, for each strategy and extent count (synthetic mapping lists).
#include <gtest/gtest.h>

#include "bpf/codegen.h"
#include "bpf/file_program.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

using testing::CheckAgainstReference;
using testing::GenOptions;
using testing::RandomMappings;
using testing::StrideFile;

constexpr size_t kRandomProbes = 10000;

FileMap MakeMap(const std::vector<iomap::Mapping>& ms, uint64_t nodeid = 12) {
  auto fm = BuildFileMap(nodeid, 4096, 7, ms);
  EXPECT_TRUE(fm.has_value());
  return *fm;
}

void BuildAndCheck(const FileMap& map, Strategy s, uint64_t seq = 5) {
  std::string reason;
  auto p = FileProgram::BuildWith(map, seq, s, &reason);
  ASSERT_TRUE(p.has_value()) << StrategyName(s) << ": " << reason;
  EXPECT_EQ(p->strategy(), s);
  EXPECT_EQ(CheckAgainstReference(*p, map, kRandomProbes, seq), 0u)
      << StrategyName(s) << " with " << map.intervals.size() << " intervals, " << p->insns().size()
      << " insns";
}

class ExtentCountTest : public ::testing::TestWithParam<size_t> {};

TEST_P(ExtentCountTest, DefaultStrategyMatchesReference) {
  IOMAPFS_REQUIRE_BPF();
  FileMap map = MakeMap(RandomMappings(GetParam(), GetParam()));
  std::string reason;
  Strategy s = Choose(map, CodegenOptions{}, &reason);
  ASSERT_NE(s, Strategy::kNone) << reason;
  BuildAndCheck(map, s);
}

TEST_P(ExtentCountTest, MapSearchMatchesReference) {
  IOMAPFS_REQUIRE_BPF();
  FileMap map = MakeMap(RandomMappings(GetParam(), GetParam() + 1));
  BuildAndCheck(map, Strategy::kMapSearch);
}

TEST_P(ExtentCountTest, TreeMatchesReferenceUpTo512) {
  IOMAPFS_REQUIRE_BPF();
  FileMap map = MakeMap(RandomMappings(GetParam(), GetParam() + 2));
  if (GetParam() > 512) {
    // Past the stated cap the default never picks a tree.
    EXPECT_NE(Choose(map, CodegenOptions{}, nullptr), Strategy::kTree);
    return;
  }
  BuildAndCheck(map, Strategy::kTree);
}

INSTANTIATE_TEST_SUITE_P(Counts, ExtentCountTest,
                         ::testing::Values(1, 2, 8, 64, 512, 4096, 100000));

TEST(CodegenKernel, OffsetsPast2To32And2To40) {
  IOMAPFS_REQUIRE_BPF();
  for (uint64_t base : {(1ull << 32) + 8192, (1ull << 40) + 4096 * 3}) {
    GenOptions o;
    o.base = base;
    FileMap map = MakeMap(RandomMappings(40, base, o));
    BuildAndCheck(map, Strategy::kTree);
    BuildAndCheck(map, Strategy::kMapSearch);
  }
}

TEST(CodegenKernel, LargePhysicalAddressesAndNodeIds) {
  IOMAPFS_REQUIRE_BPF();
  auto ms = RandomMappings(30, 99);
  for (auto& m : ms) {
    if (m.addr != iomap::kNullAddr) m.addr += 1ull << 42;
  }
  FileMap map = MakeMap(ms, (1ull << 35) + 3);
  BuildAndCheck(map, Strategy::kTree, (1ull << 40) + 1);
  BuildAndCheck(map, Strategy::kMapSearch, 1ull << 33);
}

TEST(CodegenKernel, StrideFilesCompileToArithmetic) {
  IOMAPFS_REQUIRE_BPF();
  struct Case {
    uint64_t first, len, stride, count, addr0;
    int64_t addr_stride;
  } cases[] = {
      {0, 4096, 8192, 1000, 1 << 20, 12288},                    // power-of-two stride
      {4096 * 5, 4096 * 3, 4096 * 7, 5000, 1 << 24, 4096 * 9},  // division
      {0, 65536, 65536, 300, 1ull << 36, -(65536 * 2)},         // contiguous, backwards
      {(1ull << 40), 4096, 1ull << 33, 100, 1 << 20, 4096},     // offsets past 2^40
      {8192, 4096 * 10, 4096 * 10, 1, 1 << 20, 0},              // single extent
      {0, 1ull << 30, 1ull << 30, 1, 1ull << 33, 0},            // single huge extent
  };
  for (const Case& c : cases) {
    FileMap map = MakeMap(StrideFile(c.first, c.len, c.stride, c.count, c.addr0, c.addr_stride));
    std::string reason;
    ASSERT_EQ(Choose(map, CodegenOptions{}, &reason), Strategy::kArithmetic)
        << c.first << "/" << c.stride << ": " << reason;
    BuildAndCheck(map, Strategy::kArithmetic);
    BuildAndCheck(map, Strategy::kMapSearch);
  }
  // Unwritten stride: reads answered, writes fall back (checked by the reference).
  FileMap unw =
      MakeMap(StrideFile(0, 4096, 8192, 64, 1 << 20, 8192, iomap::MappingType::kUnwritten));
  BuildAndCheck(unw, Strategy::kArithmetic);
}

TEST(CodegenKernel, EmptyAndAllHoleFiles) {
  IOMAPFS_REQUIRE_BPF();
  FileMap empty = MakeMap({});
  ASSERT_EQ(empty.intervals.size(), 1u);
  BuildAndCheck(empty, Strategy::kTree);
  BuildAndCheck(empty, Strategy::kMapSearch);
  iomap::Mapping hole;
  hole.length = 1 << 20;
  FileMap sparse = MakeMap({hole});
  ASSERT_EQ(sparse.intervals.size(), 1u);
  BuildAndCheck(sparse, Strategy::kTree);
}

TEST(CodegenKernel, SmallBlockSize) {
  IOMAPFS_REQUIRE_BPF();
  GenOptions o;
  o.block_size = 1024;
  auto fm = BuildFileMap(3, 1024, 1, RandomMappings(50, 5, o));
  ASSERT_TRUE(fm.has_value());
  BuildAndCheck(*fm, Strategy::kTree);
  BuildAndCheck(*fm, Strategy::kMapSearch);
}

}  // namespace
}  // namespace iomapfs::bpf

namespace iomapfs::bpf {
namespace {

TEST(CodegenKernel, LoadFailureLeavesTheFileOnTheServerPath) {
  IOMAPFS_REQUIRE_BPF();
  FileMap map = MakeMap(RandomMappings(10, 1));
  // A genuine verifier rejection: the struct_ops body stores through a pointer it read from its
  // arguments, which a SYSCALL context does not have.
  auto gen = Generate(map, 1, Strategy::kTree, -1, Abi::kStructOps);
  ASSERT_TRUE(gen.has_value());
  std::string log;
  auto fd = LoadProgram(gen->insns, LoadOptions{}, &log);
  ASSERT_FALSE(fd.has_value());
  EXPECT_FALSE(log.empty());
  // A load failure through the normal path: an error with the reason, logged, nothing thrown.
  LoadOptions bad;
  bad.sleepable = false;  // SYSCALL programs must be sleepable
  std::string reason;
  auto p = FileProgram::Build(map, 1, CodegenOptions{}, &reason, bad);
  ASSERT_FALSE(p.has_value());
  EXPECT_NE(reason.find("failed to load"), std::string::npos) << reason;
  EXPECT_NE(reason.find("sleepable"), std::string::npos) << reason;
  // And the next file still compiles and answers.
  BuildAndCheck(map, Strategy::kTree);
}

}  // namespace
}  // namespace iomapfs::bpf
