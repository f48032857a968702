// Namespace operations (fs/ext4/namei.c): create, mknod, mkdir, symlink, link, unlink, rmdir,
// rename, tmpfile; the orphan list; recording errors in the superblock.
#include <linux/fs.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "base/log.h"
#include "fsserver/ext4/acl.h"
#include "fsserver/ext4/dir_write.h"
#include "fsserver/ext4/fs_impl.h"
#include "fsserver/ext4/inode_write.h"
#include "fsserver/ext4/xattr.h"

namespace iomapfs::ext4 {
namespace {

constexpr uint32_t kFastSymlinkMax = sizeof(ext2_inode::i_block);  // 60 bytes incl. the NUL

Result<void> CheckName(std::string_view name) {
  if (name.size() > kMaxNameLen) return Unexpected(ENAMETOOLONG);
  if (name.empty()) return Unexpected(ENOENT);
  return {};
}

bool IsDots(std::string_view name) { return name == "." || name == ".."; }

bool Immutable(const InodeBuf& inode) { return (inode.flags() & kFlagImmutable) != 0; }
bool AppendOnly(const InodeBuf& inode) { return (inode.flags() & kFlagAppend) != 0; }

// A directory we are about to change: it must exist, be a directory and not be deleted.
Result<InodeBuf> ReadParent(Filesystem::Impl& impl, const ext2::Guard& g, Ino dir) {
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl.ReadLive(g, dir));
  if (!inode.is_dir()) return Unexpected(ENOTDIR);
  if (inode.raw.i_links_count == 0) return Unexpected(ENOENT);  // IS_DEADDIR
  return inode;
}

void TouchDir(InodeBuf& dir, Timestamp now) {
  SetTime(dir, TimeField::kMtime, now);
  SetTime(dir, TimeField::kCtime, now);
}

// The ext4 `.. ` entry of directory `dir` now names `parent`.
Result<void> SetDotDot(Filesystem::Impl& impl, const ext2::Guard& g, Ino dir, Ino parent) {
  IOMAPFS_TRY(RetargetEntry(g, dir, "..", DirHit{Ino(0), EXT2_FT_DIR, 0}, parent, EXT2_FT_DIR));
  impl.dirs.NoteAdded(g, dir, "..", DirHit{parent, EXT2_FT_DIR, -1});
  return {};
}

// EINVAL if `moved` (a directory) is `dir` or one of its ancestors.
Result<void> CheckNotAncestor(const ext2::Guard& g, Filesystem::Impl& impl, Ino moved, Ino dir) {
  Ino cur = dir;
  for (int depth = 0; depth < 65536; ++depth) {
    if (cur == moved) return Unexpected(EINVAL);
    if (cur == kRootIno) return {};
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadInode(g, cur));
    IOMAPFS_ASSIGN_OR_RETURN(std::optional<DirHit> up, impl.dirs.Find(g, cur, inode, ".."));
    if (!up) return Unexpected(kEfsCorrupted);
    cur = up->ino;
  }
  return Unexpected(kEfsCorrupted);  // a loop
}

}  // namespace

// ---- Orphans ----------------------------------------------------------------------------

Result<void> Filesystem::Impl::OrphanAdd(const ext2::Guard& g, Ino ino, InodeBuf& inode) {
  ext2_filsys fs = g.fs();
  inode.raw.i_dtime = fs->super->s_last_orphan;
  IOMAPFS_TRY(WriteInode(g, ino, inode));
  fs->super->s_last_orphan = static_cast<uint32_t>(ino.value());
  ext2fs_mark_super_dirty(fs);
  orphans.insert(ino.value());
  return {};
}

