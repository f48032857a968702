#include "tests/mkfs/mkfs_test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <sstream>

namespace iomapfs::mkfs::testing {
namespace {

using iomapfs::testing::Run;

std::string Errno(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + strerror(errno);
}

std::string WriteAt(const std::string& path, const std::vector<std::pair<off_t, size_t>>& chunks,
                    off_t size, uint32_t seed) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("create", path);
  std::mt19937 rng(seed);
  for (const auto& [off, len] : chunks) {
    std::string data(len, '\0');
    for (char& c : data) c = static_cast<char>(rng());
    if (pwrite(fd, data.data(), len, off) != static_cast<ssize_t>(len)) {
      close(fd);
      return Errno("write", path);
    }
  }
  if (ftruncate(fd, size) != 0) {
    close(fd);
    return Errno("truncate", path);
  }
  close(fd);
  return "";
}

// Kernel POSIX ACL xattr (include/uapi/linux/posix_acl_xattr.h): version 2, then entries of
// {le16 tag, le16 perm, le32 id}, sorted by tag then id.
std::string AclXattr(const std::vector<std::tuple<uint16_t, uint16_t, uint32_t>>& entries) {
  std::string out;
  auto put32 = [&out](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  auto put16 = [&out](uint16_t v) { out.append(reinterpret_cast<const char*>(&v), 2); };
  put32(2);
  for (const auto& [tag, perm, id] : entries) {
    put16(tag);
    put16(perm);
    put32(id);
  }
  return out;
}

constexpr uint16_t kUserObj = 0x01, kUser = 0x02, kGroupObj = 0x04, kGroup = 0x08, kMask = 0x10,
                   kOther = 0x20;
constexpr uint32_t kUndefinedId = 0xffffffffU;

std::string SetTimes(const std::string& path, int64_t sec, long nsec) {
  timespec ts[2] = {{sec, nsec}, {sec + 1, nsec / 2}};  // atime, mtime
  if (utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) {
    return Errno("utimensat", path);
  }
  return "";
}

std::map<std::string, std::string> Xattrs(const std::string& path) {
  std::map<std::string, std::string> out;
  char names[65536];
  ssize_t n = llistxattr(path.c_str(), names, sizeof(names));
  for (ssize_t pos = 0; n > 0 && pos < n;) {
    std::string name(names + pos);
    pos += static_cast<ssize_t>(name.size()) + 1;
    std::string value(65536, '\0');
    ssize_t v = lgetxattr(path.c_str(), name.c_str(), value.data(), value.size());
    if (v >= 0) value.resize(static_cast<size_t>(v));
    out[name] = value;
  }
  return out;
}

std::vector<std::pair<off_t, off_t>> DataMap(int fd, off_t size) {
  std::vector<std::pair<off_t, off_t>> out;
  off_t pos = 0;
  while (pos < size) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) break;
    out.emplace_back(data, hole);
    pos = hole;
  }
  return out;
}

std::string ReadAll(const std::string& path) {
  std::string out;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOATIME);  // leave the source's atime
  if (fd < 0) return "<cannot open>";
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

