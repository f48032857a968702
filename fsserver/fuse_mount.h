// FuseMount: mounting and unmounting through libfuse3, which knows mount(2) for root and the
// setuid fusermount3 helper for everyone else. Nothing else of libfuse is used: the request
// loop and wire codec are this project's own. Kept in its own translation unit because libfuse's
// headers and the pinned FUSE ABI (fsserver/wire/fuse_abi.h) define the same names.
//
// Thread-safety: one controlling thread. Ownership: owns the libfuse session and its /dev/fuse
// fd (closed on destruction).
#pragma once

#include <memory>
#include <string>

#include "base/result.h"

namespace iomapfs {

class FuseMount {
 public:
  // Mounts a FUSE filesystem at `mountpoint` with the comma-separated mount `options` (kernel
  // and fusermount3 options such as "ro,default_permissions,allow_other,fsname=...").
  // Errors: EINVAL (options libfuse rejects), EIO (the mount failed; libfuse printed why).
  static Result<std::unique_ptr<FuseMount>> Mount(const std::string& mountpoint,
                                                  const std::string& options);
  ~FuseMount();
  FuseMount(const FuseMount&) = delete;
  FuseMount& operator=(const FuseMount&) = delete;

  // The bound /dev/fuse fd of the mount.
  int fd() const;
  // Unmounts (lazily for root, through fusermount3 -u otherwise). Safe to call twice.
  void Unmount();

 private:
  struct Impl;
  explicit FuseMount(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Detaches from the terminal unless `foreground`: forks, and the parent exits 0 once the child
// is set up. Errors: from fork/setsid.
Result<void> Daemonize(bool foreground);

// libfuse's version string, for --version.
const char* LibfuseVersion();

}  // namespace iomapfs
