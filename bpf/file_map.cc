#include "bpf/file_map.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <limits>

namespace iomapfs::bpf {

using iomap::Mapping;
using iomap::MappingType;

uint64_t MaxEnd(uint32_t block_size) {
  return std::numeric_limits<uint64_t>::max() / block_size * block_size;
}

Result<FileMap> BuildFileMap(uint64_t nodeid, uint32_t block_size, uint32_t dev,
                             std::span<const Mapping> mappings) {
  if (block_size == 0 || (block_size & (block_size - 1)) != 0) return Unexpected(EINVAL);
  FileMap fm;
  fm.nodeid = nodeid;
  fm.block_size = block_size;
  fm.dev = dev;
  fm.intervals.reserve(mappings.size() * 2 + 1);
  const uint64_t max_end = MaxEnd(block_size);
  uint64_t cur = 0;
  auto add_hole = [&](uint64_t start, uint64_t end) {
    if (!fm.intervals.empty() && fm.intervals.back().type == MappingType::kHole &&
        fm.intervals.back().end() == start && end == max_end) {
      fm.intervals.back().length = end - fm.intervals.back().offset;  // the past-EOF hole
      return;
    }
    Mapping h;
    h.offset = start;
    h.length = end - start;
    fm.intervals.push_back(h);
  };
  for (const Mapping& m : mappings) {
    if (m.type == MappingType::kInline || m.type == MappingType::kDelalloc) {
      return Unexpected(ENOTSUP);
    }
    if (m.type != MappingType::kHole && m.type != MappingType::kMapped &&
        m.type != MappingType::kUnwritten) {
      return Unexpected(EINVAL);
    }
    if (m.length == 0 || m.offset < cur || m.offset % block_size != 0 ||
        m.length % block_size != 0 || m.length > max_end - m.offset ||
        (m.flags & ~iomap::kFlagsValidMask) != 0) {
      return Unexpected(EINVAL);
    }
    bool has_addr = m.type != MappingType::kHole;
    if (has_addr != (m.addr != iomap::kNullAddr)) return Unexpected(EINVAL);
    if (has_addr && (m.addr % block_size != 0 || m.addr > iomap::kNullAddr - m.length)) {
      return Unexpected(EINVAL);
    }
    if (m.offset > cur) add_hole(cur, m.offset);
    if (m.type == MappingType::kHole && m.end() == max_end) {
      add_hole(m.offset, max_end);
    } else {
      fm.intervals.push_back(m);
    }
    cur = m.end();
  }
  if (cur < max_end) add_hole(cur, max_end);
  return fm;
}

size_t FindInterval(const FileMap& map, uint64_t pos) {
  auto it = std::upper_bound(map.intervals.begin(), map.intervals.end(), pos,
                             [](uint64_t p, const Mapping& m) { return p < m.offset; });
  return static_cast<size_t>(it - map.intervals.begin()) - 1;
}

IomapIo ReadSlot(const FileMap& map, const Mapping& m) {
  IomapIo io;
  io.offset = m.offset;
  io.length = m.length;
  io.addr = m.addr;
  io.type = static_cast<uint16_t>(m.type);
  io.flags = m.flags;
  io.dev = m.type == MappingType::kHole ? 0 : map.dev;
  return io;
}

Answer ReferenceAnswer(const FileMap& map, uint64_t seq, const BeginCtx& ctx) {
  Answer a;
  if (ctx.nodeid != map.nodeid || ctx.expect_seq != seq) return a;
  if (ctx.pos >= kPosLimit || (ctx.opflags & kNeverOps) != 0) return a;
  const Mapping& m = map.intervals[FindInterval(map, ctx.pos)];
  if ((ctx.opflags & kWriteOps) != 0 && m.type != MappingType::kMapped) return a;
  a.ret = kFibHandled;
  a.out.read = ReadSlot(map, m);
  a.out.write.offset = m.offset;
  a.out.write.length = m.length;
  a.out.write.addr = iomap::kNullAddr;
  a.out.write.type = kTypePureOverwrite;
  return a;
}

std::string ToString(const Answer& a) {
  if (a.ret != kFibHandled) return "FALLBACK(" + std::to_string(a.ret) + ")";
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "HANDLED read{off=%" PRIu64 " len=%" PRIu64 " addr=0x%" PRIx64
                " type=%u flags=0x%x dev=%u} write{off=%" PRIu64 " len=%" PRIu64 " addr=0x%" PRIx64
                " type=%u flags=0x%x dev=%u}",
                a.out.read.offset, a.out.read.length, a.out.read.addr, a.out.read.type,
                a.out.read.flags, a.out.read.dev, a.out.write.offset, a.out.write.length,
                a.out.write.addr, a.out.write.type, a.out.write.flags, a.out.write.dev);
  return buf;
}

}  // namespace iomapfs::bpf
