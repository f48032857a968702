#include "base/result.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace iomapfs {
namespace {

Result<int> Half(int v) {
  if (v % 2 != 0) return Unexpected(EINVAL);
  return v / 2;
}

Result<int> Quarter(int v) {
  IOMAPFS_ASSIGN_OR_RETURN(int h, Half(v));
  return Half(h);
}

Result<void> CheckEven(int v) {
  IOMAPFS_TRY(Half(v));
  return {};
}

TEST(ResultTest, ValueAndError) {
  Result<int> ok = Half(8);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(*ok, 4);
  Result<int> bad = Half(3);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error(), EINVAL);
  EXPECT_EQ(bad.value_or(-1), -1);
}

TEST(ResultTest, Propagation) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).error(), EINVAL);  // 6/2 = 3 is odd
  EXPECT_TRUE(CheckEven(2).has_value());
  EXPECT_EQ(CheckEven(1).error(), EINVAL);
}

TEST(ResultTest, MoveOnlyValue) {
  Result<std::unique_ptr<std::string>> r = std::make_unique<std::string>("x");
  ASSERT_TRUE(r);
  std::unique_ptr<std::string> p = std::move(r).value();
  EXPECT_EQ(*p, "x");
}

TEST(ResultTest, VoidError) {
  Result<void> r = Unexpected(ENOENT);
  EXPECT_FALSE(r);
  EXPECT_EQ(r.error(), ENOENT);
  EXPECT_DEATH(r.value(), "");
}

}  // namespace
}  // namespace iomapfs
