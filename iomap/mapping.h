// Mapping: one contiguous piece of a file's address space and where its bytes live, in bytes,
// as fs/iomap and the FUSE iomap protocol describe it (spec/fuse-iomap-protocol.md §3).
//
// Thread-safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "base/result.h"

namespace iomapfs::iomap {

// Values are the wire values of FUSE_IOMAP_TYPE_* (spec §3.2).
enum class MappingType : uint16_t {
  kHole = 0,       // no storage; reads return zeroes
  kDelalloc = 1,   // reserved, not allocated (never produced by this engine)
  kMapped = 2,     // written storage at addr
  kUnwritten = 3,  // allocated, unwritten: reads return zeroes
  kInline = 4,     // bytes live in the inode (ext4 inline_data)
};

// FUSE_IOMAP_F_* (spec §3.3); only bits 0-7 may appear in a mapping sent to the kernel.
inline constexpr uint16_t kFlagNew = 1u << 0;
inline constexpr uint16_t kFlagDirty = 1u << 1;
inline constexpr uint16_t kFlagShared = 1u << 2;
inline constexpr uint16_t kFlagMerged = 1u << 3;
inline constexpr uint16_t kFlagBoundary = 1u << 4;
inline constexpr uint16_t kFlagAtomicBio = 1u << 6;
inline constexpr uint16_t kFlagWantIomapEnd = 1u << 7;
inline constexpr uint16_t kFlagsValidMask = 0xFF;

// FUSE_IOMAP_OP_* (spec §3.4).
inline constexpr uint32_t kOpWrite = 1u << 0;
inline constexpr uint32_t kOpZero = 1u << 1;
inline constexpr uint32_t kOpReport = 1u << 2;
inline constexpr uint32_t kOpFault = 1u << 3;
inline constexpr uint32_t kOpDirect = 1u << 4;
inline constexpr uint32_t kOpNowait = 1u << 5;
inline constexpr uint32_t kOpUnshare = 1u << 7;
inline constexpr uint32_t kOpAtomic = 1u << 9;
inline constexpr uint32_t kOpSwapfile = 1u << 30;
inline constexpr uint32_t kOpWriteback = 1u << 31;

inline constexpr uint64_t kNullAddr = ~0ull;  // FUSE_IOMAP_NULL_ADDR

struct Mapping {
  uint64_t offset = 0;        // file byte offset of the first byte mapped
  uint64_t length = 0;        // bytes; > 0
  uint64_t addr = kNullAddr;  // filesystem byte address of `offset`; kNullAddr unless
                              // MAPPED or UNWRITTEN
  MappingType type = MappingType::kHole;
  uint16_t flags = 0;

  uint64_t end() const { return offset + length; }
  bool operator==(const Mapping&) const = default;
};

// The invariant checker: what every mapping this project produces must satisfy, and what the
// kernel checks of a BEGIN reply (spec §4.5). `pos` is the byte the caller asked about.
//   - length > 0, offset + length does not overflow, and offset <= pos < offset + length;
//   - type is HOLE, MAPPED, UNWRITTEN or INLINE; flags only within kFlagsValidMask;
//   - HOLE/INLINE have addr == kNullAddr; MAPPED/UNWRITTEN have addr != kNullAddr, and
//     addr + length does not overflow and lies inside the device (`device_bytes`);
//   - except INLINE: offset, length and addr are multiples of `block_size`.
// Returns: ok, or EUCLEAN with a one-line description in *why.
Result<void> CheckMapping(const Mapping& m, uint64_t pos, uint32_t block_size,
                          uint64_t device_bytes, std::string* why);

std::string ToString(const Mapping& m);

}  // namespace iomapfs::iomap
