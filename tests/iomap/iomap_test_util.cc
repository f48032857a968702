#include "tests/iomap/iomap_test_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstring>

namespace iomapfs::iomap::testing {

std::string PatternBytes(uint64_t seed, uint64_t offset, size_t len) {
  std::string out(len, '\0');
  for (size_t i = 0; i < len; ++i) {
    uint64_t x = (offset + i) / 8 * 0x9E3779B97F4A7C15ull + seed * 0xD6E8FEB86659FD93ull;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    char c = static_cast<char>(x >> (8 * ((offset + i) % 8)));
    out[i] = c == 0 ? 1 : c;  // never zero, so data and holes differ
  }
  return out;
}

bool WriteSparseFile(const std::string& path, uint64_t size, const std::vector<Piece>& pieces,
                     uint64_t seed) {
  int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  bool ok = ::ftruncate(fd, static_cast<off_t>(size)) == 0;
  for (const Piece& p : pieces) {
    std::string data = PatternBytes(seed, p.offset, p.len);
    ok = ok && ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(p.offset)) ==
                   static_cast<ssize_t>(data.size());
  }
  return ::close(fd) == 0 && ok;
}

std::string ExpectedBytes(uint64_t size, const std::vector<Piece>& pieces, uint64_t seed,
                          uint64_t offset, uint64_t len) {
  if (offset >= size) return "";
  len = std::min(len, size - offset);
  std::string out(len, '\0');
  for (const Piece& p : pieces) {
    uint64_t b = std::max(p.offset, offset);
    uint64_t e = std::min(p.offset + p.len, offset + len);
    if (b >= e) continue;
    std::string data = PatternBytes(seed, b, e - b);
    std::memcpy(out.data() + (b - offset), data.data(), data.size());
  }
  return out;
}

OpenedFs OpenImage(const std::string& image) {
  OpenedFs o;
  std::string why;
  auto fs = ext2::Ext2Fs::Open(image, ext2::OpenOptions{}, &why);
  EXPECT_TRUE(fs.has_value()) << why;
  if (!fs) return o;
  o.fs = std::move(*fs);
  o.engine = std::make_unique<Engine>(*o.fs);
  auto g = o.fs->Lock();
  o.device_bytes = ext2fs_blocks_count(g->super) * static_cast<uint64_t>(g->blocksize);
  return o;
}

uint64_t LookupIno(ext2::Ext2Fs& fs, const std::string& path) {
  auto g = fs.Lock();
  ext2_ino_t ino = 0;
  if (ext2fs_namei(g.fs(), EXT2_ROOT_INO, EXT2_ROOT_INO, path.c_str(), &ino) != 0) return 0;
  return ino;
}

uint64_t FileSize(ext2::Ext2Fs& fs, uint64_t ino) {
  auto g = fs.Lock();
  ext2_inode inode;
  if (ext2fs_read_inode(g.fs(), static_cast<ext2_ino_t>(ino), &inode) != 0) return 0;
  return EXT2_I_SIZE(&inode);
}

Result<Mapping> CheckedMap(OpenedFs& o, uint64_t ino, uint64_t pos, uint64_t len,
                           uint32_t opflags) {
  auto g = o.fs->Lock();
  Result<Mapping> m = o.engine->Map(g, Ino(ino), pos, len, opflags);
  if (m) {
    std::string why;
    EXPECT_TRUE(CheckMapping(*m, pos, o.fs->block_size(), o.device_bytes, &why).has_value())
        << "ino " << ino << " pos " << pos << " len " << len << ": " << why;
    uint64_t bs = o.fs->block_size();
    uint64_t limit = pos + len < pos ? UINT64_MAX : pos + len;
    // Not past the first block boundary at or after pos + len.
    if (m->type != MappingType::kInline && limit <= UINT64_MAX - bs) {
      EXPECT_LE(m->end(), (limit + bs - 1) / bs * bs) << ToString(*m) << " pos " << pos;
    }
    if (m->type != MappingType::kInline) {
      EXPECT_EQ(m->offset, pos / bs * bs) << ToString(*m) << " pos " << pos;
    }
  }
  return m;
}

Result<std::vector<Mapping>> CheckedMapRange(OpenedFs& o, uint64_t ino, uint64_t pos, uint64_t len,
                                             uint32_t opflags) {
  auto g = o.fs->Lock();
  auto r = o.engine->MapRange(g, Ino(ino), pos, len, opflags);
  if (!r) return r;
  const uint64_t bs = o.fs->block_size();
  uint64_t expect = pos;
  for (size_t i = 0; i < r->size(); ++i) {
    const Mapping& m = (*r)[i];
    std::string why;
    EXPECT_TRUE(CheckMapping(m, expect, o.fs->block_size(), o.device_bytes, &why).has_value())
        << "ino " << ino << " mapping " << i << ": " << why;
    if (i > 0) {
      EXPECT_EQ(m.offset, expect) << "gap/overlap at mapping " << i << ToString(m);
    }
    expect = m.end();
    if (m.type == MappingType::kInline) expect = (expect + bs - 1) / bs * bs;
  }
  if (!r->empty()) {
    EXPECT_GE(r->back().end(), pos + len);
  }
  return r;
}

