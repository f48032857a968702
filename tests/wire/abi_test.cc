// ABI layout checks beyond the static_asserts in fuse_abi.h: field offsets from the uapi header
// and the iomap spec tables, and constant values. (The size static_asserts are checked simply by
// this file compiling.)

#include <gtest/gtest.h>

#include <cstddef>

#include "fsserver/wire/fuse_abi.h"

namespace iomapfs::abi {
namespace {

// Offsets given in the specs ("@n").
static_assert(offsetof(fuse_in_header, opcode) == 4);
static_assert(offsetof(fuse_in_header, unique) == 8);
static_assert(offsetof(fuse_in_header, nodeid) == 16);
static_assert(offsetof(fuse_in_header, uid) == 24);
static_assert(offsetof(fuse_in_header, pid) == 32);
static_assert(offsetof(fuse_in_header, total_extlen) == 36);
static_assert(offsetof(fuse_out_header, error) == 4);
static_assert(offsetof(fuse_out_header, unique) == 8);
static_assert(offsetof(fuse_init_in, flags2) == 16);
static_assert(offsetof(fuse_init_out, max_write) == 20);
static_assert(offsetof(fuse_init_out, max_pages) == 28);
static_assert(offsetof(fuse_init_out, max_stack_depth) == 36);
static_assert(offsetof(fuse_entry_out, attr) == 40);
static_assert(offsetof(fuse_attr_out, attr) == 16);
static_assert(offsetof(fuse_open_out, backing_id) == 12);
static_assert(offsetof(fuse_statx_in, sx_flags) == 16);
static_assert(offsetof(fuse_statx_out, stat) == 32);
static_assert(offsetof(fuse_statx, mode) == 28);
static_assert(offsetof(fuse_statx, btime) == 80);
static_assert(offsetof(fuse_statx, mtime) == 112);
static_assert(offsetof(fuse_statx, dev_minor) == 140);
static_assert(offsetof(fuse_statx, mnt_id) == 144);
static_assert(offsetof(fuse_statx, atomic_write_unit_max) == 172);
static_assert(offsetof(fuse_statx, dio_read_offset_align) == 180);
static_assert(offsetof(fuse_statx, __spare2) == 188);
static_assert(offsetof(fuse_copy_file_range_in, nodeid_out) == 16);
static_assert(offsetof(fuse_copy_file_range_in, flags) == 48);
static_assert(offsetof(fuse_direntplus, dirent) == 128);
static_assert(offsetof(fuse_uring_req_header, op_in) == 128);
static_assert(offsetof(fuse_uring_req_header, ring_ent_in_out) == 256);
static_assert(offsetof(fuse_uring_ent_in_out, payload_sz) == 16);
static_assert(offsetof(fuse_uring_cmd_req, qid) == 16);
static_assert(offsetof(fuse_iomap_io, type) == 24);
static_assert(offsetof(fuse_iomap_io, flags) == 26);
static_assert(offsetof(fuse_iomap_io, dev) == 28);
static_assert(offsetof(fuse_iomap_begin_in, attr_ino) == 8);
static_assert(offsetof(fuse_iomap_begin_in, count) == 24);
static_assert(offsetof(fuse_iomap_begin_out, write) == 32);
static_assert(offsetof(fuse_iomap_end_in, written) == 32);
static_assert(offsetof(fuse_iomap_end_in, map) == 40);
static_assert(offsetof(fuse_iomap_ioend_in, error) == 4);
static_assert(offsetof(fuse_iomap_ioend_in, new_addr) == 24);
static_assert(offsetof(fuse_iomap_ioend_in, dev) == 40);
static_assert(offsetof(fuse_iomap_config_in, cache_maxbytes) == 16);
static_assert(offsetof(fuse_iomap_config_in, padding) == 24);
static_assert(offsetof(fuse_iomap_config_out, s_uuid) == 40);
static_assert(offsetof(fuse_iomap_config_out, s_uuid_len) == 56);
static_assert(offsetof(fuse_iomap_config_out, s_pad) == 57);
static_assert(offsetof(fuse_iomap_config_out, s_max_links) == 64);
static_assert(offsetof(fuse_iomap_config_out, s_time_max) == 80);
static_assert(offsetof(fuse_iomap_config_out, s_maxbytes) == 88);
static_assert(offsetof(fuse_iomap_upsert_mappings_out, read) == 16);
static_assert(offsetof(fuse_iomap_upsert_mappings_out, write) == 48);
static_assert(offsetof(fuse_iomap_inval_mappings_out, write) == 32);
static_assert(offsetof(fuse_iomap_dev_inval_out, range) == 8);

TEST(AbiTest, InitFlagsMatchSpecTable) {
  // spec fuse-mainline §2.2 ("flags2 value" column) and iomap §1.3.
  EXPECT_EQ(FUSE_CREATE_SUPP_GROUP >> 32, 0x004u);
  EXPECT_EQ(FUSE_DIRECT_IO_ALLOW_MMAP >> 32, 0x010u);
  EXPECT_EQ(FUSE_PASSTHROUGH >> 32, 0x020u);
  EXPECT_EQ(FUSE_NO_EXPORT_SUPPORT >> 32, 0x040u);
  EXPECT_EQ(FUSE_HAS_RESEND >> 32, 0x080u);
  EXPECT_EQ(FUSE_ALLOW_IDMAP >> 32, 0x100u);
  EXPECT_EQ(FUSE_OVER_IO_URING >> 32, 0x200u);
  EXPECT_EQ(FUSE_REQUEST_TIMEOUT >> 32, 0x400u);
  EXPECT_EQ(FUSE_IOMAP >> 32, 0x800u);
  EXPECT_EQ(FUSE_INIT_EXT, 0x40000000u);
  EXPECT_EQ(FUSE_SETXATTR_EXT, 0x20000000u);
  EXPECT_EQ(FUSE_UNIQUE_RESEND, 0x8000000000000000u);
}

TEST(AbiTest, OpcodesAndNotifyCodes) {
  EXPECT_EQ(FUSE_STATX, 52u);
  EXPECT_EQ(FUSE_COPY_FILE_RANGE_64, 53u);
  EXPECT_EQ(FUSE_FREEZE_FS, 4089u);
  EXPECT_EQ(FUSE_IOMAP_END, 4095u);
  EXPECT_EQ(FUSE_NOTIFY_PRUNE, 9);
  EXPECT_EQ(FUSE_NOTIFY_IOMAP_INVAL_MAPPINGS, 101);
  EXPECT_EQ(FOPEN_PASSTHROUGH, 0x80u);
  EXPECT_EQ(FUSE_ATTR_IOMAP, 0x08u);
  EXPECT_EQ(FATTR_KILL_SUIDGID, 0x800u);
}

TEST(AbiTest, DirentSizes) {
  EXPECT_EQ(FUSE_DIRENT_SIZE(1), 32u);
  EXPECT_EQ(FUSE_DIRENT_SIZE(8), 32u);
  EXPECT_EQ(FUSE_DIRENT_SIZE(9), 40u);
  EXPECT_EQ(FUSE_DIRENTPLUS_SIZE(1), 160u);
}

}  // namespace
}  // namespace iomapfs::abi
