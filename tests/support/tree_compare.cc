#include "tests/support/tree_compare.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace iomapfs::testing {
namespace {

constexpr size_t kChunk = size_t{1} << 20;
constexpr size_t kMaxSegments = 1000000;

std::string Errno(int err) {
  return std::string(strerrorname_np(err) ? strerrorname_np(err) : "?");
}

// Makes names with control or non-ASCII bytes printable.
std::string Escape(const std::string& s, size_t max = 300) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > max) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out;
}

std::string Hex(const std::string& s, size_t max = 48) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    char buf[4];
    snprintf(buf, sizeof(buf), "%02x", static_cast<unsigned char>(s[i]));
    out += buf;
  }
  if (s.size() > max) out += "...";
  return out + " (" + std::to_string(s.size()) + " bytes)";
}

std::string Time(int64_t sec, int64_t nsec) {
  char buf[48];
  snprintf(buf, sizeof(buf), "%" PRId64 ".%09" PRId64, sec, nsec);
  return buf;
}

std::string Octal(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof(buf), "0%" PRIo64, v);
  return buf;
}

std::string Dev(dev_t d) { return std::to_string(major(d)) + ":" + std::to_string(minor(d)); }

using Segments = std::vector<std::pair<uint64_t, uint64_t>>;  // [start, end) data regions

std::string FormatSegments(const Segments& s, size_t max = 12) {
  std::string out = "[";
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    if (i) out += " ";
    out += std::to_string(s[i].first) + "-" + std::to_string(s[i].second);
  }
  if (s.size() > max) out += " ... " + std::to_string(s.size()) + " regions";
  return out + "]";
}

// The SEEK_DATA/SEEK_HOLE sequence of an open file of `size` bytes.
// Returns: an empty string, or the failing call and its errno.
std::string SeekMap(int fd, uint64_t size, Segments* out) {
  out->clear();
  uint64_t pos = 0;
  while (pos < size && out->size() < kMaxSegments) {
    off_t data = lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;
      return "lseek(" + std::to_string(pos) + ", SEEK_DATA): " + Errno(errno);
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return "lseek(" + std::to_string(data) + ", SEEK_HOLE): " + Errno(errno);
    if (static_cast<uint64_t>(hole) <= static_cast<uint64_t>(data) ||
        static_cast<uint64_t>(data) < pos) {
      return "lseek went backwards: data " + std::to_string(data) + " hole " +
             std::to_string(hole) + " from " + std::to_string(pos);
    }
    out->emplace_back(data, hole);
    pos = hole;
  }
  return "";
}

// Reads up to `len` bytes at `off`, retrying short reads; stops at EOF.
// Returns: bytes read, or -errno.
int64_t ReadFull(int fd, char* buf, size_t len, uint64_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, static_cast<off_t>(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    done += n;
  }
  return static_cast<int64_t>(done);
}

// The kind of a difference, for the summary: its text up to the values ("mtime", "readdir d_ino",
// "content differs", "xattr value", ...).
std::string Kind(const std::string& what) {
  if (what.rfind("xattr list", 0) == 0) return "xattr list";
  if (what.rfind("xattr ", 0) == 0) {
    for (const char* k : {"only in a", "only in b", " value "}) {
      if (what.find(k) != std::string::npos)
        return std::string("xattr ") + (k[0] == ' ' ? "value" : k);
    }
    return "xattr read";
  }
  size_t end = what.size();
  for (const char* sep : {" a=", " at ", " in a's"}) end = std::min(end, what.find(sep));
  return what.substr(0, end);
}

class Comparer {
 public:
  Comparer(const std::string& a, const std::string& b, const TreeCompareOptions& options)
      : root_a_(a), root_b_(b), options_(options), buf_a_(kChunk), buf_b_(kChunk) {}

  TreeComparison Run() {
    Walk("");
    return std::move(result_);
  }

