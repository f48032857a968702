// SETATTR as ext4_setattr()/setattr_copy() apply it (the kernel has checked permissions).
#include <sys/stat.h>

#include <algorithm>

#include "ext2/transaction.h"
#include "fsserver/ext4/acl.h"
#include "fsserver/ext4/fs_impl.h"
#include "fsserver/ext4/inode_write.h"
#include "fsserver/ext4/xattr.h"
#include "iomap/engine.h"

namespace iomapfs::ext4 {
namespace {

bool InGroup(const Caller& caller, uint32_t gid) {
  return caller.gid == gid ||
         std::find(caller.groups.begin(), caller.groups.end(), gid) != caller.groups.end();
}

// __posix_acl_chmod(): the ACL entries that mirror the mode bits follow the new mode.
void AclChmod(Acl& acl, uint32_t mode) {
  AclEntry* group_obj = nullptr;
  AclEntry* mask_obj = nullptr;
  for (AclEntry& e : acl) {
    if (e.tag == kAclUserObj) e.perm = (mode & S_IRWXU) >> 6;
    if (e.tag == kAclGroupObj) group_obj = &e;
    if (e.tag == kAclMask) mask_obj = &e;
    if (e.tag == kAclOther) e.perm = mode & S_IRWXO;
  }
  AclEntry* g = mask_obj != nullptr ? mask_obj : group_obj;
  if (g != nullptr) g->perm = (mode & S_IRWXG) >> 3;
}

}  // namespace

Result<Attr> Filesystem::SetAttr(Ino ino, const SetAttrRequest& req, const Caller& caller) {
  if (impl_->read_only()) return Unexpected(EROFS);
  Impl& impl = *impl_;
  std::lock_guard<std::mutex> inode_lock(impl.inode_locks.For(ino));
  std::vector<iomap::ZeroSpan> spans;
  Attr attr;
  {
    ext2::Guard g = impl.fs->Lock();
    ext2_filsys fs = g.fs();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl.ReadLive(g, ino));
    if ((inode.flags() & kFlagImmutable) != 0) return Unexpected(EPERM);
    if ((inode.flags() & kFlagAppend) != 0 && (req.mode || req.uid || req.gid || req.size)) {
      return Unexpected(EPERM);
    }
    const Timestamp now = Now();
    bool size_changed = false;
    if (req.size) {
      if (inode.is_dir()) return Unexpected(EISDIR);
      if (!inode.is_reg()) return Unexpected(EINVAL);
      IOMAPFS_ASSIGN_OR_RETURN(uint64_t max, impl.engine->MaxFileSize(g, ino));
      if (*req.size > max) return Unexpected(EFBIG);
      if (*req.size != InodeSize(fs, inode)) {
        ext2::Transaction tx(g);
        auto truncated = impl.engine->Truncate(tx, ino, *req.size);
        if (!truncated) return Unexpected(impl.Check(g, truncated, ino, "setattr").error());
        spans = std::move(*truncated);
        IOMAPFS_TRY(tx.Commit());
        size_changed = true;
        IOMAPFS_ASSIGN_OR_RETURN(inode, impl.ReadLive(g, ino));
      }
    }
    uint32_t mode = inode.mode();
    const uint32_t new_gid = req.gid ? *req.gid : inode_gid(inode.raw);
    if (req.mode) {
      mode = (mode & LINUX_S_IFMT) | (*req.mode & 07777);
      // setattr_copy(): S_ISGID only for members of the file's group (or CAP_FSETID).
      if (caller.uid != 0 && !impl.options.fakeroot && !InGroup(caller, new_gid)) {
        mode &= ~static_cast<uint32_t>(S_ISGID);
      }
    }
    if (req.uid) {
      inode.raw.i_uid = static_cast<uint16_t>(*req.uid);
      inode.raw.osd2.linux2.l_i_uid_high = static_cast<uint16_t>(*req.uid >> 16);
    }
    if (req.gid) {
      inode.raw.i_gid = static_cast<uint16_t>(*req.gid);
      inode.raw.osd2.linux2.l_i_gid_high = static_cast<uint16_t>(*req.gid >> 16);
    }
    // chown_common() + notify_change(): a chown of a non-directory kills suid, and sgid with
    // group execute.
    const bool chown = req.uid.has_value() || req.gid.has_value();
    if ((chown && !LINUX_S_ISDIR(mode)) || req.kill_suid_sgid) {
      mode &= ~static_cast<uint32_t>(S_ISUID);
      if ((mode & S_IXGRP) != 0) mode &= ~static_cast<uint32_t>(S_ISGID);
    }
    const bool mode_changed = mode != inode.mode();
    inode.raw.i_mode = static_cast<uint16_t>(mode);
    if (size_changed) SetTime(inode, TimeField::kMtime, now);
    if (req.atime) SetTime(inode, TimeField::kAtime, *req.atime);
    if (req.mtime) SetTime(inode, TimeField::kMtime, *req.mtime);
    SetTime(inode, TimeField::kCtime, req.ctime ? *req.ctime : now);
    IOMAPFS_TRY(WriteInode(g, ino, inode));
    if (req.mode && mode_changed) {
      // posix_acl_chmod(): an access ACL follows the new mode.
      IOMAPFS_ASSIGN_OR_RETURN(std::optional<Acl> acl, ReadAcl(g, ino, kAclAccessName));
      if (acl && !acl->empty()) {
        AclChmod(*acl, mode);
        std::vector<std::byte> v = AclToDisk(*acl);
        IOMAPFS_TRY(WriteXattrRaw(g, ino, kAclAccessName, &v));
      }
    }
    IOMAPFS_ASSIGN_OR_RETURN(attr, impl.GetAttrLocked(g, ino));
  }
  // The tail of the new last block reads as zeros once on the device.
  std::vector<std::byte> zeros;
  for (const iomap::ZeroSpan& z : spans) {
    zeros.assign(z.length, std::byte{0});
    IOMAPFS_TRY(impl.fs->data().WriteAt(zeros, z.addr));
  }
  return attr;
}

}  // namespace iomapfs::ext4
