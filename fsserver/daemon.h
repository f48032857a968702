// Daemon: detaching from the terminal in two steps, so that the invoking process exits only
// once the mount is in place, and with the child's exit code when it is not.
//
// Begin() forks before anything that starts threads (a reader blocked in read(2) must already
// run when mount(2) is called with FUSE_DEV_IOC_SYNC_INIT, and threads do not survive fork).
// The parent waits on a pipe and exits with the status the child reports: 0 from Ready(), the
// code given to Fail(), or 1 if the child dies first. Until Ready() the child still writes to
// the caller's stderr, so mount errors reach the user.
// Thread-safety: one controlling thread. Ownership: owns the status pipe's write end.
#pragma once

#include "base/result.h"
#include "base/unique_fd.h"

namespace iomapfs {

class Daemon {
 public:
  // Forks unless `foreground` (then Ready and Fail only chdir or do nothing). Returns in the
  // child (or the only process); the parent never returns.
  // Errors: from pipe(2), fork(2).
  static Result<Daemon> Begin(bool foreground);

  Daemon(Daemon&&) = default;

  // The child is set up: setsid, chdir("/"), stdin/stdout/stderr to /dev/null; the parent exits
  // 0. In the foreground: chdir("/") only, as libfuse's fuse_daemonize does.
  void Ready();
  // The parent exits with `code` (> 0). Safe to call after Ready (then nothing happens).
  void Fail(int code);

 private:
  explicit Daemon(UniqueFd status) : status_(std::move(status)) {}
  UniqueFd status_;  // write end of the status pipe; invalid in the foreground or once reported
};

}  // namespace iomapfs
