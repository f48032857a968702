// Test support: temporary directories, running commands, making ext4 images.
//
// Thread-safety: none needed (tests are single-threaded unless they say otherwise).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace iomapfs::testing {

// A fresh directory under $TMPDIR (or /tmp), removed recursively on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;  // -1 if it did not exit normally
  std::string output;  // stdout and stderr together
};

// Runs `argv` (no shell) and collects its output.
CommandResult Run(const std::vector<std::string>& argv);
// Runs a shell command line (for tests that need pipes or redirection).
CommandResult RunShell(const std::string& command_line);

// Creates `path` as a `size_bytes` sparse file and runs mke2fs on it:
//   mke2fs -q -F -t <fs_type> <extra_args...> [-d source_dir] path
// Returns an empty string on success, else mke2fs's output.
std::string MakeImage(const std::string& path, uint64_t size_bytes, const std::string& fs_type,
                      const std::vector<std::string>& extra_args,
                      const std::string& source_dir = "");

// Runs `e2fsck -fn` on the image. Returns true if it is clean; *output gets its output.
bool FsckClean(const std::string& image, std::string* output = nullptr);

bool IsRoot();
// Writes `data` to `path` (creating it), returns false on error.
bool WriteFile(const std::string& path, const std::string& data);
// The whole file `path` (empty if it cannot be read).
std::string ReadAll(const std::string& path);

// Polls `pred` every 20 ms until it holds, for up to `secs`. Returns: whether it held.
template <class Pred>
bool WaitFor(Pred pred, int secs = 10) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(secs);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

// Deterministic test data. RandomPattern: `size` pseudo-random bytes from `seed` (an LCG).
// BytePattern: `n` bytes of a slowly varying sequence from `seed` (no two 4 KiB pages alike).
std::string RandomPattern(size_t size, uint32_t seed);
std::vector<std::byte> BytePattern(size_t n, uint8_t seed);

}  // namespace iomapfs::testing
