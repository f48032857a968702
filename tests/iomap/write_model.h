// WriteModel: drives the engine's write side the way the server does (PrepareWrite, zeroing,
// device writes outside the lock, CompleteWrite; Truncate, Punch, Allocate, ZeroRange with their
// zero spans) against a read-write image, and keeps a model of every file's expected contents
// (one std::string per file) to compare with what the engine reads back.
//
// Thread-safety: none (single-threaded tests). Ownership: owns the OpenedFs.
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ext2/transaction.h"
#include "iomap/engine.h"
#include "tests/iomap/iomap_test_util.h"

namespace iomapfs::iomap::testing {

// Opens `image` read-write (fails the calling test on error).
OpenedFs OpenImageRw(const std::string& image);

// One write the way the server does it: PrepareWrite (mappings checked), the zero spans and the
// data written to the device outside the lock (WriteInline for INLINE), CompleteWrite.
// Returns: 0 or the errno of the failing step.
int WriteThroughEngine(OpenedFs& o, uint64_t ino, uint64_t pos, const std::string& data);

class WriteModel {
 public:
  explicit WriteModel(const std::string& image);

  OpenedFs& fs() { return o_; }
  uint32_t block_size() const { return bs_; }

  // Starts tracking the file at `path` (its current contents become the model).
  uint64_t Track(const std::string& path);
  const std::map<uint64_t, std::string>& files() const { return model_; }

  // Each operation updates the model only if the engine call succeeded; returns its errno
  // (0 on success). Every mapping the write path sees is checked (CheckMapping, exact coverage).
  int Write(uint64_t ino, uint64_t pos, const std::string& data);
  int Truncate(uint64_t ino, uint64_t size);
  int Punch(uint64_t ino, uint64_t pos, uint64_t len);
  int Allocate(uint64_t ino, uint64_t pos, uint64_t len, bool keep_size);
  int ZeroRange(uint64_t ino, uint64_t pos, uint64_t len, bool keep_size);

  // Reads every tracked file through the engine and compares it with the model.
  void VerifyAll();
  void Verify(uint64_t ino);

  // Random operations on the tracked files: sizes up to `max_size`.
  void RandomOps(int count, uint64_t max_size, uint64_t seed, bool allow_fallocate);

  // RandomOps verifies the file it touched every `n` operations (and after the last).
  void set_verify_every(int n) { verify_every_ = n; }

  // Closes the filesystem (marks it clean); the model stays.
  void Close();
  // Opens `image` again (after Close()), read-write or read-only, keeping the model.
  void Reopen(const std::string& image, bool read_write);

 private:
  int ZeroSpans(const std::vector<ZeroSpan>& spans);

  OpenedFs o_;
  uint32_t bs_ = 0;
  int verify_every_ = 7;
  std::map<uint64_t, std::string> model_;
};

// Number of leaf extents of `ino` (0 for a non-extent file).
size_t CountExtents(OpenedFs& o, uint64_t ino);

}  // namespace iomapfs::iomap::testing
