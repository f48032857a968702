#include "mkfs/options.h"

extern "C" {
#include <e2p/e2p.h>
}
#include <ext2fs/ext2fs.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdlib>

namespace iomapfs::mkfs {
namespace {

// /etc/mke2fs.conf on Debian 12: [defaults] base_features and [fs_types] ext3/ext4 features.
constexpr const char* kBaseFeatures =
    "sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr";
constexpr const char* kExt3Features = "has_journal";
constexpr const char* kExt4Features =
    "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize";

Result<uint64_t> ParseUnsigned(const std::string& text) {
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) {
    return Unexpected(EINVAL);
  }
  errno = 0;
  char* end = nullptr;
  unsigned long long v = strtoull(text.c_str(), &end, 10);
  if (errno == ERANGE) return Unexpected(ERANGE);
  if (*end != '\0') return Unexpected(EINVAL);
  return static_cast<uint64_t>(v);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// -E options: comma-separated name[=value].
Result<void> ParseExtended(const std::string& text, MkfsOptions* o, std::string* why) {
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string token =
        text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? text.size() + 1 : comma + 1;
    if (token.empty()) continue;
    std::string name = token, value;
    bool has_value = false;
    if (size_t eq = token.find('='); eq != std::string::npos) {
      name = token.substr(0, eq);
      value = token.substr(eq + 1);
      has_value = true;
    }
    if (name == "root_owner") {
      if (!has_value) {
        o->root_uid = getuid();
        o->root_gid = getgid();
        continue;
      }
      size_t colon = value.find(':');
      auto uid = ParseUnsigned(value.substr(0, colon));
      auto gid = colon == std::string::npos ? Result<uint64_t>(Unexpected(EINVAL))
                                            : ParseUnsigned(value.substr(colon + 1));
      if (!uid || !gid || *uid > UINT32_MAX || *gid > UINT32_MAX) {
        *why = "-E root_owner: expected UID:GID (numbers), got '" + value + "'";
        return Unexpected(EINVAL);
      }
      o->root_uid = static_cast<uint32_t>(*uid);
      o->root_gid = static_cast<uint32_t>(*gid);
    } else if (name == "hash_seed") {
      if (!ParseUuid(value)) {
        *why = "-E hash_seed: not a UUID: '" + value + "'";
        return Unexpected(EINVAL);
      }
      o->hash_seed = value;
    } else {
      *why = "-E: unknown extended option '" + name +
             "' (supported: root_owner[=UID:GID], hash_seed=UUID)";
      return Unexpected(EINVAL);
    }
  }
  return {};
}

}  // namespace

