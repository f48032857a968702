#include "tests/difftest/runner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <deque>
#include <utility>

namespace iomapfs::difftest {
namespace {

int64_t Err() { return -static_cast<int64_t>(errno); }

const char* TypeName(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "reg";
    case S_IFDIR:
      return "dir";
    case S_IFLNK:
      return "lnk";
    case S_IFIFO:
      return "fifo";
    case S_IFSOCK:
      return "sock";
    case S_IFCHR:
      return "chr";
    case S_IFBLK:
      return "blk";
  }
  return "?";
}

const char* DtypeName(unsigned char t) {
  switch (t) {
    case DT_REG:
      return "reg";
    case DT_DIR:
      return "dir";
    case DT_LNK:
      return "lnk";
    case DT_UNKNOWN:
      return "unknown";
  }
  return "other";
}

std::string TimeString(const timespec& t) {
  char buf[64];
  snprintf(buf, sizeof(buf), "%" PRId64 ".%09ld", static_cast<int64_t>(t.tv_sec), t.tv_nsec);
  return buf;
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

bool Printable(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

std::string HexBytes(const std::string& s, size_t from, size_t n) {
  std::string out;
  char buf[4];
  for (size_t i = from; i < s.size() && i < from + n; ++i) {
    snprintf(buf, sizeof(buf), "%02x", static_cast<unsigned char>(s[i]));
    out += buf;
  }
  return out;
}

// Where two data strings first differ, for a report.
std::string FirstDifference(const std::string& a, const std::string& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return "first difference at byte " + std::to_string(i) + " (ref " + HexBytes(a, i, 16) +
         " vs test " + HexBytes(b, i, 16) + "), lengths " + std::to_string(a.size()) + " and " +
         std::to_string(b.size());
}

std::vector<std::string> ListXattrs(const std::string& path, std::string* error) {
  std::vector<std::string> names;
  ssize_t n = llistxattr(path.c_str(), nullptr, 0);
  if (n < 0) {
    *error = std::string("llistxattr: ") + strerror(errno);
    return names;
  }
  std::string buf(static_cast<size_t>(n) + 1, '\0');
  n = llistxattr(path.c_str(), buf.data(), buf.size());
  if (n < 0) {
    *error = std::string("llistxattr: ") + strerror(errno);
    return names;
  }
  for (size_t pos = 0; pos < static_cast<size_t>(n);) {
    size_t z = buf.find('\0', pos);
    names.push_back(buf.substr(pos, z - pos));
    pos = z + 1;
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string GetXattr(const std::string& path, const std::string& name) {
  std::string buf(65536, '\0');
  ssize_t n = lgetxattr(path.c_str(), name.c_str(), buf.data(), buf.size());
  if (n < 0) return std::string("<error ") + strerror(errno) + ">";
  buf.resize(n);
  return buf;
}

// "name:type" entries, sorted, without "." and "..". *error is set if the listing fails.
std::vector<std::string> Listing(const std::string& path, int64_t* error) {
  std::vector<std::string> entries;
  DIR* dir = opendir(path.c_str());
  if (dir == nullptr) {
    *error = Err();
    return entries;
  }
  errno = 0;
  while (struct dirent* e = readdir(dir)) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    entries.push_back(std::string(e->d_name) + ":" + DtypeName(e->d_type));
  }
  *error = errno ? Err() : 0;
  closedir(dir);
  std::sort(entries.begin(), entries.end());
  return entries;
}

std::string Join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

// Kernel ext4 answers SEEK_DATA over an unwritten extent from the page cache: cached pages
// there count as data, so its answer depends on what was read or written before, not on the
// file. Writing back and dropping the file's clean pages first makes both sides answer from
// their extents alone. Done on both sides alike; neither changes what a later op sees.
void SettlePageCache(int fd) {
  fsync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
}

// The data/hole map from SEEK_DATA/SEEK_HOLE: "d0-h0 d1-h1 ...", or an error.
std::string SeekMap(int fd) {
  SettlePageCache(fd);
  std::string map;
  off_t off = 0;
  for (int regions = 0; regions < 100000; ++regions) {
    off_t data = lseek(fd, off, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) map += std::string(" <SEEK_DATA error ") + strerror(errno) + ">";
      break;
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) {
      map += std::string(" <SEEK_HOLE error ") + strerror(errno) + ">";
      break;
    }
    map += " " + std::to_string(data) + "-" + std::to_string(hole);
    off = hole;
  }
  return map;
}

// Reads all of `fd` (from offset 0); false on a read error (*data gets what was read).
bool ReadAll(int fd, std::string* data, int* err) {
  data->clear();
  std::string buf(1 << 20, '\0');
  for (off_t off = 0;;) {
    ssize_t n = pread(fd, buf.data(), buf.size(), off);
    if (n < 0) {
      *err = errno;
      return false;
    }
    if (n == 0) return true;
    data->append(buf.data(), n);
    off += n;
  }
}

class TreeWalk {
 public:
  TreeWalk(std::string ref, std::string test, const CompareOptions& options, size_t max)
      : ref_(std::move(ref)), test_(std::move(test)), options_(options), max_(max) {}

  TreeDifferences Run() {
    Compare("");
    return std::move(out_);
  }

 private:
  void Diff(const std::string& rel, const std::string& what) {
    ++out_.count;
    if (out_.lines.size() < max_) out_.lines.push_back("/" + rel + ": " + what);
  }

  std::string StatFields(const struct stat& st) const {
    std::string s = std::string(TypeName(st.st_mode));
    char buf[32];
    snprintf(buf, sizeof(buf), " mode=0%o", st.st_mode & 07777);
    s += buf;
    s += " nlink=" + std::to_string(st.st_nlink) + " uid=" + std::to_string(st.st_uid) +
         " gid=" + std::to_string(st.st_gid);
    if (!S_ISDIR(st.st_mode) || options_.dir_size) s += " size=" + std::to_string(st.st_size);
    if (options_.blocks) s += " blocks=" + std::to_string(st.st_blocks);
    return s;
  }

  void Compare(const std::string& rel) {
    ++out_.entries;
    const std::string a = rel.empty() ? ref_ : ref_ + "/" + rel;
    const std::string b = rel.empty() ? test_ : test_ + "/" + rel;
    struct stat sa, sb;
    const int ra = lstat(a.c_str(), &sa) == 0 ? 0 : errno;
    const int rb = lstat(b.c_str(), &sb) == 0 ? 0 : errno;
    if (ra || rb) {
      Diff(rel, std::string("lstat: ref ") + strerror(ra) + ", test " + strerror(rb));
      return;
    }
    const std::string fa = StatFields(sa), fb = StatFields(sb);
    if (fa != fb) Diff(rel, "stat: ref {" + fa + "} test {" + fb + "}");
    if ((sa.st_mode & S_IFMT) != (sb.st_mode & S_IFMT)) return;

    std::string xerr_a, xerr_b;
    std::vector<std::string> xa = ListXattrs(a, &xerr_a), xb = ListXattrs(b, &xerr_b);
    if (xerr_a != xerr_b) Diff(rel, "xattr list: ref '" + xerr_a + "' test '" + xerr_b + "'");
    if (xa != xb) {
      Diff(rel, "xattr names: ref [" + Join(xa, ",") + "] test [" + Join(xb, ",") + "]");
    } else {
      for (const std::string& name : xa) {
        std::string va = GetXattr(a, name), vb = GetXattr(b, name);
        if (va != vb) Diff(rel, "xattr " + name + ": " + FirstDifference(va, vb));
      }
    }

    if (S_ISLNK(sa.st_mode)) {
      char ta[8192], tb[8192];
      ssize_t na = readlink(a.c_str(), ta, sizeof(ta));
      ssize_t nb = readlink(b.c_str(), tb, sizeof(tb));
      if (na < 0 || nb < 0 || std::string(ta, na) != std::string(tb, nb)) {
        Diff(rel, "symlink target differs");
      }
    } else if (S_ISREG(sa.st_mode)) {
      CompareFile(rel, a, b);
    } else if (S_ISDIR(sa.st_mode)) {
      int64_t ea = 0, eb = 0;
      std::vector<std::string> la = Listing(a, &ea), lb = Listing(b, &eb);
      if (ea != eb)
        Diff(rel, "readdir error: ref " + std::to_string(ea) + " test " + std::to_string(eb));
      if (la != lb) {
        Diff(rel, "listing: ref [" + Join(la, " ") + "] test [" + Join(lb, " ") + "]");
      }
      for (const std::string& entry : la) {
        if (!std::binary_search(lb.begin(), lb.end(), entry)) continue;
        const std::string name = entry.substr(0, entry.rfind(':'));
        Compare(rel.empty() ? name : rel + "/" + name);
      }
    }
  }

  void CompareFile(const std::string& rel, const std::string& a, const std::string& b) {
    int fa = open(a.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    int fb = open(b.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fa < 0 || fb < 0) {
      Diff(rel, "open failed");
    } else {
      if (options_.seek) {
        std::string ma = SeekMap(fa), mb = SeekMap(fb);
        if (ma != mb) Diff(rel, "SEEK_DATA/SEEK_HOLE map: ref [" + ma + " ] test [" + mb + " ]");
      }
      std::string da, db;
      int ea = 0, eb = 0;
      const bool oka = ReadAll(fa, &da, &ea), okb = ReadAll(fb, &db, &eb);
      if (!oka || !okb) {
        Diff(rel, std::string("read error: ref ") + strerror(ea) + ", test " + strerror(eb));
      } else if (da != db) {
        Diff(rel, "contents: " + FirstDifference(da, db));
      }
      out_.bytes += da.size();
    }
    if (fa >= 0) close(fa);
    if (fb >= 0) close(fb);
  }

  std::string ref_, test_;
  CompareOptions options_;
  size_t max_;
  TreeDifferences out_;
};

struct HistoryEntry {
  uint64_t index;
  std::string op;
  std::string result;
};

}  // namespace

std::string DescribeResult(const OpResult& result) {
  std::string s = "ret=" + std::to_string(result.ret);
  if (result.ret < 0) {
    const char* name = strerrorname_np(static_cast<int>(-result.ret));
    s += std::string(" (") + (name ? name : "?") + ")";
  }
  if (result.data.empty()) return s;
  if (Printable(result.data) && result.data.size() <= 300) return s + " {" + result.data + "}";
  char buf[96];
  snprintf(buf, sizeof(buf), " data: %zu bytes, fnv %016" PRIx64 ", starts ", result.data.size(),
           Fnv1a(result.data));
  return s + buf + HexBytes(result.data, 0, 16);
}

Side::Side(std::string root, int slots, CompareOptions compare)
    : root_(std::move(root)), fds_(slots, -1), compare_(compare) {}

Side::~Side() { CloseAll(); }

void Side::CloseAll() {
  for (int& fd : fds_) {
    if (fd >= 0) close(fd);
    fd = -1;
  }
}

std::string Side::Path(const std::string& rel) const {
  return rel.empty() ? root_ : root_ + "/" + rel;
}

int Side::Fd(const Op& op, int flags, bool* opened, int64_t* error) {
  *opened = false;
  if (op.slot >= 0) {
    if (fds_[op.slot] < 0) *error = -EBADF;
    return fds_[op.slot];
  }
  int fd = open(Path(op.path).c_str(), flags | O_CLOEXEC);
  if (fd < 0) {
    *error = Err();
  } else {
    *opened = true;
  }
  return fd;
}

std::string Side::StatString(const struct stat& st) const {
  std::string s = TypeName(st.st_mode);
  char buf[32];
  snprintf(buf, sizeof(buf), " mode=0%o", st.st_mode & 07777);
  s += buf;
  s += " nlink=" + std::to_string(st.st_nlink) + " uid=" + std::to_string(st.st_uid) +
       " gid=" + std::to_string(st.st_gid);
  if (!S_ISDIR(st.st_mode) || compare_.dir_size) s += " size=" + std::to_string(st.st_size);
  if (compare_.blocks) s += " blocks=" + std::to_string(st.st_blocks);
  return s;
}

std::string Side::PostStat(const Op& op, int fd) const {
  struct stat st;
  int r = fd >= 0 ? fstat(fd, &st)
                  : fstatat(AT_FDCWD, Path(op.path).c_str(), &st,
                            op.nofollow ? AT_SYMLINK_NOFOLLOW : 0);
  if (r != 0) return std::string("<stat error ") + strerror(errno) + ">";
  return StatString(st);
}

OpResult Side::Run(const Op& op) {
  OpResult r;
  const std::string path = Path(op.path);
  const char* p = path.c_str();
  const int at_flags = op.nofollow ? AT_SYMLINK_NOFOLLOW : 0;
  bool opened = false;
  int fd = -1;
  // Closes a temporary fd; a failing close is part of the result.
  auto finish = [&]() {
    if (opened && close(fd) != 0) r.data += " close=" + std::to_string(Err());
  };
  switch (op.kind) {
    case OpKind::kOpen: {
      int& slot = fds_[op.slot];
      if (slot >= 0) close(slot);
      slot = open(p, op.flags | O_CLOEXEC, op.mode);
      if (slot < 0) {
        r.ret = Err();
      } else {
        r.data = PostStat(op, slot);
      }
      break;
    }
    case OpKind::kClose: {
      int& slot = fds_[op.slot];
      if (slot < 0) {
        r.ret = -EBADF;
      } else {
        r.ret = close(slot) == 0 ? 0 : Err();
        slot = -1;
      }
      break;
    }
    case OpKind::kWrite:
    case OpKind::kRead: {
      const bool write = op.kind == OpKind::kWrite;
      fd = Fd(op, write ? O_WRONLY : O_RDONLY, &opened, &r.ret);
      if (fd < 0) break;
      if (write) {
        const std::string data = MakeData(op.data_seed, op.length);
        ssize_t n = pwrite(fd, data.data(), data.size(), static_cast<off_t>(op.offset));
        r.ret = n < 0 ? Err() : n;
        if (n >= 0) r.data = PostStat(op, fd);
      } else {
        std::string buf(op.length, '\0');
        ssize_t n = pread(fd, buf.data(), buf.size(), static_cast<off_t>(op.offset));
        r.ret = n < 0 ? Err() : n;
        if (n > 0) r.data = buf.substr(0, n);
      }
      finish();
      break;
    }
    case OpKind::kTruncate:
      if (op.slot >= 0) {
        fd = fds_[op.slot];
        r.ret = fd < 0 ? -EBADF : ftruncate(fd, static_cast<off_t>(op.offset)) == 0 ? 0 : Err();
      } else {
        r.ret = truncate(p, static_cast<off_t>(op.offset)) == 0 ? 0 : Err();
      }
      if (r.ret == 0) r.data = PostStat(op, fd);
      break;
    case OpKind::kFallocate:
      fd = Fd(op, O_WRONLY, &opened, &r.ret);
      if (fd < 0) break;
      r.ret =
          fallocate(fd, op.flags, static_cast<off_t>(op.offset), static_cast<off_t>(op.length)) == 0
              ? 0
              : Err();
      if (r.ret == 0) r.data = PostStat(op, fd);
      finish();
      break;
    case OpKind::kSeek: {
      fd = fds_[op.slot];
      if (fd < 0) {
        r.ret = -EBADF;
        break;
      }
      // SEEK_DATA/SEEK_HOLE on a directory never reaches a FUSE server (the kernel's generic
      // llseek answers i_size; ext4 answers its htree EOF): not comparable, so not compared.
      struct stat st;
      if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        r.ret = 0;
        break;
      }
      SettlePageCache(fd);
      off_t o = lseek(fd, static_cast<off_t>(op.offset), op.flags);
      r.ret = o < 0 ? Err() : compare_.seek ? o : 0;
      break;
    }
    case OpKind::kFsync:
      fd = fds_[op.slot];
      if (fd < 0) {
        r.ret = -EBADF;
      } else {
        r.ret = (op.flags ? fdatasync(fd) : fsync(fd)) == 0 ? 0 : Err();
      }
      break;
    case OpKind::kRename:
      r.ret = renameat2(AT_FDCWD, p, AT_FDCWD, Path(op.path2).c_str(), op.flags) == 0 ? 0 : Err();
      break;
    case OpKind::kLink:
      r.ret = link(p, Path(op.path2).c_str()) == 0 ? 0 : Err();
      if (r.ret == 0) r.data = PostStat(Op{.kind = op.kind, .path = op.path, .nofollow = true}, -1);
      break;
    case OpKind::kUnlink:
      r.ret = unlink(p) == 0 ? 0 : Err();
      break;
    case OpKind::kMkdir:
      r.ret = mkdir(p, op.mode) == 0 ? 0 : Err();
      if (r.ret == 0) r.data = PostStat(op, -1);
      break;
    case OpKind::kRmdir:
      r.ret = rmdir(p) == 0 ? 0 : Err();
      break;
    case OpKind::kSymlink:
      r.ret = symlink(op.path2.c_str(), p) == 0 ? 0 : Err();
      if (r.ret == 0) r.data = PostStat(Op{.kind = op.kind, .path = op.path, .nofollow = true}, -1);
      break;
    case OpKind::kReadlink: {
      char buf[8192];
      ssize_t n = readlink(p, buf, sizeof(buf));
      r.ret = n < 0 ? Err() : n;
      if (n > 0) r.data.assign(buf, n);
      break;
    }
    case OpKind::kSetxattr: {
      const std::string value = MakeData(op.data_seed, op.length);
      const char* name = op.name.c_str();
      int rc;
      if (op.slot >= 0) {
        fd = fds_[op.slot];
        rc = fd < 0 ? (errno = EBADF, -1)
                    : fsetxattr(fd, name, value.data(), value.size(), op.flags);
      } else if (op.nofollow) {
        rc = lsetxattr(p, name, value.data(), value.size(), op.flags);
      } else {
        rc = setxattr(p, name, value.data(), value.size(), op.flags);
      }
      r.ret = rc == 0 ? 0 : Err();
      break;
    }
    case OpKind::kGetxattr: {
      std::string buf(op.length, '\0');
      const char* name = op.name.c_str();
      ssize_t n;
      if (op.slot >= 0) {
        fd = fds_[op.slot];
        n = fd < 0 ? (errno = EBADF, -1) : fgetxattr(fd, name, buf.data(), buf.size());
      } else if (op.nofollow) {
        n = lgetxattr(p, name, buf.data(), buf.size());
      } else {
        n = getxattr(p, name, buf.data(), buf.size());
      }
      r.ret = n < 0 ? Err() : n;
      if (n > 0 && op.length > 0) r.data = buf.substr(0, n);
      break;
    }
    case OpKind::kRemovexattr: {
      const char* name = op.name.c_str();
      int rc;
      if (op.slot >= 0) {
        fd = fds_[op.slot];
        rc = fd < 0 ? (errno = EBADF, -1) : fremovexattr(fd, name);
      } else if (op.nofollow) {
        rc = lremovexattr(p, name);
      } else {
        rc = removexattr(p, name);
      }
      r.ret = rc == 0 ? 0 : Err();
      break;
    }
    case OpKind::kListxattr: {
      std::string buf(op.length, '\0');
      ssize_t n;
      if (op.slot >= 0) {
        fd = fds_[op.slot];
        n = fd < 0 ? (errno = EBADF, -1) : flistxattr(fd, buf.data(), buf.size());
      } else if (op.nofollow) {
        n = llistxattr(p, buf.data(), buf.size());
      } else {
        n = listxattr(p, buf.data(), buf.size());
      }
      r.ret = n < 0 ? Err() : n;
      if (n > 0 && op.length > 0) {
        std::vector<std::string> names;
        for (size_t pos = 0; pos < static_cast<size_t>(n);) {
          size_t z = buf.find('\0', pos);
          if (z == std::string::npos) z = n;
          names.push_back(buf.substr(pos, z - pos));
          pos = z + 1;
        }
        std::sort(names.begin(), names.end());
        r.data = Join(names, ",");
      }
      break;
    }
    case OpKind::kChmod:
      if (op.slot >= 0) {
        fd = fds_[op.slot];
        r.ret = fd < 0 ? -EBADF : fchmod(fd, op.mode) == 0 ? 0 : Err();
      } else {
        r.ret = chmod(p, op.mode) == 0 ? 0 : Err();
      }
      if (r.ret == 0) r.data = PostStat(op, fd);
      break;
    case OpKind::kChown:
      if (op.slot >= 0) {
        fd = fds_[op.slot];
        r.ret = fd < 0 ? -EBADF : fchown(fd, op.uid, op.gid) == 0 ? 0 : Err();
      } else {
        r.ret = fchownat(AT_FDCWD, p, op.uid, op.gid, at_flags) == 0 ? 0 : Err();
      }
      if (r.ret == 0) r.data = PostStat(op, fd);
      break;
    case OpKind::kUtimens: {
      if (op.slot >= 0) {
        fd = fds_[op.slot];
        r.ret = fd < 0 ? -EBADF : futimens(fd, op.times) == 0 ? 0 : Err();
      } else {
        r.ret = utimensat(AT_FDCWD, p, op.times, at_flags) == 0 ? 0 : Err();
      }
      if (r.ret != 0) break;
      // Only explicitly set times are comparable (NOW differs between the sides).
      struct stat st;
      int rc = fd >= 0 ? fstat(fd, &st) : fstatat(AT_FDCWD, p, &st, at_flags);
      if (rc != 0) {
        r.data = std::string("<stat error ") + strerror(errno) + ">";
        break;
      }
      if (op.times[0].tv_nsec != UTIME_NOW && op.times[0].tv_nsec != UTIME_OMIT) {
        r.data += "atime=" + TimeString(st.st_atim);
      }
      if (op.times[1].tv_nsec != UTIME_NOW && op.times[1].tv_nsec != UTIME_OMIT) {
        r.data += " mtime=" + TimeString(st.st_mtim);
      }
      break;
    }
    case OpKind::kStat: {
      struct stat st;
      int rc;
      if (op.slot >= 0) {
        fd = fds_[op.slot];
        rc = fd < 0 ? (errno = EBADF, -1) : fstat(fd, &st);
      } else {
        rc = fstatat(AT_FDCWD, p, &st, at_flags);
      }
      r.ret = rc == 0 ? 0 : Err();
      if (rc == 0) r.data = StatString(st);
      break;
    }
    case OpKind::kReaddir: {
      std::vector<std::string> entries = Listing(path, &r.ret);
      if (r.ret == 0) r.data = Join(entries, " ");
      break;
    }
    case OpKind::kCount:
      break;
  }
  return r;
}

TreeDifferences CompareTrees(const std::string& ref_root, const std::string& test_root,
                             const CompareOptions& options, size_t max) {
  return TreeWalk(ref_root, test_root, options, max).Run();
}

std::string RunResult::Stats() const {
  std::string s;
  for (const auto& [kind, k] : by_kind) {
    if (!s.empty()) s += ", ";
    s += kind + " " + std::to_string(k.ok) + "/" + std::to_string(k.runs);
    std::string errors;
    for (const auto& [err, n] : k.errors) {
      const char* name = strerrorname_np(err);
      errors +=
          std::string(errors.empty() ? "" : " ") + (name ? name : "?") + ":" + std::to_string(n);
    }
    if (!errors.empty()) s += " (" + errors + ")";
  }
  return s + " (ok/run and errors on the reference side)";
}

RunResult RunLockstep(const std::string& ref_root, const std::string& test_root,
                      const RunnerOptions& options) {
  const mode_t old_umask = umask(0);
  RunResult result;
  Generator gen(options.seed, options.generator);
  Side ref(ref_root, options.generator.slots, options.compare);
  Side test(test_root, options.generator.slots, options.compare);
  std::deque<HistoryEntry> history;

  auto header = [&](const std::string& what) {
    return "difftest mismatch: seed " + std::to_string(options.seed) + ", " + what + "\n";
  };
  auto history_text = [&]() {
    std::string s = "last " + std::to_string(history.size()) + " ops before it (" +
                    options.ref_name + " results):\n";
    for (const HistoryEntry& h : history) {
      s += "  #" + std::to_string(h.index) + " " + h.op + " -> " + h.result + "\n";
    }
    return s;
  };
  auto tree_check = [&](const std::string& when) {
    ++result.tree_checks;
    TreeDifferences d = CompareTrees(ref_root, test_root, options.compare);
    if (d.count == 0) return true;
    result.ok = false;
    result.report = header("trees differ " + when) + std::to_string(d.count) + " difference(s) (" +
                    options.ref_name + " vs " + options.test_name + "):\n";
    for (const std::string& line : d.lines) result.report += "  " + line + "\n";
    result.report += history_text();
    return false;
  };

  for (uint64_t i = 0; i < options.ops; ++i) {
    const Op op = gen.Next();
    const OpResult r = ref.Run(op);
    const OpResult t = test.Run(op);
    ++result.ops_run;
    RunResult::KindStats& k = result.by_kind[OpKindName(op.kind)];
    ++k.runs;
    if (r.ret >= 0) {
      ++k.ok;
    } else {
      ++k.errors[static_cast<int>(-r.ret)];
    }
    if (!(r == t)) {
      result.ok = false;
      result.failed_op = static_cast<int64_t>(i);
      result.report = header("op #" + std::to_string(i) + ": " + op.Describe()) + "  " +
                      options.ref_name + ": " + DescribeResult(r) + "\n  " + options.test_name +
                      ": " + DescribeResult(t) + "\n";
      if (r.ret == t.ret && r.data != t.data) {
        result.report += "  data: " + FirstDifference(r.data, t.data) + "\n";
      }
      result.report += history_text();
      break;
    }
    gen.Observe(op, r.ret);
    history.push_back({i, op.Describe(), DescribeResult(r)});
    if (options.trace) options.trace(i, history.back().op, history.back().result);
    if (history.size() > options.history) history.pop_front();
    if (options.progress && (i + 1) % 10000 == 0) options.progress(i + 1);
    if (i + 1 == options.ops) break;
    if (options.check_every && (i + 1) % options.check_every == 0 &&
        !tree_check("after op #" + std::to_string(i))) {
      break;
    }
    if (options.remount_every && options.remount && (i + 1) % options.remount_every == 0) {
      ref.CloseAll();
      test.CloseAll();
      gen.CloseAll();
      ++result.remounts;
      if (std::string err = options.remount(); !err.empty()) {
        result.ok = false;
        result.report = header("remount after op #" + std::to_string(i) + " failed") + err +
                        (err.back() == '\n' ? "" : "\n") + history_text();
        break;
      }
    }
  }
  ref.CloseAll();
  test.CloseAll();
  if (result.ok) tree_check("at the end (" + std::to_string(result.ops_run) + " ops)");
  umask(old_umask);
  return result;
}

}  // namespace iomapfs::difftest
