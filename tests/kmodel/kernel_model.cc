#include "tests/kmodel/kernel_model.h"

#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/fs.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "fsserver/session/socket_channel.h"

namespace iomapfs::kmodel {

namespace abi = iomapfs::abi;

namespace {

constexpr uint32_t kWriteOps = abi::FUSE_IOMAP_OP_WRITE | abi::FUSE_IOMAP_OP_ZERO |
                               abi::FUSE_IOMAP_OP_UNSHARE | abi::FUSE_IOMAP_OP_WRITEBACK;
constexpr size_t kMaxReply = 4u << 20;
constexpr uint32_t kPage = 4096;

std::string OpName(uint32_t op) {
  switch (op) {
    case abi::FUSE_LOOKUP:
      return "LOOKUP";
    case abi::FUSE_GETATTR:
      return "GETATTR";
    case abi::FUSE_SETATTR:
      return "SETATTR";
    case abi::FUSE_OPEN:
      return "OPEN";
    case abi::FUSE_READ:
      return "READ";
    case abi::FUSE_WRITE:
      return "WRITE";
    case abi::FUSE_COPY_FILE_RANGE_64:
      return "COPY_FILE_RANGE_64";
    case abi::FUSE_RELEASE:
      return "RELEASE";
    case abi::FUSE_FSYNC:
      return "FSYNC";
    case abi::FUSE_INIT:
      return "INIT";
    case abi::FUSE_DESTROY:
      return "DESTROY";
    case abi::FUSE_FALLOCATE:
      return "FALLOCATE";
    case abi::FUSE_IOMAP_CONFIG:
      return "IOMAP_CONFIG";
    case abi::FUSE_IOMAP_BEGIN:
      return "IOMAP_BEGIN";
    case abi::FUSE_IOMAP_END:
      return "IOMAP_END";
    case abi::FUSE_IOMAP_IOEND:
      return "IOMAP_IOEND";
    case abi::FUSE_CREATE:
      return "CREATE";
    case abi::FUSE_UNLINK:
      return "UNLINK";
    case abi::FUSE_FORGET:
      return "FORGET";
    case abi::FUSE_SYNCFS:
      return "SYNCFS";
    case abi::FUSE_FREEZE_FS:
      return "FREEZE_FS";
    case abi::FUSE_UNFREEZE_FS:
      return "UNFREEZE_FS";
    case abi::FUSE_SHUTDOWN_FS:
      return "SHUTDOWN_FS";
    default:
      return "OP" + std::to_string(op);
  }
}

BeginKind KindOf(uint32_t op) {
  if ((op & abi::FUSE_IOMAP_OP_REPORT) != 0) return BeginKind::kReport;
  if ((op & abi::FUSE_IOMAP_OP_WRITEBACK) != 0) return BeginKind::kWriteback;
  if ((op & abi::FUSE_IOMAP_OP_ZERO) != 0) return BeginKind::kZero;
  if ((op & abi::FUSE_IOMAP_OP_WRITE) != 0) {
    return (op & abi::FUSE_IOMAP_OP_DIRECT) != 0 ? BeginKind::kDirectWrite : BeginKind::kWrite;
  }
  return (op & abi::FUSE_IOMAP_OP_DIRECT) != 0 ? BeginKind::kDirectRead : BeginKind::kRead;
}

template <class T>
std::span<const std::byte> Bytes(const T& v) {
  return std::as_bytes(std::span<const T, 1>(&v, 1));
}

template <class T>
bool Parse(std::span<const std::byte> b, T* out, bool exact = true) {
  if (exact ? b.size() != sizeof(T) : b.size() > sizeof(T)) return false;
  *out = T{};
  std::memcpy(out, b.data(), b.size());
  return true;
}

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// The context of the server's BPF programs as run by BPF_PROG_TEST_RUN (the SYSCALL form of the
// iomap_begin hook: node id, pos, count, opflags, an expected sequence number, the reply).
struct BpfCtx {
  uint64_t nodeid;
  uint64_t pos;
  uint64_t count;
  uint32_t opflags;
  uint32_t reserved;
  uint64_t expect_seq;
  abi::fuse_iomap_begin_out out;
};
static_assert(sizeof(BpfCtx) == 104);
constexpr uint32_t kFibHandled = 1;

// BPF_PROG_TEST_RUN; SYSCALL programs copy the context back into ctx_in.
int RunBpf(int prog_fd, BpfCtx* ctx, uint32_t* retval) {
  union bpf_attr attr;
  std::memset(&attr, 0, sizeof(attr));
  attr.test.prog_fd = static_cast<uint32_t>(prog_fd);
  attr.test.ctx_in = reinterpret_cast<uint64_t>(ctx);
  attr.test.ctx_size_in = sizeof(*ctx);
  if (syscall(__NR_bpf, BPF_PROG_TEST_RUN, &attr, sizeof(attr)) != 0) return errno;
  *retval = attr.test.retval;
  return 0;
}

}  // namespace

const char* BeginKindName(BeginKind k) {
  static const char* const kNames[] = {"read", "direct_read", "write", "direct_write",
                                       "zero", "writeback",   "report"};
  return kNames[static_cast<int>(k)];
}

uint64_t ModelCounters::Upcalls(const std::string& op) const {
  auto it = upcalls.find(op);
  return it == upcalls.end() ? 0 : it->second;
}

uint64_t ModelCounters::BeginUpcalls() const { return Upcalls("IOMAP_BEGIN"); }

std::string ModelCounters::Format() const {
  std::string s = "upcalls:";
  for (const auto& [op, n] : upcalls) s += " " + op + "=" + std::to_string(n);
  s += "; begin by kind:";
  for (int k = 0; k < static_cast<int>(BeginKind::kCount); ++k) {
    if (begin_upcalls[k] != 0) {
      s += std::string(" ") + BeginKindName(static_cast<BeginKind>(k)) + "=" +
           std::to_string(begin_upcalls[k]);
    }
  }
  s += "; cache hits=" + std::to_string(cache_hits) + " misses=" + std::to_string(cache_misses) +
       "; bpf hits=" + std::to_string(bpf_hits) + " fallbacks=" + std::to_string(bpf_fallbacks) +
       "; retry_cache=" + std::to_string(retry_cache) + " upserts=" + std::to_string(upserts) +
       " rejected_upserts=" + std::to_string(upsert_rejects) + " invals=" + std::to_string(invals) +
       " rejected_replies=" + std::to_string(rejected_replies) +
       " inline_writes=" + std::to_string(inline_writes);
  return s;
}

struct KernelModel::Inode {
  uint64_t nodeid = 0;
  uint64_t ino = 0;  // fuse_attr.ino
  uint32_t mode = 0;
  uint32_t flags = 0;      // fuse_attr.flags latched at instantiation
  uint64_t size = 0;       // i_size
  uint64_t disk_size = 0;  // i_disk_size: what the server has on disk
  uint64_t nlookup = 0;
  bool has_cache = false;
  ModelInodeCache cache;
  std::map<uint64_t, std::vector<std::byte>> dirty;  // block index -> block contents
  bool swap_active = false;
};

KernelModel::KernelModel(UniqueFd requests, UniqueFd control, const ModelOptions& options)
    : requests_(std::move(requests)), control_(std::move(control)), options_(options) {
  cache_limit_ = options.cache_maxbytes;
}

KernelModel::~KernelModel() { (void)Unmount(); }

// ---------------------------------------------------------------------------------------------
// Transport.

Result<std::vector<std::byte>> KernelModel::Call(uint32_t opcode, uint64_t nodeid,
                                                 std::span<const std::byte> arg,
                                                 std::span<const std::byte> extra) {
  if (!requests_.valid()) return Unexpected(ENODEV);
  abi::fuse_in_header h{};
  h.len = static_cast<uint32_t>(sizeof(h) + arg.size() + extra.size());
  h.opcode = opcode;
  h.unique = next_unique_;
  next_unique_ += 2;
  h.nodeid = nodeid;
  h.pid = static_cast<uint32_t>(getpid());
  iovec iov[3] = {{&h, sizeof(h)},
                  {const_cast<std::byte*>(arg.data()), arg.size()},
                  {const_cast<std::byte*>(extra.data()), extra.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 3;
  if (::sendmsg(requests_.get(), &msg, MSG_NOSIGNAL) < 0) return Unexpected(ENODEV);
  counters_.upcalls[OpName(opcode)]++;
  if (opcode == abi::FUSE_IOMAP_BEGIN) {
    abi::fuse_iomap_begin_in in;
    std::memcpy(&in, arg.data(), sizeof(in));
    counters_.begin_upcalls[static_cast<int>(KindOf(in.opflags))]++;
  }
  std::vector<std::byte> buf(kMaxReply);
  for (;;) {
    pollfd fds[2] = {{requests_.get(), POLLIN, 0}, {control_.get(), POLLIN, 0}};
    if (::poll(fds, 2, 30000) <= 0) return Unexpected(ETIMEDOUT);
    if ((fds[1].revents & POLLIN) != 0) {
      ServeControl();
      continue;
    }
    if ((fds[0].revents & (POLLIN | POLLHUP)) == 0) continue;
    ssize_t n = ::recv(requests_.get(), buf.data(), buf.size(), 0);
    if (n <= 0) return Unexpected(ENODEV);
    abi::fuse_out_header oh;
    if (static_cast<size_t>(n) < sizeof(oh)) return Unexpected(EPROTO);
    std::memcpy(&oh, buf.data(), sizeof(oh));
    if (oh.unique != h.unique || oh.len != static_cast<uint32_t>(n)) return Unexpected(EPROTO);
    if (oh.error != 0) return Unexpected(-oh.error);
    return std::vector<std::byte>(buf.begin() + sizeof(oh), buf.begin() + n);
  }
}

Result<void> KernelModel::SendOnly(uint32_t opcode, uint64_t nodeid,
                                   std::span<const std::byte> arg) {
  if (!requests_.valid()) return Unexpected(ENODEV);
  abi::fuse_in_header h{};
  h.len = static_cast<uint32_t>(sizeof(h) + arg.size());
  h.opcode = opcode;
  h.unique = next_unique_;
  next_unique_ += 2;
  h.nodeid = nodeid;
  h.pid = static_cast<uint32_t>(getpid());
  iovec iov[2] = {{&h, sizeof(h)}, {const_cast<std::byte*>(arg.data()), arg.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  if (::sendmsg(requests_.get(), &msg, MSG_NOSIGNAL) < 0) return Unexpected(ENODEV);
  counters_.upcalls[OpName(opcode)]++;
  return {};
}

void KernelModel::ServeControl() {
  std::vector<std::byte> buf(1 << 16);
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof(cbuf);
  ssize_t n = ::recvmsg(control_.get(), &msg, MSG_CMSG_CLOEXEC);
  if (n <= 0) return;
  UniqueFd fd;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int raw;
      std::memcpy(&raw, CMSG_DATA(c), sizeof(raw));
      fd.Reset(raw);
    }
  }
  session::ControlResult r{-EINVAL};
  session::ControlHeader h;
  if (static_cast<size_t>(n) >= sizeof(h)) {
    std::memcpy(&h, buf.data(), sizeof(h));
    if (sizeof(h) + h.len == static_cast<size_t>(n)) {
      r.result = HandleControl(h.kind, std::span(buf.data() + sizeof(h), h.len), std::move(fd));
    }
  }
  (void)::send(control_.get(), &r, sizeof(r), MSG_NOSIGNAL);
}

int64_t KernelModel::HandleControl(uint32_t kind, std::span<const std::byte> payload, UniqueFd fd) {
  switch (kind) {
    case session::kControlNotify:
      return HandleNotify(payload);
    case session::kControlBackingOpen: {
      // §11.1: only once iomap is on; type IOMAP, no other bits, zero padding; a block device.
      if (!iomap_) return -EPERM;
      abi::fuse_backing_map map;
      if (!Parse(payload, &map)) return -EINVAL;
      if ((map.flags & abi::FUSE_BACKING_TYPE_MASK) != abi::FUSE_BACKING_TYPE_IOMAP ||
          (map.flags & ~abi::FUSE_BACKING_TYPE_MASK) != 0 || map.padding != 0) {
        return -EINVAL;
      }
      if (!fd.valid()) return -EBADF;
      struct stat st {};
      if (::fstat(fd.get(), &st) != 0) return -EBADF;
      Backing b;
      if (S_ISBLK(st.st_mode)) {
        if (::ioctl(fd.get(), BLKGETSIZE64, &b.size) != 0) return -EIO;
      } else if (S_ISREG(st.st_mode) && !options_.require_block_device) {
        b.size = static_cast<uint64_t>(st.st_size);  // the model's stand-in for a bdev
      } else {
        return -ENODEV;
      }
      b.fd = std::move(fd);
      if (backing_.size() >= 1024) return -ENOSPC;
      while (backing_.count(next_backing_) != 0 || next_backing_ == 0) {
        next_backing_ = next_backing_ % 1024 + 1;
      }
      uint32_t id = next_backing_;
      backing_.emplace(id, std::move(b));
      next_backing_ = next_backing_ % 1024 + 1;
      return id;
    }
    case session::kControlBackingClose:
      return -EBUSY;  // v7: iomap devices live until unmount
    case session::kControlSetBlocksize: {
      // §11.2: iomap mode (EOPNOTSUPP), a registered id (ENOENT), a valid block size.
      if (!iomap_) return -EOPNOTSUPP;
      abi::fuse_iomap_backing_info info;
      if (!Parse(payload, &info)) return -EINVAL;
      auto it = backing_.find(info.backing_id);
      if (it == backing_.end()) return -ENOENT;
      uint32_t bs = info.blocksize;
      if (bs < 512 || bs > 65536 || (bs & (bs - 1)) != 0) return -EINVAL;
      it->second.block_size = bs;
      counters_.set_blocksize++;
      return 0;
    }
    case session::kControlIomapSupport:
      // §1.2: allowed for this "fd" exactly when the model offers iomap.
      if (!options_.offer_iomap) return 0;
      return static_cast<int64_t>(abi::FUSE_IOMAP_SUPPORT_FILEIO |
                                  (options_.offer_atomic ? abi::FUSE_IOMAP_SUPPORT_ATOMIC : 0));
    case session::kControlSetNofs: {
      // §11.3: 1 sets, 0 clears; anything else is EINVAL. The model has no reclaim to avoid.
      uint32_t v;
      if (!Parse(payload, &v)) return -EINVAL;
      if (v > 1) return -EINVAL;
      if (!iomap_) return -EPERM;
      if (v == 1) counters_.set_nofs++;
      return 0;
    }
    case session::kControlBpfAttach:
      if (!iomap_) return -EOPNOTSUPP;
      bpf_prog_ = std::move(fd);  // none: detach
      return 0;
    default:
      return -ENOTTY;
  }
}

int64_t KernelModel::HandleNotify(std::span<const std::byte> msg) {
  abi::fuse_out_header oh;
  if (msg.size() < sizeof(oh)) return -EINVAL;
  std::memcpy(&oh, msg.data(), sizeof(oh));
  if (oh.unique != 0 || oh.len != msg.size()) return -EINVAL;
  std::span<const std::byte> body = msg.subspan(sizeof(oh));
  auto identify = [&](uint64_t nodeid, uint64_t attr_ino, Inode** out) -> int64_t {
    if (!iomap_) return -EINVAL;
    Inode* in = Find(nodeid);
    if (in == nullptr) return -ESTALE;
    if (in->ino != attr_ino) return -EINVAL;
    if (!IomapInode(*in)) return -EINVAL;
    *out = in;
    return 0;
  };
  switch (oh.error) {
    case abi::FUSE_NOTIFY_IOMAP_UPSERT_MAPPINGS: {
      abi::fuse_iomap_upsert_mappings_out u;
      if (!Parse(body, &u)) return -EINVAL;
      Inode* in = nullptr;
      if (int64_t e = identify(u.nodeid, u.attr_ino, &in)) return e;
      ValidationContext c = Vctx();
      for (const abi::fuse_iomap_io* slot : {&u.read, &u.write}) {
        std::string why;
        if (int e = ValidateUpsertSlot(c, *slot, &why)) {
          counters_.upsert_rejects++;
          rejections_.push_back("UPSERT: " + why);
          return -e;
        }
      }
      counters_.upserts++;
      // A disabled cache declines, as a device of size 0 would ("declined to cache", §12.3).
      if (!options_.cache) return -EINVAL;
      const uint64_t discards = in->cache.read.discards() + in->cache.write.discards();
      if (u.read.type != abi::FUSE_IOMAP_TYPE_NOCACHE) in->cache.read.Upsert(u.read, cache_limit_);
      if (u.write.type == abi::FUSE_IOMAP_TYPE_PURE_OVERWRITE && !in->cache.write_fork_exists) {
        // no-op: a nonexistent write fork already means "pure overwrite" (§12.1)
      } else if (u.write.type != abi::FUSE_IOMAP_TYPE_NOCACHE) {
        in->cache.write_fork_exists = true;
        in->cache.write.Upsert(u.write, cache_limit_);
      }
      in->has_cache = true;
      in->cache.seq++;
      counters_.fork_discards += in->cache.read.discards() + in->cache.write.discards() - discards;
      counters_.max_fork_records = std::max<uint64_t>(
          {counters_.max_fork_records, in->cache.read.records(), in->cache.write.records()});
      return 0;
    }
    case abi::FUSE_NOTIFY_IOMAP_INVAL_MAPPINGS: {
      abi::fuse_iomap_inval_mappings_out v;
      if (!Parse(body, &v)) return -EINVAL;
      Inode* in = nullptr;
      if (int64_t e = identify(v.nodeid, v.attr_ino, &in)) return e;
      for (const abi::fuse_range* r : {&v.read, &v.write}) {
        if (r->length == 0) continue;
        bool bad = r->offset >= max_bytes_ || r->offset % block_size_ != 0 ||
                   (r->length != abi::FUSE_IOMAP_INVAL_TO_EOF &&
                    (r->length % block_size_ != 0 || r->offset + r->length < r->offset));
        if (bad) {
          rejections_.push_back("INVAL: bad range");
          return -EUCLEAN;
        }
      }
      counters_.invals++;
      if (!in->has_cache) return 0;
      if (v.read.length != 0) in->cache.read.Remove(v.read.offset, v.read.length);
      if (v.write.length != 0) in->cache.write.Remove(v.write.offset, v.write.length);
      in->cache.seq++;
      return 0;
    }
    case abi::FUSE_NOTIFY_IOMAP_DEV_INVAL: {
      abi::fuse_iomap_dev_inval_out d;
      if (!Parse(body, &d)) return -EINVAL;
      if (!iomap_ || d.dev == 0) return -EINVAL;
      auto it = backing_.find(d.dev);
      if (it == backing_.end()) return -ENODEV;
      // §11.5: the offset must be on the device and the range must not overflow.
      if (d.range.offset > it->second.size || d.range.offset + d.range.length < d.range.offset) {
        rejections_.push_back("DEV_INVAL: bad range");
        return -EINVAL;
      }
      counters_.dev_invals++;
      dev_invals_.push_back(d);  // the model keeps no block-device page cache to drop
      return 0;
    }
    default:
      return 0;  // mainline notifications: nothing the model caches
  }
}

// ---------------------------------------------------------------------------------------------
// Connection.

Result<void> KernelModel::Mount() {
  abi::fuse_init_in in{};
  in.major = 7;
  in.minor = options_.offer_iomap ? abi::FUSE_IOMAP_KERNEL_MINOR_VERSION : 45;
  in.max_readahead = 128 << 10;
  uint64_t flags = abi::FUSE_ASYNC_READ | abi::FUSE_BIG_WRITES | abi::FUSE_MAX_PAGES |
                   abi::FUSE_INIT_EXT |
                   abi::FUSE_ATOMIC_O_TRUNC;  // Open() models O_TRUNC inside OPEN (§10)
  if (options_.offer_iomap) flags |= abi::FUSE_IOMAP;
  in.flags = static_cast<uint32_t>(flags);
  in.flags2 = static_cast<uint32_t>(flags >> 32);
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> r, Call(abi::FUSE_INIT, 0, Bytes(in)));
  abi::fuse_init_out out;
  if (!Parse(r, &out, /*exact=*/false) || out.major != 7) return Unexpected(EPROTO);
  minor_ = out.minor;
  uint64_t acked =
      out.flags | ((out.flags & abi::FUSE_INIT_EXT) != 0 ? uint64_t{out.flags2} << 32 : 0);
  mounted_ = true;
  if (!options_.offer_iomap || (acked & abi::FUSE_IOMAP) == 0) return {};
  iomap_ = true;

  // §1.3, §7: CONFIG, before the connection counts as initialised.
  abi::fuse_iomap_config_in cin{};
  cin.flags = 0x7F;
  cin.maxbytes = INT64_MAX;  // MAX_LFS_FILESIZE
  cin.cache_maxbytes = options_.cache_maxbytes;
  Result<std::vector<std::byte>> cr = Call(abi::FUSE_IOMAP_CONFIG, 0, Bytes(cin));
  if (!cr) {
    if (cr.error() == ENOSYS) return {};  // defaults
    return Unexpected(cr.error());
  }
  abi::fuse_iomap_config_out c;
  if (!Parse(*cr, &c, /*exact=*/false)) return Unexpected(EINVAL);
  if ((c.flags & ~uint64_t{0x7F}) != 0 || c.s_uuid_len > 16 || c.s_pad[0] != 0 || c.s_pad[1] != 0 ||
      c.s_pad[2] != 0) {
    return Unexpected(EINVAL);
  }
  if ((c.flags & abi::FUSE_IOMAP_CONFIG_TIME) != 0 &&
      (c.s_time_gran < 1 || c.s_time_gran > 1000000000)) {
    return Unexpected(EINVAL);
  }
  if ((c.flags & abi::FUSE_IOMAP_CONFIG_MAXBYTES) != 0) {
    if (c.s_maxbytes < 0) return Unexpected(EINVAL);
    max_bytes_ = static_cast<uint64_t>(c.s_maxbytes);
  }
  if ((c.flags & abi::FUSE_IOMAP_CONFIG_BLOCKSIZE) != 0) {
    uint32_t bs = c.s_blocksize;
    if (bs < 512 || bs > 65536 || (bs & (bs - 1)) != 0) return Unexpected(EINVAL);
    block_size_ = bs;
  }
  if ((c.flags & abi::FUSE_IOMAP_CONFIG_CACHE_MAXBYTES) != 0 && c.cache_maxbytes != 0) {
    cache_limit_ = std::clamp<uint32_t>(c.cache_maxbytes, 256, 2u << 20);
  }
  return {};
}

Result<void> KernelModel::Unmount() {
  if (!requests_.valid()) return {};
  Result<void> result;
  if (mounted_) {
    for (auto& [id, in] : inodes_) {
      if (Result<void> w = Writeback(id); !w && result) result = w;
    }
    // §8: DESTROY, synchronously.
    Result<std::vector<std::byte>> d = Call(abi::FUSE_DESTROY, 0, {});
    if (!d && result) result = Unexpected(d.error());
    mounted_ = false;
  }
  ::shutdown(requests_.get(), SHUT_RDWR);
  requests_.Reset();
  return result;
}

KernelModel::Inode* KernelModel::Find(uint64_t nodeid) {
  auto it = inodes_.find(nodeid);
  return it == inodes_.end() ? nullptr : it->second.get();
}

KernelModel::Inode& KernelModel::Instantiate(const abi::fuse_entry_out& e) {
  auto& slot = inodes_[e.nodeid];
  if (slot == nullptr) {
    slot = std::make_unique<Inode>();
    slot->nodeid = e.nodeid;
    slot->ino = e.attr.ino;
    slot->mode = e.attr.mode;
    slot->flags = e.attr.flags;  // latched (§1.5)
    slot->size = e.attr.size;
    slot->disk_size = e.attr.size;
  } else if (!IomapInode(*slot)) {
    slot->size = slot->disk_size = e.attr.size;
  }
  slot->nlookup++;
  return *slot;
}

bool KernelModel::IomapInode(const Inode& in) const {
  // §1.5: IOMAP needs EXCLUSIVE, which needs minor >= 99; only regular files switch.
  const uint32_t want = abi::FUSE_ATTR_EXCLUSIVE | abi::FUSE_ATTR_IOMAP;
  return iomap_ && minor_ >= abi::FUSE_IOMAP_KERNEL_MINOR_VERSION && (in.flags & want) == want &&
         S_ISREG(in.mode);
}

ValidationContext KernelModel::Vctx() const {
  ValidationContext c;
  c.block_size = block_size_;
  c.max_bytes = max_bytes_;
  c.self = this;
  c.dev_known = [](const void* self, uint32_t dev, uint64_t* size) {
    const auto* m = static_cast<const KernelModel*>(self);
    auto it = m->backing_.find(dev);
    if (it == m->backing_.end()) return false;
    *size = it->second.size;
    return true;
  };
  return c;
}

Result<uint64_t> KernelModel::Lookup(uint64_t parent, const std::string& name) {
  std::vector<std::byte> arg(name.size() + 1);
  std::memcpy(arg.data(), name.data(), name.size());
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> r, Call(abi::FUSE_LOOKUP, parent, arg));
  abi::fuse_entry_out e;
  if (!Parse(r, &e)) return Unexpected(EPROTO);
  if (e.nodeid == 0) return Unexpected(ENOENT);  // negative entry
  return Instantiate(e).nodeid;
}

Result<uint64_t> KernelModel::LookupPath(const std::string& path) {
  uint64_t node = abi::FUSE_ROOT_ID;
  size_t start = 0;
  while (start < path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    if (slash > start) {
      IOMAPFS_ASSIGN_OR_RETURN(node, Lookup(node, path.substr(start, slash - start)));
    }
    start = slash + 1;
  }
  return node;
}

Result<abi::fuse_attr> KernelModel::GetAttr(uint64_t nodeid) {
  abi::fuse_getattr_in in{};
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> r, Call(abi::FUSE_GETATTR, nodeid, Bytes(in)));
  abi::fuse_attr_out out;
  if (!Parse(r, &out)) return Unexpected(EPROTO);
  return out.attr;
}

