#include "tests/mount/mount_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/test_util.h"

namespace iomapfs::testing {
namespace {

void SleepMs(int ms) {
  timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, nullptr);
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Undoes the octal escapes of /proc/self/mountinfo (\040 for space etc.).
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8)));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string RealPath(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) ? std::string(buf) : path;
}

}  // namespace

LoopDevice::~LoopDevice() {
  if (!path_.empty()) Detach();
}

std::string LoopDevice::Attach(const std::string& image, bool read_only, uint64_t offset) {
  std::vector<std::string> argv = {"losetup", "-f", "--show"};
  if (read_only) argv.push_back("-r");
  if (offset) {
    argv.push_back("-o");
    argv.push_back(std::to_string(offset));
  }
  argv.push_back(image);
  CommandResult r = Run(argv);
  if (r.exit_code != 0) return "losetup failed: " + r.output;
  path_ = Trim(r.output);
  if (path_.rfind("/dev/loop", 0) != 0) {
    std::string out = r.output;
    path_.clear();
    return "losetup printed no device: " + out;
  }
  return "";
}

std::string LoopDevice::Detach() {
  if (path_.empty()) return "";
  CommandResult r;
  for (int attempt = 0; attempt < 50; ++attempt) {
    r = Run({"losetup", "-d", path_});
    if (r.exit_code == 0) break;
    SleepMs(100);
  }
  std::string dev = path_;
  path_.clear();
  return r.exit_code == 0 ? "" : "losetup -d " + dev + " failed: " + r.output;
}

MountGuard::~MountGuard() {
  if (armed()) Unmount();
}

std::string MountGuard::Unmount() {
  if (!armed()) return "";
  std::string mp = mountpoint_;
  mountpoint_.clear();
  int err = 0;
  for (int attempt = 0; attempt < 50; ++attempt) {
    if (umount2(mp.c_str(), 0) == 0) return "";
    err = errno;
    if (err != EBUSY) break;
    SleepMs(100);
  }
  if (err == EBUSY) {
    umount2(mp.c_str(), MNT_DETACH);
    return "umount " + mp + ": busy; detached lazily";
  }
  return "umount " + mp + ": " + strerror(err);
}

std::string KernelMount(const std::string& device, const std::string& mountpoint, bool read_only,
                        MountGuard* guard, const std::string& options) {
  if (mount(device.c_str(), mountpoint.c_str(), "ext4", read_only ? MS_RDONLY : 0,
            options.empty() ? nullptr : options.c_str()) != 0) {
    int err = errno;
    CommandResult dmesg = RunShell("dmesg | tail -5");
    return "mount -t ext4 " + device + " " + mountpoint + ": " + strerror(err) + "\nkernel log:\n" +
           dmesg.output;
  }
  guard->Arm(mountpoint);
  return "";
}

bool IsMountPoint(const std::string& path, std::string* fs_type) {
  const std::string want = RealPath(path);
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  bool found = false;
  while (std::getline(in, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superopts
    std::istringstream fields(line);
    std::string id, parent, dev, root, mp;
    fields >> id >> parent >> dev >> root >> mp;
    if (Unescape(mp) != want) continue;
    found = true;  // the last one listed is the top of the stack
    std::string f;
    while (fields >> f && f != "-") {
    }
    std::string type;
    fields >> type;
    if (fs_type) *fs_type = type;
  }
  return found;
}

ServerResult RunServer(const std::string& binary, const std::vector<std::string>& args,
                       int timeout_seconds) {
  ServerResult result;
  int out = memfd_create("iomapfs-output", MFD_CLOEXEC);
  if (out < 0) {
    result.output = std::string("memfd_create: ") + strerror(errno);
    return result;
  }
  std::vector<std::string> argv = {binary};
  argv.insert(argv.end(), args.begin(), args.end());
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out, 1);
    dup2(out, 2);
    std::vector<char*> cargs;
    for (const auto& a : argv) cargs.push_back(const_cast<char*>(a.c_str()));
    cargs.push_back(nullptr);
    execv(cargs[0], cargs.data());
    fprintf(stderr, "exec %s: %s\n", cargs[0], strerror(errno));
    _exit(127);
  }
  if (pid < 0) {
    result.output = std::string("fork: ") + strerror(errno);
    close(out);
    return result;
  }
  int status = 0;
  for (int waited_ms = 0;; waited_ms += 20) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (waited_ms >= timeout_seconds * 1000) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      result.timed_out = true;
      break;
    }
    SleepMs(20);
  }
  if (!result.timed_out && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  char buf[4096];
  ssize_t n;
  off_t off = 0;
  while ((n = pread(out, buf, sizeof(buf), off)) > 0) {
    result.output.append(buf, n);
    off += n;
  }
  close(out);
  return result;
}

std::vector<pid_t> FindServerProcesses(const std::string& binary, const std::string& mountpoint) {
  std::vector<pid_t> pids;
  const std::string base = binary.substr(binary.rfind('/') + 1);
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return pids;
  while (struct dirent* e = readdir(proc)) {
    char* end = nullptr;
    long pid = strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0 || pid == getpid()) continue;
    std::ifstream in(std::string("/proc/") + e->d_name + "/cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::string> argv;
    size_t pos = 0;
    while (pos < cmdline.size()) {
      size_t z = cmdline.find('\0', pos);
      if (z == std::string::npos) z = cmdline.size();
      argv.push_back(cmdline.substr(pos, z - pos));
      pos = z + 1;
    }
    if (argv.empty() || argv[0].substr(argv[0].rfind('/') + 1) != base) continue;
    for (size_t i = 1; i < argv.size(); ++i) {
      if (argv[i] == mountpoint) {
        pids.push_back(static_cast<pid_t>(pid));
        break;
      }
    }
  }
  closedir(proc);
  return pids;
}

