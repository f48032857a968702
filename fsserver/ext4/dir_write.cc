#include "fsserver/ext4/dir_write.h"

#include <cstring>
#include <string>
#include <vector>

#include "fsserver/ext4/inode_write.h"

namespace iomapfs::ext4 {
namespace {

constexpr size_t kDxRootInfoOffset = 24;     // after the "." (12) and ".." (12) fake dirents
constexpr size_t kDxRootEntriesOffset = 32;  // after dx_root_info (8 bytes)

Result<blk64_t> MapDirBlock(ext2_filsys fs, Ino dir, InodeBuf& inode, uint64_t lblk) {
  blk64_t pblk = 0;
  errcode_t err = ext2fs_bmap2(fs, static_cast<ext2_ino_t>(dir.value()), inode.base(), nullptr, 0,
                               lblk, nullptr, &pblk);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  if (pblk == 0) return Unexpected(kEfsCorrupted);  // a hole in a directory
  return pblk;
}

Result<void> ReadBlock(ext2_filsys fs, Ino dir, blk64_t pblk, std::vector<char>& buf) {
  buf.resize(fs->blocksize);
  errcode_t err =
      ext2fs_read_dir_block4(fs, pblk, buf.data(), 0, static_cast<ext2_ino_t>(dir.value()));
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return {};
}

Result<void> WriteBlock(ext2_filsys fs, Ino dir, blk64_t pblk, std::vector<char>& buf) {
  errcode_t err =
      ext2fs_write_dir_block4(fs, pblk, buf.data(), 0, static_cast<ext2_ino_t>(dir.value()));
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return {};
}

unsigned int RecLen(ext2_filsys fs, ext2_dir_entry* de) {
  unsigned int len = 0;
  if (ext2fs_get_rec_len(fs, de, &len) != 0) return 0;
  return len;
}

// Converts an inline-data directory to a block directory (we never write inline data).
Result<void> ExpandInline(const ext2::Guard& g, Ino dir, bool* expanded) {
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadInode(g, dir));
  *expanded = false;
  if ((inode.flags() & kFlagInlineData) == 0) return {};
  // ext2fs_expand_dir() of an inline-data directory moves it to a block
  // (ext2fs_inline_data_expand, which libext2fs does not export).
  errcode_t err = ext2fs_expand_dir(g.fs(), static_cast<ext2_ino_t>(dir.value()));
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  *expanded = true;
  return {};
}

// make_indexed_dir(): the single full block of a linear directory becomes the htree root
// ("." and ".." then dx_root_info and one index entry) and its entries move to a new block 1.
// The next ext2fs_link splits that leaf as needed.
Result<void> MakeIndexed(const ext2::Guard& g, Ino dir) {
  ext2_filsys fs = g.fs();
  const uint32_t bs = fs->blocksize;
  const bool csum = ext2fs_has_feature_metadata_csum(fs->super);
  const unsigned int tail = csum ? sizeof(ext2_dir_entry_tail) : 0;
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadInode(g, dir));
  IOMAPFS_ASSIGN_OR_RETURN(blk64_t pblk0, MapDirBlock(fs, dir, inode, 0));
  std::vector<char> old0;
  IOMAPFS_TRY(ReadBlock(fs, dir, pblk0, old0));

  // Collect the live entries after "." and "..".
  struct Raw {
    size_t off;
    unsigned int len;  // header + name
  };
  std::vector<Raw> live;
  uint32_t parent = 0;
  unsigned int off = 0;
  for (int index = 0; off + 8 <= bs - tail; ++index) {
    auto* de = reinterpret_cast<ext2_dir_entry*>(old0.data() + off);
    unsigned int rec = RecLen(fs, de);
    if (rec < 8 || off + rec > bs) return Unexpected(kEfsCorrupted);
    if (index == 1) parent = de->inode;
    if (index >= 2 && de->inode != 0) {
      live.push_back(Raw{off, 8u + ext2fs_dirent_name_len(de)});
    }
    off += rec;
  }
  if (parent == 0) return Unexpected(kEfsCorrupted);

  errcode_t err = ext2fs_expand_dir(fs, static_cast<ext2_ino_t>(dir.value()));
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  IOMAPFS_ASSIGN_OR_RETURN(inode, ReadInode(g, dir));
  IOMAPFS_ASSIGN_OR_RETURN(blk64_t pblk1, MapDirBlock(fs, dir, inode, 1));

  std::vector<char> leaf(bs, 0);
  unsigned int pos = 0, last = 0;
  for (const Raw& r : live) {
    unsigned int rec = (r.len + 3) & ~3u;
    std::memcpy(leaf.data() + pos, old0.data() + r.off, r.len);
    err = ext2fs_set_rec_len(fs, rec, reinterpret_cast<ext2_dir_entry*>(leaf.data() + pos));
    if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
    last = pos;
    pos += rec;
  }
  err = ext2fs_set_rec_len(fs, bs - tail - last, reinterpret_cast<ext2_dir_entry*>(&leaf[last]));
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  if (csum) {
    ext2fs_initialize_dirent_tail(fs, EXT2_DIRENT_TAIL(leaf.data(), bs));
  }
  IOMAPFS_TRY(WriteBlock(fs, dir, pblk1, leaf));

