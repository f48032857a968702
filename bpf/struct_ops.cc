#include "bpf/struct_ops.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <memory>

#include "base/log.h"
#include "bpf/kernel.h"

namespace iomapfs::bpf {
namespace {

// uapi values newer than the pinned linux/bpf.h (Linux 6.4).
constexpr uint32_t kBpfFLink = 1u << 13;     // BPF_F_LINK
constexpr uint32_t kAttachStructOps = 44;    // BPF_STRUCT_OPS (enum bpf_attach_type)
constexpr uint32_t kProgTypeStructOps = 27;  // BPF_PROG_TYPE_STRUCT_OPS
static_assert(kProgTypeStructOps == BPF_PROG_TYPE_STRUCT_OPS);

struct Member {
  uint32_t index = 0;
  uint32_t offset = 0;  // bytes
  int64_t size = -1;
};

std::optional<Member> FindMember(const btf* b, const btf_type* t, const char* name) {
  const btf_member* m = btf_members(t);
  for (uint32_t i = 0; i < btf_vlen(t); ++i, ++m) {
    if (std::strcmp(btf__name_by_offset(b, m->name_off), name) != 0) continue;
    Member out;
    out.index = i;
    out.offset = btf_member_bit_offset(t, i) / 8;
    out.size = btf__resolve_size(b, m->type);
    return out;
  }
  return std::nullopt;
}

// Reads a raw BTF file: vmlinux (base == null) or a module's split BTF on top of `base`.
// Returns: the BTF, or null if the file does not exist. Errors: libbpf's errno.
Result<BtfPtr> ParseBtfFile(const std::string& path, btf* base) {
  if (access(path.c_str(), F_OK) != 0) return BtfPtr();
  // The kernel's files are raw BTF (no ELF container).
  BtfPtr b(base == nullptr ? btf__parse_raw(path.c_str())
                           : btf__parse_raw_split(path.c_str(), base));
  if (b == nullptr) return Unexpected(errno != 0 ? errno : EINVAL);
  return b;
}

// Returns: an fd of the loaded kernel BTF object named `module`. Errors: ENOENT none.
Result<UniqueFd> ModuleBtfFd(const std::string& module) {
  uint32_t id = 0;
  while (bpf_btf_get_next_id(id, &id) == 0) {
    UniqueFd fd(bpf_btf_get_fd_by_id(id));
    if (fd.get() < 0) continue;
    char name[64] = {};
    bpf_btf_info info{};
    info.name = reinterpret_cast<uintptr_t>(name);
    info.name_len = sizeof(name);
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) == 0 && module == name) return fd;
  }
  return Unexpected(ENOENT);
}

// BPF_MAP_CREATE's attributes through value_type_btf_obj_fd (Linux 6.9), newer than the pinned
// linux/bpf.h: a struct_ops map whose value type lives in module BTF names that BTF object.
struct MapCreateAttr {
  uint32_t map_type = 0;
  uint32_t key_size = 0;
  uint32_t value_size = 0;
  uint32_t max_entries = 0;
  uint32_t map_flags = 0;
  uint32_t inner_map_fd = 0;
  uint32_t numa_node = 0;
  char map_name[16] = {};
  uint32_t map_ifindex = 0;
  uint32_t btf_fd = 0;
  uint32_t btf_key_type_id = 0;
  uint32_t btf_value_type_id = 0;
  uint32_t btf_vmlinux_value_type_id = 0;
  uint64_t map_extra = 0;
  int32_t value_type_btf_obj_fd = 0;
  int32_t map_token_fd = 0;
};
static_assert(offsetof(MapCreateAttr, map_extra) == 64 && sizeof(MapCreateAttr) == 80);
constexpr uint32_t kBpfFVtypeBtfObjFd = 1u << 15;  // BPF_F_VTYPE_BTF_OBJ_FD

}  // namespace

void BtfDeleter::operator()(btf* b) const { btf__free(b); }

