#include "tests/difftest/ops.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <utility>

namespace iomapfs::difftest {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kBlock = 4096;

// The namespace: directory-ish and file-ish names. Any name may hold any type; the split only
// biases which names appear as intermediate path components.
constexpr const char* kDirNames[] = {"d0", "d1", "d2"};
constexpr const char* kFileNames[] = {"f0", "f1", "f2", "f3", "f4", "f5", "f6"};
constexpr size_t kNumDirNames = sizeof(kDirNames) / sizeof(kDirNames[0]);
constexpr size_t kNumFileNames = sizeof(kFileNames) / sizeof(kFileNames[0]);

constexpr const char* kXattrNames[] = {
    "user.a",    "user.bb",    "user.a_much_longer_attribute_name_that_takes_space",
    "trusted.t", "security.s",
};

// Valid ext4 times with 256-byte inodes (extra epoch bits): [-2^31, 2^34 - 2^31 - 1].
constexpr int64_t kMinTime = -(int64_t{1} << 31);
constexpr int64_t kMaxTime = (int64_t{1} << 34) - (int64_t{1} << 31) - 1;

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string OpenFlagsString(int flags) {
  std::string s;
  switch (flags & O_ACCMODE) {
    case O_RDONLY:
      s = "RDONLY";
      break;
    case O_WRONLY:
      s = "WRONLY";
      break;
    default:
      s = "RDWR";
  }
  if (flags & O_CREAT) s += "|CREAT";
  if (flags & O_EXCL) s += "|EXCL";
  if (flags & O_TRUNC) s += "|TRUNC";
  if (flags & O_APPEND) s += "|APPEND";
  if (flags & O_DIRECTORY) s += "|DIRECTORY";
  if (flags & O_NOFOLLOW) s += "|NOFOLLOW";
  return s;
}

std::string FallocModeString(int mode) {
  if (mode == 0) return "0";
  std::string s;
  auto add = [&s](const char* name) { s += s.empty() ? name : std::string("|") + name; };
  if (mode & FALLOC_FL_PUNCH_HOLE) add("PUNCH_HOLE");
  if (mode & FALLOC_FL_ZERO_RANGE) add("ZERO_RANGE");
  if (mode & FALLOC_FL_KEEP_SIZE) add("KEEP_SIZE");
  return s;
}

std::string RenameFlagsString(int flags) {
  if (flags == RENAME_NOREPLACE) return "NOREPLACE";
  if (flags == RENAME_EXCHANGE) return "EXCHANGE";
  return std::to_string(flags);
}

std::string XattrFlagsString(int flags) {
  if (flags == XATTR_CREATE) return "CREATE";
  if (flags == XATTR_REPLACE) return "REPLACE";
  return std::to_string(flags);
}

std::string TimeString(const timespec& t) {
  if (t.tv_nsec == UTIME_NOW) return "NOW";
  if (t.tv_nsec == UTIME_OMIT) return "OMIT";
  char buf[64];
  snprintf(buf, sizeof(buf), "%" PRId64 ".%09ld", static_cast<int64_t>(t.tv_sec), t.tv_nsec);
  return buf;
}

std::string Hex(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
  return buf;
}

std::string Octal(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof(buf), "0%" PRIo64, v);
  return buf;
}

size_t Depth(const std::string& path) {
  if (path.empty()) return 0;
  size_t d = 1;
  for (char c : path) d += c == '/';
  return d;
}

bool IsUnder(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
         path[dir.size()] == '/';
}

}  // namespace

uint64_t Rng::Below(uint64_t n) {
  // Values below `threshold` are rejected so that the accepted range is a multiple of n.
  const uint64_t threshold = (0 - n) % n;
  uint64_t x;
  do {
    x = Next();
  } while (x < threshold);
  return x % n;
}

