#include "fsserver/dispatch/dispatcher.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "base/log.h"
#include "fsserver/dispatch/kernel_control.h"
#include "fsserver/wire/reply.h"
#include "fsserver/wire/request.h"

namespace iomapfs::dispatch {

namespace abi = iomapfs::abi;

namespace {

// The protocol minor this server speaks (spec/fuse-mainline-7.45-and-io-uring.md §1).
constexpr uint32_t kOurMinor = 45;
// Below 7.23 the kernel expects the 24-byte INIT reply (FUSE_COMPAT_22_INIT_OUT_SIZE).
constexpr uint32_t kCompat22Minor = 23;
constexpr size_t kCompat22InitOutSize = 24;

// INIT flags we enable when the kernel offers them.
constexpr uint64_t kWantedInitFlags =
    abi::FUSE_ASYNC_READ | abi::FUSE_BIG_WRITES | abi::FUSE_EXPORT_SUPPORT |
    abi::FUSE_DO_READDIRPLUS | abi::FUSE_READDIRPLUS_AUTO | abi::FUSE_PARALLEL_DIROPS |
    abi::FUSE_MAX_PAGES | abi::FUSE_CACHE_SYMLINKS | abi::FUSE_POSIX_ACL | abi::FUSE_ASYNC_DIO |
    abi::FUSE_ATOMIC_O_TRUNC | abi::FUSE_INIT_EXT;

constexpr uint32_t kStatxBasicStats = 0x7ff;  // STATX_BASIC_STATS
constexpr uint32_t kStatxBtime = 0x800;       // STATX_BTIME

// A reply body: nothing, a small owned buffer, or a view of a per-thread buffer (READ data,
// directory listings) that stays valid until this thread handles its next request.
struct Reply {
  std::vector<std::byte> owned;
  std::span<const std::byte> borrowed;
  bool none = false;  // the opcode takes no reply

  static Reply Empty() { return Reply{}; }
  static Reply NoReply() {
    Reply r;
    r.none = true;
    return r;
  }
  template <class T>
  static Reply Of(const T& v) {
    Reply r;
    auto b = wire::BytesOf(v);
    r.owned.assign(b.begin(), b.end());
    return r;
  }
  static Reply Borrow(std::span<const std::byte> b) {
    Reply r;
    r.borrowed = b;
    return r;
  }
  std::span<const std::byte> body() const {
    return owned.empty() ? borrowed : std::span<const std::byte>(owned);
  }
};

// A per-thread scratch buffer for large reply bodies.
std::span<std::byte> Scratch(size_t size) {
  thread_local std::vector<std::byte> buf;
  if (buf.size() < size) buf.resize(size);
  return std::span<std::byte>(buf.data(), size);
}

// new_encode_dev(): the encoding fuse_attr.rdev carries (the kernel decodes it with
// new_decode_dev()).
uint32_t EncodeDev(dev_t dev) {
  uint32_t maj = major(dev);
  uint32_t min = minor(dev);
  return (min & 0xff) | (maj << 8) | ((min & ~0xffu) << 12);
}

abi::fuse_attr ToFuseAttr(const ext4::Attr& a) {
  abi::fuse_attr out{};
  out.ino = a.ino.value();
  out.size = a.size;
  out.blocks = a.blocks;
  // Pre-1970 times travel as the two's complement of the signed seconds (the kernel stores
  // them into a time64_t).
  out.atime = static_cast<uint64_t>(a.atime.sec);
  out.mtime = static_cast<uint64_t>(a.mtime.sec);
  out.ctime = static_cast<uint64_t>(a.ctime.sec);
  out.atimensec = a.atime.nsec;
  out.mtimensec = a.mtime.nsec;
  out.ctimensec = a.ctime.nsec;
  out.mode = a.mode;
  out.nlink = a.nlink;
  out.uid = a.uid;
  out.gid = a.gid;
  out.rdev = EncodeDev(a.rdev);
  out.blksize = a.blksize;
  return out;
}

abi::fuse_sx_time ToSxTime(const ext4::Timestamp& t) {
  abi::fuse_sx_time out{};
  out.tv_sec = t.sec;
  out.tv_nsec = t.nsec;
  return out;
}

abi::fuse_statx ToFuseStatx(const ext4::Attr& a) {
  abi::fuse_statx sx{};
  sx.mask = kStatxBasicStats | (a.has_btime ? kStatxBtime : 0);
  sx.blksize = a.blksize;
  sx.attributes = a.statx_attributes;
  sx.nlink = a.nlink;
  sx.uid = a.uid;
  sx.gid = a.gid;
  sx.mode = static_cast<uint16_t>(a.mode);
  sx.ino = a.ino.value();
  sx.size = a.size;
  sx.blocks = a.blocks;
  sx.attributes_mask = ext4::kStatxAttributesMask;
  sx.atime = ToSxTime(a.atime);
  sx.btime = ToSxTime(a.btime);
  sx.ctime = ToSxTime(a.ctime);
  sx.mtime = ToSxTime(a.mtime);
  sx.rdev_major = major(a.rdev);
  sx.rdev_minor = minor(a.rdev);
  return sx;
}

ext4::Timestamp Now() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ext4::Timestamp{ts.tv_sec, static_cast<uint32_t>(ts.tv_nsec)};
}

bool IsTrusted(std::string_view name) { return name.rfind("trusted.", 0) == 0; }

// What still works after SHUTDOWN_FS: the requests that tear a mount down (the kernel must be
// able to drop its inodes and file handles and unmount), INTERRUPT and notify replies, a
// repeated SHUTDOWN_FS, and UNFREEZE_FS (a filesystem frozen before the shutdown must still
// thaw, or the kernel could never unmount it). FLUSH belongs to close(2), which must not fail
// on a dead filesystem; nothing is written by it. Everything else answers EIO.
bool AllowedAfterShutdown(const wire::Body& body) {
  return std::holds_alternative<wire::ForgetReq>(body) ||
         std::holds_alternative<wire::BatchForgetReq>(body) ||
         std::holds_alternative<wire::ReleaseReq>(body) ||
         std::holds_alternative<wire::ReleasedirReq>(body) ||
         std::holds_alternative<wire::FlushReq>(body) ||
         std::holds_alternative<wire::DestroyReq>(body) ||
         std::holds_alternative<wire::InterruptReq>(body) ||
         std::holds_alternative<wire::NotifyReplyReq>(body) ||
         std::holds_alternative<wire::ShutdownReq>(body) ||
         std::holds_alternative<wire::UnfreezeReq>(body);
}

}  // namespace

