#include "fsserver/ext4/directory.h"

#include <dirent.h>

#include <algorithm>
#include <cstring>

#include "base/log.h"

namespace iomapfs::ext4 {
namespace {

// Hash versions as stored in dx_root_info (ext4 disk format, "Hash Tree Directories").
constexpr uint8_t kHashLegacy = 0;
constexpr uint8_t kHashHalfMd4 = 1;
constexpr uint8_t kHashTea = 2;
constexpr uint8_t kUnsignedDelta = 3;       // *_UNSIGNED = version + 3
constexpr size_t kDxRootInfoOffset = 24;    // after the "." (12) and ".." (12) fake dirents
constexpr size_t kDxNodeEntriesOffset = 8;  // after the fake dirent of a dx_node
constexpr size_t kDirentHeader = 8;

uint32_t Le32At(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return ext2fs_le32_to_cpu(v);
}
uint16_t Le16At(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return ext2fs_le16_to_cpu(v);
}

// Name comparison as ext4_match(): bytes, or the encoding's casefold for casefolded dirs.
bool NameMatches(const ext2fs_nls_table* charset, std::string_view want, const char* name,
                 size_t name_len) {
  if (charset != nullptr) {
    return ext2fs_casefold_cmp(charset, reinterpret_cast<const unsigned char*>(want.data()),
                               want.size(), reinterpret_cast<const unsigned char*>(name),
                               name_len) == 0;
  }
  return want.size() == name_len && std::memcmp(want.data(), name, name_len) == 0;
}

// The charset to compare with in `inode`'s directory, or nullptr for byte comparison.
const ext2fs_nls_table* DirCharset(ext2_filsys fs, const InodeBuf& inode) {
  if ((inode.flags() & kFlagCasefold) != 0 && fs->encoding != nullptr) return fs->encoding;
  return nullptr;
}

// Scans one directory block (a leaf) for `name`, validating every entry as
// ext4_check_dir_entry() does.
// Errors: EUCLEAN (malformed entry).
Result<std::optional<DirHit>> ScanBlock(ext2_filsys fs, const char* buf, std::string_view name,
                                        const ext2fs_nls_table* charset) {
  const uint32_t bs = fs->blocksize;
  uint32_t off = 0;
  while (off + kDirentHeader <= bs) {
    auto* de = reinterpret_cast<ext2_dir_entry*>(const_cast<char*>(buf) + off);
    unsigned int rec_len = 0;
    if (ext2fs_get_rec_len(fs, de, &rec_len) != 0) return Unexpected(kEfsCorrupted);
    uint32_t name_len = ext2fs_dirent_name_len(de);
    if (rec_len < 12 || rec_len % 4 != 0 || rec_len < ((kDirentHeader + name_len + 3) & ~3u) ||
        off + rec_len > bs || de->inode > fs->super->s_inodes_count) {
      return Unexpected(kEfsCorrupted);
    }
    if (de->inode != 0 && NameMatches(charset, name, de->name, name_len)) {
      return std::optional<DirHit>(
          DirHit{Ino(de->inode), static_cast<uint8_t>(ext2fs_dirent_file_type(de))});
    }
    off += rec_len;
  }
  return std::optional<DirHit>();
}

// Reads logical block `lblk` of directory `dir` into `buf` (checksums verified by libext2fs).
// Errors: EUCLEAN (hole, past i_size, bad checksum), EIO.
Result<void> ReadDirBlock(ext2_filsys fs, Ino dir, InodeBuf& inode, uint64_t lblk, char* buf) {
  uint64_t nblocks = InodeSize(fs, inode) / fs->blocksize;
  if (lblk >= nblocks) return Unexpected(kEfsCorrupted);
  blk64_t pblk = 0;
  errcode_t err = ext2fs_bmap2(fs, static_cast<ext2_ino_t>(dir.value()), inode.base(), nullptr, 0,
                               lblk, nullptr, &pblk);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  if (pblk == 0) return Unexpected(kEfsCorrupted);  // "Directory hole found"
  err = ext2fs_read_dir_block4(fs, pblk, buf, 0, static_cast<ext2_ino_t>(dir.value()));
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return {};
}

// One level of a dx walk: the block's entry array and where we are in it.
struct DxFrame {
  size_t entries_off = 0;  // byte offset of the dx_countlimit / entry 0 in `buf`
  uint32_t count = 0;
  uint32_t at = 0;
  std::vector<char> buf;

