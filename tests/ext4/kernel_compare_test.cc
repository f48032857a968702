// The oracle test: kernel ext4 writes a rich tree (tests/support/tree_gen) into an image; then a
// read-only kernel mount and our Filesystem API, both on that image, must agree on every
// attribute (statx, nanoseconds and btime included), listing, link target, byte, SEEK_DATA/
// SEEK_HOLE answer, xattr (ACLs in kernel format) and the statfs numbers.
//
// REQUIRES root (loop mounts); skipped with a reason otherwise.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <sstream>

#include "fsserver/ext4/filesystem.h"
#include "tests/ext4/ext4_test_util.h"
#include "tests/support/test_util.h"
#include "tests/support/tree_gen.h"

namespace iomapfs::ext4::testing {
namespace {

using iomapfs::testing::IsRoot;
using iomapfs::testing::Run;
using iomapfs::testing::TempDir;

// Unmounts on destruction.
class Mounted {
 public:
  ~Mounted() { Unmount(); }
  std::string Mount(const std::string& image, const std::string& dir, bool ro) {
    auto r = Run({"mount", "-o", std::string(ro ? "ro" : "rw") + ",loop", image, dir});
    if (r.exit_code != 0) return r.output;
    dir_ = dir;
    return "";
  }
  void Unmount() {
    if (dir_.empty()) return;
    for (int i = 0; i < 50 && Run({"umount", dir_}).exit_code != 0; ++i) ::usleep(100000);
    dir_.clear();
  }

 private:
  std::string dir_;
};

class Comparator {
 public:
  Comparator(Filesystem& fs, std::string root) : fs_(fs), root_(std::move(root)) {}

  void Walk(const std::string& rel, Ino ino) {
    ++entries_;
    std::string path = root_ + (rel.empty() ? "" : "/" + rel);
    struct statx stx;
    if (::statx(AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME,
                &stx) != 0) {
      return Diff(rel, "statx failed");
    }
    auto attr = fs_.GetAttr(ino);
    if (!attr) return Diff(rel, std::string("GetAttr: ") + strerror(attr.error()));
    CompareAttr(rel, stx, *attr);
    CompareXattrs(rel, path, ino);
    if (S_ISLNK(stx.stx_mode)) {
      char buf[4096];
      ssize_t n = ::readlink(path.c_str(), buf, sizeof(buf));
      auto got = fs_.ReadLink(ino);
      if (!got || n < 0 || *got != std::string(buf, n)) Diff(rel, "readlink differs");
    } else if (S_ISREG(stx.stx_mode)) {
      CompareSeeks(rel, path, ino, stx.stx_size);  // before reading: page cache changes answers
      CompareContent(rel, path, ino, stx.stx_size);
    } else if (S_ISDIR(stx.stx_mode)) {
      CompareDir(rel, path, ino);
    }
  }

  const std::vector<std::string>& diffs() const { return diffs_; }
  uint64_t entries() const { return entries_; }

 private:
  void Diff(const std::string& rel, const std::string& what) {
    if (diffs_.size() < 100) diffs_.push_back(rel + ": " + what);
  }

  template <class A, class B>
  void Field(const std::string& rel, const char* name, A kernel, B ours) {
    if (static_cast<uint64_t>(kernel) != static_cast<uint64_t>(ours)) {
      std::ostringstream s;
      s << name << " kernel=" << kernel << " ours=" << ours;
      Diff(rel, s.str());
    }
  }

  void Time(const std::string& rel, const char* name, const statx_timestamp& k,
            const Timestamp& o) {
    if (k.tv_sec != o.sec || k.tv_nsec != o.nsec) {
      std::ostringstream s;
      s << name << " kernel=" << k.tv_sec << "." << k.tv_nsec << " ours=" << o.sec << "." << o.nsec;
      Diff(rel, s.str());
    }
  }

