#include "fsserver/dispatch/iomap_handler.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "base/log.h"
#include "base/unique_fd.h"
#include "bpf/dispatcher.h"
#include "bpf/file_map.h"
#include "fsserver/dispatch/loop_device.h"
#include "fsserver/wire/node_id.h"
#include "fsserver/wire/reply.h"
#include "iomap/mapping.h"

namespace iomapfs::dispatch {

namespace abi = iomapfs::abi;

namespace {

constexpr uint32_t kWriteOps = abi::FUSE_IOMAP_OP_WRITE | abi::FUSE_IOMAP_OP_ZERO |
                               abi::FUSE_IOMAP_OP_UNSHARE | abi::FUSE_IOMAP_OP_WRITEBACK;
// statx(2) uapi (include/uapi/linux/stat.h).
constexpr uint32_t kStatxDioAlign = 0x00002000U;           // STATX_DIOALIGN
constexpr uint32_t kStatxWriteAtomic = 0x00010000U;        // STATX_WRITE_ATOMIC
constexpr uint64_t kStatxAttrWriteAtomic = 0x00400000ULL;  // STATX_ATTR_WRITE_ATOMIC

// Ops that never use the kernel cache (§4.3, §12.2): no RETRY_CACHE for them.
constexpr uint32_t kNoCacheOps = abi::FUSE_IOMAP_OP_ATOMIC | abi::FUSE_IOMAP_OP_SWAPFILE;

abi::fuse_iomap_io PureOverwrite(const abi::fuse_iomap_io& read) {
  abi::fuse_iomap_io w{};
  w.offset = read.offset;
  w.length = read.length;
  w.addr = abi::FUSE_IOMAP_NULL_ADDR;
  w.type = abi::FUSE_IOMAP_TYPE_PURE_OVERWRITE;
  return w;
}

// The portable NOCACHE / RETRY_CACHE slot (§12.3, §12.6): the real slot's range, nothing else.
abi::fuse_iomap_io Placeholder(const abi::fuse_iomap_io& real, uint16_t type) {
  abi::fuse_iomap_io p = PureOverwrite(real);
  p.type = type;
  return p;
}

// §11.3, §15.4: every server thread that services iomap requests sets NOFS on itself, once per
// connection. UNTESTED against a real iomap kernel (the kernel model records the calls).
void SetNofsOnce(ReplySink& sink) {
  thread_local KernelControl* done_for = nullptr;
  KernelControl* control = sink.control();
  if (control == nullptr || done_for == control) return;
  done_for = control;
  if (Result<void> r = control->SetNofs(true); !r) {
    LOG_WARNING("iomap mode: FUSE_DEV_IOC_SET_NOFS failed: %s", strerror(r.error()));
  }
}

// statx(2) of `fd` asking for `mask`, raw (older headers lack the newer fields): whether the
// kernel reported all of `mask`; the two u32 fields at byte offsets `first` and `second` of
// struct statx (include/uapi/linux/stat.h) go to *a and *b.
bool StatxPair(int fd, uint32_t mask, size_t first, size_t second, uint32_t* a, uint32_t* b) {
  alignas(8) unsigned char buf[256] = {};  // struct statx
  if (::syscall(SYS_statx, fd, "", AT_EMPTY_PATH, mask, buf) != 0) return false;
  uint32_t got;
  std::memcpy(&got, buf, sizeof(got));  // stx_mask
  std::memcpy(a, buf + first, sizeof(*a));
  std::memcpy(b, buf + second, sizeof(*b));
  return (got & mask) == mask;
}

// STATX_WRITE_ATOMIC of `fd` (Linux 6.11 uapi). Returns: {unit_min, unit_max}, {0, 0} when the
// file reports no untorn writes.
std::pair<uint32_t, uint32_t> DeviceAtomicUnits(int fd) {
  uint32_t unit_min = 0, unit_max = 0;  // stx_atomic_write_unit_min, _max
  if (!StatxPair(fd, kStatxWriteAtomic, 168, 172, &unit_min, &unit_max)) return {0, 0};
  return {unit_min, unit_max};
}

// STATX_DIOALIGN of `fd` (Linux 6.1 uapi). A device that
// does not report it: its logical block size (BLKSSZGET) if it is a block device, else 512, the
// smallest logical block size. Returns: {dio_mem_align, dio_offset_align}.
std::pair<uint32_t, uint32_t> DeviceDioAlign(int fd) {
  uint32_t mem = 0, offset = 0;  // stx_dio_mem_align, stx_dio_offset_align
  if (StatxPair(fd, kStatxDioAlign, 152, 156, &mem, &offset) && mem != 0 && offset != 0) {
    return {mem, offset};
  }
  int logical = 0;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISBLK(st.st_mode) && ::ioctl(fd, BLKSSZGET, &logical) == 0 &&
      logical > 0) {
    return {static_cast<uint32_t>(logical), static_cast<uint32_t>(logical)};
  }
  return {512, 512};
}

Result<void> SendNotify(ReplySink& sink, const std::vector<std::byte>& msg) {
  KernelControl* control = sink.control();
  if (control == nullptr) return Unexpected(ENOTCONN);
  iovec iov{const_cast<std::byte*>(msg.data()), msg.size()};
  return control->Notify(std::span<const iovec>(&iov, 1));
}

}  // namespace

