#include "bpf/assembler.h"

#include <cinttypes>
#include <cstdio>
#include <limits>

namespace iomapfs::bpf {
namespace {

bool FitsS16(int64_t v) { return v >= INT16_MIN && v <= INT16_MAX; }
bool FitsS32(int64_t v) { return v >= INT32_MIN && v <= INT32_MAX; }

// Returns the condition that is true exactly when `c` is false, or false for kSet.
bool Invert(uint8_t op, uint8_t* inv) {
  switch (op) {
    case BPF_JEQ:
      *inv = BPF_JNE;
      return true;
    case BPF_JNE:
      *inv = BPF_JEQ;
      return true;
    case BPF_JGT:
      *inv = BPF_JLE;
      return true;
    case BPF_JLE:
      *inv = BPF_JGT;
      return true;
    case BPF_JGE:
      *inv = BPF_JLT;
      return true;
    case BPF_JLT:
      *inv = BPF_JGE;
      return true;
    case BPF_JSGT:
      *inv = BPF_JSLE;
      return true;
    case BPF_JSLE:
      *inv = BPF_JSGT;
      return true;
    case BPF_JSGE:
      *inv = BPF_JSLT;
      return true;
    case BPF_JSLT:
      *inv = BPF_JSGE;
      return true;
    default:
      return false;
  }
}

bpf_insn Insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst & 0xf;
  i.src_reg = src & 0xf;
  i.off = off;
  i.imm = imm;
  return i;
}

bool IsCondJump(const bpf_insn& i) {
  uint8_t cls = BPF_CLASS(i.code);
  uint8_t op = BPF_OP(i.code);
  return (cls == BPF_JMP || cls == BPF_JMP32) && op != BPF_JA && op != BPF_CALL && op != BPF_EXIT;
}

}  // namespace

void Assembler::Fail(int err, std::string message) {
  if (err_ != 0) return;
  err_ = err;
  message_ = std::move(message);
}

bool Assembler::CheckReg(Reg r) {
  if (r > R10) {
    Fail(EINVAL, "register r" + std::to_string(static_cast<int>(r)) + " out of range");
    return false;
  }
  return true;
}

void Assembler::Emit(uint8_t code, Reg dst, Reg src, int16_t off, int32_t imm, int label) {
  if (err_ != 0) return;
  items_.push_back(Item{Insn(code, dst, src, off, imm), label});
}

Label Assembler::NewLabel() {
  label_item_.push_back(-1);
  return Label(static_cast<int>(label_item_.size() - 1));
}

void Assembler::Bind(Label l) {
  if (l.id_ < 0 || static_cast<size_t>(l.id_) >= label_item_.size()) {
    return Fail(EINVAL, "bind of an invalid label");
  }
  if (label_item_[l.id_] >= 0) {
    return Fail(EINVAL, "label " + std::to_string(l.id_) + " bound twice");
  }
  label_item_[l.id_] = static_cast<int64_t>(items_.size());
}

void Assembler::MovImm(Reg dst, uint64_t value) {
  if (value <= std::numeric_limits<uint32_t>::max()) {
    // BPF_ALU|BPF_MOV|BPF_K writes the low 32 bits and zero-extends.
    if (!CheckReg(dst)) return;
    return Emit(BPF_ALU | BPF_MOV | BPF_K, dst, R0, 0, static_cast<int32_t>(value));
  }
  int64_t s = static_cast<int64_t>(value);
  if (s < 0 && s >= INT32_MIN) return Alu64Imm(Alu::kMov, dst, s);
  LoadImm64(dst, value);
}

void Assembler::Alu64(Alu op, Reg dst, Reg src) {
  if (!CheckReg(dst) || !CheckReg(src)) return;
  Emit(BPF_ALU64 | static_cast<uint8_t>(op) | BPF_X, dst, src, 0, 0);
}

