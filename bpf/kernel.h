// Kernel BPF access: loading raw programs, creating maps, BPF_PROG_TEST_RUN, statistics, and
// move-only owners for what the kernel hands back (program and map fds, mmap'ed map values).
//
// On this project's kernels the per-file programs load as BPF_PROG_TYPE_SYSCALL, which must be
// sleepable (BPF_F_SLEEPABLE) and whose test run copies the context back into ctx_in
// (notes/bpf-codegen-findings.md).
// Thread-safety: free functions are thread-safe; the owner classes are not synchronized.
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <span>
#include <string>

#include "base/result.h"
#include "base/unique_fd.h"

namespace iomapfs::bpf {

struct LoadOptions {
  bpf_prog_type type = BPF_PROG_TYPE_SYSCALL;
  bool sleepable = true;
  const char* name = "iomapfs";  // at most 15 characters
  // struct_ops only: the BTF id of the struct_ops type and the member index; the fd of the
  // module BTF object that holds the type (0: vmlinux).
  uint32_t attach_btf_id = 0;
  uint32_t expected_attach_type = 0;
  int attach_btf_obj_fd = 0;
  // The fds a kfunc call's `off` indexes (module BTF objects); empty: kfuncs are vmlinux's.
  std::span<const int> fd_array;
};

// Loads `insns` through the verifier and the JIT.
// Returns: the program fd.
// Errors: the bpf(2) errno (EINVAL, EACCES verifier rejection; E2BIG; EPERM without CAP_BPF).
// On failure *verifier_log (if not null) gets the tail of the verifier's log, from a second load
// with logging on (the first load runs without a log so that success costs no formatting).
Result<UniqueFd> LoadProgram(std::span<const bpf_insn> insns, const LoadOptions& options,
                             std::string* verifier_log);

// Creates a map. Errors: the bpf(2) errno (EINVAL, E2BIG, ENOMEM, EPERM).
Result<UniqueFd> CreateMap(bpf_map_type type, uint32_t key_size, uint32_t value_size,
                           uint32_t max_entries, uint32_t flags, const char* name);

// Creates a BPF_MAP_TYPE_HASH_OF_MAPS / ARRAY_OF_MAPS whose values are maps like `inner_fd`.
// Errors: the bpf(2) errno.
Result<UniqueFd> CreateMapOfMaps(bpf_map_type type, uint32_t key_size, uint32_t max_entries,
                                 int inner_fd, const char* name);

// Runs `prog_fd` once over the context `ctx` (BPF_PROG_TEST_RUN; for SYSCALL programs the
// context is copied back into ctx).
// Returns: the program's return value (r0). Errors: the bpf(2) errno.
Result<uint32_t> TestRun(int prog_fd, void* ctx, size_t ctx_size);

struct ProgInfo {
  uint32_t id = 0;
  uint32_t xlated_insns = 0;
  uint32_t jited_bytes = 0;
  uint32_t verified_insns = 0;  // instructions the verifier processed
  uint64_t run_cnt = 0;         // only counted while statistics are enabled
  uint64_t run_time_ns = 0;
};
Result<ProgInfo> GetProgInfo(int prog_fd);

// Turns on kernel BPF run-time statistics (BPF_ENABLE_STATS) for as long as the fd is open.
// Errors: EPERM, EBUSY.
Result<UniqueFd> EnableStats();

// An mmap of an array map's values (BPF_F_MMAPABLE). Move-only; unmaps on destruction.
class MappedValue {
 public:
  MappedValue() = default;
  ~MappedValue();
  MappedValue(MappedValue&& o) noexcept;
  MappedValue& operator=(MappedValue&& o) noexcept;
  MappedValue(const MappedValue&) = delete;
  MappedValue& operator=(const MappedValue&) = delete;

  // Maps `bytes` (rounded up to pages) of map `map_fd` read-write.
  // Errors: mmap(2)'s errno (EINVAL for a map without BPF_F_MMAPABLE).
  static Result<MappedValue> Map(int map_fd, size_t bytes);

  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  size_t size() const { return size_; }

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
};

// Whether this process can load a BPF_PROG_TYPE_SYSCALL program (root/CAP_BPF, BPF enabled).
// Returns: true, or false with the reason in *why.
bool SyscallProgramsAvailable(std::string* why);

}  // namespace iomapfs::bpf
