#include "fsserver/ext4/filesystem.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "fsserver/ext4/acl.h"
#include "fsserver/ext4/directory.h"
#include "fsserver/ext4/fs_impl.h"
#include "fsserver/ext4/inode.h"
#include "fsserver/ext4/statfs.h"
#include "fsserver/ext4/xattr.h"
#include "iomap/engine.h"

namespace iomapfs::ext4 {
namespace {

// ext4_valid_inum(): what a directory entry may point at.
bool ValidDirentIno(ext2_filsys fs, Ino ino) {
  uint64_t n = ino.value();
  return n == EXT2_ROOT_INO || (n >= EXT2_FIRST_INO(fs->super) && n <= fs->super->s_inodes_count);
}

// One device read to do after the metadata lock is released.
struct PendingRead {
  std::span<std::byte> dst;
  uint64_t addr;
};

}  // namespace

Filesystem::Filesystem(std::unique_ptr<ext2::Ext2Fs> fs, const Options& options)
    : impl_(std::make_unique<Impl>(std::move(fs), options)) {}

Filesystem::~Filesystem() = default;

uint32_t Filesystem::block_size() const { return impl_->fs->block_size(); }
bool Filesystem::read_only() const { return impl_->mounted_read_only(); }
bool Filesystem::frozen() const { return impl_->fs->frozen(); }

Result<Attr> Filesystem::Lookup(Ino parent, std::string_view name) {
  if (name.size() > kMaxNameLen) return Unexpected(ENAMETOOLONG);
  if (name.empty()) return Unexpected(ENOENT);
  Attr attr;
  {
    ext2::Guard g = impl_->fs->Lock();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf dir, ReadInode(g, parent));
    if (!dir.is_dir()) return Unexpected(ENOTDIR);
    IOMAPFS_ASSIGN_OR_RETURN(std::optional<DirHit> hit, impl_->dirs.Find(g, parent, dir, name));
    if (!hit) return Unexpected(ENOENT);
    // ext4_lookup(): a bad inode number or a deleted inode behind a name is corruption.
    if (!ValidDirentIno(g.fs(), hit->ino)) return Unexpected(kEfsCorrupted);
    auto child = ReadInode(g, hit->ino);
    if (!child) return Unexpected(child.error() == ENOENT ? kEfsCorrupted : child.error());
    attr = AttrFromInode(g.fs(), hit->ino, *child);
  }
  impl_->Ref(attr.ino);
  return attr;
}

void Filesystem::Forget(Ino ino, uint64_t nlookup) {
  {
    std::lock_guard<std::mutex> lock(impl_->refs_mu);
    auto it = impl_->refs.find(ino);
    if (it == impl_->refs.end()) return;
    if (it->second > nlookup) {
      it->second -= nlookup;
      return;
    }
    impl_->refs.erase(it);
  }
  // The last reference went away: drop per-inode caches. A Lookup racing with this only loses a
  // cache, never correctness.
  ext2::Guard g = impl_->fs->Lock();
  impl_->engine->Invalidate(g, ino);
  impl_->dirs.Invalidate(g, ino);
  // An unlinked inode the kernel no longer references is freed now (ext4_evict_inode); while
  // frozen it stays an orphan until Thaw().
  if (impl_->orphans.count(ino.value()) != 0 && !impl_->fs->frozen()) {
    (void)impl_->Check(g, impl_->ReleaseOrphan(g, ino), ino, "Forget");
  }
}

Result<Attr> Filesystem::GetAttr(Ino ino) {
  ext2::Guard g = impl_->fs->Lock();
  return impl_->GetAttrLocked(g, ino);
}

