// The write side of the Engine: allocation for writes, unwritten conversion, truncate, punch,
// fallocate and zero range. See engine.h for the contracts.
#include <algorithm>
#include <cstring>
#include <limits>

#include "base/log.h"
#include "ext2/inode_buf.h"
#include "iomap/engine.h"
#include "iomap/extent_cache.h"
#include "iomap/extent_tree.h"
#include "iomap/layout.h"

// Exported by libext2fs 1.47 but declared only in its private header.
extern "C" errcode_t ext2fs_inline_data_expand(ext2_filsys fs, ext2_ino_t ino);

namespace iomapfs::iomap {
namespace {

using ext2::InodeBuf;
using ext2::Transaction;

uint64_t CeilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

ext2_ino_t Raw(Ino ino) { return static_cast<ext2_ino_t>(ino.value()); }

Result<void> FromErrcode(errcode_t err) {
  if (err == 0) return {};
  if (err == EXT2_ET_BLOCK_ALLOC_FAIL) return Unexpected(ENOSPC);
  return Unexpected(ext2::ErrnoFromErrcode(err));
}

// Reads the inode a write-side operation works on.
Result<InodeBuf> ReadForWrite(const ext2::Guard& g, Ino ino) {
  if (g.owner().read_only()) return Unexpected(EROFS);
  uint64_t n = ino.value();
  if (n == 0 || n > g->super->s_inodes_count) return Unexpected(ENOENT);
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, InodeBuf::Read(g, static_cast<ext2_ino_t>(n)));
  const ext2_inode* i = inode.base();
  // Liveness of unlinked (orphan) inodes is the caller's decision, as in ReadInode (engine.cc).
  if (i->i_mode == 0) return Unexpected(ENOENT);
  if (LINUX_S_ISDIR(i->i_mode)) return Unexpected(EISDIR);
  if (LINUX_S_ISLNK(i->i_mode) && !inode.has_inline_data() &&
      ext2fs_is_fast_symlink(const_cast<ext2_inode*>(i))) {
    return Unexpected(EINVAL);
  }
  return inode;
}

// ext4_max_size() / ext4_max_bitmap_size() (fs/ext4/super.c), in bytes.
uint64_t MaxSizeOf(ext2_filsys fs, const InodeBuf& inode) {
  const uint64_t bs = fs->blocksize;
  uint64_t res = inode.has_extents() || inode.has_inline_data()
                     ? ((1ull << 32) - 1) * bs
                     : IndirectLblkLimit(static_cast<uint32_t>(bs)) * bs;
  if (!ext2fs_has_feature_huge_file(fs->super)) {
    // i_blocks is 32 bits of 512-byte sectors.
    uint64_t upper = ((1ull << 32) - 1) * 512 / bs * bs;
    res = std::min(res, upper);
  }
  return std::min<uint64_t>(res, std::numeric_limits<int64_t>::max());
}

Result<void> CheckRange(ext2_filsys fs, const InodeBuf& inode, uint64_t pos, uint64_t len) {
  if (len == 0) return Unexpected(EINVAL);
  uint64_t max = MaxSizeOf(fs, inode);
  if (pos >= max || len > max - pos) return Unexpected(EFBIG);
  return {};
}

// Marks data blocks [pblk, pblk + n) in use by `inode` / free again.
Result<void> Claim(Transaction& tx, InodeBuf& inode, uint64_t pblk, uint64_t n) {
  ext2fs_block_alloc_stats_range(tx.fs(), pblk, static_cast<blk_t>(n), +1);
  tx.NoteAllocation();
  return FromErrcode(ext2fs_iblk_add_blocks(tx.fs(), inode.base(), n));
}

Result<void> Release(Transaction& tx, InodeBuf& inode, uint64_t pblk, uint64_t n) {
  ext2fs_block_alloc_stats_range(tx.fs(), pblk, static_cast<blk_t>(n), -1);
  tx.NoteAllocation();
  return FromErrcode(ext2fs_iblk_sub_blocks(tx.fs(), inode.base(), n));
}

// Writes the inode whatever happened before (blocks may have been claimed or a tree block
// allocated even when the operation failed, and i_blocks must say so), unless it is unchanged
// (an overwrite of written blocks changes nothing: no metadata write).
template <class T>
Result<T> Finish(Transaction& tx, Ino ino, InodeBuf& inode, Result<T> r) {
  Result<void> w;
  auto on_disk = InodeBuf::Read(tx.guard(), Raw(ino));
  if (!on_disk || !on_disk->SameBytes(inode)) w = tx.WriteInode(Raw(ino), inode);
  if (!r) return r;
  if (!w) return Unexpected(w.error());
  return r;
}

// ---- Inline data.

// Bytes the inline area of `ino` can hold: i_block plus the room the system.data xattr value
// can grow to inside the inode (ext2fs_inline_data_set's own rule, rounded as xattr values are).
Result<uint64_t> InlineCapacityOf(const ext2::Guard& g, ext2_ino_t ino) {
  size_t existing = 0;
  errcode_t err = ext2fs_inline_data_size(g.fs(), ino, &existing);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  size_t free_ea = 0;
  if (ext2fs_xattr_inode_max_size(g.fs(), ino, &free_ea) != 0) free_ea = 0;
  uint64_t ea = existing > EXT4_MIN_INLINE_DATA_SIZE ? existing - EXT4_MIN_INLINE_DATA_SIZE : 0;
  uint64_t cap = EXT4_MIN_INLINE_DATA_SIZE + (ea + 3) / 4 * 4 + free_ea / 4 * 4;
  return std::max<uint64_t>(cap, existing);
}

// The inline area's bytes (its whole capacity in use, at least 60).
Result<std::vector<char>> InlineGet(const ext2::Guard& g, ext2_ino_t ino, InodeBuf& inode) {
  size_t existing = 0;
  errcode_t err = ext2fs_inline_data_size(g.fs(), ino, &existing);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  std::vector<char> buf(std::max<size_t>(existing, EXT4_MIN_INLINE_DATA_SIZE) + 4, 0);
  size_t got = 0;
  err = ext2fs_inline_data_get(g.fs(), ino, inode.base(), buf.data(), &got);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  if (got > buf.size()) return Unexpected(kEfsCorrupted);
  buf.resize(std::max<size_t>(got, EXT4_MIN_INLINE_DATA_SIZE));
  return buf;
}

// Rewrites the inline area of `ino` as: its bytes below min(i_size, new_size), `data` at
// `data_pos`, zeros in [zero_from, zero_to) and past new_size; then sets i_size = new_size.
// REQUIRES: new_size and data_pos + data.size() <= InlineCapacityOf().
Result<void> RewriteInline(Transaction& tx, Ino ino, uint64_t new_size, uint64_t data_pos,
                           std::span<const std::byte> data, uint64_t zero_from, uint64_t zero_to) {
  const ext2::Guard& g = tx.guard();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, InodeBuf::Read(g, Raw(ino)));
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<char> buf, InlineGet(g, Raw(ino), inode));
  const uint64_t old_size = inode.size();
  if (old_size > buf.size()) return Unexpected(kEfsCorrupted);  // i_size past the inline area
  uint64_t len = std::max<uint64_t>({buf.size(), new_size, data_pos + data.size()});
  buf.resize(len, 0);
  // Bytes past the old EOF are zero already by invariant; make sure.
  if (old_size < len) std::memset(buf.data() + old_size, 0, len - old_size);
  if (!data.empty()) std::memcpy(buf.data() + data_pos, data.data(), data.size());
  zero_to = std::min(zero_to, len);
  if (zero_from < zero_to) std::memset(buf.data() + zero_from, 0, zero_to - zero_from);
  if (new_size < len) std::memset(buf.data() + new_size, 0, len - new_size);
  errcode_t err = ext2fs_inline_data_set(g.fs(), Raw(ino), inode.base(), buf.data(), len);
  if (err == EXT2_ET_INLINE_DATA_NO_SPACE || err == EXT2_ET_EA_NO_SPACE) {
    return Unexpected(ENOSPC);
  }
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  tx.NoteInode(Raw(ino));
  // The xattr update rewrote the inode behind our copy: start again from the disk.
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf fresh, InodeBuf::Read(g, Raw(ino)));
  IOMAPFS_TRY(fresh.SetSize(g, new_size));
  return tx.WriteInode(Raw(ino), fresh);
}

