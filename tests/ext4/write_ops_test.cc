// Modifying operations over fresh images of several feature sets: namespace changes, rename
// flavours, ownership/ACL inheritance, xattrs, writes, truncate, fallocate and orphans. Every
// test ends with Close() and a clean `e2fsck -fn`; as root, a kernel ext4 read-only mount shows
// the expected tree.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "ext2/ext2_fs.h"
#include "fsserver/ext4/filesystem.h"
#include "tests/ext4/ext4_test_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::ext4::testing {
namespace {

using iomapfs::testing::FsckClean;
using iomapfs::testing::IsRoot;
using iomapfs::testing::TempDir;

const std::vector<FeatureSet>& WriteFeatureSets() {
  static const std::vector<FeatureSet> sets = {
      {"ext4", "ext4", {}},
      {"ext4_1k", "ext4", {"-b", "1024"}},
      {"ext4_no64_nocsum", "ext4", {"-O", "^64bit,^metadata_csum"}},
      {"ext2", "ext2", {}},
      {"ext3", "ext3", {}},
  };
  return sets;
}

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

// An ACL in the posix_acl_xattr format (version 2).
std::string XattrAcl(const std::vector<std::tuple<uint16_t, uint16_t, uint32_t>>& entries) {
  std::string v(4, '\0');
  uint32_t version = 2;
  std::memcpy(v.data(), &version, 4);
  for (auto [tag, perm, id] : entries) {
    char e[8];
    std::memcpy(e, &tag, 2);
    std::memcpy(e + 2, &perm, 2);
    std::memcpy(e + 4, &id, 4);
    v.append(e, 8);
  }
  return v;
}

class WriteOpsTest : public ::testing::TestWithParam<FeatureSet> {
 protected:
  void SetUp() override {
    image_ = dir_.Sub("fs.img");
    const FeatureSet& fs = GetParam();
    ASSERT_EQ(iomapfs::testing::MakeImage(image_, 64ull << 20, fs.fs_type, fs.mkfs_args), "");
    Open();
  }

  void Open() {
    std::string why;
    ext2::OpenOptions opts;
    opts.read_write = true;
    auto e2 = ext2::Ext2Fs::Open(image_, opts, &why);
    ASSERT_TRUE(e2) << why;
    fs_ = std::make_unique<Filesystem>(std::move(*e2), Options{});
  }

  // Closes and checks the image with e2fsck -fn.
  void CloseAndCheck() {
    ASSERT_TRUE(fs_->Close());
    fs_.reset();
    std::string out;
    EXPECT_TRUE(FsckClean(image_, &out)) << out;
  }

  bool ext2_family() const { return GetParam().fs_type != "ext4"; }

  Attr MustCreate(Ino parent, const std::string& name, uint32_t mode = 0644) {
    auto a = fs_->Create(parent, name, mode, 022, caller_);
    EXPECT_TRUE(a) << name << ": " << strerror(a.error());
    return a.value_or(Attr{});
  }
  Attr MustMkdir(Ino parent, const std::string& name, uint32_t mode = 0755) {
    auto a = fs_->Mkdir(parent, name, mode, 022, caller_);
    EXPECT_TRUE(a) << name << ": " << strerror(a.error());
    return a.value_or(Attr{});
  }
  std::string ReadFile(Ino ino) {
    auto a = fs_->GetAttr(ino);
    EXPECT_TRUE(a);
    auto r = ReadAll(*fs_, ino, a->size);
    EXPECT_TRUE(r);
    return r.value_or("");
  }
  void WriteAt(Ino ino, uint64_t off, const std::string& data) {
    auto w = fs_->Write(ino, off, Bytes(data), false, false);
    ASSERT_TRUE(w) << strerror(w.error());
    ASSERT_EQ(*w, data.size());
  }