uint32_t KernelModel::LatchedFlags(uint64_t nodeid) const {
  auto it = inodes_.find(nodeid);
  return it == inodes_.end() ? 0 : it->second->flags;
}

uint64_t KernelModel::Size(uint64_t nodeid) const {
  auto it = inodes_.find(nodeid);
  return it == inodes_.end() ? 0 : it->second->size;
}

Result<uint64_t> KernelModel::Open(uint64_t nodeid, uint32_t flags) {
  abi::fuse_open_in in{};
  in.flags = flags;
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> r, Call(abi::FUSE_OPEN, nodeid, Bytes(in)));
  abi::fuse_open_out out;
  if (!Parse(r, &out)) return Unexpected(EPROTO);
  Inode* ip = Find(nodeid);
  if (ip != nullptr && (flags & O_TRUNC) != 0 && (flags & O_ACCMODE) != O_RDONLY) {
    // §10, §12.5: O_TRUNC with atomic_o_trunc: size 0, page cache and every mapping dropped.
    ip->size = ip->disk_size = 0;
    ip->dirty.clear();
    ip->cache.read.Remove(0, abi::FUSE_IOMAP_INVAL_TO_EOF);
    ip->cache.write.Remove(0, abi::FUSE_IOMAP_INVAL_TO_EOF);
    ip->cache.seq++;
  }
  // §1.6: these open flags make an iomap open fail.
  if (ip != nullptr && IomapInode(*ip) &&
      (out.open_flags & (abi::FOPEN_PASSTHROUGH | abi::FOPEN_STREAM | abi::FOPEN_NONSEEKABLE))) {
    return Unexpected(EINVAL);
  }
  return out.fh;
}

