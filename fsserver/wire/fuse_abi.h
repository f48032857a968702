// fuse_abi.h: the one pinned copy of the FUSE kernel ABI used by iomapfs.
//
// Contents: the Linux 6.18 uapi <linux/fuse.h> (protocol 7.45) structs, opcodes, flags, notify
// codes and device ioctl numbers, plus the experimental fuse-iomap extension (protocol minor 99,
// PATCHBLIZZARD v7 layout) as described in /work/shared/spec/fuse-iomap-protocol.md. Names are
// the kernel's, in namespace iomapfs::abi; preprocessor macros became constexpr constants.
// Every struct carries a static_assert on its size taken from the uapi header or the spec.
//
// Never include <linux/fuse.h> or the libfuse headers (which define FUSE_ROOT_ID and
// FUSE_IOCTL_* as macros) in a translation unit that includes this header: their macros would
// rewrite the names declared here.
//
// Thread-safety: declarations only. Ownership: n/a.
// All integers are host-endian (little-endian on the machines we support).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(_LINUX_FUSE_H) || defined(FUSE_COMMON_H_) || defined(FUSE_ROOT_ID)
#error "fuse_abi.h must not share a translation unit with <linux/fuse.h> or libfuse headers"
#endif

namespace iomapfs::abi {

// ---------------------------------------------------------------------------------------------
// Versions.

inline constexpr uint32_t FUSE_KERNEL_VERSION = 7;
// Mainline 6.18.
inline constexpr uint32_t FUSE_KERNEL_MINOR_VERSION = 45;
// The fuse-iomap tree sets FUSE_KERNEL_MINOR_VERSION to 99; a server that wants iomap must
// answer INIT with this minor (iomap spec §1.3). Not a kernel name: the kernel header just
// redefines FUSE_KERNEL_MINOR_VERSION.
inline constexpr uint32_t FUSE_IOMAP_KERNEL_MINOR_VERSION = 99;

// The node id of the root inode.
inline constexpr uint64_t FUSE_ROOT_ID = 1;

// ---------------------------------------------------------------------------------------------
// Common structs.

struct fuse_attr {
  uint64_t ino;
  uint64_t size;
  uint64_t blocks;
  uint64_t atime;
  uint64_t mtime;
  uint64_t ctime;
  uint32_t atimensec;
  uint32_t mtimensec;
  uint32_t ctimensec;
  uint32_t mode;
  uint32_t nlink;
  uint32_t uid;
  uint32_t gid;
  uint32_t rdev;
  uint32_t blksize;
  uint32_t flags;  // FUSE_ATTR_*
};
static_assert(sizeof(fuse_attr) == 88);

// Same layout as the kernel's struct statx timestamp.
struct fuse_sx_time {
  int64_t tv_sec;
  uint32_t tv_nsec;
  int32_t __reserved;
};
static_assert(sizeof(fuse_sx_time) == 16);

// Same layout as the kernel's struct statx.
struct fuse_statx {
  uint32_t mask;
  uint32_t blksize;
  uint64_t attributes;
  uint32_t nlink;
  uint32_t uid;
  uint32_t gid;
  uint16_t mode;
  uint16_t __spare0[1];
  uint64_t ino;
  uint64_t size;
  uint64_t blocks;
  uint64_t attributes_mask;
  fuse_sx_time atime;
  fuse_sx_time btime;
  fuse_sx_time ctime;
  fuse_sx_time mtime;
  uint32_t rdev_major;
  uint32_t rdev_minor;
  uint32_t dev_major;
  uint32_t dev_minor;
  // The kernel's struct statx from here on (Linux 6.16 uapi; the iomap kernel's fuse.h has the
  // same fields): STATX_MNT_ID, STATX_DIOALIGN, STATX_SUBVOL, STATX_WRITE_ATOMIC,
  // STATX_DIO_READ_ALIGN.
  uint64_t mnt_id;
  uint32_t dio_mem_align;
  uint32_t dio_offset_align;
  uint64_t subvol;
  uint32_t atomic_write_unit_min;
  uint32_t atomic_write_unit_max;
  uint32_t atomic_write_segments_max;
  uint32_t dio_read_offset_align;
  uint32_t atomic_write_unit_max_opt;
  uint32_t __spare2[1];
  uint64_t __spare3[8];
};
static_assert(sizeof(fuse_statx) == 256);
static_assert(offsetof(fuse_statx, mnt_id) == 144);
static_assert(offsetof(fuse_statx, dio_mem_align) == 152);
static_assert(offsetof(fuse_statx, dio_offset_align) == 156);
static_assert(offsetof(fuse_statx, subvol) == 160);
static_assert(offsetof(fuse_statx, atomic_write_unit_min) == 168);
static_assert(offsetof(fuse_statx, atomic_write_segments_max) == 176);
static_assert(offsetof(fuse_statx, atomic_write_unit_max_opt) == 184);
static_assert(offsetof(fuse_statx, __spare3) == 192);
static_assert(offsetof(fuse_statx, ino) == 32);
static_assert(offsetof(fuse_statx, atime) == 64);
static_assert(offsetof(fuse_statx, rdev_major) == 128);

struct fuse_kstatfs {
  uint64_t blocks;
  uint64_t bfree;
  uint64_t bavail;
  uint64_t files;
  uint64_t ffree;
  uint32_t bsize;
  uint32_t namelen;
  uint32_t frsize;
  uint32_t padding;
  uint32_t spare[6];
};
static_assert(sizeof(fuse_kstatfs) == 80);

struct fuse_file_lock {
  uint64_t start;
  uint64_t end;
  uint32_t type;
  uint32_t pid;  // tgid
};
static_assert(sizeof(fuse_file_lock) == 24);

// ---------------------------------------------------------------------------------------------
// Bitmasks for fuse_setattr_in.valid.

inline constexpr uint32_t FATTR_MODE = 1u << 0;
inline constexpr uint32_t FATTR_UID = 1u << 1;
inline constexpr uint32_t FATTR_GID = 1u << 2;
inline constexpr uint32_t FATTR_SIZE = 1u << 3;
inline constexpr uint32_t FATTR_ATIME = 1u << 4;
inline constexpr uint32_t FATTR_MTIME = 1u << 5;
inline constexpr uint32_t FATTR_FH = 1u << 6;
inline constexpr uint32_t FATTR_ATIME_NOW = 1u << 7;
inline constexpr uint32_t FATTR_MTIME_NOW = 1u << 8;
inline constexpr uint32_t FATTR_LOCKOWNER = 1u << 9;
inline constexpr uint32_t FATTR_CTIME = 1u << 10;
inline constexpr uint32_t FATTR_KILL_SUIDGID = 1u << 11;

// ---------------------------------------------------------------------------------------------
// Flags returned by OPEN/OPENDIR/CREATE (fuse_open_out.open_flags).

inline constexpr uint32_t FOPEN_DIRECT_IO = 1u << 0;
inline constexpr uint32_t FOPEN_KEEP_CACHE = 1u << 1;
inline constexpr uint32_t FOPEN_NONSEEKABLE = 1u << 2;
inline constexpr uint32_t FOPEN_CACHE_DIR = 1u << 3;
inline constexpr uint32_t FOPEN_STREAM = 1u << 4;
inline constexpr uint32_t FOPEN_NOFLUSH = 1u << 5;
inline constexpr uint32_t FOPEN_PARALLEL_DIRECT_WRITES = 1u << 6;
inline constexpr uint32_t FOPEN_PASSTHROUGH = 1u << 7;

// ---------------------------------------------------------------------------------------------
// INIT flags, as 64-bit values: bits 0..31 travel in fuse_init_{in,out}.flags, bits 32..63 in
// flags2 (which is read only when FUSE_INIT_EXT is set in flags).

inline constexpr uint64_t FUSE_ASYNC_READ = 1ull << 0;
inline constexpr uint64_t FUSE_POSIX_LOCKS = 1ull << 1;
inline constexpr uint64_t FUSE_FILE_OPS = 1ull << 2;
inline constexpr uint64_t FUSE_ATOMIC_O_TRUNC = 1ull << 3;
inline constexpr uint64_t FUSE_EXPORT_SUPPORT = 1ull << 4;
inline constexpr uint64_t FUSE_BIG_WRITES = 1ull << 5;
inline constexpr uint64_t FUSE_DONT_MASK = 1ull << 6;
inline constexpr uint64_t FUSE_SPLICE_WRITE = 1ull << 7;
inline constexpr uint64_t FUSE_SPLICE_MOVE = 1ull << 8;
inline constexpr uint64_t FUSE_SPLICE_READ = 1ull << 9;
inline constexpr uint64_t FUSE_FLOCK_LOCKS = 1ull << 10;
inline constexpr uint64_t FUSE_HAS_IOCTL_DIR = 1ull << 11;
inline constexpr uint64_t FUSE_AUTO_INVAL_DATA = 1ull << 12;
inline constexpr uint64_t FUSE_DO_READDIRPLUS = 1ull << 13;
inline constexpr uint64_t FUSE_READDIRPLUS_AUTO = 1ull << 14;
inline constexpr uint64_t FUSE_ASYNC_DIO = 1ull << 15;
inline constexpr uint64_t FUSE_WRITEBACK_CACHE = 1ull << 16;
inline constexpr uint64_t FUSE_NO_OPEN_SUPPORT = 1ull << 17;
inline constexpr uint64_t FUSE_PARALLEL_DIROPS = 1ull << 18;
inline constexpr uint64_t FUSE_HANDLE_KILLPRIV = 1ull << 19;
inline constexpr uint64_t FUSE_POSIX_ACL = 1ull << 20;
inline constexpr uint64_t FUSE_ABORT_ERROR = 1ull << 21;
inline constexpr uint64_t FUSE_MAX_PAGES = 1ull << 22;
inline constexpr uint64_t FUSE_CACHE_SYMLINKS = 1ull << 23;
inline constexpr uint64_t FUSE_NO_OPENDIR_SUPPORT = 1ull << 24;
inline constexpr uint64_t FUSE_EXPLICIT_INVAL_DATA = 1ull << 25;
inline constexpr uint64_t FUSE_MAP_ALIGNMENT = 1ull << 26;
inline constexpr uint64_t FUSE_SUBMOUNTS = 1ull << 27;
inline constexpr uint64_t FUSE_HANDLE_KILLPRIV_V2 = 1ull << 28;
inline constexpr uint64_t FUSE_SETXATTR_EXT = 1ull << 29;
inline constexpr uint64_t FUSE_INIT_EXT = 1ull << 30;
inline constexpr uint64_t FUSE_INIT_RESERVED = 1ull << 31;
// Bits 32..63 get shifted down 32 bits into the flags2 field.
inline constexpr uint64_t FUSE_SECURITY_CTX = 1ull << 32;
inline constexpr uint64_t FUSE_HAS_INODE_DAX = 1ull << 33;
inline constexpr uint64_t FUSE_CREATE_SUPP_GROUP = 1ull << 34;
inline constexpr uint64_t FUSE_HAS_EXPIRE_ONLY = 1ull << 35;
inline constexpr uint64_t FUSE_DIRECT_IO_ALLOW_MMAP = 1ull << 36;
inline constexpr uint64_t FUSE_PASSTHROUGH = 1ull << 37;
inline constexpr uint64_t FUSE_NO_EXPORT_SUPPORT = 1ull << 38;
inline constexpr uint64_t FUSE_HAS_RESEND = 1ull << 39;
inline constexpr uint64_t FUSE_ALLOW_IDMAP = 1ull << 40;
inline constexpr uint64_t FUSE_OVER_IO_URING = 1ull << 41;
inline constexpr uint64_t FUSE_REQUEST_TIMEOUT = 1ull << 42;
// fuse-iomap extension (iomap spec §1.3): bit 11 of flags2.
inline constexpr uint64_t FUSE_IOMAP = 1ull << 43;
// Obsolete alias of FUSE_DIRECT_IO_ALLOW_MMAP (its 7.39 name).
inline constexpr uint64_t FUSE_DIRECT_IO_RELAX = FUSE_DIRECT_IO_ALLOW_MMAP;

// CUSE INIT request/reply flags.
inline constexpr uint32_t CUSE_UNRESTRICTED_IOCTL = 1u << 0;

// Release flags (fuse_release_in.release_flags).
inline constexpr uint32_t FUSE_RELEASE_FLUSH = 1u << 0;
inline constexpr uint32_t FUSE_RELEASE_FLOCK_UNLOCK = 1u << 1;

// Getattr flags (fuse_getattr_in.getattr_flags, fuse_statx_in.getattr_flags).
inline constexpr uint32_t FUSE_GETATTR_FH = 1u << 0;

// Lock flags (fuse_lk_in.lk_flags).
inline constexpr uint32_t FUSE_LK_FLOCK = 1u << 0;

// WRITE flags (fuse_write_in.write_flags).
inline constexpr uint32_t FUSE_WRITE_CACHE = 1u << 0;
inline constexpr uint32_t FUSE_WRITE_LOCKOWNER = 1u << 1;
inline constexpr uint32_t FUSE_WRITE_KILL_SUIDGID = 1u << 2;
// Obsolete alias; this flag implies killing suid/sgid only.
inline constexpr uint32_t FUSE_WRITE_KILL_PRIV = FUSE_WRITE_KILL_SUIDGID;

// Read flags (fuse_read_in.read_flags).
inline constexpr uint32_t FUSE_READ_LOCKOWNER = 1u << 1;

// Ioctl flags (fuse_ioctl_in.flags, fuse_ioctl_out.flags).
inline constexpr uint32_t FUSE_IOCTL_COMPAT = 1u << 0;
inline constexpr uint32_t FUSE_IOCTL_UNRESTRICTED = 1u << 1;
inline constexpr uint32_t FUSE_IOCTL_RETRY = 1u << 2;
inline constexpr uint32_t FUSE_IOCTL_32BIT = 1u << 3;
inline constexpr uint32_t FUSE_IOCTL_DIR = 1u << 4;
inline constexpr uint32_t FUSE_IOCTL_COMPAT_X32 = 1u << 5;
inline constexpr uint32_t FUSE_IOCTL_MAX_IOV = 256;

// Poll flags.
inline constexpr uint32_t FUSE_POLL_SCHEDULE_NOTIFY = 1u << 0;

// Fsync flags.
inline constexpr uint32_t FUSE_FSYNC_FDATASYNC = 1u << 0;

// fuse_attr.flags. SUBMOUNT and DAX are mainline; the rest are the fuse-iomap extension
// (iomap spec §1.5), honoured only when the negotiated minor is >= 99.
inline constexpr uint32_t FUSE_ATTR_SUBMOUNT = 1u << 0;
inline constexpr uint32_t FUSE_ATTR_DAX = 1u << 1;
inline constexpr uint32_t FUSE_ATTR_EXCLUSIVE = 1u << 2;
inline constexpr uint32_t FUSE_ATTR_IOMAP = 1u << 3;
inline constexpr uint32_t FUSE_ATTR_ATOMIC = 1u << 4;
inline constexpr uint32_t FUSE_ATTR_SYNC = 1u << 5;
inline constexpr uint32_t FUSE_ATTR_IMMUTABLE = 1u << 6;
inline constexpr uint32_t FUSE_ATTR_APPEND = 1u << 7;

// Open flags (fuse_open_in.open_flags, fuse_create_in.open_flags).
inline constexpr uint32_t FUSE_OPEN_KILL_SUIDGID = 1u << 0;

// setxattr flags (fuse_setxattr_in.setxattr_flags).
inline constexpr uint32_t FUSE_SETXATTR_ACL_KILL_SGID = 1u << 0;

// notify_inval_entry flags.
inline constexpr uint32_t FUSE_EXPIRE_ONLY = 1u << 0;

// Request extension types (fuse_ext_header.type). Types 0..31 are fuse_secctx_header.
enum fuse_ext_type : uint32_t {
  FUSE_MAX_NR_SECCTX = 31,
  FUSE_EXT_GROUPS = 32,
};

// ---------------------------------------------------------------------------------------------
// Opcodes.

enum fuse_opcode : uint32_t {
  FUSE_LOOKUP = 1,
  FUSE_FORGET = 2,  // no reply
  FUSE_GETATTR = 3,
  FUSE_SETATTR = 4,
  FUSE_READLINK = 5,
  FUSE_SYMLINK = 6,
  FUSE_MKNOD = 8,
  FUSE_MKDIR = 9,
  FUSE_UNLINK = 10,
  FUSE_RMDIR = 11,
  FUSE_RENAME = 12,
  FUSE_LINK = 13,
  FUSE_OPEN = 14,
  FUSE_READ = 15,
  FUSE_WRITE = 16,
  FUSE_STATFS = 17,
  FUSE_RELEASE = 18,
  FUSE_FSYNC = 20,
  FUSE_SETXATTR = 21,
  FUSE_GETXATTR = 22,
  FUSE_LISTXATTR = 23,
  FUSE_REMOVEXATTR = 24,
  FUSE_FLUSH = 25,
  FUSE_INIT = 26,
  FUSE_OPENDIR = 27,
  FUSE_READDIR = 28,
  FUSE_RELEASEDIR = 29,
  FUSE_FSYNCDIR = 30,
  FUSE_GETLK = 31,
  FUSE_SETLK = 32,
  FUSE_SETLKW = 33,
  FUSE_ACCESS = 34,
  FUSE_CREATE = 35,
  FUSE_INTERRUPT = 36,
  FUSE_BMAP = 37,
  FUSE_DESTROY = 38,
  FUSE_IOCTL = 39,
  FUSE_POLL = 40,
  FUSE_NOTIFY_REPLY = 41,
  FUSE_BATCH_FORGET = 42,
  FUSE_FALLOCATE = 43,
  FUSE_READDIRPLUS = 44,
  FUSE_RENAME2 = 45,
  FUSE_LSEEK = 46,
  FUSE_COPY_FILE_RANGE = 47,
  FUSE_SETUPMAPPING = 48,
  FUSE_REMOVEMAPPING = 49,
  FUSE_SYNCFS = 50,
  FUSE_TMPFILE = 51,
  FUSE_STATX = 52,
  FUSE_COPY_FILE_RANGE_64 = 53,