 private:
  void Diff(const std::string& rel, const std::string& what) {
    ++result_.difference_count;
    ++result_.count_by_kind[Kind(what)];
    if (result_.differences.size() < options_.max_differences) {
      result_.differences.push_back("/" + Escape(rel) + ": " + what);
    }
  }
  template <typename T>
  void Field(const std::string& rel, const char* name, const T& a, const T& b,
             std::string (*fmt)(T) = nullptr) {
    if (a == b) return;
    if (fmt) {
      Diff(rel, std::string(name) + " a=" + fmt(a) + " b=" + fmt(b));
    } else {
      Diff(rel, std::string(name) + " a=" + std::to_string(a) + " b=" + std::to_string(b));
    }
  }

  void Walk(const std::string& rel) {
    ++result_.entries;
    const std::string pa = root_a_ + "/" + rel, pb = root_b_ + "/" + rel;
    struct stat sa, sb;
    bool ok_a = lstat(pa.c_str(), &sa) == 0;
    int err_a = errno;
    bool ok_b = lstat(pb.c_str(), &sb) == 0;
    int err_b = errno;
    if (!ok_a || !ok_b) {
      Diff(rel, "lstat a=" + (ok_a ? std::string("ok") : Errno(err_a)) +
                    " b=" + (ok_b ? std::string("ok") : Errno(err_b)));
      return;
    }
    CompareStat(rel, sa, sb);
    CompareStatx(rel, pa, pb);
    if (options_.compare_xattrs) CompareXattrs(rel, pa, pb);
    if ((sa.st_mode & S_IFMT) != (sb.st_mode & S_IFMT)) return;  // already reported
    switch (sa.st_mode & S_IFMT) {
      case S_IFDIR:
        CompareDirs(rel, pa, pb);
        break;
      case S_IFREG:
        CompareFiles(rel, pa, pb, sa.st_size);
        break;
      case S_IFLNK:
        CompareLinks(rel, pa, pb);
        break;
      default:
        break;
    }
  }

  void CompareStat(const std::string& rel, const struct stat& a, const struct stat& b) {
    Field<uint64_t>(rel, "mode", a.st_mode, b.st_mode, Octal);
    Field<uint64_t>(rel, "st_ino", a.st_ino, b.st_ino);
    Field<uint64_t>(rel, "nlink", a.st_nlink, b.st_nlink);
    Field<uint64_t>(rel, "uid", a.st_uid, b.st_uid);
    Field<uint64_t>(rel, "gid", a.st_gid, b.st_gid);
    Field<dev_t>(rel, "rdev", a.st_rdev, b.st_rdev, Dev);
    Field<int64_t>(rel, "size", a.st_size, b.st_size);
    Field<int64_t>(rel, "st_blocks", a.st_blocks, b.st_blocks);
    auto time = [&](const char* name, const timespec& x, const timespec& y) {
      if (x.tv_sec != y.tv_sec || x.tv_nsec != y.tv_nsec) {
        Diff(rel, std::string(name) + " a=" + Time(x.tv_sec, x.tv_nsec) +
                      " b=" + Time(y.tv_sec, y.tv_nsec));
      }
    };
    if (options_.compare_atime) time("atime", a.st_atim, b.st_atim);
    time("mtime", a.st_mtim, b.st_mtim);
    time("ctime", a.st_ctim, b.st_ctim);
  }

  void CompareStatx(const std::string& rel, const std::string& pa, const std::string& pb) {
    struct statx xa, xb;
    const int flags = AT_SYMLINK_NOFOLLOW | AT_STATX_SYNC_AS_STAT;
    const unsigned mask = STATX_BASIC_STATS | STATX_BTIME;
    if (statx(AT_FDCWD, pa.c_str(), flags, mask, &xa) != 0 ||
        statx(AT_FDCWD, pb.c_str(), flags, mask, &xb) != 0) {
      Diff(rel, "statx failed: " + Errno(errno));
      return;
    }
    if ((xa.stx_mask & STATX_BTIME) && (xb.stx_mask & STATX_BTIME)) ++result_.btime_compared;
    if ((xa.stx_mask & STATX_BTIME) && (xb.stx_mask & STATX_BTIME) &&
        (xa.stx_btime.tv_sec != xb.stx_btime.tv_sec ||
         xa.stx_btime.tv_nsec != xb.stx_btime.tv_nsec)) {
      Diff(rel, "btime a=" + Time(xa.stx_btime.tv_sec, xa.stx_btime.tv_nsec) +
                    " b=" + Time(xb.stx_btime.tv_sec, xb.stx_btime.tv_nsec));
    }
  }

