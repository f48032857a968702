// Golden-byte tests of the request decoder: one or more hand-written messages per opcode, every
// decoded field checked, every truncation rejected, both framings (classic and io_uring split).

#include "fsserver/wire/request.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <variant>

#include "fsserver/wire/fuse_abi.h"
#include "tests/wire/wire_test_util.h"

namespace iomapfs::wire {
namespace {

using namespace abi;  // NOLINT(build/namespaces)
using testing::Bytes;
using testing::kGid;
using testing::kPid;
using testing::kUid;
using testing::kUnique;
using testing::Le;
using testing::Message;

constexpr uint64_t kNode = 0x1234;

std::string_view AsString(std::span<const std::byte> s) {
  return std::string_view(reinterpret_cast<const char*>(s.data()), s.size());
}

struct Golden {
  std::string name;
  std::vector<std::byte> msg;
  DecodeContext ctx;
  Ino node;  // expected Request::node
  std::function<void(const Request&)> check;
  // Bodies of at least this many bytes (and shorter than the golden one) still decode; SIZE_MAX
  // means every shorter body is malformed.
  size_t min_valid_body = SIZE_MAX;
};

void PrintTo(const Golden& g, std::ostream* os) { *os << g.name; }

#define BODY(T)                               \
  const T* b = std::get_if<T>(&r.body);       \
  ASSERT_NE(b, nullptr) << "wrong body type"; \
  (void)b

// The supplementary-groups extension block: one FUSE_EXT_GROUPS record with group 100.
Le SuppGroupsExt() { return Le().u32(16).u32(32).u32(1).u32(100); }

std::vector<Golden> Goldens() {
  std::vector<Golden> g;
  const DecodeContext plain{};
  const DecodeContext ext{.setxattr_ext = true};

  // LOOKUP, fully literal: "foo" in the root.
  g.push_back({"LOOKUP", Bytes({0x2c, 0x00, 0x00, 0x00,                          // len 44
                                0x01, 0x00, 0x00, 0x00,                          // opcode 1
                                0xa6, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80,  // unique
                                0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // nodeid 1 (root)
                                0xe8, 0x03, 0x00, 0x00,                          // uid 1000
                                0xe9, 0x03, 0x00, 0x00,                          // gid 1001
                                0x92, 0x10, 0x00, 0x00,                          // pid 4242
                                0x00, 0x00, 0x00, 0x00,  // total_extlen, padding
                                'f',  'o',  'o',  0x00}),
               plain, Ino(2), [](const Request& r) {
                 BODY(LookupReq);
                 EXPECT_EQ(b->name, "foo");
               }});
  g.push_back(
      {"FORGET", Message(FUSE_FORGET, kNode, Le().u64(7)), plain, Ino(kNode), [](const Request& r) {
         BODY(ForgetReq);
         EXPECT_EQ(b->nlookup, 7u);
       }});
  g.push_back(
      {"BATCH_FORGET",
       Message(
           FUSE_BATCH_FORGET, 0,
           Le().u32(3).u32(0).u64(1).u64(5).u64(kNode).u64(6).u64(0xfffffffe).u64(0x100000000ull)),
       plain, Ino(0), [](const Request& r) {
         BODY(BatchForgetReq);
         std::vector<ForgetOne> want{
             {Ino(2), 5}, {Ino(kNode), 6}, {Ino(0xfffffffe), 0x100000000ull}};
         EXPECT_EQ(b->forgets, want);
       }});
  g.push_back({"GETATTR_FH", Message(FUSE_GETATTR, kNode, Le().u32(1).u32(0).u64(0xfeedface)),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(GetattrReq);
                 EXPECT_EQ(b->getattr_flags, 1u);
                 EXPECT_EQ(b->fh, FileHandle(0xfeedface));
               }});
  g.push_back({"GETATTR", Message(FUSE_GETATTR, 1, Le().u32(0).u32(0).u64(99)), plain, Ino(2),
               [](const Request& r) {
                 BODY(GetattrReq);
                 EXPECT_EQ(b->getattr_flags, 0u);
                 EXPECT_EQ(b->fh, std::nullopt);
               }});
  g.push_back({"SETATTR",
               Message(FUSE_SETATTR, kNode,
                       Le().u32(0x67f)
                           .u32(0)
                           .u64(0x77)
                           .u64(0x10000)
                           .u64(0xabc)
                           .u64(1700000001)
                           .u64(1700000002)
                           .u64(1700000003)
                           .u32(11)
                           .u32(12)
                           .u32(13)
                           .u32(0100644)
                           .u32(0)
                           .u32(1000)
                           .u32(100)
                           .u32(0)),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(SetattrReq);
                 EXPECT_EQ(b->in.valid, 0x67fu);
                 EXPECT_EQ(b->fh, FileHandle(0x77));
                 EXPECT_EQ(b->in.fh, 0x77u);
                 EXPECT_EQ(b->in.size, 0x10000u);
                 EXPECT_EQ(b->in.lock_owner, 0xabcu);
                 EXPECT_EQ(b->in.atime, 1700000001u);
                 EXPECT_EQ(b->in.mtime, 1700000002u);
                 EXPECT_EQ(b->in.ctime, 1700000003u);
                 EXPECT_EQ(b->in.atimensec, 11u);
                 EXPECT_EQ(b->in.mtimensec, 12u);
                 EXPECT_EQ(b->in.ctimensec, 13u);
                 EXPECT_EQ(b->in.mode, 0100644u);
                 EXPECT_EQ(b->in.uid, 1000u);
                 EXPECT_EQ(b->in.gid, 100u);
               }});
  g.push_back({"READLINK", Message(FUSE_READLINK, kNode, Le()), plain, Ino(kNode),
               [](const Request& r) { BODY(ReadlinkReq); }});
  g.push_back({"SYMLINK_EXT",
               Message(FUSE_SYMLINK, kNode,
                       Le().str("link").str("target/path").append(SuppGroupsExt().bytes()), 2),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(SymlinkReq);
                 EXPECT_EQ(b->name, "link");
                 EXPECT_EQ(b->target, "target/path");
                 EXPECT_EQ(r.extensions.size(), 16u);
                 auto groups = FindSuppGroups(r.extensions);
                 ASSERT_TRUE(groups);
                 EXPECT_EQ(*groups, std::vector<uint32_t>{100});
               }});
  g.push_back({"MKNOD",
               Message(FUSE_MKNOD, kNode, Le().u32(020644).u32(0x801).u32(022).u32(0).str("dev0")),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(MknodReq);
                 EXPECT_EQ(b->mode, 020644u);
                 EXPECT_EQ(b->rdev, 0x801u);
                 EXPECT_EQ(b->umask, 022u);
                 EXPECT_EQ(b->name, "dev0");
               }});
  g.push_back({"MKDIR", Message(FUSE_MKDIR, 1, Le().u32(0755).u32(022).str("dir")), plain, Ino(2),
               [](const Request& r) {
                 BODY(MkdirReq);
                 EXPECT_EQ(b->mode, 0755u);
                 EXPECT_EQ(b->umask, 022u);
                 EXPECT_EQ(b->name, "dir");
                 EXPECT_TRUE(r.extensions.empty());
               }});
  g.push_back({"UNLINK", Message(FUSE_UNLINK, kNode, Le().str("gone")), plain, Ino(kNode),
               [](const Request& r) {
                 BODY(UnlinkReq);
                 EXPECT_EQ(b->name, "gone");
               }});
  g.push_back({"RMDIR", Message(FUSE_RMDIR, kNode, Le().str("olddir")), plain, Ino(kNode),
               [](const Request& r) {
                 BODY(RmdirReq);
                 EXPECT_EQ(b->name, "olddir");
               }});
  g.push_back({"RENAME", Message(FUSE_RENAME, kNode, Le().u64(1).str("a").str("b")), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(RenameReq);
                 EXPECT_EQ(b->new_dir, Ino(2));
                 EXPECT_EQ(b->flags, 0u);
                 EXPECT_EQ(b->old_name, "a");
                 EXPECT_EQ(b->new_name, "b");
               }});
  g.push_back({"RENAME2",
               Message(FUSE_RENAME2, 1, Le().u64(0x99).u32(1).u32(0).str("src").str("dst")), plain,
               Ino(2), [](const Request& r) {
                 BODY(RenameReq);
                 EXPECT_EQ(b->new_dir, Ino(0x99));
                 EXPECT_EQ(b->flags, 1u);
                 EXPECT_EQ(b->old_name, "src");
                 EXPECT_EQ(b->new_name, "dst");
               }});
  g.push_back({"LINK", Message(FUSE_LINK, kNode, Le().u64(0x555).str("hard")), plain, Ino(kNode),
               [](const Request& r) {
                 BODY(LinkReq);
                 EXPECT_EQ(b->old_node, Ino(0x555));
                 EXPECT_EQ(b->new_name, "hard");
               }});
  g.push_back({"OPEN", Message(FUSE_OPEN, kNode, Le().u32(0x8002).u32(1)), plain, Ino(kNode),
               [](const Request& r) {
                 BODY(OpenReq);
                 EXPECT_EQ(b->flags, 0x8002u);
                 EXPECT_EQ(b->open_flags, 1u);
               }});
  g.push_back({"READ",
               Message(FUSE_READ, kNode,
                       Le().u64(0x42).u64(0x1000).u32(0x20000).u32(2).u64(0x99).u32(0x8000).u32(0)),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(ReadReq);
                 EXPECT_EQ(b->fh, FileHandle(0x42));
                 EXPECT_EQ(b->offset, 0x1000u);
                 EXPECT_EQ(b->size, 0x20000u);
                 EXPECT_EQ(b->read_flags, 2u);
                 EXPECT_EQ(b->lock_owner, 0x99u);
                 EXPECT_EQ(b->flags, 0x8000u);
               }});
  g.push_back(
      {"WRITE",
       Message(FUSE_WRITE, kNode,
               Le().u64(0x43).u64(0x2000).u32(5).u32(1).u64(0x98).u32(0x8001).u32(0).raw("hello")),
       plain, Ino(kNode), [](const Request& r) {
         BODY(WriteReq);
         EXPECT_EQ(b->fh, FileHandle(0x43));
         EXPECT_EQ(b->offset, 0x2000u);
         EXPECT_EQ(b->write_flags, 1u);
         EXPECT_EQ(b->lock_owner, 0x98u);
         EXPECT_EQ(b->flags, 0x8001u);
         EXPECT_EQ(AsString(b->data), "hello");
       }});
  g.push_back({"STATFS", Message(FUSE_STATFS, 1, Le()), plain, Ino(2),
               [](const Request& r) { BODY(StatfsReq); }});
  g.push_back({"RELEASE", Message(FUSE_RELEASE, kNode, Le().u64(0x44).u32(0x8000).u32(1).u64(0x97)),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(ReleaseReq);
                 EXPECT_EQ(b->fh, FileHandle(0x44));
                 EXPECT_EQ(b->flags, 0x8000u);
                 EXPECT_EQ(b->release_flags, 1u);
                 EXPECT_EQ(b->lock_owner, 0x97u);
               }});
  g.push_back({"FSYNC", Message(FUSE_FSYNC, kNode, Le().u64(0x45).u32(1).u32(0)), plain, Ino(kNode),
               [](const Request& r) {
                 BODY(FsyncReq);
                 EXPECT_EQ(b->fh, FileHandle(0x45));
                 EXPECT_EQ(b->fsync_flags, 1u);
               }});
  g.push_back(
      {"SETXATTR_EXT",
       Message(FUSE_SETXATTR, kNode, Le().u32(3).u32(1).u32(1).u32(0).str("user.x").raw("abc")),
       ext, Ino(kNode), [](const Request& r) {
         BODY(SetxattrReq);
         EXPECT_EQ(b->flags, 1u);
         EXPECT_EQ(b->setxattr_flags, 1u);
         EXPECT_EQ(b->name, "user.x");
         EXPECT_EQ(AsString(b->value), "abc");
       }});
  g.push_back({"SETXATTR_COMPAT",
               Message(FUSE_SETXATTR, kNode, Le().u32(2).u32(2).str("user.y").raw("hi")), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(SetxattrReq);
                 EXPECT_EQ(b->flags, 2u);
                 EXPECT_EQ(b->setxattr_flags, 0u);
                 EXPECT_EQ(b->name, "user.y");
                 EXPECT_EQ(AsString(b->value), "hi");
               }});
  g.push_back({"SETXATTR_EMPTY_VALUE",
               Message(FUSE_SETXATTR, kNode, Le().u32(0).u32(0).str("user.e")), plain, Ino(kNode),
               [](const Request& r) {
                 BODY(SetxattrReq);
                 EXPECT_EQ(b->name, "user.e");
                 EXPECT_TRUE(b->value.empty());
               }});
  g.push_back({"GETXATTR", Message(FUSE_GETXATTR, kNode, Le().u32(64).u32(0).str("user.z")), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(GetxattrReq);
                 EXPECT_EQ(b->size, 64u);
                 EXPECT_EQ(b->name, "user.z");
               }});
  g.push_back({"LISTXATTR", Message(FUSE_LISTXATTR, kNode, Le().u32(0).u32(0)), plain, Ino(kNode),
               [](const Request& r) {
                 BODY(ListxattrReq);
                 EXPECT_EQ(b->size, 0u);
               }});
  g.push_back({"REMOVEXATTR", Message(FUSE_REMOVEXATTR, kNode, Le().str("user.w")), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(RemovexattrReq);
                 EXPECT_EQ(b->name, "user.w");
               }});
  g.push_back({"FLUSH", Message(FUSE_FLUSH, kNode, Le().u64(0x46).u32(0).u32(0).u64(0x96)), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(FlushReq);
                 EXPECT_EQ(b->fh, FileHandle(0x46));
                 EXPECT_EQ(b->lock_owner, 0x96u);
               }});
  g.push_back(
      {"INIT",
       Message(FUSE_INIT, 0, Le().u32(7).u32(45).u32(0x20000).u32(0x73fffffb).u32(0x5fd).zeros(44)),
       plain, Ino(0),
       [](const Request& r) {
         BODY(InitReq);
         EXPECT_EQ(b->major, 7u);
         EXPECT_EQ(b->minor, 45u);
         EXPECT_EQ(b->max_readahead, 0x20000u);
         EXPECT_EQ(b->flags, (0x5fdull << 32) | 0x73fffffbull);
       },
       /*min_valid_body=*/16});
  g.push_back({"INIT_NO_EXT",
               Message(FUSE_INIT, 0, Le().u32(7).u32(38).u32(0x1000).u32(0x1).u32(0xff).zeros(44)),
               plain, Ino(0),
               [](const Request& r) {
                 BODY(InitReq);
                 EXPECT_EQ(b->minor, 38u);
                 EXPECT_EQ(b->max_readahead, 0x1000u);
                 EXPECT_EQ(b->flags, 0x1u);  // flags2 ignored without FUSE_INIT_EXT
               },
               16});
  g.push_back({"INIT_OLD_16", Message(FUSE_INIT, 0, Le().u32(7).u32(31).u32(0x2000).u32(0x3)),
               plain, Ino(0),
               [](const Request& r) {
                 BODY(InitReq);
                 EXPECT_EQ(b->minor, 31u);
                 EXPECT_EQ(b->max_readahead, 0x2000u);
                 EXPECT_EQ(b->flags, 0x3u);
               },
               16});
  g.push_back({"OPENDIR", Message(FUSE_OPENDIR, 1, Le().u32(0x10000).u32(0)), plain, Ino(2),
               [](const Request& r) {
                 BODY(OpendirReq);
                 EXPECT_EQ(b->flags, 0x10000u);
                 EXPECT_EQ(b->open_flags, 0u);
               }});
  for (bool plus : {false, true}) {
    g.push_back({plus ? "READDIRPLUS" : "READDIR",
                 Message(plus ? FUSE_READDIRPLUS : FUSE_READDIR, kNode,
                         Le().u64(0x47).u64(3).u32(4096).u32(0).u64(0).u32(0x10000).u32(0)),
                 plain, Ino(kNode), [plus](const Request& r) {
                   BODY(ReaddirReq);
                   EXPECT_EQ(b->fh, FileHandle(0x47));
                   EXPECT_EQ(b->offset, 3u);
                   EXPECT_EQ(b->size, 4096u);
                   EXPECT_EQ(b->plus, plus);
                 }});
  }
  g.push_back({"RELEASEDIR",
               Message(FUSE_RELEASEDIR, kNode, Le().u64(0x48).u32(0x10000).u32(0).u64(0)), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(ReleasedirReq);
                 EXPECT_EQ(b->fh, FileHandle(0x48));
                 EXPECT_EQ(b->flags, 0x10000u);
                 EXPECT_EQ(b->release_flags, 0u);
                 EXPECT_EQ(b->lock_owner, 0u);
               }});
  g.push_back({"FSYNCDIR", Message(FUSE_FSYNCDIR, kNode, Le().u64(0x49).u32(0).u32(0)), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(FsyncdirReq);
                 EXPECT_EQ(b->fh, FileHandle(0x49));
                 EXPECT_EQ(b->fsync_flags, 0u);
               }});
  for (uint32_t op : {FUSE_GETLK, FUSE_SETLK, FUSE_SETLKW}) {
    g.push_back({std::string(OpcodeName(op)),
                 Message(op, kNode,
                         Le().u64(0x4a)
                             .u64(0xdead)
                             .u64(0)
                             .u64(0x7fffffffffffffff)
                             .u32(1)
                             .u32(kPid)
                             .u32(1)
                             .u32(0)),
                 plain, Ino(kNode), [op](const Request& r) {
                   BODY(LkReq);
                   EXPECT_EQ(b->fh, FileHandle(0x4a));
                   EXPECT_EQ(b->owner, 0xdeadu);
                   EXPECT_EQ(b->lk.start, 0u);
                   EXPECT_EQ(b->lk.end, 0x7fffffffffffffffu);
                   EXPECT_EQ(b->lk.type, 1u);
                   EXPECT_EQ(b->lk.pid, kPid);
                   EXPECT_EQ(b->lk_flags, 1u);
                   EXPECT_EQ(b->set, op != FUSE_GETLK);
                   EXPECT_EQ(b->sleep, op == FUSE_SETLKW);
                 }});
  }
  g.push_back({"ACCESS", Message(FUSE_ACCESS, kNode, Le().u32(4).u32(0)), plain, Ino(kNode),
               [](const Request& r) {
                 BODY(AccessReq);
                 EXPECT_EQ(b->mask, 4u);
               }});
  g.push_back({"CREATE",
               Message(FUSE_CREATE, kNode,
                       Le().u32(0x8241).u32(0100600).u32(022).u32(1).str("new.txt").append(
                           SuppGroupsExt().bytes()),
                       2),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(CreateReq);
                 EXPECT_EQ(b->flags, 0x8241u);
                 EXPECT_EQ(b->mode, 0100600u);
                 EXPECT_EQ(b->umask, 022u);
                 EXPECT_EQ(b->open_flags, 1u);
                 EXPECT_EQ(b->name, "new.txt");
                 EXPECT_EQ(r.extensions.size(), 16u);
               }});
  g.push_back({"INTERRUPT", Message(FUSE_INTERRUPT, 0, Le().u64(0x1000), 0, 0x1001), plain, Ino(0),
               [](const Request& r) {
                 BODY(InterruptReq);
                 EXPECT_EQ(b->target, Unique(0x1000));
                 EXPECT_EQ(r.unique, Unique(0x1001));
               }});
  g.push_back({"BMAP", Message(FUSE_BMAP, kNode, Le().u64(77).u32(4096).u32(0)), plain, Ino(kNode),
               [](const Request& r) {
                 BODY(BmapReq);
                 EXPECT_EQ(b->block, 77u);
                 EXPECT_EQ(b->blocksize, 4096u);
               }});
  g.push_back({"DESTROY", Message(FUSE_DESTROY, 0, Le()), plain, Ino(0),
               [](const Request& r) { BODY(DestroyReq); }});
  g.push_back({"IOCTL",
               Message(FUSE_IOCTL, kNode,
                       Le().u64(0x4b)
                           .u32(0x10)
                           .u32(0x80086601)
                           .u64(0x7ffe0000)
                           .u32(4)
                           .u32(8)
                           .raw("\x01\x02\x03\x04")),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(IoctlReq);
                 EXPECT_EQ(b->fh, FileHandle(0x4b));
                 EXPECT_EQ(b->flags, 0x10u);
                 EXPECT_EQ(b->cmd, 0x80086601u);
                 EXPECT_EQ(b->arg, 0x7ffe0000u);
                 EXPECT_EQ(b->out_size, 8u);
                 EXPECT_EQ(AsString(b->in_data), "\x01\x02\x03\x04");
               }});
  g.push_back({"POLL", Message(FUSE_POLL, kNode, Le().u64(0x4c).u64(0x123).u32(1).u32(0x19)), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(PollReq);
                 EXPECT_EQ(b->fh, FileHandle(0x4c));
                 EXPECT_EQ(b->kh, 0x123u);
                 EXPECT_EQ(b->flags, 1u);
                 EXPECT_EQ(b->events, 0x19u);
               }});
  g.push_back({"NOTIFY_REPLY",
               Message(FUSE_NOTIFY_REPLY, kNode,
                       Le().u64(0).u64(0x3000).u32(3).u32(0).u64(0).u64(0).raw("xyz")),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(NotifyReplyReq);
                 EXPECT_EQ(b->offset, 0x3000u);
                 EXPECT_EQ(AsString(b->data), "xyz");
               }});
  g.push_back(
      {"FALLOCATE",
       Message(FUSE_FALLOCATE, kNode, Le().u64(0x4d).u64(0x100000).u64(0x200000).u32(3).u32(0)),
       plain, Ino(kNode), [](const Request& r) {
         BODY(FallocateReq);
         EXPECT_EQ(b->fh, FileHandle(0x4d));
         EXPECT_EQ(b->offset, 0x100000u);
         EXPECT_EQ(b->length, 0x200000u);
         EXPECT_EQ(b->mode, 3u);
       }});
  g.push_back({"LSEEK", Message(FUSE_LSEEK, kNode, Le().u64(0x4e).u64(0x5000).u32(3).u32(0)), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(LseekReq);
                 EXPECT_EQ(b->fh, FileHandle(0x4e));
                 EXPECT_EQ(b->offset, 0x5000u);
                 EXPECT_EQ(b->whence, 3u);
               }});
  g.push_back({"COPY_FILE_RANGE",
               Message(FUSE_COPY_FILE_RANGE, kNode,
                       Le().u64(0x50).u64(0x10).u64(1).u64(0x51).u64(0x20).u64(0x30).u64(0)),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(CopyFileRangeReq);
                 EXPECT_EQ(b->fh_in, FileHandle(0x50));
                 EXPECT_EQ(b->off_in, 0x10u);
                 EXPECT_EQ(b->node_out, Ino(2));
                 EXPECT_EQ(b->fh_out, FileHandle(0x51));
                 EXPECT_EQ(b->off_out, 0x20u);
                 EXPECT_EQ(b->len, 0x30u);
                 EXPECT_EQ(b->flags, 0u);
                 EXPECT_FALSE(b->wide);
               }});
  g.push_back(
      {"COPY_FILE_RANGE_64",
       Message(FUSE_COPY_FILE_RANGE_64, 1,
               Le().u64(0x52).u64(0x11).u64(0x777).u64(0x53).u64(0x21).u64(0x100000000ull).u64(0)),
       plain, Ino(2), [](const Request& r) {
         BODY(CopyFileRangeReq);
         EXPECT_EQ(b->fh_in, FileHandle(0x52));
         EXPECT_EQ(b->off_in, 0x11u);
         EXPECT_EQ(b->node_out, Ino(0x777));
         EXPECT_EQ(b->fh_out, FileHandle(0x53));
         EXPECT_EQ(b->off_out, 0x21u);
         EXPECT_EQ(b->len, 0x100000000ull);
         EXPECT_TRUE(b->wide);
       }});
  g.push_back({"SYNCFS", Message(FUSE_SYNCFS, 1, Le().u64(0)), plain, Ino(2),
               [](const Request& r) { BODY(SyncfsReq); }});
  g.push_back(
      {"TMPFILE",
       Message(FUSE_TMPFILE, kNode, Le().u32(0x410002).u32(0100600).u32(022).u32(0).str("/")),
       plain, Ino(kNode), [](const Request& r) {
         BODY(TmpfileReq);
         EXPECT_EQ(b->flags, 0x410002u);
         EXPECT_EQ(b->mode, 0100600u);
         EXPECT_EQ(b->umask, 022u);
         EXPECT_EQ(b->open_flags, 0u);
         EXPECT_EQ(b->name, "/");
       }});
  g.push_back({"STATX",
               Message(FUSE_STATX, kNode, Le().u32(0).u32(0).u64(0x99).u32(0x800).u32(0xfff)),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(StatxReq);
                 EXPECT_EQ(b->getattr_flags, 0u);
                 EXPECT_EQ(b->fh, std::nullopt);
                 EXPECT_EQ(b->sx_flags, 0x800u);
                 EXPECT_EQ(b->sx_mask, 0xfffu);
               }});
  g.push_back({"STATX_FH",
               Message(FUSE_STATX, kNode, Le().u32(1).u32(0).u64(0x98).u32(0).u32(0x7ff)), plain,
               Ino(kNode), [](const Request& r) {
                 BODY(StatxReq);
                 EXPECT_EQ(b->fh, FileHandle(0x98));
                 EXPECT_EQ(b->sx_mask, 0x7ffu);
               }});
  g.push_back(
      {"IOMAP_BEGIN",
       Message(FUSE_IOMAP_BEGIN, kNode, Le().u32(0x11).u32(0).u64(kNode).u64(0x1000).u64(0x2000)),
       plain, Ino(kNode), [](const Request& r) {
         BODY(IomapBeginReq);
         EXPECT_EQ(b->opflags, FUSE_IOMAP_OP_WRITE | FUSE_IOMAP_OP_DIRECT);
         EXPECT_EQ(b->attr_ino, Ino(kNode));
         EXPECT_EQ(b->pos, 0x1000u);
         EXPECT_EQ(b->count, 0x2000u);
       }});
  g.push_back({"IOMAP_BEGIN_ROOT",  // attr_ino is the real inode number: not translated
               Message(FUSE_IOMAP_BEGIN, 1, Le().u32(4).u32(0).u64(2).u64(0).u64(4096)), plain,
               Ino(2), [](const Request& r) {
                 BODY(IomapBeginReq);
                 EXPECT_EQ(b->opflags, FUSE_IOMAP_OP_REPORT);
                 EXPECT_EQ(b->attr_ino, Ino(2));
               }});
  g.push_back({"IOMAP_END",
               Message(FUSE_IOMAP_END, kNode,
                       Le().u32(1)
                           .u32(0)
                           .u64(kNode)
                           .u64(0)
                           .u64(0x1000)
                           .u64(0x800)
                           .u64(0)
                           .u64(0x1000)
                           .u64(0x100000)
                           .u16(2)
                           .u16(0x100)
                           .u32(1)),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(IomapEndReq);
                 EXPECT_EQ(b->opflags, FUSE_IOMAP_OP_WRITE);
                 EXPECT_EQ(b->attr_ino, Ino(kNode));
                 EXPECT_EQ(b->pos, 0u);
                 EXPECT_EQ(b->count, 0x1000u);
                 EXPECT_EQ(b->written, 0x800);
                 EXPECT_EQ(b->map.offset, 0u);
                 EXPECT_EQ(b->map.length, 0x1000u);
                 EXPECT_EQ(b->map.addr, 0x100000u);
                 EXPECT_EQ(b->map.type, FUSE_IOMAP_TYPE_MAPPED);
                 EXPECT_EQ(b->map.flags, FUSE_IOMAP_F_SIZE_CHANGED);
                 EXPECT_EQ(b->map.dev, 1u);
               }});
  g.push_back({"IOMAP_IOEND",
               Message(FUSE_IOMAP_IOEND, kNode,
                       Le().u32(0xa)
                           .u32(0xfffffffb)
                           .u64(kNode)
                           .u64(0x3000)
                           .u64(~0ull)
                           .u64(0x1000)
                           .u32(0)
                           .u32(0)),
               plain, Ino(kNode), [](const Request& r) {
                 BODY(IomapIoendReq);
                 EXPECT_EQ(b->flags, FUSE_IOMAP_IOEND_UNWRITTEN | FUSE_IOMAP_IOEND_DIRECT);
                 EXPECT_EQ(b->error, -EIO);
                 EXPECT_EQ(b->attr_ino, Ino(kNode));
                 EXPECT_EQ(b->pos, 0x3000u);
                 EXPECT_EQ(b->new_addr, FUSE_IOMAP_NULL_ADDR);
                 EXPECT_EQ(b->written, 0x1000u);
                 EXPECT_EQ(b->dev, 0u);
               }});
  g.push_back({"IOMAP_CONFIG",
               Message(FUSE_IOMAP_CONFIG, 0,
                       Le().u64(0x7f).u64(0x7fffffffffffffffull).u32(262144).u32(0).zeros(40)),
               plain, Ino(0), [](const Request& r) {
                 BODY(IomapConfigReq);
                 EXPECT_EQ(b->flags, 0x7fu);
                 EXPECT_EQ(b->maxbytes, 0x7fffffffffffffffll);
                 EXPECT_EQ(b->cache_maxbytes, 262144u);
               }});
  g.push_back(
      {"FREEZE_FS", Message(FUSE_FREEZE_FS, 1, Le().u64(3)), plain, Ino(2), [](const Request& r) {
         BODY(FreezeReq);
         EXPECT_EQ(b->unlinked, 3u);
       }});
  g.push_back({"UNFREEZE_FS", Message(FUSE_UNFREEZE_FS, 1, Le()), plain, Ino(2),
               [](const Request& r) { BODY(UnfreezeReq); }});
  g.push_back({"SHUTDOWN_FS", Message(FUSE_SHUTDOWN_FS, 1, Le().u64(0)), plain, Ino(2),
               [](const Request& r) {
                 BODY(ShutdownReq);
                 EXPECT_EQ(b->flags, 0u);
               }});
  return g;
}

