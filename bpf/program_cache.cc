#include "bpf/program_cache.h"

#include <utility>

namespace iomapfs::bpf {

Result<void> ProgramCache::Insert(FileProgram prog) {
  if (prog.strategy() != Strategy::kArithmetic && prog.strategy() != Strategy::kTree) {
    return Unexpected(EINVAL);
  }
  const uint64_t nodeid = prog.nodeid();
  Remove(nodeid);
  const uint64_t n = prog.insns().size();
  if (n > budget_.max_insns || budget_.max_programs == 0) {
    ++stats_.refused;
    return Unexpected(E2BIG);
  }
  while (!entries_.empty() &&
         (entries_.size() + 1 > budget_.max_programs || insns_ + n > budget_.max_insns)) {
    EvictOne();
  }
  lru_.push_front(nodeid);
  entries_.emplace(nodeid, Entry{std::move(prog), lru_.begin()});
  insns_ += n;
  ++stats_.inserts;
  return {};
}

const FileProgram* ProgramCache::Lookup(uint64_t nodeid) {
  auto it = entries_.find(nodeid);
  if (it == entries_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return &it->second.prog;
}

bool ProgramCache::Remove(uint64_t nodeid) {
  auto it = entries_.find(nodeid);
  if (it == entries_.end()) return false;
  insns_ -= it->second.prog.insns().size();
  lru_.erase(it->second.lru);
  entries_.erase(it);
  return true;
}

void ProgramCache::EvictOne() {
  // REQUIRES: !entries_.empty().
  Remove(lru_.back());
  ++stats_.evictions;
}

}  // namespace iomapfs::bpf