struct IomapHandler::Bpf {
  bpf::Dispatcher dispatcher;
};

IomapHandler::IomapHandler(ext4::Filesystem& fs, const IomapOptions& options)
    : fs_(fs), options_(options) {}

IomapHandler::~IomapHandler() = default;

bool IomapHandler::Negotiate(uint64_t offered) {
  if (!options_.enable || (offered & abi::FUSE_IOMAP) == 0) return false;
  if (fs_.data_fd() < 0) {
    LOG_WARNING("iomap mode declined: the filesystem is not backed by a file descriptor");
    return false;
  }
  block_size_ = fs_.block_size();
  data_offset_ = fs_.data_offset();
  struct stat st {};
  if (::fstat(fs_.data_fd(), &st) != 0) return false;
  if (S_ISBLK(st.st_mode)) {
    uint64_t bytes = 0;
    device_bytes_ = ::ioctl(fs_.data_fd(), BLKGETSIZE64, &bytes) == 0 ? bytes : 0;
  } else {
    device_bytes_ = static_cast<uint64_t>(st.st_size);
  }
  enabled_.store(true, std::memory_order_release);
  LOG_INFO("iomap mode: acknowledged FUSE_IOMAP (EXPERIMENTAL protocol minor %u)",
           abi::FUSE_IOMAP_KERNEL_MINOR_VERSION);
  return true;
}

uint32_t IomapHandler::AttrFlags(uint32_t mode) const {
  if (!enabled() || !S_ISREG(mode)) return 0;
  return abi::FUSE_ATTR_EXCLUSIVE | abi::FUSE_ATTR_IOMAP | (atomic() ? abi::FUSE_ATTR_ATOMIC : 0);
}

void IomapHandler::FillStatx(uint32_t mode, abi::fuse_statx* sx) const {
  if (!enabled() || !S_ISREG(mode) || backing_id() == 0) return;
  sx->mask |= kStatxDioAlign;
  sx->dio_mem_align = dio_mem_align_.load(std::memory_order_relaxed);
  sx->dio_offset_align = dio_offset_align_.load(std::memory_order_relaxed);
  if (!atomic()) return;
  // §14.7: the atomic unit is exactly one fs block, one segment.
  sx->mask |= kStatxWriteAtomic;
  sx->attributes |= kStatxAttrWriteAtomic;
  sx->attributes_mask |= kStatxAttrWriteAtomic;
  sx->atomic_write_unit_min = block_size_;
  sx->atomic_write_unit_max = block_size_;
  sx->atomic_write_segments_max = 1;
}