// Converts an inline-data file to a block-mapped one (extents if the filesystem has them), as
// ext4 does when inline data outgrows the inode. i_size is kept; the rest of the new block
// reads as zeros. Returns: the inode as it is now (for writing, as ReadForWrite).
Result<InodeBuf> ExpandInline(Transaction& tx, Ino ino) {
  const ext2::Guard& g = tx.guard();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, InodeBuf::Read(g, Raw(ino)));
  const uint64_t size = inode.size();
  // ext2fs_inline_data_expand copies the whole inline area and sets i_size to its length: zero
  // what lies past EOF first, then restore i_size.
  IOMAPFS_TRY(RewriteInline(tx, ino, size, 0, {}, size, size));
  errcode_t err = ext2fs_inline_data_expand(g.fs(), Raw(ino));
  if (err != 0) {
    LOG_WARNING("inode %u: converting inline data to blocks: %s", Raw(ino), error_message(err));
    return Unexpected(FromErrcode(err).error());
  }
  tx.NoteInode(Raw(ino));
  tx.NoteAllocation();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf fresh, InodeBuf::Read(g, Raw(ino)));
  IOMAPFS_TRY(fresh.SetSize(g, size));
  IOMAPFS_TRY(tx.WriteInode(Raw(ino), fresh));
  return ReadForWrite(g, ino);
}

// ---- Extent files.

// Where to look for blocks for the hole starting at logical block h: right after the physical
// end of the extent before it, else so that the next extent's offset is kept, else the inode's
// group (ext2fs_find_inode_goal).
Result<uint64_t> ExtentGoal(ExtentTree& t, ext2_filsys fs, Ino ino, InodeBuf& inode, uint64_t h) {
  const uint64_t first = fs->super->s_first_data_block;
  const uint64_t count = ext2fs_blocks_count(fs->super);
  uint64_t goal = 0;
  IOMAPFS_ASSIGN_OR_RETURN(std::optional<Extent> prev, t.Before(h));
  if (prev) {
    goal = prev->pblk + prev->len;
  } else {
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<Extent> next, t.List(h, kExtentLblkLimit));
    if (!next.empty() && next[0].pblk >= first + (next[0].lblk - h)) {
      goal = next[0].pblk - (next[0].lblk - h);
    } else {
      goal = ext2fs_find_inode_goal(fs, Raw(ino), inode.base(), h);
    }
  }
  if (goal < first || goal >= count) goal = first;
  return goal;
}

