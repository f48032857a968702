// Strong id types: distinct integer types that do not convert into each other silently.
//
// Thread-safety: value types.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>

namespace iomapfs {

template <class Tag, class Rep>
class StrongId {
 public:
  using rep = Rep;
  constexpr StrongId() = default;
  constexpr explicit StrongId(Rep v) : v_(v) {}
  constexpr Rep value() const { return v_; }
  constexpr auto operator<=>(const StrongId&) const = default;

 private:
  Rep v_{};
};

// An ext4 inode number. The FUSE node id equals it, except the root, which the wire codec
// translates (FUSE_ROOT_ID <-> EXT2_ROOT_INO) at its edge.
using Ino = StrongId<struct InoTag, uint64_t>;
// The fh value this server hands the kernel in OPEN/OPENDIR replies.
using FileHandle = StrongId<struct FileHandleTag, uint64_t>;
// fuse_in_header.unique, echoed verbatim (bit 63 included) in the reply.
using Unique = StrongId<struct UniqueTag, uint64_t>;
// A filesystem block number (in units of the filesystem block size).
using Fsblk = StrongId<struct FsblkTag, uint64_t>;

// Block numbers and byte offsets are different things; convert only through these.
constexpr uint64_t BlockToBytes(Fsblk blk, uint32_t block_size) { return blk.value() * block_size; }
constexpr Fsblk BytesToBlock(uint64_t bytes, uint32_t block_size) {
  return Fsblk(bytes / block_size);
}

}  // namespace iomapfs

template <class Tag, class Rep>
struct std::hash<iomapfs::StrongId<Tag, Rep>> {
  size_t operator()(const iomapfs::StrongId<Tag, Rep>& id) const noexcept {
    return std::hash<Rep>()(id.value());
  }
};
