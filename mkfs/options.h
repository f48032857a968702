// MkfsOptions: the command line of iomapfs-mkfs, parsed and validated, with mke2fs's ext4
// defaults for this system (Debian 12, e2fsprogs 1.47.0, /etc/mke2fs.conf) filled in.
//
// Thread-safety: value types and pure functions; no shared state.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"

namespace iomapfs::mkfs {

// The three ext4 feature words (superblock s_feature_compat/incompat/ro_compat).
struct FeatureSet {
  uint32_t compat = 0;
  uint32_t incompat = 0;
  uint32_t ro_compat = 0;
};

struct MkfsOptions {
  std::string image;  // IMAGE: a file (created or replaced) or a block device

  // Requested size in bytes; 0 = take it from the device or existing file.
  uint64_t size_bytes = 0;
  // SIZE was "auto" (or --size auto): the smallest size that fits the -d content plus margin.
  bool auto_size = false;
  // Free space added on top of the content in auto mode, percent of the content.
  uint32_t auto_margin_percent = 10;

  uint32_t block_size = 0;               // -b; 0 = by size type (1024 below 512 MiB, else 4096)
  uint64_t inodes = 0;                   // -N; 0 = from the inode ratio
  uint32_t inode_ratio = 0;              // -i; 0 = by size type
  uint32_t inode_size = 256;             // -I
  std::string label;                     // -L
  std::optional<std::string> uuid;       // -U (a UUID, "random", "null"/"clear", "time")
  std::optional<std::string> hash_seed;  // -E hash_seed=UUID
  std::string feature_edits;             // -O, applied in order over the defaults
  double reserved_percent = 5.0;         // -m
  uint64_t journal_size_mib = 0;         // -J size=; 0 = libext2fs default for the size
  std::optional<uint32_t> root_uid;      // -E root_owner=UID:GID
  std::optional<uint32_t> root_gid;
  bool quiet = false;      // -q
  int force = 0;           // -F (counted, like mke2fs)
  std::string source_dir;  // -d
  // SOURCE_DATE_EPOCH, if set in the environment: the time of every fs-level timestamp and of
  // the root and lost+found, and the upper clamp for file timestamps.
  std::optional<int64_t> source_date_epoch;
  bool show_help = false;
  bool show_version = false;
};

// The text printed by --help.
std::string UsageText();

// Parses a size: a number with an optional suffix k, m, g, t (powers of 1024, either case) or
// s (512-byte sectors). Without a suffix the number counts `unit` bytes (mke2fs: 1 KiB blocks,
// or -b blocks when -b was given).
// Returns: the size in bytes. Errors: EINVAL malformed or zero; ERANGE overflow.
Result<uint64_t> ParseSize(const std::string& text, uint64_t unit);

// Parses a UUID in the 8-4-4-4-12 hex form. Errors: EINVAL.
Result<std::array<uint8_t, 16>> ParseUuid(const std::string& text);

// Parses argv into options. `env_source_date_epoch` is getenv("SOURCE_DATE_EPOCH") or null.
// Returns: the options; on EINVAL *why says which argument is wrong and why.
Result<MkfsOptions> ParseArgs(const std::vector<std::string>& args,
                              const char* env_source_date_epoch, std::string* why);

// mke2fs's "size type" (mke2fs.conf [fs_types]) for a filesystem of `bytes`.
enum class SizeType { kFloppy, kSmall, kDefault, kBig, kHuge };
SizeType SizeTypeFor(uint64_t bytes);

// The ext4 defaults of /etc/mke2fs.conf ([defaults] base_features plus [fs_types] ext4
// features), with the -O edits applied in order. "none" clears everything; "^name" clears.
// Returns: the features. Errors: EINVAL with *why naming an unknown feature or one this tool
// cannot create (bigalloc, quota, project, journal_dev, casefold, encrypt), or a combination
// that is inconsistent (e.g. inline_data with 128-byte inodes, metadata_csum with uninit_bg).
Result<FeatureSet> ResolveFeatures(const MkfsOptions& options, std::string* why);

}  // namespace iomapfs::mkfs
