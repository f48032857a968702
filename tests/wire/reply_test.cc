// Golden-byte tests of reply, directory and notification encoding.

#include "fsserver/wire/reply.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "fsserver/wire/fuse_abi.h"
#include "tests/wire/wire_test_util.h"

namespace iomapfs::wire {
namespace {

using namespace abi;  // NOLINT(build/namespaces)
using testing::kUnique;
using testing::Le;
using testing::ToVector;

template <class T>
std::vector<std::byte> Raw(const T& v) {
  return ToVector(BytesOf(v));
}

fuse_attr DirAttr() {
  fuse_attr a{};
  a.ino = 2;
  a.size = 4096;
  a.blocks = 8;
  a.atime = 1;
  a.mtime = 2;
  a.ctime = 3;
  a.atimensec = 4;
  a.mtimensec = 5;
  a.ctimensec = 6;
  a.mode = 040755;
  a.nlink = 3;
  a.uid = 0;
  a.gid = 0;
  a.rdev = 0;
  a.blksize = 4096;
  a.flags = FUSE_ATTR_EXCLUSIVE | FUSE_ATTR_IOMAP;
  return a;
}

Le DirAttrBytes() {
  return Le()
      .u64(2)
      .u64(4096)
      .u64(8)
      .u64(1)
      .u64(2)
      .u64(3)
      .u32(4)
      .u32(5)
      .u32(6)
      .u32(040755)
      .u32(3)
      .u32(0)
      .u32(0)
      .u32(0)
      .u32(4096)
      .u32(0xc);
}

fuse_attr FileAttr(uint64_t ino) {
  fuse_attr a{};
  a.ino = ino;
  a.size = 10;
  a.blocks = 8;
  a.mode = 0100644;
  a.nlink = 1;
  a.uid = 1000;
  a.gid = 1000;
  a.blksize = 4096;
  return a;
}

Le FileAttrBytes(uint64_t ino) {
  return Le()
      .u64(ino)
      .u64(10)
      .u64(8)
      .zeros(24)
      .zeros(12)
      .u32(0100644)
      .u32(1)
      .u32(1000)
      .u32(1000)
      .u32(0)
      .u32(4096)
      .u32(0);
}

TEST(ReplyTest, HeaderSuccess) {
  auto h = ReplyHeader(Unique(kUnique), 0, 128);
  EXPECT_EQ(Raw(h), Le().u32(144).u32(0).u64(kUnique).bytes());
}

TEST(ReplyTest, HeaderError) {
  // An error reply is header-only whatever body_len says; the errno goes negative.
  EXPECT_EQ(Raw(ReplyHeader(Unique(7), ENOENT, 100)), Le().u32(16).u32(0xfffffffe).u64(7).bytes());
  EXPECT_EQ(EncodeReply(Unique(kUnique), ENOSYS),
            Le().u32(16).u32(static_cast<uint32_t>(-ENOSYS)).u64(kUnique).bytes());
  // Out-of-range errors would make the kernel reject the reply: sent as EIO.
  for (int bad : {-3, 512, 100000}) {
    EXPECT_EQ(ReplyHeader(Unique(1), bad, 0).error, -EIO) << bad;
  }
  EXPECT_EQ(ReplyHeader(Unique(1), 511, 0).error, -511);
}

TEST(ReplyTest, EntryOutTranslatesRootNodeIdOnly) {
  auto e = MakeEntryOut(Ino(2), 5, DirAttr(), {1, 500}, {2, 600});
  auto want = Le().u64(1).u64(5).u64(1).u64(2).u32(500).u32(600).append(DirAttrBytes().bytes());
  EXPECT_EQ(Raw(e), want.bytes());
  EXPECT_EQ(e.attr.ino, 2u);  // the real inode number stays

  auto full = EncodeReply(Unique(kUnique), e);
  EXPECT_EQ(full, Le().u32(144).u32(0).u64(kUnique).append(want.bytes()).bytes());

  auto other = MakeEntryOut(Ino(12), 9, FileAttr(12), {}, {});
  EXPECT_EQ(other.nodeid, 12u);
  EXPECT_EQ(other.generation, 9u);
}

TEST(ReplyTest, NegativeEntry) {
  auto e = MakeNegativeEntryOut({3, 7});
  EXPECT_EQ(Raw(e), Le().u64(0).u64(0).u64(3).u64(0).u32(7).u32(0).zeros(88).bytes());
}

TEST(ReplyTest, AttrOut) {
  auto a = MakeAttrOut(DirAttr(), {1, 2});
  EXPECT_EQ(Raw(a), Le().u64(1).u32(2).u32(0).append(DirAttrBytes().bytes()).bytes());
}

TEST(ReplyTest, SmallStructs) {
  EXPECT_EQ(Raw(MakeOpenOut(FileHandle(0x10), FOPEN_KEEP_CACHE)),
            Le().u64(0x10).u32(2).u32(0).bytes());
  EXPECT_EQ(Raw(MakeOpenOut(FileHandle(0x11), FOPEN_PASSTHROUGH, 3)),
            Le().u64(0x11).u32(0x80).u32(3).bytes());
  EXPECT_EQ(Raw(MakeWriteOut(5)), Le().u32(5).u32(0).bytes());
  EXPECT_EQ(Raw(MakeGetxattrOut(77)), Le().u32(77).u32(0).bytes());
  EXPECT_EQ(Raw(MakeLseekOut(0x123456789)), Le().u64(0x123456789).bytes());
  EXPECT_EQ(Raw(MakeBmapOut(42)), Le().u64(42).bytes());
  EXPECT_EQ(Raw(MakeCopyFileRangeOut(0x100000000)), Le().u64(0x100000000).bytes());
  EXPECT_EQ(Raw(MakeIomapIoendOut(8192)), Le().u64(8192).bytes());
}

TEST(ReplyTest, StatfsOut) {
  fuse_kstatfs st{};
  st.blocks = 1000;
  st.bfree = 500;
  st.bavail = 400;
  st.files = 100;
  st.ffree = 50;
  st.bsize = 4096;
  st.namelen = 255;
  st.frsize = 4096;
  EXPECT_EQ(Raw(MakeStatfsOut(st)), Le().u64(1000)
                                        .u64(500)
                                        .u64(400)
                                        .u64(100)
                                        .u64(50)
                                        .u32(4096)
                                        .u32(255)
                                        .u32(4096)
                                        .u32(0)
                                        .zeros(24)
                                        .bytes());
}

TEST(ReplyTest, StatxOut) {
  fuse_statx sx{};
  sx.mask = 0xfff;
  sx.blksize = 4096;
  sx.nlink = 1;
  sx.uid = 5;
  sx.gid = 6;
  sx.mode = 0100600;
  sx.ino = 12;
  sx.size = 3;
  sx.blocks = 8;
  sx.btime = {1600000000, 7, 0};
  sx.rdev_major = 8;
  sx.dev_minor = 1;
  sx.dio_mem_align = 512;
  sx.dio_offset_align = 4096;
  sx.atomic_write_unit_min = 4096;
  sx.atomic_write_unit_max = 8192;
  sx.atomic_write_segments_max = 1;
  auto want = Le().u64(60).u32(9).u32(0).u64(0).u64(0);  // attr_valid, nsec, flags, spare
  want.u32(0xfff).u32(4096).u64(0).u32(1).u32(5).u32(6).u16(0100600).u16(0);
  want.u64(12).u64(3).u64(8).u64(0);
  want.zeros(16).u64(1600000000).u32(7).u32(0).zeros(32);  // atime, btime, ctime, mtime
  want.u32(8).u32(0).u32(0).u32(1);
  want.u64(0).u32(512).u32(4096).u64(0);          // mnt_id, dio_mem_align/offset_align, subvol
  want.u32(4096).u32(8192).u32(1).u32(0).u32(0);  // atomic write unit min/max, segments, ...
  want.zeros(4 + 64);                             // __spare2, __spare3
  EXPECT_EQ(Raw(MakeStatxOut(sx, {60, 9})), want.bytes());
}

TEST(ReplyTest, InitOutSplitsFlags) {
  InitOutParams p;
  p.max_readahead = 0x20000;
  p.flags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_IOMAP | FUSE_OVER_IO_URING;
  p.max_background = 16;
  p.congestion_threshold = 12;
  p.max_write = 1 << 20;
  p.time_gran = 1;
  p.max_pages = 256;
  p.request_timeout = 30;
  auto want = Le().u32(7)
                  .u32(45)
                  .u32(0x20000)
                  .u32(0x40400021)
                  .u16(16)
                  .u16(12)
                  .u32(1 << 20)
                  .u32(1)
                  .u16(256)
                  .u16(0)
                  .u32(0xa00)
                  .u32(0)
                  .u16(30)
                  .zeros(22);
  EXPECT_EQ(Raw(MakeInitOut(p)), want.bytes());

  // No bit >= 32: no FUSE_INIT_EXT, flags2 0.
  InitOutParams low;
  low.minor = FUSE_IOMAP_KERNEL_MINOR_VERSION;
  low.flags = FUSE_ASYNC_READ;
  auto o = MakeInitOut(low);
  EXPECT_EQ(o.minor, 99u);
  EXPECT_EQ(o.flags, 1u);
  EXPECT_EQ(o.flags2, 0u);
}

fuse_iomap_io Mapped() { return {0, 4096, 0x10000, FUSE_IOMAP_TYPE_MAPPED, FUSE_IOMAP_F_NEW, 1}; }
fuse_iomap_io Overwrite() {
  return {0, 4096, FUSE_IOMAP_NULL_ADDR, FUSE_IOMAP_TYPE_PURE_OVERWRITE, 0, FUSE_IOMAP_DEV_NULL};
}
Le MappedBytes() { return Le().u64(0).u64(4096).u64(0x10000).u16(2).u16(1).u32(1); }
Le OverwriteBytes() { return Le().u64(0).u64(4096).u64(~0ull).u16(255).u16(0).u32(0); }

TEST(ReplyTest, IomapBeginOut) {
  EXPECT_EQ(Raw(MakeIomapBeginOut(Mapped(), Overwrite())),
            Le().append(MappedBytes().bytes()).append(OverwriteBytes().bytes()).bytes());
}

TEST(ReplyTest, IomapConfigOut) {
  uint8_t uuid[16];
  for (int i = 0; i < 16; ++i) uuid[i] = static_cast<uint8_t>(i + 1);
  IomapConfig c;
  c.flags = FUSE_IOMAP_CONFIG_SID | FUSE_IOMAP_CONFIG_UUID | FUSE_IOMAP_CONFIG_BLOCKSIZE |
            FUSE_IOMAP_CONFIG_TIME | FUSE_IOMAP_CONFIG_MAXBYTES;
  c.s_id = "iomapfs";
  c.uuid = uuid;
  c.blocksize = 4096;
  c.max_links = 65000;
  c.time_gran = 1;
  c.time_min = -0x80000000ll;
  c.time_max = 0x37fffffffll;
  c.maxbytes = 0x1000000000000ll;
  auto want = Le().u64(0x37).raw("iomapfs").zeros(25);
  for (int i = 0; i < 16; ++i) want.u8(i + 1);
  want.u8(16)
      .zeros(3)
      .u32(4096)
      .u32(65000)
      .u32(1)
      .u64(static_cast<uint64_t>(-0x80000000ll))
      .u64(0x37fffffffll)
      .u64(0x1000000000000ll)
      .u32(0)
      .u32(0);
  EXPECT_EQ(Raw(MakeIomapConfigOut(c)), want.bytes());

  // A long s_id is cut to 31 bytes and stays NUL-terminated.
  std::string long_id(40, 'x');
  c.s_id = long_id;
  auto o = MakeIomapConfigOut(c);
  EXPECT_EQ(std::string(o.s_id), std::string(31, 'x'));
}

TEST(BodyWriterTest, AppendsUntilFull) {
  std::byte storage[24];
  BodyWriter w(storage);
  EXPECT_TRUE(w.Append(MakeOpenOut(FileHandle(1), 0)));
  EXPECT_FALSE(w.Append(MakeOpenOut(FileHandle(2), 0)));  // 16 more do not fit in 8
  EXPECT_EQ(w.size(), 16u);
  EXPECT_FALSE(w.AppendCString("12345678"));  // 9 bytes
  EXPECT_TRUE(w.AppendCString("1234567"));
  EXPECT_EQ(w.size(), 24u);
  EXPECT_FALSE(w.AppendBytes(std::vector<std::byte>(1)));
  EXPECT_TRUE(w.AppendBytes({}));
  EXPECT_EQ(ToVector(w.bytes()), Le().u64(1).u32(0).u32(0).str("1234567").bytes());
}

TEST(BodyWriterTest, CreateReplyIsEntryThenOpen) {
  std::vector<std::byte> storage(256);
  BodyWriter w(storage);
  ASSERT_TRUE(w.Append(MakeEntryOut(Ino(12), 1, FileAttr(12), {}, {})));
  ASSERT_TRUE(w.Append(MakeOpenOut(FileHandle(3), 0)));
  EXPECT_EQ(w.size(), 144u);
  auto want = Le().u64(12).u64(1).zeros(24).append(FileAttrBytes(12).bytes()).u64(3).u64(0);
  EXPECT_EQ(ToVector(w.bytes()), want.bytes());
}

// --- Directory listings -----------------------------------------------------------------------

TEST(DirentBufferTest, GoldenRecordsAndAlignment) {
  std::vector<std::byte> storage(72, std::byte{0xaa});  // padding must be zeroed
  DirentBuffer buf(storage);
  EXPECT_EQ(buf.Add(Ino(2), 1, 4, "."), DirentBuffer::Status::kAdded);
  EXPECT_EQ(buf.size(), 32u);
  EXPECT_EQ(buf.Add(Ino(12), 2, 8, "hello.txt"), DirentBuffer::Status::kAdded);
  EXPECT_EQ(buf.size(), 72u);
  EXPECT_EQ(buf.Add(Ino(13), 3, 8, "x"), DirentBuffer::Status::kFull);
  EXPECT_EQ(buf.size(), 72u);
  auto want = Le().u64(2).u64(1).u32(1).u32(4).raw(".").zeros(7);
  want.u64(12).u64(2).u32(9).u32(8).raw("hello.txt").zeros(7);
  EXPECT_EQ(ToVector(buf.bytes()), want.bytes());
}

TEST(DirentBufferTest, ExactFitAndFull) {
  std::vector<std::byte> storage(31);
  DirentBuffer buf(storage);
  EXPECT_EQ(buf.Add(Ino(5), 1, 8, "a"), DirentBuffer::Status::kFull);  // needs 32
  EXPECT_TRUE(buf.empty());
  std::vector<std::byte> exact(32);
  DirentBuffer buf2(exact);
  EXPECT_EQ(buf2.Add(Ino(5), 1, 8, "12345678"), DirentBuffer::Status::kAdded);  // 24 + 8
  EXPECT_EQ(buf2.size(), 32u);
}

TEST(DirentBufferTest, InvalidNames) {
  std::vector<std::byte> storage(4096);
  DirentBuffer buf(storage);
  EXPECT_EQ(buf.Add(Ino(5), 1, 8, ""), DirentBuffer::Status::kInvalidName);
  EXPECT_EQ(buf.Add(Ino(5), 1, 8, "a/b"), DirentBuffer::Status::kInvalidName);
  EXPECT_EQ(buf.Add(Ino(5), 1, 8, std::string_view("a\0b", 3)), DirentBuffer::Status::kInvalidName);
  EXPECT_EQ(buf.Add(Ino(5), 1, 8, std::string(1025, 'n')), DirentBuffer::Status::kInvalidName);
  EXPECT_EQ(buf.Add(Ino(5), 1, 8, std::string(1024, 'n')), DirentBuffer::Status::kAdded);
  EXPECT_EQ(buf.AddPlus(MakeNegativeEntryOut({}), 1, "/"), DirentBuffer::Status::kInvalidName);
}

TEST(DirentBufferTest, DirentPlusGolden) {
  std::vector<std::byte> storage(160 + 159, std::byte{0xaa});
  DirentBuffer buf(storage);
  auto entry = MakeEntryOut(Ino(12), 1, FileAttr(12), {1, 0}, {1, 0});
  EXPECT_EQ(buf.AddPlus(entry, 3, "f"), DirentBuffer::Status::kAdded);
  EXPECT_EQ(buf.size(), 160u);
  auto want = Le().u64(12).u64(1).u64(1).u64(1).u32(0).u32(0).append(FileAttrBytes(12).bytes());
  want.u64(12).u64(3).u32(1).u32(8).raw("f").zeros(7);  // ino from attr, DT_REG from mode
  EXPECT_EQ(ToVector(buf.bytes()), want.bytes());
  EXPECT_EQ(buf.AddPlus(entry, 4, "g"), DirentBuffer::Status::kFull);  // 159 left < 160

  // The root's entry: node id 1, dirent ino 2, DT_DIR.
  std::vector<std::byte> s2(160);
  DirentBuffer root(s2);
  EXPECT_EQ(root.AddPlus(MakeEntryOut(Ino(2), 0, DirAttr(), {}, {}), 1, "."),
            DirentBuffer::Status::kAdded);
  auto rec = ToVector(root.bytes());
  EXPECT_EQ(std::vector<std::byte>(rec.begin(), rec.begin() + 8), Le().u64(1).bytes());
  EXPECT_EQ(std::vector<std::byte>(rec.begin() + 128, rec.begin() + 152),
            Le().u64(2).u64(1).u32(1).u32(4).bytes());
}

// --- Notifications --------------------------------------------------------------------------

Le NotifyHdr(uint32_t len, uint32_t code) { return Le().u32(len).u32(code).u64(0); }

TEST(NotifyTest, InvalInode) {
  EXPECT_EQ(EncodeNotifyInvalInode(Ino(2), 0, -1),
            NotifyHdr(40, 2).u64(1).u64(0).u64(~0ull).bytes());
  EXPECT_EQ(EncodeNotifyInvalInode(Ino(9), 4096, 8192),
            NotifyHdr(40, 2).u64(9).u64(4096).u64(8192).bytes());
}

TEST(NotifyTest, InvalEntry) {
  EXPECT_EQ(EncodeNotifyInvalEntry(Ino(2), "foo", FUSE_EXPIRE_ONLY),
            NotifyHdr(36, 3).u64(1).u32(3).u32(1).str("foo").bytes());
}

TEST(NotifyTest, Delete) {
  EXPECT_EQ(EncodeNotifyDelete(Ino(5), Ino(9), "x"),
            NotifyHdr(42, 6).u64(5).u64(9).u32(1).u32(0).str("x").bytes());
  EXPECT_EQ(EncodeNotifyDelete(Ino(2), Ino(9), "x"),
            NotifyHdr(42, 6).u64(1).u64(9).u32(1).u32(0).str("x").bytes());
}

TEST(NotifyTest, Store) {
  std::string data = "abc";
  EXPECT_EQ(EncodeNotifyStore(Ino(7), 0x1000, std::as_bytes(std::span(data))),
            NotifyHdr(43, 4).u64(7).u64(0x1000).u32(3).u32(0).raw("abc").bytes());
}

TEST(NotifyTest, RetrieveAndPoll) {
  EXPECT_EQ(EncodeNotifyRetrieve(77, Ino(2), 0, 4096),
            NotifyHdr(48, 5).u64(77).u64(1).u64(0).u32(4096).u32(0).bytes());
  EXPECT_EQ(EncodeNotifyPollWakeup(5), NotifyHdr(24, 1).u64(5).bytes());
}

TEST(NotifyTest, HeaderOnly) {
  EXPECT_EQ(EncodeNotifyResend(), NotifyHdr(16, 7).bytes());
  EXPECT_EQ(EncodeNotifyIncEpoch(), NotifyHdr(16, 8).bytes());
}

TEST(NotifyTest, Prune) {
  Ino inos[] = {Ino(2), Ino(9)};
  EXPECT_EQ(EncodeNotifyPrune(inos), NotifyHdr(48, 9).u32(2).u32(0).u64(0).u64(1).u64(9).bytes());
  EXPECT_EQ(EncodeNotifyPrune({}), NotifyHdr(32, 9).u32(0).u32(0).u64(0).bytes());
}

TEST(NotifyTest, IomapUpsert) {
  // The root: node id 1, attr_ino 2.
  EXPECT_EQ(EncodeNotifyIomapUpsert(Ino(2), Mapped(), Overwrite()),
            NotifyHdr(96, 100)
                .u64(1)
                .u64(2)
                .append(MappedBytes().bytes())
                .append(OverwriteBytes().bytes())
                .bytes());
}

TEST(NotifyTest, IomapInval) {
  EXPECT_EQ(EncodeNotifyIomapInval(Ino(9), {0, FUSE_IOMAP_INVAL_TO_EOF}, {0, 0}),
            NotifyHdr(64, 101).u64(9).u64(9).u64(0).u64(~0ull).u64(0).u64(0).bytes());
}

TEST(NotifyTest, IomapDevInval) {
  EXPECT_EQ(EncodeNotifyIomapDevInval(1, {0x1000, 0x2000}),
            NotifyHdr(40, 99).u32(1).u32(0).u64(0x1000).u64(0x2000).bytes());
}

}  // namespace
}  // namespace iomapfs::wire
