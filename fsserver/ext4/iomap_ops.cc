// Filesystem operations for iomap mode (spec/fuse-iomap-protocol.md §4-§7, §14): geometry for
// FUSE_IOMAP_CONFIG, mappings for FUSE_IOMAP_BEGIN, allocation for write ops and conversion at
// FUSE_IOMAP_IOEND. All through the iomap Engine, under the metadata lock; device I/O (zeroing
// new blocks of indirect files) outside it.
#include <ext2fs/ext2fs.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ext2/block_device.h"
#include "ext2/inode_buf.h"
#include "ext2/transaction.h"
#include "fsserver/ext4/filesystem.h"
#include "fsserver/ext4/fs_impl.h"
#include "iomap/engine.h"

namespace iomapfs::ext4 {
namespace {

constexpr uint64_t kToEnd = std::numeric_limits<uint64_t>::max();
constexpr uint32_t kWriteOps =
    iomap::kOpWrite | iomap::kOpZero | iomap::kOpUnshare | iomap::kOpWriteback;

// ext4_max_size() (fs/ext4/super.c): the extent format's 32-bit logical block numbers, and
// without huge_file the 32-bit i_blocks count of 512-byte sectors.
uint64_t Ext4MaxSize(uint32_t blkbits, bool huge_file) {
  uint64_t upper = std::numeric_limits<int64_t>::max();
  if (!huge_file) upper = (((uint64_t{1} << 32) - 1) >> (blkbits - 9)) << blkbits;
  uint64_t res = ((uint64_t{1} << 32) - 1) << blkbits;
  return std::min(res, upper);
}

// Freed-block log per ext2_filsys (libext2fs's callbacks carry no context pointer of ours).
// The callbacks run under that filesystem's metadata lock; g_freed_mu is a leaf below it.
struct FreedLog {
  std::vector<std::pair<uint64_t, uint64_t>> blocks;  // {first block, count}
  void (*old_one)(ext2_filsys, blk64_t, int) = nullptr;
  void (*old_range)(ext2_filsys, blk64_t, blk_t, int) = nullptr;
};
std::mutex g_freed_mu;
std::unordered_map<ext2_filsys, FreedLog> g_freed;  // guarded by g_freed_mu

void RecordFreed(ext2_filsys fs, blk64_t blk, uint64_t num, int inuse, bool range) {
  void (*old_one)(ext2_filsys, blk64_t, int) = nullptr;
  void (*old_range)(ext2_filsys, blk64_t, blk_t, int) = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_freed_mu);
    auto it = g_freed.find(fs);
    if (it == g_freed.end()) return;
    if (inuse < 0 && num != 0) it->second.blocks.emplace_back(blk, num);
    old_one = it->second.old_one;
    old_range = it->second.old_range;
  }
  if (range && old_range != nullptr) old_range(fs, blk, static_cast<blk_t>(num), inuse);
  if (!range && old_one != nullptr) old_one(fs, blk, inuse);
}
void FreedOne(ext2_filsys fs, blk64_t blk, int inuse) { RecordFreed(fs, blk, 1, inuse, false); }
void FreedRange(ext2_filsys fs, blk64_t blk, blk_t num, int inuse) {
  if (inuse < 0 && num == 0 && fs->block_map != nullptr) {
    // libext2fs 1.47's ext2fs_block_alloc_stats_range() calls this with the range's END and a
    // count of 0 (it passes its loop variables after the loop). The bitmap is already updated,
    // so the freed range is the run of free blocks ending there; it may take in blocks that
    // were free before, which is harmless for DEV_INVAL. Bounded by the longest extent.
    constexpr blk64_t kMaxRun = 32768;
    blk64_t start = blk;
    while (start > fs->super->s_first_data_block && blk - start < kMaxRun &&
           !ext2fs_test_block_bitmap2(fs->block_map, start - 1)) {
      --start;
    }
    RecordFreed(fs, start, blk - start, inuse, true);
    return;
  }
  RecordFreed(fs, blk, num, inuse, true);
}

}  // namespace

void Filesystem::IomapTrackFreedBlocks() {
  ext2::Guard g = ext2fs().Lock();
  FreedLog log;
  ext2fs_set_block_alloc_stats_callback(g.fs(), FreedOne, &log.old_one);
  ext2fs_set_block_alloc_stats_range_callback(g.fs(), FreedRange, &log.old_range);
  if (log.old_one == FreedOne) log.old_one = nullptr;  // tracked twice: no self-chaining
  if (log.old_range == FreedRange) log.old_range = nullptr;
  std::lock_guard<std::mutex> lock(g_freed_mu);
  g_freed[g.fs()] = std::move(log);  // an ext2_filsys address reused by a later mount: reset
}