  TempDir dir_;
  std::string image_;
  std::unique_ptr<Filesystem> fs_;
  Caller caller_{1000, 1000, 1, {}};
};

TEST_P(WriteOpsTest, CreateKindsAndErrors) {
  Attr f = MustCreate(kRootIno, "file", 0666);
  EXPECT_EQ(f.mode, S_IFREG | 0644u);  // umask 022
  EXPECT_EQ(f.uid, 1000u);
  EXPECT_EQ(f.gid, 1000u);
  EXPECT_EQ(f.nlink, 1u);
  EXPECT_EQ(f.size, 0u);
  EXPECT_EQ(fs_->Create(kRootIno, "file", 0644, 0, caller_).error(), EEXIST);
  EXPECT_EQ(fs_->Create(kRootIno, std::string(256, 'x'), 0644, 0, caller_).error(), ENAMETOOLONG);
  EXPECT_EQ(fs_->Create(f.ino, "x", 0644, 0, caller_).error(), ENOTDIR);
  EXPECT_EQ(fs_->Create(Ino(12345), "x", 0644, 0, caller_).error(), ENOENT);

  auto root_before = fs_->GetAttr(kRootIno);
  Attr d = MustMkdir(kRootIno, "dir", 0777);
  EXPECT_EQ(d.mode, S_IFDIR | 0755u);
  EXPECT_EQ(d.nlink, 2u);
  EXPECT_EQ(fs_->GetAttr(kRootIno)->nlink, root_before->nlink + 1);
  EXPECT_EQ(fs_->Mkdir(kRootIno, "dir", 0755, 0, caller_).error(), EEXIST);
  auto dots = ListAll(*fs_, d.ino);
  ASSERT_TRUE(dots);
  ASSERT_EQ(dots->size(), 2u);
  EXPECT_EQ((*dots)[1].name, "..");
  EXPECT_EQ((*dots)[1].ino, kRootIno);

  auto fifo = fs_->Mknod(d.ino, "fifo", S_IFIFO | 0600, 0, 0, caller_);
  ASSERT_TRUE(fifo);
  EXPECT_EQ(fifo->mode, S_IFIFO | 0600u);
  auto chr = fs_->Mknod(d.ino, "chr", S_IFCHR | 0644, makedev(1, 3), 0, caller_);
  ASSERT_TRUE(chr);
  EXPECT_EQ(chr->rdev, makedev(1, 3));
  auto big = fs_->Mknod(d.ino, "bigdev", S_IFBLK | 0600, makedev(300, 70000), 0, caller_);
  ASSERT_TRUE(big);
  EXPECT_EQ(big->rdev, makedev(300, 70000));
  auto sock = fs_->Mknod(d.ino, "sock", S_IFSOCK | 0755, 0, 0, caller_);
  ASSERT_TRUE(sock);

  std::string fast(59, 'f'), slow(60, 's'), longest(fs_->block_size() - 1, 'l');
  for (const std::string& t : {fast, slow, longest, std::string("../file")}) {
    auto l = fs_->Symlink(d.ino, "l" + std::to_string(t.size()), t, caller_);
    ASSERT_TRUE(l) << strerror(l.error());
    EXPECT_EQ(l->mode, S_IFLNK | 0777u);
    EXPECT_EQ(l->size, t.size());
    EXPECT_EQ(fs_->ReadLink(l->ino).value_or(""), t);
  }
  EXPECT_EQ(fs_->Symlink(d.ino, "toolong", std::string(fs_->block_size(), 'x'), caller_).error(),
            ENAMETOOLONG);

  // Link / unlink / rmdir.
  auto link = fs_->Link(f.ino, d.ino, "hard");
  ASSERT_TRUE(link);
  EXPECT_EQ(link->nlink, 2u);
  EXPECT_EQ(fs_->Link(d.ino, kRootIno, "dirlink").error(), EPERM);
  EXPECT_EQ(fs_->Link(f.ino, d.ino, "hard").error(), EEXIST);
  EXPECT_EQ(fs_->Unlink(kRootIno, "dir").error(), EISDIR);
  EXPECT_EQ(fs_->Rmdir(kRootIno, "file").error(), ENOTDIR);
  EXPECT_EQ(fs_->Rmdir(kRootIno, "dir").error(), ENOTEMPTY);
  EXPECT_EQ(fs_->Unlink(kRootIno, "nothing").error(), ENOENT);
  ASSERT_TRUE(fs_->Unlink(kRootIno, "file"));
  EXPECT_EQ(fs_->GetAttr(f.ino)->nlink, 1u);
  EXPECT_EQ(fs_->Lookup(kRootIno, "file").error(), ENOENT);
  for (const char* n : {"hard", "fifo", "chr", "bigdev", "sock", "l59", "l60", "l7"}) {
    ASSERT_TRUE(fs_->Unlink(d.ino, n)) << n;
  }
  ASSERT_TRUE(fs_->Unlink(d.ino, "l" + std::to_string(longest.size())));
  ASSERT_TRUE(fs_->Rmdir(kRootIno, "dir"));
  EXPECT_EQ(fs_->GetAttr(kRootIno)->nlink, root_before->nlink);
  // Create and Link each counted a kernel reference: the inode lives until they are forgotten.
  EXPECT_EQ(fs_->GetAttr(f.ino)->nlink, 0u);
  fs_->Forget(f.ino, 2);
  EXPECT_EQ(fs_->GetAttr(f.ino).error(), ENOENT);
  CloseAndCheck();
}

TEST_P(WriteOpsTest, RenameFlavours) {
  Attr a = MustMkdir(kRootIno, "a");
  Attr b = MustMkdir(kRootIno, "b");
  Attr f = MustCreate(a.ino, "f");
  Attr g = MustCreate(b.ino, "g");
  Attr sub = MustMkdir(a.ino, "sub");
  Attr deep = MustMkdir(sub.ino, "deep");

  // A file within a directory, then across, then over an existing file (which is freed).
  ASSERT_TRUE(fs_->Rename(a.ino, "f", a.ino, "f2", 0));
  EXPECT_EQ(fs_->Lookup(a.ino, "f").error(), ENOENT);
  ASSERT_TRUE(fs_->Rename(a.ino, "f2", b.ino, "f3", 0));
  EXPECT_EQ(fs_->Rename(b.ino, "f3", b.ino, "g", RENAME_NOREPLACE).error(), EEXIST);
  ASSERT_TRUE(fs_->Rename(b.ino, "f3", b.ino, "g", 0));
  EXPECT_EQ(fs_->Lookup(b.ino, "g")->ino, f.ino);
  fs_->Forget(g.ino, 1);
  EXPECT_EQ(fs_->GetAttr(g.ino).error(), ENOENT);

  // A directory across parents: link counts and "..".
  ASSERT_TRUE(fs_->Rename(a.ino, "sub", b.ino, "sub", 0));
  EXPECT_EQ(fs_->GetAttr(a.ino)->nlink, 2u);
  EXPECT_EQ(fs_->GetAttr(b.ino)->nlink, 3u);
  EXPECT_EQ(fs_->Lookup(sub.ino, "..")->ino, b.ino);
  EXPECT_EQ(fs_->Rename(b.ino, "sub", deep.ino, "x", 0).error(), EINVAL);
  EXPECT_EQ(fs_->Rename(kRootIno, "b", sub.ino, "x", 0).error(), EINVAL);

  // EXCHANGE of a file and a directory across parents.
  ASSERT_TRUE(fs_->Rename(b.ino, "g", a.ino, "gg", 0));  // a/gg = f
  ASSERT_TRUE(fs_->Rename(a.ino, "gg", b.ino, "sub", RENAME_EXCHANGE));
  EXPECT_EQ(fs_->Lookup(a.ino, "gg")->ino, sub.ino);
  EXPECT_EQ(fs_->Lookup(b.ino, "sub")->ino, f.ino);
  EXPECT_EQ(fs_->Lookup(sub.ino, "..")->ino, a.ino);
  EXPECT_EQ(fs_->GetAttr(a.ino)->nlink, 3u);
  EXPECT_EQ(fs_->GetAttr(b.ino)->nlink, 2u);
  EXPECT_EQ(fs_->Rename(a.ino, "gg", b.ino, "none", RENAME_EXCHANGE).error(), ENOENT);

  // Directory over an empty directory and over a non-empty one; type mismatches.
  Attr empty = MustMkdir(b.ino, "empty");
  EXPECT_EQ(fs_->Rename(a.ino, "gg", b.ino, "sub", 0).error(), ENOTDIR);
  EXPECT_EQ(fs_->Rename(b.ino, "sub", a.ino, "gg", 0).error(), EISDIR);
  MustCreate(a.ino, "full");
  EXPECT_EQ(fs_->Rename(b.ino, "empty", kRootIno, "a", 0).error(), ENOTEMPTY);
  ASSERT_TRUE(fs_->Rename(a.ino, "gg", b.ino, "empty", 0));
  fs_->Forget(empty.ino, 1);
  EXPECT_EQ(fs_->GetAttr(empty.ino).error(), ENOENT);
  EXPECT_EQ(fs_->GetAttr(a.ino)->nlink, 2u);
  EXPECT_EQ(fs_->GetAttr(b.ino)->nlink, 3u);
  EXPECT_EQ(fs_->Lookup(sub.ino, "..")->ino, b.ino);
  EXPECT_EQ(fs_->Rename(a.ino, "x", b.ino, "y", RENAME_WHITEOUT).error(), EINVAL);
  EXPECT_EQ(fs_->Rename(a.ino, "missing", b.ino, "y", 0).error(), ENOENT);
  CloseAndCheck();
}

TEST_P(WriteOpsTest, SetgidAndDefaultAclInheritance) {
  Attr sg = MustMkdir(kRootIno, "sg", 0775);
  Filesystem::SetAttrRequest req;
  req.mode = 02775;
  req.gid = 4242;
  ASSERT_TRUE(fs_->SetAttr(sg.ino, req, Caller{0, 0, 1, {}}));
  Attr f = MustCreate(sg.ino, "f");
  EXPECT_EQ(f.gid, 4242u);
  EXPECT_EQ(f.mode & S_ISGID, 0u);
  Attr d = MustMkdir(sg.ino, "d");
  EXPECT_EQ(d.gid, 4242u);
  EXPECT_EQ(d.mode, S_IFDIR | S_ISGID | 0755u);

  // Default ACL u::rwx,g::r-x,m::rwx,o::---,u:1234:rwx on a directory.
  Attr acl_dir = MustMkdir(kRootIno, "acl");
  std::string dflt = XattrAcl({{0x01, 7, 0xffffffff},
                               {0x02, 7, 1234},
                               {0x04, 5, 0xffffffff},
                               {0x10, 7, 0xffffffff},
                               {0x20, 0, 0xffffffff}});
  ASSERT_TRUE(fs_->SetXattr(acl_dir.ino, "system.posix_acl_default", Bytes(dflt), 0));
  auto af = fs_->Create(acl_dir.ino, "f", 0666, 077, caller_);  // umask ignored
  ASSERT_TRUE(af);
  EXPECT_EQ(af->mode, S_IFREG | 0660u);  // mask takes mode's group bits (rw-)
  auto access = fs_->GetXattr(af->ino, "system.posix_acl_access");
  ASSERT_TRUE(access) << strerror(access.error());
  std::string want = XattrAcl({{0x01, 6, 0xffffffff},
                               {0x02, 7, 1234},
                               {0x04, 5, 0xffffffff},
                               {0x10, 6, 0xffffffff},
                               {0x20, 0, 0xffffffff}});
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(access->data()), access->size()), want);
  EXPECT_EQ(fs_->GetXattr(af->ino, "system.posix_acl_default").error(), ENODATA);
  auto ad = fs_->Mkdir(acl_dir.ino, "d", 0777, 077, caller_);
  ASSERT_TRUE(ad);
  EXPECT_EQ(ad->mode, S_IFDIR | 0770u);
  auto ddef = fs_->GetXattr(ad->ino, "system.posix_acl_default");
  ASSERT_TRUE(ddef);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(ddef->data()), ddef->size()), dflt);
  EXPECT_EQ(fs_->SetXattr(af->ino, "system.posix_acl_default", Bytes(dflt), 0).error(), EACCES);

  // chown of a setuid file by anyone kills suid (and sgid with group exec).
  Attr s = MustCreate(kRootIno, "suid", 0755);
  req = {};
  req.mode = 06755;
  ASSERT_TRUE(fs_->SetAttr(s.ino, req, caller_));
  req = {};
  req.uid = 2000;
  auto after = fs_->SetAttr(s.ino, req, Caller{0, 0, 1, {}});
  ASSERT_TRUE(after);
  EXPECT_EQ(after->mode, S_IFREG | 0755u);
  EXPECT_EQ(after->uid, 2000u);
  CloseAndCheck();
}

