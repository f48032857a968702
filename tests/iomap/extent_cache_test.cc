// ExtentCache: LRU bounds in inodes and runs, fingerprint mismatch, window containment.
#include "iomap/extent_cache.h"

#include <gtest/gtest.h>

#include <cstring>

namespace iomapfs::iomap {
namespace {

ext2_inode Inode(uint32_t size) {
  ext2_inode i;
  std::memset(&i, 0, sizeof(i));
  i.i_size = size;
  return i;
}

Window MakeWindow(uint64_t start, uint64_t end, size_t runs) {
  Window w{start, end, {}};
  for (size_t i = 0; i < runs; ++i) w.runs.push_back(Run{start + 2 * i, 1, 1000 + 2 * i});
  return w;
}

TEST(ExtentCacheTest, FindRequiresSameFingerprintAndContainment) {
  ExtentCache c(4, 100);
  ext2_inode fp = ExtentCache::Fingerprint(Inode(10));
  c.Insert(7, fp, MakeWindow(10, 20, 3));
  EXPECT_NE(c.Find(7, fp, 10), nullptr);
  EXPECT_NE(c.Find(7, fp, 19), nullptr);
  EXPECT_EQ(c.Find(7, fp, 20), nullptr);
  EXPECT_EQ(c.Find(7, fp, 9), nullptr);
  EXPECT_EQ(c.Find(8, fp, 10), nullptr);
  // The access time is not part of the fingerprint; the size is.
  ext2_inode touched = Inode(10);
  touched.i_atime = 12345;
  EXPECT_NE(c.Find(7, ExtentCache::Fingerprint(touched), 10), nullptr);
  EXPECT_EQ(c.Find(7, ExtentCache::Fingerprint(Inode(11)), 10), nullptr);
  EXPECT_EQ(c.size(), 0u) << "a stale entry is dropped";
}

TEST(ExtentCacheTest, EvictsLeastRecentlyUsedInodes) {
  ExtentCache c(3, 1000);
  ext2_inode fp = ExtentCache::Fingerprint(Inode(1));
  for (uint64_t ino = 1; ino <= 3; ++ino) c.Insert(ino, fp, MakeWindow(0, 10, 1));
  ASSERT_NE(c.Find(1, fp, 0), nullptr);  // 1 is now most recent; 2 is the LRU
  c.Insert(4, fp, MakeWindow(0, 10, 1));
  EXPECT_EQ(c.size(), 3u);
  EXPECT_EQ(c.Find(2, fp, 0), nullptr);
  EXPECT_NE(c.Find(1, fp, 0), nullptr);
  EXPECT_NE(c.Find(3, fp, 0), nullptr);
  EXPECT_NE(c.Find(4, fp, 0), nullptr);
}

TEST(ExtentCacheTest, BoundedInRuns) {
  ExtentCache c(100, 10);
  ext2_inode fp = ExtentCache::Fingerprint(Inode(1));
  c.Insert(1, fp, MakeWindow(0, 100, 6));
  c.Insert(2, fp, MakeWindow(0, 100, 6));
  EXPECT_LE(c.total_runs(), 10u);
  EXPECT_EQ(c.size(), 1u);
  EXPECT_NE(c.Find(2, fp, 0), nullptr);
  // A window larger than the whole budget is not kept.
  EXPECT_EQ(c.Insert(3, fp, MakeWindow(0, 100, 11)), nullptr);
  EXPECT_LE(c.total_runs(), 10u);
  c.Erase(2);
  EXPECT_EQ(c.total_runs(), 0u);
  c.Insert(5, fp, MakeWindow(0, 100, 2));
  c.Clear();
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.total_runs(), 0u);
}

}  // namespace
}  // namespace iomapfs::iomap
