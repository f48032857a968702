// ModelCache: the kernel model's per-inode iomap mapping cache, written from
// spec/fuse-iomap-protocol.md §12 (not from the server's code): two forks of non-overlapping
// fuse_iomap_io records, UPSERT = remove the range then insert (merging with neighbours that
// match in dev, type and flags and are contiguous in file and device), INVAL = remove the range
// (splitting partial overlaps), a per-fork byte limit past which the next UPSERT discards the
// whole fork, a write fork that starts out nonexistent, and a sequence number bumped on every
// change.
//
// Thread-safety: none (the model is single-threaded). Value type.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>

#include "fsserver/wire/fuse_abi.h"

namespace iomapfs::kmodel {

class ModelFork {
 public:
  // REQUIRES: io is a valid, non-NOCACHE, non-RETRY_CACHE mapping (the caller validated it).
  void Upsert(const abi::fuse_iomap_io& io, uint32_t limit_bytes);
  // length: bytes, or FUSE_IOMAP_INVAL_TO_EOF.
  void Remove(uint64_t offset, uint64_t length);
  // The record covering pos, if any.
  std::optional<abi::fuse_iomap_io> Find(uint64_t pos) const;
  // The first record starting at or after pos, if any.
  std::optional<abi::fuse_iomap_io> Next(uint64_t pos) const;
  size_t records() const { return map_.size(); }
  uint64_t bytes() const { return map_.size() * sizeof(abi::fuse_iomap_io); }
  uint64_t discards() const { return discards_; }

 private:
  static bool Mergeable(const abi::fuse_iomap_io& a, const abi::fuse_iomap_io& b);
  std::map<uint64_t, abi::fuse_iomap_io> map_;  // keyed by offset
  uint64_t discards_ = 0;                       // whole-fork discards at the limit
};

struct ModelInodeCache {
  ModelFork read;
  ModelFork write;
  bool write_fork_exists = false;
  uint64_t seq = 0;
};

}  // namespace iomapfs::kmodel
