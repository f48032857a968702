// Assembler encodings, label resolution, far jumps, the sticky error, and the disassembler.
#include "bpf/assembler.h"

#include <gtest/gtest.h>

namespace iomapfs::bpf {
namespace {

// Follows the jump at `i` of `p` and returns the index it lands on.
int64_t Target(const std::vector<bpf_insn>& p, size_t i) {
  if (p[i].code == kGotolCode) return static_cast<int64_t>(i) + 1 + p[i].imm;
  return static_cast<int64_t>(i) + 1 + p[i].off;
}

TEST(Assembler, MovImmPicksTheCheapestEncoding) {
  Assembler a;
  a.MovImm(R1, 5);
  a.MovImm(R2, 0xffffffffu);  // mov32 zero-extends
  a.MovImm(R3, ~0ull);        // mov64 sign-extends -1
  a.MovImm(R4, 1ull << 40);   // ld_imm64
  a.Exit();
  auto p = a.Finish();
  ASSERT_TRUE(p.has_value());
  ASSERT_EQ(p->size(), 6u);
  EXPECT_EQ((*p)[0].code, BPF_ALU | BPF_MOV | BPF_K);
  EXPECT_EQ((*p)[1].code, BPF_ALU | BPF_MOV | BPF_K);
  EXPECT_EQ(static_cast<uint32_t>((*p)[1].imm), 0xffffffffu);
  EXPECT_EQ((*p)[2].code, BPF_ALU64 | BPF_MOV | BPF_K);
  EXPECT_EQ((*p)[2].imm, -1);
  EXPECT_EQ((*p)[3].code, BPF_LD | BPF_DW | BPF_IMM);
  EXPECT_EQ((*p)[3].imm, 0);
  EXPECT_EQ((*p)[4].imm, 1 << 8);
}

TEST(Assembler, LabelsResolveForwardAndBackward) {
  Assembler a;
  Label top = a.NewLabel();
  Label out = a.NewLabel();
  a.Bind(top);
  a.MovImm(R0, 1);
  a.JumpIfImm(Cond::kEq, R1, 3, out);
  a.Jump(top);
  a.Bind(out);
  a.Exit();
  auto p = a.Finish();
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(Target(*p, 1), 3);
  EXPECT_EQ(Target(*p, 2), 0);
}

TEST(Assembler, JumpToNextInstructionIsDropped) {
  Assembler a;
  Label next = a.NewLabel();
  a.MovImm(R0, 0);
  a.Jump(next);
  a.Bind(next);
  a.Exit();
  auto p = a.Finish();
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->size(), 2u);
}

TEST(Assembler, FarJumpsBecomeGotol) {
  Assembler a;
  Label far = a.NewLabel();
  a.JumpIfImm(Cond::kGe, R7, 100, far);  // 0,1: if r7 < 100 goto +1; gotol far
  a.JumpIfImm(Cond::kSet, R8, 4, far);   // 2,3,4: if r8 & 4 goto +1; goto +1; gotol far
  a.Jump(far);                           // 5: gotol far
  a.JumpIfImm(Cond::kEq, R1, 0, far);    // 6,7
  for (int i = 0; i < 40000; ++i) a.MovImm(R0, 2);
  a.Bind(far);
  a.Exit();
  auto p = a.Finish();
  ASSERT_TRUE(p.has_value()) << a.error_message();
  const int64_t exit_at = static_cast<int64_t>(p->size()) - 1;
  EXPECT_EQ((*p)[0].code, BPF_JMP | BPF_JLT | BPF_K);
  EXPECT_EQ((*p)[0].off, 1);
  EXPECT_EQ((*p)[1].code, kGotolCode);
  EXPECT_EQ(Target(*p, 1), exit_at);
  EXPECT_EQ((*p)[2].code, BPF_JMP | BPF_JSET | BPF_K);
  EXPECT_EQ(Target(*p, 2), 4);
  EXPECT_EQ(Target(*p, 3), 5);
  EXPECT_EQ(Target(*p, 4), exit_at);
  EXPECT_EQ((*p)[5].code, kGotolCode);
  EXPECT_EQ(Target(*p, 5), exit_at);
  EXPECT_EQ((*p)[6].code, BPF_JMP | BPF_JNE | BPF_K);
  EXPECT_EQ(Target(*p, 7), exit_at);
  EXPECT_EQ(exit_at, 8 + 40000);
}

TEST(Assembler, ShortJumpAtTheEdgeStaysShort) {
  Assembler a;
  Label l = a.NewLabel();
  a.JumpIfImm(Cond::kEq, R1, 0, l);
  for (int i = 0; i < 32767; ++i) a.MovImm(R0, 2);
  a.Bind(l);
  a.Exit();
  auto p = a.Finish();
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->size(), 32769u);
  EXPECT_EQ((*p)[0].off, 32767);
}