uint32_t OpcodeOf(const std::vector<std::byte>& msg) {
  return static_cast<uint32_t>(msg[4]) | static_cast<uint32_t>(msg[5]) << 8 |
         static_cast<uint32_t>(msg[6]) << 16 | static_cast<uint32_t>(msg[7]) << 24;
}

void SetLen(std::vector<std::byte>& msg, uint32_t len) {
  for (int i = 0; i < 4; ++i) msg[i] = static_cast<std::byte>((len >> (8 * i)) & 0xff);
}

void CheckCommon(const Golden& g, const Request& r) {
  EXPECT_EQ(r.header.len, g.msg.size());
  EXPECT_EQ(r.header.opcode, OpcodeOf(g.msg));
  EXPECT_EQ(r.header.uid, kUid);
  EXPECT_EQ(r.header.gid, kGid);
  EXPECT_EQ(r.header.pid, kPid);
  EXPECT_EQ(r.unique.value(), r.header.unique);
  EXPECT_EQ(r.node, g.node);
}

class GoldenTest : public ::testing::TestWithParam<Golden> {};

TEST_P(GoldenTest, DecodesEveryField) {
  const Golden& g = GetParam();
  auto r = Decode(g.msg, g.ctx);
  ASSERT_TRUE(r) << "errno " << r.error();
  CheckCommon(g, *r);
  if (g.name != "INTERRUPT") {
    EXPECT_EQ(r->unique, Unique(kUnique));
  }
  g.check(*r);
}

