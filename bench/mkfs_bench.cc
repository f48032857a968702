// mkfs_bench: iomapfs-mkfs -d against mke2fs -d over the same generated tree, same image size.
//
// Prints, for each tool, the best wall time of --runs runs and the resulting image's allocated
// size, then the ratios (time: mke2fs / iomapfs-mkfs, so > 1 means iomapfs-mkfs is faster;
// size: iomapfs-mkfs / mke2fs). Both images are checked with e2fsck -fn.
//
// Usage: mkfs_bench [--dir DIR] [--small N] [--medium N] [--large N] [--runs N] [--keep]
//   --dir DIR   use an existing tree instead of generating one
//   --small N   files of 1..16 KiB, in one directory (default 20000)
//   --medium N  files of 64 KiB..1 MiB (default 300)
//   --large N   files of 64 MiB, one of them sparse (default 4)
//
// Not run by ctest: it takes a minute and measures rather than checks.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace {

int RunQuiet(const std::vector<std::string>& argv) {
  pid_t pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    dup2(devnull, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool WriteRandom(const std::string& path, size_t size, std::mt19937_64& rng, bool sparse) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return false;
  std::vector<uint64_t> buf(1 << 17);  // 1 MiB
  size_t done = 0;
  while (done < size) {
    size_t n = std::min(size - done, buf.size() * sizeof(uint64_t));
    bool hole = sparse && ((done >> 20) % 4 != 0);  // 3 MiB holes between 1 MiB of data
    if (!hole) {
      for (auto& w : buf) w = rng();
      if (pwrite(fd, buf.data(), n, static_cast<off_t>(done)) != static_cast<ssize_t>(n)) {
        close(fd);
        return false;
      }
    }
    done += n;
  }
  bool ok = ftruncate(fd, static_cast<off_t>(size)) == 0;
  close(fd);
  return ok;
}

bool Generate(const std::string& root, int small, int medium, int large) {
  std::mt19937_64 rng(42);
  std::filesystem::create_directories(root + "/small");
  std::filesystem::create_directories(root + "/medium/a/b");
  std::filesystem::create_directories(root + "/large");
  for (int i = 0; i < small; ++i) {
    if (!WriteRandom(root + "/small/f" + std::to_string(i), 1024 + rng() % 15360, rng, false)) {
      return false;
    }
  }
  for (int i = 0; i < medium; ++i) {
    std::string dir = root + (i % 2 ? "/medium/a/b/m" : "/medium/m");
    if (!WriteRandom(dir + std::to_string(i), (64 << 10) + rng() % (960 << 10), rng, false)) {
      return false;
    }
  }
  for (int i = 0; i < large; ++i) {
    if (!WriteRandom(root + "/large/l" + std::to_string(i), 64 << 20, rng, i == 0)) return false;
  }
  return true;
}

uint64_t Allocated(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
}

uint64_t TreeBytes(const std::string& root) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) total += Allocated(e.path());
  }
  return total;
}

struct Result {
  double best_seconds = 1e30;
  uint64_t allocated = 0;
  bool fsck_clean = false;
};

Result Measure(const std::vector<std::string>& argv, const std::string& image, int runs) {
  Result r;
  for (int i = 0; i < runs; ++i) {
    unlink(image.c_str());
    auto t0 = std::chrono::steady_clock::now();
    int rc = RunQuiet(argv);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rc != 0) {
      fprintf(stderr, "mkfs_bench: %s failed (exit %d)\n", argv[0].c_str(), rc);
      exit(1);
    }
    r.best_seconds = std::min(r.best_seconds, secs);
  }
  r.allocated = Allocated(image);
  r.fsck_clean = RunQuiet({"e2fsck", "-fn", image}) == 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  int small = 20000, medium = 300, large = 4, runs = 3;
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        fprintf(stderr, "mkfs_bench: %s needs a value\n", a.c_str());
        exit(2);
      }
      return argv[++i];
    };
    if (a == "--dir")
      dir = next();
    else if (a == "--small")
      small = std::stoi(next());
    else if (a == "--medium")
      medium = std::stoi(next());
    else if (a == "--large")
      large = std::stoi(next());
    else if (a == "--runs")
      runs = std::stoi(next());
    else if (a == "--keep")
      keep = true;
    else {
      fprintf(stderr,
              "usage: mkfs_bench [--dir DIR] [--small N] [--medium N] [--large N] "
              "[--runs N] [--keep]\n");
      return 2;
    }
  }
  const char* tmp = getenv("TMPDIR");
  std::string work = std::string(tmp && *tmp ? tmp : "/tmp") + "/mkfs-bench-XXXXXX";
  if (mkdtemp(work.data()) == nullptr) return 1;
  if (dir.empty()) {
    dir = work + "/src";
    printf("generating tree: %d small, %d medium, %d large files ...\n", small, medium, large);
    if (!Generate(dir, small, medium, large)) {
      fprintf(stderr, "mkfs_bench: cannot generate the tree in %s\n", dir.c_str());
      return 1;
    }
  }
  uint64_t tree_bytes = TreeBytes(dir);
  // One size for both: room for the content plus half again, in MiB.
  uint64_t size_mib = tree_bytes * 3 / 2 / (1 << 20) + 256;
  std::string size = std::to_string(size_mib) + "M";
  std::string ours = work + "/iomapfs.img", theirs = work + "/mke2fs.img";
  printf("tree: %s, %.1f MiB allocated; image size %s; best of %d runs\n", dir.c_str(),
         tree_bytes / 1048576.0, size.c_str(), runs);

  Result a = Measure({IOMAPFS_MKFS_BIN, "-q", "-F", "-d", dir, ours, size}, ours, runs);
  Result b = Measure({"mke2fs", "-q", "-F", "-t", "ext4", "-d", dir, theirs, size}, theirs, runs);
  printf("%-14s %10s %14s %8s\n", "tool", "time (s)", "allocated MiB", "fsck");
  printf("%-14s %10.3f %14.1f %8s\n", "iomapfs-mkfs", a.best_seconds, a.allocated / 1048576.0,
         a.fsck_clean ? "clean" : "ERRORS");
  printf("%-14s %10.3f %14.1f %8s\n", "mke2fs -d", b.best_seconds, b.allocated / 1048576.0,
         b.fsck_clean ? "clean" : "ERRORS");
  printf("time ratio (mke2fs / iomapfs-mkfs): %.2fx\n", b.best_seconds / a.best_seconds);
  printf("size ratio (iomapfs-mkfs / mke2fs): %.3f\n",
         static_cast<double>(a.allocated) / static_cast<double>(b.allocated));
  // Auto size, for reference.
  std::string auto_img = work + "/auto.img";
  Result c = Measure({IOMAPFS_MKFS_BIN, "-q", "-F", "-d", dir, auto_img, "auto"}, auto_img, 1);
  printf("iomapfs-mkfs SIZE auto: %.1f MiB image in %.3f s (fsck %s)\n",
         std::filesystem::file_size(auto_img) / 1048576.0, c.best_seconds,
         c.fsck_clean ? "clean" : "ERRORS");
  if (!keep) std::filesystem::remove_all(work);
  return a.fsck_clean && b.fsck_clean && c.fsck_clean ? 0 : 1;
}
