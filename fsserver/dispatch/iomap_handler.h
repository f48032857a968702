// IomapHandler: the server side of the FUSE iomap protocol (spec/fuse-iomap-protocol.md), used
// by the Dispatcher when the kernel offers FUSE_IOMAP at INIT.
//
//   INIT     acknowledge FUSE_IOMAP (minor 99, §1.3) when offered and enabled; else classic.
//   CONFIG   geometry from the superblock (§7, §14.2); registers the image's device with
//            BACKING_OPEN through the connection's KernelControl (§1.4, §11), sets its block
//            size with IOMAP_SET_BLOCKSIZE (§11.2) and, with BPF on, attaches the
//            per-connection bpf::Dispatcher (§13.2). Every thread serving CONFIG/BEGIN/END/IOEND
//            sets SET_NOFS on itself once (§11.3). Both ioctls are UNTESTED against a real
//            iomap kernel (the kernel model records them).
//   LOOKUP   regular files get FUSE_ATTR_EXCLUSIVE|FUSE_ATTR_IOMAP (§1.5), and FUSE_ATTR_ATOMIC
//            when untorn writes are allowed (§4.7, §14.7; decided at CONFIG).
//   STATX    regular files report the device's direct I/O alignment (STATX_DIOALIGN, §14.6)
//            and, with untorn writes, STATX_WRITE_ATOMIC of one fs block (§14.7).
//   OPEN     pushes the file's mappings into the kernel cache (UPSERT, §12.3) within the
//            kernel's per-fork limit, INLINE ones included (§9, §12.1: [0, block), so that a
//            read of an inline-data file costs its FUSE_READ and no BEGIN), and installs the
//            file's BPF program.
//   BEGIN    reads, REPORT, DIRECT: the engine's mapping (whole extent); write ops over a hole
//            (not ZERO) allocate UNWRITTEN extents first (§4.4, §14.3), never DELALLOC; NOWAIT
//            writes that would allocate answer EAGAIN; ATOMIC sets F_ATOMIC_BIO (§4.7). Every
//            mapping is checked by iomap::CheckMapping plus the wire rules of §4.5 before it is
//            sent; then it is upserted and, where allowed, the reply is RETRY_CACHE (§12.6).
//   END      raises the on-disk size after size-extending buffered writes (§5, §14.4).
//   IOEND    converts unwritten extents and raises the size; the reply carries it (§6).
//   FREEZE   (§8, as fuse4fs) writes the superblock clean unless inodes await removal, syncs, and
//            refuses every change with EROFS until UNFREEZE (not clean again, writable).
//   SHUTDOWN (§8) flushes; the Dispatcher then answers everything but teardown with EIO.
//   After layout-changing requests (truncate, O_TRUNC open, fallocate, copy_file_range) the file's
//   cached mappings are INValidated (§12.4) and its BPF program replaced before the reply is sent;
//   for a file whose INLINE mapping is cached, from offset 0, and also after a FUSE_WRITE or a
//   BEGIN that converted it to extents (user xattrs do not move inline data: system.data keeps
//   its place, only the room left to grow in changes);
//   FORGET drops the program (the inode number may be reused). Blocks freed by any request are
//   announced with DEV_INVAL (§11.5) before its reply: the server's buffered I/O on the device
//   may have left cached pages of them. A BEGIN that allocated announces whatever was freed
//   before it upserts or replies, and taking + sending the freed ranges is one critical section,
//   so no mapping of a reused block reaches the kernel before that block's DEV_INVAL, whichever
//   thread freed it. UNLINK needs no INVAL: the
//   blocks of an unlinked inode are freed only at the FORGET of its last lookup reference
//   (Filesystem::Forget), i.e. after the kernel evicted the inode and with it its cache (§12.1).
//
// Thread-safety: every method may be called concurrently from worker threads. BEGIN, END and
// IOEND of one inode are serialized by a striped per-inode mutex (§10 "serialise per inode").
// Lock order: per-inode mutex, then dev_inval_mu_ (held across DEV_INVAL sends), then bpf_mu_ /
// cache_mu_ (leaves); the metadata lock is taken inside Filesystem calls (also under
// dev_inval_mu_) and never held here; notifications are sent without it.
// Ownership: borrows the Filesystem; owns the BPF dispatcher.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "base/result.h"
#include "base/strong_id.h"
#include "fsserver/dispatch/reply_sink.h"
#include "fsserver/ext4/filesystem.h"
#include "fsserver/wire/fuse_abi.h"
#include "fsserver/wire/request.h"

namespace iomapfs::bpf {
class Dispatcher;
}  // namespace iomapfs::bpf

