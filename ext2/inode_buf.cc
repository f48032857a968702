#include "ext2/inode_buf.h"

#include <algorithm>
#include <cstring>

namespace iomapfs::ext2 {

Result<InodeBuf> InodeBuf::Read(const Guard& g, ext2_ino_t ino) {
  if (ino == 0 || ino > g->super->s_inodes_count) return Unexpected(ENOENT);
  InodeBuf b;
  b.disk_size_ = EXT2_INODE_SIZE(g->super);
  size_t bytes = std::max(b.disk_size_, sizeof(ext2_inode_large));
  b.storage_.assign((bytes + sizeof(uint64_t) - 1) / sizeof(uint64_t), 0);
  errcode_t err = ext2fs_read_inode_full(g.fs(), ino, b.base(), static_cast<int>(b.disk_size_));
  if (err != 0) return Unexpected(ErrnoFromErrcode(err));
  return b;
}

bool InodeBuf::SameBytes(const InodeBuf& o) const {
  return disk_size_ == o.disk_size_ &&
         std::memcmp(storage_.data(), o.storage_.data(), disk_size_) == 0;
}

Result<void> InodeBuf::SetSize(const Guard& g, uint64_t size) {
  errcode_t err = ext2fs_inode_size_set(g.fs(), base(), size);
  if (err != 0) return Unexpected(ErrnoFromErrcode(err));
  return {};
}

}  // namespace iomapfs::ext2