  uint32_t Hash(uint32_t i) const { return i == 0 ? 0 : Le32At(&buf[entries_off + 8 * i]); }
  uint32_t Block(uint32_t i) const {
    return Le32At(&buf[entries_off + 8 * i + 4]) & 0x0fffffff;  // dx_get_block()
  }
};

enum class DxStatus { kFound, kNotFound, kUnusable };
struct DxOutcome {
  DxStatus status = DxStatus::kUnusable;
  DirHit hit;
};

// Validates the countlimit at `off` of `frame` against `limit` and positions the frame on the
// last entry whose hash is <= `hash` (dx_probe's binary search).
bool DxPosition(DxFrame& frame, size_t off, uint32_t limit, uint32_t hash, uint32_t bs) {
  if (off + 4 > bs) return false;
  uint32_t lim = Le16At(&frame.buf[off]);
  uint32_t count = Le16At(&frame.buf[off + 2]);
  if (lim != limit || count == 0 || count > limit || off + 8ull * count > bs) return false;
  frame.entries_off = off;
  frame.count = count;
  // entries[0] carries no hash (it holds the countlimit); search entries[1..count-1].
  int64_t p = 1, q = static_cast<int64_t>(count) - 1;
  while (p <= q) {
    int64_t m = p + (q - p) / 2;
    if (frame.Hash(static_cast<uint32_t>(m)) > hash) {
      q = m - 1;
    } else {
      p = m + 1;
    }
  }
  frame.at = static_cast<uint32_t>(p - 1);
  return true;
}

Result<DxOutcome> DxFind(ext2_filsys fs, Ino dir, InodeBuf& inode, std::string_view name) {
  const uint32_t bs = fs->blocksize;
  const bool csum = ext2fs_has_feature_metadata_csum(fs->super);
  DxOutcome unusable;

  std::vector<DxFrame> frames(1);
  frames[0].buf.resize(bs);
  IOMAPFS_TRY(ReadDirBlock(fs, dir, inode, 0, frames[0].buf.data()));
  const char* root = frames[0].buf.data();
  uint8_t hash_version = static_cast<uint8_t>(root[kDxRootInfoOffset + 4]);
  uint8_t info_length = static_cast<uint8_t>(root[kDxRootInfoOffset + 5]);
  uint8_t levels = static_cast<uint8_t>(root[kDxRootInfoOffset + 6]);
  uint8_t unused_flags = static_cast<uint8_t>(root[kDxRootInfoOffset + 7]);
  if (hash_version != kHashLegacy && hash_version != kHashHalfMd4 && hash_version != kHashTea) {
    return unusable;  // includes SIPHASH (encrypted+casefolded directories)
  }
  if ((unused_flags & 1) != 0) return unusable;
  uint8_t max_levels = ext2fs_has_feature_largedir(fs->super) ? 3 : 2;
  if (levels >= max_levels) return unusable;

  int version = hash_version;
  if ((fs->super->s_flags & EXT2_FLAGS_UNSIGNED_HASH) != 0) version += kUnsignedDelta;
  const ext2fs_nls_table* charset = DirCharset(fs, inode);
  ext2_dirhash_t hash = 0, minor = 0;
  errcode_t err = ext2fs_dirhash2(version, name.data(), static_cast<int>(name.size()), charset,
                                  charset != nullptr ? kFlagCasefold : 0, fs->super->s_hash_seed,
                                  &hash, &minor);
  if (err != 0) return unusable;
  hash &= ~1u;

  // dx_root_limit() / dx_node_limit(): one entry fewer when a dx_tail holds the checksum.
  size_t root_entries = kDxRootInfoOffset + info_length;
  uint32_t root_limit = static_cast<uint32_t>((bs - root_entries) / 8) - (csum ? 1 : 0);
  uint32_t node_limit = static_cast<uint32_t>((bs - kDxNodeEntriesOffset) / 8) - (csum ? 1 : 0);
  if (root_entries >= bs || !DxPosition(frames[0], root_entries, root_limit, hash, bs)) {
    return unusable;
  }
  // Descends from frames[from] to the leaf, positioning each node on `hash` (or on its first
  // entry when `first`).
  auto descend = [&](size_t from, bool first) -> Result<bool> {
    for (size_t level = from; level < levels; ++level) {
      DxFrame& parent = frames[level];
      DxFrame& node = frames[level + 1];
      node.buf.resize(bs);
      IOMAPFS_TRY(ReadDirBlock(fs, dir, inode, parent.Block(parent.at), node.buf.data()));
      if (!DxPosition(node, kDxNodeEntriesOffset, node_limit, hash, bs)) return false;
      if (first) node.at = 0;
    }
    return true;
  };
  frames.resize(levels + 1u);
  IOMAPFS_ASSIGN_OR_RETURN(bool ok, descend(0, false));
  if (!ok) return unusable;

  std::vector<char> leaf(bs);
  uint64_t visited = 0;
  const uint64_t max_visits = InodeSize(fs, inode) / bs + 1;
  for (;;) {
    const DxFrame& bottom = frames[levels];
    IOMAPFS_TRY(ReadDirBlock(fs, dir, inode, bottom.Block(bottom.at), leaf.data()));
    IOMAPFS_ASSIGN_OR_RETURN(std::optional<DirHit> hit, ScanBlock(fs, leaf.data(), name, charset));
    if (hit) {
      hit->lblk = bottom.Block(bottom.at);
      return DxOutcome{DxStatus::kFound, *hit};
    }
    if (++visited > max_visits) return Unexpected(kEfsCorrupted);  // a cycle in the tree
    // ext4_htree_next_block(): advance the deepest frame that has entries left.
    int level = levels;
    while (level >= 0 && frames[level].at + 1 >= frames[level].count) --level;
    if (level < 0) break;
    frames[level].at++;
    uint32_t bhash = frames[level].Hash(frames[level].at);
    if ((bhash & ~1u) != hash) break;
    IOMAPFS_ASSIGN_OR_RETURN(bool ok2, descend(static_cast<size_t>(level), true));
    if (!ok2) return unusable;
  }
  return DxOutcome{DxStatus::kNotFound, {}};
}

// "." and ".." live in the first block (or the inline header), like __ext4_find_entry's
// special case: scan it instead of hashing.
Result<std::optional<DirHit>> FindDots(ext2_filsys fs, Ino dir, InodeBuf& inode,
                                       std::string_view name) {
  std::vector<char> buf(fs->blocksize);
  IOMAPFS_TRY(ReadDirBlock(fs, dir, inode, 0, buf.data()));
  IOMAPFS_ASSIGN_OR_RETURN(std::optional<DirHit> hit, ScanBlock(fs, buf.data(), name, nullptr));
  if (hit) hit->lblk = 0;
  return hit;
}

struct IterateState {
  ext2_filsys fs = nullptr;
  // Collect mode.
  std::vector<DirEntry>* out = nullptr;
  // Search mode.
  std::string_view want;
  const ext2fs_nls_table* charset = nullptr;
  std::optional<DirHit> hit;
};

int CollectEntry(ext2_ino_t /*dir*/, int /*entry*/, ext2_dir_entry* de, int /*offset*/,
                 int /*blocksize*/, char* /*buf*/, void* priv) {
  auto* st = static_cast<IterateState*>(priv);
  if (de->inode == 0) return 0;
  int name_len = ext2fs_dirent_name_len(de);
  if (st->out != nullptr) {
    st->out->push_back(DirEntry{Ino(de->inode), static_cast<uint32_t>(ext2fs_dirent_file_type(de)),
                                std::string(de->name, name_len)});
    return 0;
  }
  if (NameMatches(st->charset, st->want, de->name, name_len)) {
    st->hit = DirHit{Ino(de->inode), static_cast<uint8_t>(ext2fs_dirent_file_type(de))};
    return DIRENT_ABORT;
  }
  return 0;
}

// Walks the whole directory with libext2fs (which verifies block checksums and handles inline
// data), calling CollectEntry for each used entry.
Result<void> Iterate(ext2_filsys fs, Ino dir, const InodeBuf& inode, IterateState* st) {
  st->fs = fs;
  // DIRENT_FLAG_INCLUDE_INLINE_DATA makes libext2fs fail (EXT2_ET_NO_INLINE_DATA) on a block
  // directory: pass it only for inline-data directories.
  int flags = (inode.flags() & kFlagInlineData) != 0 ? DIRENT_FLAG_INCLUDE_INLINE_DATA : 0;
  errcode_t err = ext2fs_dir_iterate2(fs, static_cast<ext2_ino_t>(dir.value()), flags, nullptr,
                                      CollectEntry, st);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return {};
}

// Every used entry of `dir` in on-disk order; DirEntry::type holds the raw EXT2_FT_* value.
Result<std::vector<DirEntry>> ListRaw(ext2_filsys fs, Ino dir, const InodeBuf& inode) {
  std::vector<DirEntry> entries;
  IterateState st;
  st.out = &entries;
  IOMAPFS_TRY(Iterate(fs, dir, inode, &st));
  return entries;
}

}  // namespace

uint32_t DtypeFromFileType(ext2_filsys fs, uint8_t file_type) {
  if (!ext2fs_has_feature_filetype(fs->super)) return DT_UNKNOWN;
  switch (file_type) {
    case EXT2_FT_REG_FILE:
      return DT_REG;
    case EXT2_FT_DIR:
      return DT_DIR;
    case EXT2_FT_CHRDEV:
      return DT_CHR;
    case EXT2_FT_BLKDEV:
      return DT_BLK;
    case EXT2_FT_FIFO:
      return DT_FIFO;
    case EXT2_FT_SOCK:
      return DT_SOCK;
    case EXT2_FT_SYMLINK:
      return DT_LNK;
    default:
      return DT_UNKNOWN;
  }
}

Result<std::vector<DirEntry>> ListDirectory(const ext2::Guard& g, Ino dir, const InodeBuf& inode) {
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, ListRaw(g.fs(), dir, inode));
  const bool inline_dir = (inode.flags() & kFlagInlineData) != 0;
  for (DirEntry& e : entries) {
    e.type = DtypeFromFileType(g.fs(), static_cast<uint8_t>(e.type));
    // libext2fs synthesizes "." and ".." of inline directories without a file type; ext4's
    // ext4_read_inline_dir() emits them as DT_DIR.
    if (inline_dir && (e.name == "." || e.name == "..")) e.type = DT_DIR;
  }
  // "." then ".." first; everything else keeps its on-disk order.
  auto rank = [](const DirEntry& e) { return e.name == "." ? 0 : e.name == ".." ? 1 : 2; };
  std::stable_sort(entries.begin(), entries.end(),
                   [&](const DirEntry& a, const DirEntry& b) { return rank(a) < rank(b); });
  return entries;
}

