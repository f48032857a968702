// Protocol corners through the kernel MODEL (no real iomap kernel is involved): NOWAIT, failed
// I/O completions (error IOENDs), FREEZE/UNFREEZE/SHUTDOWN/SYNCFS (§8), a small kernel cache
// limit (§12.1), swapfile activation after writes (§4.8), the cache of an unlinked file whose
// blocks are reused (§12), and the SET_BLOCKSIZE / SET_NOFS device ioctls (§11.2, §11.3) as
// model messages, untorn (atomic) writes (§4.7).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "base/unique_fd.h"
#include "tests/kmodel/harness.h"
#include "tests/support/test_util.h"

namespace iomapfs::kmodel {
namespace {

namespace tu = ::iomapfs::testing;

// A request body: the fixed part, then NUL-terminated names, then raw bytes.
template <class T>
std::vector<std::byte> Body(const T& fixed, std::initializer_list<std::string_view> names = {},
                            std::span<const std::byte> data = {}) {
  std::vector<std::byte> b(sizeof(T));
  std::memcpy(b.data(), &fixed, sizeof(T));
  for (std::string_view n : names) {
    auto bytes = std::as_bytes(std::span<const char>(n));
    b.insert(b.end(), bytes.begin(), bytes.end());
    b.push_back(std::byte{0});
  }
  b.insert(b.end(), data.begin(), data.end());
  return b;
}
std::vector<std::byte> Names(std::initializer_list<std::string_view> names) {
  std::vector<std::byte> b;
  for (std::string_view n : names) {
    auto bytes = std::as_bytes(std::span<const char>(n));
    b.insert(b.end(), bytes.begin(), bytes.end());
    b.push_back(std::byte{0});
  }
  return b;
}

bool AllZero(const std::vector<std::byte>& v) {
  return std::all_of(v.begin(), v.end(), [](std::byte b) { return b == std::byte{0}; });
}

class KmodelProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = dir_.Sub("src");
    ASSERT_EQ(mkdir(src_.c_str(), 0755), 0);
    // Old contents that must never show through a failed write into reused blocks.
    std::vector<std::byte> old(2 << 20, std::byte{0xAB});
    ASSERT_TRUE(tu::WriteFile(src_ + "/old.bin",
                              std::string(reinterpret_cast<const char*>(old.data()), old.size())));
    image_ = dir_.Sub("fs.img");
    ASSERT_EQ(tu::MakeImage(image_, 64 << 20, "ext4", {"-b", "4096"}, src_), "");
  }

  std::unique_ptr<ModelHarness> Start(ServerConfig s = {}, ModelOptions m = {}) {
    s.read_write = true;
    std::unique_ptr<ModelHarness> h;
    EXPECT_EQ(ModelHarness::Start(image_, s, m, &h), "");
    return h;
  }

  void StopAndFsck(std::unique_ptr<ModelHarness>& h) {
    EXPECT_EQ(h->Stop(), "");
    std::string out;
    EXPECT_TRUE(tu::FsckClean(image_, &out)) << out;
  }

  tu::TempDir dir_;
  std::string src_, image_;
};

// §4.3 NOWAIT (v7: the upcall carries OP_NOWAIT): a write that would allocate answers EAGAIN
// and allocates nothing; the caller retries without NOWAIT (as io_uring punts to a worker).
TEST_F(KmodelProtocolTest, NowaitWriteOverHoleIsEagainThenRetrySucceeds) {
  auto h = Start();
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto [node, fh] = *km.Create(abi::FUSE_ROOT_ID, "nw");
  const auto data = tu::BytePattern(64 << 10, 3);
  const uint64_t allocations = h->dispatcher().iomap().stats().allocations.load();
  for (bool direct : {true, false}) {
    auto w = km.Write(node, 0, data, direct, /*nowait=*/true);
    ASSERT_FALSE(w);
    EXPECT_EQ(w.error(), EAGAIN) << "direct=" << direct;
  }
  EXPECT_EQ(h->dispatcher().iomap().stats().allocations.load(), allocations);
  ASSERT_TRUE(km.Write(node, 0, data, /*direct=*/true));  // the retry without NOWAIT
  // Overwriting allocated storage never blocks: NOWAIT succeeds.
  km.DropCaches();
  const auto again = tu::BytePattern(64 << 10, 9);
  ASSERT_TRUE(km.Write(node, 0, again, /*direct=*/true, /*nowait=*/true));
  auto got = km.Read(node, 0, again.size());
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, again);
  ASSERT_TRUE(km.Release(node, fh));
  StopAndFsck(h);
}

// §6.3/§6.4: failed I/O ends with an IOEND carrying the error. The server converts nothing, so
// the range keeps reading as zeros even where the blocks held another file's data before.
TEST_F(KmodelProtocolTest, FailedWritesLeaveZerosNotStaleData) {
  auto h = Start();
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  ASSERT_TRUE(km.Unlink(abi::FUSE_ROOT_ID, "old.bin"));  // frees 2 MiB of 0xAB blocks
  auto [node, fh] = *km.Create(abi::FUSE_ROOT_ID, "new");
  km.FailDataWrites(true);
  const uint64_t ioends = h->dispatcher().iomap().stats().ioends.load();
  ASSERT_TRUE(km.Write(node, 0, tu::BytePattern(1 << 20, 1)));  // lands in the page cache
  auto f = km.Fsync(node, fh);                                  // writeback fails
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error(), EIO);
  auto d = km.Write(node, 1 << 20, tu::BytePattern(256 << 10, 2), /*direct=*/true);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error(), EIO);
  EXPECT_GE(h->dispatcher().iomap().stats().ioends.load(), ioends + 2);
  km.FailDataWrites(false);

  km.DropCaches();
  auto got = km.Read(node, 0, km.Size(node));
  ASSERT_TRUE(got);
  EXPECT_EQ(got->size(), 1u << 20);
  EXPECT_TRUE(AllZero(*got)) << "stale or unconverted data became visible";
  auto direct = km.Read(node, 0, (1 << 20) + (256 << 10), /*direct=*/true);
  ASSERT_TRUE(direct);
  EXPECT_TRUE(AllZero(*direct));
  ASSERT_TRUE(km.Release(node, fh));
  StopAndFsck(h);
}

