#include "bpf/kernel.h"

#include <bpf/bpf.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <utility>
#include <vector>

namespace iomapfs::bpf {

Result<UniqueFd> LoadProgram(std::span<const bpf_insn> insns, const LoadOptions& options,
                             std::string* verifier_log) {
  LIBBPF_OPTS(bpf_prog_load_opts, opts);
  opts.prog_flags = options.sleepable ? BPF_F_SLEEPABLE : 0;
  opts.attach_btf_id = options.attach_btf_id;
  opts.expected_attach_type = static_cast<bpf_attach_type>(options.expected_attach_type);
  opts.attach_btf_obj_fd = static_cast<uint32_t>(options.attach_btf_obj_fd);
  opts.fd_array = options.fd_array.empty() ? nullptr : options.fd_array.data();
  int fd = bpf_prog_load(options.type, options.name, "GPL", insns.data(), insns.size(), &opts);
  if (fd >= 0) return UniqueFd(fd);
  int err = errno;
  if (verifier_log != nullptr) {
    // Load again with a log: the verifier says why.
    std::vector<char> buf(1 << 20);
    LIBBPF_OPTS(bpf_prog_load_opts, again);
    again.prog_flags = opts.prog_flags;
    again.attach_btf_id = opts.attach_btf_id;
    again.expected_attach_type = opts.expected_attach_type;
    again.attach_btf_obj_fd = opts.attach_btf_obj_fd;
    again.fd_array = opts.fd_array;
    again.log_buf = buf.data();
    again.log_size = static_cast<uint32_t>(buf.size());
    again.log_level = 1;
    int fd2 = bpf_prog_load(options.type, options.name, "GPL", insns.data(), insns.size(), &again);
    if (fd2 >= 0) close(fd2);
    std::string log(buf.data(), strnlen(buf.data(), buf.size()));
    constexpr size_t kTail = 2000;
    *verifier_log = log.size() > kTail ? log.substr(log.size() - kTail) : log;
  }
  return Unexpected(err);
}

Result<UniqueFd> CreateMap(bpf_map_type type, uint32_t key_size, uint32_t value_size,
                           uint32_t max_entries, uint32_t flags, const char* name) {
  LIBBPF_OPTS(bpf_map_create_opts, opts);
  opts.map_flags = flags;
  int fd = bpf_map_create(type, name, key_size, value_size, max_entries, &opts);
  if (fd < 0) return Unexpected(errno);
  return UniqueFd(fd);
}

Result<UniqueFd> CreateMapOfMaps(bpf_map_type type, uint32_t key_size, uint32_t max_entries,
                                 int inner_fd, const char* name) {
  LIBBPF_OPTS(bpf_map_create_opts, opts);
  opts.inner_map_fd = static_cast<uint32_t>(inner_fd);
  int fd = bpf_map_create(type, name, key_size, 4, max_entries, &opts);
  if (fd < 0) return Unexpected(errno);
  return UniqueFd(fd);
}

Result<uint32_t> TestRun(int prog_fd, void* ctx, size_t ctx_size) {
  LIBBPF_OPTS(bpf_test_run_opts, opts);
  opts.ctx_in = ctx;
  opts.ctx_size_in = static_cast<uint32_t>(ctx_size);
  if (bpf_prog_test_run_opts(prog_fd, &opts) != 0) return Unexpected(errno);
  return opts.retval;
}

Result<ProgInfo> GetProgInfo(int prog_fd) {
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) return Unexpected(errno);
  ProgInfo out;
  out.id = info.id;
  out.xlated_insns = info.xlated_prog_len / sizeof(bpf_insn);
  out.jited_bytes = info.jited_prog_len;
  out.verified_insns = info.verified_insns;
  out.run_cnt = info.run_cnt;
  out.run_time_ns = info.run_time_ns;
  return out;
}

Result<UniqueFd> EnableStats() {
  int fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (fd < 0) return Unexpected(errno);
  return UniqueFd(fd);
}

MappedValue::~MappedValue() {
  if (addr_ != nullptr) munmap(addr_, size_);
}

MappedValue::MappedValue(MappedValue&& o) noexcept
    : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}

MappedValue& MappedValue::operator=(MappedValue&& o) noexcept {
  if (this != &o) {
    if (addr_ != nullptr) munmap(addr_, size_);
    addr_ = std::exchange(o.addr_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

Result<MappedValue> MappedValue::Map(int map_fd, size_t bytes) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t len = (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
  if (p == MAP_FAILED) return Unexpected(errno);
  MappedValue v;
  v.addr_ = p;
  v.size_ = len;
  return v;
}

bool SyscallProgramsAvailable(std::string* why) {
  // r0 = 0; exit
  const bpf_insn prog[] = {
      {BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0},
      {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
  };
  std::string log;
  auto fd = LoadProgram(prog, LoadOptions{}, &log);
  if (fd) return true;
  if (why != nullptr) {
    *why = std::string("cannot load a sleepable BPF_PROG_TYPE_SYSCALL program: ") +
           std::strerror(fd.error()) + (geteuid() != 0 ? " (not root)" : "") +
           (log.empty() ? "" : ": " + log);
  }
  return false;
}

}  // namespace iomapfs::bpf