std::vector<std::pair<uint64_t, uint64_t>> Filesystem::IomapTakeFreedBlocks() {
  std::vector<std::pair<uint64_t, uint64_t>> blocks;
  {
    ext2::Guard g = ext2fs().Lock();
    std::lock_guard<std::mutex> lock(g_freed_mu);
    auto it = g_freed.find(g.fs());
    if (it == g_freed.end()) return {};
    blocks.swap(it->second.blocks);
  }
  std::sort(blocks.begin(), blocks.end());
  std::vector<std::pair<uint64_t, uint64_t>> out;
  const uint64_t bs = block_size();
  for (auto [blk, n] : blocks) {
    if (!out.empty() && out.back().first + out.back().second >= blk * bs) {
      out.back().second = std::max(out.back().second, (blk + n) * bs - out.back().first);
    } else {
      out.emplace_back(blk * bs, n * bs);
    }
  }
  return out;
}

Filesystem::IomapGeometry Filesystem::GetIomapGeometry() {
  IomapGeometry geo;
  ext2::Guard g = ext2fs().Lock();
  ext2_super_block* sb = g->super;
  geo.block_size = block_size();
  std::memcpy(geo.uuid, sb->s_uuid, sizeof(geo.uuid));
  std::memcpy(geo.volume_name, sb->s_volume_name, sizeof(sb->s_volume_name));
  uint32_t blkbits = static_cast<uint32_t>(__builtin_ctz(geo.block_size));
  geo.max_bytes = Ext4MaxSize(blkbits, ext2fs_has_feature_huge_file(sb));
  geo.max_links = 65000;  // EXT4_LINK_MAX
  geo.extents = ext2fs_has_feature_extents(sb);
  // ext4_fill_super(): nanosecond timestamps and the 34-bit range need i_atime_extra, the last
  // of the extra time fields (offset 0x8C + 4 = 144 bytes of inode).
  const uint32_t inode_size = EXT2_INODE_SIZE(sb);
  geo.time_min = std::numeric_limits<int32_t>::min();  // EXT4_TIMESTAMP_MIN
  if (inode_size >= 144) {
    geo.time_gran = 1;
    geo.time_max = geo.time_min + (int64_t{1} << 34) - 1;  // EXT4_EXTRA_TIMESTAMP_MAX
  } else {
    geo.time_gran = 1000000000;
    geo.time_max = std::numeric_limits<int32_t>::max();  // EXT4_NON_EXTRA_TIMESTAMP_MAX
  }
  return geo;
}

Result<iomap::Mapping> Filesystem::IomapRead(Ino ino, uint64_t pos, uint32_t opflags) {
  ext2::Guard g = ext2fs().Lock();
  IOMAPFS_TRY(ReadRegular(g, ino));
  return engine().Map(g, ino, pos, kToEnd - pos, opflags & iomap::kOpReport);
}

