// The per-connection dispatcher: why not tail calls, lookups through map-in-map for several
// files, replacement without touching other files, removal, staleness, budget and LRU eviction,
// files computed from their slot (one extent or an exact stride) and their in-place updates.
#include "bpf/dispatcher.h"

#include <bpf/bpf.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "bpf/assembler.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

using testing::StrideFile;

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

// Node ids below DispatcherOptions::direct_nodeids are in the ARRAY index, the others in the
// HASH: every test of the index runs with node ids in both.
constexpr uint64_t kHashedBase = uint64_t{1} << 33;

class DispatcherIndex : public ::testing::TestWithParam<uint64_t> {};
INSTANTIATE_TEST_SUITE_P(DispatcherKernel, DispatcherIndex,
                         ::testing::Values(uint64_t{0}, kHashedBase),
                         [](const auto& info) { return info.param == 0 ? "Direct" : "Hashed"; });

TEST_P(DispatcherIndex, DispatchesManyFilesAndReplacesOneAlone) {
  IOMAPFS_REQUIRE_BPF();
  const uint64_t base = GetParam() + 100;
  std::string reason;
  auto d = Dispatcher::Create(DispatcherOptions{}, &reason);
  ASSERT_TRUE(d.has_value()) << reason;
  std::vector<FileMap> files;
  size_t counts[] = {1, 8, 64, 512, 4096, 20000};
  for (size_t i = 0; i < std::size(counts); ++i) {
    files.push_back(*BuildFileMap(base + i, 4096, 3, testing::RandomMappings(counts[i], i)));
    auto seq = d->Install(files.back());
    ASSERT_TRUE(seq.has_value()) << seq.error();
    ASSERT_EQ(d->IndexEntry(base + i)->seq, *seq);
  }
  for (const FileMap& f : files) EXPECT_EQ(CheckDispatch(*d, f, 2000), 0u);
  // Replace file 2 with a much larger layout (new class): only its answers change.
  const uint64_t old_seq = d->SeqOf(base + 2);
  files[2] = *BuildFileMap(base + 2, 4096, 3, testing::RandomMappings(3000, 77));
  ASSERT_TRUE(d->Install(files[2]).has_value());
  EXPECT_GT(d->SeqOf(base + 2), old_seq);
  for (const FileMap& f : files) EXPECT_EQ(CheckDispatch(*d, f, 1000), 0u);
  // Same class: written in place, the sequence number stays.
  const uint64_t seq5 = d->SeqOf(base + 5);
  files[5] = *BuildFileMap(base + 5, 4096, 3, testing::RandomMappings(20000, 78));
  ASSERT_TRUE(d->Install(files[5]).has_value());
  EXPECT_EQ(d->SeqOf(base + 5), seq5);
  EXPECT_EQ(d->stats().in_place_updates, 1u);
  EXPECT_EQ(CheckDispatch(*d, files[5], 1000), 0u);
  // Forget: falls back; the others still answer.
  EXPECT_TRUE(d->Remove(base + 1));
  EXPECT_EQ(d->IndexEntry(base + 1).error(), ENOENT);
  EXPECT_EQ(CheckDispatch(*d, files[1], 100), 0u);  // reference for an absent file: fallback
  EXPECT_EQ(CheckDispatch(*d, files[0], 100), 0u);
  BeginCtx unknown;
  unknown.nodeid = base + 999;
  EXPECT_EQ(d->Run(unknown)->ret, kFibFallback);
}