  // fuse-iomap extension (iomap spec §2).
  FUSE_FREEZE_FS = 4089,
  FUSE_UNFREEZE_FS = 4090,
  FUSE_SHUTDOWN_FS = 4091,
  FUSE_IOMAP_CONFIG = 4092,
  FUSE_IOMAP_IOEND = 4093,
  FUSE_IOMAP_BEGIN = 4094,
  FUSE_IOMAP_END = 4095,

  // CUSE specific operations.
  CUSE_INIT = 4096,

  // Reserved opcodes: helpful to detect structure endian-ness.
  CUSE_INIT_BSWAP_RESERVED = 1048576,    // CUSE_INIT << 8
  FUSE_INIT_BSWAP_RESERVED = 436207616,  // FUSE_INIT << 24
};

// Notification codes (fuse_out_header.error of a message with unique == 0). There is
// deliberately no FUSE_NOTIFY_CODE_MAX: the old header's value (7) collides with RESEND.
enum fuse_notify_code : int32_t {
  FUSE_NOTIFY_POLL = 1,
  FUSE_NOTIFY_INVAL_INODE = 2,
  FUSE_NOTIFY_INVAL_ENTRY = 3,
  FUSE_NOTIFY_STORE = 4,
  FUSE_NOTIFY_RETRIEVE = 5,
  FUSE_NOTIFY_DELETE = 6,
  FUSE_NOTIFY_RESEND = 7,
  FUSE_NOTIFY_INC_EPOCH = 8,
  FUSE_NOTIFY_PRUNE = 9,
  // fuse-iomap extension (iomap spec §2). UNCERTAIN (spec §2): the newest iomap snapshot
  // renames DEV_INVAL "backing inval"; whether its code changed is unknown. We use 99.
  FUSE_NOTIFY_IOMAP_DEV_INVAL = 99,
  FUSE_NOTIFY_IOMAP_UPSERT_MAPPINGS = 100,
  FUSE_NOTIFY_IOMAP_INVAL_MAPPINGS = 101,
};

// The read buffer is required to be at least 8k, but may be much larger.
inline constexpr size_t FUSE_MIN_READ_BUFFER = 8192;

inline constexpr size_t FUSE_COMPAT_ENTRY_OUT_SIZE = 120;
inline constexpr size_t FUSE_COMPAT_ATTR_OUT_SIZE = 96;
inline constexpr size_t FUSE_COMPAT_MKNOD_IN_SIZE = 8;
inline constexpr size_t FUSE_COMPAT_WRITE_IN_SIZE = 24;
inline constexpr size_t FUSE_COMPAT_STATFS_SIZE = 48;
inline constexpr size_t FUSE_COMPAT_SETXATTR_IN_SIZE = 8;
inline constexpr size_t FUSE_COMPAT_INIT_OUT_SIZE = 8;
inline constexpr size_t FUSE_COMPAT_22_INIT_OUT_SIZE = 24;

// ---------------------------------------------------------------------------------------------
// Per-opcode structs.

struct fuse_entry_out {
  uint64_t nodeid;       // Inode ID
  uint64_t generation;   // Inode generation: nodeid:gen must be unique for the fs's lifetime
  uint64_t entry_valid;  // Cache timeout for the name
  uint64_t attr_valid;   // Cache timeout for the attributes
  uint32_t entry_valid_nsec;
  uint32_t attr_valid_nsec;
  fuse_attr attr;
};
static_assert(sizeof(fuse_entry_out) == 128);

struct fuse_forget_in {
  uint64_t nlookup;
};
static_assert(sizeof(fuse_forget_in) == 8);

struct fuse_forget_one {
  uint64_t nodeid;
  uint64_t nlookup;
};
static_assert(sizeof(fuse_forget_one) == 16);

struct fuse_batch_forget_in {
  uint32_t count;
  uint32_t dummy;
};
static_assert(sizeof(fuse_batch_forget_in) == 8);

struct fuse_getattr_in {
  uint32_t getattr_flags;
  uint32_t dummy;
  uint64_t fh;
};
static_assert(sizeof(fuse_getattr_in) == 16);

struct fuse_attr_out {
  uint64_t attr_valid;  // Cache timeout for the attributes
  uint32_t attr_valid_nsec;
  uint32_t dummy;
  fuse_attr attr;
};
static_assert(sizeof(fuse_attr_out) == 104);

struct fuse_statx_in {
  uint32_t getattr_flags;
  uint32_t reserved;
  uint64_t fh;
  uint32_t sx_flags;
  uint32_t sx_mask;
};
static_assert(sizeof(fuse_statx_in) == 24);

struct fuse_statx_out {
  uint64_t attr_valid;  // Cache timeout for the attributes
  uint32_t attr_valid_nsec;
  uint32_t flags;
  uint64_t spare[2];
  fuse_statx stat;
};
static_assert(sizeof(fuse_statx_out) == 288);

struct fuse_mknod_in {
  uint32_t mode;
  uint32_t rdev;
  uint32_t umask;
  uint32_t padding;
};
static_assert(sizeof(fuse_mknod_in) == 16);

struct fuse_mkdir_in {
  uint32_t mode;
  uint32_t umask;
};
static_assert(sizeof(fuse_mkdir_in) == 8);

struct fuse_rename_in {
  uint64_t newdir;
};
static_assert(sizeof(fuse_rename_in) == 8);

struct fuse_rename2_in {
  uint64_t newdir;
  uint32_t flags;
  uint32_t padding;
};
static_assert(sizeof(fuse_rename2_in) == 16);

struct fuse_link_in {
  uint64_t oldnodeid;
};
static_assert(sizeof(fuse_link_in) == 8);

struct fuse_setattr_in {
  uint32_t valid;
  uint32_t padding;
  uint64_t fh;
  uint64_t size;
  uint64_t lock_owner;
  uint64_t atime;
  uint64_t mtime;
  uint64_t ctime;
  uint32_t atimensec;
  uint32_t mtimensec;
  uint32_t ctimensec;
  uint32_t mode;
  uint32_t unused4;
  uint32_t uid;
  uint32_t gid;
  uint32_t unused5;
};
static_assert(sizeof(fuse_setattr_in) == 88);

struct fuse_open_in {
  uint32_t flags;
  uint32_t open_flags;  // FUSE_OPEN_...
};
static_assert(sizeof(fuse_open_in) == 8);

struct fuse_create_in {
  uint32_t flags;
  uint32_t mode;
  uint32_t umask;
  uint32_t open_flags;  // FUSE_OPEN_...
};
static_assert(sizeof(fuse_create_in) == 16);

struct fuse_open_out {
  uint64_t fh;
  uint32_t open_flags;
  int32_t backing_id;  // read only with FOPEN_PASSTHROUGH (7.40; was padding)
};
static_assert(sizeof(fuse_open_out) == 16);

struct fuse_release_in {
  uint64_t fh;
  uint32_t flags;
  uint32_t release_flags;
  uint64_t lock_owner;
};
static_assert(sizeof(fuse_release_in) == 24);

struct fuse_flush_in {
  uint64_t fh;
  uint32_t unused;
  uint32_t padding;
  uint64_t lock_owner;
};
static_assert(sizeof(fuse_flush_in) == 24);

struct fuse_read_in {
  uint64_t fh;
  uint64_t offset;
  uint32_t size;
  uint32_t read_flags;
  uint64_t lock_owner;
  uint32_t flags;
  uint32_t padding;
};
static_assert(sizeof(fuse_read_in) == 40);

struct fuse_write_in {
  uint64_t fh;
  uint64_t offset;
  uint32_t size;
  uint32_t write_flags;
  uint64_t lock_owner;
  uint32_t flags;
  uint32_t padding;
};
static_assert(sizeof(fuse_write_in) == 40);

struct fuse_write_out {
  uint32_t size;
  uint32_t padding;
};
static_assert(sizeof(fuse_write_out) == 8);

struct fuse_statfs_out {
  fuse_kstatfs st;
};
static_assert(sizeof(fuse_statfs_out) == 80);

struct fuse_fsync_in {
  uint64_t fh;
  uint32_t fsync_flags;
  uint32_t padding;
};
static_assert(sizeof(fuse_fsync_in) == 16);

// 16 bytes with FUSE_SETXATTR_EXT negotiated, else only the first 8
// (FUSE_COMPAT_SETXATTR_IN_SIZE).
struct fuse_setxattr_in {
  uint32_t size;
  uint32_t flags;
  uint32_t setxattr_flags;
  uint32_t padding;
};
static_assert(sizeof(fuse_setxattr_in) == 16);

struct fuse_getxattr_in {
  uint32_t size;
  uint32_t padding;
};
static_assert(sizeof(fuse_getxattr_in) == 8);

struct fuse_getxattr_out {
  uint32_t size;
  uint32_t padding;
};
static_assert(sizeof(fuse_getxattr_out) == 8);

struct fuse_lk_in {
  uint64_t fh;
  uint64_t owner;
  fuse_file_lock lk;
  uint32_t lk_flags;
  uint32_t padding;
};
static_assert(sizeof(fuse_lk_in) == 48);

struct fuse_lk_out {
  fuse_file_lock lk;
};
static_assert(sizeof(fuse_lk_out) == 24);

struct fuse_access_in {
  uint32_t mask;
  uint32_t padding;
};
static_assert(sizeof(fuse_access_in) == 8);

struct fuse_init_in {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  uint32_t flags2;
  uint32_t unused[11];
};
static_assert(sizeof(fuse_init_in) == 64);

struct fuse_init_out {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  uint16_t max_background;
  uint16_t congestion_threshold;
  uint32_t max_write;
  uint32_t time_gran;
  uint16_t max_pages;
  uint16_t map_alignment;
  uint32_t flags2;
  uint32_t max_stack_depth;  // 7.40
  uint16_t request_timeout;  // 7.43, seconds
  uint16_t unused[11];
};
static_assert(sizeof(fuse_init_out) == 64);
static_assert(offsetof(fuse_init_out, flags2) == 32);
static_assert(offsetof(fuse_init_out, request_timeout) == 40);

inline constexpr size_t CUSE_INIT_INFO_MAX = 4096;

struct cuse_init_in {
  uint32_t major;
  uint32_t minor;
  uint32_t unused;
  uint32_t flags;
};
static_assert(sizeof(cuse_init_in) == 16);

struct cuse_init_out {
  uint32_t major;
  uint32_t minor;
  uint32_t unused;
  uint32_t flags;
  uint32_t max_read;
  uint32_t max_write;
  uint32_t dev_major;  // chardev major
  uint32_t dev_minor;  // chardev minor
  uint32_t spare[10];
};
static_assert(sizeof(cuse_init_out) == 72);

struct fuse_interrupt_in {
  uint64_t unique;
};
static_assert(sizeof(fuse_interrupt_in) == 8);

struct fuse_bmap_in {
  uint64_t block;
  uint32_t blocksize;
  uint32_t padding;
};
static_assert(sizeof(fuse_bmap_in) == 16);

struct fuse_bmap_out {
  uint64_t block;
};
static_assert(sizeof(fuse_bmap_out) == 8);

struct fuse_ioctl_in {
  uint64_t fh;
  uint32_t flags;
  uint32_t cmd;
  uint64_t arg;
  uint32_t in_size;
  uint32_t out_size;
};
static_assert(sizeof(fuse_ioctl_in) == 32);

struct fuse_ioctl_iovec {
  uint64_t base;
  uint64_t len;
};
static_assert(sizeof(fuse_ioctl_iovec) == 16);

struct fuse_ioctl_out {
  int32_t result;
  uint32_t flags;
  uint32_t in_iovs;
  uint32_t out_iovs;
};
static_assert(sizeof(fuse_ioctl_out) == 16);

struct fuse_poll_in {
  uint64_t fh;
  uint64_t kh;
  uint32_t flags;
  uint32_t events;
};
static_assert(sizeof(fuse_poll_in) == 24);

struct fuse_poll_out {
  uint32_t revents;
  uint32_t padding;
};
static_assert(sizeof(fuse_poll_out) == 8);

struct fuse_notify_poll_wakeup_out {
  uint64_t kh;
};
static_assert(sizeof(fuse_notify_poll_wakeup_out) == 8);

struct fuse_fallocate_in {
  uint64_t fh;
  uint64_t offset;
  uint64_t length;
  uint32_t mode;
  uint32_t padding;
};
static_assert(sizeof(fuse_fallocate_in) == 32);

// fuse_in_header.unique bit 63: the request was re-queued by FUSE_NOTIFY_RESEND (7.40). The
// reply must echo unique verbatim, this bit included.
inline constexpr uint64_t FUSE_UNIQUE_RESEND = 1ull << 63;

// fuse_in_header.uid/gid when ALLOW_IDMAP is on and the caller's ids cannot be mapped (7.41).
inline constexpr uint32_t FUSE_INVALID_UIDGID = 0xFFFFFFFFu;

struct fuse_in_header {
  uint32_t len;
  uint32_t opcode;
  uint64_t unique;
  uint64_t nodeid;
  uint32_t uid;
  uint32_t gid;
  uint32_t pid;
  uint16_t total_extlen;  // length of extensions in 8-byte units
  uint16_t padding;
};
static_assert(sizeof(fuse_in_header) == 40);

struct fuse_out_header {
  uint32_t len;
  int32_t error;
  uint64_t unique;
};
static_assert(sizeof(fuse_out_header) == 16);

// Followed by namelen bytes of name (not NUL-terminated), then padding to 8 bytes.
struct fuse_dirent {
  uint64_t ino;
  uint64_t off;
  uint32_t namelen;
  uint32_t type;
  // char name[];
};
static_assert(sizeof(fuse_dirent) == 24);

// Align variable length records to 64-bit boundary.
constexpr size_t FUSE_REC_ALIGN(size_t x) {
  return (x + sizeof(uint64_t) - 1) & ~(sizeof(uint64_t) - 1);
}
inline constexpr size_t FUSE_NAME_OFFSET = sizeof(fuse_dirent);
constexpr size_t FUSE_DIRENT_ALIGN(size_t x) { return FUSE_REC_ALIGN(x); }
// FUSE_DIRENT_SIZE in the uapi takes a pointer; here it takes the name length.
constexpr size_t FUSE_DIRENT_SIZE(size_t namelen) {
  return FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + namelen);
}