uint64_t Rng::LogUniform(uint64_t lo, uint64_t hi) {
  const int lo_bit = 63 - __builtin_clzll(lo);
  const int hi_bit = 63 - __builtin_clzll(hi);
  const int bit = static_cast<int>(Range(lo_bit, hi_bit));
  uint64_t first = uint64_t{1} << bit;
  uint64_t last = bit == 63 ? UINT64_MAX : (uint64_t{1} << (bit + 1)) - 1;
  if (first < lo) first = lo;
  if (last > hi) last = hi;
  return Range(first, last);
}

size_t Rng::Weighted(const std::vector<unsigned>& weights) {
  uint64_t total = 0;
  for (unsigned w : weights) total += w;
  uint64_t x = Below(total);
  for (size_t i = 0; i < weights.size(); ++i) {
    if (x < weights[i]) return i;
    x -= weights[i];
  }
  return weights.size() - 1;
}

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kOpen:
      return "open";
    case OpKind::kClose:
      return "close";
    case OpKind::kWrite:
      return "write";
    case OpKind::kRead:
      return "read";
    case OpKind::kTruncate:
      return "truncate";
    case OpKind::kFallocate:
      return "fallocate";
    case OpKind::kSeek:
      return "lseek";
    case OpKind::kFsync:
      return "fsync";
    case OpKind::kRename:
      return "rename2";
    case OpKind::kLink:
      return "link";
    case OpKind::kUnlink:
      return "unlink";
    case OpKind::kMkdir:
      return "mkdir";
    case OpKind::kRmdir:
      return "rmdir";
    case OpKind::kSymlink:
      return "symlink";
    case OpKind::kReadlink:
      return "readlink";
    case OpKind::kSetxattr:
      return "setxattr";
    case OpKind::kGetxattr:
      return "getxattr";
    case OpKind::kRemovexattr:
      return "removexattr";
    case OpKind::kListxattr:
      return "listxattr";
    case OpKind::kChmod:
      return "chmod";
    case OpKind::kChown:
      return "chown";
    case OpKind::kUtimens:
      return "utimens";
    case OpKind::kStat:
      return "stat";
    case OpKind::kReaddir:
      return "readdir";
    case OpKind::kCount:
      break;
  }
  return "?";
}

std::string Op::Describe() const {
  std::string s = OpKindName(kind);
  if (slot >= 0) {
    s += " slot=" + std::to_string(slot);
  } else if (kind != OpKind::kClose && kind != OpKind::kSeek && kind != OpKind::kFsync) {
    s += " '" + path + "'";
    if (nofollow) s += " nofollow";
  }
  switch (kind) {
    case OpKind::kOpen:
      s += " '" + path + "' " + OpenFlagsString(flags) + " mode=" + Octal(mode);
      break;
    case OpKind::kClose:
      break;
    case OpKind::kWrite:
      s += " off=" + std::to_string(offset) + " len=" + std::to_string(length) +
           " seed=" + Hex(data_seed);
      break;
    case OpKind::kRead:
      s += " off=" + std::to_string(offset) + " len=" + std::to_string(length);
      break;
    case OpKind::kTruncate:
      s += " size=" + std::to_string(offset);
      break;
    case OpKind::kFallocate:
      s += " mode=" + FallocModeString(flags) + " off=" + std::to_string(offset) +
           " len=" + std::to_string(length);
      break;
    case OpKind::kSeek:
      s += std::string(flags == SEEK_DATA ? " SEEK_DATA" : " SEEK_HOLE") +
           " off=" + std::to_string(offset);
      break;
    case OpKind::kFsync:
      s += flags ? " (fdatasync)" : " (fsync)";
      break;
    case OpKind::kRename:
      s += " -> '" + path2 + "' flags=" + RenameFlagsString(flags);
      break;
    case OpKind::kLink:
      s += " -> '" + path2 + "'";
      break;
    case OpKind::kMkdir:
    case OpKind::kChmod:
      s += " mode=" + Octal(mode);
      break;
    case OpKind::kSymlink:
      s += " target='" + path2 + "'";
      break;
    case OpKind::kSetxattr:
      s += " " + name + " len=" + std::to_string(length) + " seed=" + Hex(data_seed) +
           " flags=" + XattrFlagsString(flags);
      break;
    case OpKind::kGetxattr:
      s += " " + name + " size=" + std::to_string(length);
      break;
    case OpKind::kRemovexattr:
      s += " " + name;
      break;
    case OpKind::kListxattr:
      s += " size=" + std::to_string(length);
      break;
    case OpKind::kChown:
      s += " uid=" + std::to_string(static_cast<int32_t>(uid)) +
           " gid=" + std::to_string(static_cast<int32_t>(gid));
      break;
    case OpKind::kUtimens:
      s += " atime=" + TimeString(times[0]) + " mtime=" + TimeString(times[1]);
      break;
    default:
      break;
  }
  return s;
}

