#include "iomap/extent_cache.h"

#include <cstring>
#include <utility>

namespace iomapfs::iomap {

ExtentCache::ExtentCache(size_t max_inodes, size_t max_runs)
    : max_inodes_(max_inodes), max_runs_(max_runs) {}

ext2_inode ExtentCache::Fingerprint(const ext2_inode& inode) {
  ext2_inode fp;
  std::memcpy(&fp, &inode, sizeof(fp));
  fp.i_atime = 0;
  fp.osd2.linux2.l_i_checksum_lo = 0;
  return fp;
}

const Window* ExtentCache::Find(uint64_t ino, const ext2_inode& fp, uint64_t lblk) {
  auto it = index_.find(ino);
  if (it == index_.end()) return nullptr;
  Entry& e = *it->second;
  if (std::memcmp(&e.fp, &fp, sizeof(fp)) != 0) {
    Erase(ino);
    return nullptr;
  }
  if (!e.window.Contains(lblk)) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return &e.window;
}

const Window* ExtentCache::Insert(uint64_t ino, const ext2_inode& fp, Window w) {
  Erase(ino);
  total_runs_ += w.runs.size();
  lru_.push_front(Entry{ino, fp, std::move(w)});
  index_[ino] = lru_.begin();
  EvictToFit();
  auto it = index_.find(ino);
  return it == index_.end() ? nullptr : &it->second->window;
}

void ExtentCache::Erase(uint64_t ino) {
  auto it = index_.find(ino);
  if (it == index_.end()) return;
  total_runs_ -= it->second->window.runs.size();
  lru_.erase(it->second);
  index_.erase(it);
}

void ExtentCache::Clear() {
  lru_.clear();
  index_.clear();
  total_runs_ = 0;
}

void ExtentCache::EvictToFit() {
  while (!lru_.empty() && (index_.size() > max_inodes_ || total_runs_ > max_runs_)) {
    Erase(lru_.back().ino);
  }
}

}  // namespace iomapfs::iomap
