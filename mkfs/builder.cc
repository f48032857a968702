#include "mkfs/builder.h"

extern "C" {
#include <e2p/e2p.h>
}
extern "C" {
#include <et/com_err.h>
}
#include <ext2fs/ext2fs.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

#include "base/unique_fd.h"
#include "ext2/ext2_fs.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "iomapfs-mkfs lays out directory blocks in host byte order: little-endian hosts only"
#endif

namespace iomapfs::mkfs {
namespace {

constexpr uint64_t kMiB = 1ULL << 20;
constexpr uint32_t kMaxInitExtentLen = EXT_INIT_MAX_LEN;  // 32768 blocks
constexpr size_t kCopyChunk = 8 << 20;
constexpr uint32_t kFlexBgSize = 16;         // mke2fs flex_bg_size default
constexpr uint32_t kLostFoundBytes = 16384;  // mke2fs sizes lost+found to 16 KiB
constexpr size_t kFastSymlinkMax = sizeof(ext2_inode::i_block);  // 60 bytes

// Registers libext2fs's message table with com_err once, so error_message() names the error.
void EnsureErrorTable() {
  static const bool done = [] {
    initialize_ext2_error_table();
    return true;
  }();
  (void)done;
}

// Converts a libext2fs error for the caller: errno plus a message naming the step.
Result<void> Check(errcode_t code, const std::string& what, std::string* why) {
  if (code == 0) return {};
  EnsureErrorTable();
  *why = what + ": " + error_message(code);
  int err = ext2::ErrnoFromErrcode(code);
  if (code == EXT2_ET_BLOCK_ALLOC_FAIL || code == EXT2_ET_INODE_ALLOC_FAIL ||
      code == EXT2_ET_EA_NO_SPACE || code == EXT2_ET_DIR_NO_SPACE) {
    err = ENOSPC;
  }
  return Unexpected(err);
}

uint32_t Log2(uint32_t v) {
  uint32_t r = 0;
  while (v > 1) v >>= 1, ++r;
  return r;
}

uint64_t DivCeil(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

uint8_t FileType(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return EXT2_FT_REG_FILE;
    case S_IFDIR:
      return EXT2_FT_DIR;
    case S_IFLNK:
      return EXT2_FT_SYMLINK;
    case S_IFCHR:
      return EXT2_FT_CHRDEV;
    case S_IFBLK:
      return EXT2_FT_BLKDEV;
    case S_IFIFO:
      return EXT2_FT_FIFO;
    case S_IFSOCK:
      return EXT2_FT_SOCK;
  }
  return EXT2_FT_UNKNOWN;
}

// A run of blocks of a file: logical [lblk, lblk + len) at physical pblk.
struct Piece {
  uint64_t lblk = 0;
  uint64_t pblk = 0;
  uint64_t len = 0;
};

// A file's data ranges rounded out to whole blocks and merged: [first, end) block ranges.
std::vector<std::pair<uint64_t, uint64_t>> BlockRanges(const SourceNode& node, uint32_t bs) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (const DataRange& r : node.data) {
    uint64_t first = r.offset / bs;
    uint64_t end = DivCeil(r.offset + r.length, bs);
    if (!out.empty() && first <= out.back().second) {
      out.back().second = std::max(out.back().second, end);
    } else {
      out.emplace_back(first, end);
    }
  }
  return out;
}

bool IsInlineCandidate(const SourceNode& node, const FeatureSet& f) {
  return (f.incompat & EXT4_FEATURE_INCOMPAT_INLINE_DATA) && node.st.st_size > 0 &&
         static_cast<uint64_t>(node.st.st_size) <= EXT4_MIN_INLINE_DATA_SIZE &&
         node.data.size() == 1 && node.data[0].offset == 0 &&
         node.data[0].length == static_cast<uint64_t>(node.st.st_size);
}

uint32_t DirRecLen(size_t name_len) { return static_cast<uint32_t>((8 + name_len + 3) & ~3U); }

struct DirEntryOut {
  std::string_view name;
  uint32_t ino = 0;
  uint8_t type = 0;
};

// Lays out directory entries into blocks in order: each block is filled until the next entry
// does not fit, the last entry of a block absorbs its free space, and with metadata_csum each
// block ends in a 12-byte checksum tail (ext4 disk format, "Linear (Classic) Directories").
// At least `min_blocks` blocks, extra ones holding one empty entry. Fills *out (if not null)
// with the blocks, tails initialized but not yet checksummed. Returns: the number of blocks.
uint64_t LayoutDirectory(const std::vector<DirEntryOut>& entries, uint32_t bs, bool csum,
                         uint64_t min_blocks, std::string* out) {
  const uint32_t usable = bs - (csum ? sizeof(ext2_dir_entry_tail) : 0);
  uint64_t blocks = 0;
  uint32_t pos = usable;  // forces a first block
  size_t last = 0;        // offset in *out of the last entry of the current block
  auto start_block = [&]() {
    if (out != nullptr && blocks > 0) {
      auto* de = reinterpret_cast<ext2_dir_entry_2*>(out->data() + last);
      de->rec_len = static_cast<uint16_t>(de->rec_len + (usable - pos));
    }
    ++blocks;
    pos = 0;
    if (out != nullptr) {
      out->resize(blocks * bs, '\0');
      if (csum) {
        auto* tail = reinterpret_cast<ext2_dir_entry_tail*>(out->data() + blocks * bs -
                                                            sizeof(ext2_dir_entry_tail));
        tail->det_rec_len = sizeof(ext2_dir_entry_tail);
        tail->det_reserved_name_len = EXT2_DIR_NAME_LEN_CSUM;
      }
    }
  };
  for (const DirEntryOut& e : entries) {
    uint32_t rec = DirRecLen(e.name.size());
    if (pos + rec > usable) start_block();
    if (out != nullptr) {
      size_t off = (blocks - 1) * bs + pos;
      auto* de = reinterpret_cast<ext2_dir_entry_2*>(out->data() + off);
      de->inode = e.ino;
      de->rec_len = static_cast<uint16_t>(rec);
      de->name_len = static_cast<uint8_t>(e.name.size());
      de->file_type = e.type;
      memcpy(de->name, e.name.data(), e.name.size());
      last = off;
    }
    pos += rec;
  }
  while (blocks < min_blocks) {
    start_block();
    if (out != nullptr) {
      size_t off = (blocks - 1) * bs;
      auto* de = reinterpret_cast<ext2_dir_entry_2*>(out->data() + off);
      de->rec_len = 12;  // an empty entry; grows to the whole block below
      last = off;
    }
    pos = 12;
  }
  if (out != nullptr && blocks > 0) {
    auto* de = reinterpret_cast<ext2_dir_entry_2*>(out->data() + last);
    de->rec_len = static_cast<uint16_t>(de->rec_len + (usable - pos));
  }
  return blocks;
}

uint64_t LostFoundBlocks(uint32_t bs) {
  // mke2fs: grow until 16 KiB, at least 2 blocks, at most EXT2_NDIR_BLOCKS.
  uint64_t blocks = std::max<uint64_t>(kLostFoundBytes / bs, 2);
  return std::min<uint64_t>(blocks, EXT2_NDIR_BLOCKS);
}

// Extent or indirect-block overhead of a file with `nblocks` data blocks in `nranges` runs.
uint64_t MappingOverhead(uint64_t nblocks, uint64_t nranges, uint32_t bs, bool extents) {
  if (extents) {
    uint64_t extents_count = nranges + nblocks / kMaxInitExtentLen;
    if (extents_count <= 4) return 0;
    uint64_t per_block = (bs - sizeof(ext3_extent_header)) / sizeof(ext3_extent);
    uint64_t leaves = DivCeil(extents_count, per_block);
    return leaves + (leaves > 4 ? DivCeil(leaves, per_block) + 1 : 0);
  }
  if (nblocks <= EXT2_NDIR_BLOCKS) return 0;
  uint64_t per = bs / 4;
  uint64_t rest = nblocks - EXT2_NDIR_BLOCKS;
  return DivCeil(rest, per) + DivCeil(rest, per * per) + DivCeil(rest, per * per * per) + 2;
}

uint64_t XattrBytes(const SourceNode& node) {
  uint64_t total = 0;
  for (const auto& [name, value] : node.xattrs) {
    total +=
        ((sizeof(ext2_ext_attr_entry) + name.size() + 3) & ~3ULL) + ((value.size() + 3) & ~3ULL);
  }
  return total;
}

std::vector<DirEntryOut> EntriesForEstimate(const SourceTree& tree, const SourceNode& dir,
                                            bool is_root) {
  std::vector<DirEntryOut> entries = {{".", 0, 0}, {"..", 0, 0}};
  if (is_root) entries.push_back({"lost+found", 0, 0});
  for (size_t c : dir.children) {
    if (is_root && tree.nodes[c].name == "lost+found") continue;
    entries.push_back({tree.nodes[c].name, 0, 0});
  }
  return entries;
}

void RandomBytes(uint8_t* out, size_t n) {
  while (n > 0) {
    ssize_t got = getrandom(out, n, 0);
    if (got <= 0) continue;
    out += got;
    n -= static_cast<size_t>(got);
  }
}

// Version 4 (random) UUID bits.
void MakeUuidV4(uint8_t* u) {
  u[6] = static_cast<uint8_t>((u[6] & 0x0f) | 0x40);
  u[8] = static_cast<uint8_t>((u[8] & 0x3f) | 0x80);
}

// Builds the superblock template and runs ext2fs_initialize on `path`.
Result<ext2_filsys> InitFs(const std::string& path, int flags, const MkfsOptions& o, const Plan& p,
                           std::string* why) {
  ext2_super_block param{};
  param.s_log_block_size = Log2(p.block_size) - EXT2_MIN_BLOCK_LOG_SIZE;
  ext2fs_blocks_count_set(&param, p.blocks);
  param.s_inodes_count = static_cast<uint32_t>(std::min<uint64_t>(p.inodes, UINT32_MAX));
  param.s_rev_level = EXT2_DYNAMIC_REV;
  param.s_inode_size = static_cast<uint16_t>(o.inode_size);
  param.s_feature_compat = p.features.compat;
  param.s_feature_incompat = p.features.incompat;
  param.s_feature_ro_compat = p.features.ro_compat;
  if (ext2fs_has_feature_flex_bg(&param)) param.s_log_groups_per_flex = Log2(kFlexBgSize);
  if (ext2fs_has_feature_64bit(&param)) param.s_desc_size = EXT2_MIN_DESC_SIZE_64BIT;
  // As mke2fs: a filesystem beyond 2^32 blocks cannot have a resize inode.
  if (p.blocks > UINT32_MAX) ext2fs_clear_feature_resize_inode(&param);
  ext2fs_r_blocks_count_set(&param, static_cast<blk64_t>(o.reserved_percent * p.blocks / 100.0));
  param.s_default_mount_opts = EXT2_DEFM_XATTR_USER | EXT2_DEFM_ACL;
  ext2_filsys fs = nullptr;
  errcode_t rc = ext2fs_initialize(path.c_str(), flags, &param, unix_io_manager, &fs);
  if (rc == EXT2_ET_TOOSMALL) {
    *why = "the size is too small for a filesystem with these parameters";
    return Unexpected(EINVAL);
  }
  if (rc == EXT2_ET_TOO_MANY_INODES) {
    *why = "too many inodes requested for this size (-N/-i)";
    return Unexpected(EINVAL);
  }
  IOMAPFS_TRY(Check(rc, "cannot set up the superblock of " + path, why));
  return fs;
}

struct Capacity {
  uint64_t free_blocks = 0;
  uint64_t free_inodes = 0;
};

// What is left for content in a filesystem of `plan` after the group tables, journal, reserved
// inodes and lost+found. Writes nothing (initializes on /dev/null and frees).
Result<Capacity> Measure(const MkfsOptions& o, const Plan& plan, std::string* why) {
  IOMAPFS_ASSIGN_OR_RETURN(ext2_filsys fs, InitFs("/dev/null", EXT2_FLAG_64BITS, o, plan, why));
  std::unique_ptr<struct_ext2_filsys, void (*)(ext2_filsys)> guard(fs, ext2fs_free);
  IOMAPFS_TRY(Check(ext2fs_allocate_tables(fs), "cannot allocate group tables", why));
  Capacity cap;
  uint64_t free_blocks = ext2fs_free_blocks_count(fs->super);
  uint64_t used = 1 + LostFoundBlocks(fs->blocksize) + 1;  // root, lost+found, resize dind
  if (ext2fs_has_feature_journal(fs->super)) {
    ext2fs_journal_params jp{};
    if (ext2fs_get_journal_params(&jp, fs) == 0) {
      used += o.journal_size_mib ? o.journal_size_mib * kMiB / fs->blocksize
                                 : jp.num_journal_blocks + jp.num_fc_blocks;
      used += 1 + DivCeil(jp.num_journal_blocks, 340 * (fs->blocksize / 4));  // extent blocks
    }
  }
  cap.free_blocks = free_blocks > used ? free_blocks - used : 0;
  uint64_t first_ino = EXT2_FIRST_INODE(fs->super);
  cap.free_inodes =
      fs->super->s_inodes_count > first_ino ? fs->super->s_inodes_count - first_ino : 0;
  return cap;
}

class Builder {
 public:
  Builder(const MkfsOptions& o, const Plan& plan, const BuildTarget& target, Progress* progress,
          std::string* why)
      : o_(o), plan_(plan), target_(target), progress_(progress), why_(why) {}
  ~Builder() {
    if (fs_ != nullptr) ext2fs_free(fs_);
  }
  Builder(const Builder&) = delete;
  Builder& operator=(const Builder&) = delete;