std::string MakeData(uint64_t seed, size_t length) {
  std::string data(length, '\0');
  switch (seed % 8) {
    case 0:
      return data;  // zeros
    case 1:
      memset(data.data(), static_cast<int>((seed >> 8) & 0xff), length);
      return data;
    default:
      break;
  }
  uint64_t state = seed;
  size_t i = 0;
  for (; i + 8 <= length; i += 8) {
    uint64_t v = SplitMix64(&state);
    memcpy(&data[i], &v, 8);
  }
  if (i < length) {
    uint64_t v = SplitMix64(&state);
    memcpy(&data[i], &v, length - i);
  }
  return data;
}

Generator::Generator(uint64_t seed, GeneratorOptions options)
    : rng_(seed), options_(options), slot_open_(options.slots, false) {}

std::string Generator::RandomPath(int max_depth) {
  const int depth = static_cast<int>(rng_.Range(1, max_depth));
  std::string path;
  for (int i = 0; i < depth; ++i) {
    if (!path.empty()) path += '/';
    const bool last = i == depth - 1;
    // Intermediate components are directory names 90% of the time (else ENOTDIR/ENOENT).
    if (last ? rng_.Percent(30) : rng_.Percent(90)) {
      path += kDirNames[rng_.Below(kNumDirNames)];
    } else {
      path += kFileNames[rng_.Below(kNumFileNames)];
    }
  }
  return path;
}

std::string Generator::PickPath(unsigned types, unsigned existing_percent) {
  std::vector<const std::string*> candidates;
  for (const auto& [path, type] : paths_) {
    const unsigned bit = type == Type::kFile ? kFiles : type == Type::kDir ? kDirs : kSymlinks;
    if (types & bit) candidates.push_back(&path);
  }
  if (!candidates.empty() && rng_.Percent(existing_percent)) {
    return *candidates[rng_.Below(candidates.size())];
  }
  return RandomPath();
}

std::string Generator::PickDir() {
  std::vector<const std::string*> dirs;
  for (const auto& [path, type] : paths_) {
    if (type == Type::kDir && Depth(path) <= 2) dirs.push_back(&path);
  }
  const uint64_t i = rng_.Below(dirs.size() + 1);
  return i == dirs.size() ? std::string() : *dirs[i];
}

std::string Generator::PickNewPath() {
  switch (rng_.Weighted({60, 20, 20})) {
    case 0: {
      std::string dir = PickDir();
      const bool dir_name = rng_.Percent(30);
      std::string name =
          dir_name ? kDirNames[rng_.Below(kNumDirNames)] : kFileNames[rng_.Below(kNumFileNames)];
      return dir.empty() ? name : dir + "/" + name;
    }
    case 1:
      return PickPath(kAny, 100);
    default:
      return RandomPath();
  }
}

std::string Generator::PickSymlinkTarget() {
  switch (rng_.Weighted({70, 10, 10, 10})) {
    case 0:
      return RandomPath(2);
    case 1:
      return ".";
    case 2: {
      // A long target (stored in a block rather than in the inode), still resolving downward.
      std::string t;
      const uint64_t repeats = rng_.Range(30, 400);
      for (uint64_t i = 0; i < repeats; ++i) t += "./";
      return t + RandomPath(2);
    }
    default:
      return "no_such_target";
  }
}

