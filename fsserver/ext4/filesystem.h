// Filesystem: the ext4 filesystem operations the server exposes, in ext4's terms. No wire
// structs here (dispatch converts); node ids are ext4 inode numbers (the root is inode 2; the
// wire codec translates FUSE_ROOT_ID).
//
// Thread-safety: every method may be called concurrently from any thread. Metadata work runs
// under the ext2 metadata lock; file data moves through the BlockDevice outside it.
// Ownership: owns the Ext2Fs and the iomap Engine.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "base/strong_id.h"
#include "ext2/ext2_fs.h"
#include "ext2/inode_buf.h"
#include "iomap/mapping.h"

namespace iomapfs::iomap {
class Engine;
}  // namespace iomapfs::iomap

namespace iomapfs::ext4 {

inline constexpr Ino kRootIno{2};  // EXT2_ROOT_INO

struct Timestamp {
  int64_t sec = 0;
  uint32_t nsec = 0;
  bool operator==(const Timestamp&) const = default;
};

// What stat/statx show of an inode, as kernel ext4 reports it.
struct Attr {
  Ino ino;
  uint32_t mode = 0;  // S_IFMT | permission bits
  uint32_t nlink = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  dev_t rdev = 0;  // makedev(major, minor) for device nodes, else 0
  uint64_t size = 0;
  uint64_t blocks = 0;  // 512-byte units, as st_blocks
  uint32_t blksize = 0;
  Timestamp atime, mtime, ctime;
  Timestamp btime;  // valid only if has_btime (i_crtime present)
  bool has_btime = false;
  uint32_t generation = 0;
  uint64_t statx_attributes = 0;  // STATX_ATTR_* (immutable, append, nodump, compressed, ...)
};

// statx attributes_mask as ext4_getattr() sets it (plus STATX_ATTR_DAX, which the VFS adds):
// the STATX_ATTR_* bits this filesystem can report.
inline constexpr uint64_t kStatxAttributesMask =
    0x00000004 /* COMPRESSED */ | 0x00000010 /* IMMUTABLE */ | 0x00000020 /* APPEND */ |
    0x00000040 /* NODUMP */ | 0x00000800 /* ENCRYPTED */ | 0x00100000 /* VERITY */ |
    0x00200000 /* DAX */;

struct StatFs {
  uint64_t blocks = 0, bfree = 0, bavail = 0;  // in units of bsize
  uint64_t files = 0, ffree = 0;
  uint32_t bsize = 0, frsize = 0, namelen = 0;
};

struct DirEntry {
  Ino ino;
  uint32_t type = 0;  // DT_*
  std::string name;
};

struct Caller {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t pid = 0;
  // Supplementary groups, if the caller knows them (FUSE requests carry only uid/gid/pid);
  // group checks use gid and these.
  std::vector<uint32_t> groups;
};

// What to do when corruption is found at run time (ext4's errors= mount option). kDefault
// follows the superblock's s_errors, as ext4 does.
enum class ErrorBehavior { kDefault, kContinue, kRemountRo, kPanic };

struct Options {
  bool fakeroot = false;  // every caller is treated as root for permission checks
  ErrorBehavior errors = ErrorBehavior::kDefault;
};

class Filesystem {
 public:
  Filesystem(std::unique_ptr<ext2::Ext2Fs> fs, const Options& options);
  ~Filesystem();

  uint32_t block_size() const;
  // Mounted read-only (opened so, or made so by errors=remount-ro). Not set by Freeze().
  bool read_only() const;
  bool frozen() const;

  // Each successful Lookup (and each READDIRPLUS entry handed out) counts one kernel reference
  // on the inode; Forget() returns them. Per-inode caches live while references remain.
  // Errors: ENOENT, ENOTDIR, ENAMETOOLONG (name > 255 bytes), EUCLEAN, EIO.
  Result<Attr> Lookup(Ino parent, std::string_view name);
  void Forget(Ino ino, uint64_t nlookup);

  // Errors: ENOENT (unused inode), EUCLEAN (bad checksum), EIO.
  Result<Attr> GetAttr(Ino ino);
  // Errors: EINVAL (not a symlink), EOPNOTSUPP (encrypted symlink: we hold no keys), EUCLEAN
  //         (slow symlink without a data block), EIO.
  Result<std::string> ReadLink(Ino ino);