Result<void> KernelModel::Release(uint64_t nodeid, uint64_t fh) {
  IOMAPFS_TRY(Writeback(nodeid));
  abi::fuse_release_in in{};
  in.fh = fh;
  IOMAPFS_TRY(Call(abi::FUSE_RELEASE, nodeid, Bytes(in)));
  return {};
}

Result<std::pair<uint64_t, uint64_t>> KernelModel::Create(uint64_t parent, const std::string& name,
                                                          uint32_t mode) {
  abi::fuse_create_in in{};
  in.flags = O_RDWR | O_CREAT;
  in.mode = mode;
  std::vector<std::byte> arg(sizeof(in) + name.size() + 1);
  std::memcpy(arg.data(), &in, sizeof(in));
  std::memcpy(arg.data() + sizeof(in), name.data(), name.size());
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> r, Call(abi::FUSE_CREATE, parent, arg));
  abi::fuse_entry_out e;
  abi::fuse_open_out o;
  if (r.size() != sizeof(e) + sizeof(o)) return Unexpected(EPROTO);
  std::memcpy(&e, r.data(), sizeof(e));
  std::memcpy(&o, r.data() + sizeof(e), sizeof(o));
  if (e.nodeid == 0) return Unexpected(EPROTO);
  return std::make_pair(Instantiate(e).nodeid, o.fh);
}

