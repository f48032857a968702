// Transaction: one group of metadata changes made under one Guard, ended by Commit().
//
// The API is "begin, record, commit" so that journaling can slot in without changing callers:
//   - today (no journal): every change is made in place through libext2fs. Inode and tree-block
//     writes reach the image's page cache as they happen (the I/O channel is write-through on
//     read-write opens); allocation state (block/inode bitmaps, group descriptors, superblock
//     counters) lives in libext2fs's memory until a durable commit, Ext2Fs::Sync() or Close()
//     writes it. A crash may therefore leave the image needing e2fsck, as ext2 without a
//     journal does.
//   - later (jbd2): the same records name what one journal transaction must contain; Commit()
//     writes the journal transaction and checkpointing happens behind it.
// A Transaction that is destroyed without Commit() cannot roll anything back (libext2fs has no
// undo): its changes stay in memory and are written by the next commit, Sync() or Close(). Code
// that fails half-way must leave libext2fs's state consistent by itself (the engine does, see
// iomap/engine.h), then commit or drop the Transaction.
//
// Thread-safety: a Transaction lives inside one Guard's critical section, on one thread.
// Ownership: borrows the Guard, which must outlive it.
#pragma once

#include <ext2fs/ext2fs.h>

#include <vector>

#include "base/result.h"
#include "ext2/ext2_fs.h"
#include "ext2/inode_buf.h"

namespace iomapfs::ext2 {

enum class Durability {
  // The changes are visible to every later operation and will be written by the next durable
  // commit, Sync() or Close().
  kDeferred,
  // Also written to the image and made durable (fdatasync) before Commit() returns. This syncs
  // the device while the metadata lock is held: hot paths use kDeferred and Ext2Fs::Sync().
  kDurable,
};

class Transaction {
 public:
  // Begins a transaction. REQUIRES: g holds the metadata lock.
  explicit Transaction(const Guard& g);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  const Guard& guard() const { return g_; }
  ext2_filsys fs() const { return g_.fs(); }

  // Writes `inode` as inode `ino` and records it.
  // Errors: EROFS read-only or frozen filesystem; EIO; ENOMEM.
  Result<void> WriteInode(ext2_ino_t ino, InodeBuf& inode);
  // Records that libext2fs wrote inode `ino` itself (extent handles, ext2fs_punch, inline data).
  void NoteInode(ext2_ino_t ino);
  // Records a change of allocation state: blocks or inodes allocated or freed (bitmaps, group
  // descriptors and superblock counters are dirty).
  void NoteAllocation();

  bool empty() const { return inodes_.empty() && !allocation_; }
  bool committed() const { return committed_; }
  const std::vector<ext2_ino_t>& inodes() const { return inodes_; }

  // Ends the transaction; see Durability. Committing an empty transaction is a no-op (kDurable
  // still syncs the image). A second Commit() is a no-op.
  // Errors: EROFS read-only or frozen filesystem; EIO writing metadata or syncing the image.
  Result<void> Commit(Durability durability = Durability::kDeferred);

 private:
  const Guard& g_;
  std::vector<ext2_ino_t> inodes_;
  bool allocation_ = false;
  bool committed_ = false;
};

}  // namespace iomapfs::ext2