Result<void> Filesystem::Impl::OrphanDel(const ext2::Guard& g, Ino ino, InodeBuf& inode) {
  ext2_filsys fs = g.fs();
  const uint32_t me = static_cast<uint32_t>(ino.value());
  const uint32_t next = inode.raw.i_dtime;
  if (fs->super->s_last_orphan == me) {
    fs->super->s_last_orphan = next;
    ext2fs_mark_super_dirty(fs);
  } else {
    uint32_t cur = fs->super->s_last_orphan;
    for (size_t steps = 0; cur != 0 && steps <= orphans.size() + 1; ++steps) {
      IOMAPFS_ASSIGN_OR_RETURN(InodeBuf c, ReadInode(g, Ino(cur), true));
      if (c.raw.i_dtime == me) {
        c.raw.i_dtime = next;
        IOMAPFS_TRY(WriteInode(g, Ino(cur), c));
        break;
      }
      cur = c.raw.i_dtime;
    }
  }
  inode.raw.i_dtime = 0;
  orphans.erase(ino.value());
  tmpfiles.erase(ino.value());
  return {};
}

Result<void> Filesystem::Impl::DropInode(const ext2::Guard& g, Ino ino, InodeBuf& inode) {
  engine->Invalidate(g, ino);
  dirs.Invalidate(g, ino);
  if (Referenced(ino)) return OrphanAdd(g, ino, inode);
  IOMAPFS_TRY(WriteInode(g, ino, inode));
  return FreeInode(g, ino);
}

Result<void> Filesystem::Impl::ReleaseOrphan(const ext2::Guard& g, Ino ino) {
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadInode(g, ino, true));
  IOMAPFS_TRY(OrphanDel(g, ino, inode));
  IOMAPFS_TRY(WriteInode(g, ino, inode));
  engine->Invalidate(g, ino);
  dirs.Invalidate(g, ino);
  if (inode.raw.i_links_count != 0) return {};  // linked again meanwhile
  return FreeInode(g, ino);
}

void Filesystem::Impl::ApplyErrorBehavior(const ext2::Guard& g, Ino ino, const char* func) {
  ErrorBehavior b = options.errors;
  if (b == ErrorBehavior::kDefault) {
    switch (g->super->s_errors) {
      case EXT2_ERRORS_RO:
        b = ErrorBehavior::kRemountRo;
        break;
      case EXT2_ERRORS_PANIC:
        b = ErrorBehavior::kPanic;
        break;
      default:
        b = ErrorBehavior::kContinue;
        break;
    }
  }
  switch (b) {
    case ErrorBehavior::kRemountRo:
      if (!errors_made_read_only.exchange(true, std::memory_order_acq_rel) && !fs->read_only()) {
        LOG_ERROR(
            "corruption in inode %llu (%s): the filesystem is now read-only "
            "(errors=remount-ro); run e2fsck after unmounting",
            static_cast<unsigned long long>(ino.value()), func);
      }
      break;
    case ErrorBehavior::kPanic:
      // The user asked for the filesystem to stop at the first error: no further change may
      // reach the image, not even the error record.
      LOG_ERROR("corruption in inode %llu (%s): stopping (errors=panic); the mount is aborted",
                static_cast<unsigned long long>(ino.value()), func);
      std::_Exit(EXIT_FAILURE);
    default:
      LOG_WARNING("corruption in inode %llu (%s); continuing (errors=continue)",
                  static_cast<unsigned long long>(ino.value()), func);
      break;
  }
}

void Filesystem::Impl::RecordError(const ext2::Guard& g, Ino ino, const char* func) {
  ext2_super_block* sb = g->super;
  ApplyErrorBehavior(g, ino, func);
  if (fs->read_only()) return;
  auto now = static_cast<uint64_t>(Now().sec);
  sb->s_state |= EXT2_ERROR_FS;
  sb->s_error_count++;
  auto set = [&](uint32_t* t, uint8_t* t_hi, uint32_t* i, uint8_t* f, size_t flen) {
    *t = static_cast<uint32_t>(now);
    *t_hi = static_cast<uint8_t>(now >> 32);
    *i = static_cast<uint32_t>(ino.value());
    std::memset(f, 0, flen);
    std::memcpy(f, func, std::min(flen, std::strlen(func)));
  };
  if (sb->s_first_error_time == 0 && sb->s_first_error_time_hi == 0) {
    set(&sb->s_first_error_time, &sb->s_first_error_time_hi, &sb->s_first_error_ino,
        sb->s_first_error_func, sizeof(sb->s_first_error_func));
  }
  set(&sb->s_last_error_time, &sb->s_last_error_time_hi, &sb->s_last_error_ino,
      sb->s_last_error_func, sizeof(sb->s_last_error_func));
  ext2fs_mark_super_dirty(g.fs());
}

