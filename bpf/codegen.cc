#include "bpf/codegen.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>

#include "base/log.h"
#include "bpf/assembler.h"

namespace iomapfs::bpf {

using iomap::Mapping;
using iomap::MappingType;

const char* StrategyName(Strategy s) {
  switch (s) {
    case Strategy::kNone:
      return "none";
    case Strategy::kArithmetic:
      return "arithmetic";
    case Strategy::kTree:
      return "tree";
    case Strategy::kMapSearch:
      return "map-search";
  }
  return "?";
}

namespace {

// The 8 bytes at offset 24 of a fuse_iomap_io: type, flags, dev.
uint64_t TypeWord(const IomapIo& io) {
  return uint64_t{io.type} | uint64_t{io.flags} << 16 | uint64_t{io.dev} << 32;
}

// Code shared by every strategy: prologue, the epilogue that writes the reply from
// r2 offset, r3 length, r4 addr, r5 type word, and the fallback exit.
class Gen {
 public:
  Gen(const FileMap& map, uint64_t seq, Abi abi) : map_(map), seq_(seq), abi_(abi) {
    fallback_ = a_.NewLabel();
    epilogue_ = a_.NewLabel();
  }

  Assembler& a() { return a_; }
  Label fallback() const { return fallback_; }
  Label epilogue() const { return epilogue_; }

  // if reg != value goto target (r0 is scratch).
  void JumpIfNe(Reg reg, uint64_t value, Label target) {
    if (value <= INT32_MAX)
      return a_.JumpIfImm(Cond::kNe, reg, static_cast<int64_t>(value), target);
    a_.MovImm(R0, value);
    a_.JumpIf(Cond::kNe, reg, R0, target);
  }
  // if reg <cond> value goto target, unsigned (r0 is scratch).
  void JumpIfCmp(Cond cond, Reg reg, uint64_t value, Label target) {
    if (value <= INT32_MAX) return a_.JumpIfImm(cond, reg, static_cast<int64_t>(value), target);
    a_.MovImm(R0, value);
    a_.JumpIf(cond, reg, R0, target);
  }

  // `identity`: check the context's node id and expected sequence number against the
  // program's own (per-file programs; the dispatcher checks its table instead).
  void Prologue(bool identity = true) {
    if (abi_ == Abi::kSyscall) {
      a_.Mov(R6, R1);
      if (identity) {
        a_.Load(Size::kDW, R2, R6, kCtxNodeid);
        JumpIfNe(R2, map_.nodeid, fallback_);
        a_.Load(Size::kDW, R2, R6, kCtxExpectSeq);
        JumpIfNe(R2, seq_, fallback_);
      }
      a_.Load(Size::kDW, R7, R6, kCtxPos);
      a_.Load(Size::kW, R8, R6, kCtxOpflags);
    } else {
      // struct_ops programs see the hook's arguments as u64 args[]: inode, pos, count, opflags,
      // outarg (spec §13.2); the node id check is the dispatcher's.
      a_.Load(Size::kDW, R7, R1, 8);
      a_.Load(Size::kW, R8, R1, 24);
      a_.Load(Size::kDW, R6, R1, 32);
    }
    a_.Mov(R1, R7);
    a_.Alu64Imm(Alu::kRsh, R1, std::countr_zero(kPosLimit));
    a_.JumpIfImm(Cond::kNe, R1, 0, fallback_);
    a_.JumpIfImm(Cond::kSet, R8, kNeverOps, fallback_);
    a_.Alu64Imm(Alu::kAnd, R8, static_cast<int32_t>(kWriteOps));
  }

  // Loads the reply for interval `m` into r2..r5 and jumps to the epilogue.
  void Leaf(const Mapping& m) {
    IomapIo io = ReadSlot(map_, m);
    a_.MovImm(R2, io.offset);
    a_.MovImm(R3, io.length);
    a_.MovImm(R4, io.addr);
    a_.MovImm(R5, TypeWord(io));
    a_.Jump(epilogue_);
  }

  void Epilogue() {
    const int out = abi_ == Abi::kSyscall ? kCtxOut : 0;
    Label store = a_.NewLabel();
    a_.Bind(epilogue_);
    // Write ops are answered only over written blocks (allocation and conversion need the server).
    a_.JumpIfImm(Cond::kEq, R8, 0, store);
    a_.Mov(R1, R5);
    a_.Alu64Imm(Alu::kAnd, R1, 0xffff);
    a_.JumpIfImm(Cond::kNe, R1, static_cast<int>(MappingType::kMapped), fallback_);
    a_.Bind(store);
    a_.Store(Size::kDW, R6, out + 0, R2);
    a_.Store(Size::kDW, R6, out + 8, R3);
    a_.Store(Size::kDW, R6, out + 16, R4);
    a_.Store(Size::kDW, R6, out + 24, R5);
    // Write slot: PURE_OVERWRITE over the same range, no address, no device (spec §4.2).
    a_.Store(Size::kDW, R6, out + 32, R2);
    a_.Store(Size::kDW, R6, out + 40, R3);
    a_.StoreImm(Size::kDW, R6, out + 48, -1);
    a_.StoreImm(Size::kDW, R6, out + 56, kTypePureOverwrite);
    a_.MovImm(R0, kFibHandled);
    a_.Exit();
    a_.Bind(fallback_);
    a_.MovImm(R0, kFibFallback);
    a_.Exit();
  }

