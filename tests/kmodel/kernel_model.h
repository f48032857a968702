// KernelModel: a userspace stand-in for the kernel side of a fuse-iomap connection, written
// from spec/fuse-iomap-protocol.md (DESIGN.md "The kernel model"). It is a MODEL: no real iomap
// kernel is involved anywhere, and tests built on it say so.
//
// It speaks the /dev/fuse wire format over the SocketChannel socketpairs
// (fsserver/session/socket_channel.h), so the server runs unchanged:
//   - INIT offering FUSE_IOMAP (minor 99), then FUSE_IOMAP_CONFIG and its checks (§1.3, §7);
//     without the offer (or without the server's acknowledgement) the connection is classic and
//     file data moves with FUSE_READ;
//   - LOOKUP (attribute flags latched when the inode is instantiated, §1.5), GETATTR, OPEN,
//     RELEASE, FSYNC, SETATTR (truncate), FALLOCATE (punch), DESTROY;
//   - the control socket: notifications (UPSERT/INVAL with the §12.3/§12.4 checks, DEV_INVAL),
//     BACKING_OPEN/CLOSE (the fd arrives with SCM_RIGHTS and is the model's "block device"),
//     BPF attach;
//   - iomap_begin as the kernel does it: mapping cache, then the attached BPF program (run with
//     BPF_PROG_TEST_RUN), then the FUSE_IOMAP_BEGIN upcall, each answer validated as §4.5 says,
//     RETRY_CACHE looping back to the cache (§12.6);
//   - the data movement, done by the model on the registered device fd: buffered reads (no
//     clean page cache is kept, so every read exercises the mapping path), a dirty page cache
//     at block granularity for buffered writes with page-granular zeroing of partial blocks,
//     writeback with IOEND and UNWRITTEN conversion, direct reads and writes, INLINE mappings
//     (§9: FUSE_READ of the mapping for reads and read-before-write; FUSE_WRITE by nodeid with
//     fh 0 after buffered, direct and zeroing writes into an INLINE destination, never
//     writeback, never END), END for size-extending buffered writes (§5.3), the automatic cache
//     invalidations of §12.5, FIEMAP, SEEK_DATA/SEEK_HOLE, swapfile activation (§4.8),
//     truncate, punch and copy_file_range as §10 describes them.
// It counts every upcall by opcode and BEGIN by op kind, cache hits and BPF hits.
//
// Thread-safety: none; one test thread drives a model. Ownership: owns its socket ends and the
// registered device fds.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "fsserver/wire/fuse_abi.h"
#include "tests/kmodel/model_cache.h"
#include "tests/kmodel/model_validate.h"

namespace iomapfs::kmodel {

struct ModelOptions {
  bool offer_iomap = true;           // offer FUSE_IOMAP at INIT
  bool cache = true;                 // keep and consult the mapping cache
  bool bpf = true;                   // consult an attached BPF program before the upcall
  uint32_t cache_maxbytes = 262144;  // the kernel's default per-fork limit (CONFIG may change it)
  // The kernel accepts only block devices for BACKING_OPEN; the model also accepts an image
  // file unless this is set (then: ENODEV, as the kernel).
  bool require_block_device = false;
  // The FUSE_DEV_IOC_IOMAP_SUPPORT answer (§1.2): FILEIO whenever iomap is offered, ATOMIC too
  // if this is set.
  bool offer_atomic = false;
  // The kernel's own cache invalidations (§12.5) after inline writes and copy_file_range. Tests
  // turn them off to model a kernel without that logic and check that the server's INVALs
  // alone keep the cache correct.
  bool auto_inval = true;
};

// Upcall kinds for BEGIN (by opflags).
enum class BeginKind {
  kRead,
  kDirectRead,
  kWrite,
  kDirectWrite,
  kZero,
  kWriteback,
  kReport,
  kCount
};
const char* BeginKindName(BeginKind k);

struct ModelCounters {
  std::map<std::string, uint64_t> upcalls;  // by opcode name ("LOOKUP", "IOMAP_BEGIN", ...)
  uint64_t begin_upcalls[static_cast<int>(BeginKind::kCount)] = {};
  uint64_t cache_hits = 0;
  uint64_t cache_misses = 0;
  uint64_t bpf_hits = 0;
  uint64_t bpf_fallbacks = 0;
  uint64_t retry_cache = 0;
  uint64_t upserts = 0;
  uint64_t upsert_rejects = 0;
  uint64_t invals = 0;
  uint64_t rejected_replies = 0;  // BEGIN replies / BPF answers failing §4.5
  uint64_t ioends = 0;
  uint64_t ends = 0;
  uint64_t max_fork_records = 0;  // the most records any fork held after an UPSERT
  uint64_t fork_discards = 0;     // whole-fork discards at the per-fork limit (§12.1)
  uint64_t set_blocksize = 0;     // FUSE_DEV_IOC_IOMAP_SET_BLOCKSIZE calls (§11.2)
  uint64_t set_nofs = 0;          // FUSE_DEV_IOC_SET_NOFS(1) calls (§11.3)
  uint64_t dev_invals = 0;        // accepted DEV_INVAL notifications (§11.5)
  uint64_t inline_writes = 0;     // writes into an INLINE destination (each sends FUSE_WRITE, §9)
  uint64_t Upcalls(const std::string& op) const;
  uint64_t BeginUpcalls() const;
  std::string Format() const;
};

struct FiemapExtent {
  uint64_t logical = 0, physical = 0, length = 0;
  bool unwritten = false;
};

class KernelModel {
 public:
  KernelModel(UniqueFd requests, UniqueFd control, const ModelOptions& options);
  ~KernelModel();