int Generator::PickSlot(bool prefer_open) {
  if (prefer_open && rng_.Percent(90)) {
    std::vector<int> open;
    for (int i = 0; i < options_.slots; ++i) {
      if (slot_open_[i]) open.push_back(i);
    }
    if (!open.empty()) return open[rng_.Below(open.size())];
  }
  return static_cast<int>(rng_.Below(options_.slots));
}

uint64_t Generator::PickOffset() {
  const uint64_t max = options_.max_offset;
  switch (rng_.Below(10)) {
    case 0:
    case 1:
      return 0;
    case 2:
    case 3:
    case 4:
      return rng_.Below(256 * kKiB);
    case 5:
    case 6:
      return rng_.Below(max / kBlock) * kBlock;
    case 7: {
      // Near a block boundary.
      const uint64_t b = rng_.Range(1, max / kBlock - 1) * kBlock;
      return b + rng_.Below(17) - 8;
    }
    default:
      return rng_.Below(max);
  }
}

uint64_t Generator::PickLength(uint64_t max) {
  if (rng_.Percent(20)) return rng_.Range(1, max / kBlock) * kBlock;
  return rng_.LogUniform(1, max);
}

timespec Generator::PickTime() {
  timespec t;
  switch (rng_.Weighted({50, 20, 30})) {
    case 0:
      t.tv_sec = static_cast<time_t>(rng_.Below(uint64_t{1} << 31));
      break;
    case 1:
      t.tv_sec = -static_cast<time_t>(rng_.Range(1, -kMinTime));
      break;
    default:
      t.tv_sec = static_cast<time_t>(rng_.Range(uint64_t{1} << 31, kMaxTime));
  }
  t.tv_nsec = rng_.Percent(80) ? static_cast<long>(rng_.Below(1000000000)) : 0;
  return t;
}

void Generator::PickTarget(Op* op, unsigned types) {
  if (rng_.Percent(50)) {
    op->slot = PickSlot(true);
  } else {
    op->path = PickPath(types);
  }
}

