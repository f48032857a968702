// ReplySink: where the bytes of one reply (or notification) go. The transport implements it:
// a /dev/fuse fd (replies must go to the fd the request was read from), a socketpair end for
// the kernel model, later an io_uring entry.
//
// Thread-safety: Send() may be called from the thread handling the request; implementations
// that are shared between threads serialize internally.
#pragma once

#include <sys/uio.h>

#include <span>

#include "base/result.h"
#include "fsserver/dispatch/kernel_control.h"

namespace iomapfs::dispatch {

class ReplySink {
 public:
  virtual ~ReplySink() = default;
  // Writes one whole message (fuse_out_header + body) gathered from `iov`.
  // Errors: ENOENT (the request was interrupted or aborted: not a failure), ENODEV (the
  // connection is gone), EINVAL (the kernel rejected the message).
  virtual Result<void> Send(std::span<const iovec> iov) = 0;
  // The out-of-band control path of the connection this sink belongs to (notifications,
  // backing-device and BPF registration), or nullptr if the transport has none (tests).
  virtual KernelControl* control() { return nullptr; }
};

}  // namespace iomapfs::dispatch