  Result<BuildSummary> Run(const SourceTree* tree);

 private:
  Result<void> SetUpSuperblock();
  Result<void> CreateMetadata();
  Result<void> PrecheckSpace(const SourceTree& tree);
  Result<ext2_ino_t> NewInode(ext2_ino_t parent, mode_t mode);
  void InitInode(ext2_inode_large* inode, const struct stat& st, uint32_t links);
  void SetTimes(ext2_inode_large* inode, const SourceNode* node);
  void EncodeTime(int64_t sec, uint32_t nsec, __u32* lo, __u32* extra);
  Result<void> WriteInode(ext2_ino_t ino, const ext2_inode_large& inode);
  Result<std::vector<Piece>> Allocate(const std::vector<std::pair<uint64_t, uint64_t>>& ranges);
  Result<void> MapPieces(ext2_ino_t ino, ext2_inode_large* inode, const std::vector<Piece>& pieces);
  Result<void> WritePieces(const std::vector<Piece>& pieces, int src_fd, uint64_t src_size,
                           const std::string& src_path, const std::string* buffer);
  Result<void> SetXattrs(ext2_ino_t ino, const SourceNode& node);
  Result<ext2_ino_t> CreateNode(const SourceTree& tree, size_t idx, ext2_ino_t parent);
  Result<void> CreateRegular(const SourceNode& node, ext2_ino_t ino, uint32_t links);
  Result<void> CreateSymlink(const SourceNode& node, ext2_ino_t ino, uint32_t links);
  Result<void> CreateSpecial(const SourceNode& node, ext2_ino_t ino, uint32_t links);
  Result<void> FillDirectory(const SourceTree* tree, size_t idx, ext2_ino_t ino, ext2_ino_t parent);
  Result<void> WriteDirectory(ext2_ino_t ino, ext2_ino_t parent,
                              const std::vector<DirEntryOut>& entries, uint32_t subdirs,
                              const SourceNode* meta, mode_t default_mode, uint64_t min_blocks,
                              bool is_root);
  Result<void> Fail(int err, const std::string& msg) {
    *why_ = msg;
    return Unexpected(err);
  }

