// ExtentCache: the Engine's per-inode cache of layout Windows, bounded LRU.
//
// Each entry holds one Window of one inode plus a fingerprint of the inode it was read from
// (the on-disk inode minus its access time). A lookup whose fingerprint differs misses, so an
// inode rewritten without Invalidate() cannot serve a stale root; changes below the root (leaf
// blocks) still REQUIRE the writer to call Engine::Invalidate.
//
// Thread-safety: none; the Engine calls it only under the metadata lock.
#pragma once

#include <ext2fs/ext2fs.h>

#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>

#include "iomap/layout.h"

namespace iomapfs::iomap {

class ExtentCache {
 public:
  // Bounds: at most `max_inodes` entries and `max_runs` runs over all entries.
  ExtentCache(size_t max_inodes, size_t max_runs);

  // The inode fields that define a layout: the raw inode with the access time and the
  // checksum (which covers the access time) cleared.
  static ext2_inode Fingerprint(const ext2_inode& inode);

  // Returns: the cached window of `ino` if it was read from an inode with fingerprint `fp`
  // and contains `lblk`, else nullptr. The pointer is valid until the next non-const call.
  const Window* Find(uint64_t ino, const ext2_inode& fp, uint64_t lblk);

  // Replaces the entry of `ino`, evicting least recently used entries to stay in bounds.
  // Returns: the stored window (valid until the next non-const call).
  const Window* Insert(uint64_t ino, const ext2_inode& fp, Window w);

  void Erase(uint64_t ino);
  void Clear();

  size_t size() const { return index_.size(); }
  size_t total_runs() const { return total_runs_; }

 private:
  struct Entry {
    uint64_t ino;
    ext2_inode fp;
    Window window;
  };
  void EvictToFit();

  size_t max_inodes_;
  size_t max_runs_;
  size_t total_runs_ = 0;
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<uint64_t, std::list<Entry>::iterator> index_;
};

}  // namespace iomapfs::iomap
