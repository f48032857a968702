// ACL format conversion and the VFS permission algorithm, without an image.
#include "fsserver/ext4/acl.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "fsserver/ext4/inode.h"

namespace iomapfs::ext4 {
namespace {

std::vector<std::byte> Bytes(std::initializer_list<uint8_t> b) {
  std::vector<std::byte> out;
  for (uint8_t x : b) out.push_back(std::byte{x});
  return out;
}

// user::rw- user:1234:r-x group::r-- mask::r-x other::r-- in ext4's disk format.
const std::vector<std::byte> kDisk = Bytes(
    {1, 0, 0, 0, 1, 0, 6, 0, 2, 0, 5, 0, 0xd2, 4, 0, 0, 4, 0, 4, 0, 0x10, 0, 5, 0, 0x20, 0, 4, 0});

TEST(AclTest, DiskToXattrUsesKernelIds) {
  auto acl = AclFromDisk(kDisk);
  ASSERT_TRUE(acl);
  ASSERT_EQ(acl->size(), 5u);
  EXPECT_EQ((*acl)[1], (AclEntry{kAclUser, 5, 1234}));
  std::vector<std::byte> x = AclToXattr(*acl);
  // What getxattr returns on kernel ext4 (ACL_UNDEFINED_ID for the non-named entries).
  EXPECT_EQ(x, Bytes({2,    0,    0,    0,    1,    0, 6, 0, 0xff, 0xff, 0xff, 0xff, 2,    0, 5, 0,
                      0xd2, 4,    0,    0,    4,    0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x10, 0, 5, 0,
                      0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff}));
}

TEST(AclTest, MalformedDiskAclsAreCorruption) {
  EXPECT_EQ(AclFromDisk(Bytes({2, 0, 0, 0})).error(), EUCLEAN);                 // version
  EXPECT_EQ(AclFromDisk(Bytes({1, 0, 0, 0, 2, 0, 5, 0, 1})).error(), EUCLEAN);  // truncated
  EXPECT_EQ(AclFromDisk(Bytes({1, 0, 0, 0, 0x40, 0, 5, 0})).error(), EUCLEAN);  // tag
  EXPECT_TRUE(AclFromDisk(Bytes({1, 0, 0, 0})));                                // empty
}

TEST(AclTest, PermissionByModeBits) {
  Ownership o{S_IFREG | 0640, 100, 200};
  EXPECT_TRUE(CheckPermission(o, nullptr, R_OK | W_OK, Caller{100, 1, 0, {}}, false));
  EXPECT_EQ(CheckPermission(o, nullptr, X_OK, Caller{100, 1, 0, {}}, false).error(), EACCES);
  EXPECT_TRUE(CheckPermission(o, nullptr, R_OK, Caller{101, 200, 0, {}}, false));
  EXPECT_TRUE(CheckPermission(o, nullptr, R_OK, Caller{101, 5, 0, {7, 200}}, false));
  EXPECT_EQ(CheckPermission(o, nullptr, W_OK, Caller{101, 200, 0, {}}, false).error(), EACCES);
  EXPECT_EQ(CheckPermission(o, nullptr, R_OK, Caller{101, 201, 0, {}}, false).error(), EACCES);
  EXPECT_TRUE(CheckPermission(o, nullptr, 0, Caller{101, 201, 0, {}}, false));
  // The owner class is exclusive: an owner without r is denied even if others may read.
  Ownership o2{S_IFREG | 0044, 100, 200};
  EXPECT_EQ(CheckPermission(o2, nullptr, R_OK, Caller{100, 200, 0, {}}, false).error(), EACCES);
}

TEST(AclTest, RootOverrides) {
  Ownership file{S_IFREG | 0000, 100, 200};
  Ownership exe{S_IFREG | 0001, 100, 200};
  Ownership dir{S_IFDIR | 0000, 100, 200};
  Caller root{0, 0, 0, {}};
  EXPECT_TRUE(CheckPermission(file, nullptr, R_OK | W_OK, root, false));
  EXPECT_EQ(CheckPermission(file, nullptr, X_OK, root, false).error(), EACCES);
  EXPECT_TRUE(CheckPermission(exe, nullptr, X_OK, root, false));
  EXPECT_TRUE(CheckPermission(dir, nullptr, R_OK | W_OK | X_OK, root, false));
  // fakeroot: anybody is root.
  EXPECT_TRUE(CheckPermission(file, nullptr, R_OK, Caller{5, 5, 0, {}}, true));
}

TEST(AclTest, PermissionByAcl) {
  auto acl = AclFromDisk(kDisk);
  ASSERT_TRUE(acl);
  Ownership o{S_IFREG | 0654, 100, 200};  // group bits = mask r-x
  EXPECT_TRUE(CheckPermission(o, &*acl, R_OK | X_OK, Caller{1234, 9, 0, {}}, false));
  EXPECT_EQ(CheckPermission(o, &*acl, W_OK, Caller{1234, 9, 0, {}}, false).error(), EACCES);
  EXPECT_TRUE(CheckPermission(o, &*acl, R_OK, Caller{55, 200, 0, {}}, false));  // group::r--
  EXPECT_EQ(CheckPermission(o, &*acl, X_OK, Caller{55, 200, 0, {}}, false).error(), EACCES);
  EXPECT_TRUE(CheckPermission(o, &*acl, R_OK, Caller{55, 56, 0, {}}, false));  // other::r--
  // The mask limits a named user: user:1234:rwx with mask r-- gives r only.
  Acl masked = {{kAclUserObj, 7, kAclUndefinedId},
                {kAclUser, 7, 1234},
                {kAclGroupObj, 0, kAclUndefinedId},
                {kAclMask, 4, kAclUndefinedId},
                {kAclOther, 0, kAclUndefinedId}};
  Ownership o3{S_IFREG | 0740, 100, 200};
  EXPECT_TRUE(CheckPermission(o3, &masked, R_OK, Caller{1234, 9, 0, {}}, false));
  EXPECT_EQ(CheckPermission(o3, &masked, W_OK, Caller{1234, 9, 0, {}}, false).error(), EACCES);
  // A group match that fails denies instead of falling through to other.
  Acl grp = {{kAclUserObj, 7, kAclUndefinedId},
             {kAclGroupObj, 0, kAclUndefinedId},
             {kAclMask, 7, kAclUndefinedId},
             {kAclOther, 4, kAclUndefinedId}};
  EXPECT_EQ(CheckPermission(o3, &grp, R_OK, Caller{5, 200, 0, {}}, false).error(), EACCES);
}

TEST(InodeTest, DecodeTimeHandlesEpochBitsAndNanoseconds) {
  EXPECT_EQ(DecodeTime(0x80000000u, 0, false), (Timestamp{-2147483648LL, 0}));
  EXPECT_EQ(DecodeTime(0x80000000u, 1, true), (Timestamp{2147483648LL, 0}));  // 2038
  EXPECT_EQ(DecodeTime(0, 1, true), (Timestamp{1LL << 32, 0}));               // 2106
  EXPECT_EQ(DecodeTime(5, (999999999u << 2) | 2, true), (Timestamp{5 + (2LL << 32), 999999999}));
  EXPECT_EQ(DecodeTime(0xffffffffu, 0, true), (Timestamp{-1, 0}));  // 1969-12-31 23:59:59
}

}  // namespace
}  // namespace iomapfs::ext4