  // Returns: an empty string, or the error; `names` sorted.
  static std::string ListXattrs(const std::string& path, std::vector<std::string>* names) {
    names->clear();
    std::string buf;
    for (int attempt = 0; attempt < 5; ++attempt) {
      ssize_t size = llistxattr(path.c_str(), nullptr, 0);
      if (size < 0) return "llistxattr: " + Errno(errno);
      buf.resize(size);
      if (size == 0) return "";
      ssize_t got = llistxattr(path.c_str(), buf.data(), buf.size());
      if (got < 0 && errno == ERANGE) continue;
      if (got < 0) return "llistxattr: " + Errno(errno);
      buf.resize(got);
      size_t pos = 0;
      while (pos < buf.size()) {
        size_t end = buf.find('\0', pos);
        if (end == std::string::npos) return "llistxattr: unterminated name list";
        names->push_back(buf.substr(pos, end - pos));
        pos = end + 1;
      }
      std::sort(names->begin(), names->end());
      return "";
    }
    return "llistxattr: keeps changing size";
  }

  static std::string GetXattr(const std::string& path, const std::string& name,
                              std::string* value) {
    for (int attempt = 0; attempt < 5; ++attempt) {
      ssize_t size = lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
      if (size < 0) return "lgetxattr: " + Errno(errno);
      value->resize(size);
      if (size == 0) return "";
      ssize_t got = lgetxattr(path.c_str(), name.c_str(), value->data(), value->size());
      if (got < 0 && errno == ERANGE) continue;
      if (got < 0) return "lgetxattr: " + Errno(errno);
      value->resize(got);
      return "";
    }
    return "lgetxattr: keeps changing size";
  }

  void CompareXattrs(const std::string& rel, const std::string& pa, const std::string& pb) {
    std::vector<std::string> na, nb;
    std::string ea = ListXattrs(pa, &na), eb = ListXattrs(pb, &nb);
    if (!ea.empty() || !eb.empty()) {
      if (ea != eb) Diff(rel, "xattr list a=" + (ea.empty() ? "ok" : ea) + " b=" + eb);
      return;
    }
    std::vector<std::string> only_a, only_b, both;
    std::set_difference(na.begin(), na.end(), nb.begin(), nb.end(), std::back_inserter(only_a));
    std::set_difference(nb.begin(), nb.end(), na.begin(), na.end(), std::back_inserter(only_b));
    std::set_intersection(na.begin(), na.end(), nb.begin(), nb.end(), std::back_inserter(both));
    for (const std::string& n : only_a) Diff(rel, "xattr " + Escape(n, 60) + " only in a");
    for (const std::string& n : only_b) Diff(rel, "xattr " + Escape(n, 60) + " only in b");
    for (const std::string& n : both) {
      std::string va, vb;
      ++result_.xattrs_compared;
      std::string ga = GetXattr(pa, n, &va), gb = GetXattr(pb, n, &vb);
      if (!ga.empty() || !gb.empty()) {
        if (ga != gb) {
          Diff(rel, "xattr " + Escape(n, 60) + " a=" + (ga.empty() ? "ok" : ga) +
                        " b=" + (gb.empty() ? "ok" : gb));
        }
      } else if (va != vb) {
        Diff(rel, "xattr " + Escape(n, 60) + " value a=" + Hex(va) + " b=" + Hex(vb));
      }
    }
  }

  struct DirEntry {
    uint64_t ino;
    unsigned char type;
  };
  static std::string ListDir(const std::string& path, std::map<std::string, DirEntry>* out) {
    out->clear();
    DIR* dir = opendir(path.c_str());
    if (dir == nullptr) return "opendir: " + Errno(errno);
    errno = 0;
    while (struct dirent* e = readdir(dir)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      if (!out->emplace(name, DirEntry{e->d_ino, e->d_type}).second) {
        closedir(dir);
        return "readdir returned " + Escape(name) + " twice";
      }
      errno = 0;
    }
    int err = errno;
    closedir(dir);
    return err ? "readdir: " + Errno(err) : "";
  }