// ---- Creation ---------------------------------------------------------------------------

namespace {

struct CreateArgs {
  uint32_t mode = 0;
  dev_t rdev = 0;
  uint32_t umask = 0;
  std::string_view symlink_target;
};

}  // namespace

// Shared by Create, Mknod, Mkdir, Symlink and Tmpfile (name empty: an orphan, no entry).
static Result<Attr> MakeNode(Filesystem::Impl& impl, Ino parent, std::string_view name,
                             const CreateArgs& args, const Caller& caller) {
  const bool tmpfile = name.empty();
  if (impl.read_only()) return Unexpected(EROFS);
  if (!tmpfile) IOMAPFS_TRY(CheckName(name));
  uint32_t mode = args.mode;
  const uint32_t fmt = mode & LINUX_S_IFMT;
  const bool is_dir = fmt == LINUX_S_IFDIR;
  const bool is_link = fmt == LINUX_S_IFLNK;
  Attr attr;
  {
    ext2::Guard g = impl.fs->Lock();
    ext2_filsys fs = g.fs();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf dir, ReadParent(impl, g, parent));
    if (!tmpfile) {
      if (IsDots(name)) return Unexpected(EEXIST);
      IOMAPFS_ASSIGN_OR_RETURN(std::optional<DirHit> hit,
                               impl.Check(g, impl.dirs.Find(g, parent, dir, name), parent, "find"));
      if (hit) return Unexpected(EEXIST);
    }
    if (Immutable(dir)) return Unexpected(EPERM);
    if (is_dir && DirLinksFull(fs, dir)) return Unexpected(EMLINK);

    // inode_init_owner(): the caller's ids; a setgid parent passes on its group (and, to
    // directories, the setgid bit).
    NewInodeSpec spec;
    spec.uid = caller.uid;
    spec.gid = caller.gid;
    if ((dir.mode() & S_ISGID) != 0) {
      spec.gid = inode_gid(dir.raw);
      if (is_dir) mode |= S_ISGID;
    }
    // posix_acl_create(): a default ACL replaces the umask.
    std::optional<Acl> access_acl;
    std::optional<Acl> default_acl;
    if (is_link) {
      mode = LINUX_S_IFLNK | 0777;
    } else {
      IOMAPFS_ASSIGN_OR_RETURN(std::optional<Acl> parent_default,
                               ReadAcl(g, parent, kAclDefaultName));
      if (parent_default && !parent_default->empty()) {
        Acl clone = *parent_default;
        if (AclCreateMasq(&clone, &mode)) access_acl = std::move(clone);
        if (is_dir) default_acl = std::move(parent_default);
      } else {
        mode &= ~(args.umask & 0777);
      }
    }
    spec.mode = mode;
    spec.links = is_dir ? 2 : 1;
    spec.parent_flags = dir.flags();

    IOMAPFS_ASSIGN_OR_RETURN(NewInode created, AllocateInode(g, parent, spec));
    const Ino ino = created.ino;
    InodeBuf& inode = created.inode;
    auto body = [&]() -> Result<void> {
      if (is_dir) {
        IOMAPFS_TRY(InitDirBlock(g, ino, parent, inode));
      } else if (fmt == LINUX_S_IFCHR || fmt == LINUX_S_IFBLK) {
        EncodeDevice(inode, args.rdev);
        IOMAPFS_TRY(WriteInode(g, ino, inode));
      } else if (is_link) {
        std::string_view target = args.symlink_target;
        if (target.size() + 1 <= kFastSymlinkMax) {
          // Fast symlink: the target lives in i_block; no extent root (ext4_symlink).
          inode.raw.i_flags &= ~EXT4_EXTENTS_FL;
          std::memset(inode.raw.i_block, 0, sizeof(inode.raw.i_block));
          std::memcpy(inode.raw.i_block, target.data(), target.size());
          inode.raw.i_size = static_cast<uint32_t>(target.size());
          IOMAPFS_TRY(WriteInode(g, ino, inode));
        } else {
          blk64_t pblk = 0;
          auto n = static_cast<ext2_ino_t>(ino.value());
          errcode_t err = ext2fs_bmap2(fs, n, inode.base(), nullptr, BMAP_ALLOC, 0, nullptr, &pblk);
          if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
          std::vector<char> block(fs->blocksize, 0);
          std::memcpy(block.data(), target.data(), target.size());
          err = io_channel_write_blk64(fs->io, pblk, 1, block.data());
          if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
          IOMAPFS_ASSIGN_OR_RETURN(inode, ReadInode(g, ino));
          inode.raw.i_size = static_cast<uint32_t>(target.size());
          IOMAPFS_TRY(WriteInode(g, ino, inode));
        }
      }
      if (access_acl) {
        std::vector<std::byte> v = AclToDisk(*access_acl);
        IOMAPFS_TRY(WriteXattrRaw(g, ino, kAclAccessName, &v));
      }
      if (default_acl) {
        std::vector<std::byte> v = AclToDisk(*default_acl);
        IOMAPFS_TRY(WriteXattrRaw(g, ino, kAclDefaultName, &v));
      }
      if (tmpfile) {
        IOMAPFS_ASSIGN_OR_RETURN(inode, ReadInode(g, ino));
        inode.raw.i_links_count = 0;  // d_tmpfile()
        IOMAPFS_TRY(impl.OrphanAdd(g, ino, inode));
        impl.tmpfiles.insert(ino.value());
        return {};
      }
      IOMAPFS_ASSIGN_OR_RETURN(DirHit hit, AddEntry(g, parent, name, ino, FileTypeOfMode(mode)));
      impl.dirs.NoteAdded(g, parent, name, hit);
      IOMAPFS_ASSIGN_OR_RETURN(InodeBuf pdir, ReadInode(g, parent));
      if (is_dir) IncLinks(fs, pdir);
      TouchDir(pdir, Now());
      return WriteInode(g, parent, pdir);
    };
    auto done = body();
    if (!done) {
      // Roll back: the inode was never linked (or the entry could not be added).
      impl.orphans.erase(ino.value());
      impl.tmpfiles.erase(ino.value());
      if (tmpfile && fs->super->s_last_orphan == ino.value()) {
        auto back = ReadInode(g, ino, true);
        if (back) fs->super->s_last_orphan = back->raw.i_dtime;
      }
      (void)FreeInode(g, ino);
      impl.engine->Invalidate(g, ino);
      return Unexpected(impl.Check(g, done, ino, "create").error());
    }
    IOMAPFS_ASSIGN_OR_RETURN(attr, impl.GetAttrLocked(g, ino));
  }
  impl.Ref(attr.ino);
  return attr;
}

