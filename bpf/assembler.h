// Assembler: builds raw eBPF instructions (struct bpf_insn) in C++, with no clang and no BPF C.
//
// Jumps name Labels that are resolved in Finish(). Conditional jumps start short (s16 offset);
// a jump whose distance does not fit becomes `if !cond goto +1; gotol target` (the 32-bit
// `BPF_JMP32|BPF_JA`, kernel >= 6.6), and unconditional jumps become `gotol` when needed.
// Constants are loaded with the cheapest encoding: a 32-bit mov (zero-extends) below 2^32, a
// sign-extending 64-bit mov for small negative values, `ld_imm64` otherwise.
// The first misuse (bad register, offset or immediate out of range, a label bound twice or never
// bound, a program past the kernel's 1,000,000-instruction limit) is recorded as the one sticky
// error; later calls are ignored and Finish() returns it.
//
// Thread-safety: none; one thread builds one program.
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"

namespace iomapfs::bpf {

enum Reg : uint8_t { R0 = 0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 };

// Access sizes (BPF_B/H/W/DW).
enum class Size : uint8_t { kB = BPF_B, kH = BPF_H, kW = BPF_W, kDW = BPF_DW };

// ALU operations (the BPF_OP bits of an ALU instruction).
enum class Alu : uint8_t {
  kAdd = BPF_ADD,
  kSub = BPF_SUB,
  kMul = BPF_MUL,
  kDiv = BPF_DIV,
  kOr = BPF_OR,
  kAnd = BPF_AND,
  kLsh = BPF_LSH,
  kRsh = BPF_RSH,
  kMod = BPF_MOD,
  kXor = BPF_XOR,
  kMov = BPF_MOV,
  kArsh = BPF_ARSH,
};

// Jump conditions; unsigned unless prefixed with S. kSet jumps if (dst & src) != 0.
enum class Cond : uint8_t {
  kEq = BPF_JEQ,
  kNe = BPF_JNE,
  kGt = BPF_JGT,
  kGe = BPF_JGE,
  kLt = BPF_JLT,
  kLe = BPF_JLE,
  kSgt = BPF_JSGT,
  kSge = BPF_JSGE,
  kSlt = BPF_JSLT,
  kSle = BPF_JSLE,
  kSet = BPF_JSET,
};

// The kernel's limit on program length (BPF_COMPLEXITY_LIMIT_INSNS); longer loads fail E2BIG.
inline constexpr size_t kMaxProgramInsns = 1000000;

// `BPF_JMP32 | BPF_JA`: `gotol`, an unconditional jump with a 32-bit offset in imm.
inline constexpr uint8_t kGotolCode = BPF_JMP32 | BPF_JA;

class Label {
 public:
  Label() = default;
  bool valid() const { return id_ >= 0; }

 private:
  friend class Assembler;
  explicit Label(int id) : id_(id) {}
  int id_ = -1;
};

class Assembler {
 public:
  Assembler() = default;

  Label NewLabel();
  // Binds `l` to the next instruction. Errors (sticky): l invalid or already bound.
  void Bind(Label l);

  // dst = src (64 bit).
  void Mov(Reg dst, Reg src) { Alu64(Alu::kMov, dst, src); }
  // dst = value, with the cheapest encoding (see the header comment).
  void MovImm(Reg dst, uint64_t value);
  // dst = dst <op> src, 64 bit.
  void Alu64(Alu op, Reg dst, Reg src);
  // dst = dst <op> imm (imm sign-extended to 64 bits). Errors: imm outside s32.
  void Alu64Imm(Alu op, Reg dst, int64_t imm);
  // dst = (u32)(dst <op> imm), zero-extended. Errors: imm outside s32 / u32.
  void Alu32Imm(Alu op, Reg dst, int64_t imm);
  // dst = *(size *)(base + off). Errors: off outside s16.
  void Load(Size size, Reg dst, Reg base, int64_t off);
  // *(size *)(base + off) = src.
  void Store(Size size, Reg base, int64_t off, Reg src);
  // *(size *)(base + off) = imm (sign-extended for kDW). Errors: imm outside s32.
  void StoreImm(Size size, Reg base, int64_t off, int64_t imm);
  // dst = 64-bit constant (always ld_imm64; two instruction slots).
  void LoadImm64(Reg dst, uint64_t value);
  // dst = the map whose fd is `map_fd` (BPF_PSEUDO_MAP_FD).
  void LoadMapFd(Reg dst, int map_fd);
  // dst = address of byte `off` of element 0 of array map `map_fd` (BPF_PSEUDO_MAP_VALUE).
  void LoadMapValue(Reg dst, int map_fd, uint32_t off);
  void Jump(Label target);
  void JumpIf(Cond cond, Reg dst, Reg src, Label target);
  // Errors: imm outside s32 (it is sign-extended to 64 bits by the kernel).
  void JumpIfImm(Cond cond, Reg dst, int64_t imm, Label target);
  void Call(int32_t helper);
  void Exit();
  // Appends an already-encoded instruction (no label).
  void Raw(const bpf_insn& insn);

  // Instruction slots emitted so far, counting every jump as short.
  size_t size() const { return items_.size(); }
  bool ok() const { return err_ == 0; }
  const std::string& error_message() const { return message_; }

  // Resolves labels and far jumps.
  // Returns: the program.
  // Errors: the sticky error (EINVAL for misuse; E2BIG past kMaxProgramInsns).
  Result<std::vector<bpf_insn>> Finish();

 private:
  struct Item {
    bpf_insn insn;
    int label = -1;  // jump target, or -1
  };
  void Fail(int err, std::string message);
  bool CheckReg(Reg r);
  void Emit(uint8_t code, Reg dst, Reg src, int16_t off, int32_t imm, int label = -1);

  std::vector<Item> items_;
  std::vector<int64_t> label_item_;  // item index a label is bound to, or -1
  int err_ = 0;
  std::string message_;
};

// Returns: one line per instruction, "  12: if r7 >= 0x1000 goto +5 <19>" style (verifier-like
// syntax; jump targets absolute in angle brackets).
std::string Disassemble(std::span<const bpf_insn> insns);

}  // namespace iomapfs::bpf