Result<std::string> Filesystem::ReadLink(Ino ino) {
  const uint32_t bs = block_size();
  std::vector<std::byte> block;
  uint64_t addr = 0;
  size_t len = 0;
  {
    ext2::Guard g = impl_->fs->Lock();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl_->ReadLive(g, ino));
    if (!inode.is_symlink()) return Unexpected(EINVAL);
    if ((inode.flags() & kFlagEncrypt) != 0) return Unexpected(EOPNOTSUPP);
    uint64_t size = InodeSize(g.fs(), inode);
    // nd_terminate_link(): the target ends at i_size, at most a block minus the NUL, and at the
    // first NUL (readlink copies a C string).
    len = static_cast<size_t>(std::min<uint64_t>(size, bs - 1));
    if ((inode.flags() & kFlagInlineData) != 0) {
      std::vector<std::byte> buf(len);
      auto inl = impl_->engine->ReadInline(g, ino, 0, buf);
      if (!inl) return Unexpected(inl.error());
      size_t n = *inl;
      std::string target(reinterpret_cast<const char*>(buf.data()), n);
      return target.substr(0, strnlen(target.c_str(), n));
    }
    if (ext2fs_is_fast_symlink(inode.base())) {
      const char* p = reinterpret_cast<const char*>(inode.raw.i_block);
      len = std::min(len, sizeof(inode.raw.i_block));
      return std::string(p, strnlen(p, len));
    }
    if (len == 0) return std::string();
    auto mapped = impl_->engine->Map(g, ino, 0, len, 0);
    if (!mapped) return Unexpected(mapped.error());
    iomap::Mapping m = *mapped;
    if (m.type == iomap::MappingType::kUnwritten) return std::string();
    if (m.type != iomap::MappingType::kMapped) return Unexpected(kEfsCorrupted);  // "bad symlink"
    addr = m.addr;
  }
  block.resize(bs);
  IOMAPFS_TRY(impl_->fs->data().ReadAt(block, addr));
  const char* p = reinterpret_cast<const char*>(block.data());
  return std::string(p, strnlen(p, len));
}

Result<FileHandle> Filesystem::OpenDir(Ino ino) {
  auto snap = std::make_shared<DirSnapshot>();
  snap->dir = ino;
  {
    ext2::Guard g = impl_->fs->Lock();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl_->ReadLive(g, ino));
    if (!inode.is_dir()) return Unexpected(ENOTDIR);
    IOMAPFS_ASSIGN_OR_RETURN(snap->entries, ListDirectory(g, ino, inode));
  }
  uint64_t fh = impl_->next_fh.fetch_add(1);
  std::lock_guard<std::mutex> lock(impl_->handles_mu);
  impl_->dir_handles.emplace(fh, std::move(snap));
  return FileHandle(fh);
}

Result<void> Filesystem::ReadDir(Ino ino, FileHandle fh, uint64_t offset, bool plus,
                                 const DirEmit& emit) {
  std::shared_ptr<const DirSnapshot> snap;
  {
    std::lock_guard<std::mutex> lock(impl_->handles_mu);
    auto it = impl_->dir_handles.find(fh.value());
    if (it == impl_->dir_handles.end()) return Unexpected(EBADF);
    snap = it->second;
  }
  if (snap->dir != ino) return Unexpected(EBADF);
  for (uint64_t i = offset; i < snap->entries.size(); ++i) {
    const DirEntry& e = snap->entries[i];
    std::optional<Attr> attr;
    if (plus && e.name != "." && e.name != "..") {
      ext2::Guard g = impl_->fs->Lock();
      auto a = impl_->GetAttrLocked(g, e.ino);
      if (a) attr = *a;
    }
    if (!emit(e, attr ? &*attr : nullptr, i + 1)) break;
    if (attr) impl_->Ref(e.ino);
  }
  return {};
}

void Filesystem::ReleaseDir(FileHandle fh) {
  std::lock_guard<std::mutex> lock(impl_->handles_mu);
  impl_->dir_handles.erase(fh.value());
}

Result<FileHandle> Filesystem::Open(Ino ino, int flags) {
  bool write = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) != 0;
  {
    ext2::Guard g = impl_->fs->Lock();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl_->ReadLive(g, ino));
    if (inode.is_dir() && write) return Unexpected(EISDIR);
  }
  // A frozen filesystem still opens files for writing (the writes themselves are refused).
  if (write && impl_->mounted_read_only()) return Unexpected(EROFS);
  return FileHandle(impl_->next_fh.fetch_add(1));
}

void Filesystem::Release(FileHandle /*fh*/) {}

