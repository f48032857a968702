// iomapfs-bpfdump IMAGE PATH [--load]: prints, for one file of an ext2/3/4 image, the mappings
// the engine returns, the BPF strategy codegen chooses and why, the instruction count and the
// disassembly. With --load (root) it also loads the program and reports the verifier's numbers.
#include <ext2fs/ext2fs.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "bpf/assembler.h"
#include "bpf/codegen.h"
#include "bpf/file_map.h"
#include "bpf/file_program.h"
#include "ext2/ext2_fs.h"
#include "iomap/engine.h"

namespace iomapfs::bpf {
namespace {

int Main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s IMAGE PATH [--load]\n", argv[0]);
    return 2;
  }
  const bool load = argc > 3 && std::strcmp(argv[3], "--load") == 0;
  std::string why;
  auto fs = ext2::Ext2Fs::Open(argv[1], ext2::OpenOptions{}, &why);
  if (!fs) {
    std::fprintf(stderr, "%s: %s (%s)\n", argv[1], std::strerror(fs.error()), why.c_str());
    return 1;
  }
  iomap::Engine engine(**fs);
  std::vector<iomap::Mapping> mappings;
  ext2_ino_t ino = 0;
  {
    ext2::Guard g = (*fs)->Lock();
    errcode_t err = ext2fs_namei(g.fs(), EXT2_ROOT_INO, EXT2_ROOT_INO, argv[2], &ino);
    if (err != 0) {
      std::fprintf(stderr, "%s: %s\n", argv[2], std::strerror(ext2::ErrnoFromErrcode(err)));
      return 1;
    }
    auto ms = engine.MapRange(g, Ino(ino), 0, MaxEnd((*fs)->block_size()), 0);
    if (!ms) {
      std::fprintf(stderr, "mapping inode %u: %s\n", ino, std::strerror(ms.error()));
      return 1;
    }
    mappings = std::move(*ms);
  }
  const uint32_t bs = (*fs)->block_size();
  auto map = BuildFileMap(ino, bs, 1, mappings);
  std::printf("inode %u, block size %u, %zu mappings\n", ino, bs, mappings.size());
  if (!map) {
    std::printf("strategy: none (%s)\n",
                map.error() == ENOTSUP ? "inline data" : std::strerror(map.error()));
    return 0;
  }
  for (size_t i = 0; i < map->intervals.size() && i < 64; ++i) {
    std::printf("  %s\n", iomap::ToString(map->intervals[i]).c_str());
  }
  if (map->intervals.size() > 64) std::printf("  ... %zu intervals\n", map->intervals.size());
  std::string reason;
  Strategy s = Choose(*map, CodegenOptions{}, &reason);
  std::printf("strategy: %s (%s)\n", StrategyName(s), reason.c_str());
  if (s == Strategy::kNone) return 0;
  if (s == Strategy::kMapSearch) {
    std::printf("map: capacity %u intervals, %" PRIu64 " bytes (map fd shown as -1)\n",
                MapLayout::ForIntervals(map->intervals.size()).capacity,
                MapLayout::ForIntervals(map->intervals.size()).value_bytes());
  }
  auto gen = Generate(*map, 1, s, -1);
  if (!gen) {
    std::fprintf(stderr, "codegen failed: %s\n", std::strerror(gen.error()));
    return 1;
  }
  std::printf("instructions: %zu\n%s", gen->insns.size(), Disassemble(gen->insns).c_str());
  if (load) {
    auto prog = FileProgram::BuildWith(*map, 1, s, &reason);
    if (!prog) {
      std::printf("load: failed: %s\n", reason.c_str());
      return 1;
    }
    auto info = GetProgInfo(prog->fd());
    std::printf("load: ok in %" PRIu64 " us; verifier processed %u insns; JIT %u bytes\n",
                prog->load_ns() / 1000, info ? info->verified_insns : 0,
                info ? info->jited_bytes : 0);
  }
  return 0;
}

}  // namespace
}  // namespace iomapfs::bpf

int main(int argc, char** argv) { return iomapfs::bpf::Main(argc, argv); }