// §8: SYNCFS, FREEZE (the model blocks writers as sb_start_write would; the server itself takes
// no new allocations while frozen), UNFREEZE resumes, SHUTDOWN makes BEGIN fail with EIO.
TEST_F(KmodelProtocolTest, FreezeUnfreezeShutdownSyncfs) {
  auto h = Start();
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto [node, fh] = *km.Create(abi::FUSE_ROOT_ID, "fz");
  const auto a = tu::BytePattern(64 << 10, 5);
  ASSERT_TRUE(km.Write(node, 0, a));
  ASSERT_TRUE(km.Syncfs());
  EXPECT_EQ(km.counters().Upcalls("SYNCFS"), 1u);

  ASSERT_TRUE(km.Freeze());
  std::string out;
  EXPECT_TRUE(tu::FsckClean(image_, &out)) << "frozen image:\n" << out;
  auto w = km.Write(node, 1 << 20, a);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error(), EAGAIN);
  auto alloc = km.BeginOp(node, 1 << 20, 4096, abi::FUSE_IOMAP_OP_WRITE);
  ASSERT_FALSE(alloc);
  EXPECT_EQ(alloc.error(), EROFS);  // the server refuses changes while frozen
  auto existing = km.BeginOp(node, 0, 4096, 0);
  ASSERT_TRUE(existing);
  EXPECT_EQ(existing->type, abi::FUSE_IOMAP_TYPE_MAPPED);
  auto got = km.Read(node, 0, a.size());
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, a);

  ASSERT_TRUE(km.Unfreeze());
  ASSERT_TRUE(km.Write(node, 1 << 20, a));
  ASSERT_TRUE(km.Fsync(node, fh));
  got = km.Read(node, 1 << 20, a.size());
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, a);

  const auto late = tu::BytePattern(64 << 10, 8);
  ASSERT_TRUE(km.Write(node, 2 << 20, late));  // dirty, its mapping cached
  ASSERT_TRUE(km.Shutdown());
  auto wb = km.Writeback(node);  // the IOEND (or the BEGIN) is refused
  ASSERT_FALSE(wb);
  EXPECT_EQ(wb.error(), EIO);
  km.DropCaches();
  auto b = km.BeginOp(node, 0, 4096, 0);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error(), EIO);
  auto r = km.Read(node, 0, 4096);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), EIO);
  (void)km.Release(node, fh);
  StopAndFsck(h);
}

// s_state of the image's primary superblock (offset 1024 + 0x3A), read from the file itself.
uint16_t SuperblockState(const std::string& image) {
  UniqueFd fd(::open(image.c_str(), O_RDONLY | O_CLOEXEC));
  uint16_t state = 0xffff;
  if (!fd.valid() || ::pread(fd.get(), &state, sizeof(state), 1024 + 0x3A) != sizeof(state)) {
    ADD_FAILURE() << "cannot read the superblock of " << image;
  }
  return state;
}
constexpr uint16_t kValidFs = 0x0001;  // EXT2_VALID_FS

// §8 (fuse4fs): FREEZE_FS writes the superblock clean (no orphans, no errors) and syncs, so the
// image file is a clean filesystem while the server still runs; every change is refused with
// EROFS (metadata operations as well as allocations) and the image does not change; reads and
// opens for writing still work. UNFREEZE_FS marks it not clean again and changes work. With an
// open unlinked file (an orphan here, or one the kernel counts in `unlinked`) the superblock
// stays not clean; an orphan whose last reference goes while frozen is freed at the thaw.
TEST_F(KmodelProtocolTest, FreezeWritesCleanSuperblockAndRefusesChanges) {
  auto h = Start();
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  const uint64_t root = abi::FUSE_ROOT_ID;
  auto [f, fh] = *km.Create(root, "f");
  const auto data = tu::BytePattern(64 << 10, 3);
  ASSERT_TRUE(km.Write(f, 0, data));
  ASSERT_TRUE(km.Fsync(f, fh));
  EXPECT_EQ(SuperblockState(image_) & kValidFs, 0) << "mounted read-write: not clean";

  ASSERT_TRUE(km.Freeze());
  EXPECT_NE(SuperblockState(image_) & kValidFs, 0) << "frozen without orphans: clean";
  std::string out;
  EXPECT_TRUE(tu::FsckClean(image_, &out)) << "frozen image:\n" << out;
  auto frozen_image = ReadHostFile(image_);
  ASSERT_TRUE(frozen_image);

  abi::fuse_mkdir_in mk{0755, 022};
  abi::fuse_create_in cr{};
  cr.flags = O_RDWR | O_CREAT;
  cr.mode = 0100644;
  abi::fuse_setattr_in sa{};
  sa.valid = abi::FATTR_MODE;
  sa.mode = 0100600;
  abi::fuse_write_in wr{};
  wr.fh = fh;
  wr.size = 4096;
  std::vector<std::byte> setxattr(abi::FUSE_COMPAT_SETXATTR_IN_SIZE);
  uint32_t value_size = 1;
  std::memcpy(setxattr.data(), &value_size, sizeof(value_size));
  for (std::byte b : Names({"user.k"})) setxattr.push_back(b);
  setxattr.push_back(std::byte{'v'});
  abi::fuse_rename_in rn{root};
  struct Case {
    const char* what;
    uint32_t opcode;
    uint64_t node;
    std::vector<std::byte> body;
  };
  const std::vector<Case> refused = {
      {"MKDIR", abi::FUSE_MKDIR, root, Body(mk, {"d"})},
      {"CREATE", abi::FUSE_CREATE, root, Body(cr, {"new"})},
      {"SYMLINK", abi::FUSE_SYMLINK, root, Names({"s", "f"})},
      {"UNLINK", abi::FUSE_UNLINK, root, Names({"f"})},
      {"RENAME", abi::FUSE_RENAME, root, Body(rn, {"f", "g"})},
      {"SETATTR", abi::FUSE_SETATTR, f, Body(sa)},
      {"SETXATTR", abi::FUSE_SETXATTR, f, setxattr},
      {"WRITE", abi::FUSE_WRITE, f, Body(wr, {}, tu::BytePattern(4096, 1))},
  };
  for (const Case& c : refused) {
    auto r = km.RawRequest(c.opcode, c.node, c.body);
    ASSERT_FALSE(r) << c.what << " succeeded while frozen";
    EXPECT_EQ(r.error(), EROFS) << c.what;
  }
  auto alloc = km.BeginOp(f, 1 << 20, 4096, abi::FUSE_IOMAP_OP_WRITE);
  ASSERT_FALSE(alloc);
  EXPECT_EQ(alloc.error(), EROFS);
  // Reading and opening for writing work (the kernel blocks the writes themselves).
  auto got = km.Read(f, 0, data.size());
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, data);
  ASSERT_TRUE(km.Lookup(root, "f"));
  auto fh2 = km.Open(f, O_RDWR);
  ASSERT_TRUE(fh2);
  ASSERT_TRUE(km.Release(f, *fh2));
  EXPECT_TRUE(km.Syncfs());
  auto after = ReadHostFile(image_);
  ASSERT_TRUE(after);
  EXPECT_TRUE(*after == *frozen_image) << "the image changed while frozen";

  ASSERT_TRUE(km.Unfreeze());
  EXPECT_EQ(SuperblockState(image_) & kValidFs, 0) << "thawed: not clean";
  ASSERT_TRUE(km.RawRequest(abi::FUSE_MKDIR, root, Body(mk, {"d"})));
  ASSERT_TRUE(km.Write(f, 1 << 20, data));
  ASSERT_TRUE(km.Fsync(f, fh));

  // Orphans keep it not clean: one the server holds, or one only the kernel counts.
  auto [o, fho] = *km.Create(root, "o");
  ASSERT_TRUE(km.Write(o, 0, tu::BytePattern(16 << 10, 2), /*direct=*/true));
  ASSERT_TRUE(km.Unlink(root, "o"));
  ASSERT_TRUE(km.Freeze(/*unlinked=*/0));
  EXPECT_EQ(SuperblockState(image_) & kValidFs, 0) << "an orphan: not clean";
  frozen_image = ReadHostFile(image_);
  ASSERT_TRUE(frozen_image);
  ASSERT_TRUE(km.Release(o, fho));
  ASSERT_TRUE(km.Evict(o));  // the last reference goes while frozen: kept until the thaw
  EXPECT_TRUE(km.Syncfs());  // a round trip after the reply-less FORGET
  after = ReadHostFile(image_);
  ASSERT_TRUE(after);
  EXPECT_TRUE(*after == *frozen_image) << "the orphan was freed while frozen";
  ASSERT_TRUE(km.Unfreeze());
  ASSERT_TRUE(km.Freeze(/*unlinked=*/2));
  EXPECT_EQ(SuperblockState(image_) & kValidFs, 0) << "the kernel counts unlinked inodes";
  ASSERT_TRUE(km.Unfreeze());
  ASSERT_TRUE(km.Freeze(/*unlinked=*/0));
  EXPECT_NE(SuperblockState(image_) & kValidFs, 0) << "the orphan was freed at the thaw";
  EXPECT_TRUE(tu::FsckClean(image_, &out)) << "frozen image:\n" << out;
  ASSERT_TRUE(km.Unfreeze());
  ASSERT_TRUE(km.Release(f, fh));
  StopAndFsck(h);
  EXPECT_NE(SuperblockState(image_) & kValidFs, 0) << "clean after unmount";
}

