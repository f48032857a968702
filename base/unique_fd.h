// UniqueFd: a move-only owner of a file descriptor.
//
// Thread-safety: not synchronized; one owner at a time. Close() reports close(2) errors,
// the destructor ignores them.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <utility>

#include "base/result.h"

namespace iomapfs {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  // Returns: close(2)'s error, if any. The fd is released either way.
  Result<void> Close() {
    if (fd_ < 0) return {};
    int rc = ::close(std::exchange(fd_, -1));
    if (rc != 0) return Unexpected(errno);
    return {};
  }

 private:
  int fd_ = -1;
};

}  // namespace iomapfs