// Per-request state and the handlers, one per opcode. Handlers return the reply body (or an
// errno); only Handle() encodes and sends.
struct Dispatcher::Context {
  Dispatcher& d;
  const wire::Request& req;
  ReplySink& sink;

  ext4::Filesystem& fs() { return d.fs_; }
  wire::CacheTimeout entry_timeout() const { return {d.options_.entry_timeout_sec, 0}; }
  wire::CacheTimeout attr_timeout() const { return {d.options_.attr_timeout_sec, 0}; }
  bool caller_is_root() const { return req.header.uid == 0; }

  abi::fuse_entry_out Entry(const ext4::Attr& a) const {
    abi::fuse_attr attr = ToFuseAttr(a);
    attr.flags |= d.iomap_->AttrFlags(a.mode);  // latched at instantiation (iomap spec §1.5)
    return wire::MakeEntryOut(a.ino, a.generation, attr, entry_timeout(), attr_timeout());
  }

  // A value reply that honours the size-query protocol of GETXATTR/LISTXATTR.
  static Result<Reply> SizedReply(std::span<const std::byte> value, uint32_t size) {
    if (size == 0) return Reply::Of(wire::MakeGetxattrOut(static_cast<uint32_t>(value.size())));
    if (size < value.size()) return Unexpected(ERANGE);
    std::span<std::byte> out = Scratch(value.size());
    std::copy(value.begin(), value.end(), out.begin());
    return Reply::Borrow(out);
  }