namespace iomapfs::dispatch {

// Test switch: corrupts BEGIN replies *after* the checker, to prove the kernel side rejects them.
enum class IomapFault {
  kNone,
  kMisaligned,   // the read slot's offset moved by 512 bytes (not block-aligned)
  kNotCovering,  // the read slot moved past pos (does not cover it)
};

// Test hook points in SendDevInvals (the DEV_INVAL of freed blocks, §11.5).
enum class DevInvalPoint {
  kBeforeTake,  // the blocks are freed, nothing is taken from the log yet (no lock held)
  kTaken,       // the ranges are taken from the log, not yet sent (dev_inval_mu_ held)
};

struct IomapOptions {
  bool enable = true;       // acknowledge FUSE_IOMAP when the kernel offers it
  bool cache = true;        // UPSERT mappings into the kernel's cache (OPEN, BEGIN)
  bool retry_cache = true;  // answer BEGIN with RETRY_CACHE after a successful UPSERT
  bool bpf = false;         // per-file BPF programs (needs CAP_BPF)
  // Mappings upserted at OPEN, at most (0: none). The kernel's per-fork limit (cache_maxbytes,
  // 256 KiB = 8192 records by default) bounds it too.
  size_t open_upsert_limit = 4096;
  uint32_t cache_maxbytes = 0;  // CONFIG CACHE_MAXBYTES; 0: the kernel's default
  // Untorn writes (FUSE_ATTR_ATOMIC, §4.7) where §14.7 allows them: the kernel reports
  // FUSE_IOMAP_SUPPORT_ATOMIC, the fs has extents, and the device's atomic write unit range
  // (statx STATX_WRITE_ATOMIC) contains the fs block size. The atomic unit is one fs block.
  bool atomic = true;
  // Tests: the device's atomic write unit, min = max, instead of asking statx (0: ask). The
  // kernel model's "device" is an image file, which reports no atomic writes.
  uint32_t test_device_atomic_unit = 0;
  // Tests: the device's direct I/O alignment (memory and offset) instead of asking statx
  // (STATX_DIOALIGN) or the block device (0: ask).
  uint32_t test_device_dio_align = 0;
  IomapFault fault = IomapFault::kNone;
  // Tests: called on the calling thread at each DevInvalPoint (to pause a freeing thread there).
  std::function<void(DevInvalPoint)> test_dev_inval_hook;
};

struct IomapStats {
  std::atomic<uint64_t> begins{0};
  std::atomic<uint64_t> allocations{0};  // BEGINs that allocated storage
  std::atomic<uint64_t> upserts{0};
  std::atomic<uint64_t> upsert_failures{0};
  std::atomic<uint64_t> invals{0};
  std::atomic<uint64_t> dev_invals{0};
  std::atomic<uint64_t> retry_cache{0};
  std::atomic<uint64_t> ioends{0};
  std::atomic<uint64_t> bpf_installs{0};
  std::atomic<uint64_t> rejected{0};  // mappings the checker refused (answered EUCLEAN)
};

class IomapHandler {
 public:
  IomapHandler(ext4::Filesystem& fs, const IomapOptions& options);
  ~IomapHandler();

  // INIT: `offered` is flags | flags2 << 32 as the kernel sent them (FUSE_INIT_EXT checked by
  // the caller). Returns: true if the connection is now in iomap mode (reply FUSE_IOMAP and
  // minor FUSE_IOMAP_KERNEL_MINOR_VERSION); false: classic mode, nothing changes.
  bool Negotiate(uint64_t offered);
  bool enabled() const { return enabled_.load(std::memory_order_acquire); }
  // Whether inodes get FUSE_ATTR_ATOMIC (decided at CONFIG).
  bool atomic() const { return atomic_.load(std::memory_order_acquire); }

  // fuse_attr.flags for an inode of this mode (0 unless in iomap mode).
  uint32_t AttrFlags(uint32_t mode) const;
  // STATX of an inode of this mode (§14.6, §14.7): for regular files in iomap mode adds
  // STATX_DIOALIGN (the kernel does direct I/O on the registered device itself: its alignment,
  // found at CONFIG) and, where untorn writes are advertised, STATX_WRITE_ATOMIC with a unit of
  // exactly one fs block and one segment, and STATX_ATTR_WRITE_ATOMIC. Otherwise leaves `sx`.
  void FillStatx(uint32_t mode, abi::fuse_statx* sx) const;