// §8 (fuse4fs: SHUTDOWN "refuses further operations with EIO"): after SHUTDOWN_FS every
// operation, reads and metadata changes alike, answers EIO; only what tears the mount down
// (RELEASE, FLUSH, FORGET, DESTROY) still works. Nothing requested after the shutdown reaches the
// image, which stays consistent: e2fsck is clean after unmount and a new mount sees exactly the
// state of the moment of the shutdown (an open-unlinked file is gone, as at any unmount).
TEST_F(KmodelProtocolTest, ShutdownRefusesEveryOperationButTeardown) {
  auto h = Start();
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  const uint64_t root = abi::FUSE_ROOT_ID;
  auto [f, fh] = *km.Create(root, "f");
  const auto data = tu::BytePattern(64 << 10, 7);
  ASSERT_TRUE(km.Write(f, 0, data));
  ASSERT_TRUE(km.Fsync(f, fh));
  abi::fuse_mkdir_in mk{0755, 022};
  ASSERT_TRUE(km.RawRequest(abi::FUSE_MKDIR, root, Body(mk, {"d"})));
  auto [o, fho] = *km.Create(root, "orphan");
  ASSERT_TRUE(km.Write(o, 0, tu::BytePattern(16 << 10, 1), /*direct=*/true));
  ASSERT_TRUE(km.Unlink(root, "orphan"));  // open and unlinked: on the orphan list

  ASSERT_TRUE(km.Shutdown());
  EXPECT_TRUE(h->dispatcher().shut_down());
  abi::fuse_setattr_in sa{};
  sa.valid = abi::FATTR_MODE;
  sa.mode = 0100600;
  abi::fuse_write_in wr{};
  wr.fh = fh;
  wr.size = 4096;
  abi::fuse_read_in rd{};
  rd.fh = fh;
  rd.size = 4096;
  abi::fuse_setxattr_in sx{};
  sx.size = 4;
  abi::fuse_getxattr_in gx{};
  gx.size = 64;
  abi::fuse_rename_in rn{root};
  abi::fuse_open_in op{};
  op.flags = O_RDONLY;
  abi::fuse_create_in cr{};
  cr.flags = O_RDWR | O_CREAT;
  cr.mode = 0100644;
  abi::fuse_fsync_in fs{};
  fs.fh = fh;
  abi::fuse_statx_in st{};
  abi::fuse_iomap_begin_in bg{};
  bg.attr_ino = f;  // node id = inode number for non-root nodes
  bg.count = 4096;
  const std::vector<std::byte> four(4, std::byte{'x'});
  const std::vector<std::byte> block(4096, std::byte{'y'});
  struct Case {
    const char* what;
    uint32_t opcode;
    uint64_t node;
    std::vector<std::byte> body;
  };
  const std::vector<Case> cases = {
      {"LOOKUP", abi::FUSE_LOOKUP, root, Names({"f"})},
      {"GETATTR", abi::FUSE_GETATTR, f, Body(abi::fuse_getattr_in{})},
      {"STATX", abi::FUSE_STATX, f, Body(st)},
      {"MKDIR", abi::FUSE_MKDIR, root, Body(mk, {"d2"})},
      {"CREATE", abi::FUSE_CREATE, root, Body(cr, {"new"})},
      {"UNLINK", abi::FUSE_UNLINK, root, Names({"f"})},
      {"RMDIR", abi::FUSE_RMDIR, root, Names({"d"})},
      {"RENAME", abi::FUSE_RENAME, root, Body(rn, {"f", "g"})},
      {"SYMLINK", abi::FUSE_SYMLINK, root, Names({"s", "f"})},
      {"SETATTR", abi::FUSE_SETATTR, f, Body(sa)},
      {"WRITE", abi::FUSE_WRITE, f, Body(wr, {}, block)},
      {"READ", abi::FUSE_READ, f, Body(rd)},
      {"SETXATTR", abi::FUSE_SETXATTR, f,
       [&] {
         std::vector<std::byte> b(abi::FUSE_COMPAT_SETXATTR_IN_SIZE);
         std::memcpy(b.data(), &sx, b.size());
         auto rest = Names({"user.k"});
         b.insert(b.end(), rest.begin(), rest.end());
         b.insert(b.end(), four.begin(), four.end());
         return b;
       }()},
      {"GETXATTR", abi::FUSE_GETXATTR, f, Body(gx, {"user.k"})},
      {"OPEN", abi::FUSE_OPEN, f, Body(op)},
      {"OPENDIR", abi::FUSE_OPENDIR, root, Body(op)},
      {"STATFS", abi::FUSE_STATFS, root, {}},
      {"FSYNC", abi::FUSE_FSYNC, f, Body(fs)},
      {"SYNCFS", abi::FUSE_SYNCFS, root, Body(abi::fuse_syncfs_in{})},
      {"FREEZE_FS", abi::FUSE_FREEZE_FS, root, Body(abi::fuse_freezefs_in{})},
      {"IOMAP_BEGIN", abi::FUSE_IOMAP_BEGIN, f, Body(bg)},
  };
  for (const Case& c : cases) {
    auto r = km.RawRequest(c.opcode, c.node, c.body);
    ASSERT_FALSE(r) << c.what << " succeeded after SHUTDOWN_FS";
    EXPECT_EQ(r.error(), EIO) << c.what;
  }
  EXPECT_EQ(km.Write(f, 0, data, /*direct=*/true).error(), EIO);
  // Teardown still works: close (FLUSH + RELEASE), eviction (FORGET), unmount (DESTROY).
  abi::fuse_flush_in fl{};
  fl.fh = fh;
  EXPECT_TRUE(km.RawRequest(abi::FUSE_FLUSH, f, Body(fl)));
  EXPECT_TRUE(km.Release(f, fh));  // nothing dirty to write back: RELEASE only
  EXPECT_TRUE(km.Release(o, fho));
  EXPECT_TRUE(km.Evict(o));  // the last reference of the unlinked file: it is freed
  EXPECT_TRUE(km.Shutdown());
  StopAndFsck(h);

  // What the image holds is the state at the shutdown.
  auto h2 = Start();
  ASSERT_NE(h2, nullptr);
  KernelModel& k2 = h2->model();
  auto f2 = k2.Lookup(root, "f");
  ASSERT_TRUE(f2);
  auto got = k2.Read(*f2, 0, data.size() + 1);
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, data);
  EXPECT_TRUE(k2.Lookup(root, "d"));
  for (const char* gone : {"d2", "new", "g", "s", "orphan"}) {
    auto l = k2.Lookup(root, gone);
    ASSERT_FALSE(l) << gone;
    EXPECT_EQ(l.error(), ENOENT) << gone;
  }
  abi::fuse_getxattr_in q{};
  auto x = k2.RawRequest(abi::FUSE_GETXATTR, *f2, Body(q, {"user.k"}));
  ASSERT_FALSE(x);
  EXPECT_EQ(x.error(), ENODATA);
  auto attr = k2.GetAttr(*f2);
  ASSERT_TRUE(attr);
  EXPECT_EQ(attr->mode & 07777, 0644u);
  StopAndFsck(h2);
}

