#include "bpf/struct_ops.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <algorithm>
#include <atomic>
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

struct BtfDeleter {
  void operator()(btf* b) const { btf__free(b); }
};

}  // namespace

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

Result<std::optional<StructOpsLayout>> DetectStructOps() {
  static std::atomic<bool> logged{false};
  std::unique_ptr<btf, BtfDeleter> vmlinux(btf__load_vmlinux_btf());
  std::optional<StructOpsLayout> layout;
  const char* why = "the kernel has no BTF";
  if (vmlinux != nullptr) {
    IOMAPFS_ASSIGN_OR_RETURN(layout, DescribeStructOps(vmlinux.get()));
    why = "kernel BTF has no struct fuse_iomap_bpf_ops";
  }
  if (!layout && !logged.exchange(true)) {
    LOG_INFO("bpf: %s (spec §13, not merged): iomap_begin programs run by the server only", why);
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
  auto gen = GenerateDispatcher(maps, Abi::kStructOps, layout.nodeid_kfunc_id);
  if (!gen) return fail("dispatcher codegen", gen.error());
  StructOpsLink link;
  LoadOptions lo;
  lo.type = static_cast<bpf_prog_type>(kProgTypeStructOps);
  lo.name = "iomapfs_begin";
  lo.attach_btf_id = layout.ops_type_id;
  lo.expected_attach_type = layout.begin_member_index;
  std::string log;
  auto prog = LoadProgram(gen->insns, lo, &log);
  if (!prog) {
    if (reason != nullptr) *reason = "struct_ops program: " + log;
    return Unexpected(prog.error());
  }
  link.prog_ = std::move(*prog);
  LIBBPF_OPTS(bpf_map_create_opts, mo);
  mo.btf_vmlinux_value_type_id = layout.value_type_id;
  mo.map_flags = kBpfFLink;
  int map_fd = bpf_map_create(BPF_MAP_TYPE_STRUCT_OPS, "iomapfs_ops", 4, layout.value_size, 1, &mo);
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
