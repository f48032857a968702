// StructOps: the kernel hook of spec §13.2, the struct_ops type `fuse_iomap_bpf_ops` (Darrick
// Wong's Feb-2026 RFC), through which the kernel would run the dispatcher in place of the
// iomap_begin upcall instead of our BPF_PROG_TEST_RUN stand-in.
//
// Detection reads the kernel BTF at run time (/sys/kernel/btf/vmlinux: fuse built in) and finds
// the ops type, its kernel value wrapper `bpf_struct_ops_fuse_iomap_bpf_ops` and the kfunc
// `fuse_bpf_inode_nodeid` (the opaque-inode variant, patch 5). Attachment follows §13.2: the
// dispatcher is loaded as BPF_PROG_TYPE_STRUCT_OPS for member iomap_begin (sleepable), a
// BPF_MAP_TYPE_STRUCT_OPS map (BPF_F_LINK) gets the ops value with the program fd in the
// iomap_begin slot, the server's /dev/fuse fd in `fuse_fd` and a name, and a BPF_STRUCT_OPS link
// registers it for that connection (EBADF not /dev/fuse, EOPNOTSUPP not iomap mode, EBUSY one
// already attached). Written from the spec and UNTESTED against a kernel: no kernel available
// here has the type (the RFC is not merged); unit tests cover the layout and value building over
// a synthetic BTF shaped like the RFC's.
//
// Thread-safety: DetectStructOps is thread-safe (it logs the absence once per process); the
// StructOpsLink owner is not synchronized. Move-only; owns the program, map and link fds.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "bpf/codegen.h"

struct btf;

namespace iomapfs::bpf {

inline constexpr const char* kStructOpsName = "fuse_iomap_bpf_ops";
inline constexpr const char* kStructOpsValueName = "bpf_struct_ops_fuse_iomap_bpf_ops";
inline constexpr const char* kNodeidKfuncName = "fuse_bpf_inode_nodeid";

// Where things are in the kernel's ops value, from BTF.
struct StructOpsLayout {
  uint32_t ops_type_id = 0;    // struct fuse_iomap_bpf_ops
  uint32_t value_type_id = 0;  // struct bpf_struct_ops_fuse_iomap_bpf_ops
  uint32_t value_size = 0;
  uint32_t data_offset = 0;         // of member `data` (the ops struct) in the value
  uint32_t begin_member_index = 0;  // of `iomap_begin` in the ops struct (expected_attach_type)
  uint32_t begin_offset = 0;        // byte offsets inside the ops struct
  uint32_t fuse_fd_offset = 0;
  uint32_t name_offset = 0;
  uint32_t name_size = 0;
  int32_t nodeid_kfunc_id = 0;  // 0: the kfunc is absent (patches 1-4); attach is refused
};

// Finds the §13.2 types in `btf`.
// Returns: the layout; std::nullopt if `btf` has no `fuse_iomap_bpf_ops`.
// Errors: EPROTO the type exists but not as §13.2 describes it (no value wrapper, a missing
// member or one of the wrong size).
Result<std::optional<StructOpsLayout>> DescribeStructOps(const btf* btf);

// Loads the kernel's BTF (btf__load_vmlinux_btf) and describes the hook. The first "absent"
// answer is logged (once per process): the server then keeps the server/test-run path.
// Returns: the layout, or std::nullopt (absent, or the kernel has no BTF at all).
// Errors: EPROTO as DescribeStructOps.
Result<std::optional<StructOpsLayout>> DetectStructOps();

// The ops value to write into the struct_ops map: zeroes, the program fd in iomap_begin (as a
// u64, as libbpf does), `fuse_fd` and `name` (truncated to name_size - 1 bytes, NUL-terminated).
std::vector<uint8_t> BuildOpsValue(const StructOpsLayout& layout, int begin_prog_fd, int fuse_fd,
                                   std::string_view name);

class StructOpsLink {
 public:
  StructOpsLink() = default;
  StructOpsLink(StructOpsLink&&) = default;
  StructOpsLink& operator=(StructOpsLink&&) = default;

  // Generates the dispatcher over `maps` for Abi::kStructOps, loads it, and registers the ops
  // table for the connection of `fuse_fd` (see the header comment).
  // Errors: EOPNOTSUPP the kfunc is absent; the bpf(2) errno of the load, map update or link
  // (EBADF, EOPNOTSUPP, EBUSY from the fuse module); *reason says which step failed.
  static Result<StructOpsLink> Attach(const StructOpsLayout& layout, const DispatcherMaps& maps,
                                      int fuse_fd, std::string* reason);

  bool attached() const { return link_.get() >= 0; }

 private:
  UniqueFd prog_;
  UniqueFd map_;
  UniqueFd link_;
};

}  // namespace iomapfs::bpf