  Result<Generated> Finish(Strategy s) {
    auto insns = a_.Finish();
    if (!insns) {
      LOG_ERROR("bpf codegen (%s): %s", StrategyName(s), a_.error_message().c_str());
      return Unexpected(insns.error());
    }
    Generated g;
    g.strategy = s;
    g.insns = std::move(*insns);
    return g;
  }

 private:
  const FileMap& map_;
  uint64_t seq_;
  Abi abi_;
  Assembler a_;
  Label fallback_;
  Label epilogue_;
};

void EmitTree(Gen& g, const std::vector<Mapping>& iv, size_t lo, size_t hi) {
  if (hi - lo == 1) return g.Leaf(iv[lo]);
  size_t mid = lo + (hi - lo) / 2;
  Label right = g.a().NewLabel();
  g.JumpIfCmp(Cond::kGe, R7, iv[mid].offset, right);
  EmitTree(g, iv, lo, mid);
  g.a().Bind(right);
  EmitTree(g, iv, mid, hi);
}

Result<Generated> GenTree(const FileMap& map, uint64_t seq, Abi abi) {
  Gen g(map, seq, abi);
  g.Prologue();
  EmitTree(g, map.intervals, 0, map.intervals.size());
  g.Epilogue();
  return g.Finish(Strategy::kTree);
}

Result<Generated> GenArithmetic(const FileMap& map, uint64_t seq, Abi abi) {
  StrideShape s;
  if (!DetectStride(map, &s)) return Unexpected(EINVAL);
  Gen g(map, seq, abi);
  Assembler& a = g.a();
  g.Prologue();
  const std::vector<Mapping>& iv = map.intervals;
  if (s.first > 0) {
    Label past = a.NewLabel();
    g.JumpIfCmp(Cond::kGe, R7, s.first, past);
    g.Leaf(iv.front());
    a.Bind(past);
  }
  const uint64_t last_end = s.first + (s.count - 1) * s.stride + s.length;
  Label inside = a.NewLabel();
  g.JumpIfCmp(Cond::kLt, R7, last_end, inside);
  g.Leaf(iv.back());
  a.Bind(inside);
  const uint64_t type_word = uint64_t{s.type} | uint64_t{s.flags} << 16 | uint64_t{map.dev} << 32;
  if (s.count == 1) {
    a.MovImm(R2, s.first);
    a.MovImm(R3, s.length);
    a.MovImm(R4, s.addr0);
    a.MovImm(R5, type_word);
    a.Jump(g.epilogue());
    g.Epilogue();
    return g.Finish(Strategy::kArithmetic);
  }
  const bool pow2 = std::has_single_bit(s.stride);
  const int shift = std::countr_zero(s.stride);
  a.MovImm(R0, s.first);
  a.Mov(R1, R7);
  a.Alu64(Alu::kSub, R1, R0);  // r1 = pos - first
  a.Mov(R3, R1);
  if (pow2) {
    a.Alu64Imm(Alu::kRsh, R3, shift);
  } else {
    a.MovImm(R0, s.stride);
    a.Alu64(Alu::kDiv, R3, R0);  // r3 = k, the extent number
  }
  a.Mov(R4, R3);
  if (pow2) {
    a.Alu64Imm(Alu::kLsh, R4, shift);
  } else {
    a.Alu64(Alu::kMul, R4, R0);  // r4 = k * stride
  }
  a.Alu64(Alu::kSub, R1, R4);  // r1 = offset within the stride
  a.MovImm(R2, s.first);
  a.Alu64(Alu::kAdd, R2, R4);  // r2 = the extent's offset
  Label gap = a.NewLabel();
  g.JumpIfCmp(Cond::kGe, R1, s.length, gap);
  if (s.addr_stride != 0) {
    a.MovImm(R0, s.addr_stride);
    a.Alu64(Alu::kMul, R3, R0);
  } else {
    a.MovImm(R3, 0);
  }
  a.MovImm(R4, s.addr0);
  a.Alu64(Alu::kAdd, R4, R3);
  a.MovImm(R3, s.length);
  a.MovImm(R5, type_word);
  a.Jump(g.epilogue());
  a.Bind(gap);  // the hole between extent k and k + 1
  a.MovImm(R0, s.length);
  a.Alu64(Alu::kAdd, R2, R0);
  a.MovImm(R3, s.stride - s.length);
  a.MovImm(R4, iomap::kNullAddr);
  a.MovImm(R5, 0);
  a.Jump(g.epilogue());
  g.Epilogue();
  return g.Finish(Strategy::kArithmetic);
}

// The search over a MapLayout value. REQUIRES: r1 = the map value, r7 = pos; r9 is free.
// `block_bits` is log2 of the file's block size, or -1 to read it from the header (the
// dispatcher: one program for every file). Leaves r2..r5 = the reply and jumps to the epilogue,
// or falls back.
constexpr int kSpillValue = -8;  // stack slot holding the map value pointer
constexpr int kSpillSeq = -64;   // and the seqcount first read (below the dispatcher's slots)

// r2 = 16 r2 + #{j in 1..15 : (key j at r4 + j * stride) - r0 < 0}, for keys and r0 below 2^63.
// The sign bit is taken with a shift (rather than masking with a 0/-1 value), which keeps the
// verifier from forking its state on every step (6.18 does for `x & K` when x is in [-1, 0]: the
// state count then grows with the capacity). Four accumulators (r2, r5, r7, r9; the search needs
// neither pos nor s1 in a register meanwhile) cut the chain of adds from 9 to 6.
void EmitCount(Assembler& a, Size key_size, int stride, uint32_t keys) {
  const Reg acc[4] = {R2, R5, R7, R9};
  a.Alu64Imm(Alu::kLsh, R2, std::countr_zero(keys));
  for (int j = 1; j < static_cast<int>(keys); ++j) {
    a.Load(key_size, R3, R4, j * stride);
    a.Alu64(Alu::kSub, R3, R0);
    a.Alu64Imm(Alu::kRsh, R3, 63);
    if (j < 4) {
      a.Mov(acc[j], R3);
    } else {
      a.Alu64(Alu::kAdd, acc[j % 4], R3);
    }
  }
  a.Alu64(Alu::kAdd, R2, R5);
  a.Alu64(Alu::kAdd, R7, R9);
  a.Alu64(Alu::kAdd, R2, R7);
}

void EmitSearch(Gen& g, const MapLayout& layout, int block_bits) {
  Assembler& a = g.a();
  a.Store(Size::kDW, R10, kSpillValue, R1);
  a.Load(Size::kDW, R9, R1, 0);  // s1
  a.Store(Size::kDW, R10, kSpillSeq, R9);
  const std::vector<MapLayout::Level> levels = layout.Levels();
  {
    a.Mov(R0, R7);
    if (block_bits >= 0) {
      a.Alu64Imm(Alu::kRsh, R0, block_bits);
    } else {
      a.Load(Size::kW, R3, R1, MapLayout::kBlockBitsOffset);
      a.Alu64Imm(Alu::kAnd, R3, 63);
      a.Alu64(Alu::kRsh, R0, R3);
    }
    // r0 = p = min(pos >> block_bits, 2^32 - 1), branchless: r3 = -1 if the high half is not 0.
    a.Mov(R3, R0);
    a.Alu64Imm(Alu::kRsh, R3, 32);
    a.Alu64Imm(Alu::kMul, R3, -1);
    a.Alu64Imm(Alu::kArsh, R3, 63);
    a.Alu64(Alu::kOr, R0, R3);
    a.Alu32Imm(Alu::kAnd, R0, 0xffffffff);
  }
  // r1 = the active buffer, chosen by a branch rather than arithmetic on s1: the branch is
  // predicted (the buffer changes only when the file does), so the CPU fetches the root while the
  // header line is still on its way instead of after it.
  a.Alu64Imm(Alu::kAdd, R1, MapLayout::kHeaderBytes);
  {
    Label first = a.NewLabel();
    a.Mov(R2, R9);
    a.Alu64Imm(Alu::kAnd, R2, 2);
    a.JumpIfImm(Cond::kEq, R2, 0, first);
    a.Alu64Imm(Alu::kAdd, R1, static_cast<int64_t>(layout.buffer_bytes()));
    a.Bind(first);
  }
  a.MovImm(R2, 0);  // r2 = node index in its level
  for (const MapLayout::Level& level : levels) {
    // The verifier cannot know that the index stays below the level's node count (the root may
    // have fewer than 16 children); the mask, a no-op on real data, tells it.
    if (level.nodes > 1) a.Alu64Imm(Alu::kAnd, R2, static_cast<int64_t>(level.nodes - 1));
    a.Mov(R4, R2);
    a.Alu64Imm(Alu::kLsh, R4, std::countr_zero(MapLayout::kNodeBytes));
    a.Alu64(Alu::kAdd, R4, R1);
    if (level.offset > 0) a.Alu64Imm(Alu::kAdd, R4, static_cast<int64_t>(level.offset));
    EmitCount(a, Size::kW, 4, MapLayout::kNodeKeys);
  }
  // r2 = the group: count its records starting at or before pos, with the same keys.
  const uint64_t group_bytes = uint64_t{MapLayout::kGroupRecords} * MapLayout::kRecordBytes;
  if (layout.groups() > 1) {
    a.Alu64Imm(Alu::kAnd, R2, static_cast<int64_t>(layout.groups() - 1));
    a.Mov(R4, R2);
    a.Alu64Imm(Alu::kLsh, R4, std::countr_zero(group_bytes));
    a.Alu64(Alu::kAdd, R4, R1);
  } else {
    a.Mov(R4, R1);
  }
  if (layout.tree_bytes() > 0) a.Alu64Imm(Alu::kAdd, R4, static_cast<int64_t>(layout.tree_bytes()));
  EmitCount(a, Size::kW, MapLayout::kRecordBytes, MapLayout::kGroupRecords);
  // r2 = the sorted index of the interval: its record.
  a.Alu64Imm(Alu::kAnd, R2, static_cast<int64_t>(layout.capacity - 1));
  a.Mov(R5, R2);
  a.Alu64Imm(Alu::kLsh, R5, std::countr_zero(MapLayout::kRecordBytes));
  a.Alu64(Alu::kAdd, R5, R1);
  if (layout.tree_bytes() > 0) a.Alu64Imm(Alu::kAdd, R5, static_cast<int64_t>(layout.tree_bytes()));
  a.Load(Size::kW, R2, R5, 0);   // key
  a.Load(Size::kW, R3, R5, 4);   // length in blocks
  a.Load(Size::kDW, R4, R5, 8);  // address | flags << 2 | type
  // Valid only if no writer started on this buffer meanwhile (see MapLayout).
  a.Load(Size::kDW, R1, R10, kSpillValue);
  a.Load(Size::kDW, R5, R1, 0);
  a.Load(Size::kDW, R9, R10, kSpillSeq);
  a.Alu64Imm(Alu::kAnd, R9, -2);
  a.Alu64(Alu::kSub, R5, R9);
  a.JumpIfImm(Cond::kGt, R5, 2, g.fallback());
  // Decode into r2 offset, r3 length, r4 addr, r5 type word (the header's block size and device
  // never change while the map lives).
  auto shift_left = [&](Reg r) {
    if (block_bits >= 0) {
      a.Alu64Imm(Alu::kLsh, r, block_bits);
    } else {
      a.Alu64(Alu::kLsh, r, R0);
    }
  };
  if (block_bits < 0) {
    a.Load(Size::kW, R0, R1, MapLayout::kBlockBitsOffset);
    a.Alu64Imm(Alu::kAnd, R0, 63);
  }
  a.Load(Size::kW, R1, R1, MapLayout::kDevOffset);
  a.Alu64Imm(Alu::kLsh, R1, 32);
  a.Alu32Imm(Alu::kAdd, R2, 1);  // the start block (32-bit wrap-around: record 0's key is the pad)
  shift_left(R2);
  shift_left(R3);
  Label has_length = a.NewLabel();
  a.JumpIfImm(Cond::kNe, R3, 0, has_length);
  a.MovImm(R3, ~0ull);  // the last interval ends at MaxEnd = -block size
  shift_left(R3);
  a.Alu64(Alu::kSub, R3, R2);
  a.Bind(has_length);
  a.Mov(R5, R4);
  a.Alu64Imm(Alu::kAnd, R5, 3);  // type
  a.Mov(R9, R5);
  a.Alu64Imm(Alu::kSub, R9, 1);
  a.Alu64Imm(Alu::kArsh, R9, 63);  // -1 for a HOLE (type 0), else 0
  a.Mov(R0, R9);
  a.Alu64Imm(Alu::kXor, R0, -1);
  a.Alu64(Alu::kAnd, R1, R0);  // holes have no device
  a.Alu64(Alu::kOr, R5, R1);
  a.Mov(R0, R4);
  a.Alu64Imm(Alu::kRsh, R0, 2);
  a.Alu64Imm(Alu::kAnd, R0, 0xff);
  a.Alu64Imm(Alu::kLsh, R0, 16);
  a.Alu64(Alu::kOr, R5, R0);  // flags
  a.Alu64Imm(Alu::kAnd, R4, -(int64_t{1} << MapLayout::kRecordTagBits));
  a.Alu64(Alu::kOr, R4, R9);  // holes: FUSE_IOMAP_NULL_ADDR
  a.Jump(g.epilogue());
}

// The arithmetic strategy over a shape read from an ArithSlot. REQUIRES: r2 = the slot number,
// r7 = pos, the stack slots `expect_seq_slot` = the file sequence number the index names and
// `nodeid_slot` = the node id looked up.
// Leaves r2..r5 = the reply and jumps to the epilogue, or falls back.
void EmitArithSlot(Gen& g, int table_fd, uint32_t slots, int expect_seq_slot, int nodeid_slot) {
  Assembler& a = g.a();
  constexpr int kSpillSlot = -8, kSpillS1 = -40;
  auto field = [](ArithSlot::Field f) { return static_cast<int>(f) * 8; };
  a.Alu64Imm(Alu::kAnd, R2, static_cast<int64_t>(slots - 1));
  a.Alu64Imm(Alu::kLsh, R2, std::countr_zero(ArithSlot::kBytes));
  a.LoadMapValue(R1, table_fd, 0);
  a.Alu64(Alu::kAdd, R1, R2);  // r1 = the slot
  a.Store(Size::kDW, R10, kSpillSlot, R1);
  a.Load(Size::kDW, R2, R1, 0);  // s1
  a.Store(Size::kDW, R10, kSpillS1, R2);
  a.Alu64Imm(Alu::kRsh, R2, 1);
  a.Alu64Imm(Alu::kAnd, R2, 1);
  a.Alu64Imm(Alu::kMul, R2, ArithSlot::kBufferBytes);
  a.Alu64Imm(Alu::kAdd, R2, ArithSlot::kBufferOffset);
  a.Mov(R9, R1);
  a.Alu64(Alu::kAdd, R9, R2);  // r9 = the active buffer
  // Another file's slot, or another generation of this one: stale, fall back.
  a.Load(Size::kDW, R2, R9, field(ArithSlot::kFileSeq));
  a.Load(Size::kDW, R3, R10, expect_seq_slot);
  a.JumpIf(Cond::kNe, R2, R3, g.fallback());
  a.Load(Size::kDW, R2, R9, field(ArithSlot::kNodeid));
  a.Load(Size::kDW, R3, R10, nodeid_slot);
  a.JumpIf(Cond::kNe, R2, R3, g.fallback());
  Label check = a.NewLabel(), past_first = a.NewLabel(), inside = a.NewLabel(), gap = a.NewLabel();
  a.Load(Size::kDW, R0, R9, field(ArithSlot::kFirst));
  a.JumpIf(Cond::kGe, R7, R0, past_first);
  a.MovImm(R2, 0);  // the hole before extent 0
  a.Mov(R3, R0);
  a.MovImm(R4, iomap::kNullAddr);
  a.MovImm(R5, 0);
  a.Jump(check);
  a.Bind(past_first);
  a.Load(Size::kDW, R0, R9, field(ArithSlot::kLastEnd));
  a.JumpIf(Cond::kLt, R7, R0, inside);
  a.Mov(R2, R0);  // the final hole
  a.Load(Size::kDW, R3, R9, field(ArithSlot::kMaxEnd));
  a.Alu64(Alu::kSub, R3, R2);
  a.MovImm(R4, iomap::kNullAddr);
  a.MovImm(R5, 0);
  a.Jump(check);
  a.Bind(inside);
  a.Load(Size::kDW, R2, R9, field(ArithSlot::kFirst));
  a.Mov(R1, R7);
  a.Alu64(Alu::kSub, R1, R2);  // r1 = pos - first
  a.Load(Size::kDW, R0, R9, field(ArithSlot::kStride));
  a.Mov(R3, R1);
  a.Alu64(Alu::kDiv, R3, R0);  // r3 = k, the extent number
  a.Alu64(Alu::kMul, R0, R3);  // r0 = k * stride
  a.Alu64(Alu::kSub, R1, R0);  // r1 = offset within the stride
  a.Alu64(Alu::kAdd, R2, R0);  // r2 = the extent's offset
  a.Load(Size::kDW, R0, R9, field(ArithSlot::kLength));
  a.JumpIf(Cond::kGe, R1, R0, gap);
  a.Load(Size::kDW, R4, R9, field(ArithSlot::kAddrStride));
  a.Alu64(Alu::kMul, R4, R3);
  a.Load(Size::kDW, R3, R9, field(ArithSlot::kAddr0));
  a.Alu64(Alu::kAdd, R4, R3);
  a.Mov(R3, R0);
  a.Load(Size::kDW, R5, R9, field(ArithSlot::kTypeWord));
  a.Jump(check);
  a.Bind(gap);  // the hole between extent k and k + 1
  a.Alu64(Alu::kAdd, R2, R0);
  a.Load(Size::kDW, R3, R9, field(ArithSlot::kStride));
  a.Alu64(Alu::kSub, R3, R0);
  a.MovImm(R4, iomap::kNullAddr);
  a.MovImm(R5, 0);
  a.Bind(check);
  // Valid only if no writer started on this buffer meanwhile.
  a.Load(Size::kDW, R1, R10, kSpillSlot);
  a.Load(Size::kDW, R1, R1, 0);
  a.Load(Size::kDW, R0, R10, kSpillS1);
  a.Alu64Imm(Alu::kAnd, R0, -2);
  a.Alu64(Alu::kSub, R1, R0);
  a.JumpIfImm(Cond::kGt, R1, 2, g.fallback());
  a.Jump(g.epilogue());
}

Result<Generated> GenMapSearch(const FileMap& map, uint64_t seq, int map_fd, Abi abi) {
  if (!MapLayout::Encodable(map)) return Unexpected(E2BIG);
  Gen g(map, seq, abi);
  g.Prologue();
  g.a().LoadMapValue(R1, map_fd, 0);
  EmitSearch(g, MapLayout::ForIntervals(map.intervals.size()), std::countr_zero(map.block_size));
  g.Epilogue();
  return g.Finish(Strategy::kMapSearch);
}

void FillBuffer(const FileMap& map, const MapLayout& layout, uint8_t* buf) {
  const size_t n = map.intervals.size();
  const int bits = std::countr_zero(map.block_size);
  for (const MapLayout::Level& level : layout.Levels()) {
    auto* keys = reinterpret_cast<uint32_t*>(buf + level.offset);
    const uint64_t child_groups = level.width / MapLayout::kNodeKeys;
    for (uint64_t k = 0; k < level.nodes * MapLayout::kNodeKeys; ++k) {
      const uint64_t first = k * child_groups * MapLayout::kGroupRecords;
      // Unsigned wrap-around: the first start of all, 0, gives the pad (key 0 is never compared).
      keys[k] = first < n ? static_cast<uint32_t>((map.intervals[first].offset >> bits) - 1)
                          : MapLayout::kPadKey;
    }
  }
  uint8_t* recs = buf + layout.tree_bytes();
  const uint64_t max_end = MaxEnd(map.block_size);
  for (size_t i = 0; i < layout.capacity; ++i) {
    uint32_t key = MapLayout::kPadKey, len = 0;
    uint64_t word = 0;
    if (i < n) {
      const Mapping& m = map.intervals[i];
      key = static_cast<uint32_t>((m.offset >> bits) - 1);
      len = m.end() == max_end ? 0 : static_cast<uint32_t>(m.length >> bits);
      word = (m.type == MappingType::kHole ? 0 : m.addr) | uint64_t{m.flags} << 2 |
             static_cast<uint64_t>(m.type);
    }
    uint8_t* r = recs + i * MapLayout::kRecordBytes;
    std::memcpy(r, &key, 4);
    std::memcpy(r + 4, &len, 4);
    std::memcpy(r + 8, &word, 8);
  }
}

}  // namespace

bool DetectStride(const FileMap& map, StrideShape* shape) {
  StrideShape s;
  const Mapping* first = nullptr;
  const Mapping* second = nullptr;
  for (const Mapping& m : map.intervals) {
    if (m.type == MappingType::kHole) continue;
    if (first == nullptr) {
      first = &m;
    } else if (second == nullptr) {
      second = &m;
    }
    ++s.count;
  }
  if (first == nullptr) return false;
  s.first = first->offset;
  s.length = first->length;
  s.stride = second != nullptr ? second->offset - first->offset : first->length;
  s.addr0 = first->addr;
  s.addr_stride = second != nullptr ? second->addr - first->addr : 0;
  s.type = static_cast<uint16_t>(first->type);
  s.flags = first->flags;
  // Rebuild the interval list the shape describes and require it to be identical.
  const uint64_t max_end = MaxEnd(map.block_size);
  size_t i = 0;
  auto expect = [&](uint64_t off, uint64_t len, uint64_t addr, uint16_t type, uint16_t flags) {
    if (i >= map.intervals.size()) return false;
    const Mapping& m = map.intervals[i++];
    return m.offset == off && m.length == len && m.addr == addr &&
           static_cast<uint16_t>(m.type) == type && m.flags == flags;
  };
  if (s.first > 0 && !expect(0, s.first, iomap::kNullAddr, 0, 0)) return false;
  for (uint64_t k = 0; k < s.count; ++k) {
    uint64_t off = s.first + k * s.stride;
    if (!expect(off, s.length, s.addr0 + k * s.addr_stride, s.type, s.flags)) return false;
    if (k + 1 < s.count && s.stride > s.length &&
        !expect(off + s.length, s.stride - s.length, iomap::kNullAddr, 0, 0)) {
      return false;
    }
  }
  uint64_t last_end = s.first + (s.count - 1) * s.stride + s.length;
  if (!expect(last_end, max_end - last_end, iomap::kNullAddr, 0, 0)) return false;
  if (i != map.intervals.size()) return false;
  *shape = s;
  return true;
}

std::vector<MapLayout::Level> MapLayout::Levels() const {
  // Bottom-up: the last level has one node per 16 groups (at least one); each level above has
  // 1/16 as many nodes, the root's children being the 2 to 16 nodes (or groups) below it.
  std::vector<Level> up;
  uint64_t nodes = groups();
  uint64_t width = 1;
  while (nodes > 1) {
    nodes = nodes > kNodeKeys ? nodes / kNodeKeys : 1;
    width *= kNodeKeys;
    up.push_back(Level{0, nodes, width});
  }
  std::vector<Level> levels(up.rbegin(), up.rend());
  uint64_t offset = 0;
  for (Level& l : levels) {
    l.offset = offset;
    offset += l.nodes * kNodeBytes;
  }
  return levels;
}

uint64_t MapLayout::tree_bytes() const {
  const std::vector<Level> levels = Levels();
  return levels.empty() ? 0 : levels.back().offset + levels.back().nodes * kNodeBytes;
}

MapLayout MapLayout::ForIntervals(size_t intervals) {
  MapLayout l;
  l.capacity = static_cast<uint32_t>(std::bit_ceil(std::max<size_t>(intervals, kMinCapacity)));
  return l;
}

bool MapLayout::Encodable(const FileMap& map) {
  if (map.block_size < (1u << kRecordTagBits)) return false;
  return map.intervals.empty() ||
         (map.intervals.back().offset >> std::countr_zero(map.block_size)) <= kPadKey;
}

Strategy Choose(const FileMap& map, const CodegenOptions& options, std::string* reason) {
  auto say = [&](std::string why) {
    if (reason != nullptr) *reason = std::move(why);
  };
  const size_t n = map.intervals.size();
  StrideShape shape;
  if (options.allow_arithmetic && DetectStride(map, &shape)) {
    say(shape.count == 1 ? "single extent"
                         : "exact stride of " + std::to_string(shape.count) + " extents");
    return Strategy::kArithmetic;
  }
  if (options.allow_tree && n <= options.tree_max_intervals) {
    auto gen = GenTree(map, 0, Abi::kSyscall);
    if (gen && gen->insns.size() <= options.tree_max_insns) {
      say(std::to_string(n) + " intervals <= " + std::to_string(options.tree_max_intervals));
      return Strategy::kTree;
    }
  }
  if (n <= options.map_max_intervals && MapLayout::Encodable(map)) {
    say(std::to_string(n) + " intervals: map search");
    return Strategy::kMapSearch;
  }
  if (!MapLayout::Encodable(map)) {
    say("blocks below 1 KiB or an interval starting past 2^32 blocks (the map search's 32-bit "
        "keys)");
    return Strategy::kNone;
  }
  say(std::to_string(n) + " intervals > map limit " + std::to_string(options.map_max_intervals));
  return Strategy::kNone;
}

Result<Generated> Generate(const FileMap& map, uint64_t seq, Strategy strategy, int map_fd,
                           Abi abi) {
  switch (strategy) {
    case Strategy::kArithmetic:
      return GenArithmetic(map, seq, abi);
    case Strategy::kTree:
      return GenTree(map, seq, abi);
    case Strategy::kMapSearch:
      return GenMapSearch(map, seq, map_fd, abi);
    case Strategy::kNone:
      break;
  }
  Generated g;
  g.reason = "no strategy";
  return g;
}

Result<Generated> GenerateDispatcher(const DispatcherMaps& maps, Abi abi,
                                     int32_t nodeid_kfunc_btf_id, int16_t kfunc_fd_index) {
  FileMap none;
  Gen g(none, 0, abi);
  Assembler& a = g.a();
  constexpr int kKeyNode = -16, kSeq = -24, kKeyZero = -32, kKeySlot = -48, kKeyDirect = -56;
  if (abi == Abi::kSyscall) {
    g.Prologue(/*identity=*/false);
    a.Load(Size::kDW, R2, R6, kCtxNodeid);
  } else {
    if (nodeid_kfunc_btf_id <= 0) return Unexpected(EINVAL);
    a.Load(Size::kDW, R9, R1, 0);  // the opaque inode (args[0])
    g.Prologue(/*identity=*/false);
    a.Mov(R1, R9);
    // call fuse_bpf_inode_nodeid (src BPF_PSEUDO_KFUNC_CALL; off 0: a vmlinux kfunc, else the
    // index of the module's BTF fd in fd_array).
    a.Raw(bpf_insn{BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_KFUNC_CALL, kfunc_fd_index,
                   nodeid_kfunc_btf_id});
    a.Mov(R2, R0);
  }
  a.Store(Size::kDW, R10, kKeyNode, R2);
  a.StoreImm(Size::kW, R10, kKeyZero, 0);
  // r0 = the index entry: r9 = its class, and its sequence number and slot on the stack (so that
  // the two lookups join with scalars only and the verifier checks what follows once).
  auto read_entry = [&] {
    a.JumpIfImm(Cond::kEq, R0, 0, g.fallback());
    a.Load(Size::kW, R9, R0, 0);  // capacity class (log2)
    a.Load(Size::kDW, R2, R0, 8);
    a.Store(Size::kDW, R10, kSeq, R2);
    a.Load(Size::kW, R3, R0, 4);
    a.Store(Size::kW, R10, kKeySlot, R3);
  };
  Label entry = a.NewLabel();
  if (maps.direct_fd >= 0 && maps.direct_nodeids > 0) {
    if (maps.direct_nodeids > INT32_MAX) return Unexpected(EINVAL);
    Label hashed = a.NewLabel();
    a.JumpIfImm(Cond::kGe, R2, static_cast<int32_t>(maps.direct_nodeids), hashed);
    a.Store(Size::kW, R10, kKeyDirect, R2);
    a.LoadMapFd(R1, maps.direct_fd);
    a.Mov(R2, R10);
    a.Alu64Imm(Alu::kAdd, R2, kKeyDirect);
    a.Call(BPF_FUNC_map_lookup_elem);  // inlined by the verifier: no call
    read_entry();
    a.JumpIfImm(Cond::kEq, R2, 0, g.fallback());  // never written, or cleared
    a.Jump(entry);
    a.Bind(hashed);
  }
  a.LoadMapFd(R1, maps.index_fd);
  a.Mov(R2, R10);
  a.Alu64Imm(Alu::kAdd, R2, kKeyNode);
  a.Call(BPF_FUNC_map_lookup_elem);
  read_entry();
  a.Bind(entry);
  // r9 -> the class's code: a balanced tree of compares (4 for the 15 default classes and the
  // arithmetic one) rather than a chain that the largest classes would run to its end.
  std::vector<std::pair<uint32_t, Label>> targets;
  Label arith = a.NewLabel();
  if (maps.arith_fd >= 0) {
    if (!std::has_single_bit(maps.arith_slots)) return Unexpected(EINVAL);
    targets.emplace_back(kArithmeticClass, arith);
  }
  std::vector<Label> labels;
  for (const auto& [log2_cap, fd] : maps.classes) {
    labels.push_back(a.NewLabel());
    targets.emplace_back(log2_cap, labels.back());
  }
  std::sort(targets.begin(), targets.end(),
            [](const auto& x, const auto& y) { return x.first < y.first; });
  auto emit_tree = [&](auto& self, size_t lo, size_t hi) -> void {
    if (hi - lo == 1) {
      a.JumpIfImm(Cond::kEq, R9, targets[lo].first, targets[lo].second);
      a.Jump(g.fallback());
      return;
    }
    const size_t mid = lo + (hi - lo) / 2;
    Label right = a.NewLabel();
    a.JumpIfImm(Cond::kGe, R9, targets[mid].first, right);
    self(self, lo, mid);
    a.Bind(right);
    self(self, mid, hi);
  };
  if (targets.empty()) {
    a.Jump(g.fallback());
  } else {
    emit_tree(emit_tree, 0, targets.size());
  }
  if (maps.arith_fd >= 0) {
    a.Bind(arith);
    a.Load(Size::kW, R2, R10, kKeySlot);
    EmitArithSlot(g, maps.arith_fd, maps.arith_slots, kSeq, kKeyNode);
  }
  for (size_t i = 0; i < maps.classes.size(); ++i) {
    a.Bind(labels[i]);
    a.LoadMapFd(R1, maps.classes[i].second);
    a.Mov(R2, R10);
    a.Alu64Imm(Alu::kAdd, R2, kKeySlot);
    a.Call(BPF_FUNC_map_lookup_elem);  // the file's inner map
    a.JumpIfImm(Cond::kEq, R0, 0, g.fallback());
    a.Mov(R1, R0);
    a.Mov(R2, R10);
    a.Alu64Imm(Alu::kAdd, R2, kKeyZero);
    a.Call(BPF_FUNC_map_lookup_elem);  // its only value
    a.JumpIfImm(Cond::kEq, R0, 0, g.fallback());
    a.Mov(R1, R0);
    // A table entry and an inner map of different generations or nodes: stale, fall back.
    a.Load(Size::kDW, R2, R1, MapLayout::kFileSeqOffset);
    a.Load(Size::kDW, R3, R10, kSeq);
    a.JumpIf(Cond::kNe, R2, R3, g.fallback());
    a.Load(Size::kDW, R2, R1, MapLayout::kNodeidOffset);
    a.Load(Size::kDW, R3, R10, kKeyNode);
    a.JumpIf(Cond::kNe, R2, R3, g.fallback());
    MapLayout layout;
    layout.capacity = 1u << maps.classes[i].first;
    EmitSearch(g, layout, /*block_bits=*/-1);
  }
  g.Epilogue();
  return g.Finish(Strategy::kMapSearch);
}

void WriteInitialImage(const FileMap& map, const MapLayout& layout, uint8_t* value,
                       uint64_t file_seq) {
  std::memset(value, 0, MapLayout::kHeaderBytes);
  uint64_t header[6] = {
      0,
      layout.capacity,
      map.intervals.size(),
      file_seq,
      static_cast<uint64_t>(std::countr_zero(map.block_size)) | uint64_t{map.dev} << 32,
      map.nodeid};
  std::memcpy(value, header, sizeof(header));
  FillBuffer(map, layout, value + MapLayout::kHeaderBytes);
}

void PublishImage(const FileMap& map, const MapLayout& layout, uint8_t* value) {
  std::atomic_ref<uint64_t> seq(*reinterpret_cast<uint64_t*>(value));
  const uint64_t s = seq.load(std::memory_order_relaxed);
  const uint64_t next = ((s >> 1) + 1) & 1;
  seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // odd seq before any data store
  FillBuffer(map, layout, value + MapLayout::kHeaderBytes + next * layout.buffer_bytes());
  reinterpret_cast<uint64_t*>(value)[2] = map.intervals.size();
  seq.store(s + 2, std::memory_order_release);
}

void PublishArithSlot(const FileMap& map, const StrideShape& shape, uint64_t file_seq,
                      uint8_t* slot) {
  uint64_t f[ArithSlot::kFields] = {};
  f[ArithSlot::kFileSeq] = file_seq;
  f[ArithSlot::kFirst] = shape.first;
  f[ArithSlot::kLength] = shape.length;
  f[ArithSlot::kStride] = shape.stride;
  f[ArithSlot::kLastEnd] = shape.first + (shape.count - 1) * shape.stride + shape.length;
  f[ArithSlot::kAddr0] = shape.addr0;
  f[ArithSlot::kAddrStride] = shape.addr_stride;
  f[ArithSlot::kTypeWord] =
      uint64_t{shape.type} | uint64_t{shape.flags} << 16 | uint64_t{map.dev} << 32;
  f[ArithSlot::kMaxEnd] = MaxEnd(map.block_size);
  f[ArithSlot::kNodeid] = map.nodeid;
  std::atomic_ref<uint64_t> seq(*reinterpret_cast<uint64_t*>(slot));
  const uint64_t s = seq.load(std::memory_order_relaxed);
  const uint64_t next = ((s >> 1) + 1) & 1;
  seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // odd seq before any data store
  std::memcpy(slot + ArithSlot::kBufferOffset + next * ArithSlot::kBufferBytes, f, sizeof(f));
  seq.store(s + 2, std::memory_order_release);
}

bool ImageMatches(const uint8_t* value, const FileMap& map) {
  uint32_t bits, dev;
  std::memcpy(&bits, value + MapLayout::kBlockBitsOffset, sizeof(bits));
  std::memcpy(&dev, value + MapLayout::kDevOffset, sizeof(dev));
  uint64_t nodeid;
  std::memcpy(&nodeid, value + MapLayout::kNodeidOffset, sizeof(nodeid));
  return bits == static_cast<uint32_t>(std::countr_zero(map.block_size)) && dev == map.dev &&
         nodeid == map.nodeid;
}

}  // namespace iomapfs::bpf