  // Opens a directory: takes a snapshot of its entries ("." and ".." first) served by ReadDir.
  // Errors: ENOTDIR, EUCLEAN, EIO.
  Result<FileHandle> OpenDir(Ino ino);
  // Emits entries of the snapshot starting at `offset` (0 = start; otherwise a value this method
  // passed as next_offset). `emit` returns false when the reply is full: that entry is not
  // consumed. With `plus`, `attr` is the entry's attributes (nullptr for "." and "..", which the
  // kernel does not reference, and for an entry whose inode cannot be read: the listing still
  // shows it, as ext4's readdir does); each accepted non-null attr counts one Lookup reference.
  // Errors: EBADF (unknown handle), EUCLEAN, EIO.
  using DirEmit =
      std::function<bool(const DirEntry& entry, const Attr* attr, uint64_t next_offset)>;
  Result<void> ReadDir(Ino ino, FileHandle fh, uint64_t offset, bool plus, const DirEmit& emit);
  void ReleaseDir(FileHandle fh);

  // Errors: EISDIR (write access to a directory), EROFS (write on a read-only filesystem).
  Result<FileHandle> Open(Ino ino, int flags);
  void Release(FileHandle fh);
  // Reads up to buf.size() bytes at `offset`, short only at EOF. Goes through the iomap engine:
  // mapping under the metadata lock, one device read per mapping outside it.
  // Returns: bytes read (0 at or past EOF). Errors: EISDIR, EUCLEAN (corrupt mapping), EIO.
  Result<size_t> Read(Ino ino, uint64_t offset, std::span<std::byte> buf);

  // SEEK_DATA / SEEK_HOLE as ext4 answers them (unwritten extents count as holes). SEEK_SET
  // returns `offset`, SEEK_END returns i_size + offset (offset taken as a signed value);
  // SEEK_CUR is the kernel's business (EINVAL here).
  // Errors: ENXIO (offset at or past EOF for DATA/HOLE, or no data after offset), EINVAL
  //         (unknown whence, not a regular file, negative result), EUCLEAN, EIO.
  Result<uint64_t> Lseek(Ino ino, uint64_t offset, int whence);

  Result<ext4::StatFs> StatFs();

  // Full names ("user.foo", "trusted.x", "security.selinux", "system.posix_acl_access").
  // POSIX ACLs come back in the xattr format the kernel uses (posix_acl_xattr_header), not
  // ext4's on-disk format. Errors: ENODATA, EOPNOTSUPP (a namespace ext4 has no handler for,
  // e.g. "system.data"), EUCLEAN, EIO. ListXattr lists every visible name, trusted.* included
  // (dispatch filters by the caller's capabilities).
  Result<std::vector<std::byte>> GetXattr(Ino ino, std::string_view name);
  Result<std::vector<std::string>> ListXattr(Ino ino);

  // access(2) semantics by mode bits, owner, group and ACL (root bypasses rw; x needs one x bit).
  // Errors: EACCES, EROFS (W_OK on a read-only filesystem), EPERM (W_OK on an immutable inode),
  //         ENOENT, EUCLEAN, EIO.
  Result<void> Access(Ino ino, int mask, const Caller& caller);

  // ---------------------------------------------------------------------------------------
  // Modifying operations (read-write mounts). Common errors: EROFS (read-only filesystem),
  // ENOSPC, EUCLEAN (corruption found; recorded in the superblock), EIO. Names: ENAMETOOLONG
  // past 255 bytes. New inodes take the caller's uid, and its gid unless the parent directory
  // is setgid (then the parent's gid; new directories inherit the setgid bit), as ext4 does.
  // `umask` is applied to `mode` unless the parent has a default ACL, which is inherited
  // instead (FUSE_POSIX_ACL hands both jobs to the server).

