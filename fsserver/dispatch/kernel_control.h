// KernelControl: the out-of-band paths from the server to the kernel side of a connection,
// which are not replies: notifications (write(2) of an unsolicited message on /dev/fuse, whose
// return value is the kernel handler's error) and the /dev/fuse device ioctls that register
// backing devices and tune the server's threads (spec/fuse-iomap-protocol.md §11) and attach BPF
// programs (§13.2).
//
// The transport implements it: FuseDevChannel with write(2) and ioctl(2) on the /dev/fuse fd,
// SocketChannel (the kernel model) with synchronous messages on its control socket. A ReplySink
// hands out the KernelControl of the connection a request came from (ReplySink::control()).
//
// Thread-safety: every method may be called from any worker thread; implementations serialize
// internally. Calls are synchronous: when one returns, the kernel side has processed it.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>

#include "base/result.h"

namespace iomapfs::dispatch {

class KernelControl {
 public:
  virtual ~KernelControl() = default;

  // Sends one notification (fuse_out_header with unique 0 and error = the notify code, then the
  // body) and waits for the kernel to process it.
  // Errors: whatever the kernel's notify handler returns (EINVAL malformed or refused, ESTALE
  // uncached inode, EFSCORRUPTED invalid mapping, ENOMEM, ...); ENODEV the connection is gone.
  virtual Result<void> Notify(std::span<const iovec> iov) = 0;

  // FUSE_DEV_IOC_BACKING_OPEN with a fuse_backing_map {fd, flags}. The kernel takes its own
  // reference to the file; the caller may close `fd` afterwards.
  // Returns: the backing id (> 0). Errors: EPERM (iomap not enabled yet), ENODEV (not a block
  // device), EINVAL (bad flags), EBADF, ENOTTY (no such ioctl: not an iomap kernel).
  virtual Result<uint32_t> BackingOpen(int fd, uint32_t flags) = 0;

  // FUSE_DEV_IOC_BACKING_CLOSE. Errors: EBUSY (v7 refuses for iomap devices), ENOENT.
  virtual Result<void> BackingClose(uint32_t backing_id) = 0;

  // FUSE_DEV_IOC_IOMAP_SUPPORT (§1.2, §11.1): what iomap would be allowed on this connection.
  // Returns: FUSE_IOMAP_SUPPORT_FILEIO | FUSE_IOMAP_SUPPORT_ATOMIC bits (0: none).
  // Errors: ENOTTY (no such ioctl: not an iomap kernel).
  virtual Result<uint64_t> IomapSupport() = 0;

  // FUSE_DEV_IOC_IOMAP_SET_BLOCKSIZE (§11.2): sets the soft block size of registered iomap
  // device `backing_id`, so that the server's own buffered I/O through the device cannot leave
  // page-cache pages that straddle file blocks written by iomap.
  // Errors: EOPNOTSUPP (not in iomap mode), ENOENT (unknown id), EINVAL (bad size), ENOTTY.
  virtual Result<void> SetBlocksize(uint32_t backing_id, uint32_t blocksize) = 0;

  // FUSE_DEV_IOC_SET_NOFS (§11.3): on = 1 sets, 0 clears "no filesystem reclaim + local
  // throttle" for the CALLING thread.
  // Errors: EPERM (neither iomap nor CAP_SYS_RESOURCE), EINVAL, ENOTTY.
  virtual Result<void> SetNofs(bool on) = 0;

  // Attaches the per-connection iomap BPF program `prog_fd` (spec §13.2: one program set per
  // connection), replacing any attached before; prog_fd < 0 detaches.
  // Errors: EOPNOTSUPP (the transport has no BPF hook: every real kernel without the
  // fuse-iomap-bpf branch), EBUSY, EBADF.
  virtual Result<void> AttachBpf(int prog_fd) = 0;
};

}  // namespace iomapfs::dispatch
