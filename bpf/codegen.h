// Codegen: turns a FileMap into a BPF program answering iomap_begin (see file_map.h for what it
// answers), choosing the strategy by the shape of the file:
//   - kArithmetic: a single extent, or extents of one length, type and flags at an exact logical
//     and physical stride: a division (a shift for a power of two) and a few compares, ~30-60
//     instructions for any number of extents;
//   - kTree: up to `tree_max_intervals` intervals: a balanced decision tree over the interval
//     starts with every constant inline, leaves jumping to one shared epilogue; rejected above
//     `tree_max_insns` instructions;
//   - kMapSearch: up to `map_max_intervals` intervals: a fixed, fully unrolled branchless
//     S+ tree search over a BPF_F_MMAPABLE array map (MapLayout) that the server rewrites in
//     place; the program only depends on the capacity, so an extent change that fits is a data
//     update;
//   - kNone: anything else (too many intervals, not MapLayout::Encodable, INLINE data): no
//     program, the server answers.
//
// Register use in every program: r6 context (or the reply, struct_ops), r7 pos, r8 the write-op
// bits of opflags; the map search (kMapSearch, the dispatcher) keeps the seqcount it first read on
// the stack and uses r7 and r9 as counters once pos is no longer needed.
// Thread-safety: pure functions.
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/result.h"
#include "bpf/file_map.h"

namespace iomapfs::bpf {

enum class Strategy { kNone, kArithmetic, kTree, kMapSearch };
const char* StrategyName(Strategy s);

struct CodegenOptions {
  size_t tree_max_intervals = 96;
  size_t tree_max_insns = 1024;
  size_t map_max_intervals = 1u << 20;  // 40 MiB of double-buffered map value
  bool allow_arithmetic = true;
  bool allow_tree = true;
};

// The arithmetic form: `count` extents of `length` bytes at file offsets first + k*stride and
// device addresses addr0 + k*addr_stride (mod 2^64), holes everywhere else.
struct StrideShape {
  uint64_t first = 0;
  uint64_t length = 0;
  uint64_t stride = 0;
  uint64_t count = 0;
  uint64_t addr0 = 0;
  uint64_t addr_stride = 0;  // two's complement: physical strides may be negative
  uint16_t type = 0;
  uint16_t flags = 0;
};

// Returns: true and *shape if `map` is exactly a StrideShape (one extent included).
bool DetectStride(const FileMap& map, StrideShape* shape);

// The array-map value of kMapSearch: a header and two buffers. Each buffer holds an index, then
// `capacity` (a power of two >= max(intervals, 16)) 16-byte records in sorted order, in groups of
// kGroupRecords (one 256-byte block each):
//   u32 key   b - 1, where b is the interval's first block (start / block size), modulo 2^32;
//             kPadKey for unused records
//   u32 len   its length in blocks, 0 for the last interval (which ends at MaxEnd)
//   u64 word  addr | flags << 2 | type (addr block-aligned, so its low 10 bits are free: blocks
//             are >= 1 KiB; 0 for a HOLE, whose address is FUSE_IOMAP_NULL_ADDR and device 0)
// The index is a static B+ tree ("S+ tree") over the groups: levels of nodes of kNodeKeys u32
// keys, one 64-byte cache line each, root first; a node has up to 16 children (nodes of the level
// below, or groups under the last level). Key j of a node is the key of the first record under
// child j, or kPadKey past the last child (only the root may have fewer than 16, so that every
// level has a power-of-two node count). With p = min(pos / block size, 2^32 - 1), "child j (or
// record j) starts at or before pos" is key[j] < p: starts are block-aligned, and the -1 puts
// every real key below the pad, since ext4 block numbers are < 2^32. Key 0 of a node or group is
// never compared: what the descent reaches always starts at or before pos. Per level,
//   i = 16 i + #{j in 1..15 : key[j] < p}
// branchless, then once more over the group's record keys (15 loads from 4 lines that the CPU
// fetches in parallel, after which the record is in cache). A cold lookup is one line per level
// plus the group: 3 levels + 1 group for 2^16 intervals, against 16 dependent lines for a binary
// search; the levels are 1/64 of the records' size, small enough to stay cached, and records of
// 16 bytes halve what a random lookup pulls from memory, which is what a cold lookup's cost
// follows (measured: bench/bpf_lookup_bench.cc).
// A file is encodable (Encodable) if its blocks are at least 1 KiB and every interval starts
// below 2^32 blocks: always true of ext4, whose logical block numbers are 32-bit.
// Readers (the program): s1 = seq; search buffer (s1 >> 1) & 1; s2 = seq; the answer is valid only
// if s2 - (s1 & ~1) <= 2, otherwise FIB_FALLBACK. Writer: seq = s + 1; fill buffer
// ((s >> 1) + 1) & 1; seq = s + 2. A reader that overlaps a write into its buffer therefore sees
// s2 >= (s1 & ~1) + 3. The reader relies on the JIT keeping its loads in order (x86-TSO; weakly
// ordered CPUs would need a read barrier that BPF lacks, short of a fully ordered atomic).
struct MapLayout {
  static constexpr uint32_t kHeaderBytes = 64;
  static constexpr uint32_t kRecordBytes = 16;
  static constexpr uint32_t kRecordTagBits = 10;  // type (2 bits) and flags (8 bits) in the word
  static constexpr uint32_t kGroupRecords = 16;
  static constexpr uint32_t kMinCapacity = kGroupRecords;
  static constexpr uint32_t kNodeKeys = 16;
  static constexpr uint32_t kNodeBytes = kNodeKeys * 4;
  static constexpr uint32_t kPadKey = 0xffffffff;
  // Header: u64 seqcount, capacity, interval count, file sequence number (dispatcher check), u32
  // log2(block size) and u32 device id (fixed for the map's life: both buffers use them), u64
  // node id (dispatcher check).
  static constexpr int kFileSeqOffset = 24;
  static constexpr int kBlockBitsOffset = 32;
  static constexpr int kDevOffset = 36;
  static constexpr int kNodeidOffset = 40;
  uint32_t capacity = 0;  // power of two >= kMinCapacity