TEST(Assembler, UnboundLabelIsAnError) {
  Assembler a;
  Label l = a.NewLabel();
  a.Jump(l);
  a.Exit();
  auto p = a.Finish();
  ASSERT_FALSE(p.has_value());
  EXPECT_EQ(p.error(), EINVAL);
  EXPECT_NE(a.error_message().find("never bound"), std::string::npos);
}

TEST(Assembler, LabelBoundTwiceIsAnError) {
  Assembler a;
  Label l = a.NewLabel();
  a.Bind(l);
  a.Exit();
  a.Bind(l);
  EXPECT_FALSE(a.ok());
  EXPECT_NE(a.error_message().find("bound twice"), std::string::npos);
  EXPECT_EQ(a.Finish().error(), EINVAL);
}

TEST(Assembler, InvalidLabelIsAnError) {
  Assembler a;
  a.Jump(Label());
  EXPECT_FALSE(a.ok());
}

TEST(Assembler, RangeErrorsAreStickyAndTheFirstWins) {
  Assembler a;
  a.Load(Size::kDW, R1, R2, 40000);  // offset not s16
  a.Alu64Imm(Alu::kAdd, R1, 1ll << 33);
  a.Exit();
  EXPECT_FALSE(a.ok());
  EXPECT_NE(a.error_message().find("load offset 40000"), std::string::npos);
  EXPECT_EQ(a.Finish().error(), EINVAL);

  Assembler b;
  b.StoreImm(Size::kDW, R1, 0, 1ll << 31);
  EXPECT_NE(b.error_message().find("immediate"), std::string::npos);
  Assembler c;
  c.Mov(static_cast<Reg>(11), R1);
  EXPECT_NE(c.error_message().find("r11"), std::string::npos);
  Assembler d;
  Label l = d.NewLabel();
  d.JumpIfImm(Cond::kEq, R1, -(1ll << 32), l);
  EXPECT_FALSE(d.ok());
}

TEST(Assembler, TooLongProgramIsE2big) {
  Assembler a;
  for (size_t i = 0; i < kMaxProgramInsns; ++i) a.MovImm(R0, 0);
  a.Exit();
  auto p = a.Finish();
  ASSERT_FALSE(p.has_value());
  EXPECT_EQ(p.error(), E2BIG);
}

TEST(Disassembler, Syntax) {
  Assembler a;
  Label l = a.NewLabel();
  a.Mov(R6, R1);
  a.Load(Size::kW, R8, R6, 24);
  a.Store(Size::kDW, R6, -8, R2);
  a.StoreImm(Size::kDW, R6, 48, -1);
  a.LoadImm64(R2, 0x123456789ull);
  a.LoadMapValue(R1, 5, 64);
  a.Alu64Imm(Alu::kRsh, R3, 63);
  a.Alu32Imm(Alu::kAnd, R4, 0xffff);
  a.JumpIf(Cond::kSge, R7, R1, l);
  a.Call(12);
  a.Bind(l);
  a.Exit();
  auto p = a.Finish();
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(Disassemble(*p),
            "     0: r6 = r1\n"
            "     1: r8 = *(u32 *)(r6 +24)\n"
            "     2: *(u64 *)(r6 -8) = r2\n"
            "     3: *(u64 *)(r6 +48) = -1\n"
            "     4: r2 = 0x123456789 ll\n"
            "     6: r1 = map[fd:5][0]+64\n"
            "     8: r3 >>= 0x3f\n"
            "     9: w4 &= 0xffff\n"
            "    10: if r7 s>= r1 goto +1 <12>\n"
            "    11: call 12\n"
            "    12: exit\n");
}

}  // namespace
}  // namespace iomapfs::bpf
