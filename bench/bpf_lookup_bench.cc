// bpf_lookup_bench: load (verify + JIT) time and in-kernel cost per lookup of the generated
// iomap_begin programs, per extent count and strategy, against a userspace lookup over the same
// intervals. In-kernel cost comes from kernel BPF statistics (BPF_ENABLE_STATS run_time_ns /
// run_cnt) minus the same figure for an empty program (the two sched_clock reads), never from the
// wall time of BPF_PROG_TEST_RUN (about 350 ns of syscall per call). Needs root.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <random>

#include "bpf/assembler.h"
#include "bpf/file_program.h"
#include "bpf/kernel.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

constexpr int kRuns = 20000;

double KernelNsPerRun(int fd, const std::vector<BeginCtx>& ctxs) {
  auto before = GetProgInfo(fd);
  for (int i = 0; i < kRuns; ++i) {
    BeginCtx c = ctxs[i % ctxs.size()];
    (void)TestRun(fd, &c, sizeof(c));
  }
  auto after = GetProgInfo(fd);
  uint64_t cnt = after->run_cnt - before->run_cnt;
  return cnt == 0 ? -1 : double(after->run_time_ns - before->run_time_ns) / double(cnt);
}

int Main() {
  std::string why;
  if (!SyscallProgramsAvailable(&why)) {
    std::fprintf(stderr, "BPF unavailable: %s\n", why.c_str());
    return 1;
  }
  auto stats = EnableStats();
  if (!stats) {
    std::fprintf(stderr, "BPF_ENABLE_STATS: %d\n", stats.error());
    return 1;
  }
  // Baseline: r0 = 0; exit.
  Assembler e;
  e.MovImm(R0, 0);
  e.Exit();
  auto empty = LoadProgram(*e.Finish(), LoadOptions{}, nullptr);
  std::vector<BeginCtx> dummy(1);
  const double base = KernelNsPerRun(empty->get(), dummy);
  std::printf("empty program: %.1f ns/run (subtracted below)\n", base);
  std::printf("%-8s %-8s %-11s %7s %9s %9s %10s %12s\n", "extents", "interv", "strategy", "insns",
              "verified", "load_us", "kernel_ns", "userspace_ns");
  struct Case {
    size_t n;
    bool stride;
  };
  for (Case c : {Case{1, false}, Case{8, false}, Case{64, false}, Case{512, false},
                 Case{4096, false}, Case{32768, false}, Case{100000, false}, Case{100000, true}}) {
    std::vector<iomap::Mapping> ms;
    if (c.stride) {
      for (uint64_t k = 0; k < c.n; ++k) {
        ms.push_back({k * 12288, 4096, (1ull << 30) + k * 8192, iomap::MappingType::kMapped, 0});
      }
    } else {
      ms = testing::RandomMappings(c.n, c.n);
    }
    FileMap map = *BuildFileMap(5, 4096, 1, ms);
    std::mt19937_64 rng(1);
    uint64_t span = map.intervals[map.intervals.size() - 1].offset + 65536;
    std::vector<BeginCtx> ctxs(4096);
    for (auto& x : ctxs) {
      x.nodeid = 5;
      x.expect_seq = 1;
      x.pos = rng() % span;
    }
    // Userspace: std::upper_bound over the same intervals.
    auto t0 = std::chrono::steady_clock::now();
    uint64_t sink = 0;
    for (int r = 0; r < 50; ++r) {
      for (const auto& x : ctxs) sink += FindInterval(map, x.pos);
    }
    double user_ns =
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
        (50.0 * ctxs.size());
    std::vector<Strategy> strategies;
    if (c.stride) strategies.push_back(Strategy::kArithmetic);
    if (!c.stride && map.intervals.size() <= 1024) strategies.push_back(Strategy::kTree);
    strategies.push_back(Strategy::kMapSearch);
    for (Strategy s : strategies) {
      double best_load = 1e18;
      std::optional<FileProgram> keep;
      for (int i = 0; i < 5; ++i) {
        std::string reason;
        auto p = FileProgram::BuildWith(map, 1, s, &reason);
        if (!p) {
          std::printf("%zu %s: %s\n", c.n, StrategyName(s), reason.c_str());
          break;
        }
        best_load = std::min(best_load, p->load_ns() / 1e3);
        keep = std::move(*p);
      }
      if (!keep) continue;
      double k = KernelNsPerRun(keep->fd(), ctxs) - base;
      auto info = GetProgInfo(keep->fd());
      std::printf("%-8zu %-8zu %-11s %7zu %9u %9.0f %10.1f %12.1f%s\n", c.n, map.intervals.size(),
                  StrategyName(s), keep->insns().size(), info->verified_insns, best_load, k,
                  user_ns, sink == 42 ? " " : "");
    }
  }
  return 0;
}

}  // namespace
}  // namespace iomapfs::bpf

int main() { return iomapfs::bpf::Main(); }