std::vector<std::string> List(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* de = readdir(d)) {
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) out.emplace_back(de->d_name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string TimeDiff(const char* what, timespec a, const timespec& b, bool small_inodes) {
  if (small_inodes) {
    a.tv_sec = std::clamp<int64_t>(a.tv_sec, INT32_MIN, INT32_MAX);
    a.tv_nsec = 0;
  }
  if (a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec) return "";
  std::ostringstream s;
  s << what << " " << a.tv_sec << "." << a.tv_nsec << " != " << b.tv_sec << "." << b.tv_nsec;
  return s.str();
}

std::string CompareNode(const std::string& e, const std::string& a, bool is_root,
                        bool small_inodes) {
  struct stat se {
  }, sa{};
  if (lstat(e.c_str(), &se) != 0) return Errno("lstat", e);
  if (lstat(a.c_str(), &sa) != 0) return Errno("lstat", a);
  auto diff = [&](const std::string& what) { return a + ": " + what; };
  if ((se.st_mode & S_IFMT) != (sa.st_mode & S_IFMT)) return diff("file type differs");
  if (se.st_mode != sa.st_mode) return diff("mode differs");
  if (se.st_uid != sa.st_uid || se.st_gid != sa.st_gid) return diff("owner differs");
  if (!is_root) {
    if (auto d = TimeDiff("mtime", se.st_mtim, sa.st_mtim, small_inodes); !d.empty())
      return diff(d);
    if (auto d = TimeDiff("atime", se.st_atim, sa.st_atim, small_inodes); !d.empty())
      return diff(d);
    if (auto d = TimeDiff("ctime", se.st_ctim, sa.st_ctim, small_inodes); !d.empty())
      return diff(d);
    if (se.st_nlink != sa.st_nlink) {
      return diff("link count " + std::to_string(se.st_nlink) +
                  " != " + std::to_string(sa.st_nlink));
    }
  }
  if (Xattrs(e) != Xattrs(a)) return diff("xattrs differ");
  switch (se.st_mode & S_IFMT) {
    case S_IFCHR:
    case S_IFBLK:
      if (se.st_rdev != sa.st_rdev) return diff("device number differs");
      break;
    case S_IFLNK: {
      char te[4096], ta[4096];
      ssize_t ne = readlink(e.c_str(), te, sizeof(te));
      ssize_t na = readlink(a.c_str(), ta, sizeof(ta));
      if (ne != na || memcmp(te, ta, static_cast<size_t>(ne)) != 0) return diff("target differs");
      break;
    }
    case S_IFREG: {
      if (se.st_size != sa.st_size) return diff("size differs");
      if (ReadAll(e) != ReadAll(a)) return diff("contents differ");
      int fe = open(e.c_str(), O_RDONLY | O_CLOEXEC | O_NOATIME);
      int fa = open(a.c_str(), O_RDONLY | O_CLOEXEC);
      bool same = DataMap(fe, se.st_size) == DataMap(fa, sa.st_size);
      close(fe);
      close(fa);
      if (!same) return diff("data/hole layout differs");
      break;
    }
    case S_IFDIR: {
      std::vector<std::string> ne = List(e), na = List(a);
      if (is_root && std::find(ne.begin(), ne.end(), "lost+found") == ne.end()) {
        na.erase(std::remove(na.begin(), na.end(), "lost+found"), na.end());
      }
      if (ne != na) {
        return diff("entries differ (" + std::to_string(ne.size()) + " vs " +
                    std::to_string(na.size()) + ")");
      }
      for (const std::string& name : ne) {
        if (auto d = CompareNode(e + "/" + name, a + "/" + name, false, small_inodes); !d.empty())
          return d;
      }
      break;
    }
  }
  return "";
}

}  // namespace

std::vector<MatrixCase> OptionMatrix() {
  const std::vector<std::string> ext4 = {"has_journal",   "extent",    "64bit",     "flex_bg",
                                         "metadata_csum", "huge_file", "dir_nlink", "extra_isize",
                                         "resize_inode",  "dir_index"};
  return {
      {"defaults", {}, ext4, {}, 1024, 256},
      {"b1024", {"-b", "1024"}, ext4, {}, 1024, 256},
      {"b2048", {"-b", "2048"}, ext4, {}, 2048, 256},
      {"b4096", {"-b", "4096"}, ext4, {}, 4096, 256},
      {"no_journal",
       {"-b", "4096", "-O", "^has_journal"},
       {"extent", "metadata_csum"},
       {"has_journal"},
       4096,
       256},
      {"no_64bit", {"-O", "^64bit"}, {"extent", "has_journal"}, {"64bit"}, 1024, 256},
      {"no_csum",
       {"-b", "2048", "-O", "^metadata_csum,uninit_bg"},
       {"uninit_bg", "extent"},
       {"metadata_csum"},
       2048,
       256},
      {"inline_data",
       {"-b", "4096", "-O", "inline_data"},
       {"inline_data", "metadata_csum"},
       {},
       4096,
       256},
      {"inline_data_1k",
       {"-b", "1024", "-O", "inline_data", "-I", "512"},
       {"inline_data"},
       {},
       1024,
       512},
      {"inode128", {"-I", "128"}, {"extent"}, {}, 1024, 128},
      {"inode1024_4k", {"-b", "4096", "-I", "1024"}, {"extent"}, {}, 4096, 1024},
      {"ext3",
       {"-t", "ext3"},
       {"has_journal", "resize_inode"},
       {"extent", "64bit", "flex_bg"},
       1024,
       256},
      {"ext2_4k",
       {"-t", "ext2", "-b", "4096"},
       {"ext_attr", "filetype"},
       {"has_journal", "extent"},
       4096,
       256},
      {"meta_bg",
       {"-b", "4096", "-O", "meta_bg,^resize_inode"},
       {"meta_bg"},
       {"resize_inode"},
       4096,
       256},
      {"misc",
       {"-J", "size=8", "-L", "matrixlabel", "-m", "1", "-N", "6000", "-O", "^huge_file"},
       {"has_journal"},
       {"huge_file"},
       1024,
       256},
  };
}

