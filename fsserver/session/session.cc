#include "fsserver/session/session.h"

#include <signal.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "base/log.h"

namespace iomapfs::session {
namespace {
// The kernel refuses reads into buffers smaller than this (fs/fuse/dev.c FUSE_MIN_READ_BUFFER).
constexpr size_t kMinReadBuffer = 8192;
}  // namespace

Session::~Session() { Join(); }

Result<void> Session::Start(int session_fd, std::function<void()> on_end) {
  IOMAPFS_TRY(StartReader(session_fd, std::move(on_end)));
  return StartClones();
}

Result<void> Session::StartReader(int session_fd, std::function<void()> on_end) {
  on_end_ = std::move(on_end);
  session_fd_ = session_fd;
  threads_.emplace_back(
      [this, c = FuseDevChannel::Borrow(session_fd)]() mutable { Worker(std::move(c)); });
  return {};
}

Result<void> Session::StartClones() {
  int workers = std::max(1, options_.workers);
  for (int i = 1; i < workers; ++i) {
    Result<FuseDevChannel> clone = FuseDevChannel::Clone(session_fd_);
    FuseDevChannel ch = clone ? std::move(*clone) : FuseDevChannel::Borrow(session_fd_);
    if (!clone) {
      // Old kernels without FUSE_DEV_IOC_CLONE: several readers on one fd work too.
      LOG_DEBUG("cannot clone /dev/fuse (%s); sharing the session fd", strerror(clone.error()));
    }
    threads_.emplace_back([this, c = std::move(ch)]() mutable { Worker(std::move(c)); });
  }
  return {};
}

void Session::Join() {
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

void Session::Abandon() {
  for (auto& t : threads_) {
    if (t.joinable()) t.detach();
  }
  threads_.clear();
}

void Session::Worker(FuseDevChannel channel) {
  // Signals are for the controlling thread (it waits for them with sigwait).
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);

  size_t size = std::max(kMinReadBuffer, handler_.MaxRequestSize());
  std::unique_ptr<std::byte[]> buf(new std::byte[size]);
  for (;;) {
    Result<size_t> n = channel.Receive(std::span<std::byte>(buf.get(), size));
    if (!n) {
      if (n.error() != ENODEV) LOG_ERROR("reading /dev/fuse: %s", strerror(n.error()));
      break;
    }
    handler_.Handle(std::span<const std::byte>(buf.get(), *n), channel);
  }
  if (!ended_.exchange(true) && on_end_) on_end_();
}

}  // namespace iomapfs::session