struct fuse_direntplus {
  fuse_entry_out entry_out;
  fuse_dirent dirent;
};
static_assert(sizeof(fuse_direntplus) == 152);

inline constexpr size_t FUSE_NAME_OFFSET_DIRENTPLUS = sizeof(fuse_direntplus);
constexpr size_t FUSE_DIRENTPLUS_SIZE(size_t namelen) {
  return FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET_DIRENTPLUS + namelen);
}

// ---------------------------------------------------------------------------------------------
// Notifications (server -> kernel).

struct fuse_notify_inval_inode_out {
  uint64_t ino;
  int64_t off;
  int64_t len;
};
static_assert(sizeof(fuse_notify_inval_inode_out) == 24);

// Followed by namelen bytes of name and a NUL.
struct fuse_notify_inval_entry_out {
  uint64_t parent;
  uint32_t namelen;
  uint32_t flags;  // FUSE_EXPIRE_ONLY
};
static_assert(sizeof(fuse_notify_inval_entry_out) == 16);

// Followed by namelen bytes of name and a NUL.
struct fuse_notify_delete_out {
  uint64_t parent;
  uint64_t child;
  uint32_t namelen;
  uint32_t padding;
};
static_assert(sizeof(fuse_notify_delete_out) == 24);

// Followed by size bytes of data.
struct fuse_notify_store_out {
  uint64_t nodeid;
  uint64_t offset;
  uint32_t size;
  uint32_t padding;
};
static_assert(sizeof(fuse_notify_store_out) == 24);