Result<abi::fuse_iomap_config_out> IomapHandler::Config(const wire::IomapConfigReq& r,
                                                        ReplySink& sink) {
  if (!enabled()) return Unexpected(ENOSYS);
  KernelControl* control = sink.control();
  if (control == nullptr) return Unexpected(EIO);
  ext4::Filesystem::IomapGeometry geo = fs_.GetIomapGeometry();

  // §1.4: register the device every mapping names. A block device (or the kernel model, which
  // takes the image file) directly; an image file on a real kernel through a loop device.
  const int data_fd = fs_.data_fd();
  Result<uint32_t> id = control->BackingOpen(data_fd, abi::FUSE_BACKING_TYPE_IOMAP);
  UniqueFd loop_fd;  // the loop device registered in place of the image, if any
  if (!id && id.error() == ENODEV) {
    std::string loop_path;
    Result<UniqueFd> loop = AttachLoop(data_fd, fs_.read_only(), &loop_path);
    if (!loop) {
      LOG_ERROR(
          "iomap mode: the image is not a block device and no loop device could be set "
          "up (%s); the mount cannot continue in iomap mode",
          strerror(loop.error()));
      return Unexpected(EIO);
    }
    LOG_INFO("iomap mode: image attached to %s", loop_path.c_str());
    loop_fd = std::move(*loop);
    id = control->BackingOpen(loop_fd.get(), abi::FUSE_BACKING_TYPE_IOMAP);
  }
  if (!id) {
    LOG_ERROR("iomap mode: BACKING_OPEN failed: %s", strerror(id.error()));
    return Unexpected(id.error());
  }
  // §14.6: the kernel does direct I/O on the registered device; STATX reports its alignment.
  auto [mem_align, offset_align] =
      options_.test_device_dio_align != 0
          ? std::pair{options_.test_device_dio_align, options_.test_device_dio_align}
          : DeviceDioAlign(loop_fd.valid() ? loop_fd.get() : data_fd);
  dio_mem_align_.store(mem_align, std::memory_order_relaxed);
  dio_offset_align_.store(offset_align, std::memory_order_relaxed);
  dev_.store(*id, std::memory_order_release);
  fs_.IomapTrackFreedBlocks();  // for DEV_INVAL (§11.5), sent by AfterRequest
  SetNofsOnce(sink);
  // §11.2, §14.2 step 3: the device's soft block size becomes the fs block size, so that cached
  // device pages never straddle file blocks. UNTESTED against a real iomap kernel.
  if (Result<void> b = control->SetBlocksize(*id, geo.block_size); !b) {
    LOG_WARNING("iomap mode: FUSE_DEV_IOC_IOMAP_SET_BLOCKSIZE(%u) failed: %s", geo.block_size,
                strerror(b.error()));
  }

  // §14.7: untorn writes of exactly one fs block, if the kernel and the device both allow them.
  // UNTESTED against a real iomap kernel (the discovery answer comes from the kernel model).
  if (options_.atomic && geo.extents) {
    Result<uint64_t> support = control->IomapSupport();
    auto [unit_min, unit_max] =
        options_.test_device_atomic_unit != 0
            ? std::pair{options_.test_device_atomic_unit, options_.test_device_atomic_unit}
            : DeviceAtomicUnits(data_fd);
    const bool ok = support && (*support & abi::FUSE_IOMAP_SUPPORT_ATOMIC) != 0 && unit_max != 0 &&
                    std::max(geo.block_size, unit_min) <= std::min(geo.block_size, unit_max);
    atomic_.store(ok, std::memory_order_release);
    if (ok) LOG_INFO("iomap mode: untorn writes of %u bytes (FUSE_ATTR_ATOMIC)", geo.block_size);
  }
  max_bytes_ = std::min<uint64_t>(geo.max_bytes, static_cast<uint64_t>(r.maxbytes));
  uint32_t cache_bytes = options_.cache_maxbytes != 0 ? options_.cache_maxbytes : r.cache_maxbytes;
  if (cache_bytes != 0) fork_limit_records_ = std::max<size_t>(1, cache_bytes / 32);

  if (options_.bpf) {
    std::string why;
    bpf::DispatcherOptions o;
    // Node id = inode number: every file's index entry direct-indexed (16 bytes per inode, at most
    // 16 MiB), larger file systems' highest inode numbers through the hash.
    if (Result<ext4::StatFs> st = fs_.StatFs(); st) {
      o.direct_nodeids = static_cast<uint32_t>(
          std::min<uint64_t>(st->files + 1, bpf::Dispatcher::kMaxDirectNodeids));
    }
    Result<bpf::Dispatcher> d = bpf::Dispatcher::Create(o, &why);
    if (!d) {
      LOG_WARNING("iomap mode: no BPF dispatcher (%s): %s", strerror(d.error()), why.c_str());
    } else if (Result<void> a = control->AttachBpf(d->fd()); !a) {
      LOG_WARNING("iomap mode: cannot attach the BPF dispatcher: %s", strerror(a.error()));
    } else {
      std::lock_guard<std::mutex> lock(bpf_mu_);
      bpf_ = std::make_unique<Bpf>(Bpf{std::move(*d)});
    }
  }

  wire::IomapConfig c;
  c.flags = abi::FUSE_IOMAP_CONFIG_SID | abi::FUSE_IOMAP_CONFIG_UUID |
            abi::FUSE_IOMAP_CONFIG_BLOCKSIZE | abi::FUSE_IOMAP_CONFIG_MAX_LINKS |
            abi::FUSE_IOMAP_CONFIG_TIME | abi::FUSE_IOMAP_CONFIG_MAXBYTES;
  c.s_id = geo.volume_name[0] != '\0' ? std::string_view(geo.volume_name) : "iomapfs";
  c.uuid = std::span<const uint8_t>(geo.uuid, sizeof(geo.uuid));
  c.blocksize = geo.block_size;
  c.max_links = geo.max_links;
  c.time_gran = geo.time_gran;
  c.time_min = geo.time_min;
  c.time_max = geo.time_max;
  c.maxbytes = static_cast<int64_t>(max_bytes_);
  if (options_.cache_maxbytes != 0) {
    c.flags |= abi::FUSE_IOMAP_CONFIG_CACHE_MAXBYTES;
    c.cache_maxbytes = options_.cache_maxbytes;
  }
  // Only the flags the kernel understands (it rejects unknown bits).
  c.flags &= r.flags;
  return wire::MakeIomapConfigOut(c);
}

