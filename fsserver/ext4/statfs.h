// statfs(2) as kernel ext4 computes it (fs/ext4/super.c ext4_statfs, ext4_calculate_overhead,
// ext4_calculate_resv_clusters).
//
// Thread-safety: REQUIRES the metadata lock (a Guard).
#pragma once

#include "base/result.h"
#include "ext2/ext2_fs.h"
#include "fsserver/ext4/filesystem.h"

namespace iomapfs::ext4 {

// f_blocks = blocks_count - overhead (superblock, descriptors, reserved GDT, bitmaps, inode
// tables, the internal journal; s_overhead_clusters when bigalloc sets it), f_bfree = the sum of
// the group descriptors' free counts, f_bavail = f_bfree - r_blocks_count - ext4's reserved
// clusters (min(2%, 4096) clusters on extent filesystems), f_files = s_inodes_count, f_ffree =
// the groups' free inodes, f_namelen = 255, bsize = frsize = block size.
// REQUIRES: g holds the metadata lock. Errors: EUCLEAN (journal inode), EIO.
Result<StatFs> ComputeStatFs(const ext2::Guard& g);

}  // namespace iomapfs::ext4