// The io_uring framing: header in in_out, argument 0 in op_in, the rest in the payload.
TEST_P(GoldenTest, DecodesSplitFraming) {
  const Golden& g = GetParam();
  auto s = Arg0Size(OpcodeOf(g.msg), g.ctx);
  ASSERT_TRUE(s);
  std::span<const std::byte> msg(g.msg);
  if (msg.size() < 40 + *s) {
    // A short (pre-7.36) INIT never arrives on a ring (INIT always uses /dev/fuse), and the
    // split framing has no way to express it.
    std::span<const std::byte> body = msg.subspan(40);
    EXPECT_EQ(DecodeSplit(msg.first(40), body, {}, g.ctx).error(), EIO);
    return;
  }
  std::vector<std::byte> in_out(128, std::byte{0x5a});
  std::copy_n(msg.begin(), 40, in_out.begin());
  std::vector<std::byte> op_in(128, std::byte{0x5a});  // extra bytes past Arg0Size are ignored
  std::copy_n(msg.begin() + 40, *s, op_in.begin());
  std::vector<std::byte> payload = testing::ToVector(msg.subspan(40 + *s));
  auto r = DecodeSplit(in_out, op_in, payload, g.ctx);
  ASSERT_TRUE(r) << "errno " << r.error();
  CheckCommon(g, *r);
  g.check(*r);

  // The payload must account for exactly len - 40 - Arg0Size bytes.
  payload.push_back(std::byte{0});
  EXPECT_EQ(DecodeSplit(in_out, op_in, payload, g.ctx).error(), EIO);
  payload.pop_back();
  if (!payload.empty()) {
    payload.pop_back();
    EXPECT_EQ(DecodeSplit(in_out, op_in, payload, g.ctx).error(), EIO);
  }
  if (*s > 0) {
    EXPECT_EQ(DecodeSplit(in_out, std::span(op_in).first(*s - 1), payload, g.ctx).error(), EIO);
  }
}