  Result<Reply> On(const wire::InitReq& r) {
    if (r.major < abi::FUSE_KERNEL_VERSION) return Unexpected(EPROTO);
    if (r.major > abi::FUSE_KERNEL_VERSION) {
      // The kernel retries INIT with our major (fs/fuse/inode.c process_init_reply).
      abi::fuse_init_out out{};
      out.major = abi::FUSE_KERNEL_VERSION;
      return Reply::Of(out);
    }
    uint32_t minor = std::min(r.minor, kOurMinor);
    uint64_t offered = r.flags;
    if ((offered & abi::FUSE_INIT_EXT) == 0) offered &= 0xffffffffull;
    uint64_t wanted = kWantedInitFlags;
    if (!d.options_.posix_acl) wanted = (wanted & ~abi::FUSE_POSIX_ACL) | abi::FUSE_DONT_MASK;
    uint64_t enabled = offered & wanted;
    // fuse-iomap (iomap spec §1.3): FUSE_IOMAP in flags2 and minor 99, else classic mode.
    if ((offered & abi::FUSE_INIT_EXT) != 0 && d.iomap_->Negotiate(offered)) {
      enabled |= abi::FUSE_IOMAP;
      minor = abi::FUSE_IOMAP_KERNEL_MINOR_VERSION;
    } else if (d.options_.writeback_cache && !d.options_.read_only) {
      // Classic mode only: with iomap the kernel already caches and writes the data itself.
      enabled |= offered & abi::FUSE_WRITEBACK_CACHE;
    }
    wire::InitOutParams p;
    p.minor = minor;
    p.max_readahead = r.max_readahead;
    p.flags = enabled;
    p.max_background = 64;
    p.congestion_threshold = 48;
    p.max_write = d.options_.max_io_bytes;
    p.max_pages = static_cast<uint16_t>(d.options_.max_io_bytes / 4096);
    p.time_gran = 1;
    abi::fuse_init_out out = wire::MakeInitOut(p);
    d.init_flags_.store(enabled, std::memory_order_release);
    d.minor_.store(minor, std::memory_order_release);
    LOG_DEBUG("INIT: kernel 7.%u flags %#llx; using 7.%u flags %#llx", r.minor,
              static_cast<unsigned long long>(r.flags), minor,
              static_cast<unsigned long long>(enabled));
    Reply reply = Reply::Of(out);
    if (minor < kCompat22Minor) reply.owned.resize(kCompat22InitOutSize);
    return reply;
  }

  Result<Reply> On(const wire::DestroyReq&) {
    d.iomap_->Destroy(sink);
    d.destroyed_.store(true);
    return Reply::Empty();
  }

  Result<Reply> On(const wire::ForgetReq& r) {
    fs().Forget(req.node, r.nlookup);
    return Reply::NoReply();
  }
  Result<Reply> On(const wire::BatchForgetReq& r) {
    for (const auto& f : r.forgets) fs().Forget(f.ino, f.nlookup);
    return Reply::NoReply();
  }
  // Every request here completes promptly, so an interrupt has nothing to cut short; the
  // kernel keeps waiting for the original reply, which comes.
  Result<Reply> On(const wire::InterruptReq&) { return Reply::NoReply(); }
  Result<Reply> On(const wire::NotifyReplyReq&) { return Reply::NoReply(); }

  Result<Reply> On(const wire::LookupReq& r) {
    Result<ext4::Attr> a = fs().Lookup(req.node, r.name);
    if (!a) {
      // A cached negative entry saves the next lookup of the same missing name.
      if (a.error() == ENOENT && d.options_.read_only) {
        return Reply::Of(wire::MakeNegativeEntryOut(entry_timeout()));
      }
      return Unexpected(a.error());
    }
    return Reply::Of(Entry(*a));
  }

  Result<Reply> On(const wire::GetattrReq&) {
    IOMAPFS_ASSIGN_OR_RETURN(ext4::Attr a, fs().GetAttr(req.node));
    return Reply::Of(wire::MakeAttrOut(ToFuseAttr(a), attr_timeout()));
  }

  Result<Reply> On(const wire::StatxReq&) {
    IOMAPFS_ASSIGN_OR_RETURN(ext4::Attr a, fs().GetAttr(req.node));
    abi::fuse_statx sx = ToFuseStatx(a);
    d.iomap_->FillStatx(a.mode, &sx);  // direct I/O alignment, untorn writes (iomap spec §14)
    return Reply::Of(wire::MakeStatxOut(sx, attr_timeout()));
  }

  Result<Reply> On(const wire::ReadlinkReq&) {
    IOMAPFS_ASSIGN_OR_RETURN(std::string target, fs().ReadLink(req.node));
    Reply reply;
    auto b = std::as_bytes(std::span<const char>(target));
    reply.owned.assign(b.begin(), b.end());
    return reply;
  }

  Result<Reply> On(const wire::OpendirReq&) {
    IOMAPFS_ASSIGN_OR_RETURN(FileHandle fh, fs().OpenDir(req.node));
    uint32_t open_flags = d.options_.read_only ? (abi::FOPEN_CACHE_DIR | abi::FOPEN_KEEP_CACHE) : 0;
    return Reply::Of(wire::MakeOpenOut(fh, open_flags));
  }