// §7, §12.1: with a 256-byte (8-record) per-fork limit advertised in CONFIG, the server never
// pushes a fork over it (the model would discard the whole fork), on a file of ~64 mappings.
TEST_F(KmodelProtocolTest, SmallKernelCacheLimitIsRespected) {
  ModelOptions m;
  m.cache_maxbytes = 256;
  m.bpf = false;
  auto h = Start(ServerConfig{}, m);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto [node, fh] = *km.Create(abi::FUSE_ROOT_ID, "frag");
  const uint64_t bs = km.block_size();
  std::vector<std::byte> want(64 * bs);
  for (uint64_t i = 0; i < 64; i += 2) {  // every other block: 32 extents and 32 holes
    auto blk = tu::BytePattern(bs, static_cast<uint8_t>(i));
    ASSERT_TRUE(km.Write(node, i * bs, blk, /*direct=*/true));
    std::copy(blk.begin(), blk.end(), want.begin() + static_cast<ptrdiff_t>(i * bs));
  }
  ASSERT_TRUE(km.Release(node, fh));
  for (int pass = 0; pass < 3; ++pass) {
    auto fh2 = km.Open(node, O_RDONLY);
    ASSERT_TRUE(fh2);
    auto got = km.Read(node, 0, want.size() - bs);
    ASSERT_TRUE(got);
    EXPECT_TRUE(std::equal(got->begin(), got->end(), want.begin()));
    ASSERT_TRUE(km.Release(node, *fh2));
  }
  EXPECT_GT(km.counters().upserts, 8u);
  EXPECT_LE(km.counters().max_fork_records * sizeof(abi::fuse_iomap_io), 256u);
  EXPECT_EQ(km.counters().fork_discards, 0u) << km.counters().Format();
  EXPECT_TRUE(km.rejections().empty());
  StopAndFsck(h);
}

// §4.8 (mainline iomap swapfile rules): a fully written file activates; holes are refused.
// UNWRITTEN extents are acceptable to iomap_swapfile_activate (MAPPED or UNWRITTEN), so a file
// whose writes failed (left unwritten) activates too; F_DIRTY mappings are refused, and the
// server never reports F_DIRTY to REPORT queries once the data is written back.
TEST_F(KmodelProtocolTest, SwapfileActivationAfterWrites) {
  auto h = Start();
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto [full, fh1] = *km.Create(abi::FUSE_ROOT_ID, "swap");
  ASSERT_TRUE(km.Write(full, 0, tu::BytePattern(1 << 20, 1)));  // buffered; swapon writes it back
  auto pages = km.Swapon(full);
  ASSERT_TRUE(pages) << strerror(pages.error());
  EXPECT_EQ(*pages, (1u << 20) / 4096);
  EXPECT_TRUE(km.Swapoff(full));

  auto [holey, fh2] = *km.Create(abi::FUSE_ROOT_ID, "holey");
  ASSERT_TRUE(km.Write(holey, 0, tu::BytePattern(64 << 10, 2)));
  ASSERT_TRUE(km.Write(holey, 1 << 20, tu::BytePattern(64 << 10, 3)));
  auto s2 = km.Swapon(holey);
  ASSERT_FALSE(s2);
  EXPECT_EQ(s2.error(), EINVAL);

  auto [unw, fh3] = *km.Create(abi::FUSE_ROOT_ID, "unwritten");
  km.FailDataWrites(true);
  ASSERT_TRUE(km.Write(unw, 0, tu::BytePattern(256 << 10, 4)));
  EXPECT_FALSE(km.Writeback(unw));
  km.FailDataWrites(false);
  auto report = km.BeginOp(unw, 0, 4096, abi::FUSE_IOMAP_OP_REPORT);
  ASSERT_TRUE(report);
  EXPECT_EQ(report->type, abi::FUSE_IOMAP_TYPE_UNWRITTEN);
  auto s3 = km.Swapon(unw);
  ASSERT_TRUE(s3);
  EXPECT_EQ(*s3, (256u << 10) / 4096);
  EXPECT_TRUE(km.Swapoff(unw));
  for (auto [n, fh] : {std::pair{full, fh1}, {holey, fh2}, {unw, fh3}}) {
    ASSERT_TRUE(km.Release(n, fh));
  }
  StopAndFsck(h);
}