Result<std::vector<iomap::Mapping>> Filesystem::IomapWrite(Ino ino, uint64_t pos, uint64_t count,
                                                           uint32_t opflags, bool* allocated) {
  *allocated = false;
  if ((opflags & kWriteOps) == 0) return Unexpected(EINVAL);
  std::vector<iomap::Mapping> maps;
  std::vector<iomap::ZeroSpan> zero;
  {
    ext2::Guard g = ext2fs().Lock();
    IOMAPFS_ASSIGN_OR_RETURN(ext2::InodeBuf inode, ReadRegular(g, ino));
    IOMAPFS_ASSIGN_OR_RETURN(uint64_t max_size, engine().MaxFileSize(g, ino));
    if (pos >= max_size) return Unexpected(EFBIG);
    count = std::max<uint64_t>(1, std::min(count, max_size - pos));
    IOMAPFS_ASSIGN_OR_RETURN(iomap::Mapping m, engine().Map(g, ino, pos, kToEnd - pos, 0));
    // Only a hole needs storage, and never for ZERO (spec §4.4): zeroing a hole is a no-op.
    // Map() reports blocks past EOF as a hole even when an earlier BEGIN allocated them;
    // PrepareWrite finds those and returns them as they are.
    if (m.type != iomap::MappingType::kHole || (opflags & iomap::kOpZero) != 0) {
      return std::vector<iomap::Mapping>{m};
    }
    if (impl_->read_only()) return Unexpected(EROFS);
    ext2::Transaction tx(g);
    IOMAPFS_ASSIGN_OR_RETURN(maps, engine().PrepareWrite(tx, ino, pos, count));
    IOMAPFS_TRY(tx.Commit());
    *allocated = true;
    for (iomap::Mapping& n : maps) {
      n.flags |= iomap::kFlagDirty;
      // Indirect files get written (MAPPED) blocks: zero them before any mapping of them is
      // handed out, so that a failed or partial write never exposes old contents (§14.3).
      if (n.type == iomap::MappingType::kMapped && (n.flags & iomap::kFlagNew) != 0) {
        zero.push_back(iomap::ZeroSpan{n.addr, n.length});
      }
    }
  }
  if (!zero.empty()) {
    std::vector<std::byte> zeros(std::min<uint64_t>(1 << 20, block_size() * 256ull));
    for (const iomap::ZeroSpan& z : zero) {
      for (uint64_t done = 0; done < z.length;) {
        uint64_t n = std::min<uint64_t>(zeros.size(), z.length - done);
        IOMAPFS_TRY(ext2fs().data().WriteAt(std::span(zeros.data(), n), z.addr + done));
        done += n;
      }
    }
  }
  // The first mapping starts at the block containing pos (PrepareWrite covers
  // [floor(pos), ceil(pos + count))).
  if (maps.empty() || maps.front().offset > pos || maps.front().end() <= pos) {
    return Unexpected(kEfsCorrupted);
  }
  return maps;
}

Result<uint64_t> Filesystem::IomapIoend(Ino ino, uint64_t pos, uint64_t written, bool convert) {
  ext2::Guard g = ext2fs().Lock();
  IOMAPFS_ASSIGN_OR_RETURN(ext2::InodeBuf inode, ReadRegular(g, ino));
  uint64_t size = inode.size();
  if (written == 0 || (!convert && pos + written <= size)) return size;
  if (impl_->read_only()) return Unexpected(EROFS);
  ext2::Transaction tx(g);
  IOMAPFS_TRY(engine().CompleteWrite(tx, ino, pos, convert ? written : 0, pos + written));
  IOMAPFS_TRY(tx.Commit());
  IOMAPFS_ASSIGN_OR_RETURN(inode, ReadRegular(g, ino));
  return inode.size();
}

Result<uint64_t> Filesystem::IomapRaiseSize(Ino ino, uint64_t new_size) {
  ext2::Guard g = ext2fs().Lock();
  IOMAPFS_ASSIGN_OR_RETURN(ext2::InodeBuf inode, ReadRegular(g, ino));
  if (new_size <= inode.size()) return inode.size();
  if (impl_->read_only()) return Unexpected(EROFS);
  ext2::Transaction tx(g);
  IOMAPFS_TRY(engine().CompleteWrite(tx, ino, new_size, 0, new_size));
  IOMAPFS_TRY(tx.Commit());
  return new_size;
}

Result<std::vector<iomap::Mapping>> Filesystem::IomapFileMappings(Ino ino, size_t max_count) {
  std::vector<iomap::Mapping> out;
  if (max_count == 0) return out;
  ext2::Guard g = ext2fs().Lock();
  IOMAPFS_ASSIGN_OR_RETURN(ext2::InodeBuf inode, ReadRegular(g, ino));
  const uint64_t bs = block_size();
  const uint64_t end = (inode.size() + bs - 1) / bs * bs;
  for (uint64_t pos = 0; pos < end && out.size() < max_count;) {
    IOMAPFS_ASSIGN_OR_RETURN(iomap::Mapping m, engine().Map(g, ino, pos, end - pos, 0));
    if (m.end() <= pos) return Unexpected(kEfsCorrupted);  // no progress
    // An INLINE mapping ends at i_size; the rest of its block is past EOF.
    pos = m.type == iomap::MappingType::kInline ? std::max(m.end(), bs) : m.end();
    out.push_back(m);
  }
  return out;
}

int Filesystem::data_fd() {
  auto* dev = dynamic_cast<ext2::FdBlockDevice*>(&ext2fs().data());
  return dev == nullptr ? -1 : dev->fd();
}

uint64_t Filesystem::data_offset() { return ext2fs().options().offset; }

}  // namespace iomapfs::ext4