Result<Attr> Filesystem::Create(Ino parent, std::string_view name, uint32_t mode, uint32_t umask,
                                const Caller& caller) {
  CreateArgs args;
  args.mode = LINUX_S_IFREG | (mode & 07777);
  args.umask = umask;
  return MakeNode(*impl_, parent, name, args, caller);
}

Result<Attr> Filesystem::Mknod(Ino parent, std::string_view name, uint32_t mode, dev_t rdev,
                               uint32_t umask, const Caller& caller) {
  uint32_t fmt = mode & LINUX_S_IFMT;
  if (fmt == 0) fmt = LINUX_S_IFREG;
  if (fmt != LINUX_S_IFREG && fmt != LINUX_S_IFCHR && fmt != LINUX_S_IFBLK &&
      fmt != LINUX_S_IFIFO && fmt != LINUX_S_IFSOCK) {
    return Unexpected(EINVAL);
  }
  CreateArgs args;
  args.mode = fmt | (mode & 07777);
  args.rdev = rdev;
  args.umask = umask;
  return MakeNode(*impl_, parent, name, args, caller);
}

Result<Attr> Filesystem::Mkdir(Ino parent, std::string_view name, uint32_t mode, uint32_t umask,
                               const Caller& caller) {
  CreateArgs args;
  args.mode = LINUX_S_IFDIR | (mode & 07777);
  args.umask = umask;
  return MakeNode(*impl_, parent, name, args, caller);
}

