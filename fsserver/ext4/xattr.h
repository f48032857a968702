// Extended attributes through libext2fs (in-inode, EA block, ea_inode values), presented as
// kernel ext4 presents them (fs/ext4/xattr.c handlers).
//
// Names: "user.", "trusted.", "security.", "gnu." and the two POSIX ACL names are visible;
// ext4-internal attributes ("system.data" of inline data, "system.richacl", "lustre.",
// encryption context) are neither listed nor readable (EOPNOTSUPP, like a name without a
// kernel handler). ACL values are converted from ext4's disk format to the posix_acl_xattr
// format with kernel ids (see acl.h).
//
// Thread-safety: every function REQUIRES the metadata lock (a Guard).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "base/strong_id.h"
#include "ext2/ext2_fs.h"
#include "fsserver/ext4/acl.h"

namespace iomapfs::ext4 {

inline constexpr std::string_view kAclAccessName = "system.posix_acl_access";
inline constexpr std::string_view kAclDefaultName = "system.posix_acl_default";

// True if kernel ext4 has a handler for `name` (so getxattr can find it).
bool IsVisibleXattrName(std::string_view name);

// Returns: the value of `name`.
// REQUIRES: g holds the metadata lock.
// Errors: ENODATA (no such attribute), EOPNOTSUPP (a namespace ext4 does not expose),
//         EUCLEAN (corrupt attribute storage or ACL), EIO.
Result<std::vector<std::byte>> ReadXattr(const ext2::Guard& g, Ino ino, std::string_view name);

// Returns: the visible names, in-inode attributes first, then the EA block's.
// REQUIRES: g holds the metadata lock. Errors: EUCLEAN, EIO.
Result<std::vector<std::string>> ListXattrNames(const ext2::Guard& g, Ino ino);

// Returns: the ACL stored under `name` (kAclAccessName or kAclDefaultName), or std::nullopt.
// REQUIRES: g holds the metadata lock. Errors: EUCLEAN, EIO.
Result<std::optional<Acl>> ReadAcl(const ext2::Guard& g, Ino ino, std::string_view name);

// Sets (value != nullptr) or removes the attribute `name` with a raw value (ACLs in ext4's
// disk format), in the inode or its EA block as libext2fs places it.
// REQUIRES: g holds the metadata lock.
// Errors: ENOSPC (no room in the inode and the EA block), EOPNOTSUPP (no ext_attr feature),
//         EUCLEAN, EIO.
Result<void> WriteXattrRaw(const ext2::Guard& g, Ino ino, std::string_view name,
                           const std::vector<std::byte>* value);

// Returns: whether `name` is set on `ino`. REQUIRES: g holds the metadata lock.
Result<bool> HasXattr(const ext2::Guard& g, Ino ino, std::string_view name);

// Returns: the inode's access ACL, or std::nullopt if it has none.
// REQUIRES: g holds the metadata lock. Errors: EUCLEAN, EIO.
Result<std::optional<Acl>> ReadAccessAcl(const ext2::Guard& g, Ino ino);

}  // namespace iomapfs::ext4