struct fuse_notify_retrieve_out {
  uint64_t notify_unique;
  uint64_t nodeid;
  uint64_t offset;
  uint32_t size;
  uint32_t padding;
};
static_assert(sizeof(fuse_notify_retrieve_out) == 32);

// Matches the size of fuse_write_in. Body of FUSE_NOTIFY_REPLY, followed by size bytes.
struct fuse_notify_retrieve_in {
  uint64_t dummy1;
  uint64_t offset;
  uint32_t size;
  uint32_t dummy2;
  uint64_t dummy3;
  uint64_t dummy4;
};
static_assert(sizeof(fuse_notify_retrieve_in) == 40);

// Followed by count u64 node ids (7.45).
struct fuse_notify_prune_out {
  uint32_t count;
  uint32_t padding;
  uint64_t spare;
};
static_assert(sizeof(fuse_notify_prune_out) == 16);

// ---------------------------------------------------------------------------------------------
// Passthrough / backing files (7.40) and device ioctls.

// flags low 8 bits: the backing type (the types are the fuse-iomap extension, spec §11.1;
// mainline 6.18 requires flags == 0, i.e. PASSTHROUGH).
struct fuse_backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
static_assert(sizeof(fuse_backing_map) == 16);

inline constexpr uint32_t FUSE_BACKING_TYPE_PASSTHROUGH = 0;
inline constexpr uint32_t FUSE_BACKING_TYPE_IOMAP = 1;
inline constexpr uint32_t FUSE_BACKING_TYPE_MASK = 0xFF;