Result<Attr> Filesystem::Symlink(Ino parent, std::string_view name, std::string_view target,
                                 const Caller& caller) {
  if (target.empty()) return Unexpected(ENOENT);
  if (target.size() + 1 > block_size()) return Unexpected(ENAMETOOLONG);
  CreateArgs args;
  args.mode = LINUX_S_IFLNK | 0777;
  args.symlink_target = target;
  return MakeNode(*impl_, parent, name, args, caller);
}

Result<Attr> Filesystem::Tmpfile(Ino parent, uint32_t mode, uint32_t umask, const Caller& caller) {
  CreateArgs args;
  args.mode = LINUX_S_IFREG | (mode & 07777);
  args.umask = umask;
  return MakeNode(*impl_, parent, std::string_view(), args, caller);
}

// ---- Link / unlink ----------------------------------------------------------------------

Result<Attr> Filesystem::Link(Ino ino, Ino new_parent, std::string_view new_name) {
  if (impl_->read_only()) return Unexpected(EROFS);
  IOMAPFS_TRY(CheckName(new_name));
  Attr attr;
  {
    ext2::Guard g = impl_->fs->Lock();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl_->ReadLive(g, ino));
    if (inode.is_dir()) return Unexpected(EPERM);
    if (Immutable(inode) || AppendOnly(inode)) return Unexpected(EPERM);
    const bool orphan = inode.raw.i_links_count == 0;
    if (orphan && impl_->tmpfiles.count(ino.value()) == 0) return Unexpected(ENOENT);
    if (inode.raw.i_links_count >= kLinkMax) return Unexpected(EMLINK);
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf dir, ReadParent(*impl_, g, new_parent));
    if (IsDots(new_name)) return Unexpected(EEXIST);
    IOMAPFS_ASSIGN_OR_RETURN(std::optional<DirHit> hit,
                             impl_->dirs.Find(g, new_parent, dir, new_name));
    if (hit) return Unexpected(EEXIST);
    if (Immutable(dir)) return Unexpected(EPERM);
    uint8_t ft = FileTypeOfMode(inode.mode());
    auto added_r = impl_->Check(g, AddEntry(g, new_parent, new_name, ino, ft), new_parent, "link");
    if (!added_r) return Unexpected(added_r.error());
    const DirHit added = *added_r;
    impl_->dirs.NoteAdded(g, new_parent, new_name, added);
    Timestamp now = Now();
    IOMAPFS_ASSIGN_OR_RETURN(inode, impl_->ReadLive(g, ino));
    if (orphan) IOMAPFS_TRY(impl_->OrphanDel(g, ino, inode));
    inode.raw.i_links_count++;
    SetTime(inode, TimeField::kCtime, now);
    IOMAPFS_TRY(WriteInode(g, ino, inode));
    IOMAPFS_ASSIGN_OR_RETURN(dir, ReadInode(g, new_parent));
    TouchDir(dir, now);
    IOMAPFS_TRY(WriteInode(g, new_parent, dir));
    attr = AttrFromInode(g.fs(), ino, inode);
  }
  impl_->Ref(ino);
  return attr;
}

