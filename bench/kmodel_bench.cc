// kmodel_bench: upcalls the kernel MODEL (tests/kmodel) needs per GiB read, cold and hot, and
// per 4 KiB random overwrite, for each kernel-side mechanism: mapping cache + BPF, cache only,
// BPF only, neither. No real iomap kernel is involved; the numbers count protocol round trips.
//
// Usage: kmodel_bench [file_mib] (default 256). Needs mke2fs; BPF rows need CAP_BPF.
#include <fcntl.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "bpf/kernel.h"
#include "tests/kmodel/harness.h"
#include "tests/support/test_util.h"

namespace km = iomapfs::kmodel;
namespace tu = iomapfs::testing;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Row {
  const char* name;
  bool server_bpf, model_cache, model_bpf;
};

}  // namespace

int main(int argc, char** argv) {
  const uint64_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 256;
  const uint64_t size = mib << 20;
  tu::TempDir dir;
  const std::string image = dir.Sub("fs.img");
  std::string src = dir.Sub("src");
  mkdir(src.c_str(), 0755);
  {
    std::mt19937_64 rng(1);
    std::string chunk(1 << 20, '\0');
    FILE* f = fopen((src + "/data").c_str(), "w");
    for (uint64_t i = 0; i < mib; ++i) {
      for (auto& c : chunk) c = static_cast<char>(rng());
      fwrite(chunk.data(), 1, chunk.size(), f);
    }
    fclose(f);
  }
  if (std::string e = tu::MakeImage(image, size * 2 + (256 << 20), "ext4", {"-b", "4096"}, src);
      !e.empty()) {
    fprintf(stderr, "mke2fs: %s\n", e.c_str());
    return 1;
  }
  std::string why;
  const bool have_bpf = iomapfs::bpf::SyscallProgramsAvailable(&why);
  const Row rows[] = {{"cache+bpf", true, true, true},
                      {"cache only", false, true, false},
                      {"bpf only", true, false, true},
                      {"neither", false, false, false}};
  printf("kernel MODEL upcalls (%llu MiB file, 4 KiB blocks)\n", (unsigned long long)mib);
  printf("%-11s %14s %14s %18s %10s\n", "mechanism", "cold/GiB", "hot/GiB", "per 4K overwrite",
         "seconds");
  for (const Row& r : rows) {
    if (r.server_bpf && !have_bpf) {
      printf("%-11s skipped: %s\n", r.name, why.c_str());
      continue;
    }
    double t0 = Now();
    km::ServerConfig s;
    s.read_write = true;
    s.iomap.bpf = r.server_bpf;
    km::ModelOptions m;
    m.cache = r.model_cache;
    m.bpf = r.model_bpf;
    std::unique_ptr<km::ModelHarness> h;
    if (std::string e = km::ModelHarness::Start(image, s, m, &h); !e.empty()) {
      fprintf(stderr, "%s\n", e.c_str());
      return 1;
    }
    km::KernelModel& model = h->model();
    uint64_t node = *model.LookupPath("data");
    uint64_t fh = *model.Open(node, O_RDWR);
    const double gib = static_cast<double>(size) / (1ull << 30);
    double per_gib[2];
    for (int pass = 0; pass < 2; ++pass) {
      model.ResetCounters();
      for (uint64_t off = 0; off < size; off += 1 << 20) (void)model.Read(node, off, 1 << 20);
      per_gib[pass] = static_cast<double>(model.counters().BeginUpcalls()) / gib;
    }
    model.ResetCounters();
    std::mt19937_64 rng(2);
    std::vector<std::byte> data(4096, std::byte{0x33});
    const int kWrites = 4096;
    for (int i = 0; i < kWrites; ++i) {
      (void)model.Write(node, (rng() % (size / 4096)) * 4096, data);
      if (i % 64 == 63) (void)model.Writeback(node);
    }
    (void)model.Fsync(node, fh);
    double per_write = static_cast<double>(model.counters().BeginUpcalls()) / kWrites;
    (void)model.Release(node, fh);
    (void)h->Stop();
    printf("%-11s %14.1f %14.1f %18.3f %10.2f\n", r.name, per_gib[0], per_gib[1], per_write,
           Now() - t0);
  }
  return 0;
}