  // INIT (and CONFIG in iomap mode). Errors: the reply's errno; EPROTO bad INIT reply; EINVAL
  // a CONFIG reply the kernel would refuse.
  Result<void> Mount();
  // Writes back everything, sends DESTROY and closes the request socket (the server's workers
  // end). A second call is a no-op.
  Result<void> Unmount();

  bool iomap_mode() const { return iomap_; }
  uint32_t block_size() const { return block_size_; }
  uint64_t max_bytes() const { return max_bytes_; }
  uint32_t minor() const { return minor_; }

  // Returns: the node id. Errors: the server's errno (ENOENT, ...).
  Result<uint64_t> Lookup(uint64_t parent, const std::string& name);
  // Looks up each component of a relative path from the root.
  Result<uint64_t> LookupPath(const std::string& path);
  Result<abi::fuse_attr> GetAttr(uint64_t nodeid);
  // The fuse_attr.flags latched at instantiation.
  uint32_t LatchedFlags(uint64_t nodeid) const;
  uint64_t Size(uint64_t nodeid) const;  // the model's i_size

  Result<uint64_t> Open(uint64_t nodeid, uint32_t flags);
  // Writes back the file's dirty pages (as close does for iomap inodes) and releases.
  Result<void> Release(uint64_t nodeid, uint64_t fh);

  // read(2): short only at EOF. direct: O_DIRECT (offset and length block-aligned).
  Result<std::vector<std::byte>> Read(uint64_t nodeid, uint64_t offset, uint64_t length,
                                      bool direct = false);
  // write(2). Buffered writes land in the dirty page cache; direct ones on the device.
  // nowait: RWF_NOWAIT (v7 behaviour: BEGIN is sent with OP_NOWAIT).
  Result<void> Write(uint64_t nodeid, uint64_t offset, std::span<const std::byte> data,
                     bool direct = false, bool nowait = false);
  // pwritev2(RWF_ATOMIC) with O_DIRECT (§4.7): exactly one block, block-aligned, on a file that
  // got FUSE_ATTR_ATOMIC; BEGIN with ATOMIC|DIRECT|WRITE bypasses the cache.
  // Errors: EOPNOTSUPP no FUSE_ATTR_ATOMIC (or not an iomap inode); EINVAL not one aligned
  // block; EIO a mapping without F_ATOMIC_BIO; the server's errno.
  Result<void> AtomicWrite(uint64_t nodeid, uint64_t offset, std::span<const std::byte> data);
  // Writes back dirty pages of the file (WRITEBACK BEGINs, device writes, IOENDs).
  Result<void> Writeback(uint64_t nodeid);
  // Writeback, then FUSE_FSYNC.
  Result<void> Fsync(uint64_t nodeid, uint64_t fh);
  // §10: zero the new EOF block's tail (ZERO BEGIN), drop page cache past it, write back,
  // SETATTR, drop cached mappings from the new size.
  Result<void> Truncate(uint64_t nodeid, uint64_t size);
  // FALLOCATE(PUNCH_HOLE | KEEP_SIZE) with edge zeroing through the page cache.
  Result<void> Punch(uint64_t nodeid, uint64_t fh, uint64_t offset, uint64_t length);
  // copy_file_range(2) (§10): writes back both ranges, sends FUSE_COPY_FILE_RANGE_64, raises
  // the destination's size, drops the destination range from its mapping cache (§12.5).
  // Returns: bytes copied. Errors: the server's errno; EBADF unknown node.
  Result<uint64_t> CopyFileRange(uint64_t node_in, uint64_t fh_in, uint64_t off_in,
                                 uint64_t node_out, uint64_t fh_out, uint64_t off_out,
                                 uint64_t len);
  // FS_IOC_FIEMAP over [0, i_size) through REPORT BEGINs.
  Result<std::vector<FiemapExtent>> Fiemap(uint64_t nodeid);
  // lseek SEEK_DATA / SEEK_HOLE (whence 3 / 4) through REPORT BEGINs. Errors: ENXIO.
  Result<uint64_t> Seek(uint64_t nodeid, uint64_t offset, int whence);
  // swapon's mapping walk (REPORT|SWAPFILE, §4.8); on failure sends IOEND SWAPOFF.
  // Returns: the number of usable pages. Errors: EINVAL (holes, inline, dirty, shared).
  Result<uint64_t> Swapon(uint64_t nodeid);
  Result<void> Swapoff(uint64_t nodeid);

