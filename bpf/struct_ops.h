// StructOps: the kernel hook of spec §13.2, the struct_ops type `fuse_iomap_bpf_ops` (Darrick
// Wong's Feb-2026 RFC), through which the kernel would run the dispatcher in place of the
// iomap_begin upcall instead of our BPF_PROG_TEST_RUN stand-in.
//
// Detection reads the kernel BTF at run time and finds the ops type, its kernel value wrapper
// `bpf_struct_ops_fuse_iomap_bpf_ops` and the kfunc `fuse_bpf_inode_nodeid` (the opaque-inode
// variant, patch 5): first in vmlinux BTF (/sys/kernel/btf/vmlinux; fuse built in), then in the
// fuse module's split BTF on top of it (/sys/kernel/btf/fuse, present while the module is
// loaded). A type found in module BTF is attached through the module's BTF object (the program's
// attach_btf_obj_fd, the map's value_type_btf_obj_fd, the kfunc call's fd_array index). Attachment
// follows §13.2: the dispatcher is loaded as BPF_PROG_TYPE_STRUCT_OPS for member iomap_begin
// (sleepable), a BPF_MAP_TYPE_STRUCT_OPS map (BPF_F_LINK) gets the ops value with the program fd in
// the iomap_begin slot, the server's /dev/fuse fd in `fuse_fd` and a name, and a BPF_STRUCT_OPS
// link registers it for that connection (EBADF not /dev/fuse, EOPNOTSUPP not iomap mode, EBUSY one
// already attached). Written from the spec and UNTESTED against a kernel: no kernel available
// here has the type (the RFC is not merged); unit tests cover the layout and value building over
// a synthetic BTF shaped like the RFC's.
//
// Thread-safety: DetectStructOps is thread-safe (it logs the absence once per process); the
// StructOpsLink owner is not synchronized. Move-only; owns the program, map and link fds.
#pragma once

#include <cstdint>
#include <memory>
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
  int32_t nodeid_kfunc_id = 0;         // 0: the kfunc is absent (patches 1-4); attach is refused
  std::string btf_object = "vmlinux";  // where the types are: "vmlinux" or the module's name
};

inline constexpr const char* kKernelBtfDir = "/sys/kernel/btf";
inline constexpr const char* kFuseModule = "fuse";

struct BtfDeleter {
  void operator()(btf* b) const;
};
using BtfPtr = std::unique_ptr<btf, BtfDeleter>;

// What FindKernelStruct looked at and found.
struct KernelStructSearch {
  int32_t type_id = -1;  // -1: absent from every object searched
  std::string found_in;  // "vmlinux" or the module name; empty if absent
  // The BTF objects searched, in order, each with its file and what became of it, e.g.
  // "vmlinux (/sys/kernel/btf/vmlinux), fuse (/sys/kernel/btf/fuse: absent: built in or not
  // loaded)".
  std::string searched;
  BtfPtr vmlinux;
  BtfPtr module;  // split on `vmlinux`; null if the module has no BTF file
  // The BTF that holds the type (module if found there, else vmlinux).
  const btf* holder() const { return found_in == "vmlinux" ? vmlinux.get() : module.get(); }
};

// Looks struct `name` up in the kernel's BTF: vmlinux (`btf_dir`/vmlinux) first, then the split
// BTF of `module` (`btf_dir`/<module>, on top of vmlinux), which exists only while that module is
// loaded (a built-in module's types are in vmlinux).
// Returns: the search; type_id -1 if the struct is in neither (searched says where it looked).
// Errors: ENOENT no vmlinux BTF; the errno of a BTF file that exists but cannot be read or
// parsed (EACCES, EINVAL, EPROTO...).
Result<KernelStructSearch> FindKernelStruct(std::string_view name, std::string_view module,
                                            const std::string& btf_dir = kKernelBtfDir);

// Finds the §13.2 types in `btf`.
// Returns: the layout; std::nullopt if `btf` has no `fuse_iomap_bpf_ops`.
// Errors: EPROTO the type exists but not as §13.2 describes it (no value wrapper, a missing
// member or one of the wrong size).
Result<std::optional<StructOpsLayout>> DescribeStructOps(const btf* btf);

// Finds the hook in the kernel's BTF (FindKernelStruct over vmlinux and the fuse module) and
// describes it. The first "absent" answer is logged (once per process): the server then keeps
// the server/test-run path.
// Returns: the layout, or std::nullopt (absent, or the kernel has no BTF at all); *reason (if not
// null) says which BTF objects were searched and what was found.
// Errors: EPROTO as DescribeStructOps; a BTF file that cannot be parsed (FindKernelStruct).
Result<std::optional<StructOpsLayout>> DetectStructOps(std::string* reason = nullptr,
                                                       const std::string& btf_dir = kKernelBtfDir);

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