  const MkfsOptions& o_;
  const Plan& plan_;
  const BuildTarget& target_;
  Progress* progress_;
  std::string* why_;
  ext2_filsys fs_ = nullptr;
  uint32_t bs_ = 0;
  uint32_t inode_size_ = 0;
  bool csum_ = false;
  bool extents_ = false;
  bool filetype_ = false;
  blk64_t cursor_ = 0;  // allocation goal: files are laid out one after another
  ext2_ino_t lost_found_ino_ = 0;
  std::vector<ext2_ino_t> inode_of_;  // tree node index -> inode
  std::vector<char> inode_buf_;
  std::vector<char> copy_buf_;
  bool warned_xattrs_ = false;
};

Result<void> Builder::SetUpSuperblock() {
  ext2_super_block* sb = fs_->super;
  if (o_.source_date_epoch) {
    fs_->now = static_cast<time_t>(*o_.source_date_epoch);
    sb->s_mkfs_time = sb->s_lastcheck = static_cast<__u32>(*o_.source_date_epoch);
  }
  sb->s_max_mnt_count = -1;  // enable_periodic_fsck = 0
  sb->s_checkinterval = 0;
  if (ext2fs_has_feature_flex_bg(sb) || ext2fs_has_feature_huge_file(sb) ||
      ext2fs_has_feature_gdt_csum(sb) || ext2fs_has_feature_dir_nlink(sb) ||
      ext2fs_has_feature_metadata_csum(sb) || ext2fs_has_feature_extra_isize(sb)) {
    sb->s_kbytes_written = 1;
  }
  // UUID: -U, else random.
  if (!o_.uuid || *o_.uuid == "random" || *o_.uuid == "time") {
    RandomBytes(sb->s_uuid, sizeof(sb->s_uuid));
    MakeUuidV4(sb->s_uuid);
  } else if (*o_.uuid == "null" || *o_.uuid == "clear") {
    memset(sb->s_uuid, 0, sizeof(sb->s_uuid));
  } else {
    auto u = ParseUuid(*o_.uuid);
    memcpy(sb->s_uuid, u->data(), sizeof(sb->s_uuid));
  }
  if (ext2fs_has_feature_csum_seed(sb)) {
    sb->s_checksum_seed = ext2fs_crc32c_le(~0U, sb->s_uuid, sizeof(sb->s_uuid));
  }
  if (ext2fs_has_feature_metadata_csum(sb)) sb->s_checksum_type = EXT2_CRC32C_CHKSUM;
  ext2fs_init_csum_seed(fs_);
  // Directory hashing: half_md4 (mke2fs's default hash_alg) with -E hash_seed, else a seed
  // derived from the UUID when SOURCE_DATE_EPOCH asks for reproducibility, else random.
  sb->s_def_hash_version = EXT2_HASH_HALF_MD4;
  auto* seed = reinterpret_cast<uint8_t*>(sb->s_hash_seed);
  if (o_.hash_seed) {
    auto u = ParseUuid(*o_.hash_seed);
    memcpy(seed, u->data(), 16);
  } else if (o_.source_date_epoch) {
    uint32_t words[4];
    for (uint32_t i = 0; i < 4; ++i) {
      words[i] = ext2fs_crc32c_le(0x9e3779b9U * (i + 1), sb->s_uuid, sizeof(sb->s_uuid));
    }
    memcpy(seed, words, 16);
    MakeUuidV4(seed);
  } else {
    RandomBytes(seed, 16);
    MakeUuidV4(seed);
  }
  if (!o_.label.empty()) {
    memset(sb->s_volume_name, 0, sizeof(sb->s_volume_name));
    memcpy(sb->s_volume_name, o_.label.data(), o_.label.size());
  }
  return {};
}

Result<void> Builder::CreateMetadata() {
  IOMAPFS_TRY(Check(ext2fs_allocate_tables(fs_), "cannot allocate group tables", why_));
  blk64_t overhead = 0;
  IOMAPFS_TRY(Check(ext2fs_count_used_clusters(fs_, fs_->super->s_first_data_block,
                                               ext2fs_blocks_count(fs_->super) - 1, &overhead),
                    "cannot count metadata blocks", why_));
  if (target_.is_device) {
    // As mke2fs: wipe old MD RAID (or other) metadata at the end of the device.
    blk64_t rsv = 65536 / fs_->blocksize;
    blk64_t blocks = ext2fs_blocks_count(fs_->super);
    blk64_t start = blocks & ~(rsv - 1);
    if (start > rsv) start -= rsv;
    if (start > 0) {
      IOMAPFS_TRY(
          Check(ext2fs_zero_blocks2(fs_, start, static_cast<int>(blocks - start), nullptr, nullptr),
                "cannot zero the end of the device", why_));
    }
  }
  // Inode tables: a fresh sparse file reads as zeros, so they are zeroed by construction and
  // the kernel need not zero them (ITABLE_ZEROED). On a device they are left to the kernel's
  // lazy init, as mke2fs does by default: inodes are written whole and e2fsck and the kernel
  // never read past bg_itable_unused.
  for (dgrp_t g = 0; g < fs_->group_desc_count; ++g) {
    if (target_.zeroed) ext2fs_bg_flags_set(fs_, g, EXT2_BG_INODE_ZEROED);
    ext2fs_group_desc_csum_set(fs_, g);
  }
  // The reserved inodes (1 .. s_first_ino - 1) start out zeroed: libext2fs reads some of them
  // back (bad blocks, resize, journal) and on a device they hold stale bytes.
  ext2_inode_large zero{};
  for (ext2_ino_t i = 1; i < EXT2_FIRST_INODE(fs_->super); ++i) IOMAPFS_TRY(WriteInode(i, zero));
  // Root (2), the reserved inodes below s_first_ino, and the bad-block inode (1).
  ext2fs_inode_alloc_stats2(fs_, EXT2_ROOT_INO, +1, 1);
  for (ext2_ino_t i = EXT2_ROOT_INO + 1; i < EXT2_FIRST_INODE(fs_->super); ++i) {
    ext2fs_inode_alloc_stats2(fs_, i, +1, 0);
  }
  ext2fs_inode_alloc_stats2(fs_, EXT2_BAD_INO, +1, 0);
  IOMAPFS_TRY(
      Check(ext2fs_update_bb_inode(fs_, nullptr), "cannot write the bad-block inode", why_));
  if (ext2fs_has_feature_resize_inode(fs_->super)) {
    IOMAPFS_TRY(Check(ext2fs_create_resize_inode(fs_), "cannot create the resize inode", why_));
  }
  if (ext2fs_has_feature_journal(fs_->super)) {
    ext2fs_journal_params jp{};
    errcode_t rc = ext2fs_get_journal_params(&jp, fs_);
    if (o_.journal_size_mib) {
      jp.num_journal_blocks = static_cast<blk_t>(o_.journal_size_mib * kMiB / fs_->blocksize);
      if (jp.num_journal_blocks < 1024) {
        return Fail(EINVAL, "-J size: a journal needs at least 1024 blocks");
      }
      rc = 0;
    }
    if (rc != 0 || jp.num_journal_blocks == 0) {
      // As mke2fs: a filesystem too small for a journal gets none.
      ext2fs_clear_feature_journal(fs_->super);
    } else {
      int flags = EXT2_MKJOURNAL_NO_MNT_CHECK | (target_.zeroed ? EXT2_MKJOURNAL_LAZYINIT : 0);
      IOMAPFS_TRY(Check(ext2fs_add_journal_inode3(fs_, &jp, ~0ULL, flags),
                        "cannot create the journal", why_));
      overhead += jp.num_journal_blocks + jp.num_fc_blocks;
    }
  }
  overhead += fs_->super->s_first_data_block;
  fs_->super->s_overhead_clusters = static_cast<__u32>(overhead);
  // lost+found takes the first ordinary inode (11), as with mke2fs.
  IOMAPFS_ASSIGN_OR_RETURN(lost_found_ino_, NewInode(EXT2_ROOT_INO, S_IFDIR));
  return {};
}

Result<ext2_ino_t> Builder::NewInode(ext2_ino_t parent, mode_t mode) {
  ext2_ino_t ino = 0;
  errcode_t rc = ext2fs_new_inode(fs_, parent, static_cast<int>(mode), nullptr, &ino);
  if (rc == EXT2_ET_INODE_ALLOC_FAIL) {
    IOMAPFS_TRY(Fail(ENOSPC, "out of inodes: the filesystem has " +
                                 std::to_string(fs_->super->s_inodes_count) +
                                 "; use a larger SIZE, -N or a smaller -i"));
  }
  IOMAPFS_TRY(Check(rc, "cannot allocate an inode", why_));
  ext2fs_inode_alloc_stats2(fs_, ino, +1, S_ISDIR(mode) ? 1 : 0);
  return ino;
}

void Builder::EncodeTime(int64_t sec, uint32_t nsec, __u32* lo, __u32* extra) {
  if (inode_size_ <= EXT2_GOOD_OLD_INODE_SIZE || extra == nullptr) {
    sec = std::clamp<int64_t>(sec, INT32_MIN, INT32_MAX);
    *lo = static_cast<__u32>(static_cast<int32_t>(sec));
    return;
  }
  // ext4 extra timestamp: bits 0-1 extend the signed 32-bit seconds (epoch), bits 2-31 nsec.
  sec = std::clamp<int64_t>(sec, INT32_MIN, (1LL << 34) - 1 + INT32_MIN);
  *lo = static_cast<__u32>(static_cast<uint64_t>(sec) & 0xffffffffU);
  uint32_t epoch = static_cast<uint32_t>(((sec - static_cast<int32_t>(*lo)) >> 32) & 3);
  *extra = epoch | (nsec << 2);
}

void Builder::SetTimes(ext2_inode_large* inode, const SourceNode* node) {
  struct Stamp {
    int64_t sec;
    uint32_t nsec;
  };
  Stamp a, m, c, cr;
  if (node != nullptr) {
    a = {node->st.st_atim.tv_sec, static_cast<uint32_t>(node->st.st_atim.tv_nsec)};
    m = {node->st.st_mtim.tv_sec, static_cast<uint32_t>(node->st.st_mtim.tv_nsec)};
    c = {node->st.st_ctim.tv_sec, static_cast<uint32_t>(node->st.st_ctim.tv_nsec)};
    cr = node->has_btime ? Stamp{node->btime_sec, node->btime_nsec} : c;
  } else {
    int64_t now = o_.source_date_epoch ? *o_.source_date_epoch : time(nullptr);
    a = m = c = cr = {now, 0};
  }
  if (o_.source_date_epoch) {
    for (Stamp* s : {&a, &m, &c, &cr}) {
      if (s->sec > *o_.source_date_epoch) *s = {*o_.source_date_epoch, 0};
    }
  }
  bool large = inode_size_ > EXT2_GOOD_OLD_INODE_SIZE;
  EncodeTime(a.sec, a.nsec, &inode->i_atime, large ? &inode->i_atime_extra : nullptr);
  EncodeTime(m.sec, m.nsec, &inode->i_mtime, large ? &inode->i_mtime_extra : nullptr);
  EncodeTime(c.sec, c.nsec, &inode->i_ctime, large ? &inode->i_ctime_extra : nullptr);
  if (large) EncodeTime(cr.sec, cr.nsec, &inode->i_crtime, &inode->i_crtime_extra);
}

void Builder::InitInode(ext2_inode_large* inode, const struct stat& st, uint32_t links) {
  memset(inode, 0, sizeof(*inode));
  inode->i_mode = static_cast<__u16>(st.st_mode);
  inode->i_uid = static_cast<__u16>(st.st_uid);
  ext2fs_set_i_uid_high(*inode, st.st_uid >> 16);
  inode->i_gid = static_cast<__u16>(st.st_gid);
  ext2fs_set_i_gid_high(*inode, st.st_gid >> 16);
  inode->i_links_count = static_cast<__u16>(links);
  if (inode_size_ > EXT2_GOOD_OLD_INODE_SIZE) {
    inode->i_extra_isize = sizeof(ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
  }
}

Result<void> Builder::WriteInode(ext2_ino_t ino, const ext2_inode_large& inode) {
  // Always the whole on-disk inode, so nothing stale survives in the extra space.
  std::fill(inode_buf_.begin(), inode_buf_.end(), 0);
  memcpy(inode_buf_.data(), &inode, std::min<size_t>(sizeof(inode), inode_size_));
  return Check(ext2fs_write_inode_full(fs_, ino, reinterpret_cast<ext2_inode*>(inode_buf_.data()),
                                       inode_size_),
               "cannot write inode " + std::to_string(ino), why_);
}

Result<std::vector<Piece>> Builder::Allocate(
    const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  uint64_t total = 0;
  for (const auto& [first, end] : ranges) total += end - first;
  std::vector<Piece> runs;  // physical runs, lblk unused
  uint64_t remaining = total;
  // One run for the whole file if free space allows it; else first fit from the cursor.
  int flags = EXT2_NEWRANGE_MIN_LENGTH;
  while (remaining > 0) {
    blk64_t pblk = 0, plen = 0;
    errcode_t rc = ext2fs_new_range(fs_, flags, cursor_, remaining, nullptr, &pblk, &plen);
    if (rc == EXT2_ET_BLOCK_ALLOC_FAIL && flags != 0) {
      flags = 0;
      continue;
    }
    if (rc == EXT2_ET_BLOCK_ALLOC_FAIL) {
      IOMAPFS_TRY(Fail(ENOSPC, "out of space: the content does not fit (" +
                                   std::to_string(ext2fs_free_blocks_count(fs_->super)) +
                                   " blocks left); use a larger SIZE or SIZE auto"));
    }
    IOMAPFS_TRY(Check(rc, "cannot allocate blocks", why_));
    uint64_t n = std::min<uint64_t>(plen, remaining);
    ext2fs_block_alloc_stats_range(fs_, pblk, static_cast<blk_t>(n), +1);
    runs.push_back({0, pblk, n});
    cursor_ = pblk + n;
    remaining -= n;
  }
  // Hand the physical runs out to the logical ranges in order.
  std::vector<Piece> pieces;
  size_t r = 0;
  uint64_t used_in_run = 0;
  for (const auto& [first, end] : ranges) {
    uint64_t lblk = first;
    while (lblk < end) {
      uint64_t n = std::min(end - lblk, runs[r].len - used_in_run);
      pieces.push_back({lblk, runs[r].pblk + used_in_run, n});
      lblk += n;
      used_in_run += n;
      if (used_in_run == runs[r].len) ++r, used_in_run = 0;
    }
  }
  return pieces;
}

Result<void> Builder::MapPieces(ext2_ino_t ino, ext2_inode_large* inode,
                                const std::vector<Piece>& pieces) {
  auto* small = reinterpret_cast<ext2_inode*>(inode);
  uint64_t data_blocks = 0;
  for (const Piece& p : pieces) data_blocks += p.len;
  if (extents_) {
    ext2_extent_handle_t handle = nullptr;
    IOMAPFS_TRY(
        Check(ext2fs_extent_open2(fs_, ino, small, &handle), "cannot open extent tree", why_));
    std::unique_ptr<ext2_extent_handle, void (*)(ext2_extent_handle_t)> guard(handle,
                                                                              ext2fs_extent_free);
    // Coalesce pieces that continue each other, then cut at the initialized-extent limit.
    std::vector<Piece> merged;
    for (const Piece& p : pieces) {
      if (!merged.empty() && merged.back().lblk + merged.back().len == p.lblk &&
          merged.back().pblk + merged.back().len == p.pblk) {
        merged.back().len += p.len;
      } else {
        merged.push_back(p);
      }
    }
    for (const Piece& p : merged) {
      for (uint64_t off = 0; off < p.len; off += kMaxInitExtentLen) {
        ext2fs_extent extent{};
        extent.e_lblk = static_cast<blk64_t>(p.lblk + off);
        extent.e_pblk = p.pblk + off;
        extent.e_len = static_cast<__u32>(std::min<uint64_t>(kMaxInitExtentLen, p.len - off));
        IOMAPFS_TRY(Check(ext2fs_extent_insert(handle, EXT2_EXTENT_INSERT_AFTER, &extent),
                          "cannot insert an extent", why_));
        IOMAPFS_TRY(Check(ext2fs_extent_fix_parents(handle), "cannot update extent index", why_));
      }
    }
  } else {
    for (const Piece& p : pieces) {
      for (uint64_t i = 0; i < p.len; ++i) {
        blk64_t pblk = p.pblk + i;
        IOMAPFS_TRY(Check(ext2fs_bmap2(fs_, ino, small, nullptr, BMAP_ALLOC | BMAP_SET, p.lblk + i,
                                       nullptr, &pblk),
                          "cannot map a block", why_));
      }
    }
  }
  IOMAPFS_TRY(Check(ext2fs_iblk_add_blocks(fs_, small, data_blocks), "cannot count blocks", why_));
  return {};
}

Result<void> Builder::WritePieces(const std::vector<Piece>& pieces, int src_fd, uint64_t src_size,
                                  const std::string& src_path, const std::string* buffer) {
  if (copy_buf_.empty()) copy_buf_.resize(kCopyChunk);
  for (const Piece& p : pieces) {
    uint64_t done = 0;
    const uint64_t total = p.len * bs_;
    while (done < total) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(kCopyChunk, total - done));
      uint64_t file_off = p.lblk * bs_ + done;
      size_t want = file_off >= src_size
                        ? 0
                        : static_cast<size_t>(std::min<uint64_t>(n, src_size - file_off));
      size_t got = 0;
      if (buffer != nullptr) {
        memcpy(copy_buf_.data(), buffer->data() + file_off, want);
        got = want;
      }
      while (got < want) {
        ssize_t r =
            pread(src_fd, copy_buf_.data() + got, want - got, static_cast<off_t>(file_off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return Fail(errno, "cannot read " + src_path + ": " + strerror(errno));
        if (r == 0) break;  // the file shrank while we copied it: the rest reads as zeros
        got += static_cast<size_t>(r);
      }
      memset(copy_buf_.data() + got, 0, n - got);
      uint64_t dst = (p.pblk * bs_) + done;
      size_t put = 0;
      while (put < n) {
        ssize_t w =
            pwrite(target_.data_fd, copy_buf_.data() + put, n - put, static_cast<off_t>(dst + put));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return Fail(errno, "cannot write to " + o_.image + ": " + strerror(errno));
        put += static_cast<size_t>(w);
      }
      done += n;
    }
  }
  return {};
}

Result<void> Builder::SetXattrs(ext2_ino_t ino, const SourceNode& node) {
  if (node.xattrs.empty()) return {};
  if (!ext2fs_has_feature_xattr(fs_->super)) {
    if (!warned_xattrs_ && !o_.quiet) {
      fprintf(stderr,
              "iomapfs-mkfs: warning: ext_attr is off; extended attributes (first: %s) "
              "are not copied\n",
              node.path.c_str());
    }
    warned_xattrs_ = true;
    return {};
  }
  ext2_xattr_handle* h = nullptr;
  IOMAPFS_TRY(Check(ext2fs_xattrs_open(fs_, ino, &h), "cannot open xattrs of " + node.path, why_));
  auto close = [&h]() {
    if (h != nullptr) ext2fs_xattrs_close(&h);
  };
  errcode_t rc = ext2fs_xattrs_read(h);
  for (size_t i = 0; rc == 0 && i < node.xattrs.size(); ++i) {
    const auto& [name, value] = node.xattrs[i];
    rc = ext2fs_xattr_set(h, name.c_str(), value.data(), value.size());
    if (rc != 0) {
      close();
      EnsureErrorTable();
      if (rc == EXT2_ET_EA_NO_SPACE || rc == EXT2_ET_EA_KEY_NOT_FOUND) {
        return Fail(ENOSPC, "extended attributes of " + node.path + " do not fit (" + name +
                                "): " + error_message(rc));
      }
      return Check(rc, "cannot set xattr " + name + " on " + node.path, why_);
    }
  }
  if (rc != 0) {
    close();
    return Check(rc, "cannot read xattrs of inode " + std::to_string(ino), why_);
  }
  rc = ext2fs_xattrs_close(&h);
  return Check(rc, "cannot write xattrs of " + node.path, why_);
}

Result<void> Builder::CreateRegular(const SourceNode& node, ext2_ino_t ino, uint32_t links) {
  ext2_inode_large inode;
  InitInode(&inode, node.st, links);
  SetTimes(&inode, &node);
  auto* small = reinterpret_cast<ext2_inode*>(&inode);
  const uint64_t size = static_cast<uint64_t>(node.st.st_size);
  UniqueFd fd(OpenSource(node.path, 0));
  if (!fd.valid()) return Fail(errno, "cannot open " + node.path + ": " + strerror(errno));

  if (IsInlineCandidate(node, plan_.features)) {
    std::string data(size, '\0');
    ssize_t got = pread(fd.get(), data.data(), size, 0);
    if (got < 0) return Fail(errno, "cannot read " + node.path + ": " + strerror(errno));
    data.resize(static_cast<size_t>(got));
    inode.i_flags |= EXT4_INLINE_DATA_FL;
    IOMAPFS_TRY(WriteInode(ino, inode));
    IOMAPFS_TRY(Check(ext2fs_inline_data_init(fs_, ino), "cannot set up inline data", why_));
    IOMAPFS_TRY(Check(ext2fs_inline_data_set(fs_, ino, nullptr, data.data(), data.size()),
                      "cannot write inline data of " + node.path, why_));
    // ext2fs_inline_data_set (1.47.0) stores the bytes but leaves i_size alone.
    ext2_inode stored;
    IOMAPFS_TRY(Check(ext2fs_read_inode(fs_, ino, &stored), "cannot read inode", why_));
    IOMAPFS_TRY(Check(ext2fs_inode_size_set(fs_, &stored, data.size()), "cannot set size", why_));
    IOMAPFS_TRY(Check(ext2fs_write_inode(fs_, ino, &stored), "cannot write inode", why_));
    IOMAPFS_TRY(SetXattrs(ino, node));
    progress_->Advance(1, data.size());
    return {};
  }

  IOMAPFS_TRY(Check(ext2fs_inode_size_set(fs_, small, size), "file too large: " + node.path, why_));
  IOMAPFS_TRY(WriteInode(ino, inode));
  auto ranges = BlockRanges(node, bs_);
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<Piece> pieces, Allocate(ranges));
  posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  IOMAPFS_TRY(WritePieces(pieces, fd.get(), size, node.path, nullptr));
  if (extents_ || !pieces.empty()) IOMAPFS_TRY(MapPieces(ino, &inode, pieces));
  IOMAPFS_TRY(WriteInode(ino, inode));
  IOMAPFS_TRY(SetXattrs(ino, node));
  uint64_t bytes = 0;
  for (const DataRange& r : node.data) bytes += r.length;
  progress_->Advance(1, bytes);
  return {};
}

Result<void> Builder::CreateSymlink(const SourceNode& node, ext2_ino_t ino, uint32_t links) {
  ext2_inode_large inode;
  InitInode(&inode, node.st, links);
  SetTimes(&inode, &node);
  const std::string& target = node.symlink_target;
  inode.i_size = static_cast<__u32>(target.size());
  if (target.size() < kFastSymlinkMax) {
    memcpy(inode.i_block, target.data(), target.size());  // a fast symlink
    IOMAPFS_TRY(WriteInode(ino, inode));
  } else {
    if (target.size() >= bs_) {
      return Fail(ENAMETOOLONG, "symlink " + node.path + ": target of " +
                                    std::to_string(target.size()) +
                                    " bytes does not fit a block of " + std::to_string(bs_));
    }
    IOMAPFS_TRY(WriteInode(ino, inode));
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<Piece> pieces, Allocate({{0, 1}}));
    IOMAPFS_TRY(WritePieces(pieces, -1, target.size(), node.path, &target));
    IOMAPFS_TRY(MapPieces(ino, &inode, pieces));
    IOMAPFS_TRY(WriteInode(ino, inode));
  }
  IOMAPFS_TRY(SetXattrs(ino, node));
  progress_->Advance(1, 0);
  return {};
}

