#include "fsserver/wire/request.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "base/byte_reader.h"

namespace iomapfs::wire {
namespace {

using namespace abi;  // NOLINT(build/namespaces): kernel names, local to this file.

// Whether the header's nodeid names a node the handler works on.
enum class NodeKind : uint8_t { kRequired, kNone };

struct OpInfo {
  uint32_t opcode;
  std::string_view name;
  uint32_t arg0_size;  // see Arg0Size; SETXATTR and INIT are special-cased
  NodeKind node;
  bool needs_reply;
};

constexpr OpInfo kOps[] = {
    {FUSE_LOOKUP, "FUSE_LOOKUP", 0, NodeKind::kRequired, true},
    {FUSE_FORGET, "FUSE_FORGET", sizeof(fuse_forget_in), NodeKind::kRequired, false},
    {FUSE_GETATTR, "FUSE_GETATTR", sizeof(fuse_getattr_in), NodeKind::kRequired, true},
    {FUSE_SETATTR, "FUSE_SETATTR", sizeof(fuse_setattr_in), NodeKind::kRequired, true},
    {FUSE_READLINK, "FUSE_READLINK", 0, NodeKind::kRequired, true},
    {FUSE_SYMLINK, "FUSE_SYMLINK", 0, NodeKind::kRequired, true},
    {FUSE_MKNOD, "FUSE_MKNOD", sizeof(fuse_mknod_in), NodeKind::kRequired, true},
    {FUSE_MKDIR, "FUSE_MKDIR", sizeof(fuse_mkdir_in), NodeKind::kRequired, true},
    {FUSE_UNLINK, "FUSE_UNLINK", 0, NodeKind::kRequired, true},
    {FUSE_RMDIR, "FUSE_RMDIR", 0, NodeKind::kRequired, true},
    {FUSE_RENAME, "FUSE_RENAME", sizeof(fuse_rename_in), NodeKind::kRequired, true},
    {FUSE_LINK, "FUSE_LINK", sizeof(fuse_link_in), NodeKind::kRequired, true},
    {FUSE_OPEN, "FUSE_OPEN", sizeof(fuse_open_in), NodeKind::kRequired, true},
    {FUSE_READ, "FUSE_READ", sizeof(fuse_read_in), NodeKind::kRequired, true},
    {FUSE_WRITE, "FUSE_WRITE", sizeof(fuse_write_in), NodeKind::kRequired, true},
    {FUSE_STATFS, "FUSE_STATFS", 0, NodeKind::kRequired, true},
    {FUSE_RELEASE, "FUSE_RELEASE", sizeof(fuse_release_in), NodeKind::kRequired, true},
    {FUSE_FSYNC, "FUSE_FSYNC", sizeof(fuse_fsync_in), NodeKind::kRequired, true},
    {FUSE_SETXATTR, "FUSE_SETXATTR", sizeof(fuse_setxattr_in), NodeKind::kRequired, true},
    {FUSE_GETXATTR, "FUSE_GETXATTR", sizeof(fuse_getxattr_in), NodeKind::kRequired, true},
    {FUSE_LISTXATTR, "FUSE_LISTXATTR", sizeof(fuse_getxattr_in), NodeKind::kRequired, true},
    {FUSE_REMOVEXATTR, "FUSE_REMOVEXATTR", 0, NodeKind::kRequired, true},
    {FUSE_FLUSH, "FUSE_FLUSH", sizeof(fuse_flush_in), NodeKind::kRequired, true},
    {FUSE_INIT, "FUSE_INIT", sizeof(fuse_init_in), NodeKind::kNone, true},
    {FUSE_OPENDIR, "FUSE_OPENDIR", sizeof(fuse_open_in), NodeKind::kRequired, true},
    {FUSE_READDIR, "FUSE_READDIR", sizeof(fuse_read_in), NodeKind::kRequired, true},
    {FUSE_RELEASEDIR, "FUSE_RELEASEDIR", sizeof(fuse_release_in), NodeKind::kRequired, true},
    {FUSE_FSYNCDIR, "FUSE_FSYNCDIR", sizeof(fuse_fsync_in), NodeKind::kRequired, true},
    {FUSE_GETLK, "FUSE_GETLK", sizeof(fuse_lk_in), NodeKind::kRequired, true},
    {FUSE_SETLK, "FUSE_SETLK", sizeof(fuse_lk_in), NodeKind::kRequired, true},
    {FUSE_SETLKW, "FUSE_SETLKW", sizeof(fuse_lk_in), NodeKind::kRequired, true},
    {FUSE_ACCESS, "FUSE_ACCESS", sizeof(fuse_access_in), NodeKind::kRequired, true},
    {FUSE_CREATE, "FUSE_CREATE", sizeof(fuse_create_in), NodeKind::kRequired, true},
    {FUSE_INTERRUPT, "FUSE_INTERRUPT", sizeof(fuse_interrupt_in), NodeKind::kNone, false},
    {FUSE_BMAP, "FUSE_BMAP", sizeof(fuse_bmap_in), NodeKind::kRequired, true},
    {FUSE_DESTROY, "FUSE_DESTROY", 0, NodeKind::kNone, true},
    {FUSE_IOCTL, "FUSE_IOCTL", sizeof(fuse_ioctl_in), NodeKind::kRequired, true},
    {FUSE_POLL, "FUSE_POLL", sizeof(fuse_poll_in), NodeKind::kRequired, true},
    {FUSE_NOTIFY_REPLY, "FUSE_NOTIFY_REPLY", 0, NodeKind::kRequired, false},
    {FUSE_BATCH_FORGET, "FUSE_BATCH_FORGET", sizeof(fuse_batch_forget_in), NodeKind::kNone, false},
    {FUSE_FALLOCATE, "FUSE_FALLOCATE", sizeof(fuse_fallocate_in), NodeKind::kRequired, true},
    {FUSE_READDIRPLUS, "FUSE_READDIRPLUS", sizeof(fuse_read_in), NodeKind::kRequired, true},
    {FUSE_RENAME2, "FUSE_RENAME2", sizeof(fuse_rename2_in), NodeKind::kRequired, true},
    {FUSE_LSEEK, "FUSE_LSEEK", sizeof(fuse_lseek_in), NodeKind::kRequired, true},
    {FUSE_COPY_FILE_RANGE, "FUSE_COPY_FILE_RANGE", sizeof(fuse_copy_file_range_in),
     NodeKind::kRequired, true},
    {FUSE_SYNCFS, "FUSE_SYNCFS", sizeof(fuse_syncfs_in), NodeKind::kRequired, true},
    {FUSE_TMPFILE, "FUSE_TMPFILE", sizeof(fuse_create_in), NodeKind::kRequired, true},
    {FUSE_STATX, "FUSE_STATX", sizeof(fuse_statx_in), NodeKind::kRequired, true},
    {FUSE_COPY_FILE_RANGE_64, "FUSE_COPY_FILE_RANGE_64", sizeof(fuse_copy_file_range_in),
     NodeKind::kRequired, true},
    {FUSE_FREEZE_FS, "FUSE_FREEZE_FS", sizeof(fuse_freezefs_in), NodeKind::kRequired, true},
    {FUSE_UNFREEZE_FS, "FUSE_UNFREEZE_FS", 0, NodeKind::kRequired, true},
    {FUSE_SHUTDOWN_FS, "FUSE_SHUTDOWN_FS", sizeof(fuse_shutdownfs_in), NodeKind::kRequired, true},
    {FUSE_IOMAP_CONFIG, "FUSE_IOMAP_CONFIG", sizeof(fuse_iomap_config_in), NodeKind::kNone, true},
    {FUSE_IOMAP_IOEND, "FUSE_IOMAP_IOEND", sizeof(fuse_iomap_ioend_in), NodeKind::kRequired, true},
    {FUSE_IOMAP_BEGIN, "FUSE_IOMAP_BEGIN", sizeof(fuse_iomap_begin_in), NodeKind::kRequired, true},
    {FUSE_IOMAP_END, "FUSE_IOMAP_END", sizeof(fuse_iomap_end_in), NodeKind::kRequired, true},
};

const OpInfo* FindOp(uint32_t opcode) {
  for (const OpInfo& op : kOps) {
    if (op.opcode == opcode) return &op;
  }
  return nullptr;
}

size_t Arg0SizeOf(const OpInfo& op, const DecodeContext& ctx) {
  if (op.opcode == FUSE_SETXATTR && !ctx.setxattr_ext) return FUSE_COMPAT_SETXATTR_IN_SIZE;
  return op.arg0_size;
}

Unexpected Malformed() { return Unexpected(EIO); }

template <class T>
Result<T> ReadStruct(ByteReader& r) {
  std::optional<T> v = r.Read<T>();
  if (!v) return Malformed();
  return *v;
}

// A NUL-terminated, non-empty string.
Result<std::string_view> ReadName(ByteReader& r) {
  std::optional<std::string_view> s = r.ReadCString();
  if (!s || s->empty()) return Malformed();
  return *s;
}

// Exactly n bytes.
Result<std::span<const std::byte>> ReadExactly(ByteReader& r, uint64_t n) {
  if (r.remaining() != n) return Malformed();
  return *r.ReadBytes(static_cast<size_t>(n));
}

Result<void> ExpectEnd(const ByteReader& r) {
  if (r.remaining() != 0) return Malformed();
  return {};
}

std::optional<FileHandle> FhIf(bool present, uint64_t fh) {
  if (!present) return std::nullopt;
  return FileHandle(fh);
}

// Decodes the body. a0 holds exactly argument 0 (Arg0Size bytes; INIT may be shorter), rest the
// remaining arguments without the extension block.
Result<Body> DecodeBody(uint32_t opcode, ByteReader& a0, ByteReader& rest) {
  switch (opcode) {
    case FUSE_LOOKUP: {
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      return LookupReq{name};
    }
    case FUSE_FORGET: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_forget_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return ForgetReq{in.nlookup};
    }
    case FUSE_BATCH_FORGET: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_batch_forget_in>(a0));
      if (rest.remaining() != uint64_t{in.count} * sizeof(fuse_forget_one)) return Malformed();
      BatchForgetReq req;
      req.forgets.reserve(in.count);
      for (uint32_t i = 0; i < in.count; ++i) {
        IOMAPFS_ASSIGN_OR_RETURN(auto one, ReadStruct<fuse_forget_one>(rest));
        IOMAPFS_ASSIGN_OR_RETURN(Ino ino, InoFromNodeId(one.nodeid));
        req.forgets.push_back(ForgetOne{ino, one.nlookup});
      }
      return req;
    }
    case FUSE_GETATTR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_getattr_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return GetattrReq{in.getattr_flags, FhIf(in.getattr_flags & FUSE_GETATTR_FH, in.fh)};
    }
    case FUSE_SETATTR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_setattr_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return SetattrReq{in, FhIf(in.valid & FATTR_FH, in.fh)};
    }
    case FUSE_READLINK:
      IOMAPFS_TRY(ExpectEnd(rest));
      return ReadlinkReq{};
    case FUSE_SYMLINK: {
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_ASSIGN_OR_RETURN(auto target, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      return SymlinkReq{name, target};
    }
    case FUSE_MKNOD: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_mknod_in>(a0));
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      return MknodReq{in.mode, in.rdev, in.umask, name};
    }
    case FUSE_MKDIR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_mkdir_in>(a0));
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      return MkdirReq{in.mode, in.umask, name};
    }
    case FUSE_UNLINK:
    case FUSE_RMDIR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      if (opcode == FUSE_UNLINK) return UnlinkReq{name};
      return RmdirReq{name};
    }
    case FUSE_RENAME:
    case FUSE_RENAME2: {
      uint64_t newdir = 0;
      uint32_t flags = 0;
      if (opcode == FUSE_RENAME) {
        IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_rename_in>(a0));
        newdir = in.newdir;
      } else {
        IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_rename2_in>(a0));
        newdir = in.newdir;
        flags = in.flags;
      }
      IOMAPFS_ASSIGN_OR_RETURN(auto old_name, ReadName(rest));
      IOMAPFS_ASSIGN_OR_RETURN(auto new_name, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      IOMAPFS_ASSIGN_OR_RETURN(Ino new_dir, InoFromNodeId(newdir));
      return RenameReq{new_dir, flags, old_name, new_name};
    }
    case FUSE_LINK: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_link_in>(a0));
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      IOMAPFS_ASSIGN_OR_RETURN(Ino old_node, InoFromNodeId(in.oldnodeid));
      return LinkReq{old_node, name};
    }
    case FUSE_OPEN:
    case FUSE_OPENDIR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_open_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      if (opcode == FUSE_OPEN) return OpenReq{in.flags, in.open_flags};
      return OpendirReq{in.flags, in.open_flags};
    }
    case FUSE_READ: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_read_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return ReadReq{FileHandle(in.fh), in.offset, in.size, in.read_flags, in.lock_owner, in.flags};
    }
    case FUSE_WRITE: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_write_in>(a0));
      IOMAPFS_ASSIGN_OR_RETURN(auto data, ReadExactly(rest, in.size));
      return WriteReq{FileHandle(in.fh), in.offset, in.write_flags, in.lock_owner, in.flags, data};
    }
    case FUSE_STATFS:
      IOMAPFS_TRY(ExpectEnd(rest));
      return StatfsReq{};
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_release_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      if (opcode == FUSE_RELEASE) {
        return ReleaseReq{FileHandle(in.fh), in.flags, in.release_flags, in.lock_owner};
      }
      return ReleasedirReq{FileHandle(in.fh), in.flags, in.release_flags, in.lock_owner};
    }
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_fsync_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      if (opcode == FUSE_FSYNC) return FsyncReq{FileHandle(in.fh), in.fsync_flags};
      return FsyncdirReq{FileHandle(in.fh), in.fsync_flags};
    }
    case FUSE_SETXATTR: {
      // 8 bytes (size, flags) without SETXATTR_EXT, 16 with it; a0 holds exactly that many.
      fuse_setxattr_in in{};
      std::span<const std::byte> raw = a0.Rest();
      if (raw.size() != FUSE_COMPAT_SETXATTR_IN_SIZE && raw.size() != sizeof(in)) {
        return Malformed();
      }
      std::memcpy(&in, raw.data(), raw.size());
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_ASSIGN_OR_RETURN(auto value, ReadExactly(rest, in.size));
      return SetxattrReq{in.flags, in.setxattr_flags, name, value};
    }
    case FUSE_GETXATTR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_getxattr_in>(a0));
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      return GetxattrReq{in.size, name};
    }
    case FUSE_LISTXATTR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_getxattr_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return ListxattrReq{in.size};
    }
    case FUSE_REMOVEXATTR: {
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      return RemovexattrReq{name};
    }
    case FUSE_FLUSH: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_flush_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return FlushReq{FileHandle(in.fh), in.lock_owner};
    }
    case FUSE_INIT: {
      // Kernels before 7.36 sent only the first 16 bytes; 6.x sends all 64. Missing fields
      // read as zero. Bytes past 64 (a future, larger fuse_init_in) are ignored, as libfuse
      // does, so that a newer kernel can still mount us.
      std::span<const std::byte> raw = a0.Rest();
      if (raw.size() < 16) return Malformed();
      fuse_init_in in{};
      std::memcpy(&in, raw.data(), std::min(raw.size(), sizeof(in)));
      uint64_t flags = in.flags;
      if (flags & FUSE_INIT_EXT) flags |= uint64_t{in.flags2} << 32;
      return InitReq{in.major, in.minor, in.max_readahead, flags};
    }
    case FUSE_READDIR:
    case FUSE_READDIRPLUS: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_read_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return ReaddirReq{FileHandle(in.fh), in.offset, in.size, opcode == FUSE_READDIRPLUS};
    }
    case FUSE_GETLK:
    case FUSE_SETLK:
    case FUSE_SETLKW: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_lk_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return LkReq{FileHandle(in.fh),    in.owner, in.lk, in.lk_flags, opcode != FUSE_GETLK,
                   opcode == FUSE_SETLKW};
    }
    case FUSE_ACCESS: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_access_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return AccessReq{in.mask};
    }
    case FUSE_CREATE:
    case FUSE_TMPFILE: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_create_in>(a0));
      IOMAPFS_ASSIGN_OR_RETURN(auto name, ReadName(rest));
      IOMAPFS_TRY(ExpectEnd(rest));
      if (opcode == FUSE_CREATE) return CreateReq{in.flags, in.mode, in.umask, in.open_flags, name};
      return TmpfileReq{in.flags, in.mode, in.umask, in.open_flags, name};
    }
    case FUSE_INTERRUPT: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_interrupt_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return InterruptReq{Unique(in.unique)};
    }
    case FUSE_BMAP: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_bmap_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return BmapReq{in.block, in.blocksize};
    }
    case FUSE_DESTROY:
      IOMAPFS_TRY(ExpectEnd(rest));
      return DestroyReq{};
    case FUSE_IOCTL: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_ioctl_in>(a0));
      IOMAPFS_ASSIGN_OR_RETURN(auto data, ReadExactly(rest, in.in_size));
      return IoctlReq{FileHandle(in.fh), in.flags, in.cmd, in.arg, in.out_size, data};
    }
    case FUSE_POLL: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_poll_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return PollReq{FileHandle(in.fh), in.kh, in.flags, in.events};
    }
    case FUSE_NOTIFY_REPLY: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_notify_retrieve_in>(rest));
      IOMAPFS_ASSIGN_OR_RETURN(auto data, ReadExactly(rest, in.size));
      return NotifyReplyReq{in.offset, data};
    }
    case FUSE_FALLOCATE: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_fallocate_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return FallocateReq{FileHandle(in.fh), in.offset, in.length, in.mode};
    }
    case FUSE_LSEEK: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_lseek_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return LseekReq{FileHandle(in.fh), in.offset, in.whence};
    }
    case FUSE_COPY_FILE_RANGE:
    case FUSE_COPY_FILE_RANGE_64: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_copy_file_range_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      IOMAPFS_ASSIGN_OR_RETURN(Ino node_out, InoFromNodeId(in.nodeid_out));
      return CopyFileRangeReq{
          FileHandle(in.fh_in), in.off_in, node_out, FileHandle(in.fh_out),
          in.off_out,           in.len,    in.flags, opcode == FUSE_COPY_FILE_RANGE_64};
    }
    case FUSE_SYNCFS: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_syncfs_in>(a0));
      (void)in;
      IOMAPFS_TRY(ExpectEnd(rest));
      return SyncfsReq{};
    }
    case FUSE_STATX: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_statx_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return StatxReq{in.getattr_flags, FhIf(in.getattr_flags & FUSE_GETATTR_FH, in.fh),
                      in.sx_flags, in.sx_mask};
    }
    case FUSE_IOMAP_BEGIN: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_iomap_begin_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return IomapBeginReq{in.opflags, Ino(in.attr_ino), in.pos, in.count};
    }
    case FUSE_IOMAP_END: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_iomap_end_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return IomapEndReq{in.opflags, Ino(in.attr_ino), in.pos, in.count, in.written, in.map};
    }
    case FUSE_IOMAP_IOEND: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_iomap_ioend_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return IomapIoendReq{in.flags,   in.error, Ino(in.attr_ino), in.pos, in.new_addr,
                           in.written, in.dev};
    }
    case FUSE_IOMAP_CONFIG: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_iomap_config_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return IomapConfigReq{in.flags, in.maxbytes, in.cache_maxbytes};
    }
    case FUSE_FREEZE_FS: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_freezefs_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return FreezeReq{in.unlinked};
    }
    case FUSE_UNFREEZE_FS:
      IOMAPFS_TRY(ExpectEnd(rest));
      return UnfreezeReq{};
    case FUSE_SHUTDOWN_FS: {
      IOMAPFS_ASSIGN_OR_RETURN(auto in, ReadStruct<fuse_shutdownfs_in>(a0));
      IOMAPFS_TRY(ExpectEnd(rest));
      return ShutdownReq{in.flags};
    }
    default:
      return Unexpected(ENOSYS);
  }
}

