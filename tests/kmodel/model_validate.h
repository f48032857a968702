// The kernel model's validation of mappings, written from spec/fuse-iomap-protocol.md §4.5 and
// §12.3 (the kernel's checks of BEGIN replies, BPF answers and UPSERTed mappings), in the
// newest, strictest snapshot's form. Independent of the server's iomap::CheckMapping.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "fsserver/wire/fuse_abi.h"

namespace iomapfs::kmodel {

struct ValidationContext {
  uint32_t block_size = 0;
  uint64_t max_bytes = 0;
  // Whether `dev` names a registered iomap backing device, and its size in bytes.
  bool (*dev_known)(const void* self, uint32_t dev, uint64_t* size) = nullptr;
  const void* self = nullptr;
};

enum class Slot { kRead, kWrite };

// One slot of a BEGIN reply (or BPF answer) for `opflags` at `pos`.
// Returns: 0, or the errno the kernel fails the operation with (EUCLEAN, EIO, ENOMEM), with a
// description in *why.
int ValidateBeginSlot(const ValidationContext& c, const abi::fuse_iomap_io& io, Slot slot,
                      uint64_t pos, uint32_t opflags, bool inode_has_cache, std::string* why);

// The effective write mapping checks of §4.5 item 11 (ATOMIC) for a whole reply.
int ValidateBeginReply(const ValidationContext& c, const abi::fuse_iomap_begin_out& out,
                       uint64_t pos, uint32_t opflags, bool inode_has_cache, std::string* why);

// One slot of an UPSERT (§12.3 checks 6-8). Returns: 0, EUCLEAN or EINVAL.
int ValidateUpsertSlot(const ValidationContext& c, const abi::fuse_iomap_io& io, std::string* why);

}  // namespace iomapfs::kmodel
