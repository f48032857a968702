// Helpers for the read-write mount tests of the server binary: a foreground server whose pid
// the test holds (so it can be killed), superblock counters from dumpe2fs, a read-only kernel
// ext4 view of an image, and a metadata walk of a directory tree.
//
// Every helper that mounts, attaches a loop device or starts a process undoes it on
// destruction, pass or fail. REQUIRES: root for anything that mounts.
// Thread-safety: none; each object belongs to one test.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace iomapfs::testing {

// `iomapfs IMAGE MNT -f -o OPTIONS` as a child process.
class ForegroundServer {
 public:
  ForegroundServer() = default;
  // Kills a server still running (SIGKILL, by pid) and lazily unmounts its mount point.
  ~ForegroundServer();
  ForegroundServer(const ForegroundServer&) = delete;
  ForegroundServer& operator=(const ForegroundServer&) = delete;

  // Starts the server and waits (up to 10 s) for the mount to appear.
  // Returns: "" once mounted, else why not (with the server's output).
  std::string Start(const std::string& binary, const std::string& image,
                    const std::string& mountpoint, const std::string& options);
  pid_t pid() const { return pid_; }
  // Sends `sig` and waits for the process. Returns: its wait status, or -1 if it was not running.
  int KillAndWait(int sig);
  // Unmounts (umount(2)) and waits up to 20 s for the server to exit.
  // Returns: "" if it exited 0, else what happened.
  std::string Unmount();
  // What the server printed so far (stdout and stderr).
  std::string Output() const;

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string mountpoint_;
};

// The value of `field` in `dumpe2fs -h image` ("Free blocks"), or "" if absent.
std::string SuperblockField(const std::string& image, const std::string& field);
uint64_t SuperblockCount(const std::string& image, const std::string& field);

// Attaches `image` to a read-only loop device, mounts it read-only with kernel ext4 at
// `mountpoint`, runs `fn(mountpoint)`, and unmounts and detaches whatever happens.
// Returns: "" or why the kernel mount failed.
std::string WithKernelMount(const std::string& image, const std::string& mountpoint,
                            const std::function<void(const std::string&)>& fn);

// Per path below `root` (relative, sorted): type, permission bits, owner, size (not for
// directories, whose size depends on the filesystem's block size), mtime in ns, symlink target.
// The root itself is left out. Unreadable entries get an "error ..." value.
std::map<std::string, std::string> TreeMetadata(const std::string& root);
// The differences between two TreeMetadata() maps, one line each, at most `max` lines.
std::string DiffTreeMetadata(const std::map<std::string, std::string>& expected,
                             const std::map<std::string, std::string>& actual, size_t max = 20);

}  // namespace iomapfs::testing
