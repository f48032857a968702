// reply.h: encoding of FUSE replies and notifications (server -> kernel).
//
// A reply is a fuse_out_header followed by a body. The two are built separately because the
// transports place them separately: classic /dev/fuse writes them with one writev (header and
// body iovecs, READ data from the handler's own buffer, never copied twice), io_uring puts the
// header in the entry's in_out area and the body in its payload buffer. So:
//   * ReplyHeader() builds the header for a given body length;
//   * Make*Out() build the fixed reply structs (with node id translation where the struct
//     carries one); BodyWriter appends them, names and data into a caller-provided buffer;
//   * DirentBuffer fills a READDIR/READDIRPLUS body into a caller-provided buffer;
//   * EncodeNotify*() build complete notification messages (unique = 0, error = code).
// Nothing here knows ext4: inputs are abi structs, ids and plain values.
//
// Root translation: ext4 inode 2 is the kernel's FUSE_ROOT_ID. Node id fields (entry nodeid,
// notification node ids) are translated; attribute inode numbers (fuse_attr.ino, dirent ino,
// iomap attr_ino) carry the real inode number.
//
// Thread-safety: pure functions; BodyWriter and DirentBuffer are single-threaded values.
// Ownership: BodyWriter and DirentBuffer write into storage owned by the caller, which must
// outlive them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "base/strong_id.h"
#include "fsserver/wire/fuse_abi.h"

namespace iomapfs::wire {

// A kernel cache validity period (entry_valid/attr_valid and their _nsec fields).
struct CacheTimeout {
  uint64_t sec = 0;
  uint32_t nsec = 0;  // < 1e9
};

// ---------------------------------------------------------------------------------------------
// Headers.

// The out header of a reply to the request with this unique (echoed verbatim, bit 63 included).
// error: 0 or a positive errno. The kernel rejects errors outside -511..0 (and the request would
// then never complete), so an error outside 1..511 is sent as EIO. With error != 0 the kernel
// ignores any body, and len is 16 regardless of body_len.
abi::fuse_out_header ReplyHeader(Unique unique, int error, size_t body_len);

// The out header of a notification: unique 0, error = code, len = 16 + body_len.
abi::fuse_out_header NotifyHeader(abi::fuse_notify_code code, size_t body_len);

// A whole reply (header + body) in one buffer, for small replies and tests.
std::vector<std::byte> EncodeReply(Unique unique, int error, std::span<const std::byte> body = {});

// The bytes of a trivially copyable value.
template <class T>
std::span<const std::byte> BytesOf(const T& v) {
  static_assert(std::is_trivially_copyable_v<T>);
  return std::as_bytes(std::span<const T, 1>(&v, 1));
}

// A successful reply whose body is one struct.
template <class T>
std::vector<std::byte> EncodeReply(Unique unique, const T& body) {
  return EncodeReply(unique, 0, BytesOf(body));
}

// ---------------------------------------------------------------------------------------------
// Body writer.

// Appends reply body pieces into a caller-provided buffer (e.g. an io_uring payload buffer).
// An append that does not fit writes nothing and returns false.
class BodyWriter {
 public:
  explicit BodyWriter(std::span<std::byte> storage) : storage_(storage) {}

  template <class T>
  [[nodiscard]] bool Append(const T& v) {
    return AppendBytes(BytesOf(v));
  }
  [[nodiscard]] bool AppendBytes(std::span<const std::byte> bytes);
  // The string's bytes followed by a NUL.
  [[nodiscard]] bool AppendCString(std::string_view s);

  size_t size() const { return size_; }
  size_t capacity() const { return storage_.size(); }
  std::span<const std::byte> bytes() const { return storage_.first(size_); }