Result<KernelStructSearch> FindKernelStruct(std::string_view name, std::string_view module,
                                            const std::string& btf_dir) {
  KernelStructSearch r;
  const std::string type(name);
  const std::string vmlinux_path = btf_dir + "/vmlinux";
  IOMAPFS_ASSIGN_OR_RETURN(r.vmlinux, ParseBtfFile(vmlinux_path, nullptr));
  if (r.vmlinux == nullptr) return Unexpected(ENOENT);
  r.searched = "vmlinux (" + vmlinux_path + ")";
  int32_t id = btf__find_by_name_kind(r.vmlinux.get(), type.c_str(), BTF_KIND_STRUCT);
  if (id > 0) {
    r.type_id = id;
    r.found_in = "vmlinux";
    return r;
  }
  const std::string mod(module);
  const std::string module_path = btf_dir + "/" + mod;
  IOMAPFS_ASSIGN_OR_RETURN(r.module, ParseBtfFile(module_path, r.vmlinux.get()));
  if (r.module == nullptr) {
    r.searched += ", " + mod + " (" + module_path + ": absent: built in or not loaded)";
    return r;
  }
  r.searched += ", " + mod + " (" + module_path + ", split on vmlinux)";
  // A split BTF's lookups cover its base too; only ids past the base are the module's own.
  id = btf__find_by_name_kind(r.module.get(), type.c_str(), BTF_KIND_STRUCT);
  if (id > 0) {
    r.type_id = id;
    r.found_in = mod;
  }
  return r;
}

Result<std::optional<StructOpsLayout>> DescribeStructOps(const btf* b) {
  const int32_t ops = btf__find_by_name_kind(b, kStructOpsName, BTF_KIND_STRUCT);
  if (ops < 0) return std::optional<StructOpsLayout>();
  const int32_t value = btf__find_by_name_kind(b, kStructOpsValueName, BTF_KIND_STRUCT);
  if (value < 0) return Unexpected(EPROTO);
  StructOpsLayout l;
  l.ops_type_id = static_cast<uint32_t>(ops);
  l.value_type_id = static_cast<uint32_t>(value);
  const int64_t vsize = btf__resolve_size(b, l.value_type_id);
  if (vsize <= 0) return Unexpected(EPROTO);
  l.value_size = static_cast<uint32_t>(vsize);
  auto data = FindMember(b, btf__type_by_id(b, l.value_type_id), "data");
  const btf_type* t = btf__type_by_id(b, l.ops_type_id);
  auto begin = FindMember(b, t, "iomap_begin");
  auto fuse_fd = FindMember(b, t, "fuse_fd");
  auto name = FindMember(b, t, "name");
  if (!data || !begin || !fuse_fd || !name || begin->size != 8 || fuse_fd->size != 4 ||
      name->size <= 1 || data->offset + btf__resolve_size(b, l.ops_type_id) > l.value_size) {
    return Unexpected(EPROTO);
  }
  l.data_offset = data->offset;
  l.begin_member_index = begin->index;
  l.begin_offset = begin->offset;
  l.fuse_fd_offset = fuse_fd->offset;
  l.name_offset = name->offset;
  l.name_size = static_cast<uint32_t>(name->size);
  const int32_t kfunc = btf__find_by_name_kind(b, kNodeidKfuncName, BTF_KIND_FUNC);
  l.nodeid_kfunc_id = kfunc > 0 ? kfunc : 0;
  return std::optional<StructOpsLayout>(l);
}

Result<std::optional<StructOpsLayout>> DetectStructOps(std::string* reason,
                                                       const std::string& btf_dir) {
  static std::atomic<bool> logged{false};
  std::optional<StructOpsLayout> layout;
  std::string why;
  auto search = FindKernelStruct(kStructOpsName, kFuseModule, btf_dir);
  if (!search && search.error() == ENOENT) {
    why = "the kernel has no BTF (" + btf_dir + "/vmlinux)";
  } else if (!search) {
    return Unexpected(search.error());
  } else if (search->type_id < 0) {
    why = std::string("struct ") + kStructOpsName + " absent from kernel BTF; searched " +
          search->searched;
  } else {
    IOMAPFS_ASSIGN_OR_RETURN(layout, DescribeStructOps(search->holder()));
    layout->btf_object = search->found_in;
    why = std::string("struct ") + kStructOpsName + " found in " + search->found_in +
          " BTF; searched " + search->searched;
  }
  if (reason != nullptr) *reason = why;
  if (!layout && !logged.exchange(true)) {
    LOG_INFO("bpf: %s (spec §13, not merged): iomap_begin programs run by the server only",
             why.c_str());
  }
  return layout;
}