// The shared tail of Decode and DecodeSplit: arg0 holds argument 0, rest everything after it
// (extension block included).
Result<Request> DecodeArgs(const fuse_in_header& h, const OpInfo& op,
                           std::span<const std::byte> arg0, std::span<const std::byte> rest) {
  Request req{h, Ino(0), Unique(h.unique), ReadlinkReq{}, {}};
  if (op.node == NodeKind::kRequired) {
    IOMAPFS_ASSIGN_OR_RETURN(req.node, InoFromNodeId(h.nodeid));
  }
  size_t ext_len = size_t{h.total_extlen} * 8;
  if (ext_len > rest.size()) return Malformed();
  req.extensions = rest.last(ext_len);
  rest = rest.first(rest.size() - ext_len);
  if (ext_len != 0) {
    IOMAPFS_ASSIGN_OR_RETURN(auto records, ParseExtensions(req.extensions));
    (void)records;
  }
  ByteReader a0(arg0);
  ByteReader r(rest);
  IOMAPFS_ASSIGN_OR_RETURN(req.body, DecodeBody(h.opcode, a0, r));
  return req;
}

Result<fuse_in_header> ReadHeader(std::span<const std::byte> bytes) {
  ByteReader r(bytes);
  return ReadStruct<fuse_in_header>(r);
}

}  // namespace

