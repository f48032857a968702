// AttachLoop: puts an image file on a free loop device, for iomap mode on an image that is not
// a block device (spec/fuse-iomap-protocol.md §1.4, §14.1: only block devices can be registered
// with BACKING_OPEN; fuse4fs uses a loop-device helper the same way).
//
// The device is configured with LO_FLAGS_AUTOCLEAR: the kernel detaches it when its last open
// fd is closed, so the returned fd owns the device and nothing is left behind after a crash.
// Thread-safety: safe to call from any thread (the kernel serialises LOOP_CTL_GET_FREE and
// LOOP_CONFIGURE; a lost race is retried). Ownership: the caller owns the returned fd.
#pragma once

#include <string>

#include "base/result.h"
#include "base/unique_fd.h"

namespace iomapfs::dispatch {

// Attaches `image_fd` (a regular file) to a free loop device and opens it: O_RDONLY with
// LO_FLAGS_READ_ONLY if `read_only`, else O_RDWR. *path gets the device's name (/dev/loopN).
// Returns: the open loop device. Errors: ENOENT (no /dev/loop-control), EACCES/EPERM (not
// root), EBADF (bad image_fd), EBUSY (lost the race for a free device 8 times), other
// open(2)/ioctl(2) errors.
Result<UniqueFd> AttachLoop(int image_fd, bool read_only, std::string* path);

}  // namespace iomapfs::dispatch