Result<void> Builder::CreateSpecial(const SourceNode& node, ext2_ino_t ino, uint32_t links) {
  ext2_inode_large inode;
  InitInode(&inode, node.st, links);
  SetTimes(&inode, &node);
  if (S_ISCHR(node.st.st_mode) || S_ISBLK(node.st.st_mode)) {
    // The kernel's encoding (fs/ext4/inode.c): old 16-bit form when it fits, else new form.
    unsigned maj = major(node.st.st_rdev), min = minor(node.st.st_rdev);
    if (maj < 256 && min < 256) {
      inode.i_block[0] = (maj << 8) | min;
    } else {
      inode.i_block[1] = (min & 0xff) | (maj << 8) | ((min & ~0xffU) << 12);
    }
  }
  IOMAPFS_TRY(WriteInode(ino, inode));
  IOMAPFS_TRY(SetXattrs(ino, node));
  progress_->Advance(1, 0);
  return {};
}

Result<ext2_ino_t> Builder::CreateNode(const SourceTree& tree, size_t idx, ext2_ino_t parent) {
  const SourceNode& node = tree.nodes[idx];
  IOMAPFS_ASSIGN_OR_RETURN(ext2_ino_t ino, NewInode(parent, node.st.st_mode));
  inode_of_[idx] = ino;
  if (!S_ISDIR(node.st.st_mode) && node.tree_links > EXT2_LINK_MAX) {
    IOMAPFS_TRY(Fail(EMLINK, node.path + " has " + std::to_string(node.tree_links) +
                                 " hard links; ext4 allows " + std::to_string(EXT2_LINK_MAX)));
  }
  switch (node.st.st_mode & S_IFMT) {
    case S_IFDIR:
      IOMAPFS_TRY(FillDirectory(&tree, idx, ino, parent));
      break;
    case S_IFREG:
      IOMAPFS_TRY(CreateRegular(node, ino, node.tree_links));
      break;
    case S_IFLNK:
      IOMAPFS_TRY(CreateSymlink(node, ino, node.tree_links));
      break;
    default:
      IOMAPFS_TRY(CreateSpecial(node, ino, node.tree_links));
      break;
  }
  return ino;
}

