#include "tests/fsserver/rw_mount_util.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::testing {
namespace {

void SleepMs(int ms) {
  timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, nullptr);
}

}  // namespace

ForegroundServer::~ForegroundServer() {
  if (pid_ > 0) KillAndWait(SIGKILL);
  if (!mountpoint_.empty() && IsMountPoint(mountpoint_)) umount2(mountpoint_.c_str(), MNT_DETACH);
  if (out_fd_ >= 0) close(out_fd_);
}

std::string ForegroundServer::Start(const std::string& binary, const std::string& image,
                                    const std::string& mountpoint, const std::string& options) {
  mountpoint_ = mountpoint;
  out_fd_ = memfd_create("iomapfs-fg-output", MFD_CLOEXEC);
  if (out_fd_ < 0) return std::string("memfd_create: ") + strerror(errno);
  pid_ = fork();
  if (pid_ < 0) return std::string("fork: ") + strerror(errno);
  if (pid_ == 0) {
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out_fd_, 1);
    dup2(out_fd_, 2);
    execl(binary.c_str(), binary.c_str(), image.c_str(), mountpoint.c_str(), "-f", "-o",
          options.c_str(), static_cast<char*>(nullptr));
    fprintf(stderr, "exec %s: %s\n", binary.c_str(), strerror(errno));
    _exit(127);
  }
  for (int waited_ms = 0; waited_ms < 10000; waited_ms += 20) {
    if (IsMountPoint(mountpoint)) return "";
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return "iomapfs exited (status " + std::to_string(status) + ") before mounting:\n" + Output();
    }
    SleepMs(20);
  }
  return "mount did not appear within 10 s:\n" + Output();
}

int ForegroundServer::KillAndWait(int sig) {
  if (pid_ <= 0) return -1;
  kill(pid_, sig);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

std::string ForegroundServer::Unmount() {
  if (umount2(mountpoint_.c_str(), 0) != 0) {
    return "umount " + mountpoint_ + ": " + strerror(errno);
  }
  if (pid_ <= 0) return "";
  int status = 0;
  for (int waited_ms = 0; waited_ms < 20000; waited_ms += 20) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
      return "server ended with status " + std::to_string(status) + ":\n" + Output();
    }
    SleepMs(20);
  }
  KillAndWait(SIGKILL);
  return "server still running 20 s after unmount; killed:\n" + Output();
}

std::string ForegroundServer::Output() const {
  std::string out;
  if (out_fd_ < 0) return out;
  char buf[4096];
  ssize_t n;
  off_t off = 0;
  while ((n = pread(out_fd_, buf, sizeof(buf), off)) > 0) {
    out.append(buf, static_cast<size_t>(n));
    off += n;
  }
  return out;
}

std::string SuperblockField(const std::string& image, const std::string& field) {
  CommandResult r = Run({"dumpe2fs", "-h", image});
  std::istringstream lines(r.output);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    std::string v = line.substr(field.size() + 1);
    size_t start = v.find_first_not_of(' ');
    return start == std::string::npos ? "" : v.substr(start);
  }
  return "";
}

uint64_t SuperblockCount(const std::string& image, const std::string& field) {
  return strtoull(SuperblockField(image, field).c_str(), nullptr, 10);
}

std::string WithKernelMount(const std::string& image, const std::string& mountpoint,
                            const std::function<void(const std::string&)>& fn) {
  if (mkdir(mountpoint.c_str(), 0755) != 0 && errno != EEXIST) {
    return "mkdir " + mountpoint + ": " + strerror(errno);
  }
  LoopDevice loop;
  std::string err = loop.Attach(image, /*read_only=*/true);
  if (!err.empty()) return err;
  MountGuard guard;
  err = KernelMount(loop.path(), mountpoint, /*read_only=*/true, &guard);
  if (!err.empty()) return err;
  fn(mountpoint);
  err = guard.Unmount();
  std::string detach = loop.Detach();
  return err.empty() ? detach : err;
}

namespace {

std::map<std::string, std::string>* g_walk = nullptr;
size_t g_walk_root_len = 0;

int WalkOne(const char* path, const struct stat* st, int type, struct FTW*) {
  if (strlen(path) <= g_walk_root_len) return 0;  // the root
  std::string rel(path + g_walk_root_len + 1);
  std::ostringstream v;
  if (type == FTW_NS) {
    v << "error stat " << strerror(errno);
  } else {
    char kind = S_ISDIR(st->st_mode)   ? 'd'
                : S_ISREG(st->st_mode) ? 'f'
                : S_ISLNK(st->st_mode) ? 'l'
                                       : '?';
    v << kind << " " << std::oct << (st->st_mode & 07777) << std::dec << " " << st->st_uid << ":"
      << st->st_gid;
    if (!S_ISDIR(st->st_mode)) v << " size=" << st->st_size;
    v << " mtime=" << st->st_mtim.tv_sec << "." << st->st_mtim.tv_nsec;
    if (S_ISLNK(st->st_mode)) {
      char target[4096];
      ssize_t n = readlink(path, target, sizeof(target));
      v << " -> " << (n >= 0 ? std::string(target, static_cast<size_t>(n)) : "error");
    }
  }
  (*g_walk)[rel] = v.str();
  return 0;
}

}  // namespace

std::map<std::string, std::string> TreeMetadata(const std::string& root) {
  std::map<std::string, std::string> out;
  g_walk = &out;
  g_walk_root_len = root.size();
  nftw(root.c_str(), WalkOne, 64, FTW_PHYS);
  g_walk = nullptr;
  return out;
}

std::string DiffTreeMetadata(const std::map<std::string, std::string>& expected,
                             const std::map<std::string, std::string>& actual, size_t max) {
  std::string out;
  size_t count = 0;
  auto note = [&](const std::string& line) {
    if (count++ < max) out += line + "\n";
  };
  for (const auto& [path, want] : expected) {
    auto it = actual.find(path);
    if (it == actual.end()) {
      note("missing: " + path);
    } else if (it->second != want) {
      note(path + ": expected " + want + ", got " + it->second);
    }
  }
  for (const auto& [path, got] : actual) {
    if (expected.count(path) == 0) note("unexpected: " + path);
  }
  if (count > max) out += "... " + std::to_string(count - max) + " more\n";
  return out;
}

}  // namespace iomapfs::testing
