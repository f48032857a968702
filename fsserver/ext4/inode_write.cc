#include "fsserver/ext4/inode_write.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

namespace iomapfs::ext4 {
namespace {

constexpr uint32_t kEpochMask = 3;
// sizeof(struct ext4_inode) - EXT4_GOOD_OLD_INODE_SIZE: the kernel's default i_extra_isize.
constexpr uint32_t kDefaultExtraIsize = 32;

// EXT4_FL_INHERITED and the masks of ext4_mask_flags() (fs/ext4/ext4.h).
constexpr uint32_t kFlInherited = 0x1 | 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x400 | 0x4000 | 0x8000 |
                                  0x10000 | 0x20000000 | 0x40000000 | 0x2000000;
constexpr uint32_t kRegFlMask = ~(0x10000u | 0x20000u | 0x40000000u | 0x20000000u);
constexpr uint32_t kOtherFlMask = 0x40 | 0x80;

#define IOMAPFS_W_FIELD_END(field) \
  (offsetof(ext2_inode_large, field) + sizeof(static_cast<ext2_inode_large*>(nullptr)->field))

uint32_t EncodeExtra(Timestamp ts) {
  auto high = static_cast<uint64_t>(ts.sec - static_cast<int32_t>(ts.sec)) >> 32;
  return static_cast<uint32_t>(high & kEpochMask) | (ts.nsec << 2);
}

uint32_t MaskFlags(uint32_t mode, uint32_t flags) {
  if (LINUX_S_ISDIR(mode)) return flags;
  if (LINUX_S_ISREG(mode)) return flags & kRegFlMask;
  return flags & kOtherFlMask;
}

uint32_t RandomGeneration() {
  static thread_local std::mt19937 rng(std::random_device{}());
  return rng();
}

}  // namespace

Timestamp Now() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return Timestamp{ts.tv_sec, static_cast<uint32_t>(ts.tv_nsec)};
}

void SetTime(InodeBuf& inode, TimeField field, Timestamp ts) {
  ext2_inode_large& r = inode.raw;
  auto base = static_cast<uint32_t>(ts.sec);
  uint32_t extra = EncodeExtra(ts);
  switch (field) {
    case TimeField::kAtime:
      r.i_atime = base;
      if (inode.Fits(IOMAPFS_W_FIELD_END(i_atime_extra))) r.i_atime_extra = extra;
      break;
    case TimeField::kMtime:
      r.i_mtime = base;
      if (inode.Fits(IOMAPFS_W_FIELD_END(i_mtime_extra))) r.i_mtime_extra = extra;
      break;
    case TimeField::kCtime:
      r.i_ctime = base;
      if (inode.Fits(IOMAPFS_W_FIELD_END(i_ctime_extra))) r.i_ctime_extra = extra;
      break;
    case TimeField::kCrtime:
      if (inode.Fits(IOMAPFS_W_FIELD_END(i_crtime))) r.i_crtime = base;
      if (inode.Fits(IOMAPFS_W_FIELD_END(i_crtime_extra))) r.i_crtime_extra = extra;
      break;
  }
}

void EncodeDevice(InodeBuf& inode, dev_t rdev) {
  uint32_t ma = major(rdev), mi = minor(rdev);
  if (ma < 256 && mi < 256) {
    inode.raw.i_block[0] = (ma << 8) | mi;  // old_encode_dev
    inode.raw.i_block[1] = 0;
  } else {
    inode.raw.i_block[0] = 0;
    inode.raw.i_block[1] = (mi & 0xff) | (ma << 8) | ((mi & ~0xffu) << 12);  // new_encode_dev
    inode.raw.i_block[2] = 0;
  }
}

uint8_t FileTypeOfMode(uint32_t mode) {
  switch (mode & LINUX_S_IFMT) {
    case LINUX_S_IFREG:
      return EXT2_FT_REG_FILE;
    case LINUX_S_IFDIR:
      return EXT2_FT_DIR;
    case LINUX_S_IFCHR:
      return EXT2_FT_CHRDEV;
    case LINUX_S_IFBLK:
      return EXT2_FT_BLKDEV;
    case LINUX_S_IFIFO:
      return EXT2_FT_FIFO;
    case LINUX_S_IFSOCK:
      return EXT2_FT_SOCK;
    case LINUX_S_IFLNK:
      return EXT2_FT_SYMLINK;
    default:
      return EXT2_FT_UNKNOWN;
  }
}

bool IsDx(ext2_filsys fs, const InodeBuf& inode) {
  return ext2fs_has_feature_dir_index(fs->super) && (inode.flags() & kFlagIndex) != 0;
}

void IncLinks(ext2_filsys fs, InodeBuf& inode) {
  uint32_t n = inode.raw.i_links_count + 1u;
  if (inode.is_dir() && IsDx(fs, inode) && (n > kLinkMax || n == 2)) n = 1;
  inode.raw.i_links_count = static_cast<uint16_t>(std::min<uint32_t>(n, 0xffff));
}

void DecLinks(InodeBuf& inode) {
  if (!inode.is_dir() || inode.raw.i_links_count > 2) {
    if (inode.raw.i_links_count > 0) inode.raw.i_links_count--;
  }
}

bool DirLinksFull(ext2_filsys fs, const InodeBuf& dir) {
  return dir.raw.i_links_count >= kLinkMax &&
         !(ext2fs_has_feature_dir_nlink(fs->super) && IsDx(fs, dir));
}

