// Ext2Fs: the one owner of a libext2fs filesystem handle, and of the metadata lock around it.
//
// libext2fs is not thread-safe. Every use of the raw `ext2_filsys` goes through a Guard, which
// holds the metadata lock for its lifetime. Rules (STYLE.md):
//   - no device data I/O, no kernel reply or notification while a Guard is held;
//   - errcode_t values never leave this module: convert with ErrnoFromErrcode();
//   - file data moves through data() (a BlockDevice), outside the lock.
// Lock order: the metadata lock is taken after any per-connection or per-inode lock of the
// layers above and before nothing: no other lock is acquired while it is held.
//
// Every open takes an advisory lock on the image (flock on the data fd, LOCK_NB): shared for
// read-only opens, exclusive for read-write ones. So read-only opens share an image, but a
// read-write open and any other open of the same image (by this or another process, through
// another fd) exclude each other: the later one fails with EBUSY. A reader of an image that
// changes under it would see torn metadata.
// Read-write opens (OpenOptions::read_write):
//   - refuse features whose metadata this server does not maintain when writing (quota,
//     project, casefold, encrypt, verity, bigalloc, mmp, orphan_present, readonly,
//     shared_blocks; needs_recovery for every open without norecovery): EOPNOTSUPP naming them;
//   - mark the superblock not clean (s_state without EXT2_VALID_FS, as kernel ext4 does when it
//     mounts without a journal), bump s_mnt_count and set s_mtime, and write it at once;
//     Close() restores the state found at open (clean stays clean) and writes it;
//   - make libext2fs's I/O channel write-through, so metadata written under the lock reaches
//     the image's page cache immediately and Sync() can fdatasync outside the lock.
// Metadata changes are grouped in ext2::Transaction (ext2/transaction.h).
//
// Thread-safety: Lock() may be called from any thread; immutable geometry accessors
// (block_size(), ...) need no lock. Ownership: Ext2Fs owns the ext2_filsys and the data fd.
#pragma once

#include <ext2fs/ext2fs.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "base/result.h"
#include "ext2/block_device.h"

namespace iomapfs::ext2 {

// Converts a libext2fs error code to a positive errno. Codes below 256 are errno values already
// (libext2fs passes system errors through). Corruption codes become EUCLEAN (EFSCORRUPTED).
int ErrnoFromErrcode(errcode_t code);
// True if `code` reports on-disk corruption (and so should be recorded in the superblock).
bool IsCorruption(errcode_t code);

struct OpenOptions {
  bool read_write = false;
  // Byte offset of the filesystem inside the image (a partitioned disk image).
  uint64_t offset = 0;
  // Serve a filesystem whose journal needs recovery without replaying it (read-only only).
  bool norecovery = false;
};

class Ext2Fs;

// Holds the metadata lock; the only way to reach the raw handle.
class Guard {
 public:
  Guard(Guard&&) = default;
  ext2_filsys fs() const { return fs_; }
  ext2_filsys operator->() const { return fs_; }
  // The filesystem whose lock this is.
  Ext2Fs& owner() const { return *owner_; }

 private:
  friend class Ext2Fs;
  Guard(std::mutex& mu, ext2_filsys fs, Ext2Fs* owner) : lock_(mu), fs_(fs), owner_(owner) {}
  std::unique_lock<std::mutex> lock_;
  ext2_filsys fs_;
  Ext2Fs* owner_;
};

class Ext2Fs {
 public:
  // Opens the filesystem in `path` (an image file or block device).
  // Returns: the filesystem, or an errno with a one-line explanation in *why naming the problem
  // (not ext4, truncated image, unsupported feature by name, journal needs recovery, ...).
  // Errors: ENOENT/EACCES/... from open(2); EINVAL not an ext2/3/4 filesystem; EUCLEAN corrupt
  // superblock or group descriptors; EOPNOTSUPP unsupported feature (for a read-write open also
  // a feature this server cannot write, see above); EROFS journal needs recovery; EBUSY
  // (read-write) the image is in use by another read-write open ("image is in use by another
  // process").
  static Result<std::unique_ptr<Ext2Fs>> Open(const std::string& path, const OpenOptions& options,
                                              std::string* why);

  Ext2Fs(const Ext2Fs&) = delete;
  Ext2Fs& operator=(const Ext2Fs&) = delete;
  ~Ext2Fs();

  // Blocks until the metadata lock is free.
  Guard Lock() { return Guard(mu_, fs_, this); }

  // Read-write: writes all dirty metadata (superblock, group descriptors, bitmaps) under the
  // lock, then makes the image durable (fdatasync) outside it. For fsync(2) and syncfs(2).
  // Read-only: a no-op.
  // REQUIRES: the caller does not hold the metadata lock.
  // Errors: EIO.
  Result<void> Sync();

  // Freezing (fsfreeze; iomap spec §8, as fuse4fs does it). FreezeLocked() marks the superblock
  // clean (EXT2_VALID_FS) if `mark_clean`, it was clean at open and no error is recorded, writes
  // all dirty metadata, and from then on every Transaction refuses changes with EROFS until
  // ThawLocked(), which marks the superblock not clean again and writes it. The caller makes the
  // image durable with Sync() after releasing the lock (nothing changes in between: frozen).
  // Read-only opens: only the frozen state changes.
  // REQUIRES: g holds this filesystem's metadata lock. Errors: EIO (writing the metadata; the
  // filesystem is then not frozen / stays frozen).
  Result<void> FreezeLocked(const Guard& g, bool mark_clean);
  Result<void> ThawLocked(const Guard& g);
  // True between FreezeLocked() and ThawLocked(); any thread may ask.
  bool frozen() const { return frozen_.load(std::memory_order_acquire); }

  // Read-write: restores the superblock state found at open (marks it clean if it was), writes
  // all metadata, syncs, releases the image lock. Then closes the handle. A second Close() is a
  // no-op. Returns the first error.
  Result<void> Close();

  // Immutable after Open(); no lock needed.
  uint32_t block_size() const { return block_size_; }
  bool read_only() const { return !options_.read_write; }
  const OpenOptions& options() const { return options_; }
  BlockDevice& data() { return *data_; }

 private:
  friend class Transaction;
  Ext2Fs(ext2_filsys fs, std::unique_ptr<BlockDevice> data, const OpenOptions& options);

  // Writes libext2fs's dirty metadata to the image (no sync). REQUIRES: mu_ held.
  Result<void> FlushLocked();

  std::mutex mu_;  // the metadata lock; see the header comment for the order
  ext2_filsys fs_;
  std::unique_ptr<BlockDevice> data_;
  OpenOptions options_;
  uint32_t block_size_;
  int lock_fd_ = -1;                 // the data fd holding the image lock (owned by data_), or -1
  uint16_t state_at_open_ = 0;       // s_state found at a read-write open
  std::atomic<bool> frozen_{false};  // written under mu_
};

}  // namespace iomapfs::ext2