std::string UsageText() {
  return R"(Usage: iomapfs-mkfs [options] IMAGE [SIZE]

Creates an ext4 filesystem in IMAGE (an image file or a block device) with libext2fs,
optionally filled from a directory (-d). Defaults are mke2fs's ext4 defaults on this system
(/etc/mke2fs.conf of Debian 12): has_journal, extent, 64bit, flex_bg, metadata_csum,
huge_file, dir_nlink, extra_isize, sparse_super, large_file, filetype, resize_inode,
dir_index, ext_attr; 256-byte inodes; 4 KiB blocks and one inode per 16 KiB (below 512 MiB:
1 KiB blocks and one inode per 4 KiB; below 3 MiB: one inode per 8 KiB).

SIZE    bytes with a suffix k, M, G, T (powers of 1024) or s (512-byte sectors); a bare
        number counts 1 KiB units, or -b blocks when -b is given (as in mke2fs).
        "auto" (with -d): the smallest size that holds the content plus a margin (--margin).
        Without SIZE: the size of the device or of the existing image file; with -d and no
        existing file, "auto".

Options:
  -b SIZE          block size: 1024, 2048 or 4096
  -N COUNT         number of inodes
  -i BYTES         bytes per inode
  -I SIZE          inode size: 128 (no nanosecond timestamps, dates end in 2038) to 1024
  -L LABEL         volume label (at most 16 bytes)
  -U UUID          filesystem UUID, or random, time, null (a fixed UUID is needed for
                   reproducible images)
  -O FEATURES      comma-separated features to add, ^feature to drop, "none" to clear all
                   (bigalloc, quota, project, casefold, encrypt, journal_dev: not supported)
  -t TYPE          ext4 (default), ext3 or ext2: which default feature set to start from
  -m PERCENT       blocks reserved for the super-user (default 5)
  -J size=MiB      journal size (default: libext2fs's default for the filesystem size)
  -E OPTS          extended options, comma-separated:
                     root_owner[=UID:GID]  owner of the root directory (no value: the caller;
                                           default 0:0, or the -d directory's owner)
                     hash_seed=UUID        directory hash seed (random by default; derived
                                           from the UUID when SOURCE_DATE_EPOCH is set)
  -d DIR           copy DIR into the filesystem: regular files (holes kept), directories,
                   symlinks, hard links, fifos, sockets, device nodes, xattrs and POSIX ACLs,
                   owners, modes and nanosecond timestamps. Each file's data is allocated in
                   one contiguous run where free space allows. DIR's own owner, mode, times
                   and xattrs go to the root directory.
  --size SIZE      same as the SIZE argument (e.g. --size auto)
  --margin PCT     free space added by SIZE auto, in percent of the content (default 10)
  -q               quiet: no summary and no progress bar
  -F               force: do not ask before overwriting an existing filesystem
  -V, --version    print the version
  -h, --help       print this help

Safety:
  - An image file is built under a temporary name in the same directory and renamed over
    IMAGE only when complete; on any error the temporary file is removed and IMAGE is left
    as it was. A block device is written in place: its primary superblock is zeroed first
    and written last, so a failed run never leaves a device that looks like a valid
    filesystem.
  - A mounted or busy target is always refused.
  - If IMAGE already holds an ext2/3/4 filesystem and both stdin and stdout are terminals,
    iomapfs-mkfs asks before overwriting it unless -F is given; when not run interactively
    it proceeds, as mke2fs does, so that scripts keep working.

Reproducible images: with -U UUID, SOURCE_DATE_EPOCH set and (optionally) -E hash_seed, two
runs over the same input produce byte-identical images. SOURCE_DATE_EPOCH sets the
filesystem's creation, write and check times and the times of the root directory (without
-d) and lost+found, and clamps every file timestamp (atime, mtime, ctime, crtime) to at most
its value. Without it, files keep their source atime and mtime (nanoseconds) and ctime, and
crtime is the source's birth time when known, else its ctime.

A progress bar (files and bytes done, rate) is shown on stderr while copying when stderr is a
terminal and -q is not given. Exit status: 0 on success, 1 on any error (the message names
the problem), 2 on a usage error.
)";
}

Result<uint64_t> ParseSize(const std::string& text, uint64_t unit) {
  if (text.empty()) return Unexpected(EINVAL);
  std::string digits = text;
  uint64_t mult = unit;
  char last = static_cast<char>(std::tolower(static_cast<unsigned char>(text.back())));
  if (std::isalpha(static_cast<unsigned char>(last))) {
    digits.pop_back();
    switch (last) {
      case 'k':
        mult = 1ULL << 10;
        break;
      case 'm':
        mult = 1ULL << 20;
        break;
      case 'g':
        mult = 1ULL << 30;
        break;
      case 't':
        mult = 1ULL << 40;
        break;
      case 's':
        mult = 512;
        break;
      default:
        return Unexpected(EINVAL);
    }
  }
  IOMAPFS_ASSIGN_OR_RETURN(uint64_t n, ParseUnsigned(digits));
  if (n == 0) return Unexpected(EINVAL);
  if (n > UINT64_MAX / mult) return Unexpected(ERANGE);
  return n * mult;
}

