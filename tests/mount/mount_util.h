// Mount-test helpers: loop devices, kernel mounts and iomapfs server mounts as RAII guards, so
// that every loop device and mount a test makes is gone when the test ends, pass or fail.
//
// All functions return an empty string on success and a description of the failure otherwise.
// REQUIRES: root (losetup, mount(2), umount2(2)).
// Thread-safety: none; each guard belongs to one test.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tests/support/test_util.h"
#include "tests/support/tree_gen.h"

namespace iomapfs::testing {

// A loop device over an image file; detached on destruction.
class LoopDevice {
 public:
  LoopDevice() = default;
  ~LoopDevice();
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;

  std::string Attach(const std::string& image, bool read_only, uint64_t offset = 0);
  // Retries while the device is still busy (just after an unmount).
  std::string Detach();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Unmounts `mountpoint` on destruction if Arm()ed: umount, retried while busy, then a lazy
// unmount (MNT_DETACH) as the last resort.
class MountGuard {
 public:
  MountGuard() = default;
  ~MountGuard();
  MountGuard(const MountGuard&) = delete;
  MountGuard& operator=(const MountGuard&) = delete;

  void Arm(const std::string& mountpoint) { mountpoint_ = mountpoint; }
  // Unmounts now. Errors: still busy after retries (then lazily detached) or not mounted.
  std::string Unmount();
  bool armed() const { return !mountpoint_.empty(); }

 private:
  std::string mountpoint_;
};

// mount(2)s `device` as ext4 at `mountpoint` with the `options` data string (e.g.
// "norecovery") and arms `guard`.
std::string KernelMount(const std::string& device, const std::string& mountpoint, bool read_only,
                        MountGuard* guard, const std::string& options = "");

// True if `path` is a mount point (listed in /proc/self/mountinfo); *fs_type gets its type.
bool IsMountPoint(const std::string& path, std::string* fs_type = nullptr);

struct ServerResult {
  int exit_code = -1;  // -1: killed by a signal or timed out
  bool timed_out = false;
  std::string output;  // stdout and stderr of the invoking process
};

// Runs `binary args...` and waits (at most `timeout_seconds`) for the invoking process to exit;
// its output goes to a memfd, so a daemon child that keeps stdout open does not block us.
// A process that outlives the timeout is killed (SIGKILL, by pid).
ServerResult RunServer(const std::string& binary, const std::vector<std::string>& args,
                       int timeout_seconds = 30);

// Pids of running processes started from `binary` with `mountpoint` among their arguments.
std::vector<pid_t> FindServerProcesses(const std::string& binary, const std::string& mountpoint);

// Waits up to `timeout_seconds` for those processes to exit; kills (SIGKILL, by pid) and
// reports any that do not.
std::string WaitServerExit(const std::string& binary, const std::string& mountpoint,
                           int timeout_seconds = 10);

// An iomapfs mount: started in its daemonizing form, unmounted (and its daemon waited for) on
// destruction.
class ServerMount {
 public:
  ServerMount() = default;
  ~ServerMount();
  ServerMount(const ServerMount&) = delete;
  ServerMount& operator=(const ServerMount&) = delete;

  // Runs `binary image mountpoint -o options`; the contract is that it exits 0 once the mount
  // is in place, so the mount is checked right after, without polling.
  std::string Start(const std::string& binary, const std::string& image,
                    const std::string& mountpoint, const std::string& options);
  // Unmounts and waits for the daemon to exit. Errors: unmount failed, daemon still running.
  std::string Stop();
  // The server's output at start.
  const std::string& output() const { return output_; }

 private:
  std::string binary_, mountpoint_, output_;
  MountGuard guard_;
};

// Makes a `size_bytes` sparse image with `mke2fs -t fs_type mkfs_args...`, loop-mounts it with
// kernel ext4, generates the test tree (tree_gen.h) into it, unmounts it and checks it with
// e2fsck -fn. *seconds (if given) gets the time the generation took.
std::string MakeGeneratedImage(const std::string& image, uint64_t size_bytes,
                               const std::string& fs_type,
                               const std::vector<std::string>& mkfs_args,
                               const TreeGenOptions& tree, double* seconds = nullptr);

// Makes, inside `dir`, a 32 MiB ext4 image holding /hello ("hello world\n") and an empty
// directory to mount it on. Returns: an empty string, or what failed.
std::string MakeHelloImage(const TempDir& dir, std::string* image, std::string* mountpoint);

// Why a mount test cannot run here (not root, no /dev/fuse, no loop devices, `binary` null or
// not executable), or an empty string if it can.
std::string MountTestSkipReason(const char* binary);

// Seconds on the monotonic clock.
double Now();

}  // namespace iomapfs::testing
