// Filesystem::Impl: the state shared by the files that implement Filesystem (filesystem.cc for
// reads, namespace_ops.cc, setattr.cc, xattr_write.cc, file_write.cc). Internal to this module.
//
// Thread-safety and lock order (outermost first):
//   1. a per-inode lock (InodeLocks) serializes writes, truncates and fallocates of one inode;
//   2. the metadata lock (ext2::Guard) guards libext2fs, the engine, DirIndex and `orphans`;
//   3. refs_mu and handles_mu are leaves: nothing else is taken while one is held.
// Ownership: Impl owns the Ext2Fs, the Engine and the caches.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ext2/ext2_fs.h"
#include "fsserver/ext4/directory.h"
#include "fsserver/ext4/filesystem.h"
#include "fsserver/ext4/inode.h"
#include "iomap/engine.h"

namespace iomapfs::ext4 {

// A directory listing taken at OPENDIR; ReadDir cookies are positions in it.
struct DirSnapshot {
  Ino dir;
  std::vector<DirEntry> entries;
};

// A fixed table of mutexes keyed by inode number: writers of one inode serialize; unrelated
// inodes rarely share a slot. Thread-safety: For() may be called from any thread.
class InodeLocks {
 public:
  std::mutex& For(Ino ino) { return slots_[std::hash<uint64_t>()(ino.value()) % kSlots]; }

 private:
  static constexpr size_t kSlots = 257;
  std::mutex slots_[kSlots];
};

struct Filesystem::Impl {
  Impl(std::unique_ptr<ext2::Ext2Fs> f, const Options& o)
      : fs(std::move(f)), options(o), engine(std::make_unique<iomap::Engine>(*fs)) {}

  // Counts `n` kernel references on `ino`.
  void Ref(Ino ino, uint64_t n = 1) {
    std::lock_guard<std::mutex> lock(refs_mu);
    refs[ino] += n;
  }
  bool Referenced(Ino ino) {
    std::lock_guard<std::mutex> lock(refs_mu);
    auto it = refs.find(ino);
    return it != refs.end() && it->second > 0;
  }

  // Reads an inode the kernel may still use: orphans this server keeps alive included.
  // REQUIRES: g holds the metadata lock.
  Result<InodeBuf> ReadLive(const ext2::Guard& g, Ino ino) {
    return ReadInode(g, ino, orphans.count(ino.value()) != 0);
  }

  Result<Attr> GetAttrLocked(const ext2::Guard& g, Ino ino) {
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadLive(g, ino));
    return AttrFromInode(g.fs(), ino, inode);
  }

  // Orphan list (ext4 disk format, "Orphan list": s_last_orphan, next in i_dtime).
  // REQUIRES: g holds the metadata lock; `inode` is ino's inode with i_links_count 0 (or a
  // directory being removed); it is written here.
  Result<void> OrphanAdd(const ext2::Guard& g, Ino ino, InodeBuf& inode);
  // Unlinks `ino` from the on-disk chain and the in-memory set; `inode` gets i_dtime 0 (the
  // caller writes it). REQUIRES: g holds the metadata lock.
  Result<void> OrphanDel(const ext2::Guard& g, Ino ino, InodeBuf& inode);
  // The last link of `ino` is gone: orphan it if the kernel still references it, else free it.
  // REQUIRES: g holds the metadata lock; `inode` has i_links_count 0 and is written here.
  Result<void> DropInode(const ext2::Guard& g, Ino ino, InodeBuf& inode);
  // Frees an orphan: off the list, then its blocks and the inode.
  // REQUIRES: g holds the metadata lock.
  Result<void> ReleaseOrphan(const ext2::Guard& g, Ino ino);

  // Records corruption found at run time in the superblock (EXT2_ERROR_FS, error count, first
  // and last error time/inode/function), as ext4's __ext4_error does.
  // REQUIRES: g holds the metadata lock.
  void RecordError(const ext2::Guard& g, Ino ino, const char* func);
  // Applies errors=continue|remount-ro|panic (or the superblock's s_errors) after corruption.
  // REQUIRES: g holds the metadata lock.
  void ApplyErrorBehavior(const ext2::Guard& g, Ino ino, const char* func);
  // Passes `r` through, recording EUCLEAN in the superblock.
  template <class T>
  Result<T> Check(const ext2::Guard& g, Result<T> r, Ino ino, const char* func) {
    if (!r && r.error() == kEfsCorrupted) RecordError(g, ino, func);
    return r;
  }

  std::unique_ptr<ext2::Ext2Fs> fs;
  const Options options;
  // Guarded by the metadata lock (the Guard of fs). Declared after fs: destroyed first.
  std::unique_ptr<iomap::Engine> engine;
  DirIndex dirs;  // guarded by the metadata lock
  // Set once corruption was found under errors=remount-ro: every later change is refused.
  std::atomic<bool> errors_made_read_only{false};

  // Mounted read-only: opened read-only, or made read-only by errors=remount-ro. What open(2)
  // for writing and access(W_OK) refuse.
  bool mounted_read_only() const {
    return fs->read_only() || errors_made_read_only.load(std::memory_order_acquire);
  }
  // The one test every modifying operation makes: mounted read-only, or frozen (FREEZE_FS,
  // Filesystem::Freeze; the transactions refuse changes under the lock too).
  bool read_only() const { return mounted_read_only() || fs->frozen(); }
  // Inodes with no links kept alive for the kernel (on the on-disk orphan list), and which of
  // them are O_TMPFILE inodes (linkable). Guarded by the metadata lock.
  std::unordered_set<uint64_t> orphans;
  std::unordered_set<uint64_t> tmpfiles;

  InodeLocks inode_locks;

  std::mutex refs_mu;
  std::unordered_map<Ino, uint64_t> refs;  // kernel lookup references, guarded by refs_mu
  std::mutex handles_mu;
  std::unordered_map<uint64_t, std::shared_ptr<const DirSnapshot>> dir_handles;  // handles_mu
  std::atomic<uint64_t> next_fh{1};
};

}  // namespace iomapfs::ext4