bool NeedsReply(uint32_t opcode) {
  const OpInfo* op = FindOp(opcode);
  return op == nullptr || op->needs_reply;
}

bool IsKnownOpcode(uint32_t opcode) { return FindOp(opcode) != nullptr; }

std::string_view OpcodeName(uint32_t opcode) {
  const OpInfo* op = FindOp(opcode);
  return op == nullptr ? std::string_view("UNKNOWN") : op->name;
}

Result<size_t> Arg0Size(uint32_t opcode, const DecodeContext& ctx) {
  const OpInfo* op = FindOp(opcode);
  if (op == nullptr) return Unexpected(ENOSYS);
  return Arg0SizeOf(*op, ctx);
}

Result<fuse_in_header> DecodeHeader(std::span<const std::byte> msg) {
  IOMAPFS_ASSIGN_OR_RETURN(fuse_in_header h, ReadHeader(msg));
  if (h.len != msg.size() || h.len < sizeof(fuse_in_header)) return Malformed();
  return h;
}

Result<Request> Decode(std::span<const std::byte> msg, const DecodeContext& ctx) {
  IOMAPFS_ASSIGN_OR_RETURN(fuse_in_header h, DecodeHeader(msg));
  const OpInfo* op = FindOp(h.opcode);
  if (op == nullptr) return Unexpected(ENOSYS);
  std::span<const std::byte> body = msg.subspan(sizeof(fuse_in_header));
  size_t s = Arg0SizeOf(*op, ctx);
  if (h.opcode == FUSE_INIT) s = std::min(s, body.size());  // may be short, see DecodeBody
  if (body.size() < s) return Malformed();
  return DecodeArgs(h, *op, body.first(s), body.subspan(s));
}

