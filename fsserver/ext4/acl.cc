#include "fsserver/ext4/acl.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace iomapfs::ext4 {
namespace {

constexpr uint32_t kExt4AclVersion = 1;
constexpr uint32_t kXattrAclVersion = 2;  // POSIX_ACL_XATTR_VERSION
constexpr int kMayExec = 1, kMayWrite = 2, kMayRead = 4;

template <class T>
T LoadLe(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(v));
  return v;  // little-endian hosts only (x86-64, arm64 little-endian)
}

template <class T>
void StoreLe(std::vector<std::byte>& out, T v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof(v));
}

bool InGroup(const Caller& caller, uint32_t gid) {
  return caller.gid == gid ||
         std::find(caller.groups.begin(), caller.groups.end(), gid) != caller.groups.end();
}

// posix_acl_permission(): returns 0, EACCES, or EIO for a malformed ACL.
int AclPermission(const Ownership& owner, const Acl& acl, int want, const Caller& caller) {
  want &= kMayRead | kMayWrite | kMayExec;
  bool found = false;
  for (size_t i = 0; i < acl.size(); ++i) {
    const AclEntry& e = acl[i];
    bool masked = false;
    switch (e.tag) {
      case kAclUserObj:
        if (owner.uid == caller.uid) return (e.perm & want) == want ? 0 : EACCES;
        continue;
      case kAclUser:
        if (e.id != caller.uid) continue;
        masked = true;
        break;
      case kAclGroupObj:
        if (!InGroup(caller, owner.gid)) continue;
        found = true;
        if ((e.perm & want) != want) continue;
        masked = true;
        break;
      case kAclGroup:
        if (!InGroup(caller, e.id)) continue;
        found = true;
        if ((e.perm & want) != want) continue;
        masked = true;
        break;
      case kAclMask:
        continue;
      case kAclOther:
        if (found) return EACCES;
        return (e.perm & want) == want ? 0 : EACCES;
      default:
        return EIO;
    }
    if (masked) {
      for (size_t j = i + 1; j < acl.size(); ++j) {
        if (acl[j].tag == kAclMask) return (e.perm & acl[j].perm & want) == want ? 0 : EACCES;
      }
      return (e.perm & want) == want ? 0 : EACCES;
    }
  }
  return EIO;
}

// acl_permission_check(): 0 or EACCES (or EIO for a malformed ACL).
int AclPermissionCheck(const Ownership& owner, const Acl* acl, int mask, const Caller& caller) {
  uint32_t mode = owner.mode;
  if (owner.uid == caller.uid) {
    mask &= 7;
    mode >>= 6;
    return (mask & ~mode) != 0 ? EACCES : 0;
  }
  if (acl != nullptr && (mode & S_IRWXG) != 0) return AclPermission(owner, *acl, mask, caller);
  mask &= 7;
  if ((mask & (mode ^ (mode >> 3))) != 0 && InGroup(caller, owner.gid)) mode >>= 3;
  return (mask & ~mode) != 0 ? EACCES : 0;
}

}  // namespace

Result<Acl> AclFromDisk(std::span<const std::byte> value) {
  if (value.size() < 4 || LoadLe<uint32_t>(value.data()) != kExt4AclVersion) {
    return Unexpected(kEfsCorrupted);
  }
  Acl acl;
  size_t off = 4;
  while (off < value.size()) {
    if (value.size() - off < 4) return Unexpected(kEfsCorrupted);
    AclEntry e;
    e.tag = LoadLe<uint16_t>(value.data() + off);
    e.perm = LoadLe<uint16_t>(value.data() + off + 2);
    switch (e.tag) {
      case kAclUserObj:
      case kAclGroupObj:
      case kAclMask:
      case kAclOther:
        off += 4;
        break;
      case kAclUser:
      case kAclGroup:
        if (value.size() - off < 8) return Unexpected(kEfsCorrupted);
        e.id = LoadLe<uint32_t>(value.data() + off + 4);
        off += 8;
        break;
      default:
        return Unexpected(kEfsCorrupted);
    }
    acl.push_back(e);
  }
  return acl;
}

std::vector<std::byte> AclToXattr(const Acl& acl) {
  std::vector<std::byte> out;
  out.reserve(4 + 8 * acl.size());
  StoreLe<uint32_t>(out, kXattrAclVersion);
  for (const AclEntry& e : acl) {
    StoreLe<uint16_t>(out, e.tag);
    StoreLe<uint16_t>(out, e.perm);
    StoreLe<uint32_t>(out, (e.tag == kAclUser || e.tag == kAclGroup) ? e.id : kAclUndefinedId);
  }
  return out;
}

std::vector<std::byte> AclToDisk(const Acl& acl) {
  std::vector<std::byte> out;
  out.reserve(4 + 8 * acl.size());
  StoreLe<uint32_t>(out, kExt4AclVersion);
  for (const AclEntry& e : acl) {
    StoreLe<uint16_t>(out, e.tag);
    StoreLe<uint16_t>(out, e.perm);
    if (e.tag == kAclUser || e.tag == kAclGroup) StoreLe<uint32_t>(out, e.id);
  }
  return out;
}

