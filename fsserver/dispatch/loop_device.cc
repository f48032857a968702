#include "fsserver/dispatch/loop_device.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>

namespace iomapfs::dispatch {

Result<UniqueFd> AttachLoop(int image_fd, bool read_only, std::string* path) {
  UniqueFd ctl(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (!ctl.valid()) return Unexpected(errno);
  for (int attempt = 0; attempt < 8; ++attempt) {
    int n = ::ioctl(ctl.get(), LOOP_CTL_GET_FREE);
    if (n < 0) return Unexpected(errno);
    *path = "/dev/loop" + std::to_string(n);
    UniqueFd loop(::open(path->c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
    if (!loop.valid()) return Unexpected(errno);
    // LOOP_CONFIGURE (Linux 5.8) sets the backing file and flags in one step; autoclear takes
    // effect once `loop` (the last opener) is closed.
    loop_config cfg{};
    cfg.fd = static_cast<uint32_t>(image_fd);
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0);
    if (::ioctl(loop.get(), LOOP_CONFIGURE, &cfg) == 0) return loop;
    if (errno != EBUSY) return Unexpected(errno);  // EBUSY: another user took it first
  }
  return Unexpected(EBUSY);
}

}  // namespace iomapfs::dispatch
