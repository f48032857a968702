#include "fsserver/ext4/inode.h"

#include <linux/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cstddef>

namespace iomapfs::ext4 {
namespace {

// sizeof(struct ext4_inode) in the kernel: the large inode without i_projid's successors.
constexpr uint32_t kKernelLargeInodeSize = 160;

constexpr uint32_t kEpochBits = 2;
constexpr uint32_t kEpochMask = (1u << kEpochBits) - 1;

#define IOMAPFS_FIELD_END(field) \
  (offsetof(ext2_inode_large, field) + sizeof(static_cast<ext2_inode_large*>(nullptr)->field))

}  // namespace

Result<InodeBuf> ReadInode(const ext2::Guard& g, Ino ino, bool allow_unlinked) {
  ext2_filsys fs = g.fs();
  if (ino.value() == 0 || ino.value() > fs->super->s_inodes_count) return Unexpected(ENOENT);
  InodeBuf buf;
  buf.inode_size = EXT2_INODE_SIZE(fs->super);
  int bufsize = static_cast<int>(std::min<size_t>(sizeof(buf.raw), buf.inode_size));
  errcode_t err =
      ext2fs_read_inode2(fs, static_cast<ext2_ino_t>(ino.value()), buf.base(), bufsize, 0);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  // Same rule as the iomap engine: an unlinked-but-open (orphan) inode keeps its mode and has no
  // dtime until it is freed.
  if (buf.raw.i_mode == 0 ||
      (!allow_unlinked && buf.raw.i_links_count == 0 && buf.raw.i_dtime != 0)) {
    return Unexpected(ENOENT);
  }
  if (buf.inode_size > EXT2_GOOD_OLD_INODE_SIZE) {
    uint32_t extra = buf.raw.i_extra_isize;
    if (EXT2_GOOD_OLD_INODE_SIZE + extra > buf.inode_size || (extra & 3) != 0) {
      return Unexpected(kEfsCorrupted);
    }
    buf.extra_isize = extra != 0 ? extra : kKernelLargeInodeSize - EXT2_GOOD_OLD_INODE_SIZE;
  }
  return buf;
}

uint64_t InodeSize(ext2_filsys fs, const InodeBuf& inode) {
  uint64_t size = inode.raw.i_size;
  if (ext2fs_has_feature_largedir(fs->super) || inode.is_reg()) {
    size |= static_cast<uint64_t>(inode.raw.i_size_high) << 32;
  }
  return size;
}

Timestamp DecodeTime(uint32_t base, uint32_t extra, bool has_extra) {
  Timestamp ts;
  ts.sec = static_cast<int32_t>(base);
  if (has_extra) {
    if ((extra & kEpochMask) != 0) ts.sec += static_cast<int64_t>(extra & kEpochMask) << 32;
    ts.nsec = extra >> kEpochBits;
  }
  return ts;
}

dev_t DecodeDevice(const InodeBuf& inode) {
  uint32_t old_dev = inode.raw.i_block[0];
  if (old_dev != 0) return makedev((old_dev >> 8) & 0xff, old_dev & 0xff);  // old_decode_dev
  uint32_t dev = inode.raw.i_block[1];                                      // new_decode_dev
  return makedev((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00));
}

Attr AttrFromInode(ext2_filsys fs, Ino ino, const InodeBuf& inode) {
  const ext2_inode_large& r = inode.raw;
  Attr a;
  a.ino = ino;
  a.mode = r.i_mode;
  a.nlink = r.i_links_count;
  a.uid = inode_uid(r);
  a.gid = inode_gid(r);
  if (LINUX_S_ISCHR(r.i_mode) || LINUX_S_ISBLK(r.i_mode)) a.rdev = DecodeDevice(inode);
  a.size = InodeSize(fs, inode);

  // ext4_inode_blocks(): i_blocks_hi and the HUGE_FILE unit only with the huge_file feature.
  uint64_t blocks = r.i_blocks;
  if (ext2fs_has_feature_huge_file(fs->super)) {
    blocks |= static_cast<uint64_t>(r.osd2.linux2.l_i_blocks_hi) << 32;
    if ((r.i_flags & kFlagHugeFile) != 0) blocks <<= (fs->super->s_log_block_size + 10 - 9);
  }
  // ext4_file_getattr(): regular files with inline data report at least their size in sectors.
  if (inode.is_reg() && (r.i_flags & kFlagInlineData) != 0) blocks += (a.size + 511) >> 9;
  a.blocks = blocks;
  a.blksize = fs->blocksize;

  a.atime = DecodeTime(r.i_atime, r.i_atime_extra, inode.Fits(IOMAPFS_FIELD_END(i_atime_extra)));
  a.mtime = DecodeTime(r.i_mtime, r.i_mtime_extra, inode.Fits(IOMAPFS_FIELD_END(i_mtime_extra)));
  a.ctime = DecodeTime(r.i_ctime, r.i_ctime_extra, inode.Fits(IOMAPFS_FIELD_END(i_ctime_extra)));
  if (inode.Fits(IOMAPFS_FIELD_END(i_crtime))) {
    a.has_btime = true;
    a.btime =
        DecodeTime(r.i_crtime, r.i_crtime_extra, inode.Fits(IOMAPFS_FIELD_END(i_crtime_extra)));
  }
  a.generation = r.i_generation;

  // ext4_getattr(); STATX_ATTR_DAX only with an active DAX mapping, which an image never has.
  uint32_t flags = r.i_flags;
  if (flags & kFlagAppend) a.statx_attributes |= STATX_ATTR_APPEND;
  if (flags & kFlagCompressed) a.statx_attributes |= STATX_ATTR_COMPRESSED;
  if (flags & kFlagEncrypt) a.statx_attributes |= STATX_ATTR_ENCRYPTED;
  if (flags & kFlagImmutable) a.statx_attributes |= STATX_ATTR_IMMUTABLE;
  if (flags & kFlagNodump) a.statx_attributes |= STATX_ATTR_NODUMP;
  if (flags & kFlagVerity) a.statx_attributes |= STATX_ATTR_VERITY;
  return a;
}

}  // namespace iomapfs::ext4
