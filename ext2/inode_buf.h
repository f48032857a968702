// InodeBuf: one on-disk inode in a buffer of the filesystem's full inode size, so that the
// extra fields of large inodes (i_extra_isize, nanosecond times, checksum high half, in-inode
// xattrs) survive a read-modify-write, and so that libext2fs calls that write the inode in full
// through a pointer they were given (the extent handle does) never read past our buffer.
//
// Thread-safety: a value type. Read() REQUIRES the metadata lock (a Guard); writes go through a
// Transaction (ext2/transaction.h).
#pragma once

#include <ext2fs/ext2fs.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/result.h"
#include "ext2/ext2_fs.h"

namespace iomapfs::ext2 {

class InodeBuf {
 public:
  // Reads inode `ino`.
  // REQUIRES: g holds the metadata lock.
  // Errors: ENOENT ino is 0 or past s_inodes_count; EUCLEAN bad checksum; EIO.
  static Result<InodeBuf> Read(const Guard& g, ext2_ino_t ino);

  ext2_inode* base() { return reinterpret_cast<ext2_inode*>(storage_.data()); }
  const ext2_inode* base() const { return reinterpret_cast<const ext2_inode*>(storage_.data()); }
  // The on-disk inode size (s_inode_size; 128 on old filesystems).
  size_t disk_size() const { return disk_size_; }

  uint64_t size() const { return EXT2_I_SIZE(base()); }
  // Sets i_size (and the large_file feature when a regular file first passes 2 GiB).
  // REQUIRES: g holds the metadata lock. Errors: EINVAL.
  Result<void> SetSize(const Guard& g, uint64_t size);
  uint32_t flags() const { return base()->i_flags; }
  bool has_extents() const { return (flags() & EXT4_EXTENTS_FL) != 0; }
  bool has_inline_data() const { return (flags() & EXT4_INLINE_DATA_FL) != 0; }

  // True if both hold the same on-disk bytes.
  bool SameBytes(const InodeBuf& o) const;

 private:
  InodeBuf() = default;
  // uint64_t elements: aligned for every field of ext2_inode_large.
  std::vector<uint64_t> storage_;
  size_t disk_size_ = 0;
};

}  // namespace iomapfs::ext2