// Every prefix of the message, as read (len field unchanged): EIO.
TEST_P(GoldenTest, TruncatedPrefixesAreErrors) {
  const Golden& g = GetParam();
  for (size_t n = 0; n < g.msg.size(); ++n) {
    std::vector<std::byte> prefix(g.msg.begin(), g.msg.begin() + n);  // exact-size heap copy
    auto r = Decode(prefix, g.ctx);
    ASSERT_FALSE(r) << "prefix " << n;
    EXPECT_EQ(r.error(), EIO) << "prefix " << n;
  }
}

// Every prefix of at least a header, with len rewritten to match: still malformed, unless the
// opcode allows a shorter body (INIT).
TEST_P(GoldenTest, TruncatedBodiesAreErrors) {
  const Golden& g = GetParam();
  for (size_t n = 40; n < g.msg.size(); ++n) {
    std::vector<std::byte> prefix(g.msg.begin(), g.msg.begin() + n);
    SetLen(prefix, static_cast<uint32_t>(n));
    auto r = Decode(prefix, g.ctx);
    if (n - 40 >= g.min_valid_body) {
      EXPECT_TRUE(r) << "body " << n - 40;
    } else {
      ASSERT_FALSE(r) << "body " << n - 40;
      EXPECT_EQ(r.error(), EIO) << "body " << n - 40;
    }
  }
}