Result<Acl> AclFromXattr(std::span<const std::byte> value) {
  if (value.size() < 4) return Unexpected(EINVAL);
  if (LoadLe<uint32_t>(value.data()) != kXattrAclVersion) return Unexpected(EOPNOTSUPP);
  if ((value.size() - 4) % 8 != 0) return Unexpected(EINVAL);
  Acl acl;
  for (size_t off = 4; off < value.size(); off += 8) {
    AclEntry e;
    e.tag = LoadLe<uint16_t>(value.data() + off);
    e.perm = LoadLe<uint16_t>(value.data() + off + 2);
    e.id = LoadLe<uint32_t>(value.data() + off + 4);
    if (e.tag != kAclUser && e.tag != kAclGroup) e.id = kAclUndefinedId;
    acl.push_back(e);
  }
  if (acl.empty()) return acl;
  // posix_acl_valid(): entries in tag order, the mask present when named entries are.
  enum { kUserObj, kUser, kGroup, kOther, kDone } state = kUserObj;
  bool needs_mask = false;
  for (const AclEntry& e : acl) {
    if ((e.perm & ~7u) != 0) return Unexpected(EINVAL);
    switch (e.tag) {
      case kAclUserObj:
        if (state != kUserObj) return Unexpected(EINVAL);
        state = kUser;
        break;
      case kAclUser:
        if (state != kUser || e.id == kAclUndefinedId) return Unexpected(EINVAL);
        needs_mask = true;
        break;
      case kAclGroupObj:
        if (state != kUser) return Unexpected(EINVAL);
        state = kGroup;
        break;
      case kAclGroup:
        if (state != kGroup || e.id == kAclUndefinedId) return Unexpected(EINVAL);
        needs_mask = true;
        break;
      case kAclMask:
        if (state != kGroup) return Unexpected(EINVAL);
        state = kOther;
        break;
      case kAclOther:
        if (state == kOther || (state == kGroup && !needs_mask)) {
          state = kDone;
          break;
        }
        return Unexpected(EINVAL);
      default:
        return Unexpected(EINVAL);
    }
  }
  if (state != kDone) return Unexpected(EINVAL);
  return acl;
}

bool AclEquivMode(const Acl& acl, uint32_t* mode) {
  uint32_t m = 0;
  bool not_equiv = false;
  for (const AclEntry& e : acl) {
    switch (e.tag) {
      case kAclUserObj:
        m |= (e.perm & 7u) << 6;
        break;
      case kAclGroupObj:
        m |= (e.perm & 7u) << 3;
        break;
      case kAclOther:
        m |= e.perm & 7u;
        break;
      case kAclMask:
        m = (m & ~0070u) | ((e.perm & 7u) << 3);
        not_equiv = true;
        break;
      default:
        not_equiv = true;
        break;
    }
  }
  *mode = (*mode & ~0777u) | m;
  return !not_equiv;
}

bool AclCreateMasq(Acl* acl, uint32_t* mode_p) {
  uint32_t mode = *mode_p;
  AclEntry* group_obj = nullptr;
  AclEntry* mask_obj = nullptr;
  bool not_equiv = false;
  for (AclEntry& e : *acl) {
    switch (e.tag) {
      case kAclUserObj:
        e.perm &= (mode >> 6) | ~7u;
        mode &= (e.perm << 6) | ~0700u;
        break;
      case kAclUser:
      case kAclGroup:
        not_equiv = true;
        break;
      case kAclGroupObj:
        group_obj = &e;
        break;
      case kAclOther:
        e.perm &= mode | ~7u;
        mode &= e.perm | ~7u;
        break;
      case kAclMask:
        mask_obj = &e;
        not_equiv = true;
        break;
      default:
        break;
    }
  }
  if (mask_obj != nullptr) {
    mask_obj->perm &= (mode >> 3) | ~7u;
    mode &= (mask_obj->perm << 3) | ~0070u;
  } else if (group_obj != nullptr) {
    group_obj->perm &= (mode >> 3) | ~7u;
    mode &= (group_obj->perm << 3) | ~0070u;
  }
  *mode_p = (*mode_p & ~0777u) | (mode & 0777u);
  return not_equiv;
}

Result<void> CheckPermission(const Ownership& owner, const Acl* acl, int mask, const Caller& caller,
                             bool fakeroot) {
  mask &= kMayRead | kMayWrite | kMayExec;
  if (mask == 0) return {};
  int err = AclPermissionCheck(owner, acl, mask, caller);
  if (err != EACCES) {
    if (err == 0) return {};
    return Unexpected(err);
  }
  bool root = fakeroot || caller.uid == 0;
  if (!root) return Unexpected(EACCES);
  if (S_ISDIR(owner.mode)) return {};  // CAP_DAC_READ_SEARCH / CAP_DAC_OVERRIDE
  // Read/write are always overridable; exec only when some exec bit is set.
  if ((mask & kMayExec) == 0 || (owner.mode & (S_IXUSR | S_IXGRP | S_IXOTH)) != 0) return {};
  return Unexpected(EACCES);
}

}  // namespace iomapfs::ext4