Result<std::vector<std::byte>> KernelModel::RawRequest(uint32_t opcode, uint64_t nodeid,
                                                       std::span<const std::byte> arg) {
  return Call(opcode, nodeid, arg);
}

Result<void> KernelModel::Unlink(uint64_t parent, const std::string& name) {
  std::vector<std::byte> arg(name.size() + 1);
  std::memcpy(arg.data(), name.data(), name.size());
  IOMAPFS_TRY(Call(abi::FUSE_UNLINK, parent, arg));
  return {};
}

Result<void> KernelModel::Evict(uint64_t nodeid) {
  auto it = inodes_.find(nodeid);
  if (it == inodes_.end()) return Unexpected(EBADF);
  abi::fuse_forget_in f{};
  f.nlookup = it->second->nlookup;
  inodes_.erase(it);  // page cache and mapping cache go with the inode (§12.1)
  return SendOnly(abi::FUSE_FORGET, nodeid, Bytes(f));
}

Result<void> KernelModel::Syncfs() {
  for (auto& [id, in] : inodes_) IOMAPFS_TRY(Writeback(id));
  abi::fuse_syncfs_in in{};
  IOMAPFS_TRY(Call(abi::FUSE_SYNCFS, abi::FUSE_ROOT_ID, Bytes(in)));
  return {};
}

Result<void> KernelModel::Freeze(uint64_t unlinked) {
  if (!iomap_) return Unexpected(EOPNOTSUPP);  // FREEZE_FS is sent only in iomap mode (§8)
  for (auto& [id, in] : inodes_) IOMAPFS_TRY(Writeback(id));  // the first stage: sync data
  abi::fuse_freezefs_in in{};
  in.unlinked = unlinked;
  Result<std::vector<std::byte>> r = Call(abi::FUSE_FREEZE_FS, abi::FUSE_ROOT_ID, Bytes(in));
  if (!r) return Unexpected(r.error() == ENOSYS ? EOPNOTSUPP : r.error());
  frozen_ = true;
  return {};
}

Result<void> KernelModel::Unfreeze() {
  if (!iomap_) return Unexpected(EOPNOTSUPP);
  Result<std::vector<std::byte>> r = Call(abi::FUSE_UNFREEZE_FS, abi::FUSE_ROOT_ID, {});
  if (!r && r.error() != ENOSYS) return Unexpected(r.error());
  frozen_ = false;
  return {};
}

Result<void> KernelModel::Shutdown() {
  if (!iomap_) return Unexpected(EOPNOTSUPP);
  abi::fuse_shutdownfs_in in{};
  (void)Call(abi::FUSE_SHUTDOWN_FS, abi::FUSE_ROOT_ID, Bytes(in));  // the reply is ignored (§8)
  return {};
}

Result<abi::fuse_iomap_io> KernelModel::BeginOp(uint64_t nodeid, uint64_t pos, uint64_t count,
                                                uint32_t opflags) {
  Inode* ip = Find(nodeid);
  if (ip == nullptr) return Unexpected(EBADF);
  return Begin(*ip, pos, count, opflags);
}

std::vector<abi::fuse_iomap_io> KernelModel::CachedReadMappings(uint64_t nodeid) {
  std::vector<abi::fuse_iomap_io> out;
  Inode* ip = Find(nodeid);
  if (ip == nullptr || !ip->has_cache) return out;
  for (uint64_t pos = 0;;) {
    // Walk the fork by probing record starts: Find(pos) or the next record.
    std::optional<abi::fuse_iomap_io> r = ip->cache.read.Find(pos);
    if (!r) r = ip->cache.read.Next(pos);
    if (!r) return out;
    out.push_back(*r);
    pos = r->offset + r->length;
  }
}

uint32_t KernelModel::device_block_size(uint32_t id) const {
  auto it = backing_.find(id);
  return it == backing_.end() ? 0 : it->second.block_size;
}

void KernelModel::DropCaches() {
  for (auto& [id, in] : inodes_) {
    in->cache = ModelInodeCache{};
    in->has_cache = false;
  }
}

// ---------------------------------------------------------------------------------------------
// iomap_begin.

std::optional<abi::fuse_iomap_io> KernelModel::CacheLookup(Inode& in, uint64_t pos, uint32_t op) {
  if (!in.has_cache) return std::nullopt;
  std::optional<abi::fuse_iomap_io> r = in.cache.read.Find(pos);
  if ((op & kWriteOps) == 0) return r;
  // §12.2 write ops.
  if (in.cache.write_fork_exists) {
    std::optional<abi::fuse_iomap_io> w = in.cache.write.Find(pos);
    if (!w) return std::nullopt;
    if (w->type != abi::FUSE_IOMAP_TYPE_PURE_OVERWRITE) return r ? w : std::nullopt;
  }
  if (!r) return std::nullopt;
  if (r->type == abi::FUSE_IOMAP_TYPE_HOLE &&
      (op & (abi::FUSE_IOMAP_OP_ZERO | abi::FUSE_IOMAP_OP_UNSHARE)) == 0) {
    return std::nullopt;
  }
  if (r->type == abi::FUSE_IOMAP_TYPE_DELALLOC &&
      (op & (abi::FUSE_IOMAP_OP_DIRECT | abi::FUSE_IOMAP_OP_WRITEBACK)) != 0) {
    return std::nullopt;
  }
  return r;
}

