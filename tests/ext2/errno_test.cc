// ErrnoFromErrcode over every code of libext2fs's error table.
#include <gtest/gtest.h>

// ext2fs.h (through ext2_fs.h) declares the ext2 error table and com_err's struct error_table
// inside its extern "C" block; including <ext2fs/ext2_err.h> first would declare them without.
#include "ext2/ext2_fs.h"

namespace iomapfs::ext2 {
namespace {

TEST(ErrnoFromErrcodeTest, EveryExt2CodeMapsToAPositiveErrno) {
  const error_table& table = et_ext2_error_table;
  ASSERT_EQ(table.base, EXT2_ET_BASE);
  ASSERT_GT(table.n_msgs, 100);
  int corruption = 0;
  for (int i = 0; i < table.n_msgs; ++i) {
    errcode_t code = table.base + i;
    int err = ErrnoFromErrcode(code);
    EXPECT_GT(err, 0) << table.msgs[i];
    EXPECT_LT(err, 4096) << table.msgs[i];
    if (IsCorruption(code)) {
      ++corruption;
      EXPECT_EQ(err, EUCLEAN) << "corruption code " << i << " (" << table.msgs[i] << ")";
    }
  }
  EXPECT_GE(corruption, 30);
}

TEST(ErrnoFromErrcodeTest, SpotChecks) {
  EXPECT_EQ(ErrnoFromErrcode(0), 0);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_FILE_NOT_FOUND), ENOENT);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_BLOCK_ALLOC_FAIL), ENOSPC);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_INODE_ALLOC_FAIL), ENOSPC);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_DIR_NO_SPACE), ENOSPC);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_RO_FILSYS), EROFS);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_EA_KEY_NOT_FOUND), ENODATA);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_NO_INLINE_DATA), ENODATA);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_NO_MEMORY), ENOMEM);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_FILE_TOO_BIG), EFBIG);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_UNSUPP_FEATURE), EOPNOTSUPP);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_EXTENT_HEADER_BAD), EUCLEAN);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_INODE_CSUM_INVALID), EUCLEAN);
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_BAD_MAGIC), EUCLEAN);
  EXPECT_TRUE(IsCorruption(EXT2_ET_DIR_CORRUPTED));
  EXPECT_FALSE(IsCorruption(EXT2_ET_FILE_NOT_FOUND));
  EXPECT_FALSE(IsCorruption(ENOMEM));
}

TEST(ErrnoFromErrcodeTest, PlainErrnoPassesThrough) {
  for (int e : {EPERM, ENOENT, EIO, ENOMEM, EACCES, EBUSY, ENOSPC, EROFS, EUCLEAN, ENODATA}) {
    EXPECT_EQ(ErrnoFromErrcode(e), e);
  }
  for (int e = 1; e < 256; ++e) EXPECT_EQ(ErrnoFromErrcode(e), e);
}

TEST(ErrnoFromErrcodeTest, ForeignTablesBecomeEio) {
  // A com_err code from another table (or garbage) is still a positive errno.
  EXPECT_EQ(ErrnoFromErrcode(EXT2_ET_BASE - 1000), EIO);
  EXPECT_EQ(ErrnoFromErrcode(-5), EIO);
}

}  // namespace
}  // namespace iomapfs::ext2
