// The struct_ops hook of spec §13.2 on this kernel: detection searches vmlinux and the fuse
// module's BTF, answers "absent" without error, and the dispatcher keeps its test-run path.
#include <bpf/btf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "bpf/dispatcher.h"
#include "bpf/struct_ops.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

// This kernel's BTF: vmlinux, plus the fuse module's split BTF if fuse is a loaded module.
bool FuseModuleBtf() { return access("/sys/kernel/btf/fuse", F_OK) == 0; }

TEST(StructOpsKernel, AbsentOnThisKernelWithoutError) {
  IOMAPFS_REQUIRE_BPF();
  std::string reason;
  auto l = DetectStructOps(&reason);
  ASSERT_TRUE(l.has_value()) << l.error();
  if (l->has_value()) {
    GTEST_SKIP() << "this kernel has fuse_iomap_bpf_ops (" << reason
                 << "): the absent path is not testable here";
  }
  if (access("/sys/kernel/btf/vmlinux", F_OK) != 0) {
    GTEST_SKIP() << "no /sys/kernel/btf/vmlinux: " << reason;
  }
  // The reason names both BTF objects searched: vmlinux, and the fuse module's BTF (read if
  // present, else reported absent).
  EXPECT_NE(reason.find("/sys/kernel/btf/vmlinux"), std::string::npos) << reason;
  EXPECT_NE(reason.find("/sys/kernel/btf/fuse"), std::string::npos) << reason;
  EXPECT_NE(reason.find(FuseModuleBtf() ? "split on vmlinux" : "absent: built in or not loaded"),
            std::string::npos)
      << reason;
  // A second call answers the same (and logs nothing more).
  auto again = DetectStructOps();
  ASSERT_TRUE(again.has_value());
  EXPECT_FALSE(again->has_value());
  // The dispatcher keeps its test-run path.
  reason.clear();
  auto d = Dispatcher::Create(DispatcherOptions{}, &reason);
  ASSERT_TRUE(d.has_value()) << reason;
  auto attached = d->AttachHook(-1, &reason);
  ASSERT_TRUE(attached.has_value()) << attached.error();
  EXPECT_FALSE(*attached);
  EXPECT_FALSE(d->hook_attached());
  FileMap map = *BuildFileMap(11, 4096, 1, testing::RandomMappings(50, 1));
  ASSERT_TRUE(d->Install(map).has_value());
  BeginCtx c;
  c.nodeid = 11;
  c.expect_seq = d->SeqOf(11);
  c.pos = map.intervals[3].offset;
  auto got = d->Run(c);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, ReferenceAnswer(map, c.expect_seq, c));
}

// The lookup that would find fuse_iomap_bpf_ops, run for a struct the fuse code does define: found
// in the fuse module's BTF when fuse is a loaded module, else in vmlinux (fuse built in).
TEST(StructOpsKernel, FindsFuseConnWhereFuseLives) {
  if (access("/sys/kernel/btf/vmlinux", F_OK) != 0) GTEST_SKIP() << "no /sys/kernel/btf/vmlinux";
  if (access("/sys/module/fuse", F_OK) != 0) {
    GTEST_SKIP() << "fuse is neither built in nor loaded (no /sys/module/fuse)";
  }
  auto s = FindKernelStruct("fuse_conn", kFuseModule);
  ASSERT_TRUE(s.has_value()) << s.error();
  ASSERT_GT(s->type_id, 0) << "struct fuse_conn not found; searched " << s->searched;
  EXPECT_EQ(s->found_in, FuseModuleBtf() ? "fuse" : "vmlinux") << s->searched;
  const btf_type* t = btf__type_by_id(s->holder(), s->type_id);
  ASSERT_NE(t, nullptr);
  EXPECT_STREQ(btf__name_by_offset(s->holder(), t->name_off), "fuse_conn");
  EXPECT_EQ(btf_kind(t), BTF_KIND_STRUCT);
  EXPECT_GT(t->size, 0u);
  RecordProperty("fuse_conn_btf", s->found_in + " (searched " + s->searched + ")");
}

}  // namespace
}  // namespace iomapfs::bpf