Result<Request> DecodeSplit(std::span<const std::byte> in_out, std::span<const std::byte> op_in,
                            std::span<const std::byte> payload, const DecodeContext& ctx) {
  IOMAPFS_ASSIGN_OR_RETURN(fuse_in_header h, ReadHeader(in_out));
  if (h.len < sizeof(fuse_in_header)) return Malformed();
  const OpInfo* op = FindOp(h.opcode);
  if (op == nullptr) return Unexpected(ENOSYS);
  size_t s = Arg0SizeOf(*op, ctx);
  if (op_in.size() < s) return Malformed();
  if (uint64_t{h.len} != sizeof(fuse_in_header) + s + uint64_t{payload.size()}) {
    return Malformed();
  }
  return DecodeArgs(h, *op, op_in.first(s), payload);
}

Result<std::vector<Extension>> ParseExtensions(std::span<const std::byte> block) {
  std::vector<Extension> out;
  ByteReader r(block);
  while (r.remaining() != 0) {
    IOMAPFS_ASSIGN_OR_RETURN(auto eh, ReadStruct<fuse_ext_header>(r));
    if (eh.size < sizeof(eh) || eh.size % 8 != 0) return Malformed();
    std::optional<std::span<const std::byte>> data = r.ReadBytes(eh.size - sizeof(eh));
    if (!data) return Malformed();
    out.push_back(Extension{eh.type, *data});
  }
  return out;
}

Result<std::vector<uint32_t>> FindSuppGroups(std::span<const std::byte> block) {
  IOMAPFS_ASSIGN_OR_RETURN(auto records, ParseExtensions(block));
  std::vector<uint32_t> groups;
  for (const Extension& ext : records) {
    if (ext.type != FUSE_EXT_GROUPS) continue;
    ByteReader r(ext.data);
    IOMAPFS_ASSIGN_OR_RETURN(auto sg, ReadStruct<fuse_supp_groups>(r));
    if (r.remaining() / sizeof(uint32_t) < sg.nr_groups) return Malformed();
    groups.reserve(sg.nr_groups);
    for (uint32_t i = 0; i < sg.nr_groups; ++i) groups.push_back(*r.Read<uint32_t>());
    return groups;
  }
  return groups;
}

}  // namespace iomapfs::wire
