// BlockDevice: file data I/O against the image, at filesystem-relative byte addresses.
//
// This is the data path's seam: it never takes the metadata lock, and tests may substitute a
// fault-injecting implementation. Addresses are bytes from the start of the filesystem; the
// partition offset is added here.
//
// Thread-safety: ReadAt/WriteAt may run concurrently from any thread (pread/pwrite).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/result.h"
#include "base/unique_fd.h"

namespace iomapfs::ext2 {

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;
  // Reads exactly buf.size() bytes at `addr`.
  // Errors: EIO on a device error or a short read (the address is past the end of the device).
  virtual Result<void> ReadAt(std::span<std::byte> buf, uint64_t addr) = 0;
  // Writes exactly buf.size() bytes at `addr`. Errors: EIO, ENOSPC.
  virtual Result<void> WriteAt(std::span<const std::byte> buf, uint64_t addr) = 0;
  // Makes written data durable (fdatasync).
  virtual Result<void> Flush() = 0;
  // Size of the filesystem's region of the device in bytes (device size minus offset).
  virtual uint64_t size() const = 0;
};

// The BlockDevice over a file descriptor (image file or block device).
class FdBlockDevice final : public BlockDevice {
 public:
  FdBlockDevice(UniqueFd fd, uint64_t offset, uint64_t size)
      : fd_(std::move(fd)), offset_(offset), size_(size) {}
  Result<void> ReadAt(std::span<std::byte> buf, uint64_t addr) override;
  Result<void> WriteAt(std::span<const std::byte> buf, uint64_t addr) override;
  Result<void> Flush() override;
  uint64_t size() const override { return size_; }
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
  uint64_t offset_;
  uint64_t size_;
};

}  // namespace iomapfs::ext2
