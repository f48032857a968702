#include "mkfs/source_tree.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "base/unique_fd.h"

namespace iomapfs::mkfs {
namespace {

Result<void> Fail(int err, const std::string& what, const std::string& path, std::string* why) {
  *why = "cannot " + what + " " + path + ": " + strerror(err);
  return Unexpected(err);
}

Result<void> ReadXattrs(SourceNode* node, std::string* why) {
  std::string names;
  for (;;) {
    ssize_t n = llistxattr(node->path.c_str(), nullptr, 0);
    if (n < 0) {
      if (errno == ENOTSUP) return {};
      return Fail(errno, "list xattrs of", node->path, why);
    }
    names.resize(static_cast<size_t>(n));
    n = llistxattr(node->path.c_str(), names.data(), names.size());
    if (n < 0 && errno == ERANGE) continue;
    if (n < 0) return Fail(errno, "list xattrs of", node->path, why);
    names.resize(static_cast<size_t>(n));
    break;
  }
  for (size_t pos = 0; pos < names.size();) {
    std::string name(names.c_str() + pos);
    pos += name.size() + 1;
    if (name.empty()) continue;
    std::string value;
    for (;;) {
      ssize_t n = lgetxattr(node->path.c_str(), name.c_str(), nullptr, 0);
      if (n < 0) return Fail(errno, "read xattr " + name + " of", node->path, why);
      value.resize(static_cast<size_t>(n));
      n = lgetxattr(node->path.c_str(), name.c_str(), value.data(), value.size());
      if (n < 0 && errno == ERANGE) continue;
      if (n < 0) return Fail(errno, "read xattr " + name + " of", node->path, why);
      value.resize(static_cast<size_t>(n));
      break;
    }
    node->xattrs.emplace_back(std::move(name), std::move(value));
  }
  std::sort(node->xattrs.begin(), node->xattrs.end());
  return {};
}

}  // namespace

int OpenSource(const std::string& path, int extra_flags) {
  int flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | extra_flags;
  int fd = open(path.c_str(), flags | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = open(path.c_str(), flags);
  return fd;
}

namespace {

// Finds the data ranges of a regular file with SEEK_DATA/SEEK_HOLE. Also proves the file can
// be opened for reading, so that an unreadable file fails the scan, before any image exists.
Result<void> ReadDataRanges(SourceNode* node, std::string* why) {
  UniqueFd fd(OpenSource(node->path, 0));
  if (!fd.valid()) return Fail(errno, "open", node->path, why);
  const uint64_t size = static_cast<uint64_t>(node->st.st_size);
  uint64_t pos = 0;
  while (pos < size) {
    off_t data = lseek(fd.get(), static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;                  // no more data: the rest is a hole
      if (errno == EINVAL || errno == ENOTSUP) {  // no SEEK_DATA support: all data
        node->data.push_back({pos, size - pos});
        break;
      }
      return Fail(errno, "seek in", node->path, why);
    }
    off_t hole = lseek(fd.get(), data, SEEK_HOLE);
    if (hole < 0) return Fail(errno, "seek in", node->path, why);
    uint64_t end = std::min<uint64_t>(static_cast<uint64_t>(hole), size);
    if (end > static_cast<uint64_t>(data)) {
      node->data.push_back({static_cast<uint64_t>(data), end - static_cast<uint64_t>(data)});
    }
    pos = static_cast<uint64_t>(hole);
  }
  // Prove readability (a file can open but fail to read, e.g. on some special filesystems).
  if (!node->data.empty()) {
    char byte;
    if (pread(fd.get(), &byte, 1, static_cast<off_t>(node->data[0].offset)) < 0) {
      return Fail(errno, "read", node->path, why);
    }
  }
  return {};
}

}  // namespace

Result<SourceTree> ScanSourceTree(const std::string& root, std::string* why) {
  SourceTree tree;
  std::map<std::pair<dev_t, ino_t>, size_t> seen;

  SourceNode root_node;
  root_node.path = root;
  if (stat(root.c_str(), &root_node.st) != 0) {
    IOMAPFS_TRY(Fail(errno, "stat", root, why));
  }
  if (!S_ISDIR(root_node.st.st_mode)) {
    *why = "-d " + root + ": not a directory";
    return Unexpected(ENOTDIR);
  }
  tree.nodes.push_back(std::move(root_node));

  // Depth-first, in sorted order, so that node indices follow the order of the final image.
  std::vector<size_t> stack = {0};
  while (!stack.empty()) {
    size_t idx = stack.back();
    stack.pop_back();
    {
      SourceNode& node = tree.nodes[idx];
      struct statx stx {};
      if (statx(AT_FDCWD, node.path.c_str(), AT_SYMLINK_NOFOLLOW, STATX_BTIME, &stx) == 0 &&
          (stx.stx_mask & STATX_BTIME)) {
        node.has_btime = true;
        node.btime_sec = stx.stx_btime.tv_sec;
        node.btime_nsec = stx.stx_btime.tv_nsec;
      }
      IOMAPFS_TRY(ReadXattrs(&node, why));
      if (S_ISLNK(node.st.st_mode)) {
        std::string target(static_cast<size_t>(node.st.st_size) + 1, '\0');
        ssize_t n = readlink(node.path.c_str(), target.data(), target.size());
        if (n < 0) IOMAPFS_TRY(Fail(errno, "read symlink", node.path, why));
        target.resize(static_cast<size_t>(n));
        node.symlink_target = std::move(target);
        // readlink(2) may have just updated the link's atime (relatime): record the times
        // after it, so that a second run over the same tree sees the same values.
        if (lstat(node.path.c_str(), &node.st) != 0) {
          IOMAPFS_TRY(Fail(errno, "stat", node.path, why));
        }
      }
    }
    if (idx != 0) {
      SourceNode& node = tree.nodes[idx];
      if (!S_ISDIR(node.st.st_mode) && node.st.st_nlink > 1) {
        auto [it, inserted] = seen.emplace(std::make_pair(node.st.st_dev, node.st.st_ino), idx);
        node.link_target = it->second;
        if (!inserted) {
          tree.nodes[it->second].tree_links++;
          continue;  // a second name: no inode, no data of its own
        }
      } else {
        node.link_target = idx;
      }
      tree.distinct_inodes++;
      if (S_ISREG(node.st.st_mode)) {
        IOMAPFS_TRY(ReadDataRanges(&node, why));
        tree.regular_files++;
        for (const DataRange& r : node.data) tree.data_bytes += r.length;
      }
    }
    if (!S_ISDIR(tree.nodes[idx].st.st_mode)) continue;

    const std::string dir_path = tree.nodes[idx].path;
    // The root may be a symlink to a directory (stat, not lstat, above): follow it there only.
    int dir_fd = idx == 0 ? open(dir_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                          : OpenSource(dir_path, O_DIRECTORY);
    DIR* dir = dir_fd >= 0 ? fdopendir(dir_fd) : nullptr;
    if (dir == nullptr) {
      int err = errno;
      if (dir_fd >= 0) close(dir_fd);
      IOMAPFS_TRY(Fail(err, "open directory", dir_path, why));
    }
    std::vector<std::string> names;
    errno = 0;
    while (dirent* de = readdir(dir)) {
      if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
      names.emplace_back(de->d_name);
    }
    int read_err = errno;
    closedir(dir);
    if (read_err != 0) IOMAPFS_TRY(Fail(read_err, "read directory", dir_path, why));
    std::sort(names.begin(), names.end());
    std::vector<size_t> kids;
    for (std::string& name : names) {
      SourceNode child;
      child.path = dir_path + "/" + name;
      child.name = std::move(name);
      if (lstat(child.path.c_str(), &child.st) != 0) {
        IOMAPFS_TRY(Fail(errno, "stat", child.path, why));
      }
      kids.push_back(tree.nodes.size());
      tree.nodes.push_back(std::move(child));
    }
    tree.nodes[idx].children = kids;
    for (auto it = kids.rbegin(); it != kids.rend(); ++it) stack.push_back(*it);
  }
  return tree;
}

}  // namespace iomapfs::mkfs
