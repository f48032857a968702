#include "bpf/file_program.h"

#include <atomic>
#include <chrono>
#include <cstring>

#include "base/log.h"

namespace iomapfs::bpf {
namespace {

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace

Result<FileProgram> FileProgram::Build(const FileMap& map, uint64_t seq,
                                       const CodegenOptions& options, std::string* reason,
                                       const LoadOptions& load) {
  std::string why;
  Strategy s = Choose(map, options, &why);
  if (reason != nullptr) *reason = why;
  if (s == Strategy::kNone) return Unexpected(ENOTSUP);
  auto p = BuildWith(map, seq, s, reason, load);
  if (!p) {
    // Not fatal: the file stays on the server path.
    LOG_WARNING("bpf: node %llu stays on the server path: %s",
                static_cast<unsigned long long>(map.nodeid), reason ? reason->c_str() : "");
  }
  return p;
}

Result<FileProgram> FileProgram::BuildWith(const FileMap& map, uint64_t seq, Strategy strategy,
                                           std::string* reason, const LoadOptions& load) {
  if (strategy == Strategy::kNone) return Unexpected(ENOTSUP);
  FileProgram p;
  p.strategy_ = strategy;
  p.nodeid_ = map.nodeid;
  p.seq_ = seq;
  if (strategy == Strategy::kMapSearch) {
    uint64_t t0 = NowNs();
    if (!MapLayout::Encodable(map)) return Unexpected(E2BIG);
    p.layout_ = MapLayout::ForIntervals(map.intervals.size());
    if (p.layout_.value_bytes() > UINT32_MAX) return Unexpected(E2BIG);
    IOMAPFS_ASSIGN_OR_RETURN(
        p.map_, CreateMap(BPF_MAP_TYPE_ARRAY, 4, static_cast<uint32_t>(p.layout_.value_bytes()), 1,
                          BPF_F_MMAPABLE, "iomapfs_ext"));
    IOMAPFS_ASSIGN_OR_RETURN(p.value_, MappedValue::Map(p.map_.get(), p.layout_.value_bytes()));
    WriteInitialImage(map, p.layout_, p.value_.data(), seq);
    p.map_ns_ = NowNs() - t0;
  }
  IOMAPFS_ASSIGN_OR_RETURN(Generated gen, Generate(map, seq, strategy, p.map_.get()));
  p.insns_ = std::move(gen.insns);
  std::string log;
  uint64_t t0 = NowNs();
  auto fd = LoadProgram(p.insns_, load, &log);
  p.load_ns_ = NowNs() - t0;
  if (!fd) {
    if (reason != nullptr) {
      *reason = std::string(StrategyName(strategy)) + " program of " +
                std::to_string(p.insns_.size()) +
                " insns failed to load: " + std::strerror(fd.error()) +
                (log.empty() ? "" : "; verifier: " + log);
    }
    return Unexpected(fd.error());
  }
  p.prog_ = std::move(*fd);
  return p;
}

Result<void> FileProgram::UpdateInPlace(const FileMap& map) {
  if (strategy_ != Strategy::kMapSearch || map.nodeid != nodeid_) return Unexpected(EINVAL);
  if (map.intervals.size() > layout_.capacity || !MapLayout::Encodable(map) ||
      !ImageMatches(value_.data(), map)) {
    return Unexpected(ENOSPC);
  }
  PublishImage(map, layout_, value_.data());
  return {};
}

uint64_t FileProgram::map_seq() const {
  if (value_.data() == nullptr) return 0;
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(value_.data()))
      .load(std::memory_order_acquire);
}

Result<Answer> FileProgram::Run(const BeginCtx& ctx) const {
  BeginCtx c = ctx;
  IOMAPFS_ASSIGN_OR_RETURN(uint32_t ret, TestRun(prog_.get(), &c, sizeof(c)));
  Answer a;
  a.ret = ret;
  if (ret == kFibHandled) a.out = c.out;
  return a;
}

}  // namespace iomapfs::bpf