Result<abi::fuse_iomap_io> KernelModel::Begin(Inode& in, uint64_t pos, uint64_t count, uint32_t op,
                                              abi::fuse_iomap_io* src) {
  const bool bypass = (op & (abi::FUSE_IOMAP_OP_ATOMIC | abi::FUSE_IOMAP_OP_SWAPFILE)) != 0;
  const bool write_op = (op & kWriteOps) != 0;
  auto effective = [&](const abi::fuse_iomap_begin_out& out) {
    if (src != nullptr) *src = out.read;
    return write_op && out.write.type != abi::FUSE_IOMAP_TYPE_PURE_OVERWRITE ? out.write : out.read;
  };
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (options_.cache && !bypass) {
      if (std::optional<abi::fuse_iomap_io> hit = CacheLookup(in, pos, op)) {
        counters_.cache_hits++;
        if (src != nullptr) *src = in.cache.read.Find(pos).value_or(*hit);
        return *hit;
      }
      counters_.cache_misses++;
    }
    if (options_.bpf && bpf_prog_.valid()) {
      BpfCtx ctx{};
      ctx.nodeid = in.nodeid;
      ctx.pos = pos;
      ctx.count = count;
      ctx.opflags = op;
      uint32_t ret = 0;
      if (RunBpf(bpf_prog_.get(), &ctx, &ret) == 0 && ret == kFibHandled) {
        std::string why;
        // §13.2: the BPF answer is validated exactly like a server reply.
        if (int e = ValidateBeginReply(Vctx(), ctx.out, pos, op, in.has_cache, &why)) {
          counters_.rejected_replies++;
          rejections_.push_back("BPF: " + why);
          return Unexpected(e);
        }
        if (ctx.out.read.type != abi::FUSE_IOMAP_TYPE_RETRY_CACHE) {
          counters_.bpf_hits++;
          return effective(ctx.out);
        }
        continue;
      }
      counters_.bpf_fallbacks++;
    }
    abi::fuse_iomap_begin_in bin{};
    bin.opflags = op;
    bin.attr_ino = in.ino;
    bin.pos = pos;
    bin.count = count;
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> r,
                             Call(abi::FUSE_IOMAP_BEGIN, in.nodeid, Bytes(bin)));
    abi::fuse_iomap_begin_out out;
    if (!Parse(r, &out)) return Unexpected(EIO);  // exact size required (§4.2)
    std::string why;
    if (int e = ValidateBeginReply(Vctx(), out, pos, op, in.has_cache, &why)) {
      counters_.rejected_replies++;
      rejections_.push_back("BEGIN reply: " + why);
      return Unexpected(e);
    }
    if (out.read.type == abi::FUSE_IOMAP_TYPE_RETRY_CACHE ||
        out.write.type == abi::FUSE_IOMAP_TYPE_RETRY_CACHE) {
      counters_.retry_cache++;
      continue;  // §12.6: look in the cache again
    }
    return effective(out);
  }
  return Unexpected(EINTR);
}

// ---------------------------------------------------------------------------------------------
// Data movement.

Result<void> KernelModel::DeviceRead(const abi::fuse_iomap_io& m, uint64_t pos,
                                     std::span<std::byte> out) {
  auto it = backing_.find(m.dev);
  if (it == backing_.end()) return Unexpected(EIO);
  uint64_t addr = m.addr + (pos - m.offset);
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(it->second.fd.get(), out.data() + done, out.size() - done,
                        static_cast<off_t>(addr + done));
    if (n <= 0) return Unexpected(n < 0 ? errno : EIO);
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<void> KernelModel::DeviceWrite(const abi::fuse_iomap_io& m, uint64_t pos,
                                      std::span<const std::byte> in) {
  auto it = backing_.find(m.dev);
  if (it == backing_.end()) return Unexpected(EIO);
  uint64_t addr = m.addr + (pos - m.offset);
  if (addr + in.size() > it->second.size) return Unexpected(EIO);
  size_t done = 0;
  while (done < in.size()) {
    ssize_t n = ::pwrite(it->second.fd.get(), in.data() + done, in.size() - done,
                         static_cast<off_t>(addr + done));
    if (n <= 0) return Unexpected(n < 0 ? errno : EIO);
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<void> KernelModel::ReadStorage(Inode& in, uint64_t pos, std::span<std::byte> out,
                                      uint32_t op) {
  const uint64_t end = pos + out.size();
  for (uint64_t p = pos; p < end;) {
    IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_io m, Begin(in, p, end - p, op));
    const uint64_t stop = std::min(end, m.offset + m.length);
    std::span<std::byte> dst = out.subspan(p - pos, stop - p);
    switch (m.type) {
      case abi::FUSE_IOMAP_TYPE_MAPPED:
        IOMAPFS_TRY(DeviceRead(m, p, dst));
        break;
      case abi::FUSE_IOMAP_TYPE_HOLE:
      case abi::FUSE_IOMAP_TYPE_UNWRITTEN:
      case abi::FUSE_IOMAP_TYPE_DELALLOC:
        std::memset(dst.data(), 0, dst.size());
        break;
      case abi::FUSE_IOMAP_TYPE_INLINE: {
        IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> data, InlineRead(in, m));
        std::memcpy(dst.data(), data.data() + (p - m.offset), dst.size());
        break;
      }
      default:
        return Unexpected(EIO);
    }
    p = stop;
  }
  return {};
}

Result<std::vector<std::byte>> KernelModel::Read(uint64_t nodeid, uint64_t offset, uint64_t length,
                                                 bool direct) {
  Inode* ip = Find(nodeid);
  if (ip == nullptr) return Unexpected(EBADF);
  Inode& in = *ip;
  if (offset >= in.size) return std::vector<std::byte>();
  length = std::min(length, in.size - offset);
  std::vector<std::byte> out(length);
  if (!IomapInode(in)) {
    // Classic mode: FUSE_READ upcalls.
    for (uint64_t done = 0; done < length;) {
      abi::fuse_read_in rin{};
      rin.offset = offset + done;
      rin.size = static_cast<uint32_t>(std::min<uint64_t>(length - done, 128 << 10));
      IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> d, Call(abi::FUSE_READ, nodeid, Bytes(rin)));
      if (d.empty()) break;
      std::memcpy(out.data() + done, d.data(), std::min<uint64_t>(d.size(), length - done));
      done += d.size();
    }
    return out;
  }
  const uint64_t bs = block_size_;
  if (direct) {
    if (offset % bs != 0) return Unexpected(EINVAL);
    IOMAPFS_TRY(WritebackRange(in, offset / bs, RoundUp(offset + length, bs) / bs));
    std::vector<std::byte> buf(RoundUp(length, bs));
    IOMAPFS_TRY(ReadStorage(in, offset, buf, abi::FUSE_IOMAP_OP_DIRECT));
    std::memcpy(out.data(), buf.data(), length);
    return out;
  }
  // Buffered: dirty pages from the page cache, runs of the rest from storage.
  const uint64_t first = offset / bs, last = (offset + length - 1) / bs;
  std::vector<std::byte> run;
  for (uint64_t b = first; b <= last;) {
    auto d = in.dirty.find(b);
    uint64_t blk_start = b * bs;
    if (d != in.dirty.end()) {
      uint64_t from = std::max(offset, blk_start), to = std::min(offset + length, blk_start + bs);
      std::memcpy(out.data() + (from - offset), d->second.data() + (from - blk_start), to - from);
      ++b;
      continue;
    }
    uint64_t e = b;
    while (e <= last && in.dirty.count(e) == 0) ++e;
    uint64_t from = std::max(offset, blk_start), to = std::min(offset + length, e * bs);
    IOMAPFS_TRY(ReadStorage(in, from, std::span(out.data() + (from - offset), to - from), 0));
    b = e;
  }
  return out;
}

Result<std::vector<std::byte>*> KernelModel::DirtyBlock(Inode& in, uint64_t blk,
                                                        const abi::fuse_iomap_io& src) {
  auto it = in.dirty.find(blk);
  if (it != in.dirty.end()) return &it->second;
  std::vector<std::byte> buf(block_size_);
  const uint64_t pos = blk * block_size_;
  const bool covers = src.offset <= pos && pos - src.offset < src.length;
  // Read-modify-write source: written storage is read; new, unwritten, hole and delalloc blocks
  // start as zeros (page-granular zeroing, §3.3 F_NEW).
  if (covers && src.type == abi::FUSE_IOMAP_TYPE_MAPPED &&
      (src.flags & abi::FUSE_IOMAP_F_NEW) == 0) {
    IOMAPFS_TRY(DeviceRead(src, pos, buf));
  } else if (covers && src.type == abi::FUSE_IOMAP_TYPE_INLINE) {
    // An out-of-place write whose source is INLINE: read-before-write with FUSE_READ (§9).
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> data, InlineRead(in, src));
    std::memcpy(buf.data(), data.data() + (pos - src.offset),
                std::min<uint64_t>(buf.size(), src.offset + src.length - pos));
  }
  return &in.dirty.emplace(blk, std::move(buf)).first->second;
}

