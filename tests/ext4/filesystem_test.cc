// Filesystem operations over images made by mke2fs -d from a generated source tree, under every
// feature set: what the API returns must match the source tree (lstat, readdir, readlink,
// content, lseek, xattrs) wherever mke2fs preserves it.
#include "fsserver/ext4/filesystem.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

#include "tests/ext4/ext4_test_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::ext4::testing {
namespace {

namespace stdfs = std::filesystem;
using iomapfs::testing::IsRoot;
using iomapfs::testing::TempDir;

constexpr int kBigEntries = 5000;

struct Shared {
  TempDir dir;
  SourceTree source;
  std::string source_error;
  std::map<std::string, std::string> images;  // feature set name -> image path
};

Shared& GetShared() {
  static Shared* shared = [] {
    auto* s = new Shared;
    std::string root = s->dir.Sub("src");
    ::mkdir(root.c_str(), 0755);
    s->source_error = BuildSourceTree(root, kBigEntries, &s->source);
    return s;
  }();
  return *shared;
}

// Relative paths of everything in the source tree (directories before their contents).
std::vector<std::string> SourcePaths(const std::string& root) {
  std::vector<std::string> out;
  for (auto it = stdfs::recursive_directory_iterator(root); it != stdfs::end(it); ++it) {
    out.push_back(stdfs::relative(it->path(), root).string());
  }
  return out;
}

uint32_t DtypeOf(mode_t mode) { return IFTODT(mode); }

std::vector<std::string> HostXattrNames(const std::string& path) {
  std::vector<char> buf(65536);
  ssize_t n = ::llistxattr(path.c_str(), buf.data(), buf.size());
  std::vector<std::string> names;
  for (ssize_t i = 0; i < n;) {
    std::string name(buf.data() + i);
    i += name.size() + 1;
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

class FilesystemTest : public ::testing::TestWithParam<FeatureSet> {
 protected:
  void SetUp() override {
    Shared& s = GetShared();
    ASSERT_EQ(s.source_error, "");
    src_ = s.source.root;
    const FeatureSet& fs = GetParam();
    auto it = s.images.find(fs.name);
    if (it == s.images.end()) {
      std::string image = s.dir.Sub(fs.name + ".img");
      ASSERT_EQ(MakeIndexedImage(image, src_, fs), "");
      it = s.images.emplace(fs.name, image).first;
    }
    image_ = it->second;
    std::string why;
    fs_ = OpenFilesystem(image_, &why);
    ASSERT_NE(fs_, nullptr) << why;
  }

  Attr MustResolve(const std::string& rel) {
    auto a = Resolve(*fs_, rel);
    EXPECT_TRUE(a.has_value()) << rel << ": " << strerror(a.error());
    return a.value_or(Attr{});
  }

  std::string src_;
  std::string image_;
  std::unique_ptr<Filesystem> fs_;
};

TEST_P(FilesystemTest, AttributesMatchSource) {
  for (const std::string& rel : SourcePaths(src_)) {
    SCOPED_TRACE(rel);
    struct stat st;
    ASSERT_EQ(::lstat((src_ + "/" + rel).c_str(), &st), 0);
    auto a = Resolve(*fs_, rel);
    ASSERT_TRUE(a) << strerror(a.error());
    EXPECT_EQ(a->mode, st.st_mode);
    EXPECT_EQ(a->nlink, st.st_nlink);
    EXPECT_EQ(a->uid, st.st_uid);
    EXPECT_EQ(a->gid, st.st_gid);
    if (!S_ISDIR(st.st_mode)) {
      EXPECT_EQ(a->size, static_cast<uint64_t>(st.st_size));
    }
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      EXPECT_EQ(a->rdev, st.st_rdev);
    } else {
      EXPECT_EQ(a->rdev, 0u);
    }
    EXPECT_EQ(a->mtime.sec, st.st_mtim.tv_sec);  // mke2fs -d keeps seconds only
    EXPECT_EQ(a->blksize, fs_->block_size());
    if (S_ISREG(st.st_mode) && st.st_size > 0) {
      EXPECT_GT(a->blocks, 0u);
    }
    auto again = fs_->GetAttr(a->ino);
    ASSERT_TRUE(again);
    EXPECT_EQ(again->mtime, a->mtime);
    EXPECT_EQ(again->size, a->size);
  }
}

TEST_P(FilesystemTest, HardLinksShareTheInode) {
  Attr a = MustResolve("files/small");
  EXPECT_EQ(MustResolve("links/hard").ino, a.ino);
  EXPECT_EQ(MustResolve("a/hard2").ino, a.ino);
  EXPECT_EQ(a.nlink, 3u);
}

TEST_P(FilesystemTest, ListingsMatchSource) {
  std::vector<std::string> dirs = {""};
  for (const std::string& rel : SourcePaths(src_)) {
    if (stdfs::is_directory(stdfs::symlink_status(src_ + "/" + rel))) dirs.push_back(rel);
  }
  for (const std::string& rel : dirs) {
    SCOPED_TRACE(rel);
    Attr dir = MustResolve(rel);
    auto entries = ListAll(*fs_, dir.ino, 333);
    ASSERT_TRUE(entries) << strerror(entries.error());
    ASSERT_GE(entries->size(), 2u);
    EXPECT_EQ((*entries)[0].name, ".");
    EXPECT_EQ((*entries)[0].ino, dir.ino);
    EXPECT_EQ((*entries)[1].name, "..");
    std::string parent = rel.find('/') == std::string::npos ? "" : rel.substr(0, rel.rfind('/'));
    EXPECT_EQ((*entries)[1].ino, rel.empty() ? kRootIno : MustResolve(parent).ino);

    std::map<std::string, uint32_t> got, want;
    for (size_t i = 2; i < entries->size(); ++i) {
      const DirEntry& e = (*entries)[i];
      if (rel.empty() && e.name == "lost+found") continue;
      EXPECT_TRUE(got.emplace(e.name, e.type).second) << "duplicate " << e.name;
    }
    for (const auto& de : stdfs::directory_iterator(src_ + "/" + rel)) {
      struct stat st;
      ASSERT_EQ(::lstat(de.path().c_str(), &st), 0);
      want.emplace(de.path().filename().string(), DtypeOf(st.st_mode));
    }
    EXPECT_EQ(got, want);
  }
}

TEST_P(FilesystemTest, ReadDirPlusCountsReferencesAndPaginates) {
  Attr big = MustResolve("big");
  auto fh = fs_->OpenDir(big.ino);
  ASSERT_TRUE(fh);
  uint64_t offset = 0;
  size_t with_attr = 0, total = 0;
  std::vector<Ino> referenced;
  for (;;) {
    size_t got = 0;
    ASSERT_TRUE(fs_->ReadDir(big.ino, *fh, offset, true,
                             [&](const DirEntry& e, const Attr* attr, uint64_t next) {
                               if (got == 37) return false;
                               if (e.name == "." || e.name == "..") {
                                 EXPECT_EQ(attr, nullptr);
                               } else {
                                 EXPECT_NE(attr, nullptr);
                                 if (attr != nullptr) {
                                   EXPECT_EQ(attr->ino, e.ino);
                                   referenced.push_back(e.ino);
                                   ++with_attr;
                                 }
                               }
                               offset = next;
                               ++got;
                               ++total;
                               return true;
                             }));
    if (got == 0) break;
  }
  EXPECT_EQ(total, static_cast<size_t>(kBigEntries) + 2);
  EXPECT_EQ(with_attr, static_cast<size_t>(kBigEntries));
  // Past the end: nothing, no error.
  size_t extra = 0;
  ASSERT_TRUE(fs_->ReadDir(big.ino, *fh, offset + 10, true,
                           [&](const DirEntry&, const Attr*, uint64_t) { return ++extra, true; }));
  EXPECT_EQ(extra, 0u);
  fs_->ReleaseDir(*fh);
  for (Ino ino : referenced) fs_->Forget(ino, 1);
  EXPECT_EQ(fs_->ReadDir(big.ino, *fh, 0, false, [](auto&, auto*, auto) { return true; }).error(),
            EBADF);
}

TEST_P(FilesystemTest, LookupEveryNameInTheBigDirectory) {
  Attr big = MustResolve("big");
  for (int i = 0; i < kBigEntries; ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "entry-%05d-with-a-longer-name", i);
    auto a = fs_->Lookup(big.ino, name);
    ASSERT_TRUE(a) << name << ": " << strerror(a.error());
    EXPECT_EQ(S_ISDIR(a->mode), i % 100 == 0) << name;
  }
  EXPECT_EQ(fs_->Lookup(big.ino, "entry-99999-with-a-longer-name").error(), ENOENT);
  EXPECT_EQ(fs_->Lookup(big.ino, "entry-00001-with-a-longer-nam").error(), ENOENT);
  EXPECT_EQ(fs_->Lookup(big.ino, ".")->ino, big.ino);
  EXPECT_EQ(fs_->Lookup(big.ino, "..")->ino, kRootIno);
}

TEST_P(FilesystemTest, BigDirectoryIsHtreeIndexed) {
  std::string out = Debugfs(image_, "stat big");
  auto pos = out.find("Flags: 0x");
  ASSERT_NE(pos, std::string::npos) << out;
  unsigned long flags = std::stoul(out.substr(pos + 9), nullptr, 16);
  EXPECT_NE(flags & 0x1000, 0u) << "big/ is not htree-indexed:\n" << out;
}

TEST_P(FilesystemTest, NameErrors) {
  SourceTree& source = GetShared().source;
  Attr names = MustResolve("names");
  auto a = fs_->Lookup(names.ino, source.long_name);
  ASSERT_TRUE(a) << strerror(a.error());
  EXPECT_EQ(a->size, 5u);
  EXPECT_TRUE(fs_->Lookup(names.ino, "h\xc3\xa9llo w\xc3\xb6rld"));
  EXPECT_EQ(fs_->Lookup(names.ino, source.long_name + "n").error(), ENAMETOOLONG);
  EXPECT_EQ(fs_->Lookup(names.ino, "missing").error(), ENOENT);
  EXPECT_EQ(fs_->Lookup(names.ino, "").error(), ENOENT);
  Attr file = MustResolve("files/small");
  EXPECT_EQ(fs_->Lookup(file.ino, "x").error(), ENOTDIR);
  EXPECT_EQ(fs_->OpenDir(file.ino).error(), ENOTDIR);
  EXPECT_EQ(fs_->ReadLink(file.ino).error(), EINVAL);
  std::vector<std::byte> buf(10);
  EXPECT_EQ(fs_->Read(names.ino, 0, buf).error(), EISDIR);
  EXPECT_EQ(fs_->GetAttr(Ino(0)).error(), ENOENT);
  EXPECT_EQ(fs_->GetAttr(Ino(1ull << 40)).error(), ENOENT);
}

TEST_P(FilesystemTest, SymlinksMatchSource) {
  for (const char* rel :
       {"links/fast", "links/fast59", "links/slow60", "links/slow", "links/dangling"}) {
    SCOPED_TRACE(rel);
    char target[4096];
    ssize_t n = ::readlink((src_ + "/" + rel).c_str(), target, sizeof(target));
    ASSERT_GT(n, 0);
    Attr a = MustResolve(rel);
    auto got = fs_->ReadLink(a.ino);
    ASSERT_TRUE(got) << strerror(got.error());
    EXPECT_EQ(*got, std::string(target, n));
  }
}

TEST_P(FilesystemTest, ContentsMatchSource) {
  for (const std::string& rel : SourcePaths(src_)) {
    struct stat st;
    ASSERT_EQ(::lstat((src_ + "/" + rel).c_str(), &st), 0);
    if (!S_ISREG(st.st_mode)) continue;
    SCOPED_TRACE(rel);
    std::string want;
    ASSERT_TRUE(ReadHostFile(src_ + "/" + rel, &want));
    Attr a = MustResolve(rel);
    auto fh = fs_->Open(a.ino, O_RDONLY);
    ASSERT_TRUE(fh);
    auto got = ReadAll(*fs_, a.ino, a.size, 128 * 1024);
    ASSERT_TRUE(got) << strerror(got.error());
    EXPECT_TRUE(*got == want) << "content differs (" << got->size() << " vs " << want.size()
                              << " bytes)";
    fs_->Release(*fh);
  }
}

TEST_P(FilesystemTest, RandomReadsMatchSource) {
  std::mt19937_64 rng(7);
  for (const char* rel : {"files/multi", "files/sparse", "files/block", "files/small"}) {
    SCOPED_TRACE(rel);
    std::string want;
    ASSERT_TRUE(ReadHostFile(src_ + "/" + rel, &want));
    Attr a = MustResolve(rel);
    for (int i = 0; i < 200; ++i) {
      uint64_t off = rng() % (want.size() + 50);
      size_t len = 1 + rng() % (i % 10 == 0 ? 300000 : 9000);
      std::vector<std::byte> buf(len, std::byte{0x5a});
      auto n = fs_->Read(a.ino, off, buf);
      ASSERT_TRUE(n) << strerror(n.error());
      size_t expect = off >= want.size() ? 0 : std::min<size_t>(len, want.size() - off);
      ASSERT_EQ(*n, expect) << "off " << off << " len " << len;
      ASSERT_EQ(std::memcmp(buf.data(), want.data() + std::min<uint64_t>(off, want.size()), *n), 0)
          << "off " << off << " len " << len;
    }
  }
}

TEST_P(FilesystemTest, LseekMatchesSource) {
  for (const char* rel : {"files/sparse", "files/multi", "files/small", "files/empty"}) {
    SCOPED_TRACE(rel);
    int fd = ::open((src_ + "/" + rel).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    Attr a = MustResolve(rel);
    const uint64_t size = a.size;
    std::vector<uint64_t> offsets = {0, 1, 4095, 4096, 8191, 8192, 9000, size, size + 10};
    for (uint64_t o :
         {uint64_t{1} << 20, (uint64_t{2} << 20) + 8192, uint64_t{2} << 20, uint64_t{3} << 20}) {
      offsets.insert(offsets.end(), {o - 1, o, o + 1, o + 4095, o + 4096});
    }
    if (size > 0) offsets.push_back(size - 1);
    for (uint64_t off : offsets) {
      for (int whence : {SEEK_DATA, SEEK_HOLE}) {
        off_t host = ::lseek(fd, static_cast<off_t>(off), whence);
        int host_err = host < 0 ? errno : 0;
        auto got = fs_->Lseek(a.ino, off, whence);
        SCOPED_TRACE(std::string(whence == SEEK_DATA ? "SEEK_DATA " : "SEEK_HOLE ") +
                     std::to_string(off));
        if (host_err != 0) {
          EXPECT_EQ(got.error(), host_err);
        } else {
          ASSERT_TRUE(got) << strerror(got.error());
          EXPECT_EQ(*got, static_cast<uint64_t>(host));
        }
      }
    }
    ::close(fd);
    EXPECT_EQ(*fs_->Lseek(a.ino, 5, SEEK_SET), 5u);
    EXPECT_EQ(*fs_->Lseek(a.ino, 0, SEEK_END), size);
  }
}

TEST_P(FilesystemTest, XattrsMatchSource) {
  std::vector<std::string> paths = SourcePaths(src_);
  for (const std::string& rel : paths) {
    if (rel.rfind("big/", 0) == 0) continue;
    SCOPED_TRACE(rel);
    std::string host = src_ + "/" + rel;
    std::vector<std::string> want = HostXattrNames(host);
    Attr a = MustResolve(rel);
    auto names = fs_->ListXattr(a.ino);
    ASSERT_TRUE(names) << strerror(names.error());
    std::sort(names->begin(), names->end());
    EXPECT_EQ(*names, want);
    for (const std::string& name : want) {
      std::vector<char> buf(65536);
      ssize_t n = ::lgetxattr(host.c_str(), name.c_str(), buf.data(), buf.size());
      ASSERT_GE(n, 0);
      auto got = fs_->GetXattr(a.ino, name);
      ASSERT_TRUE(got) << name << ": " << strerror(got.error());
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(got->data()), got->size()),
                std::string(buf.data(), n))
          << name;
    }
  }
  Attr small = MustResolve("files/small");
  EXPECT_EQ(fs_->GetXattr(small.ino, "user.missing").error(), ENODATA);
  EXPECT_EQ(fs_->GetXattr(small.ino, "system.data").error(), EOPNOTSUPP);
  EXPECT_EQ(fs_->GetXattr(small.ino, "bogus").error(), EOPNOTSUPP);
}