// §12: the blocks of an unlinked file are freed only when the kernel forgets its inode (FORGET
// of the last lookup reference, i.e. eviction, which also frees the inode's mapping cache), so
// a cached mapping of the unlinked file can never point at blocks another file reuses. One
// server worker keeps FORGET ordered before the next CREATE.
TEST_F(KmodelProtocolTest, UnlinkedFilesCacheNeverServesReusedBlocks) {
  ServerConfig s;
  s.workers = 1;
  auto h = Start(s);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto [a, fha] = *km.Create(abi::FUSE_ROOT_ID, "a");
  const auto da = tu::BytePattern(256 << 10, 11);
  ASSERT_TRUE(km.Write(a, 0, da, /*direct=*/true));
  km.DropCaches();
  ASSERT_TRUE(km.Read(a, 0, da.size()));  // fills the cache (RETRY_CACHE)
  const std::vector<abi::fuse_iomap_io> cached = km.CachedReadMappings(a);
  ASSERT_FALSE(cached.empty());
  auto overlaps = [&](const std::vector<FiemapExtent>& ext) {
    for (const FiemapExtent& e : ext) {
      for (const abi::fuse_iomap_io& c : cached) {
        if (c.type != abi::FUSE_IOMAP_TYPE_MAPPED && c.type != abi::FUSE_IOMAP_TYPE_UNWRITTEN) {
          continue;
        }
        if (e.physical < c.addr + c.length && c.addr < e.physical + e.length) return true;
      }
    }
    return false;
  };

  ASSERT_TRUE(km.Unlink(abi::FUSE_ROOT_ID, "a"));  // a is still open and referenced
  auto [b, fhb] = *km.Create(abi::FUSE_ROOT_ID, "b");
  const auto db = tu::BytePattern(4 << 20, 22);
  ASSERT_TRUE(km.Write(b, 0, db, /*direct=*/true));
  auto fb = km.Fiemap(b);
  ASSERT_TRUE(fb);
  EXPECT_FALSE(overlaps(*fb)) << "blocks of a referenced unlinked file were reused";
  auto got = km.Read(a, 0, da.size());  // served from a's cache: still a's own blocks
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, da);

  ASSERT_TRUE(km.Release(a, fha));
  ASSERT_TRUE(km.Evict(a));                 // FORGET: the server frees a's blocks now
  EXPECT_FALSE(km.BeginOp(a, 0, 4096, 0));  // nothing of a is left to serve
  auto [c, fhc] = *km.Create(abi::FUSE_ROOT_ID, "c");
  const auto dc = tu::BytePattern(4 << 20, 33);
  ASSERT_TRUE(km.Write(c, 0, dc, /*direct=*/true));
  auto fc = km.Fiemap(c);
  ASSERT_TRUE(fc);
  printf("c reuses a's freed blocks: %s\n", overlaps(*fc) ? "yes" : "no");
  for (auto [n, want] : {std::pair{b, &db}, {c, &dc}}) {
    got = km.Read(n, 0, want->size());
    ASSERT_TRUE(got);
    EXPECT_TRUE(*got == *want);
  }
  EXPECT_TRUE(km.rejections().empty());
  ASSERT_TRUE(km.Release(b, fhb));
  ASSERT_TRUE(km.Release(c, fhc));
  StopAndFsck(h);
}

// §10, §12: O_TRUNC truncates inside OPEN (FUSE_ATOMIC_O_TRUNC); the server INVALidates the
// file's cached mappings itself and the old blocks are never served again.
TEST_F(KmodelProtocolTest, OpenWithTruncDropsMappings) {
  auto h = Start();
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto [node, fh] = *km.Create(abi::FUSE_ROOT_ID, "tr");
  ASSERT_TRUE(km.Write(node, 0, tu::BytePattern(512 << 10, 1), /*direct=*/true));
  ASSERT_TRUE(km.Read(node, 0, 512 << 10));
  ASSERT_FALSE(km.CachedReadMappings(node).empty());
  ASSERT_TRUE(km.Release(node, fh));
  const uint64_t invals = km.counters().invals;
  auto fh2 = km.Open(node, O_RDWR | O_TRUNC);
  ASSERT_TRUE(fh2);
  EXPECT_GT(km.counters().invals, invals);
  EXPECT_EQ(km.Size(node), 0u);
  for (const abi::fuse_iomap_io& m : km.CachedReadMappings(node)) {
    EXPECT_NE(m.type, abi::FUSE_IOMAP_TYPE_MAPPED) << m.offset;
  }
  const auto fresh = tu::BytePattern(64 << 10, 9);
  ASSERT_TRUE(km.Write(node, 0, fresh));
  auto got = km.Read(node, 0, 512 << 10);
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, fresh);
  ASSERT_TRUE(km.Release(node, *fh2));
  StopAndFsck(h);
}