  // Errors: EIO the image cannot be registered (no block device and no loop device), the
  // device registration's errno.
  Result<abi::fuse_iomap_config_out> Config(const wire::IomapConfigReq& r, ReplySink& sink);
  // Errors: EINVAL attr_ino mismatch or an ATOMIC op not exactly one block; EOPNOTSUPP ATOMIC
  // without FUSE_ATTR_ATOMIC; EAGAIN NOWAIT would allocate; EUCLEAN a mapping failed the checker;
  // as Filesystem::IomapRead / IomapWrite.
  Result<abi::fuse_iomap_begin_out> Begin(const wire::Request& req, const wire::IomapBeginReq& r,
                                          ReplySink& sink);
  Result<void> End(const wire::Request& req, const wire::IomapEndReq& r, ReplySink& sink);
  // Errors: the I/O's own error (error != 0), EUCLEAN (SHARED: ext4 has no COW), as
  // Filesystem::IomapIoend.
  Result<abi::fuse_iomap_ioend_out> Ioend(const wire::Request& req, const wire::IomapIoendReq& r,
                                          ReplySink& sink);
  // After a successful OPEN of `ino`: upsert its mappings, install its BPF program.
  void Opened(const wire::Request& req, ReplySink& sink);
  // Called for every request after its handler ran and before its reply is sent.
  void AfterRequest(const wire::Request& req, bool ok, ReplySink& sink);

  // FREEZE_FS (§8, as fuse4fs): Filesystem::Freeze: the superblock is written clean (unless
  // orphans, `unlinked` open unlinked inodes or recorded errors), the image synced, and every
  // change is refused with EROFS (allocating BEGINs too; mappings of existing storage are still
  // handed out) until UNFREEZE_FS (Filesystem::Thaw: not clean again, writable).
  // Errors: ENOSYS not in iomap mode; EIO writing the image.
  // SHUTDOWN_FS needs nothing here: the Dispatcher refuses BEGIN, END, IOEND and every other
  // operation but teardown itself (Dispatcher::shut_down(), §8).
  Result<void> Freeze(uint64_t unlinked);
  Result<void> Unfreeze();
  // DESTROY: detaches BPF and drops the registration state.
  void Destroy(ReplySink& sink);

  uint32_t backing_id() const { return dev_.load(std::memory_order_acquire); }
  const IomapStats& stats() const { return stats_; }

 private:
  struct Bpf;
  // Wire form of an engine mapping (device address, backing id, block-aligned INLINE).
  abi::fuse_iomap_io ToWire(const iomap::Mapping& m) const;
  // iomap::CheckMapping plus §4.5's wire rules. Errors: EUCLEAN (logged).
  Result<void> Check(const abi::fuse_iomap_io& io, uint64_t pos) const;
  // UPSERTs read-fork mappings of `ino`, INValidating the fork first when the kernel's limit
  // would be exceeded. Returns: whether every upsert was accepted.
  bool Upsert(Ino ino, std::span<const iomap::Mapping> maps, ReplySink& sink);
  void Inval(Ino ino, uint64_t offset, uint64_t length, ReplySink& sink);
  // Whether an INLINE mapping of `ino` was upserted and not INValidated since.
  bool InlineCached(Ino ino);
  // DEV_INVAL (§11.5) for every block range freed since the last call. Taking the ranges and
  // sending them is one critical section (dev_inval_mu_): a caller that returns from here knows
  // that every block freed before its call was announced, by it or by another thread, so a
  // mapping of a reused block it hands out afterwards cannot overtake that block's DEV_INVAL.
  void SendDevInvals(ReplySink& sink);
  // Reinstalls (or removes) the BPF program of `ino` from its current layout.
  void RefreshBpf(Ino ino);
  std::mutex& InodeLock(Ino ino) { return inode_mu_[ino.value() % kInodeLocks]; }

  ext4::Filesystem& fs_;
  const IomapOptions options_;
  std::atomic<bool> enabled_{false};
  std::atomic<bool> atomic_{false};
  std::atomic<uint32_t> dev_{0};  // backing id from BACKING_OPEN
  uint32_t block_size_ = 0;
  // Direct I/O alignment of the registered device (§14.6), set at CONFIG before any STATX.
  std::atomic<uint32_t> dio_mem_align_{0};
  std::atomic<uint32_t> dio_offset_align_{0};
  uint64_t data_offset_ = 0;
  uint64_t device_bytes_ = 0;
  uint64_t max_bytes_ = 0;
  size_t fork_limit_records_ = 8192;  // the kernel's per-fork cache limit in records

  static constexpr size_t kInodeLocks = 64;
  std::mutex inode_mu_[kInodeLocks];
  // Held while freed ranges are taken and announced. Lock order: per-inode mutex, then this;
  // notifications are sent under it (the kernel's DEV_INVAL handler calls nothing of ours).
  std::mutex dev_inval_mu_;
  std::mutex cache_mu_;                            // leaf
  std::unordered_map<uint64_t, size_t> upserted_;  // records sent per inode since last INVAL
  std::unordered_set<uint64_t> inline_cached_;     // inodes with an upserted INLINE mapping
  std::mutex bpf_mu_;                              // leaf
  std::unique_ptr<Bpf> bpf_;                       // guarded by bpf_mu_
  IomapStats stats_;
};

}  // namespace iomapfs::dispatch