Result<std::array<uint8_t, 16>> ParseUuid(const std::string& text) {
  std::array<uint8_t, 16> out{};
  if (text.size() != 36) return Unexpected(EINVAL);
  size_t byte = 0;
  for (size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return Unexpected(EINVAL);
      ++i;
      continue;
    }
    int hi = HexValue(text[i]), lo = HexValue(text[i + 1]);
    if (hi < 0 || lo < 0) return Unexpected(EINVAL);
    out[byte++] = static_cast<uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return out;
}

SizeType SizeTypeFor(uint64_t bytes) {
  constexpr uint64_t kMiB = 1ULL << 20;
  if (bytes < 3 * kMiB) return SizeType::kFloppy;
  if (bytes < 512 * kMiB) return SizeType::kSmall;
  if (bytes < (4ULL << 40)) return SizeType::kDefault;
  if (bytes < (16ULL << 40)) return SizeType::kBig;
  return SizeType::kHuge;
}

Result<MkfsOptions> ParseArgs(const std::vector<std::string>& args,
                              const char* env_source_date_epoch, std::string* why) {
  MkfsOptions o;
  std::vector<std::string> positional;
  std::string size_text;
  std::string fs_type = "ext4";
  auto fail = [&](const std::string& msg) -> Result<MkfsOptions> {
    *why = msg;
    return Unexpected(EINVAL);
  };

  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      positional.insert(positional.end(), args.begin() + i + 1, args.end());
      break;
    }
    if (a.rfind("--", 0) == 0) {
      std::string name = a.substr(2), value;
      bool has_value = false;
      if (size_t eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      if (name == "help") {
        o.show_help = true;
      } else if (name == "version") {
        o.show_version = true;
      } else if (name == "size" || name == "margin") {
        if (!has_value) {
          if (i + 1 >= args.size()) return fail("option --" + name + " needs a value");
          value = args[++i];
        }
        if (name == "size") {
          size_text = value;
        } else {
          auto pct = ParseUnsigned(value);
          if (!pct || *pct > 1000)
            return fail("--margin: expected a percentage, got '" + value + "'");
          o.auto_margin_percent = static_cast<uint32_t>(*pct);
        }
      } else {
        return fail("unknown option '" + a + "'");
      }
      continue;
    }
    if (a.size() < 2 || a[0] != '-') {
      positional.push_back(a);
      continue;
    }
    // Short options, possibly grouped (-qF) or with an attached value (-b4096).
    for (size_t j = 1; j < a.size(); ++j) {
      char c = a[j];
      const std::string takes_value = "bNiILUOmJEdt";
      if (takes_value.find(c) == std::string::npos) {
        switch (c) {
          case 'q':
            o.quiet = true;
            break;
          case 'F':
            o.force++;
            break;
          case 'h':
            o.show_help = true;
            break;
          case 'V':
            o.show_version = true;
            break;
          default:
            return fail(std::string("unknown option '-") + c + "'");
        }
        continue;
      }
      std::string value;
      if (j + 1 < a.size()) {
        value = a.substr(j + 1);
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return fail(std::string("option -") + c + " needs a value");
      }
      switch (c) {
        case 'b': {
          auto v = ParseUnsigned(value);
          if (!v || (*v != 1024 && *v != 2048 && *v != 4096)) {
            return fail("-b: block size must be 1024, 2048 or 4096, got '" + value + "'");
          }
          o.block_size = static_cast<uint32_t>(*v);
          break;
        }
        case 'N': {
          auto v = ParseUnsigned(value);
          if (!v || *v == 0 || *v > UINT32_MAX) return fail("-N: bad inode count '" + value + "'");
          o.inodes = *v;
          break;
        }
        case 'i': {
          auto v = ParseSize(value, 1);
          if (!v || *v < 1024 || *v > (64ULL << 20)) {
            return fail("-i: bytes per inode must be 1024 .. 67108864, got '" + value + "'");
          }
          o.inode_ratio = static_cast<uint32_t>(*v);
          break;
        }
        case 'I': {
          auto v = ParseUnsigned(value);
          if (!v || *v < 128 || *v > 1024 || !IsPowerOfTwo(*v)) {
            return fail("-I: inode size must be a power of two from 128 to 1024, got '" + value +
                        "'");
          }
          o.inode_size = static_cast<uint32_t>(*v);
          break;
        }
        case 'L':
          if (value.size() > EXT2_LABEL_LEN) {
            return fail("-L: label '" + value + "' is longer than 16 bytes");
          }
          o.label = value;
          break;
        case 'U':
          if (value != "random" && value != "time" && value != "null" && value != "clear" &&
              !ParseUuid(value)) {
            return fail("-U: not a UUID: '" + value + "'");
          }
          o.uuid = value;
          break;
        case 'O':
          if (!o.feature_edits.empty()) o.feature_edits += ",";
          o.feature_edits += value;
          break;
        case 'm': {
          char* end = nullptr;
          errno = 0;
          double pct = strtod(value.c_str(), &end);
          if (errno != 0 || end == value.c_str() || *end != '\0' || pct < 0 || pct > 50) {
            return fail("-m: reserved percentage must be 0 .. 50, got '" + value + "'");
          }
          o.reserved_percent = pct;
          break;
        }
        case 'J': {
          if (value.rfind("size=", 0) != 0) {
            return fail("-J: only size=MiB is supported, got '" + value + "'");
          }
          auto v = ParseUnsigned(value.substr(5));
          if (!v || *v == 0 || *v > 10240000) return fail("-J: bad journal size '" + value + "'");
          o.journal_size_mib = *v;
          break;
        }
        case 'E': {
          auto r = ParseExtended(value, &o, why);
          if (!r) return Unexpected(r.error());
          break;
        }
        case 'd':
          o.source_dir = value;
          break;
        case 't':
          if (value != "ext4" && value != "ext3" && value != "ext2") {
            return fail("-t: filesystem type must be ext4, ext3 or ext2, got '" + value + "'");
          }
          fs_type = value;
          break;
      }
      break;  // the value consumed the rest of this argument
    }
  }

  if (o.show_help || o.show_version) return o;
  if (positional.empty()) return fail("missing IMAGE");
  if (positional.size() > 2) return fail("too many arguments: '" + positional[2] + "'");
  if (positional.size() == 2) {
    if (!size_text.empty()) return fail("SIZE given twice (argument and --size)");
    size_text = positional[1];
  }
  o.image = positional[0];
  if (fs_type == "ext2") {
    o.feature_edits = "none," + std::string(kBaseFeatures) +
                      (o.feature_edits.empty() ? "" : "," + o.feature_edits);
  } else if (fs_type == "ext3") {
    o.feature_edits = "none," + std::string(kBaseFeatures) + "," + kExt3Features +
                      (o.feature_edits.empty() ? "" : "," + o.feature_edits);
  }
  if (size_text == "auto") {
    if (o.source_dir.empty()) return fail("SIZE auto needs -d DIR");
    o.auto_size = true;
  } else if (!size_text.empty()) {
    auto size = ParseSize(size_text, o.block_size ? o.block_size : 1024);
    if (!size) return fail("bad SIZE '" + size_text + "' (expected e.g. 512M, 4G, auto)");
    o.size_bytes = *size;
  }
  if (env_source_date_epoch != nullptr && *env_source_date_epoch != '\0') {
    auto v = ParseUnsigned(env_source_date_epoch);
    if (!v || *v > static_cast<uint64_t>(INT64_MAX)) {
      return fail(std::string("SOURCE_DATE_EPOCH is not a number of seconds: '") +
                  env_source_date_epoch + "'");
    }
    o.source_date_epoch = static_cast<int64_t>(*v);
  }
  return o;
}

