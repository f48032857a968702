// POSIX ACLs: ext4's on-disk format (fs/ext4/acl.h), the xattr format the kernel hands to
// getxattr(2) (include/uapi/linux/posix_acl_xattr.h), and permission checks as the VFS does them
// (fs/namei.c generic_permission/acl_permission_check, fs/posix_acl.c posix_acl_permission).
//
// Thread-safety: values and pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "base/result.h"
#include "fsserver/ext4/filesystem.h"

namespace iomapfs::ext4 {

// ACL_* tags and the undefined id, as in <linux/posix_acl.h>.
inline constexpr uint16_t kAclUserObj = 0x01;
inline constexpr uint16_t kAclUser = 0x02;
inline constexpr uint16_t kAclGroupObj = 0x04;
inline constexpr uint16_t kAclGroup = 0x08;
inline constexpr uint16_t kAclMask = 0x10;
inline constexpr uint16_t kAclOther = 0x20;
inline constexpr uint32_t kAclUndefinedId = 0xffffffff;

struct AclEntry {
  uint16_t tag = 0;
  uint16_t perm = 0;              // rwx bits (4, 2, 1)
  uint32_t id = kAclUndefinedId;  // uid/gid for ACL_USER/ACL_GROUP
  bool operator==(const AclEntry&) const = default;
};
using Acl = std::vector<AclEntry>;

// Parses ext4's on-disk ACL (version 1 header; short entries for *_OBJ, MASK and OTHER).
// Errors: EUCLEAN (bad version, truncated entry, unknown tag).
Result<Acl> AclFromDisk(std::span<const std::byte> value);

// Serializes `acl` in the posix_acl_xattr format (version 2): what getxattr(2) returns on kernel
// ext4, with e_id = ACL_UNDEFINED_ID for entries other than ACL_USER/ACL_GROUP (libext2fs's own
// conversion writes 0 there, which differs from the kernel).
std::vector<std::byte> AclToXattr(const Acl& acl);

// Serializes `acl` in ext4's on-disk format (ext4_acl_to_disk).
std::vector<std::byte> AclToDisk(const Acl& acl);

// Parses the posix_acl_xattr format setxattr(2) hands over (posix_acl_from_xattr) and validates
// it (posix_acl_valid). Returns: the ACL, empty for a header without entries (no ACL).
// Errors: EOPNOTSUPP (not version 2), EINVAL (bad size, order, tag or permission bits).
Result<Acl> AclFromXattr(std::span<const std::byte> value);

// posix_acl_equiv_mode(): folds `acl` into the permission bits of *mode.
// Returns: true if the ACL says no more than the mode bits (it need not be stored).
bool AclEquivMode(const Acl& acl, uint32_t* mode);

// posix_acl_create_masq(): masks a directory's default ACL (copied into *acl) by the new
// inode's requested *mode and the mode by the ACL.
// Returns: true if the resulting access ACL says more than the mode (it must be stored).
bool AclCreateMasq(Acl* acl, uint32_t* mode);

// Who owns the inode and its mode, for permission checks.
struct Ownership {
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
};

// The VFS permission check for `mask` (R_OK/W_OK/X_OK bits; 0 = existence) by `caller`, given
// the inode's access ACL (nullptr if none). Root (uid 0, or any caller when `fakeroot`) gets the
// CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH exceptions. Read-only and immutable checks are the
// caller's business.
// Errors: EACCES.
Result<void> CheckPermission(const Ownership& owner, const Acl* acl, int mask, const Caller& caller,
                             bool fakeroot);

}  // namespace iomapfs::ext4