abi::fuse_iomap_io IomapHandler::ToWire(const iomap::Mapping& m) const {
  abi::fuse_iomap_io io{};
  io.offset = m.offset;
  io.length = m.length;
  io.type = static_cast<uint16_t>(m.type);
  io.flags = m.flags & iomap::kFlagsValidMask;
  io.addr = abi::FUSE_IOMAP_NULL_ADDR;
  io.dev = abi::FUSE_IOMAP_DEV_NULL;
  switch (m.type) {
    case iomap::MappingType::kMapped:
    case iomap::MappingType::kUnwritten:
      io.addr = m.addr + data_offset_;
      io.dev = backing_id();
      break;
    case iomap::MappingType::kInline:
      // The engine's INLINE mapping ends at i_size; the kernel wants whole blocks (§4.5, §9).
      io.offset = 0;
      io.length = block_size_;
      break;
    default:
      break;
  }
  return io;
}

Result<void> IomapHandler::Check(const abi::fuse_iomap_io& io, uint64_t pos) const {
  std::string why;
  iomap::Mapping m;
  m.offset = io.offset;
  m.length = io.length;
  m.type = static_cast<iomap::MappingType>(io.type);
  m.flags = io.flags;
  m.addr = io.addr;
  bool real = io.type == abi::FUSE_IOMAP_TYPE_MAPPED || io.type == abi::FUSE_IOMAP_TYPE_UNWRITTEN;
  if (real) m.addr = io.addr - data_offset_;
  Result<void> ok = iomap::CheckMapping(m, pos, block_size_, device_bytes_ - data_offset_, &why);
  if (ok && io.type == abi::FUSE_IOMAP_TYPE_INLINE &&
      (io.offset % block_size_ != 0 || io.length % block_size_ != 0)) {
    ok = Unexpected(kEfsCorrupted);
    why = "INLINE mapping not block-aligned";
  }
  if (ok && real != (io.dev != abi::FUSE_IOMAP_DEV_NULL)) {
    ok = Unexpected(kEfsCorrupted);
    why = "backing device id does not match the type";
  }
  if (ok && io.offset >= max_bytes_ && max_bytes_ != 0) {
    ok = Unexpected(kEfsCorrupted);
    why = "offset past the maximum file size";
  }
  if (!ok) LOG_ERROR("iomap: refusing to send a bad mapping: %s", why.c_str());
  return ok;
}

