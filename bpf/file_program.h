// FileProgram: one file's generated program, loaded into the kernel, plus (kMapSearch) its
// memory-mapped array map.
//
// Thread-safety: Run() may be called from any thread; UpdateInPlace() from one writer at a time
// (readers may run concurrently: the map is double-buffered, see MapLayout). Move-only; owns the
// program fd, the map fd and the mmap.
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "bpf/codegen.h"
#include "bpf/file_map.h"
#include "bpf/kernel.h"

namespace iomapfs::bpf {

class FileProgram {
 public:
  FileProgram() = default;
  FileProgram(FileProgram&&) = default;
  FileProgram& operator=(FileProgram&&) = default;

  // Chooses a strategy for `map`, generates the program (sequence number `seq`), creates and
  // fills its map if any, and loads it (verifier + JIT) as `load`.type.
  // Returns: the loaded program.
  // Errors: ENOTSUP the file gets no program (strategy kNone; *reason says why); the bpf(2) errno
  // of a map creation or a verifier/load failure (*reason has the verifier log tail).
  static Result<FileProgram> Build(const FileMap& map, uint64_t seq, const CodegenOptions& options,
                                   std::string* reason, const LoadOptions& load = LoadOptions{});
  // The same with a fixed strategy (tests and benchmarks).
  static Result<FileProgram> BuildWith(const FileMap& map, uint64_t seq, Strategy strategy,
                                       std::string* reason,
                                       const LoadOptions& load = LoadOptions{});

  // Rewrites the map in place with `map` (same node id) without reloading: the new extents go to
  // the inactive buffer, then the buffers flip.
  // Errors: EINVAL not a kMapSearch program or another node id; ENOSPC more intervals than the
  // map's capacity, another block size or device, or not MapLayout::Encodable (rebuild instead).
  Result<void> UpdateInPlace(const FileMap& map);

  // Runs the program once through BPF_PROG_TEST_RUN (kSyscall programs).
  // Returns: the program's answer. Errors: the bpf(2) errno.
  Result<Answer> Run(const BeginCtx& ctx) const;

  int fd() const { return prog_.get(); }
  Strategy strategy() const { return strategy_; }
  uint64_t nodeid() const { return nodeid_; }
  uint64_t seq() const { return seq_; }
  const std::vector<bpf_insn>& insns() const { return insns_; }
  // Kernel memory held: map value bytes (kMapSearch), else 0.
  uint64_t map_bytes() const { return layout_.capacity == 0 ? 0 : layout_.value_bytes(); }
  uint32_t capacity() const { return layout_.capacity; }
  uint64_t load_ns() const { return load_ns_; }
  uint64_t map_ns() const { return map_ns_; }
  // The map's current seqcount (kMapSearch): bumped by 2 per UpdateInPlace.
  uint64_t map_seq() const;

 private:
  UniqueFd prog_;
  UniqueFd map_;
  MappedValue value_;
  MapLayout layout_;
  Strategy strategy_ = Strategy::kNone;
  uint64_t nodeid_ = 0;
  uint64_t seq_ = 0;
  std::vector<bpf_insn> insns_;
  uint64_t load_ns_ = 0;  // wall time of the load (verify + JIT)
  uint64_t map_ns_ = 0;   // wall time of map create + mmap + fill
};

}  // namespace iomapfs::bpf
