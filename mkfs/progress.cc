#include "mkfs/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

namespace iomapfs::mkfs {

void Progress::Start(uint64_t total_files, uint64_t total_bytes) {
  total_files_ = total_files;
  total_bytes_ = total_bytes;
  start_ = std::chrono::steady_clock::now();
  started_ = true;
  Draw(true);
}

void Progress::Advance(uint64_t files, uint64_t bytes) {
  files_done_ += files;
  bytes_done_ += bytes;
  Draw(false);
}

void Progress::Finish() {
  if (!enabled_ || !started_) return;
  Draw(true);
  (void)!write(fd_, "\n", 1);
  started_ = false;
}

void Progress::Draw(bool force) {
  if (!enabled_ || !started_) return;
  auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  double secs = std::chrono::duration<double>(now - start_).count();
  double fraction = total_bytes_ > 0   ? static_cast<double>(bytes_done_) / total_bytes_
                    : total_files_ > 0 ? static_cast<double>(files_done_) / total_files_
                                       : 1.0;
  fraction = std::clamp(fraction, 0.0, 1.0);
  constexpr int kWidth = 30;
  int filled = static_cast<int>(fraction * kWidth);
  std::string bar(filled, '#');
  bar.append(kWidth - filled, '.');
  constexpr double kMiB = 1024.0 * 1024.0;
  double rate = secs > 0 ? bytes_done_ / kMiB / secs : 0.0;
  char line[256];
  int n = snprintf(
      line, sizeof(line), "\rCopying [%s] %3d%%  files %llu/%llu  %.1f/%.1f MiB  %.1f MiB/s ",
      bar.c_str(), static_cast<int>(fraction * 100), static_cast<unsigned long long>(files_done_),
      static_cast<unsigned long long>(total_files_), bytes_done_ / kMiB, total_bytes_ / kMiB, rate);
  if (n > 0) (void)!write(fd_, line, std::min<size_t>(static_cast<size_t>(n), sizeof(line) - 1));
}

}  // namespace iomapfs::mkfs
