// ProgramCache: the standalone per-file programs of one connection (kArithmetic and kTree, which
// embed their extents as constants and do not go through the Dispatcher), bounded by a budget of
// programs and total instructions with least-recently-used eviction.
//
// Each program holds kernel memory in proportion to its length (xlated + JIT image, about
// 8 + 5..6 bytes per instruction, notes/bpf-codegen-findings.md), so the instruction total is the
// memory bound; the program count bounds fds. Eviction only sends a file back to the server path
// (or to the dispatcher, at the caller's choice): it is never an error.
//
// Thread-safety: not synchronized; the owner serializes calls. Move-only; owns the programs.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>

#include "base/result.h"
#include "bpf/file_program.h"

namespace iomapfs::bpf {

struct ProgramBudget {
  size_t max_programs = 1024;
  uint64_t max_insns = 256 * 1024;  // about 3.5 MiB of kernel memory
};

struct ProgramCacheStats {
  uint64_t inserts = 0;
  uint64_t evictions = 0;
  uint64_t refused = 0;  // a program larger than the whole instruction budget
};

class ProgramCache {
 public:
  explicit ProgramCache(const ProgramBudget& budget) : budget_(budget) {}
  ProgramCache(ProgramCache&&) = default;
  ProgramCache& operator=(ProgramCache&&) = default;

  // Takes `prog` (kArithmetic or kTree) as the program of its node id, replacing any previous
  // one, and evicts least-recently-used programs until the budget holds. The new program counts
  // as most recently used and is never the one evicted.
  // Errors: EINVAL a kMapSearch/kNone program (those belong to the Dispatcher); E2BIG the program
  // alone exceeds the budget (it is dropped; the file stays on the server path).
  Result<void> Insert(FileProgram prog);

  // Returns: the node id's program, marked most recently used; nullptr if none.
  const FileProgram* Lookup(uint64_t nodeid);
  // Forgets the node id (FORGET). Returns: whether it had a program.
  bool Remove(uint64_t nodeid);

  size_t programs() const { return entries_.size(); }
  uint64_t insns() const { return insns_; }
  bool Contains(uint64_t nodeid) const { return entries_.count(nodeid) != 0; }
  const ProgramCacheStats& stats() const { return stats_; }

 private:
  struct Entry {
    FileProgram prog;
    std::list<uint64_t>::iterator lru;
  };
  void EvictOne();

  ProgramBudget budget_;
  std::unordered_map<uint64_t, Entry> entries_;
  std::list<uint64_t> lru_;  // front: most recently used
  uint64_t insns_ = 0;
  ProgramCacheStats stats_;
};

}  // namespace iomapfs::bpf