TEST_P(FilesystemTest, StatFsIsSane) {
  auto st = fs_->StatFs();
  ASSERT_TRUE(st) << strerror(st.error());
  EXPECT_EQ(st->bsize, fs_->block_size());
  EXPECT_EQ(st->frsize, fs_->block_size());
  EXPECT_EQ(st->namelen, 255u);
  EXPECT_GT(st->blocks, 0u);
  EXPECT_LT(st->blocks, (96ull << 20) / fs_->block_size());
  EXPECT_LE(st->bfree, st->blocks);
  EXPECT_LE(st->bavail, st->bfree);
  EXPECT_GT(st->files, static_cast<uint64_t>(kBigEntries));
  EXPECT_LE(st->ffree, st->files - kBigEntries);
}

TEST_P(FilesystemTest, OpenModes) {
  Attr file = MustResolve("files/small");
  Attr dir = MustResolve("a");
  EXPECT_TRUE(fs_->Open(file.ino, O_RDONLY));
  EXPECT_EQ(fs_->Open(file.ino, O_RDWR).error(), EROFS);
  EXPECT_EQ(fs_->Open(file.ino, O_RDONLY | O_TRUNC).error(), EROFS);
  EXPECT_EQ(fs_->Open(dir.ino, O_WRONLY).error(), EISDIR);
  EXPECT_TRUE(fs_->read_only());
}

