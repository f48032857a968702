// Directory reading: full listings (for OPENDIR snapshots) and name lookup.
//
// Lookup never scans a whole directory per call:
//   - htree directories (EXT2_INDEX_FL with the dir_index feature) are searched like ext4's
//     dx_probe/ext4_dx_find_entry: hash the name (dx_root hash version, the unsigned variant when
//     EXT2_FLAGS_UNSIGNED_HASH is set, s_hash_seed), walk dx_root and dx_node blocks to the leaf,
//     scan it, and continue to the next leaf while the next block's starting hash equals the
//     name's hash (a hash collision run).
//   - other directories get an in-memory name -> (ino, type) index built on first lookup and
//     cached per directory inode in a bounded LRU (by directories and by names).
//   - An htree whose format is unusable (unknown hash version, bad root info, limit/count
//     mismatch, too many levels) falls back to the name index, as ext4 falls back to a linear
//     search on ERR_BAD_DX_DIR. Checksum failures, holes, blocks past i_size and malformed
//     entries are errors (EUCLEAN), as in ext4.
//   - casefolded directories (EXT4_CASEFOLD_FL) compare names with the filesystem's encoding:
//     htree lookups hash the casefolded name; linear ones scan (no index).
// Encrypted directories are served as raw bytes (we hold no keys): names are the on-disk
// ciphertext.
//
// Thread-safety: every function and method REQUIRES the metadata lock (a Guard), which also
// protects the DirIndex cache. Ownership: DirIndex owns its cached indexes.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/result.h"
#include "base/strong_id.h"
#include "ext2/ext2_fs.h"
#include "fsserver/ext4/filesystem.h"
#include "fsserver/ext4/inode.h"

namespace iomapfs::ext4 {

inline constexpr size_t kMaxNameLen = 255;  // EXT4_NAME_LEN

struct DirHit {
  Ino ino;
  uint8_t file_type = 0;  // EXT2_FT_* from the dirent (0 without the filetype feature)
  // The logical directory block holding the entry when the lookup knows it (htree walks and
  // "." / ".."), else -1.
  int64_t lblk = -1;
};

// DT_* for a dirent's EXT2_FT_* value; DT_UNKNOWN without the filetype feature (get_dtype()).
uint32_t DtypeFromFileType(ext2_filsys fs, uint8_t file_type);

// Lists every entry of directory `dir` in on-disk order, "." and ".." first. Inline-data
// directories included.
// REQUIRES: g holds the metadata lock; `inode` is dir's inode and a directory.
// Errors: EUCLEAN (checksum, malformed entries), EIO.
Result<std::vector<DirEntry>> ListDirectory(const ext2::Guard& g, Ino dir, const InodeBuf& inode);

class DirIndex {
 public:
  struct Limits {
    size_t max_dirs = 256;        // cached directory indexes
    size_t max_names = 1u << 20;  // names over all cached indexes
  };
  struct Stats {
    uint64_t dx_lookups = 0;    // lookups answered by the htree walk
    uint64_t dx_fallbacks = 0;  // htree unusable: served by the name index instead
    uint64_t index_builds = 0;  // name indexes built (directory read in full)
    uint64_t index_hits = 0;    // lookups answered by a cached name index
    uint64_t linear_scans = 0;  // lookups answered by a scan (casefold, oversized)
    size_t cached_dirs = 0;
    size_t cached_names = 0;
  };

  explicit DirIndex(Limits limits);
  DirIndex() : DirIndex(Limits{}) {}
  ~DirIndex();
  DirIndex(const DirIndex&) = delete;
  DirIndex& operator=(const DirIndex&) = delete;

  // Finds `name` in directory `dir` ("." and ".." included).
  // REQUIRES: g holds the metadata lock; `inode` is dir's inode and a directory;
  //           1 <= name.size() <= kMaxNameLen.
  // Returns: the entry, or std::nullopt if there is none of that name.
  // Errors: EUCLEAN (checksum, malformed directory), EIO.
  Result<std::optional<DirHit>> Find(const ext2::Guard& g, Ino dir, const InodeBuf& inode,
                                     std::string_view name);

  // Drops the cached index of `dir` (it changed or the kernel forgot it).
  // REQUIRES: g holds the metadata lock.
  void Invalidate(const ext2::Guard& g, Ino dir);

  // Keep a cached index of `dir` in step with an entry added, removed or retargeted on disk
  // (no-ops when `dir` has no cached index). REQUIRES: g holds the metadata lock.
  void NoteAdded(const ext2::Guard& g, Ino dir, std::string_view name, const DirHit& hit);
  void NoteRemoved(const ext2::Guard& g, Ino dir, std::string_view name);

  // REQUIRES: g holds the metadata lock.
  Stats stats(const ext2::Guard& g) const;

 private:
  struct NameIndex;
  struct Slot {
    std::shared_ptr<NameIndex> index;
    std::list<Ino>::iterator lru_pos;
  };

  Result<std::shared_ptr<const NameIndex>> GetOrBuild(const ext2::Guard& g, Ino dir,
                                                      const InodeBuf& inode);
  void Insert(Ino dir, std::shared_ptr<NameIndex> index);
  void EvictOne();

  Limits limits_;
  std::unordered_map<Ino, Slot> slots_;
  std::list<Ino> lru_;  // front = most recently used
  size_t cached_names_ = 0;
  Stats stats_;
};

}  // namespace iomapfs::ext4