TEST_P(WriteOpsTest, Xattrs) {
  Attr f = MustCreate(kRootIno, "f");
  EXPECT_EQ(fs_->SetXattr(f.ino, "user.a", Bytes("1"), XATTR_REPLACE).error(), ENODATA);
  ASSERT_TRUE(fs_->SetXattr(f.ino, "user.a", Bytes("1"), XATTR_CREATE));
  EXPECT_EQ(fs_->SetXattr(f.ino, "user.a", Bytes("2"), XATTR_CREATE).error(), EEXIST);
  ASSERT_TRUE(fs_->SetXattr(f.ino, "user.a", Bytes("22"), XATTR_REPLACE));
  auto v = fs_->GetXattr(f.ino, "user.a");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->size(), 2u);
  EXPECT_EQ(fs_->SetXattr(f.ino, "bogus.a", Bytes("1"), 0).error(), EOPNOTSUPP);
  EXPECT_EQ(fs_->SetXattr(f.ino, "user." + std::string(251, 'n'), Bytes("1"), 0).error(), ERANGE);
  // Spill: the attributes that do not fit the inode end up in the EA block. (libext2fs 1.47.0
  // fills about 1 KiB of the EA block before reporting no space; kernel ext4 uses all of it.)
  for (int i = 0; i < 10; ++i) {
    std::string value(60, static_cast<char>('a' + i));
    auto set = fs_->SetXattr(f.ino, "user.spill" + std::to_string(i), Bytes(value), 0);
    ASSERT_TRUE(set) << i << ": " << strerror(set.error());
  }
  auto names = fs_->ListXattr(f.ino);
  ASSERT_TRUE(names);
  EXPECT_EQ(names->size(), 11u);
  EXPECT_GT(fs_->GetAttr(f.ino)->blocks, 0u);
  // A value larger than a block cannot be stored without ea_inode.
  std::string huge(fs_->block_size(), 'h');
  EXPECT_EQ(fs_->SetXattr(f.ino, "user.huge", Bytes(huge), 0).error(), ENOSPC);
  EXPECT_EQ(fs_->RemoveXattr(f.ino, "user.none").error(), ENODATA);
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(fs_->RemoveXattr(f.ino, "user.spill" + std::to_string(i)));
  // An access ACL sets the mode; one the mode expresses is not stored.
  std::string acl = XattrAcl({{0x01, 7, 0xffffffff},
                              {0x02, 5, 1234},
                              {0x04, 4, 0xffffffff},
                              {0x10, 5, 0xffffffff},
                              {0x20, 1, 0xffffffff}});
  ASSERT_TRUE(fs_->SetXattr(f.ino, "system.posix_acl_access", Bytes(acl), 0));
  EXPECT_EQ(fs_->GetAttr(f.ino)->mode, S_IFREG | 0751u);
  std::string plain =
      XattrAcl({{0x01, 6, 0xffffffff}, {0x04, 4, 0xffffffff}, {0x20, 4, 0xffffffff}});
  ASSERT_TRUE(fs_->SetXattr(f.ino, "system.posix_acl_access", Bytes(plain), 0));
  EXPECT_EQ(fs_->GetAttr(f.ino)->mode, S_IFREG | 0644u);
  EXPECT_EQ(fs_->GetXattr(f.ino, "system.posix_acl_access").error(), ENODATA);
  std::string bad = XattrAcl({{0x04, 4, 0xffffffff}, {0x01, 6, 0xffffffff}});
  EXPECT_EQ(fs_->SetXattr(f.ino, "system.posix_acl_access", Bytes(bad), 0).error(), EINVAL);
  CloseAndCheck();
}