  std::vector<char> root(bs, 0);
  const bool ft = ext2fs_has_feature_filetype(fs->super);
  auto put = [&](size_t at, uint32_t ino, const char* name, unsigned int rec) {
    auto* de = reinterpret_cast<ext2_dir_entry*>(root.data() + at);
    de->inode = ino;
    (void)ext2fs_set_rec_len(fs, rec, de);
    ext2fs_dirent_set_name_len(de, static_cast<int>(std::strlen(name)));
    ext2fs_dirent_set_file_type(de, ft ? EXT2_FT_DIR : 0);
    std::memcpy(de->name, name, std::strlen(name));
  };
  put(0, static_cast<uint32_t>(dir.value()), ".", 12);
  put(12, parent, "..", bs - 12);
  auto* info = reinterpret_cast<ext2_dx_root_info*>(root.data() + kDxRootInfoOffset);
  info->reserved_zero = 0;
  info->hash_version = fs->super->s_def_hash_version;
  info->info_length = sizeof(ext2_dx_root_info);
  info->indirect_levels = 0;
  info->unused_flags = 0;
  auto* limit = reinterpret_cast<ext2_dx_countlimit*>(root.data() + kDxRootEntriesOffset);
  uint32_t max =
      (bs - kDxRootEntriesOffset - (csum ? sizeof(ext2_dx_tail) : 0)) / sizeof(ext2_dx_entry);
  limit->limit = ext2fs_cpu_to_le16(static_cast<uint16_t>(max));
  limit->count = ext2fs_cpu_to_le16(1);
  auto* entries = reinterpret_cast<ext2_dx_entry*>(limit);
  entries[0].block = ext2fs_cpu_to_le32(1);
  IOMAPFS_TRY(WriteBlock(fs, dir, pblk0, root));

  IOMAPFS_ASSIGN_OR_RETURN(inode, ReadInode(g, dir));
  inode.raw.i_flags |= kFlagIndex;
  return WriteInode(g, dir, inode);
}

bool Matches(ext2_dir_entry* de, std::string_view name) {
  return de->inode != 0 && static_cast<size_t>(ext2fs_dirent_name_len(de)) == name.size() &&
         std::memcmp(de->name, name.data(), name.size()) == 0;
}

// Edits the entry `name` in logical block `lblk`: removes it (ino == 0) or retargets it.
// Returns false if the block does not hold it.
Result<bool> EditInBlock(const ext2::Guard& g, Ino dir, int64_t lblk, std::string_view name,
                         uint32_t ino, uint8_t file_type) {
  ext2_filsys fs = g.fs();
  const uint32_t bs = fs->blocksize;
  IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadInode(g, dir));
  if (static_cast<uint64_t>(lblk) >= InodeSize(fs, inode) / bs) return false;
  IOMAPFS_ASSIGN_OR_RETURN(blk64_t pblk, MapDirBlock(fs, dir, inode, lblk));
  std::vector<char> buf;
  IOMAPFS_TRY(ReadBlock(fs, dir, pblk, buf));
  ext2_dir_entry* prev = nullptr;
  for (unsigned int off = 0; off + 8 <= bs;) {
    auto* de = reinterpret_cast<ext2_dir_entry*>(buf.data() + off);
    unsigned int rec = RecLen(fs, de);
    if (rec < 8 || off + rec > bs) return Unexpected(kEfsCorrupted);
    if (Matches(de, name)) {
      if (ino != 0) {
        de->inode = ino;
        if (ext2fs_has_feature_filetype(fs->super)) ext2fs_dirent_set_file_type(de, file_type);
      } else if (prev != nullptr) {
        // ext4_generic_delete_entry(): the previous entry absorbs this one.
        errcode_t err = ext2fs_set_rec_len(fs, RecLen(fs, prev) + rec, prev);
        if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
      } else {
        de->inode = 0;
      }
      IOMAPFS_TRY(WriteBlock(fs, dir, pblk, buf));
      return true;
    }
    prev = de;
    off += rec;
  }
  return false;
}

struct RetargetState {
  std::string_view name;
  uint32_t ino = 0;
  uint8_t file_type = 0;
  bool filetype_feature = false;
  bool done = false;
};

int RetargetProc(ext2_ino_t /*dir*/, int /*entry*/, ext2_dir_entry* de, int /*offset*/,
                 int /*blocksize*/, char* /*buf*/, void* priv) {
  auto* st = static_cast<RetargetState*>(priv);
  if (!Matches(de, st->name)) return 0;
  de->inode = st->ino;
  if (st->filetype_feature) ext2fs_dirent_set_file_type(de, st->file_type);
  st->done = true;
  return DIRENT_CHANGED | DIRENT_ABORT;
}

}  // namespace