Result<void> Builder::FillDirectory(const SourceTree* tree, size_t idx, ext2_ino_t ino,
                                    ext2_ino_t parent) {
  const bool is_root = ino == EXT2_ROOT_INO;
  const SourceNode* node = tree != nullptr ? &tree->nodes[idx] : nullptr;
  std::vector<DirEntryOut> entries = {{".", ino, FileType(S_IFDIR)},
                                      {"..", parent, FileType(S_IFDIR)}};
  uint32_t subdirs = 0;
  bool lost_found_in_source = false;
  if (is_root) {
    entries.push_back({"lost+found", lost_found_ino_, FileType(S_IFDIR)});
    ++subdirs;
  }
  if (node != nullptr) {
    for (size_t c : node->children) {
      const SourceNode& child = tree->nodes[c];
      if (is_root && child.name == "lost+found") {
        if (!S_ISDIR(child.st.st_mode)) {
          return Fail(EINVAL, child.path + " is not a directory; lost+found must be one");
        }
        lost_found_in_source = true;
        inode_of_[c] = lost_found_ino_;
        IOMAPFS_TRY(FillDirectory(tree, c, lost_found_ino_, EXT2_ROOT_INO));
        continue;
      }
      ext2_ino_t child_ino;
      if (child.link_target != c) {
        child_ino = inode_of_[child.link_target];
      } else {
        IOMAPFS_ASSIGN_OR_RETURN(child_ino, CreateNode(*tree, c, ino));
        if (S_ISDIR(child.st.st_mode)) ++subdirs;
      }
      entries.push_back({child.name, child_ino, FileType(child.st.st_mode)});
    }
  }
  if (is_root && !lost_found_in_source) {
    std::vector<DirEntryOut> lf = {{".", lost_found_ino_, FileType(S_IFDIR)},
                                   {"..", EXT2_ROOT_INO, FileType(S_IFDIR)}};
    IOMAPFS_TRY(WriteDirectory(lost_found_ino_, EXT2_ROOT_INO, lf, 0, nullptr, 0700,
                               LostFoundBlocks(bs_), false));
  }
  const bool is_lost_found = ino == lost_found_ino_;
  IOMAPFS_TRY(WriteDirectory(ino, parent, entries, subdirs, node, is_root ? 0755 : 0700,
                             is_lost_found ? LostFoundBlocks(bs_) : 0, is_root));
  return {};
}