CommandResult RunMkfs(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {IOMAPFS_MKFS_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  return Run(argv);
}

std::string MakeTree(const std::string& root, const TreeOptions& options) {
  auto p = [&root](const std::string& rel) { return root + "/" + rel; };
  std::string err;
  for (const char* d : {"files", "sparse", "links", "links/other", "special", "xattr", "acl",
                        "times", "modes", "deep", "deep/a", "deep/a/b", "deep/a/b/c"}) {
    if (mkdir(p(d).c_str(), 0755) != 0) return Errno("mkdir", p(d));
  }
  // Regular files: empty, tiny (inline-sized), block-sized edges, several MiB.
  const std::vector<size_t> sizes = {0,    1,    59,   60,   61,    1023,   1024,
                                     1025, 4095, 4096, 4097, 65536, 200000, 3 << 20};
  for (size_t i = 0; i < sizes.size(); ++i) {
    err = WriteAt(p("files/f" + std::to_string(sizes[i])), {{0, sizes[i]}},
                  static_cast<off_t>(sizes[i]), static_cast<uint32_t>(i + 1));
    if (!err.empty()) return err;
  }
  // Sparse files: data islands with holes between, before and after (4 KiB aligned so that the
  // layout is the same at every block size).
  err =
      WriteAt(p("sparse/islands"), {{1 << 20, 8192}, {5 << 20, 4096}, {9 << 20, 100}}, 16 << 20, 7);
  if (!err.empty()) return err;
  err = WriteAt(p("sparse/hole_only"), {}, 50 << 20, 8);
  if (!err.empty()) return err;
  err = WriteAt(p("sparse/tail_data"), {{(64 << 20) - 5000, 5000}}, 64 << 20, 9);
  if (!err.empty()) return err;
  std::vector<std::pair<off_t, size_t>> many;
  for (int i = 0; i < 40; ++i) many.emplace_back(static_cast<off_t>(i) * 65536, 4096);
  err = WriteAt(p("sparse/fragmented"), many, 40 * 65536, 10);  // > 4 extents: an extent block
  if (!err.empty()) return err;
  // Symlinks: fast (in the inode) and slow (a block).
  if (symlink("../files/f1", p("links/fast").c_str()) != 0) return Errno("symlink", "fast");
  if (symlink(std::string(300, 'y').c_str(), p("links/slow").c_str()) != 0) {
    return Errno("symlink", "slow");
  }
  // Hard links, across directories, three names.
  if (link(p("files/f4097").c_str(), p("links/hard1").c_str()) != 0 ||
      link(p("files/f4097").c_str(), p("links/other/hard2").c_str()) != 0) {
    return Errno("link", p("links/hard1"));
  }
  if (mkfifo(p("special/fifo").c_str(), 0640) != 0) return Errno("mkfifo", "fifo");
  {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string path = p("special/socket");
    if (path.size() < sizeof(addr.sun_path)) {
      memcpy(addr.sun_path, path.c_str(), path.size() + 1);
      if (bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        close(s);
        return Errno("bind", path);
      }
    }
    close(s);
  }
  if (options.privileged) {
    if (mknod(p("special/null").c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0 ||
        mknod(p("special/bigdev").c_str(), S_IFBLK | 0600, makedev(300, 70000)) != 0) {
      return Errno("mknod", "special");
    }
    if (chown(p("modes").c_str(), 100000, 200000) != 0) return Errno("chown", "modes");
    err = WriteAt(p("modes/owned"), {{0, 10}}, 10, 11);
    if (!err.empty()) return err;
    if (chown(p("modes/owned").c_str(), 70000, 4242) != 0) return Errno("chown", "owned");
    if (lchown(p("links/fast").c_str(), 1000, 1000) != 0) return Errno("lchown", "fast");
  }
  // Modes.
  err = WriteAt(p("modes/suid"), {{0, 1}}, 1, 12);
  if (!err.empty()) return err;
  chmod(p("modes/suid").c_str(), 04755);
  chmod(p("deep/a").c_str(), 01777);
  chmod(p("deep/a/b").c_str(), 02750);
  // Xattrs: small in-inode, a large one (an EA block), on a directory and a symlink.
  err = WriteAt(p("xattr/file"), {{0, 100}}, 100, 13);
  if (!err.empty()) return err;
  auto setx = [&](const std::string& path, const std::string& name, const std::string& value) {
    if (lsetxattr(path.c_str(), name.c_str(), value.data(), value.size(), 0) != 0) {
      return Errno("setxattr " + name, path);
    }
    return std::string();
  };
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"user.small", "v"},
           {"user.empty", ""},
           {"user.large", std::string(options.large_xattr_bytes, 'L')}}) {
    if (err = setx(p("xattr/file"), name, value); !err.empty()) return err;
  }
  if (err = setx(p("xattr"), "user.dir", "on a directory"); !err.empty()) return err;
  if (options.privileged) {
    if (err = setx(p("xattr/file"), "trusted.t", "trusted value"); !err.empty()) return err;
    if (err = setx(p("links/fast"), "trusted.on_symlink", "x"); !err.empty()) return err;
  }
  // ACLs in the kernel xattr format.
  err = WriteAt(p("acl/file"), {{0, 10}}, 10, 14);
  if (!err.empty()) return err;
  std::string access = AclXattr({{kUserObj, 6, kUndefinedId},
                                 {kUser, 6, 1234},
                                 {kGroupObj, 4, kUndefinedId},
                                 {kGroup, 4, 55},
                                 {kMask, 6, kUndefinedId},
                                 {kOther, 4, kUndefinedId}});
  std::string dflt = AclXattr({{kUserObj, 7, kUndefinedId},
                               {kUser, 5, 1234},
                               {kGroupObj, 5, kUndefinedId},
                               {kMask, 5, kUndefinedId},
                               {kOther, 5, kUndefinedId}});
  if (err = setx(p("acl/file"), "system.posix_acl_access", access); !err.empty()) return err;
  if (err = setx(p("acl"), "system.posix_acl_default", dflt); !err.empty()) return err;
  if (err = setx(p("acl"), "system.posix_acl_access", access); !err.empty()) return err;
  // A large directory.
  if (options.big_directory_entries > 0) {
    if (mkdir(p("big").c_str(), 0755) != 0) return Errno("mkdir", "big");
    for (int i = 0; i < options.big_directory_entries; ++i) {
      std::string name = p("big/entry_with_a_longer_name_" + std::to_string(i));
      int fd = open(name.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) return Errno("create", name);
      if (i % 1000 == 0 && write(fd, "x", 1) != 1) return Errno("write", name);
      close(fd);
    }
  }
  // Timestamps: nanoseconds, before 1970, after 2038 (set last; they are what is compared).
  const std::vector<std::pair<int64_t, long>> stamps = {
      {1234567890, 123456789}, {-86400 * 365, 5}, {4102444800LL, 999999999}, {0, 0}};
  for (size_t i = 0; i < stamps.size(); ++i) {
    std::string path = p("times/t" + std::to_string(i));
    err = WriteAt(path, {{0, 3}}, 3, 20 + static_cast<uint32_t>(i));
    if (!err.empty()) return err;
    if (err = SetTimes(path, stamps[i].first, stamps[i].second); !err.empty()) return err;
  }
  if (err = SetTimes(p("links/fast"), 1600000000, 42); !err.empty()) return err;
  if (err = SetTimes(p("deep/a/b/c"), 1500000000, 7); !err.empty()) return err;
  return "";
}

std::string CompareTrees(const std::string& expected, const std::string& actual,
                         bool small_inodes) {
  return CompareNode(expected, actual, true, small_inodes);
}

std::string Sha256(const std::string& path) {
  CommandResult r = Run({"sha256sum", path});
  if (r.exit_code != 0 || r.output.size() < 64) return "";
  return r.output.substr(0, 64);
}

std::string DumpHeader(const std::string& image) {
  CommandResult r = Run({"dumpe2fs", "-h", image});
  return r.exit_code == 0 ? r.output : "";
}

std::string MountImage(const std::string& image, const std::string& mountpoint) {
  mkdir(mountpoint.c_str(), 0755);
  CommandResult r = Run({"mount", "-t", "ext4", "-o", "loop,ro", image, mountpoint});
  return r.exit_code == 0 ? "" : "mount failed: " + r.output;
}

void Unmount(const std::string& mountpoint) { Run({"umount", mountpoint}); }

}  // namespace iomapfs::mkfs::testing