  struct Level {
    uint64_t offset = 0;  // byte offset of the level's first node inside a buffer
    uint64_t nodes = 0;   // a power of two
    uint64_t width = 0;   // groups under one node
  };
  // The index levels, root first; empty when the records are one group.
  std::vector<Level> Levels() const;
  uint64_t groups() const { return capacity / kGroupRecords; }
  uint64_t tree_bytes() const;
  uint64_t buffer_bytes() const { return tree_bytes() + uint64_t{capacity} * kRecordBytes; }
  uint64_t value_bytes() const { return kHeaderBytes + 2 * buffer_bytes(); }
  static MapLayout ForIntervals(size_t intervals);
  // Returns: whether `map` fits the record format (see above).
  static bool Encodable(const FileMap& map);
};

// Where and how a generated program reads its arguments and writes its reply.
enum class Abi {
  kSyscall,    // BPF_PROG_TYPE_SYSCALL: BeginCtx (file_map.h)
  kStructOps,  // fuse_iomap_bpf_ops.iomap_begin: u64 args[] {inode, pos, count, opflags, outarg}
};

struct Generated {
  Strategy strategy = Strategy::kNone;
  std::vector<bpf_insn> insns;
  std::string reason;  // why kNone, or why a cheaper strategy was not used
};

// Picks a strategy for `map` without generating code.
// Returns: the strategy; *reason (if not null) says why.
Strategy Choose(const FileMap& map, const CodegenOptions& options, std::string* reason);

// Generates the program for `map` with sequence number `seq`. For kMapSearch, `map_fd` is the fd
// of an array map created for MapLayout::ForIntervals(map.intervals.size()) (see
// CreateSearchMap); it is ignored otherwise.
// Returns: the program (strategy kNone and a reason if the file gets none).
// Errors: EINVAL an internal assembler error (a bug: the message is logged).
Result<Generated> Generate(const FileMap& map, uint64_t seq, Strategy strategy, int map_fd,
                           Abi abi = Abi::kSyscall);

// Writes the header (seq 0, capacity, count, `file_seq`, block bits) and buffer 0 of a fresh map
// image (`value` is value_bytes() long). REQUIRES: MapLayout::Encodable(map).
void WriteInitialImage(const FileMap& map, const MapLayout& layout, uint8_t* value,
                       uint64_t file_seq = 0);

// The dispatcher's table of arithmetic files: a file that is one extent or an exact stride
// (StrideShape) is described entirely by a slot of this table (a BPF_F_MMAPABLE array map with
// one value of `slots` slots) and its mapping is computed, with no map of its own. A slot is
// kBytes: u64 seqcount at 0, then two buffers of kFields u64 at kBufferOffset + b * kBufferBytes,
// written and read with the seqcount protocol of MapLayout (a reader that overlaps a rewrite
// falls back), and carrying the node id and file sequence number that the index entry must
// name.
struct ArithSlot {
  static constexpr uint32_t kBytes = 256;
  static constexpr uint32_t kBufferOffset = 64;
  static constexpr uint32_t kBufferBytes = 96;
  enum Field : int {
    kFileSeq,
    kFirst,       // file offset of extent 0
    kLength,      // of every extent
    kStride,      // file offset step (> 0)
    kLastEnd,     // end of the last extent
    kAddr0,       // device address of extent 0
    kAddrStride,  // device address step (mod 2^64)
    kTypeWord,    // type | flags << 16 | dev << 32 of every extent
    kMaxEnd,      // end of the final hole (MaxEnd)
    kNodeid,      // the file's node id
    kFields,
  };
};
static_assert(ArithSlot::kBufferOffset + 2 * ArithSlot::kBufferBytes <= ArithSlot::kBytes &&
              ArithSlot::kFields * 8 <= ArithSlot::kBufferBytes);

// Publishes `shape` (DetectStride of `map`) with `file_seq` into `slot` (ArithSlot::kBytes of
// the table's mmap): the inactive buffer, then the flip. REQUIRES: one writer at a time.
void PublishArithSlot(const FileMap& map, const StrideShape& shape, uint64_t file_seq,
                      uint8_t* slot);

// The maps a dispatcher program reads: the index, per capacity class an ARRAY_OF_MAPS (u32 map
// slot -> the file's MapLayout array map; an array, so that the lookup is an inlined bounds check
// and load, not a second hash lookup), and the table of arithmetic files. The index is two maps:
// node ids below `direct_nodeids` are direct-indexed in an ARRAY (u32 key = the node id; the
// verifier inlines its lookup as a bounds check and a shift, where a HASH lookup is a call that
// hashes the key and walks a bucket); larger node ids are in a HASH (u64 key).
inline constexpr uint32_t kArithmeticClass = 0;  // DispatchEntry::log2_capacity of such files
struct DispatchEntry {
  uint32_t log2_capacity = 0;  // kArithmeticClass: computed from ArithSlot `slot`
  uint32_t slot = 0;           // else: the index of the file's map in its class's array
  uint64_t seq = 0;  // must equal the inner map's (or the slot's) file sequence number; 0 (an
                     // ARRAY entry never written or cleared) names no file
};
static_assert(sizeof(DispatchEntry) == 16);
struct DispatcherMaps {
  int index_fd = -1;                              // HASH: u64 node id -> DispatchEntry
  int direct_fd = -1;                             // ARRAY: u32 node id -> DispatchEntry; -1: none
  uint32_t direct_nodeids = 0;                    // its max_entries (<= INT32_MAX)
  std::vector<std::pair<uint32_t, int>> classes;  // {log2 capacity, ARRAY_OF_MAPS fd}
  int arith_fd = -1;                              // -1: no arithmetic files
  uint32_t arith_slots = 0;                       // a power of two
};

// Every answer is checked against the node id looked up and the sequence number the index entry
// names, both recorded in the file's map header or slot: a BPF hash map may recycle an element
// that a reader still holds (a preallocated element goes back on a free list when its key is
// deleted or updated), so an index value may change under the reader, even to another node's.
// An ARRAY entry is written in place (bpf_map_update_elem copies it without a lock), so a reader
// may see a mixture of the old and new entry's fields; the same check makes that safe: an entry
// passes only if the map or slot it names records this node id and the entry's sequence number,
// and the only ones that do are the node's current install and the one it replaces.
// Generates the per-connection dispatcher: looks the node id up in the index; for an arithmetic
// file computes the mapping from its slot (the arithmetic strategy, with the shape read from the
// slot instead of immediates); otherwise finds the file's map in its class's map-of-maps, checks
// that both carry the same sequence number, and runs the map search. Unknown node ids fall back.
// With Abi::kSyscall (BPF_PROG_TYPE_SYSCALL, context BeginCtx) the node id is ctx->nodeid. With
// Abi::kStructOps (fuse_iomap_bpf_ops.iomap_begin, spec §13.2) it comes from the kfunc
// fuse_bpf_inode_nodeid(inode), whose BTF id is `nodeid_kfunc_btf_id` (REQUIRES: > 0) in vmlinux
// (`kfunc_fd_index` 0) or in the module BTF object at that index of the program's fd_array.
Result<Generated> GenerateDispatcher(const DispatcherMaps& maps, Abi abi = Abi::kSyscall,
                                     int32_t nodeid_kfunc_btf_id = 0, int16_t kfunc_fd_index = 0);

// Publishes `map` into the inactive buffer of a live image and flips to it (the writer protocol
// above). REQUIRES: one writer at a time; map.intervals.size() <= layout.capacity; Encodable(map);
// ImageMatches(value, map).
void PublishImage(const FileMap& map, const MapLayout& layout, uint8_t* value);

// Returns: whether the block size, device and node id in a map image's header are `map`'s (an
// image is updated in place only then).
bool ImageMatches(const uint8_t* value, const FileMap& map);

}  // namespace iomapfs::bpf
