// `-o offset=BYTES`: a filesystem inside a partitioned disk image (an MBR with one Linux
// partition at 1 MiB) is served from its partition, and reads exactly as kernel ext4 reads it
// through a loop device at the same offset.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"
#include "tests/support/tree_compare.h"

namespace iomapfs::testing {
namespace {

#ifdef IOMAPFS_BINARY
constexpr const char* kBinary = IOMAPFS_BINARY;
#else
constexpr const char* kBinary = nullptr;
#endif

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kOffset = kMiB;
constexpr uint64_t kFsSize = 64 * kMiB;

void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Writes an MBR with one partition (type 0x83) covering [kOffset, kOffset + kFsSize).
std::string WriteMbr(const std::string& disk) {
  uint8_t mbr[512] = {};
  uint8_t* entry = mbr + 446;
  entry[0] = 0x00;  // not bootable
  entry[1] = 0xfe;  // CHS fields unused (LBA addressing): the conventional "beyond 1024" values
  entry[2] = 0xff;
  entry[3] = 0xff;
  entry[4] = 0x83;  // Linux
  entry[5] = 0xfe;
  entry[6] = 0xff;
  entry[7] = 0xff;
  Put32(entry + 8, kOffset / 512);
  Put32(entry + 12, kFsSize / 512);
  Put32(mbr + 440, 0x10ffee00);  // disk signature
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  int fd = open(disk.c_str(), O_WRONLY);
  if (fd < 0) return "open " + disk;
  bool ok = pwrite(fd, mbr, sizeof(mbr), 0) == static_cast<ssize_t>(sizeof(mbr));
  close(fd);
  return ok ? "" : "write MBR";
}

TEST(OffsetTest, PartitionedImage) {
  if (std::string why = MountTestSkipReason(kBinary); !why.empty()) GTEST_SKIP() << why;
  TempDir tmp;
  const std::string src = tmp.Sub("src"), fs = tmp.Sub("fs.img"), disk = tmp.Sub("disk.img");
  const std::string a = tmp.Sub("kernel"), b = tmp.Sub("iomapfs");
  for (const std::string& d : {src, src + "/dir", a, b}) ASSERT_EQ(mkdir(d.c_str(), 0755), 0);
  ASSERT_TRUE(WriteFile(src + "/hello", "hello from a partition\n"));
  ASSERT_TRUE(WriteFile(src + "/dir/big", std::string(3 * kMiB + 5, 'x')));
  ASSERT_EQ(symlink("dir/big", (src + "/link").c_str()), 0);
  ASSERT_EQ(MakeImage(fs, kFsSize, "ext4", {}, src), "");
  ASSERT_TRUE(WriteFile(disk, ""));
  ASSERT_EQ(truncate(disk.c_str(), kOffset + kFsSize + kMiB), 0);
  ASSERT_EQ(WriteMbr(disk), "");
  CommandResult dd =
      RunShell("dd if=" + fs + " of=" + disk + " bs=1M seek=1 conv=notrunc,sparse status=none");
  ASSERT_EQ(dd.exit_code, 0) << dd.output;

  // Without the offset there is no filesystem at the start of the disk.
  {
    ServerResult r = RunServer(kBinary, {disk, b, "-o", "ro"});
    MountGuard guard;
    if (IsMountPoint(b)) guard.Arm(b);
    EXPECT_NE(r.exit_code, 0) << "mounted a partitioned disk without offset=:\n" << r.output;
    EXPECT_FALSE(guard.armed());
    EXPECT_EQ(WaitServerExit(kBinary, b, 5), "");
  }

  LoopDevice loop;
  MountGuard kernel_mount;
  ServerMount server;
  ASSERT_EQ(loop.Attach(disk, /*read_only=*/true, kOffset), "");
  ASSERT_EQ(KernelMount(loop.path(), a, /*read_only=*/true, &kernel_mount), "");
  ASSERT_EQ(server.Start(kBinary, disk, b, "ro,offset=" + std::to_string(kOffset)), "");

  TreeComparison c = CompareTrees(a, b);
  EXPECT_TRUE(c.ok()) << c.Format();
  EXPECT_EQ(c.entries, 6u);  // root, dir, dir/big, hello, link, lost+found
  struct stat st;
  ASSERT_EQ(lstat((b + "/dir/big").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(3 * kMiB + 5));
  EXPECT_EQ(server.Stop(), "");
}

}  // namespace
}  // namespace iomapfs::testing