// asm-generic ioctl encoding (x86-64, arm64): dir << 30 | size << 16 | type << 8 | nr.
namespace ioc {
inline constexpr uint32_t kNone = 0;
inline constexpr uint32_t kWrite = 1;
inline constexpr uint32_t kRead = 2;
constexpr uint32_t Encode(uint32_t dir, uint32_t type, uint32_t nr, uint32_t size) {
  return (dir << 30) | (size << 16) | (type << 8) | nr;
}
}  // namespace ioc

inline constexpr uint32_t FUSE_DEV_IOC_MAGIC = 229;

// fuse-iomap discovery (spec §1.2, §11).
struct fuse_iomap_support {
  uint64_t flags;  // FUSE_IOMAP_SUPPORT_*
  uint64_t padding;
};
static_assert(sizeof(fuse_iomap_support) == 16);

inline constexpr uint64_t FUSE_IOMAP_SUPPORT_FILEIO = 1ull << 0;
inline constexpr uint64_t FUSE_IOMAP_SUPPORT_ATOMIC = 1ull << 1;

// Argument of FUSE_DEV_IOC_IOMAP_SET_BLOCKSIZE (spec §11.2).
struct fuse_iomap_backing_info {
  uint32_t backing_id;
  uint32_t blocksize;
};
static_assert(sizeof(fuse_iomap_backing_info) == 8);