// A trailing byte after a fixed-size message is garbage.
TEST_P(GoldenTest, TrailingByteIsError) {
  const Golden& g = GetParam();
  std::vector<std::byte> longer = g.msg;
  longer.push_back(std::byte{0});
  SetLen(longer, static_cast<uint32_t>(longer.size()));
  if (OpcodeOf(g.msg) == FUSE_INIT) {
    // INIT tolerates a longer fuse_init_in (a future kernel), up to and past 64 bytes.
    EXPECT_TRUE(Decode(longer, g.ctx));
    return;
  }
  // For messages ending in an extension block the extra byte shifts the block; either way the
  // message is malformed.
  auto r = Decode(longer, g.ctx);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), EIO);
}

// Random corruption of a valid message never crashes and never reads out of bounds (ASan).
TEST_P(GoldenTest, MutationsNeverCrash) {
  const Golden& g = GetParam();
  std::mt19937_64 rng(std::hash<std::string>()(g.name));
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::byte> m = g.msg;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      m[rng() % m.size()] = static_cast<std::byte>(rng());
    }
    if (rng() % 2) SetLen(m, static_cast<uint32_t>(m.size()));
    auto r = Decode(m, DecodeContext{.setxattr_ext = static_cast<bool>(rng() % 2)});
    if (r) {
      EXPECT_EQ(r->header.len, m.size());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Wire, GoldenTest, ::testing::ValuesIn(Goldens()),
                         [](const ::testing::TestParamInfo<Golden>& info) {
                           return info.param.name;
                         });

