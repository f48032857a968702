#include "fsserver/fuse_mount.h"

#define FUSE_USE_VERSION 314
#include <fuse3/fuse_lowlevel.h>

namespace iomapfs {

struct FuseMount::Impl {
  fuse_session* se = nullptr;
  bool mounted = false;
};

FuseMount::FuseMount(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

FuseMount::~FuseMount() {
  Unmount();
  fuse_session_destroy(impl_->se);
}

Result<std::unique_ptr<FuseMount>> FuseMount::Mount(const std::string& mountpoint,
                                                    const std::string& options) {
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
  impl->mounted = true;
  return std::unique_ptr<FuseMount>(new FuseMount(std::move(impl)));
}

int FuseMount::fd() const { return fuse_session_fd(impl_->se); }

void FuseMount::Unmount() {
  if (!impl_->mounted) return;
  impl_->mounted = false;
  fuse_session_unmount(impl_->se);
}

Result<void> Daemonize(bool foreground) {
  if (fuse_daemonize(foreground ? 1 : 0) != 0) return Unexpected(EIO);
  return {};
}

const char* LibfuseVersion() { return fuse_pkgversion(); }

}  // namespace iomapfs
