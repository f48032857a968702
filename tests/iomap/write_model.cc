#include "tests/iomap/write_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "ext2/inode_buf.h"
#include "iomap/extent_tree.h"

namespace iomapfs::iomap::testing {
namespace {

std::string FirstDiff(const std::string& a, const std::string& b) {
  size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return "first difference at +" + std::to_string(i);
  }
  return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
}

std::span<const std::byte> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

}  // namespace

OpenedFs OpenImageRw(const std::string& image) {
  OpenedFs o;
  std::string why;
  auto fs = ext2::Ext2Fs::Open(image, ext2::OpenOptions{.read_write = true}, &why);
  EXPECT_TRUE(fs.has_value()) << why;
  if (!fs) return o;
  o.fs = std::move(*fs);
  o.engine = std::make_unique<Engine>(*o.fs);
  auto g = o.fs->Lock();
  o.device_bytes = ext2fs_blocks_count(g->super) * static_cast<uint64_t>(g->blocksize);
  return o;
}

WriteModel::WriteModel(const std::string& image) : o_(OpenImageRw(image)) {
  if (o_.fs) bs_ = o_.fs->block_size();
}

uint64_t WriteModel::Track(const std::string& path) {
  uint64_t ino = LookupIno(*o_.fs, path);
  EXPECT_NE(ino, 0u) << path;
  if (ino == 0) return 0;
  uint64_t size = FileSize(*o_.fs, ino);
  auto data = ReadThroughEngine(o_, ino, 0, std::max<uint64_t>(size, 1));
  EXPECT_TRUE(data.has_value());
  model_[ino] = data.value_or("");
  return ino;
}

int WriteModel::ZeroSpans(const std::vector<ZeroSpan>& spans) {
  for (const ZeroSpan& s : spans) {
    EXPECT_GT(s.length, 0u);
    EXPECT_LE(s.addr + s.length, o_.device_bytes);
    std::string zeros(s.length, '\0');
    auto r = o_.fs->data().WriteAt(Bytes(zeros), s.addr);
    if (!r) return r.error();
  }
  return 0;
}

int WriteModel::Write(uint64_t ino, uint64_t pos, const std::string& data) {
  int err = WriteThroughEngine(o_, ino, pos, data);
  if (err != 0) return err;
  const uint64_t end = pos + data.size();
  std::string& f = model_[ino];
  if (f.size() < end) f.resize(end, '\0');
  std::memcpy(f.data() + pos, data.data(), data.size());
  return 0;
}

int WriteThroughEngine(OpenedFs& o_, uint64_t ino, uint64_t pos, const std::string& data) {
  const uint32_t bs_ = o_.fs->block_size();
  const uint64_t len = data.size();
  const uint64_t end = pos + len;
  auto zero_spans = [&](const std::vector<ZeroSpan>& spans) {
    for (const ZeroSpan& s : spans) {
      std::string zeros(s.length, '\0');
      auto r = o_.fs->data().WriteAt(Bytes(zeros), s.addr);
      if (!r) return r.error();
    }
    return 0;
  };
  std::vector<Mapping> maps;
  {
    auto g = o_.fs->Lock();
    ext2::Transaction tx(g);
    auto r = o_.engine->PrepareWrite(tx, Ino(ino), pos, len);
    if (!r) return r.error();
    maps = std::move(*r);
    EXPECT_TRUE(tx.Commit().has_value());
  }
  EXPECT_FALSE(maps.empty());
  if (maps.empty()) return EIO;
  if (maps[0].type == MappingType::kInline) {
    EXPECT_EQ(maps.size(), 1u);
    EXPECT_EQ(maps[0].offset, 0u);
    EXPECT_GE(maps[0].length, end);
    auto g = o_.fs->Lock();
    ext2::Transaction tx(g);
    auto n = o_.engine->WriteInline(tx, Ino(ino), pos, Bytes(data));
    if (!n) return n.error();
    EXPECT_EQ(*n, len);
    EXPECT_TRUE(tx.Commit().has_value());
  } else {
    // Exact coverage of [floor(pos), ceil(end)), every mapping valid and writable.
    uint64_t expect = pos / bs_ * bs_;
    for (const Mapping& m : maps) {
      std::string why;
      EXPECT_TRUE(CheckMapping(m, m.offset, bs_, o_.device_bytes, &why).has_value()) << why;
      EXPECT_EQ(m.offset, expect) << ToString(m);
      EXPECT_TRUE(m.type == MappingType::kMapped || m.type == MappingType::kUnwritten)
          << ToString(m);
      expect = m.end();
    }
    EXPECT_EQ(expect, (end + bs_ - 1) / bs_ * bs_);
    if (int e = zero_spans(Engine::WriteZeroSpans(maps, pos, len, bs_)); e != 0) return e;
    for (const Mapping& m : maps) {
      uint64_t b = std::max(m.offset, pos);
      uint64_t e = std::min(m.end(), end);
      if (b >= e) continue;
      auto r = o_.fs->data().WriteAt(Bytes(data.substr(b - pos, e - b)), m.addr + (b - m.offset));
      if (!r) return r.error();
    }
    auto g = o_.fs->Lock();
    ext2::Transaction tx(g);
    auto r = o_.engine->CompleteWrite(tx, Ino(ino), pos, len, end);
    if (!r) return r.error();
    EXPECT_TRUE(tx.Commit().has_value());
  }
  return 0;
}