TEST(DecodeTest, EveryDecodedOpcodeHasAGolden) {
  std::set<uint32_t> covered;
  for (const Golden& g : Goldens()) covered.insert(OpcodeOf(g.msg));
  for (uint32_t op = 0; op < 5000; ++op) {
    if (IsKnownOpcode(op)) {
      EXPECT_TRUE(covered.count(op)) << OpcodeName(op);
    }
  }
}

TEST(DecodeTest, HeaderChecks) {
  auto msg = Message(FUSE_GETATTR, kNode, Le().u32(0).u32(0).u64(0));
  auto h = DecodeHeader(msg);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->len, 56u);
  EXPECT_EQ(h->opcode, FUSE_GETATTR);
  EXPECT_EQ(h->unique, kUnique);
  EXPECT_EQ(h->nodeid, kNode);
  EXPECT_EQ(h->total_extlen, 0u);

  auto bad = msg;
  SetLen(bad, 57);
  EXPECT_EQ(DecodeHeader(bad).error(), EIO);
  SetLen(bad, 39);
  EXPECT_EQ(DecodeHeader(std::span(bad).first(39)).error(), EIO);
  EXPECT_EQ(DecodeHeader({}).error(), EIO);
}

TEST(DecodeTest, UnknownOpcodeIsEnosys) {
  for (uint32_t op : {0u, 7u, 19u, 48u, 49u, 54u, 4088u, 4096u, 0xffffffffu, 436207616u}) {
    auto msg = Message(op, kNode, Le().u64(0));
    auto r = Decode(msg);
    ASSERT_FALSE(r) << op;
    EXPECT_EQ(r.error(), ENOSYS) << op;
    // The header still decodes, so the caller can reply with its unique.
    EXPECT_TRUE(DecodeHeader(msg)) << op;
    EXPECT_TRUE(NeedsReply(op));
    EXPECT_EQ(OpcodeName(op), "UNKNOWN");
  }
}

TEST(DecodeTest, NeedsReply) {
  EXPECT_FALSE(NeedsReply(FUSE_FORGET));
  EXPECT_FALSE(NeedsReply(FUSE_BATCH_FORGET));
  EXPECT_FALSE(NeedsReply(FUSE_INTERRUPT));
  EXPECT_FALSE(NeedsReply(FUSE_NOTIFY_REPLY));
  for (uint32_t op : {FUSE_LOOKUP, FUSE_INIT, FUSE_DESTROY, FUSE_READ, FUSE_IOMAP_BEGIN,
                      FUSE_IOMAP_CONFIG, FUSE_SYNCFS}) {
    EXPECT_TRUE(NeedsReply(op)) << OpcodeName(op);
  }
  EXPECT_EQ(OpcodeName(FUSE_COPY_FILE_RANGE_64), "FUSE_COPY_FILE_RANGE_64");
}

