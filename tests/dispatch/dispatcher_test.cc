// Dispatcher: raw request bytes in, reply bytes out, over a real image (no mount needed).
// Covers INIT negotiation, the decode-error and unknown-opcode paths, root translation, replies
// that must not be sent, and the size-query protocol.
#include "fsserver/dispatch/dispatcher.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <cstring>
#include <deque>
#include <vector>

#include "fsserver/wire/fuse_abi.h"
#include "tests/support/test_util.h"

namespace iomapfs::dispatch {
namespace {

namespace tu = ::iomapfs::testing;

class CaptureSink : public ReplySink {
 public:
  Result<void> Send(std::span<const iovec> iov) override {
    std::vector<std::byte> msg;
    for (const iovec& v : iov) {
      auto* p = static_cast<const std::byte*>(v.iov_base);
      msg.insert(msg.end(), p, p + v.iov_len);
    }
    replies.push_back(std::move(msg));
    return {};
  }
  std::deque<std::vector<std::byte>> replies;
};

struct ParsedReply {
  abi::fuse_out_header header;
  std::vector<std::byte> body;
};

class DispatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string src = dir_.Sub("src");
    mkdir(src.c_str(), 0755);
    ASSERT_TRUE(tu::WriteFile(src + "/hello", "hello world\n"));
    ASSERT_EQ(setxattr((src + "/hello").c_str(), "user.color", "blue", 4, 0), 0);
    std::string image = dir_.Sub("fs.img");
    ASSERT_EQ(tu::MakeImage(image, 16 << 20, "ext4", {}, src), "");
    std::string why;
    auto e2 = ext2::Ext2Fs::Open(image, ext2::OpenOptions{}, &why);
    ASSERT_TRUE(e2) << why;
    fs_ = std::make_unique<ext4::Filesystem>(std::move(*e2), ext4::Options{});
    disp_ = std::make_unique<Dispatcher>(*fs_, DispatcherOptions{});
  }

  // Sends one request: header (len filled in) + arg struct bytes + extra bytes.
  void Send(uint32_t opcode, uint64_t nodeid, std::span<const std::byte> arg,
            std::string_view extra = {}, bool nul = false) {
    abi::fuse_in_header h{};
    h.opcode = opcode;
    h.unique = next_unique_ += 2;
    h.nodeid = nodeid;
    std::vector<std::byte> msg(sizeof(h));
    msg.insert(msg.end(), arg.begin(), arg.end());
    auto e = std::as_bytes(std::span<const char>(extra));
    msg.insert(msg.end(), e.begin(), e.end());
    if (nul) msg.push_back(std::byte{0});
    h.len = static_cast<uint32_t>(msg.size());
    std::memcpy(msg.data(), &h, sizeof(h));
    disp_->Handle(msg, sink_);
  }
  template <class T>
  void SendStruct(uint32_t opcode, uint64_t nodeid, const T& arg, std::string_view name = {}) {
    Send(opcode, nodeid, std::as_bytes(std::span<const T, 1>(&arg, 1)), name, !name.empty());
  }
  void SendName(uint32_t opcode, uint64_t nodeid, std::string_view name) {
    Send(opcode, nodeid, {}, name, true);
  }

  void Init(uint32_t minor = 45, uint64_t flags = 0x73fffffb | (0x5fdull << 32)) {
    abi::fuse_init_in in{};
    in.major = 7;
    in.minor = minor;
    in.max_readahead = 131072;
    in.flags = static_cast<uint32_t>(flags);
    in.flags2 = static_cast<uint32_t>(flags >> 32);
    SendStruct(abi::FUSE_INIT, 0, in);
  }

  // Pops the next reply; checks that header.len matches and unique is the last request's.
  ParsedReply Pop() {
    EXPECT_FALSE(sink_.replies.empty());
    if (sink_.replies.empty()) return {};
    std::vector<std::byte> msg = std::move(sink_.replies.front());
    sink_.replies.pop_front();
    ParsedReply r{};
    EXPECT_GE(msg.size(), sizeof(r.header));
    std::memcpy(&r.header, msg.data(), sizeof(r.header));
    EXPECT_EQ(r.header.len, msg.size());
    EXPECT_EQ(r.header.unique, next_unique_);
    r.body.assign(msg.begin() + sizeof(r.header), msg.end());
    return r;
  }
  template <class T>
  T BodyAs(const ParsedReply& r) {
    T v{};
    EXPECT_EQ(r.body.size(), sizeof(T));
    std::memcpy(&v, r.body.data(), std::min(sizeof(T), r.body.size()));
    return v;
  }