Result<FeatureSet> ResolveFeatures(const MkfsOptions& options, std::string* why) {
  __u32 words[3] = {0, 0, 0};
  std::string all = std::string(kBaseFeatures) + "," + kExt4Features;
  if (e2p_edit_feature2(all.c_str(), words, nullptr, nullptr, nullptr, nullptr) != 0) {
    *why = "internal error: bad default feature list";
    return Unexpected(EINVAL);
  }
  if (!options.feature_edits.empty()) {
    // Apply one token at a time so that the error names the offending feature.
    const std::string& edits = options.feature_edits;
    size_t pos = 0;
    while (pos <= edits.size()) {
      size_t comma = edits.find(',', pos);
      std::string token =
          edits.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      pos = comma == std::string::npos ? edits.size() + 1 : comma + 1;
      if (token.empty()) continue;
      if (e2p_edit_feature2(token.c_str(), words, nullptr, nullptr, nullptr, nullptr) != 0) {
        std::string name =
            token[0] == '^' || token[0] == '-' || token[0] == '+' ? token.substr(1) : token;
        *why = "unknown filesystem feature '" + name + "'";
        return Unexpected(EINVAL);
      }
    }
  }
  FeatureSet f{words[0], words[1], words[2]};
  ext2_super_block sb{};
  sb.s_feature_compat = f.compat;
  sb.s_feature_incompat = f.incompat;
  sb.s_feature_ro_compat = f.ro_compat;

  struct Unsupported {
    bool on;
    const char* name;
  };
  const Unsupported unsupported[] = {
      {ext2fs_has_feature_bigalloc(&sb) != 0, "bigalloc"},
      {ext2fs_has_feature_quota(&sb) != 0, "quota"},
      {ext2fs_has_feature_project(&sb) != 0, "project"},
      {ext2fs_has_feature_journal_dev(&sb) != 0, "journal_dev"},
      {ext2fs_has_feature_casefold(&sb) != 0, "casefold"},
      {ext2fs_has_feature_encrypt(&sb) != 0, "encrypt"},
      {ext2fs_has_feature_compression(&sb) != 0, "compression"},
  };
  for (const auto& u : unsupported) {
    if (u.on) {
      *why = std::string("feature '") + u.name + "' is not supported by iomapfs-mkfs";
      return Unexpected(EINVAL);
    }
  }
  if ((f.incompat & ~EXT2_LIB_FEATURE_INCOMPAT_SUPP) ||
      (f.ro_compat & ~EXT2_LIB_FEATURE_RO_COMPAT_SUPP) ||
      (f.compat & ~EXT2_LIB_FEATURE_COMPAT_SUPP)) {
    *why = "a requested feature is not supported by this libext2fs";
    return Unexpected(EINVAL);
  }
  if (ext2fs_has_feature_64bit(&sb) && !ext2fs_has_feature_extents(&sb)) {
    *why = "feature 64bit needs extent (add -O extent or drop 64bit)";
    return Unexpected(EINVAL);
  }
  if (ext2fs_has_feature_meta_bg(&sb) && ext2fs_has_feature_resize_inode(&sb)) {
    *why = "features resize_inode and meta_bg cannot both be enabled";
    return Unexpected(EINVAL);
  }
  if (ext2fs_has_feature_inline_data(&sb)) {
    if (options.inode_size == EXT2_GOOD_OLD_INODE_SIZE) {
      *why = "128-byte inodes are too small for inline_data; use -I 256 or larger";
      return Unexpected(EINVAL);
    }
    if (!ext2fs_has_feature_xattr(&sb)) {
      *why = "feature inline_data needs ext_attr";
      return Unexpected(EINVAL);
    }
  }
  if (ext2fs_has_feature_csum_seed(&sb) && !ext2fs_has_feature_metadata_csum(&sb)) {
    *why = "feature metadata_csum_seed needs metadata_csum";
    return Unexpected(EINVAL);
  }
  // As mke2fs: metadata_csum supersedes uninit_bg.
  if (ext2fs_has_feature_metadata_csum(&sb)) ext2fs_clear_feature_gdt_csum(&sb);
  return FeatureSet{sb.s_feature_compat, sb.s_feature_incompat, sb.s_feature_ro_compat};
}

}  // namespace iomapfs::mkfs
