#include "mkfs/options.h"

#include <ext2fs/ext2fs.h>
#include <gtest/gtest.h>

namespace iomapfs::mkfs {
namespace {

TEST(ParseSize, Suffixes) {
  EXPECT_EQ(*ParseSize("4k", 1024), 4096u);
  EXPECT_EQ(*ParseSize("3M", 1024), 3u << 20);
  EXPECT_EQ(*ParseSize("2g", 1024), 2ULL << 30);
  EXPECT_EQ(*ParseSize("1T", 1024), 1ULL << 40);
  EXPECT_EQ(*ParseSize("8s", 1024), 4096u);
  // A bare number counts units (mke2fs: 1 KiB, or -b blocks).
  EXPECT_EQ(*ParseSize("100", 1024), 102400u);
  EXPECT_EQ(*ParseSize("100", 4096), 409600u);
}

TEST(ParseSize, Errors) {
  EXPECT_EQ(ParseSize("", 1).error(), EINVAL);
  EXPECT_EQ(ParseSize("0", 1).error(), EINVAL);
  EXPECT_EQ(ParseSize("12x", 1).error(), EINVAL);
  EXPECT_EQ(ParseSize("M", 1).error(), EINVAL);
  EXPECT_EQ(ParseSize("-5M", 1).error(), EINVAL);
  EXPECT_EQ(ParseSize("99999999999999999T", 1).error(), ERANGE);
}

TEST(ParseUuid, RoundTrip) {
  auto u = ParseUuid("01234567-89ab-cdef-0123-456789ABCDEF");
  ASSERT_TRUE(u);
  EXPECT_EQ((*u)[0], 0x01);
  EXPECT_EQ((*u)[15], 0xef);
  EXPECT_FALSE(ParseUuid("01234567-89ab-cdef-0123-456789abcde"));
  EXPECT_FALSE(ParseUuid("0123456789ab-cdef-0123-456789abcdef0"));
  EXPECT_FALSE(ParseUuid("g1234567-89ab-cdef-0123-456789abcdef"));
}

Result<MkfsOptions> Parse(std::vector<std::string> args, std::string* why,
                          const char* sde = nullptr) {
  return ParseArgs(args, sde, why);
}

TEST(ParseArgs, AllOptions) {
  std::string why;
  auto o = Parse({"-b",
                  "2048",
                  "-N",
                  "1000",
                  "-i",
                  "8192",
                  "-I",
                  "512",
                  "-L",
                  "lbl",
                  "-U",
                  "01234567-89ab-cdef-0123-456789abcdef",
                  "-O",
                  "inline_data",
                  "-O",
                  "^64bit",
                  "-m",
                  "2.5",
                  "-J",
                  "size=16",
                  "-E",
                  "root_owner=5:6,hash_seed="
                  "11111111-2222-3333-4444-555555555555",
                  "-qFF",
                  "-d",
                  "/src",
                  "img",
                  "10M"},
                 &why, "1700000000");
  ASSERT_TRUE(o) << why;
  EXPECT_EQ(o->block_size, 2048u);
  EXPECT_EQ(o->inodes, 1000u);
  EXPECT_EQ(o->inode_ratio, 8192u);
  EXPECT_EQ(o->inode_size, 512u);
  EXPECT_EQ(o->label, "lbl");
  EXPECT_EQ(*o->uuid, "01234567-89ab-cdef-0123-456789abcdef");
  EXPECT_EQ(o->feature_edits, "inline_data,^64bit");
  EXPECT_DOUBLE_EQ(o->reserved_percent, 2.5);
  EXPECT_EQ(o->journal_size_mib, 16u);
  EXPECT_EQ(*o->root_uid, 5u);
  EXPECT_EQ(*o->root_gid, 6u);
  EXPECT_EQ(*o->hash_seed, "11111111-2222-3333-4444-555555555555");
  EXPECT_TRUE(o->quiet);
  EXPECT_EQ(o->force, 2);
  EXPECT_EQ(o->source_dir, "/src");
  EXPECT_EQ(o->image, "img");
  EXPECT_EQ(o->size_bytes, 10u << 20);  // suffix wins over -b units
  EXPECT_EQ(*o->source_date_epoch, 1700000000);
}

TEST(ParseArgs, SizeAutoAndAttachedValues) {
  std::string why;
  auto o = Parse({"-b4096", "-dsrc", "--size", "auto", "--margin=25", "img"}, &why);
  ASSERT_TRUE(o) << why;
  EXPECT_TRUE(o->auto_size);
  EXPECT_EQ(o->auto_margin_percent, 25u);
  EXPECT_EQ(o->block_size, 4096u);
  EXPECT_EQ(o->source_dir, "src");
  auto bare = Parse({"-b", "4096", "img", "1000"}, &why);
  ASSERT_TRUE(bare);
  EXPECT_EQ(bare->size_bytes, 4096000u);
}

TEST(ParseArgs, ErrorsNameTheProblem) {
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  };
  const Case cases[] = {
      {{}, "missing IMAGE"},
      {{"a", "1M", "extra"}, "too many arguments"},
      {{"-b", "512", "img", "1M"}, "block size"},
      {{"-I", "100", "img", "1M"}, "inode size"},
      {{"-L", "this-label-is-too-long", "img", "1M"}, "longer than 16"},
      {{"-U", "nope", "img", "1M"}, "not a UUID"},
      {{"-E", "bogus=1", "img", "1M"}, "unknown extended option 'bogus'"},
      {{"-J", "device=/dev/x", "img", "1M"}, "only size="},
      {{"-m", "70", "img", "1M"}, "reserved percentage"},
      {{"img", "12q"}, "bad SIZE"},
      {{"img", "auto"}, "needs -d"},
      {{"--frobnicate", "img"}, "unknown option '--frobnicate'"},
      {{"-Z", "img"}, "unknown option '-Z'"},
      {{"-t", "xfs", "img"}, "ext4, ext3 or ext2"},
  };
  for (const Case& c : cases) {
    std::string why;
    auto o = Parse(c.args, &why);
    EXPECT_FALSE(o) << c.needle;
    EXPECT_NE(why.find(c.needle), std::string::npos) << why;
  }
  std::string why;
  EXPECT_FALSE(Parse({"img", "1M"}, &why, "yesterday"));
  EXPECT_NE(why.find("SOURCE_DATE_EPOCH"), std::string::npos);
}

TEST(ResolveFeatures, DefaultsAreMke2fsExt4) {
  MkfsOptions o;
  std::string why;
  auto f = ResolveFeatures(o, &why);
  ASSERT_TRUE(f) << why;
  ext2_super_block sb{};
  sb.s_feature_compat = f->compat;
  sb.s_feature_incompat = f->incompat;
  sb.s_feature_ro_compat = f->ro_compat;
  EXPECT_TRUE(ext2fs_has_feature_journal(&sb));
  EXPECT_TRUE(ext2fs_has_feature_extents(&sb));
  EXPECT_TRUE(ext2fs_has_feature_64bit(&sb));
  EXPECT_TRUE(ext2fs_has_feature_flex_bg(&sb));
  EXPECT_TRUE(ext2fs_has_feature_metadata_csum(&sb));
  EXPECT_TRUE(ext2fs_has_feature_huge_file(&sb));
  EXPECT_TRUE(ext2fs_has_feature_dir_nlink(&sb));
  EXPECT_TRUE(ext2fs_has_feature_extra_isize(&sb));
  EXPECT_TRUE(ext2fs_has_feature_resize_inode(&sb));
  EXPECT_TRUE(ext2fs_has_feature_dir_index(&sb));
  EXPECT_TRUE(ext2fs_has_feature_sparse_super(&sb));
  EXPECT_TRUE(ext2fs_has_feature_large_file(&sb));
  EXPECT_TRUE(ext2fs_has_feature_filetype(&sb));
  EXPECT_TRUE(ext2fs_has_feature_xattr(&sb));
  EXPECT_FALSE(ext2fs_has_feature_inline_data(&sb));
  EXPECT_FALSE(ext2fs_has_feature_gdt_csum(&sb));
}

TEST(ResolveFeatures, EditsAndErrors) {
  std::string why;
  MkfsOptions o;
  o.feature_edits = "^has_journal,inline_data";
  auto f = ResolveFeatures(o, &why);
  ASSERT_TRUE(f) << why;
  EXPECT_FALSE(f->compat & EXT3_FEATURE_COMPAT_HAS_JOURNAL);
  EXPECT_TRUE(f->incompat & EXT4_FEATURE_INCOMPAT_INLINE_DATA);

  o.feature_edits = "metadata_csum,uninit_bg";  // as mke2fs: metadata_csum wins
  f = ResolveFeatures(o, &why);
  ASSERT_TRUE(f);
  EXPECT_FALSE(f->ro_compat & EXT4_FEATURE_RO_COMPAT_GDT_CSUM);

  const std::pair<std::string, std::string> bad[] = {
      {"bogus_feature", "unknown filesystem feature 'bogus_feature'"},
      {"^extent", "64bit needs extent"},
      {"meta_bg", "resize_inode and meta_bg"},
      {"bigalloc", "'bigalloc' is not supported"},
      {"quota", "'quota' is not supported"},
  };
  for (const auto& [edit, needle] : bad) {
    o.feature_edits = edit;
    why.clear();
    EXPECT_FALSE(ResolveFeatures(o, &why)) << edit;
    EXPECT_NE(why.find(needle), std::string::npos) << why;
  }
  o.feature_edits = "inline_data";
  o.inode_size = 128;
  EXPECT_FALSE(ResolveFeatures(o, &why));
  EXPECT_NE(why.find("too small for inline_data"), std::string::npos) << why;
}

TEST(SizeType, FollowsMke2fsConf) {
  EXPECT_EQ(SizeTypeFor(2 << 20), SizeType::kFloppy);
  EXPECT_EQ(SizeTypeFor(64 << 20), SizeType::kSmall);
  EXPECT_EQ(SizeTypeFor(512ULL << 20), SizeType::kDefault);
  EXPECT_EQ(SizeTypeFor(5ULL << 40), SizeType::kBig);
  EXPECT_EQ(SizeTypeFor(20ULL << 40), SizeType::kHuge);
}

TEST(Usage, DocumentsEveryOption) {
  std::string usage = UsageText();
  for (const char* opt :
       {"-b ", "-N ", "-i ", "-I ", "-L ", "-U ", "-O ", "-t ", "-m ", "-J ", "-E ", "-d ",
        "--size", "--margin", "-q ", "-F ", "SOURCE_DATE_EPOCH", "root_owner", "hash_seed"}) {
    EXPECT_NE(usage.find(opt), std::string::npos) << opt;
  }
}

}  // namespace
}  // namespace iomapfs::mkfs