void Assembler::Alu64Imm(Alu op, Reg dst, int64_t imm) {
  if (!CheckReg(dst)) return;
  if (!FitsS32(imm)) return Fail(EINVAL, "ALU64 immediate " + std::to_string(imm) + " not s32");
  Emit(BPF_ALU64 | static_cast<uint8_t>(op) | BPF_K, dst, R0, 0, static_cast<int32_t>(imm));
}

void Assembler::Alu32Imm(Alu op, Reg dst, int64_t imm) {
  if (!CheckReg(dst)) return;
  if (imm < INT32_MIN || imm > static_cast<int64_t>(UINT32_MAX)) {
    return Fail(EINVAL, "ALU32 immediate " + std::to_string(imm) + " out of range");
  }
  Emit(BPF_ALU | static_cast<uint8_t>(op) | BPF_K, dst, R0, 0,
       static_cast<int32_t>(static_cast<uint32_t>(imm)));
}

void Assembler::Load(Size size, Reg dst, Reg base, int64_t off) {
  if (!CheckReg(dst) || !CheckReg(base)) return;
  if (!FitsS16(off)) return Fail(EINVAL, "load offset " + std::to_string(off) + " not s16");
  Emit(BPF_LDX | BPF_MEM | static_cast<uint8_t>(size), dst, base, static_cast<int16_t>(off), 0);
}

void Assembler::Store(Size size, Reg base, int64_t off, Reg src) {
  if (!CheckReg(src) || !CheckReg(base)) return;
  if (!FitsS16(off)) return Fail(EINVAL, "store offset " + std::to_string(off) + " not s16");
  Emit(BPF_STX | BPF_MEM | static_cast<uint8_t>(size), base, src, static_cast<int16_t>(off), 0);
}

void Assembler::StoreImm(Size size, Reg base, int64_t off, int64_t imm) {
  if (!CheckReg(base)) return;
  if (!FitsS16(off)) return Fail(EINVAL, "store offset " + std::to_string(off) + " not s16");
  if (!FitsS32(imm)) return Fail(EINVAL, "store immediate " + std::to_string(imm) + " not s32");
  Emit(BPF_ST | BPF_MEM | static_cast<uint8_t>(size), base, R0, static_cast<int16_t>(off),
       static_cast<int32_t>(imm));
}

void Assembler::LoadImm64(Reg dst, uint64_t value) {
  if (!CheckReg(dst)) return;
  Emit(BPF_LD | BPF_DW | BPF_IMM, dst, R0, 0, static_cast<int32_t>(value & 0xffffffffu));
  Emit(0, R0, R0, 0, static_cast<int32_t>(value >> 32));
}

void Assembler::LoadMapFd(Reg dst, int map_fd) {
  if (!CheckReg(dst)) return;
  Emit(BPF_LD | BPF_DW | BPF_IMM, dst, static_cast<Reg>(BPF_PSEUDO_MAP_FD), 0, map_fd);
  Emit(0, R0, R0, 0, 0);
}

void Assembler::LoadMapValue(Reg dst, int map_fd, uint32_t off) {
  if (!CheckReg(dst)) return;
  if (off > static_cast<uint32_t>(INT32_MAX)) return Fail(EINVAL, "map value offset too large");
  Emit(BPF_LD | BPF_DW | BPF_IMM, dst, static_cast<Reg>(BPF_PSEUDO_MAP_VALUE), 0, map_fd);
  Emit(0, R0, R0, 0, static_cast<int32_t>(off));
}

void Assembler::Jump(Label target) {
  if (!target.valid()) return Fail(EINVAL, "jump to an invalid label");
  Emit(BPF_JMP | BPF_JA, R0, R0, 0, 0, target.id_);
}

void Assembler::JumpIf(Cond cond, Reg dst, Reg src, Label target) {
  if (!CheckReg(dst) || !CheckReg(src)) return;
  if (!target.valid()) return Fail(EINVAL, "jump to an invalid label");
  Emit(BPF_JMP | static_cast<uint8_t>(cond) | BPF_X, dst, src, 0, 0, target.id_);
}

