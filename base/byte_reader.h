// ByteReader: bounds-checked sequential reads from an untrusted byte buffer (kernel messages,
// on-disk structures). A read past the end fails and leaves the reader unchanged.
//
// Thread-safety: a view; not synchronized. Does not own the bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <type_traits>

namespace iomapfs {

class ByteReader {
 public:
  explicit ByteReader(std::span<const std::byte> bytes) : bytes_(bytes) {}

  size_t remaining() const { return bytes_.size() - pos_; }
  size_t position() const { return pos_; }

  // Copies a trivially copyable T (no alignment requirement on the buffer).
  template <class T>
  std::optional<T> Read() {
    static_assert(std::is_trivially_copyable_v<T>);
    if (remaining() < sizeof(T)) return std::nullopt;
    T out;
    std::memcpy(&out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return out;
  }

  std::optional<std::span<const std::byte>> ReadBytes(size_t n) {
    if (remaining() < n) return std::nullopt;
    auto out = bytes_.subspan(pos_, n);
    pos_ += n;
    return out;
  }

  // A NUL-terminated string; the NUL is consumed but not returned.
  std::optional<std::string_view> ReadCString() {
    const std::byte* start = bytes_.data() + pos_;
    const void* nul = std::memchr(start, 0, remaining());
    if (nul == nullptr) return std::nullopt;
    size_t len = static_cast<const std::byte*>(nul) - start;
    pos_ += len + 1;
    return std::string_view(reinterpret_cast<const char*>(start), len);
  }

  std::span<const std::byte> Rest() {
    auto out = bytes_.subspan(pos_);
    pos_ = bytes_.size();
    return out;
  }

 private:
  std::span<const std::byte> bytes_;
  size_t pos_ = 0;
};

}  // namespace iomapfs