inline constexpr uint32_t FUSE_DEV_IOC_CLONE =
    ioc::Encode(ioc::kRead, FUSE_DEV_IOC_MAGIC, 0, sizeof(uint32_t));
inline constexpr uint32_t FUSE_DEV_IOC_BACKING_OPEN =
    ioc::Encode(ioc::kWrite, FUSE_DEV_IOC_MAGIC, 1, sizeof(fuse_backing_map));
inline constexpr uint32_t FUSE_DEV_IOC_BACKING_CLOSE =
    ioc::Encode(ioc::kWrite, FUSE_DEV_IOC_MAGIC, 2, sizeof(uint32_t));
inline constexpr uint32_t FUSE_DEV_IOC_SYNC_INIT =
    ioc::Encode(ioc::kNone, FUSE_DEV_IOC_MAGIC, 3, 0);
// fuse-iomap extension (v7 numbering, spec §11).
inline constexpr uint32_t FUSE_DEV_IOC_IOMAP_SUPPORT =
    ioc::Encode(ioc::kRead, FUSE_DEV_IOC_MAGIC, 99, sizeof(fuse_iomap_support));
inline constexpr uint32_t FUSE_DEV_IOC_SET_NOFS =
    ioc::Encode(ioc::kWrite, FUSE_DEV_IOC_MAGIC, 100, sizeof(uint32_t));
inline constexpr uint32_t FUSE_DEV_IOC_ADD_IOMAP =
    ioc::Encode(ioc::kNone, FUSE_DEV_IOC_MAGIC, 101, 0);
inline constexpr uint32_t FUSE_DEV_IOC_IOMAP_SET_BLOCKSIZE =
    ioc::Encode(ioc::kWrite, FUSE_DEV_IOC_MAGIC, 102, sizeof(fuse_iomap_backing_info));

static_assert(FUSE_DEV_IOC_CLONE == 0x8004E500);
static_assert(FUSE_DEV_IOC_BACKING_OPEN == 0x4010E501);
static_assert(FUSE_DEV_IOC_BACKING_CLOSE == 0x4004E502);
static_assert(FUSE_DEV_IOC_SYNC_INIT == 0x0000E503);
static_assert(FUSE_DEV_IOC_IOMAP_SUPPORT == 0x8010E563);
static_assert(FUSE_DEV_IOC_SET_NOFS == 0x4004E564);
static_assert(FUSE_DEV_IOC_ADD_IOMAP == 0x0000E565);
static_assert(FUSE_DEV_IOC_IOMAP_SET_BLOCKSIZE == 0x4008E566);

struct fuse_lseek_in {
  uint64_t fh;
  uint64_t offset;
  uint32_t whence;
  uint32_t padding;
};
static_assert(sizeof(fuse_lseek_in) == 24);

struct fuse_lseek_out {
  uint64_t offset;
};
static_assert(sizeof(fuse_lseek_out) == 8);

// Input of FUSE_COPY_FILE_RANGE (47) and FUSE_COPY_FILE_RANGE_64 (53).
struct fuse_copy_file_range_in {
  uint64_t fh_in;
  uint64_t off_in;
  uint64_t nodeid_out;
  uint64_t fh_out;
  uint64_t off_out;
  uint64_t len;
  uint64_t flags;
};
static_assert(sizeof(fuse_copy_file_range_in) == 56);

// Reply of FUSE_COPY_FILE_RANGE_64 (7.45). Opcode 47 replies fuse_write_out.
struct fuse_copy_file_range_out {
  uint64_t bytes_copied;
};
static_assert(sizeof(fuse_copy_file_range_out) == 8);

inline constexpr uint64_t FUSE_SETUPMAPPING_FLAG_WRITE = 1ull << 0;
inline constexpr uint64_t FUSE_SETUPMAPPING_FLAG_READ = 1ull << 1;

struct fuse_setupmapping_in {
  uint64_t fh;       // An already open handle
  uint64_t foffset;  // Offset into the file to start the mapping
  uint64_t len;      // Length of mapping required
  uint64_t flags;    // Flags, FUSE_SETUPMAPPING_FLAG_*
  uint64_t moffset;  // Offset in Memory Window
};
static_assert(sizeof(fuse_setupmapping_in) == 40);

struct fuse_removemapping_in {
  uint32_t count;  // number of fuse_removemapping_one follows
};
static_assert(sizeof(fuse_removemapping_in) == 4);