std::vector<uint8_t> BuildOpsValue(const StructOpsLayout& l, int begin_prog_fd, int fuse_fd,
                                   std::string_view name) {
  std::vector<uint8_t> v(l.value_size, 0);
  uint8_t* data = v.data() + l.data_offset;
  const uint64_t prog = static_cast<uint64_t>(begin_prog_fd);  // libbpf stores the fd as a u64
  std::memcpy(data + l.begin_offset, &prog, sizeof(prog));
  const int32_t fd = fuse_fd;
  std::memcpy(data + l.fuse_fd_offset, &fd, sizeof(fd));
  std::memcpy(data + l.name_offset, name.data(), std::min<size_t>(name.size(), l.name_size - 1));
  return v;
}

Result<StructOpsLink> StructOpsLink::Attach(const StructOpsLayout& layout,
                                            const DispatcherMaps& maps, int fuse_fd,
                                            std::string* reason) {
  auto fail = [&](const char* step, int err) {
    if (reason != nullptr) *reason = std::string(step) + ": " + std::strerror(err);
    return Unexpected(err);
  };
  if (layout.nodeid_kfunc_id == 0) return fail("no fuse_bpf_inode_nodeid kfunc", EOPNOTSUPP);
  // Types in module BTF: the program, the map and the kfunc call name the module's BTF object.
  const bool in_module = layout.btf_object != "vmlinux";
  UniqueFd module_btf;
  if (in_module) {
    auto fd = ModuleBtfFd(layout.btf_object);
    if (!fd) return fail("module BTF object", fd.error());
    module_btf = std::move(*fd);
  }
  const int fd_array[2] = {0, module_btf.get()};
  auto gen = GenerateDispatcher(maps, Abi::kStructOps, layout.nodeid_kfunc_id, in_module ? 1 : 0);
  if (!gen) return fail("dispatcher codegen", gen.error());
  StructOpsLink link;
  LoadOptions lo;
  lo.type = static_cast<bpf_prog_type>(kProgTypeStructOps);
  lo.name = "iomapfs_begin";
  lo.attach_btf_id = layout.ops_type_id;
  lo.expected_attach_type = layout.begin_member_index;
  if (in_module) {
    lo.attach_btf_obj_fd = module_btf.get();
    lo.fd_array = fd_array;
  }
  std::string log;
  auto prog = LoadProgram(gen->insns, lo, &log);
  if (!prog) {
    if (reason != nullptr) *reason = "struct_ops program: " + log;
    return Unexpected(prog.error());
  }
  link.prog_ = std::move(*prog);
  MapCreateAttr mo;
  mo.map_type = BPF_MAP_TYPE_STRUCT_OPS;
  mo.key_size = 4;
  mo.value_size = layout.value_size;
  mo.max_entries = 1;
  mo.map_flags = kBpfFLink | (in_module ? kBpfFVtypeBtfObjFd : 0);
  std::strncpy(mo.map_name, "iomapfs_ops", sizeof(mo.map_name) - 1);
  mo.btf_vmlinux_value_type_id = layout.value_type_id;
  mo.value_type_btf_obj_fd = in_module ? module_btf.get() : 0;
  int map_fd = static_cast<int>(syscall(__NR_bpf, BPF_MAP_CREATE, &mo, sizeof(mo)));
  if (map_fd < 0) return fail("struct_ops map", errno);
  link.map_ = UniqueFd(map_fd);
  std::vector<uint8_t> value = BuildOpsValue(layout, link.prog_.get(), fuse_fd, "iomapfs");
  const uint32_t zero = 0;
  if (bpf_map_update_elem(map_fd, &zero, value.data(), 0) != 0) {
    return fail("struct_ops map update", errno);
  }
  int link_fd = bpf_link_create(map_fd, 0, static_cast<bpf_attach_type>(kAttachStructOps), nullptr);
  if (link_fd < 0) return fail("struct_ops link (fuse_fd registration)", errno);
  link.link_ = UniqueFd(link_fd);
  return link;
}

}  // namespace iomapfs::bpf