TEST_P(WriteOpsTest, WritesTruncateAndReadBack) {
  Attr f = MustCreate(kRootIno, "f");
  std::string model;
  std::mt19937_64 rng(7);
  auto put = [&](uint64_t off, size_t len) {
    std::string data(len, '\0');
    for (char& c : data) c = static_cast<char>('A' + rng() % 26);
    WriteAt(f.ino, off, data);
    if (model.size() < off + len) model.resize(off + len, '\0');
    model.replace(off, len, data);
  };
  put(0, 10);
  put(5000, 3);
  put(4090, 20);
  for (int i = 0; i < 30; ++i) put(rng() % (1 << 20), 1 + rng() % 20000);
  put(40ull << 20, 100);  // far past EOF: a sparse file
  EXPECT_EQ(ReadFile(f.ino), model);
  // Append.
  auto w = fs_->Write(f.ino, 0, Bytes("tail"), true, false);
  ASSERT_TRUE(w);
  model += "tail";
  EXPECT_EQ(fs_->GetAttr(f.ino)->size, model.size());
  // Shrink into the middle of a block, then grow: the old tail reads as zeros.
  Filesystem::SetAttrRequest req;
  req.size = 5001;
  ASSERT_TRUE(fs_->SetAttr(f.ino, req, caller_));
  model.resize(5001);
  req.size = 9000;
  ASSERT_TRUE(fs_->SetAttr(f.ino, req, caller_));
  model.resize(9000, '\0');
  EXPECT_EQ(ReadFile(f.ino), model);
  // Suid is killed on request.
  req = {};
  req.mode = 06755;
  ASSERT_TRUE(fs_->SetAttr(f.ino, req, Caller{0, 0, 1, {}}));
  ASSERT_TRUE(fs_->Write(f.ino, 1, Bytes("x"), false, true));
  EXPECT_EQ(fs_->GetAttr(f.ino)->mode, S_IFREG | 0755u);
  EXPECT_EQ(fs_->Write(kRootIno, 0, Bytes("x"), false, false).error(), EISDIR);
  CloseAndCheck();
}