std::string WaitServerExit(const std::string& binary, const std::string& mountpoint,
                           int timeout_seconds) {
  for (int waited_ms = 0; waited_ms < timeout_seconds * 1000; waited_ms += 50) {
    if (FindServerProcesses(binary, mountpoint).empty()) return "";
    SleepMs(50);
  }
  std::vector<pid_t> left = FindServerProcesses(binary, mountpoint);
  if (left.empty()) return "";
  std::string msg =
      "server still running " + std::to_string(timeout_seconds) + " s after unmount; killed pid";
  for (pid_t pid : left) {
    kill(pid, SIGKILL);
    msg += " " + std::to_string(pid);
  }
  return msg;
}

ServerMount::~ServerMount() {
  if (!binary_.empty()) Stop();
}

std::string ServerMount::Start(const std::string& binary, const std::string& image,
                               const std::string& mountpoint, const std::string& options) {
  std::vector<std::string> args = {image, mountpoint};
  if (!options.empty()) {
    args.push_back("-o");
    args.push_back(options);
  }
  ServerResult r = RunServer(binary, args);
  output_ = r.output;
  binary_ = binary;
  mountpoint_ = mountpoint;
  std::string type;
  const bool mounted = IsMountPoint(mountpoint, &type);
  if (mounted) guard_.Arm(mountpoint);
  if (r.timed_out) return "iomapfs did not exit within 30 s; output:\n" + r.output;
  if (r.exit_code != 0) {
    return "iomapfs exited " + std::to_string(r.exit_code) + "; output:\n" + r.output;
  }
  if (!mounted)
    return "iomapfs exited 0 but " + mountpoint + " is not mounted; output:\n" + r.output;
  if (type.rfind("fuse", 0) != 0) return "mounted with type " + type + ", expected fuse*";
  return "";
}

std::string ServerMount::Stop() {
  if (binary_.empty()) return "";
  std::string err = guard_.Unmount();
  std::string wait = WaitServerExit(binary_, mountpoint_);
  binary_.clear();
  if (!err.empty() && !wait.empty()) return err + "; " + wait;
  return err + wait;
}

std::string MakeHelloImage(const TempDir& dir, std::string* image, std::string* mountpoint) {
  std::string src = dir.Sub("src");
  if (mkdir(src.c_str(), 0755) != 0) return "mkdir " + src + ": " + strerror(errno);
  if (!WriteFile(src + "/hello", "hello world\n")) return "cannot write " + src + "/hello";
  *image = dir.Sub("fs.img");
  if (std::string err = MakeImage(*image, 32 << 20, "ext4", {}, src); !err.empty()) return err;
  *mountpoint = dir.Sub("mnt");
  if (mkdir(mountpoint->c_str(), 0755) != 0) return "mkdir " + *mountpoint + ": " + strerror(errno);
  return "";
}

std::string MountTestSkipReason(const char* binary) {
  if (!IsRoot()) return "needs root (loop devices, mount(2), mknod, chown)";
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return std::string("cannot open /dev/fuse: ") + strerror(errno);
  close(fd);
  if (access("/dev/loop-control", R_OK | W_OK) != 0) return "no /dev/loop-control";
  if (binary == nullptr) {
    return "IOMAPFS_BINARY is not defined (the iomapfs target did not exist at configure time)";
  }
  if (access(binary, X_OK) != 0) {
    return std::string("iomapfs binary ") + binary + " is not executable: " + strerror(errno);
  }
  return "";
}

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

std::string MakeGeneratedImage(const std::string& image, uint64_t size_bytes,
                               const std::string& fs_type,
                               const std::vector<std::string>& mkfs_args,
                               const TreeGenOptions& tree, double* seconds) {
  std::string err = MakeImage(image, size_bytes, fs_type, mkfs_args);
  if (!err.empty()) return err;
  const std::string mountpoint = image + ".gen";
  if (mkdir(mountpoint.c_str(), 0755) != 0 && errno != EEXIST) {
    return "mkdir " + mountpoint + ": " + strerror(errno);
  }
  {
    LoopDevice loop;
    if (err = loop.Attach(image, /*read_only=*/false); !err.empty()) return err;
    MountGuard guard;
    if (err = KernelMount(loop.path(), mountpoint, /*read_only=*/false, &guard); !err.empty()) {
      return err;
    }
    const double start = Now();
    err = GenerateTree(mountpoint, tree);
    if (seconds) *seconds = Now() - start;
    if (!err.empty()) return "GenerateTree: " + err;
    if (err = guard.Unmount(); !err.empty()) return err;
    if (err = loop.Detach(); !err.empty()) return err;
  }
  rmdir(mountpoint.c_str());
  std::string fsck;
  if (!FsckClean(image, &fsck)) return "e2fsck -fn after generating the tree:\n" + fsck;
  return "";
}

}  // namespace iomapfs::testing
