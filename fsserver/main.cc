// iomapfs: serve an ext4 image or block device through FUSE.
//
// libfuse3 is used for option parsing, and for mounting only when not privileged (fusermount3;
// root mounts with its own mount(2), fuse_mount.h); the request loop, wire codec and filesystem are
// this project's own (DESIGN.md).

#include <fcntl.h>
#include <fuse3/fuse_opt.h>
#include <linux/capability.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/log.h"
#include "base/unique_fd.h"
#include "ext2/ext2_fs.h"
#include "fsserver/daemon.h"
#include "fsserver/dispatch/dispatcher.h"
#include "fsserver/ext4/filesystem.h"
#include "fsserver/fuse_mount.h"
#include "fsserver/session/fuse_dev_channel.h"
#include "fsserver/session/session.h"

namespace iomapfs {
namespace {

constexpr char kUsage[] =
    "usage: iomapfs IMAGE MOUNTPOINT [-o OPTION[,OPTION...]] [-f] [-d]\n"
    "       iomapfs IMAGE /dev/fd/N [-o OPTION[,OPTION...]] [-f] [-d]\n"
    "\n"
    "Serve the ext2/ext3/ext4 filesystem in IMAGE (an image file or a block device)\n"
    "at MOUNTPOINT through FUSE. Unmount with `umount MOUNTPOINT` (as root) or\n"
    "`fusermount3 -u MOUNTPOINT`; SIGINT and SIGTERM unmount too.\n"
    "\n"
    "Mounting: as root (or with CAP_SYS_ADMIN) iomapfs calls mount(2) itself; on kernels with\n"
    "FUSE_DEV_IOC_SYNC_INIT (Linux 6.18+) the kernel's INIT is answered inside mount(2), so a\n"
    "failed INIT fails the mount. Other users mount through libfuse's fusermount3.\n"
    "With /dev/fd/N instead of a directory, iomapfs serves the /dev/fuse descriptor N that\n"
    "the process which started it has already mounted (libfuse's convention, for a privileged\n"
    "mount helper and an unprivileged server). That process owns the mount and unmounts it;\n"
    "SIGINT and SIGTERM then end the server without unmounting (the mount is left stale).\n"
    "\n"
    "options:\n"
    "  -f                 stay in the foreground (default: daemonize once mounted)\n"
    "  -d                 debug: log every request (implies -f)\n"
    "  -h, --help         print this help and exit\n"
    "  -V, --version      print the version and exit\n"
    "\n"
    "mount options (-o):\n"
    "  ro                 read-only (the default); other read-only mounts of the same image\n"
    "                     may run at once, a read-write one may not\n"
    "  rw                 read-write; the image is locked against every other iomapfs mount\n"
    "                     of it (read-only ones too: they would read a changing image), marked\n"
    "                     not-clean while mounted and clean again at unmount\n"
    "  fakeroot           treat every caller as root for permission checks, as fuse2fs does:\n"
    "                     nothing is refused for lack of permission, and the kernel's own\n"
    "                     checks (default_permissions) are off. New files and directories are\n"
    "                     still owned by the caller's uid and gid (chown them as needed).\n"
    "                     With allow_other every user gets root's rights in the mount, so\n"
    "                     fakeroot does not turn allow_other on for root\n"
    "  allow_other        let other users access the mount (on by default as root)\n"
    "  offset=BYTES       the filesystem starts BYTES into IMAGE (partitioned images)\n"
    "  norecovery         serve a filesystem whose journal needs recovery without\n"
    "                     replaying it (read-only; recent changes may be missing)\n"
    "  errors=continue|remount-ro|panic\n"
    "                     on corruption found while serving: carry on, refuse further\n"
    "                     changes, or stop the server (default: the superblock's setting)\n"
    "  threads=N          request worker threads (default 4)\n"
    "  writeback_cache, no_writeback_cache\n"
    "                     with rw (classic mode; never with iomap): let the kernel buffer\n"
    "                     writes in its page cache and send them later, or send every\n"
    "                     write(2) to the server at once (the default). With the cache, write\n"
    "                     errors of buffered data (ENOSPC, EIO) are reported by fsync(2) and\n"
    "                     close(2), not by write(2); fsync, fdatasync, syncfs and unmount\n"
    "                     still write everything back. Needs threads=2 or more (off with\n"
    "                     threads=1)\n"
    "  iomap=auto|off     fuse-iomap (the kernel moves file data itself) when the kernel offers\n"
    "                     it at INIT (auto, the default), or never (off). With auto and\n"
    "                     CAP_SYS_RAWIO, iomapfs asks for it before mounting\n"
    "                     (FUSE_DEV_IOC_ADD_IOMAP). No released kernel offers it; the mount is\n"
    "                     then classic either way\n"
    "  nodev, nosuid, noexec, dev, suid, exec, noatime\n"
    "                     passed to the kernel as for any mount\n";

struct CliOptions {
  char* image = nullptr;
  char* mountpoint = nullptr;
  char* offset = nullptr;
  char* threads = nullptr;
  char* errors = nullptr;
  char* iomap = nullptr;
  int ro = 0;
  int rw = 0;
  int fakeroot = 0;
  int allow_other = 0;
  int norecovery = 0;
  int writeback_cache = 0;  // off unless -o writeback_cache
  int foreground = 0;
  int debug = 0;
  int help = 0;
  int version = 0;
  std::vector<std::string> kernel_flags;  // mount flags passed through (nodev, noexec, ...)
  std::string error;                      // first parse error
};

enum Key { kKeyHelp, kKeyVersion, kKeyKernel };

#define IOMAPFS_OPT(t, p) \
  { t, offsetof(CliOptions, p), 1 }
const fuse_opt kOptSpec[] = {
    IOMAPFS_OPT("ro", ro),
    IOMAPFS_OPT("rw", rw),
    IOMAPFS_OPT("fakeroot", fakeroot),
    IOMAPFS_OPT("allow_other", allow_other),
    IOMAPFS_OPT("norecovery", norecovery),
    {"writeback_cache", offsetof(CliOptions, writeback_cache), 1},
    {"no_writeback_cache", offsetof(CliOptions, writeback_cache), 0},
    IOMAPFS_OPT("-f", foreground),
    IOMAPFS_OPT("-d", debug),
    IOMAPFS_OPT("debug", debug),
    {"offset=%s", offsetof(CliOptions, offset), 0},
    {"threads=%s", offsetof(CliOptions, threads), 0},
    {"errors=%s", offsetof(CliOptions, errors), 0},
    {"iomap=%s", offsetof(CliOptions, iomap), 0},
    FUSE_OPT_KEY("-h", kKeyHelp),
    FUSE_OPT_KEY("--help", kKeyHelp),
    FUSE_OPT_KEY("-V", kKeyVersion),
    FUSE_OPT_KEY("--version", kKeyVersion),
    FUSE_OPT_KEY("nodev", kKeyKernel),
    FUSE_OPT_KEY("nosuid", kKeyKernel),
    FUSE_OPT_KEY("noexec", kKeyKernel),
    FUSE_OPT_KEY("dev", kKeyKernel),
    FUSE_OPT_KEY("suid", kKeyKernel),
    FUSE_OPT_KEY("exec", kKeyKernel),
    FUSE_OPT_KEY("noatime", kKeyKernel),
    FUSE_OPT_END,
};
#undef IOMAPFS_OPT

int ProcessOpt(void* data, const char* arg, int key, fuse_args*) {
  auto* o = static_cast<CliOptions*>(data);
  switch (key) {
    case kKeyHelp:
      o->help = 1;
      return 0;
    case kKeyVersion:
      o->version = 1;
      return 0;
    case kKeyKernel:
      o->kernel_flags.push_back(arg);
      return 0;
    case FUSE_OPT_KEY_NONOPT:
      if (o->image == nullptr) {
        o->image = strdup(arg);
      } else if (o->mountpoint == nullptr) {
        o->mountpoint = strdup(arg);
      } else if (o->error.empty()) {
        o->error = std::string("unexpected argument '") + arg + "'";
      }
      return 0;
    default:
      if (o->error.empty()) {
        o->error = std::string("unknown option '") + arg + "' (see --help)";
      }
      return 0;
  }
}

bool ParseU64(const char* s, uint64_t* out) {
  if (s == nullptr || *s == '\0' || *s == '-') return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

bool HasFlag(const std::vector<std::string>& flags, const char* name) {
  for (const std::string& f : flags) {
    if (f == name) return true;
  }
  return false;
}

// True if `cap` (CAP_*) is in this process's effective set (capget(2); no libcap).
bool HasCapability(int cap) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  return (data[cap / 32].effective & (1u << (cap % 32))) != 0;
}

// Whether the server mounts with its own mount(2) (root, or CAP_SYS_ADMIN) rather than through
// libfuse and fusermount3.
bool MayMount() { return geteuid() == 0 || HasCapability(CAP_SYS_ADMIN); }

// libfuse's convention (fuse_mnt_parse_fuse_fd): a mountpoint "/dev/fd/N" names an fd that a
// privileged parent already mounted. Returns: N, or -1 if `mountpoint` is not of that form.
int ParseDevFd(const char* mountpoint) {
  unsigned fd = 0;
  int len = 0;
  if (sscanf(mountpoint, "/dev/fd/%u%n", &fd, &len) != 1 ||
      static_cast<size_t>(len) != strlen(mountpoint) || fd > INT32_MAX) {
    return -1;
  }
  return static_cast<int>(fd);
}

pthread_t g_main_thread;

// A test hook, set by the environment variable IOMAPFS_TEST_FAIL_INIT: answers the kernel's
// INIT with EPROTO, as a server that cannot work with the kernel would, and hands every other
// request to the dispatcher. Tests use it to show that with synchronous INIT such a failure
// fails mount(2) itself.
class FailInitHandler final : public dispatch::RequestHandler {
 public:
  explicit FailInitHandler(dispatch::RequestHandler& next) : next_(next) {}
  void Handle(std::span<const std::byte> msg, dispatch::ReplySink& sink) override {
    abi::fuse_in_header in{};
    if (msg.size() < sizeof(in)) return next_.Handle(msg, sink);
    std::memcpy(&in, msg.data(), sizeof(in));
    if (in.opcode != abi::FUSE_INIT) return next_.Handle(msg, sink);
    LOG_WARNING("IOMAPFS_TEST_FAIL_INIT: answering INIT with EPROTO");
    abi::fuse_out_header out{sizeof(out), -EPROTO, in.unique};
    iovec iov{&out, sizeof(out)};
    (void)sink.Send(std::span<const iovec>(&iov, 1));
  }
  size_t MaxRequestSize() const override { return next_.MaxRequestSize(); }

