#include "tests/support/tree_gen.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace iomapfs::testing {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;

// splitmix64: fast, seedable, the same sequence everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
  void Fill(char* buf, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t v = Next();
      memcpy(buf + i, &v, 8);
    }
    if (i < n) {
      uint64_t v = Next();
      memcpy(buf + i, &v, n - i);
    }
  }
  std::string Bytes(size_t n) {
    std::string s(n, '\0');
    Fill(s.data(), n);
    return s;
  }

 private:
  uint64_t state_;
};

// Owns an fd; closes it on destruction.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }
  void Reset(int fd) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

// POSIX ACL xattr format (include/uapi/linux/posix_acl_xattr.h).
constexpr uint16_t kAclUserObj = 0x01;
constexpr uint16_t kAclUser = 0x02;
constexpr uint16_t kAclGroupObj = 0x04;
constexpr uint16_t kAclGroup = 0x08;
constexpr uint16_t kAclMask = 0x10;
constexpr uint16_t kAclOther = 0x20;
constexpr uint32_t kAclUndefinedId = 0xffffffffu;

struct AclEntry {
  uint16_t tag;
  uint16_t perm;
  uint32_t id;
};

// Entries must be sorted by tag, then id, as the kernel requires.
std::string AclXattr(const std::vector<AclEntry>& entries) {
  std::string out;
  auto put32 = [&out](uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
  };
  auto put16 = [&out](uint16_t v) {
    out.push_back(static_cast<char>(v));
    out.push_back(static_cast<char>(v >> 8));
  };
  put32(2);  // POSIX_ACL_XATTR_VERSION
  for (const AclEntry& e : entries) {
    put16(e.tag);
    put16(e.perm);
    put32(e.id);
  }
  return out;
}

class Generator {
 public:
  Generator(const std::string& root, const TreeGenOptions& options)
      : root_(root), options_(options), rng_(options.seed) {}

  std::string Run() {
    if (geteuid() != 0) return "GenerateTree needs root";
    struct statvfs sv;
    if (statvfs(root_.c_str(), &sv) != 0) return "statvfs " + root_ + ": " + strerror(errno);
    block_size_ = sv.f_bsize;
    bool ok = MakeFiles() && MakeSparse() && MakeFalloc() && MakeLinks() && MakeSymlinks() &&
              MakeXattrs() && MakeAcls() && MakeSpecial() && MakeNames() && MakeBigDir() &&
              MakeDeep() && MakeOwnersAndModes() && MakeTimes();
    if (ok) sync();
    return ok ? "" : error_;
  }

 private:
  std::string P(const std::string& rel) const { return root_ + "/" + rel; }

  bool Fail(const std::string& what) {
    error_ = what + ": " + strerror(errno);
    return false;
  }
  bool FailMsg(const std::string& what) {
    error_ = what;
    return false;
  }

  bool Mkdir(const std::string& rel, mode_t mode = 0755) {
    if (mkdir(P(rel).c_str(), mode) != 0) return Fail("mkdir " + rel);
    return true;
  }

  bool OpenNew(const std::string& rel, Fd* fd) {
    int f = open(P(rel).c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f < 0) return Fail("create " + rel);
    fd->Reset(f);
    return true;
  }

  // Writes `len` random bytes at `offset`.
  bool PwriteRandom(int fd, uint64_t offset, uint64_t len, const std::string& rel) {
    std::vector<char> buf(std::min<uint64_t>(len, kMiB));
    while (len > 0) {
      size_t n = std::min<uint64_t>(len, buf.size());
      rng_.Fill(buf.data(), n);
      ssize_t w = pwrite(fd, buf.data(), n, static_cast<off_t>(offset));
      if (w != static_cast<ssize_t>(n)) return Fail("pwrite " + rel);
      offset += n;
      len -= n;
    }
    return true;
  }

  bool WriteRandomFile(const std::string& rel, uint64_t size) {
    Fd fd;
    return OpenNew(rel, &fd) && PwriteRandom(fd.get(), 0, size, rel);
  }