// Where the two indexes meet: the last direct node id, the first hashed one, node id 0 (never a
// file: an ARRAY entry never written is zeros, and must not read as arithmetic slot 0) and the
// largest; and a dispatcher with no ARRAY at all.
TEST(DispatcherKernel, IndexBoundaries) {
  IOMAPFS_REQUIRE_BPF();
  for (uint32_t direct : {0u, 64u}) {
    DispatcherOptions o;
    o.direct_nodeids = direct;
    std::string reason;
    auto d = Dispatcher::Create(o, &reason);
    ASSERT_TRUE(d.has_value()) << reason;
    std::vector<FileMap> files;
    for (uint64_t n : {uint64_t{1}, uint64_t{63}, uint64_t{64}, uint64_t{65}, ~uint64_t{0}}) {
      // Alternately a computed file and a searched one.
      files.push_back(*BuildFileMap(n, 4096, 3,
                                    files.size() % 2 == 0
                                        ? StrideFile(0, 4096, 8192, 50 + n % 7, 1 << 20, 8192)
                                        : testing::RandomMappings(100 + files.size(), n)));
      ASSERT_TRUE(d->Install(files.back()).has_value()) << n;
    }
    for (const FileMap& f : files) EXPECT_EQ(CheckDispatch(*d, f, 300), 0u) << f.nodeid;
    for (uint64_t n : {uint64_t{0}, uint64_t{2}, uint64_t{66}}) {
      BeginCtx c;
      c.nodeid = n;
      EXPECT_EQ(d->Run(c)->ret, kFibFallback) << n;
    }
    for (const FileMap& f : files) ASSERT_TRUE(d->Remove(f.nodeid));
    for (const FileMap& f : files) EXPECT_EQ(CheckDispatch(*d, f, 50), 0u) << f.nodeid;
  }
  EXPECT_EQ(Dispatcher::Create(
                DispatcherOptions{.direct_nodeids = Dispatcher::kMaxDirectNodeids + 1}, nullptr)
                .error(),
            EINVAL);
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

// A BPF hash map may recycle an element that a lookup still holds, so the index entry a reader
// sees for node A may be one written for node B. The map or slot it names records its node id,
// and the dispatcher falls back instead of answering B's mapping for A.
TEST_P(DispatcherIndex, AnEntryNamingAnotherNodesFileFallsBack) {
  IOMAPFS_REQUIRE_BPF();
  const uint64_t base = GetParam();
  std::string reason;
  auto d = Dispatcher::Create(DispatcherOptions{}, &reason);
  ASSERT_TRUE(d.has_value()) << reason;
  FileMap mapped = *BuildFileMap(base + 21, 4096, 3, testing::RandomMappings(300, 1));
  FileMap computed =
      *BuildFileMap(base + 22, 4096, 3, StrideFile(0, 4096, 8192, 100, 1 << 20, 8192));
  ASSERT_TRUE(d->Install(mapped).has_value());
  ASSERT_TRUE(d->Install(computed).has_value());
  ASSERT_TRUE(d->IsArithmetic(base + 22));
  for (const FileMap* f : {&mapped, &computed}) {
    auto e = d->IndexEntry(f->nodeid);
    ASSERT_TRUE(e.has_value());
    const uint64_t stranger = base + 23;
    ASSERT_TRUE(d->WriteIndexEntryForTesting(stranger, *e).has_value());
    for (uint64_t pos : testing::ProbePositions(*f, 200, 5)) {
      BeginCtx c;
      c.nodeid = stranger;
      c.pos = pos;
      auto got = d->Run(c);
      ASSERT_TRUE(got.has_value());
      ASSERT_EQ(got->ret, kFibFallback) << f->nodeid << " pos " << pos << ": " << ToString(*got);
    }
    EXPECT_EQ(CheckDispatch(*d, *f, 200), 0u);  // the owner still answers
  }
}

// An ARRAY entry is rewritten in place, so a reader may see the fields of a file's entry before
// and after a reinstall mixed. Every mixture, across changes of class, slot and kind (computed or
// searched), answers as the old install, as the new one, or falls back; never anything else.
TEST_P(DispatcherIndex, MixedEntriesAnswerOldOrNewOrFallBack) {
  IOMAPFS_REQUIRE_BPF();
  const uint64_t base = GetParam();
  std::string reason;
  auto d = Dispatcher::Create(DispatcherOptions{}, &reason);
  ASSERT_TRUE(d.has_value()) << reason;
  // Neighbours, whose maps and slots a mixture may name.
  for (uint64_t n = 1; n <= 4; ++n) {
    const FileMap f =
        *BuildFileMap(base + 40 + n, 4096, 3,
                      n % 2 == 0 ? testing::RandomMappings(40 * n, n)
                                 : StrideFile(0, 4096, 8192, 10 * n, 1 << 20, 4096 * n));
    ASSERT_TRUE(d->Install(f).has_value());
  }
  const uint64_t node = base + 50;
  const std::vector<FileMap> versions = {
      *BuildFileMap(node, 4096, 3, testing::RandomMappings(300, 7)),
      *BuildFileMap(node, 4096, 3, testing::RandomMappings(3000, 8)),
      *BuildFileMap(node, 4096, 3, StrideFile(4096, 4096, 12288, 500, 1 << 24, 8192)),
      *BuildFileMap(node, 4096, 3, testing::RandomMappings(40, 9)),
      *BuildFileMap(node, 4096, 3, StrideFile(0, 8192, 8192, 300, 1 << 26, 8192)),
  };
  ASSERT_TRUE(d->Install(versions[0]).has_value());
  size_t as_new = 0, wrong = 0;
  for (size_t v = 1; v < versions.size(); ++v) {
    const FileMap& before = versions[v - 1];
    const FileMap& after = versions[v];
    const DispatchEntry old_e = *d->IndexEntry(node);
    ASSERT_TRUE(d->Install(after).has_value());
    const DispatchEntry new_e = *d->IndexEntry(node);
    ASSERT_NE(old_e.seq, new_e.seq);
    std::vector<uint64_t> positions = testing::ProbePositions(before, 60, v);
    for (uint64_t p : testing::ProbePositions(after, 60, v)) positions.push_back(p);
    for (int mask = 0; mask < 8; ++mask) {
      DispatchEntry mix;
      mix.log2_capacity = (mask & 1) != 0 ? new_e.log2_capacity : old_e.log2_capacity;
      mix.slot = (mask & 2) != 0 ? new_e.slot : old_e.slot;
      mix.seq = (mask & 4) != 0 ? new_e.seq : old_e.seq;
      ASSERT_TRUE(d->WriteIndexEntryForTesting(node, mix).has_value());
      for (size_t i = 0; i < positions.size(); ++i) {
        BeginCtx c;
        c.nodeid = node;
        c.pos = positions[i];
        c.opflags = i % 3 == 0 ? iomap::kOpWrite : 0;
        auto got = d->Run(c);
        ASSERT_TRUE(got.has_value());
        if (got->ret == kFibFallback || *got == ReferenceAnswer(before, 0, c)) continue;
        if (*got == ReferenceAnswer(after, 0, c)) {
          ++as_new;
        } else if (++wrong <= 3) {
          ADD_FAILURE() << "version " << v << " mask " << mask << " pos " << c.pos << ": "
                        << ToString(*got);
        }
      }
    }
    ASSERT_TRUE(d->WriteIndexEntryForTesting(node, new_e).has_value());
    EXPECT_EQ(CheckDispatch(*d, after, 300), 0u);
  }
  EXPECT_EQ(wrong, 0u);
  EXPECT_GT(as_new, 0u);  // at least the unmixed new entry answers
}

// The stride shapes of the arithmetic strategy (codegen_kernel_test.cc), as files of node id
// `base + i`.
std::vector<FileMap> StrideFiles(uint64_t base) {
  struct Case {
    uint64_t first, len, stride, count, addr0;
    int64_t addr_stride;
    iomap::MappingType type;
    uint16_t flags;
  } cases[] = {
      {0, 4096, 8192, 1000, 1 << 20, 12288, iomap::MappingType::kMapped, 0},  // power of two
      {4096 * 5, 4096 * 3, 4096 * 7, 5000, 1 << 24, 4096 * 9, iomap::MappingType::kMapped,
       0},                                                                               // division
      {0, 65536, 65536, 300, 1ull << 36, -(65536 * 2), iomap::MappingType::kMapped, 0},  // back
      {1ull << 40, 4096, 1ull << 33, 100, 1 << 20, 4096, iomap::MappingType::kMapped, 0},
      {8192, 4096 * 10, 4096 * 10, 1, 1 << 20, 0, iomap::MappingType::kMapped, 0},  // one extent
      {0, 1ull << 30, 1ull << 30, 1, 1ull << 33, 0, iomap::MappingType::kMapped, 0},
      {0, 4096, 8192, 64, 1 << 20, 8192, iomap::MappingType::kUnwritten, 0},  // writes fall back
      {4096, 8192, 16384, 50, 1 << 22, 16384, iomap::MappingType::kMapped, 0x20},  // flags kept
  };
  std::vector<FileMap> out;
  for (const Case& c : cases) {
    out.push_back(*BuildFileMap(
        base + out.size(), 4096, 3,
        StrideFile(c.first, c.len, c.stride, c.count, c.addr0, c.addr_stride, c.type, c.flags)));
  }
  return out;
}

// Files of one extent or an exact stride get no map: the dispatcher computes their mapping from
// their slot, equal to the reference at random positions, every boundary and past EOF.
TEST(DispatcherKernel, StrideFilesAreComputedWithoutAMap) {
  IOMAPFS_REQUIRE_BPF();
  std::string reason;
  auto d = Dispatcher::Create(DispatcherOptions{}, &reason);
  ASSERT_TRUE(d.has_value()) << reason;
  std::vector<FileMap> files = StrideFiles(200);
  for (const FileMap& f : files) {
    StrideShape shape;
    ASSERT_TRUE(DetectStride(f, &shape)) << f.nodeid;
    ASSERT_TRUE(d->Install(f).has_value());
    EXPECT_TRUE(d->IsArithmetic(f.nodeid)) << f.nodeid;
  }
  EXPECT_EQ(d->map_bytes(), 0u);
  EXPECT_EQ(d->stats().arithmetic, files.size());
  // Next to files with maps.
  FileMap irregular = *BuildFileMap(300, 4096, 3, testing::RandomMappings(700, 9));
  ASSERT_TRUE(d->Install(irregular).has_value());
  EXPECT_FALSE(d->IsArithmetic(300));
  for (const FileMap& f : files) EXPECT_EQ(CheckDispatch(*d, f, 5000), 0u) << f.nodeid;
  EXPECT_EQ(CheckDispatch(*d, irregular, 1000), 0u);

  // A file that stops being a stride gets a map and a new sequence number; back to a stride, it
  // is computed again. The others do not move.
  const uint64_t seq0 = d->SeqOf(200);
  std::vector<iomap::Mapping> ms = StrideFile(0, 4096, 8192, 1000, 1 << 20, 12288);
  ms.push_back({1000 * 8192 + 4096, 4096, 1 << 30, iomap::MappingType::kMapped, 0});
  FileMap broken = *BuildFileMap(200, 4096, 3, ms);
  ASSERT_TRUE(d->Install(broken).has_value());
  EXPECT_FALSE(d->IsArithmetic(200));
  EXPECT_GT(d->SeqOf(200), seq0);
  EXPECT_GT(d->map_bytes(), 0u);
  EXPECT_EQ(CheckDispatch(*d, broken, 3000), 0u);
  EXPECT_EQ(CheckDispatch(*d, files[1], 1000), 0u);
  ASSERT_TRUE(d->Install(files[0]).has_value());
  EXPECT_TRUE(d->IsArithmetic(200));
  EXPECT_EQ(CheckDispatch(*d, files[0], 3000), 0u);
  // Same shape kind again: rewritten in place, same sequence number.
  const uint64_t seq1 = d->SeqOf(201);
  const uint64_t in_place = d->stats().in_place_updates;
  FileMap moved = *BuildFileMap(201, 4096, 3, StrideFile(4096, 4096, 12288, 4000, 1 << 26, 4096));
  ASSERT_TRUE(d->Install(moved).has_value());
  EXPECT_EQ(d->SeqOf(201), seq1);
  EXPECT_EQ(d->stats().in_place_updates, in_place + 1);
  EXPECT_EQ(CheckDispatch(*d, moved, 3000), 0u);
  // Removed: falls back.
  EXPECT_TRUE(d->Remove(202));
  EXPECT_EQ(CheckDispatch(*d, files[2], 200), 0u);
}

TEST(DispatcherKernel, SlotsRunOutThenComeBack) {
  IOMAPFS_REQUIRE_BPF();
  DispatcherOptions o;
  o.arith_slots = 2;
  std::string reason;
  auto d = Dispatcher::Create(o, &reason);
  ASSERT_TRUE(d.has_value()) << reason;
  std::vector<FileMap> files = StrideFiles(400);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(d->Install(files[i]).has_value());
  EXPECT_TRUE(d->IsArithmetic(400));
  EXPECT_TRUE(d->IsArithmetic(401));
  EXPECT_FALSE(d->IsArithmetic(402));  // no slot left: a map instead
  for (int i = 0; i < 3; ++i) EXPECT_EQ(CheckDispatch(*d, files[i], 1000), 0u);
  // A slot freed by a removal is reused; the removed file's lookups fall back, not read the
  // slot's new owner.
  ASSERT_TRUE(d->Remove(400));
  ASSERT_TRUE(d->Install(files[3]).has_value());
  EXPECT_TRUE(d->IsArithmetic(403));
  EXPECT_EQ(CheckDispatch(*d, files[0], 500), 0u);  // absent: every answer a fallback
  EXPECT_EQ(CheckDispatch(*d, files[3], 1000), 0u);
  EXPECT_FALSE(Dispatcher::Create(DispatcherOptions{.arith_slots = 3}, &reason).has_value());
}

// In-place rewrites of a computed file's slot, and switches between computed and map search,
// while lookups run: every answer is the old file's or the new file's (or a fallback), never a
// mixture.
TEST(DispatcherKernel, ConcurrentLookupsDuringUpdatesSeeOldOrNew) {
  IOMAPFS_REQUIRE_BPF();
  std::string reason;
  auto d = Dispatcher::Create(DispatcherOptions{}, &reason);
  ASSERT_TRUE(d.has_value()) << reason;
  FileMap a = *BuildFileMap(9, 4096, 3, StrideFile(0, 4096, 8192, 3000, 1 << 20, 12288));
  FileMap b = *BuildFileMap(9, 4096, 3, StrideFile(4096, 8192, 12288, 2000, 1 << 28, 8192));
  FileMap c = *BuildFileMap(9, 4096, 3, testing::RandomMappings(1500, 4));
  ASSERT_TRUE(d->Install(a).has_value());
  for (bool switch_kind : {false, true}) {
    const FileMap& other = switch_kind ? c : b;
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> updates{0};
    std::thread writer([&] {
      // A switch of kind waits for an RCU grace period when the old map leaves its class, but the
      // new index entry is visible only from its write to the next install's: without a pause the
      // file would be `other` for a few microseconds per switch, and readers might never see it.
      const auto hold = std::chrono::microseconds(switch_kind ? 200 : 0);
      while (!stop.load()) {
        ASSERT_TRUE(d->Install(other).has_value());
        std::this_thread::sleep_for(hold);
        ASSERT_TRUE(d->Install(a).has_value());
        std::this_thread::sleep_for(hold);
        updates += 2;
      }
    });
    std::mt19937_64 rng(3);
    const uint64_t span = 3000 * 8192 + 65536;
    size_t from_a = 0, from_other = 0, fallbacks = 0, mixed = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    while (std::chrono::steady_clock::now() < deadline) {
      BeginCtx ctx;
      ctx.nodeid = 9;
      ctx.pos = rng() % span;
      auto got = d->Run(ctx);
      ASSERT_TRUE(got.has_value());
      if (*got == ReferenceAnswer(a, 0, ctx)) {
        ++from_a;
      } else if (*got == ReferenceAnswer(other, 0, ctx)) {
        ++from_other;
      } else if (got->ret == kFibFallback) {
        ++fallbacks;
      } else if (++mixed <= 3) {
        ADD_FAILURE() << "pos " << ctx.pos << " got " << ToString(*got);
      }
    }
    stop = true;
    writer.join();
    // A switch of kind creates a map (and waits for the kernel's map-in-map update): fewer.
    const size_t enough = switch_kind ? 10 : 100;
    EXPECT_EQ(mixed, 0u);
    EXPECT_GT(from_a, enough);
    EXPECT_GT(from_other, enough);
    EXPECT_GT(updates.load(), enough);
    std::printf("%s: %zu old, %zu new, %zu fallback; %llu updates\n",
                switch_kind ? "computed <-> map search" : "slot rewrites", from_a, from_other,
                fallbacks, static_cast<unsigned long long>(updates.load()));
  }
}

}  // namespace
}  // namespace iomapfs::bpf