struct DirIndex::NameIndex {
  std::unordered_map<std::string, DirHit> names;
};

DirIndex::DirIndex(Limits limits) : limits_(limits) {}
DirIndex::~DirIndex() = default;

Result<std::optional<DirHit>> DirIndex::Find(const ext2::Guard& g, Ino dir, const InodeBuf& inode,
                                             std::string_view name) {
  ext2_filsys fs = g.fs();
  InodeBuf inode_copy = inode;  // libext2fs wants a mutable inode for bmap
  bool dots = name == "." || name == "..";
  bool inline_dir = (inode.flags() & kFlagInlineData) != 0;
  bool is_dx =
      ext2fs_has_feature_dir_index(fs->super) && (inode.flags() & kFlagIndex) != 0 && !inline_dir;
  if (is_dx) {
    if (dots) return FindDots(fs, dir, inode_copy, name);
    IOMAPFS_ASSIGN_OR_RETURN(DxOutcome outcome, DxFind(fs, dir, inode_copy, name));
    if (outcome.status != DxStatus::kUnusable) {
      ++stats_.dx_lookups;
      if (outcome.status == DxStatus::kFound) return std::optional<DirHit>(outcome.hit);
      return std::optional<DirHit>();
    }
    ++stats_.dx_fallbacks;
    LOG_DEBUG("directory %llu: htree unusable, using a linear index",
              static_cast<unsigned long long>(dir.value()));
  }
  if (const ext2fs_nls_table* charset = DirCharset(fs, inode); charset != nullptr) {
    IterateState st;
    st.want = name;
    st.charset = charset;
    IOMAPFS_TRY(Iterate(fs, dir, inode, &st));
    ++stats_.linear_scans;
    return st.hit;
  }
  IOMAPFS_ASSIGN_OR_RETURN(std::shared_ptr<const NameIndex> index, GetOrBuild(g, dir, inode));
  auto it = index->names.find(std::string(name));
  if (it == index->names.end()) return std::optional<DirHit>();
  return std::optional<DirHit>(it->second);
}