Op Generator::Next() {
  // Weights per OpKind, in enum order.
  static const std::vector<unsigned> kWeights = {
      10,  // open
      2,   // close
      16,  // write
      8,   // read
      5,   // truncate
      7,   // fallocate
      4,   // lseek
      2,   // fsync
      6,   // rename2
      3,   // link
      5,   // unlink
      4,   // mkdir
      3,   // rmdir
      2,   // symlink
      1,   // readlink
      4,   // setxattr
      2,   // getxattr
      2,   // removexattr
      1,   // listxattr
      2,   // chmod
      1,   // chown
      2,   // utimens
      6,   // stat
      3,   // readdir
  };
  static_assert(static_cast<size_t>(OpKind::kCount) == 24);
  Op op;
  op.kind = static_cast<OpKind>(rng_.Weighted(kWeights));
  switch (op.kind) {
    case OpKind::kOpen: {
      op.slot = PickSlot(false);
      const bool create = rng_.Percent(60);
      if (create && rng_.Percent(70)) {
        op.path = PickNewPath();
      } else {
        op.path = PickPath(rng_.Percent(90) ? kFiles : kAny);
      }
      op.flags = std::vector<int>{O_RDONLY, O_WRONLY, O_RDWR}[rng_.Weighted({20, 20, 60})];
      if (create) op.flags |= O_CREAT;
      if (create && rng_.Percent(30)) op.flags |= O_EXCL;
      if (rng_.Percent(15)) op.flags |= O_TRUNC;
      if (rng_.Percent(15)) op.flags |= O_APPEND;
      if (rng_.Percent(3)) op.flags |= O_DIRECTORY;
      if (rng_.Percent(3)) op.flags |= O_NOFOLLOW;
      op.mode = static_cast<mode_t>(rng_.Below(01000));
      if (rng_.Percent(5)) op.mode |= S_ISUID | S_ISGID;
      break;
    }
    case OpKind::kClose:
    case OpKind::kFsync:
      op.slot = PickSlot(true);
      op.flags = op.kind == OpKind::kFsync ? static_cast<int>(rng_.Below(2)) : 0;
      break;
    case OpKind::kWrite:
      PickTarget(&op, kFiles);
      op.offset = PickOffset();
      op.length = PickLength(options_.max_write);
      op.data_seed = rng_.Next();
      break;
    case OpKind::kRead:
      PickTarget(&op, kFiles);
      op.offset = rng_.Percent(30) ? 0 : PickOffset();
      op.length = PickLength(options_.max_write);
      break;
    case OpKind::kTruncate:
      PickTarget(&op, kFiles);
      switch (rng_.Weighted({20, 40, 30, 10})) {
        case 0:
          op.offset = 0;
          break;
        case 1:
          op.offset = rng_.Below(256 * kKiB);
          break;
        case 2:
          op.offset = rng_.Below(options_.max_offset);
          break;
        default:
          op.offset = rng_.Below(options_.max_offset / kBlock) * kBlock;
      }
      break;
    case OpKind::kFallocate: {
      PickTarget(&op, kFiles);
      static const std::vector<int> kModes = {
          0,
          FALLOC_FL_KEEP_SIZE,
          FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
          FALLOC_FL_ZERO_RANGE,
          FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
          FALLOC_FL_PUNCH_HOLE,  // invalid without KEEP_SIZE: EOPNOTSUPP
      };
      op.flags = kModes[rng_.Weighted({20, 15, 30, 15, 15, 1})];
      op.offset = PickOffset();
      op.length = rng_.Percent(2) ? 0 : PickLength(4 * options_.max_write);
      break;
    }
    case OpKind::kSeek:
      op.slot = PickSlot(true);
      op.flags = rng_.Percent(50) ? SEEK_DATA : SEEK_HOLE;
      op.offset = PickOffset();
      break;
    case OpKind::kRename:
      op.flags =
          std::vector<int>{0, RENAME_NOREPLACE, RENAME_EXCHANGE}[rng_.Weighted({50, 25, 25})];
      op.path = PickPath(kAny, 85);
      op.path2 = op.flags == RENAME_EXCHANGE ? PickPath(kAny, 85) : PickNewPath();
      break;
    case OpKind::kLink:
      op.path = PickPath(kFiles | kSymlinks, 85);
      op.path2 = PickNewPath();
      break;
    case OpKind::kUnlink:
      op.path = PickPath(kFiles | kSymlinks, 85);
      break;
    case OpKind::kMkdir:
      op.path = PickNewPath();
      op.mode = static_cast<mode_t>(rng_.Below(01000));
      if (rng_.Percent(10)) op.mode |= S_ISGID;
      if (rng_.Percent(5)) op.mode |= S_ISVTX;
      break;
    case OpKind::kRmdir:
      op.path = PickPath(kDirs, 85);
      break;
    case OpKind::kSymlink:
      op.path = PickNewPath();
      op.path2 = PickSymlinkTarget();
      break;
    case OpKind::kReadlink:
      op.path = PickPath(kSymlinks, 85);
      break;
    case OpKind::kSetxattr:
    case OpKind::kGetxattr:
    case OpKind::kRemovexattr:
    case OpKind::kListxattr:
      PickTarget(&op, kAny);
      op.nofollow = op.slot < 0 && rng_.Percent(50);
      op.name = kXattrNames[rng_.Weighted({30, 25, 15, 15, 15})];
      if (op.kind != OpKind::kSetxattr && last_xattr_.has_value() && rng_.Percent(50)) {
        // The object and name of the last successful setxattr, so gets and removes find it.
        op.slot = last_xattr_->slot;
        op.path = last_xattr_->path;
        op.nofollow = last_xattr_->nofollow;
        op.name = last_xattr_->name;
      }
      if (op.kind == OpKind::kSetxattr) {
        op.flags = std::vector<int>{0, XATTR_CREATE, XATTR_REPLACE}[rng_.Weighted({60, 20, 20})];
        switch (rng_.Weighted({10, 60, 30})) {
          case 0:
            op.length = 0;
            break;
          case 1:
            op.length = rng_.LogUniform(1, 256);
            break;
          default:
            op.length = rng_.LogUniform(1, options_.max_xattr);
        }
        op.data_seed = rng_.Next();
      } else if (op.kind == OpKind::kGetxattr) {
        op.length = std::vector<uint64_t>{0, 1, 65536}[rng_.Weighted({20, 10, 70})];
      } else if (op.kind == OpKind::kListxattr) {
        op.name.clear();
        op.length = std::vector<uint64_t>{0, 4, 65536}[rng_.Weighted({20, 10, 70})];
      }
      break;
    case OpKind::kChmod:
      PickTarget(&op, kAny);
      op.mode = static_cast<mode_t>(rng_.Below(010000));
      break;
    case OpKind::kChown: {
      PickTarget(&op, kAny);
      op.nofollow = op.slot < 0 && rng_.Percent(30);
      static const std::vector<uint32_t> kIds = {0, 1, 1000, 65534, 100000, UINT32_MAX};
      op.uid = kIds[rng_.Below(kIds.size())];
      op.gid = kIds[rng_.Below(kIds.size())];
      break;
    }
    case OpKind::kUtimens:
      PickTarget(&op, kAny);
      op.nofollow = op.slot < 0 && rng_.Percent(20);
      for (timespec& t : op.times) {
        switch (rng_.Weighted({15, 15, 70})) {
          case 0:
            t = {0, UTIME_NOW};
            break;
          case 1:
            t = {0, UTIME_OMIT};
            break;
          default:
            t = PickTime();
        }
      }
      break;
    case OpKind::kStat:
      PickTarget(&op, kAny);
      op.nofollow = op.slot < 0 && rng_.Percent(50);
      break;
    case OpKind::kReaddir:
      op.path = rng_.Percent(10) ? std::string() : PickPath(kDirs, 90);
      break;
    case OpKind::kCount:
      break;
  }
  return op;
}