  void CompareAttr(const std::string& rel, const struct statx& k, const Attr& o) {
    Field(rel, "ino", k.stx_ino, o.ino.value());
    Field(rel, "mode", k.stx_mode, o.mode);
    Field(rel, "nlink", k.stx_nlink, o.nlink);
    Field(rel, "uid", k.stx_uid, o.uid);
    Field(rel, "gid", k.stx_gid, o.gid);
    Field(rel, "rdev", makedev(k.stx_rdev_major, k.stx_rdev_minor), o.rdev);
    Field(rel, "size", k.stx_size, o.size);
    Field(rel, "blocks", k.stx_blocks, o.blocks);
    Field(rel, "blksize", k.stx_blksize, o.blksize);
    Time(rel, "atime", k.stx_atime, o.atime);
    Time(rel, "mtime", k.stx_mtime, o.mtime);
    Time(rel, "ctime", k.stx_ctime, o.ctime);
    Field(rel, "has_btime", (k.stx_mask & STATX_BTIME) != 0, o.has_btime);
    if ((k.stx_mask & STATX_BTIME) != 0 && o.has_btime) Time(rel, "btime", k.stx_btime, o.btime);
    Field(rel, "attributes", k.stx_attributes & k.stx_attributes_mask & kStatxAttributesMask,
          o.statx_attributes);
  }

  void CompareXattrs(const std::string& rel, const std::string& path, Ino ino) {
    std::vector<char> buf(1 << 16);
    ssize_t n = ::llistxattr(path.c_str(), buf.data(), buf.size());
    std::vector<std::string> want;
    for (ssize_t i = 0; i < n;) {
      want.emplace_back(buf.data() + i);
      i += want.back().size() + 1;
    }
    std::sort(want.begin(), want.end());
    auto got = fs_.ListXattr(ino);
    if (!got) return Diff(rel, std::string("ListXattr: ") + strerror(got.error()));
    std::sort(got->begin(), got->end());
    if (*got != want) return Diff(rel, "xattr names differ");
    for (const std::string& name : want) {
      ssize_t len = ::lgetxattr(path.c_str(), name.c_str(), buf.data(), buf.size());
      auto value = fs_.GetXattr(ino, name);
      if (!value || len < 0 ||
          std::string(reinterpret_cast<const char*>(value->data()), value->size()) !=
              std::string(buf.data(), len)) {
        Diff(rel, "xattr " + name + " differs");
      }
    }
  }

  void CompareSeeks(const std::string& rel, const std::string& path, Ino ino, uint64_t size) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return Diff(rel, "open failed");
    uint64_t pos = 0;
    for (int i = 0; i < 100000; ++i) {
      int whence = i % 2 == 0 ? SEEK_DATA : SEEK_HOLE;
      off_t k = ::lseek(fd, static_cast<off_t>(pos), whence);
      int kerr = k < 0 ? errno : 0;
      auto o = fs_.Lseek(ino, pos, whence);
      std::string what = std::string(whence == SEEK_DATA ? "SEEK_DATA " : "SEEK_HOLE ") +
                         std::to_string(pos) + ": kernel ";
      if (kerr != 0 || !o) {
        if (kerr == 0 || o || o.error() != kerr) {
          Diff(rel, what + (kerr ? strerror(kerr) : std::to_string(k)) + " ours " +
                        (o ? std::to_string(*o) : strerror(o.error())));
        }
        break;
      }
      if (static_cast<uint64_t>(k) != *o) {
        Diff(rel, what + std::to_string(k) + " ours " + std::to_string(*o));
        break;
      }
      pos = *o;
      if (pos >= size) break;
    }
    ::close(fd);
  }

  void CompareContent(const std::string& rel, const std::string& path, Ino ino, uint64_t size) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return Diff(rel, "open failed");
    std::vector<std::byte> ours(1 << 20);
    std::vector<char> theirs(1 << 20);
    // Large sparse files: compare the data regions only (holes were compared by the seeks).
    uint64_t pos = 0;
    while (pos < size) {
      if (size > (64u << 20)) {
        off_t d = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
        if (d < 0) break;
        pos = static_cast<uint64_t>(d);
      }
      ssize_t n = ::pread(fd, theirs.data(), theirs.size(), static_cast<off_t>(pos));
      auto m = fs_.Read(ino, pos, ours);
      if (n < 0 || !m || static_cast<size_t>(n) != *m ||
          std::memcmp(theirs.data(), ours.data(), *m) != 0) {
        Diff(rel, "content differs at " + std::to_string(pos));
        break;
      }
      if (n == 0) break;
      pos += n;
    }
    ::close(fd);
  }