struct fuse_removemapping_one {
  uint64_t moffset;  // Offset into the dax window start the unmapping
  uint64_t len;      // Length of mapping required
};
static_assert(sizeof(fuse_removemapping_one) == 16);

struct fuse_syncfs_in {
  uint64_t padding;
};
static_assert(sizeof(fuse_syncfs_in) == 8);

// For each security context, a fuse_secctx is sent, followed by the context name (NUL
// terminated) and then the context itself; the whole is 8-byte aligned.
struct fuse_secctx {
  uint32_t size;
  uint32_t padding;
};
static_assert(sizeof(fuse_secctx) == 8);

// Sent before the fuse_secctx records. size is the total of all contexts and this header.
struct fuse_secctx_header {
  uint32_t size;
  uint32_t nr_secctx;
};
static_assert(sizeof(fuse_secctx_header) == 8);

// Header of one request extension record. size is the whole record, 8-byte aligned;
// type is fuse_ext_type.
struct fuse_ext_header {
  uint32_t size;
  uint32_t type;
};
static_assert(sizeof(fuse_ext_header) == 8);

// Body of a FUSE_EXT_GROUPS record; followed by nr_groups u32 group ids.
struct fuse_supp_groups {
  uint32_t nr_groups;
  // uint32_t groups[];
};
static_assert(sizeof(fuse_supp_groups) == 4);

// ---------------------------------------------------------------------------------------------
// FUSE-over-io_uring (7.42).

inline constexpr size_t FUSE_URING_IN_OUT_HEADER_SZ = 128;
inline constexpr size_t FUSE_URING_OP_IN_OUT_SZ = 128;

struct fuse_uring_ent_in_out {
  uint64_t flags;
  // kernel fills in; reads back with the commit (the request's unique)
  uint64_t commit_id;
  // size of user payload buffer used
  uint32_t payload_sz;
  uint32_t padding;
  uint64_t reserved;
};
static_assert(sizeof(fuse_uring_ent_in_out) == 32);

// Header buffer of one ring entry.
struct fuse_uring_req_header {
  char in_out[FUSE_URING_IN_OUT_HEADER_SZ];  // fuse_in_header / fuse_out_header
  char op_in[FUSE_URING_OP_IN_OUT_SZ];       // the per-opcode argument 0
  fuse_uring_ent_in_out ring_ent_in_out;
};
static_assert(sizeof(fuse_uring_req_header) == 288);

enum fuse_uring_cmd : uint32_t {
  FUSE_IO_URING_CMD_INVALID = 0,
  FUSE_IO_URING_CMD_REGISTER = 1,
  FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2,
};

// In the 80-byte SQE128 command area.
struct fuse_uring_cmd_req {
  uint64_t flags;
  uint64_t commit_id;  // entry identifier for commits
  uint16_t qid;        // queue the command is for (queue index)
  uint8_t padding[6];
};
static_assert(sizeof(fuse_uring_cmd_req) == 24);

// ---------------------------------------------------------------------------------------------
// fuse-iomap extension (iomap spec §3-§12, v7 layout).

inline constexpr uint64_t FUSE_IOMAP_NULL_ADDR = 0xFFFFFFFFFFFFFFFFull;
inline constexpr uint32_t FUSE_IOMAP_DEV_NULL = 0;
inline constexpr uint64_t FUSE_IOMAP_INVAL_TO_EOF = 0xFFFFFFFFFFFFFFFFull;

// Mapping types (fuse_iomap_io.type).
inline constexpr uint16_t FUSE_IOMAP_TYPE_HOLE = 0;
inline constexpr uint16_t FUSE_IOMAP_TYPE_DELALLOC = 1;
inline constexpr uint16_t FUSE_IOMAP_TYPE_MAPPED = 2;
inline constexpr uint16_t FUSE_IOMAP_TYPE_UNWRITTEN = 3;
inline constexpr uint16_t FUSE_IOMAP_TYPE_INLINE = 4;
inline constexpr uint16_t FUSE_IOMAP_TYPE_NOCACHE = 253;
inline constexpr uint16_t FUSE_IOMAP_TYPE_RETRY_CACHE = 254;
inline constexpr uint16_t FUSE_IOMAP_TYPE_PURE_OVERWRITE = 255;

// Mapping flags (fuse_iomap_io.flags). The kernel accepts only bits 0-7 from the server.
inline constexpr uint16_t FUSE_IOMAP_F_NEW = 1u << 0;
inline constexpr uint16_t FUSE_IOMAP_F_DIRTY = 1u << 1;
inline constexpr uint16_t FUSE_IOMAP_F_SHARED = 1u << 2;
inline constexpr uint16_t FUSE_IOMAP_F_MERGED = 1u << 3;
inline constexpr uint16_t FUSE_IOMAP_F_BOUNDARY = 1u << 4;
inline constexpr uint16_t FUSE_IOMAP_F_ANON_WRITE = 1u << 5;
inline constexpr uint16_t FUSE_IOMAP_F_ATOMIC_BIO = 1u << 6;
inline constexpr uint16_t FUSE_IOMAP_F_WANT_IOMAP_END = 1u << 7;
inline constexpr uint16_t FUSE_IOMAP_F_SIZE_CHANGED = 1u << 8;  // END only
inline constexpr uint16_t FUSE_IOMAP_F_STALE = 1u << 9;         // END only

// Operation flags (opflags of BEGIN/END).
inline constexpr uint32_t FUSE_IOMAP_OP_WRITE = 1u << 0;
inline constexpr uint32_t FUSE_IOMAP_OP_ZERO = 1u << 1;
inline constexpr uint32_t FUSE_IOMAP_OP_REPORT = 1u << 2;
inline constexpr uint32_t FUSE_IOMAP_OP_FAULT = 1u << 3;
inline constexpr uint32_t FUSE_IOMAP_OP_DIRECT = 1u << 4;
inline constexpr uint32_t FUSE_IOMAP_OP_NOWAIT = 1u << 5;
// UNCERTAIN (spec §3.4): whether fuse ever requests OVERWRITE_ONLY.
inline constexpr uint32_t FUSE_IOMAP_OP_OVERWRITE_ONLY = 1u << 6;
inline constexpr uint32_t FUSE_IOMAP_OP_UNSHARE = 1u << 7;
inline constexpr uint32_t FUSE_IOMAP_OP_DAX = 1u << 8;
inline constexpr uint32_t FUSE_IOMAP_OP_ATOMIC = 1u << 9;
inline constexpr uint32_t FUSE_IOMAP_OP_DONTCACHE = 1u << 10;
inline constexpr uint32_t FUSE_IOMAP_OP_SWAPFILE = 1u << 30;
inline constexpr uint32_t FUSE_IOMAP_OP_WRITEBACK = 1u << 31;