  // A new regular file (mode carries S_IFREG and permission bits).
  // Errors: EEXIST, ENOTDIR, ENOENT (parent gone), EMLINK.
  Result<Attr> Create(Ino parent, std::string_view name, uint32_t mode, uint32_t umask,
                      const Caller& caller);
  // Regular file, fifo, socket, char or block device (mode's S_IFMT says which).
  Result<Attr> Mknod(Ino parent, std::string_view name, uint32_t mode, dev_t rdev, uint32_t umask,
                     const Caller& caller);
  Result<Attr> Mkdir(Ino parent, std::string_view name, uint32_t mode, uint32_t umask,
                     const Caller& caller);
  // Fast symlink (target < 60 bytes, in the inode) or slow (a data block).
  // Errors: ENAMETOOLONG (target longer than the block size - 1).
  Result<Attr> Symlink(Ino parent, std::string_view name, std::string_view target,
                       const Caller& caller);
  // Errors: EEXIST, EMLINK (65000 links), EPERM (directory, or immutable/append-only inode).
  Result<Attr> Link(Ino ino, Ino new_parent, std::string_view new_name);
  // Removes the name; the inode is freed when its last link is gone and the kernel holds no
  // reference (else it waits on the orphan list until Forget releases it).
  // Errors: ENOENT, EISDIR (Unlink of a directory), ENOTDIR, ENOTEMPTY (Rmdir), EBUSY (root).
  Result<void> Unlink(Ino parent, std::string_view name);
  Result<void> Rmdir(Ino parent, std::string_view name);
  // rename(2)/renameat2(2); flags: 0, RENAME_NOREPLACE, RENAME_EXCHANGE (RENAME_WHITEOUT:
  // EINVAL). Directories moved across parents get their ".." and the link counts fixed.
  // Errors: EEXIST (NOREPLACE), ENOENT, ENOTDIR, EISDIR, ENOTEMPTY, EINVAL (a directory into
  // its own subtree).
  Result<void> Rename(Ino old_parent, std::string_view old_name, Ino new_parent,
                      std::string_view new_name, uint32_t flags);
  // O_TMPFILE: an unnamed regular file on the orphan list until Link names it or it is
  // released and forgotten.
  Result<Attr> Tmpfile(Ino parent, uint32_t mode, uint32_t umask, const Caller& caller);

  // SETATTR. Fields not set are left alone. A size change truncates or extends (data past the
  // new EOF is freed; the tail of the last block reads as zeros). chown by a non-root caller
  // clears suid/sgid as ext4 does; kill_suid_sgid clears them explicitly (FATTR_KILL_SUIDGID).
  struct SetAttrRequest {
    std::optional<uint32_t> mode;  // permission bits only (S_IFMT ignored)
    std::optional<uint32_t> uid;
    std::optional<uint32_t> gid;
    std::optional<uint64_t> size;
    std::optional<Timestamp> atime;  // already resolved: UTIME_NOW became the current time
    std::optional<Timestamp> mtime;
    std::optional<Timestamp> ctime;  // explicit ctime; else ctime = now whenever anything changes
    bool kill_suid_sgid = false;
  };
  // Errors: EPERM (immutable/append-only), EFBIG (size past the format's limit), EINVAL.
  Result<Attr> SetAttr(Ino ino, const SetAttrRequest& request, const Caller& caller);

  // flags: XATTR_CREATE / XATTR_REPLACE. ACL names take the kernel's posix_acl_xattr format
  // (converted to ext4's on-disk format); setting an access ACL also updates the mode bits.
  // Errors: EEXIST (CREATE), ENODATA (REPLACE or remove of a missing name), ENOSPC (no room in
  // the inode and EA block), ERANGE (name or value too large), EOPNOTSUPP (namespace), EINVAL.
  // `acl_kill_sgid` (FUSE_SETXATTR_ACL_KILL_SGID): setting an access ACL also clears S_ISGID.
  Result<void> SetXattr(Ino ino, std::string_view name, std::span<const std::byte> value, int flags,
                        bool acl_kill_sgid = false);
  Result<void> RemoveXattr(Ino ino, std::string_view name);

  // Writes data at `offset` (append: at i_size, atomically with respect to other writes of the
  // inode). Allocates through the iomap engine (unwritten first, converted once the data is on
  // the device); data moves outside the metadata lock. Clears suid/sgid when kill_suid_sgid.
  // Sets mtime and ctime to now unless !update_times (the caller's clock owns them: the kernel's
  // writeback cache sends its own times with SETATTR).
  // Returns: bytes written (short only on ENOSPC after some progress).
  // Errors: EFBIG, ENOSPC, EISDIR, EPERM (immutable), EIO.
  Result<size_t> Write(Ino ino, uint64_t offset, std::span<const std::byte> data, bool append,
                       bool kill_suid_sgid, bool update_times = true);
  // fallocate(2) modes: 0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE|KEEP_SIZE,
  // FALLOC_FL_ZERO_RANGE (|KEEP_SIZE). Errors: EOPNOTSUPP (other modes, or a mode the file's
  // format lacks, e.g. unwritten extents on an ext2 file), EFBIG, ENOSPC, EINVAL.
  Result<void> Fallocate(Ino ino, uint32_t mode, uint64_t offset, uint64_t length);
  // Makes the inode's data and the metadata it depends on durable (fdatasync: skip timestamps).
  Result<void> Fsync(Ino ino, bool datasync);
  // Makes everything durable.
  Result<void> SyncFs();