  Result<Reply> On(const wire::ReaddirReq& r) {
    wire::DirentBuffer buf(Scratch(r.size));
    auto emit = [&](const ext4::DirEntry& e, const ext4::Attr* attr, uint64_t next) {
      wire::DirentBuffer::Status st;
      if (!r.plus) {
        st = buf.Add(e.ino, next, e.type, e.name);
      } else if (attr != nullptr) {
        st = buf.AddPlus(Entry(*attr), next, e.name);
      } else {
        // "." and "..", or an unreadable inode: listed, but no entry the kernel would hold.
        abi::fuse_entry_out none{};
        none.attr.ino = e.ino.value();
        none.attr.mode = e.type << 12;
        st = buf.AddPlus(none, next, e.name);
      }
      if (st == wire::DirentBuffer::Status::kInvalidName) {
        LOG_WARNING("directory %llu: skipping an entry with an invalid name",
                    static_cast<unsigned long long>(req.node.value()));
        return true;
      }
      return st == wire::DirentBuffer::Status::kAdded;
    };
    IOMAPFS_TRY(fs().ReadDir(req.node, r.fh, r.offset, r.plus, emit));
    return Reply::Borrow(buf.bytes());
  }

  Result<Reply> On(const wire::ReleasedirReq& r) {
    fs().ReleaseDir(r.fh);
    return Reply::Empty();
  }
  Result<Reply> On(const wire::FsyncdirReq& r) {
    if (ReadOnly()) return Reply::Empty();
    IOMAPFS_TRY(fs().Fsync(req.node, (r.fsync_flags & abi::FUSE_FSYNC_FDATASYNC) != 0));
    return Reply::Empty();
  }

  Result<Reply> On(const wire::OpenReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(FileHandle fh, fs().Open(req.node, static_cast<int>(r.flags)));
    if ((r.flags & O_TRUNC) != 0 && !ReadOnly()) {
      // Without FUSE_ATOMIC_O_TRUNC the kernel truncates with SETATTR itself; with it, here.
      ext4::Filesystem::SetAttrRequest t;
      t.size = 0;
      IOMAPFS_TRY(fs().SetAttr(req.node, t, caller()));
    }
    d.iomap_->Opened(req, sink);
    // Only this mount changes the image, through the kernel's own caches: keep the page cache
    // across opens.
    uint32_t open_flags = abi::FOPEN_KEEP_CACHE;
    return Reply::Of(wire::MakeOpenOut(fh, open_flags));
  }

  // READ ignores the handle's access mode: with the writeback cache the kernel reads pages
  // through whatever handle it writes back with, O_WRONLY ones included, to fill the rest of
  // a partially written page (libfuse's passthrough examples widen O_WRONLY to O_RDWR for the
  // same reason). Permission to read was checked by the kernel at open(2).
  Result<Reply> On(const wire::ReadReq& r) {
    std::span<std::byte> buf = Scratch(r.size);
    IOMAPFS_ASSIGN_OR_RETURN(size_t n, fs().Read(req.node, r.offset, buf));
    return Reply::Borrow(buf.first(n));
  }

  Result<Reply> On(const wire::FlushReq&) { return Reply::Empty(); }
  Result<Reply> On(const wire::ReleaseReq& r) {
    fs().Release(r.fh);
    return Reply::Empty();
  }
  Result<Reply> On(const wire::FsyncReq& r) {
    if (ReadOnly()) return Reply::Empty();
    IOMAPFS_TRY(fs().Fsync(req.node, (r.fsync_flags & abi::FUSE_FSYNC_FDATASYNC) != 0));
    return Reply::Empty();
  }
  Result<Reply> On(const wire::SyncfsReq&) {
    if (ReadOnly()) return Reply::Empty();
    IOMAPFS_TRY(fs().SyncFs());
    return Reply::Empty();
  }

  Result<Reply> On(const wire::StatfsReq&) {
    IOMAPFS_ASSIGN_OR_RETURN(ext4::StatFs s, fs().StatFs());
    abi::fuse_kstatfs k{};
    k.blocks = s.blocks;
    k.bfree = s.bfree;
    k.bavail = s.bavail;
    k.files = s.files;
    k.ffree = s.ffree;
    k.bsize = s.bsize;
    k.namelen = s.namelen;
    k.frsize = s.frsize;
    return Reply::Of(wire::MakeStatfsOut(k));
  }

