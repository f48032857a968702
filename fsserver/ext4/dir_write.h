// Directory writing: adding, removing and retargeting entries as ext4 does (fs/ext4/namei.c),
// through libext2fs where it does the same thing and by hand where it does not:
//   - adding goes through ext2fs_link (which inserts into htree directories, splitting leaves
//     and growing the index); a linear directory whose single block is full is turned into an
//     htree first, as ext4's make_indexed_dir() does, so large directories stay indexed; other
//     full linear directories grow by a block (ext4_append). Inline-data directories are moved
//     to a block first (we never write inline data).
//   - removing an entry whose block the lookup knows (htree leaves, "." / "..") edits that
//     block only, as ext4_delete_entry(); other directories go through ext2fs_unlink.
// Directory times and link counts are the caller's business.
//
// Thread-safety: every function REQUIRES the metadata lock (a Guard).
#pragma once

#include <cstdint>
#include <string_view>

#include "base/result.h"
#include "base/strong_id.h"
#include "ext2/ext2_fs.h"
#include "fsserver/ext4/directory.h"
#include "fsserver/ext4/inode.h"

namespace iomapfs::ext4 {

// Adds the entry `name` -> (ino, file_type) to directory `dir`. Does not check for an existing
// entry of that name. Returns: the entry's DirHit (lblk unknown).
// REQUIRES: g holds the metadata lock; 1 <= name.size() <= kMaxNameLen.
// Errors: ENOSPC (no block for the directory, or an htree at its depth limit), EUCLEAN, EIO.
Result<DirHit> AddEntry(const ext2::Guard& g, Ino dir, std::string_view name, Ino ino,
                        uint8_t file_type);

// Removes the entry `name` (found by a lookup as `hit`) from `dir`.
// REQUIRES: g holds the metadata lock. Errors: ENOENT (gone), EUCLEAN, EIO.
Result<void> RemoveEntry(const ext2::Guard& g, Ino dir, std::string_view name, const DirHit& hit);

// Points the existing entry `name` (found as `hit`) of `dir` at (ino, file_type) in place, as
// ext4_setent() does (rename over an existing name, "..", exchange).
// REQUIRES: g holds the metadata lock. Errors: ENOENT, EUCLEAN, EIO.
Result<void> RetargetEntry(const ext2::Guard& g, Ino dir, std::string_view name, const DirHit& hit,
                           Ino ino, uint8_t file_type);

// Creates the first block of new directory `dir` ("." and "..", with a checksum tail where the
// filesystem has metadata_csum), maps it and sets i_size to one block.
// REQUIRES: g holds the metadata lock; `inode` is dir's freshly written inode (updated here).
// Errors: ENOSPC, EIO.
Result<void> InitDirBlock(const ext2::Guard& g, Ino dir, Ino parent, InodeBuf& inode);

// True if `dir` holds no entry besides "." and "..".
// REQUIRES: g holds the metadata lock. Errors: EUCLEAN, EIO.
Result<bool> IsEmptyDir(const ext2::Guard& g, Ino dir, const InodeBuf& inode);

}  // namespace iomapfs::ext4
