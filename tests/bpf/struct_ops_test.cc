// The struct_ops hook of spec §13.2: the attach path's pieces over a synthetic BTF shaped like
// the RFC's types, so that the code which would run on a kernel with the hook is exercised here
// (detection on the real kernel: struct_ops_kernel_test.cc).
#include "bpf/struct_ops.h"

#include <bpf/btf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <cstring>
#include <memory>

#include "bpf/assembler.h"
#include "bpf/codegen.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

struct BtfDeleter {
  void operator()(btf* b) const { btf__free(b); }
};
using BtfPtr = std::unique_ptr<btf, BtfDeleter>;

// struct fuse_iomap_bpf_ops { iomap_begin, iomap_end, iomap_ioend (function pointers);
//   int fuse_fd; u32 zeropad; char name[16]; void *conn; int users; } (spec §13.2), wrapped as
// struct bpf_struct_ops_fuse_iomap_bpf_ops { u64 common[2]; struct fuse_iomap_bpf_ops data; }.
BtfPtr RfcBtf(bool with_kfunc) {
  BtfPtr b(btf__new_empty());
  int u64 = btf__add_int(b.get(), "u64", 8, 0);
  int s32 = btf__add_int(b.get(), "int", 4, BTF_INT_SIGNED);
  int u32 = btf__add_int(b.get(), "u32", 4, 0);
  int chr = btf__add_int(b.get(), "char", 1, BTF_INT_CHAR);
  int proto = btf__add_func_proto(b.get(), s32);
  int fptr = btf__add_ptr(b.get(), proto);
  int vptr = btf__add_ptr(b.get(), 0);
  int name = btf__add_array(b.get(), u32, chr, 16);
  int ops = btf__add_struct(b.get(), "fuse_iomap_bpf_ops", 64);
  btf__add_field(b.get(), "iomap_begin", fptr, 0, 0);
  btf__add_field(b.get(), "iomap_end", fptr, 64, 0);
  btf__add_field(b.get(), "iomap_ioend", fptr, 128, 0);
  btf__add_field(b.get(), "fuse_fd", s32, 192, 0);
  btf__add_field(b.get(), "zeropad", u32, 224, 0);
  btf__add_field(b.get(), "name", name, 256, 0);
  btf__add_field(b.get(), "conn", vptr, 384, 0);
  btf__add_field(b.get(), "users", s32, 448, 0);
  int common = btf__add_array(b.get(), u32, u64, 2);
  btf__add_struct(b.get(), "bpf_struct_ops_fuse_iomap_bpf_ops", 80);
  btf__add_field(b.get(), "common", common, 0, 0);
  btf__add_field(b.get(), "data", ops, 128, 0);
  if (with_kfunc) {
    int kproto = btf__add_func_proto(b.get(), u64);
    btf__add_func_param(b.get(), "inode", vptr);
    btf__add_func(b.get(), "fuse_bpf_inode_nodeid", BTF_FUNC_GLOBAL, kproto);
  }
  return b;
}

TEST(StructOps, DescribesTheRfcLayout) {
  BtfPtr b = RfcBtf(true);
  auto l = DescribeStructOps(b.get());
  ASSERT_TRUE(l.has_value()) << l.error();
  ASSERT_TRUE(l->has_value());
  EXPECT_EQ((*l)->value_size, 80u);
  EXPECT_EQ((*l)->data_offset, 16u);
  EXPECT_EQ((*l)->begin_member_index, 0u);
  EXPECT_EQ((*l)->begin_offset, 0u);
  EXPECT_EQ((*l)->fuse_fd_offset, 24u);
  EXPECT_EQ((*l)->name_offset, 32u);
  EXPECT_EQ((*l)->name_size, 16u);
  EXPECT_GT((*l)->nodeid_kfunc_id, 0);
  EXPECT_EQ(btf__find_by_name_kind(b.get(), "fuse_iomap_bpf_ops", BTF_KIND_STRUCT),
            static_cast<int>((*l)->ops_type_id));

  // The ops value: program fd in iomap_begin as a u64, the fuse fd, the name, zeroes elsewhere.
  std::vector<uint8_t> v = BuildOpsValue(**l, 42, 7, "iomapfs-with-a-long-name");
  ASSERT_EQ(v.size(), 80u);
  uint64_t prog = 0;
  std::memcpy(&prog, v.data() + 16, 8);
  EXPECT_EQ(prog, 42u);
  int32_t fd = 0;
  std::memcpy(&fd, v.data() + 16 + 24, 4);
  EXPECT_EQ(fd, 7);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(v.data() + 16 + 32)), "iomapfs-with-a-");
  for (size_t i : {0, 8, 16 + 8, 16 + 16, 16 + 28, 16 + 48, 16 + 56}) EXPECT_EQ(v[i], 0) << i;

  // The dispatcher for the struct_ops ABI: node id from the kfunc, args[] instead of BeginCtx.
  DispatcherMaps maps;
  maps.index_fd = 3;
  maps.classes = {{4, 4}, {5, 5}};
  auto gen = GenerateDispatcher(maps, Abi::kStructOps, (*l)->nodeid_kfunc_id);
  ASSERT_TRUE(gen.has_value());
  size_t kfunc_calls = 0;
  for (const bpf_insn& i : gen->insns) {
    kfunc_calls += i.code == (BPF_JMP | BPF_CALL) && i.src_reg == BPF_PSEUDO_KFUNC_CALL &&
                   i.imm == (*l)->nodeid_kfunc_id;
  }
  EXPECT_EQ(kfunc_calls, 1u);
  EXPECT_EQ(gen->insns[0].code, BPF_LDX | BPF_MEM | BPF_DW);  // r9 = args[0], the inode
  EXPECT_EQ(GenerateDispatcher(maps, Abi::kStructOps, 0).error(), EINVAL);
}

TEST(StructOps, MalformedOrMissingTypes) {
  BtfPtr none(btf__new_empty());
  btf__add_int(none.get(), "int", 4, BTF_INT_SIGNED);
  auto l = DescribeStructOps(none.get());
  ASSERT_TRUE(l.has_value());
  EXPECT_FALSE(l->has_value());
  // The ops struct without its kernel value wrapper: not the RFC's shape.
  BtfPtr half(btf__new_empty());
  int s32 = btf__add_int(half.get(), "int", 4, BTF_INT_SIGNED);
  btf__add_struct(half.get(), "fuse_iomap_bpf_ops", 4);
  btf__add_field(half.get(), "fuse_fd", s32, 0, 0);
  EXPECT_EQ(DescribeStructOps(half.get()).error(), EPROTO);
  // Patches 1-4: no nodeid kfunc, so attach is refused before touching the kernel.
  BtfPtr old = RfcBtf(false);
  auto lo = DescribeStructOps(old.get());
  ASSERT_TRUE(lo.has_value() && lo->has_value());
  EXPECT_EQ((*lo)->nodeid_kfunc_id, 0);
  std::string reason;
  auto link = StructOpsLink::Attach(**lo, DispatcherMaps{}, -1, &reason);
  ASSERT_FALSE(link.has_value());
  EXPECT_EQ(link.error(), EOPNOTSUPP);
}

}  // namespace
}  // namespace iomapfs::bpf
