// request.h: decoding of FUSE request messages (kernel -> server) into typed requests.
//
// The decoder validates every length, string and node id before any handler sees a request: a
// malformed message is a decode error (EIO), an unknown opcode is ENOSYS, and a node id the
// kernel can never legitimately hold is ESTALE. The caller replies with that errno using the
// header's unique, if DecodeHeader succeeded and NeedsReply(opcode).
//
// Root translation happens here: the kernel's FUSE_ROOT_ID (1) is ext4 inode 2 (EXT2_ROOT_INO).
// Every node id field of a request is translated into an Ino; node id 2 is never handed to the
// kernel (inode 2 is presented as 1), so an incoming 2 is stale.
//
// Two framings share one decoder (spec fuse-mainline §9): the classic /dev/fuse message (header,
// argument 0, then the rest, all contiguous) and the FUSE-over-io_uring entry (header in in_out,
// argument 0 in op_in, the rest in the payload buffer).
//
// Thread-safety: pure functions; no shared state.
// Ownership: a decoded Request holds string_views and spans into the message buffer it was
// decoded from; it is valid only while that buffer is alive and unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

#include "base/result.h"
#include "base/strong_id.h"
#include "fsserver/wire/fuse_abi.h"
#include "fsserver/wire/node_id.h"

namespace iomapfs::wire {

// Negotiated state the decoder needs.
struct DecodeContext {
  // FUSE_SETXATTR_EXT was negotiated at INIT: fuse_setxattr_in is 16 bytes, not 8.
  bool setxattr_ext = false;
};

// ---------------------------------------------------------------------------------------------
// Typed request bodies, one per opcode (a few opcodes share one with a distinguishing field).
// Names and strings are views into the message without their NUL terminator; they are
// non-empty and contain no NUL. Length limits (NAME_MAX, XATTR_NAME_MAX) are the handler's job.

struct LookupReq {
  std::string_view name;
};
struct ForgetReq {
  uint64_t nlookup;
};
struct ForgetOne {
  Ino ino;
  uint64_t nlookup;
  auto operator<=>(const ForgetOne&) const = default;
};
struct BatchForgetReq {
  std::vector<ForgetOne> forgets;
};
struct GetattrReq {
  uint32_t getattr_flags;
  std::optional<FileHandle> fh;  // set iff FUSE_GETATTR_FH
};
struct SetattrReq {
  abi::fuse_setattr_in in;       // valid says which fields are meaningful (FATTR_*)
  std::optional<FileHandle> fh;  // set iff FATTR_FH
};
struct ReadlinkReq {};
struct SymlinkReq {
  std::string_view name;    // the new entry in the header's directory
  std::string_view target;  // the link's contents
};
struct MknodReq {
  uint32_t mode;
  uint32_t rdev;
  uint32_t umask;
  std::string_view name;
};
struct MkdirReq {
  uint32_t mode;
  uint32_t umask;
  std::string_view name;
};
struct UnlinkReq {
  std::string_view name;
};
struct RmdirReq {
  std::string_view name;
};
// FUSE_RENAME (flags == 0) and FUSE_RENAME2 (flags = RENAME_NOREPLACE/EXCHANGE/WHITEOUT).
struct RenameReq {
  Ino new_dir;
  uint32_t flags;
  std::string_view old_name;  // in the header's directory
  std::string_view new_name;  // in new_dir
};
struct LinkReq {
  Ino old_node;               // the existing inode
  std::string_view new_name;  // in the header's directory
};
struct OpenReq {
  uint32_t flags;       // open(2) flags
  uint32_t open_flags;  // FUSE_OPEN_*
};
struct OpendirReq {
  uint32_t flags;
  uint32_t open_flags;
};
struct ReadReq {
  FileHandle fh;
  uint64_t offset;
  uint32_t size;
  uint32_t read_flags;
  uint64_t lock_owner;
  uint32_t flags;
};
struct WriteReq {
  FileHandle fh;
  uint64_t offset;
  uint32_t write_flags;
  uint64_t lock_owner;
  uint32_t flags;
  std::span<const std::byte> data;  // exactly fuse_write_in.size bytes
};
struct StatfsReq {};
struct ReleaseReq {
  FileHandle fh;
  uint32_t flags;
  uint32_t release_flags;
  uint64_t lock_owner;
};
struct ReleasedirReq {
  FileHandle fh;
  uint32_t flags;
  uint32_t release_flags;
  uint64_t lock_owner;
};
struct FsyncReq {
  FileHandle fh;
  uint32_t fsync_flags;  // FUSE_FSYNC_FDATASYNC
};
struct FsyncdirReq {
  FileHandle fh;
  uint32_t fsync_flags;
};
struct SetxattrReq {
  uint32_t flags;           // XATTR_CREATE / XATTR_REPLACE
  uint32_t setxattr_flags;  // FUSE_SETXATTR_ACL_KILL_SGID; 0 without SETXATTR_EXT
  std::string_view name;
  std::span<const std::byte> value;  // exactly fuse_setxattr_in.size bytes
};
struct GetxattrReq {
  uint32_t size;  // 0 = size query
  std::string_view name;
};
struct ListxattrReq {
  uint32_t size;  // 0 = size query
};
struct RemovexattrReq {
  std::string_view name;
};
struct FlushReq {
  FileHandle fh;
  uint64_t lock_owner;
};
struct InitReq {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  // flags | flags2 << 32; flags2 only counts when FUSE_INIT_EXT is set in flags.
  uint64_t flags;
};
// FUSE_READDIR (plus == false) and FUSE_READDIRPLUS (plus == true).
struct ReaddirReq {
  FileHandle fh;
  uint64_t offset;
  uint32_t size;
  bool plus;
};
// FUSE_GETLK (!set), FUSE_SETLK (set, !sleep), FUSE_SETLKW (set, sleep).
struct LkReq {
  FileHandle fh;
  uint64_t owner;
  abi::fuse_file_lock lk;
  uint32_t lk_flags;  // FUSE_LK_FLOCK
  bool set;
  bool sleep;
};
struct AccessReq {
  uint32_t mask;
};
struct CreateReq {
  uint32_t flags;
  uint32_t mode;
  uint32_t umask;
  uint32_t open_flags;
  std::string_view name;
};
struct InterruptReq {
  Unique target;  // the unique of the request to interrupt
};
struct BmapReq {
  uint64_t block;
  uint32_t blocksize;
};
struct DestroyReq {};
struct IoctlReq {
  FileHandle fh;
  uint32_t flags;  // FUSE_IOCTL_*
  uint32_t cmd;
  uint64_t arg;
  uint32_t out_size;
  std::span<const std::byte> in_data;  // exactly fuse_ioctl_in.in_size bytes
};
struct PollReq {
  FileHandle fh;
  uint64_t kh;
  uint32_t flags;
  uint32_t events;
};
// The kernel's answer to a FUSE_NOTIFY_RETRIEVE (header.unique = its notify_unique).
struct NotifyReplyReq {
  uint64_t offset;
  std::span<const std::byte> data;  // exactly fuse_notify_retrieve_in.size bytes
};
struct FallocateReq {
  FileHandle fh;
  uint64_t offset;
  uint64_t length;
  uint32_t mode;
};
struct LseekReq {
  FileHandle fh;
  uint64_t offset;
  uint32_t whence;
};
// FUSE_COPY_FILE_RANGE (wide == false: reply fuse_write_out) and FUSE_COPY_FILE_RANGE_64
// (wide == true: reply fuse_copy_file_range_out). The source inode is the header's node.
struct CopyFileRangeReq {
  FileHandle fh_in;
  uint64_t off_in;
  Ino node_out;
  FileHandle fh_out;
  uint64_t off_out;
  uint64_t len;
  uint64_t flags;
  bool wide;
};
struct SyncfsReq {};
struct TmpfileReq {
  uint32_t flags;
  uint32_t mode;
  uint32_t umask;
  uint32_t open_flags;
  std::string_view name;  // the VFS sends "/"; carries no meaning
};
struct StatxReq {
  uint32_t getattr_flags;
  std::optional<FileHandle> fh;  // set iff FUSE_GETATTR_FH
  uint32_t sx_flags;
  uint32_t sx_mask;
};
// fuse-iomap. attr_ino is the fuse_attr.ino we reported (the real inode number, untranslated).
struct IomapBeginReq {
  uint32_t opflags;  // FUSE_IOMAP_OP_*
  Ino attr_ino;
  uint64_t pos;
  uint64_t count;
};
struct IomapEndReq {
  uint32_t opflags;
  Ino attr_ino;
  uint64_t pos;
  uint64_t count;
  int64_t written;
  abi::fuse_iomap_io map;
};
struct IomapIoendReq {
  uint32_t flags;  // FUSE_IOMAP_IOEND_*
  int32_t error;   // 0 or a negative errno, as the kernel sends it
  Ino attr_ino;
  uint64_t pos;
  uint64_t new_addr;
  uint64_t written;
  uint32_t dev;
};
struct IomapConfigReq {
  uint64_t flags;  // FUSE_IOMAP_CONFIG_* the kernel understands
  int64_t maxbytes;
  uint32_t cache_maxbytes;
};
struct FreezeReq {
  uint64_t unlinked;
};
struct UnfreezeReq {};
struct ShutdownReq {
  uint64_t flags;
};

using Body =
    std::variant<LookupReq, ForgetReq, BatchForgetReq, GetattrReq, SetattrReq, ReadlinkReq,
                 SymlinkReq, MknodReq, MkdirReq, UnlinkReq, RmdirReq, RenameReq, LinkReq, OpenReq,
                 OpendirReq, ReadReq, WriteReq, StatfsReq, ReleaseReq, ReleasedirReq, FsyncReq,
                 FsyncdirReq, SetxattrReq, GetxattrReq, ListxattrReq, RemovexattrReq, FlushReq,
                 InitReq, ReaddirReq, LkReq, AccessReq, CreateReq, InterruptReq, BmapReq,
                 DestroyReq, IoctlReq, PollReq, NotifyReplyReq, FallocateReq, LseekReq,
                 CopyFileRangeReq, SyncfsReq, TmpfileReq, StatxReq, IomapBeginReq, IomapEndReq,
                 IomapIoendReq, IomapConfigReq, FreezeReq, UnfreezeReq, ShutdownReq>;

struct Request {
  abi::fuse_in_header header;  // as received (nodeid untranslated)
  // The header's node, translated (FUSE_ROOT_ID -> inode 2). Ino{0} for opcodes that carry no
  // node (INIT, DESTROY, INTERRUPT, BATCH_FORGET, IOMAP_CONFIG).
  Ino node;
  Unique unique;  // header.unique, verbatim (bit 63 = FUSE_UNIQUE_RESEND included)
  Body body;
  // The request extension block (last total_extlen * 8 bytes), records already checked to be
  // well-formed; empty if none. Parse with ForEachExtension / FindSuppGroups.
  std::span<const std::byte> extensions;
};

// ---------------------------------------------------------------------------------------------
// Opcodes.

// False for the opcodes the kernel expects no reply to: FORGET, BATCH_FORGET, INTERRUPT (a reply
// is optional; the dispatcher may answer EAGAIN) and NOTIFY_REPLY. On io_uring every request is
// still committed (spec fuse-mainline §7.7); that is the transport's job.
bool NeedsReply(uint32_t opcode);

// True if the decoder knows the opcode (Decode of an unknown one is ENOSYS).
bool IsKnownOpcode(uint32_t opcode);

// The kernel's name of the opcode ("FUSE_LOOKUP"), or "UNKNOWN" for logging.
std::string_view OpcodeName(uint32_t opcode);

// Size of argument 0 (the fixed per-opcode struct that io_uring places in op_in) for a known
// opcode; 0 for opcodes whose first argument is a name or that have no argument.
// Errors: ENOSYS for an unknown opcode.
Result<size_t> Arg0Size(uint32_t opcode, const DecodeContext& ctx);

// ---------------------------------------------------------------------------------------------
// Decoding.

// Reads and checks the header of a classic /dev/fuse message.
// Returns: the header.
// Errors: EIO if msg is shorter than 40 bytes, or header.len != msg.size().
Result<abi::fuse_in_header> DecodeHeader(std::span<const std::byte> msg);

// Decodes one complete classic /dev/fuse message.
// Returns: the typed request; its views point into msg.
// Errors: EIO for a malformed message (bad len, short or oversized argument struct, unterminated
//   or empty name, trailing bytes, a data size that disagrees with its length field, extension
//   block past the body or with malformed records, node id 0 where a node is required);
//   ENOSYS for an unknown opcode; ESTALE for node id 2 in any node id field.
Result<Request> Decode(std::span<const std::byte> msg, const DecodeContext& ctx = {});

// Decodes a request delivered on a FUSE-over-io_uring entry.
// in_out: the entry's in_out area (at least the 40-byte header); op_in: the entry's op_in area
// (at least Arg0Size bytes; extra bytes are ignored); payload: the first payload_sz bytes of the
// payload buffer.
// Returns / Errors: as Decode; additionally EIO if header.len != 40 + Arg0Size + payload.size().
Result<Request> DecodeSplit(std::span<const std::byte> in_out, std::span<const std::byte> op_in,
                            std::span<const std::byte> payload, const DecodeContext& ctx = {});

// ---------------------------------------------------------------------------------------------
// Request extensions (spec fuse-mainline §4.1).

// One extension record: its type and the bytes after its fuse_ext_header.
struct Extension {
  uint32_t type;
  std::span<const std::byte> data;
};

// Splits an extension block into records.
// Returns: the records, in order.
// Errors: EIO if a record's size is < 8, not a multiple of 8, or runs past the block.
Result<std::vector<Extension>> ParseExtensions(std::span<const std::byte> block);

// The supplementary groups from a FUSE_EXT_GROUPS record, if the block has one.
// Returns: the group ids; empty if there is no such record.
// Errors: EIO for a malformed block or a record shorter than nr_groups says.
Result<std::vector<uint32_t>> FindSuppGroups(std::span<const std::byte> block);

}  // namespace iomapfs::wire