  void CompareDirs(const std::string& rel, const std::string& pa, const std::string& pb) {
    std::map<std::string, DirEntry> la, lb;
    std::string ea = ListDir(pa, &la), eb = ListDir(pb, &lb);
    if (!ea.empty() || !eb.empty()) {
      Diff(rel, "listing a=" + (ea.empty() ? "ok" : ea) + " b=" + (eb.empty() ? "ok" : eb));
      return;
    }
    const std::string prefix = rel.empty() ? "" : rel + "/";
    std::vector<std::string> common;
    for (const auto& [name, entry] : la) {
      auto it = lb.find(name);
      if (it == lb.end()) {
        Diff(prefix + name, "only in a");
        continue;
      }
      if (entry.ino != it->second.ino) {
        Diff(prefix + name, "readdir d_ino a=" + std::to_string(entry.ino) +
                                " b=" + std::to_string(it->second.ino));
      }
      if (entry.type != it->second.type) {
        Diff(prefix + name, "readdir d_type a=" + std::to_string(entry.type) +
                                " b=" + std::to_string(it->second.type));
      }
      common.push_back(name);
    }
    for (const auto& [name, entry] : lb) {
      if (la.find(name) == la.end()) Diff(prefix + name, "only in b");
    }
    for (const std::string& name : common) Walk(prefix + name);
  }

  void CompareLinks(const std::string& rel, const std::string& pa, const std::string& pb) {
    char ta[8192], tb[8192];
    ssize_t na = readlink(pa.c_str(), ta, sizeof(ta));
    int err_a = errno;
    ssize_t nb = readlink(pb.c_str(), tb, sizeof(tb));
    int err_b = errno;
    if (na < 0 || nb < 0) {
      Diff(rel,
           "readlink a=" + (na < 0 ? Errno(err_a) : "ok") + " b=" + (nb < 0 ? Errno(err_b) : "ok"));
      return;
    }
    std::string sa(ta, na), sb(tb, nb);
    if (sa != sb) Diff(rel, "symlink target a=\"" + Escape(sa) + "\" b=\"" + Escape(sb) + "\"");
  }

  // Compares [off, off+len) of both files; reports the first difference.
  // Returns: false if a difference was reported.
  bool CompareRange(const std::string& rel, int fa, int fb, uint64_t off, uint64_t len) {
    while (len > 0) {
      size_t n = std::min<uint64_t>(len, kChunk);
      int64_t ra = ReadFull(fa, buf_a_.data(), n, off);
      int64_t rb = ReadFull(fb, buf_b_.data(), n, off);
      if (ra < 0 || rb < 0 || ra != rb) {
        Diff(rel, "read at " + std::to_string(off) + " of " + std::to_string(n) +
                      " bytes: a=" + (ra < 0 ? Errno(-ra) : std::to_string(ra)) +
                      " b=" + (rb < 0 ? Errno(-rb) : std::to_string(rb)));
        return false;
      }
      result_.bytes_compared += ra;
      if (memcmp(buf_a_.data(), buf_b_.data(), ra) != 0) {
        size_t i = 0;
        while (buf_a_[i] == buf_b_[i]) ++i;
        size_t end = i;
        while (end < static_cast<size_t>(ra) && buf_a_[end] != buf_b_[end]) ++end;
        Diff(rel, "content differs at offset " + std::to_string(off + i) +
                      " (a=" + Hex(std::string(&buf_a_[i], std::min<size_t>(8, ra - i)), 8) +
                      " b=" + Hex(std::string(&buf_b_[i], std::min<size_t>(8, ra - i)), 8) +
                      ", first differing run " + std::to_string(end - i) + " bytes)");
        return false;
      }
      if (static_cast<uint64_t>(ra) < n) return true;  // EOF on both
      off += n;
      len -= n;
    }
    return true;
  }