// The holes of logical blocks [a, b) given the extents overlapping it, in order.
std::vector<std::pair<uint64_t, uint64_t>> Holes(const std::vector<Extent>& exts, uint64_t a,
                                                 uint64_t b) {
  std::vector<std::pair<uint64_t, uint64_t>> holes;
  uint64_t cur = a;
  for (const Extent& e : exts) {
    if (e.lblk > cur) holes.emplace_back(cur, std::min(e.lblk, b));
    cur = std::max(cur, e.end());
  }
  if (cur < b) holes.emplace_back(cur, b);
  return holes;
}

// Allocates UNWRITTEN extents for every hole of [a, b). With `merge`, new extents join their
// unwritten neighbours and a failure keeps what was allocated; without it each new extent stays
// separate (listed in *allocated) and a failure removes them all again.
Result<void> AllocateHoles(Transaction& tx, ExtentTree& t, Ino ino, InodeBuf& inode, uint64_t a,
                           uint64_t b, bool merge, std::vector<Extent>* allocated) {
  ext2_filsys fs = tx.fs();
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<Extent> exts, t.List(a, b));
  auto holes = Holes(exts, a, b);
  uint64_t need = 0;
  for (const auto& [h, he] : holes) need += he - h;
  if (need == 0) return {};
  // Data blocks plus a split of every tree level (ext4 reserves metadata blocks the same way).
  if (need + static_cast<uint64_t>(t.depth()) + 2 > ext2fs_free_blocks_count(fs->super)) {
    return Unexpected(ENOSPC);
  }
  std::vector<Extent> mine;
  auto rollback = [&]() {
    if (merge) return;
    for (auto it = mine.rbegin(); it != mine.rend(); ++it) {
      if (!t.Reshape(*it, {}) || !Release(tx, inode, it->pblk, it->len)) {
        LOG_ERROR("inode %u: could not undo an allocation at block %llu", Raw(ino),
                  static_cast<unsigned long long>(it->lblk));
      }
    }
    mine.clear();
  };
  for (const auto& [h, he] : holes) {
    auto goal = ExtentGoal(t, fs, ino, inode, h);
    if (!goal) {
      rollback();
      return Unexpected(goal.error());
    }
    uint64_t next_goal = *goal;
    for (uint64_t l = h; l < he;) {
      uint64_t want = std::min(he - l, kMaxUninitLen);
      blk64_t pblk = 0, plen = 0;
      errcode_t err = ext2fs_new_range(fs, 0, next_goal, want, nullptr, &pblk, &plen);
      if (err != 0) {
        rollback();
        return FromErrcode(err);
      }
      plen = std::min<blk64_t>(plen, want);
      Result<void> r = Claim(tx, inode, pblk, plen);
      Extent e{l, plen, pblk, /*uninit=*/true};
      if (r) r = t.Insert(e, merge);
      if (!r) {
        (void)Release(tx, inode, pblk, plen);
        rollback();
        return r;
      }
      mine.push_back(e);
      l += plen;
      next_goal = pblk + plen;
    }
  }
  if (allocated != nullptr) allocated->insert(allocated->end(), mine.begin(), mine.end());
  return {};
}

// Splits the UNWRITTEN extent containing block `edge` (if it starts before it) at `edge`.
Result<void> SplitUnwrittenAt(ExtentTree& t, uint64_t edge) {
  if (edge == 0 || edge >= kExtentLblkLimit) return {};
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<Extent> at, t.List(edge, edge + 1));
  if (at.empty() || !at[0].uninit || at[0].lblk >= edge) return {};
  const Extent& e = at[0];
  uint64_t left = edge - e.lblk;
  return t.Reshape(
      e, {Extent{e.lblk, left, e.pblk, true}, Extent{edge, e.len - left, e.pblk + left, true}});
}

// Frees logical blocks [a, b) of an extent file.
Result<void> RemoveBlocks(Transaction& tx, ExtentTree& t, InodeBuf& inode, uint64_t a, uint64_t b) {
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<Extent> exts, t.List(a, b));
  for (const Extent& e : exts) {
    uint64_t x = std::max(e.lblk, a);
    uint64_t y = std::min(e.end(), b);
    std::vector<Extent> kept;
    if (e.lblk < x) kept.push_back(Extent{e.lblk, x - e.lblk, e.pblk, e.uninit});
    if (y < e.end()) kept.push_back(Extent{y, e.end() - y, e.pblk + (y - e.lblk), e.uninit});
    IOMAPFS_TRY(t.Reshape(e, kept));
    IOMAPFS_TRY(Release(tx, inode, e.pblk + (x - e.lblk), y - x));
  }
  return {};
}

