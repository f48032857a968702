// FuseDevChannel: one /dev/fuse file descriptor as a request source and reply sink.
//
// A mounted session has one original fd; each extra worker clones it with FUSE_DEV_IOC_CLONE
// so it gets its own processing queue (spec/fuse-mainline-7.45-and-io-uring.md §6, §9).
// It is also the connection's KernelControl: notifications are written to the fd, backing
// devices are registered with FUSE_DEV_IOC_BACKING_OPEN on it (spec/fuse-iomap-protocol.md §11).
// UNTESTED against a real iomap kernel (none is available here): the ioctl numbers and structs
// follow the spec's v7 ABI.
// Thread-safety: one worker thread reads and replies on a channel; Send(), Notify() and the
// ioctls are also safe from other threads (a single writev is atomic on /dev/fuse).
// Ownership: owns its fd unless constructed with `owned = false` (the session's original fd,
// which libfuse closes).
#pragma once

#include <cstddef>
#include <span>

#include "base/result.h"
#include "base/unique_fd.h"
#include "fsserver/dispatch/kernel_control.h"
#include "fsserver/dispatch/reply_sink.h"

namespace iomapfs::session {

// FUSE_DEV_IOC_IOMAP_SUPPORT on a /dev/fuse fd (spec §1.2), before or after mounting.
// Returns: the FUSE_IOMAP_SUPPORT_* flags (0: iomap not allowed for this fd or caller).
// Errors: ENOTTY (the kernel has no such ioctl: every kernel without fuse-iomap), EBADF.
// UNTESTED against a real iomap kernel; on kernels without the extension it fails cleanly.
Result<uint64_t> DiscoverIomap(int dev_fuse_fd);

// Opens a fresh, unbound /dev/fuse fd (O_RDWR | O_CLOEXEC), for a server that mounts itself.
// Errors: from open(2) (ENOENT: no fuse module; EACCES).
Result<UniqueFd> OpenFuseDevice();

// FUSE_DEV_IOC_SYNC_INIT (spec/fuse-mainline-7.45-and-io-uring.md §6.1) on an unbound fd: the
// mount(2) that binds it then sends INIT (and, in iomap mode, IOMAP_CONFIG) synchronously and
// returns only once the server has answered, so a reader must already be blocked in read(2) on
// the fd. Errors: ENOTTY (kernels before 6.18: INIT stays asynchronous), EINVAL (fd bound).
Result<void> RequestSyncInit(int unbound_fd);

// FUSE_DEV_IOC_ADD_IOMAP (spec/fuse-iomap-protocol.md §1.1, §11.4) on an unbound fd: grants
// iomap to the connection the fd will create. Errors: EPERM (no CAP_SYS_RAWIO), EINVAL (fd
// already bound, or enable_iomap off), ENOTTY (a kernel without fuse-iomap: Linux 6.18 here).
// UNTESTED against a real iomap kernel: only the failure paths run here.
Result<void> AddIomap(int unbound_fd);

// Checks that `fd` is a /dev/fuse fd bound to a live connection (a mount made by someone else,
// passed as /dev/fd/N): it is the fuse character device, and FUSE_DEV_IOC_CLONE from it works.
// Errors: EBADF (not an open fd), ENODEV (not /dev/fuse), ENOTCONN (/dev/fuse but not mounted:
// the clone is refused with EPERM), or the clone's errno.
// REQUIRES: fd was not marked with RequestSyncInit and left unmounted (the clone would block).
Result<void> CheckMountedFuseFd(int fd);

class FuseDevChannel final : public dispatch::ReplySink, public dispatch::KernelControl {
 public:
  // Borrows `fd` (not closed by this object).
  static FuseDevChannel Borrow(int fd) { return FuseDevChannel(fd, UniqueFd()); }
  // Opens /dev/fuse and binds the new fd to the connection of `session_fd`.
  // Errors: from open(2) and ioctl(FUSE_DEV_IOC_CLONE) (EINVAL: session_fd not mounted).
  static Result<FuseDevChannel> Clone(int session_fd);

  FuseDevChannel(FuseDevChannel&&) = default;

  // Blocks for the next request; retries EINTR, EAGAIN and ENOENT (a request interrupted
  // before we read it).
  // Returns: the message length. Errors: ENODEV when the filesystem was unmounted or the
  // connection aborted; EINVAL if buf is too small for the kernel's rule (>= 8192 bytes and
  // >= max_write + 80).
  Result<size_t> Receive(std::span<std::byte> buf);

  Result<void> Send(std::span<const iovec> iov) override;
  dispatch::KernelControl* control() override { return this; }

  // KernelControl: write(2) of the notification; FUSE_DEV_IOC_BACKING_OPEN/CLOSE. AttachBpf is
  // EOPNOTSUPP (the struct_ops hook of the fuse-iomap-bpf branch is not wired to a real kernel).
  Result<void> Notify(std::span<const iovec> iov) override { return Send(iov); }
  Result<uint32_t> BackingOpen(int fd, uint32_t flags) override;
  Result<void> BackingClose(uint32_t backing_id) override;
  Result<void> AttachBpf(int) override { return Unexpected(EOPNOTSUPP); }
  // FUSE_DEV_IOC_IOMAP_SUPPORT / _IOMAP_SET_BLOCKSIZE / _SET_NOFS. UNTESTED against a real iomap
  // kernel: only reached on an iomap connection, which no kernel here offers.
  Result<uint64_t> IomapSupport() override { return DiscoverIomap(fd_); }
  Result<void> SetBlocksize(uint32_t backing_id, uint32_t blocksize) override;
  Result<void> SetNofs(bool on) override;

  int fd() const { return fd_; }

 private:
  FuseDevChannel(int fd, UniqueFd owned) : fd_(fd), owned_(std::move(owned)) {}
  int fd_;
  UniqueFd owned_;
};

}  // namespace iomapfs::session
