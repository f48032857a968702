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
// Thread-safety: Lock() may be called from any thread; immutable geometry accessors
// (block_size(), ...) need no lock. Ownership: Ext2Fs owns the ext2_filsys and the data fd.
#pragma once

#include <ext2fs/ext2fs.h>

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

 private:
  friend class Ext2Fs;
  Guard(std::mutex& mu, ext2_filsys fs) : lock_(mu), fs_(fs) {}
  std::unique_lock<std::mutex> lock_;
  ext2_filsys fs_;
};

class Ext2Fs {
 public:
  // Opens the filesystem in `path` (an image file or block device).
  // Returns: the filesystem, or an errno with a one-line explanation in *why naming the problem
  // (not ext4, truncated image, unsupported feature by name, journal needs recovery, ...).
  // Errors: ENOENT/EACCES/... from open(2); EINVAL not an ext2/3/4 filesystem; EUCLEAN corrupt
  // superblock or group descriptors; EOPNOTSUPP unsupported feature; EROFS journal needs recovery
  // for a read-write open.
  static Result<std::unique_ptr<Ext2Fs>> Open(const std::string& path, const OpenOptions& options,
                                              std::string* why);

  Ext2Fs(const Ext2Fs&) = delete;
  Ext2Fs& operator=(const Ext2Fs&) = delete;
  ~Ext2Fs();

  // Blocks until the metadata lock is free.
  Guard Lock() { return Guard(mu_, fs_); }

  // Flushes (read-write) and closes the handle. Returns the first error.
  Result<void> Close();

  // Immutable after Open(); no lock needed.
  uint32_t block_size() const { return block_size_; }
  bool read_only() const { return !options_.read_write; }
  const OpenOptions& options() const { return options_; }
  BlockDevice& data() { return *data_; }

 private:
  Ext2Fs(ext2_filsys fs, std::unique_ptr<BlockDevice> data, const OpenOptions& options);

  std::mutex mu_;  // the metadata lock; see the header comment for the order
  ext2_filsys fs_;
  std::unique_ptr<BlockDevice> data_;
  OpenOptions options_;
  uint32_t block_size_;
};

}  // namespace iomapfs::ext2