  uint64_t LookupHello() {
    SendName(abi::FUSE_LOOKUP, abi::FUSE_ROOT_ID, "hello");
    ParsedReply r = Pop();
    EXPECT_EQ(r.header.error, 0);
    return BodyAs<abi::fuse_entry_out>(r).nodeid;
  }

  tu::TempDir dir_;
  std::unique_ptr<ext4::Filesystem> fs_;
  std::unique_ptr<Dispatcher> disp_;
  CaptureSink sink_;
  uint64_t next_unique_ = 0;
};

TEST_F(DispatcherTest, InitNegotiatesMinorFlagsAndSizes) {
  Init();
  ParsedReply r = Pop();
  ASSERT_EQ(r.header.error, 0);
  auto out = BodyAs<abi::fuse_init_out>(r);
  EXPECT_EQ(out.major, 7u);
  EXPECT_EQ(out.minor, 45u);
  uint64_t flags = out.flags | (uint64_t{out.flags2} << 32);
  for (uint64_t f : {abi::FUSE_ASYNC_READ, abi::FUSE_MAX_PAGES, abi::FUSE_DO_READDIRPLUS,
                     abi::FUSE_PARALLEL_DIROPS, abi::FUSE_EXPORT_SUPPORT, abi::FUSE_POSIX_ACL}) {
    EXPECT_NE(flags & f, 0u) << std::hex << f;
  }
  EXPECT_EQ(flags & abi::FUSE_DONT_MASK, 0u);  // POSIX_ACL implies it
  // Never more than offered, and nothing we cannot serve yet.
  EXPECT_EQ(flags & abi::FUSE_WRITEBACK_CACHE, 0u);
  EXPECT_EQ(flags & abi::FUSE_OVER_IO_URING, 0u);
  EXPECT_EQ(out.max_write, 1u << 20);
  EXPECT_EQ(out.max_pages, 256u);
  EXPECT_EQ(out.max_readahead, 131072u);
  EXPECT_EQ(out.time_gran, 1u);
  EXPECT_TRUE(disp_->initialized());
}

TEST_F(DispatcherTest, InitWithoutPosixAclAsksForDontMaskInstead) {
  // fakeroot: FUSE_POSIX_ACL would make the kernel check permissions with the real caller.
  DispatcherOptions opts;
  opts.posix_acl = false;
  disp_ = std::make_unique<Dispatcher>(*fs_, opts);
  Init();
  auto out = BodyAs<abi::fuse_init_out>(Pop());
  uint64_t flags = out.flags | (uint64_t{out.flags2} << 32);
  EXPECT_EQ(flags & abi::FUSE_POSIX_ACL, 0u);
  EXPECT_NE(flags & abi::FUSE_DONT_MASK, 0u);
  EXPECT_NE(flags & abi::FUSE_DO_READDIRPLUS, 0u);
}

TEST_F(DispatcherTest, InitWritebackCacheOnlyWhenWantedOfferedAndReadWrite) {
  struct Case {
    bool wanted, read_only, offered, expected;
  };
  for (const Case& c : {Case{true, false, true, true}, Case{true, true, true, false},
                        Case{false, false, true, false}, Case{true, false, false, false}}) {
    DispatcherOptions opts;
    opts.writeback_cache = c.wanted;
    opts.read_only = c.read_only;
    disp_ = std::make_unique<Dispatcher>(*fs_, opts);
    uint64_t offer = 0x73fffffb | (0x5fdull << 32);
    if (!c.offered) offer &= ~abi::FUSE_WRITEBACK_CACHE;
    Init(45, offer);
    auto out = BodyAs<abi::fuse_init_out>(Pop());
    uint64_t flags = out.flags | (uint64_t{out.flags2} << 32);
    EXPECT_EQ((flags & abi::FUSE_WRITEBACK_CACHE) != 0, c.expected)
        << c.wanted << c.read_only << c.offered;
    EXPECT_EQ(disp_->writeback_cache(), c.expected);
  }
}

// With the writeback cache the source's EOF on the image may lag the kernel's: copies go
// through the kernel's page cache instead (ENOSYS, for both opcodes).
TEST_F(DispatcherTest, CopyFileRangeDeclinedWithWritebackCache) {
  DispatcherOptions opts;
  opts.writeback_cache = true;
  opts.read_only = false;
  disp_ = std::make_unique<Dispatcher>(*fs_, opts);
  Init();
  Pop();
  uint64_t node = LookupHello();
  abi::fuse_copy_file_range_in in{};
  in.nodeid_out = node;
  in.len = 5;
  SendStruct(abi::FUSE_COPY_FILE_RANGE_64, node, in);
  EXPECT_EQ(Pop().header.error, -ENOSYS);
  SendStruct(abi::FUSE_COPY_FILE_RANGE, node, in);
  EXPECT_EQ(Pop().header.error, -ENOSYS);
}

