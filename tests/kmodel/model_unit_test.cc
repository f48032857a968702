// Unit tests of the kernel model's own cache and validation (spec §12, §4.5).
#include <gtest/gtest.h>

#include "tests/kmodel/model_cache.h"
#include "tests/kmodel/model_validate.h"

namespace iomapfs::kmodel {
namespace {

abi::fuse_iomap_io Io(uint64_t off, uint64_t len, uint16_t type, uint64_t addr = ~0ull,
                      uint32_t dev = 0) {
  abi::fuse_iomap_io io{};
  io.offset = off;
  io.length = len;
  io.type = type;
  io.addr = addr;
  io.dev = dev;
  return io;
}

TEST(ModelCache, UpsertMergesAndInvalSplits) {
  ModelFork f;
  f.Upsert(Io(0, 4096, abi::FUSE_IOMAP_TYPE_MAPPED, 8192, 1), 1 << 20);
  f.Upsert(Io(4096, 4096, abi::FUSE_IOMAP_TYPE_MAPPED, 12288, 1), 1 << 20);
  EXPECT_EQ(f.records(), 1u);
  EXPECT_EQ(f.Find(5000)->length, 8192u);
  f.Remove(4096, 1024 * 0 + 4096);
  EXPECT_EQ(f.records(), 1u);
  EXPECT_FALSE(f.Find(4096));
  f.Upsert(Io(8192, 8192, abi::FUSE_IOMAP_TYPE_HOLE), 1 << 20);
  f.Remove(0, abi::FUSE_IOMAP_INVAL_TO_EOF);
  EXPECT_EQ(f.records(), 0u);
  // The limit: a fork over it is discarded whole by the next UPSERT.
  for (int i = 0; i < 20; ++i) f.Upsert(Io(i * 8192, 4096, abi::FUSE_IOMAP_TYPE_HOLE), 256);
  EXPECT_GT(f.discards(), 0u);
  EXPECT_LE(f.bytes(), 256u + 32u);
}

TEST(ModelValidate, BeginSlots) {
  ValidationContext c;
  c.block_size = 4096;
  c.max_bytes = 1ull << 40;
  c.dev_known = [](const void*, uint32_t dev, uint64_t* size) {
    *size = 1 << 30;
    return dev == 1;
  };
  std::string why;
  EXPECT_EQ(ValidateBeginSlot(c, Io(0, 4096, abi::FUSE_IOMAP_TYPE_MAPPED, 4096, 1), Slot::kRead, 10,
                              0, false, &why),
            0);
  EXPECT_EQ(ValidateBeginSlot(c, Io(512, 4096, abi::FUSE_IOMAP_TYPE_HOLE), Slot::kRead, 600, 0,
                              false, &why),
            EUCLEAN);  // misaligned
  EXPECT_EQ(ValidateBeginSlot(c, Io(0, 4096, abi::FUSE_IOMAP_TYPE_HOLE), Slot::kRead, 4096, 0,
                              false, &why),
            EUCLEAN);  // does not cover pos
  EXPECT_EQ(ValidateBeginSlot(c, Io(0, 4096, abi::FUSE_IOMAP_TYPE_MAPPED, 4096, 2), Slot::kRead, 0,
                              0, false, &why),
            EUCLEAN);  // unknown device
  EXPECT_EQ(ValidateBeginSlot(c, Io(0, 4096, abi::FUSE_IOMAP_TYPE_RETRY_CACHE), Slot::kRead, 0, 0,
                              false, &why),
            EUCLEAN);  // no cache yet
  EXPECT_EQ(ValidateBeginSlot(c, Io(0, 4096, abi::FUSE_IOMAP_TYPE_PURE_OVERWRITE), Slot::kRead, 0,
                              0, false, &why),
            EUCLEAN);
  EXPECT_EQ(ValidateBeginSlot(c, Io(0, 8192, abi::FUSE_IOMAP_TYPE_INLINE), Slot::kRead, 0, 0, false,
                              &why),
            ENOMEM);
  abi::fuse_iomap_begin_out out{Io(0, 4096, abi::FUSE_IOMAP_TYPE_MAPPED, 4096, 1),
                                Io(0, 4096, abi::FUSE_IOMAP_TYPE_PURE_OVERWRITE)};
  EXPECT_EQ(ValidateBeginReply(
                c, out, 0,
                abi::FUSE_IOMAP_OP_ATOMIC | abi::FUSE_IOMAP_OP_WRITE | abi::FUSE_IOMAP_OP_DIRECT,
                false, &why),
            EIO);  // atomic without F_ATOMIC_BIO
}

}  // namespace
}  // namespace iomapfs::kmodel