TEST_P(WriteOpsTest, FallocateModes) {
  Attr f = MustCreate(kRootIno, "f");
  const uint64_t bs = fs_->block_size();
  std::string data(8 * bs, 'd');
  WriteAt(f.ino, 0, data);
  // Punch works on every format.
  ASSERT_TRUE(fs_->Fallocate(f.ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, bs / 2, 2 * bs));
  std::string model = data;
  std::fill(model.begin() + bs / 2, model.begin() + bs / 2 + 2 * bs, '\0');
  EXPECT_EQ(ReadFile(f.ino), model);
  EXPECT_EQ(fs_->Fallocate(f.ino, FALLOC_FL_PUNCH_HOLE, 0, bs).error(), EOPNOTSUPP);
  EXPECT_EQ(fs_->Fallocate(f.ino, FALLOC_FL_COLLAPSE_RANGE, 0, bs).error(), EOPNOTSUPP);
  EXPECT_EQ(fs_->Fallocate(f.ino, 0, 0, 0).error(), EINVAL);
  if (ext2_family()) {
    EXPECT_EQ(fs_->Fallocate(f.ino, 0, 0, bs).error(), EOPNOTSUPP);
    EXPECT_EQ(fs_->Fallocate(f.ino, FALLOC_FL_ZERO_RANGE, 0, bs).error(), EOPNOTSUPP);
  } else {
    ASSERT_TRUE(fs_->Fallocate(f.ino, FALLOC_FL_KEEP_SIZE, 8 * bs, 4 * bs));
    EXPECT_EQ(fs_->GetAttr(f.ino)->size, 8 * bs);
    ASSERT_TRUE(fs_->Fallocate(f.ino, 0, 8 * bs, 2 * bs + 10));
    EXPECT_EQ(fs_->GetAttr(f.ino)->size, 10 * bs + 10);
    model.resize(10 * bs + 10, '\0');
    ASSERT_TRUE(fs_->Fallocate(f.ino, FALLOC_FL_ZERO_RANGE, 100, bs + 50));
    std::fill(model.begin() + 100, model.begin() + 150 + bs, '\0');
    EXPECT_EQ(ReadFile(f.ino), model);
  }
  CloseAndCheck();
}

