// In-place updates of a map-search program's array map while lookups run: every answer is the
// old file's or the new file's (or a fallback), never a mixture.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "bpf/file_program.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

TEST(MapUpdate, ConcurrentLookupsSeeOldOrNewNeverMixed) {
  IOMAPFS_REQUIRE_BPF();
  // Two different layouts of the same file (same node id), both within one capacity.
  FileMap a = *BuildFileMap(9, 4096, 7, testing::RandomMappings(3000, 1));
  FileMap b = *BuildFileMap(9, 4096, 7, testing::RandomMappings(3000, 2));
  ASSERT_EQ(MapLayout::ForIntervals(a.intervals.size()).capacity,
            MapLayout::ForIntervals(b.intervals.size()).capacity);
  std::string reason;
  auto prog = FileProgram::BuildWith(a, 1, Strategy::kMapSearch, &reason);
  ASSERT_TRUE(prog.has_value()) << reason;
  // Answers that are the same under both layouts prove nothing; count the ones that differ.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> updates{0};
  std::thread writer([&] {
    while (!stop.load()) {
      ASSERT_TRUE(prog->UpdateInPlace(b).has_value());
      ASSERT_TRUE(prog->UpdateInPlace(a).has_value());
      updates += 2;
    }
  });
  std::mt19937_64 rng(3);
  uint64_t span = a.intervals[a.intervals.size() - 2].end() + 8192;
  size_t from_a = 0, from_b = 0, fallbacks = 0, mixed = 0, distinguishing = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (std::chrono::steady_clock::now() < deadline) {
    BeginCtx c;
    c.nodeid = 9;
    c.expect_seq = 1;
    c.pos = rng() % span;
    auto got = prog->Run(c);
    ASSERT_TRUE(got.has_value());
    Answer wa = ReferenceAnswer(a, 1, c);
    Answer wb = ReferenceAnswer(b, 1, c);
    if (!(wa == wb)) ++distinguishing;
    if (*got == wa) {
      ++from_a;
    } else if (*got == wb) {
      ++from_b;
    } else if (got->ret == kFibFallback) {
      ++fallbacks;
    } else if (++mixed <= 3) {
      ADD_FAILURE() << "pos " << c.pos << " got " << ToString(*got) << "\n a " << ToString(wa)
                    << "\n b " << ToString(wb);
    }
  }
  stop = true;
  writer.join();
  EXPECT_EQ(mixed, 0u);
  EXPECT_GT(from_a, 100u);
  EXPECT_GT(from_b, 100u);
  EXPECT_GT(updates.load(), 100u);
  RecordProperty("updates", std::to_string(updates.load()));
  std::printf(
      "lookups: %zu old, %zu new, %zu fallback (seqcount retry), %zu distinguishing; "
      "%llu updates\n",
      from_a, from_b, fallbacks, distinguishing, static_cast<unsigned long long>(updates.load()));
}

TEST(MapUpdate, UpdateThatDoesNotFitIsRefused) {
  IOMAPFS_REQUIRE_BPF();
  FileMap a = *BuildFileMap(9, 4096, 7, testing::RandomMappings(100, 1));
  FileMap big = *BuildFileMap(9, 4096, 7, testing::RandomMappings(1000, 2));
  std::string reason;
  auto prog = FileProgram::BuildWith(a, 1, Strategy::kMapSearch, &reason);
  ASSERT_TRUE(prog.has_value()) << reason;
  EXPECT_EQ(prog->UpdateInPlace(big).error(), ENOSPC);
  FileMap other = a;
  other.nodeid = 10;
  EXPECT_EQ(prog->UpdateInPlace(other).error(), EINVAL);
  // A fitting update is visible to the next lookup, with the map seqcount advanced.
  FileMap a2 = *BuildFileMap(9, 4096, 7, testing::RandomMappings(120, 5));
  ASSERT_TRUE(prog->UpdateInPlace(a2).has_value());
  EXPECT_EQ(prog->map_seq(), 2u);
  EXPECT_EQ(testing::CheckAgainstReference(*prog, a2, 2000, 4), 0u);
}

}  // namespace
}  // namespace iomapfs::bpf
