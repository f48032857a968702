// Unit tests of the op generator: reproducible sequences (the property a one-command repro
// relies on), the hand-written distributions, and the namespace model.
#include "tests/difftest/ops.h"

#include <fcntl.h>
#include <stdio.h>

#include <cstdint>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace iomapfs::difftest {
namespace {

TEST(RngTest, EngineIsTheStandardMt19937_64) {
  // The 10000th output for the default seed is fixed by the C++ standard ([rand.predef]).
  Rng rng(5489);
  uint64_t x = 0;
  for (int i = 0; i < 10000; ++i) x = rng.Next();
  EXPECT_EQ(x, 9981545732273789042ULL);
}

TEST(RngTest, DistributionsStayInRange) {
  Rng rng(7);
  std::set<uint64_t> seen;
  for (int i = 0; i < 10000; ++i) {
    uint64_t b = rng.Below(10);
    ASSERT_LT(b, 10u);
    seen.insert(b);
    uint64_t r = rng.Range(5, 9);
    ASSERT_GE(r, 5u);
    ASSERT_LE(r, 9u);
    uint64_t l = rng.LogUniform(1, 256 * 1024);
    ASSERT_GE(l, 1u);
    ASSERT_LE(l, 256u * 1024);
    ASSERT_LT(rng.Weighted({1, 0, 3}), 3u);
    ASSERT_NE(rng.Weighted({1, 0, 3}), 1u);
  }
  EXPECT_EQ(seen.size(), 10u);
}

TEST(GeneratorTest, SameSeedSameSequence) {
  Generator a(42), b(42), c(43);
  bool differs = false;
  for (int i = 0; i < 5000; ++i) {
    Op x = a.Next(), y = b.Next(), z = c.Next();
    ASSERT_EQ(x.Describe(), y.Describe()) << "op " << i;
    differs |= x.Describe() != z.Describe();
    // Feed back a plausible result: everything succeeds.
    a.Observe(x, 0);
    b.Observe(y, 0);
    c.Observe(z, 0);
  }
  EXPECT_TRUE(differs);
}

TEST(GeneratorTest, PathsStayInsideTheTree) {
  Generator g(1);
  for (int i = 0; i < 20000; ++i) {
    Op op = g.Next();
    for (const std::string* p : {&op.path, &op.path2}) {
      ASSERT_EQ(p->find(".."), std::string::npos) << op.Describe();
      ASSERT_TRUE(p->empty() || (*p)[0] != '/') << op.Describe();
    }
    g.Observe(op, 0);
  }
}

TEST(GeneratorTest, ModelFollowsRenamesAndRemovals) {
  Generator g(3);
  auto observe = [&g](OpKind kind, const std::string& path, const std::string& path2 = "",
                      int flags = 0) {
    Op op;
    op.kind = kind;
    op.slot = 0;
    op.path = path;
    op.path2 = path2;
    op.flags = flags;
    g.Observe(op, 0);
  };
  observe(OpKind::kMkdir, "d0");
  observe(OpKind::kOpen, "d0/f1", "", O_CREAT | O_RDWR);
  observe(OpKind::kMkdir, "d0/d1");
  observe(OpKind::kOpen, "d0/d1/f2", "", O_CREAT | O_RDWR);
  EXPECT_EQ(g.known_paths(), 4u);
  observe(OpKind::kRename, "d0", "d2");  // moves the subtree
  EXPECT_EQ(g.known_paths(), 4u);
  observe(OpKind::kSymlink, "f3", "d2");
  observe(OpKind::kRename, "f3", "d2", RENAME_EXCHANGE);
  EXPECT_EQ(g.known_paths(), 5u);
  observe(OpKind::kUnlink, "d2");  // the symlink, after the exchange
  EXPECT_EQ(g.known_paths(), 4u);
  observe(OpKind::kRmdir, "f3");  // the directory (the model drops what was below it)
  EXPECT_EQ(g.known_paths(), 0u);
  observe(OpKind::kOpen, "f4", "", O_RDWR);  // no O_CREAT: nothing new
  EXPECT_EQ(g.known_paths(), 0u);
}

TEST(MakeDataTest, DeterministicAndSized) {
  for (uint64_t seed = 0; seed < 16; ++seed) {
    EXPECT_EQ(MakeData(seed, 1000), MakeData(seed, 1000));
    EXPECT_EQ(MakeData(seed, 13).size(), 13u);
    EXPECT_EQ(MakeData(seed, 1000).substr(0, 13), MakeData(seed, 13));
  }
  EXPECT_EQ(MakeData(8, 64), std::string(64, '\0'));
}

}  // namespace
}  // namespace iomapfs::difftest