  // fsfreeze (FREEZE_FS / UNFREEZE_FS, iomap spec §8, as fuse4fs): Freeze() writes all metadata
  // with the superblock marked clean (EXT2_VALID_FS) when it was clean at open, no error is
  // recorded and no inode awaits removal (no orphan here and `unlinked`, the kernel's count of
  // open unlinked inodes, is 0), and syncs the image; from then on every modifying operation
  // fails with EROFS (opening for writing still works, as on a frozen kernel filesystem), and
  // an orphan whose last reference goes (Forget) is kept. Thaw() marks the superblock not clean,
  // frees those orphans, writes and syncs; changes are allowed again. Thaw() of a filesystem
  // that is not frozen does nothing. Errors: EIO (writing or syncing the image).
  Result<void> Freeze(uint64_t unlinked);
  Result<void> Thaw();

  // Flushes and closes the filesystem (thawing it first if frozen). Returns the first error.
  Result<void> Close();

  // ---------------------------------------------------------------------------------------
  // iomap mode (iomap_ops.cc; spec/fuse-iomap-protocol.md). Mappings carry filesystem byte
  // addresses (add data_offset() for the image or device); the caller turns them into wire
  // mappings and serializes BEGIN/IOEND per inode as the spec asks (§10).

  // What FUSE_IOMAP_CONFIG reports (§7.2), from the superblock as kernel ext4 sets it up.
  struct IomapGeometry {
    uint32_t block_size = 0;
    uint8_t uuid[16] = {};
    char volume_name[17] = {};  // s_volume_name, NUL-terminated
    uint64_t max_bytes = 0;     // ext4_max_size(): the extent-format limit (huge_file aware)
    uint32_t max_links = 0;     // EXT4_LINK_MAX
    uint32_t time_gran = 0;     // ns: 1 with the extra timestamp fields, else 10^9
    int64_t time_min = 0, time_max = 0;
    bool extents = false;  // the extents feature (atomic writes need it, §14.7)
  };
  IomapGeometry GetIomapGeometry();

  // The mapping of a read, REPORT or DIRECT read at `pos` (whole extent, not clipped to a
  // count). Errors: EINVAL not a regular file; as Engine::Map.
  Result<iomap::Mapping> IomapRead(Ino ino, uint64_t pos, uint32_t opflags);
  // A write op (WRITE, ZERO, UNSHARE, WRITEBACK) of [pos, pos + count): the existing mapping at
  // pos, or, if that is a hole and the op is not ZERO, storage allocated for the range
  // (UNWRITTEN extents; MAPPED and zero-filled blocks on indirect files) with kFlagDirty.
  // Returns: mappings in order, the first covering pos; *allocated tells whether storage was
  // allocated. Errors: EFBIG pos past the file's maximum size; ENOSPC; EROFS; as PrepareWrite.
  Result<std::vector<iomap::Mapping>> IomapWrite(Ino ino, uint64_t pos, uint64_t count,
                                                 uint32_t opflags, bool* allocated);
  // IOEND of [pos, pos + written): converts unwritten extents there (when `convert`) and raises
  // i_size to pos + written if larger. Returns: i_size afterwards.
  Result<uint64_t> IomapIoend(Ino ino, uint64_t pos, uint64_t written, bool convert);
  // Raises i_size to new_size if larger (END after a size-extending buffered write).
  Result<uint64_t> IomapRaiseSize(Ino ino, uint64_t new_size);
  // The mappings of [0, ceil(i_size)) in order, at most `max_count` of them (0: none).
  // Errors: EINVAL not a regular file; as Engine::MapRange.
  Result<std::vector<iomap::Mapping>> IomapFileMappings(Ino ino, size_t max_count);
  // From now on records the device byte ranges of every block freed (libext2fs's block
  // allocation callbacks, called under the metadata lock), for DEV_INVAL (spec §11.5).
  void IomapTrackFreedBlocks();
  // Returns and forgets the ranges recorded since the last call: {device byte offset, length},
  // sorted and merged. Empty unless IomapTrackFreedBlocks() was called.
  std::vector<std::pair<uint64_t, uint64_t>> IomapTakeFreedBlocks();
  // The image fd (data I/O) and the filesystem's byte offset in it.
  int data_fd();
  uint64_t data_offset();

 private:
  ext2::Ext2Fs& ext2fs();
  iomap::Engine& engine();
  // Reads `ino` for an iomap request: a live inode (orphans kept open included) that is a regular
  // file. REQUIRES: g holds the metadata lock. Errors: ENOENT unused or deleted; EINVAL not a
  // regular file; EUCLEAN.
  Result<ext2::InodeBuf> ReadRegular(const ext2::Guard& g, Ino ino);

 public:
  // The implementation's state; internal to fsserver/ext4 (fs_impl.h), public only so that the
  // module's files can share helpers over it.
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace iomapfs::ext4
