// Progress: the progress bar iomapfs-mkfs draws on a terminal while copying files.
//
// Disabled (every call a no-op) unless constructed with enabled = true; main enables it when
// stderr is a terminal and -q is not given. Redraws at most ten times a second.
//
// Thread-safety: not synchronized; one thread drives it. Ownership: writes to the fd it is
// given, which it does not own.
#pragma once

#include <chrono>
#include <cstdint>

namespace iomapfs::mkfs {

class Progress {
 public:
  Progress(bool enabled, int fd) : enabled_(enabled), fd_(fd) {}
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void Start(uint64_t total_files, uint64_t total_bytes);
  // Adds to the counts of files and bytes done; redraws if due.
  void Advance(uint64_t files, uint64_t bytes);
  // Draws the final state and ends the line.
  void Finish();

  uint64_t files_done() const { return files_done_; }
  uint64_t bytes_done() const { return bytes_done_; }

 private:
  void Draw(bool force);

  bool enabled_;
  int fd_;
  bool started_ = false;
  uint64_t total_files_ = 0, total_bytes_ = 0;
  uint64_t files_done_ = 0, bytes_done_ = 0;
  std::chrono::steady_clock::time_point start_{}, last_draw_{};
};

}  // namespace iomapfs::mkfs