void Assembler::JumpIfImm(Cond cond, Reg dst, int64_t imm, Label target) {
  if (!CheckReg(dst)) return;
  if (!target.valid()) return Fail(EINVAL, "jump to an invalid label");
  if (!FitsS32(imm)) return Fail(EINVAL, "jump immediate " + std::to_string(imm) + " not s32");
  Emit(BPF_JMP | static_cast<uint8_t>(cond) | BPF_K, dst, R0, 0, static_cast<int32_t>(imm),
       target.id_);
}

void Assembler::Call(int32_t helper) { Emit(BPF_JMP | BPF_CALL, R0, R0, 0, helper); }

void Assembler::Exit() { Emit(BPF_JMP | BPF_EXIT, R0, R0, 0, 0); }

void Assembler::Raw(const bpf_insn& insn) {
  if (err_ != 0) return;
  items_.push_back(Item{insn, -1});
}

Result<std::vector<bpf_insn>> Assembler::Finish() {
  if (err_ != 0) return Unexpected(err_);
  for (size_t l = 0; l < label_item_.size(); ++l) {
    if (label_item_[l] >= 0) continue;
    for (const Item& it : items_) {
      if (it.label == static_cast<int>(l)) {
        Fail(EINVAL, "label " + std::to_string(l) + " used but never bound");
        return Unexpected(err_);
      }
    }
  }
  // Peephole: an unconditional jump to the very next instruction is dropped (leaves that fall
  // through to the shared epilogue).
  {
    std::vector<int64_t> new_index(items_.size() + 1);
    std::vector<Item> kept;
    kept.reserve(items_.size());
    for (size_t i = 0; i < items_.size(); ++i) {
      new_index[i] = static_cast<int64_t>(kept.size());
      const Item& it = items_[i];
      bool ja = it.label >= 0 && it.insn.code == (BPF_JMP | BPF_JA);
      if (ja && label_item_[it.label] == static_cast<int64_t>(i + 1)) continue;
      kept.push_back(it);
    }
    new_index[items_.size()] = static_cast<int64_t>(kept.size());
    for (int64_t& l : label_item_) {
      if (l >= 0) l = new_index[l];
    }
    items_ = std::move(kept);
  }
  // Relaxation: every jump starts short; a conditional jump found out of range grows to two
  // slots (three for JSET, which has no inverse). Growth only lengthens distances, so iterate
  // until nothing new grows.
  const size_t n = items_.size();
  std::vector<uint8_t> far(n, 0);
  std::vector<int64_t> pos(n + 1);
  auto slots = [&](size_t i) -> int64_t {
    if (!far[i] || !IsCondJump(items_[i].insn)) return 1;  // a far `ja` becomes one gotol
    return BPF_OP(items_[i].insn.code) == BPF_JSET ? 3 : 2;
  };
  for (bool changed = true; changed;) {
    changed = false;
    pos[0] = 0;
    for (size_t i = 0; i < n; ++i) pos[i + 1] = pos[i] + slots(i);
    for (size_t i = 0; i < n; ++i) {
      if (items_[i].label < 0 || far[i]) continue;
      int64_t target = pos[label_item_[items_[i].label]];
      if (!FitsS16(target - (pos[i] + 1))) {
        far[i] = 1;
        changed = true;
      }
    }
  }
  if (static_cast<size_t>(pos[n]) > kMaxProgramInsns) {
    Fail(E2BIG, "program of " + std::to_string(pos[n]) + " instructions exceeds the limit");
    return Unexpected(err_);
  }
  std::vector<bpf_insn> out;
  out.reserve(pos[n]);
  for (size_t i = 0; i < n; ++i) {
    bpf_insn insn = items_[i].insn;
    if (items_[i].label < 0) {
      out.push_back(insn);
      continue;
    }
    int64_t target = pos[label_item_[items_[i].label]];
    bool cond = IsCondJump(insn);
    if (!far[i]) {
      insn.off = static_cast<int16_t>(target - (pos[i] + 1));
      out.push_back(insn);
      continue;
    }
    if (!cond) {
      out.push_back(Insn(kGotolCode, 0, 0, 0, static_cast<int32_t>(target - (pos[i] + 1))));
      continue;
    }
    uint8_t inv;
    if (Invert(BPF_OP(insn.code), &inv)) {
      insn.code = static_cast<uint8_t>(BPF_CLASS(insn.code) | inv | BPF_SRC(insn.code));
      insn.off = 1;
      out.push_back(insn);
      out.push_back(Insn(kGotolCode, 0, 0, 0, static_cast<int32_t>(target - (pos[i] + 2))));
    } else {
      insn.off = 1;  // taken: skip the `ja` and land on the gotol
      out.push_back(insn);
      out.push_back(Insn(BPF_JMP | BPF_JA, 0, 0, 1, 0));
      out.push_back(Insn(kGotolCode, 0, 0, 0, static_cast<int32_t>(target - (pos[i] + 3))));
    }
  }
  return out;
}

