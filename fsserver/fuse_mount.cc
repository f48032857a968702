#include "fsserver/fuse_mount.h"

#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#define FUSE_USE_VERSION 314
#include <fuse3/fuse_lowlevel.h>

namespace iomapfs {
namespace {

// Escapes ',' and '\' for a libfuse -o value (fsname=...).
std::string EscapeOptValue(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// The generic flags libfuse's lib/mount.c accepts (its mount_flags table) that a MountSpec may
// carry: {name, flag, set (1) or clear (0)}.
struct FlagOption {
  const char* name;
  unsigned long flag;
  bool set;
};
constexpr FlagOption kFlagOptions[] = {
    {"suid", MS_NOSUID, false},    {"nosuid", MS_NOSUID, true}, {"dev", MS_NODEV, false},
    {"nodev", MS_NODEV, true},     {"exec", MS_NOEXEC, false},  {"noexec", MS_NOEXEC, true},
    {"noatime", MS_NOATIME, true},
};

}  // namespace

struct FuseMount::Impl {
  enum class Kind { kLibfuse, kDirect, kAdopted } kind = Kind::kLibfuse;
  fuse_session* se = nullptr;  // kLibfuse
  UniqueFd dev;                // kDirect
  int fd = -1;
  std::string mountpoint;  // kDirect
  bool mounted = false;
};

FuseMount::FuseMount(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

FuseMount::~FuseMount() {
  Unmount();
  if (impl_->se != nullptr) fuse_session_destroy(impl_->se);
}

Result<std::unique_ptr<FuseMount>> FuseMount::MountWithLibfuse(const std::string& mountpoint,
                                                               const MountSpec& spec) {
  std::string options = std::string(spec.read_only ? "ro" : "rw") +
                        (spec.default_permissions ? ",default_permissions" : "") +
                        ",subtype=" + spec.subtype + ",fsname=" + EscapeOptValue(spec.source);
  for (const std::string& f : spec.flags) options += "," + f;
  if (spec.allow_other) options += ",allow_other";
  std::string opt_arg = "-o" + options;
  const char* argv[] = {"iomapfs", opt_arg.c_str()};
  fuse_args args = FUSE_ARGS_INIT(2, const_cast<char**>(argv));
  fuse_lowlevel_ops no_ops{};
  auto impl = std::make_unique<Impl>();
  impl->se = fuse_session_new(&args, &no_ops, sizeof(no_ops), nullptr);
  if (impl->se == nullptr) return Unexpected(EINVAL);
  if (fuse_session_mount(impl->se, mountpoint.c_str()) != 0) {
    fuse_session_destroy(impl->se);
    return Unexpected(EIO);
  }
  impl->fd = fuse_session_fd(impl->se);
  impl->mounted = true;
  return std::unique_ptr<FuseMount>(new FuseMount(std::move(impl)));
}

std::string FuseMount::KernelOptions(const MountSpec& spec, int fd, unsigned root_mode) {
  // libfuse's kernel_opts: the fuse options in command-line order, then its own
  // "fd=%i,rootmode=%o,user_id=%u,group_id=%u" (fuse_mount_sys). The kernel shows them in its
  // own order (fuse_show_options), so only the set matters for the mount table.
  std::string data;
  if (spec.default_permissions) data += "default_permissions,";
  if (spec.allow_other) data += "allow_other,";
  char tail[128];
  snprintf(tail, sizeof(tail), "fd=%d,rootmode=%o,user_id=%u,group_id=%u", fd, root_mode & S_IFMT,
           static_cast<unsigned>(getuid()), static_cast<unsigned>(getgid()));
  return data + tail;
}

unsigned long FuseMount::MountFlags(const MountSpec& spec) {
  unsigned long flags = MS_NOSUID | MS_NODEV;  // libfuse's defaults (fuse_kern_mount)
  if (spec.read_only) flags |= MS_RDONLY;
  for (const std::string& f : spec.flags) {
    for (const FlagOption& o : kFlagOptions) {
      if (f != o.name) continue;
      flags = o.set ? (flags | o.flag) : (flags & ~o.flag);
    }
  }
  return flags;
}

Result<std::unique_ptr<FuseMount>> FuseMount::MountDirect(const std::string& mountpoint,
                                                          const MountSpec& spec, UniqueFd dev) {
  struct stat st {};
  if (::stat(mountpoint.c_str(), &st) != 0) return Unexpected(errno);
  const std::string data = KernelOptions(spec, dev.get(), st.st_mode);
  const std::string type = "fuse." + spec.subtype;
  const std::string& source = spec.source.empty() ? spec.subtype : spec.source;
  if (::mount(source.c_str(), mountpoint.c_str(), type.c_str(), MountFlags(spec), data.c_str()) !=
      0) {
    return Unexpected(errno);
  }
  auto impl = std::make_unique<Impl>();
  impl->kind = Impl::Kind::kDirect;
  impl->fd = dev.get();
  impl->dev = std::move(dev);
  impl->mountpoint = mountpoint;
  impl->mounted = true;
  return std::unique_ptr<FuseMount>(new FuseMount(std::move(impl)));
}

std::unique_ptr<FuseMount> FuseMount::Adopt(int fd) {
  auto impl = std::make_unique<Impl>();
  impl->kind = Impl::Kind::kAdopted;
  impl->fd = fd;
  return std::unique_ptr<FuseMount>(new FuseMount(std::move(impl)));
}

int FuseMount::fd() const { return impl_->fd; }

bool FuseMount::owns_mount() const { return impl_->kind != Impl::Kind::kAdopted; }

void FuseMount::Unmount() {
  if (!impl_->mounted) return;
  impl_->mounted = false;
  if (impl_->kind == Impl::Kind::kLibfuse) {
    fuse_session_unmount(impl_->se);
  } else if (impl_->kind == Impl::Kind::kDirect) {
    // As libfuse does for root (fuse_kern_unmount): nothing if the connection is already gone
    // (POLLERR: unmounted or aborted, and the path may now hold another mount), else a lazy
    // unmount; the kernel sends DESTROY once the mount is no longer busy.
    pollfd pfd{impl_->fd, 0, 0};
    if (::poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR) != 0) return;
    (void)::umount2(impl_->mountpoint.c_str(), MNT_DETACH);
  }
}

const char* LibfuseVersion() { return fuse_pkgversion(); }

}  // namespace iomapfs
