#include "fsserver/ext4/statfs.h"

#include <algorithm>

#include "fsserver/ext4/directory.h"
#include "fsserver/ext4/inode.h"

namespace iomapfs::ext4 {
namespace {

// ext4_bg_num_gdb(): descriptor blocks in group `group`.
uint64_t GroupDescBlocks(ext2_filsys fs, dgrp_t group) {
  const uint64_t per_block = EXT2_DESC_PER_BLOCK(fs->super);
  const uint64_t first_meta_bg = fs->super->s_first_meta_bg;
  const uint64_t metagroup = group / per_block;
  if (!ext2fs_has_feature_meta_bg(fs->super) || metagroup < first_meta_bg) {
    if (!ext2fs_bg_has_super(fs, group)) return 0;
    return ext2fs_has_feature_meta_bg(fs->super) ? first_meta_bg : fs->desc_blocks;
  }
  const uint64_t first = metagroup * per_block;
  const uint64_t last = first + per_block - 1;
  return (group == first || group == first + 1 || group == last) ? 1 : 0;
}

// ext4_calculate_overhead() in clusters (exact without bigalloc).
Result<uint64_t> Overhead(const ext2::Guard& g) {
  ext2_filsys fs = g.fs();
  ext2_super_block* sb = fs->super;
  const uint64_t ratio = EXT2FS_CLUSTER_RATIO(fs);
  if (ext2fs_has_feature_bigalloc(sb) && sb->s_overhead_clusters != 0 &&
      sb->s_overhead_clusters <= ext2fs_blocks_count(sb)) {
    return static_cast<uint64_t>(sb->s_overhead_clusters);
  }
  uint64_t overhead = sb->s_first_data_block / ratio;
  for (dgrp_t grp = 0; grp < fs->group_desc_count; ++grp) {
    uint64_t has_super = ext2fs_bg_has_super(fs, grp) ? 1 : 0;
    uint64_t blocks = has_super + GroupDescBlocks(fs, grp) +
                      (has_super ? sb->s_reserved_gdt_blocks : 0) + fs->inode_blocks_per_group + 2;
    overhead += (blocks + ratio - 1) / ratio;  // exact for ratio 1; bigalloc is approximate
  }
  if (ext2fs_has_feature_journal(sb) && sb->s_journal_inum != 0) {
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf j, ReadInode(g, Ino(sb->s_journal_inum)));
    uint64_t jblocks = EXT2_I_SIZE(&j.raw) / fs->blocksize;
    overhead += (jblocks + ratio - 1) / ratio;  // EXT4_NUM_B2C
  }
  return overhead;
}

}  // namespace

Result<StatFs> ComputeStatFs(const ext2::Guard& g) {
  ext2_filsys fs = g.fs();
  ext2_super_block* sb = fs->super;
  const uint64_t ratio = EXT2FS_CLUSTER_RATIO(fs);
  IOMAPFS_ASSIGN_OR_RETURN(uint64_t overhead, Overhead(g));

  uint64_t free_clusters = 0, free_inodes = 0;
  for (dgrp_t grp = 0; grp < fs->group_desc_count; ++grp) {
    free_clusters += ext2fs_bg_free_blocks_count(fs, grp);
    free_inodes += ext2fs_bg_free_inodes_count(fs, grp);
  }
  // ext4_calculate_resv_clusters(): nothing without extents, else min(2%, 4096) clusters.
  uint64_t resv_clusters = 0;
  if (ext2fs_has_feature_extents(sb)) {
    resv_clusters = std::min<uint64_t>(ext2fs_blocks_count(sb) / ratio / 50, 4096);
  }

  StatFs st;
  st.bsize = st.frsize = fs->blocksize;
  uint64_t total = ext2fs_blocks_count(sb);
  st.blocks = total - std::min(total, overhead * ratio);
  st.bfree = free_clusters * ratio;
  uint64_t reserved = ext2fs_r_blocks_count(sb) + resv_clusters * ratio;
  st.bavail = st.bfree > reserved ? st.bfree - reserved : 0;
  st.files = sb->s_inodes_count;
  st.ffree = free_inodes;
  st.namelen = kMaxNameLen;
  return st;
}

}  // namespace iomapfs::ext4
