#include "ext2/ext2_fs.h"

// e2p.h has no extern "C" guard of its own.
extern "C" {
#include <e2p/e2p.h>
}
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cinttypes>
#include <cstring>
#include <ctime>

#include "base/log.h"

namespace iomapfs::ext2 {
namespace {

struct CodeErrno {
  errcode_t code;
  int err;
};

// Codes with a meaning of their own. Everything else in the ext2 table is either corruption
// (listed in IsCorruption) or an internal failure reported as EIO.
constexpr CodeErrno kCodeTable[] = {
    {EXT2_ET_RO_FILSYS, EROFS},
    {EXT2_ET_FILE_RO, EROFS},
    {EXT2_ET_NO_MEMORY, ENOMEM},
    {EXT2_ET_INVALID_ARGUMENT, EINVAL},
    {EXT2_ET_BLOCK_ALLOC_FAIL, ENOSPC},
    {EXT2_ET_INODE_ALLOC_FAIL, ENOSPC},
    {EXT2_ET_DIR_NO_SPACE, ENOSPC},
    {EXT2_ET_EA_NO_SPACE, ENOSPC},
    {EXT2_ET_INLINE_DATA_NO_SPACE, ENOSPC},
    {EXT2_ET_EXTENT_NO_SPACE, ENOSPC},
    {EXT2_ET_TOOSMALL, ENOSPC},
    {EXT2_ET_NO_DIRECTORY, ENOTDIR},
    {EXT2_ET_FILE_NOT_FOUND, ENOENT},
    {EXT2_ET_EA_KEY_NOT_FOUND, ENODATA},
    {EXT2_ET_NO_INLINE_DATA, ENODATA},
    {EXT2_ET_DIR_EXISTS, EEXIST},
    {EXT2_ET_FILE_EXISTS, EEXIST},
    {EXT2_ET_TOO_MANY_REFS, EMLINK},
    {EXT2_ET_FILE_TOO_BIG, EFBIG},
    {EXT2_ET_SYMLINK_LOOP, ELOOP},
    {EXT2_ET_UNIMPLEMENTED, EOPNOTSUPP},
    {EXT2_ET_OP_NOT_SUPPORTED, EOPNOTSUPP},
    {EXT2_ET_EXTENT_NOT_SUPPORTED, EOPNOTSUPP},
    {EXT2_ET_UNSUPP_FEATURE, EOPNOTSUPP},
    {EXT2_ET_RO_UNSUPP_FEATURE, EOPNOTSUPP},
    {EXT2_ET_MISSING_EA_FEATURE, EOPNOTSUPP},
    {EXT2_ET_DIRHASH_UNSUPP, EOPNOTSUPP},
    {EXT2_ET_EA_BAD_NAME_LEN, ERANGE},
    {EXT2_ET_EA_BAD_VALUE_SIZE, E2BIG},
    {EXT2_ET_CANCEL_REQUESTED, ECANCELED},
    {EXT2_ET_SHORT_READ, EIO},
    {EXT2_ET_SHORT_WRITE, EIO},
    {EXT2_ET_LLSEEK_FAILED, EIO},
    {EXT2_ET_MMP_FAILED, EBUSY},
    {EXT2_ET_MMP_FSCK_ON, EBUSY},
};

constexpr errcode_t kCorruptionCodes[] = {
    EXT2_ET_BAD_MAGIC,
    EXT2_ET_GDESC_BAD_BLOCK_MAP,
    EXT2_ET_GDESC_BAD_INODE_MAP,
    EXT2_ET_GDESC_BAD_INODE_TABLE,
    EXT2_ET_DIR_CORRUPTED,
    EXT2_ET_BAD_INODE_NUM,
    EXT2_ET_BAD_BLOCK_NUM,
    EXT2_ET_BAD_IND_BLOCK,
    EXT2_ET_BAD_DIND_BLOCK,
    EXT2_ET_BAD_TIND_BLOCK,
    EXT2_ET_MISSING_INODE_TABLE,
    EXT2_ET_CORRUPT_SUPERBLOCK,
    EXT2_ET_BAD_BLOCK_IN_INODE_TABLE,
    EXT2_ET_BAD_EA_BLOCK_NUM,
    EXT2_ET_RESIZE_INODE_CORRUPT,
    EXT2_ET_EXTENT_HEADER_BAD,
    EXT2_ET_EXTENT_INDEX_BAD,
    EXT2_ET_EXTENT_LEAF_BAD,
    EXT2_ET_EXTENT_INVALID_LENGTH,
    EXT2_ET_EXTENT_CYCLE,
    EXT2_ET_BAD_DESC_SIZE,
    EXT2_ET_INODE_CSUM_INVALID,
    EXT2_ET_INODE_BITMAP_CSUM_INVALID,
    EXT2_ET_EXTENT_CSUM_INVALID,
    EXT2_ET_DIR_CSUM_INVALID,
    EXT2_ET_EXT_ATTR_CSUM_INVALID,
    EXT2_ET_SB_CSUM_INVALID,
    EXT2_ET_UNKNOWN_CSUM,
    EXT2_ET_BLOCK_BITMAP_CSUM_INVALID,
    EXT2_ET_BAD_EA_HASH,
    EXT2_ET_BAD_EA_HEADER,
    EXT2_ET_EA_BAD_VALUE_OFFSET,
    EXT2_ET_INODE_IS_GARBAGE,
    EXT2_ET_FILESYSTEM_CORRUPTED,
    EXT2_ET_BAD_CRC,
    EXT2_ET_CORRUPT_JOURNAL_SB,
    EXT2_ET_INODE_CORRUPTED,
    EXT2_ET_EA_INODE_CORRUPTED,
    EXT2_ET_NO_GDESC,
    EXT2_ET_INLINE_DATA_NO_BLOCK,
    EXT2_ET_MMP_MAGIC_INVALID,
    EXT2_ET_MMP_BAD_BLOCK,
    EXT2_ET_MMP_CSUM_INVALID,
};

// Names of the incompat features set in `incompat` that this libext2fs cannot handle.
std::string UnsupportedIncompatNames(uint32_t incompat) {
  std::string names;
  for (int bit = 0; bit < 32; ++bit) {
    uint32_t mask = 1u << bit;
    if ((incompat & mask) == 0 || (EXT2_LIB_FEATURE_INCOMPAT_SUPP & mask) != 0) continue;
    if (!names.empty()) names += ", ";
    names += e2p_feature2string(E2P_FEATURE_INCOMPAT, mask);
  }
  return names;
}

// Reads the primary superblock directly (1024 bytes at offset 1024) for diagnostics.
bool ReadRawSuperblock(int fd, uint64_t offset, ext2_super_block* sb) {
  return ::pread(fd, sb, sizeof(*sb), static_cast<off_t>(offset + 1024)) ==
         static_cast<ssize_t>(sizeof(*sb));
}

// Features whose metadata a write here would leave stale or whose rules this server does not
// implement: writing would corrupt the filesystem or violate its contract.
struct RwRefusal {
  int compat_type;  // E2P_FEATURE_INCOMPAT or E2P_FEATURE_RO_INCOMPAT
  uint32_t mask;
};
constexpr RwRefusal kRwRefusals[] = {
    {E2P_FEATURE_RO_INCOMPAT, EXT4_FEATURE_RO_COMPAT_QUOTA},     // quota files not updated
    {E2P_FEATURE_RO_INCOMPAT, EXT4_FEATURE_RO_COMPAT_PROJECT},   // project quota
    {E2P_FEATURE_RO_INCOMPAT, EXT4_FEATURE_RO_COMPAT_BIGALLOC},  // cluster allocation
    {E2P_FEATURE_RO_INCOMPAT, EXT4_FEATURE_RO_COMPAT_VERITY},    // Merkle trees
    {E2P_FEATURE_RO_INCOMPAT, EXT4_FEATURE_RO_COMPAT_READONLY},
    {E2P_FEATURE_RO_INCOMPAT, EXT4_FEATURE_RO_COMPAT_SHARED_BLOCKS},
    {E2P_FEATURE_RO_INCOMPAT, EXT4_FEATURE_RO_COMPAT_ORPHAN_PRESENT},  // orphans to process
    {E2P_FEATURE_INCOMPAT, EXT4_FEATURE_INCOMPAT_CASEFOLD},            // name hashing/folding
    {E2P_FEATURE_INCOMPAT, EXT4_FEATURE_INCOMPAT_ENCRYPT},
    {E2P_FEATURE_INCOMPAT, EXT4_FEATURE_INCOMPAT_MMP},  // needs a running MMP updater
};

// Names of the features of `sb` that make a read-write open unsafe here.
std::string RwRefusedNames(const ext2_super_block& sb) {
  std::string names;
  for (const RwRefusal& r : kRwRefusals) {
    uint32_t have =
        r.compat_type == E2P_FEATURE_INCOMPAT ? sb.s_feature_incompat : sb.s_feature_ro_compat;
    if ((have & r.mask) == 0) continue;
    if (!names.empty()) names += ", ";
    names += e2p_feature2string(r.compat_type, r.mask);
  }
  return names;
}

// Sets a superblock timestamp split into a 32-bit field and an 8-bit high part.
void SetSbTime(uint32_t* lo, uint8_t* hi, time_t t) {
  *lo = static_cast<uint32_t>(t);
  *hi = static_cast<uint8_t>(static_cast<uint64_t>(t) >> 32);
}

uint64_t DeviceSize(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return 0;
  if (S_ISBLK(st.st_mode)) {
    uint64_t bytes = 0;
    if (::ioctl(fd, BLKGETSIZE64, &bytes) == 0) return bytes;
    return 0;
  }
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace

int ErrnoFromErrcode(errcode_t code) {
  if (code == 0) return 0;
  if (code > 0 && code < 256) return static_cast<int>(code);  // a plain errno passed through
  for (const auto& e : kCodeTable) {
    if (e.code == code) return e.err;
  }
  if (IsCorruption(code)) return kEfsCorrupted;
  return EIO;
}

bool IsCorruption(errcode_t code) {
  for (errcode_t c : kCorruptionCodes) {
    if (c == code) return true;
  }
  return false;
}

Ext2Fs::Ext2Fs(ext2_filsys fs, std::unique_ptr<BlockDevice> data, const OpenOptions& options)
    : fs_(fs), data_(std::move(data)), options_(options), block_size_(fs->blocksize) {}

Ext2Fs::~Ext2Fs() {
  if (fs_ != nullptr) (void)Close();
}

Result<void> Ext2Fs::FlushLocked() {
  if (fs_ == nullptr || !options_.read_write) return {};
  constexpr int kDirty = EXT2_FLAG_DIRTY | EXT2_FLAG_BB_DIRTY | EXT2_FLAG_IB_DIRTY;
  if ((fs_->flags & kDirty) == 0) return {};
  SetSbTime(&fs_->super->s_wtime, &fs_->super->s_wtime_hi, time(nullptr));
  ext2fs_mark_super_dirty(fs_);
  // The channel is write-through: after this every block is in the image's page cache.
  errcode_t err = ext2fs_flush2(fs_, EXT2_FLAG_FLUSH_NO_SYNC);
  if (err != 0) {
    LOG_ERROR("flushing filesystem metadata: %s", error_message(err));
    return Unexpected(ErrnoFromErrcode(err));
  }
  return {};
}

Result<void> Ext2Fs::Sync() {
  if (!options_.read_write) return {};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (fs_ == nullptr) return Unexpected(EIO);
    IOMAPFS_TRY(FlushLocked());
  }
  return data_->Flush();
}

Result<void> Ext2Fs::FreezeLocked(const Guard& g, bool mark_clean) {
  if (&g.owner() != this || fs_ == nullptr) return Unexpected(EIO);
  if (options_.read_write) {
    const bool errors = (fs_->super->s_state & EXT2_ERROR_FS) != 0;
    if (mark_clean && !errors && (state_at_open_ & EXT2_VALID_FS) != 0) {
      fs_->super->s_state |= EXT2_VALID_FS;
    }
    ext2fs_mark_super_dirty(fs_);
    if (Result<void> f = FlushLocked(); !f) {
      fs_->super->s_state &= static_cast<uint16_t>(~EXT2_VALID_FS);
      return f;
    }
  }
  frozen_.store(true, std::memory_order_release);
  return {};
}

Result<void> Ext2Fs::ThawLocked(const Guard& g) {
  if (&g.owner() != this || fs_ == nullptr) return Unexpected(EIO);
  frozen_.store(false, std::memory_order_release);
  if (!options_.read_write) return {};
  fs_->super->s_state &= static_cast<uint16_t>(~EXT2_VALID_FS);
  ext2fs_mark_super_dirty(fs_);
  return FlushLocked();
}

Result<void> Ext2Fs::Close() {
  if (fs_ == nullptr) return {};
  std::lock_guard<std::mutex> lock(mu_);
  frozen_.store(false, std::memory_order_release);
  errcode_t err = 0;
  if (options_.read_write) {
    // Clean only if it was clean at open and no error was recorded since (kernel ext4 restores
    // its s_mount_state the same way at unmount).
    uint16_t errors = fs_->super->s_state & EXT2_ERROR_FS;
    fs_->super->s_state = state_at_open_ | errors;
    SetSbTime(&fs_->super->s_wtime, &fs_->super->s_wtime_hi, time(nullptr));
    ext2fs_mark_super_dirty(fs_);
  }
  // ext2fs_close flushes everything and syncs the channel (read-write).
  err = ext2fs_close_free(&fs_);
  fs_ = nullptr;
  Result<void> synced;
  if (options_.read_write) synced = data_->Flush();
  if (lock_fd_ >= 0) {
    ::flock(lock_fd_, LOCK_UN);
    lock_fd_ = -1;
  }
  if (err != 0) return Unexpected(ErrnoFromErrcode(err));
  return synced;
}

Result<std::unique_ptr<Ext2Fs>> Ext2Fs::Open(const std::string& path, const OpenOptions& options,
                                             std::string* why) {
  auto fail = [&](int err, std::string msg) -> Result<std::unique_ptr<Ext2Fs>> {
    *why = path + ": " + msg;
    return Unexpected(err);
  };
  if (options.norecovery && options.read_write) {
    return fail(EINVAL, "norecovery requires a read-only mount");
  }

  // Our own fd first: it gives clear open(2) errors and serves the data path.
  int oflags = (options.read_write ? O_RDWR : O_RDONLY) | O_CLOEXEC;
  UniqueFd fd(::open(path.c_str(), oflags));
  if (!fd.valid()) return fail(errno, std::string("cannot open: ") + strerror(errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return fail(errno, strerror(errno));
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return fail(EINVAL, "not a regular file or block device");
  }
  // A writer excludes everyone; readers share. A read-only reader of an image that changes
  // under it would see torn metadata, so ro+rw conflicts in either order.
  if (::flock(fd.get(), (options.read_write ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return fail(EBUSY, options.read_write
                             ? "image is in use by another process (a read-write open needs "
                               "it alone)"
                             : "image is in use by another process (it is open read-write)");
    }
    return fail(errno, std::string("cannot lock the image: ") + strerror(errno));
  }
  uint64_t dev_size = DeviceSize(fd.get());
  if (dev_size <= options.offset) {
    return fail(EINVAL, "offset " + std::to_string(options.offset) +
                            " is past the end of the image (" + std::to_string(dev_size) +
                            " bytes)");
  }

  ext2_super_block raw_sb;
  bool have_raw_sb = ReadRawSuperblock(fd.get(), options.offset, &raw_sb);
  if (!have_raw_sb || raw_sb.s_magic != EXT2_SUPER_MAGIC) {
    return fail(EINVAL, "not an ext2/ext3/ext4 filesystem (no superblock magic at offset " +
                            std::to_string(options.offset + 1024) + ")");
  }

  if (options.read_write) {
    std::string refused = RwRefusedNames(raw_sb);
    if (!refused.empty()) {
      return fail(EOPNOTSUPP,
                  "cannot open read-write: this server cannot write filesystems with "
                  "feature(s) " +
                      refused + "; open it read-only");
    }
  }

  std::string io_opts = "offset=" + std::to_string(options.offset);
  int flags = EXT2_FLAG_64BITS;
  if (options.read_write) flags |= EXT2_FLAG_RW;
  ext2_filsys fs = nullptr;
  errcode_t err = ext2fs_open2(path.c_str(), io_opts.c_str(), flags, 0, 0, unix_io_manager, &fs);
  if (err != 0) {
    if (err == EXT2_ET_UNSUPP_FEATURE) {
      return fail(EOPNOTSUPP, "unsupported filesystem feature: " +
                                  UnsupportedIncompatNames(raw_sb.s_feature_incompat));
    }
    if (err == EXT2_ET_RO_UNSUPP_FEATURE) {
      return fail(EOPNOTSUPP,
                  "filesystem has read-only-compatible features this tool cannot "
                  "write; mount it read-only (-o ro)");
    }
    if (err == EXT2_ET_SHORT_READ) return fail(kEfsCorrupted, "image is truncated");
    int e = ErrnoFromErrcode(err);
    return fail(e == EIO ? EIO : e, std::string("cannot open filesystem: ") + error_message(err));
  }

  uint64_t fs_bytes = ext2fs_blocks_count(fs->super) * static_cast<uint64_t>(fs->blocksize);
  uint64_t avail = dev_size - options.offset;
  if (fs_bytes > avail) {
    ext2fs_free(fs);
    return fail(kEfsCorrupted, "image is truncated: the filesystem needs " +
                                   std::to_string(fs_bytes) + " bytes, the image holds " +
                                   std::to_string(avail));
  }
  if (ext2fs_has_feature_journal_needs_recovery(fs->super) && !options.norecovery) {
    ext2fs_free(fs);
    return fail(EROFS,
                "the journal needs recovery; run `e2fsck -fy` on the image first, or "
                "mount read-only with -o ro,norecovery (recent changes will be missing)");
  }

  if (options.read_write) {
    // Allocation needs the block and inode bitmaps in memory (libext2fs loads them on demand
    // only in some paths); read them once, up front, as fuse2fs does.
    err = ext2fs_read_bitmaps(fs);
    if (err != 0) {
      ext2fs_free(fs);
      return fail(IsCorruption(err) ? kEfsCorrupted : ErrnoFromErrcode(err),
                  std::string("cannot read the allocation bitmaps: ") + error_message(err));
    }
  }

  int raw_fd = fd.get();
  auto dev = std::make_unique<FdBlockDevice>(std::move(fd), options.offset, avail);
  std::unique_ptr<Ext2Fs> e2(new Ext2Fs(fs, std::move(dev), options));
  e2->lock_fd_ = raw_fd;
  if (options.read_write) {
    fs->io->flags |= CHANNEL_FLAGS_WRITETHROUGH;
    // Mounted read-write without a journal: not clean until Close().
    e2->state_at_open_ = fs->super->s_state;
    fs->super->s_state &= static_cast<uint16_t>(~EXT2_VALID_FS);
    fs->super->s_mnt_count++;
    SetSbTime(&fs->super->s_mtime, &fs->super->s_mtime_hi, time(nullptr));
    ext2fs_mark_super_dirty(fs);
    err = ext2fs_flush2(fs, 0);
    if (err != 0) {
      e2->state_at_open_ &= static_cast<uint16_t>(~EXT2_VALID_FS);  // leave it not clean
      return fail(ErrnoFromErrcode(err),
                  std::string("cannot write the superblock: ") + error_message(err));
    }
  }
  return e2;
}

}  // namespace iomapfs::ext2