// IOEND flags (fuse_iomap_ioend_in.flags).
inline constexpr uint32_t FUSE_IOMAP_IOEND_SHARED = 1u << 0;
inline constexpr uint32_t FUSE_IOMAP_IOEND_UNWRITTEN = 1u << 1;
inline constexpr uint32_t FUSE_IOMAP_IOEND_BOUNDARY = 1u << 2;
inline constexpr uint32_t FUSE_IOMAP_IOEND_DIRECT = 1u << 3;
inline constexpr uint32_t FUSE_IOMAP_IOEND_APPEND = 1u << 4;
inline constexpr uint32_t FUSE_IOMAP_IOEND_WRITEBACK = 1u << 5;
inline constexpr uint32_t FUSE_IOMAP_IOEND_SWAPOFF = 1u << 6;

// CONFIG flags (fuse_iomap_config_{in,out}.flags).
inline constexpr uint64_t FUSE_IOMAP_CONFIG_SID = 1ull << 0;
inline constexpr uint64_t FUSE_IOMAP_CONFIG_UUID = 1ull << 1;
inline constexpr uint64_t FUSE_IOMAP_CONFIG_BLOCKSIZE = 1ull << 2;
inline constexpr uint64_t FUSE_IOMAP_CONFIG_MAX_LINKS = 1ull << 3;
inline constexpr uint64_t FUSE_IOMAP_CONFIG_TIME = 1ull << 4;
inline constexpr uint64_t FUSE_IOMAP_CONFIG_MAXBYTES = 1ull << 5;
inline constexpr uint64_t FUSE_IOMAP_CONFIG_CACHE_MAXBYTES = 1ull << 6;

// One mapping (spec §3.1). Wire order; libfuse's fuse_file_iomap differs.
struct fuse_iomap_io {
  uint64_t offset;  // file offset of mapping, bytes
  uint64_t length;  // length of mapping, bytes
  uint64_t addr;    // disk offset of mapping, bytes, or FUSE_IOMAP_NULL_ADDR
  uint16_t type;    // FUSE_IOMAP_TYPE_*
  uint16_t flags;   // FUSE_IOMAP_F_*
  uint32_t dev;     // backing id from BACKING_OPEN, or FUSE_IOMAP_DEV_NULL
};
static_assert(sizeof(fuse_iomap_io) == 32);

struct fuse_iomap_begin_in {
  uint32_t opflags;  // FUSE_IOMAP_OP_*
  uint32_t reserved;
  uint64_t attr_ino;  // the fuse_attr.ino the server reported
  uint64_t pos;
  uint64_t count;
};
static_assert(sizeof(fuse_iomap_begin_in) == 32);

// Exact size required.
struct fuse_iomap_begin_out {
  fuse_iomap_io read;   // source mapping
  fuse_iomap_io write;  // destination mapping, or PURE_OVERWRITE
};
static_assert(sizeof(fuse_iomap_begin_out) == 64);

struct fuse_iomap_end_in {
  uint32_t opflags;
  uint32_t reserved;
  uint64_t attr_ino;
  uint64_t pos;
  uint64_t count;
  int64_t written;
  fuse_iomap_io map;
};
static_assert(sizeof(fuse_iomap_end_in) == 72);

struct fuse_iomap_ioend_in {
  uint32_t flags;  // FUSE_IOMAP_IOEND_*
  int32_t error;   // 0 or negative errno
  uint64_t attr_ino;
  uint64_t pos;
  // UNCERTAIN (spec §6.1): bytes per the uapi comment, but 512-byte sectors for writeback
  // completions in the v7 code. Do not depend on it.
  uint64_t new_addr;
  uint64_t written;
  uint32_t dev;
  uint32_t pad;
};
static_assert(sizeof(fuse_iomap_ioend_in) == 48);

// Exact size required.
struct fuse_iomap_ioend_out {
  uint64_t newsize;  // on-disk file size after processing this ioend
};
static_assert(sizeof(fuse_iomap_ioend_out) == 8);

struct fuse_iomap_config_in {
  uint64_t flags;  // FUSE_IOMAP_CONFIG_* the kernel understands
  int64_t maxbytes;
  uint32_t cache_maxbytes;
  uint32_t zero;
  uint64_t padding[5];
};
static_assert(sizeof(fuse_iomap_config_in) == 64);

// Shorter replies are accepted (the libfuse fork sends 96 bytes).
struct fuse_iomap_config_out {
  uint64_t flags;  // FUSE_IOMAP_CONFIG_*: which fields are valid
  char s_id[32];
  uint8_t s_uuid[16];
  uint8_t s_uuid_len;
  uint8_t s_pad[3];  // must be zero
  uint32_t s_blocksize;
  uint32_t s_max_links;
  uint32_t s_time_gran;
  int64_t s_time_min;
  int64_t s_time_max;
  int64_t s_maxbytes;
  uint32_t cache_maxbytes;
  uint32_t pad;  // UNCERTAIN: unnamed in the spec (4 bytes at offset 100)
};
static_assert(sizeof(fuse_iomap_config_out) == 104);
static_assert(offsetof(fuse_iomap_config_out, s_blocksize) == 60);
static_assert(offsetof(fuse_iomap_config_out, s_time_min) == 72);
static_assert(offsetof(fuse_iomap_config_out, cache_maxbytes) == 96);

struct fuse_freezefs_in {
  uint64_t unlinked;  // inodes with pending removal
};
static_assert(sizeof(fuse_freezefs_in) == 8);

struct fuse_shutdownfs_in {
  uint64_t flags;  // currently 0
};
static_assert(sizeof(fuse_shutdownfs_in) == 8);

// A byte range. UNCERTAIN: the spec gives only the field names (range.offset, range.length);
// the struct's own name is ours.
struct fuse_range {
  uint64_t offset;
  uint64_t length;
};
static_assert(sizeof(fuse_range) == 16);

// Body of FUSE_NOTIFY_IOMAP_DEV_INVAL (spec §11.5).
struct fuse_iomap_dev_inval_out {
  uint32_t dev;  // backing id
  uint32_t reserved;
  fuse_range range;  // bytes on the device
};
static_assert(sizeof(fuse_iomap_dev_inval_out) == 24);

// Body of FUSE_NOTIFY_IOMAP_UPSERT_MAPPINGS (spec §12.3).
struct fuse_iomap_upsert_mappings_out {
  uint64_t nodeid;
  uint64_t attr_ino;    // must equal the inode's fuse_attr.ino
  fuse_iomap_io read;   // or type NOCACHE
  fuse_iomap_io write;  // or type NOCACHE
};
static_assert(sizeof(fuse_iomap_upsert_mappings_out) == 80);

// Body of FUSE_NOTIFY_IOMAP_INVAL_MAPPINGS (spec §12.4). A zero length leaves the fork alone;
// FUSE_IOMAP_INVAL_TO_EOF means to the end of the file.
struct fuse_iomap_inval_mappings_out {
  uint64_t nodeid;
  uint64_t attr_ino;
  fuse_range read;
  fuse_range write;
};
static_assert(sizeof(fuse_iomap_inval_mappings_out) == 48);

}  // namespace iomapfs::abi