// Converts the extents overlapping [a, b) to `uninit`, splitting at the edges (and, for
// unwritten extents, at EXT_UNINIT_MAX_LEN) and merging the result with its neighbours. An
// extent whose split would need a tree block on a full filesystem goes to *no_room instead,
// unchanged.
Result<void> ConvertRange(ExtentTree& t, uint64_t a, uint64_t b, bool uninit,
                          std::vector<Extent>* no_room) {
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<Extent> exts, t.List(a, b));
  for (const Extent& e : exts) {
    if (e.uninit == uninit) continue;
    uint64_t x = std::max(e.lblk, a);
    uint64_t y = std::min(e.end(), b);
    std::vector<Extent> pieces;
    if (e.lblk < x) pieces.push_back(Extent{e.lblk, x - e.lblk, e.pblk, e.uninit});
    for (uint64_t l = x; l < y;) {
      uint64_t n = std::min(y - l, uninit ? kMaxUninitLen : kMaxInitLen);
      pieces.push_back(Extent{l, n, e.pblk + (l - e.lblk), uninit});
      l += n;
    }
    if (y < e.end()) pieces.push_back(Extent{y, e.end() - y, e.pblk + (y - e.lblk), e.uninit});
    if (pieces.size() > 1) {
      IOMAPFS_ASSIGN_OR_RETURN(bool room, t.CanGrow(e.lblk, static_cast<int>(pieces.size()) - 1));
      if (!room) {
        no_room->push_back(e);
        continue;
      }
    }
    IOMAPFS_TRY(t.Reshape(e, pieces));
    IOMAPFS_TRY(t.MergeAround(x));
  }
  return {};
}

// Byte mappings of [lb, le) (blocks) from `exts`; blocks of extents in `fresh` get kFlagNew.
std::vector<Mapping> ExtentMappings(const std::vector<Extent>& exts, uint64_t lb, uint64_t le,
                                    uint64_t bs, const std::vector<Extent>& fresh) {
  std::vector<Mapping> out;
  auto push = [&](Mapping m) {
    if (!out.empty()) {
      Mapping& last = out.back();
      bool contiguous =
          last.end() == m.offset &&
          (m.addr == kNullAddr ? last.addr == kNullAddr : last.addr + last.length == m.addr);
      if (last.type == m.type && last.flags == m.flags && contiguous) {
        last.length += m.length;
        return;
      }
    }
    out.push_back(m);
  };
  uint64_t cur = lb;
  for (const Extent& e : exts) {
    uint64_t a = std::max(e.lblk, lb);
    uint64_t b = std::min(e.end(), le);
    if (a >= b) continue;
    if (a > cur) push(Mapping{cur * bs, (a - cur) * bs, kNullAddr, MappingType::kHole, 0});
    bool is_new = std::any_of(fresh.begin(), fresh.end(), [&](const Extent& f) {
      return f.lblk <= a && b <= f.end() && f.pblk - f.lblk == e.pblk - e.lblk;
    });
    push(Mapping{a * bs, (b - a) * bs, (e.pblk + (a - e.lblk)) * bs,
                 e.uninit ? MappingType::kUnwritten : MappingType::kMapped,
                 static_cast<uint16_t>(is_new ? kFlagNew : 0)});
    cur = b;
  }
  if (cur < le) push(Mapping{cur * bs, (le - cur) * bs, kNullAddr, MappingType::kHole, 0});
  return out;
}

// The device address of logical block `lblk` if it is written (MAPPED), else kNullAddr.
Result<uint64_t> WrittenAddr(const ext2::Guard& g, Ino ino, InodeBuf& inode, ExtentTree* t,
                             uint64_t lblk) {
  const uint64_t bs = g->blocksize;
  if (t != nullptr) {
    if (lblk >= kExtentLblkLimit) return kNullAddr;
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<Extent> at, t->List(lblk, lblk + 1));
    if (at.empty() || at[0].uninit) return kNullAddr;
    return (at[0].pblk + (lblk - at[0].lblk)) * bs;
  }
  if (lblk >= IndirectLblkLimit(static_cast<uint32_t>(bs))) return kNullAddr;
  std::vector<char> buf(bs * 3);
  blk64_t pblk = 0;
  errcode_t err = ext2fs_bmap2(g.fs(), Raw(ino), inode.base(), buf.data(), 0, lblk, nullptr, &pblk);
  if (err != 0) return Unexpected(WalkErrno(err));
  if (pblk == 0) return kNullAddr;
  if (!PhysicalRangeValid(g.fs(), pblk, 1)) return Unexpected(kEfsCorrupted);
  return pblk * bs;
}

// Zero spans for the partial first and last blocks of byte range [pos, end) that are written.
Result<std::vector<ZeroSpan>> PartialEdgeSpans(const ext2::Guard& g, Ino ino, InodeBuf& inode,
                                               ExtentTree* t, uint64_t pos, uint64_t end) {
  const uint64_t bs = g->blocksize;
  std::vector<ZeroSpan> spans;
  auto edge = [&](uint64_t blk) -> Result<void> {
    uint64_t b = std::max(pos, blk * bs);
    uint64_t e = std::min(end, (blk + 1) * bs);
    if (b >= e || (b == blk * bs && e == (blk + 1) * bs)) return {};  // whole block
    IOMAPFS_ASSIGN_OR_RETURN(uint64_t addr, WrittenAddr(g, ino, inode, t, blk));
    if (addr != kNullAddr) spans.push_back(ZeroSpan{addr + (b - blk * bs), e - b});
    return {};
  };
  IOMAPFS_TRY(edge(pos / bs));
  if ((end - 1) / bs != pos / bs) IOMAPFS_TRY(edge((end - 1) / bs));
  return spans;
}

// ---- Indirect (ext2/ext3) files.