Result<DirHit> AddEntry(const ext2::Guard& g, Ino dir, std::string_view name, Ino ino,
                        uint8_t file_type) {
  ext2_filsys fs = g.fs();
  IOMAPFS_TRY(EnsureBitmaps(g));
  bool expanded = false;
  IOMAPFS_TRY(ExpandInline(g, dir, &expanded));
  const std::string cname(name);
  for (int attempt = 0; attempt < 4; ++attempt) {
    errcode_t err = ext2fs_link(fs, static_cast<ext2_ino_t>(dir.value()), cname.c_str(),
                                static_cast<ext2_ino_t>(ino.value()), file_type);
    if (err == 0) return DirHit{ino, file_type, -1};
    if (err != EXT2_ET_DIR_NO_SPACE) return Unexpected(ext2::ErrnoFromErrcode(err));
    IOMAPFS_ASSIGN_OR_RETURN(InodeBuf inode, ReadInode(g, dir));
    if (IsDx(fs, inode)) return Unexpected(ENOSPC);  // the index is at its depth limit
    if (ext2fs_has_feature_dir_index(fs->super) && InodeSize(fs, inode) == fs->blocksize) {
      IOMAPFS_TRY(MakeIndexed(g, dir));
    } else {
      err = ext2fs_expand_dir(fs, static_cast<ext2_ino_t>(dir.value()));
      if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
    }
  }
  return Unexpected(ENOSPC);
}

Result<void> RemoveEntry(const ext2::Guard& g, Ino dir, std::string_view name, const DirHit& hit) {
  bool expanded = false;
  IOMAPFS_TRY(ExpandInline(g, dir, &expanded));
  if (hit.lblk >= 0 && !expanded) {
    IOMAPFS_ASSIGN_OR_RETURN(bool done, EditInBlock(g, dir, hit.lblk, name, 0, 0));
    if (done) return {};
  }
  const std::string cname(name);
  errcode_t err = ext2fs_unlink(g.fs(), static_cast<ext2_ino_t>(dir.value()), cname.c_str(),
                                static_cast<ext2_ino_t>(hit.ino.value()), 0);
  if (err == EXT2_ET_DIR_NO_SPACE) return Unexpected(ENOENT);  // "not found" in ext2fs_unlink
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  return {};
}

Result<void> RetargetEntry(const ext2::Guard& g, Ino dir, std::string_view name, const DirHit& hit,
                           Ino ino, uint8_t file_type) {
  bool expanded = false;
  IOMAPFS_TRY(ExpandInline(g, dir, &expanded));
  auto target = static_cast<uint32_t>(ino.value());
  if (hit.lblk >= 0 && !expanded) {
    IOMAPFS_ASSIGN_OR_RETURN(bool done, EditInBlock(g, dir, hit.lblk, name, target, file_type));
    if (done) return {};
  }
  RetargetState st;
  st.name = name;
  st.ino = target;
  st.file_type = file_type;
  st.filetype_feature = ext2fs_has_feature_filetype(g->super);
  errcode_t err = ext2fs_dir_iterate2(g.fs(), static_cast<ext2_ino_t>(dir.value()), 0, nullptr,
                                      RetargetProc, &st);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  if (!st.done) return Unexpected(ENOENT);
  return {};
}

Result<void> InitDirBlock(const ext2::Guard& g, Ino dir, Ino parent, InodeBuf& inode) {
  ext2_filsys fs = g.fs();
  auto n = static_cast<ext2_ino_t>(dir.value());
  blk64_t pblk = 0;
  errcode_t err = ext2fs_bmap2(fs, n, inode.base(), nullptr, BMAP_ALLOC, 0, nullptr, &pblk);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  char* block = nullptr;
  err = ext2fs_new_dir_block(fs, n, static_cast<ext2_ino_t>(parent.value()), &block);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  err = ext2fs_write_dir_block4(fs, pblk, block, 0, n);
  ext2fs_free_mem(&block);
  if (err != 0) return Unexpected(ext2::ErrnoFromErrcode(err));
  // bmap2 wrote the inode with the new mapping and i_blocks; re-read before changing i_size.
  IOMAPFS_ASSIGN_OR_RETURN(inode, ReadInode(g, dir));
  inode.raw.i_size = fs->blocksize;
  inode.raw.i_size_high = 0;
  return WriteInode(g, dir, inode);
}

Result<bool> IsEmptyDir(const ext2::Guard& g, Ino dir, const InodeBuf& inode) {
  IOMAPFS_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, ListDirectory(g, dir, inode));
  for (const DirEntry& e : entries) {
    if (e.name != "." && e.name != "..") return false;
  }
  return true;
}

}  // namespace iomapfs::ext4