TEST_P(WriteOpsTest, OrphansLiveUntilForget) {
  Attr f = MustCreate(kRootIno, "f");
  WriteAt(f.ino, 0, "hello");
  Attr g = MustCreate(kRootIno, "g");
  // Create counted one kernel reference each; unlinking keeps both inodes alive.
  ASSERT_TRUE(fs_->Unlink(kRootIno, "f"));
  ASSERT_TRUE(fs_->Unlink(kRootIno, "g"));
  auto a = fs_->GetAttr(f.ino);
  ASSERT_TRUE(a) << strerror(a.error());
  EXPECT_EQ(a->nlink, 0u);
  WriteAt(f.ino, 5, " world");  // still writable (f is not the last on the orphan list)
  EXPECT_EQ(ReadFile(f.ino), "hello world");
  Attr d = MustMkdir(kRootIno, "d");
  ASSERT_TRUE(fs_->Rmdir(kRootIno, "d"));
  EXPECT_EQ(fs_->GetAttr(d.ino)->nlink, 0u);
  EXPECT_EQ(fs_->Create(d.ino, "x", 0644, 0, caller_).error(), ENOENT);
  fs_->Forget(f.ino, 1);
  EXPECT_EQ(fs_->GetAttr(f.ino).error(), ENOENT);
  EXPECT_TRUE(fs_->GetAttr(g.ino));
  // A tmpfile is an orphan until linked.
  auto t = fs_->Tmpfile(kRootIno, 0600, 0, caller_);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->nlink, 0u);
  WriteAt(t->ino, 0, "tmp");
  auto linked = fs_->Link(t->ino, kRootIno, "named");
  ASSERT_TRUE(linked) << strerror(linked.error());
  EXPECT_EQ(linked->nlink, 1u);
  fs_->Forget(t->ino, 2);
  EXPECT_EQ(ReadFile(fs_->Lookup(kRootIno, "named")->ino), "tmp");
  auto t2 = fs_->Tmpfile(kRootIno, 0600, 0, caller_);
  ASSERT_TRUE(t2);
  fs_->Forget(t2->ino, 1);
  EXPECT_EQ(fs_->GetAttr(t2->ino).error(), ENOENT);
  // g and d are still orphans: Close frees them.
  CloseAndCheck();
}

