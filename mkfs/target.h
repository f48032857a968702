// Target: the file or block device iomapfs-mkfs writes, and the rules that keep a failed run
// from leaving something that looks like a valid filesystem.
//
//   - Image file: built under a temporary name (IMAGE.mkfs-XXXXXX) in the same directory, a
//     fresh sparse file, and renamed over IMAGE by Commit(); Abort() unlinks it.
//   - Block device: opened O_EXCL (which the kernel refuses while it is mounted), its primary
//     superblock area zeroed before anything else is written and again by Abort(); libext2fs
//     writes the primary superblock last, when the build succeeds.
// Either way a target that is mounted (per ext2fs_check_mount_point and /proc/self/mounts, and
// for an image file, a mounted loop device backed by it) is refused.
//
// Thread-safety: single-threaded. Ownership: owns the data fd and the temporary file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/result.h"
#include "base/unique_fd.h"
#include "mkfs/builder.h"

namespace iomapfs::mkfs {

class Target {
 public:
  // Inspects `image` without modifying it.
  // Errors (with *why): EBUSY mounted or in use; EINVAL neither a regular file nor a block
  // device, or its directory is missing; others from stat/open.
  static Result<std::unique_ptr<Target>> Inspect(const std::string& image, std::string* why);

  ~Target();
  Target(const Target&) = delete;
  Target& operator=(const Target&) = delete;

  bool exists() const { return exists_; }
  bool is_device() const { return is_device_; }
  // The size of the device or of the existing file (0 if there is none).
  uint64_t existing_size() const { return existing_size_; }
  // A description of the ext2/3/4 filesystem found on the target ("" if none).
  std::string ExistingFilesystem() const;

  // Creates the temporary file of `size` bytes (image files) or zeroes the device's primary
  // superblock area (devices).
  // Errors: EFBIG size exceeds the device; errors of mkstemp/ftruncate/pwrite, with *why.
  Result<void> Prepare(uint64_t size, std::string* why);
  BuildTarget build_target() const { return build_; }

  // Makes the result durable and visible (fsync, rename, fsync of the directory).
  // Errors: from fsync/rename, with *why; the temporary file is removed on error.
  Result<void> Commit(std::string* why);
  // Undoes Prepare(): unlinks the temporary file or zeroes the device's superblock again.
  void Abort();

 private:
  Target() = default;
  Result<void> ZeroSuperblock(std::string* why);

  std::string image_;
  bool exists_ = false;
  bool is_device_ = false;
  uint64_t existing_size_ = 0;
  mode_t existing_mode_ = 0;
  std::string temp_path_;
  UniqueFd fd_;
  BuildTarget build_;
  bool committed_ = false;
};

}  // namespace iomapfs::mkfs