Result<void> KernelModel::ZeroRange(Inode& in, uint64_t from, uint64_t to) {
  const uint64_t bs = block_size_;
  for (uint64_t p = from; p < to;) {
    uint64_t blk = p / bs;
    uint64_t stop = std::min(to, (blk + 1) * bs);
    auto d = in.dirty.find(blk);
    if (d == in.dirty.end()) {
      abi::fuse_iomap_io src;
      IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_io m,
                               Begin(in, p, to - p, abi::FUSE_IOMAP_OP_ZERO, &src));
      // Zeroing skips holes and unwritten extents: they read as zeros already.
      if (m.type == abi::FUSE_IOMAP_TYPE_HOLE || m.type == abi::FUSE_IOMAP_TYPE_UNWRITTEN) {
        p = std::min(to, m.offset + m.length);
        continue;
      }
      if (m.type == abi::FUSE_IOMAP_TYPE_INLINE) {
        // iomap zeroes through the buffered write path (write_begin/write_end), so zeroing an
        // INLINE destination is "a write into an INLINE destination" (§9): read-before-write,
        // then FUSE_WRITE of the zeros. UNCERTAIN: §9 does not name zeroing; the model never
        // zeroes inline bytes past i_size this way (a FUSE_WRITE there would extend the file).
        const uint64_t zstop = std::min({stop, m.offset + m.length, std::max(in.size, p)});
        if (zstop > p) {
          IOMAPFS_TRY(InlineRead(in, src));
          std::vector<std::byte> zeros(zstop - p);
          IOMAPFS_TRY(InlineWrite(in, m, p, zeros));
        }
        p = stop;
        continue;
      }
      IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> * page, DirtyBlock(in, blk, src));
      std::memset(page->data() + (p - blk * bs), 0, stop - p);
    } else {
      std::memset(d->second.data() + (p - blk * bs), 0, stop - p);
    }
    p = stop;
  }
  return {};
}

Result<void> KernelModel::Write(uint64_t nodeid, uint64_t offset, std::span<const std::byte> data,
                                bool direct, bool nowait) {
  Inode* ip = Find(nodeid);
  if (ip == nullptr) return Unexpected(EBADF);
  Inode& in = *ip;
  if (!IomapInode(in)) return Unexpected(EOPNOTSUPP);
  if (data.empty()) return {};
  if (frozen_) return Unexpected(EAGAIN);  // the kernel would block in sb_start_write
  const uint64_t bs = block_size_;
  const uint64_t end = offset + data.size();
  if (end > max_bytes_) return Unexpected(EFBIG);
  const uint32_t extra = nowait ? abi::FUSE_IOMAP_OP_NOWAIT : 0;
  if (direct) {
    if (offset % bs != 0 || data.size() % bs != 0) return Unexpected(EINVAL);
    IOMAPFS_TRY(WritebackRange(in, offset / bs, end / bs));
    for (uint64_t p = offset; p < end;) {
      IOMAPFS_ASSIGN_OR_RETURN(
          abi::fuse_iomap_io m,
          Begin(in, p, end - p, abi::FUSE_IOMAP_OP_WRITE | abi::FUSE_IOMAP_OP_DIRECT | extra));
      if (m.type == abi::FUSE_IOMAP_TYPE_INLINE) {
        // UNCERTAIN: §4.4 lists only MAPPED/UNWRITTEN for WRITE|DIRECT, while §9 says any write
        // into an INLINE destination ends with FUSE_WRITE (mainline iomap's direct path copies
        // into the inline buffer). The model takes the §9 write side, synchronously, with no
        // IOEND and no END; the server must then persist the bytes itself.
        const uint64_t stop = std::min(end, m.offset + m.length);
        IOMAPFS_TRY(InlineWrite(in, m, p, data.subspan(p - offset, stop - p)));
        p = stop;
        continue;
      }
      if (m.type != abi::FUSE_IOMAP_TYPE_MAPPED && m.type != abi::FUSE_IOMAP_TYPE_UNWRITTEN) {
        rejections_.push_back("direct write got a mapping of type " + std::to_string(m.type));
        return Unexpected(EIO);
      }
      uint64_t stop = std::min(end, m.offset + m.length);
      uint32_t flags = abi::FUSE_IOMAP_IOEND_DIRECT;
      if (m.type == abi::FUSE_IOMAP_TYPE_UNWRITTEN) flags |= abi::FUSE_IOMAP_IOEND_UNWRITTEN;
      if (stop > in.disk_size) flags |= abi::FUSE_IOMAP_IOEND_APPEND;
      if (fail_data_writes_) {
        // §6.3: a failed direct write still ends with an IOEND carrying the error.
        (void)SendIoend(in, flags, p, stop - p, -EIO);
        return Unexpected(EIO);
      }
      IOMAPFS_TRY(DeviceWrite(m, p, data.subspan(p - offset, stop - p)));
      in.size = std::max(in.size, stop);
      IOMAPFS_TRY(SendIoend(in, flags, p, stop - p, 0));
      AfterWriteCompletion(in, p, stop - p);
      p = stop;
    }
    return {};
  }
  // Buffered: zero the old EOF block's tail first (iomap_zero_range before an extending write).
  if (offset > in.size && in.size % bs != 0) {
    IOMAPFS_TRY(ZeroRange(in, in.size, std::min(offset, RoundUp(in.size, bs))));
  }
  for (uint64_t p = offset; p < end;) {
    abi::fuse_iomap_io src;
    IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_io m,
                             Begin(in, p, end - p, abi::FUSE_IOMAP_OP_WRITE | extra, &src));
    if (m.type == abi::FUSE_IOMAP_TYPE_INLINE) {
      // §9, §4.4: the bytes go to the server with FUSE_WRITE now; the page stays clean (inline
      // data never reaches writeback) and no END follows. The inline buffer is filled first
      // (read-before-write, INLINE being the source). UNCERTAIN: §4.4's table does not list
      // INLINE for buffered writes; the model follows §9 rather than failing the write.
      const uint64_t stop = std::min(end, m.offset + m.length);
      auto d = in.dirty.lower_bound(p / bs);
      if (d != in.dirty.end() && d->first < RoundUp(stop, bs) / bs) {
        rejections_.push_back("buffered write into an INLINE mapping over dirty page cache");
        return Unexpected(EIO);
      }
      if (src.type == abi::FUSE_IOMAP_TYPE_INLINE) IOMAPFS_TRY(InlineRead(in, src));
      IOMAPFS_TRY(InlineWrite(in, m, p, data.subspan(p - offset, stop - p)));
      p = stop;
      continue;
    }
    if (m.type != abi::FUSE_IOMAP_TYPE_MAPPED && m.type != abi::FUSE_IOMAP_TYPE_UNWRITTEN &&
        m.type != abi::FUSE_IOMAP_TYPE_DELALLOC) {
      rejections_.push_back("buffered write got a mapping of type " + std::to_string(m.type));
      return Unexpected(EIO);
    }
    uint64_t stop = std::min(end, m.offset + m.length);
    for (uint64_t q = p; q < stop;) {
      uint64_t blk = q / bs;
      uint64_t to = std::min(stop, (blk + 1) * bs);
      IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> * page, DirtyBlock(in, blk, m));
      std::memcpy(page->data() + (q - blk * bs), data.data() + (q - offset), to - q);
      q = to;
    }
    bool size_changed = stop > in.size;
    if (size_changed) in.size = stop;
    // §5.3: END for a write op that extended i_size.
    if (size_changed && end_enabled_) {
      abi::fuse_iomap_end_in e{};
      e.opflags = abi::FUSE_IOMAP_OP_WRITE | extra;
      e.attr_ino = in.ino;
      e.pos = p;
      e.count = end - p;
      e.written = static_cast<int64_t>(stop - p);
      e.map = m;
      e.map.flags |= abi::FUSE_IOMAP_F_SIZE_CHANGED;
      counters_.ends++;
      Result<std::vector<std::byte>> r = Call(abi::FUSE_IOMAP_END, in.nodeid, Bytes(e));
      if (!r) {
        if (r.error() == ENOSYS) {
          end_enabled_ = false;
        } else {
          return Unexpected(r.error());
        }
      }
    }
    p = stop;
  }
  return {};
}

Result<void> KernelModel::AtomicWrite(uint64_t nodeid, uint64_t offset,
                                      std::span<const std::byte> data) {
  Inode* ip = Find(nodeid);
  if (ip == nullptr) return Unexpected(EBADF);
  Inode& in = *ip;
  // No FMODE_CAN_ATOMIC_WRITE without FUSE_ATTR_ATOMIC (latched at instantiation, §1.5).
  if (!IomapInode(in) || (in.flags & abi::FUSE_ATTR_ATOMIC) == 0) return Unexpected(EOPNOTSUPP);
  if (frozen_) return Unexpected(EAGAIN);
  const uint64_t bs = block_size_;
  if (data.size() != bs || offset % bs != 0) return Unexpected(EINVAL);
  IOMAPFS_TRY(WritebackRange(in, offset / bs, offset / bs + 1));
  const uint32_t op =
      abi::FUSE_IOMAP_OP_WRITE | abi::FUSE_IOMAP_OP_DIRECT | abi::FUSE_IOMAP_OP_ATOMIC;
  IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_io m, Begin(in, offset, bs, op));
  // The reply passed §4.5 item 11 (MAPPED/UNWRITTEN with F_ATOMIC_BIO); one bio for the block.
  if (m.offset > offset || m.offset + m.length < offset + bs) return Unexpected(EIO);
  uint32_t flags = abi::FUSE_IOMAP_IOEND_DIRECT;
  if (m.type == abi::FUSE_IOMAP_TYPE_UNWRITTEN) flags |= abi::FUSE_IOMAP_IOEND_UNWRITTEN;
  if (offset + bs > in.disk_size) flags |= abi::FUSE_IOMAP_IOEND_APPEND;
  if (fail_data_writes_) {
    (void)SendIoend(in, flags, offset, bs, -EIO);
    return Unexpected(EIO);
  }
  IOMAPFS_TRY(DeviceWrite(m, offset, data));
  in.size = std::max(in.size, offset + bs);
  IOMAPFS_TRY(SendIoend(in, flags, offset, bs, 0));
  AfterWriteCompletion(in, offset, bs);
  return {};
}

