// Differential tester, part 1: the operations and their seeded generator.
//
// An `Op` is one filesystem call (or a short fixed sequence: open, pwrite, close) described by
// value, so the same op can run on two trees and be printed in a report. `Generator` produces a
// reproducible sequence of ops from a seed over a small namespace (a few directory names, a few
// file names, depth <= 3), so that most ops hit objects that exist. It keeps a model of which
// paths exist and which fd slots are open, fed back through `Observe` with the reference side's
// result; the model only steers the choice of paths (an inaccurate model makes more ops fail
// with ENOENT, it never makes a comparison wrong), and since a run stops at the first mismatch
// the sequence is a function of the seed and kernel ext4's behaviour alone.
//
// Reproducibility across standard libraries: the engine is std::mt19937_64, whose output the
// C++ standard fixes; every distribution on top of it is written here (std::uniform_int_
// distribution and friends are implementation-defined).
//
// Paths in ops are relative to the tree root and never contain ".." or a leading '/'; symlink
// targets are relative paths made of namespace names only, so resolving any path stays inside
// the tree it runs on.
//
// Thread-safety: none; one generator per run.
#pragma once

#include <sys/types.h>
#include <time.h>

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace iomapfs::difftest {

// Seeded PRNG with explicitly implemented distributions (see the header comment).
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  uint64_t Next() { return engine_(); }
  // Uniform in [0, n); n > 0. Rejection sampling, so no modulo bias.
  uint64_t Below(uint64_t n);
  // Uniform in [lo, hi] (inclusive).
  uint64_t Range(uint64_t lo, uint64_t hi) { return lo + Below(hi - lo + 1); }
  // True with probability percent/100.
  bool Percent(unsigned percent) { return Below(100) < percent; }
  // Log-uniform in [lo, hi]: a power of two is chosen uniformly, then a value inside it, so
  // small and large values are both common. REQUIRES: 1 <= lo <= hi.
  uint64_t LogUniform(uint64_t lo, uint64_t hi);
  // Picks an index with probability proportional to weights[i].
  size_t Weighted(const std::vector<unsigned>& weights);

 private:
  std::mt19937_64 engine_;
};

enum class OpKind : uint8_t {
  kOpen,         // open(path, flags, mode) into fd slot `slot` (an open slot is closed first)
  kClose,        // close(slot)
  kWrite,        // pwrite(slot) or open(path, O_WRONLY) + pwrite + close; data from data_seed
  kRead,         // pread(slot) or by path; the bytes read are compared
  kTruncate,     // ftruncate(slot) or truncate(path)
  kFallocate,    // fallocate(slot or path opened O_WRONLY, flags = mode)
  kSeek,         // lseek(slot, offset, flags = SEEK_DATA or SEEK_HOLE)
  kFsync,        // fsync(slot) (flags 0) or fdatasync(slot) (flags 1)
  kRename,       // renameat2(path, path2, flags)
  kLink,         // link(path, path2)
  kUnlink,       // unlink(path)
  kMkdir,        // mkdir(path, mode)
  kRmdir,        // rmdir(path)
  kSymlink,      // symlink(target = path2, path)
  kReadlink,     // readlink(path)
  kSetxattr,     // [l|f]setxattr(name, value from data_seed and length, flags)
  kGetxattr,     // [l|f]getxattr(name, buffer of `length` bytes)
  kRemovexattr,  // [l|f]removexattr(name)
  kListxattr,    // [l|f]listxattr; names compared sorted
  kChmod,        // chmod(path) or fchmod(slot)
  kChown,        // [l]chown(path) or fchown(slot)
  kUtimens,      // utimensat(path, times, flags) or futimens(slot); explicit times compared
  kStat,         // fstatat(path, flags) or fstat(slot)
  kReaddir,      // the sorted listing of directory `path`
  kCount,
};

const char* OpKindName(OpKind kind);

// For ops that may go through a path or an fd slot: `slot` >= 0 selects the slot.
struct Op {
  OpKind kind = OpKind::kStat;
  int slot = -1;
  std::string path;   // relative to the root
  std::string path2;  // rename/link destination; symlink target
  int flags = 0;      // open, renameat2, fallocate, xattr, lseek whence or AT_* flags
  mode_t mode = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  bool nofollow = false;   // stat, chown, utimens, xattr ops on a path: do not follow a symlink
  timespec times[2] = {};  // utimensat: atime, mtime (tv_nsec may be UTIME_NOW/UTIME_OMIT)
  std::string name;        // xattr name
  uint64_t data_seed = 0;  // write data and xattr values

  // One line, e.g. "write slot=1 off=4096 len=512 seed=0x1f".
  std::string Describe() const;
};

// The `length` bytes a write or setxattr with `seed` uses. Deterministic; some seeds give zeros
// or a repeated byte (so zero-detection and compressible data are exercised too).
std::string MakeData(uint64_t seed, size_t length);

struct GeneratorOptions {
  int slots = 4;                             // fd slots
  uint64_t max_offset = uint64_t{4} << 20;   // write/truncate/fallocate offsets below this
  uint64_t max_write = uint64_t{256} << 10;  // write, read and fallocate lengths up to this
  uint64_t max_xattr = 3000;                 // xattr value sizes up to this
};

class Generator {
 public:
  explicit Generator(uint64_t seed, GeneratorOptions options = {});

  Op Next();
  // Feeds back the reference side's result of `op` (a return value or -errno) into the model.
  void Observe(const Op& op, int64_t result);

  // All fd slots were closed (the harness remounted the trees).
  void CloseAll() { slot_open_.assign(slot_open_.size(), false); }

  // Model sizes, for statistics.
  size_t known_paths() const { return paths_.size(); }

 private:
  enum class Type : uint8_t { kFile, kDir, kSymlink };
  static constexpr unsigned kFiles = 1, kDirs = 2, kSymlinks = 4, kAny = 7;

  std::string RandomPath(int max_depth = 3);
  // An existing path of one of the `types` most of the time, else a random path.
  std::string PickPath(unsigned types, unsigned existing_percent = 80);
  // A path for a new object: a new name in an existing directory, an existing path, or random.
  std::string PickNewPath();
  std::string PickDir();  // an existing directory ("" is the root)
  std::string PickSymlinkTarget();
  int PickSlot(bool prefer_open);
  uint64_t PickOffset();
  uint64_t PickLength(uint64_t max);
  timespec PickTime();
  // Fills the target of a fd-or-path op: an open slot (about half the time) or a file path.
  void PickTarget(Op* op, unsigned types);

  void Remove(const std::string& path);  // the path and everything below it
  void Move(const std::string& from, const std::string& to);

  Rng rng_;
  GeneratorOptions options_;
  std::map<std::string, Type> paths_;  // what the model believes exists
  std::vector<bool> slot_open_;
  std::optional<Op> last_xattr_;  // the last successful setxattr
};

}  // namespace iomapfs::difftest