  // Checks that `b` reads zeros in [off, off+len).
  bool CheckZeros(const std::string& rel, int fb, uint64_t off, uint64_t len) {
    int64_t rb = ReadFull(fb, buf_b_.data(), len, off);
    if (rb != static_cast<int64_t>(len)) {
      Diff(rel, "read in a's hole at " + std::to_string(off) +
                    ": b=" + (rb < 0 ? Errno(-rb) : std::to_string(rb) + " bytes"));
      return false;
    }
    result_.bytes_compared += len;
    for (size_t i = 0; i < len; ++i) {
      if (buf_b_[i] != 0) {
        Diff(rel, "b reads non-zero at " + std::to_string(off + i) + " inside a's hole");
        return false;
      }
    }
    return true;
  }

  void CompareFiles(const std::string& rel, const std::string& pa, const std::string& pb,
                    uint64_t size) {
    int fa = open(pa.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    int err_a = errno;
    int fb = open(pb.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    int err_b = errno;
    if (fa < 0 || fb < 0) {
      Diff(rel,
           "open a=" + (fa < 0 ? Errno(err_a) : "ok") + " b=" + (fb < 0 ? Errno(err_b) : "ok"));
      if (fa >= 0) close(fa);
      if (fb >= 0) close(fb);
      return;
    }
    Segments sa, sb;
    std::string ea = SeekMap(fa, size, &sa), eb = SeekMap(fb, size, &sb);
    result_.data_regions += sa.size();
    if (ea != eb) {
      Diff(rel,
           "SEEK_DATA/SEEK_HOLE a=" + (ea.empty() ? "ok" : ea) + " b=" + (eb.empty() ? "ok" : eb));
    } else if (sa != sb) {
      Diff(rel,
           "SEEK_DATA/SEEK_HOLE data regions a=" + FormatSegments(sa) + " b=" + FormatSegments(sb));
    }
    if (size <= options_.full_compare_limit) {
      // Past EOF too: both must return 0 bytes there.
      CompareRange(rel, fa, fb, 0, size + 1);
    } else {
      if (!ea.empty()) sa = {{0, size}};
      uint64_t pos = 0;
      bool ok = true;
      for (const auto& [start, end] : sa) {
        if (start > pos) ok = ok && CheckHole(rel, fb, pos, start);
        ok = ok && CompareRange(rel, fa, fb, start, end - start);
        pos = end;
        if (!ok) break;
      }
      if (ok && pos < size) CheckHole(rel, fb, pos, size);
    }
    close(fa);
    close(fb);
  }

  // Samples b in a's hole [start, end): its first and last 4 KiB and one in the middle.
  bool CheckHole(const std::string& rel, int fb, uint64_t start, uint64_t end) {
    const uint64_t n = std::min<uint64_t>(4096, end - start);
    return CheckZeros(rel, fb, start, n) && CheckZeros(rel, fb, end - n, n) &&
           CheckZeros(rel, fb, start + (end - start - n) / 2, n);
  }

  const std::string root_a_, root_b_;
  const TreeCompareOptions options_;
  std::vector<char> buf_a_, buf_b_;
  TreeComparison result_;
};

}  // namespace

std::string TreeComparison::Stats() const {
  return std::to_string(entries) + " entries, " + std::to_string(bytes_compared) +
         " bytes per side, " + std::to_string(data_regions) + " data regions, " +
         std::to_string(xattrs_compared) + " xattr values, btime on " +
         std::to_string(btime_compared) + " entries; " + std::to_string(difference_count) +
         " differences";
}

std::string TreeComparison::Format() const {
  std::string out;
  if (!count_by_kind.empty()) {
    out += "differences by kind:";
    for (const auto& [kind, count] : count_by_kind)
      out += " [" + kind + "] " + std::to_string(count);
    out += "\n";
  }
  for (const std::string& d : differences) out += d + "\n";
  if (difference_count > differences.size()) {
    out += "... " + std::to_string(difference_count - differences.size()) + " more differences (" +
           std::to_string(difference_count) + " in all)\n";
  }
  return out;
}

TreeComparison CompareTrees(const std::string& a, const std::string& b,
                            const TreeCompareOptions& options) {
  return Comparer(a, b, options).Run();
}

}  // namespace iomapfs::testing
