#include "bpf/dispatcher.h"

#include <bpf/bpf.h>

#include <bit>
#include <cstring>

#include "base/log.h"

namespace iomapfs::bpf {

Result<Dispatcher> Dispatcher::Create(const DispatcherOptions& options, std::string* reason) {
  auto fail = [&](const std::string& what, int err) {
    if (reason != nullptr && reason->empty()) *reason = what + ": " + std::strerror(err);
    return Unexpected(err);
  };
  Dispatcher d;
  d.options_ = options;
  auto index =
      CreateMap(BPF_MAP_TYPE_HASH, 8, sizeof(DispatchEntry), options.max_files, 0, "iomapfs_index");
  if (!index) return fail("index map", index.error());
  d.index_ = std::move(*index);
  if (options.direct_nodeids > kMaxDirectNodeids) return fail("direct_nodeids", EINVAL);
  if (options.direct_nodeids > 0) {
    auto direct = CreateMap(BPF_MAP_TYPE_ARRAY, 4, sizeof(DispatchEntry), options.direct_nodeids, 0,
                            "iomapfs_direct");
    if (!direct) return fail("direct index map", direct.error());
    d.direct_ = std::move(*direct);
  }
  DispatcherMaps maps;
  maps.index_fd = d.index_.get();
  maps.direct_fd = d.direct_.get();
  maps.direct_nodeids = options.direct_nodeids;
  for (uint32_t c = options.min_log2_capacity; c <= options.max_log2_capacity; ++c) {
    MapLayout layout;
    layout.capacity = 1u << c;
    // The template fixes the inner maps' value size, which is what the verifier bounds the
    // search with.
    auto tmpl = CreateMap(BPF_MAP_TYPE_ARRAY, 4, static_cast<uint32_t>(layout.value_bytes()), 1,
                          BPF_F_MMAPABLE, "iomapfs_tmpl");
    if (!tmpl) return fail("inner map template", tmpl.error());
    auto outer = CreateMapOfMaps(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, options.max_files, tmpl->get(),
                                 "iomapfs_class");
    if (!outer) return fail("map of maps", outer.error());
    maps.classes.emplace_back(c, outer->get());
    d.classes_.push_back(std::move(*outer));
  }
  if (options.arith_slots > 0) {
    if (!std::has_single_bit(options.arith_slots)) return fail("arith_slots", EINVAL);
    const uint64_t bytes = uint64_t{options.arith_slots} * ArithSlot::kBytes;
    auto t = CreateMap(BPF_MAP_TYPE_ARRAY, 4, static_cast<uint32_t>(bytes), 1, BPF_F_MMAPABLE,
                       "iomapfs_arith");
    if (!t) return fail("arithmetic table", t.error());
    d.arith_ = std::move(*t);
    auto v = MappedValue::Map(d.arith_.get(), bytes);
    if (!v) return fail("arithmetic table mmap", v.error());
    d.arith_value_ = std::move(*v);
    for (uint32_t i = options.arith_slots; i > 0; --i) d.free_slots_.push_back(i - 1);
    maps.arith_fd = d.arith_.get();
    maps.arith_slots = options.arith_slots;
  }
  for (uint32_t i = options.max_files; i > 0; --i) d.free_map_slots_.push_back(i - 1);
  IOMAPFS_ASSIGN_OR_RETURN(Generated gen, GenerateDispatcher(maps));
  d.insns_ = std::move(gen.insns);
  std::string log;
  LoadOptions lo;
  lo.name = "iomapfs_disp";
  auto prog = LoadProgram(d.insns_, lo, &log);
  if (!prog) {
    if (reason != nullptr) {
      *reason =
          std::string("dispatcher failed to load: ") + std::strerror(prog.error()) + "; " + log;
    }
    return Unexpected(prog.error());
  }
  d.prog_ = std::move(*prog);
  return d;
}

Result<bool> Dispatcher::AttachHook(int fuse_fd, std::string* reason) {
  IOMAPFS_ASSIGN_OR_RETURN(std::optional<StructOpsLayout> layout, DetectStructOps());
  if (!layout) return false;
  IOMAPFS_ASSIGN_OR_RETURN(hook_, StructOpsLink::Attach(*layout, Maps(), fuse_fd, reason));
  return true;
}

DispatcherMaps Dispatcher::Maps() const {
  DispatcherMaps maps;
  maps.index_fd = index_.get();
  maps.direct_fd = direct_.get();
  maps.direct_nodeids = options_.direct_nodeids;
  for (size_t i = 0; i < classes_.size(); ++i) {
    maps.classes.emplace_back(options_.min_log2_capacity + static_cast<uint32_t>(i),
                              classes_[i].get());
  }
  if (arith_.get() >= 0) {
    maps.arith_fd = arith_.get();
    maps.arith_slots = options_.arith_slots;
  }
  return maps;
}

bool Dispatcher::IsArithmetic(uint64_t nodeid) const {
  auto it = files_.find(nodeid);
  return it != files_.end() && it->second.log2_capacity == kArithmeticClass;
}

Result<uint64_t> Dispatcher::InstallArithmetic(const FileMap& map, const StrideShape& shape) {
  const uint64_t nodeid = map.nodeid;
  auto it = files_.find(nodeid);
  if (it != files_.end() && it->second.log2_capacity == kArithmeticClass) {
    // Rewritten in place: readers see the old shape, the new one, or fall back.
    PublishArithSlot(map, shape, it->second.seq, Slot(it->second.slot));
    ++stats_.in_place_updates;
    Touch(nodeid);
    return it->second.seq;
  }
  if (free_slots_.empty()) return Unexpected(ENOSPC);
  File f;
  f.log2_capacity = kArithmeticClass;
  f.slot = free_slots_.back();
  f.seq = next_seq_++;
  // The slot is written before the index names it.
  PublishArithSlot(map, shape, f.seq, Slot(f.slot));
  DispatchEntry e;
  e.log2_capacity = kArithmeticClass;
  e.slot = f.slot;
  e.seq = f.seq;
  if (auto w = WriteEntry(nodeid, e); !w) {
    ++stats_.refused;
    return Unexpected(w.error());
  }
  free_slots_.pop_back();
  if (it != files_.end()) Forget(nodeid, kArithmeticClass, /*keep_map_slot=*/false);
  lru_.push_front(nodeid);
  f.lru = lru_.begin();
  const uint64_t seq = f.seq;
  files_.emplace(nodeid, std::move(f));
  ++stats_.installs;
  ++stats_.arithmetic;
  Evict(nodeid);
  return seq;
}

void Dispatcher::Forget(uint64_t nodeid, uint32_t new_log2, bool keep_map_slot) {
  auto it = files_.find(nodeid);
  if (it == files_.end()) return;
  File& f = it->second;
  if (f.log2_capacity == kArithmeticClass) {
    // A reader still on the slot sees its seqcount move or another file sequence number.
    free_slots_.push_back(f.slot);
  } else {
    if (f.log2_capacity != new_log2) {
      bpf_map_delete_elem(classes_[f.log2_capacity - options_.min_log2_capacity].get(), &f.slot);
    }
    if (!keep_map_slot) free_map_slots_.push_back(f.slot);
  }
  map_bytes_ -= f.value.size();
  lru_.erase(f.lru);
  files_.erase(it);
}

Result<uint64_t> Dispatcher::Install(const FileMap& map) {
  const uint64_t nodeid = map.nodeid;
  StrideShape shape;
  if (arith_.get() >= 0 && DetectStride(map, &shape)) {
    auto seq = InstallArithmetic(map, shape);
    if (seq || seq.error() != ENOSPC) return seq;
    // No free slot: the file gets a map like any other.
  }
  const uint32_t log2 = std::max<uint32_t>(
      options_.min_log2_capacity, static_cast<uint32_t>(std::countr_zero(
                                      MapLayout::ForIntervals(map.intervals.size()).capacity)));
  if (log2 > options_.max_log2_capacity || !MapLayout::Encodable(map)) {
    ++stats_.refused;
    Remove(nodeid);
    return Unexpected(E2BIG);
  }
  MapLayout layout;
  layout.capacity = 1u << log2;
  auto it = files_.find(nodeid);
  if (it != files_.end() && it->second.log2_capacity == log2 && log2 != kArithmeticClass &&
      ImageMatches(it->second.value.data(), map)) {
    // Same class: new extents go to the inactive buffer, readers never see a half-written map.
    PublishImage(map, layout, it->second.value.data());
    ++stats_.in_place_updates;
    Touch(nodeid);
    return it->second.seq;
  }
  if (layout.value_bytes() > options_.budget.max_map_bytes) {
    ++stats_.refused;
    Remove(nodeid);
    return Unexpected(ENOSPC);
  }
  // The file's index in its class's ARRAY_OF_MAPS: kept while it has a map.
  const bool had_map = it != files_.end() && it->second.log2_capacity != kArithmeticClass;
  if (!had_map && free_map_slots_.empty()) {
    ++stats_.refused;
    return Unexpected(ENOSPC);
  }
  File f;
  f.log2_capacity = log2;
  f.slot = had_map ? it->second.slot : free_map_slots_.back();
  f.seq = next_seq_++;
  auto m = CreateMap(BPF_MAP_TYPE_ARRAY, 4, static_cast<uint32_t>(layout.value_bytes()), 1,
                     BPF_F_MMAPABLE, "iomapfs_file");
  if (!m) {
    ++stats_.refused;
    LOG_WARNING("bpf: node %llu stays on the server path: map creation failed: %s",
                static_cast<unsigned long long>(nodeid), std::strerror(m.error()));
    return Unexpected(m.error());
  }
  f.map = std::move(*m);
  IOMAPFS_ASSIGN_OR_RETURN(f.value, MappedValue::Map(f.map.get(), layout.value_bytes()));
  WriteInitialImage(map, layout, f.value.data(), f.seq);
  // Order: the new inner map goes into its class before the index names the class and seq, and a
  // file that moves class leaves its old class last. A reader between the steps sees either no
  // entry or mismatched sequence numbers, and falls back.
  const int outer = classes_[log2 - options_.min_log2_capacity].get();
  uint32_t inner_fd = static_cast<uint32_t>(f.map.get());
  if (bpf_map_update_elem(outer, &f.slot, &inner_fd, BPF_ANY) != 0) {
    int err = errno;
    ++stats_.refused;
    LOG_WARNING("bpf: node %llu stays on the server path: map-of-maps update failed: %s",
                static_cast<unsigned long long>(nodeid), std::strerror(err));
    return Unexpected(err);
  }
  DispatchEntry e;
  e.log2_capacity = log2;
  e.slot = f.slot;
  e.seq = f.seq;
  if (auto w = WriteEntry(nodeid, e); !w) {
    bpf_map_delete_elem(outer, &f.slot);
    ++stats_.refused;
    return Unexpected(w.error());
  }
  if (!had_map) free_map_slots_.pop_back();
  if (it != files_.end()) Forget(nodeid, log2, /*keep_map_slot=*/had_map);
  map_bytes_ += f.value.size();
  lru_.push_front(nodeid);
  f.lru = lru_.begin();
  const uint64_t seq = f.seq;
  files_.emplace(nodeid, std::move(f));
  ++stats_.installs;
  Evict(nodeid);
  return seq;
}

void Dispatcher::Evict(uint64_t keep) {
  while (
      (files_.size() > options_.budget.max_files || map_bytes_ > options_.budget.max_map_bytes) &&
      !lru_.empty()) {
    uint64_t victim = lru_.back();
    if (victim == keep) break;
    Remove(victim);
    ++stats_.evictions;
  }
}

bool Dispatcher::Remove(uint64_t nodeid) {
  auto it = files_.find(nodeid);
  if (it == files_.end()) return false;
  // Index first: from then on lookups of this node fall back.
  EraseEntry(nodeid);
  Forget(nodeid, kArithmeticClass, /*keep_map_slot=*/false);  // (its class entry goes too)
  return true;
}

void Dispatcher::Touch(uint64_t nodeid) {
  auto it = files_.find(nodeid);
  if (it == files_.end()) return;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
}

Result<void> Dispatcher::WriteEntry(uint64_t nodeid, const DispatchEntry& e) {
  int r;
  if (Direct(nodeid)) {
    const uint32_t key = static_cast<uint32_t>(nodeid);
    r = bpf_map_update_elem(direct_.get(), &key, &e, BPF_ANY);
  } else {
    r = bpf_map_update_elem(index_.get(), &nodeid, &e, BPF_ANY);
  }
  if (r != 0) return Unexpected(errno);
  return {};
}

void Dispatcher::EraseEntry(uint64_t nodeid) {
  if (Direct(nodeid)) {
    // An ARRAY element cannot be deleted: sequence number 0 names no file.
    const uint32_t key = static_cast<uint32_t>(nodeid);
    const DispatchEntry none;
    bpf_map_update_elem(direct_.get(), &key, &none, BPF_ANY);
  } else {
    bpf_map_delete_elem(index_.get(), &nodeid);
  }
}

Result<DispatchEntry> Dispatcher::IndexEntry(uint64_t nodeid) const {
  DispatchEntry e;
  int r;
  if (Direct(nodeid)) {
    const uint32_t key = static_cast<uint32_t>(nodeid);
    r = bpf_map_lookup_elem(direct_.get(), &key, &e);
    if (r == 0 && e.seq == 0) return Unexpected(ENOENT);
  } else {
    r = bpf_map_lookup_elem(index_.get(), &nodeid, &e);
  }
  if (r != 0) return Unexpected(errno);
  return e;
}

Result<void> Dispatcher::WriteIndexEntryForTesting(uint64_t nodeid, const DispatchEntry& e) {
  return WriteEntry(nodeid, e);
}

uint64_t Dispatcher::SeqOf(uint64_t nodeid) const {
  auto it = files_.find(nodeid);
  return it == files_.end() ? 0 : it->second.seq;
}

Result<Answer> Dispatcher::Run(const BeginCtx& ctx) const {
  BeginCtx c = ctx;
  IOMAPFS_ASSIGN_OR_RETURN(uint32_t ret, TestRun(prog_.get(), &c, sizeof(c)));
  Answer a;
  a.ret = ret;
  if (ret == kFibHandled) a.out = c.out;
  return a;
}

}  // namespace iomapfs::bpf
