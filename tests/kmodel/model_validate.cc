#include "tests/kmodel/model_validate.h"

#include <cerrno>

namespace iomapfs::kmodel {
namespace {

constexpr int kEfsCorrupted = EUCLEAN;

bool KnownType(uint16_t t) {
  return t <= abi::FUSE_IOMAP_TYPE_INLINE || t == abi::FUSE_IOMAP_TYPE_NOCACHE ||
         t == abi::FUSE_IOMAP_TYPE_RETRY_CACHE || t == abi::FUSE_IOMAP_TYPE_PURE_OVERWRITE;
}

// Checks 2-4: length, alignment, overflow, offset below the max file size.
int CheckRange(const ValidationContext& c, const abi::fuse_iomap_io& io, std::string* why) {
  if (io.length == 0) {
    *why = "zero length";
    return kEfsCorrupted;
  }
  if (io.offset % c.block_size != 0 || io.length % c.block_size != 0) {
    *why = "offset/length not multiples of the block size";
    return kEfsCorrupted;
  }
  if (io.offset + io.length < io.offset) {
    *why = "offset + length overflows";
    return kEfsCorrupted;
  }
  if (io.offset >= c.max_bytes) {
    *why = "offset past the max file size";
    return kEfsCorrupted;
  }
  return 0;
}

// Checks 1-7 of one mapping whatever its slot (the slot rules are the callers').
int CheckCommon(const ValidationContext& c, const abi::fuse_iomap_io& io, std::string* why) {
  if (!KnownType(io.type)) {
    *why = "unknown type " + std::to_string(io.type);
    return kEfsCorrupted;
  }
  if ((io.flags & ~0xFFu) != 0) {
    *why = "flags outside 0xFF";
    return kEfsCorrupted;
  }
  if (int e = CheckRange(c, io, why)) return e;
  switch (io.type) {
    case abi::FUSE_IOMAP_TYPE_MAPPED:
    case abi::FUSE_IOMAP_TYPE_UNWRITTEN: {
      uint64_t size = 0;
      if (io.dev == 0 || io.addr == abi::FUSE_IOMAP_NULL_ADDR || io.addr + io.length < io.addr) {
        *why = "MAPPED/UNWRITTEN without a device address";
        return kEfsCorrupted;
      }
      if (c.dev_known == nullptr || !c.dev_known(c.self, io.dev, &size)) {
        *why = "dev " + std::to_string(io.dev) + " is not a registered iomap device";
        return kEfsCorrupted;
      }
      if (io.addr + io.length > size) {
        *why = "mapping past the end of the device";
        return kEfsCorrupted;
      }
      return 0;
    }
    case abi::FUSE_IOMAP_TYPE_HOLE:
    case abi::FUSE_IOMAP_TYPE_DELALLOC:
    case abi::FUSE_IOMAP_TYPE_INLINE:
      if (io.dev != 0 || io.addr != abi::FUSE_IOMAP_NULL_ADDR) {
        *why = "HOLE/DELALLOC/INLINE with a device or address";
        return kEfsCorrupted;
      }
      return 0;
    default:  // PURE_OVERWRITE, RETRY_CACHE, NOCACHE: newest snapshot's strict form
      if (io.flags != 0 || io.dev != 0 || io.addr != abi::FUSE_IOMAP_NULL_ADDR) {
        *why = "placeholder slot with flags, device or address";
        return kEfsCorrupted;
      }
      return 0;
  }
}

}  // namespace

int ValidateBeginSlot(const ValidationContext& c, const abi::fuse_iomap_io& io, Slot slot,
                      uint64_t pos, uint32_t opflags, bool inode_has_cache, std::string* why) {
  if (int e = CheckCommon(c, io, why)) return e;
  if (io.type == abi::FUSE_IOMAP_TYPE_PURE_OVERWRITE && slot != Slot::kWrite) {
    *why = "PURE_OVERWRITE in the read slot";
    return kEfsCorrupted;
  }
  if (io.type == abi::FUSE_IOMAP_TYPE_NOCACHE) {
    *why = "NOCACHE in a BEGIN reply";
    return kEfsCorrupted;
  }
  if (io.type == abi::FUSE_IOMAP_TYPE_RETRY_CACHE) {
    if (!inode_has_cache) {
      *why = "RETRY_CACHE for an inode without a cache";
      return kEfsCorrupted;
    }
    if ((opflags & (abi::FUSE_IOMAP_OP_ATOMIC | abi::FUSE_IOMAP_OP_SWAPFILE)) != 0) {
      *why = "RETRY_CACHE for an op that bypasses the cache";
      return kEfsCorrupted;
    }
  }
  if (io.type == abi::FUSE_IOMAP_TYPE_INLINE && io.length > c.block_size) {
    *why = "INLINE mapping longer than a block";
    return ENOMEM;
  }
  if (!(io.offset <= pos && pos - io.offset < io.length)) {
    *why = "mapping [" + std::to_string(io.offset) + ", +" + std::to_string(io.length) +
           ") does not cover pos " + std::to_string(pos);
    return kEfsCorrupted;
  }
  return 0;
}

int ValidateBeginReply(const ValidationContext& c, const abi::fuse_iomap_begin_out& out,
                       uint64_t pos, uint32_t opflags, bool inode_has_cache, std::string* why) {
  if (int e = ValidateBeginSlot(c, out.read, Slot::kRead, pos, opflags, inode_has_cache, why)) {
    *why = "read slot: " + *why;
    return e;
  }
  if (int e = ValidateBeginSlot(c, out.write, Slot::kWrite, pos, opflags, inode_has_cache, why)) {
    *why = "write slot: " + *why;
    return e;
  }
  if ((opflags & abi::FUSE_IOMAP_OP_ATOMIC) != 0) {
    const abi::fuse_iomap_io& eff =
        out.write.type == abi::FUSE_IOMAP_TYPE_PURE_OVERWRITE ? out.read : out.write;
    bool real =
        eff.type == abi::FUSE_IOMAP_TYPE_MAPPED || eff.type == abi::FUSE_IOMAP_TYPE_UNWRITTEN;
    if (!real || (eff.flags & abi::FUSE_IOMAP_F_ATOMIC_BIO) == 0) {
      *why = "atomic write without a MAPPED/UNWRITTEN F_ATOMIC_BIO mapping";
      return EIO;
    }
  }
  return 0;
}

int ValidateUpsertSlot(const ValidationContext& c, const abi::fuse_iomap_io& io, std::string* why) {
  if (int e = CheckCommon(c, io, why)) return e;
  if (io.type == abi::FUSE_IOMAP_TYPE_RETRY_CACHE) {
    *why = "RETRY_CACHE in an UPSERT";
    return kEfsCorrupted;
  }
  if (io.type == abi::FUSE_IOMAP_TYPE_INLINE && io.length > c.block_size) {
    *why = "INLINE mapping longer than a block";
    return ENOMEM;
  }
  return 0;
}

}  // namespace iomapfs::kmodel
