#include "fsserver/wire/node_id.h"

#include <cerrno>
#include <cstdlib>

#include "fsserver/wire/fuse_abi.h"

namespace iomapfs::wire {

Result<Ino> InoFromNodeId(uint64_t nodeid) {
  if (nodeid == 0) return Unexpected(EIO);
  if (nodeid == kExt4RootIno.value()) return Unexpected(ESTALE);
  if (nodeid == abi::FUSE_ROOT_ID) return kExt4RootIno;
  return Ino(nodeid);
}

uint64_t NodeIdFromIno(Ino ino) {
  if (ino == Ino(abi::FUSE_ROOT_ID)) std::abort();  // REQUIRES violated; see the header.
  if (ino == kExt4RootIno) return abi::FUSE_ROOT_ID;
  return ino.value();
}

}  // namespace iomapfs::wire