  // FUSE_CREATE (O_RDWR) of a regular file; the new inode is instantiated.
  // Returns: {nodeid, fh}. Errors: the server's errno.
  Result<std::pair<uint64_t, uint64_t>> Create(uint64_t parent, const std::string& name,
                                               uint32_t mode = 0100644);
  // FUSE_UNLINK. The in-kernel inode lives on while referenced, as in the kernel.
  Result<void> Unlink(uint64_t parent, const std::string& name);
  // Evicts the inode: drops its page cache and mapping cache and sends FUSE_FORGET with its
  // lookup count (no reply). Errors: EBADF unknown node; ENODEV connection gone.
  Result<void> Evict(uint64_t nodeid);
  // syncfs(2): writes back every inode, then FUSE_SYNCFS (always enabled in iomap mode, §8).
  Result<void> Syncfs();
  // FIFREEZE (§8): writes back every inode, then FREEZE_FS with `unlinked`. Until Unfreeze,
  // Write/Truncate/Punch answer EAGAIN where the kernel would block in sb_start_write.
  // Errors: EOPNOTSUPP (the server answered ENOSYS), the server's errno.
  Result<void> Freeze(uint64_t unlinked = 0);
  // FITHAW (§8): UNFREEZE_FS; ENOSYS counts as success.
  Result<void> Unfreeze();
  // The VFS ->shutdown super-operation (§8): SHUTDOWN_FS with flags 0.
  Result<void> Shutdown();
  // Fault injection: every data write to the device fails with EIO, as a failing bio. The model
  // then sends the IOEND with the error (§6.3) and discards the failed pages (writeback).
  void FailDataWrites(bool fail) { fail_data_writes_ = fail; }
  // iomap_begin for one op (cache, BPF, upcall), for tests that probe the server's answers.
  // Returns: the mapping the op acts on. Errors: the server's errno, EUCLEAN rejected.
  Result<abi::fuse_iomap_io> BeginOp(uint64_t nodeid, uint64_t pos, uint64_t count,
                                     uint32_t opflags);
  // Any request, as a syscall the model does not model would send it (MKDIR, SETXATTR, STATX,
  // ...): `arg` is the request body (fixed part, then names or data). The model's own state is
  // not updated. Returns: the reply body. Errors: the server's errno; ENODEV connection gone.
  Result<std::vector<std::byte>> RawRequest(uint32_t opcode, uint64_t nodeid,
                                            std::span<const std::byte> arg);
  // The read-fork records cached for the inode (empty without a cache).
  std::vector<abi::fuse_iomap_io> CachedReadMappings(uint64_t nodeid);
  // Every accepted DEV_INVAL, in arrival order.
  const std::vector<abi::fuse_iomap_dev_inval_out>& dev_invals() const { return dev_invals_; }
  // Block size the server set on backing device `id` with SET_BLOCKSIZE (0: never set).
  uint32_t device_block_size(uint32_t id) const;

  // Drops every cached mapping of every inode (as eviction would).
  void DropCaches();
  ModelCounters& counters() { return counters_; }
  void ResetCounters() { counters_ = ModelCounters{}; }
  // Descriptions of every validation failure seen (replies, BPF answers, UPSERTs).
  const std::vector<std::string>& rejections() const { return rejections_; }
  bool bpf_attached() const { return bpf_prog_.valid(); }

