#include "iomap/extent_tree.h"

namespace iomapfs::iomap {
namespace {

Extent FromRaw(const ext2fs_extent& x) {
  return Extent{x.e_lblk, x.e_len, x.e_pblk, (x.e_flags & EXT2_EXTENT_FLAGS_UNINIT) != 0};
}

ext2fs_extent ToRaw(const Extent& e) {
  ext2fs_extent x{};
  x.e_lblk = e.lblk;
  x.e_len = static_cast<__u32>(e.len);
  x.e_pblk = e.pblk;
  x.e_flags = e.uninit ? EXT2_EXTENT_FLAGS_UNINIT : 0;
  return x;
}

uint64_t MaxLen(bool uninit) { return uninit ? kMaxUninitLen : kMaxInitLen; }

}  // namespace

bool Mergeable(const Extent& a, const Extent& b) {
  return a.uninit == b.uninit && a.end() == b.lblk && a.pblk + a.len == b.pblk &&
         a.len + b.len <= MaxLen(a.uninit);
}

Result<ExtentTree> ExtentTree::Open(const ext2::Guard& g, ext2_ino_t ino, ext2::InodeBuf* inode) {
  ext2_extent_handle_t raw = nullptr;
  errcode_t err = ext2fs_extent_open2(g.fs(), ino, inode->base(), &raw);
  ExtentHandle h(raw);
  if (err != 0) return Unexpected(WalkErrno(err));
  ext2_extent_info info;
  if (ext2fs_extent_get_info(raw, &info) != 0) return Unexpected(kEfsCorrupted);
  if (info.max_depth > kMaxExtentDepth) return Unexpected(kEfsCorrupted);
  return ExtentTree(g, ino, inode, std::move(h));
}

int ExtentTree::depth() {
  ext2_extent_info info;
  if (ext2fs_extent_get_info(h_.get(), &info) != 0) return kMaxExtentDepth;
  return info.max_depth;
}

Result<std::optional<Extent>> ExtentTree::GotoContaining(uint64_t lblk) {
  errcode_t err = ext2fs_extent_goto(h_.get(), lblk);
  if (err == EXT2_ET_EXTENT_NOT_FOUND || err == EXT2_ET_EXTENT_NO_NEXT) {
    return std::optional<Extent>();
  }
  if (err != 0) return Unexpected(WalkErrno(err));
  ext2fs_extent x;
  err = ext2fs_extent_get(h_.get(), EXT2_EXTENT_CURRENT, &x);
  if (err != 0) return Unexpected(WalkErrno(err));
  Extent e = FromRaw(x);
  if (e.len == 0 || !PhysicalRangeValid(g_->fs(), e.pblk, e.len)) {
    return Unexpected(kEfsCorrupted);
  }
  return std::optional<Extent>(e);
}

Result<std::vector<Extent>> ExtentTree::List(uint64_t a, uint64_t b) {
  std::vector<Extent> out;
  if (a >= b) return out;
  ext2_extent_handle_t h = h_.get();
  errcode_t err = ext2fs_extent_goto(h, a);
  if (err == EXT2_ET_EXTENT_NO_NEXT) return out;  // an empty root
  if (err != 0 && err != EXT2_ET_EXTENT_NOT_FOUND) return Unexpected(WalkErrno(err));
  ext2_extent_info info;
  if (ext2fs_extent_get_info(h, &info) != 0) return Unexpected(kEfsCorrupted);
  ext2fs_extent x;
  if (info.num_entries == 0) {
    if (info.curr_level == 0) return out;
    IOMAPFS_ASSIGN_OR_RETURN(bool more, NextLeafExtent(h, &x));
    if (!more) return out;
  } else {
    err = ext2fs_extent_get(h, EXT2_EXTENT_CURRENT, &x);
    if (err == EXT2_ET_NO_CURRENT_NODE) return out;
    if (err != 0) return Unexpected(WalkErrno(err));
  }
  uint64_t prev_end = 0;
  for (;;) {
    if ((x.e_flags & EXT2_EXTENT_FLAGS_LEAF) == 0) return Unexpected(kEfsCorrupted);
    Extent e = FromRaw(x);
    if (e.lblk >= b) break;
    if (e.len == 0 || e.end() > kExtentLblkLimit || e.lblk < prev_end ||
        !PhysicalRangeValid(g_->fs(), e.pblk, e.len)) {
      return Unexpected(kEfsCorrupted);
    }
    if (e.end() > a) out.push_back(e);
    prev_end = e.end();
    IOMAPFS_ASSIGN_OR_RETURN(bool more, NextLeafExtent(h, &x));
    if (!more) break;
  }
  return out;
}

Result<std::optional<Extent>> ExtentTree::Before(uint64_t lblk) {
  IOMAPFS_ASSIGN_OR_RETURN(std::optional<Extent> at, GotoContaining(lblk));
  ext2fs_extent x;
  errcode_t err;
  if (at) {
    err = ext2fs_extent_get(h_.get(), EXT2_EXTENT_PREV_SIB, &x);
    if (err == EXT2_ET_EXTENT_NO_PREV) return std::optional<Extent>();
  } else {
    err = ext2fs_extent_get(h_.get(), EXT2_EXTENT_CURRENT, &x);
    if (err == EXT2_ET_NO_CURRENT_NODE) return std::optional<Extent>();
  }
  if (err != 0) return Unexpected(WalkErrno(err));
  Extent e = FromRaw(x);
  if (e.end() > lblk) return std::optional<Extent>();
  if (e.len == 0 || !PhysicalRangeValid(g_->fs(), e.pblk, e.len)) {
    return Unexpected(kEfsCorrupted);
  }
  return std::optional<Extent>(e);
}

Result<void> ExtentTree::ReplaceCurrent(const Extent& e) {
  ext2fs_extent x = ToRaw(e);
  errcode_t err = ext2fs_extent_replace(h_.get(), 0, &x);
  if (err == 0) err = ext2fs_extent_fix_parents(h_.get());
  if (err != 0) return Unexpected(WalkErrno(err));
  return {};
}

Result<void> ExtentTree::DeleteCurrent() {
  errcode_t err = ext2fs_extent_delete(h_.get(), 0);
  if (err != 0) return Unexpected(WalkErrno(err));
  // The first entry of a leaf may be gone: the parents' index starts must follow.
  err = ext2fs_extent_fix_parents(h_.get());
  if (err != 0 && err != EXT2_ET_NO_CURRENT_NODE) return Unexpected(WalkErrno(err));
  return {};
}

Result<void> ExtentTree::InsertAt(const Extent& e, bool after) {
  ext2fs_extent x = ToRaw(e);
  errcode_t err = ext2fs_extent_insert(h_.get(), after ? EXT2_EXTENT_INSERT_AFTER : 0, &x);
  if (err == EXT2_ET_BLOCK_ALLOC_FAIL) return Unexpected(ENOSPC);
  if (err == 0) err = ext2fs_extent_fix_parents(h_.get());
  if (err != 0) return Unexpected(WalkErrno(err));
  return {};
}

Result<bool> ExtentTree::CanGrow(uint64_t lblk, int extra) {
  errcode_t err = ext2fs_extent_goto(h_.get(), lblk);
  if (err != 0 && err != EXT2_ET_EXTENT_NOT_FOUND && err != EXT2_ET_EXTENT_NO_NEXT) {
    return Unexpected(WalkErrno(err));
  }
  ext2_extent_info info;
  if (ext2fs_extent_get_info(h_.get(), &info) != 0) return Unexpected(kEfsCorrupted);
  if (info.num_entries + extra <= info.max_entries) return true;
  // A split may cascade up to the root, which then grows a level: one block per level + 1.
  return ext2fs_free_blocks_count(g_->fs()->super) >= static_cast<uint64_t>(info.max_depth) + 2;
}

Result<void> ExtentTree::Insert(const Extent& e, bool merge) {
  if (e.len == 0 || e.len > MaxLen(e.uninit) || e.end() > kExtentLblkLimit) {
    return Unexpected(EINVAL);
  }
  IOMAPFS_ASSIGN_OR_RETURN(std::optional<Extent> at, GotoContaining(e.lblk));
  if (at) return Unexpected(kEfsCorrupted);  // not a hole: our own view was stale
  IOMAPFS_ASSIGN_OR_RETURN(bool room, CanGrow(e.lblk, 1));
  if (!room) return Unexpected(ENOSPC);
  // CanGrow re-navigated to the same place: the handle is on the extent before e in its leaf,
  // or on the leaf's first extent (after e), or nowhere (an empty tree).
  ext2fs_extent x;
  errcode_t err = ext2fs_extent_get(h_.get(), EXT2_EXTENT_CURRENT, &x);
  bool after = false;
  if (err == 0) {
    after = x.e_lblk < e.lblk;
  } else if (err != EXT2_ET_NO_CURRENT_NODE) {
    return Unexpected(WalkErrno(err));
  }
  IOMAPFS_TRY(InsertAt(e, after));
  if (merge) IOMAPFS_TRY(MergeAround(e.lblk));
  return {};
}

Result<void> ExtentTree::Reshape(const Extent& old, const std::vector<Extent>& pieces) {
  IOMAPFS_ASSIGN_OR_RETURN(std::optional<Extent> at, GotoContaining(old.lblk));
  if (!at || !(*at == old)) return Unexpected(kEfsCorrupted);
  if (pieces.empty()) return DeleteCurrent();
  for (const Extent& p : pieces) {
    if (p.len == 0 || p.len > MaxLen(p.uninit) || p.lblk < old.lblk || p.end() > old.end() ||
        p.pblk != old.pblk + (p.lblk - old.lblk)) {
      return Unexpected(EINVAL);
    }
  }
  if (pieces.size() > 1) {
    IOMAPFS_ASSIGN_OR_RETURN(bool room, CanGrow(old.lblk, static_cast<int>(pieces.size()) - 1));
    if (!room) return Unexpected(ENOSPC);
    IOMAPFS_ASSIGN_OR_RETURN(at, GotoContaining(old.lblk));
    if (!at) return Unexpected(kEfsCorrupted);
  }
  IOMAPFS_TRY(ReplaceCurrent(pieces[0]));
  for (size_t i = 1; i < pieces.size(); ++i) {
    IOMAPFS_ASSIGN_OR_RETURN(at, GotoContaining(pieces[i - 1].lblk));
    if (!at) return Unexpected(kEfsCorrupted);
    IOMAPFS_TRY(InsertAt(pieces[i], /*after=*/true));
  }
  return {};
}

Result<void> ExtentTree::MergeAround(uint64_t lblk) {
  IOMAPFS_ASSIGN_OR_RETURN(std::optional<Extent> cur, GotoContaining(lblk));
  if (!cur) return {};
  if (cur->lblk > 0) {
    IOMAPFS_ASSIGN_OR_RETURN(std::optional<Extent> left, GotoContaining(cur->lblk - 1));
    if (left && Mergeable(*left, *cur)) {
      // Delete the right one first: extending the left one first would make it overlap.
      IOMAPFS_ASSIGN_OR_RETURN(std::optional<Extent> again, GotoContaining(cur->lblk));
      if (!again) return Unexpected(kEfsCorrupted);
      IOMAPFS_TRY(DeleteCurrent());
      Extent merged = *left;
      merged.len += cur->len;
      IOMAPFS_ASSIGN_OR_RETURN(again, GotoContaining(left->lblk));
      if (!again) return Unexpected(kEfsCorrupted);
      IOMAPFS_TRY(ReplaceCurrent(merged));
      cur = merged;
    }
  }
  if (cur->end() < kExtentLblkLimit) {
    IOMAPFS_ASSIGN_OR_RETURN(std::optional<Extent> right, GotoContaining(cur->end()));
    if (right && Mergeable(*cur, *right)) {
      IOMAPFS_TRY(DeleteCurrent());  // the handle is on `right`
      Extent merged = *cur;
      merged.len += right->len;
      IOMAPFS_ASSIGN_OR_RETURN(std::optional<Extent> again, GotoContaining(cur->lblk));
      if (!again) return Unexpected(kEfsCorrupted);
      IOMAPFS_TRY(ReplaceCurrent(merged));
    }
  }
  return {};
}

}  // namespace iomapfs::iomap