static Result<void> RemoveName(Filesystem::Impl& impl, Ino parent, std::string_view name,
                               bool rmdir) {
  if (impl.read_only()) return Unexpected(EROFS);
  IOMAPFS_TRY(CheckName(name));
  if (name == ".") return Unexpected(rmdir ? EINVAL : EISDIR);
  if (name == "..") return Unexpected(rmdir ? ENOTEMPTY : EISDIR);
  ext2::Guard g = impl.fs->Lock();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf dir, ReadParent(impl, g, parent));
  IOMAPFS_ASSIGN_OR_RETURN(std::optional<DirHit> hit,
                           impl.Check(g, impl.dirs.Find(g, parent, dir, name), parent, "find"));
  if (!hit) return Unexpected(ENOENT);
  auto child_r = ReadInode(g, hit->ino);
  if (!child_r) {
    if (child_r.error() == ENOENT) impl.RecordError(g, hit->ino, "unlink");
    return Unexpected(child_r.error() == ENOENT ? kEfsCorrupted : child_r.error());
  }
  InodeBuf child = std::move(*child_r);
  if (rmdir) {
    if (!child.is_dir()) return Unexpected(ENOTDIR);
    if (hit->ino == kRootIno) return Unexpected(EBUSY);
  } else if (child.is_dir()) {
    return Unexpected(EISDIR);
  }
  if (Immutable(dir) || AppendOnly(dir) || Immutable(child) || AppendOnly(child)) {
    return Unexpected(EPERM);
  }
  if (rmdir) {
    IOMAPFS_ASSIGN_OR_RETURN(bool empty,
                             impl.Check(g, IsEmptyDir(g, hit->ino, child), hit->ino, "rmdir"));
    if (!empty) return Unexpected(ENOTEMPTY);
  }
  IOMAPFS_TRY(impl.Check(g, RemoveEntry(g, parent, name, *hit), parent, "unlink"));
  impl.dirs.NoteRemoved(g, parent, name);
  Timestamp now = Now();
  IOMAPFS_ASSIGN_OR_RETURN(dir, ReadInode(g, parent));
  TouchDir(dir, now);
  if (rmdir) DecLinks(dir);
  IOMAPFS_TRY(WriteInode(g, parent, dir));

  IOMAPFS_ASSIGN_OR_RETURN(child, ReadInode(g, hit->ino));
  SetTime(child, TimeField::kCtime, now);
  if (rmdir) {
    // ext4_rmdir(): clear_nlink() and i_size = 0; the blocks go with the inode.
    child.raw.i_links_count = 0;
    child.raw.i_size = 0;
    child.raw.i_size_high = 0;
  } else if (child.raw.i_links_count > 0) {
    child.raw.i_links_count--;
  }
  if (child.raw.i_links_count == 0) return impl.DropInode(g, hit->ino, child);
  return WriteInode(g, hit->ino, child);
}

Result<void> Filesystem::Unlink(Ino parent, std::string_view name) {
  return RemoveName(*impl_, parent, name, false);
}

Result<void> Filesystem::Rmdir(Ino parent, std::string_view name) {
  return RemoveName(*impl_, parent, name, true);
}

// ---- Rename -----------------------------------------------------------------------------

