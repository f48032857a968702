#include "ext2/block_device.h"

#include <unistd.h>

namespace iomapfs::ext2 {

Result<void> FdBlockDevice::ReadAt(std::span<std::byte> buf, uint64_t addr) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pread(fd_.get(), buf.data() + done, buf.size() - done,
                        static_cast<off_t>(offset_ + addr + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Unexpected(EIO);
    }
    if (n == 0) return Unexpected(EIO);  // mapped past the end of the device
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<void> FdBlockDevice::WriteAt(std::span<const std::byte> buf, uint64_t addr) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pwrite(fd_.get(), buf.data() + done, buf.size() - done,
                         static_cast<off_t>(offset_ + addr + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Unexpected(errno == ENOSPC ? ENOSPC : EIO);
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<void> FdBlockDevice::Flush() {
  if (::fdatasync(fd_.get()) != 0) return Unexpected(EIO);
  return {};
}

}  // namespace iomapfs::ext2