  Result<Reply> On(const wire::GetxattrReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> value, fs().GetXattr(req.node, r.name));
    return SizedReply(value, r.size);
  }

  Result<Reply> On(const wire::ListxattrReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::string> names, fs().ListXattr(req.node));
    // ext4 lists trusted.* only to callers with CAP_SYS_ADMIN; uid 0 stands for it here.
    std::string list;
    for (const auto& n : names) {
      if (IsTrusted(n) && !caller_is_root()) continue;
      list += n;
      list += '\0';
    }
    return SizedReply(std::as_bytes(std::span<const char>(list)), r.size);
  }

  Result<Reply> On(const wire::AccessReq& r) {
    ext4::Caller caller;
    caller.uid = req.header.uid;
    caller.gid = req.header.gid;
    caller.pid = req.header.pid;
    IOMAPFS_TRY(fs().Access(req.node, static_cast<int>(r.mask), caller));
    return Reply::Empty();
  }

  // With the writeback cache, makes the kernel write the file's dirty pages back (and drop its
  // cached pages) before an answer that depends on the image's view of the whole file: LSEEK's
  // SEEK_DATA/SEEK_HOLE, which the kernel sends without writing anything back first
  // (fs/fuse/file.c fuse_lseek), and a punch or zero of FALLOCATE, which ext4 bounds by i_size
  // (the kernel writes back only the range itself). NOTIFY_INVAL_INODE of the whole file
  // (fuse_reverse_inval_inode -> invalidate_inode_pages2_range) launders every dirty folio,
  // a WRITE that another worker serves, and returns once they are written; the image's EOF
  // then is the kernel's. A worker blocked here serves nothing, so at most workers - 1 flush
  // at once.
  // Returns: false if dirty pages may still be in the kernel (no slot free, no kernel, or the
  // notification failed); the answer then comes from the image as it is.
  bool FlushKernelCache() {
    if (!d.writeback_cache()) return true;
    KernelControl* control = sink.control();
    if (control == nullptr) return false;
    if (d.flushing_.fetch_add(1, std::memory_order_acq_rel) + 1 >= d.options_.workers) {
      d.flushing_.fetch_sub(1, std::memory_order_acq_rel);
      LOG_WARNING(
          "node %llu: every other worker is busy; answering without writing back the "
          "kernel's dirty pages",
          static_cast<unsigned long long>(req.node.value()));
      return false;
    }
    std::vector<std::byte> msg = wire::EncodeNotifyInvalInode(req.node, 0, 0);
    iovec iov{msg.data(), msg.size()};
    Result<void> sent = control->Notify(std::span<const iovec>(&iov, 1));
    d.flushing_.fetch_sub(1, std::memory_order_acq_rel);
    if (!sent) {
      LOG_WARNING("node %llu: writing back the kernel's dirty pages failed: %s",
                  static_cast<unsigned long long>(req.node.value()), strerror(sent.error()));
      return false;
    }
    return true;
  }

  Result<Reply> On(const wire::LseekReq& r) {
    (void)FlushKernelCache();
    IOMAPFS_ASSIGN_OR_RETURN(uint64_t off,
                             fs().Lseek(req.node, r.offset, static_cast<int>(r.whence)));
    return Reply::Of(wire::MakeLseekOut(off));
  }

  // Modifying operations: the ext4 layer refuses them with EROFS on a read-only filesystem
  // (opened read-only, or made read-only by errors=remount-ro), so they are not checked here.
  ext4::Caller caller() const {
    ext4::Caller c;
    c.uid = req.header.uid;
    c.gid = req.header.gid;
    c.pid = req.header.pid;
    return c;
  }
  bool ReadOnly() const { return d.options_.read_only; }

  // CREATE and TMPFILE answer an entry followed by an open reply.
  Result<Reply> EntryAndOpen(const ext4::Attr& a, uint32_t flags) {
    IOMAPFS_ASSIGN_OR_RETURN(FileHandle fh, fs().Open(a.ino, static_cast<int>(flags)));
    Reply reply = Reply::Of(Entry(a));
    abi::fuse_open_out open = wire::MakeOpenOut(fh, abi::FOPEN_KEEP_CACHE);
    auto b = wire::BytesOf(open);
    reply.owned.insert(reply.owned.end(), b.begin(), b.end());
    return reply;
  }

  Result<Reply> On(const wire::CreateReq& r) {
    Result<ext4::Attr> a = fs().Create(req.node, r.name, r.mode, r.umask, caller());
    if (!a && a.error() == EEXIST && (r.flags & O_EXCL) == 0) {
      // Created by someone else since the kernel's lookup: open what is there.
      a = fs().Lookup(req.node, r.name);
      if (a && (r.flags & O_TRUNC) != 0 && S_ISREG(a->mode)) {
        ext4::Filesystem::SetAttrRequest t;
        t.size = 0;
        a = fs().SetAttr(a->ino, t, caller());
      }
    }
    if (!a) return Unexpected(a.error());
    return EntryAndOpen(*a, r.flags);
  }
  Result<Reply> On(const wire::TmpfileReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(ext4::Attr a, fs().Tmpfile(req.node, r.mode, r.umask, caller()));
    return EntryAndOpen(a, r.flags);
  }
  Result<Reply> On(const wire::MknodReq& r) {
    // fuse_mknod_in.rdev is new_encode_dev()'d by the kernel.
    dev_t rdev = makedev((r.rdev & 0xfff00) >> 8, (r.rdev & 0xff) | ((r.rdev >> 12) & 0xfff00));
    IOMAPFS_ASSIGN_OR_RETURN(ext4::Attr a,
                             fs().Mknod(req.node, r.name, r.mode, rdev, r.umask, caller()));
    return Reply::Of(Entry(a));
  }
  Result<Reply> On(const wire::MkdirReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(ext4::Attr a,
                             fs().Mkdir(req.node, r.name, r.mode | S_IFDIR, r.umask, caller()));
    return Reply::Of(Entry(a));
  }
  Result<Reply> On(const wire::SymlinkReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(ext4::Attr a, fs().Symlink(req.node, r.name, r.target, caller()));
    return Reply::Of(Entry(a));
  }
  Result<Reply> On(const wire::LinkReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(ext4::Attr a, fs().Link(r.old_node, req.node, r.new_name));
    return Reply::Of(Entry(a));
  }
  Result<Reply> On(const wire::UnlinkReq& r) {
    IOMAPFS_TRY(fs().Unlink(req.node, r.name));
    return Reply::Empty();
  }
  Result<Reply> On(const wire::RmdirReq& r) {
    IOMAPFS_TRY(fs().Rmdir(req.node, r.name));
    return Reply::Empty();
  }
  Result<Reply> On(const wire::RenameReq& r) {
    IOMAPFS_TRY(fs().Rename(req.node, r.old_name, r.new_dir, r.new_name, r.flags));
    return Reply::Empty();
  }

  Result<Reply> On(const wire::SetattrReq& r) {
    const abi::fuse_setattr_in& in = r.in;
    ext4::Filesystem::SetAttrRequest s;
    if (in.valid & abi::FATTR_MODE) s.mode = in.mode;
    if (in.valid & abi::FATTR_UID) s.uid = in.uid;
    if (in.valid & abi::FATTR_GID) s.gid = in.gid;
    if (in.valid & abi::FATTR_SIZE) s.size = in.size;
    ext4::Timestamp now = Now();
    if (in.valid & abi::FATTR_ATIME_NOW) {
      s.atime = now;
    } else if (in.valid & abi::FATTR_ATIME) {
      s.atime = ext4::Timestamp{static_cast<int64_t>(in.atime), in.atimensec};
    }
    if (in.valid & abi::FATTR_MTIME_NOW) {
      s.mtime = now;
    } else if (in.valid & abi::FATTR_MTIME) {
      s.mtime = ext4::Timestamp{static_cast<int64_t>(in.mtime), in.mtimensec};
    }
    if (in.valid & abi::FATTR_CTIME) {
      s.ctime = ext4::Timestamp{static_cast<int64_t>(in.ctime), in.ctimensec};
    }
    s.kill_suid_sgid = (in.valid & abi::FATTR_KILL_SUIDGID) != 0;
    IOMAPFS_ASSIGN_OR_RETURN(ext4::Attr a, fs().SetAttr(req.node, s, caller()));
    return Reply::Of(wire::MakeAttrOut(ToFuseAttr(a), attr_timeout()));
  }

  // WRITE goes to r.offset as given, never to the image's EOF: with the writeback cache the
  // kernel owns i_size and resolves O_APPEND positions itself, and writeback WRITEs may start
  // past the image's EOF (the file grows to offset + size). The open flags (O_APPEND) are not
  // consulted. The kernel also owns mtime and ctime then: it set them when write(2) dirtied
  // the pages and sends them with SETATTR (fuse_write_inode) after the pages, so the write
  // leaves the image's times alone (one inode write less per WRITE).
  Result<Reply> On(const wire::WriteReq& r) {
    bool kill = (r.write_flags & abi::FUSE_WRITE_KILL_SUIDGID) != 0;
    IOMAPFS_ASSIGN_OR_RETURN(size_t n, fs().Write(req.node, r.offset, r.data, false, kill,
                                                  /*update_times=*/!d.writeback_cache()));
    // A write-back ignores a short count (the pages are marked clean all the same): the one
    // short write ext4 has, at the largest file size, must be an error (for fsync and close).
    if (d.writeback_cache() && n < r.data.size()) return Unexpected(EFBIG);
    return Reply::Of(wire::MakeWriteOut(static_cast<uint32_t>(n)));
  }

  Result<Reply> On(const wire::SetxattrReq& r) {
    bool kill_sgid = (r.setxattr_flags & abi::FUSE_SETXATTR_ACL_KILL_SGID) != 0;
    IOMAPFS_TRY(fs().SetXattr(req.node, r.name, r.value, static_cast<int>(r.flags), kill_sgid));
    return Reply::Empty();
  }
  Result<Reply> On(const wire::RemovexattrReq& r) {
    IOMAPFS_TRY(fs().RemoveXattr(req.node, r.name));
    return Reply::Empty();
  }
  Result<Reply> On(const wire::FallocateReq& r) {
    if ((r.mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) != 0) (void)FlushKernelCache();
    IOMAPFS_TRY(fs().Fallocate(req.node, r.mode, r.offset, r.length));
    return Reply::Empty();
  }

  // copy_file_range(2) through the filesystem's own read and write (no reflink in ext4).
  Result<Reply> On(const wire::CopyFileRangeReq& r) {
    // With the writeback cache the kernel writes back only the copied ranges before sending
    // this; the source's EOF here can still lag the kernel's (dirty pages past the range), so
    // a copy from the image could come up short. ENOSYS: the kernel copies through its page
    // cache instead (generic splice copy).
    if (d.writeback_cache()) return Unexpected(ENOSYS);
    uint64_t len = r.wide ? r.len : std::min<uint64_t>(r.len, 0xfffff000u);
    uint64_t done = 0;
    constexpr size_t kChunk = 1 << 20;
    std::vector<std::byte> buf(std::min<uint64_t>(len, kChunk));
    while (done < len) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(len - done, kChunk));
      IOMAPFS_ASSIGN_OR_RETURN(
          size_t got, fs().Read(req.node, r.off_in + done, std::span<std::byte>(buf.data(), want)));
      if (got == 0) break;
      IOMAPFS_ASSIGN_OR_RETURN(
          size_t put, fs().Write(r.node_out, r.off_out + done,
                                 std::span<const std::byte>(buf.data(), got), false, false));
      done += put;
      if (put < got) break;
    }
    if (r.wide) return Reply::Of(wire::MakeCopyFileRangeOut(done));
    return Reply::Of(wire::MakeWriteOut(static_cast<uint32_t>(done)));
  }

  // fuse-iomap opcodes (iomap_handler.h); ENOSYS on a classic-mode connection.
  Result<Reply> On(const wire::IomapConfigReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_config_out out, d.iomap_->Config(r, sink));
    return Reply::Of(out);
  }
  Result<Reply> On(const wire::IomapBeginReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_begin_out out, d.iomap_->Begin(req, r, sink));
    return Reply::Of(out);
  }
  Result<Reply> On(const wire::IomapEndReq& r) {
    IOMAPFS_TRY(d.iomap_->End(req, r, sink));
    return Reply::Empty();
  }
  Result<Reply> On(const wire::IomapIoendReq& r) {
    IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_ioend_out out, d.iomap_->Ioend(req, r, sink));
    return Reply::Of(out);
  }
  Result<Reply> On(const wire::FreezeReq& r) {
    IOMAPFS_TRY(d.iomap_->Freeze(r.unlinked));
    return Reply::Empty();
  }
  Result<Reply> On(const wire::UnfreezeReq&) {
    IOMAPFS_TRY(d.iomap_->Unfreeze());
    return Reply::Empty();
  }
  // §8: flush what is in memory so that the image is consistent as of now (fuse4fs and ext4's
  // EXT4_GOING_FLAGS_DEFAULT sync first), then refuse every later operation (Handle()).
  Result<Reply> On(const wire::ShutdownReq&) {
    if (!d.shut_down_.exchange(true, std::memory_order_acq_rel)) {
      LOG_WARNING("SHUTDOWN_FS: the filesystem refuses every further operation with EIO");
      if (Result<void> s = fs().SyncFs(); !s) {
        LOG_ERROR("SHUTDOWN_FS: flushing the filesystem failed: %s", strerror(s.error()));
      }
    }
    return Reply::Empty();
  }

  // Everything else (locks: the kernel then does local locking; ioctl, poll, bmap): not
  // implemented.
  template <class T>
  Result<Reply> On(const T&) {
    return Unexpected(ENOSYS);
  }
};