Result<void> KernelModel::SendIoend(Inode& in, uint32_t flags, uint64_t pos, uint64_t written,
                                    int error) {
  // §6.3: only for errors, SWAPOFF, or completed SHARED/UNWRITTEN/APPEND I/O.
  const bool wanted =
      error != 0 || (flags & abi::FUSE_IOMAP_IOEND_SWAPOFF) != 0 ||
      (written > 0 && (flags & (abi::FUSE_IOMAP_IOEND_SHARED | abi::FUSE_IOMAP_IOEND_UNWRITTEN |
                                abi::FUSE_IOMAP_IOEND_APPEND)) != 0);
  if (!wanted) return {};
  if (!ioend_enabled_ && (flags & abi::FUSE_IOMAP_IOEND_SWAPOFF) == 0) return {};
  abi::fuse_iomap_ioend_in e{};
  e.flags = flags;
  e.error = error;
  e.attr_ino = in.ino;
  e.pos = pos;
  e.new_addr = abi::FUSE_IOMAP_NULL_ADDR;
  e.written = written;
  counters_.ioends++;
  Result<std::vector<std::byte>> r = Call(abi::FUSE_IOMAP_IOEND, in.nodeid, Bytes(e));
  if (!r) {
    if (r.error() == ENOSYS) {
      ioend_enabled_ = false;
      return {};
    }
    return Unexpected(error != 0 ? -error : r.error());
  }
  abi::fuse_iomap_ioend_out out;
  if (!Parse(*r, &out)) return Unexpected(EIO);
  if (error == 0) in.disk_size = std::max(in.disk_size, out.newsize);  // newest: only grows
  return {};
}

void KernelModel::AfterWriteCompletion(Inode& in, uint64_t pos, uint64_t len) {
  // §12.5: every successful write completion drops the written range from both forks.
  if (!in.has_cache || len == 0) return;
  uint64_t from = pos / block_size_ * block_size_;
  uint64_t to = RoundUp(pos + len, block_size_);
  in.cache.read.Remove(from, to - from);
  in.cache.write.Remove(from, to - from);
  in.cache.seq++;
}

Result<std::vector<std::byte>> KernelModel::InlineRead(Inode& in, const abi::fuse_iomap_io& m) {
  // §9 (newest snapshot): FUSE_READ of the whole mapping, by nodeid, no file handle, into a
  // buffer of the mapping's length (at most one block, §4.5).
  abi::fuse_read_in rin{};
  rin.offset = m.offset;
  rin.size = static_cast<uint32_t>(m.length);
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> data,
                           Call(abi::FUSE_READ, in.nodeid, Bytes(rin)));
  if (data.empty() || data.size() > m.length) {
    rejections_.push_back("inline FUSE_READ answered " + std::to_string(data.size()) +
                          " bytes for " + std::to_string(m.length));
    return Unexpected(EIO);
  }
  data.resize(m.length);  // past the reply: zeros
  return data;
}

Result<void> KernelModel::InlineWrite(Inode& in, const abi::fuse_iomap_io& m, uint64_t pos,
                                      std::span<const std::byte> data) {
  if (m.type != abi::FUSE_IOMAP_TYPE_INLINE || pos < m.offset ||
      pos + data.size() > m.offset + m.length) {
    rejections_.push_back("inline write outside its INLINE mapping");
    return Unexpected(EIO);
  }
  counters_.inline_writes++;
  // §9 (newest snapshot): FUSE_WRITE of [pos, pos + written), repeated while the reply is short.
  for (size_t done = 0; done < data.size();) {
    abi::fuse_write_in w{};
    w.fh = 0;
    w.offset = pos + done;
    w.size = static_cast<uint32_t>(data.size() - done);
    IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> r,
                             Call(abi::FUSE_WRITE, in.nodeid, Bytes(w), data.subspan(done)));
    abi::fuse_write_out out;
    if (!Parse(r, &out)) return Unexpected(EIO);
    if (out.size == 0 || out.size > w.size) {
      rejections_.push_back("inline FUSE_WRITE answered " + std::to_string(out.size) +
                            " bytes for " + std::to_string(w.size));
      return Unexpected(EIO);
    }
    done += out.size;
  }
  const uint64_t end = pos + data.size();
  in.size = std::max(in.size, end);
  in.disk_size = std::max(in.disk_size, end);
  if (options_.auto_inval) AfterWriteCompletion(in, pos, data.size());  // §12.5
  return {};
}

Result<void> KernelModel::WritebackRange(Inode& in, uint64_t first_blk, uint64_t end_blk) {
  const uint64_t bs = block_size_;
  for (;;) {
    auto it = in.dirty.lower_bound(first_blk);
    if (it == in.dirty.end() || it->first >= end_blk) return {};
    uint64_t a = it->first, b = a;
    while (b < end_blk && in.dirty.count(b) != 0) ++b;
    for (uint64_t p = a * bs; p < b * bs;) {
      IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_io m,
                               Begin(in, p, b * bs - p, abi::FUSE_IOMAP_OP_WRITEBACK));
      // §4.4: writeback needs real storage.
      if (m.type != abi::FUSE_IOMAP_TYPE_MAPPED && m.type != abi::FUSE_IOMAP_TYPE_UNWRITTEN) {
        rejections_.push_back("writeback got a mapping of type " + std::to_string(m.type));
        return Unexpected(EIO);
      }
      uint64_t stop = std::min(b * bs, m.offset + m.length);
      // The ioend ends at EOF (the tail of the EOF block is not file data).
      uint64_t written = std::min(stop, std::max(in.size, p)) - p;
      uint32_t flags = abi::FUSE_IOMAP_IOEND_WRITEBACK;
      if (m.type == abi::FUSE_IOMAP_TYPE_UNWRITTEN) flags |= abi::FUSE_IOMAP_IOEND_UNWRITTEN;
      if (p + written > in.disk_size) flags |= abi::FUSE_IOMAP_IOEND_APPEND;
      if (fail_data_writes_) {
        // §4.6, §6.3: the failed folios are discarded and the IOEND carries the error.
        for (uint64_t q = p; q < stop; q += bs) in.dirty.erase(q / bs);
        (void)SendIoend(in, flags, p, written, -EIO);
        return Unexpected(EIO);
      }
      for (uint64_t q = p; q < stop; q += bs) {
        IOMAPFS_TRY(DeviceWrite(m, q, in.dirty.at(q / bs)));
        in.dirty.erase(q / bs);
      }
      IOMAPFS_TRY(SendIoend(in, flags, p, written, 0));
      AfterWriteCompletion(in, p, stop - p);
      p = stop;
    }
  }
}

Result<void> KernelModel::Writeback(uint64_t nodeid) {
  Inode* ip = Find(nodeid);
  if (ip == nullptr || ip->dirty.empty()) return {};
  return WritebackRange(*ip, 0, ~0ull);
}

Result<void> KernelModel::Fsync(uint64_t nodeid, uint64_t fh) {
  IOMAPFS_TRY(Writeback(nodeid));
  abi::fuse_fsync_in in{};
  in.fh = fh;
  IOMAPFS_TRY(Call(abi::FUSE_FSYNC, nodeid, Bytes(in)));
  return {};
}

Result<void> KernelModel::Truncate(uint64_t nodeid, uint64_t size) {
  if (frozen_) return Unexpected(EAGAIN);  // the kernel would block in sb_start_write
  Inode* ip = Find(nodeid);
  if (ip == nullptr) return Unexpected(EBADF);
  Inode& in = *ip;
  const uint64_t bs = block_size_;
  if (IomapInode(in)) {
    // §10: zero the partial block at the new (shrink) or old (grow) EOF through the page cache.
    if (size < in.size && size % bs != 0) {
      IOMAPFS_TRY(ZeroRange(in, size, std::min(in.size, RoundUp(size, bs))));
    } else if (size > in.size && in.size % bs != 0) {
      IOMAPFS_TRY(ZeroRange(in, in.size, std::min(size, RoundUp(in.size, bs))));
    }
    in.dirty.erase(in.dirty.lower_bound(RoundUp(size, bs) / bs), in.dirty.end());
    IOMAPFS_TRY(Writeback(nodeid));
  }
  abi::fuse_setattr_in s{};
  s.valid = abi::FATTR_SIZE;
  s.size = size;
  IOMAPFS_TRY(Call(abi::FUSE_SETATTR, nodeid, Bytes(s)));
  in.size = in.disk_size = size;
  if (in.has_cache) {
    uint64_t from = size / bs * bs;
    in.cache.read.Remove(from, abi::FUSE_IOMAP_INVAL_TO_EOF);
    in.cache.write.Remove(from, abi::FUSE_IOMAP_INVAL_TO_EOF);
    in.cache.seq++;
  }
  return {};
}

