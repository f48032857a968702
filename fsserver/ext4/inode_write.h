// Inode writing: timestamps and device numbers in ext4's encodings, link counts with ext4's
// dir_nlink rules, new-inode initialization (fs/ext4/ialloc.c __ext4_new_inode), and freeing an
// inode with its blocks and EA block (ext4_evict_inode/ext4_free_inode).
//
// Thread-safety: every function taking a Guard REQUIRES the metadata lock; the rest are pure.
// Ownership: none; inodes are values.
#pragma once

#include <ext2fs/ext2fs.h>
#include <sys/types.h>

#include <cstdint>

#include "base/result.h"
#include "base/strong_id.h"
#include "ext2/ext2_fs.h"
#include "fsserver/ext4/filesystem.h"
#include "fsserver/ext4/inode.h"

namespace iomapfs::ext4 {

inline constexpr uint32_t kLinkMax = 65000;  // EXT4_LINK_MAX

// The current time as ext4's current_time() gives it (nanoseconds).
Timestamp Now();

enum class TimeField { kAtime, kMtime, kCtime, kCrtime };
// Stores `ts` in `field` of `inode`: the 32-bit seconds and, where the inode has room for the
// *_extra field, the epoch bits and nanoseconds (ext4_encode_extra_time).
void SetTime(InodeBuf& inode, TimeField field, Timestamp ts);

// Stores a device number in i_block as ext4_do_update_inode does: the old 16-bit encoding in
// i_block[0] when major and minor fit in 8 bits, else the new encoding in i_block[1].
void EncodeDevice(InodeBuf& inode, dev_t rdev);

// EXT2_FT_* for a mode's file type.
uint8_t FileTypeOfMode(uint32_t mode);

// True if `inode` is an htree directory (is_dx(): dir_index feature and EXT4_INDEX_FL).
bool IsDx(ext2_filsys fs, const InodeBuf& inode);

// ext4_inc_count / ext4_dec_count: a dx directory past EXT4_LINK_MAX links (or already at 1)
// counts 1 ("many"); a directory never drops below 2 here (rmdir clears it explicitly).
void IncLinks(ext2_filsys fs, InodeBuf& inode);
void DecLinks(InodeBuf& inode);

// EXT4_DIR_LINK_MAX(dir): true if one more subdirectory would overflow the link count.
bool DirLinksFull(ext2_filsys fs, const InodeBuf& dir);

// Writes `inode` (the large-inode part we hold; the rest of the on-disk inode, in-inode xattrs
// included, is preserved) with a fresh checksum.
// REQUIRES: g holds the metadata lock. Errors: EROFS, EIO.
Result<void> WriteInode(const ext2::Guard& g, Ino ino, InodeBuf& inode);

// What a new inode looks like before it is linked anywhere.
struct NewInodeSpec {
  uint32_t mode = 0;  // S_IFMT | permission bits, final (umask/ACL/setgid applied)
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t links = 1;
  uint32_t parent_flags = 0;  // the parent's i_flags (inherited as ext4_mask_flags says)
};

// Allocates an inode near `parent` (ext2fs_new_inode), initializes it as __ext4_new_inode does
// (times = now with nanoseconds, crtime, i_extra_isize, a random generation, inherited flags,
// EXT4_EXTENTS_FL with an empty extent root for regular files, directories and symlinks on
// extent filesystems), writes it in full and updates the allocation counters.
// REQUIRES: g holds the metadata lock; the filesystem is read-write.
// Returns: the inode number and what was written. Errors: ENOSPC (no free inode), EIO, EUCLEAN.
struct NewInode {
  Ino ino;
  InodeBuf inode;
};
Result<NewInode> AllocateInode(const ext2::Guard& g, Ino parent, const NewInodeSpec& spec);

// Frees inode `ino`: its blocks (unless a fast symlink, device or inline inode), its EA block
// (reference count), sets i_dtime = now and links 0, and releases it in the bitmaps. The inode
// must not be on the orphan list any more (see the caller).
// REQUIRES: g holds the metadata lock. Errors: EIO, EUCLEAN.
Result<void> FreeInode(const ext2::Guard& g, Ino ino);

// Loads the block and inode bitmaps if they are not in memory yet (allocation needs them).
// REQUIRES: g holds the metadata lock. Errors: EIO, EUCLEAN.
Result<void> EnsureBitmaps(const ext2::Guard& g);

}  // namespace iomapfs::ext4