Result<void> Builder::WriteDirectory(ext2_ino_t ino, ext2_ino_t parent,
                                     const std::vector<DirEntryOut>& entries, uint32_t subdirs,
                                     const SourceNode* meta, mode_t default_mode,
                                     uint64_t min_blocks, bool is_root) {
  (void)parent;
  std::vector<DirEntryOut> typed = entries;
  if (!filetype_) {
    for (DirEntryOut& e : typed) e.type = 0;
  }
  std::string blocks_buf;
  uint64_t nblocks = LayoutDirectory(typed, bs_, csum_, min_blocks, &blocks_buf);
  uint64_t links = 2 + subdirs;
  if (links > EXT2_LINK_MAX) {
    if (!ext2fs_has_feature_dir_nlink(fs_->super)) {
      return Fail(EMLINK, (meta ? meta->path : std::string("/")) + " has more than " +
                              std::to_string(EXT2_LINK_MAX - 2) +
                              " subdirectories; that needs the dir_nlink feature");
    }
    links = 1;
  }
  struct stat st {};
  if (meta != nullptr) {
    st = meta->st;
  } else {
    st.st_mode = S_IFDIR | default_mode;
  }
  if (is_root && o_.root_uid) {
    st.st_uid = *o_.root_uid;
    st.st_gid = *o_.root_gid;
  }
  ext2_inode_large inode;
  InitInode(&inode, st, static_cast<uint32_t>(links));
  SetTimes(&inode, meta);
  inode.i_size = static_cast<__u32>(nblocks * bs_);
  inode.i_size_high = static_cast<__u32>((nblocks * bs_) >> 32);
  IOMAPFS_TRY(WriteInode(ino, inode));
  // The checksums read the inode back (its generation seeds them): after the first write.
  for (uint64_t b = 0; csum_ && b < nblocks; ++b) {
    auto* block = reinterpret_cast<ext2_dir_entry*>(blocks_buf.data() + b * bs_);
    IOMAPFS_TRY(Check(ext2fs_dir_block_csum_set(fs_, ino, block),
                      "cannot checksum a directory block", why_));
  }
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<Piece> pieces, Allocate({{0, nblocks}}));
  IOMAPFS_TRY(WritePieces(pieces, -1, blocks_buf.size(), "directory", &blocks_buf));
  IOMAPFS_TRY(MapPieces(ino, &inode, pieces));
  IOMAPFS_TRY(WriteInode(ino, inode));
  if (meta != nullptr) IOMAPFS_TRY(SetXattrs(ino, *meta));
  if (!is_root && ino != lost_found_ino_) progress_->Advance(1, 0);
  return {};
}

