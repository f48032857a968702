// The struct_ops hook of spec §13.2 on this kernel: detection answers "absent" without error and
// the dispatcher keeps its test-run path.
#include <gtest/gtest.h>

#include "bpf/dispatcher.h"
#include "bpf/struct_ops.h"
#include "tests/bpf/bpf_test_util.h"

namespace iomapfs::bpf {
namespace {

TEST(StructOpsKernel, AbsentOnThisKernelWithoutError) {
  IOMAPFS_REQUIRE_BPF();
  auto l = DetectStructOps();
  ASSERT_TRUE(l.has_value()) << l.error();
  if (l->has_value()) {
    GTEST_SKIP() << "this kernel has fuse_iomap_bpf_ops: the absent path is not testable here";
  }
  // A second call answers the same (and logs nothing more).
  auto again = DetectStructOps();
  ASSERT_TRUE(again.has_value());
  EXPECT_FALSE(again->has_value());
  // The dispatcher keeps its test-run path.
  std::string reason;
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

}  // namespace
}  // namespace iomapfs::bpf