Result<void> Filesystem::Rename(Ino old_parent, std::string_view old_name, Ino new_parent,
                                std::string_view new_name, uint32_t flags) {
  if ((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) != 0 ||
      (flags & RENAME_WHITEOUT) != 0 ||
      ((flags & RENAME_NOREPLACE) != 0 && (flags & RENAME_EXCHANGE) != 0)) {
    return Unexpected(EINVAL);
  }
  const bool exchange = (flags & RENAME_EXCHANGE) != 0;
  if (impl_->read_only()) return Unexpected(EROFS);
  IOMAPFS_TRY(CheckName(old_name));
  IOMAPFS_TRY(CheckName(new_name));
  if (IsDots(old_name) || IsDots(new_name)) return Unexpected(EBUSY);
  Filesystem::Impl& impl = *impl_;
  ext2::Guard g = impl.fs->Lock();
  ext2_filsys fs = g.fs();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf odir, ReadParent(impl, g, old_parent));
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf ndir, ReadParent(impl, g, new_parent));
  auto ohit_r = impl.Check(g, impl.dirs.Find(g, old_parent, odir, old_name), old_parent, "rename");
  if (!ohit_r) return Unexpected(ohit_r.error());
  const std::optional<DirHit> ohit = *ohit_r;
  if (!ohit) return Unexpected(ENOENT);
  auto nhit_r = impl.Check(g, impl.dirs.Find(g, new_parent, ndir, new_name), new_parent, "rename");
  if (!nhit_r) return Unexpected(nhit_r.error());
  const std::optional<DirHit> nhit = *nhit_r;
  if (exchange && !nhit) return Unexpected(ENOENT);
  if ((flags & RENAME_NOREPLACE) != 0 && nhit) return Unexpected(EEXIST);
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf oinode, ReadInode(g, ohit->ino));
  if (nhit && nhit->ino == ohit->ino) return {};  // two names of one inode: nothing to do
  std::optional<InodeBuf> ninode;
  if (nhit) {
    IOMAPFS_ASSIGN_OR_RETURN(ninode, ReadInode(g, nhit->ino));
  }
  const bool old_is_dir = oinode.is_dir();
  const bool new_is_dir = ninode && ninode->is_dir();
  const bool cross = old_parent != new_parent;
  if (nhit && !exchange) {
    if (old_is_dir && !new_is_dir) return Unexpected(ENOTDIR);
    if (!old_is_dir && new_is_dir) return Unexpected(EISDIR);
  }
  if (Immutable(odir) || AppendOnly(odir) || Immutable(ndir) || Immutable(oinode) ||
      AppendOnly(oinode) || (ninode && (Immutable(*ninode) || AppendOnly(*ninode))) ||
      (nhit && AppendOnly(ndir))) {
    return Unexpected(EPERM);
  }
  if (old_is_dir && cross) IOMAPFS_TRY(CheckNotAncestor(g, impl, ohit->ino, new_parent));
  if (exchange && new_is_dir && cross) {
    IOMAPFS_TRY(CheckNotAncestor(g, impl, nhit->ino, old_parent));
  }
  if (nhit && !exchange && new_is_dir) {
    IOMAPFS_ASSIGN_OR_RETURN(bool empty, IsEmptyDir(g, nhit->ino, *ninode));
    if (!empty) return Unexpected(ENOTEMPTY);
  }
  if (cross) {
    if (!exchange && old_is_dir && !nhit && DirLinksFull(fs, ndir)) return Unexpected(EMLINK);
    if (exchange && old_is_dir && !new_is_dir && DirLinksFull(fs, ndir)) {
      return Unexpected(EMLINK);
    }
    if (exchange && new_is_dir && !old_is_dir && DirLinksFull(fs, odir)) {
      return Unexpected(EMLINK);
    }
  }

  const uint8_t oft = FileTypeOfMode(oinode.mode());
  const Timestamp now = Now();
  auto body = [&]() -> Result<void> {
    if (exchange) {
      const uint8_t nft = FileTypeOfMode(ninode->mode());
      IOMAPFS_TRY(RetargetEntry(g, new_parent, new_name, *nhit, ohit->ino, oft));
      IOMAPFS_TRY(RetargetEntry(g, old_parent, old_name, *ohit, nhit->ino, nft));
      impl.dirs.NoteAdded(g, new_parent, new_name, DirHit{ohit->ino, oft, -1});
      impl.dirs.NoteAdded(g, old_parent, old_name, DirHit{nhit->ino, nft, -1});
      if (cross && old_is_dir) IOMAPFS_TRY(SetDotDot(impl, g, ohit->ino, new_parent));
      if (cross && new_is_dir) IOMAPFS_TRY(SetDotDot(impl, g, nhit->ino, old_parent));
      for (Ino i : {ohit->ino, nhit->ino}) {
        IOMAPFS_ASSIGN_OR_RETURN(InodeBuf x, ReadInode(g, i));
        SetTime(x, TimeField::kCtime, now);
        IOMAPFS_TRY(WriteInode(g, i, x));
      }
      // ext4_update_dir_count(): a directory changed sides.
      IOMAPFS_ASSIGN_OR_RETURN(InodeBuf od, ReadInode(g, old_parent));
      if (cross && old_is_dir != new_is_dir) {
        if (old_is_dir) {
          DecLinks(od);
        } else {
          IncLinks(fs, od);
        }
      }
      TouchDir(od, now);
      IOMAPFS_TRY(WriteInode(g, old_parent, od));
      if (cross) {
        IOMAPFS_ASSIGN_OR_RETURN(InodeBuf nd, ReadInode(g, new_parent));
        if (old_is_dir != new_is_dir) {
          if (old_is_dir) {
            IncLinks(fs, nd);
          } else {
            DecLinks(nd);
          }
        }
        TouchDir(nd, now);
        IOMAPFS_TRY(WriteInode(g, new_parent, nd));
      }
      return {};
    }

    if (nhit) {
      IOMAPFS_TRY(RetargetEntry(g, new_parent, new_name, *nhit, ohit->ino, oft));
      impl.dirs.NoteAdded(g, new_parent, new_name, DirHit{ohit->ino, oft, -1});
    } else {
      IOMAPFS_ASSIGN_OR_RETURN(DirHit added, AddEntry(g, new_parent, new_name, ohit->ino, oft));
      impl.dirs.NoteAdded(g, new_parent, new_name, added);
    }
    // Adding may have reorganized a shared directory: a stale block hint only costs a scan.
    IOMAPFS_TRY(RemoveEntry(g, old_parent, old_name, *ohit));
    impl.dirs.NoteRemoved(g, old_parent, old_name);

    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf moved, ReadInode(g, ohit->ino));
    SetTime(moved, TimeField::kCtime, now);
    IOMAPFS_TRY(WriteInode(g, ohit->ino, moved));
    if (old_is_dir && cross) IOMAPFS_TRY(SetDotDot(impl, g, ohit->ino, new_parent));

    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf od, ReadInode(g, old_parent));
    if (old_is_dir) DecLinks(od);
    if (!cross && old_is_dir && !nhit) IncLinks(fs, od);
    TouchDir(od, now);
    IOMAPFS_TRY(WriteInode(g, old_parent, od));
    if (cross) {
      IOMAPFS_ASSIGN_OR_RETURN(InodeBuf nd, ReadInode(g, new_parent));
      if (old_is_dir && !nhit) IncLinks(fs, nd);
      TouchDir(nd, now);
      IOMAPFS_TRY(WriteInode(g, new_parent, nd));
    }

    if (nhit) {
      IOMAPFS_ASSIGN_OR_RETURN(InodeBuf victim, ReadInode(g, nhit->ino));
      SetTime(victim, TimeField::kCtime, now);
      if (new_is_dir) {
        victim.raw.i_links_count = 0;  // clear_nlink(): it was empty
      } else {
        DecLinks(victim);
      }
      if (victim.raw.i_links_count == 0) return impl.DropInode(g, nhit->ino, victim);
      return WriteInode(g, nhit->ino, victim);
    }
    return {};
  };
  return impl.Check(g, body(), old_parent, "rename");
}

}  // namespace iomapfs::ext4