// Unlinks and frees the blocks of logical range [lb, le) of an indirect-mapped file one by one.
// Emptied indirect blocks stay allocated (valid for e2fsck; reused by later writes).
Result<void> UnlinkIndirect(Transaction& tx, Ino ino, InodeBuf& inode, uint64_t lb, uint64_t le) {
  ext2_filsys fs = tx.fs();
  const uint64_t bs = fs->blocksize;
  tx.NoteInode(Raw(ino));
  std::vector<char> buf(bs * 3);
  uint64_t run_start = 0, run_len = 0;
  for (uint64_t l = lb; l < le; ++l) {
    blk64_t p = 0;
    errcode_t err = ext2fs_bmap2(fs, Raw(ino), inode.base(), buf.data(), 0, l, nullptr, &p);
    if (err != 0) return Unexpected(WalkErrno(err));
    if (p == 0) continue;
    if (!PhysicalRangeValid(fs, p, 1)) return Unexpected(kEfsCorrupted);
    blk64_t zero = 0;
    err = ext2fs_bmap2(fs, Raw(ino), inode.base(), buf.data(), BMAP_SET, l, nullptr, &zero);
    if (err != 0) return FromErrcode(err);
    if (run_len > 0 && run_start + run_len == p) {
      ++run_len;
      continue;
    }
    if (run_len > 0) IOMAPFS_TRY(Release(tx, inode, run_start, run_len));
    run_start = p;
    run_len = 1;
  }
  if (run_len > 0) IOMAPFS_TRY(Release(tx, inode, run_start, run_len));
  return {};
}

// Frees logical blocks [lb, le) of an indirect-mapped file. A range that reaches the last block
// of the file goes to ext2fs_punch; a range in the middle is unlinked block by block, because
// libext2fs 1.47's ind_punch() passes a wrong count to the lower levels when the range starts
// inside an indirect block and ends before EOF, and frees blocks past the range (the tests
// caught it). Cost: one bmap per block of the range, bounded by the file size.
Result<void> PunchIndirect(Transaction& tx, Ino ino, InodeBuf& inode, uint64_t lb, uint64_t le) {
  ext2_filsys fs = tx.fs();
  const uint64_t bs = fs->blocksize;
  le = std::min(le, IndirectLblkLimit(static_cast<uint32_t>(bs)));
  if (lb >= le) return {};
  tx.NoteInode(Raw(ino));
  tx.NoteAllocation();
  if (le >= CeilDiv(inode.size(), bs)) {
    return FromErrcode(ext2fs_punch(fs, Raw(ino), inode.base(), nullptr, lb, ~0ULL));
  }
  return UnlinkIndirect(tx, ino, inode, lb, le);
}

Result<std::vector<Mapping>> PrepareIndirect(Transaction& tx, Ino ino, InodeBuf& inode, uint64_t lb,
                                             uint64_t le) {
  ext2_filsys fs = tx.fs();
  const uint64_t bs = fs->blocksize;
  if (le > IndirectLblkLimit(static_cast<uint32_t>(bs))) return Unexpected(EFBIG);
  std::vector<char> buf(bs * 3);
  std::vector<uint64_t> pblks(le - lb, 0);
  std::vector<bool> fresh(le - lb, false);
  uint64_t need = 0;
  for (uint64_t l = lb; l < le; ++l) {
    blk64_t p = 0;
    errcode_t err = ext2fs_bmap2(fs, Raw(ino), inode.base(), buf.data(), 0, l, nullptr, &p);
    if (err != 0) return Unexpected(WalkErrno(err));
    if (p != 0 && !PhysicalRangeValid(fs, p, 1)) return Unexpected(kEfsCorrupted);
    pblks[l - lb] = p;
    if (p == 0) ++need;
  }
  if (need > 0) {
    // Data blocks plus the indirect blocks that may be needed to reach them.
    uint64_t per = bs / 4;
    uint64_t meta = need / per + 4;
    if (need + meta > ext2fs_free_blocks_count(fs->super)) return Unexpected(ENOSPC);
  }
  Result<void> status;
  for (uint64_t l = lb; l < le && status;) {
    if (pblks[l - lb] != 0) {
      ++l;
      continue;
    }
    uint64_t he = l;
    while (he < le && pblks[he - lb] == 0) ++he;
    uint64_t goal = l > lb && pblks[l - lb - 1] != 0
                        ? pblks[l - lb - 1] + 1
                        : ext2fs_find_inode_goal(fs, Raw(ino), inode.base(), l);
    while (l < he && status) {
      blk64_t pblk = 0, plen = 0;
      errcode_t err = ext2fs_new_range(fs, 0, goal, he - l, nullptr, &pblk, &plen);
      if (err != 0) {
        status = FromErrcode(err);
        break;
      }
      plen = std::min<blk64_t>(plen, he - l);
      status = Claim(tx, inode, pblk, plen);
      for (uint64_t i = 0; i < plen && status; ++i) {
        blk64_t b = pblk + i;
        err = ext2fs_bmap2(fs, Raw(ino), inode.base(), buf.data(), BMAP_SET | BMAP_ALLOC, l + i,
                           nullptr, &b);
        if (err != 0) {
          // Blocks [i, plen) of this run are claimed but not linked: give them back.
          (void)Release(tx, inode, pblk + i, plen - i);
          status = FromErrcode(err);
          break;
        }
        pblks[l + i - lb] = pblk + i;
        fresh[l + i - lb] = true;
      }
      tx.NoteInode(Raw(ino));
      l += plen;
      goal = pblk + plen;
    }
  }
  if (!status) {
    // Unlink and free every block this call linked (runs of fresh blocks).
    for (uint64_t l = lb; l < le; ++l) {
      if (!fresh[l - lb]) continue;
      uint64_t e = l;
      while (e < le && fresh[e - lb]) ++e;
      Result<void> r = UnlinkIndirect(tx, ino, inode, l, e);
      if (!r) LOG_ERROR("inode %u: undoing an allocation: errno %d", Raw(ino), r.error());
      l = e;
    }
    return Unexpected(status.error());
  }
  std::vector<Mapping> out;
  for (uint64_t l = lb; l < le; ++l) {
    Mapping m{l * bs, bs, pblks[l - lb] * bs, MappingType::kMapped,
              static_cast<uint16_t>(fresh[l - lb] ? kFlagNew : 0)};
    if (!out.empty() && out.back().end() == m.offset &&
        out.back().addr + out.back().length == m.addr && out.back().flags == m.flags) {
      out.back().length += bs;
    } else {
      out.push_back(m);
    }
  }
  return out;
}

}  // namespace

