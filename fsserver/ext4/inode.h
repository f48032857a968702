// Inode reading and decoding: one on-disk inode in memory, and the Attr kernel ext4 derives from
// it (fs/ext4/inode.c __ext4_iget, ext4_getattr, ext4_file_getattr).
//
// Thread-safety: ReadInode() REQUIRES the metadata lock (a Guard). InodeBuf and the decoding
// functions are values and pure functions.
#pragma once

#include <ext2fs/ext2fs.h>

#include <cstddef>
#include <cstdint>

#include "base/result.h"
#include "base/strong_id.h"
#include "ext2/ext2_fs.h"
#include "fsserver/ext4/filesystem.h"

namespace iomapfs::ext4 {

// EXT4_*_FL inode flags we interpret (ext4 disk format, "Inode flags").
inline constexpr uint32_t kFlagImmutable = 0x00000010;
inline constexpr uint32_t kFlagAppend = 0x00000020;
inline constexpr uint32_t kFlagNodump = 0x00000040;
inline constexpr uint32_t kFlagCompressed = 0x00000004;
inline constexpr uint32_t kFlagIndex = 0x00001000;
inline constexpr uint32_t kFlagHugeFile = 0x00040000;
inline constexpr uint32_t kFlagEncrypt = 0x00000800;
inline constexpr uint32_t kFlagVerity = 0x00100000;
inline constexpr uint32_t kFlagInlineData = 0x10000000;
inline constexpr uint32_t kFlagCasefold = 0x40000000;

// One inode as read from disk. Bytes past the on-disk inode size are zero.
struct InodeBuf {
  ext2_inode_large raw{};
  // On-disk inode size (s_inode_size).
  uint32_t inode_size = EXT2_GOOD_OLD_INODE_SIZE;
  // The i_extra_isize kernel ext4 works with: 0 for 128-byte inodes; for larger inodes the
  // on-disk value, or 32 (sizeof(struct ext4_inode) - 128) when the disk says 0, as __ext4_iget
  // does.
  uint32_t extra_isize = 0;

  ext2_inode* base() { return reinterpret_cast<ext2_inode*>(&raw); }
  const ext2_inode* base() const { return reinterpret_cast<const ext2_inode*>(&raw); }
  uint32_t mode() const { return raw.i_mode; }
  uint32_t flags() const { return raw.i_flags; }
  bool is_dir() const { return LINUX_S_ISDIR(raw.i_mode); }
  bool is_reg() const { return LINUX_S_ISREG(raw.i_mode); }
  bool is_symlink() const { return LINUX_S_ISLNK(raw.i_mode); }
  // True if the field ending at byte `end` of the large inode lies inside the inode's extra
  // space (EXT4_FITS_IN_INODE).
  bool Fits(size_t end) const { return end <= EXT2_GOOD_OLD_INODE_SIZE + extra_isize; }
};

// Reads inode `ino`. `allow_unlinked`: also return an inode with no links and a dtime (an
// orphan this server keeps alive: on ext4's orphan list i_dtime holds the next orphan).
// REQUIRES: g holds the metadata lock.
// Errors: ENOENT (number out of range, or an unused inode: no mode, or unlinked with a dtime),
//         EUCLEAN (bad checksum, bad i_extra_isize), EIO.
Result<InodeBuf> ReadInode(const ext2::Guard& g, Ino ino, bool allow_unlinked = false);

// i_size as ext4_isize() reads it: the high 32 bits count for regular files, and for every inode
// when the filesystem has the largedir feature.
uint64_t InodeSize(ext2_filsys fs, const InodeBuf& inode);

// The attributes kernel ext4 reports for `inode` (stat and statx). `block_size` is the
// filesystem block size.
Attr AttrFromInode(ext2_filsys fs, Ino ino, const InodeBuf& inode);

// Decodes an ext4 timestamp: `base` is the 32-bit seconds field, `extra` its *_extra field (two
// epoch bits, 30 nanosecond bits), used only if `has_extra`.
Timestamp DecodeTime(uint32_t base, uint32_t extra, bool has_extra);

// Decodes the device number of a character/block device inode from i_block[0] (old encoding)
// or i_block[1] (new encoding), as __ext4_iget does.
dev_t DecodeDevice(const InodeBuf& inode);

}  // namespace iomapfs::ext4