Result<void> KernelModel::Punch(uint64_t nodeid, uint64_t fh, uint64_t offset, uint64_t length) {
  if (frozen_) return Unexpected(EAGAIN);  // the kernel would block in sb_start_write
  Inode* ip = Find(nodeid);
  if (ip == nullptr) return Unexpected(EBADF);
  Inode& in = *ip;
  const uint64_t bs = block_size_;
  IOMAPFS_TRY(Writeback(nodeid));
  abi::fuse_fallocate_in f{};
  f.fh = fh;
  f.offset = offset;
  f.length = length;
  f.mode = 0x01 | 0x02;  // FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
  IOMAPFS_TRY(Call(abi::FUSE_FALLOCATE, nodeid, Bytes(f)));
  const uint64_t end = offset + length;
  if (in.has_cache) {
    uint64_t from = offset / bs * bs;
    in.cache.read.Remove(from, RoundUp(end, bs) - from);
    in.cache.write.Remove(from, RoundUp(end, bs) - from);
    in.cache.seq++;
  }
  // Partial edge blocks are zeroed through the page cache (§10).
  const uint64_t lim = std::min(end, in.size);
  if (offset % bs != 0 && offset < lim) {
    IOMAPFS_TRY(ZeroRange(in, offset, std::min(lim, RoundUp(offset, bs))));
  }
  if (lim % bs != 0 && lim > offset && lim / bs * bs >= offset) {
    IOMAPFS_TRY(ZeroRange(in, std::max(offset, lim / bs * bs), lim));
  }
  return {};
}

Result<uint64_t> KernelModel::CopyFileRange(uint64_t node_in, uint64_t fh_in, uint64_t off_in,
                                            uint64_t node_out, uint64_t fh_out, uint64_t off_out,
                                            uint64_t len) {
  if (frozen_) return Unexpected(EAGAIN);  // the kernel would block in sb_start_write
  Inode* src = Find(node_in);
  Inode* dst = Find(node_out);
  if (src == nullptr || dst == nullptr) return Unexpected(EBADF);
  if (len == 0) return uint64_t{0};
  const uint64_t bs = block_size_;
  // The server copies storage: both ranges are written back first (fuse_copy_file_range).
  IOMAPFS_TRY(WritebackRange(*src, off_in / bs, RoundUp(off_in + len, bs) / bs));
  IOMAPFS_TRY(WritebackRange(*dst, off_out / bs, RoundUp(off_out + len, bs) / bs));
  abi::fuse_copy_file_range_in c{};
  c.fh_in = fh_in;
  c.off_in = off_in;
  c.nodeid_out = node_out;
  c.fh_out = fh_out;
  c.off_out = off_out;
  c.len = len;
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> r,
                           Call(abi::FUSE_COPY_FILE_RANGE_64, node_in, Bytes(c)));
  abi::fuse_copy_file_range_out out;
  if (!Parse(r, &out) || out.bytes_copied > len) return Unexpected(EIO);
  const uint64_t copied = out.bytes_copied;
  if (copied == 0) return copied;
  dst->size = std::max(dst->size, off_out + copied);
  dst->disk_size = std::max(dst->disk_size, off_out + copied);
  // §10, §12.5: the destination range leaves the mapping cache.
  if (options_.auto_inval && dst->has_cache) {
    const uint64_t from = off_out / bs * bs;
    dst->cache.read.Remove(from, RoundUp(off_out + copied, bs) - from);
    dst->cache.write.Remove(from, RoundUp(off_out + copied, bs) - from);
    dst->cache.seq++;
  }
  return copied;
}

Result<std::vector<FiemapExtent>> KernelModel::Fiemap(uint64_t nodeid) {
  Inode* ip = Find(nodeid);
  if (ip == nullptr) return Unexpected(EBADF);
  IOMAPFS_TRY(Writeback(nodeid));
  std::vector<FiemapExtent> out;
  for (uint64_t p = 0; p < ip->size;) {
    IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_io m,
                             Begin(*ip, p, ip->size - p, abi::FUSE_IOMAP_OP_REPORT));
    if (m.type == abi::FUSE_IOMAP_TYPE_MAPPED || m.type == abi::FUSE_IOMAP_TYPE_UNWRITTEN) {
      FiemapExtent e{m.offset, m.addr, m.length, m.type == abi::FUSE_IOMAP_TYPE_UNWRITTEN};
      if (!out.empty() && out.back().logical + out.back().length == e.logical &&
          out.back().physical + out.back().length == e.physical &&
          out.back().unwritten == e.unwritten) {
        out.back().length += e.length;
      } else {
        out.push_back(e);
      }
    }
    p = m.offset + m.length;
  }
  return out;
}

Result<uint64_t> KernelModel::Seek(uint64_t nodeid, uint64_t offset, int whence) {
  Inode* ip = Find(nodeid);
  if (ip == nullptr) return Unexpected(EBADF);
  IOMAPFS_TRY(Writeback(nodeid));
  const bool want_data = whence == 3;  // SEEK_DATA
  if (offset >= ip->size) return Unexpected(ENXIO);
  for (uint64_t p = offset; p < ip->size;) {
    IOMAPFS_ASSIGN_OR_RETURN(abi::fuse_iomap_io m,
                             Begin(*ip, p, ip->size - p, abi::FUSE_IOMAP_OP_REPORT));
    // iomap_seek_data/hole without page cache: unwritten extents are holes.
    bool data = m.type == abi::FUSE_IOMAP_TYPE_MAPPED || m.type == abi::FUSE_IOMAP_TYPE_INLINE ||
                m.type == abi::FUSE_IOMAP_TYPE_DELALLOC;
    if (data == want_data) return p;
    p = m.offset + m.length;
  }
  if (want_data) return Unexpected(ENXIO);
  return ip->size;
}

Result<uint64_t> KernelModel::Swapon(uint64_t nodeid) {
  Inode* ip = Find(nodeid);
  if (ip == nullptr) return Unexpected(EBADF);
  IOMAPFS_TRY(Writeback(nodeid));
  uint64_t pages = 0;
  uint32_t dev = 0;
  std::string why;
  for (uint64_t p = 0; p < ip->size && why.empty();) {
    Result<abi::fuse_iomap_io> r =
        Begin(*ip, p, ip->size - p, abi::FUSE_IOMAP_OP_REPORT | abi::FUSE_IOMAP_OP_SWAPFILE);
    if (!r) {
      why = "begin failed";
      break;
    }
    const abi::fuse_iomap_io& m = *r;
    // §4.8 (mainline iomap swapfile rules).
    if (m.type != abi::FUSE_IOMAP_TYPE_MAPPED && m.type != abi::FUSE_IOMAP_TYPE_UNWRITTEN) {
      why = m.type == abi::FUSE_IOMAP_TYPE_INLINE ? "inline" : "unallocated";
    } else if ((m.flags & (abi::FUSE_IOMAP_F_DIRTY | abi::FUSE_IOMAP_F_SHARED)) != 0) {
      why = "dirty or shared mapping";
    } else if (dev != 0 && m.dev != dev) {
      why = "more than one device";
    } else {
      dev = m.dev;
      uint64_t from = std::max(p, m.offset), to = std::min(ip->size, m.offset + m.length);
      uint64_t first = RoundUp(m.addr + (from - m.offset), kPage);
      uint64_t last = (m.addr + (to - m.offset)) / kPage * kPage;
      if (last > first) pages += (last - first) / kPage;
    }
    p = m.offset + m.length;
  }
  if (!why.empty()) {
    rejections_.push_back("swapon: " + why);
    (void)SendIoend(*ip, abi::FUSE_IOMAP_IOEND_SWAPOFF, 0, 0, 0);
    return Unexpected(EINVAL);
  }
  ip->swap_active = true;
  return pages;
}

Result<void> KernelModel::Swapoff(uint64_t nodeid) {
  Inode* ip = Find(nodeid);
  if (ip == nullptr || !ip->swap_active) return Unexpected(EINVAL);
  ip->swap_active = false;
  return SendIoend(*ip, abi::FUSE_IOMAP_IOEND_SWAPOFF, 0, 0, 0);
}

}  // namespace iomapfs::kmodel
