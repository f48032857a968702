#include "tests/ext4/ext4_test_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "ext2/ext2_fs.h"
#include "tests/support/test_util.h"

namespace iomapfs::ext4::testing {
namespace {

using iomapfs::testing::IsRoot;
using iomapfs::testing::Run;

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(1 + rng() % 255);  // never a zero block
  return s;
}

bool PwriteAll(int fd, const std::string& data, off_t off) {
  return ::pwrite(fd, data.data(), data.size(), off) == static_cast<ssize_t>(data.size());
}

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

}  // namespace

const std::vector<FeatureSet>& AllFeatureSets() {
  static const std::vector<FeatureSet> sets = {
      {"ext4", "ext4", {}},
      {"ext4_1k", "ext4", {"-b", "1024"}},
      {"ext4_no64_nocsum", "ext4", {"-O", "^64bit,^metadata_csum"}},
      {"ext4_inline", "ext4", {"-O", "inline_data"}},
      {"ext2", "ext2", {}},
      {"ext3", "ext3", {}},
  };
  return sets;
}

std::string BuildSourceTree(const std::string& root, int big_entries, SourceTree* out) {
  std::mt19937_64 rng(42);
  out->root = root;
  out->big_entries = big_entries;
  for (const char* d :
       {"files", "a", "a/b", "a/b/c", "a/b/c/d", "links", "special", "names", "big", "xdir"}) {
    if (::mkdir((root + "/" + d).c_str(), 0755) != 0) return Errno(std::string("mkdir ") + d);
  }
  auto write = [&](const std::string& rel, const std::string& data) {
    return iomapfs::testing::WriteFile(root + "/" + rel, data);
  };
  if (!write("files/empty", "") || !write("files/small", RandomBytes(rng, 100)) ||
      !write("files/block", RandomBytes(rng, 4096 + 17)) ||
      !write("files/multi", RandomBytes(rng, (1 << 20) + 333)) ||
      !write("a/b/c/d/leaf.txt", "leaf\n") || !write("a/b/file", "in b\n") ||
      !write("files/mode640", "secret\n")) {
    return "writing files failed";
  }
  ::chmod((root + "/files/mode640").c_str(), 0640);
  // Sparse: data at [0, 8K), [1M, 1M+4K), [2M+8K, 2M+12K), [3M, 3M+100). The file ends in data:
  // mke2fs 1.47.0 -d with inline_data drops a trailing hole from i_size.
  {
    int fd = ::open((root + "/" + out->sparse_file).c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) return Errno("open sparse");
    bool ok = PwriteAll(fd, RandomBytes(rng, 8192), 0) &&
              PwriteAll(fd, RandomBytes(rng, 4096), 1 << 20) &&
              PwriteAll(fd, RandomBytes(rng, 4096), (2 << 20) + 8192) &&
              PwriteAll(fd, RandomBytes(rng, 100), 3 << 20);
    ::close(fd);
    if (!ok) return Errno("writing sparse");
  }
  // Symlinks: fast (< 60 bytes: in i_block), the 59/60 boundary, slow, dangling.
  const std::vector<std::pair<std::string, std::string>> links = {
      {"links/fast", "../files/small"},
      {"links/fast59", std::string(59, 'f')},
      {"links/slow60", std::string(60, 's')},
      {"links/slow", "../" + std::string(200, 'x') + "/" + std::string(200, 'y') + "/target"},
      {"links/dangling", "nonexistent"},
  };
  for (const auto& [path, target] : links) {
    if (::symlink(target.c_str(), (root + "/" + path).c_str()) != 0) return Errno("symlink");
  }
  if (::link((root + "/files/small").c_str(), (root + "/links/hard").c_str()) != 0 ||
      ::link((root + "/files/small").c_str(), (root + "/a/hard2").c_str()) != 0) {
    return Errno("link");
  }
  if (::mkfifo((root + "/special/fifo").c_str(), 0600) != 0) return Errno("mkfifo");
  if (IsRoot()) {
    if (::mknod((root + "/special/chr").c_str(), S_IFCHR | 0644, makedev(1, 3)) != 0 ||
        ::mknod((root + "/special/blk").c_str(), S_IFBLK | 0600, makedev(8, 1)) != 0 ||
        ::mknod((root + "/special/bigdev").c_str(), S_IFCHR | 0600, makedev(300, 70000)) != 0) {
      return Errno("mknod");
    }
    out->has_devices = true;
    if (::chown((root + "/files/mode640").c_str(), 1000, 1000) != 0) return Errno("chown");
    if (::lchown((root + "/a/b/file").c_str(), 100000, 200000) != 0) return Errno("chown");
  }
  // Xattrs: small ones in the inode, a large one in the EA block, one on a directory.
  auto setx = [&](const std::string& rel, const std::string& name, const std::string& value) {
    return ::lsetxattr((root + "/" + rel).c_str(), name.c_str(), value.data(), value.size(), 0) ==
           0;
  };
  if (!setx("files/small", "user.one", "1") || !setx("files/small", "user.two", "two") ||
      !setx("files/block", "user.big", RandomBytes(rng, 700)) || !setx("xdir", "user.dir", "d")) {
    return Errno("setxattr");
  }
  // An access ACL u:1234:r-x (posix_acl_xattr format, version 2); skipped where the host
  // filesystem has no ACLs.
  {
    write("files/acl", "acl\n");
    ::chmod((root + "/files/acl").c_str(), 0640);
    struct E {
      uint16_t tag, perm;
      uint32_t id;
    };
    std::vector<E> entries = {{0x01, 6, 0xffffffff},
                              {0x02, 5, 1234},
                              {0x04, 4, 0xffffffff},
                              {0x10, 5, 0xffffffff},
                              {0x20, 0, 0xffffffff}};
    std::string value(4, '\0');
    uint32_t version = 2;
    std::memcpy(value.data(), &version, 4);
    for (const E& e : entries) value.append(reinterpret_cast<const char*>(&e), sizeof(e));
    (void)setx("files/acl", "system.posix_acl_access", value);
  }
  out->long_name = std::string(255, 'n');
  if (!write("names/" + out->long_name, "long\n") ||
      !write("names/h\xc3\xa9llo w\xc3\xb6rld", "")) {
    return "writing names failed";
  }
  for (int i = 0; i < big_entries; ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "entry-%05d-with-a-longer-name", i);
    std::string p = root + "/big/" + name;
    if (i % 100 == 0) {
      if (::mkdir(p.c_str(), 0755) != 0) return Errno("mkdir big");
    } else {
      int fd = ::open(p.c_str(), O_CREAT | O_WRONLY, 0644);
      if (fd < 0) return Errno("create big");
      ::close(fd);
    }
  }
  return "";
}