void Generator::Remove(const std::string& path) {
  std::erase_if(
      paths_, [&](const auto& entry) { return entry.first == path || IsUnder(entry.first, path); });
}

void Generator::Move(const std::string& from, const std::string& to) {
  std::vector<std::pair<std::string, Type>> moved;
  for (auto it = paths_.begin(); it != paths_.end();) {
    if (it->first == from || IsUnder(it->first, from)) {
      moved.emplace_back(to + it->first.substr(from.size()), it->second);
      it = paths_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [path, type] : moved) paths_[path] = type;
}

void Generator::Observe(const Op& op, int64_t result) {
  if (op.kind == OpKind::kOpen) slot_open_[op.slot] = result >= 0;
  if (op.kind == OpKind::kClose) slot_open_[op.slot] = false;
  if (result < 0) return;
  switch (op.kind) {
    case OpKind::kOpen:
      if ((op.flags & O_CREAT) && !paths_.contains(op.path)) paths_[op.path] = Type::kFile;
      break;
    case OpKind::kMkdir:
      paths_[op.path] = Type::kDir;
      break;
    case OpKind::kSetxattr:
      last_xattr_ = op;
      break;
    case OpKind::kSymlink:
      paths_[op.path] = Type::kSymlink;
      break;
    case OpKind::kLink: {
      auto it = paths_.find(op.path);
      paths_[op.path2] = it == paths_.end() ? Type::kFile : it->second;
      break;
    }
    case OpKind::kUnlink:
    case OpKind::kRmdir:
      Remove(op.path);
      break;
    case OpKind::kRename:
      if (op.path == op.path2) break;
      if (op.flags == RENAME_EXCHANGE) {
        const std::string tmp = std::string("\x01") + "exchange";
        Move(op.path, tmp);
        Move(op.path2, op.path);
        Move(tmp, op.path2);
      } else {
        Remove(op.path2);
        Move(op.path, op.path2);
      }
      break;
    default:
      break;
  }
}

}  // namespace iomapfs::difftest
