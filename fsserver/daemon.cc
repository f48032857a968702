#include "fsserver/daemon.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

namespace iomapfs {

Result<Daemon> Daemon::Begin(bool foreground) {
  if (foreground) return Daemon(UniqueFd());
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Unexpected(errno);
  UniqueFd rd(fds[0]), wr(fds[1]);
  pid_t pid = ::fork();
  if (pid < 0) return Unexpected(errno);
  if (pid > 0) {
    wr.Reset();
    uint8_t code = 1;  // the child died without reporting
    for (;;) {
      ssize_t n = ::read(rd.get(), &code, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n != 1) code = 1;
      break;
    }
    ::_exit(code);
  }
  rd.Reset();
  // A new session, so that the terminal's signals no longer reach the server (as
  // fuse_daemonize).
  (void)::setsid();
  return Daemon(std::move(wr));
}

void Daemon::Ready() {
  (void)!::chdir("/");
  if (!status_.valid()) return;
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(null, 2);
    if (null > 2) ::close(null);
  }
  uint8_t ok = 0;
  (void)!::write(status_.get(), &ok, 1);
  status_.Reset();
}

void Daemon::Fail(int code) {
  if (!status_.valid()) return;
  uint8_t c = static_cast<uint8_t>(code > 0 && code < 256 ? code : 1);
  (void)!::write(status_.get(), &c, 1);
  status_.Reset();
}

}  // namespace iomapfs