Result<void> Builder::PrecheckSpace(const SourceTree& tree) {
  ContentNeeds needs = EstimateContent(tree, bs_, o_, plan_.features);
  uint64_t free_blocks = ext2fs_free_blocks_count(fs_->super);
  uint64_t free_inodes = fs_->super->s_free_inodes_count;
  if (needs.blocks > free_blocks) {
    char msg[512];
    snprintf(msg, sizeof(msg),
             "%s is too small for the content of %s: it needs about %.1f MiB of data and "
             "metadata blocks, %.1f MiB are free after the filesystem's own metadata; use a "
             "larger SIZE or SIZE auto",
             o_.image.c_str(), o_.source_dir.c_str(), needs.blocks * double(bs_) / kMiB,
             free_blocks * double(bs_) / kMiB);
    return Fail(ENOSPC, msg);
  }
  uint64_t need_inodes = tree.distinct_inodes;
  if (need_inodes > free_inodes) {
    return Fail(ENOSPC, o_.image + " has too few inodes for the content of " + o_.source_dir +
                            ": " + std::to_string(need_inodes) + " needed, " +
                            std::to_string(free_inodes) +
                            " free; use a larger SIZE, -N or a smaller -i");
  }
  return {};
}

Result<BuildSummary> Builder::Run(const SourceTree* tree) {
  IOMAPFS_ASSIGN_OR_RETURN(fs_, InitFs(target_.path, EXT2_FLAG_64BITS, o_, plan_, why_));
  bs_ = fs_->blocksize;
  inode_size_ = EXT2_INODE_SIZE(fs_->super);
  inode_buf_.resize(inode_size_);
  csum_ = ext2fs_has_feature_metadata_csum(fs_->super);
  extents_ = ext2fs_has_feature_extents(fs_->super);
  filetype_ = ext2fs_has_feature_filetype(fs_->super);
  IOMAPFS_TRY(SetUpSuperblock());
  IOMAPFS_TRY(CreateMetadata());
  if (tree != nullptr) {
    IOMAPFS_TRY(PrecheckSpace(*tree));
    inode_of_.assign(tree->nodes.size(), 0);
    inode_of_[0] = EXT2_ROOT_INO;
    progress_->Start(tree->distinct_inodes, tree->data_bytes);
  }
  IOMAPFS_TRY(FillDirectory(tree, 0, EXT2_ROOT_INO, EXT2_ROOT_INO));
  progress_->Finish();

  BuildSummary s;
  s.block_size = bs_;
  s.blocks = ext2fs_blocks_count(fs_->super);
  s.inodes = fs_->super->s_inodes_count;
  s.free_blocks = ext2fs_free_blocks_count(fs_->super);
  s.free_inodes = fs_->super->s_free_inodes_count;
  s.uuid = e2p_uuid2str(fs_->super->s_uuid);
  s.files_copied = progress_->files_done();
  s.bytes_copied = progress_->bytes_done();
  errcode_t rc = ext2fs_close_free(&fs_);
  fs_ = nullptr;
  IOMAPFS_TRY(Check(rc, "cannot write the filesystem metadata to " + o_.image, why_));
  return s;
}

}  // namespace

