#include "tests/kmodel/harness.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace iomapfs::kmodel {

ModelHarness::~ModelHarness() { (void)Stop(); }

std::string ModelHarness::Start(const std::string& image, const ServerConfig& server,
                                const ModelOptions& model, std::unique_ptr<ModelHarness>* out) {
  std::unique_ptr<ModelHarness> h(new ModelHarness());
  ext2::OpenOptions open;
  open.read_write = server.read_write;
  std::string why;
  auto e2 = ext2::Ext2Fs::Open(image, open, &why);
  if (!e2) return "opening " + image + ": " + why;
  h->fs_ = std::make_unique<ext4::Filesystem>(std::move(*e2), ext4::Options{});
  dispatch::DispatcherOptions d;
  d.read_only = !server.read_write;
  d.iomap = server.iomap;
  h->dispatcher_ = std::make_unique<dispatch::Dispatcher>(*h->fs_, d);
  int req[2], ctl[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, req) != 0 ||
      socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) != 0) {
    return std::string("socketpair: ") + strerror(errno);
  }
  h->channel_ = std::make_unique<session::SocketChannel>(UniqueFd(req[0]), UniqueFd(ctl[0]));
  h->server_ = std::make_unique<session::SocketServer>(*h->dispatcher_, *h->channel_);
  h->server_->Start(server.workers);
  h->model_ = std::make_unique<KernelModel>(UniqueFd(req[1]), UniqueFd(ctl[1]), model);
  if (Result<void> m = h->model_->Mount(); !m) {
    return std::string("model mount: ") + strerror(m.error());
  }
  *out = std::move(h);
  return "";
}

std::string ModelHarness::Stop() {
  if (stopped_) return "";
  stopped_ = true;
  std::string err;
  if (model_ != nullptr) {
    if (Result<void> u = model_->Unmount(); !u)
      err += std::string("unmount: ") + strerror(u.error());
  }
  if (server_ != nullptr) server_->Join();
  if (fs_ != nullptr) {
    if (Result<void> c = fs_->Close(); !c) err += std::string(" close: ") + strerror(c.error());
  }
  return err;
}

Result<std::vector<std::byte>> ReadHostFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Unexpected(errno);
  std::vector<std::byte> out;
  std::byte buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) return Unexpected(errno);
    if (n == 0) return out;
    out.insert(out.end(), buf, buf + n);
  }
}

}  // namespace iomapfs::kmodel
