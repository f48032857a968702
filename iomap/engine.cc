#include "iomap/engine.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "iomap/extent_cache.h"
#include "iomap/layout.h"

namespace iomapfs::iomap {

struct Engine::Cache {
  Cache() : windows(kCacheInodes, kCacheRuns) {}
  ExtentCache windows;
  Stats stats;
};

namespace {

constexpr uint32_t kWriteOps = kOpWrite | kOpZero | kOpUnshare | kOpWriteback;

// Reads the inode of `ino`, failing for numbers outside the table and for unused inodes.
Result<void> ReadInode(const ext2::Guard& g, Ino ino, ext2_inode* inode) {
  uint64_t n = ino.value();
  if (n == 0 || n > g->super->s_inodes_count) return Unexpected(ENOENT);
  errcode_t err = ext2fs_read_inode(g.fs(), static_cast<ext2_ino_t>(n), inode);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  // Only an unused inode is refused here. Whether an unlinked inode is still live (kept open
  // by the kernel, on the orphan list with the next orphan in i_dtime) is the caller's decision.
  if (inode->i_mode == 0) return Unexpected(ENOENT);
  return {};
}

uint64_t CeilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

// The mapping for logical blocks [lblk, ...) read from window `w` (which contains lblk), ending
// no later than block `limit` (> lblk).
Mapping FromWindow(const Window& w, uint64_t lblk, uint64_t limit, uint32_t bs) {
  // The first run whose start is past lblk; the one before it may contain lblk.
  auto it = std::upper_bound(w.runs.begin(), w.runs.end(), lblk,
                             [](uint64_t b, const Run& r) { return b < r.lblk; });
  Mapping m;
  m.offset = lblk * bs;
  if (it != w.runs.begin() && std::prev(it)->end() > lblk) {
    const Run& r = *std::prev(it);
    uint64_t end = std::min(r.end(), limit);
    m.length = (end - lblk) * bs;
    m.addr = (r.pblk + (lblk - r.lblk)) * bs;
    m.type = r.type;
    return m;
  }
  uint64_t next = it != w.runs.end() ? it->lblk : w.end;
  uint64_t end = std::min(next, limit);
  m.length = (end - lblk) * bs;
  m.type = MappingType::kHole;
  return m;
}

}  // namespace

Engine::Engine(ext2::Ext2Fs& fs) : fs_(fs), cache_(std::make_unique<Cache>()) {}

Engine::~Engine() = default;

Result<Mapping> Engine::Map(const ext2::Guard& g, Ino ino, uint64_t pos, uint64_t len,
                            uint32_t opflags) {
  if ((opflags & kWriteOps) != 0) return Unexpected(EOPNOTSUPP);
  if (len == 0) return Unexpected(EINVAL);
  const uint64_t bs = fs_.block_size();
  // The largest block-aligned end a mapping can have without offset + length overflowing.
  const uint64_t max_end = std::numeric_limits<uint64_t>::max() / bs * bs;
  if (pos >= max_end) return Unexpected(EFBIG);

  ext2_inode inode;
  IOMAPFS_TRY(ReadInode(g, ino, &inode));
  const uint64_t isize = EXT2_I_SIZE(&inode);
  const uint64_t lblk = pos / bs;

  // want_blk: the first block boundary at or after pos + len, as a block number.
  uint64_t want_end = len > max_end - pos ? max_end : pos + len;
  const uint64_t want_blk = CeilDiv(want_end, bs);

  auto hole = [&](uint64_t start_blk, uint64_t end_blk) {
    Mapping m;
    m.offset = start_blk * bs;
    m.length = (end_blk - start_blk) * bs;
    m.type = MappingType::kHole;
    return m;
  };

  if ((inode.i_flags & EXT4_INLINE_DATA_FL) != 0) {
    if (pos < isize) {
      size_t capacity = 0;
      errcode_t err =
          ext2fs_inline_data_size(g.fs(), static_cast<ext2_ino_t>(ino.value()), &capacity);
      if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
      if (isize > capacity) return Unexpected(kEfsCorrupted);
      Mapping m;
      m.offset = 0;
      m.length = isize;
      m.type = MappingType::kInline;
      return m;
    }
    return hole(lblk, want_blk);
  }
  if (LINUX_S_ISLNK(inode.i_mode) && ext2fs_is_fast_symlink(&inode)) {
    return Unexpected(EINVAL);
  }

  const uint64_t size_blk = CeilDiv(isize, bs);
  if (lblk >= size_blk) return hole(lblk, want_blk);
  const uint64_t limit = std::min(want_blk, size_blk);

  const bool extents = (inode.i_flags & EXT4_EXTENTS_FL) != 0;
  const uint64_t lblk_limit = extents ? kExtentLblkLimit : IndirectLblkLimit(bs);
  Mapping m;
  if (lblk >= lblk_limit) {
    // Inside i_size but beyond what the format can address: nothing can be allocated there.
    m = hole(lblk, limit);
  } else {
    ext2_inode fp = ExtentCache::Fingerprint(inode);
    const Window* cached = cache_->windows.Find(ino.value(), fp, lblk);
    if (cached != nullptr) {
      ++cache_->stats.cache_hits;
      m = FromWindow(*cached, lblk, limit, static_cast<uint32_t>(bs));
    } else {
      Window w;
      if (extents) {
        IOMAPFS_ASSIGN_OR_RETURN(w, LoadExtentWindow(g, static_cast<ext2_ino_t>(ino.value()),
                                                     &inode, lblk, kWindowExtents));
      } else {
        uint64_t count = std::clamp(limit - lblk, kIndirectMinBlocks, kIndirectMaxBlocks);
        count = std::min({count, lblk_limit - lblk, size_blk - lblk});
        IOMAPFS_ASSIGN_OR_RETURN(
            w, LoadIndirectWindow(g, static_cast<ext2_ino_t>(ino.value()), &inode, lblk, count));
      }
      ++cache_->stats.windows_loaded;
      if (!w.Contains(lblk)) return Unexpected(kEfsCorrupted);  // a loader bug, not disk data
      m = FromWindow(w, lblk, limit, static_cast<uint32_t>(bs));
      cache_->windows.Insert(ino.value(), fp, std::move(w));
    }
  }
  // A hole that reaches EOF continues as the past-EOF hole.
  if (m.type == MappingType::kHole && m.end() == size_blk * bs && want_blk > size_blk) {
    m.length = (want_blk - lblk) * bs;
  }
  return m;
}

Result<std::vector<Mapping>> Engine::MapRange(const ext2::Guard& g, Ino ino, uint64_t pos,
                                              uint64_t len, uint32_t opflags) {
  if (len == 0) return Unexpected(EINVAL);
  const uint64_t bs = fs_.block_size();
  const uint64_t end = len > std::numeric_limits<uint64_t>::max() - pos
                           ? std::numeric_limits<uint64_t>::max()
                           : pos + len;
  std::vector<Mapping> out;
  uint64_t cur = pos;
  while (cur < end) {
    IOMAPFS_ASSIGN_OR_RETURN(Mapping m, Map(g, ino, cur, end - cur, opflags));
    if (m.end() <= cur) return Unexpected(kEfsCorrupted);  // no progress: never expected
    out.push_back(m);
    uint64_t next = m.end();
    if (m.type == MappingType::kInline) next = CeilDiv(next, bs) * bs;
    if (next <= cur) return Unexpected(kEfsCorrupted);
    cur = next;
  }
  return out;
}

Result<size_t> Engine::ReadInline(const ext2::Guard& g, Ino ino, uint64_t pos,
                                  std::span<std::byte> out) {
  ext2_inode inode;
  IOMAPFS_TRY(ReadInode(g, ino, &inode));
  if ((inode.i_flags & EXT4_INLINE_DATA_FL) == 0) return Unexpected(ENODATA);
  const uint64_t isize = EXT2_I_SIZE(&inode);
  auto n = static_cast<ext2_ino_t>(ino.value());
  size_t capacity = 0;
  errcode_t err = ext2fs_inline_data_size(g.fs(), n, &capacity);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  if (isize > capacity) return Unexpected(kEfsCorrupted);
  if (pos >= isize || out.empty()) return size_t{0};
  // ext2fs_inline_data_get copies the whole inline area (i_block and the system.data xattr).
  std::vector<std::byte> buf(std::max<size_t>(capacity, EXT4_MIN_INLINE_DATA_SIZE));
  size_t got = 0;
  err = ext2fs_inline_data_get(g.fs(), n, &inode, buf.data(), &got);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  if (got > buf.size() || got < isize) return Unexpected(kEfsCorrupted);
  size_t count = static_cast<size_t>(std::min<uint64_t>(out.size(), isize - pos));
  std::memcpy(out.data(), buf.data() + pos, count);
  return count;
}

void Engine::Invalidate(const ext2::Guard&, Ino ino) { cache_->windows.Erase(ino.value()); }

void Engine::InvalidateAll(const ext2::Guard&) { cache_->windows.Clear(); }

Engine::Stats Engine::stats(const ext2::Guard&) const {
  Stats s = cache_->stats;
  s.cached_inodes = cache_->windows.size();
  return s;
}

}  // namespace iomapfs::iomap