Result<void> WriteInode(const ext2::Guard& g, Ino ino, InodeBuf& inode) {
  int size = static_cast<int>(std::min<size_t>(sizeof(inode.raw), inode.inode_size));
  errcode_t err =
      ext2fs_write_inode_full(g.fs(), static_cast<ext2_ino_t>(ino.value()), inode.base(), size);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return {};
}

Result<void> EnsureBitmaps(const ext2::Guard& g) {
  ext2_filsys fs = g.fs();
  if (fs->inode_map != nullptr && fs->block_map != nullptr) return {};
  errcode_t err = ext2fs_read_bitmaps(fs);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return {};
}

Result<NewInode> AllocateInode(const ext2::Guard& g, Ino parent, const NewInodeSpec& spec) {
  ext2_filsys fs = g.fs();
  IOMAPFS_TRY(EnsureBitmaps(g));
  ext2_ino_t ino = 0;
  errcode_t err = ext2fs_new_inode(fs, static_cast<ext2_ino_t>(parent.value()),
                                   static_cast<int>(spec.mode), nullptr, &ino);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));

  NewInode out{Ino(ino), InodeBuf{}};
  InodeBuf& inode = out.inode;
  inode.inode_size = EXT2_INODE_SIZE(fs->super);
  if (inode.inode_size > EXT2_GOOD_OLD_INODE_SIZE) {
    uint32_t want = fs->super->s_want_extra_isize;
    if (want < kDefaultExtraIsize) want = kDefaultExtraIsize;
    want = std::min<uint32_t>(want, inode.inode_size - EXT2_GOOD_OLD_INODE_SIZE);
    inode.raw.i_extra_isize = static_cast<uint16_t>(want);
    inode.extra_isize = want;
  }
  ext2_inode_large& r = inode.raw;
  r.i_mode = static_cast<uint16_t>(spec.mode);
  r.i_uid = static_cast<uint16_t>(spec.uid);
  r.osd2.linux2.l_i_uid_high = static_cast<uint16_t>(spec.uid >> 16);
  r.i_gid = static_cast<uint16_t>(spec.gid);
  r.osd2.linux2.l_i_gid_high = static_cast<uint16_t>(spec.gid >> 16);
  r.i_links_count = static_cast<uint16_t>(spec.links);
  Timestamp now = Now();
  for (TimeField f :
       {TimeField::kAtime, TimeField::kMtime, TimeField::kCtime, TimeField::kCrtime}) {
    SetTime(inode, f, now);
  }
  r.i_generation = RandomGeneration();
  r.i_flags = MaskFlags(spec.mode, spec.parent_flags & kFlInherited);
  uint32_t fmt = spec.mode & LINUX_S_IFMT;
  if (ext2fs_has_feature_extents(fs->super) &&
      (fmt == LINUX_S_IFREG || fmt == LINUX_S_IFDIR || fmt == LINUX_S_IFLNK)) {
    // ext4_ext_tree_init(): an empty root in i_block.
    r.i_flags |= EXT4_EXTENTS_FL;
    auto* eh = reinterpret_cast<ext3_extent_header*>(r.i_block);
    eh->eh_magic = ext2fs_cpu_to_le16(EXT3_EXT_MAGIC);
    eh->eh_entries = 0;
    eh->eh_max = ext2fs_cpu_to_le16((sizeof(r.i_block) - sizeof(*eh)) / sizeof(ext3_extent));
    eh->eh_depth = 0;
    eh->eh_generation = 0;
  }

  // Written in full: the in-inode xattr area starts zeroed.
  std::vector<uint64_t> full((inode.inode_size + 7) / 8, 0);
  std::memcpy(full.data(), &r, std::min<size_t>(sizeof(r), inode.inode_size));
  err = ext2fs_write_inode_full(fs, ino, reinterpret_cast<ext2_inode*>(full.data()),
                                static_cast<int>(inode.inode_size));
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  ext2fs_inode_alloc_stats2(fs, ino, +1, fmt == LINUX_S_IFDIR ? 1 : 0);
  return out;
}

Result<void> FreeInode(const ext2::Guard& g, Ino ino) {
  ext2_filsys fs = g.fs();
  IOMAPFS_TRY(EnsureBitmaps(g));
  auto n = static_cast<ext2_ino_t>(ino.value());
  const size_t isize = EXT2_INODE_SIZE(fs->super);
  // A buffer of the full on-disk size: ext2fs_free_ext_attr reads the in-inode xattr area.
  std::vector<uint64_t> full((std::max(isize, sizeof(ext2_inode_large)) + 7) / 8, 0);
  auto* inode = reinterpret_cast<ext2_inode_large*>(full.data());
  errcode_t err =
      ext2fs_read_inode_full(fs, n, reinterpret_cast<ext2_inode*>(inode), static_cast<int>(isize));
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  const bool is_dir = LINUX_S_ISDIR(inode->i_mode);
  err = ext2fs_free_ext_attr(fs, n, inode);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  if ((inode->i_flags & EXT4_INLINE_DATA_FL) == 0 &&
      ext2fs_inode_has_valid_blocks2(fs, reinterpret_cast<ext2_inode*>(inode))) {
    err = ext2fs_punch(fs, n, reinterpret_cast<ext2_inode*>(inode), nullptr, 0, ~0ULL);
    if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  }
  inode->i_links_count = 0;
  inode->i_dtime = static_cast<uint32_t>(Now().sec);
  err =
      ext2fs_write_inode_full(fs, n, reinterpret_cast<ext2_inode*>(inode), static_cast<int>(isize));
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  ext2fs_inode_alloc_stats2(fs, n, -1, is_dir ? 1 : 0);
  return {};
}

}  // namespace iomapfs::ext4
