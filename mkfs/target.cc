#include "mkfs/target.h"

#include <ext2fs/ext2fs.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace iomapfs::mkfs {
namespace {

// The area the primary superblock lives in (bytes 1024..2047), plus the rest of the first 4 KiB,
// as mke2fs's zap_sector(2, 6) does.
constexpr off_t kSuperblockAreaStart = 1024;
constexpr size_t kSuperblockAreaLen = 3072;

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Octal escapes (\040) in /proc/self/mounts fields.
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (size_t j = 1; j <= 3; ++j) {
        char c = s[i + j];
        if (c < '0' || c > '7') ok = false;
        v = v * 8 + (c - '0');
      }
      if (ok) {
        out.push_back(static_cast<char>(v));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// Returns the mount point if a block device with `rdev` is mounted (per /proc/self/mounts).
std::string MountedRdev(dev_t rdev) {
  std::ifstream mounts("/proc/self/mounts");
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string source, mountpoint;
    fields >> source >> mountpoint;
    source = Unescape(source);
    struct stat st {};
    if (source.empty() || source[0] != '/' || stat(source.c_str(), &st) != 0) continue;
    if (S_ISBLK(st.st_mode) && st.st_rdev == rdev) return Unescape(mountpoint);
  }
  return "";
}

// For an image file: the mount point of a mounted loop device backed by it ("" if none).
std::string MountedViaLoop(const struct stat& file) {
  for (int i = 0; i < 256; ++i) {
    std::string dir = "/sys/block/loop" + std::to_string(i);
    std::ifstream backing(dir + "/loop/backing_file");
    if (!backing) continue;
    std::string path;
    std::getline(backing, path);
    struct stat st {};
    if (path.empty() || stat(path.c_str(), &st) != 0) continue;
    if (st.st_dev != file.st_dev || st.st_ino != file.st_ino) continue;
    std::ifstream devfile(dir + "/dev");
    unsigned maj = 0, min = 0;
    char colon;
    if (devfile >> maj >> colon >> min) {
      std::string mp = MountedRdev(makedev(maj, min));
      if (!mp.empty()) return mp + " (through /dev/loop" + std::to_string(i) + ")";
    }
  }
  return "";
}

}  // namespace

Result<std::unique_ptr<Target>> Target::Inspect(const std::string& image, std::string* why) {
  std::unique_ptr<Target> t(new Target());
  t->image_ = image;
  struct stat st {};
  if (stat(image.c_str(), &st) != 0) {
    if (errno != ENOENT) {
      *why = "cannot stat " + image + ": " + strerror(errno);
      return Unexpected(errno);
    }
    struct stat dst {};
    std::string dir = DirName(image);
    if (stat(dir.c_str(), &dst) != 0 || !S_ISDIR(dst.st_mode)) {
      *why = "cannot create " + image + ": directory " + dir + " does not exist";
      return Unexpected(ENOENT);
    }
    return t;
  }
  t->exists_ = true;
  t->existing_mode_ = st.st_mode;
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    *why = image + " is neither a regular file nor a block device";
    return Unexpected(EINVAL);
  }
  t->is_device_ = S_ISBLK(st.st_mode);

  int mount_flags = 0;
  char mtpt[PATH_MAX] = "";
  if (ext2fs_check_mount_point(image.c_str(), &mount_flags, mtpt, sizeof(mtpt)) == 0) {
    if (mount_flags & EXT2_MF_MOUNTED) {
      *why =
          image + " is mounted on " + (mtpt[0] ? mtpt : "?") + "; will not make a filesystem here";
      return Unexpected(EBUSY);
    }
    if (mount_flags & EXT2_MF_BUSY) {
      *why = image + " is in use by the system; will not make a filesystem here";
      return Unexpected(EBUSY);
    }
  }
  std::string where = t->is_device_ ? MountedRdev(st.st_rdev) : MountedViaLoop(st);
  if (!where.empty()) {
    *why = image + " is mounted on " + where + "; will not make a filesystem here";
    return Unexpected(EBUSY);
  }

  if (t->is_device_) {
    // O_EXCL on a block device fails with EBUSY while it is mounted or claimed.
    t->fd_.Reset(open(image.c_str(), O_RDWR | O_EXCL | O_CLOEXEC));
    if (!t->fd_.valid()) {
      int err = errno;
      *why = err == EBUSY ? image + " is in use (mounted or held open exclusively)"
                          : "cannot open " + image + ": " + strerror(err);
      return Unexpected(err);
    }
    uint64_t bytes = 0;
    if (ioctl(t->fd_.get(), BLKGETSIZE64, &bytes) != 0) {
      *why = "cannot get the size of " + image + ": " + strerror(errno);
      return Unexpected(errno);
    }
    t->existing_size_ = bytes;
  } else {
    t->existing_size_ = static_cast<uint64_t>(st.st_size);
  }
  return t;
}