// §11.5: every block the server frees (truncate, punch, an unlinked file at its last FORGET,
// extent-tree blocks) is announced with DEV_INVAL on the registered device before the reply, so
// that pages the server's own buffered I/O left in the device's page cache cannot be written
// back over data iomap later puts in those blocks.
TEST_F(KmodelProtocolTest, FreedBlocksGetDevInval) {
  ServerConfig s;
  s.workers = 1;  // FORGET has no reply: one worker orders it before the next request
  auto h = Start(s);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto covered = [&](const FiemapExtent& e) {
    uint64_t need = e.physical, end = e.physical + e.length;
    // The invalidated ranges are merged and sorted per notification; walk them all.
    bool progress = true;
    while (need < end && progress) {
      progress = false;
      for (const auto& d : km.dev_invals()) {
        if (d.range.offset <= need && need < d.range.offset + d.range.length) {
          need = d.range.offset + d.range.length;
          progress = true;
        }
      }
    }
    return need >= end;
  };
  auto [t, fht] = *km.Create(abi::FUSE_ROOT_ID, "t");
  const uint64_t bs = km.block_size();
  for (uint64_t i = 0; i < 600; i += 2) {  // ~300 extents: the tree needs index blocks
    ASSERT_TRUE(km.Write(t, i * bs, tu::BytePattern(bs, static_cast<uint8_t>(i)), /*direct=*/true));
  }
  auto before = km.Fiemap(t);
  ASSERT_TRUE(before);
  ASSERT_GT(before->size(), 100u);
  EXPECT_EQ(km.counters().dev_invals, 0u);
  ASSERT_TRUE(km.Punch(t, fht, 0, 64 * bs));
  ASSERT_TRUE(km.Truncate(t, 0));
  for (const FiemapExtent& e : *before) EXPECT_TRUE(covered(e)) << e.physical;
  const uint64_t dev = h->dispatcher().iomap().backing_id();
  for (const auto& d : km.dev_invals()) EXPECT_EQ(d.dev, dev);

  // An unlinked file: its blocks are freed, and announced, at the FORGET of its last reference.
  auto [u, fhu] = *km.Create(abi::FUSE_ROOT_ID, "u");
  ASSERT_TRUE(km.Write(u, 0, tu::BytePattern(256 << 10, 4), /*direct=*/true));
  auto ue = km.Fiemap(u);
  ASSERT_TRUE(ue);
  ASSERT_TRUE(km.Release(u, fhu));
  ASSERT_TRUE(km.Unlink(abi::FUSE_ROOT_ID, "u"));
  const size_t n = km.dev_invals().size();
  ASSERT_TRUE(km.Evict(u));
  ASSERT_TRUE(km.Syncfs());  // a round trip after the reply-less FORGET
  EXPECT_GT(km.dev_invals().size(), n);
  for (const FiemapExtent& e : *ue) EXPECT_TRUE(covered(e)) << e.physical;
  EXPECT_TRUE(km.rejections().empty());
  ASSERT_TRUE(km.Release(t, fht));
  StopAndFsck(h);
}

// §11.2, §11.3: at CONFIG the server sets the registered device's block size to the fs block
// size, and every server thread that serves iomap requests sets NOFS on itself once. On a real
// kernel these are ioctls on /dev/fuse (FuseDevChannel), UNTESTED there: no kernel here offers
// FUSE_IOMAP. Here they are model messages.
TEST_F(KmodelProtocolTest, SetBlocksizeAndNofsReachTheKernelSide) {
  ServerConfig s;
  s.workers = 2;
  s.iomap.cache = false;  // every read is a BEGIN upcall
  auto h = Start(s);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  EXPECT_EQ(km.counters().set_blocksize, 1u);
  EXPECT_EQ(km.device_block_size(h->dispatcher().iomap().backing_id()), km.block_size());
  auto [node, fh] = *km.Create(abi::FUSE_ROOT_ID, "n");
  ASSERT_TRUE(km.Write(node, 0, tu::BytePattern(64 << 10, 1), /*direct=*/true));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(km.Read(node, 0, 4096));
  EXPECT_GE(km.counters().set_nofs, 1u);
  EXPECT_LE(km.counters().set_nofs, 2u);  // once per worker thread
  ASSERT_TRUE(km.Release(node, fh));
  StopAndFsck(h);

  ModelOptions classic;
  classic.offer_iomap = false;
  auto c = Start(ServerConfig{}, classic);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->model().counters().set_blocksize, 0u);
  EXPECT_EQ(c->model().counters().set_nofs, 0u);
  EXPECT_EQ(c->Stop(), "");
}

// §14.6, §14.7: STATX of a regular file in iomap mode reports the registered device's direct
// I/O alignment (STATX_DIOALIGN) and, where untorn writes are advertised, STATX_WRITE_ATOMIC with
// a unit of exactly one fs block and one segment, and STATX_ATTR_WRITE_ATOMIC. Directories and
// classic-mode connections get neither.
TEST_F(KmodelProtocolTest, StatxReportsDioAlignAndAtomicUnit) {
  constexpr uint32_t kDioAlign = 0x2000, kWriteAtomic = 0x10000;
  constexpr uint64_t kAttrWriteAtomic = 0x400000;
  auto statx = [](KernelModel& km, uint64_t node) {
    abi::fuse_statx_in in{};
    in.sx_mask = 0xffffffff;
    abi::fuse_statx_out out{};
    auto r = km.RawRequest(abi::FUSE_STATX, node, Body(in));
    EXPECT_TRUE(r);
    if (r) {
      EXPECT_EQ(r->size(), sizeof(out));
      std::memcpy(&out, r->data(), std::min(sizeof(out), r->size()));
    }
    return out.stat;
  };
  struct Variant {
    bool atomic;   // the kernel offers ATOMIC and the device's unit is the block size
    uint32_t dio;  // test_device_dio_align (0: statx of the image file, or 512)
  };
  for (Variant v : {Variant{true, 1024}, Variant{false, 2048}, Variant{false, 0}}) {
    SCOPED_TRACE(::testing::Message() << "atomic=" << v.atomic << " dio=" << v.dio);
    ServerConfig s;
    s.iomap.test_device_atomic_unit = 4096;
    s.iomap.test_device_dio_align = v.dio;
    ModelOptions m;
    m.offer_atomic = v.atomic;
    auto h = Start(s, m);
    ASSERT_NE(h, nullptr);
    KernelModel& km = h->model();
    ASSERT_EQ(h->dispatcher().iomap().atomic(), v.atomic);
    auto [node, fh] = *km.Create(abi::FUSE_ROOT_ID, "f");
    abi::fuse_statx sx = statx(km, node);
    EXPECT_EQ(sx.mask & 0x7ff, 0x7ffu);  // the basic stats are still there
    EXPECT_EQ(sx.mode & S_IFMT, S_IFREG);
    EXPECT_NE(sx.mask & kDioAlign, 0u);
    if (v.dio != 0) {
      EXPECT_EQ(sx.dio_mem_align, v.dio);
      EXPECT_EQ(sx.dio_offset_align, v.dio);
    } else {
      // The image file's own alignment, or the 512-byte fallback: powers of two, and an offset
      // alignment no smaller than the smallest logical block size.
      EXPECT_NE(sx.dio_mem_align, 0u);
      EXPECT_EQ(sx.dio_mem_align & (sx.dio_mem_align - 1), 0u) << sx.dio_mem_align;
      EXPECT_GE(sx.dio_offset_align, 512u);
      EXPECT_EQ(sx.dio_offset_align & (sx.dio_offset_align - 1), 0u) << sx.dio_offset_align;
    }
    if (v.atomic) {
      EXPECT_NE(sx.mask & kWriteAtomic, 0u);
      EXPECT_EQ(sx.atomic_write_unit_min, km.block_size());
      EXPECT_EQ(sx.atomic_write_unit_max, km.block_size());
      EXPECT_EQ(sx.atomic_write_segments_max, 1u);
      EXPECT_NE(sx.attributes & kAttrWriteAtomic, 0u);
      EXPECT_NE(sx.attributes_mask & kAttrWriteAtomic, 0u);
    } else {
      EXPECT_EQ(sx.mask & kWriteAtomic, 0u);
      EXPECT_EQ(sx.atomic_write_unit_min, 0u);
      EXPECT_EQ(sx.atomic_write_unit_max, 0u);
      EXPECT_EQ(sx.atomic_write_segments_max, 0u);
      EXPECT_EQ(sx.attributes & kAttrWriteAtomic, 0u);
    }
    abi::fuse_statx dir = statx(km, abi::FUSE_ROOT_ID);
    EXPECT_EQ(dir.mode & S_IFMT, S_IFDIR);
    EXPECT_EQ(dir.mask & (kDioAlign | kWriteAtomic), 0u);
    EXPECT_EQ(dir.dio_offset_align, 0u);
    EXPECT_EQ(dir.attributes & kAttrWriteAtomic, 0u);
    ASSERT_TRUE(km.Release(node, fh));
    StopAndFsck(h);
  }

  ModelOptions classic;
  classic.offer_iomap = false;
  classic.offer_atomic = true;
  ServerConfig s;
  s.iomap.test_device_atomic_unit = 4096;
  auto c = Start(s, classic);
  ASSERT_NE(c, nullptr);
  auto [node, fh] = *c->model().Create(abi::FUSE_ROOT_ID, "f");
  abi::fuse_statx sx = statx(c->model(), node);
  EXPECT_EQ(sx.mask & (kDioAlign | kWriteAtomic), 0u);
  EXPECT_EQ(sx.attributes & kAttrWriteAtomic, 0u);
  ASSERT_TRUE(c->model().Release(node, fh));
  StopAndFsck(c);
}