std::vector<ZeroSpan> Engine::WriteZeroSpans(const std::vector<Mapping>& maps, uint64_t pos,
                                             uint64_t len, uint32_t block_size) {
  std::vector<ZeroSpan> spans;
  if (len == 0 || block_size == 0) return spans;
  const uint64_t bs = block_size;
  const uint64_t end = pos + len;
  auto needs_zero = [](const Mapping& m) {
    return m.type == MappingType::kUnwritten ||
           (m.type == MappingType::kMapped && (m.flags & kFlagNew) != 0);
  };
  auto zero = [&](uint64_t b, uint64_t e) {
    if (b >= e) return;
    for (const Mapping& m : maps) {
      if (m.offset <= b && b < m.end() && needs_zero(m)) {
        spans.push_back(ZeroSpan{m.addr + (b - m.offset), e - b});
      }
    }
  };
  const uint64_t first = pos / bs * bs;
  const uint64_t last_end = CeilDiv(end, bs) * bs;
  zero(first, pos);     // head of the first block
  zero(end, last_end);  // tail of the last block
  return spans;
}

Result<uint64_t> Engine::InlineCapacity(const ext2::Guard& g, Ino ino) {
  if (ino.value() == 0 || ino.value() > g->super->s_inodes_count) return Unexpected(ENOENT);
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, InodeBuf::Read(g, Raw(ino)));
  if (!inode.has_inline_data()) return Unexpected(EINVAL);
  return InlineCapacityOf(g, Raw(ino));
}

Result<uint64_t> Engine::MaxFileSize(const ext2::Guard& g, Ino ino) {
  if (ino.value() == 0 || ino.value() > g->super->s_inodes_count) return Unexpected(ENOENT);
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, InodeBuf::Read(g, Raw(ino)));
  return MaxSizeOf(g.fs(), inode);
}

Result<InodeBuf> Engine::ReadForChange(const ext2::Guard& g, Ino ino, uint64_t pos, uint64_t len) {
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadForWrite(g, ino));
  IOMAPFS_TRY(CheckRange(g.fs(), inode, pos, len));
  Invalidate(g, ino);
  return inode;
}

Result<InodeBuf> Engine::ReadForResize(const ext2::Guard& g, Ino ino, uint64_t new_size) {
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadForWrite(g, ino));
  if (new_size > MaxSizeOf(g.fs(), inode)) return Unexpected(EFBIG);
  Invalidate(g, ino);
  return inode;
}

Result<std::vector<Mapping>> Engine::PrepareWrite(Transaction& tx, Ino ino, uint64_t pos,
                                                  uint64_t len) {
  const ext2::Guard& g = tx.guard();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadForChange(g, ino, pos, len));
  const uint64_t bs = fs_.block_size();
  const uint64_t end = pos + len;
  if (inode.has_inline_data()) {
    IOMAPFS_ASSIGN_OR_RETURN(uint64_t cap, InlineCapacityOf(g, Raw(ino)));
    if (end <= cap) {
      return std::vector<Mapping>{
          Mapping{0, std::max(inode.size(), end), kNullAddr, MappingType::kInline, 0}};
    }
    IOMAPFS_ASSIGN_OR_RETURN(inode, ExpandInline(tx, ino));
  }
  const uint64_t lb = pos / bs;
  const uint64_t le = CeilDiv(end, bs);
  if (!inode.has_extents()) {
    return Finish(tx, ino, inode, PrepareIndirect(tx, ino, inode, lb, le));
  }
  IOMAPFS_ASSIGN_OR_RETURN(ExtentTree t, ExtentTree::Open(g, Raw(ino), &inode));
  auto run = [&]() -> Result<std::vector<Mapping>> {
    IOMAPFS_TRY(SplitUnwrittenAt(t, lb));
    IOMAPFS_TRY(SplitUnwrittenAt(t, le));
    std::vector<Extent> fresh;
    IOMAPFS_TRY(AllocateHoles(tx, t, ino, inode, lb, le, /*merge=*/false, &fresh));
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<Extent> exts, t.List(lb, le));
    std::vector<Mapping> maps = ExtentMappings(exts, lb, le, bs, fresh);
    for (const Mapping& m : maps) {
      if (m.type == MappingType::kHole) return Unexpected(kEfsCorrupted);  // never expected
    }
    return maps;
  };
  return Finish(tx, ino, inode, run());
}

