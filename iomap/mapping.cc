#include "iomap/mapping.h"

#include <cinttypes>
#include <cstdio>

namespace iomapfs::iomap {
namespace {

const char* TypeName(MappingType t) {
  switch (t) {
    case MappingType::kHole:
      return "HOLE";
    case MappingType::kDelalloc:
      return "DELALLOC";
    case MappingType::kMapped:
      return "MAPPED";
    case MappingType::kUnwritten:
      return "UNWRITTEN";
    case MappingType::kInline:
      return "INLINE";
  }
  return "?";
}

Result<void> Bad(std::string* why, const Mapping& m, const char* what) {
  if (why != nullptr) *why = std::string(what) + ": " + ToString(m);
  return Unexpected(kEfsCorrupted);
}

}  // namespace

Result<void> CheckMapping(const Mapping& m, uint64_t pos, uint32_t block_size,
                          uint64_t device_bytes, std::string* why) {
  if (m.length == 0) return Bad(why, m, "zero length");
  if (m.offset + m.length < m.offset) return Bad(why, m, "offset + length overflows");
  if (pos < m.offset || pos >= m.end()) return Bad(why, m, "does not cover pos");
  if ((m.flags & ~kFlagsValidMask) != 0) return Bad(why, m, "flags outside 0xFF");
  switch (m.type) {
    case MappingType::kHole:
    case MappingType::kInline:
      if (m.addr != kNullAddr) return Bad(why, m, "HOLE/INLINE with an address");
      break;
    case MappingType::kMapped:
    case MappingType::kUnwritten:
      if (m.addr == kNullAddr) return Bad(why, m, "MAPPED/UNWRITTEN without an address");
      if (m.addr + m.length < m.addr) return Bad(why, m, "addr + length overflows");
      if (m.addr + m.length > device_bytes) return Bad(why, m, "past the end of the device");
      break;
    default:
      return Bad(why, m, "invalid type");
  }
  if (m.type != MappingType::kInline) {
    if (block_size == 0) return Bad(why, m, "block size 0");
    if (m.offset % block_size != 0 || m.length % block_size != 0) {
      return Bad(why, m, "offset/length not block aligned");
    }
    if (m.addr != kNullAddr && m.addr % block_size != 0) {
      return Bad(why, m, "addr not block aligned");
    }
  }
  return {};
}

std::string ToString(const Mapping& m) {
  char buf[160];
  if (m.addr == kNullAddr) {
    std::snprintf(buf, sizeof(buf), "{%s off=%" PRIu64 " len=%" PRIu64 " addr=NULL flags=0x%x}",
                  TypeName(m.type), m.offset, m.length, m.flags);
  } else {
    std::snprintf(buf, sizeof(buf),
                  "{%s off=%" PRIu64 " len=%" PRIu64 " addr=%" PRIu64 " flags=0x%x}",
                  TypeName(m.type), m.offset, m.length, m.addr, m.flags);
  }
  return buf;
}

}  // namespace iomapfs::iomap
