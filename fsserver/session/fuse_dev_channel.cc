#include "fsserver/session/fuse_dev_channel.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdint>

#include "fsserver/wire/fuse_abi.h"

namespace iomapfs::session {
namespace {
// _IOR(229, 0, uint32_t): spec/fuse-mainline-7.45-and-io-uring.md §6.
constexpr unsigned long kFuseDevIocClone = 0x8004E500;
}  // namespace

Result<FuseDevChannel> FuseDevChannel::Clone(int session_fd) {
  UniqueFd fd(::open("/dev/fuse", O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return Unexpected(errno);
  uint32_t original = static_cast<uint32_t>(session_fd);
  if (::ioctl(fd.get(), kFuseDevIocClone, &original) != 0) return Unexpected(errno);
  int raw = fd.get();
  return FuseDevChannel(raw, std::move(fd));
}

Result<size_t> FuseDevChannel::Receive(std::span<std::byte> buf) {
  for (;;) {
    ssize_t n = ::read(fd_, buf.data(), buf.size());
    if (n >= 0) return static_cast<size_t>(n);
    int err = errno;
    if (err == EINTR || err == EAGAIN || err == ENOENT) continue;
    if (err == ECONNABORTED) return Unexpected(ENODEV);
    return Unexpected(err);
  }
}

Result<void> FuseDevChannel::Send(std::span<const iovec> iov) {
  for (;;) {
    ssize_t n = ::writev(fd_, iov.data(), static_cast<int>(iov.size()));
    if (n >= 0) return {};
    if (errno == EINTR) continue;
    return Unexpected(errno);
  }
}

Result<uint32_t> FuseDevChannel::BackingOpen(int fd, uint32_t flags) {
  abi::fuse_backing_map map{};
  map.fd = fd;
  map.flags = flags;
  int id = ::ioctl(fd_, abi::FUSE_DEV_IOC_BACKING_OPEN, &map);
  if (id < 0) return Unexpected(errno);
  return static_cast<uint32_t>(id);
}

Result<void> FuseDevChannel::BackingClose(uint32_t backing_id) {
  if (::ioctl(fd_, abi::FUSE_DEV_IOC_BACKING_CLOSE, &backing_id) != 0) return Unexpected(errno);
  return {};
}

Result<uint64_t> DiscoverIomap(int dev_fuse_fd) {
  abi::fuse_iomap_support support{};
  if (::ioctl(dev_fuse_fd, abi::FUSE_DEV_IOC_IOMAP_SUPPORT, &support) != 0) {
    return Unexpected(errno);
  }
  return support.flags;
}

Result<UniqueFd> OpenFuseDevice() {
  UniqueFd fd(::open("/dev/fuse", O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return Unexpected(errno);
  return fd;
}

Result<void> RequestSyncInit(int unbound_fd) {
  if (::ioctl(unbound_fd, abi::FUSE_DEV_IOC_SYNC_INIT) != 0) return Unexpected(errno);
  return {};
}

Result<void> AddIomap(int unbound_fd) {
  if (::ioctl(unbound_fd, abi::FUSE_DEV_IOC_ADD_IOMAP) != 0) return Unexpected(errno);
  return {};
}

Result<void> CheckMountedFuseFd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Unexpected(errno);
  // /dev/fuse is the misc character device 10:229 (Documentation/admin-guide/devices.txt).
  if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != 10 || minor(st.st_rdev) != 229) {
    return Unexpected(ENODEV);
  }
  Result<FuseDevChannel> clone = FuseDevChannel::Clone(fd);
  if (!clone) return Unexpected(clone.error() == EPERM ? ENOTCONN : clone.error());
  return {};
}

Result<void> FuseDevChannel::SetBlocksize(uint32_t backing_id, uint32_t blocksize) {
  abi::fuse_iomap_backing_info info{backing_id, blocksize};
  if (::ioctl(fd_, abi::FUSE_DEV_IOC_IOMAP_SET_BLOCKSIZE, &info) != 0) return Unexpected(errno);
  return {};
}

Result<void> FuseDevChannel::SetNofs(bool on) {
  uint32_t v = on ? 1 : 0;
  if (::ioctl(fd_, abi::FUSE_DEV_IOC_SET_NOFS, &v) != 0) return Unexpected(errno);
  return {};
}

}  // namespace iomapfs::session