bool IomapHandler::Upsert(Ino ino, std::span<const iomap::Mapping> maps, ReplySink& sink) {
  if (!options_.cache || maps.empty()) return false;
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    size_t& sent = upserted_[ino.value()];
    // §12.1: a fork over its limit is discarded whole by the next UPSERT. Start afresh instead,
    // keeping the newest mappings.
    if (sent + maps.size() > fork_limit_records_) {
      sent = 0;
      stats_.invals.fetch_add(1, std::memory_order_relaxed);
      (void)SendNotify(
          sink, wire::EncodeNotifyIomapInval(ino, abi::fuse_range{0, abi::FUSE_IOMAP_INVAL_TO_EOF},
                                             abi::fuse_range{0, 0}));
    }
    sent += std::min(maps.size(), fork_limit_records_);
  }
  bool all = true;
  size_t first = maps.size() > fork_limit_records_ ? maps.size() - fork_limit_records_ : 0;
  for (size_t i = first; i < maps.size(); ++i) {
    iomap::Mapping m = maps[i];
    m.flags &= ~iomap::kFlagNew;  // "new" describes one allocation, not the cached extent
    abi::fuse_iomap_io read = ToWire(m);
    if (!Check(read, read.offset)) return false;
    Result<void> r = SendNotify(
        sink,
        wire::EncodeNotifyIomapUpsert(ino, read, Placeholder(read, abi::FUSE_IOMAP_TYPE_NOCACHE)));
    stats_.upserts.fetch_add(1, std::memory_order_relaxed);
    if (r && read.type == abi::FUSE_IOMAP_TYPE_INLINE) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      inline_cached_.insert(ino.value());
    }
    if (!r) {
      stats_.upsert_failures.fetch_add(1, std::memory_order_relaxed);
      LOG_DEBUG("iomap: UPSERT for inode %llu refused: %s",
                static_cast<unsigned long long>(ino.value()), strerror(r.error()));
      all = false;
    }
  }
  return all;
}

void IomapHandler::Inval(Ino ino, uint64_t offset, uint64_t length, ReplySink& sink) {
  if (!options_.cache) return;
  offset -= offset % block_size_;
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (offset == 0 && length == abi::FUSE_IOMAP_INVAL_TO_EOF) upserted_.erase(ino.value());
    if (offset == 0) inline_cached_.erase(ino.value());  // an INLINE mapping is [0, block)
  }
  stats_.invals.fetch_add(1, std::memory_order_relaxed);
  abi::fuse_range range{offset, length};
  Result<void> r = SendNotify(sink, wire::EncodeNotifyIomapInval(ino, range, range));
  if (!r && r.error() != ESTALE) {
    LOG_WARNING("iomap: INVAL for inode %llu failed: %s",
                static_cast<unsigned long long>(ino.value()), strerror(r.error()));
  }
}

bool IomapHandler::InlineCached(Ino ino) {
  std::lock_guard<std::mutex> lock(cache_mu_);
  return inline_cached_.count(ino.value()) != 0;
}

