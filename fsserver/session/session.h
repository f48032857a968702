// Session: the /dev/fuse request loop. A pool of worker threads, each on its own cloned
// /dev/fuse fd (the first on the mount's own fd), reads requests and hands them to the
// RequestHandler, which replies on the same fd.
//
// Thread-safety: Start/Join/Stop are called from one controlling thread. Workers call the
// handler concurrently. on_end runs on a worker thread, once, when the connection ends
// (unmount or abort).
// Ownership: borrows the handler and the session fd (libfuse owns and closes the latter).
#pragma once

#include <atomic>
#include <functional>
#include <thread>
#include <vector>

#include "base/result.h"
#include "fsserver/dispatch/handler.h"
#include "fsserver/session/fuse_dev_channel.h"

namespace iomapfs::session {

struct SessionOptions {
  int workers = 4;
};

class Session {
 public:
  Session(dispatch::RequestHandler& handler, const SessionOptions& options)
      : handler_(handler), options_(options) {}
  ~Session();

  // Starts the workers on the mounted fd `session_fd`. Worker 0 reads the session fd; the
  // others use clones (falling back to sharing the session fd where cloning is refused).
  // `on_end` is called once when the first worker sees the connection end.
  // REQUIRES: session_fd is mounted (bound to a connection); Start not called before.
  Result<void> Start(int session_fd, std::function<void()> on_end);

  // Start() in two steps, for FUSE_DEV_IOC_SYNC_INIT (spec/fuse-mainline-7.45-and-io-uring.md
  // §7.2): StartReader() starts worker 0 on the still-unbound `session_fd`, whose read(2) blocks
  // until mount(2) binds it and then returns INIT; StartClones() starts the other workers once
  // mount(2) has returned (a clone of an fd marked for SYNC_INIT blocks until it is bound).
  // REQUIRES: StartReader before StartClones, each once, and neither after Start.
  Result<void> StartReader(int session_fd, std::function<void()> on_end);
  Result<void> StartClones();

  // Waits for every worker to finish (they finish when the connection ends).
  void Join();

  // Gives up on the workers without waiting: for a reader blocked on an fd that mount(2) never
  // bound (nothing can wake it). The process must exit soon after, before the handler goes.
  void Abandon();

 private:
  void Worker(FuseDevChannel channel);

  dispatch::RequestHandler& handler_;
  SessionOptions options_;
  std::vector<std::thread> threads_;
  std::function<void()> on_end_;
  int session_fd_ = -1;
  std::atomic<bool> ended_{false};
};

}  // namespace iomapfs::session
