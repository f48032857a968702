// The budget of standalone programs (arithmetic, tree): program count and instruction total,
// least-recently-used eviction, refusal of what can never fit.
#include "bpf/program_cache.h"

#include <gtest/gtest.h>

#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

FileProgram Tree(uint64_t nodeid, size_t extents) {
  FileMap map = *BuildFileMap(nodeid, 4096, 1, testing::RandomMappings(extents, nodeid));
  std::string reason;
  auto p = FileProgram::BuildWith(map, 1, Strategy::kTree, &reason);
  EXPECT_TRUE(p.has_value()) << reason;
  return std::move(*p);
}

TEST(ProgramCacheKernel, CountBudgetEvictsLeastRecentlyUsed) {
  IOMAPFS_REQUIRE_BPF();
  ProgramCache cache(ProgramBudget{3, 1u << 20});
  for (uint64_t n = 1; n <= 3; ++n) ASSERT_TRUE(cache.Insert(Tree(n, 4)).has_value());
  ASSERT_NE(cache.Lookup(1), nullptr);  // 2 is now the least recently used
  ASSERT_TRUE(cache.Insert(Tree(4, 4)).has_value());
  EXPECT_EQ(cache.programs(), 3u);
  EXPECT_TRUE(cache.Contains(1));
  EXPECT_FALSE(cache.Contains(2));
  EXPECT_TRUE(cache.Contains(3));
  EXPECT_TRUE(cache.Contains(4));
  EXPECT_EQ(cache.stats().evictions, 1u);
  // A survivor still answers.
  const FileProgram* p = cache.Lookup(3);
  ASSERT_NE(p, nullptr);
  FileMap map = *BuildFileMap(3, 4096, 1, testing::RandomMappings(4, 3));
  EXPECT_EQ(testing::CheckAgainstReference(*p, map, 200, 1), 0u);
  // Replacing a node id's program does not evict anyone else.
  ASSERT_TRUE(cache.Insert(Tree(4, 6)).has_value());
  EXPECT_EQ(cache.programs(), 3u);
  EXPECT_EQ(cache.stats().evictions, 1u);
  EXPECT_TRUE(cache.Remove(4));
  EXPECT_FALSE(cache.Remove(4));
  EXPECT_EQ(cache.programs(), 2u);
}

TEST(ProgramCacheKernel, InstructionBudget) {
  IOMAPFS_REQUIRE_BPF();
  FileProgram a = Tree(1, 20);
  const uint64_t per = a.insns().size();
  // Room for two programs of this size, not three.
  ProgramCache cache(ProgramBudget{100, per * 2 + per / 2});
  ASSERT_TRUE(cache.Insert(std::move(a)).has_value());
  ASSERT_TRUE(cache.Insert(Tree(2, 20)).has_value());
  EXPECT_EQ(cache.insns(), cache.Lookup(1)->insns().size() + cache.Lookup(2)->insns().size());
  // 1 was looked up first, so 2 was used last... make 1 the most recent again.
  ASSERT_NE(cache.Lookup(1), nullptr);
  ASSERT_TRUE(cache.Insert(Tree(3, 20)).has_value());
  EXPECT_TRUE(cache.Contains(1));
  EXPECT_FALSE(cache.Contains(2));
  EXPECT_TRUE(cache.Contains(3));
  EXPECT_LE(cache.insns(), per * 2 + per / 2);
  // A program bigger than the whole budget is refused and evicts nothing.
  const size_t before = cache.programs();
  auto big = cache.Insert(Tree(9, 90));
  ASSERT_FALSE(big.has_value());
  EXPECT_EQ(big.error(), E2BIG);
  EXPECT_EQ(cache.programs(), before);
  EXPECT_EQ(cache.stats().refused, 1u);
  // Map-search programs belong to the dispatcher.
  FileMap m = *BuildFileMap(5, 4096, 1, testing::RandomMappings(200, 5));
  std::string reason;
  auto ms = FileProgram::BuildWith(m, 1, Strategy::kMapSearch, &reason);
  ASSERT_TRUE(ms.has_value()) << reason;
  EXPECT_EQ(cache.Insert(std::move(*ms)).error(), EINVAL);
}

}  // namespace
}  // namespace iomapfs::bpf