int WriteModel::Truncate(uint64_t ino, uint64_t size) {
  std::vector<ZeroSpan> spans;
  {
    auto g = o_.fs->Lock();
    ext2::Transaction tx(g);
    auto r = o_.engine->Truncate(tx, Ino(ino), size);
    if (!r) return r.error();
    spans = std::move(*r);
    EXPECT_TRUE(tx.Commit().has_value());
  }
  if (int e = ZeroSpans(spans); e != 0) return e;
  model_[ino].resize(size, '\0');
  return 0;
}

int WriteModel::Punch(uint64_t ino, uint64_t pos, uint64_t len) {
  std::vector<ZeroSpan> spans;
  {
    auto g = o_.fs->Lock();
    ext2::Transaction tx(g);
    auto r = o_.engine->Punch(tx, Ino(ino), pos, len);
    if (!r) return r.error();
    spans = std::move(*r);
    EXPECT_TRUE(tx.Commit().has_value());
  }
  if (int e = ZeroSpans(spans); e != 0) return e;
  std::string& f = model_[ino];
  if (pos < f.size()) {
    uint64_t e = std::min<uint64_t>(f.size(), pos + len);
    std::memset(f.data() + pos, 0, e - pos);
  }
  return 0;
}

int WriteModel::Allocate(uint64_t ino, uint64_t pos, uint64_t len, bool keep_size) {
  {
    auto g = o_.fs->Lock();
    ext2::Transaction tx(g);
    auto r = o_.engine->Allocate(tx, Ino(ino), pos, len, keep_size);
    if (!r) return r.error();
    EXPECT_TRUE(tx.Commit().has_value());
  }
  std::string& f = model_[ino];
  if (!keep_size && f.size() < pos + len) f.resize(pos + len, '\0');
  return 0;
}

int WriteModel::ZeroRange(uint64_t ino, uint64_t pos, uint64_t len, bool keep_size) {
  std::vector<ZeroSpan> spans;
  {
    auto g = o_.fs->Lock();
    ext2::Transaction tx(g);
    auto r = o_.engine->ZeroRange(tx, Ino(ino), pos, len, keep_size);
    if (!r) return r.error();
    spans = std::move(*r);
    EXPECT_TRUE(tx.Commit().has_value());
  }
  if (int e = ZeroSpans(spans); e != 0) return e;
  std::string& f = model_[ino];
  if (!keep_size && f.size() < pos + len) f.resize(pos + len, '\0');
  if (pos < f.size()) {
    uint64_t e = std::min<uint64_t>(f.size(), pos + len);
    std::memset(f.data() + pos, 0, e - pos);
  }
  return 0;
}

void WriteModel::Verify(uint64_t ino) {
  SCOPED_TRACE("ino " + std::to_string(ino));
  const std::string& want = model_[ino];
  uint64_t size = FileSize(*o_.fs, ino);
  ASSERT_EQ(size, want.size());
  if (size > 0) {
    auto data = ReadThroughEngine(o_, ino, 0, size);
    ASSERT_TRUE(data.has_value()) << "errno " << data.error();
    ASSERT_TRUE(*data == want) << "content differs: " << FirstDiff(*data, want);
  }
  // Bytes past EOF in the last block read as zeros on the device (the zero-tail invariant).
  if (size % bs_ != 0) {
    auto m = CheckedMap(o_, ino, size - 1, 1);
    ASSERT_TRUE(m.has_value());
    if (m->type == MappingType::kMapped) {
      uint64_t tail = bs_ - size % bs_;
      std::string buf(tail, 'x');
      std::span<std::byte> dst(reinterpret_cast<std::byte*>(buf.data()), buf.size());
      ASSERT_TRUE(o_.fs->data().ReadAt(dst, m->addr + (size - m->offset)).has_value());
      EXPECT_EQ(buf, std::string(tail, '\0')) << "stale bytes past EOF";
    }
  }
}