 private:
  std::span<std::byte> storage_;
  size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Reply structs.

// LOOKUP/MKNOD/MKDIR/SYMLINK/LINK/CREATE/TMPFILE. nodeid = NodeIdFromIno(ino); attr is copied
// unchanged (attr.ino is the real inode number).
// REQUIRES: ino != Ino{1}.
abi::fuse_entry_out MakeEntryOut(Ino ino, uint64_t generation, const abi::fuse_attr& attr,
                                 CacheTimeout entry_valid, CacheTimeout attr_valid);

// A negative LOOKUP answer: node id 0, cached as "does not exist" for entry_valid.
abi::fuse_entry_out MakeNegativeEntryOut(CacheTimeout entry_valid);

// GETATTR/SETATTR.
abi::fuse_attr_out MakeAttrOut(const abi::fuse_attr& attr, CacheTimeout attr_valid);

// OPEN/OPENDIR/CREATE/TMPFILE. backing_id is read by the kernel only with FOPEN_PASSTHROUGH.
abi::fuse_open_out MakeOpenOut(FileHandle fh, uint32_t open_flags, int32_t backing_id = 0);

// WRITE, and COPY_FILE_RANGE (47).
abi::fuse_write_out MakeWriteOut(uint32_t size);

// STATFS.
abi::fuse_statfs_out MakeStatfsOut(const abi::fuse_kstatfs& st);

// GETXATTR/LISTXATTR size queries (request size 0): the size the value would need.
abi::fuse_getxattr_out MakeGetxattrOut(uint32_t size);

// LSEEK.
abi::fuse_lseek_out MakeLseekOut(uint64_t offset);

// BMAP.
abi::fuse_bmap_out MakeBmapOut(uint64_t block);

// STATX. flags is not read by 6.18 and is sent as 0.
abi::fuse_statx_out MakeStatxOut(const abi::fuse_statx& stat, CacheTimeout attr_valid);

// COPY_FILE_RANGE_64.
abi::fuse_copy_file_range_out MakeCopyFileRangeOut(uint64_t bytes_copied);

// INIT reply parameters; flags is the 64-bit flag set (see abi::FUSE_* init flags).
struct InitOutParams {
  uint32_t major = abi::FUSE_KERNEL_VERSION;
  uint32_t minor = abi::FUSE_KERNEL_MINOR_VERSION;
  uint32_t max_readahead = 0;
  uint64_t flags = 0;
  uint16_t max_background = 0;
  uint16_t congestion_threshold = 0;
  uint32_t max_write = 0;
  uint32_t time_gran = 0;
  uint16_t max_pages = 0;
  uint16_t map_alignment = 0;
  uint32_t max_stack_depth = 0;
  uint16_t request_timeout = 0;
};

// INIT. Splits flags into flags (low 32 bits) and flags2 (high 32 bits), and sets
// FUSE_INIT_EXT whenever any high bit is set (the kernel reads flags2 only then).
abi::fuse_init_out MakeInitOut(const InitOutParams& p);

// IOMAP_BEGIN (exact 64-byte reply).
abi::fuse_iomap_begin_out MakeIomapBeginOut(const abi::fuse_iomap_io& read,
                                            const abi::fuse_iomap_io& write);

// IOMAP_IOEND (exact 8-byte reply).
abi::fuse_iomap_ioend_out MakeIomapIoendOut(uint64_t newsize);

// IOMAP_CONFIG reply contents; the flags bits select which fields the kernel reads.
struct IomapConfig {
  uint64_t flags = 0;             // FUSE_IOMAP_CONFIG_*
  std::string_view s_id;          // truncated to 31 bytes, NUL-padded
  std::span<const uint8_t> uuid;  // at most 16 bytes used
  uint32_t blocksize = 0;
  uint32_t max_links = 0;
  uint32_t time_gran = 0;
  int64_t time_min = 0;
  int64_t time_max = 0;
  int64_t maxbytes = 0;
  uint32_t cache_maxbytes = 0;
};

// IOMAP_CONFIG (the full 104-byte struct; s_pad zero).
abi::fuse_iomap_config_out MakeIomapConfigOut(const IomapConfig& c);

// ---------------------------------------------------------------------------------------------
// Directory listings.

// Fills a READDIR or READDIRPLUS reply body: fuse_dirent / fuse_direntplus records, each padded
// with zeros to 8 bytes (FUSE_DIRENT_ALIGN), up to the buffer's size (the request's size).
class DirentBuffer {
 public:
  enum class Status {
    kAdded,
    kFull,         // the record does not fit; nothing was written
    kInvalidName,  // empty, longer than kMaxNameLen, or containing '/' or NUL: the kernel
                   // would fail the whole listing with EIO; nothing was written
  };