// §9, §12.1: INLINE mappings are cached ([0, block), NULL addresses), pushed at OPEN and after
// a read's BEGIN, so a hot read of an inline-data file costs its FUSE_READ and no BEGIN. When
// the file leaves the inline format (a write past the inline area, a truncate growing it past
// it) the server INValidates the INLINE mapping: later reads use the new extents (no FUSE_READ)
// and return the right bytes.
TEST(KmodelInlineTest, InlineMappingsAreCachedAndDroppedWhenConverted) {
  tu::TempDir dir;
  const std::string src = dir.Sub("src"), image = dir.Sub("inline.img");
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  const auto small = tu::BytePattern(100, 5), tiny = tu::BytePattern(40, 9);
  auto text = [](const std::vector<std::byte>& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size());
  };
  ASSERT_TRUE(tu::WriteFile(src + "/small", text(small)));
  ASSERT_TRUE(tu::WriteFile(src + "/tiny", text(tiny)));
  ASSERT_EQ(tu::MakeImage(image, 32 << 20, "ext4", {"-b", "4096", "-O", "inline_data"}, src), "");
  ServerConfig s;
  s.read_write = true;
  std::unique_ptr<ModelHarness> h;
  ASSERT_EQ(ModelHarness::Start(image, s, ModelOptions{}, &h), "");
  KernelModel& km = h->model();
  const uint64_t bs = km.block_size();
  auto inline_cached = [&](uint64_t node) {
    for (const abi::fuse_iomap_io& m : km.CachedReadMappings(node)) {
      if (m.type == abi::FUSE_IOMAP_TYPE_INLINE) return true;
    }
    return false;
  };

  auto node = km.Lookup(abi::FUSE_ROOT_ID, "small");
  ASSERT_TRUE(node);
  auto report = km.BeginOp(*node, 0, 1, abi::FUSE_IOMAP_OP_REPORT);
  ASSERT_TRUE(report);
  ASSERT_EQ(report->type, abi::FUSE_IOMAP_TYPE_INLINE) << "mke2fs did not store it inline";
  auto fh = km.Open(*node, O_RDWR);  // pushes the INLINE mapping
  ASSERT_TRUE(fh);
  auto cached = km.CachedReadMappings(*node);
  ASSERT_EQ(cached.size(), 1u);
  EXPECT_EQ(cached[0].type, abi::FUSE_IOMAP_TYPE_INLINE);
  EXPECT_EQ(cached[0].offset, 0u);
  EXPECT_EQ(cached[0].length, bs);
  for (bool dropped : {false, true}) {
    if (dropped) km.DropCaches();  // the first read's BEGIN upserts it again
    for (int pass = 0; pass < 2; ++pass) {
      km.ResetCounters();
      auto got = km.Read(*node, 0, small.size());
      ASSERT_TRUE(got);
      EXPECT_EQ(*got, small);
      const bool hot = !dropped || pass == 1;
      EXPECT_EQ(km.counters().Upcalls("READ"), 1u) << km.counters().Format();
      EXPECT_EQ(km.counters().BeginUpcalls(), hot ? 0u : 1u) << km.counters().Format();
    }
  }

  // A direct write two blocks further converts the file to extents.
  const uint64_t invals = km.counters().invals;
  const auto tail = tu::BytePattern(bs, 77);
  ASSERT_TRUE(km.Write(*node, 2 * bs, tail, /*direct=*/true));
  EXPECT_FALSE(inline_cached(*node)) << "a stale INLINE mapping stayed cached";
  EXPECT_GT(km.counters().invals, invals);
  std::vector<std::byte> want(3 * bs);
  std::copy(small.begin(), small.end(), want.begin());
  std::copy(tail.begin(), tail.end(), want.begin() + static_cast<ptrdiff_t>(2 * bs));
  for (int pass = 0; pass < 2; ++pass) {
    km.ResetCounters();
    auto got = km.Read(*node, 0, want.size());
    ASSERT_TRUE(got);
    EXPECT_TRUE(*got == want) << "pass " << pass;
    EXPECT_EQ(km.counters().Upcalls("READ"), 0u) << "the INLINE mapping was used after conversion";
    if (pass == 1) EXPECT_EQ(km.counters().BeginUpcalls(), 0u) << km.counters().Format();
  }
  ASSERT_TRUE(km.Release(*node, *fh));

  // A truncate (SETATTR, as the kernel sends it) growing an inline file past the inline area.
  auto t = km.Lookup(abi::FUSE_ROOT_ID, "tiny");
  ASSERT_TRUE(t);
  auto tfh = km.Open(*t, O_RDWR);
  ASSERT_TRUE(tfh);
  ASSERT_TRUE(km.Read(*t, 0, tiny.size()));
  ASSERT_TRUE(inline_cached(*t));
  abi::fuse_setattr_in sa{};
  sa.valid = abi::FATTR_SIZE;
  sa.size = 3 * bs;
  ASSERT_TRUE(km.RawRequest(abi::FUSE_SETATTR, *t, Body(sa)));
  EXPECT_FALSE(inline_cached(*t)) << "a stale INLINE mapping stayed cached";
  km.ResetCounters();
  auto got = km.Read(*t, 0, tiny.size());  // the model's i_size is still the old one
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, tiny);
  auto attr = km.GetAttr(*t);
  ASSERT_TRUE(attr);
  EXPECT_EQ(attr->size, 3 * bs);
  ASSERT_TRUE(km.Release(*t, *tfh));
  EXPECT_TRUE(km.rejections().empty()) << km.rejections().front();
  EXPECT_EQ(h->Stop(), "");
  std::string out;
  EXPECT_TRUE(tu::FsckClean(image, &out)) << out;
}

