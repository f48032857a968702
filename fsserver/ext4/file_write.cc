// File data writes (classic mode), fallocate and sync, through the iomap engine's write side
// (iomap/engine.h "The write protocol"): allocate under the metadata lock, move the data with
// one device write per mapping outside it, convert and size under the lock again. The
// per-inode lock is held across the three steps.
#include <linux/falloc.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ext2/transaction.h"
#include "fsserver/ext4/fs_impl.h"
#include "fsserver/ext4/inode_write.h"
#include "iomap/engine.h"

namespace iomapfs::ext4 {
namespace {

// One device write: data at `data_off` of the caller's buffer, zeros around it.
struct PendingWrite {
  uint64_t addr = 0;     // device byte address of buf[0]
  uint64_t length = 0;   // bytes to write
  uint64_t data_at = 0;  // offset in the write of the data part
  uint64_t data_off = 0;
  uint64_t data_len = 0;
};

// should_remove_suid(): S_ISUID always, S_ISGID only with group execute.
void KillSuid(InodeBuf& inode) {
  uint16_t mode = inode.raw.i_mode;
  mode &= static_cast<uint16_t>(~S_ISUID);
  if ((mode & S_IXGRP) != 0) mode &= static_cast<uint16_t>(~S_ISGID);
  inode.raw.i_mode = mode;
}

Result<void> WriteZeros(ext2::BlockDevice& dev, const std::vector<iomap::ZeroSpan>& spans) {
  if (spans.empty()) return {};
  std::vector<std::byte> zeros(1 << 20);
  for (const iomap::ZeroSpan& z : spans) {
    for (uint64_t done = 0; done < z.length;) {
      uint64_t n = std::min<uint64_t>(zeros.size(), z.length - done);
      IOMAPFS_TRY(dev.WriteAt(std::span(zeros.data(), n), z.addr + done));
      done += n;
    }
  }
  return {};
}

}  // namespace

Result<size_t> Filesystem::Write(Ino ino, uint64_t offset, std::span<const std::byte> data,
                                 bool append, bool kill_suid_sgid, bool update_times) {
  if (impl_->read_only()) return Unexpected(EROFS);
  Impl& impl = *impl_;
  std::lock_guard<std::mutex> inode_lock(impl.inode_locks.For(ino));
  const uint32_t bs = block_size();
  uint64_t pos = offset;
  uint64_t len = data.size();
  std::vector<PendingWrite> writes;
  {
    ext2::Guard g = impl.fs->Lock();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl.ReadLive(g, ino));
    if (inode.is_dir()) return Unexpected(EISDIR);
    if (!inode.is_reg()) return Unexpected(EINVAL);
    if ((inode.flags() & kFlagImmutable) != 0) return Unexpected(EPERM);
    if ((inode.flags() & kFlagAppend) != 0 && !append) return Unexpected(EPERM);
    if (append) pos = InodeSize(g.fs(), inode);
    if (len == 0) return size_t{0};
    IOMAPFS_ASSIGN_OR_RETURN(uint64_t max, impl.engine->MaxFileSize(g, ino));
    if (pos >= max) return Unexpected(EFBIG);
    len = std::min(len, max - pos);

    ext2::Transaction tx(g);
    auto prepared = impl.engine->PrepareWrite(tx, ino, pos, len);
    if (!prepared) return Unexpected(impl.Check(g, prepared, ino, "write").error());
    std::vector<iomap::Mapping> maps = std::move(*prepared);
    // file_modified(): the times (and suid) change when the write starts.
    auto stamp = [&]() -> Result<void> {
      if (!update_times && !kill_suid_sgid) return {};
      IOMAPFS_ASSIGN_OR_RETURN(InodeBuf now_inode, impl.ReadLive(g, ino));
      if (update_times) {
        Timestamp now = Now();
        SetTime(now_inode, TimeField::kMtime, now);
        SetTime(now_inode, TimeField::kCtime, now);
      }
      if (kill_suid_sgid) KillSuid(now_inode);
      return WriteInode(g, ino, now_inode);
    };
    if (maps.size() == 1 && maps[0].type == iomap::MappingType::kInline) {
      IOMAPFS_TRY(impl.engine->WriteInline(tx, ino, pos, data.subspan(0, len)));
      IOMAPFS_TRY(stamp());
      IOMAPFS_TRY(tx.Commit());
      return static_cast<size_t>(len);
    }
    IOMAPFS_TRY(stamp());
    IOMAPFS_TRY(tx.Commit());

    // One device write per mapping: the data, widened to the zeroes its NEW or UNWRITTEN edge
    // blocks need.
    std::vector<iomap::ZeroSpan> zero = iomap::Engine::WriteZeroSpans(maps, pos, len, bs);
    for (const iomap::Mapping& m : maps) {
      if (m.type != iomap::MappingType::kMapped && m.type != iomap::MappingType::kUnwritten) {
        return Unexpected(kEfsCorrupted);
      }
      uint64_t start = std::max(m.offset, pos);
      uint64_t stop = std::min(m.end(), pos + len);
      if (start >= stop) continue;
      PendingWrite w;
      uint64_t dstart = m.addr + (start - m.offset);
      uint64_t dstop = dstart + (stop - start);
      uint64_t lo = dstart, hi = dstop;
      for (const iomap::ZeroSpan& z : zero) {
        if (z.addr + z.length == dstart) lo = std::min(lo, z.addr);
        if (z.addr == dstop) hi = std::max(hi, z.addr + z.length);
      }
      w.addr = lo;
      w.length = hi - lo;
      w.data_at = dstart - lo;
      w.data_off = start - pos;
      w.data_len = stop - start;
      writes.push_back(w);
    }
  }

