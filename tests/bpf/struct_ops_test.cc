// The struct_ops hook of spec §13.2: the attach path's pieces over a synthetic BTF shaped like
// the RFC's types, so that the code which would run on a kernel with the hook is exercised here
// (detection on the real kernel: struct_ops_kernel_test.cc).
#include "bpf/struct_ops.h"

#include <bpf/btf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include "bpf/assembler.h"
#include "bpf/codegen.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

// struct fuse_iomap_bpf_ops { iomap_begin, iomap_end, iomap_ioend (function pointers);
//   int fuse_fd; u32 zeropad; char name[16]; void *conn; int users; } (spec §13.2), wrapped as
// struct bpf_struct_ops_fuse_iomap_bpf_ops { u64 common[2]; struct fuse_iomap_bpf_ops data; }.
void AddRfcTypes(const BtfPtr& b, bool with_kfunc) {
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
}

BtfPtr RfcBtf(bool with_kfunc) {
  BtfPtr b(btf__new_empty());
  AddRfcTypes(b, with_kfunc);
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
  // A kfunc of module BTF: the call's off is the module BTF fd's index in fd_array.
  auto in_module = GenerateDispatcher(maps, Abi::kStructOps, (*l)->nodeid_kfunc_id, 1);
  ASSERT_TRUE(in_module.has_value());
  for (const bpf_insn& i : in_module->insns) {
    if (i.code == (BPF_JMP | BPF_CALL) && i.src_reg == BPF_PSEUDO_KFUNC_CALL) {
      EXPECT_EQ(i.off, 1);
    }
  }
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

// A directory shaped like /sys/kernel/btf: "vmlinux" (base BTF) and, optionally, a module's split
// BTF on top of it.
class BtfDir {
 public:
  BtfDir() {
    char tmpl[] = "/tmp/iomapfs-btf-XXXXXX";
    path_ = mkdtemp(tmpl);
    vmlinux_.reset(btf__new_empty());
    btf__add_int(vmlinux_.get(), "long", 8, BTF_INT_SIGNED);
    int l = btf__add_int(vmlinux_.get(), "unsigned int", 4, 0);
    btf__add_struct(vmlinux_.get(), "task_struct", 4);
    btf__add_field(vmlinux_.get(), "flags", l, 0, 0);
    Write("vmlinux", vmlinux_.get());
  }
  ~BtfDir() { std::filesystem::remove_all(path_); }
  BtfDir(const BtfDir&) = delete;
  BtfDir& operator=(const BtfDir&) = delete;

  // Writes `module`'s split BTF: a struct fuse_conn, and the RFC types if `with_hook`.
  void AddModule(const char* module, bool with_hook) {
    BtfPtr split(btf__new_empty_split(vmlinux_.get()));
    int u32 = btf__add_int(split.get(), "u32", 4, 0);
    btf__add_struct(split.get(), "fuse_conn", 4);
    btf__add_field(split.get(), "max_read", u32, 0, 0);
    if (with_hook) AddRfcTypes(split, true);
    Write(module, split.get());
  }
  void WriteRaw(const char* name, const std::string& bytes) {
    std::FILE* f = std::fopen((path_ + "/" + name).c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
  void Remove(const char* name) { std::filesystem::remove(path_ + "/" + name); }
  const std::string& path() const { return path_; }
  // Types in vmlinux: a split BTF's own ids start after them.
  uint32_t vmlinux_types() const { return btf__type_cnt(vmlinux_.get()); }

 private:
  void Write(const char* name, const btf* b) {
    uint32_t size = 0;
    const void* raw = btf__raw_data(b, &size);
    ASSERT_NE(raw, nullptr);
    WriteRaw(name, std::string(static_cast<const char*>(raw), size));
  }
  std::string path_;
  BtfPtr vmlinux_;
};

TEST(KernelBtf, FindsAStructInVmlinuxThenInTheModulesSplitBtf) {
  BtfDir dir;
  dir.AddModule("fuse", /*with_hook=*/false);
  auto in_base = FindKernelStruct("task_struct", "fuse", dir.path());
  ASSERT_TRUE(in_base.has_value()) << in_base.error();
  EXPECT_EQ(in_base->found_in, "vmlinux");
  EXPECT_GT(in_base->type_id, 0);
  EXPECT_EQ(in_base->module, nullptr);  // found in vmlinux: the module is not read
  auto in_module = FindKernelStruct("fuse_conn", "fuse", dir.path());
  ASSERT_TRUE(in_module.has_value()) << in_module.error();
  EXPECT_EQ(in_module->found_in, "fuse");
  EXPECT_GE(static_cast<uint32_t>(in_module->type_id), dir.vmlinux_types());
  const btf_type* t = btf__type_by_id(in_module->holder(), in_module->type_id);
  ASSERT_NE(t, nullptr);
  EXPECT_STREQ(btf__name_by_offset(in_module->holder(), t->name_off), "fuse_conn");
  EXPECT_NE(in_module->searched.find(dir.path() + "/fuse"), std::string::npos)
      << in_module->searched;
  auto absent = FindKernelStruct("fuse_iomap_bpf_ops", "fuse", dir.path());
  ASSERT_TRUE(absent.has_value());
  EXPECT_EQ(absent->type_id, -1);
  EXPECT_TRUE(absent->found_in.empty());
  EXPECT_NE(absent->searched.find(dir.path() + "/vmlinux"), std::string::npos);
  EXPECT_NE(absent->searched.find("split on vmlinux"), std::string::npos) << absent->searched;
  // Without the module's file (built in, or not loaded) only vmlinux is read, and that is said.
  dir.Remove("fuse");
  auto no_module = FindKernelStruct("fuse_conn", "fuse", dir.path());
  ASSERT_TRUE(no_module.has_value());
  EXPECT_EQ(no_module->type_id, -1);
  EXPECT_NE(no_module->searched.find("absent: built in or not loaded"), std::string::npos)
      << no_module->searched;
}

TEST(KernelBtf, DetectsTheHookInModuleBtf) {
  BtfDir dir;
  dir.AddModule("fuse", /*with_hook=*/true);
  std::string reason;
  auto l = DetectStructOps(&reason, dir.path());
  ASSERT_TRUE(l.has_value()) << l.error();
  ASSERT_TRUE(l->has_value()) << reason;
  EXPECT_EQ((*l)->btf_object, "fuse");
  EXPECT_GE((*l)->ops_type_id, dir.vmlinux_types());
  EXPECT_EQ((*l)->value_size, 80u);
  EXPECT_EQ((*l)->data_offset, 16u);
  EXPECT_EQ((*l)->fuse_fd_offset, 24u);
  EXPECT_EQ((*l)->name_offset, 32u);
  EXPECT_GT((*l)->nodeid_kfunc_id, 0);
  EXPECT_NE(reason.find("found in fuse"), std::string::npos) << reason;
}

TEST(KernelBtf, AbsentOrUnreadableBtf) {
  BtfDir dir;
  dir.AddModule("fuse", /*with_hook=*/false);
  std::string reason;
  auto l = DetectStructOps(&reason, dir.path());
  ASSERT_TRUE(l.has_value()) << l.error();
  EXPECT_FALSE(l->has_value());
  // The reason names every BTF object searched.
  EXPECT_NE(reason.find("absent from kernel BTF"), std::string::npos) << reason;
  EXPECT_NE(reason.find(dir.path() + "/vmlinux"), std::string::npos) << reason;
  EXPECT_NE(reason.find(dir.path() + "/fuse"), std::string::npos) << reason;
  // A module file that is not BTF is an error, not "absent".
  dir.WriteRaw("fuse", "not BTF");
  EXPECT_FALSE(DetectStructOps(&reason, dir.path()).has_value());
  // No vmlinux BTF at all: absent, and said so.
  dir.Remove("vmlinux");
  l = DetectStructOps(&reason, dir.path());
  ASSERT_TRUE(l.has_value());
  EXPECT_FALSE(l->has_value());
  EXPECT_NE(reason.find("no BTF"), std::string::npos) << reason;
}

}  // namespace
}  // namespace iomapfs::bpf
