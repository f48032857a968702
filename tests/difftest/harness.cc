#include "tests/difftest/harness.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/mount/mount_util.h"
#include "tests/support/test_util.h"

namespace iomapfs::difftest {
namespace {

using testing::KernelMount;
using testing::LoopDevice;
using testing::MountGuard;
using testing::ServerMount;

// Fixed so that directory hashes and UUID-seeded checksums are the same on every run.
constexpr char kUuid[] = "d1ff7e57-0000-4000-8000-000000000001";

// The work directory; removed on destruction unless kept. Declared before the mounts and loop
// devices that live inside it, so it is destroyed after them.
class WorkDir {
 public:
  explicit WorkDir(bool keep) : keep_(keep) {}
  ~WorkDir() {
    if (!path_.empty() && !keep_) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  std::string Create(const std::string& parent) {
    std::string tmpl = parent + "/iomapfs-difftest-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) return "mkdtemp " + tmpl + ": " + strerror(errno);
    path_ = tmpl;
    return "";
  }
  const std::string& path() const { return path_; }

 private:
  bool keep_;
  std::string path_;
};

// A kernel ext4 mount of an image through a loop device.
struct KernelSide {
  LoopDevice loop;
  MountGuard guard;

  std::string Mount(const std::string& image, const std::string& mountpoint, bool read_only) {
    if (std::string err = loop.Attach(image, read_only); !err.empty()) return err;
    return KernelMount(loop.path(), mountpoint, read_only, &guard);
  }
  std::string Unmount() {
    std::string err = guard.Unmount();
    std::string detach = loop.Detach();
    return err.empty() ? detach : err;
  }
};

std::string ShellQuote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789/._-=+:,") == std::string::npos) {
    return s;
  }
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

std::string ReproCommand(const HarnessOptions& options, uint64_t ops) {
  std::string cmd = ShellQuote(options.tool.empty() ? "difftest" : options.tool) + " --seed " +
                    std::to_string(options.seed) + " --ops " + std::to_string(ops);
  if (options.kernel_only) {
    cmd += " --kernel-only";
  } else if (!options.iomapfs.empty()) {
    cmd += " --iomapfs " + ShellQuote(options.iomapfs);
  }
  const HarnessOptions defaults;
  if (!options.kernel_only && options.mount_options != defaults.mount_options) {
    cmd += " --options " + ShellQuote(options.mount_options);
  }
  if (options.check_every != defaults.check_every) {
    cmd += " --check-every " + std::to_string(options.check_every);
  }
  if (options.remount_every != defaults.remount_every) {
    cmd += " --remount-every " + std::to_string(options.remount_every);
  }
  if (options.compare.blocks) cmd += " --blocks";
  if (options.compare.dir_size) cmd += " --dir-size";
  if (!options.compare.seek) cmd += " --no-seek";
  return cmd + " --keep";
}

HarnessResult RunDifftest(const HarnessOptions& options) {
  HarnessResult result;
  const double start = testing::Now();
  auto log = [&](const std::string& line) {
    if (options.log) options.log(line);
  };
  auto error = [&](HarnessStatus status, const std::string& message) {
    result.status = status;
    result.message = message;
    result.seconds = testing::Now() - start;
    return result;
  };

  std::string tmpdir = options.tmpdir;
  if (tmpdir.empty()) {
    const char* env = getenv("TMPDIR");
    tmpdir = env && *env ? env : "/tmp";
  }
  WorkDir work(options.keep);
  if (std::string err = work.Create(tmpdir); !err.empty()) return error(HarnessStatus::kError, err);
  if (options.keep) log("work directory (kept): " + work.path());
  const std::string ref_img = work.path() + "/ref.img", test_img = work.path() + "/test.img";
  const std::string ref_mnt = work.path() + "/ref", test_mnt = work.path() + "/test";
  for (const std::string& d : {ref_mnt, test_mnt}) {
    if (mkdir(d.c_str(), 0755) != 0) return error(HarnessStatus::kError, "mkdir " + d);
  }
  // One mke2fs, copied: both images are the same bytes.
  if (std::string err = testing::MakeImage(ref_img, options.image_bytes, "ext4",
                                           {"-U", kUuid, "-E", std::string("hash_seed=") + kUuid});
      !err.empty()) {
    return error(HarnessStatus::kError, err);
  }
  testing::CommandResult cp = testing::Run({"cp", "--sparse=always", ref_img, test_img});
  if (cp.exit_code != 0) return error(HarnessStatus::kError, "cp: " + cp.output);

  const std::string test_name = options.kernel_only
                                    ? "kernel ext4 (test side)"
                                    : options.iomapfs.substr(options.iomapfs.rfind('/') + 1);
  KernelSide ref, test_kernel;
  ServerMount server;
  // Mounts the tree under test; *unsupported is set if the server refuses -o rw.
  auto mount_test = [&](bool* unsupported) -> std::string {
    *unsupported = false;
    if (options.kernel_only) return test_kernel.Mount(test_img, test_mnt, false);
    std::string err = server.Start(options.iomapfs, test_img, test_mnt, options.mount_options);
    if (err.empty()) return "";
    const std::string& out = server.output();
    if (out.find("read-write") != std::string::npos &&
        out.find("not supported") != std::string::npos) {
      *unsupported = true;
      std::string why = out;
      while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
      return test_name + " refused -o rw: " + why;
    }
    return test_name + " -o rw: " + err;
  };
  auto unmount_both = [&]() {
    std::string err = options.kernel_only ? test_kernel.Unmount() : server.Stop();
    if (std::string ref_err = ref.Unmount(); !ref_err.empty()) err += "; reference: " + ref_err;
    return err;
  };
  auto fsck_both = [&]() {
    std::string report;
    for (const auto& [name, image] :
         {std::pair{"reference", ref_img}, std::pair{"test", test_img}}) {
      std::string out;
      if (!testing::FsckClean(image, &out)) {
        report += std::string("e2fsck -fn on the ") + name + " image is not clean:\n" + out;
      }
    }
    return report;
  };

  bool unsupported = false;
  if (std::string err = mount_test(&unsupported); !err.empty()) {
    return error(unsupported ? HarnessStatus::kRwUnsupported : HarnessStatus::kError, err);
  }
  if (std::string err = ref.Mount(ref_img, ref_mnt, false); !err.empty()) {
    return error(HarnessStatus::kError, err);
  }

  RunnerOptions run;
  run.seed = options.seed;
  run.ops = options.ops;
  run.check_every = options.check_every;
  run.remount_every = options.remount_every;
  run.compare = options.compare;
  run.test_name = test_name;
  if (options.trace && options.log) {
    run.trace = [&](uint64_t i, const std::string& op, const std::string& result) {
      log("#" + std::to_string(i) + " " + op + " -> " + result);
    };
  }
  run.progress = [&](uint64_t done) {
    log("seed " + std::to_string(options.seed) + ": " + std::to_string(done) + " ops, " +
        std::to_string(static_cast<int>(testing::Now() - start)) + " s");
  };
  run.remount = [&]() -> std::string {
    if (std::string err = unmount_both(); !err.empty()) return "unmount: " + err;
    if (std::string report = fsck_both(); !report.empty()) return report;
    bool ignored;
    if (std::string err = mount_test(&ignored); !err.empty()) return "mount: " + err;
    if (std::string err = ref.Mount(ref_img, ref_mnt, false); !err.empty()) {
      return "mount reference: " + err;
    }
    return "";
  };
  RunResult rr = RunLockstep(ref_mnt, test_mnt, run);
  result.ops_run = rr.ops_run;
  result.stats = rr.Stats();
  const uint64_t repro_ops = rr.ops_run;

  // Unmount both whatever happened, then check both images.
  const std::string unmount_err = unmount_both();
  const std::string fsck_report = fsck_both();

  auto fail = [&](const std::string& message) {
    result.status = HarnessStatus::kFail;
    result.repro = ReproCommand(options, repro_ops);
    result.message = message + "repro: " + result.repro + "\n";
    result.seconds = testing::Now() - start;
    return result;
  };
  if (!rr.ok) {
    std::string msg = rr.report;
    if (!unmount_err.empty()) msg += "unmount: " + unmount_err + "\n";
    msg += fsck_report.empty() ? "e2fsck -fn: both images clean\n" : fsck_report;
    return fail(msg);
  }
  if (!unmount_err.empty()) return fail("unmount failed: " + unmount_err + "\n");
  if (!fsck_report.empty()) {
    return fail("difftest: seed " + std::to_string(options.seed) + ", " +
                std::to_string(rr.ops_run) + " ops matched, but\n" + fsck_report);
  }

  // What the tree under test left on disk, read by kernel ext4.
  {
    KernelSide ref_ro, test_ro;
    if (std::string err = ref_ro.Mount(ref_img, ref_mnt, true); !err.empty()) {
      return error(HarnessStatus::kError, "remount reference: " + err);
    }
    if (std::string err = test_ro.Mount(test_img, test_mnt, true); !err.empty()) {
      return fail("kernel ext4 cannot mount the test image after the run: " + err + "\n");
    }
    TreeDifferences d = CompareTrees(ref_mnt, test_mnt, options.compare);
    test_ro.Unmount();
    ref_ro.Unmount();
    if (d.count != 0) {
      std::string msg = "difftest: seed " + std::to_string(options.seed) +
                        ": after unmounting, the test image mounted by kernel ext4 differs from "
                        "the reference (" +
                        std::to_string(d.count) + " difference(s)):\n";
      for (const std::string& line : d.lines) msg += "  " + line + "\n";
      return fail(msg);
    }
    log("seed " + std::to_string(options.seed) + ": kernel remount matches (" +
        std::to_string(d.entries) + " entries, " + std::to_string(d.bytes) + " bytes)");
  }
  result.status = HarnessStatus::kPass;
  result.seconds = testing::Now() - start;
  result.message = "seed " + std::to_string(options.seed) + ": " + std::to_string(rr.ops_run) +
                   " ops, " + std::to_string(rr.tree_checks) + " tree checks, " +
                   std::to_string(rr.remounts) + " remounts with e2fsck, fsck clean, " +
                   "kernel remount matches";
  return result;
}

}  // namespace iomapfs::difftest