void WriteModel::VerifyAll() {
  for (const auto& [ino, data] : model_) {
    Verify(ino);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

void WriteModel::RandomOps(int count, uint64_t max_size, uint64_t seed, bool allow_fallocate) {
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> inos;
  for (const auto& [ino, data] : model_) inos.push_back(ino);
  ASSERT_FALSE(inos.empty());
  auto pick_pos = [&]() -> uint64_t {
    uint64_t p = rng() % max_size;
    switch (rng() % 4) {
      case 0:
        return p / bs_ * bs_;
      case 1:
        return p / (64 * 1024) * (64 * 1024);
      default:
        return p;
    }
  };
  auto pick_len = [&](uint64_t pos) -> uint64_t {
    uint64_t room = max_size - pos;
    uint64_t len;
    switch (rng() % 4) {
      case 0:
        len = 1 + rng() % (2 * bs_);
        break;
      case 1:
        len = (1 + rng() % 16) * bs_;
        break;
      case 2:
        len = 1 + rng() % (256 * 1024);
        break;
      default:
        len = 1 + rng() % (1024 * 1024);
        break;
    }
    return std::max<uint64_t>(1, std::min(len, room));
  };
  for (int i = 0; i < count; ++i) {
    uint64_t ino = inos[rng() % inos.size()];
    uint64_t pos = pick_pos();
    uint64_t len = pick_len(pos);
    unsigned op = rng() % 100;
    std::string what;
    int err = 0;
    bool fallocate_op = false;
    if (op < 45) {
      what = "write";
      err = Write(ino, pos, PatternBytes(seed * 1000 + i, pos, len));
    } else if (op < 55) {
      what = "append";
      uint64_t size = model_[ino].size();
      len = std::min<uint64_t>(len, 300 * 1024);
      if (size + len > max_size) len = 1;
      err = Write(ino, size, PatternBytes(seed * 1000 + i, size, len));
      pos = size;
    } else if (op < 65) {
      what = "truncate";
      len = 0;
      pos = rng() % 3 == 0 ? pick_pos() / 2 : pick_pos();
      err = Truncate(ino, pos);
    } else if (op < 75) {
      what = "punch";
      err = Punch(ino, pos, len);
    } else if (op < 87) {
      what = "allocate";
      fallocate_op = true;
      err = Allocate(ino, pos, len, rng() % 2 == 0);
    } else {
      what = "zero_range";
      fallocate_op = true;
      err = ZeroRange(ino, pos, len, rng() % 2 == 0);
    }
    std::string ctx = "op " + std::to_string(i) + " " + what + " ino " + std::to_string(ino) +
                      " pos " + std::to_string(pos) + " len " + std::to_string(len);
    if (fallocate_op && !allow_fallocate) {
      EXPECT_TRUE(err == 0 || err == EOPNOTSUPP) << ctx << ": errno " << err;
    } else {
      ASSERT_EQ(err, 0) << ctx;
    }
    if (i % verify_every_ == 0 || i == count - 1) {
      SCOPED_TRACE(ctx);
      Verify(ino);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

void WriteModel::Close() {
  if (!o_.fs) return;
  o_.engine.reset();
  EXPECT_TRUE(o_.fs->Close().has_value());
  o_.fs.reset();
}

void WriteModel::Reopen(const std::string& image, bool read_write) {
  Close();
  if (read_write) {
    o_ = OpenImageRw(image);
  } else {
    o_ = OpenImage(image);
  }
}

size_t CountExtents(OpenedFs& o, uint64_t ino) {
  auto g = o.fs->Lock();
  auto inode = ext2::InodeBuf::Read(g, static_cast<ext2_ino_t>(ino));
  if (!inode || !inode->has_extents()) return 0;
  auto t = ExtentTree::Open(g, static_cast<ext2_ino_t>(ino), &*inode);
  if (!t) return 0;
  auto exts = t->List(0, kExtentLblkLimit);
  return exts ? exts->size() : 0;
}

}  // namespace iomapfs::iomap::testing