// §4.7, §14.7: untorn writes where allowed (the kernel's discovery reports ATOMIC and the
// device's atomic unit range contains the fs block size): inodes get FUSE_ATTR_ATOMIC and
// one-block RWF_ATOMIC direct writes get MAPPED/UNWRITTEN mappings with F_ATOMIC_BIO, never from
// the cache. Elsewhere no inode gets the flag and RWF_ATOMIC is EOPNOTSUPP.
TEST_F(KmodelProtocolTest, AtomicWritesWhereAllowed) {
  ServerConfig s;
  s.iomap.test_device_atomic_unit = 4096;
  ModelOptions m;
  m.offer_atomic = true;
  auto h = Start(s, m);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  EXPECT_TRUE(h->dispatcher().iomap().atomic());
  auto [node, fh] = *km.Create(abi::FUSE_ROOT_ID, "at");
  EXPECT_NE(km.LatchedFlags(node) & abi::FUSE_ATTR_ATOMIC, 0u);
  const uint64_t bs = km.block_size();
  const auto one = tu::BytePattern(bs, 1);
  ASSERT_TRUE(km.AtomicWrite(node, 0, one));  // over a hole: allocated first
  ASSERT_TRUE(km.Write(node, bs, tu::BytePattern(bs, 7), /*direct=*/true));
  auto got = km.Read(node, 0, bs);  // the cache now holds [0, 2 blocks)
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, one);
  const uint64_t hits = km.counters().cache_hits;
  const uint64_t begins = km.counters().Upcalls("IOMAP_BEGIN");
  const auto two = tu::BytePattern(bs, 2);
  ASSERT_TRUE(km.AtomicWrite(node, bs, two));  // an overwrite: still an upcall, not the cache
  EXPECT_EQ(km.counters().cache_hits, hits);
  EXPECT_EQ(km.counters().Upcalls("IOMAP_BEGIN"), begins + 1);
  EXPECT_EQ(km.AtomicWrite(node, 0, tu::BytePattern(2 * bs, 3)).error(), EINVAL);  // not one block
  EXPECT_EQ(km.AtomicWrite(node, 512, tu::BytePattern(bs, 3)).error(), EINVAL);    // not aligned
  got = km.Read(node, 0, 2 * bs);
  ASSERT_TRUE(got);
  EXPECT_TRUE(std::equal(one.begin(), one.end(), got->begin()));
  EXPECT_TRUE(std::equal(two.begin(), two.end(), got->begin() + static_cast<ptrdiff_t>(bs)));
  EXPECT_TRUE(km.rejections().empty());
  ASSERT_TRUE(km.Release(node, fh));
  StopAndFsck(h);

  // Not allowed: the kernel does not report ATOMIC, or the device's unit excludes the block.
  for (auto [offer, unit] : {std::pair{false, 4096u}, {true, 512u}}) {
    ServerConfig s2;
    s2.iomap.test_device_atomic_unit = unit;
    ModelOptions m2;
    m2.offer_atomic = offer;
    auto h2 = Start(s2, m2);
    ASSERT_NE(h2, nullptr);
    EXPECT_FALSE(h2->dispatcher().iomap().atomic());
    auto [n2, fh2] = *h2->model().Create(abi::FUSE_ROOT_ID, "no" + std::to_string(unit));
    EXPECT_EQ(h2->model().LatchedFlags(n2) & abi::FUSE_ATTR_ATOMIC, 0u);
    EXPECT_EQ(h2->model().AtomicWrite(n2, 0, tu::BytePattern(4096, 1)).error(), EOPNOTSUPP);
    ASSERT_TRUE(h2->model().Release(n2, fh2));
    StopAndFsck(h2);
  }
}

// An unlinked file that is still open lives on in the kernel and takes I/O like any other: the
// server keeps it on the on-disk orphan list, whose link sits in i_dtime, and still answers BEGIN,
// allocations and IOEND for it. The second file unlinked is the one whose i_dtime is non-zero.
TEST_F(KmodelProtocolTest, OpenUnlinkedFilesTakeIo) {
  ModelOptions m;
  m.cache = false;  // every read goes to BEGIN
  m.bpf = false;
  auto h = Start({}, m);
  ASSERT_NE(h, nullptr);
  KernelModel& km = h->model();
  auto [first, fh1] = *km.Create(abi::FUSE_ROOT_ID, "first");
  auto [second, fh2] = *km.Create(abi::FUSE_ROOT_ID, "second");
  const auto d1 = tu::BytePattern(64 << 10, 5);
  ASSERT_TRUE(km.Write(first, 0, d1, /*direct=*/true));
  ASSERT_TRUE(km.Unlink(abi::FUSE_ROOT_ID, "first"));
  ASSERT_TRUE(km.Unlink(abi::FUSE_ROOT_ID, "second"));
  for (uint64_t node : {first, second}) {
    const uint64_t begins = km.counters().BeginUpcalls();
    const auto data = tu::BytePattern(192 << 10, static_cast<uint8_t>(node));
    auto w = km.Write(node, 4096, data, /*direct=*/true);  // allocates: BEGIN + IOEND
    ASSERT_TRUE(w) << "node " << node << ": " << strerror(w.error());
    auto got = km.Read(node, 4096, data.size());
    ASSERT_TRUE(got) << "node " << node << ": " << strerror(got.error());
    EXPECT_EQ(*got, data);
    EXPECT_GT(km.counters().BeginUpcalls(), begins);
    ASSERT_TRUE(km.Truncate(node, 8192));
    EXPECT_EQ(km.GetAttr(node)->size, 8192u);
  }
  EXPECT_TRUE(km.rejections().empty());
  ASSERT_TRUE(km.Release(first, fh1));
  ASSERT_TRUE(km.Release(second, fh2));
  ASSERT_TRUE(km.Evict(first));
  ASSERT_TRUE(km.Evict(second));
  StopAndFsck(h);
}

}  // namespace
}  // namespace iomapfs::kmodel