Result<std::string> ReadThroughEngine(OpenedFs& o, uint64_t ino, uint64_t pos, uint64_t len) {
  uint64_t size = FileSize(*o.fs, ino);
  if (pos >= size) return std::string();
  len = std::min(len, size - pos);
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<Mapping> maps, CheckedMapRange(o, ino, pos, len));
  std::string out(len, '\0');
  for (const Mapping& m : maps) {
    uint64_t b = std::max(m.offset, pos);
    uint64_t e = std::min(m.end(), pos + len);
    if (b >= e) continue;
    std::span<std::byte> dst(reinterpret_cast<std::byte*>(out.data()) + (b - pos), e - b);
    switch (m.type) {
      case MappingType::kMapped:
        // Device I/O outside the metadata lock.
        IOMAPFS_TRY(o.fs->data().ReadAt(dst, m.addr + (b - m.offset)));
        break;
      case MappingType::kInline: {
        auto g = o.fs->Lock();
        IOMAPFS_ASSIGN_OR_RETURN(size_t n, o.engine->ReadInline(g, Ino(ino), b, dst));
        EXPECT_EQ(n, e - b);
        break;
      }
      default:
        break;  // HOLE, UNWRITTEN: zeros
    }
  }
  return out;
}

void ProbeConsistency(OpenedFs& o, uint64_t ino, uint64_t size, uint64_t seed) {
  const uint64_t bs = o.fs->block_size();
  uint64_t span = size + 4 * bs;
  auto all = CheckedMapRange(o, ino, 0, span);
  ASSERT_TRUE(all.has_value()) << "errno " << all.error();
  std::vector<uint64_t> positions = {0, 1, bs - 1, bs, bs + 1, 2 * bs};
  if (size > 0) {
    positions.push_back(size - 1);
    positions.push_back(size);
    positions.push_back(size / 2);
  }
  uint64_t x = seed * 2654435761u + 1;
  for (int i = 0; i < 64; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    positions.push_back((x >> 11) % span);
  }
  for (uint64_t pos : positions) {
    if (pos >= span) continue;
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t len = 1 + (x >> 20) % (64 * bs);
    auto m = CheckedMap(o, ino, pos, len);
    ASSERT_TRUE(m.has_value()) << "pos " << pos << " errno " << m.error();
    // The same byte in the whole-range view.
    auto it = std::find_if(all->begin(), all->end(),
                           [&](const Mapping& a) { return a.offset <= pos && pos < a.end(); });
    if (it == all->end() && !all->empty() && all->front().type == MappingType::kInline &&
        pos >= all->front().end() && pos < bs) {
      continue;  // the tail of the inline block, past EOF: MapRange skips it
    }
    ASSERT_NE(it, all->end()) << "pos " << pos;
    if (m->type == MappingType::kInline || it->type == MappingType::kInline) {
      // Past the inline data the two views may disagree on the block's tail (past EOF).
      if (pos < size) {
        EXPECT_EQ(m->type, it->type) << "pos " << pos;
      }
      continue;
    }
    EXPECT_EQ(m->type, it->type) << "pos " << pos << " " << ToString(*m) << " vs " << ToString(*it);
    if (m->addr != kNullAddr && it->addr != kNullAddr) {
      EXPECT_EQ(m->addr - m->offset, it->addr - it->offset) << "pos " << pos;
    }
  }
}

std::vector<PhysRange> MergePhys(std::vector<PhysRange> ranges) {
  std::sort(ranges.begin(), ranges.end(),
            [](const PhysRange& a, const PhysRange& b) { return a.offset < b.offset; });
  std::vector<PhysRange> out;
  for (const PhysRange& r : ranges) {
    if (r.length == 0) continue;
    if (!out.empty()) {
      PhysRange& l = out.back();
      if (l.unwritten == r.unwritten && l.offset + l.length == r.offset &&
          l.addr + l.length == r.addr) {
        l.length += r.length;
        continue;
      }
    }
    out.push_back(r);
  }
  return out;
}

Result<std::vector<PhysRange>> EnginePhys(OpenedFs& o, uint64_t ino, uint64_t size) {
  std::vector<PhysRange> out;
  if (size == 0) return out;
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<Mapping> maps, CheckedMapRange(o, ino, 0, size, kOpReport));
  for (const Mapping& m : maps) {
    if (m.type == MappingType::kMapped || m.type == MappingType::kUnwritten) {
      out.push_back(PhysRange{m.offset, m.length, m.addr, m.type == MappingType::kUnwritten});
    }
  }
  return MergePhys(std::move(out));
}

std::string ToString(const std::vector<PhysRange>& ranges) {
  std::string s;
  char buf[128];
  for (const PhysRange& r : ranges) {
    std::snprintf(buf, sizeof(buf), "[%" PRIu64 "+%" PRIu64 "@%" PRIu64 "%s] ", r.offset, r.length,
                  r.addr, r.unwritten ? " U" : "");
    s += buf;
  }
  return s;
}

}  // namespace iomapfs::iomap::testing