Result<std::shared_ptr<const DirIndex::NameIndex>> DirIndex::GetOrBuild(const ext2::Guard& g,
                                                                        Ino dir,
                                                                        const InodeBuf& inode) {
  if (auto it = slots_.find(dir); it != slots_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru_pos);
    ++stats_.index_hits;
    return it->second.index;
  }
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, ListRaw(g.fs(), dir, inode));
  auto index = std::make_shared<NameIndex>();
  index->names.reserve(entries.size());
  for (DirEntry& e : entries) {
    // The first of duplicate names wins, as in a linear search.
    index->names.emplace(std::move(e.name), DirHit{e.ino, static_cast<uint8_t>(e.type)});
  }
  ++stats_.index_builds;
  if (index->names.size() <= limits_.max_names && limits_.max_dirs > 0) Insert(dir, index);
  return std::shared_ptr<const NameIndex>(std::move(index));
}

void DirIndex::NoteAdded(const ext2::Guard& /*g*/, Ino dir, std::string_view name,
                         const DirHit& hit) {
  auto it = slots_.find(dir);
  if (it == slots_.end()) return;
  DirHit h = hit;
  h.lblk = -1;
  if (it->second.index->names.insert_or_assign(std::string(name), h).second) ++cached_names_;
}

void DirIndex::NoteRemoved(const ext2::Guard& /*g*/, Ino dir, std::string_view name) {
  auto it = slots_.find(dir);
  if (it == slots_.end()) return;
  if (it->second.index->names.erase(std::string(name)) > 0) --cached_names_;
}

void DirIndex::Insert(Ino dir, std::shared_ptr<NameIndex> index) {
  size_t n = index->names.size();
  while (!slots_.empty() &&
         (slots_.size() >= limits_.max_dirs || cached_names_ + n > limits_.max_names)) {
    EvictOne();
  }
  lru_.push_front(dir);
  cached_names_ += n;
  slots_.emplace(dir, Slot{std::move(index), lru_.begin()});
}

void DirIndex::EvictOne() {
  Ino victim = lru_.back();
  lru_.pop_back();
  auto it = slots_.find(victim);
  cached_names_ -= it->second.index->names.size();
  slots_.erase(it);
}

void DirIndex::Invalidate(const ext2::Guard& /*g*/, Ino dir) {
  auto it = slots_.find(dir);
  if (it == slots_.end()) return;
  cached_names_ -= it->second.index->names.size();
  lru_.erase(it->second.lru_pos);
  slots_.erase(it);
}

DirIndex::Stats DirIndex::stats(const ext2::Guard& /*g*/) const {
  Stats s = stats_;
  s.cached_dirs = slots_.size();
  s.cached_names = cached_names_;
  return s;
}

}  // namespace iomapfs::ext4