TEST_F(DispatcherTest, InitWithOlderKernelUsesItsMinorAndOfferedFlagsOnly) {
  Init(38, abi::FUSE_ASYNC_READ | abi::FUSE_MAX_PAGES);  // no INIT_EXT: high bits ignored
  auto out = BodyAs<abi::fuse_init_out>(Pop());
  EXPECT_EQ(out.minor, 38u);
  EXPECT_EQ(out.flags, abi::FUSE_ASYNC_READ | abi::FUSE_MAX_PAGES);
  EXPECT_EQ(out.flags2, 0u);
}

TEST_F(DispatcherTest, InitWithNewerMajorAsksForOurs) {
  abi::fuse_init_in in{};
  in.major = 8;
  in.minor = 0;
  SendStruct(abi::FUSE_INIT, 0, in);
  auto out = BodyAs<abi::fuse_init_out>(Pop());
  EXPECT_EQ(out.major, 7u);
  EXPECT_FALSE(disp_->initialized());
}

TEST_F(DispatcherTest, RequestsBeforeInitFail) {
  SendName(abi::FUSE_LOOKUP, abi::FUSE_ROOT_ID, "hello");
  EXPECT_EQ(Pop().header.error, -EIO);
}

TEST_F(DispatcherTest, LookupTranslatesRootAndCachesNegativeEntries) {
  Init();
  Pop();
  SendName(abi::FUSE_LOOKUP, abi::FUSE_ROOT_ID, "hello");
  ParsedReply r = Pop();
  ASSERT_EQ(r.header.error, 0);
  auto e = BodyAs<abi::fuse_entry_out>(r);
  EXPECT_GT(e.nodeid, 2u);
  EXPECT_EQ(e.nodeid, e.attr.ino);
  EXPECT_EQ(e.attr.size, 12u);
  EXPECT_EQ(e.attr.mode & S_IFMT, static_cast<uint32_t>(S_IFREG));

  SendName(abi::FUSE_LOOKUP, abi::FUSE_ROOT_ID, "missing");
  r = Pop();
  ASSERT_EQ(r.header.error, 0);  // negative entry: node id 0 with a timeout
  e = BodyAs<abi::fuse_entry_out>(r);
  EXPECT_EQ(e.nodeid, 0u);
  EXPECT_GT(e.entry_valid, 0u);

  // ".." of the root is the root, presented as FUSE_ROOT_ID; its attr.ino stays 2.
  SendName(abi::FUSE_LOOKUP, abi::FUSE_ROOT_ID, "..");
  e = BodyAs<abi::fuse_entry_out>(Pop());
  EXPECT_EQ(e.nodeid, abi::FUSE_ROOT_ID);
  EXPECT_EQ(e.attr.ino, 2u);
}

TEST_F(DispatcherTest, NodeTwoIsStaleAndMalformedIsEio) {
  Init();
  Pop();
  abi::fuse_getattr_in ga{};
  SendStruct(abi::FUSE_GETATTR, 2, ga);
  EXPECT_EQ(Pop().header.error, -ESTALE);
  // LOOKUP whose name has no terminating NUL.
  Send(abi::FUSE_LOOKUP, abi::FUSE_ROOT_ID, {}, "hello", false);
  EXPECT_EQ(Pop().header.error, -EIO);
  // A READ with a truncated argument.
  abi::fuse_read_in rd{};
  Send(abi::FUSE_READ, abi::FUSE_ROOT_ID,
       std::as_bytes(std::span<const abi::fuse_read_in, 1>(&rd, 1)).first(10));
  EXPECT_EQ(Pop().header.error, -EIO);
  EXPECT_EQ(disp_->stats().decode_errors.load(), 2u);
  // An unknown opcode.
  Send(9999, abi::FUSE_ROOT_ID, {});
  EXPECT_EQ(Pop().header.error, -ENOSYS);
  EXPECT_EQ(disp_->stats().unknown_opcodes.load(), 1u);
}

TEST_F(DispatcherTest, ForgetAndInterruptGetNoReply) {
  Init();
  Pop();
  uint64_t node = LookupHello();
  abi::fuse_forget_in f{1};
  SendStruct(abi::FUSE_FORGET, node, f);
  abi::fuse_interrupt_in in{};
  in.unique = 12345;
  SendStruct(abi::FUSE_INTERRUPT, 0, in);
  EXPECT_TRUE(sink_.replies.empty());
}