  // Data I/O outside the metadata lock.
  std::vector<std::byte> buf;
  for (const PendingWrite& w : writes) {
    if (w.length == w.data_len) {
      IOMAPFS_TRY(impl.fs->data().WriteAt(data.subspan(w.data_off, w.data_len), w.addr));
      continue;
    }
    buf.assign(w.length, std::byte{0});
    std::memcpy(buf.data() + w.data_at, data.data() + w.data_off, w.data_len);
    IOMAPFS_TRY(impl.fs->data().WriteAt(buf, w.addr));
  }

  {
    ext2::Guard g = impl.fs->Lock();
    ext2::Transaction tx(g);
    IOMAPFS_TRY(
        impl.Check(g, impl.engine->CompleteWrite(tx, ino, pos, len, pos + len), ino, "write"));
    IOMAPFS_TRY(tx.Commit());
  }
  return static_cast<size_t>(len);
}

Result<void> Filesystem::Fallocate(Ino ino, uint32_t mode, uint64_t offset, uint64_t length) {
  constexpr uint32_t kKnown = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
  if ((mode & ~kKnown) != 0) return Unexpected(EOPNOTSUPP);  // COLLAPSE, INSERT, UNSHARE, ...
  const bool punch = (mode & FALLOC_FL_PUNCH_HOLE) != 0;
  const bool zero = (mode & FALLOC_FL_ZERO_RANGE) != 0;
  const bool keep = (mode & FALLOC_FL_KEEP_SIZE) != 0;
  if (punch && (zero || !keep)) return Unexpected(EOPNOTSUPP);
  if (length == 0 || static_cast<int64_t>(offset) < 0 || static_cast<int64_t>(length) <= 0) {
    return Unexpected(EINVAL);
  }
  if (impl_->read_only()) return Unexpected(EROFS);
  Impl& impl = *impl_;
  std::lock_guard<std::mutex> inode_lock(impl.inode_locks.For(ino));
  std::vector<iomap::ZeroSpan> spans;
  {
    ext2::Guard g = impl.fs->Lock();
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, impl.ReadLive(g, ino));
    if (inode.is_dir()) return Unexpected(EISDIR);
    if (!inode.is_reg()) return Unexpected(ENODEV);
    if ((inode.flags() & kFlagImmutable) != 0) return Unexpected(EPERM);
    if ((inode.flags() & kFlagAppend) != 0 && (mode & ~FALLOC_FL_KEEP_SIZE) != 0) {
      return Unexpected(EPERM);
    }
    IOMAPFS_ASSIGN_OR_RETURN(uint64_t max, impl.engine->MaxFileSize(g, ino));
    if (offset + length > max || offset + length < offset) return Unexpected(EFBIG);
    const uint64_t old_size = InodeSize(g.fs(), inode);
    ext2::Transaction tx(g);
    bool times = true;
    // ext4_fallocate() converts inline data first, then wants extents: the engine does both
    // (an inline-data file is converted, or zeroed in place while it fits).
    const bool preallocatable = (inode.flags() & (EXT4_EXTENTS_FL | kFlagInlineData)) != 0;
    if (punch) {
      // ext4_punch_hole(): nothing at or past EOF; a range that runs past EOF is set to end
      // at the page-rounded EOF (which can extend it: punching [0, 68) of a 3-byte file frees
      // its block, as kernel ext4 does).
      if (offset >= old_size) {
        times = false;
      } else {
        constexpr uint64_t kPage = 4096;
        uint64_t end = offset + length;
        if (end > old_size) end = (old_size + kPage - 1) / kPage * kPage;
        auto punched = impl.engine->Punch(tx, ino, offset, end - offset);
        if (!punched) return Unexpected(impl.Check(g, punched, ino, "fallocate").error());
        spans = std::move(*punched);
      }
    } else if (zero) {
      if (!preallocatable) return Unexpected(EOPNOTSUPP);
      auto zeroed = impl.engine->ZeroRange(tx, ino, offset, length, keep);
      if (!zeroed) return Unexpected(impl.Check(g, zeroed, ino, "fallocate").error());
      spans = std::move(*zeroed);
    } else {
      if (!preallocatable) return Unexpected(EOPNOTSUPP);
      IOMAPFS_TRY(
          impl.Check(g, impl.engine->Allocate(tx, ino, offset, length, keep), ino, "fallocate"));
    }
    if (times) {
      IOMAPFS_ASSIGN_OR_RETURN(InodeBuf after, impl.ReadLive(g, ino));
      Timestamp now = Now();
      SetTime(after, TimeField::kCtime, now);
      // Allocation changes mtime only when it grows the file (ext4_alloc_file_blocks).
      if (punch || zero || InodeSize(g.fs(), after) > old_size) {
        SetTime(after, TimeField::kMtime, now);
      }
      IOMAPFS_TRY(WriteInode(g, ino, after));
    }
    IOMAPFS_TRY(tx.Commit());
  }
  return WriteZeros(impl.fs->data(), spans);
}

Result<void> Filesystem::Fsync(Ino ino, bool /*datasync*/) {
  {
    ext2::Guard g = impl_->fs->Lock();
    IOMAPFS_TRY(impl_->ReadLive(g, ino));
  }
  return impl_->fs->Sync();
}

Result<void> Filesystem::SyncFs() { return impl_->fs->Sync(); }

}  // namespace iomapfs::ext4
