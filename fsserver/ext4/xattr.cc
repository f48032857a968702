#include "fsserver/ext4/xattr.h"

#include <ext2fs/ext2fs.h>

#include <cstring>
#include <memory>

namespace iomapfs::ext4 {
namespace {

struct HandleCloser {
  void operator()(ext2_xattr_handle* h) const { (void)ext2fs_xattrs_close(&h); }
};
using XattrHandle = std::unique_ptr<ext2_xattr_handle, HandleCloser>;

// Opens and reads all attributes of `ino`, values raw (ACLs in ext4's disk format).
Result<XattrHandle> OpenRaw(ext2_filsys fs, Ino ino) {
  ext2_xattr_handle* raw = nullptr;
  errcode_t err = ext2fs_xattrs_open(fs, static_cast<ext2_ino_t>(ino.value()), &raw);
  if (err == EXT2_ET_MISSING_EA_FEATURE) return Unexpected(ENODATA);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  XattrHandle h(raw);
  unsigned int flags = XATTR_HANDLE_FLAG_RAW;
  err = ext2fs_xattrs_flags(h.get(), &flags, nullptr);
  if (err == 0) err = ext2fs_xattrs_read(h.get());
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return h;
}

// Returns the raw value of `name`, or ENODATA.
Result<std::vector<std::byte>> GetRaw(ext2_xattr_handle* h, std::string_view name) {
  std::string key(name);
  void* value = nullptr;
  size_t len = 0;
  errcode_t err = ext2fs_xattr_get(h, key.c_str(), &value, &len);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  const auto* p = static_cast<const std::byte*>(value);
  std::vector<std::byte> out(p, p + len);
  ext2fs_free_mem(&value);
  return out;
}

int CollectName(char* name, char* /*value*/, size_t /*value_len*/, void* data) {
  auto* names = static_cast<std::vector<std::string>*>(data);
  if (IsVisibleXattrName(name)) names->emplace_back(name);
  return 0;
}

bool HasPrefix(std::string_view s, std::string_view prefix) {
  return s.size() > prefix.size() && s.substr(0, prefix.size()) == prefix;
}

}  // namespace

bool IsVisibleXattrName(std::string_view name) {
  return HasPrefix(name, "user.") || HasPrefix(name, "trusted.") || HasPrefix(name, "security.") ||
         HasPrefix(name, "gnu.") || name == kAclAccessName || name == kAclDefaultName;
}

Result<std::vector<std::byte>> ReadXattr(const ext2::Guard& g, Ino ino, std::string_view name) {
  if (!IsVisibleXattrName(name)) return Unexpected(EOPNOTSUPP);
  IOMAPFS_ASSIGN_OR_RETURN(XattrHandle h, OpenRaw(g.fs(), ino));
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<std::byte> value, GetRaw(h.get(), name));
  if (name == kAclAccessName || name == kAclDefaultName) {
    IOMAPFS_ASSIGN_OR_RETURN(Acl acl, AclFromDisk(value));
    return AclToXattr(acl);
  }
  return value;
}

Result<std::vector<std::string>> ListXattrNames(const ext2::Guard& g, Ino ino) {
  std::vector<std::string> names;
  auto h = OpenRaw(g.fs(), ino);
  if (!h && h.error() == ENODATA) return names;  // no ext_attr feature: nothing to list
  if (!h) return Unexpected(h.error());
  errcode_t err = ext2fs_xattrs_iterate(h->get(), CollectName, &names);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return names;
}

Result<std::optional<Acl>> ReadAccessAcl(const ext2::Guard& g, Ino ino) {
  return ReadAcl(g, ino, kAclAccessName);
}

Result<void> WriteXattrRaw(const ext2::Guard& g, Ino ino, std::string_view name,
                           const std::vector<std::byte>* value) {
  auto h = OpenRaw(g.fs(), ino);
  if (!h) return Unexpected(h.error() == ENODATA ? EOPNOTSUPP : h.error());
  std::string key(name);
  errcode_t err = value != nullptr
                      ? ext2fs_xattr_set(h->get(), key.c_str(), value->data(), value->size())
                      : ext2fs_xattr_remove(h->get(), key.c_str());
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return {};
}

Result<bool> HasXattr(const ext2::Guard& g, Ino ino, std::string_view name) {
  auto h = OpenRaw(g.fs(), ino);
  if (!h && h.error() == ENODATA) return false;
  if (!h) return Unexpected(h.error());
  auto value = GetRaw(h->get(), name);
  if (!value && value.error() == ENODATA) return false;
  if (!value) return Unexpected(value.error());
  return true;
}

Result<std::optional<Acl>> ReadAcl(const ext2::Guard& g, Ino ino, std::string_view name) {
  auto h = OpenRaw(g.fs(), ino);
  if (!h && h.error() == ENODATA) return std::optional<Acl>();
  if (!h) return Unexpected(h.error());
  auto value = GetRaw(h->get(), name);
  if (!value && value.error() == ENODATA) return std::optional<Acl>();
  if (!value) return Unexpected(value.error());
  IOMAPFS_ASSIGN_OR_RETURN(Acl acl, AclFromDisk(*value));
  return std::optional<Acl>(std::move(acl));
}

}  // namespace iomapfs::ext4