TEST_P(FilesystemTest, AccessByModeOwnerGroupAndAcl) {
  Attr f = MustResolve("files/mode640");  // rw-r----- owner:group
  Caller owner{f.uid, f.gid, 1, {}};
  Caller group{f.uid + 1, f.gid, 1, {}};
  Caller group_supp{f.uid + 1, f.gid + 7, 1, {f.gid}};
  Caller other{f.uid + 1, f.gid + 1, 1, {}};
  Caller root{0, 0, 1, {}};
  if (f.uid == 0) {  // not root: the source tree belongs to us
    owner = root;
  }
  EXPECT_TRUE(fs_->Access(f.ino, R_OK, owner));
  EXPECT_EQ(fs_->Access(f.ino, X_OK, owner).error(), EACCES);
  EXPECT_EQ(fs_->Access(f.ino, W_OK, owner).error(), EROFS);
  EXPECT_TRUE(fs_->Access(f.ino, R_OK, group));
  EXPECT_TRUE(fs_->Access(f.ino, R_OK, group_supp));
  EXPECT_EQ(fs_->Access(f.ino, R_OK, other).error(), EACCES);
  EXPECT_TRUE(fs_->Access(f.ino, F_OK, other));
  EXPECT_TRUE(fs_->Access(f.ino, R_OK, root));
  EXPECT_EQ(fs_->Access(f.ino, X_OK, root).error(), EACCES);  // no x bit at all
  Attr dir = MustResolve("a");
  EXPECT_TRUE(fs_->Access(dir.ino, R_OK | X_OK, other));
  EXPECT_TRUE(fs_->Access(dir.ino, R_OK | X_OK, root));

  // ACL u:1234:r-x with mask r-x on a 0640 file.
  Attr acl = MustResolve("files/acl");
  if (fs_->GetXattr(acl.ino, "system.posix_acl_access")) {
    Caller u1234{1234, 5555, 1, {}};
    EXPECT_TRUE(fs_->Access(acl.ino, R_OK | X_OK, u1234));
    EXPECT_EQ(fs_->Access(acl.ino, R_OK, Caller{4321, 5555, 1, {}}).error(), EACCES);
  }
  // fakeroot: every caller is root.
  std::string why;
  auto fake = OpenFilesystem(image_, &why, Options{.fakeroot = true});
  ASSERT_NE(fake, nullptr) << why;
  EXPECT_TRUE(fake->Access(f.ino, R_OK, other));
}

TEST_P(FilesystemTest, ConcurrentOperationsAgree) {
  std::string multi;
  ASSERT_TRUE(ReadHostFile(src_ + "/files/multi", &multi));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        auto a = Resolve(*fs_, "files/multi");
        if (!a) {
          ++failures;
          continue;
        }
        auto data = ReadAll(*fs_, a->ino, a->size, 64 * 1024 + t * 4096);
        if (!data || *data != multi) ++failures;
        auto big = Resolve(*fs_, "big");
        auto list =
            big ? ListAll(*fs_, big->ino, 100 + t) : Result<std::vector<DirEntry>>(Unexpected(EIO));
        if (!list || list->size() != static_cast<size_t>(kBigEntries) + 2) ++failures;
        if (!fs_->Lookup(big->ino, "entry-01234-with-a-longer-name")) ++failures;
        if (!fs_->StatFs() || !fs_->ListXattr(a->ino)) ++failures;
        fs_->Forget(a->ino, 1);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

std::string SetName(const ::testing::TestParamInfo<FeatureSet>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(FeatureSets, FilesystemTest, ::testing::ValuesIn(AllFeatureSets()),
                         SetName);

}  // namespace
}  // namespace iomapfs::ext4::testing