Result<size_t> Engine::WriteInline(Transaction& tx, Ino ino, uint64_t pos,
                                   std::span<const std::byte> data) {
  const ext2::Guard& g = tx.guard();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadForWrite(g, ino));
  if (!inode.has_inline_data()) return Unexpected(EINVAL);
  if (data.empty()) return size_t{0};
  IOMAPFS_TRY(CheckRange(g.fs(), inode, pos, data.size()));
  const uint64_t end = pos + data.size();
  IOMAPFS_ASSIGN_OR_RETURN(uint64_t cap, InlineCapacityOf(g, Raw(ino)));
  if (end > cap) return Unexpected(ENOSPC);
  Invalidate(g, ino);
  IOMAPFS_TRY(RewriteInline(tx, ino, std::max(inode.size(), end), pos, data, 0, 0));
  return data.size();
}

Result<void> Engine::CompleteWrite(Transaction& tx, Ino ino, uint64_t pos, uint64_t len,
                                   uint64_t new_size) {
  const ext2::Guard& g = tx.guard();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadForResize(g, ino, new_size));
  const uint64_t bs = fs_.block_size();
  if (inode.has_inline_data()) {
    if (new_size <= inode.size()) return {};
    IOMAPFS_ASSIGN_OR_RETURN(uint64_t cap, InlineCapacityOf(g, Raw(ino)));
    if (new_size <= cap) return RewriteInline(tx, ino, new_size, 0, {}, 0, 0);
    IOMAPFS_ASSIGN_OR_RETURN(inode, ExpandInline(tx, ino));
  }
  if (len > 0 && inode.has_extents()) {
    if (pos >= kExtentLblkLimit * bs) return Unexpected(EFBIG);
    const uint64_t lb = pos / bs;
    const uint64_t le =
        std::min(CeilDiv(pos + std::min(len, UINT64_MAX - pos), bs), kExtentLblkLimit);
    IOMAPFS_ASSIGN_OR_RETURN(ExtentTree t, ExtentTree::Open(g, Raw(ino), &inode));
    auto run = [&]() -> Result<void> {
      std::vector<Extent> no_room;
      IOMAPFS_TRY(ConvertRange(t, lb, le, /*uninit=*/false, &no_room));
      for (const Extent& e : no_room) {
        // ext4's zeroout: write zeros over the parts that stay unwritten, convert it all.
        uint64_t x = std::max(e.lblk, lb);
        uint64_t y = std::min(e.end(), le);
        errcode_t err = 0;
        if (e.lblk < x) err = ext2fs_zero_blocks2(tx.fs(), e.pblk, x - e.lblk, nullptr, nullptr);
        if (err == 0 && y < e.end()) {
          err = ext2fs_zero_blocks2(tx.fs(), e.pblk + (y - e.lblk), e.end() - y, nullptr, nullptr);
        }
        if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
        IOMAPFS_TRY(t.Reshape(e, {Extent{e.lblk, e.len, e.pblk, false}}));
        IOMAPFS_TRY(t.MergeAround(e.lblk));
      }
      return {};
    };
    IOMAPFS_TRY(Finish(tx, ino, inode, run()));
  }
  if (new_size > inode.size()) {
    IOMAPFS_TRY(inode.SetSize(g, new_size));
    IOMAPFS_TRY(tx.WriteInode(Raw(ino), inode));
  }
  return {};
}

Result<std::vector<ZeroSpan>> Engine::Truncate(Transaction& tx, Ino ino, uint64_t new_size) {
  const ext2::Guard& g = tx.guard();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadForResize(g, ino, new_size));
  const uint64_t bs = fs_.block_size();
  const uint64_t old_size = inode.size();
  std::vector<ZeroSpan> spans;
  if (inode.has_inline_data()) {
    IOMAPFS_ASSIGN_OR_RETURN(uint64_t cap, InlineCapacityOf(g, Raw(ino)));
    if (new_size <= cap) {
      IOMAPFS_TRY(RewriteInline(tx, ino, new_size, 0, {}, 0, 0));
      return spans;
    }
    IOMAPFS_ASSIGN_OR_RETURN(inode, ExpandInline(tx, ino));
  }
  // As ext4_setattr: truncating to the current size still drops blocks preallocated past EOF.
  if (new_size <= old_size) {
    const uint64_t start = CeilDiv(new_size, bs);
    if (inode.has_extents()) {
      IOMAPFS_ASSIGN_OR_RETURN(ExtentTree t, ExtentTree::Open(g, Raw(ino), &inode));
      auto run = [&]() -> Result<void> {
        if (new_size % bs != 0) {
          IOMAPFS_ASSIGN_OR_RETURN(uint64_t addr, WrittenAddr(g, ino, inode, &t, new_size / bs));
          if (addr != kNullAddr)
            spans.push_back(ZeroSpan{addr + new_size % bs, bs - new_size % bs});
        }
        if (start < kExtentLblkLimit)
          IOMAPFS_TRY(RemoveBlocks(tx, t, inode, start, kExtentLblkLimit));
        return {};
      };
      IOMAPFS_TRY(Finish(tx, ino, inode, run()));
    } else {
      if (new_size % bs != 0) {
        IOMAPFS_ASSIGN_OR_RETURN(uint64_t addr, WrittenAddr(g, ino, inode, nullptr, new_size / bs));
        if (addr != kNullAddr) spans.push_back(ZeroSpan{addr + new_size % bs, bs - new_size % bs});
      }
      if (start < IndirectLblkLimit(static_cast<uint32_t>(bs))) {
        // To the end of the block map: ext2fs_punch is exact for that (see PunchIndirect).
        errcode_t err = ext2fs_punch(g.fs(), Raw(ino), inode.base(), nullptr, start, ~0ULL);
        tx.NoteAllocation();
        IOMAPFS_TRY(Finish(tx, ino, inode, FromErrcode(err)));
      }
    }
  }
  IOMAPFS_TRY(inode.SetSize(g, new_size));
  IOMAPFS_TRY(tx.WriteInode(Raw(ino), inode));
  return spans;
}

