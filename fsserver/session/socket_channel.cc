#include "fsserver/session/socket_channel.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "base/log.h"
#include "fsserver/wire/fuse_abi.h"

namespace iomapfs::session {
namespace {

// The kernel refuses /dev/fuse reads into buffers smaller than this; the model never sends
// more than the handler's MaxRequestSize either way.
constexpr size_t kMinReadBuffer = 8192;

}  // namespace

Result<size_t> SocketChannel::Receive(std::span<std::byte> buf) {
  for (;;) {
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    ssize_t n = ::recvmsg(requests_.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Unexpected(errno);
    }
    if ((msg.msg_flags & MSG_TRUNC) != 0) return Unexpected(EMSGSIZE);
    return static_cast<size_t>(n);
  }
}

Result<void> SocketChannel::Send(std::span<const iovec> iov) {
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov.data());
  msg.msg_iovlen = iov.size();
  for (;;) {
    ssize_t n = ::sendmsg(requests_.get(), &msg, MSG_NOSIGNAL);
    if (n >= 0) return {};
    if (errno == EINTR) continue;
    // The model went away: the same as /dev/fuse after an abort.
    if (errno == EPIPE || errno == ECONNRESET) return Unexpected(ENODEV);
    return Unexpected(errno);
  }
}

Result<int64_t> SocketChannel::Call(uint32_t kind, std::span<const iovec> payload, int fd) {
  size_t len = 0;
  for (const iovec& v : payload) len += v.iov_len;
  ControlHeader h{kind, static_cast<uint32_t>(len)};
  std::vector<iovec> iov;
  iov.push_back({&h, sizeof(h)});
  iov.insert(iov.end(), payload.begin(), payload.end());
  msghdr msg{};
  msg.msg_iov = iov.data();
  msg.msg_iovlen = iov.size();
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof(cbuf);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  std::lock_guard<std::mutex> lock(control_mu_);
  for (;;) {
    if (::sendmsg(control_.get(), &msg, MSG_NOSIGNAL) >= 0) break;
    if (errno == EINTR) continue;
    return Unexpected(errno == EPIPE || errno == ECONNRESET ? ENODEV : errno);
  }
  ControlResult r{};
  for (;;) {
    ssize_t n = ::recv(control_.get(), &r, sizeof(r), 0);
    if (n == static_cast<ssize_t>(sizeof(r))) break;
    if (n < 0 && errno == EINTR) continue;
    return Unexpected(ENODEV);  // closed or a malformed answer: the connection is gone
  }
  if (r.result < 0) return Unexpected(static_cast<int>(-r.result));
  return r.result;
}

Result<void> SocketChannel::Notify(std::span<const iovec> iov) {
  IOMAPFS_TRY(Call(kControlNotify, iov, -1));
  return {};
}

Result<uint32_t> SocketChannel::BackingOpen(int fd, uint32_t flags) {
  abi::fuse_backing_map map{};
  map.fd = fd;
  map.flags = flags;
  iovec iov{&map, sizeof(map)};
  IOMAPFS_ASSIGN_OR_RETURN(int64_t id, Call(kControlBackingOpen, std::span(&iov, 1), fd));
  return static_cast<uint32_t>(id);
}

Result<void> SocketChannel::BackingClose(uint32_t backing_id) {
  iovec iov{&backing_id, sizeof(backing_id)};
  IOMAPFS_TRY(Call(kControlBackingClose, std::span(&iov, 1), -1));
  return {};
}

Result<void> SocketChannel::AttachBpf(int prog_fd) {
  IOMAPFS_TRY(Call(kControlBpfAttach, {}, prog_fd));
  return {};
}

Result<uint64_t> SocketChannel::IomapSupport() {
  IOMAPFS_ASSIGN_OR_RETURN(int64_t flags, Call(kControlIomapSupport, {}, -1));
  return static_cast<uint64_t>(flags);
}

Result<void> SocketChannel::SetBlocksize(uint32_t backing_id, uint32_t blocksize) {
  abi::fuse_iomap_backing_info info{backing_id, blocksize};
  iovec iov{&info, sizeof(info)};
  IOMAPFS_TRY(Call(kControlSetBlocksize, std::span(&iov, 1), -1));
  return {};
}

Result<void> SocketChannel::SetNofs(bool on) {
  uint32_t v = on ? 1 : 0;
  iovec iov{&v, sizeof(v)};
  IOMAPFS_TRY(Call(kControlSetNofs, std::span(&iov, 1), -1));
  return {};
}

void SocketServer::Start(int workers) {
  for (int i = 0; i < std::max(1, workers); ++i) threads_.emplace_back([this] { Worker(); });
}

void SocketServer::Join() {
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

void SocketServer::Worker() {
  size_t size = std::max(kMinReadBuffer, handler_.MaxRequestSize());
  std::unique_ptr<std::byte[]> buf(new std::byte[size]);
  for (;;) {
    Result<size_t> n = channel_.Receive(std::span<std::byte>(buf.get(), size));
    if (!n) {
      if (n.error() == EMSGSIZE) {
        LOG_WARNING("kernel model: dropping a request larger than %zu bytes", size);
        continue;
      }
      LOG_ERROR("kernel model socket: %s", strerror(n.error()));
      break;
    }
    if (*n == 0) break;  // the model closed its end
    handler_.Handle(std::span<const std::byte>(buf.get(), *n), channel_);
  }
}

}  // namespace iomapfs::session