TEST(DecodeTest, Arg0Sizes) {
  EXPECT_EQ(*Arg0Size(FUSE_LOOKUP, {}), 0u);
  EXPECT_EQ(*Arg0Size(FUSE_SYMLINK, {}), 0u);
  EXPECT_EQ(*Arg0Size(FUSE_NOTIFY_REPLY, {}), 0u);
  EXPECT_EQ(*Arg0Size(FUSE_SETATTR, {}), 88u);
  EXPECT_EQ(*Arg0Size(FUSE_SETXATTR, {}), 8u);
  EXPECT_EQ(*Arg0Size(FUSE_SETXATTR, {.setxattr_ext = true}), 16u);
  EXPECT_EQ(*Arg0Size(FUSE_IOMAP_END, {}), 72u);
  EXPECT_EQ(Arg0Size(48, {}).error(), ENOSYS);
}

// --- Names ----------------------------------------------------------------------------------

TEST(DecodeTest, NamesMustBeTerminatedAndNonEmpty) {
  EXPECT_EQ(Decode(Message(FUSE_LOOKUP, kNode, Le().raw("foo"))).error(), EIO);
  EXPECT_EQ(Decode(Message(FUSE_LOOKUP, kNode, Le().str(""))).error(), EIO);
  EXPECT_EQ(Decode(Message(FUSE_LOOKUP, kNode, Le())).error(), EIO);
  // Bytes after the terminator.
  EXPECT_EQ(Decode(Message(FUSE_LOOKUP, kNode, Le().str("foo").u8(0))).error(), EIO);
  EXPECT_EQ(Decode(Message(FUSE_LOOKUP, kNode, Le().str("a").str("b"))).error(), EIO);
  EXPECT_EQ(Decode(Message(FUSE_SYMLINK, kNode, Le().str("l").str(""))).error(), EIO);
  EXPECT_EQ(Decode(Message(FUSE_SYMLINK, kNode, Le().str("").str("t"))).error(), EIO);
  EXPECT_EQ(Decode(Message(FUSE_RENAME, kNode, Le().u64(5).str("a").raw("b"))).error(), EIO);
  EXPECT_EQ(Decode(Message(FUSE_GETXATTR, kNode, Le().u32(0).u32(0).str(""))).error(), EIO);
  // A long name is the ext4 layer's business (ENAMETOOLONG), not a decode error.
  std::string long_name(300, 'x');
  auto msg = Message(FUSE_LOOKUP, kNode, Le().str(long_name));  // outlives the views into it
  auto r = Decode(msg);
  ASSERT_TRUE(r);
  EXPECT_EQ(std::get<LookupReq>(r->body).name, long_name);
}

TEST(DecodeTest, DataLengthsMustMatch) {
  // WRITE size says 6, 5 bytes follow.
  EXPECT_EQ(Decode(Message(FUSE_WRITE, kNode,
                           Le().u64(1).u64(0).u32(6).u32(0).u64(0).u32(0).u32(0).raw("hello")))
                .error(),
            EIO);
  // SETXATTR value shorter and longer than its size.
  EXPECT_EQ(
      Decode(Message(FUSE_SETXATTR, kNode, Le().u32(3).u32(0).str("user.a").raw("ab"))).error(),
      EIO);
  EXPECT_EQ(
      Decode(Message(FUSE_SETXATTR, kNode, Le().u32(1).u32(0).str("user.a").raw("ab"))).error(),
      EIO);
  // The 16-byte form decoded as the 8-byte one misreads the name: the value size disagrees.
  auto ext_msg =
      Message(FUSE_SETXATTR, kNode, Le().u32(3).u32(1).u32(1).u32(0).str("user.x").raw("abc"));
  EXPECT_FALSE(Decode(ext_msg, DecodeContext{.setxattr_ext = false}));
  // BATCH_FORGET count disagrees with the entries.
  EXPECT_EQ(Decode(Message(FUSE_BATCH_FORGET, 0, Le().u32(2).u32(0).u64(5).u64(1))).error(), EIO);
  EXPECT_EQ(
      Decode(Message(FUSE_BATCH_FORGET, 0, Le().u32(0xffffffff).u32(0).u64(5).u64(1))).error(),
      EIO);
  // IOCTL in_size disagrees.
  EXPECT_EQ(
      Decode(Message(FUSE_IOCTL, kNode, Le().u64(1).u32(0).u32(1).u64(0).u32(8).u32(0).raw("ab")))
          .error(),
      EIO);
  // NOTIFY_REPLY size disagrees.
  EXPECT_EQ(Decode(Message(FUSE_NOTIFY_REPLY, kNode,
                           Le().u64(0).u64(0).u32(4).u32(0).u64(0).u64(0).raw("xyz")))
                .error(),
            EIO);
}

TEST(DecodeTest, InitIgnoresBytesPastItsStruct) {
  auto r = Decode(Message(FUSE_INIT, 0, Le().u32(7).u32(45).u32(1).u32(2).u32(3).zeros(44 + 8)));
  ASSERT_TRUE(r);
  EXPECT_EQ(std::get<InitReq>(r->body).flags, 2u);
  EXPECT_EQ(Decode(Message(FUSE_INIT, 0, Le().u32(7).u32(45).u32(1))).error(), EIO);
}

// --- Extensions -----------------------------------------------------------------------------

TEST(DecodeTest, ExtensionBlockPastBodyIsError) {
  // total_extlen 3 = 24 bytes, only 16 + name in the body... name absorbed: still malformed.
  auto msg =
      Message(FUSE_MKDIR, kNode, Le().u32(0755).u32(0).str("d").append(SuppGroupsExt().bytes()), 3);
  EXPECT_EQ(Decode(msg).error(), EIO);
  // total_extlen far past the message.
  msg = Message(FUSE_MKDIR, kNode, Le().u32(0755).u32(0).str("d"), 0xffff);
  EXPECT_EQ(Decode(msg).error(), EIO);
  // Extension on an opcode with an empty argument 0.
  msg = Message(FUSE_LOOKUP, kNode, Le().str("x"), 1);
  EXPECT_EQ(Decode(msg).error(), EIO);
}