Target::~Target() {
  if (!committed_ && !temp_path_.empty()) unlink(temp_path_.c_str());
}

std::string Target::ExistingFilesystem() const {
  if (!exists_) return "";
  UniqueFd fd(open(image_.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return "";
  ext2_super_block sb{};
  if (pread(fd.get(), &sb, sizeof(sb), SUPERBLOCK_OFFSET) != static_cast<ssize_t>(sizeof(sb))) {
    return "";
  }
  if (sb.s_magic != EXT2_SUPER_MAGIC) return "";
  std::string kind = ext2fs_has_feature_journal(&sb) ? "ext3" : "ext2";
  if (ext2fs_has_feature_extents(&sb) || ext2fs_has_feature_64bit(&sb) ||
      ext2fs_has_feature_flex_bg(&sb)) {
    kind = "ext4";
  }
  std::string label(
      reinterpret_cast<const char*>(sb.s_volume_name),
      strnlen(reinterpret_cast<const char*>(sb.s_volume_name), sizeof(sb.s_volume_name)));
  return kind + " filesystem" + (label.empty() ? "" : " labelled '" + label + "'");
}

Result<void> Target::ZeroSuperblock(std::string* why) {
  static const char zeros[kSuperblockAreaLen] = {};
  if (pwrite(fd_.get(), zeros, sizeof(zeros), kSuperblockAreaStart) !=
          static_cast<ssize_t>(sizeof(zeros)) ||
      fdatasync(fd_.get()) != 0) {
    *why = "cannot clear the old superblock of " + image_ + ": " + strerror(errno);
    return Unexpected(errno ? errno : EIO);
  }
  return {};
}

Result<void> Target::Prepare(uint64_t size, std::string* why) {
  build_.size_bytes = size;
  if (is_device_) {
    if (size > existing_size_) {
      *why = "SIZE " + std::to_string(size) + " is larger than " + image_ + " (" +
             std::to_string(existing_size_) + " bytes)";
      return Unexpected(EFBIG);
    }
    IOMAPFS_TRY(ZeroSuperblock(why));
    build_.path = image_;
    build_.data_fd = fd_.get();
    build_.zeroed = false;
    build_.is_device = true;
    return {};
  }
  std::string tmpl = image_ + ".mkfs-XXXXXX";
  int fd = mkstemp(tmpl.data());
  if (fd < 0) {
    *why = "cannot create a temporary file beside " + image_ + ": " + strerror(errno);
    return Unexpected(errno);
  }
  fd_.Reset(fd);
  temp_path_ = tmpl;
  mode_t mode;
  if (exists_) {
    mode = existing_mode_ & 07777;
  } else {
    mode_t mask = umask(0);
    umask(mask);
    mode = 0666 & ~mask;
  }
  if (fchmod(fd, mode) != 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) {
    *why =
        "cannot size " + temp_path_ + " to " + std::to_string(size) + " bytes: " + strerror(errno);
    return Unexpected(errno);
  }
  build_.path = temp_path_;
  build_.data_fd = fd;
  build_.zeroed = true;
  build_.is_device = false;
  return {};
}

Result<void> Target::Commit(std::string* why) {
  if (fsync(fd_.get()) != 0) {
    *why = "cannot sync " + (temp_path_.empty() ? image_ : temp_path_) + ": " + strerror(errno);
    return Unexpected(errno);
  }
  if (!is_device_) {
    if (rename(temp_path_.c_str(), image_.c_str()) != 0) {
      *why = "cannot rename " + temp_path_ + " to " + image_ + ": " + strerror(errno);
      return Unexpected(errno);
    }
    committed_ = true;
    UniqueFd dir(open(DirName(image_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir.valid()) fsync(dir.get());
  }
  committed_ = true;
  IOMAPFS_TRY(fd_.Close());
  return {};
}

void Target::Abort() {
  if (committed_) return;
  if (is_device_) {
    std::string ignored;
    if (fd_.valid()) (void)ZeroSuperblock(&ignored);
    return;
  }
  if (!temp_path_.empty()) {
    unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

}  // namespace iomapfs::mkfs
