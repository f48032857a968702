// iomapfs-mkfs: make an ext4 filesystem in an image file or on a block device, optionally
// filled from a directory, reproducibly. See UsageText() in options.cc for the interface.
#include <ext2fs/ext2fs.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "mkfs/builder.h"
#include "mkfs/options.h"
#include "mkfs/progress.h"
#include "mkfs/source_tree.h"
#include "mkfs/target.h"

namespace iomapfs::mkfs {
namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

int Error(const std::string& msg) {
  fprintf(stderr, "iomapfs-mkfs: %s\n", msg.c_str());
  return kExitError;
}

// Asks on the terminal; returns true for yes.
bool ProceedQuestion(const std::string& what) {
  fprintf(stdout, "%s\nProceed anyway? (y,N) ", what.c_str());
  fflush(stdout);
  char buf[64];
  if (fgets(buf, sizeof(buf), stdin) == nullptr) return false;
  return buf[0] == 'y' || buf[0] == 'Y';
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string why;
  auto parsed = ParseArgs(args, getenv("SOURCE_DATE_EPOCH"), &why);
  if (!parsed) {
    fprintf(stderr, "iomapfs-mkfs: %s\nTry 'iomapfs-mkfs --help'.\n", why.c_str());
    return kExitUsage;
  }
  MkfsOptions o = std::move(*parsed);
  if (o.show_help) {
    fputs(UsageText().c_str(), stdout);
    return 0;
  }
  if (o.show_version) {
    const char* lib_version = nullptr;
    ext2fs_get_library_version(&lib_version, nullptr);
    printf("iomapfs-mkfs %s (libext2fs %s)\n", IOMAPFS_VERSION, lib_version);
    return 0;
  }
  auto features = ResolveFeatures(o, &why);
  if (!features) {
    fprintf(stderr, "iomapfs-mkfs: %s\n", why.c_str());
    return kExitUsage;
  }

  // Read the source first: a bad source fails before the target is touched.
  std::optional<SourceTree> tree;
  if (!o.source_dir.empty()) {
    auto scanned = ScanSourceTree(o.source_dir, &why);
    if (!scanned) return Error(why);
    tree = std::move(*scanned);
  }

  auto target_or = Target::Inspect(o.image, &why);
  if (!target_or) return Error(why);
  std::unique_ptr<Target> target = std::move(*target_or);

  std::string existing = target->ExistingFilesystem();
  if (!existing.empty() && !o.force && isatty(0) && isatty(1)) {
    if (!ProceedQuestion(o.image + " contains an " + existing)) return Error("aborted");
  }

  uint64_t size = o.size_bytes;
  std::optional<Plan> plan;
  if (o.auto_size || (size == 0 && !target->exists() && tree)) {
    if (!tree) return Error("SIZE auto needs -d DIR");
    auto p = ComputeAutoSize(o, *features, *tree, &why);
    if (!p) return Error(why);
    plan = *p;
    size = p->blocks * p->block_size;
    if (target->is_device() && size > target->existing_size()) {
      return Error("the content of " + o.source_dir + " needs " + std::to_string(size) +
                   " bytes; " + o.image + " has " + std::to_string(target->existing_size()));
    }
  } else {
    if (size == 0) size = target->existing_size();
    if (size == 0) {
      return Error(o.image + (target->exists() ? " is empty" : " does not exist") +
                   "; give a SIZE (e.g. 1G) or -d DIR with SIZE auto");
    }
    uint64_t min_inodes = tree ? EstimateContent(*tree, 4096, o, *features).inodes : 0;
    auto p = MakePlan(o, *features, size, min_inodes, &why);
    if (!p) return Error(why);
    plan = *p;
  }

  if (auto r = target->Prepare(size, &why); !r) {
    target->Abort();
    return Error(why);
  }
  Progress progress(!o.quiet && isatty(2), 2);
  auto summary =
      BuildImage(o, *plan, tree ? &*tree : nullptr, target->build_target(), &progress, &why);
  if (!summary) {
    progress.Finish();
    target->Abort();
    return Error(why);
  }
  if (auto r = target->Commit(&why); !r) {
    target->Abort();
    return Error(why);
  }
  if (!o.quiet) {
    printf("Created %s: %llu blocks of %u bytes (%.1f MiB), %llu inodes, UUID %s\n",
           o.image.c_str(), static_cast<unsigned long long>(summary->blocks), summary->block_size,
           summary->blocks * double(summary->block_size) / (1 << 20),
           static_cast<unsigned long long>(summary->inodes), summary->uuid.c_str());
    if (tree) {
      printf("Copied %llu files (%.1f MiB of data) from %s; %.1f MiB and %llu inodes free\n",
             static_cast<unsigned long long>(summary->files_copied),
             summary->bytes_copied / double(1 << 20), o.source_dir.c_str(),
             summary->free_blocks * double(summary->block_size) / (1 << 20),
             static_cast<unsigned long long>(summary->free_inodes));
    }
  }
  return 0;
}

}  // namespace
}  // namespace iomapfs::mkfs

int main(int argc, char** argv) { return iomapfs::mkfs::Main(argc, argv); }
