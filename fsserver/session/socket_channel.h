// SocketChannel: the server end of a kernel-model connection (tests/kmodel, DESIGN.md "The
// kernel model"), and SocketServer, the worker loop over it. The model stands in for the kernel
// side of /dev/fuse, so the Dispatcher runs over it unchanged.
//
// A connection is two SOCK_SEQPACKET socketpairs, one message per datagram:
//   - requests: the model sends each request exactly as read(2) of /dev/fuse returns it
//     (fuse_in_header + body); the server answers with the reply exactly as it would writev(2)
//     it to /dev/fuse (fuse_out_header + body). The model closes its end to unmount.
//   - control: synchronous calls from the server, the stand-ins for what the server does
//     out-of-band on /dev/fuse: write(2) of a notification, whose return value is the kernel
//     handler's error, and the device ioctls (BACKING_OPEN/CLOSE) plus the BPF attach of the
//     fuse-iomap-bpf branch. The server sends one ControlHeader (+ payload, + an fd passed with
//     SCM_RIGHTS for BACKING_OPEN and BPF_ATTACH) and blocks for one ControlResult.
// The control protocol below is this transport's own (there is no kernel counterpart); the
// model implements the other end from this header.
//
// Thread-safety: Receive() and Send() may be called from several threads (each call moves one
// whole datagram); control calls are serialized by a mutex (one outstanding call at a time, as
// the model answers in order). Ownership: owns both socket fds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "fsserver/dispatch/handler.h"
#include "fsserver/dispatch/kernel_control.h"
#include "fsserver/dispatch/reply_sink.h"

namespace iomapfs::session {

// Control message kinds (ControlHeader::kind).
enum ControlKind : uint32_t {
  kControlNotify = 1,        // payload: one notification message (out header + body)
  kControlBackingOpen = 2,   // payload: abi::fuse_backing_map (its fd field is ignored); + fd
  kControlBackingClose = 3,  // payload: u32 backing id
  kControlBpfAttach = 4,     // payload: none; + the program fd (none: detach)
  kControlSetBlocksize = 5,  // payload: abi::fuse_iomap_backing_info
  kControlSetNofs = 6,       // payload: u32 (1 set, 0 clear), for the calling server thread
  kControlIomapSupport = 7,  // payload: none; result: the FUSE_IOMAP_SUPPORT_* flags
};

struct ControlHeader {
  uint32_t kind;  // ControlKind
  uint32_t len;   // payload bytes that follow this header
};
static_assert(sizeof(ControlHeader) == 8);

// The model's answer: >= 0 success (the backing id for BACKING_OPEN, else 0), < 0 a negative
// errno, as the ioctl or write(2) would return.
struct ControlResult {
  int64_t result;
};
static_assert(sizeof(ControlResult) == 8);

class SocketChannel final : public dispatch::ReplySink, public dispatch::KernelControl {
 public:
  // Takes the server ends of the two socketpairs.
  SocketChannel(UniqueFd requests, UniqueFd control)
      : requests_(std::move(requests)), control_(std::move(control)) {}

  // Blocks for the next request; retries EINTR.
  // Returns: the message length; 0 when the model closed its end (unmount).
  // Errors: EMSGSIZE the request did not fit `buf` (it is dropped); recv(2)'s errno.
  Result<size_t> Receive(std::span<std::byte> buf);

  // ReplySink.
  Result<void> Send(std::span<const iovec> iov) override;
  dispatch::KernelControl* control() override { return this; }

  // KernelControl.
  Result<void> Notify(std::span<const iovec> iov) override;
  Result<uint32_t> BackingOpen(int fd, uint32_t flags) override;
  Result<void> BackingClose(uint32_t backing_id) override;
  Result<void> AttachBpf(int prog_fd) override;
  Result<uint64_t> IomapSupport() override;
  Result<void> SetBlocksize(uint32_t backing_id, uint32_t blocksize) override;
  Result<void> SetNofs(bool on) override;

 private:
  // Sends one control message (header, payload, optional fd) and waits for its result.
  Result<int64_t> Call(uint32_t kind, std::span<const iovec> payload, int fd);

  UniqueFd requests_;
  UniqueFd control_;
  std::mutex control_mu_;  // one control call at a time; a leaf lock
};

// SocketServer: `workers` threads receiving requests from one SocketChannel and handing them to
// the RequestHandler, which replies on the same channel. The threads end when the model closes
// its request socket.
// Thread-safety: Start/Join from one controlling thread. Ownership: borrows the channel and the
// handler, which must outlive Join().
class SocketServer {
 public:
  SocketServer(dispatch::RequestHandler& handler, SocketChannel& channel)
      : handler_(handler), channel_(channel) {}
  ~SocketServer() { Join(); }

  // REQUIRES: not started before.
  void Start(int workers);
  // Waits until every worker has seen the end of the connection.
  void Join();

 private:
  void Worker();

  dispatch::RequestHandler& handler_;
  SocketChannel& channel_;
  std::vector<std::thread> threads_;
};

}  // namespace iomapfs::session
