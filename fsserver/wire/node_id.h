// node_id.h: the translation between kernel node ids and ext4 inode numbers.
//
// FUSE node id = ext4 inode number, except the root: the kernel's FUSE_ROOT_ID (1) is ext4's
// root inode 2 (EXT2_ROOT_INO). ext4 inode 1 (bad blocks) is never exported, so node id 1 is
// free for the root; and since inode 2 is presented as 1, the kernel never holds node id 2.
// These are the only two functions that know this; the codec applies them at its edge.
//
// Thread-safety: pure functions. Ownership: n/a.
#pragma once

#include <cstdint>

#include "base/result.h"
#include "base/strong_id.h"

namespace iomapfs::wire {

// ext4's root inode number (EXT2_ROOT_INO), which the kernel knows as FUSE_ROOT_ID.
inline constexpr Ino kExt4RootIno{2};

// Kernel node id -> ext4 inode.
// Returns: Ino{2} for FUSE_ROOT_ID, Ino{nodeid} otherwise.
// Errors: EIO for 0 (no node where one is required); ESTALE for 2 (the kernel never holds it).
Result<Ino> InoFromNodeId(uint64_t nodeid);

// ext4 inode -> kernel node id: inode 2 becomes FUSE_ROOT_ID; every other value (including
// Ino{0}, the node id of a negative entry) is unchanged.
// REQUIRES: ino != Ino{1} (the bad-blocks inode is never exported; aborts otherwise: the ext4
// layer rejects directory entries that name it).
uint64_t NodeIdFromIno(Ino ino);

}  // namespace iomapfs::wire