Result<std::vector<ZeroSpan>> Engine::Punch(Transaction& tx, Ino ino, uint64_t pos, uint64_t len) {
  const ext2::Guard& g = tx.guard();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadForChange(g, ino, pos, len));
  const uint64_t bs = fs_.block_size();
  const uint64_t end = pos + len;
  if (inode.has_inline_data()) {
    if (pos < inode.size()) IOMAPFS_TRY(RewriteInline(tx, ino, inode.size(), 0, {}, pos, end));
    return std::vector<ZeroSpan>();
  }
  const uint64_t lb = CeilDiv(pos, bs);
  const uint64_t le = end / bs;
  if (inode.has_extents()) {
    IOMAPFS_ASSIGN_OR_RETURN(ExtentTree t, ExtentTree::Open(g, Raw(ino), &inode));
    auto run = [&]() -> Result<std::vector<ZeroSpan>> {
      IOMAPFS_ASSIGN_OR_RETURN(std::vector<ZeroSpan> spans,
                               PartialEdgeSpans(g, ino, inode, &t, pos, end));
      if (lb < le) IOMAPFS_TRY(RemoveBlocks(tx, t, inode, lb, std::min(le, kExtentLblkLimit)));
      return spans;
    };
    return Finish(tx, ino, inode, run());
  }
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<ZeroSpan> spans,
                           PartialEdgeSpans(g, ino, inode, nullptr, pos, end));
  if (lb < le) IOMAPFS_TRY(Finish(tx, ino, inode, PunchIndirect(tx, ino, inode, lb, le)));
  return spans;
}

Result<void> Engine::Allocate(Transaction& tx, Ino ino, uint64_t pos, uint64_t len,
                              bool keep_size) {
  const ext2::Guard& g = tx.guard();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadForChange(g, ino, pos, len));
  const uint64_t bs = fs_.block_size();
  const uint64_t end = pos + len;
  if (inode.has_inline_data()) {
    IOMAPFS_ASSIGN_OR_RETURN(inode, ExpandInline(tx, ino));
  }
  if (!inode.has_extents()) return Unexpected(EOPNOTSUPP);
  IOMAPFS_ASSIGN_OR_RETURN(ExtentTree t, ExtentTree::Open(g, Raw(ino), &inode));
  Result<void> r =
      AllocateHoles(tx, t, ino, inode, pos / bs, CeilDiv(end, bs), /*merge=*/true, nullptr);
  if (r && !keep_size && end > inode.size()) r = inode.SetSize(g, end);
  return Finish(tx, ino, inode, r);
}

Result<std::vector<ZeroSpan>> Engine::ZeroRange(Transaction& tx, Ino ino, uint64_t pos,
                                                uint64_t len, bool keep_size) {
  const ext2::Guard& g = tx.guard();
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadForChange(g, ino, pos, len));
  const uint64_t bs = fs_.block_size();
  const uint64_t end = pos + len;
  if (inode.has_inline_data()) {
    uint64_t new_size = keep_size ? inode.size() : std::max(inode.size(), end);
    IOMAPFS_ASSIGN_OR_RETURN(uint64_t cap, InlineCapacityOf(g, Raw(ino)));
    if (new_size <= cap) {
      IOMAPFS_TRY(RewriteInline(tx, ino, new_size, 0, {}, pos, end));
      return std::vector<ZeroSpan>();
    }
    IOMAPFS_ASSIGN_OR_RETURN(inode, ExpandInline(tx, ino));
  }
  if (!inode.has_extents()) return Unexpected(EOPNOTSUPP);
  IOMAPFS_ASSIGN_OR_RETURN(ExtentTree t, ExtentTree::Open(g, Raw(ino), &inode));
  auto run = [&]() -> Result<std::vector<ZeroSpan>> {
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<ZeroSpan> spans,
                             PartialEdgeSpans(g, ino, inode, &t, pos, end));
    const uint64_t lbi = CeilDiv(pos, bs);
    const uint64_t lei = end / bs;
    if (lbi < lei) {
      std::vector<Extent> no_room;
      IOMAPFS_TRY(ConvertRange(t, lbi, lei, /*uninit=*/true, &no_room));
      for (const Extent& e : no_room) {
        uint64_t x = std::max(e.lblk, lbi);
        uint64_t y = std::min(e.end(), lei);
        spans.push_back(ZeroSpan{(e.pblk + (x - e.lblk)) * bs, (y - x) * bs});
      }
    }
    IOMAPFS_TRY(
        AllocateHoles(tx, t, ino, inode, pos / bs, CeilDiv(end, bs), /*merge=*/true, nullptr));
    if (!keep_size && end > inode.size()) IOMAPFS_TRY(inode.SetSize(g, end));
    return spans;
  };
  return Finish(tx, ino, inode, run());
}

}  // namespace iomapfs::iomap
