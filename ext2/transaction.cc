#include "ext2/transaction.h"

#include <algorithm>

#include "base/log.h"

namespace iomapfs::ext2 {

Transaction::Transaction(const Guard& g) : g_(g) {}

Transaction::~Transaction() {
  if (!committed_ && !empty()) {
    LOG_DEBUG("transaction of %zu inode(s) ended without commit; its changes stay in memory",
              inodes_.size());
  }
}

Result<void> Transaction::WriteInode(ext2_ino_t ino, InodeBuf& inode) {
  if (g_.owner().read_only() || g_.owner().frozen()) return Unexpected(EROFS);
  errcode_t err =
      ext2fs_write_inode_full(g_.fs(), ino, inode.base(), static_cast<int>(inode.disk_size()));
  if (err != 0) return Unexpected(ErrnoFromErrcode(err));
  NoteInode(ino);
  return {};
}

void Transaction::NoteInode(ext2_ino_t ino) {
  if (std::find(inodes_.begin(), inodes_.end(), ino) == inodes_.end()) inodes_.push_back(ino);
}

void Transaction::NoteAllocation() { allocation_ = true; }

Result<void> Transaction::Commit(Durability durability) {
  if (committed_) return {};
  Ext2Fs& owner = g_.owner();
  if (owner.read_only() || owner.frozen()) {
    if (!empty()) return Unexpected(EROFS);
    committed_ = true;
    return {};
  }
  committed_ = true;
  if (durability == Durability::kDeferred) {
    // Allocation state is already marked dirty by libext2fs (ext2fs_block_alloc_stats*);
    // mark the superblock too so that the next flush writes the counters and s_wtime.
    if (!empty()) ext2fs_mark_super_dirty(g_.fs());
    return {};
  }
  if (!empty()) ext2fs_mark_super_dirty(g_.fs());
  IOMAPFS_TRY(owner.FlushLocked());
  return owner.data().Flush();
}

}  // namespace iomapfs::ext2