Result<size_t> Filesystem::Read(Ino ino, uint64_t offset, std::span<std::byte> buf) {
  if (buf.empty()) return size_t{0};
  std::vector<PendingRead> reads;
  size_t len = 0;
  {
    ext2::Guard g = impl_->fs->Lock();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl_->ReadLive(g, ino));
    if (inode.is_dir()) return Unexpected(EISDIR);
    uint64_t size = InodeSize(g.fs(), inode);
    if (offset >= size) return size_t{0};
    len = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - offset));
    auto ranged = impl_->engine->MapRange(g, ino, offset, len, 0);
    if (!ranged) return Unexpected(impl_->Check(g, std::move(ranged), ino, "read").error());
    std::vector<iomap::Mapping> maps = std::move(*ranged);
    const uint64_t end = offset + len;
    for (const iomap::Mapping& m : maps) {
      uint64_t start = std::max(m.offset, offset);
      uint64_t stop = std::min(m.end(), end);
      if (start >= stop) continue;
      std::span<std::byte> dst = buf.subspan(start - offset, stop - start);
      switch (m.type) {
        case iomap::MappingType::kMapped:
          reads.push_back(PendingRead{dst, m.addr + (start - m.offset)});
          break;
        case iomap::MappingType::kInline: {
          auto inl = impl_->engine->ReadInline(g, ino, start, dst);
          if (!inl) return Unexpected(inl.error());
          size_t n = *inl;
          std::memset(dst.data() + n, 0, dst.size() - n);
          break;
        }
        default:  // HOLE, UNWRITTEN (and DELALLOC, never produced): zeroes
          std::memset(dst.data(), 0, dst.size());
          break;
      }
    }
  }
  // Data I/O outside the metadata lock: one device read per mapped extent.
  for (const PendingRead& r : reads) IOMAPFS_TRY(impl_->fs->data().ReadAt(r.dst, r.addr));
  return len;
}

Result<uint64_t> Filesystem::Lseek(Ino ino, uint64_t offset, int whence) {
  ext2::Guard g = impl_->fs->Lock();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl_->ReadLive(g, ino));
  if (!inode.is_reg()) return Unexpected(EINVAL);
  const uint64_t size = InodeSize(g.fs(), inode);
  switch (whence) {
    case SEEK_SET:
      return offset;
    case SEEK_END: {
      auto delta = static_cast<int64_t>(offset);
      if (delta < 0 && static_cast<uint64_t>(-delta) > size) return Unexpected(EINVAL);
      return size + offset;
    }
    case SEEK_DATA:
    case SEEK_HOLE:
      break;
    default:
      return Unexpected(EINVAL);
  }
  if (offset >= size) return Unexpected(ENXIO);
  uint64_t pos = offset;
  while (pos < size) {
    auto mapped = impl_->engine->Map(g, ino, pos, size - pos, iomap::kOpReport);
    if (!mapped) return Unexpected(mapped.error());
    iomap::Mapping m = *mapped;
    // iomap_seek_data/hole: without dirty page cache an unwritten extent reads as a hole.
    bool data = m.type == iomap::MappingType::kMapped || m.type == iomap::MappingType::kInline ||
                m.type == iomap::MappingType::kDelalloc;
    if (data == (whence == SEEK_DATA)) return pos;
    if (m.end() <= pos) return Unexpected(kEfsCorrupted);  // no progress
    pos = m.end();
  }
  if (whence == SEEK_DATA) return Unexpected(ENXIO);
  return size;  // the implicit hole at EOF
}

Result<ext4::StatFs> Filesystem::StatFs() {
  ext2::Guard g = impl_->fs->Lock();
  return ComputeStatFs(g);
}

Result<std::vector<std::byte>> Filesystem::GetXattr(Ino ino, std::string_view name) {
  ext2::Guard g = impl_->fs->Lock();
  IOMAPFS_TRY(impl_->ReadLive(g, ino));
  return ReadXattr(g, ino, name);
}

Result<std::vector<std::string>> Filesystem::ListXattr(Ino ino) {
  ext2::Guard g = impl_->fs->Lock();
  IOMAPFS_TRY(impl_->ReadLive(g, ino));
  return ListXattrNames(g, ino);
}

