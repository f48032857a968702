// setxattr/removexattr as ext4's handlers and the VFS apply them (fs/xattr.c, fs/ext4/xattr.c,
// fs/posix_acl.c): name and size limits, XATTR_CREATE/REPLACE, POSIX ACLs stored in ext4's
// disk format with the mode kept in step.
#include <sys/stat.h>
#include <sys/xattr.h>

#include <vector>

#include "fsserver/ext4/acl.h"
#include "fsserver/ext4/fs_impl.h"
#include "fsserver/ext4/inode_write.h"
#include "fsserver/ext4/xattr.h"

namespace iomapfs::ext4 {
namespace {

constexpr size_t kXattrNameMax = 255;      // XATTR_NAME_MAX
constexpr size_t kXattrSizeMax = 1 << 16;  // XATTR_SIZE_MAX

bool IsAclName(std::string_view name) { return name == kAclAccessName || name == kAclDefaultName; }

// The checks every xattr change shares. Errors: ERANGE, EINVAL, EOPNOTSUPP.
Result<void> CheckName(std::string_view name) {
  if (name.empty() || name.size() > kXattrNameMax) return Unexpected(ERANGE);
  for (std::string_view prefix : {"user.", "trusted.", "security.", "gnu."}) {
    if (name == prefix) return Unexpected(EINVAL);
  }
  if (!IsVisibleXattrName(name)) return Unexpected(EOPNOTSUPP);
  return {};
}

// xattr_permission(): user.* only on regular files and directories.
Result<void> CheckInode(const InodeBuf& inode, std::string_view name) {
  if ((inode.flags() & (kFlagImmutable | kFlagAppend)) != 0) return Unexpected(EPERM);
  if (name.substr(0, 5) == "user." && !inode.is_reg() && !inode.is_dir()) {
    return Unexpected(EPERM);
  }
  return {};
}

}  // namespace

Result<void> Filesystem::SetXattr(Ino ino, std::string_view name, std::span<const std::byte> value,
                                  int flags, bool acl_kill_sgid) {
  if (impl_->read_only()) return Unexpected(EROFS);
  if ((flags & ~(XATTR_CREATE | XATTR_REPLACE)) != 0) return Unexpected(EINVAL);
  IOMAPFS_TRY(CheckName(name));
  if (value.size() > kXattrSizeMax) return Unexpected(E2BIG);
  Impl& impl = *impl_;
  ext2::Guard g = impl.fs->Lock();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl.ReadLive(g, ino));
  IOMAPFS_TRY(CheckInode(inode, name));

  std::vector<std::byte> stored(value.begin(), value.end());
  bool remove = false;
  uint32_t mode = inode.mode();
  if (IsAclName(name)) {
    // set_posix_acl() ignores XATTR_CREATE/REPLACE.
    IOMAPFS_ASSIGN_OR_RETURN(Acl acl, AclFromXattr(value));
    if (name == kAclDefaultName && !inode.is_dir()) {
      if (acl.empty()) return {};
      return Unexpected(EACCES);
    }
    if (name == kAclAccessName && !acl.empty()) {
      // posix_acl_update_mode(): the mode takes the ACL's bits; an ACL the mode expresses
      // fully is not stored.
      if (AclEquivMode(acl, &mode)) remove = true;
      if (acl_kill_sgid) mode &= ~static_cast<uint32_t>(S_ISGID);
    }
    if (acl.empty()) remove = true;
    stored = AclToDisk(acl);
    if (remove) {
      IOMAPFS_ASSIGN_OR_RETURN(bool exists, HasXattr(g, ino, name));
      if (exists) IOMAPFS_TRY(impl.Check(g, WriteXattrRaw(g, ino, name, nullptr), ino, "xattr"));
    } else {
      IOMAPFS_TRY(impl.Check(g, WriteXattrRaw(g, ino, name, &stored), ino, "xattr"));
    }
  } else {
    IOMAPFS_ASSIGN_OR_RETURN(bool exists, HasXattr(g, ino, name));
    if ((flags & XATTR_CREATE) != 0 && exists) return Unexpected(EEXIST);
    if ((flags & XATTR_REPLACE) != 0 && !exists) return Unexpected(ENODATA);
    IOMAPFS_TRY(impl.Check(g, WriteXattrRaw(g, ino, name, &stored), ino, "xattr"));
  }
  // The xattr code rewrote the inode (EA block, in-inode area): re-read before the times.
  IOMAPFS_ASSIGN_OR_RETURN(inode, impl.ReadLive(g, ino));
  inode.raw.i_mode = static_cast<uint16_t>(mode);
  SetTime(inode, TimeField::kCtime, Now());
  return WriteInode(g, ino, inode);
}

Result<void> Filesystem::RemoveXattr(Ino ino, std::string_view name) {
  if (impl_->read_only()) return Unexpected(EROFS);
  IOMAPFS_TRY(CheckName(name));
  Impl& impl = *impl_;
  ext2::Guard g = impl.fs->Lock();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl.ReadLive(g, ino));
  IOMAPFS_TRY(CheckInode(inode, name));
  IOMAPFS_ASSIGN_OR_RETURN(bool exists, HasXattr(g, ino, name));
  if (!exists) return Unexpected(ENODATA);
  IOMAPFS_TRY(impl.Check(g, WriteXattrRaw(g, ino, name, nullptr), ino, "xattr"));
  IOMAPFS_ASSIGN_OR_RETURN(inode, impl.ReadLive(g, ino));
  SetTime(inode, TimeField::kCtime, Now());
  return WriteInode(g, ino, inode);
}

}  // namespace iomapfs::ext4