 private:
  dispatch::RequestHandler& next_;
};

int Serve(CliOptions& cli) {
  uint64_t offset = 0;
  if (cli.offset != nullptr && !ParseU64(cli.offset, &offset)) {
    fprintf(stderr, "iomapfs: bad offset '%s': expected a byte count\n", cli.offset);
    return 2;
  }
  uint64_t threads = 4;
  if (cli.threads != nullptr && (!ParseU64(cli.threads, &threads) || threads < 1 || threads > 64)) {
    fprintf(stderr, "iomapfs: bad threads '%s': expected 1..64\n", cli.threads);
    return 2;
  }
  if (cli.rw && cli.ro) {
    fprintf(stderr, "iomapfs: -o ro and -o rw contradict each other\n");
    return 2;
  }
  const bool read_write = cli.rw != 0;
  ext4::ErrorBehavior errors = ext4::ErrorBehavior::kDefault;
  if (cli.errors != nullptr) {
    std::string e = cli.errors;
    if (e == "continue") {
      errors = ext4::ErrorBehavior::kContinue;
    } else if (e == "remount-ro") {
      errors = ext4::ErrorBehavior::kRemountRo;
    } else if (e == "panic") {
      errors = ext4::ErrorBehavior::kPanic;
    } else {
      fprintf(stderr, "iomapfs: bad errors='%s': expected continue, remount-ro or panic\n",
              cli.errors);
      return 2;
    }
  }
  if (read_write && cli.norecovery) {
    fprintf(stderr, "iomapfs: norecovery is only allowed with a read-only mount (-o ro)\n");
    return 2;
  }
  const int passed_fd = ParseDevFd(cli.mountpoint);
  std::string mountpoint;
  if (passed_fd >= 0) {
    if (Result<void> ok = session::CheckMountedFuseFd(passed_fd); !ok) {
      const char* why = ok.error() == EBADF    ? "not an open file descriptor"
                        : ok.error() == ENODEV ? "not a /dev/fuse file descriptor"
                        : ok.error() == ENOTCONN
                            ? "a /dev/fuse file descriptor that is not mounted (the process "
                              "passing it must mount(2) it first, with fd=N among the options)"
                            : strerror(ok.error());
      fprintf(stderr, "iomapfs: bad mountpoint '%s': %s\n", cli.mountpoint, why);
      return 1;
    }
    mountpoint = cli.mountpoint;
  } else {
    char* mnt_real = realpath(cli.mountpoint, nullptr);
    // A FUSE mount whose server died answers every request with ENOTCONN until it is
    // unmounted; stat(2) alone may be answered from cached attributes, statfs(2) always asks
    // the server.
    struct statfs sfs;
    if ((mnt_real == nullptr && errno == ENOTCONN) ||
        (mnt_real != nullptr && statfs(mnt_real, &sfs) != 0 && errno == ENOTCONN)) {
      free(mnt_real);
      fprintf(stderr,
              "iomapfs: %s is a stale FUSE mount (its server died); unmount it first with "
              "`umount -l %s` or `fusermount3 -uz %s`\n",
              cli.mountpoint, cli.mountpoint, cli.mountpoint);
      return 1;
    }
    if (mnt_real == nullptr) {
      fprintf(stderr, "iomapfs: bad mountpoint '%s': %s\n", cli.mountpoint, strerror(errno));
      return 1;
    }
    mountpoint = mnt_real;
    free(mnt_real);
    struct stat st;
    if (stat(mountpoint.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      fprintf(stderr, "iomapfs: bad mountpoint '%s': not a directory\n", cli.mountpoint);
      return 1;
    }
  }

  ext2::OpenOptions open_opts;
  open_opts.read_write = read_write;
  open_opts.offset = offset;
  open_opts.norecovery = cli.norecovery != 0;
  std::string why;
  Result<std::unique_ptr<ext2::Ext2Fs>> e2 = ext2::Ext2Fs::Open(cli.image, open_opts, &why);
  if (!e2) {
    fprintf(stderr, "iomapfs: %s\n", why.c_str());
    return 1;
  }
  ext4::Options fs_opts;
  fs_opts.fakeroot = cli.fakeroot != 0;
  fs_opts.errors = errors;
  auto fs = std::make_unique<ext4::Filesystem>(std::move(*e2), fs_opts);

  dispatch::DispatcherOptions dopts;
  dopts.read_only = !read_write;
  // fuse-iomap (spec §1): no flag is needed; the server acknowledges FUSE_IOMAP only when the
  // kernel offers it at INIT (auto), never with iomap=off. Discovery (§1.2) on a fresh
  // /dev/fuse fd before mounting only reports; the INIT offer decides. UNTESTED against a
  // real iomap kernel: kernels without the extension fail the ioctl (ENOTTY), and the mount
  // stays classic.
  const std::string iomap_mode = cli.iomap != nullptr ? cli.iomap : "auto";
  if (iomap_mode != "auto" && iomap_mode != "off") {
    fprintf(stderr, "iomapfs: bad iomap='%s': expected auto or off\n", cli.iomap);
    return 2;
  }
  dopts.iomap.enable = iomap_mode == "auto";
  if (dopts.iomap.enable) {
    UniqueFd dev(::open("/dev/fuse", O_RDWR | O_CLOEXEC));
    Result<uint64_t> support =
        dev.valid() ? session::DiscoverIomap(dev.get()) : Result<uint64_t>(Unexpected(errno));
    if (support && *support != 0) {
      LOG_INFO("fuse-iomap discovery: allowed (flags 0x%llx)",
               static_cast<unsigned long long>(*support));
    } else {
      LOG_DEBUG("fuse-iomap discovery: %s; classic mode unless INIT offers FUSE_IOMAP",
                support ? "not allowed for this caller" : strerror(support.error()));
    }
  }
  if (read_write) {
    // Every change goes through this mount's kernel caches; short timeouts bound how long a
    // cached attribute can lag the image.
    dopts.entry_timeout_sec = 1;
    dopts.attr_timeout_sec = 1;
  }
  // The writeback cache: asked for with -o writeback_cache (README "Writeback cache"); the
  // dispatcher negotiates it only in classic mode.
  // It needs a second worker: one may wait while another serves the WRITEs of a write-back it
  // asked for (dispatcher.h).
  if (cli.writeback_cache == 1 && threads < 2) {
    fprintf(stderr, "iomapfs: writeback_cache needs threads=2 or more\n");
    return 2;
  }
  dopts.writeback_cache = read_write && cli.writeback_cache == 1;
  dopts.workers = static_cast<int>(threads);
  dopts.debug = cli.debug != 0;
  // Under fakeroot the kernel must not check permissions with the caller's real credentials:
  // no default_permissions, and no FUSE_POSIX_ACL (which implies it).
  dopts.posix_acl = cli.fakeroot == 0;
  dispatch::Dispatcher dispatcher(*fs, dopts);

  MountSpec spec;
  spec.source = cli.image;
  spec.read_only = !read_write;
  spec.default_permissions = cli.fakeroot == 0;
  spec.flags = cli.kernel_flags;
  spec.allow_other = cli.allow_other || (geteuid() == 0 && !cli.fakeroot);
  if (geteuid() == 0 && !HasFlag(cli.kernel_flags, "nodev")) spec.flags.push_back("dev");
  if (geteuid() == 0 && !HasFlag(cli.kernel_flags, "nosuid")) spec.flags.push_back("suid");

  // Fork before any thread starts (the SYNC_INIT reader runs before mount(2)); the invoking
  // process exits once the mount serves, or with the error code.
  Result<Daemon> daemon = Daemon::Begin(cli.foreground || cli.debug);
  if (!daemon) {
    fprintf(stderr, "iomapfs: cannot daemonize: %s\n", strerror(daemon.error()));
    return 1;
  }
  // Workers block every signal; this thread waits for the ones that end the mount.
  sigset_t waitset;
  sigemptyset(&waitset);
  sigaddset(&waitset, SIGINT);
  sigaddset(&waitset, SIGTERM);
  sigaddset(&waitset, SIGHUP);
  sigaddset(&waitset, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &waitset, nullptr);
  signal(SIGPIPE, SIG_IGN);
  g_main_thread = pthread_self();
  auto on_end = [] { pthread_kill(g_main_thread, SIGUSR1); };

  session::SessionOptions sopts;
  sopts.workers = static_cast<int>(threads);
  FailInitHandler fail_init(dispatcher);
  dispatch::RequestHandler& handler = getenv("IOMAPFS_TEST_FAIL_INIT") != nullptr
                                          ? static_cast<dispatch::RequestHandler&>(fail_init)
                                          : dispatcher;
  session::Session session(handler, sopts);
  std::unique_ptr<FuseMount> mount;
  bool reader_started = false;
  const char* init_mode = "";
  if (passed_fd >= 0) {
    // A privileged helper mounted the fd (and issued FUSE_DEV_IOC_ADD_IOMAP if it wanted iomap,
    // spec §1.1) and passed it to us: serve it as it is.
    mount = FuseMount::Adopt(passed_fd);
    init_mode = "; mounted by the process that passed the fd";
  } else if (MayMount()) {
    // Our own mount(2) (spec/fuse-mainline-7.45-and-io-uring.md §7.2): prepare the fd, start the
    // reader, then mount, so that INIT (and IOMAP_CONFIG) are answered inside mount(2) and a
    // failure fails the mount instead of leaving a broken one.
    Result<UniqueFd> dev = session::OpenFuseDevice();
    if (!dev) {
      fprintf(stderr, "iomapfs: cannot open /dev/fuse: %s\n", strerror(dev.error()));
      daemon->Fail(1);
      return 1;
    }
    if (dopts.iomap.enable) {
      // §1.1, §11.4: grant iomap to the connection this fd will create. Without CAP_SYS_RAWIO
      // the kernel refuses (EPERM); kernels without fuse-iomap answer ENOTTY. Either way the
      // mount goes on and INIT decides.
      if (!HasCapability(CAP_SYS_RAWIO)) {
        LOG_DEBUG("fuse-iomap: no CAP_SYS_RAWIO, FUSE_DEV_IOC_ADD_IOMAP not issued");
      } else if (Result<void> add = session::AddIomap(dev->get()); add) {
        LOG_INFO("fuse-iomap: FUSE_DEV_IOC_ADD_IOMAP accepted");
      } else {
        LOG_DEBUG(
            "fuse-iomap: FUSE_DEV_IOC_ADD_IOMAP: %s; classic mode unless INIT offers "
            "FUSE_IOMAP",
            strerror(add.error()));
      }
    }
    Result<void> sync_init = session::RequestSyncInit(dev->get());
    if (!sync_init) {
      LOG_DEBUG("FUSE_DEV_IOC_SYNC_INIT: %s; INIT is answered after mount(2) returns",
                strerror(sync_init.error()));
    } else if (Result<void> r = session.StartReader(dev->get(), on_end); !r) {
      fprintf(stderr, "iomapfs: cannot start the request loop: %s\n", strerror(r.error()));
      daemon->Fail(1);
      std::_Exit(1);  // the fd is marked for SYNC_INIT: nothing else may use it
    } else {
      reader_started = true;
    }
    Result<std::unique_ptr<FuseMount>> m =
        FuseMount::MountDirect(mountpoint, spec, std::move(*dev));
    const bool init_in_mount = dispatcher.initialized();
    if (!m) {
      fprintf(stderr, "iomapfs: cannot mount %s at %s: mount(2): %s%s\n", cli.image,
              mountpoint.c_str(), strerror(m.error()),
              m.error() == ENOTCONN
                  ? " (INIT failed: the server refused it or the kernel refused its answer)"
                  : "");
      if (!sync_init) {
        daemon->Fail(1);
        return 1;
      }
      // The reader may stay blocked on an fd that was never bound, and nothing wakes it: leave
      // it, close the image cleanly and end the process here.
      session.Abandon();
      (void)fs->Close();
      daemon->Fail(1);
      std::_Exit(1);
    }
    mount = std::move(*m);
    if (sync_init) {
      // With SYNC_INIT the kernel has sent INIT, and waited for its reply, before mount(2)
      // returned; without it the reader starts only now, so INIT cannot have been answered.
      init_mode = init_in_mount ? "; INIT answered inside mount(2): synchronous INIT"
                                : "; SYNC_INIT accepted but INIT not answered in mount(2)";
      if (Result<void> r = session.StartClones(); !r) {
        LOG_ERROR("cannot start the request workers: %s", strerror(r.error()));
      }
    }
  } else {
    // Not privileged: libfuse mounts through the setuid fusermount3 helper.
    Result<std::unique_ptr<FuseMount>> m = FuseMount::MountWithLibfuse(mountpoint, spec);
    if (!m) {
      fprintf(stderr, "iomapfs: cannot mount %s at %s\n", cli.image, mountpoint.c_str());
      daemon->Fail(1);
      return 1;
    }
    mount = std::move(*m);
  }
  if (!reader_started) {
    Result<void> started = session.Start(mount->fd(), on_end);
    if (!started) {
      fprintf(stderr, "iomapfs: cannot start the request loop: %s\n", strerror(started.error()));
      daemon->Fail(1);
      return 1;
    }
  }
  daemon->Ready();
  if (!cli.foreground && !cli.debug) LogToSyslog("iomapfs");
  LOG_INFO("serving %s at %s (%s%s)", cli.image, mountpoint.c_str(),
           read_write ? "read-write" : "read-only", init_mode);

  bool unmounted_by_us = false;
  for (;;) {
    int sig = 0;
    if (sigwait(&waitset, &sig) != 0) continue;
    if (sig == SIGUSR1) break;  // the connection ended: unmounted or aborted
    if (!mount->owns_mount()) {
      // The mount belongs to the process that passed the fd; only it can unmount. Ending now
      // aborts the connection (the mount answers ENOTCONN until it is unmounted there) and
      // leaves a read-write image marked not clean, as a kill would.
      LOG_WARNING(
          "signal %d: exiting; the mount at %s belongs to the process that passed the "
          "fd, unmount it there",
          sig, mountpoint.c_str());
      session.Abandon();
      std::_Exit(1);
    }
    if (!unmounted_by_us) {
      LOG_INFO("signal %d: unmounting %s", sig, mountpoint.c_str());
      mount->Unmount();
      unmounted_by_us = true;
    }
  }
  session.Join();
  int rc = 0;
  Result<void> closed = fs->Close();
  if (!closed) {
    LOG_ERROR("closing %s: %s", cli.image, strerror(closed.error()));
    rc = 1;
  }
  mount->Unmount();
  return rc;
}

}  // namespace
}  // namespace iomapfs

int main(int argc, char** argv) {
  using iomapfs::CliOptions;
  CliOptions cli;
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  if (fuse_opt_parse(&args, &cli, iomapfs::kOptSpec, iomapfs::ProcessOpt) != 0) {
    fprintf(stderr, "iomapfs: cannot parse the command line (see --help)\n");
    return 2;
  }
  fuse_opt_free_args(&args);
  if (cli.help) {
    fputs(iomapfs::kUsage, stdout);
    return 0;
  }
  if (cli.version) {
    printf("iomapfs %s (FUSE protocol 7.45, libfuse %s for mounting)\n", IOMAPFS_VERSION,
           iomapfs::LibfuseVersion());
    return 0;
  }
  if (!cli.error.empty()) {
    fprintf(stderr, "iomapfs: %s\n", cli.error.c_str());
    return 2;
  }
  if (cli.image == nullptr || cli.mountpoint == nullptr) {
    fprintf(stderr, "iomapfs: need an IMAGE and a MOUNTPOINT\n%s", iomapfs::kUsage);
    return 2;
  }
  if (cli.debug) iomapfs::SetLogLevel(iomapfs::LogLevel::kDebug);
  return iomapfs::Serve(cli);
}
