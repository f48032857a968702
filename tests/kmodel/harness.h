// ModelHarness: an iomapfs server (ext4::Filesystem + dispatch::Dispatcher, unchanged) served
// over session::SocketChannel to a KernelModel, in one process. Tests drive the model; the
// server runs on its own worker threads. Everything is a kernel MODEL: no real iomap kernel.
//
// Thread-safety: one test thread. Ownership: owns the filesystem, the dispatcher, the channel,
// the server threads and the model.
#pragma once

#include <memory>
#include <string>

#include "fsserver/dispatch/dispatcher.h"
#include "fsserver/ext4/filesystem.h"
#include "fsserver/session/socket_channel.h"
#include "tests/kmodel/kernel_model.h"

namespace iomapfs::kmodel {

struct ServerConfig {
  bool read_write = false;
  dispatch::IomapOptions iomap;
  int workers = 2;
};

class ModelHarness {
 public:
  ~ModelHarness();

  // Opens `image`, starts the server over a fresh socketpair and mounts the model (INIT, and
  // CONFIG in iomap mode). Returns: an empty string, or what failed.
  static std::string Start(const std::string& image, const ServerConfig& server,
                           const ModelOptions& model, std::unique_ptr<ModelHarness>* out);

  KernelModel& model() { return *model_; }
  dispatch::Dispatcher& dispatcher() { return *dispatcher_; }
  ext4::Filesystem& fs() { return *fs_; }

  // Unmounts the model (writeback, DESTROY), waits for the server's workers and closes the
  // filesystem. Returns: an empty string, or what failed. A second call is a no-op.
  std::string Stop();

 private:
  ModelHarness() = default;
  std::unique_ptr<ext4::Filesystem> fs_;
  std::unique_ptr<dispatch::Dispatcher> dispatcher_;
  std::unique_ptr<session::SocketChannel> channel_;
  std::unique_ptr<session::SocketServer> server_;
  std::unique_ptr<KernelModel> model_;
  bool stopped_ = false;
};

// Bytes of a file on the host (a kernel mount, the source tree). Errors: errno.
Result<std::vector<std::byte>> ReadHostFile(const std::string& path);

}  // namespace iomapfs::kmodel