  // The kernel's FUSE_NAME_MAX (fs/fuse/fuse_i.h).
  static constexpr size_t kMaxNameLen = 1024;

  explicit DirentBuffer(std::span<std::byte> storage) : storage_(storage) {}

  // A READDIR record. ino: the inode number reported as d_ino (untranslated). off: the cookie
  // of the *next* entry. type: the DT_* value ((mode & S_IFMT) >> 12).
  Status Add(Ino ino, uint64_t off, uint32_t type, std::string_view name);

  // A READDIRPLUS record: entry (from MakeEntryOut / MakeNegativeEntryOut) then the dirent,
  // whose ino is entry.attr.ino and type is derived from entry.attr.mode.
  Status AddPlus(const abi::fuse_entry_out& entry, uint64_t off, std::string_view name);

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<const std::byte> bytes() const { return storage_.first(size_); }

 private:
  static bool ValidName(std::string_view name);

  std::span<std::byte> storage_;
  size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Notifications: complete messages (header + body) to write to /dev/fuse.

// INVAL_INODE: drop cached data of [off, off + len) (len 0 = to EOF; off < 0 = attributes only)
// and the cached attributes.
std::vector<std::byte> EncodeNotifyInvalInode(Ino ino, int64_t off, int64_t len);

// INVAL_ENTRY: drop the dentry name in parent. flags: FUSE_EXPIRE_ONLY.
std::vector<std::byte> EncodeNotifyInvalEntry(Ino parent, std::string_view name,
                                              uint32_t flags = 0);

// DELETE: name in parent, which was child, is gone.
std::vector<std::byte> EncodeNotifyDelete(Ino parent, Ino child, std::string_view name);

// STORE: put data into the page cache of ino at offset.
std::vector<std::byte> EncodeNotifyStore(Ino ino, uint64_t offset, std::span<const std::byte> data);

// RETRIEVE: ask for size bytes of ino's page cache at offset; the kernel answers with a
// NOTIFY_REPLY request whose unique is notify_unique.
std::vector<std::byte> EncodeNotifyRetrieve(uint64_t notify_unique, Ino ino, uint64_t offset,
                                            uint32_t size);

// POLL wakeup for the kernel poll handle kh.
std::vector<std::byte> EncodeNotifyPollWakeup(uint64_t kh);

// RESEND (7.40) and INC_EPOCH (7.44): header only.
std::vector<std::byte> EncodeNotifyResend();
std::vector<std::byte> EncodeNotifyIncEpoch();

// PRUNE (7.45): try to evict these nodes.
std::vector<std::byte> EncodeNotifyPrune(std::span<const Ino> inos);

// IOMAP_UPSERT_MAPPINGS: node id translated, attr_ino = the real inode number.
std::vector<std::byte> EncodeNotifyIomapUpsert(Ino ino, const abi::fuse_iomap_io& read,
                                               const abi::fuse_iomap_io& write);

// IOMAP_INVAL_MAPPINGS: a zero length leaves that fork alone; FUSE_IOMAP_INVAL_TO_EOF = to EOF.
std::vector<std::byte> EncodeNotifyIomapInval(Ino ino, abi::fuse_range read, abi::fuse_range write);

// IOMAP_DEV_INVAL: drop the block device's page cache for range (device bytes).
std::vector<std::byte> EncodeNotifyIomapDevInval(uint32_t dev, abi::fuse_range range);

}  // namespace iomapfs::wire
