// Dispatcher: the one opcode-indexed table from decoded FUSE requests to filesystem operations.
// It decodes (wire), calls ext4::Filesystem, encodes the reply and sends it to the sink the
// request came from. Transports share it; none has a table of its own.
//
// Connection state negotiated at INIT (protocol minor, flags, max_write) lives here.
// Thread-safety: Handle() runs concurrently on every worker thread. INIT is the first request
// the kernel sends and no other arrives before its reply, so negotiated state is written once
// before any concurrent reader (published with release/acquire).
// Ownership: borrows the Filesystem, which must outlive the Dispatcher.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "fsserver/dispatch/handler.h"
#include "fsserver/dispatch/iomap_handler.h"
#include "fsserver/ext4/filesystem.h"
#include "fsserver/wire/fuse_abi.h"

namespace iomapfs::dispatch {

struct DispatcherOptions {
  bool read_only = true;
  bool debug = false;  // log every request and its result
  // Negotiate FUSE_POSIX_ACL: the kernel then enforces POSIX ACLs itself, which turns on
  // default_permissions (fs/fuse/inode.c process_init_reply). Off under fakeroot, where the
  // kernel must not check permissions with the caller's real credentials; FUSE_DONT_MASK is
  // negotiated instead, so the server still applies the umask or the parent's default ACL.
  bool posix_acl = true;
  // How long the kernel may cache entries and attributes. Long for read-only images, since
  // nothing changes them behind the kernel's back.
  uint32_t entry_timeout_sec = 3600;
  uint32_t attr_timeout_sec = 3600;
  // Largest WRITE payload / READ size negotiated (FUSE_MAX_PAGES; the kernel clamps to its
  // fs.fuse.max_pages_limit).
  uint32_t max_io_bytes = 1u << 20;
  // Negotiate FUSE_WRITEBACK_CACHE on a read-write classic-mode connection (never read-only,
  // never with fuse-iomap, where the kernel moves the data itself). The kernel then buffers
  // write(2) in its page cache and owns i_size, mtime and ctime of open regular files: it sends
  // WRITE later (writeback, fsync, close, unmount), possibly past the image's EOF, from any
  // handle, and SETATTR with its own FATTR_MTIME/FATTR_CTIME. See README "Writeback cache".
  bool writeback_cache = false;
  // Request worker threads serving this dispatcher. With the writeback cache a worker may block
  // while the kernel writes a file's dirty pages back to the others (Context::FlushKernelCache),
  // so at most workers - 1 do that at once.
  int workers = 4;
  // fuse-iomap mode, used when the kernel offers FUSE_IOMAP (iomap_handler.h).
  IomapOptions iomap;
};

// Counters for tests and debugging.
struct DispatchStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> decode_errors{0};
  std::atomic<uint64_t> unknown_opcodes{0};
};

class Dispatcher final : public RequestHandler {
 public:
  Dispatcher(ext4::Filesystem& fs, const DispatcherOptions& options);
  ~Dispatcher() override;

  void Handle(std::span<const std::byte> msg, ReplySink& sink) override;
  size_t MaxRequestSize() const override;

  // True once INIT was answered; the negotiated protocol minor (0 before).
  bool initialized() const { return minor_.load(std::memory_order_acquire) != 0; }
  uint32_t minor() const { return minor_.load(std::memory_order_acquire); }
  uint64_t init_flags() const { return init_flags_.load(std::memory_order_acquire); }
  // True once INIT negotiated FUSE_WRITEBACK_CACHE.
  bool writeback_cache() const { return (init_flags() & abi::FUSE_WRITEBACK_CACHE) != 0; }
  bool destroyed() const { return destroyed_.load(); }
  // True once SHUTDOWN_FS was handled (iomap spec §8): from then on every request answers EIO
  // except those that tear the mount down (FORGET, BATCH_FORGET, RELEASE, RELEASEDIR, FLUSH,
  // DESTROY, INTERRUPT) and UNFREEZE_FS. Those still run, so that the kernel can unmount and the
  // server's teardown (orphans freed at the last FORGET, the superblock state at close) leaves
  // a consistent image; metadata was flushed when the shutdown was handled.
  bool shut_down() const { return shut_down_.load(std::memory_order_acquire); }
  const DispatchStats& stats() const { return stats_; }
  // The fuse-iomap side (enabled() once INIT negotiated FUSE_IOMAP).
  const IomapHandler& iomap() const { return *iomap_; }

 private:
  struct Context;

  ext4::Filesystem& fs_;
  DispatcherOptions options_;
  std::atomic<uint32_t> minor_{0};
  std::atomic<uint64_t> init_flags_{0};  // flags we enabled (offered by the kernel and wanted)
  std::atomic<bool> destroyed_{false};
  std::atomic<bool> shut_down_{false};
  std::atomic<int> flushing_{0};  // workers waiting in FlushKernelCache()
  DispatchStats stats_;
  std::unique_ptr<IomapHandler> iomap_;
};

}  // namespace iomapfs::dispatch