  void CompareDir(const std::string& rel, const std::string& path, Ino ino) {
    std::map<std::string, std::pair<uint64_t, uint32_t>> want, got;
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return Diff(rel, "opendir failed");
    while (dirent* de = ::readdir(d)) {
      want[de->d_name] = {de->d_ino, de->d_type};
    }
    ::closedir(d);
    auto entries = ListAll(fs_, ino, 500);
    if (!entries) return Diff(rel, std::string("ReadDir: ") + strerror(entries.error()));
    for (const DirEntry& e : *entries) got[e.name] = {e.ino.value(), e.type};
    // The kernel's ".." of the root is the root; so is ours. Compare everything.
    if (got != want) {
      std::ostringstream s;
      s << "listing differs:";
      for (const auto& [name, v] : want) {
        auto it = got.find(name);
        if (it == got.end()) {
          s << " kernel-only " << name;
        } else if (it->second != v) {
          s << " " << name << " kernel(ino " << v.first << " type " << v.second << ") ours(ino "
            << it->second.first << " type " << it->second.second << ")";
        }
      }
      for (const auto& [name, v] : got) {
        if (!want.count(name)) s << " ours-only " << name;
      }
      return Diff(rel, s.str());
    }
    for (const DirEntry& e : *entries) {
      if (e.name == "." || e.name == "..") continue;
      auto child = fs_.Lookup(ino, e.name);
      if (!child) {
        Diff(rel + "/" + e.name, std::string("Lookup: ") + strerror(child.error()));
        continue;
      }
      if (child->ino != e.ino) Diff(rel + "/" + e.name, "Lookup ino differs from readdir");
      Walk(rel.empty() ? e.name : rel + "/" + e.name, child->ino);
      fs_.Forget(child->ino, 1);
    }
  }

  Filesystem& fs_;
  std::string root_;
  std::vector<std::string> diffs_;
  uint64_t entries_ = 0;
};

class KernelCompareTest : public ::testing::TestWithParam<FeatureSet> {};

TEST_P(KernelCompareTest, ApiMatchesKernelExt4) {
  if (!IsRoot()) GTEST_SKIP() << "needs root for loop mounts of kernel ext4";
  TempDir tmp;
  std::string image = tmp.Sub("img"), mnt = tmp.Sub("mnt");
  ::mkdir(mnt.c_str(), 0755);
  const FeatureSet& fs = GetParam();
  ASSERT_EQ(iomapfs::testing::MakeImage(image, 512ull << 20, fs.fs_type, fs.mkfs_args), "");
  {
    Mounted rw;
    std::string err = rw.Mount(image, mnt, false);
    if (!err.empty()) GTEST_SKIP() << "cannot mount kernel ext4 here: " << err;
    iomapfs::testing::TreeGenOptions opts;
    opts.big_directory_entries = 6000;
    opts.deep_levels = 10;
    ASSERT_EQ(iomapfs::testing::GenerateTree(mnt, opts), "");
  }
  std::string fsck;
  ASSERT_TRUE(iomapfs::testing::FsckClean(image, &fsck)) << fsck;

  Mounted ro;
  ASSERT_EQ(ro.Mount(image, mnt, true), "");
  std::string why;
  auto ours = OpenFilesystem(image, &why);
  ASSERT_NE(ours, nullptr) << why;

  Comparator cmp(*ours, mnt);
  cmp.Walk("", kRootIno);
  EXPECT_GT(cmp.entries(), 6000u);
  std::string all;
  for (const std::string& d : cmp.diffs()) all += d + "\n";
  EXPECT_TRUE(cmp.diffs().empty()) << cmp.diffs().size() << " differences:\n" << all;

  struct statvfs k;
  ASSERT_EQ(::statvfs(mnt.c_str(), &k), 0);
  auto o = ours->StatFs();
  ASSERT_TRUE(o);
  EXPECT_EQ(k.f_bsize, o->bsize);
  EXPECT_EQ(k.f_frsize, o->frsize);
  EXPECT_EQ(k.f_blocks, o->blocks);
  EXPECT_EQ(k.f_bfree, o->bfree);
  EXPECT_EQ(k.f_bavail, o->bavail);
  EXPECT_EQ(k.f_files, o->files);
  EXPECT_EQ(k.f_ffree, o->ffree);
  EXPECT_EQ(k.f_namemax, o->namelen);
}

std::string SetName(const ::testing::TestParamInfo<FeatureSet>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(FeatureSets, KernelCompareTest, ::testing::ValuesIn(AllFeatureSets()),
                         SetName);

}  // namespace
}  // namespace iomapfs::ext4::testing