  // fallocate that tolerates filesystems (non-extent files) that do not support it.
  bool Fallocate(int fd, int mode, uint64_t offset, uint64_t len, const std::string& rel) {
    if (fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(len)) == 0) {
      return true;
    }
    if (errno == EOPNOTSUPP) return true;
    return Fail("fallocate " + rel);
  }

  bool SetXattr(const std::string& rel, const std::string& name, const std::string& value) {
    if (lsetxattr(P(rel).c_str(), name.c_str(), value.data(), value.size(), 0) != 0) {
      return Fail("setxattr " + rel + " " + name + " (" + std::to_string(value.size()) + " bytes)");
    }
    return true;
  }

  bool MakeFiles() {
    if (!Mkdir("files")) return false;
    std::vector<uint64_t> sizes = {0,        1,
                                   2,        59,
                                   60,       61,
                                   100,      255,
                                   256,      511,
                                   512,      1023,
                                   1024,     1025,
                                   4095,     4096,
                                   4097,     8191,
                                   8192,     12288,
                                   49151,    49152,
                                   49153,    65535,
                                   65536,    65537,
                                   131075,   kMiB,
                                   kMiB + 1, 3 * kMiB + 12345,
                                   8 * kMiB, 12 * kMiB + 4097};
    for (int i = 0; i < 16; ++i) sizes.push_back(rng_.Below(2 * kMiB));
    for (int i = 0; i < 8; ++i) sizes.push_back(rng_.Below(200));
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::string rel = "files/f" + std::to_string(i) + "_" + std::to_string(sizes[i]);
      if (!WriteRandomFile(rel, sizes[i])) return false;
      plain_files_.push_back(rel);
    }
    // A file written in many small appends (more, smaller allocations).
    Fd fd;
    if (!OpenNew("files/appended", &fd)) return false;
    uint64_t off = 0;
    for (int i = 0; i < 200; ++i) {
      uint64_t n = 1 + rng_.Below(3000);
      if (!PwriteRandom(fd.get(), off, n, "files/appended")) return false;
      off += n;
    }
    return true;
  }

  bool MakeSparse() {
    if (!Mkdir("sparse")) return false;
    {
      Fd fd;
      if (!OpenNew("sparse/hole_at_start", &fd) ||
          !PwriteRandom(fd.get(), kMiB + 100, 5000, "sparse/hole_at_start")) {
        return false;
      }
    }
    {
      Fd fd;
      if (!OpenNew("sparse/hole_at_end", &fd) ||
          !PwriteRandom(fd.get(), 0, 5000, "sparse/hole_at_end")) {
        return false;
      }
      if (ftruncate(fd.get(), 3 * kMiB + 17) != 0) return Fail("ftruncate sparse/hole_at_end");
    }
    {
      Fd fd;
      if (!OpenNew("sparse/all_hole", &fd)) return false;
      if (ftruncate(fd.get(), 10 * kMiB) != 0) return Fail("ftruncate sparse/all_hole");
    }
    for (int i = 0; i < 8; ++i) {
      std::string rel = "sparse/scatter" + std::to_string(i);
      Fd fd;
      if (!OpenNew(rel, &fd)) return false;
      int writes = 1 + static_cast<int>(rng_.Below(20));
      for (int w = 0; w < writes; ++w) {
        uint64_t off = rng_.Below(64 * kMiB);
        if (w % 2 == 0) off &= ~(uint64_t{block_size_} - 1);  // some block-aligned
        if (!PwriteRandom(fd.get(), off, 1 + rng_.Below(20000), rel)) return false;
      }
    }
    if (options_.over_4gib_file) {
      Fd fd;
      const std::string rel = "sparse/over_4g";
      if (!OpenNew(rel, &fd) || !PwriteRandom(fd.get(), 0, 4096, rel) ||
          !PwriteRandom(fd.get(), 2 * kGiB - 100, 300, rel) ||
          !PwriteRandom(fd.get(), 4 * kGiB - 2048, 4096, rel) ||  // across 2^32
          !PwriteRandom(fd.get(), 4 * kGiB + 3 * kMiB, 70000, rel) ||
          !PwriteRandom(fd.get(), 5 * kGiB + 12345, 10000, rel)) {
        return false;
      }
      if (ftruncate(fd.get(), 6 * kGiB + 777) != 0) return Fail("ftruncate " + rel);
      Fd fd2;
      if (!OpenNew("sparse/at_4g", &fd2) || !PwriteRandom(fd2.get(), 4 * kGiB, 1, "at_4g")) {
        return false;
      }
    }
    // Fragmented: one block written every other block, thousands of extents (depth >= 1 extent
    // tree; with 1 KiB blocks depth 2).
    Fd fd;
    const std::string rel = "sparse/fragmented";
    if (!OpenNew(rel, &fd)) return false;
    for (uint64_t i = 0; i < 1500; ++i) {
      if (!PwriteRandom(fd.get(), 2 * i * block_size_, block_size_, rel)) return false;
    }
    return true;
  }

  bool MakeFalloc() {
    if (!Mkdir("falloc")) return false;
    {
      const std::string rel = "falloc/unwritten";
      Fd fd;
      if (!OpenNew(rel, &fd) || !Fallocate(fd.get(), 0, 0, kMiB, rel) ||
          !PwriteRandom(fd.get(), 300000, 10000, rel)) {
        return false;
      }
    }
    {
      const std::string rel = "falloc/keep_size";
      Fd fd;
      if (!OpenNew(rel, &fd) || !PwriteRandom(fd.get(), 0, 5000, rel) ||
          !Fallocate(fd.get(), FALLOC_FL_KEEP_SIZE, 0, 8 * kMiB, rel)) {
        return false;
      }
    }
    {
      const std::string rel = "falloc/keep_size_empty";
      Fd fd;
      if (!OpenNew(rel, &fd) || !Fallocate(fd.get(), FALLOC_FL_KEEP_SIZE, 0, kMiB, rel)) {
        return false;
      }
    }
    {
      const std::string rel = "falloc/keep_size_gap";  // prealloc past EOF, not adjacent to it
      Fd fd;
      if (!OpenNew(rel, &fd) || !PwriteRandom(fd.get(), 0, 3000, rel) ||
          !Fallocate(fd.get(), FALLOC_FL_KEEP_SIZE, 2 * kMiB, kMiB, rel)) {
        return false;
      }
    }
    {
      const std::string rel = "falloc/alternating";  // written/unwritten extents in turn
      Fd fd;
      if (!OpenNew(rel, &fd) || !Fallocate(fd.get(), 0, 0, 4 * kMiB, rel)) return false;
      for (uint64_t off = 0; off < 4 * kMiB; off += 2 * block_size_) {
        if (!PwriteRandom(fd.get(), off, block_size_, rel)) return false;
      }
    }
    {
      const std::string rel = "falloc/punched";
      Fd fd;
      if (!OpenNew(rel, &fd) || !PwriteRandom(fd.get(), 0, 2 * kMiB, rel) ||
          !Fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100000, 600000, rel)) {
        return false;
      }
    }
    {
      const std::string rel = "falloc/zero_range";
      Fd fd;
      if (!OpenNew(rel, &fd) || !PwriteRandom(fd.get(), 0, 2 * kMiB, rel) ||
          !Fallocate(fd.get(), FALLOC_FL_ZERO_RANGE, 50000, 1450000, rel)) {
        return false;
      }
    }
    {
      const std::string rel = "falloc/extended";  // fallocate extending size past data
      Fd fd;
      if (!OpenNew(rel, &fd) || !PwriteRandom(fd.get(), 0, 10000, rel) ||
          !Fallocate(fd.get(), 0, 5 * kMiB, 3 * kMiB + 5, rel)) {
        return false;
      }
    }
    return true;
  }

  bool MakeLinks() {
    if (!Mkdir("links") || !Mkdir("links/a") || !Mkdir("links/b") ||
        !WriteRandomFile("links/target", 10000)) {
      return false;
    }
    for (const char* name : {"links/a/l1", "links/b/l2", "links/l3"}) {
      if (link(P("links/target").c_str(), P(name).c_str()) != 0)
        return Fail(std::string("link ") + name);
    }
    if (symlink("target", P("links/sym").c_str()) != 0) return Fail("symlink links/sym");
    if (link(P("links/sym").c_str(), P("links/a/sym_link").c_str()) != 0) {
      return Fail("link to symlink");
    }
    if (mkfifo(P("links/fifo").c_str(), 0600) != 0) return Fail("mkfifo links/fifo");
    if (link(P("links/fifo").c_str(), P("links/b/fifo_link").c_str()) != 0) {
      return Fail("link to fifo");
    }
    return true;
  }

  bool MakeSymlinks() {
    if (!Mkdir("symlinks")) return false;
    const std::vector<size_t> lengths = {1, 30, 59, 60, 61, 100, 255, 500, 1000, 2000, 4000};
    for (size_t len : lengths) {
      std::string target;
      while (target.size() < len) {
        target.push_back(static_cast<char>('a' + rng_.Below(26)));
        if (target.size() % 9 == 8 && target.size() < len - 1) target.push_back('/');
      }
      target.resize(len);
      std::string rel = "symlinks/len" + std::to_string(len);
      if (symlink(target.c_str(), P(rel).c_str()) != 0) {
        if (errno == ENAMETOOLONG && len >= block_size_) continue;  // target must fit a block
        return Fail("symlink " + rel);
      }
    }
    const std::vector<std::pair<const char*, const char*>> named = {
        {"symlinks/dangling", "does/not/exist"},
        {"symlinks/to_dir", "../files"},
        {"symlinks/absolute", "/etc/passwd"},
        {"symlinks/dot", "."},
        {"symlinks/utf8", "\xc3\xa9t\xc3\xa9/\xe2\x82\xac"}};
    for (const auto& [rel, target] : named) {
      if (symlink(target, P(rel).c_str()) != 0) return Fail(std::string("symlink ") + rel);
    }
    return true;
  }

  bool MakeXattrs() {
    if (!Mkdir("xattr")) return false;
    // The in-inode area of a 256-byte inode holds ~100 bytes; an EA block holds block_size
    // minus a 32-byte header, each entry taking 16 bytes plus its padded name and value.
    const size_t big = (block_size_ - 256) / 3;
    if (!WriteRandomFile("xattr/small", 100) || !SetXattr("xattr/small", "user.a", "1") ||
        !SetXattr("xattr/small", "user.small", "hello") ||
        !SetXattr("xattr/small", "trusted.t", "tt")) {
      return false;
    }
    if (!WriteRandomFile("xattr/empty_value", 10) ||
        !SetXattr("xattr/empty_value", "user.empty", "")) {
      return false;
    }
    if (!WriteRandomFile("xattr/large", 3000)) return false;
    for (int i = 0; i < 3; ++i) {
      if (!SetXattr("xattr/large", "user.big" + std::to_string(i), rng_.Bytes(big))) return false;
    }
    if (!WriteRandomFile("xattr/one_large", 50) ||
        !SetXattr("xattr/one_large", "trusted.single", rng_.Bytes(block_size_ - 200))) {
      return false;
    }
    // Identical large sets: kernel ext4 shares one EA block (refcount 2).
    const std::string shared_a = rng_.Bytes(big), shared_b = rng_.Bytes(big / 2);
    for (const char* rel : {"xattr/shared1", "xattr/shared2", "xattr/shared3"}) {
      if (!WriteRandomFile(rel, 500) || !SetXattr(rel, "user.shared_a", shared_a) ||
          !SetXattr(rel, "trusted.shared_b", shared_b)) {
        return false;
      }
    }
    // Mixed: small ones stay in the inode, a large one goes to the block.
    if (!WriteRandomFile("xattr/mixed", 20) || !SetXattr("xattr/mixed", "user.m1", "v1") ||
        !SetXattr("xattr/mixed", "user.m_big", rng_.Bytes(big)) ||
        !SetXattr("xattr/mixed", "trusted.m2", rng_.Bytes(12))) {
      return false;
    }
    // Many small ones, spilling from the inode into the block.
    if (!WriteRandomFile("xattr/many", 1)) return false;
    const int many = block_size_ >= 4096 ? 40 : 12;
    for (int i = 0; i < many; ++i) {
      char name[32];
      snprintf(name, sizeof(name), "user.k%02d", i);
      if (!SetXattr("xattr/many", name, rng_.Bytes(rng_.Below(24)))) return false;
    }
    if (!WriteRandomFile("xattr/long_name", 1) ||
        !SetXattr("xattr/long_name", "user." + std::string(200, 'x'), "long name")) {
      return false;
    }
    if (!Mkdir("xattr/dir") || !SetXattr("xattr/dir", "user.on_dir", "d") ||
        !SetXattr("xattr/dir", "trusted.dir_big", rng_.Bytes(big))) {
      return false;
    }
    // user.* is not allowed on symlinks and special files; trusted.* is.
    if (symlink("somewhere", P("xattr/symlink").c_str()) != 0) return Fail("symlink xattr/sym");
    if (!SetXattr("xattr/symlink", "trusted.on_symlink", "s")) return false;
    if (mkfifo(P("xattr/fifo").c_str(), 0644) != 0) return Fail("mkfifo xattr/fifo");
    if (!SetXattr("xattr/fifo", "trusted.on_fifo", rng_.Bytes(big))) return false;
    if (mknod(P("xattr/chr").c_str(), S_IFCHR | 0600, makedev(1, 7)) != 0) {
      return Fail("mknod xattr/chr");
    }
    return SetXattr("xattr/chr", "trusted.on_dev", "c");
  }

  bool MakeAcls() {
    if (!Mkdir("acl")) return false;
    const std::string access = AclXattr({{kAclUserObj, 6, kAclUndefinedId},
                                         {kAclUser, 7, 1000},
                                         {kAclUser, 4, 2000},
                                         {kAclGroupObj, 4, kAclUndefinedId},
                                         {kAclGroup, 6, 100},
                                         {kAclMask, 7, kAclUndefinedId},
                                         {kAclOther, 4, kAclUndefinedId}});
    const std::string dflt = AclXattr({{kAclUserObj, 7, kAclUndefinedId},
                                       {kAclUser, 5, 3000},
                                       {kAclGroupObj, 5, kAclUndefinedId},
                                       {kAclMask, 5, kAclUndefinedId},
                                       {kAclOther, 0, kAclUndefinedId}});
    if (!WriteRandomFile("acl/file", 100) ||
        !SetXattr("acl/file", "system.posix_acl_access", access)) {
      return false;
    }
    if (!Mkdir("acl/dir") || !SetXattr("acl/dir", "system.posix_acl_access", access) ||
        !SetXattr("acl/dir", "system.posix_acl_default", dflt)) {
      return false;
    }
    // Created after the default ACL: the kernel gives them inherited ACLs.
    if (!WriteRandomFile("acl/dir/inherited_file", 10) || !Mkdir("acl/dir/inherited_dir")) {
      return false;
    }
    // An ACL plus user xattrs on one inode.
    if (!WriteRandomFile("acl/with_xattrs", 10) ||
        !SetXattr("acl/with_xattrs", "system.posix_acl_access", access) ||
        !SetXattr("acl/with_xattrs", "user.x", rng_.Bytes(block_size_ / 4))) {
      return false;
    }
    return true;
  }

  bool MakeSpecial() {
    if (!Mkdir("special")) return false;
    struct Node {
      const char* rel;
      mode_t mode;
      dev_t dev;
    };
    const Node nodes[] = {
        {"special/chr_null", S_IFCHR | 0666, makedev(1, 3)},
        {"special/chr_zero_zero", S_IFCHR | 0600, makedev(0, 0)},
        {"special/chr_big", S_IFCHR | 0640, makedev(4095, 1048575)},  // new encoding
        {"special/chr_mid", S_IFCHR | 0640, makedev(300, 70000)},
        {"special/blk_sda1", S_IFBLK | 0660, makedev(8, 1)},
        {"special/blk_nvme", S_IFBLK | 0660, makedev(259, 300000)},
        {"special/fifo", S_IFIFO | 0644, 0},
        {"special/socket", S_IFSOCK | 0755, 0},
    };
    for (const Node& n : nodes) {
      if (mknod(P(n.rel).c_str(), n.mode, n.dev) != 0) return Fail(std::string("mknod ") + n.rel);
    }
    return true;
  }

  bool MakeNames() {
    if (!Mkdir("names")) return false;
    std::vector<std::string> names = {
        std::string(255, 'n'),
        std::string(254, 'm'),
        std::string(127 * 2, '\0'),  // filled below: 127 two-byte UTF-8 chars + 'x'
        "with space",
        "with\nnewline",
        "-leading-dash",
        ".hidden",
        "...",
        "\x01\x02\x7f ctl",
        "\xff\xfe not utf8",
        "UPPER lower",
        "upper LOWER",
    };
    for (size_t i = 0; i < 127; ++i) {
      names[2][2 * i] = '\xc3';
      names[2][2 * i + 1] = '\xa9';
    }
    names[2].push_back('x');
    for (int len = 1; len <= 255; len += 7) {
      std::string name;
      for (int i = 0; i < len; ++i) name.push_back(static_cast<char>('a' + rng_.Below(26)));
      name[0] = 'L';
      names.push_back(name);
    }
    for (const std::string& name : names) {
      if (!WriteRandomFile("names/" + name, name.size() % 70)) return false;
    }
    const std::string long_dir = "names/" + std::string(255, 'D');
    return Mkdir(long_dir) && WriteRandomFile(long_dir + "/" + std::string(255, 'F'), 1);
  }

  bool MakeBigDir() {
    if (options_.big_directory_entries <= 0) return true;
    if (!Mkdir("bigdir")) return false;
    Fd dir(open(P("bigdir").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir.ok()) return Fail("open bigdir");
    std::vector<std::string> removed;
    // Every 7th file made is deleted again; big_directory_entries remain.
    for (int i = 0, kept = 0; kept < options_.big_directory_entries; ++i) {
      std::string name = "e" + std::to_string(i) + "_";
      size_t extra = rng_.Below(40);
      for (size_t k = 0; k < extra; ++k) name.push_back(static_cast<char>('a' + rng_.Below(26)));
      if (i % 1000 == 999) {
        if (mkdirat(dir.get(), name.c_str(), 0755) != 0) return Fail("mkdir bigdir/" + name);
        ++kept;
        continue;
      }
      int fd = openat(dir.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) return Fail("create bigdir/" + name);
      bool ok = true;
      if (i % 97 == 0) {  // a few with content
        std::string data = rng_.Bytes(1 + rng_.Below(5000));
        ok = write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
      }
      close(fd);
      if (!ok) return Fail("write bigdir/" + name);
      if (i % 7 == 3) {
        removed.push_back(name);
      } else {
        ++kept;
      }
    }
    // Deleted entries leave unused dirents (inode 0, merged rec_len) behind.
    for (const std::string& name : removed) {
      if (unlinkat(dir.get(), name.c_str(), 0) != 0) return Fail("unlink bigdir/" + name);
    }
    // A directory that grew to many blocks and then lost almost all of its entries.
    if (!Mkdir("bigdir_emptied")) return false;
    for (int i = 0; i < 600; ++i) {
      const std::string rel = "bigdir_emptied/entry_with_a_longish_name_" + std::to_string(i);
      if (!WriteRandomFile(rel, 0)) return false;
      if (i % 150 != 0 && unlink(P(rel).c_str()) != 0) return Fail("unlink " + rel);
    }
    // Renames: a file moved between directories, a directory moved into another.
    if (rename(P("bigdir_emptied/entry_with_a_longish_name_150").c_str(),
               P("files/moved_in").c_str()) != 0 ||
        rename(P("bigdir_emptied").c_str(), P("links/a/bigdir_emptied").c_str()) != 0) {
      return Fail("rename");
    }
    return true;
  }

  bool MakeDeep() {
    std::string rel = "deep";
    if (!Mkdir(rel)) return false;
    for (int i = 0; i < options_.deep_levels; ++i) {
      char name[32];
      snprintf(name, sizeof(name), "/level_%02d", i);
      rel += name;
      if (!Mkdir(rel)) return false;
    }
    if (!WriteRandomFile(rel + "/leaf", 12345)) return false;
    if (symlink("leaf", P(rel + "/leaf_link").c_str()) != 0) return Fail("symlink deep leaf");
    return true;
  }

  bool MakeOwnersAndModes() {
    if (!Mkdir("owners") || !Mkdir("modes")) return false;
    const std::vector<std::pair<uint32_t, uint32_t>> owners = {
        {0, 0},           {1, 1},          {1000, 1000},     {65534, 65534},
        {65535, 65536},   {70000, 80000},  {123456, 654321}, {2147483648u, 2147483649u},
        {4000000000u, 5}, {5, 4000000000u}};
    for (const auto& [uid, gid] : owners) {
      std::string rel = "owners/u" + std::to_string(uid) + "_g" + std::to_string(gid);
      if (!WriteRandomFile(rel, 10) || !Mkdir(rel + "_dir") ||
          symlink("x", P(rel + "_sym").c_str()) != 0) {
        return error_.empty() ? Fail("symlink " + rel) : false;
      }
      for (const std::string& r : {rel, rel + "_dir", rel + "_sym"}) {
        if (lchown(P(r).c_str(), uid, gid) != 0) return Fail("lchown " + r);
      }
    }
    const mode_t modes[] = {0,     0400,  0644,  0755,  0777,  04755, 02755,
                            01777, 06777, 07777, 02000, 04000, 01000, 0111};
    for (mode_t mode : modes) {
      char name[32];
      snprintf(name, sizeof(name), "modes/f%04o", mode);
      if (!WriteRandomFile(name, 7)) return false;
      if (chown(P(name).c_str(), 1000, 1000) != 0) return Fail(std::string("chown ") + name);
      // chmod after chown: chown clears suid/sgid.
      if (chmod(P(name).c_str(), mode) != 0) return Fail(std::string("chmod ") + name);
      snprintf(name, sizeof(name), "modes/d%04o", mode);
      if (!Mkdir(name) || chmod(P(name).c_str(), mode) != 0) {
        return error_.empty() ? Fail(std::string("chmod ") + name) : false;
      }
    }
    return true;
  }

  bool SetTimes(const std::string& rel, timespec atime, timespec mtime) {
    const timespec ts[2] = {atime, mtime};
    if (utimensat(AT_FDCWD, P(rel).c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) {
      return Fail("utimensat " + rel);
    }
    return true;
  }

  bool MakeTimes() {
    if (!Mkdir("times") || !Mkdir("times/dir")) return false;
    // ext4's 256-byte inodes store 34-bit seconds ([-2^31, 2^34 - 2^31), 1901..2446) plus
    // nanoseconds; values outside are clamped by the kernel. 128-byte inodes clamp to 32 bits.
    const std::vector<timespec> times = {
        {0, 0},
        {0, 1},
        {-1, 999999999},
        {-1, 0},
        {-2147483648LL, 0},
        {-2147483647LL, 500},
        {-1000000000, 123456789},
        {1234567890, 987654321},
        {1700000000, 999999999},
        {2147483647, 999999999},
        {2147483648LL, 0},
        {4294967295LL, 1},
        {4294967296LL, 2},
        {15032385535LL, 999999999},  // the largest ext4 represents
        {15032385536LL, 3},          // one past: clamped
        {1LL << 36, 5},
        {-(1LL << 33), 7},
    };
    for (size_t i = 0; i < times.size(); ++i) {
      const timespec atime = times[i], mtime = times[(i + 1) % times.size()];
      const std::string n = std::to_string(i);
      if (!WriteRandomFile("times/f" + n, i) || !Mkdir("times/dir/d" + n) ||
          symlink("t", P("times/s" + n).c_str()) != 0) {
        return error_.empty() ? Fail("symlink times/s" + n) : false;
      }
      if (mknod(P("times/c" + n).c_str(), S_IFCHR | 0600, makedev(1, 3)) != 0) {
        return Fail("mknod times/c" + n);
      }
      for (const std::string& rel :
           {"times/f" + n, "times/dir/d" + n, "times/s" + n, "times/c" + n}) {
        if (!SetTimes(rel, atime, mtime)) return false;
      }
    }
    // Random times with nanoseconds on every other file in files/.
    for (size_t i = 0; i < plain_files_.size(); i += 2) {
      const timespec a = {static_cast<time_t>(rng_.Below(4000000000u)),
                          static_cast<long>(rng_.Below(1000000000))};
      const timespec m = {static_cast<time_t>(rng_.Below(4000000000u)),
                          static_cast<long>(rng_.Below(1000000000))};
      if (!SetTimes(plain_files_[i], a, m)) return false;
    }
    // Directory times last: creating entries above changed them.
    return SetTimes("times/dir", times[3], times[12]) && SetTimes("times", times[9], times[6]);
  }

  const std::string root_;
  const TreeGenOptions options_;
  Rng rng_;
  uint32_t block_size_ = 4096;
  std::vector<std::string> plain_files_;
  std::string error_;
};

}  // namespace

std::string GenerateTree(const std::string& root, const TreeGenOptions& options) {
  return Generator(root, options).Run();
}

}  // namespace iomapfs::testing
