// wire_test_util.h: hand-built little-endian messages for the wire codec tests.
//
// Le writes each field with an explicit width, byte by byte, so golden messages never depend on
// the struct layouts in fuse_abi.h they are meant to check.
//
// Thread-safety: test-only values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string_view>
#include <vector>

namespace iomapfs::wire::testing {

inline constexpr uint64_t kUnique = 0x80000000000000a6ull;  // RESEND bit set: echoed verbatim
inline constexpr uint32_t kUid = 1000;
inline constexpr uint32_t kGid = 1001;
inline constexpr uint32_t kPid = 4242;

class Le {
 public:
  Le& u8(uint64_t v) { return Put(v, 1); }
  Le& u16(uint64_t v) { return Put(v, 2); }
  Le& u32(uint64_t v) { return Put(v, 4); }
  Le& u64(uint64_t v) { return Put(v, 8); }
  // The string and its NUL terminator.
  Le& str(std::string_view s) { return raw(s).u8(0); }
  // The string's bytes only.
  Le& raw(std::string_view s) {
    for (char c : s) bytes_.push_back(static_cast<std::byte>(c));
    return *this;
  }
  Le& zeros(size_t n) {
    bytes_.insert(bytes_.end(), n, std::byte{0});
    return *this;
  }
  Le& append(const std::vector<std::byte>& b) {
    bytes_.insert(bytes_.end(), b.begin(), b.end());
    return *this;
  }
  const std::vector<std::byte>& bytes() const { return bytes_; }
  size_t size() const { return bytes_.size(); }

 private:
  Le& Put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
    return *this;
  }
  std::vector<std::byte> bytes_;
};

// A request: the 40-byte fuse_in_header (len = 40 + body size) followed by body.
inline std::vector<std::byte> Message(uint32_t opcode, uint64_t nodeid, const Le& body,
                                      uint16_t total_extlen = 0, uint64_t unique = kUnique) {
  Le m;
  m.u32(40 + body.size()).u32(opcode).u64(unique).u64(nodeid).u32(kUid).u32(kGid).u32(kPid);
  m.u16(total_extlen).u16(0);
  m.append(body.bytes());
  return m.bytes();
}

inline std::vector<std::byte> Bytes(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int b : v) out.push_back(static_cast<std::byte>(b));
  return out;
}

inline std::vector<std::byte> ToVector(std::span<const std::byte> s) {
  return std::vector<std::byte>(s.begin(), s.end());
}

}  // namespace iomapfs::wire::testing
