// FuseMount: the mount a server serves, made in one of three ways.
//
//   Libfuse   libfuse3's fuse_session_mount: mount(2) for root, the setuid fusermount3 helper
//             for everyone else (the unprivileged path). Nothing else of libfuse is used.
//   Direct    our own mount(2) of a /dev/fuse fd the caller opened, so that the caller can
//             prepare the fd first (FUSE_DEV_IOC_SYNC_INIT, FUSE_DEV_IOC_ADD_IOMAP) and start
//             its reader before mount(2) (spec/fuse-mainline-7.45-and-io-uring.md §7.2). Needs
//             CAP_SYS_ADMIN. The source, type and options are the ones libfuse would use, so
//             the mount table entry looks the same either way.
//   Adopted   an fd a privileged helper already mounted and passed as /dev/fd/N (libfuse's
//             convention); the helper owns the mount, so Unmount() does nothing.
//
// Kept in its own translation unit because libfuse's headers and the pinned FUSE ABI
// (fsserver/wire/fuse_abi.h) define the same names.
// Thread-safety: one controlling thread. Ownership: owns the /dev/fuse fd of Libfuse and Direct
// mounts (closed on destruction); borrows an adopted one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"

namespace iomapfs {

// What to mount, independent of how.
struct MountSpec {
  std::string source;               // fsname: shown as the mount's source (the image path)
  std::string subtype = "iomapfs";  // the type becomes fuse.<subtype>
  bool read_only = true;            // ro / rw
  bool default_permissions = true;  // the kernel checks permissions from the attributes
  bool allow_other = false;         // other users may access the mount
  // Generic mount flags in command-line order, the last one winning: nodev, nosuid, noexec, dev,
  // suid, exec, noatime. As in libfuse, nosuid and nodev hold unless suid / dev are given.
  std::vector<std::string> flags;
};

class FuseMount {
 public:
  // Mounts through libfuse (mount(2) as root, fusermount3 otherwise).
  // Errors: EINVAL (options libfuse rejects), EIO (the mount failed; libfuse printed why).
  static Result<std::unique_ptr<FuseMount>> MountWithLibfuse(const std::string& mountpoint,
                                                             const MountSpec& spec);

  // mount(2)s the unbound /dev/fuse fd `dev` at `mountpoint` with "fd=N,rootmode=...,
  // user_id=...,group_id=..." plus the spec's options, as libfuse's fuse_mount_sys does. If the
  // fd was marked with FUSE_DEV_IOC_SYNC_INIT, this returns only after the server answered INIT
  // (a reader must be blocked on `dev`). Takes `dev` in both outcomes (on failure it is closed).
  // Errors: mount(2)'s (EPERM: no CAP_SYS_ADMIN; ENOTCONN: the server failed INIT or its reply
  // was refused; ENOENT, ENOTDIR: bad mountpoint; ENODEV: no fuse filesystem type).
  static Result<std::unique_ptr<FuseMount>> MountDirect(const std::string& mountpoint,
                                                        const MountSpec& spec, UniqueFd dev);

  // Serves an fd already mounted by someone else (not closed by this object).
  static std::unique_ptr<FuseMount> Adopt(int fd);

  ~FuseMount();
  FuseMount(const FuseMount&) = delete;
  FuseMount& operator=(const FuseMount&) = delete;

  // The bound /dev/fuse fd of the mount.
  int fd() const;
  // False for an adopted fd: its mount belongs to the helper that made it.
  bool owns_mount() const;
  // Unmounts (lazily for root, through fusermount3 -u otherwise); nothing for an adopted fd.
  // Safe to call twice.
  void Unmount();

  // The mount(2) data string MountDirect uses for `spec` on fd `fd` of a mountpoint of mode
  // `root_mode` (exposed for tests).
  static std::string KernelOptions(const MountSpec& spec, int fd, unsigned root_mode);
  // The mount(2) flags (MS_*) for `spec`.
  static unsigned long MountFlags(const MountSpec& spec);

 private:
  struct Impl;
  explicit FuseMount(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// libfuse's version string, for --version.
const char* LibfuseVersion();

}  // namespace iomapfs
