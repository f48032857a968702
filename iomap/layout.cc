#include "iomap/layout.h"

#include <memory>

namespace iomapfs::iomap {

int WalkErrno(errcode_t err) {
  switch (err) {
    case EINVAL:
    case EOVERFLOW:
    case EXT2_ET_SHORT_READ:
    case EXT2_ET_EXTENT_NO_NEXT:
    case EXT2_ET_EXTENT_NO_PREV:
    case EXT2_ET_EXTENT_NO_UP:
    case EXT2_ET_EXTENT_NO_DOWN:
    case EXT2_ET_NO_CURRENT_NODE:
    case EXT2_ET_EXTENT_NOT_FOUND:
    case EXT2_ET_OP_NOT_SUPPORTED:
      return kEfsCorrupted;
    default:
      return ext2::ErrnoFromErrcode(err);
  }
}

bool PhysicalRangeValid(ext2_filsys fs, uint64_t pblk, uint64_t len) {
  uint64_t blocks = ext2fs_blocks_count(fs->super);
  return pblk >= fs->super->s_first_data_block && pblk != 0 && len <= blocks &&
         pblk <= blocks - len;
}

namespace {

// Appends `r` to `runs`, merging it into the last run when both are of one type and
// logically and physically contiguous.
void AppendRun(std::vector<Run>* runs, const Run& r) {
  if (!runs->empty()) {
    Run& last = runs->back();
    if (last.type == r.type && last.end() == r.lblk && last.pblk + last.len == r.pblk) {
      last.len += r.len;
      return;
    }
  }
  runs->push_back(r);
}

}  // namespace

Result<bool> NextLeafExtent(ext2_extent_handle_t h, ext2fs_extent* e) {
  errcode_t err = ext2fs_extent_get(h, EXT2_EXTENT_NEXT_SIB, e);
  if (err == 0) return true;
  if (err != EXT2_ET_EXTENT_NO_NEXT) return Unexpected(WalkErrno(err));
  ext2_extent_info info;
  // Each iteration climbs one level or descends into a new subtree; the tree is finite and
  // every step moves strictly forward, so this terminates.
  for (;;) {
    err = ext2fs_extent_get(h, EXT2_EXTENT_UP, e);
    if (err == EXT2_ET_EXTENT_NO_UP) return false;
    if (err != 0) return Unexpected(WalkErrno(err));
    if (ext2fs_extent_get_info(h, &info) != 0) return Unexpected(kEfsCorrupted);
    if (info.curr_entry >= info.num_entries) continue;  // last child: climb further
    err = ext2fs_extent_get(h, EXT2_EXTENT_NEXT_SIB, e);
    if (err != 0) return Unexpected(WalkErrno(err));
    // Descend to the leftmost leaf of this subtree.
    for (;;) {
      if (ext2fs_extent_get_info(h, &info) != 0) return Unexpected(kEfsCorrupted);
      if (info.num_entries == 0) {
        // Only a leaf may be empty (kernel ext4_ext_check); skip it.
        if (info.curr_level < info.max_depth) return Unexpected(kEfsCorrupted);
        break;
      }
      if (info.curr_level >= info.max_depth) return true;
      err = ext2fs_extent_get(h, EXT2_EXTENT_DOWN, e);
      if (err != 0) return Unexpected(WalkErrno(err));
    }
  }
}

Result<Window> LoadExtentWindow(const ext2::Guard& g, ext2_ino_t ino, ext2_inode* inode,
                                uint64_t target, size_t max_extents) {
  ext2_filsys fs = g.fs();
  ext2_extent_handle_t raw = nullptr;
  errcode_t err = ext2fs_extent_open2(fs, ino, inode, &raw);
  ExtentHandle handle(raw);
  if (err != 0) return Unexpected(WalkErrno(err));
  ext2_extent_info info;
  if (ext2fs_extent_get_info(raw, &info) != 0) return Unexpected(kEfsCorrupted);
  if (info.max_depth > kMaxExtentDepth) return Unexpected(kEfsCorrupted);

  Window w;
  w.start = target;
  w.end = kExtentLblkLimit;
  if (info.num_entries == 0) {
    // An empty root: the whole file is a hole.
    w.start = 0;
    return w;
  }
  err = ext2fs_extent_goto2(raw, 0, target);
  if (err != 0 && err != EXT2_ET_EXTENT_NOT_FOUND) return Unexpected(WalkErrno(err));

  // goto2 leaves the handle on the extent containing `target`, else on the last extent
  // before it in that leaf, else on the first extent of the leaf (which starts after it).
  ext2fs_extent e;
  err = ext2fs_extent_get(raw, EXT2_EXTENT_CURRENT, &e);
  if (err != 0) return Unexpected(WalkErrno(err));
  if (ext2fs_extent_get_info(raw, &info) != 0) return Unexpected(kEfsCorrupted);
  if (info.curr_level != info.max_depth || (e.e_flags & EXT2_EXTENT_FLAGS_LEAF) == 0) {
    return Unexpected(kEfsCorrupted);
  }
  if (info.num_entries == 0) {
    // An empty leaf (possible below the root): start from the next one.
    IOMAPFS_ASSIGN_OR_RETURN(bool more, NextLeafExtent(raw, &e));
    if (!more) return w;
  } else if (e.e_lblk <= target) {
    w.start = e.e_lblk;
  }

  size_t count = 0;
  uint64_t prev_end = 0;
  bool have_prev = false;
  for (;;) {
    uint64_t lblk = e.e_lblk;
    uint64_t len = e.e_len;
    if (len == 0 || lblk + len > kExtentLblkLimit) return Unexpected(kEfsCorrupted);
    if (have_prev && lblk < prev_end) return Unexpected(kEfsCorrupted);
    if (!PhysicalRangeValid(fs, e.e_pblk, len)) return Unexpected(kEfsCorrupted);
    if (count >= max_extents && (prev_end > target || lblk > target)) {
      // Stop here: the hole before this extent is known, nothing after it is.
      w.end = lblk;
      break;
    }
    MappingType type = (e.e_flags & EXT2_EXTENT_FLAGS_UNINIT) != 0 ? MappingType::kUnwritten
                                                                   : MappingType::kMapped;
    AppendRun(&w.runs, Run{lblk, len, e.e_pblk, type});
    ++count;
    prev_end = lblk + len;
    have_prev = true;
    IOMAPFS_ASSIGN_OR_RETURN(bool more, NextLeafExtent(raw, &e));
    if (!more) break;
  }
  if (w.start > target) w.start = target;
  return w;
}

uint64_t IndirectLblkLimit(uint32_t block_size) {
  uint64_t per = block_size / sizeof(uint32_t);
  uint64_t limit = EXT2_NDIR_BLOCKS + per + per * per + per * per * per;
  return limit < kExtentLblkLimit ? limit : kExtentLblkLimit;
}

Result<Window> LoadIndirectWindow(const ext2::Guard& g, ext2_ino_t ino, ext2_inode* inode,
                                  uint64_t target, uint64_t count) {
  ext2_filsys fs = g.fs();
  // bmap's scratch space for the three levels of indirect blocks.
  std::vector<char> block_buf(static_cast<size_t>(fs->blocksize) * 3);
  Window w;
  w.start = target;
  w.end = target + count;
  for (uint64_t lblk = target; lblk < w.end; ++lblk) {
    blk64_t pblk = 0;
    errcode_t err = ext2fs_bmap2(fs, ino, inode, block_buf.data(), 0, lblk, nullptr, &pblk);
    if (err != 0) return Unexpected(WalkErrno(err));
    if (pblk == 0) continue;
    if (!PhysicalRangeValid(fs, pblk, 1)) return Unexpected(kEfsCorrupted);
    AppendRun(&w.runs, Run{lblk, 1, pblk, MappingType::kMapped});
  }
  return w;
}

}  // namespace iomapfs::iomap