std::string MakeIndexedImage(const std::string& image, const std::string& source,
                             const FeatureSet& fs, uint64_t size_bytes) {
  std::string err =
      iomapfs::testing::MakeImage(image, size_bytes, fs.fs_type, fs.mkfs_args, source);
  if (!err.empty()) return err;
  auto r = Run({"e2fsck", "-fyD", image});
  if (r.exit_code != 0 && r.exit_code != 1) return "e2fsck -fyD failed: " + r.output;
  std::string out;
  if (!iomapfs::testing::FsckClean(image, &out)) return "image not clean: " + out;
  return "";
}

std::unique_ptr<Filesystem> OpenFilesystem(const std::string& image, std::string* why,
                                           const Options& options) {
  auto e2 = ext2::Ext2Fs::Open(image, ext2::OpenOptions{}, why);
  if (!e2) return nullptr;
  return std::make_unique<Filesystem>(std::move(*e2), options);
}

Result<Attr> Resolve(Filesystem& fs, const std::string& relpath) {
  IOMAPFS_ASSIGN_OR_RETURN(Attr attr, fs.GetAttr(kRootIno));
  std::stringstream ss(relpath);
  std::string part;
  while (std::getline(ss, part, '/')) {
    if (part.empty()) continue;
    IOMAPFS_ASSIGN_OR_RETURN(attr, fs.Lookup(attr.ino, part));
  }
  return attr;
}

Result<std::vector<DirEntry>> ListAll(Filesystem& fs, Ino ino, size_t batch) {
  IOMAPFS_ASSIGN_OR_RETURN(FileHandle fh, fs.OpenDir(ino));
  std::vector<DirEntry> out;
  uint64_t offset = 0;
  for (;;) {
    size_t got = 0;
    auto r = fs.ReadDir(ino, fh, offset, false, [&](const DirEntry& e, const Attr*, uint64_t next) {
      if (got == batch) return false;
      out.push_back(e);
      offset = next;
      ++got;
      return true;
    });
    if (!r) {
      fs.ReleaseDir(fh);
      return Unexpected(r.error());
    }
    if (got == 0) break;
  }
  fs.ReleaseDir(fh);
  return out;
}

Result<std::string> ReadAll(Filesystem& fs, Ino ino, uint64_t size, size_t chunk) {
  std::string out;
  std::vector<std::byte> buf(chunk);
  uint64_t off = 0;
  for (;;) {
    IOMAPFS_ASSIGN_OR_RETURN(size_t n, fs.Read(ino, off, buf));
    if (n == 0) break;
    out.append(reinterpret_cast<const char*>(buf.data()), n);
    off += n;
    if (off > size + chunk) break;  // never loop forever on a bug
  }
  return out;
}

bool ReadHostFile(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

std::string Debugfs(const std::string& image, const std::string& request) {
  return Run({"debugfs", "-R", request, image}).output;
}

}  // namespace iomapfs::ext4::testing
