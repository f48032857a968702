// The per-connection dispatcher: why not tail calls, lookups through map-in-map for several
// files, replacement without touching other files, removal, staleness, budget and LRU eviction.
#include "bpf/dispatcher.h"

#include <gtest/gtest.h>

#include "bpf/assembler.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

// Compares the dispatcher with the reference for `map` at its probe positions.
size_t CheckDispatch(const Dispatcher& d, const FileMap& map, size_t random) {
  const uint64_t seq = d.SeqOf(map.nodeid);
  size_t bad = 0;
  auto positions = testing::ProbePositions(map, random, map.nodeid);
  for (size_t i = 0; i < positions.size(); ++i) {
    BeginCtx c;
    c.nodeid = map.nodeid;
    c.expect_seq = seq;
    c.pos = positions[i];
    c.opflags = i % 3 == 0 ? iomap::kOpWrite : 0;
    auto got = d.Run(c);
    if (!got) return positions.size();
    Answer want = seq == 0 ? Answer{} : ReferenceAnswer(map, seq, c);
    if (!(*got == want) && ++bad <= 3) {
      ADD_FAILURE() << "node " << map.nodeid << " pos " << c.pos << "\n got  " << ToString(*got)
                    << "\n want " << ToString(want);
    }
  }
  return bad;
}

TEST(DispatcherKernel, ProgArrayRejectedForSleepable) {
  IOMAPFS_REQUIRE_BPF();
  // The textbook mechanism: a PROG_ARRAY and bpf_tail_call. Sleepable programs may not use it.
  auto pa = CreateMap(BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 8, 0, "pa");
  ASSERT_TRUE(pa.has_value());
  Assembler a;
  a.LoadMapFd(R2, pa->get());
  a.MovImm(R3, 0);
  a.Call(BPF_FUNC_tail_call);
  a.MovImm(R0, 0);
  a.Exit();
  auto insns = a.Finish();
  ASSERT_TRUE(insns.has_value());
  std::string log;
  auto fd = LoadProgram(*insns, LoadOptions{}, &log);
  ASSERT_FALSE(fd.has_value()) << "PROG_ARRAY accepted: tail calls would work after all";
  EXPECT_EQ(fd.error(), EINVAL);
  EXPECT_NE(log.find("Sleepable programs can only use"), std::string::npos) << log;
}

TEST(DispatcherKernel, DispatchesManyFilesAndReplacesOneAlone) {
  IOMAPFS_REQUIRE_BPF();
  std::string reason;
  auto d = Dispatcher::Create(DispatcherOptions{}, &reason);
  ASSERT_TRUE(d.has_value()) << reason;
  std::vector<FileMap> files;
  size_t counts[] = {1, 8, 64, 512, 4096, 20000};
  for (size_t i = 0; i < std::size(counts); ++i) {
    files.push_back(*BuildFileMap(100 + i, 4096, 3, testing::RandomMappings(counts[i], i)));
    auto seq = d->Install(files.back());
    ASSERT_TRUE(seq.has_value()) << seq.error();
  }
  for (const FileMap& f : files) EXPECT_EQ(CheckDispatch(*d, f, 2000), 0u);
  // Replace file 2 with a much larger layout (new class): only its answers change.
  const uint64_t old_seq = d->SeqOf(102);
  files[2] = *BuildFileMap(102, 4096, 3, testing::RandomMappings(3000, 77));
  ASSERT_TRUE(d->Install(files[2]).has_value());
  EXPECT_GT(d->SeqOf(102), old_seq);
  for (const FileMap& f : files) EXPECT_EQ(CheckDispatch(*d, f, 1000), 0u);
  // Same class: written in place, the sequence number stays.
  const uint64_t seq5 = d->SeqOf(105);
  files[5] = *BuildFileMap(105, 4096, 3, testing::RandomMappings(20000, 78));
  ASSERT_TRUE(d->Install(files[5]).has_value());
  EXPECT_EQ(d->SeqOf(105), seq5);
  EXPECT_EQ(d->stats().in_place_updates, 1u);
  EXPECT_EQ(CheckDispatch(*d, files[5], 1000), 0u);
  // Forget: falls back; the others still answer.
  EXPECT_TRUE(d->Remove(101));
  EXPECT_EQ(CheckDispatch(*d, files[1], 100), 0u);  // reference for an absent file: fallback
  EXPECT_EQ(CheckDispatch(*d, files[0], 100), 0u);
  BeginCtx unknown;
  unknown.nodeid = 999;
  EXPECT_EQ(d->Run(unknown)->ret, kFibFallback);
}

TEST(DispatcherKernel, BudgetEvictsLeastRecentlyUsed) {
  IOMAPFS_REQUIRE_BPF();
  DispatcherOptions o;
  o.budget.max_files = 3;
  std::string reason;
  auto d = Dispatcher::Create(o, &reason);
  ASSERT_TRUE(d.has_value()) << reason;
  std::vector<FileMap> f;
  for (uint64_t n = 1; n <= 4; ++n) {
    f.push_back(*BuildFileMap(n, 4096, 3, testing::RandomMappings(10, n)));
  }
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(d->Install(f[i]).has_value());
  d->Touch(1);  // node 2 is now the least recently used
  ASSERT_TRUE(d->Install(f[3]).has_value());
  EXPECT_TRUE(d->Contains(1));
  EXPECT_FALSE(d->Contains(2));
  EXPECT_TRUE(d->Contains(3));
  EXPECT_TRUE(d->Contains(4));
  EXPECT_EQ(d->stats().evictions, 1u);
  EXPECT_EQ(CheckDispatch(*d, f[1], 50), 0u);  // evicted: falls back
  EXPECT_EQ(CheckDispatch(*d, f[3], 500), 0u);

  // A byte budget smaller than one file's map: refused, never an error for the server.
  DispatcherOptions small;
  small.budget.max_map_bytes = 4096;
  auto d2 = Dispatcher::Create(small, &reason);
  ASSERT_TRUE(d2.has_value());
  auto r = d2->Install(*BuildFileMap(7, 4096, 3, testing::RandomMappings(5000, 1)));
  EXPECT_EQ(r.error(), ENOSPC);
  EXPECT_EQ(d2->stats().refused, 1u);
  // Too many intervals for the largest class.
  DispatcherOptions tiny;
  tiny.max_log2_capacity = 6;
  auto d3 = Dispatcher::Create(tiny, &reason);
  ASSERT_TRUE(d3.has_value());
  EXPECT_EQ(d3->Install(*BuildFileMap(7, 4096, 3, testing::RandomMappings(500, 1))).error(), E2BIG);
}

}  // namespace
}  // namespace iomapfs::bpf
