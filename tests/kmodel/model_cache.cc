#include "tests/kmodel/model_cache.h"

#include <iterator>

namespace iomapfs::kmodel {

namespace {
bool HasAddr(uint16_t type) {
  return type == abi::FUSE_IOMAP_TYPE_MAPPED || type == abi::FUSE_IOMAP_TYPE_UNWRITTEN;
}
}  // namespace

bool ModelFork::Mergeable(const abi::fuse_iomap_io& a, const abi::fuse_iomap_io& b) {
  if (a.dev != b.dev || a.type != b.type || a.flags != b.flags) return false;
  if (a.offset + a.length != b.offset) return false;
  // HOLE/DELALLOC/INLINE: "contiguous addresses" means both NULL (§12.1).
  if (!HasAddr(a.type)) return a.addr == b.addr;
  return a.addr + a.length == b.addr;
}

void ModelFork::Remove(uint64_t offset, uint64_t length) {
  const uint64_t end =
      length == abi::FUSE_IOMAP_INVAL_TO_EOF || offset + length < offset ? ~0ull : offset + length;
  auto it = map_.lower_bound(offset);
  if (it != map_.begin()) --it;
  while (it != map_.end() && it->second.offset < end) {
    abi::fuse_iomap_io e = it->second;
    const uint64_t e_end = e.offset + e.length;
    if (e_end <= offset) {
      ++it;
      continue;
    }
    it = map_.erase(it);
    if (e.offset < offset) {  // keep the left part
      abi::fuse_iomap_io left = e;
      left.length = offset - e.offset;
      map_.emplace(left.offset, left);
    }
    if (e_end > end) {  // keep the right part
      abi::fuse_iomap_io right = e;
      right.offset = end;
      right.length = e_end - end;
      if (HasAddr(e.type)) right.addr = e.addr + (end - e.offset);
      it = map_.emplace(right.offset, right).first;
      ++it;
    }
  }
}

void ModelFork::Upsert(const abi::fuse_iomap_io& io, uint32_t limit_bytes) {
  // §12.1: a fork already over the limit when an UPSERT arrives is discarded whole.
  if (bytes() > limit_bytes) {
    map_.clear();
    ++discards_;
  }
  Remove(io.offset, io.length);
  abi::fuse_iomap_io n = io;
  auto next = map_.lower_bound(n.offset);
  if (next != map_.begin()) {
    auto prev = std::prev(next);
    if (Mergeable(prev->second, n)) {
      abi::fuse_iomap_io merged = prev->second;
      merged.length += n.length;
      n = merged;
      map_.erase(prev);
    }
  }
  next = map_.lower_bound(n.offset + n.length);
  if (next != map_.end() && Mergeable(n, next->second)) {
    n.length += next->second.length;
    map_.erase(next);
  }
  map_.emplace(n.offset, n);
}

std::optional<abi::fuse_iomap_io> ModelFork::Find(uint64_t pos) const {
  auto it = map_.upper_bound(pos);
  if (it == map_.begin()) return std::nullopt;
  --it;
  if (pos - it->second.offset < it->second.length) return it->second;
  return std::nullopt;
}

std::optional<abi::fuse_iomap_io> ModelFork::Next(uint64_t pos) const {
  auto it = map_.lower_bound(pos);
  if (it == map_.end()) return std::nullopt;
  return it->second;
}

}  // namespace iomapfs::kmodel