namespace {

const char* AluName(uint8_t op) {
  switch (op) {
    case BPF_ADD:
      return "+=";
    case BPF_SUB:
      return "-=";
    case BPF_MUL:
      return "*=";
    case BPF_DIV:
      return "/=";
    case BPF_OR:
      return "|=";
    case BPF_AND:
      return "&=";
    case BPF_LSH:
      return "<<=";
    case BPF_RSH:
      return ">>=";
    case BPF_MOD:
      return "%=";
    case BPF_XOR:
      return "^=";
    case BPF_MOV:
      return "=";
    case BPF_ARSH:
      return "s>>=";
    default:
      return nullptr;
  }
}

const char* JmpName(uint8_t op) {
  switch (op) {
    case BPF_JEQ:
      return "==";
    case BPF_JNE:
      return "!=";
    case BPF_JGT:
      return ">";
    case BPF_JGE:
      return ">=";
    case BPF_JLT:
      return "<";
    case BPF_JLE:
      return "<=";
    case BPF_JSGT:
      return "s>";
    case BPF_JSGE:
      return "s>=";
    case BPF_JSLT:
      return "s<";
    case BPF_JSLE:
      return "s<=";
    case BPF_JSET:
      return "&";
    default:
      return nullptr;
  }
}

const char* SizeName(uint8_t size) {
  switch (size) {
    case BPF_B:
      return "u8";
    case BPF_H:
      return "u16";
    case BPF_W:
      return "u32";
    default:
      return "u64";
  }
}

std::string Imm(int64_t v) {
  char buf[32];
  if (v < 0) {
    std::snprintf(buf, sizeof(buf), "%" PRId64, v);
  } else if (v < 10) {
    std::snprintf(buf, sizeof(buf), "%" PRId64, v);
  } else {
    std::snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
  }
  return buf;
}

std::string Off(int64_t off) { return off < 0 ? std::to_string(off) : "+" + std::to_string(off); }

}  // namespace