void IomapHandler::RefreshBpf(Ino ino) {
  std::lock_guard<std::mutex> lock(bpf_mu_);
  if (bpf_ == nullptr) return;
  const uint64_t nodeid = wire::NodeIdFromIno(ino);
  auto maps = fs_.IomapFileMappings(ino, bpf::DispatcherOptions{}.budget.max_files);
  if (maps) {
    for (iomap::Mapping& m : *maps) {
      if (m.type == iomap::MappingType::kMapped || m.type == iomap::MappingType::kUnwritten) {
        m.addr += data_offset_;
      }
      m.flags &= ~iomap::kFlagNew;
    }
    auto file = bpf::BuildFileMap(nodeid, block_size_, backing_id(), *maps);
    if (file && bpf_->dispatcher.Install(*file)) {
      stats_.bpf_installs.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  // No program (INLINE data, too large, an error): the file goes back to the cache/server path.
  bpf_->dispatcher.Remove(nodeid);
}

Result<abi::fuse_iomap_begin_out> IomapHandler::Begin(const wire::Request& req,
                                                      const wire::IomapBeginReq& r,
                                                      ReplySink& sink) {
  if (!enabled() || backing_id() == 0) return Unexpected(EIO);
  if (r.attr_ino != req.node) return Unexpected(EINVAL);
  stats_.begins.fetch_add(1, std::memory_order_relaxed);
  SetNofsOnce(sink);
  const Ino ino = req.node;
  const uint32_t op = r.opflags;
  const bool write_op = (op & kWriteOps) != 0;
  if ((op & abi::FUSE_IOMAP_OP_ATOMIC) != 0) {
    // §4.7: only files that got FUSE_ATTR_ATOMIC, and exactly one block.
    if (!atomic()) return Unexpected(EOPNOTSUPP);
    if (r.count != block_size_ || r.pos % block_size_ != 0) return Unexpected(EINVAL);
  }
  std::lock_guard<std::mutex> inode_lock(InodeLock(ino));

  std::vector<iomap::Mapping> maps;
  bool allocated = false;
  if (write_op) {
    const bool frozen = fs_.frozen();
    if ((op & abi::FUSE_IOMAP_OP_NOWAIT) != 0 || frozen) {
      // Allocation blocks (metadata I/O, the lock): NOWAIT callers retry without it. A frozen
      // filesystem takes no new allocations; existing storage is still handed out.
      IOMAPFS_ASSIGN_OR_RETURN(iomap::Mapping m, fs_.IomapRead(ino, r.pos, 0));
      if (m.type == iomap::MappingType::kHole && (op & abi::FUSE_IOMAP_OP_ZERO) == 0) {
        return Unexpected(frozen ? EROFS : EAGAIN);
      }
    }
    IOMAPFS_ASSIGN_OR_RETURN(maps, fs_.IomapWrite(ino, r.pos, r.count, op, &allocated));
    if (allocated) stats_.allocations.fetch_add(1, std::memory_order_relaxed);
  } else {
    IOMAPFS_ASSIGN_OR_RETURN(iomap::Mapping m, fs_.IomapRead(ino, r.pos, op));
    maps.push_back(m);
  }
  if ((op & abi::FUSE_IOMAP_OP_ATOMIC) != 0) {
    if (maps[0].type != iomap::MappingType::kMapped &&
        maps[0].type != iomap::MappingType::kUnwritten) {
      return Unexpected(EIO);
    }
    maps[0].flags |= iomap::kFlagAtomicBio;
  }

  abi::fuse_iomap_io read = ToWire(maps[0]);
  if (Result<void> ok = Check(read, r.pos); !ok) {
    stats_.rejected.fetch_add(1, std::memory_order_relaxed);
    return Unexpected(ok.error());
  }
  if (allocated) {
    // §11.5: the allocation may have reused blocks freed by a request whose DEV_INVAL is not
    // sent yet; announce them before any mapping of them (UPSERT, the reply) leaves.
    SendDevInvals(sink);
    RefreshBpf(ino);
  }
  // A write past the inline area converted an inline-data file to extents (§9, §12.5: the
  // kernel drops only the written range by itself): its cached INLINE mapping is stale.
  if (allocated && maps[0].type != iomap::MappingType::kInline && InlineCached(ino)) {
    Inval(ino, 0, abi::FUSE_IOMAP_INVAL_TO_EOF, sink);
  }

  // §12: cache what was looked up (not REPORT: FIEMAP would thrash the cache; not the ops that
  // bypass it), then let the kernel take it from there. INLINE mappings (§9, §12.1) only for
  // reads: a read then costs the FUSE_READ of its bytes and no BEGIN; a write into an INLINE
  // destination may need the file converted, which only a BEGIN can do.
  const bool cacheable = (op & (abi::FUSE_IOMAP_OP_REPORT | kNoCacheOps)) == 0 &&
                         (read.type != abi::FUSE_IOMAP_TYPE_INLINE || !write_op);
  bool upserted = cacheable && Upsert(ino, maps, sink);
  abi::fuse_iomap_begin_out out = wire::MakeIomapBeginOut(read, PureOverwrite(read));
  if (upserted && options_.retry_cache) {
    out.read = Placeholder(read, abi::FUSE_IOMAP_TYPE_RETRY_CACHE);
    stats_.retry_cache.fetch_add(1, std::memory_order_relaxed);
  }
  switch (options_.fault) {
    case IomapFault::kNone:
      break;
    case IomapFault::kMisaligned:
      out.read = read;
      out.read.offset += 512;
      out.read.length -= std::min<uint64_t>(out.read.length, 512);
      if (out.read.addr != abi::FUSE_IOMAP_NULL_ADDR) out.read.addr += 512;
      break;
    case IomapFault::kNotCovering:
      out.read = read;
      out.read.offset = read.offset + read.length;
      if (out.read.addr != abi::FUSE_IOMAP_NULL_ADDR) out.read.addr += read.length;
      break;
  }
  return out;
}

Result<void> IomapHandler::End(const wire::Request& req, const wire::IomapEndReq& r,
                               ReplySink& sink) {
  if (!enabled()) return Unexpected(ENOSYS);
  if (r.attr_ino != req.node) return Unexpected(EINVAL);
  SetNofsOnce(sink);
  // §14.4: a buffered write that extended the file raises the on-disk size.
  const bool buffered_write =
      (r.opflags & abi::FUSE_IOMAP_OP_WRITE) != 0 && (r.opflags & abi::FUSE_IOMAP_OP_DIRECT) == 0;
  if (!buffered_write || (r.map.flags & abi::FUSE_IOMAP_F_SIZE_CHANGED) == 0 || r.written <= 0) {
    return {};
  }
  std::lock_guard<std::mutex> inode_lock(InodeLock(req.node));
  IOMAPFS_TRY(fs_.IomapRaiseSize(req.node, r.pos + static_cast<uint64_t>(r.written)));
  RefreshBpf(req.node);
  return {};
}

Result<abi::fuse_iomap_ioend_out> IomapHandler::Ioend(const wire::Request& req,
                                                      const wire::IomapIoendReq& r,
                                                      ReplySink& sink) {
  if (!enabled()) return Unexpected(ENOSYS);
  if (r.attr_ino != req.node) return Unexpected(EINVAL);
  stats_.ioends.fetch_add(1, std::memory_order_relaxed);
  SetNofsOnce(sink);
  // §6.4: a failed I/O changes nothing: unwritten extents stay unwritten (they read as zeros)
  // and new blocks of indirect files were zeroed when they were allocated.
  if (r.error != 0) return Unexpected(r.error < 0 ? -r.error : EIO);
  if ((r.flags & abi::FUSE_IOMAP_IOEND_SHARED) != 0) return Unexpected(kEfsCorrupted);
  std::lock_guard<std::mutex> inode_lock(InodeLock(req.node));
  const bool convert = (r.flags & abi::FUSE_IOMAP_IOEND_UNWRITTEN) != 0;
  IOMAPFS_ASSIGN_OR_RETURN(uint64_t size, fs_.IomapIoend(req.node, r.pos, r.written, convert));
  if (convert || (r.flags & abi::FUSE_IOMAP_IOEND_APPEND) != 0) RefreshBpf(req.node);
  return wire::MakeIomapIoendOut(size);
}

void IomapHandler::Opened(const wire::Request& req, ReplySink& sink) {
  if (!enabled() || backing_id() == 0) return;
  std::lock_guard<std::mutex> inode_lock(InodeLock(req.node));
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (upserted_.count(req.node.value()) != 0) {
      RefreshBpf(req.node);
      return;  // already pushed; the kernel keeps its cache across opens (§12.1)
    }
  }
  size_t limit = std::min(options_.open_upsert_limit, fork_limit_records_);
  auto maps = fs_.IomapFileMappings(req.node, limit);
  if (maps) Upsert(req.node, *maps, sink);  // INLINE included (block-aligned, ToWire)
  RefreshBpf(req.node);
}

void IomapHandler::SendDevInvals(ReplySink& sink) {
  const uint32_t dev = backing_id();
  if (dev == 0) return;
  if (options_.test_dev_inval_hook) options_.test_dev_inval_hook(DevInvalPoint::kBeforeTake);
  // Another thread may have taken ranges and not sent them yet: wait for it, so that blocks it
  // took and this caller may hand out again are announced before this returns.
  std::lock_guard<std::mutex> lock(dev_inval_mu_);
  std::vector<std::pair<uint64_t, uint64_t>> freed = fs_.IomapTakeFreedBlocks();
  if (options_.test_dev_inval_hook) options_.test_dev_inval_hook(DevInvalPoint::kTaken);
  for (auto [offset, length] : freed) {
    stats_.dev_invals.fetch_add(1, std::memory_order_relaxed);
    Result<void> r = SendNotify(
        sink, wire::EncodeNotifyIomapDevInval(dev, abi::fuse_range{offset + data_offset_, length}));
    if (!r) LOG_WARNING("iomap: DEV_INVAL failed: %s", strerror(r.error()));
  }
}

void IomapHandler::AfterRequest(const wire::Request& req, bool ok, ReplySink& sink) {
  if (!enabled()) return;
  // §11.5: blocks freed by this request (truncate, punch, unlink, forget of an orphan, extent
  // tree blocks) may have cached pages on the device from the server's own buffered I/O; drop
  // them before any reply, in particular before a BEGIN reply hands such a block out again.
  SendDevInvals(sink);
  auto drop_bpf = [&](Ino ino) {
    std::lock_guard<std::mutex> lock(bpf_mu_);
    if (bpf_ != nullptr) bpf_->dispatcher.Remove(wire::NodeIdFromIno(ino));
  };
  auto forget = [&](Ino ino) {
    drop_bpf(ino);
    std::lock_guard<std::mutex> lock(cache_mu_);
    upserted_.erase(ino.value());
    inline_cached_.erase(ino.value());
  };
  if (const auto* f = std::get_if<wire::ForgetReq>(&req.body)) {
    (void)f;
    forget(req.node);
    return;
  }
  if (const auto* b = std::get_if<wire::BatchForgetReq>(&req.body)) {
    for (const auto& one : b->forgets) forget(one.ino);
    return;
  }
  if (!ok) return;
  // The layout changed: drop what the kernel may have cached (§12.5 says the kernel drops the
  // same ranges itself; being explicit keeps a kernel without that logic correct) and replace
  // the BPF program before the reply releases the caller.
  // An inline-data file whose INLINE mapping is cached may have been converted to extents
  // (grown past the inline area): drop everything from 0 then.
  auto from = [&](Ino ino, uint64_t offset) { return InlineCached(ino) ? 0 : offset; };
  if (const auto* s = std::get_if<wire::SetattrReq>(&req.body)) {
    if ((s->in.valid & abi::FATTR_SIZE) == 0) return;
    std::lock_guard<std::mutex> inode_lock(InodeLock(req.node));
    Inval(req.node, from(req.node, s->in.size), abi::FUSE_IOMAP_INVAL_TO_EOF, sink);
    RefreshBpf(req.node);
  } else if (std::holds_alternative<wire::WriteReq>(req.body)) {
    // FUSE_WRITE: the kernel's write into an INLINE destination (§9), or classic I/O. The
    // kernel drops the written range itself; the file may have left the inline format.
    if (!InlineCached(req.node)) return;
    std::lock_guard<std::mutex> inode_lock(InodeLock(req.node));
    Inval(req.node, 0, abi::FUSE_IOMAP_INVAL_TO_EOF, sink);
    RefreshBpf(req.node);
  } else if (const auto* o = std::get_if<wire::OpenReq>(&req.body)) {
    // O_TRUNC with FUSE_ATOMIC_O_TRUNC: the OPEN handler truncated the file (§10).
    if ((o->flags & O_TRUNC) == 0 || (o->flags & O_ACCMODE) == O_RDONLY) return;
    std::lock_guard<std::mutex> inode_lock(InodeLock(req.node));
    Inval(req.node, 0, abi::FUSE_IOMAP_INVAL_TO_EOF, sink);
    RefreshBpf(req.node);
  } else if (const auto* fa = std::get_if<wire::FallocateReq>(&req.body)) {
    std::lock_guard<std::mutex> inode_lock(InodeLock(req.node));
    Inval(req.node, from(req.node, fa->offset), abi::FUSE_IOMAP_INVAL_TO_EOF, sink);
    RefreshBpf(req.node);
  } else if (const auto* c = std::get_if<wire::CopyFileRangeReq>(&req.body)) {
    std::lock_guard<std::mutex> inode_lock(InodeLock(c->node_out));
    Inval(c->node_out, from(c->node_out, c->off_out), abi::FUSE_IOMAP_INVAL_TO_EOF, sink);
    RefreshBpf(c->node_out);
  }
}

Result<void> IomapHandler::Freeze(uint64_t unlinked) {
  if (!enabled()) return Unexpected(ENOSYS);
  return fs_.Freeze(unlinked);
}

Result<void> IomapHandler::Unfreeze() {
  if (!enabled()) return Unexpected(ENOSYS);
  return fs_.Thaw();
}

void IomapHandler::Destroy(ReplySink& sink) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(bpf_mu_);
  if (bpf_ != nullptr) {
    if (KernelControl* control = sink.control()) (void)control->AttachBpf(-1);
    bpf_.reset();
  }
}

}  // namespace iomapfs::dispatch
