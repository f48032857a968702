#include "fsserver/wire/reply.h"

#include <algorithm>
#include <cerrno>

#include "fsserver/wire/node_id.h"

namespace iomapfs::wire {
namespace {

using namespace abi;  // NOLINT(build/namespaces): kernel names, local to this file.

// The kernel accepts reply errors in -511..0 (fs/fuse/dev.c); 512+ are kernel-internal codes.
constexpr int kMaxReplyErrno = 511;

void AppendRaw(std::vector<std::byte>& out, std::span<const std::byte> bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}

std::span<const std::byte> StringBytes(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

// header + body struct + optional trailing bytes (+ NUL).
template <class T>
std::vector<std::byte> Notify(fuse_notify_code code, const T& body,
                              std::span<const std::byte> tail = {}, bool nul = false) {
  size_t body_len = sizeof(T) + tail.size() + (nul ? 1 : 0);
  std::vector<std::byte> out;
  out.reserve(sizeof(fuse_out_header) + body_len);
  AppendRaw(out, BytesOf(NotifyHeader(code, body_len)));
  AppendRaw(out, BytesOf(body));
  AppendRaw(out, tail);
  if (nul) out.push_back(std::byte{0});
  return out;
}

uint32_t DirentType(uint32_t mode) { return (mode & 0170000) >> 12; }

}  // namespace

fuse_out_header ReplyHeader(Unique unique, int error, size_t body_len) {
  fuse_out_header h{};
  h.unique = unique.value();
  if (error == 0) {
    h.len = static_cast<uint32_t>(sizeof(fuse_out_header) + body_len);
    h.error = 0;
  } else {
    if (error < 1 || error > kMaxReplyErrno) error = EIO;
    h.len = sizeof(fuse_out_header);
    h.error = -error;
  }
  return h;
}

fuse_out_header NotifyHeader(fuse_notify_code code, size_t body_len) {
  fuse_out_header h{};
  h.len = static_cast<uint32_t>(sizeof(fuse_out_header) + body_len);
  h.error = code;
  h.unique = 0;
  return h;
}

std::vector<std::byte> EncodeReply(Unique unique, int error, std::span<const std::byte> body) {
  fuse_out_header h = ReplyHeader(unique, error, body.size());
  std::vector<std::byte> out;
  out.reserve(h.len);
  AppendRaw(out, BytesOf(h));
  if (h.error == 0) AppendRaw(out, body);
  return out;
}

bool BodyWriter::AppendBytes(std::span<const std::byte> bytes) {
  if (bytes.size() > storage_.size() - size_) return false;
  if (!bytes.empty()) std::memcpy(storage_.data() + size_, bytes.data(), bytes.size());
  size_ += bytes.size();
  return true;
}

bool BodyWriter::AppendCString(std::string_view s) {
  if (s.size() >= storage_.size() - size_) return false;
  if (!AppendBytes(StringBytes(s))) return false;
  return Append(std::byte{0});
}

fuse_entry_out MakeEntryOut(Ino ino, uint64_t generation, const fuse_attr& attr,
                            CacheTimeout entry_valid, CacheTimeout attr_valid) {
  fuse_entry_out e{};
  e.nodeid = NodeIdFromIno(ino);
  e.generation = generation;
  e.entry_valid = entry_valid.sec;
  e.entry_valid_nsec = entry_valid.nsec;
  e.attr_valid = attr_valid.sec;
  e.attr_valid_nsec = attr_valid.nsec;
  e.attr = attr;
  return e;
}

fuse_entry_out MakeNegativeEntryOut(CacheTimeout entry_valid) {
  fuse_entry_out e{};
  e.entry_valid = entry_valid.sec;
  e.entry_valid_nsec = entry_valid.nsec;
  return e;
}

fuse_attr_out MakeAttrOut(const fuse_attr& attr, CacheTimeout attr_valid) {
  fuse_attr_out o{};
  o.attr_valid = attr_valid.sec;
  o.attr_valid_nsec = attr_valid.nsec;
  o.attr = attr;
  return o;
}

fuse_open_out MakeOpenOut(FileHandle fh, uint32_t open_flags, int32_t backing_id) {
  fuse_open_out o{};
  o.fh = fh.value();
  o.open_flags = open_flags;
  o.backing_id = backing_id;
  return o;
}

fuse_write_out MakeWriteOut(uint32_t size) {
  fuse_write_out o{};
  o.size = size;
  return o;
}

fuse_statfs_out MakeStatfsOut(const fuse_kstatfs& st) {
  fuse_statfs_out o{};
  o.st = st;
  return o;
}

fuse_getxattr_out MakeGetxattrOut(uint32_t size) {
  fuse_getxattr_out o{};
  o.size = size;
  return o;
}

fuse_lseek_out MakeLseekOut(uint64_t offset) { return fuse_lseek_out{offset}; }

fuse_bmap_out MakeBmapOut(uint64_t block) { return fuse_bmap_out{block}; }

fuse_statx_out MakeStatxOut(const fuse_statx& stat, CacheTimeout attr_valid) {
  fuse_statx_out o{};
  o.attr_valid = attr_valid.sec;
  o.attr_valid_nsec = attr_valid.nsec;
  o.stat = stat;
  return o;
}

fuse_copy_file_range_out MakeCopyFileRangeOut(uint64_t bytes_copied) {
  return fuse_copy_file_range_out{bytes_copied};
}

fuse_init_out MakeInitOut(const InitOutParams& p) {
  fuse_init_out o{};
  o.major = p.major;
  o.minor = p.minor;
  o.max_readahead = p.max_readahead;
  uint64_t flags = p.flags;
  if ((flags >> 32) != 0) flags |= FUSE_INIT_EXT;
  o.flags = static_cast<uint32_t>(flags);
  o.flags2 = static_cast<uint32_t>(flags >> 32);
  o.max_background = p.max_background;
  o.congestion_threshold = p.congestion_threshold;
  o.max_write = p.max_write;
  o.time_gran = p.time_gran;
  o.max_pages = p.max_pages;
  o.map_alignment = p.map_alignment;
  o.max_stack_depth = p.max_stack_depth;
  o.request_timeout = p.request_timeout;
  return o;
}

fuse_iomap_begin_out MakeIomapBeginOut(const fuse_iomap_io& read, const fuse_iomap_io& write) {
  return fuse_iomap_begin_out{read, write};
}

fuse_iomap_ioend_out MakeIomapIoendOut(uint64_t newsize) { return fuse_iomap_ioend_out{newsize}; }

fuse_iomap_config_out MakeIomapConfigOut(const IomapConfig& c) {
  fuse_iomap_config_out o{};
  o.flags = c.flags;
  size_t id_len = std::min(c.s_id.size(), sizeof(o.s_id) - 1);
  std::memcpy(o.s_id, c.s_id.data(), id_len);
  size_t uuid_len = std::min(c.uuid.size(), sizeof(o.s_uuid));
  if (uuid_len != 0) std::memcpy(o.s_uuid, c.uuid.data(), uuid_len);
  o.s_uuid_len = static_cast<uint8_t>(uuid_len);
  o.s_blocksize = c.blocksize;
  o.s_max_links = c.max_links;
  o.s_time_gran = c.time_gran;
  o.s_time_min = c.time_min;
  o.s_time_max = c.time_max;
  o.s_maxbytes = c.maxbytes;
  o.cache_maxbytes = c.cache_maxbytes;
  return o;
}

bool DirentBuffer::ValidName(std::string_view name) {
  return !name.empty() && name.size() <= kMaxNameLen &&
         name.find_first_of(std::string_view("/\0", 2)) == std::string_view::npos;
}

DirentBuffer::Status DirentBuffer::Add(Ino ino, uint64_t off, uint32_t type,
                                       std::string_view name) {
  if (!ValidName(name)) return Status::kInvalidName;
  size_t rec = FUSE_DIRENT_SIZE(name.size());
  if (rec > storage_.size() - size_) return Status::kFull;
  fuse_dirent d{};
  d.ino = ino.value();
  d.off = off;
  d.namelen = static_cast<uint32_t>(name.size());
  d.type = type;
  std::byte* p = storage_.data() + size_;
  std::memset(p, 0, rec);
  std::memcpy(p, &d, sizeof(d));
  std::memcpy(p + sizeof(d), name.data(), name.size());
  size_ += rec;
  return Status::kAdded;
}

DirentBuffer::Status DirentBuffer::AddPlus(const fuse_entry_out& entry, uint64_t off,
                                           std::string_view name) {
  if (!ValidName(name)) return Status::kInvalidName;
  size_t rec = FUSE_DIRENTPLUS_SIZE(name.size());
  if (rec > storage_.size() - size_) return Status::kFull;
  fuse_direntplus d{};
  d.entry_out = entry;
  d.dirent.ino = entry.attr.ino;
  d.dirent.off = off;
  d.dirent.namelen = static_cast<uint32_t>(name.size());
  d.dirent.type = DirentType(entry.attr.mode);
  std::byte* p = storage_.data() + size_;
  std::memset(p, 0, rec);
  std::memcpy(p, &d, sizeof(d));
  std::memcpy(p + sizeof(d), name.data(), name.size());
  size_ += rec;
  return Status::kAdded;
}

std::vector<std::byte> EncodeNotifyInvalInode(Ino ino, int64_t off, int64_t len) {
  fuse_notify_inval_inode_out o{};
  o.ino = NodeIdFromIno(ino);
  o.off = off;
  o.len = len;
  return Notify(FUSE_NOTIFY_INVAL_INODE, o);
}

std::vector<std::byte> EncodeNotifyInvalEntry(Ino parent, std::string_view name, uint32_t flags) {
  fuse_notify_inval_entry_out o{};
  o.parent = NodeIdFromIno(parent);
  o.namelen = static_cast<uint32_t>(name.size());
  o.flags = flags;
  return Notify(FUSE_NOTIFY_INVAL_ENTRY, o, StringBytes(name), /*nul=*/true);
}

std::vector<std::byte> EncodeNotifyDelete(Ino parent, Ino child, std::string_view name) {
  fuse_notify_delete_out o{};
  o.parent = NodeIdFromIno(parent);
  o.child = NodeIdFromIno(child);
  o.namelen = static_cast<uint32_t>(name.size());
  return Notify(FUSE_NOTIFY_DELETE, o, StringBytes(name), /*nul=*/true);
}

std::vector<std::byte> EncodeNotifyStore(Ino ino, uint64_t offset,
                                         std::span<const std::byte> data) {
  fuse_notify_store_out o{};
  o.nodeid = NodeIdFromIno(ino);
  o.offset = offset;
  o.size = static_cast<uint32_t>(data.size());
  return Notify(FUSE_NOTIFY_STORE, o, data);
}

std::vector<std::byte> EncodeNotifyRetrieve(uint64_t notify_unique, Ino ino, uint64_t offset,
                                            uint32_t size) {
  fuse_notify_retrieve_out o{};
  o.notify_unique = notify_unique;
  o.nodeid = NodeIdFromIno(ino);
  o.offset = offset;
  o.size = size;
  return Notify(FUSE_NOTIFY_RETRIEVE, o);
}

std::vector<std::byte> EncodeNotifyPollWakeup(uint64_t kh) {
  return Notify(FUSE_NOTIFY_POLL, fuse_notify_poll_wakeup_out{kh});
}

std::vector<std::byte> EncodeNotifyResend() {
  std::vector<std::byte> out;
  AppendRaw(out, BytesOf(NotifyHeader(FUSE_NOTIFY_RESEND, 0)));
  return out;
}

std::vector<std::byte> EncodeNotifyIncEpoch() {
  std::vector<std::byte> out;
  AppendRaw(out, BytesOf(NotifyHeader(FUSE_NOTIFY_INC_EPOCH, 0)));
  return out;
}

std::vector<std::byte> EncodeNotifyPrune(std::span<const Ino> inos) {
  fuse_notify_prune_out o{};
  o.count = static_cast<uint32_t>(inos.size());
  std::vector<std::byte> ids;
  ids.reserve(inos.size() * sizeof(uint64_t));
  for (Ino ino : inos) AppendRaw(ids, BytesOf(NodeIdFromIno(ino)));
  return Notify(FUSE_NOTIFY_PRUNE, o, ids);
}

std::vector<std::byte> EncodeNotifyIomapUpsert(Ino ino, const fuse_iomap_io& read,
                                               const fuse_iomap_io& write) {
  fuse_iomap_upsert_mappings_out o{};
  o.nodeid = NodeIdFromIno(ino);
  o.attr_ino = ino.value();
  o.read = read;
  o.write = write;
  return Notify(FUSE_NOTIFY_IOMAP_UPSERT_MAPPINGS, o);
}

std::vector<std::byte> EncodeNotifyIomapInval(Ino ino, fuse_range read, fuse_range write) {
  fuse_iomap_inval_mappings_out o{};
  o.nodeid = NodeIdFromIno(ino);
  o.attr_ino = ino.value();
  o.read = read;
  o.write = write;
  return Notify(FUSE_NOTIFY_IOMAP_INVAL_MAPPINGS, o);
}

std::vector<std::byte> EncodeNotifyIomapDevInval(uint32_t dev, fuse_range range) {
  fuse_iomap_dev_inval_out o{};
  o.dev = dev;
  o.range = range;
  return Notify(FUSE_NOTIFY_IOMAP_DEV_INVAL, o);
}

}  // namespace iomapfs::wire
