// Runner tests on plain directories of one filesystem (no mounts, no root): two empty trees
// agree on every op, and a planted difference is reported with the seed, the op and the ops
// before it.
#include "tests/difftest/runner.h"

#include <sys/stat.h>

#include <string>

#include "gtest/gtest.h"
#include "tests/support/test_util.h"

namespace iomapfs::difftest {
namespace {

TEST(RunnerTest, IdenticalTreesAgree) {
  iomapfs::testing::TempDir tmp;
  const std::string a = tmp.Sub("a"), b = tmp.Sub("b");
  ASSERT_EQ(mkdir(a.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(b.c_str(), 0755), 0);
  RunnerOptions o;
  o.seed = 11;
  o.ops = 3000;
  o.check_every = 500;
  RunResult r = RunLockstep(a, b, o);
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.ops_run, 3000u);
  EXPECT_EQ(r.tree_checks, 6u);
  EXPECT_GT(r.by_kind["write"].ok, 0u) << r.Stats();
}

TEST(RunnerTest, PlantedDifferenceIsReported) {
  iomapfs::testing::TempDir tmp;
  const std::string a = tmp.Sub("a"), b = tmp.Sub("b");
  ASSERT_EQ(mkdir(a.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(b.c_str(), 0755), 0);
  ASSERT_TRUE(iomapfs::testing::WriteFile(b + "/f0", "only on the test side"));
  RunnerOptions o;
  o.seed = 5;
  o.ops = 5000;
  o.test_name = "planted";
  RunResult r = RunLockstep(a, b, o);
  ASSERT_FALSE(r.ok);
  EXPECT_NE(r.report.find("seed 5"), std::string::npos) << r.report;
  EXPECT_NE(r.report.find("planted: ret="), std::string::npos) << r.report;
  EXPECT_NE(r.report.find("last "), std::string::npos) << r.report;
  EXPECT_GE(r.failed_op, 0) << r.report;
  EXPECT_EQ(r.ops_run, static_cast<uint64_t>(r.failed_op) + 1);
}

TEST(RunnerTest, TreeComparisonSeesContentsAndModes) {
  iomapfs::testing::TempDir tmp;
  const std::string a = tmp.Sub("a"), b = tmp.Sub("b");
  ASSERT_EQ(mkdir(a.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(b.c_str(), 0755), 0);
  ASSERT_TRUE(iomapfs::testing::WriteFile(a + "/f", "abcdef"));
  ASSERT_TRUE(iomapfs::testing::WriteFile(b + "/f", "abcxef"));
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0700), 0);
  ASSERT_EQ(mkdir((b + "/d").c_str(), 0755), 0);
  TreeDifferences d = CompareTrees(a, b, CompareOptions{});
  EXPECT_EQ(d.count, 2u);
  ASSERT_EQ(d.lines.size(), 2u);
  EXPECT_NE(d.lines[0].find("/d: stat"), std::string::npos) << d.lines[0];
  EXPECT_NE(d.lines[1].find("/f: contents: first difference at byte 3"), std::string::npos)
      << d.lines[1];
}

}  // namespace
}  // namespace iomapfs::difftest