Dispatcher::Dispatcher(ext4::Filesystem& fs, const DispatcherOptions& options)
    : fs_(fs), options_(options), iomap_(std::make_unique<IomapHandler>(fs, options.iomap)) {}

Dispatcher::~Dispatcher() = default;

size_t Dispatcher::MaxRequestSize() const {
  // Header + fuse_write_in + the largest payload, with room for SETXATTR names.
  return options_.max_io_bytes + 4096;
}

void Dispatcher::Handle(std::span<const std::byte> msg, ReplySink& sink) {
  stats_.requests.fetch_add(1, std::memory_order_relaxed);
  auto send = [&](Unique unique, int error, std::span<const std::byte> body) {
    abi::fuse_out_header h = wire::ReplyHeader(unique, error, body.size());
    iovec iov[2] = {{&h, sizeof(h)}, {const_cast<std::byte*>(body.data()), body.size()}};
    Result<void> sent = sink.Send(std::span<const iovec>(iov, error == 0 && !body.empty() ? 2 : 1));
    if (!sent && sent.error() != ENOENT && sent.error() != ENODEV) {
      LOG_WARNING("sending a reply failed: %s", strerror(sent.error()));
    }
  };

  Result<abi::fuse_in_header> header = wire::DecodeHeader(msg);
  if (!header) {
    stats_.decode_errors.fetch_add(1, std::memory_order_relaxed);
    LOG_WARNING("malformed request (%zu bytes): %s", msg.size(), strerror(header.error()));
    // With a readable header the kernel is still waiting for this unique: answer it.
    if (msg.size() >= sizeof(abi::fuse_in_header)) {
      abi::fuse_in_header raw;
      std::memcpy(&raw, msg.data(), sizeof(raw));
      if (wire::NeedsReply(raw.opcode)) send(Unique(raw.unique), EIO, {});
    }
    return;
  }
  const uint32_t opcode = header->opcode;
  const Unique unique(header->unique);

  wire::DecodeContext ctx;
  ctx.setxattr_ext = (init_flags() & abi::FUSE_SETXATTR_EXT) != 0;
  Result<wire::Request> req = wire::Decode(msg, ctx);
  if (!req) {
    if (req.error() == ENOSYS) {
      stats_.unknown_opcodes.fetch_add(1, std::memory_order_relaxed);
      LOG_DEBUG("unknown opcode %u", opcode);
    } else if (req.error() == ESTALE) {
      LOG_DEBUG("%s for a stale node id", std::string(wire::OpcodeName(opcode)).c_str());
    } else {
      stats_.decode_errors.fetch_add(1, std::memory_order_relaxed);
      LOG_WARNING("malformed %s request: %s", std::string(wire::OpcodeName(opcode)).c_str(),
                  strerror(req.error()));
    }
    if (wire::NeedsReply(opcode)) send(unique, req.error(), {});
    return;
  }
  if (!initialized() && !std::holds_alternative<wire::InitReq>(req->body)) {
    LOG_WARNING("%s before INIT", std::string(wire::OpcodeName(opcode)).c_str());
    if (wire::NeedsReply(opcode)) send(unique, EIO, {});
    return;
  }
  // The one place SHUTDOWN_FS takes effect (iomap spec §8): nothing reaches the filesystem.
  if (shut_down() && !AllowedAfterShutdown(req->body)) {
    if (wire::NeedsReply(opcode)) send(unique, EIO, {});
    return;
  }

  Result<Reply> reply = Unexpected(EIO);
  try {
    Context c{*this, *req, sink};
    reply = std::visit([&](const auto& body) { return c.On(body); }, req->body);
  } catch (const std::bad_alloc&) {
    reply = Unexpected(ENOMEM);
  } catch (...) {
    // The backstop: no project code throws, but a library might.
    LOG_ERROR("%s: unexpected exception", std::string(wire::OpcodeName(opcode)).c_str());
    reply = Unexpected(EIO);
  }
  if (options_.debug) {
    LOG_DEBUG("%s unique=%llu node=%llu -> %s", std::string(wire::OpcodeName(opcode)).c_str(),
              static_cast<unsigned long long>(unique.value()),
              static_cast<unsigned long long>(req->node.value()),
              reply ? "ok" : strerror(reply.error()));
  }
  iomap_->AfterRequest(*req, reply.has_value(), sink);
  if (reply && reply->none) return;
  if (!wire::NeedsReply(opcode)) return;
  if (!reply) {
    send(unique, reply.error(), {});
    return;
  }
  send(unique, 0, reply->body());
}

}  // namespace iomapfs::dispatch