std::string Disassemble(std::span<const bpf_insn> insns) {
  std::string out;
  char line[160];
  for (size_t i = 0; i < insns.size(); ++i) {
    const bpf_insn& in = insns[i];
    uint8_t cls = BPF_CLASS(in.code);
    uint8_t op = BPF_OP(in.code);
    std::string text;
    const char* r = (cls == BPF_ALU) ? "w" : "r";
    if (cls == BPF_ALU64 || cls == BPF_ALU) {
      const char* name = AluName(op);
      std::string dst = r + std::to_string(in.dst_reg);
      if (op == BPF_NEG) {
        text = dst + " = -" + dst;
      } else if (name == nullptr) {
        text = "<alu op " + Imm(op) + ">";
      } else if (BPF_SRC(in.code) == BPF_X) {
        text = dst + " " + name + " " + r + std::to_string(in.src_reg);
      } else {
        text = dst + " " + name + " " +
               Imm(cls == BPF_ALU ? static_cast<int64_t>(static_cast<uint32_t>(in.imm)) : in.imm);
      }
    } else if (cls == BPF_LDX && BPF_MODE(in.code) == BPF_MEM) {
      text = "r" + std::to_string(in.dst_reg) + " = *(" + SizeName(BPF_SIZE(in.code)) + " *)(r" +
             std::to_string(in.src_reg) + " " + Off(in.off) + ")";
    } else if (cls == BPF_STX && BPF_MODE(in.code) == BPF_MEM) {
      text = std::string("*(") + SizeName(BPF_SIZE(in.code)) + " *)(r" +
             std::to_string(in.dst_reg) + " " + Off(in.off) + ") = r" + std::to_string(in.src_reg);
    } else if (cls == BPF_ST && BPF_MODE(in.code) == BPF_MEM) {
      text = std::string("*(") + SizeName(BPF_SIZE(in.code)) + " *)(r" +
             std::to_string(in.dst_reg) + " " + Off(in.off) + ") = " + Imm(in.imm);
    } else if (in.code == (BPF_LD | BPF_DW | BPF_IMM) && i + 1 < insns.size()) {
      uint64_t v = static_cast<uint32_t>(in.imm) |
                   (static_cast<uint64_t>(static_cast<uint32_t>(insns[i + 1].imm)) << 32);
      std::string dst = "r" + std::to_string(in.dst_reg);
      if (in.src_reg == BPF_PSEUDO_MAP_FD) {
        text = dst + " = map[fd:" + std::to_string(in.imm) + "]";
      } else if (in.src_reg == BPF_PSEUDO_MAP_VALUE) {
        text = dst + " = map[fd:" + std::to_string(in.imm) + "][0]+" +
               std::to_string(insns[i + 1].imm);
      } else {
        std::snprintf(line, sizeof(line), "%s = 0x%" PRIx64 " ll", dst.c_str(), v);
        text = line;
      }
      std::snprintf(line, sizeof(line), "%6zu: %s\n", i, text.c_str());
      out += line;
      ++i;  // the second slot of ld_imm64
      continue;
    } else if (cls == BPF_JMP || cls == BPF_JMP32) {
      if (in.code == kGotolCode) {
        text = "gotol " + Off(in.imm) + " <" + std::to_string(i + 1 + in.imm) + ">";
      } else if (op == BPF_JA) {
        text = "goto " + Off(in.off) + " <" + std::to_string(i + 1 + in.off) + ">";
      } else if (op == BPF_EXIT) {
        text = "exit";
      } else if (op == BPF_CALL) {
        text = "call " + std::to_string(in.imm);
      } else if (const char* name = JmpName(op)) {
        std::string jr = cls == BPF_JMP32 ? "w" : "r";
        std::string rhs = BPF_SRC(in.code) == BPF_X ? jr + std::to_string(in.src_reg) : Imm(in.imm);
        text = "if " + jr + std::to_string(in.dst_reg) + " " + name + " " + rhs + " goto " +
               Off(in.off) + " <" + std::to_string(static_cast<int64_t>(i) + 1 + in.off) + ">";
      } else {
        text = "<jmp op " + Imm(op) + ">";
      }
    } else {
      std::snprintf(line, sizeof(line), "<code 0x%02x dst %d src %d off %d imm %d>", in.code,
                    in.dst_reg, in.src_reg, in.off, in.imm);
      text = line;
    }
    std::snprintf(line, sizeof(line), "%6zu: %s\n", i, text.c_str());
    out += line;
  }
  return out;
}

}  // namespace iomapfs::bpf