 private:
  struct Inode;
  struct Backing {
    UniqueFd fd;
    uint64_t size = 0;
    uint32_t block_size = 0;  // set by SET_BLOCKSIZE
  };

  // Sends one request and waits for its reply, serving control messages meanwhile.
  // Returns: the reply body. Errors: the reply's errno; ENODEV connection gone.
  Result<std::vector<std::byte>> Call(uint32_t opcode, uint64_t nodeid,
                                      std::span<const std::byte> arg,
                                      std::span<const std::byte> extra = {});
  void ServeControl();
  // Sends a request that has no reply (FORGET).
  Result<void> SendOnly(uint32_t opcode, uint64_t nodeid, std::span<const std::byte> arg);
  int64_t HandleControl(uint32_t kind, std::span<const std::byte> payload, UniqueFd fd);
  int64_t HandleNotify(std::span<const std::byte> msg);

  Inode* Find(uint64_t nodeid);
  Inode& Instantiate(const abi::fuse_entry_out& e);
  bool IomapInode(const Inode& in) const;
  ValidationContext Vctx() const;

  // iomap_begin: cache, BPF, upcall. Returns: the mapping the op acts on (read slot, or the
  // write slot for out-of-place writes) and in *src the read slot.
  Result<abi::fuse_iomap_io> Begin(Inode& in, uint64_t pos, uint64_t count, uint32_t opflags,
                                   abi::fuse_iomap_io* src = nullptr);
  std::optional<abi::fuse_iomap_io> CacheLookup(Inode& in, uint64_t pos, uint32_t opflags);
  void AfterWriteCompletion(Inode& in, uint64_t pos, uint64_t len);

  Result<void> DeviceRead(const abi::fuse_iomap_io& m, uint64_t pos, std::span<std::byte> out);
  Result<void> DeviceWrite(const abi::fuse_iomap_io& m, uint64_t pos,
                           std::span<const std::byte> in);
  // Fills `out` (block-aligned file range starting at pos) from storage, not page cache.
  Result<void> ReadStorage(Inode& in, uint64_t pos, std::span<std::byte> out, uint32_t opflags);
  // Brings block `blk` into the dirty page cache (read-modify-write source: `src`).
  Result<std::vector<std::byte>*> DirtyBlock(Inode& in, uint64_t blk,
                                             const abi::fuse_iomap_io& src);
  Result<void> WritebackRange(Inode& in, uint64_t first_blk, uint64_t end_blk);
  Result<void> SendIoend(Inode& in, uint32_t flags, uint64_t pos, uint64_t written, int error);
  Result<void> ZeroRange(Inode& in, uint64_t from, uint64_t to);
  // §9 read side: FUSE_READ of INLINE mapping `m` (by nodeid, fh 0). Returns: m.length bytes.
  Result<std::vector<std::byte>> InlineRead(Inode& in, const abi::fuse_iomap_io& m);
  // §9 write side for bytes written into INLINE mapping `m` at pos: FUSE_WRITE (by nodeid,
  // fh 0) until everything is persisted, then i_size and the on-disk size are raised to at
  // least pos + persisted and the range is dropped from the cache. No END, no writeback.
  // Errors: EIO a 0-byte reply, one larger than asked, or a range outside `m`; the server's.
  Result<void> InlineWrite(Inode& in, const abi::fuse_iomap_io& m, uint64_t pos,
                           std::span<const std::byte> data);

  UniqueFd requests_, control_;
  ModelOptions options_;
  bool iomap_ = false;
  bool mounted_ = false;
  uint32_t minor_ = 0;
  uint32_t block_size_ = 4096;
  uint64_t max_bytes_ = INT64_MAX;
  uint32_t cache_limit_ = 262144;
  bool end_enabled_ = true;    // cleared when the server answers END with ENOSYS
  bool ioend_enabled_ = true;  // cleared when the server answers IOEND with ENOSYS
  bool frozen_ = false;
  bool fail_data_writes_ = false;
  uint64_t next_unique_ = 2;
  std::map<uint32_t, Backing> backing_;
  uint32_t next_backing_ = 1;
  UniqueFd bpf_prog_;
  std::map<uint64_t, std::unique_ptr<Inode>> inodes_;
  ModelCounters counters_;
  std::vector<std::string> rejections_;
  std::vector<abi::fuse_iomap_dev_inval_out> dev_invals_;
};

}  // namespace iomapfs::kmodel