ContentNeeds EstimateContent(const SourceTree& tree, uint32_t block_size,
                             const MkfsOptions& options, const FeatureSet& features) {
  const bool extents = features.incompat & EXT3_FEATURE_INCOMPAT_EXTENTS;
  const bool csum = features.ro_compat & EXT4_FEATURE_RO_COMPAT_METADATA_CSUM;
  const uint64_t inline_xattr_space = options.inode_size > 160 ? options.inode_size - 160 - 4 : 0;
  ContentNeeds needs;
  needs.inodes = tree.distinct_inodes + EXT2_GOOD_OLD_FIRST_INO + 1;
  // The root directory and lost+found.
  needs.blocks += LostFoundBlocks(block_size);
  for (size_t i = 0; i < tree.nodes.size(); ++i) {
    const SourceNode& node = tree.nodes[i];
    if (node.link_target != i) continue;
    if (S_ISREG(node.st.st_mode) && !IsInlineCandidate(node, features)) {
      auto ranges = BlockRanges(node, block_size);
      uint64_t nb = 0;
      for (const auto& [first, end] : ranges) nb += end - first;
      needs.blocks += nb + MappingOverhead(nb, ranges.size(), block_size, extents);
    } else if (S_ISDIR(node.st.st_mode)) {
      uint64_t nb =
          LayoutDirectory(EntriesForEstimate(tree, node, i == 0), block_size, csum,
                          node.name == "lost+found" ? LostFoundBlocks(block_size) : 0, nullptr);
      needs.blocks += nb + MappingOverhead(nb, 1, block_size, extents);
    } else if (S_ISLNK(node.st.st_mode) && node.symlink_target.size() >= kFastSymlinkMax) {
      needs.blocks += 1;
    }
    uint64_t xb = XattrBytes(node);
    if (xb > 0 && xb > inline_xattr_space) needs.blocks += DivCeil(xb + 32, block_size);
  }
  return needs;
}

Result<Plan> MakePlan(const MkfsOptions& options, const FeatureSet& features, uint64_t size_bytes,
                      uint64_t min_inodes, std::string* why) {
  Plan plan;
  plan.features = features;
  SizeType type = SizeTypeFor(size_bytes);
  bool small = type == SizeType::kFloppy || type == SizeType::kSmall;
  plan.block_size = options.block_size ? options.block_size : (small ? 1024 : 4096);
  plan.blocks = size_bytes / plan.block_size;
  uint32_t ratio = options.inode_ratio;
  if (ratio == 0) {
    switch (type) {
      case SizeType::kFloppy:
        ratio = 8192;
        break;
      case SizeType::kSmall:
        ratio = 4096;
        break;
      case SizeType::kDefault:
        ratio = 16384;
        break;
      case SizeType::kBig:
        ratio = 32768;
        break;
      case SizeType::kHuge:
        ratio = 65536;
        break;
    }
  }
  if (plan.blocks < 64) {
    *why = "SIZE " + std::to_string(size_bytes) + " bytes is too small for an ext4 filesystem";
    return Unexpected(EINVAL);
  }
  if (plan.blocks > UINT32_MAX && !(features.incompat & EXT4_FEATURE_INCOMPAT_64BIT)) {
    *why = "a filesystem of " + std::to_string(plan.blocks) + " blocks needs the 64bit feature";
    return Unexpected(EINVAL);
  }
  plan.inodes = options.inodes ? options.inodes
                               : static_cast<uint64_t>(plan.blocks) * plan.block_size / ratio;
  if (!options.inodes && !options.inode_ratio) plan.inodes = std::max(plan.inodes, min_inodes);
  plan.inodes = std::min<uint64_t>(plan.inodes, UINT32_MAX);
  return plan;
}

Result<Plan> ComputeAutoSize(const MkfsOptions& options, const FeatureSet& features,
                             const SourceTree& tree, std::string* why) {
  // Start from the content alone and grow by the shortfall until everything fits; the size only
  // grows, so this ends, at (within 1 MiB) the smallest size that fits.
  uint32_t bs = options.block_size ? options.block_size : 4096;
  ContentNeeds needs = EstimateContent(tree, bs, options, features);
  uint64_t size = DivCeil(needs.blocks * bs, kMiB) * kMiB + kMiB;
  for (int iter = 0; iter < 200; ++iter) {
    uint64_t inodes_wanted = needs.inodes + needs.inodes * options.auto_margin_percent / 100 + 16;
    IOMAPFS_ASSIGN_OR_RETURN(Plan plan, MakePlan(options, features, size, inodes_wanted, why));
    needs = EstimateContent(tree, plan.block_size, options, features);
    uint64_t blocks_wanted = needs.blocks + needs.blocks * options.auto_margin_percent / 100 + 16;
    inodes_wanted = needs.inodes + needs.inodes * options.auto_margin_percent / 100 + 16;
    auto cap = Measure(options, plan, why);
    uint64_t grow = 0;
    if (!cap) {
      if (cap.error() != EINVAL) return Unexpected(cap.error());
      grow = size / 8;  // too small to lay out at all
    } else {
      if (cap->free_blocks < blocks_wanted) {
        grow = (blocks_wanted - cap->free_blocks) * plan.block_size;
      }
      if (cap->free_inodes < inodes_wanted) {
        if (options.inodes) {
          *why = "-N " + std::to_string(options.inodes) + " is too few inodes for the content (" +
                 std::to_string(needs.inodes) + " needed)";
          return Unexpected(EINVAL);
        }
        uint64_t ratio = options.inode_ratio ? options.inode_ratio : 0;
        if (ratio) grow = std::max(grow, (inodes_wanted - cap->free_inodes) * ratio);
      }
    }
    if (grow == 0) return plan;
    size += DivCeil(grow, kMiB) * kMiB;
    if (size > (1ULL << 60)) break;
  }
  *why = "cannot find a size that fits the content of " + options.source_dir;
  return Unexpected(EFBIG);
}

Result<BuildSummary> BuildImage(const MkfsOptions& options, const Plan& plan,
                                const SourceTree* tree, const BuildTarget& target,
                                Progress* progress, std::string* why) {
  Builder builder(options, plan, target, progress, why);
  return builder.Run(tree);
}

}  // namespace iomapfs::mkfs