TEST_P(WriteOpsTest, KernelMountShowsTree) {
  if (!IsRoot()) GTEST_SKIP() << "needs root for a loop mount of kernel ext4";
  Attr d = MustMkdir(kRootIno, "dir");
  Attr f = MustCreate(d.ino, "file");
  WriteAt(f.ino, 0, "content\n");
  ASSERT_TRUE(fs_->Symlink(d.ino, "link", "file", caller_));
  ASSERT_TRUE(fs_->Link(f.ino, kRootIno, "hard"));
  ASSERT_TRUE(fs_->SetXattr(f.ino, "user.k", Bytes("v"), 0));
  ASSERT_TRUE(fs_->Rename(d.ino, "file", d.ino, "renamed", 0));
  CloseAndCheck();
  std::string mnt = dir_.Sub("mnt");
  ::mkdir(mnt.c_str(), 0755);
  auto r = iomapfs::testing::Run({"mount", "-o", "ro,loop", image_, mnt});
  if (r.exit_code != 0) GTEST_SKIP() << "cannot mount kernel ext4 here: " << r.output;
  struct stat st;
  EXPECT_EQ(::stat((mnt + "/dir/renamed").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 2u);
  EXPECT_EQ(st.st_uid, 1000u);
  EXPECT_EQ(st.st_size, 8);
  std::string content;
  EXPECT_TRUE(ReadHostFile(mnt + "/hard", &content));
  EXPECT_EQ(content, "content\n");
  char target[64] = {};
  EXPECT_EQ(::readlink((mnt + "/dir/link").c_str(), target, sizeof(target)), 4);
  char xv[8] = {};
  EXPECT_EQ(::getxattr((mnt + "/hard").c_str(), "user.k", xv, sizeof(xv)), 1);
  EXPECT_EQ(::stat((mnt + "/dir").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 2u);
  for (int i = 0; i < 50 && iomapfs::testing::Run({"umount", mnt}).exit_code != 0; ++i)
    ::usleep(100000);
}

std::string SetName(const ::testing::TestParamInfo<FeatureSet>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(FeatureSets, WriteOpsTest, ::testing::ValuesIn(WriteFeatureSets()),
                         SetName);

// 50,000 entries through Create stay fast (the directory becomes an htree) and go away again.
TEST(WriteOpsStress, FiftyThousandEntries) {
  TempDir dir;
  std::string image = dir.Sub("big.img");
  ASSERT_EQ(iomapfs::testing::MakeImage(image, 256ull << 20, "ext4", {"-N", "60000"}), "");
  std::string why;
  ext2::OpenOptions opts;
  opts.read_write = true;
  auto e2 = ext2::Ext2Fs::Open(image, opts, &why);
  ASSERT_TRUE(e2) << why;
  Filesystem fs(std::move(*e2), Options{});
  Caller caller{0, 0, 1, {}};
  auto d = fs.Mkdir(kRootIno, "big", 0755, 0, caller);
  ASSERT_TRUE(d);
  constexpr int kN = 50000;
  auto start = std::chrono::steady_clock::now();
  char name[64];
  for (int i = 0; i < kN; ++i) {
    std::snprintf(name, sizeof(name), "entry-%05d-with-a-longer-name", i);
    auto a = fs.Create(d->ino, name, 0644, 0, caller);
    ASSERT_TRUE(a) << i << ": " << strerror(a.error());
    fs.Forget(a->ino, 1);
  }
  auto created = std::chrono::steady_clock::now();
  EXPECT_LT(std::chrono::duration<double>(created - start).count(), 120.0);
  auto list = ListAll(fs, d->ino);
  ASSERT_TRUE(list);
  EXPECT_EQ(list->size(), static_cast<size_t>(kN + 2));
  ASSERT_TRUE(fs.Lookup(d->ino, "entry-31337-with-a-longer-name"));
  for (int i = 0; i < kN; ++i) {
    std::snprintf(name, sizeof(name), "entry-%05d-with-a-longer-name", i);
    ASSERT_TRUE(fs.Unlink(d->ino, name)) << i;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - created).count(),
            120.0);
  list = ListAll(fs, d->ino);
  ASSERT_TRUE(list);
  EXPECT_EQ(list->size(), 2u);
  ASSERT_TRUE(fs.Rmdir(kRootIno, "big"));
  ASSERT_TRUE(fs.Close());
  std::string out;
  EXPECT_TRUE(FsckClean(image, &out)) << out;
}

}  // namespace
}  // namespace iomapfs::ext4::testing