TEST(DecodeTest, MalformedExtensionRecordsAreErrors) {
  auto with_ext = [](const Le& ext, uint16_t extlen) {
    return Message(FUSE_MKDIR, kNode, Le().u32(0755).u32(0).str("d").append(ext.bytes()), extlen);
  };
  EXPECT_TRUE(Decode(with_ext(SuppGroupsExt(), 2)));
  EXPECT_EQ(Decode(with_ext(Le().u32(0).u32(32).u64(0), 2)).error(), EIO);   // size 0
  EXPECT_EQ(Decode(with_ext(Le().u32(12).u32(32).u64(0), 2)).error(), EIO);  // unaligned
  EXPECT_EQ(Decode(with_ext(Le().u32(24).u32(32).u64(0), 2)).error(), EIO);  // past block
  // Two records: a security context (type 1) then groups.
  auto two = Le().u32(8).u32(1).append(SuppGroupsExt().bytes());
  auto msg = with_ext(two, 3);
  auto r = Decode(msg);
  ASSERT_TRUE(r);
  auto records = ParseExtensions(r->extensions);
  ASSERT_TRUE(records);
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[0].type, 1u);
  EXPECT_TRUE((*records)[0].data.empty());
  EXPECT_EQ((*records)[1].type, FUSE_EXT_GROUPS);
  EXPECT_EQ(*FindSuppGroups(r->extensions), std::vector<uint32_t>{100});
}

TEST(DecodeTest, SuppGroups) {
  EXPECT_TRUE(FindSuppGroups({})->empty());
  auto two = Le().u32(16).u32(32).u32(2).u32(7).u32(8).zeros(4);  // nr 2 needs 8 bytes, has 4
  EXPECT_EQ(FindSuppGroups(two.bytes()).error(), EIO);
  auto ok = Le().u32(24).u32(32).u32(2).u32(7).u32(8).zeros(4);
  EXPECT_EQ(*FindSuppGroups(ok.bytes()), (std::vector<uint32_t>{7, 8}));
}

// --- Root translation -----------------------------------------------------------------------

TEST(RootTranslationTest, NodeIdToIno) {
  EXPECT_EQ(*InoFromNodeId(1), Ino(2));
  EXPECT_EQ(InoFromNodeId(2).error(), ESTALE);
  EXPECT_EQ(InoFromNodeId(0).error(), EIO);
  EXPECT_EQ(*InoFromNodeId(3), Ino(3));
  EXPECT_EQ(*InoFromNodeId(~0ull), Ino(~0ull));
}

TEST(RootTranslationTest, InoToNodeId) {
  EXPECT_EQ(NodeIdFromIno(Ino(2)), 1u);
  EXPECT_EQ(NodeIdFromIno(Ino(0)), 0u);
  EXPECT_EQ(NodeIdFromIno(Ino(11)), 11u);
  EXPECT_DEATH((void)NodeIdFromIno(Ino(1)), "");
}

TEST(RootTranslationTest, EveryNodeIdFieldRejectsTwoAndZero) {
  struct Case {
    const char* what;
    std::function<std::vector<std::byte>(uint64_t)> make;
  };
  std::vector<Case> cases = {
      {"header", [](uint64_t n) { return Message(FUSE_GETATTR, n, Le().u32(0).u32(0).u64(0)); }},
      {"forget header", [](uint64_t n) { return Message(FUSE_FORGET, n, Le().u64(1)); }},
      {"rename newdir",
       [](uint64_t n) { return Message(FUSE_RENAME, kNode, Le().u64(n).str("a").str("b")); }},
      {"rename2 newdir",
       [](uint64_t n) {
         return Message(FUSE_RENAME2, kNode, Le().u64(n).u32(0).u32(0).str("a").str("b"));
       }},
      {"link oldnodeid",
       [](uint64_t n) { return Message(FUSE_LINK, kNode, Le().u64(n).str("a")); }},
      {"copy_file_range nodeid_out",
       [](uint64_t n) {
         return Message(FUSE_COPY_FILE_RANGE, kNode,
                        Le().u64(0).u64(0).u64(n).u64(0).u64(0).u64(0).u64(0));
       }},
      {"batch_forget entry",
       [](uint64_t n) {
         return Message(FUSE_BATCH_FORGET, 0, Le().u32(2).u32(0).u64(7).u64(1).u64(n).u64(1));
       }},
      {"iomap header",
       [](uint64_t n) {
         return Message(FUSE_IOMAP_BEGIN, n, Le().u32(0).u32(0).u64(5).u64(0).u64(1));
       }},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Decode(c.make(2)).error(), ESTALE) << c.what;
    EXPECT_EQ(Decode(c.make(0)).error(), EIO) << c.what;
    EXPECT_TRUE(Decode(c.make(1))) << c.what;
    EXPECT_TRUE(Decode(c.make(3))) << c.what;
  }
}

TEST(RootTranslationTest, NodelessOpcodesIgnoreHeaderNodeId) {
  for (uint64_t n : {0ull, 1ull, 2ull}) {
    auto r = Decode(Message(FUSE_DESTROY, n, Le()));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->node, Ino(0));
    r = Decode(Message(FUSE_INTERRUPT, n, Le().u64(8)));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->node, Ino(0));
  }
}

// --- Random input ---------------------------------------------------------------------------

TEST(FuzzTest, RandomMessagesNeverCrash) {
  std::mt19937_64 rng(42);
  std::vector<uint32_t> ops;
  for (uint32_t op = 0; op < 5000; ++op) {
    if (IsKnownOpcode(op)) ops.push_back(op);
  }
  int decoded = 0;
  for (int i = 0; i < 200000; ++i) {
    size_t size = rng() % 200;
    std::vector<std::byte> m(size);
    for (auto& b : m) b = static_cast<std::byte>(rng());
    if (size >= 40) {
      // Usually a plausible header, so that bodies get exercised too.
      if (rng() % 8 != 0) SetLen(m, static_cast<uint32_t>(size));
      if (rng() % 8 != 0) {
        uint32_t op = ops[rng() % ops.size()];
        for (int k = 0; k < 4; ++k) m[4 + k] = static_cast<std::byte>(op >> (8 * k));
      }
      if (rng() % 2) m[36] = m[37] = std::byte{0};  // total_extlen 0
      if (rng() % 2) m[size - 1] = std::byte{0};    // a terminated last string
    }
    auto r = Decode(m, DecodeContext{.setxattr_ext = static_cast<bool>(rng() % 2)});
    if (r) {
      ++decoded;
      EXPECT_EQ(r->header.len, size);
    }
    // The split framing too, with random cuts.
    if (size >= 40) {
      size_t cut = 40 + rng() % (size - 39);
      std::span<const std::byte> all(m);
      (void)DecodeSplit(all.first(40), all.subspan(40, cut - 40), all.subspan(cut));
    }
  }
  EXPECT_GT(decoded, 0);
}

}  // namespace
}  // namespace iomapfs::wire
