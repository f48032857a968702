// Dispatcher: the per-connection BPF entry point (the kernel hook is one struct_ops table per
// connection, spec §13.2) and the lifetime of every file's BPF state behind it.
//
// Mechanism. Sleepable programs (SYSCALL here; the hook's struct_ops programs are sleepable too)
// may not use BPF_MAP_TYPE_PROG_ARRAY: the verifier says "Sleepable programs can only use array,
// hash, ringbuf and local storage maps", so a program array with tail calls cannot dispatch to
// per-file programs (measured on 6.18, see DispatcherKernel.ProgArrayRejectedForSleepable).
// Map-in-map is allowed, so the dispatcher is one fixed program that looks up
//   index:   ARRAY  u32 node id -> DispatchEntry {capacity class, slot, sequence number} for node
//                   ids below DispatcherOptions::direct_nodeids (an inlined bounds check and
//                   shift), HASH u64 node id -> DispatchEntry for the others (a call that hashes
//                   the key and walks a bucket: ~30 ns more per lookup, measured with
//                   bench/bpf_lookup_bench.cc)
//   class c: ARRAY_OF_MAPS u32 map slot -> the file's MapLayout array map (capacity 2^c)
// and runs the map search of codegen.h over the file's map. A file that is one extent or an exact
// stride (DetectStride) needs no map: its index entry names a slot of one shared table
// (ArithSlot) holding the shape, and the dispatcher computes its mapping (choice by shape inside
// the one program the hook can run). Installing, replacing (a new inner
// map, atomically swapped into its class) or removing one file never reloads the program or
// touches other files; extent changes that fit the capacity are written in place through the
// mmap (double-buffered). Every install carries a new sequence number, stored in the index and in
// the inner map's header; a lookup that sees two different numbers falls back (stale). The same
// check, with the node id recorded next to it, covers a recycled HASH element and an ARRAY entry
// read while it is rewritten in place (GenerateDispatcher).
//
// Lifetime. Files are installed when their extents are known, replaced when they change,
// removed when the inode is forgotten, and bounded by a Budget (files, map bytes) with
// least-recently-used eviction (Touch() marks use). Eviction only sends the file back to the
// server path.
//
// Thread-safety: not synchronized; the owner serializes calls (Run() may be called concurrently
// with itself). Move-only; owns the program, maps and mmaps.
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "bpf/codegen.h"
#include "bpf/file_map.h"
#include "bpf/kernel.h"
#include "bpf/struct_ops.h"

namespace iomapfs::bpf {

struct Budget {
  size_t max_files = 4096;
  uint64_t max_map_bytes = 256ull << 20;
};

struct DispatcherOptions {
  uint32_t min_log2_capacity = 4;   // 16 intervals
  uint32_t max_log2_capacity = 18;  // 262,144 intervals (about 100k-200k extents)
  uint32_t max_files = 65536;       // HASH index and map-of-maps capacity
  // Node ids below this are indexed directly (ARRAY). Its memory is allocated at Create():
  // sizeof(DispatchEntry) = 16 bytes per node id, 1 MiB at the default and at most
  // kMaxDirectNodeids (16 MiB). The server sizes it from the file system's inode count (node id =
  // inode number). 0: every node id goes through the HASH.
  uint32_t direct_nodeids = 1u << 16;
  uint32_t arith_slots = 4096;  // arithmetic files at once (a power of two; 0: none)
  Budget budget;
};

struct DispatcherStats {
  uint64_t installs = 0;
  uint64_t in_place_updates = 0;
  uint64_t evictions = 0;
  uint64_t refused = 0;     // files left on the server path (too large, map creation failed)
  uint64_t arithmetic = 0;  // installs answered by computation from a slot (no map)
};

class Dispatcher {
 public:
  static constexpr uint32_t kMaxDirectNodeids = 1u << 20;

  Dispatcher() = default;
  Dispatcher(Dispatcher&&) = default;
  Dispatcher& operator=(Dispatcher&&) = default;

  // Creates the maps and loads the dispatcher program.
  // Errors: EINVAL arith_slots not a power of two, direct_nodeids > kMaxDirectNodeids; the bpf(2)
  // errno; *reason (if not null) says what failed, with the verifier log.
  static Result<Dispatcher> Create(const DispatcherOptions& options, std::string* reason);

  // Installs `map` for its node id, replacing what was there: in place if it already has a map of
  // the same capacity class, block size and device, else with a new inner map. Evicts
  // least-recently-used files to stay within the budget. Returns: the sequence number now installed
  // for the file. Errors: ENOSPC/E2BIG the file does not fit any class or the budget, or is not
  // MapLayout::Encodable (it stays on the server path; not fatal); the bpf(2) errno of a failed
  // map operation (the file is then not installed).
  Result<uint64_t> Install(const FileMap& map);