TEST_F(DispatcherTest, OpenReadRelease) {
  Init();
  Pop();
  uint64_t node = LookupHello();
  abi::fuse_open_in o{};
  o.flags = O_RDONLY;
  SendStruct(abi::FUSE_OPEN, node, o);
  auto open_out = BodyAs<abi::fuse_open_out>(Pop());
  EXPECT_NE(open_out.open_flags & abi::FOPEN_KEEP_CACHE, 0u);
  abi::fuse_read_in rd{};
  rd.fh = open_out.fh;
  rd.offset = 6;
  rd.size = 4096;
  SendStruct(abi::FUSE_READ, node, rd);
  ParsedReply r = Pop();
  ASSERT_EQ(r.header.error, 0);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.body.data()), r.body.size()), "world\n");
  o.flags = O_RDWR;
  SendStruct(abi::FUSE_OPEN, node, o);
  EXPECT_EQ(Pop().header.error, -EROFS);
  abi::fuse_release_in rel{};
  rel.fh = open_out.fh;
  SendStruct(abi::FUSE_RELEASE, node, rel);
  EXPECT_EQ(Pop().header.error, 0);
}

TEST_F(DispatcherTest, XattrSizeQueryAndErange) {
  Init();
  Pop();
  uint64_t node = LookupHello();
  abi::fuse_getxattr_in g{};
  g.size = 0;
  SendStruct(abi::FUSE_GETXATTR, node, g, "user.color");
  EXPECT_EQ(BodyAs<abi::fuse_getxattr_out>(Pop()).size, 4u);
  g.size = 2;
  SendStruct(abi::FUSE_GETXATTR, node, g, "user.color");
  EXPECT_EQ(Pop().header.error, -ERANGE);
  g.size = 64;
  SendStruct(abi::FUSE_GETXATTR, node, g, "user.color");
  ParsedReply r = Pop();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.body.data()), r.body.size()), "blue");
  SendStruct(abi::FUSE_GETXATTR, node, g, "user.none");
  EXPECT_EQ(Pop().header.error, -ENODATA);
  SendStruct(abi::FUSE_LISTXATTR, node, g);
  r = Pop();
  std::string list(reinterpret_cast<const char*>(r.body.data()), r.body.size());
  EXPECT_NE(list.find(std::string("user.color\0", 11)), std::string::npos);
}

TEST_F(DispatcherTest, WritesAreRefusedReadOnly) {
  Init();
  Pop();
  abi::fuse_mkdir_in m{};
  m.mode = 0755;
  SendStruct(abi::FUSE_MKDIR, abi::FUSE_ROOT_ID, m, "newdir");
  EXPECT_EQ(Pop().header.error, -EROFS);
  SendName(abi::FUSE_UNLINK, abi::FUSE_ROOT_ID, "hello");
  EXPECT_EQ(Pop().header.error, -EROFS);
}

TEST_F(DispatcherTest, ReaddirPlusListsEveryEntryAcrossSmallBuffers) {
  Init();
  Pop();
  abi::fuse_open_in o{};
  SendStruct(abi::FUSE_OPENDIR, abi::FUSE_ROOT_ID, o);
  auto dir = BodyAs<abi::fuse_open_out>(Pop());
  std::vector<std::string> names;
  uint64_t off = 0;
  for (int rounds = 0; rounds < 100; ++rounds) {
    abi::fuse_read_in rd{};
    rd.fh = dir.fh;
    rd.offset = off;
    rd.size = 200;  // room for one direntplus record at a time
    SendStruct(abi::FUSE_READDIRPLUS, abi::FUSE_ROOT_ID, rd);
    ParsedReply r = Pop();
    ASSERT_EQ(r.header.error, 0);
    if (r.body.empty()) break;
    size_t pos = 0;
    while (pos < r.body.size()) {
      abi::fuse_direntplus dp;
      std::memcpy(&dp, r.body.data() + pos, sizeof(dp));
      names.emplace_back(reinterpret_cast<const char*>(r.body.data() + pos + sizeof(dp)),
                         dp.dirent.namelen);
      if (names.back() == "." || names.back() == "..") EXPECT_EQ(dp.entry_out.nodeid, 0u);
      off = dp.dirent.off;
      pos += (sizeof(dp) + dp.dirent.namelen + 7) & ~size_t{7};
    }
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{".", "..", "hello", "lost+found"}));
}

}  // namespace
}  // namespace iomapfs::dispatch