Result<void> Filesystem::Access(Ino ino, int mask, const Caller& caller) {
  Caller who = caller;
  if (impl_->options.fakeroot) {
    who.uid = 0;
    who.gid = 0;
  }
  ext2::Guard g = impl_->fs->Lock();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl_->ReadLive(g, ino));
  Ownership owner{inode.mode(), inode_uid(inode.raw), inode_gid(inode.raw)};
  if ((mask & W_OK) != 0) {
    // inode_permission(): read-only filesystem for files, dirs and links; then immutable.
    uint32_t fmt = inode.mode() & LINUX_S_IFMT;
    if (impl_->mounted_read_only() &&
        (fmt == LINUX_S_IFREG || fmt == LINUX_S_IFDIR || fmt == LINUX_S_IFLNK)) {
      return Unexpected(EROFS);
    }
    if ((inode.flags() & kFlagImmutable) != 0) return Unexpected(EPERM);
  }
  std::optional<Acl> acl;
  // The ACL matters only for a non-owner when group bits are set (acl_permission_check).
  if (owner.uid != who.uid && (owner.mode & 0070) != 0) {
    IOMAPFS_ASSIGN_OR_RETURN(acl, ReadAccessAcl(g, ino));
  }
  return CheckPermission(owner, acl ? &*acl : nullptr, mask, who, impl_->options.fakeroot);
}

// For the iomap operations (iomap_ops.cc).
ext2::Ext2Fs& Filesystem::ext2fs() { return *impl_->fs; }
iomap::Engine& Filesystem::engine() { return *impl_->engine; }

Result<ext2::InodeBuf> Filesystem::ReadRegular(const ext2::Guard& g, Ino ino) {
  IOMAPFS_ASSIGN_OR_RETURN(ext2::InodeBuf inode,
                           ext2::InodeBuf::Read(g, static_cast<ext2_ino_t>(ino.value())));
  const ext2_inode* i = inode.base();
  // Deleted, unless it is an orphan this server keeps alive for the kernel (its i_dtime then
  // links the orphan list).
  if (i->i_mode == 0 ||
      (i->i_links_count == 0 && i->i_dtime != 0 && impl_->orphans.count(ino.value()) == 0)) {
    return Unexpected(ENOENT);
  }
  if (!LINUX_S_ISREG(i->i_mode)) return Unexpected(EINVAL);
  return inode;
}

Result<void> Filesystem::Freeze(uint64_t unlinked) {
  {
    ext2::Guard g = impl_->fs->Lock();
    const bool no_orphans = impl_->orphans.empty() && unlinked == 0;
    IOMAPFS_TRY(impl_->fs->FreezeLocked(g, no_orphans));
  }
  return impl_->fs->Sync();
}

Result<void> Filesystem::Thaw() {
  Result<void> first;
  {
    ext2::Guard g = impl_->fs->Lock();
    if (!impl_->fs->frozen()) return {};
    IOMAPFS_TRY(impl_->fs->ThawLocked(g));
    // Orphans whose last reference went while frozen (Forget() kept them).
    std::vector<uint64_t> orphans(impl_->orphans.begin(), impl_->orphans.end());
    for (uint64_t n : orphans) {
      if (impl_->Referenced(Ino(n))) continue;
      auto r = impl_->Check(g, impl_->ReleaseOrphan(g, Ino(n)), Ino(n), "Thaw");
      if (!r && first) first = r;
    }
  }
  Result<void> synced = impl_->fs->Sync();
  if (!first) return first;
  return synced;
}

Result<void> Filesystem::Close() {
  {
    std::lock_guard<std::mutex> lock(impl_->handles_mu);
    impl_->dir_handles.clear();
  }
  Result<void> first;
  if (impl_->fs->frozen()) first = Thaw();  // unmounted while frozen
  if (!read_only()) {
    // Every orphan dies with the mount, as at kernel ext4's unmount.
    ext2::Guard g = impl_->fs->Lock();
    std::vector<uint64_t> orphans(impl_->orphans.begin(), impl_->orphans.end());
    for (uint64_t n : orphans) {
      auto r = impl_->ReleaseOrphan(g, Ino(n));
      if (!r && first) first = r;
    }
  }
  auto closed = impl_->fs->Close();
  if (!first) return first;
  return closed;
}

}  // namespace iomapfs::ext4