  // Forgets the node id (FORGET, eviction). Returns: whether it was installed.
  bool Remove(uint64_t nodeid);
  // Marks the file as recently used (LRU).
  void Touch(uint64_t nodeid);
  bool Contains(uint64_t nodeid) const { return files_.count(nodeid) != 0; }
  // Whether the file is answered by computation from a slot (no map of its own).
  bool IsArithmetic(uint64_t nodeid) const;
  // Returns: the installed sequence number, or 0.
  uint64_t SeqOf(uint64_t nodeid) const;

  // Attaches the dispatcher's search, over the same maps, as the connection's
  // fuse_iomap_bpf_ops.iomap_begin (spec §13.2; struct_ops.h) if the kernel has the hook.
  // Returns: true attached; false the hook is absent (DetectStructOps logs it once): the server
  // keeps answering BEGIN itself and Run() still works.
  // Errors: as DetectStructOps and StructOpsLink::Attach (*reason says which step failed).
  Result<bool> AttachHook(int fuse_fd, std::string* reason);
  bool hook_attached() const { return hook_.attached(); }

  // Runs the dispatcher once (BPF_PROG_TEST_RUN). Errors: the bpf(2) errno.
  Result<Answer> Run(const BeginCtx& ctx) const;

  int fd() const { return prog_.get(); }
  // Returns: the index entry the program sees for `nodeid` (diagnostics); ENOENT none.
  Result<DispatchEntry> IndexEntry(uint64_t nodeid) const;
  // Writes an index entry for `nodeid` behind the dispatcher's back (tests: what a reader sees
  // when a hash element is recycled or an in-place write is half done). Errors: the bpf(2) errno.
  Result<void> WriteIndexEntryForTesting(uint64_t nodeid, const DispatchEntry& e);
  size_t insn_count() const { return insns_.size(); }
  const std::vector<bpf_insn>& insns() const { return insns_; }
  size_t files() const { return files_.size(); }
  uint64_t map_bytes() const { return map_bytes_; }
  const DispatcherStats& stats() const { return stats_; }

 private:
  struct File {
    uint32_t log2_capacity = 0;  // kArithmeticClass: `slot` of the arithmetic table
    uint32_t slot = 0;           // else: its map slot (index in its class's ARRAY_OF_MAPS)
    uint64_t seq = 0;
    UniqueFd map;
    MappedValue value;
    std::list<uint64_t>::iterator lru;
  };
  void Evict(uint64_t keep);
  bool Direct(uint64_t nodeid) const { return nodeid < options_.direct_nodeids; }
  // Points the index at `e` for `nodeid`. Errors: the bpf(2) errno.
  Result<void> WriteEntry(uint64_t nodeid, const DispatchEntry& e);
  // From then on lookups of `nodeid` fall back.
  void EraseEntry(uint64_t nodeid);
  DispatcherMaps Maps() const;
  uint8_t* Slot(uint32_t slot) const { return arith_value_.data() + slot * ArithSlot::kBytes; }
  // Installs `map` (shape `shape`) as an arithmetic file. Returns: the sequence number; ENOSPC no
  // free slot (the caller uses a map instead).
  Result<uint64_t> InstallArithmetic(const FileMap& map, const StrideShape& shape);
  // Releases what the file held besides its index entry (its arithmetic slot; or its class entry
  // unless the node now lives in class `new_log2`, and its map slot unless `keep_map_slot`), and
  // forgets it.
  void Forget(uint64_t nodeid, uint32_t new_log2, bool keep_map_slot);

  DispatcherOptions options_;
  UniqueFd prog_;
  UniqueFd index_;                 // HASH
  UniqueFd direct_;                // ARRAY, if options_.direct_nodeids > 0
  std::vector<UniqueFd> classes_;  // [log2 - min_log2_capacity]
  UniqueFd arith_;                 // the ArithSlot table (one value of arith_slots slots)
  MappedValue arith_value_;
  std::vector<uint32_t> free_slots_;      // arithmetic table
  std::vector<uint32_t> free_map_slots_;  // class arrays
  std::vector<bpf_insn> insns_;
  std::unordered_map<uint64_t, File> files_;
  std::list<uint64_t> lru_;  // front: most recently used
  uint64_t next_seq_ = 1;
  uint64_t map_bytes_ = 0;
  DispatcherStats stats_;
  StructOpsLink hook_;
};

}  // namespace iomapfs::bpf
